/* Integration tests of cheap requests that would amplify into server work: `stats` pipelined
 * by many clients at once must not stall other clients, and a client that pipelines them
 * without reading its replies must not make the server buffer them without bound. The real
 * server on an ephemeral loopback port, raw bytes. Nothing here asserts on latency: each
 * test asserts progress (what completes before what) and bounded memory, with every loop
 * and wait bounded. */
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

static char buf[1 << 16];

/* One net thread: the flooders and the victim share it, the worst case for fairness. A
 * waiting poll (poll_wait_ms) answers the round trip as soon as the message is queued. */
KR_IT_FIXTURE(start_one_thread, "--num_net_threads", "1", "--num_router_shards", "2",
              "--poll_wait_ms", "5000");

/* The value of `STAT <name>` in a stats reply, or -1 when the reply has no such line. */
static long long stat_in(const char *reply, const char *name)
{
    char key[96];
    snprintf(key, sizeof(key), "STAT %s ", name);
    const char *p = strstr(reply, key);
    return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

static void stats_into(int fd, char *out, size_t cap)
{
    kr_it_sends(fd, "stats\r\n");
    kr_it_read_until(fd, out, cap, "END\r\n");
}

static long long stat_now(const char *name)
{
    int fd = kr_it_connect(kr_it_srv.port);
    stats_into(fd, buf, sizeof(buf));
    close(fd);
    return stat_in(buf, name);
}

/* A client pipelining `stats` requests: what it must send, what it has read back. */
struct flooder {
    int fd;
    char *req;       /* nreq copies of "stats\r\n" */
    size_t req_len;
    size_t sent;
    size_t nreq;
    size_t answered; /* "END\r\n" lines read */
    char tail[4];    /* the end of the last read, for an END split across reads */
    size_t tail_len;
    bool reads;      /* false: never reads its socket */
};

static void flooder_init(struct flooder *f, size_t nreq, bool reads)
{
    memset(f, 0, sizeof(*f));
    f->fd = kr_it_connect(kr_it_srv.port);
    f->nreq = nreq;
    f->req_len = nreq * 7;
    f->req = malloc(f->req_len);
    cr_assert_not_null(f->req);
    for (size_t i = 0; i < nreq; i++)
        memcpy(f->req + i * 7, "stats\r\n", 7);
    f->reads = reads;
}

static void flooder_free(struct flooder *f)
{
    if (f->fd >= 0)
        close(f->fd);
    free(f->req);
}

/* Send and read what the socket takes right now, without blocking. */
static void flooder_pump(struct flooder *f)
{
    while (f->sent < f->req_len) {
        ssize_t n = send(f->fd, f->req + f->sent, f->req_len - f->sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n <= 0) {
            cr_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "flooder send: %s",
                      strerror(errno));
            break;
        }
        f->sent += (size_t)n;
    }
    if (!f->reads)
        return;
    static char rb[1 << 16];
    for (int k = 0; k < 64; k++) {
        memcpy(rb, f->tail, f->tail_len);
        ssize_t n = recv(f->fd, rb + f->tail_len, sizeof(rb) - f->tail_len, MSG_DONTWAIT);
        if (n <= 0) {
            cr_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "flooder recv: %s",
                      n == 0 ? "closed" : strerror(errno));
            break;
        }
        size_t len = f->tail_len + (size_t)n, last = 0;
        for (const char *p = rb; (p = memmem(p, len - (size_t)(p - rb), "END\r\n", 5)); p += 5) {
            f->answered++;
            last = (size_t)(p - rb) + 5;
        }
        size_t keep = len - last < 4 ? len - last : 4;
        memcpy(f->tail, rb + len - keep, keep);
        f->tail_len = keep;
    }
}

/* One publish by `pub` and the poll by `sub` that receives it. */
static void round_trip(int pub, int sub, int i)
{
    char payload[32];
    int plen = snprintf(payload, sizeof(payload), "rt%d", i);
    kr_it_publish(pub, "victim", payload, (size_t)plen);
    char entry[64], want[128];
    int elen = snprintf(entry, sizeof(entry), "MESSAGE victim %d\r\n%s\r\n", plen, payload);
    snprintf(want, sizeof(want), "VALUE messages 0 %d\r\n%sEND\r\n", elen - 2, entry);
    size_t n = kr_it_get(sub, buf, sizeof(buf));
    cr_assert(n > 0 && strcmp(buf, want) == 0, "round trip %d: got '%s', want '%s'", i, buf, want);
}

#define KR_NFLOOD 4
#define KR_FLOOD_REQUESTS (64 * 1024) /* 448 KiB of `stats` per flooder, ~70 MiB of replies */
#define KR_VICTIM_ROUNDS 200          /* round trips the victim must complete meanwhile */

TestSuite(amplify, .init = start_one_thread, .fini = kr_it_fixture_stop, .timeout = 300);

/* Regression: a stats request cost tens of microseconds (the allocator's statistics were
 * merged on the net thread per request) and a connection's whole read (thousands of
 * pipelined requests) ran before anything else, so a few clients pipelining stats stalled
 * every client on their net thread. */
Test(amplify, pipelined_stats_floods_do_not_starve_other_clients)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "victim");
    struct flooder fl[KR_NFLOOD];
    for (int i = 0; i < KR_NFLOOD; i++)
        flooder_init(&fl[i], KR_FLOOD_REQUESTS, true);
    for (int i = 0; i < KR_NFLOOD; i++)
        flooder_pump(&fl[i]);
    /* the victim's round trips, while the flooders are still being answered */
    int rounds = 0;
    bool flood_done = false;
    while (rounds < KR_VICTIM_ROUNDS && !flood_done) {
        round_trip(pub, sub, rounds++);
        flood_done = true;
        for (int i = 0; i < KR_NFLOOD; i++) {
            flooder_pump(&fl[i]);
            flood_done = flood_done && fl[i].answered == fl[i].nreq;
        }
    }
    cr_assert_eq(rounds, KR_VICTIM_ROUNDS,
                 "the victim completed only %d round trips while %d clients pipelined %d stats "
                 "requests each",
                 rounds, KR_NFLOOD, KR_FLOOD_REQUESTS);
    /* and the flood itself is answered in full, in a bounded number of pumps */
    for (int k = 0; k < 200000 && !flood_done; k++) {
        flood_done = true;
        for (int i = 0; i < KR_NFLOOD; i++) {
            flooder_pump(&fl[i]);
            flood_done = flood_done && fl[i].answered == fl[i].nreq;
        }
        if (!flood_done)
            poll(NULL, 0, 1);
    }
    for (int i = 0; i < KR_NFLOOD; i++) {
        cr_assert_eq(fl[i].answered, fl[i].nreq, "flooder %d: %zu of %zu stats answered", i,
                     fl[i].answered, fl[i].nreq);
        flooder_free(&fl[i]);
    }
    close(sub);
    close(pub);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define KR_NLEAVE 20

/* Regression: clients that pipeline 1 MB of stats each and leave at once (their requests
 * still in the server's socket buffers) kept the server busy with what they left behind
 * before it answered anyone else: each whole read of theirs ran before the server saw that
 * they had gone. Each round trip is bounded by the helpers' read timeout; the whole
 * series has a sanity bound a thousand times what it takes. */
Test(amplify, server_answers_at_once_after_flooders_leave)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "victim");
    struct flooder fl[KR_NLEAVE];
    for (int i = 0; i < KR_NLEAVE; i++) {
        flooder_init(&fl[i], 150 * 1000, false); /* about 1 MB of requests */
        flooder_pump(&fl[i]);
    }
    for (int i = 0; i < KR_NLEAVE; i++)
        flooder_free(&fl[i]);
    double t0 = now_s();
    for (int i = 0; i < 20; i++)
        round_trip(pub, sub, i);
    double took = now_s() - t0;
    cr_log_info("20 round trips after %d flooders left: %.3f s", KR_NLEAVE, took);
    cr_assert_lt(took, 3.0, "20 round trips took %.1f s after the flooders left", took);
    close(sub);
    close(pub);
    /* the flooders' connections are gone */
    kr_it_wait_stat(kr_it_srv.port, "curr_connections", KR_IT_EQ, 1);
}

/* Regression: a client that pipelines stats and never reads made the server build every
 * reply of a whole read (about 160 bytes of replies per byte read) before it stopped
 * reading that client. Now requests wait while replies wait for the socket, so what the
 * server holds per such client stays near one turn's replies plus the socket's buffers. */
Test(amplify, a_client_that_does_not_read_its_stats_is_bounded)
{
    int fd = kr_it_connect(kr_it_srv.port);
    stats_into(fd, buf, sizeof(buf));
    long long before = stat_in(buf, "jemalloc_allocated");
    long long written0 = stat_in(buf, "bytes_written");
    close(fd);
    struct flooder fl[KR_NFLOOD];
    for (int i = 0; i < KR_NFLOOD; i++) {
        flooder_init(&fl[i], 1024 * 1024, false);
        flooder_pump(&fl[i]);
    }
    /* pump until the server stopped taking requests from each (bounded) */
    long long written = stat_now("bytes_written"), prev = 0;
    for (int k = 0; k < 200 && written - prev >= 4096; k++) { /* more than the probe's reply */
        kr_it_sleep_ms(50);
        for (int i = 0; i < KR_NFLOOD; i++)
            flooder_pump(&fl[i]);
        prev = written;
        written = stat_now("bytes_written");
    }
    cr_assert_lt(written - prev, 4096, "the server kept writing to clients that do not read");
    for (int i = 0; i < KR_NFLOOD; i++)
        cr_assert(fl[i].sent < fl[i].req_len, "flooder %d: the server read all its requests", i);
    if (before < 0) { /* no allocator figures (not built with jemalloc): the rest cannot be seen */
        for (int i = 0; i < KR_NFLOOD; i++)
            flooder_free(&fl[i]);
        return;
    }
    /* the allocator figures after a refresh that follows the flood */
    long long refreshes = stat_now("stats_refreshes");
    cr_assert_geq(refreshes, 0, "jemalloc figures without stats_refreshes");
    kr_it_wait_stat(kr_it_srv.port, "stats_refreshes", KR_IT_GE, refreshes + 1);
    long long after = stat_now("jemalloc_allocated");
    long long grown = after - before;
    cr_log_info("%d clients not reading: the server wrote %lld bytes, holds %lld more bytes",
                KR_NFLOOD, written - written0, grown);
    cr_assert_lt(grown, (long long)KR_NFLOOD * (2 << 20),
                 "the server holds %lld more bytes for %d clients that do not read", grown,
                 KR_NFLOOD);
    for (int i = 0; i < KR_NFLOOD; i++)
        flooder_free(&fl[i]); /* only now: the server frees what it holds for them */
}

/* The allocator figures in `stats` are refreshed once a second, off the net threads:
 * requests in between show the same figures, and those figures are sane. */
Test(amplify, stats_show_cached_allocator_figures)
{
    int fd = kr_it_connect(kr_it_srv.port), sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    stats_into(fd, buf, sizeof(buf));
    if (!strstr(buf, "STAT allocator jemalloc\r\n")) {
        cr_assert_not_null(strstr(buf, "STAT allocator libc\r\n"), "%s", buf);
        goto out;
    }
    cr_assert_geq(stat_in(buf, "stats_refreshes"), 1, "no stats_refreshes in:\n%s", buf);
    kr_it_subscribe(sub, "churn");
    static char a[1 << 16], b[1 << 16];
    static const char *const names[] = {"jemalloc_allocated", "jemalloc_active",
                                        "jemalloc_resident", "jemalloc_mapped"};
    bool same_epoch = false;
    for (int attempt = 0; attempt < 20 && !same_epoch; attempt++) {
        stats_into(fd, a, sizeof(a));
        /* allocate between the two requests: queue 100 messages of 256 bytes */
        static char payload[256];
        memset(payload, 'x', sizeof(payload));
        for (int i = 0; i < 100; i++)
            kr_it_publish(pub, "churn", payload, sizeof(payload));
        stats_into(fd, b, sizeof(b));
        same_epoch = stat_in(a, "stats_refreshes") == stat_in(b, "stats_refreshes");
        if (same_epoch)
            for (size_t i = 0; i < 4; i++)
                cr_assert_eq(stat_in(a, names[i]), stat_in(b, names[i]),
                             "%s changed between two requests of one refresh", names[i]);
        /* drain the queue */
        size_t n = kr_it_get(sub, buf, sizeof(buf));
        cr_assert_gt(n, 0);
    }
    cr_assert(same_epoch, "no two stats requests fell within one refresh interval");
    long long al = stat_in(b, names[0]), ac = stat_in(b, names[1]), re = stat_in(b, names[2]),
              ma = stat_in(b, names[3]);
    cr_assert(al > 0 && ac >= al && re > 0 && ma >= ac,
              "allocated %lld active %lld resident %lld mapped %lld", al, ac, re, ma);
    /* and they are refreshed: within a few refresh intervals the count moves on */
    long long r0 = stat_in(b, "stats_refreshes");
    kr_it_wait_stat(kr_it_srv.port, "stats_refreshes", KR_IT_GE, r0 + 1);
    stats_into(fd, b, sizeof(b));
    long long ut = stat_in(b, "rusage_user");
    cr_assert_geq(ut, 0, "no rusage_user in:\n%s", b);
    cr_assert_gt(stat_in(b, "pid"), 0);
out:
    close(fd);
    close(sub);
    close(pub);
}
