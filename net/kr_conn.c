/* Connections on a net thread: replies in request order, the waiting-poll lists, the
 * delivery callbacks, close, the parse loop with its per-connection turns, and the hand-off
 * of events to the router shards (the sockets themselves: kr_sock.c). Net thread only. */
#include "kr_net_int.h"

#include <ck_pr.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <urcu/list.h>
#include <uv.h>

static void kr_conn_release_parked(struct kr_conn *c);
static bool kr_nt_send_to(void *arg, uint32_t dest, const struct kr_event *ev);
static void kr_nt_send_disconnect(struct kr_nt *nt, uint64_t id);
static void kr_conn_stash(struct kr_conn *c, const char *p, size_t n);
static bool kr_conn_unpark(struct kr_conn *c);
static bool kr_conn_out_full(const struct kr_conn *c);
static size_t kr_conn_parse(struct kr_conn *c, const char *buf, size_t len);
static void kr_conn_yield(struct kr_conn *c);

/* Reply with an error line, count and log it, and close once the reply is out. */
void kr_conn_fail(struct kr_conn *c, const char *reply)
{
    struct kr_nt *nt = c->nt;
    KR_ST_INC(nt, protocol_errors, 1);
    uint64_t suppressed = 0;
    if (kr_log_enabled(KR_LOG_WARN) &&
        kr_log_ratelimit(&nt->rl_errors, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed)) {
        size_t n = strlen(reply);
        char more[48] = "";
        if (suppressed)
            snprintf(more, sizeof(more), " (suppressed %llu similar)", (unsigned long long)suppressed);
        KR_WARN("client %s (id %llu): %.*s; closing%s", kr_conn_peer(c), (unsigned long long)c->id,
                (int)(n >= 2 ? n - 2 : n), reply, more);
    }
    if (c->rq_count) {
        c->deferred_err = reply; /* sent once the earlier requests are answered */
        return;
    }
    kr_out_str(c, reply);
    c->close_after_write = true;
}

/* The frontend's last words for `kind` (the queue overflowed, the drain's deadline), then
 * the close: after the replies that wait on the router, if any. */
void kr_conn_error(struct kr_conn *c, enum kr_error_kind kind)
{
    const char *line = c->fe->error_line(kind);
    if (c->rq_count) { /* after the replies that wait on the router */
        c->deferred_err = line;
        return;
    }
    kr_out_str(c, line);
    c->close_after_write = true;
}

/* ---------------------------------------------------------------- replies in order */

struct kr_reply_wait *kr_rq_at(struct kr_conn *c, uint32_t reqno)
{
    uint32_t i = reqno - c->rq_base;
    if (i >= c->rq_count)
        return NULL;
    return &c->rq[(c->rq_head + i) & (c->rq_cap - 1)];
}

uint32_t kr_rq_push(struct kr_conn *c, const struct kr_reply_wait *w)
{
    if (c->rq_count == c->rq_cap) {
        uint32_t ncap = c->rq_cap ? c->rq_cap * 2 : 4;
        struct kr_reply_wait *n = kr_xrealloc(NULL, ncap * sizeof(*n));
        for (uint32_t i = 0; i < c->rq_count; i++)
            n[i] = c->rq[(c->rq_head + i) & (c->rq_cap - 1)];
        free(c->rq);
        c->rq = n;
        c->rq_cap = ncap;
        c->rq_head = 0;
    }
    c->rq[(c->rq_head + c->rq_count) & (c->rq_cap - 1)] = *w;
    c->rq_count++;
    return c->rq_base + c->rq_count - 1;
}

/* Send every reply at the head that is ready, then a held error. */
void kr_rq_emit(struct kr_conn *c)
{
    while (c->rq_count) {
        struct kr_reply_wait *w = &c->rq[c->rq_head];
        if (w->acks_left || w->sent_gate || kr_conn_link_acked(c) < w->link_need)
            break;
        struct kr_reply r = {.kind = KR_REPLY_DONE, .bytes = w->bytes, .len = w->len};
        if (w->count) {
            r.kind = KR_REPLY_RECEIVERS;
            r.receivers = w->receivers;
        } else if (w->retro && c->dlv.retro_not_found) {
            c->dlv.retro_not_found = false;
            r.kind = KR_REPLY_NOT_FOUND;
        }
        if (!w->noreply)
            c->fe->reply(c, &r);
        free(w->bytes);
        c->rq_head = (c->rq_head + 1) & (c->rq_cap - 1);
        c->rq_count--;
        c->rq_base++;
    }
    if (c->rq_count == 0 && c->deferred_err) {
        kr_out_str(c, c->deferred_err);
        c->deferred_err = NULL;
        c->close_after_write = true;
    }
}

/* ---------------------------------------------------------------- connections */

struct kr_conn *kr_nt_conn(struct kr_nt *nt, uint64_t id)
{
    uint32_t slot = kr_conn_id_slot(id);
    uint32_t gen = kr_conn_id_gen(id);
    if (slot >= nt->nslots)
        return NULL;
    struct kr_conn *c = nt->slots[slot];
    if (!c || nt->gens[slot] != gen || c->closing)
        return NULL;
    return c;
}

void kr_conn_block(struct kr_conn *c)
{
    if (!c->blocked) {
        c->blocked = true;
        c->blocked_next = c->nt->blocked_head;
        c->nt->blocked_head = c;
    }
}

/* ---------------------------------------------------------------- waiting polls
 * A `get messages` that finds nothing queued is not answered `END` at once when
 * poll_wait_ms > 0 and nothing follows it in the client's input: it waits on the net
 * thread's held list. The first message queued for the client moves it to the ready list,
 * answered after the loop iteration's callbacks (so one reply carries everything that
 * arrived in that iteration); poll_timer answers `END` to polls that waited poll_wait_ms.
 * New input from the client answers its poll first, so replies stay in request order. */

void kr_pw_push(struct kr_pw_list *l, struct kr_conn *c)
{
    cds_list_add_tail(&c->pw_node, &l->list);
    l->count++;
}

void kr_pw_unlink(struct kr_pw_list *l, struct kr_conn *c)
{
    cds_list_del(&c->pw_node);
    l->count--;
}

/* The connection that has waited longest; NULL when none. */
struct kr_conn *kr_pw_first(struct kr_pw_list *l)
{
    return l->count ? cds_list_first_entry(&l->list, struct kr_conn, pw_node) : NULL;
}

/* Take the connection off whichever wait list it is on. */
void kr_poll_unwait(struct kr_conn *c)
{
    if (c->poll_wait == KR_PW_NONE)
        return;
    kr_pw_unlink(c->poll_wait == KR_PW_HELD ? &c->nt->held : &c->nt->ready, c);
    c->poll_wait = KR_PW_NONE;
}

/* A poll that found nothing complete: it waits on the held list until a message arrives
 * (kr_poll_wake) or `wait_ms` passed; with 0 it is answered after this loop iteration,
 * once kr_nt_check_cb took what the shards sent meanwhile (a request handler never drains
 * the mailboxes itself). */
void kr_poll_hold(struct kr_conn *c, uint64_t wait_ms)
{
    struct kr_nt *nt = c->nt;
    c->poll_wait = KR_PW_HELD;
    c->poll_since_ms = uv_now(&nt->loop);
    kr_pw_push(&nt->held, c);
    /* armed for the oldest wait; re-armed when poll_wait_ms was lowered meanwhile */
    if (wait_ms && (!uv_is_active((uv_handle_t *)&nt->poll_timer) ||
                    uv_timer_get_due_in(&nt->poll_timer) > wait_ms))
        uv_timer_start(&nt->poll_timer, kr_nt_poll_timer_cb, wait_ms, 0);
}

/* Answer a connection that asked for it (kr_frontend.answer): the same overflow answer for
 * every protocol, nothing after its last words. */
void kr_conn_answer(struct kr_conn *c)
{
    kr_poll_unwait(c);
    if (c->close_after_write || c->deferred_err)
        return; /* its last words are said */
    if (c->dlv.overflowed) {
        kr_conn_error(c, KR_ERR_QUEUE_OVERFLOW);
        return;
    }
    c->fe->answer(c);
}

/* Something arrived for a waiting poll: answer it after this loop iteration. */
void kr_poll_wake(struct kr_conn *c)
{
    if (c->poll_wait != KR_PW_HELD)
        return;
    kr_pw_unlink(&c->nt->held, c);
    kr_pw_push(&c->nt->ready, c);
    c->poll_wait = KR_PW_READY;
}

/* ---------------------------------------------------------------- delivery assembly
 * The connection side of kr_deliver.h: the callbacks of the net thread's kr_dlv_ctx and
 * the wrappers the other net files use. */

#define KR_DLV_CONN(d) ((struct kr_conn *)((char *)(d) - offsetof(struct kr_conn, dlv)))

static void kr_dlv_queued_cb(struct kr_dlv_ctx *x, struct kr_dlv *d)
{
    (void)x;
    struct kr_conn *qc = KR_DLV_CONN(d);
    qc->fe->queued(qc);
}

static bool kr_dlv_push_cb(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_msg *m,
                           const struct kr_topicset *topics)
{
    (void)x;
    struct kr_conn *c = KR_DLV_CONN(d);
    return c->fe->push && c->fe->push(c, m, topics);
}

static void kr_dlv_overflow_cb(struct kr_dlv_ctx *x, struct kr_dlv *d, uint32_t count,
                               uint64_t bytes)
{
    struct kr_nt *nt = x->owner;
    struct kr_conn *c = KR_DLV_CONN(d);
    uint64_t suppressed = 0;
    if (kr_log_enabled(KR_LOG_WARN) &&
        kr_log_ratelimit(&nt->rl_overflow, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
        KR_WARN("client %s (id %llu): queue overflow (%u messages, %llu bytes); discarding its "
                "queue, it will be told and disconnected (suppressed %llu similar)",
                kr_conn_peer(c), (unsigned long long)c->id, count, (unsigned long long)bytes,
                (unsigned long long)suppressed);
    c->fe->queued(c); /* a waiting poll (or the pushes) is answered with the error */
}

static void kr_dlv_collapsed_cb(struct kr_dlv_ctx *x, struct kr_dlv *d, uint32_t count,
                                uint32_t ntopics)
{
    struct kr_nt *nt = x->owner;
    struct kr_conn *c = KR_DLV_CONN(d);
    uint64_t suppressed = 0;
    if (kr_log_enabled(KR_LOG_WARN) &&
        kr_log_ratelimit(&nt->rl_overflow, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed)) {
        char named[32];
        if (ntopics)
            snprintf(named, sizeof(named), "%u topics", ntopics);
        else
            snprintf(named, sizeof(named), "every topic (*)");
        KR_WARN("client %s (id %llu): its queue would overflow; %u messages replaced by a resync "
                "notice naming %s; it stays connected (suppressed %llu similar)",
                kr_conn_peer(c), (unsigned long long)c->id, count, named, (unsigned long long)suppressed);
    }
}

static void kr_dlv_mem_check_cb(struct kr_dlv_ctx *x)
{
    kr_nt_memory_check(x->owner);
}

/* Set up the net thread's delivery context (limits from nt->live, refreshed by
 * kr_nt_refresh_live). Control thread, before the net thread runs. */
void kr_nt_dlv_init(struct kr_nt *nt)
{
    struct kr_dlv_ctx *x = &nt->dlv;
    x->net = nt->idx;
    x->max_queued_messages = nt->live.max_queued_messages;
    x->max_queued_bytes = nt->live.max_queued_bytes;
    x->ctr.queued_messages = &nt->st.queued_messages;
    x->ctr.queued_bytes = &nt->st.queued_bytes;
    x->ctr.deliveries_queued = &nt->st.deliveries_queued;
    x->ctr.queue_overflows = &nt->st.queue_overflows;
    x->ctr.messages_replayed = &nt->st.messages_replayed;
    x->ctr.resync_notices = &nt->st.resync_notices;
    x->ctr.resync_topics = &nt->st.resync_topics;
    x->ctr.queue_collapses = &nt->st.queue_collapses;
    x->resync_max_topics = nt->srv->cfg->resync_max_topics;
    x->collapsed = kr_dlv_collapsed_cb;
    x->mem_check = kr_dlv_mem_check_cb;
    x->queued = kr_dlv_queued_cb;
    x->overflow = kr_dlv_overflow_cb;
    x->push = kr_dlv_push_cb;
    x->owner = nt;
}

void kr_conn_queue_clear(struct kr_conn *c)
{
    kr_dlv_clear(&c->nt->dlv, &c->dlv);
}

uint32_t kr_conn_ready_entries(struct kr_conn *c, uint64_t *bytes)
{
    return kr_dlv_ready(&c->dlv, c->nt->live.max_poll_reply_bytes, bytes);
}

/* Nothing is queued for the connection and nothing more can arrive for it. */
bool kr_conn_queue_final_empty(const struct kr_conn *c)
{
    return c->drain == KR_DR_POLL && kr_dlv_empty(&c->dlv);
}

size_t kr_conn_mem(const struct kr_conn *c)
{
    return sizeof(*c) + c->in_cap + c->out_cap + (size_t)c->refs_cap * sizeof(*c->refs) +
           c->wbuf_off + c->wbuf_len +
           (size_t)c->rq_cap * sizeof(*c->rq) +
           (c->rare ? sizeof(*c->rare) + c->rare->last_token_len : 0) +
           kr_dlv_mem(&c->dlv, c->nt->dlv.nshards) + (c->fe->mem ? c->fe->mem(c) : 0);
}

void kr_conn_trim(struct kr_conn *c)
{
    if (c->closing || c->writing || c->in_len || c->rq_count)
        return;
    free(c->in); /* kept after a request that arrived in pieces */
    c->in = NULL;
    c->in_cap = 0;
    if (!c->out_len && !c->nrefs) {
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
        free(c->refs);
        c->refs = NULL;
        c->refs_cap = 0;
    }
    free(c->rq);
    c->rq = NULL;
    c->rq_cap = 0;
    c->rq_head = 0;
    kr_dlv_trim(&c->dlv);
    if (c->fe->trim)
        c->fe->trim(c);
}

void kr_conn_overflow(struct kr_conn *c)
{
    kr_dlv_overflow(&c->nt->dlv, &c->dlv);
}

struct kr_conn_rare *kr_conn_rare(struct kr_conn *c)
{
    if (!c->rare)
        c->rare = kr_xcalloc(1, sizeof(*c->rare));
    return c->rare;
}

uint64_t kr_conn_link_acked(const struct kr_conn *c)
{
    return c->rare ? c->rare->link_acked : 0;
}

uint64_t kr_conn_link_sent(const struct kr_conn *c)
{
    return c->rare ? c->rare->link_sent : 0;
}

/* Free a closed connection. */
static void kr_conn_free(struct kr_conn *c)
{
    if (c->fe->close)
        c->fe->close(c);
    free(c->in);
    kr_out_refs_release(c);
    free(c->refs);
    free(c->out);
    free(c->wbuf);
    kr_dlv_free(&c->dlv);
    kr_outbox_destroy(&c->ob, NULL, NULL); /* emptied by kr_conn_close */
    for (uint32_t i = 0; i < c->rq_count; i++)
        free(c->rq[(c->rq_head + i) & (c->rq_cap - 1)].bytes);
    free(c->rq);
    if (c->rare)
        free(c->rare->last_token);
    free(c->rare);
    free(c);
}

static void kr_conn_release_event(void *arg, uint32_t dest, struct kr_event *ev)
{
    (void)arg;
    (void)dest;
    if (ev->type == KR_EV_PUBLISH)
        kr_msg_unref(ev->ptr);
    else if (ev->type == KR_EV_SUBSCRIBE || ev->type == KR_EV_UNSUBSCRIBE)
        free(ev->ptr);
}

static void kr_conn_release_parked(struct kr_conn *c)
{
    kr_outbox_clear(&c->ob, kr_conn_release_event, NULL);
}

void kr_nt_outbox_init(struct kr_nt *nt)
{
    /* the destinations are the shards and KR_DEST_LINK: one order, no wake-ups (the loop's
     * check callback wakes what it pushed to: kr_router_flush, kr_cluster_flush), so an
     * outbox never indexes by destination */
    uint32_t nshards = kr_router_nshards(nt->srv->router);
    nt->conn_sink = (struct kr_outbox_sink){.ndest = nshards, .send = kr_nt_send_to, .arg = nt,
                                            .parks = &nt->st.ring_full_waits};
    nt->ctl_sink = (struct kr_outbox_sink){.ndest = nshards, .send = kr_nt_send_to, .arg = nt};
    kr_outbox_init(&nt->ctl, &nt->ctl_sink, KR_OUTBOX_ALL);
}

static void kr_nt_release_ctl(void *arg, uint32_t dest, struct kr_event *ev)
{
    (void)arg;
    (void)dest;
    if (ev->type == KR_EV_UNSUBSCRIBE) /* drain barriers never sent */
        free(ev->ptr);
}

void kr_nt_outbox_destroy(struct kr_nt *nt)
{
    kr_outbox_destroy(&nt->ctl, kr_nt_release_ctl, NULL);
}

void kr_nt_ctl_push(struct kr_nt *nt, uint32_t shard, const struct kr_event *ev)
{
    kr_outbox_push(&nt->ctl, shard, ev);
}

bool kr_nt_ctl_unpark(struct kr_nt *nt)
{
    return kr_outbox_unpark(&nt->ctl);
}

/* Tell every shard to forget the client. Never lost: when a ring is full the event waits
 * on the net thread and is retried after each loop iteration. */
static void kr_nt_send_disconnect(struct kr_nt *nt, uint64_t id)
{
    struct kr_event ev = {.type = KR_EV_DISCONNECT, .src = (uint16_t)nt->idx, .conn = id};
    for (uint32_t s = 0; s < kr_router_nshards(nt->srv->router); s++)
        kr_nt_ctl_push(nt, s, &ev);
}

void kr_conn_close(struct kr_conn *c)
{
    if (c->closing)
        return;
    struct kr_nt *nt = c->nt;
    kr_cmd_resume_done(c); /* a resume in progress gives its slot back */
    c->closing = true;
    kr_conn_out_account(c); /* its unsent bytes no longer count */
    kr_poll_unwait(c);
    kr_conn_release_parked(c);
    kr_conn_queue_clear(c);
    if (c->subscribed)
        kr_nt_send_disconnect(nt, c->id);
    nt->slots[c->slot] = NULL;
    nt->free_slots[nt->nfree++] = c->slot;
    KR_ST_DEC(nt, curr_connections, 1);
    ck_pr_dec_32(&nt->srv->nconns);
    if (c->blocked) {
        /* unlink from the blocked list */
        struct kr_conn **pp = &nt->blocked_head;
        while (*pp && *pp != c)
            pp = &(*pp)->blocked_next;
        if (*pp)
            *pp = c->blocked_next;
        c->blocked = false;
    }
    close(c->fd); /* which also takes it out of the epoll set */
    c->blocked_next = nt->closed; /* freed before the next poll: callers may still hold it */
    nt->closed = c;
}

void kr_nt_free_closed(struct kr_nt *nt)
{
    while (nt->closed) {
        struct kr_conn *c = nt->closed;
        nt->closed = c->blocked_next;
        kr_conn_free(c);
    }
}

/* Append bytes to the connection's unparsed input. */
static void kr_conn_stash(struct kr_conn *c, const char *p, size_t n)
{
    KR_GROW_MIN(c->in, c->in_cap, c->in_len + n, 1024);
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
}

/* ---------------------------------------------------------------- router hand-off */

/* To a shard, or (KR_DEST_LINK) to the cluster link: the send of the net thread's outboxes. */
static bool kr_nt_send_to(void *arg, uint32_t dest, const struct kr_event *ev)
{
    struct kr_nt *nt = arg;
    if (dest == KR_DEST_LINK)
        return kr_cluster_send(nt->srv->cluster, nt->idx, ev);
    return kr_router_send(nt->srv->router, nt->idx, dest, ev);
}

/* Send now when nothing is parked ahead of it and the ring has room, else park it (counted
 * in ring_full_waits). */
void kr_conn_send(struct kr_conn *c, uint32_t shard, const struct kr_event *ev)
{
    kr_outbox_push(&c->ob, shard, ev);
}

uint32_t kr_conn_nparked(const struct kr_conn *c)
{
    return kr_outbox_parked(&c->ob);
}

/* Hand parked events to the shards; when all went, the publish that waited is answered. */
static bool kr_conn_unpark(struct kr_conn *c)
{
    if (!kr_conn_nparked(c))
        return true;
    if (!kr_outbox_unpark(&c->ob))
        return false;
    if (c->rq_count) /* only the newest request can have parked events */
        c->rq[(c->rq_head + c->rq_count - 1) & (c->rq_cap - 1)].sent_gate = false;
    kr_rq_emit(c);
    return true;
}

/* May the next request be parsed now? */
bool kr_conn_can_parse(struct kr_conn *c)
{
    return !c->closing && !c->close_after_write && !kr_conn_nparked(c) && !c->dlv.retro_active &&
           !c->deferred_err && !c->poll_wait && c->rq_count < KR_MAX_PIPELINED &&
           kr_conn_out_pending(c) < KR_OUT_HIGH; /* a reader that lags gets no more replies */
}

/* Replies wait for the socket beyond KR_OUT_HIGH; while a write is in flight, anything
 * more waits for it. Requests are not run meanwhile (a client that does not read cannot
 * make the server buffer more replies for it), and its socket is not read. */
static bool kr_conn_out_full(const struct kr_conn *c)
{
    return c->out_len + c->refs_bytes + (c->writing ? KR_OUT_HIGH : 0) > KR_OUT_HIGH;
}

/* Parse and handle as many requests as possible from buf; returns bytes consumed.
 * One call is one turn: after KR_TURN_REQUESTS requests or KR_TURN_OUT_BYTES of replies
 * (or once the replies wait for the socket) it stops with c->turn_over set, and the rest
 * runs in a later loop iteration, after other clients were served. */
static size_t kr_conn_parse(struct kr_conn *c, const char *buf, size_t len)
{
    size_t off = 0, out0 = c->out_len;
    uint32_t done = 0;
    bool partial = false;
    while (off < len && kr_conn_can_parse(c)) {
        if (done >= KR_TURN_REQUESTS || (c->out_len > out0 && c->out_len - out0 >= KR_TURN_OUT_BYTES) ||
            kr_conn_out_full(c)) {
            c->turn_over = true;
            break;
        }
        if (c->need && len - off < c->need) {
            partial = true;
            break;
        }
        if (!c->fe_chosen) {
            /* the first byte decides the protocol on the main port: memcached requests never
             * start with '*' */
            c->fe_chosen = true;
            if (buf[off] == '*')
                c->fe = &kr_front_resp;
        }
        if (c->dlv.overflowed) {
            /* the overflow answer, the same for every request of every protocol */
            kr_conn_error(c, KR_ERR_QUEUE_OVERFLOW);
            off = len;
            break;
        }
        size_t need = 0;
        ssize_t used = c->fe->request(c, buf + off, len - off, c->rq_count > 0, &need);
        if (used == KR_FE_NEED_MORE) {
            c->need = need;
            partial = true;
            break;
        }
        c->need = 0;
        if (used == KR_FE_FAILED) {
            off = len;
            break;
        }
        if (used == KR_FE_LATER)
            break; /* asked again once the earlier replies are out */
        off += (size_t)used;
        done++;
    }
    /* only complete requests are activity; a request's bytes must all arrive within
     * request_timeout_ms of its first (an earlier one still waiting in the input gives the
     * later one more time, never less) */
    if (done || partial) {
        uint64_t now = kr_now_ms();
        if (done)
            c->last_active_ms = now;
        if (partial && (done || !c->partial_since_ms))
            c->partial_since_ms = now;
    }
    if (!partial)
        c->partial_since_ms = 0;
    return off;
}

/* Give the connection another turn in a later loop iteration (kr_nt_turn_cb). */
static void kr_conn_yield(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    if (c->on_turns)
        return;
    KR_GROW_MIN(nt->turns, nt->turns_cap, nt->nturns + 1, 64);
    nt->turns[nt->nturns++] = c->id;
    c->on_turns = true;
    if (nt->nturns == 1)
        uv_idle_start(&nt->turn_idle, kr_nt_turn_cb); /* the loop polls without blocking */
}

/* Work through stashed input; called after reads and whenever a wait ends. */
void kr_conn_process(struct kr_conn *c)
{
    if (c->closing)
        return;
    kr_rq_emit(c);
    if (kr_conn_unpark(c) && c->in_len && kr_conn_can_parse(c) && !c->turn_over) {
        size_t used = kr_conn_parse(c, c->in, c->in_len);
        if (used) {
            memmove(c->in, c->in + used, c->in_len - used);
            c->in_len -= used;
        }
        if (c->in_len == 0 && c->in_cap > 64 * 1024) {
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
    }
    if (c->closing)
        return;
    if (kr_conn_nparked(c))
        kr_conn_block(c);
    /* keep reading while replies wait on the router or for a turn, up to a bounded amount
     * of input */
    bool stuck = kr_conn_nparked(c) || (!kr_conn_can_parse(c) && c->in_len >= 256 * 1024) ||
                 ((c->rq_count || c->turn_over) && c->in_len >= 256 * 1024);
    bool out_full = kr_conn_out_full(c);
    if (stuck || out_full || c->close_after_write)
        kr_conn_pause(c);
    else
        kr_conn_resume(c);
    /* a connection that continues in its next turn writes once it has a turn's worth of
     * replies (one write per turn would cost more than cheap requests themselves) */
    if (!c->turn_over || c->close_after_write || out_full || c->out_len >= KR_TURN_OUT_BYTES)
        kr_conn_flush(c);
    if (c->closing)
        return;
    if (c->writing) {
        c->turn_over = false; /* kr_conn_write_done continues once the socket took the replies */
    } else if (out_full) {
        /* everything was written at once: no write waits to continue it */
        if (c->in_len && kr_conn_can_parse(c))
            c->turn_over = true;
        else if (!stuck && !c->close_after_write && !c->turn_over)
            kr_conn_resume(c);
    }
    if (c->turn_over)
        kr_conn_yield(c);
}

void kr_conn_got(struct kr_conn *c, const char *buf, size_t n)
{
    struct kr_nt *nt = c->nt;
    kr_nt_refresh_live(nt);
    KR_ST_INC(nt, bytes_read, (uint64_t)n);
    if (c->close_after_write)
        return; /* discard input after a final reply */
    if (c->poll_wait)
        kr_conn_answer(c); /* its reply goes before those of the new requests */
    if (c->in_len == 0 && kr_conn_can_parse(c)) {
        /* fast path: parse straight from the shared read buffer */
        size_t used = kr_conn_parse(c, buf, n);
        if (!c->closing && used < n && !c->close_after_write)
            kr_conn_stash(c, buf + used, n - used);
    } else {
        kr_conn_stash(c, buf, n);
    }
    kr_conn_process(c);
}
