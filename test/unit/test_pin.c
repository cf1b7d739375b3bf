/* Unit tests of the shard CPU pins and their watch (router/kr_pin.h): a thread pins itself
 * to its CPU, pinning off pins nothing, and the watch moves nothing that sleeps or runs,
 * however long work waits (the watch is given its clock, so "long" costs no time here).
 * The stall itself, a runnable shard held off its CPU, is the integration test
 * test_pinning's. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

#include "kr_pin.h"

struct worker {
    struct kr_pin *pin;
    uint32_t shard;
    atomic_int pinned; /* 1 once kr_pin_self returned */
    atomic_int stop;
    int spin;          /* 1: spin until stop, 0: sleep until stop */
    cpu_set_t after;   /* its affinity after kr_pin_self */
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    kr_pin_self(w->pin, w->shard);
    sched_getaffinity(0, sizeof(w->after), &w->after);
    atomic_store(&w->pinned, 1);
    volatile unsigned long n = 0;
    while (!atomic_load(&w->stop)) {
        if (w->spin)
            n++;
        else
            usleep(1000);
    }
    return NULL;
}

static void run_worker(struct worker *w, pthread_t *th)
{
    cr_assert_eq(pthread_create(th, NULL, worker_main, w), 0);
    for (int i = 0; i < 5000 && !atomic_load(&w->pinned); i++)
        usleep(1000);
    cr_assert(atomic_load(&w->pinned));
}

static void end_worker(struct worker *w, pthread_t th)
{
    atomic_store(&w->stop, 1);
    pthread_join(th, NULL);
}

Test(pin, a_shard_pins_itself_to_the_nth_cpu)
{
    cpu_set_t all;
    cr_assert_eq(sched_getaffinity(0, sizeof(all), &all), 0);
    struct kr_pin *p = kr_pin_create(2, true);
    for (uint32_t s = 0; s < 2; s++) {
        struct worker w = {.pin = p, .shard = s};
        pthread_t th;
        run_worker(&w, &th);
        int cpu = kr_pin_cpu(p, s);
        cr_assert(cpu >= 0 && CPU_ISSET(cpu, &all), "shard %u on CPU %d", s, cpu);
        cr_assert_eq(CPU_COUNT(&w.after), 1);
        cr_assert(CPU_ISSET(cpu, &w.after));
        /* shard s gets the (s mod count)-th CPU the process may use */
        int nth = -1;
        for (int c = 0, seen = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &all) && seen++ == (int)(s % (uint32_t)CPU_COUNT(&all)))
                nth = c;
        cr_assert_eq(cpu, nth);
        end_worker(&w, th);
    }
    cr_assert_eq(kr_pin_cpu(p, 2), -1, "no such shard");
    kr_pin_destroy(p);
}

Test(pin, pinning_off_pins_nothing_and_watches_nothing)
{
    cpu_set_t all;
    cr_assert_eq(sched_getaffinity(0, sizeof(all), &all), 0);
    struct kr_pin *p = kr_pin_create(1, false);
    struct worker w = {.pin = p, .shard = 0, .spin = 0};
    pthread_t th;
    run_worker(&w, &th);
    cr_assert_eq(kr_pin_cpu(p, 0), -1);
    cr_assert(CPU_EQUAL(&w.after, &all), "affinity unchanged");
    for (uint64_t now = 1000; now < 1000 + 10 * KR_PIN_STALL_MS; now += 50)
        kr_pin_watch(p, 0, true, now);
    cr_assert_eq(kr_pin_stalls(p, 0), 0);
    end_worker(&w, th);
    kr_pin_destroy(p);
}

/* Work waits "for seconds" by the watch's clock while the shard sleeps: it is not runnable,
 * so it is not held off a CPU, and it is not moved. (A running shard's run time grows
 * between two looks; it is left out here: on a loaded machine a spinning thread can really be
 * held off its CPU, which is the case the watch is for.) */
Test(pin, a_sleeping_shard_is_not_moved)
{
    struct kr_pin *p = kr_pin_create(1, true);
    struct worker w = {.pin = p, .shard = 0, .spin = 0};
    pthread_t th;
    run_worker(&w, &th);
    int cpu = kr_pin_cpu(p, 0);
    cr_assert(cpu >= 0);
    uint64_t now = 1000;
    for (int i = 0; i < 40; i++, now += KR_PIN_STALL_MS) {
        usleep(5000);
        kr_pin_watch(p, 0, true, now);
    }
    cr_assert_eq(kr_pin_stalls(p, 0), 0, "a sleeping shard seen stalled");
    cpu_set_t now_set;
    cr_assert_eq(pthread_getaffinity_np(th, sizeof(now_set), &now_set), 0);
    cr_assert_eq(CPU_COUNT(&now_set), 1);
    cr_assert(CPU_ISSET(cpu, &now_set), "still on its CPU");
    end_worker(&w, th);
    kr_pin_destroy(p);
}
