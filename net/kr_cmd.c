/* The rule book: the protocol-independent operations every frontend's requests become
 * (subscribe, unsubscribe, retroactive subscribe, publish, register), with every
 * publish/subscribe rule applied here and nowhere else (kr_frontend.h lists them). They
 * talk to the router shards and the cluster link (kr_conn_send) and queue the replies that
 * wait on them (kr_rq_push), which the frontend formats (kr_frontend.reply). Net thread
 * only. */
#include "kr_net_int.h"
#include "kr_position.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------- the rules */

/* Reserved names a client may subscribe to (PROTOCOL.md, Continuity). */
static const char *const kr_cmd_defined[] = {"__kraken__:position", "__kraken__:resync"};

static bool kr_cmd_reserved(const char *t, uint32_t len)
{
    return len >= sizeof(KR_RESERVED_PREFIX) - 1 &&
           memcmp(t, KR_RESERVED_PREFIX, sizeof(KR_RESERVED_PREFIX) - 1) == 0;
}

static bool kr_cmd_defined_name(const char *t, uint32_t len)
{
    for (size_t i = 0; i < sizeof(kr_cmd_defined) / sizeof(kr_cmd_defined[0]); i++)
        if (strlen(kr_cmd_defined[i]) == len && memcmp(kr_cmd_defined[i], t, len) == 0)
            return true;
    return false;
}

/* One topic: 1..max_topic_bytes bytes, none a space, '\r', '\n' or NUL; a reserved name
 * only where `subscribe` allows a defined one. */
static int kr_cmd_topic(uint32_t max_topic_bytes, const char *t, uint32_t len, bool subscribe)
{
    if (len == 0 || len > max_topic_bytes)
        return KR_CMD_BAD_TOPIC;
    for (uint32_t i = 0; i < len; i++) {
        char ch = t[i];
        if (ch == ' ' || ch == '\r' || ch == '\n' || ch == 0)
            return KR_CMD_BAD_TOPIC;
    }
    if (kr_cmd_reserved(t, len) && !(subscribe && kr_cmd_defined_name(t, len)))
        return KR_CMD_RESERVED;
    return KR_CMD_OK;
}

/* Every topic of a list, and their total against max_request_bytes. */
static int kr_cmd_topics(const struct kr_cfg *cfg, uint32_t n, const char *const *topics,
                         const uint32_t *lens, uint64_t extra, bool subscribe)
{
    uint64_t total = extra;
    for (uint32_t i = 0; i < n; i++) {
        int rc = kr_cmd_topic(cfg->max_topic_bytes, topics[i], lens[i], subscribe);
        if (rc < 0)
            return rc;
        total += (uint64_t)lens[i] + 1;
    }
    return total > cfg->max_request_bytes ? KR_CMD_TOO_MANY : KR_CMD_OK;
}

int kr_cmd_sub_check(const struct kr_conn *c, const struct kr_cmd_sub *s)
{
    /* an unsubscribe names what it may have subscribed: the same rule */
    return kr_cmd_topics(c->nt->srv->cfg, s->n, s->topics, s->lens, 0, true);
}

int kr_cmd_entry_check(const struct kr_conn *c, const struct kr_cmd_entry *e)
{
    const struct kr_cfg *cfg = c->nt->srv->cfg;
    int rc = kr_cmd_topics(cfg, e->n, e->topics, e->lens, e->payload_len, false);
    if (rc < 0)
        return rc;
    return e->payload_len > cfg->max_message_bytes ? KR_CMD_TOO_LARGE : KR_CMD_OK;
}

const char *kr_cmd_refusal(const struct kr_conn *c, int rc, char *buf, size_t cap)
{
    const struct kr_cfg *cfg = c->nt->srv->cfg;
    switch (rc) {
    case KR_CMD_BAD_TOPIC:
        snprintf(buf, cap, "invalid channel name (Kraken channels are 1..max_topic_bytes %u "
                           "bytes without spaces or line breaks)", cfg->max_topic_bytes);
        break;
    case KR_CMD_RESERVED:
        snprintf(buf, cap, "reserved channel name (names beginning with %s are the server's; "
                           "only __kraken__:position and __kraken__:resync may be subscribed)",
                 KR_RESERVED_PREFIX);
        break;
    case KR_CMD_TOO_LARGE:
        snprintf(buf, cap, "message too large (max_message_bytes %llu)",
                 (unsigned long long)cfg->max_message_bytes);
        break;
    case KR_CMD_BAD_POSITION:
        snprintf(buf, cap, "bad position");
        break;
    case KR_CMD_TOO_MANY:
        snprintf(buf, cap, "too many topics in one request (max_request_bytes %llu)",
                 (unsigned long long)cfg->max_request_bytes);
        break;
    default:
        snprintf(buf, cap, "refused");
        break;
    }
    return buf;
}

/* ---------------------------------------------------------------- scratch */

void kr_cmd_args(struct kr_conn *c, uint32_t n, const char ***topics, uint32_t **lens)
{
    struct kr_nt *nt = c->nt;
    if (n > nt->args_cap) {
        nt->args_cap = n;
        nt->args = kr_xrealloc(nt->args, n * sizeof(*nt->args));
        nt->arg_lens = kr_xrealloc(nt->arg_lens, n * sizeof(*nt->arg_lens));
    }
    *topics = nt->args;
    *lens = nt->arg_lens;
}

/* The router's names of n topics of namespace ns: the topics themselves, or for shard
 * channels KR_SHARD_PREFIX + name, built in the net thread's scratch (valid until the next
 * call). */
static const char *const *kr_cmd_routed(struct kr_nt *nt, enum kr_ns ns, uint32_t n,
                                        const char *const *topics, const uint32_t *lens,
                                        const uint32_t **out_lens)
{
    if (ns == KR_NS_PLAIN) {
        *out_lens = lens;
        return topics;
    }
    size_t bytes = 0;
    for (uint32_t i = 0; i < n; i++)
        bytes += KR_SHARD_PREFIX_LEN + lens[i];
    KR_GROW(nt->ns_buf, nt->ns_buf_cap, bytes ? bytes : 1);
    KR_GROW(nt->ns_names, nt->ns_names_cap, n ? n : 1);
    KR_GROW(nt->ns_lens, nt->ns_lens_cap, n ? n : 1);
    char *p = nt->ns_buf;
    for (uint32_t i = 0; i < n; i++) {
        memcpy(p, KR_SHARD_PREFIX, KR_SHARD_PREFIX_LEN);
        memcpy(p + KR_SHARD_PREFIX_LEN, topics[i], lens[i]);
        nt->ns_names[i] = p;
        nt->ns_lens[i] = KR_SHARD_PREFIX_LEN + lens[i];
        p += nt->ns_lens[i];
    }
    *out_lens = nt->ns_lens;
    return nt->ns_names;
}

/* ---------------------------------------------------------------- replies */

/* A reply that needs nothing from the shards: now, or in order behind those that wait. */
static void kr_cmd_done(struct kr_conn *c, const struct kr_reply_wait *w)
{
    if (c->rq_count) {
        kr_rq_push(c, w);
    } else if (!w->noreply) {
        struct kr_reply r = {.kind = w->count ? KR_REPLY_RECEIVERS : KR_REPLY_DONE,
                             .bytes = w->bytes, .len = w->len};
        c->fe->reply(c, &r);
    }
}

/* ---------------------------------------------------------------- subscribe */

static int kr_cmd_route_sub(struct kr_conn *c, const struct kr_cmd_sub *sub, uint16_t type,
                            uint64_t horizon, const uint64_t *since,
                            struct kr_resume_remote *remote);

/* A connection opts in to resync notices by subscribing to __kraken__:resync, and out by
 * unsubscribing from it. */
static void kr_cmd_resync_opt(struct kr_conn *c, const struct kr_cmd_sub *sub)
{
    if (sub->ns != KR_NS_PLAIN)
        return;
    for (uint32_t i = 0; i < sub->n; i++) {
        if (sub->lens[i] == sizeof(KR_RESYNC_TOPIC) - 1 &&
            memcmp(sub->topics[i], KR_RESYNC_TOPIC, sub->lens[i]) == 0)
            c->dlv.resync = sub->op != KR_SUB_UNSUBSCRIBE;
        /* __kraken__:position: positions are kept from now on */
        if (sub->op != KR_SUB_UNSUBSCRIBE && sub->lens[i] == sizeof(KR_POSITION_TOPIC) - 1 &&
            memcmp(sub->topics[i], KR_POSITION_TOPIC, sub->lens[i]) == 0)
            kr_cmd_track_position(c);
    }
}

bool kr_cmd_subscribe_runs_alone(const struct kr_conn *c)
{
    return c->rare && c->rare->horizon_us != 0;
}

/* Split the topics by owning shard, send one command to each, and answer once every shard
 * acknowledged. */
int kr_cmd_subscribe(struct kr_conn *c, const struct kr_cmd_sub *sub)
{
    struct kr_nt *nt = c->nt;
    int rc = kr_cmd_sub_check(c, sub);
    if (rc < 0)
        return rc;
    uint16_t type = sub->op == KR_SUB_UNSUBSCRIBE ? KR_EV_UNSUBSCRIBE
                    : sub->op == KR_SUB_RETRO     ? KR_EV_RETRO_SUBSCRIBE
                                                  : KR_EV_SUBSCRIBE;
    uint64_t horizon = sub->horizon_us;
    if (type == KR_EV_RETRO_SUBSCRIBE) {
        KR_ST_INC(nt, retro_requests, 1);
    } else if (type == KR_EV_SUBSCRIBE && c->rare && c->rare->horizon_us) {
        /* the first subscribe after `register` is retroactive */
        type = KR_EV_RETRO_SUBSCRIBE;
        horizon = c->rare->horizon_us;
        c->rare->horizon_us = 0;
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
    return kr_cmd_route_sub(c, sub, type, horizon, NULL, NULL);
}

/* Send a subscribe-like request's topics to their shards (type: KR_EV_SUBSCRIBE,
 * KR_EV_UNSUBSCRIBE, KR_EV_RETRO_SUBSCRIBE from horizon, or KR_EV_RESUME from since[s] per
 * shard) and, but for an unsubscribe, the cluster's barrier; queue the reply that waits on
 * their acknowledgements. */
static int kr_cmd_route_sub(struct kr_conn *c, const struct kr_cmd_sub *sub, uint16_t type,
                            uint64_t horizon, const uint64_t *since,
                            struct kr_resume_remote *remote)
{
    struct kr_nt *nt = c->nt;
    struct kr_server *srv = nt->srv;
    bool staged = type == KR_EV_RETRO_SUBSCRIBE || type == KR_EV_RESUME;
    struct kr_reply_wait w = {.noreply = sub->noreply, .retro = staged};
    if (sub->reply) {
        w.bytes = kr_xmalloc(sub->reply_len ? sub->reply_len : 1);
        memcpy(w.bytes, sub->reply, sub->reply_len);
        w.len = sub->reply_len;
    }
    uint32_t n = sub->n;
    if (n == 0) {
        w.retro = false;
        free(remote);
        kr_cmd_done(c, &w);
        return KR_CMD_OK;
    }
    const uint32_t *lens;
    const char *const *topics = kr_cmd_routed(nt, sub->ns, n, sub->topics, sub->lens, &lens);
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
            cmds[s]->since_seq = since ? since[s] : 0;
        }
        cmds[s] = kr_router_cmd_add(cmds[s], topics[i], lens[i]);
    }
    for (uint32_t s = 0; s < nshards; s++)
        w.acks_left += cmds[s] != NULL;
    if (type == KR_EV_RESUME) { /* the request's replay bounds, shared by its shards */
        const struct kr_cfg *cfg = srv->cfg;
        for (uint32_t s = 0; s < nshards; s++) {
            if (!cmds[s])
                continue;
            cmds[s]->max_entries = cfg->resume_max_entries / w.acks_left + 1;
            cmds[s]->max_bytes = cfg->resume_max_bytes / w.acks_left + 1;
        }
    }
    /* in a cluster, a subscribe is answered once the cluster holds its interest too: the
     * link's barrier is one more acknowledgement, with every topic of the request */
    struct kr_router_cmd *barrier = NULL;
    if (srv->cluster && type != KR_EV_UNSUBSCRIBE) {
        barrier = kr_router_cmd_new((uint32_t)(total + 4 * n + 16));
        barrier->horizon_us = horizon;
        for (uint32_t i = 0; i < n; i++) /* the defined reserved names are this node's own */
            if (!kr_cmd_defined_name(topics[i], lens[i]))
                barrier = kr_router_cmd_add(barrier, topics[i], lens[i]);
        if (barrier->ntopics || remote) {
            w.acks_left++;
        } else { /* only __kraken__:position / :resync: nothing for the cluster to hold */
            kr_router_cmd_free(barrier);
            barrier = NULL;
        }
    }
    uint32_t reqno = kr_rq_push(c, &w);
    for (uint32_t s = 0; s < nshards; s++) {
        if (!cmds[s])
            continue;
        cmds[s]->pad = reqno; /* comes back in the ACK */
        struct kr_event ev = {.type = type, .src = (uint16_t)nt->idx, .conn = c->id, .ptr = cmds[s]};
        kr_conn_send(c, s, &ev);
    }
    if (barrier) {
        barrier->pad = reqno;
        /* the link holds interest the same way for a resume; one of another node's token
         * then asks that node (the block carries the position, and brings the answer) */
        barrier->remote = remote;
        remote = NULL;
        struct kr_event ev = {.type = type != KR_EV_RESUME ? type
                                      : barrier->remote ? KR_EV_RESUME : KR_EV_SUBSCRIBE,
                              .src = (uint16_t)nt->idx, .conn = c->id, .ptr = barrier};
        kr_conn_send(c, KR_DEST_LINK, &ev);
    }
    free(remote);
    if (type != KR_EV_UNSUBSCRIBE)
        c->subscribed = true;
    kr_cmd_resync_opt(c, sub);
    if (staged)
        kr_dlv_retro_begin(&c->dlv);
    return KR_CMD_OK;
}

/* ---------------------------------------------------------------- continuity */

void kr_cmd_track_position(struct kr_conn *c)
{
    kr_dlv_track_position(&c->nt->dlv, &c->dlv);
}

size_t kr_cmd_position(struct kr_conn *c, char *buf, size_t cap)
{
    size_t n = kr_cmd_position_now(c, buf, cap);
    if (n)
        return n;
    struct kr_conn_rare *r = c->rare;
    if (r && r->last_token && r->last_token_len <= cap) {
        memcpy(buf, r->last_token, r->last_token_len);
        return r->last_token_len;
    }
    return 0;
}

size_t kr_cmd_position_now(struct kr_conn *c, char *buf, size_t cap)
{
    struct kr_nt *nt = c->nt;
    kr_cmd_track_position(c);
    struct kr_pos p = {.node = nt->srv->node_id, .nshards = nt->dlv.nshards};
    size_t n = 0;
    if (!c->dlv.retro_active && kr_dlv_position(&nt->dlv, &c->dlv, nt->seen, p.seq))
        n = kr_pos_encode(&p, buf, cap);
    if (n) { /* the last exact one, for when there is none for a moment */
        struct kr_conn_rare *r = kr_conn_rare(c);
        if (!r->last_token)
            r->last_token = kr_xmalloc(KR_POS_TOKEN_MAX + 1);
        memcpy(r->last_token, buf, n);
        r->last_token_len = (uint16_t)n;
    }
    return n;
}

/* This net thread's share of resume_max_active. */
static uint32_t kr_cmd_resume_slots(const struct kr_nt *nt)
{
    uint64_t per = nt->srv->cfg->resume_max_active / nt->srv->nnet;
    return per ? (uint32_t)per : 1;
}

bool kr_cmd_resume_admit(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    if (c->resuming || nt->resumes_active < kr_cmd_resume_slots(nt))
        return true;
    if (!c->resume_waiting) { /* in line, once */
        if (nt->resume_wait_n == nt->resume_wait_cap) {
            uint32_t ncap = nt->resume_wait_cap ? nt->resume_wait_cap * 2 : 64;
            uint64_t *n = kr_xmalloc(ncap * sizeof(*n));
            for (uint32_t i = 0; i < nt->resume_wait_n; i++)
                n[i] = nt->resume_wait[(nt->resume_wait_head + i) % nt->resume_wait_cap];
            free(nt->resume_wait);
            nt->resume_wait = n;
            nt->resume_wait_cap = ncap;
            nt->resume_wait_head = 0;
        }
        nt->resume_wait[(nt->resume_wait_head + nt->resume_wait_n++) % nt->resume_wait_cap] = c->id;
        c->resume_waiting = true;
        KR_ST_INC(nt, resumes_waited, 1);
    }
    return false;
}

void kr_cmd_resume_done(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    if (!c->resuming)
        return;
    c->resuming = false;
    nt->resumes_active--;
    /* the oldest waiting resume whose connection is still open goes next */
    while (nt->resume_wait_n) {
        uint64_t id = nt->resume_wait[nt->resume_wait_head];
        nt->resume_wait_head = (nt->resume_wait_head + 1) % nt->resume_wait_cap;
        nt->resume_wait_n--;
        struct kr_conn *w = kr_nt_conn(nt, id);
        if (!w)
            continue;
        w->resume_waiting = false;
        kr_conn_block(w); /* processed again after this loop iteration */
        break;
    }
}

int kr_cmd_resume(struct kr_conn *c, const char *token, size_t token_len,
                  const struct kr_cmd_sub *sub0)
{
    struct kr_nt *nt = c->nt;
    struct kr_pos pos;
    if (kr_pos_decode(token, token_len, &pos) < 0)
        return KR_CMD_BAD_POSITION;
    struct kr_cmd_sub sub = *sub0;
    sub.op = KR_SUB_SUBSCRIBE;
    int rc = kr_cmd_sub_check(c, &sub);
    if (rc < 0)
        return rc;
    KR_ST_INC(nt, resume_requests, 1);
    KR_ST_INC(nt, subscribe_requests, 1);
    if (!c->resuming) { /* its slot (kr_cmd_resume_admit let it run) */
        c->resuming = true;
        nt->resumes_active++;
    }
    if (c->rare)
        c->rare->horizon_us = 0; /* a resume is the retroactive step itself */
    c->dlv.resync = true; /* resuming opts in to resync notices */
    kr_cmd_track_position(c);
    uint64_t since[64];
    uint32_t nshards = nt->dlv.nshards;
    bool ours = pos.node == nt->srv->node_id && pos.nshards == nshards;
    /* a token of another node of the cluster: that node is asked (the cluster link, once
     * the subscriptions are in force), and the answer merged with what arrives meanwhile */
    bool elsewhere = !ours && nt->srv->cluster && pos.node != nt->srv->node_id;
    for (uint32_t s = 0; s < nshards && s < 64; s++)
        since[s] = ours ? pos.seq[s] : UINT64_MAX; /* UINT64_MAX: subscribe only */
    struct kr_resume_remote *remote = NULL;
    if (elsewhere) {
        remote = kr_xcalloc(1, sizeof(*remote));
        remote->node = pos.node;
        remote->nshards = pos.nshards;
        memcpy(remote->seq, pos.seq, sizeof(remote->seq));
        /* entries created from here on reach this client live (the subscribe goes now) */
        remote->sub_time_us = kr_msg_clock_us();
        KR_ST_INC(nt, resume_moved, 1);
    } else if (!ours) {
        /* a token of another node or an earlier start: this node cannot replay it, so
         * every topic is told to resync (before anything live, once subscribed) */
        KR_ST_INC(nt, resume_foreign, 1);
        for (uint32_t i = 0; i < sub.n; i++)
            kr_dlv_resync_later(&c->dlv, sub.topics[i], sub.lens[i]);
    }
    return kr_cmd_route_sub(c, &sub, KR_EV_RESUME, 0, since, remote);
}

/* ---------------------------------------------------------------- publish */

/* Collect the topics, dropping repeats (a subscriber lists each matched topic once). Each
 * topic is hashed once here: the hash picks its shard, compares repeats cheaply through a
 * small open-addressing table, and travels in the message for the shard's table lookup.
 * Returns the distinct topics, in nt->topics / topic_lens / topic_hashes. */
static uint32_t kr_cmd_distinct(struct kr_nt *nt, uint32_t ntopics, const char *const *topics,
                                const uint32_t *lens)
{
    if (ntopics > nt->topics_cap) {
        nt->topics_cap = ntopics;
        nt->topics = kr_xrealloc(nt->topics, ntopics * sizeof(*nt->topics));
        nt->topic_lens = kr_xrealloc(nt->topic_lens, ntopics * sizeof(*nt->topic_lens));
        nt->topic_hashes = kr_xrealloc(nt->topic_hashes, ntopics * sizeof(*nt->topic_hashes));
    }
    uint32_t n = 0;
    if (ntopics <= 8) { /* the common case: a few topics, compared directly */
        for (uint32_t k = 0; k < ntopics; k++) {
            uint64_t h = kr_topic_hash(topics[k], lens[k]);
            bool dup = false;
            for (uint32_t i = 0; i < n && !dup; i++)
                dup = nt->topic_hashes[i] == h && nt->topic_lens[i] == lens[k] &&
                      memcmp(nt->topics[i], topics[k], lens[k]) == 0;
            if (!dup) {
                nt->topics[n] = topics[k];
                nt->topic_lens[n] = lens[k];
                nt->topic_hashes[n] = h;
                n++;
            }
        }
        return n;
    }
    /* many topics: a table of indexes + 1 at least twice their number (linear time) */
    uint32_t cap = 16;
    while (cap < 2 * ntopics)
        cap *= 2;
    KR_GROW(nt->dedup, nt->dedup_cap, cap);
    memset(nt->dedup, 0, cap * sizeof(*nt->dedup));
    for (uint32_t k = 0; k < ntopics; k++) {
        uint64_t h = kr_topic_hash(topics[k], lens[k]);
        uint32_t b = (uint32_t)h & (cap - 1);
        bool dup = false;
        while (nt->dedup[b]) {
            uint32_t i = nt->dedup[b] - 1;
            if (nt->topic_hashes[i] == h && nt->topic_lens[i] == lens[k] &&
                memcmp(nt->topics[i], topics[k], lens[k]) == 0) {
                dup = true;
                break;
            }
            b = (b + 1) & (cap - 1);
        }
        if (dup)
            continue;
        nt->topics[n] = topics[k];
        nt->topic_lens[n] = lens[k];
        nt->topic_hashes[n] = h;
        nt->dedup[b] = ++n;
    }
    return n;
}

static void kr_cmd_warn_topics(struct kr_conn *c, uint32_t n)
{
    struct kr_nt *nt = c->nt;
    KR_ST_INC(nt, publish_topic_warnings, 1);
    uint64_t suppressed = 0;
    if (kr_log_enabled(KR_LOG_WARN) &&
        kr_log_ratelimit(&nt->rl_topics, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed)) {
        KR_WARN("publish to %u topics from %s (id %llu), first topics: %.*s%s%.*s%s%.*s "
                "(suppressed %llu similar)",
                n, kr_conn_peer(c), (unsigned long long)c->id, (int)nt->topic_lens[0], nt->topics[0],
                n > 1 ? " " : "", n > 1 ? (int)nt->topic_lens[1] : 0, n > 1 ? nt->topics[1] : "",
                n > 2 ? " " : "", n > 2 ? (int)nt->topic_lens[2] : 0, n > 2 ? nt->topics[2] : "",
                (unsigned long long)suppressed);
    }
}

int kr_cmd_publish(struct kr_conn *c, const struct kr_cmd_entry *e, unsigned flags)
{
    struct kr_nt *nt = c->nt;
    struct kr_server *srv = nt->srv;
    struct kr_router *r = srv->router;
    bool count = flags & KR_PUB_COUNT;
    if (!(flags & KR_PUB_CHECKED)) {
        int rc = kr_cmd_entry_check(c, e);
        if (rc < 0)
            return rc;
    }
    const uint32_t *lens0;
    const char *const *topics0 = kr_cmd_routed(nt, e->ns, e->n, e->topics, e->lens, &lens0);
    uint32_t n = kr_cmd_distinct(nt, e->n, topics0, lens0);
    const struct kr_net_live *lv = &nt->live;
    if (n >= lv->topics_warn && lv->topics_warn)
        kr_cmd_warn_topics(c, n);
    KR_ST_INC(nt, messages_published, 1);
    if (n == 0) {
        if (count)
            kr_cmd_done(c, &(struct kr_reply_wait){.count = true});
        return KR_CMD_OK;
    }

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
                                            nt->topic_lens, nt->topic_hashes, e->payload,
                                            e->payload_len, involved > 1 ? srv->nnet : 0);
    kr_msg_set_nshards(m, involved);
    if (involved > 1 || srv->cluster)
        kr_msg_ref(m, involved - 1 + (srv->cluster != NULL));
    /* with cluster_publish_ack flushed the reply also waits for the link's flush */
    if (srv->publish_flushed)
        kr_conn_rare(c)->link_sent++;
    /* a counted publish's reply waits for every involved shard's count (KR_EV_PUBLISHED) */
    uint32_t reqno = 0;
    if (count)
        reqno = kr_rq_push(c, &(struct kr_reply_wait){.acks_left = involved, .count = true,
                                                      .link_need = kr_conn_link_sent(c)});
    /* Forwarded to the other nodes: handed to the link before any shard can route it, so
     * a resume of another node's token, whose question waits for what the link was handed
     * before it (kr_cl_asks_send), finds it in that node's answer if it was routed here
     * before the client subscribed. */
    if (srv->cluster) {
        struct kr_event ev = {.type = KR_EV_PUBLISH, .src = (uint16_t)nt->idx, .conn = c->id, .ptr = m,
                              .mask = srv->publish_flushed ? KR_PUBLISH_FLUSHED : 0};
        kr_conn_send(c, KR_DEST_LINK, &ev);
    }
    for (uint32_t s = 0; s < nshards; s++) {
        if (!((shardset >> s) & 1))
            continue;
        struct kr_event ev = {.type = KR_EV_PUBLISH, .src = (uint16_t)nt->idx, .conn = c->id,
                              .ptr = m, .aux = reqno, .mask = count ? KR_PUBLISH_COUNT : 0};
        kr_conn_send(c, s, &ev);
    }
    return KR_CMD_OK;
}

void kr_cmd_published(struct kr_conn *c, bool noreply)
{
    uint32_t parked = kr_conn_nparked(c);
    if (parked || c->rq_count || kr_conn_link_acked(c) < kr_conn_link_sent(c))
        kr_rq_push(c, &(struct kr_reply_wait){.noreply = noreply, .sent_gate = parked > 0,
                                              .link_need = kr_conn_link_sent(c)});
    else if (!noreply)
        c->fe->reply(c, &(struct kr_reply){.kind = KR_REPLY_DONE});
}

/* ---------------------------------------------------------------- register */

void kr_cmd_register(struct kr_conn *c, bool noreply)
{
    KR_ST_INC(c->nt, register_requests, 1);
    kr_conn_rare(c)->horizon_us = kr_msg_clock_us();
    kr_cmd_done(c, &(struct kr_reply_wait){.noreply = noreply});
}

void kr_cmd_unregister(struct kr_conn *c)
{
    if (c->rare)
        c->rare->horizon_us = 0;
}
