/* Admin module, client side: talking to a running server over its admin socket, and the
 * `kraken` subcommands built on it (status, stop, drain, change_log_level, dump_*, admin),
 * dispatched from their rows in kr_admin_subs (kr_admin_cmds.c). See kr_admin.h. */
#include "kr_admin.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kr_log.h"

#define KR_CLI_TIMEOUT_MS 10000      /* a quick command's reply */
#define KR_CLI_DUMP_TIMEOUT_MS 60000 /* silence allowed in the middle of a dump */
#define KR_CLI_LINE_MAX (256 * 1024)

int kr_admin_connect(const char *path)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n == 0)
        return -ENOENT;
    if (n >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, n);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

void kr_admin_connect_error(int rc, const char *path, char *buf, size_t buflen)
{
    switch (-rc) {
    case ENOENT:
        snprintf(buf, buflen,
                 "kraken is not running: no admin socket at %s (is the server running, with "
                 "the same admin_socket / --config / -kraken options as this command?)",
                 path);
        break;
    case ECONNREFUSED:
        snprintf(buf, buflen,
                 "kraken is not running: nothing answers on admin socket %s (a stale socket "
                 "file)",
                 path);
        break;
    case EACCES:
    case EPERM:
        snprintf(buf, buflen,
                 "cannot open admin socket %s: permission denied (it is mode 0600: run as the "
                 "server's user or root)",
                 path);
        break;
    default:
        snprintf(buf, buflen, "cannot connect to admin socket %s: %s", path, strerror(-rc));
        break;
    }
}

static int kr_cli_write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int kr_admin_request(int fd, const char *cmd, kr_admin_line_cb cb, void *arg, int timeout_ms,
                     char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    size_t cl = strlen(cmd);
    char *req = malloc(cl + 2);
    if (!req)
        return -ENOMEM;
    memcpy(req, cmd, cl);
    req[cl] = '\n';
    int rc = kr_cli_write_all(fd, req, cl + 1);
    free(req);
    if (rc < 0)
        return rc;
    char *buf = malloc(KR_CLI_LINE_MAX + 1);
    if (!buf)
        return -ENOMEM;
    size_t len = 0;
    bool stopped = false;
    rc = -EPIPE;
    for (;;) {
        /* every complete line in the buffer */
        char *start = buf, *nl;
        bool done = false;
        while ((nl = memchr(start, '\n', len - (size_t)(start - buf)))) {
            *nl = '\0';
            size_t ll = (size_t)(nl - start);
            if (ll && start[ll - 1] == '\r')
                start[--ll] = '\0';
            if (strcmp(start, "END") == 0) {
                rc = 0;
                done = true;
                break;
            }
            if (strncmp(start, "ERROR", 5) == 0 && (start[5] == ' ' || start[5] == '\0')) {
                if (err && errlen)
                    snprintf(err, errlen, "%s", start[5] ? start + 6 : "error");
                rc = -EPROTO;
                done = true;
                break;
            }
            if (cb && !stopped && cb(arg, start, ll))
                stopped = true;
            start = nl + 1;
        }
        if (done)
            break;
        size_t used = (size_t)(start - buf);
        memmove(buf, start, len - used);
        len -= used;
        if (len == KR_CLI_LINE_MAX) {
            rc = -EMSGSIZE;
            break;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, timeout_ms);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0) {
            rc = -ETIMEDOUT;
            break;
        }
        ssize_t n = recv(fd, buf + len, KR_CLI_LINE_MAX - len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : -EPIPE;
            break;
        }
        len += (size_t)n;
    }
    free(buf);
    if (rc == -EPIPE && err && errlen && !err[0])
        snprintf(err, errlen, "the server closed the admin connection before the end of the "
                              "reply");
    return rc;
}

int kr_admin_wait_exit(pid_t pid, int timeout_ms)
{
    for (int waited = 0;; waited += 20) {
        (void)waitpid(pid, NULL, WNOHANG); /* reaps it when it is our child */
        if (kill(pid, 0) != 0 && errno == ESRCH)
            return 0;
        char path[64], stat[512];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "re");
        if (!f)
            return 0;
        size_t n = fread(stat, 1, sizeof(stat) - 1, f);
        fclose(f);
        stat[n] = '\0';
        char *p = strrchr(stat, ')');
        if (p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X'))
            return 0; /* exited; its parent has not reaped it yet */
        if (waited >= timeout_ms)
            return -ETIMEDOUT;
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* ---------------------------------------------------------------- subcommands */

static int kr_cli_open(const struct kr_cfg *cfg, int *fd)
{
    int rc = kr_admin_connect(cfg->admin_socket);
    if (rc >= 0) {
        *fd = rc;
        return 0;
    }
    char msg[600];
    kr_admin_connect_error(rc, cfg->admin_socket, msg, sizeof(msg));
    fprintf(stderr, "kraken: %s\n", msg);
    return rc == -ENOENT || rc == -ECONNREFUSED ? 3 : 4;
}

static int kr_cli_print_line(void *arg, const char *line, size_t len)
{
    (void)arg;
    fwrite(line, 1, len, stdout);
    fputc('\n', stdout);
    return 0;
}

/* The first data line, kept. */
struct kr_cli_first {
    char line[1024];
    bool got;
};

static int kr_cli_keep_first(void *arg, const char *line, size_t len)
{
    struct kr_cli_first *f = arg;
    if (!f->got) {
        snprintf(f->line, sizeof(f->line), "%.*s", (int)len, line);
        f->got = true;
    }
    return 0;
}

/* The value of "name=value" in a reply line ("" when missing). */
static const char *kr_cli_field(const char *line, const char *name, char *buf, size_t buflen)
{
    size_t nl = strlen(name);
    buf[0] = '\0';
    for (const char *p = line; (p = strstr(p, name)); p += nl) {
        if ((p == line || p[-1] == ' ') && p[nl] == '=') {
            size_t vl = strcspn(p + nl + 1, " ");
            snprintf(buf, buflen, "%.*s", (int)vl, p + nl + 1);
            break;
        }
    }
    return buf;
}

/* Send one command, print its data lines (or keep the first), report an ERROR. */
static int kr_cli_call(const struct kr_cfg *cfg, const char *cmd, kr_admin_line_cb cb,
                       void *arg, int timeout_ms)
{
    int fd;
    int code = kr_cli_open(cfg, &fd);
    if (code)
        return code;
    char err[1024];
    int rc = kr_admin_request(fd, cmd, cb, arg, timeout_ms, err, sizeof(err));
    close(fd);
    if (rc == -EPROTO) {
        fprintf(stderr, "kraken: %s\n", err);
        return 1;
    }
    if (rc < 0) {
        fprintf(stderr, "kraken: admin socket %s: %s\n", cfg->admin_socket,
                err[0] ? err : strerror(-rc));
        return 1;
    }
    return 0;
}

static int kr_cli_status(const struct kr_cfg *cfg)
{
    struct kr_cli_first f = {0};
    int code = kr_cli_call(cfg, kr_admin_sub_lookup("status")->sends, kr_cli_keep_first, &f,
                           KR_CLI_TIMEOUT_MS);
    if (code)
        return code;
    char pid[32], ver[64], listen[128], clients[32], up[32];
    kr_cli_field(f.line, "pid", pid, sizeof(pid));
    kr_cli_field(f.line, "version", ver, sizeof(ver));
    kr_cli_field(f.line, "listen", listen, sizeof(listen));
    kr_cli_field(f.line, "clients", clients, sizeof(clients));
    kr_cli_field(f.line, "uptime", up, sizeof(up));
    char cl[32], node[80], server[160], peers[32];
    kr_cli_field(f.line, "cluster", cl, sizeof(cl));
    kr_cli_field(f.line, "node", node, sizeof(node));
    kr_cli_field(f.line, "server", server, sizeof(server));
    kr_cli_field(f.line, "peers", peers, sizeof(peers));
    bool draining = strncmp(f.line, "STATUS draining", 15) == 0;
    printf("kraken is %s: pid %s, version %s, listening on %s, %s clients, up %s s, admin "
           "socket %s\n",
           draining ? "draining (it exits once its clients are closed)" : "running", pid, ver,
           listen, clients, up, cfg->admin_socket);
    if (strcmp(cl, "linked") == 0)
        printf("cluster: node %s, linked to %s, %s other nodes heard from\n", node, server,
               peers);
    else if (strcmp(cl, "unlinked") == 0)
        printf("cluster: node %s, NOT linked to any NATS server (reconnecting; local clients "
               "only)\n", node);
    else
        printf("cluster: none (a single node)\n");
    return 0;
}

/* The pid in pid_file when that process is alive, else 0. */
static pid_t kr_cli_pid_from_file(const struct kr_cfg *cfg)
{
    if (!cfg->pid_file[0])
        return 0;
    FILE *f = fopen(cfg->pid_file, "re");
    if (!f)
        return 0;
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    if (pid <= 1 || kr_admin_wait_exit((pid_t)pid, 0) == 0)
        return 0;
    return (pid_t)pid;
}

static int kr_cli_stop(const struct kr_cfg *cfg)
{
    int fd;
    int rc = kr_admin_connect(cfg->admin_socket);
    pid_t pid = 0;
    uint64_t drain_ms = cfg->drain_timeout_ms +
                        (cfg->cluster_nats_url[0] ? cfg->drain_resume_window_ms : 0);
    if (rc < 0) {
        pid = kr_cli_pid_from_file(cfg);
        if (!pid || rc == -EACCES) {
            char msg[600];
            kr_admin_connect_error(rc, cfg->admin_socket, msg, sizeof(msg));
            fprintf(stderr, "kraken: %s\n", msg);
            return rc == -ENOENT || rc == -ECONNREFUSED ? 3 : 4;
        }
        /* no admin socket, but pid_file names a live server: SIGTERM drains it too */
        if (kill(pid, SIGTERM) != 0) {
            fprintf(stderr, "kraken: cannot signal pid %d (from %s): %s\n", (int)pid,
                    cfg->pid_file, strerror(errno));
            return 4;
        }
        printf("stopping kraken (pid %d, from %s): SIGTERM sent\n", (int)pid, cfg->pid_file);
    } else {
        fd = rc;
        struct kr_cli_first f = {0};
        char err[1024];
        rc = kr_admin_request(fd, kr_admin_sub_lookup("stop")->sends, kr_cli_keep_first, &f,
                              KR_CLI_TIMEOUT_MS, err, sizeof(err));
        close(fd);
        if (rc < 0) {
            fprintf(stderr, "kraken: stop: %s\n", err[0] ? err : strerror(-rc));
            return 1;
        }
        char buf[64];
        pid = (pid_t)atoi(kr_cli_field(f.line, "pid", buf, sizeof(buf)));
        drain_ms = strtoull(kr_cli_field(f.line, "drain_timeout_ms", buf, sizeof(buf)), NULL, 10);
        /* a cluster node answers resumes of its tokens for a while after its drain */
        drain_ms += strtoull(kr_cli_field(f.line, "resume_window_ms", buf, sizeof(buf)), NULL, 10);
        printf("stopping kraken (pid %d): closing %s clients over at most %" PRIu64 " ms\n",
               (int)pid, kr_cli_field(f.line, "clients", buf, sizeof(buf)), drain_ms);
    }
    fflush(stdout);
    if (pid <= 0) {
        fprintf(stderr, "kraken: the server did not say its pid\n");
        return 1;
    }
    uint64_t wait_ms = drain_ms + 30000;
    if (kr_admin_wait_exit(pid, wait_ms > INT32_MAX ? INT32_MAX : (int)wait_ms) != 0) {
        fprintf(stderr, "kraken: pid %d is still running after %" PRIu64 " ms\n", (int)pid,
                wait_ms);
        return 1;
    }
    printf("kraken stopped\n");
    return 0;
}

int kr_admin_cli(const char *sub, char **args, int nargs, const struct kr_cfg *cfg)
{
    const struct kr_admin_sub *row = kr_admin_sub_lookup(sub);
    if (!row || row->kind == KR_SUB_RUN || row->kind == KR_SUB_START)
        return -1;
    if (nargs < row->min_args || (row->max_args >= 0 && nargs > row->max_args) ||
        (row->kind == KR_SUB_LOG_LEVEL && kr_log_level_parse(args[0]) < 0)) {
        if (!row->usage)
            fprintf(stderr, "kraken: %s takes no argument (got '%s')\n", sub, args[0]);
        else
            fprintf(stderr, "kraken: usage: kraken %s\n", row->usage);
        return 2;
    }
    if (row->kind == KR_SUB_STATUS)
        return kr_cli_status(cfg);
    if (row->kind == KR_SUB_STOP)
        return kr_cli_stop(cfg);
    /* the admin command: the row's own with the arguments, or the arguments themselves */
    char cmd[KR_ADMIN_LINE_MAX];
    size_t len = 0;
    if (row->sends)
        len = (size_t)snprintf(cmd, sizeof(cmd), "%s", row->sends);
    for (int i = 0; i < nargs; i++) {
        int n = snprintf(cmd + len, sizeof(cmd) - len, "%s%s", len ? " " : "", args[i]);
        if (n < 0 || (size_t)n >= sizeof(cmd) - len) {
            fprintf(stderr, "kraken: admin command too long\n");
            return 2;
        }
        len += (size_t)n;
    }
    if (row->kind == KR_SUB_LOG_LEVEL) {
        struct kr_cli_first f = {0};
        int code = kr_cli_call(cfg, cmd, kr_cli_keep_first, &f, KR_CLI_TIMEOUT_MS);
        if (code == 0)
            printf("log level is now %s\n", strncmp(f.line, "LOG_LEVEL ", 10) == 0
                                                ? f.line + 10 : f.line);
        return code;
    }
    return kr_cli_call(cfg, cmd, kr_cli_print_line, NULL,
                       row->kind == KR_SUB_QUICK ? KR_CLI_TIMEOUT_MS : KR_CLI_DUMP_TIMEOUT_MS);
}
