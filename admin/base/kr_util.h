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
/* Grow an array to hold at least `need` elements of `size` bytes: *cap doubles (from `min`,
 * or 1, when 0) until it is enough, capped at `max` elements, and the array is reallocated
 * (the contents kept); nothing happens when *cap already suffices, and it never shrinks.
 * Returns the (possibly moved) array. Aborts on out of memory, and when `need` exceeds
 * `max`. Use it through KR_GROW / KR_GROW_MIN. Any thread owning the array. */
void *kr_grow(void *arr, size_t *cap, size_t need, size_t size, size_t min, size_t max);
/* Make the array `arr` (any element type) hold at least `need` elements, its capacity in the
 * unsigned field `cap` (uint32_t, size_t, ...; counted in elements, so in bytes for a char
 * buffer): KR_GROW_MIN(c->out, c->out_cap, c->out_len + n, 256). The first allocation gets
 * `min` elements (KR_GROW: 16), each growth doubles. `arr` and `cap` are lvalues evaluated
 * more than once; `need` is evaluated once. Evaluates to the array. Any thread owning it. */
#define KR_GROW_MIN(arr, cap, need, min)                                                    \
    __extension__({                                                                         \
        _Static_assert((__typeof__(cap))-1 > 0, "KR_GROW: the capacity must be unsigned");  \
        size_t kr_grow_need_ = (need);                                                      \
        if (kr_grow_need_ > (cap)) {                                                        \
            size_t kr_grow_cap_ = (cap);                                                    \
            (arr) = kr_grow((arr), &kr_grow_cap_, kr_grow_need_, sizeof(*(arr)), (min),     \
                            (size_t)(__typeof__(cap))-1);                                   \
            (cap) = (__typeof__(cap))kr_grow_cap_;                                          \
        }                                                                                   \
        (arr);                                                                              \
    })
#define KR_GROW(arr, cap, need) KR_GROW_MIN(arr, cap, need, 16)

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

/* Wake another thread's libuv loop after handing it something (a ring entry, a flag): a
 * full fence, then uv_async_send. uv_async_send first reads the handle's pending flag
 * without a barrier and returns when it is set, trusting the loop to look again; without
 * the fence the CPU may read that flag before the hand-off's store is visible (a store then
 * a load may be reordered, on x86 too): the woken loop clears the flag, finds nothing, and
 * sleeps, while the sender saw the flag still set and sent no wake-up. The hand-off then
 * waits for the next, unrelated, wake-up (seen: deliveries held for seconds under load).
 * For files that include uv.h. Any thread. */
#define KR_ASYNC_SEND(async) (__atomic_thread_fence(__ATOMIC_SEQ_CST), uv_async_send(async))

/* Monotonic milliseconds (CLOCK_MONOTONIC_COARSE). Any thread. */
uint64_t kr_now_ms(void);

/* Milliseconds from `then` to `now`; 0 when `then` is later, a stamp taken after `now` was
 * read (a loop that reads the clock once and then does work that stamps connections).
 * Any thread. */
static inline uint64_t kr_ms_since(uint64_t now, uint64_t then)
{
    return now > then ? now - then : 0;
}

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
