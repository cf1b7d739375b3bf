/* The RESP codec: client request parser and reply formatters. See kr_resp.h for the
 * contract.
 *
 * Pure code: no allocation, no I/O, no globals. The parser follows Redis's own request
 * reading (processMultibulkBuffer / processInlineBuffer in networking.c, sdssplitargs in
 * sds.c) so the same bytes get the same arguments and the same error text, with these
 * deliberate differences:
 * - Limits are decided on the first max_inline_bytes + 1 bytes of a line, so the answer for
 *   a prefix never contradicts the answer for the whole (Redis checks after each 16 KiB
 *   read, so a slightly longer line can pass there when its end arrives in the same read).
 * - Lines are searched with memchr, so a NUL before a line's end does not hide it (Redis's
 *   strchr stops at a NUL and waits for the line limit). Inside an inline line a NUL ends
 *   the arguments, as sdssplitargs (a C-string function) does.
 * - In "expected '$', got 'X'", a NUL byte is written as a space, like '\r' and '\n' are by
 *   Redis (Redis cuts the message at the NUL).
 * - More than max_args arguments on an inline line is "too big inline request".
 *
 * Each scan is linear: the resume state in struct kr_resp_parser records where the current
 * line's terminator search stopped and which arguments are already stored, so a request
 * arriving in many small reads is not rescanned from its start on every read. */
#include "kr_resp.h"

#include "kr_util.h"

#include <limits.h>
#include <string.h>

void kr_resp_parser_init(struct kr_resp_parser *req)
{
    memset(req, 0, sizeof(*req));
}

static void kr_resp_reset_state(struct kr_resp_parser *req)
{
    req->nargs = 0;
    req->done = 0;
    req->pos = 0;
    req->scan = 0;
}

/* Redis's string2ll: optional '-', no leading zeros ("0" alone is fine, "-0" is not), no
 * '+', no spaces, 1..20 characters, within long long. */
static int kr_resp_ll(const char *s, size_t n, long long *out)
{
    size_t i = 0;
    int neg = 0;
    unsigned long long v = 0;

    if (n == 0 || n >= 21)
        return -1;
    if (n == 1 && s[0] == '0') {
        *out = 0;
        return 0;
    }
    if (s[0] == '-') {
        neg = 1;
        i = 1;
        if (n == 1)
            return -1;
    }
    if (s[i] < '1' || s[i] > '9')
        return -1;
    for (; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9)
            return -1;
        if (v > (ULLONG_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > (unsigned long long)LLONG_MAX + 1)
            return -1;
        *out = v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)v;
    } else {
        if (v > (unsigned long long)LLONG_MAX)
            return -1;
        *out = (long long)v;
    }
    return 0;
}

/* Find the terminator t of the line starting at start. Searches from req->scan (bytes
 * before it are known to hold no t) within the first max + 1 bytes of the line. Returns
 * KR_RESP_OK with *at = its offset, KR_RESP_NEED_MORE, or too_big when the line has more
 * than max bytes before its terminator. */
static int kr_resp_find(const char *buf, size_t len, size_t start, char t, uint32_t max,
                        int too_big, struct kr_resp_parser *req, size_t *at)
{
    size_t limit = (size_t)max + 1 > len - start ? len : start + (size_t)max + 1;
    size_t from = req->scan > start ? req->scan : start;
    if (from < limit) {
        const char *hit = memchr(buf + from, t, limit - from);
        if (hit) {
            *at = (size_t)(hit - buf);
            req->scan = *at;
            return KR_RESP_OK;
        }
    }
    req->scan = limit > from ? limit : from;
    if (len - start > (size_t)max)
        return too_big;
    return KR_RESP_NEED_MORE;
}

static int kr_resp_isspace(int c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static int kr_resp_ishex(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int kr_resp_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return c - 'A' + 10;
}

/* The byte at s[i] of an n-byte string, 0 past its end (the C string's terminator). */
static inline int kr_resp_at(const char *s, size_t n, size_t i)
{
    return i < n ? (unsigned char)s[i] : 0;
}

/* One token of sdssplitargs over s[0..n) starting at *pos (not a blank). Sets the raw span
 * [*tstart, *tend), *quoted, and *pos past the token (and past the separator or closing
 * quote that ended it). When out is not NULL, writes the decoded bytes there and sets
 * *outlen. Returns 0, or -1 for unbalanced quotes. */
static int kr_resp_token(const char *s, size_t n, size_t *pos, size_t *tstart, size_t *tend,
                         int *quoted, char *out, size_t *outlen)
{
    size_t p = *pos, o = 0;
    int inq = 0, insq = 0;

    *tstart = p;
    *quoted = 0;
    for (;;) {
        int c = kr_resp_at(s, n, p);
        if (inq) {
            if (c == '\\' && kr_resp_at(s, n, p + 1) == 'x' &&
                kr_resp_ishex(kr_resp_at(s, n, p + 2)) && kr_resp_ishex(kr_resp_at(s, n, p + 3))) {
                if (out)
                    out[o] = (char)(kr_resp_hexval(kr_resp_at(s, n, p + 2)) * 16 +
                                    kr_resp_hexval(kr_resp_at(s, n, p + 3)));
                o++;
                p += 4;
            } else if (c == '\\' && kr_resp_at(s, n, p + 1)) {
                int e = kr_resp_at(s, n, p + 1);
                switch (e) {
                case 'n': e = '\n'; break;
                case 'r': e = '\r'; break;
                case 't': e = '\t'; break;
                case 'b': e = '\b'; break;
                case 'a': e = '\a'; break;
                default: break;
                }
                if (out)
                    out[o] = (char)e;
                o++;
                p += 2;
            } else if (c == '"') {
                int next = kr_resp_at(s, n, p + 1);
                if (next && !kr_resp_isspace(next))
                    return -1;
                p++;
                *tend = p;
                break;
            } else if (!c) {
                return -1;
            } else {
                if (out)
                    out[o] = (char)c;
                o++;
                p++;
            }
        } else if (insq) {
            if (c == '\\' && kr_resp_at(s, n, p + 1) == '\'') {
                if (out)
                    out[o] = '\'';
                o++;
                p += 2;
            } else if (c == '\'') {
                int next = kr_resp_at(s, n, p + 1);
                if (next && !kr_resp_isspace(next))
                    return -1;
                p++;
                *tend = p;
                break;
            } else if (!c) {
                return -1;
            } else {
                if (out)
                    out[o] = (char)c;
                o++;
                p++;
            }
        } else if (c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == 0) {
            *tend = p;
            if (c)
                p++;
            break;
        } else if (c == '"') {
            inq = 1;
            *quoted = 1;
            p++;
        } else if (c == '\'') {
            insq = 1;
            *quoted = 1;
            p++;
        } else {
            if (out)
                out[o] = (char)c;
            o++;
            p++;
        }
    }
    *pos = p;
    if (outlen)
        *outlen = o;
    return 0;
}

size_t kr_resp_unquote(const char *raw, size_t n, char *out)
{
    size_t pos = 0, ts, te, olen = 0;
    int quoted;
    if (n == 0)
        return 0;
    if (kr_resp_token(raw, n, &pos, &ts, &te, &quoted, out, &olen) != 0)
        return 0; /* not a valid argument: nothing decoded */
    return olen;
}

static int kr_resp_parse_inline(const char *buf, size_t len, const struct kr_resp_limits *lim,
                                struct kr_resp_arg *argv, size_t argv_cap,
                                struct kr_resp_parser *req, size_t *consumed)
{
    size_t nl;
    int rc = kr_resp_find(buf, len, 0, '\n', lim->max_inline_bytes,
                          KR_RESP_ERR_INLINE_TOO_BIG, req, &nl);
    if (rc != KR_RESP_OK) {
        if (rc < 0) {
            *consumed = (size_t)lim->max_inline_bytes + 1; /* the bytes that decided it */
            kr_resp_reset_state(req);
        }
        return rc;
    }
    size_t end = nl;
    if (end > 0 && buf[end - 1] == '\r')
        end--;
    const char *nul = memchr(buf, '\0', end);
    if (nul)
        end = (size_t)(nul - buf);

    size_t pos = 0, argc = 0;
    int any_quoted = 0;
    for (;;) {
        while (pos < end && kr_resp_isspace((unsigned char)buf[pos]))
            pos++;
        if (pos >= end)
            break;
        size_t ts, te;
        int q;
        if (kr_resp_token(buf, end, &pos, &ts, &te, &q, NULL, NULL) != 0) {
            *consumed = nl + 1;
            kr_resp_reset_state(req);
            return KR_RESP_ERR_UNBALANCED_QUOTES;
        }
        if (argc < argv_cap) {
            argv[argc].p = buf + ts;
            argv[argc].len = te - ts;
        }
        any_quoted |= q;
        argc++;
    }
    if (argc > lim->max_args) {
        *consumed = nl + 1;
        kr_resp_reset_state(req);
        return KR_RESP_ERR_INLINE_TOO_BIG;
    }
    if (argc > argv_cap) {
        req->argc = argc; /* req->scan stays at the '\n': the next call finds it at once */
        return KR_RESP_ARGV_FULL;
    }
    req->argc = argc;
    req->is_inline = 1;
    req->quoted = any_quoted != 0;
    *consumed = nl + 1;
    kr_resp_reset_state(req);
    return KR_RESP_OK;
}

static int kr_resp_parse_multibulk(const char *buf, size_t len, const struct kr_resp_limits *lim,
                                   struct kr_resp_arg *argv, size_t argv_cap,
                                   struct kr_resp_parser *req, size_t *consumed)
{
    size_t cr;
    long long ll;
    int rc;

    if (req->nargs == 0) {
        rc = kr_resp_find(buf, len, 0, '\r', lim->max_inline_bytes,
                          KR_RESP_ERR_MBULK_COUNT_TOO_BIG, req, &cr);
        if (rc == KR_RESP_OK && len - cr < 2)
            rc = KR_RESP_NEED_MORE; /* the byte after '\r' */
        if (rc != KR_RESP_OK) {
            if (rc < 0) {
                *consumed = (size_t)lim->max_inline_bytes + 1;
                kr_resp_reset_state(req);
            }
            return rc;
        }
        if (kr_resp_ll(buf + 1, cr - 1, &ll) != 0 || ll > (long long)lim->max_args) {
            *consumed = cr + 2;
            kr_resp_reset_state(req);
            return KR_RESP_ERR_MBULK_LEN;
        }
        if (ll <= 0) { /* an empty request, skipped */
            req->argc = 0;
            req->is_inline = 0;
            req->quoted = 0;
            *consumed = cr + 2;
            kr_resp_reset_state(req);
            return KR_RESP_OK;
        }
        req->nargs = (size_t)ll;
        req->done = 0;
        req->pos = cr + 2;
        req->scan = cr + 2;
    }
    if (req->nargs > argv_cap) {
        req->argc = req->nargs;
        return KR_RESP_ARGV_FULL;
    }
    while (req->done < req->nargs) {
        size_t p = req->pos;
        rc = kr_resp_find(buf, len, p, '\r', lim->max_inline_bytes,
                          KR_RESP_ERR_BULK_COUNT_TOO_BIG, req, &cr);
        if (rc == KR_RESP_OK && len - cr < 2)
            rc = KR_RESP_NEED_MORE;
        if (rc != KR_RESP_OK) {
            if (rc < 0) {
                *consumed = p + (size_t)lim->max_inline_bytes + 1;
                kr_resp_reset_state(req);
            }
            return rc;
        }
        if (buf[p] != '$') {
            req->got = (unsigned char)buf[p];
            *consumed = cr + 2;
            kr_resp_reset_state(req);
            return KR_RESP_ERR_EXPECTED_DOLLAR;
        }
        if (kr_resp_ll(buf + p + 1, cr - p - 1, &ll) != 0 || ll < 0 ||
            (unsigned long long)ll > lim->max_bulk_bytes ||
            (unsigned long long)ll > (unsigned long long)(SIZE_MAX - cr - 4)) {
            *consumed = cr + 2;
            kr_resp_reset_state(req);
            return KR_RESP_ERR_BULK_LEN;
        }
        size_t data = cr + 2;
        size_t end = data + (size_t)ll + 2;
        if (end > len) {
            req->scan = cr; /* the count line is found again at once */
            *consumed = end;
            return KR_RESP_NEED_MORE;
        }
        argv[req->done].p = buf + data;
        argv[req->done].len = (size_t)ll;
        req->done++;
        req->pos = end;
        req->scan = end;
    }
    req->argc = req->nargs;
    req->is_inline = 0;
    req->quoted = 0;
    *consumed = req->pos;
    kr_resp_reset_state(req);
    return KR_RESP_OK;
}

int kr_resp_parse(const char *buf, size_t len, const struct kr_resp_limits *lim,
                  struct kr_resp_arg *argv, size_t argv_cap, struct kr_resp_parser *req,
                  size_t *consumed)
{
    *consumed = 0;
    if (req->done > 0 && req->base != buf) { /* the caller moved its buffer: rebase */
        for (size_t i = 0; i < req->done; i++)
            argv[i].p = buf + ((uintptr_t)argv[i].p - (uintptr_t)req->base);
    }
    req->base = buf;
    if (len == 0)
        return KR_RESP_NEED_MORE;
    if (buf[0] == '*')
        return kr_resp_parse_multibulk(buf, len, lim, argv, argv_cap, req, consumed);
    return kr_resp_parse_inline(buf, len, lim, argv, argv_cap, req, consumed);
}

/* ------------------------------------------------------------------ error replies */

size_t kr_resp_error_reply(int err, unsigned char got, char *out, size_t cap)
{
    static const char pre[] = "-ERR Protocol error: ";
    char tail[40];
    const char *msg;
    switch (err) {
    case KR_RESP_ERR_MBULK_LEN:
        msg = "invalid multibulk length";
        break;
    case KR_RESP_ERR_BULK_LEN:
        msg = "invalid bulk length";
        break;
    case KR_RESP_ERR_EXPECTED_DOLLAR: {
        char c = (got == '\r' || got == '\n' || got == '\0') ? ' ' : (char)got;
        memcpy(tail, "expected '$', got ' '", 22);
        tail[19] = c;
        msg = tail;
        break;
    }
    case KR_RESP_ERR_UNBALANCED_QUOTES:
        msg = "unbalanced quotes in request";
        break;
    case KR_RESP_ERR_INLINE_TOO_BIG:
        msg = "too big inline request";
        break;
    case KR_RESP_ERR_MBULK_COUNT_TOO_BIG:
        msg = "too big mbulk count string";
        break;
    case KR_RESP_ERR_BULK_COUNT_TOO_BIG:
        msg = "too big bulk count string";
        break;
    default:
        msg = "unknown error";
        break;
    }
    size_t ml = strlen(msg);
    size_t n = sizeof(pre) - 1 + ml + 2;
    if (n > cap)
        return n;
    memcpy(out, pre, sizeof(pre) - 1);
    memcpy(out + sizeof(pre) - 1, msg, ml);
    memcpy(out + n - 2, "\r\n", 2);
    return n;
}

/* ------------------------------------------------------------------ command names */

int kr_resp_cmd_is(const char *arg, size_t len, const char *name)
{
    size_t i = 0;
    for (; i < len; i++) {
        unsigned char a = (unsigned char)arg[i], b = (unsigned char)name[i];
        if (b == 0)
            return 0;
        if (a >= 'a' && a <= 'z')
            a = (unsigned char)(a - 'a' + 'A');
        if (b >= 'a' && b <= 'z')
            b = (unsigned char)(b - 'a' + 'A');
        if (a != b)
            return 0;
    }
    return name[i] == 0;
}

int kr_resp_cmd_find(const char *arg, size_t len, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n && i <= INT_MAX; i++)
        if (kr_resp_cmd_is(arg, len, names[i]))
            return (int)i;
    return -1;
}

/* ------------------------------------------------------------------ formatters */

/* "<type><v>\r\n" with v unsigned. */
static size_t kr_resp_fmt_len(char *out, size_t cap, char type, uint64_t v)
{
    char tmp[24];
    tmp[0] = type;
    size_t n = 1 + kr_u64_dec(tmp + 1, v);
    tmp[n++] = '\r';
    tmp[n++] = '\n';
    if (n <= cap)
        memcpy(out, tmp, n);
    return n;
}

/* Bytes of "<type><n>\r\n" without writing. */
static size_t kr_resp_len_size(uint64_t v)
{
    size_t d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return 1 + d + 2;
}

/* type, s with '\r' and '\n' mapped to spaces when map, "\r\n". */
static size_t kr_resp_fmt_line(char *out, size_t cap, char type, const char *s, size_t n,
                               int map)
{
    if (n > SIZE_MAX - 3)
        return SIZE_MAX;
    size_t total = n + 3;
    if (total > cap)
        return total;
    out[0] = type;
    if (n)
        memcpy(out + 1, s, n);
    if (map)
        for (size_t i = 1; i <= n; i++)
            if (out[i] == '\r' || out[i] == '\n')
                out[i] = ' ';
    out[n + 1] = '\r';
    out[n + 2] = '\n';
    return total;
}

size_t kr_resp_fmt_simple(char *out, size_t cap, const char *s, size_t n)
{
    return kr_resp_fmt_line(out, cap, '+', s, n, 0);
}

size_t kr_resp_fmt_error(char *out, size_t cap, const char *s, size_t n)
{
    return kr_resp_fmt_line(out, cap, '-', s, n, 1);
}

size_t kr_resp_fmt_int(char *out, size_t cap, int64_t v)
{
    char tmp[24];
    size_t n = 0;
    uint64_t u;
    tmp[n++] = ':';
    if (v < 0) {
        tmp[n++] = '-';
        u = (uint64_t)0 - (uint64_t)v;
    } else {
        u = (uint64_t)v;
    }
    n += kr_u64_dec(tmp + n, u);
    tmp[n++] = '\r';
    tmp[n++] = '\n';
    if (n <= cap)
        memcpy(out, tmp, n);
    return n;
}

size_t kr_resp_fmt_bulk_header(char *out, size_t cap, size_t n)
{
    return kr_resp_fmt_len(out, cap, '$', n);
}

size_t kr_resp_fmt_bulk(char *out, size_t cap, const char *p, size_t n)
{
    size_t h = kr_resp_len_size(n);
    if (n > SIZE_MAX - h - 2)
        return SIZE_MAX;
    size_t total = h + n + 2;
    if (total > cap)
        return total;
    kr_resp_fmt_len(out, cap, '$', n);
    if (n)
        memcpy(out + h, p, n);
    memcpy(out + h + n, "\r\n", 2);
    return total;
}

static size_t kr_resp_fmt_lit(char *out, size_t cap, const char *lit, size_t n)
{
    if (n <= cap)
        memcpy(out, lit, n);
    return n;
}

size_t kr_resp_fmt_null(char *out, size_t cap, int proto)
{
    return proto == 3 ? kr_resp_fmt_lit(out, cap, "_\r\n", 3)
                      : kr_resp_fmt_lit(out, cap, "$-1\r\n", 5);
}

size_t kr_resp_fmt_null_array(char *out, size_t cap, int proto)
{
    return proto == 3 ? kr_resp_fmt_lit(out, cap, "_\r\n", 3)
                      : kr_resp_fmt_lit(out, cap, "*-1\r\n", 5);
}

size_t kr_resp_fmt_array(char *out, size_t cap, size_t n)
{
    return kr_resp_fmt_len(out, cap, '*', n);
}

size_t kr_resp_fmt_map(char *out, size_t cap, int proto, size_t n)
{
    if (proto == 3)
        return kr_resp_fmt_len(out, cap, '%', n);
    return kr_resp_fmt_len(out, cap, '*', (uint64_t)n * 2);
}

size_t kr_resp_fmt_push(char *out, size_t cap, int proto, size_t n)
{
    return kr_resp_fmt_len(out, cap, proto == 3 ? '>' : '*', n);
}

/* Bytes of a bulk of n bytes, "$<n>\r\n<bytes>\r\n" (SIZE_MAX when that overflows). */
static size_t kr_resp_bulk_size(size_t n)
{
    size_t h = kr_resp_len_size(n);
    return n > SIZE_MAX - h - 2 ? SIZE_MAX : h + n + 2;
}

static size_t kr_resp_add(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

/* [kind, ch, <tail>]: the 3-element header, kind, ch (or null), then tail[0..tn). */
static size_t kr_resp_fmt_three(char *out, size_t cap, int proto, const char *kind,
                                const char *ch, size_t chlen, const char *tail, size_t tn)
{
    size_t kl = strlen(kind);
    size_t hdr = kr_resp_len_size(3);
    size_t chs = ch ? kr_resp_bulk_size(chlen) : (proto == 3 ? 3 : 5);
    size_t total = kr_resp_add(kr_resp_add(hdr + kr_resp_bulk_size(kl), chs), tn);
    if (total > cap)
        return total;
    size_t o = kr_resp_fmt_push(out, cap, proto, 3);
    o += kr_resp_fmt_bulk(out + o, cap - o, kind, kl);
    if (ch)
        o += kr_resp_fmt_bulk(out + o, cap - o, ch, chlen);
    else
        o += kr_resp_fmt_null(out + o, cap - o, proto);
    memcpy(out + o, tail, tn);
    return total;
}

size_t kr_resp_fmt_message_head(char *out, size_t cap, int proto, const char *kind,
                                const char *ch, size_t chlen, size_t payload_len)
{
    size_t kl = strlen(kind);
    if (ch && kl < 10 && chlen <= cap && cap - chlen >= 72) {
        /* every delivery passes here: written in one pass, two numbers formatted (the
         * general path below sizes and formats each of the four headers twice) */
        char *o = out;
        memcpy(o, proto == 3 ? ">3\r\n$" : "*3\r\n$", 5);
        o += 5;
        *o++ = (char)('0' + kl);
        *o++ = '\r';
        *o++ = '\n';
        memcpy(o, kind, kl);
        o += kl;
        memcpy(o, "\r\n$", 3);
        o += 3;
        o += kr_u64_dec(o, chlen);
        *o++ = '\r';
        *o++ = '\n';
        memcpy(o, ch, chlen);
        o += chlen;
        memcpy(o, "\r\n$", 3);
        o += 3;
        o += kr_u64_dec(o, payload_len);
        *o++ = '\r';
        *o++ = '\n';
        return (size_t)(o - out);
    }
    char tail[24];
    size_t tn = kr_resp_fmt_bulk_header(tail, sizeof(tail), payload_len);
    return kr_resp_fmt_three(out, cap, proto, kind, ch, chlen, tail, tn);
}

size_t kr_resp_fmt_pubsub_count(char *out, size_t cap, int proto, const char *kind,
                                const char *ch, size_t chlen, int64_t count)
{
    char tail[24];
    size_t tn = kr_resp_fmt_int(tail, sizeof(tail), count);
    return kr_resp_fmt_three(out, cap, proto, kind, ch, chlen, tail, tn);
}
