/* Logging: levels, one write() per line, rate limiting for floods.
 *
 * The level is a single atomic; the KR_LOG_* macros test it before formatting anything,
 * so a filtered-out line costs one relaxed load on the hot path. Any thread may log. */
#ifndef KR_LOG_H
#define KR_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <ck_pr.h>

#include "kr_util.h"

enum kr_log_level { KR_LOG_DEBUG = 0, KR_LOG_INFO = 1, KR_LOG_WARN = 2, KR_LOG_ERROR = 3 };

extern int kr_log_level_current; /* read through kr_log_enabled() only */

/* True when a line at `level` would be written. Any thread. */
static inline int kr_log_enabled(int level)
{
    return level >= ck_pr_load_int(&kr_log_level_current);
}

/* Open the log destination: `path` NULL or "" means stderr. Returns 0 or -errno.
 * Control thread, before other threads start (or during a reopen, see kr_log_reopen). */
int kr_log_open(const char *path);
/* Reopen the current log file (logrotate / SIGHUP). Returns 0 or -errno. Control thread. */
int kr_log_reopen(void);
/* Close the log file; later lines go to stderr. Control thread, at exit. */
void kr_log_close(void);
/* Set the level (any thread; takes effect for every thread at once). Out-of-range values
 * are clamped to debug..error. */
void kr_log_set_level(int level);
/* The current level. Any thread. */
int kr_log_get_level(void);
/* "debug"/"info"/"warn"/"error" (also "warning"; any case) -> level, or -EINVAL. Any thread. */
int kr_log_level_parse(const char *name);
/* Level -> static name ("unknown" when out of range). Any thread. */
const char *kr_log_level_name(int level);

/* Format and write one line (timestamp, level, message, '\n') with a single write().
 * Under systemd (stderr is the JOURNAL_STREAM) the line is "<priority>message" instead.
 * Lines are cut at 4 KiB (ending in "..."), control characters in the message become '?',
 * and errno is preserved. Any thread. Use the macros below instead of calling this. */
void kr_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define KR_LOG(level, ...)                                                                         \
    do {                                                                                           \
        if (kr_log_enabled(level))                                                                 \
            kr_log_write(level, __VA_ARGS__);                                                      \
    } while (0)
#define KR_DEBUG(...) KR_LOG(KR_LOG_DEBUG, __VA_ARGS__)
#define KR_INFO(...) KR_LOG(KR_LOG_INFO, __VA_ARGS__)
#define KR_WARN(...) KR_LOG(KR_LOG_WARN, __VA_ARGS__)
#define KR_ERROR(...) KR_LOG(KR_LOG_ERROR, __VA_ARGS__)

/* A rate limiter for floods. Owned by one thread (no locking); zero-initialise it.
 * kr_log_ratelimit() returns 1 when a line may be written now, 0 when it must be suppressed.
 * When it returns 1 and lines were suppressed since the last allowed one, *suppressed gets
 * their count (else 0) so the caller can append "(suppressed N)". At most `burst` lines
 * per `interval_ms`. */
struct kr_log_ratelimit {
    uint64_t window_start_ms;
    uint32_t in_window;
    uint64_t suppressed;
};
int kr_log_ratelimit(struct kr_log_ratelimit *rl, uint32_t burst, uint32_t interval_ms,
                     uint64_t *suppressed);
/* The same with the caller's clock (`now_ms` from kr_now_ms(), or any monotonic count),
 * for callers that already read the time, and for tests. A burst of 0 counts as 1.
 * Owning thread. */
int kr_log_ratelimit_at(struct kr_log_ratelimit *rl, uint32_t burst, uint32_t interval_ms,
                        uint64_t now_ms, uint64_t *suppressed);
/* " (suppressed N similar)" when n > 0 (formatted into buf, which is returned), else "":
 * the tail of a rate-limited line. Any thread (buf is the caller's). */
const char *kr_log_suppressed_note(uint64_t n, char *buf, size_t len);

#endif
