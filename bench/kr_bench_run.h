/* kraken-bench's load engine: connection roles, worker threads (one libuv loop each), the
 * run phases and the accounting. Private to the kraken-bench executable.
 *
 * kr_bench_run() is called from the main thread; it starts cfg->threads worker threads,
 * drives them through the phases (connect and subscribe, timed run, drain, optional replay,
 * stop), joins them and fills the result. Nothing here is shared between runs. */
#ifndef KR_BENCH_RUN_H
#define KR_BENCH_RUN_H

#include <stdint.h>

#include "kr_bench.h"
#include "kr_bench_proc.h"

enum kr_bench_proto {
    KR_BENCH_PROTO_KRAKEN,
    KR_BENCH_PROTO_REDIS,
    KR_BENCH_PROTO_NATS,
};

enum kr_bench_scenario {
    KR_BENCH_SC_FANOUT,
    KR_BENCH_SC_BROADCAST,
    KR_BENCH_SC_LATENCY,
    KR_BENCH_SC_CHURN,
    KR_BENCH_SC_CONNS,
    KR_BENCH_SC_RETRO,
    KR_BENCH_SC_RESUME,
    KR_BENCH_SC_STORM,
};

/* resume scenario: how a cut subscriber comes back */
enum kr_bench_resume_mode {
    KR_BENCH_RESUME_TOKEN,   /* resume from its last position token */
    KR_BENCH_RESUME_SCRATCH, /* subscribe again from scratch: every topic is to reload */
};

#define KR_BENCH_MAX_BATCH 4096

struct kr_bench_cfg {
    enum kr_bench_proto proto;
    enum kr_bench_scenario scenario;
    char host[256];
    unsigned port;
    char sub_host[256];      /* subscribers connect here ("" = host) */
    unsigned sub_port;       /* 0 = port */
    int probe;               /* 1: probe subscriber interest before the timed phase (on by
                              * default when subscribers and publishers use different servers) */
    unsigned threads;        /* worker threads, one libuv loop each */
    unsigned pipeline;       /* requests (Redis, Kraken) or unacknowledged commands (NATS) in flight */
    unsigned batch;          /* Kraken: publish entries per `set publish` request */
    unsigned subs;           /* subscriber connections (churn: churning connections) */
    unsigned pubs;           /* publisher connections */
    unsigned topics;         /* topic space */
    unsigned topics_per_sub; /* topics each subscriber holds */
    unsigned msg_size;       /* payload bytes */
    unsigned conns;          /* conns scenario: idle subscribed connections */
    unsigned poll_ms;        /* Kraken: pause after an empty poll */
    double duration_s;       /* timed phase */
    double drain_timeout_s;  /* bound on the drain (and on the retro replay) */
    double connect_timeout_s;
    double rate;             /* messages/s over all publishers (churn: ops/s); 0 = unlimited */
    uint64_t messages;       /* retro: messages published between register and subscribe */
    enum kr_bench_resume_mode resume_mode;
    unsigned jitter_ms;      /* resume: a cut subscriber reconnects after 0..jitter_ms */
    double cut_at_s;         /* resume: when the subscribers are cut, from the timed phase's start */
    char move_host[256];     /* resume: a cut subscriber reconnects here ("" = where it was) */
    unsigned move_port;      /* 0 = where it was */
    char drain_admin[108];   /* resume: at cut_at_s, send `drain` to this admin socket (the
                              * subscribers' node) instead of cutting; "" = the bench cuts */
    long server_pid;         /* conns: read this process's VmRSS; 0 = none */
    uint64_t seed;
    char prefix[64];         /* topic name prefix */
    int progress;            /* print a line each second on stderr */
    unsigned show_lost;      /* resume: describe up to this many lost messages on stderr */
};

struct kr_bench_result {
    int fatal;          /* the run could not complete (message in error) */
    int unsupported;    /* retro: the server rejected `set register` */
    char error[512];    /* first fatal or connection error, "" when none */
    double connect_s;   /* connect + subscribe barrier */
    double probe_s;     /* interest probes until every subscriber received one (0: none) */
    uint64_t probes;    /* probe messages published */
    double run_s;       /* timed phase */
    double drain_s;     /* publishers stopped .. counts settled */
    int drain_timed_out;
    uint64_t published; /* messages acknowledged by the server (NATS: by a PONG) */
    uint64_t published_timed;
    uint64_t expected;  /* deliveries owed to the subscribers */
    uint64_t delivered; /* deliveries received, duplicates included */
    uint64_t delivered_timed;
    uint64_t loss, dups, order, corrupt, unexpected;
    uint64_t errors;    /* connection or protocol errors (each closes a connection) */
    uint64_t ops;       /* churn: subscribe + unsubscribe acknowledgements */
    uint64_t ops_timed;
    uint64_t polls, empty_polls; /* Kraken subscribers: `get messages` sent, answered END */
    uint64_t connections;
    long rss_before_kb, rss_after_kb; /* -1 when not measured */
    double server_cpu_s; /* CPU time (user + system) the server used in the timed phase, from
                            /proc/<--server-pid>/stat; -1 when not measured */
    uint64_t retro_subs, not_found;
    uint64_t replayed; /* retro: messages replayed; resume: messages received after a resume
                        * that were published before its request was sent */
    double replay_s;
    struct kr_bench_hist lat; /* ns: publish -> receive (churn: request -> acknowledgement;
                               * resume: live messages only, replayed ones are left out) */
    /* resume scenario */
    uint64_t cut;            /* subscribers cut */
    uint64_t live_again;     /* cut subscribers whose resume (or resubscribe) was answered */
    uint64_t resync_notices; /* __kraken__:resync entries received */
    uint64_t resync_topics;  /* topics they named ('*': all of the subscriber's topics) */
    uint64_t reload_topics;  /* topics a client must reload: resync_topics, plus every topic
                              * of a subscriber that subscribed again from scratch */
    uint64_t covered;        /* acknowledged messages not received but covered by a notice
                              * (or a from-scratch resubscribe) on their topic */
    struct kr_bench_hist live; /* ns: reconnect -> resume's STORED */
    /* storm scenario */
    uint64_t storm_topics;      /* (a) new topics in the one request */
    uint64_t storm_bytes;       /* (a) the request's size */
    double storm_one_s;         /* (a) first byte sent -> STORED */
    double storm_unsub_s;       /* (a) unsubscribing them all in one request -> STORED */
    uint64_t storm_conns;       /* (b) connections subscribing at once */
    double storm_all_s;         /* (b) start -> the last STORED */
    struct kr_bench_hist storm; /* (b) ns: start -> each connection's STORED */
    /* resume with --drain-admin: the node's answer to `drain`, subscribers it never closed,
     * close -> live again per subscriber (jitter included), drain sent -> last one live */
    char drain_reply[160];
    uint64_t stayed;
    struct kr_bench_hist away;
    double all_live_s;
};

/* Run one benchmark. Returns 0 when it ran (check the result's counters), or -1 with
 * res->error set when it could not (connection refused, the barrier never completed, ...).
 * Main thread only; not reentrant. */
int kr_bench_run(const struct kr_bench_cfg *cfg, struct kr_bench_result *res);

/* The storm scenario (see --help): called by kr_bench_run. Returns 0 when every request was
 * answered STORED, or -1 with res->error set. Main thread only. */
int kr_bench_storm(const struct kr_bench_cfg *cfg, struct kr_bench_result *res);

/* Ask a running kr_bench_run to end its timed phase early (async-signal-safe). */
void kr_bench_request_stop(void);


#endif
