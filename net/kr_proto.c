/* The Kraken wire protocol codec: memcached text framing plus the data blocks of
 * `publish`, `subscribe`, `retro_subscribe` and `resume`. See kr_proto.h for the contract.
 *
 * Pure code: no allocation, no I/O, no globals. Every scan is linear (memchr for line and
 * token boundaries); nothing is ever rescanned more than a constant number of times.
 *
 * Decisions where the protocol leaves room:
 * - Command-line tokens are runs of non-space bytes; leading, trailing and repeated spaces
 *   are skipped (memcached's tokenizer does the same).
 * - A '\n' not preceded by '\r' inside a command line is a malformed line
 *   (KR_PERR_BAD_LINE), so a client using bare newlines is told at once instead of waiting
 *   for "line too long". A lone '\r' is ordinary (junk) content.
 * - `quit`, `version` and `stats` take no arguments; with any they are unknown commands.
 * - An unknown `set` key wins over a bad block terminator: the reply is "ERROR" once the
 *   block and its two terminator bytes have arrived, whatever those bytes are.
 * - In a publish entry line, spaces after the length are ignored like any other empty
 *   token. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memrchr */
#endif
#include "kr_proto.h"

#include <limits.h>
#include <string.h>

#define KR_PROTO_MAX_TOKENS 6 /* set <key> <flags> <exptime> <bytes> noreply */

struct kr_proto_tok {
    const char *p;
    size_t n;
};

static int kr_proto_tok_is(const struct kr_proto_tok *t, const char *lit, size_t litlen)
{
    return t->n == litlen && memcmp(t->p, lit, litlen) == 0;
}

#define KR_TOK_IS(t, lit) kr_proto_tok_is((t), (lit), sizeof(lit) - 1)

/* A plain unsigned decimal that fits in 64 bits: no sign, no spaces, at least one digit. */
static int kr_proto_parse_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9)
            return -1;
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Split s[0..n) on spaces, skipping empty tokens. Stores up to max tokens and returns how
 * many there are, or max + 1 when there are more than max. */
static size_t kr_proto_tokenize(const char *s, size_t n, struct kr_proto_tok *tok, size_t max)
{
    size_t nt = 0, i = 0;
    while (i < n) {
        if (s[i] == ' ') {
            i++;
            continue;
        }
        if (nt == max)
            return max + 1;
        const char *sp = memchr(s + i, ' ', n - i);
        size_t end = sp ? (size_t)(sp - s) : n;
        tok[nt].p = s + i;
        tok[nt].n = end - i;
        nt++;
        i = end;
    }
    return nt;
}

/* The request type named by a set key, 0 when unknown. */
static int kr_proto_set_key(const struct kr_proto_tok *key)
{
    switch (key->n) {
    case 6:
        return KR_TOK_IS(key, "resume") ? KR_REQ_RESUME : 0;
    case 7:
        return KR_TOK_IS(key, "publish") ? KR_REQ_PUBLISH : 0;
    case 8:
        return KR_TOK_IS(key, "register") ? KR_REQ_REGISTER : 0;
    case 9:
        return KR_TOK_IS(key, "subscribe") ? KR_REQ_SUBSCRIBE : 0;
    case 11:
        return KR_TOK_IS(key, "unsubscribe") ? KR_REQ_UNSUBSCRIBE : 0;
    case 15:
        return KR_TOK_IS(key, "retro_subscribe") ? KR_REQ_RETRO_SUBSCRIBE : 0;
    default:
        return 0;
    }
}

/* Find the command line at the front of buf. KR_PROTO_OK with *line_end just past its
 * "\r\n"; KR_PROTO_NEED_MORE; or an error with *line_end = bytes to discard. Only the first
 * max_line bytes are ever looked at, so the answer for a prefix never contradicts the
 * answer for the whole. */
static int kr_proto_find_line(const char *buf, size_t len, uint32_t max_line, size_t *line_end)
{
    size_t scan = len < max_line ? len : max_line;
    const char *nl = memchr(buf, '\n', scan);
    if (!nl) {
        if (len >= max_line) {
            *line_end = max_line;
            return KR_PERR_LINE_TOO_LONG;
        }
        return KR_PROTO_NEED_MORE;
    }
    size_t i = (size_t)(nl - buf);
    *line_end = i + 1;
    if (i == 0 || buf[i - 1] != '\r')
        return KR_PERR_BAD_LINE;
    return KR_PROTO_OK;
}

static int kr_proto_parse_set(const char *buf, size_t len, size_t line_end,
                              const struct kr_proto_tok *tok, size_t nt,
                              const struct kr_proto_limits *lim, struct kr_request *req,
                              size_t *consumed)
{
    uint64_t bytes;
    *consumed = line_end;
    if (nt < 5 || nt > 6 || (nt == 6 && !KR_TOK_IS(&tok[5], "noreply")))
        return KR_PERR_BAD_LINE;
    if (kr_proto_parse_u64(tok[4].p, tok[4].n, &bytes) != 0)
        return KR_PERR_BAD_LINE;
    if (bytes > lim->max_request_bytes || bytes > (uint64_t)(SIZE_MAX - line_end - 2))
        return KR_PERR_TOO_LARGE;
    size_t total = line_end + (size_t)bytes + 2;
    *consumed = total;
    if (len < total)
        return KR_PROTO_NEED_MORE;
    int type = kr_proto_set_key(&tok[1]);
    if (!type)
        return KR_PERR_UNKNOWN;
    if (buf[total - 2] != '\r' || buf[total - 1] != '\n')
        return KR_PERR_BAD_CHUNK;
    req->type = (enum kr_req_type)type;
    req->noreply = nt == 6;
    req->data = buf + line_end;
    req->data_len = (size_t)bytes;
    return KR_PROTO_OK;
}

int kr_proto_parse(const char *buf, size_t len, const struct kr_proto_limits *lim,
                   struct kr_request *req, size_t *consumed)
{
    struct kr_proto_tok tok[KR_PROTO_MAX_TOKENS];
    size_t line_end = 0;

    *consumed = 0;
    if (len == 0)
        return KR_PROTO_NEED_MORE;
    int rc = kr_proto_find_line(buf, len, lim->max_line_bytes, &line_end);
    if (rc == KR_PROTO_NEED_MORE)
        return rc;
    if (rc < 0) {
        *consumed = line_end;
        return rc;
    }
    size_t nt = kr_proto_tokenize(buf, line_end - 2, tok, KR_PROTO_MAX_TOKENS);
    if (nt >= 1 && KR_TOK_IS(&tok[0], "set")) /* NEED_MORE leaves the total in *consumed */
        return kr_proto_parse_set(buf, len, line_end, tok, nt, lim, req, consumed);

    *consumed = line_end;
    enum kr_req_type type;
    int get = nt >= 2 && KR_TOK_IS(&tok[0], "get");
    if (get && nt == 2 && KR_TOK_IS(&tok[1], "messages"))
        type = KR_REQ_GET_MESSAGES;
    else if (get && nt == 3 && KR_TOK_IS(&tok[1], "messages") && KR_TOK_IS(&tok[2], "position"))
        type = KR_REQ_GET_MESSAGES_POSITION;
    else if (get && nt == 2 && KR_TOK_IS(&tok[1], "position"))
        type = KR_REQ_GET_POSITION;
    else if (nt == 1 && KR_TOK_IS(&tok[0], "quit"))
        type = KR_REQ_QUIT;
    else if (nt == 1 && KR_TOK_IS(&tok[0], "version"))
        type = KR_REQ_VERSION;
    else if (nt == 1 && KR_TOK_IS(&tok[0], "stats"))
        type = KR_REQ_STATS;
    else
        return KR_PERR_UNKNOWN;
    req->type = type;
    req->noreply = 0;
    req->data = NULL;
    req->data_len = 0;
    return KR_PROTO_OK;
}

const char *kr_proto_error_reply(int err)
{
    switch (err) {
    case KR_PERR_UNKNOWN:
        return "ERROR\r\n";
    case KR_PERR_BAD_LINE:
        return "CLIENT_ERROR bad command line format\r\n";
    case KR_PERR_BAD_CHUNK:
    case KR_PERR_BAD_FORMAT:
        return "CLIENT_ERROR bad data chunk\r\n";
    case KR_PERR_BAD_PUBLISH:
        return "CLIENT_ERROR bad publish block\r\n";
    case KR_PERR_BAD_TOPIC:
        return "CLIENT_ERROR bad topic\r\n";
    case KR_PERR_LINE_TOO_LONG:
        return "CLIENT_ERROR line too long\r\n";
    case KR_PERR_TOO_LARGE:
        return "SERVER_ERROR object too large\r\n";
    case KR_PERR_BAD_POSITION:
        return "CLIENT_ERROR bad position\r\n";
    default:
        return "ERROR\r\n"; /* not an error code of this module */
    }
}

int kr_proto_next_topic(const char *s, size_t len, size_t *pos, const char **tok, size_t *toklen)
{
    size_t i = *pos;
    while (i < len && s[i] == ' ')
        i++;
    if (i >= len) {
        *pos = len;
        return 0;
    }
    const char *sp = memchr(s + i, ' ', len - i);
    size_t end = sp ? (size_t)(sp - s) : len;
    *tok = s + i;
    *toklen = end - i;
    *pos = end;
    return 1;
}

uint32_t kr_proto_count_topics(const char *s, size_t len)
{
    size_t pos = 0, tl;
    const char *t;
    uint32_t n = 0;
    while (kr_proto_next_topic(s, len, &pos, &t, &tl))
        n++;
    return n;
}

/* Index of the '\r' of the first "\r\n" in s[from..len) (the '\r' at or after from), or -1. */
static int kr_proto_find_crlf(const char *s, size_t len, size_t from, size_t *cr)
{
    size_t i = from;
    while (i < len) {
        const char *nl = memchr(s + i, '\n', len - i);
        if (!nl)
            return -1;
        size_t at = (size_t)(nl - s);
        if (at > from && s[at - 1] == '\r') {
            *cr = at - 1;
            return 0;
        }
        i = at + 1;
    }
    return -1;
}

/* Parse and validate the publish entry at block[pos..len); *next is where the next starts. */
static int kr_proto_pub_entry(const char *b, size_t len, size_t pos, kr_proto_entry_cb check,
                              void *ctx, struct kr_pub_entry *e, size_t *next)
{
    static const char prefix[] = "MESSAGE ";
    const size_t plen_prefix = sizeof(prefix) - 1;
    size_t cr;

    if (len - pos < plen_prefix || memcmp(b + pos, prefix, plen_prefix) != 0)
        return KR_PERR_BAD_PUBLISH;
    size_t start = pos + plen_prefix;
    if (kr_proto_find_crlf(b, len, start, &cr) != 0)
        return KR_PERR_BAD_PUBLISH;

    /* "<topics> <len>" in b[start..cr), spaces after <len> ignored */
    size_t end = cr;
    while (end > start && b[end - 1] == ' ')
        end--;
    const char *sp = end > start ? memrchr(b + start, ' ', end - start) : NULL;
    size_t len_at = sp ? (size_t)(sp - b) + 1 : start;
    uint64_t payload_len;
    if (kr_proto_parse_u64(b + len_at, end - len_at, &payload_len) != 0)
        return KR_PERR_BAD_PUBLISH;

    size_t topics_len = sp ? (size_t)(sp - b) - start : 0;
    e->topics = b + start;
    e->topics_len = topics_len;
    e->ntopics = kr_proto_count_topics(b + start, topics_len);
    e->payload = NULL;
    e->payload_len = payload_len > SIZE_MAX ? SIZE_MAX : (size_t)payload_len;
    if (check) { /* the caller's rules, before the payload's framing (it is not read yet) */
        int rc = check(ctx, e);
        if (rc != 0)
            return rc;
    }
    size_t p = cr + 2;
    size_t avail = len - p;
    if (payload_len > avail || avail - (size_t)payload_len < 2)
        return KR_PERR_BAD_PUBLISH;
    size_t pend = p + (size_t)payload_len;
    if (b[pend] != '\r' || b[pend + 1] != '\n')
        return KR_PERR_BAD_PUBLISH;

    e->payload = b + p;
    e->payload_len = (size_t)payload_len;
    *next = pend + 2;
    return 0;
}

int kr_proto_parse_publish(const char *block, size_t len, kr_proto_entry_cb check,
                           kr_proto_entry_cb cb, void *ctx, size_t *nentries)
{
    struct kr_pub_entry e;
    size_t pos = 0, next = 0, n = 0;
    int rc;

    if (nentries)
        *nentries = 0;
    while (pos < len) {
        rc = kr_proto_pub_entry(block, len, pos, check, ctx, &e, &next);
        if (rc != 0)
            return rc;
        n++;
        pos = next;
    }
    if (cb) {
        size_t k = 0;
        for (pos = 0; pos < len; pos = next) {
            rc = kr_proto_pub_entry(block, len, pos, NULL, NULL, &e, &next);
            if (rc < 0) /* impossible: validated above */
                return rc;
            k++;
            rc = cb(ctx, &e);
            if (rc != 0) {
                if (nentries)
                    *nentries = k;
                return rc;
            }
        }
    }
    if (nentries)
        *nentries = n;
    return 0;
}

int kr_proto_parse_retro(const char *block, size_t len, uint64_t *horizon_us, const char **topics, size_t *topics_len)
{
    static const uint32_t scale[] = {100000, 10000, 1000, 100, 10, 1};
    const uint64_t max_sec = UINT64_MAX / 1000000;
    size_t i = 0;
    uint64_t sec = 0, us = 0;

    while (i < len && (unsigned)(unsigned char)block[i] - '0' <= 9) {
        sec = sec * 10 + (unsigned)(block[i] - '0');
        if (sec > max_sec)
            return KR_PERR_BAD_FORMAT;
        i++;
    }
    if (i == 0)
        return KR_PERR_BAD_FORMAT;
    if (i < len && block[i] == '.') {
        size_t nd = 0;
        i++;
        while (i < len && (unsigned)(unsigned char)block[i] - '0' <= 9) {
            if (nd == 9)
                return KR_PERR_BAD_FORMAT;
            if (nd < 6)
                us += (uint64_t)(block[i] - '0') * scale[nd];
            nd++;
            i++;
        }
        if (nd == 0)
            return KR_PERR_BAD_FORMAT;
    }
    if (len - i < 2 || block[i] != '\r' || block[i + 1] != '\n')
        return KR_PERR_BAD_FORMAT;
    if (sec == max_sec && us > UINT64_MAX - max_sec * 1000000)
        return KR_PERR_BAD_FORMAT;

    const char *t = block + i + 2;
    size_t tl = len - i - 2;
    *horizon_us = sec * 1000000 + us;
    *topics = t;
    *topics_len = tl;
    return 0;
}

int kr_proto_parse_resume(const char *block, size_t len, const char **token, size_t *token_len,
                          const char **topics, size_t *topics_len)
{
    size_t i = 0;
    /* the token: printable bytes, no space, up to the "\r" of the first "\r\n" */
    while (i < len && i <= KR_PROTO_TOKEN_MAX) {
        unsigned char c = (unsigned char)block[i];
        if (c < 0x21 || c > 0x7e)
            break;
        i++;
    }
    if (i == 0 || i > KR_PROTO_TOKEN_MAX)
        return KR_PERR_BAD_FORMAT;
    if (len - i < 2 || block[i] != '\r' || block[i + 1] != '\n')
        return KR_PERR_BAD_FORMAT;
    *token = block;
    *token_len = i;
    *topics = block + i + 2;
    *topics_len = len - i - 2;
    return 0;
}
