/* The cluster link (see kr_cluster.h and docs/cluster.md).
 *
 * Threads:
 *  - the link thread (its own libuv loop): consumes the net threads' rings (forwards and
 *    subscribe barriers) and the router's ctl_idx rings (interest, fanout warnings), owns
 *    the topic -> NATS subscription map, the lingers, the probes and the peers; produces the
 *    barrier answers towards the net threads and KR_EV_RESYNC on ctl_idx.
 *  - libnats' one message-delivery thread (nats_SetMessageDeliveryPoolSize(1), every
 *    subscription on the global pool, so messages are handled in the order they arrived):
 *    decodes entries, drops duplicates by origin and sequence, injects the rest into the
 *    shards on in_idx; answers probes; hands the other control messages to the link thread
 *    through a small mutex-protected list (control traffic only: heartbeats, probe
 *    answers, lost notices, connection events).
 *  - libnats' own threads call the connection callbacks, which only queue an item.
 */
#include "kr_cluster.h"

#include <ck_pr.h>
#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "kr_cluster_wire.h"
#include "kr_log.h"
#include "kr_util.h"

#define KR_CL_TICK_MS 100
#define KR_CL_HB_MS 1000          /* heartbeat period */
#define KR_CL_PEER_DEAD_MS 3500   /* a node not heard from this long has left */
#define KR_CL_PROBE_TIMEOUT_MS 30000 /* interest floods take the routes seconds */
#define KR_CL_BATCH 16384         /* events (a block counts its topics) per pass */
#define KR_CL_DROPS_PER_TICK 4096 /* lingering subscriptions dropped per tick at most */
#define KR_CL_MAX_ORIGINS 256     /* origins the duplicate filter remembers */
#define KR_CL_LOST_CHUNK (256 * 1024)
/* Topics forwarded lately, announced as possibly lost when the link reconnects (what was
 * written to a server that died, or sat in it, is gone). Two windows of this length rotate,
 * so what is announced covers at least this long before the reconnect: the time the link
 * takes to notice a server that went silent (pings: 5 s, 4 unanswered). */
#define KR_CL_RECENT_MS 25000
#define KR_CL_RECENT_SLOTS (1u << 17) /* hashes per window (half full at most) */
#define KR_CL_RECENT_BYTES (4u << 20) /* topic bytes per window; past either: "every topic" */

struct kr_cl_topic {
    struct kr_cl_topic *next; /* hash chain */
    uint64_t hash;
    natsSubscription *sub;
    uint64_t since_us;        /* in force (and covered) since; 0 = waiting for its probe */
    uint64_t probe;           /* the probe that puts it in force */
    uint64_t linger_until_ms; /* dropped then unless a local subscriber came back */
    bool shard_on;            /* the owning shard has subscribers */
    bool in_lq;
    uint32_t len;
    char name[];
};

struct kr_cl_wait { /* a subscribe request waiting for a probe */
    struct kr_event ev;
    uint64_t probe;
    uint64_t since_ms;
};

struct kr_cl_peer {
    uint64_t origin;
    uint64_t first_ms, last_ms;
    uint64_t acked; /* highest probe it answered */
    char name[64];
};

struct kr_cl_item { /* from libnats' threads to the link thread */
    struct kr_cl_item *next;
    char kind;      /* 'H', 'A', 'L' bodies; 'd' disconnected, 'r' reconnected, 'c' connected */
    uint64_t origin;
    uint64_t seq;
    size_t len;
    char data[];    /* H: name; L: the topics' pairs */
};

struct kr_cl_recent { /* the topics forwarded in one window */
    uint64_t *slots;  /* topic hashes, open addressing (0 = empty) */
    uint32_t n;
    bool overflow;    /* more than the window holds: every topic */
    char *pairs;      /* the topics, as a lost notice's pairs */
    size_t len;
};

struct kr_cl_origin {
    uint64_t origin, seq, last_ms;
};

struct kr_cl_counters {
    uint64_t connected; /* 1 while linked (a state, not a counter) */
#define KR_CL_FIELD(name, kind, micro, help) uint64_t name;
    KR_CLUSTER_COUNTERS(KR_CL_FIELD)
#undef KR_CL_FIELD
};

struct kr_cluster {
    struct kr_cluster_opts o;
    const struct kr_cfg *cfg;
    char prefix[KR_CFG_STR_MAX];
    size_t prefix_len;
    char name[64];
    uint64_t origin;
    uint64_t pub_id;
    natsOptions *nopts;
    natsConnection *nc;
    natsSubscription *ctl_subs[4];
    char subj_hb[KR_CFG_STR_MAX + 16], subj_probe[KR_CFG_STR_MAX + 16],
        subj_lost[KR_CFG_STR_MAX + 16], subj_self[KR_CFG_STR_MAX + 32];
    int stopping; /* read by the delivery thread */

    /* link thread */
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t tick;
    uv_thread_t thread;
    bool started;
    struct kr_mailbox **in;   /* [nnet] net -> link */
    struct kr_mailbox **out;  /* [nnet] link -> net */
    uint8_t *in_dirty;        /* [nnet] net n pushed since its flush (net n only) */
    /* answers towards the net threads: in order per net thread, parked while a ring is
     * full, each net thread woken once per pass */
    struct kr_outbox_sink out_sink;
    struct kr_outbox outbox;
    struct kr_cl_topic **buckets;
    size_t nbuckets, ntopics;
    struct kr_cl_topic **lq; /* lingering topics, by deadline (constant linger: append order) */
    size_t lq_head, lq_n, lq_cap;
    struct kr_cl_topic **pend; /* topics waiting for probe_sent (in flight) or the next */
    size_t npend, pend_cap;
    struct kr_cl_wait *waits;
    size_t nwaits, waits_cap;
    uint64_t probe_sent;     /* last probe number sent (0 = none) */
    uint64_t probe_done;     /* every probe up to this one is answered */
    uint64_t probe_sent_ms;
    bool need_probe;         /* topics were subscribed after the last probe sent */
    bool connected;
    uint64_t last_hb_ms;
    uint64_t start_ms;
    struct kr_cl_peer *peers;
    uint32_t npeers, peers_cap;
    char *ebuf;              /* encoded entry */
    size_t ebuf_cap;
    char *sbuf;              /* a subject */
    size_t sbuf_cap;
    char *lost;              /* lost-forwards notice being collected (pairs) */
    size_t lost_len, lost_cap;
    uint32_t lost_n;
    uint64_t seq;            /* entries forwarded */
    struct kr_cl_recent recent[2]; /* [cur] fills, the other is the window before */
    uint32_t recent_cur;
    uint64_t recent_since_ms;
    bool lost_all;           /* a lost notice for every topic is due */

    /* from libnats' threads */
    pthread_mutex_t mu;
    struct kr_cl_item *ihead, *itail;

    /* the delivery thread */
    struct kr_cl_origin origins[KR_CL_MAX_ORIGINS];
    uint32_t norigins;
    const char **d_topics;
    uint32_t *d_lens;
    uint64_t *d_hashes;
    uint32_t d_cap;

    struct kr_cl_counters st; /* relaxed stores by their one writer */
};

#define KR_CL_INC(cl, f, n) ck_pr_store_64(&(cl)->st.f, (cl)->st.f + (n))

static uint64_t kr_cl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---------------------------------------------------------------- items from libnats */

static void kr_cl_item_push(struct kr_cluster *cl, char kind, uint64_t origin, uint64_t seq,
                            const char *data, size_t len)
{
    struct kr_cl_item *it = kr_xmalloc(sizeof(*it) + len);
    it->next = NULL;
    it->kind = kind;
    it->origin = origin;
    it->seq = seq;
    it->len = len;
    if (len)
        memcpy(it->data, data, len);
    pthread_mutex_lock(&cl->mu);
    if (cl->itail)
        cl->itail->next = it;
    else
        cl->ihead = it;
    cl->itail = it;
    pthread_mutex_unlock(&cl->mu);
    uv_async_send(&cl->wake);
}

static void kr_cl_disconnected_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    kr_cl_item_push(closure, 'd', 0, 0, NULL, 0);
}

static void kr_cl_reconnected_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    kr_cl_item_push(closure, 'r', 0, 0, NULL, 0);
}

static void kr_cl_connected_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    kr_cl_item_push(closure, 'c', 0, 0, NULL, 0);
}

static void kr_cl_error_cb(natsConnection *nc, natsSubscription *sub, natsStatus err,
                           void *closure)
{
    (void)nc;
    struct kr_cluster *cl = closure;
    if (err == NATS_SLOW_CONSUMER && sub) {
        /* a topic's entries arrive faster than the shards take them: libnats drops past
         * cluster_max_pending; the link tells the topic's subscribers */
        const char *subj = natsSubscription_GetSubject(sub);
        if (subj)
            kr_cl_item_push(cl, 'S', 0, 0, subj, strlen(subj) + 1);
        return;
    }
    static struct kr_log_ratelimit rl;
    uint64_t suppressed = 0;
    if (kr_log_enabled(KR_LOG_WARN) && kr_log_ratelimit(&rl, 10, 10000, &suppressed))
        KR_WARN("cluster: NATS error: %s (suppressed %llu similar)", natsStatus_GetText(err),
                (unsigned long long)suppressed);
}

/* ---------------------------------------------------------------- the delivery thread */

/* Drop copies of an entry already handled: per origin, the highest sequence seen. An origin
 * publishes an entry's copies one after the other and its messages reach this connection
 * in order, so any copy at or below the mark is a duplicate. */
static bool kr_cl_is_duplicate(struct kr_cluster *cl, uint64_t origin, uint64_t seq)
{
    uint64_t now = kr_cl_now_ms();
    struct kr_cl_origin *o = NULL;
    for (uint32_t i = 0; i < cl->norigins && !o; i++)
        if (cl->origins[i].origin == origin)
            o = &cl->origins[i];
    if (!o) {
        if (cl->norigins < KR_CL_MAX_ORIGINS) {
            o = &cl->origins[cl->norigins++];
        } else { /* forget the origin heard from least recently */
            o = &cl->origins[0];
            for (uint32_t i = 1; i < cl->norigins; i++)
                if (cl->origins[i].last_ms < o->last_ms)
                    o = &cl->origins[i];
        }
        o->origin = origin;
        o->seq = 0;
    }
    o->last_ms = now;
    if (seq <= o->seq)
        return true;
    o->seq = seq;
    return false;
}

/* Hand an event to a shard on in_idx, waiting while its ring is full or it is congested
 * (libnats holds what arrives meanwhile). */
static void kr_cl_inject(struct kr_cluster *cl, uint32_t shard, const struct kr_event *ev)
{
    for (uint32_t spins = 0; !kr_router_send(cl->o.router, cl->o.in_idx, shard, ev); spins++) {
        kr_router_flush(cl->o.router, cl->o.in_idx);
        if (ck_pr_load_int(&cl->stopping)) {
            if (ev->type == KR_EV_PUBLISH)
                kr_msg_unref(ev->ptr);
            else
                free(ev->ptr);
            return;
        }
        struct timespec ts = {0, spins < 100 ? 20000 : 200000};
        nanosleep(&ts, NULL);
    }
}

static void kr_cl_on_entry(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    struct kr_cluster *cl = closure;
    struct kr_cl_body b;
    if (kr_cl_decode(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &b) != 0 ||
        b.kind != 'E') {
        KR_CL_INC(cl, bad_messages, 1);
        natsMsg_Destroy(msg);
        return;
    }
    if (b.origin == cl->origin || kr_cl_is_duplicate(cl, b.origin, b.seq) ||
        ck_pr_load_int(&cl->stopping)) {
        if (b.origin != cl->origin)
            KR_CL_INC(cl, duplicates, 1);
        natsMsg_Destroy(msg);
        return;
    }
    if (b.ntopics > cl->d_cap) {
        cl->d_cap = b.ntopics;
        cl->d_topics = kr_xrealloc(cl->d_topics, b.ntopics * sizeof(*cl->d_topics));
        cl->d_lens = kr_xrealloc(cl->d_lens, b.ntopics * sizeof(*cl->d_lens));
        cl->d_hashes = kr_xrealloc(cl->d_hashes, b.ntopics * sizeof(*cl->d_hashes));
    }
    struct kr_router *r = cl->o.router;
    size_t pos = 0;
    uint32_t n = 0, involved = 0;
    uint64_t shardset = 0;
    const char *t;
    uint32_t len;
    while (kr_cl_next_topic(&b, &pos, &t, &len)) {
        cl->d_topics[n] = t;
        cl->d_lens[n] = len;
        cl->d_hashes[n] = kr_topic_hash(t, len);
        uint32_t s = kr_router_shard_of_hash(r, cl->d_hashes[n]);
        if (!(shardset & (UINT64_C(1) << s))) {
            shardset |= UINT64_C(1) << s;
            involved++;
        }
        n++;
    }
    struct kr_msg *m = kr_msg_create_hashed(cl->pub_id, kr_msg_clock_us(), n, cl->d_topics,
                                            cl->d_lens, cl->d_hashes, b.payload, b.payload_len,
                                            involved > 1 ? cl->o.nnet : 0);
    natsMsg_Destroy(msg);
    kr_msg_set_nshards(m, involved);
    if (involved > 1)
        kr_msg_ref(m, involved - 1);
    for (uint32_t s = 0; s < kr_router_nshards(r); s++) {
        if (!((shardset >> s) & 1))
            continue;
        struct kr_event ev = {.type = KR_EV_PUBLISH, .src = (uint16_t)cl->o.in_idx,
                              .conn = cl->pub_id, .ptr = m};
        kr_cl_inject(cl, s, &ev);
    }
    kr_router_flush(r, cl->o.in_idx);
    KR_CL_INC(cl, msgs_in, 1);
}

static void kr_cl_on_ctl(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    struct kr_cluster *cl = closure;
    struct kr_cl_body b;
    if (kr_cl_decode(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &b) != 0 ||
        b.kind == 'E') {
        KR_CL_INC(cl, bad_messages, 1);
        natsMsg_Destroy(msg);
        return;
    }
    if (b.origin != cl->origin) {
        switch (b.kind) {
        case 'P': { /* answer to the prober's own subject */
            char subj[KR_CFG_STR_MAX + 32], body[32];
            snprintf(subj, sizeof(subj), "%s.node.%016" PRIx64, cl->prefix, b.origin);
            size_t bl = kr_cl_ctl_encode(body, 'A', cl->origin, b.seq);
            natsConnection_Publish(nc, subj, body, (int)bl);
            /* a probe also says its sender is alive */
            kr_cl_item_push(cl, 'h', b.origin, 0, NULL, 0);
            break;
        }
        case 'A':
            kr_cl_item_push(cl, 'A', b.origin, b.seq, NULL, 0);
            break;
        case 'H':
            kr_cl_item_push(cl, 'H', b.origin, 0, b.rest, b.rest_len);
            break;
        case 'L':
            kr_cl_item_push(cl, 'L', b.origin, b.ntopics, b.rest, b.rest_len);
            break;
        case 'R':
            kr_cl_item_push(cl, 'R', b.origin, 0, NULL, 0);
            break;
        default:
            break;
        }
    }
    natsMsg_Destroy(msg);
}

/* ---------------------------------------------------------------- the topic map (link) */

static struct kr_cl_topic *kr_cl_find(struct kr_cluster *cl, const char *t, uint32_t len,
                                      uint64_t h)
{
    for (struct kr_cl_topic *e = cl->buckets[h & (cl->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && e->len == len && memcmp(e->name, t, len) == 0)
            return e;
    return NULL;
}

static void kr_cl_grow(struct kr_cluster *cl)
{
    size_t nb = cl->nbuckets * 2;
    struct kr_cl_topic **b = kr_xcalloc(nb, sizeof(*b));
    for (size_t i = 0; i < cl->nbuckets; i++) {
        struct kr_cl_topic *e = cl->buckets[i];
        while (e) {
            struct kr_cl_topic *next = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    free(cl->buckets);
    cl->buckets = b;
    cl->nbuckets = nb;
}

static void kr_cl_linger(struct kr_cluster *cl, struct kr_cl_topic *e)
{
    e->linger_until_ms = kr_cl_now_ms() + cl->cfg->cluster_linger_ms;
    if (e->in_lq)
        return;
    if (cl->lq_n == cl->lq_cap) {
        size_t ncap = cl->lq_cap ? cl->lq_cap * 2 : 1024;
        struct kr_cl_topic **nq = kr_xcalloc(ncap, sizeof(*nq));
        for (size_t i = 0; i < cl->lq_n; i++)
            nq[i] = cl->lq[(cl->lq_head + i) % cl->lq_cap];
        free(cl->lq);
        cl->lq = nq;
        cl->lq_head = 0;
        cl->lq_cap = ncap;
    }
    cl->lq[(cl->lq_head + cl->lq_n) % cl->lq_cap] = e;
    cl->lq_n++;
    e->in_lq = true;
}

/* The topic's entry; a new one gets its NATS subscription and waits for the next probe. */
static struct kr_cl_topic *kr_cl_hold(struct kr_cluster *cl, const char *t, uint32_t len)
{
    uint64_t h = kr_topic_hash(t, len);
    struct kr_cl_topic *e = kr_cl_find(cl, t, len, h);
    if (e)
        return e;
    e = kr_xcalloc(1, sizeof(*e) + len);
    e->hash = h;
    e->len = len;
    memcpy(e->name, t, len);
    size_t need = kr_cl_subject_max(cl->prefix_len, len);
    if (need > cl->sbuf_cap) {
        cl->sbuf_cap = need;
        cl->sbuf = kr_xrealloc(cl->sbuf, need);
    }
    kr_cl_subject(cl->sbuf, cl->sbuf_cap, cl->prefix, t, len);
    natsStatus s = natsConnection_Subscribe(&e->sub, cl->nc, cl->sbuf, kr_cl_on_entry, cl);
    if (s == NATS_OK) /* bounded: past it, NATS_SLOW_CONSUMER (kr_cl_error_cb) */
        natsSubscription_SetPendingLimits(e->sub, (int)cl->cfg->cluster_max_pending, -1);
    else
        KR_WARN("cluster: cannot subscribe to %s: %s", cl->sbuf, natsStatus_GetText(s));
    e->probe = cl->probe_sent + 1;
    cl->need_probe = true;
    if (cl->npend == cl->pend_cap) {
        cl->pend_cap = cl->pend_cap ? cl->pend_cap * 2 : 256;
        cl->pend = kr_xrealloc(cl->pend, cl->pend_cap * sizeof(*cl->pend));
    }
    cl->pend[cl->npend++] = e;
    e->next = cl->buckets[h & (cl->nbuckets - 1)];
    cl->buckets[h & (cl->nbuckets - 1)] = e;
    cl->ntopics++;
    if (cl->ntopics > cl->nbuckets)
        kr_cl_grow(cl);
    ck_pr_store_64(&cl->st.subjects, cl->ntopics);
    return e;
}

static void kr_cl_drop(struct kr_cluster *cl, struct kr_cl_topic *e)
{
    struct kr_cl_topic **pp = &cl->buckets[e->hash & (cl->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    if (e->sub) {
        natsSubscription_Unsubscribe(e->sub);
        natsSubscription_Destroy(e->sub);
    }
    free(e);
    cl->ntopics--;
    ck_pr_store_64(&cl->st.subjects, cl->ntopics);
}

/* Drop the topics whose linger ran out with no local subscriber back. */
static void kr_cl_lingers(struct kr_cluster *cl, uint64_t now)
{
    /* bounded per tick: a million topics leaving at once must not stall the link (its
     * heartbeats, the probes) nor flood its NATS server with unsubscribes */
    uint32_t drops = 0;
    while (cl->lq_n && drops < KR_CL_DROPS_PER_TICK) {
        struct kr_cl_topic *e = cl->lq[cl->lq_head];
        if (!e->shard_on && e->linger_until_ms > now)
            break; /* deadlines are in append order */
        cl->lq_head = (cl->lq_head + 1) % cl->lq_cap;
        cl->lq_n--;
        e->in_lq = false;
        if (e->shard_on)
            continue;
        if (e->since_us == 0) { /* its probe is still out: look again later */
            kr_cl_linger(cl, e);
            continue;
        }
        kr_cl_drop(cl, e);
        drops++;
    }
}

/* ---------------------------------------------------------------- towards the net threads */

/* Answer a subscribe request's barrier. */
static void kr_cl_answer(struct kr_cluster *cl, struct kr_event *req)
{
    struct kr_router_cmd *c = req->ptr;
    uint64_t not_found = 0;
    if (req->type == KR_EV_RETRO_SUBSCRIBE) {
        uint32_t pos = 0, len;
        const char *t;
        while (!not_found && kr_router_cmd_next(c, &pos, &t, &len)) {
            struct kr_cl_topic *e = kr_cl_find(cl, t, len, kr_topic_hash(t, len));
            not_found = !e || e->since_us == 0 || e->since_us > c->horizon_us;
        }
    }
    struct kr_event ack = {.type = KR_EV_ACK, .src = (uint16_t)cl->o.ctl_idx, .aux = req->type,
                           .conn = req->conn, .ptr = c, .mask = not_found};
    kr_outbox_push(&cl->outbox, KR_CONN_NET(req->conn), &ack);
}

/* ---------------------------------------------------------------- probes and peers */

/* Publish the probe in flight (again after a reconnect: libnats sent the subscriptions
 * again first, so it still follows them). */
static void kr_cl_publish_probe(struct kr_cluster *cl)
{
    cl->probe_sent_ms = kr_cl_now_ms();
    if (cl->npeers == 0 || !cl->connected)
        return; /* completed by kr_cl_probe_check (no one to ask), or sent on reconnect */
    char body[32];
    size_t bl = kr_cl_ctl_encode(body, 'P', cl->origin, cl->probe_sent);
    natsConnection_Publish(cl->nc, cl->subj_probe, body, (int)bl);
}

static void kr_cl_send_probe(struct kr_cluster *cl)
{
    cl->need_probe = false;
    cl->probe_sent++;
    kr_cl_publish_probe(cl);
}

/* The probe in flight is complete once every node known when it was sent answered it (a
 * node that left since does not count). Then its topics are in force, and the requests
 * that waited for it are answered. */
static void kr_cl_probe_check(struct kr_cluster *cl)
{
    uint64_t now = kr_cl_now_ms();
    if (cl->probe_done == cl->probe_sent) {
        if (cl->need_probe)
            kr_cl_send_probe(cl);
        if (cl->probe_done == cl->probe_sent)
            return;
    }
    /* nodes learn of each other by heartbeats: until one period (and some) has passed since
     * the start, a node may not know every other yet */
    if (!cl->connected || now - cl->start_ms < KR_CL_HB_MS + 500)
        return;
    bool complete = true;
    for (uint32_t i = 0; i < cl->npeers && complete; i++)
        if (cl->peers[i].first_ms <= cl->probe_sent_ms && cl->peers[i].acked < cl->probe_sent)
            complete = false;
    if (!complete && now >= cl->probe_sent_ms + KR_CL_PROBE_TIMEOUT_MS) {
        KR_CL_INC(cl, barrier_timeouts, 1);
        uint64_t suppressed = 0;
        static struct kr_log_ratelimit rl;
        if (kr_log_enabled(KR_LOG_WARN) && kr_log_ratelimit(&rl, 10, 10000, &suppressed))
            KR_WARN("cluster: a node did not answer probe %llu within %d ms; its NATS server "
                    "may not hold the new interest yet (suppressed %llu similar)",
                    (unsigned long long)cl->probe_sent, KR_CL_PROBE_TIMEOUT_MS,
                    (unsigned long long)suppressed);
        complete = true;
    }
    if (!complete)
        return;
    cl->probe_done = cl->probe_sent;
    uint64_t now_us = kr_msg_clock_us();
    size_t keep = 0;
    for (size_t i = 0; i < cl->npend; i++) {
        struct kr_cl_topic *e = cl->pend[i];
        if (e->probe <= cl->probe_done)
            e->since_us = now_us;
        else
            cl->pend[keep++] = e;
    }
    cl->npend = keep;
    keep = 0;
    for (size_t i = 0; i < cl->nwaits; i++) {
        struct kr_cl_wait *w = &cl->waits[i];
        if (w->probe <= cl->probe_done) {
            KR_CL_INC(cl, barrier_time, (now - w->since_ms) * 1000);
            kr_cl_answer(cl, &w->ev);
        } else {
            cl->waits[keep++] = *w;
        }
    }
    cl->nwaits = keep;
    if (cl->need_probe)
        kr_cl_send_probe(cl);
}

static struct kr_cl_peer *kr_cl_peer(struct kr_cluster *cl, uint64_t origin, uint64_t now)
{
    for (uint32_t i = 0; i < cl->npeers; i++)
        if (cl->peers[i].origin == origin) {
            cl->peers[i].last_ms = now;
            return &cl->peers[i];
        }
    if (cl->npeers == cl->peers_cap) {
        cl->peers_cap = cl->peers_cap ? cl->peers_cap * 2 : 8;
        cl->peers = kr_xrealloc(cl->peers, cl->peers_cap * sizeof(*cl->peers));
    }
    struct kr_cl_peer *p = &cl->peers[cl->npeers++];
    memset(p, 0, sizeof(*p));
    p->origin = origin;
    p->first_ms = p->last_ms = now;
    snprintf(p->name, sizeof(p->name), "%016" PRIx64, origin);
    ck_pr_store_64(&cl->st.peers, cl->npeers);
    return p;
}

static void kr_cl_peers_expire(struct kr_cluster *cl, uint64_t now)
{
    for (uint32_t i = 0; i < cl->npeers;) {
        if (now > cl->peers[i].last_ms + KR_CL_PEER_DEAD_MS) {
            KR_WARN("cluster: node %s (%016" PRIx64 ") not heard from for %d ms: it left",
                    cl->peers[i].name, cl->peers[i].origin, KR_CL_PEER_DEAD_MS);
            cl->peers[i] = cl->peers[--cl->npeers];
        } else {
            i++;
        }
    }
    ck_pr_store_64(&cl->st.peers, cl->npeers);
}

/* ---------------------------------------------------------------- resyncs */

/* Tell every local subscriber of these topics (pairs as in a lost notice, or every held
 * topic when pairs is NULL) that it may have missed messages: KR_EV_RESYNC to the shards. */
static void kr_cl_resync(struct kr_cluster *cl, const char *pairs, size_t plen, uint32_t np)
{
    struct kr_router *r = cl->o.router;
    uint32_t nshards = kr_router_nshards(r);
    struct kr_router_cmd *cmds[64] = {0};
    uint64_t ntopics = 0;
    if (pairs) {
        struct kr_cl_body b = {.kind = 'L', .ntopics = np, .rest = pairs, .rest_len = plen};
        size_t pos = 0;
        const char *t;
        uint32_t len;
        while (kr_cl_next_topic(&b, &pos, &t, &len)) {
            if (!kr_cl_find(cl, t, len, kr_topic_hash(t, len)))
                continue; /* no local subscriber took it */
            uint32_t s = kr_router_shard_of(r, t, len);
            if (!cmds[s])
                cmds[s] = kr_router_cmd_new(256);
            cmds[s] = kr_router_cmd_add(cmds[s], t, len);
            ntopics++;
        }
    } else {
        for (size_t i = 0; i < cl->nbuckets; i++)
            for (struct kr_cl_topic *e = cl->buckets[i]; e; e = e->next) {
                uint32_t s = kr_router_shard_of_hash(r, e->hash);
                if (!cmds[s])
                    cmds[s] = kr_router_cmd_new(256);
                cmds[s] = kr_router_cmd_add(cmds[s], e->name, e->len);
                ntopics++;
            }
    }
    for (uint32_t s = 0; s < nshards; s++) {
        if (!cmds[s])
            continue;
        struct kr_event ev = {.type = KR_EV_RESYNC, .src = (uint16_t)cl->o.ctl_idx, .ptr = cmds[s]};
        /* on the link's own index: the delivery thread uses in_idx */
        while (!kr_router_send(r, cl->o.ctl_idx, s, &ev)) {
            kr_router_flush(r, cl->o.ctl_idx);
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
    kr_router_flush(r, cl->o.ctl_idx);
    KR_CL_INC(cl, resync_topics, ntopics);
}

static void kr_cl_lost_add(struct kr_cluster *cl, const char *t, uint32_t len)
{
    if (cl->lost_all)
        return;
    if (cl->lost_len + 4 + len > KR_CL_RECENT_BYTES) {
        /* a long outage: more lost topics than are worth listing (and repeats): the notice
         * becomes "every topic", and what is kept stays bounded */
        cl->lost_all = true;
        free(cl->lost);
        cl->lost = NULL;
        cl->lost_len = cl->lost_cap = 0;
        cl->lost_n = 0;
        return;
    }
    if (cl->lost_len + 4 + len > cl->lost_cap) {
        cl->lost_cap = (cl->lost_cap + 4 + len) * 2;
        cl->lost = kr_xrealloc(cl->lost, cl->lost_cap);
    }
    cl->lost_len += kr_cl_pair(cl->lost + cl->lost_len, t, len);
    cl->lost_n++;
}

/* After a reconnect: announce, by topic, the copies libnats refused meanwhile. */
static void kr_cl_lost_announce(struct kr_cluster *cl)
{
    if (!cl->connected)
        return;
    if (cl->lost_all) {
        char body[32];
        size_t bl = kr_cl_ctl_encode(body, 'R', cl->origin, 0);
        natsConnection_Publish(cl->nc, cl->subj_lost, body, (int)bl);
        KR_CL_INC(cl, resyncs_sent, 1);
        KR_WARN("cluster: forwards on more topics than are tracked may have been lost while "
                "the link was down; the other nodes were told to resync every subscriber");
        cl->lost_all = false;
        cl->lost_len = 0;
        cl->lost_n = 0;
        return;
    }
    if (!cl->lost_n)
        return;
    struct kr_cl_body b = {.kind = 'L', .ntopics = cl->lost_n, .rest = cl->lost,
                           .rest_len = cl->lost_len};
    char *buf = kr_xmalloc(KR_CL_LOST_HEADER + KR_CL_LOST_CHUNK + 4 + 65536);
    size_t pos = 0, used = 0;
    uint32_t n = 0;
    const char *t;
    uint32_t len;
    bool more = true;
    while (more) {
        more = kr_cl_next_topic(&b, &pos, &t, &len);
        if (more && len <= 65536) {
            used += kr_cl_pair(buf + KR_CL_LOST_HEADER + used, t, len);
            n++;
        }
        if (n && (!more || used >= KR_CL_LOST_CHUNK)) {
            kr_cl_lost_header(buf, cl->origin, n);
            natsConnection_Publish(cl->nc, cl->subj_lost, buf, (int)(KR_CL_LOST_HEADER + used));
            KR_CL_INC(cl, resyncs_sent, 1);
            used = 0;
            n = 0;
        }
    }
    free(buf);
    KR_WARN("cluster: forwards on %u topics may have been lost while the link was down; the "
            "other nodes were told by topic", cl->lost_n);
    cl->lost_len = 0;
    cl->lost_n = 0;
}

/* ---------------------------------------------------------------- the link thread */

static void kr_cl_recent_add(struct kr_cluster *cl, const char *t, uint32_t len, uint64_t h)
{
    struct kr_cl_recent *w = &cl->recent[cl->recent_cur];
    if (w->overflow)
        return;
    h |= 1; /* 0 marks an empty slot */
    uint32_t i = (uint32_t)h & (KR_CL_RECENT_SLOTS - 1);
    while (w->slots[i]) {
        if (w->slots[i] == h)
            return; /* already in (or a hash twin: announced with the other, harmless) */
        i = (i + 1) & (KR_CL_RECENT_SLOTS - 1);
    }
    if (w->n >= KR_CL_RECENT_SLOTS / 2 || w->len + 4 + len > KR_CL_RECENT_BYTES) {
        w->overflow = true;
        return;
    }
    w->slots[i] = h;
    w->n++;
    w->len += kr_cl_pair(w->pairs + w->len, t, len);
}

static void kr_cl_recent_clear(struct kr_cl_recent *w)
{
    if (w->n)
        memset(w->slots, 0, KR_CL_RECENT_SLOTS * sizeof(*w->slots));
    w->n = 0;
    w->len = 0;
    w->overflow = false;
}

/* Every half of KR_CL_RECENT_MS: the older window is forgotten and refilled. */
static void kr_cl_recent_rotate(struct kr_cluster *cl, uint64_t now)
{
    if (now < cl->recent_since_ms + KR_CL_RECENT_MS / 2)
        return;
    cl->recent_since_ms = now;
    cl->recent_cur ^= 1;
    kr_cl_recent_clear(&cl->recent[cl->recent_cur]);
}

/* The link lost its server: what it forwarded lately may not have reached the others. */
static void kr_cl_recent_lost(struct kr_cluster *cl)
{
    for (int k = 0; k < 2; k++) {
        struct kr_cl_recent *w = &cl->recent[k];
        if (w->overflow) {
            cl->lost_all = true;
        } else if (w->len) {
            struct kr_cl_body b = {.kind = 'L', .ntopics = w->n, .rest = w->pairs,
                                   .rest_len = w->len};
            size_t pos = 0;
            const char *t;
            uint32_t len;
            while (kr_cl_next_topic(&b, &pos, &t, &len))
                kr_cl_lost_add(cl, t, len);
        }
        kr_cl_recent_clear(w);
    }
}

static void kr_cl_forward(struct kr_cluster *cl, struct kr_msg *m)
{
    uint32_t ntopics = kr_msg_ntopics(m), plen;
    const char *payload = kr_msg_payload(m, &plen);
    size_t need = KR_CL_ENTRY_HEADER + (size_t)plen;
    for (uint32_t i = 0; i < ntopics; i++) {
        uint32_t l;
        kr_msg_topic(m, i, &l);
        need += 4 + l;
    }
    if (need > cl->ebuf_cap) {
        cl->ebuf_cap = need * 2;
        cl->ebuf = kr_xrealloc(cl->ebuf, cl->ebuf_cap);
    }
    /* the message holds its topics one by one: header, pairs, payload */
    kr_cl_entry_header(cl->ebuf, cl->origin, ++cl->seq, ntopics);
    char *p = cl->ebuf + KR_CL_ENTRY_HEADER;
    for (uint32_t i = 0; i < ntopics; i++) {
        uint32_t l;
        const char *t = kr_msg_topic(m, i, &l);
        p += kr_cl_pair(p, t, l);
    }
    memcpy(p, payload, plen);
    p += plen;
    for (uint32_t i = 0; i < ntopics; i++) {
        uint32_t l;
        const char *t = kr_msg_topic(m, i, &l);
        size_t sneed = kr_cl_subject_max(cl->prefix_len, l);
        if (sneed > cl->sbuf_cap) {
            cl->sbuf_cap = sneed;
            cl->sbuf = kr_xrealloc(cl->sbuf, sneed);
        }
        kr_cl_subject(cl->sbuf, cl->sbuf_cap, cl->prefix, t, l);
        kr_cl_recent_add(cl, t, l, kr_msg_topic_hash(m, i));
        natsStatus s = natsConnection_Publish(cl->nc, cl->sbuf, cl->ebuf, (int)(p - cl->ebuf));
        if (s != NATS_OK) {
            KR_CL_INC(cl, lost_forwards, 1);
            kr_cl_lost_add(cl, t, l);
        }
    }
    KR_CL_INC(cl, msgs_out, 1);
    KR_CL_INC(cl, copies_out, ntopics);
}

static void kr_cl_barrier(struct kr_cluster *cl, const struct kr_event *ev)
{
    struct kr_router_cmd *c = ev->ptr;
    uint64_t wait = 0;
    uint32_t pos = 0, len;
    const char *t;
    while (kr_router_cmd_next(c, &pos, &t, &len)) {
        struct kr_cl_topic *e = kr_cl_hold(cl, t, len);
        if (!e->shard_on)
            kr_cl_linger(cl, e); /* dropped later if its subscribe never lands */
        if (e->since_us == 0 && e->probe > wait)
            wait = e->probe;
    }
    /* Unlinked (a degraded start, a reconnect): the local subscription is in force and the
     * cluster's will be once linked; answered now rather than held for an unknown time.
     * Linking up resyncs every subscriber of a held topic (kr_cl_items), so what it may miss
     * meanwhile is never lost silently. A retroactive horizon is not covered (NOT_FOUND). */
    if (wait == 0 || !cl->connected) {
        kr_cl_answer(cl, (struct kr_event *)ev);
        return;
    }
    KR_CL_INC(cl, barriers, 1);
    if (cl->nwaits == cl->waits_cap) {
        cl->waits_cap = cl->waits_cap ? cl->waits_cap * 2 : 64;
        cl->waits = kr_xrealloc(cl->waits, cl->waits_cap * sizeof(*cl->waits));
    }
    cl->waits[cl->nwaits++] = (struct kr_cl_wait){.ev = *ev, .probe = wait,
                                                  .since_ms = kr_cl_now_ms()};
}

static void kr_cl_interest(struct kr_cluster *cl, struct kr_event *ev)
{
    struct kr_router_cmd *c = ev->ptr;
    uint32_t pos = 0, len;
    const char *t;
    while (kr_router_cmd_next(c, &pos, &t, &len)) {
        if (ev->mask) {
            struct kr_cl_topic *e = kr_cl_hold(cl, t, len);
            e->shard_on = true;
            e->linger_until_ms = 0;
        } else {
            struct kr_cl_topic *e = kr_cl_find(cl, t, len, kr_topic_hash(t, len));
            if (e) {
                e->shard_on = false;
                kr_cl_linger(cl, e);
            }
        }
    }
    free(c);
}

static void kr_cl_heartbeat(struct kr_cluster *cl, uint64_t now);

static void kr_cl_items(struct kr_cluster *cl, uint64_t now)
{
    pthread_mutex_lock(&cl->mu);
    struct kr_cl_item *it = cl->ihead;
    cl->ihead = cl->itail = NULL;
    pthread_mutex_unlock(&cl->mu);
    while (it) {
        struct kr_cl_item *next = it->next;
        switch (it->kind) {
        case 'H': {
            uint32_t before = cl->npeers;
            struct kr_cl_peer *p = kr_cl_peer(cl, it->origin, now);
            if (cl->npeers != before) { /* a new node: let it know this one at once */
                KR_INFO("cluster: node %.*s (%016" PRIx64 ") joined", (int)it->len, it->data,
                        it->origin);
                cl->last_hb_ms = 0;
                kr_cl_heartbeat(cl, now);
            }
            size_t nl = it->len < sizeof(p->name) - 1 ? it->len : sizeof(p->name) - 1;
            memcpy(p->name, it->data, nl);
            p->name[nl] = 0;
            break;
        }
        case 'h':
            kr_cl_peer(cl, it->origin, now);
            break;
        case 'A': {
            struct kr_cl_peer *p = kr_cl_peer(cl, it->origin, now);
            if (it->seq > p->acked)
                p->acked = it->seq;
            break;
        }
        case 'R':
            KR_CL_INC(cl, resyncs_received, 1);
            KR_WARN("cluster: node %016" PRIx64 " may have lost forwards on any topic; every "
                    "local subscriber of a held topic is told to resync", it->origin);
            kr_cl_peer(cl, it->origin, now);
            kr_cl_resync(cl, NULL, 0, 0);
            break;
        case 'L':
            KR_CL_INC(cl, resyncs_received, 1);
            KR_WARN("cluster: node %016" PRIx64 " lost forwards on %llu topics; their local "
                    "subscribers are told to resync", it->origin, (unsigned long long)it->seq);
            kr_cl_peer(cl, it->origin, now);
            kr_cl_resync(cl, it->data, it->len, (uint32_t)it->seq);
            break;
        case 'S': {
            char topic[4096];
            uint32_t tl;
            if (kr_cl_subject_topic(it->data, cl->prefix, topic, sizeof(topic), &tl) != 0)
                break; /* a control subject: unbounded, cannot be it */
            KR_CL_INC(cl, slow_consumers, 1);
            uint64_t suppressed = 0;
            static struct kr_log_ratelimit rl;
            if (kr_log_enabled(KR_LOG_WARN) && kr_log_ratelimit(&rl, 10, 10000, &suppressed))
                KR_WARN("cluster: topic %.*s: more than cluster_max_pending entries from the "
                        "cluster waited for the shards; the cluster dropped some and its "
                        "subscribers are told to resync (suppressed %llu similar)",
                        (int)(tl > 200 ? 200 : tl), topic, (unsigned long long)suppressed);
            struct kr_cl_topic *e = kr_cl_find(cl, topic, tl, kr_topic_hash(topic, tl));
            if (e && e->since_us)
                e->since_us = kr_msg_clock_us(); /* coverage restarts: retro NOT_FOUND */
            char pair[4096 + 4];
            size_t pl = kr_cl_pair(pair, topic, tl);
            kr_cl_resync(cl, pair, pl, 1);
            break;
        }
        case 'd':
            kr_cl_recent_lost(cl); /* announced once linked again */
            cl->connected = false;
            ck_pr_store_64(&cl->st.connected, 0);
            KR_WARN("cluster: disconnected from the NATS server; reconnecting");
            break;
        case 'c':
        case 'r': {
            bool re = it->kind == 'r';
            cl->connected = true;
            ck_pr_store_64(&cl->st.connected, 1);
            char url[128] = "";
            natsConnection_GetConnectedUrl(cl->nc, url, sizeof(url));
            if (re || cl->ntopics) { /* linked after a time unlinked: resync */
                if (re)
                    KR_CL_INC(cl, reconnects, 1);
                KR_WARN("cluster: %s %s; local subscribers of the %zu topics held may have "
                        "missed messages and are told to resync",
                        re ? "reconnected to" : "linked up with", url, cl->ntopics);
                /* coverage restarts now: older retroactive horizons answer NOT_FOUND */
                uint64_t now_us = kr_msg_clock_us();
                for (size_t i = 0; i < cl->nbuckets; i++)
                    for (struct kr_cl_topic *e = cl->buckets[i]; e; e = e->next)
                        if (e->since_us)
                            e->since_us = now_us;
                kr_cl_resync(cl, NULL, 0, 0);
                kr_cl_lost_announce(cl);
            } else {
                KR_INFO("cluster: connected to %s", url);
            }
            if (cl->probe_done != cl->probe_sent) /* the probe in flight, again */
                kr_cl_publish_probe(cl);
            break;
        }
        default:
            break;
        }
        free(it);
        it = next;
    }
}

static void kr_cl_heartbeat(struct kr_cluster *cl, uint64_t now)
{
    if (!cl->connected || now - cl->last_hb_ms < KR_CL_HB_MS)
        return;
    cl->last_hb_ms = now;
    char body[96];
    size_t bl = kr_cl_hb_encode(body, sizeof(body), cl->origin, cl->name);
    natsConnection_Publish(cl->nc, cl->subj_hb, body, (int)bl);
}

/* One pass over everything that arrived. */
static void kr_cl_run(struct kr_cluster *cl)
{
    uint64_t now = kr_cl_now_ms();
    kr_cl_items(cl, now);
    struct kr_router *r = cl->o.router;
    uint32_t nshards = kr_router_nshards(r), budget = KR_CL_BATCH;
    struct kr_event ev;
    for (uint32_t s = 0; s < nshards; s++) {
        while (budget && kr_router_recv(r, cl->o.ctl_idx, s, &ev)) {
            budget--;
            switch (ev.type) {
            case KR_EV_INTEREST:
                budget -= budget > ((struct kr_router_cmd *)ev.ptr)->ntopics
                              ? ((struct kr_router_cmd *)ev.ptr)->ntopics
                              : budget;
                kr_cl_interest(cl, &ev);
                break;
            case KR_EV_FANOUT_WARN:
                KR_DEBUG("cluster: an entry from another node fanned out to %u clients", ev.aux);
                kr_msg_unref(ev.ptr);
                break;
            default:
                KR_ERROR("cluster: unexpected event %u from shard %u", ev.type, s);
                abort();
            }
        }
    }
    for (uint32_t n = 0; n < cl->o.nnet; n++) {
        while (budget && kr_mailbox_pop(cl->in[n], &ev)) {
            budget--;
            if (ev.type == KR_EV_PUBLISH) {
                kr_cl_forward(cl, ev.ptr);
                kr_msg_unref(ev.ptr);
            } else {
                uint32_t nt = ((struct kr_router_cmd *)ev.ptr)->ntopics;
                budget -= budget > nt ? nt : budget;
                kr_cl_barrier(cl, &ev);
            }
        }
    }
    kr_cl_probe_check(cl);
    kr_outbox_unpark(&cl->outbox);
    kr_outbox_wake(&cl->outbox);
    if (!budget)
        uv_async_send(&cl->wake);
}

static void kr_cl_wake_cb(uv_async_t *a)
{
    struct kr_cluster *cl = a->data;
    if (ck_pr_load_int(&cl->stopping)) {
        uv_stop(&cl->loop);
        return;
    }
    kr_cl_run(cl);
}

static void kr_cl_tick_cb(uv_timer_t *t)
{
    struct kr_cluster *cl = t->data;
    uint64_t now = kr_cl_now_ms();
    kr_cl_peers_expire(cl, now);
    kr_cl_heartbeat(cl, now);
    kr_cl_lingers(cl, now);
    kr_cl_recent_rotate(cl, now);
    kr_cl_run(cl);
}

static void kr_cl_main(void *arg)
{
    struct kr_cluster *cl = arg;
    pthread_setname_np(pthread_self(), "kr-cluster");
    uv_run(&cl->loop, UV_RUN_DEFAULT);
}

/* ---------------------------------------------------------------- lifecycle */

static void kr_cl_set_err(char *err, size_t errlen, const char *what, natsStatus s)
{
    snprintf(err, errlen, "cluster: %s: %s", what, natsStatus_GetText(s));
}

static int kr_cl_options(struct kr_cluster *cl, char *err, size_t errlen)
{
    const struct kr_cfg *cfg = cl->cfg;
    natsStatus s = natsOptions_Create(&cl->nopts);
    if (s != NATS_OK) {
        kr_cl_set_err(err, errlen, "options", s);
        return -ENOMEM;
    }
    /* the server list: comma or space separated */
    char list[KR_CFG_STR_MAX];
    snprintf(list, sizeof(list), "%s", cfg->cluster_nats_url);
    const char *urls[64];
    int nurls = 0;
    for (char *save = NULL, *tok = strtok_r(list, ", ", &save); tok && nurls < 64;
         tok = strtok_r(NULL, ", ", &save))
        urls[nurls++] = tok;
    if (nurls == 0) {
        snprintf(err, errlen, "cluster: cluster_nats_url names no server");
        return -EINVAL;
    }
    s = natsOptions_SetServers(cl->nopts, urls, nurls);
    if (s == NATS_OK)
        s = natsOptions_SetName(cl->nopts, cl->name);
    if (s == NATS_OK)
        s = natsOptions_SetNoEcho(cl->nopts, true);
    if (s == NATS_OK) /* the first reachable server of the list, in order: the operator's */
        s = natsOptions_SetNoRandomize(cl->nopts, true);
    if (s == NATS_OK) /* only the servers listed, not those the cluster advertises */
        s = natsOptions_SetIgnoreDiscoveredServers(cl->nopts, true);
    if (s == NATS_OK)
        s = natsOptions_UseGlobalMessageDelivery(cl->nopts, true);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(cl->nopts, -1); /* forever */
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(cl->nopts, 250);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectBufSize(cl->nopts, (int)cfg->cluster_reconnect_buf_bytes);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(cl->nopts, 5000); /* a silent server: 4 pings */
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(cl->nopts, 4);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(cl->nopts, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(cl->nopts, kr_cl_disconnected_cb, cl);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(cl->nopts, kr_cl_reconnected_cb, cl);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(cl->nopts, kr_cl_error_cb, cl);
    if (s == NATS_OK && (cfg->cluster_user[0] || cfg->cluster_password[0]))
        s = natsOptions_SetUserInfo(cl->nopts, cfg->cluster_user, cfg->cluster_password);
    if (s == NATS_OK && cfg->cluster_token[0])
        s = natsOptions_SetToken(cl->nopts, cfg->cluster_token);
    if (s == NATS_OK && cfg->cluster_creds_file[0])
        s = natsOptions_SetUserCredentialsFromFiles(cl->nopts, cfg->cluster_creds_file, NULL);
    if (s == NATS_OK && cfg->cluster_tls)
        s = natsOptions_SetSecure(cl->nopts, true);
    if (s == NATS_OK && cfg->cluster_tls_ca_file[0])
        s = natsOptions_LoadCATrustedCertificates(cl->nopts, cfg->cluster_tls_ca_file);
    if (s == NATS_OK && cfg->cluster_tls_cert_file[0])
        s = natsOptions_LoadCertificatesChain(cl->nopts, cfg->cluster_tls_cert_file,
                                              cfg->cluster_tls_key_file);
    if (s == NATS_OK && cfg->cluster_start_degraded)
        s = natsOptions_SetRetryOnFailedConnect(cl->nopts, true, kr_cl_connected_cb, cl);
    if (s != NATS_OK) {
        snprintf(err, errlen, "cluster: NATS options: %s (%s)", natsStatus_GetText(s),
                 nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
        return -EINVAL;
    }
    return 0;
}

static uint64_t kr_cl_random64(void)
{
    uint64_t v = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&v, sizeof(v), 1, f) != 1)
            v = 0;
        fclose(f);
    }
    if (v == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16);
    }
    return v ? v : 1;
}

int kr_cluster_create(const struct kr_cluster_opts *o, struct kr_cluster **out, char *err,
                      size_t errlen)
{
    struct kr_cluster *cl = kr_xcalloc(1, sizeof(*cl));
    cl->o = *o;
    cl->cfg = o->cfg;
    snprintf(cl->prefix, sizeof(cl->prefix), "%s", o->cfg->cluster_subject_prefix);
    cl->prefix_len = strlen(cl->prefix);
    if (o->cfg->cluster_node_name[0]) {
        snprintf(cl->name, sizeof(cl->name), "%.63s", o->cfg->cluster_node_name);
    } else {
        char host[48] = "kraken";
        gethostname(host, sizeof(host) - 1);
        snprintf(cl->name, sizeof(cl->name), "%s:%u", host, o->client_port);
    }
    cl->origin = kr_cl_random64();
    cl->pub_id = kr_conn_id_make(o->ctl_idx, 0, 0);
    snprintf(cl->subj_hb, sizeof(cl->subj_hb), "%s.ctl.hb", cl->prefix);
    snprintf(cl->subj_probe, sizeof(cl->subj_probe), "%s.ctl.probe", cl->prefix);
    snprintf(cl->subj_lost, sizeof(cl->subj_lost), "%s.ctl.lost", cl->prefix);
    snprintf(cl->subj_self, sizeof(cl->subj_self), "%s.node.%016" PRIx64, cl->prefix, cl->origin);
    pthread_mutex_init(&cl->mu, NULL);
    cl->nbuckets = 1024;
    cl->buckets = kr_xcalloc(cl->nbuckets, sizeof(*cl->buckets));
    uint32_t cap = o->mailbox_capacity ? o->mailbox_capacity : 8192;
    cl->in = kr_xcalloc(o->nnet, sizeof(*cl->in));
    cl->out = kr_xcalloc(o->nnet, sizeof(*cl->out));
    cl->in_dirty = kr_xcalloc(o->nnet, 64); /* one cache line each */
    for (uint32_t n = 0; n < o->nnet; n++) {
        cl->in[n] = kr_mailbox_create(cap);
        cl->out[n] = kr_mailbox_create(cap);
    }
    cl->out_sink = (struct kr_outbox_sink){.ndest = o->nnet, .mb = cl->out, .wake = o->wake_net,
                                           .arg = o->wake_arg};
    kr_outbox_init(&cl->outbox, &cl->out_sink, KR_OUTBOX_PER_DEST);
    for (int k = 0; k < 2; k++) {
        cl->recent[k].slots = kr_xcalloc(KR_CL_RECENT_SLOTS, sizeof(uint64_t));
        cl->recent[k].pairs = kr_xmalloc(KR_CL_RECENT_BYTES);
    }
    uv_loop_init(&cl->loop);
    uv_async_init(&cl->loop, &cl->wake, kr_cl_wake_cb);
    cl->wake.data = cl;
    uv_timer_init(&cl->loop, &cl->tick);
    cl->tick.data = cl;
    *out = cl;

    /* one delivery thread for every subscription: a fixed, known producer on in_idx */
    natsStatus s = nats_Open(-1);
    if (s == NATS_OK)
        s = nats_SetMessageDeliveryPoolSize(1);
    if (s != NATS_OK) {
        kr_cl_set_err(err, errlen, "library", s);
        return -EINVAL;
    }
    int rc = kr_cl_options(cl, err, errlen);
    if (rc < 0)
        return rc;
    s = natsConnection_Connect(&cl->nc, cl->nopts);
    if (s == NATS_NOT_YET_CONNECTED) {
        KR_WARN("cluster: no NATS server of %s answers; starting degraded (local clients "
                "only) and retrying", o->cfg->cluster_nats_url);
    } else if (s != NATS_OK) {
        const char *why = nats_GetLastError(NULL);
        snprintf(err, errlen, "cluster: cannot reach any NATS server of %s: %s%s%s (set "
                 "cluster_start_degraded = 1 to start without it)",
                 o->cfg->cluster_nats_url, natsStatus_GetText(s), why ? ": " : "", why ? why : "");
        return -ECONNREFUSED;
    } else {
        cl->connected = true;
        ck_pr_store_64(&cl->st.connected, 1);
    }
    const char *subs[4] = {cl->subj_hb, cl->subj_probe, cl->subj_lost, cl->subj_self};
    for (int i = 0; i < 4; i++) {
        s = natsConnection_Subscribe(&cl->ctl_subs[i], cl->nc, subs[i], kr_cl_on_ctl, cl);
        if (s != NATS_OK) {
            kr_cl_set_err(err, errlen, "control subscription", s);
            return -EIO;
        }
        natsSubscription_SetPendingLimits(cl->ctl_subs[i], -1, -1);
    }
    char url[128] = "";
    if (cl->connected)
        natsConnection_GetConnectedUrl(cl->nc, url, sizeof(url));
    KR_INFO("cluster: node %s (origin %016" PRIx64 ") %s%s, subjects %s.*", cl->name, cl->origin,
            cl->connected ? "connected to " : "not connected yet", url, cl->prefix);
    return 0;
}

int kr_cluster_start(struct kr_cluster *cl)
{
    cl->start_ms = kr_cl_now_ms();
    uv_timer_start(&cl->tick, kr_cl_tick_cb, KR_CL_TICK_MS, KR_CL_TICK_MS);
    int rc = uv_thread_create(&cl->thread, kr_cl_main, cl);
    if (rc < 0)
        return rc;
    cl->started = true;
    /* say hello at once: nodes learn of each other before the first barrier */
    kr_cluster_wake(cl);
    return 0;
}

void kr_cluster_stop(struct kr_cluster *cl)
{
    if (!cl)
        return;
    ck_pr_store_int(&cl->stopping, 1);
    if (cl->started) {
        uv_async_send(&cl->wake);
        uv_thread_join(&cl->thread);
        cl->started = false;
    }
    /* Drain: libnats unsubscribes, hands what its delivery thread still holds to the
     * callbacks (which drop it now), then closes; a plain close would leave those messages
     * in the delivery pool's queue. Bounded; then closed in any case. */
    if (cl->nc && natsConnection_Status(cl->nc) == NATS_CONN_STATUS_CONNECTED &&
        natsConnection_DrainTimeout(cl->nc, 3000) == NATS_OK) {
        for (int i = 0; i < 400 && natsConnection_Status(cl->nc) != NATS_CONN_STATUS_CLOSED; i++) {
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    }
    if (cl->nc)
        natsConnection_Close(cl->nc);
    for (int i = 0; i < 4; i++)
        if (cl->ctl_subs[i]) {
            natsSubscription_Destroy(cl->ctl_subs[i]);
            cl->ctl_subs[i] = NULL;
        }
    for (size_t i = 0; i < cl->nbuckets; i++)
        for (struct kr_cl_topic *e = cl->buckets[i]; e; e = e->next)
            if (e->sub) {
                natsSubscription_Destroy(e->sub);
                e->sub = NULL;
            }
    if (cl->nc) {
        natsConnection_Destroy(cl->nc);
        cl->nc = NULL;
    }
    nats_CloseAndWait(2000); /* the library's threads, the delivery pool among them */
}

static void kr_cl_release(struct kr_event *ev)
{
    if (ev->type == KR_EV_PUBLISH)
        kr_msg_unref(ev->ptr);
    else
        free(ev->ptr);
}

static void kr_cl_release_parked(void *arg, uint32_t net, struct kr_event *ev)
{
    (void)arg;
    (void)net;
    kr_cl_release(ev);
}

static void kr_cl_close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void kr_cluster_destroy(struct kr_cluster *cl)
{
    if (!cl)
        return;
    struct kr_event ev;
    for (uint32_t n = 0; n < cl->o.nnet; n++) {
        while (kr_mailbox_pop(cl->in[n], &ev))
            kr_cl_release(&ev);
        while (kr_mailbox_pop(cl->out[n], &ev))
            kr_cl_release(&ev);
    }
    kr_outbox_destroy(&cl->outbox, kr_cl_release_parked, NULL);
    for (uint32_t n = 0; n < cl->o.nnet; n++) {
        kr_mailbox_destroy(cl->in[n]);
        kr_mailbox_destroy(cl->out[n]);
    }
    for (size_t i = 0; i < cl->nwaits; i++)
        free(cl->waits[i].ev.ptr);
    for (size_t i = 0; i < cl->nbuckets; i++) {
        struct kr_cl_topic *e = cl->buckets[i];
        while (e) {
            struct kr_cl_topic *next = e->next;
            free(e);
            e = next;
        }
    }
    struct kr_cl_item *it = cl->ihead;
    while (it) {
        struct kr_cl_item *next = it->next;
        free(it);
        it = next;
    }
    uv_walk(&cl->loop, kr_cl_close_walk, NULL);
    uv_run(&cl->loop, UV_RUN_DEFAULT);
    uv_loop_close(&cl->loop);
    if (cl->nopts)
        natsOptions_Destroy(cl->nopts);
    pthread_mutex_destroy(&cl->mu);
    free(cl->in);
    free(cl->out);
    free(cl->in_dirty);
    free(cl->buckets);
    free(cl->lq);
    free(cl->pend);
    free(cl->waits);
    free(cl->peers);
    free(cl->ebuf);
    free(cl->sbuf);
    free(cl->lost);
    for (int k = 0; k < 2; k++) {
        free(cl->recent[k].slots);
        free(cl->recent[k].pairs);
    }
    free(cl->d_topics);
    free(cl->d_lens);
    free(cl->d_hashes);
    free(cl);
}

/* ---------------------------------------------------------------- the net threads' side */

void kr_cluster_wake(struct kr_cluster *cl)
{
    uv_async_send(&cl->wake);
}

bool kr_cluster_send(struct kr_cluster *cl, uint32_t net, const struct kr_event *ev)
{
    if (!kr_mailbox_push(cl->in[net], ev))
        return false;
    cl->in_dirty[(size_t)net * 64] = 1;
    return true;
}

void kr_cluster_flush(struct kr_cluster *cl, uint32_t net)
{
    if (cl->in_dirty[(size_t)net * 64]) {
        cl->in_dirty[(size_t)net * 64] = 0;
        uv_async_send(&cl->wake);
    }
}

bool kr_cluster_recv(struct kr_cluster *cl, uint32_t net, struct kr_event *ev)
{
    return kr_mailbox_pop(cl->out[net], ev);
}

uint64_t kr_cluster_publisher(const struct kr_cluster *cl)
{
    return cl->pub_id;
}

void kr_cluster_stats(struct kr_cluster *cl, struct kr_cluster_stats *out)
{
    memset(out, 0, sizeof(*out));
    const struct kr_cl_counters *c = &cl->st;
    out->connected = ck_pr_load_64((uint64_t *)&c->connected) != 0;
    if (out->connected && cl->nc)
        natsConnection_GetConnectedUrl(cl->nc, out->server, sizeof(out->server));
    snprintf(out->node, sizeof(out->node), "%s", cl->name);
    out->origin = cl->origin;
#define KR_CL_LOAD(name, kind, micro, help) out->name = ck_pr_load_64((uint64_t *)&c->name);
    KR_CLUSTER_COUNTERS(KR_CL_LOAD)
#undef KR_CL_LOAD
}
