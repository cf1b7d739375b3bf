/* Queue module: the pieces that carry messages between threads.
 *
 *  - struct kr_msg: one published entry, stored once in an immutable, reference-counted
 *    buffer (topics, payload, publisher id, publish time) shared by every delivery.
 *  - struct kr_mailbox: a single-producer/single-consumer Concurrency Kit ring of fixed-size
 *    events, copied by value (no allocation per event).
 *  - struct kr_waiter: the sleep/wake-up of a consumer thread (eventfd) with a "sleeping"
 *    flag so producers only make a syscall when the consumer really sleeps.
 *  - struct kr_outbox: the sending side of a set of mailboxes, owned by one producer thread:
 *    every event goes out in order or waits in a local FIFO while its mailbox is full, and
 *    each destination is woken once per batch.
 *  - struct kr_topicset: the matched topics of one delivery (bits in one word up to 64
 *    topics, else an owned bitmap), passed from a shard to a net thread in an event.
 *  - struct kr_reqq: requests from any thread to the thread that owns some state (off the
 *    publish path).
 *
 * This module includes neither router/ nor net/. */
#ifndef KR_QUEUE_H
#define KR_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* ---------------------------------------------------------------- messages */

struct kr_msg;

/* The hash of a topic: picks its shard (kr_router_shard_of) and its bucket in the shard's
 * table. Computed once per published topic and carried in the message. Any thread. */
uint64_t kr_topic_hash(const char *topic, size_t len);

/* Create a message with `ntopics` topics (their bytes and lengths) and a payload.
 * `nslots` per-thread pointer slots are reserved for the net threads' bookkeeping of
 * multi-shard messages (0 when not needed). Topics must already be de-duplicated.
 * The message starts with one reference, owned by the caller. Aborts on out of memory.
 * Any thread. kr_msg_create_hashed takes the topics' kr_topic_hash values (stored in the
 * message, see kr_msg_topic_hash) when the caller computed them already; kr_msg_create
 * computes them. */
struct kr_msg *kr_msg_create(uint64_t publisher, uint64_t time_us, uint32_t ntopics,
                             const char *const *topics, const uint32_t *topic_lens,
                             const char *payload, uint32_t payload_len, uint32_t nslots);
struct kr_msg *kr_msg_create_hashed(uint64_t publisher, uint64_t time_us, uint32_t ntopics,
                                    const char *const *topics, const uint32_t *topic_lens,
                                    const uint64_t *topic_hashes, const char *payload,
                                    uint32_t payload_len, uint32_t nslots);
/* Add `n` references. Any thread holding a reference. */
void kr_msg_ref(struct kr_msg *m, uint32_t n);
/* Drop one reference; frees the message with the last one. Any thread holding a reference. */
void kr_msg_unref(struct kr_msg *m);
/* Drop `n` references at once (n > 0; one atomic operation for them all); frees the
 * message with the last one. Any thread holding those references. */
void kr_msg_unref_n(struct kr_msg *m, uint32_t n);
/* References currently held (a relaxed load: exact only while no other thread changes them;
 * for tests and assertions). Any thread holding a reference. */
uint32_t kr_msg_refs(const struct kr_msg *m);
/* Accessors (immutable fields: any thread holding a reference). */
uint64_t kr_msg_publisher(const struct kr_msg *m);
uint64_t kr_msg_time_us(const struct kr_msg *m);
uint32_t kr_msg_ntopics(const struct kr_msg *m);
const char *kr_msg_topic(const struct kr_msg *m, uint32_t i, uint32_t *len);
/* kr_topic_hash of topic i, as stored at creation. */
uint64_t kr_msg_topic_hash(const struct kr_msg *m, uint32_t i);
/* Start loading the message's header (for writing: its reference count) and the first
 * lines of its per-topic arrays (hashes, sequences) into the cache, for a holder that will
 * need them soon (a hint). Any thread
 * holding a reference. */
void kr_msg_prefetch(const struct kr_msg *m);
const char *kr_msg_payload(const struct kr_msg *m, uint32_t *len);
/* Bytes held by the message buffer (for memory accounting). */
size_t kr_msg_size(const struct kr_msg *m);
/* Sequence numbers. Each router shard numbers the messages it routes (1, 2, ...: the
 * node's positions are made of them); the shard that owns topic i records its number for
 * this message with kr_msg_set_seq before it hands the message to anyone, and a thread that
 * received a delivery of topic i from that shard reads it (0: not routed yet). The shard
 * index travels with it. Sequences are below 2^56. */
#define KR_SEQ_SHARD_SHIFT 56
#define KR_SEQ_MASK ((UINT64_C(1) << KR_SEQ_SHARD_SHIFT) - 1)
void kr_msg_set_seq(struct kr_msg *m, uint32_t i, uint32_t shard, uint64_t seq);
uint64_t kr_msg_seq(const struct kr_msg *m, uint32_t i, uint32_t *shard);
/* A link per topic for the owning shard's own bookkeeping (its history's per-bucket chains,
 * router/kr_router.c), written by that shard before it hands the message to anyone, like
 * the sequence; 0 until then. */
void kr_msg_set_link(struct kr_msg *m, uint32_t i, uint64_t link);
uint64_t kr_msg_link(const struct kr_msg *m, uint32_t i);
/* Origin and origin sequence: what names a message across the nodes of a cluster (the
 * cluster link's entries carry them). A message another node published gets both at
 * creation (kr_msg_set_origin, before it is shared: the thread that creates it). One
 * published on this node has origin 0 ("this node") and gets its sequence when the cluster
 * link forwards it (kr_msg_stamp_oseq: the link thread, an atomic store); kr_msg_origin
 * returns the origin and, in *oseq, the sequence (0: not forwarded yet). Any thread holding
 * a reference may read them. */
void kr_msg_set_origin(struct kr_msg *m, uint64_t origin, uint64_t oseq);
void kr_msg_stamp_oseq(struct kr_msg *m, uint64_t oseq);
uint64_t kr_msg_origin(const struct kr_msg *m, uint64_t *oseq);
/* Number of distinct shards the topics map to; set once by the publisher's thread before
 * the message is shared. */
void kr_msg_set_nshards(struct kr_msg *m, uint32_t nshards);
uint32_t kr_msg_nshards(const struct kr_msg *m);
/* Slot `i` (< nslots) of the per-thread bookkeeping array: only thread `i` touches it.
 * What a slot points to is its thread's: a plain malloc'ed block that holds no other
 * resources and is referenced by nothing once the message's last reference is gone, so
 * kr_msg_unref free()s a pointer still in a slot with the message (the net threads'
 * completion records, see net/kr_deliver.c, keep to this). */
void **kr_msg_slot(struct kr_msg *m, uint32_t i);

/* ---------------------------------------------------------------- topic sets
 *
 * The matched topics of one delivery of message m: a set over m's topic indexes
 * 0..ntopics-1 (ntopics = kr_msg_ntopics(m), passed to every call). With at most 64 topics
 * the set is the bits themselves, in one word, and nothing is allocated (the common case);
 * with more, the word holds a pointer to an owned bitmap of ceil(ntopics/64) words. The
 * rule lives here only: a set travels between threads as one word (kr_event.mask, see
 * kr_topicset_word / kr_topicset_from_word) and whoever holds it last releases it. A set is
 * owned by one thread at a time (the one holding the event or queue entry). */
struct kr_topicset {
    uint64_t word; /* the bits (ntopics <= 64), else a uint64_t * to the bitmap */
};

#define KR_TOPICSET_INLINE 64 /* topic counts up to this keep the bits in the word */

/* A zeroed bitmap of ceil(ntopics/64) words. Aborts on out of memory. */
uint64_t *kr_topicset_alloc_(uint32_t ntopics);

static inline uint64_t *kr_topicset_words_(const struct kr_topicset *s)
{
    return (uint64_t *)(uintptr_t)s->word;
}

/* An empty set for a message of `ntopics` topics (allocates only above 64). */
static inline void kr_topicset_init(struct kr_topicset *s, uint32_t ntopics)
{
    s->word = ntopics <= KR_TOPICSET_INLINE ? 0 : (uint64_t)(uintptr_t)kr_topicset_alloc_(ntopics);
}

/* Add topic index i (< ntopics). */
static inline void kr_topicset_set(struct kr_topicset *s, uint32_t ntopics, uint32_t i)
{
    if (ntopics <= KR_TOPICSET_INLINE)
        s->word |= UINT64_C(1) << i;
    else
        kr_topicset_words_(s)[i / 64] |= UINT64_C(1) << (i % 64);
}

/* Whether topic index i (< ntopics) is in the set. */
static inline bool kr_topicset_has(const struct kr_topicset *s, uint32_t ntopics, uint32_t i)
{
    if (ntopics <= KR_TOPICSET_INLINE)
        return (s->word >> i) & 1;
    return (kr_topicset_words_(s)[i / 64] >> (i % 64)) & 1;
}

/* Add every topic of `from` to `into` (sets of the same message) and release `from`. */
static inline void kr_topicset_merge(struct kr_topicset *into, struct kr_topicset *from,
                                     uint32_t ntopics)
{
    if (ntopics <= KR_TOPICSET_INLINE) {
        into->word |= from->word;
    } else {
        uint64_t *a = kr_topicset_words_(into), *b = kr_topicset_words_(from);
        for (uint32_t w = 0; w < (ntopics + 63) / 64; w++)
            a[w] |= b[w];
        free(b);
    }
    from->word = 0;
}

/* Free what the set owns (nothing with at most 64 topics). The set is not used afterwards
 * until kr_topicset_init. */
static inline void kr_topicset_release(struct kr_topicset *s, uint32_t ntopics)
{
    if (ntopics > KR_TOPICSET_INLINE)
        free(kr_topicset_words_(s));
    s->word = 0;
}

/* The set as one word, to travel in an event (ownership goes with it), and back. */
static inline uint64_t kr_topicset_word(struct kr_topicset s)
{
    return s.word;
}

static inline struct kr_topicset kr_topicset_from_word(uint64_t word)
{
    return (struct kr_topicset){.word = word};
}

/* Publish clock: microseconds since the Unix epoch, strictly increasing across the whole
 * process (one atomic per call), so "published after this horizon" is exact between threads.
 * Any thread. */
uint64_t kr_msg_clock_us(void);

/* ---------------------------------------------------------------- mailboxes */

/* One event between a net thread and a shard. 32 bytes, copied by value. */
struct kr_event {
    uint16_t type;  /* module-defined */
    uint16_t src;   /* sender index (shard or net thread) */
    uint32_t aux;   /* small argument */
    uint64_t conn;  /* client id */
    void *ptr;      /* payload (message, command block, ...) */
    uint64_t mask;  /* small argument (e.g. matched-topic bitmap) */
};

struct kr_mailbox;

/* Create a mailbox holding at least `capacity` events (rounded up to a power of two).
 * Aborts on out of memory. Any thread, before the mailbox is shared. */
struct kr_mailbox *kr_mailbox_create(uint32_t capacity);
void kr_mailbox_destroy(struct kr_mailbox *mb);
/* Enqueue a copy of *ev; false when full (never blocks). Producer thread only. */
bool kr_mailbox_push(struct kr_mailbox *mb, const struct kr_event *ev);
/* Dequeue into *ev; false when empty. Consumer thread only. */
bool kr_mailbox_pop(struct kr_mailbox *mb, struct kr_event *ev);
/* Events currently queued (approximate from any other thread). */
uint32_t kr_mailbox_depth(const struct kr_mailbox *mb);
/* Events ever pushed, and ever taken, modulo 2^32: "everything pushed before now has been
 * taken" is (int32_t)(kr_mailbox_taken(mb) - pushed_then) >= 0. kr_mailbox_pushed: any
 * thread (what the producer committed); kr_mailbox_taken: the consumer thread. */
uint32_t kr_mailbox_pushed(const struct kr_mailbox *mb);
uint32_t kr_mailbox_taken(const struct kr_mailbox *mb);
uint32_t kr_mailbox_capacity(const struct kr_mailbox *mb);

/* ---------------------------------------------------------------- outboxes
 *
 * Push in order or park: the one place that knows how a producer hands events to mailboxes
 * that may be full. An outbox belongs to one producer thread (a shard towards the net
 * threads, the cluster link towards the net threads, a connection or a net thread towards
 * the shards) and is used by that thread only.
 *
 *  - kr_outbox_push sends an event to destination `dest` at once when nothing waits ahead
 *    of it and the mailbox takes it; otherwise the event is parked in a local FIFO, behind
 *    whatever waits already, so the destination sees events in push order.
 *  - kr_outbox_unpark sends parked events, oldest first, as long as their mailboxes take
 *    them (called when the consumers may have made room: after each batch, on a timer).
 *  - with a wake callback, every destination that received something since the last
 *    kr_outbox_wake is woken once by it: one wake-up per destination per batch.
 *
 * Order is kept per destination (KR_OUTBOX_PER_DEST: one FIFO per destination, so a slow
 * consumer does not hold up the others) or across every destination (KR_OUTBOX_ALL: one
 * FIFO; once anything is parked every later event waits behind it, the order a connection
 * needs for the events of one request). The hot path is one test of the FIFO's count and
 * the mailbox push: no allocation, no atomic beyond the ring's own, no syscall. Parking
 * allocates only to grow the FIFO (amortized; aborts on out of memory). */

/* An event waiting in an outbox, with its destination. */
struct kr_outbox_parked {
    uint32_t dest;
    struct kr_event ev;
};

/* A FIFO of parked events (a ring buffer that doubles when full). */
struct kr_outbox_fifo {
    struct kr_outbox_parked *buf;
    uint32_t head;
    uint32_t count;
    uint32_t cap;
};

/* How an outbox sends, and whom it tells: set up once by the producer, shared by all of
 * its outboxes (e.g. every connection of a net thread), read-only afterwards. */
struct kr_outbox_sink {
    uint32_t ndest;                /* destinations 0..ndest-1 */
    struct kr_mailbox *const *mb;  /* [ndest]: an event for dest goes into mb[dest]; NULL:
                                      through `send` instead */
    /* Hand ev to dest; false when it cannot take it now (full, congested). Producer thread. */
    bool (*send)(void *arg, uint32_t dest, const struct kr_event *ev);
    /* Wake dest after events went into its mailbox; NULL when the producer wakes its
     * destinations some other way. Called by kr_outbox_wake. */
    void (*wake)(void *arg, uint32_t dest);
    void *arg;                     /* for send and wake */
    uint64_t *parks;               /* NULL, or a counter of events ever parked: written by
                                      the producer only (relaxed stores), read by any thread */
};

enum kr_outbox_order {
    KR_OUTBOX_PER_DEST, /* order per destination: one FIFO each */
    KR_OUTBOX_ALL,      /* one order across every destination: one FIFO */
};

struct kr_outbox {
    const struct kr_outbox_sink *sink;
    struct kr_outbox_fifo *lanes; /* [ndest], KR_OUTBOX_PER_DEST only */
    struct kr_outbox_fifo one;    /* the FIFO of a KR_OUTBOX_ALL outbox */
    uint8_t *pending;             /* [ndest], with sink->wake: received since the last wake */
    uint32_t nparked;             /* events parked now, over every FIFO */
    bool per_dest;
};

/* Set up an outbox over `sink` (which must outlive it). KR_OUTBOX_ALL without a wake
 * callback allocates nothing (a zeroed outbox with only `sink` set is the same). Aborts on
 * out of memory. The producer thread, or any thread before the outbox is used. */
void kr_outbox_init(struct kr_outbox *ob, const struct kr_outbox_sink *sink,
                    enum kr_outbox_order order);
/* Release every parked event through release(arg, dest, ev) in order (NULL: they hold
 * nothing), then free the outbox's memory. The producer thread, or any thread once the
 * producer stopped. */
void kr_outbox_destroy(struct kr_outbox *ob,
                       void (*release)(void *arg, uint32_t dest, struct kr_event *ev),
                       void *arg);
/* Release every parked event as kr_outbox_destroy does, and keep the outbox usable (a
 * connection that closes while events wait). Producer thread. */
void kr_outbox_clear(struct kr_outbox *ob,
                     void (*release)(void *arg, uint32_t dest, struct kr_event *ev),
                     void *arg);

/* Out of line: park ev behind what waits for its FIFO. Use kr_outbox_push. */
void kr_outbox_park_(struct kr_outbox *ob, struct kr_outbox_fifo *f, uint32_t dest,
                     const struct kr_event *ev);

static inline struct kr_outbox_fifo *kr_outbox_fifo_(struct kr_outbox *ob, uint32_t dest)
{
    return ob->per_dest ? &ob->lanes[dest] : &ob->one;
}

static inline bool kr_outbox_send_(const struct kr_outbox_sink *s, uint32_t dest,
                                   const struct kr_event *ev)
{
    return s->mb ? kr_mailbox_push(s->mb[dest], ev) : s->send(s->arg, dest, ev);
}

/* Send a copy of *ev to `dest` now if nothing is parked ahead of it (for this destination,
 * or for any with KR_OUTBOX_ALL) and the mailbox takes it: returns true. Else park it
 * behind the others (counted in sink->parks) and return false: it goes out with a later
 * kr_outbox_unpark. Either way the event now belongs to the outbox's side. Producer
 * thread. */
static inline bool kr_outbox_push(struct kr_outbox *ob, uint32_t dest, const struct kr_event *ev)
{
    struct kr_outbox_fifo *f = kr_outbox_fifo_(ob, dest);
    if (f->count == 0 && kr_outbox_send_(ob->sink, dest, ev)) {
        if (ob->pending)
            ob->pending[dest] = 1;
        return true;
    }
    kr_outbox_park_(ob, f, dest, ev);
    return false;
}

/* Send parked events oldest first while their mailboxes take them (per FIFO: the first
 * refusal stops that FIFO). Returns true when nothing is parked any more. Producer
 * thread. */
bool kr_outbox_unpark(struct kr_outbox *ob);

/* Call sink->wake once for every destination that received events since the last call.
 * Producer thread, once per batch. */
void kr_outbox_wake(struct kr_outbox *ob);

/* Mark every destination to be woken by the next kr_outbox_wake (e.g. a consumer may wait
 * for a change that came with no event). Producer thread. */
void kr_outbox_wake_all(struct kr_outbox *ob);

/* Events parked now. Producer thread. */
static inline uint32_t kr_outbox_parked(const struct kr_outbox *ob)
{
    return ob->nparked;
}

/* ---------------------------------------------------------------- waiter */

/* Sleep/wake-up for a consumer thread that waits on several mailboxes. */
struct kr_waiter {
    int efd;
    int sleeping; /* 1 while the consumer is (about to be) blocked */
};

/* Returns 0 or -errno. Any thread, before sharing. */
int kr_waiter_init(struct kr_waiter *w);
void kr_waiter_destroy(struct kr_waiter *w);
/* Wake the consumer if it is sleeping (one syscall only then). Any producer thread, after
 * its pushes. */
void kr_waiter_wake(struct kr_waiter *w);
/* Consumer: announce the intent to sleep. After this, re-check every mailbox; if one has
 * work call kr_waiter_cancel(), else kr_waiter_sleep(). */
void kr_waiter_prepare(struct kr_waiter *w);
void kr_waiter_cancel(struct kr_waiter *w);
/* Block until woken or `timeout_ms` elapsed (-1 = no timeout). Consumer thread only. */
void kr_waiter_sleep(struct kr_waiter *w, int timeout_ms);

/* ---------------------------------------------------------------- cross-thread requests
 *
 * A request from any thread to the thread that owns some state (a net thread, a shard,
 * the control thread), off the publish path: admin lists and dumps, drain steps. The owner
 * runs it on its own loop, so the state it reads or changes needs no lock. One kr_reqq per
 * owner: a mutex-protected FIFO and a wake-up callback; the owner pays one relaxed load per
 * wake-up when nothing is queued.
 *
 * Ownership: a request is allocated by the asker (embed struct kr_req first in a larger
 * struct and set `run` and `release`). After kr_reqq_submit returns, the asker owns it
 * again and reads its answer, except when it returned -ETIMEDOUT or was called with
 * wait_ms < 0: then the queue's side releases it once it was served (an asker that stopped
 * waiting leaves nothing dangling, and the owner may still write into it safely). */

struct kr_req;
/* Runs on the owner thread with the owner's context. Returns the answer (>= 0 or -errno),
 * or KR_REQ_LATER to answer later with kr_reqq_complete (e.g. once a write finished). */
typedef int (*kr_req_fn)(struct kr_req *req, void *owner);
#define KR_REQ_LATER 0x7fffffff

struct kr_req {
    kr_req_fn run;
    void (*release)(struct kr_req *req); /* frees the request; NULL = free() */
    int status;                          /* the answer */
    /* the queue's (under its mutex) */
    struct kr_req *next;
    bool done;
    bool abandoned;
};

struct kr_reqq;

/* A queue for one owner thread; `wake(arg)` wakes that thread (uv_async_send, an eventfd
 * write, ...) and is called after each submit. Aborts on out of memory. Any thread, before
 * the queue is shared. */
struct kr_reqq *kr_reqq_create(void (*wake)(void *arg), void *wake_arg);
/* Free the queue. Requests still queued are answered -ESHUTDOWN first. After every asker
 * and the owner stopped using it. */
void kr_reqq_destroy(struct kr_reqq *q);
/* Queue `r` and wake the owner. wait_ms < 0: do not wait (returns 0 or -ESHUTDOWN; r is
 * released by the queue's side either way). Else wait up to wait_ms for the answer and
 * return r->status, or -ETIMEDOUT (r abandoned), or -ESHUTDOWN (the queue was shut down;
 * r is the asker's again). Blocks: any thread except the owner. */
int kr_reqq_submit(struct kr_reqq *q, struct kr_req *r, int wait_ms);
/* Run every queued request, in order. Returns how many ran. The owner thread, from its
 * wake-up. */
uint32_t kr_reqq_serve(struct kr_reqq *q, void *owner);
/* Whether something is queued (a relaxed load: for an owner that checks before sleeping).
 * Any thread. */
bool kr_reqq_pending(const struct kr_reqq *q);
/* Answer a request whose run returned KR_REQ_LATER. The owner thread. */
void kr_reqq_complete(struct kr_reqq *q, struct kr_req *r, int status);
/* Refuse new requests and answer the queued ones with -ESHUTDOWN (requests answered
 * KR_REQ_LATER stay the owner's to complete). Any thread; the owner when it stops. */
void kr_reqq_shutdown(struct kr_reqq *q);

#endif
