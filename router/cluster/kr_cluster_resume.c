/* Resuming another node's token, on the link thread (see kr_cluster_int.h).
 *
 * Asking (this node resumes a token another node issued). The resume's barrier block
 * (KR_EV_RESUME, with ->remote holding the token's position) waits for its probe like any
 * subscribe: from then on every entry published on its topics reaches this node, and the
 * net thread stages what arrives for the client. Then the link asks the token's node over
 * its node subject ('Q'); the answer ('S', in chunks) carries the messages after the token
 * on those topics, each with its origin and origin sequence, and the topics it cannot
 * replay exactly. The block goes back to the net thread in the barrier's ACK with the
 * messages in ->remote and the uncovered topics in ->resync; the net thread merges them
 * with what it staged, each message once (by origin and origin sequence). A node that is
 * not a known peer, or does not answer within cluster_resume_timeout_ms: every topic is
 * uncovered (a resync notice).
 *
 * Serving (another node resumes a token of this one). The request's topics go to their
 * shards (KR_EV_HISTORY, like a resume without the subscribe), whose REPLAY events and ACKs
 * come back on the link's index; once every shard answered, the parts of a message that
 * spans shards are merged, the messages put in publish order, and the answer published in
 * chunks. The delivery thread asks the shards (kr_cl_serve_ask), behind the entries it
 * injected before the request: what the asking node forwarded before it asked is in the
 * history answered from. A message published here has its origin sequence once the link
 * forwarded it (it takes the same path as every publish): the answer waits for that, a
 * moment. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_cluster_int.h"
#include "kr_cluster_wire.h"
#include "kr_log.h"
#include "kr_util.h"

#define KR_CL_ANS_CHUNK (256 * 1024) /* bytes of an answer's chunk (NATS max_payload: 1 MiB) */
#define KR_CL_STAMP_WAIT_MS 1000    /* a served message's origin sequence is awaited this long */

/* ---------------------------------------------------------------- asking */

static bool kr_cl_is_peer(const struct kr_cluster *cl, uint64_t origin)
{
    for (uint32_t i = 0; i < cl->npeers; i++)
        if (cl->peers[i].origin == origin)
            return true;
    return false;
}

/* Answer the ask's resume towards its net thread; `all` makes every topic uncovered (and
 * drops what was received). */
static void kr_cl_ask_done(struct kr_cluster *cl, struct kr_cl_ask *a, bool all)
{
    struct kr_router_cmd *c = a->ev.ptr;
    if (all) {
        struct kr_resume_remote *x = c->remote;
        for (uint32_t i = 0; i < x->nmsgs; i++)
            kr_msg_unref(x->msgs[i]);
        x->nmsgs = 0;
        free(c->resync);
        c->resync = NULL;
        uint32_t pos = 0, len;
        const char *t;
        while (kr_router_cmd_next(c, &pos, &t, &len)) {
            if (!c->resync)
                c->resync = kr_router_cmd_new(c->used + 64);
            c->resync = kr_router_cmd_add(c->resync, t, len);
        }
    }
    struct kr_event ack = {.type = KR_EV_ACK, .src = (uint16_t)cl->o.ctl_idx,
                           .aux = KR_EV_RESUME, .conn = a->ev.conn, .ptr = c};
    kr_outbox_push(&cl->outbox, KR_CONN_NET(a->ev.conn), &ack);
}

void kr_cl_resume_ask(struct kr_cluster *cl, struct kr_event *req)
{
    struct kr_router_cmd *c = req->ptr;
    struct kr_resume_remote *x = c->remote;
    KR_CL_INC(cl, resumes_asked, 1);
    struct kr_cl_ask a = {.ev = *req, .tag = ++cl->ask_tag,
                          .deadline_ms = kr_cl_now_ms() + cl->cfg->cluster_resume_timeout_ms};
    if (!cl->connected || !kr_cl_is_peer(cl, x->node) || x->nshards > KR_CL_MAX_SHARDS) {
        KR_CL_INC(cl, resume_unanswered, 1); /* nobody to ask: every topic is told to resync */
        kr_cl_ask_done(cl, &a, true);
        return;
    }
    /* The question waits until this link forwarded every entry the net threads handed it
     * before now: an entry this node routed before the client subscribed here was handed
     * to the link before its shard saw it (kr_cmd_publish), so it reaches the asked node
     * ahead of the question (one NATS connection keeps the order), and is in its answer. */
    a.wait = kr_xmalloc((cl->o.nnet ? cl->o.nnet : 1) * sizeof(*a.wait));
    for (uint32_t n = 0; n < cl->o.nnet; n++)
        a.wait[n] = kr_mailbox_pushed(cl->in[n]);
    KR_GROW_MIN(cl->asks, cl->asks_cap, cl->nasks + 1, 16);
    cl->asks[cl->nasks++] = a;
}

/* Publish ask a's question ('Q' on the asked node's subject); false when it cannot go. */
static bool kr_cl_ask_publish(struct kr_cluster *cl, const struct kr_cl_ask *a)
{
    struct kr_router_cmd *c = a->ev.ptr;
    struct kr_resume_remote *x = c->remote;
    /* the question: the position, then the topics as pairs */
    size_t pairs = 0;
    uint32_t pos = 0, len;
    const char *t;
    while (kr_router_cmd_next(c, &pos, &t, &len))
        pairs += 4 + len;
    size_t need = kr_cl_ask_size(x->nshards, pairs);
    char *body = kr_xmalloc(need), *p = body + kr_cl_ask_size(x->nshards, 0);
    pos = 0;
    while (kr_router_cmd_next(c, &pos, &t, &len))
        p += kr_cl_pair(p, t, len);
    kr_cl_ask_encode(body, cl->origin, a->tag, x->nshards, x->seq, c->ntopics,
                     body + kr_cl_ask_size(x->nshards, 0), pairs);
    char subj[KR_CFG_STR_MAX + 32];
    snprintf(subj, sizeof(subj), "%s.node.%016" PRIx64, cl->prefix, x->node);
    bool ok = cl->connected && natsConnection_Publish(cl->nc, subj, body, (int)need) == NATS_OK;
    free(body);
    return ok;
}

bool kr_cl_asks_send(struct kr_cluster *cl)
{
    bool waiting = false;
    for (size_t i = 0; i < cl->nasks;) {
        struct kr_cl_ask *a = &cl->asks[i];
        bool ready = !a->sent;
        for (uint32_t n = 0; n < cl->o.nnet && ready; n++)
            ready = (int32_t)(kr_mailbox_taken(cl->in[n]) - a->wait[n]) >= 0;
        if (!ready) {
            waiting |= !a->sent;
            i++;
            continue;
        }
        a->sent = true;
        free(a->wait);
        a->wait = NULL;
        if (kr_cl_ask_publish(cl, a)) {
            i++;
            continue;
        }
        KR_CL_INC(cl, resume_unanswered, 1); /* the question could not go: every topic told */
        kr_cl_ask_done(cl, a, true);
        cl->asks[i] = cl->asks[--cl->nasks];
    }
    return waiting;
}

/* Send the asked topics to this node's shards as KR_EV_CHECK (see kr_router.h): entries of
 * a third node, or of this one, they routed in the last KR_CL_RECENT_MS before the client
 * subscribed here, above what the answering node had received from that node (this node's
 * own forward of an entry can reach the answering node after the question did). */
static void kr_cl_ask_check(struct kr_cluster *cl, struct kr_cl_ask *a)
{
    struct kr_router_cmd *c = a->ev.ptr;
    const struct kr_resume_remote *x = c->remote;
    struct kr_router *r = cl->o.router;
    uint32_t nshards = kr_router_nshards(r);
    struct kr_router_cmd *cmds[KR_CL_MAX_SHARDS] = {0};
    uint64_t from = x->sub_time_us > KR_CL_RECENT_MS * 1000ull
                        ? x->sub_time_us - KR_CL_RECENT_MS * 1000ull
                        : 0;
    uint32_t pos = 0, len;
    const char *t;
    a->checks_left = 0;
    a->lost = false;
    while (kr_router_cmd_next(c, &pos, &t, &len)) {
        uint32_t s = kr_router_shard_of(r, t, len);
        if (!cmds[s]) {
            cmds[s] = kr_router_cmd_new(256);
            cmds[s]->since_seq = from; /* a publish time, for this event */
            struct kr_resume_remote *y = kr_xcalloc(1, sizeof(*y));
            y->node = x->node;
            y->sub_time_us = x->sub_time_us;
            y->self = cl->origin;
            y->nmarks = x->nmarks;
            y->mark_origin = kr_xmalloc((x->nmarks ? x->nmarks : 1) * sizeof(uint64_t));
            y->mark_seq = kr_xmalloc((x->nmarks ? x->nmarks : 1) * sizeof(uint64_t));
            memcpy(y->mark_origin, x->mark_origin, x->nmarks * sizeof(uint64_t));
            memcpy(y->mark_seq, x->mark_seq, x->nmarks * sizeof(uint64_t));
            cmds[s]->remote = y;
            a->checks_left++;
        }
        cmds[s] = kr_router_cmd_add(cmds[s], t, len);
    }
    for (uint32_t s = 0; s < nshards; s++) {
        if (!cmds[s])
            continue;
        struct kr_event ev = {.type = KR_EV_CHECK, .src = (uint16_t)cl->o.ctl_idx,
                              .conn = a->tag, .ptr = cmds[s]};
        kr_cl_to_shard(cl, s, &ev);
    }
    if (a->checks_left)
        kr_router_flush(r, cl->o.ctl_idx);
}

/* A shard's answer to kr_cl_ask_check: once every shard answered, the resume is answered
 * (every topic told when an entry was on its way to the answering node). */
static void kr_cl_ask_checked(struct kr_cluster *cl, struct kr_event *ev)
{
    kr_router_cmd_free(ev->ptr);
    size_t i = 0;
    while (i < cl->nasks && cl->asks[i].tag != ev->conn)
        i++;
    if (i == cl->nasks || cl->asks[i].checks_left == 0)
        return; /* timed out meanwhile */
    struct kr_cl_ask *a = &cl->asks[i];
    a->lost |= ev->mask != 0;
    if (--a->checks_left)
        return;
    if (a->lost) {
        KR_CL_INC(cl, resume_in_flight, 1);
        uint64_t suppressed = 0;
        static struct kr_log_ratelimit rl;
        char note[64];
        if (kr_log_enabled(KR_LOG_WARN) && kr_log_ratelimit(&rl, 10, 10000, &suppressed))
            KR_WARN("cluster: a resume's answer from node %016" PRIx64 " missed an entry (of "
                    "this node or a third) still on its way there; its topics are told to "
                    "resync%s",
                    ((struct kr_router_cmd *)a->ev.ptr)->remote->node,
                    kr_log_suppressed_note(suppressed, note, sizeof(note)));
    }
    kr_cl_ask_done(cl, a, a->lost);
    cl->asks[i] = cl->asks[--cl->nasks];
}

/* One chunk of an answer ('S', decoded in the item by the delivery thread's check). */
static void kr_cl_ask_chunk(struct kr_cluster *cl, const char *body, size_t len)
{
    struct kr_cl_resume r;
    if (kr_cl_resume_decode(body, len, &r) != 0 || r.kind != 'S')
        return;
    size_t i = 0;
    while (i < cl->nasks && cl->asks[i].tag != r.tag)
        i++;
    if (i == cl->nasks)
        return; /* timed out already (its topics were told), or not ours */
    struct kr_cl_ask *a = &cl->asks[i];
    struct kr_router_cmd *c = a->ev.ptr;
    struct kr_resume_remote *x = c->remote;
    size_t pos = 0;
    struct kr_cl_replayed e;
    while (kr_cl_next_replayed(&r, &pos, &e)) {
        if (e.ntopics > cl->r_cap) {
            cl->r_cap = e.ntopics;
            cl->r_topics = kr_xrealloc(cl->r_topics, e.ntopics * sizeof(*cl->r_topics));
            cl->r_lens = kr_xrealloc(cl->r_lens, e.ntopics * sizeof(*cl->r_lens));
        }
        uint32_t n = 0;
        size_t pp = 0;
        const char *t;
        uint32_t tl;
        while (n < e.ntopics && kr_cl_next_pair(e.pairs, e.pairs_len, &pp, &t, &tl)) {
            cl->r_topics[n] = t;
            cl->r_lens[n++] = tl;
        }
        struct kr_msg *m = kr_msg_create(cl->pub_id, kr_msg_clock_us(), n, cl->r_topics,
                                         cl->r_lens, e.payload, e.payload_len, 0);
        kr_msg_set_origin(m, e.origin, e.oseq);
        KR_GROW_MIN(x->msgs, x->cap, x->nmsgs + 1, 64);
        x->msgs[x->nmsgs++] = m;
        KR_CL_INC(cl, resume_replayed, 1);
    }
    pos = 0;
    const char *t;
    uint32_t tl;
    while (kr_cl_next_pair(r.pairs, r.pairs_len, &pos, &t, &tl)) {
        if (!c->resync)
            c->resync = kr_router_cmd_new(tl + 64);
        c->resync = kr_router_cmd_add(c->resync, t, tl);
    }
    if (!(r.flags & KR_CL_ANS_LAST))
        return;
    /* the answering node had everything this node forwarded before it asked; what a third
     * node published may still have been on its way there (and, should the order above
     * ever fail, an entry of this node): ask this node's shards whether they routed such an
     * entry before the client subscribed here */
    x->nmarks = r.nmarks;
    x->mark_origin = kr_xmalloc((r.nmarks ? r.nmarks : 1) * sizeof(uint64_t));
    x->mark_seq = kr_xmalloc((r.nmarks ? r.nmarks : 1) * sizeof(uint64_t));
    for (uint32_t k = 0; k < r.nmarks; k++)
        kr_cl_mark(&r, k, &x->mark_origin[k], &x->mark_seq[k]);
    kr_cl_ask_check(cl, a);
    if (a->checks_left == 0) {
        kr_cl_ask_done(cl, a, false);
        cl->asks[i] = cl->asks[--cl->nasks];
    }
}

/* ---------------------------------------------------------------- serving */


/* Publish the answer to serve s: chunks of at most KR_CL_ANS_CHUNK bytes (one message
 * alone may pass it), the uncovered topics in the last. `all`: nothing replayed, every
 * topic uncovered. */
static void kr_cl_serve_send(struct kr_cluster *cl, struct kr_cl_serve *s, bool all)
{
    char subj[KR_CFG_STR_MAX + 32];
    snprintf(subj, sizeof(subj), "%s.node.%016" PRIx64, cl->prefix, s->asker);
    char *buf = NULL;
    size_t cap = 0, used = KR_CL_ANS_HEADER;
    uint32_t n = 0;
    KR_GROW_MIN(buf, cap, used, KR_CL_ANS_CHUNK);
    for (uint32_t i = 0; !all && i < s->nparts; i++) {
        struct kr_msg *m = s->parts[i].msg;
        uint32_t nt = kr_msg_ntopics(m), plen, nmatch = 0;
        size_t pairs = 0;
        for (uint32_t k = 0; k < nt; k++) {
            if (!kr_topicset_has(&s->parts[i].topics, nt, k))
                continue;
            uint32_t tl;
            kr_msg_topic(m, k, &tl);
            pairs += 4 + tl;
            nmatch++;
        }
        const char *payload = kr_msg_payload(m, &plen);
        size_t sz = kr_cl_replayed_size(pairs, plen);
        if (n && used + sz > KR_CL_ANS_CHUNK) { /* this chunk is full: out it goes */
            kr_cl_ans_header(buf, cl->origin, s->asker_tag, 0, n);
            size_t tail = kr_cl_ans_marks(buf + used, 0, NULL, NULL);
            tail += kr_cl_ans_trailer(buf + used + tail, 0);
            natsConnection_Publish(cl->nc, subj, buf, (int)(used + tail));
            used = KR_CL_ANS_HEADER;
            n = 0;
        }
        KR_GROW_MIN(buf, cap, used + sz + 8, KR_CL_ANS_CHUNK);
        uint64_t oseq, origin = kr_msg_origin(m, &oseq);
        char *p = buf + used;
        p += kr_cl_replayed_header(p, origin ? origin : cl->origin, oseq, nmatch);
        for (uint32_t k = 0; k < nt; k++) {
            if (!kr_topicset_has(&s->parts[i].topics, nt, k))
                continue;
            uint32_t tl;
            const char *t = kr_msg_topic(m, k, &tl);
            p += kr_cl_pair(p, t, tl);
        }
        p += kr_cl_replayed_payload(p, payload, plen);
        used = (size_t)(p - buf);
        n++;
    }
    /* the last chunk: the uncovered topics (every one asked, with `all`) */
    const char *unc = all ? s->topics : s->unc;
    size_t unc_len = all ? s->topics_len : s->unc_len;
    uint32_t nunc = all ? s->ntopics : s->nunc;
    KR_GROW_MIN(buf, cap, used + 8 + 16 * (size_t)s->nmarks + unc_len, KR_CL_ANS_CHUNK);
    kr_cl_ans_header(buf, cl->origin, s->asker_tag, KR_CL_ANS_LAST, n);
    /* what this node had received from each origin when its shards were asked: the asker
     * checks what it holds above that (kr_cl_ask_chunk) */
    used += kr_cl_ans_marks(buf + used, s->nmarks, s->mark_origin, s->mark_seq);
    used += kr_cl_ans_trailer(buf + used, nunc);
    if (unc_len)
        memcpy(buf + used, unc, unc_len);
    if (natsConnection_Publish(cl->nc, subj, buf, (int)(used + unc_len)) != NATS_OK)
        KR_WARN("cluster: the answer to a resume of node %016" PRIx64 " could not be sent; it "
                "will tell its client to resync", s->asker);
    free(buf);
}

static int kr_cl_part_cmp(const void *a, const void *b)
{
    const struct kr_cl_part *x = a, *y = b;
    uint64_t tx = kr_msg_time_us(x->msg), ty = kr_msg_time_us(y->msg);
    if (tx != ty)
        return tx < ty ? -1 : 1;
    return (uintptr_t)x->msg < (uintptr_t)y->msg ? -1 : (uintptr_t)x->msg > (uintptr_t)y->msg;
}

static void kr_cl_serve_free(struct kr_cl_serve *s)
{
    for (uint32_t i = 0; i < s->nparts; i++) {
        kr_topicset_release(&s->parts[i].topics, kr_msg_ntopics(s->parts[i].msg));
        kr_msg_unref(s->parts[i].msg);
    }
    free(s->parts);
    free(s->unc);
    free(s->topics);
    free(s->mark_origin);
    free(s->mark_seq);
}

/* Serve s is complete once every message in it has its origin sequence (those published
 * here get it when the link forwards them): then answered and removed. Returns whether it
 * was. */
static bool kr_cl_serve_try(struct kr_cluster *cl, size_t idx, uint64_t now)
{
    struct kr_cl_serve *s = &cl->serves[idx];
    bool stamped = true;
    for (uint32_t i = 0; i < s->nparts && stamped; i++) {
        uint64_t oseq;
        kr_msg_origin(s->parts[i].msg, &oseq);
        stamped = oseq != 0;
    }
    bool late = !stamped && now >= s->started_ms + KR_CL_STAMP_WAIT_MS;
    if (!stamped && !late)
        return false;
    if (late)
        KR_WARN("cluster: a resume of node %016" PRIx64 " waited for entries this node had "
                "not forwarded yet; every topic it asked for is told to resync", s->asker);
    kr_cl_serve_send(cl, s, late);
    KR_CL_INC(cl, resumes_served, 1);
    kr_cl_serve_free(s);
    cl->serves[idx] = cl->serves[--cl->nserves];
    return true;
}

/* Every shard answered serve s: merge the parts of each message, oldest first. */
static void kr_cl_serve_complete(struct kr_cluster *cl, size_t idx)
{
    struct kr_cl_serve *s = &cl->serves[idx];
    if (s->nparts > 1) /* (none: no array at all) */
        qsort(s->parts, s->nparts, sizeof(*s->parts), kr_cl_part_cmp);
    uint32_t out = 0;
    for (uint32_t i = 0; i < s->nparts; i++) {
        if (out && s->parts[out - 1].msg == s->parts[i].msg) {
            kr_topicset_merge(&s->parts[out - 1].topics, &s->parts[i].topics,
                              kr_msg_ntopics(s->parts[i].msg));
            kr_msg_unref(s->parts[i].msg);
            continue;
        }
        s->parts[out++] = s->parts[i];
    }
    s->nparts = out;
    s->complete = true;
    kr_cl_serve_try(cl, idx, kr_cl_now_ms());
}

/* A resume request from another node ('Q' body in the item): the delivery thread asked the
 * shards already (kr_cl_serve_ask: the item's seq holds the tag in its high 32 bits and how
 * many shards were asked in the low 32); their answers are collected under the tag. */
void kr_cl_serve_item(struct kr_cluster *cl, const struct kr_cl_item *it)
{
    /* the item: nmarks u32, the marks (origin u64, seq u64, host order), then the body */
    uint32_t nmarks;
    memcpy(&nmarks, it->data, 4);
    size_t off = 4 + 16 * (size_t)nmarks;
    struct kr_cl_resume r;
    if (kr_cl_resume_decode(it->data + off, it->len - off, &r) != 0 || r.kind != 'Q')
        return;
    KR_GROW_MIN(cl->serves, cl->serves_cap, cl->nserves + 1, 16);
    struct kr_cl_serve *s = &cl->serves[cl->nserves++];
    memset(s, 0, sizeof(*s));
    s->tag = it->seq >> 32;
    s->acks_left = (uint32_t)it->seq;
    s->asker = r.origin;
    s->asker_tag = r.tag;
    s->started_ms = kr_cl_now_ms();
    s->topics = kr_xmalloc(r.pairs_len ? r.pairs_len : 1);
    memcpy(s->topics, r.pairs, r.pairs_len);
    s->topics_len = r.pairs_len;
    s->ntopics = r.ntopics;
    s->nmarks = nmarks;
    s->mark_origin = kr_xmalloc((nmarks ? nmarks : 1) * sizeof(uint64_t));
    s->mark_seq = kr_xmalloc((nmarks ? nmarks : 1) * sizeof(uint64_t));
    for (uint32_t i = 0; i < nmarks; i++) {
        memcpy(&s->mark_origin[i], it->data + 4 + 16 * (size_t)i, 8);
        memcpy(&s->mark_seq[i], it->data + 12 + 16 * (size_t)i, 8);
    }
    if (s->acks_left == 0) { /* not a position of this start (or no topic): nothing covered */
        kr_cl_serve_send(cl, s, r.ntopics != 0);
        KR_CL_INC(cl, resumes_served, 1);
        kr_cl_serve_free(s);
        cl->nserves--;
    }
}

void kr_cl_answer_item(struct kr_cluster *cl, const struct kr_cl_item *it)
{
    kr_cl_ask_chunk(cl, it->data, it->len);
}

static struct kr_cl_serve *kr_cl_serve_find(struct kr_cluster *cl, uint64_t tag, size_t *idx)
{
    for (size_t i = 0; i < cl->nserves; i++)
        if (cl->serves[i].tag == tag) {
            *idx = i;
            return &cl->serves[i];
        }
    return NULL;
}

void kr_cl_history_event(struct kr_cluster *cl, struct kr_event *ev)
{
    if (ev->type == KR_EV_ACK && ev->aux == KR_EV_CHECK) { /* one of this node's resumes */
        kr_cl_ask_checked(cl, ev);
        return;
    }
    size_t idx = 0;
    struct kr_cl_serve *s = kr_cl_serve_find(cl, ev->conn, &idx);
    if (!s) { /* its item was queued before the shards were asked: take it now */
        kr_cl_items(cl, kr_cl_now_ms());
        s = kr_cl_serve_find(cl, ev->conn, &idx);
    }
    if (ev->type == KR_EV_REPLAY) {
        struct kr_topicset ts = kr_topicset_from_word(ev->mask);
        if (!s) {
            kr_topicset_release(&ts, kr_msg_ntopics(ev->ptr));
            kr_msg_unref(ev->ptr);
            return;
        }
        KR_GROW_MIN(s->parts, s->parts_cap, s->nparts + 1, 64);
        s->parts[s->nparts++] = (struct kr_cl_part){.msg = ev->ptr, .topics = ts};
        return;
    }
    /* the ACK: this shard's uncovered topics */
    struct kr_router_cmd *c = ev->ptr;
    if (s && c->resync) {
        uint32_t pos = 0, len;
        const char *t;
        while (kr_router_cmd_next(c->resync, &pos, &t, &len)) {
            KR_GROW_MIN(s->unc, s->unc_cap, s->unc_len + 4 + len, 256);
            s->unc_len += kr_cl_pair(s->unc + s->unc_len, t, len);
            s->nunc++;
        }
    }
    kr_router_cmd_free(c);
    if (s && --s->acks_left == 0)
        kr_cl_serve_complete(cl, idx);
}

void kr_cl_resume_tick(struct kr_cluster *cl, uint64_t now)
{
    for (size_t i = 0; i < cl->nasks;) {
        if (now < cl->asks[i].deadline_ms) {
            i++;
            continue;
        }
        KR_CL_INC(cl, resume_unanswered, 1);
        uint64_t suppressed = 0;
        static struct kr_log_ratelimit rl;
        char note[64];
        if (kr_log_enabled(KR_LOG_WARN) && kr_log_ratelimit(&rl, 10, 10000, &suppressed))
            KR_WARN("cluster: node %016" PRIx64 " did not answer a resume within "
                    "cluster_resume_timeout_ms; its topics are told to resync%s",
                    ((struct kr_router_cmd *)cl->asks[i].ev.ptr)->remote->node,
                    kr_log_suppressed_note(suppressed, note, sizeof(note)));
        kr_cl_ask_done(cl, &cl->asks[i], true);
        free(cl->asks[i].wait); /* timed out before its question went */
        cl->asks[i] = cl->asks[--cl->nasks];
    }
    for (size_t i = 0; i < cl->nserves;) {
        if (cl->serves[i].complete && kr_cl_serve_try(cl, i, now))
            continue; /* i now holds another one */
        i++;
    }
}

void kr_cl_resume_free(struct kr_cluster *cl)
{
    for (size_t i = 0; i < cl->nasks; i++) {
        kr_router_cmd_free(cl->asks[i].ev.ptr);
        free(cl->asks[i].wait);
    }
    free(cl->asks);
    for (size_t i = 0; i < cl->nserves; i++)
        kr_cl_serve_free(&cl->serves[i]);
    free(cl->serves);
    free(cl->r_topics);
    free(cl->r_lens);
}
