/* One shard's topic table: see kr_topics.h. */
#include "kr_topics.h"

#include <ck_pr.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <stdatomic.h>
#include <urcu/urcu-memb.h>
#include <urcu/rculfhash.h>
#include <xxhash.h>

#include "kr_queue.h"
#include "kr_util.h"

struct kr_sub {
    struct kr_topic *topic;
    struct kr_sconn *conn;
    uint32_t topic_idx; /* position in topic->subs */
    uint32_t conn_idx;  /* position in conn->subs */
    uint64_t since_us;  /* live deliveries only of messages published after this */
};

/* The subscriptions of a topic or of a client. The first is held in the record itself
 * until a second comes: a topic or a client with one subscription, the common case of a
 * subscribe/unsubscribe churn (records made and freed per operation), allocates no array.
 * n is read by other threads (ck_pr_load_32); the rest is the owner's. */
struct kr_subv {
    uint32_t n;
    uint32_t cap; /* 0: the one subscription is `one` */
    union {
        struct kr_sub **arr;
        struct kr_sub *one;
    };
};

struct kr_topic {
    struct cds_lfht_node node;
    uint64_t stamp;
    uint64_t held; /* the owner's clock when the topic got its first subscriber */
    struct kr_subv subs;
    uint32_t len;
    char name[];
};

struct kr_sconn {
    struct cds_lfht_node node;
    uint64_t id;
    uint64_t stamp;
    uint64_t word;
    struct kr_subv subs;
};

static inline struct kr_sub **kr_subv_items(struct kr_subv *v)
{
    return v->cap ? v->arr : &v->one;
}

static inline struct kr_sub *kr_subv_at(const struct kr_subv *v, uint32_t i)
{
    return v->cap ? v->arr[i] : v->one;
}

static void kr_subv_push(struct kr_subv *v, struct kr_sub *s)
{
    if (v->cap == 0) {
        if (v->n == 0) {
            v->one = s;
            v->n = 1;
            return;
        }
        struct kr_sub *first = v->one; /* the second: the one moves into the array */
        v->arr = NULL;
        KR_GROW_MIN(v->arr, v->cap, v->n + 1, 4);
        v->arr[0] = first;
    } else {
        KR_GROW_MIN(v->arr, v->cap, v->n + 1, 4);
    }
    v->arr[v->n++] = s;
}

static void kr_subv_free(struct kr_subv *v)
{
    if (v->cap)
        free(v->arr);
}

/* One of the two hash tables with the figures its owner resizes it by.
 *
 * The owner resizes its tables itself, in step with its own inserts and removals: a table
 * grows when its entries pass KR_TABLE_MAX_LOAD per bucket and shrinks when they fall under
 * one per KR_TABLE_SHRINK_LOAD buckets, landing at 2 to 4 buckets per entry either way (so
 * a grow and a shrink are far apart). liburcu's CDS_LFHT_AUTO_RESIZE is not used: it lets
 * chains reach 8 entries before it reacts, then hands the resize to a worker thread, and
 * liburcu 0.13 can lose that hand-off for good (the launcher marks the resize initiated
 * after queueing it, so a worker that already finished leaves the mark set and no later
 * resize is ever queued): a shard stayed at 2048 buckets with chains of 300 under a
 * million topics. cds_lfht_resize runs on the calling thread (a grow to 16384 buckets or
 * more populates the new buckets with short-lived helper threads it joins) and a shrink
 * waits for RCU grace periods, so it is called outside any read-side critical section. */
#define KR_TABLE_MAX_LOAD 2
#define KR_TABLE_SHRINK_LOAD 16

struct kr_table {
    struct cds_lfht *ht;
    uint64_t nodes;              /* entries; written by the owner only, read by anyone */
    unsigned long buckets;       /* the size last given to the table */
    unsigned long min_buckets;   /* never smaller than this (the creation size) */
    uint64_t resizes;            /* how many resizes, and their time */
    uint64_t resize_ns;
};

/* Entries unlinked from a table are freed after an RCU grace period (another thread may
 * still be walking them), in batches: one call_rcu per KR_RETIRE_BATCH entries or per run of
 * changes (kr_topics_flush_retired) instead of one per entry, whose queue lock and call were
 * 7 % of a shard in a subscribe/unsubscribe churn. The grace period's callback only hands
 * the batch back (t->done); the owner frees it on its own thread at its next flush, so the
 * allocator serves the frees from the owner's own cache (freed on liburcu's callback
 * thread, each went to the allocator's shared bins under their lock: another 5 %). An
 * item's low bit tells a client record (1) from a topic (0). */
#define KR_RETIRE_BATCH 256
struct kr_retired {
    struct rcu_head rcu;
    struct kr_topics *t;
    struct kr_retired *next; /* on t->done */
    uint32_t n;
    uintptr_t items[KR_RETIRE_BATCH];
};

struct kr_topics {
    struct kr_retired *retired; /* the batch being filled, or NULL */
    _Atomic(struct kr_retired *) done; /* past their grace period, for the owner to free */
    uint64_t retired_out, retired_freed; /* batches handed to call_rcu, and freed since */
    struct kr_table topics;
    struct kr_table conns;
    uint64_t nsubscriptions;
    kr_topics_hook_cb hook; /* a topic got its first subscriber or lost its last */
    void *hook_arg;
    uint64_t ntopics; /* topics with subscribers (kept empty ones are in the table only) */
    uint64_t clock; /* recorded by topics getting their first subscriber (kr_topic_held) */
    enum kr_topics_empty empty; /* what becomes of a topic that lost its last subscriber */
};

static inline unsigned long kr_topics_hash(const char *s, uint32_t len)
{
    return (unsigned long)kr_topic_hash(s, len);
}

static inline unsigned long kr_conn_hash(uint64_t id)
{
    return (unsigned long)XXH3_64bits(&id, sizeof(id));
}

struct kr_topic_key {
    const char *s;
    uint32_t len;
};

static int kr_topic_match(struct cds_lfht_node *node, const void *key)
{
    const struct kr_topic *tp = caa_container_of(node, struct kr_topic, node);
    const struct kr_topic_key *k = key;
    return tp->len == k->len && memcmp(tp->name, k->s, k->len) == 0;
}

static int kr_conn_match(struct cds_lfht_node *node, const void *key)
{
    const struct kr_sconn *c = caa_container_of(node, struct kr_sconn, node);
    return c->id == *(const uint64_t *)key;
}

static void kr_table_init(struct kr_table *tb, unsigned long min_buckets)
{
    /* no flags: no automatic resize (see struct kr_table), no per-CPU counting either (the
     * owner counts entries itself) */
    tb->ht = cds_lfht_new_flavor(min_buckets, min_buckets, 0, 0, &urcu_memb_flavor, NULL);
    if (!tb->ht)
        abort();
    tb->buckets = min_buckets;
    tb->min_buckets = min_buckets;
}

static unsigned long kr_pow2_at_least(uint64_t n)
{
    unsigned long p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

/* Resize the table if its load left [1/KR_TABLE_SHRINK_LOAD, KR_TABLE_MAX_LOAD]. The owner,
 * registered with urcu-memb, outside any read-side critical section. */
static void kr_table_fit(struct kr_table *tb)
{
    unsigned long want;
    if (tb->nodes > (uint64_t)KR_TABLE_MAX_LOAD * tb->buckets)
        want = kr_pow2_at_least(tb->nodes) * 2; /* 2 to 4 buckets per entry */
    else if (tb->buckets > tb->min_buckets && tb->nodes < tb->buckets / KR_TABLE_SHRINK_LOAD)
        want = kr_pow2_at_least(tb->nodes) * 2;
    else
        return;
    if (want < tb->min_buckets)
        want = tb->min_buckets;
    if (want == tb->buckets)
        return;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    cds_lfht_resize(tb->ht, want);
    clock_gettime(CLOCK_MONOTONIC, &b);
    tb->buckets = want;
    tb->resizes++;
    tb->resize_ns += (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000u + (uint64_t)b.tv_nsec -
                     (uint64_t)a.tv_nsec;
}

static void kr_table_count(struct kr_table *tb, int delta)
{
    ck_pr_store_64(&tb->nodes, tb->nodes + (uint64_t)(int64_t)delta);
}

struct kr_topics *kr_topics_create(void)
{
    struct kr_topics *t = kr_xcalloc(1, sizeof(*t));
    kr_table_init(&t->topics, 1024);
    kr_table_init(&t->conns, 256);
    return t;
}

/* liburcu's callback thread, after the grace period: back to the owner. */
static void kr_retired_done_rcu(struct rcu_head *h)
{
    struct kr_retired *b = caa_container_of(h, struct kr_retired, rcu);
    struct kr_retired *head = atomic_load_explicit(&b->t->done, memory_order_relaxed);
    do
        b->next = head;
    while (!atomic_compare_exchange_weak_explicit(&b->t->done, &head, b, memory_order_release,
                                                  memory_order_relaxed));
}

static void kr_retired_free(struct kr_retired *b)
{
    for (uint32_t i = 0; i < b->n; i++) {
        if (b->items[i] & 1) {
            struct kr_sconn *c = (struct kr_sconn *)(b->items[i] & ~(uintptr_t)1);
            kr_subv_free(&c->subs);
            free(c);
        } else {
            struct kr_topic *tp = (struct kr_topic *)b->items[i];
            kr_subv_free(&tp->subs);
            free(tp);
        }
    }
    free(b);
}

/* Free the batches whose grace period ended. */
static void kr_topics_free_done(struct kr_topics *t)
{
    if (!atomic_load_explicit(&t->done, memory_order_relaxed))
        return;
    struct kr_retired *b = atomic_exchange_explicit(&t->done, NULL, memory_order_acquire);
    while (b) {
        struct kr_retired *next = b->next;
        kr_retired_free(b);
        t->retired_freed++;
        b = next;
    }
}

bool kr_topics_retired_waiting(const struct kr_topics *t)
{
    return t->retired_out != t->retired_freed;
}

void kr_topics_flush_retired(struct kr_topics *t)
{
    kr_topics_free_done(t);
    if (!t->retired)
        return;
    urcu_memb_call_rcu(&t->retired->rcu, kr_retired_done_rcu);
    t->retired_out++;
    t->retired = NULL;
}

/* Free p (a topic, or a client record with `conn`) after a grace period. */
static void kr_retire(struct kr_topics *t, void *p, bool conn)
{
    if (!t->retired) {
        t->retired = kr_xmalloc(sizeof(*t->retired));
        t->retired->t = t;
        t->retired->n = 0;
    }
    t->retired->items[t->retired->n++] = (uintptr_t)p | (conn ? 1u : 0u);
    if (t->retired->n == KR_RETIRE_BATCH)
        kr_topics_flush_retired(t);
}

void kr_topics_destroy(struct kr_topics *t)
{
    if (!t)
        return;
    /* the batches waiting for their grace period come back to t: wait for them */
    kr_topics_flush_retired(t);
    urcu_memb_barrier();
    kr_topics_free_done(t);
    struct cds_lfht_iter it;
    struct cds_lfht_node *n;
    urcu_memb_read_lock();
    cds_lfht_first(t->topics.ht, &it);
    while ((n = cds_lfht_iter_get_node(&it)) != NULL) {
        struct kr_topic *tp = caa_container_of(n, struct kr_topic, node);
        cds_lfht_next(t->topics.ht, &it);
        cds_lfht_del(t->topics.ht, n);
        for (uint32_t i = 0; i < tp->subs.n; i++)
            free(kr_subv_at(&tp->subs, i));
        kr_subv_free(&tp->subs);
        free(tp);
    }
    cds_lfht_first(t->conns.ht, &it);
    while ((n = cds_lfht_iter_get_node(&it)) != NULL) {
        struct kr_sconn *c = caa_container_of(n, struct kr_sconn, node);
        cds_lfht_next(t->conns.ht, &it);
        cds_lfht_del(t->conns.ht, n);
        kr_subv_free(&c->subs);
        free(c);
    }
    urcu_memb_read_unlock();
    cds_lfht_destroy(t->topics.ht, NULL);
    cds_lfht_destroy(t->conns.ht, NULL);
    free(t);
}

static struct kr_topic *kr_topics_lookup(struct kr_topics *t, const char *s, uint32_t len,
                                         unsigned long hash)
{
    struct kr_topic_key key = {s, len};
    struct cds_lfht_iter it;
    cds_lfht_lookup(t->topics.ht, hash, kr_topic_match, &key, &it);
    struct cds_lfht_node *n = cds_lfht_iter_get_node(&it);
    return n ? caa_container_of(n, struct kr_topic, node) : NULL;
}

static struct kr_sconn *kr_conns_lookup(struct kr_topics *t, uint64_t id)
{
    struct cds_lfht_iter it;
    cds_lfht_lookup(t->conns.ht, kr_conn_hash(id), kr_conn_match, &id, &it);
    struct cds_lfht_node *n = cds_lfht_iter_get_node(&it);
    return n ? caa_container_of(n, struct kr_sconn, node) : NULL;
}

/* The subscription of (tp, c), scanning the shorter side. */
static struct kr_sub *kr_sub_find(struct kr_topic *tp, struct kr_sconn *c)
{
    if (tp->subs.n <= c->subs.n) {
        struct kr_sub **v = kr_subv_items(&tp->subs);
        for (uint32_t i = 0; i < tp->subs.n; i++)
            if (v[i]->conn == c)
                return v[i];
    } else {
        struct kr_sub **v = kr_subv_items(&c->subs);
        for (uint32_t i = 0; i < c->subs.n; i++)
            if (v[i]->topic == tp)
                return v[i];
    }
    return NULL;
}

void kr_topics_set_hook(struct kr_topics *t, kr_topics_hook_cb cb, void *arg)
{
    t->hook = cb;
    t->hook_arg = arg;
}

int kr_topics_subscribe(struct kr_topics *t, const char *topic, uint32_t len, uint64_t conn,
                        uint64_t since_us)
{
    int ret = 0;
    urcu_memb_read_lock();
    unsigned long hash = kr_topics_hash(topic, len);
    struct kr_topic *tp = kr_topics_lookup(t, topic, len, hash);
    struct kr_sconn *c = kr_conns_lookup(t, conn);
    if (tp && c && kr_sub_find(tp, c))
        goto out;
    if (!tp) {
        tp = kr_xrealloc(NULL, sizeof(*tp) + len);
        memset(tp, 0, sizeof(*tp));
        tp->len = len;
        tp->held = t->clock; /* a kept topic that gets a subscriber again was held meanwhile */
        memcpy(tp->name, topic, len);
        cds_lfht_node_init(&tp->node);
        KR_TSAN_RELEASE(tp); /* published by the table (liburcu's barriers TSan cannot see) */
        cds_lfht_add(t->topics.ht, hash, &tp->node);
        kr_table_count(&t->topics, 1);
    }
    if (tp->subs.n == 0) { /* its first subscriber (a kept empty topic comes back) */
        ck_pr_store_64(&t->ntopics, t->ntopics + 1);
        if (t->hook)
            t->hook(t->hook_arg, topic, len, true);
    }
    if (!c) {
        c = kr_xrealloc(NULL, sizeof(*c));
        memset(c, 0, sizeof(*c));
        c->id = conn;
        cds_lfht_node_init(&c->node);
        KR_TSAN_RELEASE(c);
        cds_lfht_add(t->conns.ht, kr_conn_hash(conn), &c->node);
        kr_table_count(&t->conns, 1);
    }
    struct kr_sub *s = kr_xrealloc(NULL, sizeof(*s));
    s->topic = tp;
    s->conn = c;
    s->topic_idx = tp->subs.n;
    s->conn_idx = c->subs.n;
    s->since_us = since_us;
    kr_subv_push(&tp->subs, s);
    kr_subv_push(&c->subs, s);
    ck_pr_store_64(&t->nsubscriptions, t->nsubscriptions + 1);
    ret = 1;
out:
    urcu_memb_read_unlock();
    if (ret) {
        kr_table_fit(&t->topics);
        kr_table_fit(&t->conns);
    }
    return ret;
}

static void kr_topic_delete(struct kr_topics *t, struct kr_topic *tp)
{
    cds_lfht_del(t->topics.ht, &tp->node);
    kr_retire(t, tp, false);
    kr_table_count(&t->topics, -1);
}

/* Unlink one subscription from both sides; frees emptied topics and clients after a grace
 * period. Caller holds the read lock. */
static void kr_sub_remove(struct kr_topics *t, struct kr_sub *s)
{
    struct kr_topic *tp = s->topic;
    struct kr_sconn *c = s->conn;
    struct kr_sub **v = kr_subv_items(&tp->subs);
    struct kr_sub *last = v[--tp->subs.n];
    v[s->topic_idx] = last;
    last->topic_idx = s->topic_idx;
    v = kr_subv_items(&c->subs);
    last = v[--c->subs.n];
    v[s->conn_idx] = last;
    last->conn_idx = s->conn_idx;
    free(s);
    ck_pr_store_64(&t->nsubscriptions, t->nsubscriptions - 1);
    if (tp->subs.n == 0) {
        ck_pr_store_64(&t->ntopics, t->ntopics - 1);
        if (t->hook && t->empty != KR_TOPICS_HOLD)
            t->hook(t->hook_arg, tp->name, tp->len, false);
        if (t->empty == KR_TOPICS_DELETE)
            kr_topic_delete(t, tp);
    }
    if (c->subs.n == 0) {
        cds_lfht_del(t->conns.ht, &c->node);
        kr_retire(t, c, true);
        kr_table_count(&t->conns, -1);
    }
}

int kr_topics_unsubscribe(struct kr_topics *t, const char *topic, uint32_t len, uint64_t conn)
{
    int ret = 0;
    urcu_memb_read_lock();
    struct kr_topic *tp = kr_topics_lookup(t, topic, len, kr_topics_hash(topic, len));
    struct kr_sconn *c = tp ? kr_conns_lookup(t, conn) : NULL;
    struct kr_sub *s = c ? kr_sub_find(tp, c) : NULL;
    if (s) {
        kr_sub_remove(t, s);
        ret = 1;
    }
    urcu_memb_read_unlock();
    if (ret) {
        kr_table_fit(&t->topics);
        kr_table_fit(&t->conns);
    }
    return ret;
}

uint32_t kr_topics_drop_conn(struct kr_topics *t, uint64_t conn)
{
    uint32_t n = 0;
    urcu_memb_read_lock();
    struct kr_sconn *c = kr_conns_lookup(t, conn);
    if (c) {
        n = c->subs.n;
        /* The last removal frees c (after a grace period, so reading its subscriptions
         * stays valid). */
        for (uint32_t left = n; left > 0; left--)
            kr_sub_remove(t, kr_subv_at(&c->subs, left - 1));
    }
    urcu_memb_read_unlock();
    if (n) {
        kr_table_fit(&t->topics);
        kr_table_fit(&t->conns);
    }
    return n;
}

struct kr_topic *kr_topics_find(struct kr_topics *t, const char *topic, uint32_t len)
{
    return kr_topics_find_hashed(t, topic, len, kr_topic_hash(topic, len));
}

struct kr_topic *kr_topics_find_hashed(struct kr_topics *t, const char *topic, uint32_t len,
                                       uint64_t hash)
{
    urcu_memb_read_lock();
    struct kr_topic *tp = kr_topics_lookup(t, topic, len, (unsigned long)hash);
    urcu_memb_read_unlock();
    /* Only the owning thread frees topics, so the pointer stays valid for it. */
    return tp;
}

uint32_t kr_topic_nsubs(const struct kr_topic *tp) { return tp->subs.n; }
uint64_t *kr_topic_stamp(struct kr_topic *tp) { return &tp->stamp; }
uint64_t kr_topic_held(const struct kr_topic *tp) { return tp->held; }
void kr_topics_set_clock(struct kr_topics *t, uint64_t clock) { t->clock = clock; }
void kr_topics_set_empty(struct kr_topics *t, enum kr_topics_empty what) { t->empty = what; }

bool kr_topics_forget(struct kr_topics *t, const char *topic, uint32_t len)
{
    urcu_memb_read_lock();
    struct kr_topic *tp = kr_topics_lookup(t, topic, len, kr_topics_hash(topic, len));
    bool gone = tp && tp->subs.n == 0;
    if (gone)
        kr_topic_delete(t, tp);
    urcu_memb_read_unlock();
    if (gone)
        kr_table_fit(&t->topics);
    return gone;
}
struct kr_sconn *kr_topic_sub(const struct kr_topic *tp, uint32_t i, uint64_t *since_us)
{
    const struct kr_sub *s = kr_subv_at(&tp->subs, i);
    if (since_us)
        *since_us = s->since_us;
    return s->conn;
}
uint64_t kr_sconn_id(const struct kr_sconn *c) { return c->id; }
uint64_t *kr_sconn_stamp(struct kr_sconn *c) { return &c->stamp; }
uint64_t *kr_sconn_word(struct kr_sconn *c) { return &c->word; }
uint64_t kr_topics_count(const struct kr_topics *t)
{
    return ck_pr_load_64((uint64_t *)&t->ntopics);
}
uint64_t kr_topics_subscriptions(const struct kr_topics *t)
{
    return ck_pr_load_64((uint64_t *)&t->nsubscriptions);
}

void kr_topics_walk(struct kr_topics *t, kr_topics_walk_cb cb, void *arg)
{
    struct cds_lfht_iter it;
    struct kr_topic *tp;
    urcu_memb_read_lock();
    cds_lfht_for_each_entry(t->topics.ht, &it, tp, node)
    {
        KR_TSAN_ACQUIRE(tp); /* its creation by the shard (see kr_topics_subscribe) */
        uint32_t nsubs = ck_pr_load_32(&tp->subs.n);
        if (nsubs && cb(arg, tp->name, tp->len, nsubs)) /* kept empty topics are not listed */
            break;
    }
    urcu_memb_read_unlock();
}

uint32_t kr_topics_conn_nsubs(struct kr_topics *t, uint64_t conn)
{
    urcu_memb_read_lock();
    struct kr_sconn *c = kr_conns_lookup(t, conn);
    if (c)
        KR_TSAN_ACQUIRE(c);
    uint32_t n = c ? ck_pr_load_32(&c->subs.n) : 0;
    urcu_memb_read_unlock();
    return n;
}

size_t kr_topics_conn_topics(struct kr_topics *t, uint64_t conn, uint32_t *cursor, char *buf,
                             size_t cap)
{
    size_t used = 0;
    urcu_memb_read_lock();
    struct kr_sconn *c = kr_conns_lookup(t, conn);
    while (c && *cursor < c->subs.n) {
        const struct kr_topic *tp = kr_subv_at(&c->subs, *cursor)->topic;
        if (used + tp->len + 1 > cap)
            break;
        memcpy(buf + used, tp->name, tp->len);
        buf[used + tp->len] = '\n';
        used += tp->len + 1;
        (*cursor)++;
    }
    urcu_memb_read_unlock();
    return used;
}

/* The split-ordered list behind a cds_lfht holds one dummy node per bucket among the entries,
 * in bit-reversed hash order; a node's `next` carries liburcu's flags in its low bits
 * (documented in rculfhash.h: REMOVAL_OWNER_FLAG | BUCKET_FLAG | REMOVED_FLAG, bits 2..0).
 * A chain is the run of entries between two bucket nodes. The bucket nodes before the first
 * entry are not seen, but the number of buckets is a power of two and the odd ones (the last
 * half in index order) are spread evenly through the list, so the highest index seen gives it. */
#define KR_LFHT_FLAGS 7UL
#define KR_LFHT_REMOVED 1UL
#define KR_LFHT_BUCKET 2UL

static unsigned long kr_bit_reverse(unsigned long v)
{
    unsigned long r = 0;
    for (unsigned i = 0; i < sizeof(v) * 8; i++, v >>= 1)
        r = (r << 1) | (v & 1);
    return r;
}

void kr_topics_table_stats(struct kr_topics *t, enum kr_topics_table which,
                           struct kr_topics_table_stats *out)
{
    const struct kr_table *tb = which == KR_TOPICS_TABLE_CONNS ? &t->conns : &t->topics;
    struct cds_lfht *ht = tb->ht;
    memset(out, 0, sizeof(*out));
    out->resizes = tb->resizes;
    out->resize_ns = tb->resize_ns;
    struct cds_lfht_iter it;
    unsigned long max_bucket = 0;
    uint64_t run = 0;
    urcu_memb_read_lock();
    cds_lfht_first(ht, &it);
    struct cds_lfht_node *n = cds_lfht_iter_get_node(&it);
    while (n) {
        uintptr_t next = (uintptr_t)rcu_dereference(n->next);
        if (next & KR_LFHT_BUCKET) {
            unsigned long b = kr_bit_reverse(n->reverse_hash);
            if (b > max_bucket)
                max_bucket = b;
            run = 0;
        } else if (!(next & KR_LFHT_REMOVED)) {
            out->nodes++;
            if (++run > out->max_chain)
                out->max_chain = run;
        }
        n = (struct cds_lfht_node *)(next & ~KR_LFHT_FLAGS);
    }
    urcu_memb_read_unlock();
    if (out->nodes) {
        out->buckets = 1;
        while (out->buckets <= max_bucket)
            out->buckets <<= 1;
    }
}
