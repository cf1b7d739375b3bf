/* The RESP connection commands stock clients send: PING, ECHO, QUIT, RESET, SELECT, HELLO,
 * AUTH, CLIENT, INFO, COMMAND and PUBSUB (its answers read the router's tables), answered as
 * Redis answers them. Net thread only. */
#include "kr_resp_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kr_cfg.h"
#include "kr_net.h"
#include "kr_router.h"
#include "kr_util.h"

/* ---------------------------------------------------------------- small commands */

void kr_rs_cmd_ping(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                    size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)cmd;
    struct kr_rs_out o = {c, s, false};
    if (argc > 2) {
        kr_rs_arity(&o, &argv[0]);
    } else if (s->proto == 2 && kr_rs_subscribed(s)) {
        kr_rs_array(&o, 2);
        kr_rs_bulkz(&o, "pong");
        kr_rs_bulk(&o, argc == 2 ? argv[1].p : "", argc == 2 ? argv[1].len : 0);
    } else if (argc == 2) {
        kr_rs_bulk(&o, argv[1].p, argv[1].len);
    } else {
        kr_rs_simple(&o, "PONG");
    }
}

void kr_rs_cmd_echo(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                    size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)argc, (void)cmd;
    struct kr_rs_out o = {c, s, false};
    kr_rs_bulk(&o, argv[1].p, argv[1].len);
}

void kr_rs_cmd_quit(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                    size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)argv, (void)argc, (void)cmd;
    struct kr_rs_out o = {c, s, false};
    kr_rs_simple(&o, "OK");
    kr_conn_close_after_reply(c);
}

/* Set the connection's name to p[0..n) (p == NULL: no name). */
static void kr_rs_set_name(struct kr_rs_state *s, const char *p, size_t n)
{
    if (!p) {
        if (s->x) {
            free(s->x->name);
            s->x->name = NULL;
        }
        return;
    }
    struct kr_rs_extra *x = kr_rs_extra(s);
    free(x->name);
    x->name = kr_xmalloc(n + 1);
    memcpy(x->name, p, n);
    x->name[n] = 0;
}

void kr_rs_cmd_reset(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                     size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)argv, (void)argc, (void)cmd;
    struct kr_rs_out o = {c, s, false};
    kr_rs_unsubscribe_all_quietly(c, s); /* RESET answers +RESET alone */
    s->proto = 2;
    kr_rs_set_name(s, NULL, 0);
    kr_cmd_unregister(c);
    kr_rs_simple(&o, "RESET");
}

void kr_rs_cmd_select(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                      size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)argc, (void)cmd;
    struct kr_rs_out o = {c, s, false};
    if (argv[1].len == 1 && argv[1].p[0] == '0')
        kr_rs_simple(&o, "OK");
    else if (argv[1].len && argv[1].len < 20 && strspn(argv[1].p, "-0123456789") >= argv[1].len)
        kr_rs_err(&o, "ERR DB index is out of range");
    else
        kr_rs_err(&o, "ERR value is not an integer or out of range");
}

void kr_rs_cmd_command(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                       size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)cmd;
    struct kr_rs_out o = {c, s, false};
    if (argc == 1) {
        kr_rs_array(&o, 0);
    } else if (kr_resp_cmd_is(argv[1].p, argv[1].len, "COUNT")) {
        kr_rs_int(&o, (int64_t)kr_rs_ncmds());
    } else if (kr_resp_cmd_is(argv[1].p, argv[1].len, "DOCS")) {
        kr_rs_map(&o, 0);
    } else {
        kr_rs_errf(&o, "ERR unknown subcommand '%.*s'. Try COMMAND HELP.",
                   (int)(argv[1].len > 64 ? 64 : argv[1].len), argv[1].p);
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
    enum kr_ns ns; /* which namespace is listed or counted */
};

/* A routed topic of the namespace w->ns: its channel name (shard channels are routed under
 * KR_SHARD_PREFIX). */
static bool kr_rs_walk_name(const struct kr_rs_walk *w, const char **t, uint32_t *len)
{
    bool shard = *len > KR_SHARD_PREFIX_LEN && memcmp(*t, KR_SHARD_PREFIX, KR_SHARD_PREFIX_LEN) == 0;
    if (shard != (w->ns == KR_NS_SHARD))
        return false;
    if (shard) {
        *t += KR_SHARD_PREFIX_LEN;
        *len -= KR_SHARD_PREFIX_LEN;
    }
    return true;
}

static int kr_rs_walk_channels(void *arg, const char *t, uint32_t len, uint32_t nsubs)
{
    struct kr_rs_walk *w = arg;
    if (!nsubs || !kr_rs_walk_name(w, &t, &len) ||
        (w->pat && !kr_rs_glob(w->pat->p, w->pat->len, t, len)))
        return 0;
    kr_rs_sb_reserve(w->s, len + 32);
    w->s->sb_len += kr_resp_fmt_bulk(w->s->sb + w->s->sb_len, len + 32, t, len);
    w->found++;
    return 0;
}

static int kr_rs_walk_numsub(void *arg, const char *t, uint32_t len, uint32_t nsubs)
{
    struct kr_rs_walk *w = arg;
    if (!kr_rs_walk_name(w, &t, &len))
        return 0;
    for (size_t i = 0; i < w->nch; i++)
        if (w->chs[i].len == len && memcmp(w->chs[i].p, t, len) == 0)
            w->counts[i] += nsubs;
    return 0;
}

void kr_rs_cmd_pubsub(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                      size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)cmd;
    struct kr_rs_out o = {c, s, false};
    struct kr_router *r = kr_server_router(kr_conn_server(c));
    const struct kr_resp_arg *sub = &argv[1];
    bool shard = kr_resp_cmd_is(sub->p, sub->len, "SHARDCHANNELS") ||
                 kr_resp_cmd_is(sub->p, sub->len, "SHARDNUMSUB");
    if (kr_resp_cmd_is(sub->p, sub->len, "CHANNELS") || kr_resp_cmd_is(sub->p, sub->len, "SHARDCHANNELS")) {
        if (argc > 3) {
            kr_rs_errf(&o, "ERR Unknown subcommand or wrong number of arguments for '%.*s'. Try PUBSUB HELP.",
                       (int)(sub->len > 64 ? 64 : sub->len), sub->p);
            return;
        }
        struct kr_rs_walk w = {.s = s, .pat = argc == 3 ? &argv[2] : NULL,
                               .ns = shard ? KR_NS_SHARD : KR_NS_PLAIN};
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
        struct kr_rs_walk w = {.s = s, .chs = &argv[2], .nch = nch, .counts = counts,
                               .ns = shard ? KR_NS_SHARD : KR_NS_PLAIN};
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

/* ---------------------------------------------------------------- connection state */

/* Does (user, pass) match requirepass? The user must be absent or `default` (the one user
 * there is). Compared in time independent of where the bytes differ. */
static bool kr_rs_auth_ok(const struct kr_conn *c, const struct kr_resp_arg *user,
                          const struct kr_resp_arg *pass)
{
    const char *want = kr_conn_cfg(c)->requirepass;
    size_t wl = strlen(want);
    if (user && !(user->len == 7 && memcmp(user->p, "default", 7) == 0))
        return false;
    unsigned char diff = (unsigned char)(pass->len != wl);
    for (size_t i = 0; i < pass->len; i++)
        diff |= (unsigned char)(pass->p[i] ^ (i < wl ? want[i] : 0));
    return diff == 0;
}

#define KR_RS_WRONGPASS "WRONGPASS invalid username-password pair or user is disabled."

void kr_rs_cmd_auth(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                    size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)cmd;
    struct kr_rs_out o = {c, s, false};
    if (argc > 3) {
        kr_rs_err(&o, "ERR syntax error");
        return;
    }
    if (!kr_conn_cfg(c)->requirepass[0]) {
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

void kr_rs_cmd_hello(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                     size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)cmd;
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
            if (kr_conn_cfg(c)->requirepass[0] && !kr_rs_auth_ok(c, &argv[i + 1], &argv[i + 2])) {
                kr_rs_err(&o, KR_RS_WRONGPASS);
                return;
            }
            s->authed = true; /* without requirepass any credentials do, as in Redis */
            i += 2;
        } else if (kr_resp_cmd_is(argv[i].p, argv[i].len, "SETNAME") && i + 1 < argc) {
            kr_rs_set_name(s, argv[i + 1].p, argv[i + 1].len);
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
    s->proto = (uint8_t)proto;
    kr_rs_map(&o, 7);
    kr_rs_bulkz(&o, "server");
    kr_rs_bulkz(&o, "kraken");
    kr_rs_bulkz(&o, "version");
    kr_rs_bulkz(&o, KR_VERSION);
    kr_rs_bulkz(&o, "proto");
    kr_rs_int(&o, proto);
    kr_rs_bulkz(&o, "id");
    kr_rs_int(&o, (int64_t)kr_conn_id(c));
    kr_rs_bulkz(&o, "mode");
    kr_rs_bulkz(&o, "standalone");
    kr_rs_bulkz(&o, "role");
    kr_rs_bulkz(&o, "master");
    kr_rs_bulkz(&o, "modules");
    kr_rs_array(&o, 0);
}

static void kr_rs_client_line(struct kr_conn *c, struct kr_rs_state *s, char *buf, size_t cap)
{
    snprintf(buf, cap,
             "id=%llu addr=%s name=%s age=%llu db=0 sub=%u psub=0 ssub=%u tot-mem=%zu resp=%d "
             "lib-name= lib-ver=\n",
             (unsigned long long)kr_conn_id(c), kr_conn_peer(c), kr_rs_name(s) ? kr_rs_name(s) : "",
             (unsigned long long)(kr_conn_age_ms(c) / 1000), s->nsubs[KR_NS_PLAIN],
             s->nsubs[KR_NS_SHARD], kr_conn_mem(c), s->proto);
}

void kr_rs_cmd_client(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                      size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)cmd;
    struct kr_rs_out o = {c, s, false};
    const struct kr_resp_arg *sub = &argv[1];
    if (kr_resp_cmd_is(sub->p, sub->len, "ID") && argc == 2) {
        kr_rs_int(&o, (int64_t)kr_conn_id(c));
    } else if (kr_resp_cmd_is(sub->p, sub->len, "GETNAME") && argc == 2) {
        if (kr_rs_name(s))
            kr_rs_bulkz(&o, kr_rs_name(s));
        else
            kr_rs_null(&o);
    } else if (kr_resp_cmd_is(sub->p, sub->len, "SETNAME") && argc == 3) {
        for (size_t i = 0; i < argv[2].len; i++) {
            if (argv[2].p[i] < '!' || argv[2].p[i] > '~') {
                kr_rs_err(&o, "ERR Client names cannot contain spaces, newlines or special characters.");
                return;
            }
        }
        kr_rs_set_name(s, argv[2].len ? argv[2].p : NULL, argv[2].len);
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

void kr_rs_cmd_info(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                    size_t argc, const struct kr_rs_cmd *cmd)
{
    (void)cmd;
    struct kr_rs_out o = {c, s, false};
    struct kr_server *srv = kr_conn_server(c);
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
    char buf[1024];
    size_t n = 0;
    if (want[0])
        n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                              "# Server\r\nredis_version:7.0.0\r\nkraken_version:%s\r\nredis_mode:standalone\r\n"
                              "process_id:%d\r\ntcp_port:%u\r\nkraken_resp_port:%u\r\nuptime_in_seconds:%llu\r\n\r\n",
                              KR_VERSION, (int)getpid(), kr_server_port(srv), kr_server_resp_port(srv),
                              (unsigned long long)kr_server_uptime(srv));
    if (want[1] && n < sizeof(buf))
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "# Clients\r\nconnected_clients:%llu\r\n\r\n",
                              (unsigned long long)kr_server_clients(srv));
    if (want[2] && n < sizeof(buf))
        n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                              "# Stats\r\nmessages_published:%llu\r\nmessages_delivered:%llu\r\n"
                              "pubsub_patterns:0\r\n\r\n",
                              (unsigned long long)kr_server_counter(srv, KR_NTC_messages_published),
                              (unsigned long long)kr_server_counter(srv, KR_NTC_messages_delivered));
    if (want[3] && n < sizeof(buf))
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "# Memory\r\nused_memory:%llu\r\n\r\n",
                              (unsigned long long)kr_server_memory_allocated(srv));
    if (n > sizeof(buf) - 1)
        n = sizeof(buf) - 1;
    if (n >= 2)
        n -= 2; /* no blank line after the last section, as Redis */
    kr_rs_bulk(&o, buf, n);
}

void kr_rs_unknown(struct kr_rs_out *o, const struct kr_resp_arg *argv, size_t argc)
{
    char buf[600];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "ERR unknown command '%.*s', with args beginning with: ",
                                (int)(argv[0].len > 128 ? 128 : argv[0].len), argv[0].p);
    for (size_t i = 1; i < argc && n < sizeof(buf) - 140; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "'%.*s' ",
                              (int)(argv[i].len > 128 ? 128 : argv[i].len), argv[i].p);
    (void)n;
    kr_rs_err(o, buf);
}

