/* Unit tests of the logging module: levels, line format, files, reopen, rate limiting. */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kr_log.h"

static char *tmp_path(void)
{
    char *path = strdup("/tmp/kraken-log-XXXXXX");
    cr_assert_not_null(path);
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    return path;
}

/* The whole file as a string (caller frees); "" when it does not exist. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return strdup("");
    char *buf = NULL;
    size_t cap = 0, len = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ------------------------------------------------------------------ levels */

Test(log_level, parse_and_names)
{
    cr_assert_eq(kr_log_level_parse("debug"), KR_LOG_DEBUG);
    cr_assert_eq(kr_log_level_parse("info"), KR_LOG_INFO);
    cr_assert_eq(kr_log_level_parse("warn"), KR_LOG_WARN);
    cr_assert_eq(kr_log_level_parse("warning"), KR_LOG_WARN);
    cr_assert_eq(kr_log_level_parse("error"), KR_LOG_ERROR);
    cr_assert_eq(kr_log_level_parse("INFO"), KR_LOG_INFO);
    cr_assert_eq(kr_log_level_parse("loud"), -EINVAL);
    cr_assert_eq(kr_log_level_parse(""), -EINVAL);
    cr_assert_eq(kr_log_level_parse("info "), -EINVAL);
    cr_assert_eq(kr_log_level_parse(NULL), -EINVAL);
    cr_assert_str_eq(kr_log_level_name(KR_LOG_DEBUG), "debug");
    cr_assert_str_eq(kr_log_level_name(KR_LOG_INFO), "info");
    cr_assert_str_eq(kr_log_level_name(KR_LOG_WARN), "warn");
    cr_assert_str_eq(kr_log_level_name(KR_LOG_ERROR), "error");
    cr_assert_str_eq(kr_log_level_name(42), "unknown");
    cr_assert_str_eq(kr_log_level_name(-1), "unknown");
    for (int l = KR_LOG_DEBUG; l <= KR_LOG_ERROR; l++)
        cr_assert_eq(kr_log_level_parse(kr_log_level_name(l)), l);
}

Test(log_level, set_get_enabled)
{
    cr_assert_eq(kr_log_get_level(), KR_LOG_INFO, "default level is info");
    cr_assert(!kr_log_enabled(KR_LOG_DEBUG));
    cr_assert(kr_log_enabled(KR_LOG_INFO));
    kr_log_set_level(KR_LOG_ERROR);
    cr_assert_eq(kr_log_get_level(), KR_LOG_ERROR);
    cr_assert(!kr_log_enabled(KR_LOG_WARN));
    cr_assert(kr_log_enabled(KR_LOG_ERROR));
    kr_log_set_level(KR_LOG_DEBUG);
    cr_assert(kr_log_enabled(KR_LOG_DEBUG));
    kr_log_set_level(99);
    cr_assert_eq(kr_log_get_level(), KR_LOG_ERROR, "clamped");
    kr_log_set_level(-5);
    cr_assert_eq(kr_log_get_level(), KR_LOG_DEBUG, "clamped");
}

/* ------------------------------------------------------------------ lines */

Test(log_file, line_format_and_level_filtering)
{
    char *path = tmp_path();
    cr_assert_eq(kr_log_open(path), 0);
    kr_log_set_level(KR_LOG_INFO);
    KR_DEBUG("hidden %d", 1);
    KR_INFO("hello %d", 42);
    KR_WARN("careful");
    KR_ERROR("broken %s", "pipe");
    kr_log_set_level(KR_LOG_ERROR);
    KR_WARN("hidden too");
    KR_ERROR("still shown");
    kr_log_set_level(KR_LOG_DEBUG);
    KR_DEBUG("now shown");
    kr_log_close();

    char *text = slurp(path);
    cr_assert_null(strstr(text, "hidden"), "filtered lines are not written:\n%s", text);
    cr_assert_eq(count_lines(text), 5, "%s", text);
    regex_t re;
    cr_assert_eq(regcomp(&re,
                         "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
                         "info  hello 42\n"
                         "[0-9T:.Z-]{24} warn  careful\n"
                         "[0-9T:.Z-]{24} error broken pipe\n"
                         "[0-9T:.Z-]{24} error still shown\n"
                         "[0-9T:.Z-]{24} debug now shown\n$",
                         REG_EXTENDED | REG_NOSUB),
                 0);
    cr_assert_eq(regexec(&re, text, 0, NULL, 0), 0, "unexpected log:\n%s", text);
    regfree(&re);

    /* The timestamp is UTC now (within a minute). */
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    cr_assert_not_null(strptime(text, "%Y-%m-%dT%H:%M:%S", &tm));
    time_t logged = timegm(&tm);
    time_t now = time(NULL);
    cr_assert(logged <= now && now - logged < 60, "timestamp %ld vs now %ld", (long)logged,
              (long)now);
    free(text);
    unlink(path);
    free(path);
}

Test(log_file, long_lines_are_cut_cleanly)
{
    char *path = tmp_path();
    cr_assert_eq(kr_log_open(path), 0);
    size_t big = 10000;
    char *msg = malloc(big + 1);
    memset(msg, 'x', big);
    msg[big] = '\0';
    KR_INFO("%s", msg);
    /* a multi-byte UTF-8 character straddling the cut is dropped whole */
    for (size_t i = 0; i + 1 < big; i += 2)
        memcpy(msg + i, "\xC3\xA9", 2);
    KR_INFO("a%s", msg);
    KR_INFO("short");
    kr_log_close();

    char *text = slurp(path);
    char *l1 = text, *l2 = strchr(l1, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
    cr_assert_eq(l2 - l1, 4096, "first line is cut at 4 KiB");
    cr_assert(memcmp(l2 - 4, "...\n", 4) == 0);
    cr_assert_leq(l3 - l2, 4096);
    cr_assert(memcmp(l3 - 4, "...\n", 4) == 0);
    /* before "..." comes a whole "é" */
    cr_assert(memcmp(l3 - 6, "\xC3\xA9", 2) == 0, "cut inside a UTF-8 sequence");
    cr_assert_not_null(strstr(l3, " info  short\n"));
    cr_assert_eq(count_lines(text), 3);
    free(text);
    free(msg);
    unlink(path);
    free(path);
}

Test(log_file, one_line_per_record_and_errno_kept)
{
    char *path = tmp_path();
    cr_assert_eq(kr_log_open(path), 0);
    errno = ERANGE;
    KR_INFO("a\nb\r\x01" "c\tend\n");
    cr_assert_eq(errno, ERANGE, "logging keeps errno");
    kr_log_close();
    char *text = slurp(path);
    cr_assert_eq(count_lines(text), 1, "%s", text);
    cr_assert_not_null(strstr(text, " info  a?b??c\tend\n"), "%s", text);
    free(text);
    unlink(path);
    free(path);
}

Test(log_file, open_errors)
{
    cr_assert_eq(kr_log_open("/tmp/kraken-no-such-dir/x.log"), -ENOENT);
    cr_assert_eq(kr_log_open(NULL), 0, "NULL means stderr");
    cr_assert_eq(kr_log_open(""), 0, "empty means stderr");
    cr_assert_eq(kr_log_reopen(), 0, "reopening stderr is a no-op");
}

Test(log_file, file_mode_and_append)
{
    char *path = tmp_path();
    unlink(path);
    mode_t old = umask(022);
    cr_assert_eq(kr_log_open(path), 0);
    umask(old);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0644);
    KR_INFO("first");
    kr_log_close();
    cr_assert_eq(kr_log_open(path), 0);
    KR_INFO("second");
    kr_log_close();
    char *text = slurp(path);
    cr_assert_eq(count_lines(text), 2, "appends, never truncates:\n%s", text);
    char *first = strstr(text, "first"), *second = strstr(text, "second");
    cr_assert(first && second && first < second);
    free(text);
    unlink(path);
    free(path);
}

Test(log_file, reopen_after_rename_writes_to_the_new_file)
{
    char *path = tmp_path();
    char rotated[64];
    snprintf(rotated, sizeof(rotated), "%s.1", path);
    cr_assert_eq(kr_log_open(path), 0);
    KR_INFO("before rotation");
    cr_assert_eq(rename(path, rotated), 0);
    KR_INFO("still old file");
    cr_assert_eq(kr_log_reopen(), 0);
    KR_INFO("after rotation");
    kr_log_close();

    char *old_text = slurp(rotated), *new_text = slurp(path);
    cr_assert_not_null(strstr(old_text, "before rotation"));
    cr_assert_not_null(strstr(old_text, "still old file"));
    cr_assert_null(strstr(old_text, "after rotation"));
    cr_assert_eq(count_lines(new_text), 1, "%s", new_text);
    cr_assert_not_null(strstr(new_text, "after rotation"));
    free(old_text);
    free(new_text);
    unlink(rotated);
    unlink(path);
    free(path);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

Test(log_file, close_goes_back_to_stderr_and_closes_the_file)
{
    char *path = tmp_path();
    int before = count_fds();
    cr_assert_eq(kr_log_open(path), 0);
    cr_assert_eq(count_fds(), before + 1);
    KR_INFO("in file");
    cr_assert_eq(kr_log_reopen(), 0);
    cr_assert_eq(count_fds(), before + 1, "a reopen does not leak the old descriptor");
    kr_log_close();
    cr_assert_eq(count_fds(), before, "closed");
    cr_assert_eq(kr_log_reopen(), 0, "nothing to reopen once closed");
    cr_assert_eq(count_fds(), before);
    char *text = slurp(path);
    cr_assert_eq(count_lines(text), 1);
    free(text);
    unlink(path);
    free(path);
}

#define KR_T_THREADS 4
#define KR_T_LINES 2000

static void *writer(void *arg)
{
    long id = (long)arg;
    for (int i = 0; i < KR_T_LINES; i++)
        KR_INFO("thread %ld line %d %s", id, i, "payload-payload-payload-payload");
    return NULL;
}

Test(log_file, concurrent_writers_and_rotations_keep_whole_lines)
{
    char *path = tmp_path();
    char rotated[64];
    snprintf(rotated, sizeof(rotated), "%s.1", path);
    cr_assert_eq(kr_log_open(path), 0);
    pthread_t t[KR_T_THREADS];
    for (long i = 0; i < KR_T_THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, writer, (void *)i), 0);
    /* Rotate once while they write: lines land in one file or the other, whole. */
    sleep_ms(2);
    cr_assert_eq(rename(path, rotated), 0);
    cr_assert_eq(kr_log_reopen(), 0);
    for (int i = 0; i < KR_T_THREADS; i++)
        pthread_join(t[i], NULL);
    kr_log_close();

    char *texts[2] = {slurp(rotated), slurp(path)};
    size_t seen[KR_T_THREADS] = {0};
    regex_t re;
    cr_assert_eq(regcomp(&re,
                         "^[0-9T:.Z-]{24} info  thread ([0-9]) line ([0-9]+) "
                         "payload-payload-payload-payload$",
                         REG_EXTENDED),
                 0);
    size_t total = 0;
    for (int f = 0; f < 2; f++) {
        for (char *line = strtok(texts[f], "\n"); line; line = strtok(NULL, "\n")) {
            regmatch_t m[3];
            cr_assert_eq(regexec(&re, line, 3, m, 0), 0, "torn line: '%s'", line);
            int id = line[m[1].rm_so] - '0';
            cr_assert_lt(id, KR_T_THREADS);
            cr_assert_eq((size_t)atoi(line + m[2].rm_so), seen[id], "thread %d in order", id);
            seen[id]++;
            total++;
        }
    }
    regfree(&re);
    cr_assert_eq(total, (size_t)KR_T_THREADS * KR_T_LINES, "no line lost");
    free(texts[0]);
    free(texts[1]);
    unlink(rotated);
    unlink(path);
    free(path);
}

/* Point stderr at a temp file for the test; returns the saved descriptor. */
static int capture_stderr(const char *path)
{
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    int fd = open(path, O_WRONLY | O_TRUNC);
    cr_assert_geq(fd, 0);
    cr_assert_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    close(fd);
    return saved;
}

static void restore_stderr(int saved)
{
    dup2(saved, STDERR_FILENO);
    close(saved);
}

Test(log_file, journald_priorities_when_stderr_is_the_journal)
{
    char *path = tmp_path();
    int saved = capture_stderr(path);
    struct stat st;
    cr_assert_eq(fstat(STDERR_FILENO, &st), 0);
    char js[64];
    snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", js, 1);
    cr_assert_eq(kr_log_open(NULL), 0);
    kr_log_set_level(KR_LOG_DEBUG);
    KR_DEBUG("d");
    KR_INFO("i %d", 1);
    KR_WARN("w");
    KR_ERROR("e");
    /* The variable inherited while stderr goes elsewhere: plain lines. */
    setenv("JOURNAL_STREAM", "1:2", 1);
    cr_assert_eq(kr_log_open(NULL), 0);
    KR_INFO("plain");
    restore_stderr(saved);
    unsetenv("JOURNAL_STREAM");

    char *text = slurp(path);
    cr_assert(strncmp(text, "<7>d\n<6>i 1\n<4>w\n<3>e\n", 22) == 0, "%s", text);
    cr_assert_not_null(strstr(text + 22, "Z info  plain\n"), "%s", text);
    free(text);
    unlink(path);
    free(path);
}

Test(log_file, stderr_by_default)
{
    char *path = tmp_path();
    int saved = capture_stderr(path);
    unsetenv("JOURNAL_STREAM");
    KR_WARN("to stderr");
    restore_stderr(saved);
    char *text = slurp(path);
    cr_assert_not_null(strstr(text, "Z warn  to stderr\n"), "%s", text);
    free(text);
    unlink(path);
    free(path);
}

/* ------------------------------------------------------------------ rate limiting */

Test(log_ratelimit, burst_then_suppressed_count)
{
    struct kr_log_ratelimit rl = {0};
    uint64_t sup = 99;
    uint64_t t = 5000;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(kr_log_ratelimit_at(&rl, 3, 1000, t + (uint64_t)i, &sup), 1);
        cr_assert_eq(sup, 0);
    }
    for (int i = 0; i < 5; i++)
        cr_assert_eq(kr_log_ratelimit_at(&rl, 3, 1000, t + 500, &sup), 0);
    cr_assert_eq(kr_log_ratelimit_at(&rl, 3, 1000, t + 999, &sup), 0, "window still open");
    /* Next window: allowed again, and told how many were dropped. */
    cr_assert_eq(kr_log_ratelimit_at(&rl, 3, 1000, t + 1000, &sup), 1);
    cr_assert_eq(sup, 6);
    cr_assert_eq(kr_log_ratelimit_at(&rl, 3, 1000, t + 1001, &sup), 1);
    cr_assert_eq(sup, 0, "the count is reported once");
    cr_assert_eq(kr_log_ratelimit_at(&rl, 3, 1000, t + 1002, &sup), 1);
    cr_assert_eq(kr_log_ratelimit_at(&rl, 3, 1000, t + 1003, &sup), 0);
    /* A quiet period: the first line after it reports the one dropped before. */
    cr_assert_eq(kr_log_ratelimit_at(&rl, 3, 1000, t + 60000, &sup), 1);
    cr_assert_eq(sup, 1);
    cr_assert_eq(kr_log_ratelimit_at(&rl, 3, 1000, t + 60001, NULL), 1, "NULL count is fine");
}

Test(log_ratelimit, zero_burst_counts_as_one)
{
    struct kr_log_ratelimit rl = {0};
    uint64_t sup;
    cr_assert_eq(kr_log_ratelimit_at(&rl, 0, 100, 1, &sup), 1);
    cr_assert_eq(kr_log_ratelimit_at(&rl, 0, 100, 2, &sup), 0);
    cr_assert_eq(kr_log_ratelimit_at(&rl, 0, 100, 101, &sup), 1);
    cr_assert_eq(sup, 1);
}

Test(log_ratelimit, real_clock)
{
    struct kr_log_ratelimit rl = {0};
    uint64_t sup = 0;
    int allowed = 0;
    for (int i = 0; i < 10; i++)
        allowed += kr_log_ratelimit(&rl, 4, 60000, &sup);
    cr_assert_eq(allowed, 4);
    cr_assert_eq(rl.suppressed, 6);
    /* A short window really ends. (On a loaded machine the second call may come after the
     * window already ended: then it is allowed, and that is checked instead.) */
    struct kr_log_ratelimit fast = {0};
    uint64_t t0 = kr_now_ms();
    cr_assert_eq(kr_log_ratelimit(&fast, 1, 20, &sup), 1);
    int second = kr_log_ratelimit(&fast, 1, 20, &sup);
    bool window_over = kr_now_ms() - t0 >= 20;
    cr_assert(second == 0 || window_over, "suppressed within the window");
    sleep_ms(60);
    cr_assert_eq(kr_log_ratelimit(&fast, 1, 20, &sup), 1);
    cr_assert_eq(sup, second == 0 ? 1u : 0u, "the suppressed line is counted once");
}

Test(log_clock, now_ms_is_monotonic)
{
    uint64_t a = kr_now_ms();
    sleep_ms(50);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t before = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    uint64_t b = kr_now_ms();
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t after = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    cr_assert_geq(b, a + 30, "%llu -> %llu", (unsigned long long)a, (unsigned long long)b);
    /* the same clock as CLOCK_MONOTONIC, coarsely (the coarse clock lags by a tick) */
    cr_assert_leq(b, after, "not ahead of CLOCK_MONOTONIC");
    cr_assert_geq(b + 50, before, "at most a tick behind it");
}

Test(log_ratelimit, suppressed_note_only_when_lines_were_suppressed)
{
    char buf[64];
    cr_assert_str_eq(kr_log_suppressed_note(0, buf, sizeof(buf)), "");
    cr_assert_str_eq(kr_log_suppressed_note(3, buf, sizeof(buf)), " (suppressed 3 similar)");
    cr_assert_eq(kr_log_suppressed_note(3, buf, sizeof(buf)), buf);
}
