/* Cross-thread requests (see kr_queue.h): a FIFO per owner thread under a mutex, a
 * condition variable the askers wait on, and a `pending` flag the owner reads without the
 * lock. */
#include "kr_queue.h"

#include <ck_pr.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "kr_util.h"

struct kr_reqq {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct kr_req *head, *tail;
    int pending; /* something is queued: read by the owner without the lock */
    bool shutdown;
    void (*wake)(void *arg);
    void *wake_arg;
};

struct kr_reqq *kr_reqq_create(void (*wake)(void *arg), void *wake_arg)
{
    struct kr_reqq *q = kr_xcalloc(1, sizeof(*q));
    pthread_mutex_init(&q->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* waits immune to clock changes */
    pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);
    q->wake = wake;
    q->wake_arg = wake_arg;
    return q;
}

static void kr_req_release(struct kr_req *r)
{
    if (r->release)
        r->release(r);
    else
        free(r);
}

/* Record the answer (under q->mu): release an abandoned request, else wake its asker. */
static void kr_reqq_finish(struct kr_reqq *q, struct kr_req *r, int status)
{
    r->status = status;
    r->done = true;
    if (r->abandoned)
        kr_req_release(r);
    else
        pthread_cond_broadcast(&q->cv);
}

void kr_reqq_shutdown(struct kr_reqq *q)
{
    pthread_mutex_lock(&q->mu);
    q->shutdown = true;
    struct kr_req *r = q->head;
    q->head = q->tail = NULL;
    ck_pr_store_int(&q->pending, 0);
    while (r) {
        struct kr_req *next = r->next;
        kr_reqq_finish(q, r, -ESHUTDOWN);
        r = next;
    }
    pthread_mutex_unlock(&q->mu);
}

void kr_reqq_destroy(struct kr_reqq *q)
{
    if (!q)
        return;
    kr_reqq_shutdown(q);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q);
}

int kr_reqq_submit(struct kr_reqq *q, struct kr_req *r, int wait_ms)
{
    r->next = NULL;
    r->done = false;
    r->abandoned = wait_ms < 0;
    r->status = 0;
    pthread_mutex_lock(&q->mu);
    if (q->shutdown) {
        pthread_mutex_unlock(&q->mu);
        if (wait_ms < 0)
            kr_req_release(r);
        return -ESHUTDOWN;
    }
    if (q->tail)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    ck_pr_store_int(&q->pending, 1);
    pthread_mutex_unlock(&q->mu);
    q->wake(q->wake_arg);
    if (wait_ms < 0)
        return 0;

    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
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
        r->abandoned = true; /* the owner releases it once served */
        pthread_mutex_unlock(&q->mu);
        return -ETIMEDOUT;
    }
    int status = r->status;
    pthread_mutex_unlock(&q->mu);
    return status;
}

uint32_t kr_reqq_serve(struct kr_reqq *q, void *owner)
{
    if (!ck_pr_load_int(&q->pending))
        return 0;
    pthread_mutex_lock(&q->mu);
    struct kr_req *list = q->head;
    q->head = q->tail = NULL;
    ck_pr_store_int(&q->pending, 0);
    pthread_mutex_unlock(&q->mu);
    uint32_t n = 0;
    while (list) {
        struct kr_req *r = list;
        list = r->next;
        /* the request belongs to the queue's side until answered: an abandoned one is
         * still safe to fill */
        int status = r->run(r, owner);
        n++;
        if (status == KR_REQ_LATER)
            continue;
        pthread_mutex_lock(&q->mu);
        kr_reqq_finish(q, r, status);
        pthread_mutex_unlock(&q->mu);
    }
    return n;
}

bool kr_reqq_pending(const struct kr_reqq *q)
{
    return ck_pr_load_int((int *)&q->pending) != 0;
}

void kr_reqq_complete(struct kr_reqq *q, struct kr_req *r, int status)
{
    pthread_mutex_lock(&q->mu);
    kr_reqq_finish(q, r, status);
    pthread_mutex_unlock(&q->mu);
}
