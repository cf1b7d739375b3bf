/* One shard's topic table (internal to the router module; unit-tested directly).
 *
 * topic -> subscribers and client -> subscriptions, both in liburcu lock-free hash tables
 * (cds_lfht, memb flavour) so other threads can walk them under RCU while the owning shard
 * keeps writing. Each subscription is one record linked from both sides, removed in O(1).
 *
 * Every function except the RCU-reader walk is for the owning (writer) thread only, which
 * must be registered with urcu-memb. */
#ifndef KR_TOPICS_H
#define KR_TOPICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kr_topics;
struct kr_topic;
struct kr_sconn;

struct kr_topics *kr_topics_create(void);
/* Free everything at once, after waiting for the grace periods of what was removed before
 * (urcu_memb_barrier); no reader may be walking. Not in a read-side critical section. */
void kr_topics_destroy(struct kr_topics *t);
/* Hand the entries removed since the last call to RCU (one call_rcu for them all; a full
 * batch of 256 goes by itself), and free those whose grace period has ended since (on this
 * thread). Call it after a run of changes, e.g. once per loop iteration; until then those
 * entries stay allocated. Owner only, registered with urcu-memb, outside a read-side
 * critical section. */
void kr_topics_flush_retired(struct kr_topics *t);
/* Whether removed entries handed to RCU are not freed yet: the owner should come back
 * (kr_topics_flush_retired) soon even with nothing else to do. Owner only. */
bool kr_topics_retired_waiting(const struct kr_topics *t);

/* Called by the owner's own calls below when a topic gets its first subscriber (on = true)
 * or loses its last (on = false), with the topic's bytes (valid during the call). */
typedef void (*kr_topics_hook_cb)(void *arg, const char *topic, uint32_t len, bool on);
/* Set (or clear, cb = NULL) the hook. Owner only. */
void kr_topics_set_hook(struct kr_topics *t, kr_topics_hook_cb cb, void *arg);

/* Subscribe client `conn` to a topic. Returns 1 when new, 0 when already subscribed (the
 * existing subscription is kept as it is). A new subscription delivers live only messages
 * published after `since_us` (0: every message; a retroactive subscription passes its
 * horizon, so a message published before it that reaches the shard late is not delivered
 * on the topics it asked for). */
int kr_topics_subscribe(struct kr_topics *t, const char *topic, uint32_t len, uint64_t conn,
                        uint64_t since_us);
/* Returns 1 when removed, 0 when the client was not subscribed. */
int kr_topics_unsubscribe(struct kr_topics *t, const char *topic, uint32_t len, uint64_t conn);
/* Drop every subscription of a client; returns how many. */
uint32_t kr_topics_drop_conn(struct kr_topics *t, uint64_t conn);

/* Lookup for fanout; NULL when nobody is subscribed. */
struct kr_topic *kr_topics_find(struct kr_topics *t, const char *topic, uint32_t len);
/* The same with the topic's kr_topic_hash already known (a published message carries it). */
struct kr_topic *kr_topics_find_hashed(struct kr_topics *t, const char *topic, uint32_t len,
                                       uint64_t hash);
uint32_t kr_topic_nsubs(const struct kr_topic *tp);
/* The topic's i-th subscriber; its subscription's `since_us` in *since_us unless NULL. */
struct kr_sconn *kr_topic_sub(const struct kr_topic *tp, uint32_t i, uint64_t *since_us);

/* A stamp the owner may set on a topic (marks the topics of one retroactive request). */
uint64_t *kr_topic_stamp(struct kr_topic *tp);

/* Continuity. A topic records the owner's clock (kr_topics_set_clock: the shard's last
 * sequence number) when it gets its first subscriber: kr_topic_held. While it stays in the
 * table it was held ever since (with subscribers, or kept empty, see below). Owner only. */
void kr_topics_set_clock(struct kr_topics *t, uint64_t clock);
uint64_t kr_topic_held(const struct kr_topic *tp);

/* What becomes of a topic that loses its last subscriber (the hook is called with on =
 * false but for KR_TOPICS_HOLD; with on = true when it gets a subscriber again):
 *   KR_TOPICS_DELETE  it leaves the table (the default);
 *   KR_TOPICS_KEEP    it stays, empty, until kr_topics_forget (a cluster node: while the
 *                     cluster link lingers on its interest, the topic is still held);
 *   KR_TOPICS_HOLD    it stays and the hook is not told (a draining node keeps its topics'
 *                     interest and answers resumes of them until it exits).
 * Empty topics are not counted (kr_topics_count) nor walked. Owner only. */
enum kr_topics_empty { KR_TOPICS_DELETE = 0, KR_TOPICS_KEEP, KR_TOPICS_HOLD };
void kr_topics_set_empty(struct kr_topics *t, enum kr_topics_empty what);
/* Remove the topic if it is in the table with no subscriber (kept or held: its cluster
 * interest was dropped); returns whether it did. Owner only. */
bool kr_topics_forget(struct kr_topics *t, const char *topic, uint32_t len);

uint64_t kr_sconn_id(const struct kr_sconn *c);
/* Per-client scratch for the fanout of one message (owner only): a stamp telling whether
 * the words belong to the message being routed, and a pointer-sized word the router uses. */
uint64_t *kr_sconn_stamp(struct kr_sconn *c);
uint64_t *kr_sconn_word(struct kr_sconn *c);

/* Counters (relaxed reads are fine from any thread). */
uint64_t kr_topics_count(const struct kr_topics *t);
uint64_t kr_topics_subscriptions(const struct kr_topics *t);

/* Walk every topic with its subscriber count. Any thread registered with urcu-memb; takes
 * the RCU read lock itself. Stops when cb returns non-zero. */
typedef int (*kr_topics_walk_cb)(void *arg, const char *topic, uint32_t len, uint32_t nsubs);
void kr_topics_walk(struct kr_topics *t, kr_topics_walk_cb cb, void *arg);

/* Subscriptions of client `conn` in this table (0 when unknown). Any thread registered with
 * urcu-memb; takes the RCU read lock itself. */
uint32_t kr_topics_conn_nsubs(struct kr_topics *t, uint64_t conn);

/* Copy the topics of client `conn` from its subscription number *cursor on into buf, each
 * followed by '\n', as many as fit in `cap` bytes; advances *cursor past them. Returns the
 * bytes written (0: no more topics, or the next one does not fit in `cap`). Owner only. */
size_t kr_topics_conn_topics(struct kr_topics *t, uint64_t conn, uint32_t *cursor, char *buf,
                             size_t cap);

/* Shape of one of the two hash tables, for tests and diagnostics: how many entries (topics,
 * or clients), how many hash buckets, the longest bucket chain (entries a lookup may walk
 * past), and how many resizes the owner made with their total time. Buckets are counted from
 * the list itself, so an empty table reports 0. Walks the whole table: O(entries). Owner
 * only (the resizes it reports on are the owner's). */
struct kr_topics_table_stats {
    uint64_t nodes;
    uint64_t buckets;
    uint64_t max_chain;
    uint64_t resizes;
    uint64_t resize_ns;
};
enum kr_topics_table { KR_TOPICS_TABLE_TOPICS, KR_TOPICS_TABLE_CONNS };
void kr_topics_table_stats(struct kr_topics *t, enum kr_topics_table which,
                           struct kr_topics_table_stats *out);

#endif
