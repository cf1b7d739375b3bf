/* The client examples of docs/examples (docs/protocol.md, "Client examples") against the
 * real server: each runs as its own process, the test publishes a numbered stream to its
 * two topics and, while publishing goes on, makes it drop its connection three times
 * (SIGUSR2: the example closes its socket, unread data and all, and resumes with its last
 * position token). It must have handed every message to its onMessage hook exactly once and
 * never called onResync: lost nothing, reloaded nothing. One node only: resuming on another
 * node is not implemented yet (any other node answers with a resync notice for every topic).
 * A missing interpreter or client library fails the test, naming the package. */
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

/* Wait (bounded) until both topics of the example have a subscriber (admin dump_topics). */
static void wait_subscribed(void)
{
    static char dump[4096];
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
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

/* Run the example (argv; env added), with the stream, the cuts and the checks. */
static void example_case(char *const argv[], char *env, const char *out)
{
    pid_t ex = example = spawn(argv, env, out);
    cr_assert(wait_output(out, "connected "), "the example did not connect: %s", buf);
    wait_subscribed();
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
    for (unsigned k = 1; k <= n; k++) {
        line_of(k, line, sizeof(line));
        cr_assert_eq(count(o, line), 1, "message %u handed over %u times (of %u messages; see %s)",
                     k, count(o, line), n, out);
    }
    cr_assert_eq(count(o, "message "), n, "%u lines for %u messages", count(o, "message "), n);
    unlink(out); /* kept when the test failed */
}

/* docs/examples/ioredis-resume.js: ioredis (npm, pinned in test/clients/node/package-lock.json;
 * `npm ci` there installs it, and the example finds it through NODE_PATH). */
Test(examples, ioredis_resume_loses_nothing_and_reloads_nothing)
{
    need_exe("/usr/bin/node", "nodejs");
    const char *src = getenv("KRAKEN_SOURCE_DIR");
    cr_assert_not_null(src);
    char script[512], mod[512], nodes[64], out[256];
    static char env[600];
    snprintf(script, sizeof(script), "%s/docs/examples/ioredis-resume.js", src);
    snprintf(mod, sizeof(mod), "%s/test/clients/node/node_modules/ioredis/package.json", src);
    struct stat st;
    cr_assert_eq(stat(mod, &st), 0,
                 "ioredis (npm package) is not installed: run `npm ci` in %s/test/clients/node "
                 "(sh cmake/deps.sh does)", src);
    snprintf(env, sizeof(env), "NODE_PATH=%s/test/clients/node/node_modules", src);
    snprintf(nodes, sizeof(nodes), "127.0.0.1:%u", kr_it_srv.port);
    snprintf(out, sizeof(out), "%s.ioredis-example", kr_it_srv.log_path);
    char *argv[] = {"/usr/bin/node", script, nodes, "exa", "exb", NULL};
    example_case(argv, env, out);
}

/* docs/examples/redis_py_resume.py: redis-py (Debian package python3-redis). */
Test(examples, redis_py_resume_loses_nothing_and_reloads_nothing)
{
    need_exe("/usr/bin/python3", "python3");
    cr_assert_eq(system("/usr/bin/python3 -c 'import redis' 2>/dev/null"), 0,
                 "redis-py is not installed (Debian package python3-redis; sh cmake/deps.sh "
                 "installs it)");
    const char *src = getenv("KRAKEN_SOURCE_DIR");
    cr_assert_not_null(src);
    char script[512], nodes[64], out[256];
    snprintf(script, sizeof(script), "%s/docs/examples/redis_py_resume.py", src);
    snprintf(nodes, sizeof(nodes), "127.0.0.1:%u", kr_it_srv.port);
    snprintf(out, sizeof(out), "%s.redis-py-example", kr_it_srv.log_path);
    char *argv[] = {"/usr/bin/python3", script, nodes, "exa", "exb", NULL};
    example_case(argv, NULL, out);
}
