/* Unit tests of one shard's topic table. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <urcu/urcu-memb.h>

#include "kr_topics.h"

static struct kr_topics *t;

static void setup(void)
{
    urcu_memb_register_thread();
    t = kr_topics_create();
}

static void teardown(void)
{
    kr_topics_destroy(t);
    urcu_memb_barrier();
    urcu_memb_unregister_thread();
}

TestSuite(topics, .init = setup, .fini = teardown);

static int has_sub(const char *topic, uint64_t conn)
{
    struct kr_topic *tp = kr_topics_find(t, topic, (uint32_t)strlen(topic));
    if (!tp)
        return 0;
    for (uint32_t i = 0; i < kr_topic_nsubs(tp); i++)
        if (kr_sconn_id(kr_topic_sub(tp, i, NULL)) == conn)
            return 1;
    return 0;
}

Test(topics, subscribe_is_idempotent)
{
    cr_assert_eq(kr_topics_subscribe(t, "a", 1, 1, 0), 1);
    cr_assert_eq(kr_topics_subscribe(t, "a", 1, 1, 0), 0);
    cr_assert_eq(kr_topics_subscribe(t, "a", 1, 2, 0), 1);
    cr_assert_eq(kr_topics_count(t), 1);
    cr_assert_eq(kr_topics_subscriptions(t), 2);
    cr_assert_eq(kr_topic_nsubs(kr_topics_find(t, "a", 1)), 2);
}

Test(topics, binary_safe_and_length_exact)
{
    cr_assert_eq(kr_topics_subscribe(t, "ab", 2, 1, 0), 1);
    cr_assert_null(kr_topics_find(t, "a", 1));
    cr_assert_null(kr_topics_find(t, "abc", 3));
    cr_assert_not_null(kr_topics_find(t, "ab", 2));
}

Test(topics, unsubscribe_removes_and_frees_empty_topics)
{
    kr_topics_subscribe(t, "x", 1, 1, 0);
    kr_topics_subscribe(t, "x", 1, 2, 0);
    cr_assert_eq(kr_topics_unsubscribe(t, "x", 1, 3), 0, "unknown client is ignored");
    cr_assert_eq(kr_topics_unsubscribe(t, "nope", 4, 1), 0, "unknown topic is ignored");
    cr_assert_eq(kr_topics_unsubscribe(t, "x", 1, 1), 1);
    cr_assert(!has_sub("x", 1));
    cr_assert(has_sub("x", 2));
    cr_assert_eq(kr_topics_unsubscribe(t, "x", 1, 2), 1);
    cr_assert_null(kr_topics_find(t, "x", 1));
    cr_assert_eq(kr_topics_count(t), 0);
    cr_assert_eq(kr_topics_subscriptions(t), 0);
}

/* Removed topics and client records are freed in batches after a grace period (one
 * call_rcu per batch): more removals than one batch holds, topics and clients mixed, the
 * same names subscribed again before and after the flush; ASan checks every record is freed
 * once and none is used after. */
Test(topics, removals_are_freed_in_batches_after_a_grace_period)
{
    char name[32];
    for (int round = 0; round < 2; round++) {
        for (uint64_t c = 1; c <= 700; c++) {
            int n = snprintf(name, sizeof(name), "topic-%llu", (unsigned long long)c);
            cr_assert_eq(kr_topics_subscribe(t, name, (uint32_t)n, c, 0), 1);
        }
        cr_assert_eq(kr_topics_count(t), 700);
        for (uint64_t c = 1; c <= 700; c++) { /* each removes a topic and a client */
            int n = snprintf(name, sizeof(name), "topic-%llu", (unsigned long long)c);
            cr_assert_eq(kr_topics_unsubscribe(t, name, (uint32_t)n, c), 1);
            if (c == 300) /* again while its old record waits for the grace period */
                cr_assert_eq(kr_topics_subscribe(t, name, (uint32_t)n, c, 0), 1);
        }
        cr_assert_eq(kr_topics_count(t), 1, "the one subscribed again");
        cr_assert_eq(kr_topics_conn_nsubs(t, 300), 1);
        cr_assert_eq(kr_topics_drop_conn(t, 300), 1);
        cr_assert_eq(kr_topics_count(t), 0);
        kr_topics_flush_retired(t);
        cr_assert(kr_topics_retired_waiting(t), "handed to RCU, not freed yet");
        urcu_memb_barrier(); /* the grace period ended: the batches came back */
        cr_assert(kr_topics_retired_waiting(t), "freed by the owner, not by liburcu's thread");
        kr_topics_flush_retired(t);
        cr_assert_not(kr_topics_retired_waiting(t), "the owner's next flush freed them");
    }
}

Test(topics, drop_conn_removes_everything_of_one_client)
{
    char name[32];
    for (int i = 0; i < 500; i++) {
        int n = snprintf(name, sizeof(name), "topic-%d", i);
        kr_topics_subscribe(t, name, (uint32_t)n, 10, 0);
        if (i % 2 == 0)
            kr_topics_subscribe(t, name, (uint32_t)n, 11, 0);
    }
    cr_assert_eq(kr_topics_subscriptions(t), 750);
    cr_assert_eq(kr_topics_drop_conn(t, 10), 500);
    cr_assert_eq(kr_topics_drop_conn(t, 10), 0);
    cr_assert_eq(kr_topics_count(t), 250);
    cr_assert(has_sub("topic-0", 11));
    cr_assert_null(kr_topics_find(t, "topic-1", 7));
}

Test(topics, swap_remove_keeps_other_subscribers)
{
    for (uint64_t c = 1; c <= 100; c++)
        kr_topics_subscribe(t, "hot", 3, c, 0);
    for (uint64_t c = 1; c <= 100; c += 3)
        cr_assert_eq(kr_topics_unsubscribe(t, "hot", 3, c), 1);
    for (uint64_t c = 1; c <= 100; c++)
        cr_assert_eq(has_sub("hot", c), (c - 1) % 3 != 0, "client %llu", (unsigned long long)c);
    /* the client side must still be consistent: drop everything */
    for (uint64_t c = 1; c <= 100; c++)
        kr_topics_drop_conn(t, c);
    cr_assert_eq(kr_topics_subscriptions(t), 0);
    cr_assert_eq(kr_topics_count(t), 0);
}

/* A topic's and a client's first subscription is held in the record itself: the moves from
 * one to two, back to one and to none, on both sides, keep every subscription reachable. */
Test(topics, one_subscription_held_inline_then_many_then_one)
{
    cr_assert_eq(kr_topics_subscribe(t, "solo", 4, 1, 0), 1);
    cr_assert(has_sub("solo", 1));
    cr_assert_eq(kr_topics_subscribe(t, "solo", 4, 2, 0), 1); /* topic side: one -> array */
    cr_assert_eq(kr_topics_subscribe(t, "solo", 4, 3, 0), 1);
    cr_assert_eq(kr_topics_subscribe(t, "duo", 3, 1, 0), 1);  /* client 1: one -> array */
    cr_assert_eq(kr_topic_nsubs(kr_topics_find(t, "solo", 4)), 3);
    cr_assert_eq(kr_topics_conn_nsubs(t, 1), 2);
    cr_assert_eq(kr_topics_unsubscribe(t, "solo", 4, 1), 1);
    cr_assert(!has_sub("solo", 1) && has_sub("solo", 2) && has_sub("solo", 3));
    cr_assert(has_sub("duo", 1), "client 1's other subscription survives");
    cr_assert_eq(kr_topics_unsubscribe(t, "solo", 4, 3), 1);
    cr_assert(has_sub("solo", 2));
    char buf[64];
    uint32_t cursor = 0;
    size_t n = kr_topics_conn_topics(t, 1, &cursor, buf, sizeof(buf));
    cr_assert_eq(n, 4);
    cr_assert(memcmp(buf, "duo\n", 4) == 0);
    cr_assert_eq(kr_topics_drop_conn(t, 1), 1);
    cr_assert_eq(kr_topics_drop_conn(t, 2), 1);
    cr_assert_eq(kr_topics_subscriptions(t), 0);
    cr_assert_eq(kr_topics_count(t), 0);
    /* and the churn shape: one client, one topic, made and freed again and again */
    for (int i = 0; i < 1000; i++) {
        cr_assert_eq(kr_topics_subscribe(t, "flip", 4, 7, 0), 1);
        cr_assert(has_sub("flip", 7));
        cr_assert_eq(kr_topics_unsubscribe(t, "flip", 4, 7), 1);
        kr_topics_flush_retired(t);
    }
    cr_assert_eq(kr_topics_count(t), 0);
}

static int count_cb(void *arg, const char *topic, uint32_t len, uint32_t nsubs)
{
    uint64_t *acc = arg;
    acc[0]++;
    acc[1] += nsubs;
    (void)topic;
    (void)len;
    return 0;
}

Test(topics, walk_sees_every_topic)
{
    char name[32];
    for (int i = 0; i < 3000; i++) {
        int n = snprintf(name, sizeof(name), "w%d", i);
        kr_topics_subscribe(t, name, (uint32_t)n, (uint64_t)(i % 7), 0);
    }
    uint64_t acc[2] = {0, 0};
    kr_topics_walk(t, count_cb, acc);
    cr_assert_eq(acc[0], 3000);
    cr_assert_eq(acc[1], 3000);
}

/* Continuity: what becomes of emptied topics, and the clock a topic is held since. */
static int hook_on, hook_off;
static void count_hook(void *arg, const char *topic, uint32_t len, bool on)
{
    (void)arg;
    (void)topic;
    (void)len;
    if (on)
        hook_on++;
    else
        hook_off++;
}

/* KR_TOPICS_KEEP (a cluster node): an emptied topic stays, uncounted and unwalked, holding
 * its clock; the hook hears it emptied and filled again; kr_topics_forget removes it only
 * while empty. */
Test(topics, kept_empty_topics_hold_their_clock_until_forgotten)
{
    kr_topics_set_hook(t, count_hook, NULL);
    kr_topics_set_empty(t, KR_TOPICS_KEEP);
    kr_topics_set_clock(t, 10);
    kr_topics_subscribe(t, "k", 1, 1, 0);
    kr_topics_set_clock(t, 20);
    cr_assert_eq(kr_topic_held(kr_topics_find(t, "k", 1)), 10);
    kr_topics_unsubscribe(t, "k", 1, 1);
    cr_assert_eq(hook_off, 1);
    cr_assert_eq(kr_topics_count(t), 0, "an empty topic is not counted");
    uint64_t acc[2] = {0, 0};
    kr_topics_walk(t, count_cb, acc);
    cr_assert_eq(acc[0], 0, "nor walked");
    struct kr_topic *tp = kr_topics_find(t, "k", 1);
    cr_assert_not_null(tp, "but kept");
    cr_assert_eq(kr_topic_held(tp), 10, "with the clock of its first subscriber");
    /* a subscriber again: the hook hears it, the clock stays (it was held throughout) */
    kr_topics_subscribe(t, "k", 1, 2, 0);
    cr_assert_eq(hook_on, 2);
    cr_assert_eq(kr_topic_held(kr_topics_find(t, "k", 1)), 10);
    cr_assert_not(kr_topics_forget(t, "k", 1), "not while it has a subscriber");
    kr_topics_drop_conn(t, 2);
    cr_assert(kr_topics_forget(t, "k", 1));
    cr_assert_null(kr_topics_find(t, "k", 1));
    /* back after it was forgotten: held from the new clock */
    kr_topics_subscribe(t, "k", 1, 3, 0);
    cr_assert_eq(kr_topic_held(kr_topics_find(t, "k", 1)), 20);
    kr_topics_set_hook(t, NULL, NULL);
}

/* KR_TOPICS_HOLD (a draining cluster node): emptied topics stay and the hook is not told,
 * so the cluster interest stays too; kr_topics_forget still removes an empty one (its
 * interest was dropped). */
Test(topics, held_topics_stay_without_telling_the_hook)
{
    kr_topics_set_hook(t, count_hook, NULL);
    kr_topics_set_empty(t, KR_TOPICS_HOLD);
    kr_topics_subscribe(t, "h1", 2, 1, 0);
    kr_topics_subscribe(t, "h2", 2, 1, 0);
    cr_assert_eq(kr_topics_drop_conn(t, 1), 2);
    cr_assert_eq(hook_off, 0);
    cr_assert_not_null(kr_topics_find(t, "h1", 2));
    cr_assert_not_null(kr_topics_find(t, "h2", 2));
    cr_assert(kr_topics_forget(t, "h2", 2));
    cr_assert_null(kr_topics_find(t, "h2", 2));
    kr_topics_set_hook(t, NULL, NULL);
}

/* ------------------------------------------------------------ table growth (issue "Closer
 * to the wire", item 3): a storm of new topics must keep bucket chains short, whatever the
 * scheduler does with other threads. Before, the tables grew through liburcu's automatic
 * resize: it waits until entries reach 8 per bucket, then asks a background worker, and a
 * lost hand-off could leave a table at 2048 buckets for good (chains of hundreds). */

#include <ck_pr.h>
#include <pthread.h>

/* A thread keeping a CPU busy while the owner works (what other work on the machine does);
 * it stops when told, or after a bounded number of rounds. */
static int hog_stop;
static void *hog_main(void *arg)
{
    (void)arg;
    volatile uint64_t x = 0;
    for (uint64_t i = 0; i < (1ULL << 36) && !ck_pr_load_int(&hog_stop); i++)
        x++;
    return NULL;
}

#define KR_TEST_MAX_LOAD 2  /* entries per bucket on average, at most */
#define KR_TEST_MAX_CHAIN 24 /* longest chain (a loaded bucket; average 2 makes 24 absurd) */

static void assert_table_shape(enum kr_topics_table which, uint64_t expect_nodes, const char *when)
{
    struct kr_topics_table_stats st;
    kr_topics_table_stats(t, which, &st);
    cr_assert_eq(st.nodes, expect_nodes, "%s: %llu entries", when, (unsigned long long)st.nodes);
    cr_assert_leq(st.nodes, KR_TEST_MAX_LOAD * st.buckets,
                  "%s: %llu entries in %llu buckets (longest chain %llu)", when,
                  (unsigned long long)st.nodes, (unsigned long long)st.buckets,
                  (unsigned long long)st.max_chain);
    cr_assert_leq(st.max_chain, KR_TEST_MAX_CHAIN, "%s: longest chain %llu in %llu buckets", when,
                  (unsigned long long)st.max_chain, (unsigned long long)st.buckets);
}

Test(topics, storm_of_new_topics_keeps_chains_short_under_cpu_hog, .timeout = 120)
{
    enum { N = 300000, CHECK_EVERY = 20000 };
    pthread_t hogs[2];
    ck_pr_store_int(&hog_stop, 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&hogs[i], NULL, hog_main, NULL), 0);
    char name[32];
    int added = 0;
    for (int i = 1; i <= N; i++) {
        int n = snprintf(name, sizeof(name), "storm-%d", i);
        added += kr_topics_subscribe(t, name, (uint32_t)n, 1, 0);
        if (i % CHECK_EVERY == 0 || i == N)
            assert_table_shape(KR_TOPICS_TABLE_TOPICS, (uint64_t)i, "growing");
    }
    cr_assert_eq(added, N);
    ck_pr_store_int(&hog_stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(hogs[i], NULL);
    cr_assert_eq(kr_topics_count(t), N);
    /* every topic is found again */
    for (int i = 1; i <= N; i += 997) {
        int n = snprintf(name, sizeof(name), "storm-%d", i);
        cr_assert_not_null(kr_topics_find(t, name, (uint32_t)n), "%s", name);
    }
}

Test(topics, many_clients_keep_the_clients_table_short, .timeout = 120)
{
    enum { N = 100000, CHECK_EVERY = 10000 };
    for (uint64_t c = 1; c <= N; c++) {
        cr_assert_eq(kr_topics_subscribe(t, "shared", 6, c, 0), 1);
        if (c % CHECK_EVERY == 0)
            assert_table_shape(KR_TOPICS_TABLE_CONNS, c, "clients growing");
    }
    for (uint64_t c = 1; c <= N; c++)
        cr_assert_eq(kr_topics_drop_conn(t, c), 1);
    struct kr_topics_table_stats st;
    kr_topics_table_stats(t, KR_TOPICS_TABLE_CONNS, &st);
    cr_assert_eq(st.nodes, 0);
    cr_assert_eq(kr_topics_count(t), 0);
}

/* The table shrinks when most topics leave (one client dropping them all at once, or one by
 * one), so an emptied table is not left with its storm-time buckets; what stays is found. */
Test(topics, table_shrinks_after_topics_leave, .timeout = 120)
{
    enum { N = 200000, KEEP = 1000 };
    char name[32];
    for (int i = 0; i < N; i++) {
        int n = snprintf(name, sizeof(name), "leave-%d", i);
        kr_topics_subscribe(t, name, (uint32_t)n, i < KEEP ? 2 : 3, 0);
    }
    struct kr_topics_table_stats big;
    kr_topics_table_stats(t, KR_TOPICS_TABLE_TOPICS, &big);
    cr_assert_eq(kr_topics_drop_conn(t, 3), N - KEEP);
    struct kr_topics_table_stats st;
    kr_topics_table_stats(t, KR_TOPICS_TABLE_TOPICS, &st);
    cr_assert_eq(st.nodes, KEEP);
    cr_assert_lt(st.buckets, big.buckets / 16, "%llu buckets left for %d topics (were %llu)",
                 (unsigned long long)st.buckets, KEEP, (unsigned long long)big.buckets);
    for (int i = 0; i < KEEP; i++) {
        snprintf(name, sizeof(name), "leave-%d", i);
        cr_assert(has_sub(name, 2), "%s", name);
    }
    /* one by one now: grow again, then unsubscribe each */
    for (int i = 0; i < N; i++) {
        int n = snprintf(name, sizeof(name), "again-%d", i);
        kr_topics_subscribe(t, name, (uint32_t)n, 4, 0);
    }
    for (int i = 0; i < N; i++) {
        int n = snprintf(name, sizeof(name), "again-%d", i);
        cr_assert_eq(kr_topics_unsubscribe(t, name, (uint32_t)n, 4), 1);
    }
    kr_topics_table_stats(t, KR_TOPICS_TABLE_TOPICS, &st);
    cr_assert_eq(st.nodes, KEEP);
    cr_assert_lt(st.buckets, big.buckets / 16, "%llu buckets left after unsubscribes",
                 (unsigned long long)st.buckets);
}

/* RCU readers (admin walks) keep working on another thread while the owner grows and shrinks
 * the table: every walk sees at least the topics that never leave. */
struct walker {
    int stop;
    uint64_t walks;
    uint64_t short_walks;
};

static void *walker_main(void *arg)
{
    struct walker *w = arg;
    urcu_memb_register_thread();
    for (int i = 0; i < 100000 && !ck_pr_load_int(&w->stop); i++) {
        uint64_t acc[2] = {0, 0};
        kr_topics_walk(t, count_cb, acc);
        if (acc[0] < 100)
            w->short_walks++;
        w->walks++;
    }
    urcu_memb_unregister_thread();
    return NULL;
}

Test(topics, walks_run_while_the_table_grows_and_shrinks, .timeout = 120)
{
    char name[32];
    for (int i = 0; i < 100; i++) {
        int n = snprintf(name, sizeof(name), "stay-%d", i);
        kr_topics_subscribe(t, name, (uint32_t)n, 1, 0);
    }
    struct walker w = {0};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, walker_main, &w), 0);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 100000; i++) {
            int n = snprintf(name, sizeof(name), "tide-%d", i);
            kr_topics_subscribe(t, name, (uint32_t)n, 2, 0);
        }
        cr_assert_eq(kr_topics_drop_conn(t, 2), 100000);
    }
    ck_pr_store_int(&w.stop, 1);
    pthread_join(th, NULL);
    cr_assert_gt(w.walks, 0);
    cr_assert_eq(w.short_walks, 0, "%llu walks missed topics", (unsigned long long)w.short_walks);
    assert_table_shape(KR_TOPICS_TABLE_TOPICS, 100, "after the tides");
}
