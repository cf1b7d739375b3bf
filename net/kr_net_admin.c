/* Requests from other threads (the control thread and admin workers) to net threads.
 *
 * Per-connection state belongs to its net thread, so another thread that wants a list of
 * connections, one connection's figures, or some connections closed queues a request for
 * that net thread (a mutex-protected list), wakes it with uv_async_send, and the net
 * thread runs the request in its own loop. A request owns its answer buffer: an asker that
 * stops waiting marks it abandoned and the net thread frees it after serving it. The hot
 * path only pays one relaxed load per wake-up (the `pending` flag). */
#include <ck_pr.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kr_util.h"
#include "kr_net_int.h"
#include "kr_router.h"

enum kr_net_req_type {
    KR_NET_REQ_LIST = 1, /* up to n connections from slot `cursor` on */
    KR_NET_REQ_FIND,     /* the connection `id` */
    KR_NET_REQ_CLOSE,    /* close up to n clients */
    KR_NET_REQ_UNLISTEN, /* close the listening socket */
    KR_NET_REQ_DEADLINE, /* the drain's deadline: close every client, telling those holding messages */
};

struct kr_net_req {
    struct kr_net_req *next;
    enum kr_net_req_type type;
    uint32_t n;
    uint32_t cursor;
    uint64_t id;
    int status;     /* answer: count, 0, or -errno */
    bool done;
    bool abandoned; /* nobody waits: the server side frees it */
    struct kr_net_conn_info out[];
};

struct kr_net_reqq {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint32_t nnet;
    bool shutdown;
    struct kr_net_req **head; /* [nnet], FIFO */
    struct kr_net_req **tail;
    int *pending;             /* [nnet] */
};

struct kr_net_reqq *kr_net_reqq_create(uint32_t nnet)
{
    struct kr_net_reqq *q = kr_xcalloc(1, sizeof(*q));
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->nnet = nnet;
    q->head = kr_xcalloc(nnet, sizeof(*q->head));
    q->tail = kr_xcalloc(nnet, sizeof(*q->tail));
    q->pending = kr_xcalloc(nnet, sizeof(*q->pending));
    return q;
}

void kr_net_reqq_destroy(struct kr_net_reqq *q)
{
    if (!q)
        return;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q->head);
    free(q->tail);
    free(q->pending);
    free(q);
}

/* Mark a request answered (under q->mu); frees it when nobody waits. */
static void kr_net_req_finish(struct kr_net_reqq *q, struct kr_net_req *r, int status)
{
    r->status = status;
    r->done = true;
    if (r->abandoned)
        free(r);
    else
        pthread_cond_broadcast(&q->cv);
}

void kr_net_reqq_serve(struct kr_server *s, uint32_t net)
{
    struct kr_net_reqq *q = kr_net_server_reqq(s);
    if (!ck_pr_load_int(&q->pending[net]))
        return;
    pthread_mutex_lock(&q->mu);
    struct kr_net_req *list = q->head[net];
    q->head[net] = q->tail[net] = NULL;
    ck_pr_store_int(&q->pending[net], 0);
    pthread_mutex_unlock(&q->mu);
    while (list) {
        struct kr_net_req *r = list;
        list = r->next;
        int status = 0;
        switch (r->type) {
        case KR_NET_REQ_LIST: {
            uint32_t k = 0;
            while (k < r->n && kr_net_conn_next(s, net, &r->cursor, &r->out[k]))
                k++;
            status = (int)k;
            break;
        }
        case KR_NET_REQ_FIND:
            status = kr_net_conn_find(s, r->id, &r->out[0]);
            break;
        case KR_NET_REQ_CLOSE:
            status = (int)kr_net_close_some(s, net, r->n);
            break;
        case KR_NET_REQ_UNLISTEN:
            kr_net_stop_listening(s, net);
            break;
        case KR_NET_REQ_DEADLINE:
            status = (int)kr_net_drain_deadline(s, net);
            break;
        }
        pthread_mutex_lock(&q->mu);
        kr_net_req_finish(q, r, status);
        pthread_mutex_unlock(&q->mu);
    }
}

void kr_net_reqq_shutdown(struct kr_server *s)
{
    struct kr_net_reqq *q = kr_net_server_reqq(s);
    pthread_mutex_lock(&q->mu);
    q->shutdown = true;
    for (uint32_t n = 0; n < q->nnet; n++) {
        struct kr_net_req *r = q->head[n];
        q->head[n] = q->tail[n] = NULL;
        q->pending[n] = 0;
        while (r) {
            struct kr_net_req *next = r->next;
            kr_net_req_finish(q, r, -ESHUTDOWN);
            r = next;
        }
    }
    pthread_mutex_unlock(&q->mu);
}

/* Queue r for net thread `net` and wake it. With wait_ms < 0 nobody waits (the net thread
 * frees r) and 0 is returned; else waits up to wait_ms for the answer, returns r->status
 * and frees r, or -ETIMEDOUT (r left to the net thread). */
static int kr_net_req_submit(struct kr_server *s, uint32_t net, struct kr_net_req *r,
                             int wait_ms, struct kr_net_req **answer)
{
    struct kr_net_reqq *q = kr_net_server_reqq(s);
    if (net >= q->nnet) {
        free(r);
        return -EINVAL;
    }
    r->abandoned = wait_ms < 0;
    pthread_mutex_lock(&q->mu);
    if (q->shutdown) {
        pthread_mutex_unlock(&q->mu);
        free(r);
        return -ESHUTDOWN;
    }
    r->next = NULL;
    if (q->tail[net])
        q->tail[net]->next = r;
    else
        q->head[net] = r;
    q->tail[net] = r;
    ck_pr_store_int(&q->pending[net], 1);
    pthread_mutex_unlock(&q->mu);
    kr_net_wake(s, net);
    if (wait_ms < 0)
        return 0;

    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += wait_ms / 1000;
    deadline.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&q->mu);
    int rc = 0;
    while (!r->done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&q->cv, &q->mu, &deadline);
    if (!r->done) {
        r->abandoned = true;
        pthread_mutex_unlock(&q->mu);
        return -ETIMEDOUT;
    }
    pthread_mutex_unlock(&q->mu);
    *answer = r;
    return r->status;
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
