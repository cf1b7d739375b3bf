/* The client examples of docs/examples (docs/protocol.md, "Client examples") against the
 * real server, each run as its own process on the topics exa (odd numbers) and exb (even
 * numbers) of a numbered stream.
 * - examples: one node. While the stream flows the test makes the example drop its
 *   connection three times (SIGUSR2: the example closes its socket, unread data and all, and
 *   resumes on the same node with its last position token).
 * - moving: two nodes A and B on a 2-server NATS cluster; the example is given "A,B". The
 *   stream comes from a publisher on each node (exa from A, exb from B); mid-stream the test
 *   drains node A (admin drain), exa's publishing moves to B, and the example must move to
 *   B and resume there with A's last token (B asks A, which answers while it drains).
 * Either way the example must have handed every message to its onMessage hook exactly once,
 * in order per topic, and never called onResync: lost nothing, reloaded nothing. A missing
 * interpreter or client library fails the test, naming the package. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[1 << 20];

KR_IT_FIXTURE(start, "--num_router_shards", "3", "--num_net_threads", "2");
static pid_t example; /* the running example, stopped by stop() when a test failed */
static void stop(void);
TestSuite(examples, .init = start, .fini = stop);

#define CUTS 3
#define AFTER_CUT 300 /* messages published between cuts, at least */
#define MAX_MSGS 20000

/* Fail the test unless `path` is an executable, naming the Debian package it comes from. */
static void need_exe(const char *path, const char *package)
{
    cr_assert_eq(access(path, X_OK), 0, "%s is not installed (Debian package %s; sh cmake/deps.sh "
                 "installs it)", path, package);
}

/* Start argv with stdout and stderr to `out`, and `env` ("NAME=value" or NULL) added. */
static pid_t spawn(char *const argv[], char *env, const char *out)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        FILE *f = freopen(out, "w", stdout);
        (void)f;
        dup2(1, 2);
        if (env)
            putenv(env);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* Stop pid (SIGTERM, then SIGKILL after a bounded wait) and reap it. */
static void stop_pid(pid_t pid)
{
    kill(pid, SIGTERM);
    for (int i = 0; i < 500; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        kr_it_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static void stop(void)
{
    if (example > 0)
        stop_pid(example);
    example = 0;
    kr_it_fixture_stop();
}

/* The example's output so far, into buf. */
static const char *output(const char *path)
{
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    buf[n] = 0;
    if (f)
        fclose(f);
    return buf;
}

static unsigned count(const char *hay, const char *needle)
{
    unsigned n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* Wait (bounded) until the example's output contains needle. */
static bool wait_output(const char *path, const char *needle)
{
    for (int i = 0; i < 1000; i++) {
        if (strstr(output(path), needle))
            return true;
        kr_it_sleep_ms(10);
    }
    return false;
}

/* Wait (bounded) until both topics of the example have a subscriber on server s (admin
 * dump_topics). */
static void wait_subscribed(const struct kr_it_server *s)
{
    static char dump[4096];
    int fd = kr_it_connect_unix(s->admin_path);
    for (int i = 0; i < 1000; i++) {
        kr_it_admin(fd, "dump_topics", dump, sizeof(dump));
        if (strstr(dump, "TOPIC 1 exa\n") && strstr(dump, "TOPIC 1 exb\n"))
            break;
        kr_it_sleep_ms(10);
    }
    close(fd);
    cr_assert(strstr(dump, "TOPIC 1 exa\n") && strstr(dump, "TOPIC 1 exb\n"),
              "the example's topics are not subscribed: %s", dump);
}

/* Message n goes to exa when odd, exb when even; its payload is n. */
static void publish_n(int pub, unsigned n)
{
    char p[16];
    int len = snprintf(p, sizeof(p), "%u", n);
    kr_it_publish(pub, n % 2 ? "exa" : "exb", p, (size_t)len);
}

static void line_of(unsigned n, char *line, size_t cap)
{
    snprintf(line, cap, "message %s %u\n", n % 2 ? "exa" : "exb", n);
}

/* The example's output o holds the stream 1..n as it must: every "message" line is one of
 * it, exa's are 1, 3, 5, ... and exb's 2, 4, 6, ... in this order (each once, in order per
 * topic), and both topics reached the end of the stream. */
static void check_stream(const char *o, unsigned n, const char *out)
{
    unsigned next[2] = {2, 1}; /* the next number expected on exb, on exa */
    unsigned lines = 0;
    for (const char *p = o; (p = strstr(p, "message ")); p++) {
        if (p != o && p[-1] != '\n')
            continue; /* not at the start of a line */
        char topic[8];
        unsigned k;
        cr_assert_eq(sscanf(p, "message %7s %u\n", topic, &k), 2, "line %.40s (see %s)", p, out);
        int odd = strcmp(topic, "exa") == 0;
        cr_assert(odd || strcmp(topic, "exb") == 0, "a message on %s (see %s)", topic, out);
        cr_assert_eq(k, next[odd],
                     "%s: message %u handed over where %u was due (lost, repeated or out of "
                     "order; of %u messages; see %s)",
                     topic, k, next[odd], n, out);
        next[odd] += 2;
        lines++;
    }
    cr_assert(next[1] > n && next[0] > n, "the stream stopped at exa %u, exb %u of %u (see %s)",
              next[1] - 2, next[0] - 2, n, out);
    cr_assert_eq(lines, n, "%u lines for %u messages", lines, n);
}

/* Run the example (argv; env added), with the stream, the cuts and the checks. */
static void example_case(char *const argv[], char *env, const char *out)
{
    pid_t ex = example = spawn(argv, env, out);
    cr_assert(wait_output(out, "connected "), "the example did not connect: %s", buf);
    wait_subscribed(&kr_it_srv);
    int pub = kr_it_connect(kr_it_srv.port);
    char line[64];

    /* a first stream, all handed over, so that the example holds a position token (it
     * comes right after the messages it covers) */
    unsigned n = 0;
    while (n < 200)
        publish_n(pub, ++n);
    line_of(n, line, sizeof(line));
    cr_assert(wait_output(out, line), "the first messages did not arrive (see %s)", out);
    kr_it_sleep_ms(200);

    /* the stream goes on; a cut every AFTER_CUT messages or more, each once the example
     * has reconnected after the one before and handed over messages published after it
     * (the stream flows again; messages are in flight to it) */
    unsigned cuts = 0, last_cut = 0;
    while (cuts < CUTS || n < last_cut + AFTER_CUT) {
        publish_n(pub, ++n);
        cr_assert(n < MAX_MSGS, "the example did not resume live traffic after cut %u (see %s)",
                  cuts, out);
        if (n % 5 == 0)
            kr_it_sleep_ms(1);
        if (cuts < CUTS && n >= last_cut + AFTER_CUT && n % 10 == 5) {
            line_of(last_cut + AFTER_CUT / 2, line, sizeof(line));
            const char *o = output(out);
            if (count(o, "connected ") == cuts + 1 && strstr(o, line)) {
                kill(ex, SIGUSR2);
                cuts++;
                last_cut = n;
            }
        }
    }
    close(pub);

    /* the last messages of both topics handed over, then a moment for any duplicate */
    line_of(n, line, sizeof(line));
    cr_assert(wait_output(out, line), "message %u did not arrive (see %s)", n, out);
    line_of(n - 1, line, sizeof(line));
    cr_assert(wait_output(out, line), "message %u did not arrive (see %s)", n - 1, out);
    kr_it_sleep_ms(300);
    stop_pid(ex);
    example = 0;

    const char *o = output(out);
    cr_assert_eq(count(o, "\ndropping the connection"), CUTS, "see %s", out);
    cr_assert_eq(count(o, ", resuming\n"), CUTS, "each reconnection resumes (see %s)", out);
    cr_assert_eq(count(o, "\nresync "), 0, "onResync was called (see %s)", out);
    cr_assert_eq(count(o, "\nerror "), 0, "the client reported an error (see %s)", out);
    check_stream(o, n, out);
    unlink(out); /* kept when the test failed */
}

/* docs/examples/ioredis-resume.js: ioredis (npm, pinned in test/clients/node/package-lock.json;
 * `npm ci` there installs it, and the example finds it through NODE_PATH). The script's
 * path into script, the NODE_PATH setting into env (kept: putenv uses it). */
static void ioredis_setup(char *script, size_t cap, char **env)
{
    need_exe("/usr/bin/node", "nodejs");
    const char *src = getenv("KRAKEN_SOURCE_DIR");
    cr_assert_not_null(src);
    char mod[512];
    static char e[600];
    snprintf(script, cap, "%s/docs/examples/ioredis-resume.js", src);
    snprintf(mod, sizeof(mod), "%s/test/clients/node/node_modules/ioredis/package.json", src);
    struct stat st;
    cr_assert_eq(stat(mod, &st), 0,
                 "ioredis (npm package) is not installed: run `npm ci` in %s/test/clients/node "
                 "(sh cmake/deps.sh does)", src);
    snprintf(e, sizeof(e), "NODE_PATH=%s/test/clients/node/node_modules", src);
    *env = e;
}

/* docs/examples/redis_py_resume.py: redis-py (Debian package python3-redis). */
static void redis_py_setup(char *script, size_t cap)
{
    need_exe("/usr/bin/python3", "python3");
    cr_assert_eq(system("/usr/bin/python3 -c 'import redis' 2>/dev/null"), 0,
                 "redis-py is not installed (Debian package python3-redis; sh cmake/deps.sh "
                 "installs it)");
    const char *src = getenv("KRAKEN_SOURCE_DIR");
    cr_assert_not_null(src);
    snprintf(script, cap, "%s/docs/examples/redis_py_resume.py", src);
}

Test(examples, ioredis_resume_loses_nothing_and_reloads_nothing)
{
    char script[512], nodes[64], out[256], *env;
    ioredis_setup(script, sizeof(script), &env);
    snprintf(nodes, sizeof(nodes), "127.0.0.1:%u", kr_it_srv.port);
    snprintf(out, sizeof(out), "%s.ioredis-example", kr_it_srv.log_path);
    char *argv[] = {"/usr/bin/node", script, nodes, "exa", "exb", NULL};
    example_case(argv, env, out);
}

Test(examples, redis_py_resume_loses_nothing_and_reloads_nothing)
{
    char script[512], nodes[64], out[256];
    redis_py_setup(script, sizeof(script));
    snprintf(nodes, sizeof(nodes), "127.0.0.1:%u", kr_it_srv.port);
    snprintf(out, sizeof(out), "%s.redis-py-example", kr_it_srv.log_path);
    char *argv[] = {"/usr/bin/python3", script, nodes, "exa", "exb", NULL};
    example_case(argv, NULL, out);
}

/* ---------------------------------------------------------------- moving between nodes */

/* Two NATS servers routed to each other; node A (node[0]) on the first, node B (node[1]) on
 * the second, each with the other server for fail-over. A, the node drained, answers other
 * nodes' resumes for 10 s after its last client left (the example's move takes well under
 * a second); B is never drained here and stops at once at the end (window 0). */
static struct kr_it_nats nats[2];
static struct kr_it_server node[2];

static void node_start(int i, const char *window)
{
    char urls[160], first[64], second[64], name[16];
    kr_it_nats_url(&nats[i], first, sizeof(first));
    kr_it_nats_url(&nats[1 - i], second, sizeof(second));
    snprintf(urls, sizeof(urls), "%s,%s", first, second);
    snprintf(name, sizeof(name), "node%c", i ? 'B' : 'A');
    const char *args[] = {"--cluster_nats_url", urls, "--cluster_node_name", name,
                          "--drain_resume_window_ms", window, "--num_router_shards", "3",
                          "--num_net_threads", "2", NULL};
    kr_it_start(&node[i], args);
}

static void moving_start(void)
{
    kr_it_nats_cluster_start(nats, 2);
    node_start(0, "10000");
    node_start(1, "0");
    /* each has heard from the other, so a subscribe's barrier and a resume ask it */
    kr_it_wait_stat(node[0].port, "cluster_peers", KR_IT_EQ, 1);
    kr_it_wait_stat(node[1].port, "cluster_peers", KR_IT_EQ, 1);
}

/* Stop what the test started, by PID: the example, then the nodes (A is draining: its
 * resume window is cut short by the second SIGTERM, and it exits 0 at once), then NATS. */
static void moving_stop(void)
{
    if (example > 0)
        stop_pid(example);
    example = 0;
    for (int i = 0; i < 2; i++)
        if (node[i].pid > 0)
            kr_it_stop(&node[i]);
    kr_it_nats_cluster_stop(nats, 2);
}

TestSuite(moving, .init = moving_start, .fini = moving_stop);

/* Run the example (argv: nodes "A,B"; env added): a first stream while it is on A, the
 * drain of A mid-stream, the stream going on from B until the example resumed on B and
 * past, then the checks. */
static void move_case(char *const argv[], char *env, const char *out)
{
    char on_a[64], on_b[64], lost_a[64], line[64];
    snprintf(on_a, sizeof(on_a), "connected 127.0.0.1:%u, subscribing\n", node[0].port);
    snprintf(lost_a, sizeof(lost_a), "\nlost 127.0.0.1:%u ", node[0].port);
    snprintf(on_b, sizeof(on_b), "\nconnected 127.0.0.1:%u, resuming\n", node[1].port);
    example = spawn(argv, env, out);
    cr_assert(wait_output(out, on_a), "the example did not connect to node A: %s", buf);
    wait_subscribed(&node[0]);
    /* the cluster holds A's interest in the topics (B forwards them to A) once a subscribe
     * to them on A answers STORED: it waits for the same subscribe barrier the example's
     * subscription started, or a later one */
    int probe = kr_it_connect(node[0].port);
    kr_it_subscribe(probe, "exa exb");
    close(probe);

    /* publishers on both nodes: exa (odd) on A, exb (even) on B */
    int pa = kr_it_connect(node[0].port), pb = kr_it_connect(node[1].port);
    unsigned n = 0;
    while (n < 200) {
        n++;
        publish_n(n % 2 ? pa : pb, n);
    }
    line_of(n, line, sizeof(line));
    cr_assert(wait_output(out, line), "the first messages did not arrive (see %s)", out);
    line_of(n - 1, line, sizeof(line));
    cr_assert(wait_output(out, line), "the first messages did not arrive (see %s)", out);
    kr_it_sleep_ms(200); /* the example holds a position token of A's */

    /* the stream flows, and A is drained in the middle of it: after its last exa message
     * was acknowledged, B publishes both topics (exa's order is A's messages, then B's) */
    while (n < 2 * AFTER_CUT) {
        n++;
        publish_n(n % 2 ? pa : pb, n);
        if (n % 5 == 0)
            kr_it_sleep_ms(1);
    }
    static char cli[4096];
    cr_assert_eq(kr_it_cli(&node[0], cli, sizeof(cli), (const char *[]){"drain", NULL}), 0, "%s",
                 cli);
    cr_assert(strstr(cli, "DRAINING"), "%s", cli);
    close(pa); /* the drain closes it too */
    unsigned drained_at = n, moved_at = 0;
    while (!moved_at || n < moved_at + AFTER_CUT) {
        n++;
        publish_n(pb, n);
        cr_assert(n < MAX_MSGS, "the example did not resume on node B (see %s)", out);
        kr_it_sleep_ms(1);
        if (!moved_at && n % 10 == 0 && strstr(output(out), on_b))
            moved_at = n;
    }
    close(pb);

    /* the last messages of both topics handed over, then a moment for any duplicate */
    line_of(n, line, sizeof(line));
    cr_assert(wait_output(out, line), "message %u did not arrive (see %s)", n, out);
    line_of(n - 1, line, sizeof(line));
    cr_assert(wait_output(out, line), "message %u did not arrive (see %s)", n - 1, out);
    kr_it_sleep_ms(300);
    stop_pid(example);
    example = 0;

    const char *o = output(out);
    /* on A, closed by its drain, then on B (the next node of its list) by a resume */
    cr_assert(strncmp(o, on_a, strlen(on_a)) == 0, "its first connection is to A (see %s)", out);
    cr_assert_eq(count(o, "connected "), 2, "two connections, to A then B (see %s)", out);
    cr_assert_eq(count(o, on_b), 1, "it resumed on B (see %s)", out);
    cr_assert(strstr(o, lost_a) && strstr(o, lost_a) < strstr(o, on_b),
              "it lost A before it went to B (see %s)", out);
    cr_assert_eq(count(o, "\nresync "), 0, "onResync was called (see %s)", out);
    cr_assert_eq(count(o, "\nerror "), 0, "the client reported an error (see %s)", out);
    check_stream(o, n, out);
    /* B resumed A's token by asking A (which answered while draining), and told nothing */
    cr_assert_eq(kr_it_stat(node[1].port, "resume_moved"), 1);
    cr_assert_eq(kr_it_stat(node[1].port, "cluster_resumes_asked"), 1);
    cr_assert_eq(kr_it_stat(node[1].port, "resync_notices"), 0);
    cr_assert_eq(kr_it_stat(node[1].port, "cluster_resume_unanswered"), 0);
    cr_assert_eq(kr_it_admin_stat(&node[0], "cluster_resumes_served"), 1);
    cr_assert_gt(n, drained_at + AFTER_CUT, "the stream went on after the drain");
    unlink(out); /* kept when the test failed */
}

Test(moving, ioredis_moves_from_a_drained_node_and_loses_nothing_and_reloads_nothing)
{
    char script[512], nodes[64], out[256], *env;
    ioredis_setup(script, sizeof(script), &env);
    snprintf(nodes, sizeof(nodes), "127.0.0.1:%u,127.0.0.1:%u", node[0].port, node[1].port);
    snprintf(out, sizeof(out), "%s.ioredis-example", node[0].log_path);
    char *argv[] = {"/usr/bin/node", script, nodes, "exa", "exb", NULL};
    move_case(argv, env, out);
}

Test(moving, redis_py_moves_from_a_drained_node_and_loses_nothing_and_reloads_nothing)
{
    char script[512], nodes[64], out[256];
    redis_py_setup(script, sizeof(script));
    snprintf(nodes, sizeof(nodes), "127.0.0.1:%u,127.0.0.1:%u", node[0].port, node[1].port);
    snprintf(out, sizeof(out), "%s.redis-py-example", node[0].log_path);
    char *argv[] = {"/usr/bin/python3", script, nodes, "exa", "exb", NULL};
    move_case(argv, NULL, out);
}
