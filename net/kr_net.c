/* Net module: acceptor, net threads, connections and the request handlers. See kr_net.h. */
#include "kr_net.h"

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

#include "kr_acl.h"
#include "kr_log.h"
#include "kr_net_int.h"
#include "kr_proto.h"
#include "kr_queue.h"
#include "kr_router.h"

#define KR_READ_BUF (64 * 1024)
#define KR_DRAIN_BUDGET 4096      /* events taken from the shards per wake-up before yielding */
#define KR_OUT_HIGH (4u << 20)    /* stop reading a client whose unsent replies exceed this */
#define KR_DRAIN_PAD UINT32_MAX   /* kr_router_cmd.pad of a drain barrier (not a request number) */
#define KR_TURN_REQUESTS 128      /* requests one connection runs per turn before others */
#define KR_TURN_OUT_BYTES (64 * 1024) /* reply bytes one connection produces per turn */
#define KR_WARN_BURST 10          /* warnings of one kind per interval */
#define KR_WARN_INTERVAL_MS 10000
#define KR_ACCEPT_BATCH 64        /* connections accepted per listener wake-up */
#define KR_ACCEPT_PAUSE_MS 100    /* accepting pauses this long when descriptors run out */

struct kr_server;
struct kr_nt;
struct kr_mem_cand;

/* An event a connection could not hand to a shard yet (ring full). */
struct kr_parked {
    uint32_t shard;
    struct kr_event ev;
};

/* A request whose reply waits on the router: subscribe-like requests wait for every shard's
 * acknowledgement, a publish whose events did not all fit in the rings waits until they
 * are sent. Replies go out in request order. */
struct kr_reply_wait {
    uint32_t acks_left;
    bool noreply;
    bool retro;     /* a retroactive subscribe: answers STORED or NOT_FOUND */
    bool sent_gate; /* a publish with parked events */
};

#define KR_MAX_PIPELINED 1024 /* replies a client may have waiting on the router */

/* A delivery held back while a retroactive subscription completes. */
struct kr_staged {
    struct kr_cq_entry e;
    bool replay;
    uint32_t order; /* arrival order, for a stable sort */
};

/* A multi-shard message still being completed, and the queue position of its entry. */
struct kr_incomplete {
    struct kr_msg *msg;
    uint64_t seq;
};

struct kr_conn {
    uv_tcp_t h; /* first: handle.data is unused, the handle address is the connection */
    struct kr_nt *nt;
    uint64_t id;
    uint32_t slot;
    /* input not parsed yet (NULL while everything arrived was consumed) */
    char *in;
    size_t in_len;
    size_t in_cap;
    size_t need; /* bytes the next request needs, when known */
    /* output */
    char *out;
    size_t out_len;
    size_t out_cap;
    char *wbuf; /* buffer owned by the write in flight */
    size_t wbuf_len;
    size_t out_acct; /* unsent bytes counted in the thread's output_bytes */
    uv_write_t wreq;
    /* deliveries */
    struct kr_cq q;
    uint64_t seq_head; /* sequence number of the queue head */
    struct kr_incomplete *inc;
    uint32_t ninc;
    uint32_t inc_cap;
    /* requests waiting on the router */
    struct kr_parked *parked;
    uint32_t nparked;
    uint32_t parked_cap;
    struct kr_reply_wait *rq; /* ring of replies waiting on the router */
    uint32_t rq_head;
    uint32_t rq_count;
    uint32_t rq_cap;
    uint32_t rq_base;          /* request number of the ring's head */
    const char *deferred_err;  /* error reply held until earlier replies are out */
    /* retroactive subscriptions */
    uint64_t horizon_us;      /* set by `register`, used by the next subscribe (0 = none) */
    bool retro_active;        /* a retroactive subscribe is waiting for its shards */
    bool retro_not_found;     /* some shard's history did not reach back */
    struct kr_staged *stage;  /* deliveries held while retro_active */
    uint32_t nstage;
    uint32_t stage_cap;
    /* state */
    bool closing;
    bool overflowed;
    bool reading;
    bool writing;
    bool close_after_write;
    bool blocked; /* on the net thread's blocked list */
    bool subscribed; /* ever sent a subscription: shards must be told on close */
    uint32_t nsubs_requests;
    uint64_t created_ms;
    uint64_t last_active_ms;  /* last complete request (what the idle timeout counts) */
    uint64_t partial_since_ms; /* arrival of the incomplete request's first bytes (0 = none) */
    bool turn_over;           /* stopped parsing to let others run; see kr_conn_parse */
    bool on_turns;            /* on the net thread's turn list */
    uint64_t last_poll_ms;
    struct kr_conn *blocked_next;
    /* a `get messages` that found nothing and waits for a message or poll_wait_ms */
    uint8_t poll_wait;      /* KR_PW_NONE, or the list it is on: KR_PW_HELD, KR_PW_READY */
    uint64_t poll_since_ms; /* loop time the wait began */
    struct cds_list_head pw_node; /* on nt->held or nt->ready */
    /* drain (see kr_net_close_some) */
    uint8_t drain;       /* KR_DR_NONE, KR_DR_BARRIER, KR_DR_POLL */
    uint32_t drain_acks; /* shard acknowledgements the barrier still waits for */
    char peer[64];
};

enum { KR_PW_NONE, KR_PW_HELD, KR_PW_READY };
/* KR_DR_BARRIER: reached by the drain, unsubscribed everywhere, waiting until every shard
 * confirmed (then nothing more can arrive for it); KR_DR_POLL: its queue is final and it is
 * closed after the reply that empties it. */
enum { KR_DR_NONE, KR_DR_BARRIER, KR_DR_POLL };

/* Connections whose poll waits, in the order their waits began. */
struct kr_pw_list {
    struct cds_list_head list;
    uint32_t count;
};

struct kr_nt_stats {
    uint64_t curr_connections;
    uint64_t total_connections;
    uint64_t rejected_connections;
    uint64_t accept_fd_exhausted;  /* accept() failed with EMFILE/ENFILE */
    uint64_t refused_connections;  /* peers outside allow_from, closed unread */
    uint64_t cmd_get;
    uint64_t cmd_set;
    uint64_t messages_published;
    uint64_t messages_delivered; /* entries handed to clients by `get messages` */
    uint64_t polls_waited;       /* polls that found nothing and waited (poll_wait_ms) */
    uint64_t deliveries_queued;
    uint64_t queued_messages;
    uint64_t queued_bytes;
    uint64_t queue_overflows;
    uint64_t output_bytes;     /* reply bytes not written to the sockets yet */
    uint64_t memory_overflows; /* queues discarded because max_memory was exceeded */
    uint64_t drain_errors;     /* clients told SERVER_ERROR shutting down */
    uint64_t protocol_errors;
    uint64_t idle_timeouts;
    uint64_t request_timeouts; /* closed with a request started request_timeout_ms ago */
    uint64_t bytes_read;
    uint64_t bytes_written;
    uint64_t subscribe_requests;
    uint64_t unsubscribe_requests;
    uint64_t publish_requests;
    uint64_t publish_topic_warnings;
    uint64_t fanout_warnings;
    uint64_t register_requests;
    uint64_t retro_requests;
    uint64_t retro_not_found;
    uint64_t retro_future_horizons; /* retroactive horizons in the future, taken as now */
    uint64_t messages_replayed;
    uint64_t ring_full_waits; /* events that waited for space in a ring towards a shard */
};

/* The settings that may change while the server runs (admin `config set`), read from the
 * RCU-published configuration snapshot. */
struct kr_net_live {
    uint64_t max_queued_messages;
    uint64_t max_queued_bytes;
    uint64_t client_idle_timeout_ms;
    uint64_t request_timeout_ms;
    uint64_t poll_wait_ms;
    uint64_t max_poll_reply_bytes;
    uint64_t max_memory;
    uint32_t max_tcp_clients;
    uint32_t tcp_keepalive_s;
    uint32_t fanout_warn;
    uint32_t topics_warn;
};

struct kr_nt {
    struct kr_server *srv;
    struct kr_net_live live; /* cached from the snapshot, see kr_nt_refresh_live */
    uint64_t live_gen;
    uint32_t idx;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wake;
    uv_poll_t listener;        /* readiness of listen_fd; accept4() is ours (kr_nt_accept_cb) */
    uv_timer_t accept_pause;   /* restarts the listener after descriptors ran out */
    int reserve_fd;            /* held open to free one descriptor when they run out, or -1 */
    bool listening;            /* the listener is open (not yet closed by a drain) */
    uv_timer_t sweep;
    uv_check_t check;
    uv_idle_t turn_idle;       /* active while connections wait for a turn */
    uint64_t *turns;           /* ids of the connections whose pipelined work continues */
    uint32_t nturns;
    uint32_t turns_cap;
    uv_timer_t poll_timer;     /* ends the oldest waiting poll */
    struct kr_pw_list held;    /* waiting polls with nothing to answer yet, oldest first */
    struct kr_pw_list ready;   /* waiting polls that got a message: answered in kr_nt_check_cb */
    int listen_fd;
    bool stopping;
    struct kr_conn **slots;
    uint32_t *gens;
    uint32_t nslots;
    uint32_t *free_slots;
    uint32_t nfree;
    struct kr_conn *blocked_head; /* clients to look at again after this iteration */
    struct kr_parked *ctl;        /* control events waiting for ring space */
    uint32_t nctl;
    uint32_t ctl_cap;
    /* scratch for building messages */
    const char **topics;
    uint32_t *topic_lens;
    uint32_t topics_cap;
    struct kr_log_ratelimit rl_errors;
    struct kr_log_ratelimit rl_accept;
    struct kr_log_ratelimit rl_refused;
    struct kr_log_ratelimit rl_overflow;
    struct kr_log_ratelimit rl_fanout;
    struct kr_log_ratelimit rl_topics;
    struct kr_log_ratelimit rl_memory;
    struct kr_log_ratelimit rl_drain;
    /* max_memory (kr_nt_memory_check) */
    uint64_t mem_grown;   /* queued bytes added since the last check */
    uint64_t mem_step;    /* check again after this many */
    uint64_t mem_largest; /* largest client here at the last check; read by other threads */
    struct kr_mem_cand *mem_cand;
    uint32_t mem_cand_cap;
    struct kr_log_ratelimit rl_timeouts;
    struct kr_nt_stats st;
    char readbuf[KR_READ_BUF];
};

struct kr_server {
    const struct kr_cfg *cfg;
    struct kr_router *router;
    struct kr_nt **nts;
    uint32_t nnet;
    uint16_t port;
    uint32_t nconns; /* process-wide, for max_tcp_clients */
    struct kr_acl *acl;       /* allow_from, parsed at create */
    pthread_mutex_t accept_mu; /* net threads' accept4() and reserve swaps: no other net thread
                                  takes the descriptor a reserve frees */
    uint64_t refused_elsewhere; /* refusals by other listeners (the health port) */
    struct kr_proto_limits lim;
    time_t started;
    struct kr_net_reqq *reqq; /* requests from other threads (kr_net_admin.c) */
    int draining;             /* kr_server_drain was called */
    /* process figures for `stats`, stored by kr_server_refresh_stats (about once a second,
     * off the net threads) so that a stats request only loads them */
    int pid;
    uint64_t ru_utime_us;
    uint64_t ru_stime_us;
    uint64_t mem[4]; /* jemalloc stats.allocated, active, resident, mapped (kr_je_stats) */
    uint64_t stats_refreshes;
};

#ifdef KR_HAVE_JEMALLOC
static const char *const kr_je_stats[] = {"stats.allocated", "stats.active", "stats.resident",
                                          "stats.mapped"};
#endif


static void kr_net_live(const struct kr_server *s, struct kr_net_live *out)
{
    urcu_memb_read_lock();
    const struct kr_cfg *c = kr_cfg_live();
    if (!c)
        c = s->cfg; /* no snapshot published: the start configuration */
    out->max_queued_messages = c->max_queued_messages;
    out->max_queued_bytes = c->max_queued_bytes;
    out->client_idle_timeout_ms = c->client_idle_timeout_ms;
    out->request_timeout_ms = c->request_timeout_ms;
    out->poll_wait_ms = c->poll_wait_ms;
    out->max_poll_reply_bytes = c->max_poll_reply_bytes;
    out->max_memory = c->max_memory;
    out->max_tcp_clients = c->max_tcp_clients;
    out->tcp_keepalive_s = c->tcp_keepalive_s;
    out->fanout_warn = c->router_min_fanout_to_warn;
    out->topics_warn = c->router_min_publish_to_topics_to_warn;
    urcu_memb_read_unlock();
}

/* Refresh the net thread's cached live settings when a new snapshot was published: one
 * relaxed load per read batch or wake-up, no lock per delivery. */
static void kr_nt_refresh_live(struct kr_nt *nt)
{
    uint64_t gen = kr_cfg_live_generation();
    if (gen != nt->live_gen) {
        kr_net_live(nt->srv, &nt->live);
        nt->live_gen = gen;
    }
}

#define KR_ST_INC(nt, field, n) ck_pr_store_64(&(nt)->st.field, (nt)->st.field + (n))
#define KR_ST_DEC(nt, field, n) ck_pr_store_64(&(nt)->st.field, (nt)->st.field - (n))

static void kr_conn_close(struct kr_conn *c);
static void kr_conn_process(struct kr_conn *c);
static void kr_conn_flush(struct kr_conn *c);
static void kr_nt_drain(struct kr_nt *nt);
static uint64_t kr_server_memory_used(struct kr_server *s, uint64_t *history);
static void kr_conn_drain_acked(struct kr_conn *c);
static void kr_nt_turn_cb(uv_idle_t *h);

/* ---------------------------------------------------------------- output */

static void kr_out_reserve(struct kr_conn *c, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 256;
        while (cap < c->out_len + n)
            cap *= 2;
        c->out = kr_xrealloc(c->out, cap);
        c->out_cap = cap;
    }
}

static void kr_out_add(struct kr_conn *c, const void *p, size_t n)
{
    kr_out_reserve(c, n);
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

static void kr_out_str(struct kr_conn *c, const char *s)
{
    kr_out_add(c, s, strlen(s));
}

/* Bring the net thread's output_bytes figure (part of max_memory's count) up to date with
 * the connection's unsent bytes: what is buffered plus the write in flight. */
static void kr_conn_out_account(struct kr_conn *c)
{
    size_t now = c->closing ? 0 : c->out_len + c->wbuf_len;
    if (now > c->out_acct)
        KR_ST_INC(c->nt, output_bytes, now - c->out_acct);
    else if (now < c->out_acct)
        KR_ST_DEC(c->nt, output_bytes, c->out_acct - now);
    c->out_acct = now;
}

/* Unsent reply bytes of the connection. */
static size_t kr_conn_out_pending(const struct kr_conn *c)
{
    return c->out_len + c->wbuf_len;
}

static void kr_conn_write_cb(uv_write_t *req, int status)
{
    struct kr_conn *c = req->data;
    free(c->wbuf);
    c->wbuf = NULL;
    c->wbuf_len = 0;
    c->writing = false;
    kr_conn_out_account(c);
    if (status < 0) {
        kr_conn_close(c);
        return;
    }
    if (c->closing)
        return;
    kr_conn_flush(c);
    if (!c->closing && !c->writing && !c->close_after_write)
        kr_conn_process(c); /* reading may have been paused on a big backlog */
}

/* Send what is buffered: try a direct write first, hand the rest to libuv. */
static void kr_conn_flush(struct kr_conn *c)
{
    if (c->closing)
        return;
    if (c->writing) {
        kr_conn_out_account(c); /* replies added behind the write in flight */
        return;
    }
    if (c->out_len) {
        uv_buf_t b = uv_buf_init(c->out, (unsigned)c->out_len);
        int n = uv_try_write((uv_stream_t *)&c->h, &b, 1);
        if (n < 0 && n != UV_EAGAIN) {
            kr_conn_close(c);
            return;
        }
        size_t done = n > 0 ? (size_t)n : 0;
        KR_ST_INC(c->nt, bytes_written, done);
        if (done < c->out_len) {
            /* hand the buffer itself to the write; a new one collects later replies */
            memmove(c->out, c->out + done, c->out_len - done);
            c->wbuf = c->out;
            c->wbuf_len = c->out_len - done;
            b = uv_buf_init(c->wbuf, (unsigned)(c->out_len - done));
            KR_ST_INC(c->nt, bytes_written, c->out_len - done);
            c->out = NULL;
            c->out_len = 0;
            c->out_cap = 0;
            c->wreq.data = c;
            c->writing = true;
            int rc = uv_write(&c->wreq, (uv_stream_t *)&c->h, &b, 1, kr_conn_write_cb);
            if (rc < 0) {
                c->writing = false;
                kr_conn_close(c);
            }
            kr_conn_out_account(c);
            return;
        }
        c->out_len = 0;
        if (c->out_cap > 64 * 1024) { /* keep idle clients small */
            free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
        kr_conn_out_account(c);
    }
    if (c->close_after_write)
        kr_conn_close(c);
}

/* Reply with an error line, count and log it, and close once the reply is out. */
static void kr_conn_fail(struct kr_conn *c, const char *reply)
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
        KR_WARN("client %s (id %llu): %.*s; closing%s", c->peer, (unsigned long long)c->id,
                (int)(n >= 2 ? n - 2 : n), reply, more);
    }
    if (c->rq_count) {
        c->deferred_err = reply; /* sent once the earlier requests are answered */
        return;
    }
    kr_out_str(c, reply);
    c->close_after_write = true;
}

/* ---------------------------------------------------------------- replies in order */

static struct kr_reply_wait *kr_rq_at(struct kr_conn *c, uint32_t reqno)
{
    uint32_t i = reqno - c->rq_base;
    if (i >= c->rq_count)
        return NULL;
    return &c->rq[(c->rq_head + i) & (c->rq_cap - 1)];
}

/* Queue a reply that waits; returns its request number. */
static uint32_t kr_rq_push(struct kr_conn *c, uint32_t acks, bool noreply, bool retro, bool gate)
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
    c->rq[(c->rq_head + c->rq_count) & (c->rq_cap - 1)] =
        (struct kr_reply_wait){.acks_left = acks, .noreply = noreply, .retro = retro, .sent_gate = gate};
    c->rq_count++;
    return c->rq_base + c->rq_count - 1;
}

/* Send every reply at the head that is ready, then a held error. */
static void kr_rq_emit(struct kr_conn *c)
{
    while (c->rq_count) {
        struct kr_reply_wait *w = &c->rq[c->rq_head];
        if (w->acks_left || w->sent_gate)
            break;
        if (w->retro && c->retro_not_found) {
            c->retro_not_found = false;
            if (!w->noreply)
                kr_out_str(c, "NOT_FOUND\r\n");
        } else if (!w->noreply) {
            kr_out_str(c, "STORED\r\n");
        }
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

static struct kr_conn *kr_nt_conn(struct kr_nt *nt, uint64_t id)
{
    uint32_t slot = (uint32_t)id;
    uint32_t gen = (uint32_t)(id >> 32) & 0xffffff;
    if (slot >= nt->nslots)
        return NULL;
    struct kr_conn *c = nt->slots[slot];
    if (!c || nt->gens[slot] != gen || c->closing)
        return NULL;
    return c;
}

static void kr_nt_unblock_all(struct kr_nt *nt);

static void kr_conn_block(struct kr_conn *c)
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

static void kr_pw_push(struct kr_pw_list *l, struct kr_conn *c)
{
    cds_list_add_tail(&c->pw_node, &l->list);
    l->count++;
}

static void kr_pw_unlink(struct kr_pw_list *l, struct kr_conn *c)
{
    cds_list_del(&c->pw_node);
    l->count--;
}

/* The connection that has waited longest; NULL when none. */
static struct kr_conn *kr_pw_first(struct kr_pw_list *l)
{
    return l->count ? cds_list_first_entry(&l->list, struct kr_conn, pw_node) : NULL;
}

/* Take the connection off whichever wait list it is on. */
static void kr_poll_unwait(struct kr_conn *c)
{
    if (c->poll_wait == KR_PW_NONE)
        return;
    kr_pw_unlink(c->poll_wait == KR_PW_HELD ? &c->nt->held : &c->nt->ready, c);
    c->poll_wait = KR_PW_NONE;
}

/* Something arrived for a waiting poll: answer it after this loop iteration. */
static void kr_poll_wake(struct kr_conn *c)
{
    if (c->poll_wait != KR_PW_HELD)
        return;
    kr_pw_unlink(&c->nt->held, c);
    kr_pw_push(&c->nt->ready, c);
    c->poll_wait = KR_PW_READY;
}

static void kr_conn_closed_cb(uv_handle_t *h)
{
    struct kr_conn *c = (struct kr_conn *)h;
    free(c->in);
    free(c->out);
    free(c->wbuf);
    free(c->inc);
    free(c->parked);
    free(c->stage);
    free(c->rq);
    free(c);
}

static void kr_conn_release_parked(struct kr_conn *c)
{
    for (uint32_t i = 0; i < c->nparked; i++) {
        struct kr_event *ev = &c->parked[i].ev;
        if (ev->type == KR_EV_PUBLISH)
            kr_msg_unref(ev->ptr);
        else if (ev->type == KR_EV_SUBSCRIBE || ev->type == KR_EV_UNSUBSCRIBE)
            free(ev->ptr);
    }
    c->nparked = 0;
}

static void kr_entry_release(struct kr_cq_entry *e)
{
    if (kr_msg_ntopics(e->msg) > 64)
        free(e->bits);
    if (e->pend)
        kr_pend_unref(e->pend);
    kr_msg_unref(e->msg);
}

static void kr_conn_queue_clear(struct kr_conn *c)
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

/* Send the net thread's parked control events in order; true when none is left. */
static bool kr_nt_send_ctl(struct kr_nt *nt)
{
    uint32_t i = 0;
    while (i < nt->nctl && kr_router_send(nt->srv->router, nt->idx, nt->ctl[i].shard, &nt->ctl[i].ev))
        i++;
    if (i) {
        memmove(nt->ctl, nt->ctl + i, (nt->nctl - i) * sizeof(*nt->ctl));
        nt->nctl -= i;
    }
    return nt->nctl == 0;
}

/* Tell every shard to forget the client. Never lost: when a ring is full the event waits
 * on the net thread and is retried after each loop iteration. */
static void kr_nt_send_disconnect(struct kr_nt *nt, uint64_t id)
{
    struct kr_router *r = nt->srv->router;
    struct kr_event ev = {.type = KR_EV_DISCONNECT, .src = (uint16_t)nt->idx, .conn = id};
    for (uint32_t s = 0; s < kr_router_nshards(r); s++) {
        if (nt->nctl == 0 && kr_router_send(r, nt->idx, s, &ev))
            continue;
        if (nt->nctl == nt->ctl_cap) {
            nt->ctl_cap = nt->ctl_cap ? nt->ctl_cap * 2 : 64;
            nt->ctl = kr_xrealloc(nt->ctl, nt->ctl_cap * sizeof(*nt->ctl));
        }
        nt->ctl[nt->nctl].shard = s;
        nt->ctl[nt->nctl].ev = ev;
        nt->nctl++;
    }
}

static void kr_conn_close(struct kr_conn *c)
{
    if (c->closing)
        return;
    struct kr_nt *nt = c->nt;
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
    uv_close((uv_handle_t *)&c->h, kr_conn_closed_cb);
}

static void kr_conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct kr_conn *c = (struct kr_conn *)h;
    *buf = uv_buf_init(c->nt->readbuf, sizeof(c->nt->readbuf));
}

static void kr_conn_pause(struct kr_conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->h);
        c->reading = false;
    }
}

static void kr_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void kr_conn_resume(struct kr_conn *c)
{
    if (!c->reading && !c->closing && !c->close_after_write) {
        if (uv_read_start((uv_stream_t *)&c->h, kr_conn_alloc_cb, kr_conn_read_cb) == 0)
            c->reading = true;
    }
}

/* Append bytes to the connection's unparsed input. */
static void kr_conn_stash(struct kr_conn *c, const char *p, size_t n)
{
    if (c->in_len + n > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 1024;
        while (cap < c->in_len + n)
            cap *= 2;
        c->in = kr_xrealloc(c->in, cap);
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
}

/* ---------------------------------------------------------------- router hand-off */

/* Hand parked events to the shards in order. Returns true when all went. */
static bool kr_conn_send_parked(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    uint32_t i = 0;
    while (i < c->nparked &&
           kr_router_send(nt->srv->router, nt->idx, c->parked[i].shard, &c->parked[i].ev))
        i++;
    if (i) {
        memmove(c->parked, c->parked + i, (c->nparked - i) * sizeof(*c->parked));
        c->nparked -= i;
    }
    return c->nparked == 0;
}

static void kr_conn_park(struct kr_conn *c, uint32_t shard, const struct kr_event *ev)
{
    KR_ST_INC(c->nt, ring_full_waits, 1);
    if (c->nparked == c->parked_cap) {
        c->parked_cap = c->parked_cap ? c->parked_cap * 2 : 8;
        c->parked = kr_xrealloc(c->parked, c->parked_cap * sizeof(*c->parked));
    }
    c->parked[c->nparked].shard = shard;
    c->parked[c->nparked].ev = *ev;
    c->nparked++;
}

/* Send now when nothing is parked ahead of it and the ring has room, else park it. */
static void kr_conn_send(struct kr_conn *c, uint32_t shard, const struct kr_event *ev)
{
    if (c->nparked == 0 && kr_router_send(c->nt->srv->router, c->nt->idx, shard, ev))
        return;
    kr_conn_park(c, shard, ev);
}

/* ---------------------------------------------------------------- requests */

static void kr_reply_stored(struct kr_conn *c, bool noreply)
{
    if (!noreply)
        kr_out_str(c, "STORED\r\n");
}

/* subscribe, unsubscribe and retro_subscribe: split the topics by owning shard, send one
 * command to each, and answer once every shard acknowledged. */
static void kr_req_subscribe(struct kr_conn *c, const struct kr_request *req, uint16_t type)
{
    struct kr_nt *nt = c->nt;
    struct kr_server *srv = nt->srv;
    const char *data = req->data;
    size_t data_len = req->data_len;
    uint64_t horizon = 0;
    if (type == KR_EV_RETRO_SUBSCRIBE) {
        int rc = kr_proto_parse_retro(req->data, req->data_len, srv->cfg->max_topic_bytes,
                                      &horizon, &data, &data_len);
        if (rc < 0) {
            kr_conn_fail(c, kr_proto_error_reply(rc));
            return;
        }
        KR_ST_INC(nt, retro_requests, 1);
    } else if (type == KR_EV_SUBSCRIBE && c->horizon_us) {
        /* the first subscribe after `register` is retroactive */
        type = KR_EV_RETRO_SUBSCRIBE;
        horizon = c->horizon_us;
        c->horizon_us = 0;
        KR_ST_INC(nt, retro_requests, 1);
    }
    if (type == KR_EV_RETRO_SUBSCRIBE && horizon > kr_msg_clock_us()) {
        /* clock skew between app servers: a horizon in the future is taken as now (the live
         * fanout skips messages older than the horizon, so it would deliver nothing) */
        horizon = kr_msg_clock_us();
        KR_ST_INC(nt, retro_future_horizons, 1);
    }
    int n = kr_proto_check_topics(data, data_len, srv->cfg->max_topic_bytes);
    if (n < 0) {
        kr_conn_fail(c, kr_proto_error_reply(n));
        return;
    }
    if (type == KR_EV_UNSUBSCRIBE)
        KR_ST_INC(nt, unsubscribe_requests, 1);
    else
        KR_ST_INC(nt, subscribe_requests, 1);
    if (n == 0) {
        if (c->rq_count)
            kr_rq_push(c, 0, req->noreply, false, false);
        else
            kr_reply_stored(c, req->noreply);
        return;
    }
    uint32_t nshards = kr_router_nshards(srv->router);
    struct kr_router_cmd *cmds[64] = {0}; /* num_router_shards is at most 64 */
    size_t pos = 0, len;
    const char *t;
    while (kr_proto_next_topic(data, data_len, &pos, &t, &len)) {
        uint32_t s = kr_router_shard_of(srv->router, t, len);
        if (!cmds[s]) {
            cmds[s] = kr_router_cmd_new((uint32_t)(data_len / nshards + 64));
            cmds[s]->horizon_us = horizon;
        }
        cmds[s] = kr_router_cmd_add(cmds[s], t, (uint32_t)len);
    }
    uint32_t acks = 0;
    for (uint32_t s = 0; s < nshards; s++)
        acks += cmds[s] != NULL;
    bool retro = type == KR_EV_RETRO_SUBSCRIBE;
    uint32_t reqno = kr_rq_push(c, acks, req->noreply, retro, false);
    for (uint32_t s = 0; s < nshards; s++) {
        if (!cmds[s])
            continue;
        cmds[s]->pad = reqno; /* comes back in the ACK */
        struct kr_event ev = {.type = type, .src = (uint16_t)nt->idx, .conn = c->id, .ptr = cmds[s]};
        kr_conn_send(c, s, &ev);
    }
    if (type != KR_EV_UNSUBSCRIBE)
        c->subscribed = true;
    if (retro) {
        c->retro_active = true;
        c->retro_not_found = false;
    }
}

static int kr_pub_entry(void *arg, const struct kr_pub_entry *e)
{
    struct kr_conn *c = arg;
    struct kr_nt *nt = c->nt;
    struct kr_server *srv = nt->srv;
    struct kr_router *r = srv->router;

    if (e->ntopics > nt->topics_cap) {
        nt->topics_cap = e->ntopics;
        nt->topics = kr_xrealloc(nt->topics, e->ntopics * sizeof(*nt->topics));
        nt->topic_lens = kr_xrealloc(nt->topic_lens, e->ntopics * sizeof(*nt->topic_lens));
    }
    /* Collect the topics, dropping repeats (a subscriber lists each matched topic once). */
    uint32_t n = 0;
    size_t pos = 0, len;
    const char *t;
    while (kr_proto_next_topic(e->topics, e->topics_len, &pos, &t, &len)) {
        bool dup = false;
        if (e->ntopics <= 32) {
            for (uint32_t i = 0; i < n && !dup; i++)
                dup = nt->topic_lens[i] == len && memcmp(nt->topics[i], t, len) == 0;
        } else {
            /* large entries: compare only against topics with the same hash bucket would
             * need a table; a memmem-free linear scan is bounded by the warning threshold
             * in practice, so keep it simple but avoid quadratic work on huge lists */
            for (uint32_t i = 0; i < n && !dup; i++)
                dup = nt->topic_lens[i] == len && nt->topics[i][0] == t[0] &&
                      memcmp(nt->topics[i], t, len) == 0;
        }
        if (!dup) {
            nt->topics[n] = t;
            nt->topic_lens[n] = (uint32_t)len;
            n++;
        }
    }
    const struct kr_net_live *lv = &nt->live;
    if (n >= lv->topics_warn && lv->topics_warn) {
        KR_ST_INC(nt, publish_topic_warnings, 1);
        uint64_t suppressed = 0;
        if (kr_log_enabled(KR_LOG_WARN) &&
            kr_log_ratelimit(&nt->rl_topics, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed)) {
            KR_WARN("publish to %u topics from %s (id %llu), first topics: %.*s%s%.*s%s%.*s "
                    "(suppressed %llu similar)",
                    n, c->peer, (unsigned long long)c->id, (int)nt->topic_lens[0], nt->topics[0],
                    n > 1 ? " " : "", n > 1 ? (int)nt->topic_lens[1] : 0, n > 1 ? nt->topics[1] : "",
                    n > 2 ? " " : "", n > 2 ? (int)nt->topic_lens[2] : 0, n > 2 ? nt->topics[2] : "",
                    (unsigned long long)suppressed);
        }
    }
    KR_ST_INC(nt, messages_published, 1);
    if (n == 0)
        return 0;

    /* Which shards own these topics. */
    uint32_t nshards = kr_router_nshards(r);
    uint64_t shardset[1] = {0};
    uint8_t bigset[256];
    uint32_t involved = 0;
    if (nshards <= 64) {
        for (uint32_t i = 0; i < n; i++) {
            uint32_t s = kr_router_shard_of(r, nt->topics[i], nt->topic_lens[i]);
            if (!(shardset[0] & (UINT64_C(1) << s))) {
                shardset[0] |= UINT64_C(1) << s;
                involved++;
            }
        }
    } else {
        memset(bigset, 0, sizeof(bigset));
        for (uint32_t i = 0; i < n; i++) {
            uint32_t s = kr_router_shard_of(r, nt->topics[i], nt->topic_lens[i]);
            if (!bigset[s]) {
                bigset[s] = 1;
                involved++;
            }
        }
    }
    /* each entry gets its own time: it orders one publisher's messages for subscribers */
    struct kr_msg *m = kr_msg_create(c->id, kr_msg_clock_us(), n, nt->topics, nt->topic_lens,
                                     e->payload, (uint32_t)e->payload_len,
                                     involved > 1 ? srv->nnet : 0);
    kr_msg_set_nshards(m, involved);
    if (involved > 1)
        kr_msg_ref(m, involved - 1);
    for (uint32_t s = 0; s < nshards; s++) {
        bool in = nshards <= 64 ? (shardset[0] >> s) & 1 : bigset[s];
        if (!in)
            continue;
        struct kr_event ev = {.type = KR_EV_PUBLISH, .src = (uint16_t)nt->idx, .conn = c->id, .ptr = m};
        kr_conn_send(c, s, &ev);
    }
    return 0;
}

static void kr_req_publish(struct kr_conn *c, const struct kr_request *req)
{
    struct kr_nt *nt = c->nt;
    KR_ST_INC(nt, publish_requests, 1);
    size_t nentries = 0;
    /* the codec validates the whole block before handing over any entry, so a bad block
     * publishes nothing */
    int rc = kr_proto_parse_publish(req->data, req->data_len, &nt->srv->lim, kr_pub_entry, c, &nentries);
    if (rc < 0) {
        kr_conn_fail(c, kr_proto_error_reply(rc));
        return;
    }
    if (c->nparked || c->rq_count)
        kr_rq_push(c, 0, req->noreply, false, c->nparked > 0);
    else
        kr_reply_stored(c, req->noreply);
}

/* Write v in decimal at p; returns the number of bytes (no terminator). */
static size_t kr_fmt_u64(char *p, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

static uint32_t kr_digits(uint64_t v)
{
    uint32_t d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
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

/* The queue overflowed: the client's request is answered with the error, then closed. */
static void kr_reply_overflow(struct kr_conn *c)
{
    if (c->rq_count) { /* after the replies that wait on the router */
        c->deferred_err = "SERVER_ERROR queue overflow\r\n";
        return;
    }
    kr_out_str(c, "SERVER_ERROR queue overflow\r\n");
    c->close_after_write = true;
}

/* How many entries at the head of the queue are complete and fit in one reply
 * (max_poll_reply_bytes; at least one): what a poll hands out now, and the bytes they add
 * to the reply. */
static uint32_t kr_conn_ready_entries(struct kr_conn *c, uint64_t *bytes)
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
static bool kr_conn_queue_final_empty(const struct kr_conn *c)
{
    return c->drain == KR_DR_POLL && c->q.count == 0 && c->nstage == 0 && !c->retro_active;
}

/* A poll of a client the drain reached was answered: the reply that empties its final
 * queue is its last one. */
static void kr_conn_drain_replied(struct kr_conn *c)
{
    if (kr_conn_queue_final_empty(c))
        c->close_after_write = true;
}

/* Answer a poll with the n complete entries at the head of the queue (`END` when n is 0). */
static void kr_poll_reply(struct kr_conn *c, uint32_t n, uint64_t bytes)
{
    struct kr_nt *nt = c->nt;
    if (n == 0) {
        kr_out_str(c, "END\r\n");
        kr_conn_drain_replied(c);
        return;
    }
    kr_out_reserve(c, 17 + 20 + 2 + bytes + 5);
    memcpy(c->out + c->out_len, "VALUE messages 0 ", 17);
    c->out_len += 17;
    c->out_len += kr_fmt_u64(c->out + c->out_len, bytes - 2);
    memcpy(c->out + c->out_len, "\r\n", 2);
    c->out_len += 2;
    uint64_t qbytes_before = c->q.bytes;
    for (uint32_t k = 0; k < n; k++) {
        struct kr_cq_entry *e = kr_cq_at(&c->q, 0);
        struct kr_msg *m = e->msg;
        uint32_t ntop = kr_msg_ntopics(m), plen, tlen;
        const char *payload = kr_msg_payload(m, &plen);
        char *o = c->out + c->out_len;
        memcpy(o, "MESSAGE ", 8);
        o += 8;
        for (uint32_t i = 0; i < ntop; i++) {
            if (kr_cq_entry_has(e, ntop, i)) {
                const char *t = kr_msg_topic(m, i, &tlen);
                memcpy(o, t, tlen);
                o += tlen;
                *o++ = ' ';
            }
        }
        o += kr_fmt_u64(o, plen);
        *o++ = '\r';
        *o++ = '\n';
        memcpy(o, payload, plen);
        o += plen;
        *o++ = '\r';
        *o++ = '\n';
        c->out_len = (size_t)(o - c->out);
        if (ntop > 64)
            free(e->bits);
        kr_msg_unref(m);
        kr_cq_pop(&c->q);
        c->seq_head++;
    }
    kr_out_add(c, "END\r\n", 5);
    KR_ST_DEC(nt, queued_messages, n);
    KR_ST_DEC(nt, queued_bytes, qbytes_before - c->q.bytes);
    KR_ST_INC(nt, messages_delivered, n);
    kr_conn_drain_replied(c);
}

static void kr_nt_poll_timer_cb(uv_timer_t *t);

/* `get messages`. `may_wait`: nothing follows the request in the client's input, so an empty
 * answer may wait for a message (see "waiting polls" above). */
static void kr_req_get_messages(struct kr_conn *c, bool may_wait)
{
    struct kr_nt *nt = c->nt;
    KR_ST_INC(nt, cmd_get, 1);
    c->last_poll_ms = kr_now_ms();
    kr_nt_drain(nt); /* take what the shards have sent so far */
    if (c->closing)
        return;
    if (c->overflowed) { /* it overflowed with what was just taken */
        kr_reply_overflow(c);
        return;
    }
    uint64_t bytes;
    uint32_t n = kr_conn_ready_entries(c, &bytes);
    if (n == 0 && may_wait && nt->live.poll_wait_ms && !c->close_after_write) {
        c->poll_wait = KR_PW_HELD;
        c->poll_since_ms = uv_now(&nt->loop);
        kr_pw_push(&nt->held, c);
        KR_ST_INC(nt, polls_waited, 1);
        /* armed for the oldest wait; re-armed when poll_wait_ms was lowered meanwhile */
        if (!uv_is_active((uv_handle_t *)&nt->poll_timer) ||
            uv_timer_get_due_in(&nt->poll_timer) > nt->live.poll_wait_ms)
            uv_timer_start(&nt->poll_timer, kr_nt_poll_timer_cb, nt->live.poll_wait_ms, 0);
        return;
    }
    kr_poll_reply(c, n, bytes);
}

/* Answer a waiting poll now with whatever is complete in the queue, or with the overflow
 * error. The caller then runs kr_conn_process (stashed input, flush). */
static void kr_poll_finish(struct kr_conn *c)
{
    kr_poll_unwait(c);
    if (c->overflowed) {
        kr_reply_overflow(c);
        return;
    }
    uint64_t bytes;
    uint32_t n = kr_conn_ready_entries(c, &bytes);
    kr_poll_reply(c, n, bytes);
}

static void kr_stat_line(kr_server_emit_cb emit, void *arg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void kr_stat_line(kr_server_emit_cb emit, void *arg, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    /* most lines are "STAT <name> %llu": formatted without vsnprintf, which would cost
     * more than the rest of a stats request */
    size_t fl = strlen(fmt);
    if (fl > 5 && fl < sizeof(buf) - 24 && memcmp(fmt + fl - 5, " %llu", 5) == 0 &&
        !memchr(fmt, '%', fl - 4)) {
        unsigned long long v = va_arg(ap, unsigned long long);
        va_end(ap);
        memcpy(buf, fmt, fl - 4);
        emit(arg, buf, fl - 4 + kr_fmt_u64(buf + fl - 4, v));
        return;
    }
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0)
        emit(arg, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static void kr_req_stats_emit(void *arg, const char *line, size_t len)
{
    struct kr_conn *c = arg;
    kr_out_add(c, line, len);
    kr_out_add(c, "\r\n", 2);
}

static void kr_req_stats(struct kr_conn *c)
{
    kr_server_stats(c->nt->srv, kr_req_stats_emit, c);
    kr_out_str(c, "END\r\n");
}

void kr_server_stats(struct kr_server *srv, kr_server_emit_cb emit, void *arg)
{
    struct kr_net_live lv;
    kr_net_live(srv, &lv);
    struct kr_nt_stats sum;
    memset(&sum, 0, sizeof(sum));
    for (uint32_t i = 0; i < srv->nnet; i++) {
        uint64_t *dst = (uint64_t *)&sum;
        uint64_t *src = (uint64_t *)&srv->nts[i]->st;
        for (size_t k = 0; k < sizeof(sum) / sizeof(uint64_t); k++)
            dst[k] += ck_pr_load_64(&src[k]);
    }
    struct kr_router_stats rs;
    kr_router_stats(srv->router, &rs);
    time_t now = time(NULL);
#define S(name, fmt, val) kr_stat_line(emit, arg, "STAT " name " " fmt, val)
    S("pid", "%d", ck_pr_load_int(&srv->pid));
    S("uptime", "%lld", (long long)(now - srv->started));
    S("time", "%lld", (long long)now);
    S("version", "%s", KR_VERSION);
    S("pointer_size", "%d", (int)(8 * sizeof(void *)));
#ifdef KR_HAVE_JEMALLOC
    /* allocator figures as of the last kr_server_refresh_stats (at most a second old) */
    S("allocator", "%s", "jemalloc");
    for (size_t i = 0; i < sizeof(kr_je_stats) / sizeof(kr_je_stats[0]); i++)
        kr_stat_line(emit, arg, "STAT jemalloc_%s %llu", kr_je_stats[i] + 6,
                     (unsigned long long)ck_pr_load_64(&srv->mem[i]));
#else
    S("allocator", "%s", "libc");
#endif
    uint64_t ut = ck_pr_load_64(&srv->ru_utime_us), st = ck_pr_load_64(&srv->ru_stime_us);
    kr_stat_line(emit, arg, "STAT rusage_user %llu.%06llu", (unsigned long long)(ut / 1000000),
                 (unsigned long long)(ut % 1000000));
    kr_stat_line(emit, arg, "STAT rusage_system %llu.%06llu", (unsigned long long)(st / 1000000),
                 (unsigned long long)(st % 1000000));
    S("max_connections", "%u", lv.max_tcp_clients);
    S("curr_connections", "%llu", (unsigned long long)sum.curr_connections);
    S("total_connections", "%llu", (unsigned long long)sum.total_connections);
    S("rejected_connections", "%llu", (unsigned long long)sum.rejected_connections);
    S("accept_fd_exhausted", "%llu", (unsigned long long)sum.accept_fd_exhausted);
    S("refused_connections", "%llu",
      (unsigned long long)(sum.refused_connections + ck_pr_load_64(&srv->refused_elsewhere)));
    S("cmd_get", "%llu", (unsigned long long)sum.cmd_get);
    S("cmd_set", "%llu", (unsigned long long)sum.cmd_set);
    S("bytes_read", "%llu", (unsigned long long)sum.bytes_read);
    S("bytes_written", "%llu", (unsigned long long)sum.bytes_written);
    S("threads", "%u", srv->nnet);
    S("router_shards", "%u", kr_router_nshards(srv->router));
    S("subscribe_requests", "%llu", (unsigned long long)sum.subscribe_requests);
    S("unsubscribe_requests", "%llu", (unsigned long long)sum.unsubscribe_requests);
    S("publish_requests", "%llu", (unsigned long long)sum.publish_requests);
    S("messages_published", "%llu", (unsigned long long)sum.messages_published);
    S("messages_routed", "%llu", (unsigned long long)rs.messages_routed);
    S("deliveries", "%llu", (unsigned long long)rs.deliveries);
    S("messages_delivered", "%llu", (unsigned long long)sum.messages_delivered);
    S("polls_waited", "%llu", (unsigned long long)sum.polls_waited);
    S("queued_messages", "%llu", (unsigned long long)sum.queued_messages);
    S("queued_bytes", "%llu", (unsigned long long)sum.queued_bytes);
    S("queue_overflows", "%llu", (unsigned long long)sum.queue_overflows);
    S("memory_used", "%llu", (unsigned long long)kr_server_memory_used(srv, NULL));
    S("max_memory", "%llu", (unsigned long long)lv.max_memory);
    S("memory_overflows", "%llu", (unsigned long long)sum.memory_overflows);
    S("output_bytes", "%llu", (unsigned long long)sum.output_bytes);
    S("drain_errors", "%llu", (unsigned long long)sum.drain_errors);
    S("topics", "%llu", (unsigned long long)rs.topics);
    S("subscriptions", "%llu", (unsigned long long)rs.subscriptions);
    S("shard_overflow_events", "%llu", (unsigned long long)rs.overflow_events);
    S("ring_full_waits", "%llu", (unsigned long long)sum.ring_full_waits);
    S("fanout_warnings", "%llu", (unsigned long long)rs.fanout_warnings);
    S("publish_topic_warnings", "%llu", (unsigned long long)sum.publish_topic_warnings);
    S("register_requests", "%llu", (unsigned long long)sum.register_requests);
    S("retro_requests", "%llu", (unsigned long long)sum.retro_requests);
    S("retro_not_found", "%llu", (unsigned long long)sum.retro_not_found);
    S("retro_future_horizons", "%llu", (unsigned long long)sum.retro_future_horizons);
    S("messages_replayed", "%llu", (unsigned long long)sum.messages_replayed);
    S("history_messages", "%llu", (unsigned long long)rs.history_messages);
    S("history_bytes", "%llu", (unsigned long long)rs.history_bytes);
    S("protocol_errors", "%llu", (unsigned long long)sum.protocol_errors);
    S("idle_timeouts", "%llu", (unsigned long long)sum.idle_timeouts);
    S("request_timeouts", "%llu", (unsigned long long)sum.request_timeouts);
    S("stats_refreshes", "%llu", (unsigned long long)ck_pr_load_64(&srv->stats_refreshes));
#undef S
}

void kr_server_refresh_stats(struct kr_server *srv)
{
    ck_pr_store_int(&srv->pid, (int)getpid());
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        ck_pr_store_64(&srv->ru_utime_us,
                       (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec);
        ck_pr_store_64(&srv->ru_stime_us,
                       (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec);
    }
#ifdef KR_HAVE_JEMALLOC
    /* advancing the epoch merges every arena's statistics (it takes their locks) */
    uint64_t epoch = 1;
    size_t sz = sizeof(epoch);
    mallctl("epoch", &epoch, &sz, &epoch, sz);
    for (size_t i = 0; i < sizeof(kr_je_stats) / sizeof(kr_je_stats[0]); i++) {
        size_t v = 0;
        sz = sizeof(v);
        if (mallctl(kr_je_stats[i], &v, &sz, NULL, 0) == 0)
            ck_pr_store_64(&srv->mem[i], (uint64_t)v);
    }
#endif
    ck_pr_store_64(&srv->stats_refreshes, ck_pr_load_64(&srv->stats_refreshes) + 1);
}

/* Handle one parsed request; `last`: nothing follows it in the client's input yet. */
static void kr_conn_request(struct kr_conn *c, const struct kr_request *req, bool last)
{
    struct kr_nt *nt = c->nt;
    if (c->overflowed) {
        kr_reply_overflow(c);
        return;
    }
    switch (req->type) {
    case KR_REQ_SUBSCRIBE:
        KR_ST_INC(nt, cmd_set, 1);
        kr_req_subscribe(c, req, KR_EV_SUBSCRIBE);
        break;
    case KR_REQ_UNSUBSCRIBE:
        KR_ST_INC(nt, cmd_set, 1);
        kr_req_subscribe(c, req, KR_EV_UNSUBSCRIBE);
        break;
    case KR_REQ_PUBLISH:
        KR_ST_INC(nt, cmd_set, 1);
        kr_req_publish(c, req);
        break;
    case KR_REQ_REGISTER:
        KR_ST_INC(nt, cmd_set, 1);
        KR_ST_INC(nt, register_requests, 1);
        c->horizon_us = kr_msg_clock_us();
        kr_reply_stored(c, req->noreply);
        break;
    case KR_REQ_RETRO_SUBSCRIBE:
        KR_ST_INC(nt, cmd_set, 1);
        kr_req_subscribe(c, req, KR_EV_RETRO_SUBSCRIBE);
        break;
    case KR_REQ_GET_MESSAGES:
        kr_req_get_messages(c, last);
        break;
    case KR_REQ_QUIT:
        c->close_after_write = true;
        break;
    case KR_REQ_VERSION: /* load-balancer health checks see the drain here */
        kr_out_str(c, ck_pr_load_int(&nt->srv->draining) ? "VERSION " KR_VERSION " draining\r\n"
                                                          : "VERSION " KR_VERSION "\r\n");
        break;
    case KR_REQ_STATS:
        kr_req_stats(c);
        break;
    }
}

/* Hand parked events to the shards; when all went, the publish that waited is answered. */
static bool kr_conn_unpark(struct kr_conn *c)
{
    if (!c->nparked)
        return true;
    if (!kr_conn_send_parked(c))
        return false;
    if (c->rq_count) /* only the newest request can have parked events */
        c->rq[(c->rq_head + c->rq_count - 1) & (c->rq_cap - 1)].sent_gate = false;
    kr_rq_emit(c);
    return true;
}

/* May the next request be parsed now? */
static bool kr_conn_can_parse(struct kr_conn *c)
{
    return !c->closing && !c->close_after_write && !c->nparked && !c->retro_active &&
           !c->deferred_err && !c->poll_wait && c->rq_count < KR_MAX_PIPELINED &&
           kr_conn_out_pending(c) < KR_OUT_HIGH; /* a reader that lags gets no more replies */
}

/* Requests that may be answered out of the router's ack order are those whose reply waits
 * in the reply ring; anything else waits until every earlier reply is out. */
static bool kr_req_pipelinable(const struct kr_conn *c, const struct kr_request *req)
{
    switch (req->type) {
    case KR_REQ_SUBSCRIBE:
        return c->horizon_us == 0; /* a retroactive one runs alone */
    case KR_REQ_UNSUBSCRIBE:
    case KR_REQ_PUBLISH:
        return true;
    default:
        return false;
    }
}

/* Replies wait for the socket beyond KR_OUT_HIGH; while a write is in flight, anything
 * more waits for it. Requests are not run meanwhile (a client that does not read cannot
 * make the server buffer more replies for it), and its socket is not read. */
static bool kr_conn_out_full(const struct kr_conn *c)
{
    return c->out_len + (c->writing ? KR_OUT_HIGH : 0) > KR_OUT_HIGH;
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
        struct kr_request req;
        size_t used = 0;
        int rc = kr_proto_parse(buf + off, len - off, &c->nt->srv->lim, &req, &used);
        if (rc == KR_PROTO_NEED_MORE) {
            c->need = used;
            partial = true;
            break;
        }
        c->need = 0;
        if (rc < 0) {
            kr_conn_fail(c, kr_proto_error_reply(rc));
            off = len;
            break;
        }
        if (c->rq_count && !kr_req_pipelinable(c, &req))
            break; /* parsed again once the earlier replies are out */
        off += used;
        done++;
        kr_conn_request(c, &req, off == len);
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
    if (nt->nturns == nt->turns_cap) {
        nt->turns_cap = nt->turns_cap ? nt->turns_cap * 2 : 64;
        nt->turns = kr_xrealloc(nt->turns, nt->turns_cap * sizeof(*nt->turns));
    }
    nt->turns[nt->nturns++] = c->id;
    c->on_turns = true;
    if (nt->nturns == 1)
        uv_idle_start(&nt->turn_idle, kr_nt_turn_cb); /* the loop polls without blocking */
}

/* Work through stashed input; called after reads and whenever a wait ends. */
static void kr_conn_process(struct kr_conn *c)
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
    if (c->nparked)
        kr_conn_block(c);
    /* keep reading while replies wait on the router or for a turn, up to a bounded amount
     * of input */
    bool stuck = c->nparked || (!kr_conn_can_parse(c) && c->in_len >= 256 * 1024) ||
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
        c->turn_over = false; /* kr_conn_write_cb continues once the socket took the replies */
    } else if (out_full) {
        /* everything was written at once: no write callback will come */
        if (c->in_len && kr_conn_can_parse(c))
            c->turn_over = true;
        else if (!stuck && !c->close_after_write && !c->turn_over)
            kr_conn_resume(c);
    }
    if (c->turn_over)
        kr_conn_yield(c);
}

static void kr_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct kr_conn *c = (struct kr_conn *)s;
    struct kr_nt *nt = c->nt;
    kr_nt_refresh_live(nt);
    if (nread < 0) {
        kr_conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    KR_ST_INC(nt, bytes_read, (uint64_t)nread);
    if (c->close_after_write)
        return; /* discard input after a final reply */
    if (c->poll_wait)
        kr_poll_finish(c); /* its reply goes before those of the new requests */
    size_t n = (size_t)nread;
    if (c->in_len == 0 && kr_conn_can_parse(c)) {
        /* fast path: parse straight from the shared read buffer */
        size_t used = kr_conn_parse(c, buf->base, n);
        if (!c->closing && used < n && !c->close_after_write)
            kr_conn_stash(c, buf->base + used, n - used);
    } else {
        kr_conn_stash(c, buf->base, n);
    }
    kr_conn_process(c);
}

/* ---------------------------------------------------------------- deliveries */

static void kr_conn_overflow(struct kr_conn *c)
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
static struct kr_pend *kr_nt_pend(struct kr_nt *nt, struct kr_msg *m, bool create)
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

static struct kr_cq_entry *kr_conn_find_incomplete(struct kr_conn *c, struct kr_msg *m);
static void kr_nt_memory_check(struct kr_nt *nt);

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
static void kr_nt_deliver(struct kr_nt *nt, struct kr_event *ev, bool replay)
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
static void kr_conn_retro_done(struct kr_conn *c)
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

static void kr_nt_fanout_warn(struct kr_nt *nt, struct kr_msg *m, uint32_t fanout)
{
    KR_ST_INC(nt, fanout_warnings, 1);
    uint64_t suppressed = 0;
    if (!kr_log_enabled(KR_LOG_WARN) ||
        !kr_log_ratelimit(&nt->rl_fanout, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
        return;
    struct kr_conn *pub = kr_nt_conn(nt, kr_msg_publisher(m));
    uint32_t ntop = kr_msg_ntopics(m), l0 = 0, l1 = 0;
    const char *t0 = ntop > 0 ? kr_msg_topic(m, 0, &l0) : "";
    const char *t1 = ntop > 1 ? kr_msg_topic(m, 1, &l1) : "";
    KR_WARN("publish from %s (id %llu) fanned out to %u clients, %u topics, first topics: %.*s%s%.*s "
            "(suppressed %llu similar)",
            pub ? pub->peer : "(disconnected)", (unsigned long long)kr_msg_publisher(m), fanout, ntop,
            (int)(l0 > 200 ? 200 : l0), t0, ntop > 1 ? " " : "", (int)(l1 > 200 ? 200 : l1), t1,
            (unsigned long long)suppressed);
}

static void kr_nt_handle(struct kr_nt *nt, struct kr_event *ev)
{
    switch (ev->type) {
    case KR_EV_DELIVER:
        kr_nt_deliver(nt, ev, false);
        break;
    case KR_EV_REPLAY:
        kr_nt_deliver(nt, ev, true);
        break;
    case KR_EV_END: {
        struct kr_msg *m = ev->ptr;
        struct kr_pend *p = kr_nt_pend(nt, m, true);
        p->arrived++;
        p->fanout += ev->aux;
        if (p->arrived == p->expected) {
            uint32_t warn = nt->live.fanout_warn;
            if (warn && p->fanout >= warn && KR_CONN_NET(kr_msg_publisher(m)) == nt->idx)
                kr_nt_fanout_warn(nt, m, p->fanout);
            *kr_msg_slot(m, nt->idx) = NULL;
            kr_pend_unref(p);
        }
        kr_msg_unref(m);
        break;
    }
    case KR_EV_FANOUT_WARN:
        kr_nt_fanout_warn(nt, ev->ptr, ev->aux);
        kr_msg_unref(ev->ptr);
        break;
    case KR_EV_ACK: {
        uint32_t reqno = ((struct kr_router_cmd *)ev->ptr)->pad;
        free(ev->ptr);
        struct kr_conn *c = kr_nt_conn(nt, ev->conn);
        if (reqno == KR_DRAIN_PAD) { /* a drain barrier, not a request */
            if (c)
                kr_conn_drain_acked(c);
            break;
        }
        struct kr_reply_wait *w = c ? kr_rq_at(c, reqno) : NULL;
        if (w && w->acks_left) {
            if (ev->aux == KR_EV_RETRO_SUBSCRIBE && ev->mask)
                c->retro_not_found = true;
            if (--w->acks_left == 0) {
                if (w->retro) {
                    if (c->retro_not_found)
                        KR_ST_INC(nt, retro_not_found, 1);
                    kr_conn_retro_done(c);
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
static void kr_nt_drain(struct kr_nt *nt)
{
    struct kr_router *r = nt->srv->router;
    uint32_t nshards = kr_router_nshards(r), budget = KR_DRAIN_BUDGET;
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

static void kr_nt_wake_cb(uv_async_t *a)
{
    struct kr_nt *nt = a->data;
    kr_nt_refresh_live(nt);
    if (ck_pr_load_8((uint8_t *)&nt->stopping)) {
        uv_stop(&nt->loop);
        return;
    }
    kr_net_reqq_serve(nt->srv, nt->idx); /* admin requests, if any */
    kr_nt_drain(nt);
}

/* Answer the waiting polls that got something. One whose messages are all parts of
 * multi-shard messages still being completed keeps waiting (the missing parts arrive
 * through the mailboxes, which end in another loop iteration) until poll_wait_ms. */
static void kr_nt_answer_ready(struct kr_nt *nt)
{
    uint64_t now = uv_now(&nt->loop), wait = nt->live.poll_wait_ms;
    for (uint32_t k = nt->ready.count; k > 0 && nt->ready.count; k--) {
        struct kr_conn *c = kr_pw_first(&nt->ready);
        uint64_t bytes;
        if (!c->overflowed && kr_conn_ready_entries(c, &bytes) == 0 &&
            now - c->poll_since_ms < wait) {
            kr_pw_unlink(&nt->ready, c); /* to the back of the list */
            kr_pw_push(&nt->ready, c);
            continue;
        }
        kr_poll_finish(c);
        kr_conn_process(c);
    }
}

/* The oldest waiting polls have waited poll_wait_ms: answer them (`END`). */
static void kr_nt_poll_timer_cb(uv_timer_t *t)
{
    struct kr_nt *nt = t->data;
    kr_nt_refresh_live(nt);
    uint64_t now = uv_now(&nt->loop), wait = nt->live.poll_wait_ms;
    struct kr_conn *c;
    while ((c = kr_pw_first(&nt->held)) && now - c->poll_since_ms >= wait) {
        kr_poll_finish(c);
        kr_conn_process(c);
    }
    if (c)
        uv_timer_start(t, kr_nt_poll_timer_cb, wait - (now - c->poll_since_ms), 0);
    else if (nt->ready.count)
        uv_timer_start(t, kr_nt_poll_timer_cb, wait ? wait : 1, 0); /* see kr_nt_answer_ready */
}

/* The connections that stopped for others get their next turn, in the order they stopped
 * (those that stop again go to the back). While any waits, the idle handle is active, so
 * the loop polls for I/O without blocking between turns; it stops when none is left. */
static void kr_nt_turn_cb(uv_idle_t *h)
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
static void kr_nt_check_cb(uv_check_t *h)
{
    struct kr_nt *nt = h->data;
    kr_nt_refresh_live(nt);
    if (nt->nctl)
        kr_nt_send_ctl(nt);
    if (nt->blocked_head)
        kr_nt_unblock_all(nt);
    if (nt->ready.count)
        kr_nt_answer_ready(nt);
    kr_router_flush(nt->srv->router, nt->idx);
}

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
static uint64_t kr_server_memory_used(struct kr_server *s, uint64_t *history)
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
    uint64_t freed = c->q.bytes;
    KR_ST_INC(nt, memory_overflows, 1);
    uint64_t suppressed = 0;
    if (kr_log_enabled(KR_LOG_WARN) &&
        kr_log_ratelimit(&nt->rl_memory, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
        KR_WARN("client %s (id %llu): over max_memory (%llu); discarding its queue (%u messages, "
                "%llu bytes, %llu unsent), it will be told and disconnected (suppressed %llu "
                "similar)",
                c->peer, (unsigned long long)c->id, (unsigned long long)nt->live.max_memory,
                c->q.count, (unsigned long long)c->q.bytes,
                (unsigned long long)kr_conn_out_pending(c), (unsigned long long)suppressed);
    if (c->writing) {
        /* it does not read what it was sent: the error could not reach it either */
        freed += kr_conn_out_pending(c);
        kr_conn_overflow(c);
        kr_conn_close(c);
        return freed;
    }
    if (!c->overflowed)
        kr_conn_overflow(c); /* counted in queue_overflows too; a waiting poll gets the error */
    if (c->poll_wait == KR_PW_NONE && !c->close_after_write && !c->deferred_err) {
        kr_reply_overflow(c); /* now, not at its next request: it may never send one */
        kr_conn_pause(c);
    }
    kr_conn_block(c); /* written and closed after this loop iteration */
    return freed;
}

/* See above. Net thread. */
static void kr_nt_memory_check(struct kr_nt *nt)
{
    struct kr_server *srv = nt->srv;
    kr_nt_refresh_live(nt);
    uint64_t max = nt->live.max_memory;
    nt->mem_grown = 0;
    if (!max) {
        nt->mem_step = UINT64_MAX;
        ck_pr_store_64(&nt->mem_largest, 0);
        return;
    }
    nt->mem_step = max / (8 * (uint64_t)srv->nnet);
    if (nt->mem_step < 4096)
        nt->mem_step = 4096;
    uint64_t history, used = kr_server_memory_used(srv, &history);
    bool over = used > max;
    uint64_t largest = 0, mine = 0;
    uint32_t ncand = 0;
    for (uint32_t i = 0; i < nt->nslots; i++) {
        struct kr_conn *c = nt->slots[i];
        if (!c || c->closing)
            continue;
        uint64_t b = c->q.bytes + kr_conn_out_pending(c);
        if (!b)
            continue;
        mine += b;
        if (b > largest)
            largest = b;
        if (!over || (c->close_after_write && !c->writing))
            continue; /* on its way out */
        if (ncand == nt->mem_cand_cap) {
            nt->mem_cand_cap = nt->mem_cand_cap ? nt->mem_cand_cap * 2 : 64;
            nt->mem_cand = kr_xrealloc(nt->mem_cand, nt->mem_cand_cap * sizeof(*nt->mem_cand));
        }
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

/* Every sweep period: retry what waits for ring space, then close the clients idle for
 * client_idle_timeout_ms (no complete request) and those whose started request is not
 * complete request_timeout_ms after its first bytes. A request the server itself holds
 * back (waiting on the router, a waiting poll, a turn) is not the client's delay. */
static void kr_nt_sweep_cb(uv_timer_t *t)
{
    struct kr_nt *nt = t->data;
    struct kr_net_live lv;
    kr_net_live(nt->srv, &lv);
    uint64_t timeout = lv.client_idle_timeout_ms, rto = lv.request_timeout_ms;
    uint64_t now = kr_now_ms();
    if (nt->nctl)
        kr_nt_send_ctl(nt);
    if (nt->blocked_head)
        kr_nt_unblock_all(nt);
    kr_nt_memory_check(nt);
    if (!timeout && !rto)
        return;
    for (uint32_t i = 0; i < nt->nslots; i++) {
        struct kr_conn *c = nt->slots[i];
        if (!c || c->closing)
            continue;
        if (timeout && now - c->last_active_ms >= timeout) {
            KR_ST_INC(nt, idle_timeouts, 1);
            KR_DEBUG("client %s (id %llu): idle for %llu ms; closing", c->peer,
                     (unsigned long long)c->id, (unsigned long long)(now - c->last_active_ms));
            kr_conn_close(c);
        } else if (rto && c->partial_since_ms && now - c->partial_since_ms >= rto &&
                   kr_conn_can_parse(c) && !c->turn_over) {
            KR_ST_INC(nt, request_timeouts, 1);
            uint64_t suppressed = 0;
            if (kr_log_enabled(KR_LOG_WARN) &&
                kr_log_ratelimit(&nt->rl_timeouts, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
                KR_WARN("client %s (id %llu): request incomplete %llu ms after its first bytes "
                        "(%zu bytes so far; request_timeout_ms %llu); closing (suppressed %llu "
                        "similar)",
                        c->peer, (unsigned long long)c->id,
                        (unsigned long long)(now - c->partial_since_ms), c->in_len,
                        (unsigned long long)rto, (unsigned long long)suppressed);
            kr_conn_close(c);
        }
    }
}

/* ---------------------------------------------------------------- accepting
 *
 * Each net thread accepts on its own listening socket with accept4() from a uv_poll_t
 * readiness callback rather than uv_listen(): when descriptors run out, libuv's listener
 * loops inside its own callback for as long as accept() keeps failing (its emfile trick
 * only works while its one reserve descriptor per loop could be reopened, and it closes
 * the pending connections silently), which spins the thread and starves its clients.
 * Here, on EMFILE/ENFILE the thread frees its own reserve descriptor, answers the pending
 * connections `SERVER_ERROR Too many clients`, reopens the reserve and, when connections
 * are still waiting or the reserve could not be reopened, stops accepting for
 * KR_ACCEPT_PAUSE_MS; existing clients are served throughout. */

/* "ip:port" of a peer address. */
static void kr_addr_name(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
    }
    snprintf(out, outlen, "%s:%d", ip, port);
}

/* " (suppressed N similar)" when N > 0, else "". */
static const char *kr_suppressed_note(uint64_t n, char *buf, size_t len)
{
    if (n == 0)
        return "";
    snprintf(buf, len, " (suppressed %llu similar)", (unsigned long long)n);
    return buf;
}

static const char kr_too_many_clients[] = "SERVER_ERROR Too many clients\r\n";

/* Tell a connection we do not take that the server is full, and close it. */
static void kr_reject_fd(int fd)
{
    ssize_t w = send(fd, kr_too_many_clients, sizeof(kr_too_many_clients) - 1,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
    close(fd);
}

static void kr_nt_accept_cb(uv_poll_t *h, int status, int events);

static void kr_nt_reserve_open(struct kr_nt *nt)
{
    if (nt->reserve_fd < 0)
        nt->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void kr_nt_accept_pause_cb(uv_timer_t *t)
{
    struct kr_nt *nt = t->data;
    kr_nt_reserve_open(nt);
    if (nt->listening)
        uv_poll_start(&nt->listener, UV_READABLE, kr_nt_accept_cb);
}

/* Stop accepting for KR_ACCEPT_PAUSE_MS (the loop must not spin on a failing accept). */
static void kr_nt_accept_pause(struct kr_nt *nt)
{
    uv_poll_stop(&nt->listener);
    uv_timer_start(&nt->accept_pause, kr_nt_accept_pause_cb, KR_ACCEPT_PAUSE_MS, 0);
}

/* Whether allow_from lets the peer in; a refused peer's connection is closed unread. */
static bool kr_nt_acl_check(struct kr_nt *nt, int fd, const struct sockaddr_storage *ss)
{
    if (kr_acl_allows(nt->srv->acl, (const struct sockaddr *)ss))
        return true;
    close(fd);
    KR_ST_INC(nt, refused_connections, 1);
    uint64_t suppressed = 0;
    if (kr_log_ratelimit(&nt->rl_refused, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed)) {
        char peer[64], note[64];
        kr_addr_name(ss, peer, sizeof(peer));
        KR_WARN("refused a connection from %s: not in allow_from%s", peer,
                kr_suppressed_note(suppressed, note, sizeof(note)));
    }
    return false;
}

/* accept() failed with EMFILE or ENFILE (`err`). */
static void kr_nt_out_of_fds(struct kr_nt *nt, int err)
{
    KR_ST_INC(nt, accept_fd_exhausted, 1);
    uint32_t rejected = 0;
    bool backlog_empty = false;
    if (nt->reserve_fd >= 0) {
        pthread_mutex_lock(&nt->srv->accept_mu);
        close(nt->reserve_fd);
        nt->reserve_fd = -1;
        for (uint32_t i = 0; i < KR_ACCEPT_BATCH; i++) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof(ss);
            int fd = accept4(nt->listen_fd, (struct sockaddr *)&ss, &sl,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED)
                    continue;
                backlog_empty = errno == EAGAIN || errno == EWOULDBLOCK;
                break;
            }
            if (!kr_nt_acl_check(nt, fd, &ss))
                continue;
            kr_reject_fd(fd);
            rejected++;
        }
        kr_nt_reserve_open(nt);
        pthread_mutex_unlock(&nt->srv->accept_mu);
    }
    KR_ST_INC(nt, rejected_connections, rejected);
    bool pause = !backlog_empty || nt->reserve_fd < 0;
    if (pause)
        kr_nt_accept_pause(nt);
    uint64_t suppressed = 0;
    if (kr_log_ratelimit(&nt->rl_accept, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed)) {
        char note[64];
        KR_WARN("accept: out of file descriptors (%s): %u connection(s) answered SERVER_ERROR "
                "Too many clients%s%s",
                strerror(err), rejected, pause ? "; accepting again in 100 ms" : "",
                kr_suppressed_note(suppressed, note, sizeof(note)));
    }
}

/* Keepalive probes after `idle_s` idle seconds, then every idle_s / 3 (at least 1 s), and
 * the connection is dropped after 3 unanswered probes (Redis's choice). */
static void kr_conn_keepalive(struct kr_conn *c, uint32_t idle_s)
{
    if (uv_tcp_keepalive(&c->h, 1, idle_s) != 0)
        return;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->h, &fd) != 0)
        return;
    int intvl = idle_s / 3 ? (int)(idle_s / 3) : 1, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* A new connection `fd` from `ss`: check it, then make it a client. */
static void kr_nt_accepted(struct kr_nt *nt, int fd, const struct sockaddr_storage *ss)
{
    struct kr_server *srv = nt->srv;
    if (!kr_nt_acl_check(nt, fd, ss))
        return;
    const struct kr_net_live *lv = &nt->live;
    if (ck_pr_faa_32(&srv->nconns, 1) >= lv->max_tcp_clients) {
        ck_pr_dec_32(&srv->nconns);
        kr_reject_fd(fd);
        KR_ST_INC(nt, rejected_connections, 1);
        uint64_t suppressed = 0;
        if (kr_log_ratelimit(&nt->rl_errors, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed)) {
            char note[64];
            KR_WARN("rejected a connection: max_tcp_clients (%u) reached%s", lv->max_tcp_clients,
                    kr_suppressed_note(suppressed, note, sizeof(note)));
        }
        return;
    }
    struct kr_conn *c = kr_xcalloc(1, sizeof(*c));
    c->nt = nt;
    uv_tcp_init(&nt->loop, &c->h);
    if (uv_tcp_open(&c->h, fd) != 0) {
        close(fd); /* not taken over by the handle */
        ck_pr_dec_32(&srv->nconns);
        c->closing = true;
        uv_close((uv_handle_t *)&c->h, kr_conn_closed_cb);
        return;
    }
    uv_tcp_nodelay(&c->h, 1);
    if (lv->tcp_keepalive_s)
        kr_conn_keepalive(c, lv->tcp_keepalive_s);
    if (nt->nfree == 0) {
        uint32_t ncap = nt->nslots ? nt->nslots * 2 : 256;
        nt->slots = kr_xrealloc(nt->slots, ncap * sizeof(*nt->slots));
        nt->gens = kr_xrealloc(nt->gens, ncap * sizeof(*nt->gens));
        nt->free_slots = kr_xrealloc(nt->free_slots, ncap * sizeof(*nt->free_slots));
        for (uint32_t i = ncap; i > nt->nslots; i--) {
            nt->slots[i - 1] = NULL;
            nt->gens[i - 1] = 0;
            nt->free_slots[nt->nfree++] = i - 1;
        }
        nt->nslots = ncap;
    }
    uint32_t slot = nt->free_slots[--nt->nfree];
    nt->gens[slot] = (nt->gens[slot] + 1) & 0xffffff;
    nt->slots[slot] = c;
    c->slot = slot;
    c->id = ((uint64_t)nt->idx << 56) | ((uint64_t)nt->gens[slot] << 32) | slot;
    c->created_ms = c->last_active_ms = kr_now_ms();
    kr_addr_name(ss, c->peer, sizeof(c->peer));
    KR_ST_INC(nt, curr_connections, 1);
    KR_ST_INC(nt, total_connections, 1);
    KR_DEBUG("client %s connected (id %llu, net thread %u)", c->peer, (unsigned long long)c->id, nt->idx);
    kr_conn_resume(c);
}

static void kr_nt_accept_cb(uv_poll_t *h, int status, int events)
{
    struct kr_nt *nt = h->data;
    (void)events;
    uint64_t suppressed = 0;
    char note[64];
    if (status < 0) {
        if (kr_log_ratelimit(&nt->rl_accept, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
            KR_WARN("listener: %s; accepting again in 100 ms%s", uv_strerror(status),
                    kr_suppressed_note(suppressed, note, sizeof(note)));
        kr_nt_accept_pause(nt);
        return;
    }
    kr_nt_refresh_live(nt);
    for (uint32_t i = 0; i < KR_ACCEPT_BATCH && nt->listening; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        pthread_mutex_lock(&nt->srv->accept_mu);
        int fd = accept4(nt->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int e = errno;
        pthread_mutex_unlock(&nt->srv->accept_mu);
        if (fd < 0) {
            if (e == EINTR || e == ECONNABORTED)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK)
                return; /* level-triggered: called again when more arrive */
            if (e == EMFILE || e == ENFILE) {
                kr_nt_out_of_fds(nt, e);
                return;
            }
            /* ENOBUFS, ENOMEM, a firewall's EPERM, ...: never spin on it */
            if (kr_log_ratelimit(&nt->rl_accept, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
                KR_WARN("accept failed: %s; accepting again in 100 ms%s", strerror(e),
                        kr_suppressed_note(suppressed, note, sizeof(note)));
            kr_nt_accept_pause(nt);
            return;
        }
        if (nt->reserve_fd < 0)
            kr_nt_reserve_open(nt); /* lost while descriptors ran out */
        kr_nt_accepted(nt, fd, &ss);
    }
}

/* ---------------------------------------------------------------- net threads */

static void kr_nt_main(void *arg)
{
    struct kr_nt *nt = arg;
    char name[16];
    snprintf(name, sizeof(name), "kr-net-%u", nt->idx);
    pthread_setname_np(pthread_self(), name);
    urcu_memb_register_thread(); /* reads the live configuration snapshot */
    uv_run(&nt->loop, UV_RUN_DEFAULT);
    urcu_memb_unregister_thread();
}

static void kr_nt_close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL); /* clients were closed already; these are the thread's own handles */
}

/* Open one SO_REUSEPORT listening socket. */
static int kr_listen_socket(const struct kr_cfg *cfg, uint16_t port, uint16_t *bound, char *err,
                            size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    int family;
    socklen_t slen;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, cfg->listen_ip, &a4->sin_addr) == 1) {
        family = AF_INET;
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        slen = sizeof(*a4);
    } else if (inet_pton(AF_INET6, cfg->listen_ip, &a6->sin6_addr) == 1) {
        family = AF_INET6;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        slen = sizeof(*a6);
    } else {
        snprintf(err, errlen, "listen_ip '%s' is not an IPv4 or IPv6 address", cfg->listen_ip);
        return -EINVAL;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -errno;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&ss, slen) != 0 || listen(fd, 1024) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s:%u: %s", cfg->listen_ip, port, strerror(e));
        close(fd);
        return -e;
    }
    slen = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &slen);
    *bound = ntohs(family == AF_INET ? a4->sin_port : a6->sin6_port);
    return fd;
}

static void kr_server_wake_net(void *arg, uint32_t net)
{
    struct kr_server *s = arg;
    uv_async_send(&s->nts[net]->wake);
}

int kr_server_create(const struct kr_cfg *cfg, struct kr_server **out, char *err, size_t errlen)
{
    struct kr_server *s = kr_xcalloc(1, sizeof(*s));
    s->cfg = cfg;
    s->nnet = cfg->num_net_threads;
    s->lim.max_request_bytes = cfg->max_request_bytes;
    s->lim.max_message_bytes = cfg->max_message_bytes;
    s->lim.max_line_bytes = cfg->max_line_bytes;
    s->lim.max_topic_bytes = cfg->max_topic_bytes;
    int arc = kr_acl_parse(cfg->allow_from, &s->acl, err, errlen);
    if (arc < 0) {
        free(s);
        return arc;
    }
    pthread_mutex_init(&s->accept_mu, NULL);
    s->nts = kr_xcalloc(s->nnet, sizeof(*s->nts));
    s->reqq = kr_net_reqq_create(s, s->nnet);
    uint16_t port = (uint16_t)cfg->tcp_server_port;
    for (uint32_t i = 0; i < s->nnet; i++) {
        struct kr_nt *nt = kr_xcalloc(1, sizeof(*nt));
        nt->srv = s;
        nt->idx = i;
        kr_net_live(s, &nt->live);
        s->nts[i] = nt;
        uint16_t bound = 0;
        int fd = kr_listen_socket(cfg, port, &bound, err, errlen);
        if (fd < 0) {
            for (uint32_t k = 0; k < i; k++) {
                close(s->nts[k]->listen_fd);
                free(s->nts[k]);
            }
            free(nt);
            free(s->nts);
            kr_net_reqq_destroy(s->reqq);
            kr_acl_free(s->acl);
            free(s);
            return fd;
        }
        nt->listen_fd = fd;
        port = bound; /* an ephemeral port is chosen once, then shared */
    }
    s->port = port;
    struct kr_router_opts ro = {
        .nshards = cfg->num_router_shards,
        .nnet = s->nnet,
        .mailbox_capacity = 8192,
        .fanout_warn = cfg->router_min_fanout_to_warn,
        .history = cfg->messages_stored_per_router_shard,
        .history_bytes = cfg->history_max_bytes,
        .pin_cpus = true,
        .wake_net = kr_server_wake_net,
        .wake_arg = s,
    };
    s->router = kr_router_create(&ro);
    for (uint32_t i = 0; i < s->nnet; i++) {
        struct kr_nt *nt = s->nts[i];
        uv_loop_init(&nt->loop);
        uv_async_init(&nt->loop, &nt->wake, kr_nt_wake_cb);
        nt->wake.data = nt;
        uv_check_init(&nt->loop, &nt->check);
        nt->check.data = nt;
        uv_check_start(&nt->check, kr_nt_check_cb);
        uv_idle_init(&nt->loop, &nt->turn_idle);
        nt->turn_idle.data = nt;
        uv_timer_init(&nt->loop, &nt->poll_timer);
        nt->poll_timer.data = nt;
        CDS_INIT_LIST_HEAD(&nt->held.list);
        CDS_INIT_LIST_HEAD(&nt->ready.list);
        uv_timer_init(&nt->loop, &nt->sweep);
        nt->sweep.data = nt;
        uv_timer_init(&nt->loop, &nt->accept_pause);
        nt->accept_pause.data = nt;
        nt->reserve_fd = -1;
        kr_nt_reserve_open(nt);
        int rc = uv_poll_init(&nt->loop, &nt->listener, nt->listen_fd);
        nt->listener.data = nt;
        if (rc == 0)
            rc = uv_poll_start(&nt->listener, UV_READABLE, kr_nt_accept_cb);
        nt->listening = rc == 0;
        if (rc < 0) {
            snprintf(err, errlen, "listen: %s", uv_strerror(rc));
            return rc; /* process exits on this path */
        }
    }
    *out = s;
    return 0;
}

int kr_server_start(struct kr_server *s)
{
    s->started = time(NULL);
    kr_server_refresh_stats(s); /* then the control thread's timer, once a second */
    int rc = kr_router_start(s->router);
    if (rc < 0)
        return rc;
    uint64_t timeout = s->cfg->client_idle_timeout_ms;
    uint64_t period = timeout ? (timeout / 4 < 1000 ? (timeout / 4 ? timeout / 4 : 1) : 1000) : 100;
    for (uint32_t i = 0; i < s->nnet; i++) {
        struct kr_nt *nt = s->nts[i];
        /* the sweep also retries clients blocked on a full ring */
        uv_timer_start(&nt->sweep, kr_nt_sweep_cb, period < 100 ? period : 100,
                       period < 100 ? period : 100);
        rc = uv_thread_create(&nt->thread, kr_nt_main, nt);
        if (rc < 0)
            return rc;
    }
    KR_INFO("kraken %s listening on %s:%u (%u net threads, %u router shards)", KR_VERSION,
            s->cfg->listen_ip, s->port, s->nnet, kr_router_nshards(s->router));
    return 0;
}

uint16_t kr_server_port(const struct kr_server *s)
{
    return s->port;
}

void kr_server_stop(struct kr_server *s)
{
    for (uint32_t i = 0; i < s->nnet; i++) {
        ck_pr_store_8((uint8_t *)&s->nts[i]->stopping, 1);
        uv_async_send(&s->nts[i]->wake);
    }
    for (uint32_t i = 0; i < s->nnet; i++)
        uv_thread_join(&s->nts[i]->thread);
    kr_net_reqq_shutdown(s);
    kr_router_stop(s->router);
}

void kr_server_destroy(struct kr_server *s)
{
    if (!s)
        return;
    for (uint32_t i = 0; i < s->nnet; i++) {
        struct kr_nt *nt = s->nts[i];
        for (uint32_t k = 0; k < nt->nslots; k++) {
            struct kr_conn *c = nt->slots[k];
            if (c) {
                c->subscribed = false; /* shards are stopped; the router frees everything */
                kr_conn_close(c);
            }
        }
        uv_walk(&nt->loop, kr_nt_close_walk, NULL);
        uv_run(&nt->loop, UV_RUN_DEFAULT);
        if (nt->listen_fd >= 0)
            close(nt->listen_fd); /* the poll handle does not own it */
        if (nt->reserve_fd >= 0)
            close(nt->reserve_fd);
    }
    kr_router_destroy(s->router);
    for (uint32_t i = 0; i < s->nnet; i++) {
        struct kr_nt *nt = s->nts[i];
        uv_loop_close(&nt->loop);
        free(nt->slots);
        free(nt->gens);
        free(nt->free_slots);
        free(nt->topics);
        free(nt->topic_lens);
        for (uint32_t k = 0; k < nt->nctl; k++) /* drain barriers never sent */
            if (nt->ctl[k].ev.type == KR_EV_UNSUBSCRIBE)
                free(nt->ctl[k].ev.ptr);
        free(nt->ctl);
        free(nt->mem_cand);
        free(nt->turns);
        free(nt);
    }
    free(s->nts);
    kr_net_reqq_destroy(s->reqq);
    kr_acl_free(s->acl);
    pthread_mutex_destroy(&s->accept_mu);
    free(s);
}

/* ---------------------------------------------------------------- operations
 * The net-thread side of kr_net_admin.c's requests (kr_net_int.h) and the figures the
 * control thread reads (kr_net.h). */

uint32_t kr_server_nnet(const struct kr_server *s) { return s->nnet; }
struct kr_router *kr_server_router(struct kr_server *s) { return s->router; }
struct kr_net_reqq *kr_net_server_reqq(struct kr_server *s) { return s->reqq; }

uint64_t kr_server_net_clients(const struct kr_server *s, uint32_t net)
{
    return net < s->nnet ? ck_pr_load_64(&s->nts[net]->st.curr_connections) : 0;
}

uint64_t kr_server_clients(const struct kr_server *s)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < s->nnet; i++)
        n += kr_server_net_clients(s, i);
    return n;
}

uint64_t kr_server_uptime(const struct kr_server *s)
{
    time_t now = time(NULL);
    return s->started && now > s->started ? (uint64_t)(now - s->started) : 0;
}

void kr_net_wake(struct kr_server *s, uint32_t net)
{
    uv_async_send(&s->nts[net]->wake);
}

static void kr_net_conn_fill(const struct kr_conn *c, uint64_t now, struct kr_net_conn_info *out)
{
    memset(out, 0, sizeof(*out));
    out->id = c->id;
    memcpy(out->peer, c->peer, sizeof(out->peer));
    out->queued_messages = c->q.count;
    out->queued_bytes = c->q.bytes;
    out->age_ms = now - c->created_ms;
    out->since_poll_ms = c->last_poll_ms ? (int64_t)(now - c->last_poll_ms) : -1;
    out->idle_ms = now - c->last_active_ms;
}

int kr_net_conn_next(struct kr_server *s, uint32_t net, uint32_t *slot,
                     struct kr_net_conn_info *out)
{
    struct kr_nt *nt = s->nts[net];
    for (; *slot < nt->nslots; (*slot)++) {
        struct kr_conn *c = nt->slots[*slot];
        if (c && !c->closing) {
            kr_net_conn_fill(c, kr_now_ms(), out);
            (*slot)++;
            return 1;
        }
    }
    return 0;
}

int kr_net_conn_find(struct kr_server *s, uint64_t id, struct kr_net_conn_info *out)
{
    if (KR_CONN_NET(id) >= s->nnet)
        return -ENOENT;
    struct kr_conn *c = kr_nt_conn(s->nts[KR_CONN_NET(id)], id);
    if (!c)
        return -ENOENT;
    kr_net_conn_fill(c, kr_now_ms(), out);
    return 0;
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

/* Send a control event to a shard in order with the thread's earlier ones (parked on the
 * net thread while the ring is full). */
static void kr_nt_send_ctl_event(struct kr_nt *nt, uint32_t shard, const struct kr_event *ev)
{
    if (nt->nctl == 0 && kr_router_send(nt->srv->router, nt->idx, shard, ev))
        return;
    if (nt->nctl == nt->ctl_cap) {
        nt->ctl_cap = nt->ctl_cap ? nt->ctl_cap * 2 : 64;
        nt->ctl = kr_xrealloc(nt->ctl, nt->ctl_cap * sizeof(*nt->ctl));
    }
    nt->ctl[nt->nctl].shard = shard;
    nt->ctl[nt->nctl].ev = *ev;
    nt->nctl++;
}

/* The queue of a client the drain reached is final: close it when it is empty. */
static void kr_conn_drain_check(struct kr_conn *c)
{
    if (c->closing || c->close_after_write || !kr_conn_queue_final_empty(c))
        return;
    if (c->poll_wait)
        kr_poll_finish(c); /* END, and the close (kr_conn_drain_replied) */
    c->close_after_write = true;
    kr_conn_pause(c);
    kr_conn_block(c); /* written and closed after this loop iteration */
}

static void kr_conn_drain_acked(struct kr_conn *c)
{
    if (c->drain != KR_DR_BARRIER || --c->drain_acks)
        return;
    c->drain = KR_DR_POLL;
    kr_conn_drain_check(c);
}

/* The drain reached the client. */
static void kr_conn_drain_reach(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    KR_DEBUG("client %s (id %llu): drain reached it (%u messages queued)", c->peer,
             (unsigned long long)c->id, c->q.count);
    if (!c->subscribed) {
        c->drain = KR_DR_POLL; /* nothing can arrive for it */
        kr_conn_drain_check(c);
        return;
    }
    uint32_t nshards = kr_router_nshards(nt->srv->router);
    c->drain = KR_DR_BARRIER;
    c->drain_acks = nshards;
    struct kr_event ev = {.type = KR_EV_DISCONNECT, .src = (uint16_t)nt->idx, .conn = c->id};
    for (uint32_t s = 0; s < nshards; s++)
        kr_nt_send_ctl_event(nt, s, &ev);
    for (uint32_t s = 0; s < nshards; s++) {
        struct kr_router_cmd *cmd = kr_router_cmd_new(0);
        cmd->pad = KR_DRAIN_PAD;
        struct kr_event b = {.type = KR_EV_UNSUBSCRIBE, .src = (uint16_t)nt->idx, .conn = c->id,
                             .ptr = cmd};
        kr_nt_send_ctl_event(nt, s, &b);
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
        bool holding = c->q.count || c->nstage || c->retro_active ||
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
                        c->peer, (unsigned long long)c->id, c->q.count,
                        c->drain == KR_DR_POLL ? "not polled" : "shards did not confirm",
                        (unsigned long long)suppressed);
            kr_conn_queue_clear(c);
            kr_out_str(c, "SERVER_ERROR shutting down\r\n");
        } else if (waited) {
            kr_out_str(c, "END\r\n"); /* its waiting poll */
        }
        c->close_after_write = true;
        kr_conn_pause(c);
        kr_conn_flush(c); /* closes now, or once the bytes in flight are written */
    }
    return told;
}

static void kr_nt_listener_closed_cb(uv_handle_t *h)
{
    struct kr_nt *nt = h->data;
    close(nt->listen_fd);
    nt->listen_fd = -1;
}

void kr_net_stop_listening(struct kr_server *s, uint32_t net)
{
    struct kr_nt *nt = s->nts[net];
    if (nt->listening) {
        nt->listening = false;
        uv_timer_stop(&nt->accept_pause);
        uv_close((uv_handle_t *)&nt->listener, kr_nt_listener_closed_cb);
    }
}

const struct kr_acl *kr_server_acl(const struct kr_server *s)
{
    return s->acl;
}

void kr_server_count_refused(struct kr_server *s)
{
    ck_pr_inc_64(&s->refused_elsewhere);
}

void kr_server_drain(struct kr_server *s)
{
    if (ck_pr_load_int(&s->draining))
        return;
    ck_pr_store_int(&s->draining, 1);
    kr_server_stop_listening(s);
}

int kr_server_draining(const struct kr_server *s)
{
    return ck_pr_load_int(&s->draining);
}
