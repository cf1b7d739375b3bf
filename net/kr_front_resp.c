/* The RESP frontend (Redis serialization protocol, RESP2 and RESP3): stock Redis clients
 * subscribe and publish through Kraken, and deliveries are pushed as `message` /
 * `smessage` frames. This file is the frontend itself: the connection's state, reply
 * formatting, the command table and its dispatch, the replies that waited on the router,
 * and the deliveries. The commands are in kr_resp_pubsub.c (pub/sub, through the rule book
 * kr_cmd_*) and kr_resp_conncmd.c (connection commands). Net thread only. */
#include "kr_resp_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "kr_cfg.h"
#include "kr_position.h"
#include "kr_queue.h"
#include "kr_util.h"

#define KR_RS_MAX_ARGS (1024u * 1024u)

const struct kr_rs_kind kr_rs_plain = {KR_NS_PLAIN, "subscribe", "unsubscribe", "message"};
const struct kr_rs_kind kr_rs_shard = {KR_NS_SHARD, "ssubscribe", "sunsubscribe", "smessage"};

_Static_assert(sizeof(struct kr_rs_state) <= 128, "struct kr_rs_state outgrew its 128-byte class");

struct kr_rs_extra *kr_rs_extra(struct kr_rs_state *s)
{
    if (!s->x)
        s->x = kr_xcalloc(1, sizeof(*s->x));
    return s->x;
}

const char *kr_rs_name(const struct kr_rs_state *s)
{
    return s->x ? s->x->name : NULL;
}

struct kr_rs_state *kr_rs(struct kr_conn *c)
{
    struct kr_rs_state *s = kr_conn_fe_state(c);
    if (!s) {
        s = kr_xcalloc(1, sizeof(*s));
        s->proto = 2;
        s->authed = kr_conn_cfg(c)->requirepass[0] == 0;
        kr_resp_parser_init(&s->parser);
        kr_conn_set_fe_state(c, s);
    }
    return s;
}

/* ---------------------------------------------------------------- reply formatting */

void kr_rs_sb_reserve(struct kr_rs_state *s, size_t n)
{
    KR_GROW_MIN(s->sb, s->sb_cap, s->sb_len + n, 256);
}

static char *kr_rs_room(struct kr_rs_out *o, size_t n)
{
    if (o->to_sb) {
        kr_rs_sb_reserve(o->s, n);
        return o->s->sb + o->s->sb_len;
    }
    return kr_out_room(o->c, n);
}

static void kr_rs_used(struct kr_rs_out *o, size_t n)
{
    if (o->to_sb)
        o->s->sb_len += n;
    else
        kr_out_commit(o->c, n);
}

void kr_rs_simple(struct kr_rs_out *o, const char *p)
{
    size_t n = strlen(p);
    kr_rs_used(o, kr_resp_fmt_simple(kr_rs_room(o, n + 3), n + 3, p, n));
}

void kr_rs_err(struct kr_rs_out *o, const char *p)
{
    size_t n = strlen(p);
    kr_rs_used(o, kr_resp_fmt_error(kr_rs_room(o, n + 3), n + 3, p, n));
}

void kr_rs_int(struct kr_rs_out *o, int64_t v)
{
    kr_rs_used(o, kr_resp_fmt_int(kr_rs_room(o, 24), 24, v));
}

void kr_rs_bulk(struct kr_rs_out *o, const char *p, size_t n)
{
    kr_rs_used(o, kr_resp_fmt_bulk(kr_rs_room(o, n + 32), n + 32, p, n));
}

void kr_rs_bulkz(struct kr_rs_out *o, const char *p)
{
    kr_rs_bulk(o, p, strlen(p));
}

void kr_rs_null(struct kr_rs_out *o)
{
    kr_rs_used(o, kr_resp_fmt_null(kr_rs_room(o, 8), 8, o->s->proto));
}

void kr_rs_array(struct kr_rs_out *o, size_t n)
{
    kr_rs_used(o, kr_resp_fmt_array(kr_rs_room(o, 24), 24, n));
}

void kr_rs_map(struct kr_rs_out *o, size_t n)
{
    kr_rs_used(o, kr_resp_fmt_map(kr_rs_room(o, 24), 24, o->s->proto, n));
}

void kr_rs_count(struct kr_rs_out *o, const char *kind, const char *ch, size_t chlen,
                 int64_t count)
{
    size_t cap = chlen + 96;
    kr_rs_used(o, kr_resp_fmt_pubsub_count(kr_rs_room(o, cap), cap, o->s->proto, kind, ch, chlen,
                                           count));
}

void kr_rs_errf(struct kr_rs_out *o, const char *fmt, ...)
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

void kr_rs_refused(struct kr_rs_out *o, int rc)
{
    char text[320];
    kr_rs_errf(o, "ERR %s", kr_cmd_refusal(o->c, rc, text, sizeof(text)));
}

void kr_rs_lower(const struct kr_resp_arg *a, char *out, size_t cap)
{
    size_t n = a->len < cap - 1 ? a->len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        char ch = a->p[i];
        out[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    out[n] = 0;
}

void kr_rs_arity(struct kr_rs_out *o, const struct kr_resp_arg *cmd)
{
    char name[65];
    kr_rs_lower(cmd, name, sizeof(name));
    kr_rs_errf(o, "ERR wrong number of arguments for '%s' command", name);
}

/* ---------------------------------------------------------------- the command table */

#define F_SUB KR_RS_F_SUBSCRIBED
#define F_NOAUTH KR_RS_F_NOAUTH
#define F_PIPE KR_RS_F_PIPELINE

static const struct kr_rs_cmd kr_rs_cmds[] = {
    /* pub/sub (kr_resp_pubsub.c) */
    {"SUBSCRIBE", -2, F_SUB | F_PIPE, &kr_rs_plain, kr_rs_cmd_subscribe},
    {"UNSUBSCRIBE", -1, F_SUB | F_PIPE, &kr_rs_plain, kr_rs_cmd_unsubscribe},
    {"PUBLISH", 3, F_PIPE, &kr_rs_plain, kr_rs_cmd_publish},
    {"SSUBSCRIBE", -2, F_SUB | F_PIPE, &kr_rs_shard, kr_rs_cmd_subscribe},
    {"SUNSUBSCRIBE", -1, F_SUB | F_PIPE, &kr_rs_shard, kr_rs_cmd_unsubscribe},
    {"SPUBLISH", 3, F_PIPE, &kr_rs_shard, kr_rs_cmd_publish},
    {"PSUBSCRIBE", -2, F_SUB, NULL, kr_rs_cmd_patterns},
    {"PUNSUBSCRIBE", -1, F_SUB, NULL, kr_rs_cmd_patterns},
    {"KRAKEN.PUBLISH", -3, F_PIPE, &kr_rs_plain, kr_rs_cmd_publish},
    {"KRAKEN.REGISTER", 1, 0, NULL, kr_rs_cmd_register},
    {"KRAKEN.RETRO_SUBSCRIBE", -3, 0, &kr_rs_plain, kr_rs_cmd_retro},
    {"KRAKEN.RESUME", -3, F_SUB, &kr_rs_plain, kr_rs_cmd_resume},
    /* connection commands (kr_resp_conncmd.c) */
    {"PING", -1, F_SUB, NULL, kr_rs_cmd_ping},
    {"ECHO", 2, 0, NULL, kr_rs_cmd_echo},
    {"QUIT", -1, F_SUB | F_NOAUTH, NULL, kr_rs_cmd_quit},
    {"RESET", 1, F_SUB, NULL, kr_rs_cmd_reset},
    {"SELECT", 2, 0, NULL, kr_rs_cmd_select},
    {"HELLO", -1, F_NOAUTH, NULL, kr_rs_cmd_hello},
    {"AUTH", -2, F_NOAUTH, NULL, kr_rs_cmd_auth},
    {"CLIENT", -2, 0, NULL, kr_rs_cmd_client},
    {"INFO", -1, 0, NULL, kr_rs_cmd_info},
    {"COMMAND", -1, 0, NULL, kr_rs_cmd_command},
    {"PUBSUB", -2, 0, NULL, kr_rs_cmd_pubsub},
};

#define KR_RS_NCMDS (sizeof(kr_rs_cmds) / sizeof(kr_rs_cmds[0]))

size_t kr_rs_ncmds(void)
{
    return KR_RS_NCMDS;
}

static const struct kr_rs_cmd *kr_rs_lookup(const struct kr_resp_arg *name)
{
    for (size_t i = 0; i < KR_RS_NCMDS; i++)
        if (kr_resp_cmd_is(name->p, name->len, kr_rs_cmds[i].name))
            return &kr_rs_cmds[i];
    return NULL;
}

static bool kr_rs_arity_ok(const struct kr_rs_cmd *cmd, size_t argc)
{
    return cmd->arity > 0 ? argc == (size_t)cmd->arity : argc >= (size_t)-cmd->arity;
}

/* ---------------------------------------------------------------- requests */

/* Run one complete request: checks in Redis's order (unknown command, arity, auth, the
 * RESP2 subscribed state), then the command's handler. */
static void kr_rs_run(struct kr_conn *c, struct kr_rs_state *s, const struct kr_rs_cmd *cmd,
                      const struct kr_resp_arg *argv, size_t argc)
{
    struct kr_rs_out o = {c, s, false};
    if (!cmd) {
        kr_rs_unknown(&o, argv, argc);
        return;
    }
    if (!kr_rs_arity_ok(cmd, argc)) {
        kr_rs_arity(&o, &argv[0]);
        return;
    }
    if (!s->authed && !(cmd->flags & KR_RS_F_NOAUTH)) {
        kr_rs_err(&o, "NOAUTH Authentication required.");
        return;
    }
    if (s->proto == 2 && kr_rs_subscribed(s) && !(cmd->flags & KR_RS_F_SUBSCRIBED)) {
        char name[65];
        kr_rs_lower(&argv[0], name, sizeof(name));
        kr_rs_errf(&o, "ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / "
                       "QUIT / RESET are allowed in this context", name);
        return;
    }
    cmd->fn(c, s, argv, argc, cmd);
}

static ssize_t kr_rs_request(struct kr_conn *c, const char *buf, size_t len, bool pipelined,
                             size_t *need)
{
    struct kr_rs_state *s = kr_rs(c);
    struct kr_resp_limits lim = {.max_bulk_bytes = kr_conn_cfg(c)->max_request_bytes,
                                 .max_args = KR_RS_MAX_ARGS,
                                 .max_inline_bytes = 64 * 1024};
    size_t used = 0;
    int rc;
    if (!s->argv) { /* made on the first request, released by kr_rs_trim */
        s->argv_cap = 16;
        s->argv = kr_xcalloc(s->argv_cap, sizeof(*s->argv));
    }
    for (;;) {
        rc = kr_resp_parse(buf, len, &lim, s->argv, s->argv_cap, &s->parser, &used);
        if (rc != KR_RESP_ARGV_FULL)
            break;
        KR_GROW(s->argv, s->argv_cap, s->parser.argc);
    }
    if (rc == KR_RESP_NEED_MORE) {
        *need = used;
        return KR_FE_NEED_MORE;
    }
    if (rc < 0) {
        static _Thread_local char line[96];
        size_t n = kr_resp_error_reply(rc, s->parser.got, line, sizeof(line) - 1);
        line[n] = 0;
        kr_conn_fail(c, line);
        return KR_FE_FAILED;
    }
    size_t argc = s->parser.argc;
    if (argc == 0)
        return (ssize_t)used;
    if (s->parser.is_inline && s->parser.quoted) {
        /* decoded in place: the bytes are this connection's input (never reread) */
        for (size_t i = 0; i < argc; i++)
            s->argv[i].len = kr_resp_unquote(s->argv[i].p, s->argv[i].len, (char *)s->argv[i].p);
    }
    const struct kr_rs_cmd *cmd = kr_rs_lookup(&s->argv[0]);
    if (pipelined && !(cmd && (cmd->flags & KR_RS_F_PIPELINE)))
        return KR_FE_LATER;
    if (cmd && cmd->fn == kr_rs_cmd_resume && !kr_cmd_resume_admit(c))
        return KR_FE_LATER; /* its turn comes when a resume in progress finishes */
    kr_rs_run(c, s, cmd, s->argv, argc);
    return (ssize_t)used;
}

/* The reply of a request that waited on the router: what its handler formatted (the
 * (s)subscribe confirmations; nothing for RESET's quiet unsubscribe), the receivers of a
 * publish, or +OK. */
static void kr_rs_reply(struct kr_conn *c, const struct kr_reply *r)
{
    struct kr_rs_out o = {c, kr_rs(c), false};
    if (r->kind == KR_REPLY_RECEIVERS) {
        kr_rs_int(&o, (int64_t)r->receivers);
        return;
    }
    if (r->kind == KR_REPLY_NOT_FOUND)
        kr_out_str(c, "-NOTFOUND the history does not reach back to the horizon; the live "
                      "subscriptions are in force\r\n");
    if (r->bytes)
        kr_out_add(c, r->bytes, r->len);
    else
        kr_rs_simple(&o, "OK");
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
    uint8_t proto;
    uint32_t len;
    char buf[KR_OUT_SHARE_MIN + 160];
} kr_rs_last;

/* The frame kind and channel name of a routed topic: shard channels are routed under
 * KR_SHARD_PREFIX (kr_cmd.c). */
static const struct kr_rs_kind *kr_rs_topic_kind(const char **t, uint32_t *tlen)
{
    if (*tlen > KR_SHARD_PREFIX_LEN && (*t)[0] == '_' &&
        memcmp(*t, KR_SHARD_PREFIX, KR_SHARD_PREFIX_LEN) == 0) {
        *t += KR_SHARD_PREFIX_LEN;
        *tlen -= KR_SHARD_PREFIX_LEN;
        return &kr_rs_shard;
    }
    return &kr_rs_plain;
}

/* Append message m's frames for one client: one per matched channel. */
static void kr_rs_frame(struct kr_conn *c, struct kr_rs_state *s, struct kr_msg *m,
                        const struct kr_topicset *topics)
{
    uint32_t ntop = kr_msg_ntopics(m), plen, tlen;
    const char *payload = kr_msg_payload(m, &plen);
    for (uint32_t i = 0; i < ntop; i++) {
        if (!kr_topicset_has(topics, ntop, i))
            continue;
        const char *t = kr_msg_topic(m, i, &tlen);
        const struct kr_rs_kind *kind = kr_rs_topic_kind(&t, &tlen);
        size_t cap = tlen + 96;
        bool share = plen >= KR_OUT_SHARE_MIN;
        if (!share && cap + plen + 2 <= sizeof(kr_rs_last.buf)) {
            if (kr_rs_last.m != m || kr_rs_last.time_us != kr_msg_time_us(m) ||
                kr_rs_last.topic != i || kr_rs_last.proto != s->proto) {
                char *o = kr_rs_last.buf;
                size_t hl = kr_resp_fmt_message_head(o, cap, s->proto, kind->message, t, tlen, plen);
                memcpy(o + hl, payload, plen);
                memcpy(o + hl + plen, "\r\n", 2);
                kr_rs_last.len = (uint32_t)(hl + plen + 2);
                kr_rs_last.m = m;
                kr_rs_last.time_us = kr_msg_time_us(m);
                kr_rs_last.topic = i;
                kr_rs_last.proto = (uint8_t)s->proto;
            }
            kr_out_add(c, kr_rs_last.buf, kr_rs_last.len);
            continue;
        }
        char *o = kr_out_room(c, cap + (share ? 0 : plen) + 2);
        size_t n = kr_resp_fmt_message_head(o, cap, s->proto, kind->message, t, tlen, plen);
        if (share) {
            kr_out_commit(c, n);
            kr_out_ref(c, payload, plen, m); /* written from the shared message */
            kr_out_add(c, "\r\n", 2);
        } else {
            memcpy(o + n, payload, plen);
            memcpy(o + n + plen, "\r\n", 2);
            kr_out_commit(c, n + plen + 2);
        }
    }
}

/* A `message __kraken__:position <token>` frame with the position after what was written,
 * when the client subscribed to it, something was written since the last one (or `due`),
 * and an exact position exists now (one per write, between entries). Not while replies wait
 * on the router: the subscription to __kraken__:position counts from its parse, but no
 * position may go out before the confirmations of a (KRAKEN.RESUME, SUBSCRIBE) request still
 * in flight; a client (ioredis) would take it for their reply. */
static void kr_rs_position_message(struct kr_conn *c, struct kr_rs_state *s, bool due)
{
    if (!s->want_position || kr_conn_replies_waiting(c) || (!s->pos_dirty && !due))
        return;
    char tok[KR_POS_TOKEN_MAX + 1];
    size_t n = kr_cmd_position_now(c, tok, sizeof(tok));
    if (!n)
        return; /* not exact at this moment: after a later write */
    uint64_t h = XXH3_64bits(tok, n);
    s->pos_dirty = false;
    if (h == s->x->pos_sent_hash)
        return;
    s->x->pos_sent_hash = h;
    s->x->pos_sent_ms = kr_now_ms();
    size_t tl = sizeof(KR_POSITION_TOPIC) - 1, cap = tl + 96 + n;
    char *o = kr_out_room(c, cap);
    size_t hl = kr_resp_fmt_message_head(o, cap, s->proto, "message", KR_POSITION_TOPIC, tl, n);
    memcpy(o + hl, tok, n);
    memcpy(o + hl + n, "\r\n", 2);
    kr_out_commit(c, hl + n + 2);
}

/* Write the complete entries at the head of the queue as message frames, one per matched
 * channel, until the output holds KR_OUT_HIGH (the rest waits for kr_rs_writable, and an
 * unread queue overflows by its limits). */
static void kr_rs_answer(struct kr_conn *c)
{
    struct kr_rs_state *s = kr_rs(c);
    uint64_t bytes;
    uint32_t n;
    while (kr_conn_out_pending(c) < KR_OUT_HIGH && (n = kr_conn_ready_entries(c, &bytes)) > 0) {
        for (uint32_t k = 0; k < n; k++) {
            struct kr_cq_entry *e = kr_conn_head(c);
            kr_rs_frame(c, s, e->msg, &e->topics);
            kr_conn_pop(c);
        }
        kr_conn_count(c, KR_NTC_messages_delivered, n);
        s->pos_dirty = true;
    }
    kr_rs_position_message(c, s, false);
    if (kr_conn_out_pending(c) < KR_OUT_HIGH && kr_conn_has_queued(c)) {
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
    if (kr_conn_closing_words(c) || kr_conn_out_pending(c) >= KR_OUT_HIGH)
        return false;
    struct kr_rs_state *s = kr_rs(c);
    kr_rs_frame(c, s, m, topics);
    kr_conn_count(c, KR_NTC_messages_delivered, 1);
    s->pos_dirty = true; /* the position follows in the answer after this loop iteration */
    kr_rs_queued(c);
    return true;
}

/* Entries were queued: answered after this loop iteration, all at once. */
static void kr_rs_queued(struct kr_conn *c)
{
    kr_conn_answer_later(c);
}

static void kr_rs_writable(struct kr_conn *c)
{
    uint64_t bytes;
    if (kr_conn_ready_entries(c, &bytes))
        kr_rs_queued(c);
}

/* While its position moves without messages for it, a position subscriber hears of it
 * every position_interval_ms. */
static void kr_rs_tick(struct kr_conn *c, uint64_t now)
{
    struct kr_rs_state *s = kr_conn_fe_state(c);
    if (!s || !s->want_position ||
        kr_ms_since(now, s->x->pos_sent_ms) < kr_conn_position_interval_ms(c))
        return;
    if (kr_conn_closing_words(c) || kr_conn_out_pending(c) >= KR_OUT_HIGH)
        return;
    kr_rs_position_message(c, s, true);
    s->x->pos_sent_ms = now; /* looked at now, whether it moved or not */
    kr_conn_answer_later(c); /* flushed after this loop iteration */
}

/* The drain reached the connection and nothing more is queued for it: a position
 * subscriber gets its final position before the close. */
static void kr_rs_drained(struct kr_conn *c)
{
    struct kr_rs_state *s = kr_conn_fe_state(c);
    if (s && s->want_position) {
        s->x->pos_sent_hash = 0; /* the final one is sent even when it did not move */
        kr_rs_position_message(c, s, true);
    }
}

/* Quiet (nothing half-read: the parser holds no argument): the argument vector and the
 * reply scratch go, the next request makes them again. */
static void kr_rs_trim(struct kr_conn *c)
{
    struct kr_rs_state *s = kr_conn_fe_state(c);
    if (!s || s->sb_len || s->parser.nargs || s->parser.done)
        return;
    free(s->argv);
    s->argv = NULL;
    s->argv_cap = 0;
    free(s->sb);
    s->sb = NULL;
    s->sb_cap = 0;
}

static size_t kr_rs_mem(const struct kr_conn *c)
{
    const struct kr_rs_state *s = kr_conn_fe_state(c);
    if (!s)
        return 0;
    size_t chans = 0; /* a listing's figure: the set is walked, not counted on every change */
    for (uint32_t b = 0; b < s->tab_cap; b++)
        for (const struct kr_rs_chan *ch = s->tab[b]; ch; ch = ch->next)
            chans += sizeof(*ch) + ch->len;
    return sizeof(*s) + (size_t)s->argv_cap * sizeof(*s->argv) + s->sb_cap +
           (size_t)s->tab_cap * sizeof(*s->tab) + chans +
           (s->x ? sizeof(*s->x) + (s->x->name ? strlen(s->x->name) + 1 : 0) : 0);
}

static void kr_rs_close(struct kr_conn *c)
{
    struct kr_rs_state *s = kr_conn_fe_state(c);
    if (!s)
        return;
    kr_rs_channels_free(s);
    free(s->argv);
    free(s->sb);
    if (s->x)
        free(s->x->name);
    free(s->x);
    free(s);
    kr_conn_set_fe_state(c, NULL);
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
    .tick = kr_rs_tick,
    .trim = kr_rs_trim,
    .mem = kr_rs_mem,
    .drained = kr_rs_drained,
};
