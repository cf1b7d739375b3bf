/* kraken: the server executable and its operations subcommands.
 *
 * `kraken run` runs the server in the foreground; `kraken start` runs it in the background.
 * The main thread is then the control thread: it parses the configuration, starts the
 * server, and runs the admin socket, the health port, signals and the drain on its own
 * libuv loop. The other subcommands (status, stop, ...) talk to a running server through
 * its admin socket (admin/kr_admin_cli.c). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <urcu/urcu-memb.h>
#include <uv.h>
#ifdef KR_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

#include "kr_admin.h"
#include "kr_cfg.h"
#include "kr_http.h"
#include "kr_log.h"
#include "kr_net.h"

#define KR_START_TIMEOUT_MS 60000 /* `kraken start` waits this long for the server */

#ifdef KR_HAVE_JEMALLOC
/* The allocator's options, read by jemalloc when it initialises (Debian's jemalloc has no
 * je_ prefix, so the symbol is `malloc_conf`). Without them memory freed while the server
 * goes quiet (a million topics unsubscribed) stays resident: jemalloc purges unused pages
 * only when the thread that freed them allocates again. A background thread purges them
 * instead; dirty pages are returned after about a second unused, and straight away with
 * MADV_DONTNEED (muzzy 0: MADV_FREE'd pages would still count in RSS until the kernel
 * wants them). The MALLOC_CONF environment variable is read after this and wins. */
const char *malloc_conf = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";

/* Log the allocator options in force (what malloc_conf and MALLOC_CONF made of them). */
static void kr_main_log_allocator(void)
{
    bool bg = false;
    ssize_t dirty = -2, muzzy = -2;
    size_t sz = sizeof(bg);
    mallctl("background_thread", &bg, &sz, NULL, 0);
    sz = sizeof(dirty);
    mallctl("opt.dirty_decay_ms", &dirty, &sz, NULL, 0);
    sz = sizeof(muzzy);
    mallctl("opt.muzzy_decay_ms", &muzzy, &sz, NULL, 0);
    KR_INFO("allocator: jemalloc, background_thread %s, dirty_decay_ms %zd, muzzy_decay_ms %zd",
            bg ? "true" : "false", dirty, muzzy);
}
#else
static void kr_main_log_allocator(void)
{
    KR_INFO("allocator: libc");
}
#endif

struct kr_main {
    uv_loop_t *loop;
    struct kr_admin *admin;
    int ready_fd; /* `kraken start`: the pipe to the waiting parent, -1 otherwise */
};

/* An error before the server runs: on stderr, and to a waiting `kraken start`. */
__attribute__((format(printf, 2, 3))) static void kr_main_fail(struct kr_main *m,
                                                               const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "kraken: %s\n", msg);
    if (m->ready_fd >= 0) {
        char line[800];
        int n = snprintf(line, sizeof(line), "ERR %s\n", msg);
        ssize_t w = write(m->ready_fd, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line));
        (void)w;
    }
}

/* The figures `stats` shows without computing them per request (allocator, rusage). */
static void kr_main_stats_timer_cb(uv_timer_t *t)
{
    kr_server_refresh_stats(t->data);
}

static void kr_main_watch_timer_cb(uv_timer_t *t)
{
    kr_server_watch_shards(t->data);
}

static void kr_main_on_exit(void *arg)
{
    struct kr_main *m = arg;
    uv_stop(m->loop);
}

static void kr_main_signal_cb(uv_signal_t *h, int signum)
{
    struct kr_main *m = h->data;
    switch (signum) {
    case SIGHUP: {
        int rc = kr_log_reopen();
        if (rc < 0)
            KR_ERROR("SIGHUP: cannot reopen the log file: %s", strerror(-rc));
        else
            KR_INFO("SIGHUP: log file reopened");
        break;
    }
    case SIGTERM:
        if (kr_admin_drain(m->admin, "SIGTERM") == -EALREADY) {
            KR_WARN("second SIGTERM while draining: exiting now");
            kr_admin_notify("STOPPING=1\nSTATUS=stopping now");
            uv_stop(m->loop);
        }
        break;
    default:
        KR_INFO("received %s; stopping now (no drain)", strsignal(signum));
        kr_admin_notify("STOPPING=1\nSTATUS=stopping");
        uv_stop(m->loop);
        break;
    }
}

/* Raise RLIMIT_NOFILE as far as allowed; warn when max_tcp_clients cannot fit. */
static void kr_main_raise_nofile(const struct kr_cfg *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)cfg->max_tcp_clients + 64 + 4 * cfg->num_net_threads +
                  2 * cfg->num_router_shards;
    if (rl.rlim_cur < want) {
        rlim_t target = want;
        if (rl.rlim_max != RLIM_INFINITY && target > rl.rlim_max)
            target = rl.rlim_max;
        rl.rlim_cur = target;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < want)
        KR_WARN("open-file limit is %llu but max_tcp_clients %u needs about %llu; raise "
                "LimitNOFILE / ulimit -n or lower max_tcp_clients",
                (unsigned long long)rl.rlim_cur, cfg->max_tcp_clients, (unsigned long long)want);
}

static int kr_main_write_pid(const char *path)
{
    if (!path[0])
        return 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    ssize_t w = write(fd, buf, (size_t)n);
    close(fd);
    return w == n ? 0 : -EIO;
}

/* Run the server until a signal or the drain ends it. ready_fd: see struct kr_main. */
static int kr_main_run(const struct kr_cfg *cfg, int ready_fd)
{
    struct kr_main m = {.loop = uv_default_loop(), .ready_fd = ready_fd};
    int rc = kr_log_open(cfg->log_file);
    if (rc < 0) {
        kr_main_fail(&m, "cannot open log_file '%s': %s", cfg->log_file, strerror(-rc));
        return 1;
    }
    kr_log_set_level(cfg->log_level);
    kr_main_log_allocator();
    signal(SIGPIPE, SIG_IGN);
    kr_main_raise_nofile(cfg);

    /* The control thread reads and replaces the live configuration snapshot. */
    urcu_memb_register_thread();
    kr_cfg_live_init(cfg);

    char err[512] = "";
    struct kr_server *srv = NULL;
    rc = kr_server_create(cfg, &srv, err, sizeof(err));
    if (rc < 0) {
        KR_ERROR("%s", err);
        kr_main_fail(&m, "%s", err);
        return 1;
    }
    struct kr_admin_opts ao = {
        .loop = m.loop, .srv = srv, .cfg = cfg, .on_exit = kr_main_on_exit, .arg = &m,
    };
    rc = kr_admin_create(&ao, &m.admin, err, sizeof(err));
    if (rc == 0) {
        rc = kr_main_write_pid(cfg->pid_file);
        if (rc < 0)
            snprintf(err, sizeof(err), "cannot write pid_file '%s': %s", cfg->pid_file,
                     strerror(-rc));
    }
    struct kr_http *http = NULL; /* the monitoring listener (http_port) */
    if (rc == 0 && cfg->http_port)
        rc = kr_http_start(cfg, srv, &http, err, sizeof(err));
    if (rc < 0) { /* nothing runs yet: undo and exit */
        KR_ERROR("%s", err);
        kr_main_fail(&m, "%s", err);
        if (m.admin) {
            kr_admin_close(m.admin);
            uv_run(m.loop, UV_RUN_DEFAULT);
            kr_admin_destroy(m.admin);
        }
        urcu_memb_unregister_thread();
        kr_server_destroy(srv);
        kr_cfg_live_fini();
        return 1;
    }
    rc = kr_server_start(srv);
    if (rc < 0) {
        KR_ERROR("cannot start: %s", strerror(-rc));
        kr_main_fail(&m, "cannot start: %s", strerror(-rc));
        return 1;
    }

    uv_signal_t sigs[4];
    const int signums[4] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    for (int i = 0; i < 4; i++) {
        uv_signal_init(m.loop, &sigs[i]);
        sigs[i].data = &m;
        uv_signal_start(&sigs[i], kr_main_signal_cb, signums[i]);
    }
    uv_timer_t stats_timer;
    uv_timer_init(m.loop, &stats_timer);
    stats_timer.data = srv;
    uv_timer_start(&stats_timer, kr_main_stats_timer_cb, KR_NET_STATS_REFRESH_MS,
                   KR_NET_STATS_REFRESH_MS);
    uv_timer_t watch_timer;
    uv_timer_init(m.loop, &watch_timer);
    watch_timer.data = srv;
    uv_timer_start(&watch_timer, kr_main_watch_timer_cb, KR_NET_SHARD_WATCH_MS,
                   KR_NET_SHARD_WATCH_MS);
    kr_admin_notify("READY=1\nSTATUS=serving");
    if (ready_fd >= 0) {
        char line[32];
        int n = snprintf(line, sizeof(line), "OK %d\n", (int)getpid());
        ssize_t w = write(ready_fd, line, (size_t)n);
        (void)w;
        close(ready_fd);
    }
    uv_run(m.loop, UV_RUN_DEFAULT);

    kr_http_stop(http); /* it asks the net threads: before they stop */
    kr_admin_close(m.admin); /* dumps end while net threads and shards still answer */
    kr_server_stop(srv);
    for (int i = 0; i < 4; i++)
        uv_close((uv_handle_t *)&sigs[i], NULL);
    uv_close((uv_handle_t *)&stats_timer, NULL);
    uv_close((uv_handle_t *)&watch_timer, NULL);
    uv_run(m.loop, UV_RUN_DEFAULT);
    kr_admin_destroy(m.admin);
    uv_loop_close(m.loop);
    urcu_memb_unregister_thread(); /* kr_server_destroy registers for itself */
    kr_server_destroy(srv);
    kr_cfg_live_fini();
    if (cfg->pid_file[0])
        unlink(cfg->pid_file);
    KR_INFO("stopped");
    kr_log_close();
    return 0;
}

/* A relative path made absolute (the background server runs in "/"). */
static int kr_main_absolute(char *path, size_t cap, const char *what)
{
    if (!path[0] || path[0] == '/')
        return 0;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd))) {
        fprintf(stderr, "kraken: cannot resolve %s '%s': %s\n", what, path, strerror(errno));
        return -1;
    }
    const char *rel = strncmp(path, "./", 2) == 0 ? path + 2 : path;
    char abs[PATH_MAX + KR_CFG_STR_MAX];
    int n = snprintf(abs, sizeof(abs), "%s/%s", cwd, rel);
    if (n < 0 || (size_t)n >= cap) {
        fprintf(stderr, "kraken: %s '%s' is too long once made absolute (%s)\n", what, path,
                abs);
        return -1;
    }
    memcpy(path, abs, (size_t)n + 1);
    return 0;
}

/* `kraken start`: daemonize, wait until the server accepts connections (or failed), then
 * print its status. */
static int kr_main_start(struct kr_cfg *cfg)
{
    int fd = kr_admin_connect(cfg->admin_socket);
    if (fd >= 0) {
        close(fd);
        fprintf(stderr, "kraken: already running (admin socket %s answers)\n",
                cfg->admin_socket);
        return 1;
    }
    if (kr_main_absolute(cfg->admin_socket, sizeof(cfg->admin_socket), "admin_socket") < 0 ||
        kr_main_absolute(cfg->pid_file, sizeof(cfg->pid_file), "pid_file") < 0 ||
        kr_main_absolute(cfg->log_file, sizeof(cfg->log_file), "log_file") < 0)
        return 1;
    if (!cfg->log_file[0])
        fprintf(stderr, "kraken: warning: log_file is empty, so the background server's log "
                        "lines are discarded\n");
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        fprintf(stderr, "kraken: pipe: %s\n", strerror(errno));
        return 1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "kraken: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        /* a new session, then a grandchild that can never reacquire a terminal */
        close(p[0]);
        setsid();
        pid_t d = fork();
        if (d != 0)
            _exit(d < 0 ? 1 : 0);
        if (chdir("/") != 0)
            _exit(1);
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0) {
            dup2(null, STDIN_FILENO);
            dup2(null, STDOUT_FILENO);
            dup2(null, STDERR_FILENO);
            if (null > STDERR_FILENO)
                close(null);
        }
        exit(kr_main_run(cfg, p[1]));
    }
    close(p[1]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    char buf[1024];
    size_t len = 0;
    for (int waited = 0; len < sizeof(buf) - 1;) {
        struct pollfd pfd = {.fd = p[0], .events = POLLIN};
        int pr = poll(&pfd, 1, 100);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0) {
            waited += 100;
            if (waited >= KR_START_TIMEOUT_MS)
                break;
            continue;
        }
        ssize_t n = read(p[0], buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (memchr(buf, '\n', len))
            break;
    }
    close(p[0]);
    buf[len] = '\0';
    if (strncmp(buf, "OK ", 3) == 0) {
        int code = kr_admin_cli(kr_admin_sub_lookup("status")->name, NULL, 0, cfg);
        return code == 0 ? 0 : 1;
    }
    if (strncmp(buf, "ERR ", 4) == 0) {
        buf[strcspn(buf, "\n")] = '\0';
        fprintf(stderr, "kraken: the server did not start: %s\n", buf + 4);
    } else if (len == 0) {
        fprintf(stderr, "kraken: the server exited while starting%s%s\n",
                cfg->log_file[0] ? "; see " : "", cfg->log_file);
    } else {
        fprintf(stderr, "kraken: no answer from the server within %d ms\n",
                KR_START_TIMEOUT_MS);
    }
    return 1;
}

int main(int argc, char **argv)
{
    static struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    const char *sub = NULL;
    char **rest = NULL;
    int nrest = 0;
    char err[512] = "";
    /* --help-man: the man page, generated from the option table (the build installs it) */
    if (argc == 2 && strcmp(argv[1], "--help-man") == 0) {
        kr_cfg_print_man(stdout, "kraken", KR_VERSION, kr_admin_print_subcommands);
        return fflush(stdout) == 0 ? 0 : 1;
    }
    int rc = kr_cfg_parse_args(&cfg, argc, argv, &sub, &rest, &nrest, err, sizeof(err));
    if (rc == 1) {
        kr_cfg_print_help(stdout, "kraken", kr_admin_print_subcommands);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "kraken: %s\n", err);
        return 2;
    }
    if (!sub) {
        fprintf(stderr, "kraken: missing subcommand (try 'kraken run', or 'kraken --help')\n");
        return 2;
    }
    const struct kr_admin_sub *row = kr_admin_sub_lookup(sub);
    if (row && (row->kind == KR_SUB_RUN || row->kind == KR_SUB_START)) {
        if (nrest > row->max_args) {
            fprintf(stderr, "kraken: unexpected argument '%s' after '%s'\n", rest[0], sub);
            return 2;
        }
        return row->kind == KR_SUB_RUN ? kr_main_run(&cfg, -1) : kr_main_start(&cfg);
    }
    rc = kr_admin_cli(sub, rest, nrest, &cfg);
    if (rc >= 0)
        return rc;
    fprintf(stderr, "kraken: unknown subcommand '%s' (see 'kraken --help')\n", sub);
    return 2;
}
