/* Erlang-term configuration files: the sys.config format of existing deployments,
 *
 *     %% comments
 *     [{kraken, [{num_router_shards, 8},
 *                {pid_file, "/var/run/kraken.pid"},
 *                {listen_ip, {0,0,0,0}}]},
 *      {lager, [...]}].
 *
 * A small recursive-descent reader for the subset such files use: lists, tuples, maps
 * (skipped only), atoms (bare or quoted), integers (with Base#digits and $c), floats
 * (skipped only), strings (adjacent ones concatenate) and binaries. The kraken section's
 * {Key, Value} pairs go through kr_cfg_set like command-line values; other applications'
 * sections are skipped and reported to the caller. An `octopus` section is the same
 * application as `kraken`: the Erlang server's README gives its config example under that
 * name, so deployments copied from it use it. See kr_cfg.h. */
#include "kr_util.h"
#include "kr_cfg.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define KR_ET_MAX_DEPTH 64
#define KR_ET_MAX_BYTES (1u << 20)

enum kr_et_type {
    KR_ET_INT,
    KR_ET_FLOAT,
    KR_ET_ATOM,
    KR_ET_STR,
    KR_ET_BIN,
    KR_ET_LIST,
    KR_ET_TUPLE,
    KR_ET_MAP,
};

struct kr_et {
    enum kr_et_type type;
    int line;
    char *text; /* atom name, string/binary bytes, number as written (integers: decimal) */
    size_t len;
    bool negative; /* integers */
    struct kr_et **items; /* list/tuple elements; map keys and values alternate */
    size_t n;
    size_t cap;
};

struct kr_et_parser {
    const char *p;
    const char *end;
    int line;
    const char *name;
    char *err;
    size_t errlen;
    bool failed;
};

__attribute__((format(printf, 3, 4))) static void kr_et_fail(struct kr_et_parser *ps, int line,
                                                             const char *fmt, ...)
{
    if (ps->failed)
        return;
    ps->failed = true;
    if (!ps->err || !ps->errlen)
        return;
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(ps->err, ps->errlen, "%s:%d: %s", ps->name, line, msg);
}

static void kr_et_free(struct kr_et *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        kr_et_free(t->items[i]);
    free(t->items);
    free(t->text);
    free(t);
}

static struct kr_et *kr_et_new(enum kr_et_type type, int line)
{
    struct kr_et *t = kr_xrealloc(NULL, sizeof(*t));
    memset(t, 0, sizeof(*t));
    t->type = type;
    t->line = line;
    return t;
}

static void kr_et_add(struct kr_et *t, struct kr_et *item)
{
    KR_GROW_MIN(t->items, t->cap, t->n + 1, 4);
    t->items[t->n++] = item;
}

static void kr_et_text_add(struct kr_et *t, const char *s, size_t n)
{
    t->text = kr_xrealloc(t->text, t->len + n + 1);
    memcpy(t->text + t->len, s, n);
    t->len += n;
    t->text[t->len] = '\0';
}

/* Skip blanks and % comments, counting lines. */
static void kr_et_skip(struct kr_et_parser *ps)
{
    while (ps->p < ps->end) {
        char c = *ps->p;
        if (c == '\n') {
            ps->line++;
            ps->p++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') {
            ps->p++;
        } else if (c == '%') {
            while (ps->p < ps->end && *ps->p != '\n')
                ps->p++;
        } else {
            break;
        }
    }
}

static int kr_et_peek(struct kr_et_parser *ps)
{
    kr_et_skip(ps);
    return ps->p < ps->end ? (unsigned char)*ps->p : -1;
}

static bool kr_et_is_digit(int c) { return c >= '0' && c <= '9'; }
static bool kr_et_is_lower(int c) { return c >= 'a' && c <= 'z'; }
static bool kr_et_is_name(int c)
{
    return kr_et_is_lower(c) || (c >= 'A' && c <= 'Z') || kr_et_is_digit(c) || c == '_' ||
           c == '@';
}

/* One escape sequence after a backslash inside "..." or '...'; appends the byte(s). */
static bool kr_et_escape(struct kr_et_parser *ps, struct kr_et *t)
{
    if (ps->p >= ps->end) {
        kr_et_fail(ps, ps->line, "unterminated escape sequence");
        return false;
    }
    char c = *ps->p++;
    unsigned v;
    switch (c) {
    case 'b': v = '\b'; break;
    case 'd': v = 0x7f; break;
    case 'e': v = 0x1b; break;
    case 'f': v = '\f'; break;
    case 'n': v = '\n'; break;
    case 'r': v = '\r'; break;
    case 's': v = ' '; break;
    case 't': v = '\t'; break;
    case 'v': v = '\v'; break;
    case '\\': case '"': case '\'': v = (unsigned char)c; break;
    case '^':
        if (ps->p >= ps->end) {
            kr_et_fail(ps, ps->line, "unterminated escape sequence");
            return false;
        }
        v = (unsigned char)*ps->p++ & 0x1f;
        break;
    case 'x': {
        bool braces = ps->p < ps->end && *ps->p == '{';
        if (braces)
            ps->p++;
        v = 0;
        int nd = 0;
        while (ps->p < ps->end && nd < (braces ? 6 : 2)) {
            char h = *ps->p;
            int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                  : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
            if (d < 0)
                break;
            v = v * 16 + (unsigned)d;
            nd++;
            ps->p++;
        }
        if (braces && (ps->p >= ps->end || *ps->p != '}'))
            nd = 0;
        else if (braces)
            ps->p++;
        if (nd == 0 || v > 255) {
            kr_et_fail(ps, ps->line, "bad \\x escape (only bytes 0..255 are supported)");
            return false;
        }
        break;
    }
    default:
        if (c >= '0' && c <= '7') {
            v = (unsigned)(c - '0');
            for (int i = 0; i < 2 && ps->p < ps->end && *ps->p >= '0' && *ps->p <= '7'; i++)
                v = v * 8 + (unsigned)(*ps->p++ - '0');
            if (v > 255) {
                kr_et_fail(ps, ps->line, "bad octal escape");
                return false;
            }
            break;
        }
        kr_et_fail(ps, ps->line, "unknown escape sequence '\\%c'", c);
        return false;
    }
    char b = (char)v;
    kr_et_text_add(t, &b, 1);
    return true;
}

/* "..." or '...' (the opening quote is at ps->p), appended to t->text. */
static bool kr_et_quoted(struct kr_et_parser *ps, struct kr_et *t, char quote)
{
    int start_line = ps->line;
    ps->p++;
    for (;;) {
        const char *q = ps->p;
        while (q < ps->end && *q != quote && *q != '\\')
            q++;
        for (const char *k = ps->p; k < q; k++)
            if (*k == '\n')
                ps->line++;
        kr_et_text_add(t, ps->p, (size_t)(q - ps->p));
        ps->p = q;
        if (q >= ps->end) {
            kr_et_fail(ps, start_line, "unterminated %s", quote == '"' ? "string" : "quoted atom");
            return false;
        }
        ps->p++;
        if (*q == quote)
            return true;
        if (!kr_et_escape(ps, t))
            return false;
    }
}

static struct kr_et *kr_et_term(struct kr_et_parser *ps, int depth);

/* Elements up to `close`, separated by commas; the opening bracket was consumed. */
static bool kr_et_seq(struct kr_et_parser *ps, struct kr_et *t, char close, int depth)
{
    if (kr_et_peek(ps) == close) {
        ps->p++;
        return true;
    }
    for (;;) {
        struct kr_et *item = kr_et_term(ps, depth + 1);
        if (!item)
            return false;
        kr_et_add(t, item);
        if (t->type == KR_ET_MAP) {
            int c = kr_et_peek(ps);
            if (ps->end - ps->p >= 2 && (memcmp(ps->p, "=>", 2) == 0 || memcmp(ps->p, ":=", 2) == 0)) {
                ps->p += 2;
            } else {
                kr_et_fail(ps, ps->line, "expected '=>' in a map, found %s",
                           c < 0 ? "the end of the file" : "something else");
                return false;
            }
            item = kr_et_term(ps, depth + 1);
            if (!item)
                return false;
            kr_et_add(t, item);
        }
        int c = kr_et_peek(ps);
        if (c == ',') {
            ps->p++;
            continue;
        }
        if (c == close) {
            ps->p++;
            return true;
        }
        if (c == '|' && close == ']') {
            kr_et_fail(ps, ps->line, "improper lists ('|') are not supported");
            return false;
        }
        if (c < 0)
            kr_et_fail(ps, t->line, "missing '%c' (the file ends first)", close);
        else
            kr_et_fail(ps, ps->line, "expected ',' or '%c', found '%c'", close, c);
        return false;
    }
}

/* An integer (with an optional sign, Base#digits) or a float. */
static struct kr_et *kr_et_number(struct kr_et_parser *ps)
{
    struct kr_et *t = kr_et_new(KR_ET_INT, ps->line);
    if (*ps->p == '-' || *ps->p == '+') {
        t->negative = *ps->p == '-';
        ps->p++;
    }
    const char *s = ps->p;
    while (ps->p < ps->end && (kr_et_is_digit(*ps->p) || *ps->p == '_'))
        ps->p++;
    if (ps->p < ps->end && *ps->p == '#') {
        unsigned base = (unsigned)strtoul(s, NULL, 10);
        ps->p++;
        if (base < 2 || base > 36) {
            kr_et_fail(ps, t->line, "bad integer base %u", base);
            kr_et_free(t);
            return NULL;
        }
        uint64_t v = 0;
        int nd = 0;
        while (ps->p < ps->end) {
            char h = *ps->p;
            int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'z' ? h - 'a' + 10
                  : h >= 'A' && h <= 'Z' ? h - 'A' + 10 : h == '_' ? -2 : -1;
            if (d == -2) {
                ps->p++;
                continue;
            }
            if (d < 0 || (unsigned)d >= base)
                break;
            if (v > (UINT64_MAX - (unsigned)d) / base) {
                kr_et_fail(ps, t->line, "integer too large");
                kr_et_free(t);
                return NULL;
            }
            v = v * base + (unsigned)d;
            nd++;
            ps->p++;
        }
        if (nd == 0) {
            kr_et_fail(ps, t->line, "missing digits after '%u#'", base);
            kr_et_free(t);
            return NULL;
        }
        char buf[32];
        int n = snprintf(buf, sizeof(buf), "%" PRIu64, v);
        kr_et_text_add(t, buf, (size_t)n);
        return t;
    }
    for (const char *k = s; k < ps->p; k++)
        if (*k != '_')
            kr_et_text_add(t, k, 1);
    if (ps->end - ps->p >= 2 && ps->p[0] == '.' && kr_et_is_digit(ps->p[1])) {
        t->type = KR_ET_FLOAT;
        ps->p++;
        while (ps->p < ps->end && (kr_et_is_digit(*ps->p) || *ps->p == '_'))
            ps->p++;
        if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
            ps->p++;
            if (ps->p < ps->end && (*ps->p == '-' || *ps->p == '+'))
                ps->p++;
            while (ps->p < ps->end && kr_et_is_digit(*ps->p))
                ps->p++;
        }
    }
    return t;
}

/* <<"bytes", 1, 2>> (the "<<" is at ps->p). */
static struct kr_et *kr_et_binary(struct kr_et_parser *ps)
{
    struct kr_et *t = kr_et_new(KR_ET_BIN, ps->line);
    kr_et_text_add(t, "", 0);
    ps->p += 2;
    if (kr_et_peek(ps) == '>' && ps->end - ps->p >= 2 && ps->p[1] == '>') {
        ps->p += 2;
        return t;
    }
    for (;;) {
        int c = kr_et_peek(ps);
        if (c == '"') {
            if (!kr_et_quoted(ps, t, '"'))
                goto fail;
        } else if (kr_et_is_digit(c)) {
            struct kr_et *n = kr_et_number(ps);
            if (!n)
                goto fail;
            unsigned long v = n->type == KR_ET_INT ? strtoul(n->text, NULL, 10) : 256;
            kr_et_free(n);
            if (v > 255) {
                kr_et_fail(ps, ps->line, "binary segments must be strings or bytes 0..255");
                goto fail;
            }
            char b = (char)v;
            kr_et_text_add(t, &b, 1);
        } else {
            kr_et_fail(ps, ps->line, "binary segments must be strings or bytes 0..255");
            goto fail;
        }
        c = kr_et_peek(ps);
        if (c == ',') {
            ps->p++;
            continue;
        }
        if (c == '>' && ps->end - ps->p >= 2 && ps->p[1] == '>') {
            ps->p += 2;
            return t;
        }
        kr_et_fail(ps, ps->line, "expected ',' or '>>' in a binary");
        goto fail;
    }
fail:
    kr_et_free(t);
    return NULL;
}

static struct kr_et *kr_et_term(struct kr_et_parser *ps, int depth)
{
    int c = kr_et_peek(ps);
    if (depth > KR_ET_MAX_DEPTH) {
        kr_et_fail(ps, ps->line, "terms nested deeper than %d levels", KR_ET_MAX_DEPTH);
        return NULL;
    }
    if (c < 0) {
        kr_et_fail(ps, ps->line, "unexpected end of the file");
        return NULL;
    }
    struct kr_et *t;
    switch (c) {
    case '[':
    case '{':
        t = kr_et_new(c == '[' ? KR_ET_LIST : KR_ET_TUPLE, ps->line);
        ps->p++;
        if (!kr_et_seq(ps, t, c == '[' ? ']' : '}', depth)) {
            kr_et_free(t);
            return NULL;
        }
        return t;
    case '#':
        if (ps->end - ps->p >= 2 && ps->p[1] == '{') {
            t = kr_et_new(KR_ET_MAP, ps->line);
            ps->p += 2;
            if (!kr_et_seq(ps, t, '}', depth)) {
                kr_et_free(t);
                return NULL;
            }
            return t;
        }
        break;
    case '<':
        if (ps->end - ps->p >= 2 && ps->p[1] == '<')
            return kr_et_binary(ps);
        break;
    case '"':
        t = kr_et_new(KR_ET_STR, ps->line);
        kr_et_text_add(t, "", 0);
        do {
            if (!kr_et_quoted(ps, t, '"')) {
                kr_et_free(t);
                return NULL;
            }
        } while (kr_et_peek(ps) == '"'); /* "a" "b" is "ab" */
        return t;
    case '\'':
        t = kr_et_new(KR_ET_ATOM, ps->line);
        kr_et_text_add(t, "", 0);
        if (!kr_et_quoted(ps, t, '\'')) {
            kr_et_free(t);
            return NULL;
        }
        return t;
    case '$': {
        t = kr_et_new(KR_ET_INT, ps->line);
        ps->p++;
        struct kr_et ch = {0};
        if (ps->p < ps->end && *ps->p == '\\') {
            ps->p++;
            if (!kr_et_escape(ps, &ch)) {
                free(ch.text);
                kr_et_free(t);
                return NULL;
            }
        } else if (ps->p < ps->end) {
            kr_et_text_add(&ch, ps->p++, 1);
        } else {
            kr_et_fail(ps, t->line, "missing character after '$'");
            kr_et_free(t);
            return NULL;
        }
        char buf[8];
        int n = snprintf(buf, sizeof(buf), "%u", (unsigned char)ch.text[0]);
        free(ch.text);
        kr_et_text_add(t, buf, (size_t)n);
        return t;
    }
    default:
        break;
    }
    if (kr_et_is_digit(c) || ((c == '-' || c == '+') && ps->end - ps->p >= 2 &&
                              kr_et_is_digit(ps->p[1])))
        return kr_et_number(ps);
    if (kr_et_is_lower(c)) {
        t = kr_et_new(KR_ET_ATOM, ps->line);
        const char *s = ps->p;
        while (ps->p < ps->end && kr_et_is_name(*ps->p))
            ps->p++;
        kr_et_text_add(t, s, (size_t)(ps->p - s));
        return t;
    }
    if ((c >= 'A' && c <= 'Z') || c == '_') {
        kr_et_fail(ps, ps->line, "variables are not allowed in a config file");
        return NULL;
    }
    if (c >= 0x20 && c < 0x7f)
        kr_et_fail(ps, ps->line, "unexpected '%c'", c);
    else
        kr_et_fail(ps, ps->line, "unexpected byte 0x%02x", (unsigned)c);
    return NULL;
}

static const char *kr_et_type_name(const struct kr_et *t)
{
    switch (t->type) {
    case KR_ET_INT: return "an integer";
    case KR_ET_FLOAT: return "a float";
    case KR_ET_ATOM: return "an atom";
    case KR_ET_STR: return "a string";
    case KR_ET_BIN: return "a binary";
    case KR_ET_LIST: return "a list";
    case KR_ET_TUPLE: return "a tuple";
    case KR_ET_MAP: return "a map";
    }
    return "a term";
}

/* The textual value kr_cfg_set reads for a term, in *out (malloc'ed); false when the term
 * has no such form (message in ps). */
static bool kr_et_value_text(struct kr_et_parser *ps, const char *key, const struct kr_et *v,
                             char **out)
{
    struct kr_et buf = {0};
    kr_et_text_add(&buf, "", 0);
    switch (v->type) {
    case KR_ET_INT:
        if (v->negative)
            kr_et_text_add(&buf, "-", 1);
        kr_et_text_add(&buf, v->text, v->len);
        break;
    case KR_ET_ATOM:
    case KR_ET_STR:
    case KR_ET_BIN:
        if (memchr(v->text, '\0', v->len)) {
            kr_et_fail(ps, v->line, "value for %s holds a NUL byte", key);
            free(buf.text);
            return false;
        }
        kr_et_text_add(&buf, v->text, v->len);
        break;
    case KR_ET_LIST: /* a string written as a list of character codes; [] is "" */
        for (size_t i = 0; i < v->n; i++) {
            const struct kr_et *e = v->items[i];
            unsigned long ch = e->type == KR_ET_INT && !e->negative ? strtoul(e->text, NULL, 10) : 0;
            if (ch < 1 || ch > 255) {
                kr_et_fail(ps, v->line,
                           "bad value for %s: a list is read only as a string of characters",
                           key);
                free(buf.text);
                return false;
            }
            char b = (char)ch;
            kr_et_text_add(&buf, &b, 1);
        }
        break;
    case KR_ET_TUPLE: /* an address such as {0,0,0,0} */
        kr_et_text_add(&buf, "{", 1);
        for (size_t i = 0; i < v->n; i++) {
            const struct kr_et *e = v->items[i];
            if (e->type != KR_ET_INT || e->negative) {
                kr_et_fail(ps, v->line,
                           "bad value for %s: a tuple is read only as an address such as "
                           "{127,0,0,1}",
                           key);
                free(buf.text);
                return false;
            }
            if (i)
                kr_et_text_add(&buf, ",", 1);
            kr_et_text_add(&buf, e->text, e->len);
        }
        kr_et_text_add(&buf, "}", 1);
        break;
    case KR_ET_FLOAT:
    case KR_ET_MAP:
        kr_et_fail(ps, v->line, "bad value for %s: %s is not a value any option takes", key,
                   kr_et_type_name(v));
        free(buf.text);
        return false;
    }
    *out = buf.text;
    return true;
}

/* Apply the {Key, Value} pairs of the kraken (or octopus) section. */
static bool kr_et_apply(struct kr_et_parser *ps, struct kr_cfg *cfg, const struct kr_et *list)
{
    for (size_t i = 0; i < list->n; i++) {
        const struct kr_et *kv = list->items[i];
        if (kv->type != KR_ET_TUPLE || kv->n != 2 || kv->items[0]->type != KR_ET_ATOM) {
            kr_et_fail(ps, kv->line,
                       "expected {Key, Value} in the kraken section, found %s",
                       kr_et_type_name(kv));
            return false;
        }
        const char *key = kv->items[0]->text;
        char *text = NULL;
        if (!kr_et_value_text(ps, key, kv->items[1], &text))
            return false;
        char msg[384];
        int rc = kr_cfg_set(cfg, key, text, msg, sizeof(msg));
        free(text);
        if (rc < 0) {
            kr_et_fail(ps, kv->line, "%s", msg);
            return false;
        }
    }
    return true;
}

int kr_cfg_load_eterm(struct kr_cfg *cfg, const char *name, const char *text, size_t len,
                      char *warn, size_t warnlen, char *err, size_t errlen)
{
    struct kr_et_parser ps = {
        .p = text, .end = text + len, .line = 1, .name = name ? name : "config",
        .err = err, .errlen = errlen,
    };
    if (warn && warnlen)
        warn[0] = '\0';
    if (len > KR_ET_MAX_BYTES) {
        kr_et_fail(&ps, 1, "file too large (at most %u bytes)", KR_ET_MAX_BYTES);
        return -EINVAL;
    }
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        ps.p += 3;
    struct kr_et *top = kr_et_term(&ps, 0);
    if (!top)
        return -EINVAL;
    int c = kr_et_peek(&ps);
    if (c != '.') {
        if (c < 0)
            kr_et_fail(&ps, ps.line, "missing '.' after the configuration term");
        else
            kr_et_fail(&ps, ps.line, "expected '.' after the configuration term, found '%c'", c);
        kr_et_free(top);
        return -EINVAL;
    }
    ps.p++;
    if (kr_et_peek(&ps) >= 0) {
        kr_et_fail(&ps, ps.line, "unexpected text after the final '.'");
        kr_et_free(top);
        return -EINVAL;
    }
    struct kr_cfg tmp = *cfg;
    size_t wlen = 0;
    if (top->type != KR_ET_LIST) {
        kr_et_fail(&ps, top->line,
                   "expected a list of {Application, [{Key, Value}, ...]}, found %s",
                   kr_et_type_name(top));
    }
    for (size_t i = 0; !ps.failed && i < top->n; i++) {
        const struct kr_et *app = top->items[i];
        if (app->type == KR_ET_STR) {
            kr_et_fail(&ps, app->line,
                       "included config files (\"%.200s\") are not read; put the kraken "
                       "settings in this file",
                       app->text);
            break;
        }
        if (app->type != KR_ET_TUPLE || app->n != 2 || app->items[0]->type != KR_ET_ATOM ||
            app->items[1]->type != KR_ET_LIST) {
            kr_et_fail(&ps, app->line,
                       "expected {Application, [{Key, Value}, ...]}, found %s",
                       kr_et_type_name(app));
            break;
        }
        const char *aname = app->items[0]->text;
        if (strcmp(aname, "kraken") == 0 || strcmp(aname, "octopus") == 0) {
            kr_et_apply(&ps, &tmp, app->items[1]);
        } else if (warn && warnlen) {
            int n = snprintf(warn + wlen, warnlen - wlen, "%s%.64s", wlen ? ", " : "", aname);
            if (n > 0)
                wlen = wlen + (size_t)n < warnlen ? wlen + (size_t)n : warnlen - 1;
        }
    }
    kr_et_free(top);
    if (ps.failed)
        return -EINVAL;
    *cfg = tmp;
    return 0;
}

bool kr_cfg_text_is_eterm(const char *text, size_t len)
{
    struct kr_et_parser ps = {.p = text, .end = text + len, .line = 1};
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        ps.p += 3;
    /* skip blanks only: a '%' comment is itself a sign of an Erlang file */
    while (ps.p < ps.end && (*ps.p == ' ' || *ps.p == '\t' || *ps.p == '\r' || *ps.p == '\n'))
        ps.p++;
    if (ps.p >= ps.end)
        return false;
    if (*ps.p == '%')
        return true;
    if (*ps.p != '[')
        return false;
    ps.p++;
    int c = kr_et_peek(&ps);
    return c == '{' || c == ']' || c == '"' || c < 0;
}
