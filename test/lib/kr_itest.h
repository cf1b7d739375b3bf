/* Helpers for integration tests: start the real server binary on an ephemeral loopback
 * port, speak raw bytes to it. Every wait is bounded. */
#ifndef KR_ITEST_H
#define KR_ITEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct kr_it_server {
    pid_t pid;
    uint16_t port;
    char log_path[128];
    char admin_path[160]; /* the server's admin socket: <log_path>.sock */
};

/* Start `kraken run` with `--tcp_server_port 0`, a temporary log file, an admin socket
 * next to it, `--drain_timeout_ms 3000`, and the given extra arguments (NULL-terminated;
 * they may override those). Asserts on failure. */
void kr_it_start(struct kr_it_server *s, const char *const *extra);
/* kr_it_start with the server's open-file limit (soft and hard) set to `nofile`. */
void kr_it_start_nofile(struct kr_it_server *s, const char *const *extra, unsigned nofile);
/* SIGTERM, wait (bounded), assert a clean exit 0, remove the log; s->pid becomes 0. */
void kr_it_stop(struct kr_it_server *s);

/* The server fixture of a suite (or a test): one server per test process, kr_it_srv.
 * KR_IT_FIXTURE(name, options...) defines a Criterion `.init` function `name` that starts
 * kr_it_srv with the options (kr_it_start: ephemeral loopback port, ...); kr_it_fixture_stop
 * is the matching `.fini`: it stops the server by its PID and asserts its exit status 0
 * (kr_it_stop), and does nothing when the test already stopped it. For example:
 *     KR_IT_FIXTURE(start_two_shards, "--num_router_shards", "2");
 *     TestSuite(suite, .init = start_two_shards, .fini = kr_it_fixture_stop);
 *     Test(suite, x) { int fd = kr_it_connect(kr_it_srv.port); ... }
 * With no options: KR_IT_FIXTURE(start_default). The test's own thread calls these. */
extern struct kr_it_server kr_it_srv;
void kr_it_fixture_start(const char *const *extra);
void kr_it_fixture_stop(void);
#define KR_IT_FIXTURE(name, ...)                                                              \
    static void name(void)                                                                    \
    {                                                                                         \
        kr_it_fixture_start((const char *const[]){__VA_ARGS__ __VA_OPT__(, ) NULL});          \
    }

/* Waiting for a figure. A test that must see the server reach a state waits for the figure
 * that says so (a `stats` counter, an admin figure, a metric, a process's RSS), with a
 * bounded number of reads (KR_IT_WAIT_TRIES, KR_IT_WAIT_MS apart): no wall-clock limit is
 * asserted, and a figure that never gets there fails the test saying which figure, what
 * was wanted and what was last seen, at the caller's file and line. For the test's own
 * thread (a reader may be called from it only). */
#define KR_IT_WAIT_TRIES 3000
#define KR_IT_WAIT_MS 10
enum kr_it_cmp { KR_IT_EQ, KR_IT_GE, KR_IT_LE };
/* Read one figure: `arg` and `name` as the waiter was given them. */
typedef long long kr_it_figure_fn(const void *arg, const char *name);
/* Wait until read(arg, name) compares with `want` as `cmp` says; returns the last value
 * read (which then satisfies it). Fails the test otherwise. */
#define kr_it_wait_figure(read, arg, name, cmp, want)                                          \
    kr_it_wait_figure_at(__FILE__, __LINE__, (read), (arg), (name), (cmp), (want))
long long kr_it_wait_figure_at(const char *file, int line, kr_it_figure_fn *read,
                               const void *arg, const char *name, enum kr_it_cmp cmp,
                               long long want);
/* The same for `STAT <name>` of a `stats` on a new client connection to 127.0.0.1:port. */
#define kr_it_wait_stat(port, name, cmp, want)                                                 \
    ((unsigned long long)kr_it_wait_figure(kr_it_stat_figure, &(uint16_t){(port)}, (name),     \
                                           (cmp), (long long)(want)))
/* The same for `STAT <name>` of the server's admin socket (kr_it_admin_stat). */
#define kr_it_wait_admin_stat(s, name, cmp, want)                                              \
    ((unsigned long long)kr_it_wait_figure(kr_it_admin_stat_figure, (s), (name), (cmp),        \
                                           (long long)(want)))
/* The readers of those two: arg is a uint16_t port, a struct kr_it_server. */
long long kr_it_stat_figure(const void *port, const char *name);
long long kr_it_admin_stat_figure(const void *server, const char *name);
/* Wait (bounded) until the server exits by itself; 1 when it exited with status 0. It is
 * left unreaped (kr_it_stop's SIGTERM then finds a zombie and reaps it). */
int kr_it_exited_0(const struct kr_it_server *s);
/* Does the server log contain `needle`? */
int kr_it_log_contains(const struct kr_it_server *s, const char *needle);
/* Wait (bounded) until the log contains `needle`; returns 1 if it did. */
int kr_it_wait_log(const struct kr_it_server *s, const char *needle);

/* Connect to 127.0.0.1:port (asserts). Reads time out after a few seconds. */
int kr_it_connect(uint16_t port);
void kr_it_send(int fd, const void *buf, size_t len);
void kr_it_sends(int fd, const char *s);
/* Read until the received bytes end with `suffix` (or timeout/EOF). Returns bytes read
 * into buf (NUL-terminated, cap includes the NUL). */
size_t kr_it_read_until(int fd, char *buf, size_t cap, const char *suffix);
/* Read exactly strlen(expect) bytes and assert they equal `expect`. */
void kr_it_expect(int fd, const char *expect);
/* Assert the peer closes the connection (EOF) within the timeout, with no further bytes. */
void kr_it_expect_closed(int fd);
/* Send `get messages` and read one whole reply into buf; returns its length. */
size_t kr_it_get(int fd, char *buf, size_t cap);
/* Poll with `get messages` (bounded) until the concatenated entries hold `want` entries
 * (counting "MESSAGE " headers); the entries are appended to out. Returns entries seen. */
size_t kr_it_collect(int fd, size_t want, char *out, size_t cap, size_t *outlen);
/* The value of `STAT <name>` in a `stats` reply read on fd (asserts the line is there). */
unsigned long long kr_it_stat_fd(int fd, const char *name);
/* The same on a new connection to 127.0.0.1:port, closed after. */
unsigned long long kr_it_stat(uint16_t port, const char *name);
/* Send one RESP request (an array of bulk strings) made of the NULL-terminated arguments. */
void kr_it_resp_cmd(int fd, const char *a0, ...);
/* Subscribe and wait for STORED. */
void kr_it_subscribe(int fd, const char *topics);
/* Publish one entry and wait for STORED. */
void kr_it_publish(int fd, const char *topics, const char *payload, size_t plen);
/* Positions (memcached protocol). The token of a reply that ends with `VALUE position 0
 * <k>\r\n<token>\r\nEND\r\n` (asserts the shape). */
void kr_it_token_of(const char *reply, char *tok, size_t cap);
/* `get messages position` until `want` entries were handed out (bounded); their text
 * (MESSAGE lines and payloads) into out, the last position into tok. */
void kr_it_poll_position(int fd, size_t want, char *out, size_t cap, char *tok, size_t tokcap);
/* `set resume` of tok on the topics (separated by spaces); the reply must be `expect`. */
void kr_it_resume_mc(int fd, const char *tok, const char *topics, const char *expect);
/* Read one RESP2 `message` frame: its channel and payload (NUL-terminated). */
void kr_it_resp_read_message(int fd, char *ch, size_t chcap, char *payload, size_t pcap);
/* Start a non-blocking connect to 127.0.0.1:port: the socket, or -errno. */
int kr_it_connect_nb(uint16_t port);
/* CPU time (user + system) a process used so far, in milliseconds, from /proc; -1 when
 * unreadable. */
int kr_it_proc_cpu_ms(pid_t pid);
/* Size of a file in bytes, -1 when it cannot be read. */
long kr_it_file_size(const char *path);
/* A loopback TCP port nobody listens on right now (for servers a test starts itself). */
uint16_t kr_it_free_port(void);
/* Sleep for ms milliseconds. */
void kr_it_sleep_ms(int ms);

/* Run `$KRAKEN_BIN <args...> --admin_socket <s->admin_path>` (args NULL-terminated; with
 * s NULL no admin socket option is added), wait for it (bounded), and return its exit
 * status (or -1 when it did not exit normally); its stdout and stderr, merged, go to out
 * (NUL-terminated). */
int kr_it_cli(const struct kr_it_server *s, char *out, size_t cap, const char *const *args);
/* Connect to a Unix socket (the admin socket); asserts. Reads time out after a few
 * seconds. */
int kr_it_connect_unix(const char *path);
/* The value of `STAT <name>` in the admin socket's `stats` (asserts the line is there). */
unsigned long long kr_it_admin_stat(const struct kr_it_server *s, const char *name);
/* Send one admin command line and read the reply up to its terminator line ("END" or
 * "ERROR ..."), into buf (NUL-terminated). Returns the reply length. */
size_t kr_it_admin(int fd, const char *cmd, char *buf, size_t cap);

/* ------------------------------------------------------------------------------------------
 * NATS clusters for the cluster-link tests: real `nats-server` processes (from PATH, else
 * /usr/sbin/nats-server; NATS_SERVER_BIN names another) on 127.0.0.1, each with its own
 * client, route and monitoring port and its own log file under /tmp, every server routed to
 * every other (`--routes`, one `--cluster_name`). Ports are picked free (bind to port 0 and
 * release); when a server loses the race for one and exits, the whole cluster is started
 * again on new ports (bounded). These helpers are for the test's own thread (Criterion
 * runs each test in one thread); they assert on failure, and every wait is bounded. */
#define KR_IT_NATS_MAX 8

struct kr_it_nats {
    pid_t pid;        /* 0 while stopped */
    uint16_t port;    /* client port */
    uint16_t cport;   /* route (cluster) port */
    uint16_t mport;   /* HTTP monitoring port (/routez, /varz) */
    int index, n;     /* position in the cluster and its size (for restarts) */
    char log_path[128];
    char name[32];    /* server name: kr-it-nats-<index> */
    char cluster[48]; /* cluster name shared by the servers of one cluster */
    char user[32], pass[32]; /* client authorization (--user/--pass), "" = none */
    char tls_cert[128], tls_key[128]; /* clients connect with TLS (--tls), "" = plain */
    uint16_t rport;   /* the route port the other servers solicit and this one advertises
                         (--cluster_advertise): a proxy's in front of cport, or 0 = cport */
};

/* Start n (1..KR_IT_NATS_MAX) servers as one cluster into v[0..n) and wait until the full
 * mesh is up (num_routes == n - 1 on every server). Fails the test, saying so, when
 * nats-server is not installed. */
void kr_it_nats_cluster_start(struct kr_it_nats *v, int n);
/* The same with client authorization: clients must give `user` and `pass`. */
void kr_it_nats_cluster_start_auth(struct kr_it_nats *v, int n, const char *user, const char *pass);
/* The same with TLS for clients: the servers present `cert` (PEM) and its `key`. */
void kr_it_nats_cluster_start_tls(struct kr_it_nats *v, int n, const char *cert, const char *key);
/* kr_it_nats_cluster_start with every route through a TCP proxy (kr_it_proxy below), so a
 * test can cut the routes between live servers: px[i] is started in front of server i's
 * route port; every other server solicits px[i]'s port, and server i advertises it
 * (--cluster_advertise) instead of its own, so no server learns another's real route port
 * by gossip and reconnects around the proxy. Stop the proxies (kr_it_proxy_stop) after the
 * cluster. */
struct kr_it_proxy;
void kr_it_nats_cluster_start_proxied(struct kr_it_nats *v, int n, struct kr_it_proxy **px);
/* Stop every running server of the cluster (as kr_it_nats_stop) and remove the logs. */
void kr_it_nats_cluster_stop(struct kr_it_nats *v, int n);
/* SIGTERM one server, wait for it to exit (bounded), SIGKILL when it does not. */
void kr_it_nats_stop(struct kr_it_nats *one);
/* SIGKILL one server and reap it. */
void kr_it_nats_kill(struct kr_it_nats *one);
/* Start v[which] again (it must be stopped or killed) on the same three ports and routes,
 * then wait until the full mesh of the n servers is up again. */
void kr_it_nats_restart(struct kr_it_nats *v, int n, int which);
/* The server's client URL, "nats://127.0.0.1:<port>". */
void kr_it_nats_url(const struct kr_it_nats *one, char *buf, size_t len);
/* Comma-separated client URLs of all n servers (the form --cluster_nats_url takes). */
void kr_it_nats_urls(const struct kr_it_nats *v, int n, char *buf, size_t len);
/* num_routes from the server's /routez (a plain HTTP GET), or -1 when it does not answer. */
int kr_it_nats_routes(const struct kr_it_nats *one);
/* Wait (bounded) until each running server of v[0..n) has `want` routes: 1 if it happened. */
int kr_it_nats_wait_routes(const struct kr_it_nats *v, int n, int want);

/* A tiny raw NATS client (text protocol, no library): connect to 127.0.0.1:port, read INFO,
 * send CONNECT {"verbose":false,"pedantic":false} and a PING, wait for its PONG; returns
 * the socket (asserts). Reads time out after a few seconds. */
int kr_it_natsc_connect(uint16_t port);
/* SUB <subject> <sid>, then a PING/PONG round trip so the server has taken it (interest
 * reaches the other servers of a cluster later, asynchronously). */
void kr_it_natsc_sub(int fd, const char *subject, unsigned sid);
void kr_it_natsc_unsub(int fd, unsigned sid);
/* PUB <subject> <len> and the payload (not flushed: see kr_it_natsc_flush). */
void kr_it_natsc_pub(int fd, const char *subject, const void *payload, size_t len);
/* PING and wait for its PONG: the server has processed everything sent before. Asserts
 * that no MSG arrives in between (use it on connections without pending deliveries). */
void kr_it_natsc_flush(int fd);

struct kr_it_natsc_msg {
    char subject[256];
    unsigned sid;
    char reply[256]; /* "" when none */
    size_t len;
    char payload[4096]; /* NUL-terminated; a longer payload fails the test */
};

/* Wait up to timeout_ms for the next MSG (a server PING on the way is answered with PONG;
 * +OK is skipped; -ERR fails the test). 1 with *m filled, 0 when nothing came in time. */
int kr_it_natsc_next(int fd, int timeout_ms, struct kr_it_natsc_msg *m);

/* ------------------------------------------------------------------------------------------
 * A TCP forwarding proxy on loopback, to cut a connection between two live processes (a
 * route between NATS servers) without stopping either. One thread per proxy runs a poll()
 * loop over its listening socket, a control socket and the forwarded pairs: at most
 * KR_IT_PROXY_PAIRS connections at once (more are closed at once), KR_IT_PROXY_BUF bytes
 * buffered each way per connection (a full buffer stops reading the other side), every poll
 * bounded (100 ms) so the thread always sees a stop. Each accepted connection is forwarded
 * to a new connection to 127.0.0.1:<target>; when either side closes, both are closed.
 * The control calls below are for the test's own thread: each hands its command to the
 * proxy thread and waits (bounded) until it has been carried out; they assert on failure. */
#define KR_IT_PROXY_PAIRS 16
#define KR_IT_PROXY_BUF (256 * 1024)
/* Listen on 127.0.0.1:<ephemeral> and forward to 127.0.0.1:target (which need not listen
 * yet: a connection that cannot reach it is closed). The caller owns the proxy. */
struct kr_it_proxy *kr_it_proxy_start(uint16_t target);
/* The port the proxy listens on. Any thread. */
uint16_t kr_it_proxy_port(const struct kr_it_proxy *p);
/* Cut: close every forwarded connection (both sides) and, until kr_it_proxy_heal, close
 * every new one as soon as it is accepted (its peer sees EOF before any byte). On return
 * no forwarded connection is open. */
void kr_it_proxy_cut(struct kr_it_proxy *p);
/* Heal: forward new connections again. */
void kr_it_proxy_heal(struct kr_it_proxy *p);
/* Counters since start: connections forwarded, connections refused (accepted while cut, or
 * over KR_IT_PROXY_PAIRS, or target unreachable), forwarded connections open now. Any
 * thread. */
unsigned kr_it_proxy_forwarded(const struct kr_it_proxy *p);
unsigned kr_it_proxy_refused(const struct kr_it_proxy *p);
unsigned kr_it_proxy_open(const struct kr_it_proxy *p);
/* Readers for kr_it_wait_figure: arg is the proxy, name one of "forwarded", "refused",
 * "open". */
long long kr_it_proxy_figure(const void *proxy, const char *name);
/* Stop the thread, close everything, free the proxy. NULL is ignored. */
void kr_it_proxy_stop(struct kr_it_proxy *p);

#endif
