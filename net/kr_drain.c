/* The drain, on each net thread: a client reached by the drain is unsubscribed everywhere
 * behind a barrier, closed once it holds nothing, and told SERVER_ERROR shutting down at
 * the deadline. Net thread only. */
#include "kr_net_int.h"

static void kr_conn_drain_check(struct kr_conn *c);
static void kr_conn_drain_reach(struct kr_conn *c);

/* A poll of a client the drain reached was answered: the reply that empties its final
 * queue is its last one. */
void kr_conn_drain_replied(struct kr_conn *c)
{
    if (kr_conn_queue_final_empty(c) && !c->close_after_write) {
        if (c->fe->drained)
            c->fe->drained(c); /* its last words, e.g. its final position */
        c->close_after_write = true;
    }
}

/* ---------------------------------------------------------------- drain
 * When the drain reaches a client (kr_net_close_some), it is unsubscribed in every shard
 * and a barrier (an empty unsubscribe, acknowledged in mailbox order after every delivery
 * the shard made before) follows; once every shard acknowledged, nothing more can arrive
 * for it. Then a client with nothing queued is closed; one holding messages is closed
 * right after the poll reply that empties its queue (replies stay bounded by
 * max_poll_reply_bytes, so that may take several polls). At the drain's deadline
 * (kr_net_drain_deadline) a client still holding messages, or whose barrier is not
 * complete, is sent `SERVER_ERROR shutting down` and closed: never closed silently with
 * messages. */

/* The queue of a client the drain reached is final: close it when it is empty. */
static void kr_conn_drain_check(struct kr_conn *c)
{
    if (c->closing || c->close_after_write || !kr_conn_queue_final_empty(c))
        return;
    if (c->poll_wait)
        kr_conn_answer(c); /* END, and the close (kr_conn_drain_replied) */
    if (!c->close_after_write && c->fe->drained)
        c->fe->drained(c); /* its last words, e.g. its final position */
    c->close_after_write = true;
    kr_conn_pause(c);
    kr_conn_block(c); /* written and closed after this loop iteration */
}

void kr_conn_drain_acked(struct kr_conn *c)
{
    if (c->drain != KR_DR_BARRIER || --kr_conn_rare(c)->drain_acks)
        return;
    c->drain = KR_DR_POLL;
    kr_conn_drain_check(c);
}

/* The drain reached the client. */
static void kr_conn_drain_reach(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    KR_DEBUG("client %s (id %llu): drain reached it (%u messages queued)", kr_conn_peer(c),
             (unsigned long long)c->id, c->dlv.q.count);
    if (!c->subscribed) {
        c->drain = KR_DR_POLL; /* nothing can arrive for it */
        kr_conn_drain_check(c);
        return;
    }
    uint32_t nshards = kr_router_nshards(nt->srv->router);
    /* the shards drop its subscriptions below: the frontiers they announce from then on
     * pass messages on its topics it will not get, so its final position must not count
     * them (a resume from it elsewhere would skip those messages) */
    kr_dlv_cap_frontier(&nt->dlv, &c->dlv, nt->seen);
    c->drain = KR_DR_BARRIER;
    kr_conn_rare(c)->drain_acks = (uint16_t)nshards; /* at most 64 */
    struct kr_event ev = {.type = KR_EV_DISCONNECT, .src = (uint16_t)nt->idx, .conn = c->id};
    for (uint32_t s = 0; s < nshards; s++)
        kr_nt_ctl_push(nt, s, &ev);
    for (uint32_t s = 0; s < nshards; s++) {
        struct kr_router_cmd *cmd = kr_router_cmd_new(0);
        cmd->pad = KR_DRAIN_PAD;
        struct kr_event b = {.type = KR_EV_UNSUBSCRIBE, .src = (uint16_t)nt->idx, .conn = c->id,
                             .ptr = cmd};
        kr_nt_ctl_push(nt, s, &b);
    }
}

/* Behind everything this net thread handed the shards so far (publishes answered STORED
 * among them): once every net thread's barrier is acknowledged by every shard, their
 * deliveries are in the rings towards the subscribers' net threads, ahead of any
 * acknowledgement of a client's drain barrier sent later. */
void kr_net_drain_flush(struct kr_server *s, uint32_t net)
{
    struct kr_nt *nt = s->nts[net];
    uint32_t nshards = kr_router_nshards(s->router);
    for (uint32_t sh = 0; sh < nshards; sh++) {
        struct kr_router_cmd *cmd = kr_router_cmd_new(0);
        cmd->pad = KR_DRAIN_FLUSH_PAD;
        struct kr_event b = {.type = KR_EV_UNSUBSCRIBE, .src = (uint16_t)net,
                             .conn = kr_conn_id_make(net, 0, 0), .ptr = cmd};
        kr_nt_ctl_push(nt, sh, &b);
    }
}

uint32_t kr_net_close_some(struct kr_server *s, uint32_t net, uint32_t n)
{
    struct kr_nt *nt = s->nts[net];
    kr_nt_refresh_live(nt);
    uint32_t done = 0;
    for (uint32_t i = 0; i < nt->nslots && done < n; i++) {
        struct kr_conn *c = nt->slots[i];
        if (!c || c->closing || c->close_after_write || c->drain != KR_DR_NONE)
            continue;
        kr_conn_drain_reach(c);
        done++;
    }
    return done;
}

uint32_t kr_net_drain_deadline(struct kr_server *s, uint32_t net)
{
    struct kr_nt *nt = s->nts[net];
    uint32_t told = 0;
    for (uint32_t i = 0; i < nt->nslots; i++) {
        struct kr_conn *c = nt->slots[i];
        if (!c || c->closing || c->close_after_write)
            continue;
        bool holding = c->dlv.q.count || c->dlv.nstage || c->dlv.retro_active ||
                       (c->subscribed && c->drain != KR_DR_POLL);
        bool waited = c->poll_wait != KR_PW_NONE;
        kr_poll_unwait(c);
        if (holding) {
            told++;
            KR_ST_INC(nt, drain_errors, 1);
            uint64_t suppressed = 0;
            if (kr_log_enabled(KR_LOG_WARN) &&
                kr_log_ratelimit(&nt->rl_drain, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
                KR_WARN("client %s (id %llu): drain deadline with %u messages queued (%s); told "
                        "SERVER_ERROR shutting down (suppressed %llu similar)",
                        kr_conn_peer(c), (unsigned long long)c->id, c->dlv.q.count,
                        c->drain == KR_DR_POLL ? "not polled" : "shards did not confirm",
                        (unsigned long long)suppressed);
            kr_conn_queue_clear(c);
            kr_out_str(c, c->fe->error_line(KR_ERR_SHUTTING_DOWN));
        } else if (waited) {
            kr_out_str(c, "END\r\n"); /* its waiting poll */
        }
        c->close_after_write = true;
        kr_conn_pause(c);
        kr_conn_flush(c); /* closes now, or once the bytes in flight are written */
    }
    return told;
}
