/* Admin module: the HTTP monitoring listener (kr_http.h), libmicrohttpd driven from a
 * thread of ours (MHD's external-poll mode over its epoll descriptor), so that the thread
 * can be registered with urcu-memb (the figures read the live configuration; /api/topics
 * walks the topic tables under RCU) and so that the blocking connection listings of the
 * net threads (kr_server_list_conns) run here, never on a net thread or the control loop.
 * Requests are served one at a time: a monitoring listener needs no concurrency, and one
 * thread bounds what it can cost the server. */
#include "kr_http.h"
#include "kr_cluster.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <urcu/urcu-memb.h>

#include "kr_acl.h"
#include "kr_http_page.h"
#include "kr_log.h"
#include "kr_router.h"

#define KR_HTTP_LIST_BATCH 256   /* connections asked of a net thread at a time */
#define KR_HTTP_LIST_WAIT_MS 2000 /* answer time allowed to a net thread */
#define KR_HTTP_TOPIC_SHOWN 200  /* bytes of a topic name an answer shows */

struct kr_http {
    struct kr_server *srv;
    const struct kr_cfg *cfg;
    struct MHD_Daemon *d;
    int lfd;     /* the listening socket, served by MHD */
    int wakefd;  /* eventfd: kr_http_stop wakes the thread */
    uint16_t port;
    pthread_t thread;
    atomic_bool stop;
    struct kr_log_ratelimit rl_refused; /* HTTP thread */
};

/* ---------------------------------------------------------------- a growable buffer */

struct kr_sb {
    char *p;
    size_t len, cap;
};

static void kr_sb_reserve(struct kr_sb *b, size_t n)
{
    KR_GROW_MIN(b->p, b->cap, b->len + n + 1, 4096);
}

static void kr_sb_add(struct kr_sb *b, const char *s, size_t n)
{
    kr_sb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

__attribute__((format(printf, 2, 3))) static void kr_sb_printf(struct kr_sb *b, const char *fmt,
                                                               ...)
{
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n > 0) {
        kr_sb_reserve(b, (size_t)n);
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap2);
        b->len += (size_t)n;
    }
    va_end(ap2);
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 when it is not one. */
static size_t kr_utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2;
        cp = s[0] & 0x1fu;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3;
        cp = s[0] & 0x0fu;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4;
        cp = s[0] & 0x07u;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

/* A JSON string: valid UTF-8 passes, other bytes (topics are any bytes) become \u00XX, so the
 * answer is always valid JSON. */
static void kr_sb_json_str(struct kr_sb *b, const char *s, size_t n)
{
    kr_sb_add(b, "\"", 1);
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            kr_sb_add(b, e, 2);
            i++;
        } else if (c >= 0x20 && c < 0x7f) {
            kr_sb_add(b, (const char *)&u[i], 1);
            i++;
        } else if (c >= 0x80 && kr_utf8_len(u + i, n - i)) {
            size_t l = kr_utf8_len(u + i, n - i);
            kr_sb_add(b, (const char *)&u[i], l);
            i += l;
        } else {
            kr_sb_printf(b, "\\u%04x", c);
            i++;
        }
    }
    kr_sb_add(b, "\"", 1);
}

static void kr_sb_json_cstr(struct kr_sb *b, const char *s)
{
    kr_sb_json_str(b, s, strlen(s));
}

/* A figure's value as a number: seconds with six decimals for the rusage figures. */
static void kr_sb_fig_value(struct kr_sb *b, const struct kr_figure *f)
{
    if (f->micro)
        kr_sb_printf(b, "%" PRIu64 ".%06" PRIu64, f->value / 1000000, f->value % 1000000);
    else
        kr_sb_printf(b, "%" PRIu64, f->value);
}

/* ---------------------------------------------------------------- connections */

/* Visit every client connection of every net thread (batches copied by each net thread).
 * Returns the number visited, or -errno when a net thread did not answer. */
typedef void (*kr_http_conn_cb)(void *arg, const struct kr_net_conn_info *ci);
static int64_t kr_http_each_conn(struct kr_server *srv, kr_http_conn_cb cb, void *arg)
{
    struct kr_net_conn_info *batch = kr_xmalloc(KR_HTTP_LIST_BATCH * sizeof(*batch));
    int64_t total = 0;
    int rc = 0;
    for (uint32_t n = 0; n < kr_server_nnet(srv) && rc >= 0; n++) {
        uint32_t cursor = 0;
        for (;;) {
            rc = kr_server_list_conns(srv, n, &cursor, batch, KR_HTTP_LIST_BATCH,
                                      KR_HTTP_LIST_WAIT_MS);
            if (rc <= 0)
                break;
            for (int i = 0; i < rc; i++)
                cb(arg, &batch[i]);
            total += rc;
        }
    }
    free(batch);
    return rc < 0 ? rc : total;
}

enum kr_http_sort { KR_SORT_QUEUED_BYTES, KR_SORT_QUEUED_MESSAGES, KR_SORT_AGE, KR_SORT_ID };
static const char *const kr_http_sort_names[] = {"queued_bytes", "queued_messages", "age", "id"};

/* Whether a ranks before b in the order asked for (ties: lower id first). */
static bool kr_http_conn_before(enum kr_http_sort s, const struct kr_net_conn_info *a,
                                const struct kr_net_conn_info *b)
{
    switch (s) {
    case KR_SORT_QUEUED_BYTES:
        if (a->queued_bytes != b->queued_bytes)
            return a->queued_bytes > b->queued_bytes;
        break;
    case KR_SORT_QUEUED_MESSAGES:
        if (a->queued_messages != b->queued_messages)
            return a->queued_messages > b->queued_messages;
        break;
    case KR_SORT_AGE:
        if (a->age_ms != b->age_ms)
            return a->age_ms > b->age_ms;
        break;
    case KR_SORT_ID:
        break;
    }
    return a->id < b->id;
}

/* The first k connections in the order asked for, kept in a bounded heap whose root is the
 * last of them (the one a better connection replaces): memory O(k), not O(connections). */
struct kr_conn_top {
    enum kr_http_sort sort;
    struct kr_net_conn_info *v;
    size_t n, k;
    uint64_t queued_bytes, queued_messages; /* over every connection seen */
};

static void kr_conn_top_sift_down(struct kr_conn_top *t, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        /* the root is the worst kept: a parent ranks after its children */
        if (l < t->n && kr_http_conn_before(t->sort, &t->v[w], &t->v[l]))
            w = l;
        if (r < t->n && kr_http_conn_before(t->sort, &t->v[w], &t->v[r]))
            w = r;
        if (w == i)
            return;
        struct kr_net_conn_info tmp = t->v[i];
        t->v[i] = t->v[w];
        t->v[w] = tmp;
        i = w;
    }
}

static void kr_conn_top_add(void *arg, const struct kr_net_conn_info *ci)
{
    struct kr_conn_top *t = arg;
    t->queued_bytes += ci->queued_bytes;
    t->queued_messages += ci->queued_messages;
    if (t->k == 0)
        return;
    if (t->n < t->k) {
        size_t i = t->n++;
        t->v[i] = *ci;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!kr_http_conn_before(t->sort, &t->v[p], &t->v[i]))
                break;
            struct kr_net_conn_info tmp = t->v[i];
            t->v[i] = t->v[p];
            t->v[p] = tmp;
            i = p;
        }
    } else if (kr_http_conn_before(t->sort, ci, &t->v[0])) {
        t->v[0] = *ci;
        kr_conn_top_sift_down(t, 0);
    }
}

static _Thread_local enum kr_http_sort kr_http_qsort_by;
static int kr_http_conn_cmp(const void *a, const void *b)
{
    return kr_http_conn_before(kr_http_qsort_by, a, b) ? -1
           : kr_http_conn_before(kr_http_qsort_by, b, a) ? 1
                                                          : 0;
}

/* ---------------------------------------------------------------- queue distributions */

/* Bucket bounds of the /metrics distributions of the clients' queues at scrape time. */
static const uint64_t kr_qbytes_le[] = {0, 1024, 16384, 262144, 1048576, 16777216, 67108864};
static const uint64_t kr_qmsgs_le[] = {0, 1, 10, 100, 1000, 10000, 100000};
#define KR_QB_N (sizeof(kr_qbytes_le) / sizeof(kr_qbytes_le[0]))
#define KR_QM_N (sizeof(kr_qmsgs_le) / sizeof(kr_qmsgs_le[0]))

struct kr_qdist {
    uint64_t bytes[KR_QB_N + 1], msgs[KR_QM_N + 1]; /* per bucket (not cumulative), +Inf last */
    uint64_t bytes_sum, msgs_sum, count;
};

static void kr_qdist_add(void *arg, const struct kr_net_conn_info *ci)
{
    struct kr_qdist *q = arg;
    size_t i = 0;
    while (i < KR_QB_N && ci->queued_bytes > kr_qbytes_le[i])
        i++;
    q->bytes[i]++;
    for (i = 0; i < KR_QM_N && ci->queued_messages > kr_qmsgs_le[i];)
        i++;
    q->msgs[i]++;
    q->bytes_sum += ci->queued_bytes;
    q->msgs_sum += ci->queued_messages;
    q->count++;
}

static void kr_prom_hist(struct kr_sb *b, const char *name, const char *help, const uint64_t *le,
                         size_t nle, const uint64_t *per, uint64_t sum, uint64_t count)
{
    kr_sb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (size_t i = 0; i < nle; i++) {
        cum += per[i];
        kr_sb_printf(b, "%s_bucket{le=\"%" PRIu64 "\"} %" PRIu64 "\n", name, le[i], cum);
    }
    cum += per[nle];
    kr_sb_printf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %" PRIu64 "\n%s_count %" PRIu64
                    "\n",
                 name, cum, name, sum, name, count);
}

/* ---------------------------------------------------------------- /metrics */

static bool kr_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

void kr_http_metric_name(const struct kr_figure *f, char *buf, size_t cap)
{
    const char *n = f->name;
    const char *unit = "";
    /* times: the rusage figures (seconds with a fraction), uptime and the clock */
    if (f->micro || strcmp(n, "uptime") == 0 || strcmp(n, "time") == 0)
        unit = "_seconds";
    /* memory sizes (gauges) whose name does not say bytes already */
    else if (f->kind == KR_FIG_GAUGE && !strstr(n, "bytes") &&
             (strncmp(n, "jemalloc_", 9) == 0 || strstr(n, "memory") != NULL))
        unit = "_bytes";
    const char *total = f->kind == KR_FIG_COUNTER && !kr_ends_with(n, "_total") ? "_total" : "";
    snprintf(buf, cap, "kraken_%s%s%s", n, unit, total);
}

struct kr_prom {
    struct kr_sb *b;
    struct kr_sb info; /* the text figures, as labels of kraken_build_info */
};

static void kr_prom_help(struct kr_sb *b, const char *help)
{
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            kr_sb_add(b, "\\\\", 2);
        else if (*p == '\n')
            kr_sb_add(b, "\\n", 2);
        else
            kr_sb_add(b, p, 1);
    }
}

static void kr_prom_fig(void *arg, const struct kr_figure *f)
{
    struct kr_prom *pr = arg;
    if (f->kind == KR_FIG_TEXT) {
        kr_sb_printf(&pr->info, "%s%s=\"", pr->info.len ? "," : "", f->name);
        for (const char *p = f->text; *p; p++) {
            if (*p == '\\' || *p == '"')
                kr_sb_add(&pr->info, "\\", 1);
            if (*p == '\n')
                kr_sb_add(&pr->info, "\\n", 2);
            else
                kr_sb_add(&pr->info, p, 1);
        }
        kr_sb_add(&pr->info, "\"", 1);
        return;
    }
    char name[128];
    kr_http_metric_name(f, name, sizeof(name));
    kr_sb_printf(pr->b, "# HELP %s ", name);
    kr_prom_help(pr->b, f->help);
    kr_sb_printf(pr->b, " (stats: %s)\n# TYPE %s %s\n%s ", f->name, name,
                 f->kind == KR_FIG_COUNTER ? "counter" : "gauge", name);
    kr_sb_fig_value(pr->b, f);
    kr_sb_add(pr->b, "\n", 1);
}

/* Descriptors open and the limit, for the "near the fd limit" alert. The directory is
 * opened with open() and fdopendir(), not opendir(): the number it gets is often one a net
 * thread just closed, and ThreadSanitizer (which does not see libuv's raw close syscall,
 * nor a descriptor opendir creates) reported the closedir as a race with the net thread's
 * last read of that number; open() tells it the descriptor is a new one. */
static void kr_http_fds(uint64_t *open_fds, uint64_t *max_fds)
{
    *open_fds = 0;
    int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (d) {
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.')
                (*open_fds)++;
        closedir(d);
        (*open_fds)--; /* the one the directory stream holds */
    } else if (dfd >= 0) {
        close(dfd);
    }
    struct rlimit rl;
    *max_fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (uint64_t)rl.rlim_cur : 0;
}

static void kr_http_metrics(struct kr_http *h, struct kr_sb *b)
{
    struct kr_prom pr = {.b = b};
    kr_server_figures(h->srv, kr_prom_fig, &pr);
    kr_sb_printf(b, "# HELP kraken_build_info the server's version and allocator\n"
                    "# TYPE kraken_build_info gauge\nkraken_build_info{%s} 1\n",
                 pr.info.p ? pr.info.p : "");
    free(pr.info.p);
    kr_sb_printf(b, "# HELP kraken_draining 1 once a drain began (SIGTERM, admin drain)\n"
                    "# TYPE kraken_draining gauge\nkraken_draining %d\n",
                 kr_server_draining(h->srv) ? 1 : 0);
    uint64_t ofd, mfd;
    kr_http_fds(&ofd, &mfd);
    kr_sb_printf(b, "# HELP process_open_fds open file descriptors\n# TYPE process_open_fds gauge\n"
                    "process_open_fds %" PRIu64 "\n"
                    "# HELP process_max_fds the open-file limit (RLIMIT_NOFILE)\n"
                    "# TYPE process_max_fds gauge\nprocess_max_fds %" PRIu64 "\n",
                 ofd, mfd);
    struct kr_qdist q;
    memset(&q, 0, sizeof(q));
    int64_t rc = kr_http_each_conn(h->srv, kr_qdist_add, &q);
    kr_sb_printf(b, "# HELP kraken_scrape_connections_complete 1 when every net thread listed "
                    "its connections for the distributions below\n"
                    "# TYPE kraken_scrape_connections_complete gauge\n"
                    "kraken_scrape_connections_complete %d\n",
                 rc >= 0 ? 1 : 0);
    kr_prom_hist(b, "kraken_client_queue_bytes",
                 "reply bytes queued per open client connection, at scrape time", kr_qbytes_le,
                 KR_QB_N, q.bytes, q.bytes_sum, q.count);
    kr_prom_hist(b, "kraken_client_queue_messages",
                 "entries queued per open client connection, at scrape time", kr_qmsgs_le, KR_QM_N,
                 q.msgs, q.msgs_sum, q.count);
}

/* ---------------------------------------------------------------- /api/server */

struct kr_json_figs {
    struct kr_sb *b;
    bool first;
};

static void kr_json_fig(void *arg, const struct kr_figure *f)
{
    struct kr_json_figs *j = arg;
    if (!j->first)
        kr_sb_add(j->b, ",", 1);
    j->first = false;
    kr_sb_json_cstr(j->b, f->name);
    kr_sb_add(j->b, ":", 1);
    if (f->kind == KR_FIG_TEXT)
        kr_sb_json_cstr(j->b, f->text);
    else
        kr_sb_fig_value(j->b, f);
}

static void kr_http_api_server(struct kr_http *h, struct kr_sb *b)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    kr_sb_printf(b,
                 "{\"version\":\"%s\",\"uptime_seconds\":%" PRIu64 ",\"time_ms\":%" PRIu64
                 ",\"state\":\"%s\",\"draining\":%s,\"clients\":%" PRIu64
                 ",\"net_threads\":%u,\"router_shards\":%u,\"port\":%u,\"resp_port\":%u"
                 ",\"figures\":{",
                 KR_VERSION, kr_server_uptime(h->srv),
                 (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u,
                 kr_server_draining(h->srv) ? "draining" : "serving",
                 kr_server_draining(h->srv) ? "true" : "false", kr_server_clients(h->srv),
                 kr_server_nnet(h->srv), kr_router_nshards(kr_server_router(h->srv)),
                 kr_server_port(h->srv), kr_server_resp_port(h->srv));
    struct kr_json_figs j = {.b = b, .first = true};
    kr_server_figures(h->srv, kr_json_fig, &j);
    kr_sb_add(b, "},\"fanout_warnings\":[", 21);
    struct kr_net_warning w[KR_NET_WARNINGS];
    uint32_t n = kr_server_recent_warnings(h->srv, w, KR_NET_WARNINGS);
    for (uint32_t i = 0; i < n; i++) {
        kr_sb_printf(b, "%s{\"time_ms\":%" PRIu64 ",\"publisher\":%" PRIu64 ",\"peer\":",
                     i ? "," : "", w[i].time_ms, w[i].publisher);
        kr_sb_json_cstr(b, w[i].peer);
        kr_sb_printf(b, ",\"fanout\":%u,\"topics\":%u,\"first_topics\":", w[i].fanout,
                     w[i].ntopics);
        kr_sb_json_cstr(b, w[i].topics);
        kr_sb_printf(b, ",\"suppressed\":%" PRIu64 "}", w[i].suppressed);
    }
    /* the cluster link: null on a single node */
    struct kr_cluster_stats cs;
    if (!kr_server_cluster(h->srv, &cs)) {
        kr_sb_add(b, "],\"cluster\":null}\n", 18);
        return;
    }
    kr_sb_printf(b, "],\"cluster\":{\"node\":");
    kr_sb_json_cstr(b, cs.node);
    kr_sb_printf(b, ",\"linked\":%s,\"server\":", cs.connected ? "true" : "false");
    kr_sb_json_cstr(b, cs.server);
    kr_sb_printf(b,
                 ",\"peers\":%" PRIu64 ",\"subjects\":%" PRIu64 ",\"reconnects\":%" PRIu64
                 ",\"msgs_out\":%" PRIu64 ",\"msgs_in\":%" PRIu64 ",\"duplicates\":%" PRIu64
                 ",\"lost_forwards\":%" PRIu64 ",\"resyncs_sent\":%" PRIu64
                 ",\"resyncs_received\":%" PRIu64 "}}\n",
                 cs.peers, cs.subjects, cs.reconnects, cs.msgs_out, cs.msgs_in, cs.duplicates,
                 cs.lost_forwards, cs.resyncs_sent, cs.resyncs_received);
}

/* ---------------------------------------------------------------- query arguments */

/* An unsigned query argument: 0 (absent: def), 1 (set), -1 (not a number or out of range). */
static int kr_http_arg_u64(struct MHD_Connection *c, const char *key, uint64_t def, uint64_t max,
                           uint64_t *out)
{
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, key);
    *out = def;
    if (!v)
        return 0;
    if (!*v || strlen(v) > 19 || strspn(v, "0123456789") != strlen(v))
        return -1;
    uint64_t x = strtoull(v, NULL, 10);
    if (x > max)
        return -1;
    *out = x;
    return 1;
}

/* ---------------------------------------------------------------- /api/connections */

static int kr_http_api_conns(struct kr_http *h, struct MHD_Connection *c, struct kr_sb *b)
{
    uint64_t offset, limit;
    if (kr_http_arg_u64(c, "offset", 0, KR_HTTP_OFFSET_MAX, &offset) < 0 ||
        kr_http_arg_u64(c, "limit", 50, KR_HTTP_PAGE_MAX, &limit) < 0) {
        kr_sb_printf(b, "{\"error\":\"offset must be 0..%d, limit 0..%d\"}\n", KR_HTTP_OFFSET_MAX,
                     KR_HTTP_PAGE_MAX);
        return MHD_HTTP_BAD_REQUEST;
    }
    const char *sort = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "sort");
    enum kr_http_sort s = KR_SORT_QUEUED_BYTES;
    if (sort) {
        size_t i = 0;
        while (i < 4 && strcmp(sort, kr_http_sort_names[i]) != 0)
            i++;
        if (i == 4) {
            kr_sb_add(b, "{\"error\":\"sort must be queued_bytes, queued_messages, age or id\"}\n",
                      strlen("{\"error\":\"sort must be queued_bytes, queued_messages, age or id\"}\n"));
            return MHD_HTTP_BAD_REQUEST;
        }
        s = (enum kr_http_sort)i;
    }
    struct kr_conn_top t = {.sort = s, .k = (size_t)(offset + limit)};
    t.v = t.k ? kr_xmalloc(t.k * sizeof(*t.v)) : NULL;
    int64_t total = kr_http_each_conn(h->srv, kr_conn_top_add, &t);
    if (total < 0) {
        free(t.v);
        kr_sb_printf(b, "{\"error\":\"a net thread did not answer: %s\"}\n", strerror((int)-total));
        return MHD_HTTP_SERVICE_UNAVAILABLE;
    }
    kr_http_qsort_by = s;
    qsort(t.v, t.n, sizeof(*t.v), kr_http_conn_cmp);
    kr_sb_printf(b,
                 "{\"total\":%" PRId64 ",\"offset\":%" PRIu64 ",\"limit\":%" PRIu64
                 ",\"sort\":\"%s\",\"queued_bytes\":%" PRIu64 ",\"queued_messages\":%" PRIu64
                 ",\"connections\":[",
                 total, offset, limit, kr_http_sort_names[s], t.queued_bytes, t.queued_messages);
    for (size_t i = (size_t)offset; i < t.n; i++) {
        const struct kr_net_conn_info *ci = &t.v[i];
        /* id_str too: ids use all 64 bits, more than a JavaScript number holds exactly */
        kr_sb_printf(b, "%s{\"id\":%" PRIu64 ",\"id_str\":\"%" PRIu64 "\",\"peer\":",
                     i > offset ? "," : "", ci->id, ci->id);
        kr_sb_json_cstr(b, ci->peer);
        kr_sb_printf(b,
                     ",\"queued_messages\":%u,\"queued_bytes\":%" PRIu64 ",\"age_ms\":%" PRIu64
                     ",\"since_poll_ms\":%" PRId64 ",\"idle_ms\":%" PRIu64 ",\"mem\":%" PRIu64 "}",
                     ci->queued_messages, ci->queued_bytes, ci->age_ms, ci->since_poll_ms,
                     ci->idle_ms, ci->mem);
    }
    kr_sb_add(b, "]}\n", 3);
    free(t.v);
    return MHD_HTTP_OK;
}

/* ---------------------------------------------------------------- /api/topics */

struct kr_topic_row {
    uint32_t nsubs, len; /* len: the topic's full length */
    char name[KR_HTTP_TOPIC_SHOWN];
};

/* The top k topics by subscribers: a min-heap on nsubs (the root is the smallest kept). */
struct kr_topic_top {
    struct kr_topic_row *v;
    size_t n, k;
    uint64_t walked;
};

static void kr_topic_swap(struct kr_topic_row *a, struct kr_topic_row *b)
{
    struct kr_topic_row t = *a;
    *a = *b;
    *b = t;
}

static void kr_topic_set(struct kr_topic_row *r, const char *topic, uint32_t len, uint32_t nsubs)
{
    r->nsubs = nsubs;
    r->len = len;
    memcpy(r->name, topic, len < KR_HTTP_TOPIC_SHOWN ? len : KR_HTTP_TOPIC_SHOWN);
}

static int kr_topic_top_add(void *arg, const char *topic, uint32_t len, uint32_t nsubs)
{
    struct kr_topic_top *t = arg;
    t->walked++;
    if (t->k == 0)
        return 0;
    if (t->n < t->k) {
        size_t i = t->n++;
        kr_topic_set(&t->v[i], topic, len, nsubs);
        while (i > 0 && t->v[(i - 1) / 2].nsubs > t->v[i].nsubs) {
            kr_topic_swap(&t->v[i], &t->v[(i - 1) / 2]);
            i = (i - 1) / 2;
        }
    } else if (nsubs > t->v[0].nsubs) {
        kr_topic_set(&t->v[0], topic, len, nsubs);
        for (size_t i = 0;;) {
            size_t l = 2 * i + 1, r = l + 1, m = i;
            if (l < t->n && t->v[l].nsubs < t->v[m].nsubs)
                m = l;
            if (r < t->n && t->v[r].nsubs < t->v[m].nsubs)
                m = r;
            if (m == i)
                break;
            kr_topic_swap(&t->v[i], &t->v[m]);
            i = m;
        }
    }
    return 0;
}

static int kr_topic_cmp(const void *a, const void *b)
{
    const struct kr_topic_row *x = a, *y = b;
    if (x->nsubs != y->nsubs)
        return x->nsubs > y->nsubs ? -1 : 1;
    size_t lx = x->len < KR_HTTP_TOPIC_SHOWN ? x->len : KR_HTTP_TOPIC_SHOWN;
    size_t ly = y->len < KR_HTTP_TOPIC_SHOWN ? y->len : KR_HTTP_TOPIC_SHOWN;
    int c = memcmp(x->name, y->name, lx < ly ? lx : ly);
    return c ? c : (lx < ly ? -1 : lx > ly);
}

static int kr_http_api_topics(struct kr_http *h, struct MHD_Connection *c, struct kr_sb *b)
{
    uint64_t limit;
    if (kr_http_arg_u64(c, "limit", 20, KR_HTTP_PAGE_MAX, &limit) < 0) {
        kr_sb_printf(b, "{\"error\":\"limit must be 0..%d\"}\n", KR_HTTP_PAGE_MAX);
        return MHD_HTTP_BAD_REQUEST;
    }
    struct kr_topic_top t = {.k = (size_t)limit};
    t.v = t.k ? kr_xmalloc(t.k * sizeof(*t.v)) : NULL;
    kr_router_walk_topics(kr_server_router(h->srv), kr_topic_top_add, &t);
    qsort(t.v, t.n, sizeof(*t.v), kr_topic_cmp);
    kr_sb_printf(b, "{\"topics_total\":%" PRIu64 ",\"limit\":%" PRIu64 ",\"topics\":[", t.walked,
                 limit);
    for (size_t i = 0; i < t.n; i++) {
        kr_sb_add(b, i ? ",{\"topic\":" : "{\"topic\":", i ? 10 : 9);
        kr_sb_json_str(b, t.v[i].name,
                       t.v[i].len < KR_HTTP_TOPIC_SHOWN ? t.v[i].len : KR_HTTP_TOPIC_SHOWN);
        kr_sb_printf(b, ",\"bytes\":%u,\"truncated\":%s,\"subscribers\":%u}", t.v[i].len,
                     t.v[i].len > KR_HTTP_TOPIC_SHOWN ? "true" : "false", t.v[i].nsubs);
    }
    kr_sb_add(b, "]}\n", 3);
    free(t.v);
    return MHD_HTTP_OK;
}

/* ---------------------------------------------------------------- requests */

static enum MHD_Result kr_http_reply(struct MHD_Connection *c, unsigned status, const char *type,
                                     struct kr_sb *b)
{
    struct MHD_Response *r;
    if (b->p) /* MHD frees the body with free() */
        r = MHD_create_response_from_buffer(b->len, b->p, MHD_RESPMEM_MUST_FREE);
    else
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(b->p);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static const char kr_type_json[] = "application/json";
static const char kr_type_text[] = "text/plain; charset=utf-8";

static enum MHD_Result kr_http_request(void *cls, struct MHD_Connection *c, const char *url,
                                       const char *method, const char *version,
                                       const char *upload_data, size_t *upload_data_size,
                                       void **con_cls)
{
    struct kr_http *h = cls;
    (void)version;
    (void)upload_data;
    (void)con_cls;
    struct kr_sb b = {0};
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        /* nothing changes state: refuse before reading a body */
        *upload_data_size = 0;
        kr_sb_printf(&b, "only GET and HEAD\n");
        return kr_http_reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, kr_type_text, &b);
    }
    if (strcmp(url, "/metrics") == 0) {
        kr_http_metrics(h, &b);
        return kr_http_reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", &b);
    }
    if (strcmp(url, "/healthz") == 0) {
        bool draining = kr_server_draining(h->srv);
        kr_sb_printf(&b, "%s\n", draining ? "draining" : "ok");
        return kr_http_reply(c, draining ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK,
                             kr_type_text, &b);
    }
    if (strcmp(url, "/api/server") == 0) {
        kr_http_api_server(h, &b);
        return kr_http_reply(c, MHD_HTTP_OK, kr_type_json, &b);
    }
    if (strcmp(url, "/api/connections") == 0) {
        int status = kr_http_api_conns(h, c, &b);
        return kr_http_reply(c, (unsigned)status, kr_type_json, &b);
    }
    if (strcmp(url, "/api/topics") == 0) {
        int status = kr_http_api_topics(h, c, &b);
        return kr_http_reply(c, (unsigned)status, kr_type_json, &b);
    }
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0) {
        struct MHD_Response *r = MHD_create_response_from_buffer(
            sizeof(kr_http_page) - 1, (void *)kr_http_page, MHD_RESPMEM_PERSISTENT);
        if (!r)
            return MHD_NO;
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        MHD_add_response_header(r, "Content-Security-Policy",
                                "default-src 'self'; script-src 'unsafe-inline'; "
                                "style-src 'unsafe-inline'; img-src 'self' data:");
        enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return rc;
    }
    kr_sb_printf(&b, "not found; see /metrics, /healthz, /api/server, /api/connections, "
                     "/api/topics, /\n");
    return kr_http_reply(c, MHD_HTTP_NOT_FOUND, kr_type_text, &b);
}

/* A new connection: peers outside allow_from are refused (closed unread), counted and
 * logged (rate-limited). HTTP thread. */
static enum MHD_Result kr_http_accept_policy(void *cls, const struct sockaddr *sa, socklen_t len)
{
    struct kr_http *h = cls;
    (void)len;
    if (kr_acl_allows(kr_server_acl(h->srv), sa))
        return MHD_YES;
    kr_server_count_refused(h->srv);
    uint64_t suppressed = 0;
    if (kr_log_ratelimit(&h->rl_refused, 10, 10000, &suppressed)) {
        char ip[INET6_ADDRSTRLEN] = "?", note[64] = "";
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof(ip));
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof(ip));
        if (suppressed)
            snprintf(note, sizeof(note), " (suppressed %" PRIu64 " similar)", suppressed);
        KR_WARN("http: refused a connection from %s: not in allow_from%s", ip, note);
    }
    return MHD_NO;
}

/* libmicrohttpd's own messages (e.g. the connection limit reached) at debug level. */
static void kr_http_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    KR_DEBUG("http: %s", line);
}

static void *kr_http_main(void *arg)
{
    struct kr_http *h = arg;
    urcu_memb_register_thread();
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD);
    int epfd = di ? di->epoll_fd : -1;
    while (!atomic_load(&h->stop)) {
        MHD_UNSIGNED_LONG_LONG to = 0;
        int tmo = 1000;
        if (MHD_get_timeout(h->d, &to) == MHD_YES)
            tmo = to < 1000 ? (int)to : 1000;
        struct pollfd p[2] = {{.fd = epfd, .events = POLLIN}, {.fd = h->wakefd, .events = POLLIN}};
        if (poll(p, 2, tmo) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        MHD_run(h->d);
    }
    urcu_memb_unregister_thread();
    return NULL;
}

/* Bind and listen on the monitoring address. */
static int kr_http_bind(const struct kr_cfg *cfg, int *fd_out, uint16_t *port, char *err,
                        size_t errlen)
{
    const char *ip = cfg->http_listen_ip[0] ? cfg->http_listen_ip : cfg->listen_ip;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sl;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)cfg->http_port);
        sl = sizeof(*s4);
    } else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)cfg->http_port);
        sl = sizeof(*s6);
    } else {
        return kr_errf(err, errlen, -EINVAL, "http_listen_ip '%s' is not an IP address", ip);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return kr_errf(err, errlen, -errno, "http: socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 64) < 0) {
        int e = errno;
        close(fd);
        return kr_errf(err, errlen, -e, "http: cannot listen on %s:%u: %s", ip, cfg->http_port,
                       strerror(e));
    }
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *port = ntohs(ss.ss_family == AF_INET ? s4->sin_port : s6->sin6_port);
    *fd_out = fd;
    return 0;
}

int kr_http_start(const struct kr_cfg *cfg, struct kr_server *srv, struct kr_http **out,
                  char *err, size_t errlen)
{
    *out = NULL;
    int fd = -1;
    uint16_t port = 0;
    int rc = kr_http_bind(cfg, &fd, &port, err, errlen);
    if (rc < 0)
        return rc;
    struct kr_http *h = kr_xcalloc(1, sizeof(*h));
    h->srv = srv;
    h->cfg = cfg;
    h->lfd = fd;
    h->port = port;
    atomic_init(&h->stop, false);
    h->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (h->wakefd < 0) {
        rc = kr_errf(err, errlen, -errno, "http: eventfd: %s", strerror(errno));
        close(fd);
        free(h);
        return rc;
    }
    h->d = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, kr_http_accept_policy, h, kr_http_request, h,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)cfg->http_max_connections, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)KR_HTTP_REQUEST_MAX, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)KR_HTTP_TIMEOUT_S,
        MHD_OPTION_EXTERNAL_LOGGER, kr_http_mhd_log, NULL, MHD_OPTION_END);
    if (!h->d) {
        close(h->wakefd);
        close(fd);
        free(h);
        return kr_errf(err, errlen, -EIO, "http: libmicrohttpd did not start");
    }
    rc = pthread_create(&h->thread, NULL, kr_http_main, h);
    if (rc != 0) {
        MHD_stop_daemon(h->d);
        close(h->wakefd);
        close(fd);
        free(h);
        return kr_errf(err, errlen, -rc, "http: thread: %s", strerror(rc));
    }
    const char *ip = cfg->http_listen_ip[0] ? cfg->http_listen_ip : cfg->listen_ip;
    KR_INFO("http monitoring on %s:%u (/metrics, /healthz, /api/, /)", ip, port);
    *out = h;
    return 0;
}

uint16_t kr_http_port(const struct kr_http *h)
{
    return h->port;
}

void kr_http_stop(struct kr_http *h)
{
    if (!h)
        return;
    atomic_store(&h->stop, true);
    uint64_t one = 1;
    ssize_t w = write(h->wakefd, &one, sizeof(one));
    (void)w;
    pthread_join(h->thread, NULL);
    /* take the listening socket back first: MHD_stop_daemon would close it otherwise */
    MHD_socket l = MHD_quiesce_daemon(h->d);
    MHD_stop_daemon(h->d);
    if (l != MHD_INVALID_SOCKET)
        close(l);
    close(h->wakefd);
    free(h);
}
