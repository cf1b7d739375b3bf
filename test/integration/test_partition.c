/* A network partition between two live NATS servers: the route between them runs through
 * the harness's TCP proxies (kr_it_proxy), which the test cuts and heals while every
 * nats-server and every Kraken node keeps running. Node 0 is on server 0, node 1 on
 * server 1, each linked to its own server only. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kr_itest.h"

#define NS 2 /* NATS servers, and Kraken nodes: node i on server i */

static struct kr_it_nats nats[NS];
static struct kr_it_proxy *px[NS];
static struct kr_it_server node[NS];

static void node_start(int i)
{
    char url[64], name[16];
    kr_it_nats_url(&nats[i], url, sizeof(url));
    snprintf(name, sizeof(name), "node%d", i);
    /* its own server only: a partition must not make the link move to the other side */
    const char *args[] = {"--cluster_nats_url", url, "--cluster_node_name", name,
                          "--cluster_linger_ms", "300", "--drain_resume_window_ms", "0", NULL};
    kr_it_start(&node[i], args);
}

static void setup(void)
{
    memset(node, 0, sizeof(node));
    kr_it_nats_cluster_start_proxied(nats, NS, px);
    for (int i = 0; i < NS; i++)
        node_start(i);
    for (int i = 0; i < NS; i++)
        kr_it_wait_stat(node[i].port, "cluster_peers", KR_IT_EQ, 1);
}

static void teardown(void)
{
    for (int i = 0; i < NS; i++)
        if (node[i].pid)
            kr_it_stop(&node[i]);
    kr_it_nats_cluster_stop(nats, NS);
    for (int i = 0; i < NS; i++) {
        kr_it_proxy_stop(px[i]);
        px[i] = NULL;
    }
}

/* num_routes of server i's /routez, as a figure for kr_it_wait_figure. */
static long long routes_figure(const void *arg, const char *name)
{
    (void)name;
    return kr_it_nats_routes(arg);
}

static void wait_routes(int want)
{
    for (int i = 0; i < NS; i++)
        kr_it_wait_figure(routes_figure, &nats[i], nats[i].name, KR_IT_EQ, want);
}

static void cut(void)
{
    for (int i = 0; i < NS; i++)
        kr_it_proxy_cut(px[i]);
}

static void heal(void)
{
    for (int i = 0; i < NS; i++)
        kr_it_proxy_heal(px[i]);
}

/* Is `topic` one of the space-separated words of `list`? */
static bool names(const char *list, const char *topic)
{
    size_t tl = strlen(topic);
    for (const char *p = list; (p = strstr(p, topic)); p += tl)
        if ((p == list || p[-1] == ' ') && (p[tl] == ' ' || p[tl] == 0))
            return true;
    return false;
}

/* Poll fd (bounded: KR_IT_WAIT_TRIES polls) until the resync notices received hold every
 * topic of `want` (space-separated); the connection must stay open and every entry must be
 * a notice. The notices' topics, space-separated, into out. */
static void wait_notices(int fd, const char *want, char *out, size_t cap)
{
    static char buf[1 << 16];
    size_t olen = 0;
    out[0] = 0;
    for (int k = 0; k < KR_IT_WAIT_TRIES; k++) {
        size_t len = kr_it_get(fd, buf, sizeof(buf));
        cr_assert(strncmp(buf, "VALUE ", 6) == 0 || strcmp(buf, "END\r\n") == 0,
                  "the subscriber was closed or refused: %s", buf);
        const char *p = strstr(buf, "\r\n") + 2, *end = buf + len - 5;
        while (p < end) {
            unsigned plen;
            char topics[256];
            cr_assert_eq(sscanf(p, "MESSAGE %255s %u\r\n", topics, &plen), 2, "entry: %s", p);
            cr_assert_str_eq(topics, "__kraken__:resync", "an entry that is not a notice: %s", p);
            p = strstr(p, "\r\n") + 2;
            cr_assert_lt(olen + plen + 2, cap);
            olen += (size_t)snprintf(out + olen, cap - olen, "%s%.*s", olen ? " " : "",
                                     (int)plen, p);
            p += plen + 2;
        }
        bool all = true;
        char copy[256], *save = NULL;
        snprintf(copy, sizeof(copy), "%s", want);
        for (char *t = strtok_r(copy, " ", &save); t && all; t = strtok_r(NULL, " ", &save))
            all = names(out, t);
        if (all)
            return;
        if (len == 5)
            kr_it_sleep_ms(KR_IT_WAIT_MS);
    }
    cr_assert_fail("no resync notice naming %s; the notices named: '%s'", want, out);
}

/* The next entry fd gets (bounded) is exactly `entry` (MESSAGE line and payload). */
static void expect_entry(int fd, const char *entry)
{
    static char buf[1 << 16];
    size_t len = 0;
    cr_assert_eq(kr_it_collect(fd, 1, buf, sizeof(buf), &len), 1, "no entry; wanted %s", entry);
    cr_assert_str_eq(buf, entry);
}

/* The route between server 0 and server 1 breaks while both servers and both nodes live on.
 * Each node takes the other for a silent peer (its heartbeats stop) and tells its opted-in
 * subscriber to resync exactly the topics the other node forwarded to it lately: not a
 * topic nobody forwarded, not one published locally. The servers retry the route through
 * the proxies only (refused while cut: the route stays down, nothing goes around the
 * proxies). Healed, the route and the peers come back; each node tells its subscribers of
 * every held topic (what the other published meanwhile never came), and entries cross
 * again. */
Test(partition, a_cut_route_makes_each_side_resync_what_the_other_forwarded, .init = setup,
     .fini = teardown)
{
    /* the route really runs through the proxies: cut them and it must go down */
    for (int i = 0; i < NS; i++)
        kr_it_wait_figure(kr_it_proxy_figure, px[i], "forwarded", KR_IT_GE, 1);
    cr_assert_geq(kr_it_proxy_open(px[0]) + kr_it_proxy_open(px[1]), 1);

    int sub1 = kr_it_connect(node[1].port), sub0 = kr_it_connect(node[0].port);
    kr_it_subscribe(sub1, "from0a from0b quiet1 local1 __kraken__:resync");
    kr_it_subscribe(sub0, "from1 quiet0 __kraken__:resync");
    int pub0 = kr_it_connect(node[0].port), pub1 = kr_it_connect(node[1].port);
    kr_it_publish(pub0, "from0a", "a", 1);
    kr_it_publish(pub0, "from0b", "b", 1);
    kr_it_publish(pub1, "from1", "c", 1);
    kr_it_publish(pub1, "local1", "d", 1); /* node 1's own: never forwarded to node 1 */
    static char buf[1 << 16];
    size_t len = 0;
    cr_assert_eq(kr_it_collect(sub1, 3, buf, sizeof(buf), &len), 3, "%s", buf);
    cr_assert(strstr(buf, "MESSAGE from0a 1\r\na\r\n") && strstr(buf, "MESSAGE from0b 1\r\nb\r\n") &&
                  strstr(buf, "MESSAGE local1 1\r\nd\r\n"),
              "%s", buf);
    expect_entry(sub0, "MESSAGE from1 1\r\nc\r\n");

    cut();
    wait_routes(0);
    for (int i = 0; i < NS; i++)
        kr_it_wait_stat(node[i].port, "cluster_peers", KR_IT_EQ, 0);

    char told[1024];
    wait_notices(sub1, "from0a from0b", told, sizeof(told));
    cr_assert(!names(told, "quiet1") && !names(told, "local1"), "node 1's notice: %s", told);
    wait_notices(sub0, "from1", told, sizeof(told));
    cr_assert(!names(told, "quiet0"), "node 0's notice: %s", told);
    for (int i = 0; i < NS; i++)
        kr_it_wait_stat(node[i].port, "cluster_peer_silences", KR_IT_EQ, 1);

    /* the servers kept trying the route, through the proxies only: refused there, and no
     * route came up around them */
    unsigned refused[NS];
    for (int i = 0; i < NS; i++)
        refused[i] = kr_it_proxy_refused(px[i]);
    for (int i = 0; i < NS; i++)
        kr_it_wait_figure(kr_it_proxy_figure, px[i], "refused", KR_IT_GE, refused[i] + 1);
    for (int i = 0; i < NS; i++) {
        cr_assert_eq(kr_it_nats_routes(&nats[i]), 0, "%s has a route while cut", nats[i].name);
        cr_assert_eq(kr_it_proxy_open(px[i]), 0);
    }

    /* nothing more for them: the next entries are local markers, no further notice */
    kr_it_publish(pub1, "quiet1", "m1", 2);
    expect_entry(sub1, "MESSAGE quiet1 2\r\nm1\r\n");
    kr_it_publish(pub0, "quiet0", "m0", 2);
    expect_entry(sub0, "MESSAGE quiet0 2\r\nm0\r\n");

    /* published on one side while cut: it never crosses */
    kr_it_publish(pub0, "from0a", "cut", 3);

    heal();
    wait_routes(1);
    for (int i = 0; i < NS; i++)
        kr_it_wait_stat(node[i].port, "cluster_peers", KR_IT_EQ, 1);
    /* each side hears a peer it took for silent again: what that one published meanwhile
     * (the `cut` entry) did not come, so every held topic is told, once */
    for (int i = 0; i < NS; i++)
        kr_it_wait_stat(node[i].port, "cluster_peer_returns", KR_IT_EQ, 1);
    wait_notices(sub1, "from0a from0b quiet1 local1", told, sizeof(told));
    wait_notices(sub0, "from1 quiet0", told, sizeof(told));
    /* a subscribe's barrier is answered by the other node through the route, after the
     * subscriptions the servers exchanged when it came back: the old topics are in force */
    kr_it_subscribe(sub1, "healed1");
    kr_it_subscribe(sub0, "healed0");
    kr_it_publish(pub0, "from0a", "after", 5);
    expect_entry(sub1, "MESSAGE from0a 5\r\nafter\r\n");
    kr_it_publish(pub1, "from1", "after", 5);
    expect_entry(sub0, "MESSAGE from1 5\r\nafter\r\n");
    for (int i = 0; i < NS; i++)
        cr_assert_eq(kr_it_stat(node[i].port, "cluster_peer_silences"), 1);
    close(pub0);
    close(pub1);
    close(sub0);
    close(sub1);
}
