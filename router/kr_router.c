/* Router module: shard threads, mailboxes and fanout. See kr_router.h. */
#include "kr_router.h"

#include <ck_pr.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <urcu/urcu-memb.h>
#include <xxhash.h>

#include "kr_cfg.h"
#include "kr_log.h"
#include "kr_evicted.h"
#include "kr_pin.h"
#include "kr_topics.h"

#define KR_SHARD_BATCH 256 /* events taken from one ring before looking at the next */
/* A shard with this many mailbox capacities' worth of events parked towards the net threads
 * is congested: it takes no more input, and refuses new publishes at once (the net threads
 * park them and stop reading the publishers) until half of that has drained. End-to-end
 * backpressure instead of an ever-growing FIFO, and what waits between a publisher and its
 * subscribers stays bounded by about this many deliveries. */
#define KR_SHARD_PARK_RINGS 4

/* The most recent messages that touched a shard, oldest first, for retroactive
 * subscriptions. Each holds a reference to the shared message buffer (no copies). */
struct kr_history {
    struct kr_msg **msgs;
    uint32_t cap;
    uint32_t head;
    uint32_t count;
    uint64_t bytes;
    uint64_t evicted_max_us; /* newest publish time ever evicted */
    uint64_t start_us;       /* nothing before this was seen */
    /* Per-bucket chains, so a resume visits only the messages of its own topics: a message
     * added as the added-th (its absolute position) is linked from chain[b] (position + 1)
     * for each bucket b its topics here hash to, and links, on the first of its topics in
     * b (kr_msg_link), to the bucket's previous message. Newest first; a position below
     * added - count has been evicted. */
    uint64_t added;
    uint64_t *chain; /* [chain_mask + 1] */
    uint32_t chain_mask;
};

#define KR_CHAIN_LOG2 16 /* buckets of the history's chains: 512 KiB per shard */

/* A topic hash's chain bucket (remixed: the shard choice used the same hash). */
static inline uint32_t kr_chain_bucket(const struct kr_history *h, uint64_t th)
{
    return (uint32_t)((th * UINT64_C(0x9E3779B97F4A7C15)) >> 40) & h->chain_mask;
}

/* A question from another thread that only the shard may answer (it reads the shard's
 * private arrays): the topics of one client, copied into the request's own buffer so an
 * asker that gave up waiting leaves nothing dangling (kr_reqq in queue/). */
struct kr_topics_req {
    struct kr_req base;
    uint64_t conn;
    uint32_t cursor;
    size_t len;
    size_t cap;
    char buf[];
};

/* The SHARD rows of KR_ROUTER_COUNTERS (kr_router.h). */
struct kr_shard_counters {
#define KR_SHARD_FIELD_SHARD(name) uint64_t name;
#define KR_SHARD_FIELD_TABLE(name)
#define KR_SHARD_FIELD_PIN(name)
#define KR_SHARD_FIELD(name, kind, source, figure, help) KR_SHARD_FIELD_##source(name)
    KR_ROUTER_COUNTERS(KR_SHARD_FIELD)
#undef KR_SHARD_FIELD
#undef KR_SHARD_FIELD_PIN
#undef KR_SHARD_FIELD_TABLE
#undef KR_SHARD_FIELD_SHARD
};

#define KR_FRONTIER_EVERY 4096 /* messages routed between two KR_EV_FRONTIER at most */
#define KR_EVICT_PREFETCH_TOPICS 8 /* topics of the next evicted message prefetched at most */
#define KR_RETIRED_WAIT_MS 10 /* an idle shard's check for topics freed by RCU */
#define KR_FRONTIER_IDLE_MS 50 /* an idle shard announces its frontier at most this often */

/* KR_EV_DELIVER_BATCH's block: one message's deliveries to the subscribers one net thread
 * serves, each carrying one message reference and its topic set (kr_topicset word). The
 * receiving side hands them out one by one (kr_router_recv). */
struct kr_batch {
    struct kr_msg *m;
    uint32_t n;    /* deliveries */
    uint32_t next; /* the next one kr_router_recv hands out */
    struct {
        uint64_t conn;
        uint64_t word;
    } d[];
};

struct kr_shard {
    struct kr_router *r;
    uint32_t idx;
    int tid; /* its thread's id (kr_router_shard_tid), 0 until it runs */
    uint64_t seq;           /* the last sequence number given to a routed message */
    uint64_t frontier_sent; /* the last one announced to the net threads (KR_EV_FRONTIER) */
    uint64_t frontier_ms;   /* when the last idle announcement went (kr_now_ms) */
    struct kr_evicted *evicted; /* newest sequence evicted from the history, per hashed topic */
    struct kr_reqq *reqq;       /* requests from other threads, served once per iteration */
    pthread_t thread;
    bool started;
    struct kr_waiter waiter;
    struct kr_topics *topics;
    struct kr_mailbox **in;  /* [nnet] net -> shard */
    struct kr_mailbox **out; /* [nnet] shard -> net */
    /* towards the net threads: in order per net thread, parked while a ring is full
     * (counted in overflow_events), each woken once per batch (r->o.wake_net) */
    struct kr_outbox_sink sink;
    struct kr_outbox ob;
    uint32_t first_in;       /* ring served first this round (rotates: no ring starves) */
    uint64_t stamp;          /* fanout generation (one per routed message) */
    struct kr_sconn **touched;
    uint32_t ntouched;
    uint32_t touched_cap;
    uint32_t *per_net;          /* [nnet] subscribers of the message being routed, per net */
    struct kr_batch **batch;    /* [nnet] its batch towards that net thread (2 or more) */
    uint32_t *nets;             /* the net threads it reaches, and how many */
    uint32_t nnets;
    uint64_t retro_stamp;
    uint32_t fanout_warn; /* cached from the live configuration */
    bool live_read;
    uint64_t live_gen;
    struct kr_history hist;
    struct kr_router_cmd *interest; /* topic transitions of the event being handled */
    bool interest_on;
    bool holding; /* kr_router_hold_topics reached this shard */
    struct kr_shard_counters st; /* written by the shard only (relaxed stores) */
} __attribute__((aligned(64)));

#define KR_SH_SET(sh, f, v) ck_pr_store_64(&(sh)->st.f, (v))
#define KR_SH_INC(sh, f, n) KR_SH_SET(sh, f, (sh)->st.f + (n))

/* Set by a shard while it holds too many parked events (read by the net threads on each
 * publish, written by the shard on changes only; a cache line each). */
struct kr_congestion {
    int on;
} __attribute__((aligned(64)));

struct kr_router {
    struct kr_router_opts o;
    struct kr_shard *shards;
    struct kr_congestion *congested; /* [nshards] */
    uint8_t *dirty; /* [nnet * nshards]: net n pushed to shard s since its last flush */
    struct kr_batch **cursor; /* [nnet * nshards]: the batch net n is handing out from s */
    struct kr_pin *pin; /* the shards' CPU pins and the watch over them */
    int stop;
    int hold; /* kr_router_hold_topics */
};

static void kr_shard_interest_flush(struct kr_shard *sh);

/* ---------------------------------------------------------------- commands */

struct kr_router_cmd *kr_router_cmd_new(uint32_t cap_hint)
{
    struct kr_router_cmd *c = kr_xmalloc(sizeof(*c) + cap_hint);
    c->ntopics = 0;
    c->used = 0;
    c->cap = cap_hint;
    c->pad = 0;
    c->horizon_us = 0;
    c->since_seq = 0;
    c->max_entries = 0;
    c->max_bytes = 0;
    c->resync = NULL;
    c->remote = NULL;
    return c;
}

struct kr_router_cmd *kr_router_cmd_add(struct kr_router_cmd *c, const char *topic, uint32_t len)
{
    uint32_t need = c->used + (uint32_t)sizeof(uint32_t) + len;
    if (need > c->cap) {
        uint32_t ncap = c->cap * 2 > need ? c->cap * 2 : need;
        c = kr_xrealloc(c, sizeof(*c) + ncap);
        c->cap = ncap;
    }
    memcpy(c->data + c->used, &len, sizeof(len));
    memcpy(c->data + c->used + sizeof(len), topic, len);
    c->used = need;
    c->ntopics++;
    return c;
}

void kr_router_hold_topics(struct kr_router *r)
{
    ck_pr_store_int(&r->hold, 1);
}

static void kr_resume_remote_free(struct kr_resume_remote *x)
{
    if (!x)
        return;
    for (uint32_t i = 0; i < x->nmsgs; i++)
        kr_msg_unref(x->msgs[i]);
    free(x->msgs);
    free(x->mark_origin);
    free(x->mark_seq);
    free(x);
}

void kr_router_cmd_free(struct kr_router_cmd *c)
{
    if (!c)
        return;
    free(c->resync);
    kr_resume_remote_free(c->remote);
    free(c);
}

int kr_router_cmd_next(const struct kr_router_cmd *c, uint32_t *pos, const char **topic,
                       uint32_t *len)
{
    if (*pos >= c->used)
        return 0;
    memcpy(len, c->data + *pos, sizeof(*len));
    *topic = c->data + *pos + sizeof(*len);
    *pos += (uint32_t)sizeof(*len) + *len;
    return 1;
}

/* ---------------------------------------------------------------- routing */

int kr_router_shard_tid(const struct kr_router *r, uint32_t shard)
{
    return shard < r->o.nshards ? ck_pr_load_int((int *)&r->shards[shard].tid) : 0;
}

uint32_t kr_router_nshards(const struct kr_router *r)
{
    return r->o.nshards;
}

uint32_t kr_router_shard_of(const struct kr_router *r, const char *topic, size_t len)
{
    return kr_router_shard_of_hash(r, kr_topic_hash(topic, len));
}

uint32_t kr_router_shard_of_hash(const struct kr_router *r, uint64_t hash)
{
    /* High bits pick the shard; the tables' buckets use the low bits of the same hash. */
    return (uint32_t)((hash >> 32) % r->o.nshards);
}

/* Push an event towards net thread n, keeping order behind anything already parked. */
static inline void kr_shard_emit(struct kr_shard *sh, uint32_t n, const struct kr_event *ev)
{
    kr_outbox_push(&sh->ob, n, ev);
}

/* Raise the congestion flag at park_max parked events, lower it below half of that. When
 * it drops, every net thread is woken: one whose publishers were refused may have nothing
 * else to wake it, and retries them after its next loop iteration. */
static void kr_shard_congestion(struct kr_shard *sh, uint32_t park_max)
{
    int *flag = &sh->r->congested[sh->idx].on;
    int on = ck_pr_load_int(flag);
    uint32_t parked = kr_outbox_parked(&sh->ob);
    int want = parked >= park_max ? 1 : parked < park_max / 2 ? 0 : on;
    if (want == on)
        return;
    ck_pr_store_int(flag, want);
    if (!want)
        kr_outbox_wake_all(&sh->ob);
}

/* The sequence this shard recorded on topic i of m, 0 when it recorded none there. A
 * message spanning shards is numbered by each of them at once, each on its own topics: a
 * shard reads only the slots of topics it owns, never one another shard may be writing. */
static uint64_t kr_shard_topic_seq(const struct kr_shard *sh, const struct kr_msg *m,
                                   uint32_t i)
{
    const struct kr_router *r = sh->r;
    if (r->o.nshards > 1 && kr_router_shard_of_hash(r, kr_msg_topic_hash(m, i)) != sh->idx)
        return 0;
    uint32_t shard;
    uint64_t seq = kr_msg_seq(m, i, &shard);
    return shard == sh->idx ? seq : 0;
}

/* This shard's sequence for message m (the number it recorded on its topics), 0 if none. */
static uint64_t kr_shard_seq_of(const struct kr_shard *sh, const struct kr_msg *m)
{
    uint32_t nt = kr_msg_ntopics(m);
    for (uint32_t i = 0; i < nt; i++) {
        uint64_t seq = kr_shard_topic_seq(sh, m, i);
        if (seq)
            return seq;
    }
    return 0;
}

/* Drop the oldest held message, remembering the newest publish time ever dropped: a
 * horizon before it can no longer be served (NOT_FOUND), whichever bound evicted it. */
static void kr_history_evict(struct kr_shard *sh)
{
    struct kr_history *h = &sh->hist;
    struct kr_msg *old = h->msgs[h->head];
    /* the eviction sketch remembers, per hashed topic, the newest sequence evicted */
    uint32_t nt = kr_msg_ntopics(old);
    for (uint32_t i = 0; i < nt; i++) {
        uint64_t seq = kr_shard_topic_seq(sh, old, i);
        if (seq)
            kr_evicted_note(sh->evicted, kr_msg_topic_hash(old, i), seq);
    }
    uint64_t t = kr_msg_time_us(old);
    if (t > h->evicted_max_us)
        h->evicted_max_us = t;
    h->bytes -= kr_msg_size(old);
    kr_msg_unref(old);
    h->msgs[h->head] = NULL;
    h->head = (h->head + 1) % h->cap;
    h->count--;
    /* the next evictions, one per routed message once the window is full, read cold
     * memory: start loading the sketch buckets of the next one's topics (its own lines were
     * asked for by the previous eviction) and the one after it */
    if (h->count > 0) {
        const struct kr_msg *next = h->msgs[h->head];
        for (uint32_t i = 0, n = kr_msg_ntopics(next); i < n && i < KR_EVICT_PREFETCH_TOPICS; i++)
            kr_evicted_prefetch(sh->evicted, kr_msg_topic_hash(next, i));
    }
    if (h->count > 1)
        kr_msg_prefetch(h->msgs[(h->head + 1) % h->cap]);
}

/* Hold `m` (taking over one reference), then evict oldest first while the window holds more
 * than messages_stored_per_router_shard messages or history_max_bytes bytes. A message
 * larger than history_max_bytes by itself is evicted at once (with everything older). */
static void kr_history_add(struct kr_shard *sh, struct kr_msg *m)
{
    struct kr_history *h = &sh->hist;
    if (h->cap == 0) {
        kr_msg_unref(m);
        return;
    }
    if (h->count == h->cap)
        kr_history_evict(sh);
    h->msgs[(h->head + h->count) % h->cap] = m;
    h->count++;
    /* link it into the chains of its topics' buckets (once per bucket) */
    uint64_t me = ++h->added; /* its position + 1 */
    uint32_t nt = kr_msg_ntopics(m);
    for (uint32_t i = 0; i < nt; i++) {
        if (!kr_shard_topic_seq(sh, m, i))
            continue;
        uint32_t b = kr_chain_bucket(h, kr_msg_topic_hash(m, i));
        if (h->chain[b] == me)
            continue; /* an earlier topic of it is in this bucket: linked there */
        kr_msg_set_link(m, i, h->chain[b]);
        h->chain[b] = me;
    }
    h->bytes += kr_msg_size(m);
    uint64_t max_bytes = sh->r->o.history_bytes;
    while (max_bytes && h->bytes > max_bytes && h->count)
        kr_history_evict(sh);
    KR_SH_SET(sh, history_messages, h->count);
    KR_SH_SET(sh, history_bytes, h->bytes);
}

/* Subscribe, then replay the history on the requested topics after the horizon: one step
 * on the owning shard, so a message is either replayed or delivered live, never both. */
static void kr_shard_retro(struct kr_shard *sh, struct kr_event *ev)
{
    struct kr_router *r = sh->r;
    struct kr_router_cmd *c = ev->ptr;
    struct kr_history *h = &sh->hist;
    uint64_t stamp = ++sh->retro_stamp;
    uint32_t pos = 0, len;
    const char *t;
    while (kr_router_cmd_next(c, &pos, &t, &len)) {
        kr_topics_subscribe(sh->topics, t, len, ev->conn, c->horizon_us);
        struct kr_topic *tp = kr_topics_find(sh->topics, t, len);
        if (tp)
            *kr_topic_stamp(tp) = stamp;
    }
    uint64_t status = 0;
    if (c->horizon_us < h->start_us || c->horizon_us < h->evicted_max_us) {
        status = 1;
        KR_SH_INC(sh, retro_not_found, 1);
    } else {
        for (uint32_t k = 0; k < h->count; k++) {
            struct kr_msg *m = h->msgs[(h->head + k) % h->cap];
            if (kr_msg_time_us(m) <= c->horizon_us || kr_msg_publisher(m) == ev->conn)
                continue;
            uint32_t ntopics = kr_msg_ntopics(m);
            struct kr_topicset set;
            bool any = false; /* the set is made at the first match */
            for (uint32_t i = 0; i < ntopics; i++) {
                uint32_t tl;
                const char *tt = kr_msg_topic(m, i, &tl);
                uint64_t th = kr_msg_topic_hash(m, i);
                if (r->o.nshards > 1 && kr_router_shard_of_hash(r, th) != sh->idx)
                    continue;
                struct kr_topic *tp = kr_topics_find_hashed(sh->topics, tt, tl, th);
                if (!tp || *kr_topic_stamp(tp) != stamp)
                    continue;
                if (!any)
                    kr_topicset_init(&set, ntopics);
                any = true;
                kr_topicset_set(&set, ntopics, i);
            }
            if (!any)
                continue;
            kr_msg_ref(m, 1);
            struct kr_event rep = {.type = KR_EV_REPLAY, .src = (uint16_t)sh->idx, .conn = ev->conn,
                                   .ptr = m, .mask = kr_topicset_word(set)};
            kr_shard_emit(sh, KR_CONN_NET(ev->conn), &rep);
        }
    }
    struct kr_event ack = {.type = KR_EV_ACK, .src = (uint16_t)sh->idx, .aux = ev->type,
                           .conn = ev->conn, .ptr = c, .mask = status};
    kr_shard_emit(sh, KR_CONN_NET(ev->conn), &ack);
}

/* KR_EV_RESUME: subscribe the topics and replay, oldest first, what this shard numbered
 * after the client's position on them; a topic whose messages after it the history may
 * have evicted (the sketch's bound is above the position) is listed in c->resync and
 * replays nothing (never a partial replay). One step, like a retroactive subscribe: no
 * message is both replayed and delivered live. */
/* A resume's topics by hash: open addressing over their indexes + 1 (0 = empty), so each
 * stored message is matched against the request's own topics, not the shard's table. */
struct kr_resume_set {
    uint32_t *slot;
    uint32_t cap; /* power of two, at least twice the topics */
};

struct kr_resume_topic {
    const char *t;
    uint32_t len;
    uint32_t idx;
    uint64_t hash;
    uint64_t entries;
    uint64_t bytes;
    bool resync;
};

static void kr_resume_set_build(struct kr_resume_set *set, const struct kr_resume_topic *rt,
                                uint32_t n)
{
    set->cap = 16;
    while (set->cap < 2 * n)
        set->cap *= 2;
    set->slot = kr_xcalloc(set->cap, sizeof(*set->slot));
    for (uint32_t k = 0; k < n; k++) {
        uint32_t b = (uint32_t)rt[k].hash & (set->cap - 1);
        while (set->slot[b])
            b = (b + 1) & (set->cap - 1);
        set->slot[b] = k + 1;
    }
}

/* The requested topic (its index) that topic i of m is, when this shard numbered it there
 * and the request names it and will replay it; else -1. */
static int64_t kr_resume_match(const struct kr_shard *sh, const struct kr_resume_set *set,
                               const struct kr_resume_topic *rt, struct kr_msg *m, uint32_t i)
{
    uint32_t tl;
    if (!kr_shard_topic_seq(sh, m, i))
        return -1;
    uint64_t h = kr_msg_topic_hash(m, i);
    const char *t = NULL;
    for (uint32_t b = (uint32_t)h & (set->cap - 1); set->slot[b]; b = (b + 1) & (set->cap - 1)) {
        const struct kr_resume_topic *r = &rt[set->slot[b] - 1];
        if (r->hash != h)
            continue;
        if (!t)
            t = kr_msg_topic(m, i, &tl);
        if (r->len == tl && memcmp(r->t, t, tl) == 0)
            return r->resync ? -1 : (int64_t)r->idx;
    }
    return -1;
}

/* The history indexes (from its head) of the messages on the requested topics (rt[0..n),
 * those not told to resync) whose position is above `stop(h, msg)`'s answer: each topic's
 * bucket chain walked from the newest back until a message `stop` says is older than
 * wanted, or evicted. Sorted, each once, into *out (grown); returns how many. A message on
 * another topic of the same bucket is listed too (the caller matches each message against
 * its own topics). Costs the chain entries after the stop, not the history. */
static uint32_t kr_history_collect(const struct kr_shard *sh, const struct kr_resume_topic *rt,
                                   uint32_t n,
                                   bool (*older)(const struct kr_shard *, const struct kr_msg *,
                                                 uint64_t),
                                   uint64_t bound, uint32_t **out, uint32_t *cap)
{
    const struct kr_history *h = &sh->hist;
    uint32_t got = 0;
    if (h->count == 0)
        return 0;
    uint64_t first = h->added - h->count + 1; /* the oldest held, as position + 1 */
    for (uint32_t k = 0; k < n; k++) {
        if (rt[k].resync)
            continue;
        uint32_t b = kr_chain_bucket(h, rt[k].hash);
        uint64_t p = h->chain[b];
        while (p >= first) {
            uint32_t j = (uint32_t)(p - first);
            const struct kr_msg *m = h->msgs[(h->head + j) % h->cap];
            if (older(sh, m, bound))
                break;
            KR_GROW_MIN(*out, *cap, got + 1, 64);
            (*out)[got++] = j;
            /* on to the bucket's previous message: the link of m's first topic here */
            uint64_t next = 0;
            uint32_t nt = kr_msg_ntopics(m);
            for (uint32_t i = 0; i < nt; i++) {
                if (kr_shard_topic_seq(sh, m, i) &&
                    kr_chain_bucket(h, kr_msg_topic_hash(m, i)) == b) {
                    next = kr_msg_link(m, i);
                    break;
                }
            }
            p = next;
        }
    }
    /* ascending, each once (two topics of a request may share a bucket, a message several
     * buckets) */
    for (uint32_t i = 1; i < got; i++) { /* insertion sort: the lists are short */
        uint32_t v = (*out)[i], j = i;
        while (j && (*out)[j - 1] > v) {
            (*out)[j] = (*out)[j - 1];
            j--;
        }
        (*out)[j] = v;
    }
    uint32_t u = 0;
    for (uint32_t i = 0; i < got; i++)
        if (u == 0 || (*out)[u - 1] != (*out)[i])
            (*out)[u++] = (*out)[i];
    return u;
}

/* kr_history_collect's stop for a resume: numbered here at or below the position. */
static bool kr_older_than_seq(const struct kr_shard *sh, const struct kr_msg *m, uint64_t since)
{
    return kr_shard_seq_of(sh, m) <= since;
}

/* kr_history_collect's stop for KR_EV_CHECK: published before the window. */
static bool kr_older_than_time(const struct kr_shard *sh, const struct kr_msg *m, uint64_t from)
{
    (void)sh;
    return kr_msg_time_us(m) < from;
}

static int kr_resume_by_entries(const void *a, const void *b)
{
    const struct kr_resume_topic *x = a, *y = b;
    return x->entries < y->entries ? 1 : x->entries > y->entries ? -1 : 0;
}

static void kr_resume_resync(struct kr_router_cmd *c, const char *t, uint32_t len)
{
    if (!c->resync)
        c->resync = kr_router_cmd_new(len + 64);
    c->resync = kr_router_cmd_add(c->resync, t, len);
}

/* KR_EV_RESUME: subscribe the topics and replay, oldest first, what this shard numbered
 * after the client's position on them; a topic whose messages after it the history may
 * have evicted (the sketch's bound is above the position) is listed in c->resync and
 * replays nothing (never a partial replay), and so are the topics with the most messages
 * while the replay would pass c->max_entries or c->max_bytes. One step, like a
 * retroactive subscribe: no message is both replayed and delivered live. Its cost is the
 * messages after the position (found by binary search) times their topics, each looked up
 * in the request's own topics. */
static void kr_shard_resume(struct kr_shard *sh, struct kr_event *ev)
{
    struct kr_router_cmd *c = ev->ptr;
    struct kr_history *h = &sh->hist;
    /* another node asks (through the cluster's delivery thread): no subscribe, and the
     * answers go to the link */
    bool serve = ev->type == KR_EV_HISTORY;
    uint32_t dest = serve ? sh->r->o.interest_net : KR_CONN_NET(ev->conn);
    /* in a cluster, what other nodes published is here only while the topic is held */
    uint64_t since = c->since_seq; /* UINT64_MAX: subscribe only (replayed elsewhere) */
    bool clustered = sh->r->o.interest && since != UINT64_MAX;
    bool behind = since < sh->seq; /* else nothing was routed here since the position */
    uint32_t n = c->ntopics, k = 0;
    struct kr_resume_topic *rt = behind || clustered ? kr_xcalloc(n ? n : 1, sizeof(*rt)) : NULL;
    uint32_t pos = 0, len;
    const char *t;
    while (kr_router_cmd_next(c, &pos, &t, &len)) {
        uint64_t th = kr_topic_hash(t, len);
        bool held = true;
        if (clustered) { /* held continuously since the position (before this subscribe) */
            struct kr_topic *tp = kr_topics_find_hashed(sh->topics, t, len, th);
            held = tp && kr_topic_held(tp) <= since;
        }
        if (!serve)
            kr_topics_subscribe(sh->topics, t, len, ev->conn, 0);
        if (!rt)
            continue;
        rt[k] = (struct kr_resume_topic){.t = t, .len = len, .idx = k, .hash = th,
                                         .resync = !held ||
                                                   kr_evicted_bound(sh->evicted, th) > since};
        k++;
    }
    if (!behind) { /* nothing to replay: only the topics not held are told */
        for (uint32_t j = 0; j < k; j++)
            if (rt[j].resync)
                kr_resume_resync(c, rt[j].t, rt[j].len);
        free(rt);
        struct kr_event ack = {.type = KR_EV_ACK, .src = (uint16_t)sh->idx, .aux = ev->type,
                               .conn = ev->conn, .ptr = c};
        kr_shard_emit(sh, dest, &ack);
        return;
    }
    struct kr_resume_set set;
    kr_resume_set_build(&set, rt, k);
    /* the candidates: the messages after the position in the requested topics' chains */
    uint32_t *cand = NULL, cand_cap = 0;
    uint32_t ncand = kr_history_collect(sh, rt, k, kr_older_than_seq, since, &cand, &cand_cap);
    if (c->max_entries || c->max_bytes) {
        /* what each topic would replay; past the bounds, the topics with the most resync */
        uint64_t entries = 0, bytes = 0;
        for (uint32_t q = 0; q < ncand; q++) {
            struct kr_msg *m = h->msgs[(h->head + cand[q]) % h->cap];
            if (!serve && kr_msg_publisher(m) == ev->conn)
                continue;
            bool any = false;
            for (uint32_t i = 0; i < kr_msg_ntopics(m); i++) {
                int64_t x = kr_resume_match(sh, &set, rt, m, i);
                if (x < 0)
                    continue;
                rt[x].entries++;
                rt[x].bytes += kr_msg_size(m);
                any = true;
            }
            if (any) {
                entries++;
                bytes += kr_msg_size(m);
            }
        }
        if ((c->max_entries && entries > c->max_entries) || (c->max_bytes && bytes > c->max_bytes)) {
            struct kr_resume_topic *order = kr_xmalloc((k ? k : 1) * sizeof(*order));
            memcpy(order, rt, k * sizeof(*order));
            qsort(order, k, sizeof(*order), kr_resume_by_entries);
            for (uint32_t j = 0; j < k; j++) {
                if (!((c->max_entries && entries > c->max_entries) ||
                      (c->max_bytes && bytes > c->max_bytes)))
                    break;
                if (order[j].resync || !order[j].entries)
                    continue;
                rt[order[j].idx].resync = true;
                entries -= order[j].entries < entries ? order[j].entries : entries;
                bytes -= order[j].bytes < bytes ? order[j].bytes : bytes;
                KR_SH_INC(sh, resume_bounded, 1);
            }
            free(order);
        }
    }
    for (uint32_t j = 0; j < k; j++)
        if (rt[j].resync)
            kr_resume_resync(c, rt[j].t, rt[j].len);
    for (uint32_t q = 0; q < ncand; q++) {
        struct kr_msg *m = h->msgs[(h->head + cand[q]) % h->cap];
        if (!serve && kr_msg_publisher(m) == ev->conn)
            continue;
        uint32_t ntopics = kr_msg_ntopics(m);
        struct kr_topicset ts;
        bool any = false;
        for (uint32_t i = 0; i < ntopics; i++) {
            if (kr_resume_match(sh, &set, rt, m, i) < 0)
                continue;
            if (!any)
                kr_topicset_init(&ts, ntopics);
            any = true;
            kr_topicset_set(&ts, ntopics, i);
        }
        if (!any)
            continue;
        kr_msg_ref(m, 1);
        struct kr_event rep = {.type = KR_EV_REPLAY, .src = (uint16_t)sh->idx, .conn = ev->conn,
                               .ptr = m, .mask = kr_topicset_word(ts)};
        kr_shard_emit(sh, dest, &rep);
    }
    free(cand);
    free(set.slot);
    free(rt);
    struct kr_event ack = {.type = KR_EV_ACK, .src = (uint16_t)sh->idx, .aux = ev->type,
                           .conn = ev->conn, .ptr = c};
    kr_shard_emit(sh, dest, &ack);
}

/* Tell every net thread how far this shard has numbered (KR_EV_FRONTIER): what it sent
 * them before covers every message up to it. */
static void kr_shard_frontier(struct kr_shard *sh)
{
    if (!sh->r->o.frontier) {
        sh->frontier_sent = sh->seq;
        return;
    }
    for (uint32_t n = 0; n < sh->r->o.nend; n++) {
        struct kr_event ev = {.type = KR_EV_FRONTIER, .src = (uint16_t)sh->idx, .mask = sh->seq};
        kr_shard_emit(sh, n, &ev);
    }
    sh->frontier_sent = sh->seq;
}

/* The fanout's deliveries (sh->touched[0..fanout), each with its topic set in its word,
 * one message reference each already taken): one event per net thread, KR_EV_DELIVER for a
 * lone subscriber there, else one KR_EV_DELIVER_BATCH listing them all (a ring slot per net
 * thread, not per subscriber). In the order of the touched list within each net thread. */
static void kr_shard_deliver(struct kr_shard *sh, struct kr_msg *m, uint32_t fanout)
{
    sh->nnets = 0;
    for (uint32_t k = 0; k < fanout; k++) {
        uint32_t n = KR_CONN_NET(kr_sconn_id(sh->touched[k]));
        if (sh->per_net[n]++ == 0)
            sh->nets[sh->nnets++] = n;
    }
    for (uint32_t j = 0; j < sh->nnets; j++) {
        uint32_t n = sh->nets[j];
        if (sh->per_net[n] < 2)
            continue;
        struct kr_batch *b = kr_xmalloc(sizeof(*b) + sh->per_net[n] * sizeof(b->d[0]));
        b->m = m;
        b->n = 0;
        b->next = 0;
        sh->batch[n] = b;
    }
    for (uint32_t k = 0; k < fanout; k++) {
        struct kr_sconn *c = sh->touched[k];
        uint64_t id = kr_sconn_id(c);
        uint32_t n = KR_CONN_NET(id);
        if (sh->per_net[n] >= 2) {
            struct kr_batch *b = sh->batch[n];
            b->d[b->n].conn = id;
            b->d[b->n++].word = *kr_sconn_word(c);
            continue;
        }
        struct kr_event ev = {.type = KR_EV_DELIVER, .src = (uint16_t)sh->idx, .conn = id,
                              .ptr = m, .mask = *kr_sconn_word(c)};
        kr_shard_emit(sh, n, &ev);
    }
    for (uint32_t j = 0; j < sh->nnets; j++) {
        uint32_t n = sh->nets[j];
        if (sh->per_net[n] >= 2) {
            struct kr_event ev = {.type = KR_EV_DELIVER_BATCH, .src = (uint16_t)sh->idx,
                                  .aux = sh->batch[n]->n, .ptr = sh->batch[n]};
            kr_shard_emit(sh, n, &ev);
            sh->batch[n] = NULL;
        }
        sh->per_net[n] = 0;
    }
}

/* Route message m to its subscribers here; returns how many connections it reached. */
static uint32_t kr_shard_publish(struct kr_shard *sh, struct kr_msg *m)
{
    struct kr_router *r = sh->r;
    uint32_t ntopics = kr_msg_ntopics(m);
    uint64_t publisher = kr_msg_publisher(m);
    uint64_t time_us = kr_msg_time_us(m);
    uint64_t stamp = ++sh->stamp;
    uint64_t seq = ++sh->seq;

    sh->ntouched = 0;
    for (uint32_t i = 0; i < ntopics; i++) {
        uint32_t len;
        const char *t = kr_msg_topic(m, i, &len);
        uint64_t h = kr_msg_topic_hash(m, i); /* hashed once, by the publisher's thread */
        if (r->o.nshards > 1 && kr_router_shard_of_hash(r, h) != sh->idx)
            continue;
        kr_msg_set_seq(m, i, sh->idx, seq); /* before anyone else sees this shard's part */
        struct kr_topic *tp = kr_topics_find_hashed(sh->topics, t, len, h);
        if (!tp)
            continue;
        uint32_t nsubs = kr_topic_nsubs(tp);
        for (uint32_t j = 0; j < nsubs; j++) {
            uint64_t since;
            struct kr_sconn *c = kr_topic_sub(tp, j, &since);
            if (kr_sconn_id(c) == publisher || (since && time_us <= since))
                continue; /* no echo; nothing from before a retroactive horizon */
            uint64_t *word = kr_sconn_word(c); /* the client's topic set, as one word */
            struct kr_topicset set;
            if (*kr_sconn_stamp(c) != stamp) {
                *kr_sconn_stamp(c) = stamp;
                kr_topicset_init(&set, ntopics);
                KR_GROW_MIN(sh->touched, sh->touched_cap, sh->ntouched + 1, 64);
                sh->touched[sh->ntouched++] = c;
            } else {
                set = kr_topicset_from_word(*word);
            }
            kr_topicset_set(&set, ntopics, i);
            *word = kr_topicset_word(set);
        }
    }

    uint32_t fanout = sh->ntouched;
    bool multi = kr_msg_nshards(m) > 1;
    /* the threshold may change while the server runs (admin `config set`): re-read the
     * snapshot only when a new one was published */
    uint64_t gen = kr_cfg_live_generation();
    if (gen != sh->live_gen || !sh->live_read) {
        sh->fanout_warn = r->o.fanout_warn;
        urcu_memb_read_lock();
        const struct kr_cfg *live = kr_cfg_live();
        if (live)
            sh->fanout_warn = live->router_min_fanout_to_warn;
        urcu_memb_read_unlock();
        sh->live_gen = gen;
        sh->live_read = true;
    }
    uint32_t fanout_warn = sh->fanout_warn;
    bool warn = !multi && fanout_warn && fanout >= fanout_warn;
    /* One atomic add for every reference handed out below. */
    uint32_t refs = fanout + (multi ? r->o.nend : 0) + (warn ? 1 : 0);
    if (refs)
        kr_msg_ref(m, refs);
    kr_shard_deliver(sh, m, fanout);
    if (multi) {
        for (uint32_t n = 0; n < r->o.nend; n++) {
            struct kr_event ev = {.type = KR_EV_END, .src = (uint16_t)sh->idx, .aux = fanout,
                                  .ptr = m};
            kr_shard_emit(sh, n, &ev);
        }
    }
    if (warn) {
        struct kr_event ev = {.type = KR_EV_FANOUT_WARN, .src = (uint16_t)sh->idx,
                              .aux = fanout, .conn = publisher, .ptr = m};
        kr_shard_emit(sh, KR_CONN_NET(publisher), &ev);
    }
    KR_SH_INC(sh, messages_routed, 1);
    KR_SH_INC(sh, deliveries, fanout);
    kr_history_add(sh, m); /* takes over the reference the PUBLISH event carried */
    if (seq - sh->frontier_sent >= KR_FRONTIER_EVERY)
        kr_shard_frontier(sh);
    return fanout;
}

/* KR_EV_RESYNC: every subscriber of these topics is kicked, once. */
static void kr_shard_resync(struct kr_shard *sh, struct kr_router_cmd *c)
{
    uint64_t stamp = ++sh->stamp; /* the fanout's per-client stamps mark who was kicked */
    /* the history lacks what was lost too: a resume from a position before this point must
     * not replay these topics in part (a number of its own, noted as if evicted) */
    uint64_t fault = ++sh->seq;
    uint32_t pos = 0, len;
    const char *t;
    sh->ntouched = 0;
    /* each client's topics of this request gather in a block of its own (kept in the
     * client's fanout word meanwhile): one KICK per client, naming them */
    while (kr_router_cmd_next(c, &pos, &t, &len)) {
        kr_evicted_note(sh->evicted, kr_topic_hash(t, len), fault);
        struct kr_topic *tp = kr_topics_find(sh->topics, t, len);
        uint32_t nsubs = tp ? kr_topic_nsubs(tp) : 0;
        for (uint32_t j = 0; j < nsubs; j++) {
            struct kr_sconn *sc = kr_topic_sub(tp, j, NULL);
            struct kr_router_cmd *named = NULL;
            if (*kr_sconn_stamp(sc) != stamp) {
                *kr_sconn_stamp(sc) = stamp;
                KR_GROW(sh->touched, sh->touched_cap, sh->ntouched + 1);
                sh->touched[sh->ntouched++] = sc;
                named = kr_router_cmd_new(len + 64);
            } else {
                named = (struct kr_router_cmd *)(uintptr_t)*kr_sconn_word(sc);
            }
            named = kr_router_cmd_add(named, t, len);
            *kr_sconn_word(sc) = (uint64_t)(uintptr_t)named;
        }
    }
    for (uint32_t k = 0; k < sh->ntouched; k++) {
        struct kr_sconn *sc = sh->touched[k];
        struct kr_event ev = {.type = KR_EV_KICK, .src = (uint16_t)sh->idx,
                              .conn = kr_sconn_id(sc),
                              .ptr = (void *)(uintptr_t)*kr_sconn_word(sc)};
        *kr_sconn_word(sc) = 0;
        kr_shard_emit(sh, KR_CONN_NET(ev.conn), &ev);
    }
    sh->ntouched = 0;
    free(c);
}

/* kr_topics hook: collect the topics that gained their first or lost their last subscriber
 * while one event is handled (all in one direction), sent after it (kr_shard_interest). */
static void kr_shard_interest_hook(void *arg, const char *topic, uint32_t len, bool on)
{
    struct kr_shard *sh = arg;
    if (sh->interest && sh->interest_on != on)
        kr_shard_interest_flush(sh);
    if (!sh->interest) {
        sh->interest = kr_router_cmd_new(len + 64);
        sh->interest_on = on;
    }
    sh->interest = kr_router_cmd_add(sh->interest, topic, len);
}

static void kr_shard_interest_flush(struct kr_shard *sh)
{
    if (!sh->interest)
        return;
    struct kr_event ev = {.type = KR_EV_INTEREST, .src = (uint16_t)sh->idx, .ptr = sh->interest,
                          .mask = sh->interest_on};
    sh->interest = NULL;
    kr_shard_emit(sh, sh->r->o.interest_net, &ev);
}

/* KR_EV_CHECK (see kr_router.h): a message of another origin than this node and
 * remote->node, on one of the topics, created between the cmd's since_seq (a publish time)
 * and remote->sub_time_us, above the mark remote holds for its origin (0 without one)? */
static void kr_shard_check(struct kr_shard *sh, struct kr_event *ev)
{
    struct kr_router_cmd *c = ev->ptr;
    const struct kr_resume_remote *x = c->remote;
    struct kr_history *h = &sh->hist;
    uint32_t n = c->ntopics, k = 0;
    struct kr_resume_topic *rt = kr_xcalloc(n ? n : 1, sizeof(*rt));
    uint32_t pos = 0, len;
    const char *t;
    while (kr_router_cmd_next(c, &pos, &t, &len)) {
        rt[k] = (struct kr_resume_topic){.t = t, .len = len, .idx = k,
                                         .hash = kr_topic_hash(t, len)};
        k++;
    }
    struct kr_resume_set set;
    kr_resume_set_build(&set, rt, k);
    uint64_t found = 0;
    /* the candidates: the topics' chains back to the window's start (publish times follow
     * the routing order to within the time two publishers race: a second of slack) */
    uint32_t *cand = NULL, cand_cap = 0;
    uint64_t from = c->since_seq > 1000000 ? c->since_seq - 1000000 : 0;
    uint32_t ncand = kr_history_collect(sh, rt, k, kr_older_than_time, from, &cand, &cand_cap);
    for (uint32_t q = 0; q < ncand && !found; q++) {
        struct kr_msg *m = h->msgs[(h->head + cand[q]) % h->cap];
        uint64_t tu = kr_msg_time_us(m);
        if (tu < c->since_seq || tu >= x->sub_time_us)
            continue;
        uint64_t oseq, origin = kr_msg_origin(m, &oseq);
        if (origin == x->node)
            continue; /* published by the node that answered: it had those */
        if (origin == 0) {
            /* published here: the answering node had it only if this node's forward reached
             * it before it answered (the forward can still be on its way, or not sent yet) */
            origin = x->self;
            if (oseq == 0)
                oseq = UINT64_MAX; /* not forwarded yet */
        }
        uint64_t mark = 0;
        for (uint32_t i = 0; i < x->nmarks; i++)
            if (x->mark_origin[i] == origin)
                mark = x->mark_seq[i];
        if (oseq <= mark)
            continue;
        for (uint32_t i = 0; i < kr_msg_ntopics(m) && !found; i++)
            found = kr_resume_match(sh, &set, rt, m, i) >= 0;
    }
    free(cand);
    free(set.slot);
    free(rt);
    struct kr_event ack = {.type = KR_EV_ACK, .src = (uint16_t)sh->idx, .aux = ev->type,
                           .conn = ev->conn, .ptr = c, .mask = found};
    kr_shard_emit(sh, sh->r->o.interest_net, &ack);
}

/* KR_EV_DROPPED: the cluster link no longer holds these topics' interest. A topic kept empty
 * goes; one that got a subscriber again meanwhile missed what the cluster routed in between
 * (its interest is taken again behind a new barrier): noted like a loss. */
static void kr_shard_dropped(struct kr_shard *sh, struct kr_router_cmd *c)
{
    uint32_t pos = 0, len;
    const char *t;
    uint64_t gap = 0;
    while (kr_router_cmd_next(c, &pos, &t, &len)) {
        if (kr_topics_forget(sh->topics, t, len) || !kr_topics_find(sh->topics, t, len))
            continue;
        if (!gap)
            gap = ++sh->seq;
        kr_evicted_note(sh->evicted, kr_topic_hash(t, len), gap);
    }
    free(c);
}

static void kr_shard_handle(struct kr_shard *sh, struct kr_event *ev)
{
    if (ev->type != KR_EV_PUBLISH) {
        /* topics getting a first subscriber here are held from this point on */
        kr_topics_set_clock(sh->topics, sh->seq);
        if (!sh->holding && ck_pr_load_int(&sh->r->hold)) {
            sh->holding = true;
            kr_topics_set_empty(sh->topics, KR_TOPICS_HOLD);
        }
    }
    switch (ev->type) {
    case KR_EV_PUBLISH: {
        uint32_t fanout = kr_shard_publish(sh, ev->ptr);
        if (ev->mask & KR_PUBLISH_COUNT) {
            struct kr_event ans = {.type = KR_EV_PUBLISHED, .src = (uint16_t)sh->idx,
                                   .aux = ev->aux, .conn = ev->conn, .mask = fanout};
            kr_shard_emit(sh, KR_CONN_NET(ev->conn), &ans);
        }
        break;
    }
    case KR_EV_SUBSCRIBE:
    case KR_EV_UNSUBSCRIBE: {
        struct kr_router_cmd *c = ev->ptr;
        uint32_t pos = 0, len;
        const char *t;
        while (kr_router_cmd_next(c, &pos, &t, &len)) {
            if (ev->type == KR_EV_SUBSCRIBE)
                kr_topics_subscribe(sh->topics, t, len, ev->conn, 0);
            else
                kr_topics_unsubscribe(sh->topics, t, len, ev->conn);
        }
        struct kr_event ack = {.type = KR_EV_ACK, .src = (uint16_t)sh->idx, .aux = ev->type,
                               .conn = ev->conn, .ptr = c};
        kr_shard_emit(sh, KR_CONN_NET(ev->conn), &ack);
        break;
    }
    case KR_EV_RETRO_SUBSCRIBE:
        kr_shard_retro(sh, ev);
        break;
    case KR_EV_RESUME:
    case KR_EV_HISTORY:
        kr_shard_resume(sh, ev);
        break;
    case KR_EV_DROPPED:
        kr_shard_dropped(sh, ev->ptr);
        break;
    case KR_EV_CHECK:
        kr_shard_check(sh, ev);
        break;
    case KR_EV_DISCONNECT:
        kr_topics_drop_conn(sh->topics, ev->conn);
        break;
    case KR_EV_RESYNC:
        kr_shard_resync(sh, ev->ptr);
        break;
    default:
        KR_ERROR("shard %u: unknown event type %u", sh->idx, ev->type);
        abort();
    }
}

/* kr_router_client_topics, on the shard: the buffer belongs to the request, so filling it
 * is safe even if the asker stopped waiting. */
static int kr_shard_topics_run(struct kr_req *req, void *owner)
{
    struct kr_shard *sh = owner;
    struct kr_topics_req *q = (struct kr_topics_req *)req;
    q->len = kr_topics_conn_topics(sh->topics, q->conn, &q->cursor, q->buf, q->cap);
    return 0;
}

static void kr_shard_wake(void *arg)
{
    kr_waiter_wake(arg);
}

/* A monotonic clock in nanoseconds (vDSO: no system call). */
static uint64_t kr_shard_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Count an iteration that took events, and how long it lasted (preemption inside it
 * included: the scheduler figures of `stats` tell the two apart). */
static void kr_shard_loop_timed(struct kr_shard *sh, uint64_t t0)
{
    uint64_t dt = kr_shard_clock_ns() - t0;
    KR_SH_INC(sh, loop_iterations, 1);
    if (dt > 1000000u)
        KR_SH_INC(sh, loop_over_1ms, 1);
    if (dt > 10000000u)
        KR_SH_INC(sh, loop_over_10ms, 1);
}

static void *kr_shard_main(void *arg)
{
    struct kr_shard *sh = arg;
    struct kr_router *r = sh->r;
    char name[16];
    snprintf(name, sizeof(name), "kr-shard-%u", sh->idx);
    pthread_setname_np(pthread_self(), name);
    ck_pr_store_int(&sh->tid, (int)syscall(SYS_gettid));
    kr_pin_self(r->pin, sh->idx);
    urcu_memb_register_thread();
    const uint32_t park_max = r->o.mailbox_capacity * KR_SHARD_PARK_RINGS;

    while (!ck_pr_load_int(&r->stop)) {
        uint64_t t0 = kr_shard_clock_ns();
        kr_reqq_serve(sh->reqq, sh);
        kr_outbox_unpark(&sh->ob);
        uint32_t work = 0;
        for (uint32_t i = 0; i < r->o.nnet && kr_outbox_parked(&sh->ob) < park_max; i++) {
            uint32_t n = (sh->first_in + i) % r->o.nnet;
            struct kr_event ev;
            for (uint32_t k = 0; k < KR_SHARD_BATCH && kr_outbox_parked(&sh->ob) < park_max &&
                                 kr_mailbox_pop(sh->in[n], &ev);
                 k++) {
                kr_shard_handle(sh, &ev);
                kr_shard_interest_flush(sh);
                work++;
            }
        }
        sh->first_in = (sh->first_in + 1) % r->o.nnet;
        kr_shard_congestion(sh, park_max);
        kr_outbox_wake(&sh->ob);
        kr_topics_flush_retired(sh->topics); /* what this pass removed: one call_rcu */
        if (work) {
            kr_shard_loop_timed(sh, t0);
            continue;
        }
        if (sh->seq != sh->frontier_sent && r->o.frontier) {
            /* idle: how far it got, at most every KR_FRONTIER_IDLE_MS (it wakes every net
             * thread; positions stay exact without it, it only keeps idle ones fresh) */
            uint64_t now = kr_now_ms();
            if (now - sh->frontier_ms >= KR_FRONTIER_IDLE_MS) {
                sh->frontier_ms = now;
                kr_shard_frontier(sh);
                kr_outbox_wake(&sh->ob);
            }
        }
        kr_waiter_prepare(&sh->waiter);
        bool ready = ck_pr_load_int(&r->stop) || kr_reqq_pending(sh->reqq);
        for (uint32_t n = 0; n < r->o.nnet && !ready && kr_outbox_parked(&sh->ob) < park_max; n++)
            ready = kr_mailbox_depth(sh->in[n]) > 0;
        if (ready) {
            kr_waiter_cancel(&sh->waiter);
            continue;
        }
        /* With events parked, retry soon: the net thread frees ring space as it drains.
         * With removed topics waiting for their grace period, come back to free them. */
        kr_waiter_sleep(&sh->waiter, kr_outbox_parked(&sh->ob)              ? 1
                                     : kr_topics_retired_waiting(sh->topics) ? KR_RETIRED_WAIT_MS
                                                                            : -1);
    }
    kr_topics_flush_retired(sh->topics);
    urcu_memb_unregister_thread();
    return NULL;
}

/* ---------------------------------------------------------------- lifecycle */

struct kr_router *kr_router_create(const struct kr_router_opts *opts)
{
    struct kr_router *r = kr_xcalloc(1, sizeof(*r));
    r->o = *opts;
    if (r->o.mailbox_capacity == 0)
        r->o.mailbox_capacity = 4096;
    if (r->o.nend == 0 || r->o.nend > r->o.nnet)
        r->o.nend = r->o.nnet;
    r->shards = aligned_alloc(64, sizeof(struct kr_shard) * r->o.nshards);
    if (!r->shards)
        abort();
    memset(r->shards, 0, sizeof(struct kr_shard) * r->o.nshards);
    r->congested = aligned_alloc(64, sizeof(struct kr_congestion) * r->o.nshards);
    if (!r->congested)
        abort();
    memset(r->congested, 0, sizeof(struct kr_congestion) * r->o.nshards);
    r->dirty = kr_xcalloc((size_t)r->o.nnet * r->o.nshards, 1);
    r->pin = kr_pin_create(r->o.nshards, r->o.pin_cpus);
    r->cursor = kr_xcalloc((size_t)r->o.nnet * r->o.nshards, sizeof(*r->cursor));
    for (uint32_t s = 0; s < r->o.nshards; s++) {
        struct kr_shard *sh = &r->shards[s];
        sh->r = r;
        sh->idx = s;
        if (kr_waiter_init(&sh->waiter) != 0) {
            fprintf(stderr, "kraken: eventfd: %s\n", strerror(errno));
            abort();
        }
        sh->topics = kr_topics_create();
        if (r->o.interest) {
            kr_topics_set_hook(sh->topics, kr_shard_interest_hook, sh);
            /* an emptied topic is still held while the link lingers on its interest: it
             * goes when the link drops that (KR_EV_DROPPED) */
            kr_topics_set_empty(sh->topics, KR_TOPICS_KEEP);
        }
        sh->reqq = kr_reqq_create(kr_shard_wake, &sh->waiter);
        sh->evicted = kr_evicted_create(KR_EVICTED_LOG2_DEFAULT);
        sh->hist.cap = r->o.history;
        sh->hist.msgs = kr_xcalloc(r->o.history ? r->o.history : 1, sizeof(struct kr_msg *));
        sh->hist.chain_mask = r->o.history ? (1u << KR_CHAIN_LOG2) - 1 : 0;
        sh->hist.chain = kr_xcalloc((size_t)sh->hist.chain_mask + 1, sizeof(uint64_t));
        sh->in = kr_xcalloc(r->o.nnet, sizeof(*sh->in));
        sh->per_net = kr_xcalloc(r->o.nnet, sizeof(*sh->per_net));
        sh->batch = kr_xcalloc(r->o.nnet, sizeof(*sh->batch));
        sh->nets = kr_xcalloc(r->o.nnet, sizeof(*sh->nets));
        sh->out = kr_xcalloc(r->o.nnet, sizeof(*sh->out));
        for (uint32_t n = 0; n < r->o.nnet; n++) {
            sh->in[n] = kr_mailbox_create(r->o.mailbox_capacity);
            sh->out[n] = kr_mailbox_create(r->o.mailbox_capacity);
        }
        sh->sink = (struct kr_outbox_sink){.ndest = r->o.nnet, .mb = sh->out,
                                           .wake = r->o.wake_net, .arg = r->o.wake_arg,
                                           .parks = &sh->st.overflow_events};
        kr_outbox_init(&sh->ob, &sh->sink, KR_OUTBOX_PER_DEST);
    }
    return r;
}

int kr_router_start(struct kr_router *r)
{
    uint64_t now = kr_msg_clock_us();
    for (uint32_t s = 0; s < r->o.nshards; s++)
        r->shards[s].hist.start_us = now;
    for (uint32_t s = 0; s < r->o.nshards; s++) {
        int rc = pthread_create(&r->shards[s].thread, NULL, kr_shard_main, &r->shards[s]);
        if (rc)
            return -rc;
        r->shards[s].started = true;
    }
    return 0;
}

void kr_router_stop(struct kr_router *r)
{
    ck_pr_store_int(&r->stop, 1);
    for (uint32_t s = 0; s < r->o.nshards; s++) {
        struct kr_shard *sh = &r->shards[s];
        if (!sh->started)
            continue;
        ck_pr_store_int(&sh->waiter.sleeping, 1);
        kr_waiter_wake(&sh->waiter);
        pthread_join(sh->thread, NULL);
        sh->started = false;
    }
    /* Requests nobody will serve any more: answered -ESHUTDOWN, new ones refused. */
    for (uint32_t s = 0; s < r->o.nshards; s++)
        kr_reqq_shutdown(r->shards[s].reqq);
}

/* Release what an undelivered event holds. */
/* Release what a batch still holds (the deliveries not handed out) and the block. */
static void kr_batch_release(struct kr_batch *b)
{
    uint32_t nt = kr_msg_ntopics(b->m);
    for (uint32_t i = b->next; i < b->n; i++) {
        struct kr_topicset set = kr_topicset_from_word(b->d[i].word);
        kr_topicset_release(&set, nt);
        kr_msg_unref(b->m);
    }
    free(b);
}

static void kr_router_release_event(struct kr_event *ev)
{
    switch (ev->type) {
    case KR_EV_PUBLISH:
    case KR_EV_END:
    case KR_EV_FANOUT_WARN:
        kr_msg_unref(ev->ptr);
        break;
    case KR_EV_DELIVER_BATCH:
        kr_batch_release(ev->ptr);
        break;
    case KR_EV_DELIVER:
    case KR_EV_REPLAY:
    {
        struct kr_topicset set = kr_topicset_from_word(ev->mask);
        kr_topicset_release(&set, kr_msg_ntopics(ev->ptr));
        kr_msg_unref(ev->ptr);
        break;
    }
    case KR_EV_SUBSCRIBE:
    case KR_EV_UNSUBSCRIBE:
    case KR_EV_RETRO_SUBSCRIBE:
    case KR_EV_RESUME:
    case KR_EV_HISTORY:
    case KR_EV_CHECK:
    case KR_EV_ACK:
    case KR_EV_INTEREST:
    case KR_EV_RESYNC:
    case KR_EV_DROPPED:
    case KR_EV_KICK:
        kr_router_cmd_free(ev->ptr);
        break;
    default:
        break;
    }
}

static void kr_router_release_parked(void *arg, uint32_t net, struct kr_event *ev)
{
    (void)arg;
    (void)net;
    kr_router_release_event(ev);
}

void kr_router_destroy(struct kr_router *r)
{
    if (!r)
        return;
    urcu_memb_register_thread();
    for (uint32_t s = 0; s < r->o.nshards; s++) {
        struct kr_shard *sh = &r->shards[s];
        struct kr_event ev;
        for (uint32_t n = 0; n < r->o.nnet; n++) {
            while (kr_mailbox_pop(sh->in[n], &ev))
                kr_router_release_event(&ev);
            while (kr_mailbox_pop(sh->out[n], &ev))
                kr_router_release_event(&ev);
        }
        kr_outbox_destroy(&sh->ob, kr_router_release_parked, NULL);
        for (uint32_t n = 0; n < r->o.nnet; n++) {
            kr_mailbox_destroy(sh->in[n]);
            kr_mailbox_destroy(sh->out[n]);
        }
        for (uint32_t k = 0; k < sh->hist.count; k++)
            kr_msg_unref(sh->hist.msgs[(sh->hist.head + k) % sh->hist.cap]);
        free(sh->hist.msgs);
        free(sh->hist.chain);
        kr_evicted_destroy(sh->evicted);
        kr_topics_destroy(sh->topics);
        kr_reqq_destroy(sh->reqq);
        kr_waiter_destroy(&sh->waiter);
        free(sh->in);
        free(sh->out);
        free(sh->touched);
        free(sh->interest);
        free(sh->per_net);
        free(sh->batch);
        free(sh->nets);
    }
    for (size_t i = 0; i < (size_t)r->o.nnet * r->o.nshards; i++)
        if (r->cursor[i]) /* a batch a net thread was handing out when it stopped */
            kr_batch_release(r->cursor[i]);
    free(r->cursor);
    urcu_memb_barrier(); /* run pending call_rcu frees */
    urcu_memb_unregister_thread();
    free(r->shards);
    free(r->congested);
    free(r->dirty);
    kr_pin_destroy(r->pin);
    free(r);
}

/* ---------------------------------------------------------------- net-thread side */

bool kr_router_send(struct kr_router *r, uint32_t net, uint32_t shard, const struct kr_event *ev)
{
    if (ev->type == KR_EV_PUBLISH && ck_pr_load_int(&r->congested[shard].on))
        return false;
    if (!kr_mailbox_push(r->shards[shard].in[net], ev))
        return false;
    r->dirty[(size_t)net * r->o.nshards + shard] = 1;
    return true;
}

void kr_router_flush(struct kr_router *r, uint32_t net)
{
    uint8_t *d = &r->dirty[(size_t)net * r->o.nshards];
    for (uint32_t s = 0; s < r->o.nshards; s++) {
        if (d[s]) {
            d[s] = 0;
            kr_waiter_wake(&r->shards[s].waiter);
        }
    }
}

bool kr_router_recv(struct kr_router *r, uint32_t net, uint32_t shard, struct kr_event *ev)
{
    struct kr_batch **cur = &r->cursor[(size_t)net * r->o.nshards + shard];
    if (!*cur) {
        if (!kr_mailbox_pop(r->shards[shard].out[net], ev))
            return false;
        if (ev->type != KR_EV_DELIVER_BATCH)
            return true;
        *cur = ev->ptr;
    }
    /* one delivery of the batch, as the KR_EV_DELIVER it stands for */
    struct kr_batch *b = *cur;
    *ev = (struct kr_event){.type = KR_EV_DELIVER, .src = (uint16_t)shard,
                            .conn = b->d[b->next].conn, .ptr = b->m, .mask = b->d[b->next].word};
    if (++b->next == b->n) {
        free(b);
        *cur = NULL;
    }
    return true;
}

void kr_router_watch(struct kr_router *r, uint64_t now_ms)
{
    for (uint32_t s = 0; s < r->o.nshards; s++) {
        struct kr_shard *sh = &r->shards[s];
        bool waiting = kr_reqq_pending(sh->reqq);
        for (uint32_t n = 0; n < r->o.nnet && !waiting; n++)
            waiting = kr_mailbox_depth(sh->in[n]) > 0;
        kr_pin_watch(r->pin, s, waiting, now_ms);
    }
}

/* The PIN rows of KR_ROUTER_COUNTERS: the watch's counts. */
static uint64_t kr_shard_pin_cpu_stalls(const struct kr_shard *sh)
{
    return kr_pin_stalls(sh->r->pin, sh->idx);
}

/* The TABLE rows of KR_ROUTER_COUNTERS: the shard's topic table's own counts. */
static uint64_t kr_shard_table_topics(const struct kr_shard *sh)
{
    return kr_topics_count(sh->topics);
}

static uint64_t kr_shard_table_subscriptions(const struct kr_shard *sh)
{
    return kr_topics_subscriptions(sh->topics);
}

void kr_router_stats(const struct kr_router *r, struct kr_router_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (uint32_t s = 0; s < r->o.nshards; s++) {
        struct kr_shard *sh = &r->shards[s];
#define KR_RT_SUM_SHARD(name) out->name += ck_pr_load_64(&sh->st.name);
#define KR_RT_SUM_TABLE(name) out->name += kr_shard_table_##name(sh);
#define KR_RT_SUM_PIN(name) out->name += kr_shard_pin_##name(sh);
#define KR_RT_SUM(name, kind, source, figure, help) KR_RT_SUM_##source(name)
        KR_ROUTER_COUNTERS(KR_RT_SUM)
#undef KR_RT_SUM
#undef KR_RT_SUM_PIN
#undef KR_RT_SUM_TABLE
#undef KR_RT_SUM_SHARD
    }
}

/* ---------------------------------------------------------------- admin reads */

uint32_t kr_router_client_nsubs(struct kr_router *r, uint64_t conn)
{
    uint32_t n = 0;
    for (uint32_t s = 0; s < r->o.nshards; s++)
        n += kr_topics_conn_nsubs(r->shards[s].topics, conn);
    return n;
}

struct kr_router_walk_ctx {
    kr_router_topic_cb cb;
    void *arg;
    int stop;
};

static int kr_router_walk_one(void *arg, const char *topic, uint32_t len, uint32_t nsubs)
{
    struct kr_router_walk_ctx *w = arg;
    w->stop = w->cb(w->arg, topic, len, nsubs);
    return w->stop;
}

void kr_router_walk_topics(struct kr_router *r, kr_router_topic_cb cb, void *arg)
{
    struct kr_router_walk_ctx w = {cb, arg, 0};
    for (uint32_t s = 0; s < r->o.nshards && !w.stop; s++)
        kr_topics_walk(r->shards[s].topics, kr_router_walk_one, &w);
}

ssize_t kr_router_client_topics(struct kr_router *r, uint32_t shard, uint64_t conn,
                                uint32_t *cursor, char *buf, size_t cap, int timeout_ms)
{
    if (shard >= r->o.nshards || cap == 0)
        return -EINVAL;
    struct kr_topics_req *q = kr_xcalloc(1, sizeof(*q) + cap);
    q->base.run = kr_shard_topics_run;
    q->conn = conn;
    q->cursor = *cursor;
    q->cap = cap;
    int rc = kr_reqq_submit(r->shards[shard].reqq, &q->base, timeout_ms);
    if (rc == -ETIMEDOUT)
        return rc; /* the shard frees it when it gets to it */
    ssize_t n = rc < 0 ? rc : (ssize_t)q->len;
    if (rc == 0) {
        memcpy(buf, q->buf, q->len);
        *cursor = q->cursor;
    }
    free(q);
    return n;
}
