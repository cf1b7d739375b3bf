/* Unit tests of the ordered outbox (kr_outbox in queue/): push in order or park, unpark in
 * order, one wake-up per destination per batch, and a randomized run against a model. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "kr_queue.h"

#define NDEST 3

struct fixture {
    struct kr_mailbox *mb[NDEST];
    struct kr_outbox_sink sink;
    struct kr_outbox ob;
    uint64_t parks;
    uint32_t wakes[NDEST];
    uint32_t nwakes;
};

static void count_wake(void *arg, uint32_t dest)
{
    struct fixture *fx = arg;
    fx->wakes[dest]++;
    fx->nwakes++;
}

static void setup(struct fixture *fx, uint32_t cap, enum kr_outbox_order order, bool wake)
{
    memset(fx, 0, sizeof(*fx));
    for (int d = 0; d < NDEST; d++)
        fx->mb[d] = kr_mailbox_create(cap);
    fx->sink = (struct kr_outbox_sink){.ndest = NDEST, .mb = fx->mb,
                                       .wake = wake ? count_wake : NULL, .arg = fx,
                                       .parks = &fx->parks};
    kr_outbox_init(&fx->ob, &fx->sink, order);
}

static void teardown(struct fixture *fx)
{
    kr_outbox_destroy(&fx->ob, NULL, NULL);
    for (int d = 0; d < NDEST; d++)
        kr_mailbox_destroy(fx->mb[d]);
}

static bool pop_n(struct fixture *fx, uint32_t d, uint64_t *n)
{
    struct kr_event ev;
    if (!kr_mailbox_pop(fx->mb[d], &ev))
        return false;
    *n = ev.conn;
    return true;
}

Test(outbox, order_under_full_ring)
{
    struct fixture fx;
    setup(&fx, 4, KR_OUTBOX_PER_DEST, false);
    uint32_t cap = kr_mailbox_capacity(fx.mb[0]);
    uint32_t total = cap * 3 + 5;
    uint32_t sent = 0;
    for (uint64_t i = 0; i < total; i++)
        sent += kr_outbox_push(&fx.ob, 0, &(struct kr_event){.type = 1, .conn = i});
    cr_assert_eq(sent, cap, "only the ring's capacity goes at once");
    cr_assert_eq(kr_outbox_parked(&fx.ob), total - cap);
    cr_assert_eq(fx.parks, total - cap);
    /* one slot frees: an event pushed now must still wait behind the parked ones */
    uint64_t n;
    cr_assert(pop_n(&fx, 0, &n));
    cr_assert_eq(n, 0);
    cr_assert_not(kr_outbox_push(&fx.ob, 0, &(struct kr_event){.type = 1, .conn = total}));
    total++;
    /* another destination is not held up */
    cr_assert(kr_outbox_push(&fx.ob, 1, &(struct kr_event){.type = 1, .conn = 1000}));
    /* drain while unparking: every event in push order */
    uint64_t want = 1;
    for (int rounds = 0; rounds < 1000 && want < total; rounds++) {
        kr_outbox_unpark(&fx.ob);
        while (pop_n(&fx, 0, &n))
            cr_assert_eq(n, want++, "out of order: %llu, want %llu", (unsigned long long)n,
                         (unsigned long long)(want - 1));
    }
    cr_assert_eq(want, total);
    cr_assert_eq(kr_outbox_parked(&fx.ob), 0);
    cr_assert(kr_outbox_unpark(&fx.ob));
    teardown(&fx);
}

Test(outbox, unpark_order_per_destination)
{
    struct fixture fx;
    setup(&fx, 2, KR_OUTBOX_PER_DEST, false);
    uint32_t cap = kr_mailbox_capacity(fx.mb[0]);
    /* interleave destinations; each fills and parks */
    for (uint64_t i = 0; i < 30; i++)
        kr_outbox_push(&fx.ob, (uint32_t)(i % NDEST), &(struct kr_event){.type = 1, .conn = i});
    cr_assert_eq(kr_outbox_parked(&fx.ob), 30 - NDEST * cap);
    /* free destination 2 only: the others stay parked, 2 advances in order */
    uint64_t n, last[NDEST] = {0};
    bool seen[NDEST] = {false};
    for (int rounds = 0; rounds < 100; rounds++) {
        kr_outbox_unpark(&fx.ob);
        while (pop_n(&fx, 2, &n)) {
            cr_assert_eq(n % NDEST, 2);
            cr_assert(!seen[2] || n > last[2]);
            last[2] = n;
            seen[2] = true;
        }
    }
    cr_assert_eq(last[2], 29);
    cr_assert_eq(kr_outbox_parked(&fx.ob), 20 - 2 * cap);
    for (int rounds = 0; rounds < 100; rounds++) {
        kr_outbox_unpark(&fx.ob);
        for (uint32_t d = 0; d < 2; d++)
            while (pop_n(&fx, d, &n)) {
                cr_assert_eq(n % NDEST, d);
                cr_assert(!seen[d] || n > last[d]);
                last[d] = n;
                seen[d] = true;
            }
    }
    cr_assert_eq(kr_outbox_parked(&fx.ob), 0);
    cr_assert_eq(last[0], 27);
    cr_assert_eq(last[1], 28);
    teardown(&fx);
}

Test(outbox, one_wake_per_destination_per_batch)
{
    struct fixture fx;
    setup(&fx, 4, KR_OUTBOX_PER_DEST, true);
    kr_outbox_push(&fx.ob, 0, &(struct kr_event){.type = 1});
    kr_outbox_push(&fx.ob, 1, &(struct kr_event){.type = 1});
    kr_outbox_push(&fx.ob, 1, &(struct kr_event){.type = 1});
    kr_outbox_push(&fx.ob, 0, &(struct kr_event){.type = 1});
    cr_assert_eq(fx.nwakes, 0, "no wake-up before the batch ends");
    kr_outbox_wake(&fx.ob);
    cr_assert_eq(fx.wakes[0], 1);
    cr_assert_eq(fx.wakes[1], 1);
    cr_assert_eq(fx.wakes[2], 0);
    kr_outbox_wake(&fx.ob);
    cr_assert_eq(fx.nwakes, 2, "nothing new: nobody woken");
    /* fill destination 2, then park: parking alone wakes nobody new */
    uint32_t cap = kr_mailbox_capacity(fx.mb[2]);
    for (uint32_t i = 0; i < cap + 3; i++)
        kr_outbox_push(&fx.ob, 2, &(struct kr_event){.type = 1});
    kr_outbox_wake(&fx.ob);
    cr_assert_eq(fx.wakes[2], 1);
    kr_outbox_wake(&fx.ob);
    cr_assert_eq(fx.wakes[2], 1);
    /* room frees: the unparked events wake their destination once */
    struct kr_event ev;
    while (kr_mailbox_pop(fx.mb[2], &ev))
        ;
    cr_assert(kr_outbox_unpark(&fx.ob));
    kr_outbox_wake(&fx.ob);
    cr_assert_eq(fx.wakes[2], 2);
    cr_assert_eq(fx.wakes[0], 1);
    kr_outbox_wake_all(&fx.ob);
    kr_outbox_wake(&fx.ob);
    cr_assert_eq(fx.wakes[0], 2);
    cr_assert_eq(fx.wakes[1], 2);
    cr_assert_eq(fx.wakes[2], 3);
    teardown(&fx);
}

/* KR_OUTBOX_ALL through a send callback that refuses at will (a congested shard): the
 * events leave in exactly the order they were pushed, across destinations. */
struct gate {
    bool open[NDEST];
    uint64_t log[4096];
    uint32_t dests[4096];
    uint32_t n;
};

static bool gate_send(void *arg, uint32_t dest, const struct kr_event *ev)
{
    struct gate *g = arg;
    if (!g->open[dest])
        return false;
    g->dests[g->n] = dest;
    g->log[g->n++] = ev->conn;
    return true;
}

Test(outbox, one_order_across_destinations)
{
    struct gate g = {.open = {true, false, true}};
    struct kr_outbox_sink sink = {.ndest = NDEST, .send = gate_send, .arg = &g};
    struct kr_outbox ob;
    kr_outbox_init(&ob, &sink, KR_OUTBOX_ALL);
    cr_assert(kr_outbox_push(&ob, 0, &(struct kr_event){.conn = 0}));
    cr_assert_not(kr_outbox_push(&ob, 1, &(struct kr_event){.conn = 1}));
    /* destination 2 is open, but order is across destinations: it waits */
    cr_assert_not(kr_outbox_push(&ob, 2, &(struct kr_event){.conn = 2}));
    cr_assert_not(kr_outbox_push(&ob, 0, &(struct kr_event){.conn = 3}));
    cr_assert_eq(g.n, 1);
    cr_assert_not(kr_outbox_unpark(&ob));
    cr_assert_eq(g.n, 1);
    cr_assert_eq(kr_outbox_parked(&ob), 3);
    g.open[1] = true;
    cr_assert(kr_outbox_unpark(&ob));
    cr_assert_eq(g.n, 4);
    for (uint32_t i = 0; i < 4; i++)
        cr_assert_eq(g.log[i], i);
    kr_outbox_destroy(&ob, NULL, NULL);
}

static uint32_t released;
static void count_release(void *arg, uint32_t dest, struct kr_event *ev)
{
    (void)arg;
    (void)dest;
    cr_assert_eq(ev->conn, 100 + released);
    released++;
}

Test(outbox, clear_releases_in_order)
{
    struct gate g;
    memset(&g, 0, sizeof(g));
    struct kr_outbox_sink sink = {.ndest = NDEST, .send = gate_send, .arg = &g};
    struct kr_outbox ob = {.sink = &sink}; /* zeroed with a sink: a valid KR_OUTBOX_ALL */
    for (uint64_t i = 0; i < 100; i++)
        kr_outbox_push(&ob, (uint32_t)(i % NDEST), &(struct kr_event){.conn = 100 + i});
    released = 0;
    kr_outbox_clear(&ob, count_release, NULL);
    cr_assert_eq(released, 100);
    cr_assert_eq(kr_outbox_parked(&ob), 0);
    g.open[0] = true;
    cr_assert(kr_outbox_push(&ob, 0, &(struct kr_event){.conn = 7}), "usable after a clear");
    kr_outbox_destroy(&ob, NULL, NULL);
}

/* Random pushes, consumer pops, unparks and wakes against a model: per destination, what
 * the consumer receives is exactly what was pushed, in push order; the parked count is
 * what was pushed and is not yet in a ring; every destination that received something is
 * woken before the next batch ends, once. */
Test(outbox, randomized_against_model)
{
    for (int order = 0; order < 2; order++) {
        srand(12345 + order);
        struct fixture fx;
        setup(&fx, 8, order ? KR_OUTBOX_ALL : KR_OUTBOX_PER_DEST, true);
        uint64_t next_id = 0;
        uint64_t pushed[NDEST][2048], npushed[NDEST] = {0}, ngot[NDEST] = {0};
        uint64_t in_ring[NDEST] = {0}; /* pushed into a ring, not yet popped */
        uint64_t total_parks = 0;
        uint32_t wakes_before[NDEST] = {0};
        bool got_since_wake[NDEST] = {false};
        for (int step = 0; step < 20000; step++) {
            int op = rand() % 10;
            uint32_t d = (uint32_t)(rand() % NDEST);
            if (op < 5 && npushed[d] < 2048) {
                uint64_t id = next_id++;
                pushed[d][npushed[d]++] = id;
                uint32_t before = kr_outbox_parked(&fx.ob);
                bool now = kr_outbox_push(&fx.ob, d, &(struct kr_event){.type = 1, .conn = id});
                if (now) {
                    in_ring[d]++;
                    got_since_wake[d] = true;
                    cr_assert_eq(kr_outbox_parked(&fx.ob), before);
                } else {
                    total_parks++;
                    cr_assert_eq(kr_outbox_parked(&fx.ob), before + 1);
                }
            } else if (op < 8) {
                uint64_t n;
                int k = rand() % 4;
                while (k-- && pop_n(&fx, d, &n)) {
                    cr_assert(ngot[d] < npushed[d]);
                    cr_assert_eq(n, pushed[d][ngot[d]], "dest %u: got %llu, want %llu", d,
                                 (unsigned long long)n,
                                 (unsigned long long)pushed[d][ngot[d]]);
                    ngot[d]++;
                    in_ring[d]--;
                }
            } else if (op < 9) {
                uint64_t depth[NDEST];
                for (uint32_t k = 0; k < NDEST; k++)
                    depth[k] = kr_mailbox_depth(fx.mb[k]);
                kr_outbox_unpark(&fx.ob);
                for (uint32_t k = 0; k < NDEST; k++) {
                    uint64_t now = kr_mailbox_depth(fx.mb[k]);
                    if (now > depth[k]) {
                        in_ring[k] += now - depth[k];
                        got_since_wake[k] = true;
                    }
                }
            } else {
                kr_outbox_wake(&fx.ob);
                for (uint32_t k = 0; k < NDEST; k++) {
                    cr_assert_eq(fx.wakes[k], wakes_before[k] + (got_since_wake[k] ? 1 : 0));
                    wakes_before[k] = fx.wakes[k];
                    got_since_wake[k] = false;
                }
            }
            uint64_t parked = 0;
            for (uint32_t k = 0; k < NDEST; k++) {
                cr_assert_eq(kr_mailbox_depth(fx.mb[k]), in_ring[k]);
                parked += npushed[k] - ngot[k] - in_ring[k];
            }
            cr_assert_eq(kr_outbox_parked(&fx.ob), parked);
            cr_assert_eq(fx.parks, total_parks);
        }
        /* drain everything: nothing lost, nothing reordered */
        for (int rounds = 0; rounds < 100000; rounds++) {
            bool idle = kr_outbox_unpark(&fx.ob);
            for (uint32_t k = 0; k < NDEST; k++) {
                uint64_t n;
                while (pop_n(&fx, k, &n)) {
                    cr_assert_eq(n, pushed[k][ngot[k]]);
                    ngot[k]++;
                }
            }
            if (idle)
                break;
        }
        for (uint32_t k = 0; k < NDEST; k++)
            cr_assert_eq(ngot[k], npushed[k]);
        cr_assert_eq(kr_outbox_parked(&fx.ob), 0);
        teardown(&fx);
    }
}
