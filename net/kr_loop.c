/* The net-thread loop (libuv): the live settings cache, events from the shards, the
 * wake-up, check, turn, waiting-poll and sweep callbacks, fanout warnings. Net thread only. */
#include "kr_net_int.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <ck_pr.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <urcu/urcu-memb.h>
#include <uv.h>

static void kr_nt_fanout_warn(struct kr_nt *nt, struct kr_msg *m, uint32_t fanout);
static void kr_nt_handle(struct kr_nt *nt, struct kr_event *ev);
static void kr_nt_unblock_all(struct kr_nt *nt);
static void kr_nt_answer_ready(struct kr_nt *nt);

void kr_net_live(const struct kr_server *s, struct kr_net_live *out)
{
    urcu_memb_read_lock();
    const struct kr_cfg *c = kr_cfg_live();
    if (!c)
        c = s->cfg; /* no snapshot published: the start configuration */
#define KR_NET_LIVE_COPY(type, name, cfg_field)                                          \
    _Static_assert(__builtin_types_compatible_p(type, __typeof__(c->cfg_field)),         \
                   "KR_NET_LIVE: " #name " has the type of kr_cfg." #cfg_field);         \
    out->name = c->cfg_field;
    KR_NET_LIVE(KR_NET_LIVE_COPY)
#undef KR_NET_LIVE_COPY
    urcu_memb_read_unlock();
}

/* Refresh the net thread's cached live settings when a new snapshot was published: one
 * relaxed load per read batch or wake-up, no lock per delivery. */
void kr_nt_refresh_live(struct kr_nt *nt)
{
    uint64_t gen = kr_cfg_live_generation();
    if (gen != nt->live_gen) {
        kr_net_live(nt->srv, &nt->live);
        nt->dlv.max_queued_messages = nt->live.max_queued_messages;
        nt->dlv.max_queued_bytes = nt->live.max_queued_bytes;
        nt->live_gen = gen;
    }
}

/* Keep a warning for the monitoring listener (kr_server_recent_warnings). */
static void kr_nt_warn_record(struct kr_nt *nt, const char *peer, uint64_t publisher,
                              uint32_t fanout, uint32_t ntop, const char *t0, uint32_t l0,
                              const char *t1, uint32_t l1, uint64_t suppressed)
{
    struct kr_net_warning w = {.time_ms = 0, .publisher = publisher, .fanout = fanout,
                               .ntopics = ntop, .suppressed = suppressed};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    w.time_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    snprintf(w.peer, sizeof(w.peer), "%s", peer);
    snprintf(w.topics, sizeof(w.topics), "%.*s%s%.*s", (int)(l0 > 64 ? 64 : l0), t0,
             ntop > 1 ? " " : "", (int)(l1 > 64 ? 64 : l1), t1);
    struct kr_server *s = nt->srv;
    pthread_mutex_lock(&s->warn_mu);
    s->warnings[s->nwarnings++ % KR_NET_WARNINGS] = w;
    pthread_mutex_unlock(&s->warn_mu);
}

uint32_t kr_server_recent_warnings(struct kr_server *s, struct kr_net_warning *out, uint32_t max)
{
    uint32_t n = 0;
    pthread_mutex_lock(&s->warn_mu);
    for (uint64_t i = s->nwarnings; i > 0 && n < max && s->nwarnings - i < KR_NET_WARNINGS; i--)
        out[n++] = s->warnings[(i - 1) % KR_NET_WARNINGS];
    pthread_mutex_unlock(&s->warn_mu);
    return n;
}

static void kr_nt_fanout_warn(struct kr_nt *nt, struct kr_msg *m, uint32_t fanout)
{
    KR_ST_INC(nt, fanout_warnings, 1);
    uint64_t suppressed = 0;
    if (!kr_log_ratelimit(&nt->rl_fanout, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
        return;
    struct kr_conn *pub = kr_nt_conn(nt, kr_msg_publisher(m));
    uint32_t ntop = kr_msg_ntopics(m), l0 = 0, l1 = 0;
    const char *t0 = ntop > 0 ? kr_msg_topic(m, 0, &l0) : "";
    const char *t1 = ntop > 1 ? kr_msg_topic(m, 1, &l1) : "";
    const char *peer = pub ? kr_conn_peer(pub) : "(disconnected)";
    kr_nt_warn_record(nt, peer, kr_msg_publisher(m), fanout, ntop, t0, l0, t1, l1, suppressed);
    if (!kr_log_enabled(KR_LOG_WARN))
        return;
    KR_WARN("publish from %s (id %llu) fanned out to %u clients, %u topics, first topics: %.*s%s%.*s "
            "(suppressed %llu similar)",
            peer, (unsigned long long)kr_msg_publisher(m), fanout, ntop,
            (int)(l0 > 200 ? 200 : l0), t0, ntop > 1 ? " " : "", (int)(l1 > 200 ? 200 : l1), t1,
            (unsigned long long)suppressed);
}

static void kr_nt_handle(struct kr_nt *nt, struct kr_event *ev)
{
    switch (ev->type) {
    case KR_EV_DELIVER:
    case KR_EV_REPLAY: {
        struct kr_conn *c = kr_nt_conn(nt, ev->conn);
        kr_dlv_deliver(&nt->dlv, c ? &c->dlv : NULL, ev, ev->type == KR_EV_REPLAY);
        break;
    }
    case KR_EV_END: {
        struct kr_msg *m = ev->ptr;
        uint32_t fanout;
        if (kr_dlv_end(&nt->dlv, m, ev->aux, &fanout)) {
            uint32_t warn = nt->live.fanout_warn;
            if (warn && fanout >= warn && KR_CONN_NET(kr_msg_publisher(m)) == nt->idx)
                kr_nt_fanout_warn(nt, m, fanout);
        }
        kr_msg_unref(m);
        break;
    }
    case KR_EV_FANOUT_WARN:
        kr_nt_fanout_warn(nt, ev->ptr, ev->aux);
        kr_msg_unref(ev->ptr);
        break;
    case KR_EV_KICK: { /* the cluster link may have lost messages for it: told (a resync
                        * notice, or the overflow error and the close) */
        struct kr_conn *c = kr_nt_conn(nt, ev->conn);
        struct kr_router_cmd *named = ev->ptr;
        if (c && !c->dlv.overflowed && !c->closing) {
            KR_ST_INC(nt, cluster_resyncs, 1);
            if (c->dlv.resync) { /* opted in: told which topics, stays connected */
                uint32_t pos = 0, len;
                const char *t;
                while (named && kr_router_cmd_next(named, &pos, &t, &len))
                    kr_dlv_notice(&nt->dlv, &c->dlv, t, len);
                if (!named)
                    kr_dlv_notice(&nt->dlv, &c->dlv, NULL, 0);
            } else {
                kr_conn_overflow(c);
            }
        }
        kr_router_cmd_free(named);
        break;
    }
    case KR_EV_FORWARDED: { /* a flushed publish's entry is in the NATS server's hands */
        struct kr_conn *c = kr_nt_conn(nt, ev->conn);
        if (c) {
            kr_conn_rare(c)->link_acked++;
            kr_rq_emit(c);
            kr_conn_block(c); /* flushed and resumed after this loop iteration */
        }
        break;
    }
    case KR_EV_FRONTIER: /* a shard's numbering so far: everything up to it was sent here */
        if (ev->mask > nt->seen[ev->src])
            nt->seen[ev->src] = ev->mask;
        break;
    case KR_EV_PUBLISHED: { /* a shard's receivers of a counted publish (RESP PUBLISH) */
        struct kr_conn *c = kr_nt_conn(nt, ev->conn);
        struct kr_reply_wait *w = c ? kr_rq_at(c, ev->aux) : NULL;
        if (w && w->count && w->acks_left) {
            w->receivers += ev->mask;
            if (--w->acks_left == 0) {
                kr_rq_emit(c);
                kr_conn_block(c); /* flushed and resumed after this loop iteration */
            }
        }
        break;
    }
    case KR_EV_ACK: {
        struct kr_router_cmd *cmd = ev->ptr;
        uint32_t reqno = cmd->pad;
        struct kr_conn *rc = ev->aux == KR_EV_RESUME ? kr_nt_conn(nt, ev->conn) : NULL;
        if (rc && cmd->remote) { /* what another node replayed for it */
            for (uint32_t i = 0; i < cmd->remote->nmsgs; i++)
                kr_dlv_replay_remote(&nt->dlv, &rc->dlv, cmd->remote->msgs[i]);
            cmd->remote->nmsgs = 0; /* the references went with them */
        }
        if (rc && cmd->resync) { /* a resume's topics the history cannot replay exactly */
            uint32_t pos = 0, len;
            const char *t;
            while (kr_router_cmd_next(cmd->resync, &pos, &t, &len))
                kr_dlv_resync_later(&rc->dlv, t, len);
        }
        kr_router_cmd_free(cmd);
        if (reqno == KR_DRAIN_FLUSH_PAD) { /* the drain's first barrier */
            ck_pr_dec_int(&nt->srv->drain_flush_left);
            break;
        }
        struct kr_conn *c = kr_nt_conn(nt, ev->conn);
        if (reqno == KR_DRAIN_PAD) { /* a drain barrier, not a request */
            if (c)
                kr_conn_drain_acked(c);
            break;
        }
        struct kr_reply_wait *w = c ? kr_rq_at(c, reqno) : NULL;
        if (w && w->acks_left) {
            if (ev->aux == KR_EV_RETRO_SUBSCRIBE && ev->mask)
                c->dlv.retro_not_found = true;
            if (--w->acks_left == 0) {
                if (w->retro) {
                    if (c->dlv.retro_not_found)
                        KR_ST_INC(nt, retro_not_found, 1);
                    kr_dlv_retro_done(&nt->dlv, &c->dlv);
                    kr_cmd_resume_done(c); /* a resume's slot goes to the next one */
                }
                kr_rq_emit(c);
                kr_conn_block(c); /* flushed and resumed after this loop iteration */
            }
        }
        break;
    }
    default:
        KR_ERROR("net thread %u: unexpected event %u", nt->idx, ev->type);
        abort();
    }
}

/* Take everything the shards sent (up to a budget), round-robin over the shards. */
void kr_nt_take_events(struct kr_nt *nt)
{
    struct kr_router *r = nt->srv->router;
    uint32_t nshards = kr_router_nshards(r), budget = KR_TAKE_BUDGET;
    bool more = true;
    while (more && budget) {
        more = false;
        for (uint32_t s = 0; s < nshards && budget; s++) {
            struct kr_event ev;
            for (uint32_t k = 0; k < 64 && budget && kr_router_recv(r, nt->idx, s, &ev); k++) {
                kr_nt_handle(nt, &ev);
                budget--;
                more = true;
            }
        }
    }
    struct kr_cluster *cl = nt->srv->cluster;
    if (cl) { /* the cluster link's answers to subscribe barriers */
        struct kr_event ev;
        while (budget && kr_cluster_recv(cl, nt->idx, &ev)) {
            kr_nt_handle(nt, &ev);
            budget--;
        }
    }
    kr_dlv_release_later(&nt->dlv);
    if (!budget)
        uv_async_send(&nt->wake); /* come back after serving I/O */
}

static void kr_nt_unblock_all(struct kr_nt *nt)
{
    struct kr_conn *list = nt->blocked_head;
    nt->blocked_head = NULL;
    while (list) {
        struct kr_conn *c = list;
        list = c->blocked_next;
        c->blocked = false;
        kr_conn_process(c); /* re-blocks itself if still stuck */
    }
}

void kr_nt_wake_cb(uv_async_t *a)
{
    struct kr_nt *nt = a->data;
    kr_nt_refresh_live(nt);
    if (ck_pr_load_8((uint8_t *)&nt->stopping)) {
        uv_stop(&nt->loop);
        return;
    }
    kr_net_reqq_serve(nt->srv, nt->idx); /* admin requests, if any */
    kr_nt_take_events(nt);
}

/* Answer the waiting polls that got something. One whose messages are all parts of
 * multi-shard messages still being completed keeps waiting (the missing parts arrive
 * through the mailboxes, which end in another loop iteration) until poll_wait_ms. One with
 * nothing queued (its deliveries were pushed straight into its output) is answered now:
 * that flushes them. */
static void kr_nt_answer_ready(struct kr_nt *nt)
{
    uint64_t now = uv_now(&nt->loop), wait = nt->live.poll_wait_ms;
    for (uint32_t k = nt->ready.count; k > 0 && nt->ready.count; k--) {
        struct kr_conn *c = kr_pw_first(&nt->ready);
        uint64_t bytes;
        if (!c->dlv.overflowed && c->dlv.q.count && kr_conn_ready_entries(c, &bytes) == 0 &&
            now - c->poll_since_ms < wait) {
            kr_pw_unlink(&nt->ready, c); /* to the back of the list */
            kr_pw_push(&nt->ready, c);
            continue;
        }
        kr_conn_answer(c);
        kr_conn_process(c);
    }
}

/* The oldest waiting polls have waited poll_wait_ms: answer them (`END`). */
/* Answer the held polls that waited poll_wait_ms (all of them when it is 0); returns the
 * oldest one left. */
static struct kr_conn *kr_nt_answer_held(struct kr_nt *nt, uint64_t now, uint64_t wait)
{
    struct kr_conn *c;
    while ((c = kr_pw_first(&nt->held)) && now - c->poll_since_ms >= wait) {
        kr_conn_answer(c);
        kr_conn_process(c);
    }
    return c;
}

void kr_nt_poll_timer_cb(uv_timer_t *t)
{
    struct kr_nt *nt = t->data;
    kr_nt_refresh_live(nt);
    uint64_t now = uv_now(&nt->loop), wait = nt->live.poll_wait_ms;
    struct kr_conn *c = kr_nt_answer_held(nt, now, wait);
    if (c)
        uv_timer_start(t, kr_nt_poll_timer_cb, wait - (now - c->poll_since_ms), 0);
    else if (nt->ready.count)
        uv_timer_start(t, kr_nt_poll_timer_cb, wait ? wait : 1, 0); /* see kr_nt_answer_ready */
}

/* The connections that stopped for others get their next turn, in the order they stopped
 * (those that stop again go to the back). While any waits, the idle handle is active, so
 * the loop polls for I/O without blocking between turns; it stops when none is left. */
void kr_nt_turn_cb(uv_idle_t *h)
{
    struct kr_nt *nt = h->data;
    kr_nt_refresh_live(nt);
    uint32_t n = nt->nturns;
    for (uint32_t i = 0; i < n; i++) {
        struct kr_conn *c = kr_nt_conn(nt, nt->turns[i]);
        if (!c)
            continue; /* closed meanwhile */
        c->on_turns = false;
        c->turn_over = false;
        kr_conn_process(c);
    }
    memmove(nt->turns, nt->turns + n, (nt->nturns - n) * sizeof(*nt->turns));
    nt->nturns -= n;
    if (!nt->nturns)
        uv_idle_stop(h);
}

/* After each loop iteration's callbacks: wake the shards we pushed to, retry blocked
 * clients, answer waiting polls that got a message. */
void kr_nt_check_cb(uv_check_t *h)
{
    struct kr_nt *nt = h->data;
    kr_nt_refresh_live(nt);
    if (kr_outbox_parked(&nt->ctl))
        kr_nt_ctl_unpark(nt);
    if (nt->blocked_head)
        kr_nt_unblock_all(nt);
    /* polls that found nothing: first take what the shards sent during this iteration, so a
     * poll sees every delivery already in the mailboxes when it was answered */
    if (nt->held.count || nt->ready.count)
        kr_nt_take_events(nt);
    if (nt->ready.count)
        kr_nt_answer_ready(nt);
    if (nt->held.count && nt->live.poll_wait_ms == 0)
        kr_nt_answer_held(nt, uv_now(&nt->loop), 0);
    kr_router_flush(nt->srv->router, nt->idx);
    if (nt->srv->cluster)
        kr_cluster_flush(nt->srv->cluster, nt->idx);
}

/* Before the loop blocks: how long the iteration that ends here lasted, not counting the
 * time it waited for events in the poll (libuv's idle-time metric). Time the thread was
 * preempted inside it counts: the scheduler figures of `stats` (net_threads_wait_ms) tell
 * work from a wait for a CPU. */
void kr_nt_prepare_cb(uv_prepare_t *h)
{
    struct kr_nt *nt = h->data;
    kr_dlv_release_later(&nt->dlv); /* what poll replies written this iteration gave up */
    kr_nt_free_closed(nt);
    uint64_t now = uv_hrtime(), idle = uv_metrics_idle_time(&nt->loop);
    if (nt->it_last_ns) {
        uint64_t wall = now - nt->it_last_ns, waited = idle - nt->it_idle_ns;
        uint64_t busy = wall > waited ? wall - waited : 0;
        KR_ST_INC(nt, net_loop_iterations, 1);
        if (busy > 1000000u)
            KR_ST_INC(nt, net_loop_over_1ms, 1);
        if (busy > 10000000u)
            KR_ST_INC(nt, net_loop_over_10ms, 1);
    }
    nt->it_last_ns = now;
    nt->it_idle_ns = idle;
}

/* Every sweep tick (KR_SWEEP_MS): retry what waits for ring space, check max_memory, then
 * look at a bounded share of the connections (see below) and close those idle for
 * client_idle_timeout_ms (no complete request) and those whose started request is not
 * complete request_timeout_ms after its first bytes. A request the server itself holds
 * back (waiting on the router, a waiting poll, a turn) is not the client's delay. */
void kr_nt_sweep_cb(uv_timer_t *t)
{
    struct kr_nt *nt = t->data;
    struct kr_net_live lv;
    kr_net_live(nt->srv, &lv);
    uint64_t timeout = lv.client_idle_timeout_ms, rto = lv.request_timeout_ms;
    uint64_t now = kr_now_ms();
    if (kr_outbox_parked(&nt->ctl))
        kr_nt_ctl_unpark(nt);
    if (nt->blocked_head)
        kr_nt_unblock_all(nt);
    kr_nt_memory_check(nt);
    /* a bounded share of the slots per tick, from where the last tick stopped (as Redis's
     * clientsCron): every connection is looked at once per KR_SWEEP_TICKS ticks, and a tick
     * costs the same whatever the number of connections */
    uint32_t budget = nt->nslots / KR_SWEEP_TICKS + 1;
    if (budget < KR_SWEEP_MIN)
        budget = KR_SWEEP_MIN;
    if (budget > nt->nslots)
        budget = nt->nslots;
    for (uint32_t k = 0; k < budget; k++) {
        uint32_t i = nt->sweep_cursor++;
        if (nt->sweep_cursor >= nt->nslots)
            nt->sweep_cursor = 0;
        if (i >= nt->nslots)
            i = 0;
        struct kr_conn *c = nt->slots[i];
        if (!c || c->closing)
            continue;
        if (c->fe->tick)
            c->fe->tick(c, now);
        /* the requests unblocked above (and a tick's answers) stamped their connections
         * after `now` was read: those are not idle */
        uint64_t idle = kr_ms_since(now, c->last_active_ms);
        if (idle >= KR_TRIM_IDLE_MS)
            kr_conn_trim(c);
        if (timeout && idle >= timeout) {
            KR_ST_INC(nt, idle_timeouts, 1);
            KR_DEBUG("client %s (id %llu): idle for %llu ms; closing", kr_conn_peer(c),
                     (unsigned long long)c->id, (unsigned long long)idle);
            kr_conn_close(c);
        } else if (rto && c->partial_since_ms && kr_ms_since(now, c->partial_since_ms) >= rto &&
                   kr_conn_can_parse(c) && !c->turn_over) {
            KR_ST_INC(nt, request_timeouts, 1);
            uint64_t suppressed = 0;
            if (kr_log_enabled(KR_LOG_WARN) &&
                kr_log_ratelimit(&nt->rl_timeouts, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
                KR_WARN("client %s (id %llu): request incomplete %llu ms after its first bytes "
                        "(%zu bytes so far; request_timeout_ms %llu); closing (suppressed %llu "
                        "similar)",
                        kr_conn_peer(c), (unsigned long long)c->id,
                        (unsigned long long)kr_ms_since(now, c->partial_since_ms), c->in_len,
                        (unsigned long long)rto, (unsigned long long)suppressed);
            kr_conn_close(c);
        }
    }
}

/* ---------------------------------------------------------------- net threads */

void kr_nt_main(void *arg)
{
    struct kr_nt *nt = arg;
    char name[16];
    snprintf(name, sizeof(name), "kr-net-%u", nt->idx);
    pthread_setname_np(pthread_self(), name);
    ck_pr_store_int(&nt->tid, (int)syscall(SYS_gettid));
    urcu_memb_register_thread(); /* reads the live configuration snapshot */
    uv_run(&nt->loop, UV_RUN_DEFAULT);
    kr_dlv_release_later(&nt->dlv);
    kr_nt_free_closed(nt);
    urcu_memb_unregister_thread();
}

void kr_nt_close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL); /* clients were closed already; these are the thread's own handles */
}
