/* Position tokens: the codec of the opaque token a client carries to resume a stream
 * (PROTOCOL.md, "Continuity"). A position is a vector of per-router-shard sequence numbers
 * of the issuing node plus that node's start id.
 *
 * Token format, version 1:
 *
 *     "p1." base64url( V | NODE | N | SEQ[0] ... SEQ[N-1] | SUM )
 *
 *   V       1 byte, the binary format version (1); it must agree with the "p1." prefix
 *   NODE    8 bytes, the node's start id, little endian (never 0)
 *   N       1 byte, the shard count, 1..KR_POS_MAX_SHARDS
 *   SEQ[i]  N unsigned LEB128 varints (7 bits a byte, low group first, continuation bit
 *           0x80; 1 to 10 bytes, minimal: no trailing zero group)
 *   SUM     4 bytes, little endian: XXH32 (seed 0) of every byte before it
 *
 * base64url is RFC 4648 section 5 (A-Z a-z 0-9 '-' '_') without padding; the unused low
 * bits of the last character must be zero. Every character of a token is printable ASCII
 * (0x21..0x7e), none is a space. Encoding is canonical: a token that decodes re-encodes to
 * the same bytes, so two tokens are equal exactly when their positions are.
 *
 * Size: 3 + ceil(4 * (14 + sum of the varint lengths) / 3) characters. 64 shards with
 * every sequence below 2^35 (5-byte varints): 14 + 320 = 334 bytes, 449 characters, within
 * KR_POS_TOKEN_MAX (512). A position that does not fit (very large sequences on many shards)
 * cannot be encoded; kr_pos_encode says so by returning 0.
 *
 * Pure code: no allocation, no I/O, no globals. Any thread may call any function. */
#ifndef KR_POSITION_H
#define KR_POSITION_H

#include <stddef.h>
#include <stdint.h>

#define KR_POS_MAX_SHARDS 64
#define KR_POS_TOKEN_MAX 512 /* bytes of a token at most */
#define KR_POS_VERSION 1      /* the format version written and the only one read */

struct kr_pos {
    uint64_t node;    /* the issuing node's start id (random per start, never 0) */
    uint32_t nshards; /* 1..KR_POS_MAX_SHARDS */
    /* per router shard: every message of that shard numbered <= seq that concerns the
     * connection was delivered */
    uint64_t seq[KR_POS_MAX_SHARDS];
};

/* Encode p as a token into out (cap bytes; a NUL is written after it when it fits).
 * Returns the token's length, or 0 when it does not fit in cap or in KR_POS_TOKEN_MAX, or
 * when p is not a valid position (node 0, nshards 0 or over KR_POS_MAX_SHARDS). Only
 * seq[0..nshards) is read. Any thread. */
size_t kr_pos_encode(const struct kr_pos *p, char *out, size_t cap);

/* Decode the token tok[0..len) (no terminator needed). Returns 0 with *out filled
 * (seq[nshards..] zeroed), or -EINVAL for a malformed token: length 0 or over
 * KR_POS_TOKEN_MAX, a prefix other than "p1.", a character outside the base64url alphabet,
 * non-zero unused bits, a binary version other than KR_POS_VERSION, node 0, nshards 0 or
 * over KR_POS_MAX_SHARDS, a varint that is truncated, over 64 bits or not minimal, bytes
 * missing or left over, or a checksum that does not match (*out is unspecified then).
 * A well-formed token of another node or start decodes fine: the caller compares
 * out->node. Any thread. */
int kr_pos_decode(const char *tok, size_t len, struct kr_pos *out);

#endif
