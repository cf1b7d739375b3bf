/* The control thread out of file descriptors: with the server's open-file limit used up by
 * client connections, connections to the health port and the admin socket must not make
 * the control thread spin on a failing accept (CPU time bounded), must be closed rather
 * than left hanging (an admin client is told why), and both must work again once
 * descriptors are free. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "kr_itest.h"

#define NOFILE 64
#define FLOOD 120 /* client connections: more than the limit leaves room for */
#define ROUNDS 4
#define PER_ROUND 20 /* health and admin connections per round */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A non-blocking connect to a Unix socket: the socket, or -errno. */
static int connect_unix_nb(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    cr_assert_lt(len, sizeof(sa.sun_path));
    memcpy(sa.sun_path, path, len);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* Read what the server sent before closing: 1 when it closed (EOF or reset), 0 when the
 * connection is still open after a bounded wait; the bytes go to buf. */
static int closed_by_server(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < 1000; i++) {
        ssize_t n = recv(fd, buf + len, cap - 1 - len, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)))
            return 1;
        if (n > 0) {
            len += (size_t)n;
            buf[len] = '\0';
            continue;
        }
        kr_it_sleep_ms(10);
    }
    return 0;
}

/* The health port's answer on a fresh connection ("" when it closed without one). */
static void health_answer(uint16_t port, char *line, size_t cap)
{
    int fd = kr_it_connect(port);
    size_t n = kr_it_read_until(fd, line, cap, "\n");
    line[n] = '\0';
    close(fd);
}

Test(admin_fds, health_port_and_admin_socket_when_descriptors_run_out, .timeout = 240)
{
    struct kr_it_server srv;
    char hp[16];
    snprintf(hp, sizeof(hp), "%u", kr_it_free_port());
    const char *args[] = {"--num_net_threads", "1", "--num_router_shards", "1",
                          "--health_port", hp, NULL};
    kr_it_start_nofile(&srv, args, NOFILE);
    uint16_t health = (uint16_t)atoi(hp);
    static char buf[4096];
    health_answer(health, buf, sizeof(buf));
    cr_assert_str_eq(buf, "ok\n");

    /* use the descriptors up with clients (the net thread keeps those it accepted) */
    static int flood[FLOOD];
    for (int i = 0; i < FLOOD; i++) {
        flood[i] = kr_it_connect_nb(srv.port);
        cr_assert_geq(flood[i], 0);
    }
    cr_assert(kr_it_wait_log(&srv, "accept: out of file descriptors"),
              "the clients did not use the descriptors up");

    int cpu0 = kr_it_proc_cpu_ms(srv.pid);
    cr_assert_geq(cpu0, 0);
    uint64_t t0 = now_ms();
    static int hfd[ROUNDS * PER_ROUND], afd[ROUNDS * PER_ROUND];
    int n = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < PER_ROUND; i++, n++) {
            hfd[n] = kr_it_connect_nb(health);
            afd[n] = connect_unix_nb(srv.admin_path);
            cr_assert_geq(hfd[n], 0);
            cr_assert_geq(afd[n], 0, "admin connect: %s", strerror(-afd[n]));
            ssize_t w = send(afd[n], "status\n", 7, MSG_NOSIGNAL);
            (void)w;
        }
        kr_it_sleep_ms(300);
    }
    uint64_t wall = now_ms() - t0;
    int cpu1 = kr_it_proc_cpu_ms(srv.pid);
    fprintf(stderr, "out of descriptors: server CPU %d ms in %llu ms\n", cpu1 - cpu0,
            (unsigned long long)wall);
    /* a control thread spinning on accept() burns a whole CPU; a paused one almost none */
    cr_assert_lt((uint64_t)(cpu1 - cpu0), wall / 2, "server used %d ms of CPU in %llu ms",
                 cpu1 - cpu0, (unsigned long long)wall);

    /* none was left hanging: each admin connection was closed, told why */
    int told = 0;
    for (int i = 0; i < n; i++) {
        cr_assert(closed_by_server(afd[i], buf, sizeof(buf)),
                  "admin connection %d left open, after: '%s'", i, buf);
        told += strstr(buf, "ERROR the server is out of file descriptors") != NULL;
        cr_assert(closed_by_server(hfd[i], buf, sizeof(buf)), "health connection %d left open",
                  i);
        close(afd[i]);
        close(hfd[i]);
    }
    cr_assert_gt(told, 0);
    cr_assert(kr_it_log_contains(&srv, "admin socket: out of file descriptors"));
    cr_assert(kr_it_log_contains(&srv, "health port: out of file descriptors"));
    long logsize = kr_it_file_size(srv.log_path);
    cr_assert_lt(logsize, 64 * 1024, "log grew to %ld bytes", logsize);

    /* descriptors free again: both answer */
    for (int i = 0; i < FLOOD; i++)
        close(flood[i]);
    bool ok = false;
    for (int i = 0; i < 200 && !ok; i++) {
        health_answer(health, buf, sizeof(buf));
        ok = strcmp(buf, "ok\n") == 0;
        if (!ok)
            kr_it_sleep_ms(20);
    }
    cr_assert(ok, "the health port did not answer after descriptors were freed");
    /* the server notices the closes asynchronously: until enough descriptors are free again
     * the admin socket may still answer "try again" (bounded retries) */
    ok = false;
    for (int i = 0; i < 200 && !ok; i++) {
        int fd = kr_it_connect_unix(srv.admin_path);
        kr_it_admin(fd, "status", buf, sizeof(buf));
        close(fd);
        ok = strncmp(buf, "STATUS running", 14) == 0;
        if (!ok) {
            cr_assert(strstr(buf, "out of file descriptors") != NULL, "%s", buf);
            kr_it_sleep_ms(20);
        }
    }
    cr_assert(ok, "the admin socket did not answer after descriptors were freed: %s", buf);
    kr_it_stop(&srv);
}
