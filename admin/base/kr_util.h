/* Small utilities every module may use, with no logging in their interface: allocation
 * that cannot fail, the "0 or -errno with a message" helper, the coarse monotonic clock, and
 * the ThreadSanitizer hand-off macros. */
#ifndef KR_UTIL_H
#define KR_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Allocation that cannot fail: on out of memory, log one error line (and write it to stderr)
 * naming the size, then abort. The one place where the server handles running out of
 * memory. Any thread. */
void *kr_xmalloc(size_t n);
void *kr_xcalloc(size_t n, size_t size);
void *kr_xrealloc(void *p, size_t n);
/* Grow an array to hold at least `need` elements of `size` bytes: *cap doubles (from
 * `min` when 0) until it is enough and the array is reallocated (the contents kept);
 * nothing happens when *cap already suffices. Returns the (possibly moved) array. Aborts on
 * out of memory. Any thread owning the array. */
void *kr_grow(void *arr, uint32_t *cap, uint32_t need, size_t size, uint32_t min);
/* kr_grow for an array `arr` with uint32_t capacity field `cap`: KR_GROW(a, a_cap, n). */
#define KR_GROW(arr, cap, need) ((arr) = kr_grow((arr), &(cap), (need), sizeof(*(arr)), 16))

/* Format an error message into err (when err is non-NULL and errlen > 0) and return rc:
 * the "return 0 or -errno with a message" convention in one call. Any thread. */
int kr_errf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ThreadSanitizer cannot see the ordering done by Concurrency Kit's inline assembly or
 * liburcu's barriers: KR_TSAN_RELEASE/ACQUIRE describe such a hand-off explicitly (no-ops
 * in other builds). */
#if defined(__SANITIZE_THREAD__)
#define KR_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KR_TSAN 1
#endif
#endif
#ifdef KR_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define KR_TSAN_RELEASE(p) __tsan_release(p)
#define KR_TSAN_ACQUIRE(p) __tsan_acquire(p)
#else
#define KR_TSAN_RELEASE(p) ((void)0)
#define KR_TSAN_ACQUIRE(p) ((void)0)
#endif

/* Monotonic milliseconds (CLOCK_MONOTONIC_COARSE). Any thread. */
uint64_t kr_now_ms(void);

/* Write v in decimal at out (room for 20 bytes); returns the bytes written, without a
 * terminator. Any thread. */
static inline size_t kr_u64_dec(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* The number of decimal digits of v. Any thread. */
static inline uint32_t kr_u64_digits(uint64_t v)
{
    uint32_t d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

#endif
