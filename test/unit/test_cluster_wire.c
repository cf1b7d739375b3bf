/* Unit tests of the cluster link's wire formats: topic <-> subject (total and reversible,
 * every byte value), entries and control bodies (round trips, every truncation refused). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kr_cluster_wire.h"

static void roundtrip(const char *topic, uint32_t len)
{
    char subj[4096], back[2048];
    size_t n = kr_cl_subject(subj, sizeof(subj), "kraken", topic, len);
    cr_assert(n > 0, "subject of a %u-byte topic", len);
    cr_assert_eq(strlen(subj), n);
    cr_assert(n < kr_cl_subject_max(6, len), "kr_cl_subject_max bounds it");
    /* one literal token after the prefix: no separator, no wildcard, no white space */
    const char *tok = subj + strlen("kraken.t.");
    cr_assert_eq(strncmp(subj, "kraken.t.", 9), 0);
    for (const char *p = tok; *p; p++) {
        cr_assert(*p > 0x20 && *p < 0x7f, "printable: 0x%02x in %s", (unsigned char)*p, subj);
        cr_assert(*p != '.' && *p != '*' && *p != '>', "%s", subj);
    }
    uint32_t bl = 0;
    cr_assert_eq(kr_cl_subject_topic(subj, "kraken", back, sizeof(back), &bl), 0, "%s", subj);
    cr_assert_eq(bl, len);
    cr_assert_eq(memcmp(back, topic, len), 0);
}

Test(cluster_wire, every_byte_value_maps_to_one_literal_token_and_back)
{
    for (int b = 0; b < 256; b++) {
        char t[3] = {'a', (char)b, 'z'};
        roundtrip(t, 3);
        roundtrip(t + 1, 1);
    }
    roundtrip("", 0);
    roundtrip("a.b.c", 5);
    roundtrip("*", 1);
    roundtrip(">", 1);
    roundtrip("%41", 3); /* a literal percent sign is escaped too */
    char big[1024];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)(i * 7);
    roundtrip(big, sizeof(big));
}

Test(cluster_wire, distinct_topics_get_distinct_subjects)
{
    const char *pairs[][2] = {{"a.b", "a%2Eb"}, {"a b", "a%20b"}, {"%", "%25"}, {"a*", "a%2A"}};
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        char s1[256], s2[256];
        kr_cl_subject(s1, sizeof(s1), "p", pairs[i][0], (uint32_t)strlen(pairs[i][0]));
        kr_cl_subject(s2, sizeof(s2), "p", pairs[i][1], (uint32_t)strlen(pairs[i][1]));
        cr_assert_str_neq(s1, s2);
    }
}

Test(cluster_wire, malformed_subjects_are_refused)
{
    char out[64];
    uint32_t len;
    const char *bad[] = {"other.t.abc", "kraken.x.abc", "kraken.t.", "kraken.t.a%4", "kraken.t.a%zz",
                         "kraken.t.%41" /* 'A' has a raw form: not its encoding */,
                         "kraken.t.a.b", "kraken.t.a b", "kraken.t.%2e"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(kr_cl_subject_topic(bad[i], "kraken", out, sizeof(out), &len), -EINVAL, "%s",
                     bad[i]);
    cr_assert_eq(kr_cl_subject_topic("kraken.t.abcdef", "kraken", out, 3, &len), -E2BIG);
}

Test(cluster_wire, subject_that_does_not_fit_is_refused)
{
    char out[16];
    cr_assert_eq(kr_cl_subject(out, sizeof(out), "kraken", "abcdefgh", 8), 0);
    cr_assert_eq(kr_cl_subject(out, sizeof(out), "kraken", "abcdef", 6), 15);
}

Test(cluster_wire, entry_round_trip_and_every_truncation)
{
    const char *topics[] = {"a", "topic two", ""};
    uint32_t lens[] = {1, 9, 0};
    const char payload[] = "pay\r\nload\0x";
    uint32_t plen = sizeof(payload);
    size_t n = kr_cl_entry_size(3, lens, plen);
    char *buf = malloc(n);
    kr_cl_entry_encode(buf, 0x1122334455667788ull, 42, 3, topics, lens, payload, plen);
    struct kr_cl_body b;
    cr_assert_eq(kr_cl_decode(buf, n, &b), 0);
    cr_assert_eq(b.kind, 'E');
    cr_assert_eq(b.origin, 0x1122334455667788ull);
    cr_assert_eq(b.seq, 42);
    cr_assert_eq(b.ntopics, 3);
    cr_assert_eq(b.payload_len, plen);
    cr_assert_eq(memcmp(b.payload, payload, plen), 0);
    size_t pos = 0;
    const char *t;
    uint32_t l;
    for (int i = 0; i < 3; i++) {
        cr_assert(kr_cl_next_topic(&b, &pos, &t, &l));
        cr_assert_eq(l, lens[i]);
        cr_assert_eq(memcmp(t, topics[i], l), 0);
    }
    cr_assert_not(kr_cl_next_topic(&b, &pos, &t, &l));
    /* a body cut anywhere inside its topic list is refused (cut in the payload: shorter
     * payload, still well formed) */
    size_t pairs_end = n - plen;
    for (size_t cut = 0; cut < pairs_end; cut++)
        cr_assert_eq(kr_cl_decode(buf, cut, &b), -EINVAL, "cut at %zu", cut);
    buf[1] = 2; /* another version */
    cr_assert_eq(kr_cl_decode(buf, n, &b), -EINVAL);
    buf[1] = KR_CL_VERSION;
    buf[18] = 0x7f; /* a topic count past the end */
    cr_assert_eq(kr_cl_decode(buf, n, &b), -EINVAL);
    free(buf);
}

Test(cluster_wire, control_bodies)
{
    char buf[128];
    struct kr_cl_body b;
    size_t n = kr_cl_ctl_encode(buf, 'P', 7, 99);
    cr_assert_eq(kr_cl_decode(buf, n, &b), 0);
    cr_assert_eq(b.kind, 'P');
    cr_assert_eq(b.origin, 7);
    cr_assert_eq(b.seq, 99);
    cr_assert_eq(kr_cl_decode(buf, n - 1, &b), -EINVAL);
    n = kr_cl_ctl_encode(buf, 'R', 5, 0);
    cr_assert_eq(kr_cl_decode(buf, n, &b), 0);
    cr_assert_eq(b.kind, 'R');
    cr_assert_eq(b.origin, 5);
    n = kr_cl_ctl_encode(buf, 'G', 6, 0); /* a node that leaves says so */
    cr_assert_eq(kr_cl_decode(buf, n, &b), 0);
    cr_assert_eq(b.kind, 'G');
    cr_assert_eq(b.origin, 6);
    cr_assert_eq(kr_cl_decode(buf, n - 1, &b), -EINVAL);
    n = kr_cl_hb_encode(buf, sizeof(buf), 8, "node-1");
    cr_assert_eq(kr_cl_decode(buf, n, &b), 0);
    cr_assert_eq(b.kind, 'H');
    cr_assert_eq(b.rest_len, 6);
    cr_assert_eq(memcmp(b.rest, "node-1", 6), 0);
    kr_cl_lost_header(buf, 9, 2);
    size_t used = KR_CL_LOST_HEADER;
    used += kr_cl_pair(buf + used, "x", 1);
    used += kr_cl_pair(buf + used, "yz", 2);
    cr_assert_eq(kr_cl_decode(buf, used, &b), 0);
    cr_assert_eq(b.kind, 'L');
    cr_assert_eq(b.ntopics, 2);
    for (size_t cut = 0; cut < used; cut++)
        cr_assert_eq(kr_cl_decode(buf, cut, &b), -EINVAL, "cut at %zu", cut);
    cr_assert_eq(kr_cl_decode(buf, used + 1, &b), -EINVAL, "trailing byte");
    buf[0] = 'Q';
    cr_assert_eq(kr_cl_decode(buf, used, &b), -EINVAL);
}

/* ---------------------------------------------------------------- resume between nodes */

/* A resume request: position and topics round trip; every truncation and a shard count
 * out of range are refused. */
Test(cluster_wire, resume_request_round_trip_and_every_truncation)
{
    char pairs[64];
    size_t pl = kr_cl_pair(pairs, "alpha", 5);
    pl += kr_cl_pair(pairs + pl, "", 0);
    uint64_t seq[3] = {10, 0, UINT64_MAX};
    size_t n = kr_cl_ask_size(3, pl);
    char *buf = malloc(n);
    cr_assert_eq(kr_cl_ask_encode(buf, 0xabcdull, 77, 3, seq, 2, pairs, pl), n);
    struct kr_cl_resume r;
    cr_assert_eq(kr_cl_resume_decode(buf, n, &r), 0);
    cr_assert_eq(r.kind, 'Q');
    cr_assert_eq(r.origin, 0xabcdull);
    cr_assert_eq(r.tag, 77);
    cr_assert_eq(r.nshards, 3);
    cr_assert(r.seq[0] == 10 && r.seq[1] == 0 && r.seq[2] == UINT64_MAX);
    cr_assert_eq(r.ntopics, 2);
    size_t pos = 0;
    const char *t;
    uint32_t l;
    cr_assert(kr_cl_next_pair(r.pairs, r.pairs_len, &pos, &t, &l));
    cr_assert(l == 5 && memcmp(t, "alpha", 5) == 0);
    cr_assert(kr_cl_next_pair(r.pairs, r.pairs_len, &pos, &t, &l));
    cr_assert_eq(l, 0);
    cr_assert_not(kr_cl_next_pair(r.pairs, r.pairs_len, &pos, &t, &l));
    for (size_t cut = 0; cut < n; cut++)
        cr_assert_eq(kr_cl_resume_decode(buf, cut, &r), -EINVAL, "cut at %zu", cut);
    buf[18] = 0; /* no shard */
    cr_assert_eq(kr_cl_resume_decode(buf, n, &r), -EINVAL);
    buf[18] = 65; /* more than KR_CL_MAX_SHARDS */
    cr_assert_eq(kr_cl_resume_decode(buf, n, &r), -EINVAL);
    free(buf);
}

/* An answer chunk: replayed messages (origin, origin sequence, topics, payload) and the
 * uncovered topics round trip; a message without a topic, a count past the end and every
 * truncation are refused. */
Test(cluster_wire, resume_answer_round_trip_and_every_truncation)
{
    char buf[512];
    size_t used = KR_CL_ANS_HEADER;
    used += kr_cl_replayed_header(buf + used, 5, 100, 2);
    used += kr_cl_pair(buf + used, "t1", 2);
    used += kr_cl_pair(buf + used, "t2", 2);
    used += kr_cl_replayed_payload(buf + used, "hello", 5);
    size_t second = used;
    used += kr_cl_replayed_header(buf + used, 6, 7, 1);
    used += kr_cl_pair(buf + used, "t3", 2);
    used += kr_cl_replayed_payload(buf + used, "", 0);
    cr_assert_eq(used - second, kr_cl_replayed_size(6, 0));
    const uint64_t mo[2] = {5, 0xfedcba9876543210ull}, ms[2] = {100, 3};
    used += kr_cl_ans_marks(buf + used, 2, mo, ms);
    used += kr_cl_ans_trailer(buf + used, 1);
    used += kr_cl_pair(buf + used, "lost", 4);
    kr_cl_ans_header(buf, 9, 77, KR_CL_ANS_LAST, 2);
    struct kr_cl_resume r;
    cr_assert_eq(kr_cl_resume_decode(buf, used, &r), 0);
    cr_assert_eq(r.kind, 'S');
    cr_assert(r.origin == 9 && r.tag == 77 && r.flags == KR_CL_ANS_LAST);
    cr_assert_eq(r.nentries, 2);
    size_t pos = 0, pp;
    struct kr_cl_replayed e;
    const char *t;
    uint32_t l;
    cr_assert(kr_cl_next_replayed(&r, &pos, &e));
    cr_assert(e.origin == 5 && e.oseq == 100 && e.ntopics == 2);
    cr_assert(e.payload_len == 5 && memcmp(e.payload, "hello", 5) == 0);
    pp = 0;
    cr_assert(kr_cl_next_pair(e.pairs, e.pairs_len, &pp, &t, &l) && l == 2 && t[1] == '1');
    cr_assert(kr_cl_next_pair(e.pairs, e.pairs_len, &pp, &t, &l) && l == 2 && t[1] == '2');
    cr_assert_not(kr_cl_next_pair(e.pairs, e.pairs_len, &pp, &t, &l));
    cr_assert(kr_cl_next_replayed(&r, &pos, &e));
    cr_assert(e.origin == 6 && e.oseq == 7 && e.ntopics == 1 && e.payload_len == 0);
    cr_assert_not(kr_cl_next_replayed(&r, &pos, &e));
    cr_assert_eq(r.nmarks, 2);
    uint64_t o, q;
    kr_cl_mark(&r, 1, &o, &q);
    cr_assert(o == 0xfedcba9876543210ull && q == 3);
    cr_assert_eq(r.ntopics, 1);
    pp = 0;
    cr_assert(kr_cl_next_pair(r.pairs, r.pairs_len, &pp, &t, &l) && l == 4 &&
              memcmp(t, "lost", 4) == 0);
    for (size_t cut = 0; cut < used; cut++)
        cr_assert_eq(kr_cl_resume_decode(buf, cut, &r), -EINVAL, "cut at %zu", cut);
    kr_cl_ans_header(buf, 9, 77, 0, 3); /* a count past the messages */
    cr_assert_eq(kr_cl_resume_decode(buf, used, &r), -EINVAL);
    kr_cl_ans_header(buf, 9, 77, 0, 2);
    buf[second + 16] = 0; /* a message without a topic */
    cr_assert_eq(kr_cl_resume_decode(buf, used, &r), -EINVAL);
}
