/* Unit tests of the queue module: messages, mailboxes, waiters, client queues. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kr_queue.h"

static struct kr_msg *make_msg(uint64_t pub, const char *payload)
{
    const char *topics[] = {"alpha", "b", "gamma"};
    uint32_t lens[] = {5, 1, 5};
    return kr_msg_create(pub, 42, 3, topics, lens, payload, (uint32_t)strlen(payload), 2);
}

Test(msg, fields_are_stored)
{
    struct kr_msg *m = make_msg(7, "hello\r\nworld");
    cr_assert_eq(kr_msg_publisher(m), 7);
    cr_assert_eq(kr_msg_time_us(m), 42);
    cr_assert_eq(kr_msg_ntopics(m), 3);
    uint32_t len;
    const char *t = kr_msg_topic(m, 0, &len);
    cr_assert_eq(len, 5);
    cr_assert(memcmp(t, "alpha", 5) == 0);
    t = kr_msg_topic(m, 1, &len);
    cr_assert_eq(len, 1);
    cr_assert_eq(t[0], 'b');
    t = kr_msg_topic(m, 2, &len);
    cr_assert(len == 5 && memcmp(t, "gamma", 5) == 0);
    const char *p = kr_msg_payload(m, &len);
    cr_assert_eq(len, 12);
    cr_assert(memcmp(p, "hello\r\nworld", 12) == 0);
    cr_assert_null(*kr_msg_slot(m, 0));
    cr_assert_null(*kr_msg_slot(m, 1));
    cr_assert_eq(kr_msg_nshards(m), 1);
    kr_msg_set_nshards(m, 3);
    cr_assert_eq(kr_msg_nshards(m), 3);
    cr_assert_geq(kr_msg_size(m), 12 + 11);
    kr_msg_unref(m);
}

Test(msg, empty_payload_and_no_topics)
{
    struct kr_msg *m = kr_msg_create(1, 0, 0, NULL, NULL, NULL, 0, 0);
    uint32_t len = 99;
    kr_msg_payload(m, &len);
    cr_assert_eq(len, 0);
    cr_assert_eq(kr_msg_ntopics(m), 0);
    kr_msg_unref(m);
}

Test(msg, refcount_keeps_message_alive)
{
    struct kr_msg *m = make_msg(1, "x");
    kr_msg_ref(m, 3);
    kr_msg_unref(m);
    kr_msg_unref(m);
    kr_msg_unref(m);
    uint32_t len;
    cr_assert_eq(kr_msg_payload(m, &len)[0], 'x'); /* still alive: one reference left */
    kr_msg_unref(m);
}

Test(mailbox, fifo_and_full)
{
    struct kr_mailbox *mb = kr_mailbox_create(5);
    uint32_t cap = kr_mailbox_capacity(mb);
    cr_assert_geq(cap, 5);
    struct kr_event ev = {0};
    for (uint32_t i = 0; i < cap; i++) {
        ev.conn = i;
        cr_assert(kr_mailbox_push(mb, &ev), "push %u of %u", i, cap);
    }
    ev.conn = 999;
    cr_assert_not(kr_mailbox_push(mb, &ev), "a full ring must refuse");
    cr_assert_eq(kr_mailbox_depth(mb), cap);
    for (uint32_t i = 0; i < cap; i++) {
        struct kr_event out;
        cr_assert(kr_mailbox_pop(mb, &out));
        cr_assert_eq(out.conn, i);
    }
    struct kr_event out;
    cr_assert_not(kr_mailbox_pop(mb, &out));
    kr_mailbox_destroy(mb);
}

Test(mailbox, copies_every_field)
{
    struct kr_mailbox *mb = kr_mailbox_create(4);
    int x;
    struct kr_event ev = {.type = 3, .src = 9, .aux = 77, .conn = UINT64_MAX, .ptr = &x, .mask = 5};
    cr_assert(kr_mailbox_push(mb, &ev));
    struct kr_event out;
    cr_assert(kr_mailbox_pop(mb, &out));
    cr_assert(out.type == 3 && out.src == 9 && out.aux == 77 && out.conn == UINT64_MAX &&
              out.ptr == &x && out.mask == 5);
    kr_mailbox_destroy(mb);
}

#define STRESS_N 200000
struct stress {
    struct kr_mailbox *mb;
    struct kr_waiter w;
};

static void *producer(void *arg)
{
    struct stress *s = arg;
    for (uint64_t i = 0; i < STRESS_N; i++) {
        struct kr_event ev = {.conn = i};
        while (!kr_mailbox_push(s->mb, &ev))
            kr_waiter_wake(&s->w), sched_yield();
        if ((i & 63) == 0)
            kr_waiter_wake(&s->w);
    }
    kr_waiter_wake(&s->w);
    return NULL;
}

Test(mailbox, spsc_across_threads_in_order_with_wakeups)
{
    struct stress s;
    s.mb = kr_mailbox_create(64);
    cr_assert_eq(kr_waiter_init(&s.w), 0);
    pthread_t t;
    pthread_create(&t, NULL, producer, &s);
    uint64_t next = 0;
    while (next < STRESS_N) {
        struct kr_event ev;
        if (kr_mailbox_pop(s.mb, &ev)) {
            cr_assert_eq(ev.conn, next, "out of order: got %llu want %llu",
                         (unsigned long long)ev.conn, (unsigned long long)next);
            next++;
            continue;
        }
        kr_waiter_prepare(&s.w);
        if (kr_mailbox_depth(s.mb))
            kr_waiter_cancel(&s.w);
        else
            kr_waiter_sleep(&s.w, 100); /* the timeout only bounds a lost wake-up */
    }
    pthread_join(t, NULL);
    cr_assert_eq(next, STRESS_N);
    kr_waiter_destroy(&s.w);
    kr_mailbox_destroy(s.mb);
}

Test(cq, grows_wraps_and_counts_bytes)
{
    struct kr_cq q = {0};
    struct kr_msg *m = make_msg(1, "p");
    for (int round = 0; round < 3; round++) {
        for (uint32_t i = 0; i < 100; i++) {
            kr_msg_ref(m, 1);
            struct kr_cq_entry e = {.msg = m, .mask = i, .reply_bytes = 10};
            kr_cq_push(&q, &e);
        }
        cr_assert_eq(q.count, 100);
        cr_assert_eq(q.bytes, 1000);
        for (uint32_t i = 0; i < 60; i++) {
            cr_assert_eq(kr_cq_at(&q, 0)->mask, i);
            kr_msg_unref(kr_cq_at(&q, 0)->msg);
            kr_cq_pop(&q);
        }
        cr_assert_eq(q.count, 40);
        cr_assert_eq(q.bytes, 400);
        cr_assert_eq(kr_cq_at(&q, 39)->mask, 99);
        kr_cq_clear(&q); /* releases the remaining references */
        cr_assert_eq(q.count, 0);
        cr_assert_eq(q.bytes, 0);
    }
    kr_msg_unref(m);
}

Test(cq, topic_bits_small_and_large)
{
    struct kr_cq_entry e = {0};
    kr_cq_entry_set(&e, 3, 2);
    cr_assert(kr_cq_entry_has(&e, 3, 2));
    cr_assert_not(kr_cq_entry_has(&e, 3, 1));
    uint64_t bits[3] = {0};
    struct kr_cq_entry big = {0};
    big.bits = bits;
    kr_cq_entry_set(&big, 150, 130);
    kr_cq_entry_set(&big, 150, 0);
    cr_assert(kr_cq_entry_has(&big, 150, 130));
    cr_assert(kr_cq_entry_has(&big, 150, 0));
    cr_assert_not(kr_cq_entry_has(&big, 150, 64));
    cr_assert_eq(bits[2], UINT64_C(1) << 2);
}

Test(cq, insert_in_the_middle_keeps_order_across_wrap)
{
    struct kr_cq q = {0};
    struct kr_msg *m = make_msg(1, "p");
    for (uint32_t i = 0; i < 6; i++) { /* move head so the ring wraps */
        kr_msg_ref(m, 1);
        kr_cq_push(&q, &(struct kr_cq_entry){.msg = m, .mask = 100 + i, .reply_bytes = 1});
    }
    for (uint32_t i = 0; i < 6; i++) {
        kr_msg_unref(kr_cq_at(&q, 0)->msg);
        kr_cq_pop(&q);
    }
    for (uint32_t i = 0; i < 5; i++) {
        kr_msg_ref(m, 1);
        kr_cq_push(&q, &(struct kr_cq_entry){.msg = m, .mask = i, .reply_bytes = 1});
    }
    kr_msg_ref(m, 1);
    kr_cq_insert(&q, 2, &(struct kr_cq_entry){.msg = m, .mask = 99, .reply_bytes = 1});
    uint64_t want[] = {0, 1, 99, 2, 3, 4};
    cr_assert_eq(q.count, 6);
    cr_assert_eq(q.bytes, 6);
    for (uint32_t i = 0; i < 6; i++)
        cr_assert_eq(kr_cq_at(&q, i)->mask, want[i], "position %u", i);
    kr_cq_clear(&q);
    kr_msg_unref(m);
}
