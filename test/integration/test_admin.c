/* Integration tests of operations: the admin socket's line protocol, every `kraken`
 * subcommand, live configuration changes, the drain (SIGTERM, admin drain, health port,
 * systemd notifications), SIGHUP log reopening. The real server binary on loopback. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[1 << 22];
static char out[1 << 16];

KR_IT_FIXTURE(start_default, "--num_router_shards", "3", "--num_net_threads", "2");

/* Count the lines of `text` that start with `prefix`. */
static int count_lines(const char *text, const char *prefix)
{
    int n = 0;
    size_t pl = strlen(prefix);
    for (const char *p = text; *p;) {
        if (strncmp(p, prefix, pl) == 0)
            n++;
        const char *nl = strchr(p, '\n');
        if (!nl)
            break;
        p = nl + 1;
    }
    return n;
}

/* `clients=` of the admin socket's `status` line (a figure to wait for). */
static long long status_clients(const void *server, const char *name)
{
    static char st[4096];
    int fd = kr_it_connect_unix(((const struct kr_it_server *)server)->admin_path);
    kr_it_admin(fd, "status", st, sizeof(st));
    close(fd);
    const char *p = strstr(st, " clients=");
    return p ? strtoll(p + strlen(" clients="), NULL, 10) : -1;
}

/* The client id the server gave the connection that sent `stats` just before: the admin
 * socket lists every connection; the test keeps at most a few, identified by peer port. */
static unsigned long long client_id_of(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    char peer[64];
    snprintf(peer, sizeof(peer), "peer=127.0.0.1:%u ", ntohs(a.sin_port));
    int afd = kr_it_connect_unix(kr_it_srv.admin_path);
    for (int i = 0; i < 200; i++) {
        kr_it_admin(afd, "dump_queues", buf, sizeof(buf));
        char *p = strstr(buf, peer);
        if (p) {
            while (p > buf && p[-1] != '\n')
                p--;
            unsigned long long id = 0;
            cr_assert_eq(sscanf(p, "CLIENT id=%llu", &id), 1, "%s", p);
            close(afd);
            return id;
        }
        kr_it_sleep_ms(10);
    }
    cr_assert_fail("connection %s not in dump_queues:\n%s", peer, buf);
    return 0;
}

/* The line of text starting with `prefix`, copied (without '\n') into a static buffer;
 * NULL when none. */
static char *line_of(const char *text, const char *prefix)
{
    static char line[1024];
    const char *p = strstr(text, prefix);
    if (!p)
        return NULL;
    size_t n = strcspn(p, "\n");
    snprintf(line, sizeof(line), "%.*s", (int)n, p);
    return line;
}


/* connect() to 127.0.0.1:port: 0 when accepted, else -errno. */
static int try_connect(uint16_t port, int *out_fd)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (out_fd)
        *out_fd = fd;
    else
        close(fd);
    return 0;
}

/* The line the health port answers. */
static void health_line(uint16_t port, char *line, size_t cap)
{
    int fd = -1;
    cr_assert_eq(try_connect(port, &fd), 0, "health port %u refused", port);
    size_t n = kr_it_read_until(fd, line, cap, "\n");
    cr_assert_gt(n, 0);
    close(fd);
}

/* ---------------------------------------------------------------- the line protocol */

TestSuite(admin, .init = start_default, .fini = kr_it_fixture_stop, .timeout = 120);

Test(admin, socket_is_private_and_answers_help_and_status)
{
    struct stat st;
    cr_assert_eq(stat(kr_it_srv.admin_path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_admin(fd, "help", buf, sizeof(buf));
    const char *cmds[] = {"log_level", "dump_queues", "dump_queue_topics", "dump_topics",
                          "stats", "config get", "config set", "drain", "status"};
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        char want[64];
        snprintf(want, sizeof(want), "HELP %s", cmds[i]);
        cr_assert_not_null(strstr(buf, want), "help lists %s:\n%s", cmds[i], buf);
    }
    cr_assert(strstr(buf, "\nEND\n"), "%s", buf);
    kr_it_admin(fd, "status", buf, sizeof(buf));
    char want[128];
    snprintf(want, sizeof(want), "STATUS running pid=%d version=", (int)kr_it_srv.pid);
    cr_assert(strncmp(buf, want, strlen(want)) == 0, "%s", buf);
    snprintf(want, sizeof(want), " listen=127.0.0.1:%u clients=0 ", kr_it_srv.port);
    cr_assert_not_null(strstr(buf, want), "%s", buf);
    close(fd);
}

Test(admin, pipelined_commands_answer_in_order)
{
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_sends(fd, "status\r\nlog_level\n\nbogus\ndump_queues\nconfig get log_level\nstats\n");
    size_t len = 0;
    for (int i = 0; i < 500 && count_lines(buf, "END") + count_lines(buf, "ERROR") < 6; i++) {
        ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        cr_assert_gt(n, 0);
        len += (size_t)n;
        buf[len] = 0;
    }
    const char *order[] = {"STATUS running", "LOG_LEVEL info", "ERROR unknown command 'bogus'",
                           "CONFIG log_level info", "STAT pid ", "STAT draining 0"};
    const char *at = buf;
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        const char *p = strstr(at, order[i]);
        cr_assert_not_null(p, "'%s' missing or out of order in:\n%s", order[i], buf);
        at = p;
    }
    close(fd);
}

Test(admin, bad_input_gets_a_clear_error_and_harms_nothing)
{
    int client = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(client, "keep");
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    struct {
        const char *cmd, *want;
    } cases[] = {
        {"flush_all", "ERROR unknown command 'flush_all' (try 'help')\n"},
        {"dump_queue_topics", "ERROR usage: dump_queue_topics CLIENT-ID\n"},
        {"dump_queue_topics abc", "ERROR bad client id 'abc'"},
        {"dump_queue_topics 12345678901234567890123", "ERROR bad client id"},
        {"dump_queue_topics 42", "ERROR unknown client id 42 (no such connection"},
        {"dump_queue_topics 1 2", "ERROR usage"},
        {"dump_topics 0", "ERROR usage: dump_topics [N]"},
        {"dump_topics x", "ERROR usage: dump_topics [N]"},
        {"dump_queues now", "ERROR dump_queues takes no arguments\n"},
        {"log_level loud", "ERROR bad value 'loud' for log_level"},
        {"log_level debug info", "ERROR usage: log_level"},
        {"config", "ERROR usage: config get"},
        {"config get nope", "ERROR unknown option 'nope'"},
        {"config set nope 1", "ERROR unknown option 'nope'"},
        {"config set max_queued_messages", "ERROR usage: config get"},
        {"config set max_queued_messages -1", "ERROR bad value '-1' for max_queued_messages"},
        {"config set num_router_shards 2",
         "ERROR num_router_shards cannot change while the server runs"},
        {"status now", "ERROR status takes no arguments"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kr_it_admin(fd, cases[i].cmd, buf, sizeof(buf));
        cr_assert(strncmp(buf, cases[i].want, strlen(cases[i].want)) == 0,
                  "'%s' answered '%s'", cases[i].cmd, buf);
    }
    /* a NUL byte in a line */
    kr_it_send(fd, "sta\0tus\n", 8);
    kr_it_read_until(fd, buf, sizeof(buf), "\n");
    cr_assert_str_eq(buf, "ERROR NUL byte in the request\n");
    /* the same connection still works, and so does the server */
    kr_it_admin(fd, "log_level", buf, sizeof(buf));
    cr_assert_str_eq(buf, "LOG_LEVEL info\nEND\n");
    kr_it_admin(fd, "config get max_queued_messages", buf, sizeof(buf));
    cr_assert_str_eq(buf, "CONFIG max_queued_messages 100000\nEND\n", "nothing was changed");

    /* an oversized line: an error, then the admin connection is closed */
    char *big = malloc(10000);
    memset(big, 'x', 9999);
    big[9999] = 0;
    kr_it_sends(fd, big);
    free(big);
    kr_it_read_until(fd, buf, sizeof(buf), "\n");
    cr_assert_str_eq(buf, "ERROR line too long (at most 4095 bytes); closing\n");
    kr_it_expect_closed(fd);
    close(fd);

    int pub = kr_it_connect(kr_it_srv.port);
    kr_it_publish(pub, "keep", "still", 5);
    char msgs[128];
    size_t olen;
    cr_assert_eq(kr_it_collect(client, 1, msgs, sizeof(msgs), &olen), 1);
    fd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_admin(fd, "status", buf, sizeof(buf));
    cr_assert(strncmp(buf, "STATUS running", 14) == 0, "%s", buf);
    close(fd);
    close(pub);
    close(client);
}

Test(admin, quit_and_the_connection_limit)
{
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_sends(fd, "quit\n");
    kr_it_expect_closed(fd);
    close(fd);
    /* 64 admin connections at once; the next one is told and closed */
    int many[64];
    for (int i = 0; i < 64; i++) {
        many[i] = kr_it_connect_unix(kr_it_srv.admin_path);
        kr_it_admin(many[i], "log_level", buf, sizeof(buf)); /* each one is being served */
    }
    fd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_read_until(fd, buf, sizeof(buf), "\n");
    cr_assert_str_eq(buf, "ERROR too many admin connections (at most 64)\n");
    kr_it_expect_closed(fd);
    close(fd);
    for (int i = 0; i < 64; i++)
        close(many[i]);
    for (int i = 0; i < 500; i++) { /* the server notices the closes */
        fd = kr_it_connect_unix(kr_it_srv.admin_path);
        kr_it_sends(fd, "status\n");
        kr_it_read_until(fd, buf, sizeof(buf), "\n");
        close(fd);
        if (strncmp(buf, "STATUS running", 14) == 0)
            break;
        kr_it_sleep_ms(10);
    }
    cr_assert(strncmp(buf, "STATUS running", 14) == 0, "%s", buf);
}

Test(admin, stats_config_get_and_log_level)
{
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_admin(fd, "stats", buf, sizeof(buf));
    const char *names[] = {"STAT pid ", "STAT curr_connections 0\n", "STAT topics 0\n",
                           "STAT draining 0\n", "STAT admin_connections 1\n"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        cr_assert_not_null(strstr(buf, names[i]), "missing %s in:\n%s", names[i], buf);
    kr_it_admin(fd, "config get", buf, sizeof(buf));
    const char *keys[] = {"listen_ip 127.0.0.1", "num_router_shards 3", "num_net_threads 2",
                          "drain_timeout_ms 3000", "health_port 0", "pid_file \"\"",
                          "admin_socket /tmp/kraken-it-"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        char want[128];
        snprintf(want, sizeof(want), "CONFIG %s", keys[i]);
        cr_assert_not_null(strstr(buf, want), "missing '%s' in:\n%s", want, buf);
    }
    cr_assert_eq(count_lines(buf, "CONFIG "), 57, "every key:\n%s", buf);
    kr_it_admin(fd, "log_level warn", buf, sizeof(buf));
    cr_assert_str_eq(buf, "LOG_LEVEL warn\nEND\n");
    kr_it_admin(fd, "config get log_level", buf, sizeof(buf));
    cr_assert_str_eq(buf, "CONFIG log_level warn\nEND\n");
    cr_assert(kr_it_wait_log(&kr_it_srv, "log level changed from info to warn (admin socket)"));
    close(fd);
}

/* A live change reaches the net threads: a smaller queue limit overflows a client's queue,
 * a shorter idle timeout closes an idle client, a lower fanout threshold makes a warning. */
Test(admin, live_config_changes_take_effect_on_running_threads)
{
    int sub = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "q");
    int other = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(other, "q");
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_admin(fd, "config set max_queued_messages 3", buf, sizeof(buf));
    cr_assert_str_eq(buf, "CONFIG max_queued_messages 3\nEND\n");
    for (int i = 0; i < 5; i++)
        kr_it_publish(pub, "q", "m", 1);
    /* the overflow is reported on the next request, then the connection closes */
    cr_assert(kr_it_wait_log(&kr_it_srv, "queue overflow"));
    kr_it_sends(sub, "get messages\r\n");
    kr_it_read_until(sub, buf, sizeof(buf), "\r\n");
    cr_assert_str_eq(buf, "SERVER_ERROR queue overflow\r\n");
    close(sub);
    kr_it_admin(fd, "config set max_queued_messages 100000", buf, sizeof(buf));
    /* the closed subscriber leaves its shard on its own net thread's ring; a publish from
     * another net thread can overtake that, so wait until the shard has only "other" */
    for (int i = 0; i < 1000; i++) {
        kr_it_admin(fd, "dump_topics", buf, sizeof(buf));
        if (strcmp(buf, "TOPIC 1 q\nEND\n") == 0)
            break;
        kr_it_sleep_ms(10);
    }
    cr_assert_str_eq(buf, "TOPIC 1 q\nEND\n");

    kr_it_admin(fd, "config set router_min_fanout_to_warn 2", buf, sizeof(buf));
    cr_assert_str_eq(buf, "CONFIG router_min_fanout_to_warn 2\nEND\n");
    int sub2 = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub2, "q");
    kr_it_publish(pub, "q", "fan", 3);
    cr_assert(kr_it_wait_log(&kr_it_srv, "fanned out to 2 clients"), "the shard saw the new threshold");

    kr_it_admin(fd, "config set client_idle_timeout_ms 300", buf, sizeof(buf));
    cr_assert_str_eq(buf, "CONFIG client_idle_timeout_ms 300\nEND\n");
    kr_it_expect_closed(other); /* idle: closed by its net thread's sweep */
    close(other);
    close(sub2);
    close(pub);
    cr_assert(kr_it_log_contains(&kr_it_srv, "configuration: client_idle_timeout_ms changed from "
                                       "3600000 to 300 (admin socket)"));
    close(fd);
}

Test(admin, dump_queues_and_dump_queue_topics)
{
    int a = kr_it_connect(kr_it_srv.port), b = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(a, "t1 t2 t3");
    kr_it_subscribe(b, "t2");
    kr_it_publish(pub, "t1 t2", "hello", 5);
    kr_it_publish(pub, "t3", "x", 1);
    unsigned long long ida = client_id_of(a), idb = client_id_of(b);
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    char want[256];
    /* a holds both messages once they arrived */
    snprintf(want, sizeof(want), "CLIENT id=%llu peer=127.0.0.1:", ida);
    char *line = NULL;
    for (int i = 0; i < 500; i++) {
        kr_it_admin(fd, "dump_queues", buf, sizeof(buf));
        line = line_of(buf, want);
        cr_assert_not_null(line, "%s", buf);
        if (strstr(line, "subscriptions=3 queued_messages=2 "))
            break;
        kr_it_sleep_ms(10);
    }
    cr_assert_eq(count_lines(buf, "CLIENT id="), 3, "%s", buf);
    cr_assert_str_eq(buf + strlen(buf) - 4, "END\n");
    cr_assert_not_null(strstr(line, "subscriptions=3 queued_messages=2 queued_bytes="), "%s", line);
    cr_assert_not_null(strstr(line, " last_poll_ms=never "), "%s", line);
    cr_assert_not_null(strstr(line, " age_ms="), "%s", line);
    cr_assert_not_null(strstr(line, " idle_ms="), "%s", line);
    const char *mem = strstr(line, " mem=");
    cr_assert(mem && strtoull(mem + 5, NULL, 10) > 0, "%s", line);
    snprintf(want, sizeof(want), "CLIENT id=%llu ", idb);
    line = line_of(buf, want);
    cr_assert_not_null(line, "%s", buf);
    cr_assert_not_null(strstr(line, "subscriptions=1 queued_messages=1 "), "%s", line);
    /* after a poll: nothing queued, a poll time */
    char msgs[256];
    size_t olen;
    cr_assert_eq(kr_it_collect(a, 2, msgs, sizeof(msgs), &olen), 2);
    kr_it_admin(fd, "dump_queues", buf, sizeof(buf));
    snprintf(want, sizeof(want), "CLIENT id=%llu ", ida);
    line = line_of(buf, want);
    cr_assert_not_null(strstr(line, "queued_messages=0 queued_bytes=0 "), "%s", line);
    cr_assert_null(strstr(line, "last_poll_ms=never"), "%s", line);

    snprintf(want, sizeof(want), "dump_queue_topics %llu", ida);
    kr_it_admin(fd, want, buf, sizeof(buf));
    cr_assert(strncmp(buf, "CLIENT id=", 10) == 0, "%s", buf);
    cr_assert_eq(count_lines(buf, "TOPIC "), 3, "%s", buf);
    cr_assert(strstr(buf, "\nTOPIC t1\n") && strstr(buf, "\nTOPIC t2\n") &&
              strstr(buf, "\nTOPIC t3\n"), "%s", buf);
    cr_assert_str_eq(buf + strlen(buf) - 4, "END\n");
    snprintf(want, sizeof(want), "dump_queue_topics %llu", idb);
    kr_it_admin(fd, want, buf, sizeof(buf));
    cr_assert_eq(count_lines(buf, "TOPIC "), 1, "%s", buf);
    cr_assert_not_null(strstr(buf, "\nTOPIC t2\nEND\n"), "%s", buf);
    /* a closed client's id is unknown from then on */
    close(b);
    for (int i = 0; i < 500; i++) {
        kr_it_admin(fd, want, buf, sizeof(buf));
        if (strncmp(buf, "ERROR unknown client id", 23) == 0)
            break;
        kr_it_sleep_ms(10);
    }
    cr_assert(strncmp(buf, "ERROR unknown client id", 23) == 0, "%s", buf);
    close(fd);
    close(a);
    close(pub);
}

Test(admin, dump_topics_most_subscribed_first_with_limit)
{
    int c[4];
    for (int i = 0; i < 4; i++)
        c[i] = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(c[0], "four three two one");
    kr_it_subscribe(c[1], "four three two");
    kr_it_subscribe(c[2], "four three");
    kr_it_subscribe(c[3], "four");
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_admin(fd, "dump_topics", buf, sizeof(buf));
    cr_assert_str_eq(buf, "TOPIC 4 four\nTOPIC 3 three\nTOPIC 2 two\nTOPIC 1 one\nEND\n");
    kr_it_admin(fd, "dump_topics 2", buf, sizeof(buf));
    cr_assert_str_eq(buf, "TOPIC 4 four\nTOPIC 3 three\nEND\n");
    close(fd);
    for (int i = 0; i < 4; i++)
        close(c[i]);
}

/* Tens of thousands of topics: streamed in chunks, sorted in several bands (one subscriber
 * count alone has more topics than a band holds). */
Test(admin, dump_topics_streams_a_large_table_in_order, .timeout = 240)
{
    const int ntop = 70000, nhot = 1000;
    size_t cap = (size_t)ntop * 8;
    char *topics = malloc(cap);
    size_t len = 0;
    for (int i = 0; i < ntop; i++)
        len += (size_t)snprintf(topics + len, cap - len, "%st%d", i ? " " : "", i);
    int a = kr_it_connect(kr_it_srv.port), b = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(a, topics);
    len = 0;
    for (int i = 0; i < nhot; i++)
        len += (size_t)snprintf(topics + len, cap - len, "%st%d", i ? " " : "", i);
    kr_it_subscribe(b, topics);
    free(topics);

    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    size_t n = kr_it_admin(fd, "dump_topics", buf, sizeof(buf));
    cr_assert_gt(n, 64 * 1024, "more than one chunk");
    cr_assert_eq(count_lines(buf, "TOPIC "), ntop);
    cr_assert_eq(count_lines(buf, "TOPIC 2 t"), nhot);
    /* every count-2 line comes before every count-1 line */
    char *last2 = NULL, *first1 = strstr(buf, "TOPIC 1 ");
    for (char *p = buf; (p = strstr(p, "TOPIC 2 ")); p++)
        last2 = p;
    cr_assert(last2 && first1 && last2 < first1);
    cr_assert_str_eq(buf + n - 4, "END\n");
    /* and each topic once: t12345 appears as a whole line exactly once */
    char *hit = strstr(buf, "TOPIC 1 t12345\n");
    cr_assert_not_null(hit);
    cr_assert_null(strstr(hit + 1, "TOPIC 1 t12345\n"));

    /* a client that goes away in the middle of a dump harms nothing */
    int gone = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_sends(gone, "dump_topics\n");
    recv(gone, buf, 1000, 0);
    close(gone);
    kr_it_admin(fd, "dump_topics 1", buf, sizeof(buf));
    cr_assert(strncmp(buf, "TOPIC 2 t", 9) == 0, "%s", buf);
    kr_it_admin(fd, "status", buf, sizeof(buf));
    cr_assert(strncmp(buf, "STATUS running", 14) == 0);
    close(fd);
    close(a);
    close(b);
}

/* Threads of process pid named `name` (/proc/PID/task/TID/comm). */
static int count_threads(pid_t pid, const char *name)
{
    char path[96];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char cp[400], comm[64] = "";
        snprintf(cp, sizeof(cp), "%s/%s/comm", path, e->d_name);
        FILE *f = fopen(cp, "re");
        if (!f)
            continue;
        if (fgets(comm, sizeof(comm), f))
            comm[strcspn(comm, "\n")] = '\0';
        fclose(f);
        n += strcmp(comm, name) == 0;
    }
    closedir(d);
    return n;
}

/* CPU ticks (user + system) used so far by process pid's first thread named `name`, -1
 * when there is none. */
static long thread_cpu_ticks(pid_t pid, const char *name)
{
    char path[96];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    long ticks = -1;
    for (struct dirent *e; ticks < 0 && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char sp[400], st[1024] = "";
        snprintf(sp, sizeof(sp), "%s/%s/stat", path, e->d_name);
        FILE *f = fopen(sp, "re");
        if (!f)
            continue;
        size_t n = fread(st, 1, sizeof(st) - 1, f);
        fclose(f);
        st[n] = '\0';
        char *open = strchr(st, '('), *close_p = strrchr(st, ')');
        if (!open || !close_p || (size_t)(close_p - open - 1) != strlen(name) ||
            strncmp(open + 1, name, strlen(name)) != 0)
            continue;
        /* after ") ": state, then fields 4..13; utime and stime are fields 14 and 15 */
        unsigned long ut = 0, stt = 0;
        if (sscanf(close_p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
                   &stt) == 2)
            ticks = (long)(ut + stt);
    }
    closedir(d);
    return ticks;
}

/* The server's threads named `name` (a figure to wait for). */
static long long server_threads(const void *server, const char *name)
{
    return count_threads(((const struct kr_it_server *)server)->pid, name);
}

/* Wait (bounded) until the server has `want` threads named `name`; returns the count. */
static int wait_threads(const struct kr_it_server *s, const char *name, int want)
{
    return (int)kr_it_wait_figure(server_threads, s, name, KR_IT_EQ, want);
}

/* A dump whose client stops reading, then leaves: the worker waits for room (its output is
 * several times the in-flight limit), is told the client left, ends, and frees what it
 * held (the server exits cleanly; under ASan with leak checks, without a leak). */
Test(admin, dump_whose_client_leaves_midway_ends_its_worker, .timeout = 240)
{
    const int batches = 4, per = 50000;
    size_t cap = (size_t)per * 16;
    char *topics = malloc(cap);
    int sub = kr_it_connect(kr_it_srv.port);
    for (int b = 0; b < batches; b++) {
        size_t len = 0;
        for (int i = 0; i < per; i++)
            len += (size_t)snprintf(topics + len, cap - len, "%sm%d_%d", i ? " " : "", b,
                                    i);
        kr_it_subscribe(sub, topics);
    }
    free(topics);
    int fd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_admin(fd, "stats", buf, sizeof(buf));
    cr_assert_not_null(strstr(buf, "STAT topics 200000\n"), "%s", buf);

    /* 1: reads a little, then closes; 2: closes without reading anything */
    for (int round = 0; round < 2; round++) {
        int gone = kr_it_connect_unix(kr_it_srv.admin_path);
        kr_it_sends(gone, "dump_topics\n");
        cr_assert_eq(wait_threads(&kr_it_srv, "kr-admin-dump", 1), 1, "no dump worker running");
        if (round == 0)
            cr_assert_gt(recv(gone, buf, 1000, 0), 0);
        /* about 3.4 MB of output, at most ~1.5 MB in flight plus the socket's buffer: the
         * worker comes to wait for room, using no CPU while it waits */
        long t0 = -1, t1 = -1;
        for (int i = 0; i < 100; i++) {
            t0 = thread_cpu_ticks(kr_it_srv.pid, "kr-admin-dump");
            kr_it_sleep_ms(200);
            t1 = thread_cpu_ticks(kr_it_srv.pid, "kr-admin-dump");
            if (t0 >= 0 && t1 == t0)
                break;
        }
        cr_assert(t0 >= 0 && t1 == t0, "the dump worker did not come to wait (%ld, %ld ticks)",
                  t0, t1);
        close(gone);
        cr_assert_eq(wait_threads(&kr_it_srv, "kr-admin-dump", 0), 0,
                     "the dump worker did not end after its client left");
    }
    kr_it_admin(fd, "status", buf, sizeof(buf));
    cr_assert(strncmp(buf, "STATUS running", 14) == 0, "%s", buf);
    kr_it_admin(fd, "stats", buf, sizeof(buf));
    cr_assert_not_null(strstr(buf, "STAT admin_connections 1\n"), "%s", buf);
    /* and a whole dump still streams after them */
    size_t n = kr_it_admin(fd, "dump_topics", buf, sizeof(buf));
    cr_assert_eq(count_lines(buf, "TOPIC 1 m"), batches * per);
    cr_assert_str_eq(buf + n - 4, "END\n");
    close(fd);
    close(sub);
}

/* ---------------------------------------------------------------- subcommands */

TestSuite(cli, .init = start_default, .fini = kr_it_fixture_stop, .timeout = 120);

#define CLI(s, ...) kr_it_cli(s, out, sizeof(out), (const char *[]){__VA_ARGS__, NULL})

Test(cli, status_and_errors_when_not_running)
{
    int rc = CLI(&kr_it_srv, "status");
    cr_assert_eq(rc, 0, "%s", out);
    char want[128];
    snprintf(want, sizeof(want), "kraken is running: pid %d, version ", (int)kr_it_srv.pid);
    cr_assert(strncmp(out, want, strlen(want)) == 0, "%s", out);
    snprintf(want, sizeof(want), "listening on 127.0.0.1:%u, 0 clients", kr_it_srv.port);
    cr_assert_not_null(strstr(out, want), "%s", out);

    rc = CLI(NULL, "status", "--admin_socket", "/tmp/kraken-no-such-dir/admin.sock");
    cr_assert_eq(rc, 3, "%s", out);
    cr_assert_not_null(strstr(out, "kraken is not running: no admin socket at "
                                   "/tmp/kraken-no-such-dir/admin.sock"), "%s", out);
    /* a stale socket file: nothing answers */
    char stale[160];
    snprintf(stale, sizeof(stale), "%s.stale", kr_it_srv.log_path);
    int sfd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, stale);
    cr_assert_eq(bind(sfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(sfd);
    rc = CLI(NULL, "status", "--admin_socket", stale);
    cr_assert_eq(rc, 3, "%s", out);
    cr_assert_not_null(strstr(out, "nothing answers on admin socket"), "%s", out);
    /* not a socket one can reach: exit 4 */
    rc = CLI(NULL, "status", "--admin_socket", "/etc/passwd/admin.sock");
    cr_assert_eq(rc, 4, "%s", out);
    cr_assert_not_null(strstr(out, "cannot connect to admin socket /etc/passwd/admin.sock"),
                       "%s", out);
    for (const char *const *sub = (const char *const[]){"stop", "drain", "dump_queues",
                                                        "dump_topics", NULL};
         *sub; sub++) {
        rc = CLI(NULL, *sub, "--admin_socket", stale);
        cr_assert_eq(rc, 3, "%s: %s", *sub, out);
        cr_assert_not_null(strstr(out, "kraken is not running"), "%s: %s", *sub, out);
    }
    unlink(stale);
}

struct publisher {
    uint16_t port;
    int rounds;
    int stored;
};

static void *publisher_main(void *arg)
{
    struct publisher *p = arg;
    int fd = kr_it_connect(p->port);
    for (int i = 0; i < p->rounds; i++) {
        kr_it_publish(fd, "lvl", "payload", 7); /* asserts STORED */
        p->stored++;
    }
    close(fd);
    return NULL;
}

Test(cli, change_log_level_is_seen_in_the_log_while_clients_publish)
{
    int sub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(sub, "lvl");
    struct publisher pubs[2] = {{kr_it_srv.port, 400, 0}, {kr_it_srv.port, 400, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, publisher_main, &pubs[i]), 0);

    /* at info, a new connection is not logged (that is a debug line) */
    int c1 = kr_it_connect(kr_it_srv.port);
    kr_it_sends(c1, "version\r\n");
    kr_it_read_until(c1, buf, sizeof(buf), "\r\n");
    cr_assert(!kr_it_log_contains(&kr_it_srv, " connected (id "));

    int rc = CLI(&kr_it_srv, "change_log_level", "debug");
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert_str_eq(out, "log level is now debug\n");
    cr_assert(kr_it_wait_log(&kr_it_srv, "log level changed from info to debug (admin socket)"));
    int c2 = kr_it_connect(kr_it_srv.port);
    cr_assert(kr_it_wait_log(&kr_it_srv, " connected (id "), "debug lines appear at once");

    rc = CLI(&kr_it_srv, "change_log_level", "error");
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(kr_it_wait_log(&kr_it_srv, "log level changed from debug to error (admin socket)"));
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(pubs[0].stored + pubs[1].stored, 800, "every publish was stored");
    /* and the subscriber got every message */
    char *msgs = malloc(1 << 16);
    size_t olen;
    cr_assert_eq(kr_it_collect(sub, 800, msgs, 1 << 16, &olen), 800);
    free(msgs);

    rc = CLI(&kr_it_srv, "change_log_level", "loud");
    cr_assert_eq(rc, 2, "%s", out);
    cr_assert_not_null(strstr(out, "usage: kraken change_log_level <debug|info|warn|error>"),
                       "%s", out);
    rc = CLI(&kr_it_srv, "change_log_level");
    cr_assert_eq(rc, 2, "%s", out);
    close(c1);
    close(c2);
    close(sub);
}

Test(cli, dumps)
{
    int a = kr_it_connect(kr_it_srv.port), b = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(a, "x y");
    kr_it_subscribe(b, "y");
    unsigned long long ida = client_id_of(a);
    int rc = CLI(&kr_it_srv, "dump_queues");
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert_eq(count_lines(out, "CLIENT id="), 2, "%s", out);
    cr_assert_null(strstr(out, "END"), "the terminator is not printed:\n%s", out);
    char id[32];
    snprintf(id, sizeof(id), "%llu", ida);
    rc = CLI(&kr_it_srv, "dump_queue_topics", id);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert_eq(count_lines(out, "TOPIC "), 2, "%s", out);
    cr_assert(strstr(out, "TOPIC x\n") && strstr(out, "TOPIC y\n"), "%s", out);
    rc = CLI(&kr_it_srv, "dump_topics");
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert_str_eq(out, "TOPIC 2 y\nTOPIC 1 x\n");
    rc = CLI(&kr_it_srv, "dump_topics", "1");
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert_str_eq(out, "TOPIC 2 y\n");

    rc = CLI(&kr_it_srv, "dump_queue_topics", "99");
    cr_assert_eq(rc, 1, "%s", out);
    cr_assert_not_null(strstr(out, "kraken: unknown client id 99"), "%s", out);
    rc = CLI(&kr_it_srv, "dump_queue_topics");
    cr_assert_eq(rc, 2, "%s", out);
    rc = CLI(&kr_it_srv, "dump_topics", "1", "2");
    cr_assert_eq(rc, 2, "%s", out);
    rc = CLI(&kr_it_srv, "dump_queues", "extra");
    cr_assert_eq(rc, 2, "%s", out);
    close(a);
    close(b);
}

Test(cli, admin_subcommand_and_unknown_subcommand)
{
    int rc = CLI(&kr_it_srv, "admin", "config", "get", "num_net_threads");
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert_str_eq(out, "CONFIG num_net_threads 2\n");
    rc = CLI(&kr_it_srv, "admin", "config", "set", "drain_timeout_ms", "1500");
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert_str_eq(out, "CONFIG drain_timeout_ms 1500\n");
    rc = CLI(&kr_it_srv, "admin", "frobnicate");
    cr_assert_eq(rc, 1, "%s", out);
    cr_assert_str_eq(out, "kraken: unknown command 'frobnicate' (try 'help')\n");
    rc = CLI(&kr_it_srv, "admin");
    cr_assert_eq(rc, 2, "%s", out);
    rc = CLI(&kr_it_srv, "frobnicate");
    cr_assert_eq(rc, 2, "%s", out);
    cr_assert_not_null(strstr(out, "unknown subcommand 'frobnicate'"), "%s", out);
}

/* Subcommands take the same options as run, from an Erlang-term config file too. */
Test(cli, options_from_an_erlang_config_find_the_server)
{
    char base[160], path[200];
    snprintf(base, sizeof(base), "%s.erl", kr_it_srv.log_path);
    snprintf(path, sizeof(path), "%s.config", base);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "%%%% as deployed\n[{kraken, [{admin_socket, \"%s\"}, {num_router_shards, 8}]},\n"
               " {lager, [{handlers, []}]}].\n",
            kr_it_srv.admin_path);
    fclose(f);
    int rc = CLI(NULL, "status", "-config", base); /* without the .config extension */
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert_not_null(strstr(out, "kraken is running"), "%s", out);
    cr_assert_not_null(strstr(out, "ignoring the settings of other applications (lager)"), "%s",
                       out);
    f = fopen(path, "w");
    fprintf(f, "[{kraken, [{admin_socket, \"%s\"},\n {num_router_shards, many}]}].\n",
            kr_it_srv.admin_path);
    fclose(f);
    rc = CLI(NULL, "status", "-config", path);
    cr_assert_eq(rc, 2, "%s", out);
    cr_assert_not_null(strstr(out, ":2: bad value 'many' for num_router_shards"), "%s", out);
    unlink(path);
}

Test(cli, drain_subcommand_ends_the_server)
{
    int c = kr_it_connect(kr_it_srv.port);
    int rc = CLI(&kr_it_srv, "drain");
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strncmp(out, "DRAINING clients=1 drain_timeout_ms=3000", 40) == 0, "%s", out);
    kr_it_expect_closed(c);
    close(c);
    /* the server exits by itself once its clients are closed (kr_it_stop reaps it) */
    cr_assert(kr_it_exited_0(&kr_it_srv));
}

Test(cli, stop_subcommand_drains_and_waits)
{
    int c = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(c, "s");
    int rc = CLI(&kr_it_srv, "stop");
    cr_assert_eq(rc, 0, "%s", out);
    char want[128];
    snprintf(want, sizeof(want), "stopping kraken (pid %d): closing 1 clients over at most 3000 ms",
             (int)kr_it_srv.pid);
    cr_assert(strncmp(out, want, strlen(want)) == 0, "%s", out);
    cr_assert_not_null(strstr(out, "\nkraken stopped\n"), "%s", out);
    cr_assert(kr_it_exited_0(&kr_it_srv), "exited before stop returned");
    struct stat st;
    cr_assert_neq(stat(kr_it_srv.admin_path, &st), 0, "the admin socket is removed");
    kr_it_expect_closed(c);
    close(c);
    rc = CLI(&kr_it_srv, "stop");
    cr_assert_eq(rc, 3, "%s", out);
    cr_assert_not_null(strstr(out, "kraken is not running"), "%s", out);
}

/* `kraken start` runs the server in the background: no server of kr_it_start here. */
TestSuite(start, .timeout = 120);

static char start_dir[64];
static char start_sock[128], start_pid[128], start_log[128];

static void start_paths(void)
{
    snprintf(start_dir, sizeof(start_dir), "/tmp/kraken-start-XXXXXX");
    cr_assert_not_null(mkdtemp(start_dir));
    snprintf(start_sock, sizeof(start_sock), "%s/run/admin.sock", start_dir);
    snprintf(start_pid, sizeof(start_pid), "%s/kraken.pid", start_dir);
    snprintf(start_log, sizeof(start_log), "%s/kraken.log", start_dir);
}

/* Kill a background server a failed test left behind, remove the files. */
static void start_cleanup(void)
{
    FILE *f = fopen(start_pid, "r");
    if (f) {
        int pid = 0;
        if (fscanf(f, "%d", &pid) == 1 && pid > 1)
            kill(pid, SIGKILL);
        fclose(f);
    }
    unlink(start_pid);
    unlink(start_log);
    unlink(start_sock);
    char d[160];
    snprintf(d, sizeof(d), "%s/run", start_dir);
    rmdir(d);
    rmdir(start_dir);
}

Test(start, start_status_stop, .fini = start_cleanup)
{
    start_paths();
    const char *opts[] = {"--tcp_server_port", "0", "--admin_socket", start_sock, "--pid_file",
                          start_pid, "--log_file", start_log, "--num_net_threads", "1",
                          "--num_router_shards", "1", "--drain_timeout_ms", "500"};
#define START_CLI(sub, ...)                                                                        \
    kr_it_cli(NULL, out, sizeof(out),                                                              \
              (const char *[]){sub, opts[0], opts[1], opts[2], opts[3], opts[4], opts[5], opts[6], \
                               opts[7], opts[8], opts[9], opts[10], opts[11], opts[12], opts[13], \
                               __VA_ARGS__ NULL})
    int rc = START_CLI("start");
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert_not_null(strstr(out, "kraken is running: pid "), "%s", out);
    FILE *f = fopen(start_pid, "r");
    cr_assert_not_null(f, "pid_file written");
    int pid = 0;
    cr_assert_eq(fscanf(f, "%d", &pid), 1);
    fclose(f);
    char want[64];
    snprintf(want, sizeof(want), "pid %d,", pid);
    cr_assert_not_null(strstr(out, want), "%s", out);
    /* it accepts connections as soon as start returned */
    struct kr_it_server bg = {.pid = pid};
    snprintf(bg.log_path, sizeof(bg.log_path), "%s", start_log);
    char *p = strstr(out, "listening on 127.0.0.1:");
    cr_assert_not_null(p);
    bg.port = (uint16_t)atoi(p + strlen("listening on 127.0.0.1:"));
    int c = kr_it_connect(bg.port);
    kr_it_sends(c, "version\r\n");
    kr_it_read_until(c, buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "VERSION ", 8) == 0, "%s", buf);
    close(c);

    rc = START_CLI("start");
    cr_assert_eq(rc, 1, "%s", out);
    cr_assert_not_null(strstr(out, "already running"), "%s", out);
    rc = START_CLI("status");
    cr_assert_eq(rc, 0, "%s", out);
    rc = START_CLI("stop");
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert_not_null(strstr(out, "kraken stopped"), "%s", out);
    struct stat st;
    cr_assert_neq(stat(start_pid, &st), 0, "pid_file removed");
    cr_assert_neq(stat(start_sock, &st), 0, "admin socket removed");
    cr_assert(kr_it_log_contains(&bg, "drain finished"));
    rc = START_CLI("status");
    cr_assert_eq(rc, 3, "%s", out);
}

Test(start, start_reports_why_the_server_did_not_start, .fini = start_cleanup)
{
    start_paths();
    /* the admin socket's directory cannot be created under a regular file */
    int rc = kr_it_cli(NULL, out, sizeof(out),
                       (const char *[]){"start", "--tcp_server_port", "0", "--admin_socket",
                                        "/etc/passwd/x/admin.sock", "--log_file", start_log,
                                        NULL});
    cr_assert_eq(rc, 1, "%s", out);
    cr_assert_not_null(strstr(out, "the server did not start: cannot create the admin socket's "
                                   "directory /etc/passwd"), "%s", out);
    /* a second server on the same admin socket is refused (run, in the foreground) */
    struct kr_it_server one;
    kr_it_start(&one, NULL);
    rc = kr_it_cli(&one, out, sizeof(out),
                   (const char *[]){"run", "--tcp_server_port", "0", "--log_file", "/dev/null",
                                    NULL});
    cr_assert_eq(rc, 1, "%s", out);
    cr_assert_not_null(strstr(out, "another kraken server is running: it answers on admin "
                                   "socket"), "%s", out);
    kr_it_stop(&one);
}

/* ---------------------------------------------------------------- drain */

TestSuite(drain, .timeout = 120);

Test(drain, sigterm_fails_health_checks_stops_accepting_keeps_queues_then_exits)
{
    uint16_t hport = kr_it_free_port();
    char hp[16];
    snprintf(hp, sizeof(hp), "%u", hport);
    const char *args[] = {"--num_net_threads", "2", "--health_port", hp, "--drain_timeout_ms",
                          "10000", NULL};
    kr_it_fixture_start(args);
    health_line(hport, buf, sizeof(buf));
    cr_assert_str_eq(buf, "ok\n");
    enum { N = 40 };
    int c[N];
    int pub = kr_it_connect(kr_it_srv.port);
    for (int i = 0; i < N; i++) {
        c[i] = kr_it_connect(kr_it_srv.port);
        kr_it_subscribe(c[i], "d");
    }
    kr_it_publish(pub, "d", "queued", 6);
    /* every subscriber has it queued before the drain starts */
    int afd = kr_it_connect_unix(kr_it_srv.admin_path);
    kr_it_wait_admin_stat(&kr_it_srv, "queued_messages", KR_IT_EQ, 40);

    kill(kr_it_srv.pid, SIGTERM);
    cr_assert(kr_it_wait_log(&kr_it_srv, "draining (SIGTERM)"));
    /* health checks fail at once: the health port says so, `version` says so */
    health_line(hport, buf, sizeof(buf));
    cr_assert_str_eq(buf, "draining\n");
    /* (the newest connections are closed last) */
    kr_it_sends(c[N - 1], "version\r\n");
    kr_it_read_until(c[N - 1], buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "VERSION ", 8) == 0 && strstr(buf, " draining\r\n"), "%s", buf);
    kr_it_admin(afd, "status", buf, sizeof(buf));
    cr_assert(strncmp(buf, "STATUS draining ", 16) == 0, "%s", buf);
    /* no new connections */
    int rc = 0;
    for (int i = 0; i < 200 && (rc = try_connect(kr_it_srv.port, NULL)) == 0; i++)
        kr_it_sleep_ms(10); /* each net thread closes its listener when it gets the request */
    cr_assert_eq(rc, -ECONNREFUSED, "connect: %s", strerror(-rc));
    /* queued messages stay pollable until a client's turn to be closed comes */
    int got = 0, closed = 0;
    for (int i = 0; i < N; i++) {
        kr_it_sends(c[i], "get messages\r\n");
        size_t n = kr_it_read_until(c[i], buf, sizeof(buf), "END\r\n");
        if (n == 0) {
            closed++;
            continue;
        }
        cr_assert_str_eq(buf, "VALUE messages 0 19\r\nMESSAGE d 6\r\nqueued\r\nEND\r\n");
        got++;
    }
    cr_assert_eq(got + closed, N);
    cr_assert_gt(got, 0, "the first batches leave clients open");
    /* every client is closed in the end, in several batches, and the process exits 0 */
    for (int i = 0; i < N; i++) {
        char ch;
        ssize_t n = recv(c[i], &ch, 1, 0);
        cr_assert(n == 0 || (n < 0 && errno == ECONNRESET), "client %d not closed (%zd)", i, n);
        close(c[i]);
    }
    close(pub);
    close(afd);
    cr_assert(kr_it_exited_0(&kr_it_srv), "exit 0 after the drain");
    cr_assert(kr_it_log_contains(&kr_it_srv, "drain finished"));
    char *log = NULL;
    {
        FILE *f = fopen(kr_it_srv.log_path, "r");
        cr_assert_not_null(f);
        log = malloc(1 << 20);
        size_t n = fread(log, 1, (1 << 20) - 1, f);
        log[n] = 0;
        fclose(f);
    }
    int batches = 0;
    for (char *p = log; (p = strstr(p, "drain: closing ")); p++)
        batches++;
    free(log);
    cr_assert_geq(batches, 2, "clients are closed in spread-out batches");
    kr_it_fixture_stop();
}

Test(drain, second_sigterm_exits_at_once)
{
    const char *args[] = {"--drain_timeout_ms", "600000", NULL};
    kr_it_fixture_start(args);
    int c[30];
    for (int i = 0; i < 30; i++)
        c[i] = kr_it_connect(kr_it_srv.port);
    kill(kr_it_srv.pid, SIGTERM);
    cr_assert(kr_it_wait_log(&kr_it_srv, "draining (SIGTERM)"));
    /* with a 10-minute drain, kr_it_stop's bounded wait only passes if the second SIGTERM
     * ends the process right away */
    kr_it_fixture_stop();
    for (int i = 0; i < 30; i++)
        close(c[i]);
}

Test(drain, admin_drain_and_health_port)
{
    uint16_t hport = kr_it_free_port();
    char hp[16];
    snprintf(hp, sizeof(hp), "%u", hport);
    const char *args[] = {"--health_port", hp, NULL};
    kr_it_fixture_start(args);
    health_line(hport, buf, sizeof(buf));
    cr_assert_str_eq(buf, "ok\n");
    /* a checker that sends something and closes is fine too */
    int fd = -1;
    cr_assert_eq(try_connect(hport, &fd), 0);
    kr_it_sends(fd, "GET / HTTP/1.0\r\n\r\n");
    kr_it_read_until(fd, buf, sizeof(buf), "\n");
    cr_assert_str_eq(buf, "ok\n");
    close(fd);
    int c = kr_it_connect(kr_it_srv.port);
    int afd = kr_it_connect_unix(kr_it_srv.admin_path);
    /* accepted by its net thread */
    kr_it_wait_figure(status_clients, &kr_it_srv, "clients", KR_IT_EQ, 1);
    kr_it_admin(afd, "drain", buf, sizeof(buf));
    cr_assert_str_eq(buf, "DRAINING clients=1 drain_timeout_ms=3000\nEND\n");
    health_line(hport, buf, sizeof(buf));
    cr_assert_str_eq(buf, "draining\n");
    kr_it_expect_closed(c);
    close(c);
    close(afd);
    cr_assert(kr_it_exited_0(&kr_it_srv));
    cr_assert(kr_it_log_contains(&kr_it_srv, "draining (admin drain)"));
    kr_it_fixture_stop();
}

Test(drain, systemd_is_told_ready_status_and_stopping)
{
    char path[108];
    snprintf(path, sizeof(path), "/tmp/kraken-notify-%d.sock", (int)getpid());
    unlink(path);
    int nfd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    cr_assert_eq(bind(nfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    struct timeval tv = {10, 0};
    setsockopt(nfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setenv("NOTIFY_SOCKET", path, 1);
    kr_it_fixture_start(NULL);
    unsetenv("NOTIFY_SOCKET");
    char msg[512];
    ssize_t n = recv(nfd, msg, sizeof(msg) - 1, 0);
    cr_assert_gt(n, 0);
    msg[n] = 0;
    cr_assert_not_null(strstr(msg, "READY=1"), "%s", msg);
    cr_assert_not_null(strstr(msg, "STATUS=serving"), "%s", msg);
    int c = kr_it_connect(kr_it_srv.port);
    /* accepted by its net thread */
    kr_it_wait_figure(status_clients, &kr_it_srv, "clients", KR_IT_EQ, 1);
    kill(kr_it_srv.pid, SIGTERM);
    n = recv(nfd, msg, sizeof(msg) - 1, 0);
    cr_assert_gt(n, 0);
    msg[n] = 0;
    cr_assert_not_null(strstr(msg, "STOPPING=1"), "%s", msg);
    cr_assert_not_null(strstr(msg, "STATUS=draining: 1 clients"), "%s", msg);
    kr_it_expect_closed(c);
    close(c);
    cr_assert(kr_it_exited_0(&kr_it_srv));
    kr_it_fixture_stop();
    close(nfd);
    unlink(path);
}

Test(drain, sighup_reopens_the_log_file)
{
    kr_it_fixture_start(NULL);
    char moved[120];
    snprintf(moved, sizeof(moved), "%.110s.1", kr_it_srv.log_path);
    cr_assert_eq(rename(kr_it_srv.log_path, moved), 0);
    kill(kr_it_srv.pid, SIGHUP);
    cr_assert(kr_it_wait_log(&kr_it_srv, "SIGHUP: log file reopened"), "a new file at the old path");
    struct kr_it_server old = kr_it_srv;
    snprintf(old.log_path, sizeof(old.log_path), "%s", moved);
    cr_assert(kr_it_log_contains(&old, "listening on"));
    cr_assert(!kr_it_log_contains(&old, "SIGHUP"));
    kr_it_fixture_stop();
    unlink(moved);
}
