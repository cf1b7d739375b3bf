/* The cluster link's wire formats (internal to the cluster module; pure, unit-tested).
 *
 * Subjects. A topic travels on `<prefix>.t.<topic>` where the topic is escaped into one
 * literal NATS token: bytes 0x21..0x7e other than '.', '*', '>' and '%' stand for
 * themselves, every other byte is '%' and two upper-case hex digits; the empty topic is a
 * lone '%'. Reversible and total: every topic has exactly one subject and back.
 * Control subjects: `<prefix>.ctl.hb` (heartbeats), `<prefix>.ctl.probe` (barrier probes),
 * `<prefix>.ctl.lost` (topics whose forwards were lost), `<prefix>.node.<origin, 16 hex
 * digits>` (a node's own inbox: probe answers).
 *
 * Bodies (integers little-endian):
 *   entry   'E' 1 | origin u64 | seq u64 | ntopics u32 | (len u32, bytes)* | payload
 *           (the payload runs to the end of the body)
 *   control 'H' 1 | origin u64 | name (to the end)          heartbeat
 *           'P' 1 | origin u64 | probe u64                  probe
 *           'A' 1 | origin u64 | probe u64                  answer to a probe (to its origin)
 *           'L' 1 | origin u64 | ntopics u32 | (len u32, bytes)*   lost forwards
 *           'R' 1 | origin u64 | 0 u64                      lost forwards on any topic
 *           'G' 1 | origin u64 | 0 u64                      the node leaves (its drain ended):
 *                                                           not a silent peer
 *   resume  'Q' 1 | origin u64 | tag u64 | nshards u32 | seq u64 * nshards | ntopics u32 |
 *               (len u32, bytes)*                          resume these topics from this
 *                                                          position of the receiver's (to
 *                                                          the receiver's node subject)
 *           'S' 1 | origin u64 | tag u64 | flags u32 | nentries u32 | replayed* |
 *               nmarks u32 | (origin u64, seq u64)* |
 *               nuncovered u32 | (len u32, bytes)*         its answer (to the asker's), in
 *                                                          chunks, flags KR_CL_ANS_LAST on the
 *                                                          last; the highest sequence it had
 *                                                          received per origin when its shards
 *                                                          were asked (the last chunk); the
 *                                                          topics not covered
 *           replayed: origin u64 | oseq u64 | ntopics u32 | (len u32, bytes)* |
 *               payload_len u32 | payload               a message, its resumed topics only
 * Any thread. */
#ifndef KR_CLUSTER_WIRE_H
#define KR_CLUSTER_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KR_CL_VERSION 1

/* Subject of `topic` under `prefix` into out (NUL-terminated); returns its length, or 0
 * when it does not fit in `cap` bytes. */
size_t kr_cl_subject(char *out, size_t cap, const char *prefix, const char *topic, uint32_t len);
/* Bytes kr_cl_subject needs at most for a topic of `len` bytes (with the NUL). */
size_t kr_cl_subject_max(size_t prefix_len, uint32_t len);
/* The topic of a topic subject: decodes into out (at most cap bytes), sets *len; returns 0,
 * or -EINVAL when `subj` is not `<prefix>.t.<escaped topic>`, -E2BIG when out is short. */
int kr_cl_subject_topic(const char *subj, const char *prefix, char *out, size_t cap,
                        uint32_t *len);

/* An entry's header (KR_CL_ENTRY_HEADER bytes); its topic pairs (kr_cl_pair) and the
 * payload follow. */
#define KR_CL_ENTRY_HEADER 22
void kr_cl_entry_header(char *out, uint64_t origin, uint64_t seq, uint32_t ntopics);
/* An entry's encoded size and encoding (out must hold kr_cl_entry_size bytes). */
size_t kr_cl_entry_size(uint32_t ntopics, const uint32_t *lens, uint32_t payload_len);
void kr_cl_entry_encode(char *out, uint64_t origin, uint64_t seq, uint32_t ntopics,
                        const char *const *topics, const uint32_t *lens, const char *payload,
                        uint32_t payload_len);

/* A decoded entry or control body: pointers into the body. */
struct kr_cl_body {
    char kind; /* 'E', 'H', 'P', 'A', 'L', 'R', 'G' */
    uint64_t origin;
    uint64_t seq;      /* E: sequence; P, A: the probe */
    uint32_t ntopics;  /* E, L */
    const char *rest;  /* E, L: the first (len, bytes) pair; H: the name */
    size_t rest_len;   /* E, L: bytes of the pairs; H: of the name */
    const char *payload; /* E */
    uint32_t payload_len;
};
/* Decode and validate a body: 0, or -EINVAL (unknown kind or version, truncated, a count
 * or length running past the end). */
int kr_cl_decode(const char *body, size_t len, struct kr_cl_body *out);
/* Iterate the topics of a decoded E or L body: *pos starts at 0; returns false at the end.
 * Any pair kr_cl_decode validated. */
bool kr_cl_next_topic(const struct kr_cl_body *b, size_t *pos, const char **topic,
                      uint32_t *len);

/* Control bodies: return the encoded size (out must hold it: 17 bytes, plus the name or
 * the topics' pairs). */
size_t kr_cl_ctl_encode(char *out, char kind, uint64_t origin, uint64_t probe);
size_t kr_cl_hb_encode(char *out, size_t cap, uint64_t origin, const char *name);
/* A lost-forwards body: the 14-byte header, then kr_cl_pair for each topic (4 + len bytes
 * each). */
#define KR_CL_LOST_HEADER 14
void kr_cl_lost_header(char *out, uint64_t origin, uint32_t ntopics);
size_t kr_cl_pair(char *out, const char *topic, uint32_t len);

/* ---------------------------------------------------------------- resume between nodes */

#define KR_CL_ASK_HEADER 22 /* 'Q' .. nshards */
#define KR_CL_ANS_HEADER 30 /* 'S' .. nentries */
#define KR_CL_ANS_LAST 1u   /* flags: the answer's last chunk */
#define KR_CL_MAX_SHARDS 64

/* A decoded 'Q' or 'S' body: pointers into it. */
struct kr_cl_resume {
    char kind;           /* 'Q' or 'S' */
    uint64_t origin;     /* the sender */
    uint64_t tag;        /* the asker's tag for the request, echoed by the answer */
    uint32_t nshards;    /* Q: the position's shards and sequences */
    uint64_t seq[KR_CL_MAX_SHARDS];
    uint32_t flags;      /* S */
    uint32_t nentries;   /* S: the replayed messages */
    const char *entries;
    size_t entries_len;
    uint32_t nmarks;     /* S: (origin u64, seq u64) pairs, kr_cl_mark */
    const char *marks;
    uint32_t ntopics;    /* Q: the topics to resume; S: the topics not covered */
    const char *pairs;
    size_t pairs_len;
};
/* One replayed message of an 'S' body. */
struct kr_cl_replayed {
    uint64_t origin, oseq;
    uint32_t ntopics;
    const char *pairs;
    size_t pairs_len;
    const char *payload;
    uint32_t payload_len;
};

/* Bytes a 'Q' body takes, and its encoding (pairs as kr_cl_pair wrote them); returns the
 * bytes written. nshards at most KR_CL_MAX_SHARDS. */
size_t kr_cl_ask_size(uint32_t nshards, size_t pairs_len);
size_t kr_cl_ask_encode(char *out, uint64_t origin, uint64_t tag, uint32_t nshards,
                        const uint64_t *seq, uint32_t ntopics, const char *pairs,
                        size_t pairs_len);
/* An 'S' body is built in pieces: the header (KR_CL_ANS_HEADER bytes), the replayed
 * messages, the marks (kr_cl_ans_marks: 4 + 16 * n bytes), then the uncovered topics' count
 * (4 bytes, kr_cl_ans_trailer) and pairs. */
size_t kr_cl_ans_marks(char *out, uint32_t n, const uint64_t *origins, const uint64_t *seqs);
/* Mark i of a decoded 'S' body (i < nmarks). */
void kr_cl_mark(const struct kr_cl_resume *r, uint32_t i, uint64_t *origin, uint64_t *seq);
void kr_cl_ans_header(char *out, uint64_t origin, uint64_t tag, uint32_t flags,
                      uint32_t nentries);
/* Bytes one replayed message takes (pairs_len: its kr_cl_pair bytes), and its encoding:
 * its header, then the caller writes the pairs, then kr_cl_replayed_payload. */
size_t kr_cl_replayed_size(size_t pairs_len, uint32_t payload_len);
size_t kr_cl_replayed_header(char *out, uint64_t origin, uint64_t oseq, uint32_t ntopics);
size_t kr_cl_replayed_payload(char *out, const char *payload, uint32_t payload_len);
size_t kr_cl_ans_trailer(char *out, uint32_t nuncovered);
/* Decode and validate a 'Q' or 'S' body (every count and length within the body, nshards
 * 1..KR_CL_MAX_SHARDS, every replayed message with at least one topic): 0, or -EINVAL. */
int kr_cl_resume_decode(const char *body, size_t len, struct kr_cl_resume *out);
/* Iterate the replayed messages of a decoded 'S' body: *pos starts at 0; false at the end. */
bool kr_cl_next_replayed(const struct kr_cl_resume *r, size_t *pos, struct kr_cl_replayed *e);
/* Iterate the pairs of a decoded body (Q: topics, S: uncovered) or of a replayed message. */
bool kr_cl_next_pair(const char *pairs, size_t pairs_len, size_t *pos, const char **topic,
                     uint32_t *len);

#endif
