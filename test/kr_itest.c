/* Integration-test helpers: see kr_itest.h. */
#include "kr_itest.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KR_IT_TIMEOUT_S 10

void kr_it_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static char *kr_it_read_log(const struct kr_it_server *s)
{
    FILE *f = fopen(s->log_path, "r");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (len + 1 == cap)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = 0;
    fclose(f);
    return buf;
}

int kr_it_log_contains(const struct kr_it_server *s, const char *needle)
{
    char *log = kr_it_read_log(s);
    int found = log && strstr(log, needle) != NULL;
    free(log);
    return found;
}

int kr_it_wait_log(const struct kr_it_server *s, const char *needle)
{
    for (int i = 0; i < KR_IT_TIMEOUT_S * 100; i++) {
        if (kr_it_log_contains(s, needle))
            return 1;
        kr_it_sleep_ms(10);
    }
    return 0;
}

/* KRAKEN_TEST_SERVER, when set, names another build of the server to test (the
 * ThreadSanitizer build in CI); else KRAKEN_BIN, which ctest sets to the built binary. */
static const char *kr_it_server_bin(void)
{
    const char *bin = getenv("KRAKEN_TEST_SERVER");
    if (!bin || !bin[0])
        bin = getenv("KRAKEN_BIN");
    cr_assert_not_null(bin, "KRAKEN_BIN must name the server binary");
    return bin;
}

static void kr_it_start_limited(struct kr_it_server *s, const char *const *extra,
                                unsigned nofile);

void kr_it_start(struct kr_it_server *s, const char *const *extra)
{
    kr_it_start_limited(s, extra, 0);
}

void kr_it_start_nofile(struct kr_it_server *s, const char *const *extra, unsigned nofile)
{
    cr_assert_gt(nofile, 0);
    kr_it_start_limited(s, extra, nofile);
}

static void kr_it_start_limited(struct kr_it_server *s, const char *const *extra,
                                unsigned nofile)
{
    const char *bin = kr_it_server_bin();
    snprintf(s->log_path, sizeof(s->log_path), "/tmp/kraken-it-XXXXXX");
    int lfd = mkstemp(s->log_path);
    cr_assert_geq(lfd, 0);
    close(lfd);
    const char *argv[64];
    int argc = 0;
    argv[argc++] = bin;
    argv[argc++] = "run";
    argv[argc++] = "--tcp_server_port";
    argv[argc++] = "0";
    argv[argc++] = "--log_file";
    argv[argc++] = s->log_path;
    snprintf(s->admin_path, sizeof(s->admin_path), "%s.sock", s->log_path);
    argv[argc++] = "--admin_socket";
    argv[argc++] = s->admin_path;
    argv[argc++] = "--drain_timeout_ms";
    argv[argc++] = "3000";
    for (int i = 0; extra && extra[i] && argc < 62; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    s->pid = fork();
    cr_assert_geq(s->pid, 0);
    if (s->pid == 0) {
        /* the server must not outlive a failed test, nor hold the runner's pipes */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* stderr (sanitizer reports) goes to <log>.err, kept when the test fails */
        char errpath[160];
        snprintf(errpath, sizeof(errpath), "%s.err", s->log_path);
        int devnull = open("/dev/null", O_RDWR);
        int errfd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
        }
        if (errfd >= 0)
            dup2(errfd, 2);
        if (nofile) {
            struct rlimit rl = {nofile, nofile};
            if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
                _exit(126);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    const char *tag = "listening on 127.0.0.1:";
    for (int i = 0; i < KR_IT_TIMEOUT_S * 100; i++) {
        char *log = kr_it_read_log(s);
        char *p = log ? strstr(log, tag) : NULL;
        if (p) {
            s->port = (uint16_t)atoi(p + strlen(tag));
            free(log);
            return;
        }
        free(log);
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid)
            cr_assert_fail("server exited early (status %d); see %s", st, s->log_path);
        kr_it_sleep_ms(10);
    }
    kill(s->pid, SIGKILL);
    cr_assert_fail("server did not report its port");
}

void kr_it_stop(struct kr_it_server *s)
{
    cr_assert_gt(s->pid, 0, "no server was started");
    kill(s->pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < KR_IT_TIMEOUT_S * 100; i++) {
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                      "server did not exit cleanly (status %d), log in %s, stderr in %s.err", st,
                      s->log_path, s->log_path);
            char errpath[160];
            snprintf(errpath, sizeof(errpath), "%s.err", s->log_path);
            unlink(errpath);
            unlink(s->log_path);
            unlink(s->admin_path); /* the server removes it; a crash would not */
            return;
        }
        kr_it_sleep_ms(10);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
    cr_assert_fail("server did not stop on SIGTERM");
}

int kr_it_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = -1;
    for (int i = 0; i < 100 && rc != 0; i++) {
        rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
        if (rc != 0)
            kr_it_sleep_ms(10);
    }
    cr_assert_eq(rc, 0, "connect: %s", strerror(errno));
    struct timeval tv = {KR_IT_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

void kr_it_send(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        cr_assert_gt(n, 0, "send: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

void kr_it_sends(int fd, const char *s)
{
    kr_it_send(fd, s, strlen(s));
}

size_t kr_it_read_until(int fd, char *buf, size_t cap, const char *suffix)
{
    size_t len = 0, sl = strlen(suffix);
    while (len + 1 < cap) {
        ssize_t n = recv(fd, buf + len, 1, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len >= sl && memcmp(buf + len - sl, suffix, sl) == 0)
            break;
    }
    buf[len] = 0;
    return len;
}

void kr_it_expect(int fd, const char *expect)
{
    size_t want = strlen(expect), len = 0;
    char *buf = malloc(want + 1);
    while (len < want) {
        ssize_t n = recv(fd, buf + len, want - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = 0;
    cr_assert(len == want && memcmp(buf, expect, want) == 0, "expected \"%s\", got \"%s\"",
              expect, buf);
    free(buf);
}

void kr_it_expect_closed(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, 0);
    cr_assert(n == 0 || (n < 0 && errno == ECONNRESET),
              "expected the server to close the connection (got %zd, byte %d)", n, n > 0 ? c : -1);
}

size_t kr_it_get(int fd, char *buf, size_t cap)
{
    kr_it_sends(fd, "get messages\r\n");
    size_t len = kr_it_read_until(fd, buf, cap, "\r\n");
    cr_assert_gt(len, 0, "no reply to get messages");
    if (strncmp(buf, "VALUE ", 6) != 0)
        return len; /* END, or an error line */
    unsigned long long m;
    cr_assert_eq(sscanf(buf, "VALUE messages 0 %llu\r\n", &m), 1, "bad reply header: %s", buf);
    size_t body = (size_t)m + 2 + 5; /* entries (m + 2) then END\r\n */
    cr_assert_lt(len + body, cap, "reply too large for the test buffer");
    size_t got = 0;
    while (got < body) {
        ssize_t n = recv(fd, buf + len + got, body - got, 0);
        cr_assert_gt(n, 0, "short reply");
        got += (size_t)n;
    }
    len += got;
    buf[len] = 0;
    cr_assert(memcmp(buf + len - 5, "END\r\n", 5) == 0, "reply must end with END");
    return len;
}

size_t kr_it_collect(int fd, size_t want, char *out, size_t cap, size_t *outlen)
{
    size_t seen = 0;
    *outlen = 0;
    size_t bcap = 1 << 22;
    char *buf = malloc(bcap);
    for (int i = 0; i < 2000 && seen < want; i++) {
        size_t len = kr_it_get(fd, buf, bcap);
        if (strcmp(buf, "END\r\n") == 0) {
            kr_it_sleep_ms(5);
            continue;
        }
        cr_assert(strncmp(buf, "VALUE ", 6) == 0, "unexpected reply to get messages: %s", buf);
        char *body = strstr(buf, "\r\n") + 2;
        size_t blen = len - (size_t)(body - buf) - 5;
        cr_assert_lt(*outlen + blen, cap);
        memcpy(out + *outlen, body, blen);
        *outlen += blen;
        out[*outlen] = 0;
        /* count entries by walking their headers */
        seen = 0;
        char *p = out, *end = out + *outlen;
        while (p < end) {
            char *nl = memmem(p, (size_t)(end - p), "\r\n", 2);
            cr_assert_not_null(nl);
            char *sp = nl;
            while (sp > p && sp[-1] != ' ')
                sp--;
            size_t plen = strtoul(sp, NULL, 10);
            p = nl + 2 + plen + 2;
            seen++;
        }
    }
    free(buf);
    return seen;
}

void kr_it_subscribe(int fd, const char *topics)
{
    char line[128];
    snprintf(line, sizeof(line), "set subscribe 0 0 %zu\r\n", strlen(topics));
    kr_it_sends(fd, line);
    kr_it_sends(fd, topics);
    kr_it_sends(fd, "\r\n");
    kr_it_expect(fd, "STORED\r\n");
}

void kr_it_publish(int fd, const char *topics, const char *payload, size_t plen)
{
    char head[512];
    int hl = snprintf(head, sizeof(head), "MESSAGE %s %zu\r\n", topics, plen);
    char line[128];
    snprintf(line, sizeof(line), "set publish 0 0 %zu\r\n", (size_t)hl + plen + 2);
    kr_it_sends(fd, line);
    kr_it_send(fd, head, (size_t)hl);
    kr_it_send(fd, payload, plen);
    kr_it_sends(fd, "\r\n\r\n");
    kr_it_expect(fd, "STORED\r\n");
}

int kr_it_cli(const struct kr_it_server *s, char *out, size_t cap, const char *const *args)
{
    const char *bin = kr_it_server_bin();
    const char *argv[64];
    int argc = 0;
    argv[argc++] = bin;
    for (int i = 0; args && args[i] && argc < 60; i++)
        argv[argc++] = args[i];
    if (s) {
        argv[argc++] = "--admin_socket";
        argv[argc++] = s->admin_path;
    }
    argv[argc] = NULL;
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    size_t len = 0;
    int st = 0;
    bool exited = false;
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    for (int i = 0; i < KR_IT_TIMEOUT_S * 2 * 100; i++) {
        for (;;) {
            ssize_t n = read(p[0], out + len, cap - 1 - len);
            if (n <= 0)
                break;
            len += (size_t)n;
            if (len == cap - 1)
                break;
        }
        if (!exited && waitpid(pid, &st, WNOHANG) == pid)
            exited = true;
        if (exited) {
            ssize_t n;
            while (len < cap - 1 && (n = read(p[0], out + len, cap - 1 - len)) > 0)
                len += (size_t)n;
            break;
        }
        kr_it_sleep_ms(10);
    }
    close(p[0]);
    out[len] = 0;
    if (!exited) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        cr_assert_fail("'kraken %s' did not exit; output so far:\n%s", args[0], out);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int kr_it_connect_unix(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    cr_assert_lt(strlen(path), sizeof(a.sun_path));
    strcpy(a.sun_path, path);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "connect %s: %s", path,
                 strerror(errno));
    struct timeval tv = {KR_IT_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return fd;
}

size_t kr_it_admin(int fd, const char *cmd, char *buf, size_t cap)
{
    kr_it_sends(fd, cmd);
    kr_it_sends(fd, "\n");
    size_t len = 0;
    size_t line = 0; /* start of the current line */
    while (len + 1 < cap) {
        ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
        cr_assert_gt(n, 0, "admin reply to '%s' cut short after %zu bytes", cmd, len);
        len += (size_t)n;
        buf[len] = 0;
        /* done when a complete line is END or ERROR ... */
        for (;;) {
            char *nl = memchr(buf + line, '\n', len - line);
            if (!nl)
                break;
            if (strncmp(buf + line, "END\n", 4) == 0 || strncmp(buf + line, "ERROR", 5) == 0)
                return len;
            line = (size_t)(nl - buf) + 1;
        }
    }
    cr_assert_fail("admin reply to '%s' too large for the buffer", cmd);
    return len;
}

int kr_it_connect_nb(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int kr_it_proc_cpu_ms(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p)
        return -1;
    unsigned long utime = 0, stime = 0;
    /* after ") ": state(3) ... utime is field 14, stime 15 */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1;
    long hz = sysconf(_SC_CLK_TCK);
    return (int)((utime + stime) * 1000 / (unsigned long)(hz > 0 ? hz : 100));
}

long kr_it_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

uint16_t kr_it_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

unsigned long long kr_it_stat_fd(int fd, const char *name)
{
    static char buf[1 << 16];
    kr_it_sends(fd, "stats\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "END\r\n");
    char key[96];
    snprintf(key, sizeof(key), "STAT %s ", name);
    const char *p = strstr(buf, key);
    cr_assert_not_null(p, "no %s in stats:\n%s", name, buf);
    return strtoull(p + strlen(key), NULL, 10);
}

unsigned long long kr_it_stat(uint16_t port, const char *name)
{
    int fd = kr_it_connect(port);
    unsigned long long v = kr_it_stat_fd(fd, name);
    close(fd);
    return v;
}
