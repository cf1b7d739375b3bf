/* Router module: the shard threads and everything they own.
 *
 * Each of `nshards` shard threads (pinned to a CPU) owns the topics whose
 * hash(topic) % nshards equals its index: the topic -> subscribers table and the fanout.
 * Net threads talk to a shard only through the mailboxes of this module: one ring per
 * (net thread, shard) pair in each direction, single producer and single consumer each.
 *
 * Protocol between net threads and shards (events, see struct kr_event in kr_queue.h):
 *   net -> shard  KR_EV_SUBSCRIBE / KR_EV_UNSUBSCRIBE (ptr = struct kr_router_cmd, conn);
 *                 the shard answers KR_EV_ACK (conn, ptr = the same cmd, to be freed by the
 *                 net thread).
 *                 KR_EV_PUBLISH (ptr = struct kr_msg, one reference handed over; with
 *                 mask & KR_PUBLISH_COUNT the shard answers KR_EV_PUBLISHED, below).
 *                 KR_EV_RETRO_SUBSCRIBE (ptr = cmd with horizon_us, conn): subscribe, and in
 *                 the same step replay every stored message on those topics published
 *                 strictly after the horizon (KR_EV_REPLAY events, oldest first), then ACK
 *                 with mask = 0, or mask = 1 (and no replay) when this shard's history no
 *                 longer reaches back to the horizon.
 *                 KR_EV_RESUME (ptr = cmd with since_seq, conn): subscribe, and in the same
 *                 step replay (KR_EV_REPLAY, oldest first) every stored message on those
 *                 topics this shard numbered above since_seq, except on topics whose
 *                 messages above since_seq the history may have evicted (the eviction
 *                 sketch says so): those are listed in cmd->resync instead, and nothing of
 *                 theirs is replayed; so are the topics with the most messages when the
 *                 replay would pass cmd->max_entries or cmd->max_bytes; then ACK (aux =
 *                 KR_EV_RESUME).
 *                 KR_EV_DISCONNECT (conn): drop every subscription of the client.
 *                 In a cluster (opts.interest), "the history can replay a topic exactly"
 *                 also needs the topic held here continuously since the position (what
 *                 other nodes published is here only while this node holds the interest):
 *                 an emptied topic stays held while the link lingers on it and goes at
 *                 KR_EV_DROPPED; a kick (KR_EV_RESYNC) or a gap in the interest is noted as
 *                 if the history had evicted the topic there.
 *   shard -> net  KR_EV_DELIVER (conn, ptr = message with one reference handed over,
 *                 mask = matched-topic bits, or for messages of more than 64 topics a
 *                 malloc'ed bitmap in `mask` the net thread frees). A message's deliveries
 *                 to two or more subscribers of one net thread travel as one
 *                 KR_EV_DELIVER_BATCH (one ring slot per net thread, not per subscriber);
 *                 kr_router_recv hands them out one by one as the KR_EV_DELIVER events they
 *                 stand for, so a receiver never sees a batch.
 *                 KR_EV_END (ptr = message, one reference; aux = deliveries made by this
 *                 shard): sent to every net thread after a shard finished a message whose
 *                 topics span several shards (kr_msg_nshards() > 1), after its deliveries.
 *                 KR_EV_REPLAY: like DELIVER, for a retroactive subscription; sent before
 *                 the ACK of its request.
 *                 KR_EV_FANOUT_WARN (conn = publisher, ptr = message with a reference,
 *                 aux = fanout): the single shard of a message reached the warning threshold;
 *                 the publisher's net thread logs it with the client's address.
 *                 KR_EV_KICK (conn, ptr = command block naming the topics, freed by the
 *                 receiver): the client may have missed messages on them (the cluster link
 *                 lost some, see below); its net thread tells it (a resync notice naming
 *                 them, or as a queue overflow).
 *                 KR_EV_FRONTIER (mask = the last sequence this shard numbered): every
 *                 delivery of a message numbered up to it was sent before this event; sent
 *                 to every net thread when the shard goes idle and every 4096 messages,
 *                 with opts.frontier set.
 *                 KR_EV_PUBLISHED (conn = publisher, aux = the PUBLISH event's aux, mask =
 *                 connections this shard delivered the message to): the answer to a
 *                 PUBLISH with KR_PUBLISH_COUNT, sent after its deliveries.
 *
 * With opts.interest set, index opts.interest_net is a consumer that follows which topics
 * have subscribers (the cluster link):
 *   shard -> it   KR_EV_INTEREST (ptr = command block with topics, mask = 1 when they got
 *                 their first subscriber, 0 when they lost their last; in order per topic,
 *                 since one shard owns a topic); the receiver frees the block.
 *   it -> shard   KR_EV_RESYNC (ptr = command block with topics, freed by the shard): every
 *                 subscriber of these topics is sent KR_EV_KICK.
 *                 KR_EV_DROPPED (ptr = command block, freed by the shard): the link no
 *                 longer holds these topics' interest (see KR_EV_DISCONNECT).
 *                 KR_EV_CHECK (ptr = cmd with ->remote, conn = the link's tag): does the
 *                 history hold a message on these topics from a node other than
 *                 remote->node (this one included, as origin remote->self; one not
 *                 forwarded yet counts as above any mark), created in [since_seq as a
 *                 publish time, remote->sub_time_us), above remote's mark for its origin?
 *                 The ACK (aux = KR_EV_CHECK, mask 1: yes) goes back to the link: an entry
 *                 the answering node had not received when it answered a resume, that this
 *                 node routed before the resumed client subscribed here.
 *                 KR_EV_HISTORY (ptr = cmd with since_seq and the bounds, conn = the
 *                 asker's tag; from any index, the cluster's delivery thread in the
 *                 server): another node resumes a token of this one. Like KR_EV_RESUME
 *                 without the subscribe: the REPLAY events and the ACK (aux =
 *                 KR_EV_HISTORY, cmd->resync) go to interest_net.
 * Indexes at or past opts.nend (when set) are not net threads: they get no KR_EV_END.
 */
#ifndef KR_ROUTER_H
#define KR_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kr_queue.h"

enum kr_router_event {
    KR_EV_SUBSCRIBE = 1,
    KR_EV_UNSUBSCRIBE,
    KR_EV_PUBLISH,
    KR_EV_DISCONNECT,
    KR_EV_ACK,
    KR_EV_DELIVER,
    KR_EV_END,
    KR_EV_FANOUT_WARN,
    KR_EV_RETRO_SUBSCRIBE,
    KR_EV_REPLAY,
    KR_EV_INTEREST,
    KR_EV_RESYNC,
    KR_EV_KICK,
    KR_EV_PUBLISHED,
    KR_EV_RESUME,
    KR_EV_FRONTIER,
    KR_EV_FORWARDED,
    KR_EV_HISTORY,
    KR_EV_DROPPED,
    KR_EV_DELIVER_BATCH,
    KR_EV_CHECK,
};

/* KR_EV_PUBLISH's mask bit asking the shard for its receivers: after the fanout it answers
 * KR_EV_PUBLISHED to the publisher's net thread (conn = publisher, aux = the event's aux,
 * mask = the connections it delivered to). */
#define KR_PUBLISH_COUNT UINT64_C(1)
/* KR_EV_PUBLISH's mask bit asking the cluster link to answer KR_EV_FORWARDED (conn = the
 * publisher) once the entry is in its NATS server's hands (cluster_publish_ack flushed). */
#define KR_PUBLISH_FLUSHED UINT64_C(2)

/* A subscribe/unsubscribe command for one shard: the topics of one request that this shard
 * owns, stored back to back. Allocated by the net thread with kr_router_cmd_new, travels
 * to the shard and back in the ACK, freed by the net thread with free(). */
struct kr_router_cmd {
    uint32_t ntopics;
    uint32_t used;  /* bytes used in data */
    uint32_t cap;   /* bytes available in data */
    uint32_t pad;
    uint64_t horizon_us; /* KR_EV_RETRO_SUBSCRIBE only */
    uint64_t since_seq;  /* KR_EV_RESUME only: this shard's sequence in the client's position */
    uint64_t max_entries; /* KR_EV_RESUME: replay at most this many messages here (0: no */
    uint64_t max_bytes;   /* bound) and bytes; past them, the topics with the most go to resync */
    struct kr_router_cmd *resync; /* KR_EV_RESUME's ACK: the topics the history cannot replay
                                     exactly (a block of its own, freed with this one by
                                     kr_router_cmd_free), or NULL */
    struct kr_resume_remote *remote; /* a resume of another node's token, or NULL (freed
                                        with the block) */
    char data[];    /* repeated: uint32_t len; bytes */
};

/* A resume of a token another node of the cluster issued, carried by the resume's barrier
 * block (net thread -> cluster link -> net thread): the token's position going out, what
 * that node replayed coming back. */
struct kr_resume_remote {
    uint64_t node;     /* the token's node (its cluster origin) */
    uint32_t nshards;
    uint64_t seq[64];
    uint64_t sub_time_us; /* publish clock when this node's subscribe was sent */
    uint64_t self;        /* KR_EV_CHECK: this node's origin as the others know it */
    /* KR_EV_CHECK: what the token's node had received per origin (mark_origin[i] up to
     * mark_seq[i]) when it answered */
    uint64_t *mark_origin, *mark_seq;
    uint32_t nmarks;
    /* the answer: messages oldest first, each holding only the resumed topics it matched,
     * with their origin and origin sequence (kr_msg_origin); one reference each */
    struct kr_msg **msgs;
    uint32_t nmsgs, cap;
};

/* Client ids, encoded and decoded only here: the owning net thread in the top 8 bits, the
 * generation of its connection slot in the next 24 (a reused slot gets a new id), the slot
 * in the low 32. Any thread. */
#define KR_CONN_GEN_MASK 0xffffffu
static inline uint64_t kr_conn_id_make(uint32_t net, uint32_t gen, uint32_t slot)
{
    return ((uint64_t)net << 56) | ((uint64_t)(gen & KR_CONN_GEN_MASK) << 32) | slot;
}
static inline uint32_t kr_conn_id_net(uint64_t id) { return (uint32_t)(id >> 56); }
static inline uint32_t kr_conn_id_gen(uint64_t id)
{
    return (uint32_t)(id >> 32) & KR_CONN_GEN_MASK;
}
static inline uint32_t kr_conn_id_slot(uint64_t id) { return (uint32_t)id; }
#define KR_CONN_NET(id) kr_conn_id_net(id)

struct kr_router_opts {
    uint32_t nshards;
    uint32_t nnet;                 /* net threads */
    uint32_t mailbox_capacity;     /* events per ring */
    uint32_t fanout_warn;          /* router_min_fanout_to_warn; the live configuration
                                      snapshot (kr_cfg_live) overrides it when published */
    uint32_t history;              /* messages_stored_per_router_shard (0 = none) */
    uint64_t history_bytes;        /* history_max_bytes: bytes of message buffers each shard's
                                      history holds at most, oldest evicted first (0 = no
                                      byte bound, only the count) */
    bool pin_cpus;                 /* pin shard i to CPU i % ncpus (kr_router_watch moves a
                                      shard its CPU does not serve) */
    uint32_t nend;                 /* indexes below this get KR_EV_END (0: all of nnet) */
    bool frontier;                 /* send KR_EV_FRONTIER to the net threads (positions) */
    bool interest;                 /* send KR_EV_INTEREST to interest_net */
    uint32_t interest_net;
    /* Wake net thread `net` after events were pushed towards it. Called from shard threads;
     * must be async-signal-safe-ish and cheap (uv_async_send). */
    void (*wake_net)(void *arg, uint32_t net);
    void *wake_arg;
};

struct kr_router;

/* Create the shards (not started). Aborts on out of memory. Control thread. */
struct kr_router *kr_router_create(const struct kr_router_opts *opts);
/* Start the shard threads. Returns 0 or -errno. Control thread. */
int kr_router_start(struct kr_router *r);
/* Stop and join the shard threads (pending events are released). Control thread. */
void kr_router_stop(struct kr_router *r);
/* Free everything. Control thread, after kr_router_stop. */
void kr_router_destroy(struct kr_router *r);

uint32_t kr_router_nshards(const struct kr_router *r);
/* Look at every shard once: one whose work waits while it gets no CPU time on the CPU it is
 * pinned to is moved to the other CPUs for a while (router/kr_pin.h), counted in
 * cpu_stalls and logged. `now_ms`: kr_now_ms(). One thread only (the control thread's
 * timer, every few tens of milliseconds). */
void kr_router_watch(struct kr_router *r, uint64_t now_ms);
/* The kernel's id of shard `shard`'s thread (for its /proc/self/task entry), 0 before it
 * runs. Any thread. */
int kr_router_shard_tid(const struct kr_router *r, uint32_t shard);
/* The shard that owns `topic`, or the topic whose kr_topic_hash (kr_queue.h) is `hash`.
 * Any thread. */
uint32_t kr_router_shard_of(const struct kr_router *r, const char *topic, size_t len);
uint32_t kr_router_shard_of_hash(const struct kr_router *r, uint64_t hash);

/* Push an event from net thread `net` to shard `shard`; false when that ring is full, or
 * for a publish while the shard is congested (too many deliveries wait towards slow net
 * threads): the caller keeps the event and retries later. Net thread `net` only. */
bool kr_router_send(struct kr_router *r, uint32_t net, uint32_t shard, const struct kr_event *ev);
/* Wake every shard that net thread `net` pushed to since its last flush. Net thread `net`
 * only; call once per batch. */
void kr_router_flush(struct kr_router *r, uint32_t net);
/* Pop the next event from shard `shard` to net thread `net` (a batch's deliveries one by
 * one, as KR_EV_DELIVER). Net thread `net` only. */
bool kr_router_recv(struct kr_router *r, uint32_t net, uint32_t shard, struct kr_event *ev);

/* From now on the shards keep the topics of clients that leave, with their cluster
 * interest (KR_TOPICS_HOLD): a draining cluster node answers resumes until it exits. Any
 * thread. */
void kr_router_hold_topics(struct kr_router *r);

/* Command blocks. kr_router_cmd_add aborts on out of memory. Net threads. */
struct kr_router_cmd *kr_router_cmd_new(uint32_t cap_hint);
struct kr_router_cmd *kr_router_cmd_add(struct kr_router_cmd *c, const char *topic, uint32_t len);
/* Free a command block and what it carries (cmd->resync). Any thread owning it. */
void kr_router_cmd_free(struct kr_router_cmd *c);
/* Iterate: *pos starts at 0; returns 0 at the end. Any thread owning the command. */
int kr_router_cmd_next(const struct kr_router_cmd *c, uint32_t *pos, const char **topic,
                       uint32_t *len);

/* The router's statistics, declared once. This list makes struct kr_router_stats, the
 * per-shard counters (SHARD rows: written by their shard only, relaxed stores), the sum over
 * the shards (kr_router_stats; TABLE rows are the topic tables' own counts, read then, PIN
 * rows the CPU watch's, see kr_router_watch) and
 * the printed figures (net/kr_stats.c: `stats`, /metrics, /api/server), in this order.
 *
 * X(name, kind, source, figure, help): kind is COUNTER (only grows) or GAUGE; source SHARD,
 * TABLE or PIN; figure the printed name, "" for none (the shards' retro_not_found: the net
 * threads' figure of that name counts the requests). */
#define KR_ROUTER_COUNTERS(X)                                                                     \
    X(messages_routed, COUNTER, SHARD, "messages_routed", "publish events processed, per shard") \
    X(deliveries, COUNTER, SHARD, "deliveries", "deliveries the shards made")                     \
    X(topics, GAUGE, TABLE, "topics", "topics with at least one subscriber")                      \
    X(subscriptions, GAUGE, TABLE, "subscriptions", "(topic, client) subscriptions")              \
    X(overflow_events, COUNTER, SHARD, "shard_overflow_events",                                   \
      "events a shard parked because its ring towards a net thread was full")                     \
    X(history_messages, GAUGE, SHARD, "history_messages",                                         \
      "messages held for retroactive subscriptions")                                              \
    X(history_bytes, GAUGE, SHARD, "history_bytes",                                               \
      "bytes of the messages held for retroactive subscriptions")                                 \
    X(retro_not_found, COUNTER, SHARD, "",                                                        \
      "shard answers: the history does not reach back to a retroactive horizon")                  \
    X(resume_bounded, COUNTER, SHARD, "resume_bounded_topics",                                    \
      "topics a resume told to resync instead of replaying them: the replay would have passed "   \
      "resume_max_entries or resume_max_bytes")                                                   \
    X(loop_iterations, COUNTER, SHARD, "shard_loop_iterations",                                   \
      "shard loop iterations that took events")                                                   \
    X(loop_over_1ms, COUNTER, SHARD, "shard_loop_over_1ms",                                       \
      "shard loop iterations that took events and lasted more than 1 ms")                         \
    X(loop_over_10ms, COUNTER, SHARD, "shard_loop_over_10ms",                                     \
      "shard loop iterations that took events and lasted more than 10 ms")                        \
    X(cpu_stalls, COUNTER, PIN, "shard_cpu_stalls",                                               \
      "times a shard with work waiting got no CPU time for 200 ms on the CPU it is pinned to "    \
      "(other work held it) and was moved to the other CPUs for 30 s")

/* Statistics summed over shards (relaxed reads of per-shard counters). Any thread. */
struct kr_router_stats {
#define KR_ROUTER_STATS_FIELD(name, kind, source, figure, help) uint64_t name;
    KR_ROUTER_COUNTERS(KR_ROUTER_STATS_FIELD)
#undef KR_ROUTER_STATS_FIELD
};
void kr_router_stats(const struct kr_router *r, struct kr_router_stats *out);

/* ---------------------------------------------------------------- admin reads
 * For the admin socket's dumps, from threads that are neither shards nor net threads.
 * They see the tables while the shards keep running: a dump is a live view, and a topic or
 * subscription that changes during it may be missed or seen twice. */

/* Subscriptions of client `conn`, summed over the shards (RCU lookups, no waiting).
 * Any thread registered with urcu-memb. */
uint32_t kr_router_client_nsubs(struct kr_router *r, uint64_t conn);

/* Call cb for every topic of every shard with its subscriber count, shard by shard, each
 * shard's walk inside one RCU read-side critical section (so keep cb short: no blocking
 * I/O). Stops when cb returns non-zero. Any thread registered with urcu-memb. */
typedef int (*kr_router_topic_cb)(void *arg, const char *topic, uint32_t len, uint32_t nsubs);
void kr_router_walk_topics(struct kr_router *r, kr_router_topic_cb cb, void *arg);

/* Ask shard `shard` for the topics client `conn` subscribes to there, from its
 * subscription number *cursor on: the shard thread copies as many as fit in `cap` bytes,
 * each followed by '\n', into buf and *cursor is advanced past them. `cap` must exceed
 * the longest topic. Returns the bytes written (0 when there are no more), -ETIMEDOUT when
 * the shard did not answer within timeout_ms, -ESHUTDOWN once the router stopped.
 * Blocks. Any thread except shard threads (never the control thread's loop: it may wait). */
ssize_t kr_router_client_topics(struct kr_router *r, uint32_t shard, uint64_t conn,
                                uint32_t *cursor, char *buf, size_t cap, int timeout_ms);

#endif
