/* The protocol-independent operations a frontend runs for its requests: subscribe,
 * unsubscribe, retroactive subscribe, publish, register. They talk to the router shards
 * (through kr_conn_send) and queue the replies that wait on them (kr_rq_push), which the
 * frontend formats (kr_frontend.reply). Net thread only. */
#include "kr_net_int.h"

#include <assert.h>
#include <string.h>

void kr_nt_args(struct kr_nt *nt, uint32_t n)
{
    if (n > nt->args_cap) {
        nt->args_cap = n;
        nt->args = kr_xrealloc(nt->args, n * sizeof(*nt->args));
        nt->arg_lens = kr_xrealloc(nt->arg_lens, n * sizeof(*nt->arg_lens));
    }
}

/* A reply that needs nothing from the shards: now, or in order behind those that wait. */
static void kr_cmd_done(struct kr_conn *c, bool noreply)
{
    if (c->rq_count)
        kr_rq_push(c, 0, noreply, false, false);
    else if (!noreply)
        c->fe->reply(c, KR_REPLY_DONE);
}

/* Split the topics by owning shard, send one command to each, and answer once every shard
 * acknowledged. */
void kr_cmd_subscribe(struct kr_conn *c, uint16_t type, uint64_t horizon, uint32_t n,
                      const char *const *topics, const uint32_t *lens, bool noreply)
{
    struct kr_nt *nt = c->nt;
    struct kr_server *srv = nt->srv;
    if (type == KR_EV_RETRO_SUBSCRIBE) {
        KR_ST_INC(nt, retro_requests, 1);
    } else if (type == KR_EV_SUBSCRIBE && c->horizon_us) {
        /* the first subscribe after `register` is retroactive */
        type = KR_EV_RETRO_SUBSCRIBE;
        horizon = c->horizon_us;
        c->horizon_us = 0;
        KR_ST_INC(nt, retro_requests, 1);
    }
    if (type == KR_EV_RETRO_SUBSCRIBE && horizon > kr_msg_clock_us()) {
        /* clock skew between app servers: a horizon in the future is taken as now (the live
         * fanout skips messages older than the horizon, so it would deliver nothing) */
        horizon = kr_msg_clock_us();
        KR_ST_INC(nt, retro_future_horizons, 1);
    }
    if (type == KR_EV_UNSUBSCRIBE)
        KR_ST_INC(nt, unsubscribe_requests, 1);
    else
        KR_ST_INC(nt, subscribe_requests, 1);
    if (n == 0) {
        kr_cmd_done(c, noreply);
        return;
    }
    uint32_t nshards = kr_router_nshards(srv->router);
    struct kr_router_cmd *cmds[64] = {0}; /* num_router_shards is at most 64 */
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += lens[i] + 1;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = kr_router_shard_of(srv->router, topics[i], lens[i]);
        if (!cmds[s]) {
            cmds[s] = kr_router_cmd_new((uint32_t)(total / nshards + 64));
            cmds[s]->horizon_us = horizon;
        }
        cmds[s] = kr_router_cmd_add(cmds[s], topics[i], lens[i]);
    }
    uint32_t acks = 0;
    for (uint32_t s = 0; s < nshards; s++)
        acks += cmds[s] != NULL;
    /* in a cluster, a subscribe is answered once the cluster holds its interest too: the
     * link's barrier is one more acknowledgement, with every topic of the request */
    struct kr_router_cmd *barrier = NULL;
    if (srv->cluster && type != KR_EV_UNSUBSCRIBE) {
        barrier = kr_router_cmd_new((uint32_t)(total + 4 * n + 16));
        barrier->horizon_us = horizon;
        for (uint32_t i = 0; i < n; i++)
            barrier = kr_router_cmd_add(barrier, topics[i], lens[i]);
        acks++;
    }
    bool retro = type == KR_EV_RETRO_SUBSCRIBE;
    uint32_t reqno = kr_rq_push(c, acks, noreply, retro, false);
    for (uint32_t s = 0; s < nshards; s++) {
        if (!cmds[s])
            continue;
        cmds[s]->pad = reqno; /* comes back in the ACK */
        struct kr_event ev = {.type = type, .src = (uint16_t)nt->idx, .conn = c->id, .ptr = cmds[s]};
        kr_conn_send(c, s, &ev);
    }
    if (barrier) {
        barrier->pad = reqno;
        struct kr_event ev = {.type = type, .src = (uint16_t)nt->idx, .conn = c->id, .ptr = barrier};
        kr_conn_send(c, KR_DEST_LINK, &ev);
    }
    if (type != KR_EV_UNSUBSCRIBE)
        c->subscribed = true;
    if (retro)
        kr_dlv_retro_begin(&c->dlv);
}

void kr_cmd_publish(struct kr_conn *c, uint32_t ntopics, const char *const *topics,
                    const uint32_t *lens, const char *payload, uint32_t payload_len)
{
    struct kr_nt *nt = c->nt;
    struct kr_server *srv = nt->srv;
    struct kr_router *r = srv->router;

    if (ntopics > nt->topics_cap) {
        nt->topics_cap = ntopics;
        nt->topics = kr_xrealloc(nt->topics, ntopics * sizeof(*nt->topics));
        nt->topic_lens = kr_xrealloc(nt->topic_lens, ntopics * sizeof(*nt->topic_lens));
        nt->topic_hashes = kr_xrealloc(nt->topic_hashes, ntopics * sizeof(*nt->topic_hashes));
    }
    /* Collect the topics, dropping repeats (a subscriber lists each matched topic once).
     * Each topic is hashed once here: the hash picks its shard, compares repeats cheaply,
     * and travels in the message for the shard's table lookup. */
    uint32_t n = 0;
    for (uint32_t k = 0; k < ntopics; k++) {
        const char *t = topics[k];
        uint32_t len = lens[k];
        uint64_t h = kr_topic_hash(t, len);
        bool dup = false;
        for (uint32_t i = 0; i < n && !dup; i++)
            dup = nt->topic_hashes[i] == h && nt->topic_lens[i] == len &&
                  memcmp(nt->topics[i], t, len) == 0;
        if (!dup) {
            nt->topics[n] = t;
            nt->topic_lens[n] = len;
            nt->topic_hashes[n] = h;
            n++;
        }
    }
    const struct kr_net_live *lv = &nt->live;
    if (n >= lv->topics_warn && lv->topics_warn) {
        KR_ST_INC(nt, publish_topic_warnings, 1);
        uint64_t suppressed = 0;
        if (kr_log_enabled(KR_LOG_WARN) &&
            kr_log_ratelimit(&nt->rl_topics, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed)) {
            KR_WARN("publish to %u topics from %s (id %llu), first topics: %.*s%s%.*s%s%.*s "
                    "(suppressed %llu similar)",
                    n, c->peer, (unsigned long long)c->id, (int)nt->topic_lens[0], nt->topics[0],
                    n > 1 ? " " : "", n > 1 ? (int)nt->topic_lens[1] : 0, n > 1 ? nt->topics[1] : "",
                    n > 2 ? " " : "", n > 2 ? (int)nt->topic_lens[2] : 0, n > 2 ? nt->topics[2] : "",
                    (unsigned long long)suppressed);
        }
    }
    KR_ST_INC(nt, messages_published, 1);
    if (n == 0)
        return;

    /* Which shards own these topics. */
    uint32_t nshards = kr_router_nshards(r);
    assert(nshards <= 64); /* num_router_shards is at most 64: one word holds the set */
    uint64_t shardset = 0;
    uint32_t involved = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = kr_router_shard_of_hash(r, nt->topic_hashes[i]);
        if (!(shardset & (UINT64_C(1) << s))) {
            shardset |= UINT64_C(1) << s;
            involved++;
        }
    }
    /* each entry gets its own time: it orders one publisher's messages for subscribers */
    struct kr_msg *m = kr_msg_create_hashed(c->id, kr_msg_clock_us(), n, nt->topics,
                                            nt->topic_lens, nt->topic_hashes, payload,
                                            payload_len,
                                            involved > 1 ? srv->nnet : 0);
    kr_msg_set_nshards(m, involved);
    if (involved > 1 || srv->cluster)
        kr_msg_ref(m, involved - 1 + (srv->cluster != NULL));
    for (uint32_t s = 0; s < nshards; s++) {
        if (!((shardset >> s) & 1))
            continue;
        struct kr_event ev = {.type = KR_EV_PUBLISH, .src = (uint16_t)nt->idx, .conn = c->id, .ptr = m};
        kr_conn_send(c, s, &ev);
    }
    if (srv->cluster) { /* forwarded to the other nodes, after the local fanout's events */
        struct kr_event ev = {.type = KR_EV_PUBLISH, .src = (uint16_t)nt->idx, .conn = c->id, .ptr = m};
        kr_conn_send(c, KR_DEST_LINK, &ev);
    }
}

void kr_cmd_published(struct kr_conn *c, bool noreply)
{
    if (c->nparked || c->rq_count)
        kr_rq_push(c, 0, noreply, false, c->nparked > 0);
    else if (!noreply)
        c->fe->reply(c, KR_REPLY_DONE);
}

void kr_cmd_register(struct kr_conn *c, bool noreply)
{
    KR_ST_INC(c->nt, register_requests, 1);
    c->horizon_us = kr_msg_clock_us();
    kr_cmd_done(c, noreply);
}
