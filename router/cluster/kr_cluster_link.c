/* The cluster link thread (see kr_cluster_int.h): its libuv loop's callbacks, the topic ->
 * NATS subscription map and its lingers, the subscribe barriers and their answers towards
 * the net threads (a kr_outbox), the interest the shards report, and forwarding local
 * entries to the cluster. Everything here runs on the link thread. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kr_cluster_int.h"
#include "kr_cluster_wire.h"
#include "kr_log.h"
#include "kr_util.h"

/* ---------------------------------------------------------------- the topic map (link) */

struct kr_cl_topic *kr_cl_find(struct kr_cluster *cl, const char *t, uint32_t len, uint64_t h)
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
    KR_GROW_MIN(cl->pend, cl->pend_cap, cl->npend + 1, 256);
    cl->pend[cl->npend++] = e;
    e->next = cl->buckets[h & (cl->nbuckets - 1)];
    cl->buckets[h & (cl->nbuckets - 1)] = e;
    cl->ntopics++;
    if (cl->ntopics > cl->nbuckets)
        kr_cl_grow(cl);
    ck_pr_store_64(&cl->st.subjects, cl->ntopics);
    return e;
}

void kr_cl_to_shard(struct kr_cluster *cl, uint32_t shard, struct kr_event *ev)
{
    struct kr_router *r = cl->o.router;
    /* on the link's own index: the delivery thread uses in_idx */
    while (!kr_router_send(r, cl->o.ctl_idx, shard, ev)) {
        kr_router_flush(r, cl->o.ctl_idx);
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
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
    struct kr_router *r = cl->o.router;
    struct kr_router_cmd *dropped[64] = {0}; /* told to the shards: the topics are not held */
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
        uint32_t s = kr_router_shard_of_hash(r, e->hash);
        if (!dropped[s])
            dropped[s] = kr_router_cmd_new(256);
        dropped[s] = kr_router_cmd_add(dropped[s], e->name, e->len);
        kr_cl_drop(cl, e);
        drops++;
    }
    for (uint32_t s = 0; s < kr_router_nshards(r) && drops; s++) {
        if (!dropped[s])
            continue;
        struct kr_event ev = {.type = KR_EV_DROPPED, .src = (uint16_t)cl->o.ctl_idx,
                              .ptr = dropped[s]};
        kr_cl_to_shard(cl, s, &ev);
    }
    if (drops)
        kr_router_flush(r, cl->o.ctl_idx);
}

/* ---------------------------------------------------------------- towards the net threads */

/* Answer a subscribe request's barrier. */
void kr_cl_answer(struct kr_cluster *cl, struct kr_event *req)
{
    struct kr_router_cmd *c = req->ptr;
    if (req->type == KR_EV_RESUME && c->remote) { /* in force: now ask the token's node */
        kr_cl_resume_ask(cl, req);
        return;
    }
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

/* ---------------------------------------------------------------- forwards, barriers, interest */

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
    KR_GROW_MIN(cl->ebuf, cl->ebuf_cap, need, 1024);
    /* the message holds its topics one by one: header, pairs, payload */
    kr_cl_entry_header(cl->ebuf, cl->origin, ++cl->seq, ntopics);
    kr_msg_stamp_oseq(m, cl->seq); /* what names it on every node (resumes elsewhere) */
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
    KR_GROW_MIN(cl->waits, cl->waits_cap, cl->nwaits + 1, 64);
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

/* ---------------------------------------------------------------- flushed publishes */

/* cluster_publish_ack flushed: once the NATS server has everything written so far (a
 * flush's PING answered), the publishers waiting are answered. While the link is down
 * they wait (the tick retries); what libnats could not buffer is announced lost anyway.
 * The flush waits for its PONG, which this thread's loop reads: it runs on libuv's thread
 * pool, one at a time, and answers the publishers that were waiting when it started. */
static void kr_cl_flush_work(uv_work_t *w)
{
    struct kr_cluster *cl = w->data;
    cl->flush_status = natsConnection_FlushTimeout(cl->nc, KR_CL_FLUSH_TIMEOUT_MS);
    ck_pr_store_int(&cl->flush_running, 0);
}

static void kr_cl_flush_done(uv_work_t *w, int status)
{
    struct kr_cluster *cl = w->data;
    size_t n = cl->flush_n;
    cl->flush_n = 0;
    if (status < 0 || cl->flush_status != NATS_OK || ck_pr_load_int(&cl->stopping))
        return; /* tried again at the next pass or tick */
    KR_CL_INC(cl, flushes, 1);
    for (size_t i = 0; i < n; i++) {
        struct kr_event ev = {.type = KR_EV_FORWARDED, .src = (uint16_t)cl->o.ctl_idx,
                              .conn = cl->acks[i]};
        kr_outbox_push(&cl->outbox, KR_CONN_NET(ev.conn), &ev);
    }
    memmove(cl->acks, cl->acks + n, (cl->nacks - n) * sizeof(*cl->acks));
    cl->nacks -= n;
    kr_outbox_unpark(&cl->outbox);
    kr_outbox_wake(&cl->outbox);
    if (cl->nacks) /* those that came meanwhile: the next flush */
        uv_async_send(&cl->wake);
}

static void kr_cl_flush_acks(struct kr_cluster *cl)
{
    if (!cl->nacks || cl->flush_n || natsConnection_Status(cl->nc) != NATS_CONN_STATUS_CONNECTED)
        return;
    cl->flush_n = cl->nacks;
    cl->flush_req.data = cl;
    ck_pr_store_int(&cl->flush_running, 1);
    int rc = uv_queue_work(&cl->loop, &cl->flush_req, kr_cl_flush_work, kr_cl_flush_done);
    if (rc < 0) {
        cl->flush_n = 0;
        ck_pr_store_int(&cl->flush_running, 0);
        KR_WARN("cluster: cannot start a flush: %s", uv_strerror(rc));
    }
}

/* ---------------------------------------------------------------- the loop */

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
            case KR_EV_REPLAY: /* serving another node's resume */
            case KR_EV_ACK:
                kr_cl_history_event(cl, &ev);
                break;
            default:
                KR_ERROR("cluster: unexpected event %u from shard %u", ev.type, s);
                abort();
            }
        }
    }
    /* forwards are not taken while the NATS socket is full (kr_cl_io_flush) */
    uint32_t since_write = 0;
    for (uint32_t n = 0; n < cl->o.nnet && !cl->out_blocked; n++) {
        uint32_t taken = 0;
        while (budget && kr_mailbox_pop(cl->in[n], &ev)) {
            budget--;
            taken++;
            if (ev.type == KR_EV_PUBLISH) {
                kr_cl_forward(cl, ev.ptr);
                kr_msg_unref(ev.ptr);
                if (++since_write == 64) {
                    since_write = 0;
                    cl->out_blocked = kr_cl_io_flush(cl, KR_CL_WRITE_BYTES);
                    if (cl->out_blocked)
                        KR_CL_INC(cl, write_waits, 1);
                }
                if (ev.mask & KR_PUBLISH_FLUSHED) { /* answered after the next flush */
                    KR_GROW_MIN(cl->acks, cl->acks_cap, cl->nacks + 1, 256);
                    cl->acks[cl->nacks++] = ev.conn;
                }
                if (cl->out_blocked)
                    break;
            } else {
                uint32_t nt = ((struct kr_router_cmd *)ev.ptr)->ntopics;
                budget -= budget > nt ? nt : budget;
                kr_cl_barrier(cl, &ev);
            }
        }
        /* room made in a ring net thread n found full: it retries what it parked now */
        ck_pr_fence_memory();
        if (taken && ck_pr_load_int(&cl->in_full[(size_t)n * 16])) {
            ck_pr_store_int(&cl->in_full[(size_t)n * 16], 0);
            cl->o.wake_net(cl->o.wake_arg, n);
        }
    }
    kr_cl_flush_acks(cl);
    kr_cl_probe_check(cl);
    bool asks_wait = kr_cl_asks_send(cl); /* after the forwards they wait for */
    kr_cl_resume_tick(cl, kr_cl_now_ms()); /* after the forwards: their origin sequences */
    /* this pass's writes in one: no wait for the loop's next turn */
    bool was_blocked = cl->out_blocked;
    cl->out_blocked = kr_cl_io_flush(cl, 1);
    if (cl->out_blocked && !was_blocked)
        KR_CL_INC(cl, write_waits, 1);
    kr_outbox_unpark(&cl->outbox);
    kr_outbox_wake(&cl->outbox);
    /* come back: more to take, the socket took what blocked the forwards, or a question
     * to send */
    if ((!budget && !cl->out_blocked) || (was_blocked && !cl->out_blocked) || asks_wait)
        uv_async_send(&cl->wake);
}

void kr_cl_wake_cb(uv_async_t *a)
{
    struct kr_cluster *cl = a->data;
    if (ck_pr_load_int(&cl->quit)) {
        uv_stop(&cl->loop);
        return;
    }
    kr_cl_io_apply(cl);
    if (ck_pr_load_int(&cl->stopping)) { /* from now on the loop only serves the socket */
        kr_cl_io_flush(cl, 1); /* what other threads published (the goodbye, a flush) */
        if (!cl->stop_acked) {
            cl->stop_acked = true;
            uv_timer_stop(&cl->tick);
            uv_sem_post(&cl->stop_sem);
        }
        return;
    }
    kr_cl_run(cl);
}

void kr_cl_tick_cb(uv_timer_t *t)
{
    struct kr_cluster *cl = t->data;
    if (ck_pr_load_int(&cl->stopping))
        return; /* the wake-up that follows says so */
    uint64_t now = kr_cl_now_ms();
    kr_cl_peers_expire(cl, now);
    kr_cl_heartbeat(cl, now);
    kr_cl_lingers(cl, now);
    kr_cl_recent_rotate(cl, now);
    kr_cl_run(cl);
}

void kr_cl_main(void *arg)
{
    struct kr_cluster *cl = arg;
    pthread_setname_np(pthread_self(), "kr-cluster");
    kr_cl_io_own(cl);
    kr_cl_io_apply(cl); /* the connect's attach, made before the loop ran */
    uv_run(&cl->loop, UV_RUN_DEFAULT);
}
