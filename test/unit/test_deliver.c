/* Unit tests of delivery assembly (net/kr_deliver.c) without a server or an event loop:
 * DELIVER / END / REPLAY events are fed as the shards would send them. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_deliver.h"
#include "kr_router.h"
#include "kr_util.h"

/* ---------------------------------------------------------------- fixture */

static struct {
    uint64_t queued_messages, queued_bytes, deliveries_queued, queue_overflows,
        messages_replayed;
    uint32_t queued_calls, overflow_calls, mem_checks;
    uint32_t overflow_count;
    uint64_t overflow_bytes;
    struct kr_dlv *overflow_dlv;
} T;

static void queued_cb(struct kr_dlv_ctx *x, struct kr_dlv *d)
{
    (void)x;
    (void)d;
    T.queued_calls++;
}

static void overflow_cb(struct kr_dlv_ctx *x, struct kr_dlv *d, uint32_t count, uint64_t bytes)
{
    (void)x;
    cr_assert(d->overflowed, "overflow is reported after the flag is set");
    cr_assert_eq(d->q.count, 0, "overflow is reported after the queue was discarded");
    T.overflow_calls++;
    T.overflow_count = count;
    T.overflow_bytes = bytes;
    T.overflow_dlv = d;
}

static void mem_check_cb(struct kr_dlv_ctx *x)
{
    T.mem_checks++;
    x->mem_grown = 0;
}

static struct kr_dlv_ctx ctx_make(uint64_t max_msgs, uint64_t max_bytes)
{
    memset(&T, 0, sizeof(T));
    struct kr_dlv_ctx x = {
        .net = 0,
        .max_queued_messages = max_msgs,
        .max_queued_bytes = max_bytes,
        .ctr = {&T.queued_messages, &T.queued_bytes, &T.deliveries_queued, &T.queue_overflows,
                &T.messages_replayed},
        .mem_step = UINT64_MAX,
        .mem_check = mem_check_cb,
        .queued = queued_cb,
        .overflow = overflow_cb,
    };
    return x;
}

/* A message of `ntopics` topics "t0".."t<n-1>" with `nshards` shards and one net slot. */
static struct kr_msg *msg(uint64_t pub, uint64_t time_us, uint32_t ntopics, uint32_t nshards,
                          const char *payload)
{
    const char **topics = calloc(ntopics ? ntopics : 1, sizeof(*topics));
    uint32_t *lens = calloc(ntopics ? ntopics : 1, sizeof(*lens));
    char (*names)[16] = calloc(ntopics ? ntopics : 1, 16);
    for (uint32_t i = 0; i < ntopics; i++) {
        snprintf(names[i], 16, "t%u", i);
        topics[i] = names[i];
        lens[i] = (uint32_t)strlen(names[i]);
    }
    struct kr_msg *m = kr_msg_create(pub, time_us, ntopics, topics, lens, payload,
                                     (uint32_t)strlen(payload), 1);
    kr_msg_set_nshards(m, nshards);
    free(topics);
    free(lens);
    free(names);
    return m;
}

/* Hand out the head entry, as a poll reply does, and end the net thread's turn (the
 * references written-out entries gave up are dropped then: kr_dlv_release_later). */
static void pop(struct kr_dlv_ctx *x, struct kr_dlv *d)
{
    kr_dlv_pop(x, d);
    kr_dlv_release_later(x);
}

/* A shard's DELIVER (or REPLAY) of m matching topics `mask` (messages of at most 64 topics):
 * hands over a new reference. */
static void deliver(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_msg *m, uint64_t mask,
                    bool replay)
{
    kr_msg_ref(m, 1);
    struct kr_event ev = {.type = replay ? KR_EV_REPLAY : KR_EV_DELIVER, .conn = 1, .ptr = m,
                          .mask = mask};
    kr_dlv_deliver(x, d, &ev, replay);
    kr_dlv_release_later(x); /* the end of the net thread's turn */
}

/* The same for a message of more than 64 topics: a bitmap of the listed topics. */
static void deliver_big(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_msg *m,
                        const uint32_t *idx, uint32_t n)
{
    uint32_t ntop = kr_msg_ntopics(m);
    struct kr_topicset set;
    kr_topicset_init(&set, ntop);
    for (uint32_t i = 0; i < n; i++)
        kr_topicset_set(&set, ntop, idx[i]);
    kr_msg_ref(m, 1);
    struct kr_event ev = {.type = KR_EV_DELIVER, .conn = 1, .ptr = m,
                          .mask = kr_topicset_word(set)};
    kr_dlv_deliver(x, d, &ev, false);
    kr_dlv_release_later(x);
}

/* A shard's END of m (the caller's kr_nt_handle drops the event's reference: the test keeps
 * its own instead). Returns whether m completed. */
static bool end(struct kr_dlv_ctx *x, struct kr_msg *m, uint32_t fanout)
{
    uint32_t total = 0;
    return kr_dlv_end(x, m, fanout, &total);
}

/* The matched topics of the head entry as "t0 t2 " and its message. */
static struct kr_msg *head_topics(struct kr_dlv *d, char *buf, size_t cap)
{
    struct kr_cq_entry *e = kr_dlv_head(d);
    uint32_t ntop = kr_msg_ntopics(e->msg), len;
    size_t o = 0;
    buf[0] = 0;
    for (uint32_t i = 0; i < ntop; i++)
        if (kr_topicset_has(&e->topics, ntop, i)) {
            const char *t = kr_msg_topic(e->msg, i, &len);
            o += (size_t)snprintf(buf + o, cap - o, "%.*s ", (int)len, t);
        }
    return e->msg;
}

static uint32_t ready(struct kr_dlv *d)
{
    uint64_t bytes;
    return kr_dlv_ready(d, UINT64_MAX, &bytes);
}

/* ---------------------------------------------------------------- tests */

Test(deliver, single_shard_in_order)
{
    struct kr_dlv_ctx x = ctx_make(100, 1 << 20);
    struct kr_dlv d = {0};
    struct kr_msg *m[3];
    for (int i = 0; i < 3; i++) {
        m[i] = msg(5, 10 + (uint64_t)i, 2, 1, "payload");
        deliver(&x, &d, m[i], 1u << (i % 2), false);
    }
    cr_assert_eq(d.q.count, 3);
    cr_assert_eq(T.queued_messages, 3);
    cr_assert_eq(T.deliveries_queued, 3);
    cr_assert_eq(T.queued_calls, 3);
    uint64_t bytes;
    cr_assert_eq(kr_dlv_ready(&d, UINT64_MAX, &bytes), 3);
    /* "MESSAGE t0 7\r\npayload\r\n" = 8 + 3 + 1 + 2 + 7 + 2 */
    cr_assert_eq(bytes, 3 * 23);
    cr_assert_eq(T.queued_bytes, 3 * 23);
    /* a reply limit below two entries hands out one */
    cr_assert_eq(kr_dlv_ready(&d, 40, &bytes), 1);
    cr_assert_eq(bytes, 23);
    char buf[64];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(head_topics(&d, buf, sizeof(buf)), m[i], "entry %d in order", i);
        cr_assert_str_eq(buf, i % 2 ? "t1 " : "t0 ");
        pop(&x, &d);
        cr_assert_eq(kr_msg_refs(m[i]), 1, "the queue's reference is dropped by the pop");
    }
    cr_assert_eq(T.queued_messages, 0);
    cr_assert_eq(T.queued_bytes, 0);
    cr_assert(kr_dlv_empty(&d));
    for (int i = 0; i < 3; i++)
        kr_msg_unref(m[i]);
    kr_dlv_clear(&x, &d);
    kr_dlv_free(&d);
}

Test(deliver, multi_shard_parts_merge_and_complete_on_last_end)
{
    struct kr_dlv_ctx x = ctx_make(100, 1 << 20);
    struct kr_dlv d = {0};
    struct kr_msg *m = msg(5, 10, 3, 2, "xy");
    struct kr_msg *behind = msg(6, 11, 1, 1, "z");
    deliver(&x, &d, m, 1u << 2, false); /* shard A: t2 */
    deliver(&x, &d, behind, 1u, false); /* a single-shard message after it */
    cr_assert_eq(d.q.count, 2);
    cr_assert_eq(ready(&d), 0, "an incomplete entry is not handed out, nor what is behind it");
    cr_assert_not(end(&x, m, 1), "one END of two");
    cr_assert_eq(ready(&d), 0);
    deliver(&x, &d, m, 1u << 0, false); /* shard B: t0, after A's END */
    cr_assert_eq(d.q.count, 2, "the second part merged into the first entry");
    cr_assert_eq(ready(&d), 0, "still waiting for shard B's END");
    cr_assert_eq(T.deliveries_queued, 2);
    cr_assert(end(&x, m, 1), "the last END completes it");
    cr_assert_null(*kr_msg_slot(m, 0), "the completion record left the message slot");
    uint64_t bytes;
    cr_assert_eq(kr_dlv_ready(&d, UINT64_MAX, &bytes), 2);
    /* "MESSAGE t0 t2 2\r\nxy\r\n" = 8 + 6 + 1 + 2 + 2 + 2, "MESSAGE t0 1\r\nz\r\n" = 17 */
    cr_assert_eq(bytes, 21 + 17);
    cr_assert_eq(T.queued_bytes, 21 + 17, "the merged topics are counted in the queued bytes");
    char buf[64];
    cr_assert_eq(head_topics(&d, buf, sizeof(buf)), m);
    cr_assert_str_eq(buf, "t0 t2 ", "every matched topic, in published order");
    pop(&x, &d);
    cr_assert_eq(head_topics(&d, buf, sizeof(buf)), behind);
    pop(&x, &d);
    cr_assert_eq(kr_msg_refs(m), 1);
    cr_assert_eq(kr_msg_refs(behind), 1);
    kr_msg_unref(m);
    kr_msg_unref(behind);
    kr_dlv_clear(&x, &d); /* the ring storage */
    kr_dlv_free(&d);
}

Test(deliver, multi_shard_bitmaps_of_more_than_64_topics_merge)
{
    struct kr_dlv_ctx x = ctx_make(100, 1 << 20);
    struct kr_dlv d = {0};
    struct kr_msg *m = msg(5, 10, 100, 2, "p");
    deliver_big(&x, &d, m, (uint32_t[]){3, 70}, 2);
    deliver_big(&x, &d, m, (uint32_t[]){99, 3}, 2);
    cr_assert_eq(d.q.count, 1);
    cr_assert_not(end(&x, m, 2));
    cr_assert(end(&x, m, 1));
    cr_assert_eq(ready(&d), 1);
    char buf[128];
    head_topics(&d, buf, sizeof(buf));
    cr_assert_str_eq(buf, "t3 t70 t99 ");
    pop(&x, &d);
    cr_assert_eq(kr_msg_refs(m), 1);
    kr_msg_unref(m);
    kr_dlv_clear(&x, &d); /* the ring storage */
    kr_dlv_free(&d);
}

Test(deliver, per_publisher_order_around_incomplete_entries)
{
    struct kr_dlv_ctx x = ctx_make(100, 1 << 20);
    struct kr_dlv d = {0};
    /* publisher 5 publishes early (single shard) then late (two shards); the late one's part
     * from a fast shard arrives first */
    struct kr_msg *late = msg(5, 20, 2, 2, "late");
    struct kr_msg *early = msg(5, 10, 1, 1, "early");
    struct kr_msg *other = msg(9, 5, 1, 1, "other"); /* another publisher, earlier still */
    struct kr_msg *after = msg(5, 30, 1, 1, "after"); /* same publisher, later */
    deliver(&x, &d, late, 1u, false);
    deliver(&x, &d, early, 1u, false);
    deliver(&x, &d, other, 1u, false);
    deliver(&x, &d, after, 1u, false);
    deliver(&x, &d, late, 2u, false); /* late's other part still merges, wherever it moved */
    cr_assert_eq(d.q.count, 4);
    cr_assert_eq(kr_dlv_head(&d)->msg, early,
                 "the same publisher's earlier message goes before the incomplete later one");
    cr_assert_eq(ready(&d), 1, "the early message is ready; the incomplete one holds the rest");
    cr_assert_not(end(&x, late, 1));
    cr_assert(end(&x, late, 1));
    cr_assert_eq(ready(&d), 4);
    struct kr_msg *want[] = {early, late, other, after};
    char buf[64];
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(head_topics(&d, buf, sizeof(buf)), want[i], "position %d", i);
        if (want[i] == late)
            cr_assert_str_eq(buf, "t0 t1 ");
        pop(&x, &d);
    }
    struct kr_msg *all[] = {early, late, other, after};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(kr_msg_refs(all[i]), 1);
        kr_msg_unref(all[i]);
    }
    kr_dlv_clear(&x, &d); /* the ring storage */
    kr_dlv_free(&d);
}

Test(deliver, overflow_by_count_discards_and_drops_later_deliveries)
{
    struct kr_dlv_ctx x = ctx_make(2, 1 << 20);
    struct kr_dlv d = {0};
    struct kr_msg *a = msg(5, 1, 1, 1, "a"), *b = msg(5, 2, 1, 1, "b"), *c = msg(5, 3, 1, 1, "c");
    struct kr_msg *multi = msg(5, 4, 2, 2, "m");
    deliver(&x, &d, a, 1, false);
    deliver(&x, &d, b, 1, false);
    cr_assert_eq(T.overflow_calls, 0);
    deliver(&x, &d, c, 1, false);
    cr_assert_eq(T.overflow_calls, 1);
    cr_assert_eq(T.overflow_dlv, &d);
    cr_assert_eq(T.overflow_count, 2, "the callback is told what the queue held");
    cr_assert_eq(T.overflow_bytes, 2 * 17);
    cr_assert(d.overflowed);
    cr_assert_eq(d.q.count, 0);
    cr_assert_eq(T.queue_overflows, 1);
    cr_assert_eq(T.queued_messages, 0);
    cr_assert_eq(T.queued_bytes, 0);
    cr_assert_eq(kr_msg_refs(a), 1, "the discarded queue released its references");
    cr_assert_eq(kr_msg_refs(b), 1);
    cr_assert_eq(kr_msg_refs(c), 1, "the delivery that overflowed was released");
    deliver(&x, &d, a, 1, false);
    deliver(&x, &d, multi, 1, false);
    cr_assert_eq(d.q.count, 0, "later deliveries are dropped");
    cr_assert_eq(kr_msg_refs(a), 1, "and released");
    cr_assert_eq(kr_msg_refs(multi), 1);
    cr_assert_eq(T.overflow_calls, 1, "told once");
    cr_assert_not(end(&x, multi, 1));
    cr_assert(end(&x, multi, 1), "the completion record still completes");
    kr_msg_unref(a);
    kr_msg_unref(b);
    kr_msg_unref(c);
    kr_msg_unref(multi);
    kr_dlv_clear(&x, &d); /* the ring storage */
    kr_dlv_free(&d);
}

Test(deliver, overflow_by_bytes)
{
    struct kr_dlv_ctx x = ctx_make(1000, 40); /* two 17-byte entries fit, not three */
    struct kr_dlv d = {0};
    struct kr_msg *m = msg(5, 1, 1, 1, "a");
    deliver(&x, &d, m, 1, false);
    deliver(&x, &d, m, 1, false);
    cr_assert_eq(d.q.count, 2);
    cr_assert_eq(T.queued_bytes, 34);
    cr_assert_eq(T.overflow_calls, 0);
    deliver(&x, &d, m, 1, false);
    cr_assert_eq(T.overflow_calls, 1);
    cr_assert_eq(T.overflow_bytes, 34);
    cr_assert(d.overflowed);
    cr_assert_eq(T.queued_bytes, 0);
    cr_assert_eq(kr_msg_refs(m), 1);
    kr_msg_unref(m);
    kr_dlv_clear(&x, &d); /* the ring storage */
    kr_dlv_free(&d);
}

Test(deliver, mem_check_when_growth_reaches_the_step)
{
    struct kr_dlv_ctx x = ctx_make(1000, 1 << 20);
    x.mem_step = 30;
    struct kr_dlv d = {0};
    struct kr_msg *m = msg(5, 1, 1, 1, "a");
    deliver(&x, &d, m, 1, false);
    cr_assert_eq(T.mem_checks, 0);
    cr_assert_eq(x.mem_grown, 17);
    deliver(&x, &d, m, 1, false);
    cr_assert_eq(T.mem_checks, 1);
    kr_dlv_clear(&x, &d);
    cr_assert_eq(kr_msg_refs(m), 1);
    kr_msg_unref(m);
    kr_dlv_clear(&x, &d); /* the ring storage */
    kr_dlv_free(&d);
}

Test(deliver, retro_replays_sorted_merged_then_live)
{
    struct kr_dlv_ctx x = ctx_make(100, 1 << 20);
    struct kr_dlv d = {0};
    struct kr_msg *r1 = msg(5, 10, 2, 2, "r1"); /* stored on two shards */
    struct kr_msg *r2 = msg(6, 20, 1, 1, "r2");
    struct kr_msg *r3 = msg(7, 30, 2, 2, "r3"); /* replayed by A, delivered live by B */
    struct kr_msg *live = msg(8, 40, 1, 1, "lv");
    kr_dlv_retro_begin(&d);
    /* shard A's replay, newest first on purpose, then shard B's */
    deliver(&x, &d, r3, 1u, true);
    deliver(&x, &d, r2, 1u, true);
    deliver(&x, &d, r1, 1u, true);
    deliver(&x, &d, live, 1u, false);
    deliver(&x, &d, r3, 2u, false); /* shard B, after the subscribe: live */
    deliver(&x, &d, r1, 2u, true);  /* shard B's replay of r1 */
    cr_assert_eq(d.q.count, 0, "everything is staged while the subscribe completes");
    cr_assert_eq(d.nstage, 6);
    cr_assert_not(kr_dlv_empty(&d));
    kr_dlv_retro_done(&x, &d);
    cr_assert_not(d.retro_active);
    cr_assert_eq(d.q.count, 4, "each message once");
    cr_assert_eq(T.messages_replayed, 3);
    cr_assert_eq(ready(&d), 2, "r3 waits for its shards' ENDs (its live part has a record)");
    cr_assert_not(end(&x, r3, 0));
    cr_assert(end(&x, r3, 1));
    cr_assert_eq(ready(&d), 4);
    struct kr_msg *want[] = {r1, r2, r3, live};
    const char *topics[] = {"t0 t1 ", "t0 ", "t0 t1 ", "t0 "};
    char buf[64];
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(head_topics(&d, buf, sizeof(buf)), want[i], "position %d", i);
        cr_assert_str_eq(buf, topics[i], "position %d", i);
        pop(&x, &d);
        cr_assert_eq(kr_msg_refs(want[i]), 1);
        kr_msg_unref(want[i]);
    }
    kr_dlv_clear(&x, &d); /* the ring storage */
    kr_dlv_free(&d);
}

Test(deliver, retro_not_found_discards_replays_keeps_live)
{
    struct kr_dlv_ctx x = ctx_make(100, 1 << 20);
    struct kr_dlv d = {0};
    struct kr_msg *r1 = msg(5, 10, 1, 1, "r1");
    struct kr_msg *r2 = msg(5, 20, 2, 2, "r2");
    struct kr_msg *live = msg(8, 40, 1, 1, "lv");
    kr_dlv_retro_begin(&d);
    deliver(&x, &d, r1, 1u, true);
    deliver(&x, &d, r2, 1u, true);
    deliver(&x, &d, live, 1u, false);
    deliver(&x, &d, r2, 2u, false); /* live part of a replayed message */
    d.retro_not_found = true;       /* a shard's history did not reach back */
    kr_dlv_retro_done(&x, &d);
    cr_assert_eq(T.messages_replayed, 0);
    cr_assert_eq(kr_msg_refs(r1), 1, "replays are released");
    cr_assert_eq(d.q.count, 2, "live deliveries stay");
    cr_assert_eq(kr_dlv_head(&d)->msg, live);
    cr_assert_eq(kr_cq_at(&d.q, 1)->msg, r2);
    cr_assert_not(end(&x, r2, 1));
    cr_assert(end(&x, r2, 1));
    cr_assert_eq(ready(&d), 2);
    char buf[64];
    pop(&x, &d);
    head_topics(&d, buf, sizeof(buf));
    cr_assert_str_eq(buf, "t1 ", "only the live part's topic");
    pop(&x, &d);
    cr_assert_eq(kr_msg_refs(r2), 1);
    cr_assert_eq(kr_msg_refs(live), 1);
    kr_msg_unref(r1);
    kr_msg_unref(r2);
    kr_msg_unref(live);
    kr_dlv_clear(&x, &d); /* the ring storage */
    kr_dlv_free(&d);
}

/* Another node's replay for a resume: the live delivery of a message it also replayed
 * (same origin and origin sequence; one published here counts as this node's origin) takes
 * the replayed copy's place, so it is queued once, in the replay's order, with the live
 * delivery's topics; a live message the replay lacks comes after the replay. */
Test(deliver, a_remote_replay_merges_with_live_copies_by_origin_and_sequence)
{
    struct kr_dlv_ctx x = ctx_make(100, 1 << 20);
    x.self_origin = 0x5e1f;
    struct kr_dlv d = {0};
    /* the other node's answer: a (from origin 7), b (published here), c (origin 7) */
    struct kr_msg *ra = msg(1, 10, 1, 1, "a"), *rb = msg(1, 11, 1, 1, "b"),
                  *rc = msg(1, 12, 1, 1, "c");
    kr_msg_set_origin(ra, 7, 1);
    kr_msg_set_origin(rb, 0x5e1f, 40);
    kr_msg_set_origin(rc, 7, 2);
    /* what arrived live meanwhile: c (from origin 7), b (this node's, forwarded as 40), and
     * d, newer than the answer */
    struct kr_msg *lc = msg(2, 20, 2, 1, "c"), *lb = msg(2, 21, 1, 1, "b"),
                  *ld = msg(2, 22, 1, 1, "d");
    kr_msg_set_origin(lc, 7, 2);
    kr_msg_stamp_oseq(lb, 40);
    kr_msg_set_origin(ld, 7, 3);
    kr_dlv_retro_begin(&d);
    deliver(&x, &d, lc, 3u, false); /* live, on both of its topics */
    deliver(&x, &d, lb, 1u, false);
    deliver(&x, &d, ld, 1u, false);
    kr_dlv_replay_remote(&x, &d, ra);
    kr_dlv_replay_remote(&x, &d, rb);
    kr_dlv_replay_remote(&x, &d, rc);
    cr_assert_eq(d.nstage, 6);
    kr_dlv_retro_done(&x, &d);
    cr_assert_eq(d.q.count, 4, "each message once");
    struct kr_msg *want[] = {ra, lb, lc, ld};
    const char *topics[] = {"t0 ", "t0 ", "t0 t1 ", "t0 "};
    char buf[64];
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(head_topics(&d, buf, sizeof(buf)), want[i], "position %d", i);
        cr_assert_str_eq(buf, topics[i], "position %d", i);
        pop(&x, &d);
    }
    cr_assert_eq(T.messages_replayed, 3);
    cr_assert_eq(kr_msg_refs(lb), 1, "the delivered live copies were released");
    cr_assert_eq(kr_msg_refs(lc), 1);
    kr_msg_unref(lb);
    kr_msg_unref(lc);
    kr_msg_unref(ld); /* the replayed copies went with the replay: rb and rc are freed */
    kr_dlv_clear(&x, &d);
    kr_dlv_free(&d);
}

Test(deliver, clear_releases_everything)
{
    struct kr_dlv_ctx x = ctx_make(100, 1 << 20);
    struct kr_dlv d = {0}, s = {0};
    struct kr_msg *inc = msg(5, 10, 2, 2, "inc");   /* stays incomplete */
    struct kr_msg *big = msg(5, 11, 80, 1, "big");  /* a bitmap entry */
    struct kr_msg *one = msg(6, 12, 1, 1, "one");
    deliver(&x, &d, inc, 1u, false);
    deliver_big(&x, &d, big, (uint32_t[]){1, 79}, 2);
    deliver(&x, &d, one, 1u, false);
    kr_dlv_retro_begin(&s); /* another client, staging */
    deliver(&x, &s, one, 1u, true);
    deliver_big(&x, &s, big, (uint32_t[]){5}, 1);
    deliver(&x, &s, inc, 2u, false);
    cr_assert_eq(d.q.count, 3);
    cr_assert_eq(s.nstage, 3);
    kr_dlv_clear(&x, &d);
    kr_dlv_clear(&x, &s);
    cr_assert(kr_dlv_empty(&d));
    cr_assert_eq(s.nstage, 0);
    cr_assert_eq(T.queued_messages, 0);
    cr_assert_eq(T.queued_bytes, 0);
    cr_assert_eq(kr_msg_refs(inc), 1);
    cr_assert_eq(kr_msg_refs(big), 1);
    cr_assert_eq(kr_msg_refs(one), 1);
    cr_assert_not_null(*kr_msg_slot(inc, 0), "the completion record is the message's now");
    kr_dlv_free(&d);
    kr_dlv_free(&s);
    kr_msg_unref(inc); /* frees the record too (ASan: no leak) */
    kr_msg_unref(big);
    kr_msg_unref(one);
}

Test(deliver, gone_client_releases_the_delivery)
{
    struct kr_dlv_ctx x = ctx_make(100, 1 << 20);
    struct kr_msg *m = msg(5, 10, 2, 2, "m");
    struct kr_msg *big = msg(5, 10, 70, 1, "b");
    deliver(&x, NULL, m, 1u, false);
    deliver_big(&x, NULL, big, (uint32_t[]){69}, 1);
    cr_assert_eq(kr_msg_refs(m), 1);
    cr_assert_eq(kr_msg_refs(big), 1);
    cr_assert_not_null(*kr_msg_slot(m, 0), "the record exists for the ENDs");
    cr_assert_not(end(&x, m, 1));
    cr_assert(end(&x, m, 0));
    kr_msg_unref(m);
    kr_msg_unref(big);
}

/* ---------------------------------------------------------------- client queues */

/* A message of one topic; the queue tests below store arbitrary words as its topic set
 * (kr_cq_clear releases them: inline bits, nothing to free). */
static struct kr_msg *one_topic_msg(void)
{
    const char *topics[] = {"t"};
    uint32_t lens[] = {1};
    return kr_msg_create(1, 42, 1, topics, lens, "p", 1, 0);
}

Test(cq, grows_wraps_and_counts_bytes)
{
    struct kr_cq q = {0};
    struct kr_msg *m = one_topic_msg();
    for (int round = 0; round < 3; round++) {
        for (uint32_t i = 0; i < 100; i++) {
            kr_msg_ref(m, 1);
            struct kr_cq_entry e = {.msg = m, .topics = kr_topicset_from_word(i), .reply_bytes = 10};
            kr_cq_push(&q, &e);
        }
        cr_assert_eq(q.count, 100);
        cr_assert_eq(q.bytes, 1000);
        for (uint32_t i = 0; i < 60; i++) {
            cr_assert_eq(kr_cq_at(&q, 0)->topics.word, i);
            kr_msg_unref(kr_cq_at(&q, 0)->msg);
            kr_cq_pop(&q);
        }
        cr_assert_eq(q.count, 40);
        cr_assert_eq(q.bytes, 400);
        cr_assert_eq(kr_cq_at(&q, 39)->topics.word, 99);
        kr_cq_clear(&q); /* releases the remaining references */
        cr_assert_eq(q.count, 0);
        cr_assert_eq(q.bytes, 0);
    }
    kr_msg_unref(m);
}

Test(cq, insert_in_the_middle_keeps_order_across_wrap)
{
    struct kr_cq q = {0};
    struct kr_msg *m = one_topic_msg();
    for (uint32_t i = 0; i < 6; i++) { /* move head so the ring wraps */
        kr_msg_ref(m, 1);
        kr_cq_push(&q, &(struct kr_cq_entry){.msg = m, .topics = kr_topicset_from_word(100 + i), .reply_bytes = 1});
    }
    for (uint32_t i = 0; i < 6; i++) {
        kr_msg_unref(kr_cq_at(&q, 0)->msg);
        kr_cq_pop(&q);
    }
    for (uint32_t i = 0; i < 5; i++) {
        kr_msg_ref(m, 1);
        kr_cq_push(&q, &(struct kr_cq_entry){.msg = m, .topics = kr_topicset_from_word(i), .reply_bytes = 1});
    }
    kr_msg_ref(m, 1);
    kr_cq_insert(&q, 2, &(struct kr_cq_entry){.msg = m, .topics = kr_topicset_from_word(99), .reply_bytes = 1});
    uint64_t want[] = {0, 1, 99, 2, 3, 4};
    cr_assert_eq(q.count, 6);
    cr_assert_eq(q.bytes, 6);
    for (uint32_t i = 0; i < 6; i++)
        cr_assert_eq(kr_cq_at(&q, i)->topics.word, want[i], "position %u", i);
    kr_cq_clear(&q);
    kr_msg_unref(m);
}

/* ---------------------------------------------------------------- written out at once */

static struct {
    bool accept;     /* what the push callback answers */
    uint32_t calls;  /* how often it was asked */
    struct kr_msg *got[8];
    uint64_t words[8];
    uint32_t refs[8]; /* the message's references while the callback ran */
} D;

static bool push_cb(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_msg *m,
                      const struct kr_topicset *topics)
{
    (void)x;
    cr_assert_eq(d->q.count, 0, "offered only with nothing queued");
    cr_assert_not(d->retro_active, "never while a retroactive subscribe waits");
    cr_assert_not(d->overflowed);
    if (D.calls < 8) {
        D.got[D.calls] = m;
        D.words[D.calls] = topics->word;
        D.refs[D.calls] = kr_msg_refs(m);
    }
    D.calls++;
    return D.accept;
}

static struct kr_dlv_ctx ctx_push(bool accept)
{
    struct kr_dlv_ctx x = ctx_make(100, 1 << 20);
    memset(&D, 0, sizeof(D));
    D.accept = accept;
    x.push = push_cb;
    return x;
}

/* A fanout's deliveries written out one after another give up their references with one
 * atomic operation when the net thread's turn ends, not one each; a different message
 * ends the run, and a poll reply's entries are released the same way. */
Test(deliver, written_out_references_are_dropped_together_at_the_end_of_the_turn)
{
    struct kr_dlv_ctx x = ctx_push(true);
    struct kr_dlv d[3];
    memset(d, 0, sizeof(d));
    struct kr_msg *a = msg(5, 10, 2, 1, "a"), *b = msg(5, 11, 2, 1, "b");
    for (int i = 0; i < 3; i++) {
        kr_msg_ref(a, 1);
        struct kr_event ev = {.type = KR_EV_DELIVER, .conn = 1, .ptr = a, .mask = 1};
        kr_dlv_deliver(&x, &d[i], &ev, false);
    }
    cr_assert_eq(D.calls, 3);
    cr_assert_eq(kr_msg_refs(a), 4, "kept while the run of the same message goes on");
    kr_msg_ref(b, 1);
    struct kr_event ev = {.type = KR_EV_DELIVER, .conn = 1, .ptr = b, .mask = 1};
    kr_dlv_deliver(&x, &d[0], &ev, false);
    cr_assert_eq(kr_msg_refs(a), 1, "another message ends the run: dropped at once");
    cr_assert_eq(kr_msg_refs(b), 2);
    kr_dlv_release_later(&x);
    cr_assert_eq(kr_msg_refs(b), 1, "the end of the turn drops the rest");
    kr_dlv_release_later(&x);
    cr_assert_eq(kr_msg_refs(b), 1, "nothing twice");
    /* queued entries handed out by a poll reply */
    D.accept = false;
    for (int i = 0; i < 2; i++)
        deliver(&x, &d[1], b, 1u, false);
    cr_assert_eq(kr_msg_refs(b), 3);
    kr_dlv_pop(&x, &d[1]);
    kr_dlv_pop(&x, &d[1]);
    cr_assert_eq(kr_msg_refs(b), 3, "held until the turn ends");
    kr_dlv_release_later(&x);
    cr_assert_eq(kr_msg_refs(b), 1);
    /* the last reference given up frees the message then (ASan: no leak, no use after) */
    kr_msg_ref(a, 1);
    struct kr_event last = {.type = KR_EV_DELIVER, .conn = 1, .ptr = a, .mask = 1};
    D.accept = true;
    kr_msg_unref(a); /* the test's own: the delivery's is the last */
    kr_dlv_deliver(&x, &d[2], &last, false);
    kr_dlv_release_later(&x);
    for (int i = 0; i < 3; i++) {
        kr_dlv_clear(&x, &d[i]);
        kr_dlv_free(&d[i]);
    }
    kr_msg_unref(b);
}

Test(deliver, push_takes_complete_deliveries_and_releases_them)
{
    struct kr_dlv_ctx x = ctx_push(true);
    struct kr_dlv d = {0};
    struct kr_msg *m = msg(5, 10, 2, 1, "payload");
    deliver(&x, &d, m, 2u, false);
    cr_assert_eq(D.calls, 1);
    cr_assert_eq(D.got[0], m);
    cr_assert_eq(D.words[0], 2u, "the matched topics are handed over");
    cr_assert_eq(D.refs[0], 2, "the delivery's reference is held while the callback runs");
    cr_assert_eq(kr_msg_refs(m), 1, "and dropped after it wrote the message out");
    cr_assert_eq(d.q.count, 0, "nothing queued");
    cr_assert_eq(T.queued_messages, 0);
    cr_assert_eq(T.queued_bytes, 0);
    cr_assert_eq(T.deliveries_queued, 1, "still counted as a delivery");
    cr_assert_eq(T.queued_calls, 0);
    cr_assert(kr_dlv_empty(&d));
    kr_msg_unref(m);
    kr_dlv_free(&d);
}

Test(deliver, push_refused_queues_and_later_deliveries_queue_behind)
{
    struct kr_dlv_ctx x = ctx_push(false);
    struct kr_dlv d = {0};
    struct kr_msg *a = msg(5, 10, 1, 1, "a"), *b = msg(5, 11, 1, 1, "b");
    deliver(&x, &d, a, 1u, false);
    cr_assert_eq(D.calls, 1, "offered");
    cr_assert_eq(d.q.count, 1, "refused: queued");
    D.accept = true;
    deliver(&x, &d, b, 1u, false);
    cr_assert_eq(D.calls, 1, "not offered while something is queued before it (order)");
    cr_assert_eq(d.q.count, 2);
    char buf[64];
    cr_assert_eq(head_topics(&d, buf, sizeof(buf)), a);
    pop(&x, &d);
    cr_assert_eq(head_topics(&d, buf, sizeof(buf)), b);
    pop(&x, &d);
    cr_assert_eq(T.deliveries_queued, 2);
    kr_msg_unref(a);
    kr_msg_unref(b);
    kr_dlv_clear(&x, &d);
    kr_dlv_free(&d);
}

Test(deliver, push_never_for_multi_shard_retro_replay_or_overflowed)
{
    struct kr_dlv_ctx x = ctx_push(true);
    struct kr_dlv d = {0};
    /* a multi-shard message still needs the merge: queued, never written at once */
    struct kr_msg *multi = msg(5, 10, 2, 2, "mm");
    deliver(&x, &d, multi, 1u, false);
    cr_assert_eq(D.calls, 0);
    cr_assert_eq(d.q.count, 1);
    deliver(&x, &d, multi, 2u, false);
    cr_assert_eq(d.q.count, 1, "its other part merged into the entry");
    cr_assert_not(end(&x, multi, 1));
    cr_assert(end(&x, multi, 1));
    cr_assert_eq(ready(&d), 1);
    pop(&x, &d);
    kr_msg_unref(multi);
    /* during a retroactive subscribe everything is staged */
    struct kr_msg *r = msg(6, 5, 1, 1, "r"), *lv = msg(7, 20, 1, 1, "lv");
    kr_dlv_retro_begin(&d);
    deliver(&x, &d, r, 1u, true);
    deliver(&x, &d, lv, 1u, false);
    cr_assert_eq(D.calls, 0);
    cr_assert_eq(d.nstage, 2);
    kr_dlv_retro_done(&x, &d);
    cr_assert_eq(d.q.count, 2, "replayed then live, queued");
    cr_assert_eq(ready(&d), 2);
    pop(&x, &d);
    pop(&x, &d);
    /* once drained, a single-shard live delivery goes straight out again */
    deliver(&x, &d, lv, 1u, false);
    cr_assert_eq(D.calls, 1);
    cr_assert_eq(d.q.count, 0);
    /* an overflowed client gets nothing */
    d.overflowed = true;
    deliver(&x, &d, lv, 1u, false);
    cr_assert_eq(D.calls, 1);
    cr_assert_eq(kr_msg_refs(lv), 1);
    kr_msg_unref(r);
    kr_msg_unref(lv);
    kr_dlv_clear(&x, &d);
    kr_dlv_free(&d);
}

/* ---------------------------------------------------------------- positions */

static uint64_t resync_notices, resync_topics, queue_collapses;

static struct kr_dlv_ctx ctx_pos(uint32_t nshards, uint64_t max_msgs)
{
    struct kr_dlv_ctx x = ctx_make(max_msgs, UINT64_MAX);
    x.nshards = nshards;
    x.resync_max_topics = 2;
    resync_notices = resync_topics = queue_collapses = 0;
    x.ctr.resync_notices = &resync_notices;
    x.ctr.resync_topics = &resync_topics;
    x.ctr.queue_collapses = &queue_collapses;
    return x;
}

/* Hand out (pop) the n entries at the head. */
static void hand_out(struct kr_dlv_ctx *x, struct kr_dlv *d, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        pop(x, d);
}

Test(position, follows_what_was_handed_out_and_the_frontier)
{
    struct kr_dlv_ctx x = ctx_pos(2, 100);
    struct kr_dlv d = {0};
    kr_dlv_track_position(&x, &d);
    uint64_t seen[2] = {3, 7}, pos[2];
    cr_assert(kr_dlv_position(&x, &d, seen, pos));
    cr_assert(pos[0] == 3 && pos[1] == 7, "nothing queued: the frontier");
    struct kr_msg *m = msg(9, 1, 1, 1, "a");
    kr_msg_set_seq(m, 0, 0, 5); /* shard 0 numbered it 5 */
    deliver(&x, &d, m, 1, false);
    cr_assert(kr_dlv_position(&x, &d, seen, pos));
    cr_assert_eq(pos[0], 4, "queued at 5: the position stops before it");
    hand_out(&x, &d, 1);
    cr_assert(kr_dlv_position(&x, &d, seen, pos));
    cr_assert_eq(pos[0], 5, "handed out: the position covers it (beyond the frontier seen)");
    cr_assert_eq(pos[1], 7);
    kr_msg_unref(m);
    kr_dlv_clear(&x, &d);
    kr_dlv_free(&d);
}

/* Regression: a drained client lost messages when it resumed on another node. The drain
 * unsubscribes the client everywhere before its last reply; a shard's frontier announced
 * after that passed messages on its topics that it never got, and its final position
 * counted them, so the resume skipped them. Its position now counts the frontiers only up
 * to where they were when its subscriptions were taken; what arrives from before still
 * counts as it is handed out. */
Test(position, frontiers_after_the_drain_took_its_subscriptions_do_not_count)
{
    struct kr_dlv_ctx x = ctx_pos(2, 100);
    struct kr_dlv d = {0};
    kr_dlv_track_position(&x, &d);
    uint64_t seen[2] = {3, 7}, pos[2];
    kr_dlv_cap_frontier(&x, &d, seen);
    /* routed before the shard dropped its subscriptions: delivered, numbered 5 */
    struct kr_msg *m = msg(9, 1, 1, 1, "a");
    kr_msg_set_seq(m, 0, 0, 5);
    deliver(&x, &d, m, 1, false);
    /* then the shards went on: frontiers 12 and 20, past messages it will not get */
    seen[0] = 12;
    seen[1] = 20;
    cr_assert(kr_dlv_position(&x, &d, seen, pos));
    cr_assert_eq(pos[0], 4, "queued at 5: just before it, not at the later frontier");
    hand_out(&x, &d, 1);
    cr_assert(kr_dlv_position(&x, &d, seen, pos));
    cr_assert_eq(pos[0], 5, "what it was handed counts");
    cr_assert_eq(pos[1], 7, "the frontier as it was when its subscriptions were taken");
    uint64_t later[2] = {30, 40};
    kr_dlv_cap_frontier(&x, &d, later); /* a second call changes nothing */
    cr_assert(kr_dlv_position(&x, &d, seen, pos));
    cr_assert(pos[0] == 5 && pos[1] == 7);
    /* a client that keeps no position: nothing to cap */
    struct kr_dlv plain = {0};
    kr_dlv_cap_frontier(&x, &plain, seen);
    cr_assert_null(plain.seen_cap);
    kr_msg_unref(m);
    kr_dlv_clear(&x, &d);
    kr_dlv_free(&d);
}

/* A multi-shard entry completed after a later part of one of its shards arrived: a reply
 * that hands it out must also hand out that part's entry (or the position after it would
 * claim the later one, or replay the earlier). */
Test(position, a_cut_is_extended_over_an_earlier_part_of_the_same_shard)
{
    struct kr_dlv_ctx x = ctx_pos(2, 100);
    struct kr_dlv d = {0};
    kr_dlv_track_position(&x, &d);
    struct kr_msg *e = msg(1, 10, 2, 2, "eeeeeeeeee"), *f = msg(2, 11, 3, 1, "ffffffffff");
    kr_msg_set_seq(e, 0, 0, 10); /* e: shard 0 part first */
    deliver(&x, &d, e, 1, false);
    kr_msg_set_seq(f, 2, 1, 15); /* f: shard 1 numbered it 15, before e's shard 1 part */
    deliver(&x, &d, f, 4, false);
    kr_msg_set_seq(e, 1, 1, 20);
    deliver(&x, &d, e, 2, false);
    end(&x, e, 1);
    end(&x, e, 1);
    uint64_t seen[2] = {10, 20}, bytes, pos[2];
    cr_assert_eq(ready(&d), 2);
    /* a reply budget of one entry would hand out e (shard 1 at 20) and leave f (15) */
    uint32_t n = kr_dlv_ready_positioned(&x, &d, 1, &bytes);
    cr_assert_eq(n, 2, "extended over f");
    hand_out(&x, &d, n);
    cr_assert(kr_dlv_position(&x, &d, seen, pos));
    cr_assert(pos[0] == 10 && pos[1] == 20);
    kr_msg_unref(e);
    kr_msg_unref(f);
    kr_dlv_clear(&x, &d);
    kr_dlv_free(&d);
}

/* The same with the earlier part's entry still incomplete: the reply stops before e. */
Test(position, a_cut_stops_before_an_entry_ahead_of_an_incomplete_one)
{
    struct kr_dlv_ctx x = ctx_pos(2, 100);
    struct kr_dlv d = {0};
    kr_dlv_track_position(&x, &d);
    struct kr_msg *e = msg(1, 10, 2, 2, "e"), *g = msg(2, 11, 2, 2, "g");
    kr_msg_set_seq(e, 0, 0, 10);
    deliver(&x, &d, e, 1, false);
    kr_msg_set_seq(g, 1, 1, 15); /* g: its shard 1 part (15) first, shard 0 part to come */
    deliver(&x, &d, g, 2, false);
    kr_msg_set_seq(e, 1, 1, 20);
    deliver(&x, &d, e, 2, false);
    end(&x, e, 1);
    end(&x, e, 1);
    end(&x, g, 1); /* one of g's two ENDs */
    uint64_t seen[2] = {10, 20}, bytes, pos[2];
    cr_assert_eq(ready(&d), 1, "e is complete, g is not");
    cr_assert_eq(kr_dlv_ready_positioned(&x, &d, UINT64_MAX, &bytes), 0);
    cr_assert(kr_dlv_position(&x, &d, seen, pos));
    cr_assert(pos[1] == 14, "below g's part: %llu", (unsigned long long)pos[1]);
    kr_dlv_clear(&x, &d);
    kr_dlv_free(&d);
    kr_msg_unref(e);
    kr_msg_unref(g);
}

/* An overflow of a client that opted in: one notice naming the topics (then `*` past
 * resync_max_topics), the position past what it replaced. */
Test(position, collapse_replaces_the_queue_by_one_notice)
{
    struct kr_dlv_ctx x = ctx_pos(1, 3);
    struct kr_dlv d = {.resync = true};
    kr_dlv_track_position(&x, &d);
    struct kr_msg *m[4];
    for (int i = 0; i < 4; i++) {
        m[i] = msg(1, (uint64_t)(10 + i), 1, 1, "p");
        kr_msg_set_seq(m[i], 0, 0, (uint64_t)(100 + i));
        deliver(&x, &d, m[i], 1, false);
    }
    cr_assert_eq(queue_collapses, 1);
    cr_assert_eq(T.queue_overflows, 0);
    cr_assert_eq(d.q.count, 1);
    cr_assert(!d.overflowed);
    char buf[64];
    struct kr_msg *n = head_topics(&d, buf, sizeof(buf));
    cr_assert_str_eq(buf, "__kraken__:resync ");
    uint32_t plen;
    const char *p = kr_msg_payload(n, &plen);
    cr_assert_eq(plen, 2);
    cr_assert(memcmp(p, "t0", 2) == 0);
    uint64_t seen[1] = {103}, pos[1];
    cr_assert(kr_dlv_position(&x, &d, seen, pos));
    cr_assert_eq(pos[0], 103, "the notice covers what it replaced");
    /* a notice for two more topics folds into the unread one: past 2 topics, `*` */
    kr_dlv_notice(&x, &d, "a", 1);
    kr_dlv_notice(&x, &d, "b", 1);
    cr_assert_eq(d.q.count, 1);
    n = kr_dlv_head(&d)->msg;
    p = kr_msg_payload(n, &plen);
    cr_assert(plen == 1 && p[0] == '*', "%.*s", (int)plen, p);
    for (int i = 0; i < 4; i++)
        kr_msg_unref(m[i]);
    kr_dlv_clear(&x, &d);
    kr_dlv_free(&d);
}
