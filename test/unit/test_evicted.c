/* Unit tests of the history eviction sketch: the bound is never below the truth, an empty
 * sketch answers 0, and the false-positive rate at the sizing point of PROTOCOL.md (100,000
 * evicted topics) stays under 1 %. Topic hashes are real kr_topic_hash values of topic
 * names, as the shards compute them. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_evicted.h"
#include "kr_queue.h"

static uint64_t hash_of(const char *kind, uint32_t i)
{
    char name[64];
    int n = snprintf(name, sizeof(name), "%s:%u", kind, i);
    return kr_topic_hash(name, (size_t)n);
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dULL;
}

Test(evicted, empty_sketch_answers_zero)
{
    struct kr_evicted *e = kr_evicted_create(KR_EVICTED_LOG2_DEFAULT);
    for (uint32_t i = 0; i < 100000; i++)
        cr_assert_eq(kr_evicted_bound(e, hash_of("t", i)), 0);
    cr_assert_eq(kr_evicted_bound(e, 0), 0);
    cr_assert_eq(kr_evicted_bound(e, UINT64_MAX), 0);
    kr_evicted_destroy(e);
    kr_evicted_destroy(NULL);
}

Test(evicted, one_topic_is_exact_and_keeps_its_maximum)
{
    struct kr_evicted *e = kr_evicted_create(KR_EVICTED_LOG2_DEFAULT);
    uint64_t h = hash_of("a", 1);
    kr_evicted_note(e, h, 5);
    cr_assert_eq(kr_evicted_bound(e, h), 5);
    kr_evicted_note(e, h, 3); /* a lower sequence never lowers the bound */
    cr_assert_eq(kr_evicted_bound(e, h), 5);
    kr_evicted_note(e, h, UINT64_MAX);
    cr_assert_eq(kr_evicted_bound(e, h), UINT64_MAX);
    cr_assert_eq(kr_evicted_bound(e, hash_of("a", 2)), 0);
    kr_evicted_destroy(e);
}

Test(evicted, bytes_of_the_default_and_of_other_sizes)
{
    struct kr_evicted *e = kr_evicted_create(KR_EVICTED_LOG2_DEFAULT);
    size_t b = kr_evicted_bytes(e);
    printf("default sketch: %u rows x 2^%u buckets, %zu bytes\n", KR_EVICTED_ROWS,
           KR_EVICTED_LOG2_DEFAULT, b);
    size_t cells = ((size_t)KR_EVICTED_ROWS << KR_EVICTED_LOG2_DEFAULT) * 8;
    cr_assert_geq(b, cells);
    cr_assert_lt(b, cells + 4096);
    kr_evicted_destroy(e);
    e = kr_evicted_create(KR_EVICTED_LOG2_MIN);
    cr_assert_geq(kr_evicted_bytes(e), (size_t)KR_EVICTED_ROWS * 16 * 8);
    kr_evicted_destroy(e);
}

/* Random notes against a reference of the true maximum per topic; small sketches force
 * collisions in every row, the default one shows the bound is mostly exact. */
static void stress(uint32_t log2, uint32_t ntopics, uint32_t nnotes, uint64_t seed)
{
    struct kr_evicted *e = kr_evicted_create(log2);
    uint64_t *h = calloc(ntopics, sizeof(*h));
    uint64_t *truth = calloc(ntopics, sizeof(*truth));
    cr_assert(h && truth);
    for (uint32_t i = 0; i < ntopics; i++)
        h[i] = hash_of("s", i);
    uint64_t s = seed, seq = 0;
    for (uint32_t k = 0; k < nnotes; k++) {
        /* evictions go oldest first, but a message's topics may span sequences: mostly
         * rising with some older ones */
        seq += 1 + rnd(&s) % 4;
        uint64_t v = rnd(&s) % 8 == 0 ? rnd(&s) % (seq + 1) : seq;
        /* a few topics take most of the traffic */
        uint32_t t = rnd(&s) % 4 == 0 ? (uint32_t)(rnd(&s) % 16) : (uint32_t)(rnd(&s) % ntopics);
        kr_evicted_note(e, h[t], v);
        if (truth[t] < v)
            truth[t] = v;
        if (k % 97 == 0) { /* check as it goes, too */
            uint32_t c = (uint32_t)(rnd(&s) % ntopics);
            cr_assert_geq(kr_evicted_bound(e, h[c]), truth[c]);
        }
    }
    uint32_t exact = 0;
    for (uint32_t i = 0; i < ntopics; i++) {
        uint64_t b = kr_evicted_bound(e, h[i]);
        cr_assert_geq(b, truth[i], "topic %u: bound %llu below truth %llu", i,
                      (unsigned long long)b, (unsigned long long)truth[i]);
        exact += b == truth[i];
    }
    printf("2^%u buckets, %u topics, %u notes: %u bounds exact\n", log2, ntopics, nnotes, exact);
    free(h);
    free(truth);
    kr_evicted_destroy(e);
}

Test(evicted, never_below_the_truth)
{
    stress(KR_EVICTED_LOG2_MIN, 1000, 50000, 1);
    stress(8, 5000, 200000, 2);
    stress(12, 20000, 200000, 3);
    stress(KR_EVICTED_LOG2_DEFAULT, 50000, 300000, 4);
}

/* Evict `n` distinct topics with sequences above T, then count the quiet topics (never
 * noted) whose bound is above T. `shard_of` / `nshards` keep only the topics one shard of a
 * router with that many shards would own (the same hash picks the shard). */
static double fp_rate(uint32_t n, uint32_t nshards, uint32_t shard)
{
    const uint64_t T = 1000000;
    struct kr_evicted *e = kr_evicted_create(KR_EVICTED_LOG2_DEFAULT);
    uint64_t seq = T;
    for (uint32_t i = 0, got = 0; got < n; i++) {
        uint64_t h = hash_of("evicted", i);
        if ((uint32_t)((h >> 32) % nshards) != shard)
            continue;
        kr_evicted_note(e, h, ++seq);
        got++;
    }
    uint32_t fp = 0;
    for (uint32_t i = 0, got = 0; got < n; i++) {
        uint64_t h = hash_of("quiet", i);
        if ((uint32_t)((h >> 32) % nshards) != shard)
            continue;
        fp += kr_evicted_bound(e, h) > T;
        got++;
    }
    kr_evicted_destroy(e);
    return (double)fp / n;
}

Test(evicted, false_positive_rate_after_100000_evicted_topics_is_under_1_percent)
{
    double r = fp_rate(100000, 1, 0);
    printf("100,000 evicted vs 100,000 quiet topics: %.3f %% of quiet topics get a bound "
           "above the token (expected about 0.5 %%)\n", r * 100);
    cr_assert_lt(r, 0.01, "false-positive rate %.3f %%", r * 100);
    /* the topics of one shard of eight: the shard's share of the hash does not bias the rows */
    double r8 = fp_rate(100000, 8, 5);
    printf("the same within one shard of 8: %.3f %%\n", r8 * 100);
    cr_assert_lt(r8, 0.01, "false-positive rate %.3f %% in one shard", r8 * 100);
}
