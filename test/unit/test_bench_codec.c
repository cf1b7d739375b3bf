/* kraken-bench's client codecs (Kraken replies, RESP, NATS), payload stamps and stream
 * checks. Each parser is fed whole input, then the same input split at every offset as a
 * network read would split it, and must produce the same result. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "kr_bench.h"

/* ------------------------------------------------------------------ streaming harness */

/* Parse as many whole items as buf holds, describing each into out. Returns bytes used
 * or -1 on a protocol error. */
typedef ssize_t (*parse_all_fn)(const char *buf, size_t len, struct kr_bench_buf *out);

static int kr_msg_describe(void *ud, const struct kr_bench_kr_msg *m)
{
    struct kr_bench_buf *out = ud;
    kr_bench_buf_addf(out, " [%.*s|", (int)m->topics_len, m->topics);
    kr_bench_buf_add(out, m->payload, m->len);
    kr_bench_buf_adds(out, "]");
    return 0;
}

static ssize_t kr_parse_all(const char *buf, size_t len, struct kr_bench_buf *out)
{
    size_t off = 0;
    for (;;) {
        struct kr_bench_kr_reply r;
        size_t need = 0;
        ssize_t n = kr_bench_kr_parse(buf + off, len - off, &r, kr_msg_describe, out, &need);
        if (n < 0)
            return -1;
        if (n == 0) {
            if (need)
                cr_assert_gt(need, len - off, "need must exceed what is there");
            return (ssize_t)off;
        }
        kr_bench_buf_addf(out, " <%d %.*s n=%zu", (int)r.kind, (int)r.line_len, r.line, r.nmsgs);
        if (r.pos)
            kr_bench_buf_addf(out, " pos=%.*s", (int)r.pos_len, r.pos);
        kr_bench_buf_adds(out, ">\n");
        off += (size_t)n;
    }
}

static ssize_t resp_parse_all(const char *buf, size_t len, struct kr_bench_buf *out)
{
    size_t off = 0;
    for (;;) {
        struct kr_bench_resp r;
        ssize_t n = kr_bench_resp_parse(buf + off, len - off, &r);
        if (n < 0)
            return -1;
        if (n == 0)
            return (ssize_t)off;
        kr_bench_buf_addf(out, "<%c %lld", r.type, (long long)r.nitems);
        int64_t shown = r.nitems < KR_BENCH_RESP_MAX_ITEMS ? r.nitems : KR_BENCH_RESP_MAX_ITEMS;
        for (int64_t i = 0; i < shown; i++) {
            const struct kr_bench_resp_item *it = &r.item[i];
            kr_bench_buf_addf(out, " (%c %lld ", it->type, (long long)it->num);
            if (it->str)
                kr_bench_buf_add(out, it->str, it->len);
            kr_bench_buf_adds(out, ")");
        }
        kr_bench_buf_adds(out, ">\n");
        off += (size_t)n;
    }
}

static ssize_t nats_parse_all(const char *buf, size_t len, struct kr_bench_buf *out)
{
    size_t off = 0;
    for (;;) {
        struct kr_bench_nats m;
        ssize_t n = kr_bench_nats_parse(buf + off, len - off, &m);
        if (n < 0)
            return -1;
        if (n == 0)
            return (ssize_t)off;
        kr_bench_buf_addf(out, "<%d", (int)m.kind);
        if (m.kind == KR_BENCH_NATS_MSG) {
            kr_bench_buf_addf(out, " %.*s sid=%llu", (int)m.subject_len, m.subject,
                              (unsigned long long)m.sid);
            if (m.reply_to)
                kr_bench_buf_addf(out, " reply=%.*s", (int)m.reply_len, m.reply_to);
            kr_bench_buf_adds(out, " |");
            kr_bench_buf_add(out, m.payload, m.len);
            kr_bench_buf_adds(out, "|");
        } else {
            kr_bench_buf_addf(out, " %.*s", (int)m.line_len, m.line);
        }
        kr_bench_buf_adds(out, ">\n");
        off += (size_t)n;
    }
}

/* Feed `in` as one read, then split in two at every offset, then one byte at a time; every
 * way must describe the same items and use every byte. Returns the description (caller
 * frees). */
static char *feed_everywhere(parse_all_fn fn, const char *in, size_t len)
{
    struct kr_bench_buf whole = {0};
    ssize_t used = fn(in, len, &whole);
    cr_assert_eq(used, (ssize_t)len, "whole input: used %zd of %zu", used, len);
    kr_bench_buf_add(&whole, "", 1);

    for (size_t cut = 0; cut <= len; cut++) {
        struct kr_bench_buf got = {0}, pending = {0};
        /* first read: in[0..cut) */
        kr_bench_buf_add(&pending, in, cut);
        ssize_t n = fn(pending.p ? pending.p : "", pending.len, &got);
        cr_assert_geq(n, 0, "cut %zu: first part rejected", cut);
        kr_bench_buf_consume(&pending, (size_t)n);
        /* second read: the rest */
        kr_bench_buf_add(&pending, in + cut, len - cut);
        n = fn(pending.p ? pending.p : "", pending.len, &got);
        cr_assert_eq(n, (ssize_t)pending.len, "cut %zu: leftover bytes", cut);
        kr_bench_buf_add(&got, "", 1);
        cr_assert_str_eq(got.p, whole.p, "cut %zu", cut);
        kr_bench_buf_free(&got);
        kr_bench_buf_free(&pending);
    }

    struct kr_bench_buf got = {0}, pending = {0};
    for (size_t i = 0; i < len; i++) {
        kr_bench_buf_add(&pending, in + i, 1);
        ssize_t n = fn(pending.p, pending.len, &got);
        cr_assert_geq(n, 0, "byte %zu", i);
        kr_bench_buf_consume(&pending, (size_t)n);
    }
    cr_assert_eq(pending.len, 0);
    kr_bench_buf_add(&got, "", 1);
    cr_assert_str_eq(got.p, whole.p, "byte by byte");
    kr_bench_buf_free(&got);
    kr_bench_buf_free(&pending);
    return whole.p;
}

static void expect_stream(parse_all_fn fn, const char *in, size_t len, const char *want)
{
    char *got = feed_everywhere(fn, in, len);
    cr_assert_str_eq(got, want);
    free(got);
}

static void expect_bad(parse_all_fn fn, const char *in)
{
    struct kr_bench_buf out = {0};
    cr_assert_eq(fn(in, strlen(in), &out), -1, "accepted: %s", in);
    kr_bench_buf_free(&out);
}

/* ------------------------------------------------------------------ Kraken */

Test(bench_kraken, simple_replies)
{
    static const char in[] = "STORED\r\nEND\r\nNOT_FOUND\r\nERROR\r\nCLIENT_ERROR bad topic\r\n"
                             "SERVER_ERROR queue overflow\r\nVERSION 0.1.0\r\n";
    expect_stream(kr_parse_all, in, sizeof(in) - 1,
                  " <1 STORED n=0>\n"
                  " <2 END n=0>\n"
                  " <4 NOT_FOUND n=0>\n"
                  " <5 ERROR n=0>\n"
                  " <5 CLIENT_ERROR bad topic n=0>\n"
                  " <5 SERVER_ERROR queue overflow n=0>\n"
                  " <6 VERSION 0.1.0 n=0>\n");
}

Test(bench_kraken, value_from_the_protocol_document)
{
    static const char in[] = "VALUE messages 0 15\r\nMESSAGE a 2\r\nm1\r\nEND\r\n";
    expect_stream(kr_parse_all, in, sizeof(in) - 1, " [a|m1] <3 VALUE messages 0 15 n=1>\n");
}

Test(bench_kraken, value_with_many_entries_every_offset)
{
    /* entries: several topics, an empty payload, a payload holding "\r\n" and "END\r\n" */
    static const char entries[] = "MESSAGE a b 3\r\nxyz\r\n"
                                  "MESSAGE t.1 0\r\n\r\n"
                                  "MESSAGE c 7\r\nEND\r\n\r\n\r\n"
                                  "MESSAGE long.topic.name 5\r\nhello\r\n";
    char in[512];
    size_t m = sizeof(entries) - 1 - 2;
    int n = snprintf(in, sizeof(in), "STORED\r\nVALUE messages 0 %zu\r\n%sEND\r\nEND\r\n", m, entries);
    expect_stream(kr_parse_all, in, (size_t)n,
                  " <1 STORED n=0>\n"
                  " [a b|xyz] [t.1|] [c|END\r\n\r\n] [long.topic.name|hello]"
                  " <3 VALUE messages 0 91 n=4>\n"
                  " <2 END n=0>\n");
}

/* `get messages position`: the entries, then `VALUE position 0 <k>`, then END; with no
 * entries only the position. */
Test(bench_kraken, position_after_the_entries_every_offset)
{
    static const char in[] = "VALUE messages 0 15\r\nMESSAGE a 2\r\nm1\r\n"
                             "VALUE position 0 9\r\np1.AB-c~9\r\nEND\r\n"
                             "VALUE position 0 4\r\nEND.\r\nEND\r\n"
                             "VALUE messages 0 34\r\nMESSAGE __kraken__:resync 5\r\nkb.1*\r\n"
                             "VALUE position 0 2\r\nq2\r\nEND\r\n";
    expect_stream(kr_parse_all, in, sizeof(in) - 1,
                  " [a|m1] <3 VALUE messages 0 15 n=1 pos=p1.AB-c~9>\n"
                  " <3 VALUE position 0 4 n=0 pos=END.>\n"
                  " [__kraken__:resync|kb.1*] <3 VALUE messages 0 34 n=1 pos=q2>\n");
}

Test(bench_kraken, position_blocks_malformed)
{
    /* two positions; a block that is neither VALUE nor END after the first */
    expect_bad(kr_parse_all, "VALUE position 0 1\r\na\r\nVALUE position 0 1\r\nb\r\nEND\r\n");
    expect_bad(kr_parse_all, "VALUE messages 0 15\r\nMESSAGE a 2\r\nm1\r\nSTORED\r\n");
    expect_bad(kr_parse_all, "VALUE position 0 1\r\nab\r\nEND\r\n");
}

Test(bench_kraken, need_reports_the_whole_value_size)
{
    static const char in[] = "VALUE messages 0 15\r\nMESSAGE a 2\r\nm1\r\nEND\r\n";
    struct kr_bench_kr_reply r;
    size_t need = 0;
    cr_assert_eq(kr_bench_kr_parse(in, 25, &r, NULL, NULL, &need), 0);
    cr_assert_eq(need, sizeof(in) - 1);
    cr_assert_eq(kr_bench_kr_parse(in, 10, &r, NULL, NULL, &need), 0);
    cr_assert_eq(need, 0);
    cr_assert_eq(kr_bench_kr_parse(in, sizeof(in) - 1, &r, NULL, NULL, &need), (ssize_t)sizeof(in) - 1);
    cr_assert_eq(r.nmsgs, 1);
}

static int stop_cb(void *ud, const struct kr_bench_kr_msg *m)
{
    (void)m;
    int *calls = ud;
    return ++*calls == 2 ? 42 : 0;
}

Test(bench_kraken, callback_can_stop_the_parse)
{
    static const char in[] = "VALUE messages 0 32\r\nMESSAGE a 2\r\nm1\r\nMESSAGE a 2\r\nm2\r\nEND\r\n";
    struct kr_bench_kr_reply r;
    int calls = 0;
    cr_assert_eq(kr_bench_kr_parse(in, sizeof(in) - 1, &r, stop_cb, &calls, NULL), 42);
    cr_assert_eq(calls, 2);
}

Test(bench_kraken, malformed)
{
    expect_bad(kr_parse_all, "VALUE messages 0 15\r\nMESSAGE a 3\r\nm1\r\nEND\r\n");  /* length */
    expect_bad(kr_parse_all, "VALUE messages 0 15\r\nMESSAGE a 2\r\nm1\r\nEN!\r\n");  /* no END */
    expect_bad(kr_parse_all, "VALUE messages 0 15\r\nMESSAGX a 2\r\nm1\r\nEND\r\n");  /* junk */
    expect_bad(kr_parse_all, "VALUE messages 0 -1\r\n");                             /* sign */
    expect_bad(kr_parse_all, "VALUE messages 0\r\n");                                /* fields */
    expect_bad(kr_parse_all, "VALUE messages 0 15\r\nMESSAGE a x\r\nm1\r\nEND\r\n");  /* len */
    expect_bad(kr_parse_all, "VALUE messages 0 14\r\nMESSAGE a 2\r\nm1\r\nEND\r\n");  /* m */
    /* a line that never ends */
    static char junk[70000];
    memset(junk, 'x', sizeof(junk) - 1);
    expect_bad(kr_parse_all, junk);
}

Test(bench_kraken, requests_are_byte_exact)
{
    struct kr_bench_buf b = {0};
    const char *topics[] = {"a", "bb", "c.c"};
    size_t lens[] = {1, 2, 3};
    kr_bench_kr_put_topics(&b, "subscribe", topics, lens, 3);
    kr_bench_kr_put_topics(&b, "unsubscribe", topics, lens, 1);
    kr_bench_buf_add(&b, "", 1);
    cr_assert_str_eq(b.p, "set subscribe 0 0 8\r\na bb c.c\r\nset unsubscribe 0 0 1\r\na\r\n");
    kr_bench_buf_free(&b);

    /* the protocol document's example: set publish 0 0 16\r\nMESSAGE b 1\r\n1\r\n\r\n */
    cr_assert_eq(kr_bench_kr_entry_size(1, 1), 16);
    kr_bench_kr_put_publish_begin(&b, 16);
    char *p = kr_bench_kr_put_entry(&b, "b", 1, 1);
    *p = '1';
    kr_bench_kr_put_publish_end(&b);
    kr_bench_buf_add(&b, "", 1);
    cr_assert_str_eq(b.p, "set publish 0 0 16\r\nMESSAGE b 1\r\n1\r\n\r\n");
    kr_bench_buf_free(&b);

    /* two entries: n counts both, including the last entry's \r\n */
    size_t n = kr_bench_kr_entry_size(3, 100) + kr_bench_kr_entry_size(1, 0);
    kr_bench_kr_put_publish_begin(&b, n);
    size_t start = b.len;
    memset(kr_bench_kr_put_entry(&b, "t.1", 3, 100), 'z', 100);
    kr_bench_kr_put_entry(&b, "q", 1, 0);
    cr_assert_eq(b.len - start, n);
    kr_bench_kr_put_publish_end(&b);
    cr_assert_eq(memcmp(b.p + start, "MESSAGE t.1 100\r\nzzz", 20), 0);
    cr_assert_eq(memcmp(b.p + b.len - 17, "MESSAGE q 0\r\n\r\n\r\n", 17), 0);
    kr_bench_buf_free(&b);
}

/* ------------------------------------------------------------------ RESP */

Test(bench_resp, pubsub_frames_every_offset)
{
    static const char in[] = "*3\r\n$9\r\nsubscribe\r\n$4\r\nkb.1\r\n:1\r\n"
                             "*3\r\n$7\r\nmessage\r\n$4\r\nkb.1\r\n$7\r\nhi\r\nyo!\r\n"
                             ":12\r\n+OK\r\n-ERR unknown command\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n"
                             ">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$0\r\n\r\n"
                             ":-5\r\n";
    expect_stream(resp_parse_all, in, sizeof(in) - 1,
                  "<* 3 ($ 9 subscribe) ($ 4 kb.1) (: 1 )>\n"
                  "<* 3 ($ 7 message) ($ 4 kb.1) ($ 7 hi\r\nyo!)>\n"
                  "<: 1 (: 12 )>\n"
                  "<+ 1 (+ 0 OK)>\n"
                  "<- 1 (- 0 ERR unknown command)>\n"
                  "<$ 1 ($ -1 )>\n"
                  "<* -1>\n"
                  "<* 0>\n"
                  "<$ 1 ($ 0 )>\n"
                  "<> 3 ($ 7 message) ($ 1 c) ($ 0 )>\n"
                  "<: 1 (: -5 )>\n");
}

Test(bench_resp, nested_arrays_are_skipped_whole)
{
    static const char in[] = "*3\r\n*2\r\n:1\r\n$1\r\na\r\n:7\r\n*1\r\n*0\r\n:9\r\n";
    expect_stream(resp_parse_all, in, sizeof(in) - 1,
                  "<* 3 (* 2 ) (: 7 ) (* 1 )>\n"
                  "<: 1 (: 9 )>\n");
}

Test(bench_resp, more_elements_than_recorded)
{
    static const char in[] = "*10\r\n:0\r\n:1\r\n:2\r\n:3\r\n:4\r\n:5\r\n:6\r\n:7\r\n:8\r\n:9\r\n+x\r\n";
    expect_stream(resp_parse_all, in, sizeof(in) - 1,
                  "<* 10 (: 0 ) (: 1 ) (: 2 ) (: 3 ) (: 4 ) (: 5 ) (: 6 ) (: 7 )>\n"
                  "<+ 1 (+ 0 x)>\n");
}

Test(bench_resp, malformed)
{
    expect_bad(resp_parse_all, "?what\r\n");
    expect_bad(resp_parse_all, ":12a\r\n");
    expect_bad(resp_parse_all, ":\r\n");
    expect_bad(resp_parse_all, "$3\r\nabcd\r\n");
    expect_bad(resp_parse_all, "$-2\r\n");
    expect_bad(resp_parse_all, "*-2\r\n");
    expect_bad(resp_parse_all, "\r\n");
    expect_bad(resp_parse_all, "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n");
}

Test(bench_resp, commands_are_byte_exact)
{
    struct kr_bench_buf b = {0};
    const char *argv[] = {"SUBSCRIBE", "a", "bc"};
    size_t lens[] = {9, 1, 2};
    kr_bench_resp_put_command(&b, 3, argv, lens);
    memcpy(kr_bench_resp_put_publish(&b, "kb.7", 4, 3), "x\ry", 3);
    kr_bench_buf_add(&b, "", 1);
    cr_assert_str_eq(b.p, "*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$2\r\nbc\r\n"
                          "*3\r\n$7\r\nPUBLISH\r\n$4\r\nkb.7\r\n$3\r\nx\ry\r\n");
    kr_bench_buf_free(&b);
}

/* ------------------------------------------------------------------ NATS */

Test(bench_nats, operations_every_offset)
{
    static const char in[] = "INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n"
                             "PING\r\nPONG\r\n+OK\r\n"
                             "MSG kb.1 3 5\r\nhello\r\n"
                             "MSG kb.2 9 reply.to 4\r\n\r\n\r\n\r\n"
                             "msg\tkb.3\t1\t0\r\n\r\n"
                             "MSG  kb.4   2  3\r\nabc\r\n"
                             "-ERR 'Unknown Protocol Operation'\r\n";
    expect_stream(nats_parse_all, in, sizeof(in) - 1,
                  "<1 INFO {\"server_id\":\"x\",\"max_payload\":1048576}>\n"
                  "<3 PING>\n"
                  "<4 PONG>\n"
                  "<5 +OK>\n"
                  "<2 kb.1 sid=3 |hello|>\n"
                  "<2 kb.2 sid=9 reply=reply.to |\r\n\r\n|>\n"
                  "<2 kb.3 sid=1 ||>\n"
                  "<2 kb.4 sid=2 |abc|>\n"
                  "<6 -ERR 'Unknown Protocol Operation'>\n");
}

Test(bench_nats, malformed)
{
    expect_bad(nats_parse_all, "HELLO\r\n");
    expect_bad(nats_parse_all, "MSG kb.1 5\r\n");              /* too few fields */
    expect_bad(nats_parse_all, "MSG a 1 b c 5\r\nhello\r\n");  /* too many */
    expect_bad(nats_parse_all, "MSG a x 5\r\nhello\r\n");      /* sid */
    expect_bad(nats_parse_all, "MSG a 1 -5\r\nhello\r\n");     /* length */
    expect_bad(nats_parse_all, "MSG a 1 4\r\nhello\r\n");      /* payload not followed by CRLF */
    expect_bad(nats_parse_all, "PINGX\r\n");
}

Test(bench_nats, commands_are_byte_exact)
{
    struct kr_bench_buf b = {0};
    kr_bench_nats_put_sub(&b, "kb.1", 4, 17);
    memcpy(kr_bench_nats_put_pub(&b, "kb.2", 4, 2), "ok", 2);
    kr_bench_nats_put_unsub(&b, 17);
    kr_bench_buf_add(&b, "", 1);
    cr_assert_str_eq(b.p, "SUB kb.1 17\r\nPUB kb.2 2\r\nok\r\nUNSUB 17\r\n");
    kr_bench_buf_free(&b);
}

/* ------------------------------------------------------------------ payload and streams */

Test(bench_payload, round_trip_and_corruption)
{
    char p[100];
    struct kr_bench_stamp s = {.pub = 7, .topic = 123456, .seq = 99, .sent_ns = 1234567890123ull};
    struct kr_bench_stamp r;
    for (size_t size = KR_BENCH_STAMP_BYTES; size <= sizeof(p); size++) {
        kr_bench_payload_write(p, size, &s);
        cr_assert_eq(kr_bench_payload_read(p, size, &r), 0);
        cr_assert_eq(r.pub, 7);
        cr_assert_eq(r.topic, 123456);
        cr_assert_eq(r.seq, 99);
        cr_assert_eq(r.sent_ns, 1234567890123ull);
    }
    kr_bench_payload_write(p, sizeof(p), &s);
    p[60] ^= 1;
    cr_assert_eq(kr_bench_payload_read(p, sizeof(p), &r), -EINVAL);
    cr_assert_eq(kr_bench_payload_read(p, KR_BENCH_STAMP_BYTES - 1, &r), -EINVAL);
    /* another message's padding does not pass for this one */
    char q[100];
    struct kr_bench_stamp s2 = s;
    s2.seq = 100;
    kr_bench_payload_write(q, sizeof(q), &s2);
    memcpy(q + 8, &s.seq, 8);
    cr_assert_eq(kr_bench_payload_read(q, sizeof(q), &r), -EINVAL);
}

Test(bench_stream, order_duplicates_and_late_arrivals)
{
    struct kr_bench_stream st = {0};
    cr_assert_eq(kr_bench_stream_see(&st, 1), 0);
    cr_assert_eq(kr_bench_stream_see(&st, 2), 0);
    cr_assert_eq(kr_bench_stream_see(&st, 2), 1); /* duplicate */
    cr_assert_eq(kr_bench_stream_see(&st, 5), 0); /* a gap is not an order error */
    cr_assert_eq(kr_bench_stream_see(&st, 4), 2); /* late */
    cr_assert_eq(kr_bench_stream_see(&st, 4), 1); /* and then duplicated */
    cr_assert_eq(kr_bench_stream_see(&st, 1), 1);
    cr_assert_eq(kr_bench_stream_see(&st, 1000), 0);
    cr_assert_eq(kr_bench_stream_see(&st, 3), 2); /* far below the window */
    cr_assert_eq(kr_bench_stream_see(&st, 937), 2);
    cr_assert_eq(kr_bench_stream_see(&st, 937), 1);
    cr_assert_eq(st.received, 11);
    cr_assert_eq(st.dups, 4);
    cr_assert_eq(st.order, 3);
    cr_assert_eq(st.hi, 1000);
}

Test(bench_buf, growth_and_consume)
{
    struct kr_bench_buf b = {0};
    for (int i = 0; i < 1000; i++)
        kr_bench_buf_addu(&b, (uint64_t)i);
    kr_bench_buf_addf(&b, "%s-%d", "x", 5);
    cr_assert_eq(b.len, 10 + 90 * 2 + 900 * 3 + 3);
    cr_assert_eq(memcmp(b.p, "0123456789101112", 16), 0);
    kr_bench_buf_consume(&b, 10);
    cr_assert_eq(memcmp(b.p, "1011", 4), 0);
    kr_bench_buf_consume(&b, b.len + 5);
    cr_assert_eq(b.len, 0);
    kr_bench_buf_addu(&b, UINT64_MAX);
    kr_bench_buf_add(&b, "", 1);
    cr_assert_str_eq(b.p, "18446744073709551615");
    cr_assert_eq(kr_bench_digits(0), 1);
    cr_assert_eq(kr_bench_digits(9), 1);
    cr_assert_eq(kr_bench_digits(10), 2);
    cr_assert_eq(kr_bench_digits(UINT64_MAX), 20);
    kr_bench_buf_free(&b);
}

Test(bench_probe, names_round_trip_and_never_match_topics)
{
    char name[64];
    cr_assert_eq(kr_bench_probe_name(name, sizeof(name), "kb.", 0), 10);
    cr_assert_str_eq(name, "kb.probe.0");
    cr_assert_eq(kr_bench_probe_name(name, sizeof(name), "kb.", 123456), 15);
    cr_assert_str_eq(name, "kb.probe.123456");
    uint32_t sub = 7;
    cr_assert_eq(kr_bench_probe_parse(name, strlen(name), "kb.", &sub), 1);
    cr_assert_eq(sub, 123456);
    cr_assert_eq(kr_bench_probe_name(name, sizeof(name), "", UINT32_MAX), 16);
    cr_assert_eq(kr_bench_probe_parse(name, strlen(name), "", &sub), 1);
    cr_assert_eq(sub, UINT32_MAX);
    /* cut to the buffer, the full length returned */
    char small[6];
    cr_assert_eq(kr_bench_probe_name(small, sizeof(small), "kb.", 42), 11);
    cr_assert_str_eq(small, "kb.pr");
    /* topics, other prefixes and malformed numbers are not probes */
    const char *no[] = {"kb.0", "kb.17", "kb.probe.", "kb.probe", "xx.probe.1", "kb.probe.1x",
                        "kb.probe.01", "kb.probe.4294967296", "kb.probe.-1", "kb.probe.99999999999",
                        "kb.probe 1"};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        cr_assert_eq(kr_bench_probe_parse(no[i], strlen(no[i]), "kb.", &sub), 0, "%s", no[i]);
    /* only the given length counts */
    cr_assert_eq(kr_bench_probe_parse("kb.probe.12 kb.3", 11, "kb.", &sub), 1);
    cr_assert_eq(sub, 12);
}
