/* Access control lists of CIDRs: see kr_acl.h. */
#include "kr_acl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kr_util.h"

/* One prefix over the 128-bit IPv6 form of an address. */
struct kr_acl_entry {
    uint8_t addr[16]; /* host bits beyond `bits` are zero */
    uint8_t bits;     /* 0..128 */
};

struct kr_acl {
    size_t n;
    struct kr_acl_entry e[]; /* `any` is stored as ::/0 */
};

static const uint8_t kr_acl_v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static bool kr_acl_match(const struct kr_acl_entry *e, const uint8_t a[16])
{
    unsigned full = e->bits / 8, rest = e->bits % 8;
    if (memcmp(e->addr, a, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (a[full] & mask) == e->addr[full];
}

/* One entry, `tok` (NUL-terminated). */
static int kr_acl_entry_parse(const char *tok, struct kr_acl_entry *e, char *err,
                              size_t errlen)
{
    char text[INET6_ADDRSTRLEN + 8];
    size_t len = strlen(tok);
    if (len >= sizeof(text))
        return kr_errf(err, errlen, -EINVAL, "allow_from: '%.64s...' is not an address or CIDR",
                       tok);
    memcpy(text, tok, len + 1);
    char *slash = strchr(text, '/');
    long bits = -1;
    if (slash) {
        *slash = '\0';
        const char *p = slash + 1;
        if (*p < '0' || *p > '9' || strlen(p) > 3)
            return kr_errf(err, errlen, -EINVAL,
                           "allow_from: bad prefix length in '%s' (expected ADDRESS/N)", tok);
        bits = 0;
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return kr_errf(err, errlen, -EINVAL,
                               "allow_from: bad prefix length in '%s' (expected ADDRESS/N)", tok);
            bits = bits * 10 + (*p - '0');
        }
    }
    uint8_t a4[4];
    memset(e, 0, sizeof(*e));
    if (inet_pton(AF_INET, text, a4) == 1) {
        if (bits > 32)
            return kr_errf(err, errlen, -EINVAL,
                           "allow_from: prefix length of '%s' is over 32", tok);
        memcpy(e->addr, kr_acl_v4mapped, 12);
        memcpy(e->addr + 12, a4, 4);
        e->bits = (uint8_t)(96 + (bits < 0 ? 32 : bits));
    } else if (inet_pton(AF_INET6, text, e->addr) == 1) {
        if (bits > 128)
            return kr_errf(err, errlen, -EINVAL,
                           "allow_from: prefix length of '%s' is over 128", tok);
        e->bits = (uint8_t)(bits < 0 ? 128 : bits);
    } else {
        return kr_errf(err, errlen, -EINVAL,
                       "allow_from: '%s' is not an IPv4 or IPv6 address or CIDR", tok);
    }
    /* host bits beyond the prefix are almost always a typo (10.1.0.0/8): refuse them */
    for (unsigned i = e->bits; i < 128; i++) {
        if (e->addr[i / 8] & (0x80u >> (i % 8)))
            return kr_errf(err, errlen, -EINVAL,
                           "allow_from: '%s' has bits set beyond its prefix length", tok);
    }
    return 0;
}

int kr_acl_parse(const char *text, struct kr_acl **out, char *err, size_t errlen)
{
    size_t cap = 4;
    struct kr_acl *acl = kr_xmalloc(sizeof(*acl) + cap * sizeof(acl->e[0]));
    acl->n = 0;
    const char *p = text ? text : "";
    for (;;) {
        while (*p == ',' || *p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, ", \t");
        char tok[INET6_ADDRSTRLEN + 8];
        if (len >= sizeof(tok)) {
            kr_acl_free(acl);
            return kr_errf(err, errlen, -EINVAL,
                           "allow_from: '%.64s...' is not an address or CIDR", p);
        }
        memcpy(tok, p, len);
        tok[len] = '\0';
        p += len;
        if (acl->n == cap) {
            cap *= 2;
            acl = kr_xrealloc(acl, sizeof(*acl) + cap * sizeof(acl->e[0]));
        }
        struct kr_acl_entry *e = &acl->e[acl->n];
        if (strcmp(tok, "any") == 0) {
            memset(e, 0, sizeof(*e)); /* ::/0 covers the IPv4-mapped range too */
        } else {
            int rc = kr_acl_entry_parse(tok, e, err, errlen);
            if (rc < 0) {
                kr_acl_free(acl);
                return rc;
            }
        }
        acl->n++;
    }
    if (acl->n == 0) {
        kr_acl_free(acl);
        return kr_errf(err, errlen, -EINVAL,
                       "allow_from is empty: no address could connect (write 'any' to allow "
                       "every address)");
    }
    *out = acl;
    return 0;
}

bool kr_acl_allows(const struct kr_acl *acl, const struct sockaddr *sa)
{
    uint8_t a[16];
    if (sa->sa_family == AF_INET) {
        memcpy(a, kr_acl_v4mapped, 12);
        memcpy(a + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(a, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    } else {
        return false;
    }
    for (size_t i = 0; i < acl->n; i++)
        if (kr_acl_match(&acl->e[i], a))
            return true;
    return false;
}

size_t kr_acl_count(const struct kr_acl *acl)
{
    return acl->n;
}

void kr_acl_free(struct kr_acl *acl)
{
    free(acl);
}
