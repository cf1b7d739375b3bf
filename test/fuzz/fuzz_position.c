/* libFuzzer target for the position token codec.
 *
 * - The input, as a token (in an exactly-sized heap copy, so the address sanitizer sees
 *   any read past it), must decode or be refused without a crash; whatever decodes is a
 *   valid position and re-encodes to exactly the input's bytes (the format is canonical).
 * - The input, read as a structured position (node, shard count, sequences of input-chosen
 *   widths), must encode to a token of printable characters within KR_POS_TOKEN_MAX (or be
 *   refused as too large only when it cannot fit), decode back to the same position, never
 *   write past a smaller output buffer, and be refused after any one-character change or
 *   truncation.
 * Any inconsistency aborts. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_fuzz.h"
#include "kr_position.h"

static int kr_fuzz_same_pos(const struct kr_pos *a, const struct kr_pos *b)
{
    if (a->node != b->node || a->nshards != b->nshards)
        return 0;
    for (uint32_t i = 0; i < a->nshards; i++)
        if (a->seq[i] != b->seq[i])
            return 0;
    return 1;
}

static int kr_fuzz_decode(const char *s, size_t n, struct kr_pos *out)
{
    char *b = malloc(n ? n : 1);
    KR_FUZZ_CHECK(b != NULL);
    memcpy(b, s, n);
    int rc = kr_pos_decode(b, n, out);
    free(b);
    return rc;
}

/* The input as a token. */
static void kr_fuzz_as_token(const char *s, size_t n)
{
    struct kr_pos p;
    int rc = kr_fuzz_decode(s, n, &p);
    KR_FUZZ_CHECK(rc == 0 || rc == -EINVAL);
    if (rc != 0)
        return;
    KR_FUZZ_CHECK(n <= KR_POS_TOKEN_MAX);
    KR_FUZZ_CHECK(p.node != 0 && p.nshards >= 1 && p.nshards <= KR_POS_MAX_SHARDS);
    for (uint32_t i = p.nshards; i < KR_POS_MAX_SHARDS; i++)
        KR_FUZZ_CHECK(p.seq[i] == 0);
    char out[KR_POS_TOKEN_MAX + 1];
    size_t len = kr_pos_encode(&p, out, sizeof(out));
    KR_FUZZ_CHECK(len == n && memcmp(out, s, n) == 0);
}

/* Little-endian value of up to 8 input bytes at *at (missing bytes are zero). */
static uint64_t kr_fuzz_take(const uint8_t *d, size_t n, size_t *at, size_t bytes)
{
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; i++, (*at)++)
        if (*at < n)
            v |= (uint64_t)d[*at] << (8 * i);
    return v;
}

/* The input as a position. */
static void kr_fuzz_as_position(const uint8_t *d, size_t n)
{
    size_t at = 0;
    struct kr_pos p;
    memset(&p, 0, sizeof(p));
    p.node = kr_fuzz_take(d, n, &at, 8);
    if (p.node == 0)
        p.node = 1;
    p.nshards = 1 + (uint32_t)(kr_fuzz_take(d, n, &at, 1) % KR_POS_MAX_SHARDS);
    size_t varint_bytes = 0;
    for (uint32_t i = 0; i < p.nshards; i++) {
        unsigned bits = (unsigned)(kr_fuzz_take(d, n, &at, 1) % 65);
        uint64_t v = kr_fuzz_take(d, n, &at, (bits + 7) / 8);
        p.seq[i] = bits == 64 ? v : v & ((1ULL << bits) - 1);
        unsigned used = 1;
        for (uint64_t x = p.seq[i]; x >= 0x80; x >>= 7)
            used++;
        varint_bytes += used;
    }
    size_t want = 3 + ((14 + varint_bytes) * 4 + 2) / 3; /* base64 without padding */

    char tok[KR_POS_TOKEN_MAX + 1];
    size_t len = kr_pos_encode(&p, tok, sizeof(tok));
    if (want > KR_POS_TOKEN_MAX) {
        KR_FUZZ_CHECK(len == 0);
        return;
    }
    KR_FUZZ_CHECK(len == want && tok[len] == '\0');
    for (size_t i = 0; i < len; i++)
        KR_FUZZ_CHECK(tok[i] >= 0x21 && tok[i] <= 0x7e);
    struct kr_pos q;
    KR_FUZZ_CHECK(kr_fuzz_decode(tok, len, &q) == 0 && kr_fuzz_same_pos(&p, &q));

    /* a smaller buffer: refused with nothing written past it; the exact size: no NUL */
    size_t cap = (size_t)kr_fuzz_take(d, n, &at, 2) % (len + 1);
    char *small = malloc(cap ? cap : 1);
    KR_FUZZ_CHECK(small != NULL);
    size_t got = kr_pos_encode(&p, small, cap);
    if (cap < len)
        KR_FUZZ_CHECK(got == 0);
    else
        KR_FUZZ_CHECK(got == len && memcmp(small, tok, len) == 0);
    free(small);

    /* one character changed anywhere, or the token cut short: refused */
    size_t where = (size_t)kr_fuzz_take(d, n, &at, 2) % len;
    char c = (char)kr_fuzz_take(d, n, &at, 1);
    if (c != tok[where]) {
        char bad[KR_POS_TOKEN_MAX + 1];
        memcpy(bad, tok, len);
        bad[where] = c;
        KR_FUZZ_CHECK(kr_fuzz_decode(bad, len, &q) == -EINVAL);
    }
    KR_FUZZ_CHECK(kr_fuzz_decode(tok, where, &q) == -EINVAL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kr_fuzz_as_token((const char *)data, size);
    kr_fuzz_as_position(data, size);
    return 0;
}
