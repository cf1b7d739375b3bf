/* Unit tests of the protocol codec: request framing, publish / subscribe / retro_subscribe /
 * resume blocks and the error replies.
 *
 * Every parse in the helpers below runs over an exactly-sized heap copy of its input, so the
 * address sanitizer catches any read past what the parser was given. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_proto.h"

/* A literal with its length, embedded NULs included. */
#define S(lit) (lit), (sizeof(lit) - 1)

static const struct kr_proto_limits lim = {
    .max_request_bytes = 4096,
    .max_line_bytes = 128,
};

/* The publish rules are the caller's (the server's rule book), not the codec's; the tests
 * hand the codec this small rule set through the `check` callback of kr_proto_parse_publish. */
#define RULE_MAX_TOPIC 8    /* longest topic */
#define RULE_MAX_MESSAGE 32 /* largest payload of one entry */

static char *dup_exact(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    cr_assert_not_null(p);
    if (n)
        memcpy(p, s, n);
    return p;
}

static size_t line_end_of(const char *s, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++)
        if (s[i] == '\r' && s[i + 1] == '\n')
            return i + 2;
    return n + 1;
}

static int parse_copy(const char *s, size_t n, struct kr_request *req, size_t *consumed,
                      const char **base)
{
    char *b = dup_exact(s, n);
    int rc = kr_proto_parse(b, n, &lim, req, consumed);
    if (rc == KR_PROTO_OK && req->data) {
        cr_assert(req->data >= b && req->data + req->data_len <= b + n);
        *base = b;
    } else {
        *base = NULL;
    }
    /* keep b alive only through the caller's data checks */
    if (!*base)
        free(b);
    return rc;
}

/* ------------------------------------------------------------------ stream feeding */

struct got {
    int rc;
    size_t at, consumed;
    enum kr_req_type type;
    int noreply;
    int has_data;
    size_t data_off, data_len; /* data_off is relative to the whole stream */
};

/* Feed in[0..n) to the parser in chunks of `chunk` bytes, the way a connection keeps the
 * unparsed tail of its input; records every request and stops at the first error. */
static size_t feed(const char *in, size_t n, size_t chunk, struct got *out, size_t max)
{
    size_t have = 0, off = 0, ng = 0;
    while (have < n) {
        have = have + chunk > n ? n : have + chunk;
        while (off < have) {
            size_t avail = have - off;
            char *b = dup_exact(in + off, avail);
            struct kr_request req;
            size_t used = 12345;
            int rc = kr_proto_parse(b, avail, &lim, &req, &used);
            if (rc == KR_PROTO_NEED_MORE) {
                cr_assert(used == 0 || used > avail, "need %zu with %zu buffered", used, avail);
                free(b);
                break;
            }
            cr_assert_lt(ng, max);
            struct got *g = &out[ng++];
            memset(g, 0, sizeof(*g));
            g->rc = rc;
            g->at = off;
            g->consumed = used;
            if (rc == KR_PROTO_OK) {
                cr_assert(used > 0 && used <= avail);
                g->type = req.type;
                g->noreply = req.noreply;
                g->has_data = req.data != NULL;
                g->data_off = req.data ? (size_t)(req.data - b) + off : 0;
                g->data_len = req.data_len;
            }
            free(b);
            if (rc < 0)
                return ng;
            off += used;
        }
    }
    return ng;
}

static void assert_same_gots(const struct got *a, size_t na, const struct got *b, size_t nb,
                             size_t chunk)
{
    cr_assert_eq(na, nb, "chunk %zu: %zu results vs %zu", chunk, na, nb);
    for (size_t i = 0; i < na; i++)
        cr_assert(memcmp(&a[i], &b[i], sizeof(a[i])) == 0, "chunk %zu: result %zu differs",
                  chunk, i);
}

/* Feeding whole, in every chunk size (1 = byte by byte) gives the same results. */
static size_t feed_all_ways(const char *in, size_t n, struct got *out, size_t max)
{
    size_t ng = feed(in, n, n ? n : 1, out, max);
    struct got *tmp = calloc(max, sizeof(*tmp));
    cr_assert_not_null(tmp);
    for (size_t chunk = 1; chunk < n; chunk++) {
        size_t nt = feed(in, n, chunk, tmp, max);
        assert_same_gots(out, ng, tmp, nt, chunk);
    }
    free(tmp);
    return ng;
}

/* ------------------------------------------------------------------ valid requests */

struct valid_case {
    const char *in;
    size_t n;
    enum kr_req_type type;
    int noreply;
    size_t data_len; /* (size_t)-1: no data block */
};

#define NODATA ((size_t)-1)
#define V(lit, type, noreply, dlen) {S(lit), type, noreply, dlen}

static const struct valid_case valid_cases[] = {
    V("get messages\r\n", KR_REQ_GET_MESSAGES, 0, NODATA),
    V("quit\r\n", KR_REQ_QUIT, 0, NODATA),
    V("version\r\n", KR_REQ_VERSION, 0, NODATA),
    V("stats\r\n", KR_REQ_STATS, 0, NODATA),
    V("  get   messages  \r\n", KR_REQ_GET_MESSAGES, 0, NODATA),
    V("set subscribe 0 0 3\r\nabc\r\n", KR_REQ_SUBSCRIBE, 0, 3),
    V("set subscribe 0 0 8 noreply\r\nabc def \r\n", KR_REQ_SUBSCRIBE, 1, 8),
    V("set unsubscribe 0 0 3\r\nabc\r\n", KR_REQ_UNSUBSCRIBE, 0, 3),
    V("set unsubscribe 0 0 3 noreply\r\nabc\r\n", KR_REQ_UNSUBSCRIBE, 1, 3),
    V("set publish 0 0 16\r\nMESSAGE b 1\r\n1\r\n\r\n", KR_REQ_PUBLISH, 0, 16),
    V("set publish 0 0 16 noreply\r\nMESSAGE b 1\r\n1\r\n\r\n", KR_REQ_PUBLISH, 1, 16),
    V("set publish 0 0 0\r\n\r\n", KR_REQ_PUBLISH, 0, 0),
    V("set register 0 0 0\r\n\r\n", KR_REQ_REGISTER, 0, 0),
    V("set register 0 0 5 noreply\r\nhello\r\n", KR_REQ_REGISTER, 1, 5),
    V("set retro_subscribe 0 0 19\r\n1700000000.250\r\na b\r\n", KR_REQ_RETRO_SUBSCRIBE, 0, 19),
    V("set retro_subscribe 0 0 14 noreply\r\n1700000000\r\nab\r\n", KR_REQ_RETRO_SUBSCRIBE, 1,
      14),
    /* blocks are opaque to the framing: any bytes, "\r\n" and NUL included */
    V("set publish 0 0 20\r\nMESSAGE a 5\r\n\r\n\0\n\r\r\n\r\n", KR_REQ_PUBLISH, 0, 20),
    V("set subscribe 0 0 5\r\n\r\n\r\n\r\r\n", KR_REQ_SUBSCRIBE, 0, 5),
    /* continuity: positions and resume */
    V("get messages position\r\n", KR_REQ_GET_MESSAGES_POSITION, 0, NODATA),
    V(" get  messages   position  \r\n", KR_REQ_GET_MESSAGES_POSITION, 0, NODATA),
    V("get position\r\n", KR_REQ_GET_POSITION, 0, NODATA),
    V("get   position \r\n", KR_REQ_GET_POSITION, 0, NODATA),
    V("set resume 0 0 22\r\np1.ATkwAAAAAAAA\r\na b c\r\n", KR_REQ_RESUME, 0, 22),
    V("set resume 0 0 17 noreply\r\np1.ATkwAAAAAAAA\r\n\r\n", KR_REQ_RESUME, 1, 17),
    /* the framing does not look inside a resume block: a bad one is the block parser's */
    V("set resume 0 0 3\r\na b\r\n", KR_REQ_RESUME, 0, 3),
    V("set resume 0 0 0\r\n\r\n", KR_REQ_RESUME, 0, 0),
    /* memcached-style leniency about spaces between command-line tokens */
    V("  set  subscribe   0  0  3   noreply  \r\nabc\r\n", KR_REQ_SUBSCRIBE, 1, 3),
    /* <flags> and <exptime> are any token; <bytes> may have leading zeros */
    V("set subscribe x -1 003\r\nabc\r\n", KR_REQ_SUBSCRIBE, 0, 3),
};

static void check_valid(const struct valid_case *vc, size_t idx)
{
    struct kr_request req;
    size_t consumed = 0;
    const char *base;
    size_t le = line_end_of(vc->in, vc->n);

    /* whole */
    memset(&req, 0x5a, sizeof(req));
    int rc = parse_copy(vc->in, vc->n, &req, &consumed, &base);
    cr_assert_eq(rc, KR_PROTO_OK, "case %zu: rc %d", idx, rc);
    cr_assert_eq(consumed, vc->n, "case %zu", idx);
    cr_assert_eq(req.type, vc->type, "case %zu", idx);
    cr_assert_eq(req.noreply, vc->noreply, "case %zu", idx);
    if (vc->data_len == NODATA) {
        cr_assert_null(req.data, "case %zu", idx);
        cr_assert_eq(req.data_len, 0);
    } else {
        cr_assert_not_null(base);
        cr_assert_eq(req.data_len, vc->data_len, "case %zu", idx);
        cr_assert_eq((size_t)(req.data - base), le, "case %zu", idx);
        cr_assert(memcmp(req.data, vc->in + le, vc->data_len) == 0);
        free((void *)base);
    }

    /* every proper prefix: NEED_MORE; total reported once the line is complete */
    for (size_t k = 0; k < vc->n; k++) {
        char *b = dup_exact(vc->in, k);
        size_t used = 777;
        rc = kr_proto_parse(b, k, &lim, &req, &used);
        cr_assert_eq(rc, KR_PROTO_NEED_MORE, "case %zu split %zu: rc %d", idx, k, rc);
        size_t want = (vc->data_len != NODATA && k >= le) ? vc->n : 0;
        cr_assert_eq(used, want, "case %zu split %zu: need %zu", idx, k, used);
        free(b);
    }

    /* whole, then split at every offset as two reads, then byte by byte */
    struct got g[4];
    size_t ng = feed_all_ways(vc->in, vc->n, g, 4);
    cr_assert_eq(ng, 1);
    cr_assert_eq(g[0].rc, KR_PROTO_OK);
    cr_assert_eq(g[0].type, vc->type);
    cr_assert_eq(g[0].consumed, vc->n);
    for (size_t k = 1; k < vc->n; k++) {
        /* first read k bytes, second read the rest */
        char *b = dup_exact(vc->in, k);
        size_t used;
        cr_assert_eq(kr_proto_parse(b, k, &lim, &req, &used), KR_PROTO_NEED_MORE);
        free(b);
        b = dup_exact(vc->in, vc->n);
        cr_assert_eq(kr_proto_parse(b, vc->n, &lim, &req, &used), KR_PROTO_OK);
        cr_assert_eq(used, vc->n);
        cr_assert_eq(req.type, vc->type);
        free(b);
    }

    /* the parser never looks past its request */
    char *more = malloc(vc->n + 6);
    cr_assert_not_null(more);
    memcpy(more, vc->in, vc->n);
    memcpy(more + vc->n, "junk\n\n", 6);
    rc = kr_proto_parse(more, vc->n + 6, &lim, &req, &consumed);
    cr_assert_eq(rc, KR_PROTO_OK);
    cr_assert_eq(consumed, vc->n);
    free(more);
}

Test(parse, every_valid_request_whole_split_and_byte_by_byte)
{
    for (size_t i = 0; i < sizeof(valid_cases) / sizeof(valid_cases[0]); i++)
        check_valid(&valid_cases[i], i);
}

static void parse_ok(const char *in, size_t n, struct kr_request *req)
{
    size_t consumed;
    int rc = kr_proto_parse(in, n, &lim, req, &consumed);
    cr_assert_eq(rc, KR_PROTO_OK, "rc %d", rc);
    cr_assert_eq(consumed, n);
}

Test(parse, get_messages)
{
    struct kr_request req;
    parse_ok(S("get messages\r\n"), &req);
    cr_assert_eq(req.type, KR_REQ_GET_MESSAGES);
    cr_assert_eq(req.noreply, 0);
    cr_assert_null(req.data);
}

Test(parse, quit_version_stats)
{
    struct kr_request req;
    parse_ok(S("quit\r\n"), &req);
    cr_assert_eq(req.type, KR_REQ_QUIT);
    parse_ok(S("version\r\n"), &req);
    cr_assert_eq(req.type, KR_REQ_VERSION);
    parse_ok(S("stats\r\n"), &req);
    cr_assert_eq(req.type, KR_REQ_STATS);
}

Test(parse, set_subscribe_points_at_block)
{
    static const char in[] = "set subscribe 0 0 8\r\nabc def \r\n";
    struct kr_request req;
    parse_ok(in, sizeof(in) - 1, &req);
    cr_assert_eq(req.type, KR_REQ_SUBSCRIBE);
    cr_assert_eq(req.noreply, 0);
    cr_assert_eq(req.data, in + 21);
    cr_assert_eq(req.data_len, 8);
    cr_assert(memcmp(req.data, "abc def ", 8) == 0);
}

Test(parse, set_each_key)
{
    static const struct {
        const char *key;
        enum kr_req_type type;
    } keys[] = {
        {"subscribe", KR_REQ_SUBSCRIBE},   {"unsubscribe", KR_REQ_UNSUBSCRIBE},
        {"publish", KR_REQ_PUBLISH},       {"register", KR_REQ_REGISTER},
        {"retro_subscribe", KR_REQ_RETRO_SUBSCRIBE}, {"resume", KR_REQ_RESUME},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        for (int nr = 0; nr < 2; nr++) {
            char buf[128];
            int n = snprintf(buf, sizeof(buf), "set %s 0 0 0%s\r\n\r\n", keys[i].key,
                             nr ? " noreply" : "");
            struct kr_request req;
            parse_ok(buf, (size_t)n, &req);
            cr_assert_eq(req.type, keys[i].type, "%s", keys[i].key);
            cr_assert_eq(req.noreply, nr, "%s", keys[i].key);
            cr_assert_eq(req.data_len, 0);
            cr_assert_not_null(req.data);
        }
    }
}

Test(parse, noreply_sets_flag_only_as_sixth_token)
{
    struct kr_request req;
    parse_ok(S("set subscribe 0 0 1 noreply\r\na\r\n"), &req);
    cr_assert_eq(req.noreply, 1);
    parse_ok(S("set subscribe 0 0 1\r\na\r\n"), &req);
    cr_assert_eq(req.noreply, 0);
    size_t consumed;
    /* "noreply" in the <bytes> position is not a number */
    cr_assert_eq(kr_proto_parse(S("set subscribe 0 0 noreply 1\r\na\r\n"), &lim, &req, &consumed),
                 KR_PERR_BAD_LINE);
}

Test(parse, protocol_md_publish_byte_count_example)
{
    /* "set publish 0 0 16\r\nMESSAGE b 1\r\n1\r\n\r\n": n counts the last entry's "\r\n" */
    static const char in[] = "set publish 0 0 16\r\nMESSAGE b 1\r\n1\r\n\r\n";
    struct kr_request req;
    parse_ok(in, sizeof(in) - 1, &req);
    cr_assert_eq(req.type, KR_REQ_PUBLISH);
    cr_assert_eq(req.data_len, 16);
    cr_assert(memcmp(req.data, "MESSAGE b 1\r\n1\r\n", 16) == 0);
    size_t ne = 99;
    cr_assert_eq(kr_proto_parse_publish(req.data, req.data_len, NULL, NULL, NULL, &ne), 0);
    cr_assert_eq(ne, 1);
}

struct coll {
    size_t calls;
    size_t stop_at; /* 1-based call that returns stop_rc; 0 never */
    int stop_rc;
    struct kr_pub_entry e[16];
    /* the check callback (rules / record_check) */
    size_t checks;
    size_t check_stop_at; /* 1-based check call that returns check_rc; 0 never */
    int check_rc;
    struct kr_pub_entry ce[16]; /* what each check call saw */
};

static int collect(void *ctx, const struct kr_pub_entry *e)
{
    struct coll *c = ctx;
    cr_assert_not_null(e->payload);
    if (c->calls < 16)
        c->e[c->calls] = *e;
    c->calls++;
    if (c->stop_at && c->calls == c->stop_at)
        return c->stop_rc;
    return 0;
}

/* A check that records what it sees and applies no rule (except check_stop_at). It runs
 * during the validation pass, so never after the entry callback has started. */
static int record_check(void *ctx, const struct kr_pub_entry *e)
{
    struct coll *c = ctx;
    cr_assert_null(e->payload, "check %zu sees a payload", c->checks);
    cr_assert_eq(c->calls, 0, "check after the entry callback");
    cr_assert_eq(e->ntopics, kr_proto_count_topics(e->topics, e->topics_len));
    if (c->checks < 16)
        c->ce[c->checks] = *e;
    c->checks++;
    if (c->check_stop_at && c->checks == c->check_stop_at)
        return c->check_rc;
    return 0;
}

/* The test rule book: every topic 1..RULE_MAX_TOPIC bytes without '\r', '\n' or NUL, and
 * a payload of at most RULE_MAX_MESSAGE bytes. */
static int rules(void *ctx, const struct kr_pub_entry *e)
{
    int rc = record_check(ctx, e);
    if (rc != 0)
        return rc;
    size_t pos = 0, tl;
    const char *t;
    while (kr_proto_next_topic(e->topics, e->topics_len, &pos, &t, &tl)) {
        if (tl > RULE_MAX_TOPIC || memchr(t, '\r', tl) || memchr(t, '\n', tl) ||
            memchr(t, '\0', tl))
            return KR_PERR_BAD_TOPIC;
    }
    if (e->payload_len > RULE_MAX_MESSAGE)
        return KR_PERR_TOO_LARGE;
    return 0;
}

Test(parse, protocol_md_get_messages_reply_example_is_consistent)
{
    /* "VALUE messages 0 15\r\nMESSAGE a 2\r\nm1\r\nEND\r\n": <m> is the entries minus 2,
     * so the m + 2 bytes after the VALUE line are a well-formed entry list */
    static const char reply[] = "VALUE messages 0 15\r\nMESSAGE a 2\r\nm1\r\nEND\r\n";
    const char *entries = reply + strlen("VALUE messages 0 15\r\n");
    size_t m = 15;
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(kr_proto_parse_publish(entries, m + 2, rules, collect, &c, &ne), 0);
    cr_assert_eq(ne, 1);
    cr_assert_eq(c.calls, 1);
    cr_assert(memcmp(c.e[0].payload, "m1", 2) == 0);
    cr_assert(memcmp(entries + m + 2, "END\r\n", 5) == 0);
}

Test(parse, regression_publish_count_without_last_entry_crlf_is_bad_publish)
{
    /* <n> = 14 leaves the last entry's "\r\n" outside the block: the framing still holds,
     * the block itself is a malformed publish and nothing is published */
    static const char in[] = "set publish 0 0 14\r\nMESSAGE b 1\r\n1\r\n\r\n";
    struct kr_request req;
    size_t consumed;
    cr_assert_eq(kr_proto_parse(in, sizeof(in) - 1, &lim, &req, &consumed), KR_PROTO_OK);
    cr_assert_eq(consumed, 36);
    cr_assert_eq(req.data_len, 14);
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(kr_proto_parse_publish(req.data, req.data_len, rules, collect, &c, &ne),
                 KR_PERR_BAD_PUBLISH);
    cr_assert_eq(c.calls, 0);
    /* the right count without the request's own "\r\n" runs into the next request */
    cr_assert_eq(kr_proto_parse(S("set publish 0 0 16\r\nMESSAGE b 1\r\n1\r\nget messages\r\n"),
                                &lim, &req, &consumed),
                 KR_PERR_BAD_CHUNK);
    cr_assert_eq(consumed, 38);
}

Test(parse, retro_subscribe_request_then_block)
{
    static const char in[] = "set retro_subscribe 0 0 19\r\n1700000000.250\r\na b\r\n";
    struct kr_request req;
    parse_ok(in, sizeof(in) - 1, &req);
    cr_assert_eq(req.type, KR_REQ_RETRO_SUBSCRIBE);
    uint64_t h;
    const char *t;
    size_t tl;
    cr_assert_eq(kr_proto_parse_retro(req.data, req.data_len, &h, &t, &tl), 0);
    cr_assert_eq(h, 1700000000250000ULL);
    cr_assert_eq(tl, 3);
    cr_assert(memcmp(t, "a b", 3) == 0);
}

Test(parse, empty_buffer_needs_more)
{
    struct kr_request req;
    size_t consumed = 5;
    cr_assert_eq(kr_proto_parse("", 0, &lim, &req, &consumed), KR_PROTO_NEED_MORE);
    cr_assert_eq(consumed, 0);
}

Test(parse, need_more_reports_total_once_line_is_complete)
{
    struct kr_request req;
    size_t consumed = 5;
    cr_assert_eq(kr_proto_parse(S("set publish 0 0 16"), &lim, &req, &consumed), KR_PROTO_NEED_MORE);
    cr_assert_eq(consumed, 0);
    cr_assert_eq(kr_proto_parse(S("set publish 0 0 16\r"), &lim, &req, &consumed),
                 KR_PROTO_NEED_MORE);
    cr_assert_eq(consumed, 0);
    cr_assert_eq(kr_proto_parse(S("set publish 0 0 16\r\n"), &lim, &req, &consumed),
                 KR_PROTO_NEED_MORE);
    cr_assert_eq(consumed, 20 + 16 + 2);
    cr_assert_eq(kr_proto_parse(S("set publish 0 0 16\r\nMESSAGE b 1\r\n1\r\n\r"), &lim, &req,
                                &consumed),
                 KR_PROTO_NEED_MORE);
    cr_assert_eq(consumed, 38);
    cr_assert_eq(kr_proto_parse(S("get messages\r"), &lim, &req, &consumed), KR_PROTO_NEED_MORE);
    cr_assert_eq(consumed, 0);
}

Test(parse, pipelined_requests_parse_one_after_another)
{
    static const char in[] = "set subscribe 0 0 3\r\nabc\r\n"
                             "get messages\r\n"
                             "set publish 0 0 16 noreply\r\nMESSAGE b 1\r\n1\r\n\r\n"
                             "set register 0 0 0\r\n\r\n"
                             "version\r\n"
                             "stats\r\n"
                             "set retro_subscribe 0 0 5\r\n1\r\nab\r\n"
                             "set unsubscribe 0 0 1\r\na\r\n"
                             "quit\r\n";
    static const enum kr_req_type want[] = {
        KR_REQ_SUBSCRIBE, KR_REQ_GET_MESSAGES, KR_REQ_PUBLISH,     KR_REQ_REGISTER, KR_REQ_VERSION,
        KR_REQ_STATS,     KR_REQ_RETRO_SUBSCRIBE, KR_REQ_UNSUBSCRIBE, KR_REQ_QUIT,
    };
    const size_t nw = sizeof(want) / sizeof(want[0]);
    size_t n = sizeof(in) - 1, off = 0, i = 0;

    /* straight loop over one buffer */
    while (off < n) {
        struct kr_request req;
        size_t used;
        int rc = kr_proto_parse(in + off, n - off, &lim, &req, &used);
        cr_assert_eq(rc, KR_PROTO_OK, "request %zu: rc %d", i, rc);
        cr_assert_lt(i, nw);
        cr_assert_eq(req.type, want[i], "request %zu", i);
        cr_assert_eq(req.noreply, i == 2);
        off += used;
        i++;
    }
    cr_assert_eq(off, n);
    cr_assert_eq(i, nw);

    /* the same stream in every chunk size */
    struct got g[16];
    size_t ng = feed_all_ways(in, n, g, 16);
    cr_assert_eq(ng, nw);
    for (i = 0; i < nw; i++) {
        cr_assert_eq(g[i].rc, KR_PROTO_OK);
        cr_assert_eq(g[i].type, want[i]);
    }
    cr_assert(memcmp(in + g[2].data_off, "MESSAGE b 1\r\n1\r\n", 16) == 0);
    cr_assert_eq(g[2].data_len, 16);
}

Test(parse, all_valid_cases_pipelined_in_every_chunk_size)
{
    const size_t nc = sizeof(valid_cases) / sizeof(valid_cases[0]);
    size_t n = 0;
    for (size_t i = 0; i < nc; i++)
        n += valid_cases[i].n;
    char *in = malloc(n);
    cr_assert_not_null(in);
    size_t off = 0;
    for (size_t i = 0; i < nc; i++) {
        memcpy(in + off, valid_cases[i].in, valid_cases[i].n);
        off += valid_cases[i].n;
    }
    struct got g[64];
    size_t ng = feed_all_ways(in, n, g, 64);
    cr_assert_eq(ng, nc);
    off = 0;
    for (size_t i = 0; i < nc; i++) {
        cr_assert_eq(g[i].rc, KR_PROTO_OK);
        cr_assert_eq(g[i].at, off);
        cr_assert_eq(g[i].type, valid_cases[i].type);
        cr_assert_eq(g[i].noreply, valid_cases[i].noreply);
        off += valid_cases[i].n;
    }
    free(in);
}

Test(parse, pipeline_stops_at_first_error)
{
    static const char in[] = "get messages\r\nbogus\r\nget messages\r\n";
    struct got g[8];
    size_t ng = feed_all_ways(in, sizeof(in) - 1, g, 8);
    cr_assert_eq(ng, 2);
    cr_assert_eq(g[0].rc, KR_PROTO_OK);
    cr_assert_eq(g[1].rc, KR_PERR_UNKNOWN);
    cr_assert_eq(g[1].at, 14);
    cr_assert_eq(g[1].consumed, 7);
}

/* ------------------------------------------------------------------ request errors */

struct err_case {
    const char *in;
    size_t n;
    int rc;
    size_t consumed;
};

#define E(lit, rc, consumed) {S(lit), rc, consumed}

static const struct err_case err_cases[] = {
    /* unknown commands and get keys: "ERROR" */
    E("bogus\r\n", KR_PERR_UNKNOWN, 7),
    E("\r\n", KR_PERR_UNKNOWN, 2),
    E("   \r\n", KR_PERR_UNKNOWN, 5),
    E("GET messages\r\n", KR_PERR_UNKNOWN, 14),
    E("Set subscribe 0 0 1\r\na\r\n", KR_PERR_UNKNOWN, 21),
    E("gets messages\r\n", KR_PERR_UNKNOWN, 15),
    E("get\r\n", KR_PERR_UNKNOWN, 5),
    E("get foo\r\n", KR_PERR_UNKNOWN, 9),
    E("get Messages\r\n", KR_PERR_UNKNOWN, 14),
    E("get messagesx\r\n", KR_PERR_UNKNOWN, 15),
    E("get messages messages\r\n", KR_PERR_UNKNOWN, 23),
    E("get messages noreply\r\n", KR_PERR_UNKNOWN, 22),
    E("QUIT\r\n", KR_PERR_UNKNOWN, 6),
    E("quit now\r\n", KR_PERR_UNKNOWN, 10),
    E("version 1\r\n", KR_PERR_UNKNOWN, 11),
    E("stats items\r\n", KR_PERR_UNKNOWN, 13),
    E("stats detail on\r\n", KR_PERR_UNKNOWN, 17),
    E("get mess\rages\r\n", KR_PERR_UNKNOWN, 15),
    E("get messages\0\r\n", KR_PERR_UNKNOWN, 15),
    /* get keys of continuity: exactly "messages position" or "position" */
    E("get position messages\r\n", KR_PERR_UNKNOWN, 23),
    E("get messages position position\r\n", KR_PERR_UNKNOWN, 32),
    E("get messages messages position\r\n", KR_PERR_UNKNOWN, 32),
    E("get position position\r\n", KR_PERR_UNKNOWN, 23),
    E("get messages Position\r\n", KR_PERR_UNKNOWN, 23),
    E("get Position\r\n", KR_PERR_UNKNOWN, 14),
    E("get positions\r\n", KR_PERR_UNKNOWN, 15),
    E("get position noreply\r\n", KR_PERR_UNKNOWN, 22),
    E("get messages position noreply\r\n", KR_PERR_UNKNOWN, 31),
    E("get messages position x y\r\n", KR_PERR_UNKNOWN, 27),
    E("get messages,position\r\n", KR_PERR_UNKNOWN, 23),
    E("gets messages position\r\n", KR_PERR_UNKNOWN, 24),
    E("get foo position\r\n", KR_PERR_UNKNOWN, 18),
    E("position\r\n", KR_PERR_UNKNOWN, 10),
    E("get messages position\n", KR_PERR_BAD_LINE, 22),
    E("get position\n", KR_PERR_BAD_LINE, 13),
    /* set resume: framed like every set */
    E("set Resume 0 0 3\r\nabc\r\n", KR_PERR_UNKNOWN, 23),
    E("set resumes 0 0 3\r\nabc\r\n", KR_PERR_UNKNOWN, 24),
    E("set resume 0 0\r\n", KR_PERR_BAD_LINE, 16),
    E("set resume 0 0 3 noreply x\r\n", KR_PERR_BAD_LINE, 28),
    E("set resume 0 0 4097\r\n", KR_PERR_TOO_LARGE, 21),
    E("set resume 0 0 3\r\nabcd\r\n", KR_PERR_BAD_CHUNK, 23),
    /* unknown set key: "ERROR" only after its block and terminator arrived */
    E("set foo 0 0 3\r\nabc\r\n", KR_PERR_UNKNOWN, 20),
    E("set Subscribe 0 0 3\r\nabc\r\n", KR_PERR_UNKNOWN, 26),
    E("set messages 0 0 0\r\n\r\n", KR_PERR_UNKNOWN, 22),
    E("set foo 0 0 3 noreply\r\nabcXY", KR_PERR_UNKNOWN, 28),
    /* malformed set lines */
    E("set\r\n", KR_PERR_BAD_LINE, 5),
    E("set subscribe\r\n", KR_PERR_BAD_LINE, 15),
    E("set subscribe 0 0\r\n", KR_PERR_BAD_LINE, 19),
    E("set subscribe 0 0 3 norep\r\n", KR_PERR_BAD_LINE, 27),
    E("set subscribe 0 0 3 NOREPLY\r\n", KR_PERR_BAD_LINE, 29),
    E("set subscribe 0 0 3 noreply x\r\n", KR_PERR_BAD_LINE, 31),
    E("set subscribe 0 0 3 x noreply\r\n", KR_PERR_BAD_LINE, 31),
    E("set foo 0 0\r\n", KR_PERR_BAD_LINE, 13),
    E("set subscribe 0 0 +3\r\n", KR_PERR_BAD_LINE, 22),
    E("set subscribe 0 0 -3\r\n", KR_PERR_BAD_LINE, 22),
    E("set subscribe 0 0 3a\r\n", KR_PERR_BAD_LINE, 22),
    E("set subscribe 0 0 0x3\r\n", KR_PERR_BAD_LINE, 23),
    E("set subscribe 0 0 3.0\r\n", KR_PERR_BAD_LINE, 23),
    E("set subscribe 0 0 18446744073709551616\r\n", KR_PERR_BAD_LINE, 40),
    E("set subscribe 0 0 99999999999999999999999\r\n", KR_PERR_BAD_LINE, 43),
    /* a bare "\n" ends a malformed line at once */
    E("\n", KR_PERR_BAD_LINE, 1),
    E("get messages\n", KR_PERR_BAD_LINE, 13),
    E("get mes\nsages\r\n", KR_PERR_BAD_LINE, 8),
    E("set subscribe 0 0 3\nabc\r\n", KR_PERR_BAD_LINE, 20),
    E("get messages\n\r\n", KR_PERR_BAD_LINE, 13),
    /* <bytes> over max_request_bytes: at once, without the block */
    E("set subscribe 0 0 4097\r\n", KR_PERR_TOO_LARGE, 24),
    E("set foo 0 0 4097\r\n", KR_PERR_TOO_LARGE, 18),
    E("set publish 0 0 18446744073709551615 noreply\r\n", KR_PERR_TOO_LARGE, 46),
    /* data block not followed by "\r\n" */
    E("set subscribe 0 0 3\r\nabcd\r\n", KR_PERR_BAD_CHUNK, 26),
    E("set subscribe 0 0 3\r\nabc\n\r", KR_PERR_BAD_CHUNK, 26),
    E("set subscribe 0 0 3\r\nabc\r\r", KR_PERR_BAD_CHUNK, 26),
    E("set subscribe 0 0 3\r\nabc\n\n", KR_PERR_BAD_CHUNK, 26),
    E("set register 0 0 0\r\nXY", KR_PERR_BAD_CHUNK, 22),
    E("set publish 0 0 16\r\nMESSAGE b 1\r\n1\r\nge", KR_PERR_BAD_CHUNK, 38),
};

Test(parse, every_error_row_whole_split_and_byte_by_byte)
{
    for (size_t i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++) {
        const struct err_case *ec = &err_cases[i];
        struct kr_request req;
        size_t used = 777;
        char *b = dup_exact(ec->in, ec->n);
        int rc = kr_proto_parse(b, ec->n, &lim, &req, &used);
        free(b);
        cr_assert_eq(rc, ec->rc, "case %zu: rc %d want %d", i, rc, ec->rc);
        cr_assert_eq(used, ec->consumed, "case %zu: consumed %zu want %zu", i, used, ec->consumed);
        /* shorter prefixes only ask for more */
        for (size_t k = 0; k < ec->consumed && k < ec->n; k++) {
            b = dup_exact(ec->in, k);
            rc = kr_proto_parse(b, k, &lim, &req, &used);
            free(b);
            cr_assert_eq(rc, KR_PROTO_NEED_MORE, "case %zu split %zu: rc %d", i, k, rc);
        }
        struct got g[2];
        size_t ng = feed_all_ways(ec->in, ec->n, g, 2);
        cr_assert_eq(ng, 1, "case %zu", i);
        cr_assert_eq(g[0].rc, ec->rc, "case %zu", i);
        cr_assert_eq(g[0].consumed, ec->consumed, "case %zu", i);
    }
}

Test(parse, unknown_set_key_waits_for_block_then_errors)
{
    struct kr_request req;
    size_t consumed;
    cr_assert_eq(kr_proto_parse(S("set foo 0 0 3\r\n"), &lim, &req, &consumed), KR_PROTO_NEED_MORE);
    cr_assert_eq(consumed, 20);
    cr_assert_eq(kr_proto_parse(S("set foo 0 0 3\r\nabc\r"), &lim, &req, &consumed),
                 KR_PROTO_NEED_MORE);
    cr_assert_eq(consumed, 20);
    cr_assert_eq(kr_proto_parse(S("set foo 0 0 3\r\nabc\r\n"), &lim, &req, &consumed),
                 KR_PERR_UNKNOWN);
    cr_assert_eq(consumed, 20);
}

Test(parse, regression_bare_lf_line_is_rejected_at_once)
{
    /* a client ending lines with "\n" alone is told at once, not after max_line_bytes */
    struct kr_request req;
    size_t consumed;
    cr_assert_eq(kr_proto_parse(S("get messages\nget messages\n"), &lim, &req, &consumed),
                 KR_PERR_BAD_LINE);
    cr_assert_eq(consumed, 13);
    cr_assert_str_eq(kr_proto_error_reply(KR_PERR_BAD_LINE),
                     "CLIENT_ERROR bad command line format\r\n");
}

Test(parse, regression_stats_with_argument_is_unknown_command)
{
    /* memcached has sub-stats ("stats items"); Kraken has none */
    struct kr_request req;
    size_t consumed;
    cr_assert_eq(kr_proto_parse(S("stats items\r\n"), &lim, &req, &consumed), KR_PERR_UNKNOWN);
    cr_assert_eq(consumed, 13);
    cr_assert_eq(kr_proto_parse(S("stats \r\n"), &lim, &req, &consumed), KR_PROTO_OK);
    cr_assert_eq(req.type, KR_REQ_STATS);
    cr_assert_eq(kr_proto_parse(S("quit 0\r\n"), &lim, &req, &consumed), KR_PERR_UNKNOWN);
    cr_assert_eq(kr_proto_parse(S("version x\r\n"), &lim, &req, &consumed), KR_PERR_UNKNOWN);
}

Test(parse, regression_too_large_beats_unknown_set_key)
{
    /* never wait for a huge block only to answer "ERROR" */
    struct kr_request req;
    size_t consumed;
    cr_assert_eq(kr_proto_parse(S("set nosuchkey 0 0 100000\r\n"), &lim, &req, &consumed),
                 KR_PERR_TOO_LARGE);
    cr_assert_eq(consumed, 26);
}

Test(parse, too_large_reported_without_waiting_for_block)
{
    struct kr_request req;
    size_t consumed;
    cr_assert_eq(kr_proto_parse(S("set publish 0 0 4097\r\n"), &lim, &req, &consumed),
                 KR_PERR_TOO_LARGE);
    cr_assert_eq(consumed, 22);
    /* exactly max_request_bytes is fine: the caller is told the total */
    cr_assert_eq(kr_proto_parse(S("set publish 0 0 4096\r\n"), &lim, &req, &consumed),
                 KR_PROTO_NEED_MORE);
    cr_assert_eq(consumed, 22 + 4096 + 2);
}

Test(parse, too_large_when_total_would_overflow_size)
{
    struct kr_proto_limits big = lim;
    big.max_request_bytes = UINT64_MAX;
    struct kr_request req;
    size_t consumed;
    cr_assert_eq(kr_proto_parse(S("set publish 0 0 18446744073709551615\r\n"), &big, &req,
                                &consumed),
                 KR_PERR_TOO_LARGE);
    cr_assert_eq(consumed, 38);
}

Test(parse, wrong_field_count_checked_before_size)
{
    struct kr_request req;
    size_t consumed;
    cr_assert_eq(kr_proto_parse(S("set subscribe 0 0 99999 x\r\n"), &lim, &req, &consumed),
                 KR_PERR_BAD_LINE);
}

Test(parse, line_exactly_max_line_bytes_is_accepted)
{
    char buf[256];
    memset(buf, ' ', sizeof(buf));
    memcpy(buf, "get messages", 12);
    buf[lim.max_line_bytes - 2] = '\r';
    buf[lim.max_line_bytes - 1] = '\n';
    struct kr_request req;
    size_t consumed;
    char *b = dup_exact(buf, lim.max_line_bytes);
    cr_assert_eq(kr_proto_parse(b, lim.max_line_bytes, &lim, &req, &consumed), KR_PROTO_OK);
    cr_assert_eq(consumed, lim.max_line_bytes);
    cr_assert_eq(req.type, KR_REQ_GET_MESSAGES);
    free(b);
}

Test(parse, line_too_long_as_soon_as_max_bytes_without_terminator)
{
    char buf[256];
    memset(buf, 'x', sizeof(buf));
    struct kr_request req;
    size_t consumed = 9;
    char *b = dup_exact(buf, lim.max_line_bytes - 1);
    cr_assert_eq(kr_proto_parse(b, lim.max_line_bytes - 1, &lim, &req, &consumed),
                 KR_PROTO_NEED_MORE);
    cr_assert_eq(consumed, 0);
    free(b);
    b = dup_exact(buf, lim.max_line_bytes);
    cr_assert_eq(kr_proto_parse(b, lim.max_line_bytes, &lim, &req, &consumed),
                 KR_PERR_LINE_TOO_LONG);
    cr_assert_eq(consumed, lim.max_line_bytes);
    free(b);
    cr_assert_eq(kr_proto_parse(buf, sizeof(buf), &lim, &req, &consumed), KR_PERR_LINE_TOO_LONG);
    cr_assert_eq(consumed, lim.max_line_bytes);
}

Test(parse, line_too_long_when_terminator_lands_one_past_max)
{
    /* "\r" is the max_line_bytes-th byte, so the line with its "\r\n" is one too long */
    char buf[256];
    memset(buf, ' ', sizeof(buf));
    memcpy(buf, "get messages", 12);
    buf[lim.max_line_bytes - 1] = '\r';
    buf[lim.max_line_bytes] = '\n';
    struct kr_request req;
    size_t consumed;
    char *b = dup_exact(buf, lim.max_line_bytes + 1);
    cr_assert_eq(kr_proto_parse(b, lim.max_line_bytes + 1, &lim, &req, &consumed),
                 KR_PERR_LINE_TOO_LONG);
    cr_assert_eq(consumed, lim.max_line_bytes);
    free(b);
    /* the same over every prefix: need more until max bytes, then too long */
    for (size_t k = 0; k <= lim.max_line_bytes + 1; k++) {
        b = dup_exact(buf, k);
        int rc = kr_proto_parse(b, k, &lim, &req, &consumed);
        free(b);
        cr_assert_eq(rc, k < lim.max_line_bytes ? KR_PROTO_NEED_MORE : KR_PERR_LINE_TOO_LONG,
                     "k %zu", k);
    }
}

Test(parse, data_block_is_not_bound_by_line_limit)
{
    char buf[512];
    size_t blen = 300;
    int n = snprintf(buf, sizeof(buf), "set subscribe 0 0 %zu\r\n", blen);
    memset(buf + n, 'a', blen);
    memcpy(buf + n + blen, "\r\n", 2);
    struct kr_request req;
    parse_ok(buf, (size_t)n + blen + 2, &req);
    cr_assert_eq(req.data_len, blen);
}

Test(parse, error_replies_are_exact)
{
    cr_assert_str_eq(kr_proto_error_reply(KR_PERR_UNKNOWN), "ERROR\r\n");
    cr_assert_str_eq(kr_proto_error_reply(KR_PERR_BAD_LINE),
                     "CLIENT_ERROR bad command line format\r\n");
    cr_assert_str_eq(kr_proto_error_reply(KR_PERR_BAD_CHUNK), "CLIENT_ERROR bad data chunk\r\n");
    cr_assert_str_eq(kr_proto_error_reply(KR_PERR_BAD_FORMAT), "CLIENT_ERROR bad data chunk\r\n");
    cr_assert_str_eq(kr_proto_error_reply(KR_PERR_BAD_PUBLISH),
                     "CLIENT_ERROR bad publish block\r\n");
    cr_assert_str_eq(kr_proto_error_reply(KR_PERR_BAD_TOPIC), "CLIENT_ERROR bad topic\r\n");
    cr_assert_str_eq(kr_proto_error_reply(KR_PERR_LINE_TOO_LONG),
                     "CLIENT_ERROR line too long\r\n");
    cr_assert_str_eq(kr_proto_error_reply(KR_PERR_TOO_LARGE), "SERVER_ERROR object too large\r\n");
    cr_assert_str_eq(kr_proto_error_reply(KR_PERR_BAD_POSITION), "CLIENT_ERROR bad position\r\n");
    /* never NULL, even for codes that are not errors */
    cr_assert_str_eq(kr_proto_error_reply(0), "ERROR\r\n");
    cr_assert_str_eq(kr_proto_error_reply(-1000), "ERROR\r\n");
}

/* ------------------------------------------------------------------ topics */

static size_t collect_topics(const char *s, size_t len, const char **tok, size_t *tl, size_t max)
{
    size_t pos = 0, n = 0;
    const char *t;
    size_t l;
    while (kr_proto_next_topic(s, len, &pos, &t, &l)) {
        cr_assert_lt(n, max);
        cr_assert_gt(l, 0);
        cr_assert(t >= s && t + l <= s + len);
        cr_assert_leq(pos, len);
        tok[n] = t;
        tl[n] = l;
        n++;
    }
    cr_assert_eq(pos, len);
    return n;
}

Test(topics, next_topic_empty_and_only_spaces)
{
    const char *t = NULL;
    size_t l = 0, pos = 0;
    cr_assert_eq(kr_proto_next_topic("", 0, &pos, &t, &l), 0);
    cr_assert_eq(pos, 0);
    pos = 0;
    cr_assert_eq(kr_proto_next_topic("   ", 3, &pos, &t, &l), 0);
    cr_assert_eq(pos, 3);
    /* stays at the end */
    cr_assert_eq(kr_proto_next_topic("   ", 3, &pos, &t, &l), 0);
}

Test(topics, next_topic_skips_leading_trailing_and_double_spaces)
{
    static const char s[] = "  a  bb   ccc ";
    const char *tok[8];
    size_t tl[8];
    size_t n = collect_topics(s, sizeof(s) - 1, tok, tl, 8);
    cr_assert_eq(n, 3);
    cr_assert(tl[0] == 1 && tok[0] == s + 2);
    cr_assert(tl[1] == 2 && memcmp(tok[1], "bb", 2) == 0);
    cr_assert(tl[2] == 3 && memcmp(tok[2], "ccc", 3) == 0);
}

Test(topics, next_topic_single_and_unterminated)
{
    const char *tok[4];
    size_t tl[4];
    cr_assert_eq(collect_topics("a", 1, tok, tl, 4), 1);
    cr_assert_eq(tl[0], 1);
    /* only len bytes are looked at */
    cr_assert_eq(collect_topics("ab cd", 4, tok, tl, 4), 2);
    cr_assert_eq(tl[1], 1);
    cr_assert_eq(tok[1][0], 'c');
}

Test(topics, next_topic_does_not_validate)
{
    const char *tok[4];
    size_t tl[4];
    cr_assert_eq(collect_topics(S("a\rb c\n\0"), tok, tl, 4), 2);
    cr_assert_eq(tl[0], 3);
    cr_assert_eq(tl[1], 3);
}

Test(topics, count_topics_counts)
{
    cr_assert_eq(kr_proto_count_topics("", 0), 0);
    cr_assert_eq(kr_proto_count_topics(S("   ")), 0);
    cr_assert_eq(kr_proto_count_topics(S("a")), 1);
    cr_assert_eq(kr_proto_count_topics(S("a b c")), 3);
    cr_assert_eq(kr_proto_count_topics(S("a  b")), 2);
    cr_assert_eq(kr_proto_count_topics(S(" a b ")), 2);
    cr_assert_eq(kr_proto_count_topics(S("a\tb \xc3\xa9 \x01")), 3);
    /* only len bytes are looked at */
    cr_assert_eq(kr_proto_count_topics("ab cd", 4), 2);
    cr_assert_eq(kr_proto_count_topics("ab cd", 2), 1);
}

Test(topics, regression_trailing_space_from_client_is_not_an_empty_topic)
{
    /* one existing client always ends its topic list with a space */
    cr_assert_eq(kr_proto_count_topics(S("task:1 list:2 ")), 2);
}

Test(topics, count_topics_does_not_validate)
{
    /* the topic rules (length, forbidden bytes) are the rule book's, not the codec's */
    cr_assert_eq(kr_proto_count_topics(S("a\rb")), 1);
    cr_assert_eq(kr_proto_count_topics(S("a\nb")), 1);
    cr_assert_eq(kr_proto_count_topics(S("a\0b")), 1);
    cr_assert_eq(kr_proto_count_topics(S("\r")), 1);
    cr_assert_eq(kr_proto_count_topics(S("\0")), 1);
    cr_assert_eq(kr_proto_count_topics(S("ok \n")), 2);
    cr_assert_eq(kr_proto_count_topics(S("a b\r\n")), 2);
    cr_assert_eq(kr_proto_count_topics(S("123456789")), 1);
    cr_assert_eq(kr_proto_count_topics(S("a 123456789 b")), 3);
    char big[2000];
    memset(big, 'x', sizeof(big));
    cr_assert_eq(kr_proto_count_topics(big, sizeof(big)), 1);
    big[1000] = ' ';
    cr_assert_eq(kr_proto_count_topics(big, sizeof(big)), 2);
}

Test(topics, count_topics_agrees_with_next_topic)
{
    static const struct {
        const char *s;
        size_t n;
    } cases[] = {
        {S("")},       {S(" ")},          {S("a")},         {S("  a  bb   ccc ")},
        {S("a\rb c")}, {S("\0 \0 \0")},   {S("x  ")},       {S("   y")},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *tok[8];
        size_t tl[8];
        size_t n = collect_topics(cases[i].s, cases[i].n, tok, tl, 8);
        cr_assert_eq(kr_proto_count_topics(cases[i].s, cases[i].n), n, "case %zu", i);
    }
    /* many topics */
    char buf[3 * 1000];
    for (size_t i = 0; i < 1000; i++)
        memcpy(buf + 3 * i, "t  ", 3);
    cr_assert_eq(kr_proto_count_topics(buf, sizeof(buf)), 1000);
}

/* ------------------------------------------------------------------ publish blocks */

/* The entry as the check sees it and as the callback sees it: the same but for the payload. */
static void assert_same_line(const struct kr_pub_entry *a, const struct kr_pub_entry *b, size_t i)
{
    cr_assert_eq(a->topics, b->topics, "entry %zu", i);
    cr_assert_eq(a->topics_len, b->topics_len, "entry %zu", i);
    cr_assert_eq(a->ntopics, b->ntopics, "entry %zu", i);
    cr_assert_eq(a->payload_len, b->payload_len, "entry %zu", i);
}

/* Parse s[0..n) with the test rules as the check: validate-only, then with the entry
 * callback; and again without the rules (record_check, then check = NULL). Asserts how the
 * runs relate; returns the result with the rules. */
static int parse_pub(const char *s, size_t n, struct coll *c, size_t *ne)
{
    cr_assert(c->stop_at == 0 && c->check_stop_at == 0);
    char *b = dup_exact(s, n);
    size_t ne_validate = 1234;
    struct coll v = {0};
    int rc_validate = kr_proto_parse_publish(b, n, rules, NULL, &v, &ne_validate);
    int rc = kr_proto_parse_publish(b, n, rules, collect, c, ne);
    cr_assert_eq(rc, rc_validate, "validate-only %d vs %d", rc_validate, rc);
    cr_assert_eq(c->checks, v.checks);
    for (size_t i = 0; i < c->checks && i < 16; i++)
        assert_same_line(&c->ce[i], &v.ce[i], i);

    /* without the rules only the framing can fail */
    struct coll raw = {0};
    size_t ne_raw = 1234, ne_null = 1234;
    int rc_raw = kr_proto_parse_publish(b, n, record_check, collect, &raw, &ne_raw);
    int rc_null = kr_proto_parse_publish(b, n, NULL, NULL, NULL, &ne_null);
    cr_assert(rc_raw == 0 || rc_raw == KR_PERR_BAD_PUBLISH, "rc without rules %d", rc_raw);
    cr_assert_eq(rc_null, rc_raw);
    cr_assert_eq(ne_null, ne_raw);
    /* the rules see the same entries, in the same order, up to where they stop */
    cr_assert_geq(raw.checks, c->checks);
    for (size_t i = 0; i < c->checks && i < 16; i++)
        assert_same_line(&c->ce[i], &raw.ce[i], i);

    if (rc == 0) {
        cr_assert_eq(rc_raw, 0);
        cr_assert_eq(*ne, ne_validate);
        cr_assert_eq(*ne, ne_raw);
        cr_assert_eq(c->calls, *ne);
        cr_assert_eq(c->checks, *ne); /* one check per entry */
        cr_assert_eq(raw.calls, *ne);
        cr_assert_eq(raw.checks, *ne);
        /* entries point into the block, in order, without overlap */
        const char *prev = b;
        for (size_t i = 0; i < c->calls && i < 16; i++) {
            const struct kr_pub_entry *e = &c->e[i];
            cr_assert(e->topics >= prev && e->topics + e->topics_len <= e->payload);
            cr_assert(e->payload + e->payload_len <= b + n);
            cr_assert_eq(e->ntopics, kr_proto_count_topics(e->topics, e->topics_len));
            assert_same_line(e, &raw.e[i], i); /* the same without the rules */
            cr_assert_eq(e->payload, raw.e[i].payload, "entry %zu", i);
            assert_same_line(&c->ce[i], e, i);
            prev = e->payload + e->payload_len;
            /* rebase the pointers onto the caller's string */
            c->e[i].topics = s + (e->topics - b);
            c->e[i].payload = s + (e->payload - b);
        }
    } else {
        cr_assert_eq(ne_validate, 0);
        cr_assert_eq(*ne, 0);
        cr_assert_eq(c->calls, 0);
        if (rc == KR_PERR_BAD_PUBLISH) { /* a framing fault: the same without the rules */
            cr_assert_eq(rc_raw, KR_PERR_BAD_PUBLISH);
            cr_assert_eq(raw.checks, c->checks);
        } else { /* a rule refused the last entry checked */
            cr_assert(rc == KR_PERR_BAD_TOPIC || rc == KR_PERR_TOO_LARGE, "rc %d", rc);
            cr_assert_gt(c->checks, 0);
        }
    }
    for (size_t i = 0; i < c->checks && i < 16; i++)
        c->ce[i].topics = s + (c->ce[i].topics - b);
    free(b);
    return rc;
}

static void assert_entry(const struct kr_pub_entry *e, const char *topics, uint32_t ntopics,
                         const char *payload, size_t plen)
{
    cr_assert_eq(e->topics_len, strlen(topics), "topics len %zu", e->topics_len);
    cr_assert(memcmp(e->topics, topics, e->topics_len) == 0);
    cr_assert_eq(e->ntopics, ntopics);
    cr_assert_eq(e->payload_len, plen);
    cr_assert(memcmp(e->payload, payload, plen) == 0);
}

Test(publish, empty_block_is_valid_and_publishes_nothing)
{
    struct coll c = {0};
    size_t ne = 99;
    cr_assert_eq(parse_pub("", 0, &c, &ne), 0);
    cr_assert_eq(ne, 0);
    cr_assert_eq(c.calls, 0);
}

Test(publish, single_entry)
{
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(parse_pub(S("MESSAGE b 1\r\n1\r\n"), &c, &ne), 0);
    cr_assert_eq(ne, 1);
    assert_entry(&c.e[0], "b", 1, "1", 1);
}

Test(publish, several_entries_in_order)
{
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(parse_pub(S("MESSAGE a b 5\r\nhello\r\n"
                             "MESSAGE c 3\r\nfoo\r\n"
                             "MESSAGE a c d e 2\r\nhi\r\n"),
                           &c, &ne),
                 0);
    cr_assert_eq(ne, 3);
    assert_entry(&c.e[0], "a b", 2, "hello", 5);
    assert_entry(&c.e[1], "c", 1, "foo", 3);
    assert_entry(&c.e[2], "a c d e", 4, "hi", 2);
}

Test(publish, binary_payload_with_crlf_and_nul)
{
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(parse_pub(S("MESSAGE a 6\r\n\r\n\0\r\n\xff\r\n"
                             "MESSAGE b 2\r\n\r\n\r\n"),
                           &c, &ne),
                 0);
    cr_assert_eq(ne, 2);
    assert_entry(&c.e[0], "a", 1, "\r\n\0\r\n\xff", 6);
    assert_entry(&c.e[1], "b", 1, "\r\n", 2);
}

Test(publish, payload_that_looks_like_an_entry)
{
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(parse_pub(S("MESSAGE a 16\r\nMESSAGE b 1\r\nx\r\n\r\n"), &c, &ne), 0);
    cr_assert_eq(ne, 1);
    assert_entry(&c.e[0], "a", 1, "MESSAGE b 1\r\nx\r\n", 16);
}

Test(publish, zero_length_payload)
{
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(parse_pub(S("MESSAGE a 0\r\n\r\nMESSAGE b 0\r\n\r\n"), &c, &ne), 0);
    cr_assert_eq(ne, 2);
    assert_entry(&c.e[0], "a", 1, "", 0);
    assert_entry(&c.e[1], "b", 1, "", 0);
}

Test(publish, entry_with_zero_topics_is_valid)
{
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(parse_pub(S("MESSAGE 5\r\nhello\r\n"), &c, &ne), 0);
    cr_assert_eq(ne, 1);
    assert_entry(&c.e[0], "", 0, "hello", 5);
    c = (struct coll){0};
    cr_assert_eq(parse_pub(S("MESSAGE  5\r\nhello\r\n"), &c, &ne), 0);
    cr_assert_eq(c.e[0].ntopics, 0);
}

Test(publish, trailing_and_double_spaces_in_topics_are_ignored)
{
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(parse_pub(S("MESSAGE  a  b  5\r\nhello\r\n"), &c, &ne), 0);
    cr_assert_eq(ne, 1);
    assert_entry(&c.e[0], " a  b ", 2, "hello", 5);
    const char *tok[4];
    size_t tl[4];
    cr_assert_eq(collect_topics(c.e[0].topics, c.e[0].topics_len, tok, tl, 4), 2);
    cr_assert(tl[0] == 1 && tok[0][0] == 'a');
    cr_assert(tl[1] == 1 && tok[1][0] == 'b');
}

Test(publish, spaces_after_length_are_ignored)
{
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(parse_pub(S("MESSAGE a 5  \r\nhello\r\n"), &c, &ne), 0);
    assert_entry(&c.e[0], "a", 1, "hello", 5);
}

Test(publish, limits_are_inclusive)
{
    /* the test rules: a topic of exactly RULE_MAX_TOPIC (8) bytes, a payload of exactly
     * RULE_MAX_MESSAGE (32) */
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(parse_pub(S("MESSAGE 12345678 32\r\n0123456789abcdef0123456789abcdef\r\n"), &c,
                           &ne),
                 0);
    assert_entry(&c.e[0], "12345678", 1, "0123456789abcdef0123456789abcdef", 32);
}

Test(publish, entry_line_bounded_by_block_only)
{
    /* an entry line far longer than max_line_bytes */
    char buf[1024];
    size_t n = 0;
    memcpy(buf, "MESSAGE ", 8);
    n = 8;
    for (int i = 0; i < 100; i++) {
        memcpy(buf + n, "topic_x ", 8);
        n += 8;
    }
    memcpy(buf + n, "2\r\nok\r\n", 7);
    n += 7;
    cr_assert_gt(n, lim.max_line_bytes);
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(parse_pub(buf, n, &c, &ne), 0);
    cr_assert_eq(c.e[0].ntopics, 100);
}

Test(publish, callback_may_stop)
{
    static const char blk[] = "MESSAGE a 1\r\nx\r\nMESSAGE b 1\r\ny\r\nMESSAGE c 1\r\nz\r\n";
    struct coll c = {.stop_at = 2, .stop_rc = 7};
    size_t ne = 0;
    cr_assert_eq(kr_proto_parse_publish(blk, sizeof(blk) - 1, rules, collect, &c, &ne), 7);
    cr_assert_eq(c.calls, 2);
    cr_assert_eq(c.checks, 3); /* the whole block was checked first */
    cr_assert_eq(ne, 2);
    c = (struct coll){.stop_at = 1, .stop_rc = -42};
    cr_assert_eq(kr_proto_parse_publish(blk, sizeof(blk) - 1, rules, collect, &c, &ne), -42);
    cr_assert_eq(c.calls, 1);
    c = (struct coll){.stop_at = 3, .stop_rc = 1};
    cr_assert_eq(kr_proto_parse_publish(blk, sizeof(blk) - 1, NULL, collect, &c, &ne), 1);
    cr_assert_eq(c.calls, 3);
    cr_assert_eq(ne, 3);
}

Test(publish, null_callback_and_null_count_validate_only)
{
    static const char blk[] = "MESSAGE a 1\r\nx\r\n";
    cr_assert_eq(kr_proto_parse_publish(blk, sizeof(blk) - 1, NULL, NULL, NULL, NULL), 0);
    cr_assert_eq(kr_proto_parse_publish(S("junk"), NULL, NULL, NULL, NULL), KR_PERR_BAD_PUBLISH);
    struct coll c = {0};
    cr_assert_eq(kr_proto_parse_publish(blk, sizeof(blk) - 1, rules, NULL, &c, NULL), 0);
    cr_assert_eq(c.checks, 1);
    cr_assert_eq(c.calls, 0);
    c = (struct coll){0};
    cr_assert_eq(kr_proto_parse_publish(S("MESSAGE a 33\r\n0123456789abcdef0123456789abcdef!\r\n"),
                                        rules, NULL, &c, NULL),
                 KR_PERR_TOO_LARGE);
}

struct bad_pub {
    const char *in;
    size_t n;
    int rc;        /* with the test rules as the check */
    size_t checks; /* calls of the check before the parse stopped */
    int rc_nocheck; /* with check = NULL */
};

/* a framing fault, the same with or without the check */
#define BP(lit, checks) {S(lit), KR_PERR_BAD_PUBLISH, checks, KR_PERR_BAD_PUBLISH}
/* refused by the check */
#define BR(lit, rc, checks, rc_nocheck) {S(lit), rc, checks, rc_nocheck}

static const struct bad_pub bad_pubs[] = {
    /* no entry line could be read: the check is never called */
    BP("X", 0),
    BP("\r\n", 0),
    BP("MESSAGE", 0),
    BP("MESSAGE\r\n\r\n", 0),
    BP("MESSAGE \r\n\r\n", 0),   /* missing length */
    BP("MESSAGE a\r\n\r\n", 0),  /* "a" is no length */
    BP("MESSAGE a \r\n\r\n", 0), /* missing length after a topic */
    BP("message a 1\r\nx\r\n", 0),
    BP(" MESSAGE a 1\r\nx\r\n", 0),
    BP("MESSAGEa 1\r\nx\r\n", 0),
    BP("MESSAGE a +1\r\nx\r\n", 0),
    BP("MESSAGE a -1\r\nx\r\n", 0),
    BP("MESSAGE a 1x\r\nx\r\n", 0),
    BP("MESSAGE a 0x1\r\nx\r\n", 0),
    BP("MESSAGE a 18446744073709551616\r\nx\r\n", 0),
    BP("MESSAGE a 1", 0),          /* no line end */
    BP("MESSAGE a 1\r", 0),
    BP("MESSAGE a 1\nx\r\n", 0),   /* bare LF: length token "1\nx" */
    /* the line is read and checked, then the payload's framing fails */
    BP("MESSAGE a 5\r\nab\r\n", 1), /* payload runs past the block */
    BP("MESSAGE a 2\r\nab", 1),     /* payload without "\r\n" */
    BP("MESSAGE a 2\r\nab\r", 1),
    BP("MESSAGE a 2\r\nab\n", 1),
    BP("MESSAGE a 2\r\nabc\r\n", 1), /* payload not followed by "\r\n" */
    BP("MESSAGE a 2\r\nab\n\r", 1),
    BP("MESSAGE a 2\r\nab\r\nX", 1), /* junk after the last entry */
    BP("MESSAGE a 2\r\nab\r\n\r\n", 1),
    BP("MESSAGE a 2\r\nab\r\nMESSAGE", 1),
    BP("MESSAGE a 1\r\nx\r\nMESSAGE b 1\r\nxy\r\n", 2), /* bad 2nd entry */
    /* the rules: only the check refuses these */
    BR("MESSAGE a\rb 1\r\nx\r\n", KR_PERR_BAD_TOPIC, 1, 0),
    BR("MESSAGE a\nb 1\r\nx\r\n", KR_PERR_BAD_TOPIC, 1, 0),
    BR("MESSAGE a\0b 1\r\nx\r\n", KR_PERR_BAD_TOPIC, 1, 0),
    BR("MESSAGE 123456789 1\r\nx\r\n", KR_PERR_BAD_TOPIC, 1, 0),
    BR("MESSAGE a 1\r\nx\r\nMESSAGE ok 123456789 1\r\nx\r\n", KR_PERR_BAD_TOPIC, 2, 0),
    BR("MESSAGE a 33\r\n0123456789abcdef0123456789abcdef!\r\n", KR_PERR_TOO_LARGE, 1, 0),
    /* the check runs before the payload's framing, so it wins over a framing fault */
    BR("MESSAGE a 18446744073709551615\r\nx\r\n", KR_PERR_TOO_LARGE, 1, KR_PERR_BAD_PUBLISH),
    BR("MESSAGE a 1\r\nx\r\nMESSAGE b 1000\r\nx\r\n", KR_PERR_TOO_LARGE, 2, KR_PERR_BAD_PUBLISH),
    BR("MESSAGE a\rb 5\r\nx\r\n", KR_PERR_BAD_TOPIC, 1, KR_PERR_BAD_PUBLISH),
    BR("MESSAGE 123456789 2\r\nx", KR_PERR_BAD_TOPIC, 1, KR_PERR_BAD_PUBLISH),
};

Test(publish, every_bad_block_is_rejected_before_the_callback)
{
    for (size_t i = 0; i < sizeof(bad_pubs) / sizeof(bad_pubs[0]); i++) {
        struct coll c = {0};
        size_t ne = 99;
        int rc = parse_pub(bad_pubs[i].in, bad_pubs[i].n, &c, &ne);
        cr_assert_eq(rc, bad_pubs[i].rc, "case %zu: rc %d want %d", i, rc, bad_pubs[i].rc);
        cr_assert_eq(c.calls, 0, "case %zu: callback called", i);
        cr_assert_eq(c.checks, bad_pubs[i].checks, "case %zu: %zu checks want %zu", i, c.checks,
                     bad_pubs[i].checks);
        cr_assert_eq(ne, 0);
    }
}

Test(publish, without_check_only_the_framing_is_validated)
{
    /* the blocks whose only fault is a topic or size rule parse fine with check = NULL */
    size_t nfine = 0;
    for (size_t i = 0; i < sizeof(bad_pubs) / sizeof(bad_pubs[0]); i++) {
        const struct bad_pub *bp = &bad_pubs[i];
        char *b = dup_exact(bp->in, bp->n);
        struct coll c = {0};
        size_t ne = 99, ne_v = 99;
        int rc = kr_proto_parse_publish(b, bp->n, NULL, collect, &c, &ne);
        cr_assert_eq(rc, bp->rc_nocheck, "case %zu: rc %d want %d", i, rc, bp->rc_nocheck);
        cr_assert_eq(kr_proto_parse_publish(b, bp->n, NULL, NULL, NULL, &ne_v), rc, "case %zu", i);
        cr_assert_eq(ne_v, ne);
        if (rc == 0) {
            nfine++;
            cr_assert_gt(ne, 0);
            cr_assert_eq(c.calls, ne);
            cr_assert_eq(c.checks, 0);
        } else {
            cr_assert_eq(ne, 0);
            cr_assert_eq(c.calls, 0);
        }
        free(b);
    }
    cr_assert_eq(nfine, 6);

    struct coll c = {0};
    size_t ne;
    cr_assert_eq(parse_pub(S("MESSAGE a\rb c 1\r\nx\r\n"), &c, &ne), KR_PERR_BAD_TOPIC);
    c = (struct coll){0};
    cr_assert_eq(kr_proto_parse_publish(S("MESSAGE a\rb c 1\r\nx\r\n"), NULL, collect, &c, &ne), 0);
    cr_assert_eq(ne, 1);
    cr_assert_eq(c.e[0].topics_len, 5);
    cr_assert_eq(c.e[0].ntopics, 2);
    cr_assert_eq(c.e[0].payload_len, 1);
}

Test(publish, check_sees_the_line_with_no_payload_and_the_announced_length)
{
    static const char blk[] = "MESSAGE a b 1000\r\nx\r\n";
    struct coll c = {0};
    size_t ne = 99;
    cr_assert_eq(kr_proto_parse_publish(S(blk), record_check, collect, &c, &ne),
                 KR_PERR_BAD_PUBLISH);
    cr_assert_eq(c.checks, 1);
    cr_assert_eq(c.calls, 0);
    cr_assert_eq(ne, 0);
    cr_assert_null(c.ce[0].payload);
    cr_assert_eq(c.ce[0].payload_len, 1000);
    cr_assert_eq(c.ce[0].topics, blk + 8);
    cr_assert_eq(c.ce[0].topics_len, 3);
    cr_assert_eq(c.ce[0].ntopics, 2);

    /* a length that no block could hold is handed on saturated, not truncated */
    c = (struct coll){0};
    cr_assert_eq(kr_proto_parse_publish(S("MESSAGE t 18446744073709551615\r\nx\r\n"), record_check,
                                        NULL, &c, &ne),
                 KR_PERR_BAD_PUBLISH);
    cr_assert_eq(c.checks, 1);
    cr_assert_eq(c.ce[0].payload_len, SIZE_MAX);
    cr_assert_null(c.ce[0].payload);

    /* an entry with no topics is checked too */
    static const char zt[] = "MESSAGE 2\r\nhi\r\n";
    c = (struct coll){0};
    cr_assert_eq(kr_proto_parse_publish(S(zt), record_check, collect, &c, &ne), 0);
    cr_assert_eq(c.checks, 1);
    cr_assert_eq(c.ce[0].topics_len, 0);
    cr_assert_eq(c.ce[0].ntopics, 0);
    cr_assert_eq(c.ce[0].payload_len, 2);
    cr_assert_null(c.ce[0].payload);
    cr_assert_eq(c.e[0].payload, zt + 11);
}

Test(publish, check_runs_for_each_entry_in_order_before_any_callback)
{
    static const char blk[] = "MESSAGE a 1\r\nx\r\nMESSAGE bb c 2\r\nyy\r\nMESSAGE 3\r\nzzz\r\n";
    struct coll c = {0};
    size_t ne;
    cr_assert_eq(kr_proto_parse_publish(S(blk), record_check, collect, &c, &ne), 0);
    cr_assert_eq(ne, 3);
    cr_assert_eq(c.checks, 3);
    cr_assert_eq(c.calls, 3);
    static const size_t at[] = {8, 24, 44};
    static const size_t plen[] = {1, 2, 3};
    for (size_t i = 0; i < 3; i++) {
        cr_assert_eq(c.ce[i].topics, blk + at[i], "entry %zu", i);
        cr_assert_eq(c.ce[i].payload_len, plen[i], "entry %zu", i);
        cr_assert_null(c.ce[i].payload);
        assert_same_line(&c.ce[i], &c.e[i], i);
    }
    /* the same with the rules, which all entries pass */
    c = (struct coll){0};
    cr_assert_eq(kr_proto_parse_publish(S(blk), rules, collect, &c, &ne), 0);
    cr_assert_eq(c.checks, 3);
    cr_assert_eq(c.calls, 3);
}

Test(publish, check_value_is_returned_as_is_and_stops_the_parse)
{
    static const char blk[] = "MESSAGE a 1\r\nx\r\nMESSAGE b 1\r\ny\r\nMESSAGE c 1\r\nz\r\n";
    static const int values[] = {1, 12345, -1, -99, KR_PERR_BAD_TOPIC, INT32_MIN, INT32_MAX};
    for (size_t v = 0; v < sizeof(values) / sizeof(values[0]); v++) {
        for (size_t at = 1; at <= 3; at++) {
            struct coll c = {.check_stop_at = at, .check_rc = values[v]};
            size_t ne = 99;
            cr_assert_eq(kr_proto_parse_publish(S(blk), record_check, collect, &c, &ne),
                         values[v], "value %d at %zu", values[v], at);
            cr_assert_eq(c.checks, at); /* no entry after it is checked */
            cr_assert_eq(c.calls, 0);   /* nor any handed to the callback */
            cr_assert_eq(ne, 0);
        }
    }
    /* the check's value wins over a framing fault later in the same entry or block */
    struct coll c = {.check_stop_at = 2, .check_rc = 7};
    size_t ne;
    cr_assert_eq(kr_proto_parse_publish(S("MESSAGE a 1\r\nx\r\nMESSAGE b 5\r\nx\r\n"),
                                        record_check, collect, &c, &ne),
                 7);
    c = (struct coll){.check_stop_at = 1, .check_rc = 8};
    cr_assert_eq(kr_proto_parse_publish(S("MESSAGE a 1\r\nx\r\njunk"), record_check, collect, &c,
                                        &ne),
                 8);
    cr_assert_eq(c.checks, 1);
    /* but a malformed entry line is reported before the check could see it */
    c = (struct coll){.check_stop_at = 2, .check_rc = 9};
    cr_assert_eq(kr_proto_parse_publish(S("MESSAGE a 1\r\nx\r\nMESSAGE b x\r\nx\r\n"),
                                        record_check, collect, &c, &ne),
                 KR_PERR_BAD_PUBLISH);
    cr_assert_eq(c.checks, 1);
}

Test(publish, truncated_block_valid_only_at_entry_boundaries)
{
    static const char blk[] = "MESSAGE a b 5\r\nhel\r\n\r\nMESSAGE 0\r\n\r\nMESSAGE c 2\r\nhi\r\n";
    const size_t n = sizeof(blk) - 1;
    const size_t bounds[] = {0, 22, 35, n};
    for (size_t k = 0; k <= n; k++) {
        size_t want_entries = 0;
        int boundary = 0;
        for (size_t j = 0; j < 4; j++) {
            if (bounds[j] == k) {
                boundary = 1;
                want_entries = j;
            }
        }
        struct coll c = {0};
        size_t ne = 99;
        int rc = parse_pub(blk, k, &c, &ne);
        if (boundary) {
            cr_assert_eq(rc, 0, "k %zu", k);
            cr_assert_eq(ne, want_entries, "k %zu", k);
            cr_assert_eq(c.calls, want_entries);
        } else {
            cr_assert_eq(rc, KR_PERR_BAD_PUBLISH, "k %zu: rc %d", k, rc);
            cr_assert_eq(c.calls, 0, "k %zu", k);
        }
    }
}

/* ------------------------------------------------------------------ retro blocks */

static int parse_retro(const char *s, size_t n, uint64_t *h, const char **t, size_t *tl)
{
    char *b = dup_exact(s, n);
    int rc = kr_proto_parse_retro(b, n, h, t, tl);
    if (rc == 0) {
        cr_assert(*t >= b && *t + *tl == b + n);
        *t = s + (*t - b);
    }
    free(b);
    return rc;
}

Test(retro, integer_horizon)
{
    uint64_t h = 0;
    const char *t;
    size_t tl;
    cr_assert_eq(parse_retro(S("1700000000\r\na b"), &h, &t, &tl), 0);
    cr_assert_eq(h, 1700000000000000ULL);
    cr_assert_eq(tl, 3);
    cr_assert(memcmp(t, "a b", 3) == 0);
    cr_assert_eq(parse_retro(S("0\r\nx"), &h, &t, &tl), 0);
    cr_assert_eq(h, 0);
    cr_assert_eq(parse_retro(S("000000000000000000001700000000\r\nx"), &h, &t, &tl), 0);
    cr_assert_eq(h, 1700000000000000ULL);
}

Test(retro, protocol_md_fraction_example)
{
    uint64_t h = 0;
    const char *t;
    size_t tl;
    cr_assert_eq(parse_retro(S("1700000000.250\r\nx"), &h, &t, &tl), 0);
    cr_assert_eq(h, 1700000000250000ULL);
}

Test(retro, fractions_of_one_to_nine_digits_truncate_to_microseconds)
{
    static const struct {
        const char *frac;
        uint64_t us;
    } cases[] = {
        {"2", 200000},      {"25", 250000},      {"250", 250000},     {"1234", 123400},
        {"12345", 123450},  {"123456", 123456},  {"1234567", 123456}, {"12345678", 123456},
        {"123456789", 123456}, {"999999999", 999999}, {"000001", 1},  {"0000009", 0},
        {"0", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[64];
        int n = snprintf(buf, sizeof(buf), "42.%s\r\nt", cases[i].frac);
        uint64_t h = 0;
        const char *t;
        size_t tl;
        cr_assert_eq(parse_retro(buf, (size_t)n, &h, &t, &tl), 0, "%s", cases[i].frac);
        cr_assert_eq(h, 42000000ULL + cases[i].us, "%s: %llu", cases[i].frac,
                     (unsigned long long)h);
    }
}

Test(retro, topics_may_be_empty_or_spaced)
{
    uint64_t h;
    const char *t;
    size_t tl;
    cr_assert_eq(parse_retro(S("5\r\n"), &h, &t, &tl), 0);
    cr_assert_eq(h, 5000000);
    cr_assert_eq(tl, 0);
    cr_assert_eq(parse_retro(S("5\r\n a  b "), &h, &t, &tl), 0);
    cr_assert_eq(tl, 6);
    cr_assert(memcmp(t, " a  b ", 6) == 0);
    cr_assert_eq(kr_proto_count_topics(t, tl), 2);
}

Test(retro, horizon_range_limits)
{
    uint64_t h;
    const char *t;
    size_t tl;
    cr_assert_eq(parse_retro(S("18446744073709.551615\r\nx"), &h, &t, &tl), 0);
    cr_assert_eq(h, UINT64_MAX);
    cr_assert_eq(parse_retro(S("18446744073709.551616\r\nx"), &h, &t, &tl), KR_PERR_BAD_FORMAT);
    cr_assert_eq(parse_retro(S("18446744073709.9\r\nx"), &h, &t, &tl), KR_PERR_BAD_FORMAT);
    cr_assert_eq(parse_retro(S("18446744073710\r\nx"), &h, &t, &tl), KR_PERR_BAD_FORMAT);
    cr_assert_eq(parse_retro(S("99999999999999999999999999\r\nx"), &h, &t, &tl), KR_PERR_BAD_FORMAT);
}

Test(retro, malformed_horizon_is_bad_format)
{
    static const struct {
        const char *in;
        size_t n;
    } bad[] = {
        {S("")},           {S("\r\n")},       {S("\r\nabc")},     {S("1.\r\n")},
        {S(".5\r\n")},     {S("+1\r\n")},     {S("-1\r\n")},      {S(" 1\r\n")},
        {S("1 \r\n")},     {S("1x\r\n")},     {S("1e3\r\n")},     {S("1,5\r\n")},
        {S("1.5.5\r\n")},  {S("1.-5\r\n")},   {S("1.+5\r\n")},    {S("0x10\r\n")},
        {S("1")},          {S("1\n")},        {S("1\r")},         {S("1\ra")},
        {S("1.5")},        {S("1\n\r")},      {S("1.1234567890\r\n")}, {S("1\0\r\n")},
        {S("abc\r\n1")},   {S("1 a\r\n")},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t h;
        const char *t;
        size_t tl;
        cr_assert_eq(parse_retro(bad[i].in, bad[i].n, &h, &t, &tl), KR_PERR_BAD_FORMAT,
                     "case %zu", i);
    }
}

static void assert_retro_topics(const char *in, size_t n, uint64_t want_h, const char *want_t,
                                size_t want_tl)
{
    uint64_t h = 0;
    const char *t = NULL;
    size_t tl = 99;
    int rc = parse_retro(in, n, &h, &t, &tl);
    cr_assert_eq(rc, 0, "rc %d", rc);
    cr_assert_eq(h, want_h);
    cr_assert_eq(tl, want_tl);
    cr_assert_eq(t, in + n - want_tl);
    cr_assert(memcmp(t, want_t, want_tl) == 0);
}

Test(retro, topics_are_not_validated)
{
    /* the topic rules are the rule book's: the codec hands the span on as it is */
    assert_retro_topics(S("1\r\na\rb"), 1000000, S("a\rb"));
    assert_retro_topics(S("1\r\na\0b"), 1000000, S("a\0b"));
    assert_retro_topics(S("1\r\na\nb"), 1000000, S("a\nb"));
    assert_retro_topics(S("1\r\nok 123456789"), 1000000, S("ok 123456789"));
    assert_retro_topics(S("1\r\na b\r\n"), 1000000, S("a b\r\n"));
    assert_retro_topics(S("1.5\r\n\r\n"), 1500000, S("\r\n"));
    assert_retro_topics(S("2\r\n\r\n\r\n"), 2000000, S("\r\n\r\n"));
    char big[600];
    memcpy(big, "3\r\n", 3);
    memset(big + 3, 'x', sizeof(big) - 3);
    assert_retro_topics(big, sizeof(big), 3000000, big + 3, sizeof(big) - 3);
    /* only the first "\r\n" ends the horizon line */
    uint64_t h;
    const char *t;
    size_t tl;
    cr_assert_eq(parse_retro(S("1\r\n\r\n"), &h, &t, &tl), 0);
    cr_assert_eq(tl, 2);
}

Test(retro, malformed_horizon_is_bad_format_whatever_the_topics)
{
    static const struct {
        const char *in;
        size_t n;
    } bad[] = {
        {S("1\ra\rb")}, {S("x\r\na\rb")}, {S("1.\r\nok 123456789")}, {S("\r\na\0b")},
        {S("1\n\r\na")},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t h;
        const char *t;
        size_t tl;
        cr_assert_eq(parse_retro(bad[i].in, bad[i].n, &h, &t, &tl), KR_PERR_BAD_FORMAT,
                     "case %zu", i);
    }
}

/* ------------------------------------------------------------------ resume blocks */

static int parse_resume(const char *s, size_t n, const char **tok, size_t *tokl, const char **t,
                        size_t *tl)
{
    char *b = dup_exact(s, n);
    *tok = NULL;
    *t = NULL;
    int rc = kr_proto_parse_resume(b, n, tok, tokl, t, tl);
    if (rc == 0) {
        cr_assert(*tok == b && *tokl > 0 && *tokl <= KR_PROTO_TOKEN_MAX);
        cr_assert(*t == b + *tokl + 2 && *t + *tl == b + n);
        *tok = s + (*tok - b);
        *t = s + (*t - b);
    } else {
        cr_assert_eq(rc, KR_PERR_BAD_FORMAT);
    }
    free(b);
    return rc;
}

static void assert_resume(const char *in, size_t n, const char *want_tok, const char *want_t,
                          size_t want_tl)
{
    const char *tok, *t;
    size_t tokl, tl;
    cr_assert_eq(parse_resume(in, n, &tok, &tokl, &t, &tl), 0, "%.*s", (int)n, in);
    cr_assert_eq(tokl, strlen(want_tok));
    cr_assert(memcmp(tok, want_tok, tokl) == 0);
    cr_assert_eq(tl, want_tl);
    cr_assert(memcmp(t, want_t, tl) == 0);
}

Test(resume, token_and_topics)
{
    assert_resume(S("p1.ATkwAAAAAAAA\r\na b c"), "p1.ATkwAAAAAAAA", S("a b c"));
    assert_resume(S("x\r\nt"), "x", S("t"));
    /* the topics may be empty, spaced, or anything: not validated here */
    assert_resume(S("tok\r\n"), "tok", S(""));
    assert_resume(S("tok\r\n  a  b "), "tok", S("  a  b "));
    assert_resume(S("tok\r\n\r\n"), "tok", S("\r\n"));
    assert_resume(S("tok\r\na\0b\r\nc\rd\ne"), "tok", S("a\0b\r\nc\rd\ne"));
    assert_resume(S("tok\r\n__kraken__:resync"), "tok", S("__kraken__:resync"));
    /* every printable byte may be in a token: the codec does not decode it */
    char all[0x7e - 0x21 + 1 + 3];
    size_t n = 0;
    for (int c = 0x21; c <= 0x7e; c++)
        all[n++] = (char)c;
    memcpy(all + n, "\r\nz", 3);
    const char *tok, *t;
    size_t tokl, tl;
    cr_assert_eq(parse_resume(all, n + 3, &tok, &tokl, &t, &tl), 0);
    cr_assert_eq(tokl, n);
    cr_assert_eq(tl, 1);
}

Test(resume, malformed_token_line_is_bad_format)
{
    static const struct {
        const char *in;
        size_t n;
    } bad[] = {
        {S("")},           {S("tok")},          {S("tok\r")},      {S("tok\n")},
        {S("tok\na b")},   {S("\r\na b")},      {S("\r\n")},       {S(" tok\r\na")},
        {S("tok \r\na")},  {S("t k\r\na")},     {S("t\tk\r\na")},  {S("t\0k\r\na")},
        {S("tok\r\r\na")}, {S("t\rk\r\na")},    {S("t\x7fk\r\na")}, {S("t\x80k\r\na")},
        {S("t\xffk\r\na")}, {S("tok\n\r\na")},  {S("tok\r a")},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *tok, *t;
        size_t tokl, tl;
        cr_assert_eq(parse_resume(bad[i].in, bad[i].n, &tok, &tokl, &t, &tl), KR_PERR_BAD_FORMAT,
                     "case %zu", i);
    }
}

Test(resume, every_byte_value_in_the_token)
{
    for (int c = 0; c < 256; c++) {
        char in[] = "ab?cd\r\nt";
        in[2] = (char)c;
        const char *tok, *t;
        size_t tokl, tl;
        int rc = parse_resume(in, sizeof(in) - 1, &tok, &tokl, &t, &tl);
        if (c >= 0x21 && c <= 0x7e)
            cr_assert_eq(rc, 0, "byte 0x%02x", c);
        else
            cr_assert_eq(rc, KR_PERR_BAD_FORMAT, "byte 0x%02x", c);
    }
}

Test(resume, token_length_limit)
{
    char in[KR_PROTO_TOKEN_MAX + 8];
    const char *tok, *t;
    size_t tokl, tl;
    for (size_t len = KR_PROTO_TOKEN_MAX - 1; len <= KR_PROTO_TOKEN_MAX + 2; len++) {
        memset(in, 'A', len);
        memcpy(in + len, "\r\nab", 4);
        int rc = parse_resume(in, len + 4, &tok, &tokl, &t, &tl);
        if (len <= KR_PROTO_TOKEN_MAX) {
            cr_assert_eq(rc, 0, "token of %zu bytes", len);
            cr_assert_eq(tokl, len);
            cr_assert_eq(tl, 2);
        } else {
            cr_assert_eq(rc, KR_PERR_BAD_FORMAT, "token of %zu bytes", len);
        }
    }
    /* a long line with no "\r\n" at all */
    char big[4096];
    memset(big, 'A', sizeof(big));
    cr_assert_eq(parse_resume(big, sizeof(big), &tok, &tokl, &t, &tl), KR_PERR_BAD_FORMAT);
}

Test(resume, split_at_every_byte)
{
    /* each prefix of a valid block: refused until the "\r\n" is whole, then the same token
     * with the topics that arrived */
    static const char in[] = "p1.ATkwAAAAAAAA\r\nalpha beta gamma";
    const size_t n = sizeof(in) - 1, tokn = 15;
    for (size_t k = 0; k <= n; k++) {
        const char *tok, *t;
        size_t tokl, tl;
        int rc = parse_resume(in, k, &tok, &tokl, &t, &tl);
        if (k < tokn + 2) {
            cr_assert_eq(rc, KR_PERR_BAD_FORMAT, "prefix %zu", k);
        } else {
            cr_assert_eq(rc, 0, "prefix %zu", k);
            cr_assert_eq(tokl, tokn);
            cr_assert_eq(tl, k - tokn - 2);
        }
    }
}

Test(resume, request_then_block)
{
    static const char in[] = "set resume 0 0 22\r\np1.ATkwAAAAAAAA\r\na b c\r\n";
    struct kr_request req;
    parse_ok(in, sizeof(in) - 1, &req);
    cr_assert_eq(req.type, KR_REQ_RESUME);
    cr_assert_eq(req.noreply, 0);
    const char *tok, *t;
    size_t tokl, tl;
    cr_assert_eq(kr_proto_parse_resume(req.data, req.data_len, &tok, &tokl, &t, &tl), 0);
    cr_assert_eq(tokl, 15);
    cr_assert(memcmp(tok, "p1.ATkwAAAAAAAA", 15) == 0);
    cr_assert_eq(tl, 5);
    cr_assert(memcmp(t, "a b c", 5) == 0);
    cr_assert_eq(kr_proto_count_topics(t, tl), 3);
}

Test(parse, get_messages_position_and_get_position)
{
    struct kr_request req;
    parse_ok(S("get messages position\r\n"), &req);
    cr_assert_eq(req.type, KR_REQ_GET_MESSAGES_POSITION);
    cr_assert_eq(req.noreply, 0);
    cr_assert_null(req.data);
    parse_ok(S("get position\r\n"), &req);
    cr_assert_eq(req.type, KR_REQ_GET_POSITION);
    cr_assert_null(req.data);
    /* a plain poll is unchanged */
    parse_ok(S("get messages\r\n"), &req);
    cr_assert_eq(req.type, KR_REQ_GET_MESSAGES);
}
