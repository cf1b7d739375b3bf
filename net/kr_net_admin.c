/* Requests from other threads (the control thread and admin workers) to net threads.
 *
 * Per-connection state belongs to its net thread, so another thread that wants a list of
 * connections, one connection's figures, or some connections closed sends a request to
 * that net thread's kr_reqq (queue/kr_queue.h: the same primitive the shards and the
 * control thread serve), which wakes it with uv_async_send; the net thread runs the
 * request in its own loop, from its wake-up callback. A request owns its answer buffer:
 * an asker that stops waiting leaves it to the queue, which frees it once served. The hot
 * path only pays one relaxed load per wake-up (kr_reqq_serve's `pending` check). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kr_util.h"
#include "kr_net_int.h"
#include "kr_queue.h"
#include "kr_router.h"

enum kr_net_req_type {
    KR_NET_REQ_LIST = 1, /* up to n connections from slot `cursor` on */
    KR_NET_REQ_FIND,     /* the connection `id` */
    KR_NET_REQ_CLOSE,    /* close up to n clients */
    KR_NET_REQ_UNLISTEN, /* close the listening socket */
    KR_NET_REQ_DEADLINE, /* the drain's deadline: close every client, telling those holding messages */
    KR_NET_REQ_FLUSH,    /* the drain's first barrier (kr_net_drain_flush) */
};

struct kr_net_req {
    struct kr_req base; /* first: the queue's part (answer in base.status) */
    enum kr_net_req_type type;
    uint32_t n;
    uint32_t cursor;
    uint64_t id;
    struct kr_net_conn_info out[];
};

/* What a net thread's queue passes to kr_reqq_serve as the owner, and to its wake-up. */
struct kr_net_reqq_owner {
    struct kr_server *srv;
    uint32_t net;
};

struct kr_net_reqq {
    uint32_t nnet;
    struct kr_reqq **q;               /* [nnet] */
    struct kr_net_reqq_owner *owners; /* [nnet] */
};

static void kr_net_reqq_wake(void *arg)
{
    struct kr_net_reqq_owner *o = arg;
    kr_net_wake(o->srv, o->net);
}

struct kr_net_reqq *kr_net_reqq_create(struct kr_server *s, uint32_t nnet)
{
    struct kr_net_reqq *q = kr_xcalloc(1, sizeof(*q));
    q->nnet = nnet;
    q->q = kr_xcalloc(nnet, sizeof(*q->q));
    q->owners = kr_xcalloc(nnet, sizeof(*q->owners));
    for (uint32_t n = 0; n < nnet; n++) {
        q->owners[n] = (struct kr_net_reqq_owner){s, n};
        q->q[n] = kr_reqq_create(kr_net_reqq_wake, &q->owners[n]);
    }
    return q;
}

void kr_net_reqq_destroy(struct kr_net_reqq *q)
{
    if (!q)
        return;
    for (uint32_t n = 0; n < q->nnet; n++)
        kr_reqq_destroy(q->q[n]);
    free(q->q);
    free(q->owners);
    free(q);
}

/* Run one request on net thread o->net; the answer is the return value. */
static int kr_net_req_run(struct kr_req *req, void *owner)
{
    struct kr_net_reqq_owner *o = owner;
    struct kr_net_req *r = (struct kr_net_req *)req;
    struct kr_server *s = o->srv;
    uint32_t net = o->net;
    switch (r->type) {
    case KR_NET_REQ_LIST: {
        uint32_t k = 0;
        while (k < r->n && kr_net_conn_next(s, net, &r->cursor, &r->out[k]))
            k++;
        return (int)k;
    }
    case KR_NET_REQ_FIND:
        return kr_net_conn_find(s, r->id, &r->out[0]);
    case KR_NET_REQ_CLOSE:
        return (int)kr_net_close_some(s, net, r->n);
    case KR_NET_REQ_UNLISTEN:
        kr_net_stop_listening(s, net);
        return 0;
    case KR_NET_REQ_DEADLINE:
        return (int)kr_net_drain_deadline(s, net);
    case KR_NET_REQ_FLUSH:
        kr_net_drain_flush(s, net);
        return 0;
    }
    return -EINVAL;
}

void kr_net_reqq_serve(struct kr_server *s, uint32_t net)
{
    struct kr_net_reqq *q = kr_net_server_reqq(s);
    kr_reqq_serve(q->q[net], &q->owners[net]);
}

void kr_net_reqq_shutdown(struct kr_server *s)
{
    struct kr_net_reqq *q = kr_net_server_reqq(s);
    for (uint32_t n = 0; n < q->nnet; n++)
        kr_reqq_shutdown(q->q[n]);
}

/* Queue r for net thread `net` (see kr_reqq_submit): with wait_ms < 0 nobody waits (the
 * queue frees r) and 0 or -ESHUTDOWN is returned; else waits up to wait_ms and returns the
 * answer with *answer = r (the caller frees it), or -ETIMEDOUT (r left to the queue). */
static int kr_net_req_submit(struct kr_server *s, uint32_t net, struct kr_net_req *r,
                             int wait_ms, struct kr_net_req **answer)
{
    struct kr_net_reqq *q = kr_net_server_reqq(s);
    if (net >= q->nnet) {
        free(r);
        return -EINVAL;
    }
    r->base.run = kr_net_req_run;
    r->base.release = NULL; /* free() */
    int rc = kr_reqq_submit(q->q[net], &r->base, wait_ms);
    if (wait_ms < 0 || rc == -ETIMEDOUT)
        return rc;
    if (rc == -ESHUTDOWN) {
        free(r);
        return rc;
    }
    *answer = r;
    return rc;
}

static struct kr_net_req *kr_net_req_new(enum kr_net_req_type type, uint32_t nout)
{
    struct kr_net_req *r =
        kr_xcalloc(1, sizeof(*r) + (size_t)nout * sizeof(struct kr_net_conn_info));
    r->type = type;
    return r;
}

/* ------------------------------------------------ public (kr_net.h) */

int kr_server_list_conns(struct kr_server *s, uint32_t net, uint32_t *cursor,
                         struct kr_net_conn_info *out, uint32_t max, int timeout_ms)
{
    if (max == 0)
        return 0;
    struct kr_net_req *r = kr_net_req_new(KR_NET_REQ_LIST, max);
    r->n = max;
    r->cursor = *cursor;
    struct kr_net_req *ans = NULL;
    int rc = kr_net_req_submit(s, net, r, timeout_ms > 0 ? timeout_ms : 5000, &ans);
    if (ans) {
        if (rc > 0)
            memcpy(out, ans->out, (size_t)rc * sizeof(*out));
        *cursor = ans->cursor;
        free(ans);
    }
    return rc;
}

int kr_server_find_conn(struct kr_server *s, uint64_t id, struct kr_net_conn_info *out,
                        int timeout_ms)
{
    struct kr_net_req *r = kr_net_req_new(KR_NET_REQ_FIND, 1);
    r->id = id;
    struct kr_net_req *ans = NULL;
    int rc = kr_net_req_submit(s, KR_CONN_NET(id), r, timeout_ms > 0 ? timeout_ms : 5000, &ans);
    if (rc == -EINVAL)
        return -ENOENT; /* no such net thread: no such client */
    if (ans) {
        if (rc == 0)
            *out = ans->out[0];
        free(ans);
    }
    return rc;
}

int kr_server_close_clients(struct kr_server *s, uint32_t net, uint32_t n)
{
    struct kr_net_req *r = kr_net_req_new(KR_NET_REQ_CLOSE, 0);
    r->n = n;
    return kr_net_req_submit(s, net, r, -1, NULL);
}

int kr_server_drain_deadline(struct kr_server *s, uint32_t net)
{
    return kr_net_req_submit(s, net, kr_net_req_new(KR_NET_REQ_DEADLINE, 0), -1, NULL);
}

int kr_server_drain_flush(struct kr_server *s)
{
    int rc = 0;
    for (uint32_t n = 0; n < kr_server_nnet(s); n++) {
        int r = kr_net_req_submit(s, n, kr_net_req_new(KR_NET_REQ_FLUSH, 0), -1, NULL);
        if (r < 0)
            rc = r;
    }
    return rc;
}

int kr_server_stop_listening(struct kr_server *s)
{
    int rc = 0;
    for (uint32_t n = 0; n < kr_server_nnet(s); n++) {
        int r = kr_net_req_submit(s, n, kr_net_req_new(KR_NET_REQ_UNLISTEN, 0), -1, NULL);
        if (r < 0)
            rc = r;
    }
    return rc;
}
