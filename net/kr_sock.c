/* The client sockets of a net thread: its epoll set (watched by libuv as one descriptor),
 * reading, the output buffers and the shared payloads they reference, writing (a write that
 * waits for the socket, and its end). See docs/architecture.md, "Client sockets". Net thread
 * only. */
#include "kr_net_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <uv.h>

static void kr_conn_write_done(struct kr_conn *c);
static void kr_conn_io(struct kr_conn *c, uint32_t events);

/* An idle client's connection is in jemalloc's 512-byte size class (docs/architecture.md,
 * "Memory bounds"): what only some connections use goes in struct kr_conn_rare. */
_Static_assert(sizeof(struct kr_conn) <= 512, "struct kr_conn outgrew its 512-byte class");

/* ---------------------------------------------------------------- output */

void kr_out_reserve(struct kr_conn *c, size_t n)
{
    KR_GROW_MIN(c->out, c->out_cap, c->out_len + n, 256);
}

void kr_out_add(struct kr_conn *c, const void *p, size_t n)
{
    kr_out_reserve(c, n);
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

void kr_out_str(struct kr_conn *c, const char *s)
{
    kr_out_add(c, s, strlen(s));
}

void kr_out_ref(struct kr_conn *c, const char *p, uint32_t n, struct kr_msg *m)
{
    if (c->nrefs == KR_OUT_MAX_REFS) {
        kr_out_add(c, p, n);
        return;
    }
    KR_GROW(c->refs, c->refs_cap, c->nrefs + 1);
    kr_msg_ref(m, 1);
    c->refs[c->nrefs++] = (struct kr_out_ref){.at = c->out_len, .p = p, .len = n, .m = m};
    c->refs_bytes += n;
}

void kr_out_refs_release(struct kr_conn *c)
{
    for (uint32_t i = 0; i < c->nrefs; i++)
        kr_msg_unref(c->refs[i].m);
    c->nrefs = 0;
    c->refs_bytes = 0;
}

/* The output as pieces in order (out up to each reference, the reference, ... the rest of
 * out), at most 2 * KR_OUT_MAX_REFS + 1 of them. Returns how many. */
static unsigned kr_out_pieces(const struct kr_conn *c, uv_buf_t *b)
{
    unsigned n = 0;
    size_t from = 0;
    for (uint32_t i = 0; i < c->nrefs; i++) {
        const struct kr_out_ref *r = &c->refs[i];
        if (r->at > from)
            b[n++] = uv_buf_init(c->out + from, (unsigned)(r->at - from));
        if (r->len)
            b[n++] = uv_buf_init((char *)r->p, r->len);
        from = r->at;
    }
    if (c->out_len > from)
        b[n++] = uv_buf_init(c->out + from, (unsigned)(c->out_len - from));
    return n;
}

/* The `done` first bytes of a referencing output were written: copy the rest into a buffer
 * of its own as `out` (a write that waits for the socket owns one flat buffer) and drop the
 * references. */
static void kr_out_flatten(struct kr_conn *c, const uv_buf_t *b, unsigned nb, size_t done)
{
    size_t rest = c->out_len + c->refs_bytes - done, at = 0;
    char *flat = kr_xmalloc(rest ? rest : 1);
    for (unsigned i = 0; i < nb; i++) {
        size_t len = b[i].len, skip = done < len ? done : len;
        done -= skip;
        memcpy(flat + at, b[i].base + skip, len - skip);
        at += len - skip;
    }
    kr_out_refs_release(c);
    free(c->out);
    c->out = flat;
    c->out_len = c->out_cap = rest;
}

void kr_conn_out_account(struct kr_conn *c)
{
    size_t now = c->closing ? 0 : c->out_len + c->refs_bytes + c->wbuf_len;
    if (now > c->out_acct)
        KR_ST_INC(c->nt, output_bytes, now - c->out_acct);
    else if (now < c->out_acct)
        KR_ST_DEC(c->nt, output_bytes, c->out_acct - now);
    c->out_acct = now;
}

/* Unsent reply bytes of the connection. */
size_t kr_conn_out_pending(const struct kr_conn *c)
{
    return c->out_len + c->refs_bytes + c->wbuf_len;
}

/* Watch the socket for what the connection waits for now: readable while it reads,
 * writable while a write waits, nothing while it is paused. The epoll set is told only when
 * that changes (one epoll_ctl). */
static void kr_conn_watch(struct kr_conn *c)
{
    uint8_t want = (c->reading ? EPOLLIN : 0) | (c->writing ? EPOLLOUT : 0);
    if (want == c->watching || c->closing)
        return;
    struct epoll_event ev = {.events = want, .data.u64 = c->id};
    int op = !c->watching ? EPOLL_CTL_ADD : want ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
    if (epoll_ctl(c->nt->epfd, op, c->fd, &ev) != 0) {
        /* out of kernel memory or of fs.epoll.max_user_watches: the client cannot be
         * served (logged rate-limited: a connection storm may meet the limit many times) */
        int err = errno;
        uint64_t suppressed = 0;
        char note[64];
        if (kr_log_ratelimit(&c->nt->rl_accept, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
            KR_WARN("client %s (id %llu): epoll_ctl: %s; closing%s", kr_conn_peer(c),
                    (unsigned long long)c->id, strerror(err),
                    kr_log_suppressed_note(suppressed, note, sizeof(note)));
        kr_conn_close(c);
        return;
    }
    c->watching = want;
}

/* Write what the socket takes of n pieces now: the bytes written (0: it takes nothing
 * now), or -1 when the connection is broken. A closed peer never raises SIGPIPE. */
static ssize_t kr_conn_sendv(struct kr_conn *c, const uv_buf_t *b, unsigned n)
{
    /* uv_buf_t is laid out as struct iovec on Unix (libuv's documented guarantee) */
    struct msghdr mh = {.msg_iov = (struct iovec *)b, .msg_iovlen = n};
    for (;;) {
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w >= 0)
            return w;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS ? 0 : -1;
    }
}

/* The write that waited was written out. */
static void kr_conn_write_done(struct kr_conn *c)
{
    free(c->wbuf);
    c->wbuf = NULL;
    c->wbuf_len = 0;
    c->wbuf_off = 0;
    c->writing = false;
    kr_conn_watch(c);
    kr_conn_out_account(c);
    kr_conn_flush(c);
    if (!c->closing && c->fe->writable)
        c->fe->writable(c);
    if (!c->closing && !c->writing && !c->close_after_write)
        kr_conn_process(c); /* reading may have been paused on a big backlog */
}

/* The socket takes more of the write that waits. */
static void kr_conn_on_writable(struct kr_conn *c)
{
    uv_buf_t b = uv_buf_init(c->wbuf + c->wbuf_off, (unsigned)c->wbuf_len);
    ssize_t n = kr_conn_sendv(c, &b, 1);
    if (n < 0) {
        kr_conn_close(c);
        return;
    }
    c->wbuf_off += (size_t)n;
    c->wbuf_len -= (size_t)n;
    KR_ST_INC(c->nt, bytes_written, (uint64_t)n);
    if (c->wbuf_len)
        kr_conn_out_account(c);
    else
        kr_conn_write_done(c);
}

/* Send what is buffered: write what the socket takes now, and keep the rest in one buffer
 * that is written as the socket becomes writable (kr_conn_on_writable). */
void kr_conn_flush(struct kr_conn *c)
{
    if (c->closing)
        return;
    if (c->writing) {
        kr_conn_out_account(c); /* replies added behind the write that waits */
        return;
    }
    bool tried = false; /* the socket took what it could already */
    if (c->nrefs) {
        /* one writev of the output and the shared payloads it references */
        uv_buf_t pieces[2 * KR_OUT_MAX_REFS + 1];
        unsigned np = kr_out_pieces(c, pieces);
        size_t total = c->out_len + c->refs_bytes;
        ssize_t n = kr_conn_sendv(c, pieces, np);
        if (n < 0) {
            kr_conn_close(c);
            return;
        }
        size_t done = (size_t)n;
        KR_ST_INC(c->nt, bytes_written, done);
        if (done < total) {
            kr_out_flatten(c, pieces, np, done); /* the rest goes the single-buffer way */
            tried = true;
        } else {
            kr_out_refs_release(c);
            c->out_len = 0;
            kr_conn_out_account(c);
        }
    }
    if (c->out_len) {
        uv_buf_t b = uv_buf_init(c->out, (unsigned)c->out_len);
        ssize_t n = tried ? 0 : kr_conn_sendv(c, &b, 1);
        if (n < 0) {
            kr_conn_close(c);
            return;
        }
        size_t done = (size_t)n;
        KR_ST_INC(c->nt, bytes_written, done);
        if (done < c->out_len) {
            /* the buffer itself becomes the write that waits; a new one collects later
             * replies */
            c->wbuf = c->out;
            c->wbuf_off = done;
            c->wbuf_len = c->out_len - done;
            c->out = NULL;
            c->out_len = 0;
            c->out_cap = 0;
            c->writing = true;
            kr_conn_watch(c);
            kr_conn_out_account(c);
            return;
        }
        c->out_len = 0;
        if (c->out_cap > 64 * 1024) { /* keep idle clients small */
            free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
        kr_conn_out_account(c);
    }
    if (c->close_after_write)
        kr_conn_close(c);
}

void kr_conn_pause(struct kr_conn *c)
{
    if (c->reading) {
        c->reading = false;
        kr_conn_watch(c);
    }
}

void kr_conn_resume(struct kr_conn *c)
{
    if (!c->reading && !c->closing && !c->close_after_write) {
        c->reading = true;
        kr_conn_watch(c);
    }
}

/* ---------------------------------------------------------------- readiness */

void kr_nt_clients_cb(uv_poll_t *h, int status, int events)
{
    struct kr_nt *nt = h->data;
    (void)events;
    if (status < 0) {
        /* libuv stopped watching the set after an error it saw on it (an epoll descriptor is
         * not known to report one): watch it again, or no client would be served */
        uint64_t suppressed = 0;
        char note[64];
        if (kr_log_ratelimit(&nt->rl_accept, KR_WARN_BURST, KR_WARN_INTERVAL_MS, &suppressed))
            KR_WARN("net thread %u: polling the clients' epoll set: %s; polling it again%s",
                    nt->idx, uv_strerror(status),
                    kr_log_suppressed_note(suppressed, note, sizeof(note)));
        uv_poll_start(h, UV_READABLE, kr_nt_clients_cb);
    }
    struct epoll_event evs[KR_EVENTS_PER_POLL];
    int n;
    do {
        n = epoll_wait(nt->epfd, evs, KR_EVENTS_PER_POLL, 0);
    } while (n < 0 && errno == EINTR);
    for (int i = 0; i < n; i++) {
        /* by id: a connection closed by an earlier event of the batch is not found */
        struct kr_conn *c = kr_nt_conn(nt, evs[i].data.u64);
        if (c)
            kr_conn_io(c, evs[i].events);
    }
}

/* The connection's socket is readable, writable, or failed. */
static void kr_conn_io(struct kr_conn *c, uint32_t events)
{
    struct kr_nt *nt = c->nt;
    /* A reset (EPOLLERR) or both ways closed (EPOLLHUP): what arrived before it is still read
     * and run first, then the read (or the write) fails and closes the connection. A
     * publisher that closes with replies unread resets its connection: closing at the event
     * would drop the publishes it sent just before. */
    if (events & (EPOLLERR | EPOLLHUP))
        events |= c->watching;
    if ((events & EPOLLOUT) && c->writing)
        kr_conn_on_writable(c);
    /* as long as it reads and the read buffer comes back full, a few reads in a row */
    for (int i = 0; i < KR_READS_PER_WAKE && (events & EPOLLIN) && c->reading && !c->closing;
         i++) {
        ssize_t n = read(c->fd, nt->readbuf, sizeof(nt->readbuf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) { /* the peer closed, or the connection broke */
            kr_conn_close(c);
            break;
        }
        kr_conn_got(c, nt->readbuf, (size_t)n);
        if ((size_t)n < sizeof(nt->readbuf))
            break;
    }
}

