/* Net module: the acceptor and the net threads that own every client connection.
 *
 * Each net thread runs its own libuv loop with its own SO_REUSEPORT listening socket on the
 * configured address (the kernel spreads new connections over them); `max_tcp_clients` is
 * enforced with one process-wide counter. A net thread owns every byte of its connections:
 * socket, parser state, the per-client delivery queue, limits and the idle timer. It talks
 * to the router shards only through the router's mailboxes. */
#ifndef KR_NET_H
#define KR_NET_H

#include "kr_counters.h"

#include <stddef.h>
#include <stdint.h>

#include "kr_cfg.h"

struct kr_server;

/* Bind the listening sockets and create the router and net threads (nothing runs yet).
 * `cfg` must outlive the server. Returns 0 or -errno with a message in err. Control thread. */
int kr_server_create(const struct kr_cfg *cfg, struct kr_server **out, char *err, size_t errlen);
/* Start shard and net threads; logs "listening on IP:PORT". Returns 0 or -errno.
 * Control thread. */
int kr_server_start(struct kr_server *s);
/* The bound TCP port (useful with tcp_server_port 0). Any thread. */
uint16_t kr_server_port(const struct kr_server *s);
/* The RESP-only listener's port (resp_port), 0 when it is off. Any thread. */
uint16_t kr_server_resp_port(const struct kr_server *s);
/* Close every connection, stop and join all threads. Control thread. */
void kr_server_stop(struct kr_server *s);
void kr_server_destroy(struct kr_server *s);

/* ---------------------------------------------------------------- operations
 * For the control thread and the admin socket. The settings marked live in kr_cfg are read
 * by the net threads from the live snapshot (kr_cfg_live), so they follow `config set`. */

struct kr_router;

/* Number of net threads; the router. Any thread. */
uint32_t kr_server_nnet(const struct kr_server *s);
struct kr_router *kr_server_router(struct kr_server *s);
/* Open client connections of net thread `net`, or of all (relaxed reads). Any thread. */
uint64_t kr_server_net_clients(const struct kr_server *s, uint32_t net);
uint64_t kr_server_clients(const struct kr_server *s);
/* How long a drained node keeps answering resumes of its tokens before it exits: the
 * configured drain_resume_window_ms in a cluster, 0 for a single node (nobody can ask it).
 * Any thread. */
uint64_t kr_server_resume_window_ms(const struct kr_server *s);
/* Seconds since kr_server_start. Any thread. */
uint64_t kr_server_uptime(const struct kr_server *s);
/* One net-thread counter (kr_counters.h) summed over the net threads (relaxed loads), and
 * the allocator's bytes allocated at the last kr_server_refresh_stats. Any thread. */
uint64_t kr_server_counter(const struct kr_server *s, enum kr_nt_counter k);
uint64_t kr_server_memory_allocated(const struct kr_server *s);

/* One figure of the server: a counter, a gauge, or a text (version, allocator). */
enum kr_figure_kind { KR_FIG_COUNTER, KR_FIG_GAUGE, KR_FIG_TEXT };
struct kr_figure {
    const char *name; /* memcached `stats` name, e.g. "curr_connections" */
    enum kr_figure_kind kind;
    const char *help; /* one line */
    uint64_t value;   /* counters and gauges */
    const char *text; /* KR_FIG_TEXT */
    uint32_t micro;   /* KR_FIG_COUNTER of seconds with a microsecond fraction (rusage) */
};
/* Every figure of the server, in the order of the `stats` output: process figures, the
 * net threads' counters summed (net/kr_counters.h), the router's, the memory figures.
 * Calls cb once per figure. Any thread registered with urcu-memb (it reads the live
 * configuration). */
typedef void (*kr_server_figure_cb)(void *arg, const struct kr_figure *f);
void kr_server_figures(struct kr_server *s, kr_server_figure_cb cb, void *arg);

/* The memcached-style `stats` lines ("STAT name value", without line ends), each passed to
 * emit: kr_server_figures in the memcached frontend's format. Any thread registered with
 * urcu-memb. */
typedef void (*kr_server_emit_cb)(void *arg, const char *line, size_t len);
void kr_server_stats(struct kr_server *s, kr_server_emit_cb emit, void *arg);

/* The cluster link's figures into *out: true when the node is in a cluster, false (and
 * *out zeroed) on a single node. Any thread. */
struct kr_cluster_stats;
bool kr_server_cluster(struct kr_server *s, struct kr_cluster_stats *out);

/* The process-wide accept mutex: held around every accept4() and every swap of a reserve
 * descriptor (close it, accept and refuse, open it again), so that a descriptor one thread
 * frees to refuse a connection is never taken by another thread's accept meanwhile. Any
 * thread that accepts connections (net threads, the control thread); s may be NULL (no
 * server yet: nothing to exclude). */
void kr_server_accept_lock(struct kr_server *s);
void kr_server_accept_unlock(struct kr_server *s);
/* Refresh the figures `stats` shows but does not compute per request: the allocator's
 * (jemalloc's statistics epoch, which takes every arena's lock), getrusage and the pid.
 * kr_server_start calls it once; then about once a second (KR_NET_STATS_REFRESH_MS) from
 * one thread that is not a net thread. Control thread. */
#define KR_NET_STATS_REFRESH_MS 1000
void kr_server_refresh_stats(struct kr_server *s);
/* Watch the shard threads (kr_router_watch: one pinned to a CPU that does not serve it is
 * moved off it). Every KR_NET_SHARD_WATCH_MS from one thread that is not a net thread or a
 * shard. Control thread. */
#define KR_NET_SHARD_WATCH_MS 50
void kr_server_watch_shards(struct kr_server *s);

/* What the admin socket shows of one client connection (a copy made by its net thread). */
struct kr_net_conn_info {
    uint64_t id;
    char peer[64];            /* ip:port */
    uint32_t queued_messages; /* waiting for `get messages` */
    uint64_t queued_bytes;    /* bytes they take in a reply */
    uint64_t age_ms;          /* since accepted */
    int64_t since_poll_ms;    /* since the last `get messages`, -1 = never polled */
    uint64_t idle_ms;         /* since the last complete request */
    uint64_t mem;             /* bytes of its own state and buffers (kr_conn_mem) */
};

/* Ask net thread `net` for up to `max` of its connections in slot order from *cursor on
 * (0 to start); *cursor is advanced. Returns how many were copied into out (0: no more),
 * -ETIMEDOUT (no answer within timeout_ms; <= 0 means 5 s), -ESHUTDOWN, -EINVAL (no such
 * net thread). Blocks: any thread except net threads, and not the control thread's loop. */
int kr_server_list_conns(struct kr_server *s, uint32_t net, uint32_t *cursor,
                         struct kr_net_conn_info *out, uint32_t max, int timeout_ms);
/* The connection with client id `id`: 0, -ENOENT (no such open connection), -ETIMEDOUT,
 * -ESHUTDOWN. Blocks like kr_server_list_conns. */
int kr_server_find_conn(struct kr_server *s, uint64_t id, struct kr_net_conn_info *out,
                        int timeout_ms);

/* Drain, step 1: from now on `version` answers "VERSION <v> draining" and no net thread
 * accepts new connections (their listening sockets are closed). Does not wait.
 * Control thread. */
void kr_server_drain(struct kr_server *s);
/* Whether kr_server_drain was called. Any thread. */
int kr_server_draining(const struct kr_server *s);
/* Whether every shard has routed everything the net threads handed it before
 * kr_server_drain (a barrier from each net thread to each shard, acknowledged): the drain
 * reaches clients only then, so that a publish already answered STORED is delivered to its
 * subscribers before their drain barrier completes. Any thread. */
int kr_server_drain_flushed(const struct kr_server *s);
/* Send that barrier (part of kr_server_drain): 0 or -ESHUTDOWN. Control thread. */
int kr_server_drain_flush(struct kr_server *s);
/* Drain, step 2: ask net thread `net` to close up to `n` more of its clients: each is
 * unsubscribed and closed once nothing is queued for it; one holding messages is closed
 * after the poll reply that empties its queue. Does not wait. Returns 0 or -ESHUTDOWN.
 * Control thread. */
int kr_server_close_clients(struct kr_server *s, uint32_t net, uint32_t n);
/* Drain, step 3 (its deadline): ask net thread `net` to close every client left, after
 * sending `SERVER_ERROR shutting down` to those still holding messages. Does not wait.
 * Returns 0 or -ESHUTDOWN. Control thread. */
int kr_server_drain_deadline(struct kr_server *s, uint32_t net);
/* Close every net thread's listening socket (part of kr_server_drain). Control thread. */
int kr_server_stop_listening(struct kr_server *s);

/* A recent fanout warning: kept (the newest KR_NET_WARNINGS of them) whenever the log line
 * "publish from ... fanned out to N clients" is due, under the same rate limit, so that the
 * monitoring listener can show them. */
#define KR_NET_WARNINGS 16
struct kr_net_warning {
    uint64_t time_ms;    /* Unix milliseconds */
    uint64_t publisher;  /* client id of the publisher */
    char peer[64];       /* its ip:port, "(disconnected)" when it left */
    uint32_t fanout;     /* clients the message reached */
    uint32_t ntopics;    /* topics it was published to */
    char topics[136];    /* the first (at most two) topics, space separated, cut to fit */
    uint64_t suppressed; /* similar warnings not logged before this one */
};
/* Copy up to `max` of the recent fanout warnings into out, newest first; returns how many.
 * Any thread. */
uint32_t kr_server_recent_warnings(struct kr_server *s, struct kr_net_warning *out,
                                   uint32_t max);

struct kr_acl;
/* The allow_from table parsed at create (kr_acl.h), for the other TCP listeners (the
 * health port). Valid until kr_server_destroy. Any thread. */
const struct kr_acl *kr_server_acl(const struct kr_server *s);
/* Count a connection another listener refused by allow_from in the `stats` figure
 * refused_connections. Any thread. */
void kr_server_count_refused(struct kr_server *s);

#endif
