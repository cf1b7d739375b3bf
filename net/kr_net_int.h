/* Internals of the net module shared by its files (kr_server.c, kr_loop.c, kr_accept.c,
 * kr_conn.c, kr_conn_api.c, kr_cmd.c, kr_drain.c, kr_memory.c, kr_stats.c, kr_net_admin.c):
 * the requests other threads make to net threads, the net threads' shared types
 * and the functions the files share. Not part of the module's public interface (that is
 * kr_net.h). */
#ifndef KR_NET_INT_H
#define KR_NET_INT_H

#include <ck_pr.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <urcu/list.h>
#include <uv.h>

#include "kr_net.h"

#include "kr_acl.h"
#include "kr_cluster.h"
#include "kr_counters.h"
#include "kr_deliver.h"
#include "kr_frontend.h"
#include "kr_log.h"
#include "kr_proto.h"
#include "kr_queue.h"
#include "kr_router.h"

/* ------------------------------------------------ kr_net_admin.c: the request queues */

struct kr_net_reqq;

/* One kr_reqq (queue/kr_queue.h) for each of the `nnet` net threads of `s`; a submit wakes
 * the net thread with kr_net_wake. Aborts on out of memory. Control thread. */
struct kr_net_reqq *kr_net_reqq_create(struct kr_server *s, uint32_t nnet);
/* Free the queues (after kr_net_reqq_shutdown, or when the server's creation failed).
 * Control thread. */
void kr_net_reqq_destroy(struct kr_net_reqq *q);
/* Serve the requests queued for net thread `net` (kr_reqq_serve: one relaxed load when
 * there are none). Net thread `net`, from its wake-up callback. */
void kr_net_reqq_serve(struct kr_server *s, uint32_t net);
/* Refuse new requests and answer the queued ones with -ESHUTDOWN (kr_reqq_shutdown on
 * every net thread's queue). Control thread, after the net threads stopped. */
void kr_net_reqq_shutdown(struct kr_server *s);

/* ------------------------------------------------ kr_server.c, kr_drain.c, kr_accept.c:
 * what the requests run */

/* The server's request queues (kr_net_admin.c). Any thread. */
struct kr_net_reqq *kr_net_server_reqq(struct kr_server *s);
/* Wake net thread `net` (uv_async_send). Any thread. */
void kr_net_wake(struct kr_server *s, uint32_t net);
/* The next open connection of net thread `net` in slot order from *slot on: fills *out,
 * sets *slot past it and returns 1; 0 when there is none. Net thread `net`. */
int kr_net_conn_next(struct kr_server *s, uint32_t net, uint32_t *slot,
                     struct kr_net_conn_info *out);
/* The open connection `id`: 0, or -ENOENT. Net thread KR_CONN_NET(id). */
int kr_net_conn_find(struct kr_server *s, uint64_t id, struct kr_net_conn_info *out);
/* The drain reaches up to `n` more clients of net thread `net`: each is unsubscribed
 * everywhere, then closed once nothing is queued for it (a client holding messages after
 * the poll reply that empties its queue). Returns how many were reached. Net thread `net`. */
uint32_t kr_net_close_some(struct kr_server *s, uint32_t net, uint32_t n);
/* The drain's deadline: every client of net thread `net` is closed after its pending
 * replies; one still holding messages (or whose shards did not confirm the unsubscribe) is
 * sent `SERVER_ERROR shutting down` first. Returns how many were told. Net thread `net`. */
uint32_t kr_net_drain_deadline(struct kr_server *s, uint32_t net);
/* The drain's first barrier: an empty unsubscribe to every shard, behind everything this
 * net thread handed it before; each acknowledgement counts down s->drain_flush_left. Net
 * thread `net`. */
void kr_net_drain_flush(struct kr_server *s, uint32_t net);
/* Close net thread `net`'s listening socket (no new connections). Net thread `net`. */
void kr_net_stop_listening(struct kr_server *s, uint32_t net);

/* ------------------------------------------------ the net threads' shared types
 * Every net/ file that runs on a net thread sees these: the connection, the net thread and
 * the server. Only the owning net thread touches a connection or its net thread's fields,
 * except the counters in `st` (relaxed atomic stores, read by any thread). */

#define KR_READ_BUF (64 * 1024)
#define KR_EVENTS_PER_POLL 512 /* client socket events taken per kr_nt_clients_cb */
#define KR_READS_PER_WAKE 8 /* reads of one connection per readiness while the buffer fills */
#define KR_TAKE_BUDGET 16384     /* events taken from the shards per wake-up before yielding */
#define KR_DRAIN_PAD UINT32_MAX   /* kr_router_cmd.pad of a drain barrier (not a request number) */
#define KR_DEST_LINK UINT32_MAX   /* kr_conn_send's destination: the cluster link, not a shard */
#define KR_DRAIN_FLUSH_PAD (UINT32_MAX - 1) /* ... of the drain's first barrier (kr_net_drain_flush) */
#define KR_TURN_REQUESTS 128      /* requests one connection runs per turn before others */
#define KR_TURN_OUT_BYTES (64 * 1024) /* reply bytes one connection produces per turn */
#define KR_WARN_BURST 10          /* warnings of one kind per interval */
#define KR_WARN_INTERVAL_MS 10000
#define KR_SWEEP_MS 100           /* the sweep timer's period */
#define KR_SWEEP_TICKS 10         /* the sweep visits every connection once per this many ticks */
#define KR_SWEEP_MIN 64           /* ... and at least this many slots per tick */
#define KR_TRIM_IDLE_MS 1000      /* a connection without requests this long is trimmed */
#define KR_ACCEPT_BATCH 64        /* connections accepted per listener wake-up */
#define KR_ACCEPT_PAUSE_MS 100    /* accepting pauses this long when descriptors run out */

struct kr_server;
struct kr_nt;
struct kr_mem_cand;

/* A request whose reply waits on the router: subscribe-like requests wait for every shard's
 * acknowledgement, a publish whose events did not all fit in the rings waits until they
 * are sent. Replies go out in request order. */
struct kr_reply_wait {
    uint32_t acks_left;
    bool noreply;
    bool retro;     /* a retroactive subscribe: answers STORED or NOT_FOUND */
    bool sent_gate; /* a publish with parked events */
    bool count;     /* a publish that answers its receivers (KR_EV_PUBLISHED sums them) */
    uint64_t link_need; /* cluster_publish_ack flushed: answered once this many of the
                           connection's forwarded entries are in the NATS server's hands */
    uint64_t receivers;
    char *bytes;    /* the reply the frontend formatted when the request ran (owned), or NULL */
    size_t len;
};

#define KR_MAX_PIPELINED 1024 /* replies a client may have waiting on the router */
#define KR_OUT_MAX_REFS 256   /* shared payloads one connection's output references at most
                                 (then they are copied): one writev stays under IOV_MAX */

/* A shared message payload the output references instead of copying (kr_out_ref): sent
 * after the first `at` bytes of `out` that precede it, holding a message reference. */
struct kr_out_ref {
    size_t at;
    const char *p;
    uint32_t len;
    struct kr_msg *m;
};

/* A peer's address, compact: an idle connection is small (kr_conn_peer formats it). */
struct kr_peer_addr {
    uint16_t port;
    uint8_t family; /* AF_INET, AF_INET6 or 0 (unknown) */
    uint8_t addr[16];
};

/* Any thread. */
void kr_peer_addr_set(struct kr_peer_addr *p, const struct sockaddr_storage *ss);
/* "ip:port" (or "?:0" when unknown). Any thread. */
void kr_peer_addr_name(const struct kr_peer_addr *p, char *out, size_t outlen);

/* Laid out by size (eight-byte fields, then four, two and one) so that it has no holes:
 * an idle connection is this struct, its subscriptions and little else. */
/* What few connections use, kept out of struct kr_conn (whose size decides the memory of
 * every idle client): allocated by the first use (kr_conn_rare), freed with the
 * connection. */
struct kr_conn_rare {
    /* retroactive subscriptions: set by `register`, used by the next subscribe (0 = none) */
    uint64_t horizon_us;
    /* cluster_publish_ack flushed: entries sent to the link, and those it confirmed */
    uint64_t link_sent, link_acked;
    /* continuity: the last exact position token given (NULL until one was) */
    char *last_token;
    uint16_t last_token_len;
    uint16_t drain_acks; /* the drain: shard acknowledgements the barrier still waits for */
};

struct kr_conn {
    /* What a delivery reads and writes first, together (the first cache lines up to the
     * delivery state's head), so that a fanout to many connections touches few lines of
     * each. The socket has no libuv handle: it is in its net thread's epoll set (nt->epfd),
     * and the thread reads and writes it itself (kr_nt_clients_cb, kr_conn_io). */
    struct kr_nt *nt;
    uint64_t id;
    const struct kr_frontend *fe; /* the connection's protocol */
    void *fe_state;               /* the frontend's per-connection state (NULL: none yet) */
    /* output (kr_conn_trim frees the buffers while the connection is quiet) */
    char *out;
    size_t out_len;
    size_t out_cap;
    struct kr_out_ref *refs; /* shared payloads interleaved with `out`, in order */
    uint32_t nrefs;
    uint32_t refs_cap;
    size_t refs_bytes; /* their payload bytes (unsent, besides out_len) */
    size_t wbuf_len;   /* bytes of the write in flight (wbuf) not written yet */
    const char *deferred_err;  /* error reply held until earlier replies are out */
    /* state */
    bool closing;
    bool reading;
    bool writing;
    bool close_after_write;
    bool blocked;    /* on the net thread's blocked list */
    bool subscribed; /* ever sent a subscription: shards must be told on close */
    bool turn_over;  /* stopped parsing to let others run; see kr_conn_parse */
    bool on_turns;   /* on the net thread's turn list */
    uint8_t poll_wait;   /* KR_PW_NONE, or the list it is on: KR_PW_HELD, KR_PW_READY */
    uint8_t drain;       /* KR_DR_NONE, KR_DR_BARRIER, KR_DR_POLL (see kr_net_close_some) */
    bool fe_chosen;      /* the protocol was decided (first request, or listener) */
    bool resuming;       /* holds one of its net thread's resume slots (kr_cmd_resume) */
    bool resume_waiting; /* on its net thread's list of resumes waiting for a slot */
    uint8_t watching;    /* the readiness the epoll set has for it now (EPOLLIN, EPOLLOUT) */
    int fd;              /* the socket (closed by kr_conn_close) */
    uint32_t slot;
    /* a `get messages` that found nothing and waits for a message or poll_wait_ms, or an
     * answer due after this loop iteration */
    uint64_t poll_since_ms; /* loop time the wait began */
    struct cds_list_head pw_node; /* on nt->held or nt->ready */
    /* deliveries (kr_deliver.h): queue, incomplete entries, retro staging, overflow */
    struct kr_dlv dlv;
    /* The rest is read per request, not per delivery. */
    char *wbuf; /* buffer owned by the write that waits for the socket */
    size_t wbuf_off; /* its bytes written so far */
    size_t out_acct; /* unsent bytes counted in the thread's output_bytes */
    /* input not parsed yet (NULL while everything arrived was consumed) */
    char *in;
    size_t in_len;
    size_t in_cap;
    size_t need; /* bytes the next request needs, when known */
    /* requests waiting on the router: events for the shards (or KR_DEST_LINK) in one
     * order, parked while a ring is full (kr_conn_send; nt->conn_sink) */
    struct kr_outbox ob;
    struct kr_reply_wait *rq; /* ring of replies waiting on the router */
    uint32_t rq_head;
    uint32_t rq_count;
    uint32_t rq_cap;
    uint32_t rq_base;          /* request number of the ring's head */
    struct kr_conn_rare *rare; /* NULL until the connection needs it (kr_conn_rare) */
    uint64_t created_ms;
    uint64_t last_active_ms;  /* last complete request (what the idle timeout counts) */
    uint64_t partial_since_ms; /* arrival of the incomplete request's first bytes (0 = none) */
    uint64_t last_poll_ms;
    /* on the net thread's blocked list; once closed, on its list of connections to free */
    struct kr_conn *blocked_next;
    struct kr_peer_addr peer; /* formatted on demand: kr_conn_peer */
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


/* The settings that may change while the server runs (admin `config set`) that the net
 * threads read, declared once: X(type, name, cfg_field) is a field of struct kr_net_live
 * and the member of struct kr_cfg it is copied from (kr_net_live, which checks the types
 * agree). A new live setting the net threads read is one line here, beside its
 * KR_CFG_LIVE entry in the option table (kr_cfg.c) and its member of struct kr_cfg. */
#define KR_NET_LIVE(X)                                                    \
    X(uint64_t, max_queued_messages, max_queued_messages)                 \
    X(uint64_t, max_queued_bytes, max_queued_bytes)                       \
    X(uint64_t, client_idle_timeout_ms, client_idle_timeout_ms)           \
    X(uint64_t, request_timeout_ms, request_timeout_ms)                   \
    X(uint64_t, poll_wait_ms, poll_wait_ms)                               \
    X(uint64_t, max_poll_reply_bytes, max_poll_reply_bytes)               \
    X(uint64_t, max_memory, max_memory)                                   \
    X(uint32_t, max_tcp_clients, max_tcp_clients)                         \
    X(uint32_t, tcp_keepalive_s, tcp_keepalive_s)                         \
    X(uint32_t, fanout_warn, router_min_fanout_to_warn)                   \
    X(uint32_t, topics_warn, router_min_publish_to_topics_to_warn)

/* The net thread's copy of them, read from the RCU-published configuration snapshot. */
struct kr_net_live {
#define KR_NET_LIVE_FIELD(type, name, cfg_field) type name;
    KR_NET_LIVE(KR_NET_LIVE_FIELD)
#undef KR_NET_LIVE_FIELD
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
    int epfd;                  /* the clients' sockets (epoll; data.u64: the connection's id) */
    uv_poll_t clients;         /* readiness of epfd: some client's socket is ready */
    struct kr_conn *closed;    /* closed connections, freed before the next poll (kr_nt_free_closed) */
    uv_poll_t resp_listener;   /* readiness of resp_listen_fd (resp_port; unused when off) */
    int resp_listen_fd;        /* the RESP-only listening socket, or -1 (resp_port 0) */
    bool resp_listening;       /* resp_listener is open */
    uv_timer_t sweep;
    uint32_t sweep_cursor;     /* the slot the next sweep tick starts at */
    uv_check_t check;
    uv_prepare_t prepare; /* times each loop iteration (kr_nt_prepare_cb) */
    int tid;              /* the thread's kernel id (its /proc/self/task entry), 0 until it runs */
    uint64_t it_last_ns, it_idle_ns; /* the previous iteration's end and the loop's idle time */
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
    /* towards the shards, through kr_nt_send_to: the connections' events (each
     * connection's outbox; parks counted in ring_full_waits) and the thread's own control
     * events (disconnects, drain barriers: kr_nt_ctl_push), each in one order */
    struct kr_outbox_sink conn_sink;
    struct kr_outbox_sink ctl_sink;
    struct kr_outbox ctl;
    /* scratch for building messages */
    const char **topics;
    uint32_t *topic_lens;
    uint64_t *topic_hashes; /* kr_topic_hash of each */
    uint32_t topics_cap;
    /* scratch for a frontend's topic list (kr_cmd_args) */
    const char **args;
    uint32_t *arg_lens;
    uint32_t args_cap;
    /* scratch of the rule book (kr_cmd.c): shard channels' routed names, and the table that
     * drops repeated topics of a large entry */
    char *ns_buf;
    uint32_t ns_buf_cap;
    const char **ns_names;
    uint32_t ns_names_cap;
    uint32_t *ns_lens;
    uint32_t ns_lens_cap;
    uint32_t *dedup;
    uint32_t dedup_cap;
    struct kr_log_ratelimit rl_errors;
    struct kr_log_ratelimit rl_accept;
    struct kr_log_ratelimit rl_refused;
    struct kr_log_ratelimit rl_overflow;
    struct kr_log_ratelimit rl_fanout;
    struct kr_log_ratelimit rl_topics;
    struct kr_log_ratelimit rl_memory;
    struct kr_log_ratelimit rl_drain;
    /* delivery assembly's context (kr_deliver.h); its mem_grown / mem_step are max_memory's
     * growth counter (kr_nt_memory_check) */
    struct kr_dlv_ctx dlv;
    /* max_memory (kr_nt_memory_check) */
    uint64_t mem_largest; /* largest client here at the last check; read by other threads */
    struct kr_mem_cand *mem_cand;
    uint32_t mem_cand_cap;
    struct kr_log_ratelimit rl_timeouts;
    struct kr_nt_stats st;
    /* per router shard, the highest sequence whose deliveries to this thread were all
     * taken (KR_EV_FRONTIER, and the parts of what arrived): a position's upper bound */
    uint64_t *seen;
    /* resumes in progress on this thread, and the connections whose resume waits for one
     * to finish (ids, oldest first): resume_max_active is shared by the net threads */
    uint32_t resumes_active;
    uint64_t *resume_wait;
    uint32_t resume_wait_head, resume_wait_n, resume_wait_cap;
    char readbuf[KR_READ_BUF];
};

struct kr_server {
    const struct kr_cfg *cfg;
    struct kr_router *router;
    struct kr_cluster *cluster; /* NULL on a single node */
    struct kr_nt **nts;
    uint32_t nnet;
    uint16_t port;
    uint16_t resp_port; /* the RESP-only listener's port (0: off) */
    uint32_t nconns; /* process-wide, for max_tcp_clients */
    struct kr_acl *acl;       /* allow_from, parsed at create */
    pthread_mutex_t accept_mu; /* net threads' accept4() and reserve swaps: no other net thread
                                  takes the descriptor a reserve frees */
    uint64_t refused_elsewhere; /* refusals by other listeners (the health port) */
    struct kr_proto_limits lim;
    time_t started;
    struct kr_net_reqq *reqq; /* requests from other threads (kr_net_admin.c) */
    int draining;             /* kr_server_drain was called */
    int drain_flush_left;     /* shard acknowledgements kr_net_drain_flush still waits for */
    /* process figures for `stats`, stored by kr_server_refresh_stats (about once a second,
     * off the net threads) so that a stats request only loads them */
    int pid;
    uint64_t ru_utime_us;
    uint64_t ru_stime_us;
    uint64_t mem[4]; /* jemalloc stats.allocated, active, resident, mapped (kr_je_stats) */
    /* per kind of thread (0: net threads, 1: shards), summed: nanoseconds on a CPU and
     * nanoseconds ready to run but waiting for one (/proc/self/task/<tid>/schedstat) */
    uint64_t sched_run_ns[2], sched_wait_ns[2];
    uint64_t steal_ms; /* the machine's CPUs' steal time (/proc/stat), all CPUs */
    uint64_t stats_refreshes;
    /* recent fanout warnings (kr_loop.c), a ring under warn_mu: only warned messages */
    pthread_mutex_t warn_mu;
    struct kr_net_warning warnings[KR_NET_WARNINGS];
    uint64_t nwarnings; /* ever recorded; the newest is at (nwarnings - 1) % KR_NET_WARNINGS */
    uint64_t node_id;   /* this start of the node, named by its position tokens */
    bool publish_flushed; /* cluster_publish_ack flushed */
};

#define KR_ST_INC(nt, field, n) ck_pr_store_64(&(nt)->st.field, (nt)->st.field + (n))
#define KR_ST_DEC(nt, field, n) ck_pr_store_64(&(nt)->st.field, (nt)->st.field - (n))

/* ------------------------------------------------ functions shared between the files */

/* ---- kr_conn.c: output, replies, waits, the connection's life */
/* Room for n more reply bytes in c's output buffer. Net thread. */
void kr_out_reserve(struct kr_conn *c, size_t n);
/* Append n bytes (copied) to c's output. Net thread. */
void kr_out_add(struct kr_conn *c, const void *p, size_t n);
/* Append a NUL-terminated string (copied) to c's output. Net thread. */
void kr_out_str(struct kr_conn *c, const char *s);
/* Append n bytes of message m's payload p by reference (one message reference held until
 * the bytes are written: a writev sends them from the shared buffer); copied instead once
 * KR_OUT_MAX_REFS are pending. Net thread. */
void kr_out_ref(struct kr_conn *c, const char *p, uint32_t n, struct kr_msg *m);
/* Reply bytes of c not yet written to its socket. Net thread. */
size_t kr_conn_out_pending(const struct kr_conn *c);
/* Drop the output's message references. Net thread. */
void kr_out_refs_release(struct kr_conn *c);
/* Bring the net thread's output_bytes figure (part of max_memory's count) up to date with
 * the connection's unsent bytes: what is buffered plus the write that waits. Net thread. */
void kr_conn_out_account(struct kr_conn *c);
/* n bytes arrived on the connection (in the net thread's read buffer): parse and run what
 * is complete, keep the rest. Net thread. */
void kr_conn_got(struct kr_conn *c, const char *buf, size_t n);
/* Start writing c's pending output. Net thread. */
void kr_conn_flush(struct kr_conn *c);
/* Reply with an error line, count and log it, and close once the reply is out. Net thread. */
void kr_conn_fail(struct kr_conn *c, const char *reply);
/* The frontend's last words for `kind` (queue overflow, the drain's deadline), then the
 * close: after the replies that wait on the router, if any. Net thread. */
void kr_conn_error(struct kr_conn *c, enum kr_error_kind kind);
/* Hold c's empty poll until a message arrives or wait_ms passed (0: answered after this
 * loop iteration). Net thread. */
void kr_poll_hold(struct kr_conn *c, uint64_t wait_ms);
/* The waiting reply of request number `reqno`, or NULL. Net thread. */
struct kr_reply_wait *kr_rq_at(struct kr_conn *c, uint32_t reqno);
/* Queue a reply that waits (the ring takes over w->bytes); returns its request number.
 * Net thread. */
uint32_t kr_rq_push(struct kr_conn *c, const struct kr_reply_wait *w);
/* Send every waiting reply at the head that is ready, then a held error. Net thread. */
void kr_rq_emit(struct kr_conn *c);
/* Net thread nt's open connection `id`, or NULL. Net thread nt (or the control thread once
 * it stopped). */
struct kr_conn *kr_nt_conn(struct kr_nt *nt, uint64_t id);
/* Put c on the list of clients looked at again after this loop iteration. Net thread. */
void kr_conn_block(struct kr_conn *c);
/* The list of waiting polls: append c, unlink c, the oldest (or NULL). Net thread. */
void kr_pw_push(struct kr_pw_list *l, struct kr_conn *c);
void kr_pw_unlink(struct kr_pw_list *l, struct kr_conn *c);
struct kr_conn *kr_pw_first(struct kr_pw_list *l);
/* Take c off whichever poll wait list it is on, without answering. Net thread. */
void kr_poll_unwait(struct kr_conn *c);
/* Something arrived for c's held poll: answer it after this loop iteration. Net thread. */
void kr_poll_wake(struct kr_conn *c);
/* Answer c now (kr_frontend.answer, after taking it off the wait lists): its queue's
 * overflow error instead, or nothing once its last words were said. Net thread. */
void kr_conn_answer(struct kr_conn *c);
/* uv_close callback of a connection's handle: frees the connection. Net thread (or the
 * control thread running the stopped net thread's loop). */
/* The connection's rarely used state, allocated on the first call. Net thread. */
struct kr_conn_rare *kr_conn_rare(struct kr_conn *c);
/* Publishes of the connection the link confirmed, and those it was handed
 * (cluster_publish_ack flushed; 0 and 0 until the first). Net thread. */
uint64_t kr_conn_link_acked(const struct kr_conn *c);
uint64_t kr_conn_link_sent(const struct kr_conn *c);
/* Some client sockets of the thread are ready: handle a batch of their events. Net thread. */
void kr_nt_clients_cb(uv_poll_t *h, int status, int events);
/* Free the connections closed since the last call (none is referred to by then: a closed
 * connection left every list and its slot; its memory outlives the callbacks that were
 * running when it closed). Net thread, or the thread that stops it. */
void kr_nt_free_closed(struct kr_nt *nt);
/* The net thread's outboxes: set up once the router exists (control thread, before the
 * net thread runs); freed after it stopped (control thread; a drain barrier never sent is
 * freed). */
void kr_nt_outbox_init(struct kr_nt *nt);
void kr_nt_outbox_destroy(struct kr_nt *nt);
/* A control event to shard `shard`, in order with the thread's earlier ones (parked while
 * the ring is full). Net thread. */
void kr_nt_ctl_push(struct kr_nt *nt, uint32_t shard, const struct kr_event *ev);
/* Send the parked control events in order; true when none is left. Net thread. */
bool kr_nt_ctl_unpark(struct kr_nt *nt);
/* Close c: its queue and parked events released, unsubscribed everywhere when it
 * subscribed. Net thread (or the control thread once the net thread stopped). */
void kr_conn_close(struct kr_conn *c);
/* Stop / restart reading c's socket (backpressure, waits). Net thread. */
void kr_conn_pause(struct kr_conn *c);
void kr_conn_resume(struct kr_conn *c);
/* Send ev to shard `shard` (or KR_DEST_LINK) now when nothing of c is parked ahead of it and
 * the ring has room, else park it (counted in ring_full_waits). Net thread. */
void kr_conn_send(struct kr_conn *c, uint32_t shard, const struct kr_event *ev);
/* Events of c still parked in its outbox (waiting for ring space). Net thread. */
uint32_t kr_conn_nparked(const struct kr_conn *c);
/* May c's next request be parsed now? Net thread. */
bool kr_conn_can_parse(struct kr_conn *c);
/* Work through c's stashed input; after reads and whenever a wait ends. Net thread. */
void kr_conn_process(struct kr_conn *c);
/* ---- kr_cmd.c: the rule book's internals (its operations are in kr_frontend.h) */
/* c's resume finished (or c closes with one in progress): its slot goes to the oldest
 * waiting resume, whose connection is processed again. Net thread. */
void kr_cmd_resume_done(struct kr_conn *c);
/* ---- kr_conn.c: the connection side of delivery assembly (kr_deliver.h) */
/* Set up the net thread's delivery context (limits from nt->live). Control thread, before
 * the net thread runs. */
void kr_nt_dlv_init(struct kr_nt *nt);
/* Release everything queued for c. Net thread. */
void kr_conn_queue_clear(struct kr_conn *c);
/* Entries of c's queue a poll may deliver now (their reply bytes in *bytes). Net thread. */
uint32_t kr_conn_ready_entries(struct kr_conn *c, uint64_t *bytes);
/* Is c's queue empty with nothing more to come? Net thread. */
bool kr_conn_queue_final_empty(const struct kr_conn *c);
/* Discard c's queue for an overflow (the client is told). Net thread. */
void kr_conn_overflow(struct kr_conn *c);
/* Release the buffers a quiet connection does not need (output, write request, reply
 * ring, the frontend's scratch): the next request makes them again. Net thread. */
void kr_conn_trim(struct kr_conn *c);
/* ---- kr_loop.c */
/* Copy the live settings (KR_NET_LIVE) from the current snapshot, or the start
 * configuration when none was published. Any thread registered with urcu-memb. */
void kr_net_live(const struct kr_server *s, struct kr_net_live *out);
/* Refresh nt->live when a new snapshot was published (one relaxed load otherwise). Net
 * thread. */
void kr_nt_refresh_live(struct kr_nt *nt);
/* Take what the shards sent, up to KR_TAKE_BUDGET events. Net thread. */
void kr_nt_take_events(struct kr_nt *nt);
/* The net thread's libuv callbacks: wake-up, poll timer, turn, check, sweep. Net thread. */
void kr_nt_wake_cb(uv_async_t *a);
void kr_nt_poll_timer_cb(uv_timer_t *t);
void kr_nt_turn_cb(uv_idle_t *h);
void kr_nt_check_cb(uv_check_t *h);
void kr_nt_prepare_cb(uv_prepare_t *h);
void kr_nt_sweep_cb(uv_timer_t *t);
/* The net thread's body (uv_thread_create's entry; arg is its struct kr_nt). */
void kr_nt_main(void *arg);
/* uv_walk callback closing every handle of a loop. Control thread, after the net thread
 * stopped. */
void kr_nt_close_walk(uv_handle_t *h, void *arg);
/* ---- kr_memory.c */
/* Bytes max_memory counts now (relaxed loads; the history part in *history). Any thread. */
uint64_t kr_server_memory_used(struct kr_server *s, uint64_t *history);
/* When memory_used is over max_memory, overflow this thread's largest clients until its
 * share of the excess is freed (kr_memory.c). Net thread. */
void kr_nt_memory_check(struct kr_nt *nt);
/* ---- kr_accept.c */
/* Open the spare descriptor (/dev/null) kept for refusing clients when descriptors run
 * out. Control thread before the net thread runs, then the net thread under accept_mu. */
void kr_nt_reserve_open(struct kr_nt *nt);
/* The listener is readable: accept up to KR_ACCEPT_BATCH connections. Net thread. */
void kr_nt_accept_cb(uv_poll_t *h, int status, int events);
/* Open one SO_REUSEPORT listening socket on `port` (*bound: the port it got); 0 or
 * -errno with a message. Control thread. */
int kr_listen_socket(const struct kr_cfg *cfg, uint16_t port, uint16_t *bound, char *err,
                     size_t errlen);
/* ---- kr_drain.c */
/* A poll of a client the drain reached was answered: the reply that empties its final
 * queue is its last one. Net thread. */
void kr_conn_drain_replied(struct kr_conn *c);
/* One shard acknowledged the drain barrier of c; after the last, c's final polls. Net
 * thread. */
void kr_conn_drain_acked(struct kr_conn *c);

#endif
