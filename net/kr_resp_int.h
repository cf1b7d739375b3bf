/* Internals of the RESP frontend, shared by its three files: kr_front_resp.c (the frontend:
 * parsing, the command table and dispatch, replies and deliveries), kr_resp_pubsub.c (the
 * pub/sub commands and the connection's channel set) and kr_resp_conncmd.c (the connection
 * commands: PING, HELLO, AUTH, CLIENT, INFO, COMMAND, PUBSUB, ...). Like every frontend they
 * see their connections only through kr_frontend.h. Net thread only. */
#ifndef KR_RESP_INT_H
#define KR_RESP_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kr_frontend.h"
#include "kr_resp.h"

/* ---------------------------------------------------------------- pub/sub kinds */

/* Plain and shard channels (Redis's pubsubtype): their namespace in the router and the
 * words of their frames. */
struct kr_rs_kind {
    enum kr_ns ns;
    const char *subscribe;   /* "subscribe" / "ssubscribe" */
    const char *unsubscribe; /* "unsubscribe" / "sunsubscribe" */
    const char *message;     /* "message" / "smessage" */
};

extern const struct kr_rs_kind kr_rs_plain; /* SUBSCRIBE, PUBLISH, KRAKEN.* */
extern const struct kr_rs_kind kr_rs_shard; /* SSUBSCRIBE, SPUBLISH */

/* A channel the connection subscribes to, in its namespace. */
struct kr_rs_chan {
    struct kr_rs_chan *next;
    uint64_t hash;
    uint32_t len;
    uint8_t ns;
    char name[];
};

/* ---------------------------------------------------------------- the connection's state */

/* What few RESP connections use, allocated by the first use (kr_rs_extra) and freed with
 * the state. */
struct kr_rs_extra {
    char *name;             /* CLIENT SETNAME (NULL: none) */
    uint64_t pos_sent_ms;   /* when the last position message went (kr_now_ms) */
    uint64_t pos_sent_hash; /* and a hash of its token, not to repeat it */
};

/* 128 bytes, one jemalloc size class: every RESP connection has one (kr_front_resp.c
 * asserts the size). */
struct kr_rs_state {
    struct kr_resp_parser parser;
    struct kr_resp_arg *argv;
    struct kr_rs_chan **tab; /* subscribed channels, both namespaces */
    struct kr_rs_extra *x;   /* NULL until needed; set while want_position */
    /* scratch: a reply being formatted */
    char *sb;
    size_t sb_len, sb_cap;
    uint32_t argv_cap;
    uint32_t tab_cap; /* power of two */
    uint32_t nentries;
    uint32_t nsubs[2]; /* channels per namespace (enum kr_ns): the confirmations' counts */
    uint8_t proto;     /* 2 or 3 */
    bool authed;
    /* continuity: position messages (subscribed to __kraken__:position) */
    bool want_position;
    bool pos_dirty; /* messages were written since the last position message */
};

/* The state's rarely used part, allocated on the first call. Net thread. */
struct kr_rs_extra *kr_rs_extra(struct kr_rs_state *s);
/* The CLIENT SETNAME name, or NULL. Net thread. */
const char *kr_rs_name(const struct kr_rs_state *s);

/* The connection's state (created on first use). */
struct kr_rs_state *kr_rs(struct kr_conn *c);
/* In RESP2 with any subscription: only the commands flagged KR_RS_F_SUBSCRIBED run. */
static inline bool kr_rs_subscribed(const struct kr_rs_state *s)
{
    return s->nsubs[KR_NS_PLAIN] || s->nsubs[KR_NS_SHARD];
}

/* ---------------------------------------------------------------- output */

/* Formatters write into the scratch buffer (sb) when `to_sb` (a reply that waits on the
 * router, handed to kr_cmd_subscribe), or straight into the connection's output. */
struct kr_rs_out {
    struct kr_conn *c;
    struct kr_rs_state *s;
    bool to_sb;
};

void kr_rs_simple(struct kr_rs_out *o, const char *p);
void kr_rs_err(struct kr_rs_out *o, const char *p);
void kr_rs_errf(struct kr_rs_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void kr_rs_int(struct kr_rs_out *o, int64_t v);
void kr_rs_bulk(struct kr_rs_out *o, const char *p, size_t n);
void kr_rs_bulkz(struct kr_rs_out *o, const char *p);
void kr_rs_null(struct kr_rs_out *o);
void kr_rs_array(struct kr_rs_out *o, size_t n);
void kr_rs_map(struct kr_rs_out *o, size_t n);
/* A (s)subscribe / (s)unsubscribe confirmation: [kind, channel, count]. */
void kr_rs_count(struct kr_rs_out *o, const char *kind, const char *ch, size_t chlen,
                 int64_t count);
/* Room for n bytes in the scratch buffer (sb). */
void kr_rs_sb_reserve(struct kr_rs_state *s, size_t n);
/* -ERR with the rule book's refusal text (kr_cmd_refusal). */
void kr_rs_refused(struct kr_rs_out *o, int rc);
/* "ERR wrong number of arguments for '<cmd>' command". */
void kr_rs_arity(struct kr_rs_out *o, const struct kr_resp_arg *cmd);
/* The argument in lower case, at most cap - 1 bytes, for error texts. */
void kr_rs_lower(const struct kr_resp_arg *a, char *out, size_t cap);

/* ---------------------------------------------------------------- the command table */

#define KR_RS_F_SUBSCRIBED 1u /* allowed in the RESP2 subscribed state */
#define KR_RS_F_NOAUTH 2u     /* runs before AUTH when requirepass is set */
#define KR_RS_F_PIPELINE 4u   /* its reply waits in order in the reply ring: it may run while
                                 earlier replies wait on the router */

struct kr_rs_cmd;
typedef void (*kr_rs_handler)(struct kr_conn *c, struct kr_rs_state *s,
                              const struct kr_resp_arg *argv, size_t argc,
                              const struct kr_rs_cmd *cmd);

/* One command, as Redis's table: arity n > 0 is exactly n arguments (the name included),
 * -n at least n. */
struct kr_rs_cmd {
    const char *name;
    int arity;
    unsigned flags;
    const struct kr_rs_kind *kind; /* the pub/sub kind it works on, or NULL */
    kr_rs_handler fn;
};

/* The number of commands in the table (COMMAND COUNT). */
size_t kr_rs_ncmds(void);

/* ---------------------------------------------------------------- kr_resp_pubsub.c */

void kr_rs_cmd_subscribe(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                         size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_unsubscribe(struct kr_conn *c, struct kr_rs_state *s,
                           const struct kr_resp_arg *argv, size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_publish(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                       size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_patterns(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                        size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_register(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                        size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_resume(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                      size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_retro(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                     size_t argc, const struct kr_rs_cmd *cmd);
/* Unsubscribe every channel of both kinds without confirmations (RESET). */
void kr_rs_unsubscribe_all_quietly(struct kr_conn *c, struct kr_rs_state *s);
/* Free the channel set. */
void kr_rs_channels_free(struct kr_rs_state *s);

/* ---------------------------------------------------------------- kr_resp_conncmd.c */

void kr_rs_cmd_ping(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                    size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_echo(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                    size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_quit(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                    size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_reset(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                     size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_select(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                      size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_hello(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                     size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_auth(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                    size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_client(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                      size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_info(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                    size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_command(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                       size_t argc, const struct kr_rs_cmd *cmd);
void kr_rs_cmd_pubsub(struct kr_conn *c, struct kr_rs_state *s, const struct kr_resp_arg *argv,
                      size_t argc, const struct kr_rs_cmd *cmd);
/* "ERR unknown command '<name>', with args beginning with: ..." */
void kr_rs_unknown(struct kr_rs_out *o, const struct kr_resp_arg *argv, size_t argc);

#endif
