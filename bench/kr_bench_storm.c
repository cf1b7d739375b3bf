/* kraken-bench's storm scenario: subscribe storms of new topics (Kraken only).
 *
 * (a) one connection subscribes --topics new topics in one request and times it until
 *     STORED, then unsubscribes them all in one request and times that too;
 * (b) --subs connections, all connected first, each send one request subscribing
 *     --topics-per-sub new topics at the same moment; each connection's time from that
 *     moment to its STORED goes into a histogram.
 *
 * The server does the work here and the bench only writes bytes and waits, so this runs on
 * the calling thread with non-blocking sockets and poll(2); every wait is bounded by
 * --connect-timeout. Topic names carry a per-run tag so that every run subscribes topics the
 * server has not seen, even against a server that is kept running. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "kr_bench_run.h"

struct kb_storm_conn {
    int fd;
    struct kr_bench_buf out; /* the request */
    size_t sent;
    int send_errno;          /* the send failed (the server may still have answered) */
    struct kr_bench_buf in;
    int done;                /* 1: STORED, -1: failed */
    uint64_t done_ns;        /* from the wave's start */
};

static uint64_t kb_storm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void kb_storm_err(struct kr_bench_result *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void kb_storm_err(struct kr_bench_result *res, const char *fmt, ...)
{
    if (res->error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->error, sizeof(res->error), fmt, ap);
    va_end(ap);
}

/* A connected non-blocking socket, or -1 (error in res). */
static int kb_storm_connect(const struct addrinfo *ai, struct kr_bench_result *res)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        kb_storm_err(res, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        kb_storm_err(res, "connect: %s", strerror(errno));
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Build `set <verb>` of n topics named <prefix><tag>.<first + i>. */
static void kb_storm_request(struct kr_bench_buf *b, const char *verb, const char *prefix,
                             const char *tag, uint64_t first, uint64_t n)
{
    /* the codec takes arrays of names: build them in one arena */
    size_t per = strlen(prefix) + strlen(tag) + 1 + 20 + 1;
    char *arena = malloc(per * n + 1);
    const char **names = malloc(sizeof(*names) * (n ? n : 1));
    size_t *lens = malloc(sizeof(*lens) * (n ? n : 1));
    if (!arena || !names || !lens) {
        fprintf(stderr, "kraken-bench: out of memory\n");
        abort();
    }
    char *p = arena;
    for (uint64_t i = 0; i < n; i++) {
        int len = snprintf(p, per, "%s%s.%llu", prefix, tag, (unsigned long long)(first + i));
        names[i] = p;
        lens[i] = (size_t)len;
        p += len + 1;
    }
    kr_bench_kr_put_topics(b, verb, names, lens, (size_t)n);
    free(lens);
    free(names);
    free(arena);
}

/* Send every connection's request at once and wait for each answer (bounded by
 * deadline_ns). Returns 0 when all answered STORED, else -1 with the error in res. */
static int kb_storm_wave(struct kb_storm_conn *c, unsigned n, uint64_t t0, uint64_t deadline_ns,
                         struct kr_bench_result *res)
{
    struct pollfd *pfd = calloc(n ? n : 1, sizeof(*pfd));
    if (!pfd)
        abort();
    unsigned left = n;
    int ret = 0;
    while (left > 0) {
        uint64_t now = kb_storm_now_ns();
        if (now >= deadline_ns) {
            kb_storm_err(res, "%u of %u connections got no answer within --connect-timeout", left,
                         n);
            ret = -1;
            break;
        }
        for (unsigned i = 0; i < n; i++) {
            pfd[i].fd = c[i].done ? -1 : c[i].fd;
            pfd[i].events = POLLIN | (c[i].sent < c[i].out.len ? POLLOUT : 0);
            pfd[i].revents = 0;
        }
        uint64_t wait_ms = (deadline_ns - now) / 1000000u + 1;
        int rc = poll(pfd, n, wait_ms > 100 ? 100 : (int)wait_ms);
        if (rc < 0 && errno != EINTR) {
            kb_storm_err(res, "poll: %s", strerror(errno));
            ret = -1;
            break;
        }
        for (unsigned i = 0; rc > 0 && i < n; i++) {
            struct kb_storm_conn *k = &c[i];
            if (k->done || !pfd[i].revents)
                continue;
            if ((pfd[i].revents & POLLOUT) && k->sent < k->out.len) {
                ssize_t w = send(k->fd, k->out.p + k->sent, k->out.len - k->sent, MSG_NOSIGNAL);
                if (w > 0) {
                    k->sent += (size_t)w;
                } else if (w < 0 && errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK) {
                    /* the server may have answered (a refusal) and closed: read what came */
                    k->send_errno = errno;
                    pfd[i].revents |= POLLIN;
                }
            }
            if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char *dst = kr_bench_buf_grab(&k->in, 4096);
            ssize_t r = recv(k->fd, dst, 4096, 0);
            k->in.len -= 4096 - (r > 0 ? (size_t)r : 0);
            int gone = r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR &&
                                  errno != EWOULDBLOCK);
            struct kr_bench_kr_reply rep;
            ssize_t used = kr_bench_kr_parse(k->in.p, k->in.len, &rep, NULL, NULL, NULL);
            if (used == 0 && (gone || k->send_errno)) {
                if (k->sent < k->out.len)
                    kb_storm_err(res,
                                 "the server closed the connection after %zu of the request's %zu "
                                 "bytes (%s); a server refuses a request above its "
                                 "max_request_bytes (see docs/kraken.conf)",
                                 k->sent, k->out.len,
                                 k->send_errno ? strerror(k->send_errno) : "end of stream");
                else
                    kb_storm_err(res, "the server closed a connection before answering");
                k->done = -1;
                left--;
                res->errors++;
                continue;
            }
            if (used == 0)
                continue;
            left--;
            if (used > 0 && rep.kind == KR_BENCH_KR_STORED) {
                k->done = 1;
                k->done_ns = kb_storm_now_ns() - t0;
                continue;
            }
            k->done = -1;
            res->errors++;
            if (used > 0)
                kb_storm_err(res, "the server answered '%.*s' to a request of %zu bytes%s",
                             (int)(rep.line_len > 200 ? 200 : rep.line_len), rep.line, k->out.len,
                             rep.kind == KR_BENCH_KR_ERROR
                                 ? " (a refused storm usually needs a larger max_request_bytes "
                                   "on the server, see docs/kraken.conf)"
                                 : "");
            /* nothing more is sent on a connection that was answered */
            else
                kb_storm_err(res, "malformed answer from the server");
        }
    }
    free(pfd);
    for (unsigned i = 0; i < n; i++)
        if (c[i].done != 1)
            ret = -1;
    return ret;
}

static void kb_storm_close(struct kb_storm_conn *c, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        if (c[i].fd >= 0)
            close(c[i].fd);
        kr_bench_buf_free(&c[i].out);
        kr_bench_buf_free(&c[i].in);
    }
}

int kr_bench_storm(const struct kr_bench_cfg *cfg, struct kr_bench_result *res)
{
    kr_bench_hist_init(&res->storm);
    char port[16];
    snprintf(port, sizeof(port), "%u", cfg->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(cfg->host, port, &hints, &ai);
    if (rc != 0 || !ai) {
        kb_storm_err(res, "cannot resolve '%s': %s", cfg->host, gai_strerror(rc));
        res->fatal = 1;
        return -1;
    }
    /* a tag per run: base 36 of the clock, 4 characters, so names stay short (1M topics in
     * one request then fit the default max_request_bytes of 16 MiB) */
    char tag[8];
    uint64_t v = (kb_storm_now_ns() / 1000u) ^ ((uint64_t)getpid() << 20);
    for (int i = 0; i < 4; i++, v /= 36)
        tag[i] = "0123456789abcdefghijklmnopqrstuvwxyz"[v % 36];
    tag[4] = 0;
    uint64_t timeout_ns = (uint64_t)(cfg->connect_timeout_s * 1e9);
    int ret = 0;

    /* (a) one connection, one request */
    res->storm_topics = cfg->topics;
    if (cfg->topics > 0) {
        struct kb_storm_conn one = {.fd = kb_storm_connect(ai, res)};
        if (one.fd < 0) {
            res->fatal = 1;
            freeaddrinfo(ai);
            return -1;
        }
        res->connections++;
        char tag_a[16];
        snprintf(tag_a, sizeof(tag_a), "%sa", tag);
        kb_storm_request(&one.out, "subscribe", cfg->prefix, tag_a, 0, cfg->topics);
        res->storm_bytes = one.out.len;
        if (cfg->progress)
            fprintf(stderr, "kraken-bench: storm: one request of %u new topics (%zu bytes)\n",
                    cfg->topics, one.out.len);
        uint64_t t0 = kb_storm_now_ns();
        if (kb_storm_wave(&one, 1, t0, t0 + timeout_ns, res) < 0) {
            ret = -1;
        } else {
            res->storm_one_s = (double)one.done_ns / 1e9;
            /* and all of them away again */
            kr_bench_buf_free(&one.out);
            kr_bench_buf_free(&one.in);
            memset(&one.out, 0, sizeof(one.out));
            memset(&one.in, 0, sizeof(one.in));
            one.sent = 0;
            one.done = 0;
            kb_storm_request(&one.out, "unsubscribe", cfg->prefix, tag_a, 0, cfg->topics);
            t0 = kb_storm_now_ns();
            if (kb_storm_wave(&one, 1, t0, t0 + timeout_ns, res) < 0)
                ret = -1;
            else
                res->storm_unsub_s = (double)one.done_ns / 1e9;
        }
        kb_storm_close(&one, 1);
    }

    /* (b) many connections at once */
    res->storm_conns = cfg->subs;
    if (ret == 0 && cfg->subs > 0) {
        struct kb_storm_conn *c = calloc(cfg->subs, sizeof(*c));
        if (!c)
            abort();
        for (unsigned i = 0; i < cfg->subs; i++)
            c[i].fd = -1;
        for (unsigned i = 0; i < cfg->subs && ret == 0; i++) {
            c[i].fd = kb_storm_connect(ai, res);
            if (c[i].fd < 0) {
                ret = -1;
                res->fatal = 1;
                break;
            }
            res->connections++;
            char tag_b[16];
            snprintf(tag_b, sizeof(tag_b), "%sb", tag);
            kb_storm_request(&c[i].out, "subscribe", cfg->prefix, tag_b,
                             (uint64_t)i * cfg->topics_per_sub, cfg->topics_per_sub);
        }
        if (ret == 0) {
            if (cfg->progress)
                fprintf(stderr, "kraken-bench: storm: %u connections x %u new topics at once\n",
                        cfg->subs, cfg->topics_per_sub);
            uint64_t t0 = kb_storm_now_ns();
            ret = kb_storm_wave(c, cfg->subs, t0, t0 + timeout_ns, res);
            uint64_t last = 0;
            for (unsigned i = 0; i < cfg->subs; i++) {
                if (c[i].done != 1)
                    continue;
                kr_bench_hist_add(&res->storm, c[i].done_ns);
                if (c[i].done_ns > last)
                    last = c[i].done_ns;
            }
            res->storm_all_s = (double)last / 1e9;
        }
        kb_storm_close(c, cfg->subs);
        free(c);
    }
    freeaddrinfo(ai);
    return ret;
}
