/* allow_from tables (net/kr_acl.c): parsing, errors, IPv4/IPv6/IPv4-mapped matching and
 * prefix boundaries. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "kr_acl.h"

static struct kr_acl *parse_ok(const char *text)
{
    struct kr_acl *acl = NULL;
    char err[256] = "";
    cr_assert_eq(kr_acl_parse(text, &acl, err, sizeof(err)), 0, "'%s': %s", text, err);
    cr_assert_not_null(acl);
    return acl;
}

static void parse_bad(const char *text, const char *why)
{
    struct kr_acl *acl = NULL;
    char err[256] = "";
    cr_assert_eq(kr_acl_parse(text, &acl, err, sizeof(err)), -EINVAL, "'%s' was accepted", text);
    cr_assert_null(acl);
    cr_assert_not_null(strstr(err, why), "'%s': message '%s' lacks '%s'", text, err, why);
}

static bool allows(const struct kr_acl *acl, const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1)
        a4->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1)
        a6->sin6_family = AF_INET6;
    else
        cr_assert_fail("bad test address %s", ip);
    return kr_acl_allows(acl, (struct sockaddr *)&ss);
}

Test(acl, default_list_loopback_and_private)
{
    struct kr_acl *acl = parse_ok("127.0.0.0/8, ::1/128, 10.0.0.0/8, 172.16.0.0/12, "
                                  "192.168.0.0/16, fc00::/7, fe80::/10");
    cr_assert_eq(kr_acl_count(acl), 7);
    const char *yes[] = {"127.0.0.1", "127.255.255.255", "::1", "10.0.0.0", "10.255.255.255",
                         "172.16.0.1", "172.31.255.255", "192.168.0.1", "192.168.255.255",
                         "fc00::1", "fdff:ffff::1", "fe80::1", "febf:ffff::1",
                         "::ffff:10.1.2.3", "::ffff:127.0.0.1"};
    const char *no[] = {"8.8.8.8", "11.0.0.0", "9.255.255.255", "172.15.255.255", "172.32.0.0",
                        "192.167.255.255", "192.169.0.0", "128.0.0.1", "::2", "2001:db8::1",
                        "fe00::1", "fec0::1", "::ffff:8.8.8.8", "::"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        cr_assert(allows(acl, yes[i]), "%s should be allowed", yes[i]);
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        cr_assert(!allows(acl, no[i]), "%s should be refused", no[i]);
    kr_acl_free(acl);
}

Test(acl, separators_hosts_and_any)
{
    struct kr_acl *acl = parse_ok("  10.1.2.3\t,,2001:db8::5 ,192.168.7.0/24");
    cr_assert_eq(kr_acl_count(acl), 3);
    cr_assert(allows(acl, "10.1.2.3"));
    cr_assert(!allows(acl, "10.1.2.4"));
    cr_assert(allows(acl, "2001:db8::5"));
    cr_assert(!allows(acl, "2001:db8::6"));
    cr_assert(allows(acl, "192.168.7.255"));
    cr_assert(!allows(acl, "192.168.8.0"));
    kr_acl_free(acl);

    acl = parse_ok("any");
    cr_assert(allows(acl, "8.8.8.8"));
    cr_assert(allows(acl, "2001:db8::1"));
    kr_acl_free(acl);
    acl = parse_ok("0.0.0.0/0,::/0");
    cr_assert(allows(acl, "1.2.3.4"));
    cr_assert(allows(acl, "::"));
    kr_acl_free(acl);
    /* 0.0.0.0/0 alone covers IPv4 (and IPv4-mapped) peers only */
    acl = parse_ok("0.0.0.0/0");
    cr_assert(allows(acl, "255.255.255.255"));
    cr_assert(allows(acl, "::ffff:1.2.3.4"));
    cr_assert(!allows(acl, "2001:db8::1"));
    kr_acl_free(acl);
}

Test(acl, prefix_boundaries)
{
    struct kr_acl *acl = parse_ok("10.0.0.128/25, 2001:db8:0:2::/63, 1.2.3.4/32, ::/128");
    cr_assert(!allows(acl, "10.0.0.127"));
    cr_assert(allows(acl, "10.0.0.128"));
    cr_assert(allows(acl, "10.0.0.255"));
    cr_assert(!allows(acl, "10.0.1.0"));
    cr_assert(!allows(acl, "2001:db8:0:1:ffff:ffff:ffff:ffff"));
    cr_assert(allows(acl, "2001:db8:0:2::"));
    cr_assert(allows(acl, "2001:db8:0:3:ffff:ffff:ffff:ffff"));
    cr_assert(!allows(acl, "2001:db8:0:4::"));
    cr_assert(allows(acl, "1.2.3.4"));
    cr_assert(!allows(acl, "1.2.3.5"));
    cr_assert(allows(acl, "::"));
    cr_assert(!allows(acl, "::1"));
    kr_acl_free(acl);
    /* an IPv6 prefix over the mapped range matches IPv4 peers */
    acl = parse_ok("::ffff:0:0/96");
    cr_assert(allows(acl, "4.3.2.1"));
    cr_assert(!allows(acl, "::1"));
    kr_acl_free(acl);
}

Test(acl, bad_input)
{
    parse_bad("", "empty");
    parse_bad(" , ,", "empty");
    parse_bad("10.0.0.0/33", "over 32");
    parse_bad("::/129", "over 128");
    parse_bad("10.0.0.0/", "bad prefix length");
    parse_bad("10.0.0.0/8x", "bad prefix length");
    parse_bad("10.0.0.0/-1", "bad prefix length");
    parse_bad("10.0.0.0/0008", "bad prefix length");
    parse_bad("10.0.0.256", "not an IPv4 or IPv6");
    parse_bad("10.0.0", "not an IPv4 or IPv6");
    parse_bad("localhost", "not an IPv4 or IPv6");
    parse_bad("10.0.0.0/8 nonsense", "'nonsense'");
    parse_bad("10.1.0.0/8", "bits set beyond");
    parse_bad("fe80::1/10", "bits set beyond");
    parse_bad("anything", "not an IPv4 or IPv6");
    parse_bad("0123456789012345678901234567890123456789012345678901234567890123456789", "not an");
}

Test(acl, refuses_other_families)
{
    struct kr_acl *acl = parse_ok("any");
    struct sockaddr sa = {.sa_family = AF_UNIX};
    cr_assert(!kr_acl_allows(acl, &sa));
    kr_acl_free(acl);
}
