/* kraken-bench against the real server: every scenario runs for about a second on an
 * ephemeral port and its accounting must come out clean. Timings are never asserted. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kr_itest.h"

#define TB_BENCH_MS 60000 /* one bench run, everything included */

static long tb_ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Start the server (2 shards, 2 net threads) with extra arguments. */
static void tb_start(const char *const *extra)
{
    const char *argv[40] = {"-kraken", "num_router_shards", "2", "-kraken", "num_net_threads", "2"};
    int argc = 6;
    for (int i = 0; extra && extra[i] && argc < 39; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    kr_it_fixture_start(argv);
}

static void tb_start_default(void)
{
    tb_start(NULL);
}

/* Run kraken-bench with the given arguments plus --json --quiet against the server (unless
 * the arguments name a port). Captures stdout into out and stderr into err; returns the
 * exit status (-1 when killed). */
static int tb_bench(const char *const *args, char *out, size_t outcap, char *err, size_t errcap)
{
    const char *bin = getenv("KRAKEN_BENCH_BIN");
    cr_assert_not_null(bin, "KRAKEN_BENCH_BIN must name kraken-bench");
    char port[16];
    snprintf(port, sizeof(port), "%u", kr_it_srv.port);
    const char *argv[64];
    int argc = 0, has_port = 0;
    argv[argc++] = bin;
    for (int i = 0; args[i] && argc < 56; i++) {
        if (strcmp(args[i], "--port") == 0)
            has_port = 1;
        argv[argc++] = args[i];
    }
    if (!has_port) {
        argv[argc++] = "--port";
        argv[argc++] = port;
    }
    argv[argc++] = "--json";
    argv[argc++] = "--quiet";
    argv[argc] = NULL;
    int po[2], pe[2];
    cr_assert_eq(pipe(po), 0);
    cr_assert_eq(pipe(pe), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        close(po[1]);
        close(pe[1]);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    size_t no = 0, ne = 0;
    int open_fds = 2;
    struct pollfd pfd[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (open_fds > 0 && tb_ms_since(&t0) < TB_BENCH_MS) {
        if (poll(pfd, 2, 100) <= 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char tmp[4096];
            ssize_t n = read(pfd[i].fd, tmp, sizeof(tmp));
            if (n <= 0) {
                close(pfd[i].fd);
                pfd[i].fd = -1;
                open_fds--;
                continue;
            }
            char *dst = i == 0 ? out : err;
            size_t *len = i == 0 ? &no : &ne;
            size_t cap = i == 0 ? outcap : errcap;
            size_t take = (size_t)n < cap - 1 - *len ? (size_t)n : cap - 1 - *len;
            memcpy(dst + *len, tmp, take);
            *len += take;
        }
    }
    out[no] = 0;
    err[ne] = 0;
    for (int i = 0; i < 2; i++)
        if (pfd[i].fd >= 0)
            close(pfd[i].fd);
    int st = 0;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (tb_ms_since(&t0) >= TB_BENCH_MS) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            cr_assert_fail("kraken-bench did not finish within %d ms", TB_BENCH_MS);
        }
        kr_it_sleep_ms(10);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A numeric field of the JSON line (asserts that it is there). */
static double tb_num(const char *json, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(json, pat);
    cr_assert_not_null(p, "no %s in %s", key, json);
    return strtod(p + strlen(pat), NULL);
}

static int tb_str_is(const char *json, const char *key, const char *want)
{
    char pat[128];
    snprintf(pat, sizeof(pat), "\"%s\":\"%s\"", key, want);
    return strstr(json, pat) != NULL;
}

static char out[16384], err[16384];

/* The accounting every message scenario must satisfy. */
static void tb_assert_clean(const char *json)
{
    cr_assert(tb_str_is(json, "status", "ok"), "status not ok: %s\nstderr: %s", json, err);
    cr_assert_gt(tb_num(json, "published"), 0, "%s", json);
    cr_assert_gt(tb_num(json, "expected"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "delivered"), tb_num(json, "expected"), "%s", json);
    cr_assert_eq(tb_num(json, "loss"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "duplicates"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "order_errors"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "corrupt"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "unexpected"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "errors"), 0, "%s", json);
}

TestSuite(bench_it, .init = tb_start_default, .fini = kr_it_fixture_stop, .timeout = 300);

Test(bench_it, fanout)
{
    const char *a[] = {"--scenario", "fanout", "--subs", "10", "--pubs", "3", "--topics", "50",
                       "--topics-per-sub", "5", "--duration", "1", "--threads", "2", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    tb_assert_clean(out);
    cr_assert_eq(tb_num(out, "connections"), 13);
    cr_assert_eq(tb_num(out, "server_cpu_s"), -1, "not measured without --server-pid: %s", out);
    cr_assert_eq(tb_num(out, "lat_count"), tb_num(out, "delivered"), "%s", out);
}

Test(bench_it, fanout_batched_paced_polls_big_messages)
{
    const char *a[] = {"--scenario", "fanout", "--subs", "8", "--pubs", "2", "--topics", "20",
                       "--topics-per-sub", "4", "--batch", "8", "--poll-ms", "2", "--msg-size",
                       "3000", "--pipeline", "4", "--duration", "1", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    tb_assert_clean(out);
}

Test(bench_it, broadcast)
{
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", (int)kr_it_srv.pid);
    const char *a[] = {"--scenario", "broadcast", "--subs", "20", "--duration", "1",
                       "--server-pid", pid, NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    tb_assert_clean(out);
    /* everyone is on the one topic: each message reaches all 20 */
    cr_assert_eq(tb_num(out, "expected"), 20 * tb_num(out, "published"), "%s", out);
    /* the server's CPU over the timed phase, and the deliveries per CPU-second */
    cr_assert_gt(tb_num(out, "server_cpu_s"), 0, "%s", out);
    cr_assert_gt(tb_num(out, "per_server_cpu_s"), 0, "%s", out);
}

Test(bench_it, latency)
{
    const char *a[] = {"--scenario", "latency", "--rate", "2000", "--subs", "10", "--pubs", "2",
                       "--topics", "20", "--topics-per-sub", "4", "--duration", "1", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    tb_assert_clean(out);
    cr_assert_gt(tb_num(out, "lat_p50_us"), 0);
    cr_assert_geq(tb_num(out, "lat_max_us"), tb_num(out, "lat_p99_us"));
}

Test(bench_it, churn)
{
    const char *a[] = {"--scenario", "churn", "--subs", "4", "--topics", "100", "--duration", "1",
                       NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    cr_assert(tb_str_is(out, "status", "ok"), "%s", out);
    cr_assert_gt(tb_num(out, "ops"), 0, "%s", out);
    cr_assert_eq(tb_num(out, "lat_count"), tb_num(out, "ops"), "%s", out);
    cr_assert_eq(tb_num(out, "errors"), 0, "%s", out);
}

Test(bench_it, conns_with_server_rss)
{
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", (int)kr_it_srv.pid);
    const char *a[] = {"--scenario", "conns", "--conns", "300", "--topics-per-sub", "2",
                       "--duration", "0.5", "--server-pid", pid, NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    cr_assert(tb_str_is(out, "status", "ok"), "%s", out);
    cr_assert_eq(tb_num(out, "connections"), 300);
    cr_assert_gt(tb_num(out, "rss_before_kb"), 0, "%s", out);
    cr_assert_gt(tb_num(out, "rss_after_kb"), 0, "%s", out);
    cr_assert_eq(tb_num(out, "errors"), 0, "%s", out);
}

Test(bench_it, retro_replays_everything)
{
    const char *a[] = {"--scenario", "retro", "--subs", "4", "--pubs", "2", "--topics", "20",
                       "--topics-per-sub", "5", "--messages", "800", "--duration", "5", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    if (tb_str_is(out, "status", "unsupported")) {
        cr_assert_eq(rc, 3);
        cr_assert(strstr(err, "register"), "the error must name the request: %s", err);
        cr_log_warn("the server does not support retroactive subscriptions: %s", err);
        return;
    }
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    tb_assert_clean(out);
    cr_assert_eq(tb_num(out, "published"), 800, "%s", out);
    cr_assert_eq(tb_num(out, "not_found"), 0, "%s", out);
    cr_assert_eq(tb_num(out, "replayed"), tb_num(out, "expected"), "%s", out);
}

static void tb_start_short_history(void)
{
    kr_it_fixture_stop(); /* the suite's server, when the suite's init ran first */
    /* one net thread: the publishes and the later retroactive subscribes reach each shard
     * through the same ring, in order (with two, a subscribe could overtake publishes still
     * queued towards the shard, which then still held the horizon: a flaky STORED) */
    const char *extra[] = {"-kraken", "messages_stored_per_router_shard", "10",
                           "-kraken", "num_net_threads", "1", NULL};
    tb_start(extra);
}

/* History shorter than what was published since the register: NOT_FOUND, reported. */
Test(bench_it, retro_not_found_is_reported, .init = tb_start_short_history)
{
    const char *a[] = {"--scenario", "retro", "--subs", "3", "--pubs", "1", "--topics", "10",
                       "--topics-per-sub", "3", "--messages", "500", "--duration", "5", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    if (tb_str_is(out, "status", "unsupported")) {
        cr_log_warn("the server does not support retroactive subscriptions: %s", err);
        return;
    }
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    cr_assert(tb_str_is(out, "status", "ok"), "%s", out);
    cr_assert_eq(tb_num(out, "not_found"), 3, "%s", out);
    cr_assert_eq(tb_num(out, "replayed"), 0, "%s", out);
}

/* resume: every subscriber is cut mid-run and resumes from its last position; nothing
 * acknowledged may be lost or delivered twice, and every subscriber is live again. */
static void tb_assert_resumed(const char *json, double subs)
{
    cr_assert_eq(tb_num(json, "lost"), 0, "%s\nstderr: %s", json, err);
    cr_assert_eq(tb_num(json, "loss"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "duplicates"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "order_errors"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "corrupt"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "unexpected"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "errors"), 0, "%s", json);
    cr_assert_eq(tb_num(json, "cut"), subs, "%s", json);
    cr_assert_eq(tb_num(json, "live_again"), subs, "%s", json);
    cr_assert_gt(tb_num(json, "published"), 0, "%s", json);
    cr_assert(tb_str_is(json, "status", "ok"), "%s", json);
}

Test(bench_it, resume_from_the_last_position)
{
    const char *a[] = {"--scenario", "resume", "--proto", "memcached", "--subs", "20",
                       "--topics", "100", "--topics-per-sub", "10", "--rate", "5000",
                       "--duration", "2", "--jitter-ms", "200", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    tb_assert_resumed(out, 20);
    cr_assert(tb_str_is(out, "resume_mode", "token"), "%s", out);
}

/* The same over RESP: __kraken__:position messages carry the token, KRAKEN.RESUME resumes. */
Test(bench_it, resume_over_resp)
{
    const char *a[] = {"--scenario", "resume", "--proto", "resp", "--subs", "20", "--topics",
                       "100", "--topics-per-sub", "10", "--rate", "5000", "--duration", "2",
                       "--jitter-ms", "200", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    tb_assert_resumed(out, 20);
}

/* From scratch nothing is replayed and every topic of every subscriber is to reload; what
 * was published while it was away is covered by that, so nothing counts as lost. */
Test(bench_it, resume_from_scratch_reloads_every_topic)
{
    const char *a[] = {"--scenario", "resume", "--resume-mode", "scratch", "--subs", "20",
                       "--topics", "100", "--topics-per-sub", "10", "--rate", "5000",
                       "--duration", "2", "--jitter-ms", "200", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    tb_assert_resumed(out, 20);
    cr_assert_eq(tb_num(out, "reload_topics"), 200, "%s", out);
    cr_assert_eq(tb_num(out, "replayed"), 0, "%s", out);
}

static void tb_start_tiny_history(void)
{
    kr_it_fixture_stop();
    const char *extra[] = {"-kraken", "messages_stored_per_router_shard", "8", NULL};
    tb_start(extra);
}

/* A history of 8 messages per shard cannot replay what a cut of up to 200 ms missed: those
 * topics get resync notices, and still nothing is lost. */
Test(bench_it, resume_with_a_tiny_history_resyncs_and_loses_nothing, .init = tb_start_tiny_history)
{
    const char *a[] = {"--scenario", "resume", "--subs", "20", "--topics", "100",
                       "--topics-per-sub", "10", "--rate", "5000", "--duration", "2",
                       "--jitter-ms", "200", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    tb_assert_resumed(out, 20);
    cr_assert_gt(tb_num(out, "resync_topics"), 0, "%s", out);
    cr_assert_gt(tb_num(out, "covered"), 0, "%s", out);
}

Test(bench_it, connection_refused_is_a_clear_error)
{
    /* a port nobody listens on: bind one, learn it, close it */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a4);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a4, sizeof(a4)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a4, &len), 0);
    char port[16];
    snprintf(port, sizeof(port), "%u", ntohs(a4.sin_port));
    close(fd);
    const char *a[] = {"--port", port, "--subs", "2", "--pubs", "1", "--duration", "1", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 3, "exit %d\n%s\n%s", rc, out, err);
    cr_assert(strstr(err, "connection refused"), "stderr: %s", err);
    cr_assert(tb_str_is(out, "status", "error"), "%s", out);
}

/* Subscribe storms: one request of many new topics, then many connections at once. The
 * server answers every request STORED and, once the bench unsubscribed and closed, holds
 * none of the topics any more. */
Test(bench_it, storm_subscribes_new_topics)
{
    const char *a[] = {"--scenario", "storm", "--topics", "20000", "--subs", "20",
                       "--topics-per-sub", "500", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    cr_assert(tb_str_is(out, "status", "ok"), "%s", out);
    cr_assert_eq(tb_num(out, "storm_topics"), 20000, "%s", out);
    cr_assert_gt(tb_num(out, "storm_bytes"), 20000 * 2, "%s", out);
    cr_assert_gt(tb_num(out, "storm_one_s"), 0, "%s", out);
    cr_assert_gt(tb_num(out, "storm_unsub_s"), 0, "%s", out);
    cr_assert_eq(tb_num(out, "storm_conns"), 20, "%s", out);
    cr_assert_eq(tb_num(out, "storm_answered"), 20, "%s", out);
    cr_assert_gt(tb_num(out, "storm_all_s"), 0, "%s", out);
    cr_assert_leq(tb_num(out, "storm_p50_ms"), tb_num(out, "storm_max_ms"), "%s", out);
    cr_assert_eq(tb_num(out, "errors"), 0, "%s", out);
    cr_assert_eq(tb_num(out, "connections"), 21, "%s", out);
    /* the one request's topics were unsubscribed; the 20 connections' go with their close */
    for (int i = 0; i < 500 && kr_it_stat(kr_it_srv.port, "topics") != 0; i++)
        kr_it_sleep_ms(10);
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "topics"), 0);
    /* a second run against the same server: its topics are tagged anew */
    const char *b[] = {"--scenario", "storm", "--topics", "3000", "--subs", "1",
                       "--topics-per-sub", "3000", NULL};
    rc = tb_bench(b, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    cr_assert_eq(tb_num(out, "storm_answered"), 1, "%s", out);
}

static void tb_start_small_requests(void)
{
    kr_it_fixture_stop();
    const char *extra[] = {"-kraken", "max_request_bytes", "65536", NULL};
    tb_start(extra);
}

/* A storm larger than the server's max_request_bytes: the refusal and the setting to raise
 * are reported, exit 3. */
Test(bench_it, storm_over_max_request_bytes_is_a_clear_error, .init = tb_start_small_requests)
{
    const char *a[] = {"--scenario", "storm", "--topics", "100000", "--subs", "0", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 3, "exit %d\n%s\n%s", rc, out, err);
    cr_assert(strstr(err, "max_request_bytes"), "stderr: %s", err);
    cr_assert(tb_str_is(out, "status", "error"), "%s", out);
}

Test(bench_it, bad_options_exit_2)
{
    const char *bad[][4] = {
        {"--no-such-option", NULL},
        {"--threads", "0", NULL},
        {"--proto", "carrier-pigeon", NULL},
        {"--msg-size", "8", NULL},
        {"--scenario", "retro", "--proto", "redis"},
        {"--topics", "5", "--topics-per-sub", "6"},
        {"--scenario", "resume", "--proto", "nats"},
        {"--jitter-ms", "5", NULL},
        {"--scenario", "resume", "--resume-mode", "later"},
        {"--scenario", "storm", "--proto", "redis"},
        {"--scenario", "storm", "--pubs", "2"},
        {"--move-port", "4000", NULL},                      /* resume only */
        {"--scenario", "resume", "--drain-admin", "/x.sock"}, /* nowhere to move to */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *a[6] = {bad[i][0], bad[i][1], bad[i][2], bad[i][3], NULL, NULL};
        int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
        cr_assert_eq(rc, 2, "case %zu: exit %d, stderr %s", i, rc, err);
        cr_assert_gt(strlen(err), 0, "case %zu: no message", i);
    }
}

/* Across servers: subscribers on one NATS server, publishers on another routed to it. The
 * probes make sure every subscriber's interest reached the publishers' server before the
 * clock starts, so nothing published in the timed phase is lost to interest still on its
 * way (the accounting must come out clean). */
static struct kr_it_nats tb_nats[2];

static void tb_nats_stop(void)
{
    kr_it_nats_cluster_stop(tb_nats, 2);
}

Test(bench_cross, nats_fanout_across_two_routed_servers, .fini = tb_nats_stop, .timeout = 300)
{
    kr_it_nats_cluster_start(tb_nats, 2);
    char pport[16], sport[16];
    snprintf(pport, sizeof(pport), "%u", tb_nats[0].port);
    snprintf(sport, sizeof(sport), "%u", tb_nats[1].port);
    const char *a[] = {"--proto", "nats", "--port", pport, "--sub-port", sport, "--scenario",
                       "fanout", "--subs", "20", "--pubs", "2", "--topics", "100",
                       "--topics-per-sub", "10", "--rate", "5000", "--duration", "1", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    tb_assert_clean(out);
    cr_assert_eq(tb_num(out, "sub_port"), tb_nats[1].port, "%s", out);
    cr_assert_eq(tb_num(out, "port"), tb_nats[0].port, "%s", out);
    cr_assert(strstr(out, "\"probe\":true"), "probes are on by default across servers: %s", out);
    cr_assert_geq(tb_num(out, "probes"), 20, "one probe per subscriber at least: %s", out);
    /* the subscribers really were on the other server: kraken-bench names both ends */
    const char *b[] = {"--proto", "nats", "--port", pport, "--sub-port", sport, "--scenario",
                       "broadcast", "--subs", "5", "--rate", "2000", "--duration", "0.5", NULL};
    rc = tb_bench(b, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    tb_assert_clean(out);
    cr_assert_geq(tb_num(out, "probes"), 5, "%s", out);
}

/* A subscriber server nobody listens on: a clear connection error, exit 3. */
Test(bench_cross, sub_port_refused_is_a_clear_error, .init = tb_start_default, .fini = kr_it_fixture_stop)
{
    char pport[16], sport[16];
    snprintf(pport, sizeof(pport), "%u", kr_it_srv.port);
    snprintf(sport, sizeof(sport), "%u", kr_it_free_port());
    const char *a[] = {"--port", pport, "--sub-port", sport, "--subs", "2", "--pubs", "1",
                       "--duration", "1", NULL};
    int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 3, "exit %d\n%s\n%s", rc, out, err);
    char want[64];
    snprintf(want, sizeof(want), ": cannot connect to 127.0.0.1:%s", sport);
    cr_assert(strstr(err, "subscriber ") && strstr(err, want), "stderr: %s", err);
}

/* The probe path of each protocol against one Kraken server (forced with --probe; Kraken's
 * subscribers poll for their probe, RESP ones get it pushed): clean accounting, the probes
 * neither delivered nor counted as publishes. */
Test(bench_cross, probes_over_kraken_and_resp, .init = tb_start_default, .fini = kr_it_fixture_stop)
{
    const char *protos[] = {"kraken", "redis"};
    for (int i = 0; i < 2; i++) {
        const char *a[] = {"--proto", protos[i], "--probe", "--scenario", "fanout", "--subs", "6",
                           "--pubs", "2", "--topics", "30", "--topics-per-sub", "3", "--batch",
                           i == 0 ? "4" : "1", "--duration", "0.5", NULL};
        int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
        cr_assert_eq(rc, 0, "%s: exit %d\n%s\n%s", protos[i], rc, out, err);
        tb_assert_clean(out);
        cr_assert(strstr(out, "\"probe\":true"), "%s", out);
        cr_assert_geq(tb_num(out, "probes"), 6, "%s: %s", protos[i], out);
    }
    /* and off by default on one server */
    const char *b[] = {"--scenario", "fanout", "--subs", "2", "--pubs", "1", "--duration", "0.3",
                       NULL};
    int rc = tb_bench(b, out, sizeof(out), err, sizeof(err));
    cr_assert_eq(rc, 0, "exit %d\n%s\n%s", rc, out, err);
    cr_assert(strstr(out, "\"probe\":false"), "%s", out);
    cr_assert_eq(tb_num(out, "probes"), 0, "%s", out);
}

/* Resume across two nodes, with a drain: subscribers on node A, publishers on node B (each
 * node on its own NATS server of a routed pair). Mid-run kraken-bench drains A through its
 * admin socket; A closes every subscriber (memcached: after its last poll reply; RESP: after
 * a last __kraken__:position), each one resumes on B with A's token, and B asks A (still
 * answering: drain_resume_window_ms) for what came after it. Nothing acknowledged may be
 * lost or delivered twice; resuming, nothing is resynced and the replay is not empty (B
 * really got the missed messages from A); from scratch every topic is to reload. */
static struct kr_it_server tb_node_a, tb_node_b;

static void tb_nodes_stop(void)
{
    if (tb_node_a.pid)
        kr_it_stop(&tb_node_a);
    if (tb_node_b.pid)
        kr_it_stop(&tb_node_b);
    kr_it_nats_cluster_stop(tb_nats, 2);
}

static void tb_node_start(struct kr_it_server *s, const struct kr_it_nats *on, const char *name,
                          const char *window)
{
    char url[64];
    kr_it_nats_url(on, url, sizeof(url));
    const char *args[] = {"--cluster_nats_url", url, "--cluster_node_name", name,
                          "--drain_resume_window_ms", window, "--drain_timeout_ms", "1000",
                          "--poll_wait_ms", "20", NULL};
    kr_it_start(s, args);
}

Test(bench_cross, resume_across_two_nodes_with_a_drain, .fini = tb_nodes_stop, .timeout = 300)
{
    kr_it_nats_cluster_start(tb_nats, 2);
    tb_node_start(&tb_node_b, &tb_nats[0], "node-b", "0");
    static const struct {
        const char *proto, *mode;
    } runs[] = {{"memcached", "token"}, {"resp", "token"}, {"memcached", "scratch"}};
    for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
        /* a fresh node A each time: a drained node leaves once its window is over (or at
         * the next SIGTERM) */
        tb_node_start(&tb_node_a, &tb_nats[1], "node-a", "30000");
        kr_it_wait_stat(tb_node_a.port, "cluster_peers", KR_IT_GE, 1);
        kr_it_wait_stat(tb_node_b.port, "cluster_peers", KR_IT_GE, 1);
        char pport[16], sport[16], prefix[16];
        snprintf(pport, sizeof(pport), "%u", tb_node_b.port);
        snprintf(sport, sizeof(sport), "%u", tb_node_a.port);
        /* topics of their own per run: node B outlives the runs, and the history it keeps
         * of an earlier run's topics is no business of the next one */
        snprintf(prefix, sizeof(prefix), "kb%zu.", i);
        const char *a[] = {"--scenario", "resume", "--proto", runs[i].proto, "--resume-mode",
                           runs[i].mode, "--port", pport, "--sub-port", sport, "--drain-admin",
                           tb_node_a.admin_path, "--subs", "20", "--pubs", "2", "--topics",
                           "100", "--topics-per-sub", "5", "--rate", "2000", "--duration", "3",
                           "--cut-at", "0.5", "--jitter-ms", "200", "--prefix", prefix,
                           "--show-lost", "5", NULL};
        int rc = tb_bench(a, out, sizeof(out), err, sizeof(err));
        /* stderr first: the lost messages it describes must not be cut off by the JSON */
        cr_assert_eq(rc, 0, "%s %s: exit %d\n%s\n%s", runs[i].proto, runs[i].mode, rc, err, out);
        tb_assert_resumed(out, 20);
        cr_assert(strstr(out, "\"drain\":true"), "%s", out);
        cr_assert_eq(tb_num(out, "stayed"), 0, "%s", out);
        cr_assert_eq(tb_num(out, "move_port"), tb_node_b.port, "%s", out);
        cr_assert(strstr(out, "\"drain_reply\":\"DRAINING clients="), "%s", out);
        cr_assert(kr_it_log_contains(&tb_node_a, "drain finished"), "node A did not drain");
        if (strcmp(runs[i].mode, "token") == 0) {
            cr_assert_eq(tb_num(out, "resync_topics"), 0, "%s", out);
            cr_assert_eq(tb_num(out, "reload_topics"), 0, "%s", out);
            cr_assert_gt(tb_num(out, "replayed"), 0, "nothing replayed from node A: %s", out);
        } else {
            cr_assert_eq(tb_num(out, "reload_topics"), 20 * 5, "%s", out);
        }
        kr_it_stop(&tb_node_a);
    }
}
