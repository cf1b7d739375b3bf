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
/* SIGTERM, wait (bounded), assert a clean exit 0, remove the log. */
void kr_it_stop(struct kr_it_server *s);
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
/* Subscribe and wait for STORED. */
void kr_it_subscribe(int fd, const char *topics);
/* Publish one entry and wait for STORED. */
void kr_it_publish(int fd, const char *topics, const char *payload, size_t plen);
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
/* Send one admin command line and read the reply up to its terminator line ("END" or
 * "ERROR ..."), into buf (NUL-terminated). Returns the reply length. */
size_t kr_it_admin(int fd, const char *cmd, char *buf, size_t cap);

#endif
