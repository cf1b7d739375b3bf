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
