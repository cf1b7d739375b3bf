/* The server out of file descriptors: started with a low open-file limit and flooded with
 * many more connections than fit, it must keep serving its existing clients, answer or
 * close every flood connection (no hang), not spin, not flood its log, accept again once
 * the flood left, and stop cleanly. */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "kr_itest.h"

#define NOFILE 128  /* the server's limit: room for roughly 90 clients */
#define WAVES 6
#define PER_WAVE 100

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

enum { F_PENDING, F_REJECTED, F_SERVED };

/* Read what a flood connection got so far: SERVER_ERROR Too many clients or a close marks
 * it rejected; a VERSION reply marks it served. */
static int classify(int fd, char *acc, size_t *len, size_t cap)
{
    for (;;) {
        ssize_t n = recv(fd, acc + *len, cap - 1 - *len, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)))
            return F_REJECTED;
        if (n < 0)
            break;
        *len += (size_t)n;
        acc[*len] = 0;
        if (*len == cap - 1)
            break;
    }
    if (strstr(acc, "SERVER_ERROR Too many clients\r\n"))
        return F_REJECTED;
    if (strstr(acc, "VERSION "))
        return F_SERVED;
    return F_PENDING;
}

Test(fd_limit, flood_beyond_the_descriptor_limit)
{
    struct kr_it_server srv;
    const char *args[] = {"--num_net_threads", "2", "--num_router_shards", "1", NULL};
    kr_it_start_nofile(&srv, args, NOFILE);
    int sub = kr_it_connect(srv.port);
    int pub = kr_it_connect(srv.port);
    int ctl = kr_it_connect(srv.port);
    kr_it_subscribe(sub, "fd_topic");

    enum { N = WAVES * PER_WAVE };
    static int fds[N];
    static char acc[N][64];
    static size_t acclen[N];
    static int state[N];
    int nfd = 0;
    int cpu0 = kr_it_proc_cpu_ms(srv.pid);
    cr_assert_geq(cpu0, 0);
    uint64_t t0 = now_ms();
    size_t delivered = 0;
    for (int w = 0; w < WAVES; w++) {
        for (int i = 0; i < PER_WAVE; i++) {
            int fd = kr_it_connect_nb(srv.port);
            cr_assert_geq(fd, 0, "client side connect: %s", strerror(-fd));
            fds[nfd++] = fd;
        }
        /* the existing clients are served while the flood is on */
        char payload[32];
        int pl = snprintf(payload, sizeof(payload), "wave%d", w);
        kr_it_publish(pub, "fd_topic", payload, (size_t)pl);
        static char out[1 << 16];
        size_t outlen = 0;
        size_t got = kr_it_collect(sub, 1, out, sizeof(out), &outlen);
        cr_assert_eq(got, 1, "subscriber did not get its message during wave %d", w);
        cr_assert_not_null(strstr(out, payload));
        delivered += got;
        kr_it_sleep_ms(100);
    }
    cr_assert_eq(delivered, WAVES);

    /* every flood connection is answered: rejected (SERVER_ERROR or closed) or, once it
     * was accepted, served; bounded wait */
    for (int i = 0; i < nfd; i++) {
        ssize_t n = send(fds[i], "version\r\n", 9, MSG_NOSIGNAL); /* may be closed already */
        (void)n;
    }
    int pending = nfd;
    for (int round = 0; round < 500 && pending > 0; round++) {
        pending = 0;
        for (int i = 0; i < nfd; i++) {
            if (state[i] == F_PENDING)
                state[i] = classify(fds[i], acc[i], &acclen[i], sizeof(acc[i]));
            pending += state[i] == F_PENDING;
        }
        if (pending)
            kr_it_sleep_ms(20);
    }
    int rejected = 0, served = 0;
    for (int i = 0; i < nfd; i++) {
        rejected += state[i] == F_REJECTED;
        served += state[i] == F_SERVED;
    }
    cr_assert_eq(pending, 0, "%d flood connections got no answer (%d rejected, %d served)",
                 pending, rejected, served);
    cr_assert_gt(rejected, N / 2, "only %d of %d refused: the limit was not reached", rejected,
                 N);
    cr_assert_gt(served, 0);
    fprintf(stderr, "flood: %d connections, %d refused, %d served\n", nfd, rejected, served);
    uint64_t t1 = now_ms();
    int cpu1 = kr_it_proc_cpu_ms(srv.pid);
    uint64_t wall = t1 - t0;
    /* a loop spinning on accept() burns a CPU per net thread; a bounded one a few percent */
    cr_assert_lt((uint64_t)(cpu1 - cpu0), wall / 2,
                 "server used %d ms of CPU in %llu ms of flood", cpu1 - cpu0,
                 (unsigned long long)wall);
    cr_assert_gt(kr_it_stat_fd(ctl, "accept_fd_exhausted"), 0);
    cr_assert_geq(kr_it_stat_fd(ctl, "rejected_connections"), (unsigned long long)rejected / 2);
    fprintf(stderr, "flood: server CPU %d ms in %llu ms\n", cpu1 - cpu0,
            (unsigned long long)wall);
    long logsize = kr_it_file_size(srv.log_path);
    cr_assert_lt(logsize, 64 * 1024, "log grew to %ld bytes", logsize);
    cr_assert(!kr_it_log_contains(&srv, "suppressed 0 similar"));

    /* the flood leaves: new clients are accepted and served again */
    for (int i = 0; i < nfd; i++)
        close(fds[i]);
    bool ok = false;
    for (int i = 0; i < 200 && !ok; i++) {
        int fd = kr_it_connect(srv.port);
        kr_it_sends(fd, "version\r\n");
        char buf[128];
        kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
        ok = strncmp(buf, "VERSION ", 8) == 0;
        close(fd);
        if (!ok)
            kr_it_sleep_ms(20);
    }
    cr_assert(ok, "no client was served after the flood left");
    int late = kr_it_connect(srv.port);
    kr_it_subscribe(late, "fd_topic");
    kr_it_publish(pub, "fd_topic", "after", 5);
    static char out[1 << 16];
    size_t outlen = 0;
    cr_assert_eq(kr_it_collect(late, 1, out, sizeof(out), &outlen), 1);
    cr_assert_eq(kr_it_collect(sub, 1, out, sizeof(out), &outlen), 1);
    close(late);
    close(sub);
    close(pub);
    close(ctl);
    kr_it_stop(&srv);
}
