/* kraken-bench load engine: see kr_bench_run.h.
 *
 * Threads: the main thread owns the run (phases, barrier, progress, final accounting). Each
 * worker thread owns a libuv loop and every byte of its connections. They meet only through
 * atomics: the phase (main -> workers, followed by uv_async_send), the ready/done counters
 * and per-worker progress counters (workers -> main). A publisher's per-topic sequence
 * counters are read by the main thread only after that publisher reported "done" (release /
 * acquire on the done counter), and everything else only after the workers are joined. */
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "kr_bench_run.h"

#define KB_MAX_CONNECTING 64     /* connects in progress per worker */
/* drain: counts unchanged this long = settled. Only a run that is short of deliveries waits
 * it out (a complete one stops at once), so it is generous: on a starved machine (a
 * sanitizer build beside other work on two CPUs) a delivery can be more than a second late
 * without being lost, and a lost one is still lost after three. */
#define KB_SETTLE_NS 3000000000u
#define KB_PING_BARRIER UINT32_MAX
#define KB_RESYNC "__kraken__:resync"
#define KB_RESYNC_LEN (sizeof(KB_RESYNC) - 1)
#define KB_POSITION "__kraken__:position"
#define KB_POSITION_LEN (sizeof(KB_POSITION) - 1)
#define KB_MAX_TOKEN 512
_Static_assert(KR_BENCH_MAX_BATCH <= 65536, "batch array lives on the stack");

enum kb_phase {
    KB_PH_CONNECT,
    KB_PH_PROBE, /* cross-server runs: interest probes until every subscriber got one */
    KB_PH_RUN,
    KB_PH_DRAIN,
    KB_PH_REPLAY,
    KB_PH_STOP,
};

enum kb_role {
    KB_SUB,   /* subscriber (idle in the conns scenario, retroactive in retro) */
    KB_PUB,   /* publisher */
    KB_CHURN, /* subscribe/unsubscribe loop */
};

enum kb_cstate {
    KB_CS_NEW,
    KB_CS_CONNECTING,
    KB_CS_HELLO,       /* NATS: waiting for INFO, then for the barrier PONG */
    KB_CS_SUBSCRIBING, /* waiting for the subscribe acknowledgement(s) */
    KB_CS_REGISTERING, /* retro: waiting for `set register`'s STORED */
    KB_CS_READY,
    KB_CS_CUT,  /* resume: closed by the bench, reconnecting after its jitter */
    KB_CS_DEAD,
};

/* resume: what one subscriber saw of one (topic, publisher) stream, exactly */
struct kb_seen {
    uint64_t *bits;        /* bit seq-1: received */
    uint32_t nwords;
    uint32_t pending : 1;  /* a notice on the topic, no message of this stream since */
    uint64_t notice_ns;    /* when the last such notice arrived */
    uint64_t covered_below; /* sequences below this are covered by a notice */
};

/* Fixed-capacity FIFO of 64-bit values. */
struct kb_ring {
    uint64_t *v;
    uint32_t cap, head, n;
};

struct kb_worker;

struct kb_conn {
    struct kb_worker *w;
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    uv_timer_t *timer; /* Kraken poll pacing (--poll-ms), created on first use */
    enum kb_role role;
    enum kb_cstate state;
    uint32_t idx; /* index within the role */
    unsigned tcp_open : 1, writing : 1, polling : 1, closing : 1, done : 1, ready : 1;
    /* inside the read callback: requests made while handling replies are written once, at
     * its end, instead of one write() per reply */
    unsigned in_read : 1;
    unsigned draining : 1, retro_subscribed : 1, not_found : 1, churn_on : 1;
    /* resume: closed by the bench (its close in progress); was cut; its resume answered or
     * it failed after the cut (counted once in run->settled); from scratch */
    unsigned cutting : 1, was_cut : 1, settled : 1, scratch : 1;
    struct kr_bench_buf in, out, wbuf;
    size_t rchunk;   /* read-buffer headroom */
    size_t need;     /* bytes the reply being read needs in total, when known */
    uint64_t now;    /* arrival time of the bytes being parsed */
    uint32_t acks_wanted;
    /* pipelining */
    uint64_t inflight;
    uint32_t unpinged;    /* NATS: commands since the last PING */
    struct kb_ring pend;  /* per request: message count (pub) or send time (churn) */
    struct kb_ring pings; /* NATS: commands covered by each PING (KB_PING_BARRIER: barrier) */
    /* publisher */
    uint64_t *seq; /* per topic: messages published on it (= last sequence number) */
    uint64_t sent, quota, rng;
    /* subscriber */
    const uint32_t *topics; /* sorted topic indices, cfg.topics_per_sub of them */
    struct kr_bench_stream *streams; /* [slot * pubs + pub] */
    uint64_t received, corrupt, unexpected;
    uint64_t polls, empty_polls; /* Kraken */
    uint64_t t_sub, t_last; /* retro: subscribe sent, last message received */
    /* interest probes: subscriber got its probe; publisher 0: probes published */
    unsigned probed : 1;
    uint64_t probes;
    /* resume: the last position token, the reconnect timer, when the reconnect began and the
     * resume was sent and answered; exact per-stream records; notices */
    char *token;
    size_t token_len;
    uv_timer_t *jtimer;
    uint64_t t_reconnect, t_req, t_live;
    uint64_t t_closed; /* when the bench cut it, or the server closed it (a drain) */
    struct kb_seen *seen; /* [slot * pubs + pub] */
    uint64_t replayed, notices, notice_topics, dups;
    /* resume, publisher: topic and send time of each message in publish order; acknowledged */
    uint32_t *log_topic;
    uint64_t *log_sent;
    size_t log_n, log_cap;
    uint64_t acked_msgs;
    /* churn */
    uint32_t churn_topic;
    uint64_t churn_sid;
    /* counters not yet published to the worker's atomics */
    uint64_t p_pub, p_del, p_ops;
};

struct kb_run;

struct kb_worker {
    struct kb_run *run;
    unsigned id;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t tick; /* rate pacing */
    int phase;
    uint64_t t_start;
    struct kb_conn **conns;
    size_t nconns, cap, next_connect, connecting;
    struct kr_bench_hist hist;
    struct kr_bench_hist live; /* resume: reconnect -> answered */
    struct kr_bench_hist away; /* resume: closed -> answered */
    int cut_done;
    _Atomic uint64_t published, delivered, ops, errors;
};

struct kb_run {
    struct kr_bench_cfg cfg;
    struct kr_bench_result *res;
    struct sockaddr_storage addr, sub_addr; /* publishers (and churn), subscribers */
    struct sockaddr_storage move_addr;      /* resume: where cut subscribers go (moving) */
    char hostport[300], sub_hostport[300], move_hostport[300];
    int moving;                             /* resume: cut subscribers reconnect elsewhere */
    int drain;                              /* resume: the node drains them (--drain-admin) */
    uint64_t t_drain_sent;
    unsigned ntopics, k, nsubs, npubs, nchurn;
    char **topic;        /* names */
    size_t *topic_len;
    uint32_t *sub_topics; /* nsubs * k */
    uint64_t *topic_subs; /* subscribers per topic */
    struct kb_conn *subs, *pubs, *churn;
    struct kb_worker *workers;
    _Atomic int phase;
    _Atomic unsigned ready, done;
    _Atomic unsigned answered; /* retro: subscribers whose replay subscribe was answered */
    _Atomic int cut;           /* resume: main -> workers, cut every subscriber now */
    _Atomic unsigned settled;  /* resume: subscribers live again after the cut, or dead */
    _Atomic int fatal;
    _Atomic unsigned char *probe_seen; /* [nsubs]: written by the subscriber's worker */
    _Atomic unsigned probed;           /* subscribers whose probe arrived */
    uv_mutex_t err_lock;
    char first_error[512];
    uint64_t nerrors_reported;
    double per_conn_rate;
    unsigned nats_chunk;
};

static volatile sig_atomic_t kb_stop_requested;

void kr_bench_request_stop(void)
{
    kb_stop_requested = 1;
}

static uint64_t kb_now(void)
{
    return uv_hrtime();
}

static void *kb_calloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) {
        fprintf(stderr, "kraken-bench: out of memory\n");
        abort();
    }
    return p;
}

static uint64_t kb_rand(uint64_t *s)
{
    /* xorshift64* */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

static void kb_ring_init(struct kb_ring *r, uint32_t cap)
{
    r->v = kb_calloc(cap, sizeof(uint64_t));
    r->cap = cap;
    r->head = r->n = 0;
}

static void kb_ring_push(struct kb_ring *r, uint64_t v)
{
    if (r->n == r->cap) {
        /* grow (keeps order) */
        uint64_t *nv = kb_calloc(r->cap * 2, sizeof(uint64_t));
        for (uint32_t i = 0; i < r->n; i++)
            nv[i] = r->v[(r->head + i) % r->cap];
        free(r->v);
        r->v = nv;
        r->head = 0;
        r->cap *= 2;
    }
    r->v[(r->head + r->n) % r->cap] = v;
    r->n++;
}

static int kb_ring_pop(struct kb_ring *r, uint64_t *v)
{
    if (!r->n)
        return 0;
    *v = r->v[r->head];
    r->head = (r->head + 1) % r->cap;
    r->n--;
    return 1;
}

/* ------------------------------------------------------------------ errors */

static void kb_note_error(struct kb_run *run, int fatal, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void kb_note_error(struct kb_run *run, int fatal, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    uv_mutex_lock(&run->err_lock);
    if (!run->first_error[0])
        snprintf(run->first_error, sizeof(run->first_error), "%s", msg);
    if (run->cfg.progress && run->nerrors_reported < 5 && atomic_load(&run->phase) >= KB_PH_RUN)
        fprintf(stderr, "kraken-bench: %s\n", msg);
    run->nerrors_reported++;
    uv_mutex_unlock(&run->err_lock);
    if (fatal)
        atomic_store(&run->fatal, 1);
}

static const char *kb_role_name(enum kb_role r)
{
    return r == KB_SUB ? "subscriber" : r == KB_PUB ? "publisher" : "churn connection";
}

/* Where this connection goes: subscribers to --sub-host/--sub-port (once cut, when moving,
 * to --move-host/--move-port), the rest to --host/--port. */
static const char *kb_hostport(const struct kb_conn *c)
{
    const struct kb_run *run = c->w->run;
    if (c->role != KB_SUB)
        return run->hostport;
    return c->was_cut && run->moving ? run->move_hostport : run->sub_hostport;
}

static void kb_close_cb(uv_handle_t *h)
{
    (void)h;
}

static void kb_mark_done(struct kb_conn *c)
{
    if (c->done || (c->role != KB_PUB && c->role != KB_CHURN))
        return;
    c->done = 1;
    atomic_fetch_add_explicit(&c->w->run->done, 1, memory_order_release);
}

static void kb_retro_answered(struct kb_conn *c)
{
    if (c->retro_subscribed || c->role != KB_SUB || c->w->run->cfg.scenario != KR_BENCH_SC_RETRO)
        return;
    c->retro_subscribed = 1;
    atomic_fetch_add_explicit(&c->w->run->answered, 1, memory_order_release);
}

/* resume: a subscriber is settled once it is live again after the cut, or dead */
static void kb_settle(struct kb_conn *c)
{
    if (c->settled || c->role != KB_SUB || c->w->run->cfg.scenario != KR_BENCH_SC_RESUME)
        return;
    c->settled = 1;
    atomic_fetch_add_explicit(&c->w->run->settled, 1, memory_order_release);
}

static void kb_flush_counters(struct kb_conn *c)
{
    struct kb_worker *w = c->w;
    if (c->p_pub) {
        atomic_fetch_add_explicit(&w->published, c->p_pub, memory_order_relaxed);
        c->p_pub = 0;
    }
    if (c->p_del) {
        atomic_fetch_add_explicit(&w->delivered, c->p_del, memory_order_relaxed);
        c->p_del = 0;
    }
    if (c->p_ops) {
        atomic_fetch_add_explicit(&w->ops, c->p_ops, memory_order_relaxed);
        c->p_ops = 0;
    }
}

static void kb_conn_close(struct kb_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (c->tcp_open && !uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, kb_close_cb);
    if (c->timer)
        uv_close((uv_handle_t *)c->timer, kb_close_cb);
    if (c->jtimer)
        uv_close((uv_handle_t *)c->jtimer, kb_close_cb);
}

/* The connection broke (or the server said something fatal). Before the barrier this ends
 * the run; afterwards it is counted and the run continues. */
static void kb_conn_fail(struct kb_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void kb_conn_fail(struct kb_conn *c, const char *fmt, ...)
{
    if (c->state == KB_CS_DEAD)
        return;
    struct kb_run *run = c->w->run;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    int before_barrier = !c->ready;
    c->state = KB_CS_DEAD;
    atomic_fetch_add_explicit(&c->w->errors, 1, memory_order_relaxed);
    kb_note_error(run, before_barrier, "%s %u: %s", kb_role_name(c->role), c->idx, msg);
    kb_flush_counters(c);
    kb_mark_done(c);
    kb_retro_answered(c);
    if (c->w->cut_done || atomic_load_explicit(&run->cut, memory_order_acquire))
        kb_settle(c);
    kb_conn_close(c);
}

static int kb_server_gone(struct kb_conn *c);

/* ------------------------------------------------------------------ writing */

static void kb_flush(struct kb_conn *c);

static void kb_write_cb(uv_write_t *req, int status)
{
    struct kb_conn *c = req->data;
    c->writing = 0;
    c->wbuf.len = 0;
    if (status < 0) {
        if (!c->closing && !c->cutting && !kb_server_gone(c))
            kb_conn_fail(c, "write to %s: %s", kb_hostport(c), uv_strerror(status));
        return;
    }
    kb_flush(c);
}

static void kb_flush(struct kb_conn *c)
{
    if (c->writing || c->in_read || !c->out.len || c->state == KB_CS_DEAD || c->closing ||
        c->cutting || c->state == KB_CS_CUT)
        return;
    /* Write straight away when the socket takes it all: uv_write would also re-arm the
     * epoll registration (one more syscall per request), which a load generator cannot
     * afford on the machine it shares with the server under test. */
    uv_buf_t b = uv_buf_init(c->out.p, (unsigned)c->out.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)c->out.len) {
        c->out.len = 0;
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        if (!kb_server_gone(c))
            kb_conn_fail(c, "write to %s: %s", kb_hostport(c), uv_strerror(n));
        return;
    }
    size_t done = n > 0 ? (size_t)n : 0;
    struct kr_bench_buf t = c->wbuf;
    c->wbuf = c->out;
    c->out = t;
    c->out.len = 0;
    b = uv_buf_init(c->wbuf.p + done, (unsigned)(c->wbuf.len - done));
    c->writing = 1;
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, kb_write_cb);
    if (rc < 0) {
        c->writing = 0;
        if (!kb_server_gone(c))
            kb_conn_fail(c, "write: %s", uv_strerror(rc));
    }
}

/* ------------------------------------------------------------------ requests */

static void kb_set_ready(struct kb_conn *c)
{
    if (c->ready)
        return;
    c->ready = 1;
    c->state = KB_CS_READY;
    atomic_fetch_add_explicit(&c->w->run->ready, 1, memory_order_release);
}

static void kb_nats_ping(struct kb_conn *c, uint32_t covers)
{
    kr_bench_buf_add(&c->out, "PING\r\n", 6);
    kb_ring_push(&c->pings, covers);
}

/* Send the subscription of a subscriber (all protocols); its acknowledgement makes it ready
 * (or, for retro, starts the replay polling). */
static void kb_send_subscribe(struct kb_conn *c)
{
    struct kb_run *run = c->w->run;
    unsigned k = run->k;
    /* with probes, the subscriber's own probe subject comes last */
    char probe[96];
    size_t plen = 0;
    if (run->cfg.probe && run->probe_seen)
        plen = kr_bench_probe_name(probe, sizeof(probe), run->cfg.prefix, c->idx);
    else if (run->cfg.scenario == KR_BENCH_SC_RESUME)
        plen = (size_t)snprintf(probe, sizeof(probe), "%s", KB_RESYNC); /* notices, not a close */
    switch (run->cfg.proto) {
    case KR_BENCH_PROTO_KRAKEN: {
        size_t bytes = 0;
        for (unsigned i = 0; i < k; i++)
            bytes += run->topic_len[c->topics[i]] + (i ? 1 : 0);
        if (plen)
            bytes += plen + 1;
        kr_bench_buf_adds(&c->out, "set subscribe 0 0 ");
        kr_bench_buf_addu(&c->out, bytes);
        kr_bench_buf_add(&c->out, "\r\n", 2);
        for (unsigned i = 0; i < k; i++) {
            if (i)
                kr_bench_buf_add(&c->out, " ", 1);
            kr_bench_buf_add(&c->out, run->topic[c->topics[i]], run->topic_len[c->topics[i]]);
        }
        if (plen) {
            kr_bench_buf_add(&c->out, " ", 1);
            kr_bench_buf_add(&c->out, probe, plen);
        }
        kr_bench_buf_add(&c->out, "\r\n", 2);
        c->acks_wanted = 1;
        break;
    }
    case KR_BENCH_PROTO_REDIS: {
        kr_bench_buf_add(&c->out, "*", 1);
        kr_bench_buf_addu(&c->out, k + 1 + (plen ? 1 : 0));
        kr_bench_buf_adds(&c->out, "\r\n$9\r\nSUBSCRIBE\r\n");
        for (unsigned i = 0; i < k; i++) {
            uint32_t t = c->topics[i];
            kr_bench_buf_add(&c->out, "$", 1);
            kr_bench_buf_addu(&c->out, run->topic_len[t]);
            kr_bench_buf_add(&c->out, "\r\n", 2);
            kr_bench_buf_add(&c->out, run->topic[t], run->topic_len[t]);
            kr_bench_buf_add(&c->out, "\r\n", 2);
        }
        if (plen) {
            kr_bench_buf_add(&c->out, "$", 1);
            kr_bench_buf_addu(&c->out, plen);
            kr_bench_buf_add(&c->out, "\r\n", 2);
            kr_bench_buf_add(&c->out, probe, plen);
            kr_bench_buf_add(&c->out, "\r\n", 2);
        }
        c->acks_wanted = k + (plen ? 1 : 0);
        if (run->cfg.scenario == KR_BENCH_SC_RESUME) {
            /* the position after the messages pushed: a second SUBSCRIBE, confirmed too */
            static const char pos_sub[] = "*2\r\n$9\r\nSUBSCRIBE\r\n$19\r\n" KB_POSITION "\r\n";
            kr_bench_buf_add(&c->out, pos_sub, sizeof(pos_sub) - 1);
            c->acks_wanted++;
        }
        break;
    }
    case KR_BENCH_PROTO_NATS:
        for (unsigned i = 0; i < k; i++)
            kr_bench_nats_put_sub(&c->out, run->topic[c->topics[i]], run->topic_len[c->topics[i]],
                                  i + 1);
        if (plen)
            kr_bench_nats_put_sub(&c->out, probe, plen, k + 1);
        break;
    }
}

static void kb_poll(struct kb_conn *c)
{
    if (c->polling || c->state != KB_CS_READY || c->closing)
        return;
    c->polling = 1;
    if (c->w->run->cfg.scenario == KR_BENCH_SC_RESUME)
        kr_bench_buf_adds(&c->out, "get messages position\r\n");
    else
        kr_bench_buf_add(&c->out, "get messages\r\n", 14);
    kb_flush(c);
}

static void kb_poll_timer_cb(uv_timer_t *t)
{
    kb_poll(t->data);
}

/* A Kraken poll came back; poll again now, or after --poll-ms when it was empty. */
static void kb_poll_again(struct kb_conn *c, int empty)
{
    struct kb_run *run = c->w->run;
    c->polling = 0;
    c->polls++;
    c->empty_polls += empty ? 1 : 0;
    int ph = c->w->phase;
    if (ph >= KB_PH_STOP)
        return;
    if (empty && run->cfg.poll_ms) {
        if (!c->timer) {
            c->timer = kb_calloc(1, sizeof(*c->timer));
            uv_timer_init(&c->w->loop, c->timer);
            c->timer->data = c;
        }
        uv_timer_start(c->timer, kb_poll_timer_cb, run->cfg.poll_ms, 0);
        return;
    }
    kb_poll(c);
}

/* Budget of messages (or churn ops) the rate still allows this connection, capped at cap. */
static uint64_t kb_budget(struct kb_conn *c, uint64_t cap)
{
    struct kb_run *run = c->w->run;
    if (c->quota) {
        uint64_t left = c->quota > c->sent ? c->quota - c->sent : 0;
        if (left < cap)
            cap = left;
    }
    if (run->per_conn_rate <= 0)
        return cap;
    double elapsed = (double)(kb_now() - c->w->t_start) / 1e9;
    double allowed = elapsed * run->per_conn_rate + 1.0;
    if (allowed <= (double)c->sent)
        return 0;
    double b = allowed - (double)c->sent;
    return b < (double)cap ? (uint64_t)b : cap;
}

static void kb_check_done(struct kb_conn *c)
{
    if (c->done)
        return;
    int quota_met = c->quota && c->sent >= c->quota;
    if ((c->draining || quota_met) && c->inflight == 0 && c->unpinged == 0)
        kb_mark_done(c);
}

/* resume: a publisher remembers each message's topic and send time, in publish order */
static void kb_pub_log(struct kb_conn *c, uint32_t t, uint64_t now)
{
    if (c->log_n == c->log_cap) {
        c->log_cap = c->log_cap ? c->log_cap * 2 : 4096;
        c->log_topic = realloc(c->log_topic, c->log_cap * sizeof(uint32_t));
        c->log_sent = realloc(c->log_sent, c->log_cap * sizeof(uint64_t));
        if (!c->log_topic || !c->log_sent) {
            fprintf(stderr, "kraken-bench: out of memory\n");
            abort();
        }
    }
    c->log_topic[c->log_n] = t;
    c->log_sent[c->log_n++] = now;
}

/* Publisher: keep up to --pipeline requests in flight while the run lasts. */
static void kb_pub_pump(struct kb_conn *c)
{
    struct kb_run *run = c->w->run;
    const struct kr_bench_cfg *cfg = &run->cfg;
    if (c->state != KB_CS_READY || c->draining || c->w->phase != KB_PH_RUN || c->closing)
        return;
    uint64_t now = kb_now();
    size_t plen = cfg->msg_size;
    struct kr_bench_stamp st = {.pub = c->idx, .sent_ns = now};
    while (c->inflight < cfg->pipeline) {
        uint64_t n = kb_budget(c, cfg->proto == KR_BENCH_PROTO_KRAKEN ? cfg->batch : 1);
        if (!n)
            break;
        if (cfg->proto == KR_BENCH_PROTO_KRAKEN) {
            uint32_t tv[KR_BENCH_MAX_BATCH];
            size_t bytes = 0;
            for (uint64_t i = 0; i < n; i++) {
                tv[i] = (uint32_t)(kb_rand(&c->rng) % run->ntopics);
                bytes += kr_bench_kr_entry_size(run->topic_len[tv[i]], plen);
            }
            kr_bench_kr_put_publish_begin(&c->out, bytes);
            for (uint64_t i = 0; i < n; i++) {
                uint32_t t = tv[i];
                st.topic = t;
                st.seq = ++c->seq[t];
                if (cfg->scenario == KR_BENCH_SC_RESUME)
                    kb_pub_log(c, t, now);
                char *p = kr_bench_kr_put_entry(&c->out, run->topic[t], run->topic_len[t], plen);
                kr_bench_payload_write(p, plen, &st);
            }
            kr_bench_kr_put_publish_end(&c->out);
        } else {
            uint32_t t = (uint32_t)(kb_rand(&c->rng) % run->ntopics);
            st.topic = t;
            st.seq = ++c->seq[t];
            if (cfg->scenario == KR_BENCH_SC_RESUME)
                kb_pub_log(c, t, now);
            char *p = cfg->proto == KR_BENCH_PROTO_REDIS
                          ? kr_bench_resp_put_publish(&c->out, run->topic[t], run->topic_len[t], plen)
                          : kr_bench_nats_put_pub(&c->out, run->topic[t], run->topic_len[t], plen);
            kr_bench_payload_write(p, plen, &st);
        }
        c->sent += n;
        c->inflight++;
        kb_ring_push(&c->pend, n);
        if (cfg->proto == KR_BENCH_PROTO_NATS && ++c->unpinged >= run->nats_chunk) {
            kb_nats_ping(c, c->unpinged);
            c->unpinged = 0;
        }
    }
    if (c->quota && c->sent >= c->quota && cfg->proto == KR_BENCH_PROTO_NATS && c->unpinged) {
        kb_nats_ping(c, c->unpinged);
        c->unpinged = 0;
    }
    kb_flush(c);
}

/* Churn: alternate subscribe and unsubscribe of a random topic, --pipeline ops in flight. */
static void kb_churn_pump(struct kb_conn *c)
{
    struct kb_run *run = c->w->run;
    const struct kr_bench_cfg *cfg = &run->cfg;
    if (c->state != KB_CS_READY || c->draining || c->w->phase != KB_PH_RUN || c->closing)
        return;
    uint64_t now = kb_now();
    while (c->inflight < cfg->pipeline && kb_budget(c, 1)) {
        if (!c->churn_on)
            c->churn_topic = (uint32_t)(kb_rand(&c->rng) % run->ntopics);
        const char *name = run->topic[c->churn_topic];
        size_t len = run->topic_len[c->churn_topic];
        const char *verb = c->churn_on ? "unsubscribe" : "subscribe";
        switch (cfg->proto) {
        case KR_BENCH_PROTO_KRAKEN:
            kr_bench_kr_put_topics(&c->out, verb, &name, &len, 1);
            break;
        case KR_BENCH_PROTO_REDIS: {
            const char *argv[2] = {c->churn_on ? "UNSUBSCRIBE" : "SUBSCRIBE", name};
            size_t lens[2] = {strlen(argv[0]), len};
            kr_bench_resp_put_command(&c->out, 2, argv, lens);
            break;
        }
        case KR_BENCH_PROTO_NATS:
            if (c->churn_on)
                kr_bench_nats_put_unsub(&c->out, c->churn_sid);
            else
                kr_bench_nats_put_sub(&c->out, name, len, ++c->churn_sid);
            break;
        }
        c->churn_on = !c->churn_on;
        c->sent++;
        c->inflight++;
        kb_ring_push(&c->pend, now);
        if (cfg->proto == KR_BENCH_PROTO_NATS && ++c->unpinged >= run->nats_chunk) {
            kb_nats_ping(c, c->unpinged);
            c->unpinged = 0;
        }
    }
    kb_flush(c);
}

static void kb_pump(struct kb_conn *c)
{
    if (c->role == KB_PUB)
        kb_pub_pump(c);
    else if (c->role == KB_CHURN)
        kb_churn_pump(c);
}

/* One request (or NATS command) of a publisher or churner was acknowledged. */
static void kb_ack(struct kb_conn *c, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++) {
        uint64_t v;
        if (!kb_ring_pop(&c->pend, &v)) {
            kb_conn_fail(c, "acknowledgement without a request");
            return;
        }
        c->inflight--;
        if (c->role == KB_PUB) {
            c->p_pub += v;
            c->acked_msgs += v;
        } else {
            c->p_ops++;
            uint64_t now = c->now;
            kr_bench_hist_add(&c->w->hist, now > v ? now - v : 0);
        }
    }
    kb_check_done(c);
}

/* ------------------------------------------------------------------ receiving messages */

static int kb_topic_slot(const struct kb_conn *c, unsigned k, uint32_t t)
{
    unsigned lo = 0, hi = k;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (c->topics[mid] < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < k && c->topics[lo] == t ? (int)lo : -1;
}

/* resume: a notice (or a from-scratch resubscribe) covers what slot's topic saw before it */
static void kb_notice_slot(struct kb_conn *c, unsigned slot)
{
    struct kb_run *run = c->w->run;
    for (unsigned p = 0; p < run->npubs; p++) {
        struct kb_seen *sn = &c->seen[(size_t)slot * run->npubs + p];
        sn->pending = 1;
        sn->notice_ns = c->now;
    }
}

/* resume: a `__kraken__:resync` entry naming topics separated by spaces, or `*` */
static void kb_resync_notice(struct kb_conn *c, const char *p, size_t len)
{
    struct kb_run *run = c->w->run;
    size_t plen = strlen(run->cfg.prefix);
    c->notices++;
    if (len == 1 && p[0] == '*') {
        for (unsigned s = 0; s < run->k; s++)
            kb_notice_slot(c, s);
        c->notice_topics += run->k;
        return;
    }
    size_t i = 0;
    while (i < len) {
        size_t b = i;
        while (i < len && p[i] != ' ')
            i++;
        const char *name = p + b;
        size_t nl = i - b;
        i++;
        if (!nl)
            continue;
        uint64_t t = 0;
        int ok = nl > plen && nl - plen <= 9 && memcmp(name, run->cfg.prefix, plen) == 0;
        for (size_t j = plen; ok && j < nl; j++) {
            if (name[j] < '0' || name[j] > '9')
                ok = 0;
            else
                t = t * 10 + (uint64_t)(name[j] - '0');
        }
        int slot = ok && t < run->ntopics ? kb_topic_slot(c, run->k, (uint32_t)t) : -1;
        if (slot < 0) {
            c->unexpected++; /* a topic this subscriber does not hold */
            continue;
        }
        kb_notice_slot(c, (unsigned)slot);
        c->notice_topics++;
    }
}

/* resume: record one arrival exactly; 1 when it is a duplicate */
static int kb_seen_add(struct kb_seen *sn, uint64_t seq)
{
    uint64_t i = seq - 1;
    if (i / 64 >= sn->nwords) {
        uint32_t n = sn->nwords ? sn->nwords : 1;
        while (i / 64 >= n)
            n *= 2;
        uint64_t *nb = realloc(sn->bits, n * sizeof(uint64_t));
        if (!nb) {
            fprintf(stderr, "kraken-bench: out of memory\n");
            abort();
        }
        memset(nb + sn->nwords, 0, (n - sn->nwords) * sizeof(uint64_t));
        sn->bits = nb;
        sn->nwords = n;
    }
    uint64_t bit = UINT64_C(1) << (i % 64);
    if (sn->pending) {
        /* the first message of this stream after a notice: what came before is covered */
        sn->pending = 0;
        if (seq > sn->covered_below)
            sn->covered_below = seq;
    }
    if (sn->bits[i / 64] & bit)
        return 1;
    sn->bits[i / 64] |= bit;
    return 0;
}

static void kb_sub_message(struct kb_conn *c, const char *topic, size_t tlen, const char *payload,
                           size_t plen)
{
    struct kb_run *run = c->w->run;
    struct kr_bench_stamp st;
    uint32_t who;
    if (c->seen && tlen == KB_RESYNC_LEN && memcmp(topic, KB_RESYNC, tlen) == 0) {
        kb_resync_notice(c, payload, plen);
        return;
    }
    if (c->token && tlen == KB_POSITION_LEN && memcmp(topic, KB_POSITION, tlen) == 0) {
        /* RESP: the position after the messages pushed before it */
        if (plen && plen <= KB_MAX_TOKEN) {
            memcpy(c->token, payload, plen);
            c->token_len = plen;
        } else {
            c->corrupt++;
        }
        return;
    }
    if (run->probe_seen && kr_bench_probe_parse(topic, tlen, run->cfg.prefix, &who)) {
        /* an interest probe: not a delivery; late ones (after the first) are dropped */
        if (who != c->idx) {
            c->unexpected++;
        } else if (!c->probed) {
            c->probed = 1;
            atomic_store_explicit(&run->probe_seen[c->idx], 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&run->probed, 1, memory_order_release);
        }
        return;
    }
    c->p_del++;
    c->received++;
    c->t_last = c->now;
    if (plen != run->cfg.msg_size || kr_bench_payload_read(payload, plen, &st) < 0 ||
        st.pub >= run->npubs || st.topic >= run->ntopics || st.seq == 0) {
        c->corrupt++;
        return;
    }
    if (tlen != run->topic_len[st.topic] || memcmp(topic, run->topic[st.topic], tlen) != 0) {
        c->corrupt++; /* the topic it came on is not the one it was published to */
        return;
    }
    int slot = kb_topic_slot(c, run->k, st.topic);
    if (slot < 0) {
        c->unexpected++;
        return;
    }
    kr_bench_stream_see(&c->streams[(size_t)slot * run->npubs + st.pub], st.seq);
    if (c->seen) {
        c->dups += (uint64_t)kb_seen_add(&c->seen[(size_t)slot * run->npubs + st.pub], st.seq);
        if (c->was_cut && !c->scratch && st.sent_ns < c->t_req) {
            c->replayed++; /* published before the resume was asked for */
            return;
        }
    }
    if (run->cfg.scenario != KR_BENCH_SC_RETRO)
        kr_bench_hist_add(&c->w->hist, c->now > st.sent_ns ? c->now - st.sent_ns : 0);
}

static int kb_kr_msg_cb(void *ud, const struct kr_bench_kr_msg *m)
{
    kb_sub_message(ud, m->topics, m->topics_len, m->payload, m->len);
    return 0;
}

/* ------------------------------------------------------------------ protocol handlers */

static void kb_after_ready_ack(struct kb_conn *c)
{
    /* a subscriber whose subscription is in force */
    kb_set_ready(c);
    if (c->w->phase >= KB_PH_RUN && c->w->phase < KB_PH_STOP)
        kb_pump(c);
}

/* resume: the resume (or the resubscribe) of a cut subscriber was answered */
static void kb_live_again(struct kb_conn *c)
{
    struct kb_run *run = c->w->run;
    c->t_live = c->now;
    kr_bench_hist_add(&c->w->live, c->now > c->t_reconnect ? c->now - c->t_reconnect : 0);
    kr_bench_hist_add(&c->w->away, c->now > c->t_closed ? c->now - c->t_closed : 0);
    c->state = KB_CS_READY;
    if (c->scratch)
        for (unsigned s = 0; s < run->k; s++)
            kb_notice_slot(c, s); /* every topic is to reload */
    kb_settle(c);
    if (run->cfg.proto == KR_BENCH_PROTO_KRAKEN)
        kb_poll(c);
}

/* Returns bytes used, 0 for more, < 0 after failing the connection. */
static ssize_t kb_handle_kraken(struct kb_conn *c, const char *buf, size_t len)
{
    struct kb_run *run = c->w->run;
    struct kr_bench_kr_reply r;
    ssize_t n = kr_bench_kr_parse(buf, len, &r, kb_kr_msg_cb, c, &c->need);
    if (n <= 0) {
        if (n < 0)
            kb_conn_fail(c, "malformed reply from the server");
        return n;
    }
    c->need = 0;
    switch (r.kind) {
    case KR_BENCH_KR_STORED:
        if (c->state == KB_CS_SUBSCRIBING && c->was_cut) {
            kb_live_again(c);
        } else if (c->state == KB_CS_SUBSCRIBING) {
            if (run->cfg.scenario == KR_BENCH_SC_RETRO) {
                c->state = KB_CS_READY;
                kb_retro_answered(c);
                kb_poll(c);
            } else {
                kb_after_ready_ack(c);
            }
        } else if (c->state == KB_CS_REGISTERING) {
            kb_set_ready(c);
        } else if (c->role == KB_PUB || c->role == KB_CHURN) {
            kb_ack(c, 1);
            kb_pump(c);
        } else {
            kb_conn_fail(c, "unexpected STORED");
            return -1;
        }
        break;
    case KR_BENCH_KR_NOT_FOUND:
        if (c->state == KB_CS_SUBSCRIBING && run->cfg.scenario == KR_BENCH_SC_RETRO) {
            /* history does not reach back to the horizon: nothing is replayed, the live
             * subscription stays in force */
            c->not_found = 1;
            c->state = KB_CS_READY;
            kb_retro_answered(c);
            kb_poll(c);
        } else {
            kb_conn_fail(c, "unexpected NOT_FOUND");
            return -1;
        }
        break;
    case KR_BENCH_KR_END:
    case KR_BENCH_KR_VALUE:
        if (!c->polling) {
            kb_conn_fail(c, "messages without a poll");
            return -1;
        }
        if (r.pos && c->token) {
            if (r.pos_len > KB_MAX_TOKEN || !r.pos_len) {
                kb_conn_fail(c, "a position token of %zu bytes", r.pos_len);
                return -1;
            }
            memcpy(c->token, r.pos, r.pos_len);
            c->token_len = r.pos_len;
        }
        /* empty: END, or (`get messages position`) only a position */
        kb_poll_again(c, r.kind == KR_BENCH_KR_END || r.nmsgs == 0);
        break;
    case KR_BENCH_KR_ERROR:
        if (c->state == KB_CS_REGISTERING) {
            c->w->run->res->unsupported = 1;
            kb_conn_fail(c, "the server answered '%.*s' to 'set register': it does not support "
                            "retroactive subscriptions",
                         (int)r.line_len, r.line);
        } else {
            kb_conn_fail(c, "server replied '%.*s'", (int)r.line_len, r.line);
        }
        return -1;
    default:
        kb_conn_fail(c, "unexpected reply '%.*s'", (int)(r.line_len > 80 ? 80 : r.line_len), r.line);
        return -1;
    }
    return n;
}

static int kb_resp_is(const struct kr_bench_resp_item *it, const char *word)
{
    size_t n = strlen(word);
    return (it->type == '$' || it->type == '+') && it->len == n && strncasecmp(it->str, word, n) == 0;
}

static ssize_t kb_handle_redis(struct kb_conn *c, const char *buf, size_t len)
{
    struct kr_bench_resp r;
    ssize_t n = kr_bench_resp_parse(buf, len, &r);
    if (n <= 0) {
        if (n < 0)
            kb_conn_fail(c, "malformed RESP from the server");
        return n;
    }
    if (r.type == '-') {
        kb_conn_fail(c, "server replied '-%.*s'", (int)r.item[0].len, r.item[0].str);
        return -1;
    }
    if ((r.type == '*' || r.type == '>') && r.nitems >= 3) {
        const struct kr_bench_resp_item *kind = &r.item[0];
        if (kb_resp_is(kind, "message") && r.nitems == 3 && r.item[1].str && r.item[2].str) {
            kb_sub_message(c, r.item[1].str, r.item[1].len, r.item[2].str, r.item[2].len);
            return n;
        }
        if (kb_resp_is(kind, "subscribe") || kb_resp_is(kind, "unsubscribe")) {
            if (c->role == KB_CHURN) {
                kb_ack(c, 1);
                kb_pump(c);
            } else if (c->state == KB_CS_SUBSCRIBING) {
                if (c->acks_wanted && --c->acks_wanted == 0) {
                    if (c->was_cut)
                        kb_live_again(c);
                    else
                        kb_after_ready_ack(c);
                }
            }
            return n;
        }
    }
    if (r.type == ':' && c->role == KB_PUB) {
        kb_ack(c, 1);
        kb_pump(c);
        return n;
    }
    kb_conn_fail(c, "unexpected RESP reply (type '%c')", r.type);
    return -1;
}

static void kb_nats_hello(struct kb_conn *c)
{
    kr_bench_buf_adds(&c->out, "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,"
                               "\"name\":\"kraken-bench\",\"lang\":\"c\",\"version\":\"1\","
                               "\"protocol\":1}\r\n");
    if (c->role == KB_SUB)
        kb_send_subscribe(c);
    kb_nats_ping(c, KB_PING_BARRIER);
    kb_flush(c);
}

static ssize_t kb_handle_nats(struct kb_conn *c, const char *buf, size_t len)
{
    struct kr_bench_nats m;
    ssize_t n = kr_bench_nats_parse(buf, len, &m);
    if (n <= 0) {
        if (n < 0)
            kb_conn_fail(c, "malformed NATS operation from the server");
        return n;
    }
    switch (m.kind) {
    case KR_BENCH_NATS_INFO:
        if (c->state == KB_CS_HELLO && !c->pings.n)
            kb_nats_hello(c);
        break;
    case KR_BENCH_NATS_PING:
        kr_bench_buf_add(&c->out, "PONG\r\n", 6);
        kb_flush(c);
        break;
    case KR_BENCH_NATS_PONG: {
        uint64_t covers;
        if (!kb_ring_pop(&c->pings, &covers)) {
            kb_conn_fail(c, "PONG without a PING");
            return -1;
        }
        if (covers == KB_PING_BARRIER) {
            kb_after_ready_ack(c);
        } else {
            kb_ack(c, covers);
            kb_pump(c);
        }
        break;
    }
    case KR_BENCH_NATS_MSG:
        kb_sub_message(c, m.subject, m.subject_len, m.payload, m.len);
        break;
    case KR_BENCH_NATS_OK:
        break;
    case KR_BENCH_NATS_ERR:
        kb_conn_fail(c, "server replied '%.*s'", (int)m.line_len, m.line);
        return -1;
    }
    return n;
}

/* ------------------------------------------------------------------ libuv callbacks */

static void kb_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct kb_conn *c = h->data;
    size_t want = c->rchunk;
    if (c->need > c->in.len && c->need - c->in.len > want)
        want = c->need - c->in.len;
    if (c->in.cap - c->in.len < want / 2 || c->in.cap - c->in.len < 512)
        kr_bench_buf_reserve(&c->in, want);
    buf->base = c->in.p + c->in.len;
    buf->len = c->in.cap - c->in.len;
}

static void kb_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    struct kb_conn *c = s->data;
    if (nread < 0) {
        if (!c->closing && !kb_server_gone(c)) {
            if (nread == UV_EOF)
                kb_conn_fail(c, "the server closed the connection");
            else
                kb_conn_fail(c, "read: %s", uv_strerror((int)nread));
        }
        return;
    }
    if (nread == 0)
        return;
    c->in.len += (size_t)nread;
    c->now = kb_now();
    size_t off = 0;
    enum kr_bench_proto proto = c->w->run->cfg.proto;
    c->in_read = 1;
    while (off < c->in.len && c->state != KB_CS_DEAD) {
        ssize_t n;
        if (proto == KR_BENCH_PROTO_KRAKEN)
            n = kb_handle_kraken(c, c->in.p + off, c->in.len - off);
        else if (proto == KR_BENCH_PROTO_REDIS)
            n = kb_handle_redis(c, c->in.p + off, c->in.len - off);
        else
            n = kb_handle_nats(c, c->in.p + off, c->in.len - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    c->in_read = 0;
    if (c->state == KB_CS_DEAD)
        return;
    kr_bench_buf_consume(&c->in, off);
    kb_flush(c);
    kb_flush_counters(c);
}

static void kb_worker_connect_more(struct kb_worker *w);

/* resume: ask for everything after the last position (or, from scratch, subscribe again) */
static void kb_send_resume(struct kb_conn *c)
{
    struct kb_run *run = c->w->run;
    c->t_req = kb_now();
    if (c->scratch) {
        kb_send_subscribe(c);
        return;
    }
    if (run->cfg.proto == KR_BENCH_PROTO_REDIS) {
        /* KRAKEN.RESUME <token> <topic> ...: a confirmation per topic and one for
         * __kraken__:resync; then __kraken__:position again, confirmed too */
        kr_bench_buf_add(&c->out, "*", 1);
        kr_bench_buf_addu(&c->out, run->k + 2);
        kr_bench_buf_adds(&c->out, "\r\n$13\r\nKRAKEN.RESUME\r\n$");
        kr_bench_buf_addu(&c->out, c->token_len);
        kr_bench_buf_add(&c->out, "\r\n", 2);
        kr_bench_buf_add(&c->out, c->token, c->token_len);
        kr_bench_buf_add(&c->out, "\r\n", 2);
        for (unsigned i = 0; i < run->k; i++) {
            uint32_t t = c->topics[i];
            kr_bench_buf_add(&c->out, "$", 1);
            kr_bench_buf_addu(&c->out, run->topic_len[t]);
            kr_bench_buf_add(&c->out, "\r\n", 2);
            kr_bench_buf_add(&c->out, run->topic[t], run->topic_len[t]);
            kr_bench_buf_add(&c->out, "\r\n", 2);
        }
        static const char pos_sub[] = "*2\r\n$9\r\nSUBSCRIBE\r\n$19\r\n" KB_POSITION "\r\n";
        kr_bench_buf_add(&c->out, pos_sub, sizeof(pos_sub) - 1);
        c->acks_wanted = run->k + 2;
        return;
    }
    size_t bytes = c->token_len + 2;
    for (unsigned i = 0; i < run->k; i++)
        bytes += run->topic_len[c->topics[i]] + (i ? 1 : 0);
    kr_bench_buf_adds(&c->out, "set resume 0 0 ");
    kr_bench_buf_addu(&c->out, bytes);
    kr_bench_buf_add(&c->out, "\r\n", 2);
    kr_bench_buf_add(&c->out, c->token, c->token_len);
    kr_bench_buf_add(&c->out, "\r\n", 2);
    for (unsigned i = 0; i < run->k; i++) {
        if (i)
            kr_bench_buf_add(&c->out, " ", 1);
        kr_bench_buf_add(&c->out, run->topic[c->topics[i]], run->topic_len[c->topics[i]]);
    }
    kr_bench_buf_add(&c->out, "\r\n", 2);
}

static void kb_connect_cb(uv_connect_t *req, int status);

/* resume: the jitter is over, connect again */
static void kb_jitter_cb(uv_timer_t *t)
{
    struct kb_conn *c = t->data;
    struct kb_worker *w = c->w;
    if (c->closing || w->phase >= KB_PH_STOP || c->state != KB_CS_CUT)
        return;
    int rc = uv_tcp_init(&w->loop, &c->tcp);
    if (rc < 0) {
        kb_conn_fail(c, "socket: %s", uv_strerror(rc));
        return;
    }
    c->tcp_open = 1;
    c->tcp.data = c;
    c->creq.data = c;
    c->state = KB_CS_CONNECTING;
    c->t_reconnect = kb_now();
    const struct sockaddr_storage *to = w->run->moving ? &w->run->move_addr : &w->run->sub_addr;
    rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)to, kb_connect_cb);
    if (rc < 0) {
        kb_conn_fail(c, "cannot connect to %s: %s", kb_hostport(c), uv_strerror(rc));
        return;
    }
    w->connecting++;
}

static void kb_cut_closed_cb(uv_handle_t *h)
{
    struct kb_conn *c = h->data;
    struct kb_run *run = c->w->run;
    /* the cancelled write's callback has run: the buffers are the bench's again */
    c->cutting = 0;
    c->writing = 0;
    c->in.len = c->out.len = c->wbuf.len = 0;
    c->need = 0;
    if (c->closing || c->w->phase >= KB_PH_STOP)
        return;
    uint64_t j = run->cfg.jitter_ms ? kb_rand(&c->rng) % ((uint64_t)run->cfg.jitter_ms + 1) : 0;
    uv_timer_start(c->jtimer, kb_jitter_cb, j, 0);
}

/* resume: close a subscriber's connection (the bench's cut, or what is left of it after
 * the server closed it); it reconnects after its jitter */
static void kb_cut_start(struct kb_conn *c)
{
    struct kb_run *run = c->w->run;
    c->t_closed = kb_now();
    c->was_cut = 1;
    c->cutting = 1;
    c->polling = 0;
    c->scratch = run->cfg.resume_mode == KR_BENCH_RESUME_SCRATCH || !c->token_len;
    if (c->timer)
        uv_timer_stop(c->timer);
    if (!c->jtimer) {
        c->jtimer = kb_calloc(1, sizeof(*c->jtimer));
        uv_timer_init(&c->w->loop, c->jtimer);
        c->jtimer->data = c;
    }
    c->state = KB_CS_CUT;
    c->tcp_open = 0;
    c->tcp.data = c;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_close((uv_handle_t *)&c->tcp, kb_cut_closed_cb);
}

/* resume: the bench closes a subscriber's connection; it reconnects after its jitter */
static void kb_cut(struct kb_conn *c)
{
    if (c->state != KB_CS_READY || c->closing) {
        kb_settle(c); /* dead already: nothing to wait for */
        return;
    }
    kb_cut_start(c);
}

/* resume with --drain-admin: once the drain was asked for, a subscriber whose connection the
 * server ends (EOF, a reset, a failed write) has been drained: it moves to the other node
 * with its last position. 1 when that is what happened, 0 when it is a plain failure. A
 * partial reply in the read buffer is dropped: its entries were not handed over, and the
 * token (of the last whole reply) does not cover them, so the resume replays them. */
static int kb_server_gone(struct kb_conn *c)
{
    struct kb_run *run = c->w->run;
    if (!run->drain || c->role != KB_SUB || c->was_cut || c->closing || c->cutting ||
        c->state != KB_CS_READY || c->w->phase >= KB_PH_STOP ||
        !atomic_load_explicit(&run->cut, memory_order_acquire))
        return 0;
    kb_cut_start(c);
    return 1;
}

static void kb_connect_cb(uv_connect_t *req, int status)
{
    struct kb_conn *c = req->data;
    struct kb_worker *w = c->w;
    struct kb_run *run = w->run;
    w->connecting--;
    if (status < 0) {
        if (status != UV_ECANCELED)
            kb_conn_fail(c, "cannot connect to %s: %s", kb_hostport(c), uv_strerror(status));
        return;
    }
    kb_worker_connect_more(w);
    if (c->closing)
        return;
    uv_tcp_nodelay(&c->tcp, 1);
    c->tcp.data = c;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, kb_alloc_cb, kb_read_cb);
    if (rc < 0) {
        kb_conn_fail(c, "read_start: %s", uv_strerror(rc));
        return;
    }
    if (run->cfg.proto == KR_BENCH_PROTO_NATS) {
        c->state = KB_CS_HELLO; /* INFO first */
        return;
    }
    if (c->role == KB_SUB && c->was_cut) {
        c->state = KB_CS_SUBSCRIBING;
        kb_send_resume(c);
        kb_flush(c);
    } else if (c->role == KB_SUB) {
        if (run->cfg.scenario == KR_BENCH_SC_RETRO) {
            c->state = KB_CS_REGISTERING;
            kr_bench_buf_adds(&c->out, "set register 0 0 0\r\n\r\n");
        } else {
            c->state = KB_CS_SUBSCRIBING;
            kb_send_subscribe(c);
        }
        kb_flush(c);
    } else {
        kb_set_ready(c);
        if (w->phase >= KB_PH_RUN)
            kb_pump(c);
    }
}

static void kb_worker_connect_more(struct kb_worker *w)
{
    struct kb_run *run = w->run;
    while (w->connecting < KB_MAX_CONNECTING && w->next_connect < w->nconns &&
           w->phase < KB_PH_STOP) {
        struct kb_conn *c = w->conns[w->next_connect++];
        int rc = uv_tcp_init(&w->loop, &c->tcp);
        if (rc < 0) {
            kb_conn_fail(c, "socket: %s", uv_strerror(rc));
            continue;
        }
        c->tcp_open = 1;
        c->tcp.data = c;
        c->creq.data = c;
        c->state = KB_CS_CONNECTING;
        const struct sockaddr_storage *to = c->role == KB_SUB ? &run->sub_addr : &run->addr;
        rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)to, kb_connect_cb);
        if (rc < 0) {
            kb_conn_fail(c, "cannot connect to %s: %s", kb_hostport(c), uv_strerror(rc));
            continue;
        }
        w->connecting++;
    }
}

/* Probe phase, on publisher 0's worker: publish a probe to every subscriber that has not
 * received one yet (one round per tick; Kraken and Redis: only once the previous round was
 * acknowledged). Probe requests count as acknowledged requests of 0 messages. */
static void kb_probe_tick_cb(uv_timer_t *t)
{
    struct kb_worker *w = t->data;
    struct kb_run *run = w->run;
    struct kb_conn *c = &run->pubs[0];
    if (w->phase != KB_PH_PROBE || c->state != KB_CS_READY || c->closing || c->inflight)
        return;
    enum kr_bench_proto proto = run->cfg.proto;
    char name[96];
    static const char body[] = "probe";
    size_t blen = sizeof(body) - 1, entries = 0;
    if (proto == KR_BENCH_PROTO_KRAKEN) {
        for (unsigned i = 0; i < run->nsubs; i++)
            if (!atomic_load_explicit(&run->probe_seen[i], memory_order_relaxed))
                entries += kr_bench_kr_entry_size(
                    kr_bench_probe_name(name, sizeof(name), run->cfg.prefix, i), blen);
        if (!entries)
            return;
        kr_bench_kr_put_publish_begin(&c->out, entries);
    }
    for (unsigned i = 0; i < run->nsubs; i++) {
        if (atomic_load_explicit(&run->probe_seen[i], memory_order_relaxed))
            continue;
        size_t n = kr_bench_probe_name(name, sizeof(name), run->cfg.prefix, i);
        char *p;
        if (proto == KR_BENCH_PROTO_KRAKEN) {
            p = kr_bench_kr_put_entry(&c->out, name, n, blen);
        } else if (proto == KR_BENCH_PROTO_REDIS) {
            p = kr_bench_resp_put_publish(&c->out, name, n, blen);
            c->inflight++;
            kb_ring_push(&c->pend, 0);
        } else {
            p = kr_bench_nats_put_pub(&c->out, name, n, blen); /* not acknowledged */
        }
        memcpy(p, body, blen);
        c->probes++;
    }
    if (proto == KR_BENCH_PROTO_KRAKEN) {
        kr_bench_kr_put_publish_end(&c->out);
        c->inflight++;
        kb_ring_push(&c->pend, 0);
    }
    kb_flush(c);
}

static void kb_tick_cb(uv_timer_t *t)
{
    struct kb_worker *w = t->data;
    for (size_t i = 0; i < w->nconns; i++)
        kb_pump(w->conns[i]);
}

static void kb_worker_enter(struct kb_worker *w, int phase)
{
    struct kb_run *run = w->run;
    w->phase = phase;
    switch (phase) {
    case KB_PH_PROBE:
        if (!run->probe_seen)
            break;
        for (size_t i = 0; i < w->nconns; i++) {
            struct kb_conn *c = w->conns[i];
            if (c->role == KB_SUB && run->cfg.proto == KR_BENCH_PROTO_KRAKEN)
                kb_poll(c);
            if (c->role == KB_PUB && c->idx == 0)
                uv_timer_start(&w->tick, kb_probe_tick_cb, 0, 20);
        }
        break;
    case KB_PH_RUN:
        uv_timer_stop(&w->tick); /* the probe ticks, when there were any */
        w->t_start = kb_now();
        if (run->per_conn_rate > 0)
            uv_timer_start(&w->tick, kb_tick_cb, 1, 1);
        for (size_t i = 0; i < w->nconns; i++) {
            struct kb_conn *c = w->conns[i];
            if (c->role == KB_SUB) {
                if (run->cfg.proto == KR_BENCH_PROTO_KRAKEN &&
                    run->cfg.scenario != KR_BENCH_SC_CONNS && run->cfg.scenario != KR_BENCH_SC_RETRO)
                    kb_poll(c);
            } else {
                kb_pump(c);
            }
        }
        break;
    case KB_PH_DRAIN:
        uv_timer_stop(&w->tick);
        for (size_t i = 0; i < w->nconns; i++) {
            struct kb_conn *c = w->conns[i];
            if (c->role == KB_SUB)
                continue;
            c->draining = 1;
            if (c->state == KB_CS_READY && run->cfg.proto == KR_BENCH_PROTO_NATS && c->unpinged) {
                kb_nats_ping(c, c->unpinged);
                c->unpinged = 0;
                kb_flush(c);
            }
            if (c->state == KB_CS_DEAD || c->state != KB_CS_READY)
                kb_mark_done(c);
            else
                kb_check_done(c);
        }
        break;
    case KB_PH_REPLAY:
        if (run->cfg.scenario != KR_BENCH_SC_RETRO)
            break;
        for (size_t i = 0; i < w->nconns; i++) {
            struct kb_conn *c = w->conns[i];
            if (c->role != KB_SUB || c->state != KB_CS_READY)
                continue;
            c->state = KB_CS_SUBSCRIBING;
            c->t_sub = kb_now();
            kb_send_subscribe(c);
            kb_flush(c);
        }
        break;
    case KB_PH_STOP:
        uv_timer_stop(&w->tick);
        uv_close((uv_handle_t *)&w->tick, NULL);
        uv_close((uv_handle_t *)&w->async, NULL);
        for (size_t i = 0; i < w->nconns; i++) {
            struct kb_conn *c = w->conns[i];
            kb_flush_counters(c);
            kb_conn_close(c);
        }
        break;
    default:
        break;
    }
}

static void kb_async_cb(uv_async_t *a)
{
    struct kb_worker *w = a->data;
    int ph = atomic_load_explicit(&w->run->phase, memory_order_acquire);
    while (w->phase < ph)
        kb_worker_enter(w, w->phase + 1);
    if (!w->cut_done && w->phase < KB_PH_STOP && atomic_load_explicit(&w->run->cut, memory_order_acquire)) {
        w->cut_done = 1;
        /* with a drain the server closes them, one batch after another (kb_server_gone) */
        for (size_t i = 0; i < w->nconns && !w->run->drain; i++)
            if (w->conns[i]->role == KB_SUB)
                kb_cut(w->conns[i]);
    }
}

static void kb_worker_main(void *arg)
{
    struct kb_worker *w = arg;
    kb_worker_connect_more(w);
    /* a phase change may have been signalled before the loop ran */
    kb_async_cb(&w->async);
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

/* ------------------------------------------------------------------ setup */

static int kb_resolve_one(struct kb_run *run, const char *host, unsigned portno,
                          struct sockaddr_storage *addr, char *hostport, size_t cap)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof(port), "%u", portno);
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0 || !ai) {
        snprintf(run->res->error, sizeof(run->res->error), "cannot resolve '%s': %s", host,
                 gai_strerror(rc));
        return -1;
    }
    memcpy(addr, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (strchr(host, ':'))
        snprintf(hostport, cap, "[%s]:%u", host, portno);
    else
        snprintf(hostport, cap, "%s:%u", host, portno);
    return 0;
}

static int kb_resolve(struct kb_run *run)
{
    const struct kr_bench_cfg *cfg = &run->cfg;
    if (kb_resolve_one(run, cfg->host, cfg->port, &run->addr, run->hostport,
                       sizeof(run->hostport)) < 0)
        return -1;
    if (kb_resolve_one(run, cfg->sub_host[0] ? cfg->sub_host : cfg->host,
                       cfg->sub_port ? cfg->sub_port : cfg->port, &run->sub_addr,
                       run->sub_hostport, sizeof(run->sub_hostport)) < 0)
        return -1;
    if (!run->moving)
        return 0;
    return kb_resolve_one(run, cfg->move_host[0] ? cfg->move_host : cfg->host,
                          cfg->move_port ? cfg->move_port : cfg->port, &run->move_addr,
                          run->move_hostport, sizeof(run->move_hostport));
}

/* resume with --drain-admin: `drain` on the subscribers' node's admin socket (one request
 * line, a reply of data lines ending with END or ERROR <reason>). Main thread; blocks at
 * most a few seconds. 0, or -1 with the reason in the run's errors. The reply's first line
 * is kept in res->drain_reply. */
static int kb_admin_drain(struct kb_run *run)
{
    const char *path = run->cfg.drain_admin;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        kb_note_error(run, 0, "drain: socket: %s", strerror(errno));
        return -1;
    }
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0) {
        kb_note_error(run, 0, "drain: cannot connect to the admin socket %s: %s", path,
                      strerror(errno));
        close(fd);
        return -1;
    }
    static const char req[] = "drain\n";
    if (write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1)) {
        kb_note_error(run, 0, "drain: write to %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    char buf[4096];
    size_t len = 0;
    int rc = -1;
    for (int rounds = 0; rounds < 64 && len < sizeof(buf) - 1; rounds++) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = 0;
        if (strncmp(buf, "ERROR", 5) == 0 || strstr(buf, "\nERROR")) {
            break;
        }
        if (strncmp(buf, "END\n", 4) == 0 || strstr(buf, "\nEND\n")) {
            rc = 0;
            break;
        }
    }
    close(fd);
    buf[len] = 0;
    size_t first = strcspn(buf, "\n");
    snprintf(run->res->drain_reply, sizeof(run->res->drain_reply), "%.*s", (int)first, buf);
    if (rc < 0)
        kb_note_error(run, 0, "drain: the admin socket %s answered '%s'", path,
                      len ? run->res->drain_reply : "(nothing)");
    return rc;
}

static int kb_raise_nofile(struct kb_run *run, uint64_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    if (rl.rlim_cur < need && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need) {
        snprintf(run->res->error, sizeof(run->res->error),
                 "%llu connections need about %llu file descriptors but the limit is %llu "
                 "(raise it with ulimit -n)",
                 (unsigned long long)(need - 64), (unsigned long long)need,
                 (unsigned long long)rl.rlim_cur);
        return -1;
    }
    return 0;
}

/* Pick each subscriber's k distinct topics (sorted) from the topic space. */
static void kb_assign_topics(struct kb_run *run)
{
    unsigned k = run->k, T = run->ntopics;
    run->sub_topics = kb_calloc((size_t)run->nsubs * k, sizeof(uint32_t));
    run->topic_subs = kb_calloc(T, sizeof(uint64_t));
    uint8_t *mark = kb_calloc(T, 1);
    uint64_t rng = run->cfg.seed * UINT64_C(0x9E3779B97F4A7C15) + 1;
    for (unsigned s = 0; s < run->nsubs; s++) {
        uint32_t *dst = run->sub_topics + (size_t)s * k;
        unsigned got = 0;
        while (got < k) {
            uint32_t t = (uint32_t)(kb_rand(&rng) % T);
            if (mark[t])
                continue;
            mark[t] = 1;
            dst[got++] = t;
        }
        for (unsigned i = 0; i < k; i++) {
            mark[dst[i]] = 0;
            run->topic_subs[dst[i]]++;
        }
        /* insertion sort: k is small */
        for (unsigned i = 1; i < k; i++) {
            uint32_t v = dst[i];
            unsigned j = i;
            while (j > 0 && dst[j - 1] > v) {
                dst[j] = dst[j - 1];
                j--;
            }
            dst[j] = v;
        }
    }
    free(mark);
}

static void kb_worker_add(struct kb_worker *w, struct kb_conn *c)
{
    if (w->nconns == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        struct kb_conn **n = realloc(w->conns, w->cap * sizeof(*n));
        if (!n) {
            fprintf(stderr, "kraken-bench: out of memory\n");
            abort();
        }
        w->conns = n;
    }
    w->conns[w->nconns++] = c;
    c->w = w;
}

static void kb_conn_init(struct kb_run *run, struct kb_conn *c, enum kb_role role, uint32_t idx)
{
    const struct kr_bench_cfg *cfg = &run->cfg;
    c->role = role;
    c->idx = idx;
    c->state = KB_CS_NEW;
    c->rng = (cfg->seed + 1) * UINT64_C(0x9E3779B97F4A7C15) ^ ((uint64_t)role << 32 | idx) ^
             UINT64_C(0xD1B54A32D192ED03);
    if (!c->rng)
        c->rng = 1;
    int idle = role == KB_SUB && cfg->scenario == KR_BENCH_SC_CONNS;
    c->rchunk = idle || role == KB_CHURN ? 4096 : 65536;
    kb_ring_init(&c->pend, cfg->pipeline + 1);
    kb_ring_init(&c->pings, cfg->proto == KR_BENCH_PROTO_NATS ? cfg->pipeline + 4 : 1);
    if (role == KB_SUB) {
        c->topics = run->sub_topics + (size_t)idx * run->k;
        if (run->npubs)
            c->streams = kb_calloc((size_t)run->k * run->npubs, sizeof(*c->streams));
        if (cfg->scenario == KR_BENCH_SC_RESUME) {
            c->seen = kb_calloc((size_t)run->k * (run->npubs ? run->npubs : 1), sizeof(*c->seen));
            c->token = kb_calloc(1, KB_MAX_TOKEN + 1);
        }
    } else if (role == KB_PUB) {
        c->seq = kb_calloc(run->ntopics, sizeof(uint64_t));
    }
}

static void kb_conn_free(struct kb_conn *c)
{
    kr_bench_buf_free(&c->in);
    kr_bench_buf_free(&c->out);
    kr_bench_buf_free(&c->wbuf);
    free(c->pend.v);
    free(c->pings.v);
    free(c->seq);
    free(c->streams);
    free(c->timer);
    free(c->jtimer);
    if (c->seen)
        for (size_t i = 0; i < (size_t)c->w->run->k * c->w->run->npubs; i++)
            free(c->seen[i].bits);
    free(c->seen);
    free(c->token);
    free(c->log_topic);
    free(c->log_sent);
}

static void kb_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void kb_set_phase(struct kb_run *run, int phase)
{
    atomic_store_explicit(&run->phase, phase, memory_order_release);
    for (unsigned i = 0; i < run->cfg.threads; i++)
        uv_async_send(&run->workers[i].async);
}

static void kb_sums(struct kb_run *run, uint64_t *pub, uint64_t *del, uint64_t *ops, uint64_t *err)
{
    uint64_t p = 0, d = 0, o = 0, e = 0;
    for (unsigned i = 0; i < run->cfg.threads; i++) {
        struct kb_worker *w = &run->workers[i];
        p += atomic_load_explicit(&w->published, memory_order_relaxed);
        d += atomic_load_explicit(&w->delivered, memory_order_relaxed);
        o += atomic_load_explicit(&w->ops, memory_order_relaxed);
        e += atomic_load_explicit(&w->errors, memory_order_relaxed);
    }
    *pub = p;
    *del = d;
    *ops = o;
    *err = e;
}

struct kb_progress {
    uint64_t t0, next, last_pub, last_del, last_ops;
};

static void kb_progress_tick(struct kb_run *run, struct kb_progress *pr, uint64_t now,
                             const char *phase)
{
    if (now < pr->next)
        return;
    uint64_t pub, del, ops, err;
    kb_sums(run, &pub, &del, &ops, &err);
    double dt = (double)(now - (pr->next - 1000000000u)) / 1e9;
    if (dt <= 0)
        dt = 1;
    if (run->cfg.progress) {
        if (run->cfg.scenario == KR_BENCH_SC_CHURN)
            fprintf(stderr, "[%5.1fs %-5s] ops %10.0f/s  errors %llu\n",
                    (double)(now - pr->t0) / 1e9, phase, (double)(ops - pr->last_ops) / dt,
                    (unsigned long long)err);
        else
            fprintf(stderr, "[%5.1fs %-5s] published %10.0f/s  delivered %10.0f/s  errors %llu\n",
                    (double)(now - pr->t0) / 1e9, phase, (double)(pub - pr->last_pub) / dt,
                    (double)(del - pr->last_del) / dt, (unsigned long long)err);
    }
    pr->last_pub = pub;
    pr->last_del = del;
    pr->last_ops = ops;
    while (pr->next <= now)
        pr->next += 1000000000u;
}

/* Wait (bounded) until all publishers/churners reported done. */
static int kb_wait_done(struct kb_run *run, unsigned want, uint64_t deadline,
                        struct kb_progress *pr, const char *phase)
{
    while (atomic_load_explicit(&run->done, memory_order_acquire) < want) {
        uint64_t now = kb_now();
        if (now >= deadline)
            return -1;
        kb_progress_tick(run, pr, now, phase);
        kb_sleep_ms(5);
    }
    return 0;
}

/* Deliveries owed to subscriber c: what the publishers published on its topics. */
static uint64_t kb_expected_for(struct kb_run *run, const struct kb_conn *c)
{
    uint64_t sum = 0;
    for (unsigned s = 0; s < run->k; s++)
        for (unsigned p = 0; p < run->npubs; p++)
            sum += run->pubs[p].seq[c->topics[s]];
    return sum;
}

static uint64_t kb_expected_total(struct kb_run *run)
{
    uint64_t sum = 0;
    for (unsigned p = 0; p < run->npubs; p++)
        for (unsigned t = 0; t < run->ntopics; t++)
            sum += run->pubs[p].seq[t] * run->topic_subs[t];
    return sum;
}

/* resume: per publisher, the send times of its acknowledged messages grouped by topic in
 * sequence order (acknowledgements come in publish order, so on each topic the acknowledged
 * messages are the sequences 1..n). Main thread, after the workers are joined. */
struct kb_acked {
    uint64_t **off;  /* [pub][topic .. topic + 1]: range in sent */
    uint64_t **sent; /* [pub][...] */
};

static void kb_acked_build(struct kb_run *run, struct kb_acked *a)
{
    a->off = kb_calloc(run->npubs, sizeof(*a->off));
    a->sent = kb_calloc(run->npubs, sizeof(*a->sent));
    for (unsigned p = 0; p < run->npubs; p++) {
        const struct kb_conn *c = &run->pubs[p];
        size_t n = c->acked_msgs < c->log_n ? (size_t)c->acked_msgs : c->log_n;
        uint64_t *off = kb_calloc((size_t)run->ntopics + 1, sizeof(uint64_t));
        uint64_t *sent = kb_calloc(n, sizeof(uint64_t));
        for (size_t i = 0; i < n; i++)
            off[c->log_topic[i] + 1]++;
        for (unsigned t = 0; t < run->ntopics; t++)
            off[t + 1] += off[t];
        uint64_t *cur = kb_calloc(run->ntopics, sizeof(uint64_t));
        for (size_t i = 0; i < n; i++) {
            uint32_t t = c->log_topic[i];
            sent[off[t] + cur[t]++] = c->log_sent[i];
        }
        free(cur);
        a->off[p] = off;
        a->sent[p] = sent;
    }
}

static void kb_acked_free(struct kb_run *run, struct kb_acked *a)
{
    for (unsigned p = 0; a->off && p < run->npubs; p++) {
        free(a->off[p]);
        free(a->sent[p]);
    }
    free(a->off);
    free(a->sent);
}

/* resume: subscriber c's exact accounting. An acknowledged message on one of its topics that
 * it did not receive is covered when a notice named the topic (or '*') after it: the first
 * message of the same publisher on that topic received after the notice has the sequence f,
 * and everything below f is covered (the server queues what is published after the notice
 * after it, in order); when no message of that publisher followed the notice, what was sent
 * before the notice arrived is covered. A from-scratch resubscribe counts as a '*' notice
 * when it is answered. Everything else not received is lost. */
static void kb_resume_account(struct kb_run *run, const struct kb_conn *c,
                              const struct kb_acked *a, struct kr_bench_result *res)
{
    res->replayed += c->replayed;
    res->resync_notices += c->notices;
    res->resync_topics += c->notice_topics;
    res->reload_topics += c->notice_topics + (c->was_cut && c->scratch ? run->k : 0);
    res->dups += c->dups;
    if (c->was_cut) {
        res->cut++;
        if (c->t_live)
            res->live_again++;
    }
    for (unsigned s = 0; s < run->k; s++) {
        uint32_t t = c->topics[s];
        for (unsigned p = 0; p < run->npubs; p++) {
            const struct kb_seen *sn = &c->seen[(size_t)s * run->npubs + p];
            res->order += c->streams[(size_t)s * run->npubs + p].order;
            uint64_t n = a->off[p][t + 1] - a->off[p][t];
            const uint64_t *sent = a->sent[p] + a->off[p][t];
            uint64_t cb = sn->covered_below;
            if (sn->pending) {
                uint64_t j = 0;
                while (j < n && sent[j] < sn->notice_ns)
                    j++;
                if (j + 1 > cb)
                    cb = j + 1;
            }
            for (uint64_t q = 1; q <= n; q++) {
                uint64_t i = q - 1;
                int got = i / 64 < sn->nwords && (sn->bits[i / 64] >> (i % 64) & 1);
                if (got)
                    continue;
                if (q < cb) {
                    res->covered++;
                    continue;
                }
                res->loss++;
                if (res->loss <= run->cfg.show_lost) {
                    /* times in ms from the cut (or the drain request) */
                    double t0 = (double)run->t_drain_sent;
#define KB_MS(t) ((t) ? ((double)(t) - t0) / 1e6 : -1.0)
                    fprintf(stderr,
                            "kraken-bench: lost: subscriber %u topic %s publisher %u seq %llu "
                            "(of %llu acknowledged) sent %.1f ms; subscriber closed %.1f, "
                            "resume sent %.1f, answered %.1f ms%s; received on this stream: "
                            "%llu, covered below %llu, notice pending %u at %.1f ms\n",
                            c->idx, run->topic[t], p, (unsigned long long)q,
                            (unsigned long long)n, KB_MS(sent[i]), KB_MS(c->t_closed),
                            KB_MS(c->t_req), KB_MS(c->t_live), c->scratch ? " (from scratch)" : "",
                            (unsigned long long)c->streams[(size_t)s * run->npubs + p].received,
                            (unsigned long long)cb, sn->pending, KB_MS(sn->notice_ns));
#undef KB_MS
                }
            }
            /* received but never published */
            uint64_t published = run->pubs[p].seq[t];
            for (uint64_t i = published; i < (uint64_t)sn->nwords * 64; i++)
                if (sn->bits[i / 64] >> (i % 64) & 1)
                    res->unexpected++;
        }
    }
}

/* ------------------------------------------------------------------ the run */

int kr_bench_run(const struct kr_bench_cfg *cfg, struct kr_bench_result *res)
{
    if (cfg->scenario == KR_BENCH_SC_STORM) {
        res->rss_before_kb = res->rss_after_kb = -1;
        res->server_cpu_s = -1;
        kr_bench_hist_init(&res->lat);
        kr_bench_hist_init(&res->live);
        return kr_bench_storm(cfg, res);
    }
    struct kb_run *run = kb_calloc(1, sizeof(*run));
    run->cfg = *cfg;
    run->res = res;
    res->rss_before_kb = res->rss_after_kb = -1;
    res->server_cpu_s = -1;
    kr_bench_hist_init(&res->lat);
    kr_bench_hist_init(&res->live);
    kr_bench_hist_init(&res->away);
    uv_mutex_init(&run->err_lock);
    int ret = -1;

    switch (cfg->scenario) {
    case KR_BENCH_SC_CONNS:
        run->nsubs = cfg->conns;
        run->npubs = 0;
        break;
    case KR_BENCH_SC_CHURN:
        run->nchurn = cfg->subs;
        break;
    default:
        run->nsubs = cfg->subs;
        run->npubs = cfg->pubs;
        break;
    }
    run->ntopics = cfg->topics;
    run->k = cfg->scenario == KR_BENCH_SC_CHURN ? 0 : cfg->topics_per_sub;
    run->nats_chunk = cfg->pipeline / 2 ? cfg->pipeline / 2 : 1;
    run->drain = cfg->scenario == KR_BENCH_SC_RESUME && cfg->drain_admin[0];
    run->moving = cfg->scenario == KR_BENCH_SC_RESUME && (cfg->move_port || cfg->move_host[0]);
    unsigned nrate = cfg->scenario == KR_BENCH_SC_CHURN ? run->nchurn : run->npubs;
    run->per_conn_rate = cfg->rate > 0 && nrate ? cfg->rate / nrate : 0;
    uint64_t nconn = (uint64_t)run->nsubs + run->npubs + run->nchurn;
    res->connections = nconn;

    if (kb_resolve(run) < 0 || kb_raise_nofile(run, nconn + 64) < 0) {
        res->fatal = 1;
        goto out_free;
    }

    /* topics */
    run->topic = kb_calloc(run->ntopics, sizeof(char *));
    run->topic_len = kb_calloc(run->ntopics, sizeof(size_t));
    for (unsigned t = 0; t < run->ntopics; t++) {
        char name[128];
        int n = snprintf(name, sizeof(name), "%s%u", cfg->prefix, t);
        run->topic[t] = strdup(name);
        if (!run->topic[t])
            abort();
        run->topic_len[t] = (size_t)n;
    }
    kb_assign_topics(run);
    /* interest probes: message scenarios with both sides only */
    if (cfg->probe && run->nsubs && run->npubs &&
        (cfg->scenario == KR_BENCH_SC_FANOUT || cfg->scenario == KR_BENCH_SC_BROADCAST ||
         cfg->scenario == KR_BENCH_SC_LATENCY))
        run->probe_seen = kb_calloc(run->nsubs, sizeof(*run->probe_seen));

    /* connections, spread round-robin over the workers */
    run->workers = kb_calloc(cfg->threads, sizeof(struct kb_worker));
    run->subs = kb_calloc(run->nsubs, sizeof(struct kb_conn));
    run->pubs = kb_calloc(run->npubs, sizeof(struct kb_conn));
    run->churn = kb_calloc(run->nchurn, sizeof(struct kb_conn));
    for (unsigned i = 0; i < cfg->threads; i++) {
        struct kb_worker *w = &run->workers[i];
        w->run = run;
        w->id = i;
        kr_bench_hist_init(&w->hist);
        kr_bench_hist_init(&w->live);
        kr_bench_hist_init(&w->away);
        uv_loop_init(&w->loop);
        uv_async_init(&w->loop, &w->async, kb_async_cb);
        w->async.data = w;
        uv_timer_init(&w->loop, &w->tick);
        w->tick.data = w;
    }
    unsigned rr = 0;
    uint64_t per_pub = run->npubs ? cfg->messages / run->npubs : 0;
    for (unsigned i = 0; i < run->npubs; i++) {
        kb_conn_init(run, &run->pubs[i], KB_PUB, i);
        if (cfg->scenario == KR_BENCH_SC_RETRO)
            run->pubs[i].quota = per_pub + (i < cfg->messages % run->npubs ? 1 : 0);
        kb_worker_add(&run->workers[rr++ % cfg->threads], &run->pubs[i]);
    }
    for (unsigned i = 0; i < run->nsubs; i++) {
        kb_conn_init(run, &run->subs[i], KB_SUB, i);
        kb_worker_add(&run->workers[rr++ % cfg->threads], &run->subs[i]);
    }
    for (unsigned i = 0; i < run->nchurn; i++) {
        kb_conn_init(run, &run->churn[i], KB_CHURN, i);
        kb_worker_add(&run->workers[rr++ % cfg->threads], &run->churn[i]);
    }

    if (cfg->scenario == KR_BENCH_SC_CONNS && cfg->server_pid > 0) {
        res->rss_before_kb = kr_bench_rss_kb(cfg->server_pid);
        if (res->rss_before_kb < 0)
            fprintf(stderr, "kraken-bench: warning: cannot read VmRSS of pid %ld\n", cfg->server_pid);
    }

    /* phase 0: connect and subscribe, then the barrier */
    uint64_t t_conn = kb_now();
    for (unsigned i = 0; i < cfg->threads; i++)
        uv_thread_create(&run->workers[i].thread, kb_worker_main, &run->workers[i]);
    uint64_t deadline = t_conn + (uint64_t)(cfg->connect_timeout_s * 1e9);
    uint64_t last_report = t_conn;
    while (atomic_load_explicit(&run->ready, memory_order_acquire) < nconn) {
        if (atomic_load(&run->fatal) || kb_stop_requested)
            break;
        uint64_t now = kb_now();
        if (now >= deadline) {
            kb_note_error(run, 1, "only %u of %llu connections were connected and subscribed after %.0f s",
                          atomic_load(&run->ready), (unsigned long long)nconn, cfg->connect_timeout_s);
            break;
        }
        if (cfg->progress && now - last_report >= 1000000000u) {
            last_report = now;
            fprintf(stderr, "[connect] %u of %llu connections ready\n", atomic_load(&run->ready),
                    (unsigned long long)nconn);
        }
        kb_sleep_ms(2);
    }
    res->connect_s = (double)(kb_now() - t_conn) / 1e9;
    if (atomic_load(&run->fatal) || atomic_load(&run->ready) < nconn) {
        res->fatal = 1;
        if (kb_stop_requested && !run->first_error[0])
            snprintf(run->first_error, sizeof(run->first_error), "interrupted");
        kb_set_phase(run, KB_PH_STOP);
        goto out_join;
    }

    /* phase 0b: every subscriber's interest is in force where the publishers are */
    if (run->probe_seen) {
        uint64_t t_probe = kb_now();
        uint64_t probe_deadline = t_probe + (uint64_t)(cfg->connect_timeout_s * 1e9);
        last_report = t_probe;
        kb_set_phase(run, KB_PH_PROBE);
        while (atomic_load_explicit(&run->probed, memory_order_acquire) < run->nsubs) {
            uint64_t now = kb_now();
            if (atomic_load(&run->fatal) || kb_stop_requested || now >= probe_deadline)
                break;
            if (cfg->progress && now - last_report >= 1000000000u) {
                last_report = now;
                fprintf(stderr, "[probe] %u of %u subscribers' interest reached %s\n",
                        atomic_load(&run->probed), run->nsubs, run->hostport);
            }
            kb_sleep_ms(2);
        }
        res->probe_s = (double)(kb_now() - t_probe) / 1e9;
        unsigned got = atomic_load(&run->probed);
        if (got < run->nsubs || atomic_load(&run->fatal) || kb_stop_requested) {
            if (got < run->nsubs && !kb_stop_requested && !atomic_load(&run->fatal))
                kb_note_error(run, 1,
                              "the interest of only %u of %u subscribers (at %s) reached the "
                              "publishers' server (%s) within %.0f s",
                              got, run->nsubs, run->sub_hostport, run->hostport,
                              cfg->connect_timeout_s);
            res->fatal = 1;
            if (kb_stop_requested && !run->first_error[0])
                snprintf(run->first_error, sizeof(run->first_error), "interrupted");
            kb_set_phase(run, KB_PH_STOP);
            goto out_join;
        }
    }

    /* phase 1: the timed run */
    struct kb_progress pr = {0};
    uint64_t t0 = kb_now();
    pr.t0 = t0;
    pr.next = t0 + 1000000000u;
    kb_set_phase(run, KB_PH_RUN);
    double cpu0 = cfg->server_pid > 0 ? kr_bench_cpu_s(cfg->server_pid) : -1;
    uint64_t t_end = t0 + (uint64_t)(cfg->duration_s * 1e9);
    uint64_t t_cut = cfg->scenario == KR_BENCH_SC_RESUME ? t0 + (uint64_t)(cfg->cut_at_s * 1e9)
                                                         : UINT64_MAX;
    for (;;) {
        uint64_t now = kb_now();
        if (now >= t_end || kb_stop_requested)
            break;
        if (now >= t_cut) {
            t_cut = UINT64_MAX;
            /* with a drain, the workers know before the node closes anyone */
            run->t_drain_sent = now;
            atomic_store_explicit(&run->cut, 1, memory_order_release);
            for (unsigned i = 0; i < cfg->threads; i++)
                uv_async_send(&run->workers[i].async);
            if (run->drain)
                kb_admin_drain(run);
        }
        if (cfg->scenario == KR_BENCH_SC_RETRO &&
            atomic_load_explicit(&run->done, memory_order_acquire) >= run->npubs)
            break;
        kb_progress_tick(run, &pr, now, "run");
        kb_sleep_ms(now + 10000000u < t_end ? 5 : 1);
    }
    uint64_t t_drain = kb_now();
    res->run_s = (double)(t_drain - t0) / 1e9;
    double cpu1 = cpu0 >= 0 ? kr_bench_cpu_s(cfg->server_pid) : -1;
    if (cpu1 >= cpu0 && cpu0 >= 0)
        res->server_cpu_s = cpu1 - cpu0;
    uint64_t err_now;
    kb_sums(run, &res->published_timed, &res->delivered_timed, &res->ops_timed, &err_now);

    /* phase 2: publishers stop and wait for their acknowledgements; subscribers keep going */
    kb_set_phase(run, KB_PH_DRAIN);
    uint64_t drain_deadline = t_drain + (uint64_t)(cfg->drain_timeout_s * 1e9);
    int pubs_done = kb_wait_done(run, run->npubs + run->nchurn, drain_deadline, &pr, "drain") == 0;
    if (!pubs_done) {
        res->drain_timed_out = 1;
        kb_note_error(run, 0, "publishers still had unacknowledged requests %.1f s after the run",
                      cfg->drain_timeout_s);
    }
    uint64_t expected = pubs_done ? kb_expected_total(run) : UINT64_MAX;
    if (cfg->scenario == KR_BENCH_SC_RETRO) {
        kb_set_phase(run, KB_PH_REPLAY);
        drain_deadline = kb_now() + (uint64_t)(cfg->drain_timeout_s * 1e9);
    }
    /* subscribers keep receiving until the deliveries are all in, or they stop changing
     * for a while, or the bound is reached */
    if (run->nsubs && run->npubs) {
        uint64_t last = UINT64_MAX, last_change = kb_now();
        for (;;) {
            uint64_t pub, del, ops, err;
            kb_sums(run, &pub, &del, &ops, &err);
            uint64_t now = kb_now();
            /* retro: wait for every subscriber's answer before judging the counts */
            int answered = cfg->scenario != KR_BENCH_SC_RETRO ||
                           atomic_load_explicit(&run->answered, memory_order_acquire) >= run->nsubs;
            /* resume: every subscriber back (or dead) before the counts are judged */
            if (cfg->scenario == KR_BENCH_SC_RESUME &&
                atomic_load_explicit(&run->settled, memory_order_acquire) < run->nsubs)
                answered = 0;
            if (del >= expected && answered)
                break;
            if (del != last || !answered) {
                last = del;
                last_change = now;
            } else if (now - last_change >= KB_SETTLE_NS) {
                break;
            }
            if (now >= drain_deadline) {
                res->drain_timed_out = 1;
                break;
            }
            kb_progress_tick(run, &pr, now, cfg->scenario == KR_BENCH_SC_RETRO ? "replay" : "drain");
            kb_sleep_ms(2);
        }
    }
    if (cfg->scenario == KR_BENCH_SC_CONNS && cfg->server_pid > 0)
        res->rss_after_kb = kr_bench_rss_kb(cfg->server_pid);
    res->drain_s = (double)(kb_now() - t_drain) / 1e9;
    kb_set_phase(run, KB_PH_STOP);
    ret = 0;

out_join:
    for (unsigned i = 0; i < cfg->threads; i++) {
        uv_thread_join(&run->workers[i].thread);
        uv_loop_close(&run->workers[i].loop);
    }
    /* accounting, now that the workers are gone */
    uint64_t pub, del, ops, err;
    kb_sums(run, &pub, &del, &ops, &err);
    res->published = pub;
    res->delivered = del;
    res->errors = err;
    res->ops = ops;
    if (run->npubs)
        res->probes = run->pubs[0].probes;
    for (unsigned i = 0; i < cfg->threads; i++) {
        kr_bench_hist_merge(&res->lat, &run->workers[i].hist);
        kr_bench_hist_merge(&res->live, &run->workers[i].live);
        kr_bench_hist_merge(&res->away, &run->workers[i].away);
    }
    struct kb_acked acked = {0};
    if (ret == 0 && cfg->scenario == KR_BENCH_SC_RESUME)
        kb_acked_build(run, &acked);
    if (ret == 0) {
        uint64_t t_replay_first = UINT64_MAX, t_replay_last = 0;
        for (unsigned i = 0; i < run->nsubs; i++) {
            struct kb_conn *c = &run->subs[i];
            res->corrupt += c->corrupt;
            res->unexpected += c->unexpected;
            res->polls += c->polls;
            res->empty_polls += c->empty_polls;
            if (cfg->scenario == KR_BENCH_SC_RETRO) {
                res->retro_subs++;
                if (c->not_found) {
                    res->not_found++;
                    res->unexpected += c->received; /* NOT_FOUND replays nothing */
                    continue;
                }
                res->replayed += c->received;
                if (c->t_sub && c->t_sub < t_replay_first)
                    t_replay_first = c->t_sub;
                if (c->received && c->t_last > t_replay_last)
                    t_replay_last = c->t_last;
            }
            res->expected += kb_expected_for(run, c);
            if (cfg->scenario == KR_BENCH_SC_RESUME) {
                kb_resume_account(run, c, &acked, res);
                if (run->drain && !c->was_cut)
                    res->stayed++; /* the drain never closed it */
                if (c->t_live && run->t_drain_sent && c->t_live > run->t_drain_sent &&
                    (double)(c->t_live - run->t_drain_sent) / 1e9 > res->all_live_s)
                    res->all_live_s = (double)(c->t_live - run->t_drain_sent) / 1e9;
                continue;
            }
            for (unsigned s = 0; s < run->k; s++)
                for (unsigned p = 0; p < run->npubs; p++) {
                    const struct kr_bench_stream *st = &c->streams[(size_t)s * run->npubs + p];
                    uint64_t published = run->pubs[p].seq[c->topics[s]];
                    uint64_t uniq = st->received - st->dups;
                    res->dups += st->dups;
                    res->order += st->order;
                    if (uniq < published)
                        res->loss += published - uniq;
                    else
                        res->unexpected += uniq - published;
                }
        }
        if (t_replay_last > t_replay_first)
            res->replay_s = (double)(t_replay_last - t_replay_first) / 1e9;
    }
    kb_acked_free(run, &acked);
    if (run->first_error[0])
        snprintf(res->error, sizeof(res->error), "%s", run->first_error);
    if (atomic_load(&run->fatal))
        res->fatal = 1;
    if (res->fatal)
        ret = -1;
    for (unsigned i = 0; i < run->npubs; i++)
        kb_conn_free(&run->pubs[i]);
    for (unsigned i = 0; i < run->nsubs; i++)
        kb_conn_free(&run->subs[i]);
    for (unsigned i = 0; i < run->nchurn; i++)
        kb_conn_free(&run->churn[i]);
    for (unsigned i = 0; i < cfg->threads; i++)
        free(run->workers[i].conns);

out_free:
    if (run->topic)
        for (unsigned t = 0; t < run->ntopics; t++)
            free(run->topic[t]);
    free(run->topic);
    free(run->topic_len);
    free(run->sub_topics);
    free(run->topic_subs);
    free((void *)run->probe_seen);
    free(run->subs);
    free(run->pubs);
    free(run->churn);
    free(run->workers);
    uv_mutex_destroy(&run->err_lock);
    free(run);
    return ret;
}
