/* Subjects and bodies of the cluster link (see kr_cluster_wire.h). Pure; any thread. */
#include "kr_cluster_wire.h"

#include <errno.h>
#include <string.h>

static const char kr_hex[] = "0123456789ABCDEF";

static bool kr_cl_raw(unsigned char b)
{
    return b > 0x20 && b < 0x7f && b != '.' && b != '*' && b != '>' && b != '%';
}

size_t kr_cl_subject_max(size_t prefix_len, uint32_t len)
{
    return prefix_len + 3 + (len ? (size_t)len * 3 : 1) + 1;
}

size_t kr_cl_subject(char *out, size_t cap, const char *prefix, const char *topic, uint32_t len)
{
    size_t pl = strlen(prefix), n = 0;
    if (pl + 4 > cap)
        return 0;
    memcpy(out, prefix, pl);
    memcpy(out + pl, ".t.", 3);
    n = pl + 3;
    if (len == 0) {
        if (n + 2 > cap)
            return 0;
        out[n++] = '%';
        out[n] = 0;
        return n;
    }
    for (uint32_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)topic[i];
        if (kr_cl_raw(b)) {
            if (n + 2 > cap)
                return 0;
            out[n++] = (char)b;
        } else {
            if (n + 4 > cap)
                return 0;
            out[n++] = '%';
            out[n++] = kr_hex[b >> 4];
            out[n++] = kr_hex[b & 15];
        }
    }
    out[n] = 0;
    return n;
}

static int kr_unhex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int kr_cl_subject_topic(const char *subj, const char *prefix, char *out, size_t cap,
                        uint32_t *len)
{
    size_t pl = strlen(prefix);
    if (strncmp(subj, prefix, pl) != 0 || strncmp(subj + pl, ".t.", 3) != 0)
        return -EINVAL;
    const char *p = subj + pl + 3;
    size_t sl = strlen(p), n = 0;
    if (sl == 1 && p[0] == '%') {
        *len = 0;
        return 0;
    }
    if (sl == 0)
        return -EINVAL;
    for (size_t i = 0; i < sl; i++) {
        unsigned char b = (unsigned char)p[i];
        int v;
        if (b == '%') {
            int hi = i + 2 < sl ? kr_unhex(p[i + 1]) : -1;
            int lo = hi >= 0 ? kr_unhex(p[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return -EINVAL;
            v = hi * 16 + lo;
            if (kr_cl_raw((unsigned char)v)) /* not the one encoding of that byte */
                return -EINVAL;
            i += 2;
        } else if (kr_cl_raw(b)) {
            v = b;
        } else {
            return -EINVAL;
        }
        if (n == cap)
            return -E2BIG;
        out[n++] = (char)v;
    }
    *len = (uint32_t)n;
    return 0;
}

static void kr_put32(char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (char)(v >> (8 * i));
}

static void kr_put64(char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (char)(v >> (8 * i));
}

static uint32_t kr_get32(const char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)(unsigned char)p[i] << (8 * i);
    return v;
}

static uint64_t kr_get64(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)(unsigned char)p[i] << (8 * i);
    return v;
}

size_t kr_cl_entry_size(uint32_t ntopics, const uint32_t *lens, uint32_t payload_len)
{
    size_t n = KR_CL_ENTRY_HEADER + (size_t)payload_len;
    for (uint32_t i = 0; i < ntopics; i++)
        n += 4 + lens[i];
    return n;
}

void kr_cl_entry_header(char *out, uint64_t origin, uint64_t seq, uint32_t ntopics)
{
    out[0] = 'E';
    out[1] = KR_CL_VERSION;
    kr_put64(out + 2, origin);
    kr_put64(out + 10, seq);
    kr_put32(out + 18, ntopics);
}

void kr_cl_entry_encode(char *out, uint64_t origin, uint64_t seq, uint32_t ntopics,
                        const char *const *topics, const uint32_t *lens, const char *payload,
                        uint32_t payload_len)
{
    kr_cl_entry_header(out, origin, seq, ntopics);
    char *p = out + KR_CL_ENTRY_HEADER;
    for (uint32_t i = 0; i < ntopics; i++)
        p += kr_cl_pair(p, topics[i], lens[i]);
    if (payload_len)
        memcpy(p, payload, payload_len);
}

size_t kr_cl_ctl_encode(char *out, char kind, uint64_t origin, uint64_t probe)
{
    out[0] = kind;
    out[1] = KR_CL_VERSION;
    kr_put64(out + 2, origin);
    kr_put64(out + 10, probe);
    return 18;
}

size_t kr_cl_hb_encode(char *out, size_t cap, uint64_t origin, const char *name)
{
    size_t nl = strlen(name);
    if (10 + nl > cap)
        nl = cap > 10 ? cap - 10 : 0;
    out[0] = 'H';
    out[1] = KR_CL_VERSION;
    kr_put64(out + 2, origin);
    memcpy(out + 10, name, nl);
    return 10 + nl;
}

/* Walk `n` (len, bytes) pairs from p; the bytes they take, or -1 past `avail`. */
static long kr_cl_pairs(const char *p, size_t avail, uint32_t n)
{
    size_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (avail - off < 4)
            return -1;
        uint32_t l = kr_get32(p + off);
        off += 4;
        if (avail - off < l)
            return -1;
        off += l;
    }
    return (long)off;
}

int kr_cl_decode(const char *body, size_t len, struct kr_cl_body *out)
{
    memset(out, 0, sizeof(*out));
    if (len < 10 || body[1] != KR_CL_VERSION)
        return -EINVAL;
    out->kind = body[0];
    out->origin = kr_get64(body + 2);
    switch (out->kind) {
    case 'H':
        out->rest = body + 10;
        out->rest_len = len - 10;
        return 0;
    case 'P':
    case 'A':
    case 'R':
    case 'G':
        if (len != 18)
            return -EINVAL;
        out->seq = kr_get64(body + 10);
        return 0;
    case 'E': {
        if (len < 22)
            return -EINVAL;
        out->seq = kr_get64(body + 10);
        out->ntopics = kr_get32(body + 18);
        if (out->ntopics == 0 || out->ntopics > (len - 22) / 4)
            return -EINVAL;
        long used = kr_cl_pairs(body + 22, len - 22, out->ntopics);
        if (used < 0)
            return -EINVAL;
        out->rest = body + 22;
        out->rest_len = (size_t)used;
        out->payload = body + 22 + used;
        out->payload_len = (uint32_t)(len - 22 - (size_t)used);
        return 0;
    }
    case 'L': {
        if (len < 14)
            return -EINVAL;
        out->ntopics = kr_get32(body + 10);
        if (out->ntopics > (len - 14) / 4)
            return -EINVAL;
        long used = kr_cl_pairs(body + 14, len - 14, out->ntopics);
        if (used < 0 || (size_t)used != len - 14)
            return -EINVAL;
        out->rest = body + 14;
        out->rest_len = (size_t)used;
        return 0;
    }
    default:
        return -EINVAL;
    }
}

bool kr_cl_next_topic(const struct kr_cl_body *b, size_t *pos, const char **topic,
                      uint32_t *len)
{
    if (*pos >= b->rest_len)
        return false;
    *len = kr_get32(b->rest + *pos);
    *topic = b->rest + *pos + 4;
    *pos += 4 + *len;
    return true;
}

void kr_cl_lost_header(char *out, uint64_t origin, uint32_t ntopics)
{
    out[0] = 'L';
    out[1] = KR_CL_VERSION;
    kr_put64(out + 2, origin);
    kr_put32(out + 10, ntopics);
}

size_t kr_cl_pair(char *out, const char *topic, uint32_t len)
{
    kr_put32(out, len);
    memcpy(out + 4, topic, len);
    return 4 + (size_t)len;
}

/* ---------------------------------------------------------------- resume between nodes */

size_t kr_cl_ask_size(uint32_t nshards, size_t pairs_len)
{
    return KR_CL_ASK_HEADER + 8 * (size_t)nshards + 4 + pairs_len;
}

size_t kr_cl_ask_encode(char *out, uint64_t origin, uint64_t tag, uint32_t nshards,
                        const uint64_t *seq, uint32_t ntopics, const char *pairs,
                        size_t pairs_len)
{
    out[0] = 'Q';
    out[1] = KR_CL_VERSION;
    kr_put64(out + 2, origin);
    kr_put64(out + 10, tag);
    kr_put32(out + 18, nshards);
    char *p = out + KR_CL_ASK_HEADER;
    for (uint32_t s = 0; s < nshards; s++, p += 8)
        kr_put64(p, seq[s]);
    kr_put32(p, ntopics);
    p += 4;
    if (pairs_len)
        memcpy(p, pairs, pairs_len);
    return (size_t)(p - out) + pairs_len;
}

void kr_cl_ans_header(char *out, uint64_t origin, uint64_t tag, uint32_t flags,
                      uint32_t nentries)
{
    out[0] = 'S';
    out[1] = KR_CL_VERSION;
    kr_put64(out + 2, origin);
    kr_put64(out + 10, tag);
    kr_put32(out + 18, flags);
    kr_put32(out + 22, nentries);
    kr_put32(out + 26, 0); /* reserved */
}

size_t kr_cl_replayed_size(size_t pairs_len, uint32_t payload_len)
{
    return 20 + pairs_len + 4 + (size_t)payload_len;
}

size_t kr_cl_replayed_header(char *out, uint64_t origin, uint64_t oseq, uint32_t ntopics)
{
    kr_put64(out, origin);
    kr_put64(out + 8, oseq);
    kr_put32(out + 16, ntopics);
    return 20;
}

size_t kr_cl_replayed_payload(char *out, const char *payload, uint32_t payload_len)
{
    kr_put32(out, payload_len);
    if (payload_len)
        memcpy(out + 4, payload, payload_len);
    return 4 + (size_t)payload_len;
}

size_t kr_cl_ans_marks(char *out, uint32_t n, const uint64_t *origins, const uint64_t *seqs)
{
    kr_put32(out, n);
    for (uint32_t i = 0; i < n; i++) {
        kr_put64(out + 4 + 16 * (size_t)i, origins[i]);
        kr_put64(out + 12 + 16 * (size_t)i, seqs[i]);
    }
    return 4 + 16 * (size_t)n;
}

void kr_cl_mark(const struct kr_cl_resume *r, uint32_t i, uint64_t *origin, uint64_t *seq)
{
    *origin = kr_get64(r->marks + 16 * (size_t)i);
    *seq = kr_get64(r->marks + 8 + 16 * (size_t)i);
}

size_t kr_cl_ans_trailer(char *out, uint32_t nuncovered)
{
    kr_put32(out, nuncovered);
    return 4;
}

/* One replayed message at p (avail bytes): its size, or -1 when it does not fit or has no
 * topic. */
static long kr_cl_replayed_walk(const char *p, size_t avail, struct kr_cl_replayed *e)
{
    if (avail < 20)
        return -1;
    e->origin = kr_get64(p);
    e->oseq = kr_get64(p + 8);
    e->ntopics = kr_get32(p + 16);
    if (e->ntopics == 0 || e->ntopics > (avail - 20) / 4)
        return -1;
    long used = kr_cl_pairs(p + 20, avail - 20, e->ntopics);
    if (used < 0 || avail - 20 - (size_t)used < 4)
        return -1;
    e->pairs = p + 20;
    e->pairs_len = (size_t)used;
    size_t off = 20 + (size_t)used;
    e->payload_len = kr_get32(p + off);
    off += 4;
    if (avail - off < e->payload_len)
        return -1;
    e->payload = p + off;
    return (long)(off + e->payload_len);
}

int kr_cl_resume_decode(const char *body, size_t len, struct kr_cl_resume *out)
{
    memset(out, 0, sizeof(*out));
    if (len < 10 || body[1] != KR_CL_VERSION)
        return -EINVAL;
    out->kind = body[0];
    out->origin = kr_get64(body + 2);
    size_t off;
    if (out->kind == 'Q') {
        if (len < KR_CL_ASK_HEADER)
            return -EINVAL;
        out->tag = kr_get64(body + 10);
        out->nshards = kr_get32(body + 18);
        if (out->nshards == 0 || out->nshards > KR_CL_MAX_SHARDS ||
            len - KR_CL_ASK_HEADER < 8 * (size_t)out->nshards + 4)
            return -EINVAL;
        off = KR_CL_ASK_HEADER;
        for (uint32_t s = 0; s < out->nshards; s++, off += 8)
            out->seq[s] = kr_get64(body + off);
    } else if (out->kind == 'S') {
        if (len < KR_CL_ANS_HEADER)
            return -EINVAL;
        out->tag = kr_get64(body + 10);
        out->flags = kr_get32(body + 18);
        out->nentries = kr_get32(body + 22);
        off = KR_CL_ANS_HEADER;
        out->entries = body + off;
        if (out->nentries > (len - off) / 24)
            return -EINVAL;
        for (uint32_t i = 0; i < out->nentries; i++) {
            struct kr_cl_replayed e;
            long used = kr_cl_replayed_walk(body + off, len - off, &e);
            if (used < 0)
                return -EINVAL;
            off += (size_t)used;
        }
        out->entries_len = (size_t)(body + off - out->entries);
        if (len - off < 4)
            return -EINVAL;
        out->nmarks = kr_get32(body + off);
        off += 4;
        if (out->nmarks > (len - off) / 16)
            return -EINVAL;
        out->marks = body + off;
        off += 16 * (size_t)out->nmarks;
        if (len - off < 4)
            return -EINVAL;
    } else {
        return -EINVAL;
    }
    out->ntopics = kr_get32(body + off);
    off += 4;
    if (out->ntopics > (len - off) / 4)
        return -EINVAL;
    long used = kr_cl_pairs(body + off, len - off, out->ntopics);
    if (used < 0 || (size_t)used != len - off)
        return -EINVAL;
    out->pairs = body + off;
    out->pairs_len = (size_t)used;
    return 0;
}

bool kr_cl_next_replayed(const struct kr_cl_resume *r, size_t *pos, struct kr_cl_replayed *e)
{
    if (*pos >= r->entries_len)
        return false;
    long used = kr_cl_replayed_walk(r->entries + *pos, r->entries_len - *pos, e);
    if (used < 0)
        return false; /* kr_cl_resume_decode validated them: not reached */
    *pos += (size_t)used;
    return true;
}

bool kr_cl_next_pair(const char *pairs, size_t pairs_len, size_t *pos, const char **topic,
                     uint32_t *len)
{
    if (*pos + 4 > pairs_len)
        return false;
    *len = kr_get32(pairs + *pos);
    *topic = pairs + *pos + 4;
    *pos += 4 + *len;
    return true;
}
