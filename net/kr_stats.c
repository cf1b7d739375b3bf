/* The `stats` figures: per-thread counters summed, router figures, and the process figures
 * refreshed about once a second off the net threads. kr_server_stats: any thread registered
 * with urcu-memb; kr_server_refresh_stats: the control thread. */
#include "kr_net_int.h"

#include <ck_pr.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#ifdef KR_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

#ifdef KR_HAVE_JEMALLOC
static const char *const kr_je_stats[] = {"stats.allocated", "stats.active", "stats.resident",
                                          "stats.mapped"};
#endif

/* Sum every net thread's counters (relaxed loads). Any thread. */
static void kr_nt_stats_sum(struct kr_server *srv, struct kr_nt_stats *sum)
{
    memset(sum, 0, sizeof(*sum));
    for (uint32_t i = 0; i < srv->nnet; i++) {
        const struct kr_nt_stats *st = &srv->nts[i]->st;
#define KR_NT_SUM(name, kind, help) sum->name += ck_pr_load_64((uint64_t *)&st->name);
        KR_NT_COUNTERS(KR_NT_SUM)
#undef KR_NT_SUM
    }
}

static void kr_fig(kr_server_figure_cb cb, void *arg, const char *name, enum kr_figure_kind kind,
                   const char *help, uint64_t value)
{
    struct kr_figure f = {.name = name, .kind = kind, .help = help, .value = value};
    cb(arg, &f);
}

static void kr_fig_text(kr_server_figure_cb cb, void *arg, const char *name, const char *help,
                        const char *text)
{
    struct kr_figure f = {.name = name, .kind = KR_FIG_TEXT, .help = help, .text = text};
    cb(arg, &f);
}

void kr_server_figures(struct kr_server *srv, kr_server_figure_cb cb, void *arg)
{
    struct kr_net_live lv;
    kr_net_live(srv, &lv);
    struct kr_nt_stats sum;
    kr_nt_stats_sum(srv, &sum);
    sum.refused_connections += ck_pr_load_64(&srv->refused_elsewhere); /* the health port's */
    struct kr_router_stats rs;
    kr_router_stats(srv->router, &rs);
    time_t now = time(NULL);
    const enum kr_figure_kind C = KR_FIG_COUNTER, G = KR_FIG_GAUGE;
    /* the process (pid, rusage and allocator figures as of the last kr_server_refresh_stats,
     * at most a second old) */
    kr_fig(cb, arg, "pid", G, "process id", (uint64_t)ck_pr_load_int(&srv->pid));
    kr_fig(cb, arg, "uptime", C, "seconds since the server started", (uint64_t)(now - srv->started));
    kr_fig(cb, arg, "time", G, "the server's clock, Unix seconds", (uint64_t)now);
    kr_fig_text(cb, arg, "version", "the server's version", KR_VERSION);
    kr_fig(cb, arg, "pointer_size", G, "bits of a pointer", 8 * sizeof(void *));
#ifdef KR_HAVE_JEMALLOC
    kr_fig_text(cb, arg, "allocator", "the process allocator", "jemalloc");
    static const char *const names[] = {"jemalloc_allocated", "jemalloc_active",
                                        "jemalloc_resident", "jemalloc_mapped"};
    static const char *const helps[] = {"bytes allocated (jemalloc stats.allocated)",
                                        "bytes in active pages (stats.active)",
                                        "bytes resident (stats.resident)",
                                        "bytes mapped (stats.mapped)"};
    for (size_t i = 0; i < sizeof(kr_je_stats) / sizeof(kr_je_stats[0]); i++)
        kr_fig(cb, arg, names[i], G, helps[i], ck_pr_load_64(&srv->mem[i]));
#else
    kr_fig_text(cb, arg, "allocator", "the process allocator", "libc");
#endif
    struct kr_figure ru = {.name = "rusage_user", .kind = C, .micro = 1,
                           .help = "CPU seconds in user mode",
                           .value = ck_pr_load_64(&srv->ru_utime_us)};
    cb(arg, &ru);
    ru.name = "rusage_system";
    ru.help = "CPU seconds in the kernel";
    ru.value = ck_pr_load_64(&srv->ru_stime_us);
    cb(arg, &ru);
    /* where the threads' time went (kernel scheduler figures): on a CPU, or ready to run and
     * waiting for one; and the machine's steal time (a virtual machine's CPUs taken by its
     * host). A latency tail with waits growing and few long loop iterations is CPU
     * contention, not work */
    kr_fig(cb, arg, "net_threads_cpu_ms", C, "milliseconds the net threads ran on a CPU",
           ck_pr_load_64(&srv->sched_run_ns[0]) / 1000000u);
    kr_fig(cb, arg, "net_threads_wait_ms", C,
           "milliseconds the net threads were ready to run but waited for a CPU",
           ck_pr_load_64(&srv->sched_wait_ns[0]) / 1000000u);
    kr_fig(cb, arg, "shard_threads_cpu_ms", C, "milliseconds the shard threads ran on a CPU",
           ck_pr_load_64(&srv->sched_run_ns[1]) / 1000000u);
    kr_fig(cb, arg, "shard_threads_wait_ms", C,
           "milliseconds the shard threads were ready to run but waited for a CPU",
           ck_pr_load_64(&srv->sched_wait_ns[1]) / 1000000u);
    kr_fig(cb, arg, "cpu_steal_ms", C,
           "milliseconds the machine's virtual CPUs waited for their host (/proc/stat steal, all "
           "CPUs)",
           ck_pr_load_64(&srv->steal_ms));
    kr_fig(cb, arg, "max_connections", G, "max_tcp_clients", lv.max_tcp_clients);
    kr_fig(cb, arg, "threads", G, "net threads", srv->nnet);
    kr_fig(cb, arg, "router_shards", G, "router shard threads", kr_router_nshards(srv->router));
    /* the net threads' counters, summed */
#define KR_NT_FIG(name, kind, help) kr_fig(cb, arg, #name, KR_FIG_##kind, help, sum.name);
    KR_NT_COUNTERS(KR_NT_FIG)
#undef KR_NT_FIG
    /* the router's (KR_ROUTER_COUNTERS) */
#define KR_RT_FIG(name, kind, source, figure, help)                                               \
    if (figure[0])                                                                                \
        kr_fig(cb, arg, figure, KR_FIG_##kind, help, rs.name);
    KR_ROUTER_COUNTERS(KR_RT_FIG)
#undef KR_RT_FIG
    /* memory */
    kr_fig(cb, arg, "memory_used", G, "what max_memory bounds: queued, unsent and history bytes",
           kr_server_memory_used(srv, NULL));
    kr_fig(cb, arg, "max_memory", G, "the max_memory bound (0 = none)", lv.max_memory);
    kr_fig(cb, arg, "stats_refreshes", C, "refreshes of the process figures",
           ck_pr_load_64(&srv->stats_refreshes));
    /* the cluster link (zeros on a single node) */
    struct kr_cluster_stats cs;
    memset(&cs, 0, sizeof(cs));
    if (srv->cluster)
        kr_cluster_stats(srv->cluster, &cs);
    kr_fig(cb, arg, "cluster_enabled", G, "1 when this node is part of a cluster",
           srv->cluster != NULL);
    kr_fig(cb, arg, "cluster_connected", G, "1 while the cluster link is connected to a NATS server",
           cs.connected);
    if (srv->cluster) {
        kr_fig_text(cb, arg, "cluster_node", "this node's name in the cluster", cs.node);
        kr_fig_text(cb, arg, "cluster_server", "the NATS server the link is connected to",
                    cs.server[0] ? cs.server : "-");
    }
    /* ... and its counters (KR_CLUSTER_COUNTERS) */
#define KR_CL_FIG(n_, k_, us_, h_)                                                                \
    {                                                                                             \
        struct kr_figure f = {.name = "cluster_" #n_, .kind = KR_FIG_##k_, .micro = us_,         \
                              .help = h_, .value = cs.n_};                                        \
        cb(arg, &f);                                                                              \
    }
    KR_CLUSTER_COUNTERS(KR_CL_FIG)
#undef KR_CL_FIG
}

/* Add thread tid's time on a CPU and time waiting for one (ns) to *run and *wait. */
static void kr_sched_add(int tid, uint64_t *run, uint64_t *wait)
{
    if (tid <= 0)
        return;
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%d/schedstat", tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    unsigned long long r = 0, w = 0;
    if (fscanf(f, "%llu %llu", &r, &w) == 2) {
        *run += r;
        *wait += w;
    }
    fclose(f);
}

/* The machine's steal time in milliseconds (the `cpu` line of /proc/stat), 0 if unknown. */
static uint64_t kr_steal_ms(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return 0;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    return n == 8 && hz > 0 ? v[7] * 1000u / (uint64_t)hz : 0;
}

void kr_server_watch_shards(struct kr_server *srv)
{
    kr_router_watch(srv->router, kr_now_ms());
}

void kr_server_refresh_stats(struct kr_server *srv)
{
    uint64_t run[2] = {0, 0}, wait[2] = {0, 0};
    for (uint32_t i = 0; i < srv->nnet; i++)
        kr_sched_add(ck_pr_load_int(&srv->nts[i]->tid), &run[0], &wait[0]);
    for (uint32_t i = 0; i < kr_router_nshards(srv->router); i++)
        kr_sched_add(kr_router_shard_tid(srv->router, i), &run[1], &wait[1]);
    for (int k = 0; k < 2; k++) {
        ck_pr_store_64(&srv->sched_run_ns[k], run[k]);
        ck_pr_store_64(&srv->sched_wait_ns[k], wait[k]);
    }
    ck_pr_store_64(&srv->steal_ms, kr_steal_ms());
    ck_pr_store_int(&srv->pid, (int)getpid());
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        ck_pr_store_64(&srv->ru_utime_us,
                       (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec);
        ck_pr_store_64(&srv->ru_stime_us,
                       (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec);
    }
#ifdef KR_HAVE_JEMALLOC
    /* advancing the epoch merges every arena's statistics (it takes their locks) */
    uint64_t epoch = 1;
    size_t sz = sizeof(epoch);
    mallctl("epoch", &epoch, &sz, &epoch, sz);
    for (size_t i = 0; i < sizeof(kr_je_stats) / sizeof(kr_je_stats[0]); i++) {
        size_t v = 0;
        sz = sizeof(v);
        if (mallctl(kr_je_stats[i], &v, &sz, NULL, 0) == 0)
            ck_pr_store_64(&srv->mem[i], (uint64_t)v);
    }
#endif
    ck_pr_store_64(&srv->stats_refreshes, ck_pr_load_64(&srv->stats_refreshes) + 1);
}
