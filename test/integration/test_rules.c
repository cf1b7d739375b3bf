/* The rule book is the same under every protocol: what the memcached protocol refuses, every
 * RESP command refuses too (with an -ERR naming the configuration key, nothing published,
 * the connection open), and the reserved `__kraken__:` names. Also Redis's own answers where
 * its pub/sub tests look: PUBLISH/SPUBLISH count the receivers, and shard channels are a
 * namespace of their own. Raw bytes against the real server. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kr_itest.h"

static struct kr_it_server srv;
static char buf[1 << 16];

static void start(void)
{
    const char *args[] = {"--num_router_shards", "3", "--num_net_threads", "2",
                          "--max_message_bytes", "16", "--max_request_bytes", "256",
                          "--max_topic_bytes", "32", NULL};
    kr_it_start(&srv, args);
}

static void stop(void)
{
    kr_it_stop(&srv);
}

TestSuite(rules, .init = start, .fini = stop);

/* A RESP2 (s)subscribe confirmation: CONF("9\r\nsubscribe", "$1\r\na", "1"). */
#define CONF(kind, ch, n) "*3\r\n$" kind "\r\n" ch "\r\n:" n "\r\n"

/* A RESP subscriber of topic `t` and a memcached one of the same topic. */
static void subscribers(const char *t, int *rs, int *mc)
{
    char want[128];
    *rs = kr_it_connect(srv.port);
    *mc = kr_it_connect(srv.port);
    kr_it_resp_cmd(*rs, "SUBSCRIBE", t, NULL);
    snprintf(want, sizeof(want), "*3\r\n$9\r\nsubscribe\r\n$%zu\r\n%s\r\n:1\r\n", strlen(t), t);
    kr_it_expect(*rs, want);
    kr_it_subscribe(*mc, t);
}

/* Nothing arrived for the two subscribers of `t` but `marker`, published after whatever
 * was refused (per-publisher order: anything published before it would come first). */
static void only_the_marker(int pub, const char *t, int rs, int mc)
{
    char want[128];
    kr_it_resp_cmd(pub, "PUBLISH", t, "marker", NULL);
    kr_it_expect(pub, ":2\r\n");
    snprintf(want, sizeof(want), "*3\r\n$7\r\nmessage\r\n$%zu\r\n%s\r\n$6\r\nmarker\r\n", strlen(t), t);
    kr_it_expect(rs, want);
    size_t outlen = 0;
    cr_assert_eq(kr_it_collect(mc, 1, buf, sizeof(buf), &outlen), 1);
    snprintf(want, sizeof(want), "MESSAGE %s 6\r\nmarker\r\n", t);
    cr_assert_str_eq(buf, want);
}

/* Regression: a RESP publish over max_message_bytes was delivered (`:1`) while the same
 * memcached publish got SERVER_ERROR object too large. */
Test(rules, resp_publish_over_max_message_bytes_is_refused_naming_the_key)
{
    int rs, mc, pub = kr_it_connect(srv.port);
    subscribers("big", &rs, &mc);
    const char *too_big = "01234567890123456"; /* 17 bytes */
    const char *err = "-ERR message too large (max_message_bytes 16)\r\n";
    kr_it_resp_cmd(pub, "PUBLISH", "big", too_big, NULL);
    kr_it_expect(pub, err);
    kr_it_resp_cmd(pub, "SPUBLISH", "big", too_big, NULL);
    kr_it_expect(pub, err);
    kr_it_resp_cmd(pub, "KRAKEN.PUBLISH", "big", "other", too_big, NULL);
    kr_it_expect(pub, err);
    /* the connection is open and the limit is inclusive */
    kr_it_resp_cmd(pub, "PING", NULL);
    kr_it_expect(pub, "+PONG\r\n");
    only_the_marker(pub, "big", rs, mc);
    kr_it_resp_cmd(pub, "PUBLISH", "big", "0123456789abcdef", NULL);
    kr_it_expect(pub, ":2\r\n");
    /* the memcached protocol: the same limit, its own reply, then the close */
    int m = kr_it_connect(srv.port);
    kr_it_sends(m, "set publish 0 0 35\r\nMESSAGE big 17\r\n01234567890123456\r\n\r\n");
    kr_it_expect(m, "SERVER_ERROR object too large\r\n");
    kr_it_expect_closed(m);
    close(m);
    close(rs);
    close(mc);
    close(pub);
}

/* Every channel rule, for every RESP publish and subscribe command: refused, open. */
Test(rules, resp_refuses_what_the_memcached_protocol_refuses)
{
    int rs, mc, pub = kr_it_connect(srv.port);
    subscribers("ok", &rs, &mc);
    const char *long_topic = "0123456789012345678901234567890123"; /* 34 > max_topic_bytes */
    const char *bad[] = {"", "a b", "a\r\nb", long_topic};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *cmds[][2] = {{"PUBLISH", NULL}, {"SPUBLISH", NULL}, {"SUBSCRIBE", NULL},
                                 {"SSUBSCRIBE", NULL}};
        for (size_t k = 0; k < 4; k++) {
            int fd = kr_it_connect(srv.port);
            if (k < 2)
                kr_it_resp_cmd(fd, cmds[k][0], bad[i], "x", NULL);
            else
                kr_it_resp_cmd(fd, cmds[k][0], "fine", bad[i], NULL);
            kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
            cr_assert(strstr(buf, "-ERR invalid channel name") == buf &&
                          strstr(buf, "max_topic_bytes 32"),
                      "%s %zu: %s", cmds[k][0], i, buf);
            /* open, and nothing subscribed (the whole command was refused) */
            kr_it_resp_cmd(fd, "ECHO", "open", NULL);
            kr_it_expect(fd, "$4\r\nopen\r\n");
            close(fd);
        }
        kr_it_resp_cmd(pub, "KRAKEN.PUBLISH", "ok", bad[i], "x", NULL);
        kr_it_read_until(pub, buf, sizeof(buf), "\r\n");
        cr_assert(strstr(buf, "-ERR invalid channel name") == buf, "%s", buf);
    }
    /* too many topics for one request: more than a memcached request could carry (nine
     * topics of 31 bytes, 288 bytes with their separators, over max_request_bytes 256) */
    char t[9][32];
    for (int i = 0; i < 9; i++)
        snprintf(t[i], sizeof(t[i]), "topic-%025d", i);
    kr_it_resp_cmd(pub, "KRAKEN.PUBLISH", t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8],
                   "x", NULL);
    kr_it_expect(pub, "-ERR too many topics in one request (max_request_bytes 256)\r\n");
    kr_it_resp_cmd(pub, "SUBSCRIBE", t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], NULL);
    kr_it_expect(pub, "-ERR too many topics in one request (max_request_bytes 256)\r\n");
    only_the_marker(pub, "ok", rs, mc);
    /* the memcached side refuses the same topics and closes */
    int m = kr_it_connect(srv.port);
    char req[256];
    snprintf(req, sizeof(req), "set subscribe 0 0 %zu\r\n%s\r\n", strlen(long_topic), long_topic);
    kr_it_sends(m, req);
    kr_it_expect(m, "CLIENT_ERROR bad topic\r\n");
    kr_it_expect_closed(m);
    close(m);
    close(rs);
    close(mc);
    close(pub);
}

/* Names beginning with __kraken__: are the server's: publishing to one is refused, and
 * subscribing to one that is not defined; __kraken__:position and __kraken__:resync may be
 * subscribed. */
Test(rules, reserved_names)
{
    int rs, mc, pub = kr_it_connect(srv.port);
    subscribers("plain", &rs, &mc);
    const char *names[] = {"__kraken__:resync", "__kraken__:position", "__kraken__:other",
                           "__kraken__:shard:plain"};
    for (size_t i = 0; i < 4; i++) {
        kr_it_resp_cmd(pub, "PUBLISH", names[i], "x", NULL);
        kr_it_read_until(pub, buf, sizeof(buf), "\r\n");
        cr_assert(strncmp(buf, "-ERR reserved channel name", 26) == 0, "%s: %s", names[i], buf);
        kr_it_resp_cmd(pub, "KRAKEN.PUBLISH", "plain", names[i], "x", NULL);
        kr_it_read_until(pub, buf, sizeof(buf), "\r\n");
        cr_assert(strncmp(buf, "-ERR reserved channel name", 26) == 0, "%s: %s", names[i], buf);
    }
    only_the_marker(pub, "plain", rs, mc);
    int fd = kr_it_connect(srv.port);
    kr_it_resp_cmd(fd, "SUBSCRIBE", "__kraken__:other", NULL);
    kr_it_read_until(fd, buf, sizeof(buf), "\r\n");
    cr_assert(strncmp(buf, "-ERR reserved channel name", 26) == 0, "%s", buf);
    kr_it_resp_cmd(fd, "SUBSCRIBE", "__kraken__:resync", "__kraken__:position", NULL);
    kr_it_expect(fd, CONF("9\r\nsubscribe", "$17\r\n__kraken__:resync", "1")
                         CONF("9\r\nsubscribe", "$19\r\n__kraken__:position", "2"));
    close(fd);
    /* memcached: publishing to a reserved name is a bad topic (and closes) */
    int m = kr_it_connect(srv.port);
    kr_it_sends(m, "set publish 0 0 32\r\nMESSAGE __kraken__:resync 1\r\nx\r\n\r\n");
    kr_it_expect(m, "CLIENT_ERROR bad topic\r\n");
    kr_it_expect_closed(m);
    close(m);
    m = kr_it_connect(srv.port);
    kr_it_sends(m, "set subscribe 0 0 16\r\n__kraken__:other\r\n");
    kr_it_expect(m, "CLIENT_ERROR bad topic\r\n");
    kr_it_expect_closed(m);
    close(m);
    m = kr_it_connect(srv.port);
    kr_it_sends(m, "set subscribe 0 0 17\r\n__kraken__:resync\r\n");
    kr_it_expect(m, "STORED\r\n");
    close(m);
    close(rs);
    close(mc);
    close(pub);
}

/* PUBLISH answers the connections that received it: 0 with none, both protocols counted,
 * the publisher never (it does not receive its own message). */
Test(rules, publish_answers_the_receivers)
{
    int pub = kr_it_connect(srv.port);
    kr_it_resp_cmd(pub, "PUBLISH", "nobody", "x", NULL);
    kr_it_expect(pub, ":0\r\n");
    int rs, mc;
    subscribers("two", &rs, &mc);
    kr_it_resp_cmd(pub, "PUBLISH", "two", "x", NULL);
    kr_it_expect(pub, ":2\r\n");
    kr_it_resp_cmd(pub, "SPUBLISH", "two", "x", NULL); /* another namespace */
    kr_it_expect(pub, ":0\r\n");
    /* pipelined: the answers in request order */
    kr_it_sends(pub, "*3\r\n$7\r\nPUBLISH\r\n$3\r\ntwo\r\n$1\r\na\r\n"
                     "*3\r\n$7\r\nPUBLISH\r\n$6\r\nnobody\r\n$1\r\nb\r\n"
                     "*3\r\n$7\r\nPUBLISH\r\n$3\r\ntwo\r\n$1\r\nc\r\n");
    kr_it_expect(pub, ":2\r\n:0\r\n:2\r\n");
    close(rs);
    close(mc);
    close(pub);
}

/* Regression: SSUBSCRIBE chan1 received PUBLISH chan1 (as smessage), and NUMSUB /
 * SHARDNUMSUB counted both kinds. Shard channels are their own namespace, as in Redis 7. */
Test(rules, shard_channels_are_their_own_namespace)
{
    int plain = kr_it_connect(srv.port), shard = kr_it_connect(srv.port),
        pub = kr_it_connect(srv.port), q = kr_it_connect(srv.port);
    kr_it_resp_cmd(plain, "SUBSCRIBE", "chan1", NULL);
    kr_it_expect(plain, CONF("9\r\nsubscribe", "$5\r\nchan1", "1"));
    kr_it_resp_cmd(shard, "SSUBSCRIBE", "chan1", NULL);
    kr_it_expect(shard, CONF("10\r\nssubscribe", "$5\r\nchan1", "1"));
    kr_it_resp_cmd(pub, "PUBLISH", "chan1", "p", NULL);
    kr_it_expect(pub, ":1\r\n");
    kr_it_resp_cmd(pub, "SPUBLISH", "chan1", "s", NULL);
    kr_it_expect(pub, ":1\r\n");
    kr_it_expect(plain, "*3\r\n$7\r\nmessage\r\n$5\r\nchan1\r\n$1\r\np\r\n");
    kr_it_expect(shard, "*3\r\n$8\r\nsmessage\r\n$5\r\nchan1\r\n$1\r\ns\r\n");
    /* each connection got only its kind: the next thing each receives is its marker */
    kr_it_resp_cmd(pub, "PUBLISH", "chan1", "p2", NULL);
    kr_it_expect(pub, ":1\r\n");
    kr_it_expect(plain, "*3\r\n$7\r\nmessage\r\n$5\r\nchan1\r\n$2\r\np2\r\n");
    kr_it_resp_cmd(pub, "SPUBLISH", "chan1", "s2", NULL);
    kr_it_expect(pub, ":1\r\n");
    kr_it_expect(shard, "*3\r\n$8\r\nsmessage\r\n$5\r\nchan1\r\n$2\r\ns2\r\n");
    kr_it_resp_cmd(q, "PUBSUB", "NUMSUB", "chan1", NULL);
    kr_it_expect(q, "*2\r\n$5\r\nchan1\r\n:1\r\n");
    kr_it_resp_cmd(q, "PUBSUB", "SHARDNUMSUB", "chan1", NULL);
    kr_it_expect(q, "*2\r\n$5\r\nchan1\r\n:1\r\n");
    kr_it_resp_cmd(q, "PUBSUB", "CHANNELS", "chan*", NULL);
    kr_it_expect(q, "*1\r\n$5\r\nchan1\r\n");
    kr_it_resp_cmd(q, "PUBSUB", "SHARDCHANNELS", NULL);
    kr_it_expect(q, "*1\r\n$5\r\nchan1\r\n");
    kr_it_resp_cmd(shard, "SUNSUBSCRIBE", "chan1", NULL);
    kr_it_expect(shard, CONF("12\r\nsunsubscribe", "$5\r\nchan1", "0"));
    kr_it_resp_cmd(q, "PUBSUB", "SHARDNUMSUB", "chan1", NULL);
    kr_it_expect(q, "*2\r\n$5\r\nchan1\r\n:0\r\n");
    kr_it_resp_cmd(q, "PUBSUB", "NUMSUB", "chan1", NULL);
    kr_it_expect(q, "*2\r\n$5\r\nchan1\r\n:1\r\n");
    close(plain);
    close(shard);
    close(pub);
    close(q);
}
