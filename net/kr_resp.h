/* The Redis serialization protocol (RESP2/RESP3): an incremental parser of client requests
 * (multibulk and inline) and the formatters for the replies and pub/sub pushes Kraken sends.
 *
 * Everything here is pure: no allocation, no I/O, no globals. Parse results point into the
 * caller's buffer; formatters write into the caller's buffer. Any thread may call any
 * function (a struct kr_resp_parser belongs to the one thread that parses a connection). */
#ifndef KR_RESP_H
#define KR_RESP_H

#include <stddef.h>
#include <stdint.h>

struct kr_resp_limits {
    uint64_t max_bulk_bytes;   /* largest bulk argument ($<len>): max_request_bytes */
    uint32_t max_args;         /* most arguments in one request (the contract: 1M) */
    uint32_t max_inline_bytes; /* longest inline line, multibulk or bulk count line, not
                                  counting its '\n' (Redis: 64 KiB) */
};

/* One argument: bytes in the caller's buffer (not NUL-terminated). */
struct kr_resp_arg {
    const char *p;
    size_t len;
};

/* A request being parsed. Zero it (kr_resp_parser_init) before the first call on a connection;
 * afterwards the parser keeps it ready for the next request by itself. Between calls that
 * return KR_RESP_NEED_MORE or KR_RESP_ARGV_FULL it remembers how far the request has been
 * checked, so a request arriving in many reads is scanned once, not once per read. */
struct kr_resp_parser {
    /* results */
    size_t argc;         /* OK: arguments in argv (0: an empty request, skip it as Redis
                            does); ARGV_FULL: the number of entries argv must hold */
    /* private resume state */
    const char *base;    /* buf of the previous call (argv entries are rebased if it moved) */
    size_t nargs;        /* multibulk count read (0: header not read yet) */
    size_t done;         /* arguments already stored in argv */
    size_t pos;          /* offset of the next unread count line */
    size_t scan;         /* bytes of the current line already known to hold no terminator */
    /* results, beside argc (bytes, not to make every RESP connection's state larger) */
    uint8_t is_inline;   /* OK: the request was an inline command line */
    uint8_t quoted;      /* OK, inline: some argument holds quotes; pass every argument
                            through kr_resp_unquote before use */
    unsigned char got;   /* KR_RESP_ERR_EXPECTED_DOLLAR: the byte found instead of '$' */
};

/* Return codes. Errors are negative; each has its Redis reply (kr_resp_error_reply). */
enum kr_resp_status {
    KR_RESP_OK = 0,
    KR_RESP_NEED_MORE = 1,
    KR_RESP_ARGV_FULL = 2,               /* more arguments than argv_cap: grow to req->argc,
                                            keep argv[0..) as is, call again */
    KR_RESP_ERR_MBULK_LEN = -1,          /* "invalid multibulk length" */
    KR_RESP_ERR_BULK_LEN = -2,           /* "invalid bulk length" */
    KR_RESP_ERR_EXPECTED_DOLLAR = -3,    /* "expected '$', got 'X'" */
    KR_RESP_ERR_UNBALANCED_QUOTES = -4,  /* "unbalanced quotes in request" */
    KR_RESP_ERR_INLINE_TOO_BIG = -5,     /* "too big inline request" */
    KR_RESP_ERR_MBULK_COUNT_TOO_BIG = -6, /* "too big mbulk count string" */
    KR_RESP_ERR_BULK_COUNT_TOO_BIG = -7, /* "too big bulk count string" */
};

/* Make *req ready for the first request of a connection. Any thread. */
void kr_resp_parser_init(struct kr_resp_parser *req);

/* Parse one request from the front of buf[0..len): a multibulk request when buf[0] is '*',
 * else an inline command line. argv[0..argv_cap) receives the arguments.
 * - KR_RESP_OK: req->argc arguments in argv (0 = empty request: "*0", "*-1", a blank
 *   line); *consumed = bytes the request used. req is ready for the next request.
 * - KR_RESP_NEED_MORE: nothing consumed; *consumed = the buffer length at which the parser
 *   can next make progress when known (the end of the bulk argument being read), else 0.
 *   Call again with the same bytes at the front of buf (the buffer may have moved or
 *   grown), the same req and the same argv contents.
 * - KR_RESP_ARGV_FULL: the request has req->argc arguments, more than argv_cap; nothing
 *   consumed. Grow argv (keeping its entries) to at least req->argc and call again.
 * - error < 0: the request is malformed; *consumed = bytes examined. Reply with
 *   kr_resp_error_reply and close the connection, as Redis does.
 * Like Redis: a count line ends at its first '\r' and the byte after it is not checked,
 * nor are the two bytes after a bulk argument's data; a multibulk count <= 0 is an empty
 * request; counts are Redis integers (no '+', no leading zeros, no spaces).
 * Any thread (the one owning req). */
int kr_resp_parse(const char *buf, size_t len, const struct kr_resp_limits *lim,
                  struct kr_resp_arg *argv, size_t argv_cap, struct kr_resp_parser *req,
                  size_t *consumed);

/* Decode one inline argument (as Redis's sdssplitargs does: "..." with \n \r \t \b \a \xHH
 * and \<any> escapes, '...' with \' only) from raw[0..n) into out, which may be raw itself
 * (the decoded form is never longer). Returns the decoded length. Use only on arguments of
 * an OK inline request (which are valid). Any thread. */
size_t kr_resp_unquote(const char *raw, size_t n, char *out);

/* The exact reply, "-ERR Protocol error: ...\r\n", for an error code (got: req->got) into
 * out[0..cap). Returns its length; writes nothing when it is longer than cap (64 bytes
 * always suffice). Any thread. */
size_t kr_resp_error_reply(int err, unsigned char got, char *out, size_t cap);

/* 1 when arg[0..len) is name (an upper-case literal) ignoring ASCII case. Any thread. */
int kr_resp_cmd_is(const char *arg, size_t len, const char *name);

/* Index in names[0..n) of the command arg[0..len) ignoring ASCII case, or -1. Any thread. */
int kr_resp_cmd_find(const char *arg, size_t len, const char *const *names, size_t n);

/* ------------------------------------------------------------------ formatters
 * Each writes one RESP element (or element header) into out[0..cap) and returns its length
 * in bytes; when that is more than cap nothing is written (call again with a bigger buffer).
 * proto is 2 or 3 (the connection's HELLO version). Any thread. */

/* "+<s>\r\n" (s must hold no '\r' or '\n'). */
size_t kr_resp_fmt_simple(char *out, size_t cap, const char *s, size_t n);
/* "-<s>\r\n", s is the whole message, e.g. "ERR unknown command 'x'" ('\r', '\n' in s are
 * written as spaces, as Redis does). */
size_t kr_resp_fmt_error(char *out, size_t cap, const char *s, size_t n);
/* ":<v>\r\n" */
size_t kr_resp_fmt_int(char *out, size_t cap, int64_t v);
/* "$<n>\r\n<p>\r\n" */
size_t kr_resp_fmt_bulk(char *out, size_t cap, const char *p, size_t n);
/* "$<n>\r\n": the header of a bulk whose n bytes and "\r\n" the caller sends itself. */
size_t kr_resp_fmt_bulk_header(char *out, size_t cap, size_t n);
/* The null bulk: RESP2 "$-1\r\n", RESP3 "_\r\n". */
size_t kr_resp_fmt_null(char *out, size_t cap, int proto);
/* The null array: RESP2 "*-1\r\n", RESP3 "_\r\n". */
size_t kr_resp_fmt_null_array(char *out, size_t cap, int proto);
/* "*<n>\r\n" */
size_t kr_resp_fmt_array(char *out, size_t cap, size_t n);
/* A map of n pairs: RESP3 "%<n>\r\n", RESP2 "*<2n>\r\n" (Redis's fallback). */
size_t kr_resp_fmt_map(char *out, size_t cap, int proto, size_t n);
/* A push of n elements: RESP3 "><n>\r\n", RESP2 "*<n>\r\n". */
size_t kr_resp_fmt_push(char *out, size_t cap, int proto, size_t n);

/* The head of a pub/sub delivery, everything but the payload and its final "\r\n":
 * "*3\r\n$<k>\r\n<kind>\r\n$<chlen>\r\n<ch>\r\n$<payload_len>\r\n" (RESP3: ">3" first),
 * kind "message" or "smessage". The caller then sends the payload (e.g. from the shared
 * message buffer with writev) and "\r\n". */
size_t kr_resp_fmt_message_head(char *out, size_t cap, int proto, const char *kind,
                                const char *ch, size_t chlen, size_t payload_len);

/* A pub/sub confirmation [kind, ch, count] ("subscribe", "unsubscribe", "ssubscribe",
 * "sunsubscribe"), as a push in RESP3; ch NULL writes the null bulk (an UNSUBSCRIBE with no
 * subscription). */
size_t kr_resp_fmt_pubsub_count(char *out, size_t cap, int proto, const char *kind,
                                const char *ch, size_t chlen, int64_t count);

#endif
