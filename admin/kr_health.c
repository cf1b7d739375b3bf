/* Admin module: the health port (`health_port`), on the control thread's loop.
 *
 * Each TCP connection gets one line, "ok" or "draining" (a drain runs), then our side's
 * FIN; the connection is closed once the checker closes its side (reading it avoids a
 * reset that could discard the answer), or after KR_HEALTH_TIMEOUT_MS. A peer not in
 * allow_from is closed unread, like on the client port, and counted as refused. The
 * listening socket is accepted from a readiness poll (kr_admin_lsock, kr_admin.c), so
 * running out of file descriptors pauses accepting instead of spinning the loop. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kr_acl.h"
#include "kr_admin_int.h"
#include "kr_log.h"

#define KR_HEALTH_TIMEOUT_MS 2000
#define KR_HEALTH_BACKLOG 128

struct kr_health_conn {
    uv_tcp_t h;
    struct kr_admin *a;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    uv_timer_t timer;
    int open_handles;
    struct kr_health_conn *next, *prev;
    char buf[64];
};

static void kr_health_closed_cb(uv_handle_t *h)
{
    struct kr_health_conn *hc = h->data;
    if (--hc->open_handles > 0)
        return;
    struct kr_admin *a = hc->a;
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        a->health_conns = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    free(hc);
}

static void kr_health_conn_close(struct kr_health_conn *hc)
{
    if (!uv_is_closing((uv_handle_t *)&hc->h))
        uv_close((uv_handle_t *)&hc->h, kr_health_closed_cb);
    if (!uv_is_closing((uv_handle_t *)&hc->timer))
        uv_close((uv_handle_t *)&hc->timer, kr_health_closed_cb);
}

static void kr_health_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct kr_health_conn *hc = h->data;
    (void)suggested;
    *buf = uv_buf_init(hc->buf, sizeof(hc->buf));
}

static void kr_health_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    if (nread < 0) /* the checker closed (or failed): done */
        kr_health_conn_close(s->data);
}

static void kr_health_shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)status;
    (void)req;
}

static void kr_health_write_cb(uv_write_t *req, int status)
{
    struct kr_health_conn *hc = req->data;
    if (status < 0 || uv_shutdown(&hc->sreq, (uv_stream_t *)&hc->h, kr_health_shutdown_cb) < 0)
        kr_health_conn_close(hc);
}

static void kr_health_timer_cb(uv_timer_t *t)
{
    kr_health_conn_close(t->data);
}

/* A peer not in allow_from: closed unread, counted, logged (rate-limited). */
static void kr_health_refuse(struct kr_admin *a, int fd, const struct sockaddr_storage *ss)
{
    close(fd);
    kr_server_count_refused(a->srv);
    uint64_t suppressed = 0;
    if (kr_log_ratelimit(&a->rl_refused, 10, 10000, &suppressed)) {
        char ip[INET6_ADDRSTRLEN] = "?", note[64] = "";
        if (ss->ss_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, ip, sizeof(ip));
        else if (ss->ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, ip, sizeof(ip));
        if (suppressed)
            snprintf(note, sizeof(note), " (suppressed %" PRIu64 " similar)", suppressed);
        KR_WARN("health port: refused a connection from %s: not in allow_from%s", ip, note);
    }
}

/* A new connection `fd` from `ss` (kr_admin_lsock's callback). */
static void kr_health_accepted(struct kr_admin *a, int fd, const struct sockaddr_storage *ss)
{
    if (!kr_acl_allows(kr_server_acl(a->srv), (const struct sockaddr *)ss)) {
        kr_health_refuse(a, fd, ss);
        return;
    }
    struct kr_health_conn *hc = kr_xcalloc(1, sizeof(*hc));
    hc->a = a;
    uv_tcp_init(a->loop, &hc->h);
    uv_timer_init(a->loop, &hc->timer);
    hc->h.data = hc->timer.data = hc->wreq.data = hc->sreq.data = hc;
    hc->open_handles = 2;
    hc->next = a->health_conns;
    if (a->health_conns)
        a->health_conns->prev = hc;
    a->health_conns = hc;
    if (uv_tcp_open(&hc->h, fd) != 0) {
        close(fd); /* not taken over by the handle */
        kr_health_conn_close(hc);
        return;
    }
    /* The answer, then our side's FIN (see the header comment). */
    static const char ok[] = "ok\n", draining[] = "draining\n";
    uv_buf_t b = a->draining ? uv_buf_init((char *)draining, sizeof(draining) - 1)
                             : uv_buf_init((char *)ok, sizeof(ok) - 1);
    uv_timer_start(&hc->timer, kr_health_timer_cb, KR_HEALTH_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&hc->h, kr_health_alloc_cb, kr_health_read_cb);
    if (uv_write(&hc->wreq, (uv_stream_t *)&hc->h, &b, 1, kr_health_write_cb) < 0)
        kr_health_conn_close(hc);
}

int kr_health_listen(struct kr_admin *a, char *err, size_t errlen)
{
    const struct kr_cfg *cfg = a->cfg;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sl = sizeof(struct sockaddr_in);
    int rc = uv_ip4_addr(cfg->listen_ip, (int)cfg->health_port, (struct sockaddr_in *)&ss);
    if (rc < 0) {
        rc = uv_ip6_addr(cfg->listen_ip, (int)cfg->health_port, (struct sockaddr_in6 *)&ss);
        sl = sizeof(struct sockaddr_in6);
    }
    if (rc < 0)
        return kr_errf(err, errlen, -EINVAL, "health_port: bad listen_ip '%s'",
                       cfg->listen_ip);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, KR_HEALTH_BACKLOG) != 0) {
        rc = -errno;
        if (fd >= 0)
            close(fd);
        return kr_errf(err, errlen, rc, "cannot listen on health_port %s:%u: %s",
                       cfg->listen_ip, cfg->health_port, uv_strerror(rc));
    }
    kr_admin_lsock_start(a, &a->health, fd, "health port", kr_health_accepted);
    KR_INFO("health checks on %s:%u", cfg->listen_ip, cfg->health_port);
    return 0;
}

void kr_health_close(struct kr_admin *a)
{
    for (struct kr_health_conn *hc = a->health_conns; hc; hc = hc->next)
        kr_health_conn_close(hc);
    kr_admin_lsock_close(&a->health);
}
