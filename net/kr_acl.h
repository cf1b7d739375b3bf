/* Access control: which peer addresses may connect (the `allow_from` key).
 *
 * A list of CIDRs, IPv4 and IPv6, separated by commas and/or blanks, is parsed once at
 * start into a compact table; kr_acl_allows() then checks a peer address against it at
 * accept, without allocating. IPv4 entries are stored as IPv4-mapped IPv6 prefixes
 * (::ffff:a.b.c.d/96+n), so an IPv4 entry also matches an IPv4 peer seen on an IPv6
 * socket (::ffff:10.1.2.3), and an IPv6 prefix that covers ::ffff:0:0/96 (such as ::/0)
 * matches IPv4 peers too. The word `any` allows every address. A table is immutable once
 * built: any thread may read it. */
#ifndef KR_ACL_H
#define KR_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct kr_acl;

/* Parse `text` ("10.0.0.0/8, ::1", "any", "192.168.1.7"; an address without /N is one host)
 * into a new table in *out (owned by the caller, kr_acl_free). Returns 0, or -EINVAL with a
 * one-line message in `err` naming the bad entry (not an address, prefix out of range or
 * malformed, host bits set beyond the prefix, empty list). Any thread. */
int kr_acl_parse(const char *text, struct kr_acl **out, char *err, size_t errlen);

/* Whether the peer address `sa` (AF_INET or AF_INET6; anything else is refused) matches an
 * entry. Any thread. */
bool kr_acl_allows(const struct kr_acl *acl, const struct sockaddr *sa);

/* Entries in the table (`any` counts as one). Any thread. */
size_t kr_acl_count(const struct kr_acl *acl);

/* Free a table (NULL is fine). The owner, once no thread reads it. */
void kr_acl_free(struct kr_acl *acl);

#endif
