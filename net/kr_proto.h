/* The Kraken wire protocol (memcached text framing): a pure, incremental request parser
 * and the parsers for the data blocks of `publish`, `subscribe`, `retro_subscribe` and
 * `resume`.
 *
 * Everything here is pure: no allocation, no I/O, no globals. Results point into the
 * caller's buffer. Any thread may call any function. */
#ifndef KR_PROTO_H
#define KR_PROTO_H

#include <stddef.h>
#include <stdint.h>

struct kr_proto_limits {
    uint64_t max_request_bytes; /* largest <bytes> of a set */
    uint32_t max_line_bytes;    /* longest command line, "\r\n" included */
};

enum kr_req_type {
    KR_REQ_SUBSCRIBE = 1,
    KR_REQ_UNSUBSCRIBE,
    KR_REQ_PUBLISH,
    KR_REQ_REGISTER,
    KR_REQ_RETRO_SUBSCRIBE,
    KR_REQ_GET_MESSAGES,
    KR_REQ_QUIT,
    KR_REQ_VERSION,
    KR_REQ_STATS,
    KR_REQ_GET_MESSAGES_POSITION, /* get messages position (the poll, then the position) */
    KR_REQ_GET_POSITION,          /* get position */
    KR_REQ_RESUME,                /* set resume: data block "<token>\r\n<topics>" */
};

struct kr_request {
    enum kr_req_type type;
    int noreply;      /* set ... noreply */
    const char *data; /* data block of a set (not including its trailing "\r\n") */
    size_t data_len;
};

/* Return codes. Errors are negative; each maps to one exact reply (kr_proto_error_reply). */
enum kr_proto_status {
    KR_PROTO_OK = 0,
    KR_PROTO_NEED_MORE = 1,
    KR_PERR_UNKNOWN = -1,        /* "ERROR": unknown command, get key or set key */
    KR_PERR_BAD_LINE = -2,       /* "CLIENT_ERROR bad command line format" */
    KR_PERR_BAD_CHUNK = -3,      /* "CLIENT_ERROR bad data chunk" */
    KR_PERR_BAD_PUBLISH = -4,    /* "CLIENT_ERROR bad publish block" */
    KR_PERR_BAD_TOPIC = -5,      /* "CLIENT_ERROR bad topic" */
    KR_PERR_LINE_TOO_LONG = -6,  /* "CLIENT_ERROR line too long" */
    KR_PERR_TOO_LARGE = -7,      /* "SERVER_ERROR object too large" */
    KR_PERR_BAD_FORMAT = -8,     /* "CLIENT_ERROR bad data chunk" for a malformed retro or
                                  * resume block */
    KR_PERR_BAD_POSITION = -9,   /* "CLIENT_ERROR bad position": for the caller, when the
                                  * token of a resume block does not decode (kr_position.h);
                                  * never returned by this codec */
};

/* The longest position token a resume block may carry (KR_POS_TOKEN_MAX of kr_position.h,
 * repeated here so the codec depends on nothing). */
#define KR_PROTO_TOKEN_MAX 512

/* Parse one request from the front of buf[0..len). The get keys are `messages`,
 * `messages position` (memcached's multi-get, exactly those two keys in that order) and
 * `position`; any other combination is an unknown get key.
 * - KR_PROTO_OK: *req is filled, *consumed = bytes the request used (line, block and the
 *   block's "\r\n").
 * - KR_PROTO_NEED_MORE: nothing consumed; *consumed = total bytes the request needs when the
 *   command line is complete and names a data block (so the caller can size its buffer),
 *   else 0.
 * - error < 0: *consumed = bytes to discard (the connection is closed after the reply anyway).
 *   An unknown set key is reported only once its data block has arrived (memcached reads it).
 *   `<bytes>` over max_request_bytes is reported as soon as the line is complete. */
int kr_proto_parse(const char *buf, size_t len, const struct kr_proto_limits *lim,
                   struct kr_request *req, size_t *consumed);

/* The exact reply line, "\r\n" included, for an error code. */
const char *kr_proto_error_reply(int err);

/* Topic tokenizer over a space-separated list: skips empty tokens (trailing or doubled
 * spaces). Returns 1 and sets *tok and *toklen for the next topic, 0 at the end. *pos is the
 * cursor (start it at 0). Does not validate. */
int kr_proto_next_topic(const char *s, size_t len, size_t *pos, const char **tok, size_t *toklen);

/* The number of topics in a space-separated list (empty tokens skipped). Topics are not
 * validated here: the rules are the rule book's (kr_cmd_sub_check, kr_cmd_entry_check). */
uint32_t kr_proto_count_topics(const char *s, size_t len);

/* One entry of a publish block. */
struct kr_pub_entry {
    const char *topics; /* the space-separated topics between "MESSAGE " and " <len>" */
    size_t topics_len;
    uint32_t ntopics;   /* non-empty topics in it */
    const char *payload;
    size_t payload_len;
};

/* Called for each entry of a valid publish block, in order. Return 0 to go on, non-zero to
 * stop (that value is returned by kr_proto_parse_publish). */
typedef int (*kr_proto_entry_cb)(void *ctx, const struct kr_pub_entry *entry);

/* Parse a whole publish block. The block is validated completely before `cb` runs at all,
 * so on any error nothing has been handed to it. `check` (optional) is the caller's rules:
 * called for each entry during that validation, as soon as its line is read and before its
 * payload's framing is (e->payload is NULL then, e->payload_len the announced length); a
 * non-zero return stops the parse and is returned. Returns KR_PERR_BAD_PUBLISH for a
 * malformed block, check's or cb's non-zero value, or 0 with *nentries set (cb may be NULL
 * to validate only). An empty block is valid. */
int kr_proto_parse_publish(const char *block, size_t len, kr_proto_entry_cb check,
                           kr_proto_entry_cb cb, void *ctx, size_t *nentries);

/* Parse a retro_subscribe block "<horizon>\r\n<topics>": horizon in Unix seconds, integer or
 * with a decimal fraction (kept to the microsecond). Returns 0 with *horizon_us set and the
 * topics span (not validated), or KR_PERR_BAD_FORMAT for a malformed horizon. */
int kr_proto_parse_retro(const char *block, size_t len, uint64_t *horizon_us,
                         const char **topics, size_t *topics_len);

/* Split a resume block "<token>\r\n<topics>" at its first "\r\n". Returns 0 with the token
 * span (1..KR_PROTO_TOKEN_MAX bytes, each 0x21..0x7e) and the topics span (everything after
 * the "\r\n", possibly empty; not validated: the topics are the rule book's), or
 * KR_PERR_BAD_FORMAT when there is no "\r\n", the token line is empty or longer than
 * KR_PROTO_TOKEN_MAX, or it has a byte outside 0x21..0x7e. Whether the token is a valid
 * position is checked elsewhere (kr_pos_decode). Looks at no more than the first
 * KR_PROTO_TOKEN_MAX + 2 bytes to find the split. */
int kr_proto_parse_resume(const char *block, size_t len, const char **token, size_t *token_len,
                          const char **topics, size_t *topics_len);

#endif
