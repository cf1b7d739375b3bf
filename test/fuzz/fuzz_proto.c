/* libFuzzer target for the protocol codec.
 *
 * The first input byte picks a set of limits; the rest is fed
 * - to kr_proto_parse whole, then as every prefix (each in an exactly-sized heap copy, so
 *   the address sanitizer sees any read past the bytes given): a prefix shorter than what
 *   the whole request consumed must only ask for more, a longer one must give the same
 *   answer;
 * - as a stream, whole and in chunks of several sizes (1 = byte by byte), which must yield
 *   the same sequence of requests and the same final error;
 * - to the publish, topic-list and retro block parsers, checking their results against
 *   each other and against simple independent re-checks.
 * Any inconsistency aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_proto.h"
#include "kr_fuzz.h"


/* Prefix and chunk checks copy the input many times; keep them to inputs of this size. */
#define KR_FUZZ_MAX_SPLIT 4096

static const struct kr_proto_limits kr_fuzz_limits[4] = {
    {.max_request_bytes = 4096, .max_message_bytes = 64, .max_line_bytes = 128,
     .max_topic_bytes = 16},
    {.max_request_bytes = 16, .max_message_bytes = 4, .max_line_bytes = 8, .max_topic_bytes = 2},
    {.max_request_bytes = 1 << 20, .max_message_bytes = 1 << 20, .max_line_bytes = 1024,
     .max_topic_bytes = 250},
    {.max_request_bytes = UINT64_MAX, .max_message_bytes = UINT64_MAX,
     .max_line_bytes = UINT32_MAX, .max_topic_bytes = UINT32_MAX},
};

static char *kr_fuzz_dup(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    KR_FUZZ_CHECK(p != NULL);
    if (n)
        memcpy(p, s, n);
    return p;
}

/* One parse result, with the data block as an offset so results of copies compare. */
struct kr_fuzz_res {
    int rc;
    size_t at, consumed;
    int type, noreply, has_data;
    size_t data_off, data_len;
};

static struct kr_fuzz_res kr_fuzz_parse(const char *s, size_t n, const struct kr_proto_limits *lim)
{
    struct kr_fuzz_res r;
    struct kr_request req;
    char *b = kr_fuzz_dup(s, n);
    memset(&r, 0, sizeof(r));
    r.consumed = 0xdeadbeef;
    r.rc = kr_proto_parse(b, n, lim, &req, &r.consumed);
    if (r.rc == KR_PROTO_OK) {
        KR_FUZZ_CHECK(r.consumed > 0 && r.consumed <= n);
        r.type = (int)req.type;
        r.noreply = req.noreply;
        r.has_data = req.data != NULL;
        KR_FUZZ_CHECK(r.noreply == 0 || r.noreply == 1);
        KR_FUZZ_CHECK(r.type >= KR_REQ_SUBSCRIBE && r.type <= KR_REQ_STATS);
        if (req.data) {
            KR_FUZZ_CHECK(req.data > b && req.data + req.data_len + 2 == b + r.consumed);
            KR_FUZZ_CHECK(memcmp(req.data + req.data_len, "\r\n", 2) == 0);
            r.data_off = (size_t)(req.data - b);
            r.data_len = req.data_len;
        } else {
            KR_FUZZ_CHECK(req.data_len == 0 && r.noreply == 0);
        }
    } else if (r.rc == KR_PROTO_NEED_MORE) {
        KR_FUZZ_CHECK(r.consumed == 0 || r.consumed > n);
    } else {
        KR_FUZZ_CHECK(r.rc >= KR_PERR_BAD_FORMAT && r.rc <= KR_PERR_UNKNOWN);
        KR_FUZZ_CHECK(r.consumed <= n);
        const char *reply = kr_proto_error_reply(r.rc);
        size_t rl = strlen(reply);
        KR_FUZZ_CHECK(rl >= 2 && memcmp(reply + rl - 2, "\r\n", 2) == 0);
    }
    free(b);
    return r;
}

static int kr_fuzz_same(const struct kr_fuzz_res *a, const struct kr_fuzz_res *b)
{
    return a->rc == b->rc && a->consumed == b->consumed && a->type == b->type &&
           a->noreply == b->noreply && a->has_data == b->has_data && a->data_off == b->data_off &&
           a->data_len == b->data_len;
}

static void kr_fuzz_prefixes(const char *s, size_t n, const struct kr_proto_limits *lim)
{
    struct kr_fuzz_res whole = kr_fuzz_parse(s, n, lim);
    for (size_t k = 0; k < n; k++) {
        struct kr_fuzz_res r = kr_fuzz_parse(s, k, lim);
        if (whole.rc != KR_PROTO_NEED_MORE && k >= whole.consumed) {
            KR_FUZZ_CHECK(kr_fuzz_same(&r, &whole));
        } else {
            KR_FUZZ_CHECK(r.rc == KR_PROTO_NEED_MORE);
            /* a total, once known, is what the whole request turns out to use */
            if (r.consumed != 0)
                KR_FUZZ_CHECK(r.consumed == whole.consumed);
        }
    }
}

/* Feed s[0..n) in chunks like a connection keeping its unparsed tail; returns the number of
 * results (requests, then possibly one error). */
static size_t kr_fuzz_stream(const char *s, size_t n, size_t chunk,
                             const struct kr_proto_limits *lim, struct kr_fuzz_res *out)
{
    size_t have = 0, off = 0, nr = 0;
    while (have < n) {
        have = have + chunk > n ? n : have + chunk;
        while (off < have) {
            struct kr_fuzz_res r = kr_fuzz_parse(s + off, have - off, lim);
            if (r.rc == KR_PROTO_NEED_MORE)
                break;
            r.at = off;
            out[nr++] = r;
            if (r.rc < 0)
                return nr;
            off += r.consumed;
        }
    }
    return nr;
}

static void kr_fuzz_streams(const char *s, size_t n, const struct kr_proto_limits *lim)
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

/* ------------------------------------------------------------------ block parsers */

static int kr_fuzz_forbidden(char c)
{
    return c == '\r' || c == '\n' || c == '\0';
}

/* Walk a topic list with next_topic and compare with check_topics. */
static void kr_fuzz_topics(const char *s, size_t n, uint32_t max_topic)
{
    size_t pos = 0, prev = 0, tl, count = 0;
    const char *t;
    int bad = 0;
    while (kr_proto_next_topic(s, n, &pos, &t, &tl)) {
        KR_FUZZ_CHECK(tl > 0 && t >= s + prev && t + tl <= s + n && pos == (size_t)(t - s) + tl);
        KR_FUZZ_CHECK(memchr(t, ' ', tl) == NULL);
        KR_FUZZ_CHECK(pos == n || s[pos] == ' ');
        for (size_t i = 0; i < tl; i++)
            bad |= kr_fuzz_forbidden(t[i]);
        bad |= tl > max_topic;
        prev = pos;
        count++;
    }
    KR_FUZZ_CHECK(pos == n);
    int rc = kr_proto_check_topics(s, n, max_topic);
    if (bad)
        KR_FUZZ_CHECK(rc == KR_PERR_BAD_TOPIC);
    else
        KR_FUZZ_CHECK(rc >= 0 && (size_t)rc == count);
}

struct kr_fuzz_pub {
    const char *block;
    size_t len;
    const struct kr_proto_limits *lim;
    size_t calls, stop_at;
    const char *prev_end;
};

static int kr_fuzz_entry(void *ctx, const struct kr_pub_entry *e)
{
    struct kr_fuzz_pub *p = ctx;
    const char *end = p->block + p->len;
    KR_FUZZ_CHECK(e->topics == p->prev_end + 8 && memcmp(e->topics - 8, "MESSAGE ", 8) == 0);
    KR_FUZZ_CHECK(e->topics + e->topics_len < e->payload);
    KR_FUZZ_CHECK(e->payload + e->payload_len + 2 <= end);
    KR_FUZZ_CHECK(memcmp(e->payload - 2, "\r\n", 2) == 0);
    KR_FUZZ_CHECK(memcmp(e->payload + e->payload_len, "\r\n", 2) == 0);
    KR_FUZZ_CHECK(e->payload_len <= p->lim->max_message_bytes);
    int nt = kr_proto_check_topics(e->topics, e->topics_len, p->lim->max_topic_bytes);
    KR_FUZZ_CHECK(nt >= 0 && (uint32_t)nt == e->ntopics);
    kr_fuzz_topics(e->topics, e->topics_len, p->lim->max_topic_bytes);
    p->prev_end = e->payload + e->payload_len + 2;
    p->calls++;
    if (p->stop_at && p->calls == p->stop_at)
        return 99;
    return 0;
}

static void kr_fuzz_publish(const char *s, size_t n, const struct kr_proto_limits *lim)
{
    char *b = kr_fuzz_dup(s, n);
    size_t ne_validate = 12345, ne = 12345;
    int rc_validate = kr_proto_parse_publish(b, n, lim, NULL, NULL, &ne_validate);
    struct kr_fuzz_pub p = {.block = b, .len = n, .lim = lim, .prev_end = b};
    int rc = kr_proto_parse_publish(b, n, lim, kr_fuzz_entry, &p, &ne);
    KR_FUZZ_CHECK(rc == rc_validate);
    if (rc == 0) {
        KR_FUZZ_CHECK(ne == ne_validate && p.calls == ne);
        KR_FUZZ_CHECK(p.prev_end == b + n); /* entries tile the block exactly */
        if (ne > 0) {
            struct kr_fuzz_pub q = {.block = b, .len = n, .lim = lim, .prev_end = b, .stop_at = 1};
            KR_FUZZ_CHECK(kr_proto_parse_publish(b, n, lim, kr_fuzz_entry, &q, &ne) == 99);
            KR_FUZZ_CHECK(q.calls == 1 && ne == 1);
        }
    } else {
        KR_FUZZ_CHECK(rc == KR_PERR_BAD_PUBLISH || rc == KR_PERR_BAD_TOPIC ||
                      rc == KR_PERR_TOO_LARGE);
        KR_FUZZ_CHECK(p.calls == 0 && ne == 0 && ne_validate == 0);
    }
    free(b);
}

/* Independent shape check of "<digits>[.<1..9 digits>]\r\n"; returns the index just past
 * the "\r\n", or 0 when the shape is wrong. */
static size_t kr_fuzz_retro_shape(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    if (i == 0)
        return 0;
    if (i < n && s[i] == '.') {
        size_t f = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == f || i - f > 9)
            return 0;
    }
    if (n - i < 2 || s[i] != '\r' || s[i + 1] != '\n')
        return 0;
    return i + 2;
}

static void kr_fuzz_retro(const char *s, size_t n, uint32_t max_topic)
{
    char *b = kr_fuzz_dup(s, n);
    uint64_t h = 0;
    const char *t = NULL;
    size_t tl = 0;
    int rc = kr_proto_parse_retro(b, n, max_topic, &h, &t, &tl);
    size_t shape = kr_fuzz_retro_shape(b, n);
    if (rc == 0) {
        KR_FUZZ_CHECK(shape != 0 && t == b + shape && tl == n - shape);
        KR_FUZZ_CHECK(kr_proto_check_topics(t, tl, max_topic) >= 0);
        /* the integer part, when it is small enough to read back, matches */
        size_t digits = 0;
        while (b[digits] >= '0' && b[digits] <= '9')
            digits++;
        if (digits <= 13) {
            uint64_t sec = 0;
            for (size_t i = 0; i < digits; i++)
                sec = sec * 10 + (uint64_t)(b[i] - '0');
            KR_FUZZ_CHECK(h / 1000000 == sec);
        }
    } else if (rc == KR_PERR_BAD_TOPIC) {
        KR_FUZZ_CHECK(shape != 0 && kr_proto_check_topics(b + shape, n - shape, max_topic) < 0);
    } else {
        KR_FUZZ_CHECK(rc == KR_PERR_BAD_FORMAT);
    }
    if (shape == 0)
        KR_FUZZ_CHECK(rc == KR_PERR_BAD_FORMAT);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const struct kr_proto_limits *lim = &kr_fuzz_limits[data[0] & 3];
    const char *s = (const char *)data + 1;
    size_t n = size - 1;

    if (n <= KR_FUZZ_MAX_SPLIT) {
        kr_fuzz_prefixes(s, n, lim);
        kr_fuzz_streams(s, n, lim);
    } else {
        (void)kr_fuzz_parse(s, n, lim);
    }
    kr_fuzz_publish(s, n, lim);
    kr_fuzz_topics(s, n, lim->max_topic_bytes);
    kr_fuzz_retro(s, n, lim->max_topic_bytes);
    return 0;
}
