/* libFuzzer target for the protocol codec.
 *
 * The first input byte picks a set of limits; the rest is fed
 * - to kr_proto_parse whole, then as every prefix (each in an exactly-sized heap copy, so
 *   the address sanitizer sees any read past the bytes given): a prefix shorter than what
 *   the whole request consumed must only ask for more, a longer one must give the same
 *   answer;
 * - as a stream, whole and in chunks of several sizes (1 = byte by byte), which must yield
 *   the same sequence of requests and the same final error;
 * - to the publish, topic-list, retro and resume block parsers, checking their results
 *   against each other and against simple independent re-checks; the resume block is also
 *   framed as a `set resume` request, which must hand it back unchanged.
 * Every get request accepted is re-checked against its command line independently (the
 * keys `messages`, `messages position` or `position`, nothing else). The codec applies no publish rule
 *   (topic validity, payload size): those are the caller's, handed in as the `check` of
 *   kr_proto_parse_publish, so the publish block is parsed with a fuzz-local check applying
 *   the rules of the limits table, with a recording check that applies none, and with no
 *   check at all, and the three are compared.
 * Any inconsistency aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_proto.h"
#include "kr_fuzz.h"


/* Prefix and chunk checks copy the input many times; keep them to inputs of this size. */
#define KR_FUZZ_MAX_SPLIT 4096

/* The codec's limits and the publish rules (the fuzz check applies the latter). */
struct kr_fuzz_limits {
    struct kr_proto_limits proto;
    uint64_t max_message_bytes; /* largest payload of one publish entry */
    uint32_t max_topic_bytes;   /* longest topic */
};

static const struct kr_fuzz_limits kr_fuzz_limits[4] = {
    {.proto = {.max_request_bytes = 4096, .max_line_bytes = 128},
     .max_message_bytes = 64, .max_topic_bytes = 16},
    {.proto = {.max_request_bytes = 16, .max_line_bytes = 8},
     .max_message_bytes = 4, .max_topic_bytes = 2},
    {.proto = {.max_request_bytes = 1 << 20, .max_line_bytes = 1024},
     .max_message_bytes = 1 << 20, .max_topic_bytes = 250},
    {.proto = {.max_request_bytes = UINT64_MAX, .max_line_bytes = UINT32_MAX},
     .max_message_bytes = UINT64_MAX, .max_topic_bytes = UINT32_MAX},
};

static char *kr_fuzz_dup(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    KR_FUZZ_CHECK(p != NULL);
    if (n)
        memcpy(p, s, n);
    return p;
}

/* The space-separated words of s[0..n), at most max (returns max + 1 when there are more). */
static size_t kr_fuzz_words(const char *s, size_t n, const char **w, size_t *wl, size_t max)
{
    size_t nw = 0, i = 0;
    while (i < n) {
        if (s[i] == ' ') {
            i++;
            continue;
        }
        size_t j = i;
        while (j < n && s[j] != ' ')
            j++;
        if (nw == max)
            return max + 1;
        w[nw] = s + i;
        wl[nw] = j - i;
        nw++;
        i = j;
    }
    return nw;
}

static int kr_fuzz_word_is(const char *w, size_t wl, const char *lit)
{
    return wl == strlen(lit) && memcmp(w, lit, wl) == 0;
}

/* An accepted request without a data block: its line, re-read independently, names it. */
static void kr_fuzz_check_get(const char *line, size_t consumed, int type)
{
    const char *w[4];
    size_t wl[4];
    if (type != KR_REQ_GET_MESSAGES && type != KR_REQ_GET_MESSAGES_POSITION &&
        type != KR_REQ_GET_POSITION)
        return;
    KR_FUZZ_CHECK(consumed >= 2 && memcmp(line + consumed - 2, "\r\n", 2) == 0);
    size_t nw = kr_fuzz_words(line, consumed - 2, w, wl, 3);
    KR_FUZZ_CHECK(nw >= 2 && nw <= 3 && kr_fuzz_word_is(w[0], wl[0], "get"));
    if (type == KR_REQ_GET_MESSAGES)
        KR_FUZZ_CHECK(nw == 2 && kr_fuzz_word_is(w[1], wl[1], "messages"));
    else if (type == KR_REQ_GET_POSITION)
        KR_FUZZ_CHECK(nw == 2 && kr_fuzz_word_is(w[1], wl[1], "position"));
    else
        KR_FUZZ_CHECK(nw == 3 && kr_fuzz_word_is(w[1], wl[1], "messages") &&
                      kr_fuzz_word_is(w[2], wl[2], "position"));
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
        KR_FUZZ_CHECK(r.type >= KR_REQ_SUBSCRIBE && r.type <= KR_REQ_RESUME);
        kr_fuzz_check_get(b, r.consumed, r.type);
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

/* Walk a topic list with next_topic and compare with count_topics; *bad is set when a topic
 * breaks the rules (over max_topic bytes, or '\r', '\n', NUL in it). Returns the count. */
static size_t kr_fuzz_topics(const char *s, size_t n, uint32_t max_topic, int *bad)
{
    size_t pos = 0, prev = 0, tl, count = 0;
    const char *t;
    *bad = 0;
    while (kr_proto_next_topic(s, n, &pos, &t, &tl)) {
        KR_FUZZ_CHECK(tl > 0 && t >= s + prev && t + tl <= s + n && pos == (size_t)(t - s) + tl);
        KR_FUZZ_CHECK(memchr(t, ' ', tl) == NULL);
        KR_FUZZ_CHECK(pos == n || s[pos] == ' ');
        for (size_t i = 0; i < tl; i++)
            *bad |= kr_fuzz_forbidden(t[i]);
        *bad |= tl > max_topic;
        prev = pos;
        count++;
    }
    KR_FUZZ_CHECK(pos == n);
    KR_FUZZ_CHECK(kr_proto_count_topics(s, n) == count);
    return count;
}

/* What the check saw of one entry. */
struct kr_fuzz_seen {
    size_t topics_off, topics_len, payload_len;
    uint32_t ntopics;
    int rule; /* what the rules say of it: 0, KR_PERR_BAD_TOPIC or KR_PERR_TOO_LARGE */
};

struct kr_fuzz_pub {
    const char *block;
    size_t len;
    const struct kr_fuzz_limits *lim;
    int rules;        /* the check applies the rules */
    size_t check_stop_at; /* 1-based check call that returns 77; 0 never */
    size_t calls, stop_at;
    const char *prev_end;
    size_t checks;
    size_t check_next; /* where the next entry checked must start */
    struct kr_fuzz_seen *seen; /* one per check call (room for every possible entry) */
    size_t seen_max;
};

/* The fuzz check: runs during the validation pass, as soon as an entry's line is read.
 * Re-reads the line independently, records the entry and (when p->rules) applies the rules:
 * the topic rule first, then the payload size. */
static int kr_fuzz_check(void *ctx, const struct kr_pub_entry *e)
{
    struct kr_fuzz_pub *p = ctx;
    const char *b = p->block;
    KR_FUZZ_CHECK(p->calls == 0); /* the entry callback has not started */
    KR_FUZZ_CHECK(e->payload == NULL);
    KR_FUZZ_CHECK(e->topics >= b + 8 && e->topics <= b + p->len);
    size_t at = (size_t)(e->topics - b);
    KR_FUZZ_CHECK(at == p->check_next + 8 && memcmp(b + p->check_next, "MESSAGE ", 8) == 0);
    /* the line ends at the first "\r\n" from the topics on */
    size_t cr = at;
    while (cr + 1 < p->len && !(b[cr] == '\r' && b[cr + 1] == '\n'))
        cr++;
    KR_FUZZ_CHECK(cr + 1 < p->len);
    /* "<topics> <digits><spaces>"; with no topics, "[ ]<digits><spaces>" */
    size_t i = at + e->topics_len;
    KR_FUZZ_CHECK(i < cr);
    if (e->topics_len > 0)
        KR_FUZZ_CHECK(b[i] == ' ');
    if (b[i] == ' ')
        i++;
    uint64_t v = 0;
    size_t d = i;
    while (i < cr && b[i] >= '0' && b[i] <= '9') {
        KR_FUZZ_CHECK(v <= (UINT64_MAX - (uint64_t)(b[i] - '0')) / 10);
        v = v * 10 + (uint64_t)(b[i] - '0');
        i++;
    }
    KR_FUZZ_CHECK(i > d);
    while (i < cr && b[i] == ' ')
        i++;
    KR_FUZZ_CHECK(i == cr);
    KR_FUZZ_CHECK(e->payload_len == (v > SIZE_MAX ? SIZE_MAX : (size_t)v));

    int bad;
    size_t nt = kr_fuzz_topics(e->topics, e->topics_len, p->lim->max_topic_bytes, &bad);
    KR_FUZZ_CHECK(nt == e->ntopics);
    int rule = bad ? KR_PERR_BAD_TOPIC
                   : (uint64_t)e->payload_len > p->lim->max_message_bytes ? KR_PERR_TOO_LARGE : 0;

    KR_FUZZ_CHECK(p->checks < p->seen_max);
    p->seen[p->checks] = (struct kr_fuzz_seen){.topics_off = at, .topics_len = e->topics_len,
                                               .payload_len = e->payload_len,
                                               .ntopics = e->ntopics, .rule = rule};
    p->checks++;
    /* the next entry, if the codec goes on, starts after this payload and its "\r\n" */
    size_t room = p->len - (cr + 2);
    p->check_next = e->payload_len <= room && room - e->payload_len >= 2
                        ? cr + 2 + e->payload_len + 2
                        : SIZE_MAX - 8; /* the codec must stop: no next check can match */
    if (p->check_stop_at && p->checks == p->check_stop_at)
        return 77;
    return p->rules ? rule : 0;
}

static int kr_fuzz_entry(void *ctx, const struct kr_pub_entry *e)
{
    struct kr_fuzz_pub *p = ctx;
    const char *end = p->block + p->len;
    KR_FUZZ_CHECK(e->payload != NULL);
    KR_FUZZ_CHECK(e->topics == p->prev_end + 8 && memcmp(e->topics - 8, "MESSAGE ", 8) == 0);
    KR_FUZZ_CHECK(e->topics + e->topics_len < e->payload);
    KR_FUZZ_CHECK(e->payload + e->payload_len + 2 <= end);
    KR_FUZZ_CHECK(memcmp(e->payload - 2, "\r\n", 2) == 0);
    KR_FUZZ_CHECK(memcmp(e->payload + e->payload_len, "\r\n", 2) == 0);
    int bad;
    KR_FUZZ_CHECK(kr_fuzz_topics(e->topics, e->topics_len, p->lim->max_topic_bytes, &bad) ==
                  e->ntopics);
    if (p->rules) { /* the check let this entry through */
        KR_FUZZ_CHECK(!bad);
        KR_FUZZ_CHECK(e->payload_len <= p->lim->max_message_bytes);
    }
    /* the check saw this very entry, with its announced length, before any callback */
    if (p->checks > 0) {
        KR_FUZZ_CHECK(p->calls < p->checks);
        const struct kr_fuzz_seen *w = &p->seen[p->calls];
        KR_FUZZ_CHECK(w->topics_off == (size_t)(e->topics - p->block) &&
                      w->topics_len == e->topics_len && w->ntopics == e->ntopics &&
                      w->payload_len == e->payload_len);
    }
    p->prev_end = e->payload + e->payload_len + 2;
    p->calls++;
    if (p->stop_at && p->calls == p->stop_at)
        return 99;
    return 0;
}

static int kr_fuzz_same_seen(const struct kr_fuzz_seen *a, const struct kr_fuzz_seen *b)
{
    return a->topics_off == b->topics_off && a->topics_len == b->topics_len &&
           a->payload_len == b->payload_len && a->ntopics == b->ntopics && a->rule == b->rule;
}

/* Every entry takes at least "MESSAGE 0\r\n" (11 bytes) before the check sees it. */
static struct kr_fuzz_pub kr_fuzz_pub_ctx(const char *b, size_t n,
                                          const struct kr_fuzz_limits *lim, int rules,
                                          struct kr_fuzz_seen *seen, size_t seen_max)
{
    return (struct kr_fuzz_pub){.block = b, .len = n, .lim = lim, .rules = rules,
                                .prev_end = b, .seen = seen, .seen_max = seen_max};
}

static void kr_fuzz_publish(const char *s, size_t n, const struct kr_fuzz_limits *lim)
{
    char *b = kr_fuzz_dup(s, n);
    size_t seen_max = n / 11 + 1;
    struct kr_fuzz_seen *seen = calloc(seen_max, sizeof(*seen));
    struct kr_fuzz_seen *seen_raw = calloc(seen_max, sizeof(*seen_raw));
    KR_FUZZ_CHECK(seen && seen_raw);

    /* with the rules: validate only, then with the callback */
    size_t ne_validate = 12345, ne = 12345;
    struct kr_fuzz_pub v = kr_fuzz_pub_ctx(b, n, lim, 1, seen, seen_max);
    int rc_validate = kr_proto_parse_publish(b, n, kr_fuzz_check, NULL, &v, &ne_validate);
    struct kr_fuzz_pub p = kr_fuzz_pub_ctx(b, n, lim, 1, seen, seen_max);
    int rc = kr_proto_parse_publish(b, n, kr_fuzz_check, kr_fuzz_entry, &p, &ne);
    KR_FUZZ_CHECK(rc == rc_validate && v.checks == p.checks);

    /* without the rules: a recording check, then no check at all */
    size_t ne_raw = 12345, ne_null = 12345, ne_null_cb = 12345;
    struct kr_fuzz_pub r = kr_fuzz_pub_ctx(b, n, lim, 0, seen_raw, seen_max);
    int rc_raw = kr_proto_parse_publish(b, n, kr_fuzz_check, kr_fuzz_entry, &r, &ne_raw);
    int rc_null = kr_proto_parse_publish(b, n, NULL, NULL, NULL, &ne_null);
    struct kr_fuzz_pub q = kr_fuzz_pub_ctx(b, n, lim, 0, NULL, 0);
    int rc_null_cb = kr_proto_parse_publish(b, n, NULL, kr_fuzz_entry, &q, &ne_null_cb);
    KR_FUZZ_CHECK(rc_raw == 0 || rc_raw == KR_PERR_BAD_PUBLISH);
    KR_FUZZ_CHECK(rc_null == rc_raw && ne_null == ne_raw);
    KR_FUZZ_CHECK(rc_null_cb == rc_raw && ne_null_cb == ne_raw && q.calls == r.calls);

    /* the check sees the same entries, in order, with or without the rules */
    KR_FUZZ_CHECK(p.checks <= r.checks);
    for (size_t i = 0; i < p.checks; i++)
        KR_FUZZ_CHECK(kr_fuzz_same_seen(&seen[i], &seen_raw[i]));

    /* what the rules must have answered: the first entry checked that breaks one, else the
     * framing's answer */
    int want = rc_raw;
    size_t want_checks = r.checks;
    for (size_t i = 0; i < r.checks; i++) {
        if (seen_raw[i].rule != 0) {
            want = seen_raw[i].rule;
            want_checks = i + 1;
            break;
        }
    }
    KR_FUZZ_CHECK(rc == want && p.checks == want_checks);

    if (rc_raw == 0) {
        KR_FUZZ_CHECK(r.checks == ne_raw && r.calls == ne_raw);
        KR_FUZZ_CHECK(r.prev_end == b + n && q.prev_end == b + n);
    } else {
        KR_FUZZ_CHECK(r.calls == 0 && ne_raw == 0 && q.calls == 0);
    }
    if (rc == 0) {
        /* accepted with the rules: the same without them */
        KR_FUZZ_CHECK(rc_raw == 0 && ne == ne_raw && ne == ne_validate && p.calls == ne);
        KR_FUZZ_CHECK(p.checks == ne);
        KR_FUZZ_CHECK(p.prev_end == b + n); /* entries tile the block exactly */
        if (ne > 0) {
            struct kr_fuzz_pub st = kr_fuzz_pub_ctx(b, n, lim, 1, seen, seen_max);
            st.stop_at = 1;
            KR_FUZZ_CHECK(kr_proto_parse_publish(b, n, kr_fuzz_check, kr_fuzz_entry, &st, &ne) ==
                          99);
            KR_FUZZ_CHECK(st.calls == 1 && ne == 1 && st.checks == ne_raw);
        }
    } else {
        KR_FUZZ_CHECK(rc == KR_PERR_BAD_PUBLISH || rc == KR_PERR_BAD_TOPIC ||
                      rc == KR_PERR_TOO_LARGE);
        KR_FUZZ_CHECK(p.calls == 0 && ne == 0 && ne_validate == 0);
    }

    /* a check's own value is returned as is, stops the checks, and nothing is handed on */
    if (r.checks > 0) {
        struct kr_fuzz_pub st = kr_fuzz_pub_ctx(b, n, lim, 0, seen_raw, seen_max);
        st.check_stop_at = 1 + (size_t)(unsigned char)b[0] % r.checks;
        size_t ns = 12345;
        KR_FUZZ_CHECK(kr_proto_parse_publish(b, n, kr_fuzz_check, kr_fuzz_entry, &st, &ns) == 77);
        KR_FUZZ_CHECK(st.checks == st.check_stop_at && st.calls == 0 && ns == 0);
    }
    free(seen);
    free(seen_raw);
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

static void kr_fuzz_retro(const char *s, size_t n)
{
    char *b = kr_fuzz_dup(s, n);
    uint64_t h = 0;
    const char *t = NULL;
    size_t tl = 0;
    int rc = kr_proto_parse_retro(b, n, &h, &t, &tl);
    size_t shape = kr_fuzz_retro_shape(b, n);
    KR_FUZZ_CHECK(rc == 0 || rc == KR_PERR_BAD_FORMAT);
    /* the integer part without its leading zeros */
    size_t digits = 0, zeros = 0;
    while (digits < n && b[digits] >= '0' && b[digits] <= '9')
        digits++;
    while (zeros < digits && b[zeros] == '0')
        zeros++;
    if (rc == 0) {
        /* the topics span is everything after the horizon line, unvalidated */
        KR_FUZZ_CHECK(shape != 0 && t == b + shape && tl == n - shape);
        if (digits - zeros <= 13) {
            uint64_t sec = 0;
            for (size_t i = zeros; i < digits; i++)
                sec = sec * 10 + (uint64_t)(b[i] - '0');
            KR_FUZZ_CHECK(h / 1000000 == sec);
        }
    } else {
        /* only the horizon can be wrong: a well-shaped one is refused only when too big */
        KR_FUZZ_CHECK(shape == 0 || digits - zeros >= 14);
    }
    if (shape == 0)
        KR_FUZZ_CHECK(rc == KR_PERR_BAD_FORMAT);
    if (shape != 0) {
        /* the topics play no part: the horizon line alone gives the same answer */
        char *hl = kr_fuzz_dup(b, shape);
        uint64_t h2 = 0;
        const char *t2 = NULL;
        size_t tl2 = 12345;
        int rc2 = kr_proto_parse_retro(hl, shape, &h2, &t2, &tl2);
        KR_FUZZ_CHECK(rc2 == rc);
        if (rc2 == 0)
            KR_FUZZ_CHECK(h2 == h && tl2 == 0 && t2 == hl + shape);
        free(hl);
    }
    free(b);
}

/* Independent shape check of a resume block: the token line's length when the block starts
 * with 1..KR_PROTO_TOKEN_MAX bytes of 0x21..0x7e followed by "\r\n", else 0. */
static size_t kr_fuzz_resume_shape(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && (unsigned char)s[i] >= 0x21 && (unsigned char)s[i] <= 0x7e)
        i++;
    if (i == 0 || i > KR_PROTO_TOKEN_MAX || n - i < 2 || s[i] != '\r' || s[i + 1] != '\n')
        return 0;
    return i;
}

static void kr_fuzz_resume(const char *s, size_t n, const struct kr_proto_limits *lim)
{
    char *b = kr_fuzz_dup(s, n);
    const char *tok = NULL, *t = NULL;
    size_t tokl = 12345, tl = 12345;
    int rc = kr_proto_parse_resume(b, n, &tok, &tokl, &t, &tl);
    size_t shape = kr_fuzz_resume_shape(b, n);
    KR_FUZZ_CHECK(rc == 0 || rc == KR_PERR_BAD_FORMAT);
    KR_FUZZ_CHECK((rc == 0) == (shape != 0));
    if (rc == 0) {
        KR_FUZZ_CHECK(tok == b && tokl == shape);
        KR_FUZZ_CHECK(t == b + shape + 2 && tl == n - shape - 2);
        /* the topics play no part: the token line alone, or with any prefix of the topics,
         * gives the same token */
        size_t cut = shape + 2 + (tl ? (size_t)(unsigned char)b[0] % (tl + 1) : 0);
        char *hl = kr_fuzz_dup(b, cut);
        const char *tok2 = NULL, *t2 = NULL;
        size_t tokl2 = 0, tl2 = 12345;
        KR_FUZZ_CHECK(kr_proto_parse_resume(hl, cut, &tok2, &tokl2, &t2, &tl2) == 0);
        KR_FUZZ_CHECK(tok2 == hl && tokl2 == tokl && t2 == hl + shape + 2 &&
                      tl2 == cut - shape - 2);
        free(hl);
    }

    /* framed as "set resume 0 0 <n>\r\n<block>\r\n": handed back as the data block */
    char line[64];
    int ll = snprintf(line, sizeof(line), "set resume 0 0 %zu\r\n", n);
    KR_FUZZ_CHECK(ll > 0 && (size_t)ll < sizeof(line));
    size_t total = (size_t)ll + n + 2;
    char *req = malloc(total);
    KR_FUZZ_CHECK(req != NULL);
    memcpy(req, line, (size_t)ll);
    if (n)
        memcpy(req + ll, b, n);
    memcpy(req + ll + n, "\r\n", 2);
    struct kr_request r;
    size_t used = 0;
    int prc = kr_proto_parse(req, total, lim, &r, &used);
    if ((size_t)ll <= lim->max_line_bytes && n <= lim->max_request_bytes) {
        KR_FUZZ_CHECK(prc == KR_PROTO_OK && used == total && r.type == KR_REQ_RESUME);
        KR_FUZZ_CHECK(r.noreply == 0 && r.data == req + ll && r.data_len == n);
    } else {
        KR_FUZZ_CHECK(prc == KR_PERR_LINE_TOO_LONG || prc == KR_PERR_TOO_LARGE);
    }
    free(req);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const struct kr_fuzz_limits *fl = &kr_fuzz_limits[data[0] & 3];
    const struct kr_proto_limits *lim = &fl->proto;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;

    if (n <= KR_FUZZ_MAX_SPLIT) {
        kr_fuzz_prefixes(s, n, lim);
        kr_fuzz_streams(s, n, lim);
    } else {
        (void)kr_fuzz_parse(s, n, lim);
    }
    kr_fuzz_publish(s, n, fl);
    int bad;
    (void)kr_fuzz_topics(s, n, fl->max_topic_bytes, &bad);
    kr_fuzz_retro(s, n);
    kr_fuzz_resume(s, n, lim);
    return 0;
}
