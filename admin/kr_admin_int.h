/* Internals of the admin module shared by kr_admin.c (control thread: sockets, commands,
 * drain) and kr_admin_dump.c (the dump workers). Not a public header. */
#ifndef KR_ADMIN_INT_H
#define KR_ADMIN_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <uv.h>

#include "kr_admin.h"
#include "kr_log.h"
#include "kr_queue.h"

#define KR_ADMIN_CHUNK (64 * 1024)         /* a worker hands its output over in chunks */
#define KR_ADMIN_INFLIGHT_MAX (1024 * 1024) /* unwritten bytes before a worker waits */
#define KR_ADMIN_WAIT_MS 5000              /* answer time allowed to a net thread/shard */

struct kr_admin_job;
struct kr_health_conn;
struct kr_admin_conn;

/* Bytes on their way to an admin client: a reply of the control thread (job NULL) or a
 * piece of a dump worker's output. */
struct kr_admin_chunk {
    uv_write_t req;
    struct kr_admin_conn *conn;
    struct kr_admin_job *job;
    size_t len; /* bytes used in data */
    char data[];
};

struct kr_admin_conn {
    uv_pipe_t h; /* first: the handle address is the connection */
    struct kr_admin *a;
    struct kr_admin_conn *next, *prev;
    char in[KR_ADMIN_LINE_MAX];
    size_t in_len;
    uint32_t writes;          /* uv_writes not completed */
    struct kr_admin_job *job; /* the dump running for this connection */
    bool reading;
    bool closing;
    bool handle_closed;
    bool close_after_write;
};

/* A listening socket of the control thread (kr_admin.c): accepted with accept4() from a
 * readiness poll; on EMFILE/ENFILE the waiting connections are closed (sent `refusal`
 * first when set) and accepting pauses for 100 ms. */
typedef void (*kr_admin_accept_fn)(struct kr_admin *a, int fd, const struct sockaddr_storage *ss);
struct kr_admin_lsock {
    struct kr_admin *a;
    uv_poll_t poll;
    uv_timer_t pause;
    int fd;
    bool open;
    const char *what; /* for the log: "admin socket", "health port" */
    char refusal[96];
    kr_admin_accept_fn on_accept;
    struct kr_log_ratelimit rl;
};

struct kr_admin {
    uv_loop_t *loop;
    struct kr_server *srv;
    const struct kr_cfg *cfg;
    void (*on_exit)(void *arg);
    void *arg;
    struct kr_admin_lsock listener; /* the admin socket */
    bool bound;
    bool closed;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dev_t dev;
    ino_t ino;
    struct kr_admin_lsock health; /* the health port (kr_health.c) */
    struct kr_health_conn *health_conns;
    int reserve_fd; /* freed to accept and close connections when descriptors run out */
    struct kr_log_ratelimit rl_refused; /* health connections refused by allow_from */
    struct kr_admin_conn *conns;
    uint32_t nconns;
    /* requests to the control thread (the dump workers' chunks), served from job_async */
    uv_async_t job_async;
    struct kr_reqq *reqq;
    /* drain */
    bool draining;
    uv_timer_t drain_timer;
    uint32_t drain_steps_left;
    uint64_t drain_started_ms;
    uint64_t drain_grace_end_ms;
    uint64_t drain_deadline_ms; /* clients still holding messages are told and closed */
    bool drain_deadline_sent;
};

/* kr_admin.c */
/* Serve listening socket `fd` (non-blocking, listening) on the control thread's loop. */
void kr_admin_lsock_start(struct kr_admin *a, struct kr_admin_lsock *l, int fd,
                          const char *what, kr_admin_accept_fn on_accept);
/* Stop serving it and close the descriptor (idempotent). */
void kr_admin_lsock_close(struct kr_admin_lsock *l);
/* A chunk with room for `len` bytes (len set to it). Aborts on out of memory. Any thread. */
struct kr_admin_chunk *kr_admin_chunk_new(size_t len);
/* Write a worker's chunk to the connection (takes it over). Control thread. */
void kr_admin_conn_send_job_chunk(struct kr_admin_conn *c, struct kr_admin_job *j,
                                  struct kr_admin_chunk *ch);

/* kr_health.c: the health port. Control thread. */
/* Bind and listen on health_port; 0, or -errno with a message. */
int kr_health_listen(struct kr_admin *a, char *err, size_t errlen);
/* Close every health connection and the listening socket. */
void kr_health_close(struct kr_admin *a);

/* kr_admin_dump.c: dump jobs. All control thread unless said otherwise. */
/* Whether the arguments of dump command `op` (a KR_ACMD_DUMP_* row) are valid; the message says why not. */
bool kr_admin_job_check(enum kr_admin_op op, int argc, char **argv, char *why, size_t whylen);
/* Start the worker thread for a dump command; NULL with a message when it cannot. */
struct kr_admin_job *kr_admin_job_start(struct kr_admin *a, struct kr_admin_conn *c,
                                        enum kr_admin_op op, int argc, char **argv, char *why,
                                        size_t whylen);
struct kr_admin_conn *kr_admin_job_conn(const struct kr_admin_job *j);
/* Ask the worker to stop early: the request it waits on, if any, is answered -ECANCELED. */
void kr_admin_job_cancel(struct kr_admin_job *j);
/* Wait for the worker thread to return (after kr_reqq_shutdown of a->reqq, or once its
 * final request ran). */
void kr_admin_job_join(struct kr_admin_job *j);
/* A chunk of the job was written (or dropped unsent): `len` bytes less in flight; the
 * worker waiting for room is answered once they are down to half the limit. */
void kr_admin_job_sent(struct kr_admin_job *j, size_t len, bool was_written);
void kr_admin_job_writes_add(struct kr_admin_job *j, int n);
/* When the worker's final request ran (or it was joined) and everything it wrote is out:
 * join it, free the job and return true. */
bool kr_admin_job_reap(struct kr_admin_job *j);
/* Free a job whose worker was joined (kr_admin_destroy). */
void kr_admin_job_free(struct kr_admin_job *j);

#endif
