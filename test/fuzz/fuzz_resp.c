/* libFuzzer target for the RESP codec.
 *
 * The first input byte picks a set of limits and an argv size; the rest is fed
 * - to kr_resp_parse whole (fresh state), then as every prefix (each in an exactly-sized heap
 *   copy, so the address sanitizer sees any read past the bytes given): a prefix shorter
 *   than what the whole request consumed must only ask for more (or, past the point that
 *   decides it, give the same error or argv answer), a longer one must give the same answer;
 * - the same prefixes again through one resumed state (every call in a new copy, so the
 *   argv rebasing is exercised): the final answer must equal the fresh one;
 * - as a stream, whole and in chunks of several sizes (1 = byte by byte), with argv grown
 *   on ARGV_FULL, which must yield the same sequence of requests and the same final error;
 * - every argument of an OK request is checked to lie inside the request, and quoted inline
 *   arguments are decoded (in place, in a copy) and checked against an independent decoder;
 * - the formatters, fed numbers and bytes from the input, are checked against snprintf.
 * Any inconsistency aborts. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_resp.h"
#include "kr_fuzz.h"


/* Prefix and chunk checks copy the input many times; keep them to inputs of this size. */
#define KR_FUZZ_MAX_SPLIT 2048
#define KR_FUZZ_MAX_ARGS 64

static const struct kr_resp_limits kr_fuzz_limits[4] = {
    {.max_bulk_bytes = 64, .max_args = 8, .max_inline_bytes = 32},
    {.max_bulk_bytes = 2, .max_args = 2, .max_inline_bytes = 4},
    {.max_bulk_bytes = 4096, .max_args = KR_FUZZ_MAX_ARGS, .max_inline_bytes = 1024},
    {.max_bulk_bytes = UINT64_MAX, .max_args = KR_FUZZ_MAX_ARGS, .max_inline_bytes = 65536},
};

static char *kr_fuzz_dup(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    KR_FUZZ_CHECK(p != NULL);
    if (n)
        memcpy(p, s, n);
    return p;
}

/* One parse result with the arguments as offsets, so results over copies compare. */
struct kr_fuzz_res {
    int rc;
    size_t at, consumed, argc;
    int is_inline, quoted;
    unsigned char got;
    size_t off[KR_FUZZ_MAX_ARGS], len[KR_FUZZ_MAX_ARGS];
};

static int kr_fuzz_hex(char c)
{
    return c && strchr("0123456789abcdefABCDEF", c) != NULL;
}

/* An independent sdssplitargs token decoder over a raw token (a valid one). */
static size_t kr_fuzz_decode(const char *r, size_t n, char *out)
{
    size_t i = 0, o = 0;
    int q = 0; /* 0, '"' or '\'' */
    while (i < n) {
        char c = r[i];
        if (!q) {
            if (c == '"' || c == '\'')
                q = c;
            else
                out[o++] = c;
            i++;
        } else if (q == '"') {
            if (c == '"')
                break;
            if (c == '\\' && i + 3 < n && r[i + 1] == 'x' && kr_fuzz_hex(r[i + 2]) &&
                kr_fuzz_hex(r[i + 3])) {
                char hx[3] = {r[i + 2], r[i + 3], 0};
                out[o++] = (char)strtol(hx, NULL, 16);
                i += 4;
            } else if (c == '\\' && i + 1 < n) {
                char e = r[i + 1];
                out[o++] = e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : e == 'b' ? '\b'
                           : e == 'a' ? '\a' : e;
                i += 2;
            } else {
                out[o++] = c;
                i++;
            }
        } else {
            if (c == '\'')
                break;
            if (c == '\\' && i + 1 < n && r[i + 1] == '\'') {
                out[o++] = '\'';
                i += 2;
            } else {
                out[o++] = c;
                i++;
            }
        }
    }
    return o;
}

static void kr_fuzz_capture(struct kr_fuzz_res *r, int rc, size_t consumed,
                            const struct kr_resp_parser *req, const struct kr_resp_arg *argv,
                            size_t argv_cap, const char *b, size_t n,
                            const struct kr_resp_limits *lim)
{
    memset(r, 0, sizeof(*r));
    r->rc = rc;
    r->consumed = consumed;
    if (rc == KR_RESP_OK) {
        KR_FUZZ_CHECK(consumed > 0 && consumed <= n);
        KR_FUZZ_CHECK(req->argc <= argv_cap && req->argc <= lim->max_args);
        r->argc = req->argc;
        r->is_inline = req->is_inline;
        r->quoted = req->quoted;
        KR_FUZZ_CHECK(r->is_inline == (b[0] != '*'));
        if (r->is_inline) {
            KR_FUZZ_CHECK(b[consumed - 1] == '\n');
            KR_FUZZ_CHECK(memchr(b, '\n', consumed - 1) == NULL);
        }
        for (size_t i = 0; i < r->argc; i++) {
            KR_FUZZ_CHECK(argv[i].p >= b && argv[i].p + argv[i].len <= b + consumed);
            r->off[i] = (size_t)(argv[i].p - b);
            r->len[i] = argv[i].len;
            if (!r->is_inline) {
                KR_FUZZ_CHECK(argv[i].len <= lim->max_bulk_bytes);
                KR_FUZZ_CHECK(r->off[i] >= 2 && argv[i].p[-2] == '\r'); /* the count line's end */
            } else {
                KR_FUZZ_CHECK(argv[i].len > 0);
                char *copy = kr_fuzz_dup(argv[i].p, argv[i].len);
                char *want = malloc(argv[i].len);
                KR_FUZZ_CHECK(want != NULL);
                size_t dl = kr_resp_unquote(copy, argv[i].len, copy);
                size_t wl = kr_fuzz_decode(argv[i].p, argv[i].len, want);
                KR_FUZZ_CHECK(dl <= argv[i].len);
                if (!r->quoted)
                    KR_FUZZ_CHECK(dl == argv[i].len && memcmp(copy, argv[i].p, dl) == 0);
                KR_FUZZ_CHECK(dl == wl && memcmp(copy, want, dl) == 0);
                free(copy);
                free(want);
            }
        }
    } else if (rc == KR_RESP_NEED_MORE) {
        KR_FUZZ_CHECK(consumed == 0 || consumed > n);
    } else if (rc == KR_RESP_ARGV_FULL) {
        KR_FUZZ_CHECK(consumed == 0 && req->argc > argv_cap && req->argc <= lim->max_args);
        r->argc = req->argc;
    } else {
        KR_FUZZ_CHECK(rc >= KR_RESP_ERR_BULK_COUNT_TOO_BIG && rc <= KR_RESP_ERR_MBULK_LEN);
        KR_FUZZ_CHECK(consumed <= n);
        if (rc == KR_RESP_ERR_EXPECTED_DOLLAR)
            r->got = req->got;
        char reply[64];
        size_t rl = kr_resp_error_reply(rc, r->got, reply, sizeof(reply));
        KR_FUZZ_CHECK(rl <= sizeof(reply) && rl > 23);
        KR_FUZZ_CHECK(memcmp(reply, "-ERR Protocol error: ", 21) == 0);
        KR_FUZZ_CHECK(memcmp(reply + rl - 2, "\r\n", 2) == 0);
        KR_FUZZ_CHECK(memchr(reply, '\r', rl - 2) == NULL && memchr(reply, '\n', rl - 2) == NULL);
    }
}

static struct kr_fuzz_res kr_fuzz_parse(const char *s, size_t n, const struct kr_resp_limits *lim,
                                        size_t argv_cap)
{
    struct kr_fuzz_res r;
    struct kr_resp_arg argv[KR_FUZZ_MAX_ARGS];
    struct kr_resp_parser req;
    size_t consumed = 0xdeadbeef;
    char *b = kr_fuzz_dup(s, n);
    kr_resp_parser_init(&req);
    int rc = kr_resp_parse(b, n, lim, argv, argv_cap, &req, &consumed);
    kr_fuzz_capture(&r, rc, consumed, &req, argv, argv_cap, b, n, lim);
    free(b);
    return r;
}

static int kr_fuzz_same(const struct kr_fuzz_res *a, const struct kr_fuzz_res *b)
{
    if (a->rc != b->rc || a->consumed != b->consumed || a->argc != b->argc ||
        a->is_inline != b->is_inline || a->quoted != b->quoted || a->got != b->got)
        return 0;
    if (a->rc != KR_RESP_OK)
        return 1;
    for (size_t i = 0; i < a->argc; i++)
        if (a->off[i] != b->off[i] || a->len[i] != b->len[i])
            return 0;
    return 1;
}

static void kr_fuzz_prefixes(const char *s, size_t n, const struct kr_resp_limits *lim,
                             size_t argv_cap)
{
    struct kr_fuzz_res whole = kr_fuzz_parse(s, n, lim, argv_cap);
    int final = whole.rc != KR_RESP_NEED_MORE && whole.rc != KR_RESP_ARGV_FULL;
    for (size_t k = 0; k < n; k++) {
        struct kr_fuzz_res r = kr_fuzz_parse(s, k, lim, argv_cap);
        if (final && k >= whole.consumed) {
            KR_FUZZ_CHECK(kr_fuzz_same(&r, &whole));
        } else if (r.rc != KR_RESP_NEED_MORE) {
            /* a prefix may already tell an error or the argv size: then it is the answer */
            KR_FUZZ_CHECK(r.rc != KR_RESP_OK);
            KR_FUZZ_CHECK(kr_fuzz_same(&r, &whole));
        } else if (r.consumed != 0 && final) {
            /* the end of a bulk, once known, is within what the whole request uses */
            KR_FUZZ_CHECK(whole.rc < 0 || r.consumed <= whole.consumed);
        }
    }

    /* one state resumed over every prefix, each in a new copy, agrees with the fresh parse */
    struct kr_resp_arg argv[KR_FUZZ_MAX_ARGS];
    struct kr_resp_parser req;
    size_t consumed;
    kr_resp_parser_init(&req);
    for (size_t k = 0; k <= n; k++) {
        char *b = kr_fuzz_dup(s, k);
        int rc = kr_resp_parse(b, k, lim, argv, argv_cap, &req, &consumed);
        if (rc == KR_RESP_NEED_MORE) {
            free(b);
            continue;
        }
        struct kr_fuzz_res r;
        kr_fuzz_capture(&r, rc, consumed, &req, argv, argv_cap, b, k, lim);
        struct kr_fuzz_res fresh = kr_fuzz_parse(s, k, lim, argv_cap);
        KR_FUZZ_CHECK(kr_fuzz_same(&r, &fresh));
        free(b);
        if (rc != KR_RESP_ARGV_FULL)
            break; /* the request is over (OK or error); state is reset */
    }
}

/* Feed s[0..n) in chunks like a connection: one state kept across reads, the unparsed tail
 * copied anew each call, argv grown on ARGV_FULL. Returns the number of results. */
static size_t kr_fuzz_stream(const char *s, size_t n, size_t chunk,
                             const struct kr_resp_limits *lim, struct kr_fuzz_res *out)
{
    struct kr_resp_arg argv[KR_FUZZ_MAX_ARGS];
    struct kr_resp_parser req;
    size_t have = 0, off = 0, nr = 0, cap = 1;
    kr_resp_parser_init(&req);
    while (have < n) {
        have = have + chunk > n ? n : have + chunk;
        while (off < have) {
            size_t avail = have - off, used = 0;
            char *b = kr_fuzz_dup(s + off, avail);
            int rc = kr_resp_parse(b, avail, lim, argv, cap, &req, &used);
            if (rc == KR_RESP_NEED_MORE) {
                KR_FUZZ_CHECK(used == 0 || used > avail);
                free(b);
                break;
            }
            if (rc == KR_RESP_ARGV_FULL) {
                KR_FUZZ_CHECK(req.argc > cap && req.argc <= KR_FUZZ_MAX_ARGS);
                cap = req.argc;
                free(b);
                continue;
            }
            kr_fuzz_capture(&out[nr], rc, used, &req, argv, cap, b, avail, lim);
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

static void kr_fuzz_streams(const char *s, size_t n, const struct kr_resp_limits *lim)
{
    if (n == 0)
        return;
    struct kr_fuzz_res *a = calloc(n + 1, sizeof(*a));
    struct kr_fuzz_res *b = calloc(n + 1, sizeof(*b));
    KR_FUZZ_CHECK(a && b);
    size_t na = kr_fuzz_stream(s, n, n, lim, a);
    const size_t chunks[] = {1, 2, 3, 7, 64};
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        if (chunks[i] >= n)
            break;
        size_t nb = kr_fuzz_stream(s, n, chunks[i], lim, b);
        KR_FUZZ_CHECK(nb == na);
        for (size_t j = 0; j < na; j++)
            KR_FUZZ_CHECK(a[j].at == b[j].at && kr_fuzz_same(&a[j], &b[j]));
    }
    free(a);
    free(b);
}

/* ------------------------------------------------------------------ formatters */

static void kr_fuzz_formatters(const uint8_t *d, size_t n)
{
    if (n < 9)
        return;
    int64_t v;
    memcpy(&v, d, sizeof(v));
    int proto = (d[8] & 1) ? 3 : 2;
    const char *p = (const char *)d + 9;
    size_t pl = n - 9 > 200 ? 200 : n - 9;
    char out[512], want[512];
    int wl;

    size_t got = kr_resp_fmt_int(out, sizeof(out), v);
    wl = snprintf(want, sizeof(want), ":%" PRId64 "\r\n", v);
    KR_FUZZ_CHECK(got == (size_t)wl && memcmp(out, want, got) == 0);
    KR_FUZZ_CHECK(kr_resp_fmt_int(out, got - 1, v) == got);

    size_t len = (size_t)((uint64_t)v >> 1);
    got = kr_resp_fmt_bulk_header(out, sizeof(out), len);
    wl = snprintf(want, sizeof(want), "$%zu\r\n", len);
    KR_FUZZ_CHECK(got == (size_t)wl && memcmp(out, want, got) == 0);
    got = kr_resp_fmt_array(out, sizeof(out), len);
    KR_FUZZ_CHECK(got == (size_t)wl && out[0] == '*' && memcmp(out + 1, want + 1, got - 1) == 0);

    got = kr_resp_fmt_bulk(out, sizeof(out), p, pl);
    wl = snprintf(want, sizeof(want), "$%zu\r\n", pl);
    KR_FUZZ_CHECK(got == (size_t)wl + pl + 2);
    KR_FUZZ_CHECK(memcmp(out, want, (size_t)wl) == 0 && memcmp(out + wl, p, pl) == 0);
    KR_FUZZ_CHECK(memcmp(out + wl + pl, "\r\n", 2) == 0);

    got = kr_resp_fmt_error(out, sizeof(out), p, pl);
    KR_FUZZ_CHECK(got == pl + 3 && out[0] == '-');
    KR_FUZZ_CHECK(memchr(out, '\r', pl + 1) == NULL && memchr(out, '\n', pl + 1) == NULL);

    size_t chl = pl / 2;
    got = kr_resp_fmt_message_head(out, sizeof(out), proto, "message", p, chl, len);
    wl = snprintf(want, sizeof(want), "%c3\r\n$7\r\nmessage\r\n$%zu\r\n", proto == 3 ? '>' : '*',
                  chl);
    KR_FUZZ_CHECK(got > (size_t)wl + chl && memcmp(out, want, (size_t)wl) == 0);
    KR_FUZZ_CHECK(memcmp(out + wl, p, chl) == 0);
    char tail[32];
    int tl = snprintf(tail, sizeof(tail), "\r\n$%zu\r\n", len);
    KR_FUZZ_CHECK(got == (size_t)wl + chl + (size_t)tl);
    KR_FUZZ_CHECK(memcmp(out + wl + chl, tail, (size_t)tl) == 0);
    KR_FUZZ_CHECK(kr_resp_fmt_message_head(out, got - 1, proto, "message", p, chl, len) == got);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const struct kr_resp_limits *lim = &kr_fuzz_limits[data[0] & 3];
    size_t argv_cap = (data[0] >> 2) & 1 ? 1 : KR_FUZZ_MAX_ARGS;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;

    if (n <= KR_FUZZ_MAX_SPLIT) {
        kr_fuzz_prefixes(s, n, lim, argv_cap);
        kr_fuzz_streams(s, n, lim);
    } else {
        (void)kr_fuzz_parse(s, n, lim, argv_cap);
    }
    kr_fuzz_formatters(data + 1, n);
    return 0;
}
