/* The cluster link on libnats' threads (see kr_cluster_int.h): the message-delivery
 * thread's handling of entries and control messages from the other nodes, and the
 * connection callbacks libnats calls on its own threads. Nothing here touches the link
 * thread's state: what the link thread must learn goes through the item list (cl->mu). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kr_cluster_int.h"
#include "kr_cluster_wire.h"
#include "kr_log.h"
#include "kr_util.h"

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
    KR_ASYNC_SEND(&cl->wake);
}

void kr_cl_disconnected_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    kr_cl_item_push(closure, 'd', 0, 0, NULL, 0);
}

void kr_cl_reconnected_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    kr_cl_item_push(closure, 'r', 0, 0, NULL, 0);
}

void kr_cl_connected_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    kr_cl_item_push(closure, 'c', 0, 0, NULL, 0);
}

void kr_cl_error_cb(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
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
static bool kr_cl_is_duplicate(struct kr_cluster *cl, uint64_t origin, uint64_t seq,
                               struct kr_cl_origin **from)
{
    uint64_t now = kr_cl_now_ms();
    struct kr_cl_origin *o = NULL;
    for (uint32_t i = 0; i < cl->norigins && !o; i++)
        if (cl->origins[i].origin == origin)
            o = &cl->origins[i];
    if (!o) { /* a new origin's record: under win_mu, which the link thread reads them with */
        pthread_mutex_lock(&cl->win_mu);
        if (cl->norigins < KR_CL_MAX_ORIGINS) {
            o = &cl->origins[cl->norigins++];
        } else { /* forget the origin heard from least recently */
            o = &cl->origins[0];
            for (uint32_t i = 1; i < cl->norigins; i++)
                if (cl->origins[i].last_ms < o->last_ms)
                    o = &cl->origins[i];
        }
        o->origin = origin;
        if (o->win) /* a forgotten origin's windows too */
            for (int k = 0; k < 2; k++)
                kr_cl_window_clear(&o->win->w[k], KR_CL_PEER_SLOTS);
        pthread_mutex_unlock(&cl->win_mu);
        o->seq = 0;
    }
    o->last_ms = now;
    *from = o;
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
                kr_router_cmd_free(ev->ptr);
            return;
        }
        struct timespec ts = {0, spins < 100 ? 20000 : 200000};
        nanosleep(&ts, NULL);
    }
}

/* Remember the n topics of the entry being handled (cl->d_topics ...) as forwarded here by
 * origin o lately (its two windows; allocated at its first entry). */
static void kr_cl_window_note(struct kr_cluster *cl, struct kr_cl_origin *o, uint32_t n)
{
    uint64_t now = kr_cl_now_ms();
    pthread_mutex_lock(&cl->win_mu);
    if (!o->win) {
        o->win = kr_xcalloc(1, sizeof(*o->win));
        for (int k = 0; k < 2; k++) {
            o->win->w[k].slots = kr_xcalloc(KR_CL_PEER_SLOTS, sizeof(uint64_t));
            o->win->w[k].pairs = kr_xmalloc(KR_CL_PEER_BYTES);
        }
        o->win->since_ms = now;
    }
    struct kr_cl_win *w = o->win;
    if (now >= w->since_ms + KR_CL_RECENT_MS / 2) { /* the older half is forgotten */
        w->cur ^= 1;
        kr_cl_window_clear(&w->w[w->cur], KR_CL_PEER_SLOTS);
        w->since_ms = now;
    }
    for (uint32_t i = 0; i < n; i++)
        kr_cl_window_add(&w->w[w->cur], KR_CL_PEER_SLOTS, KR_CL_PEER_BYTES, cl->d_topics[i],
                         cl->d_lens[i], cl->d_hashes[i]);
    pthread_mutex_unlock(&cl->win_mu);
}

void kr_cl_on_entry(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
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
    struct kr_cl_origin *from = NULL;
    if (b.origin == cl->origin || kr_cl_is_duplicate(cl, b.origin, b.seq, &from) ||
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
    kr_msg_set_origin(m, b.origin, b.seq); /* its name on every node (resumes elsewhere) */
    kr_cl_window_note(cl, from, n); /* the topics point into msg: before it goes */
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

/* Another node resumes a token of this one ('Q'): its shards are asked here, on in_idx,
 * behind every entry this thread injected before: what the asker forwarded before it asked
 * (on the same NATS connection, so received here first) is in the history the shards
 * answer from. The link learns of the request first (an item with the tag and the number
 * of shards asked), then gets their answers on its own index. */
static void kr_cl_serve_ask(struct kr_cluster *cl, const struct kr_cl_resume *r, const char *body,
                            size_t len)
{
    struct kr_router *rt = cl->o.router;
    uint32_t nshards = kr_router_nshards(rt), asked = 0;
    struct kr_router_cmd *cmds[KR_CL_MAX_SHARDS] = {0};
    if (r->nshards == nshards) { /* else not a position of this start: nothing covered */
        size_t pos = 0;
        const char *t;
        uint32_t tl;
        while (kr_cl_next_pair(r->pairs, r->pairs_len, &pos, &t, &tl)) {
            uint32_t sh = kr_router_shard_of(rt, t, tl);
            if (!cmds[sh]) {
                cmds[sh] = kr_router_cmd_new(256);
                cmds[sh]->since_seq = r->seq[sh];
                asked++;
            }
            cmds[sh] = kr_router_cmd_add(cmds[sh], t, tl);
        }
    }
    uint64_t tag = ++cl->d_serve_tag;
    /* the item's seq: the tag (high 32 bits) and the shards asked (low 32); its data: what
     * this thread received from each origin so far (everything up to it is in the shards
     * before they see the request), then the body */
    uint32_t nmarks = cl->norigins;
    size_t ilen = 4 + 16 * (size_t)nmarks + len;
    char *data = kr_xmalloc(ilen);
    memcpy(data, &nmarks, 4);
    for (uint32_t i = 0; i < nmarks; i++) {
        memcpy(data + 4 + 16 * (size_t)i, &cl->origins[i].origin, 8);
        memcpy(data + 12 + 16 * (size_t)i, &cl->origins[i].seq, 8);
    }
    memcpy(data + 4 + 16 * (size_t)nmarks, body, len);
    kr_cl_item_push(cl, 'q', r->origin, (tag << 32) | asked, data, ilen);
    free(data);
    for (uint32_t sh = 0; sh < nshards; sh++) {
        if (!cmds[sh])
            continue;
        /* the request's replay bounds, shared by its shards (as for a resume here) */
        cmds[sh]->max_entries = cl->cfg->resume_max_entries / asked + 1;
        cmds[sh]->max_bytes = cl->cfg->resume_max_bytes / asked + 1;
        struct kr_event ev = {.type = KR_EV_HISTORY, .src = (uint16_t)cl->o.in_idx, .conn = tag,
                              .ptr = cmds[sh]};
        kr_cl_inject(cl, sh, &ev);
    }
    kr_router_flush(rt, cl->o.in_idx);
}

void kr_cl_on_ctl(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    struct kr_cluster *cl = closure;
    const char *data = natsMsg_GetData(msg);
    size_t dlen = (size_t)natsMsg_GetDataLength(msg);
    if (dlen && (data[0] == 'Q' || data[0] == 'S')) { /* a resume between nodes */
        struct kr_cl_resume r;
        if (kr_cl_resume_decode(data, dlen, &r) != 0)
            KR_CL_INC(cl, bad_messages, 1);
        else if (r.origin != cl->origin && r.kind == 'Q')
            kr_cl_serve_ask(cl, &r, data, dlen);
        else if (r.origin != cl->origin)
            kr_cl_item_push(cl, 'a', r.origin, 0, data, dlen);
        natsMsg_Destroy(msg);
        return;
    }
    struct kr_cl_body b;
    if (kr_cl_decode(data, dlen, &b) != 0 || b.kind == 'E') {
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
        case 'G':
            kr_cl_item_push(cl, 'G', b.origin, 0, NULL, 0);
            break;
        default:
            break;
        }
    }
    natsMsg_Destroy(msg);
}
