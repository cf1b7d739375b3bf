/* The history eviction sketch: see kr_evicted.h. */
#include "kr_evicted.h"

#include <assert.h>
#include <stdlib.h>

#include "kr_util.h"

struct kr_evicted {
    uint32_t log2;    /* buckets per row: 2^log2 */
    uint64_t *cells;  /* row r, bucket b at cells[(r << log2) | b] */
};

/* One constant per row (odd, unrelated bit patterns), mixed into the hash before the
 * finalizer so that each row sees an independent-looking index. */
static const uint64_t kr_evicted_seed[KR_EVICTED_ROWS] = {
    0x9e3779b97f4a7c15ULL, 0xc2b2ae3d27d4eb4fULL, 0x165667b19e3779f9ULL,
};

/* The 64-bit finalizer of MurmurHash3: a bijection whose every output bit depends on every
 * input bit. */
static inline uint64_t kr_evicted_mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static inline size_t kr_evicted_cell(const struct kr_evicted *e, uint32_t row, uint64_t h)
{
    uint64_t b = kr_evicted_mix(h ^ kr_evicted_seed[row]) >> (64 - e->log2);
    return ((size_t)row << e->log2) | (size_t)b;
}

struct kr_evicted *kr_evicted_create(uint32_t log2_buckets)
{
    assert(log2_buckets >= KR_EVICTED_LOG2_MIN && log2_buckets <= KR_EVICTED_LOG2_MAX);
    struct kr_evicted *e = kr_xcalloc(1, sizeof(*e));
    e->log2 = log2_buckets;
    e->cells = kr_xcalloc((size_t)KR_EVICTED_ROWS << log2_buckets, sizeof(*e->cells));
    return e;
}

void kr_evicted_destroy(struct kr_evicted *e)
{
    if (!e)
        return;
    free(e->cells);
    free(e);
}

void kr_evicted_note(struct kr_evicted *e, uint64_t h, uint64_t seq)
{
    for (uint32_t r = 0; r < KR_EVICTED_ROWS; r++) {
        uint64_t *c = &e->cells[kr_evicted_cell(e, r, h)];
        if (*c < seq)
            *c = seq;
    }
}

void kr_evicted_prefetch(const struct kr_evicted *e, uint64_t h)
{
    for (uint32_t r = 0; r < KR_EVICTED_ROWS; r++)
        __builtin_prefetch(&e->cells[kr_evicted_cell(e, r, h)], 1);
}

uint64_t kr_evicted_bound(const struct kr_evicted *e, uint64_t h)
{
    uint64_t b = UINT64_MAX;
    for (uint32_t r = 0; r < KR_EVICTED_ROWS && b != 0; r++) {
        uint64_t c = e->cells[kr_evicted_cell(e, r, h)];
        if (c < b)
            b = c;
    }
    return b;
}

size_t kr_evicted_bytes(const struct kr_evicted *e)
{
    return sizeof(*e) + ((size_t)KR_EVICTED_ROWS << e->log2) * sizeof(*e->cells);
}
