/* The protocol frontend interface: what the connection layer (kr_conn.c, kr_loop.c,
 * kr_drain.c, kr_memory.c) asks of a connection's protocol. A frontend owns only its bytes:
 * it parses requests and runs them through the protocol-independent operations of the
 * connection layer (subscribe, publish, poll, ... in kr_front_mc.c today), and formats
 * replies, errors and deliveries. Subscription bookkeeping, the per-client queue,
 * backpressure, retro staging and exactly-once merging are written once, below it
 * (kr_conn.c, kr_deliver.c).
 *
 * Every callback runs on the connection's net thread. Adding a protocol means one more
 * `const struct kr_frontend` and a listener that gives it to its connections. */
#ifndef KR_FRONTEND_H
#define KR_FRONTEND_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct kr_conn;
struct kr_msg;
struct kr_topicset;

/* Replies that wait on the router and go out in request order (kr_rq_emit). */
enum kr_reply_kind {
    KR_REPLY_DONE,      /* subscribe, unsubscribe, publish, register: done */
    KR_REPLY_NOT_FOUND, /* a retroactive subscribe whose history did not reach back */
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
     * waits in order behind them). Returns the bytes used, KR_FE_NEED_MORE, KR_FE_LATER
     * or KR_FE_FAILED. */
    ssize_t (*request)(struct kr_conn *c, const char *buf, size_t len, bool pipelined,
                       size_t *need);
    /* Append the reply of a request that waited on the router (not called for noreply). */
    void (*reply)(struct kr_conn *c, enum kr_reply_kind kind);
    /* The exact line sent before closing for `kind`. */
    const char *(*error_line)(enum kr_error_kind kind);
    /* Entries were queued for the client (delivery assembly's callback): a frontend that
     * pushes, or a poll that waits, asks to be answered after this loop iteration
     * (kr_conn_answer_later). */
    void (*queued)(struct kr_conn *c);
    /* Answer now, after the loop iteration's deliveries were taken from the shards: the
     * waiting poll, or the pushes. The caller then runs kr_conn_process. */
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
    /* Optional. The connection is being freed: release c->fe_state. */
    void (*close)(struct kr_conn *c);
};

/* The memcached text protocol (kr_front_mc.c). */
extern const struct kr_frontend kr_front_mc;
/* The Redis serialization protocol, RESP2/RESP3, with push delivery (kr_front_resp.c). */
extern const struct kr_frontend kr_front_resp;

#endif
