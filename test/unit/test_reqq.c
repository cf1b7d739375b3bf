/* Unit tests of the cross-thread request primitive (kr_reqq in queue/). */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "kr_queue.h"

struct owner {
    int value;      /* state only the owner thread touches */
    int served;
};

struct add_req {
    struct kr_req base;
    int add;
    int seen;       /* the owner's value after the add (the answer's payload) */
    int *released;  /* counts releases */
};

static int wakes;
static void count_wake(void *arg)
{
    (void)arg;
    __atomic_add_fetch(&wakes, 1, __ATOMIC_RELAXED);
}

static int add_run(struct kr_req *r, void *owner)
{
    struct add_req *a = (struct add_req *)r;
    struct owner *o = owner;
    o->value += a->add;
    o->served++;
    a->seen = o->value;
    return a->add;
}

static void add_release(struct kr_req *r)
{
    struct add_req *a = (struct add_req *)r;
    if (a->released)
        __atomic_add_fetch(a->released, 1, __ATOMIC_RELAXED);
    free(a);
}

static struct add_req *new_add(int add, int *released)
{
    struct add_req *a = calloc(1, sizeof(*a));
    a->base.run = add_run;
    a->base.release = add_release;
    a->add = add;
    a->released = released;
    return a;
}

/* An owner thread that serves its queue until told to stop. */
struct owner_thread {
    struct kr_reqq *q;
    struct owner o;
    int stop;
    pthread_t t;
};

static void *owner_main(void *arg)
{
    struct owner_thread *ot = arg;
    while (!__atomic_load_n(&ot->stop, __ATOMIC_ACQUIRE)) {
        kr_reqq_serve(ot->q, &ot->o);
        usleep(200);
    }
    kr_reqq_serve(ot->q, &ot->o);
    return NULL;
}

Test(reqq, served_in_order_on_the_owner_with_answers)
{
    struct owner_thread ot = {.q = kr_reqq_create(count_wake, NULL)};
    pthread_create(&ot.t, NULL, owner_main, &ot);
    for (int i = 1; i <= 50; i++) {
        struct add_req *a = new_add(i, NULL);
        int rc = kr_reqq_submit(ot.q, &a->base, 10000);
        cr_assert_eq(rc, i, "the answer is the run's return value");
        cr_assert_eq(a->seen, i * (i + 1) / 2, "requests run in order, each once");
        free(a);
    }
    __atomic_store_n(&ot.stop, 1, __ATOMIC_RELEASE);
    pthread_join(ot.t, NULL);
    cr_assert_eq(ot.o.served, 50);
    cr_assert_geq(wakes, 50, "every submit wakes the owner");
    kr_reqq_destroy(ot.q);
}

Test(reqq, serve_with_nothing_queued_runs_nothing)
{
    struct kr_reqq *q = kr_reqq_create(count_wake, NULL);
    struct owner o = {0};
    cr_assert_eq(kr_reqq_serve(q, &o), 0);
    cr_assert_eq(o.served, 0);
    kr_reqq_destroy(q);
}

Test(reqq, a_timed_out_request_is_released_by_the_owner_after_serving)
{
    struct kr_reqq *q = kr_reqq_create(count_wake, NULL);
    int released = 0;
    struct add_req *a = new_add(5, &released);
    cr_assert_eq(kr_reqq_submit(q, &a->base, 20), -ETIMEDOUT, "nobody served it");
    cr_assert_eq(released, 0, "still queued, not freed");
    struct owner o = {0};
    cr_assert_eq(kr_reqq_serve(q, &o), 1);
    cr_assert_eq(o.value, 5, "an abandoned request still runs (it may have side effects)");
    cr_assert_eq(released, 1, "and is released by the owner's side");
    kr_reqq_destroy(q);
}

Test(reqq, fire_and_forget_is_released_once_served)
{
    struct kr_reqq *q = kr_reqq_create(count_wake, NULL);
    int released = 0;
    for (int i = 0; i < 10; i++)
        cr_assert_eq(kr_reqq_submit(q, &new_add(1, &released)->base, -1), 0);
    cr_assert_eq(released, 0);
    struct owner o = {0};
    cr_assert_eq(kr_reqq_serve(q, &o), 10);
    cr_assert_eq(o.value, 10);
    cr_assert_eq(released, 10);
    kr_reqq_destroy(q);
}

Test(reqq, shutdown_answers_queued_requests_and_refuses_new_ones)
{
    struct kr_reqq *q = kr_reqq_create(count_wake, NULL);
    int released = 0;
    cr_assert_eq(kr_reqq_submit(q, &new_add(1, &released)->base, -1), 0);
    struct add_req *late = new_add(2, &released);
    cr_assert_eq(kr_reqq_submit(q, &late->base, 10), -ETIMEDOUT);
    kr_reqq_shutdown(q);
    cr_assert_eq(released, 2, "queued requests (fire-and-forget or abandoned) are released");
    struct add_req *a = new_add(3, &released);
    cr_assert_eq(kr_reqq_submit(q, &a->base, 1000), -ESHUTDOWN);
    cr_assert_eq(released, 2, "a refused waited-for request is the asker's again");
    free(a);
    cr_assert_eq(kr_reqq_submit(q, &new_add(4, &released)->base, -1), -ESHUTDOWN);
    cr_assert_eq(released, 3, "a refused fire-and-forget request is released");
    struct owner o = {0};
    cr_assert_eq(kr_reqq_serve(q, &o), 0, "nothing ran after the shutdown");
    cr_assert_eq(o.value, 0);
    kr_reqq_destroy(q);
}

/* A request the owner answers later (e.g. once a write completed). */
static struct kr_req *parked;
static int later_run(struct kr_req *r, void *owner)
{
    (void)owner;
    parked = r;
    return KR_REQ_LATER;
}

static void *complete_later(void *arg)
{
    struct kr_reqq *q = arg;
    struct owner o = {0};
    for (int i = 0; i < 5000 && !kr_reqq_serve(q, &o); i++)
        usleep(200);
    usleep(20000); /* the asker keeps waiting meanwhile */
    kr_reqq_complete(q, parked, 42);
    return NULL;
}

Test(reqq, an_answer_may_come_later)
{
    struct kr_reqq *q = kr_reqq_create(count_wake, NULL);
    struct kr_req *r = calloc(1, sizeof(*r));
    r->run = later_run;
    pthread_t t;
    pthread_create(&t, NULL, complete_later, q);
    cr_assert_eq(kr_reqq_submit(q, r, 10000), 42);
    pthread_join(t, NULL);
    free(r);
    kr_reqq_destroy(q);
}

/* Many askers at once, some giving up: every request runs exactly once and is freed once. */
struct asker {
    struct kr_reqq *q;
    int released;
    int answered;
    pthread_t t;
};

static void *asker_main(void *arg)
{
    struct asker *k = arg;
    for (int i = 0; i < 300; i++) {
        struct add_req *a = new_add(1, &k->released);
        int wait = i % 3 == 0 ? -1 : (i % 3 == 1 ? 0 : 10000);
        int rc = kr_reqq_submit(k->q, &a->base, wait);
        if (wait >= 0 && rc == 1) {
            k->answered++;
            free(a);
        } else if (wait >= 0) {
            cr_assert_eq(rc, -ETIMEDOUT);
        }
    }
    return NULL;
}

Test(reqq, concurrent_askers_each_request_runs_once)
{
    struct owner_thread ot = {.q = kr_reqq_create(count_wake, NULL)};
    pthread_create(&ot.t, NULL, owner_main, &ot);
    struct asker k[4];
    for (int i = 0; i < 4; i++) {
        k[i] = (struct asker){.q = ot.q};
        pthread_create(&k[i].t, NULL, asker_main, &k[i]);
    }
    int answered = 0, released = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(k[i].t, NULL);
        answered += k[i].answered;
    }
    __atomic_store_n(&ot.stop, 1, __ATOMIC_RELEASE);
    pthread_join(ot.t, NULL);
    for (int i = 0; i < 4; i++)
        released += __atomic_load_n(&k[i].released, __ATOMIC_RELAXED);
    cr_assert_eq(ot.o.served, 1200, "every request ran once");
    cr_assert_eq(ot.o.value, 1200);
    cr_assert_eq(answered + released, 1200, "every request freed once, by one side");
    cr_assert_geq(answered, 400, "those waited for long enough were answered");
    kr_reqq_destroy(ot.q);
}
