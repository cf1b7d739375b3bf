/* Queue module implementation: messages, topic sets, mailboxes, waiters. */
#include "kr_queue.h"

#include "kr_util.h"

#include <ck_pr.h>
#include <ck_ring.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>


/* ---------------------------------------------------------------- messages */

struct kr_msg {
    uint32_t refs;
    uint32_t ntopics;
    uint64_t publisher;
    uint64_t time_us;
    uint32_t payload_len;
    uint32_t nshards;
    uint32_t nslots;
    uint32_t size;
    uint64_t origin; /* the node that published it (0: this node), see kr_msg_origin */
    uint64_t oseq;   /* its origin's sequence for it (0: not forwarded yet) */
    /* then: void *slots[nslots]; uint64_t topic_hash[ntopics]; uint64_t topic_seq[ntopics];
     * uint64_t topic_link[ntopics]; uint32_t topic_off[ntopics + 1]; topic bytes; payload */
    char data[];
};

static inline void **kr_msg_slots(const struct kr_msg *m)
{
    return (void **)(uintptr_t)m->data;
}

static inline uint64_t *kr_msg_hashes(const struct kr_msg *m)
{
    return (uint64_t *)(uintptr_t)(m->data + m->nslots * sizeof(void *));
}

static inline uint64_t *kr_msg_seqs(const struct kr_msg *m)
{
    return (uint64_t *)(uintptr_t)(m->data + m->nslots * sizeof(void *) +
                                   m->ntopics * sizeof(uint64_t));
}

static inline uint64_t *kr_msg_links(const struct kr_msg *m)
{
    return (uint64_t *)(uintptr_t)(m->data + m->nslots * sizeof(void *) +
                                   2 * m->ntopics * sizeof(uint64_t));
}

static inline uint32_t *kr_msg_offs(const struct kr_msg *m)
{
    return (uint32_t *)(uintptr_t)(m->data + m->nslots * sizeof(void *) +
                                   3 * m->ntopics * sizeof(uint64_t));
}

static inline char *kr_msg_bytes(const struct kr_msg *m)
{
    return (char *)(uintptr_t)(m->data + m->nslots * sizeof(void *) +
                               3 * m->ntopics * sizeof(uint64_t) +
                               (m->ntopics + 1) * sizeof(uint32_t));
}

uint64_t kr_topic_hash(const char *topic, size_t len)
{
    return XXH3_64bits(topic, len);
}

struct kr_msg *kr_msg_create(uint64_t publisher, uint64_t time_us, uint32_t ntopics,
                             const char *const *topics, const uint32_t *topic_lens,
                             const char *payload, uint32_t payload_len, uint32_t nslots)
{
    return kr_msg_create_hashed(publisher, time_us, ntopics, topics, topic_lens, NULL, payload,
                                payload_len, nslots);
}

struct kr_msg *kr_msg_create_hashed(uint64_t publisher, uint64_t time_us, uint32_t ntopics,
                                    const char *const *topics, const uint32_t *topic_lens,
                                    const uint64_t *topic_hashes, const char *payload,
                                    uint32_t payload_len, uint32_t nslots)
{
    size_t tbytes = 0;
    for (uint32_t i = 0; i < ntopics; i++)
        tbytes += topic_lens[i];
    size_t size = sizeof(struct kr_msg) + nslots * sizeof(void *) +
                  3 * ntopics * sizeof(uint64_t) + (ntopics + 1) * sizeof(uint32_t) + tbytes +
                  payload_len;
    struct kr_msg *m = kr_xmalloc(size);
    m->refs = 1;
    m->ntopics = ntopics;
    m->publisher = publisher;
    m->time_us = time_us;
    m->payload_len = payload_len;
    m->nshards = 1;
    m->nslots = nslots;
    m->size = (uint32_t)(size > UINT32_MAX ? UINT32_MAX : size);
    m->origin = 0;
    m->oseq = 0;
    if (nslots)
        memset(kr_msg_slots(m), 0, nslots * sizeof(void *));
    uint32_t *offs = kr_msg_offs(m);
    uint64_t *hashes = kr_msg_hashes(m);
    memset(kr_msg_seqs(m), 0, 2 * ntopics * sizeof(uint64_t)); /* the sequences and links */
    char *b = kr_msg_bytes(m);
    uint32_t off = 0;
    for (uint32_t i = 0; i < ntopics; i++) {
        hashes[i] = topic_hashes ? topic_hashes[i] : kr_topic_hash(topics[i], topic_lens[i]);
        offs[i] = off;
        memcpy(b + off, topics[i], topic_lens[i]);
        off += topic_lens[i];
    }
    offs[ntopics] = off;
    if (payload_len)
        memcpy(b + off, payload, payload_len);
    return m;
}

void kr_msg_set_seq(struct kr_msg *m, uint32_t i, uint32_t shard, uint64_t seq)
{
    kr_msg_seqs(m)[i] = ((uint64_t)shard << KR_SEQ_SHARD_SHIFT) | (seq & KR_SEQ_MASK);
}

uint64_t kr_msg_seq(const struct kr_msg *m, uint32_t i, uint32_t *shard)
{
    uint64_t v = kr_msg_seqs(m)[i];
    if (shard)
        *shard = (uint32_t)(v >> KR_SEQ_SHARD_SHIFT);
    return v & KR_SEQ_MASK;
}

void kr_msg_set_origin(struct kr_msg *m, uint64_t origin, uint64_t oseq)
{
    m->origin = origin;
    m->oseq = oseq;
}

void kr_msg_stamp_oseq(struct kr_msg *m, uint64_t oseq)
{
    ck_pr_store_64(&m->oseq, oseq);
}

uint64_t kr_msg_origin(const struct kr_msg *m, uint64_t *oseq)
{
    *oseq = ck_pr_load_64((uint64_t *)&m->oseq);
    return m->origin;
}

void kr_msg_set_link(struct kr_msg *m, uint32_t i, uint64_t link)
{
    kr_msg_links(m)[i] = link;
}

uint64_t kr_msg_link(const struct kr_msg *m, uint32_t i)
{
    return kr_msg_links(m)[i];
}

void kr_msg_ref(struct kr_msg *m, uint32_t n)
{
    ck_pr_add_32(&m->refs, n);
}

/* The last reference is gone. */
static void kr_msg_free(struct kr_msg *m)
{
    KR_TSAN_ACQUIRE(m);
    /* a slot's record still attached (the server stopped before every shard reported):
     * a plain block nothing else references once the message is gone (see kr_msg_slot) */
    for (uint32_t i = 0; i < m->nslots; i++)
        free(kr_msg_slots(m)[i]);
    free(m);
}

void kr_msg_unref_n(struct kr_msg *m, uint32_t n)
{
    /* The subtraction orders this thread's reads of the message before the last holder's
     * free; ThreadSanitizer cannot see ck's atomics, so say it. */
    KR_TSAN_RELEASE(m);
    if (ck_pr_faa_32(&m->refs, (uint32_t)-n) == n)
        kr_msg_free(m);
}

void kr_msg_unref(struct kr_msg *m)
{
    kr_msg_unref_n(m, 1);
}

void kr_msg_prefetch(const struct kr_msg *m)
{
    /* the header (for writing: the reference count) and the two lines after it, where the
     * topic hashes and sequences of a message of a few topics and slots lie; reading the
     * header's counts to aim further would wait for the very line being asked for */
    const char *p = (const char *)m;
    __builtin_prefetch(p, 1);
    __builtin_prefetch(p + 64);
    __builtin_prefetch(p + 128);
}

uint32_t kr_msg_refs(const struct kr_msg *m) { return ck_pr_load_32(&m->refs); }
uint64_t kr_msg_publisher(const struct kr_msg *m) { return m->publisher; }
uint64_t kr_msg_time_us(const struct kr_msg *m) { return m->time_us; }
uint32_t kr_msg_ntopics(const struct kr_msg *m) { return m->ntopics; }
size_t kr_msg_size(const struct kr_msg *m) { return m->size; }
void kr_msg_set_nshards(struct kr_msg *m, uint32_t nshards) { m->nshards = nshards; }
uint32_t kr_msg_nshards(const struct kr_msg *m) { return m->nshards; }

const char *kr_msg_topic(const struct kr_msg *m, uint32_t i, uint32_t *len)
{
    const uint32_t *offs = kr_msg_offs(m);
    *len = offs[i + 1] - offs[i];
    return kr_msg_bytes(m) + offs[i];
}

uint64_t kr_msg_topic_hash(const struct kr_msg *m, uint32_t i)
{
    return kr_msg_hashes(m)[i];
}

const char *kr_msg_payload(const struct kr_msg *m, uint32_t *len)
{
    *len = m->payload_len;
    return kr_msg_bytes(m) + kr_msg_offs(m)[m->ntopics];
}

void **kr_msg_slot(struct kr_msg *m, uint32_t i)
{
    return &kr_msg_slots(m)[i];
}

/* ---------------------------------------------------------------- topic sets */

uint64_t *kr_topicset_alloc_(uint32_t ntopics)
{
    return kr_xcalloc((ntopics + 63) / 64, sizeof(uint64_t));
}

static uint64_t kr_msg_clock_last;

uint64_t kr_msg_clock_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    uint64_t last = ck_pr_load_64(&kr_msg_clock_last);
    for (;;) {
        uint64_t next = now > last ? now : last + 1;
        if (ck_pr_cas_64_value(&kr_msg_clock_last, last, next, &last))
            return next;
    }
}

/* ---------------------------------------------------------------- mailboxes */

CK_RING_PROTOTYPE(kr_event, kr_event)

struct kr_mailbox {
    struct ck_ring ring; /* producer and consumer indexes on their own cache lines */
    struct kr_event *buf;
};

struct kr_mailbox *kr_mailbox_create(uint32_t capacity)
{
    uint32_t size = 2;
    while (size < capacity + 1)
        size <<= 1;
    struct kr_mailbox *mb;
    if (posix_memalign((void **)&mb, 64, sizeof(*mb)) != 0)
        mb = NULL;
    if (!mb) {
        fprintf(stderr, "kraken: out of memory allocating a mailbox\n");
        abort();
    }
    mb->buf = kr_xmalloc(sizeof(struct kr_event) * size);
    ck_ring_init(&mb->ring, size);
    return mb;
}

void kr_mailbox_destroy(struct kr_mailbox *mb)
{
    if (!mb)
        return;
    free(mb->buf);
    free(mb);
}

#ifdef KR_TSAN
/* Under ThreadSanitizer, fill the slot by hand between reserve and commit so the hand-off of
 * that slot can be annotated: the producer releases it after writing, the consumer acquires
 * it before reading (and releases it after, for the producer's next write to that slot). */
bool kr_mailbox_push(struct kr_mailbox *mb, const struct kr_event *ev)
{
    struct kr_event *slot = ck_ring_enqueue_reserve_spsc_kr_event(&mb->ring, mb->buf);
    if (!slot)
        return false;
    KR_TSAN_ACQUIRE(slot);
    *slot = *ev;
    KR_TSAN_RELEASE(slot);
    ck_ring_enqueue_commit_spsc(&mb->ring);
    return true;
}

bool kr_mailbox_pop(struct kr_mailbox *mb, struct kr_event *ev)
{
    if (ck_ring_size(&mb->ring) == 0)
        return false; /* seen non-empty: the producer released the slot before committing */
    struct kr_event *slot = &mb->buf[mb->ring.c_head & mb->ring.mask];
    KR_TSAN_ACQUIRE(slot);
    bool ok = ck_ring_dequeue_spsc_kr_event(&mb->ring, mb->buf, ev);
    if (ok)
        KR_TSAN_RELEASE(slot);
    return ok;
}
#else
bool kr_mailbox_push(struct kr_mailbox *mb, const struct kr_event *ev)
{
    return ck_ring_enqueue_spsc_kr_event(&mb->ring, mb->buf, (struct kr_event *)ev);
}

bool kr_mailbox_pop(struct kr_mailbox *mb, struct kr_event *ev)
{
    return ck_ring_dequeue_spsc_kr_event(&mb->ring, mb->buf, ev);
}
#endif

uint32_t kr_mailbox_depth(const struct kr_mailbox *mb)
{
    return ck_ring_size(&mb->ring);
}

uint32_t kr_mailbox_pushed(const struct kr_mailbox *mb)
{
    return ck_pr_load_uint(&mb->ring.p_tail);
}

uint32_t kr_mailbox_taken(const struct kr_mailbox *mb)
{
    return ck_pr_load_uint(&mb->ring.c_head);
}

uint32_t kr_mailbox_capacity(const struct kr_mailbox *mb)
{
    return ck_ring_capacity(&mb->ring) - 1;
}

/* ---------------------------------------------------------------- waiter */

int kr_waiter_init(struct kr_waiter *w)
{
    w->sleeping = 0;
    w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return w->efd < 0 ? -errno : 0;
}

void kr_waiter_destroy(struct kr_waiter *w)
{
    if (w->efd >= 0)
        close(w->efd);
    w->efd = -1;
}

void kr_waiter_wake(struct kr_waiter *w)
{
    /* Pair with the consumer's store of `sleeping` then re-check of the mailboxes: the
     * producer's push happened before this load (full fence), so either the consumer sees
     * the event or we see it sleeping. */
    ck_pr_fence_memory();
    if (ck_pr_load_int(&w->sleeping) && ck_pr_fas_int(&w->sleeping, 0)) {
        uint64_t one = 1;
        ssize_t r = write(w->efd, &one, sizeof(one));
        (void)r; /* EAGAIN means the counter is already non-zero: a wake-up is pending */
    }
}

void kr_waiter_prepare(struct kr_waiter *w)
{
    ck_pr_store_int(&w->sleeping, 1);
    ck_pr_fence_memory();
}

void kr_waiter_cancel(struct kr_waiter *w)
{
    ck_pr_store_int(&w->sleeping, 0);
}

void kr_waiter_sleep(struct kr_waiter *w, int timeout_ms)
{
    struct pollfd pfd = {.fd = w->efd, .events = POLLIN};
    if (ck_pr_load_int(&w->sleeping))
        (void)poll(&pfd, 1, timeout_ms);
    uint64_t v;
    ssize_t r = read(w->efd, &v, sizeof(v));
    (void)r;
    ck_pr_store_int(&w->sleeping, 0);
}
