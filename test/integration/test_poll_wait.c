/* Integration tests of waiting polls (poll_wait_ms > 0, set explicitly by each suite that
 * tests waiting; the default 0 answers END at once): a `get messages` that finds nothing
 * waits for a message instead of answering END at once. The real server on an ephemeral
 * loopback port, raw bytes. The long waits configured here (a minute) are never waited out:
 * each test passes only if something other than the timer answers the poll, and a read that
 * is not answered fails after the helpers' socket timeout. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[1 << 16];

KR_IT_FIXTURE(start_long_wait, "--num_router_shards", "4", "--num_net_threads", "2",
              "--poll_wait_ms", "60000");

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

TestSuite(poll_wait, .init = start_long_wait, .fini = kr_it_fixture_stop, .timeout = 120);

Test(poll_wait, a_message_answers_a_waiting_poll)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "a");
    unsigned long long waited = kr_it_stat(kr_it_srv.port, "polls_waited");
    kr_it_sends(sub, "get messages\r\n");
    /* the poll is waiting once the server counted it; then publish */
    kr_it_wait_stat(kr_it_srv.port, "polls_waited", KR_IT_EQ, waited + 1);
    kr_it_publish(pub, "a", "m1", 2);
    kr_it_read_until(sub, buf, sizeof(buf), "END\r\n");
    cr_assert_str_eq(buf, "VALUE messages 0 15\r\nMESSAGE a 2\r\nm1\r\nEND\r\n");
    close(sub);
    close(pub);
}

Test(poll_wait, a_new_request_answers_the_waiting_poll_first)
{
    int fd = kr_it_connect(kr_it_srv.port);
    unsigned long long waited = kr_it_stat(kr_it_srv.port, "polls_waited");
    kr_it_sends(fd, "get messages\r\n");
    kr_it_wait_stat(kr_it_srv.port, "polls_waited", KR_IT_EQ, waited + 1); /* it waits */
    kr_it_sends(fd, "version\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "END\r\n");
    cr_assert_str_eq(buf, "END\r\n", "the poll is answered before the version");
    kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "VERSION ", 8) == 0, "got %s", buf);
    close(fd);
}

Test(poll_wait, a_poll_followed_by_more_input_does_not_wait)
{
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_sends(fd, "get messages\r\nget messages\r\nversion\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "END\r\nEND\r\n");
    cr_assert_str_eq(buf, "END\r\nEND\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "VERSION ", 8) == 0, "got %s", buf);
    close(fd);
}

Test(poll_wait, a_multi_shard_message_is_answered_whole)
{
    /* six topics over four shards: the poll is answered once every shard's part is in */
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "t1 t2 t3 t4 t5 t6");
    for (int round = 0; round < 20; round++) {
        unsigned long long waited = kr_it_stat(kr_it_srv.port, "polls_waited");
        kr_it_sends(sub, "get messages\r\n");
        kr_it_wait_stat(kr_it_srv.port, "polls_waited", KR_IT_EQ, waited + 1); /* it waits */
        kr_it_publish(pub, "t1 t2 t3 t4 t5 t6", "xy", 2);
        kr_it_read_until(sub, buf, sizeof(buf), "END\r\n");
        cr_assert_str_eq(buf, "VALUE messages 0 31\r\nMESSAGE t1 t2 t3 t4 t5 t6 2\r\nxy\r\nEND\r\n",
                         "round %d", round);
    }
    close(sub);
    close(pub);
}

Test(poll_wait, clients_that_leave_while_waiting_harm_nothing)
{
    int fds[50];
    for (int i = 0; i < 50; i++) {
        fds[i] = kr_it_connect(kr_it_srv.port);
        kr_it_subscribe(fds[i], "gone");
        kr_it_sends(fds[i], "get messages\r\n");
    }
    for (int i = 0; i < 50; i += 2)
        close(fds[i]);
    int pub = kr_it_connect(kr_it_srv.port);
    kr_it_publish(pub, "gone", "x", 1);
    for (int i = 1; i < 50; i += 2) {
        kr_it_read_until(fds[i], buf, sizeof(buf), "END\r\n");
        cr_assert_str_eq(buf, "VALUE messages 0 17\r\nMESSAGE gone 1\r\nx\r\nEND\r\n");
        close(fds[i]);
    }
    /* closes are noticed asynchronously: the publisher and the stats client are left */
    kr_it_wait_stat(kr_it_srv.port, "curr_connections", KR_IT_EQ, 2);
    close(pub);
}

Test(poll_wait, poll_wait_can_be_changed_live)
{
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_admin(fd, "config set poll_wait_ms 0", buf, sizeof(buf));
    cr_assert_str_eq(buf, "CONFIG poll_wait_ms 0\nEND\n");
    close(fd);
    int c = kr_it_connect(kr_it_srv.port);
    kr_it_get(c, buf, sizeof(buf));
    cr_assert_str_eq(buf, "END\r\n", "0 answers at once");
    close(c);
}

/* A short wait: an empty poll is answered END once it has waited. */
KR_IT_FIXTURE(start_short_wait, "--poll_wait_ms", "200");

TestSuite(poll_wait_timer, .init = start_short_wait, .fini = kr_it_fixture_stop, .timeout = 120);

Test(poll_wait_timer, an_empty_poll_is_answered_end_after_the_wait)
{
    int fd = kr_it_connect(kr_it_srv.port);
    for (int i = 0; i < 3; i++) {
        double t0 = now_s();
        kr_it_get(fd, buf, sizeof(buf));
        double waited = now_s() - t0;
        cr_assert_str_eq(buf, "END\r\n");
        /* never before the wait (loop time is kept in whole milliseconds) */
        cr_assert_geq(waited, 0.195, "answered after %.3f s", waited);
    }
    close(fd);
}

/* The default: an empty poll is answered END at once, as the Erlang server did (a waiting
 * default added ~0.8 s to test suites of a client that polls one request at a time). */
KR_IT_FIXTURE(start_default);

TestSuite(poll_wait_default, .init = start_default, .fini = kr_it_fixture_stop, .timeout = 120);

Test(poll_wait_default, an_empty_poll_is_answered_at_once_by_default)
{
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_admin(fd, "config get poll_wait_ms", buf, sizeof(buf));
    cr_assert_str_eq(buf, "CONFIG poll_wait_ms 0\nEND\n");
    close(fd);
    int c = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(c, "idle");
    for (int i = 0; i < 3; i++) {
        kr_it_get(c, buf, sizeof(buf));
        cr_assert_str_eq(buf, "END\r\n");
    }
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "polls_waited"), 0, "an empty poll waited");
    close(c);
}
