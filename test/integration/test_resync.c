/* Resync notices (PROTOCOL.md, Continuity): a client subscribed to __kraken__:resync whose
 * queue would overflow (by count or bytes) is not closed: its queued entries are replaced by
 * one notice on __kraken__:resync naming their topics (past resync_max_topics, `*`), it stays
 * subscribed, and what is published after the notice is delivered. Clients that did not opt
 * in keep the told-then-closed overflow (test_integration, test_resp_server). Both
 * protocols, raw bytes against the real server. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[1 << 20];

KR_IT_FIXTURE(start_small_queues, "--num_router_shards", "2", "--num_net_threads", "2",
              "--max_queued_messages", "5", "--max_queued_bytes", "4096", "--resync_max_topics",
              "3");
TestSuite(resync, .init = start_small_queues, .fini = kr_it_fixture_stop);

/* Publish `n` messages on `topic` from fd (memcached), each answered STORED. */
static void publish_n(int fd, const char *topic, int n, size_t plen)
{
    char payload[2048];
    memset(payload, 'p', plen);
    for (int i = 0; i < n; i++)
        kr_it_publish(fd, topic, payload, plen);
}

/* A `get messages` reply (whole, in buf). */
static size_t poll_reply(int fd)
{
    kr_it_sends(fd, "get messages\r\n");
    return kr_it_read_until(fd, buf, sizeof(buf), "END\r\n");
}

/* The reply a poll gives for these entries ("MESSAGE ...\r\n<payload>\r\n" each). */
static const char *reply_of(const char *entries)
{
    static char want[4096];
    snprintf(want, sizeof(want), "VALUE messages 0 %zu\r\n%sEND\r\n", strlen(entries) - 2, entries);
    return want;
}

Test(resync, memcached_queue_overflow_by_count_becomes_one_notice)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "ra rb __kraken__:resync");
    publish_n(pub, "ra", 3, 4);
    publish_n(pub, "rb", 3, 4); /* the 6th entry does not fit in 5 */
    kr_it_wait_stat(kr_it_srv.port, "queue_collapses", KR_IT_EQ, 1);
    poll_reply(sub);
    /* the two topics' shards deliver in either order: the notice names them as they came */
    char other[4096];
    snprintf(other, sizeof(other), "%s", reply_of("MESSAGE __kraken__:resync 5\r\nrb ra\r\n"));
    cr_assert(strcmp(buf, reply_of("MESSAGE __kraken__:resync 5\r\nra rb\r\n")) == 0 ||
                  strcmp(buf, other) == 0,
              "%s", buf);
    /* still subscribed and connected: what follows is delivered */
    publish_n(pub, "rb", 1, 4);
    size_t outlen = 0;
    cr_assert_eq(kr_it_collect(sub, 1, buf, sizeof(buf), &outlen), 1);
    cr_assert_str_eq(buf, "MESSAGE rb 4\r\npppp\r\n");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "resync_notices"), 1);
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "resync_topics"), 2);
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "queue_overflows"), 0);
    close(sub);
    close(pub);
}

Test(resync, memcached_queue_overflow_by_bytes_and_past_the_topic_bound_is_star)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "s1 s2 s3 s4 __kraken__:resync");
    /* 1010-byte payloads (1029 reply bytes each): three fit in 4096 bytes, the fourth does not; four topics are
     * over resync_max_topics 3 */
    publish_n(pub, "s1", 1, 1010);
    publish_n(pub, "s2", 1, 1010);
    publish_n(pub, "s3", 1, 1010);
    publish_n(pub, "s4", 1, 1010);
    kr_it_wait_stat(kr_it_srv.port, "queue_collapses", KR_IT_EQ, 1);
    poll_reply(sub);
    cr_assert_str_eq(buf, reply_of("MESSAGE __kraken__:resync 1\r\n*\r\n"));
    /* an overflow by count names s1; a second overflow before that notice was read folds it
     * into one notice naming both, and what came after it is delivered */
    publish_n(pub, "s1", 6, 4);
    kr_it_wait_stat(kr_it_srv.port, "queue_collapses", KR_IT_EQ, 2);
    publish_n(pub, "s2", 5, 4);
    kr_it_wait_stat(kr_it_srv.port, "queue_collapses", KR_IT_EQ, 3);
    publish_n(pub, "s2", 1, 4);
    kr_it_wait_stat(kr_it_srv.port, "queued_messages", KR_IT_EQ, 2);
    poll_reply(sub);
    cr_assert_str_eq(buf, reply_of("MESSAGE __kraken__:resync 5\r\ns1 s2\r\nMESSAGE s2 4\r\npppp\r\n"));
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "resync_notices"), 3);
    close(sub);
    close(pub);
}

/* Unsubscribing from __kraken__:resync opts out: the next overflow is told and closes. */
Test(resync, unsubscribing_opts_out)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "u1 __kraken__:resync");
    kr_it_sends(sub, "set unsubscribe 0 0 17\r\n__kraken__:resync\r\n");
    kr_it_expect(sub, "STORED\r\n");
    publish_n(pub, "u1", 6, 4);
    kr_it_wait_stat(kr_it_srv.port, "queue_overflows", KR_IT_EQ, 1);
    kr_it_sends(sub, "get messages\r\n");
    kr_it_expect(sub, "SERVER_ERROR queue overflow\r\n");
    kr_it_expect_closed(sub);
    close(sub);
    close(pub);
}

/* RESP: a subscriber that does not read while its output is full. Its queue collapses into
 * a `message __kraken__:resync` frame after the frames it already had; it stays open and
 * subscribed. */
Test(resync, resp_subscriber_that_does_not_read_gets_a_notice_and_stays)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_resp_cmd(sub, "SUBSCRIBE", "big", "__kraken__:resync", NULL);
    kr_it_expect(sub, "*3\r\n$9\r\nsubscribe\r\n$3\r\nbig\r\n:1\r\n"
                      "*3\r\n$9\r\nsubscribe\r\n$17\r\n__kraken__:resync\r\n:2\r\n");
    /* 200 x 64 KiB: beyond the 4 MiB output bound and the socket buffers, then the queue */
    static char req[65536 + 64];
    size_t plen = 65535;
    size_t rl = (size_t)snprintf(req, sizeof(req), "*3\r\n$7\r\nPUBLISH\r\n$3\r\nbig\r\n$%zu\r\n", plen);
    memset(req + rl, 'q', plen);
    rl += plen;
    memcpy(req + rl, "\r\n", 2);
    rl += 2;
    for (int i = 0; i < 200; i++) {
        kr_it_send(pub, req, rl);
        kr_it_expect(pub, ":1\r\n"); /* connected and subscribed all along */
    }
    kr_it_wait_stat(kr_it_srv.port, "queue_collapses", KR_IT_GE, 1);
    /* a marker after everything: the subscriber reads whole frames, a notice, the marker */
    kr_it_resp_cmd(pub, "PUBLISH", "big", "marker", NULL);
    kr_it_expect(pub, ":1\r\n");
    const char *notice = "*3\r\n$7\r\nmessage\r\n$17\r\n__kraken__:resync\r\n$3\r\nbig\r\n";
    const char *marker = "*3\r\n$7\r\nmessage\r\n$3\r\nbig\r\n$6\r\nmarker\r\n";
    static char all[32 << 20];
    size_t n = 0;
    for (int i = 0; i < 200000 && n < sizeof(all) - 1; i++) {
        ssize_t r = recv(sub, all + n, sizeof(all) - 1 - n, 0);
        cr_assert(r > 0, "the subscriber was closed after %zu bytes", n);
        n += (size_t)r;
        if (n >= strlen(marker) && memcmp(all + n - strlen(marker), marker, strlen(marker)) == 0)
            break;
    }
    all[n] = 0;
    char *at = memmem(all, n, notice, strlen(notice));
    cr_assert(at, "no resync notice in %zu bytes", n);
    /* before the notice: whole message frames */
    char head[64];
    size_t frame = (size_t)snprintf(head, sizeof(head), "*3\r\n$7\r\nmessage\r\n$3\r\nbig\r\n$%zu\r\n",
                                    plen) + plen + 2;
    cr_assert_eq((size_t)(at - all) % frame, 0, "%zu bytes before the notice", (size_t)(at - all));
    cr_assert(n >= strlen(marker) && memcmp(all + n - strlen(marker), marker, strlen(marker)) == 0);
    kr_it_resp_cmd(sub, "PING", NULL);
    kr_it_expect(sub, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "queue_overflows"), 0);
    close(sub);
    close(pub);
}
