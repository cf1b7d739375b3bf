/* HAProxy in front of two Kraken nodes on loopback (mode tcp, health check speaking the
 * protocol: `version`, expecting VERSION without "draining"). Clients connect through it;
 * then one node drains: HAProxy marks it down, its clients are closed and reconnect through
 * HAProxy to the other node. The same backend settings as docs/haproxy.cfg, with short
 * check intervals. Every wait is bounded. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kr_itest.h"

#define NCLIENTS 10

static struct kr_it_server k1, k2;
static pid_t haproxy_pid;
static char hdir[64], hcfg[100], hstats[100], hlog[100];
static char buf[1 << 16];


/* One command on HAProxy's stats socket; the answer in buf. 0, or -1 when the socket does
 * not answer (yet). */
static int haproxy_cmd(const char *cmd)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", hstats);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    kr_it_sends(fd, cmd);
    kr_it_sends(fd, "\n");
    size_t len = 0;
    ssize_t n;
    while (len < sizeof(buf) - 1 && (n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0)) > 0)
        len += (size_t)n;
    buf[len] = 0;
    close(fd);
    return 0;
}

/* The status column of `server` in HAProxy's `show stat` ("UP", "DOWN", ...), or "". */
static const char *server_status(const char *server)
{
    static char status[32];
    status[0] = 0;
    if (haproxy_cmd("show stat") < 0)
        return status;
    /* CSV: pxname,svname,...; status is the 18th field */
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        char name[64];
        if (sscanf(line, "kraken,%63[^,],", name) == 1 && strcmp(name, server) == 0) {
            char *f = line;
            for (int i = 0; i < 17 && f; i++) {
                f = strchr(f, ',');
                if (f)
                    f++;
            }
            if (f)
                snprintf(status, sizeof(status), "%.*s", (int)strcspn(f, ","), f);
        }
        line = nl ? nl + 1 : NULL;
    }
    return status;
}

static int wait_status(const char *server, const char *want)
{
    for (int i = 0; i < 1000; i++) {
        if (strncmp(server_status(server), want, strlen(want)) == 0)
            return 1;
        kr_it_sleep_ms(10);
    }
    return 0;
}

static void haproxy_start(uint16_t front)
{
    const char *bin = getenv("HAPROXY_BIN");
    cr_assert(bin && bin[0] && access(bin, X_OK) == 0,
              "haproxy not found (HAPROXY_BIN='%s'): install it with sh cmake/deps.sh",
              bin ? bin : "");
    snprintf(hdir, sizeof(hdir), "/tmp/kraken-haproxy-XXXXXX");
    cr_assert_not_null(mkdtemp(hdir));
    snprintf(hcfg, sizeof(hcfg), "%s/haproxy.cfg", hdir);
    snprintf(hstats, sizeof(hstats), "%s/stats.sock", hdir);
    snprintf(hlog, sizeof(hlog), "%s/haproxy.log", hdir);
    FILE *f = fopen(hcfg, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "global\n"
            "    stats socket %s level admin\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 1s\n"
            "    timeout client 60s\n"
            "    timeout server 60s\n"
            "    retries 3\n"
            "    option redispatch\n"
            "frontend kraken_clients\n"
            "    bind 127.0.0.1:%u\n"
            "    default_backend kraken\n"
            "backend kraken\n"
            "    balance roundrobin\n"
            "    option tcp-check\n"
            "    tcp-check connect\n"
            "    tcp-check send \"version\\r\\n\"\n"
            "    tcp-check expect rstring \"^VERSION [0-9]+\\.[0-9]+\\.[0-9]+\\r\\n\"\n"
            "    default-server inter 100ms fastinter 100ms downinter 100ms fall 1 rise 1\n"
            "    server k1 127.0.0.1:%u check\n"
            "    server k2 127.0.0.1:%u check\n",
            hstats, front, k1.port, k2.port);
    fclose(f);
    haproxy_pid = fork();
    cr_assert_geq(haproxy_pid, 0);
    if (haproxy_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(hlog, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(bin, bin, "-db", "-f", hcfg, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 1000 && haproxy_cmd("show info") < 0; i++) {
        int st;
        if (waitpid(haproxy_pid, &st, WNOHANG) == haproxy_pid) {
            haproxy_pid = 0;
            cr_assert_fail("haproxy exited (status %d); its output is in %s", st, hlog);
        }
        kr_it_sleep_ms(10);
    }
}

static void haproxy_stop(void)
{
    if (haproxy_pid <= 0)
        return;
    kill(haproxy_pid, SIGTERM);
    int st;
    for (int i = 0; i < 500; i++) {
        if (waitpid(haproxy_pid, &st, WNOHANG) == haproxy_pid) {
            haproxy_pid = 0;
            break;
        }
        kr_it_sleep_ms(10);
    }
    if (haproxy_pid > 0) {
        kill(haproxy_pid, SIGKILL);
        waitpid(haproxy_pid, &st, 0);
        haproxy_pid = 0;
    }
    unlink(hcfg);
    unlink(hstats);
    unlink(hlog);
    rmdir(hdir);
}

/* Which node a connection reached: the pid its `stats` reports. */
static pid_t node_of(int fd)
{
    kr_it_sends(fd, "stats\r\n");
    size_t n = kr_it_read_until(fd, buf, sizeof(buf), "END\r\n");
    cr_assert_gt(n, 0, "no stats through haproxy");
    char *p = strstr(buf, "STAT pid ");
    cr_assert_not_null(p, "%s", buf);
    return (pid_t)atoi(p + 9);
}

/* Subscriptions a node holds, counted by its admin socket. */
static int subscribed_clients(const struct kr_it_server *s)
{
    int fd = kr_it_connect_unix(s->admin_path);
    kr_it_admin(fd, "dump_queues", buf, sizeof(buf));
    close(fd);
    int n = 0;
    for (char *p = buf; (p = strstr(p, " subscriptions=1 ")); p++)
        n++;
    return n;
}

/* subscribed_clients as a figure to wait for. */
static long long subscribed_figure(const void *server, const char *name)
{
    return subscribed_clients(server);
}

static void teardown(void)
{
    haproxy_stop();
}

Test(haproxy, drained_node_is_marked_down_and_its_clients_move, .fini = teardown,
     .timeout = 180)
{
    kr_it_start(&k1, NULL);
    kr_it_start(&k2, NULL);
    uint16_t front = kr_it_free_port();
    haproxy_start(front);
    cr_assert(wait_status("k1", "UP") && wait_status("k2", "UP"),
              "both nodes up (k1 %s, k2 %s); haproxy output in %s", server_status("k1"),
              server_status("k2"), hlog);

    /* clients connect through haproxy, spread over both nodes */
    int c[NCLIENTS];
    pid_t node[NCLIENTS];
    int on1 = 0;
    for (int i = 0; i < NCLIENTS; i++) {
        c[i] = kr_it_connect(front);
        node[i] = node_of(c[i]);
        cr_assert(node[i] == k1.pid || node[i] == k2.pid, "pid %d", (int)node[i]);
        kr_it_subscribe(c[i], "ha");
        on1 += node[i] == k1.pid;
    }
    cr_assert(on1 > 0 && on1 < NCLIENTS, "round robin reached both nodes (%d on k1)", on1);

    /* drain k1: haproxy marks it down, its clients are closed */
    int afd = kr_it_connect_unix(k1.admin_path);
    kr_it_admin(afd, "drain", buf, sizeof(buf));
    cr_assert(strncmp(buf, "DRAINING ", 9) == 0, "%s", buf);
    close(afd);
    cr_assert(wait_status("k1", "DOWN"), "haproxy marks the draining node down (%s)",
              server_status("k1"));
    cr_assert_str_eq(server_status("k2"), "UP");

    /* k1's clients see their connection end and reconnect: they land on k2 */
    for (int i = 0; i < NCLIENTS; i++) {
        if (node[i] != k1.pid) {
            kr_it_sends(c[i], "version\r\n");
            kr_it_read_until(c[i], buf, sizeof(buf), "\r\n");
            cr_assert(strncmp(buf, "VERSION ", 8) == 0 && !strstr(buf, "draining"), "%s", buf);
            continue;
        }
        kr_it_expect_closed(c[i]);
        close(c[i]);
        c[i] = kr_it_connect(front);
        node[i] = node_of(c[i]);
        cr_assert_eq(node[i], k2.pid, "a reconnecting client reaches the node still up");
        kr_it_subscribe(c[i], "ha");
    }
    /* every client is on k2 */
    kr_it_wait_figure(subscribed_figure, &k2, "clients with one subscription on k2", KR_IT_EQ,
                      NCLIENTS);

    /* messages flow through haproxy on the node that is left */
    kr_it_publish(c[0], "ha", "after", 5);
    char msgs[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(c[1], 1, msgs, sizeof(msgs), &olen), 1);
    cr_assert_str_eq(msgs, "MESSAGE ha 5\r\nafter\r\n");

    /* k1 finished its drain and exited 0 by itself; k2 is stopped by the test */
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    for (int i = 0; i < 1000; i++) {
        if (waitid(P_PID, (id_t)k1.pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            si.si_pid == k1.pid)
            break;
        kr_it_sleep_ms(10);
    }
    cr_assert_eq(si.si_pid, k1.pid, "k1 exited after its drain");
    cr_assert(si.si_code == CLD_EXITED && si.si_status == 0);
    for (int i = 0; i < NCLIENTS; i++)
        close(c[i]);
    haproxy_stop();
    kr_it_stop(&k1);
    kr_it_stop(&k2);
}
