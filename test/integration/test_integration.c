/* Integration tests: the real server on an ephemeral loopback port, raw protocol bytes.
 * One test per PROTOCOL.md row, plus delivery semantics under concurrency. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[1 << 20];

KR_IT_FIXTURE(start_default, "--num_router_shards", "4", "--num_net_threads", "2");

TestSuite(proto, .init = start_default, .fini = kr_it_fixture_stop, .timeout = 120);

Test(proto, version_reply)
{
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_sends(fd, "version\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "VERSION ", 8) == 0 && strlen(buf) > 10, "got %s", buf);
    close(fd);
}

Test(proto, stats_uses_memcached_names)
{
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_sends(fd, "stats\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "END\r\n");
    const char *names[] = {"STAT pid ", "STAT uptime ", "STAT version ", "STAT curr_connections 1\r\n",
                           "STAT total_connections ", "STAT rejected_connections 0\r\n",
                           "STAT messages_published ", "STAT queued_messages ", "STAT topics "};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        cr_assert_not_null(strstr(buf, names[i]), "missing %s in:\n%s", names[i], buf);
    /* allocator figures when the server runs on jemalloc (sanitizer builds use libc's) */
    if (strstr(buf, "STAT allocator jemalloc\r\n")) {
        unsigned long long allocated = 0;
        char *p = strstr(buf, "STAT jemalloc_allocated ");
        cr_assert_not_null(p, "%s", buf);
        sscanf(p, "STAT jemalloc_allocated %llu", &allocated);
        cr_assert_gt(allocated, 0);
        cr_assert_not_null(strstr(buf, "STAT jemalloc_resident "));
    } else {
        cr_assert_not_null(strstr(buf, "STAT allocator libc\r\n"), "%s", buf);
    }
    close(fd);
}

/* The loop figures: iterations of the net threads and shards, and those that lasted more
 * than 1 ms. One request subscribing 200,000 new topics is one long iteration of the net
 * thread that parses and routes it and of every shard that inserts its part (each at
 * least tens of thousands of table inserts: far above a millisecond on any machine). */
Test(proto, loop_figures_count_iterations_and_long_ones)
{
    unsigned long long net0 = kr_it_stat(kr_it_srv.port, "net_loop_over_1ms");
    unsigned long long sh0 = kr_it_stat(kr_it_srv.port, "shard_loop_over_1ms");
    cr_assert_gt(kr_it_stat(kr_it_srv.port, "net_loop_iterations"), 0);
    enum { N = 200000 };
    static char topics[N * 12];
    size_t len = 0;
    for (int i = 0; i < N; i++)
        len += (size_t)snprintf(topics + len, sizeof(topics) - len, "%sloop.%d", i ? " " : "", i);
    int fd = kr_it_connect(kr_it_srv.port);
    char head[64];
    snprintf(head, sizeof(head), "set subscribe 0 0 %zu\r\n", len);
    kr_it_sends(fd, head);
    kr_it_send(fd, topics, len);
    kr_it_sends(fd, "\r\n");
    kr_it_expect(fd, "STORED\r\n");
    cr_assert_gt(kr_it_stat(kr_it_srv.port, "shard_loop_iterations"), 0);
    cr_assert_gt(kr_it_stat(kr_it_srv.port, "shard_loop_over_1ms"), sh0);
    cr_assert_gt(kr_it_stat(kr_it_srv.port, "net_loop_over_1ms"), net0);
    cr_assert_leq(kr_it_stat(kr_it_srv.port, "net_loop_over_10ms"),
                  kr_it_stat(kr_it_srv.port, "net_loop_over_1ms"));
    /* the scheduler's figures (refreshed once a second): the threads ran, and the figures
     * of their waits and of the machine's steal time are there */
    kr_it_wait_stat(kr_it_srv.port, "shard_threads_cpu_ms", KR_IT_GE, 1);
    kr_it_wait_stat(kr_it_srv.port, "net_threads_cpu_ms", KR_IT_GE, 1);
    kr_it_stat(kr_it_srv.port, "net_threads_wait_ms");
    kr_it_stat(kr_it_srv.port, "shard_threads_wait_ms");
    kr_it_stat(kr_it_srv.port, "cpu_steal_ms");
    close(fd);
}

Test(proto, quit_closes_silently)
{
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_sends(fd, "quit\r\n");
    kr_it_expect_closed(fd);
    close(fd);
}

Test(proto, empty_queue_answers_end)
{
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_get(fd, buf, sizeof(buf));
    cr_assert_str_eq(buf, "END\r\n");
    close(fd);
}

Test(proto, publish_and_poll_exact_bytes)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_sends(sub, "set subscribe 0 0 1\r\na\r\n");
    kr_it_expect(sub, "STORED\r\n");
    kr_it_sends(pub, "set publish 0 0 17\r\nMESSAGE a 2\r\nm1\r\n\r\n");
    kr_it_expect(pub, "STORED\r\n");
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE a 2\r\nm1\r\n");
    /* and the whole reply byte for byte, from PROTOCOL.md */
    kr_it_publish(pub, "a", "m1", 2);
    kr_it_wait_stat(kr_it_srv.port, "queued_messages", KR_IT_EQ, 1);
    kr_it_get(sub, buf, sizeof(buf));
    cr_assert_str_eq(buf, "VALUE messages 0 15\r\nMESSAGE a 2\r\nm1\r\nEND\r\n");
    kr_it_get(sub, buf, sizeof(buf));
    cr_assert_str_eq(buf, "END\r\n", "a poll drains the queue");
    close(sub);
    close(pub);
}

Test(proto, publisher_never_gets_its_own_message)
{
    int a = kr_it_connect(kr_it_srv.port), b = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(a, "t");
    kr_it_subscribe(b, "t");
    kr_it_publish(a, "t", "mine", 4);
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(b, 1, out, sizeof(out), &olen), 1);
    kr_it_publish(b, "t", "second", 6); /* a receives this one, proving a was flushed */
    cr_assert_eq(kr_it_collect(a, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE t 6\r\nsecond\r\n", "the own message must not be there");
    close(a);
    close(b);
}

Test(proto, lists_every_matched_topic_once_in_publish_order_across_shards)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    /* with 4 shards these ten topics spread over several shards */
    kr_it_subscribe(sub, "t9 t1 t3 t5 t7 ");
    kr_it_publish(pub, "t1 t2 t3 t4 t5 t6 t7 t8 t9 t0", "x", 1);
    kr_it_publish(pub, "t2", "y", 1); /* not subscribed */
    kr_it_publish(pub, "t7", "z", 1);
    char out[512];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 2, out, sizeof(out), &olen), 2);
    cr_assert_str_eq(out, "MESSAGE t1 t3 t5 t7 t9 1\r\nx\r\nMESSAGE t7 1\r\nz\r\n");
    close(sub);
    close(pub);
}

Test(proto, repeated_topic_in_entry_listed_once)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "r");
    kr_it_publish(pub, "r r r", "p", 1);
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE r 1\r\np\r\n");
    close(sub);
    close(pub);
}

Test(proto, noreply_suppresses_stored)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_sends(sub, "set subscribe 0 0 1 noreply\r\nn\r\n");
    kr_it_sends(sub, "version\r\n");
    kr_it_read_until(sub, buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "VERSION", 7) == 0, "noreply subscribe must not answer: %s", buf);
    kr_it_sends(pub, "set publish 0 0 16 noreply\r\nMESSAGE n 1\r\nq\r\n\r\nversion\r\n");
    kr_it_read_until(pub, buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "VERSION", 7) == 0, "noreply publish must not answer: %s", buf);
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE n 1\r\nq\r\n");
    close(sub);
    close(pub);
}

Test(proto, pipelined_requests_answer_in_order)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_sends(sub, "set subscribe 0 0 3\r\np q\r\nversion\r\nset unsubscribe 0 0 1\r\nq\r\nget messages\r\n");
    kr_it_read_until(sub, buf, sizeof(buf), "END\r\n");
    cr_assert(strncmp(buf, "STORED\r\nVERSION ", 16) == 0, "got %s", buf);
    cr_assert(strstr(buf, "\r\nSTORED\r\nEND\r\n") != NULL, "got %s", buf);
    /* publish twice in one write, with a poll behind it */
    kr_it_sends(pub, "set publish 0 0 16\r\nMESSAGE p 1\r\n1\r\n\r\nset publish 0 0 16\r\nMESSAGE q 1\r\n2\r\n\r\n");
    kr_it_expect(pub, "STORED\r\nSTORED\r\n");
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE p 1\r\n1\r\n", "unsubscribed topic q must not arrive");
    close(sub);
    close(pub);
}

Test(proto, requests_split_byte_by_byte)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    const char *s = "set subscribe 0 0 5\r\nsplit\r\n";
    for (size_t i = 0; s[i]; i++) {
        kr_it_send(sub, s + i, 1);
        kr_it_sleep_ms(1);
    }
    kr_it_expect(sub, "STORED\r\n");
    const char *p = "set publish 0 0 23\r\nMESSAGE split 4\r\na\r\nb\r\n\r\n";
    for (size_t i = 0; p[i]; i++)
        kr_it_send(pub, p + i, 1);
    kr_it_expect(pub, "STORED\r\n");
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE split 4\r\na\r\nb\r\n");
    close(sub);
    close(pub);
}

Test(proto, binary_and_empty_payloads_and_several_entries)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "bin");
    /* entries: 3-byte payload with NUL and CRLF, an empty payload */
    const char block[] = "MESSAGE bin 4\r\n\0\r\nz\r\nMESSAGE bin 0\r\n\r\n";
    size_t blen = sizeof(block) - 1;
    char line[64];
    snprintf(line, sizeof(line), "set publish 0 0 %zu\r\n", blen);
    kr_it_sends(pub, line);
    kr_it_send(pub, block, blen);
    kr_it_sends(pub, "\r\n");
    kr_it_expect(pub, "STORED\r\n");
    kr_it_sends(pub, "set publish 0 0 0\r\n\r\n"); /* empty block: valid, publishes nothing */
    kr_it_expect(pub, "STORED\r\n");
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 2, out, sizeof(out), &olen), 2);
    cr_assert_eq(olen, blen);
    cr_assert(memcmp(out, block, blen) == 0);
    close(sub);
    close(pub);
}

/* A poll reply mixes payloads written from the shared message (KR_OUT_SHARE_MIN bytes and
 * more, by reference) with copied ones, at the threshold and on both sides of it: the
 * reply is byte for byte what was published. */
Test(proto, poll_replies_with_large_payloads_are_exact)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "lg");
    static char want[1 << 21];
    size_t wl = 0;
    const uint32_t sizes[] = {2047, 2048, 5, 300000, 0, 65536, 1};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        static char payload[300000];
        for (uint32_t i = 0; i < sizes[k]; i++)
            payload[i] = (char)('a' + (i * 7 + k) % 26);
        kr_it_publish(pub, "lg", payload, sizes[k]);
        wl += (size_t)snprintf(want + wl, sizeof(want) - wl, "MESSAGE lg %u\r\n", sizes[k]);
        memcpy(want + wl, payload, sizes[k]);
        wl += sizes[k];
        memcpy(want + wl, "\r\n", 2);
        wl += 2;
    }
    static char out[1 << 21];
    size_t olen = 0;
    cr_assert_eq(kr_it_collect(sub, 7, out, sizeof(out), &olen), 7);
    cr_assert_eq(olen, wl);
    cr_assert(memcmp(out, want, wl) == 0, "the entries differ from what was published");
    close(sub);
    close(pub);
}

Test(proto, trailing_and_double_spaces_are_ignored)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "sp1  sp2 ");
    kr_it_sends(sub, "stats\r\n");
    kr_it_read_until(sub, buf, sizeof(buf), "END\r\n");
    cr_assert_not_null(strstr(buf, "STAT subscriptions 2\r\n"), "no empty topic subscribed:\n%s", buf);
    kr_it_publish(pub, "sp2", "v", 1);
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE sp2 1\r\nv\r\n");
    close(sub);
    close(pub);
}

Test(proto, unsubscribe_unknown_topics_is_fine_and_queued_messages_stay)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "u umark");
    kr_it_publish(pub, "u", "before", 6);
    /* wait until it is queued server-side */
    kr_it_wait_stat(kr_it_srv.port, "queued_messages", KR_IT_EQ, 1);
    kr_it_sends(sub, "set unsubscribe 0 0 9\r\nu unknown\r\n");
    kr_it_expect(sub, "STORED\r\n");
    kr_it_publish(pub, "u", "after", 5);
    /* a marker from the same publisher on u too: a wrong delivery of "after" comes first,
     * and a subscription to u still in force would list u in the marker's entry */
    kr_it_publish(pub, "u umark", "mark", 4);
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 2, out, sizeof(out), &olen), 2);
    cr_assert_str_eq(out, "MESSAGE u 6\r\nbefore\r\nMESSAGE umark 4\r\nmark\r\n");
    close(sub);
    close(pub);
}

/* ------------------------------------------------------------------ errors */

static void expect_error_and_close(const char *request, size_t len, const char *reply)
{
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_send(fd, request, len);
    kr_it_expect(fd, reply);
    kr_it_expect_closed(fd);
    close(fd);
    /* the server is fine for everybody else */
    fd = kr_it_connect(kr_it_srv.port);
    kr_it_sends(fd, "version\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "VERSION", 7) == 0);
    close(fd);
}
TestSuite(errors, .init = start_default, .fini = kr_it_fixture_stop, .timeout = 120);

#define EXPECT_ERROR(req, reply) expect_error_and_close(req, sizeof(req) - 1, reply)

Test(errors, unknown_command) { EXPECT_ERROR("flush_all\r\n", "ERROR\r\n"); }
Test(errors, unknown_get_key) { EXPECT_ERROR("get foo\r\n", "ERROR\r\n"); }
Test(errors, unknown_set_key_after_block) { EXPECT_ERROR("set foo 0 0 3\r\nabc\r\n", "ERROR\r\n"); }
Test(errors, set_wrong_field_count)
{
    EXPECT_ERROR("set subscribe 0 0\r\n", "CLIENT_ERROR bad command line format\r\n");
}
Test(errors, set_bytes_not_numeric)
{
    EXPECT_ERROR("set subscribe 0 0 x1\r\n", "CLIENT_ERROR bad command line format\r\n");
}
Test(errors, set_bytes_signed)
{
    EXPECT_ERROR("set subscribe 0 0 -1\r\n", "CLIENT_ERROR bad command line format\r\n");
}
Test(errors, set_bytes_overflow_64_bits)
{
    EXPECT_ERROR("set subscribe 0 0 99999999999999999999999\r\n", "CLIENT_ERROR bad command line format\r\n");
}
Test(errors, data_block_without_crlf)
{
    EXPECT_ERROR("set subscribe 0 0 1\r\nabc\r\n", "CLIENT_ERROR bad data chunk\r\n");
}
Test(errors, bad_topic_bytes)
{
    EXPECT_ERROR("set subscribe 0 0 3\r\na\rb\r\n", "CLIENT_ERROR bad topic\r\n");
}
Test(errors, line_too_long)
{
    char *req = malloc(9000);
    memset(req, 'a', 9000);
    expect_error_and_close(req, 9000, "CLIENT_ERROR line too long\r\n");
    free(req);
}
Test(errors, request_too_large_without_reading_block)
{
    EXPECT_ERROR("set publish 0 0 999999999\r\n", "SERVER_ERROR object too large\r\n");
}

Test(proto, bad_publish_block_publishes_nothing)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "bp");
    /* first entry valid, second malformed: neither may be published */
    const char block[] = "MESSAGE bp 1\r\nA\r\nMESSAGE bp 9\r\nB\r\n";
    char line[64];
    snprintf(line, sizeof(line), "set publish 0 0 %zu\r\n", sizeof(block) - 1);
    kr_it_sends(pub, line);
    kr_it_send(pub, block, sizeof(block) - 1);
    kr_it_sends(pub, "\r\n");
    kr_it_expect(pub, "CLIENT_ERROR bad publish block\r\n");
    kr_it_expect_closed(pub);
    close(pub);
    pub = kr_it_connect(kr_it_srv.port);
    kr_it_publish(pub, "bp", "ok", 2); /* a marker behind it */
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE bp 2\r\nok\r\n");
    close(sub);
    close(pub);
}

/* ------------------------------------------------------------------ limits */

Test(limits, message_too_large)
{
    const char *args[] = {"--max_message_bytes", "4", "--num_net_threads", "1", NULL};
    kr_it_fixture_start(args);
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_sends(fd, "set publish 0 0 20\r\nMESSAGE a 5\r\n12345\r\n\r\n");
    kr_it_expect(fd, "SERVER_ERROR object too large\r\n");
    kr_it_expect_closed(fd);
    close(fd);
    kr_it_fixture_stop();
}

Test(limits, topic_too_long)
{
    const char *args[] = {"--max_topic_bytes", "3", NULL};
    kr_it_fixture_start(args);
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_sends(fd, "set subscribe 0 0 8\r\nabc abcd\r\n");
    kr_it_expect(fd, "CLIENT_ERROR bad topic\r\n");
    kr_it_expect_closed(fd);
    close(fd);
    kr_it_fixture_stop();
}

Test(limits, too_many_clients)
{
    const char *args[] = {"--max_tcp_clients", "2", NULL};
    kr_it_fixture_start(args);
    int a = kr_it_connect(kr_it_srv.port), b = kr_it_connect(kr_it_srv.port);
    kr_it_sends(a, "version\r\n");
    kr_it_read_until(a, buf, sizeof(buf), "\r\n");
    kr_it_sends(b, "version\r\n");
    kr_it_read_until(b, buf, sizeof(buf), "\r\n");
    int c = kr_it_connect(kr_it_srv.port);
    kr_it_expect(c, "SERVER_ERROR Too many clients\r\n");
    kr_it_expect_closed(c);
    close(c);
    close(b);
    /* a slot frees up: a new client gets in (bounded retries while the close lands) */
    int ok = 0;
    for (int i = 0; i < 100 && !ok; i++) {
        int d = kr_it_connect(kr_it_srv.port);
        kr_it_sends(d, "version\r\n");
        kr_it_read_until(d, buf, sizeof(buf), "\r\n");
        ok = strncmp(buf, "VERSION", 7) == 0;
        close(d);
        if (!ok)
            kr_it_sleep_ms(10);
    }
    cr_assert(ok);
    kr_it_sends(a, "stats\r\n");
    kr_it_read_until(a, buf, sizeof(buf), "END\r\n");
    cr_assert_null(strstr(buf, "STAT rejected_connections 0\r\n"));
    close(a);
    kr_it_fixture_stop();
}

Test(limits, queue_overflow_is_reported_then_closed)
{
    const char *args[] = {"--max_queued_messages", "3", NULL};
    kr_it_fixture_start(args);
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port), other = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "o");
    kr_it_subscribe(other, "o");
    for (int i = 0; i < 5; i++)
        kr_it_publish(pub, "o", "m", 1);
    cr_assert(kr_it_wait_log(&kr_it_srv, "queue overflow"), "overflow must be logged");
    kr_it_get(sub, buf, sizeof(buf));
    cr_assert_str_eq(buf, "SERVER_ERROR queue overflow\r\n");
    kr_it_expect_closed(sub);
    close(sub);
    kr_it_sends(pub, "stats\r\n");
    kr_it_read_until(pub, buf, sizeof(buf), "END\r\n");
    cr_assert_not_null(strstr(buf, "STAT queue_overflows "), "%s", buf);
    cr_assert_null(strstr(buf, "STAT queue_overflows 0\r\n"), "%s", buf);
    close(other);
    close(pub);
    kr_it_fixture_stop();
}

Test(limits, idle_clients_are_closed)
{
    const char *args[] = {"--client_idle_timeout_ms", "200", NULL};
    kr_it_fixture_start(args);
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_expect_closed(fd); /* the read timeout (10 s) bounds the wait */
    close(fd);
    kr_it_fixture_stop();
}

/* The idle sweep looks at a bounded share of the slots per tick and rotates: with more
 * connections than one tick visits (on one net thread), every one is still reached. */
Test(limits, idle_sweep_reaches_every_connection_in_turn)
{
    const char *args[] = {"--client_idle_timeout_ms", "300", "--num_net_threads", "1", NULL};
    kr_it_fixture_start(args);
    enum { N = 600 };
    static int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = kr_it_connect(kr_it_srv.port);
    for (int i = 0; i < N; i++)
        kr_it_expect_closed(fds[i]); /* each wait is bounded by the read timeout */
    for (int i = 0; i < N; i++)
        close(fds[i]);
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_sends(fd, "stats\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "END\r\n");
    cr_assert_not_null(strstr(buf, "STAT idle_timeouts 600\r\n"), "%s", buf);
    close(fd);
    kr_it_fixture_stop();
}

/* ------------------------------------------------------------------ concurrency */

#define NPUB 4
#define NSUB 6
#define NMSG 500

struct pub_arg {
    uint16_t port;
    int id;
};

static void *publisher(void *p)
{
    struct pub_arg *a = p;
    int fd = kr_it_connect(a->port);
    for (int i = 0; i < NMSG; i++) {
        char payload[32], topics[32];
        int n = snprintf(payload, sizeof(payload), "%d:%d", a->id, i);
        /* every message goes to two topics that may live on different shards */
        snprintf(topics, sizeof(topics), "c%d c%d", i % 3, 3 + (i % 2));
        kr_it_publish(fd, topics, payload, (size_t)n);
    }
    close(fd);
    return NULL;
}

Test(concurrency, many_publishers_and_subscribers_exactly_once_in_order_per_topic)
{
    const char *args[] = {"--num_router_shards", "3", "--num_net_threads", "2", NULL};
    kr_it_fixture_start(args);
    int subs[NSUB];
    for (int s = 0; s < NSUB; s++) {
        subs[s] = kr_it_connect(kr_it_srv.port);
        kr_it_subscribe(subs[s], "c0 c1 c2 c3 c4");
    }
    pthread_t th[NPUB];
    struct pub_arg pa[NPUB];
    for (int p = 0; p < NPUB; p++) {
        pa[p].port = kr_it_srv.port;
        pa[p].id = p;
        pthread_create(&th[p], NULL, publisher, &pa[p]);
    }
    size_t cap = 1 << 21;
    char *out = malloc(cap);
    for (int s = 0; s < NSUB; s++) {
        size_t olen;
        size_t n = kr_it_collect(subs[s], NPUB * NMSG, out, cap, &olen);
        cr_assert_eq(n, NPUB * NMSG, "subscriber %d got %zu of %d", s, n, NPUB * NMSG);
        /* exactly once per publisher (a seen-bitmap), and in order per publisher and topic */
        static char seen[NPUB][NMSG];
        memset(seen, 0, sizeof(seen));
        int last[NPUB][5];
        memset(last, 0xff, sizeof(last));
        int count[NPUB] = {0};
        char *p = out, *end = out + olen;
        while (p < end) {
            int pid, seq, t1, t2;
            size_t plen;
            cr_assert_eq(sscanf(p, "MESSAGE c%d c%d %zu\r\n", &t1, &t2, &plen), 3,
                         "entry must list both topics: %.40s", p);
            char *body = strstr(p, "\r\n") + 2;
            cr_assert_eq(sscanf(body, "%d:%d", &pid, &seq), 2);
            cr_assert(pid >= 0 && pid < NPUB && seq >= 0 && seq < NMSG);
            cr_assert_not(seen[pid][seq], "publisher %d message %d delivered twice", pid, seq);
            seen[pid][seq] = 1;
            count[pid]++;
            cr_assert_eq(t1, seq % 3);
            cr_assert_eq(t2, 3 + seq % 2);
            cr_assert_gt(seq, last[pid][t1], "publisher %d topic c%d: %d after %d", pid, t1, seq, last[pid][t1]);
            cr_assert_gt(seq, last[pid][t2], "publisher %d topic c%d: %d after %d", pid, t2, seq, last[pid][t2]);
            last[pid][t1] = last[pid][t2] = seq;
            p = body + plen + 2;
        }
        for (int k = 0; k < NPUB; k++)
            cr_assert_eq(count[k], NMSG, "publisher %d: %d of %d delivered", k, count[k], NMSG);
        kr_it_get(subs[s], out, cap);
        cr_assert_str_eq(out, "END\r\n", "nothing extra");
    }
    for (int p = 0; p < NPUB; p++)
        pthread_join(th[p], NULL);
    free(out);
    for (int s = 0; s < NSUB; s++)
        close(subs[s]);
    kr_it_fixture_stop();
}

Test(logging, fanout_and_topic_count_warnings)
{
    const char *args[] = {"--router_min_fanout_to_warn", "2", "--router_min_publish_to_topics_to_warn", "3", NULL};
    kr_it_fixture_start(args);
    int a = kr_it_connect(kr_it_srv.port), b = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(a, "fan");
    kr_it_subscribe(b, "fan");
    kr_it_publish(pub, "fan", "x", 1);
    cr_assert(kr_it_wait_log(&kr_it_srv, "fanned out to 2 clients"), "fanout warning expected");
    cr_assert(kr_it_log_contains(&kr_it_srv, "127.0.0.1:"), "warning names the publisher's address");
    kr_it_publish(pub, "k1 k2 k3", "y", 1);
    cr_assert(kr_it_wait_log(&kr_it_srv, "publish to 3 topics"), "topic-count warning expected");
    close(a);
    close(b);
    close(pub);
    kr_it_fixture_stop();
}

Test(proto, pipelined_subscriptions_answer_in_order_then_a_held_error)
{
    int fd = kr_it_connect(kr_it_srv.port);
    /* the error's reply must wait until the three earlier requests are answered */
    kr_it_sends(fd, "set subscribe 0 0 5\r\np1 p2\r\nset publish 0 0 0\r\n\r\n"
                    "set unsubscribe 0 0 2\r\np1\r\nset subscribe 0 0 3\r\na\rb\r\n");
    kr_it_expect(fd, "STORED\r\nSTORED\r\nSTORED\r\nCLIENT_ERROR bad topic\r\n");
    kr_it_expect_closed(fd);
    close(fd);
}

Test(proto, many_pipelined_subscribes_then_poll)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    char req[64 * 40] = "";
    size_t len = 0;
    for (int i = 0; i < 40; i++)
        len += (size_t)snprintf(req + len, sizeof(req) - len, "set subscribe 0 0 3\r\nm%02d\r\n", i);
    kr_it_send(sub, req, len);
    for (int i = 0; i < 40; i++)
        kr_it_expect(sub, "STORED\r\n");
    kr_it_publish(pub, "m39 m00", "z", 1);
    char out[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &olen), 1);
    cr_assert_str_eq(out, "MESSAGE m39 m00 1\r\nz\r\n");
    close(sub);
    close(pub);
}

Test(proto, full_rings_slow_the_publisher_and_lose_nothing)
{
    /* one request of 30000 entries: more than a mailbox holds (8192), so the publisher's
     * events wait for ring space and the shard may park deliveries; all must arrive once,
     * in order */
    enum { N = 30000 };
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "full");
    size_t cap = (size_t)N * 32, len = 0;
    char *block = malloc(cap);
    for (int i = 0; i < N; i++) {
        char payload[16];
        int pl = snprintf(payload, sizeof(payload), "%d", i);
        len += (size_t)snprintf(block + len, cap - len, "MESSAGE full %d\r\n%s\r\n", pl, payload);
    }
    char line[64];
    snprintf(line, sizeof(line), "set publish 0 0 %zu\r\n", len);
    kr_it_sends(pub, line);
    kr_it_send(pub, block, len);
    kr_it_sends(pub, "\r\n");
    kr_it_expect(pub, "STORED\r\n");
    size_t ocap = (size_t)N * 40, olen;
    char *out = malloc(ocap);
    cr_assert_eq(kr_it_collect(sub, N, out, ocap, &olen), N);
    char *p = out;
    for (int i = 0; i < N; i++) {
        int got;
        size_t plen;
        cr_assert_eq(sscanf(p, "MESSAGE full %zu\r\n%d", &plen, &got), 2);
        cr_assert_eq(got, i, "message %d arrived as %d", i, got);
        p = strstr(p, "\r\n") + 2 + plen + 2;
    }
    kr_it_get(sub, out, ocap);
    cr_assert_str_eq(out, "END\r\n");
    kr_it_sends(pub, "stats\r\n");
    kr_it_read_until(pub, out, ocap, "END\r\n");
    unsigned long long waits = 0;
    char *w = strstr(out, "STAT ring_full_waits ");
    cr_assert_not_null(w);
    sscanf(w, "STAT ring_full_waits %llu", &waits);
    cr_log_info("events that waited for ring space: %llu", waits);
    free(out);
    free(block);
    close(sub);
    close(pub);
}

/* Regression: a rate-limited error line printed the suppressed count even when it was zero
 * ("...; closing0"). */
Test(logging, error_line_without_suppressed_count_ends_in_closing)
{
    kr_it_fixture_start(NULL);
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_sends(fd, "flush_all\r\n");
    kr_it_expect(fd, "ERROR\r\n");
    kr_it_expect_closed(fd);
    close(fd);
    cr_assert(kr_it_wait_log(&kr_it_srv, "ERROR; closing"), "the error is logged");
    cr_assert(!kr_it_log_contains(&kr_it_srv, "closing0"), "no zero suppressed count");
    cr_assert(!kr_it_log_contains(&kr_it_srv, "(suppressed 0"), "no zero suppressed count");
    kr_it_fixture_stop();
}

/* Regression: `STAT fanout_warnings` counted only the warnings of messages on one shard; the
 * net thread's count of multi-shard fanout warnings was incremented but never printed. */
Test(logging, fanout_warnings_count_multi_shard_messages)
{
    const char *args[] = {"--num_router_shards", "4", "--router_min_fanout_to_warn", "2", NULL};
    kr_it_fixture_start(args);
    int a = kr_it_connect(kr_it_srv.port), b = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    /* t1..t6 span several of the 4 shards (test_poll_wait relies on it too) */
    kr_it_subscribe(a, "t1 t2 t3 t4 t5 t6");
    kr_it_subscribe(b, "t1 t2 t3 t4 t5 t6");
    kr_it_publish(pub, "t1 t2 t3 t4 t5 t6", "x", 1);
    cr_assert(kr_it_wait_log(&kr_it_srv, "fanned out to "), "fanout warning expected");
    cr_assert_eq(kr_it_stat_fd(pub, "fanout_warnings"), 1, "one warning, counted once");
    kr_it_publish(pub, "t1", "y", 1); /* one shard */
    /* single-shard warnings count too */
    kr_it_wait_stat(kr_it_srv.port, "fanout_warnings", KR_IT_EQ, 2);
    close(a);
    close(b);
    close(pub);
    kr_it_fixture_stop();
}
