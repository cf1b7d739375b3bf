/* Unit tests of the RESP codec: multibulk and inline requests whole, split at every byte and
 * byte by byte (fresh and resumed parses), pipelining, binary-safe arguments, every
 * malformed case with its exact Redis error text, the limits at and past their boundary,
 * argv growth, command-name matching and the formatters' exact bytes in RESP2 and RESP3.
 *
 * The expected error texts and formatter bytes are those a Redis 7.0 server sends for the
 * same input (where the codec differs on purpose, net/kr_resp.c says so).
 *
 * Every parse runs over an exactly-sized heap copy of its input, so the address sanitizer
 * catches any read past what the parser was given; resumed parses get a new copy each call,
 * so the argv rebasing after the caller's buffer moves is exercised too. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_resp.h"

/* A literal with its length, embedded NULs included. */
#define S(lit) (lit), (sizeof(lit) - 1)
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static const struct kr_resp_limits lim = {
    .max_bulk_bytes = 64,
    .max_args = 8,
    .max_inline_bytes = 32,
};

#define CAP 16

static char *dup_exact(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    cr_assert_not_null(p);
    if (n)
        memcpy(p, s, n);
    return p;
}

/* One parse result with arguments copied out (decoded when quoted), comparable by value. */
struct res {
    int rc;
    size_t consumed, argc, at;
    int is_inline;
    unsigned char got;
    char args[CAP][80];
    size_t lens[CAP];
};

static void capture(struct res *r, int rc, size_t consumed, const struct kr_resp_parser *req,
                    const struct kr_resp_arg *argv, const char *base, size_t n)
{
    memset(r, 0, sizeof(*r));
    r->rc = rc;
    r->consumed = consumed;
    if (rc == KR_RESP_OK) {
        cr_assert(consumed > 0 && consumed <= n, "consumed %zu of %zu", consumed, n);
        r->argc = req->argc;
        r->is_inline = req->is_inline;
        cr_assert_leq(req->argc, CAP);
        for (size_t i = 0; i < req->argc; i++) {
            cr_assert(argv[i].p >= base && argv[i].p + argv[i].len <= base + consumed,
                      "arg %zu outside the request", i);
            cr_assert_lt(argv[i].len, sizeof(r->args[i]));
            if (req->quoted) {
                r->lens[i] = kr_resp_unquote(argv[i].p, argv[i].len, r->args[i]);
                cr_assert_leq(r->lens[i], argv[i].len);
            } else {
                memcpy(r->args[i], argv[i].p, argv[i].len);
                r->lens[i] = argv[i].len;
            }
        }
    } else if (rc == KR_RESP_NEED_MORE) {
        cr_assert(consumed == 0 || consumed > n, "need %zu with %zu", consumed, n);
    } else if (rc == KR_RESP_ARGV_FULL) {
        r->argc = req->argc;
        cr_assert_eq(consumed, 0);
    } else {
        cr_assert(rc >= KR_RESP_ERR_BULK_COUNT_TOO_BIG && rc <= KR_RESP_ERR_MBULK_LEN, "rc %d",
                  rc);
        cr_assert_leq(consumed, n);
        if (rc == KR_RESP_ERR_EXPECTED_DOLLAR)
            r->got = req->got;
    }
}

/* A fresh parse of in[0..n) with an argv of cap entries. */
static struct res parse_fresh(const char *in, size_t n, size_t cap)
{
    struct kr_resp_arg argv[CAP];
    struct kr_resp_parser req;
    struct res r;
    size_t consumed = 12345;
    char *b = dup_exact(in, n);
    kr_resp_parser_init(&req);
    int rc = kr_resp_parse(b, n, &lim, argv, cap, &req, &consumed);
    capture(&r, rc, consumed, &req, argv, b, n);
    free(b);
    return r;
}

static int same(const struct res *a, const struct res *b)
{
    if (a->rc != b->rc || a->consumed != b->consumed || a->argc != b->argc ||
        a->is_inline != b->is_inline || a->got != b->got)
        return 0;
    if (a->rc != KR_RESP_OK)
        return 1;
    for (size_t i = 0; i < a->argc; i++)
        if (a->lens[i] != b->lens[i] || memcmp(a->args[i], b->args[i], a->lens[i]) != 0)
            return 0;
    return 1;
}

/* Feed in[0..n) in chunks like a connection: one req kept across reads, the unparsed tail
 * copied into a new exactly-sized buffer every call (so the buffer always moves). argv
 * grows from 1 entry on ARGV_FULL. Records every result but NEED_MORE; stops at an error. */
static size_t feed(const char *in, size_t n, size_t chunk, struct res *out, size_t max)
{
    struct kr_resp_arg argv[CAP];
    struct kr_resp_parser req;
    size_t have = 0, off = 0, nr = 0, cap = 1;
    kr_resp_parser_init(&req);
    while (have < n) {
        have = have + chunk > n ? n : have + chunk;
        while (off < have) {
            size_t avail = have - off;
            char *b = dup_exact(in + off, avail);
            size_t used = 777;
            int rc = kr_resp_parse(b, avail, &lim, argv, cap, &req, &used);
            if (rc == KR_RESP_NEED_MORE) {
                cr_assert(used == 0 || used > avail, "need %zu with %zu", used, avail);
                free(b);
                break;
            }
            if (rc == KR_RESP_ARGV_FULL) {
                cr_assert_gt(req.argc, cap);
                cr_assert_leq(req.argc, CAP);
                cap = req.argc;
                free(b);
                continue;
            }
            cr_assert_lt(nr, max);
            capture(&out[nr], rc, used, &req, argv, b, avail);
            out[nr].at = off;
            nr++;
            free(b);
            if (rc < 0)
                return nr;
            off += used;
        }
    }
    return nr;
}

/* Fed whole, and in every chunk size (1 = byte by byte): the same results. */
static size_t feed_all_ways(const char *in, size_t n, struct res *out, size_t max)
{
    size_t nr = feed(in, n, n ? n : 1, out, max);
    struct res *tmp = calloc(max, sizeof(*tmp));
    cr_assert_not_null(tmp);
    for (size_t chunk = 1; chunk < n; chunk++) {
        size_t nt = feed(in, n, chunk, tmp, max);
        cr_assert_eq(nt, nr, "chunk %zu: %zu results vs %zu", chunk, nt, nr);
        for (size_t i = 0; i < nr; i++)
            cr_assert(tmp[i].at == out[i].at && same(&tmp[i], &out[i]),
                      "chunk %zu: result %zu differs", chunk, i);
    }
    free(tmp);
    return nr;
}

/* ------------------------------------------------------------------ valid requests */

struct valid_case {
    const char *in;
    size_t n;
    int is_inline;
    size_t argc;
    struct {
        const char *p;
        size_t n;
    } args[4];
};

#define A(lit) {S(lit)}
#define MB(lit, argc, ...) {S(lit), 0, argc, {__VA_ARGS__}}
#define IN(lit, argc, ...) {S(lit), 1, argc, {__VA_ARGS__}}

static const struct valid_case valid_cases[] = {
    MB("*1\r\n$4\r\nPING\r\n", 1, A("PING")),
    MB("*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n", 2, A("SUBSCRIBE"), A("ch")),
    MB("*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$5\r\nhello\r\n", 3, A("PUBLISH"), A("ch"),
       A("hello")),
    /* binary-safe: CR, LF, NUL, '$' and '*' inside bulks */
    MB("*2\r\n$4\r\n\r\n\0\n\r\n$3\r\n*$\r\r\n", 2, A("\r\n\0\n"), A("*$\r")),
    MB("*1\r\n$0\r\n\r\n", 1, A("")),
    MB("*3\r\n$0\r\n\r\n$1\r\nx\r\n$0\r\n\r\n", 3, A(""), A("x"), A("")),
    /* like Redis: the byte after a count line's '\r' and the two after a bulk are skipped */
    MB("*1\rX$2\rYabZZ", 1, A("ab")),
    /* empty requests Redis skips */
    MB("*0\r\n", 0, A("")),
    MB("*-1\r\n", 0, A("")),
    MB("*-10\r\n", 0, A("")),
    IN("PING\r\n", 1, A("PING")),
    IN("PING\n", 1, A("PING")),
    IN("\r\n", 0, A("")),
    IN("\n", 0, A("")),
    IN("  \t \r\n", 0, A("")),
    IN("subscribe a b\r\n", 3, A("subscribe"), A("a"), A("b")),
    IN("  publish\tch  msg  \r\n", 3, A("publish"), A("ch"), A("msg")),
    /* a lone '\r' separates, leading \v and \f are blanks, inside a word they are bytes */
    IN("a\rb\n", 2, A("a"), A("b")),
    IN("\v\fPING\r\n", 1, A("PING")),
    IN("A\vB\fC\r\n", 1, A("A\vB\fC")),
    /* quotes as sdssplitargs */
    IN("SET \"a b\" 'c d'\r\n", 3, A("SET"), A("a b"), A("c d")),
    IN("E \"\\x41\\x6a\\n\\r\\t\\b\\a\\q\\\\\\\"\"\r\n", 2, A("E"), A("Aj\n\r\t\b\aq\\\"")),
    IN("E \"\\x4\" \"\\xZZ\"\r\n", 3, A("E"), A("x4"), A("xZZ")),
    IN("E 'it\\'s' 'a\\nb'\r\n", 3, A("E"), A("it's"), A("a\\nb")),
    IN("E ab\"c d\"\r\n", 2, A("E"), A("abc d")),
    IN("E \"\" ''\r\n", 3, A("E"), A(""), A("")),
    IN("E \"x\"\t'y'\v\r\n", 3, A("E"), A("x"), A("y")),
    IN("E a'b\"c'\r\n", 2, A("E"), A("ab\"c")),
    IN("ping \"a\"\rb\n", 3, A("ping"), A("a"), A("b")),
    /* a NUL ends the arguments (sdssplitargs works on a C string) */
    IN("PING\0 \"junk\r\n", 1, A("PING")),
    IN("\0\r\n", 0, A("")),
    /* '*' decides: a request not starting with it is inline */
    IN(" *1\r\n", 1, A("*1")),
    IN("$4\r\n", 1, A("$4")),
};

static void check_args(const struct res *r, const struct valid_case *vc, size_t idx)
{
    cr_assert_eq(r->argc, vc->argc, "case %zu: argc %zu", idx, r->argc);
    for (size_t i = 0; i < vc->argc; i++) {
        cr_assert_eq(r->lens[i], vc->args[i].n, "case %zu arg %zu: len %zu", idx, i,
                     r->lens[i]);
        cr_assert(memcmp(r->args[i], vc->args[i].p, vc->args[i].n) == 0, "case %zu arg %zu",
                  idx, i);
    }
}

/* Resume: parse every prefix of in, each in a new copy with the same req, then the whole. */
static struct res parse_resumed(const char *in, size_t n, size_t step_from)
{
    struct kr_resp_arg argv[CAP];
    struct kr_resp_parser req;
    struct res r;
    size_t consumed;
    kr_resp_parser_init(&req);
    for (size_t k = step_from; k < n; k++) {
        char *b = dup_exact(in, k);
        int rc = kr_resp_parse(b, k, &lim, argv, CAP, &req, &consumed);
        cr_assert_eq(rc, KR_RESP_NEED_MORE, "prefix %zu: rc %d", k, rc);
        cr_assert(consumed == 0 || consumed > k);
        free(b);
    }
    char *b = dup_exact(in, n);
    int rc = kr_resp_parse(b, n, &lim, argv, CAP, &req, &consumed);
    capture(&r, rc, consumed, &req, argv, b, n);
    free(b);
    return r;
}

static void check_valid(const struct valid_case *vc, size_t idx)
{
    struct res whole = parse_fresh(vc->in, vc->n, CAP);
    cr_assert_eq(whole.rc, KR_RESP_OK, "case %zu: rc %d", idx, whole.rc);
    cr_assert_eq(whole.consumed, vc->n, "case %zu: consumed %zu", idx, whole.consumed);
    cr_assert_eq(whole.is_inline, vc->is_inline, "case %zu", idx);
    check_args(&whole, vc, idx);

    /* every proper prefix, fresh: NEED_MORE */
    for (size_t k = 0; k < vc->n; k++) {
        struct res r = parse_fresh(vc->in, k, CAP);
        cr_assert_eq(r.rc, KR_RESP_NEED_MORE, "case %zu prefix %zu: rc %d", idx, k, r.rc);
    }
    /* two reads split at every offset (resumed), and byte by byte (resumed) */
    for (size_t k = 0; k < vc->n; k++) {
        struct kr_resp_arg argv[CAP];
        struct kr_resp_parser req;
        size_t consumed;
        kr_resp_parser_init(&req);
        char *b = dup_exact(vc->in, k);
        cr_assert_eq(kr_resp_parse(b, k, &lim, argv, CAP, &req, &consumed), KR_RESP_NEED_MORE);
        free(b);
        b = dup_exact(vc->in, vc->n);
        struct res r;
        int rc = kr_resp_parse(b, vc->n, &lim, argv, CAP, &req, &consumed);
        capture(&r, rc, consumed, &req, argv, b, vc->n);
        free(b);
        cr_assert(same(&r, &whole), "case %zu split %zu", idx, k);
    }
    struct res r = parse_resumed(vc->in, vc->n, 0);
    cr_assert(same(&r, &whole), "case %zu byte by byte", idx);

    /* the parser never looks past its request */
    char *more = malloc(vc->n + 6);
    cr_assert_not_null(more);
    memcpy(more, vc->in, vc->n);
    memcpy(more + vc->n, "*junk\n", 6);
    r = parse_fresh(more, vc->n + 6, CAP);
    cr_assert(same(&r, &whole), "case %zu with junk after", idx);
    free(more);

    /* fed as a stream in every chunk size, argv grown from 1 entry */
    struct res g[4];
    size_t ng = feed_all_ways(vc->in, vc->n, g, 4);
    cr_assert_eq(ng, 1);
    cr_assert(same(&g[0], &whole), "case %zu streamed", idx);
}

Test(parse, every_valid_request_whole_split_resumed_and_byte_by_byte)
{
    for (size_t i = 0; i < NELEM(valid_cases); i++)
        check_valid(&valid_cases[i], i);
}

Test(parse, args_point_into_the_callers_buffer)
{
    static const char in[] = "*2\r\n$3\r\nabc\r\n$2\r\nde\r\n";
    struct kr_resp_arg argv[2];
    struct kr_resp_parser req;
    size_t consumed;
    kr_resp_parser_init(&req);
    cr_assert_eq(kr_resp_parse(in, sizeof(in) - 1, &lim, argv, 2, &req, &consumed), KR_RESP_OK);
    cr_assert_eq(consumed, sizeof(in) - 1);
    cr_assert_eq(req.argc, 2);
    cr_assert_eq(argv[0].p, in + 8);
    cr_assert_eq(argv[0].len, 3);
    cr_assert_eq(argv[1].p, in + 17);
    cr_assert_eq(argv[1].len, 2);
}

Test(parse, need_more_reports_the_end_of_the_bulk_being_read)
{
    static const char in[] = "*2\r\n$3\r\nabc\r\n$10\r\n0123456789\r\n";
    const size_t n = sizeof(in) - 1;
    for (size_t k = 0; k < n; k++) {
        struct res r = parse_fresh(in, k, CAP);
        cr_assert_eq(r.rc, KR_RESP_NEED_MORE);
        size_t want = 0;
        if (k >= 8 && k < 13)
            want = 13; /* "$3\r\n" read: its bulk ends at 13 */
        else if (k >= 18)
            want = n; /* "$10\r\n" read */
        cr_assert_eq(r.consumed, want, "prefix %zu: need %zu", k, r.consumed);
    }
}

Test(parse, pipelined_requests_of_both_kinds)
{
    static const char in[] = "*1\r\n$4\r\nPING\r\n"
                             "PING a\r\n"
                             "*0\r\n"
                             "\r\n"
                             "*2\r\n$4\r\nECHO\r\n$3\r\n\0\r\n\r\n"
                             "*-1\r\n"
                             "echo \"x y\"\n";
    struct res g[8];
    size_t ng = feed_all_ways(in, sizeof(in) - 1, g, 8);
    cr_assert_eq(ng, 7);
    static const size_t argc[] = {1, 2, 0, 0, 2, 0, 2};
    static const size_t at[] = {0, 14, 22, 26, 28, 51, 56};
    for (size_t i = 0; i < ng; i++) {
        cr_assert_eq(g[i].rc, KR_RESP_OK, "request %zu", i);
        cr_assert_eq(g[i].argc, argc[i], "request %zu", i);
        cr_assert_eq(g[i].at, at[i], "request %zu at %zu", i, g[i].at);
    }
    cr_assert(g[4].lens[1] == 3 && memcmp(g[4].args[1], "\0\r\n", 3) == 0);
    cr_assert(g[6].lens[1] == 3 && memcmp(g[6].args[1], "x y", 3) == 0);
    cr_assert_eq(g[6].at + g[6].consumed, sizeof(in) - 1);
}

/* ------------------------------------------------------------------ malformed requests */

struct bad_case {
    const char *in;
    size_t n;
    int rc;
    const char *reply;
};

#define BAD(lit, rc, reply) {S(lit), rc, "-ERR Protocol error: " reply "\r\n"}

static const struct bad_case bad_cases[] = {
    /* Redis's own protocol tests */
    BAD("*20000000\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n", KR_RESP_ERR_EXPECTED_DOLLAR,
        "expected '$', got 'f'"),
    BAD("*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n", KR_RESP_ERR_BULK_LEN, "invalid bulk length"),
    BAD("*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n", KR_RESP_ERR_BULK_LEN,
        "invalid bulk length"),
    BAD("*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n", KR_RESP_ERR_BULK_LEN,
        "invalid bulk length"),
    BAD("*1\r\nfoo\r\n", KR_RESP_ERR_EXPECTED_DOLLAR, "expected '$', got 'f'"),
    BAD("set \"\"\"test-key\"\"\" test-value\r\n", KR_RESP_ERR_UNBALANCED_QUOTES,
        "unbalanced quotes in request"),
    /* multibulk count: string2ll rules */
    BAD("*\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("*-0\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("*01\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("*+1\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("*1 \r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("* 1\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("*-\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("*1x\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("*1\n\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("*1\0\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("*99999999999999999999\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    BAD("*-9223372036854775809\r\n", KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"),
    /* bulk count */
    BAD("*1\r\n$\r\n", KR_RESP_ERR_BULK_LEN, "invalid bulk length"),
    BAD("*1\r\n$-1\r\n", KR_RESP_ERR_BULK_LEN, "invalid bulk length"),
    BAD("*1\r\n$-0\r\n", KR_RESP_ERR_BULK_LEN, "invalid bulk length"),
    BAD("*1\r\n$03\r\nabc\r\n", KR_RESP_ERR_BULK_LEN, "invalid bulk length"),
    BAD("*1\r\n$3 \r\nabc\r\n", KR_RESP_ERR_BULK_LEN, "invalid bulk length"),
    BAD("*1\r\n$9223372036854775807\r\n", KR_RESP_ERR_BULK_LEN, "invalid bulk length"),
    BAD("*2\r\n$1\r\na\r\n$1x\r\n", KR_RESP_ERR_BULK_LEN, "invalid bulk length"),
    /* the type byte of an argument; '\r', '\n' and NUL are written as spaces */
    BAD("*1\r\n:1\r\n", KR_RESP_ERR_EXPECTED_DOLLAR, "expected '$', got ':'"),
    BAD("*1\r\n*1\r\n", KR_RESP_ERR_EXPECTED_DOLLAR, "expected '$', got '*'"),
    BAD("*1\r\n\r\n", KR_RESP_ERR_EXPECTED_DOLLAR, "expected '$', got ' '"),
    BAD("*1\r\n\n\r\n", KR_RESP_ERR_EXPECTED_DOLLAR, "expected '$', got ' '"),
    BAD("*1\r\n\0\r\n", KR_RESP_ERR_EXPECTED_DOLLAR, "expected '$', got ' '"),
    BAD("*2\r\n$1\r\nabcd\r\n", KR_RESP_ERR_EXPECTED_DOLLAR, "expected '$', got 'd'"),
    BAD("*1\r\n\xff\r\n", KR_RESP_ERR_EXPECTED_DOLLAR, "expected '$', got '\xff'"),
    /* quotes */
    BAD("ping \"\r\n", KR_RESP_ERR_UNBALANCED_QUOTES, "unbalanced quotes in request"),
    BAD("ping 'a\r\n", KR_RESP_ERR_UNBALANCED_QUOTES, "unbalanced quotes in request"),
    BAD("ping \"a\"b\r\n", KR_RESP_ERR_UNBALANCED_QUOTES, "unbalanced quotes in request"),
    BAD("ping 'a'b\r\n", KR_RESP_ERR_UNBALANCED_QUOTES, "unbalanced quotes in request"),
    BAD("ping \"a\\\"\r\n", KR_RESP_ERR_UNBALANCED_QUOTES, "unbalanced quotes in request"),
    BAD("ping \"a\\\r\n", KR_RESP_ERR_UNBALANCED_QUOTES, "unbalanced quotes in request"),
    BAD("ping 'a\\'\r\n", KR_RESP_ERR_UNBALANCED_QUOTES, "unbalanced quotes in request"),
    BAD("ping \"a\0\"\r\n", KR_RESP_ERR_UNBALANCED_QUOTES, "unbalanced quotes in request"),
};

static void check_bad(const struct bad_case *bc, size_t idx)
{
    struct res whole = parse_fresh(bc->in, bc->n, CAP);
    cr_assert_eq(whole.rc, bc->rc, "case %zu: rc %d", idx, whole.rc);
    char reply[64];
    size_t rl = kr_resp_error_reply(whole.rc, whole.got, reply, sizeof(reply));
    cr_assert_eq(rl, strlen(bc->reply), "case %zu: reply length %zu", idx, rl);
    cr_assert(memcmp(reply, bc->reply, rl) == 0, "case %zu: reply %.*s", idx, (int)rl, reply);

    /* a prefix only ever asks for more or gives the same error */
    for (size_t k = 0; k < bc->n; k++) {
        struct res r = parse_fresh(bc->in, k, CAP);
        cr_assert(r.rc == KR_RESP_NEED_MORE || same(&r, &whole), "case %zu prefix %zu: rc %d",
                  idx, k, r.rc);
    }
    struct res g[4];
    size_t ng = feed_all_ways(bc->in, bc->n, g, 4);
    cr_assert_eq(ng, 1, "case %zu", idx);
    cr_assert_eq(g[0].rc, bc->rc, "case %zu streamed", idx);
}

Test(parse, every_malformed_request_has_its_redis_error)
{
    for (size_t i = 0; i < NELEM(bad_cases); i++)
        check_bad(&bad_cases[i], i);
}

Test(parse, error_reply_needs_room_and_names_every_code)
{
    static const struct {
        int rc;
        const char *text;
    } codes[] = {
        {KR_RESP_ERR_MBULK_LEN, "invalid multibulk length"},
        {KR_RESP_ERR_BULK_LEN, "invalid bulk length"},
        {KR_RESP_ERR_EXPECTED_DOLLAR, "expected '$', got 'x'"},
        {KR_RESP_ERR_UNBALANCED_QUOTES, "unbalanced quotes in request"},
        {KR_RESP_ERR_INLINE_TOO_BIG, "too big inline request"},
        {KR_RESP_ERR_MBULK_COUNT_TOO_BIG, "too big mbulk count string"},
        {KR_RESP_ERR_BULK_COUNT_TOO_BIG, "too big bulk count string"},
    };
    for (size_t i = 0; i < NELEM(codes); i++) {
        char want[96], out[64];
        int wl = snprintf(want, sizeof(want), "-ERR Protocol error: %s\r\n", codes[i].text);
        memset(out, '#', sizeof(out));
        size_t n = kr_resp_error_reply(codes[i].rc, 'x', out, (size_t)wl - 1);
        cr_assert_eq(n, (size_t)wl);
        cr_assert_eq(out[0], '#', "nothing written without room");
        n = kr_resp_error_reply(codes[i].rc, 'x', out, (size_t)wl);
        cr_assert_eq(n, (size_t)wl);
        cr_assert(memcmp(out, want, n) == 0, "%s", codes[i].text);
    }
}

/* ------------------------------------------------------------------ limits */

static char *repeat(const char *head, char c, size_t n, const char *tail, size_t *len)
{
    size_t hl = strlen(head), tl = strlen(tail);
    char *b = malloc(hl + n + tl);
    cr_assert_not_null(b);
    memcpy(b, head, hl);
    memset(b + hl, c, n);
    memcpy(b + hl + n, tail, tl);
    *len = hl + n + tl;
    return b;
}

Test(limits, bulk_length_at_and_past_max_bulk_bytes)
{
    size_t n;
    char *in = repeat("*1\r\n$64\r\n", 'a', 64, "\r\n", &n);
    struct res r = parse_fresh(in, n, CAP);
    cr_assert_eq(r.rc, KR_RESP_OK);
    cr_assert_eq(r.lens[0], 64);
    free(in);
    /* over the limit: refused as soon as the count line is complete */
    r = parse_fresh(S("*1\r\n$65\r\n"), CAP);
    cr_assert_eq(r.rc, KR_RESP_ERR_BULK_LEN);
    r = parse_fresh(S("*1\r\n$65\r"), CAP);
    cr_assert_eq(r.rc, KR_RESP_NEED_MORE);
}

Test(limits, argument_count_at_and_past_max_args)
{
    char buf[256];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "*8\r\n");
    for (int i = 0; i < 8; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "$1\r\n%c\r\n", 'a' + i);
    struct res r = parse_fresh(buf, n, CAP);
    cr_assert_eq(r.rc, KR_RESP_OK);
    cr_assert_eq(r.argc, 8);
    cr_assert_eq(r.args[7][0], 'h');
    r = parse_fresh(S("*9\r\n"), CAP);
    cr_assert_eq(r.rc, KR_RESP_ERR_MBULK_LEN);
    /* the contract's 1M: *1048576 passes the count check, one more does not */
    struct kr_resp_limits big = lim;
    big.max_args = 1024 * 1024;
    struct kr_resp_arg argv[1];
    struct kr_resp_parser req;
    size_t consumed;
    kr_resp_parser_init(&req);
    cr_assert_eq(kr_resp_parse(S("*1048576\r\n"), &big, argv, 1, &req, &consumed),
                 KR_RESP_ARGV_FULL);
    cr_assert_eq(req.argc, 1048576);
    kr_resp_parser_init(&req);
    cr_assert_eq(kr_resp_parse(S("*1048577\r\n"), &big, argv, 1, &req, &consumed),
                 KR_RESP_ERR_MBULK_LEN);
    /* inline: eight words pass, nine are too big */
    r = parse_fresh(S("a b c d e f g h\r\n"), CAP);
    cr_assert_eq(r.rc, KR_RESP_OK);
    cr_assert_eq(r.argc, 8);
    r = parse_fresh(S("a b c d e f g h i\r\n"), CAP);
    cr_assert_eq(r.rc, KR_RESP_ERR_INLINE_TOO_BIG);
}

Test(limits, inline_line_at_and_past_max_inline_bytes)
{
    size_t n;
    /* 32 bytes before the '\n' ('\r' counted): accepted */
    char *in = repeat("", 'a', 31, "\r\n", &n);
    struct res r = parse_fresh(in, n, CAP);
    cr_assert_eq(r.rc, KR_RESP_OK);
    cr_assert_eq(r.lens[0], 31);
    free(in);
    in = repeat("", 'a', 32, "\n", &n);
    r = parse_fresh(in, n, CAP);
    cr_assert_eq(r.rc, KR_RESP_OK);
    cr_assert_eq(r.lens[0], 32);
    free(in);
    /* 33: too big, whether its end has arrived or not */
    in = repeat("", 'a', 32, "\r\n", &n);
    r = parse_fresh(in, n, CAP);
    cr_assert_eq(r.rc, KR_RESP_ERR_INLINE_TOO_BIG);
    r = parse_fresh(in, 33, CAP);
    cr_assert_eq(r.rc, KR_RESP_ERR_INLINE_TOO_BIG);
    r = parse_fresh(in, 32, CAP);
    cr_assert_eq(r.rc, KR_RESP_NEED_MORE);
    free(in);
}

Test(limits, count_lines_at_and_past_max_inline_bytes)
{
    size_t n;
    /* a multibulk count line of 32 bytes before its '\r' is read (and here invalid) */
    char *in = repeat("*1", ' ', 30, "\r\n", &n);
    cr_assert_eq(parse_fresh(in, n, CAP).rc, KR_RESP_ERR_MBULK_LEN);
    free(in);
    in = repeat("*1", ' ', 31, "\r\n", &n);
    cr_assert_eq(parse_fresh(in, n, CAP).rc, KR_RESP_ERR_MBULK_COUNT_TOO_BIG);
    cr_assert_eq(parse_fresh(in, 32, CAP).rc, KR_RESP_NEED_MORE);
    cr_assert_eq(parse_fresh(in, 33, CAP).rc, KR_RESP_ERR_MBULK_COUNT_TOO_BIG);
    free(in);
    /* the same for a bulk count line, measured from its '$' */
    in = repeat("*1\r\n$1", ' ', 30, "\r\n", &n);
    cr_assert_eq(parse_fresh(in, n, CAP).rc, KR_RESP_ERR_BULK_LEN);
    free(in);
    in = repeat("*1\r\n$1", ' ', 31, "\r\n", &n);
    cr_assert_eq(parse_fresh(in, n, CAP).rc, KR_RESP_ERR_BULK_COUNT_TOO_BIG);
    cr_assert_eq(parse_fresh(in, 36, CAP).rc, KR_RESP_NEED_MORE);
    cr_assert_eq(parse_fresh(in, 37, CAP).rc, KR_RESP_ERR_BULK_COUNT_TOO_BIG);
    free(in);
    /* a long bulk is no long line: 64 bytes of data without '\r' */
    in = repeat("*1\r\n$64\r\n", 'z', 64, "\r\n", &n);
    cr_assert_eq(parse_fresh(in, n, CAP).rc, KR_RESP_OK);
    free(in);
}

Test(limits, every_error_streamed_byte_by_byte_matches_whole)
{
    size_t n;
    char *in = repeat("PING ", 'a', 40, "\r\n", &n);
    struct res g[2];
    cr_assert_eq(feed_all_ways(in, n, g, 2), 1);
    cr_assert_eq(g[0].rc, KR_RESP_ERR_INLINE_TOO_BIG);
    free(in);
    in = repeat("*2\r\n$1\r\na\r\n$", '1', 40, "\r\n", &n);
    cr_assert_eq(feed_all_ways(in, n, g, 2), 1);
    cr_assert_eq(g[0].rc, KR_RESP_ERR_BULK_COUNT_TOO_BIG);
    free(in);
}

/* ------------------------------------------------------------------ argv growth */

Test(argv, too_small_argv_is_reported_with_the_count_and_resumes)
{
    static const char in[] = "*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n";
    struct kr_resp_arg argv[3];
    struct kr_resp_parser req;
    size_t consumed = 99;
    kr_resp_parser_init(&req);
    cr_assert_eq(kr_resp_parse(in, 6, &lim, argv, 2, &req, &consumed), KR_RESP_ARGV_FULL);
    cr_assert_eq(req.argc, 3);
    cr_assert_eq(consumed, 0);
    cr_assert_eq(kr_resp_parse(in, 12, &lim, argv, 3, &req, &consumed), KR_RESP_NEED_MORE);
    cr_assert_eq(kr_resp_parse(in, sizeof(in) - 1, &lim, argv, 3, &req, &consumed), KR_RESP_OK);
    cr_assert_eq(req.argc, 3);
    cr_assert_eq(consumed, sizeof(in) - 1);
    cr_assert(argv[2].len == 1 && argv[2].p[0] == 'c');
    /* an empty argv is enough for an empty request */
    kr_resp_parser_init(&req);
    cr_assert_eq(kr_resp_parse(S("*0\r\n"), &lim, NULL, 0, &req, &consumed), KR_RESP_OK);
    cr_assert_eq(req.argc, 0);
    cr_assert_eq(kr_resp_parse(S("\r\n"), &lim, NULL, 0, &req, &consumed), KR_RESP_OK);
}

Test(argv, inline_request_with_more_words_than_argv)
{
    static const char in[] = "SUBSCRIBE a b c\r\n";
    struct kr_resp_arg argv[4];
    struct kr_resp_parser req;
    size_t consumed;
    kr_resp_parser_init(&req);
    cr_assert_eq(kr_resp_parse(S(in), &lim, argv, 1, &req, &consumed), KR_RESP_ARGV_FULL);
    cr_assert_eq(req.argc, 4);
    cr_assert_eq(kr_resp_parse(S(in), &lim, argv, 4, &req, &consumed), KR_RESP_OK);
    cr_assert_eq(req.argc, 4);
    cr_assert(req.is_inline);
    cr_assert_not(req.quoted);
    cr_assert(argv[3].len == 1 && argv[3].p == in + 14);
}

Test(argv, moved_buffer_rebases_stored_arguments)
{
    static const char in[] = "*2\r\n$3\r\nabc\r\n$3\r\ndef\r\n";
    struct kr_resp_arg argv[2];
    struct kr_resp_parser req;
    size_t consumed;
    char *a = dup_exact(in, 16), *b = dup_exact(in, sizeof(in) - 1);
    kr_resp_parser_init(&req);
    cr_assert_eq(kr_resp_parse(a, 16, &lim, argv, 2, &req, &consumed), KR_RESP_NEED_MORE);
    cr_assert_eq(argv[0].p, a + 8);
    free(a);
    cr_assert_eq(kr_resp_parse(b, sizeof(in) - 1, &lim, argv, 2, &req, &consumed), KR_RESP_OK);
    cr_assert_eq(argv[0].p, b + 8);
    cr_assert_eq(argv[1].p, b + 17);
    free(b);
}

/* ------------------------------------------------------------------ unquote */

Test(unquote, in_place_decoding)
{
    char line[] = "SET \"a\\x41\\n\" 'b\\'c' plain";
    struct kr_resp_arg argv[4];
    struct kr_resp_parser req;
    size_t consumed;
    char in[64];
    size_t n = (size_t)snprintf(in, sizeof(in), "%s\r\n", line);
    kr_resp_parser_init(&req);
    cr_assert_eq(kr_resp_parse(in, n, &lim, argv, 4, &req, &consumed), KR_RESP_OK);
    cr_assert_eq(req.argc, 4);
    cr_assert(req.quoted);
    size_t l = kr_resp_unquote(argv[1].p, argv[1].len, (char *)argv[1].p);
    cr_assert(l == 3 && memcmp(argv[1].p, "aA\n", 3) == 0);
    l = kr_resp_unquote(argv[2].p, argv[2].len, (char *)argv[2].p);
    cr_assert(l == 3 && memcmp(argv[2].p, "b'c", 3) == 0);
    l = kr_resp_unquote(argv[3].p, argv[3].len, (char *)argv[3].p);
    cr_assert(l == 5 && memcmp(argv[3].p, "plain", 5) == 0);
    cr_assert_eq(kr_resp_unquote("", 0, in), 0);
}

/* ------------------------------------------------------------------ command names */

Test(cmd, case_insensitive_exact_match)
{
    cr_assert(kr_resp_cmd_is(S("subscribe"), "SUBSCRIBE"));
    cr_assert(kr_resp_cmd_is(S("SubScribe"), "SUBSCRIBE"));
    cr_assert(kr_resp_cmd_is(S("kraken.publish"), "KRAKEN.PUBLISH"));
    cr_assert_not(kr_resp_cmd_is(S("subscrib"), "SUBSCRIBE"));
    cr_assert_not(kr_resp_cmd_is(S("subscribex"), "SUBSCRIBE"));
    cr_assert_not(kr_resp_cmd_is(S("sub\0cribe"), "SUBSCRIBE"));
    cr_assert_not(kr_resp_cmd_is(S(""), "PING"));
    cr_assert(kr_resp_cmd_is(S(""), ""));
    cr_assert_not(kr_resp_cmd_is(S("{"), "["), "only letters fold");
    cr_assert_not(kr_resp_cmd_is(S("\xc9"), "\xe9"));
    static const char *const names[] = {"PING", "PUBLISH", "SUBSCRIBE"};
    cr_assert_eq(kr_resp_cmd_find(S("publish"), names, 3), 1);
    cr_assert_eq(kr_resp_cmd_find(S("Ping"), names, 3), 0);
    cr_assert_eq(kr_resp_cmd_find(S("pin"), names, 3), -1);
}

/* ------------------------------------------------------------------ formatters */

/* Runs a formatter twice: with one byte too few (must return the size, write nothing) and
 * with room (must write exactly want). */
#define CHECK_FMT(want, call_with_out_cap)                                                 \
    do {                                                                                   \
        char out_[256], *out = out_;                                                       \
        size_t wl_ = sizeof(want) - 1, cap;                                                \
        memset(out_, '#', sizeof(out_));                                                   \
        cap = wl_ - 1;                                                                     \
        size_t n_ = (call_with_out_cap);                                                   \
        cr_assert_eq(n_, wl_, "%s: size %zu, want %zu", #call_with_out_cap, n_, wl_);      \
        for (size_t i_ = 0; i_ < sizeof(out_); i_++)                                       \
            cr_assert_eq(out_[i_], '#', "%s wrote without room", #call_with_out_cap);      \
        cap = sizeof(out_);                                                                \
        n_ = (call_with_out_cap);                                                          \
        cr_assert_eq(n_, wl_);                                                             \
        cr_assert(memcmp(out_, want, wl_) == 0, "%s: got %.*s", #call_with_out_cap,        \
                  (int)wl_, out_);                                                         \
        cr_assert_eq(out_[wl_], '#', "%s wrote past its reply", #call_with_out_cap);       \
    } while (0)

Test(fmt, simple_error_integer)
{
    CHECK_FMT("+OK\r\n", kr_resp_fmt_simple(out, cap, S("OK")));
    CHECK_FMT("+PONG\r\n", kr_resp_fmt_simple(out, cap, S("PONG")));
    CHECK_FMT("+\r\n", kr_resp_fmt_simple(out, cap, S("")));
    CHECK_FMT("-ERR unknown command 'x'\r\n",
              kr_resp_fmt_error(out, cap, S("ERR unknown command 'x'")));
    CHECK_FMT("-ERR a b  c\r\n", kr_resp_fmt_error(out, cap, S("ERR a\nb\r\nc")));
    CHECK_FMT(":0\r\n", kr_resp_fmt_int(out, cap, 0));
    CHECK_FMT(":1\r\n", kr_resp_fmt_int(out, cap, 1));
    CHECK_FMT(":-1\r\n", kr_resp_fmt_int(out, cap, -1));
    CHECK_FMT(":1234567890\r\n", kr_resp_fmt_int(out, cap, 1234567890));
    CHECK_FMT(":9223372036854775807\r\n", kr_resp_fmt_int(out, cap, INT64_MAX));
    CHECK_FMT(":-9223372036854775808\r\n", kr_resp_fmt_int(out, cap, INT64_MIN));
}

Test(fmt, bulk_null_and_aggregate_headers)
{
    CHECK_FMT("$5\r\nhello\r\n", kr_resp_fmt_bulk(out, cap, S("hello")));
    CHECK_FMT("$0\r\n\r\n", kr_resp_fmt_bulk(out, cap, S("")));
    CHECK_FMT("$4\r\n\r\n\0\n\r\n", kr_resp_fmt_bulk(out, cap, S("\r\n\0\n")));
    CHECK_FMT("$10\r\n0123456789\r\n", kr_resp_fmt_bulk(out, cap, S("0123456789")));
    CHECK_FMT("$0\r\n", kr_resp_fmt_bulk_header(out, cap, 0));
    CHECK_FMT("$123456\r\n", kr_resp_fmt_bulk_header(out, cap, 123456));
    CHECK_FMT("$-1\r\n", kr_resp_fmt_null(out, cap, 2));
    CHECK_FMT("_\r\n", kr_resp_fmt_null(out, cap, 3));
    CHECK_FMT("*-1\r\n", kr_resp_fmt_null_array(out, cap, 2));
    CHECK_FMT("_\r\n", kr_resp_fmt_null_array(out, cap, 3));
    CHECK_FMT("*0\r\n", kr_resp_fmt_array(out, cap, 0));
    CHECK_FMT("*3\r\n", kr_resp_fmt_array(out, cap, 3));
    CHECK_FMT("*1048576\r\n", kr_resp_fmt_array(out, cap, 1048576));
    CHECK_FMT("%7\r\n", kr_resp_fmt_map(out, cap, 3, 7));
    CHECK_FMT("*14\r\n", kr_resp_fmt_map(out, cap, 2, 7));
    CHECK_FMT(">3\r\n", kr_resp_fmt_push(out, cap, 3, 3));
    CHECK_FMT("*3\r\n", kr_resp_fmt_push(out, cap, 2, 3));
}

Test(fmt, pubsub_message_head_resp2_and_resp3)
{
    CHECK_FMT("*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\n",
              kr_resp_fmt_message_head(out, cap, 2, "message", S("ch"), 5));
    CHECK_FMT(">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\n",
              kr_resp_fmt_message_head(out, cap, 3, "message", S("ch"), 5));
    CHECK_FMT("*3\r\n$8\r\nsmessage\r\n$10\r\ntask:12345\r\n$0\r\n",
              kr_resp_fmt_message_head(out, cap, 2, "smessage", S("task:12345"), 0));
    CHECK_FMT("*3\r\n$7\r\nmessage\r\n$3\r\na\r\n\r\n$1000000\r\n",
              kr_resp_fmt_message_head(out, cap, 2, "message", S("a\r\n"), 1000000));
    /* head + payload + "\r\n" is the whole frame Redis sends */
    char frame[64];
    size_t n = kr_resp_fmt_message_head(frame, sizeof(frame), 2, "message", S("ch"), 5);
    memcpy(frame + n, "hello\r\n", 7);
    static const char redis[] = "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
    cr_assert_eq(n + 7, sizeof(redis) - 1);
    cr_assert(memcmp(frame, redis, n + 7) == 0);
}

Test(fmt, pubsub_confirmations_resp2_and_resp3)
{
    CHECK_FMT("*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
              kr_resp_fmt_pubsub_count(out, cap, 2, "subscribe", S("ch"), 1));
    CHECK_FMT(">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
              kr_resp_fmt_pubsub_count(out, cap, 3, "subscribe", S("ch"), 1));
    CHECK_FMT("*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n",
              kr_resp_fmt_pubsub_count(out, cap, 2, "unsubscribe", S("a"), 0));
    CHECK_FMT("*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n",
              kr_resp_fmt_pubsub_count(out, cap, 2, "unsubscribe", NULL, 0, 0));
    CHECK_FMT(">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n",
              kr_resp_fmt_pubsub_count(out, cap, 3, "unsubscribe", NULL, 0, 0));
    CHECK_FMT("*3\r\n$10\r\nssubscribe\r\n$1\r\nx\r\n:12\r\n",
              kr_resp_fmt_pubsub_count(out, cap, 2, "ssubscribe", S("x"), 12));
}
