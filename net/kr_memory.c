/* max_memory: the process-wide bound on queued, history and unsent bytes; each net thread
 * overflows its own largest clients when over it. Net thread only. */
#include "kr_net_int.h"

#include <ck_pr.h>
#include <stdlib.h>

static int kr_mem_cand_cmp(const void *a, const void *b);
static uint64_t kr_conn_memory_overflow(struct kr_conn *c);

/* ---------------------------------------------------------------- max_memory
 * memory_used = every net thread's queued and unsent reply bytes plus the router's history
 * bytes, assembled from per-thread counters with relaxed loads. Each net thread acts on its
 * own clients only: on every sweep tick, and whenever its queues grew by mem_step bytes
 * since its last look, it reads the total; when that is over max_memory it overflows its
 * own largest clients (queued plus unsent bytes, largest first, only those at least half
 * the size of the largest client of any thread) until it freed its share of the excess
 * (the excess times its clients' part of all clients' bytes). An overflowed client is told
 * `SERVER_ERROR queue overflow` and closed, as with max_queued_bytes. Publishers are never
 * held back. */

struct kr_mem_cand {
    struct kr_conn *c;
    uint64_t bytes;
};

static int kr_mem_cand_cmp(const void *a, const void *b)
{
    const struct kr_mem_cand *x = a, *y = b;
    return x->bytes < y->bytes ? 1 : x->bytes > y->bytes ? -1 : 0; /* largest first */
}

/* Bytes max_memory counts now (relaxed loads; the history part in *history). Any thread. */
uint64_t kr_server_memory_used(struct kr_server *s, uint64_t *history)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < s->nnet; i++)
        n += ck_pr_load_64(&s->nts[i]->st.queued_bytes) + ck_pr_load_64(&s->nts[i]->st.output_bytes);
    struct kr_router_stats rs;
    kr_router_stats(s->router, &rs);
    if (history)
        *history = rs.history_bytes;
    return n + rs.history_bytes;
}

/* The client's queue goes (and its unsent replies, when it does not read): it is told
 * `SERVER_ERROR queue overflow` and closed. Returns the bytes freed. */
static uint64_t kr_conn_memory_overflow(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    uint64_t freed = c->dlv.q.bytes;
    KR_ST_INC(nt, memory_overflows, 1);
    uint64_t suppressed = 0;
    if (kr_log_enabled(KR_LOG_WARN) &&
        kr_log_ratelimit(&nt->rl_memory, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
        KR_WARN("client %s (id %llu): over max_memory (%llu); discarding its queue (%u messages, "
                "%llu bytes, %llu unsent), it will be told and disconnected (suppressed %llu "
                "similar)",
                kr_conn_peer(c), (unsigned long long)c->id, (unsigned long long)nt->live.max_memory,
                c->dlv.q.count, (unsigned long long)c->dlv.q.bytes,
                (unsigned long long)kr_conn_out_pending(c), (unsigned long long)suppressed);
    if (c->writing) {
        /* it does not read what it was sent: the error could not reach it either */
        freed += kr_conn_out_pending(c);
        kr_conn_overflow(c);
        kr_conn_close(c);
        return freed;
    }
    if (!c->dlv.overflowed)
        kr_conn_overflow(c); /* counted in queue_overflows too; a waiting poll gets the error */
    if (c->poll_wait == KR_PW_NONE && !c->close_after_write && !c->deferred_err) {
        kr_conn_error(c, KR_ERR_QUEUE_OVERFLOW); /* now, not at its next request: it may never send one */
        kr_conn_pause(c);
    }
    kr_conn_block(c); /* written and closed after this loop iteration */
    return freed;
}

/* See above. Net thread. */
void kr_nt_memory_check(struct kr_nt *nt)
{
    struct kr_server *srv = nt->srv;
    kr_nt_refresh_live(nt);
    uint64_t max = nt->live.max_memory;
    nt->dlv.mem_grown = 0;
    if (!max) {
        nt->dlv.mem_step = UINT64_MAX;
        ck_pr_store_64(&nt->mem_largest, 0);
        return;
    }
    nt->dlv.mem_step = max / (8 * (uint64_t)srv->nnet);
    if (nt->dlv.mem_step < 4096)
        nt->dlv.mem_step = 4096;
    uint64_t history, used = kr_server_memory_used(srv, &history);
    bool over = used > max;
    uint64_t largest = 0, mine = 0;
    uint32_t ncand = 0;
    for (uint32_t i = 0; i < nt->nslots; i++) {
        struct kr_conn *c = nt->slots[i];
        if (!c || c->closing)
            continue;
        uint64_t b = c->dlv.q.bytes + kr_conn_out_pending(c);
        if (!b)
            continue;
        mine += b;
        if (b > largest)
            largest = b;
        if (!over || (c->close_after_write && !c->writing))
            continue; /* on its way out */
        KR_GROW_MIN(nt->mem_cand, nt->mem_cand_cap, ncand + 1, 64);
        nt->mem_cand[ncand++] = (struct kr_mem_cand){.c = c, .bytes = b};
    }
    ck_pr_store_64(&nt->mem_largest, largest);
    if (!over || !ncand || used <= history)
        return;
    uint64_t global_largest = largest;
    for (uint32_t i = 0; i < srv->nnet; i++) {
        uint64_t l = ck_pr_load_64(&srv->nts[i]->mem_largest);
        if (l > global_largest)
            global_largest = l;
    }
    uint64_t excess = used - max, clients = used - history;
    if (mine > clients)
        mine = clients;
    /* this thread's share of the excess, rounded up */
    uint64_t share = (uint64_t)(((unsigned __int128)excess * mine + clients - 1) / clients);
    qsort(nt->mem_cand, ncand, sizeof(*nt->mem_cand), kr_mem_cand_cmp);
    uint64_t freed = 0;
    for (uint32_t k = 0; k < ncand && freed < share; k++) {
        if (nt->mem_cand[k].bytes * 2 < global_largest)
            break; /* another thread holds far larger clients: they go first */
        struct kr_conn *c = nt->mem_cand[k].c;
        if (c->closing)
            continue;
        freed += kr_conn_memory_overflow(c);
    }
}
