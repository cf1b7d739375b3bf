/* Stress run of the lock-free parts for ThreadSanitizer (Criterion cannot run under TSan):
 * real shard threads, and plain threads playing net threads that subscribe, publish
 * multi-shard messages and consume deliveries through the mailboxes, checking counts; each
 * shard keeps a history, so messages spanning shards are numbered and linked by two
 * shards at once (regression: a shard once read the other shard's number while it was
 * written).
 * Bounded: a fixed number of messages; exits non-zero on any mismatch. */
#include <ck_pr.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kr_router.h"

#define NNET 2
#define NSHARDS 3
#define NTOPICS 8
#define NMSG 20000
#define SUBS_PER_NET 3

static struct kr_router *r;
static int wake_flags[NNET];

static void wake_net(void *arg, uint32_t net)
{
    (void)arg;
    ck_pr_store_int(&wake_flags[net], 1);
}

static int fail(const char *what)
{
    fprintf(stderr, "stress: FAILED: %s\n", what);
    exit(1);
}

static uint64_t conn_id(uint32_t net, uint32_t slot)
{
    return ((uint64_t)net << 56) | ((uint64_t)1 << 32) | slot;
}

struct net_state {
    uint32_t idx;
    uint64_t delivered;
    uint64_t ends;
    uint64_t acks;
};

static void drain(struct net_state *ns)
{
    for (uint32_t s = 0; s < NSHARDS; s++) {
        struct kr_event ev;
        while (kr_router_recv(r, ns->idx, s, &ev)) {
            switch (ev.type) {
            case KR_EV_DELIVER:
                ns->delivered++;
                kr_msg_unref(ev.ptr);
                break;
            case KR_EV_END:
                ns->ends++;
                kr_msg_unref(ev.ptr);
                break;
            case KR_EV_FANOUT_WARN:
                kr_msg_unref(ev.ptr);
                break;
            case KR_EV_ACK:
                ns->acks++;
                free(ev.ptr);
                break;
            default:
                fail("unexpected event");
            }
        }
    }
}

static void send_retry(struct net_state *ns, uint32_t shard, struct kr_event *ev)
{
    while (!kr_router_send(r, ns->idx, shard, ev)) {
        kr_router_flush(r, ns->idx);
        drain(ns);
    }
}

static void *net_main(void *arg)
{
    struct net_state *ns = arg;
    char names[NTOPICS][8];
    uint32_t lens[NTOPICS];
    for (int t = 0; t < NTOPICS; t++)
        lens[t] = (uint32_t)snprintf(names[t], sizeof(names[t]), "t%d", t);
    /* every subscriber of this thread subscribes to every topic */
    uint64_t want_acks = 0;
    for (uint32_t sub = 0; sub < SUBS_PER_NET; sub++) {
        for (uint32_t s = 0; s < NSHARDS; s++) {
            struct kr_router_cmd *c = kr_router_cmd_new(32);
            for (int t = 0; t < NTOPICS; t++)
                if (kr_router_shard_of(r, names[t], lens[t]) == s)
                    c = kr_router_cmd_add(c, names[t], lens[t]);
            struct kr_event ev = {.type = KR_EV_SUBSCRIBE, .conn = conn_id(ns->idx, sub), .ptr = c};
            send_retry(ns, s, &ev);
            want_acks++;
        }
    }
    kr_router_flush(r, ns->idx);
    while (ns->acks < want_acks)
        drain(ns);
    return NULL;
}

static void *pub_main(void *arg)
{
    struct net_state *ns = arg;
    char names[NTOPICS][8];
    uint32_t lens[NTOPICS];
    const char *ptrs[2];
    uint32_t plens[2];
    for (int t = 0; t < NTOPICS; t++)
        lens[t] = (uint32_t)snprintf(names[t], sizeof(names[t]), "t%d", t);
    for (uint32_t i = 0; i < NMSG; i++) {
        int a = (int)(i % NTOPICS), b = (int)((i + 3) % NTOPICS);
        ptrs[0] = names[a];
        plens[0] = lens[a];
        ptrs[1] = names[b];
        plens[1] = lens[b];
        uint32_t sa = kr_router_shard_of(r, ptrs[0], plens[0]);
        uint32_t sb = kr_router_shard_of(r, ptrs[1], plens[1]);
        uint32_t involved = sa == sb ? 1 : 2;
        struct kr_msg *m = kr_msg_create(conn_id(ns->idx, 100), i, 2, ptrs, plens, "payload", 7, NNET);
        kr_msg_set_nshards(m, involved);
        if (involved == 2)
            kr_msg_ref(m, 1);
        struct kr_event ev = {.type = KR_EV_PUBLISH, .conn = conn_id(ns->idx, 100), .ptr = m};
        send_retry(ns, sa, &ev);
        if (involved == 2)
            send_retry(ns, sb, &ev);
        if ((i & 31) == 0)
            kr_router_flush(r, ns->idx);
        drain(ns);
    }
    kr_router_flush(r, ns->idx);
    return NULL;
}

/* Net thread 1 while net thread 0 publishes: like a real net thread it keeps taking its
 * deliveries (shards stop taking input while too much waits towards a net thread). */
static int publishing;

static void *drain_main(void *arg)
{
    struct net_state *ns = arg;
    while (ck_pr_load_int(&publishing)) {
        drain(ns);
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(void)
{
    struct kr_router_opts o = {.nshards = NSHARDS, .nnet = NNET, .mailbox_capacity = 256,
                               .fanout_warn = 4, .wake_net = wake_net,
                               /* a small history: every multi-shard message is linked into
                                * two shards' histories while both still number it, and
                                * evicted while the other shard may still hold it */
                               .history = 64};
    r = kr_router_create(&o);
    if (kr_router_start(r) != 0)
        fail("start");
    struct net_state ns[NNET];
    memset(ns, 0, sizeof(ns));
    pthread_t th[NNET];
    for (uint32_t n = 0; n < NNET; n++) {
        ns[n].idx = n;
        pthread_create(&th[n], NULL, net_main, &ns[n]);
    }
    for (uint32_t n = 0; n < NNET; n++)
        pthread_join(th[n], NULL);
    /* net thread 0 publishes; both consume */
    ck_pr_store_int(&publishing, 1);
    pthread_create(&th[1], NULL, drain_main, &ns[1]);
    pthread_create(&th[0], NULL, pub_main, &ns[0]);
    pthread_join(th[0], NULL);
    ck_pr_store_int(&publishing, 0);
    pthread_join(th[1], NULL);
    /* expected: every message reaches every subscriber (publisher is conn 100, not a
     * subscriber) once per shard involved */
    uint64_t want_deliveries = 0, want_ends = 0;
    for (uint32_t i = 0; i < NMSG; i++) {
        char a[8], b[8];
        int la = snprintf(a, sizeof(a), "t%d", (int)(i % NTOPICS));
        int lb = snprintf(b, sizeof(b), "t%d", (int)((i + 3) % NTOPICS));
        bool two = kr_router_shard_of(r, a, (size_t)la) != kr_router_shard_of(r, b, (size_t)lb);
        want_deliveries += (two ? 2 : 1) * SUBS_PER_NET;
        want_ends += two ? 2 : 0;
    }
    for (int spins = 0; spins < 200000; spins++) {
        drain(&ns[0]);
        drain(&ns[1]);
        if (ns[0].delivered == want_deliveries && ns[1].delivered == want_deliveries &&
            ns[0].ends == want_ends && ns[1].ends == want_ends)
            break;
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    for (uint32_t n = 0; n < NNET; n++) {
        if (ns[n].delivered != want_deliveries || ns[n].ends != want_ends) {
            fprintf(stderr, "net %u: delivered %llu/%llu ends %llu/%llu\n", n,
                    (unsigned long long)ns[n].delivered, (unsigned long long)want_deliveries,
                    (unsigned long long)ns[n].ends, (unsigned long long)want_ends);
            fail("counts");
        }
    }
    kr_router_stop(r);
    kr_router_destroy(r);
    printf("stress: %d messages, %llu deliveries per net thread, counts match\n", NMSG,
           (unsigned long long)want_deliveries);
    return 0;
}
