/* Admin dumps (dump_queues, dump_queue_topics, dump_topics), each on a worker thread.
 *
 * The worker gathers what it shows without stopping anyone: per-connection figures come
 * from the net threads through their request queues (kr_server_list_conns), subscription
 * counts and the topic table from RCU walks of the shards' tables, a client's topic list
 * from its shards through their request queues. Its output goes to the control thread in
 * chunks of KR_ADMIN_CHUNK bytes, each one a request to the control thread's kr_reqq
 * (queue/kr_queue.h) whose run queues the chunk's write. The worker counts the bytes not
 * yet written; the chunk that takes them over KR_ADMIN_INFLIGHT_MAX is sent as a request
 * the worker waits on, answered once the writes brought them down to half of it, or with
 * -ECANCELED when the admin client left. Memory stays bounded whatever the table size:
 * dump_topics sorts by subscriber count in bands of at most KR_DUMP_BAND topics (one table
 * walk per band after a first walk that counts topics per subscriber count). */
#include <ck_pr.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <urcu/urcu-memb.h>
#include <xxhash.h>

#include "kr_admin_int.h"
#include "kr_queue.h"
#include "kr_util.h"
#include "kr_router.h"

#define KR_DUMP_BAND 65536        /* topics held in memory at once by dump_topics */
#define KR_DUMP_TOPIC_BUF (160 * 1024) /* > the longest topic (64 KiB) */
#define KR_DUMP_CONNS 256         /* connections asked from a net thread at once */
#define KR_DUMP_STALL_MS 60000    /* a client that reads nothing for this long ends its dump */


/* One chunk of a worker's output on its way to the control thread. */
struct kr_dump_req {
    struct kr_req base;         /* first */
    struct kr_admin_job *j;
    struct kr_admin_chunk *ch;  /* taken over by the run; NULL for none */
    bool final;                 /* the worker's last request: it returns after it */
    bool wait;                  /* the worker waits for the answer */
};

struct kr_admin_job {
    struct kr_admin *a;
    struct kr_admin_conn *conn;
    pthread_t thread;
    bool joined;
    enum kr_admin_op kind; /* KR_ACMD_DUMP_* */
    uint64_t id;    /* dump_queue_topics */
    uint64_t limit; /* dump_topics: 0 = all */
    /* worker only */
    struct kr_admin_chunk *cur;
    size_t cur_cap;
    char err[256];
    /* both (atomics) */
    size_t inflight; /* bytes handed over and not written yet */
    int cancelled;
    /* control thread only */
    bool finished;              /* the final request ran */
    struct kr_dump_req *waiter; /* the request the worker waits on (answered KR_REQ_LATER) */
    uint32_t writes;
};

static bool kr_dump_parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return false;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

bool kr_admin_job_check(enum kr_admin_op op, int argc, char **argv, char *why, size_t whylen)
{
    uint64_t v;
    if (op == KR_ACMD_DUMP_QUEUES) {
        if (argc == 1)
            return true;
        snprintf(why, whylen, "usage: dump_queues");
    } else if (op == KR_ACMD_DUMP_QUEUE_TOPICS) {
        if (argc == 2 && kr_dump_parse_u64(argv[1], &v))
            return true;
        if (argc == 2)
            snprintf(why, whylen, "bad client id '%.64s' (a number, as dump_queues shows)",
                     argv[1]);
        else
            snprintf(why, whylen, "usage: dump_queue_topics <client-id>");
    } else {
        if (argc == 1 || (argc == 2 && kr_dump_parse_u64(argv[1], &v) && v > 0))
            return true;
        snprintf(why, whylen, "usage: dump_topics [N] (N a positive number of topics)");
    }
    return false;
}

static bool kr_dump_cancelled(struct kr_admin_job *j)
{
    return __atomic_load_n(&j->cancelled, __ATOMIC_ACQUIRE) != 0;
}

__attribute__((format(printf, 3, 4))) static int kr_dump_fail(struct kr_admin_job *j, int rc,
                                                              const char *fmt, ...);

/* Frees a request nobody waits for (and its chunk when the run did not take it). */
static void kr_dump_req_release(struct kr_req *req)
{
    struct kr_dump_req *r = (struct kr_dump_req *)req;
    free(r->ch);
    free(r);
}

/* The run of a chunk request, on the control thread: queue the chunk's write; the final
 * request marks the job finished; a request the worker waits on is answered once the
 * bytes in flight are down to half the limit (kr_admin_job_sent). */
static int kr_dump_req_run(struct kr_req *req, void *owner)
{
    struct kr_dump_req *r = (struct kr_dump_req *)req;
    struct kr_admin_job *j = r->j;
    (void)owner;
    struct kr_admin_chunk *ch = r->ch;
    r->ch = NULL;
    if (ch)
        kr_admin_conn_send_job_chunk(j->conn, j, ch); /* may cancel the job (write error) */
    if (r->final) {
        j->finished = true;
        return 0;
    }
    if (!r->wait)
        return 0;
    if (kr_dump_cancelled(j))
        return -ECANCELED;
    if (__atomic_load_n(&j->inflight, __ATOMIC_ACQUIRE) <= KR_ADMIN_INFLIGHT_MAX / 2)
        return 0;
    j->waiter = r;
    return KR_REQ_LATER;
}

/* Hand the current chunk to the control thread (the last request when `final`); when the
 * bytes in flight go over the limit, wait until they are down to half of it. Returns 0,
 * -ECANCELED (the job was cancelled), -ESHUTDOWN (the admin socket closes) or -ETIMEDOUT
 * (the client read nothing for KR_DUMP_STALL_MS). Worker. */
static int kr_dump_flush(struct kr_admin_job *j, bool final)
{
    struct kr_admin_chunk *ch = j->cur;
    j->cur = NULL;
    if (ch && ch->len == 0) {
        free(ch);
        ch = NULL;
    }
    if (!ch && !final)
        return kr_dump_cancelled(j) ? -ECANCELED : 0;
    struct kr_dump_req *r = kr_xcalloc(1, sizeof(*r));
    r->base.run = kr_dump_req_run;
    r->base.release = kr_dump_req_release;
    r->j = j;
    r->ch = ch;
    r->final = final;
    size_t len = ch ? ch->len : 0;
    r->wait = !final &&
              __atomic_add_fetch(&j->inflight, len, __ATOMIC_ACQ_REL) > KR_ADMIN_INFLIGHT_MAX;
    if (!r->wait) {
        int rc = kr_reqq_submit(j->a->reqq, &r->base, -1); /* r is the queue's now */
        if (rc < 0 || final)
            return rc;
        return kr_dump_cancelled(j) ? -ECANCELED : 0;
    }
    int rc = kr_reqq_submit(j->a->reqq, &r->base, KR_DUMP_STALL_MS);
    if (rc == -ETIMEDOUT) /* abandoned: the queue's side frees r once answered */
        return kr_dump_fail(j, rc, "the admin client read nothing for %d s",
                            KR_DUMP_STALL_MS / 1000);
    free(r->ch); /* not taken when the queue was shut down first */
    free(r);
    return rc;
}

/* Append one line (with its '\n'). Worker. */
static int kr_dump_put(struct kr_admin_job *j, const char *line, size_t len)
{
    if (j->cur && j->cur->len + len > j->cur_cap) {
        int rc = kr_dump_flush(j, false);
        if (rc < 0)
            return rc;
    }
    if (!j->cur) {
        j->cur_cap = len > KR_ADMIN_CHUNK ? len : KR_ADMIN_CHUNK;
        j->cur = kr_admin_chunk_new(j->cur_cap);
        j->cur->len = 0;
    }
    memcpy(j->cur->data + j->cur->len, line, len);
    j->cur->len += len;
    return 0;
}

__attribute__((format(printf, 2, 3))) static int kr_dump_printf(struct kr_admin_job *j,
                                                                const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        return 0;
    return kr_dump_put(j, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

__attribute__((format(printf, 3, 4))) static int kr_dump_fail(struct kr_admin_job *j, int rc,
                                                              const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err, sizeof(j->err), fmt, ap);
    va_end(ap);
    return rc;
}

/* ---------------------------------------------------------------- dump_queues */

static int kr_dump_client_line(struct kr_admin_job *j, const struct kr_net_conn_info *ci,
                               uint32_t nsubs)
{
    char poll[32];
    if (ci->since_poll_ms < 0)
        snprintf(poll, sizeof(poll), "never");
    else
        snprintf(poll, sizeof(poll), "%" PRId64, ci->since_poll_ms);
    return kr_dump_printf(j,
                          "CLIENT id=%" PRIu64 " peer=%s subscriptions=%u queued_messages=%u"
                          " queued_bytes=%" PRIu64 " age_ms=%" PRIu64 " last_poll_ms=%s"
                          " idle_ms=%" PRIu64 " mem=%" PRIu64 "\n",
                          ci->id, ci->peer, nsubs, ci->queued_messages, ci->queued_bytes,
                          ci->age_ms, poll, ci->idle_ms, ci->mem);
}

static int kr_dump_queues(struct kr_admin_job *j)
{
    struct kr_server *srv = j->a->srv;
    struct kr_router *r = kr_server_router(srv);
    struct kr_net_conn_info *ci = kr_xcalloc(KR_DUMP_CONNS, sizeof(*ci));
    int rc = 0;
    for (uint32_t net = 0; net < kr_server_nnet(srv) && rc == 0; net++) {
        uint32_t cursor = 0;
        for (;;) {
            int n = kr_server_list_conns(srv, net, &cursor, ci, KR_DUMP_CONNS, KR_ADMIN_WAIT_MS);
            if (n < 0) {
                rc = kr_dump_fail(j, n, "net thread %u did not answer: %s", net, strerror(-n));
                break;
            }
            if (n == 0)
                break;
            for (int k = 0; k < n && rc == 0; k++)
                rc = kr_dump_client_line(j, &ci[k], kr_router_client_nsubs(r, ci[k].id));
            if (rc < 0 || kr_dump_cancelled(j)) {
                rc = rc < 0 ? rc : -ECANCELED;
                break;
            }
        }
    }
    free(ci);
    return rc;
}

/* ---------------------------------------------------------------- dump_queue_topics */

static int kr_dump_queue_topics(struct kr_admin_job *j)
{
    struct kr_server *srv = j->a->srv;
    struct kr_router *r = kr_server_router(srv);
    struct kr_net_conn_info ci;
    int rc = kr_server_find_conn(srv, j->id, &ci, KR_ADMIN_WAIT_MS);
    if (rc == -ENOENT)
        return kr_dump_fail(j, rc, "unknown client id %" PRIu64 " (no such connection; see "
                                   "dump_queues)", j->id);
    if (rc < 0)
        return kr_dump_fail(j, rc, "net thread did not answer: %s", strerror(-rc));
    rc = kr_dump_client_line(j, &ci, kr_router_client_nsubs(r, j->id));
    char *buf = kr_xcalloc(1, KR_DUMP_TOPIC_BUF);
    for (uint32_t s = 0; s < kr_router_nshards(r) && rc == 0; s++) {
        uint32_t cursor = 0;
        for (;;) {
            ssize_t n = kr_router_client_topics(r, s, j->id, &cursor, buf, KR_DUMP_TOPIC_BUF,
                                                KR_ADMIN_WAIT_MS);
            if (n < 0) {
                rc = kr_dump_fail(j, (int)n, "shard %u did not answer: %s", s,
                                  strerror((int)-n));
                break;
            }
            if (n == 0)
                break;
            for (char *p = buf, *end = buf + n; p < end && rc == 0;) {
                char *nl = memchr(p, '\n', (size_t)(end - p));
                size_t len = (size_t)(nl - p);
                if (j->cur && j->cur->len + len + 7 > j->cur_cap)
                    rc = kr_dump_flush(j, false);
                if (rc == 0)
                    rc = kr_dump_put(j, "TOPIC ", 6);
                if (rc == 0)
                    rc = kr_dump_put(j, p, len + 1);
                p = nl + 1;
            }
            if (rc < 0 || kr_dump_cancelled(j)) {
                rc = rc < 0 ? rc : -ECANCELED;
                break;
            }
        }
    }
    free(buf);
    return rc;
}

/* ---------------------------------------------------------------- dump_topics */

/* subscriber count -> number of topics with that count (open addressing, 0 = empty) */
struct kr_dump_hist {
    uint32_t *keys;
    uint64_t *vals;
    size_t cap;
    size_t n;
};

static void kr_dump_hist_add(struct kr_dump_hist *h, uint32_t key)
{
    if ((h->n + 1) * 2 > h->cap) {
        struct kr_dump_hist g = {0};
        g.cap = h->cap ? h->cap * 2 : 256;
        g.keys = kr_xcalloc(g.cap, sizeof(*g.keys));
        g.vals = kr_xcalloc(g.cap, sizeof(*g.vals));
        for (size_t i = 0; i < h->cap; i++) {
            if (!h->keys[i])
                continue;
            size_t k = (h->keys[i] * 2654435761u) & (g.cap - 1);
            while (g.keys[k])
                k = (k + 1) & (g.cap - 1);
            g.keys[k] = h->keys[i];
            g.vals[k] = h->vals[i];
        }
        g.n = h->n;
        free(h->keys);
        free(h->vals);
        *h = g;
    }
    size_t k = (key * 2654435761u) & (h->cap - 1);
    while (h->keys[k] && h->keys[k] != key)
        k = (k + 1) & (h->cap - 1);
    if (!h->keys[k]) {
        h->keys[k] = key;
        h->n++;
    }
    h->vals[k]++;
}

struct kr_dump_count {
    uint32_t subs;
    uint64_t topics;
};

static int kr_dump_count_desc(const void *x, const void *y)
{
    const struct kr_dump_count *a = x, *b = y;
    return a->subs < b->subs ? 1 : a->subs > b->subs ? -1 : 0;
}

struct kr_dump_walk {
    struct kr_admin_job *j;
    struct kr_dump_hist hist;
    /* a band: counts in [lo, hi], hash part `part` of `parts` */
    uint32_t lo, hi;
    uint32_t part, parts;
    struct kr_dump_entry *ents;
    size_t nents, ents_cap;
    char *names;
    size_t names_len, names_cap;
    uint64_t visited;
};

struct kr_dump_entry {
    uint32_t subs;
    uint32_t len;
    size_t off;
};

static int kr_dump_hist_cb(void *arg, const char *topic, uint32_t len, uint32_t nsubs)
{
    struct kr_dump_walk *w = arg;
    (void)topic;
    (void)len;
    if (nsubs)
        kr_dump_hist_add(&w->hist, nsubs);
    return (++w->visited & 0xffff) == 0 && kr_dump_cancelled(w->j);
}

static int kr_dump_band_cb(void *arg, const char *topic, uint32_t len, uint32_t nsubs)
{
    struct kr_dump_walk *w = arg;
    if ((++w->visited & 0xffff) == 0 && kr_dump_cancelled(w->j))
        return 1;
    if (nsubs < w->lo || nsubs > w->hi || nsubs == 0)
        return 0;
    if (w->parts > 1 && XXH3_64bits(topic, len) % w->parts != w->part)
        return 0;
    if (w->nents >= 4 * (size_t)KR_DUMP_BAND)
        return 0; /* the table grew a lot since it was counted: keep memory bounded */
    KR_GROW_MIN(w->ents, w->ents_cap, w->nents + 1, 1024);
    KR_GROW_MIN(w->names, w->names_cap, w->names_len + len, 65536);
    memcpy(w->names + w->names_len, topic, len);
    w->ents[w->nents++] = (struct kr_dump_entry){nsubs, len, w->names_len};
    w->names_len += len;
    return 0;
}

static int kr_dump_entry_cmp(const void *x, const void *y, void *names_arg)
{
    const struct kr_dump_entry *a = x, *b = y;
    const char *names = names_arg;
    if (a->subs != b->subs)
        return a->subs < b->subs ? 1 : -1;
    uint32_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(names + a->off, names + b->off, n);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

static int kr_dump_topics(struct kr_admin_job *j)
{
    struct kr_router *r = kr_server_router(j->a->srv);
    struct kr_dump_walk w = {.j = j};
    kr_router_walk_topics(r, kr_dump_hist_cb, &w);
    if (kr_dump_cancelled(j)) {
        free(w.hist.keys);
        free(w.hist.vals);
        return -ECANCELED;
    }
    struct kr_dump_count *counts = kr_xcalloc(w.hist.n, sizeof(*counts));
    size_t nc = 0;
    for (size_t i = 0; i < w.hist.cap; i++)
        if (w.hist.keys[i])
            counts[nc++] = (struct kr_dump_count){w.hist.keys[i], w.hist.vals[i]};
    free(w.hist.keys);
    free(w.hist.vals);
    qsort(counts, nc, sizeof(*counts), kr_dump_count_desc);

    int rc = 0;
    uint64_t shown = 0;
    size_t i = 0;
    while (i < nc && rc == 0 && (!j->limit || shown < j->limit)) {
        /* the next band: counts from counts[i].subs down, at most KR_DUMP_BAND topics, or
         * one count split in hash parts when it alone has more */
        uint32_t hi = counts[i].subs, lo = hi, parts = 1;
        if (counts[i].topics > KR_DUMP_BAND) {
            parts = (uint32_t)((counts[i].topics + KR_DUMP_BAND - 1) / KR_DUMP_BAND);
            i++;
        } else {
            uint64_t total = 0;
            while (i < nc && total + counts[i].topics <= KR_DUMP_BAND) {
                total += counts[i].topics;
                lo = counts[i].subs;
                i++;
            }
        }
        for (uint32_t part = 0; part < parts && rc == 0 && (!j->limit || shown < j->limit);
             part++) {
            w.lo = lo;
            w.hi = hi;
            w.part = part;
            w.parts = parts;
            w.nents = 0;
            w.names_len = 0;
            kr_router_walk_topics(r, kr_dump_band_cb, &w);
            if (kr_dump_cancelled(j)) {
                rc = -ECANCELED;
                break;
            }
            if (w.nents)
                qsort_r(w.ents, w.nents, sizeof(*w.ents), kr_dump_entry_cmp, w.names);
            for (size_t k = 0; k < w.nents && rc == 0 && (!j->limit || shown < j->limit); k++) {
                char head[32];
                int hl = snprintf(head, sizeof(head), "TOPIC %u ", w.ents[k].subs);
                if (j->cur && j->cur->len + (size_t)hl + w.ents[k].len + 1 > j->cur_cap)
                    rc = kr_dump_flush(j, false);
                if (rc == 0)
                    rc = kr_dump_put(j, head, (size_t)hl);
                if (rc == 0)
                    rc = kr_dump_put(j, w.names + w.ents[k].off, w.ents[k].len);
                if (rc == 0)
                    rc = kr_dump_put(j, "\n", 1);
                shown++;
            }
        }
    }
    free(w.ents);
    free(w.names);
    free(counts);
    return rc;
}

/* ---------------------------------------------------------------- worker */

static void *kr_dump_main(void *arg)
{
    struct kr_admin_job *j = arg;
    pthread_setname_np(pthread_self(), "kr-admin-dump");
    urcu_memb_register_thread(); /* RCU walks of the shards' tables */
    int rc;
    switch (j->kind) {
    case KR_ACMD_DUMP_QUEUES:
        rc = kr_dump_queues(j);
        break;
    case KR_ACMD_DUMP_QUEUE_TOPICS:
        rc = kr_dump_queue_topics(j);
        break;
    default:
        rc = kr_dump_topics(j);
        break;
    }
    urcu_memb_unregister_thread();
    if (rc == 0)
        kr_dump_put(j, "END\n", 4);
    else if (rc != -ECANCELED && rc != -ESHUTDOWN)
        kr_dump_printf(j, "ERROR %s\n", j->err[0] ? j->err : strerror(-rc));
    kr_dump_flush(j, true); /* last: the control thread may join this thread after it */
    return NULL;
}

struct kr_admin_job *kr_admin_job_start(struct kr_admin *a, struct kr_admin_conn *c,
                                        enum kr_admin_op op, int argc, char **argv, char *why,
                                        size_t whylen)
{
    struct kr_admin_job *j = kr_xcalloc(1, sizeof(*j));
    j->a = a;
    j->conn = c;
    j->kind = op;
    if (op == KR_ACMD_DUMP_QUEUE_TOPICS) {
        kr_dump_parse_u64(argv[1], &j->id);
    } else if (op == KR_ACMD_DUMP_TOPICS) {
        if (argc == 2)
            kr_dump_parse_u64(argv[1], &j->limit);
    }
    int rc = pthread_create(&j->thread, NULL, kr_dump_main, j);
    if (rc != 0) {
        snprintf(why, whylen, "cannot start a dump thread: %s", strerror(rc));
        free(j);
        return NULL;
    }
    return j;
}

struct kr_admin_conn *kr_admin_job_conn(const struct kr_admin_job *j)
{
    return j->conn;
}

void kr_admin_job_cancel(struct kr_admin_job *j)
{
    __atomic_store_n(&j->cancelled, 1, __ATOMIC_RELEASE);
    if (j->waiter) {
        struct kr_dump_req *w = j->waiter;
        j->waiter = NULL;
        kr_reqq_complete(j->a->reqq, &w->base, -ECANCELED);
    }
}

void kr_admin_job_join(struct kr_admin_job *j)
{
    if (j->joined)
        return;
    pthread_join(j->thread, NULL);
    j->joined = true;
}

void kr_admin_job_sent(struct kr_admin_job *j, size_t len, bool was_written)
{
    if (was_written)
        j->writes--;
    size_t left = __atomic_sub_fetch(&j->inflight, len, __ATOMIC_ACQ_REL);
    if (j->waiter && left <= KR_ADMIN_INFLIGHT_MAX / 2) {
        struct kr_dump_req *w = j->waiter;
        j->waiter = NULL;
        kr_reqq_complete(j->a->reqq, &w->base, 0);
    }
}

void kr_admin_job_writes_add(struct kr_admin_job *j, int n)
{
    j->writes += (uint32_t)n;
}

bool kr_admin_job_reap(struct kr_admin_job *j)
{
    if ((!j->finished && !j->joined) || j->writes)
        return false;
    if (j->waiter) /* abandoned by a worker that stopped waiting: the queue frees it */
        kr_reqq_complete(j->a->reqq, &j->waiter->base, -ECANCELED);
    kr_admin_job_join(j); /* the worker returns right after its final request */
    free(j);
    return true;
}

void kr_admin_job_free(struct kr_admin_job *j)
{
    kr_admin_job_join(j);
    free(j);
}
