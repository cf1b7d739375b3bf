/* Integration-test helpers: see kr_itest.h. */
#include "kr_itest.h"

#include "kr_bench_proc.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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
            s->pid = 0;
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
    double s = kr_bench_cpu_s((long)pid);
    return s < 0 ? -1 : (int)(s * 1000);
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

/* ------------------------------------------------------------------ NATS clusters */

/* nats-server: $NATS_SERVER_BIN, else the first one on PATH, else /usr/sbin/nats-server. */
static const char *kr_it_nats_bin(void)
{
    static char path[512];
    const char *env = getenv("NATS_SERVER_BIN");
    if (env && env[0]) {
        cr_assert_eq(access(env, X_OK), 0, "NATS_SERVER_BIN=%s is not an executable", env);
        return env;
    }
    const char *p = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof(dirs), "%s:/usr/sbin:/usr/local/sbin", p ? p : "/usr/bin:/bin");
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(path, sizeof(path), "%s/nats-server", d);
        if (access(path, X_OK) == 0)
            return path;
    }
    cr_assert_fail("nats-server is not installed (Debian package nats-server; cmake/deps.sh "
                   "installs it), or name it with NATS_SERVER_BIN");
    return NULL;
}

/* A free loopback port not in used[0..n). */
static uint16_t kr_it_free_port_not(const uint16_t *used, int n)
{
    for (int tries = 0; tries < 100; tries++) {
        uint16_t p = kr_it_free_port();
        int dup = 0;
        for (int i = 0; i < n; i++)
            dup |= used[i] == p;
        if (!dup)
            return p;
    }
    cr_assert_fail("no distinct free loopback port");
    return 0;
}

static int kr_it_nats_log_has(const struct kr_it_nats *one, const char *needle)
{
    struct kr_it_server tmp;
    snprintf(tmp.log_path, sizeof(tmp.log_path), "%s", one->log_path);
    return kr_it_log_contains(&tmp, needle);
}

/* Fork and exec v[which] with routes to every other server of v[0..n). */
static void kr_it_nats_spawn(struct kr_it_nats *v, int n, int which)
{
    const char *bin = kr_it_nats_bin();
    struct kr_it_nats *one = &v[which];
    char port[8], mport[8], cluster_url[64], routes[KR_IT_NATS_MAX * 40] = "";
    snprintf(port, sizeof(port), "%u", one->port);
    snprintf(mport, sizeof(mport), "%u", one->mport);
    snprintf(cluster_url, sizeof(cluster_url), "nats://127.0.0.1:%u", one->cport);
    size_t rl = 0;
    for (int i = 0; i < n; i++) {
        if (i == which)
            continue;
        rl += (size_t)snprintf(routes + rl, sizeof(routes) - rl, "%snats-route://127.0.0.1:%u",
                               rl ? "," : "", v[i].rport ? v[i].rport : v[i].cport);
    }
    char advertise[32];
    snprintf(advertise, sizeof(advertise), "127.0.0.1:%u", one->rport);
    const char *argv[32];
    int argc = 0;
    argv[argc++] = bin;
    argv[argc++] = "-a";
    argv[argc++] = "127.0.0.1";
    argv[argc++] = "-p";
    argv[argc++] = port;
    argv[argc++] = "-m";
    argv[argc++] = mport;
    argv[argc++] = "-n";
    argv[argc++] = one->name;
    argv[argc++] = "-l";
    argv[argc++] = one->log_path;
    argv[argc++] = "--cluster";
    argv[argc++] = cluster_url;
    argv[argc++] = "--cluster_name";
    argv[argc++] = one->cluster;
    if (one->rport) {
        argv[argc++] = "--cluster_advertise";
        argv[argc++] = advertise;
    }
    if (one->user[0]) {
        argv[argc++] = "--user";
        argv[argc++] = one->user;
        argv[argc++] = "--pass";
        argv[argc++] = one->pass;
    }
    if (one->tls_cert[0]) {
        argv[argc++] = "--tls";
        argv[argc++] = "--tlscert";
        argv[argc++] = one->tls_cert;
        argv[argc++] = "--tlskey";
        argv[argc++] = one->tls_key;
    }
    if (rl) {
        argv[argc++] = "--routes";
        argv[argc++] = routes;
    }
    argv[argc] = NULL;
    /* a fresh log each start, so the readiness lines read below are this run's */
    int lfd = open(one->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(lfd, 0, "cannot create %s", one->log_path);
    close(lfd);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int devnull = open("/dev/null", O_RDWR);
        int errfd = open(one->log_path, O_WRONLY | O_APPEND);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
        }
        if (errfd >= 0)
            dup2(errfd, 2);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    one->pid = pid;
}

/* Wait (bounded) until the server listens for clients and routes: 0; -EADDRINUSE when it
 * exited over a port taken meanwhile; other exits fail the test. */
static int kr_it_nats_wait_up(struct kr_it_nats *one)
{
    for (int i = 0; i < KR_IT_TIMEOUT_S * 100; i++) {
        if (kr_it_nats_log_has(one, "Server is ready") &&
            kr_it_nats_log_has(one, "Listening for route connections"))
            return 0;
        int st;
        if (waitpid(one->pid, &st, WNOHANG) == one->pid) {
            one->pid = 0;
            if (kr_it_nats_log_has(one, "address already in use"))
                return -EADDRINUSE;
            cr_assert_fail("nats-server %s exited at start (status %d); its log: %s", one->name, st,
                           one->log_path);
        }
        kr_it_sleep_ms(10);
    }
    kr_it_nats_kill(one);
    cr_assert_fail("nats-server %s did not come up; its log: %s", one->name, one->log_path);
    return -ETIMEDOUT;
}

/* What the next kr_it_nats_cluster_start gives each server ("": none), set only around it
 * by the variants below. */
static const char *kr_it_nats_user = "", *kr_it_nats_pass = "";
static const char *kr_it_nats_cert = "", *kr_it_nats_key = "";

static void kr_it_nats_cluster_start_with(struct kr_it_nats *v, int n, const char *user,
                                          const char *pass, const char *cert, const char *key)
{
    kr_it_nats_user = user;
    kr_it_nats_pass = pass;
    kr_it_nats_cert = cert;
    kr_it_nats_key = key;
    kr_it_nats_cluster_start(v, n);
    kr_it_nats_user = kr_it_nats_pass = kr_it_nats_cert = kr_it_nats_key = "";
}

void kr_it_nats_cluster_start_tls(struct kr_it_nats *v, int n, const char *cert, const char *key)
{
    kr_it_nats_cluster_start_with(v, n, "", "", cert, key);
}

void kr_it_nats_cluster_start_auth(struct kr_it_nats *v, int n, const char *user, const char *pass)
{
    kr_it_nats_cluster_start_with(v, n, user, pass, "", "");
}

static void kr_it_nats_cluster_start_px(struct kr_it_nats *v, int n, struct kr_it_proxy **px);

void kr_it_nats_cluster_start(struct kr_it_nats *v, int n)
{
    kr_it_nats_cluster_start_px(v, n, NULL);
}

void kr_it_nats_cluster_start_proxied(struct kr_it_nats *v, int n, struct kr_it_proxy **px)
{
    cr_assert_not_null(px);
    kr_it_nats_cluster_start_px(v, n, px);
}

/* A proxy in front of 127.0.0.1:target listening on a port not in used[0..n) (bounded). */
static struct kr_it_proxy *kr_it_proxy_start_not(uint16_t target, const uint16_t *used, int n)
{
    for (int tries = 0; tries < 100; tries++) {
        struct kr_it_proxy *p = kr_it_proxy_start(target);
        int dup = 0;
        for (int i = 0; i < n; i++)
            dup |= used[i] == kr_it_proxy_port(p);
        if (!dup)
            return p;
        kr_it_proxy_stop(p);
    }
    cr_assert_fail("no distinct free loopback port for a proxy");
    return NULL;
}

static void kr_it_nats_cluster_start_px(struct kr_it_nats *v, int n, struct kr_it_proxy **px)
{
    static unsigned clusters;
    cr_assert(n >= 1 && n <= KR_IT_NATS_MAX, "1..%d NATS servers, not %d", KR_IT_NATS_MAX, n);
    kr_it_nats_bin(); /* fails the test at once when it is missing */
    char cname[48];
    snprintf(cname, sizeof(cname), "kr-it-%d-%u", (int)getpid(), clusters++);
    for (int attempt = 0; attempt < 5; attempt++) {
        uint16_t used[4 * KR_IT_NATS_MAX];
        int nused = 0;
        memset(v, 0, sizeof(*v) * (size_t)n);
        for (int i = 0; i < n; i++) {
            struct kr_it_nats *one = &v[i];
            one->index = i;
            one->n = n;
            snprintf(one->name, sizeof(one->name), "kr-it-nats-%d", i + 1);
            snprintf(one->cluster, sizeof(one->cluster), "%s", cname);
            snprintf(one->user, sizeof(one->user), "%s", kr_it_nats_user);
            snprintf(one->pass, sizeof(one->pass), "%s", kr_it_nats_pass);
            snprintf(one->tls_cert, sizeof(one->tls_cert), "%s", kr_it_nats_cert);
            snprintf(one->tls_key, sizeof(one->tls_key), "%s", kr_it_nats_key);
            snprintf(one->log_path, sizeof(one->log_path), "/tmp/kraken-it-nats-XXXXXX");
            int lfd = mkstemp(one->log_path);
            cr_assert_geq(lfd, 0);
            close(lfd);
            one->port = kr_it_free_port_not(used, nused);
            used[nused++] = one->port;
            one->cport = kr_it_free_port_not(used, nused);
            used[nused++] = one->cport;
            one->mport = kr_it_free_port_not(used, nused);
            used[nused++] = one->mport;
        }
        for (int i = 0; px && i < n; i++) {
            px[i] = kr_it_proxy_start_not(v[i].cport, used, nused);
            v[i].rport = kr_it_proxy_port(px[i]);
            used[nused++] = v[i].rport;
        }
        int lost_race = 0;
        for (int i = 0; i < n && !lost_race; i++) {
            kr_it_nats_spawn(v, n, i);
            lost_race = kr_it_nats_wait_up(&v[i]) == -EADDRINUSE;
        }
        if (lost_race) {
            kr_it_nats_cluster_stop(v, n); /* and again on other ports */
            for (int i = 0; px && i < n; i++) {
                kr_it_proxy_stop(px[i]);
                px[i] = NULL;
            }
            continue;
        }
        cr_assert(kr_it_nats_wait_routes(v, n, n - 1),
                  "the %d NATS servers did not form a full mesh (logs: %s ...)", n, v[0].log_path);
        return;
    }
    cr_assert_fail("could not start %d NATS servers on free ports", n);
}

void kr_it_nats_stop(struct kr_it_nats *one)
{
    if (one->pid <= 0)
        return;
    kill(one->pid, SIGTERM);
    int st;
    for (int i = 0; i < KR_IT_TIMEOUT_S * 100; i++) {
        if (waitpid(one->pid, &st, WNOHANG) == one->pid) {
            one->pid = 0;
            return;
        }
        kr_it_sleep_ms(10);
    }
    kr_it_nats_kill(one);
}

void kr_it_nats_kill(struct kr_it_nats *one)
{
    if (one->pid <= 0)
        return;
    kill(one->pid, SIGKILL);
    int st;
    waitpid(one->pid, &st, 0);
    one->pid = 0;
}

void kr_it_nats_cluster_stop(struct kr_it_nats *v, int n)
{
    for (int i = 0; i < n; i++) {
        kr_it_nats_stop(&v[i]);
        if (v[i].log_path[0])
            unlink(v[i].log_path);
    }
}

void kr_it_nats_restart(struct kr_it_nats *v, int n, int which)
{
    cr_assert(which >= 0 && which < n);
    cr_assert_eq(v[which].pid, 0, "%s is still running", v[which].name);
    int rc = -EADDRINUSE;
    /* the same ports: another process may hold one for a moment (bounded retries) */
    for (int attempt = 0; attempt < 50 && rc == -EADDRINUSE; attempt++) {
        if (attempt)
            kr_it_sleep_ms(100);
        kr_it_nats_spawn(v, n, which);
        rc = kr_it_nats_wait_up(&v[which]);
    }
    cr_assert_eq(rc, 0, "%s could not listen on its ports again", v[which].name);
    cr_assert(kr_it_nats_wait_routes(v, n, n - 1), "%s did not rejoin the mesh (log %s)",
              v[which].name, v[which].log_path);
}

void kr_it_nats_url(const struct kr_it_nats *one, char *buf, size_t len)
{
    snprintf(buf, len, "nats://127.0.0.1:%u", one->port);
}

void kr_it_nats_urls(const struct kr_it_nats *v, int n, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = 0;
    for (int i = 0; i < n && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%snats://127.0.0.1:%u", i ? "," : "",
                                v[i].port);
    cr_assert_lt(off, len, "URL buffer too small");
}

int kr_it_nats_routes(const struct kr_it_nats *one)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(one->mport)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    static const char req[] = "GET /routez HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) != (ssize_t)sizeof(req) - 1) {
        close(fd);
        return -1;
    }
    /* HTTP/1.0: the server closes after the reply */
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while (len + 1 < cap && (r = recv(fd, buf + len, cap - 1 - len, 0)) > 0)
        len += (size_t)r;
    buf[len] = 0;
    close(fd);
    int routes = -1;
    const char *p = strstr(buf, "\"num_routes\"");
    if (strncmp(buf, "HTTP/1.", 7) == 0 && strstr(buf, " 200 ") && p) {
        p += strlen("\"num_routes\"");
        while (*p == ' ' || *p == ':')
            p++;
        if (*p >= '0' && *p <= '9')
            routes = atoi(p);
    }
    free(buf);
    return routes;
}

int kr_it_nats_wait_routes(const struct kr_it_nats *v, int n, int want)
{
    for (int i = 0; i < KR_IT_TIMEOUT_S * 3 * 20; i++) {
        int all = 1;
        for (int j = 0; j < n && all; j++)
            if (v[j].pid > 0 && kr_it_nats_routes(&v[j]) != want)
                all = 0;
        if (all)
            return 1;
        kr_it_sleep_ms(50);
    }
    return 0;
}

/* ------------------------------------------------------------------ raw NATS client */

/* One control line without its "\r\n" into buf (asserts on EOF, timeout or overlong). */
static size_t kr_it_natsc_line(int fd, char *buf, size_t cap)
{
    size_t len = kr_it_read_until(fd, buf, cap, "\r\n");
    cr_assert(len >= 2 && buf[len - 2] == '\r' && buf[len - 1] == '\n',
              "NATS: no complete line from the server (got \"%s\")", buf);
    len -= 2;
    buf[len] = 0;
    return len;
}

/* Handle the lines a client may see at any time: 1 when `line` was one of them. */
static int kr_it_natsc_common(int fd, const char *line)
{
    if (strcasecmp(line, "PING") == 0) {
        kr_it_sends(fd, "PONG\r\n");
        return 1;
    }
    if (strcasecmp(line, "+OK") == 0)
        return 1;
    cr_assert(strncasecmp(line, "-ERR", 4) != 0, "NATS server said: %s", line);
    return 0;
}

int kr_it_natsc_connect(uint16_t port)
{
    int fd = kr_it_connect(port);
    char line[8192];
    kr_it_natsc_line(fd, line, sizeof(line));
    cr_assert(strncasecmp(line, "INFO ", 5) == 0, "NATS: expected INFO, got \"%s\"", line);
    kr_it_sends(fd, "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"kraken-it\"}\r\n");
    kr_it_natsc_flush(fd);
    return fd;
}

void kr_it_natsc_flush(int fd)
{
    kr_it_sends(fd, "PING\r\n");
    char line[8192];
    for (int i = 0; i < 100; i++) {
        kr_it_natsc_line(fd, line, sizeof(line));
        if (strcasecmp(line, "PONG") == 0)
            return;
        if (kr_it_natsc_common(fd, line))
            continue;
        cr_assert_fail("NATS: expected PONG, got \"%s\"", line);
    }
    cr_assert_fail("NATS: no PONG");
}

void kr_it_natsc_sub(int fd, const char *subject, unsigned sid)
{
    char line[512];
    snprintf(line, sizeof(line), "SUB %s %u\r\n", subject, sid);
    kr_it_sends(fd, line);
    kr_it_natsc_flush(fd);
}

void kr_it_natsc_unsub(int fd, unsigned sid)
{
    char line[64];
    snprintf(line, sizeof(line), "UNSUB %u\r\n", sid);
    kr_it_sends(fd, line);
}

void kr_it_natsc_pub(int fd, const char *subject, const void *payload, size_t len)
{
    char line[512];
    snprintf(line, sizeof(line), "PUB %s %zu\r\n", subject, len);
    kr_it_sends(fd, line);
    kr_it_send(fd, payload, len);
    kr_it_sends(fd, "\r\n");
}

int kr_it_natsc_next(int fd, int timeout_ms, struct kr_it_natsc_msg *m)
{
    char line[8192];
    for (int i = 0; i < 100; i++) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, timeout_ms);
        cr_assert_geq(pr, 0, "poll: %s", strerror(errno));
        if (pr == 0)
            return 0;
        kr_it_natsc_line(fd, line, sizeof(line));
        if (kr_it_natsc_common(fd, line))
            continue;
        cr_assert(strncasecmp(line, "MSG", 3) == 0 && (line[3] == ' ' || line[3] == '\t'),
                  "NATS: expected MSG, got \"%s\"", line);
        char *tok[5];
        int nt = 0;
        char *save = NULL;
        for (char *t = strtok_r(line + 4, " \t", &save); t && nt < 5; t = strtok_r(NULL, " \t", &save))
            tok[nt++] = t;
        cr_assert(nt == 3 || nt == 4, "NATS: bad MSG line");
        cr_assert_lt(strlen(tok[0]), sizeof(m->subject));
        snprintf(m->subject, sizeof(m->subject), "%s", tok[0]);
        m->sid = (unsigned)strtoul(tok[1], NULL, 10);
        m->reply[0] = 0;
        if (nt == 4) {
            cr_assert_lt(strlen(tok[2]), sizeof(m->reply));
            snprintf(m->reply, sizeof(m->reply), "%s", tok[2]);
        }
        m->len = strtoul(tok[nt - 1], NULL, 10);
        cr_assert_lt(m->len + 2, sizeof(m->payload), "NATS: a %zu-byte payload is too long here",
                     m->len);
        size_t got = 0;
        while (got < m->len + 2) {
            ssize_t n = recv(fd, m->payload + got, m->len + 2 - got, 0);
            cr_assert_gt(n, 0, "NATS: MSG payload cut short");
            got += (size_t)n;
        }
        cr_assert(m->payload[m->len] == '\r' && m->payload[m->len + 1] == '\n',
                  "NATS: MSG payload not followed by CRLF");
        m->payload[m->len] = 0;
        return 1;
    }
    cr_assert_fail("NATS: only control lines for a long time");
    return 0;
}

int kr_it_exited_0(const struct kr_it_server *s)
{
    for (int i = 0; i < 1500; i++) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t)s->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            si.si_pid == s->pid)
            return si.si_code == CLD_EXITED && si.si_status == 0;
        kr_it_sleep_ms(10);
    }
    return 0;
}

void kr_it_resp_cmd(int fd, const char *a0, ...)
{
    const char *argv[32];
    size_t n = 0;
    va_list ap;
    va_start(ap, a0);
    for (const char *a = a0; a && n < 32; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    char req[8192];
    size_t len = (size_t)snprintf(req, sizeof(req), "*%zu\r\n", n);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(req + len, sizeof(req) - len, "$%zu\r\n%s\r\n", strlen(argv[i]),
                                argv[i]);
    kr_it_send(fd, req, len);
}

unsigned long long kr_it_admin_stat(const struct kr_it_server *s, const char *name)
{
    static char buf[1 << 20];
    int fd = kr_it_connect_unix(s->admin_path);
    kr_it_admin(fd, "stats", buf, sizeof(buf));
    close(fd);
    char want[96];
    snprintf(want, sizeof(want), "STAT %s ", name);
    char *p = strstr(buf, want);
    cr_assert_not_null(p, "no %s in stats:\n%s", name, buf);
    return strtoull(p + strlen(want), NULL, 10);
}

/* ------------------------------------------------------------------ the suite fixture */

struct kr_it_server kr_it_srv;

void kr_it_fixture_start(const char *const *extra)
{
    kr_it_start(&kr_it_srv, extra);
}

void kr_it_fixture_stop(void)
{
    if (kr_it_srv.pid > 0)
        kr_it_stop(&kr_it_srv);
}

/* ------------------------------------------------------------------ waiting for a figure */

static int kr_it_cmp_holds(long long v, enum kr_it_cmp cmp, long long want)
{
    switch (cmp) {
    case KR_IT_EQ:
        return v == want;
    case KR_IT_GE:
        return v >= want;
    case KR_IT_LE:
        return v <= want;
    }
    return 0;
}

long long kr_it_wait_figure_at(const char *file, int line, kr_it_figure_fn *read,
                               const void *arg, const char *name, enum kr_it_cmp cmp,
                               long long want)
{
    static const char *const op[] = {[KR_IT_EQ] = "==", [KR_IT_GE] = ">=", [KR_IT_LE] = "<="};
    long long v = read(arg, name);
    for (int i = 1; i < KR_IT_WAIT_TRIES && !kr_it_cmp_holds(v, cmp, want); i++) {
        kr_it_sleep_ms(KR_IT_WAIT_MS);
        v = read(arg, name);
    }
    cr_assert(kr_it_cmp_holds(v, cmp, want),
              "%s:%d: waited for %s %s %lld; last seen %lld (after %d reads %d ms apart)", file,
              line, name, op[cmp], want, v, KR_IT_WAIT_TRIES, KR_IT_WAIT_MS);
    return v;
}

long long kr_it_stat_figure(const void *port, const char *name)
{
    return (long long)kr_it_stat(*(const uint16_t *)port, name);
}

long long kr_it_admin_stat_figure(const void *server, const char *name)
{
    return (long long)kr_it_admin_stat(server, name);
}

/* ---------------------------------------------------------------- positions */

/* The token of a reply that ends with `VALUE position 0 <k>\r\n<token>\r\nEND\r\n`. */
void kr_it_token_of(const char *reply, char *tok, size_t cap)
{
    const char *v = strstr(reply, "VALUE position 0 ");
    cr_assert(v, "no position in %s", reply);
    unsigned k = 0;
    cr_assert_eq(sscanf(v, "VALUE position 0 %u", &k), 1);
    const char *t = strstr(v, "\r\n") + 2;
    cr_assert(k > 0 && k < cap && strlen(t) >= k + 2 + 5, "%s", reply);
    memcpy(tok, t, k);
    tok[k] = 0;
    cr_assert_str_eq(t + k, "\r\nEND\r\n");
}

/* `get messages position` until `want` entries were handed out; their text (MESSAGE lines
 * and payloads) into out, the last position into tok. Bounded. */
void kr_it_poll_position(int fd, size_t want, char *out, size_t cap, char *tok, size_t tokcap)
{
    static char pbuf[1 << 16];
    size_t got = 0, len = 0;
    out[0] = 0;
    for (int i = 0; i < 2000 && (got < want || tok[0] == 0); i++) {
        kr_it_sends(fd, "get messages position\r\n");
        kr_it_read_until(fd, pbuf, sizeof(pbuf), "END\r\n");
        kr_it_token_of(pbuf, tok, tokcap);
        const char *e = strstr(pbuf, "VALUE messages 0 ");
        if (e) {
            const char *body = strstr(e, "\r\n") + 2, *end = strstr(pbuf, "VALUE position 0 ");
            for (const char *p = body; (p = strstr(p, "MESSAGE ")) && p < end; p += 8)
                got++;
            size_t n = (size_t)(end - body);
            cr_assert(len + n < cap);
            memcpy(out + len, body, n);
            len += n;
            out[len] = 0;
        }
        if (got < want)
            kr_it_sleep_ms(5);
    }
    cr_assert_eq(got, want, "handed out %zu entries, wanted %zu: %s", got, want, out);
}

void kr_it_resume_mc(int fd, const char *tok, const char *topics, const char *expect)
{
    char req[1024];
    snprintf(req, sizeof(req), "set resume 0 0 %zu\r\n%s\r\n%s\r\n", strlen(tok) + 2 + strlen(topics),
             tok, topics);
    kr_it_sends(fd, req);
    kr_it_expect(fd, expect);
}


/* ------------------------------------------------------------------ TCP proxy */

/* One forwarded connection: fd[0] accepted, fd[1] towards the target; buf[i] holds bytes
 * read from fd[i] not yet written to fd[1 - i], at [off[i], len[i]). fd[0] < 0: unused. */
struct kr_it_proxy_pair {
    int fd[2];
    char *buf[2];
    size_t off[2], len[2];
};

struct kr_it_proxy {
    pthread_t thread;
    int lfd;    /* listening socket */
    int ctl[2]; /* control socketpair: [0] the test's end, [1] the proxy thread's */
    uint16_t port, target;
    bool cut;   /* proxy thread only */
    struct kr_it_proxy_pair pair[KR_IT_PROXY_PAIRS];
    unsigned forwarded, refused, open; /* written by the proxy thread, read by any (atomics) */
};

static void kr_it_proxy_count(unsigned *c, int d)
{
    __atomic_add_fetch(c, (unsigned)d, __ATOMIC_RELAXED);
}

static void kr_it_proxy_close_pair(struct kr_it_proxy *p, struct kr_it_proxy_pair *q)
{
    if (q->fd[0] < 0)
        return;
    for (int i = 0; i < 2; i++) {
        /* RST rather than FIN: the peer sees the connection gone, as a broken network says */
        struct linger lg = {1, 0};
        setsockopt(q->fd[i], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(q->fd[i]);
        q->fd[i] = -1;
        q->off[i] = q->len[i] = 0;
    }
    kr_it_proxy_count(&p->open, -1);
}

static void kr_it_proxy_refuse(struct kr_it_proxy *p, int fd)
{
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
    kr_it_proxy_count(&p->refused, 1);
}

/* Accept what waits (at most a round's worth): forward it, or refuse it. */
static void kr_it_proxy_accept(struct kr_it_proxy *p)
{
    for (int k = 0; k < KR_IT_PROXY_PAIRS + 4; k++) {
        int fd = accept4(p->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN: nothing more now */
        struct kr_it_proxy_pair *q = NULL;
        for (int i = 0; i < KR_IT_PROXY_PAIRS && !q; i++)
            if (p->pair[i].fd[0] < 0)
                q = &p->pair[i];
        if (p->cut || !q) {
            kr_it_proxy_refuse(p, fd);
            continue;
        }
        /* a loopback connect completes or fails at once */
        int tfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p->target)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (tfd < 0 || connect(tfd, (struct sockaddr *)&a, sizeof(a)) != 0) {
            if (tfd >= 0)
                close(tfd);
            kr_it_proxy_refuse(p, fd);
            continue;
        }
        fcntl(tfd, F_SETFL, fcntl(tfd, F_GETFL) | O_NONBLOCK);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(tfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        q->fd[0] = fd;
        q->fd[1] = tfd;
        kr_it_proxy_count(&p->forwarded, 1);
        kr_it_proxy_count(&p->open, 1);
    }
}

/* Move bytes for side `i` of q as its poll events allow; 0, or -1 when the pair must close. */
static int kr_it_proxy_io(struct kr_it_proxy_pair *q, int i, short revents)
{
    /* read from fd[i] into buf[i] while there is room */
    if ((revents & (POLLIN | POLLHUP | POLLERR)) && q->len[i] < KR_IT_PROXY_BUF) {
        if (q->off[i] && q->len[i] == q->off[i])
            q->off[i] = q->len[i] = 0;
        ssize_t r = recv(q->fd[i], q->buf[i] + q->len[i], KR_IT_PROXY_BUF - q->len[i], 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
            return -1;
        if (r > 0)
            q->len[i] += (size_t)r;
    }
    /* write what buf[1 - i] holds to fd[i] */
    int o = 1 - i;
    if ((revents & POLLOUT) && q->len[o] > q->off[o]) {
        ssize_t w = send(q->fd[i], q->buf[o] + q->off[o], q->len[o] - q->off[o], MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        if (w > 0)
            q->off[o] += (size_t)w;
        if (q->off[o] == q->len[o])
            q->off[o] = q->len[o] = 0;
        else if (q->len[o] == KR_IT_PROXY_BUF) { /* full: make room at the end */
            memmove(q->buf[o], q->buf[o] + q->off[o], q->len[o] - q->off[o]);
            q->len[o] -= q->off[o];
            q->off[o] = 0;
        }
    }
    if ((revents & (POLLERR | POLLNVAL)) && !(revents & POLLIN))
        return -1;
    return 0;
}

static void *kr_it_proxy_main(void *arg)
{
    struct kr_it_proxy *p = arg;
    struct pollfd pf[2 + 2 * KR_IT_PROXY_PAIRS];
    int who[2 + 2 * KR_IT_PROXY_PAIRS]; /* pair * 2 + side, for pf[2..] */
    for (;;) {
        int n = 0;
        pf[n++] = (struct pollfd){.fd = p->ctl[1], .events = POLLIN};
        pf[n++] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
        for (int k = 0; k < KR_IT_PROXY_PAIRS; k++) {
            struct kr_it_proxy_pair *q = &p->pair[k];
            if (q->fd[0] < 0)
                continue;
            for (int i = 0; i < 2; i++) {
                short ev = 0;
                if (q->len[i] < KR_IT_PROXY_BUF)
                    ev |= POLLIN;
                if (q->len[1 - i] > q->off[1 - i])
                    ev |= POLLOUT;
                who[n] = k * 2 + i;
                pf[n++] = (struct pollfd){.fd = q->fd[i], .events = ev};
            }
        }
        if (poll(pf, (nfds_t)n, 100) < 0)
            continue; /* EINTR */
        for (int j = 2; j < n; j++) {
            struct kr_it_proxy_pair *q = &p->pair[who[j] / 2];
            int i = who[j] % 2;
            if (!pf[j].revents || q->fd[i] != pf[j].fd)
                continue; /* closed meanwhile in this round */
            if (kr_it_proxy_io(q, i, pf[j].revents) != 0)
                kr_it_proxy_close_pair(p, q);
        }
        if (pf[1].revents & POLLIN)
            kr_it_proxy_accept(p);
        if (pf[0].revents & (POLLIN | POLLHUP)) {
            char cmd = 0;
            if (read(p->ctl[1], &cmd, 1) != 1)
                cmd = 's'; /* the test's end is gone */
            if (cmd == 'c' || cmd == 's') {
                p->cut = true;
                for (int k = 0; k < KR_IT_PROXY_PAIRS; k++)
                    kr_it_proxy_close_pair(p, &p->pair[k]);
            } else if (cmd == 'h') {
                p->cut = false;
            }
            ssize_t w = write(p->ctl[1], &cmd, 1); /* carried out */
            (void)w;
            if (cmd == 's')
                return NULL;
        }
    }
}

/* Hand the proxy thread a command and wait (bounded) until it has carried it out. */
static void kr_it_proxy_cmd(struct kr_it_proxy *p, char cmd)
{
    cr_assert_eq(write(p->ctl[0], &cmd, 1), 1, "proxy control: %s", strerror(errno));
    struct pollfd pf = {.fd = p->ctl[0], .events = POLLIN};
    cr_assert_eq(poll(&pf, 1, KR_IT_TIMEOUT_S * 1000), 1, "the proxy did not carry out '%c'", cmd);
    char ack = 0;
    cr_assert(read(p->ctl[0], &ack, 1) == 1 && ack == cmd, "proxy control: bad answer");
}

struct kr_it_proxy *kr_it_proxy_start(uint16_t target)
{
    struct kr_it_proxy *p = calloc(1, sizeof(*p));
    cr_assert_not_null(p);
    p->target = target;
    for (int k = 0; k < KR_IT_PROXY_PAIRS; k++) {
        struct kr_it_proxy_pair *q = &p->pair[k];
        q->fd[0] = q->fd[1] = -1;
        for (int i = 0; i < 2; i++) {
            q->buf[i] = malloc(KR_IT_PROXY_BUF);
            cr_assert_not_null(q->buf[i]);
        }
    }
    p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cr_assert_geq(p->lfd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(p->lfd, (struct sockaddr *)&a, sizeof(a)), 0, "proxy bind: %s",
                 strerror(errno));
    cr_assert_eq(listen(p->lfd, 16), 0);
    socklen_t len = sizeof(a);
    getsockname(p->lfd, (struct sockaddr *)&a, &len);
    p->port = ntohs(a.sin_port);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p->ctl), 0);
    cr_assert_eq(pthread_create(&p->thread, NULL, kr_it_proxy_main, p), 0);
    return p;
}

uint16_t kr_it_proxy_port(const struct kr_it_proxy *p)
{
    return p->port;
}

void kr_it_proxy_cut(struct kr_it_proxy *p)
{
    kr_it_proxy_cmd(p, 'c');
}

void kr_it_proxy_heal(struct kr_it_proxy *p)
{
    kr_it_proxy_cmd(p, 'h');
}

unsigned kr_it_proxy_forwarded(const struct kr_it_proxy *p)
{
    return __atomic_load_n(&p->forwarded, __ATOMIC_RELAXED);
}

unsigned kr_it_proxy_refused(const struct kr_it_proxy *p)
{
    return __atomic_load_n(&p->refused, __ATOMIC_RELAXED);
}

unsigned kr_it_proxy_open(const struct kr_it_proxy *p)
{
    return __atomic_load_n(&p->open, __ATOMIC_RELAXED);
}

long long kr_it_proxy_figure(const void *proxy, const char *name)
{
    const struct kr_it_proxy *p = proxy;
    if (strcmp(name, "forwarded") == 0)
        return kr_it_proxy_forwarded(p);
    if (strcmp(name, "refused") == 0)
        return kr_it_proxy_refused(p);
    cr_assert_str_eq(name, "open", "no proxy figure %s", name);
    return kr_it_proxy_open(p);
}

void kr_it_proxy_stop(struct kr_it_proxy *p)
{
    if (!p)
        return;
    kr_it_proxy_cmd(p, 's');
    pthread_join(p->thread, NULL);
    close(p->lfd);
    close(p->ctl[0]);
    close(p->ctl[1]);
    for (int k = 0; k < KR_IT_PROXY_PAIRS; k++)
        for (int i = 0; i < 2; i++)
            free(p->pair[k].buf[i]);
    free(p);
}

/* Read one RESP2 `message` frame: its channel and payload (NUL-terminated). */
void kr_it_resp_read_message(int fd, char *ch, size_t chcap, char *payload, size_t pcap)
{
    kr_it_expect(fd, "*3\r\n$7\r\nmessage\r\n$");
    char line[32];
    kr_it_read_until(fd, line, sizeof(line), "\r\n");
    size_t cl = strtoul(line, NULL, 10);
    cr_assert(cl + 3 < chcap);
    kr_it_read_until(fd, ch, cl + 3, "\r\n");
    ch[cl] = 0;
    kr_it_expect(fd, "$");
    kr_it_read_until(fd, line, sizeof(line), "\r\n");
    size_t pl = strtoul(line, NULL, 10);
    cr_assert(pl + 3 < pcap);
    size_t got = 0;
    while (got < pl + 2) {
        ssize_t k = recv(fd, payload + got, pl + 2 - got, 0);
        cr_assert(k > 0);
        got += (size_t)k;
    }
    payload[pl] = 0;
}

