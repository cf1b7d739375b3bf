/* Kraken nodes federated over a NATS cluster: real nats-server processes on loopback
 * (routed to each other), real Kraken nodes each on its own NATS server, raw protocol
 * bytes. Exactly-once and order are checked by sequence numbers in the payloads. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kr_itest.h"

#define NN 3 /* NATS servers, and Kraken nodes: node i on server i */

struct cluster {
    struct kr_it_nats nats[NN];
    struct kr_it_server node[NN];
    int nnodes;
};

/* Start a Kraken node whose first cluster URL is NATS server `on`, then the others (for
 * fail-over), with extra arguments. */
static void node_start(struct cluster *c, int i, int on, const char *const *extra)
{
    char urls[512] = "", one[64], name[16];
    kr_it_nats_url(&c->nats[on], one, sizeof(one));
    snprintf(urls, sizeof(urls), "%s", one);
    for (int k = 0; k < NN; k++) {
        if (k == on || !c->nats[k].pid)
            continue;
        kr_it_nats_url(&c->nats[k], one, sizeof(one));
        strncat(urls, ",", sizeof(urls) - strlen(urls) - 1);
        strncat(urls, one, sizeof(urls) - strlen(urls) - 1);
    }
    snprintf(name, sizeof(name), "node%d", i);
    /* stopped at once by SIGTERM (a test of moving between nodes sets a window of its own) */
    const char *args[32] = {"--cluster_nats_url", urls, "--cluster_node_name", name,
                            "--cluster_linger_ms", "300", "--drain_resume_window_ms", "0"};
    int n = 8;
    for (int k = 0; extra && extra[k] && n < 30; k++)
        args[n++] = extra[k];
    args[n] = NULL;
    kr_it_start(&c->node[i], args);
}

/* Every node has heard from every other (heartbeats), so a subscribe's barrier asks them
 * all. */
static void wait_peers(struct cluster *c, int want)
{
    for (int i = 0; i < c->nnodes; i++)
        kr_it_wait_stat(c->node[i].port, "cluster_peers", KR_IT_GE, want);
}

static void cluster_up(struct cluster *c, int nodes, const char *const *extra)
{
    memset(c, 0, sizeof(*c));
    kr_it_nats_cluster_start(c->nats, NN);
    c->nnodes = nodes;
    for (int i = 0; i < nodes; i++)
        node_start(c, i, i % NN, extra);
    wait_peers(c, nodes - 1);
}

/* SIGKILL node i (a crash: no drain, no goodbye) and reap it. */
static void node_kill(struct cluster *c, int i)
{
    kill(c->node[i].pid, SIGKILL);
    waitpid(c->node[i].pid, NULL, 0);
    c->node[i].pid = 0;
}

static void cluster_down(struct cluster *c)
{
    for (int i = 0; i < c->nnodes; i++)
        if (c->node[i].pid)
            kr_it_stop(&c->node[i]);
    kr_it_nats_cluster_stop(c->nats, NN);
}

/* One publish request with one entry; waits for STORED. */
static void publish(int fd, const char *topics, const char *payload)
{
    kr_it_publish(fd, topics, payload, strlen(payload));
}

/* Send publish requests of one entry each on `load`, payloads p0-<from> .. p0-<to - 1>,
 * pipelined in one write (the answers are not read here). */
static void publish_pipelined(int fd, long from, long to)
{
    static char big[1 << 20];
    size_t used = 0;
    for (long k = from; k < to; k++) {
        char payload[32], e[96];
        snprintf(payload, sizeof(payload), "p0-%ld", k);
        int el = snprintf(e, sizeof(e), "MESSAGE load %zu\r\n%s\r\n", strlen(payload), payload);
        used += (size_t)snprintf(big + used, sizeof(big) - used, "set publish 0 0 %d\r\n%s\r\n",
                                 el, e);
    }
    kr_it_send(fd, big, used);
}

/* Parse `get messages` entries: calls back with topics and payload of each. */
typedef void (*entry_cb)(void *arg, const char *topics, size_t tlen, const char *payload,
                         size_t plen);
static size_t parse_entries(const char *buf, size_t len, entry_cb cb, void *arg)
{
    size_t n = 0;
    const char *p = buf, *end = buf + len;
    while (p < end) {
        const char *m = memmem(p, (size_t)(end - p), "MESSAGE ", 8);
        if (!m)
            break;
        const char *eol = memmem(m, (size_t)(end - m), "\r\n", 2);
        cr_assert_not_null(eol);
        const char *sp = eol;
        while (sp > m && sp[-1] != ' ')
            sp--;
        size_t plen = strtoul(sp, NULL, 10);
        const char *topics = m + 8;
        size_t tlen = (size_t)(sp - 1 - topics);
        if (cb)
            cb(arg, topics, tlen, eol + 2, plen);
        p = eol + 2 + plen + 2;
        n++;
    }
    return n;
}


/* Poll (bounded) until the server tells the client SERVER_ERROR (then closes). With
 * `entries` false every other answer must be an empty `END`; with it true, entries may come
 * first (they are read whole and skipped). */
static bool wait_told(int fd, bool entries)
{
    static char buf[1 << 20];
    for (int k = 0; k < 1500; k++) { /* 30 s: a sanitizer build reconnects slowly */
        kr_it_sends(fd, "get messages\r\n");
        size_t n = kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
        if (strstr(buf, "SERVER_ERROR"))
            return true;
        if (entries && strncmp(buf, "VALUE ", 6) == 0) {
            if (!strstr(buf, "END\r\n"))
                n += kr_it_read_until(fd, buf + n, sizeof(buf) - n, "END\r\n");
            continue;
        }
        cr_assert(n && strcmp(buf, "END\r\n") == 0, "%s", buf);
        kr_it_sleep_ms(20);
    }
    return false;
}

/* Poll (bounded) until a resync notice naming `topic` arrives (entries before it are read
 * and skipped); the connection must stay open all along. */
static bool wait_notice(int fd, const char *topic)
{
    static char buf[1 << 20];
    char want[128];
    snprintf(want, sizeof(want), "MESSAGE __kraken__:resync ");
    for (int k = 0; k < 500; k++) {
        kr_it_sends(fd, "get messages\r\n");
        size_t n = kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
        cr_assert(n > 0 && !strstr(buf, "SERVER_ERROR"), "told and closed: %s", buf);
        if (strncmp(buf, "VALUE ", 6) == 0) {
            n += kr_it_read_until(fd, buf + n, sizeof(buf) - n, "END\r\n");
            const char *at = strstr(buf, want);
            if (at && strstr(at, topic))
                return true;
            continue;
        }
        cr_assert(strcmp(buf, "END\r\n") == 0, "%s", buf);
        kr_it_sleep_ms(20);
    }
    return false;
}

/* A fresh subscriber on node `sn` gets what a fresh publisher on node `pn` publishes. */
static void one_delivery(struct cluster *c, int sn, int pn, const char *topic)
{
    int sub = kr_it_connect(c->node[sn].port), pub = kr_it_connect(c->node[pn].port);
    kr_it_subscribe(sub, topic);
    publish(pub, topic, "p0-0");
    char buf[4096];
    size_t len = 0;
    cr_assert_eq(kr_it_collect(sub, 1, buf, sizeof(buf), &len), 1, "%s: node %d to node %d",
                 topic, pn, sn);
    close(sub);
    close(pub);
}

/* ------------------------------------------------------------------------------------- */

struct seqcheck {
    int pubs;
    long next[8]; /* the next sequence expected from each publisher */
    long dups, gaps;
    char topics[64];
};

static void seq_cb(void *arg, const char *topics, size_t tlen, const char *payload, size_t plen)
{
    struct seqcheck *s = arg;
    int pub;
    long seq;
    char copy[64];
    snprintf(copy, sizeof(copy), "%.*s", (int)plen, payload);
    cr_assert_eq(sscanf(copy, "p%d-%ld", &pub, &seq), 2, "payload %s", copy);
    cr_assert(pub >= 0 && pub < s->pubs);
    if (seq < s->next[pub])
        s->dups++;
    else if (seq > s->next[pub])
        s->gaps++;
    s->next[pub] = seq + 1;
    snprintf(s->topics, sizeof(s->topics), "%.*s", (int)tlen, topics);
}

/* Publishers on two nodes, subscribers on all three: every subscriber gets every entry of
 * every publisher once, in order; the publishing connection never gets its own. */
Test(cluster, entries_cross_nodes_once_and_in_order)
{
    struct cluster c;
    cluster_up(&c, 3, NULL);
    int subs[3], pubs[2];
    for (int i = 0; i < 3; i++) {
        subs[i] = kr_it_connect(c.node[i].port);
        kr_it_subscribe(subs[i], "orders");
    }
    pubs[0] = kr_it_connect(c.node[0].port);
    pubs[1] = kr_it_connect(c.node[1].port);
    kr_it_subscribe(pubs[0], "orders"); /* no echo: it must not get its own entries */
    const int N = 300;
    char payload[64];
    for (int k = 0; k < N; k++)
        for (int p = 0; p < 2; p++) {
            snprintf(payload, sizeof(payload), "p%d-%d", p, k);
            publish(pubs[p], "orders", payload);
        }
    static char buf[1 << 20];
    for (int i = 0; i < 3; i++) {
        size_t len = 0;
        size_t got = kr_it_collect(subs[i], 2 * N, buf, sizeof(buf), &len);
        struct seqcheck s = {.pubs = 2};
        parse_entries(buf, len, seq_cb, &s);
        cr_assert_eq(got, (size_t)(2 * N), "node %d's subscriber got %zu of %d", i, got, 2 * N);
        cr_assert_eq(s.dups, 0, "node %d: duplicates", i);
        cr_assert_eq(s.gaps, 0, "node %d: out of order", i);
        cr_assert_eq(s.next[0], N);
        cr_assert_eq(s.next[1], N);
    }
    /* publisher 0 got only publisher 1's entries */
    size_t len = 0;
    size_t got = kr_it_collect(pubs[0], N, buf, sizeof(buf), &len);
    struct seqcheck s = {.pubs = 2};
    parse_entries(buf, len, seq_cb, &s);
    cr_assert_eq(got, (size_t)N);
    cr_assert_eq(s.next[0], 0, "no echo to the publishing connection");
    cr_assert_eq(s.next[1], N);
    cr_assert_geq(kr_it_stat(c.node[2].port, "cluster_msgs_in"), (unsigned long long)(2 * N));
    cr_assert_geq(kr_it_stat(c.node[0].port, "cluster_msgs_out"), (unsigned long long)N);
    for (int i = 0; i < 3; i++)
        close(subs[i]);
    close(pubs[0]);
    close(pubs[1]);
    cluster_down(&c);
}

/* An entry to three topics reaches another node's subscriber of two of them as one entry
 * listing both; the second copy is dropped there as a duplicate. */
Test(cluster, multi_topic_entry_is_one_entry_listing_the_matched_topics)
{
    struct cluster c;
    cluster_up(&c, 3, NULL);
    int sub = kr_it_connect(c.node[2].port), pub = kr_it_connect(c.node[0].port);
    kr_it_subscribe(sub, "alpha gamma");
    unsigned long long dups0 = kr_it_stat(c.node[2].port, "cluster_duplicates");
    publish(pub, "alpha beta gamma", "p0-0");
    static char buf[1 << 16];
    size_t len = 0;
    cr_assert_eq(kr_it_collect(sub, 1, buf, sizeof(buf), &len), 1);
    struct seqcheck s = {.pubs = 1};
    cr_assert_eq(parse_entries(buf, len, seq_cb, &s), 1);
    cr_assert_str_eq(s.topics, "alpha gamma");
    /* nothing more arrives: the other copies were dropped */
    publish(pub, "alpha", "p0-1");
    len = 0;
    cr_assert_eq(kr_it_collect(sub, 1, buf, sizeof(buf), &len), 1);
    s.topics[0] = 0;
    cr_assert_eq(parse_entries(buf, len, seq_cb, &s), 1);
    cr_assert_str_eq(s.topics, "alpha");
    cr_assert_eq(s.dups, 0);
    cr_assert_eq(s.next[0], 2);
    cr_assert_geq(kr_it_stat(c.node[2].port, "cluster_duplicates"), dups0 + 1);
    close(sub);
    close(pub);
    cluster_down(&c);
}

/* "After STORED, every later publish is delivered", with the subscriber's node and the
 * publisher's node on different NATS servers: a flush to the subscriber's own server is
 * not enough (interest reaches the other servers asynchronously); the barrier is. */
Test(cluster, after_stored_a_publish_on_another_server_is_delivered)
{
    struct cluster c;
    cluster_up(&c, 3, NULL);
    int sub = kr_it_connect(c.node[2].port), pub = kr_it_connect(c.node[0].port);
    static char buf[1 << 16];
    for (int k = 0; k < 40; k++) {
        char topic[32], payload[32];
        snprintf(topic, sizeof(topic), "fresh%d", k);
        snprintf(payload, sizeof(payload), "p0-%d", k);
        kr_it_subscribe(sub, topic);
        publish(pub, topic, payload); /* at once */
        size_t len = 0;
        cr_assert_eq(kr_it_collect(sub, 1, buf, sizeof(buf), &len), 1,
                     "round %d: the publish right after STORED was delivered", k);
    }
    cr_assert_geq(kr_it_stat(c.node[2].port, "cluster_barriers"), 40);
    close(sub);
    close(pub);
    cluster_down(&c);
}

/* Retro across nodes: a topic this node held since before the horizon is replayed; a
 * topic it only starts holding now answers NOT_FOUND, with the live subscription in force. */
Test(cluster, retro_covers_topics_from_when_the_node_held_them)
{
    struct cluster c;
    cluster_up(&c, 2, NULL);
    int holder = kr_it_connect(c.node[1].port), pub = kr_it_connect(c.node[0].port);
    kr_it_subscribe(holder, "held");
    int x = kr_it_connect(c.node[1].port);
    kr_it_sends(x, "set register 0 0 0\r\n\r\n");
    kr_it_expect(x, "STORED\r\n");
    kr_it_sleep_ms(5);
    publish(pub, "held", "p0-0");
    publish(pub, "fresh", "p0-1");
    static char buf[1 << 16];
    size_t len = 0;
    cr_assert_eq(kr_it_collect(holder, 1, buf, sizeof(buf), &len), 1);
    /* the first subscribe after register is retroactive */
    kr_it_sends(x, "set subscribe 0 0 4\r\nheld\r\n");
    kr_it_expect(x, "STORED\r\n");
    len = 0;
    cr_assert_eq(kr_it_collect(x, 1, buf, sizeof(buf), &len), 1, "held: replayed");
    cr_assert_not_null(strstr(buf, "p0-0"));
    int y = kr_it_connect(c.node[1].port);
    char req[128];
    snprintf(req, sizeof(req), "set retro_subscribe 0 0 %d\r\n1\r\nfresh\r\n", 8);
    kr_it_sends(y, req);
    kr_it_expect(y, "NOT_FOUND\r\n");
    publish(pub, "fresh", "p0-2");
    len = 0;
    cr_assert_eq(kr_it_collect(y, 1, buf, sizeof(buf), &len), 1, "live subscription in force");
    cr_assert_not_null(strstr(buf, "p0-2"));
    close(holder);
    close(pub);
    close(x);
    close(y);
    cluster_down(&c);
}

/* The cluster subscription goes a linger after the last local subscriber. */
Test(cluster, interest_is_released_a_linger_after_the_last_subscriber)
{
    struct cluster c;
    cluster_up(&c, 2, NULL);
    uint16_t port = c.node[1].port;
    unsigned long long base = kr_it_stat(port, "cluster_subjects");
    int a = kr_it_connect(port), b = kr_it_connect(port), m = kr_it_connect(port);
    kr_it_subscribe(a, "flap");
    kr_it_subscribe(b, "flap");
    kr_it_subscribe(m, "flapmarker"); /* m alone holds it */
    cr_assert_eq(kr_it_stat(port, "cluster_subjects"), base + 2, "one subscription per topic");
    /* a leaves (the server has seen it go once a, b, m and the stats client are three) */
    kr_it_wait_stat(port, "curr_connections", KR_IT_EQ, 4);
    close(a);
    kr_it_wait_stat(port, "curr_connections", KR_IT_EQ, 3);
    /* then m: once m's topic is released, a linger that a's leaving would have started has
     * run out as well, and b still holds flap */
    close(m);
    kr_it_wait_stat(port, "cluster_subjects", KR_IT_EQ, base + 1);
    close(b);
    kr_it_wait_stat(port, "cluster_subjects", KR_IT_EQ, base); /* released after the linger */
    cluster_down(&c);
}

/* stats, the admin status line and `kraken status` show the link. */
Test(cluster, status_and_stats_show_the_link)
{
    struct cluster c;
    cluster_up(&c, 2, NULL);
    cr_assert_eq(kr_it_stat(c.node[0].port, "cluster_enabled"), 1);
    cr_assert_eq(kr_it_stat(c.node[0].port, "cluster_connected"), 1);
    int fd = kr_it_connect_unix(c.node[0].admin_path);
    char buf[4096];
    kr_it_admin(fd, "status", buf, sizeof(buf));
    close(fd);
    cr_assert_not_null(strstr(buf, "cluster=linked node=node0 server=nats://127.0.0.1:"), "%s", buf);
    cr_assert_not_null(strstr(buf, "peers=1"), "%s", buf);
    const char *args[] = {"status", NULL};
    char out[4096];
    cr_assert_eq(kr_it_cli(&c.node[0], out, sizeof(out), args), 0, "%s", out);
    cr_assert_not_null(strstr(out, "cluster: node node0, linked to nats://127.0.0.1:"), "%s", out);
    cluster_down(&c);
}

/* A node that reaches no NATS server at start says so and exits non-zero; told to start
 * degraded, it serves local clients and links up once a server answers. */
Test(cluster, no_server_at_start)
{
    uint16_t dead = kr_it_free_port();
    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%u", dead);
    const char *args[] = {"run", "--tcp_server_port", "0", "--cluster_nats_url", url, "--drain_resume_window_ms", "0",
                          
                          "--admin_socket", "/tmp/kr_it_cluster_nosrv.sock", NULL};
    char out[4096];
    int rc = kr_it_cli(NULL, out, sizeof(out), args);
    cr_assert_neq(rc, 0, "exits non-zero: %s", out);
    cr_assert_not_null(strstr(out, "cannot reach any NATS server"), "%s", out);
    cr_assert_not_null(strstr(out, "cluster_start_degraded"), "%s", out);

    /* a NATS server that is down when the node starts, and comes up later */
    struct kr_it_nats nats[1];
    kr_it_nats_cluster_start(nats, 1);
    kr_it_nats_stop(&nats[0]);
    kr_it_nats_url(&nats[0], url, sizeof(url));
    struct kr_it_server srv;
    const char *extra[] = {"--cluster_nats_url", url, "--drain_resume_window_ms", "0",
                           "--cluster_start_degraded", "1", NULL};
    kr_it_start(&srv, extra);
    cr_assert_eq(kr_it_stat(srv.port, "cluster_connected"), 0);
    int a = kr_it_connect(srv.port), b = kr_it_connect(srv.port);
    kr_it_subscribe(b, "local"); /* answered while unlinked */
    publish(a, "local", "p0-0"); /* local delivery works while unlinked */
    char buf[4096];
    size_t len = 0;
    cr_assert_eq(kr_it_collect(b, 1, buf, sizeof(buf), &len), 1);
    kr_it_nats_restart(nats, 1, 0);
    kr_it_wait_stat(srv.port, "cluster_connected", KR_IT_EQ, 1); /* once the server answers */
    /* b may have missed what other nodes published while unlinked: it is told */
    cr_assert(wait_told(b, false), "told to resync once linked");
    close(a);
    close(b);
    kr_it_stop(&srv);
    kr_it_nats_cluster_stop(nats, 1);
}

/* ------------------------------------------------------------------------- faults */

struct faultcheck {
    long next;
    long dups, gaps;
    bool told;
};

/* Poll a subscriber until it was told (SERVER_ERROR, then closed) or `want` entries came
 * or nothing more arrives for a while; checks order and exactly-once on the way. */
static void poll_until(int fd, long want, struct faultcheck *f)
{
    static char buf[1 << 20];
    int quiet = 0;
    while (!f->told && f->next < want && quiet < 150) {
        kr_it_sends(fd, "get messages\r\n");
        size_t n = kr_it_read_until(fd, buf, sizeof(buf), "END\r\n");
        if (n == 0 || strstr(buf, "SERVER_ERROR")) {
            f->told = strstr(buf, "SERVER_ERROR") != NULL;
            cr_assert(f->told, "the connection closed without SERVER_ERROR: %s", buf);
            break;
        }
        struct seqcheck s = {.pubs = 1, .next = {f->next}};
        size_t got = parse_entries(buf, n, seq_cb, &s);
        f->dups += s.dups;
        f->gaps += s.gaps;
        f->next = s.next[0];
        if (got == 0) {
            quiet++;
            kr_it_sleep_ms(20);
        } else {
            quiet = 0;
        }
    }
}

/* Publishers on node 0, four subscribers on node 1; NATS server `victim` is killed a third
 * of the way through. Each subscriber either got every entry in order, or was told and
 * closed; node `victim` reconnected; afterwards the nodes work across the cluster. */
static void kill_server_under_load(int victim)
{
    struct cluster c;
    cluster_up(&c, 2, NULL);
    int subs[4];
    for (int i = 0; i < 4; i++) {
        subs[i] = kr_it_connect(c.node[1].port);
        kr_it_subscribe(subs[i], "load");
    }
    int pub = kr_it_connect(c.node[0].port);
    const long N = 3000;
    char payload[32];
    for (long k = 0; k < N; k++) {
        snprintf(payload, sizeof(payload), "p0-%ld", k);
        publish(pub, "load", payload);
        if (k == N / 3)
            kr_it_nats_kill(&c.nats[victim]);
    }
    for (int i = 0; i < 4; i++) {
        struct faultcheck f = {0};
        poll_until(subs[i], N, &f);
        cr_assert_eq(f.dups, 0, "subscriber %d: duplicates", i);
        if (!f.told) {
            cr_assert_eq(f.gaps, 0, "subscriber %d lost messages without being told", i);
            cr_assert_eq(f.next, N, "subscriber %d got %ld of %ld without being told", i, f.next, N);
        }
        close(subs[i]);
    }
    cr_assert_geq(kr_it_stat(c.node[victim].port, "cluster_reconnects"), 1);
    cr_assert_eq(kr_it_stat(c.node[victim].port, "cluster_connected"), 1, "linked again");
    one_delivery(&c, 1, 0, "after");
    close(pub);
    cluster_down(&c);
}

/* Kill the subscriber node's NATS server under load: the node reconnects to another server
 * of its list and tells every subscriber of a held topic. */
Test(cluster, nats_server_killed_subscribers_complete_or_told)
{
    kill_server_under_load(1);
}

/* SIGKILL the publishers' Kraken node mid-load: what other nodes' subscribers got is a
 * prefix of each publisher's entries, in order, without duplicates (what the dead node had
 * not forwarded is lost: docs/cluster.md); the other nodes go on and see it leave. */
Test(cluster, kraken_node_killed_others_keep_order_and_go_on)
{
    struct cluster c;
    cluster_up(&c, 3, NULL);
    int sub = kr_it_connect(c.node[1].port);
    kr_it_subscribe(sub, "load");
    int pub = kr_it_connect(c.node[0].port);
    char payload[32];
    for (long k = 0; k < 2000; k++) {
        snprintf(payload, sizeof(payload), "p0-%ld", k);
        publish(pub, "load", payload);
    }
    /* and without waiting for the answers: pipelined when the node dies */
    publish_pipelined(pub, 2000, 12000);
    node_kill(&c, 0);
    close(pub);
    struct faultcheck f = {0};
    poll_until(sub, 12000, &f);
    cr_assert_eq(f.dups, 0);
    cr_assert_eq(f.gaps, 0, "a prefix, in order");
    /* everything acknowledged before the kill and forwarded arrives, unless the notice below
     * came first (a slow build: it covers what had not arrived) */
    cr_assert(f.told || f.next >= 2000, "%ld entries and not told", f.next);
    /* node 0 went silent without saying it left: node 1 tells the subscribers of what node 0
     * forwarded lately (load), 3.5 s after its last heartbeat */
    for (int k = 0; k < 500 && !f.told; k++) {
        kr_it_sends(sub, "get messages\r\n");
        static char rest[1 << 16];
        kr_it_read_until(sub, rest, sizeof(rest), "\r\n");
        f.told = strstr(rest, "SERVER_ERROR queue overflow") != NULL;
        if (!f.told) {
            cr_assert_str_eq(rest, "END\r\n", "nothing after the prefix but the notice");
            kr_it_sleep_ms(20);
        }
    }
    cr_assert(f.told, "the subscriber of what the silent node forwarded was told");
    kr_it_wait_stat(c.node[1].port, "cluster_peer_silences", KR_IT_GE, 1);
    /* node 2 and node 1 go on */
    one_delivery(&c, 1, 2, "later");
    kr_it_wait_stat(c.node[1].port, "cluster_peers", KR_IT_EQ, 1); /* node 0 left */
    cr_assert(kr_it_wait_log(&c.node[1], "it left"));
    close(sub);
    unlink(c.node[0].log_path);
    cluster_down(&c);
}

/* The publisher node's only NATS server goes away while it publishes: libnats' reconnect
 * buffer (64 KiB here) overflows, and the server comes back. A subscriber of `topics` on
 * the other node has received p0-0 before; the caller checks how it is told. */
static void lost_forwards(struct cluster *c, const char *topics, int *sub, int *pub)
{
    memset(c, 0, sizeof(*c));
    kr_it_nats_cluster_start(c->nats, 2);
    c->nnodes = 2;
    char u0[64], u1[64];
    kr_it_nats_url(&c->nats[0], u0, sizeof(u0));
    kr_it_nats_url(&c->nats[1], u1, sizeof(u1));
    const char *a0[] = {"--cluster_nats_url", u0, "--drain_resume_window_ms", "0",
                        "--cluster_node_name", "pubnode",
                        "--cluster_reconnect_buf_bytes", "64k", NULL};
    const char *a1[] = {"--cluster_nats_url", u1, "--drain_resume_window_ms", "0",
                        "--cluster_node_name", "subnode", NULL};
    kr_it_start(&c->node[0], a0);
    kr_it_start(&c->node[1], a1);
    wait_peers(c, 1);
    *sub = kr_it_connect(c->node[1].port);
    *pub = kr_it_connect(c->node[0].port);
    kr_it_subscribe(*sub, topics);
    publish(*pub, "burst", "p0-0");
    static char buf[1 << 16];
    size_t len = 0;
    cr_assert_eq(kr_it_collect(*sub, 1, buf, sizeof(buf), &len), 1); /* p0-0 */
    kr_it_nats_stop(&c->nats[0]);
    /* the publisher's node saw its server go */
    kr_it_wait_stat(c->node[0].port, "cluster_connected", KR_IT_EQ, 0);
    char payload[2048];
    memset(payload, 'x', sizeof(payload) - 1);
    payload[sizeof(payload) - 1] = 0;
    for (int k = 0; k < 100; k++) /* 200 KiB: past the 64 KiB buffer */
        publish(*pub, "burst", payload);
    cr_assert_gt(kr_it_stat(c->node[0].port, "cluster_lost_forwards"), 0);
    kr_it_nats_restart(c->nats, 2, 0);
}

Test(cluster, reconnect_buffer_overflow_is_announced_and_subscribers_told)
{
    struct cluster c;
    int sub, pub;
    lost_forwards(&c, "burst", &sub, &pub);
    /* what libnats' buffer held is delivered after the reconnect, then the notice */
    cr_assert(wait_told(sub, true), "the subscriber on the other node was told");
    cr_assert_geq(kr_it_stat(c.node[0].port, "cluster_resyncs_sent"), 1);
    cr_assert_geq(kr_it_stat(c.node[1].port, "cluster_resyncs_received"), 1);
    close(sub);
    close(pub);
    cluster_down(&c);
}

/* The same fault, told to a subscriber that opted in to resync notices: a notice naming the
 * topic, and it stays connected and subscribed. */
Test(cluster, lost_forwards_are_a_resync_notice_for_an_opted_in_subscriber)
{
    struct cluster c;
    int sub, pub;
    lost_forwards(&c, "burst __kraken__:resync", &sub, &pub);
    cr_assert(wait_notice(sub, "burst"), "the subscriber was told to resync burst");
    cr_assert_geq(kr_it_stat(c.node[1].port, "resync_notices"), 1);
    /* still subscribed and connected: a later publish arrives */
    publish(pub, "burst", "after");
    static char buf[1 << 16];
    bool seen = false;
    for (int k = 0; k < 500 && !seen; k++) {
        kr_it_sends(sub, "get messages\r\n");
        size_t n = kr_it_read_until(sub, buf, sizeof(buf), "\r\n");
        cr_assert(n > 0 && !strstr(buf, "SERVER_ERROR"), "%s", buf);
        if (strncmp(buf, "VALUE ", 6) == 0) {
            kr_it_read_until(sub, buf + n, sizeof(buf) - n, "END\r\n");
            seen = strstr(buf, "MESSAGE burst 5\r\nafter\r\n") != NULL;
        } else {
            kr_it_sleep_ms(20);
        }
    }
    cr_assert(seen, "the next message was delivered");
    close(sub);
    close(pub);
    cluster_down(&c);
}

/* RESP subscribers are nodes' subscribers like any other: a Redis client on node 1 gets a
 * memcached-protocol publish from node 0 as a push, and a RESP PUBLISH on node 1 reaches a
 * memcached-protocol subscriber on node 2. */
Test(cluster, resp_subscribers_and_publishers_across_nodes)
{
    struct cluster c;
    cluster_up(&c, 3, NULL);
    int rs = kr_it_connect(c.node[1].port);
    kr_it_sends(rs, "*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n");
    kr_it_expect(rs, "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    int mp = kr_it_connect(c.node[0].port);
    publish(mp, "news", "p0-0");
    kr_it_expect(rs, "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$4\r\np0-0\r\n");
    int ms = kr_it_connect(c.node[2].port);
    kr_it_subscribe(ms, "sports");
    int rp = kr_it_connect(c.node[1].port);
    kr_it_sends(rp, "*3\r\n$7\r\nPUBLISH\r\n$6\r\nsports\r\n$4\r\np0-1\r\n");
    char line[64];
    kr_it_read_until(rp, line, sizeof(line), "\r\n");
    cr_assert_eq(line[0], ':', "PUBLISH answers an integer: %s", line);
    static char buf[1 << 16];
    size_t len = 0;
    cr_assert_eq(kr_it_collect(ms, 1, buf, sizeof(buf), &len), 1);
    cr_assert_not_null(strstr(buf, "MESSAGE sports 4\r\np0-1\r\n"), "%s", buf);
    close(rs);
    close(mp);
    close(ms);
    close(rp);
    cluster_down(&c);
}

/* Kill the publishers' NATS server under load: their node reconnects to another server;
 * what was in the dead server or on its way to it may be lost, so the node announces the
 * topics it forwarded lately and the other node's subscribers of them are told. */
Test(cluster, publishers_nats_server_killed_other_nodes_complete_or_told)
{
    kill_server_under_load(0);
}

/* /api/server carries the link (null on a single node: test_http checks that). */
Test(cluster, api_server_shows_the_link)
{
    struct kr_it_nats nats[1];
    kr_it_nats_cluster_start(nats, 1);
    char url[64], hp[16];
    kr_it_nats_url(&nats[0], url, sizeof(url));
    uint16_t http = kr_it_free_port();
    snprintf(hp, sizeof(hp), "%u", http);
    const char *extra[] = {"--cluster_nats_url", url, "--drain_resume_window_ms", "0",
                           "--cluster_node_name", "solo",
                           "--http_port", hp, NULL};
    struct kr_it_server srv;
    kr_it_start(&srv, extra);
    int fd = kr_it_connect(http);
    kr_it_sends(fd, "GET /api/server HTTP/1.0\r\n\r\n");
    static char buf[1 << 16];
    kr_it_read_until(fd, buf, sizeof(buf), "\x01"); /* never sent: reads to EOF */
    close(fd);
    char want[128];
    snprintf(want, sizeof(want), "\"cluster\":{\"node\":\"solo\",\"linked\":true,\"server\":\"%s\"",
             url);
    const char *cl = strstr(buf, "\"cluster\":");
    cr_assert_not_null(cl, "no cluster object");
    cr_assert_not_null(strstr(cl, want), "%s", cl);
    cr_assert_not_null(strstr(cl, "\"peers\":0,"), "%s", cl);
    kr_it_stop(&srv);
    kr_it_nats_cluster_stop(nats, 1);
}

/* A remote publisher outruns this node: past cluster_max_pending entries waiting for the
 * shards, the cluster drops and the topic's subscribers here are told; none of them misses
 * an entry without being told, and memory stays bounded. */
Test(cluster, entries_outrunning_a_node_are_dropped_loudly)
{
    struct cluster c;
    const char *extra[] = {"--cluster_max_pending", "8", NULL};
    cluster_up(&c, 2, extra);
    enum { NSUB = 20 };
    int subs[NSUB];
    for (int i = 0; i < NSUB; i++) {
        subs[i] = kr_it_connect(c.node[1].port);
        kr_it_subscribe(subs[i], "flood");
    }
    int pub = kr_it_connect(c.node[0].port);
    const long N = 20000;
    static char big[1 << 21];
    size_t used = 0;
    char payload[32];
    for (long k = 0; k < N; k++) {
        char e[96];
        snprintf(payload, sizeof(payload), "p0-%ld", k);
        int el = snprintf(e, sizeof(e), "MESSAGE flood %zu\r\n%s\r\n", strlen(payload), payload);
        used += (size_t)snprintf(big + used, sizeof(big) - used, "set publish 0 0 %d\r\n%s\r\n",
                                 el, e);
    }
    kr_it_send(pub, big, used);
    for (long k = 0; k < N; k++)
        kr_it_expect(pub, "STORED\r\n");
    int told = 0;
    for (int i = 0; i < NSUB; i++) {
        struct faultcheck f = {0};
        poll_until(subs[i], N, &f);
        cr_assert_eq(f.dups, 0);
        if (f.told)
            told++;
        else
            cr_assert(f.gaps == 0 && f.next == N, "subscriber %d got %ld of %ld, untold", i,
                      f.next, N);
        close(subs[i]);
    }
    unsigned long long slow = kr_it_stat(c.node[1].port, "cluster_slow_consumers");
    /* 20000 entries at once against a limit of 8: the bound engages (without it nothing
     * is dropped and node 1's burst waits in node 2's memory) */
    cr_assert_gt(slow, 0, "the pending bound engaged");
    cr_assert_eq(told, NSUB, "every subscriber of the topic was told (%d of %d)", told, NSUB);
    cr_log_info("slow consumer events %llu, subscribers told %d of %d", slow, told, NSUB);
    close(pub);
    cluster_down(&c);
}

/* NATS servers that ask for a user and password: a node giving them links; a node giving a
 * wrong password says so and exits non-zero. */
Test(cluster, credentials)
{
    struct kr_it_nats nats[1];
    kr_it_nats_cluster_start_auth(nats, 1, "kraken", "s3cret");
    char url[64];
    kr_it_nats_url(&nats[0], url, sizeof(url));
    const char *good[] = {"--cluster_nats_url", url, "--drain_resume_window_ms", "0",
                          "--cluster_user", "kraken",
                          "--cluster_password", "s3cret", NULL};
    struct kr_it_server srv;
    kr_it_start(&srv, good);
    cr_assert_eq(kr_it_stat(srv.port, "cluster_connected"), 1);
    kr_it_stop(&srv);
    const char *bad[] = {"run", "--tcp_server_port", "0", "--cluster_nats_url", url, "--drain_resume_window_ms", "0",
                         
                         "--cluster_user", "kraken", "--cluster_password", "wrong",
                         "--admin_socket", "/tmp/kr_it_cluster_badpass.sock", NULL};
    char out[4096];
    int rc = kr_it_cli(NULL, out, sizeof(out), bad);
    cr_assert_neq(rc, 0, "exits non-zero: %s", out);
    cr_assert_not_null(strstr(out, "cannot reach any NATS server"), "%s", out);
    cr_assert_not_null(strcasestr(out, "authoriz"), "says why: %s", out);
    kr_it_nats_cluster_stop(nats, 1);
}

/* TLS to the NATS servers (cluster_tls, cluster_tls_ca_file): the link's loop reads and
 * writes the TLS records (libnats on the link's event loop); 3000 entries cross from one
 * node to another, each once and in order. The certificate (for 127.0.0.1) is made here
 * with the openssl command. */
Test(cluster, tls_entries_cross_in_order)
{
    char dir[] = "/tmp/kr_it_tls_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cert[96], key[96], cmd[512];
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
             "-addext subjectAltName=IP:127.0.0.1 -keyout %s -out %s >/dev/null 2>&1",
             key, cert);
    cr_assert_eq(system(cmd), 0, "openssl could not make a certificate");
    struct kr_it_nats nats[1];
    kr_it_nats_cluster_start_tls(nats, 1, cert, key);
    char url[64];
    snprintf(url, sizeof(url), "tls://127.0.0.1:%u", nats[0].port);
    const char *args[] = {"--cluster_nats_url", url, "--drain_resume_window_ms", "0",
                          "--cluster_tls", "1", "--cluster_tls_ca_file", cert, NULL};
    struct kr_it_server node[2];
    for (int i = 0; i < 2; i++)
        kr_it_start(&node[i], args);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(kr_it_stat(node[i].port, "cluster_connected"), 1);
        kr_it_wait_stat(node[i].port, "cluster_peers", KR_IT_EQ, 1);
    }
    int sub = kr_it_connect(node[1].port);
    kr_it_subscribe(sub, "load");
    int pub = kr_it_connect(node[0].port);
    enum { N = 3000 };
    publish_pipelined(pub, 0, N);
    for (long k = 0; k < N; k++)
        kr_it_expect(pub, "STORED\r\n");
    struct faultcheck f = {0};
    poll_until(sub, N, &f);
    cr_assert_not(f.told);
    cr_assert_eq(f.dups, 0);
    cr_assert_eq(f.gaps, 0);
    cr_assert_eq(f.next, N, "every entry arrived (%ld of %d)", f.next, N);
    close(sub);
    close(pub);
    for (int i = 0; i < 2; i++)
        kr_it_stop(&node[i]);
    kr_it_nats_cluster_stop(nats, 1);
    unlink(cert);
    unlink(key);
    rmdir(dir);
}

/* More distinct topics forwarded lately than the link tracks (65536 per window): when its
 * server dies, the node announces "every topic", and the other node tells every subscriber
 * of every topic it holds. */
Test(cluster, lost_notice_for_every_topic_past_the_tracked_window)
{
    struct cluster c;
    cluster_up(&c, 2, NULL);
    int watch = kr_it_connect(c.node[1].port);
    kr_it_subscribe(watch, "watched");
    int pub = kr_it_connect(c.node[0].port);
    enum { NTOP = 70000 };
    static char big[1 << 23];
    size_t used = 0;
    for (int k = 0; k < NTOP; k++) {
        char e[96];
        int el = snprintf(e, sizeof(e), "MESSAGE u%d 2\r\nxx\r\n", k);
        used += (size_t)snprintf(big + used, sizeof(big) - used, "set publish 0 0 %d\r\n%s\r\n",
                                 el, e);
    }
    kr_it_send(pub, big, used);
    for (int k = 0; k < NTOP; k++)
        kr_it_expect(pub, "STORED\r\n");
    kr_it_wait_stat(c.node[0].port, "cluster_msgs_out", KR_IT_GE, NTOP); /* forwarded */
    kr_it_nats_kill(&c.nats[0]);
    cr_assert(wait_told(watch, false), "the other node's subscriber was told");
    cr_assert_geq(kr_it_stat(c.node[1].port, "cluster_resyncs_received"), 1);
    cr_assert(kr_it_wait_log(&c.node[0], "forwards on more topics than are tracked"));
    close(pub);
    cluster_down(&c);
}

/* cluster_publish_ack flushed: every entry a publisher got STORED for is in its NATS
 * server's hands, so a node killed right after the last STORED loses none of them: the
 * subscriber on another node gets every one, in order, once. */
Test(cluster, flushed_acknowledgements_survive_a_killed_publisher_node)
{
    struct cluster c;
    cluster_up(&c, 2, (const char *const[]){"--cluster_publish_ack", "flushed", NULL});
    int sub = kr_it_connect(c.node[1].port);
    kr_it_subscribe(sub, "load");
    int pub = kr_it_connect(c.node[0].port);
    enum { N = 3000 };
    publish_pipelined(pub, 0, N);
    for (long k = 0; k < N; k++)
        kr_it_expect(pub, "STORED\r\n");
    node_kill(&c, 0); /* right after the last STORED */
    close(pub);
    struct faultcheck f = {0};
    poll_until(sub, N, &f);
    cr_assert_not(f.told);
    cr_assert_eq(f.dups, 0);
    cr_assert_eq(f.gaps, 0);
    cr_assert_eq(f.next, N, "every acknowledged entry arrived (%ld of %d)", f.next, N);
    cr_assert_geq(kr_it_stat(c.node[1].port, "cluster_msgs_in"), N);
    close(sub);
    unlink(c.node[0].log_path);
    cluster_down(&c);
}

/* A value other than local or flushed is refused at start, naming the key. */
Test(cluster, cluster_publish_ack_other_values_are_refused)
{
    struct kr_it_nats n[NN];
    kr_it_nats_cluster_start(n, 1);
    char url[64], out[4096];
    kr_it_nats_url(&n[0], url, sizeof(url));
    int rc = kr_it_cli(NULL, out, sizeof(out),
                       (const char *[]){"run", "--tcp_server_port", "0", "--cluster_nats_url", url, "--drain_resume_window_ms", "0",
                                        
                                        "--cluster_publish_ack", "sometimes", NULL});
    cr_assert_neq(rc, 0);
    cr_assert(strstr(out, "cluster_publish_ack must be local or flushed"), "%s", out);
    kr_it_nats_cluster_stop(n, 1);
}

/* A node that goes silent without saying it left (SIGKILL): every other node tells the
 * subscribers of the topics it forwarded lately; one that opted in gets a resync notice
 * naming them and stays. A node that leaves by its drain says so: nobody is told. */
Test(cluster, a_silent_peer_makes_its_recent_topics_resync_and_a_leaving_one_does_not)
{
    struct cluster c;
    cluster_up(&c, 3, NULL);
    int sub = kr_it_connect(c.node[1].port);
    kr_it_subscribe(sub, "from0 from2 quiet __kraken__:resync");
    int p0 = kr_it_connect(c.node[0].port), p2 = kr_it_connect(c.node[2].port);
    publish(p0, "from0", "a");
    publish(p2, "from2", "b");
    static char buf[1 << 16];
    size_t len = 0;
    cr_assert_eq(kr_it_collect(sub, 2, buf, sizeof(buf), &len), 2);
    close(p0);
    close(p2);
    /* node 2 leaves by its drain (SIGTERM): it says so */
    kr_it_stop(&c.node[2]);
    kr_it_wait_stat(c.node[1].port, "cluster_peers", KR_IT_EQ, 1);
    /* node 0 is killed: silent */
    node_kill(&c, 0);
    cr_assert(wait_notice(sub, "from0"), "the subscriber was told to resync from0");
    kr_it_wait_stat(c.node[1].port, "cluster_peer_silences", KR_IT_EQ, 1);
    /* the notice named from0 only: from2's node left by saying so, quiet saw nothing */
    int p1 = kr_it_connect(c.node[1].port);
    publish(p1, "quiet", "marker");
    len = 0;
    cr_assert_eq(kr_it_collect(sub, 1, buf, sizeof(buf), &len), 1);
    cr_assert(strstr(buf, "MESSAGE quiet 6\r\nmarker\r\n") && !strstr(buf, "from2"), "%s", buf);
    close(p1);
    close(sub);
    unlink(c.node[0].log_path);
    cluster_down(&c);
}

/* While its NATS server does not read (stopped with SIGSTOP until the node waited), a node's socket
 * and then libnats' buffer fill: the link takes no more forwards (past 1 MiB buffered),
 * the publisher's requests wait in the ring, and when the server reads again the link goes
 * on by itself: every publish is answered and every entry forwarded. An early version
 * kept waiting when the write that emptied the buffer was its own (not the socket's
 * writability), and the publisher's replies stopped for good. */
Test(cluster, forwards_wait_for_a_stalled_nats_server_and_go_on)
{
    struct cluster c;
    cluster_up(&c, 2, NULL);
    int pub = kr_it_connect(c.node[0].port);
    long before = kr_it_stat(c.node[0].port, "cluster_msgs_out");
    cr_assert_eq(kill(c.nats[0].pid, SIGSTOP), 0);
    pid_t waker = fork();
    cr_assert_geq(waker, 0);
    if (waker == 0) { /* the server reads again once the link waited (bounded: 30 s) */
        for (int i = 0; i < 300 && kr_it_stat(c.node[0].port, "cluster_write_waits") < 1; i++)
            usleep(100 * 1000);
        kill(c.nats[0].pid, SIGCONT);
        _exit(0);
    }
    enum { N = 150000, CHUNK = 15000 };
    for (long k = 0; k < N; k += CHUNK)
        publish_pipelined(pub, k, k + CHUNK);
    for (long k = 0; k < N; k++)
        kr_it_expect(pub, "STORED\r\n");
    cr_assert_eq(waitpid(waker, NULL, 0), waker);
    kr_it_wait_stat(c.node[0].port, "cluster_msgs_out", KR_IT_GE, before + N);
    cr_assert_geq(kr_it_stat(c.node[0].port, "cluster_write_waits"), 1); /* it did wait */
    cr_assert_eq(kr_it_stat(c.node[0].port, "cluster_lost_forwards"), 0);
    close(pub);
    cluster_down(&c);
}

/* A node that stops drains its NATS connection at once: the link thread's loop, which now
 * reads and writes the connection's socket, keeps writing while libnats drains (its
 * unsubscribes and its flush). When the link wrote only while the connection was in the
 * connected state, the drain's flush waited for its 3 s timeout and the log said
 * "NATS error: Timeout". */
Test(cluster, a_stopping_node_drains_its_nats_connection)
{
    struct cluster c;
    cluster_up(&c, 2, NULL);
    int sub = kr_it_connect(c.node[0].port);
    kr_it_subscribe(sub, "drained");
    close(sub);
    kill(c.node[0].pid, SIGTERM);
    int st = 0;
    cr_assert_eq(waitpid(c.node[0].pid, &st, 0), c.node[0].pid);
    c.node[0].pid = 0;
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
    static char log[1 << 16];
    FILE *f = fopen(c.node[0].log_path, "r");
    cr_assert_not_null(f);
    size_t n = fread(log, 1, sizeof(log) - 1, f);
    fclose(f);
    log[n] = 0;
    cr_assert_not_null(strstr(log, "stopped"), "%s", log);
    cr_assert_null(strstr(log, "NATS error"), "%s", log);
    unlink(c.node[0].log_path);
    cluster_down(&c);
}

/* ---------------------------------------------------------------- moving between nodes */

/* A position node 0 issued resumes on node 1: node 1 subscribes, asks node 0 for what came
 * after the position and merges it with what arrives live. Each message once, oldest
 * first, then live; nothing from before the position; no notice. */
Test(cluster, a_position_resumes_exactly_on_another_node)
{
    struct cluster c;
    const char *extra[] = {"--cluster_linger_ms", "60000", NULL};
    cluster_up(&c, 2, extra);
    int a = kr_it_connect(c.node[0].port);
    kr_it_subscribe(a, "mva mvb");
    int p0 = kr_it_connect(c.node[0].port), p1 = kr_it_connect(c.node[1].port);
    publish(p1, "mva", "m1"); /* from node 1: forwarded to node 0 */
    publish(p0, "mvb", "m2");
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 2, got, sizeof(got), tok, sizeof(tok));
    close(a);
    /* while the client is away: on both nodes, and one on a topic it does not name */
    publish(p1, "mva", "m3");
    publish(p0, "mvb", "m4");
    publish(p0, "mvc", "m5");
    kr_it_wait_stat(c.node[0].port, "messages_routed", KR_IT_GE, 5);
    int b = kr_it_connect(c.node[1].port);
    kr_it_resume_mc(b, tok, "mva mvb", "STORED\r\n");
    publish(p0, "mva", "m6"); /* live, from the old node */
    char rest[4096], tok2[600] = {0};
    kr_it_poll_position(b, 3, rest, sizeof(rest), tok2, sizeof(tok2));
    /* m3 and m4 were published on two nodes: either may come first, each once; m6 after */
    cr_assert(strcmp(rest, "MESSAGE mva 2\r\nm3\r\nMESSAGE mvb 2\r\nm4\r\nMESSAGE mva 2\r\nm6\r\n") == 0 ||
                  strcmp(rest, "MESSAGE mvb 2\r\nm4\r\nMESSAGE mva 2\r\nm3\r\nMESSAGE mva 2\r\nm6\r\n") == 0,
              "%s", rest);
    publish(p1, "mvb", "m7"); /* live, on the new node */
    kr_it_poll_position(b, 1, rest, sizeof(rest), tok2, sizeof(tok2));
    cr_assert_str_eq(rest, "MESSAGE mvb 2\r\nm7\r\n");
    cr_assert_eq(kr_it_stat(c.node[1].port, "resume_moved"), 1);
    cr_assert_eq(kr_it_stat(c.node[1].port, "cluster_resumes_asked"), 1);
    cr_assert_eq(kr_it_stat(c.node[1].port, "cluster_resume_replayed"), 2);
    cr_assert_eq(kr_it_stat(c.node[1].port, "resync_notices"), 0);
    cr_assert_eq(kr_it_stat(c.node[0].port, "cluster_resumes_served"), 1);
    close(b);
    close(p0);
    close(p1);
    cluster_down(&c);
}

/* A drained node keeps its topics' interest and history for drain_resume_window_ms and
 * answers resumes of the positions it handed out; then it exits 0. A client moving from it
 * this way reloads nothing. */
Test(cluster, a_drained_node_answers_resumes_then_exits)
{
    struct cluster c;
    const char *extra[] = {"--drain_resume_window_ms", "3000", NULL};
    cluster_up(&c, 2, extra);
    int a = kr_it_connect(c.node[0].port), p1 = kr_it_connect(c.node[1].port);
    kr_it_subscribe(a, "dra drb");
    publish(p1, "dra", "d1");
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 1, got, sizeof(got), tok, sizeof(tok));
    char out[4096];
    cr_assert_eq(kr_it_cli(&c.node[0], out, sizeof(out), (const char *[]){"drain", NULL}), 0, "%s",
                 out);
    /* nothing was queued for it: it is closed, its last poll's position is its final one */
    kr_it_expect_closed(a);
    close(a);
    /* published while the client moves: the drained node still holds the interest */
    publish(p1, "dra", "d2");
    publish(p1, "drb", "d3");
    kr_it_wait_admin_stat(&c.node[0], "messages_routed", KR_IT_GE, 3);
    int b = kr_it_connect(c.node[1].port);
    kr_it_resume_mc(b, tok, "dra drb", "STORED\r\n");
    char rest[4096], tok2[600] = {0};
    kr_it_poll_position(b, 2, rest, sizeof(rest), tok2, sizeof(tok2));
    cr_assert_str_eq(rest, "MESSAGE dra 2\r\nd2\r\nMESSAGE drb 2\r\nd3\r\n");
    cr_assert_eq(kr_it_stat(c.node[1].port, "resync_notices"), 0);
    /* the window over, it leaves by saying so: not a silent peer */
    cr_assert(kr_it_exited_0(&c.node[0]));
    c.node[0].pid = 0;
    kr_it_wait_stat(c.node[1].port, "cluster_peers", KR_IT_EQ, 0);
    cr_assert_eq(kr_it_stat(c.node[1].port, "cluster_peer_silences"), 0);
    close(b);
    close(p1);
    cluster_down(&c);
}

/* The node that issued a position was killed: nobody answers within
 * cluster_resume_timeout_ms, so every resumed topic gets a resync notice (not an error,
 * not a partial replay), and the client is live from then on. */
Test(cluster, a_resume_nobody_answers_is_a_resync_notice)
{
    struct cluster c;
    const char *extra[] = {"--cluster_resume_timeout_ms", "300", NULL};
    cluster_up(&c, 2, extra);
    int a = kr_it_connect(c.node[0].port);
    kr_it_subscribe(a, "kla klb");
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 0, got, sizeof(got), tok, sizeof(tok));
    node_kill(&c, 0);
    close(a);
    int b = kr_it_connect(c.node[1].port), p1 = kr_it_connect(c.node[1].port);
    kr_it_resume_mc(b, tok, "kla klb", "STORED\r\n");
    publish(p1, "klb", "live");
    char rest[4096], tok2[600] = {0};
    kr_it_poll_position(b, 2, rest, sizeof(rest), tok2, sizeof(tok2));
    cr_assert_str_eq(rest, "MESSAGE __kraken__:resync 7\r\nkla klb\r\nMESSAGE klb 4\r\nlive\r\n");
    cr_assert_eq(kr_it_stat(c.node[1].port, "cluster_resume_unanswered"), 1);
    close(b);
    close(p1);
    unlink(c.node[0].log_path);
    cluster_down(&c);
}

/* In a cluster, what other nodes publish on a topic reaches a node only while it holds the
 * topic's interest: a resume on the same node of a position from before the interest was
 * dropped (the linger ran out) cannot replay that topic exactly, and says so; a topic
 * still held (another subscriber kept it) replays exactly. */
Test(cluster, a_resume_across_a_dropped_interest_is_a_resync_notice)
{
    struct cluster c;
    cluster_up(&c, 2, NULL); /* cluster_linger_ms 300 */
    int a = kr_it_connect(c.node[0].port), keep = kr_it_connect(c.node[0].port);
    kr_it_subscribe(a, "gone kept");
    kr_it_subscribe(keep, "kept");
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 0, got, sizeof(got), tok, sizeof(tok));
    close(a);
    /* `gone` lost its last subscriber: its interest goes a linger later */
    kr_it_wait_stat(c.node[0].port, "cluster_subjects", KR_IT_EQ, 1);
    int p1 = kr_it_connect(c.node[1].port);
    publish(p1, "gone", "missed"); /* never reaches node 0 */
    publish(p1, "kept", "k1");
    size_t len = 0;
    cr_assert_eq(kr_it_collect(keep, 1, got, sizeof(got), &len), 1);
    int b = kr_it_connect(c.node[0].port);
    kr_it_resume_mc(b, tok, "gone kept", "STORED\r\n");
    char rest[4096], tok2[600] = {0};
    kr_it_poll_position(b, 2, rest, sizeof(rest), tok2, sizeof(tok2));
    cr_assert_str_eq(rest, "MESSAGE __kraken__:resync 4\r\ngone\r\nMESSAGE kept 2\r\nk1\r\n");
    close(b);
    close(keep);
    close(p1);
    cluster_down(&c);
}

/* A resume is untrusted input: one client resuming another node's token over and over, on
 * many topics, costs each node bounded work (every request answered, the asks served in
 * turn) and the others' traffic goes on. */
Test(cluster, resumes_of_another_nodes_token_in_a_loop_are_answered_and_bounded)
{
    struct cluster c;
    cluster_up(&c, 2, NULL);
    char topics[2048];
    size_t tl = 0;
    for (int i = 0; i < 64; i++)
        tl += (size_t)snprintf(topics + tl, sizeof(topics) - tl, "%slp%d", i ? " " : "", i);
    int a = kr_it_connect(c.node[0].port);
    kr_it_subscribe(a, topics); /* held on node 0: a resume of them is covered */
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 0, got, sizeof(got), tok, sizeof(tok));
    /* 100 resumes of those 64 topics, pipelined in one write */
    static char req[1 << 20];
    size_t used = 0;
    for (int k = 0; k < 100; k++) {
        used += (size_t)snprintf(req + used, sizeof(req) - used,
                                 "set resume 0 0 %zu\r\n%s\r\n%s\r\n", strlen(tok) + 2 + tl, tok,
                                 topics);
    }
    int b = kr_it_connect(c.node[1].port);
    kr_it_send(b, req, used);
    for (int k = 0; k < 100; k++)
        kr_it_expect(b, "STORED\r\n");
    cr_assert_eq(kr_it_stat(c.node[1].port, "cluster_resumes_asked"), 100);
    cr_assert_eq(kr_it_stat(c.node[0].port, "cluster_resumes_served"), 100);
    /* nothing was published: no notice, nothing replayed; live traffic goes on */
    int p0 = kr_it_connect(c.node[0].port);
    publish(p0, "lp0", "still");
    size_t len = 0;
    cr_assert_eq(kr_it_collect(a, 1, got, sizeof(got), &len), 1);
    cr_assert(strstr(got, "MESSAGE lp0 5\r\nstill\r\n"), "%s", got);
    len = 0;
    cr_assert_eq(kr_it_collect(b, 1, got, sizeof(got), &len), 1);
    cr_assert(strstr(got, "still"), "%s", got);
    cr_assert_eq(kr_it_stat(c.node[1].port, "resync_notices"), 0);
    close(a);
    close(b);
    close(p0);
    cluster_down(&c);
}

/* RESP: a client subscribed to __kraken__:position first (answered at once: the cluster
 * holds nothing for the node's own channels) resumes the token of a node that was killed:
 * nobody answers, so it is told to resync the topic, what was published meanwhile comes
 * after the notice, and it is live from then on. */
/* The next RESP reply on fd, past the __kraken__:position pushes before it, is `want`. A
 * position subscriber hears its position at the sweep after it subscribed (and then every
 * position_interval_ms while it moves), which may come before a later request's reply. */
static void expect_past_positions(int fd, const char *want)
{
    static const char push[] = "*3\r\n$7\r\nmessage\r\n";
    for (int skipped = 0; skipped < 100; skipped++) {
        char head[sizeof(push)];
        ssize_t n = 0;
        for (int k = 0; k < 500; k++) { /* enough bytes to tell a push from a reply */
            n = recv(fd, head, sizeof(push) - 1, MSG_PEEK);
            cr_assert_gt(n, 0, "the connection closed");
            if ((size_t)n == sizeof(push) - 1 || memcmp(head, push, (size_t)n) != 0)
                break;
            kr_it_sleep_ms(10);
        }
        if ((size_t)n != sizeof(push) - 1 || memcmp(head, push, sizeof(push) - 1) != 0)
            break;
        char ch[64], pl[1024];
        kr_it_resp_read_message(fd, ch, sizeof(ch), pl, sizeof(pl));
        cr_assert_str_eq(ch, "__kraken__:position", "only position messages come first");
    }
    kr_it_expect(fd, want);
}

Test(cluster, resp_resume_of_a_killed_nodes_token_after_position_goes_live)
{
    struct cluster c;
    cluster_up(&c, 2, NULL);
    int a = kr_it_connect(c.node[0].port);
    kr_it_subscribe(a, "rk");
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 0, got, sizeof(got), tok, sizeof(tok));
    node_kill(&c, 0);
    close(a);
    int r = kr_it_connect(c.node[1].port);
    unsigned long long barriers = kr_it_stat(c.node[1].port, "cluster_barriers");
    kr_it_resp_cmd(r, "SUBSCRIBE", "__kraken__:position", NULL);
    kr_it_expect(r, "*3\r\n$9\r\nsubscribe\r\n$19\r\n__kraken__:position\r\n:1\r\n");
    /* the node's own channel: the cluster holds nothing for it, no barrier waits for the
     * killed node */
    cr_assert_eq(kr_it_stat(c.node[1].port, "cluster_barriers"), barriers);
    kr_it_resp_cmd(r, "KRAKEN.RESUME", tok, "rk", NULL);
    int p1 = kr_it_connect(c.node[1].port);
    kr_it_wait_stat(c.node[1].port, "cluster_resumes_asked", KR_IT_EQ, 1);
    publish(p1, "rk", "v0"); /* while the resume waits: staged */
    for (int k = 0; k < 200; k++) { /* more, while it waits for the killed node */
        publish(p1, "rk2", "w");
        kr_it_sleep_ms(10);
    }
    expect_past_positions(r, "*3\r\n$9\r\nsubscribe\r\n$2\r\nrk\r\n:2\r\n"
                             "*3\r\n$9\r\nsubscribe\r\n$17\r\n__kraken__:resync\r\n:3\r\n");
    char ch[64], pl[1024];
    for (int i = 0; i < 100; i++) { /* position messages may come first */
        kr_it_resp_read_message(r, ch, sizeof(ch), pl, sizeof(pl));
        if (strcmp(ch, "__kraken__:position") != 0)
            break;
    }
    cr_assert_str_eq(ch, "__kraken__:resync");
    cr_assert_str_eq(pl, "rk");
    for (int k = 0; k < 3; k++) {
        char v[8];
        snprintf(v, sizeof(v), "v%d", k);
        if (k)
            publish(p1, "rk", v);
        for (int i = 0; i < 100; i++) {
            kr_it_resp_read_message(r, ch, sizeof(ch), pl, sizeof(pl));
            if (strcmp(ch, "__kraken__:position") != 0)
                break;
        }
        cr_assert_str_eq(ch, "rk");
        cr_assert_str_eq(pl, v);
    }
    close(r);
    close(p1);
    unlink(c.node[0].log_path);
    cluster_down(&c);
}

/* cluster_send_asap has no effect any more (the link writes what it forwards at its loop's
 * next turn): a configuration that sets it still starts, is told so, and entries cross
 * once and in order. */
Test(cluster, send_asap_is_accepted_and_entries_cross_in_order)
{
    struct cluster c;
    const char *extra[] = {"--cluster_send_asap", "1", NULL};
    cluster_up(&c, 2, extra);
    cr_assert(kr_it_wait_log(&c.node[0], "cluster_send_asap has no effect any more"));
    int sub = kr_it_connect(c.node[1].port);
    kr_it_subscribe(sub, "asap");
    int pub = kr_it_connect(c.node[0].port);
    for (int k = 0; k < 20; k++) {
        char v[8];
        snprintf(v, sizeof(v), "a%02d", k);
        publish(pub, "asap", v);
    }
    static char got[1 << 16], want[4096];
    size_t len = 0, wl = 0;
    for (int k = 0; k < 20; k++)
        wl += (size_t)snprintf(want + wl, sizeof(want) - wl, "MESSAGE asap 3\r\na%02d\r\n", k);
    cr_assert_eq(kr_it_collect(sub, 20, got, sizeof(got), &len), 20);
    cr_assert_str_eq(got, want);
    close(sub);
    close(pub);
    cluster_down(&c);
}
