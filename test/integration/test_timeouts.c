/* Integration tests of the connection timeouts: client_idle_timeout_ms counts only complete
 * requests, request_timeout_ms closes a client whose started request does not complete.
 * The real server on an ephemeral loopback port, raw bytes. Every wait is bounded; the
 * timeouts are short so that each test waits a few of them at most. */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[1 << 16];

/* Wait up to ms for the server to close fd; 1 when it did (EOF or reset), 0 when it is
 * still open. Any bytes it sends first fail the test. */
static int closed_within(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, ms) <= 0)
        return 0;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
    cr_assert(n <= 0, "unexpected byte %d from the server", c);
    return n == 0 || errno == ECONNRESET;
}

static const char publish[] = "set publish 0 0 16\r\nMESSAGE b 1\r\n1\r\n\r\n";

/* Regression: every byte received counted as activity, so a client trickling one byte of
 * a request every 100 ms was never closed by client_idle_timeout_ms. */
Test(timeouts, trickled_request_does_not_reset_the_idle_timer, .fini = kr_it_fixture_stop,
     .timeout = 60)
{
    const char *args[] = {"--client_idle_timeout_ms", "500", NULL};
    kr_it_fixture_start(args);
    int fd = kr_it_connect(kr_it_srv.port);
    const char *req = "set publish 0 0 100\r\n";
    int closed = 0;
    size_t i = 0;
    /* one byte every 100 ms: the line alone would take 2.1 s, the idle timeout is 0.5 s */
    for (; i < strlen(req) && !closed; i++) {
        ssize_t n = send(fd, req + i, 1, MSG_NOSIGNAL);
        if (n != 1)
            break; /* closed under us */
        closed = closed_within(fd, 100);
    }
    for (int k = 0; k < 50 && !closed; k++)
        closed = closed_within(fd, 100);
    cr_assert(closed, "the trickling client is still open after %zu bytes", i);
    cr_assert_lt(i, strlen(req), "the whole line was accepted before the close");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "idle_timeouts"), 1);
    close(fd);
}

Test(timeouts, half_a_request_is_closed_after_request_timeout, .fini = kr_it_fixture_stop,
     .timeout = 60)
{
    const char *args[] = {"--request_timeout_ms", "300", NULL};
    kr_it_fixture_start(args);
    /* a data block cut in half, and a command line without its end */
    int a = kr_it_connect(kr_it_srv.port), b = kr_it_connect(kr_it_srv.port);
    kr_it_sends(a, "set publish 0 0 100\r\nMESSAGE t 10\r\n01234");
    kr_it_sends(b, "set subscr");
    int ca = 0, cb = 0;
    for (int k = 0; k < 100 && !(ca && cb); k++) {
        ca = ca || closed_within(a, 50);
        cb = cb || closed_within(b, 50);
    }
    cr_assert(ca, "the client with half a data block is still open");
    cr_assert(cb, "the client with half a command line is still open");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "request_timeouts"), 2);
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "messages_published"), 0);
    cr_assert(kr_it_wait_log(&kr_it_srv, "request incomplete"), "no log line for the timeout");
    close(a);
    close(b);
}

Test(timeouts, regular_complete_requests_are_not_closed, .fini = kr_it_fixture_stop,
     .timeout = 60)
{
    const char *args[] = {"--request_timeout_ms", "300", "--client_idle_timeout_ms", "1000",
                          "--poll_wait_ms", "600", NULL};
    kr_it_fixture_start(args);
    int fd = kr_it_connect(kr_it_srv.port);
    /* 2 s of requests every 100 ms, each split in two writes 50 ms apart */
    size_t half = sizeof(publish) / 2;
    for (int i = 0; i < 20; i++) {
        kr_it_send(fd, publish, half);
        cr_assert_not(closed_within(fd, 50), "closed during request %d", i);
        kr_it_send(fd, publish + half, sizeof(publish) - 1 - half);
        kr_it_expect(fd, "STORED\r\n");
        cr_assert_not(closed_within(fd, 50), "closed after request %d", i);
    }
    /* a poll that waits longer than request_timeout_ms is not an incomplete request */
    kr_it_sends(fd, "get messages\r\n");
    kr_it_expect(fd, "END\r\n");
    kr_it_sends(fd, "version\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "VERSION ", 8) == 0, "got %s", buf);
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "request_timeouts"), 0);
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "idle_timeouts"), 0);
    close(fd);
}

Test(timeouts, request_timeout_is_live, .fini = kr_it_fixture_stop,
     .timeout = 60)
{
    kr_it_fixture_start(NULL); /* the default, 30 s */
    int adm = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_admin(adm, "config set request_timeout_ms 200", buf, sizeof(buf));
    cr_assert_str_eq(buf, "CONFIG request_timeout_ms 200\nEND\n");
    close(adm);
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_sends(fd, "set publish 0 0 16\r\nMESS");
    int closed = 0;
    for (int k = 0; k < 100 && !closed; k++)
        closed = closed_within(fd, 50);
    cr_assert(closed, "still open with request_timeout_ms 200");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "request_timeouts"), 1);
    close(fd);
}
