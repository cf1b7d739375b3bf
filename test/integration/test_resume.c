/* Positions and resume on the same node (PROTOCOL.md, Continuity): `get messages position`
 * gives the position after exactly what the reply handed out; `set resume` /
 * KRAKEN.RESUME from it replays every message on the named topics after it, oldest first,
 * each once, then live; a topic the history cannot replay exactly gets a resync notice
 * instead (all of them for a token of another start); a malformed token is refused. Raw
 * bytes against the real server. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kr_itest.h"

static char buf[1 << 16];

KR_IT_FIXTURE(start_small_history, "--num_router_shards", "3", "--num_net_threads", "2",
              "--messages_stored_per_router_shard", "8", "--max_poll_reply_bytes", "40");
TestSuite(resume, .init = start_small_history, .fini = kr_it_fixture_stop);

/* The next message on `want` (position messages before it are skipped: one may come at
 * any time while the position moves); its payload must be `payload`. Returns the last
 * position token seen before it in tok (empty when none). */
static void expect_message(int fd, const char *want, const char *payload, char *tok, size_t tokcap)
{
    char ch[256], pl[1024];
    if (tok)
        tok[0] = 0;
    for (int i = 0; i < 100; i++) {
        kr_it_resp_read_message(fd, ch, sizeof(ch), pl, sizeof(pl));
        if (strcmp(ch, "__kraken__:position") == 0) {
            if (tok)
                snprintf(tok, tokcap, "%s", pl);
            continue;
        }
        cr_assert_str_eq(ch, want);
        cr_assert_str_eq(pl, payload);
        return;
    }
    cr_assert_fail("no message on %s", want);
}

/* Everything after the position, once, oldest first, then live; nothing before it. */
Test(resume, memcached_resume_replays_exactly_what_came_after_the_position)
{
    int a = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(a, "ma mb");
    kr_it_publish(pub, "ma", "m1", 2);
    kr_it_publish(pub, "mb", "m2", 2);
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 2, got, sizeof(got), tok, sizeof(tok));
    cr_assert(strstr(got, "MESSAGE ma 2\r\nm1\r\n") && strstr(got, "MESSAGE mb 2\r\nm2\r\n"), "%s", got);
    /* after the position: three more, one on a topic the client does not name */
    kr_it_publish(pub, "ma", "m3", 2);
    kr_it_publish(pub, "mb", "m4", 2);
    kr_it_publish(pub, "mc", "m5", 2);
    kr_it_wait_stat(kr_it_srv.port, "deliveries_queued", KR_IT_GE, 4);
    close(a);
    int b = kr_it_connect(kr_it_srv.port);
    kr_it_resume_mc(b, tok, "ma mb", "STORED\r\n");
    kr_it_publish(pub, "ma", "m6", 2); /* live after the resume */
    char rest[4096], tok2[600] = {0};
    kr_it_poll_position(b, 3, rest, sizeof(rest), tok2, sizeof(tok2));
    cr_assert_str_eq(rest, "MESSAGE ma 2\r\nm3\r\nMESSAGE mb 2\r\nm4\r\nMESSAGE ma 2\r\nm6\r\n");
    cr_assert_eq(kr_it_stat(kr_it_srv.port, "resume_requests"), 1);
    close(b);
    close(pub);
}

/* A reply cut by max_poll_reply_bytes (40 here: one entry per reply) gives the position
 * after its last entry: resuming from it yields the rest, each once. */
Test(resume, a_cut_reply_gives_the_position_after_its_last_entry)
{
    int a = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(a, "cut");
    for (int i = 0; i < 4; i++) { /* 28 reply bytes each: one per 40-byte reply */
        char p[16];
        snprintf(p, sizeof(p), "c%dxxxxxxxx", i);
        kr_it_publish(pub, "cut", p, 10);
    }
    kr_it_wait_stat(kr_it_srv.port, "deliveries_queued", KR_IT_GE, 4);
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 1, got, sizeof(got), tok, sizeof(tok));
    cr_assert_str_eq(got, "MESSAGE cut 10\r\nc0xxxxxxxx\r\n");
    close(a);
    int b = kr_it_connect(kr_it_srv.port);
    kr_it_resume_mc(b, tok, "cut", "STORED\r\n");
    char rest[4096], tok2[600] = {0};
    kr_it_poll_position(b, 3, rest, sizeof(rest), tok2, sizeof(tok2));
    cr_assert_str_eq(rest, "MESSAGE cut 10\r\nc1xxxxxxxx\r\nMESSAGE cut 10\r\nc2xxxxxxxx\r\n"
                           "MESSAGE cut 10\r\nc3xxxxxxxx\r\n");
    close(b);
    close(pub);
}

/* A topic whose messages after the position left the history (8 per shard here) is told to
 * resync, before the replay of the others; a quiet topic is neither told nor replayed. */
Test(resume, what_the_history_evicted_is_a_resync_notice_per_topic)
{
    int a = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(a, "ev busy quiet");
    kr_it_publish(pub, "ev", "e0", 2);
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 1, got, sizeof(got), tok, sizeof(tok));
    close(a);
    kr_it_publish(pub, "ev", "e1", 2);
    for (int i = 0; i < 90; i++) { /* about 30 per shard: e1 leaves its shard's history */
        char t[16];
        snprintf(t, sizeof(t), "busy%d", i);
        kr_it_publish(pub, t, "bb", 2);
    }
    int b = kr_it_connect(kr_it_srv.port);
    kr_it_wait_stat(kr_it_srv.port, "messages_routed", KR_IT_GE, 92);
    kr_it_resume_mc(b, tok, "ev quiet", "STORED\r\n");
    char rest[4096], tok2[600] = {0};
    kr_it_poll_position(b, 1, rest, sizeof(rest), tok2, sizeof(tok2));
    cr_assert_str_eq(rest, "MESSAGE __kraken__:resync 2\r\nev\r\n");
    close(b);
    close(pub);
}

/* A malformed token is refused; a token of an earlier start of the node makes every named
 * topic resync (not an error). */
Test(resume, bad_tokens_and_tokens_of_another_start)
{
    int fd = kr_it_connect(kr_it_srv.port);
    kr_it_resume_mc(fd, "p1.AAAA", "x", "CLIENT_ERROR bad position\r\n");
    kr_it_expect_closed(fd);
    close(fd);
    fd = kr_it_connect(kr_it_srv.port);
    kr_it_resp_cmd(fd, "KRAKEN.RESUME", "not-a-token", "x", NULL);
    kr_it_expect(fd, "-ERR bad position\r\n");
    kr_it_resp_cmd(fd, "PING", NULL);
    kr_it_expect(fd, "+PONG\r\n");
    close(fd);
    /* a token of this start, then a second server (another start) is asked to resume it */
    int a = kr_it_connect(kr_it_srv.port);
    kr_it_subscribe(a, "other");
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 0, got, sizeof(got), tok, sizeof(tok));
    close(a);
    struct kr_it_server two;
    kr_it_start(&two, (const char *const[]){"--num_router_shards", "3", NULL});
    int b = kr_it_connect(two.port);
    kr_it_resume_mc(b, tok, "other another", "STORED\r\n");
    char rest[4096], tok2[600] = {0};
    kr_it_poll_position(b, 1, rest, sizeof(rest), tok2, sizeof(tok2));
    cr_assert_str_eq(rest, "MESSAGE __kraken__:resync 13\r\nother another\r\n");
    cr_assert_eq(kr_it_stat(two.port, "resume_foreign"), 1);
    close(b);
    kr_it_stop(&two);
}

/* RESP: a subscriber of __kraken__:position gets its position after the messages pushed to
 * it; KRAKEN.RESUME from it on another connection confirms like SUBSCRIBE (and
 * __kraken__:resync), then replays what came after. */
Test(resume, resp_position_messages_and_resume)
{
    int a = kr_it_connect(kr_it_srv.port), pub = kr_it_connect(kr_it_srv.port);
    kr_it_resp_cmd(a, "SUBSCRIBE", "rp", "__kraken__:position", NULL);
    kr_it_expect(a, "*3\r\n$9\r\nsubscribe\r\n$2\r\nrp\r\n:1\r\n"
                    "*3\r\n$9\r\nsubscribe\r\n$19\r\n__kraken__:position\r\n:2\r\n");
    kr_it_resp_cmd(pub, "PUBLISH", "rp", "r1", NULL);
    kr_it_expect(pub, ":1\r\n");
    expect_message(a, "rp", "r1", NULL, 0);
    /* the position after it follows */
    char ch[64], tok[600];
    kr_it_resp_read_message(a, ch, sizeof(ch), tok, sizeof(tok));
    cr_assert_str_eq(ch, "__kraken__:position");
    close(a);
    kr_it_resp_cmd(pub, "PUBLISH", "rp", "r2", NULL);
    kr_it_read_until(pub, buf, sizeof(buf), "\r\n"); /* 1 or 0: a's close races it */
    cr_assert(strcmp(buf, ":0\r\n") == 0 || strcmp(buf, ":1\r\n") == 0, "%s", buf);
    int b = kr_it_connect(kr_it_srv.port);
    kr_it_resp_cmd(b, "KRAKEN.RESUME", tok, "rp", NULL);
    kr_it_expect(b, "*3\r\n$9\r\nsubscribe\r\n$2\r\nrp\r\n:1\r\n"
                    "*3\r\n$9\r\nsubscribe\r\n$17\r\n__kraken__:resync\r\n:2\r\n"
                    "*3\r\n$7\r\nmessage\r\n$2\r\nrp\r\n$2\r\nr2\r\n");
    kr_it_resp_cmd(pub, "PUBLISH", "rp", "r3", NULL);
    kr_it_expect(pub, ":1\r\n");
    kr_it_expect(b, "*3\r\n$7\r\nmessage\r\n$2\r\nrp\r\n$2\r\nr3\r\n");
    close(b);
    close(pub);
}

/* The drain hands each opted-in client its final position before it closes it: a RESP
 * subscriber of __kraken__:position gets one after its last message, and a memcached
 * client polling with positions gets one in its last reply. Resuming from them replays
 * nothing that was already delivered. */
Test(resume, the_drain_hands_the_final_position)
{
    int r = kr_it_connect(kr_it_srv.port), m = kr_it_connect(kr_it_srv.port),
        pub = kr_it_connect(kr_it_srv.port);
    kr_it_resp_cmd(r, "SUBSCRIBE", "dr", "__kraken__:position", NULL);
    kr_it_expect(r, "*3\r\n$9\r\nsubscribe\r\n$2\r\ndr\r\n:1\r\n"
                    "*3\r\n$9\r\nsubscribe\r\n$19\r\n__kraken__:position\r\n:2\r\n");
    kr_it_subscribe(m, "dm");
    char got[4096], tok[600] = {0};
    kr_it_poll_position(m, 0, got, sizeof(got), tok, sizeof(tok));
    kr_it_publish(pub, "dm", "d1", 2);
    int rpub = kr_it_connect(kr_it_srv.port);
    kr_it_resp_cmd(rpub, "PUBLISH", "dr", "r1", NULL);
    kr_it_expect(rpub, ":1\r\n");
    expect_message(r, "dr", "r1", NULL, 0);
    close(pub);
    close(rpub);
    char out[4096];
    cr_assert_eq(kr_it_cli(&kr_it_srv, out, sizeof(out), (const char *[]){"drain", NULL}), 0, "%s", out);
    /* RESP: whatever position messages came, the last thing before the close is one */
    static char all[1 << 16];
    size_t n = 0;
    for (int i = 0; i < 10000 && n < sizeof(all) - 1; i++) {
        ssize_t k = recv(r, all + n, sizeof(all) - 1 - n, 0);
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    all[n] = 0;
    const char *last = NULL;
    for (const char *p = all; (p = strstr(p, "$19\r\n__kraken__:position\r\n")); p++)
        last = p;
    cr_assert(last, "no position before the close: %s", all);
    const char *len_at = last + strlen("$19\r\n__kraken__:position\r\n$");
    size_t k = strtoul(len_at, NULL, 10);
    const char *tok_at = strstr(len_at, "\r\n") + 2;
    cr_assert(k > 0 && tok_at + k + 2 == all + n, "the final position is not the last frame: %s", all);
    /* memcached: its poll gets d1 and the position after it, then the close */
    kr_it_sends(m, "get messages position\r\n");
    kr_it_read_until(m, buf, sizeof(buf), "END\r\n");
    cr_assert(strstr(buf, "MESSAGE dm 2\r\nd1\r\n") && strstr(buf, "VALUE position 0 "), "%s", buf);
    kr_it_expect_closed(m);
    close(m);
    close(r);
    cr_assert(kr_it_exited_0(&kr_it_srv));
}

/* A resume replays at most resume_max_entries messages: past it the topics with the most
 * messages are told to resync instead (never replayed in part), the others replayed. */
Test(resume, a_bounded_replay_tells_the_busiest_topics_to_resync)
{
    struct kr_it_server one;
    kr_it_start(&one, (const char *const[]){"--num_router_shards", "1", "--resume_max_entries",
                                           "5", NULL});
    int a = kr_it_connect(one.port), pub = kr_it_connect(one.port);
    kr_it_subscribe(a, "ba bb bc");
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 0, got, sizeof(got), tok, sizeof(tok));
    close(a);
    for (int i = 0; i < 10; i++)
        kr_it_publish(pub, "ba", "a", 1);
    kr_it_publish(pub, "bb", "b1", 2);
    kr_it_publish(pub, "bb", "b2", 2);
    kr_it_publish(pub, "bc", "c1", 2);
    kr_it_wait_stat(one.port, "messages_routed", KR_IT_GE, 13);
    int b = kr_it_connect(one.port);
    kr_it_resume_mc(b, tok, "ba bb bc", "STORED\r\n");
    char rest[4096], tok2[600] = {0};
    kr_it_poll_position(b, 4, rest, sizeof(rest), tok2, sizeof(tok2));
    cr_assert_str_eq(rest, "MESSAGE __kraken__:resync 2\r\nba\r\nMESSAGE bb 2\r\nb1\r\n"
                           "MESSAGE bb 2\r\nb2\r\nMESSAGE bc 2\r\nc1\r\n");
    cr_assert_eq(kr_it_stat(one.port, "resume_bounded_topics"), 1);
    close(b);
    close(pub);
    kr_it_stop(&one);
}

/* At most resume_max_active resumes are in progress (here 1 on one net thread): the others
 * wait their turn and each is then served whole. */
Test(resume, resumes_past_the_active_bound_wait_their_turn)
{
    struct kr_it_server one;
    kr_it_start(&one, (const char *const[]){"--num_net_threads", "1", "--resume_max_active",
                                           "1", NULL});
    int a = kr_it_connect(one.port), pub = kr_it_connect(one.port);
    kr_it_subscribe(a, "w1 w2");
    char got[4096], tok[600] = {0};
    kr_it_poll_position(a, 0, got, sizeof(got), tok, sizeof(tok));
    close(a);
    for (int i = 0; i < 300; i++) /* something to replay: resumes take a while */
        kr_it_publish(pub, i % 2 ? "w1" : "w2", "ww", 2);
    kr_it_wait_stat(one.port, "messages_routed", KR_IT_GE, 300);
    enum { N = 40 };
    int fd[N];
    char req[1024];
    snprintf(req, sizeof(req), "set resume 0 0 %zu\r\n%s\r\nw1 w2\r\n", strlen(tok) + 2 + 5, tok);
    for (int i = 0; i < N; i++)
        fd[i] = kr_it_connect(one.port);
    for (int i = 0; i < N; i++) /* all at once */
        kr_it_sends(fd[i], req);
    for (int i = 0; i < N; i++) {
        kr_it_expect(fd[i], "STORED\r\n");
        char rest[1 << 15], t2[600] = {0};
        kr_it_poll_position(fd[i], 300, rest, sizeof(rest), t2, sizeof(t2));
        close(fd[i]);
    }
    cr_assert_eq(kr_it_stat(one.port, "resume_requests"), N);
    cr_assert_geq(kr_it_stat(one.port, "resumes_waited"), 1, "no resume waited for another");
    close(pub);
    kr_it_stop(&one);
}
