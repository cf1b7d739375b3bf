/* The history eviction sketch (internal to the router module): "what did the history evict
 * on this topic?" without a record per topic ever seen.
 *
 * A max-sketch: KR_EVICTED_ROWS rows of 2^log2_buckets buckets, each bucket the highest
 * sequence number of an evicted message whose topic hashes there. A topic's row indexes
 * all come from its one 64-bit kr_topic_hash, remixed per row (a 64-bit finalizer over the
 * hash xor a per-row constant, top bits kept), so the shard selection, which uses the same
 * hash, does not bias the buckets. kr_evicted_bound is the smallest of the topic's buckets:
 * never below the truth, above it only when every one of its buckets also holds a higher
 * sequence of other topics.
 *
 * Sizing. After n distinct topics were evicted with sequences above a token T, a topic
 * that was never evicted gets a bound above T with probability about
 * (1 - e^(-n / 2^log2_buckets))^KR_EVICTED_ROWS. The default, 3 rows of 2^19 buckets of
 * 8 bytes (12 MiB per shard, pages touched as used), gives about 0.5 % for
 * n = 100,000 (the unit test measures it). Every message the history evicts notes each of
 * its topics, so the rows are few: each note touches 3 buckets, three cache misses on the
 * routing path unless prefetched (kr_evicted_prefetch; 8 rows of 2^17, the same memory's
 * optimum at 0.66 %, cost 8; measured slower).
 *
 * Owned by one shard thread: every function but kr_evicted_bytes is for that thread only. */
#ifndef KR_EVICTED_H
#define KR_EVICTED_H

#include <stddef.h>
#include <stdint.h>

#define KR_EVICTED_ROWS 3
#define KR_EVICTED_LOG2_DEFAULT 19 /* 3 rows x 2^19 x 8 bytes = 12 MiB */
#define KR_EVICTED_LOG2_MIN 4
#define KR_EVICTED_LOG2_MAX 30

struct kr_evicted;

/* A sketch of KR_EVICTED_ROWS rows of 2^log2_buckets buckets each (log2_buckets in
 * KR_EVICTED_LOG2_MIN..KR_EVICTED_LOG2_MAX, asserted), all 0: nothing evicted. The caller
 * owns it (kr_evicted_destroy). Aborts on out of memory. Shard thread (its owner). */
struct kr_evicted *kr_evicted_create(uint32_t log2_buckets);
/* Free it (NULL is fine). Shard thread (its owner). */
void kr_evicted_destroy(struct kr_evicted *e);

/* A message with sequence `seq` on the topic whose kr_topic_hash is `h` left the history.
 * Shard thread (its owner). */
void kr_evicted_note(struct kr_evicted *e, uint64_t h, uint64_t seq);
/* Start loading the buckets kr_evicted_note(e, h, ...) will update (a hint: the rows are
 * far larger than the caches, so a note without it waits for three memory reads). Shard
 * thread (its owner). */
void kr_evicted_prefetch(const struct kr_evicted *e, uint64_t h);

/* An upper bound of the highest sequence evicted on the topic with hash h (0: certainly
 * none): never below the truth; above it only on collisions in every row. Shard thread
 * (its owner). */
uint64_t kr_evicted_bound(const struct kr_evicted *e, uint64_t h);

/* Bytes it holds (for stats): the buckets and the header. Any thread (it never changes
 * after kr_evicted_create). */
size_t kr_evicted_bytes(const struct kr_evicted *e);

#endif
