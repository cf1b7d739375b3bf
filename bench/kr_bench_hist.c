/* Log-bucketed histogram: see kr_bench.h. */
#include <stdint.h>
#include <string.h>

#include "kr_bench.h"

#define KR_BENCH_HIST_SUB (UINT64_C(1) << KR_BENCH_HIST_SUB_BITS)

size_t kr_bench_hist_index(uint64_t v)
{
    if (v < KR_BENCH_HIST_SUB)
        return (size_t)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* e >= SUB_BITS */
    unsigned shift = e - KR_BENCH_HIST_SUB_BITS;
    uint64_t sub = (v >> shift) & (KR_BENCH_HIST_SUB - 1);
    return ((size_t)(shift + 1) << KR_BENCH_HIST_SUB_BITS) + (size_t)sub;
}

uint64_t kr_bench_hist_bucket_low(size_t idx)
{
    if (idx < KR_BENCH_HIST_SUB)
        return idx;
    unsigned shift = (unsigned)(idx >> KR_BENCH_HIST_SUB_BITS) - 1u;
    uint64_t sub = idx & (KR_BENCH_HIST_SUB - 1);
    return (KR_BENCH_HIST_SUB + sub) << shift;
}

uint64_t kr_bench_hist_bucket_high(size_t idx)
{
    if (idx < KR_BENCH_HIST_SUB)
        return idx;
    unsigned shift = (unsigned)(idx >> KR_BENCH_HIST_SUB_BITS) - 1u;
    return kr_bench_hist_bucket_low(idx) + ((UINT64_C(1) << shift) - 1);
}

void kr_bench_hist_init(struct kr_bench_hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

void kr_bench_hist_add(struct kr_bench_hist *h, uint64_t v)
{
    h->bucket[kr_bench_hist_index(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void kr_bench_hist_merge(struct kr_bench_hist *dst, const struct kr_bench_hist *src)
{
    if (!src->count)
        return;
    for (size_t i = 0; i < KR_BENCH_HIST_BUCKETS; i++)
        dst->bucket[i] += src->bucket[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t kr_bench_hist_quantile(const struct kr_bench_hist *h, double q)
{
    if (!h->count)
        return 0;
    if (q >= 1.0)
        return h->max;
    if (q < 0)
        q = 0;
    /* rank of the wanted value, 1-based: ceil(q * count), at least 1 */
    double r = q * (double)h->count;
    uint64_t rank = (uint64_t)r;
    if ((double)rank < r)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < KR_BENCH_HIST_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen >= rank) {
            uint64_t v = kr_bench_hist_bucket_high(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}

double kr_bench_hist_mean(const struct kr_bench_hist *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}
