/* kraken-bench: command line, scenario defaults and the report. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_bench_run.h"

#define KB_EXIT_OK 0
#define KB_EXIT_ACCOUNTING 1
#define KB_EXIT_USAGE 2
#define KB_EXIT_RUN 3

static const char *const kb_proto_names[] = {"kraken", "redis", "nats"};
static const char *const kb_scenario_names[] = {"fanout", "broadcast", "latency", "churn",
                                                "conns",  "retro",     "resume",  "storm"};
static const char *const kb_resume_mode_names[] = {"token", "scratch"};

static void kb_usage(FILE *f)
{
    fputs(
        "Usage: kraken-bench [options]\n"
        "\n"
        "Load generator for Kraken, with Redis pub/sub and NATS for comparison. Each worker\n"
        "thread runs one libuv loop and owns a share of the connections; requests are\n"
        "pipelined. Every payload carries its publisher, a per-topic sequence number and its\n"
        "send time, so subscribers count loss, duplicates and order errors, and latency is\n"
        "measured from publish to receipt.\n"
        "\n"
        "Target:\n"
        "  --proto P            kraken (default; also called memcached: Kraken's memcached\n"
        "                       text protocol), redis (also called resp: RESP\n"
        "                       SUBSCRIBE/PUBLISH) or nats\n"
        "                       (SUB/PUB/MSG, PING/PONG as the barrier)\n"
        "  --host H             server address (default 127.0.0.1)\n"
        "  --port N             server port (default 12355, 6379 or 4222 per protocol)\n"
        "  --sub-host H         subscribers connect here instead (default: --host); with\n"
        "  --sub-port N         a different --sub-host/--sub-port (default: --port) the\n"
        "                       subscribers are on one server or cluster node and the\n"
        "                       publishers (and churn connections) on another\n"
        "  --probe, --no-probe  before the timed phase, publish to each subscriber's own\n"
        "                       probe subject (<prefix>probe.<n>, subscribed with its\n"
        "                       topics) from a publisher until every subscriber has received\n"
        "                       one, bounded by --connect-timeout: the subscriptions are then\n"
        "                       in force where the publishers are (NATS routes propagate\n"
        "                       interest asynchronously). Default: on when subscribers and\n"
        "                       publishers use different servers (fanout, broadcast, latency)\n"
        "\n"
        "Scenario (--scenario S):\n"
        "  fanout     --subs subscribers each on --topics-per-sub random topics out of\n"
        "             --topics; --pubs publishers each publish to random topics\n"
        "             (defaults: 100 subs, 4 pubs, 1000 topics, 10 per sub)\n"
        "  broadcast  everyone on one topic (defaults: 200 subs, 1 pub)\n"
        "  latency    fanout at a fixed total --rate (default 10000 msgs/s)\n"
        "  churn      --subs connections each alternate subscribe and unsubscribe of a random\n"
        "             topic; reports acknowledged ops/s and their latency (default 100 conns)\n"
        "  conns      --conns idle connections, each subscribed to --topics-per-sub topics\n"
        "             (default 1000 conns, 1 topic each), held for --duration; with\n"
        "             --server-pid reports the server's VmRSS growth per connection\n"
        "  retro      Kraken only: --subs connections `set register`, --pubs publishers then\n"
        "             publish --messages messages (default 5000), then the registered\n"
        "             connections subscribe and count the replayed messages (defaults: 10 subs\n"
        "             x 10 of 100 topics, 1 pub). A NOT_FOUND or ERROR answer is reported.\n"
        "  resume     Kraken only: latency's shape and rate; subscribers keep their last\n"
        "             position token (memcached: polls with `get messages position`; RESP:\n"
        "             a subscription to __kraken__:position). At --cut-at every subscriber's\n"
        "             connection is closed by the bench and reconnects after a random\n"
        "             0..--jitter-ms, then resumes from its token (--resume-mode token:\n"
        "             `set resume` or KRAKEN.RESUME, plus __kraken__:position again on RESP)\n"
        "             or subscribes again (scratch: every topic is to reload). Subscribers\n"
        "             also subscribe __kraken__:resync, so a queue overflow is a notice, not\n"
        "             a close. Reports the time from reconnect to the answer (STORED, or\n"
        "             the last confirmation): p50, p99, max; messages replayed; topics\n"
        "             resynced (a '*' notice counts all of the subscriber's topics); and,\n"
        "             exactly from the\n"
        "             bench's own records, duplicates and lost messages: acknowledged messages\n"
        "             on a subscriber's topics that it neither received nor was told about by\n"
        "             a notice naming the topic (or '*') that followed them\n"
        "             (defaults: 100 subs x 10 of 1000 topics, 4 pubs, 10000 msgs/s).\n"
        "             Across two nodes of a cluster, with a drain: subscribers on one node\n"
        "             (--sub-port), publishers on the other (--port), and --drain-admin PATH:\n"
        "             at --cut-at the bench sends `drain` to that admin socket (the\n"
        "             subscribers' node) instead of cutting; each subscriber the node closes\n"
        "             (memcached: after its last poll reply; RESP: after its last\n"
        "             __kraken__:position message) waits its jitter and resumes, with the\n"
        "             token of the drained node, on --move-host/--move-port (default: --host/\n"
        "             --port). Also reported: close -> answer per subscriber (jitter\n"
        "             included), drain -> last subscriber live, and the subscribers the\n"
        "             drain never closed\n"
        "  storm      Kraken only: subscribe storms of new topics (names the server has not\n"
        "             seen: each run tags them). (a) One connection subscribes --topics new\n"
        "             topics in one request: time from sending to STORED and topics/s,\n"
        "             then the time to unsubscribe them all in one request. (b) --subs\n"
        "             connections, connected first, each send one request of\n"
        "             --topics-per-sub new topics at the same moment: time from that moment\n"
        "             to each STORED (p50, p99, max) and topics/s over all. --subs 0 skips\n"
        "             (b). (defaults: 100000 topics; 100 subs x 1000 topics.) One request\n"
        "             must fit the server's max_request_bytes (16 MiB by default, about 1M\n"
        "             topics of the default prefix); a refusal is reported with its size\n"
        "\n"
        "Shape:\n"
        "  --subs N             subscriber connections (churn: churning connections)\n"
        "  --pubs N             publisher connections\n"
        "  --topics N           size of the topic space\n"
        "  --topics-per-sub N   topics per subscriber\n"
        "  --msg-size B         payload bytes, at least 24 (default 64)\n"
        "  --conns N            idle connections of the conns scenario\n"
        "  --messages N         retro: messages to publish before the replay\n"
        "  --rate R             total publish rate in msgs/s (churn: ops/s); 0 = as fast as\n"
        "                       the pipeline allows (default 0, latency and resume: 10000)\n"
        "  --resume-mode M      resume: token (default) or scratch\n"
        "  --jitter-ms N        resume: reconnect delay, uniform in 0..N ms (default 500)\n"
        "  --cut-at S           resume: when the subscribers are cut, in seconds after the\n"
        "                       timed phase starts (default: half of --duration)\n"
        "  --move-host H        resume: cut subscribers reconnect to this server instead of\n"
        "  --move-port N        the one they left (default: where they were; with\n"
        "                       --drain-admin: --host/--port, the publishers' node)\n"
        "  --drain-admin PATH   resume: at --cut-at, connect to the Unix socket PATH (the admin\n"
        "                       socket of the subscribers' node) and send `drain`; the node,\n"
        "                       not the bench, closes the subscribers, which then move. The\n"
        "                       node must be in a cluster with the move target and keep\n"
        "                       answering resumes (drain_resume_window_ms) until they are done\n"
        "  --show-lost N        resume: describe up to N lost messages on stderr (subscriber,\n"
        "                       topic, publisher, sequence, and when it was sent, the subscriber\n"
        "                       closed, its resume sent and answered, in ms from the cut)\n"
        "\n"
        "Engine:\n"
        "  --threads N          worker threads (default 2)\n"
        "  --pipeline N         requests in flight per connection (default 16). For NATS,\n"
        "                       which does not acknowledge PUB, a PING follows every N/2\n"
        "                       commands and its PONG acknowledges them\n"
        "  --batch N            Kraken only: publish entries per `set publish` request\n"
        "                       (default 1; in flight = pipeline x batch messages)\n"
        "  --poll-ms N          Kraken subscribers poll with `get messages` back to back (0,\n"
        "                       default); with N > 0 a subscriber waits N ms after an empty\n"
        "                       poll, and polls again at once after a non-empty one.\n"
        "                       (A Kraken server with poll_wait_ms > 0 answers an empty\n"
        "                       poll only once a message arrives or poll_wait_ms has\n"
        "                       passed; with its default 0, at once.)\n"
        "\n"
        "Run:\n"
        "  --duration S         timed phase in seconds (default 10; decimals allowed)\n"
        "  --drain-timeout S    bound on the drain after the timed phase, where publishers\n"
        "                       stop and subscribers keep receiving until the counts are\n"
        "                       complete or stop changing for 3 s (default 10)\n"
        "  --connect-timeout S  bound on connecting and subscribing (default 60)\n"
        "  --server-pid PID     the server's process: its CPU time (/proc/PID/stat) over the\n"
        "                       timed phase is reported with deliveries (churn: operations)\n"
        "                       per CPU-second; conns: its VmRSS is read before connecting\n"
        "                       and at the end of the hold\n"
        "  --seed N             topic assignment seed (default 1)\n"
        "  --prefix STR         topic name prefix (default \"kb.\")\n"
        "  --json               print one JSON line instead of the summary\n"
        "  --quiet              no progress line each second (stderr)\n"
        "  -h, --help           this text\n"
        "\n"
        "Warm-up: every connection is connected and subscribed (Kraken STORED, Redis\n"
        "confirmations, NATS PONG after the SUBs) before the clock starts, and with probes\n"
        "every subscriber has received its probe.\n"
        "Exit status: 0 clean; 1 loss, duplicates, order errors, corrupt or unexpected\n"
        "messages, or connection errors during the run; 2 bad options; 3 the run could not\n"
        "be done (connection refused, no barrier, retro unsupported).\n",
        f);
}

static int kb_bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int kb_bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kraken-bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see kraken-bench --help)\n");
    va_end(ap);
    return KB_EXIT_USAGE;
}

static int kb_parse_uint(const char *opt, const char *s, unsigned long long lo,
                         unsigned long long hi, unsigned long long *out)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-' || *s == '+')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi) {
        fprintf(stderr, "kraken-bench: %s wants an integer in %llu..%llu, not '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int kb_parse_double(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || !*s || *end || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "kraken-bench: %s wants a number in %g..%g, not '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int kb_lookup(const char *const *names, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], s) == 0)
            return (int)i;
    return -1;
}

/* "12.3 us" style. */
static const char *kb_fmt_ns(char *buf, size_t cap, uint64_t ns)
{
    if (ns < 10000)
        snprintf(buf, cap, "%llu ns", (unsigned long long)ns);
    else if (ns < 10000000)
        snprintf(buf, cap, "%.1f us", (double)ns / 1e3);
    else if (ns < UINT64_C(10000000000))
        snprintf(buf, cap, "%.2f ms", (double)ns / 1e6);
    else
        snprintf(buf, cap, "%.2f s", (double)ns / 1e9);
    return buf;
}

static double kb_rate(uint64_t n, double s)
{
    return s > 0 ? (double)n / s : 0.0;
}

static void kb_json_str(FILE *f, const char *key, const char *v)
{
    fprintf(f, "\"%s\":\"", key);
    for (const char *p = v; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputs("\",", f);
}

static const char *kb_status(const struct kr_bench_result *r, int rc)
{
    if (r->unsupported)
        return "unsupported";
    if (rc < 0)
        return "error";
    if (r->loss || r->dups || r->order || r->corrupt || r->unexpected)
        return "accounting_errors";
    if (r->cut > r->live_again)
        return "connection_errors"; /* a cut subscriber never came back */
    if (r->stayed)
        return "connection_errors"; /* the drain never closed some subscribers */
    if (r->errors)
        return "connection_errors";
    return "ok";
}

/* Deliveries (churn: acknowledged operations) of the timed phase per second of the
 * server's CPU, -1 when its CPU was not measured (--server-pid). */
static double kb_per_server_cpu_s(const struct kr_bench_cfg *c, const struct kr_bench_result *r)
{
    if (r->server_cpu_s <= 0)
        return -1;
    uint64_t work = c->scenario == KR_BENCH_SC_CHURN ? r->ops_timed : r->delivered_timed;
    return (double)work / r->server_cpu_s;
}

static void kb_print_json(const struct kr_bench_cfg *c, const struct kr_bench_result *r, int rc)
{
    FILE *f = stdout;
    fputc('{', f);
    kb_json_str(f, "status", kb_status(r, rc));
    kb_json_str(f, "proto", kb_proto_names[c->proto]);
    kb_json_str(f, "scenario", kb_scenario_names[c->scenario]);
    kb_json_str(f, "host", c->host);
    kb_json_str(f, "sub_host", c->sub_host[0] ? c->sub_host : c->host);
    fprintf(f, "\"sub_port\":%u,\"probe\":%s,\"probe_s\":%.3f,\"probes\":%llu,",
            c->sub_port ? c->sub_port : c->port, c->probe ? "true" : "false", r->probe_s,
            (unsigned long long)r->probes);
    fprintf(f, "\"port\":%u,\"threads\":%u,\"pipeline\":%u,\"batch\":%u,", c->port, c->threads,
            c->pipeline, c->batch);
    fprintf(f, "\"subs\":%u,\"pubs\":%u,\"topics\":%u,\"topics_per_sub\":%u,\"msg_size\":%u,",
            c->scenario == KR_BENCH_SC_CONNS ? c->conns : c->subs,
            c->scenario == KR_BENCH_SC_CONNS || c->scenario == KR_BENCH_SC_CHURN ? 0 : c->pubs,
            c->topics, c->topics_per_sub, c->msg_size);
    fprintf(f, "\"rate\":%.0f,\"poll_ms\":%u,\"connections\":%llu,\"connect_s\":%.3f,", c->rate,
            c->poll_ms, (unsigned long long)r->connections, r->connect_s);
    fprintf(f, "\"duration_s\":%.3f,\"drain_s\":%.3f,\"drain_timed_out\":%s,", r->run_s, r->drain_s,
            r->drain_timed_out ? "true" : "false");
    fprintf(f, "\"published\":%llu,\"publish_rate\":%.0f,", (unsigned long long)r->published,
            kb_rate(r->published_timed, r->run_s));
    fprintf(f, "\"delivered\":%llu,\"deliver_rate\":%.0f,\"expected\":%llu,",
            (unsigned long long)r->delivered, kb_rate(r->delivered_timed, r->run_s),
            (unsigned long long)r->expected);
    fprintf(f,
            "\"loss\":%llu,\"duplicates\":%llu,\"order_errors\":%llu,\"corrupt\":%llu,"
            "\"unexpected\":%llu,\"errors\":%llu,",
            (unsigned long long)r->loss, (unsigned long long)r->dups, (unsigned long long)r->order,
            (unsigned long long)r->corrupt, (unsigned long long)r->unexpected,
            (unsigned long long)r->errors);
    fprintf(f, "\"ops\":%llu,\"ops_rate\":%.0f,", (unsigned long long)r->ops,
            kb_rate(r->ops_timed, r->run_s));
    fprintf(f, "\"polls\":%llu,\"empty_polls\":%llu,", (unsigned long long)r->polls,
            (unsigned long long)r->empty_polls);
    fprintf(f,
            "\"lat_count\":%llu,\"lat_p50_us\":%.1f,\"lat_p99_us\":%.1f,\"lat_p999_us\":%.1f,"
            "\"lat_max_us\":%.1f,\"lat_mean_us\":%.1f,",
            (unsigned long long)r->lat.count, (double)kr_bench_hist_quantile(&r->lat, 0.5) / 1e3,
            (double)kr_bench_hist_quantile(&r->lat, 0.99) / 1e3,
            (double)kr_bench_hist_quantile(&r->lat, 0.999) / 1e3, (double)r->lat.max / 1e3,
            kr_bench_hist_mean(&r->lat) / 1e3);
    long per_conn = -1;
    if (r->rss_before_kb >= 0 && r->rss_after_kb >= 0 && r->connections)
        per_conn = (long)((r->rss_after_kb - r->rss_before_kb) * 1024.0 / (double)r->connections);
    fprintf(f, "\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,\"rss_per_conn_bytes\":%ld,",
            r->rss_before_kb, r->rss_after_kb, per_conn);
    /* the server's CPU in the timed phase, and what it did per CPU-second */
    fprintf(f, "\"server_cpu_s\":%.3f,\"per_server_cpu_s\":%.0f,", r->server_cpu_s,
            kb_per_server_cpu_s(c, r));
    fprintf(f,
            "\"retro_subs\":%llu,\"not_found\":%llu,\"replayed\":%llu,\"replay_s\":%.3f,"
            "\"replay_rate\":%.0f,",
            (unsigned long long)r->retro_subs, (unsigned long long)r->not_found,
            (unsigned long long)r->replayed, r->replay_s, kb_rate(r->replayed, r->replay_s));
    if (c->scenario == KR_BENCH_SC_RESUME) {
        kb_json_str(f, "resume_mode", kb_resume_mode_names[c->resume_mode]);
        fprintf(f,
                "\"jitter_ms\":%u,\"cut_at_s\":%.3f,\"cut\":%llu,\"live_again\":%llu,"
                "\"live_p50_ms\":%.3f,\"live_p99_ms\":%.3f,\"live_max_ms\":%.3f,"
                "\"resync_notices\":%llu,\"resync_topics\":%llu,\"reload_topics\":%llu,"
                "\"covered\":%llu,\"lost\":%llu,",
                c->jitter_ms, c->cut_at_s, (unsigned long long)r->cut,
                (unsigned long long)r->live_again,
                (double)kr_bench_hist_quantile(&r->live, 0.5) / 1e6,
                (double)kr_bench_hist_quantile(&r->live, 0.99) / 1e6, (double)r->live.max / 1e6,
                (unsigned long long)r->resync_notices, (unsigned long long)r->resync_topics,
                (unsigned long long)r->reload_topics, (unsigned long long)r->covered,
                (unsigned long long)r->loss);
        kb_json_str(f, "move_host", c->move_host);
        fprintf(f, "\"move_port\":%u,\"drain\":%s,", c->move_port,
                c->drain_admin[0] ? "true" : "false");
        kb_json_str(f, "drain_reply", r->drain_reply);
        fprintf(f,
                "\"stayed\":%llu,\"away_p50_ms\":%.3f,\"away_p99_ms\":%.3f,"
                "\"away_max_ms\":%.3f,\"all_live_s\":%.3f,",
                (unsigned long long)r->stayed,
                (double)kr_bench_hist_quantile(&r->away, 0.5) / 1e6,
                (double)kr_bench_hist_quantile(&r->away, 0.99) / 1e6, (double)r->away.max / 1e6,
                r->all_live_s);
    }
    if (c->scenario == KR_BENCH_SC_STORM) {
        fprintf(f,
                "\"storm_topics\":%llu,\"storm_bytes\":%llu,\"storm_one_s\":%.6f,"
                "\"storm_one_rate\":%.0f,\"storm_unsub_s\":%.6f,\"storm_conns\":%llu,"
                "\"storm_topics_per_conn\":%u,\"storm_answered\":%llu,\"storm_all_s\":%.6f,"
                "\"storm_all_rate\":%.0f,\"storm_p50_ms\":%.3f,\"storm_p99_ms\":%.3f,"
                "\"storm_max_ms\":%.3f,",
                (unsigned long long)r->storm_topics, (unsigned long long)r->storm_bytes,
                r->storm_one_s, kb_rate(r->storm_topics, r->storm_one_s), r->storm_unsub_s,
                (unsigned long long)r->storm_conns, c->topics_per_sub,
                (unsigned long long)r->storm.count, r->storm_all_s,
                kb_rate(r->storm.count * c->topics_per_sub, r->storm_all_s),
                (double)kr_bench_hist_quantile(&r->storm, 0.5) / 1e6,
                (double)kr_bench_hist_quantile(&r->storm, 0.99) / 1e6, (double)r->storm.max / 1e6);
    }
    kb_json_str(f, "error", r->error);
    fputs("\"version\":1}\n", f);
    fflush(f);
}

static void kb_print_storm(const struct kr_bench_cfg *c, const struct kr_bench_result *r, int rc)
{
    FILE *f = stdout;
    char a[32], b[32], d[32];
    fprintf(f, "  setup        (a) one request of %u new topics; (b) %u connections x %u new "
               "topics at once\n",
            c->topics, c->subs, c->topics_per_sub);
    if (r->storm_one_s > 0) {
        fprintf(f, "  one request  %llu topics (%.1f MB) STORED in %s: %.0f topics/s\n",
                (unsigned long long)r->storm_topics, (double)r->storm_bytes / 1e6,
                kb_fmt_ns(a, sizeof(a), (uint64_t)(r->storm_one_s * 1e9)),
                kb_rate(r->storm_topics, r->storm_one_s));
        if (r->storm_unsub_s > 0)
            fprintf(f, "               all unsubscribed in one request in %s: %.0f topics/s\n",
                    kb_fmt_ns(a, sizeof(a), (uint64_t)(r->storm_unsub_s * 1e9)),
                    kb_rate(r->storm_topics, r->storm_unsub_s));
    }
    if (r->storm.count) {
        fprintf(f, "  at once      %llu of %llu connections STORED, the last after %s: %.0f "
                   "topics/s\n",
                (unsigned long long)r->storm.count, (unsigned long long)r->storm_conns,
                kb_fmt_ns(a, sizeof(a), (uint64_t)(r->storm_all_s * 1e9)),
                kb_rate(r->storm.count * c->topics_per_sub, r->storm_all_s));
        fprintf(f, "               start -> STORED per connection: p50 %s  p99 %s  max %s\n",
                kb_fmt_ns(a, sizeof(a), kr_bench_hist_quantile(&r->storm, 0.5)),
                kb_fmt_ns(b, sizeof(b), kr_bench_hist_quantile(&r->storm, 0.99)),
                kb_fmt_ns(d, sizeof(d), r->storm.max));
    }
    fprintf(f, "  errors       %llu connection errors%s%s\n", (unsigned long long)r->errors,
            r->error[0] ? "; first: " : "", r->error);
    fprintf(f, "  result       %s\n", rc < 0 ? "FAILED" : "OK");
}

static void kb_print_summary(const struct kr_bench_cfg *c, const struct kr_bench_result *r, int rc)
{
    FILE *f = stdout;
    char a[32], b[32], d[32], e[32], m[32];
    if (c->scenario == KR_BENCH_SC_STORM) {
        fprintf(f, "kraken-bench: storm scenario against %s at %s:%u\n", kb_proto_names[c->proto],
                c->host, c->port);
        kb_print_storm(c, r, rc);
        return;
    }
    fprintf(f, "kraken-bench: %s scenario against %s at %s:%u (threads %u, pipeline %u", 
            kb_scenario_names[c->scenario], kb_proto_names[c->proto], c->host, c->port, c->threads,
            c->pipeline);
    if (c->proto == KR_BENCH_PROTO_KRAKEN)
        fprintf(f, ", batch %u, poll %s", c->batch, c->poll_ms ? "paced" : "back to back");
    fprintf(f, ")\n");
    if ((c->sub_host[0] && strcmp(c->sub_host, c->host) != 0) || (c->sub_port && c->sub_port != c->port))
        fprintf(f, "  topology     publishers at %s:%u, subscribers at %s:%u\n", c->host, c->port,
                c->sub_host[0] ? c->sub_host : c->host, c->sub_port ? c->sub_port : c->port);
    switch (c->scenario) {
    case KR_BENCH_SC_CHURN:
        fprintf(f, "  setup        %u connections churning over %u topics\n", c->subs, c->topics);
        break;
    case KR_BENCH_SC_CONNS:
        fprintf(f, "  setup        %u idle connections x %u of %u topics\n", c->conns,
                c->topics_per_sub, c->topics);
        break;
    default:
        fprintf(f, "  setup        %u subscribers x %u of %u topics, %u publishers, %u-byte payloads",
                c->subs, c->topics_per_sub, c->topics, c->pubs, c->msg_size);
        if (c->rate > 0)
            fprintf(f, ", %.0f msgs/s", c->rate);
        fputc('\n', f);
    }
    if (rc < 0 && !r->run_s) {
        fprintf(f, "  connect      %llu connections: gave up after %.2f s\n",
                (unsigned long long)r->connections, r->connect_s);
        fprintf(f, "  result       %s: %s\n", r->unsupported ? "UNSUPPORTED" : "FAILED", r->error);
        return;
    }
    fprintf(f, "  connect      %llu connections connected and subscribed in %.2f s\n",
            (unsigned long long)r->connections, r->connect_s);
    if (r->probes)
        fprintf(f, "  probe        every subscriber's interest reached the publishers' server in "
                   "%.3f s (%llu probes)\n",
                r->probe_s, (unsigned long long)r->probes);
    fprintf(f, "  run          %.2f s timed, then %.2f s drain%s\n", r->run_s, r->drain_s,
            r->drain_timed_out ? " (bound reached)" : "");
    if (r->server_cpu_s > 0)
        fprintf(f, "  server CPU   %.2f s in the timed phase (%.0f %% of a CPU): %.0f %s per CPU-second\n",
                r->server_cpu_s, 100.0 * r->server_cpu_s / r->run_s, kb_per_server_cpu_s(c, r),
                c->scenario == KR_BENCH_SC_CHURN ? "operations" : "deliveries");
    if (c->scenario == KR_BENCH_SC_CHURN) {
        fprintf(f, "  churn        %llu ops acknowledged, %.0f ops/s\n", (unsigned long long)r->ops,
                kb_rate(r->ops_timed, r->run_s));
    } else if (c->scenario == KR_BENCH_SC_CONNS) {
        if (r->rss_before_kb >= 0 && r->rss_after_kb >= 0)
            fprintf(f, "  server RSS   %ld KiB before, %ld KiB with the connections: %.0f bytes per connection\n",
                    r->rss_before_kb, r->rss_after_kb,
                    (double)(r->rss_after_kb - r->rss_before_kb) * 1024.0 / (double)r->connections);
        else
            fprintf(f, "  server RSS   not measured (give --server-pid)\n");
    } else {
        fprintf(f, "  published    %llu messages, %.0f/s\n", (unsigned long long)r->published,
                kb_rate(r->published_timed, r->run_s));
        if (c->scenario == KR_BENCH_SC_RETRO) {
            fprintf(f, "  replay       %llu subscribers", (unsigned long long)r->retro_subs);
            if (r->not_found)
                fprintf(f, "; %llu answered NOT_FOUND (the history no longer reached their horizon, "
                           "so nothing was replayed to them)",
                        (unsigned long long)r->not_found);
            fputc('\n', f);
            fprintf(f, "               %llu messages replayed of %llu expected in %.3f s, %.0f msgs/s\n",
                    (unsigned long long)r->replayed, (unsigned long long)r->expected, r->replay_s,
                    kb_rate(r->replayed, r->replay_s));
        } else {
            fprintf(f, "  delivered    %llu of %llu expected; %.0f/s during the timed phase\n",
                    (unsigned long long)r->delivered, (unsigned long long)r->expected,
                    kb_rate(r->delivered_timed, r->run_s));
        }
        if (c->scenario == KR_BENCH_SC_RESUME) {
            if (c->drain_admin[0])
                fprintf(f, "  drain        at %.2f s via %s ('%s'): %llu subscribers closed by the "
                           "node (%llu never), moved to %s:%u after 0..%u ms, %s\n",
                        c->cut_at_s, c->drain_admin, r->drain_reply, (unsigned long long)r->cut,
                        (unsigned long long)r->stayed, c->move_host, c->move_port, c->jitter_ms,
                        c->resume_mode == KR_BENCH_RESUME_SCRATCH ? "subscribing again from scratch"
                                                                  : "resuming from their last position");
            else
                fprintf(f, "  cut          %llu subscribers closed at %.2f s, back%s after 0..%u ms, %s\n",
                        (unsigned long long)r->cut, c->cut_at_s, c->move_port ? " elsewhere" : "",
                        c->jitter_ms,
                        c->resume_mode == KR_BENCH_RESUME_SCRATCH ? "subscribing again from scratch"
                                                                  : "resuming from their last position");
            fprintf(f, "  live again   %llu of %llu, reconnect -> answer: p50 %s  p99 %s  max %s\n",
                    (unsigned long long)r->live_again, (unsigned long long)r->cut,
                    kb_fmt_ns(a, sizeof(a), kr_bench_hist_quantile(&r->live, 0.5)),
                    kb_fmt_ns(b, sizeof(b), kr_bench_hist_quantile(&r->live, 0.99)),
                    kb_fmt_ns(d, sizeof(d), r->live.max));
            fprintf(f, "  away         close -> answer (jitter included): p50 %s  p99 %s  max %s; "
                       "the last one live %.3f s after the %s\n",
                    kb_fmt_ns(a, sizeof(a), kr_bench_hist_quantile(&r->away, 0.5)),
                    kb_fmt_ns(b, sizeof(b), kr_bench_hist_quantile(&r->away, 0.99)),
                    kb_fmt_ns(d, sizeof(d), r->away.max), r->all_live_s,
                    c->drain_admin[0] ? "drain" : "cut");
            fprintf(f, "  continuity   %llu replayed; %llu resync notices naming %llu topics; %llu "
                       "topics to reload; %llu messages covered by a notice; %llu lost\n",
                    (unsigned long long)r->replayed, (unsigned long long)r->resync_notices,
                    (unsigned long long)r->resync_topics, (unsigned long long)r->reload_topics,
                    (unsigned long long)r->covered, (unsigned long long)r->loss);
        }
        if (r->polls)
            fprintf(f, "  polls        %llu `get messages`, %.1f%% of them empty\n",
                    (unsigned long long)r->polls, 100.0 * (double)r->empty_polls / (double)r->polls);
        fprintf(f, "  accounting   loss %llu, duplicates %llu, order errors %llu, corrupt %llu, unexpected %llu\n",
                (unsigned long long)r->loss, (unsigned long long)r->dups, (unsigned long long)r->order,
                (unsigned long long)r->corrupt, (unsigned long long)r->unexpected);
    }
    if (r->lat.count)
        fprintf(f, "  latency      %s: p50 %s  p99 %s  p99.9 %s  max %s  (mean %s, n=%llu)\n",
                c->scenario == KR_BENCH_SC_CHURN    ? "request -> ack"
                : c->scenario == KR_BENCH_SC_RESUME ? "publish -> receive, live"
                                                    : "publish -> receive",
                kb_fmt_ns(a, sizeof(a), kr_bench_hist_quantile(&r->lat, 0.5)),
                kb_fmt_ns(b, sizeof(b), kr_bench_hist_quantile(&r->lat, 0.99)),
                kb_fmt_ns(d, sizeof(d), kr_bench_hist_quantile(&r->lat, 0.999)),
                kb_fmt_ns(e, sizeof(e), r->lat.max),
                kb_fmt_ns(m, sizeof(m), (uint64_t)kr_bench_hist_mean(&r->lat)),
                (unsigned long long)r->lat.count);
    fprintf(f, "  errors       %llu connection errors%s%s\n", (unsigned long long)r->errors,
            r->error[0] ? "; first: " : "", r->error);
    const char *st = kb_status(r, rc);
    fprintf(f, "  result       %s\n", strcmp(st, "ok") == 0 ? "OK" : st);
}

static void kb_sigint(int sig)
{
    (void)sig;
    kr_bench_request_stop();
}

enum {
    OPT_PROTO = 256,
    OPT_HOST,
    OPT_PORT,
    OPT_SCENARIO,
    OPT_THREADS,
    OPT_PIPELINE,
    OPT_BATCH,
    OPT_SUBS,
    OPT_PUBS,
    OPT_TOPICS,
    OPT_TPS,
    OPT_MSG_SIZE,
    OPT_CONNS,
    OPT_MESSAGES,
    OPT_RATE,
    OPT_POLL_MS,
    OPT_DURATION,
    OPT_DRAIN,
    OPT_CONNECT_TIMEOUT,
    OPT_SERVER_PID,
    OPT_SEED,
    OPT_PREFIX,
    OPT_JSON,
    OPT_QUIET,
    OPT_SUB_HOST,
    OPT_SUB_PORT,
    OPT_PROBE,
    OPT_NO_PROBE,
    OPT_RESUME_MODE,
    OPT_JITTER_MS,
    OPT_CUT_AT,
    OPT_MOVE_HOST,
    OPT_MOVE_PORT,
    OPT_DRAIN_ADMIN,
    OPT_SHOW_LOST,
};

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"proto", required_argument, NULL, OPT_PROTO},
        {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, OPT_PORT},
        {"scenario", required_argument, NULL, OPT_SCENARIO},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"pipeline", required_argument, NULL, OPT_PIPELINE},
        {"batch", required_argument, NULL, OPT_BATCH},
        {"subs", required_argument, NULL, OPT_SUBS},
        {"pubs", required_argument, NULL, OPT_PUBS},
        {"topics", required_argument, NULL, OPT_TOPICS},
        {"topics-per-sub", required_argument, NULL, OPT_TPS},
        {"msg-size", required_argument, NULL, OPT_MSG_SIZE},
        {"conns", required_argument, NULL, OPT_CONNS},
        {"messages", required_argument, NULL, OPT_MESSAGES},
        {"rate", required_argument, NULL, OPT_RATE},
        {"poll-ms", required_argument, NULL, OPT_POLL_MS},
        {"duration", required_argument, NULL, OPT_DURATION},
        {"drain-timeout", required_argument, NULL, OPT_DRAIN},
        {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
        {"server-pid", required_argument, NULL, OPT_SERVER_PID},
        {"seed", required_argument, NULL, OPT_SEED},
        {"prefix", required_argument, NULL, OPT_PREFIX},
        {"json", no_argument, NULL, OPT_JSON},
        {"sub-host", required_argument, NULL, OPT_SUB_HOST},
        {"sub-port", required_argument, NULL, OPT_SUB_PORT},
        {"probe", no_argument, NULL, OPT_PROBE},
        {"no-probe", no_argument, NULL, OPT_NO_PROBE},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"resume-mode", required_argument, NULL, OPT_RESUME_MODE},
        {"jitter-ms", required_argument, NULL, OPT_JITTER_MS},
        {"cut-at", required_argument, NULL, OPT_CUT_AT},
        {"move-host", required_argument, NULL, OPT_MOVE_HOST},
        {"move-port", required_argument, NULL, OPT_MOVE_PORT},
        {"drain-admin", required_argument, NULL, OPT_DRAIN_ADMIN},
        {"show-lost", required_argument, NULL, OPT_SHOW_LOST},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct kr_bench_cfg cfg = {
        .proto = KR_BENCH_PROTO_KRAKEN,
        .scenario = KR_BENCH_SC_FANOUT,
        .threads = 2,
        .pipeline = 16,
        .batch = 1,
        .msg_size = 64,
        .duration_s = 10,
        .drain_timeout_s = 10,
        .connect_timeout_s = 60,
        .seed = 1,
        .progress = 1,
        .jitter_ms = 500,
        .cut_at_s = -1,
    };
    snprintf(cfg.host, sizeof(cfg.host), "127.0.0.1");
    snprintf(cfg.prefix, sizeof(cfg.prefix), "kb.");
    int json = 0, have_port = 0, probe = -1, have_sub_port = 0;
    int set_subs = 0, set_pubs = 0, set_topics = 0, set_tps = 0, set_rate = 0, set_conns = 0,
        set_msgs = 0, set_batch = 0, set_resume = 0;
    unsigned long long u;
    double d;
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'h':
            kb_usage(stdout);
            return KB_EXIT_OK;
        case OPT_PROTO: {
            int v = strcmp(optarg, "memcached") == 0 ? KR_BENCH_PROTO_KRAKEN
                    : strcmp(optarg, "resp") == 0    ? KR_BENCH_PROTO_REDIS
                                                     : kb_lookup(kb_proto_names, 3, optarg);
            if (v < 0)
                return kb_bad("unknown --proto '%s' (kraken, redis or nats)", optarg);
            cfg.proto = (enum kr_bench_proto)v;
            break;
        }
        case OPT_SCENARIO: {
            int v = kb_lookup(kb_scenario_names, 8, optarg);
            if (v < 0)
                return kb_bad("unknown --scenario '%s' (fanout, broadcast, latency, churn, conns, "
                              "retro, resume, storm)",
                              optarg);
            cfg.scenario = (enum kr_bench_scenario)v;
            break;
        }
        case OPT_HOST:
            if (!*optarg || strlen(optarg) >= sizeof(cfg.host))
                return kb_bad("bad --host '%s'", optarg);
            snprintf(cfg.host, sizeof(cfg.host), "%s", optarg);
            break;
        case OPT_SUB_HOST:
            if (!*optarg || strlen(optarg) >= sizeof(cfg.sub_host))
                return kb_bad("bad --sub-host '%s'", optarg);
            snprintf(cfg.sub_host, sizeof(cfg.sub_host), "%s", optarg);
            break;
        case OPT_PROBE:
        case OPT_NO_PROBE:
            probe = ch == OPT_PROBE;
            break;
        case OPT_PREFIX:
            if (strlen(optarg) > 40 || strpbrk(optarg, " \r\n\t*>"))
                return kb_bad("bad --prefix '%s' (at most 40 bytes, no spaces, '*' or '>')", optarg);
            snprintf(cfg.prefix, sizeof(cfg.prefix), "%s", optarg);
            break;
#define KB_UINT(OPT, NAME, LO, HI, DST, FLAG)                                                      \
    case OPT:                                                                                      \
        if (kb_parse_uint(NAME, optarg, LO, HI, &u) < 0)                                           \
            return KB_EXIT_USAGE;                                                                  \
        DST = (unsigned)u;                                                                         \
        FLAG = 1;                                                                                  \
        break;
            KB_UINT(OPT_PORT, "--port", 1, 65535, cfg.port, have_port)
            KB_UINT(OPT_SUB_PORT, "--sub-port", 1, 65535, cfg.sub_port, have_sub_port)
            KB_UINT(OPT_THREADS, "--threads", 1, 256, cfg.threads, u)
            KB_UINT(OPT_PIPELINE, "--pipeline", 1, 65536, cfg.pipeline, u)
            KB_UINT(OPT_BATCH, "--batch", 1, KR_BENCH_MAX_BATCH, cfg.batch, set_batch)
            KB_UINT(OPT_SUBS, "--subs", 0, 1000000, cfg.subs, set_subs)
            KB_UINT(OPT_PUBS, "--pubs", 0, 100000, cfg.pubs, set_pubs)
            KB_UINT(OPT_TOPICS, "--topics", 1, 100000000, cfg.topics, set_topics)
            KB_UINT(OPT_TPS, "--topics-per-sub", 1, 100000, cfg.topics_per_sub, set_tps)
            KB_UINT(OPT_MSG_SIZE, "--msg-size", KR_BENCH_STAMP_BYTES, 64u << 20, cfg.msg_size, u)
            KB_UINT(OPT_CONNS, "--conns", 1, 1000000, cfg.conns, set_conns)
            KB_UINT(OPT_POLL_MS, "--poll-ms", 0, 60000, cfg.poll_ms, u)
#undef KB_UINT
        case OPT_MESSAGES:
            if (kb_parse_uint("--messages", optarg, 1, UINT64_C(1) << 40, &u) < 0)
                return KB_EXIT_USAGE;
            cfg.messages = u;
            set_msgs = 1;
            break;
        case OPT_SEED:
            if (kb_parse_uint("--seed", optarg, 0, UINT64_MAX, &u) < 0)
                return KB_EXIT_USAGE;
            cfg.seed = u;
            break;
        case OPT_SERVER_PID:
            if (kb_parse_uint("--server-pid", optarg, 1, 1u << 30, &u) < 0)
                return KB_EXIT_USAGE;
            cfg.server_pid = (long)u;
            break;
        case OPT_RATE:
            if (kb_parse_double("--rate", optarg, 0, 1e9, &d) < 0)
                return KB_EXIT_USAGE;
            cfg.rate = d;
            set_rate = 1;
            break;
        case OPT_DURATION:
            if (kb_parse_double("--duration", optarg, 0.001, 86400, &d) < 0)
                return KB_EXIT_USAGE;
            cfg.duration_s = d;
            break;
        case OPT_DRAIN:
            if (kb_parse_double("--drain-timeout", optarg, 0.001, 3600, &d) < 0)
                return KB_EXIT_USAGE;
            cfg.drain_timeout_s = d;
            break;
        case OPT_CONNECT_TIMEOUT:
            if (kb_parse_double("--connect-timeout", optarg, 0.001, 3600, &d) < 0)
                return KB_EXIT_USAGE;
            cfg.connect_timeout_s = d;
            break;
        case OPT_RESUME_MODE: {
            int v = kb_lookup(kb_resume_mode_names, 2, optarg);
            if (v < 0)
                return kb_bad("unknown --resume-mode '%s' (token or scratch)", optarg);
            cfg.resume_mode = (enum kr_bench_resume_mode)v;
            set_resume = 1;
            break;
        }
        case OPT_JITTER_MS:
            if (kb_parse_uint("--jitter-ms", optarg, 0, 600000, &u) < 0)
                return KB_EXIT_USAGE;
            cfg.jitter_ms = (unsigned)u;
            set_resume = 1;
            break;
        case OPT_CUT_AT:
            if (kb_parse_double("--cut-at", optarg, 0, 86400, &d) < 0)
                return KB_EXIT_USAGE;
            cfg.cut_at_s = d;
            set_resume = 1;
            break;
        case OPT_MOVE_HOST:
            if (!*optarg || strlen(optarg) >= sizeof(cfg.move_host))
                return kb_bad("bad --move-host '%s'", optarg);
            snprintf(cfg.move_host, sizeof(cfg.move_host), "%s", optarg);
            set_resume = 1;
            break;
        case OPT_MOVE_PORT:
            if (kb_parse_uint("--move-port", optarg, 1, 65535, &u) < 0)
                return KB_EXIT_USAGE;
            cfg.move_port = (unsigned)u;
            set_resume = 1;
            break;
        case OPT_DRAIN_ADMIN:
            if (!*optarg || strlen(optarg) >= sizeof(cfg.drain_admin))
                return kb_bad("bad --drain-admin '%s' (a Unix socket path of at most %zu bytes)",
                              optarg, sizeof(cfg.drain_admin) - 1);
            snprintf(cfg.drain_admin, sizeof(cfg.drain_admin), "%s", optarg);
            set_resume = 1;
            break;
        case OPT_SHOW_LOST:
            if (kb_parse_uint("--show-lost", optarg, 0, 1000000, &u) < 0)
                return KB_EXIT_USAGE;
            cfg.show_lost = (unsigned)u;
            set_resume = 1;
            break;
        case OPT_JSON:
            json = 1;
            break;
        case OPT_QUIET:
            cfg.progress = 0;
            break;
        case ':':
            return kb_bad("option '%s' needs a value", argv[optind - 1]);
        default:
            return kb_bad("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return kb_bad("unexpected argument '%s'", argv[optind]);

    /* scenario defaults for what was not given */
    unsigned dsubs = 100, dpubs = 4, dtopics = 1000, dtps = 10;
    switch (cfg.scenario) {
    case KR_BENCH_SC_BROADCAST:
        dsubs = 200;
        dpubs = 1;
        dtopics = 1;
        dtps = 1;
        if ((set_topics && cfg.topics != 1) || (set_tps && cfg.topics_per_sub != 1))
            return kb_bad("broadcast puts everyone on one topic: drop --topics/--topics-per-sub");
        break;
    case KR_BENCH_SC_LATENCY:
        if (!set_rate)
            cfg.rate = 10000;
        break;
    case KR_BENCH_SC_CHURN:
        break;
    case KR_BENCH_SC_CONNS:
        dtps = 1;
        if (!set_conns)
            cfg.conns = 1000;
        break;
    case KR_BENCH_SC_RETRO:
        dsubs = 10;
        dpubs = 1;
        dtopics = 100;
        if (!set_msgs)
            cfg.messages = 5000;
        if (cfg.proto != KR_BENCH_PROTO_KRAKEN)
            return kb_bad("the retro scenario needs --proto kraken (register and replay are "
                          "Kraken's own)");
        break;
    case KR_BENCH_SC_STORM:
        dsubs = 100;
        dtopics = 100000;
        dtps = 1000;
        if (cfg.proto != KR_BENCH_PROTO_KRAKEN)
            return kb_bad("the storm scenario needs --proto kraken (one `set subscribe` of many "
                          "topics)");
        if (set_pubs || set_rate || set_msgs || set_batch || set_conns)
            return kb_bad("the storm scenario takes --topics, --subs and --topics-per-sub only");
        break;
    case KR_BENCH_SC_RESUME:
        if (!set_rate)
            cfg.rate = 10000;
        if (cfg.proto == KR_BENCH_PROTO_NATS)
            return kb_bad("the resume scenario needs --proto kraken (memcached) or redis (RESP) "
                          "against Kraken: positions and resume are Kraken's own");
        if (cfg.cut_at_s < 0)
            cfg.cut_at_s = cfg.duration_s / 2;
        if (cfg.cut_at_s >= cfg.duration_s)
            return kb_bad("--cut-at %.3f is not inside --duration %.3f", cfg.cut_at_s,
                          cfg.duration_s);
        break;
    default:
        break;
    }
    if (set_resume && cfg.scenario != KR_BENCH_SC_RESUME)
        return kb_bad("--resume-mode, --jitter-ms, --cut-at, --move-host, --move-port and "
                      "--drain-admin, --show-lost belong to the resume scenario");
    if (!set_subs)
        cfg.subs = dsubs;
    if (!set_pubs)
        cfg.pubs = dpubs;
    if (!set_topics)
        cfg.topics = dtopics;
    if (!set_tps)
        cfg.topics_per_sub = dtps;
    if (!have_port)
        cfg.port = cfg.proto == KR_BENCH_PROTO_KRAKEN ? 12355 : cfg.proto == KR_BENCH_PROTO_REDIS ? 6379 : 4222;
    /* probes: by default when subscribers and publishers use different servers */
    int split = (cfg.sub_host[0] && strcmp(cfg.sub_host, cfg.host) != 0) ||
                (have_sub_port && cfg.sub_port != cfg.port);
    cfg.probe = probe >= 0 ? probe : split;
    /* resume: where cut (or drained) subscribers go; with a drain, never back to the node
     * that closed them */
    if (cfg.move_host[0] || cfg.move_port || cfg.drain_admin[0]) {
        if (!cfg.move_host[0])
            snprintf(cfg.move_host, sizeof(cfg.move_host), "%s", cfg.host);
        if (!cfg.move_port)
            cfg.move_port = cfg.port;
        const char *sh = cfg.sub_host[0] ? cfg.sub_host : cfg.host;
        unsigned sp = cfg.sub_port ? cfg.sub_port : cfg.port;
        if (cfg.drain_admin[0] && strcmp(cfg.move_host, sh) == 0 && cfg.move_port == sp)
            return kb_bad("--drain-admin drains the subscribers' node (%s:%u): they must move "
                          "elsewhere (--sub-port for the drained node, --port or --move-port "
                          "for the other)",
                          sh, sp);
    }
    if (set_batch && cfg.proto != KR_BENCH_PROTO_KRAKEN && cfg.batch != 1)
        return kb_bad("--batch is Kraken only (Redis and NATS publish one message per command)");
    if (cfg.topics_per_sub > cfg.topics && cfg.scenario != KR_BENCH_SC_STORM)
        return kb_bad("--topics-per-sub %u exceeds --topics %u", cfg.topics_per_sub, cfg.topics);
    uint64_t nsubs = cfg.scenario == KR_BENCH_SC_CONNS ? cfg.conns : cfg.subs;
    if (cfg.scenario != KR_BENCH_SC_CHURN && nsubs * cfg.topics_per_sub > UINT64_C(100000000))
        return kb_bad("subscribers x topics-per-sub is too large");

    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, kb_sigint);
    static struct kr_bench_result res;
    int rc = kr_bench_run(&cfg, &res);
    if (json)
        kb_print_json(&cfg, &res, rc);
    else
        kb_print_summary(&cfg, &res, rc);
    if (rc < 0) {
        fprintf(stderr, "kraken-bench: %s\n", res.error[0] ? res.error : "the run failed");
        return KB_EXIT_RUN;
    }
    if (strcmp(kb_status(&res, rc), "ok") != 0)
        return KB_EXIT_ACCOUNTING;
    return KB_EXIT_OK;
}
