/* Delivery assembly: queueing a delivery for a client with its limits and overflow, merging
 * the parts of a multi-shard message into one entry, per-publisher order, and retroactive
 * staging. No libuv, no connection: see kr_deliver.h. Net thread only (each client belongs
 * to one). */
#include "kr_deliver.h"

#include "kr_queue.h"
#include "kr_util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The counters are loaded by other threads: relaxed atomic stores. */
#define KR_DLV_ADD(p, n) __atomic_store_n((p), *(p) + (n), __ATOMIC_RELAXED)
#define KR_DLV_SUB(p, n) __atomic_store_n((p), *(p) - (n), __ATOMIC_RELAXED)

static void kr_pend_unref(struct kr_pend *p);
static void kr_entry_release(struct kr_cq_entry *e);
static uint32_t kr_entry_bytes(const struct kr_cq_entry *e);
static bool kr_entry_complete(struct kr_cq_entry *e);
static void kr_release_delivery(struct kr_event *ev);
static void kr_entry_merge(struct kr_cq_entry *into, struct kr_cq_entry *from);
static struct kr_pend *kr_dlv_pend(struct kr_dlv_ctx *x, struct kr_msg *m, bool create);
static void kr_dlv_enqueue(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_cq_entry *e);
static struct kr_cq_entry *kr_dlv_find_incomplete(struct kr_dlv *d, struct kr_msg *m);
static void kr_dlv_stage(struct kr_dlv *d, const struct kr_cq_entry *e, bool replay);
static int kr_staged_cmp(const void *a, const void *b);

/* Completion record of a multi-shard message on one net thread. It sits in the message's
 * slot for that thread from the first delivery or END until the last shard's END; queue
 * entries of the message point to it too. Every entry holds a message reference, so once
 * the message's last reference is gone only the slot's is left: kr_msg_unref free()s a
 * record still in its slot (when the server stopped before every shard reported), which is
 * why it is one plain block. */
struct kr_pend {
    uint32_t arrived;  /* shards that reported */
    uint32_t expected; /* shards involved */
    uint32_t refs;     /* queue entries + the message slot pointing here */
    uint32_t fanout;   /* deliveries summed over the shards */
};

/* Drop one reference to a pend record, freeing it with the last. */
static void kr_pend_unref(struct kr_pend *p)
{
    if (--p->refs == 0)
        free(p);
}

/* ---------------------------------------------------------------- client queues */

struct kr_cq_entry *kr_cq_push(struct kr_cq *q, const struct kr_cq_entry *e)
{
    if (q->count == q->cap) {
        uint32_t ncap = q->cap ? q->cap * 2 : 8;
        struct kr_cq_entry *n = kr_xmalloc(sizeof(*n) * ncap);
        for (uint32_t i = 0; i < q->count; i++)
            n[i] = q->ring[(q->head + i) & (q->cap - 1)];
        free(q->ring);
        q->ring = n;
        q->cap = ncap;
        q->head = 0;
    }
    struct kr_cq_entry *slot = &q->ring[(q->head + q->count) & (q->cap - 1)];
    *slot = *e;
    q->count++;
    q->bytes += e->reply_bytes;
    return slot;
}

struct kr_cq_entry *kr_cq_insert(struct kr_cq *q, uint32_t pos, const struct kr_cq_entry *e)
{
    kr_cq_push(q, e);
    for (uint32_t i = q->count - 1; i > pos; i--)
        q->ring[(q->head + i) & (q->cap - 1)] = q->ring[(q->head + i - 1) & (q->cap - 1)];
    struct kr_cq_entry *slot = &q->ring[(q->head + pos) & (q->cap - 1)];
    *slot = *e;
    return slot;
}

struct kr_cq_entry *kr_cq_at(struct kr_cq *q, uint32_t i)
{
    return &q->ring[(q->head + i) & (q->cap - 1)];
}

void kr_cq_pop(struct kr_cq *q)
{
    q->bytes -= q->ring[q->head].reply_bytes;
    q->head = (q->head + 1) & (q->cap - 1);
    q->count--;
    if (q->count == 0) {
        q->head = 0;
        if (q->cap > 64) { /* give memory of a burst back; idle clients stay small */
            free(q->ring);
            q->ring = NULL;
            q->cap = 0;
        }
    }
}

void kr_cq_clear(struct kr_cq *q)
{
    while (q->count) {
        kr_entry_release(kr_cq_at(q, 0));
        kr_cq_pop(q);
    }
    free(q->ring);
    q->ring = NULL;
    q->cap = 0;
    q->head = 0;
    q->bytes = 0;
}

/* ---------------------------------------------------------------- entries */

static void kr_entry_release(struct kr_cq_entry *e)
{
    kr_topicset_release(&e->topics, kr_msg_ntopics(e->msg));
    if (e->pend)
        kr_pend_unref(e->pend);
    kr_msg_unref(e->msg);
}

void kr_dlv_clear(struct kr_dlv_ctx *x, struct kr_dlv *d)
{
    for (uint32_t i = 0; i < d->nstage; i++)
        kr_entry_release(&d->stage[i].e);
    d->nstage = 0;
    KR_DLV_SUB(x->ctr.queued_messages, d->q.count);
    KR_DLV_SUB(x->ctr.queued_bytes, d->q.bytes);
    d->seq_head += d->q.count;
    kr_cq_clear(&d->q);
    d->ninc = 0;
}

void kr_dlv_free(struct kr_dlv *d)
{
    free(d->handed);
    d->handed = NULL;
    free(d->pending);
    d->pending = NULL;
    free(d->inc);
    d->inc = NULL;
    d->inc_cap = 0;
    free(d->stage);
    d->stage = NULL;
    d->stage_cap = 0;
    free(d->seen_cap);
    d->seen_cap = NULL;
}

void kr_dlv_trim(struct kr_dlv *d)
{
    if (d->q.count == 0) {
        free(d->q.ring);
        d->q.ring = NULL;
        d->q.cap = 0;
        d->q.head = 0;
        d->ninc = 0; /* records of incomplete entries are pruned lazily: with nothing queued,
                        every one left is of an entry handed out since */
    }
    if (d->ninc == 0) {
        free(d->inc);
        d->inc = NULL;
        d->inc_cap = 0;
    }
    if (d->nstage == 0 && !d->retro_active) {
        free(d->stage);
        d->stage = NULL;
        d->stage_cap = 0;
    }
}

size_t kr_dlv_mem(const struct kr_dlv *d, uint32_t nshards)
{
    return (size_t)d->q.cap * sizeof(*d->q.ring) + (size_t)d->inc_cap * sizeof(*d->inc) +
           (size_t)d->stage_cap * sizeof(*d->stage) + (d->handed ? nshards * sizeof(uint64_t) : 0) +
           d->pending_cap;
}

/* Bytes an entry adds to a `get messages` reply:
 * "MESSAGE " + each matched topic and a space + <len> "\r\n" <payload> "\r\n". */
static uint32_t kr_entry_bytes(const struct kr_cq_entry *e)
{
    uint32_t nt = kr_msg_ntopics(e->msg), plen, tlen;
    kr_msg_payload(e->msg, &plen);
    uint64_t b = 8 + kr_u64_digits(plen) + 2 + (uint64_t)plen + 2;
    for (uint32_t i = 0; i < nt; i++) {
        if (kr_topicset_has(&e->topics, nt, i)) {
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

uint32_t kr_dlv_ready(struct kr_dlv *d, uint64_t max, uint64_t *bytes)
{
    uint32_t n = 0;
    *bytes = 0;
    while (n < d->q.count) {
        struct kr_cq_entry *e = kr_cq_at(&d->q, n);
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

struct kr_cq_entry *kr_dlv_head(struct kr_dlv *d)
{
    return kr_cq_at(&d->q, 0);
}

/* Raise d->handed to the parts of entry e (its matched topics' sequences). */
static void kr_dlv_handed(struct kr_dlv *d, struct kr_msg *m, const struct kr_topicset *ts)
{
    uint32_t nt = kr_msg_ntopics(m);
    for (uint32_t i = 0; i < nt; i++) {
        if (!kr_topicset_has(ts, nt, i))
            continue;
        uint32_t shard;
        uint64_t seq = kr_msg_seq(m, i, &shard);
        if (seq && seq > d->handed[shard])
            d->handed[shard] = seq;
    }
}

void kr_dlv_release_later(struct kr_dlv_ctx *x)
{
    if (x->later_n)
        kr_msg_unref_n(x->later_m, x->later_n);
    x->later_m = NULL;
    x->later_n = 0;
}

/* Give up a reference to m, dropped with the others of the same run of m. */
static inline void kr_dlv_unref_later(struct kr_dlv_ctx *x, struct kr_msg *m)
{
    if (x->later_m != m) {
        kr_dlv_release_later(x);
        x->later_m = m;
    }
    x->later_n++;
}

void kr_dlv_pop(struct kr_dlv_ctx *x, struct kr_dlv *d)
{
    struct kr_cq_entry *e = kr_cq_at(&d->q, 0);
    uint32_t bytes = e->reply_bytes;
    if (d->handed)
        kr_dlv_handed(d, e->msg, &e->topics);
    kr_topicset_release(&e->topics, kr_msg_ntopics(e->msg));
    kr_dlv_unref_later(x, e->msg); /* complete (kr_dlv_ready handed it out): no pend record */
    kr_cq_pop(&d->q);
    d->seq_head++;
    KR_DLV_SUB(x->ctr.queued_messages, 1);
    KR_DLV_SUB(x->ctr.queued_bytes, bytes);
}

bool kr_dlv_empty(const struct kr_dlv *d)
{
    return d->q.count == 0 && d->nstage == 0 && !d->retro_active;
}

void kr_dlv_retro_begin(struct kr_dlv *d)
{
    d->retro_active = true;
    d->retro_not_found = false;
}

/* ---------------------------------------------------------------- deliveries */

/* ---------------------------------------------------------------- resync notices */

/* The distinct topics a notice names (pointing into the messages of the entries it
 * replaces, so built before they are released), or `all` past `max`. */
struct kr_names {
    const char **p;
    uint32_t *len;
    uint64_t *h;
    uint32_t n, cap;
    uint32_t *tab; /* open addressing: index + 1, 0 = empty */
    uint32_t tab_cap;
    uint32_t max;
    bool all;
};

static void kr_names_add(struct kr_names *nm, const char *p, uint32_t len)
{
    if (nm->all || len == 0)
        return;
    if (len == sizeof(KR_RESYNC_ALL) - 1 && memcmp(p, KR_RESYNC_ALL, len) == 0) {
        nm->all = true;
        return;
    }
    uint64_t h = kr_topic_hash(p, len);
    if (nm->tab_cap && (nm->n + 1) * 2 <= nm->tab_cap) {
        uint32_t b = (uint32_t)h & (nm->tab_cap - 1);
        while (nm->tab[b]) {
            uint32_t i = nm->tab[b] - 1;
            if (nm->h[i] == h && nm->len[i] == len && memcmp(nm->p[i], p, len) == 0)
                return;
            b = (b + 1) & (nm->tab_cap - 1);
        }
    } else {
        /* (re)build the table at twice the names' count */
        uint32_t cap = nm->tab_cap ? nm->tab_cap * 2 : 32;
        free(nm->tab);
        nm->tab = kr_xcalloc(cap, sizeof(*nm->tab));
        nm->tab_cap = cap;
        for (uint32_t i = 0; i < nm->n; i++) {
            uint32_t b = (uint32_t)nm->h[i] & (cap - 1);
            while (nm->tab[b])
                b = (b + 1) & (cap - 1);
            nm->tab[b] = i + 1;
        }
        kr_names_add(nm, p, len); /* looked up again in the new table */
        return;
    }
    if (nm->n == nm->max) {
        nm->all = true;
        return;
    }
    KR_GROW(nm->p, nm->cap, nm->n + 1);
    nm->len = kr_xrealloc(nm->len, nm->cap * sizeof(*nm->len));
    nm->h = kr_xrealloc(nm->h, nm->cap * sizeof(*nm->h));
    nm->p[nm->n] = p;
    nm->len[nm->n] = len;
    nm->h[nm->n] = h;
    uint32_t b = (uint32_t)h & (nm->tab_cap - 1);
    while (nm->tab[b])
        b = (b + 1) & (nm->tab_cap - 1);
    nm->tab[b] = ++nm->n;
}

static bool kr_is_notice(const struct kr_msg *m)
{
    uint32_t tl;
    const char *t = kr_msg_topic(m, 0, &tl);
    return kr_msg_ntopics(m) == 1 && tl == sizeof(KR_RESYNC_TOPIC) - 1 &&
           memcmp(t, KR_RESYNC_TOPIC, tl) == 0;
}

/* The topics an entry names: its matched topics, or an earlier notice's list. */
static void kr_names_entry(struct kr_names *nm, const struct kr_cq_entry *e)
{
    uint32_t nt = kr_msg_ntopics(e->msg), len;
    if (kr_is_notice(e->msg)) {
        const char *p = kr_msg_payload(e->msg, &len), *end = p + len;
        while (p < end) {
            const char *sp = memchr(p, ' ', (size_t)(end - p));
            const char *stop = sp ? sp : end;
            kr_names_add(nm, p, (uint32_t)(stop - p));
            p = stop + 1;
        }
        return;
    }
    for (uint32_t i = 0; i < nt; i++) {
        if (kr_topicset_has(&e->topics, nt, i)) {
            const char *t = kr_msg_topic(e->msg, i, &len);
            kr_names_add(nm, t, len);
        }
    }
}

/* The notice message naming nm's topics (or `*`). */
static struct kr_msg *kr_names_notice(const struct kr_names *nm)
{
    size_t len = 0;
    for (uint32_t i = 0; i < nm->n; i++)
        len += nm->len[i] + 1;
    char *payload = kr_xmalloc(len ? len : 1);
    size_t at = 0;
    if (nm->all || nm->n == 0) {
        memcpy(payload, KR_RESYNC_ALL, sizeof(KR_RESYNC_ALL) - 1);
        at = sizeof(KR_RESYNC_ALL) - 1;
    } else {
        for (uint32_t i = 0; i < nm->n; i++) {
            if (i)
                payload[at++] = ' ';
            memcpy(payload + at, nm->p[i], nm->len[i]);
            at += nm->len[i];
        }
    }
    const char *topic = KR_RESYNC_TOPIC;
    uint32_t tl = sizeof(KR_RESYNC_TOPIC) - 1;
    struct kr_msg *m = kr_msg_create(0, kr_msg_clock_us(), 1, &topic, &tl, payload,
                                     (uint32_t)at, 0);
    kr_msg_set_nshards(m, 1);
    free(payload);
    return m;
}

static void kr_names_free(struct kr_names *nm)
{
    free(nm->p);
    free(nm->len);
    free(nm->h);
    free(nm->tab);
}

/* Queue notice m at the tail (no limit applies: it replaces what was over them). */
static void kr_dlv_push_notice(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_msg *m)
{
    struct kr_cq_entry e = {.msg = m};
    kr_topicset_init(&e.topics, 1);
    kr_topicset_set(&e.topics, 1, 0);
    e.reply_bytes = kr_entry_bytes(&e);
    kr_cq_push(&d->q, &e);
    KR_DLV_ADD(x->ctr.queued_messages, 1);
    KR_DLV_ADD(x->ctr.queued_bytes, e.reply_bytes);
    KR_DLV_ADD(x->ctr.resync_notices, 1);
    x->queued(x, d);
}

/* Replace d's queue (and `extra`, an entry that did not fit) by one notice naming their
 * topics. The retroactive staging, if any, is kept. */
static void kr_dlv_collapse(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_cq_entry *extra)
{
    struct kr_names nm = {.max = x->resync_max_topics ? x->resync_max_topics : 1};
    uint32_t count = d->q.count;
    for (uint32_t i = 0; i < d->q.count; i++)
        kr_names_entry(&nm, kr_cq_at(&d->q, i));
    if (extra) {
        kr_names_entry(&nm, extra);
        count++;
    }
    struct kr_msg *m = kr_names_notice(&nm);
    uint32_t named = nm.all ? 0 : nm.n;
    kr_names_free(&nm);
    if (extra)
        kr_entry_release(extra);
    KR_DLV_SUB(x->ctr.queued_messages, d->q.count);
    KR_DLV_SUB(x->ctr.queued_bytes, d->q.bytes);
    d->seq_head += d->q.count;
    kr_cq_clear(&d->q);
    d->ninc = 0;
    KR_DLV_ADD(x->ctr.queue_collapses, 1);
    KR_DLV_ADD(x->ctr.resync_topics, named ? named : count);
    kr_dlv_push_notice(x, d, m);
    if (x->collapsed)
        x->collapsed(x, d, count, named);
}

void kr_dlv_notice(struct kr_dlv_ctx *x, struct kr_dlv *d, const char *topic, uint32_t len)
{
    struct kr_names nm = {.max = x->resync_max_topics ? x->resync_max_topics : 1};
    struct kr_cq_entry *tail = d->q.count ? kr_cq_at(&d->q, d->q.count - 1) : NULL;
    bool fold = tail && kr_is_notice(tail->msg);
    if (fold)
        kr_names_entry(&nm, tail);
    if (topic)
        kr_names_add(&nm, topic, len);
    else
        nm.all = true;
    struct kr_msg *m = kr_names_notice(&nm);
    kr_names_free(&nm);
    KR_DLV_ADD(x->ctr.resync_topics, topic ? 1 : 0);
    if (fold) { /* the unread notice at the tail names this topic too now */
        uint32_t bytes = tail->reply_bytes;
        kr_msg_unref(tail->msg);
        tail->msg = m;
        tail->reply_bytes = kr_entry_bytes(tail);
        d->q.bytes += tail->reply_bytes - bytes;
        KR_DLV_ADD(x->ctr.queued_bytes, tail->reply_bytes - bytes);
        x->queued(x, d);
        return;
    }
    kr_dlv_push_notice(x, d, m);
}

void kr_dlv_overflow(struct kr_dlv_ctx *x, struct kr_dlv *d)
{
    if (d->resync) {
        kr_dlv_collapse(x, d, NULL);
        return;
    }
    KR_DLV_ADD(x->ctr.queue_overflows, 1);
    uint32_t count = d->q.count;
    uint64_t bytes = d->q.bytes;
    kr_dlv_clear(x, d);
    d->overflowed = true;
    x->overflow(x, d, count, bytes); /* a waiting poll is answered with the error */
}

static void kr_release_delivery(struct kr_event *ev)
{
    struct kr_topicset ts = kr_topicset_from_word(ev->mask);
    kr_topicset_release(&ts, kr_msg_ntopics(ev->ptr));
    kr_msg_unref(ev->ptr);
}

/* Add the matched topics of `from` to `into` (same message); releases from's topic set. */
static void kr_entry_merge(struct kr_cq_entry *into, struct kr_cq_entry *from)
{
    kr_topicset_merge(&into->topics, &from->topics, kr_msg_ntopics(into->msg));
}

/* The completion record of a multi-shard message on this net thread; created on the first
 * live delivery or END (each shard sends its deliveries before its END). */
static struct kr_pend *kr_dlv_pend(struct kr_dlv_ctx *x, struct kr_msg *m, bool create)
{
    void **slot = kr_msg_slot(m, x->net);
    if (!*slot && create) {
        struct kr_pend *p = kr_xcalloc(1, sizeof(*p));
        p->expected = kr_msg_nshards(m);
        p->refs = 1; /* the message slot's */
        *slot = p;
    }
    return *slot;
}

bool kr_dlv_end(struct kr_dlv_ctx *x, struct kr_msg *m, uint32_t shard_fanout, uint32_t *fanout)
{
    struct kr_pend *p = kr_dlv_pend(x, m, true);
    p->arrived++;
    p->fanout += shard_fanout;
    if (p->arrived < p->expected)
        return false;
    *fanout = p->fanout;
    *kr_msg_slot(m, x->net) = NULL;
    kr_pend_unref(p);
    return true;
}

/* Queue an entry for a client (takes over its references), enforcing the limits.
 * An entry of a multi-shard message that is not complete yet is remembered so the other
 * shards' parts merge into it. */
static void kr_dlv_enqueue(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_cq_entry *e)
{
    e->reply_bytes = kr_entry_bytes(e);
    if (d->q.count + 1 > x->max_queued_messages ||
        d->q.bytes + e->reply_bytes > x->max_queued_bytes) {
        if (d->resync) {
            kr_dlv_collapse(x, d, e);
            return;
        }
        kr_entry_release(e);
        kr_dlv_overflow(x, d);
        return;
    }
    /* A multi-shard message's entry sits where its first part arrived. A part from another
     * shard may arrive before an earlier message of the same publisher: only such incomplete
     * entries can be out of order, so place this one before the first of them that the same
     * publisher published later (per-publisher, per-topic order). */
    uint32_t pos = d->q.count;
    if (d->ninc) {
        kr_dlv_find_incomplete(d, NULL); /* prune */
        uint64_t pub = kr_msg_publisher(e->msg), t = kr_msg_time_us(e->msg);
        for (uint32_t i = 0; i < d->ninc; i++) {
            uint32_t at = (uint32_t)(d->inc[i].seq - d->seq_head);
            struct kr_msg *other = d->inc[i].msg;
            if (at < pos && kr_msg_publisher(other) == pub && kr_msg_time_us(other) > t)
                pos = at;
        }
        if (pos < d->q.count)
            for (uint32_t i = 0; i < d->ninc; i++)
                if (d->inc[i].seq - d->seq_head >= pos)
                    d->inc[i].seq++;
    }
    if (e->pend) {
        KR_GROW_MIN(d->inc, d->inc_cap, d->ninc + 1, 4);
        d->inc[d->ninc].msg = e->msg;
        d->inc[d->ninc].seq = d->seq_head + pos;
        d->ninc++;
    }
    kr_cq_insert(&d->q, pos, e);
    KR_DLV_ADD(x->ctr.queued_messages, 1);
    KR_DLV_ADD(x->ctr.queued_bytes, e->reply_bytes);
    KR_DLV_ADD(x->ctr.deliveries_queued, 1);
    x->queued(x, d);
    x->mem_grown += e->reply_bytes; /* max_memory: a thread-local add and compare */
    if (x->mem_grown >= x->mem_step)
        x->mem_check(x);
}

/* The queued, still incomplete entry of multi-shard message m, if any. Drops the records
 * of entries that completed or were handed out meanwhile. */
static struct kr_cq_entry *kr_dlv_find_incomplete(struct kr_dlv *d, struct kr_msg *m)
{
    uint32_t keep = 0;
    struct kr_cq_entry *found = NULL;
    for (uint32_t i = 0; i < d->ninc; i++) {
        struct kr_incomplete *inc = &d->inc[i];
        if (inc->seq < d->seq_head)
            continue; /* already handed to the client */
        struct kr_cq_entry *e = kr_cq_at(&d->q, (uint32_t)(inc->seq - d->seq_head));
        if (!e->pend || e->pend->arrived >= e->pend->expected)
            continue;
        if (m && inc->msg == m)
            found = e;
        d->inc[keep++] = *inc;
    }
    d->ninc = keep;
    return found;
}

static void kr_dlv_stage(struct kr_dlv *d, const struct kr_cq_entry *e, bool replay)
{
    KR_GROW(d->stage, d->stage_cap, d->nstage + 1);
    d->stage[d->nstage].e = *e;
    d->stage[d->nstage].replay = replay;
    d->stage[d->nstage].order = d->nstage;
    d->nstage++;
}

void kr_dlv_deliver(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_event *ev, bool replay)
{
    struct kr_msg *m = ev->ptr;
    struct kr_pend *pend = NULL;
    if (!replay && kr_msg_nshards(m) > 1)
        pend = kr_dlv_pend(x, m, true);
    if (!d || d->overflowed) {
        kr_release_delivery(ev);
        return;
    }
    struct kr_cq_entry e = {.msg = m, .topics = kr_topicset_from_word(ev->mask), .pend = pend};
    if (!pend && !replay && x->push && d->q.count == 0 && !d->retro_active &&
        x->push(x, d, m, &e.topics)) {
        /* written out at once: nothing before it was waiting, so order is kept */
        KR_DLV_ADD(x->ctr.deliveries_queued, 1);
        if (d->handed)
            kr_dlv_handed(d, m, &e.topics);
        kr_topicset_release(&e.topics, kr_msg_ntopics(m));
        kr_dlv_unref_later(x, m);
        return;
    }
    if (pend)
        pend->refs++;
    if (d->retro_active) {
        kr_dlv_stage(d, &e, replay);
        return;
    }
    if (pend) {
        struct kr_cq_entry *found = kr_dlv_find_incomplete(d, m);
        if (found) {
            uint32_t before = found->reply_bytes;
            kr_entry_merge(found, &e);
            kr_pend_unref(pend);
            kr_msg_unref(m);
            found->reply_bytes = kr_entry_bytes(found);
            d->q.bytes += found->reply_bytes - before;
            KR_DLV_ADD(x->ctr.queued_bytes, found->reply_bytes - before);
            return;
        }
    }
    kr_dlv_enqueue(x, d, &e);
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

/* Slot of a message pointer in the retro map (Fibonacci hashing of the address). */
static uint32_t kr_dlv_ptr_hash(const struct kr_msg *m)
{
    return (uint32_t)((((uintptr_t)m >> 4) * UINT64_C(0x9E3779B97F4A7C15)) >> 32);
}

void kr_dlv_replay_remote(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_msg *m)
{
    uint32_t nt = kr_msg_ntopics(m);
    struct kr_topicset ts;
    kr_topicset_init(&ts, nt);
    for (uint32_t i = 0; i < nt; i++)
        kr_topicset_set(&ts, nt, i);
    struct kr_event ev = {.ptr = m, .mask = kr_topicset_word(ts)};
    if (d)
        d->remote_replay = true;
    kr_dlv_deliver(x, d, &ev, true);
}

/* A message's name across the cluster: its origin (this node's id for 0) and origin
 * sequence; false when it has none yet (not forwarded: no other node has it). */
static bool kr_dlv_origin_key(const struct kr_dlv_ctx *x, const struct kr_msg *m, uint64_t *o,
                              uint64_t *s)
{
    *o = kr_msg_origin(m, s);
    if (!*o)
        *o = x->self_origin;
    return *s != 0;
}

/* The staging of a resume another node replayed (sorted: replays first): a live delivery
 * of a replayed message (same origin and origin sequence) takes the replayed copy's place,
 * so it is queued once, in publish order, and later parts of it from other shards still
 * join it. Emptied slots get msg NULL. */
static void kr_dlv_dedup_remote(const struct kr_dlv_ctx *x, struct kr_dlv *d)
{
    uint32_t cap = 16;
    while (cap < d->nstage * 2)
        cap <<= 1;
    struct kr_okey {
        uint64_t o, s;
        uint32_t i;
    } *map = kr_xmalloc(cap * sizeof(*map));
    for (uint32_t b = 0; b < cap; b++)
        map[b].i = UINT32_MAX;
    for (uint32_t i = 0; i < d->nstage; i++) {
        uint64_t o, sq;
        if (!d->stage[i].replay || !kr_dlv_origin_key(x, d->stage[i].e.msg, &o, &sq))
            continue;
        uint32_t b = (uint32_t)((o ^ sq) * UINT64_C(0x9E3779B97F4A7C15) >> 32) & (cap - 1);
        while (map[b].i != UINT32_MAX)
            b = (b + 1) & (cap - 1);
        map[b] = (struct kr_okey){o, sq, i};
    }
    for (uint32_t i = 0; i < d->nstage; i++) {
        uint64_t o, sq;
        if (d->stage[i].replay || !kr_dlv_origin_key(x, d->stage[i].e.msg, &o, &sq))
            continue;
        uint32_t b = (uint32_t)((o ^ sq) * UINT64_C(0x9E3779B97F4A7C15) >> 32) & (cap - 1);
        while (map[b].i != UINT32_MAX && (map[b].o != o || map[b].s != sq))
            b = (b + 1) & (cap - 1);
        if (map[b].i == UINT32_MAX)
            continue;
        struct kr_cq_entry *into = &d->stage[map[b].i].e;
        kr_entry_release(into);
        *into = d->stage[i].e;
        d->stage[i].e.msg = NULL;
        map[b].i = UINT32_MAX - 1; /* taken: a second live copy stays where it is */
        map[b].o = map[b].s = 0;
    }
    free(map);
}

void kr_dlv_retro_done(struct kr_dlv_ctx *x, struct kr_dlv *d)
{
    d->retro_active = false;
    if (d->pending_n) { /* a resume's uncovered topics: told before the replayed messages */
        struct kr_names nm = {.max = x->resync_max_topics ? x->resync_max_topics : 1};
        const char *p = d->pending, *end = d->pending + d->pending_len;
        while (p < end) {
            const char *sp = memchr(p, ' ', (size_t)(end - p));
            const char *stop = sp ? sp : end;
            kr_names_add(&nm, p, (uint32_t)(stop - p));
            p = stop + 1;
        }
        struct kr_msg *m = kr_names_notice(&nm);
        KR_DLV_ADD(x->ctr.resync_topics, nm.all ? d->pending_n : nm.n);
        kr_names_free(&nm);
        d->pending_len = d->pending_n = 0;
        kr_dlv_push_notice(x, d, m);
    }
    if (d->nstage == 0)
        return;
    qsort(d->stage, d->nstage, sizeof(*d->stage), kr_staged_cmp);
    if (d->remote_replay)
        kr_dlv_dedup_remote(x, d);
    d->remote_replay = false;
    /* message -> position in the output, open addressing on the pointer */
    uint32_t cap = 16;
    while (cap < d->nstage * 2)
        cap <<= 1;
    uint32_t *map = kr_xmalloc(cap * sizeof(*map));
    memset(map, 0xff, cap * sizeof(*map));
    uint32_t nout = 0;
    for (uint32_t i = 0; i < d->nstage; i++) {
        struct kr_staged *st = &d->stage[i];
        if (!st->e.msg) /* taken by its replayed copy's slot */
            continue;
        if (st->replay && d->retro_not_found) {
            kr_entry_release(&st->e);
            continue;
        }
        uint32_t h = kr_dlv_ptr_hash(st->e.msg) & (cap - 1);
        while (map[h] != UINT32_MAX && d->stage[map[h]].e.msg != st->e.msg)
            h = (h + 1) & (cap - 1);
        if (map[h] == UINT32_MAX) {
            d->stage[nout] = *st; /* compact in place: nout <= i */
            map[h] = nout++;
            continue;
        }
        struct kr_cq_entry *into = &d->stage[map[h]].e;
        kr_entry_merge(into, &st->e);
        if (st->e.pend && !into->pend)
            into->pend = st->e.pend;
        else if (st->e.pend)
            kr_pend_unref(st->e.pend);
        kr_msg_unref(st->e.msg);
    }
    free(map);
    d->nstage = 0;
    for (uint32_t i = 0; i < nout; i++) {
        struct kr_cq_entry *e = &d->stage[i].e;
        if (d->overflowed) { /* the queue was discarded: so is the rest */
            kr_entry_release(e);
            continue;
        }
        if (d->stage[i].replay)
            KR_DLV_ADD(x->ctr.messages_replayed, 1);
        if (!e->pend && kr_msg_nshards(e->msg) > 1) {
            /* shards still working on this message may deliver it live: join its record */
            struct kr_pend *p = kr_dlv_pend(x, e->msg, false);
            if (p) {
                p->refs++;
                e->pend = p;
            }
        }
        kr_dlv_enqueue(x, d, e);
    }
}

/* ---------------------------------------------------------------- positions */

void kr_dlv_track_position(struct kr_dlv_ctx *x, struct kr_dlv *d)
{
    if (!d->handed)
        d->handed = kr_xcalloc(x->nshards ? x->nshards : 1, sizeof(*d->handed));
}

void kr_dlv_cap_frontier(struct kr_dlv_ctx *x, struct kr_dlv *d, const uint64_t *seen)
{
    if (!d->handed || d->seen_cap)
        return;
    uint32_t n = x->nshards ? x->nshards : 1;
    d->seen_cap = kr_xmalloc(n * sizeof(*d->seen_cap));
    memcpy(d->seen_cap, seen, n * sizeof(*d->seen_cap));
}

/* Fold the parts of entry e into the lowest (lo) and highest (hi) sequence per shard. */
static void kr_parts_minmax(const struct kr_cq_entry *e, uint64_t *lo, uint64_t *hi)
{
    uint32_t nt = kr_msg_ntopics(e->msg);
    for (uint32_t i = 0; i < nt; i++) {
        if (!kr_topicset_has(&e->topics, nt, i))
            continue;
        uint32_t shard;
        uint64_t seq = kr_msg_seq(e->msg, i, &shard);
        if (!seq)
            continue;
        if (lo && seq < lo[shard])
            lo[shard] = seq;
        if (hi && seq > hi[shard])
            hi[shard] = seq;
    }
}

/* Per shard, over the entries from index `from` on and the staging: the lowest part still
 * queued (lo, UINT64_MAX when none) and the highest part received (hi). */
static void kr_dlv_pending(const struct kr_dlv_ctx *x, const struct kr_dlv *d, uint32_t from,
                           uint64_t *lo, uint64_t *hi)
{
    for (uint32_t s = 0; s < x->nshards; s++) {
        lo[s] = UINT64_MAX;
        hi[s] = 0;
    }
    for (uint32_t i = from; i < d->q.count; i++)
        kr_parts_minmax(kr_cq_at((struct kr_cq *)&d->q, i), lo, hi);
    for (uint32_t i = 0; i < d->nstage; i++)
        kr_parts_minmax(&d->stage[i].e, lo, hi);
}

bool kr_dlv_position(const struct kr_dlv_ctx *x, const struct kr_dlv *d, const uint64_t *seen,
                     uint64_t *pos)
{
    uint64_t lo[64], hi[64], through[64];
    if (!d->handed || x->nshards > 64)
        return false;
    kr_dlv_pending(x, d, 0, lo, hi);
    for (uint32_t s = 0; s < x->nshards; s++) {
        /* received (the frontier, what was handed, what is queued) ... */
        through[s] = seen[s];
        if (d->seen_cap && d->seen_cap[s] < through[s])
            through[s] = d->seen_cap[s]; /* unsubscribed by the drain since */
        if (hi[s] > through[s])
            through[s] = hi[s];
        if (d->handed[s] > through[s])
            through[s] = d->handed[s];
        /* ... up to the lowest part still queued */
        if (lo[s] != UINT64_MAX && lo[s] - 1 < through[s])
            through[s] = lo[s] - 1;
        if (d->handed[s] > through[s])
            return false; /* a part was handed out above one still queued */
    }
    memcpy(pos, through, x->nshards * sizeof(*pos));
    return true;
}

uint32_t kr_dlv_ready_positioned(const struct kr_dlv_ctx *x, struct kr_dlv *d, uint64_t max,
                                 uint64_t *bytes)
{
    uint32_t n = kr_dlv_ready(d, max, bytes);
    uint64_t lo[64], hi[64], top[64];
    if (!d->handed || x->nshards > 64)
        return n;
    for (int iter = 0; iter < 64; iter++) {
        /* the highest part handed out after this reply, and the lowest one left queued */
        for (uint32_t s = 0; s < x->nshards; s++)
            top[s] = d->handed[s];
        for (uint32_t i = 0; i < n; i++)
            kr_parts_minmax(kr_cq_at(&d->q, i), NULL, top);
        kr_dlv_pending(x, d, n, lo, hi);
        uint32_t bad = UINT32_MAX;
        for (uint32_t s = 0; s < x->nshards && bad == UINT32_MAX; s++)
            if (lo[s] != UINT64_MAX && top[s] >= lo[s])
                bad = s;
        if (bad == UINT32_MAX)
            break;
        /* a queued part of shard `bad` is below one handed out: hand out everything up to
         * and including the first such entry when they are complete, else stop before the
         * first handed-out entry above it */
        uint32_t j = n;
        bool complete = true;
        for (; j < d->q.count; j++) {
            struct kr_cq_entry *e = kr_cq_at(&d->q, j);
            if (!kr_entry_complete(e))
                complete = false;
            uint64_t elo[64];
            for (uint32_t s = 0; s < x->nshards; s++)
                elo[s] = UINT64_MAX;
            kr_parts_minmax(e, elo, NULL);
            if (elo[bad] < top[bad])
                break;
        }
        if (j < d->q.count && complete) {
            n = j + 1;
            continue;
        }
        uint32_t i = 0;
        for (; i < n; i++) {
            uint64_t ehi[64] = {0};
            kr_parts_minmax(kr_cq_at(&d->q, i), NULL, ehi);
            if (ehi[bad] >= lo[bad])
                break;
        }
        if (i == n)
            break; /* handed out by an earlier reply: no cut mends it */
        n = i;
    }
    *bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct kr_cq_entry *e = kr_cq_at(&d->q, i);
        e->reply_bytes = kr_entry_bytes(e);
        *bytes += e->reply_bytes;
    }
    return n;
}

void kr_dlv_resync_later(struct kr_dlv *d, const char *topic, uint32_t len)
{
    uint32_t need = d->pending_len + len + 1;
    if (need > d->pending_cap) {
        d->pending_cap = need * 2;
        d->pending = kr_xrealloc(d->pending, d->pending_cap);
    }
    if (d->pending_len)
        d->pending[d->pending_len++] = ' ';
    memcpy(d->pending + d->pending_len, topic, len);
    d->pending_len += len;
    d->pending_n++;
}
