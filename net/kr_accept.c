/* Accepting connections on a net thread (libuv readiness poll and accept4): allow_from,
 * max_tcp_clients, running out of file descriptors, keepalive, the listening socket. Net
 * thread only, except kr_listen_socket (control thread, at create). */
#include "kr_net_int.h"

#include <arpa/inet.h>
#include <ck_pr.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

static void kr_addr_name(const struct sockaddr_storage *ss, char *out, size_t outlen);
static void kr_reject_fd(int fd, const struct kr_frontend *fe);
static void kr_nt_accept_pause_cb(uv_timer_t *t);
static void kr_nt_accept_pause(struct kr_nt *nt);
static bool kr_nt_acl_check(struct kr_nt *nt, int fd, const struct sockaddr_storage *ss);
static void kr_nt_out_of_fds(struct kr_nt *nt, int err, int lfd, const struct kr_frontend *fe);
static void kr_conn_keepalive(int fd, uint32_t idle_s);
static void kr_nt_accepted(struct kr_nt *nt, int fd, const struct sockaddr_storage *ss,
                           const struct kr_frontend *fe);
static void kr_nt_listener_closed_cb(uv_handle_t *h);

/* ---------------------------------------------------------------- accepting
 *
 * Each net thread accepts on its own listening socket with accept4() from a uv_poll_t
 * readiness callback rather than uv_listen(): when descriptors run out, libuv's listener
 * loops inside its own callback for as long as accept() keeps failing (its emfile trick
 * only works while its one reserve descriptor per loop could be reopened, and it closes
 * the pending connections silently), which spins the thread and starves its clients.
 * Here, on EMFILE/ENFILE the thread frees its own reserve descriptor, answers the pending
 * connections `SERVER_ERROR Too many clients`, reopens the reserve and, when connections
 * are still waiting or the reserve could not be reopened, stops accepting for
 * KR_ACCEPT_PAUSE_MS; existing clients are served throughout. */

/* Keep an accepted peer's address, compact. */
void kr_peer_addr_set(struct kr_peer_addr *p, const struct sockaddr_storage *ss)
{
    memset(p, 0, sizeof(*p));
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        p->family = AF_INET;
        p->port = ntohs(a->sin_port);
        memcpy(p->addr, &a->sin_addr, sizeof(a->sin_addr));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        p->family = AF_INET6;
        p->port = ntohs(a->sin6_port);
        memcpy(p->addr, &a->sin6_addr, sizeof(a->sin6_addr));
    }
}

void kr_peer_addr_name(const struct kr_peer_addr *p, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (p->family)
        inet_ntop(p->family, p->addr, ip, sizeof(ip));
    snprintf(out, outlen, "%s:%u", ip, (unsigned)p->port);
}

/* "ip:port" of a peer address. */
static void kr_addr_name(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
    struct kr_peer_addr p;
    kr_peer_addr_set(&p, ss);
    kr_peer_addr_name(&p, out, outlen);
}

/* Tell a connection we do not take that the server is full (in the listener's protocol,
 * `fe`), and close it. */
static void kr_reject_fd(int fd, const struct kr_frontend *fe)
{
    const char *line = fe->error_line(KR_ERR_TOO_MANY);
    ssize_t w = send(fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
    close(fd);
}

void kr_nt_reserve_open(struct kr_nt *nt)
{
    if (nt->reserve_fd < 0)
        nt->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void kr_nt_accept_pause_cb(uv_timer_t *t)
{
    struct kr_nt *nt = t->data;
    pthread_mutex_lock(&nt->srv->accept_mu); /* not a descriptor another thread freed */
    kr_nt_reserve_open(nt);
    pthread_mutex_unlock(&nt->srv->accept_mu);
    if (nt->listening)
        uv_poll_start(&nt->listener, UV_READABLE, kr_nt_accept_cb);
    if (nt->resp_listening)
        uv_poll_start(&nt->resp_listener, UV_READABLE, kr_nt_accept_cb);
}

/* Stop accepting for KR_ACCEPT_PAUSE_MS (the loop must not spin on a failing accept), on
 * both listeners: they share the thread's descriptors. */
static void kr_nt_accept_pause(struct kr_nt *nt)
{
    uv_poll_stop(&nt->listener);
    if (nt->resp_listening)
        uv_poll_stop(&nt->resp_listener);
    uv_timer_start(&nt->accept_pause, kr_nt_accept_pause_cb, KR_ACCEPT_PAUSE_MS, 0);
}

/* Whether allow_from lets the peer in; a refused peer's connection is closed unread. */
static bool kr_nt_acl_check(struct kr_nt *nt, int fd, const struct sockaddr_storage *ss)
{
    if (kr_acl_allows(nt->srv->acl, (const struct sockaddr *)ss))
        return true;
    KR_ST_INC(nt, refused_connections, 1); /* counted before the peer sees the close */
    close(fd);
    uint64_t suppressed = 0;
    if (kr_log_ratelimit(&nt->rl_refused, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed)) {
        char peer[64], note[64];
        kr_addr_name(ss, peer, sizeof(peer));
        KR_WARN("refused a connection from %s: not in allow_from%s", peer,
                kr_log_suppressed_note(suppressed, note, sizeof(note)));
    }
    return false;
}

/* accept() on listening socket `lfd` (whose clients speak `fe`) failed with EMFILE or
 * ENFILE (`err`). */
static void kr_nt_out_of_fds(struct kr_nt *nt, int err, int lfd, const struct kr_frontend *fe)
{
    KR_ST_INC(nt, accept_fd_exhausted, 1);
    uint32_t rejected = 0;
    bool backlog_empty = false;
    if (nt->reserve_fd >= 0) {
        pthread_mutex_lock(&nt->srv->accept_mu);
        close(nt->reserve_fd);
        nt->reserve_fd = -1;
        for (uint32_t i = 0; i < KR_ACCEPT_BATCH; i++) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof(ss);
            int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED)
                    continue;
                backlog_empty = errno == EAGAIN || errno == EWOULDBLOCK;
                break;
            }
            if (!kr_nt_acl_check(nt, fd, &ss))
                continue;
            KR_ST_INC(nt, rejected_connections, 1); /* counted before the client can see it */
            kr_reject_fd(fd, fe);
            rejected++;
        }
        kr_nt_reserve_open(nt);
        pthread_mutex_unlock(&nt->srv->accept_mu);
    }
    bool pause = !backlog_empty || nt->reserve_fd < 0;
    if (pause)
        kr_nt_accept_pause(nt);
    uint64_t suppressed = 0;
    if (kr_log_ratelimit(&nt->rl_accept, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed)) {
        char note[64];
        KR_WARN("accept: out of file descriptors (%s): %u connection(s) answered SERVER_ERROR "
                "Too many clients%s%s",
                strerror(err), rejected, pause ? "; accepting again in 100 ms" : "",
                kr_log_suppressed_note(suppressed, note, sizeof(note)));
    }
}

/* Keepalive probes after `idle_s` idle seconds, then every idle_s / 3 (at least 1 s), and
 * the connection is dropped after 3 unanswered probes (Redis's choice). */
static void kr_conn_keepalive(int fd, uint32_t idle_s)
{
    int on = 1, idle = (int)idle_s, intvl = idle_s / 3 ? (int)(idle_s / 3) : 1, cnt = 3;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) != 0)
        return;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* A new connection `fd` from `ss`: check it, then make it a client speaking `fe` (the
 * main port's memcached frontend, which hands a first byte '*' over to RESP, or the RESP
 * frontend itself on resp_port). */
static void kr_nt_accepted(struct kr_nt *nt, int fd, const struct sockaddr_storage *ss,
                           const struct kr_frontend *fe)
{
    struct kr_server *srv = nt->srv;
    if (!kr_nt_acl_check(nt, fd, ss))
        return;
    const struct kr_net_live *lv = &nt->live;
    if (ck_pr_faa_32(&srv->nconns, 1) >= lv->max_tcp_clients) {
        ck_pr_dec_32(&srv->nconns);
        KR_ST_INC(nt, rejected_connections, 1); /* counted before the client can see it */
        kr_reject_fd(fd, fe);
        uint64_t suppressed = 0;
        if (kr_log_ratelimit(&nt->rl_errors, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed)) {
            char note[64];
            KR_WARN("rejected a connection: max_tcp_clients (%u) reached%s", lv->max_tcp_clients,
                    kr_log_suppressed_note(suppressed, note, sizeof(note)));
        }
        return;
    }
    struct kr_conn *c = kr_xcalloc(1, sizeof(*c));
    c->nt = nt;
    kr_outbox_init(&c->ob, &nt->conn_sink, KR_OUTBOX_ALL); /* allocates nothing */
    c->fe = fe;
    c->fe_chosen = fe != &kr_front_mc; /* the main port decides by the first byte */
    c->fd = fd;
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    if (lv->tcp_keepalive_s)
        kr_conn_keepalive(fd, lv->tcp_keepalive_s);
    if (nt->nfree == 0) {
        uint32_t ncap = nt->nslots ? nt->nslots * 2 : 256;
        nt->slots = kr_xrealloc(nt->slots, ncap * sizeof(*nt->slots));
        nt->gens = kr_xrealloc(nt->gens, ncap * sizeof(*nt->gens));
        nt->free_slots = kr_xrealloc(nt->free_slots, ncap * sizeof(*nt->free_slots));
        for (uint32_t i = ncap; i > nt->nslots; i--) {
            nt->slots[i - 1] = NULL;
            nt->gens[i - 1] = 0;
            nt->free_slots[nt->nfree++] = i - 1;
        }
        nt->nslots = ncap;
    }
    uint32_t slot = nt->free_slots[--nt->nfree];
    nt->gens[slot] = (nt->gens[slot] + 1) & KR_CONN_GEN_MASK;
    nt->slots[slot] = c;
    c->slot = slot;
    c->id = kr_conn_id_make(nt->idx, nt->gens[slot], slot);
    c->created_ms = c->last_active_ms = kr_now_ms();
    kr_peer_addr_set(&c->peer, ss);
    KR_ST_INC(nt, curr_connections, 1);
    KR_ST_INC(nt, total_connections, 1);
    KR_DEBUG("client %s connected (id %llu, net thread %u)", kr_conn_peer(c), (unsigned long long)c->id, nt->idx);
    kr_conn_resume(c);
}

void kr_nt_accept_cb(uv_poll_t *h, int status, int events)
{
    struct kr_nt *nt = h->data;
    (void)events;
    bool resp = h == &nt->resp_listener;
    const bool *open = resp ? &nt->resp_listening : &nt->listening;
    const struct kr_frontend *fe = resp ? &kr_front_resp : &kr_front_mc;
    uint64_t suppressed = 0;
    char note[64];
    if (status < 0) {
        if (kr_log_ratelimit(&nt->rl_accept, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
            KR_WARN("listener: %s; accepting again in 100 ms%s", uv_strerror(status),
                    kr_log_suppressed_note(suppressed, note, sizeof(note)));
        kr_nt_accept_pause(nt);
        return;
    }
    kr_nt_refresh_live(nt);
    for (uint32_t i = 0; i < KR_ACCEPT_BATCH && *open; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int lfd = resp ? nt->resp_listen_fd : nt->listen_fd;
        pthread_mutex_lock(&nt->srv->accept_mu);
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int e = errno;
        pthread_mutex_unlock(&nt->srv->accept_mu);
        if (fd < 0) {
            if (e == EINTR || e == ECONNABORTED)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK)
                return; /* level-triggered: called again when more arrive */
            if (e == EMFILE || e == ENFILE) {
                kr_nt_out_of_fds(nt, e, lfd, fe);
                return;
            }
            /* ENOBUFS, ENOMEM, a firewall's EPERM, ...: never spin on it */
            if (kr_log_ratelimit(&nt->rl_accept, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
                KR_WARN("accept failed: %s; accepting again in 100 ms%s", strerror(e),
                        kr_log_suppressed_note(suppressed, note, sizeof(note)));
            kr_nt_accept_pause(nt);
            return;
        }
        if (nt->reserve_fd < 0) { /* lost while descriptors ran out */
            pthread_mutex_lock(&nt->srv->accept_mu);
            kr_nt_reserve_open(nt);
            pthread_mutex_unlock(&nt->srv->accept_mu);
        }
        kr_nt_accepted(nt, fd, &ss, fe);
    }
}

/* Open one SO_REUSEPORT listening socket. */
int kr_listen_socket(const struct kr_cfg *cfg, uint16_t port, uint16_t *bound, char *err,
                            size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    int family;
    socklen_t slen;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, cfg->listen_ip, &a4->sin_addr) == 1) {
        family = AF_INET;
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        slen = sizeof(*a4);
    } else if (inet_pton(AF_INET6, cfg->listen_ip, &a6->sin6_addr) == 1) {
        family = AF_INET6;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        slen = sizeof(*a6);
    } else {
        snprintf(err, errlen, "listen_ip '%s' is not an IPv4 or IPv6 address", cfg->listen_ip);
        return -EINVAL;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -errno;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&ss, slen) != 0 || listen(fd, 1024) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s:%u: %s", cfg->listen_ip, port, strerror(e));
        close(fd);
        return -e;
    }
    slen = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &slen);
    *bound = ntohs(family == AF_INET ? a4->sin_port : a6->sin6_port);
    return fd;
}

static void kr_nt_listener_closed_cb(uv_handle_t *h)
{
    struct kr_nt *nt = h->data;
    if (h == (uv_handle_t *)&nt->resp_listener) {
        close(nt->resp_listen_fd);
        nt->resp_listen_fd = -1;
        return;
    }
    close(nt->listen_fd);
    nt->listen_fd = -1;
}

void kr_net_stop_listening(struct kr_server *s, uint32_t net)
{
    struct kr_nt *nt = s->nts[net];
    if (nt->listening) {
        nt->listening = false;
        uv_timer_stop(&nt->accept_pause);
        uv_close((uv_handle_t *)&nt->listener, kr_nt_listener_closed_cb);
    }
    if (nt->resp_listening) {
        nt->resp_listening = false;
        uv_close((uv_handle_t *)&nt->resp_listener, kr_nt_listener_closed_cb);
    }
}
