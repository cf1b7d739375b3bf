/* Logging: one write() per line, to stderr or to an O_APPEND file that can be reopened
 * under running writers. */
#include "kr_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Longest line written, '\n' included; longer messages are cut and end in "...". */
#define KR_LOG_LINE_MAX 4096

int kr_log_level_current = KR_LOG_INFO;

/* The descriptor every writer loads. It only ever changes from stderr to a file (open) or
 * back (close); a reopen replaces the file under the same number with dup3(), so a writer
 * that loaded it never writes to a closed descriptor. */
static int kr_log_fd = STDERR_FILENO;
/* 1 when lines go to journald through stderr (priority prefixes instead of timestamps),
 * 0 when not, -1 until first checked. */
static int kr_log_journal = -1;
/* Control thread only: whether kr_log_fd is our own file, and its path for reopens. */
static int kr_log_owned;
static char kr_log_path[4096];

static const char *const kr_log_names[] = {"debug", "info", "warn", "error"};
static const int kr_log_syslog_prio[] = {7, 6, 4, 3};

static int kr_log_clamp(int level)
{
    if (level < KR_LOG_DEBUG)
        return KR_LOG_DEBUG;
    if (level > KR_LOG_ERROR)
        return KR_LOG_ERROR;
    return level;
}

/* systemd sets JOURNAL_STREAM to "<device>:<inode>" of the stream it connected to stderr.
 * Compare it with our stderr, as systemd recommends: a process started by a service whose
 * stderr was redirected elsewhere inherits the variable but must not write "<6>" prefixes. */
static int kr_log_detect_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    if (!js || !js[0])
        return 0;
    unsigned long long dev, ino;
    char tail;
    if (sscanf(js, "%llu:%llu%c", &dev, &ino, &tail) != 2)
        return 0;
    struct stat st;
    if (fstat(STDERR_FILENO, &st) != 0)
        return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void kr_log_set_level(int level)
{
    ck_pr_store_int(&kr_log_level_current, kr_log_clamp(level));
}

int kr_log_get_level(void)
{
    return ck_pr_load_int(&kr_log_level_current);
}

int kr_log_level_parse(const char *name)
{
    if (!name)
        return -EINVAL;
    for (int i = KR_LOG_DEBUG; i <= KR_LOG_ERROR; i++)
        if (strcasecmp(name, kr_log_names[i]) == 0)
            return i;
    if (strcasecmp(name, "warning") == 0)
        return KR_LOG_WARN;
    return -EINVAL;
}

const char *kr_log_level_name(int level)
{
    if (level < KR_LOG_DEBUG || level > KR_LOG_ERROR)
        return "unknown";
    return kr_log_names[level];
}

/* Make `fd` (freshly opened, ours) the log destination. Control thread. */
static int kr_log_install(int fd)
{
    if (kr_log_owned) {
        int cur = ck_pr_load_int(&kr_log_fd);
        /* Atomically repoint the number writers use; the old file is closed by dup3. */
        if (dup3(fd, cur, O_CLOEXEC) < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        close(fd);
    } else {
        ck_pr_fence_store();
        ck_pr_store_int(&kr_log_fd, fd);
        kr_log_owned = 1;
    }
    ck_pr_store_int(&kr_log_journal, 0);
    return 0;
}

static int kr_log_open_path(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
    if (fd < 0)
        return -errno;
    return kr_log_install(fd);
}

int kr_log_open(const char *path)
{
    if (!path || !path[0]) {
        kr_log_close();
        return 0;
    }
    size_t len = strlen(path);
    if (len >= sizeof(kr_log_path))
        return -ENAMETOOLONG;
    int rc = kr_log_open_path(path);
    if (rc == 0)
        memcpy(kr_log_path, path, len + 1);
    return rc;
}

int kr_log_reopen(void)
{
    if (!kr_log_owned)
        return 0; /* stderr: nothing to reopen */
    return kr_log_open_path(kr_log_path);
}

void kr_log_close(void)
{
    if (kr_log_owned) {
        int fd = ck_pr_load_int(&kr_log_fd);
        ck_pr_store_int(&kr_log_fd, STDERR_FILENO);
        ck_pr_fence_store();
        close(fd);
        kr_log_owned = 0;
    }
    kr_log_path[0] = '\0';
    ck_pr_store_int(&kr_log_journal, kr_log_detect_journal());
}

/* "2024-05-01T12:34:56.789Z " into buf (at least 32 bytes); returns its length.
 * The date part is cached per thread and recomputed once a second. */
static size_t kr_log_timestamp(char *buf)
{
    static __thread time_t cached_sec = (time_t)-1;
    static __thread char cached[32];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != cached_sec) {
        struct tm tm;
        if (!gmtime_r(&ts.tv_sec, &tm) ||
            !strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm))
            strcpy(cached, "0000-00-00T00:00:00");
        cached_sec = ts.tv_sec;
    }
    size_t n = strlen(cached);
    memcpy(buf, cached, n);
    int ms = (int)(ts.tv_nsec / 1000000);
    buf[n++] = '.';
    buf[n++] = (char)('0' + ms / 100);
    buf[n++] = (char)('0' + ms / 10 % 10);
    buf[n++] = (char)('0' + ms % 10);
    buf[n++] = 'Z';
    buf[n++] = ' ';
    return n;
}

void kr_log_write(int level, const char *fmt, ...)
{
    int saved_errno = errno;
    char buf[KR_LOG_LINE_MAX];
    size_t n;
    level = kr_log_clamp(level);

    int journal = ck_pr_load_int(&kr_log_journal);
    if (journal < 0) {
        /* First line before any kr_log_open(): decide once, unless open/close did meanwhile. */
        journal = kr_log_detect_journal();
        if (!ck_pr_cas_int(&kr_log_journal, -1, journal))
            journal = ck_pr_load_int(&kr_log_journal);
    }
    if (journal) {
        n = (size_t)snprintf(buf, sizeof(buf), "<%d>", kr_log_syslog_prio[level]);
    } else {
        n = kr_log_timestamp(buf);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%-5s ", kr_log_names[level]);
    }

    /* The message gets everything but the final '\n'. */
    size_t room = sizeof(buf) - n - 1;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, room + 1, fmt, ap);
    va_end(ap);
    size_t len = m < 0 ? 0 : (size_t)m;
    int cut = len > room;
    if (cut) {
        len = room;
        /* Replace the tail with "...", not leaving half of a UTF-8 sequence before it. */
        size_t at = len - 3;
        while (at > 0 && ((unsigned char)buf[n + at] & 0xC0) == 0x80)
            at--;
        memcpy(buf + n + at, "...", 3);
        len = at + 3;
    }
    while (len > 0 && (buf[n + len - 1] == '\n' || buf[n + len - 1] == '\r'))
        len--;
    /* One line per record: control characters (client bytes included) become '?'. */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[n + i];
        if ((c < 0x20 && c != '\t') || c == 0x7F)
            buf[n + i] = '?';
    }
    n += len;
    buf[n++] = '\n';

    int fd = ck_pr_load_int(&kr_log_fd);
    ssize_t w;
    do
        w = write(fd, buf, n);
    while (w < 0 && errno == EINTR);
    errno = saved_errno;
}

int kr_log_ratelimit_at(struct kr_log_ratelimit *rl, uint32_t burst, uint32_t interval_ms,
                        uint64_t now_ms, uint64_t *suppressed)
{
    if (burst == 0)
        burst = 1;
    if (rl->in_window == 0 || now_ms - rl->window_start_ms >= interval_ms) {
        rl->window_start_ms = now_ms;
        rl->in_window = 0;
    }
    if (rl->in_window < burst) {
        rl->in_window++;
        if (suppressed)
            *suppressed = rl->suppressed;
        rl->suppressed = 0;
        return 1;
    }
    rl->suppressed++;
    if (suppressed)
        *suppressed = 0;
    return 0;
}

const char *kr_log_suppressed_note(uint64_t n, char *buf, size_t len)
{
    if (n == 0)
        return "";
    snprintf(buf, len, " (suppressed %llu similar)", (unsigned long long)n);
    return buf;
}

int kr_log_ratelimit(struct kr_log_ratelimit *rl, uint32_t burst, uint32_t interval_ms,
                     uint64_t *suppressed)
{
    return kr_log_ratelimit_at(rl, burst, interval_ms, kr_now_ms(), suppressed);
}

