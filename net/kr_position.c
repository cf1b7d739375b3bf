/* Position tokens: see kr_position.h for the format.
 *
 * Pure code: no allocation, no I/O, no globals (the tables below are constant). The decoder
 * is strict so that decoding is the exact inverse of encoding: every rule that would let two
 * different strings stand for one position (base64 unused bits, non-minimal varints) is a
 * refusal, and the checksum catches the rest of accidental damage. */
#include "kr_position.h"

#include <errno.h>
#include <string.h>
#include <xxhash.h>

#define KR_POS_PREFIX "p1."
#define KR_POS_PREFIX_LEN (sizeof(KR_POS_PREFIX) - 1)
/* version + node + shard count + checksum */
#define KR_POS_FIXED (1 + 8 + 1 + 4)
/* the largest binary form: every sequence a 10-byte varint */
#define KR_POS_BIN_MAX (KR_POS_FIXED + KR_POS_MAX_SHARDS * 10)
/* the largest binary form a token of KR_POS_TOKEN_MAX characters can carry */
#define KR_POS_BIN_TOKEN_MAX (((KR_POS_TOKEN_MAX - KR_POS_PREFIX_LEN) * 6) / 8)

static const char kr_pos_b64[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* The 6-bit value of a base64url character, or -1. */
static int kr_pos_b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

static size_t kr_pos_b64_len(size_t n)
{
    return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
}

static void kr_pos_put_le(uint8_t *b, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t kr_pos_get_le(const uint8_t *b, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)b[i] << (8 * i);
    return v;
}

size_t kr_pos_encode(const struct kr_pos *p, char *out, size_t cap)
{
    uint8_t bin[KR_POS_BIN_MAX];
    size_t n = 0;

    if (p->node == 0 || p->nshards == 0 || p->nshards > KR_POS_MAX_SHARDS)
        return 0;
    bin[n++] = KR_POS_VERSION;
    kr_pos_put_le(bin + n, p->node, 8);
    n += 8;
    bin[n++] = (uint8_t)p->nshards;
    for (uint32_t s = 0; s < p->nshards; s++) {
        uint64_t v = p->seq[s];
        while (v >= 0x80) {
            bin[n++] = (uint8_t)(v | 0x80);
            v >>= 7;
        }
        bin[n++] = (uint8_t)v;
    }
    kr_pos_put_le(bin + n, XXH32(bin, n, 0), 4);
    n += 4;

    size_t tlen = KR_POS_PREFIX_LEN + kr_pos_b64_len(n);
    if (tlen > KR_POS_TOKEN_MAX || tlen > cap)
        return 0;
    memcpy(out, KR_POS_PREFIX, KR_POS_PREFIX_LEN);
    char *o = out + KR_POS_PREFIX_LEN;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t w = (uint32_t)bin[i] << 16 | (uint32_t)bin[i + 1] << 8 | bin[i + 2];
        *o++ = kr_pos_b64[w >> 18];
        *o++ = kr_pos_b64[(w >> 12) & 63];
        *o++ = kr_pos_b64[(w >> 6) & 63];
        *o++ = kr_pos_b64[w & 63];
    }
    if (n - i == 1) {
        uint32_t w = (uint32_t)bin[i] << 16;
        *o++ = kr_pos_b64[w >> 18];
        *o++ = kr_pos_b64[(w >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t w = (uint32_t)bin[i] << 16 | (uint32_t)bin[i + 1] << 8;
        *o++ = kr_pos_b64[w >> 18];
        *o++ = kr_pos_b64[(w >> 12) & 63];
        *o++ = kr_pos_b64[(w >> 6) & 63];
    }
    if (tlen < cap)
        out[tlen] = '\0';
    return tlen;
}

/* base64url (no padding) of s[0..m) into bin; returns the byte count, or -1 when a
 * character is outside the alphabet, the length is impossible (m % 4 == 1) or the unused
 * bits of the last character are not zero. bin has room for m * 3 / 4 bytes. */
static long kr_pos_b64_decode(const char *s, size_t m, uint8_t *bin)
{
    if (m % 4 == 1)
        return -1;
    size_t n = 0, i = 0;
    uint32_t w = 0;
    for (; i < m; i++) {
        int v = kr_pos_b64_val((unsigned char)s[i]);
        if (v < 0)
            return -1;
        w = w << 6 | (uint32_t)v;
        if (i % 4 == 3) {
            bin[n++] = (uint8_t)(w >> 16);
            bin[n++] = (uint8_t)(w >> 8);
            bin[n++] = (uint8_t)w;
            w = 0;
        }
    }
    switch (m % 4) {
    case 2: /* 12 bits: one byte, 4 unused */
        if (w & 0xf)
            return -1;
        bin[n++] = (uint8_t)(w >> 4);
        break;
    case 3: /* 18 bits: two bytes, 2 unused */
        if (w & 0x3)
            return -1;
        bin[n++] = (uint8_t)(w >> 10);
        bin[n++] = (uint8_t)(w >> 2);
        break;
    default:
        break;
    }
    return (long)n;
}

int kr_pos_decode(const char *tok, size_t len, struct kr_pos *out)
{
    uint8_t bin[KR_POS_BIN_TOKEN_MAX + 3];

    if (len <= KR_POS_PREFIX_LEN || len > KR_POS_TOKEN_MAX ||
        memcmp(tok, KR_POS_PREFIX, KR_POS_PREFIX_LEN) != 0)
        return -EINVAL;
    long bl = kr_pos_b64_decode(tok + KR_POS_PREFIX_LEN, len - KR_POS_PREFIX_LEN, bin);
    if (bl < (long)KR_POS_FIXED)
        return -EINVAL;
    size_t n = (size_t)bl - 4;
    if ((uint32_t)kr_pos_get_le(bin + n, 4) != XXH32(bin, n, 0))
        return -EINVAL;
    if (bin[0] != KR_POS_VERSION)
        return -EINVAL;
    uint64_t node = kr_pos_get_le(bin + 1, 8);
    uint32_t nshards = bin[9];
    if (node == 0 || nshards == 0 || nshards > KR_POS_MAX_SHARDS)
        return -EINVAL;

    memset(out, 0, sizeof(*out));
    out->node = node;
    out->nshards = nshards;
    size_t i = 10;
    for (uint32_t s = 0; s < nshards; s++) {
        uint64_t v = 0;
        for (unsigned shift = 0;; shift += 7) {
            if (i >= n)
                return -EINVAL; /* truncated */
            uint8_t b = bin[i++];
            if (shift == 63 && b > 1)
                return -EINVAL; /* over 64 bits */
            v |= (uint64_t)(b & 0x7f) << shift;
            if (!(b & 0x80)) {
                if (b == 0 && shift > 0)
                    return -EINVAL; /* not minimal */
                break;
            }
        }
        out->seq[s] = v;
    }
    if (i != n)
        return -EINVAL; /* trailing bytes */
    return 0;
}
