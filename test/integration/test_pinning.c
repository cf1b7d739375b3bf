/* Integration test of the shard CPU watch: a shard pinned to a CPU that other work holds
 * is moved off it and keeps routing. The real server on an ephemeral loopback port, raw
 * bytes; the "other work" is a child process spinning at a real-time priority on the
 * shard's CPU (skipped where the machine has one CPU or the test may not use SCHED_FIFO;
 * the kernel's real-time throttling still leaves that CPU 5 % for everything else). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[65536];

/* The id of the server's thread named `name`, 0 if none. */
static int thread_named(pid_t pid, const char *name)
{
    char path[384], comm[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int found = 0;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%s/comm", (int)pid, e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof(comm), f) && strncmp(comm, name, strlen(name)) == 0 &&
            comm[strlen(name)] == '\n')
            found = atoi(e->d_name);
        fclose(f);
    }
    closedir(d);
    return found;
}

/* The thread's Cpus_allowed_list ("0", "1", "0-1", ...) into out. */
static void allowed_list(pid_t pid, int tid, char *out, size_t cap)
{
    char path[128], line[256];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/status", (int)pid, tid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    out[0] = 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "Cpus_allowed_list: %255s", out) == 1)
            break;
    fclose(f);
    cr_assert(out[0], "no Cpus_allowed_list in %s", path);
}

/* A child spinning on `cpu` at SCHED_FIFO priority 1 for at most `secs` seconds (it ends
 * by itself; the test kills it sooner). Returns its pid, or 0 when it may not run there
 * (the test is then skipped). */
static pid_t spin_on(int cpu, int secs)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        struct sched_param sp = {.sched_priority = 1};
        char ok = sched_setaffinity(0, sizeof(one), &one) == 0 &&
                          sched_setscheduler(0, SCHED_FIFO, &sp) == 0
                      ? 'Y'
                      : 'N';
        if (write(p[1], &ok, 1) != 1 || ok != 'Y')
            _exit(1);
        close(p[1]);
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        volatile unsigned long n = 0;
        do {
            for (int i = 0; i < 1000000; i++)
                n++;
            clock_gettime(CLOCK_MONOTONIC, &t);
        } while (t.tv_sec - t0.tv_sec < secs);
        _exit(0);
    }
    close(p[1]);
    char ok = 'N';
    ssize_t r = read(p[0], &ok, 1);
    close(p[0]);
    if (r != 1 || ok != 'Y') {
        waitpid(pid, NULL, 0);
        return 0;
    }
    return pid;
}

Test(pinning, a_shard_whose_cpu_is_taken_moves_off_it_and_keeps_routing, .timeout = 180)
{
    cpu_set_t mine;
    cr_assert_eq(sched_getaffinity(0, sizeof(mine), &mine), 0);
    if (CPU_COUNT(&mine) < 2)
        cr_skip_test("one CPU: a shard has nowhere to move");
    kr_it_fixture_start((const char *const[]){"--num_router_shards", "1", "--num_net_threads",
                                              "1", NULL});
    pid_t srv = kr_it_srv.pid;
    int tid = 0;
    for (int i = 0; i < 500 && !tid; i++) {
        tid = thread_named(srv, "kr-shard-0");
        if (!tid)
            kr_it_sleep_ms(10);
    }
    cr_assert(tid, "no kr-shard-0 thread");
    char before[256], after[256];
    for (int i = 0; i < 500; i++) { /* the shard pins itself as it starts */
        allowed_list(srv, tid, before, sizeof(before));
        if (!strchr(before, '-') && !strchr(before, ','))
            break;
        kr_it_sleep_ms(10);
    }
    cr_assert(!strchr(before, '-') && !strchr(before, ','), "shard not pinned: %s", before);
    int cpu = atoi(before);

    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "pin.t");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "shard_cpu_stalls"), 0);
    pid_t spinner = spin_on(cpu, 60);
    if (!spinner) {
        close(sub);
        close(pub);
        kr_it_fixture_stop();
        cr_skip_test("may not run a SCHED_FIFO spinner on CPU %d", cpu);
    }
    /* publish until the watch has moved the shard (each publish waits for the shard) */
    int sent = 0;
    unsigned long long stalls = 0;
    for (int i = 0; i < 600 && !stalls; i++) {
        char payload[32];
        int n = snprintf(payload, sizeof(payload), "m%d", sent);
        kr_it_publish(pub, "pin.t", payload, (size_t)n);
        sent++;
        stalls = kr_it_stat(kr_it_srv.port, "shard_cpu_stalls");
        if (!stalls)
            kr_it_sleep_ms(50);
    }
    allowed_list(srv, tid, after, sizeof(after));
    /* still spinning: everything below happened while the CPU was taken */
    cr_assert_eq(waitpid(spinner, NULL, WNOHANG), 0, "the spinner ended early");
    cr_assert_geq(stalls, 1, "the shard was never seen stalled (%d publishes)", sent);
    cr_assert(kr_it_log_contains(&kr_it_srv, "moved it to the other CPUs"));
    char own[16];
    snprintf(own, sizeof(own), "%d", cpu);
    cr_assert_str_neq(after, own, "still only on CPU %d", cpu);
    /* the shard goes on routing: a few more, and every message reaches the subscriber */
    for (int i = 0; i < 20; i++, sent++) {
        char payload[32];
        int n = snprintf(payload, sizeof(payload), "m%d", sent);
        kr_it_publish(pub, "pin.t", payload, (size_t)n);
    }
    size_t outlen = 0;
    size_t got = kr_it_collect(sub, (size_t)sent, buf, sizeof(buf), &outlen);
    cr_assert_eq(waitpid(spinner, NULL, WNOHANG), 0, "the spinner ended early");
    kill(spinner, SIGKILL);
    waitpid(spinner, NULL, 0);
    cr_assert_eq(got, (size_t)sent, "%zu of %d messages delivered", got, sent);
    close(sub);
    close(pub);
    kr_it_fixture_stop();
}
