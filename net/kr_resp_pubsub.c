/* The RESP pub/sub commands: (S)SUBSCRIBE, (S)UNSUBSCRIBE, (S)PUBLISH, KRAKEN.PUBLISH,
 * KRAKEN.REGISTER, KRAKEN.RETRO_SUBSCRIBE, and the connection's channel set (what its
 * confirmations count). Each request is parsed into the rule book's operation (kr_cmd_*),
 * which applies every rule; this file formats the results. Net thread only. */
#include "kr_resp_int.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kr_position.h"
#include "kr_util.h"

/* ---------------------------------------------------------------- channel set */

static uint64_t kr_rs_hash(enum kr_ns ns, const char *p, size_t n)
{
    return XXH3_64bits_withSeed(p, n, (uint64_t)ns);
}

static struct kr_rs_chan **kr_rs_slot(struct kr_rs_state *s, enum kr_ns ns, const char *p,
                                      size_t n, uint64_t h)
{
    struct kr_rs_chan **pp = &s->tab[h & (s->tab_cap - 1)];
    while (*pp && !((*pp)->hash == h && (*pp)->ns == ns && (*pp)->len == n &&
                    memcmp((*pp)->name, p, n) == 0))
        pp = &(*pp)->next;
    return pp;
}

static struct kr_rs_chan *kr_rs_find(struct kr_rs_state *s, enum kr_ns ns, const char *p, size_t n)
{
    if (!s->tab_cap)
        return NULL;
    return *kr_rs_slot(s, ns, p, n, kr_rs_hash(ns, p, n));
}

/* Add a channel (counted in its namespace); returns false when it was there already. */
static bool kr_rs_add(struct kr_rs_state *s, enum kr_ns ns, const char *p, size_t n)
{
    if (s->nentries + 1 > s->tab_cap) {
        uint32_t ncap = s->tab_cap ? s->tab_cap * 2 : 1; /* most clients hold a few */
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
    uint64_t h = kr_rs_hash(ns, p, n);
    struct kr_rs_chan **pp = kr_rs_slot(s, ns, p, n, h);
    if (*pp)
        return false;
    struct kr_rs_chan *ch = kr_xmalloc(sizeof(*ch) + n);
    ch->next = NULL;
    ch->hash = h;
    ch->len = (uint32_t)n;
    ch->ns = (uint8_t)ns;
    memcpy(ch->name, p, n);
    *pp = ch;
    s->nentries++;
    s->nsubs[ns]++;
    if (ns == KR_NS_PLAIN && n == sizeof(KR_POSITION_TOPIC) - 1 &&
        memcmp(p, KR_POSITION_TOPIC, n) == 0) {
        kr_rs_extra(s); /* where the position messages' state is */
        s->want_position = true;
    }
    return true;
}

/* Take ch out of the set (uncounted); the caller frees it. */
static void kr_rs_unlink(struct kr_rs_state *s, struct kr_rs_chan *ch)
{
    struct kr_rs_chan **pp = kr_rs_slot(s, ch->ns, ch->name, ch->len, ch->hash);
    *pp = ch->next;
    s->nentries--;
    s->nsubs[ch->ns]--;
    if (ch->ns == KR_NS_PLAIN && ch->len == sizeof(KR_POSITION_TOPIC) - 1 &&
        memcmp(ch->name, KR_POSITION_TOPIC, ch->len) == 0)
        s->want_position = false;
}

void kr_rs_channels_free(struct kr_rs_state *s)
{
    for (uint32_t b = 0; b < s->tab_cap; b++) {
        struct kr_rs_chan *ch = s->tab[b];
        while (ch) {
            struct kr_rs_chan *next = ch->next;
            free(ch);
            ch = next;
        }
    }
    free(s->tab);
    s->tab = NULL;
    s->tab_cap = s->nentries = 0;
    s->nsubs[0] = s->nsubs[1] = 0;
    s->want_position = false;
}

/* ---------------------------------------------------------------- subscribe */

/* The arguments argv[from..from + n) as the rule book's topic list (the net thread's
 * scratch, kr_cmd_args). */
static void kr_rs_topics(struct kr_conn *c, const struct kr_resp_arg *argv, size_t from,
                         uint32_t n, const char ***topics, uint32_t **lens)
{
    kr_cmd_args(c, n, topics, lens);
    for (uint32_t i = 0; i < n; i++) {
        (*topics)[i] = argv[from + i].p;
        (*lens)[i] = (uint32_t)argv[from + i].len;
    }
}

/* (S)SUBSCRIBE or KRAKEN.RETRO_SUBSCRIBE (op KR_SUB_RETRO, horizon) of argv[first..argc):
 * the rule book checks the channels and subscribes; the confirmations are formatted here,
 * with this connection's counts, and go out once the subscriptions are in force. */
static void kr_rs_subscribe(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                            size_t first, size_t argc, const struct kr_rs_kind *kind,
                            enum kr_sub_op op, uint64_t horizon)
{
    struct kr_rs_out o = {c, s, false};
    uint32_t n = (uint32_t)(argc - first), k = 0;
    const char **topics;
    uint32_t *lens;
    kr_rs_topics(c, argv, first, n, &topics, &lens);
    struct kr_cmd_sub sub = {.op = op, .ns = kind->ns, .horizon_us = horizon, .n = n,
                             .topics = topics, .lens = lens};
    int rc = kr_cmd_sub_check(c, &sub);
    if (rc < 0) {
        kr_rs_refused(&o, rc);
        return;
    }
    /* a retroactive subscribe (or the first one after KRAKEN.REGISTER) replays even for a
     * channel already taken; otherwise only new channels go to the router */
    bool retro = op == KR_SUB_RETRO || kr_cmd_subscribe_runs_alone(c);
    o.to_sb = true;
    s->sb_len = 0;
    for (size_t i = first; i < argc; i++) {
        if (kr_rs_add(s, kind->ns, argv[i].p, argv[i].len) || retro) {
            topics[k] = argv[i].p;
            lens[k++] = (uint32_t)argv[i].len;
        }
        kr_rs_count(&o, kind->subscribe, argv[i].p, argv[i].len, s->nsubs[kind->ns]);
    }
    sub.n = k;
    sub.reply = s->sb;
    sub.reply_len = s->sb_len;
    rc = kr_cmd_subscribe(c, &sub);
    s->sb_len = 0;
    (void)rc; /* checked above, and the channels are the same */
    kr_conn_emit_replies(c); /* a reply that waits on nothing goes out now, in order */
}

void kr_rs_cmd_subscribe(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                         size_t argc, const struct kr_rs_cmd *cmd)
{
    kr_rs_subscribe(c, s, argv, 1, argc, cmd->kind, KR_SUB_SUBSCRIBE, 0);
}

void kr_rs_cmd_retro(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                     size_t argc, const struct kr_rs_cmd *cmd)
{
    struct kr_rs_out o = {c, s, false};
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
        return;
    }
    /* counted, and a horizon in the future taken as now, by kr_cmd_subscribe */
    kr_rs_subscribe(c, s, argv, 2, argc, cmd->kind, KR_SUB_RETRO, h ? h : 1);
}

/* KRAKEN.RESUME token topic [topic ...]: confirmed like SUBSCRIBE, plus __kraken__:resync
 * when it was not held (resuming opts in to resync notices); the rule book resumes. */
void kr_rs_cmd_resume(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                      size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)cmd;
    struct kr_rs_out o = {c, s, false};
    uint32_t n = (uint32_t)(argc - 2);
    const char **topics;
    uint32_t *lens;
    kr_rs_topics(c, argv, 2, n, &topics, &lens);
    struct kr_cmd_sub sub = {.op = KR_SUB_SUBSCRIBE, .ns = KR_NS_PLAIN, .n = n, .topics = topics,
                             .lens = lens};
    struct kr_pos pos;
    int rc = kr_pos_decode(argv[1].p, argv[1].len, &pos) < 0 ? KR_CMD_BAD_POSITION
                                                              : kr_cmd_sub_check(c, &sub);
    if (rc < 0) {
        kr_rs_refused(&o, rc);
        return;
    }
    o.to_sb = true;
    s->sb_len = 0;
    for (uint32_t i = 0; i < n; i++) {
        kr_rs_add(s, KR_NS_PLAIN, topics[i], lens[i]);
        kr_rs_count(&o, kr_rs_plain.subscribe, topics[i], lens[i], s->nsubs[KR_NS_PLAIN]);
    }
    if (kr_rs_add(s, KR_NS_PLAIN, KR_RESYNC_TOPIC, sizeof(KR_RESYNC_TOPIC) - 1))
        kr_rs_count(&o, kr_rs_plain.subscribe, KR_RESYNC_TOPIC, sizeof(KR_RESYNC_TOPIC) - 1,
                    s->nsubs[KR_NS_PLAIN]);
    sub.reply = s->sb;
    sub.reply_len = s->sb_len;
    rc = kr_cmd_resume(c, argv[1].p, argv[1].len, &sub);
    s->sb_len = 0;
    (void)rc; /* checked above */
    kr_conn_emit_replies(c);
}

/* ---------------------------------------------------------------- unsubscribe */

/* Unsubscribe one channel: its confirmation, and when it was held, its name in the
 * router's list (topics[*n]) and the entry unlinked onto *dead (freed by the caller once the
 * router was told). */
static void kr_rs_unsub_one(struct kr_rs_state *s, struct kr_rs_out *o, const struct kr_rs_kind *kind,
                            const char *p, size_t len, const char **topics, uint32_t *lens,
                            uint32_t *n, struct kr_rs_chan **dead)
{
    struct kr_rs_chan *ch = kr_rs_find(s, kind->ns, p, len);
    if (ch) {
        kr_rs_unlink(s, ch);
        topics[*n] = ch->name;
        lens[(*n)++] = ch->len;
        ch->next = *dead;
        *dead = ch;
    }
    kr_rs_count(o, kind->unsubscribe, p, len, s->nsubs[kind->ns]);
}

/* (S)UNSUBSCRIBE of argv[first..argc), or of every channel of the kind; `quiet`: no
 * confirmations (RESET). */
static void kr_rs_unsubscribe(struct kr_conn *c, struct kr_rs_state *s,
                              const struct kr_resp_arg *argv, size_t first, size_t argc,
                              const struct kr_rs_kind *kind, bool quiet)
{
    struct kr_rs_out o = {c, s, true};
    struct kr_rs_chan *dead = NULL;
    uint32_t n = 0;
    const char **topics;
    uint32_t *lens;
    kr_cmd_args(c, (uint32_t)(first < argc ? argc - first : s->nsubs[kind->ns]), &topics, &lens);
    s->sb_len = 0;
    if (first < argc) {
        for (size_t i = first; i < argc; i++)
            kr_rs_unsub_one(s, &o, kind, argv[i].p, argv[i].len, topics, lens, &n, &dead);
    } else if (s->nsubs[kind->ns] == 0) {
        kr_rs_count(&o, kind->unsubscribe, NULL, 0, 0);
    } else {
        /* every channel of the kind (an entry that goes away stays allocated on `dead`) */
        for (uint32_t b = 0; b < s->tab_cap; b++) {
            struct kr_rs_chan *ch = s->tab[b];
            while (ch) {
                struct kr_rs_chan *next = ch->next;
                if (ch->ns == kind->ns)
                    kr_rs_unsub_one(s, &o, kind, ch->name, ch->len, topics, lens, &n, &dead);
                ch = next;
            }
        }
    }
    struct kr_cmd_sub sub = {.op = KR_SUB_UNSUBSCRIBE, .ns = kind->ns, .n = n, .topics = topics,
                             .lens = lens, .reply = quiet ? "" : s->sb,
                             .reply_len = quiet ? 0 : s->sb_len};
    kr_cmd_subscribe(c, &sub); /* held channels only: they passed the rules when subscribed */
    s->sb_len = 0;
    while (dead) {
        struct kr_rs_chan *next = dead->next;
        free(dead);
        dead = next;
    }
    kr_conn_emit_replies(c); /* a reply that waits on nothing goes out now, in order */
}

void kr_rs_cmd_unsubscribe(struct kr_conn *c, struct kr_rs_state *s,
                           const struct kr_resp_arg *argv, size_t argc, const struct kr_rs_cmd *cmd)
{
    kr_rs_unsubscribe(c, s, argv, 1, argc, cmd->kind, false);
}

void kr_rs_unsubscribe_all_quietly(struct kr_conn *c, struct kr_rs_state *s)
{
    if (s->nsubs[KR_NS_PLAIN])
        kr_rs_unsubscribe(c, s, NULL, 0, 0, &kr_rs_plain, true);
    if (s->nsubs[KR_NS_SHARD])
        kr_rs_unsubscribe(c, s, NULL, 0, 0, &kr_rs_shard, true);
}

/* ---------------------------------------------------------------- publish */

/* PUBLISH / SPUBLISH ch payload, KRAKEN.PUBLISH topic [topic ...] payload: one entry; the
 * reply is the number of this node's connections that received it, once the shards
 * counted them (KR_REPLY_RECEIVERS). */
void kr_rs_cmd_publish(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                       size_t argc, const struct kr_rs_cmd *cmd)
{
    struct kr_rs_out o = {c, s, false};
    uint32_t n = (uint32_t)(argc - 2);
    const char **topics;
    uint32_t *lens;
    kr_rs_topics(c, argv, 1, n, &topics, &lens);
    const struct kr_resp_arg *payload = &argv[argc - 1];
    struct kr_cmd_entry e = {.ns = cmd->kind->ns, .n = n, .topics = topics, .lens = lens,
                             .payload = payload->p,
                             .payload_len = payload->len > UINT32_MAX ? UINT32_MAX
                                                                      : (uint32_t)payload->len};
    kr_conn_count(c, KR_NTC_publish_requests, 1);
    kr_conn_count(c, KR_NTC_cmd_set, 1);
    int rc = kr_cmd_publish(c, &e, KR_PUB_COUNT);
    if (rc < 0) {
        kr_rs_refused(&o, rc);
        return;
    }
    kr_conn_emit_replies(c);
}

/* ---------------------------------------------------------------- the rest */

void kr_rs_cmd_patterns(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                        size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)argv, (void)argc, (void)cmd;
    struct kr_rs_out o = {c, s, false};
    kr_rs_err(&o, "ERR pattern subscriptions are not supported by Kraken (PSUBSCRIBE, "
                  "PUNSUBSCRIBE): subscribe to each channel");
}

void kr_rs_cmd_register(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                        size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)s, (void)argv, (void)argc, (void)cmd;
    kr_cmd_register(c, false); /* +OK (kr_rs_reply) */
}
