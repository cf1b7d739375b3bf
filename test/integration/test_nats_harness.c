/* The NATS-cluster harness of kr_itest.h, against real nats-server processes: three servers
 * routed to each other, a subscriber on the third and a publisher on the first. Once the
 * subscriber's interest has reached the first server (probes published until one arrives,
 * bounded), every later message arrives once and in order; killing the second server leaves
 * the other two routing; restarted on its ports, it rejoins the mesh and carries messages
 * again; a stopped (SIGTERM) server leaves the mesh. Fails, saying so, when nats-server is
 * not installed. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kr_itest.h"

#define SUBJECT "kr.it.harness"

static struct kr_it_nats nats[3];

static void teardown(void)
{
    kr_it_nats_cluster_stop(nats, 3);
}

/* Publish probes from pub until one reaches every subscriber in subs[] (bounded), so that
 * their interest is in force on the publisher's server. */
static void await_interest(int pub, const int *subs, int nsubs)
{
    struct kr_it_natsc_msg m;
    for (int s = 0; s < nsubs; s++) {
        int got = 0;
        for (int i = 0; i < 200 && !got; i++) {
            kr_it_natsc_pub(pub, SUBJECT, "probe", 5);
            kr_it_natsc_flush(pub);
            while (!got && kr_it_natsc_next(subs[s], 20, &m))
                got = strcmp(m.payload, "probe") == 0;
        }
        cr_assert(got, "subscriber %d: no probe arrived; interest never propagated", s);
    }
}

/* Publish `count` messages "<tag>-<i>" then "<tag>-end" on pub; every subscriber must see
 * exactly those, once each, in order (late probes are skipped), and nothing after. */
static void check_stream(int pub, const int *subs, int nsubs, const char *tag, int count)
{
    char want[64];
    for (int i = 0; i < count; i++) {
        int n = snprintf(want, sizeof(want), "%s-%d", tag, i);
        kr_it_natsc_pub(pub, SUBJECT, want, (size_t)n);
    }
    int n = snprintf(want, sizeof(want), "%s-end", tag);
    kr_it_natsc_pub(pub, SUBJECT, want, (size_t)n);
    kr_it_natsc_flush(pub);
    struct kr_it_natsc_msg m;
    for (int s = 0; s < nsubs; s++) {
        int next = 0;
        for (;;) {
            cr_assert(kr_it_natsc_next(subs[s], 5000, &m),
                      "subscriber %d: message %d of '%s' did not arrive", s, next, tag);
            cr_assert_str_eq(m.subject, SUBJECT);
            if (strcmp(m.payload, "probe") == 0)
                continue;
            if (next == count) {
                snprintf(want, sizeof(want), "%s-end", tag);
                cr_assert_str_eq(m.payload, want, "subscriber %d: after %d messages got '%s'", s,
                                 count, m.payload);
                break;
            }
            snprintf(want, sizeof(want), "%s-%d", tag, next);
            cr_assert_str_eq(m.payload, want, "subscriber %d: expected '%s', got '%s' (lost, "
                             "duplicated or out of order)", s, want, m.payload);
            next++;
        }
        /* nothing more: no duplicate arrives late */
        while (kr_it_natsc_next(subs[s], 100, &m))
            cr_assert_str_eq(m.payload, "probe", "subscriber %d: extra message '%s'", s, m.payload);
    }
}

Test(nats_harness, mesh_kill_restart, .fini = teardown)
{
    kr_it_nats_cluster_start(nats, 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_gt(nats[i].pid, 0);
        cr_assert_eq(kr_it_nats_routes(&nats[i]), 2, "server %d is not routed to both others", i);
        for (int j = 0; j < i; j++)
            cr_assert(nats[i].port != nats[j].port && nats[i].cport != nats[j].cport &&
                      nats[i].mport != nats[j].mport);
    }

    int sub = kr_it_natsc_connect(nats[2].port);
    kr_it_natsc_sub(sub, SUBJECT, 1);
    int pub = kr_it_natsc_connect(nats[0].port);
    await_interest(pub, &sub, 1);
    check_stream(pub, &sub, 1, "a", 1000);

    /* server 2 dies: 1 and 3 keep their direct route */
    pid_t dead = nats[1].pid;
    kr_it_nats_kill(&nats[1]);
    cr_assert_eq(nats[1].pid, 0);
    cr_assert_eq(kill(dead, 0), -1, "the killed server is still there");
    cr_assert(kr_it_nats_wait_routes(nats, 3, 1), "the two survivors do not show one route each");
    cr_assert_eq(kr_it_nats_routes(&nats[1]), -1, "the killed server still answers");
    check_stream(pub, &sub, 1, "b", 500);

    /* back on the same ports: it rejoins the full mesh and carries messages both ways */
    uint16_t port = nats[1].port, cport = nats[1].cport, mport = nats[1].mport;
    kr_it_nats_restart(nats, 3, 1);
    cr_assert_gt(nats[1].pid, 0);
    cr_assert(nats[1].port == port && nats[1].cport == cport && nats[1].mport == mport);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(kr_it_nats_routes(&nats[i]), 2, "server %d after the restart", i);
    int subs[2] = {sub, kr_it_natsc_connect(nats[1].port)};
    kr_it_natsc_sub(subs[1], SUBJECT, 7);
    await_interest(pub, subs, 2);
    check_stream(pub, subs, 2, "c", 500);
    /* and a publisher on the restarted server reaches the subscriber on server 3 */
    int pub2 = kr_it_natsc_connect(nats[1].port);
    await_interest(pub2, &sub, 1);
    check_stream(pub2, subs, 2, "d", 200);

    /* SIGTERM: it leaves, the other two show one route each */
    close(pub);
    kr_it_nats_stop(&nats[0]);
    cr_assert_eq(nats[0].pid, 0);
    cr_assert(kr_it_nats_wait_routes(nats, 3, 1));
    close(pub2);
    close(subs[0]);
    close(subs[1]);
}

Test(nats_harness, urls)
{
    struct kr_it_nats v[2] = {{.port = 4222}, {.port = 14222}};
    char buf[128];
    kr_it_nats_url(&v[0], buf, sizeof(buf));
    cr_assert_str_eq(buf, "nats://127.0.0.1:4222");
    kr_it_nats_urls(v, 2, buf, sizeof(buf));
    cr_assert_str_eq(buf, "nats://127.0.0.1:4222,nats://127.0.0.1:14222");
    /* nobody on the monitoring port: -1, not a hang */
    struct kr_it_nats none = {.mport = kr_it_free_port()};
    cr_assert_eq(kr_it_nats_routes(&none), -1);
}
