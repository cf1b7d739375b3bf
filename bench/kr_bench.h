/* kraken-bench core: the latency histogram, a growable byte buffer, the benchmark payload
 * format and the client side of three wire protocols (Kraken's memcached-text framing,
 * Redis RESP2 pub/sub, the NATS text protocol).
 *
 * Everything here is pure: no I/O, no globals, no threads. Parse results point into the
 * caller's buffer. Any thread may call any function on objects it owns. The only allocation
 * is kr_bench_buf's, which aborts loudly when memory runs out. */
#ifndef KR_BENCH_H
#define KR_BENCH_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ------------------------------------------------------------------------------------------
 * Log-bucketed histogram of non-negative integers (nanoseconds here).
 * Values below 2^SUB_BITS are exact; above, each power of two is split into 2^SUB_BITS
 * linear sub-buckets, so a reported quantile is at most 1/2^SUB_BITS (1.6 %) above the
 * true value. Fixed size, no allocation: one per thread, merged at the end. */
#define KR_BENCH_HIST_SUB_BITS 6
#define KR_BENCH_HIST_BUCKETS ((65 - KR_BENCH_HIST_SUB_BITS) << KR_BENCH_HIST_SUB_BITS)

struct kr_bench_hist {
    uint64_t count;
    uint64_t min, max; /* exact; min is UINT64_MAX while empty */
    double sum;
    uint64_t bucket[KR_BENCH_HIST_BUCKETS];
};

void kr_bench_hist_init(struct kr_bench_hist *h);
void kr_bench_hist_add(struct kr_bench_hist *h, uint64_t v);
/* dst += src. */
void kr_bench_hist_merge(struct kr_bench_hist *dst, const struct kr_bench_hist *src);
/* Smallest bucket upper bound with at least q (0..1) of the values at or below it, clipped
 * to [min, max]; q >= 1 gives the exact max. 0 when empty. */
uint64_t kr_bench_hist_quantile(const struct kr_bench_hist *h, double q);
/* Mean of the values added (0 when empty). */
double kr_bench_hist_mean(const struct kr_bench_hist *h);
/* Bucket of a value, and the inclusive value range of a bucket. */
size_t kr_bench_hist_index(uint64_t v);
uint64_t kr_bench_hist_bucket_low(size_t idx);
uint64_t kr_bench_hist_bucket_high(size_t idx);

/* ------------------------------------------------------------------------------------------
 * Growable byte buffer. Zero-initialise before use. The owner alone touches it. */
struct kr_bench_buf {
    char *p;
    size_t len, cap;
};

/* Make room for `extra` more bytes after len (pointers into p may move). */
void kr_bench_buf_reserve(struct kr_bench_buf *b, size_t extra);
void kr_bench_buf_add(struct kr_bench_buf *b, const void *d, size_t n);
void kr_bench_buf_adds(struct kr_bench_buf *b, const char *s);
void kr_bench_buf_addu(struct kr_bench_buf *b, uint64_t v); /* decimal */
void kr_bench_buf_addf(struct kr_bench_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Append n uninitialised bytes and return a pointer to them (valid until the next call). */
char *kr_bench_buf_grab(struct kr_bench_buf *b, size_t n);
/* Drop the first n bytes, moving the rest to the front. */
void kr_bench_buf_consume(struct kr_bench_buf *b, size_t n);
void kr_bench_buf_free(struct kr_bench_buf *b);

/* Number of decimal digits of v. */
size_t kr_bench_digits(uint64_t v);

/* ------------------------------------------------------------------------------------------
 * Payload: every message starts with a 24-byte stamp (publisher id, topic index, sequence
 * number of that publisher on that topic starting at 1, monotonic send time in ns; native
 * byte order, both ends run on this machine), then padding up to --msg-size whose bytes
 * depend on the sequence number so that corruption and mix-ups are visible. */
#define KR_BENCH_STAMP_BYTES 24

struct kr_bench_stamp {
    uint32_t pub;
    uint32_t topic;
    uint64_t seq;
    uint64_t sent_ns;
};

/* Write a payload of exactly `size` (>= KR_BENCH_STAMP_BYTES) bytes. */
void kr_bench_payload_write(char *dst, size_t size, const struct kr_bench_stamp *s);
/* Read and check one payload: 0, or -EINVAL when too short or the padding is wrong. */
int kr_bench_payload_read(const char *src, size_t size, struct kr_bench_stamp *s);

/* Per-(subscriber, publisher, topic) stream check: sequence numbers must arrive once each,
 * in increasing order. Keeps the highest sequence seen and a 64-wide window below it. */
struct kr_bench_stream {
    uint64_t hi;       /* highest seq seen, 0 = none */
    uint64_t window;   /* bit i set: seq hi-i seen */
    uint64_t received; /* arrivals, duplicates included */
    uint64_t dups;
    uint64_t order;    /* arrivals below hi that were not duplicates (late or reordered) */
};

/* Record one arrival; returns 0 in order, 1 duplicate, 2 out of order. */
int kr_bench_stream_see(struct kr_bench_stream *st, uint64_t seq);

/* ------------------------------------------------------------------------------------------
 * Interest probes: when subscribers and publishers are on different servers (cluster nodes),
 * each subscriber also subscribes to its own probe subject "<prefix>probe.<sub>" and a
 * publisher publishes there until it arrives, so the timed phase starts only once every
 * subscriber's interest is in force where the publishers are. Probe subjects never equal a
 * topic name ("<prefix><decimal>"). */

/* Write the probe subject of subscriber `sub` (NUL-terminated, cut to cap); returns the
 * length it has in full. */
size_t kr_bench_probe_name(char *dst, size_t cap, const char *prefix, uint32_t sub);
/* Is s[0..len) a probe subject under prefix? 1 with *sub set, else 0. */
int kr_bench_probe_parse(const char *s, size_t len, const char *prefix, uint32_t *sub);

/* ------------------------------------------------------------------------------------------
 * Kraken (memcached text framing, see the protocol document). */
enum kr_bench_kr_kind {
    KR_BENCH_KR_STORED = 1,
    KR_BENCH_KR_END,        /* `get messages` with nothing queued */
    KR_BENCH_KR_VALUE,      /* `get messages` with entries (passed to the callback) and/or
                             * a position (`get messages position`) */
    KR_BENCH_KR_NOT_FOUND,
    KR_BENCH_KR_ERROR,      /* ERROR, CLIENT_ERROR ..., SERVER_ERROR ...: the server closes */
    KR_BENCH_KR_OTHER,      /* any other line (VERSION ..., STAT ...) */
};

struct kr_bench_kr_reply {
    enum kr_bench_kr_kind kind;
    const char *line; /* the first line, without "\r\n" */
    size_t line_len;
    size_t nmsgs;     /* VALUE: entries */
    const char *pos;  /* VALUE: the token of a `VALUE position` block, else NULL */
    size_t pos_len;
};

struct kr_bench_kr_msg {
    const char *topics; /* matched topics separated by single spaces (no trailing space) */
    size_t topics_len;
    const char *payload;
    size_t len;
};

/* Called for each entry of a VALUE reply, in order; a non-zero return stops the parse, which
 * then returns that value. */
typedef int (*kr_bench_kr_msg_fn)(void *ud, const struct kr_bench_kr_msg *m);

/* Parse one reply at the front of buf[0..len). A VALUE reply is one or more blocks then END:
 * a block with the key "position" (`get messages position`) sets r->pos, any other key holds
 * entries (at most one block of each). Returns the bytes it used (> 0) when a whole
 * reply is there, 0 when more bytes are needed (then *need, if non-NULL, is the total size
 * when already known from a VALUE line, else 0), -EPROTO on malformed input (a line longer
 * than 64 KiB without "\r\n" included), or the callback's non-zero value. Entries are passed
 * only once the whole reply has arrived. */
ssize_t kr_bench_kr_parse(const char *buf, size_t len, struct kr_bench_kr_reply *r,
                          kr_bench_kr_msg_fn fn, void *ud, size_t *need);

/* `set <verb> 0 0 <n>\r\n<t1> <t2> ...\r\n` for verb "subscribe" or "unsubscribe". */
void kr_bench_kr_put_topics(struct kr_bench_buf *b, const char *verb, const char *const *topics,
                            const size_t *lens, size_t n);
/* Bytes of one publish entry `MESSAGE <topic> <plen>\r\n<payload>\r\n`. */
size_t kr_bench_kr_entry_size(size_t topic_len, size_t plen);
/* `set publish 0 0 <entries_bytes>\r\n`; then add the entries and kr_bench_kr_put_publish_end. */
void kr_bench_kr_put_publish_begin(struct kr_bench_buf *b, size_t entries_bytes);
/* Append an entry header and reserve its payload; returns where to write the payload (valid
 * until the buffer changes again). */
char *kr_bench_kr_put_entry(struct kr_bench_buf *b, const char *topic, size_t topic_len,
                            size_t plen);
void kr_bench_kr_put_publish_end(struct kr_bench_buf *b);

/* ------------------------------------------------------------------------------------------
 * Redis RESP2 (RESP3 push frames '>' are read like arrays). */
#define KR_BENCH_RESP_MAX_ITEMS 8

struct kr_bench_resp_item {
    char type;       /* '+', '-', ':', '$' (bulk), '*' (nested array: num = count) */
    const char *str; /* '+', '-', '$': the bytes (NULL for a null bulk) */
    size_t len;
    int64_t num;     /* ':' value, '$' length (-1 null), '*' count (-1 null) */
};

struct kr_bench_resp {
    char type;      /* type of the top-level value */
    int64_t nitems; /* arrays: element count (-1 null); scalars: 1 */
    /* scalars: item[0]; arrays: the first KR_BENCH_RESP_MAX_ITEMS elements */
    struct kr_bench_resp_item item[KR_BENCH_RESP_MAX_ITEMS];
};

/* Parse one value at the front of buf[0..len): bytes used, 0 when more are needed, -EPROTO
 * when malformed. Nested arrays are checked and skipped (up to 8 levels). */
ssize_t kr_bench_resp_parse(const char *buf, size_t len, struct kr_bench_resp *r);
/* A command as an array of bulk strings. */
void kr_bench_resp_put_command(struct kr_bench_buf *b, size_t argc, const char *const *argv,
                               const size_t *lens);
/* `PUBLISH <channel> <payload>` with the payload reserved; returns where to write it. */
char *kr_bench_resp_put_publish(struct kr_bench_buf *b, const char *channel, size_t clen,
                                size_t plen);

/* ------------------------------------------------------------------------------------------
 * NATS text protocol (server to client side parsed; client commands built). */
enum kr_bench_nats_kind {
    KR_BENCH_NATS_INFO = 1,
    KR_BENCH_NATS_MSG,
    KR_BENCH_NATS_PING,
    KR_BENCH_NATS_PONG,
    KR_BENCH_NATS_OK,
    KR_BENCH_NATS_ERR,
};

struct kr_bench_nats {
    enum kr_bench_nats_kind kind;
    const char *line; /* the control line without "\r\n" */
    size_t line_len;
    const char *subject; /* MSG */
    size_t subject_len;
    uint64_t sid;
    const char *reply_to; /* MSG with a reply subject, else NULL */
    size_t reply_len;
    const char *payload;
    size_t len;
};

/* Parse one server operation at the front of buf[0..len): bytes used, 0 when more are needed,
 * -EPROTO when malformed (a control line over 64 KiB included). Operation names are matched
 * case-insensitively and fields may be separated by spaces or tabs, as the protocol allows. */
ssize_t kr_bench_nats_parse(const char *buf, size_t len, struct kr_bench_nats *m);
/* `PUB <subject> <plen>\r\n<payload>\r\n` with the payload reserved; returns where to write. */
char *kr_bench_nats_put_pub(struct kr_bench_buf *b, const char *subject, size_t slen, size_t plen);
void kr_bench_nats_put_sub(struct kr_bench_buf *b, const char *subject, size_t slen, uint64_t sid);
void kr_bench_nats_put_unsub(struct kr_bench_buf *b, uint64_t sid);

#endif
