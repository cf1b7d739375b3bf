/* libFuzzer target for the cluster link's wire formats (router/cluster/kr_cluster_wire.h):
 * what arrives from NATS is untrusted (any client of the NATS cluster can publish on the
 * subjects).
 *
 * The input is taken as a message body, decoded whole and as every prefix (each in an
 * exactly-sized heap copy, so the address sanitizer sees any read past the bytes given):
 * a decoded E or L body's topic pairs must lie inside the body and add up to its length,
 * and an entry re-encoded from what was decoded must give the same bytes. The input is
 * also taken as a subject: decoding it under the prefix "kraken" either fails or gives a
 * topic whose encoding is that very subject (the mapping is one to one). Resume requests
 * and answers between nodes ('Q', 'S') decode whole or not at all: every replayed message,
 * pair and the uncovered topics lie inside the body, the counts match what iteration finds,
 * and a request re-encoded from what was decoded gives the same bytes. Any inconsistency
 * aborts. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kr_cluster_wire.h"
#include "kr_fuzz.h"


#define KR_FUZZ_MAX_SPLIT 1024
#define KR_FUZZ_MAX_TOPICS 256

static void kr_fuzz_pairs(const char *pairs, size_t plen, uint32_t want, const char *body,
                          size_t len)
{
    KR_FUZZ_CHECK(plen == 0 || (pairs >= body && pairs + plen <= body + len));
    size_t pos = 0;
    uint32_t n = 0, tl;
    const char *t;
    while (kr_cl_next_pair(pairs, plen, &pos, &t, &tl)) {
        KR_FUZZ_CHECK(t >= pairs && t + tl <= pairs + plen);
        n++;
    }
    KR_FUZZ_CHECK(pos == plen && n == want);
}

static void kr_fuzz_resume(const char *body, size_t len)
{
    struct kr_cl_resume r;
    if (kr_cl_resume_decode(body, len, &r) != 0)
        return;
    KR_FUZZ_CHECK(r.kind == 'Q' || r.kind == 'S');
    kr_fuzz_pairs(r.pairs, r.pairs_len, r.ntopics, body, len);
    KR_FUZZ_CHECK(r.pairs + r.pairs_len == body + len);
    if (r.kind == 'Q') {
        KR_FUZZ_CHECK(r.nshards >= 1 && r.nshards <= KR_CL_MAX_SHARDS);
        size_t sz = kr_cl_ask_size(r.nshards, r.pairs_len);
        KR_FUZZ_CHECK(sz == len);
        char *re = malloc(sz);
        KR_FUZZ_CHECK(re != NULL);
        KR_FUZZ_CHECK(kr_cl_ask_encode(re, r.origin, r.tag, r.nshards, r.seq, r.ntopics, r.pairs,
                                       r.pairs_len) == sz);
        KR_FUZZ_CHECK(memcmp(re, body, len) == 0);
        free(re);
        return;
    }
    size_t pos = 0;
    uint32_t n = 0;
    struct kr_cl_replayed e;
    while (kr_cl_next_replayed(&r, &pos, &e)) {
        KR_FUZZ_CHECK(e.ntopics >= 1);
        kr_fuzz_pairs(e.pairs, e.pairs_len, e.ntopics, body, len);
        KR_FUZZ_CHECK(e.payload >= e.pairs + e.pairs_len && e.payload + e.payload_len <= body + len);
        n++;
    }
    KR_FUZZ_CHECK(pos == r.entries_len && n == r.nentries);
    KR_FUZZ_CHECK(r.marks >= body && r.marks + 16 * (size_t)r.nmarks <= body + len);
    for (uint32_t i = 0; i < r.nmarks; i++) {
        uint64_t o, q;
        kr_cl_mark(&r, i, &o, &q);
    }
}

static void kr_fuzz_body(const char *body, size_t len)
{
    kr_fuzz_resume(body, len);
    struct kr_cl_body b;
    if (kr_cl_decode(body, len, &b) != 0)
        return;
    if (b.kind != 'E' && b.kind != 'L')
        return;
    KR_FUZZ_CHECK(b.rest >= body && b.rest + b.rest_len <= body + len);
    size_t pos = 0;
    uint32_t n = 0, tl;
    const char *t;
    const char *topics[KR_FUZZ_MAX_TOPICS];
    uint32_t lens[KR_FUZZ_MAX_TOPICS];
    while (kr_cl_next_topic(&b, &pos, &t, &tl)) {
        KR_FUZZ_CHECK(t >= b.rest && t + tl <= b.rest + b.rest_len);
        if (n < KR_FUZZ_MAX_TOPICS) {
            topics[n] = t;
            lens[n] = tl;
        }
        n++;
    }
    KR_FUZZ_CHECK(pos == b.rest_len);
    KR_FUZZ_CHECK(n == b.ntopics);
    if (b.kind == 'E') {
        KR_FUZZ_CHECK(b.payload == b.rest + b.rest_len);
        KR_FUZZ_CHECK(b.payload + b.payload_len == body + len);
        if (n <= KR_FUZZ_MAX_TOPICS) {
            size_t sz = kr_cl_entry_size(n, lens, b.payload_len);
            KR_FUZZ_CHECK(sz == len);
            char *re = malloc(sz);
            KR_FUZZ_CHECK(re != NULL);
            kr_cl_entry_encode(re, b.origin, b.seq, n, topics, lens, b.payload, b.payload_len);
            KR_FUZZ_CHECK(memcmp(re, body, len) == 0);
            free(re);
        }
    }
}

static void kr_fuzz_subject(const uint8_t *data, size_t size)
{
    char *subj = malloc(size + 1);
    KR_FUZZ_CHECK(subj != NULL);
    memcpy(subj, data, size);
    subj[size] = 0;
    char topic[4096];
    uint32_t tl = 0;
    int rc = kr_cl_subject_topic(subj, "kraken", topic, sizeof(topic), &tl);
    if (rc == 0 && strlen(subj) == size) {
        char back[3 * 4096 + 64];
        size_t n = kr_cl_subject(back, sizeof(back), "kraken", topic, tl);
        KR_FUZZ_CHECK(n == size && memcmp(back, subj, size) == 0);
    } else {
        KR_FUZZ_CHECK(rc == 0 || rc == -EINVAL || rc == -E2BIG);
    }
    /* and every input, as a topic, maps to a subject that decodes back to it */
    if (size <= 2048) {
        char s2[3 * 2048 + 64], t2[2048];
        size_t n = kr_cl_subject(s2, sizeof(s2), "kraken", (const char *)data, (uint32_t)size);
        KR_FUZZ_CHECK(n > 0);
        uint32_t l2 = 0;
        KR_FUZZ_CHECK(kr_cl_subject_topic(s2, "kraken", t2, sizeof(t2), &l2) == 0);
        KR_FUZZ_CHECK(l2 == size && memcmp(t2, data, size) == 0);
    }
    free(subj);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *whole = malloc(size ? size : 1);
    KR_FUZZ_CHECK(whole != NULL);
    memcpy(whole, data, size);
    kr_fuzz_body(whole, size);
    free(whole);
    if (size <= KR_FUZZ_MAX_SPLIT) {
        for (size_t cut = 0; cut < size; cut++) {
            char *p = malloc(cut ? cut : 1);
            KR_FUZZ_CHECK(p != NULL);
            memcpy(p, data, cut);
            kr_fuzz_body(p, cut);
            free(p);
        }
    }
    kr_fuzz_subject(data, size);
    return 0;
}
