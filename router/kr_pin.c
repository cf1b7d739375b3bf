/* Shard CPU pinning and the watch that moves a stalled shard off its CPU (kr_pin.h). */
#include "kr_pin.h"

#include <ck_pr.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kr_log.h"
#include "kr_util.h"

struct kr_pin_shard {
    /* written by the shard thread once (kr_pin_self), read by any thread */
    int tid;
    int cpu; /* its CPU, -1 when not pinned */
    uint64_t stalls; /* written by the watcher only */
    /* the watcher's own */
    uint64_t last_run_ns;  /* the thread's run time at the last look */
    uint64_t still_since;  /* since when work waited and the run time stood still (0: not) */
    uint64_t away_since;   /* when it was moved off its CPU (0: on it) */
};

struct kr_pin {
    bool enabled;
    uint32_t nshards;
    cpu_set_t allowed; /* the CPUs the process could use when the router was made */
    struct kr_log_ratelimit rl; /* the watcher's warnings */
    struct kr_pin_shard *s;
};

struct kr_pin *kr_pin_create(uint32_t nshards, bool enabled)
{
    struct kr_pin *p = kr_xcalloc(1, sizeof(*p));
    p->nshards = nshards;
    p->s = kr_xcalloc(nshards ? nshards : 1, sizeof(*p->s));
    for (uint32_t i = 0; i < nshards; i++)
        p->s[i].cpu = -1;
    p->enabled = enabled && sched_getaffinity(0, sizeof(p->allowed), &p->allowed) == 0 &&
                 CPU_COUNT(&p->allowed) > 0;
    return p;
}

void kr_pin_destroy(struct kr_pin *p)
{
    if (!p)
        return;
    free(p->s);
    free(p);
}

/* The n-th CPU of the set (n < its count). */
static int kr_pin_nth_cpu(const cpu_set_t *set, int n)
{
    for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, set) && seen++ == n)
            return cpu;
    return -1;
}

void kr_pin_self(struct kr_pin *p, uint32_t shard)
{
    struct kr_pin_shard *ps = &p->s[shard];
    ck_pr_store_int(&ps->tid, (int)syscall(SYS_gettid));
    if (!p->enabled)
        return;
    int cpu = kr_pin_nth_cpu(&p->allowed, (int)(shard % (uint32_t)CPU_COUNT(&p->allowed)));
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(0, sizeof(one), &one) != 0) {
        KR_WARN("shard %u: cannot pin to CPU %d: %s", shard, cpu, strerror(errno));
        return;
    }
    ck_pr_store_int(&ps->cpu, cpu);
}

/* What the kernel says of the thread: its time on a CPU in ns
 * (/proc/self/task/TID/schedstat), whether it is runnable now (state R in .../stat) and the
 * CPU it last ran on (the same file's 39th field). False when they cannot be read. */
static bool kr_pin_sample(int tid, uint64_t *run_ns, bool *runnable, int *last_cpu)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%d/schedstat", tid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    unsigned long long run = 0;
    int n = fscanf(f, "%llu", &run);
    fclose(f);
    if (n != 1)
        return false;
    snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
    f = fopen(path, "re");
    if (!f)
        return false;
    char buf[512];
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = 0;
    const char *p = strrchr(buf, ')'); /* the name may hold spaces or parentheses */
    if (!p || p[1] != ' ' || !p[2])
        return false;
    *runnable = p[2] == 'R';
    /* fields 3.. follow the name: skip to the 39th */
    for (int field = 3; field <= 39; field++) { /* p: the space before `field` */
        p = strchr(p + 1, ' ');
        if (!p)
            return false;
    }
    *last_cpu = atoi(p + 1);
    *run_ns = run;
    return true;
}

/* Allow the thread the CPUs of `set`; 0 or -errno. */
static int kr_pin_set(int tid, const cpu_set_t *set)
{
    return sched_setaffinity(tid, sizeof(*set), set) == 0 ? 0 : -errno;
}

void kr_pin_watch(struct kr_pin *p, uint32_t shard, bool waiting, uint64_t now_ms)
{
    struct kr_pin_shard *ps = &p->s[shard];
    int cpu = ck_pr_load_int(&ps->cpu), tid = ck_pr_load_int(&ps->tid);
    if (!p->enabled || cpu < 0 || tid <= 0 || CPU_COUNT(&p->allowed) < 2)
        return;
    if (ps->away_since && now_ms - ps->away_since >= KR_PIN_AWAY_MS) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        if (kr_pin_set(tid, &one) == 0) {
            ps->away_since = 0;
            ps->still_since = 0;
            KR_INFO("shard %u: pinned back to CPU %d", shard, cpu);
        }
        return;
    }
    if (!waiting) {
        ps->still_since = 0;
        return;
    }
    uint64_t run = 0;
    bool runnable = false;
    int on = -1;
    if (!kr_pin_sample(tid, &run, &runnable, &on) || !runnable) {
        ps->still_since = 0; /* sleeping or blocked: not held off a CPU */
        return;
    }
    if (run != ps->last_run_ns || !ps->still_since) {
        ps->last_run_ns = run;
        ps->still_since = now_ms ? now_ms : 1;
        return;
    }
    uint64_t still = now_ms - ps->still_since;
    if (still < KR_PIN_STALL_MS)
        return;
    /* runnable work and no run time for a while: the CPU it waits on is held by other work.
     * Allow it every other CPU (away already: every CPU but the one it waits on now). */
    cpu_set_t others = p->allowed;
    if (on >= 0 && on < CPU_SETSIZE && CPU_ISSET(on, &others))
        CPU_CLR(on, &others);
    else
        CPU_CLR(cpu, &others);
    int rc = CPU_COUNT(&others) ? kr_pin_set(tid, &others) : -EINVAL;
    ck_pr_store_64(&ps->stalls, ps->stalls + 1);
    ps->still_since = 0;
    if (rc == 0)
        ps->away_since = now_ms ? now_ms : 1;
    uint64_t suppressed = 0;
    if (!kr_log_ratelimit_at(&p->rl, 10, 60000, now_ms, &suppressed))
        return;
    char note[64];
    const char *tail = kr_log_suppressed_note(suppressed, note, sizeof(note));
    if (rc == 0)
        KR_WARN("shard %u (pinned to CPU %d): work waited %llu ms while it got no time on CPU %d "
                "(other work holds that CPU); moved it to the other CPUs for %u s%s",
                shard, cpu, (unsigned long long)still, on, KR_PIN_AWAY_MS / 1000, tail);
    else
        KR_WARN("shard %u (pinned to CPU %d): work waited %llu ms while it got no time on CPU %d, "
                "and it cannot be moved: %s%s",
                shard, cpu, (unsigned long long)still, on, strerror(-rc), tail);
}

uint64_t kr_pin_stalls(const struct kr_pin *p, uint32_t shard)
{
    return shard < p->nshards ? ck_pr_load_64((uint64_t *)&p->s[shard].stalls) : 0;
}

int kr_pin_cpu(const struct kr_pin *p, uint32_t shard)
{
    return shard < p->nshards ? ck_pr_load_int((int *)&p->s[shard].cpu) : -1;
}
