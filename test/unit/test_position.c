/* Unit tests of the position token codec: round trips, the size bound, and refusal of
 * every damaged token (each single-character change, each truncation, foreign characters,
 * other versions) and of every well-checksummed token that breaks a rule of the format.
 *
 * Every decode runs over an exactly-sized heap copy, so the address sanitizer catches a
 * read past the token. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kr_position.h"
#include "kr_proto.h" /* the memcached codec bounds a resume block's token by the same figure */

_Static_assert(KR_PROTO_TOKEN_MAX == KR_POS_TOKEN_MAX, "resume block token bound");

static int decode_copy(const char *tok, size_t len, struct kr_pos *out)
{
    char *b = malloc(len ? len : 1);
    cr_assert_not_null(b);
    memcpy(b, tok, len);
    int rc = kr_pos_decode(b, len, out);
    free(b);
    return rc;
}

/* xorshift64*: reproducible vectors */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dULL;
}

static void assert_same_pos(const struct kr_pos *a, const struct kr_pos *b)
{
    cr_assert_eq(a->node, b->node);
    cr_assert_eq(a->nshards, b->nshards);
    for (uint32_t i = 0; i < a->nshards; i++)
        cr_assert_eq(a->seq[i], b->seq[i], "shard %u", i);
}

/* Encode, check the characters, decode, compare; returns the token length. */
static size_t round_trip(const struct kr_pos *p, char *tok)
{
    size_t n = kr_pos_encode(p, tok, KR_POS_TOKEN_MAX + 1);
    cr_assert_gt(n, 0);
    cr_assert_leq(n, KR_POS_TOKEN_MAX);
    cr_assert_eq(tok[n], '\0');
    cr_assert_eq(strlen(tok), n);
    for (size_t i = 0; i < n; i++)
        cr_assert(tok[i] >= 0x21 && tok[i] <= 0x7e, "byte %zu is 0x%02x", i,
                  (unsigned char)tok[i]);
    struct kr_pos q;
    memset(&q, 0xa5, sizeof(q));
    cr_assert_eq(decode_copy(tok, n, &q), 0, "%s", tok);
    assert_same_pos(p, &q);
    for (uint32_t i = q.nshards; i < KR_POS_MAX_SHARDS; i++)
        cr_assert_eq(q.seq[i], 0);
    /* canonical: the decoded position encodes to the same bytes */
    char again[KR_POS_TOKEN_MAX + 1];
    cr_assert_eq(kr_pos_encode(&q, again, sizeof(again)), n);
    cr_assert(memcmp(again, tok, n) == 0);
    return n;
}

Test(position, round_trip_extremes)
{
    static const uint64_t vals[] = {0, 1, 127, 128, 16383, 16384, (1ULL << 35) - 1,
                                    1ULL << 35, (1ULL << 63) - 1, 1ULL << 63, UINT64_MAX};
    static const uint64_t nodes[] = {1, 0x8000000000000000ULL, UINT64_MAX, 0x0123456789abcdefULL};
    static const uint32_t counts[] = {1, 2, 3, 7, 63, 64};
    char tok[KR_POS_TOKEN_MAX + 1];
    for (size_t ni = 0; ni < sizeof(nodes) / sizeof(nodes[0]); ni++)
        for (size_t ci = 0; ci < sizeof(counts) / sizeof(counts[0]); ci++)
            for (size_t vi = 0; vi < sizeof(vals) / sizeof(vals[0]); vi++) {
                struct kr_pos p = {.node = nodes[ni], .nshards = counts[ci]};
                for (uint32_t s = 0; s < p.nshards; s++)
                    p.seq[s] = vals[(vi + s) % (sizeof(vals) / sizeof(vals[0]))];
                struct kr_pos all = p;
                for (uint32_t s = 0; s < p.nshards; s++)
                    all.seq[s] = vals[vi];
                /* 64 ten-byte varints do not fit in a token: only check what fits */
                char t2[KR_POS_TOKEN_MAX + 1];
                if (kr_pos_encode(&p, t2, sizeof(t2)))
                    round_trip(&p, tok);
                if (kr_pos_encode(&all, t2, sizeof(t2)))
                    round_trip(&all, tok);
            }
    /* the single-shard extremes always fit */
    struct kr_pos p = {.node = UINT64_MAX, .nshards = 1, .seq = {UINT64_MAX}};
    round_trip(&p, tok);
    p.seq[0] = 0;
    round_trip(&p, tok);
}

Test(position, round_trip_random_vectors)
{
    uint64_t s = 0x1234567887654321ULL;
    char tok[KR_POS_TOKEN_MAX + 1];
    size_t done = 0;
    for (int i = 0; i < 20000; i++) {
        struct kr_pos p = {.node = rnd(&s) | 1, .nshards = 1 + (uint32_t)(rnd(&s) % 64)};
        unsigned bits = (unsigned)(rnd(&s) % 65); /* sequences of up to `bits` bits */
        for (uint32_t k = 0; k < p.nshards; k++)
            p.seq[k] = bits == 0 ? 0 : bits == 64 ? rnd(&s) : rnd(&s) & ((1ULL << bits) - 1);
        char t2[KR_POS_TOKEN_MAX + 1];
        if (!kr_pos_encode(&p, t2, sizeof(t2))) {
            cr_assert_gt(bits, 35, "a position of %u-bit sequences must fit", bits);
            continue;
        }
        round_trip(&p, tok);
        done++;
    }
    cr_assert_gt(done, 10000);
}

Test(position, size_bound_64_shards_below_2_pow_35)
{
    struct kr_pos p = {.node = UINT64_MAX, .nshards = 64};
    for (int i = 0; i < 64; i++)
        p.seq[i] = (1ULL << 35) - 1;
    char tok[KR_POS_TOKEN_MAX + 1];
    size_t n = round_trip(&p, tok);
    printf("64 shards of 2^35-1: %zu bytes\n", n);
    cr_assert_leq(n, KR_POS_TOKEN_MAX);
    cr_assert_eq(n, 449); /* 14 + 320 = 334 bytes: 111 * 4 + 2 = 446 characters, and "p1." */

    /* one shard more than 5 bytes still fits; all of them at 64 bits do not */
    for (int i = 0; i < 64; i++)
        p.seq[i] = UINT64_MAX;
    cr_assert_eq(kr_pos_encode(&p, tok, sizeof(tok)), 0);
}

Test(position, encode_respects_cap)
{
    struct kr_pos p = {.node = 42, .nshards = 4, .seq = {1, 2, 3, 4}};
    char tok[KR_POS_TOKEN_MAX + 1];
    size_t n = kr_pos_encode(&p, tok, sizeof(tok));
    cr_assert_gt(n, 0);
    char small[KR_POS_TOKEN_MAX + 1];
    memset(small, 'Z', sizeof(small));
    cr_assert_eq(kr_pos_encode(&p, small, n - 1), 0);
    cr_assert_eq(small[0], 'Z'); /* nothing written */
    /* exactly the length: no terminator */
    cr_assert_eq(kr_pos_encode(&p, small, n), n);
    cr_assert(memcmp(small, tok, n) == 0);
    cr_assert_eq(small[n], 'Z');
    cr_assert_eq(kr_pos_encode(&p, small, n + 1), n);
    cr_assert_eq(small[n], '\0');
    cr_assert_eq(kr_pos_encode(&p, small, 0), 0);
}

Test(position, encode_refuses_invalid_positions)
{
    char tok[KR_POS_TOKEN_MAX + 1];
    struct kr_pos p = {.node = 0, .nshards = 1};
    cr_assert_eq(kr_pos_encode(&p, tok, sizeof(tok)), 0);
    p.node = 7;
    p.nshards = 0;
    cr_assert_eq(kr_pos_encode(&p, tok, sizeof(tok)), 0);
    p.nshards = KR_POS_MAX_SHARDS + 1;
    cr_assert_eq(kr_pos_encode(&p, tok, sizeof(tok)), 0);
    p.nshards = KR_POS_MAX_SHARDS;
    cr_assert_gt(kr_pos_encode(&p, tok, sizeof(tok)), 0);
}

Test(position, another_node_decodes_fine)
{
    struct kr_pos a = {.node = 1111, .nshards = 2, .seq = {5, 6}};
    struct kr_pos b = {.node = 2222, .nshards = 8, .seq = {5, 6}};
    char ta[KR_POS_TOKEN_MAX + 1], tb[KR_POS_TOKEN_MAX + 1];
    round_trip(&a, ta);
    round_trip(&b, tb);
    cr_assert_str_neq(ta, tb);
}

/* The tokens the damage tests start from. */
static size_t sample_tokens(char toks[][KR_POS_TOKEN_MAX + 1], size_t *lens)
{
    struct kr_pos ps[4] = {
        {.node = 1, .nshards = 1, .seq = {0}},
        {.node = 0xfeedfacecafebeefULL, .nshards = 3, .seq = {1, 300, UINT64_MAX}},
        {.node = 77, .nshards = 5, .seq = {10, 20, 30, 40, 50}},
        {.node = UINT64_MAX, .nshards = 64},
    };
    for (int i = 0; i < 64; i++)
        ps[3].seq[i] = (uint64_t)i * 123456789ULL;
    for (size_t i = 0; i < 4; i++)
        lens[i] = round_trip(&ps[i], toks[i]);
    return 4;
}

Test(position, every_single_byte_corruption_is_refused)
{
    char toks[4][KR_POS_TOKEN_MAX + 1];
    size_t lens[4];
    size_t nt = sample_tokens(toks, lens);
    struct kr_pos q;
    size_t tried = 0;
    for (size_t t = 0; t < nt; t++) {
        char buf[KR_POS_TOKEN_MAX + 1];
        for (size_t i = 0; i < lens[t]; i++) {
            for (int c = 0; c < 256; c++) {
                if ((char)c == toks[t][i])
                    continue;
                memcpy(buf, toks[t], lens[t]);
                buf[i] = (char)c;
                cr_assert_eq(decode_copy(buf, lens[t], &q), -EINVAL,
                             "token %zu byte %zu -> 0x%02x accepted", t, i, c);
                tried++;
            }
        }
    }
    printf("%zu single-byte corruptions refused\n", tried);
}

Test(position, every_truncation_and_extension_is_refused)
{
    char toks[4][KR_POS_TOKEN_MAX + 1];
    size_t lens[4];
    size_t nt = sample_tokens(toks, lens);
    struct kr_pos q;
    for (size_t t = 0; t < nt; t++) {
        for (size_t k = 0; k < lens[t]; k++)
            cr_assert_eq(decode_copy(toks[t], k, &q), -EINVAL, "token %zu cut at %zu", t, k);
        /* a character more, of any kind, or padding */
        char buf[KR_POS_TOKEN_MAX + 4];
        memcpy(buf, toks[t], lens[t]);
        static const char extra[] = "AQgw-_=.";
        for (size_t e = 0; e < sizeof(extra) - 1; e++) {
            buf[lens[t]] = extra[e];
            cr_assert_eq(decode_copy(buf, lens[t] + 1, &q), -EINVAL);
        }
        memcpy(buf + lens[t], "==", 2);
        cr_assert_eq(decode_copy(buf, lens[t] + 2, &q), -EINVAL);
        /* the whole token twice */
        char twice[2 * (KR_POS_TOKEN_MAX + 1)];
        memcpy(twice, toks[t], lens[t]);
        memcpy(twice + lens[t], toks[t], lens[t]);
        cr_assert_eq(decode_copy(twice, 2 * lens[t], &q), -EINVAL);
    }
}

Test(position, characters_outside_the_alphabet_are_refused)
{
    char toks[4][KR_POS_TOKEN_MAX + 1];
    size_t lens[4];
    sample_tokens(toks, lens);
    struct kr_pos q;
    /* standard base64's '+' '/' '=', spaces, controls, high bytes: anywhere in the body */
    static const char bad[] = "+/= \t\r\n.\x7f\x80\xff";
    char buf[KR_POS_TOKEN_MAX + 1];
    for (size_t i = 3; i < lens[2]; i++)
        for (size_t b = 0; b < sizeof(bad); b++) { /* NUL included */
            memcpy(buf, toks[2], lens[2]);
            buf[i] = bad[b];
            cr_assert_eq(decode_copy(buf, lens[2], &q), -EINVAL);
        }
    cr_assert_eq(decode_copy("", 0, &q), -EINVAL);
    cr_assert_eq(decode_copy("p1.", 3, &q), -EINVAL);
    cr_assert_eq(decode_copy("garbage", 7, &q), -EINVAL);
}

Test(position, version_mismatch_is_refused)
{
    char toks[4][KR_POS_TOKEN_MAX + 1];
    size_t lens[4];
    sample_tokens(toks, lens);
    struct kr_pos q;
    static const char *const prefixes[] = {"p0.", "p2.", "P1.", "q1.", "p1-", "p1_"};
    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
        char buf[KR_POS_TOKEN_MAX + 1];
        memcpy(buf, toks[1], lens[1]);
        memcpy(buf, prefixes[i], 3);
        cr_assert_eq(decode_copy(buf, lens[1], &q), -EINVAL, "%s", prefixes[i]);
    }
    /* a longer token than the maximum is refused before anything else */
    char big[KR_POS_TOKEN_MAX + 2];
    memset(big, 'A', sizeof(big));
    memcpy(big, "p1.", 3);
    cr_assert_eq(decode_copy(big, sizeof(big), &q), -EINVAL);
}

/* ------------------------------------------------------------------ crafted tokens */

/* A token of the binary form bin[0..n) (the checksum appended when sum is set), built
 * independently of the codec. */
static size_t craft(const uint8_t *bin, size_t n, int sum, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t b[1024];
    memcpy(b, bin, n);
    if (sum) {
        uint32_t h = XXH32(b, n, 0);
        for (int i = 0; i < 4; i++)
            b[n++] = (uint8_t)(h >> (8 * i));
    }
    size_t o = 0;
    memcpy(out, "p1.", 3);
    o = 3;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t w = (uint32_t)b[i] << 16 | (i + 1 < n ? (uint32_t)b[i + 1] << 8 : 0) |
                     (i + 2 < n ? b[i + 2] : 0);
        size_t chars = n - i >= 3 ? 4 : n - i + 1;
        for (size_t c = 0; c < chars; c++)
            out[o++] = a[(w >> (18 - 6 * c)) & 63];
    }
    out[o] = '\0';
    return o;
}

/* version, node (LE), nshards */
static size_t header(uint8_t *b, uint8_t version, uint64_t node, uint8_t nshards)
{
    b[0] = version;
    for (int i = 0; i < 8; i++)
        b[1 + i] = (uint8_t)(node >> (8 * i));
    b[9] = nshards;
    return 10;
}

Test(position, crafted_valid_token_matches_the_codec)
{
    uint8_t b[64];
    size_t n = header(b, 1, 0x0102030405060708ULL, 2);
    b[n++] = 0x05;             /* 5 */
    b[n++] = 0xac, b[n++] = 0x02; /* 300 */
    char tok[1100];
    size_t tl = craft(b, n, 1, tok);
    struct kr_pos q;
    cr_assert_eq(decode_copy(tok, tl, &q), 0);
    cr_assert_eq(q.node, 0x0102030405060708ULL);
    cr_assert_eq(q.nshards, 2);
    cr_assert_eq(q.seq[0], 5);
    cr_assert_eq(q.seq[1], 300);
    char enc[KR_POS_TOKEN_MAX + 1];
    cr_assert_eq(kr_pos_encode(&q, enc, sizeof(enc)), tl);
    cr_assert_str_eq(enc, tok);
}

Test(position, checksummed_tokens_breaking_a_rule_are_refused)
{
    struct kr_pos q;
    char tok[1100];
    uint8_t b[1024];
    size_t n;

    /* binary version 2 under the "p1." prefix */
    n = header(b, 2, 9, 1);
    b[n++] = 1;
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), -EINVAL);
    n = header(b, 0, 9, 1);
    b[n++] = 1;
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), -EINVAL);
    /* node 0 */
    n = header(b, 1, 0, 1);
    b[n++] = 1;
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), -EINVAL);
    /* nshards 0, and 65 with 65 sequences */
    n = header(b, 1, 9, 0);
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), -EINVAL);
    n = header(b, 1, 9, 65);
    for (int i = 0; i < 65; i++)
        b[n++] = 1;
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), -EINVAL);
    /* fewer sequences than shards (truncated varint list), a varint cut in the middle */
    n = header(b, 1, 9, 3);
    b[n++] = 1;
    b[n++] = 2;
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), -EINVAL);
    n = header(b, 1, 9, 1);
    b[n++] = 0x80;
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), -EINVAL);
    /* trailing bytes after the last sequence */
    n = header(b, 1, 9, 1);
    b[n++] = 1;
    b[n++] = 0;
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), -EINVAL);
    /* a non-minimal varint (1 as 0x81 0x00) */
    n = header(b, 1, 9, 1);
    b[n++] = 0x81;
    b[n++] = 0x00;
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), -EINVAL);
    /* over 64 bits: ten bytes with a last byte of 2, eleven bytes */
    n = header(b, 1, 9, 1);
    for (int i = 0; i < 9; i++)
        b[n++] = 0xff;
    b[n++] = 0x02;
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), -EINVAL);
    n = header(b, 1, 9, 1);
    for (int i = 0; i < 10; i++)
        b[n++] = 0xff;
    b[n++] = 0x01;
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), -EINVAL);
    /* ... while ten bytes ending in 1 are UINT64_MAX */
    n = header(b, 1, 9, 1);
    for (int i = 0; i < 9; i++)
        b[n++] = 0xff;
    b[n++] = 0x01;
    cr_assert_eq(decode_copy(tok, craft(b, n, 1, tok), &q), 0);
    cr_assert_eq(q.seq[0], UINT64_MAX);
    /* no checksum at all, and a wrong one */
    n = header(b, 1, 9, 1);
    b[n++] = 1;
    cr_assert_eq(decode_copy(tok, craft(b, n, 0, tok), &q), -EINVAL);
    b[n++] = 0, b[n++] = 0, b[n++] = 0, b[n++] = 0;
    cr_assert_eq(decode_copy(tok, craft(b, n, 0, tok), &q), -EINVAL);
    /* shorter than the fixed part */
    cr_assert_eq(decode_copy(tok, craft(b, 3, 1, tok), &q), -EINVAL);
}

Test(position, nonzero_unused_bits_are_refused)
{
    /* 1 + 8 + 1 + 1 + 4 = 15 bytes: 20 characters, no unused bits; 16 bytes: 22 characters
     * with 4 unused bits in the last */
    uint8_t b[64];
    size_t n = header(b, 1, 9, 2);
    b[n++] = 1;
    b[n++] = 2;
    char tok[128];
    size_t tl = craft(b, n, 1, tok);
    cr_assert_eq(tl, 3 + 22);
    struct kr_pos q;
    cr_assert_eq(decode_copy(tok, tl, &q), 0);
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    int v = (int)(strchr(a, tok[tl - 1]) - a);
    for (int low = 1; low < 16; low++) {
        tok[tl - 1] = a[(v & ~15) | low];
        cr_assert_eq(decode_copy(tok, tl, &q), -EINVAL, "low bits %d", low);
    }
}
