/* Delivery assembly: queueing a delivery for a client with its limits and overflow, merging
 * the parts of a multi-shard message into one entry, per-publisher order, and retroactive
 * staging. No libuv. Net thread only (each connection belongs to one). */
#include "kr_net_int.h"

#include <arpa/inet.h>
#include <ck_pr.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <urcu/list.h>
#include <urcu/urcu-memb.h>
#include <uv.h>
#include <xxhash.h>
#ifdef KR_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

static void kr_entry_release(struct kr_cq_entry *e);
static uint32_t kr_entry_bytes(const struct kr_cq_entry *e);
static bool kr_entry_complete(struct kr_cq_entry *e);
static void kr_release_delivery(struct kr_event *ev);
static void kr_entry_merge(struct kr_cq_entry *into, const struct kr_cq_entry *from);
static void kr_conn_enqueue(struct kr_conn *c, struct kr_cq_entry *e);
static struct kr_cq_entry *kr_conn_find_incomplete(struct kr_conn *c, struct kr_msg *m);
static void kr_conn_stage(struct kr_conn *c, const struct kr_cq_entry *e, bool replay);
static int kr_staged_cmp(const void *a, const void *b);

static void kr_entry_release(struct kr_cq_entry *e)
{
    if (kr_msg_ntopics(e->msg) > 64)
        free(e->bits);
    if (e->pend)
        kr_pend_unref(e->pend);
    kr_msg_unref(e->msg);
}

void kr_conn_queue_clear(struct kr_conn *c)
{
    for (uint32_t i = 0; i < c->nstage; i++)
        kr_entry_release(&c->stage[i].e);
    c->nstage = 0;
    KR_ST_DEC(c->nt, queued_messages, c->q.count);
    KR_ST_DEC(c->nt, queued_bytes, c->q.bytes);
    c->seq_head += c->q.count;
    kr_cq_clear(&c->q);
    c->ninc = 0;
}

/* Bytes an entry adds to a `get messages` reply:
 * "MESSAGE " + each matched topic and a space + <len> "\r\n" <payload> "\r\n". */
static uint32_t kr_entry_bytes(const struct kr_cq_entry *e)
{
    uint32_t nt = kr_msg_ntopics(e->msg), plen, tlen;
    kr_msg_payload(e->msg, &plen);
    uint64_t b = 8 + kr_digits(plen) + 2 + (uint64_t)plen + 2;
    for (uint32_t i = 0; i < nt; i++) {
        if (kr_cq_entry_has(e, nt, i)) {
            kr_msg_topic(e->msg, i, &tlen);
            b += tlen + 1;
        }
    }
    return b > UINT32_MAX ? UINT32_MAX : (uint32_t)b;
}

static bool kr_entry_complete(struct kr_cq_entry *e)
{
    if (!e->pend)
        return true;
    if (e->pend->arrived < e->pend->expected)
        return false;
    kr_pend_unref(e->pend);
    e->pend = NULL;
    return true;
}

/* How many entries at the head of the queue are complete and fit in one reply
 * (max_poll_reply_bytes; at least one): what a poll hands out now, and the bytes they add
 * to the reply. */
uint32_t kr_conn_ready_entries(struct kr_conn *c, uint64_t *bytes)
{
    uint64_t max = c->nt->live.max_poll_reply_bytes;
    uint32_t n = 0;
    *bytes = 0;
    while (n < c->q.count) {
        struct kr_cq_entry *e = kr_cq_at(&c->q, n);
        if (!kr_entry_complete(e))
            break;
        e->reply_bytes = kr_entry_bytes(e);
        if (n && *bytes + e->reply_bytes > max)
            break; /* the rest waits for the next poll (one entry always goes) */
        *bytes += e->reply_bytes;
        n++;
    }
    return n;
}

/* Nothing is queued for the connection and nothing more can arrive for it. */
bool kr_conn_queue_final_empty(const struct kr_conn *c)
{
    return c->drain == KR_DR_POLL && c->q.count == 0 && c->nstage == 0 && !c->retro_active;
}

/* ---------------------------------------------------------------- deliveries */

void kr_conn_overflow(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    KR_ST_INC(nt, queue_overflows, 1);
    uint64_t suppressed = 0;
    if (kr_log_enabled(KR_LOG_WARN) &&
        kr_log_ratelimit(&nt->rl_overflow, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
        KR_WARN("client %s (id %llu): queue overflow (%u messages, %llu bytes); discarding its "
                "queue, it will be told and disconnected (suppressed %llu similar)",
                c->peer, (unsigned long long)c->id, c->q.count, (unsigned long long)c->q.bytes,
                (unsigned long long)suppressed);
    kr_conn_queue_clear(c);
    c->overflowed = true;
    kr_poll_wake(c); /* a waiting poll is answered with the error */
}

static void kr_release_delivery(struct kr_event *ev)
{
    if (kr_msg_ntopics(ev->ptr) > 64)
        free((void *)(uintptr_t)ev->mask);
    kr_msg_unref(ev->ptr);
}

/* OR the matched topics of `from` into `into` (same message); frees from's bitmap. */
static void kr_entry_merge(struct kr_cq_entry *into, const struct kr_cq_entry *from)
{
    uint32_t ntop = kr_msg_ntopics(into->msg);
    if (ntop <= 64) {
        into->mask |= from->mask;
    } else {
        for (uint32_t w = 0; w < (ntop + 63) / 64; w++)
            into->bits[w] |= from->bits[w];
        free(from->bits);
    }
}

/* The completion record of a multi-shard message on this net thread; created on the first
 * live delivery or END (each shard sends its deliveries before its END). */
struct kr_pend *kr_nt_pend(struct kr_nt *nt, struct kr_msg *m, bool create)
{
    void **slot = kr_msg_slot(m, nt->idx);
    if (!*slot && create) {
        struct kr_pend *p = kr_xcalloc(1, sizeof(*p));
        p->expected = kr_msg_nshards(m);
        p->refs = 1; /* the message slot's */
        *slot = p;
    }
    return *slot;
}

/* Queue an entry for a client (takes over its references), enforcing the limits.
 * An entry of a multi-shard message that is not complete yet is remembered so the other
 * shards' parts merge into it. */
static void kr_conn_enqueue(struct kr_conn *c, struct kr_cq_entry *e)
{
    struct kr_nt *nt = c->nt;
    const struct kr_net_live *lv = &nt->live;
    e->reply_bytes = kr_entry_bytes(e);
    if (c->q.count + 1 > lv->max_queued_messages || c->q.bytes + e->reply_bytes > lv->max_queued_bytes) {
        kr_entry_release(e);
        kr_conn_overflow(c);
        return;
    }
    /* A multi-shard message's entry sits where its first part arrived. A part from another
     * shard may arrive before an earlier message of the same publisher: only such incomplete
     * entries can be out of order, so place this one before the first of them that the same
     * publisher published later (per-publisher, per-topic order). */
    uint32_t pos = c->q.count;
    if (c->ninc) {
        kr_conn_find_incomplete(c, NULL); /* prune */
        uint64_t pub = kr_msg_publisher(e->msg), t = kr_msg_time_us(e->msg);
        for (uint32_t i = 0; i < c->ninc; i++) {
            uint32_t at = (uint32_t)(c->inc[i].seq - c->seq_head);
            struct kr_msg *other = c->inc[i].msg;
            if (at < pos && kr_msg_publisher(other) == pub && kr_msg_time_us(other) > t)
                pos = at;
        }
        if (pos < c->q.count)
            for (uint32_t i = 0; i < c->ninc; i++)
                if (c->inc[i].seq - c->seq_head >= pos)
                    c->inc[i].seq++;
    }
    if (e->pend) {
        if (c->ninc == c->inc_cap) {
            c->inc_cap = c->inc_cap ? c->inc_cap * 2 : 4;
            c->inc = kr_xrealloc(c->inc, c->inc_cap * sizeof(*c->inc));
        }
        c->inc[c->ninc].msg = e->msg;
        c->inc[c->ninc].seq = c->seq_head + pos;
        c->ninc++;
    }
    kr_cq_insert(&c->q, pos, e);
    KR_ST_INC(nt, queued_messages, 1);
    KR_ST_INC(nt, queued_bytes, e->reply_bytes);
    KR_ST_INC(nt, deliveries_queued, 1);
    kr_poll_wake(c);
    nt->mem_grown += e->reply_bytes; /* max_memory: a thread-local add and compare */
    if (nt->mem_grown >= nt->mem_step)
        kr_nt_memory_check(nt);
}

/* The queued, still incomplete entry of multi-shard message m, if any. Drops the records
 * of entries that completed or were handed out meanwhile. */
static struct kr_cq_entry *kr_conn_find_incomplete(struct kr_conn *c, struct kr_msg *m)
{
    uint32_t keep = 0;
    struct kr_cq_entry *found = NULL;
    for (uint32_t i = 0; i < c->ninc; i++) {
        struct kr_incomplete *inc = &c->inc[i];
        if (inc->seq < c->seq_head)
            continue; /* already handed to the client */
        struct kr_cq_entry *e = kr_cq_at(&c->q, (uint32_t)(inc->seq - c->seq_head));
        if (!e->pend || e->pend->arrived >= e->pend->expected)
            continue;
        if (m && inc->msg == m)
            found = e;
        c->inc[keep++] = *inc;
    }
    c->ninc = keep;
    return found;
}

static void kr_conn_stage(struct kr_conn *c, const struct kr_cq_entry *e, bool replay)
{
    if (c->nstage == c->stage_cap) {
        c->stage_cap = c->stage_cap ? c->stage_cap * 2 : 16;
        c->stage = kr_xrealloc(c->stage, c->stage_cap * sizeof(*c->stage));
    }
    c->stage[c->nstage].e = *e;
    c->stage[c->nstage].replay = replay;
    c->stage[c->nstage].order = c->nstage;
    c->nstage++;
}

/* A live delivery (DELIVER) or a replayed one (REPLAY) for one client. */
void kr_nt_deliver(struct kr_nt *nt, struct kr_event *ev, bool replay)
{
    struct kr_msg *m = ev->ptr;
    struct kr_conn *c = kr_nt_conn(nt, ev->conn);
    struct kr_pend *pend = NULL;
    if (!replay && kr_msg_nshards(m) > 1)
        pend = kr_nt_pend(nt, m, true);
    if (!c || c->overflowed) {
        kr_release_delivery(ev);
        return;
    }
    struct kr_cq_entry e = {.msg = m, .pend = pend};
    e.mask = ev->mask; /* or the bitmap pointer, taken over */
    if (pend)
        pend->refs++;
    if (c->retro_active) {
        kr_conn_stage(c, &e, replay);
        return;
    }
    if (pend) {
        struct kr_cq_entry *found = kr_conn_find_incomplete(c, m);
        if (found) {
            uint32_t before = found->reply_bytes;
            kr_entry_merge(found, &e);
            kr_pend_unref(pend);
            kr_msg_unref(m);
            found->reply_bytes = kr_entry_bytes(found);
            c->q.bytes += found->reply_bytes - before;
            KR_ST_INC(nt, queued_bytes, found->reply_bytes - before);
            return;
        }
    }
    kr_conn_enqueue(c, &e);
}

static int kr_staged_cmp(const void *a, const void *b)
{
    const struct kr_staged *x = a, *y = b;
    if (x->replay != y->replay)
        return x->replay ? -1 : 1; /* replayed history first, then what arrived live */
    if (x->replay) {
        uint64_t tx = kr_msg_time_us(x->e.msg), ty = kr_msg_time_us(y->e.msg);
        if (tx != ty)
            return tx < ty ? -1 : 1; /* oldest first */
    }
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Every shard answered a retroactive subscribe: queue the replayed messages oldest first,
 * each once (parts from several shards merged, and merged with live deliveries of the same
 * message), then the live deliveries that arrived meanwhile. */
void kr_conn_retro_done(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    c->retro_active = false;
    if (c->nstage == 0)
        return;
    qsort(c->stage, c->nstage, sizeof(*c->stage), kr_staged_cmp);
    /* message -> position in the output, open addressing on the pointer */
    uint32_t cap = 16;
    while (cap < c->nstage * 2)
        cap <<= 1;
    uint32_t *map = kr_xmalloc(cap * sizeof(*map));
    memset(map, 0xff, cap * sizeof(*map));
    uint32_t nout = 0;
    for (uint32_t i = 0; i < c->nstage; i++) {
        struct kr_staged *st = &c->stage[i];
        if (st->replay && c->retro_not_found) {
            kr_entry_release(&st->e);
            continue;
        }
        uint32_t h = (uint32_t)XXH3_64bits(&st->e.msg, sizeof(st->e.msg)) & (cap - 1);
        while (map[h] != UINT32_MAX && c->stage[map[h]].e.msg != st->e.msg)
            h = (h + 1) & (cap - 1);
        if (map[h] == UINT32_MAX) {
            c->stage[nout] = *st; /* compact in place: nout <= i */
            map[h] = nout++;
            continue;
        }
        struct kr_cq_entry *into = &c->stage[map[h]].e;
        kr_entry_merge(into, &st->e);
        if (st->e.pend && !into->pend)
            into->pend = st->e.pend;
        else if (st->e.pend)
            kr_pend_unref(st->e.pend);
        kr_msg_unref(st->e.msg);
    }
    free(map);
    c->nstage = 0;
    for (uint32_t i = 0; i < nout; i++) {
        struct kr_cq_entry *e = &c->stage[i].e;
        if (c->overflowed) { /* the queue was discarded: so is the rest */
            kr_entry_release(e);
            continue;
        }
        if (c->stage[i].replay)
            KR_ST_INC(nt, messages_replayed, 1);
        if (!e->pend && kr_msg_nshards(e->msg) > 1) {
            /* shards still working on this message may deliver it live: join its record */
            struct kr_pend *p = kr_nt_pend(nt, e->msg, false);
            if (p) {
                p->refs++;
                e->pend = p;
            }
        }
        kr_conn_enqueue(c, e);
    }
}
