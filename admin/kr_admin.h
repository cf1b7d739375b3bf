/* Admin module: what the control thread runs besides signals, and the client side the
 * `kraken` subcommands use.
 *
 *  - the admin Unix socket (`admin_socket`, mode 0600): a line protocol (docs/operations.md)
 *    served on the control thread's libuv loop; commands that walk large tables (dumps)
 *    run on a worker thread that streams its output back in bounded chunks, each a
 *    request to the control thread's kr_reqq (the request primitive the net threads and
 *    shards serve too);
 *  - the command table (kr_admin_cmds.c): every admin command and `kraken` subcommand with
 *    its argument rules and help; dispatch, `help`, the CLI and --help read it;
 *  - the health port (`health_port`, kr_health.c): one line, "ok" or "draining", per TCP
 *    connection, to peers in allow_from, closed after a timeout;
 *  - both listening sockets pause accepting for 100 ms when descriptors run out, instead
 *    of spinning;
 *  - the drain sequence (SIGTERM, admin `drain`/`stop`): health checks fail at once, no new
 *    connections, clients closed in batches over `drain_timeout_ms`, then exit;
 *  - systemd notifications (READY, STATUS, STOPPING) on $NOTIFY_SOCKET.
 */
#ifndef KR_ADMIN_H
#define KR_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "kr_cfg.h"
#include "kr_net.h"

#define KR_ADMIN_LINE_MAX 4096 /* longest request line, '\n' included */

struct kr_admin;

struct kr_admin_opts {
    uv_loop_t *loop;          /* the control thread's loop */
    struct kr_server *srv;    /* created; started or not */
    const struct kr_cfg *cfg; /* the start configuration: socket path, health port */
    /* Called on the control thread when the process should exit (drain finished):
     * main stops its loop. */
    void (*on_exit)(void *arg);
    void *arg;
};

/* Bind the admin socket (its directory is created when missing; the socket is created
 * mode 0600; a stale socket file is replaced, but not one a running server answers on) and
 * the health port, and serve them on o->loop. Returns 0, or -errno with a one-line message
 * in err. Control thread, registered with urcu-memb (admin commands read the live
 * configuration and change it). */
int kr_admin_create(const struct kr_admin_opts *o, struct kr_admin **out, char *err,
                    size_t errlen);
/* Begin the drain (idempotent): `why` is logged ("SIGTERM", "admin drain"). Returns 0, or
 * -EALREADY when a drain already runs. Control thread. */
int kr_admin_drain(struct kr_admin *a, const char *why);
/* Whether a drain runs. Control thread. */
bool kr_admin_draining(const struct kr_admin *a);
/* Stop serving: cancel running dumps and wait for their workers, close every admin and
 * health connection and the listening sockets, remove the admin socket file. The loop must
 * run once more (uv_run) to finish the closes before kr_admin_destroy. Control thread,
 * while the server's threads still run. */
void kr_admin_close(struct kr_admin *a);
/* Free everything. Control thread, after kr_admin_close and a uv_run of the loop. */
void kr_admin_destroy(struct kr_admin *a);

/* Send a state string ("READY=1\nSTATUS=serving") to systemd's $NOTIFY_SOCKET (a path or
 * an abstract "@name"), as sd_notify does. Returns 1 when sent, 0 when NOTIFY_SOCKET is not
 * set, -errno on failure. Any thread. */
int kr_admin_notify(const char *state);

/* ---------------------------------------------------------------- the command table
 * (kr_admin_cmds.c). One row per admin-socket command (a row with `sub` is a two-word
 * command such as `config get`) and one per `kraken` subcommand, with its argument rules,
 * help text and the admin command it sends: dispatch, `help`, the argument checks, the CLI
 * and --help's subcommand list all read them. Constant: any thread. */

enum kr_admin_op {
    KR_ACMD_HELP = 1, KR_ACMD_STATUS, KR_ACMD_STATS, KR_ACMD_LOG_LEVEL, KR_ACMD_CONFIG,
    KR_ACMD_DUMP_QUEUES, KR_ACMD_DUMP_QUEUE_TOPICS, KR_ACMD_DUMP_TOPICS, KR_ACMD_DRAIN,
    KR_ACMD_STOP, KR_ACMD_QUIT,
};

struct kr_admin_cmd {
    const char *name;
    const char *sub;  /* second word, or NULL */
    int min_args;     /* words after the command's own */
    int max_args;     /* -1: any number (the value of config set is the rest of the line) */
    const char *usage;
    const char *what; /* for help */
    enum kr_admin_op op;
};
extern const struct kr_admin_cmd kr_admin_cmds[];
extern const size_t kr_admin_ncmds;

enum kr_admin_sub_kind {
    KR_SUB_RUN = 1, /* run and start: main.c */
    KR_SUB_START,
    KR_SUB_STOP,      /* sends `stop`, waits for the exit */
    KR_SUB_STATUS,    /* sends `status`, prints a sentence */
    KR_SUB_LOG_LEVEL, /* sends `log_level LEVEL` */
    KR_SUB_DUMP,      /* sends the command with its arguments, prints the lines (long wait) */
    KR_SUB_QUICK,     /* the same with a short wait */
    KR_SUB_ADMIN,     /* sends its arguments as one admin command */
};

struct kr_admin_sub {
    const char *name;
    const char *synopsis; /* --help's first column */
    int min_args, max_args; /* -1: any number */
    const char *usage;    /* "kraken: usage: kraken <usage>"; NULL: "takes no argument" */
    const char *sends;    /* the admin command it sends, NULL when none or its arguments */
    enum kr_admin_sub_kind kind;
    const char *help[3];  /* --help's description lines */
};
extern const struct kr_admin_sub kr_admin_subs[];
extern const size_t kr_admin_nsubs;

/* The admin command row for the words `name` and `sub` (sub may be NULL), or NULL. */
const struct kr_admin_cmd *kr_admin_cmd_lookup(const char *name, const char *sub);
/* The subcommand row named `name`, or NULL. */
const struct kr_admin_sub *kr_admin_sub_lookup(const char *name);
/* --help's subcommand lines (passed to kr_cfg_print_help). */
void kr_admin_print_subcommands(FILE *out);

/* ---------------------------------------------------------------- client side */

/* Connect to the admin socket at `path`. Returns the descriptor or -errno: -ENOENT (no
 * socket file), -ECONNREFUSED (a stale file: no server), -EACCES (no permission),
 * -ENAMETOOLONG. Any thread. */
int kr_admin_connect(const char *path);
/* A message saying what a kr_admin_connect error means for `path`, e.g. "kraken is not
 * running (no admin socket at ./kraken-admin.sock)". Any thread. */
void kr_admin_connect_error(int rc, const char *path, char *buf, size_t buflen);

/* Called with each reply line (without its '\n', NUL-terminated) before the terminator;
 * a non-zero return stops reading. */
typedef int (*kr_admin_line_cb)(void *arg, const char *line, size_t len);
/* Send one command line (without '\n') over a connected admin socket and read the reply:
 * data lines go to cb (may be NULL), then the terminator. Returns 0 for END, -EPROTO for
 * "ERROR <reason>" (reason in err), -ETIMEDOUT when nothing arrived for timeout_ms, -EPIPE
 * when the server closed first, or another -errno. Any thread. */
int kr_admin_request(int fd, const char *cmd, kr_admin_line_cb cb, void *arg, int timeout_ms,
                     char *err, size_t errlen);

/* The `kraken` subcommands that talk to a running server: status, stop, drain,
 * change_log_level, dump_queues, dump_queue_topics, dump_topics, admin. `args` are the
 * words after the subcommand. Prints to stdout/stderr and returns the exit status:
 * 0 success, 1 failure (reported by the server, or the connection broke), 2 usage error,
 * 3 server not running, 4 admin socket not accessible (permission), or -1 when `sub` is
 * not one of them.
 * Main thread of the `kraken` process. */
int kr_admin_cli(const char *sub, char **args, int nargs, const struct kr_cfg *cfg);

/* Wait (bounded by timeout_ms) until process `pid` has exited (a zombie counts as exited).
 * Returns 0 when it did, -ETIMEDOUT. Any thread. */
int kr_admin_wait_exit(pid_t pid, int timeout_ms);

#endif
