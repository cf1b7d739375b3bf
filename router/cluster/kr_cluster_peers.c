/* The cluster link thread's dealings with the other nodes (see kr_cluster_int.h): probes
 * (the subscribe barrier's proof that every node's server holds the new interest), peers and
 * heartbeats, the items libnats' threads queued for the link, lost forwards (the windows of
 * recently forwarded topics and the notices sent after a reconnect) and the resyncs they
 * cause. Everything here runs on the link thread. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kr_cluster_int.h"
#include "kr_cluster_wire.h"
#include "kr_log.h"
#include "kr_util.h"

static void kr_cl_resync(struct kr_cluster *cl, const char *pairs, size_t plen, uint32_t np);

/* ---------------------------------------------------------------- probes and peers */

/* Publish the probe in flight (again after a reconnect: libnats sent the subscriptions
 * again first, so it still follows them). */
static void kr_cl_publish_probe(struct kr_cluster *cl)
{
    cl->probe_sent_ms = kr_cl_now_ms();
    if (cl->npeers == 0 || !cl->connected)
        return; /* completed by kr_cl_probe_check (no one to ask), or sent on reconnect */
    char body[32];
    size_t bl = kr_cl_ctl_encode(body, 'P', cl->origin, cl->probe_sent);
    natsConnection_Publish(cl->nc, cl->subj_probe, body, (int)bl);
}

static void kr_cl_send_probe(struct kr_cluster *cl)
{
    cl->need_probe = false;
    cl->probe_sent++;
    kr_cl_publish_probe(cl);
}

/* The probe in flight is complete once every node known when it was sent answered it (a
 * node that left since does not count). Then its topics are in force, and the requests
 * that waited for it are answered. */
void kr_cl_probe_check(struct kr_cluster *cl)
{
    uint64_t now = kr_cl_now_ms();
    if (cl->probe_done == cl->probe_sent) {
        if (cl->need_probe)
            kr_cl_send_probe(cl);
        if (cl->probe_done == cl->probe_sent)
            return;
    }
    /* nodes learn of each other by heartbeats: until one period (and some) has passed since
     * the start, a node may not know every other yet */
    if (!cl->connected || now - cl->start_ms < KR_CL_HB_MS + 500)
        return;
    bool complete = true, timed_out = false;
    for (uint32_t i = 0; i < cl->npeers && complete; i++)
        if (cl->peers[i].first_ms <= cl->probe_sent_ms && cl->peers[i].acked < cl->probe_sent)
            complete = false;
    if (!complete && now >= cl->probe_sent_ms + KR_CL_PROBE_TIMEOUT_MS) {
        KR_CL_INC(cl, barrier_timeouts, 1);
        uint64_t suppressed = 0;
        static struct kr_log_ratelimit rl;
        if (kr_log_enabled(KR_LOG_WARN) && kr_log_ratelimit(&rl, 10, 10000, &suppressed))
            KR_WARN("cluster: a node did not answer probe %llu within %d ms; its NATS server "
                    "may not hold the new interest yet (suppressed %llu similar)",
                    (unsigned long long)cl->probe_sent, KR_CL_PROBE_TIMEOUT_MS,
                    (unsigned long long)suppressed);
        complete = true;
        timed_out = true;
    }
    if (!complete)
        return;
    cl->probe_done = cl->probe_sent;
    uint64_t now_us = kr_msg_clock_us();
    size_t keep = 0;
    char *told = NULL; /* a timed-out probe's topics, as pairs: their subscribers are told */
    size_t told_len = 0, told_cap = 0;
    uint32_t ntold = 0;
    for (size_t i = 0; i < cl->npend; i++) {
        struct kr_cl_topic *e = cl->pend[i];
        if (e->probe <= cl->probe_done) {
            e->since_us = now_us;
            if (timed_out) {
                KR_GROW_MIN(told, told_cap, told_len + 4 + e->len, 256);
                told_len += kr_cl_pair(told + told_len, e->name, e->len);
                ntold++;
            }
        } else {
            cl->pend[keep++] = e;
        }
    }
    cl->npend = keep;
    if (ntold) /* a node may not hold their interest yet: what it forwards may be lost */
        kr_cl_resync(cl, told, told_len, ntold);
    free(told);
    keep = 0;
    for (size_t i = 0; i < cl->nwaits; i++) {
        struct kr_cl_wait *w = &cl->waits[i];
        if (w->probe <= cl->probe_done) {
            KR_CL_INC(cl, barrier_time, (now - w->since_ms) * 1000);
            kr_cl_answer(cl, &w->ev);
        } else {
            cl->waits[keep++] = *w;
        }
    }
    cl->nwaits = keep;
    if (cl->need_probe)
        kr_cl_send_probe(cl);
}

static struct kr_cl_peer *kr_cl_peer(struct kr_cluster *cl, uint64_t origin, uint64_t now)
{
    for (uint32_t i = 0; i < cl->npeers; i++)
        if (cl->peers[i].origin == origin) {
            cl->peers[i].last_ms = now;
            return &cl->peers[i];
        }
    /* one taken for silent is back (a partition between NATS servers healed): what it
     * published meanwhile never came here, on any topic */
    for (uint32_t i = 0; i < cl->nsilent; i++) {
        if (cl->silent[i] != origin)
            continue;
        cl->silent[i] = cl->silent[--cl->nsilent];
        KR_CL_INC(cl, peer_returns, 1);
        KR_WARN("cluster: node %016" PRIx64 " is back after a silence; what it published "
                "meanwhile did not come here: every local subscriber of the %zu topics held is "
                "told to resync", origin, cl->ntopics);
        kr_cl_resync(cl, NULL, 0, 0);
        break;
    }
    KR_GROW_MIN(cl->peers, cl->peers_cap, cl->npeers + 1, 8);
    struct kr_cl_peer *p = &cl->peers[cl->npeers++];
    memset(p, 0, sizeof(*p));
    p->origin = origin;
    p->first_ms = p->last_ms = now;
    snprintf(p->name, sizeof(p->name), "%016" PRIx64, origin);
    ck_pr_store_64(&cl->st.peers, cl->npeers);
    return p;
}

void kr_cl_peers_expire(struct kr_cluster *cl, uint64_t now)
{
    for (uint32_t i = 0; i < cl->npeers;) {
        if (now > cl->peers[i].last_ms + KR_CL_PEER_DEAD_MS) {
            KR_WARN("cluster: node %s (%016" PRIx64 ") not heard from for %d ms: it left",
                    cl->peers[i].name, cl->peers[i].origin, KR_CL_PEER_DEAD_MS);
            uint64_t origin = cl->peers[i].origin;
            cl->peers[i] = cl->peers[--cl->npeers];
            kr_cl_peer_gone(cl, origin, true); /* it did not say so: a silent peer */
        } else {
            i++;
        }
    }
    ck_pr_store_64(&cl->st.peers, cl->npeers);
}

/* ---------------------------------------------------------------- resyncs */

/* Tell every local subscriber of these topics (pairs as in a lost notice, or every held
 * topic when pairs is NULL) that it may have missed messages: KR_EV_RESYNC to the shards. */
static void kr_cl_resync(struct kr_cluster *cl, const char *pairs, size_t plen, uint32_t np)
{
    struct kr_router *r = cl->o.router;
    uint32_t nshards = kr_router_nshards(r);
    struct kr_router_cmd *cmds[64] = {0};
    uint64_t ntopics = 0;
    if (pairs) {
        struct kr_cl_body b = {.kind = 'L', .ntopics = np, .rest = pairs, .rest_len = plen};
        size_t pos = 0;
        const char *t;
        uint32_t len;
        while (kr_cl_next_topic(&b, &pos, &t, &len)) {
            if (!kr_cl_find(cl, t, len, kr_topic_hash(t, len)))
                continue; /* no local subscriber took it */
            uint32_t s = kr_router_shard_of(r, t, len);
            if (!cmds[s])
                cmds[s] = kr_router_cmd_new(256);
            cmds[s] = kr_router_cmd_add(cmds[s], t, len);
            ntopics++;
        }
    } else {
        for (size_t i = 0; i < cl->nbuckets; i++)
            for (struct kr_cl_topic *e = cl->buckets[i]; e; e = e->next) {
                uint32_t s = kr_router_shard_of_hash(r, e->hash);
                if (!cmds[s])
                    cmds[s] = kr_router_cmd_new(256);
                cmds[s] = kr_router_cmd_add(cmds[s], e->name, e->len);
                ntopics++;
            }
    }
    for (uint32_t s = 0; s < nshards; s++) {
        if (!cmds[s])
            continue;
        struct kr_event ev = {.type = KR_EV_RESYNC, .src = (uint16_t)cl->o.ctl_idx, .ptr = cmds[s]};
        kr_cl_to_shard(cl, s, &ev);
    }
    kr_router_flush(r, cl->o.ctl_idx);
    KR_CL_INC(cl, resync_topics, ntopics);
}

void kr_cl_lost_add(struct kr_cluster *cl, const char *t, uint32_t len)
{
    if (cl->lost_all)
        return;
    if (cl->lost_len + 4 + len > KR_CL_RECENT_BYTES) {
        /* a long outage: more lost topics than are worth listing (and repeats): the notice
         * becomes "every topic", and what is kept stays bounded */
        cl->lost_all = true;
        free(cl->lost);
        cl->lost = NULL;
        cl->lost_len = cl->lost_cap = 0;
        cl->lost_n = 0;
        return;
    }
    KR_GROW_MIN(cl->lost, cl->lost_cap, cl->lost_len + 4 + len, 256);
    cl->lost_len += kr_cl_pair(cl->lost + cl->lost_len, t, len);
    cl->lost_n++;
}

/* After a reconnect: announce, by topic, the copies libnats refused meanwhile. */
static void kr_cl_lost_announce(struct kr_cluster *cl)
{
    if (!cl->connected)
        return;
    if (cl->lost_all) {
        char body[32];
        size_t bl = kr_cl_ctl_encode(body, 'R', cl->origin, 0);
        natsConnection_Publish(cl->nc, cl->subj_lost, body, (int)bl);
        KR_CL_INC(cl, resyncs_sent, 1);
        KR_WARN("cluster: forwards on more topics than are tracked may have been lost while "
                "the link was down; the other nodes were told to resync every subscriber");
        cl->lost_all = false;
        cl->lost_len = 0;
        cl->lost_n = 0;
        return;
    }
    if (!cl->lost_n)
        return;
    struct kr_cl_body b = {.kind = 'L', .ntopics = cl->lost_n, .rest = cl->lost,
                           .rest_len = cl->lost_len};
    char *buf = kr_xmalloc(KR_CL_LOST_HEADER + KR_CL_LOST_CHUNK + 4 + 65536);
    size_t pos = 0, used = 0;
    uint32_t n = 0;
    const char *t;
    uint32_t len;
    bool more = true;
    while (more) {
        more = kr_cl_next_topic(&b, &pos, &t, &len);
        if (more && len <= 65536) {
            used += kr_cl_pair(buf + KR_CL_LOST_HEADER + used, t, len);
            n++;
        }
        if (n && (!more || used >= KR_CL_LOST_CHUNK)) {
            kr_cl_lost_header(buf, cl->origin, n);
            natsConnection_Publish(cl->nc, cl->subj_lost, buf, (int)(KR_CL_LOST_HEADER + used));
            KR_CL_INC(cl, resyncs_sent, 1);
            used = 0;
            n = 0;
        }
    }
    free(buf);
    KR_WARN("cluster: forwards on %u topics may have been lost while the link was down; the "
            "other nodes were told by topic", cl->lost_n);
    cl->lost_len = 0;
    cl->lost_n = 0;
}

/* ---------------------------------------------------------------- recent forwards */


void kr_cl_window_add(struct kr_cl_recent *w, uint32_t slots, size_t bytes, const char *t,
                      uint32_t len, uint64_t h)
{
    if (w->overflow)
        return;
    h |= 1; /* 0 marks an empty slot */
    uint32_t i = (uint32_t)h & (slots - 1);
    while (w->slots[i]) {
        if (w->slots[i] == h)
            return; /* already in (or a hash twin: announced with the other, harmless) */
        i = (i + 1) & (slots - 1);
    }
    if (w->n >= slots / 2 || w->len + 4 + len > bytes) {
        w->overflow = true;
        return;
    }
    w->slots[i] = h;
    w->n++;
    w->len += kr_cl_pair(w->pairs + w->len, t, len);
}

void kr_cl_window_clear(struct kr_cl_recent *w, uint32_t slots)
{
    if (w->n)
        memset(w->slots, 0, slots * sizeof(*w->slots));
    w->n = 0;
    w->len = 0;
    w->overflow = false;
}

void kr_cl_recent_add(struct kr_cluster *cl, const char *t, uint32_t len, uint64_t h)
{
    kr_cl_window_add(&cl->recent[cl->recent_cur], KR_CL_RECENT_SLOTS, KR_CL_RECENT_BYTES, t,
                     len, h);
}

static void kr_cl_recent_clear(struct kr_cl_recent *w)
{
    kr_cl_window_clear(w, KR_CL_RECENT_SLOTS);
}

void kr_cl_peer_gone(struct kr_cluster *cl, uint64_t origin, bool silent)
{
    if (silent) { /* remembered: if it comes back, it was cut off, not dead */
        if (cl->nsilent == KR_CL_MAX_SILENT) /* the oldest is forgotten */
            memmove(cl->silent, cl->silent + 1, (KR_CL_MAX_SILENT - 1) * sizeof(*cl->silent));
        cl->silent[cl->nsilent < KR_CL_MAX_SILENT ? cl->nsilent++ : KR_CL_MAX_SILENT - 1] = origin;
    }
    /* take its windows' topics (a copy: the delivery thread goes on filling others) */
    char *pairs = NULL;
    size_t len = 0;
    uint32_t n = 0;
    bool all = false;
    pthread_mutex_lock(&cl->win_mu);
    for (uint32_t i = 0; i < cl->norigins; i++) {
        struct kr_cl_origin *o = &cl->origins[i];
        if (o->origin != origin || !o->win)
            continue;
        for (int k = 0; k < 2; k++) {
            struct kr_cl_recent *w = &o->win->w[k];
            all = all || w->overflow;
            if (silent && w->len) {
                pairs = kr_xrealloc(pairs, len + w->len);
                memcpy(pairs + len, w->pairs, w->len);
                len += w->len;
                n += w->n;
            }
            kr_cl_window_clear(w, KR_CL_PEER_SLOTS);
        }
    }
    pthread_mutex_unlock(&cl->win_mu);
    if (silent && (all || n)) {
        KR_CL_INC(cl, peer_silences, 1);
        KR_WARN("cluster: node %016" PRIx64 " went silent without saying it left; the local "
                "subscribers of %s it forwarded here lately are told to resync",
                origin, all ? "every topic (too many)" : "the topics");
        if (all)
            kr_cl_resync(cl, NULL, 0, 0);
        else
            kr_cl_resync(cl, pairs, len, n);
    } else if (silent) {
        KR_CL_INC(cl, peer_silences, 1);
    }
    free(pairs);
}

/* Every half of KR_CL_RECENT_MS: the older window is forgotten and refilled. */
void kr_cl_recent_rotate(struct kr_cluster *cl, uint64_t now)
{
    if (now < cl->recent_since_ms + KR_CL_RECENT_MS / 2)
        return;
    cl->recent_since_ms = now;
    cl->recent_cur ^= 1;
    kr_cl_recent_clear(&cl->recent[cl->recent_cur]);
}

/* The link lost its server: what it forwarded lately may not have reached the others. */
static void kr_cl_recent_lost(struct kr_cluster *cl)
{
    for (int k = 0; k < 2; k++) {
        struct kr_cl_recent *w = &cl->recent[k];
        if (w->overflow) {
            cl->lost_all = true;
        } else if (w->len) {
            struct kr_cl_body b = {.kind = 'L', .ntopics = w->n, .rest = w->pairs,
                                   .rest_len = w->len};
            size_t pos = 0;
            const char *t;
            uint32_t len;
            while (kr_cl_next_topic(&b, &pos, &t, &len))
                kr_cl_lost_add(cl, t, len);
        }
        kr_cl_recent_clear(w);
    }
}

/* ---------------------------------------------------------------- items and heartbeats */

void kr_cl_items(struct kr_cluster *cl, uint64_t now)
{
    pthread_mutex_lock(&cl->mu);
    struct kr_cl_item *it = cl->ihead;
    cl->ihead = cl->itail = NULL;
    pthread_mutex_unlock(&cl->mu);
    while (it) {
        struct kr_cl_item *next = it->next;
        switch (it->kind) {
        case 'H': {
            uint32_t before = cl->npeers;
            struct kr_cl_peer *p = kr_cl_peer(cl, it->origin, now);
            if (cl->npeers != before) { /* a new node: let it know this one at once */
                KR_INFO("cluster: node %.*s (%016" PRIx64 ") joined", (int)it->len, it->data,
                        it->origin);
                cl->last_hb_ms = 0;
                kr_cl_heartbeat(cl, now);
            }
            size_t nl = it->len < sizeof(p->name) - 1 ? it->len : sizeof(p->name) - 1;
            memcpy(p->name, it->data, nl);
            p->name[nl] = 0;
            break;
        }
        case 'h':
            kr_cl_peer(cl, it->origin, now);
            break;
        case 'A': {
            struct kr_cl_peer *p = kr_cl_peer(cl, it->origin, now);
            if (it->seq > p->acked)
                p->acked = it->seq;
            break;
        }
        case 'q': /* another node resumes a token of this one ('Q' body) */
            kr_cl_serve_item(cl, it);
            break;
        case 'a': /* an answer to one of this node's resumes ('S' body) */
            kr_cl_answer_item(cl, it);
            break;
        case 'G': /* a node that leaves says so: not a silent peer */
            for (uint32_t i = 0; i < cl->npeers; i++) {
                if (cl->peers[i].origin != it->origin)
                    continue;
                KR_INFO("cluster: node %s (%016" PRIx64 ") left", cl->peers[i].name, it->origin);
                cl->peers[i] = cl->peers[--cl->npeers];
                ck_pr_store_64(&cl->st.peers, cl->npeers);
                break;
            }
            kr_cl_peer_gone(cl, it->origin, false);
            break;
        case 'R':
            KR_CL_INC(cl, resyncs_received, 1);
            KR_WARN("cluster: node %016" PRIx64 " may have lost forwards on any topic; every "
                    "local subscriber of a held topic is told to resync", it->origin);
            kr_cl_peer(cl, it->origin, now);
            kr_cl_resync(cl, NULL, 0, 0);
            break;
        case 'L':
            KR_CL_INC(cl, resyncs_received, 1);
            KR_WARN("cluster: node %016" PRIx64 " lost forwards on %llu topics; their local "
                    "subscribers are told to resync", it->origin, (unsigned long long)it->seq);
            kr_cl_peer(cl, it->origin, now);
            kr_cl_resync(cl, it->data, it->len, (uint32_t)it->seq);
            break;
        case 'S': {
            char topic[4096];
            uint32_t tl;
            if (kr_cl_subject_topic(it->data, cl->prefix, topic, sizeof(topic), &tl) != 0)
                break; /* a control subject: unbounded, cannot be it */
            KR_CL_INC(cl, slow_consumers, 1);
            uint64_t suppressed = 0;
            static struct kr_log_ratelimit rl;
            if (kr_log_enabled(KR_LOG_WARN) && kr_log_ratelimit(&rl, 10, 10000, &suppressed))
                KR_WARN("cluster: topic %.*s: more than cluster_max_pending entries from the "
                        "cluster waited for the shards; the cluster dropped some and its "
                        "subscribers are told to resync (suppressed %llu similar)",
                        (int)(tl > 200 ? 200 : tl), topic, (unsigned long long)suppressed);
            struct kr_cl_topic *e = kr_cl_find(cl, topic, tl, kr_topic_hash(topic, tl));
            if (e && e->since_us)
                e->since_us = kr_msg_clock_us(); /* coverage restarts: retro NOT_FOUND */
            char pair[4096 + 4];
            size_t pl = kr_cl_pair(pair, topic, tl);
            kr_cl_resync(cl, pair, pl, 1);
            break;
        }
        case 'd':
            kr_cl_recent_lost(cl); /* announced once linked again */
            cl->connected = false;
            ck_pr_store_64(&cl->st.connected, 0);
            KR_WARN("cluster: disconnected from the NATS server; reconnecting");
            break;
        case 'c':
        case 'r': {
            bool re = it->kind == 'r';
            cl->connected = true;
            ck_pr_store_64(&cl->st.connected, 1);
            char url[128] = "";
            natsConnection_GetConnectedUrl(cl->nc, url, sizeof(url));
            if (re || cl->ntopics) { /* linked after a time unlinked: resync */
                if (re)
                    KR_CL_INC(cl, reconnects, 1);
                KR_WARN("cluster: %s %s; local subscribers of the %zu topics held may have "
                        "missed messages and are told to resync",
                        re ? "reconnected to" : "linked up with", url, cl->ntopics);
                /* coverage restarts now: older retroactive horizons answer NOT_FOUND */
                uint64_t now_us = kr_msg_clock_us();
                for (size_t i = 0; i < cl->nbuckets; i++)
                    for (struct kr_cl_topic *e = cl->buckets[i]; e; e = e->next)
                        if (e->since_us)
                            e->since_us = now_us;
                kr_cl_resync(cl, NULL, 0, 0);
                kr_cl_lost_announce(cl);
            } else {
                KR_INFO("cluster: connected to %s", url);
            }
            if (cl->probe_done != cl->probe_sent) /* the probe in flight, again */
                kr_cl_publish_probe(cl);
            break;
        }
        default:
            break;
        }
        free(it);
        it = next;
    }
}

void kr_cl_heartbeat(struct kr_cluster *cl, uint64_t now)
{
    if (!cl->connected || now - cl->last_hb_ms < KR_CL_HB_MS)
        return;
    cl->last_hb_ms = now;
    char body[96];
    size_t bl = kr_cl_hb_encode(body, sizeof(body), cl->origin, cl->name);
    natsConnection_Publish(cl->nc, cl->subj_hb, body, (int)bl);
}
