/* Small utilities (kr_util.h): allocation that cannot fail, kr_errf, the clock. */
#include "kr_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "kr_log.h"

uint64_t kr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void kr_oom(size_t n)
{
    kr_log_write(KR_LOG_ERROR, "out of memory allocating %zu bytes; aborting", n);
    char buf[96];
    int len = snprintf(buf, sizeof(buf), "kraken: out of memory allocating %zu bytes\n", n);
    if (len > 0) {
        ssize_t w = write(2, buf, (size_t)len);
        (void)w;
    }
    abort();
}

void *kr_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        kr_oom(n);
    return p;
}

void *kr_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        kr_oom(n * size);
    return p;
}

void *kr_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        kr_oom(n);
    return q;
}

void *kr_grow(void *arr, size_t *cap, size_t need, size_t size, size_t min, size_t max)
{
    if (need <= *cap)
        return arr;
    if (need > max) /* more elements than the capacity field can count */
        kr_oom(SIZE_MAX);
    size_t ncap = *cap ? *cap : (min ? min : 1);
    while (ncap < need)
        ncap = ncap > max / 2 ? max : ncap * 2;
    if (ncap > max)
        ncap = max;
    if (ncap > SIZE_MAX / size)
        kr_oom(SIZE_MAX);
    arr = kr_xrealloc(arr, ncap * size);
    *cap = ncap;
    return arr;
}

int kr_errf(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}
