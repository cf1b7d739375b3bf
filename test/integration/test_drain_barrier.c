/* The drain and publishes already handed to the router: a message that was STORED before
 * the drain began reaches every client subscribed then, even when the router shard has
 * not routed it yet when the drain reaches the subscriber.
 *
 * The shard thread is held still with ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT stop that one
 * thread, nothing else of the server) while two publishes wait in its mailboxes and SIGTERM
 * starts the drain; then it is let go. Each publisher and its subscriber are on different
 * net threads, one pair each way, so whichever mailbox the shard serves first, one
 * subscriber's unsubscribe would be routed before the publish meant for it. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[1 << 16];

/* The net thread serving the client connected from local port `port` (from dump_queues'
 * client id: the net thread is in its top 8 bits), or -1. */
static int net_of(const struct kr_it_server *srv, uint16_t port)
{
    int ufd = kr_it_connect_unix(srv->admin_path);
    kr_it_admin(ufd, "dump_queues", buf, sizeof(buf));
    close(ufd);
    char want[32];
    snprintf(want, sizeof(want), "127.0.0.1:%u ", port);
    for (char *l = strstr(buf, "CLIENT id="); l; l = strstr(l + 1, "CLIENT id=")) {
        char *nl = strchr(l, '\n');
        char *p = strstr(l, " peer=");
        if (p && (!nl || p < nl) && strncmp(p + 6, want, strlen(want)) == 0)
            return (int)(strtoull(l + 10, NULL, 10) >> 56);
    }
    return -1;
}

static uint16_t local_port(int fd)
{
    struct sockaddr_in a;
    socklen_t l = sizeof(a);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    return ntohs(a.sin_port);
}

/* The thread named `name` in process `pid`. */
static pid_t thread_named(pid_t pid, const char *name)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "%s: %s", dir, strerror(errno));
    pid_t found = 0;
    for (struct dirent *e; !found && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char path[384], comm[32] = {0};
        snprintf(path, sizeof(path), "%s/%s/comm", dir, e->d_name);
        FILE *f = fopen(path, "r");
        if (f && fgets(comm, sizeof(comm), f) && strncmp(comm, name, strlen(name)) == 0 &&
            comm[strlen(name)] == '\n')
            found = (pid_t)atoi(e->d_name);
        if (f)
            fclose(f);
    }
    closedir(d);
    cr_assert_gt(found, 0, "no thread %s in %d", name, (int)pid);
    return found;
}

static int count_log(const struct kr_it_server *srv, const char *needle)
{
    FILE *f = fopen(srv->log_path, "r");
    if (!f)
        return 0;
    int n = 0;
    char line[1024];
    while (fgets(line, sizeof(line), f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

Test(drain_barrier, publish_stored_before_the_drain_reaches_its_subscribers)
{
    struct kr_it_server srv;
    const char *args[] = {"--num_net_threads", "2", "--num_router_shards", "1",
                          "--drain_timeout_ms", "60000", "--log_level", "debug", NULL};
    kr_it_start(&srv, args);
    /* connections until each net thread has a subscriber and a publisher */
    int on[2][2] = {{-1, -1}, {-1, -1}}; /* [net][0 = subscriber, 1 = publisher] */
    int spare[64], nspare = 0;
    for (int i = 0; i < 64 && (on[0][1] < 0 || on[1][1] < 0); i++) {
        int fd = kr_it_connect(srv.port);
        kr_it_sends(fd, "version\r\n"); /* answered: the server has it */
        char line[128];
        cr_assert_gt(kr_it_read_until(fd, line, sizeof(line), "\r\n"), 0);
        int net = net_of(&srv, local_port(fd));
        cr_assert(net == 0 || net == 1, "net thread of a client: %d\n%s", net, buf);
        if (on[net][0] < 0)
            on[net][0] = fd;
        else if (on[net][1] < 0)
            on[net][1] = fd;
        else
            spare[nspare++] = fd;
    }
    cr_assert(on[0][1] >= 0 && on[1][1] >= 0, "both net threads got two clients");
    for (int i = 0; i < nspare; i++)
        close(spare[i]);
    int sub0 = on[0][0], sub1 = on[1][0], pub0 = on[0][1], pub1 = on[1][1];
    kr_it_subscribe(sub0, "t0");
    kr_it_subscribe(sub1, "t1");

    /* the shard stops where it is */
    pid_t shard = thread_named(srv.pid, "kr-shard-0");
    if (ptrace(PTRACE_SEIZE, shard, 0, 0) != 0) {
        int e = errno;
        kr_it_stop(&srv);
        cr_assert_fail("ptrace: %s: the shard cannot be held still (the test needs to trace "
                       "its own child: kernel.yama.ptrace_scope 0 or 1, or CAP_SYS_PTRACE)",
                       strerror(e));
    }
    cr_assert_eq(ptrace(PTRACE_INTERRUPT, shard, 0, 0), 0, "ptrace: %s", strerror(errno));
    int st;
    cr_assert_eq(waitpid(shard, &st, __WALL), shard);
    /* each publish waits in the mailbox of the net thread its subscriber is not on */
    kr_it_publish(pub1, "t0", "for-sub0", 8);
    kr_it_publish(pub0, "t1", "for-sub1", 8);
    cr_assert_eq(kill(srv.pid, SIGTERM), 0);
    /* the drain reaches both subscribers (or, waiting for the shard, does not yet) */
    for (int i = 0; i < 100 && count_log(&srv, "drain reached it") < 2; i++)
        kr_it_sleep_ms(10);
    kr_it_sleep_ms(50);
    cr_assert_eq(ptrace(PTRACE_DETACH, shard, 0, 0), 0, "ptrace: %s", strerror(errno));

    /* both messages were STORED before the drain: both are delivered */
    char got[256];
    size_t gl = 0;
    cr_assert_eq(kr_it_collect(sub0, 1, got, sizeof(got), &gl), 1);
    cr_assert_not_null(strstr(got, "for-sub0"), "%s", got);
    cr_assert_eq(kr_it_collect(sub1, 1, got, sizeof(got), &gl), 1);
    cr_assert_not_null(strstr(got, "for-sub1"), "%s", got);
    close(sub0);
    close(sub1);
    close(pub0);
    close(pub1);
    cr_assert(kr_it_wait_log(&srv, "drain finished"));
    cr_assert(kr_it_exited_0(&srv), "the server exits 0 by itself after the drain");
    kr_it_stop(&srv);
}
