/* Internals of the cluster link shared by its files (not part of the module's interface:
 * that is kr_cluster.h). The link's code is split by the thread that runs it:
 *
 *  - kr_cluster.c (the control thread): options, create, start, stop, destroy; and the few
 *    calls the net threads make (kr_cluster_send / _flush / _recv) and the stats (any thread).
 *  - kr_cluster_io.c (the link thread, and libnats' event-loop callbacks on any thread):
 *    the NATS connection's socket on the link thread's loop. libnats has no reader or
 *    flusher thread: the link thread reads and writes its socket.
 *  - kr_cluster_link.c (the link thread, its own libuv loop): the loop's callbacks, the
 *    topic -> NATS subscription map and its lingers, subscribe barriers and their answers
 *    towards the net threads, interest from the shards, forwarding entries to the cluster.
 *  - kr_cluster_peers.c (the link thread): probes, peers and heartbeats, the items libnats'
 *    threads queued, lost forwards (the recent windows and the notices), resyncs.
 *  - kr_cluster_resume.c (the link thread): resumes of other nodes' tokens (asking them over
 *    their node subject, merging the answer into the resume's barrier) and of this node's
 *    tokens by other nodes (the shards' history, answered in chunks).
 *  - kr_cluster_deliver.c (libnats' threads): the one message-delivery thread
 *    (nats_SetMessageDeliveryPoolSize(1), every subscription on the global pool, so
 *    messages are handled in the order they arrived) decodes entries, drops duplicates by
 *    origin and sequence, injects the rest into the shards on in_idx, answers probes and
 *    hands the other control messages to the link thread through a small mutex-protected
 *    list of items (control traffic only: heartbeats, probe answers, lost notices); the
 *    connection callbacks, on libnats' own threads, only queue an item.
 *
 * struct kr_cluster's fields are grouped by the thread that owns them (see the comments in
 * it); each declaration below says which thread calls it. */
#ifndef KR_CLUSTER_INT_H
#define KR_CLUSTER_INT_H

#include <ck_pr.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "kr_cluster.h"

#define KR_CL_TICK_MS 100
#define KR_CL_HB_MS 1000          /* heartbeat period */
#define KR_CL_PEER_DEAD_MS 3500   /* a node not heard from this long has left */
#define KR_CL_PROBE_TIMEOUT_MS 30000 /* interest floods take the routes seconds */
#define KR_CL_BATCH 16384         /* events (a block counts its topics) per pass */
#define KR_CL_FLUSH_TIMEOUT_MS 1000 /* a flush for cluster_publish_ack flushed waits this long */
/* The link writes what libnats buffered at the end of each pass, and within a pass each
 * time this much is buffered; past KR_CL_BUFFERED_MAX (the socket does not take it) it
 * forwards no more until the socket drained. */
#define KR_CL_WRITE_BYTES (64 * 1024)
#define KR_CL_BUFFERED_MAX (1024 * 1024)
#define KR_CL_DROPS_PER_TICK 4096 /* lingering subscriptions dropped per tick at most */
#define KR_CL_MAX_ORIGINS 256     /* origins the duplicate filter remembers */
#define KR_CL_MAX_SILENT 64       /* nodes taken for silent that are remembered */
#define KR_CL_LOST_CHUNK (256 * 1024)
/* Topics forwarded lately, announced as possibly lost when the link reconnects (what was
 * written to a server that died, or sat in it, is gone). Two windows of this length rotate,
 * so what is announced covers at least this long before the reconnect: the time the link
 * takes to notice a server that went silent (pings: 5 s, 4 unanswered). */
#define KR_CL_RECENT_MS 25000
#define KR_CL_RECENT_SLOTS (1u << 17) /* hashes per window (half full at most) */
#define KR_CL_RECENT_BYTES (4u << 20) /* topic bytes per window; past either: "every topic" */
#define KR_CL_PEER_SLOTS (1u << 15)   /* the same for the topics one other node forwarded here */
#define KR_CL_PEER_BYTES (1u << 20)

/* The NATS socket as libnats wants it watched (kr_cluster_io.c). */
struct kr_cl_io {
    pthread_mutex_t mu;  /* the wanted state: any thread, from libnats' callbacks */
    int want_fd;         /* -1: detached */
    int want_events;     /* UV_READABLE | UV_WRITABLE */
    uint64_t gen;        /* attaches and detaches so far */
    bool dirty;          /* changed since the link thread last applied it */
    /* link thread */
    uv_poll_t *poll;     /* watching the socket of attach poll_gen, or NULL */
    uint64_t poll_gen;
    int poll_events;
    bool w_armed;        /* a write was left over: watch for writability */
};

struct kr_cl_topic {
    struct kr_cl_topic *next; /* hash chain */
    uint64_t hash;
    natsSubscription *sub;
    uint64_t since_us;        /* in force (and covered) since; 0 = waiting for its probe */
    uint64_t probe;           /* the probe that puts it in force */
    uint64_t linger_until_ms; /* dropped then unless a local subscriber came back */
    bool shard_on;            /* the owning shard has subscribers */
    bool in_lq;
    uint32_t len;
    char name[];
};

struct kr_cl_wait { /* a subscribe request waiting for a probe */
    struct kr_event ev;
    uint64_t probe;
    uint64_t since_ms;
};

struct kr_cl_peer {
    uint64_t origin;
    uint64_t first_ms, last_ms;
    uint64_t acked; /* highest probe it answered */
    char name[64];
};

struct kr_cl_item { /* from libnats' threads to the link thread */
    struct kr_cl_item *next;
    char kind;      /* 'H', 'A', 'L' bodies; 'q' a 'Q' body, 'a' an 'S' body; 'S' a slow
                       consumer's subject; 'd' disconnected, 'r' reconnected, 'c' connected */
    uint64_t origin;
    uint64_t seq;
    size_t len;
    char data[];    /* H: name; L: the topics' pairs */
};

struct kr_cl_ask { /* a resume of another node's token waiting for that node's answer */
    struct kr_event ev;   /* the barrier request (ptr: its block, with ->remote) */
    uint64_t tag;
    uint64_t deadline_ms; /* cluster_resume_timeout_ms */
    uint32_t checks_left; /* answered: this node's shards still checking (kr_cl_ask_check) */
    bool lost;            /* a shard found an entry the answer could not have held */
    bool sent;            /* the question went out */
    uint32_t *wait;       /* [nnet]: each net thread's ring is taken up to here before the
                             question goes (kr_cl_asks_send) */
};

struct kr_cl_part { /* a shard's part of a message another node's resume gets */
    struct kr_msg *msg;
    struct kr_topicset topics;
};

struct kr_cl_serve { /* another node's resume of this node's token, being served */
    uint64_t tag;        /* the HISTORY events' conn */
    uint64_t asker, asker_tag;
    uint64_t started_ms;
    uint32_t acks_left;  /* shards yet to answer */
    bool complete;       /* every shard answered: waits only for origin sequences */
    struct kr_cl_part *parts;
    uint32_t nparts, parts_cap;
    char *unc;           /* uncovered topics, as pairs */
    size_t unc_len, unc_cap;
    uint32_t nunc;
    char *topics;        /* every topic asked, as pairs */
    size_t topics_len;
    uint32_t ntopics;
    uint64_t *mark_origin, *mark_seq; /* per origin, the highest sequence received when the */
    uint32_t nmarks;                  /* shards were asked (the delivery thread's records) */
};

struct kr_cl_recent { /* the topics forwarded in one window */
    uint64_t *slots;  /* topic hashes, open addressing (0 = empty) */
    uint32_t n;
    bool overflow;    /* more than the window holds: every topic */
    char *pairs;      /* the topics, as a lost notice's pairs */
    size_t len;
};

/* The topics one other node forwarded here lately (two windows of KR_CL_RECENT_MS / 2):
 * when that node goes silent without saying it left, their local subscribers are told.
 * Filled by the libnats delivery thread, taken by the link thread; under win_mu. */
struct kr_cl_win {
    struct kr_cl_recent w[2];
    int cur;
    uint64_t since_ms;
};

struct kr_cl_origin {
    uint64_t origin, seq, last_ms;
    struct kr_cl_win *win; /* NULL until its first entry (allocated then) */
};

struct kr_cl_counters {
    uint64_t connected; /* 1 while linked (a state, not a counter) */
#define KR_CL_FIELD(name, kind, micro, help) uint64_t name;
    KR_CLUSTER_COUNTERS(KR_CL_FIELD)
#undef KR_CL_FIELD
};

struct kr_cluster {
    /* set by the control thread before the threads start, read-only afterwards (nc: the
     * libnats connection, thread-safe) */
    struct kr_cluster_opts o;
    const struct kr_cfg *cfg;
    char prefix[KR_CFG_STR_MAX];
    size_t prefix_len;
    char name[64];
    uint64_t origin;
    uint64_t pub_id;
    natsOptions *nopts;
    natsConnection *nc;
    natsSubscription *ctl_subs[4];
    char subj_hb[KR_CFG_STR_MAX + 16], subj_probe[KR_CFG_STR_MAX + 16],
        subj_lost[KR_CFG_STR_MAX + 16], subj_self[KR_CFG_STR_MAX + 32];
    int stopping; /* set by kr_cluster_stop; read by the link and delivery threads */
    int quit;     /* set by kr_cluster_stop once the connection is closed: the loop ends */
    uv_sem_t stop_sem; /* the link thread's last pass is over (after stopping) */
    int flush_running; /* a flush for cluster_publish_ack flushed is on libuv's pool */
    struct kr_cl_io io;

    /* link thread */
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t tick;
    uv_thread_t thread;
    bool started;
    struct kr_mailbox **in;   /* [nnet] net -> link */
    struct kr_mailbox **out;  /* [nnet] link -> net */
    uint8_t *in_dirty;        /* [nnet] net n pushed since its flush (net n only) */
    int *in_full;             /* [nnet * 16] net n found its ring full: the link wakes it
                                 once it took from that ring (set by net n, cleared by the
                                 link) */
    /* answers towards the net threads: in order per net thread, parked while a ring is
     * full, each net thread woken once per pass */
    struct kr_outbox_sink out_sink;
    struct kr_outbox outbox;
    struct kr_cl_topic **buckets;
    size_t nbuckets, ntopics;
    struct kr_cl_topic **lq; /* lingering topics, by deadline (constant linger: append order) */
    size_t lq_head, lq_n, lq_cap;
    struct kr_cl_topic **pend; /* topics waiting for probe_sent (in flight) or the next */
    size_t npend, pend_cap;
    struct kr_cl_wait *waits;
    size_t nwaits, waits_cap;
    /* cluster_publish_ack flushed: publishers of forwarded entries waiting for the next
     * successful flush (KR_EV_FORWARDED each, in order) */
    uint64_t *acks;
    size_t nacks, acks_cap;
    uv_work_t flush_req; /* the flush in flight (on libuv's thread pool) */
    size_t flush_n;      /* acks[0 .. flush_n) wait for it; 0: none in flight */
    natsStatus flush_status;
    bool stop_acked;
    bool out_blocked; /* forwards wait for the socket to take what is buffered */
    uint64_t probe_sent;     /* last probe number sent (0 = none) */
    uint64_t probe_done;     /* every probe up to this one is answered */
    uint64_t probe_sent_ms;
    bool need_probe;         /* topics were subscribed after the last probe sent */
    bool connected;
    uint64_t last_hb_ms;
    uint64_t start_ms;
    struct kr_cl_peer *peers;
    uint32_t npeers, peers_cap;
    uint64_t silent[KR_CL_MAX_SILENT]; /* peers taken for silent, oldest first */
    uint32_t nsilent;
    char *ebuf;              /* encoded entry */
    size_t ebuf_cap;
    char *sbuf;              /* a subject */
    size_t sbuf_cap;
    char *lost;              /* lost-forwards notice being collected (pairs) */
    size_t lost_len, lost_cap;
    uint32_t lost_n;
    uint64_t seq;            /* entries forwarded */
    struct kr_cl_recent recent[2]; /* [cur] fills, the other is the window before */
    uint32_t recent_cur;
    uint64_t recent_since_ms;
    bool lost_all;           /* a lost notice for every topic is due */
    struct kr_cl_ask *asks;  /* resumes of other nodes' tokens, waiting for their answer */
    size_t nasks, asks_cap;
    uint64_t ask_tag;
    struct kr_cl_serve *serves; /* resumes of this node's tokens being served */
    size_t nserves, serves_cap;
    uint64_t serve_tag;
    const char **r_topics;   /* a replayed message's topics */
    uint32_t *r_lens;
    uint32_t r_cap;

    /* from libnats' threads */
    pthread_mutex_t mu;
    struct kr_cl_item *ihead, *itail;

    /* the delivery thread */
    struct kr_cl_origin origins[KR_CL_MAX_ORIGINS];
    uint32_t norigins;
    pthread_mutex_t win_mu; /* the origins' windows (struct kr_cl_win) */
    uint64_t d_serve_tag;  /* resumes of this node's tokens asked of the shards */
    const char **d_topics;
    uint32_t *d_lens;
    uint64_t *d_hashes;
    uint32_t d_cap;

    struct kr_cl_counters st; /* relaxed stores by their one writer */
};

/* Add n to counter f (KR_CLUSTER_COUNTERS). Each counter's one writer thread. */
#define KR_CL_INC(cl, f, n) ck_pr_store_64(&(cl)->st.f, (cl)->st.f + (n))

/* Milliseconds of the monotonic clock. Any thread. */
static inline uint64_t kr_cl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---------------------------------------------------------------- kr_cluster_deliver.c */

/* libnats' connection callbacks: queue an item for the link thread and wake it. libnats'
 * threads (set up by the control thread's kr_cl_options). */
void kr_cl_disconnected_cb(natsConnection *nc, void *closure);
void kr_cl_reconnected_cb(natsConnection *nc, void *closure);
void kr_cl_connected_cb(natsConnection *nc, void *closure);
void kr_cl_error_cb(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure);
/* A topic's entry from another node: decoded, filtered and injected into the shards. The
 * delivery thread (subscribed by the link thread's kr_cl_hold). */
void kr_cl_on_entry(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
/* A control message (heartbeat, probe, probe answer, lost notice). The delivery thread
 * (subscribed by the control thread's kr_cluster_create). */
void kr_cl_on_ctl(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);

/* ---------------------------------------------------------------- kr_cluster_io.c */

/* Hand libnats the link thread's loop as its event loop. Control thread, on cl->nopts. */
natsStatus kr_cl_io_options(struct kr_cluster *cl);
/* Make the calling thread the link thread for the socket's changes. Link thread, first. */
void kr_cl_io_own(struct kr_cluster *cl);
/* Apply what libnats last asked to watch. Link thread (its wake-up). */
void kr_cl_io_apply(struct kr_cluster *cl);
/* Write what libnats buffered if it is at least `at_least` bytes (the link is connected);
 * true when more than KR_CL_BUFFERED_MAX stays buffered: stop forwarding, set out_blocked,
 * and the socket's drain wakes the link. Link thread. */
bool kr_cl_io_flush(struct kr_cluster *cl, size_t at_least);
/* Close the socket's handle, if any. Control thread, once the link thread is stopped. */
void kr_cl_io_close(struct kr_cluster *cl);

/* ---------------------------------------------------------------- kr_cluster_link.c */

/* The loop's wake-up and tick callbacks, and the thread's main. The link thread (the
 * handles are set up by the control thread before it starts). */
void kr_cl_wake_cb(uv_async_t *a);
void kr_cl_tick_cb(uv_timer_t *t);
void kr_cl_main(void *arg);
/* The topic's entry, or NULL. Link thread. */
struct kr_cl_topic *kr_cl_find(struct kr_cluster *cl, const char *t, uint32_t len, uint64_t h);
/* Answer a subscribe request's barrier towards its net thread (a resume of another node's
 * token asks that node first: kr_cl_resume_ask). Link thread. */
void kr_cl_answer(struct kr_cluster *cl, struct kr_event *req);
/* Push an event to shard `shard` on the link's index, waiting while its ring is full. Link
 * thread. */
void kr_cl_to_shard(struct kr_cluster *cl, uint32_t shard, struct kr_event *ev);

/* ---------------------------------------------------------------- kr_cluster_resume.c */

/* A resume of another node's token whose barrier is complete: ask that node once the link
 * forwarded everything handed to it before now (kr_cl_asks_send), or, when it cannot be
 * asked, answer at once with every topic uncovered. Link thread. */
void kr_cl_resume_ask(struct kr_cluster *cl, struct kr_event *req);
/* Publish the questions whose wait is over (every net thread's ring taken up to where it
 * was when the resume was asked); true while some still wait. After each pass over the
 * rings. Link thread. */
bool kr_cl_asks_send(struct kr_cluster *cl);
/* A chunk of an answer to one of this node's asks ('S' body in the item). Link thread. */
void kr_cl_answer_item(struct kr_cluster *cl, const struct kr_cl_item *it);
/* Another node's resume request ('Q' body in the item; its seq: the tag the delivery thread
 * gave it, high 32 bits, and how many shards it asked, low 32). Link thread. */
void kr_cl_serve_item(struct kr_cluster *cl, const struct kr_cl_item *it);
/* A shard's KR_EV_REPLAY or KR_EV_ACK (aux KR_EV_HISTORY) for a request being served.
 * Link thread. */
void kr_cl_history_event(struct kr_cluster *cl, struct kr_event *ev);
/* Asks past their deadline; served answers waiting for origin sequences. Link thread. */
void kr_cl_resume_tick(struct kr_cluster *cl, uint64_t now);
/* Release what the asks and serves hold. Control thread, once the link thread stopped. */
void kr_cl_resume_free(struct kr_cluster *cl);

/* ---------------------------------------------------------------- kr_cluster_peers.c */

/* Complete the probe in flight once every known node answered (then its topics are in
 * force and the requests that waited for it answered); send the next one when due. Link
 * thread. */
void kr_cl_probe_check(struct kr_cluster *cl);
/* Forget the nodes not heard from for KR_CL_PEER_DEAD_MS. Link thread. */
void kr_cl_peers_expire(struct kr_cluster *cl, uint64_t now);
/* Publish this node's heartbeat when one is due. Link thread. */
void kr_cl_heartbeat(struct kr_cluster *cl, uint64_t now);
/* Handle the items libnats' threads queued. Link thread. */
void kr_cl_items(struct kr_cluster *cl, uint64_t now);
/* Remember a copy libnats refused, for the lost notice after the reconnect. Link thread. */
void kr_cl_lost_add(struct kr_cluster *cl, const char *t, uint32_t len);
/* Record a topic forwarded in the current recent window; rotate the windows when due.
 * Link thread. */
void kr_cl_recent_add(struct kr_cluster *cl, const char *t, uint32_t len, uint64_t h);
/* Add a topic to window w of `slots` hash slots and `bytes` of pairs. Any thread owning w. */
void kr_cl_window_add(struct kr_cl_recent *w, uint32_t slots, size_t bytes, const char *t,
                      uint32_t len, uint64_t h);
/* Forget what window w of `slots` slots holds. Any thread owning w. */
void kr_cl_window_clear(struct kr_cl_recent *w, uint32_t slots);
/* Peer `origin` went silent (or said it left: `told` false): take the topics it forwarded
 * here lately and, when it did not say it left, tell their local subscribers. Link thread. */
void kr_cl_peer_gone(struct kr_cluster *cl, uint64_t origin, bool silent);
void kr_cl_recent_rotate(struct kr_cluster *cl, uint64_t now);

#endif
