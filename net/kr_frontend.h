/* The frontend boundary: what a protocol frontend (kr_front_mc.c, the RESP files
 * kr_front_resp.c, kr_resp_pubsub.c, kr_resp_conncmd.c) may use of the connection layer,
 * and what the connection layer asks of a frontend.
 *
 * A frontend owns only its bytes: it parses requests into the operations of the rule book
 * (kr_cmd_*, below: every publish/subscribe rule is applied there, once, for every
 * protocol) and formats their results, replies and deliveries. It sees a connection only
 * through the functions declared here: struct kr_conn is opaque to it (a frontend file
 * includes this header, never kr_net_int.h), so the compiler keeps it out of the
 * connection's and the net thread's fields.
 *
 * Which protocol a connection speaks is decided by the connection layer (kr_conn.c): by its
 * listener, or on the main port by its first byte ('*' is RESP; memcached requests never
 * start with it).
 *
 * Every function here runs on the connection's net thread, and so does every callback. */
#ifndef KR_FRONTEND_H
#define KR_FRONTEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kr_counters.h"
#include "kr_deliver.h"

struct kr_cfg;
struct kr_conn;
struct kr_msg;
struct kr_server;
struct kr_topicset;

/* ================================================================ the frontend's side */

/* A reply that waited on the router (kr_frontend.reply). */
enum kr_reply_kind {
    KR_REPLY_DONE,      /* subscribe, unsubscribe, publish, register: done */
    KR_REPLY_NOT_FOUND, /* a retroactive subscribe whose history did not reach back */
    KR_REPLY_RECEIVERS, /* a publish that asked for its receivers (kr_cmd_publish, count) */
};

struct kr_reply {
    enum kr_reply_kind kind;
    uint64_t receivers;  /* KR_REPLY_RECEIVERS: connections of this node that received it */
    const char *bytes;   /* what the frontend formatted when the request ran (kr_cmd_sub.reply),
                            or NULL */
    size_t len;
};

/* The last words to a client before the server closes it. */
enum kr_error_kind {
    KR_ERR_QUEUE_OVERFLOW, /* its queue overflowed (its limits, or max_memory) */
    KR_ERR_SHUTTING_DOWN,  /* the drain's deadline came with messages still queued */
    KR_ERR_TOO_MANY,       /* max_tcp_clients, or out of file descriptors (at accept) */
};

/* kr_frontend.request's results besides the bytes used (> 0). */
#define KR_FE_NEED_MORE 0   /* incomplete request: *need = bytes it needs, when known */
#define KR_FE_LATER (-2)    /* a complete request that must wait until the earlier replies
                               are out: nothing consumed, asked again then */
#define KR_FE_FAILED (-1)   /* a protocol error: the frontend queued its error reply with
                               kr_conn_fail; the rest of the input is discarded */

struct kr_frontend {
    const char *name;
    /* Parse the request at the front of buf[0..len) and run it. `pipelined`: replies of
     * earlier requests still wait on the router (the request may run now only if its reply
     * waits in order behind them). Not called once the client's queue overflowed (the
     * connection layer answers with error_line(KR_ERR_QUEUE_OVERFLOW)). Returns the bytes
     * used, KR_FE_NEED_MORE, KR_FE_LATER or KR_FE_FAILED. */
    ssize_t (*request)(struct kr_conn *c, const char *buf, size_t len, bool pipelined,
                       size_t *need);
    /* Append the reply of a request that waited on the router (not called for noreply). */
    void (*reply)(struct kr_conn *c, const struct kr_reply *r);
    /* The exact line sent before closing for `kind`. */
    const char *(*error_line)(enum kr_error_kind kind);
    /* Entries were queued for the client (delivery assembly's callback): a frontend that
     * pushes, or a poll that waits, asks to be answered (kr_conn_answer_later,
     * kr_conn_wake_answer). */
    void (*queued)(struct kr_conn *c);
    /* Answer now, after the loop iteration's deliveries were taken from the shards: the
     * waiting poll, or the pushes. Not called once the queue overflowed or the last words
     * were said (the connection layer answers those). */
    void (*answer)(struct kr_conn *c);
    /* Optional (NULL: every delivery is queued and answered). A complete live delivery of
     * message m (its matched topics in `topics`) for a client with nothing queued: write it
     * into the output now and return true (the frontend then asks to be answered after this
     * loop iteration, which flushes it), or return false to have it queued. Takes no
     * reference. */
    bool (*push)(struct kr_conn *c, struct kr_msg *m, const struct kr_topicset *topics);
    /* Optional (NULL: nothing to do). A write completed: the output has room again (a
     * pushing frontend resumes the deliveries it held back). */
    void (*writable)(struct kr_conn *c);
    /* Optional. The connection is being freed: release the frontend's state. */
    void (*close)(struct kr_conn *c);
    /* Optional. The drain closes the connection after what is in the output: its last
     * words (RESP: the final position of a __kraken__:position subscriber). */
    void (*drained)(struct kr_conn *c);
    /* Optional. About once a second (the net thread's sweep visits each connection once
     * per KR_SWEEP_TICKS ticks), `now` in milliseconds (kr_now_ms). */
    void (*tick)(struct kr_conn *c, uint64_t now_ms);
    /* Optional. The connection has been quiet a while (no request for KR_TRIM_IDLE_MS,
     * nothing half-read, no reply waiting): release scratch memory the next request can
     * make again, so an idle connection stays small. */
    void (*trim)(struct kr_conn *c);
    /* Optional (NULL: none). Bytes the frontend's per-connection state takes. */
    size_t (*mem)(const struct kr_conn *c);
};

/* The memcached text protocol (kr_front_mc.c). */
extern const struct kr_frontend kr_front_mc;
/* The Redis serialization protocol, RESP2/RESP3, with push delivery (kr_front_resp.c). */
extern const struct kr_frontend kr_front_resp;

/* ================================================================ the connection, read only */

uint64_t kr_conn_id(const struct kr_conn *c);
/* Its peer's "ip:port", in a buffer of the calling thread valid until that thread's next
 * call. */
const char *kr_conn_peer(const struct kr_conn *c);
/* Bytes the connection's own state and buffers take on its net thread: the connection,
 * its input, output, reply ring, delivery queue arrays and the frontend's state (not its
 * subscriptions, nor the messages its queue references). */
size_t kr_conn_mem(const struct kr_conn *c);
/* Milliseconds since the connection was accepted. */
uint64_t kr_conn_age_ms(const struct kr_conn *c);
/* The server's configuration (immutable while it runs; live settings are elsewhere). */
const struct kr_cfg *kr_conn_cfg(const struct kr_conn *c);
/* The server (for its public figures and the router's admin reads, kr_net.h). */
struct kr_server *kr_conn_server(const struct kr_conn *c);
/* The frontend's per-connection state (NULL until set), and setting it. */
void *kr_conn_fe_state(const struct kr_conn *c);
void kr_conn_set_fe_state(struct kr_conn *c, void *state);
/* Add n to one of the net thread's counters (kr_counters.h). */
void kr_conn_count(struct kr_conn *c, enum kr_nt_counter k, uint64_t n);

/* ================================================================ output */

/* Room for n more bytes at the end of the output: returns where to write them; then
 * kr_out_commit(c, written) (written <= n). */
char *kr_out_room(struct kr_conn *c, size_t n);
void kr_out_commit(struct kr_conn *c, size_t n);
void kr_out_add(struct kr_conn *c, const void *p, size_t n);
void kr_out_str(struct kr_conn *c, const char *s);
/* Append n bytes of message m's payload p by reference (one message reference held until
 * the bytes are written: a writev sends them from the shared buffer); copied instead once
 * too many are pending. */
void kr_out_ref(struct kr_conn *c, const char *p, uint32_t n, struct kr_msg *m);
/* Payloads of at least this many bytes are written by reference to the shared message (one
 * writev per connection, kr_out_ref) instead of copied into the output; smaller ones are
 * copied, which costs less than the reference count and the iovec (docs/benchmarks.md).
 * Both frontends use it. */
#define KR_OUT_SHARE_MIN 2048u
/* Bytes not yet written to the socket. */
size_t kr_conn_out_pending(const struct kr_conn *c);
/* Output above this waits for the socket before more deliveries are written. */
#define KR_OUT_HIGH (4u << 20)

/* ================================================================ requests and answers */

/* A protocol error: `reply` (with its "\r\n") is the last thing sent, after the replies
 * that wait on the router; the connection is closed. Counted and logged. */
void kr_conn_fail(struct kr_conn *c, const char *reply);
/* The live setting position_interval_ms. */
uint64_t kr_conn_position_interval_ms(const struct kr_conn *c);
/* Close after what is in the output (QUIT). */
void kr_conn_close_after_reply(struct kr_conn *c);
/* The connection's last words were said or are waiting (an error, QUIT): nothing more is
 * written for it. */
bool kr_conn_closing_words(const struct kr_conn *c);
/* Answer (kr_frontend.answer) after this loop iteration, all at once. */
void kr_conn_answer_later(struct kr_conn *c);
/* A poll found nothing: answer it when something is queued (kr_conn_wake_answer) or after
 * poll_wait_ms (0: after this loop iteration). Counts polls_waited. */
void kr_conn_hold_answer(struct kr_conn *c);
/* Something was queued for a held poll: answer it after this loop iteration. */
void kr_conn_wake_answer(struct kr_conn *c);
/* A poll was answered (the figure `since_poll_ms` of the connection lists). */
void kr_conn_polled(struct kr_conn *c);
/* Every reply that was waiting on nothing more goes out now, in order. */
void kr_conn_emit_replies(struct kr_conn *c);
/* Replies still wait on the router. */
bool kr_conn_replies_waiting(const struct kr_conn *c);

/* ================================================================ deliveries */

/* How many entries at the head of the queue are complete and fit in one reply of at most
 * max_poll_reply_bytes (at least one), and in *bytes what they add to a memcached reply. */
uint32_t kr_conn_ready_entries(struct kr_conn *c, uint64_t *bytes);
/* The head entry, and its removal once it was written out. */
struct kr_cq_entry *kr_conn_head(struct kr_conn *c);
void kr_conn_pop(struct kr_conn *c);
/* Entries are queued (complete or not). */
bool kr_conn_has_queued(const struct kr_conn *c);
/* A reply that empties the queue was written (the drain closes the connection after it). */
void kr_conn_drain_replied(struct kr_conn *c);

/* ================================================================ the rule book (kr_cmd.c)
 * The operations every protocol's requests become. Each applies every publish/subscribe
 * rule itself (PROTOCOL.md): a topic is 1..max_topic_bytes bytes with no space, '\r', '\n'
 * or NUL; names beginning with `__kraken__:` are the server's (publishing to one is
 * refused, subscribing to one that is not defined is refused); a payload is at most
 * max_message_bytes; one entry's or one request's topics take at most max_request_bytes;
 * repeated topics count once. A refusal changes nothing and returns one of these codes,
 * which the frontend answers in its protocol (kr_cmd_refusal gives the text naming the
 * configuration key). */

enum kr_cmd_rc {
    KR_CMD_OK = 0,
    KR_CMD_BAD_TOPIC = -1, /* empty, over max_topic_bytes, or a space, '\r', '\n' or NUL */
    KR_CMD_RESERVED = -2,  /* a __kraken__: name this request may not use */
    KR_CMD_TOO_LARGE = -3, /* a payload over max_message_bytes */
    KR_CMD_TOO_MANY = -4,  /* topics of one entry or request over max_request_bytes */
    KR_CMD_BAD_POSITION = -5, /* a resume's token is not a position (bad format or checksum) */
};

/* Namespaces: plain topics (the memcached protocol, RESP SUBSCRIBE/PUBLISH) and RESP shard
 * channels (SSUBSCRIBE/SPUBLISH), which are routed apart as in Redis 7. */
enum kr_ns {
    KR_NS_PLAIN = 0,
    KR_NS_SHARD = 1,
};

/* The reserved prefix, and the one under which shard channels are routed: shard channel
 * `ch` is topic KR_SHARD_PREFIX "ch" in the router (a name no client may use). */
#define KR_RESERVED_PREFIX "__kraken__:"
#define KR_SHARD_PREFIX "__kraken__:shard:"
#define KR_SHARD_PREFIX_LEN 17

/* The refusal's text without the protocol's framing, e.g. "message too large
 * (max_message_bytes 16)"; into buf (returns it). */
const char *kr_cmd_refusal(const struct kr_conn *c, int rc, char *buf, size_t cap);

/* Subscribe-like operations. */
enum kr_sub_op {
    KR_SUB_SUBSCRIBE,
    KR_SUB_UNSUBSCRIBE,
    KR_SUB_RETRO,  /* retroactive from horizon_us */
};

struct kr_cmd_sub {
    enum kr_sub_op op;
    enum kr_ns ns;
    uint64_t horizon_us;        /* KR_SUB_RETRO */
    uint32_t n;                 /* topics (as the client named them; repeats allowed) */
    const char *const *topics;
    const uint32_t *lens;
    bool noreply;
    /* Optional: the reply the frontend formatted (copied), handed back in kr_reply.bytes */
    const char *reply;
    size_t reply_len;
};

/* Whether the topics of a subscribe-like request pass the rules. */
int kr_cmd_sub_check(const struct kr_conn *c, const struct kr_cmd_sub *s);
/* Subscribe, unsubscribe or retroactively subscribe (the first subscribe after
 * kr_cmd_register is retroactive); answered (kr_frontend.reply, DONE or NOT_FOUND, in
 * request order) once every shard, and in a cluster the cluster, holds it. Returns a
 * refusal (nothing done) or KR_CMD_OK. */
int kr_cmd_subscribe(struct kr_conn *c, const struct kr_cmd_sub *s);
/* The next subscribe will be retroactive (after register): it must run alone, not
 * pipelined behind earlier requests. */
bool kr_cmd_subscribe_runs_alone(const struct kr_conn *c);

/* One publish entry. */
struct kr_cmd_entry {
    enum kr_ns ns;
    uint32_t n;
    const char *const *topics;
    const uint32_t *lens;
    const char *payload;
    uint32_t payload_len;
};

/* Whether an entry passes the rules. */
int kr_cmd_entry_check(const struct kr_conn *c, const struct kr_cmd_entry *e);
/* Publish one entry: one message, one event per owning shard (and the cluster link).
 * With KR_PUB_COUNT the entry's own reply waits for the shards and gives the receivers
 * (KR_REPLY_RECEIVERS: this node's connections that received it, summed over the shards
 * involved); otherwise the caller answers with kr_cmd_published after its entries.
 * Returns a refusal (nothing published) or KR_CMD_OK. */
int kr_cmd_publish(struct kr_conn *c, const struct kr_cmd_entry *e, unsigned flags);
#define KR_PUB_COUNT 1u   /* the entry's own reply gives its receivers (RESP PUBLISH) */
#define KR_PUB_CHECKED 2u /* the caller ran kr_cmd_entry_check on this very entry already (a
                             memcached block is checked whole before any entry is published) */
/* The reply of a publish request after its entries: DONE in request order. */
void kr_cmd_published(struct kr_conn *c, bool noreply);
/* Record the horizon "now" for the next subscribe; DONE (reply true: in request order
 * through kr_frontend.reply; false: the frontend answers itself). */
void kr_cmd_register(struct kr_conn *c, bool noreply);
/* Forget a recorded horizon (RESP RESET). */
void kr_cmd_unregister(struct kr_conn *c);
/* Continuity (PROTOCOL.md): positions and resume. */
/* Keep the connection's position from now on (asking for one, or subscribing to
 * __kraken__:position, opts in). */
void kr_cmd_track_position(struct kr_conn *c);
/* The connection's position token into buf (cap >= KR_POS_TOKEN_MAX + 1 of kr_position.h):
 * what it was handed so far, exactly; when no exact position exists at this moment (a push
 * ahead of a part still on its way, a resume in progress) the last one given. Returns its
 * length, or 0 when there is none yet. Opts in. */
size_t kr_cmd_position(struct kr_conn *c, char *buf, size_t cap);
/* The same, but only an exact position of this moment (0 when none). */
size_t kr_cmd_position_now(struct kr_conn *c, char *buf, size_t cap);
/* Resume from a position token on the topics of `s` (subscribed as by kr_cmd_subscribe):
 * every message on them after the token, oldest first, each once, then live; a topic the
 * history cannot replay exactly gets a resync notice instead (all of them for a token of
 * another node or an earlier start), queued before the replayed messages. Answered like a
 * subscribe. Opts the connection in to resync notices and positions. Returns
 * KR_CMD_BAD_POSITION for a malformed token, another refusal, or KR_CMD_OK. */
int kr_cmd_resume(struct kr_conn *c, const char *token, size_t token_len,
                  const struct kr_cmd_sub *s);
/* May a resume run now? At most resume_max_active resumes are in progress on the node
 * (shared by its net threads); past it the request waits (the frontend answers
 * KR_FE_LATER; the connection is processed again when a slot frees, oldest first). */
bool kr_cmd_resume_admit(struct kr_conn *c);
/* A poll that gives a position: how many complete entries its reply hands out (so that an
 * exact position follows them), and in *bytes what they add to a memcached reply. */
uint32_t kr_conn_ready_positioned(struct kr_conn *c, uint64_t *bytes);
/* Scratch room for n topics on this net thread, reused by every request. */
void kr_cmd_args(struct kr_conn *c, uint32_t n, const char ***topics, uint32_t **lens);

#endif
