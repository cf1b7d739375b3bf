/* Byte buffer, payload stamps, stream checks and the three client codecs: see kr_bench.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_bench.h"

/* Longest control line any of the parsers waits for before calling the input malformed. */
#define KR_BENCH_MAX_LINE 65536

/* ---------------------------------------------------------------- buffer */

void kr_bench_buf_reserve(struct kr_bench_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return;
    size_t want = b->len + extra;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < want)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        fprintf(stderr, "kraken-bench: out of memory (%zu bytes)\n", cap);
        abort();
    }
    b->p = p;
    b->cap = cap;
}

void kr_bench_buf_add(struct kr_bench_buf *b, const void *d, size_t n)
{
    kr_bench_buf_reserve(b, n);
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
}

void kr_bench_buf_adds(struct kr_bench_buf *b, const char *s)
{
    kr_bench_buf_add(b, s, strlen(s));
}

size_t kr_bench_digits(uint64_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

void kr_bench_buf_addu(struct kr_bench_buf *b, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    kr_bench_buf_reserve(b, n);
    while (n)
        b->p[b->len++] = tmp[--n];
}

void kr_bench_buf_addf(struct kr_bench_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(small)) {
        kr_bench_buf_add(b, small, (size_t)n);
        return;
    }
    kr_bench_buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

char *kr_bench_buf_grab(struct kr_bench_buf *b, size_t n)
{
    kr_bench_buf_reserve(b, n);
    char *p = b->p + b->len;
    b->len += n;
    return p;
}

void kr_bench_buf_consume(struct kr_bench_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

void kr_bench_buf_free(struct kr_bench_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---------------------------------------------------------------- payload and streams */

static inline char kr_bench_pad_byte(uint64_t seq, size_t i)
{
    return (char)('a' + ((seq + i) & 15));
}

void kr_bench_payload_write(char *dst, size_t size, const struct kr_bench_stamp *s)
{
    memcpy(dst, &s->pub, 4);
    memcpy(dst + 4, &s->topic, 4);
    memcpy(dst + 8, &s->seq, 8);
    memcpy(dst + 16, &s->sent_ns, 8);
    for (size_t i = KR_BENCH_STAMP_BYTES; i < size; i++)
        dst[i] = kr_bench_pad_byte(s->seq, i);
}

int kr_bench_payload_read(const char *src, size_t size, struct kr_bench_stamp *s)
{
    if (size < KR_BENCH_STAMP_BYTES)
        return -EINVAL;
    memcpy(&s->pub, src, 4);
    memcpy(&s->topic, src + 4, 4);
    memcpy(&s->seq, src + 8, 8);
    memcpy(&s->sent_ns, src + 16, 8);
    for (size_t i = KR_BENCH_STAMP_BYTES; i < size; i++)
        if (src[i] != kr_bench_pad_byte(s->seq, i))
            return -EINVAL;
    return 0;
}

int kr_bench_stream_see(struct kr_bench_stream *st, uint64_t seq)
{
    st->received++;
    if (seq > st->hi) {
        uint64_t d = seq - st->hi;
        st->window = d >= 64 ? 0 : st->window << d;
        st->window |= 1;
        st->hi = seq;
        return 0;
    }
    uint64_t d = st->hi - seq;
    if (d < 64) {
        uint64_t bit = UINT64_C(1) << d;
        if (st->window & bit) {
            st->dups++;
            return 1;
        }
        st->window |= bit;
    }
    st->order++;
    return 2;
}

/* ---------------------------------------------------------------- shared parsing helpers */

/* Offset of the "\r\n" ending the line at buf[0..len), or -1 when not there yet, or -2 when
 * no line end appears within KR_BENCH_MAX_LINE bytes. */
static ssize_t kr_bench_line_end(const char *buf, size_t len)
{
    size_t lim = len < KR_BENCH_MAX_LINE ? len : KR_BENCH_MAX_LINE;
    const char *p = buf;
    const char *end = buf + lim;
    while (p < end) {
        const char *cr = memchr(p, '\r', (size_t)(end - p));
        if (!cr)
            break;
        if (cr + 1 >= buf + len)
            return -1; /* "\r" is the last byte so far */
        if (cr[1] == '\n')
            return cr - buf;
        p = cr + 1;
    }
    return len >= KR_BENCH_MAX_LINE ? -2 : -1;
}

/* Strict unsigned decimal of 1..18 digits. */
static int kr_bench_parse_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 18)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

static int kr_bench_is_prefix(const char *line, size_t len, const char *word)
{
    size_t n = strlen(word);
    return len >= n && memcmp(line, word, n) == 0;
}

static int kr_bench_is_word(const char *line, size_t len, const char *word)
{
    return len == strlen(word) && memcmp(line, word, len) == 0;
}

/* ---------------------------------------------------------------- Kraken */

/* Parse the entries of a VALUE block buf[0..len) (len counts the last entry's "\r\n"). */
static ssize_t kr_bench_kr_entries(const char *buf, size_t len, size_t *nmsgs,
                                   kr_bench_kr_msg_fn fn, void *ud)
{
    size_t pos = 0;
    *nmsgs = 0;
    if (len == 2 && buf[0] == '\r' && buf[1] == '\n')
        return 0; /* an empty value */
    while (pos < len) {
        const char *line = buf + pos;
        const char *nl = NULL;
        for (const char *p = line; p + 1 < buf + len; p++) {
            p = memchr(p, '\r', (size_t)(buf + len - 1 - p));
            if (!p)
                break;
            if (p[1] == '\n') {
                nl = p;
                break;
            }
        }
        if (!nl)
            return -EPROTO;
        size_t ll = (size_t)(nl - line);
        if (!kr_bench_is_prefix(line, ll, "MESSAGE "))
            return -EPROTO;
        const char *sp = NULL;
        for (const char *p = nl - 1; p >= line + 7; p--)
            if (*p == ' ') {
                sp = p;
                break;
            }
        uint64_t plen;
        if (!sp || kr_bench_parse_u64(sp + 1, (size_t)(nl - sp - 1), &plen) < 0)
            return -EPROTO;
        struct kr_bench_kr_msg m;
        m.topics = line + 8;
        m.topics_len = sp > line + 8 ? (size_t)(sp - (line + 8)) : 0;
        size_t poff = pos + ll + 2;
        if (plen > len || poff + plen + 2 > len)
            return -EPROTO;
        if (buf[poff + plen] != '\r' || buf[poff + plen + 1] != '\n')
            return -EPROTO;
        m.payload = buf + poff;
        m.len = (size_t)plen;
        (*nmsgs)++;
        if (fn) {
            int rc = fn(ud, &m);
            if (rc)
                return rc;
        }
        pos = poff + plen + 2;
    }
    return 0;
}

ssize_t kr_bench_kr_parse(const char *buf, size_t len, struct kr_bench_kr_reply *r,
                          kr_bench_kr_msg_fn fn, void *ud, size_t *need)
{
    if (need)
        *need = 0;
    ssize_t eol = kr_bench_line_end(buf, len);
    if (eol == -2)
        return -EPROTO;
    if (eol < 0)
        return 0;
    size_t ll = (size_t)eol;
    memset(r, 0, sizeof(*r));
    r->line = buf;
    r->line_len = ll;
    size_t used = ll + 2;
    if (kr_bench_is_word(buf, ll, "STORED"))
        r->kind = KR_BENCH_KR_STORED;
    else if (kr_bench_is_word(buf, ll, "END"))
        r->kind = KR_BENCH_KR_END;
    else if (kr_bench_is_word(buf, ll, "NOT_FOUND"))
        r->kind = KR_BENCH_KR_NOT_FOUND;
    else if (kr_bench_is_word(buf, ll, "ERROR") || kr_bench_is_prefix(buf, ll, "CLIENT_ERROR") ||
             kr_bench_is_prefix(buf, ll, "SERVER_ERROR"))
        r->kind = KR_BENCH_KR_ERROR;
    else if (kr_bench_is_prefix(buf, ll, "VALUE ")) {
        /* one or more blocks `VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n`, then
         * END: the key "position" carries a position token, any other key entries */
        size_t off = 0, lend = ll;
        const char *ent = NULL;
        size_t ent_len = 0;
        for (;;) {
            const char *line = buf + off;
            const char *tok[5];
            size_t tl[5];
            size_t nt = 0, i = 6;
            while (i < lend && nt < 5) {
                size_t s = i;
                while (i < lend && line[i] != ' ')
                    i++;
                if (i == s)
                    return -EPROTO;
                tok[nt] = line + s;
                tl[nt++] = i - s;
                if (i < lend)
                    i++;
            }
            uint64_t m;
            if (nt < 3 || i < lend || kr_bench_parse_u64(tok[2], tl[2], &m) < 0)
                return -EPROTO;
            if (m > (UINT64_C(1) << 40))
                return -EPROTO;
            size_t data = off + lend + 2;
            /* at least this block, its "\r\n" and an END */
            size_t total = data + (size_t)m + 2 + 5;
            if (len < total) {
                if (need)
                    *need = total;
                return 0;
            }
            if (memcmp(buf + data + m, "\r\n", 2) != 0)
                return -EPROTO;
            if (tl[0] == 8 && memcmp(tok[0], "position", 8) == 0) {
                if (r->pos)
                    return -EPROTO;
                r->pos = buf + data;
                r->pos_len = (size_t)m;
            } else {
                if (ent)
                    return -EPROTO;
                ent = buf + data;
                ent_len = (size_t)m;
            }
            off = data + (size_t)m + 2;
            if (memcmp(buf + off, "END\r\n", 5) == 0) {
                used = off + 5;
                break;
            }
            ssize_t e = kr_bench_line_end(buf + off, len - off);
            if (e == -2)
                return -EPROTO;
            if (e < 0)
                return 0; /* the next block's size is not known yet */
            lend = (size_t)e;
            if (!kr_bench_is_prefix(buf + off, lend, "VALUE "))
                return -EPROTO;
        }
        r->kind = KR_BENCH_KR_VALUE;
        if (ent) {
            ssize_t rc = kr_bench_kr_entries(ent, ent_len + 2, &r->nmsgs, fn, ud);
            if (rc)
                return rc;
        }
    } else
        r->kind = KR_BENCH_KR_OTHER;
    return (ssize_t)used;
}

void kr_bench_kr_put_topics(struct kr_bench_buf *b, const char *verb, const char *const *topics,
                            const size_t *lens, size_t n)
{
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += lens[i] + (i ? 1 : 0);
    kr_bench_buf_adds(b, "set ");
    kr_bench_buf_adds(b, verb);
    kr_bench_buf_adds(b, " 0 0 ");
    kr_bench_buf_addu(b, bytes);
    kr_bench_buf_add(b, "\r\n", 2);
    for (size_t i = 0; i < n; i++) {
        if (i)
            kr_bench_buf_add(b, " ", 1);
        kr_bench_buf_add(b, topics[i], lens[i]);
    }
    kr_bench_buf_add(b, "\r\n", 2);
}

size_t kr_bench_kr_entry_size(size_t topic_len, size_t plen)
{
    return 8 + topic_len + 1 + kr_bench_digits(plen) + 2 + plen + 2;
}

void kr_bench_kr_put_publish_begin(struct kr_bench_buf *b, size_t entries_bytes)
{
    kr_bench_buf_adds(b, "set publish 0 0 ");
    kr_bench_buf_addu(b, entries_bytes);
    kr_bench_buf_add(b, "\r\n", 2);
}

char *kr_bench_kr_put_entry(struct kr_bench_buf *b, const char *topic, size_t topic_len,
                            size_t plen)
{
    kr_bench_buf_reserve(b, kr_bench_kr_entry_size(topic_len, plen));
    kr_bench_buf_add(b, "MESSAGE ", 8);
    kr_bench_buf_add(b, topic, topic_len);
    kr_bench_buf_add(b, " ", 1);
    kr_bench_buf_addu(b, plen);
    kr_bench_buf_add(b, "\r\n", 2);
    char *p = kr_bench_buf_grab(b, plen);
    kr_bench_buf_add(b, "\r\n", 2);
    return p;
}

void kr_bench_kr_put_publish_end(struct kr_bench_buf *b)
{
    kr_bench_buf_add(b, "\r\n", 2);
}

/* ---------------------------------------------------------------- RESP */

static int kr_bench_parse_i64(const char *s, size_t n, int64_t *out)
{
    int neg = 0;
    if (n && s[0] == '-') {
        neg = 1;
        s++;
        n--;
    }
    uint64_t v;
    if (kr_bench_parse_u64(s, n, &v) < 0)
        return -1;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

/* One value at buf[pos..len): returns the end offset (> pos), 0 for more, -EPROTO. */
static ssize_t kr_bench_resp_value(const char *buf, size_t len, size_t pos, int depth,
                                   struct kr_bench_resp_item *it, struct kr_bench_resp *top)
{
    if (pos >= len)
        return 0;
    ssize_t eol = kr_bench_line_end(buf + pos, len - pos);
    if (eol == -2)
        return -EPROTO;
    if (eol < 0)
        return 0;
    if (eol < 1)
        return -EPROTO;
    char type = buf[pos];
    const char *body = buf + pos + 1;
    size_t bl = (size_t)eol - 1;
    size_t next = pos + (size_t)eol + 2;
    memset(it, 0, sizeof(*it));
    it->type = type;
    switch (type) {
    case '+':
    case '-':
        it->str = body;
        it->len = bl;
        return (ssize_t)next;
    case ':':
        if (kr_bench_parse_i64(body, bl, &it->num) < 0)
            return -EPROTO;
        return (ssize_t)next;
    case '$':
        if (kr_bench_parse_i64(body, bl, &it->num) < 0 || it->num < -1)
            return -EPROTO;
        if (it->num == -1)
            return (ssize_t)next;
        if ((uint64_t)it->num > (UINT64_C(1) << 40))
            return -EPROTO;
        if (len - next < (size_t)it->num + 2)
            return 0;
        if (buf[next + (size_t)it->num] != '\r' || buf[next + (size_t)it->num + 1] != '\n')
            return -EPROTO;
        it->str = buf + next;
        it->len = (size_t)it->num;
        return (ssize_t)(next + (size_t)it->num + 2);
    case '*':
    case '>': {
        it->type = '*';
        if (kr_bench_parse_i64(body, bl, &it->num) < 0 || it->num < -1)
            return -EPROTO;
        if (top) {
            top->type = type;
            top->nitems = it->num;
        }
        if (it->num <= 0)
            return (ssize_t)next;
        if (depth >= 8)
            return -EPROTO;
        struct kr_bench_resp_item tmp;
        for (int64_t i = 0; i < it->num; i++) {
            struct kr_bench_resp_item *dst =
                top && i < KR_BENCH_RESP_MAX_ITEMS ? &top->item[i] : &tmp;
            ssize_t e = kr_bench_resp_value(buf, len, next, depth + 1, dst, NULL);
            if (e <= 0)
                return e;
            next = (size_t)e;
        }
        return (ssize_t)next;
    }
    default:
        return -EPROTO;
    }
}

ssize_t kr_bench_resp_parse(const char *buf, size_t len, struct kr_bench_resp *r)
{
    memset(r, 0, sizeof(*r));
    struct kr_bench_resp_item first;
    int is_array = len > 0 && (buf[0] == '*' || buf[0] == '>');
    ssize_t e = kr_bench_resp_value(buf, len, 0, 0, &first, is_array ? r : NULL);
    if (e <= 0)
        return e;
    if (!is_array) {
        r->type = first.type;
        r->nitems = 1;
        r->item[0] = first;
    }
    return e;
}

void kr_bench_resp_put_command(struct kr_bench_buf *b, size_t argc, const char *const *argv,
                               const size_t *lens)
{
    kr_bench_buf_add(b, "*", 1);
    kr_bench_buf_addu(b, argc);
    kr_bench_buf_add(b, "\r\n", 2);
    for (size_t i = 0; i < argc; i++) {
        kr_bench_buf_add(b, "$", 1);
        kr_bench_buf_addu(b, lens[i]);
        kr_bench_buf_add(b, "\r\n", 2);
        kr_bench_buf_add(b, argv[i], lens[i]);
        kr_bench_buf_add(b, "\r\n", 2);
    }
}

char *kr_bench_resp_put_publish(struct kr_bench_buf *b, const char *channel, size_t clen,
                                size_t plen)
{
    kr_bench_buf_reserve(b, 40 + clen + plen);
    kr_bench_buf_add(b, "*3\r\n$7\r\nPUBLISH\r\n$", 18);
    kr_bench_buf_addu(b, clen);
    kr_bench_buf_add(b, "\r\n", 2);
    kr_bench_buf_add(b, channel, clen);
    kr_bench_buf_add(b, "\r\n$", 3);
    kr_bench_buf_addu(b, plen);
    kr_bench_buf_add(b, "\r\n", 2);
    char *p = kr_bench_buf_grab(b, plen);
    kr_bench_buf_add(b, "\r\n", 2);
    return p;
}

/* ---------------------------------------------------------------- NATS */

static int kr_bench_nats_sep(char c)
{
    return c == ' ' || c == '\t';
}

static int kr_bench_nats_op(const char *line, size_t ll, const char *op)
{
    size_t n = strlen(op);
    if (ll < n || strncasecmp(line, op, n) != 0)
        return 0;
    return ll == n || kr_bench_nats_sep(line[n]);
}

ssize_t kr_bench_nats_parse(const char *buf, size_t len, struct kr_bench_nats *m)
{
    ssize_t eol = kr_bench_line_end(buf, len);
    if (eol == -2)
        return -EPROTO;
    if (eol < 0)
        return 0;
    size_t ll = (size_t)eol;
    memset(m, 0, sizeof(*m));
    m->line = buf;
    m->line_len = ll;
    size_t used = ll + 2;
    if (kr_bench_nats_op(buf, ll, "MSG")) {
        const char *tok[5];
        size_t tl[5];
        size_t nt = 0, i = 3;
        for (;;) {
            while (i < ll && kr_bench_nats_sep(buf[i]))
                i++;
            if (i >= ll)
                break;
            if (nt == 5)
                return -EPROTO;
            size_t s = i;
            while (i < ll && !kr_bench_nats_sep(buf[i]))
                i++;
            tok[nt] = buf + s;
            tl[nt++] = i - s;
        }
        uint64_t plen;
        if (nt != 3 && nt != 4)
            return -EPROTO;
        if (kr_bench_parse_u64(tok[1], tl[1], &m->sid) < 0 ||
            kr_bench_parse_u64(tok[nt - 1], tl[nt - 1], &plen) < 0)
            return -EPROTO;
        if (plen > (UINT64_C(1) << 40))
            return -EPROTO;
        m->kind = KR_BENCH_NATS_MSG;
        m->subject = tok[0];
        m->subject_len = tl[0];
        if (nt == 4) {
            m->reply_to = tok[2];
            m->reply_len = tl[2];
        }
        if (len - used < plen + 2)
            return 0;
        if (buf[used + plen] != '\r' || buf[used + plen + 1] != '\n')
            return -EPROTO;
        m->payload = buf + used;
        m->len = (size_t)plen;
        return (ssize_t)(used + plen + 2);
    }
    if (kr_bench_nats_op(buf, ll, "PING"))
        m->kind = KR_BENCH_NATS_PING;
    else if (kr_bench_nats_op(buf, ll, "PONG"))
        m->kind = KR_BENCH_NATS_PONG;
    else if (kr_bench_nats_op(buf, ll, "+OK"))
        m->kind = KR_BENCH_NATS_OK;
    else if (kr_bench_nats_op(buf, ll, "-ERR"))
        m->kind = KR_BENCH_NATS_ERR;
    else if (kr_bench_nats_op(buf, ll, "INFO"))
        m->kind = KR_BENCH_NATS_INFO;
    else
        return -EPROTO;
    return (ssize_t)used;
}

char *kr_bench_nats_put_pub(struct kr_bench_buf *b, const char *subject, size_t slen, size_t plen)
{
    kr_bench_buf_reserve(b, 32 + slen + plen);
    kr_bench_buf_add(b, "PUB ", 4);
    kr_bench_buf_add(b, subject, slen);
    kr_bench_buf_add(b, " ", 1);
    kr_bench_buf_addu(b, plen);
    kr_bench_buf_add(b, "\r\n", 2);
    char *p = kr_bench_buf_grab(b, plen);
    kr_bench_buf_add(b, "\r\n", 2);
    return p;
}

void kr_bench_nats_put_sub(struct kr_bench_buf *b, const char *subject, size_t slen, uint64_t sid)
{
    kr_bench_buf_add(b, "SUB ", 4);
    kr_bench_buf_add(b, subject, slen);
    kr_bench_buf_add(b, " ", 1);
    kr_bench_buf_addu(b, sid);
    kr_bench_buf_add(b, "\r\n", 2);
}

void kr_bench_nats_put_unsub(struct kr_bench_buf *b, uint64_t sid)
{
    kr_bench_buf_add(b, "UNSUB ", 6);
    kr_bench_buf_addu(b, sid);
    kr_bench_buf_add(b, "\r\n", 2);
}

/* ------------------------------------------------------------------ interest probes */

#define KB_PROBE_TAG "probe."

size_t kr_bench_probe_name(char *dst, size_t cap, const char *prefix, uint32_t sub)
{
    int n = snprintf(dst, cap, "%s" KB_PROBE_TAG "%u", prefix, sub);
    return n > 0 ? (size_t)n : 0;
}

int kr_bench_probe_parse(const char *s, size_t len, const char *prefix, uint32_t *sub)
{
    size_t pl = strlen(prefix), tl = sizeof(KB_PROBE_TAG) - 1;
    if (len <= pl + tl || memcmp(s, prefix, pl) != 0 || memcmp(s + pl, KB_PROBE_TAG, tl) != 0)
        return 0;
    const char *d = s + pl + tl, *end = s + len;
    if (end - d > 10 || (*d == '0' && end - d > 1))
        return 0; /* at most 10 digits, no leading zero */
    uint64_t v = 0;
    for (; d < end; d++) {
        if (*d < '0' || *d > '9')
            return 0;
        v = v * 10 + (uint64_t)(*d - '0');
    }
    if (v > UINT32_MAX)
        return 0;
    *sub = (uint32_t)v;
    return 1;
}
