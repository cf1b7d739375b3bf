/* The NATS connection's socket on the link thread's libuv loop (see kr_cluster_int.h).
 *
 * libnats runs with an external event loop (natsOptions_SetEventLoop): it has no reader
 * thread and no flusher thread of its own; it tells the loop which socket to watch and
 * for what through four callbacks, and the loop calls natsConnection_ProcessReadEvent and
 * _ProcessWriteEvent when the socket is ready. What is published is appended to libnats'
 * buffer and written at the loop's next turn, all of it in one write: no write per
 * forward, and no wait for a flusher (libnats' flusher thread waits up to a millisecond
 * after each signal to gather more).
 *
 * libnats calls the callbacks with its connection lock held, from whichever thread made
 * the socket change: the link thread (its publishes, the reads and writes it runs), the
 * delivery thread (its probe answers), libnats' reconnect thread, the control thread
 * (connect, close). The wanted state is kept under io.mu; the link thread applies it to
 * its uv_poll_t, at once when it is the caller, else at its next wake-up. An attach
 * always gets a new handle (a reconnected socket may reuse the old descriptor's number). */
#include <stdlib.h>

#include "kr_cluster_int.h"
#include "kr_log.h"
#include "kr_util.h"

/* The cluster whose link thread this is (set by kr_cl_main); NULL on every other thread. */
static __thread struct kr_cluster *kr_cl_io_owner;

void kr_cl_io_own(struct kr_cluster *cl)
{
    kr_cl_io_owner = cl;
}

static void kr_cl_io_free_cb(uv_handle_t *h)
{
    free(h);
}

static void kr_cl_io_cb(uv_poll_t *p, int status, int events)
{
    struct kr_cluster *cl = p->data;
    natsConnection *nc = cl->nc;
    if (status < 0) {
        /* libuv stopped watching the socket: the read that fails starts libnats'
         * reconnect; else the socket is watched again as wanted */
        cl->io.poll_events = 0;
        natsConnection_ProcessReadEvent(nc);
        kr_cl_io_apply(cl);
        return;
    }
    if (events & UV_READABLE) {
        natsConnection_ProcessReadEvent(nc);
        kr_cl_io_flush(cl, 1); /* what the read made libnats answer (a PONG) */
    }
    /* the read may have detached the socket: libnats then skips the write */
    if (events & UV_WRITABLE) {
        natsConnection_ProcessWriteEvent(nc);
        /* the forwards that waited for the socket (kr_cl_io_flush) go on */
        if (cl->out_blocked && natsConnection_Buffered(nc) <= KR_CL_BUFFERED_MAX) {
            cl->out_blocked = false;
            uv_async_send(&cl->wake);
        }
    }
}

bool kr_cl_io_flush(struct kr_cluster *cl, size_t at_least)
{
    natsConnection *nc = cl->nc;
    int b = natsConnection_Buffered(nc);
    if (b <= 0 || (size_t)b < at_least)
        return false;
    natsConnection_ProcessWriteEvent(nc); /* nothing while no socket is attached */
    b = natsConnection_Buffered(nc);
    if (b > 0 && !cl->io.w_armed) { /* the socket is full: written as it drains */
        cl->io.w_armed = true;
        kr_cl_io_apply(cl);
    }
    /* while the link is down (libnats' reconnect buffer takes the forwards) or draining,
     * nothing waits for the socket */
    return b > KR_CL_BUFFERED_MAX && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED;
}

void kr_cl_io_apply(struct kr_cluster *cl)
{
    struct kr_cl_io *io = &cl->io;
    pthread_mutex_lock(&io->mu);
    int fd = io->want_fd, events = io->want_events;
    uint64_t gen = io->gen;
    io->dirty = false;
    pthread_mutex_unlock(&io->mu);
    /* libnats asks for the socket's writability whenever it buffered something; the link
     * writes at the end of its pass instead (kr_cl_io_flush) and watches writability only
     * while a write is left over */
    if (!(events & UV_WRITABLE))
        io->w_armed = false;
    else if (!io->w_armed)
        events &= ~UV_WRITABLE;
    if (io->poll && (fd < 0 || gen != io->poll_gen)) {
        uv_close((uv_handle_t *)io->poll, kr_cl_io_free_cb);
        io->poll = NULL;
    }
    if (fd < 0)
        return;
    if (!io->poll) {
        uv_poll_t *p = kr_xcalloc(1, sizeof(*p));
        int rc = uv_poll_init_socket(&cl->loop, p, fd);
        if (rc < 0) {
            /* the descriptor is gone already (closed by a reconnect that follows): the
             * state that comes with it is applied at the next wake-up */
            KR_WARN("cluster: cannot watch the NATS socket: %s", uv_strerror(rc));
            free(p);
            return;
        }
        p->data = cl;
        io->poll = p;
        io->poll_gen = gen;
        io->poll_events = 0;
    }
    if (events == io->poll_events)
        return;
    int rc = events ? uv_poll_start(io->poll, events, kr_cl_io_cb) : uv_poll_stop(io->poll);
    if (rc < 0)
        KR_WARN("cluster: cannot watch the NATS socket: %s", uv_strerror(rc));
    else
        io->poll_events = events;
}

/* Record what libnats wants watched; applied now on the link thread, else at its wake-up. */
static natsStatus kr_cl_io_want(struct kr_cluster *cl, int fd, int set, int clear, bool attach)
{
    struct kr_cl_io *io = &cl->io;
    pthread_mutex_lock(&io->mu);
    if (attach) {
        io->want_fd = fd;
        io->want_events = 0;
        io->gen++;
    }
    io->want_events = (io->want_events | set) & ~clear;
    bool was_dirty = io->dirty;
    io->dirty = true;
    pthread_mutex_unlock(&io->mu);
    if (kr_cl_io_owner == cl)
        kr_cl_io_apply(cl);
    else if (!was_dirty)
        KR_ASYNC_SEND(&cl->wake);
    return NATS_OK;
}

static natsStatus kr_cl_io_attach(void **user, void *loop, natsConnection *nc, natsSock fd)
{
    (void)nc; /* cl->nc: the same connection at every attach */
    struct kr_cluster *cl = ((uv_loop_t *)loop)->data;
    *user = cl;
    return kr_cl_io_want(cl, (int)fd, UV_READABLE, 0, true);
}

static natsStatus kr_cl_io_read(void *user, bool add)
{
    return kr_cl_io_want(user, 0, add ? UV_READABLE : 0, add ? 0 : UV_READABLE, false);
}

static natsStatus kr_cl_io_write(void *user, bool add)
{
    return kr_cl_io_want(user, 0, add ? UV_WRITABLE : 0, add ? 0 : UV_WRITABLE, false);
}

static natsStatus kr_cl_io_detach(void *user)
{
    return kr_cl_io_want(user, -1, 0, UV_READABLE | UV_WRITABLE, true);
}

natsStatus kr_cl_io_options(struct kr_cluster *cl)
{
    cl->loop.data = cl;
    return natsOptions_SetEventLoop(cl->nopts, &cl->loop, kr_cl_io_attach, kr_cl_io_read,
                                    kr_cl_io_write, kr_cl_io_detach);
}

void kr_cl_io_close(struct kr_cluster *cl)
{
    if (cl->io.poll) {
        uv_close((uv_handle_t *)cl->io.poll, kr_cl_io_free_cb);
        cl->io.poll = NULL;
    }
}
