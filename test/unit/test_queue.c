/* Unit tests of the queue module: messages, topic sets, mailboxes, waiters. */
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

/* kr_mailbox_pushed / kr_mailbox_taken: "everything pushed before the snapshot was taken"
 * holds exactly when the consumer got past the snapshot, across the index wrapping. */
Test(mailbox, pushed_and_taken_counts_tell_when_a_snapshot_was_passed)
{
    struct kr_mailbox *mb = kr_mailbox_create(8);
    uint32_t cap = kr_mailbox_capacity(mb);
    struct kr_event ev = {0}, out;
    cr_assert_eq(kr_mailbox_pushed(mb), 0);
    cr_assert_eq(kr_mailbox_taken(mb), 0);
    for (uint32_t round = 0; round < 5 * cap; round++) { /* many laps of the ring */
        cr_assert(kr_mailbox_push(mb, &ev));
        cr_assert(kr_mailbox_push(mb, &ev));
        uint32_t snap = kr_mailbox_pushed(mb);
        cr_assert_eq(snap - kr_mailbox_taken(mb), 2);
        cr_assert(kr_mailbox_push(mb, &ev)); /* after the snapshot: not waited for */
        cr_assert(kr_mailbox_pop(mb, &out));
        cr_assert_lt((int32_t)(kr_mailbox_taken(mb) - snap), 0, "one of the two still queued");
        cr_assert(kr_mailbox_pop(mb, &out));
        cr_assert_geq((int32_t)(kr_mailbox_taken(mb) - snap), 0, "both taken");
        cr_assert(kr_mailbox_pop(mb, &out));
    }
    cr_assert_eq(kr_mailbox_pushed(mb), kr_mailbox_taken(mb));
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

Test(msg, unref_frees_a_record_left_in_a_slot)
{
    /* a net thread's record still in its slot when the last reference goes: freed with the
     * message (a leak here fails under the address sanitizer's leak check) */
    struct kr_msg *m = make_msg(1, "p");
    *kr_msg_slot(m, 1) = malloc(16);
    cr_assert_not_null(*kr_msg_slot(m, 1));
    kr_msg_ref(m, 1);
    kr_msg_unref(m);
    cr_assert_eq(kr_msg_refs(m), 1);
    cr_assert_not_null(*kr_msg_slot(m, 1), "the record stays while the message lives");
    kr_msg_unref(m);
}

/* ---------------------------------------------------------------- topic sets */

Test(topicset, small_sets_live_in_the_word)
{
    struct kr_topicset s;
    kr_topicset_init(&s, 3);
    cr_assert_eq(kr_topicset_word(s), 0);
    kr_topicset_set(&s, 3, 2);
    kr_topicset_set(&s, 3, 0);
    cr_assert(kr_topicset_has(&s, 3, 2));
    cr_assert(kr_topicset_has(&s, 3, 0));
    cr_assert_not(kr_topicset_has(&s, 3, 1));
    cr_assert_eq(kr_topicset_word(s), 0x5, "the bits themselves travel in the event word");
    struct kr_topicset back = kr_topicset_from_word(kr_topicset_word(s));
    cr_assert(kr_topicset_has(&back, 3, 2) && !kr_topicset_has(&back, 3, 1));
    kr_topicset_release(&back, 3);
}

Test(topicset, sixty_four_topics_stay_inline_sixty_five_do_not)
{
    struct kr_topicset s;
    kr_topicset_init(&s, 64);
    kr_topicset_set(&s, 64, 63);
    cr_assert_eq(kr_topicset_word(s), UINT64_C(1) << 63, "64 topics: bits in the word");
    kr_topicset_release(&s, 64);

    struct kr_topicset big;
    kr_topicset_init(&big, 65);
    cr_assert_neq(kr_topicset_word(big), 0, "65 topics: a bitmap pointer");
    cr_assert_not(kr_topicset_has(&big, 65, 64));
    kr_topicset_set(&big, 65, 64);
    cr_assert(kr_topicset_has(&big, 65, 64));
    cr_assert_not(kr_topicset_has(&big, 65, 0));
    cr_assert_eq(((uint64_t *)(uintptr_t)kr_topicset_word(big))[1], 1);
    kr_topicset_release(&big, 65);
}

Test(topicset, large_sets_set_has_and_travel_as_a_pointer)
{
    struct kr_topicset s;
    kr_topicset_init(&s, 150);
    kr_topicset_set(&s, 150, 130);
    kr_topicset_set(&s, 150, 0);
    kr_topicset_set(&s, 150, 149);
    for (uint32_t i = 0; i < 150; i++)
        cr_assert_eq(kr_topicset_has(&s, 150, i), i == 0 || i == 130 || i == 149, "topic %u", i);
    /* through an event word and back: the same bitmap, ownership moved with it */
    uint64_t w = kr_topicset_word(s);
    struct kr_topicset t = kr_topicset_from_word(w);
    cr_assert(kr_topicset_has(&t, 150, 130));
    cr_assert_eq(((uint64_t *)(uintptr_t)w)[2], (UINT64_C(1) << 2) | (UINT64_C(1) << 21));
    kr_topicset_release(&t, 150); /* a missing free fails the leak check */
}

Test(topicset, merge_small)
{
    struct kr_topicset a, b;
    kr_topicset_init(&a, 10);
    kr_topicset_init(&b, 10);
    kr_topicset_set(&a, 10, 1);
    kr_topicset_set(&b, 10, 1);
    kr_topicset_set(&b, 10, 9);
    kr_topicset_merge(&a, &b, 10);
    cr_assert_eq(kr_topicset_word(a), (1u << 1) | (1u << 9));
    kr_topicset_release(&a, 10);
}

Test(topicset, merge_large_releases_the_source)
{
    struct kr_topicset a, b;
    kr_topicset_init(&a, 200);
    kr_topicset_init(&b, 200);
    kr_topicset_set(&a, 200, 3);
    kr_topicset_set(&a, 200, 100);
    kr_topicset_set(&b, 200, 100);
    kr_topicset_set(&b, 200, 199);
    kr_topicset_set(&b, 200, 64);
    kr_topicset_merge(&a, &b, 200); /* frees b's bitmap: a leak or double free fails ASan */
    for (uint32_t i = 0; i < 200; i++)
        cr_assert_eq(kr_topicset_has(&a, 200, i), i == 3 || i == 64 || i == 100 || i == 199,
                     "topic %u", i);
    kr_topicset_release(&a, 200);
}
