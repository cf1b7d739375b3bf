/* Unit tests of kr_util: the one growth helper (kr_grow, KR_GROW, KR_GROW_MIN) and the
 * elapsed-time helper (kr_ms_since). */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>

#include "kr_util.h"

Test(grow, from_nothing_gets_the_minimum)
{
    uint32_t *a = NULL;
    uint32_t cap = 0;
    KR_GROW(a, cap, 1);
    cr_assert_not_null(a);
    cr_assert_eq(cap, 16);
    free(a);

    a = NULL;
    cap = 0;
    KR_GROW_MIN(a, cap, 3, 4);
    cr_assert_eq(cap, 4);
    free(a);

    a = NULL;
    cap = 0;
    KR_GROW_MIN(a, cap, 1, 0); /* no minimum: one element */
    cr_assert_eq(cap, 1);
    free(a);
}

Test(grow, doubles_until_the_need_fits)
{
    uint64_t *a = NULL;
    size_t cap = 0;
    KR_GROW_MIN(a, cap, 100, 8); /* 8 16 32 64 128 */
    cr_assert_eq(cap, 128);
    KR_GROW_MIN(a, cap, 129, 8);
    cr_assert_eq(cap, 256);
    free(a);
}

Test(grow, exact_need_and_no_shrink)
{
    char *a = NULL;
    uint32_t cap = 0;
    KR_GROW_MIN(a, cap, 64, 64); /* exactly the minimum: no doubling */
    cr_assert_eq(cap, 64);
    char *before = a;
    KR_GROW_MIN(a, cap, 64, 64); /* enough already: untouched */
    cr_assert_eq(cap, 64);
    cr_assert_eq(a, before);
    KR_GROW(a, cap, 1); /* a smaller need never shrinks */
    cr_assert_eq(cap, 64);
    cr_assert_eq(a, before);
    KR_GROW(a, cap, 0);
    cr_assert_eq(cap, 64);
    free(a);
}

Test(grow, keeps_the_contents)
{
    uint32_t *a = NULL;
    uint32_t cap = 0, n = 0;
    for (uint32_t i = 0; i < 10000; i++) {
        KR_GROW_MIN(a, cap, n + 1, 2);
        a[n++] = i * 7u;
    }
    cr_assert_geq(cap, 10000);
    cr_assert_eq(cap & (cap - 1), 0, "a power of two from a power-of-two minimum");
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(a[i], i * 7u);
    free(a);
}

Test(grow, evaluates_need_once_and_returns_the_array)
{
    int *a = NULL;
    uint32_t cap = 0;
    uint32_t calls = 0;
    int *r = KR_GROW_MIN(a, cap, (calls++, 5u), 4);
    cr_assert_eq(calls, 1);
    cr_assert_eq(r, a);
    cr_assert_eq(cap, 8);
    free(a);
}

Test(grow, the_function_caps_at_the_field_maximum)
{
    size_t cap = 0;
    char *a = kr_grow(NULL, &cap, 5, 1, 4, 6); /* 4 -> 8, held back to the maximum 6 */
    cr_assert_eq(cap, 6);
    free(a);
}

/* Regression: the net thread's sweep read the clock once, then unblocked parked requests
 * (which stamp their connections with a later clock reading) and computed "idle" as
 * now - last_active: the subtraction wrapped and busy connections were closed as idle for
 * the default hour (seen as `idle_timeouts` under a pinned churn load). */
Test(ms_since, a_stamp_taken_after_now_is_no_time)
{
    cr_assert_eq(kr_ms_since(1000, 1004), 0);
    cr_assert_eq(kr_ms_since(1000, 1000), 0);
    cr_assert_lt(kr_ms_since(5, UINT64_MAX), 3600000, "wrapped");
}

Test(ms_since, counts_forward)
{
    cr_assert_eq(kr_ms_since(1004, 1000), 4);
    cr_assert_eq(kr_ms_since(UINT64_MAX, 0), UINT64_MAX);
}
