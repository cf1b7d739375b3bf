/* The RESP frontend (Redis serialization protocol, RESP2 and RESP3): stock Redis clients
 * subscribe and publish through Kraken, and deliveries are pushed as `message` /
 * `smessage` frames. The connection layer below is shared with the memcached frontend:
 * subscriptions go to the shards as router commands, confirmations wait on the shards'
 * acknowledgements in the reply ring (kr_rq_push), deliveries come from the client's queue
 * (kr_dlv_head / kr_dlv_pop). Net thread only. */
#include "kr_net_int.h"

#include <ck_pr.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>
#include <xxhash.h>

#include "kr_resp.h"

#define KR_RS_REG 1u   /* taken with SUBSCRIBE (or KRAKEN.RETRO_SUBSCRIBE) */
#define KR_RS_SHARD 2u /* taken with SSUBSCRIBE */
#define KR_RS_MAX_ARGS (1024u * 1024u)
/* Payloads of at least this many bytes are pushed by reference to the shared message (one
 * writev per connection) instead of copied into its output; smaller ones are copied, which
 * costs less than the reference count and the iovec (docs/benchmarks.md). */
#define KR_RS_SHARE_MIN 2048u

/* A channel the connection subscribes to. */
struct kr_rs_chan {
    struct kr_rs_chan *next;
    uint64_t hash;
    uint32_t len;
    uint8_t flags;
    char name[];
};

/* A reply that waits on the router, formatted when its request ran. */
struct kr_rs_pend {
    char *bytes;
    size_t len;
};

struct kr_rs_state {
    int proto;     /* 2 or 3 */
    bool authed;
    char *name;    /* CLIENT SETNAME (NULL: none) */
    struct kr_resp_req req;
    struct kr_resp_arg *argv;
    size_t argv_cap;
    /* subscribed channels */
    struct kr_rs_chan **tab;
    uint32_t tab_cap; /* power of two */
    uint32_t nentries;
    uint32_t nreg;    /* channels with KR_RS_REG: SUBSCRIBE's count */
    uint32_t nshard;  /* channels with KR_RS_SHARD: SSUBSCRIBE's count */
    /* replies waiting on the shards, in request order (one per kr_rq_push) */
    struct kr_rs_pend *pq;
    uint32_t pq_head, pq_count, pq_cap;
    /* scratch: a reply being formatted */
    char *sb;
    size_t sb_len, sb_cap;
};

static struct kr_rs_state *kr_rs(struct kr_conn *c)
{
    struct kr_rs_state *s = c->fe_state;
    if (!s) {
        s = kr_xcalloc(1, sizeof(*s));
        s->proto = 2;
        s->authed = c->nt->srv->cfg->requirepass[0] == 0;
        kr_resp_req_init(&s->req);
        s->argv_cap = 16;
        s->argv = kr_xcalloc(s->argv_cap, sizeof(*s->argv));
        c->fe_state = s;
    }
    return s;
}

/* ---------------------------------------------------------------- channel set */

static uint64_t kr_rs_hash(const char *p, size_t n)
{
    return XXH3_64bits(p, n);
}

static struct kr_rs_chan **kr_rs_slot(struct kr_rs_state *s, const char *p, size_t n, uint64_t h)
{
    struct kr_rs_chan **pp = &s->tab[h & (s->tab_cap - 1)];
    while (*pp && !((*pp)->hash == h && (*pp)->len == n && memcmp((*pp)->name, p, n) == 0))
        pp = &(*pp)->next;
    return pp;
}

static struct kr_rs_chan *kr_rs_find(struct kr_rs_state *s, const char *p, size_t n)
{
    if (!s->tab_cap)
        return NULL;
    return *kr_rs_slot(s, p, n, kr_rs_hash(p, n));
}

static struct kr_rs_chan *kr_rs_add(struct kr_rs_state *s, const char *p, size_t n)
{
    if (s->nentries + 1 > s->tab_cap) {
        uint32_t ncap = s->tab_cap ? s->tab_cap * 2 : 8;
        struct kr_rs_chan **nt = kr_xcalloc(ncap, sizeof(*nt));
        for (uint32_t i = 0; i < s->tab_cap; i++) {
            struct kr_rs_chan *ch = s->tab[i];
            while (ch) {
                struct kr_rs_chan *next = ch->next;
                ch->next = nt[ch->hash & (ncap - 1)];
                nt[ch->hash & (ncap - 1)] = ch;
                ch = next;
            }
        }
        free(s->tab);
        s->tab = nt;
        s->tab_cap = ncap;
    }
    uint64_t h = kr_rs_hash(p, n);
    struct kr_rs_chan **pp = kr_rs_slot(s, p, n, h);
    if (*pp)
        return *pp;
    struct kr_rs_chan *ch = kr_xmalloc(sizeof(*ch) + n);
    ch->next = NULL;
    ch->hash = h;
    ch->len = (uint32_t)n;
    ch->flags = 0;
    memcpy(ch->name, p, n);
    *pp = ch;
    s->nentries++;
    return ch;
}

/* Take ch out of the set; the caller frees it. */
static void kr_rs_unlink(struct kr_rs_state *s, struct kr_rs_chan *ch)
{
    struct kr_rs_chan **pp = kr_rs_slot(s, ch->name, ch->len, ch->hash);
    *pp = ch->next;
    s->nentries--;
}

/* ---------------------------------------------------------------- reply formatting */

static void kr_rs_sb_reserve(struct kr_rs_state *s, size_t n)
{
    if (s->sb_len + n > s->sb_cap) {
        size_t cap = s->sb_cap ? s->sb_cap : 256;
        while (cap < s->sb_len + n)
            cap *= 2;
        s->sb = kr_xrealloc(s->sb, cap);
        s->sb_cap = cap;
    }
}

/* Formatters write into the scratch buffer (sb) when `s` collects a reply that waits, or
 * straight into the output buffer. */
struct kr_rs_out {
    struct kr_conn *c;
    struct kr_rs_state *s;
    bool to_sb;
};

static char *kr_rs_room(struct kr_rs_out *o, size_t n)
{
    if (o->to_sb) {
        kr_rs_sb_reserve(o->s, n);
        return o->s->sb + o->s->sb_len;
    }
    kr_out_reserve(o->c, n);
    return o->c->out + o->c->out_len;
}

static void kr_rs_used(struct kr_rs_out *o, size_t n)
{
    if (o->to_sb)
        o->s->sb_len += n;
    else
        o->c->out_len += n;
}

static void kr_rs_simple(struct kr_rs_out *o, const char *p)
{
    size_t n = strlen(p);
    kr_rs_used(o, kr_resp_fmt_simple(kr_rs_room(o, n + 3), n + 3, p, n));
}

static void kr_rs_err(struct kr_rs_out *o, const char *p)
{
    size_t n = strlen(p);
    kr_rs_used(o, kr_resp_fmt_error(kr_rs_room(o, n + 3), n + 3, p, n));
}

static void kr_rs_int(struct kr_rs_out *o, int64_t v)
{
    kr_rs_used(o, kr_resp_fmt_int(kr_rs_room(o, 24), 24, v));
}

static void kr_rs_bulk(struct kr_rs_out *o, const char *p, size_t n)
{
    kr_rs_used(o, kr_resp_fmt_bulk(kr_rs_room(o, n + 32), n + 32, p, n));
}

static void kr_rs_bulkz(struct kr_rs_out *o, const char *p)
{
    kr_rs_bulk(o, p, strlen(p));
}

static void kr_rs_null(struct kr_rs_out *o)
{
    kr_rs_used(o, kr_resp_fmt_null(kr_rs_room(o, 8), 8, o->s->proto));
}

static void kr_rs_array(struct kr_rs_out *o, size_t n)
{
    kr_rs_used(o, kr_resp_fmt_array(kr_rs_room(o, 24), 24, n));
}

static void kr_rs_map(struct kr_rs_out *o, size_t n)
{
    kr_rs_used(o, kr_resp_fmt_map(kr_rs_room(o, 24), 24, o->s->proto, n));
}

static void kr_rs_count(struct kr_rs_out *o, const char *kind, const char *ch, size_t chlen,
                        int64_t count)
{
    size_t cap = chlen + 96;
    kr_rs_used(o, kr_resp_fmt_pubsub_count(kr_rs_room(o, cap), cap, o->s->proto, kind, ch, chlen,
                                           count));
}

static void kr_rs_errf(struct kr_rs_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void kr_rs_errf(struct kr_rs_out *o, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(buf))
        n = sizeof(buf) - 1;
    kr_rs_used(o, kr_resp_fmt_error(kr_rs_room(o, (size_t)n + 3), (size_t)n + 3, buf, (size_t)n));
}

/* The command name in lower case, at most 64 bytes, for error texts. */
static void kr_rs_lower(const struct kr_resp_arg *a, char *out, size_t cap)
{
    size_t n = a->len < cap - 1 ? a->len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        char ch = a->p[i];
        out[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    out[n] = 0;
}

static void kr_rs_arity(struct kr_rs_out *o, const struct kr_resp_arg *cmd)
{
    char name[65];
    kr_rs_lower(cmd, name, sizeof(name));
    kr_rs_errf(o, "ERR wrong number of arguments for '%s' command", name);
}

/* ---------------------------------------------------------------- waiting replies */

/* Set the reply collected in sb aside as the next reply that waits (kr_rs_reply sends it
 * when the connection layer answers the request: kr_rq_push or kr_cmd_subscribe). */
static void kr_rs_pend(struct kr_rs_state *s)
{
    if (s->pq_count == s->pq_cap) {
        uint32_t ncap = s->pq_cap ? s->pq_cap * 2 : 4;
        struct kr_rs_pend *n = kr_xmalloc(ncap * sizeof(*n));
        for (uint32_t i = 0; i < s->pq_count; i++)
            n[i] = s->pq[(s->pq_head + i) & (s->pq_cap - 1)];
        free(s->pq);
        s->pq = n;
        s->pq_cap = ncap;
        s->pq_head = 0;
    }
    struct kr_rs_pend *p = &s->pq[(s->pq_head + s->pq_count) & (s->pq_cap - 1)];
    p->bytes = kr_xmalloc(s->sb_len ? s->sb_len : 1);
    memcpy(p->bytes, s->sb, s->sb_len);
    p->len = s->sb_len;
    s->pq_count++;
    s->sb_len = 0;
}

/* Queue the reply collected in sb behind the shards' `acks` acknowledgements; the events
 * then carry the returned request number. */
static uint32_t kr_rs_wait(struct kr_conn *c, struct kr_rs_state *s, uint32_t acks, bool retro,
                           bool gate)
{
    kr_rs_pend(s);
    return kr_rq_push(c, acks, false, retro, gate);
}

static void kr_rs_reply(struct kr_conn *c, enum kr_reply_kind kind)
{
    struct kr_rs_state *s = kr_rs(c);
    if (!s->pq_count)
        return;
    struct kr_rs_pend *p = &s->pq[s->pq_head];
    if (kind == KR_REPLY_NOT_FOUND)
        kr_out_str(c, "-NOTFOUND the history does not reach back to the horizon; the live "
                      "subscriptions are in force\r\n");
    kr_out_add(c, p->bytes, p->len);
    free(p->bytes);
    s->pq_head = (s->pq_head + 1) & (s->pq_cap - 1);
    s->pq_count--;
}

/* ---------------------------------------------------------------- pub/sub */

/* A channel Kraken can route: 1..max_topic_bytes bytes, none of them a space, '\r', '\n'
 * or NUL (topics are space-separated in the memcached protocol). */
static bool kr_rs_channel_ok(const struct kr_conn *c, const struct kr_resp_arg *a)
{
    if (a->len == 0 || a->len > c->nt->srv->cfg->max_topic_bytes)
        return false;
    for (size_t i = 0; i < a->len; i++) {
        char ch = a->p[i];
        if (ch == ' ' || ch == '\r' || ch == '\n' || ch == 0)
            return false;
    }
    return true;
}

/* SUBSCRIBE / SSUBSCRIBE / KRAKEN.RETRO_SUBSCRIBE (horizon > 0) of argv[first..argc): the
 * confirmations are formatted here, the subscription is kr_cmd_subscribe's (the first one
 * after KRAKEN.REGISTER is retroactive there). */
static void kr_rs_subscribe(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                            size_t first, size_t argc, uint8_t flag, uint64_t horizon)
{
    struct kr_rs_out o = {c, s, false};
    struct kr_nt *nt = c->nt;
    for (size_t i = first; i < argc; i++) {
        if (!kr_rs_channel_ok(c, &argv[i])) {
            kr_rs_err(&o, "ERR invalid channel name (Kraken channels are 1..max_topic_bytes "
                          "bytes without spaces or line breaks)");
            return;
        }
    }
    const char *kind = flag == KR_RS_SHARD ? "ssubscribe" : "subscribe";
    bool retro = horizon || c->horizon_us;
    uint32_t n = 0;
    kr_nt_args(nt, (uint32_t)(argc - first));
    o.to_sb = true;
    s->sb_len = 0;
    for (size_t i = first; i < argc; i++) {
        struct kr_rs_chan *ch = kr_rs_add(s, argv[i].p, argv[i].len);
        /* a retroactive subscribe replays even for a channel already taken */
        if (!ch->flags || retro) {
            nt->args[n] = argv[i].p;
            nt->arg_lens[n++] = (uint32_t)argv[i].len;
        }
        if (!(ch->flags & flag)) {
            ch->flags |= flag;
            if (flag == KR_RS_SHARD)
                s->nshard++;
            else
                s->nreg++;
        }
        kr_rs_count(&o, kind, argv[i].p, argv[i].len, flag == KR_RS_SHARD ? s->nshard : s->nreg);
    }
    kr_rs_pend(s);
    kr_cmd_subscribe(c, horizon ? KR_EV_RETRO_SUBSCRIBE : KR_EV_SUBSCRIBE, horizon, n,
                     nt->args, nt->arg_lens, false);
    kr_rq_emit(c); /* a reply that waits on nothing goes out now, in order */
}

/* Unsubscribe one channel of the kind `flag`: its confirmation, and when the channel has no
 * kind left, its name in nt->args[*nargs] and the entry unlinked onto *dead (freed by the
 * caller once the router was told). */
static void kr_rs_unsub_one(struct kr_conn *c, struct kr_rs_state *s, struct kr_rs_out *o,
                            uint32_t *nargs, struct kr_rs_chan **dead, const char *p, size_t n,
                            uint8_t flag)
{
    struct kr_rs_chan *ch = kr_rs_find(s, p, n);
    if (ch && (ch->flags & flag)) {
        ch->flags &= (uint8_t)~flag;
        if (flag == KR_RS_SHARD)
            s->nshard--;
        else
            s->nreg--;
    }
    kr_rs_count(o, flag == KR_RS_SHARD ? "sunsubscribe" : "unsubscribe", p, n,
                flag == KR_RS_SHARD ? s->nshard : s->nreg);
    if (ch && !ch->flags) {
        struct kr_nt *nt = c->nt;
        nt->args[*nargs] = ch->name;
        nt->arg_lens[(*nargs)++] = ch->len;
        kr_rs_unlink(s, ch);
        ch->next = *dead;
        *dead = ch;
    }
}

/* UNSUBSCRIBE / SUNSUBSCRIBE of argv[first..argc), or of every channel of the kind; the
 * router is told by kr_cmd_subscribe. `quiet`: no confirmations (RESET). */
static void kr_rs_unsubscribe(struct kr_conn *c, struct kr_rs_state *s,
                              const struct kr_resp_arg *argv, size_t first, size_t argc,
                              uint8_t flag, bool quiet)
{
    struct kr_rs_out o = {c, s, true};
    struct kr_nt *nt = c->nt;
    struct kr_rs_chan *dead = NULL;
    uint32_t n = 0;
    kr_nt_args(nt, (uint32_t)(first < argc ? argc - first : s->nentries));
    s->sb_len = 0;
    if (first < argc) {
        for (size_t i = first; i < argc; i++)
            kr_rs_unsub_one(c, s, &o, &n, &dead, argv[i].p, argv[i].len, flag);
    } else if ((flag == KR_RS_SHARD ? s->nshard : s->nreg) == 0) {
        kr_rs_count(&o, flag == KR_RS_SHARD ? "sunsubscribe" : "unsubscribe", NULL, 0, 0);
    } else {
        /* every channel of the kind (an entry that goes away stays allocated on `dead`) */
        for (uint32_t b = 0; b < s->tab_cap; b++) {
            struct kr_rs_chan *ch = s->tab[b];
            while (ch) {
                struct kr_rs_chan *next = ch->next;
                if (ch->flags & flag)
                    kr_rs_unsub_one(c, s, &o, &n, &dead, ch->name, ch->len, flag);
                ch = next;
            }
        }
    }
    if (quiet)
        s->sb_len = 0;
    kr_rs_pend(s);
    kr_cmd_subscribe(c, KR_EV_UNSUBSCRIBE, 0, n, nt->args, nt->arg_lens, false);
    while (dead) {
        struct kr_rs_chan *next = dead->next;
        free(dead);
        dead = next;
    }
    kr_rq_emit(c); /* a reply that waits on nothing goes out now, in order */
}

/* PUBLISH / SPUBLISH / KRAKEN.PUBLISH: one entry to the topics argv[first..last), payload
 * argv[last]. The reply is the number of distinct channels the entry was handed to. */
static void kr_rs_publish(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                          size_t first, size_t last)
{
    struct kr_rs_out o = {c, s, false};
    size_t tl = 0;
    for (size_t i = first; i < last; i++) {
        if (!kr_rs_channel_ok(c, &argv[i])) {
            kr_rs_err(&o, "ERR invalid channel name (Kraken channels are 1..max_topic_bytes "
                          "bytes without spaces or line breaks)");
            return;
        }
        tl += argv[i].len + 1;
    }
    KR_ST_INC(c->nt, publish_requests, 1);
    KR_ST_INC(c->nt, cmd_set, 1);
    (void)tl;
    /* count distinct channels */
    int64_t n = 0;
    for (size_t i = first; i < last; i++) {
        bool dup = false;
        for (size_t j = first; j < i && !dup; j++)
            dup = argv[j].len == argv[i].len && memcmp(argv[j].p, argv[i].p, argv[i].len) == 0;
        n += !dup;
    }
    struct kr_nt *nt = c->nt;
    kr_nt_args(nt, (uint32_t)(last - first));
    for (size_t i = first; i < last; i++) {
        nt->args[i - first] = argv[i].p;
        nt->arg_lens[i - first] = (uint32_t)argv[i].len;
    }
    kr_cmd_publish(c, (uint32_t)(last - first), nt->args, nt->arg_lens, argv[last].p,
                   (uint32_t)argv[last].len);
    if (c->nparked || c->rq_count) {
        o.to_sb = true;
        kr_rs_int(&o, n);
        kr_rs_wait(c, s, 0, false, c->nparked > 0);
        kr_rq_emit(c);
    } else {
        kr_rs_int(&o, n);
    }
}

/* ---------------------------------------------------------------- PUBSUB */

/* Redis's glob subset: '*', '?', '[...]' (with '^' and ranges), '\' escapes. */
static bool kr_rs_glob(const char *p, size_t pn, const char *s, size_t sn)
{
    while (pn) {
        switch (*p) {
        case '*':
            while (pn > 1 && p[1] == '*') {
                p++;
                pn--;
            }
            if (pn == 1)
                return true;
            for (size_t k = 0; k <= sn; k++)
                if (kr_rs_glob(p + 1, pn - 1, s + k, sn - k))
                    return true;
            return false;
        case '?':
            if (!sn)
                return false;
            s++;
            sn--;
            break;
        case '[': {
            if (!sn)
                return false;
            p++;
            pn--;
            bool neg = pn && *p == '^', match = false;
            if (neg) {
                p++;
                pn--;
            }
            while (pn && *p != ']') {
                if (*p == '\\' && pn >= 2) {
                    p++;
                    pn--;
                    match |= *p == *s;
                } else if (pn >= 3 && p[1] == '-' && p[2] != ']') {
                    char a = p[0], b = p[2];
                    if (a > b) {
                        char t = a;
                        a = b;
                        b = t;
                    }
                    match |= *s >= a && *s <= b;
                    p += 2;
                    pn -= 2;
                } else {
                    match |= *p == *s;
                }
                p++;
                pn--;
            }
            if (neg)
                match = !match;
            if (!match)
                return false;
            s++;
            sn--;
            if (!pn)
                return true;
            break;
        }
        case '\\':
            if (pn >= 2) {
                p++;
                pn--;
            }
            /* fall through */
        default:
            if (!sn || *p != *s)
                return false;
            s++;
            sn--;
            break;
        }
        p++;
        pn--;
    }
    return sn == 0;
}

struct kr_rs_walk {
    struct kr_rs_state *s;
    const struct kr_resp_arg *pat; /* CHANNELS: the pattern, or NULL */
    const struct kr_resp_arg *chs; /* NUMSUB: the channels */
    size_t nch;
    uint64_t *counts;
    uint32_t found;
};

static int kr_rs_walk_channels(void *arg, const char *t, uint32_t len, uint32_t nsubs)
{
    struct kr_rs_walk *w = arg;
    if (!nsubs || (w->pat && !kr_rs_glob(w->pat->p, w->pat->len, t, len)))
        return 0;
    kr_rs_sb_reserve(w->s, len + 32);
    w->s->sb_len += kr_resp_fmt_bulk(w->s->sb + w->s->sb_len, len + 32, t, len);
    w->found++;
    return 0;
}

static int kr_rs_walk_numsub(void *arg, const char *t, uint32_t len, uint32_t nsubs)
{
    struct kr_rs_walk *w = arg;
    for (size_t i = 0; i < w->nch; i++)
        if (w->chs[i].len == len && memcmp(w->chs[i].p, t, len) == 0)
            w->counts[i] += nsubs;
    return 0;
}

static void kr_rs_pubsub(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                         size_t argc)
{
    struct kr_rs_out o = {c, s, false};
    struct kr_router *r = c->nt->srv->router;
    const struct kr_resp_arg *sub = &argv[1];
    bool shard = kr_resp_cmd_is(sub->p, sub->len, "SHARDCHANNELS") ||
                 kr_resp_cmd_is(sub->p, sub->len, "SHARDNUMSUB");
    if (kr_resp_cmd_is(sub->p, sub->len, "CHANNELS") || kr_resp_cmd_is(sub->p, sub->len, "SHARDCHANNELS")) {
        if (argc > 3) {
            kr_rs_errf(&o, "ERR Unknown subcommand or wrong number of arguments for '%.*s'. Try PUBSUB HELP.",
                       (int)(sub->len > 64 ? 64 : sub->len), sub->p);
            return;
        }
        struct kr_rs_walk w = {.s = s, .pat = argc == 3 ? &argv[2] : NULL};
        s->sb_len = 0;
        kr_router_walk_topics(r, kr_rs_walk_channels, &w);
        kr_rs_array(&o, w.found);
        kr_out_add(c, s->sb, s->sb_len);
        s->sb_len = 0;
        return;
    }
    if (kr_resp_cmd_is(sub->p, sub->len, "NUMSUB") || shard) {
        size_t nch = argc - 2;
        uint64_t *counts = kr_xcalloc(nch ? nch : 1, sizeof(*counts));
        struct kr_rs_walk w = {.s = s, .chs = &argv[2], .nch = nch, .counts = counts};
        if (nch)
            kr_router_walk_topics(r, kr_rs_walk_numsub, &w);
        kr_rs_map(&o, nch);
        for (size_t i = 0; i < nch; i++) {
            kr_rs_bulk(&o, argv[2 + i].p, argv[2 + i].len);
            kr_rs_int(&o, (int64_t)counts[i]);
        }
        free(counts);
        return;
    }
    if (kr_resp_cmd_is(sub->p, sub->len, "NUMPAT")) {
        kr_rs_int(&o, 0);
        return;
    }
    kr_rs_errf(&o, "ERR unknown subcommand '%.*s'. Try PUBSUB HELP.",
               (int)(sub->len > 64 ? 64 : sub->len), sub->p);
}

/* ---------------------------------------------------------------- connection commands */

/* Does (user, pass) match requirepass? The user must be absent or `default` (the one user
 * there is). Compared in time independent of where the bytes differ. */
static bool kr_rs_auth_ok(const struct kr_conn *c, const struct kr_resp_arg *user,
                          const struct kr_resp_arg *pass)
{
    const char *want = c->nt->srv->cfg->requirepass;
    size_t wl = strlen(want);
    if (user && !(user->len == 7 && memcmp(user->p, "default", 7) == 0))
        return false;
    unsigned char diff = (unsigned char)(pass->len != wl);
    for (size_t i = 0; i < pass->len; i++)
        diff |= (unsigned char)(pass->p[i] ^ (i < wl ? want[i] : 0));
    return diff == 0;
}

#define KR_RS_WRONGPASS "WRONGPASS invalid username-password pair or user is disabled."

static void kr_rs_auth(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                       size_t argc)
{
    struct kr_rs_out o = {c, s, false};
    if (argc > 3) {
        kr_rs_err(&o, "ERR syntax error");
        return;
    }
    if (!c->nt->srv->cfg->requirepass[0]) {
        if (argc == 2) {
            kr_rs_err(&o, "ERR AUTH <password> called without any password configured for the "
                          "default user. Are you sure your configuration is correct?");
            return;
        }
        /* AUTH default <anything> with no password: Redis accepts it */
        if (argv[1].len == 7 && memcmp(argv[1].p, "default", 7) == 0)
            kr_rs_simple(&o, "OK");
        else
            kr_rs_err(&o, KR_RS_WRONGPASS);
        return;
    }
    if (kr_rs_auth_ok(c, argc == 3 ? &argv[1] : NULL, &argv[argc - 1])) {
        s->authed = true;
        kr_rs_simple(&o, "OK");
    } else {
        kr_rs_err(&o, KR_RS_WRONGPASS);
    }
}

static void kr_rs_hello(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                        size_t argc)
{
    struct kr_rs_out o = {c, s, false};
    int proto = s->proto;
    size_t i = 1;
    if (argc >= 2) {
        char v[8];
        size_t n = argv[1].len < sizeof(v) - 1 ? argv[1].len : sizeof(v) - 1;
        memcpy(v, argv[1].p, n);
        v[n] = 0;
        char *end;
        long ver = strtol(v, &end, 10);
        if (n == 0 || *end || argv[1].len != n) {
            kr_rs_err(&o, "ERR Protocol version is not an integer or out of range");
            return;
        }
        if (ver != 2 && ver != 3) {
            kr_rs_err(&o, "NOPROTO unsupported protocol version");
            return;
        }
        proto = (int)ver;
        i = 2;
    }
    for (; i < argc; i++) {
        if (kr_resp_cmd_is(argv[i].p, argv[i].len, "AUTH") && i + 2 < argc) {
            if (c->nt->srv->cfg->requirepass[0] && !kr_rs_auth_ok(c, &argv[i + 1], &argv[i + 2])) {
                kr_rs_err(&o, KR_RS_WRONGPASS);
                return;
            }
            s->authed = true; /* without requirepass any credentials do, as in Redis */
            i += 2;
        } else if (kr_resp_cmd_is(argv[i].p, argv[i].len, "SETNAME") && i + 1 < argc) {
            free(s->name);
            s->name = strndup(argv[i + 1].p, argv[i + 1].len);
            i++;
        } else {
            kr_rs_errf(&o, "ERR Syntax error in HELLO option '%.*s'",
                       (int)(argv[i].len > 64 ? 64 : argv[i].len), argv[i].p);
            return;
        }
    }
    if (!s->authed) {
        kr_rs_err(&o, "NOAUTH HELLO must be called with the client already authenticated, "
                      "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                      "authenticate the client and select the RESP protocol version at the same "
                      "time");
        return;
    }
    s->proto = proto;
    kr_rs_map(&o, 7);
    kr_rs_bulkz(&o, "server");
    kr_rs_bulkz(&o, "kraken");
    kr_rs_bulkz(&o, "version");
    kr_rs_bulkz(&o, KR_VERSION);
    kr_rs_bulkz(&o, "proto");
    kr_rs_int(&o, proto);
    kr_rs_bulkz(&o, "id");
    kr_rs_int(&o, (int64_t)c->id);
    kr_rs_bulkz(&o, "mode");
    kr_rs_bulkz(&o, "standalone");
    kr_rs_bulkz(&o, "role");
    kr_rs_bulkz(&o, "master");
    kr_rs_bulkz(&o, "modules");
    kr_rs_array(&o, 0);
}

static void kr_rs_client_line(struct kr_conn *c, struct kr_rs_state *s, char *buf, size_t cap)
{
    snprintf(buf, cap, "id=%llu addr=%s name=%s age=%llu db=0 sub=%u psub=0 ssub=%u resp=%d lib-name= lib-ver=\n",
             (unsigned long long)c->id, c->peer, s->name ? s->name : "",
             (unsigned long long)((kr_now_ms() - c->created_ms) / 1000), s->nreg, s->nshard,
             s->proto);
}

static void kr_rs_client(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                         size_t argc)
{
    struct kr_rs_out o = {c, s, false};
    const struct kr_resp_arg *sub = &argv[1];
    if (kr_resp_cmd_is(sub->p, sub->len, "ID") && argc == 2) {
        kr_rs_int(&o, (int64_t)c->id);
    } else if (kr_resp_cmd_is(sub->p, sub->len, "GETNAME") && argc == 2) {
        if (s->name)
            kr_rs_bulkz(&o, s->name);
        else
            kr_rs_null(&o);
    } else if (kr_resp_cmd_is(sub->p, sub->len, "SETNAME") && argc == 3) {
        for (size_t i = 0; i < argv[2].len; i++) {
            if (argv[2].p[i] < '!' || argv[2].p[i] > '~') {
                kr_rs_err(&o, "ERR Client names cannot contain spaces, newlines or special characters.");
                return;
            }
        }
        free(s->name);
        s->name = argv[2].len ? strndup(argv[2].p, argv[2].len) : NULL;
        kr_rs_simple(&o, "OK");
    } else if (kr_resp_cmd_is(sub->p, sub->len, "SETINFO") && argc == 4) {
        kr_rs_simple(&o, "OK");
    } else if ((kr_resp_cmd_is(sub->p, sub->len, "INFO") && argc == 2) ||
               (kr_resp_cmd_is(sub->p, sub->len, "LIST") && argc == 2)) {
        /* LIST: this connection only (the others live on other net threads) */
        char line[512];
        kr_rs_client_line(c, s, line, sizeof(line));
        kr_rs_bulkz(&o, line);
    } else {
        kr_rs_errf(&o, "ERR unknown subcommand '%.*s'. Try CLIENT HELP.",
                   (int)(sub->len > 64 ? 64 : sub->len), sub->p);
    }
}

static void kr_rs_info(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                       size_t argc)
{
    struct kr_rs_out o = {c, s, false};
    struct kr_server *srv = c->nt->srv;
    bool all = argc < 2, want[4] = {all, all, all, all};
    static const char *const sections[] = {"SERVER", "CLIENTS", "STATS", "MEMORY"};
    for (size_t i = 1; i < argc; i++) {
        if (kr_resp_cmd_is(argv[i].p, argv[i].len, "ALL") ||
            kr_resp_cmd_is(argv[i].p, argv[i].len, "EVERYTHING") ||
            kr_resp_cmd_is(argv[i].p, argv[i].len, "DEFAULT")) {
            want[0] = want[1] = want[2] = want[3] = true;
            continue;
        }
        int k = kr_resp_cmd_find(argv[i].p, argv[i].len, sections, 4);
        if (k >= 0)
            want[k] = true;
    }
    uint64_t pubs = 0, dlv = 0;
    for (uint32_t i = 0; i < srv->nnet; i++) {
        pubs += ck_pr_load_64(&srv->nts[i]->st.messages_published);
        dlv += ck_pr_load_64(&srv->nts[i]->st.messages_delivered);
    }
    char buf[1024];
    size_t n = 0;
    if (want[0])
        n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                              "# Server\r\nredis_version:7.0.0\r\nkraken_version:%s\r\nredis_mode:standalone\r\n"
                              "process_id:%d\r\ntcp_port:%u\r\nkraken_resp_port:%u\r\nuptime_in_seconds:%llu\r\n\r\n",
                              KR_VERSION, srv->pid, srv->port, srv->resp_port,
                              (unsigned long long)(time(NULL) - srv->started));
    if (want[1] && n < sizeof(buf))
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "# Clients\r\nconnected_clients:%u\r\n\r\n",
                              ck_pr_load_32(&srv->nconns));
    if (want[2] && n < sizeof(buf))
        n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                              "# Stats\r\nmessages_published:%llu\r\nmessages_delivered:%llu\r\n"
                              "pubsub_patterns:0\r\n\r\n",
                              (unsigned long long)pubs, (unsigned long long)dlv);
    if (want[3] && n < sizeof(buf))
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "# Memory\r\nused_memory:%llu\r\n\r\n",
                              (unsigned long long)srv->mem[0]);
    if (n > sizeof(buf) - 1)
        n = sizeof(buf) - 1;
    if (n >= 2)
        n -= 2; /* no blank line after the last section, as Redis */
    kr_rs_bulk(&o, buf, n);
}

static void kr_rs_unknown(struct kr_rs_out *o, const struct kr_resp_arg *argv, size_t argc)
{
    char buf[600];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "ERR unknown command '%.*s', with args beginning with: ",
                                (int)(argv[0].len > 128 ? 128 : argv[0].len), argv[0].p);
    for (size_t i = 1; i < argc && n < sizeof(buf) - 140; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "'%.*s' ",
                              (int)(argv[i].len > 128 ? 128 : argv[i].len), argv[i].p);
    kr_rs_used(o, kr_resp_fmt_error(kr_rs_room(o, n + 3), n + 3, buf, n));
}

/* ---------------------------------------------------------------- dispatch */

enum {
    C_SUBSCRIBE, C_UNSUBSCRIBE, C_PUBLISH, C_SSUBSCRIBE, C_SUNSUBSCRIBE, C_SPUBLISH,
    C_PSUBSCRIBE, C_PUNSUBSCRIBE, C_PING, C_ECHO, C_QUIT, C_RESET, C_SELECT, C_HELLO,
    C_CLIENT, C_INFO, C_COMMAND, C_PUBSUB, C_KPUBLISH, C_KREGISTER, C_KRETRO, C_AUTH, C_NCMDS
};
static const char *const kr_rs_names[C_NCMDS] = {
    "SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH", "SSUBSCRIBE", "SUNSUBSCRIBE", "SPUBLISH",
    "PSUBSCRIBE", "PUNSUBSCRIBE", "PING", "ECHO", "QUIT", "RESET", "SELECT", "HELLO",
    "CLIENT", "INFO", "COMMAND", "PUBSUB", "KRAKEN.PUBLISH", "KRAKEN.REGISTER",
    "KRAKEN.RETRO_SUBSCRIBE", "AUTH",
};
/* least argc (negative: exactly -n) */
static const int kr_rs_arity_of[C_NCMDS] = {
    2, 1, -3, 2, 1, -3, 2, 1, 1, -2, 1, -1, -2, 1, 2, 1, 1, 2, 3, -1, 3, 2,
};

/* Commands whose reply waits in the reply ring: they may run while earlier replies wait. */
static bool kr_rs_pipelinable(int k)
{
    return k == C_SUBSCRIBE || k == C_UNSUBSCRIBE || k == C_PUBLISH || k == C_SSUBSCRIBE ||
           k == C_SUNSUBSCRIBE || k == C_SPUBLISH || k == C_KPUBLISH;
}

static void kr_rs_reset(struct kr_conn *c, struct kr_rs_state *s)
{
    for (uint8_t flag = KR_RS_REG; flag <= KR_RS_SHARD; flag <<= 1) {
        if (!(flag == KR_RS_SHARD ? s->nshard : s->nreg))
            continue;
        /* the confirmations are not sent: RESET answers +RESET alone */
        kr_rs_unsubscribe(c, s, NULL, 0, 0, flag, true);
    }
}

static void kr_rs_run(struct kr_conn *c, struct kr_rs_state *s, int k,
                      const struct kr_resp_arg *argv, size_t argc)
{
    struct kr_rs_out o = {c, s, false};
    struct kr_nt *nt = c->nt;
    switch (k) {
    case C_SUBSCRIBE:
        kr_rs_subscribe(c, s, argv, 1, argc, KR_RS_REG, 0);
        break;
    case C_SSUBSCRIBE:
        kr_rs_subscribe(c, s, argv, 1, argc, KR_RS_SHARD, 0);
        break;
    case C_UNSUBSCRIBE:
        kr_rs_unsubscribe(c, s, argv, 1, argc, KR_RS_REG, false);
        break;
    case C_SUNSUBSCRIBE:
        kr_rs_unsubscribe(c, s, argv, 1, argc, KR_RS_SHARD, false);
        break;
    case C_PUBLISH:
    case C_SPUBLISH:
        kr_rs_publish(c, s, argv, 1, 2);
        break;
    case C_KPUBLISH:
        kr_rs_publish(c, s, argv, 1, argc - 1);
        break;
    case C_PSUBSCRIBE:
    case C_PUNSUBSCRIBE:
        kr_rs_err(&o, "ERR pattern subscriptions are not supported by Kraken (PSUBSCRIBE, "
                      "PUNSUBSCRIBE): subscribe to each channel");
        break;
    case C_PING:
        if (argc > 2) {
            kr_rs_arity(&o, &argv[0]);
        } else if (s->proto == 2 && (s->nreg || s->nshard)) {
            kr_rs_array(&o, 2);
            kr_rs_bulkz(&o, "pong");
            kr_rs_bulk(&o, argc == 2 ? argv[1].p : "", argc == 2 ? argv[1].len : 0);
        } else if (argc == 2) {
            kr_rs_bulk(&o, argv[1].p, argv[1].len);
        } else {
            kr_rs_simple(&o, "PONG");
        }
        break;
    case C_ECHO:
        kr_rs_bulk(&o, argv[1].p, argv[1].len);
        break;
    case C_QUIT:
        kr_rs_simple(&o, "OK");
        c->close_after_write = true;
        break;
    case C_RESET:
        kr_rs_reset(c, s);
        s->proto = 2;
        free(s->name);
        s->name = NULL;
        c->horizon_us = 0;
        kr_rs_simple(&o, "RESET");
        break;
    case C_SELECT:
        if (argv[1].len == 1 && argv[1].p[0] == '0')
            kr_rs_simple(&o, "OK");
        else if (argv[1].len && argv[1].len < 20 && strspn(argv[1].p, "-0123456789") >= argv[1].len)
            kr_rs_err(&o, "ERR DB index is out of range");
        else
            kr_rs_err(&o, "ERR value is not an integer or out of range");
        break;
    case C_HELLO:
        kr_rs_hello(c, s, argv, argc);
        break;
    case C_CLIENT:
        kr_rs_client(c, s, argv, argc);
        break;
    case C_INFO:
        kr_rs_info(c, s, argv, argc);
        break;
    case C_COMMAND:
        if (argc == 1) {
            kr_rs_array(&o, 0);
        } else if (kr_resp_cmd_is(argv[1].p, argv[1].len, "COUNT")) {
            kr_rs_int(&o, C_NCMDS);
        } else if (kr_resp_cmd_is(argv[1].p, argv[1].len, "DOCS")) {
            kr_rs_map(&o, 0);
        } else {
            kr_rs_errf(&o, "ERR unknown subcommand '%.*s'. Try COMMAND HELP.",
                       (int)(argv[1].len > 64 ? 64 : argv[1].len), argv[1].p);
        }
        break;
    case C_PUBSUB:
        kr_rs_pubsub(c, s, argv, argc);
        break;
    case C_KREGISTER:
        KR_ST_INC(nt, register_requests, 1);
        c->horizon_us = kr_msg_clock_us();
        kr_rs_simple(&o, "OK");
        break;
    case C_AUTH:
        kr_rs_auth(c, s, argv, argc);
        break;
    case C_KRETRO: {
        char v[24];
        size_t n = argv[1].len;
        char *end = NULL;
        unsigned long long h = 0;
        if (n && n < sizeof(v)) {
            memcpy(v, argv[1].p, n);
            v[n] = 0;
            h = strtoull(v, &end, 10);
        }
        if (!n || n >= sizeof(v) || *end || v[0] == '-') {
            kr_rs_err(&o, "ERR the horizon is not an integer (microseconds since the epoch)");
            break;
        }
        /* counted, and a horizon in the future taken as now, by kr_cmd_subscribe */
        kr_rs_subscribe(c, s, argv, 2, argc, KR_RS_REG, h ? h : 1);
        break;
    }
    }
}

static ssize_t kr_rs_request(struct kr_conn *c, const char *buf, size_t len, bool pipelined,
                             size_t *need)
{
    struct kr_rs_state *s = kr_rs(c);
    struct kr_server *srv = c->nt->srv;
    struct kr_resp_limits lim = {.max_bulk_bytes = srv->cfg->max_request_bytes,
                                 .max_args = KR_RS_MAX_ARGS,
                                 .max_inline_bytes = 64 * 1024};
    size_t used = 0;
    int rc;
    for (;;) {
        rc = kr_resp_parse(buf, len, &lim, s->argv, s->argv_cap, &s->req, &used);
        if (rc != KR_RESP_ARGV_FULL)
            break;
        size_t ncap = s->argv_cap;
        while (ncap < s->req.argc)
            ncap *= 2;
        s->argv = kr_xrealloc(s->argv, ncap * sizeof(*s->argv));
        s->argv_cap = ncap;
    }
    if (rc == KR_RESP_NEED_MORE) {
        *need = used;
        return KR_FE_NEED_MORE;
    }
    if (rc < 0) {
        static _Thread_local char line[96];
        size_t n = kr_resp_error_reply(rc, s->req.got, line, sizeof(line) - 1);
        line[n] = 0;
        kr_conn_fail(c, line);
        return KR_FE_FAILED;
    }
    size_t argc = s->req.argc;
    if (argc == 0)
        return (ssize_t)used;
    if (s->req.is_inline && s->req.quoted) {
        /* decoded in place: the bytes are this connection's input (never reread) */
        for (size_t i = 0; i < argc; i++)
            s->argv[i].len = kr_resp_unquote(s->argv[i].p, s->argv[i].len, (char *)s->argv[i].p);
    }
    const struct kr_resp_arg *argv = s->argv;
    int k = kr_resp_cmd_find(argv[0].p, argv[0].len, kr_rs_names, C_NCMDS);
    if (pipelined && !kr_rs_pipelinable(k))
        return KR_FE_LATER;
    struct kr_rs_out o = {c, s, false};
    if (c->dlv.overflowed) {
        kr_conn_error(c, KR_ERR_QUEUE_OVERFLOW);
        return (ssize_t)used;
    }
    if (k < 0) {
        kr_rs_unknown(&o, argv, argc);
        return (ssize_t)used;
    }
    int ar = kr_rs_arity_of[k];
    if ((ar < 0 && argc != (size_t)-ar) || (ar > 0 && argc < (size_t)ar)) {
        kr_rs_arity(&o, &argv[0]);
        return (ssize_t)used;
    }
    if (!s->authed && k != C_AUTH && k != C_HELLO && k != C_QUIT) {
        kr_rs_err(&o, "NOAUTH Authentication required.");
        return (ssize_t)used;
    }
    if (s->proto == 2 && (s->nreg || s->nshard) && k != C_SUBSCRIBE && k != C_UNSUBSCRIBE &&
        k != C_SSUBSCRIBE && k != C_SUNSUBSCRIBE && k != C_PSUBSCRIBE && k != C_PUNSUBSCRIBE &&
        k != C_PING && k != C_QUIT && k != C_RESET) {
        char name[65];
        kr_rs_lower(&argv[0], name, sizeof(name));
        kr_rs_errf(&o, "ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / "
                       "QUIT / RESET are allowed in this context", name);
        return (ssize_t)used;
    }
    kr_rs_run(c, s, k, argv, argc);
    return (ssize_t)used;
}

/* ---------------------------------------------------------------- deliveries */

static void kr_rs_queued(struct kr_conn *c);

/* The net thread's last formatted frame with a copied payload: a broadcast's subscribers
 * get the same bytes (same message, channel, protocol and frame kind), so the frame is
 * formatted once and copied to each. A message is known by its address and its publish
 * time (the publish clock is strictly increasing across the process, so a later message
 * at a reused address has another time). Per thread, touched only by its net thread. */
static _Thread_local struct {
    const struct kr_msg *m;
    uint64_t time_us;
    uint32_t topic;
    uint8_t proto, kind;
    uint32_t len;
    char buf[KR_RS_SHARE_MIN + 160];
} kr_rs_last;

/* Append message m's frames for one client: one per matched channel (`message`, and
 * `smessage` for a channel it also holds with SSUBSCRIBE). */
static void kr_rs_frame(struct kr_conn *c, struct kr_rs_state *s, struct kr_msg *m,
                        const struct kr_topicset *topics)
{
    uint32_t ntop = kr_msg_ntopics(m), plen, tlen;
    const char *payload = kr_msg_payload(m, &plen);
    for (uint32_t i = 0; i < ntop; i++) {
        if (!kr_topicset_has(topics, ntop, i))
            continue;
        const char *t = kr_msg_topic(m, i, &tlen);
        /* which frames: only a connection with SSUBSCRIBE channels needs the lookup */
        struct kr_rs_chan *ch = s->nshard ? kr_rs_find(s, t, tlen) : NULL;
        uint8_t fl = ch && ch->flags ? ch->flags : KR_RS_REG;
        for (uint8_t kind = KR_RS_REG; kind <= KR_RS_SHARD; kind <<= 1) {
            if (!(fl & kind))
                continue;
            size_t cap = tlen + 96;
            bool share = plen >= KR_RS_SHARE_MIN;
            if (!share && cap + plen + 2 <= sizeof(kr_rs_last.buf)) {
                if (kr_rs_last.m != m || kr_rs_last.time_us != kr_msg_time_us(m) ||
                    kr_rs_last.topic != i || kr_rs_last.proto != s->proto ||
                    kr_rs_last.kind != kind) {
                    char *o = kr_rs_last.buf;
                    size_t hl = kr_resp_fmt_message_head(
                        o, cap, s->proto, kind == KR_RS_SHARD ? "smessage" : "message", t, tlen,
                        plen);
                    memcpy(o + hl, payload, plen);
                    memcpy(o + hl + plen, "\r\n", 2);
                    kr_rs_last.len = (uint32_t)(hl + plen + 2);
                    kr_rs_last.m = m;
                    kr_rs_last.time_us = kr_msg_time_us(m);
                    kr_rs_last.topic = i;
                    kr_rs_last.proto = (uint8_t)s->proto;
                    kr_rs_last.kind = kind;
                }
                kr_out_add(c, kr_rs_last.buf, kr_rs_last.len);
                continue;
            }
            kr_out_reserve(c, cap + (share ? 0 : plen) + 2);
            c->out_len += kr_resp_fmt_message_head(c->out + c->out_len, cap, s->proto,
                                                   kind == KR_RS_SHARD ? "smessage" : "message",
                                                   t, tlen, plen);
            if (share) {
                kr_out_ref(c, payload, plen, m); /* written from the shared message */
            } else {
                memcpy(c->out + c->out_len, payload, plen);
                c->out_len += plen;
            }
            memcpy(c->out + c->out_len, "\r\n", 2);
            c->out_len += 2;
        }
    }
}

/* Write the complete entries at the head of the queue as message frames, one per matched
 * channel, until the output holds KR_OUT_HIGH (the rest waits for kr_rs_writable, and an
 * unread queue overflows by its limits). */
static void kr_rs_answer(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    struct kr_rs_state *s = kr_rs(c);
    kr_poll_unwait(c);
    if (c->close_after_write || c->deferred_err)
        return; /* its last words are said */
    if (c->dlv.overflowed) {
        kr_conn_error(c, KR_ERR_QUEUE_OVERFLOW);
        return;
    }
    uint64_t bytes;
    uint32_t n;
    while (kr_conn_out_pending(c) < KR_OUT_HIGH && (n = kr_conn_ready_entries(c, &bytes)) > 0) {
        for (uint32_t k = 0; k < n; k++) {
            struct kr_cq_entry *e = kr_dlv_head(&c->dlv);
            kr_rs_frame(c, s, e->msg, &e->topics);
            kr_dlv_pop(&nt->dlv, &c->dlv);
        }
        KR_ST_INC(nt, messages_delivered, n);
    }
    if (kr_conn_out_pending(c) < KR_OUT_HIGH && c->dlv.q.count) {
        /* the head is a multi-shard message whose other parts are still on their way: look
         * again after the next loop iteration (the shards' END events complete it) */
        kr_rs_queued(c);
    }
    kr_conn_drain_replied(c);
}

/* A complete delivery for a connection with nothing queued: framed straight into the
 * output while it holds less than KR_OUT_HIGH (no queue entry), flushed after this loop
 * iteration like any answer. Past that, or once its last words are said, it is queued, and
 * so is everything after it until the queue is written out (kr_rs_answer): order holds. */
static bool kr_rs_push(struct kr_conn *c, struct kr_msg *m, const struct kr_topicset *topics)
{
    if (c->close_after_write || c->deferred_err || kr_conn_out_pending(c) >= KR_OUT_HIGH)
        return false;
    kr_rs_frame(c, kr_rs(c), m, topics);
    KR_ST_INC(c->nt, messages_delivered, 1);
    kr_rs_queued(c);
    return true;
}

/* Entries were queued: answered after this loop iteration (kr_nt_check_cb), all at once. */
static void kr_rs_queued(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    if (c->poll_wait != KR_PW_NONE)
        return;
    c->poll_wait = KR_PW_READY;
    c->poll_since_ms = uv_now(&nt->loop);
    kr_pw_push(&nt->ready, c);
}

static void kr_rs_writable(struct kr_conn *c)
{
    uint64_t bytes;
    if (c->dlv.overflowed || kr_conn_ready_entries(c, &bytes))
        kr_rs_queued(c);
}

static void kr_rs_close(struct kr_conn *c)
{
    struct kr_rs_state *s = c->fe_state;
    if (!s)
        return;
    for (uint32_t b = 0; b < s->tab_cap; b++) {
        struct kr_rs_chan *ch = s->tab[b];
        while (ch) {
            struct kr_rs_chan *next = ch->next;
            free(ch);
            ch = next;
        }
    }
    free(s->tab);
    for (uint32_t i = 0; i < s->pq_count; i++)
        free(s->pq[(s->pq_head + i) & (s->pq_cap - 1)].bytes);
    free(s->pq);
    free(s->argv);
    free(s->sb);
    free(s->name);
    free(s);
    c->fe_state = NULL;
}

static const char *kr_rs_error_line(enum kr_error_kind kind)
{
    switch (kind) {
    case KR_ERR_QUEUE_OVERFLOW:
        return "-ERR queue overflow\r\n";
    case KR_ERR_SHUTTING_DOWN:
        return "-ERR shutting down\r\n";
    case KR_ERR_TOO_MANY:
        return "-ERR max number of clients reached\r\n";
    }
    return "-ERR\r\n";
}

const struct kr_frontend kr_front_resp = {
    .name = "resp",
    .request = kr_rs_request,
    .reply = kr_rs_reply,
    .error_line = kr_rs_error_line,
    .queued = kr_rs_queued,
    .answer = kr_rs_answer,
    .push = kr_rs_push,
    .writable = kr_rs_writable,
    .close = kr_rs_close,
};
