/* kraken-bench's log-bucketed latency histogram. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>

#include "kr_bench.h"

static struct kr_bench_hist h, h2, h3;

Test(bench_hist, small_values_are_exact)
{
    for (uint64_t v = 0; v < 64; v++) {
        size_t i = kr_bench_hist_index(v);
        cr_assert_eq(i, v);
        cr_assert_eq(kr_bench_hist_bucket_low(i), v);
        cr_assert_eq(kr_bench_hist_bucket_high(i), v);
    }
}

Test(bench_hist, buckets_tile_the_whole_range)
{
    for (size_t i = 0; i + 1 < KR_BENCH_HIST_BUCKETS; i++) {
        cr_assert_lt(kr_bench_hist_bucket_low(i), kr_bench_hist_bucket_low(i + 1));
        cr_assert_eq(kr_bench_hist_bucket_high(i) + 1, kr_bench_hist_bucket_low(i + 1),
                     "gap after bucket %zu", i);
        cr_assert_eq(kr_bench_hist_index(kr_bench_hist_bucket_low(i)), i);
        cr_assert_eq(kr_bench_hist_index(kr_bench_hist_bucket_high(i)), i);
    }
    cr_assert_eq(kr_bench_hist_index(UINT64_MAX), KR_BENCH_HIST_BUCKETS - 1);
    cr_assert_eq(kr_bench_hist_bucket_high(KR_BENCH_HIST_BUCKETS - 1), UINT64_MAX);
}

Test(bench_hist, bucket_width_bounds_relative_error)
{
    uint64_t s = 88172645463325252ull;
    for (int n = 0; n < 200000; n++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        uint64_t v = s >> (s & 63);
        size_t i = kr_bench_hist_index(v);
        uint64_t lo = kr_bench_hist_bucket_low(i), hi = kr_bench_hist_bucket_high(i);
        cr_assert(lo <= v && v <= hi);
        /* width <= value / 64 */
        cr_assert_leq((double)(hi - lo), (double)lo / 64.0 + 1e-9, "value %llu", (unsigned long long)v);
    }
}

Test(bench_hist, empty_and_single)
{
    kr_bench_hist_init(&h);
    cr_assert_eq(kr_bench_hist_quantile(&h, 0.5), 0);
    cr_assert_eq(kr_bench_hist_quantile(&h, 1.0), 0);
    cr_assert_eq(kr_bench_hist_mean(&h), 0.0);
    kr_bench_hist_add(&h, 123456789);
    cr_assert_eq(h.count, 1);
    cr_assert_eq(kr_bench_hist_quantile(&h, 0.0), 123456789);
    cr_assert_eq(kr_bench_hist_quantile(&h, 0.5), 123456789);
    cr_assert_eq(kr_bench_hist_quantile(&h, 0.999), 123456789);
    cr_assert_eq(kr_bench_hist_quantile(&h, 1.0), 123456789);
    cr_assert_eq(h.min, 123456789);
    cr_assert_eq(h.max, 123456789);
}

Test(bench_hist, quantiles_of_a_uniform_range)
{
    kr_bench_hist_init(&h);
    for (uint64_t v = 1; v <= 100000; v++)
        kr_bench_hist_add(&h, v * 1000);
    struct {
        double q;
        double want;
    } cases[] = {{0.5, 50000e3}, {0.9, 90000e3}, {0.99, 99000e3}, {0.999, 99900e3}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        double got = (double)kr_bench_hist_quantile(&h, cases[i].q);
        /* never below the true value, at most one bucket width (1/64) above */
        cr_assert_geq(got, cases[i].want, "q=%g", cases[i].q);
        cr_assert_leq(got, cases[i].want * (1 + 1.0 / 64), "q=%g got %g", cases[i].q, got);
    }
    cr_assert_eq(kr_bench_hist_quantile(&h, 1.0), 100000000);
    cr_assert_eq(h.max, 100000000);
    cr_assert_eq(h.min, 1000);
    cr_assert_float_eq(kr_bench_hist_mean(&h), 50000.5e3, 1e-3);
}

Test(bench_hist, quantile_is_clipped_to_max)
{
    kr_bench_hist_init(&h);
    for (int i = 0; i < 10; i++)
        kr_bench_hist_add(&h, 1000); /* bucket high is 1007 */
    cr_assert_eq(kr_bench_hist_quantile(&h, 0.5), 1000);
    cr_assert_eq(kr_bench_hist_quantile(&h, 0.99), 1000);
}

Test(bench_hist, skewed_tail)
{
    kr_bench_hist_init(&h);
    for (int i = 0; i < 9990; i++)
        kr_bench_hist_add(&h, 100);
    for (int i = 0; i < 10; i++)
        kr_bench_hist_add(&h, 5000000);
    cr_assert_eq(kr_bench_hist_quantile(&h, 0.5), 100);
    cr_assert_eq(kr_bench_hist_quantile(&h, 0.99), 100);
    cr_assert_eq(kr_bench_hist_quantile(&h, 0.999), 100);
    cr_assert_geq(kr_bench_hist_quantile(&h, 0.9991), 5000000);
    cr_assert_eq(kr_bench_hist_quantile(&h, 1.0), 5000000);
}

Test(bench_hist, merge_equals_one_histogram)
{
    kr_bench_hist_init(&h);
    kr_bench_hist_init(&h2);
    kr_bench_hist_init(&h3);
    for (uint64_t v = 0; v < 50000; v++) {
        uint64_t x = v * v % 1000003;
        kr_bench_hist_add(v & 1 ? &h : &h2, x);
        kr_bench_hist_add(&h3, x);
    }
    kr_bench_hist_merge(&h, &h2);
    cr_assert_eq(h.count, h3.count);
    cr_assert_eq(h.min, h3.min);
    cr_assert_eq(h.max, h3.max);
    cr_assert_eq(memcmp(h.bucket, h3.bucket, sizeof(h.bucket)), 0);
    for (double q = 0.0; q <= 1.0; q += 0.01)
        cr_assert_eq(kr_bench_hist_quantile(&h, q), kr_bench_hist_quantile(&h3, q));
    /* merging an empty histogram changes nothing */
    kr_bench_hist_init(&h2);
    kr_bench_hist_merge(&h, &h2);
    cr_assert_eq(h.count, h3.count);
    cr_assert_eq(h.min, h3.min);
}
