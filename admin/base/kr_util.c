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

void *kr_grow(void *arr, uint32_t *cap, uint32_t need, size_t size, uint32_t min)
{
    if (need <= *cap)
        return arr;
    uint64_t ncap = *cap ? *cap : (min ? min : 1);
    while (ncap < need)
        ncap *= 2;
    if (ncap > UINT32_MAX)
        ncap = UINT32_MAX;
    if (ncap > SIZE_MAX / size)
        kr_oom(SIZE_MAX);
    arr = kr_xrealloc(arr, (size_t)ncap * size);
    *cap = (uint32_t)ncap;
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
