/* Admin module, server side: the admin socket, the drain sequence and systemd
 * notifications, all on the control thread's loop (the health port is kr_health.c, the
 * command table kr_admin_cmds.c). See kr_admin.h and docs/operations.md (the line
 * protocol).
 *
 * Threads: everything here runs on the control thread, except the dump workers
 * (kr_admin_dump.c), one per running dump. A worker sends its output in chunks as requests
 * to the control thread's kr_reqq (a->reqq, served from job_async); their runs queue the
 * writes to the admin client, and the worker waits while more than KR_ADMIN_INFLIGHT_MAX
 * bytes are unwritten, so a dump of millions of lines never sits in memory at once and a
 * slow reader slows the worker. */
#include "kr_admin.h"
#include "kr_cluster.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <urcu/urcu-memb.h>

#include "kr_admin_int.h"
#include "kr_log.h"

#define KR_ADMIN_MAX_CONNS 64 /* admin connections served at once */
#define KR_ADMIN_BACKLOG 512  /* a burst of connects waits in the kernel, not refused */
#define KR_DRAIN_STEPS 20     /* batches the clients are closed in */
#define KR_DRAIN_GRACE_MS 2000 /* after the last batch: wait this long for closes to finish */

/* ---------------------------------------------------------------- helpers */

int kr_admin_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !path[0])
        return 0;
    if (path[0] != '/' && path[0] != '@')
        return -EAFNOSUPPORT;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, n);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    ssize_t w = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
                       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
    int e = errno;
    close(fd);
    return w < 0 ? -e : 1;
}

__attribute__((format(printf, 1, 2))) static void kr_admin_notifyf(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    int rc = kr_admin_notify(buf);
    if (rc < 0)
        KR_WARN("cannot notify systemd: %s", strerror(-rc));
}

/* ---------------------------------------------------------------- writing to clients */

struct kr_admin_chunk *kr_admin_chunk_new(size_t len)
{
    struct kr_admin_chunk *ch = kr_xcalloc(1, sizeof(*ch) + len);
    ch->len = len;
    return ch;
}

static void kr_admin_conn_close(struct kr_admin_conn *c);
static void kr_admin_conn_pump(struct kr_admin_conn *c);
static void kr_admin_conn_maybe_free(struct kr_admin_conn *c);
static void kr_admin_job_maybe_done(struct kr_admin_job *j);

/* After a write or a dump job finished: free a closing connection, close one whose last
 * reply is out, else go on with its next command. */
static void kr_admin_conn_next(struct kr_admin_conn *c)
{
    if (c->closing) {
        kr_admin_conn_maybe_free(c);
        return;
    }
    if (c->close_after_write && c->writes == 0) {
        kr_admin_conn_close(c);
        return;
    }
    kr_admin_conn_pump(c);
}

static void kr_admin_write_cb(uv_write_t *req, int status)
{
    struct kr_admin_chunk *ch = req->data;
    struct kr_admin_conn *c = ch->conn;
    struct kr_admin_job *j = ch->job;
    size_t len = ch->len;
    free(ch);
    c->writes--;
    if (j)
        kr_admin_job_sent(j, len, true);
    if (status < 0 && !c->closing)
        kr_admin_conn_close(c);
    if (j) {
        kr_admin_job_maybe_done(j); /* may free c */
        return;
    }
    kr_admin_conn_next(c);
}

/* Write a chunk to the client (takes it over). */
static void kr_admin_conn_send(struct kr_admin_conn *c, struct kr_admin_chunk *ch)
{
    if (c->closing) {
        if (ch->job)
            kr_admin_job_sent(ch->job, ch->len, false);
        free(ch);
        return;
    }
    ch->conn = c;
    ch->req.data = ch;
    uv_buf_t b = uv_buf_init(ch->data, (unsigned)ch->len);
    int rc = uv_write(&ch->req, (uv_stream_t *)&c->h, &b, 1, kr_admin_write_cb);
    if (rc < 0) {
        if (ch->job)
            kr_admin_job_sent(ch->job, ch->len, false);
        free(ch);
        kr_admin_conn_close(c);
        return;
    }
    c->writes++;
    if (ch->job)
        kr_admin_job_writes_add(ch->job, 1);
}

void kr_admin_conn_send_job_chunk(struct kr_admin_conn *c, struct kr_admin_job *j,
                                  struct kr_admin_chunk *ch)
{
    ch->job = j;
    kr_admin_conn_send(c, ch);
}

/* A reply of the control thread. */
static void kr_admin_reply(struct kr_admin_conn *c, const char *text, size_t len)
{
    struct kr_admin_chunk *ch = kr_admin_chunk_new(len);
    memcpy(ch->data, text, len);
    kr_admin_conn_send(c, ch);
}

/* A reply being built by the control thread: lines, then END or ERROR. */
struct kr_admin_out {
    char *buf;
    size_t len;
    size_t cap;
};

__attribute__((format(printf, 2, 3))) static void kr_admin_outf(struct kr_admin_out *o,
                                                                const char *fmt, ...)
{
    for (;;) {
        size_t room = o->cap - o->len;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf ? o->buf + o->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < room) {
            o->len += (size_t)n;
            return;
        }
        KR_GROW_MIN(o->buf, o->cap, o->len + (size_t)n + 1, 1024);
    }
}

static void kr_admin_out_send(struct kr_admin_conn *c, struct kr_admin_out *o)
{
    kr_admin_reply(c, o->buf, o->len);
    free(o->buf);
    o->buf = NULL;
    o->len = o->cap = 0;
}

__attribute__((format(printf, 2, 3))) static void kr_admin_error(struct kr_admin_conn *c,
                                                                 const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* one line, whatever the message holds */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    char line[600];
    int n = snprintf(line, sizeof(line), "ERROR %s\n", msg);
    kr_admin_reply(c, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* ---------------------------------------------------------------- commands */

static void kr_admin_cmd_status(struct kr_admin_conn *c)
{
    struct kr_admin *a = c->a;
    struct kr_admin_out o = {0};
    struct kr_cluster_stats cs;
    char cluster[320] = "off";
    if (kr_server_cluster(a->srv, &cs))
        snprintf(cluster, sizeof(cluster), "%s node=%s server=%s peers=%" PRIu64,
                 cs.connected ? "linked" : "unlinked", cs.node, cs.server[0] ? cs.server : "-",
                 cs.peers);
    kr_admin_outf(&o,
                  "STATUS %s pid=%d version=%s listen=%s:%u clients=%" PRIu64 " uptime=%" PRIu64
                  " admin_socket=%s health_port=%u resp_port=%u cluster=%s\nEND\n",
                  a->draining ? "draining" : "running", (int)getpid(), KR_VERSION,
                  a->cfg->listen_ip, kr_server_port(a->srv), kr_server_clients(a->srv),
                  kr_server_uptime(a->srv), a->path, a->cfg->health_port,
                  kr_server_resp_port(a->srv), cluster);
    kr_admin_out_send(c, &o);
}

static void kr_admin_stat_emit(void *arg, const char *line, size_t len)
{
    struct kr_admin_out *o = arg;
    kr_admin_outf(o, "%.*s\n", (int)len, line);
}

static void kr_admin_cmd_stats(struct kr_admin_conn *c)
{
    struct kr_admin_out o = {0};
    kr_server_stats(c->a->srv, kr_admin_stat_emit, &o);
    kr_admin_outf(&o, "STAT draining %d\nSTAT admin_connections %u\nEND\n",
                  c->a->draining ? 1 : 0, c->a->nconns);
    kr_admin_out_send(c, &o);
}

static void kr_admin_cmd_log_level(struct kr_admin_conn *c, int argc, char **argv)
{
    if (argc > 2) {
        kr_admin_error(c, "usage: log_level [debug|info|warn|error]");
        return;
    }
    if (argc == 2) {
        int old = kr_log_get_level();
        char err[256];
        int rc = kr_cfg_live_set("log_level", argv[1], err, sizeof(err));
        if (rc < 0) {
            kr_admin_error(c, "%s", err);
            return;
        }
        /* recorded whatever the new level, so the log shows who changed it */
        kr_log_write(KR_LOG_WARN, "log level changed from %s to %s (admin socket)",
                     kr_log_level_name(old), kr_log_level_name(kr_log_get_level()));
    }
    struct kr_admin_out o = {0};
    kr_admin_outf(&o, "LOG_LEVEL %s\nEND\n", kr_log_level_name(kr_log_get_level()));
    kr_admin_out_send(c, &o);
}

static void kr_admin_config_line(struct kr_admin_out *o, const char *key)
{
    char val[KR_CFG_STR_MAX + 8];
    if (kr_cfg_live_get(key, val, sizeof(val)) < 0)
        val[0] = '\0';
    kr_admin_outf(o, "CONFIG %s %s\n", key, val[0] ? val : "\"\"");
}

static void kr_admin_cmd_config(struct kr_admin_conn *c, int argc, char **argv,
                                const char *set_value)
{
    if (argc >= 2 && strcmp(argv[1], "get") == 0 && argc <= 3) {
        struct kr_admin_out o = {0};
        if (argc == 3) {
            if (kr_cfg_key_live(argv[2]) < 0) {
                kr_admin_error(c, "unknown option '%s' (config get lists every key)", argv[2]);
                return;
            }
            kr_admin_config_line(&o, argv[2]);
        } else {
            for (size_t i = 0; kr_cfg_key_at(i); i++)
                kr_admin_config_line(&o, kr_cfg_key_at(i));
        }
        kr_admin_outf(&o, "END\n");
        kr_admin_out_send(c, &o);
        return;
    }
    if (argc >= 4 && strcmp(argv[1], "set") == 0) {
        const char *key = argv[2];
        char old[KR_CFG_STR_MAX + 8] = "", err[512];
        kr_cfg_live_get(key, old, sizeof(old));
        int rc = kr_cfg_live_set(key, set_value, err, sizeof(err));
        if (rc < 0) {
            kr_admin_error(c, "%s", err);
            return;
        }
        struct kr_admin_out o = {0};
        kr_admin_config_line(&o, key);
        char now[KR_CFG_STR_MAX + 8] = "";
        kr_cfg_live_get(key, now, sizeof(now));
        kr_log_write(KR_LOG_WARN, "configuration: %s changed from %s to %s (admin socket)", key,
                     old, now);
        kr_admin_outf(&o, "END\n");
        kr_admin_out_send(c, &o);
        return;
    }
    kr_admin_error(c, "usage: config get [KEY] | config set KEY VALUE");
}

static uint64_t kr_admin_drain_timeout(void)
{
    char buf[32];
    if (kr_cfg_live_get("drain_timeout_ms", buf, sizeof(buf)) < 0)
        return 10000;
    return strtoull(buf, NULL, 10);
}

static void kr_admin_cmd_drain(struct kr_admin_conn *c, bool stop)
{
    struct kr_admin *a = c->a;
    bool already = a->draining;
    struct kr_admin_out o = {0};
    if (stop)
        kr_admin_outf(&o,
                      "STOPPING pid=%d clients=%" PRIu64 " drain_timeout_ms=%" PRIu64
                      " resume_window_ms=%" PRIu64 "\n",
                      (int)getpid(), kr_server_clients(a->srv), kr_admin_drain_timeout(),
                      kr_server_resume_window_ms(a->srv));
    else
        kr_admin_outf(&o, "DRAINING clients=%" PRIu64 " drain_timeout_ms=%" PRIu64 "%s\n",
                      kr_server_clients(a->srv), kr_admin_drain_timeout(),
                      already ? " already=1" : "");
    kr_admin_outf(&o, "END\n");
    kr_admin_out_send(c, &o);
    if (!already)
        kr_admin_drain(a, stop ? "admin stop" : "admin drain");
}

/* Split a line into words (spaces and tabs); *rest3 gets the text after the third word's
 * start (the VALUE of `config set KEY VALUE`, spaces included). */
static int kr_admin_split(char *line, char **argv, int max, const char **rest3)
{
    int argc = 0;
    char *p = line;
    *rest3 = "";
    while (*p && argc < max) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        if (argc == 3)
            *rest3 = p;
        argv[argc++] = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        if (*p)
            *p++ = '\0';
    }
    return argc;
}

/* ---------------------------------------------------------------- command table
 * The rows are kr_admin_cmds (kr_admin_cmds.c): the dispatch, the argument-count checks
 * and `help` all come from them; each row's op picks its handler here. */

/* argv[0] is the command's first word; `value` is the text after the third word.
 * Returns false when the connection must stop processing lines for now. */
typedef bool (*kr_admin_cmd_fn)(struct kr_admin_conn *c, enum kr_admin_op op, int argc,
                                char **argv, const char *value);

static bool kr_admin_do_help(struct kr_admin_conn *c, enum kr_admin_op op, int argc, char **argv, const char *value);

static bool kr_admin_do_status(struct kr_admin_conn *c, enum kr_admin_op op, int argc, char **argv, const char *value)
{
    (void)op;
    (void)argc, (void)argv, (void)value;
    kr_admin_cmd_status(c);
    return true;
}

static bool kr_admin_do_stats(struct kr_admin_conn *c, enum kr_admin_op op, int argc, char **argv, const char *value)
{
    (void)op;
    (void)argc, (void)argv, (void)value;
    kr_admin_cmd_stats(c);
    return true;
}

static bool kr_admin_do_log_level(struct kr_admin_conn *c, enum kr_admin_op op, int argc, char **argv,
                                  const char *value)
{
    (void)op;
    (void)value;
    kr_admin_cmd_log_level(c, argc, argv);
    return true;
}

static bool kr_admin_do_config(struct kr_admin_conn *c, enum kr_admin_op op, int argc, char **argv, const char *value)
{
    (void)op;
    kr_admin_cmd_config(c, argc, argv, value);
    return true;
}

static bool kr_admin_do_dump(struct kr_admin_conn *c, enum kr_admin_op op, int argc, char **argv, const char *value)
{
    (void)op;
    (void)value;
    char why[256];
    if (!kr_admin_job_check(op, argc, argv, why, sizeof(why))) {
        kr_admin_error(c, "%s", why);
        return true;
    }
    struct kr_admin_job *j = kr_admin_job_start(c->a, c, op, argc, argv, why, sizeof(why));
    if (!j) {
        kr_admin_error(c, "%s", why);
        return true;
    }
    c->job = j;
    return false; /* the next line waits for the dump to finish */
}

static bool kr_admin_do_drain(struct kr_admin_conn *c, enum kr_admin_op op, int argc, char **argv, const char *value)
{
    (void)op;
    (void)argc, (void)argv, (void)value;
    kr_admin_cmd_drain(c, op == KR_ACMD_STOP);
    return true;
}

static bool kr_admin_do_quit(struct kr_admin_conn *c, enum kr_admin_op op, int argc, char **argv, const char *value)
{
    (void)op;
    (void)argc, (void)argv, (void)value;
    c->close_after_write = true;
    if (c->writes == 0)
        kr_admin_conn_close(c);
    return false;
}

static const kr_admin_cmd_fn kr_admin_fns[] = {
    [KR_ACMD_HELP] = kr_admin_do_help,
    [KR_ACMD_STATUS] = kr_admin_do_status,
    [KR_ACMD_STATS] = kr_admin_do_stats,
    [KR_ACMD_LOG_LEVEL] = kr_admin_do_log_level,
    [KR_ACMD_CONFIG] = kr_admin_do_config,
    [KR_ACMD_DUMP_QUEUES] = kr_admin_do_dump,
    [KR_ACMD_DUMP_QUEUE_TOPICS] = kr_admin_do_dump,
    [KR_ACMD_DUMP_TOPICS] = kr_admin_do_dump,
    [KR_ACMD_DRAIN] = kr_admin_do_drain,
    [KR_ACMD_STOP] = kr_admin_do_drain,
    [KR_ACMD_QUIT] = kr_admin_do_quit,
};

#define KR_ADMIN_NCMDS kr_admin_ncmds

static bool kr_admin_do_help(struct kr_admin_conn *c, enum kr_admin_op op, int argc, char **argv, const char *value)
{
    (void)op;
    (void)argc, (void)argv, (void)value;
    struct kr_admin_out o = {0};
    for (size_t i = 0; i < KR_ADMIN_NCMDS; i++)
        kr_admin_outf(&o, "HELP %-29s %s\n", kr_admin_cmds[i].usage, kr_admin_cmds[i].what);
    kr_admin_outf(&o, "END\n");
    kr_admin_out_send(c, &o);
    return true;
}

/* "usage: A | B" over every row named `name`. */
static void kr_admin_usage_error(struct kr_admin_conn *c, const char *name)
{
    char text[256];
    size_t len = 0;
    for (size_t i = 0; i < KR_ADMIN_NCMDS; i++) {
        if (strcmp(kr_admin_cmds[i].name, name) != 0)
            continue;
        int n = snprintf(text + len, sizeof(text) - len, "%s%s", len ? " | " : "",
                         kr_admin_cmds[i].usage);
        if (n > 0 && (size_t)n < sizeof(text) - len)
            len += (size_t)n;
    }
    kr_admin_error(c, "usage: %s", text);
}

/* The row for a request's words, or NULL with the error already answered. */
static const struct kr_admin_cmd *kr_admin_cmd_find(struct kr_admin_conn *c, int argc,
                                                    char **argv, int *nargs)
{
    bool named = false;
    for (size_t i = 0; i < KR_ADMIN_NCMDS; i++) {
        const struct kr_admin_cmd *cmd = &kr_admin_cmds[i];
        if (strcmp(cmd->name, argv[0]) != 0)
            continue;
        named = true;
        int words = cmd->sub ? 2 : 1;
        if (cmd->sub && (argc < 2 || strcmp(cmd->sub, argv[1]) != 0))
            continue;
        *nargs = argc - words;
        if (*nargs >= cmd->min_args && (cmd->max_args < 0 || *nargs <= cmd->max_args))
            return cmd;
        if (cmd->max_args == 0)
            kr_admin_error(c, "%s takes no arguments", cmd->usage);
        else
            kr_admin_usage_error(c, cmd->name);
        return NULL;
    }
    if (named)
        kr_admin_usage_error(c, argv[0]); /* a two-word command without a known second word */
    else
        kr_admin_error(c, "unknown command '%.64s' (try 'help')", argv[0]);
    return NULL;
}

#define KR_ADMIN_MAX_WORDS 64

/* Handle one request line (without its '\n'). Returns false when the connection must
 * stop processing further lines for now (a dump runs, or it closes). */
static bool kr_admin_conn_line(struct kr_admin_conn *c, char *line, size_t len)
{
    if (len && line[len - 1] == '\r')
        line[--len] = '\0';
    if (memchr(line, '\0', len)) {
        kr_admin_error(c, "NUL byte in the request");
        return true;
    }
    char copy[KR_ADMIN_LINE_MAX];
    memcpy(copy, line, len + 1);
    char *argv[KR_ADMIN_MAX_WORDS + 1];
    const char *rest3;
    /* one word more than any command takes: a count over the limit is seen as such */
    int argc = kr_admin_split(line, argv, KR_ADMIN_MAX_WORDS + 1, &rest3);
    if (argc == 0)
        return true; /* blank line */
    int nargs = 0;
    const struct kr_admin_cmd *cmd = kr_admin_cmd_find(c, argc, argv, &nargs);
    if (!cmd)
        return true;
    /* the value of `config set KEY VALUE` is the rest of the original line after KEY */
    const char *value = rest3[0] ? copy + (rest3 - line) : "";
    size_t vl = strlen(value);
    char v[KR_ADMIN_LINE_MAX];
    memcpy(v, value, vl + 1);
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        v[--vl] = '\0';
    return kr_admin_fns[cmd->op](c, cmd->op, argc, argv, v);
}

/* ---------------------------------------------------------------- connections */

static void kr_admin_conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct kr_admin_conn *c = (struct kr_admin_conn *)h;
    (void)suggested;
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(sizeof(c->in) - c->in_len));
}

static void kr_admin_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void kr_admin_conn_resume(struct kr_admin_conn *c)
{
    if (c->reading || c->closing || c->close_after_write || c->in_len == sizeof(c->in))
        return;
    if (uv_read_start((uv_stream_t *)&c->h, kr_admin_conn_alloc_cb, kr_admin_conn_read_cb) == 0)
        c->reading = true;
}

static void kr_admin_conn_pause(struct kr_admin_conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->h);
        c->reading = false;
    }
}

/* Handle the complete lines received, unless a dump is running. */
static void kr_admin_conn_pump(struct kr_admin_conn *c)
{
    if (c->a->closed)
        return;
    size_t off = 0;
    while (!c->closing && !c->close_after_write && !c->job && c->writes < 64) {
        char *nl = memchr(c->in + off, '\n', c->in_len - off);
        if (!nl)
            break;
        *nl = '\0';
        bool go_on = kr_admin_conn_line(c, c->in + off, (size_t)(nl - (c->in + off)));
        off = (size_t)(nl - c->in) + 1;
        if (!go_on)
            break;
    }
    if (c->closing)
        return;
    if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    if (c->in_len == sizeof(c->in) && !memchr(c->in, '\n', c->in_len) && !c->close_after_write) {
        kr_admin_error(c, "line too long (at most %d bytes); closing", KR_ADMIN_LINE_MAX - 1);
        c->close_after_write = true;
        c->in_len = 0;
    }
    if (c->close_after_write || c->in_len == sizeof(c->in))
        kr_admin_conn_pause(c);
    else
        kr_admin_conn_resume(c);
}

static void kr_admin_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct kr_admin_conn *c = (struct kr_admin_conn *)s;
    (void)buf;
    if (nread < 0) {
        if (nread == UV_EOF && (c->job || c->writes)) {
            /* half-closed: finish the replies, then close */
            kr_admin_conn_pause(c);
            c->close_after_write = true;
            if (!c->job && c->writes == 0)
                kr_admin_conn_close(c);
            return;
        }
        kr_admin_conn_close(c);
        return;
    }
    c->in_len += (size_t)nread;
    kr_admin_conn_pump(c);
}

static void kr_admin_conn_closed_cb(uv_handle_t *h)
{
    struct kr_admin_conn *c = (struct kr_admin_conn *)h;
    c->handle_closed = true;
    kr_admin_conn_maybe_free(c);
}

static void kr_admin_conn_maybe_free(struct kr_admin_conn *c)
{
    if (!c->handle_closed || c->job || c->writes)
        return;
    struct kr_admin *a = c->a;
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->nconns--;
    free(c);
}

static void kr_admin_conn_close(struct kr_admin_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->job)
        kr_admin_job_cancel(c->job);
    uv_close((uv_handle_t *)&c->h, kr_admin_conn_closed_cb);
}

/* A new admin connection `fd` (kr_admin_lsock's callback). */
static void kr_admin_accepted(struct kr_admin *a, int fd, const struct sockaddr_storage *ss)
{
    (void)ss;
    struct kr_admin_conn *c = kr_xcalloc(1, sizeof(*c));
    c->a = a;
    uv_pipe_init(a->loop, &c->h, 0);
    c->next = a->conns;
    if (a->conns)
        a->conns->prev = c;
    a->conns = c;
    a->nconns++;
    if (uv_pipe_open(&c->h, fd) != 0) {
        close(fd); /* not taken over by the handle */
        kr_admin_conn_close(c);
        return;
    }
    if (a->nconns > KR_ADMIN_MAX_CONNS) {
        kr_admin_error(c, "too many admin connections (at most %d)", KR_ADMIN_MAX_CONNS);
        c->close_after_write = true;
        return;
    }
    kr_admin_conn_resume(c);
}

/* ---------------------------------------------------------------- dump jobs */

static void kr_admin_job_maybe_done(struct kr_admin_job *j)
{
    struct kr_admin_conn *c = kr_admin_job_conn(j);
    if (!kr_admin_job_reap(j))
        return; /* still running or writing */
    c->job = NULL;
    kr_admin_conn_next(c);
}

/* Requests to the control thread (the workers' chunks: their runs queue the writes);
 * then reap the finished jobs. */
static void kr_admin_job_async_cb(uv_async_t *h)
{
    struct kr_admin *a = h->data;
    if (kr_reqq_serve(a->reqq, a) == 0)
        return;
    for (struct kr_admin_conn *c = a->conns, *next; c; c = next) {
        next = c->next;
        if (c->job)
            kr_admin_job_maybe_done(c->job);
    }
}

static void kr_admin_reqq_wake(void *arg)
{
    struct kr_admin *a = arg;
    KR_ASYNC_SEND(&a->job_async);
}

/* ---------------------------------------------------------------- listening sockets
 *
 * The admin socket and the health port are accepted with accept4() from a uv_poll_t
 * readiness callback, as the net threads do, rather than uv_listen(): libuv's listener
 * loops inside its callback while accept() keeps failing with EMFILE, which would spin the
 * control thread. Here, on EMFILE/ENFILE the control thread frees its reserve descriptor,
 * accepts and closes the waiting connections (an admin client is told why first), reopens
 * the reserve and stops accepting on that socket for KR_LSOCK_PAUSE_MS. */

#define KR_LSOCK_PAUSE_MS 100
#define KR_LSOCK_BATCH 16 /* connections accepted per readiness callback */

static void kr_lsock_poll_cb(uv_poll_t *h, int status, int events);

static void kr_admin_reserve_open(struct kr_admin *a)
{
    if (a->reserve_fd < 0)
        a->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void kr_lsock_resume_cb(uv_timer_t *t)
{
    struct kr_admin_lsock *l = t->data;
    kr_server_accept_lock(l->a->srv); /* not a descriptor another thread freed */
    kr_admin_reserve_open(l->a);
    kr_server_accept_unlock(l->a->srv);
    if (l->open)
        uv_poll_start(&l->poll, UV_READABLE, kr_lsock_poll_cb);
}

static void kr_lsock_pause(struct kr_admin_lsock *l)
{
    uv_poll_stop(&l->poll);
    uv_timer_start(&l->pause, kr_lsock_resume_cb, KR_LSOCK_PAUSE_MS, 0);
}

/* accept() failed with EMFILE or ENFILE (`err`). */
static void kr_lsock_out_of_fds(struct kr_admin_lsock *l, int err)
{
    struct kr_admin *a = l->a;
    uint32_t closed = 0;
    if (a->reserve_fd >= 0) {
        kr_server_accept_lock(a->srv); /* no other thread takes the freed descriptor */
        close(a->reserve_fd);
        a->reserve_fd = -1;
        for (uint32_t i = 0; i < KR_LSOCK_BATCH; i++) {
            int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED)
                    continue;
                break;
            }
            if (l->refusal[0]) {
                ssize_t w = send(fd, l->refusal, strlen(l->refusal), MSG_NOSIGNAL | MSG_DONTWAIT);
                (void)w;
            }
            close(fd);
            closed++;
        }
        kr_admin_reserve_open(a);
        kr_server_accept_unlock(a->srv);
    }
    kr_lsock_pause(l);
    uint64_t suppressed = 0;
    if (kr_log_ratelimit(&l->rl, 10, 10000, &suppressed)) {
        char note[64] = "";
        if (suppressed)
            snprintf(note, sizeof(note), " (suppressed %" PRIu64 " similar)", suppressed);
        KR_WARN("%s: out of file descriptors (%s): closed %u connection(s); accepting again in "
                "%d ms%s",
                l->what, strerror(err), closed, KR_LSOCK_PAUSE_MS, note);
    }
}

static void kr_lsock_poll_cb(uv_poll_t *h, int status, int events)
{
    struct kr_admin_lsock *l = h->data;
    (void)events;
    uint64_t suppressed = 0;
    if (status < 0) {
        if (kr_log_ratelimit(&l->rl, 10, 10000, &suppressed))
            KR_WARN("%s: %s; accepting again in %d ms", l->what, uv_strerror(status),
                    KR_LSOCK_PAUSE_MS);
        kr_lsock_pause(l);
        return;
    }
    for (uint32_t i = 0; i < KR_LSOCK_BATCH && l->open; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        memset(&ss, 0, sizeof(ss));
        kr_server_accept_lock(l->a->srv);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int e = errno;
        if (fd >= 0)
            kr_admin_reserve_open(l->a); /* lost while descriptors ran out */
        kr_server_accept_unlock(l->a->srv);
        if (fd < 0) {
            if (e == EINTR || e == ECONNABORTED)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK)
                return; /* level-triggered: called again when more arrive */
            if (e == EMFILE || e == ENFILE) {
                kr_lsock_out_of_fds(l, e);
                return;
            }
            /* ENOBUFS, ENOMEM, ...: never spin on it */
            if (kr_log_ratelimit(&l->rl, 10, 10000, &suppressed))
                KR_WARN("%s: accept failed: %s; accepting again in %d ms", l->what, strerror(e),
                        KR_LSOCK_PAUSE_MS);
            kr_lsock_pause(l);
            return;
        }
        l->on_accept(l->a, fd, &ss);
    }
}

void kr_admin_lsock_start(struct kr_admin *a, struct kr_admin_lsock *l, int fd,
                          const char *what, kr_admin_accept_fn on_accept)
{
    l->a = a;
    l->fd = fd;
    l->what = what;
    l->on_accept = on_accept;
    uv_poll_init(a->loop, &l->poll, fd);
    uv_timer_init(a->loop, &l->pause);
    l->poll.data = l->pause.data = l;
    l->open = true;
    uv_poll_start(&l->poll, UV_READABLE, kr_lsock_poll_cb);
}

void kr_admin_lsock_close(struct kr_admin_lsock *l)
{
    if (!l->open)
        return;
    l->open = false;
    uv_close((uv_handle_t *)&l->poll, NULL); /* stops polling the descriptor: close it now */
    uv_close((uv_handle_t *)&l->pause, NULL);
    close(l->fd);
    l->fd = -1;
}

/* ---------------------------------------------------------------- admin socket */

/* mkdir -p for the socket's directory (new directories get mode 0755). */
static int kr_admin_mkdirs(const char *path, char *err, size_t errlen)
{
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = '\0';
    for (char *p = dir + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
                int e = errno;
                return kr_errf(err, errlen, -e,
                                    "cannot create the admin socket's directory %s: %s", dir,
                                    strerror(e));
            }
            *p = saved;
            if (!saved)
                break;
        }
    }
    return 0;
}

static int kr_admin_bind(struct kr_admin *a, char *err, size_t errlen)
{
    const char *path = a->cfg->admin_socket;
    if (!path[0])
        return kr_errf(err, errlen, -EINVAL, "admin_socket is empty");
    if (strlen(path) >= sizeof(a->path))
        return kr_errf(err, errlen, -ENAMETOOLONG,
                            "admin_socket '%s' is too long for a Unix socket (at most %zu "
                            "bytes)",
                            path, sizeof(a->path) - 1);
    memcpy(a->path, path, strlen(path) + 1);
    int rc = kr_admin_mkdirs(path, err, errlen);
    if (rc < 0)
        return rc;
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return kr_errf(err, errlen, -EEXIST,
                                "admin_socket %s exists and is not a socket", path);
        int fd = kr_admin_connect(path);
        if (fd >= 0) {
            close(fd);
            return kr_errf(err, errlen, -EADDRINUSE,
                                "another kraken server is running: it answers on admin socket "
                                "%s (stop it, or give this one another admin_socket)",
                                path);
        }
        if (fd != -ECONNREFUSED && fd != -ENOENT)
            return kr_errf(err, errlen, fd, "cannot check admin socket %s: %s", path,
                                strerror(-fd));
        unlink(path); /* stale: left by a server that did not exit cleanly */
    }
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        return kr_errf(err, errlen, -e, "cannot bind admin socket %s: %s", path, strerror(e));
    }
    mode_t old = umask(0177); /* the socket file is created 0600 */
    rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : -errno;
    umask(old);
    if (rc < 0) {
        close(fd);
        return kr_errf(err, errlen, rc, "cannot bind admin socket %s: %s", path,
                       uv_strerror(rc));
    }
    a->bound = true;
    if (chmod(path, 0600) != 0 || lstat(path, &st) != 0) {
        int e = errno;
        close(fd);
        return kr_errf(err, errlen, -e, "admin socket %s: %s", path, strerror(e));
    }
    a->dev = st.st_dev;
    a->ino = st.st_ino;
    if (listen(fd, KR_ADMIN_BACKLOG) != 0) {
        rc = -errno;
        close(fd);
        return kr_errf(err, errlen, rc, "cannot listen on admin socket %s: %s", path,
                       uv_strerror(rc));
    }
    kr_admin_lsock_start(a, &a->listener, fd, "admin socket", kr_admin_accepted);
    snprintf(a->listener.refusal, sizeof(a->listener.refusal),
             "ERROR the server is out of file descriptors; try again\n");
    return 0;
}

/* Remove the socket file if it is still ours. */
static void kr_admin_unlink(struct kr_admin *a)
{
    struct stat st;
    if (a->bound && lstat(a->path, &st) == 0 && st.st_dev == a->dev && st.st_ino == a->ino)
        unlink(a->path);
    a->bound = false;
}

/* ---------------------------------------------------------------- drain */

static void kr_admin_window_end(uv_timer_t *t)
{
    struct kr_admin *a = t->data;
    KR_INFO("drain: resume window over; exiting");
    if (a->on_exit)
        a->on_exit(a->arg);
}

static void kr_admin_drain_finish(struct kr_admin *a, const char *how)
{
    uv_timer_stop(&a->drain_timer);
    uint64_t window = kr_server_resume_window_ms(a->srv);
    KR_INFO("drain finished (%s) after %" PRIu64 " ms; %" PRIu64 " clients left; %s", how,
            kr_now_ms() - a->drain_started_ms, kr_server_clients(a->srv),
            window ? "answering resumes" : "exiting");
    if (window) {
        /* its clients resume on other nodes, which ask this one for what they missed */
        KR_INFO("drain: keeping the history and the cluster interest of this node's topics "
                "and answering other nodes' resumes of its tokens for %" PRIu64
                " ms (drain_resume_window_ms), then exiting",
                window);
        uv_timer_start(&a->drain_timer, kr_admin_window_end, window, 0);
        return;
    }
    if (a->on_exit)
        a->on_exit(a->arg);
}

/* Batches reach the clients over the first three quarters of drain_timeout_ms (a client
 * with nothing queued is closed, one holding messages after the poll that empties its
 * queue); at drain_timeout_ms every client left is closed, those still holding messages
 * told `SERVER_ERROR shutting down`; the process exits when none is left, at the latest
 * KR_DRAIN_GRACE_MS later. */
static void kr_admin_drain_tick(uv_timer_t *t)
{
    struct kr_admin *a = t->data;
    uint64_t left = kr_server_clients(a->srv);
    if (left == 0) {
        kr_admin_drain_finish(a, "every client closed");
        return;
    }
    uint64_t now = kr_now_ms();
    if (a->drain_steps_left == 0) {
        if (!a->drain_deadline_sent && now >= a->drain_deadline_ms) {
            a->drain_deadline_sent = true;
            a->drain_grace_end_ms = a->drain_deadline_ms + KR_DRAIN_GRACE_MS;
            KR_INFO("drain: deadline; closing the %" PRIu64 " clients left (any still holding "
                    "messages is told SERVER_ERROR shutting down)",
                    left);
            for (uint32_t n = 0; n < kr_server_nnet(a->srv); n++)
                kr_server_drain_deadline(a->srv, n);
        }
        uint64_t next = a->drain_deadline_sent ? a->drain_grace_end_ms : a->drain_deadline_ms;
        if (a->drain_deadline_sent && now >= a->drain_grace_end_ms) {
            kr_admin_drain_finish(a, "timeout");
            return;
        }
        /* come back at the next step in time, or sooner (closes end the drain early) */
        uint64_t wait = next > now ? next - now : 0;
        uint64_t rep = uv_timer_get_repeat(t);
        uv_timer_start(t, kr_admin_drain_tick, wait < rep ? wait : rep, rep);
        return;
    }
    if (!kr_server_drain_flushed(a->srv) && now < a->drain_deadline_ms) {
        /* the shards first route what was handed to them before the drain (see
         * kr_server_drain_flushed): look again shortly */
        uv_timer_start(t, kr_admin_drain_tick, 5, uv_timer_get_repeat(t));
        return;
    }
    uint32_t steps = a->drain_steps_left--;
    uint64_t reaching = 0;
    for (uint32_t n = 0; n < kr_server_nnet(a->srv); n++) {
        uint64_t have = kr_server_net_clients(a->srv, n);
        uint64_t k = (have + steps - 1) / steps; /* the last step reaches every one left */
        if (k && kr_server_close_clients(a->srv, n, k > UINT32_MAX ? UINT32_MAX : (uint32_t)k) == 0)
            reaching += k;
    }
    if (reaching)
        KR_INFO("drain: closing %" PRIu64 " of %" PRIu64 " clients (%u batches left)", reaching,
                left, a->drain_steps_left);
    kr_admin_notifyf("STATUS=draining: %" PRIu64 " clients left", left);
}

int kr_admin_drain(struct kr_admin *a, const char *why)
{
    if (a->draining)
        return -EALREADY;
    a->draining = true;
    a->drain_started_ms = kr_now_ms();
    uint64_t timeout = kr_admin_drain_timeout();
    uint64_t clients = kr_server_clients(a->srv);
    KR_INFO("draining (%s): health checks fail from now on, no new connections; closing %" PRIu64
            " clients over %" PRIu64 " ms",
            why, clients, timeout);
    kr_server_drain(a->srv);
    kr_admin_notifyf("STOPPING=1\nSTATUS=draining: %" PRIu64 " clients", clients);
    uint64_t interval = timeout * 3 / 4 / KR_DRAIN_STEPS;
    a->drain_steps_left = timeout ? KR_DRAIN_STEPS : 1;
    a->drain_deadline_ms = a->drain_started_ms + timeout;
    a->drain_deadline_sent = false;
    if (interval < 10)
        interval = 10;
    uv_timer_start(&a->drain_timer, kr_admin_drain_tick, 0, interval);
    return 0;
}

bool kr_admin_draining(const struct kr_admin *a)
{
    return a->draining;
}

/* ---------------------------------------------------------------- lifecycle */

int kr_admin_create(const struct kr_admin_opts *o, struct kr_admin **out, char *err,
                    size_t errlen)
{
    struct kr_admin *a = kr_xcalloc(1, sizeof(*a));
    a->loop = o->loop;
    a->srv = o->srv;
    a->cfg = o->cfg;
    a->on_exit = o->on_exit;
    a->arg = o->arg;
    a->reqq = kr_reqq_create(kr_admin_reqq_wake, a);
    a->reserve_fd = -1;
    kr_admin_reserve_open(a);
    uv_async_init(a->loop, &a->job_async, kr_admin_job_async_cb);
    a->job_async.data = a;
    uv_timer_init(a->loop, &a->drain_timer);
    a->drain_timer.data = a;
    int rc = kr_admin_bind(a, err, errlen);
    if (rc == 0 && o->cfg->health_port)
        rc = kr_health_listen(a, err, errlen);
    *out = a;
    if (rc < 0) {
        kr_admin_close(a);
        return rc; /* the caller runs the loop and calls kr_admin_destroy */
    }
    KR_INFO("admin socket %s", a->path);
    return 0;
}

void kr_admin_close(struct kr_admin *a)
{
    if (a->closed)
        return;
    a->closed = true;
    /* dumps first: the workers may be waiting on net threads and shards, still running;
     * a worker waiting for room is answered -ECANCELED, and once the queue is shut down
     * none waits on the control thread */
    for (struct kr_admin_conn *c = a->conns; c; c = c->next)
        if (c->job)
            kr_admin_job_cancel(c->job);
    kr_reqq_shutdown(a->reqq);
    for (struct kr_admin_conn *c = a->conns; c; c = c->next)
        if (c->job)
            kr_admin_job_join(c->job);
    for (struct kr_admin_conn *c = a->conns, *next; c; c = next) {
        next = c->next;
        kr_admin_conn_close(c);
        if (c->job)
            kr_admin_job_maybe_done(c->job); /* reaped now unless writes are in flight */
    }
    kr_health_close(a);
    kr_admin_lsock_close(&a->listener);
    uv_close((uv_handle_t *)&a->job_async, NULL);
    uv_close((uv_handle_t *)&a->drain_timer, NULL);
    kr_admin_unlink(a);
}

void kr_admin_destroy(struct kr_admin *a)
{
    if (!a)
        return;
    /* every connection was freed by its close callback once its dump was reaped */
    while (a->conns) {
        struct kr_admin_conn *c = a->conns;
        a->conns = c->next;
        if (c->job)
            kr_admin_job_free(c->job);
        free(c);
    }
    kr_reqq_destroy(a->reqq);
    if (a->reserve_fd >= 0)
        close(a->reserve_fd);
    free(a);
}
