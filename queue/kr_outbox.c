/* Outboxes: push in order or park, unpark in order, wake once per batch (kr_queue.h).
 * Everything here runs on the outbox's producer thread. */
#include "kr_queue.h"

#include <ck_pr.h>
#include <stdlib.h>
#include <string.h>

#include "kr_util.h"

void kr_outbox_init(struct kr_outbox *ob, const struct kr_outbox_sink *sink,
                    enum kr_outbox_order order)
{
    memset(ob, 0, sizeof(*ob));
    ob->sink = sink;
    ob->per_dest = order == KR_OUTBOX_PER_DEST;
    if (ob->per_dest)
        ob->lanes = kr_xcalloc(sink->ndest ? sink->ndest : 1, sizeof(*ob->lanes));
    if (sink->wake)
        ob->pending = kr_xcalloc(sink->ndest ? sink->ndest : 1, 1);
}

static void kr_outbox_fifo_clear(struct kr_outbox *ob, struct kr_outbox_fifo *f,
                                 void (*release)(void *arg, uint32_t dest, struct kr_event *ev),
                                 void *arg)
{
    for (uint32_t i = 0; i < f->count; i++) {
        struct kr_outbox_parked *p = &f->buf[(f->head + i) % f->cap];
        if (release)
            release(arg, p->dest, &p->ev);
    }
    ob->nparked -= f->count;
    f->head = 0;
    f->count = 0;
}

void kr_outbox_clear(struct kr_outbox *ob,
                     void (*release)(void *arg, uint32_t dest, struct kr_event *ev), void *arg)
{
    if (!ob->nparked)
        return;
    if (!ob->per_dest) {
        kr_outbox_fifo_clear(ob, &ob->one, release, arg);
        return;
    }
    for (uint32_t d = 0; d < ob->sink->ndest && ob->nparked; d++)
        kr_outbox_fifo_clear(ob, &ob->lanes[d], release, arg);
}

void kr_outbox_destroy(struct kr_outbox *ob,
                       void (*release)(void *arg, uint32_t dest, struct kr_event *ev), void *arg)
{
    if (!ob->sink)
        return; /* never set up */
    kr_outbox_clear(ob, release, arg);
    if (ob->per_dest)
        for (uint32_t d = 0; d < ob->sink->ndest; d++)
            free(ob->lanes[d].buf);
    free(ob->lanes);
    free(ob->one.buf);
    free(ob->pending);
    memset(ob, 0, sizeof(*ob));
}

void kr_outbox_park_(struct kr_outbox *ob, struct kr_outbox_fifo *f, uint32_t dest,
                     const struct kr_event *ev)
{
    if (f->count == f->cap) {
        uint32_t ncap = f->cap ? f->cap * 2 : 64;
        struct kr_outbox_parked *nb = kr_xmalloc((size_t)ncap * sizeof(*nb));
        for (uint32_t i = 0; i < f->count; i++)
            nb[i] = f->buf[(f->head + i) % f->cap];
        free(f->buf);
        f->buf = nb;
        f->head = 0;
        f->cap = ncap;
    }
    struct kr_outbox_parked *p = &f->buf[(f->head + f->count) % f->cap];
    p->dest = dest;
    p->ev = *ev;
    f->count++;
    ob->nparked++;
    uint64_t *parks = ob->sink->parks;
    if (parks)
        ck_pr_store_64(parks, *parks + 1);
}

/* Send what waits in one FIFO until a mailbox refuses. */
static void kr_outbox_fifo_unpark(struct kr_outbox *ob, struct kr_outbox_fifo *f)
{
    const struct kr_outbox_sink *s = ob->sink;
    while (f->count) {
        struct kr_outbox_parked *p = &f->buf[f->head];
        if (!kr_outbox_send_(s, p->dest, &p->ev))
            break;
        if (ob->pending)
            ob->pending[p->dest] = 1;
        f->head = f->head + 1 == f->cap ? 0 : f->head + 1;
        f->count--;
        ob->nparked--;
    }
    if (f->count == 0)
        f->head = 0;
}

bool kr_outbox_unpark(struct kr_outbox *ob)
{
    if (!ob->nparked)
        return true;
    if (!ob->per_dest) {
        kr_outbox_fifo_unpark(ob, &ob->one);
    } else {
        for (uint32_t d = 0; d < ob->sink->ndest && ob->nparked; d++)
            if (ob->lanes[d].count)
                kr_outbox_fifo_unpark(ob, &ob->lanes[d]);
    }
    return ob->nparked == 0;
}

void kr_outbox_wake(struct kr_outbox *ob)
{
    if (!ob->pending)
        return;
    const struct kr_outbox_sink *s = ob->sink;
    for (uint32_t d = 0; d < s->ndest; d++) {
        if (ob->pending[d]) {
            ob->pending[d] = 0;
            s->wake(s->arg, d);
        }
    }
}

void kr_outbox_wake_all(struct kr_outbox *ob)
{
    if (ob->pending)
        memset(ob->pending, 1, ob->sink->ndest);
}
