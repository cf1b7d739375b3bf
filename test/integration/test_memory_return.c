/* Integration tests of the allocator configuration: memory freed while the server goes
 * quiet is given back to the operating system (jemalloc's background thread and decay
 * times, set by the `malloc_conf` symbol of the kraken binary), and MALLOC_CONF still
 * overrides it. The real server on an ephemeral loopback port, raw bytes. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kr_itest.h"


#define MEM_TOPICS 200000
#define MEM_BATCH 10000

/* Subscribe or unsubscribe topics mem.0 .. mem.<MEM_TOPICS-1>, MEM_BATCH per request. */
static void topics_request(int fd, const char *cmd)
{
    static char data[MEM_BATCH * 16], req[MEM_BATCH * 16 + 64];
    for (int first = 0; first < MEM_TOPICS; first += MEM_BATCH) {
        size_t len = 0;
        for (int i = first; i < first + MEM_BATCH; i++)
            len += (size_t)snprintf(data + len, sizeof(data) - len, "%smem.%d",
                                    i == first ? "" : " ", i);
        int h = snprintf(req, sizeof(req), "set %s 0 0 %zu\r\n", cmd, len);
        memcpy(req + h, data, len);
        memcpy(req + h + len, "\r\n", 2);
        kr_it_send(fd, req, (size_t)h + len + 2);
        kr_it_expect(fd, "STORED\r\n");
    }
}

static void start_default(void)
{
    unsetenv("MALLOC_CONF");
    kr_it_fixture_start(NULL);
}

TestSuite(memory, .init = start_default, .fini = kr_it_fixture_stop, .timeout = 300);

#ifdef KR_TEST_JEMALLOC

/* The server's resident set in KiB (/proc/<pid>/status VmRSS). */
static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    long kib = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    cr_assert_gt(kib, 0, "no VmRSS in %s", path);
    return kib;
}

Test(memory, jemalloc_runs_a_background_thread)
{
    cr_assert(kr_it_wait_log(&kr_it_srv, "allocator: jemalloc, background_thread true, "
                                   "dirty_decay_ms 1000, muzzy_decay_ms 0"),
              "the allocator options of malloc_conf are not in force");
}

/* The server's resident set in KiB (a figure to wait for). */
static long long rss_figure(const void *server, const char *name)
{
    return rss_kib(((const struct kr_it_server *)server)->pid);
}

/* Regression: after a million topics were unsubscribed the server kept 135 MB resident
 * with 5.5 MB allocated: jemalloc purged unused pages only when the freeing threads
 * allocated again, and an idle server never does. */
Test(memory, rss_falls_back_after_topics_are_unsubscribed)
{
    int fd = kr_it_connect(kr_it_srv.port);
    long base = rss_kib(kr_it_srv.pid);
    topics_request(fd, "subscribe");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "topics"), MEM_TOPICS);
    long peak = rss_kib(kr_it_srv.pid);
    cr_assert_gt(peak - base, 10 * 1024, "200k topics grew RSS by only %ld KiB", peak - base);
    topics_request(fd, "unsubscribe");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "topics"), 0);
    /* half of what the topics took is given back (start base, peak peak) */
    cr_log_info("RSS: start %ld KiB, peak %ld KiB", base, peak);
    kr_it_wait_figure(rss_figure, &kr_it_srv, "the server's RSS in KiB", KR_IT_LE,
                      peak - (peak - base) / 2 - 1);
    close(fd);
}

static void start_env_override(void)
{
    setenv("MALLOC_CONF", "background_thread:false,dirty_decay_ms:5000", 1);
    kr_it_fixture_start(NULL);
    unsetenv("MALLOC_CONF");
}

TestSuite(memory_env, .init = start_env_override, .fini = kr_it_fixture_stop, .timeout = 120);

Test(memory_env, malloc_conf_environment_overrides_the_built_in_options)
{
    cr_assert(kr_it_wait_log(&kr_it_srv, "allocator: jemalloc, background_thread false, "
                                   "dirty_decay_ms 5000, muzzy_decay_ms 0"),
              "MALLOC_CONF did not override malloc_conf");
}

#else /* a sanitizer build: the server runs on the libc (sanitizer) allocator */

Test(memory, the_server_says_which_allocator_it_runs_on)
{
    cr_assert(kr_it_wait_log(&kr_it_srv, "allocator: libc"));
}

/* The same churn as the jemalloc test, for the sanitizers' eyes: every topic and
 * subscription record is freed (RSS is the sanitizer allocator's business here). */
Test(memory, subscribing_and_unsubscribing_many_topics_leaves_none)
{
    int fd = kr_it_connect(kr_it_srv.port);
    topics_request(fd, "subscribe");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "topics"), MEM_TOPICS);
    topics_request(fd, "unsubscribe");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "topics"), 0);
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "subscriptions"), 0);
    close(fd);
}

#endif
