/* Access control (allow_from) on the client and health ports, TCP keepalive on client
 * sockets, and the admin socket under a burst of connects and its command table. */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[1 << 20];


/* ------------------------------------------------------------------ allow_from */

Test(access, refused_outside_allow_from_closed_unread_and_counted)
{
    struct kr_it_server srv;
    char hp[16];
    uint16_t health = kr_it_free_port();
    snprintf(hp, sizeof(hp), "%u", health);
    const char *args[] = {"--allow_from", "10.0.0.0/8, fd00::/8", "--health_port", hp, NULL};
    kr_it_start(&srv, args);
    int fd = kr_it_connect(srv.port); /* the kernel completes the handshake */
    kr_it_sends(fd, "version\r\n");
    kr_it_expect_closed(fd); /* and the server closes it without a byte */
    close(fd);
    fd = kr_it_connect(health);
    kr_it_expect_closed(fd); /* no "ok" for a refused health checker either */
    close(fd);
    cr_assert_eq(kr_it_admin_stat(&srv, "refused_connections"), 2);
    cr_assert_eq(kr_it_admin_stat(&srv, "curr_connections"), 0);
    cr_assert(kr_it_wait_log(&srv, "refused a connection from 127.0.0.1:"));
    cr_assert(kr_it_wait_log(&srv, "health port: refused a connection from 127.0.0.1"));
    cr_assert(!kr_it_log_contains(&srv, "suppressed 0"));
    kr_it_stop(&srv);
}

Test(access, default_allows_loopback)
{
    struct kr_it_server srv;
    char hp[16];
    uint16_t health = kr_it_free_port();
    snprintf(hp, sizeof(hp), "%u", health);
    const char *args[] = {"--health_port", hp, NULL};
    kr_it_start(&srv, args);
    int fd = kr_it_connect(srv.port);
    kr_it_sends(fd, "version\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "VERSION ", 8) == 0, "%s", buf);
    int h = kr_it_connect(health);
    kr_it_expect(h, "ok\n");
    close(h);
    kr_it_sends(fd, "stats\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "END\r\n");
    cr_assert_not_null(strstr(buf, "STAT refused_connections 0\r\n"), "%s", buf);
    cr_assert_not_null(strstr(buf, "STAT accept_fd_exhausted 0\r\n"), "%s", buf);
    close(fd);
    /* the admin socket stays private */
    struct stat st;
    cr_assert_eq(stat(srv.admin_path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
    kr_it_stop(&srv);
}

Test(access, bad_allow_from_stops_the_start_with_a_message)
{
    char out[4096], sock[64];
    snprintf(sock, sizeof(sock), "/tmp/kraken-acl-%d.sock", (int)getpid());
    const char *cases[][2] = {{"10.0.0.0/33", "prefix length of '10.0.0.0/33' is over 32"},
                              {"10.1.0.0/8", "'10.1.0.0/8' has bits set beyond"},
                              {"localhost", "'localhost' is not an IPv4 or IPv6 address"},
                              {"", "allow_from is empty"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *args[] = {"run", "--tcp_server_port", "0", "--admin_socket", sock,
                              "--allow_from", cases[i][0], NULL};
        int rc = kr_it_cli(NULL, out, sizeof(out), args);
        cr_assert_neq(rc, 0, "started with allow_from '%s'", cases[i][0]);
        cr_assert_not_null(strstr(out, cases[i][1]), "'%s': %s", cases[i][0], out);
    }
    unlink(sock);
}

/* ------------------------------------------------------------------ keepalive */

/* The `ss` line of the server's side of the connection whose client port is `cport`. */
static bool server_side_ss(uint16_t port, uint16_t cport, char *line, size_t cap)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "ss -tnoH state established '( sport = :%u and dport = :%u )' 2>/dev/null", port,
             cport);
    for (int tries = 0; tries < 100; tries++) {
        FILE *p = popen(cmd, "r");
        cr_assert_not_null(p);
        size_t n = fread(line, 1, cap - 1, p);
        pclose(p);
        line[n] = 0;
        if (n)
            return true;
        kr_it_sleep_ms(10);
    }
    return false;
}

static uint16_t local_port(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    return ntohs(a.sin_port);
}

Test(keepalive, client_sockets_probe_after_tcp_keepalive_s)
{
    cr_assert_eq(system("ss -V >/dev/null 2>&1"), 0,
                 "ss is not installed (Debian package iproute2; sh cmake/deps.sh installs it)");
    struct kr_it_server srv;
    const char *args[] = {"--tcp_keepalive_s", "7", NULL};
    kr_it_start(&srv, args);
    int fd = kr_it_connect(srv.port);
    kr_it_sends(fd, "version\r\n"); /* accepted by now */
    kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
    char line[1024];
    cr_assert(server_side_ss(srv.port, local_port(fd), line, sizeof(line)));
    cr_assert_not_null(strstr(line, "timer:(keepalive,"), "no keepalive timer: %s", line);
    close(fd);
    kr_it_stop(&srv);

    const char *off[] = {"--tcp_keepalive_s", "0", NULL};
    kr_it_start(&srv, off);
    fd = kr_it_connect(srv.port);
    kr_it_sends(fd, "version\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
    cr_assert(server_side_ss(srv.port, local_port(fd), line, sizeof(line)));
    cr_assert_null(strstr(line, "keepalive"), "keepalive with tcp_keepalive_s 0: %s", line);
    close(fd);
    kr_it_stop(&srv);
}

/* ------------------------------------------------------------------ admin socket */

Test(admin_socket, burst_of_200_connects_all_answered)
{
    struct kr_it_server srv;
    kr_it_start(&srv, NULL);
    enum { N = 200 };
    int fds[N];
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, srv.admin_path);
    for (int i = 0; i < N; i++) {
        fds[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        cr_assert_geq(fds[i], 0);
        int rc = connect(fds[i], (struct sockaddr *)&a, sizeof(a));
        cr_assert_eq(rc, 0, "connect %d of %d: %s", i + 1, N, strerror(errno));
    }
    for (int i = 0; i < N; i++) {
        ssize_t n = send(fds[i], "status\n", 7, MSG_NOSIGNAL);
        (void)n; /* a refused one may be closed already */
    }
    int served = 0, refused = 0;
    for (int i = 0; i < N; i++) {
        char reply[512];
        size_t len = 0;
        struct pollfd p = {.fd = fds[i], .events = POLLIN};
        while (len < sizeof(reply) - 1 && !memchr(reply, '\n', len)) {
            cr_assert_gt(poll(&p, 1, 10000), 0, "connection %d got no answer", i);
            ssize_t n = recv(fds[i], reply + len, sizeof(reply) - 1 - len, 0);
            if (n <= 0)
                break;
            len += (size_t)n;
        }
        reply[len] = 0;
        if (strncmp(reply, "STATUS running", 14) == 0)
            served++;
        else if (strcmp(reply, "ERROR too many admin connections (at most 64)\n") == 0)
            refused++;
        else
            cr_assert_fail("connection %d answered '%s'", i, reply);
    }
    cr_assert_eq(served + refused, N);
    cr_assert_geq(served, 64, "served %d", served);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    kr_it_stop(&srv);
}

/* Every command of the table (as `help` lists it) answers a wrong number of arguments
 * with the same clear error and does nothing else; `help me` like `status now`. */
Test(admin_socket, argument_counts_checked_for_every_command)
{
    struct kr_it_server srv;
    kr_it_start(&srv, NULL);
    int fd = kr_it_connect_unix(srv.admin_path);
    static char help[1 << 16];
    kr_it_admin(fd, "help", help, sizeof(help));
    int commands = 0, noarg = 0;
    for (char *line = help; strncmp(line, "HELP ", 5) == 0;) {
        char *nl = strchr(line, '\n');
        cr_assert_not_null(nl);
        *nl = 0;
        /* "HELP <usage padded to 29> <what>": the usage is the words before the padding */
        char usage[64];
        char *u = line + 5, *gap = strstr(u, "  ");
        size_t ul = gap ? (size_t)(gap - u) : strcspn(u, " ");
        cr_assert_lt(ul, sizeof(usage));
        memcpy(usage, u, ul);
        usage[ul] = 0;
        commands++;
        char req[256];
        if (!strchr(usage, ' ')) {
            snprintf(req, sizeof(req), "%s extra", usage);
            char want[128];
            snprintf(want, sizeof(want), "ERROR %s takes no arguments\n", usage);
            kr_it_admin(fd, req, buf, sizeof(buf));
            cr_assert_str_eq(buf, want, "'%s'", req);
            noarg++;
        } else if (!strstr(usage, "VALUE")) {
            /* as many words as the usage has, plus one */
            snprintf(req, sizeof(req), "%s x", usage);
            for (char *p = req; *p; p++)
                if (*p == '[' || *p == ']')
                    *p = 'a';
            kr_it_admin(fd, req, buf, sizeof(buf));
            cr_assert(strncmp(buf, "ERROR usage: ", 13) == 0, "'%s' answered '%s'", req, buf);
            cr_assert_not_null(strstr(buf, usage), "'%s' answered '%s'", req, buf);
        }
        line = nl + 1;
    }
    cr_assert_geq(commands, 12, "%s", help);
    cr_assert_geq(noarg, 7);
    kr_it_admin(fd, "config set", buf, sizeof(buf));
    cr_assert_str_eq(buf, "ERROR usage: config get [KEY] | config set KEY VALUE\n");
    kr_it_admin(fd, "config frob", buf, sizeof(buf));
    cr_assert_str_eq(buf, "ERROR usage: config get [KEY] | config set KEY VALUE\n");
    /* nothing happened: still running, still connected */
    kr_it_admin(fd, "status", buf, sizeof(buf));
    cr_assert(strncmp(buf, "STATUS running", 14) == 0, "%s", buf);
    close(fd);
    kr_it_stop(&srv);
}
