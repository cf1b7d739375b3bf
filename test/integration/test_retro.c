/* Integration tests of retroactive subscriptions (register, retro_subscribe). */
#include <ck_pr.h>
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[1 << 20];

KR_IT_FIXTURE(start, "--num_router_shards", "3", "--num_net_threads", "2");

TestSuite(retro, .init = start, .fini = kr_it_fixture_stop, .timeout = 120);

Test(retro, register_then_subscribe_replays_what_was_published_after)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_publish(pub, "ra", "before", 6);
    kr_it_sends(sub, "set register 0 0 0\r\n\r\n");
    kr_it_expect(sub, "STORED\r\n");
    /* published within a millisecond of the register (same second, for sure) */
    kr_it_publish(pub, "ra rb", "after1", 6);
    kr_it_publish(pub, "rb", "other", 5);
    kr_it_publish(pub, "ra", "after2", 6);
    kr_it_subscribe(sub, "ra");
    kr_it_publish(pub, "ra", "live", 4);
    char out[1024];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 3, out, sizeof(out), &olen), 3);
    cr_assert_str_eq(out, "MESSAGE ra 6\r\nafter1\r\nMESSAGE ra 6\r\nafter2\r\nMESSAGE ra 4\r\nlive\r\n");
    /* only the first subscribe after register is retroactive: a replay would be queued
     * before the subscription's STORED, so before a marker published after it */
    kr_it_subscribe(sub, "rb");
    kr_it_publish(pub, "rb", "mark", 4);
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE rb 4\r\nmark\r\n");
    close(sub);
    close(pub);
}

Test(retro, retro_subscribe_with_fraction_merges_topics_across_shards)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    kr_it_sleep_ms(2);
    /* topics chosen to spread over 3 shards */
    kr_it_publish(pub, "x1 x2 x3 x4 x5 x6", "multi", 5);
    kr_it_publish(pub, "x9", "nope", 4);
    char req[256], block[128];
    int bl = snprintf(block, sizeof(block), "%ld.%06ld\r\nx6 x4 x2 x1", (long)tv.tv_sec, (long)tv.tv_usec);
    snprintf(req, sizeof(req), "set retro_subscribe 0 0 %d\r\n%s\r\n", bl, block);
    kr_it_sends(sub, req);
    kr_it_expect(sub, "STORED\r\n");
    char out[1024];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE x1 x2 x4 x6 5\r\nmulti\r\n",
                     "once, only the requested topics, in publish order");
    /* a marker on every requested topic: each shard's part of it follows any duplicate
     * that shard could still send */
    kr_it_publish(pub, "x1 x2 x4 x6", "mark", 4);
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE x1 x2 x4 x6 4\r\nmark\r\n", "no duplicate from another shard");
    close(sub);
    close(pub);
}

Test(retro, own_messages_are_not_replayed)
{
    int c = kr_it_connect(kr_it_srv.port);
    kr_it_sends(c, "set register 0 0 0\r\n\r\n");
    kr_it_expect(c, "STORED\r\n");
    kr_it_publish(c, "own", "self", 4);
    kr_it_subscribe(c, "own");
    /* a replay is queued before STORED, so before a marker published after it */
    int other = kr_it_connect(kr_it_srv.port);
    kr_it_publish(other, "own", "mark", 4);
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(c, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE own 4\r\nmark\r\n");
    close(other);
    close(c);
}

Test(retro, bad_horizon_is_a_bad_data_chunk)
{
    int c = kr_it_connect(kr_it_srv.port);
    kr_it_sends(c, "set retro_subscribe 0 0 7\r\n-5\r\nabc\r\n");
    kr_it_expect(c, "CLIENT_ERROR bad data chunk\r\n");
    kr_it_expect_closed(c);
    close(c);
}

Test(retro, horizon_before_start_is_not_found_but_subscribed)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_sends(sub, "set retro_subscribe 0 0 6\r\n1\r\nold\r\n");
    kr_it_expect(sub, "NOT_FOUND\r\n");
    kr_it_publish(pub, "old", "live", 4);
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE old 4\r\nlive\r\n");
    kr_it_sends(sub, "stats\r\n");
    kr_it_read_until(sub, buf, sizeof(buf), "END\r\n");
    cr_assert_not_null(strstr(buf, "STAT retro_not_found 1\r\n"), "%s", buf);
    cr_assert_not_null(strstr(buf, "STAT history_messages "), "%s", buf);
    close(sub);
    close(pub);
}

/* Regression: a retro_subscribe horizon in the future (clock skew between app servers)
 * answered STORED and then silently delivered nothing live on those topics, since the
 * fanout skips messages older than a subscription's horizon. It is now taken as now. */
Test(retro, future_horizon_is_taken_as_now)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_publish(pub, "fut1 fut2", "old", 3);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    char req[256], block[128];
    int bl = snprintf(block, sizeof(block), "%ld\r\nfut1 fut2", (long)tv.tv_sec + 3600);
    snprintf(req, sizeof(req), "set retro_subscribe 0 0 %d\r\n%s\r\n", bl, block);
    kr_it_sends(sub, req);
    kr_it_expect(sub, "STORED\r\n");
    kr_it_publish(pub, "fut2", "new", 3);
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1,
                 "a publish after STORED must be delivered");
    cr_assert_str_eq(out, "MESSAGE fut2 3\r\nnew\r\n", "nothing older is replayed");
    /* a late replay would come before a marker the same publisher sends after "new" */
    kr_it_publish(pub, "fut2", "marker", 6);
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE fut2 6\r\nmarker\r\n", "the marker comes next");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "retro_future_horizons"), 1);
    close(sub);
    close(pub);
}

Test(retro_small, overflowed_history_gives_not_found)
{
    /* its own server: a history of 4 messages per shard */
    const char *args[] = {"--num_router_shards", "1", "--messages_stored_per_router_shard", "4", NULL};
    kr_it_fixture_start(args);
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_sends(sub, "set register 0 0 0\r\n\r\n");
    kr_it_expect(sub, "STORED\r\n");
    for (int i = 0; i < 3; i++)
        kr_it_publish(pub, "h", "m", 1);
    /* still within the window */
    int sub2 = kr_it_connect(kr_it_srv.port);
    kr_it_sends(sub2, "set register 0 0 0\r\n\r\n");
    kr_it_expect(sub2, "STORED\r\n");
    for (int i = 0; i < 6; i++)
        kr_it_publish(pub, "h", "n", 1);
    /* STORED means handed to the router; the subscribes below may come through another net
     * thread's ring, so wait until the shard has routed (and evicted) all nine */
    kr_it_wait_stat(kr_it_srv.port, "messages_routed", KR_IT_EQ, 9);
    /* sub registered before 9 publishes: the 4-message window cannot cover it */
    kr_it_sends(sub, "set subscribe 0 0 1\r\nh\r\n");
    kr_it_expect(sub, "NOT_FOUND\r\n");
    /* a replay would be queued before NOT_FOUND, so before a marker published after it */
    kr_it_publish(pub, "h", "k", 1);
    char mout[64];
    size_t mlen;
    cr_assert_eq(kr_it_collect(sub, 1, mout, sizeof(mout), &mlen), 1);
    cr_assert_str_eq(mout, "MESSAGE h 1\r\nk\r\n", "nothing replayed");
    /* sub2 registered before 6 publishes: also too many for 4 */
    kr_it_sends(sub2, "set subscribe 0 0 1\r\nh\r\n");
    kr_it_expect(sub2, "NOT_FOUND\r\n");
    /* a fresh register is covered */
    int sub3 = kr_it_connect(kr_it_srv.port);
    kr_it_sends(sub3, "set register 0 0 0\r\n\r\n");
    kr_it_expect(sub3, "STORED\r\n");
    kr_it_publish(pub, "h", "z", 1);
    kr_it_subscribe(sub3, "h");
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub3, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE h 1\r\nz\r\n");
    close(sub);
    close(sub2);
    close(sub3);
    close(pub);
    kr_it_fixture_stop();
}

/* ------------------------------------------------------------------ race */

#define RACE_PUBS 3
#define RACE_MAX 100000

struct racer {
    uint16_t port;
    int id;
    int stop;
    int acked; /* last sequence number answered STORED */
};

static void *race_pub(void *p)
{
    struct racer *r = p;
    int fd = kr_it_connect(r->port);
    for (int seq = 0; seq < RACE_MAX && !ck_pr_load_int(&r->stop); seq++) {
        char payload[32];
        int n = snprintf(payload, sizeof(payload), "%d:%d", r->id, seq);
        kr_it_publish(fd, "race1 race2 race3", payload, (size_t)n);
        ck_pr_store_int(&r->acked, seq);
    }
    close(fd);
    return NULL;
}

/* How far every racing publisher got past a point: the fewest messages any of them has had
 * acknowledged since `base` (a figure to wait for). */
struct race_progress {
    struct racer *rs;
    int base[RACE_PUBS];
};

static long long race_min_progress(const void *arg, const char *name)
{
    const struct race_progress *rp = arg;
    long long least = RACE_MAX;
    for (int i = 0; i < RACE_PUBS; i++) {
        long long n = ck_pr_load_int(&rp->rs[i].acked) - rp->base[i];
        least = n < least ? n : least;
    }
    return least;
}

/* Note where each publisher is now and wait until each has had `more` further publishes
 * acknowledged. */
static void race_wait_progress(struct racer *rs, int more)
{
    struct race_progress rp = {.rs = rs};
    for (int i = 0; i < RACE_PUBS; i++)
        rp.base[i] = ck_pr_load_int(&rs[i].acked);
    kr_it_wait_figure(race_min_progress, &rp, "acknowledged publishes of the slowest racer",
                      KR_IT_GE, more);
}

Test(retro, racing_publishers_no_loss_no_duplicates)
{
    struct racer rs[RACE_PUBS];
    pthread_t th[RACE_PUBS];
    for (int i = 0; i < RACE_PUBS; i++) {
        rs[i] = (struct racer){.port = kr_it_srv.port, .id = i, .acked = -1};
        pthread_create(&th[i], NULL, race_pub, &rs[i]);
    }
    race_wait_progress(rs, 50); /* publishers running flat out */
    int sub = kr_it_connect(kr_it_srv.port);
    int before[RACE_PUBS];
    for (int i = 0; i < RACE_PUBS; i++)
        before[i] = ck_pr_load_int(&rs[i].acked);
    kr_it_sends(sub, "set register 0 0 0\r\n\r\n");
    kr_it_expect(sub, "STORED\r\n");
    int after[RACE_PUBS];
    for (int i = 0; i < RACE_PUBS; i++)
        after[i] = ck_pr_load_int(&rs[i].acked);
    race_wait_progress(rs, 20); /* published after the register: they must be replayed */
    kr_it_subscribe(sub, "race3 race1 race2");
    race_wait_progress(rs, 50); /* and live after the subscribe */
    for (int i = 0; i < RACE_PUBS; i++)
        ck_pr_store_int(&rs[i].stop, 1);
    int total = 0, last[RACE_PUBS];
    for (int i = 0; i < RACE_PUBS; i++) {
        pthread_join(th[i], NULL);
        last[i] = rs[i].acked;
    }
    /* every message from the first one after `register` to the last must be there once */
    size_t cap = 1 << 23;
    char *out = malloc(cap);
    int next[RACE_PUBS], first[RACE_PUBS];
    for (int i = 0; i < RACE_PUBS; i++)
        next[i] = first[i] = -1;
    /* collect until every publisher's last message was seen (bounded polls) */
    for (int polls = 0; polls < 4000; polls++) {
        int done = 1;
        for (int i = 0; i < RACE_PUBS; i++)
            done &= next[i] == last[i] + 1;
        if (done)
            break;
        size_t len = kr_it_get(sub, out, cap);
        if (strcmp(out, "END\r\n") == 0) {
            kr_it_sleep_ms(2);
            continue;
        }
        char *p = strstr(out, "\r\n") + 2, *end = out + len - 5;
        while (p < end) {
            size_t plen;
            cr_assert_eq(sscanf(p, "MESSAGE race1 race2 race3 %zu\r\n", &plen), 1,
                         "each message once with all three topics: %.60s", p);
            char *body = strstr(p, "\r\n") + 2;
            int pid, seq;
            cr_assert_eq(sscanf(body, "%d:%d", &pid, &seq), 2);
            if (first[pid] < 0) {
                first[pid] = seq;
                next[pid] = seq;
            }
            cr_assert_eq(seq, next[pid], "publisher %d: got %d, expected %d (loss or duplicate)",
                         pid, seq, next[pid]);
            next[pid]++;
            total++;
            p = body + plen + 2;
        }
    }
    for (int i = 0; i < RACE_PUBS; i++) {
        cr_assert_eq(next[i], last[i] + 1, "publisher %d: last seen %d of %d", i, next[i] - 1, last[i]);
        /* acknowledged before `register` was sent: published before the horizon */
        cr_assert_gt(first[i], before[i], "publisher %d: %d was published before register",
                     i, first[i]);
        /* sent after `register` was answered: published after the horizon, must be there */
        cr_assert_leq(first[i], after[i] + 2, "publisher %d: replay started at %d, lost from %d",
                      i, first[i], after[i] + 2);
    }
    cr_assert_gt(total, 0);
    free(out);
    close(sub);
}

/* ------------------------------------------------------------------ history byte bound */

#define BIG_PAYLOAD 8192
#define HIST_BOUND 65536

/* Regression: the history was bounded only by messages_stored_per_router_shard, so large
 * publishes to topics nobody subscribes to were all kept (2000 x 1 MiB = 2 GB). */
Test(retro_bytes, history_stays_under_history_max_bytes_and_not_found_stays_exact)
{
    const char *args[] = {"--num_router_shards", "1", "--history_max_bytes", "64k", NULL};
    kr_it_fixture_start(args);
    static char payload[BIG_PAYLOAD];
    memset(payload, 'p', sizeof(payload));
    int pub = kr_it_connect(kr_it_srv.port), old = kr_it_connect(kr_it_srv.port);
    kr_it_sends(old, "set register 0 0 0\r\n\r\n");
    kr_it_expect(old, "STORED\r\n");
    for (int i = 0; i < 100; i++) {
        kr_it_publish(pub, "nobody", payload, sizeof(payload));
        if (i % 10 == 9) {
            unsigned long long hb = kr_it_stat(kr_it_srv.port, "history_bytes");
            cr_assert_leq(hb, HIST_BOUND, "after %d publishes history_bytes is %llu", i + 1, hb);
        }
    }
    /* every publish was routed: the window is full, and still within the bound */
    kr_it_wait_stat(kr_it_srv.port, "messages_routed", KR_IT_EQ, 100);
    unsigned long long hb = kr_it_stat(kr_it_srv.port, "history_bytes");
    unsigned long long hm = kr_it_stat(kr_it_srv.port, "history_messages");
    cr_assert_leq(hb, HIST_BOUND);
    cr_assert_gt(hb, HIST_BOUND - 2 * BIG_PAYLOAD, "the window is used: %llu bytes", hb);
    cr_assert_lt(hm, 8, "held %llu messages of 8 KiB in 64 KiB", hm);
    /* registered before 100 publishes of which only a few are kept: NOT_FOUND, nothing
     * replayed, the live subscription in force */
    kr_it_sends(old, "set subscribe 0 0 6\r\nnobody\r\n");
    kr_it_expect(old, "NOT_FOUND\r\n");
    /* a recent horizon is covered and replays what followed it */
    int recent = kr_it_connect(kr_it_srv.port);
    kr_it_sends(recent, "set register 0 0 0\r\n\r\n");
    kr_it_expect(recent, "STORED\r\n");
    kr_it_publish(pub, "nobody", payload, sizeof(payload));
    kr_it_publish(pub, "nobody", "tail", 4);
    kr_it_sends(recent, "set subscribe 0 0 6\r\nnobody\r\n");
    kr_it_expect(recent, "STORED\r\n");
    static char out[4 * BIG_PAYLOAD];
    size_t olen;
    cr_assert_eq(kr_it_collect(recent, 2, out, sizeof(out), &olen), 2);
    cr_assert(strncmp(out, "MESSAGE nobody 8192\r\npppp", 25) == 0, "%.40s", out);
    cr_assert_str_eq(out + olen - 24, "MESSAGE nobody 4\r\ntail\r\n");
    /* the NOT_FOUND subscriber gets the same two live, and nothing older */
    cr_assert_eq(kr_it_collect(old, 2, out, sizeof(out), &olen), 2);
    cr_assert_eq(olen, strlen("MESSAGE nobody 8192\r\n") + BIG_PAYLOAD + 2 + 24);
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "retro_not_found"), 1);
    close(pub);
    close(old);
    close(recent);
    kr_it_fixture_stop();
}
