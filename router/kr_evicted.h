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
 * (1 - e^(-n / 2^log2_buckets))^KR_EVICTED_ROWS. The default, 8 rows of 2^17 buckets of
 * 8 bytes (8 MiB per shard), gives 0.66 % for n = 100,000 (the unit test measures it);
 * that is the optimum number of rows for 2^20 buckets (8 rows x 2^18 = 16 MiB would give
 * 0.01 %, 4 rows x 2^18 = 8 MiB about 1.0 %). Each note and each bound reads 8 buckets.
 *
 * Owned by one shard thread: every function but kr_evicted_bytes is for that thread only. */
#ifndef KR_EVICTED_H
#define KR_EVICTED_H

#include <stddef.h>
#include <stdint.h>

#define KR_EVICTED_ROWS 8
#define KR_EVICTED_LOG2_DEFAULT 17 /* 8 rows x 2^17 x 8 bytes = 8 MiB */
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

/* An upper bound of the highest sequence evicted on the topic with hash h (0: certainly
 * none): never below the truth; above it only on collisions in every row. Shard thread
 * (its owner). */
uint64_t kr_evicted_bound(const struct kr_evicted *e, uint64_t h);

/* Bytes it holds (for stats): the buckets and the header. Any thread (it never changes
 * after kr_evicted_create). */
size_t kr_evicted_bytes(const struct kr_evicted *e);

#endif
