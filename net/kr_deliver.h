/* Delivery assembly: what a net thread does with the DELIVER / END / REPLAY events its
 * shards send, for one client at a time, with no I/O and no event loop in it.
 *
 *  - struct kr_dlv: one client's deliveries (embedded in the connection): the queue of
 *    entries a poll hands out, the multi-shard entries still being completed, the
 *    retroactive staging area and the overflow state.
 *  - struct kr_dlv_ctx: one net thread's context: its index (the message slot of its
 *    completion records), the queue limits (from the cached live settings), the counters it
 *    updates, the max_memory growth counter, and the callbacks by which the connection
 *    layer learns that an entry was queued (wake a waiting poll) or that a queue overflowed
 *    (log with the peer, tell the client, close).
 *
 * Entries of a message whose topics span several shards are merged into one entry listing
 * every matched topic, and handed out only once every shard's END arrived; entries are kept
 * in per-publisher order; a retroactive subscription stages what arrives until its shards
 * answered, then queues the replayed messages oldest first, each once.
 *
 * Everything here runs on the net thread that owns the client (and its kr_dlv_ctx). */
#ifndef KR_DELIVER_H
#define KR_DELIVER_H

#include <stdbool.h>
#include <stdint.h>

#include "kr_queue.h"

struct kr_dlv;
struct kr_dlv_ctx;

/* ---------------------------------------------------------------- client queues */

/* Completion record of a message whose topics span several shards on one net thread (in
 * the message's slot for that thread, see kr_msg_slot): a delivery to one client is
 * complete once every involved shard has reported. Private to kr_deliver.c. */
struct kr_pend;

/* One queued delivery: a message reference and the topics it matched for this client. */
struct kr_cq_entry {
    struct kr_msg *msg;
    struct kr_topicset topics; /* of kr_msg_ntopics(msg) topics, owned */
    struct kr_pend *pend;      /* NULL when complete */
    uint32_t reply_bytes;      /* bytes this entry adds to a `get messages` reply */
};

/* Per-client queue: a growable ring of entries. Owned by one net thread; zero-init is an
 * empty queue. */
struct kr_cq {
    struct kr_cq_entry *ring;
    uint32_t cap; /* power of two, 0 when nothing allocated */
    uint32_t head;
    uint32_t count;
    uint64_t bytes; /* sum of reply_bytes */
};

/* Append an entry (takes over the references it carries). Aborts on out of memory. Owning
 * net thread (as every kr_cq_ function). */
struct kr_cq_entry *kr_cq_push(struct kr_cq *q, const struct kr_cq_entry *e);
/* Insert an entry at position `pos` (<= count) from the head, moving later ones back. */
struct kr_cq_entry *kr_cq_insert(struct kr_cq *q, uint32_t pos, const struct kr_cq_entry *e);
/* Entry `i` from the head (i < count). */
struct kr_cq_entry *kr_cq_at(struct kr_cq *q, uint32_t i);
/* Remove the head entry (the caller has taken or released what it references). */
void kr_cq_pop(struct kr_cq *q);
/* Release every entry (message references, topic sets, pend records) and the storage. */
void kr_cq_clear(struct kr_cq *q);

/* ---------------------------------------------------------------- delivery assembly */

/* A delivery held back while a retroactive subscription completes. */
struct kr_staged {
    struct kr_cq_entry e;
    bool replay;
    uint32_t order; /* arrival order, for a stable sort */
};

/* A multi-shard message still being completed, and the queue position of its entry. */
struct kr_incomplete {
    struct kr_msg *msg;
    uint64_t seq;
};

/* One client's deliveries. Zero-init is an empty, usable state. The fields are read by the
 * connection layer (counts for its figures and drain decisions); they are changed only
 * through the functions below (and kr_dlv_retro_begin / kr_dlv_retro_not_found). */
struct kr_dlv {
    /* first, what every delivery reads */
    struct kr_cq q;
    bool retro_active;    /* a retroactive subscribe is waiting for its shards */
    bool overflowed;      /* the queue was discarded; later deliveries are dropped */
    bool resync;          /* opted in to resync notices (__kraken__:resync): an overflow
                             collapses the queue into one notice instead of closing */
    bool retro_not_found; /* some shard's history did not reach back */
    bool remote_replay;   /* another node replayed messages for the resume being staged */
    /* positions (NULL until the client asks for one): per router shard, the highest
     * sequence of a message part handed out to the client (kr_dlv_pop, x->push) */
    uint64_t *handed;
    uint64_t seq_head; /* sequence number of the queue head */
    struct kr_incomplete *inc;
    uint32_t ninc;
    uint32_t inc_cap;
    struct kr_staged *stage; /* deliveries held while retro_active */
    uint32_t nstage;
    uint32_t stage_cap;
    /* topics a resume could not replay exactly: one notice naming them goes out before the
     * replayed messages (kr_dlv_retro_done); names separated by spaces */
    char *pending;
    uint32_t pending_len, pending_cap, pending_n;
    /* the drain took its subscriptions away: frontiers seen after that (per shard) no
     * longer speak for its topics, so its position stops at these (NULL: not capped) */
    uint64_t *seen_cap;
};

/* Counters a net thread publishes (relaxed atomic stores; any thread may load them). */
struct kr_dlv_counters {
    uint64_t *queued_messages;
    uint64_t *queued_bytes;
    uint64_t *deliveries_queued;
    uint64_t *queue_overflows;
    uint64_t *messages_replayed;
    uint64_t *resync_notices;
    uint64_t *resync_topics;
    uint64_t *queue_collapses;
};

/* The topic of resync notices, and the payload that names every topic. */
#define KR_RESYNC_TOPIC "__kraken__:resync"
#define KR_RESYNC_ALL "*"
/* The channel a RESP client subscribes to for position messages. */
#define KR_POSITION_TOPIC "__kraken__:position"

struct kr_dlv_ctx {
    uint32_t net;                 /* net thread index: the message slot used */
    uint64_t max_queued_messages; /* a client's queue overflows beyond these */
    uint64_t max_queued_bytes;
    uint32_t resync_max_topics;   /* a notice names at most this many topics, else `*` */
    uint32_t nshards;             /* router shards (the length of positions) */
    uint64_t self_origin;         /* this node's origin id (see kr_msg_origin) */
    struct kr_dlv_counters ctr;
    /* max_memory: queued bytes added since the last check; mem_check is called (and is
     * expected to reset mem_grown) when it reaches mem_step */
    uint64_t mem_grown;
    uint64_t mem_step;
    void (*mem_check)(struct kr_dlv_ctx *x);
    /* An entry was queued for `d` (a waiting poll may be answered). */
    void (*queued)(struct kr_dlv_ctx *x, struct kr_dlv *d);
    /* d's queue overflowed and was discarded: it held `count` entries, `bytes` bytes. Called
     * after d->overflowed was set. */
    void (*overflow)(struct kr_dlv_ctx *x, struct kr_dlv *d, uint32_t count, uint64_t bytes);
    /* Optional. d's queue (it opted in to resync notices) would have overflowed: its
     * `count` entries were replaced by one notice naming `ntopics` topics (0: `*`). */
    void (*collapsed)(struct kr_dlv_ctx *x, struct kr_dlv *d, uint32_t count, uint32_t ntopics);
    /* Optional (NULL: every delivery is queued). A complete live delivery (single-shard
     * message, no retroactive subscribe waiting, nothing queued before it, not overflowed):
     * return true when it was written out at once (then it is not queued; the delivery
     * layer keeps and releases the message reference and topic set), false to queue it. */
    bool (*push)(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_msg *m,
                   const struct kr_topicset *topics);
    void *owner; /* the net thread, for the callbacks */
    /* message references a written-out delivery gave up and not dropped yet, all of one
     * message: a fanout's deliveries on this thread come in a row, so they are dropped
     * with one atomic operation instead of one each (kr_dlv_release_later) */
    struct kr_msg *later_m;
    uint32_t later_n;
};

/* A live delivery (KR_EV_DELIVER, replay false) or a replayed one (KR_EV_REPLAY) for client
 * `d`, or for a client that is gone (d NULL): takes over the event's message reference and
 * topic set. A complete live delivery to a client with nothing queued is offered to
 * x->push first (counted in deliveries_queued either way). Owning net thread. */
void kr_dlv_deliver(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_event *ev, bool replay);
/* A shard's KR_EV_END for multi-shard message m, with the deliveries it made: returns true
 * when it was the last shard's (then *fanout is the deliveries summed over the shards and
 * the completion record is gone). Does not take the event's message reference. Owning net
 * thread. */
bool kr_dlv_end(struct kr_dlv_ctx *x, struct kr_msg *m, uint32_t shard_fanout, uint32_t *fanout);
/* A retroactive subscribe was sent: stage deliveries until kr_dlv_retro_done. */
void kr_dlv_retro_begin(struct kr_dlv *d);
/* A message another node replayed for a resume of its token (origin and origin sequence
 * stamped, kr_msg_origin; every topic of it resumed): staged as a replay, taking over the
 * reference. kr_dlv_retro_done puts the live delivery of the same message (by origin and
 * origin sequence) in its place, so each message is queued once. Owning net thread. */
void kr_dlv_replay_remote(struct kr_dlv_ctx *x, struct kr_dlv *d, struct kr_msg *m);
/* Every shard answered the retroactive subscribe: queue the replayed messages oldest first,
 * each once (parts from several shards merged, and merged with live deliveries of the same
 * message; none when some shard's history did not reach back), then the live deliveries
 * that arrived meanwhile. Owning net thread. */
void kr_dlv_retro_done(struct kr_dlv_ctx *x, struct kr_dlv *d);
/* How many entries at the head of the queue are complete and fit in one reply of at most
 * `max_bytes` (at least one): what a poll hands out now, and in *bytes what they add to the
 * reply. Owning net thread. */
uint32_t kr_dlv_ready(struct kr_dlv *d, uint64_t max_bytes, uint64_t *bytes);
/* The head entry (count > 0), and its removal once it was written out (releases its
 * message reference and topic set). Owning net thread. */
struct kr_cq_entry *kr_dlv_head(struct kr_dlv *d);
void kr_dlv_pop(struct kr_dlv_ctx *x, struct kr_dlv *d);
/* Drop the message references written-out deliveries gave up (kept back so that one
 * message's run of deliveries costs one atomic operation). Call it once the events at hand
 * are handled and before the thread waits or stops. Owning net thread. */
void kr_dlv_release_later(struct kr_dlv_ctx *x);
/* An overflow of d's queue (by its limits or max_memory). A client that opted in to resync
 * notices (d->resync) keeps its subscriptions and its connection: its queued entries are
 * replaced by one notice on KR_RESYNC_TOPIC naming their topics (up to resync_max_topics,
 * else `*`; an unread earlier notice is folded in), counted, and x->collapsed is called.
 * Any other client's queue is discarded: counted, d->overflowed set and x->overflow called.
 * Owning net thread. */
void kr_dlv_overflow(struct kr_dlv_ctx *x, struct kr_dlv *d);
/* Start keeping d's position (kr_dlv_position); nothing when it is kept already. */
void kr_dlv_track_position(struct kr_dlv_ctx *x, struct kr_dlv *d);
/* The client's subscriptions are being taken from it by the server (the drain unsubscribes
 * it everywhere before its last reply): from now on a shard's frontier may pass messages on
 * its topics that it will never get, so its position counts the frontiers only up to
 * `seen` (the net thread's frontier per shard now); what still arrives from before the
 * unsubscribe counts as it is handed out. Nothing when d keeps no position. Owning net
 * thread. */
void kr_dlv_cap_frontier(struct kr_dlv_ctx *x, struct kr_dlv *d, const uint64_t *seen);
/* d's position: per shard s (x->nshards of them), into pos[s], the highest sequence such
 * that every part of a message that shard numbered up to it for d was handed out, and
 * none above it. `seen` is the net thread's frontier per shard (KR_EV_FRONTIER). Returns
 * false when no such position exists now (a part was handed out above one of the same
 * shard that is still queued: pushes can do that for a moment); pos is then unchanged.
 * Owning net thread. */
bool kr_dlv_position(const struct kr_dlv_ctx *x, const struct kr_dlv *d, const uint64_t *seen,
                     uint64_t *pos);
/* For a client that keeps a position: how many complete entries at the head to hand out in
 * one reply (kr_dlv_ready's count, then extended over entries that a position after them
 * needs, or cut before one that would leave a queued part of the same shard behind it),
 * so that the position after the reply exists; *bytes as kr_dlv_ready. Owning net thread. */
uint32_t kr_dlv_ready_positioned(const struct kr_dlv_ctx *x, struct kr_dlv *d, uint64_t max,
                                 uint64_t *bytes);
/* A topic (len bytes) a resume cannot replay exactly: named by the notice that
 * kr_dlv_retro_done queues first. Owning net thread. */
void kr_dlv_resync_later(struct kr_dlv *d, const char *topic, uint32_t len);
/* Tell d that it may have missed messages on `topic` (len bytes; NULL: on any of its
 * topics): a resync notice naming it is queued, folded into an unread notice at the tail of
 * the queue when there is one. Only for a client with d->resync. Owning net thread. */
void kr_dlv_notice(struct kr_dlv_ctx *x, struct kr_dlv *d, const char *topic, uint32_t len);
/* Release everything queued or staged for d (the storage stays for reuse). Owning net
 * thread. */
void kr_dlv_clear(struct kr_dlv_ctx *x, struct kr_dlv *d);
/* Free d's storage (after kr_dlv_clear). Owning net thread. */
void kr_dlv_free(struct kr_dlv *d);
/* Release the arrays an empty queue does not need (the ring, the incomplete and staging
 * arrays); they are made again by the next delivery. Owning net thread. */
void kr_dlv_trim(struct kr_dlv *d);
/* Bytes d's storage takes besides the struct itself (arrays by their capacity, not the
 * messages they reference). Owning net thread. */
size_t kr_dlv_mem(const struct kr_dlv *d, uint32_t nshards);
/* Nothing queued, staged or awaited by a retroactive subscribe. */
bool kr_dlv_empty(const struct kr_dlv *d);

#endif
