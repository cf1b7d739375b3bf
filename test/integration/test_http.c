/* The HTTP monitoring listener against the real server: every endpoint's status, content
 * type and body (JSON checked by Python's json module, Prometheus text by a small parser
 * here), metric values moving as a client publishes, GET/HEAD only, bounded requests and
 * connections, allow_from, and the drain turning /healthz to 503. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kr_itest.h"

static char body[1 << 20];

struct resp {
    int status; /* 0: closed without a status line */
    char ctype[128];
    char allow[64];
    size_t body_len;
};

/* One request (HTTP/1.0: the server closes after the answer); the body goes to `body`. */
static void http_req(uint16_t port, const char *method, const char *path, const char *extra,
                     struct resp *r)
{
    int fd = kr_it_connect(port);
    char req[512];
    snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%s\r\n", method, path,
             extra ? extra : "");
    kr_it_send(fd, req, strlen(req));
    static char raw[sizeof(body) + 4096];
    size_t n = kr_it_read_until(fd, raw, sizeof(raw), "\x01never\x02");
    close(fd);
    memset(r, 0, sizeof(*r));
    body[0] = 0;
    if (n < 12 || strncmp(raw, "HTTP/1.", 7) != 0)
        return;
    r->status = atoi(raw + 9);
    char *end = strstr(raw, "\r\n\r\n");
    cr_assert_not_null(end, "no end of headers in %s", raw);
    *end = 0;
    for (char *line = strstr(raw, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, "Content-Type: ", 14) == 0)
            sscanf(h + 14, "%127[^\r]", r->ctype);
        if (strncasecmp(h, "Allow: ", 7) == 0)
            sscanf(h + 7, "%63[^\r]", r->allow);
    }
    r->body_len = n - (size_t)(end + 4 - raw);
    memcpy(body, end + 4, r->body_len);
    body[r->body_len] = 0;
}

static void http_get(uint16_t port, const char *path, struct resp *r)
{
    http_req(port, "GET", path, NULL, r);
}

/* Python's json module parses the body; `check` is a Python expression over `d` that must
 * hold (e.g. "d['total'] == 2"). */
static void json_check(const char *what, const char *check)
{
    char path[] = "/tmp/kr_http_jsonXXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, body, strlen(body)), (ssize_t)strlen(body));
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "python3 - %s", path);
    FILE *py = popen(cmd, "w");
    cr_assert_not_null(py);
    fprintf(py, "import json,sys\nd=json.load(open(sys.argv[1]))\nsys.exit(0 if (%s) else 3)\n",
            check ? check : "True");
    int rc = pclose(py);
    unlink(path);
    cr_assert_eq(rc, 0, "%s: JSON does not parse or (%s) is false:\n%.2000s", what,
                 check ? check : "True", body);
}

static bool metric_name_ok(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
            return false;
    return true;
}

/* A small parser of the Prometheus text format (0.0.4): every line is a HELP or TYPE
 * comment or a sample `name[{labels}] value`; every sample belongs to a family whose TYPE
 * came first; counters end in _total; histogram buckets grow and end with le="+Inf" equal to
 * _count. Returns the number of samples. */
static int prom_parse(const char *text)
{
    char types[512][96];
    char kinds[512][16];
    int ntypes = 0, samples = 0;
    double last_bucket = -1;
    const char *p = text;
    int lineno = 0;
    while (*p) {
        const char *nl = strchr(p, '\n');
        cr_assert_not_null(nl, "the text ends without a newline");
        size_t len = (size_t)(nl - p);
        char line[1024];
        cr_assert_lt(len, sizeof(line));
        memcpy(line, p, len);
        line[len] = 0;
        lineno++;
        p = nl + 1;
        if (strncmp(line, "# HELP ", 7) == 0) {
            const char *n = line + 7;
            cr_assert(metric_name_ok(n, strcspn(n, " ")), "line %d: bad HELP %s", lineno, line);
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[96], kind[16];
            cr_assert_eq(sscanf(line + 7, "%95s %15s", name, kind), 2, "line %d: %s", lineno, line);
            cr_assert(metric_name_ok(name, strlen(name)));
            cr_assert(strcmp(kind, "counter") == 0 || strcmp(kind, "gauge") == 0 ||
                          strcmp(kind, "histogram") == 0,
                      "line %d: type %s", lineno, kind);
            for (int i = 0; i < ntypes; i++)
                cr_assert_str_neq(types[i], name, "line %d: %s typed twice", lineno, name);
            cr_assert_lt(ntypes, 512);
            strcpy(types[ntypes], name);
            strcpy(kinds[ntypes], kind);
            ntypes++;
            if (strcmp(kind, "counter") == 0) {
                size_t l = strlen(name);
                cr_assert(l > 6 && strcmp(name + l - 6, "_total") == 0,
                          "counter %s does not end in _total", name);
            }
            last_bucket = -1;
            continue;
        }
        cr_assert_neq(line[0], '#', "line %d: unknown comment %s", lineno, line);
        cr_assert_neq(line[0], 0, "line %d: empty line", lineno);
        size_t nlen = strcspn(line, "{ ");
        cr_assert(metric_name_ok(line, nlen), "line %d: bad name in %s", lineno, line);
        const char *rest = line + nlen;
        if (*rest == '{') {
            const char *close = strchr(rest, '}');
            cr_assert_not_null(close, "line %d: unclosed labels", lineno);
            /* labels: name="value" pairs */
            const char *q = rest + 1;
            while (q < close) {
                size_t ll = strcspn(q, "=");
                cr_assert(metric_name_ok(q, ll), "line %d: bad label in %s", lineno, line);
                cr_assert_eq(q[ll + 1], '"', "line %d: label value not quoted", lineno);
                q += ll + 2;
                while (*q && *q != '"') {
                    if (*q == '\\')
                        q++;
                    q++;
                }
                cr_assert_eq(*q, '"');
                q++;
                if (*q == ',')
                    q++;
            }
            rest = close + 1;
        }
        cr_assert_eq(*rest, ' ', "line %d: no value in %s", lineno, line);
        char *endp;
        double v = strtod(rest + 1, &endp);
        cr_assert(endp != rest + 1 && *endp == 0, "line %d: bad value in %s", lineno, line);
        /* its family: the name, or the name less a histogram suffix */
        char fam[96];
        snprintf(fam, sizeof(fam), "%.*s", (int)nlen, line);
        int found = -1;
        for (int i = 0; i < ntypes && found < 0; i++) {
            size_t tl = strlen(types[i]);
            if (strcmp(fam, types[i]) == 0)
                found = i;
            else if (strcmp(kinds[i], "histogram") == 0 && strncmp(fam, types[i], tl) == 0 &&
                     (strcmp(fam + tl, "_bucket") == 0 || strcmp(fam + tl, "_sum") == 0 ||
                      strcmp(fam + tl, "_count") == 0))
                found = i;
        }
        cr_assert(found >= 0, "line %d: %s has no TYPE before it", lineno, fam);
        if (strstr(fam, "_bucket")) {
            cr_assert_geq(v, last_bucket, "line %d: buckets must not shrink", lineno);
            last_bucket = v;
        } else if (strstr(fam, "_count") && strcmp(kinds[found], "histogram") == 0) {
            cr_assert_eq(v, last_bucket, "line %d: _count must equal the +Inf bucket", lineno);
        }
        samples++;
    }
    return samples;
}

/* The value of the sample `name` (exact, no labels) in the last /metrics body. */
static double metric(const char *name)
{
    char want[128];
    snprintf(want, sizeof(want), "\n%s ", name);
    const char *p = strstr(body, want);
    cr_assert_not_null(p, "no %s in /metrics", name);
    return strtod(p + strlen(want), NULL);
}

/* The sample `name` of a fresh /metrics scrape of the HTTP port *(uint16_t *)port (a
 * figure to wait for; the body stays in `body` for metric()). */
static long long metric_figure(const void *port, const char *name)
{
    struct resp r;
    http_get(*(const uint16_t *)port, "/metrics", &r);
    cr_assert_eq(r.status, 200);
    return (long long)metric(name);
}

/* The status /healthz answers on the HTTP port *(uint16_t *)port (a figure to wait for). */
static long long healthz_status(const void *port, const char *name)
{
    struct resp r;
    http_get(*(const uint16_t *)port, "/healthz", &r);
    return r.status;
}

/* The descriptors the server holds open, from /proc/PID/fd (a figure to wait for). */
static long long server_fds(const void *server, const char *name)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)((const struct kr_it_server *)server)->pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d, "%s", path);
    long long n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static void start_http(struct kr_it_server *srv, uint16_t *port, const char *const *more)
{
    static char hp[16];
    *port = kr_it_free_port();
    snprintf(hp, sizeof(hp), "%u", *port);
    const char *args[32] = {"--http_port", hp};
    int n = 2;
    for (int i = 0; more && more[i]; i++)
        args[n++] = more[i];
    args[n] = NULL;
    kr_it_start(srv, args);
    cr_assert(kr_it_wait_log(srv, "http monitoring on 127.0.0.1:"));
}

/* ------------------------------------------------------------------ endpoints */

Test(http, every_endpoint_status_type_and_body)
{
    struct kr_it_server srv;
    uint16_t hp;
    start_http(&srv, &hp, NULL);
    struct resp r;

    http_get(hp, "/healthz", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.ctype, "text/plain; charset=utf-8");
    cr_assert_str_eq(body, "ok\n");

    http_get(hp, "/metrics", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.ctype, "text/plain; version=0.0.4; charset=utf-8");
    cr_assert_gt(prom_parse(body), 50);
    cr_assert_eq(metric("kraken_draining"), 0);
    cr_assert_gt(metric("process_max_fds"), 0);

    http_get(hp, "/api/server", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.ctype, "application/json");
    json_check("/api/server", "d['state'] == 'serving' and d['draining'] is False and "
                              "d['figures']['curr_connections'] == 0 and "
                              "d['fanout_warnings'] == [] and d['cluster'] is None");

    http_get(hp, "/api/connections", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.ctype, "application/json");
    json_check("/api/connections", "d['total'] == 0 and d['connections'] == [] and "
                                   "d['sort'] == 'queued_bytes'");

    http_get(hp, "/api/topics", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.ctype, "application/json");
    json_check("/api/topics", "d['topics'] == [] and d['limit'] == 20");

    http_get(hp, "/", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.ctype, "text/html; charset=utf-8");
    cr_assert_not_null(strstr(body, "<canvas id=\"chart\""));
    cr_assert_not_null(strstr(body, "/api/server"));
    cr_assert_null(strstr(body, "http://"), "the page loads nothing from elsewhere");
    cr_assert_null(strstr(body, "https://"), "the page loads nothing from elsewhere");

    http_req(hp, "HEAD", "/metrics", NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.body_len, 0, "HEAD has no body");

    http_get(hp, "/nope", &r);
    cr_assert_eq(r.status, 404);
    http_get(hp, "/api/connections?limit=abc", &r);
    cr_assert_eq(r.status, 400);
    json_check("a 400", "'error' in d");
    http_get(hp, "/api/connections?sort=nope", &r);
    cr_assert_eq(r.status, 400);
    http_get(hp, "/api/topics?limit=1001", &r);
    cr_assert_eq(r.status, 400);
    kr_it_stop(&srv);
}

/* Every figure of `stats` is in /metrics, under its mapped name. */
Test(http, metrics_has_every_stats_figure)
{
    struct kr_it_server srv;
    uint16_t hp;
    start_http(&srv, &hp, NULL);
    int fd = kr_it_connect(srv.port);
    static char st[65536];
    kr_it_sends(fd, "stats\r\n");
    kr_it_read_until(fd, st, sizeof(st), "END\r\n");
    close(fd);
    struct resp r;
    http_get(hp, "/metrics", &r);
    cr_assert_eq(r.status, 200);
    int checked = 0;
    for (char *line = strtok(st, "\r\n"); line; line = strtok(NULL, "\r\n")) {
        char name[96], value[128];
        if (sscanf(line, "STAT %95s %127s", name, value) != 2)
            continue;
        if (strcmp(name, "version") == 0 || strcmp(name, "allocator") == 0) {
            char want[256];
            snprintf(want, sizeof(want), "%s=\"%s\"", name, value);
            cr_assert_not_null(strstr(body, want), "kraken_build_info lacks %s", want);
            checked++;
            continue;
        }
        char want[256];
        snprintf(want, sizeof(want), "(stats: %s)\n# TYPE kraken_%s", name, name);
        cr_assert_not_null(strstr(body, want), "/metrics has no kraken_%s... for STAT %s", name,
                           name);
        checked++;
    }
    cr_assert_gt(checked, 50);
    /* the mapping rule: counters get _total, times _seconds, memory _bytes */
    metric("kraken_messages_published_total");
    metric("kraken_curr_connections");
    metric("kraken_uptime_seconds_total");
    metric("kraken_rusage_user_seconds_total");
    metric("kraken_memory_used_bytes");
    metric("kraken_memory_overflows_total"); /* a counter named memory: no _bytes */
    metric("kraken_bytes_read_total");
    kr_it_stop(&srv);
}

/* ------------------------------------------------------------------ values move */

Test(http, values_move_as_clients_publish)
{
    struct kr_it_server srv;
    uint16_t hp;
    const char *more[] = {"--router_min_fanout_to_warn", "2", NULL};
    start_http(&srv, &hp, more);
    struct resp r;
    http_get(hp, "/metrics", &r);
    double pub0 = metric("kraken_messages_published_total");
    cr_assert_eq(metric("kraken_curr_connections"), 0);

    int s1 = kr_it_connect(srv.port), s2 = kr_it_connect(srv.port), p = kr_it_connect(srv.port);
    kr_it_subscribe(s1, "news");
    kr_it_subscribe(s2, "news sport");
    for (int i = 0; i < 3; i++)
        kr_it_publish(p, "news", "hello", 5);
    kr_it_publish(p, "sport", "x", 1);

    /* STORED means handed to the router: the deliveries land shortly after */
    kr_it_wait_figure(metric_figure, &hp, "kraken_client_queue_messages_sum", KR_IT_EQ, 7);
    kr_it_wait_figure(metric_figure, &hp, "kraken_fanout_warnings_total", KR_IT_EQ, 3);
    http_get(hp, "/metrics", &r);
    cr_assert_eq(r.status, 200);
    prom_parse(body);
    cr_assert_eq(metric("kraken_messages_published_total"), pub0 + 4);
    cr_assert_eq(metric("kraken_curr_connections"), 3);
    cr_assert_eq(metric("kraken_client_queue_messages_count"), 3);
    cr_assert_eq(metric("kraken_client_queue_messages_sum"), 7); /* 3 + 4 entries queued */
    cr_assert_eq(metric("kraken_scrape_connections_complete"), 1);
    cr_assert_gt(metric("kraken_client_queue_bytes_sum"), 0);
    cr_assert_eq(metric("kraken_fanout_warnings_total"), 3, "the 3 news publishes reached 2");

    /* the slow-consumer view: s2 holds most */
    http_get(hp, "/api/connections?limit=2", &r);
    cr_assert_eq(r.status, 200);
    json_check("/api/connections", "d['total'] == 3 and len(d['connections']) == 2 and "
                                   "d['connections'][0]['queued_messages'] == 4 and "
                                   "d['connections'][1]['queued_messages'] == 3 and "
                                   "d['connections'][0]['queued_bytes'] > "
                                   "d['connections'][1]['queued_bytes'] and "
                                   "d['connections'][0]['peer'].startswith('127.0.0.1:') and "
                                   "all(c['mem'] > 0 for c in d['connections'])");
    http_get(hp, "/api/connections?offset=2&limit=5", &r);
    json_check("page 2", "d['total'] == 3 and len(d['connections']) == 1 and "
                         "d['connections'][0]['queued_messages'] == 0");
    http_get(hp, "/api/connections?sort=id", &r);
    json_check("by id", "[c['id'] for c in d['connections']] == "
                        "sorted(c['id'] for c in d['connections'])");

    http_get(hp, "/api/topics?limit=1", &r);
    json_check("/api/topics", "d['topics_total'] == 2 and len(d['topics']) == 1 and "
                              "d['topics'][0] == {'topic': 'news', 'bytes': 4, "
                              "'truncated': False, 'subscribers': 2}");

    http_get(hp, "/api/server", &r);
    json_check("/api/server", "d['figures']['curr_connections'] == 3 and "
                              "len(d['fanout_warnings']) == 3 and "
                              "d['fanout_warnings'][0]['fanout'] == 2 and "
                              "d['fanout_warnings'][0]['first_topics'] == 'news' and "
                              "d['fanout_warnings'][0]['peer'].startswith('127.0.0.1:')");

    /* polling empties the queues */
    char got[4096];
    size_t gl = 0;
    kr_it_collect(s2, 4, got, sizeof(got), &gl);
    http_get(hp, "/metrics", &r);
    cr_assert_eq(metric("kraken_client_queue_messages_sum"), 3);
    cr_assert_eq(metric("kraken_messages_delivered_total"), 4);
    close(s1);
    close(s2);
    close(p);
    kr_it_stop(&srv);
}

/* ------------------------------------------------------------------ security */

Test(http, only_get_and_head)
{
    struct kr_it_server srv;
    uint16_t hp;
    start_http(&srv, &hp, NULL);
    const char *methods[] = {"POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        struct resp r;
        http_req(hp, methods[i], "/metrics", "Content-Length: 3\r\n", &r);
        cr_assert_eq(r.status, 405, "%s got %d", methods[i], r.status);
        cr_assert_str_eq(r.allow, "GET, HEAD");
    }
    struct resp r;
    http_get(hp, "/healthz", &r);
    cr_assert_eq(r.status, 200, "still serving");
    kr_it_stop(&srv);
}

Test(http, oversized_request_refused)
{
    struct kr_it_server srv;
    uint16_t hp;
    start_http(&srv, &hp, NULL);
    int fd = kr_it_connect(hp);
    static char big[64 * 1024];
    int n = snprintf(big, sizeof(big), "GET /metrics HTTP/1.0\r\nX-Pad: ");
    memset(big + n, 'a', 40000);
    n += 40000;
    n += snprintf(big + n, sizeof(big) - (size_t)n, "\r\n\r\n");
    /* the server may close before reading it all: send what it takes */
    size_t off = 0;
    while (off < (size_t)n) {
        ssize_t w = send(fd, big + off, (size_t)n - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    static char raw[8192];
    size_t got = kr_it_read_until(fd, raw, sizeof(raw), "\x01never\x02");
    close(fd);
    cr_assert(got == 0 || (strncmp(raw, "HTTP/1.", 7) == 0 && atoi(raw + 9) >= 400),
              "a 40 kB header was answered: %.200s", raw);
    cr_assert_null(strstr(raw, "kraken_"), "no metrics for an oversized request");
    struct resp r;
    http_get(hp, "/healthz", &r);
    cr_assert_eq(r.status, 200, "still serving");
    kr_it_stop(&srv);
}

Test(http, connection_limit_holds)
{
    struct kr_it_server srv;
    uint16_t hp;
    const char *more[] = {"--http_max_connections", "2", NULL};
    start_http(&srv, &hp, more);
    long long fds = server_fds(&srv, NULL);
    int a = kr_it_connect(hp), b = kr_it_connect(hp);
    /* both are accepted: the server holds two more descriptors (each has begun a request) */
    kr_it_sends(a, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
    kr_it_sends(b, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
    kr_it_wait_figure(server_fds, &srv, "the server's open descriptors", KR_IT_EQ, fds + 2);
    int c = kr_it_connect(hp); /* the kernel completes the handshake; the server waits */
    kr_it_sends(c, "GET /healthz HTTP/1.0\r\n\r\n");
    /* (the HTTP listener answers `Connection: close`, so no request on a or b can be ordered
     * after c's as a marker: this negative check alone waits a fixed time) */
    struct pollfd pf = {.fd = c, .events = POLLIN};
    cr_assert_eq(poll(&pf, 1, 300), 0, "a third connection was served over the limit of 2");
    cr_assert_eq(server_fds(&srv, NULL), fds + 2, "a third connection was accepted");
    close(a); /* a slot frees up: the waiting one is served */
    char raw[512];
    size_t n = kr_it_read_until(c, raw, sizeof(raw), "ok\n");
    cr_assert(n > 0 && strstr(raw, "200 OK") != NULL, "served once a connection closed: %s", raw);
    close(c);
    close(b);
    kr_it_stop(&srv);
}

Test(http, allow_from_refuses)
{
    struct kr_it_server srv;
    uint16_t hp;
    const char *more[] = {"--allow_from", "10.0.0.0/8", NULL};
    start_http(&srv, &hp, more);
    int fd = kr_it_connect(hp);
    kr_it_sends(fd, "GET /metrics HTTP/1.0\r\n\r\n");
    kr_it_expect_closed(fd);
    close(fd);
    cr_assert(kr_it_wait_log(&srv, "http: refused a connection from 127.0.0.1: not in allow_from"));
    /* counted with the other refusals */
    int ufd = kr_it_connect_unix(srv.admin_path);
    kr_it_admin(ufd, "stats", body, sizeof(body));
    close(ufd);
    cr_assert_not_null(strstr(body, "STAT refused_connections 1\n"), "%s", body);
    kr_it_stop(&srv);
}

/* process_open_fds opens /proc/self/fd: the descriptor it gets is usually one a net thread
 * just closed. Against the ThreadSanitizer build, a descriptor opened where TSan cannot see
 * the creation (opendir) and then closed was reported as a race with the net thread's last
 * read of the client socket that had that number (libuv closes with a raw syscall TSan does
 * not see), and halt_on_error ended the server in the middle of the scrape. */
Test(http, metrics_reuses_closed_client_descriptors)
{
    struct kr_it_server srv;
    uint16_t hp;
    start_http(&srv, &hp, NULL);
    /* clients the net threads read from, then closed: their numbers are the lowest free */
    enum { N = 8 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = kr_it_connect(srv.port);
        kr_it_sends(fds[i], "version\r\n");
        char line[128];
        cr_assert_gt(kr_it_read_until(fds[i], line, sizeof(line), "\r\n"), 0);
    }
    for (int i = 0; i < N; i++)
        close(fds[i]);
    kr_it_wait_admin_stat(&srv, "curr_connections", KR_IT_EQ, 0); /* the server closed them */
    /* each scrape's connection and its /proc/self/fd take reused numbers */
    struct resp r;
    for (int i = 0; i < N; i++) {
        http_get(hp, "/metrics", &r);
        cr_assert_eq(r.status, 200, "scrape %d after the clients closed", i);
        cr_assert_gt(metric("process_open_fds"), 0);
    }
    kr_it_stop(&srv);
}

/* ------------------------------------------------------------------ the drain */

Test(http, drain_turns_healthz_503)
{
    struct kr_it_server srv;
    uint16_t hp;
    const char *more[] = {"--drain_timeout_ms", "60000", NULL};
    start_http(&srv, &hp, more);
    /* a client holding a message: the drain waits for it to poll (or for the deadline) */
    int sub = kr_it_connect(srv.port), pub = kr_it_connect(srv.port);
    kr_it_subscribe(sub, "t");
    kr_it_publish(pub, "t", "m", 1);
    close(pub);
    struct resp r;
    http_get(hp, "/healthz", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(kill(srv.pid, SIGTERM), 0);
    kr_it_wait_figure(healthz_status, &hp, "/healthz status while draining", KR_IT_EQ, 503);
    http_get(hp, "/healthz", &r);
    cr_assert_eq(r.status, 503, "/healthz while draining");
    cr_assert_str_eq(body, "draining\n");
    cr_assert_str_eq(r.ctype, "text/plain; charset=utf-8");
    http_get(hp, "/metrics", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(metric("kraken_draining"), 1);
    http_get(hp, "/api/server", &r);
    json_check("/api/server draining", "d['state'] == 'draining' and d['draining'] is True");
    /* the subscriber polls its message: the drain closes it and the server exits */
    char got[256];
    size_t gl = 0;
    kr_it_collect(sub, 1, got, sizeof(got), &gl);
    close(sub);
    cr_assert(kr_it_wait_log(&srv, "drain finished"));
    cr_assert(kr_it_exited_0(&srv), "the server exits 0 by itself after the drain");
    kr_it_stop(&srv);
}

/* The Grafana dashboard parses and every metric it queries is one /metrics exports. */
Test(http, grafana_dashboard_queries_exported_metrics)
{
    const char *src = getenv("KRAKEN_SOURCE_DIR");
    cr_assert_not_null(src, "KRAKEN_SOURCE_DIR must name the source tree");
    char path[1024];
    snprintf(path, sizeof(path), "%s/docs/grafana-kraken.json", src);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    static char dash[1 << 18];
    size_t n = fread(dash, 1, sizeof(dash) - 1, f);
    dash[n] = 0;
    fclose(f);
    memcpy(body, dash, n + 1);
    json_check("grafana-kraken.json", "len(d['panels']) > 10");
    struct kr_it_server srv;
    uint16_t hp;
    start_http(&srv, &hp, NULL);
    struct resp r;
    http_get(hp, "/metrics", &r);
    cr_assert_eq(r.status, 200);
    int checked = 0;
    for (const char *p = dash; (p = strstr(p, "kraken_")) || (p = NULL, 0);) {
        if (p > dash && (isalnum((unsigned char)p[-1]) || p[-1] == '_')) {
            p++;
            continue;
        }
        size_t l = strspn(p, "abcdefghijklmnopqrstuvwxyz_0123456789");
        char name[128];
        snprintf(name, sizeof(name), "%.*s", (int)l, p);
        p += l;
        if (strcmp(name, "kraken_") == 0)
            continue;
        if (strncmp(name, "kraken_jemalloc_", 16) == 0 && !strstr(body, "allocator=\"jemalloc\""))
            continue; /* a build without jemalloc (the sanitizer builds) has no such figures */
        char want[160];
        snprintf(want, sizeof(want), "\n%s", name);
        cr_assert_not_null(strstr(body, want), "the dashboard queries %s, /metrics has none", name);
        checked++;
    }
    cr_assert_gt(checked, 20);
    kr_it_stop(&srv);
}
