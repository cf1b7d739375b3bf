/* The RESP-only listener (resp_port): raw RESP on it, Redis's inline-command answers to a
 * memcached request (never taken as memcached), redis-cli against it, allow_from and
 * max_tcp_clients on it, the port shown by the admin status, /api/server and INFO, and a
 * resp_port that collides with the client port refused at start. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[1 << 16];

/* Start a server whose RESP-only listener is on a free port; returns that port. */
static uint16_t start_with(struct kr_it_server *s, const char *extra_key, const char *extra_val)
{
    static char rp[16];
    uint16_t port = kr_it_free_port();
    snprintf(rp, sizeof(rp), "%u", port);
    const char *args[] = {"--num_router_shards", "3", "--num_net_threads", "2", "--resp_port", rp,
                          extra_key, extra_val, NULL};
    kr_it_start(s, args);
    cr_assert(kr_it_wait_log(s, "RESP-only clients on 127.0.0.1:"), "the start logs the port");
    return port;
}



Test(resp_port, raw_resp_and_cross_protocol)
{
    struct kr_it_server s;
    uint16_t rp = start_with(&s, NULL, NULL);
    int fd = kr_it_connect(rp);
    kr_it_resp_cmd(fd, "PING", NULL);
    kr_it_expect(fd, "+PONG\r\n");
    kr_it_resp_cmd(fd, "INFO", "server", NULL);
    kr_it_read_until(fd, buf, sizeof(buf), "\r\n\r\n");
    char want[64];
    snprintf(want, sizeof(want), "\r\nkraken_resp_port:%u\r\n", rp);
    cr_assert_not_null(strstr(buf, want), "%s", buf);
    kr_it_resp_cmd(fd, "SUBSCRIBE", "rp.a", NULL);
    kr_it_expect(fd, "*3\r\n$9\r\nsubscribe\r\n$4\r\nrp.a\r\n:1\r\n");
    /* a memcached-protocol publisher on the main port reaches it */
    int mc = kr_it_connect(s.port);
    kr_it_publish(mc, "rp.a", "hi", 2);
    kr_it_expect(fd, "*3\r\n$7\r\nmessage\r\n$4\r\nrp.a\r\n$2\r\nhi\r\n");
    /* and a RESP publisher on resp_port reaches a memcached subscriber */
    kr_it_subscribe(mc, "rp.b");
    int pub = kr_it_connect(rp);
    kr_it_resp_cmd(pub, "PUBLISH", "rp.b", "yo", NULL);
    kr_it_expect(pub, ":1\r\n");
    char out[256];
    size_t outlen = 0;
    cr_assert_eq(kr_it_collect(mc, 1, out, sizeof(out), &outlen), 1);
    cr_assert(strstr(out, "MESSAGE rp.b 2\r\nyo\r\n"), "%s", out);
    close(pub);
    close(mc);
    close(fd);
    kr_it_stop(&s);
}

/* Regression: a connection on resp_port is RESP whatever its first byte, so a memcached
 * request gets Redis's answers to inline commands and subscribes nothing. */
Test(resp_port, memcached_request_is_not_taken_as_memcached)
{
    struct kr_it_server s;
    uint16_t rp = start_with(&s, NULL, NULL);
    int fd = kr_it_connect(rp);
    kr_it_sends(fd, "set subscribe 0 0 4\r\nrp.c\r\n");
    kr_it_expect(fd, "-ERR unknown command 'set', with args beginning with: 'subscribe' '0' '0' "
                     "'4' \r\n"
                     "-ERR unknown command 'rp.c', with args beginning with: \r\n");
    kr_it_sends(fd, "get messages\r\n");
    kr_it_expect(fd, "-ERR unknown command 'get', with args beginning with: 'messages' \r\n");
    /* still open and still RESP (inline commands are Redis's too) */
    kr_it_sends(fd, "PING\r\n");
    kr_it_expect(fd, "+PONG\r\n");
    kr_it_resp_cmd(fd, "PUBSUB", "NUMSUB", "rp.c", NULL);
    kr_it_expect(fd, "*2\r\n$4\r\nrp.c\r\n:0\r\n");
    close(fd);
    /* the main port still decides by the first byte */
    int mc = kr_it_connect(s.port);
    kr_it_sends(mc, "version\r\n");
    kr_it_read_until(mc, buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "VERSION ", 8) == 0, "%s", buf);
    close(mc);
    kr_it_stop(&s);
}

Test(resp_port, allow_from_refuses_unread)
{
    struct kr_it_server s;
    uint16_t rp = start_with(&s, "--allow_from", "10.0.0.0/8");
    int fd = kr_it_connect(rp);
    kr_it_resp_cmd(fd, "PING", NULL);
    kr_it_expect_closed(fd);
    close(fd);
    cr_assert_eq(kr_it_admin_stat(&s, "refused_connections"), 1);
    cr_assert_eq(kr_it_admin_stat(&s, "curr_connections"), 0);
    cr_assert(kr_it_wait_log(&s, "refused a connection from 127.0.0.1:"));
    kr_it_stop(&s);
}

Test(resp_port, max_tcp_clients_answered_in_resp)
{
    struct kr_it_server s;
    uint16_t rp = start_with(&s, "--max_tcp_clients", "1");
    int first = kr_it_connect(s.port);
    kr_it_sends(first, "version\r\n");
    kr_it_read_until(first, buf, sizeof(buf), "\r\n");
    int fd = kr_it_connect(rp);
    kr_it_expect(fd, "-ERR max number of clients reached\r\n");
    kr_it_expect_closed(fd);
    close(fd);
    close(first);
    cr_assert_eq(kr_it_admin_stat(&s, "rejected_connections"), 1);
    kr_it_stop(&s);
}

Test(resp_port, shown_in_status_and_api_server)
{
    struct kr_it_server s;
    char hp[16];
    uint16_t http = kr_it_free_port();
    snprintf(hp, sizeof(hp), "%u", http);
    uint16_t rp = start_with(&s, "--http_port", hp);
    int fd = kr_it_connect_unix(s.admin_path);
    kr_it_admin(fd, "status", buf, sizeof(buf));
    close(fd);
    char want[64];
    snprintf(want, sizeof(want), " resp_port=%u ", rp);
    cr_assert_not_null(strstr(buf, want), "%s", buf);
    fd = kr_it_connect(http);
    kr_it_sends(fd, "GET /api/server HTTP/1.0\r\n\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "\x01"); /* never sent: reads to EOF */
    close(fd);
    snprintf(want, sizeof(want), "\"port\":%u,\"resp_port\":%u,", s.port, rp);
    cr_assert_not_null(strstr(buf, want), "%s", buf);
    kr_it_stop(&s);
}

Test(resp_port, off_by_default)
{
    struct kr_it_server s;
    kr_it_start(&s, NULL);
    int fd = kr_it_connect_unix(s.admin_path);
    kr_it_admin(fd, "status", buf, sizeof(buf));
    close(fd);
    cr_assert_not_null(strstr(buf, " resp_port=0 "), "%s", buf);
    cr_assert(!kr_it_log_contains(&s, "RESP-only clients"));
    kr_it_stop(&s);
}

Test(resp_port, same_as_client_port_refused_at_start)
{
    char out[4096], sock[64], p[16];
    snprintf(sock, sizeof(sock), "/tmp/kraken-rp-%d.sock", (int)getpid());
    snprintf(p, sizeof(p), "%u", kr_it_free_port());
    const char *args[] = {"run", "--tcp_server_port", p, "--resp_port", p, "--admin_socket", sock,
                          NULL};
    int rc = kr_it_cli(NULL, out, sizeof(out), args);
    cr_assert_neq(rc, 0, "started with resp_port = tcp_server_port: %s", out);
    cr_assert_not_null(strstr(out, "is the client port"), "%s", out);
    unlink(sock);
}

/* redis-cli subscribes and publishes on resp_port. */
Test(resp_port, redis_cli)
{
    cr_assert_eq(access("/usr/bin/redis-cli", X_OK), 0,
                 "redis-cli is not installed (Debian package redis-tools; sh cmake/deps.sh "
                 "installs it)");
    struct kr_it_server s;
    uint16_t rp = start_with(&s, NULL, NULL);
    char port[16], out[256];
    snprintf(port, sizeof(port), "%u", rp);
    snprintf(out, sizeof(out), "%s.cli-sub", s.log_path);
    pid_t sub = fork();
    cr_assert(sub >= 0);
    if (sub == 0) {
        FILE *f = freopen(out, "w", stdout);
        (void)f;
        dup2(1, 2);
        execl("/usr/bin/redis-cli", "/usr/bin/redis-cli", "-p", port, "subscribe", "rp.cli",
              (char *)NULL);
        _exit(127);
    }
    bool seen = false;
    for (int i = 0; i < 500 && !seen; i++) {
        FILE *f = fopen(out, "r");
        if (f) {
            size_t n = fread(buf, 1, sizeof(buf) - 1, f);
            buf[n] = 0;
            fclose(f);
            seen = strstr(buf, "subscribe\nrp.cli\n1\n") != NULL;
        }
        if (!seen)
            kr_it_sleep_ms(10);
    }
    cr_assert(seen, "redis-cli subscribe printed: %s", buf);
    int pub = kr_it_connect(rp);
    kr_it_resp_cmd(pub, "PUBLISH", "rp.cli", "via-resp-port", NULL);
    kr_it_expect(pub, ":1\r\n");
    close(pub);
    seen = false;
    for (int i = 0; i < 500 && !seen; i++) {
        FILE *f = fopen(out, "r");
        if (f) {
            size_t n = fread(buf, 1, sizeof(buf) - 1, f);
            buf[n] = 0;
            fclose(f);
            seen = strstr(buf, "message\nrp.cli\nvia-resp-port\n") != NULL;
        }
        if (!seen)
            kr_it_sleep_ms(10);
    }
    kill(sub, SIGTERM);
    waitpid(sub, NULL, 0);
    unlink(out);
    cr_assert(seen, "redis-cli subscribe printed: %s", buf);
    kr_it_stop(&s);
}
