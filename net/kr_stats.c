/* The `stats` figures: per-thread counters summed, router figures, and the process figures
 * refreshed about once a second off the net threads. kr_server_stats: any thread registered
 * with urcu-memb; kr_server_refresh_stats: the control thread. */
#include "kr_net_int.h"

#include <arpa/inet.h>
#include <ck_pr.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <urcu/list.h>
#include <urcu/urcu-memb.h>
#include <uv.h>
#include <xxhash.h>
#ifdef KR_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

#ifdef KR_HAVE_JEMALLOC
static const char *const kr_je_stats[] = {"stats.allocated", "stats.active", "stats.resident",
                                          "stats.mapped"};
#endif

static void kr_stat_line(kr_server_emit_cb emit, void *arg, const char *fmt, ...);

static void kr_stat_line(kr_server_emit_cb emit, void *arg, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    /* most lines are "STAT <name> %llu": formatted without vsnprintf, which would cost
     * more than the rest of a stats request */
    size_t fl = strlen(fmt);
    if (fl > 5 && fl < sizeof(buf) - 24 && memcmp(fmt + fl - 5, " %llu", 5) == 0 &&
        !memchr(fmt, '%', fl - 4)) {
        unsigned long long v = va_arg(ap, unsigned long long);
        va_end(ap);
        memcpy(buf, fmt, fl - 4);
        emit(arg, buf, fl - 4 + kr_fmt_u64(buf + fl - 4, v));
        return;
    }
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0)
        emit(arg, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

void kr_server_stats(struct kr_server *srv, kr_server_emit_cb emit, void *arg)
{
    struct kr_net_live lv;
    kr_net_live(srv, &lv);
    struct kr_nt_stats sum;
    memset(&sum, 0, sizeof(sum));
    for (uint32_t i = 0; i < srv->nnet; i++) {
        uint64_t *dst = (uint64_t *)&sum;
        uint64_t *src = (uint64_t *)&srv->nts[i]->st;
        for (size_t k = 0; k < sizeof(sum) / sizeof(uint64_t); k++)
            dst[k] += ck_pr_load_64(&src[k]);
    }
    struct kr_router_stats rs;
    kr_router_stats(srv->router, &rs);
    time_t now = time(NULL);
#define S(name, fmt, val) kr_stat_line(emit, arg, "STAT " name " " fmt, val)
    S("pid", "%d", ck_pr_load_int(&srv->pid));
    S("uptime", "%lld", (long long)(now - srv->started));
    S("time", "%lld", (long long)now);
    S("version", "%s", KR_VERSION);
    S("pointer_size", "%d", (int)(8 * sizeof(void *)));
#ifdef KR_HAVE_JEMALLOC
    /* allocator figures as of the last kr_server_refresh_stats (at most a second old) */
    S("allocator", "%s", "jemalloc");
    for (size_t i = 0; i < sizeof(kr_je_stats) / sizeof(kr_je_stats[0]); i++)
        kr_stat_line(emit, arg, "STAT jemalloc_%s %llu", kr_je_stats[i] + 6,
                     (unsigned long long)ck_pr_load_64(&srv->mem[i]));
#else
    S("allocator", "%s", "libc");
#endif
    uint64_t ut = ck_pr_load_64(&srv->ru_utime_us), st = ck_pr_load_64(&srv->ru_stime_us);
    kr_stat_line(emit, arg, "STAT rusage_user %llu.%06llu", (unsigned long long)(ut / 1000000),
                 (unsigned long long)(ut % 1000000));
    kr_stat_line(emit, arg, "STAT rusage_system %llu.%06llu", (unsigned long long)(st / 1000000),
                 (unsigned long long)(st % 1000000));
    S("max_connections", "%u", lv.max_tcp_clients);
    S("curr_connections", "%llu", (unsigned long long)sum.curr_connections);
    S("total_connections", "%llu", (unsigned long long)sum.total_connections);
    S("rejected_connections", "%llu", (unsigned long long)sum.rejected_connections);
    S("accept_fd_exhausted", "%llu", (unsigned long long)sum.accept_fd_exhausted);
    S("refused_connections", "%llu",
      (unsigned long long)(sum.refused_connections + ck_pr_load_64(&srv->refused_elsewhere)));
    S("cmd_get", "%llu", (unsigned long long)sum.cmd_get);
    S("cmd_set", "%llu", (unsigned long long)sum.cmd_set);
    S("bytes_read", "%llu", (unsigned long long)sum.bytes_read);
    S("bytes_written", "%llu", (unsigned long long)sum.bytes_written);
    S("threads", "%u", srv->nnet);
    S("router_shards", "%u", kr_router_nshards(srv->router));
    S("subscribe_requests", "%llu", (unsigned long long)sum.subscribe_requests);
    S("unsubscribe_requests", "%llu", (unsigned long long)sum.unsubscribe_requests);
    S("publish_requests", "%llu", (unsigned long long)sum.publish_requests);
    S("messages_published", "%llu", (unsigned long long)sum.messages_published);
    S("messages_routed", "%llu", (unsigned long long)rs.messages_routed);
    S("deliveries", "%llu", (unsigned long long)rs.deliveries);
    S("messages_delivered", "%llu", (unsigned long long)sum.messages_delivered);
    S("polls_waited", "%llu", (unsigned long long)sum.polls_waited);
    S("queued_messages", "%llu", (unsigned long long)sum.queued_messages);
    S("queued_bytes", "%llu", (unsigned long long)sum.queued_bytes);
    S("queue_overflows", "%llu", (unsigned long long)sum.queue_overflows);
    S("memory_used", "%llu", (unsigned long long)kr_server_memory_used(srv, NULL));
    S("max_memory", "%llu", (unsigned long long)lv.max_memory);
    S("memory_overflows", "%llu", (unsigned long long)sum.memory_overflows);
    S("output_bytes", "%llu", (unsigned long long)sum.output_bytes);
    S("drain_errors", "%llu", (unsigned long long)sum.drain_errors);
    S("topics", "%llu", (unsigned long long)rs.topics);
    S("subscriptions", "%llu", (unsigned long long)rs.subscriptions);
    S("shard_overflow_events", "%llu", (unsigned long long)rs.overflow_events);
    S("ring_full_waits", "%llu", (unsigned long long)sum.ring_full_waits);
    S("fanout_warnings", "%llu", (unsigned long long)rs.fanout_warnings);
    S("publish_topic_warnings", "%llu", (unsigned long long)sum.publish_topic_warnings);
    S("register_requests", "%llu", (unsigned long long)sum.register_requests);
    S("retro_requests", "%llu", (unsigned long long)sum.retro_requests);
    S("retro_not_found", "%llu", (unsigned long long)sum.retro_not_found);
    S("retro_future_horizons", "%llu", (unsigned long long)sum.retro_future_horizons);
    S("messages_replayed", "%llu", (unsigned long long)sum.messages_replayed);
    S("history_messages", "%llu", (unsigned long long)rs.history_messages);
    S("history_bytes", "%llu", (unsigned long long)rs.history_bytes);
    S("protocol_errors", "%llu", (unsigned long long)sum.protocol_errors);
    S("idle_timeouts", "%llu", (unsigned long long)sum.idle_timeouts);
    S("request_timeouts", "%llu", (unsigned long long)sum.request_timeouts);
    S("stats_refreshes", "%llu", (unsigned long long)ck_pr_load_64(&srv->stats_refreshes));
#undef S
}

void kr_server_refresh_stats(struct kr_server *srv)
{
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
