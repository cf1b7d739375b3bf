/* kraken: the server executable. The main thread is the control thread: it parses the
 * configuration, starts the server and runs signal handling on its own libuv loop. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "kr_cfg.h"
#include "kr_log.h"
#include "kr_net.h"

static void kr_main_signal_cb(uv_signal_t *h, int signum)
{
    KR_INFO("received %s; shutting down", strsignal(signum));
    uv_stop(h->loop);
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

static int kr_main_run(const struct kr_cfg *cfg)
{
    int rc = kr_log_open(cfg->log_file);
    if (rc < 0) {
        fprintf(stderr, "kraken: cannot open log_file '%s': %s\n", cfg->log_file, strerror(-rc));
        return 1;
    }
    kr_log_set_level(cfg->log_level);
    signal(SIGPIPE, SIG_IGN);
    kr_main_raise_nofile(cfg);

    char err[512] = "";
    struct kr_server *srv = NULL;
    rc = kr_server_create(cfg, &srv, err, sizeof(err));
    if (rc < 0) {
        KR_ERROR("%s", err);
        fprintf(stderr, "kraken: %s\n", err);
        return 1;
    }
    rc = kr_main_write_pid(cfg->pid_file);
    if (rc < 0) {
        KR_ERROR("cannot write pid_file '%s': %s", cfg->pid_file, strerror(-rc));
        fprintf(stderr, "kraken: cannot write pid_file '%s': %s\n", cfg->pid_file, strerror(-rc));
        kr_server_destroy(srv);
        return 1;
    }
    rc = kr_server_start(srv);
    if (rc < 0) {
        KR_ERROR("cannot start: %s", strerror(-rc));
        return 1;
    }

    uv_loop_t *loop = uv_default_loop();
    uv_signal_t sigint, sigterm;
    uv_signal_init(loop, &sigint);
    uv_signal_init(loop, &sigterm);
    uv_signal_start(&sigint, kr_main_signal_cb, SIGINT);
    uv_signal_start(&sigterm, kr_main_signal_cb, SIGTERM);
    uv_run(loop, UV_RUN_DEFAULT);

    kr_server_stop(srv);
    kr_server_destroy(srv);
    uv_close((uv_handle_t *)&sigint, NULL);
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    if (cfg->pid_file[0])
        unlink(cfg->pid_file);
    KR_INFO("stopped");
    kr_log_close();
    return 0;
}

int main(int argc, char **argv)
{
    static struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    const char *sub = NULL;
    char **rest = NULL;
    int nrest = 0;
    char err[512] = "";
    int rc = kr_cfg_parse_args(&cfg, argc, argv, &sub, &rest, &nrest, err, sizeof(err));
    if (rc == 1) {
        kr_cfg_print_help(stdout, "kraken");
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
    if (strcmp(sub, "run") == 0) {
        if (nrest > 0) {
            fprintf(stderr, "kraken: unexpected argument '%s' after 'run'\n", rest[0]);
            return 2;
        }
        return kr_main_run(&cfg);
    }
    fprintf(stderr, "kraken: unknown subcommand '%s' (see 'kraken --help')\n", sub);
    return 2;
}
