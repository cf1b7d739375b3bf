/* The cluster link (see kr_cluster.h and docs/cluster.md): its lifecycle, on the control
 * thread (options, create, start, stop, destroy), and the calls other threads make: the net
 * threads' ring ends (kr_cluster_send / _flush / _recv: net thread `net`), the wake-up and
 * the stats (any thread). The link's other parts, by thread, are listed in
 * kr_cluster_int.h. */
#include "kr_cluster.h"

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

/* ---------------------------------------------------------------- lifecycle */

static void kr_cl_set_err(char *err, size_t errlen, const char *what, natsStatus s)
{
    snprintf(err, errlen, "cluster: %s: %s", what, natsStatus_GetText(s));
}

static int kr_cl_options(struct kr_cluster *cl, char *err, size_t errlen)
{
    const struct kr_cfg *cfg = cl->cfg;
    natsStatus s = natsOptions_Create(&cl->nopts);
    if (s != NATS_OK) {
        kr_cl_set_err(err, errlen, "options", s);
        return -ENOMEM;
    }
    /* the server list: comma or space separated */
    char list[KR_CFG_STR_MAX];
    snprintf(list, sizeof(list), "%s", cfg->cluster_nats_url);
    const char *urls[64];
    int nurls = 0;
    for (char *save = NULL, *tok = strtok_r(list, ", ", &save); tok && nurls < 64;
         tok = strtok_r(NULL, ", ", &save))
        urls[nurls++] = tok;
    if (nurls == 0) {
        snprintf(err, errlen, "cluster: cluster_nats_url names no server");
        return -EINVAL;
    }
    s = natsOptions_SetServers(cl->nopts, urls, nurls);
    if (s == NATS_OK)
        s = natsOptions_SetName(cl->nopts, cl->name);
    if (s == NATS_OK)
        s = natsOptions_SetNoEcho(cl->nopts, true);
    /* no flusher thread: what is published is written at the link loop's next turn */
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(cl->nopts, true);
    if (s == NATS_OK) /* no reader thread: the link thread reads and writes the socket */
        s = kr_cl_io_options(cl);
    if (s == NATS_OK) /* the first reachable server of the list, in order: the operator's */
        s = natsOptions_SetNoRandomize(cl->nopts, true);
    if (s == NATS_OK) /* only the servers listed, not those the cluster advertises */
        s = natsOptions_SetIgnoreDiscoveredServers(cl->nopts, true);
    if (s == NATS_OK)
        s = natsOptions_UseGlobalMessageDelivery(cl->nopts, true);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(cl->nopts, -1); /* forever */
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(cl->nopts, 250);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectBufSize(cl->nopts, (int)cfg->cluster_reconnect_buf_bytes);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(cl->nopts, 5000); /* a silent server: 4 pings */
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(cl->nopts, 4);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(cl->nopts, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(cl->nopts, kr_cl_disconnected_cb, cl);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(cl->nopts, kr_cl_reconnected_cb, cl);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(cl->nopts, kr_cl_error_cb, cl);
    if (s == NATS_OK && (cfg->cluster_user[0] || cfg->cluster_password[0]))
        s = natsOptions_SetUserInfo(cl->nopts, cfg->cluster_user, cfg->cluster_password);
    if (s == NATS_OK && cfg->cluster_token[0])
        s = natsOptions_SetToken(cl->nopts, cfg->cluster_token);
    if (s == NATS_OK && cfg->cluster_creds_file[0])
        s = natsOptions_SetUserCredentialsFromFiles(cl->nopts, cfg->cluster_creds_file, NULL);
    if (s == NATS_OK && cfg->cluster_tls)
        s = natsOptions_SetSecure(cl->nopts, true);
    if (s == NATS_OK && cfg->cluster_tls_ca_file[0])
        s = natsOptions_LoadCATrustedCertificates(cl->nopts, cfg->cluster_tls_ca_file);
    if (s == NATS_OK && cfg->cluster_tls_cert_file[0])
        s = natsOptions_LoadCertificatesChain(cl->nopts, cfg->cluster_tls_cert_file,
                                              cfg->cluster_tls_key_file);
    if (s == NATS_OK && cfg->cluster_start_degraded)
        s = natsOptions_SetRetryOnFailedConnect(cl->nopts, true, kr_cl_connected_cb, cl);
    if (s != NATS_OK) {
        snprintf(err, errlen, "cluster: NATS options: %s (%s)", natsStatus_GetText(s),
                 nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
        return -EINVAL;
    }
    return 0;
}

static uint64_t kr_cl_random64(void)
{
    uint64_t v = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&v, sizeof(v), 1, f) != 1)
            v = 0;
        fclose(f);
    }
    if (v == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16);
    }
    return v ? v : 1;
}

int kr_cluster_create(const struct kr_cluster_opts *o, struct kr_cluster **out, char *err,
                      size_t errlen)
{
    struct kr_cluster *cl = kr_xcalloc(1, sizeof(*cl));
    cl->o = *o;
    cl->cfg = o->cfg;
    snprintf(cl->prefix, sizeof(cl->prefix), "%s", o->cfg->cluster_subject_prefix);
    cl->prefix_len = strlen(cl->prefix);
    if (o->cfg->cluster_node_name[0]) {
        snprintf(cl->name, sizeof(cl->name), "%.63s", o->cfg->cluster_node_name);
    } else {
        char host[48] = "kraken";
        gethostname(host, sizeof(host) - 1);
        snprintf(cl->name, sizeof(cl->name), "%s:%u", host, o->client_port);
    }
    if (strcmp(o->cfg->cluster_publish_ack, "local") != 0 &&
        strcmp(o->cfg->cluster_publish_ack, "flushed") != 0) {
        free(cl);
        return kr_errf(err, errlen, -EINVAL,
                       "cluster_publish_ack must be local or flushed (got '%s')",
                       o->cfg->cluster_publish_ack);
    }
    cl->origin = o->origin ? o->origin : kr_cl_random64();
    cl->pub_id = kr_conn_id_make(o->ctl_idx, 0, 0);
    snprintf(cl->subj_hb, sizeof(cl->subj_hb), "%s.ctl.hb", cl->prefix);
    snprintf(cl->subj_probe, sizeof(cl->subj_probe), "%s.ctl.probe", cl->prefix);
    snprintf(cl->subj_lost, sizeof(cl->subj_lost), "%s.ctl.lost", cl->prefix);
    snprintf(cl->subj_self, sizeof(cl->subj_self), "%s.node.%016" PRIx64, cl->prefix, cl->origin);
    pthread_mutex_init(&cl->mu, NULL);
    pthread_mutex_init(&cl->win_mu, NULL);
    pthread_mutex_init(&cl->io.mu, NULL);
    cl->io.want_fd = -1;
    uv_sem_init(&cl->stop_sem, 0);
    if (o->cfg->cluster_send_asap)
        KR_WARN("cluster: cluster_send_asap has no effect any more: the link writes what it "
                "forwards at its loop's next turn, all of it in one write");
    cl->nbuckets = 1024;
    cl->buckets = kr_xcalloc(cl->nbuckets, sizeof(*cl->buckets));
    uint32_t cap = o->mailbox_capacity ? o->mailbox_capacity : 8192;
    cl->in = kr_xcalloc(o->nnet, sizeof(*cl->in));
    cl->out = kr_xcalloc(o->nnet, sizeof(*cl->out));
    cl->in_dirty = kr_xcalloc(o->nnet, 64); /* one cache line each */
    cl->in_full = kr_xcalloc(o->nnet, 64);
    for (uint32_t n = 0; n < o->nnet; n++) {
        cl->in[n] = kr_mailbox_create(cap);
        cl->out[n] = kr_mailbox_create(cap);
    }
    cl->out_sink = (struct kr_outbox_sink){.ndest = o->nnet, .mb = cl->out, .wake = o->wake_net,
                                           .arg = o->wake_arg};
    kr_outbox_init(&cl->outbox, &cl->out_sink, KR_OUTBOX_PER_DEST);
    for (int k = 0; k < 2; k++) {
        cl->recent[k].slots = kr_xcalloc(KR_CL_RECENT_SLOTS, sizeof(uint64_t));
        cl->recent[k].pairs = kr_xmalloc(KR_CL_RECENT_BYTES);
    }
    uv_loop_init(&cl->loop);
    uv_async_init(&cl->loop, &cl->wake, kr_cl_wake_cb);
    cl->wake.data = cl;
    uv_timer_init(&cl->loop, &cl->tick);
    cl->tick.data = cl;
    *out = cl;

    /* one delivery thread for every subscription: a fixed, known producer on in_idx */
    natsStatus s = nats_Open(-1);
    if (s == NATS_OK)
        s = nats_SetMessageDeliveryPoolSize(1);
    if (s != NATS_OK) {
        kr_cl_set_err(err, errlen, "library", s);
        return -EINVAL;
    }
    int rc = kr_cl_options(cl, err, errlen);
    if (rc < 0)
        return rc;
    s = natsConnection_Connect(&cl->nc, cl->nopts);
    if (s == NATS_NOT_YET_CONNECTED) {
        KR_WARN("cluster: no NATS server of %s answers; starting degraded (local clients "
                "only) and retrying", o->cfg->cluster_nats_url);
    } else if (s != NATS_OK) {
        const char *why = nats_GetLastError(NULL);
        snprintf(err, errlen, "cluster: cannot reach any NATS server of %s: %s%s%s (set "
                 "cluster_start_degraded = 1 to start without it)",
                 o->cfg->cluster_nats_url, natsStatus_GetText(s), why ? ": " : "", why ? why : "");
        return -ECONNREFUSED;
    } else {
        cl->connected = true;
        ck_pr_store_64(&cl->st.connected, 1);
    }
    const char *subs[4] = {cl->subj_hb, cl->subj_probe, cl->subj_lost, cl->subj_self};
    for (int i = 0; i < 4; i++) {
        s = natsConnection_Subscribe(&cl->ctl_subs[i], cl->nc, subs[i], kr_cl_on_ctl, cl);
        if (s != NATS_OK) {
            kr_cl_set_err(err, errlen, "control subscription", s);
            return -EIO;
        }
        natsSubscription_SetPendingLimits(cl->ctl_subs[i], -1, -1);
    }
    char url[128] = "";
    if (cl->connected)
        natsConnection_GetConnectedUrl(cl->nc, url, sizeof(url));
    KR_INFO("cluster: node %s (origin %016" PRIx64 ") %s%s, subjects %s.*", cl->name, cl->origin,
            cl->connected ? "connected to " : "not connected yet", url, cl->prefix);
    return 0;
}

int kr_cluster_start(struct kr_cluster *cl)
{
    cl->start_ms = kr_cl_now_ms();
    uv_timer_start(&cl->tick, kr_cl_tick_cb, KR_CL_TICK_MS, KR_CL_TICK_MS);
    int rc = uv_thread_create(&cl->thread, kr_cl_main, cl);
    if (rc < 0)
        return rc;
    cl->started = true;
    /* say hello at once: nodes learn of each other before the first barrier */
    kr_cluster_wake(cl);
    return 0;
}

void kr_cluster_stop(struct kr_cluster *cl)
{
    if (!cl)
        return;
    /* The link thread ends its last pass and from then on only serves the NATS socket:
     * the goodbye, the flush and the drain below are read and written by its loop. */
    ck_pr_store_int(&cl->stopping, 1);
    if (cl->started) {
        KR_ASYNC_SEND(&cl->wake);
        uv_sem_wait(&cl->stop_sem);
    }
    /* Say it leaves (everything it acknowledged was written before, in order), so the other
     * nodes do not take it for a silent peer and tell their subscribers to resync. Without
     * the link thread nothing serves the socket: closed at once. */
    if (cl->started && cl->nc && natsConnection_Status(cl->nc) == NATS_CONN_STATUS_CONNECTED) {
        char body[32];
        size_t bl = kr_cl_ctl_encode(body, 'G', cl->origin, 0);
        natsConnection_Publish(cl->nc, cl->subj_hb, body, (int)bl);
        natsConnection_FlushTimeout(cl->nc, 1000);
    }
    /* Drain: libnats unsubscribes, hands what its delivery thread still holds to the
     * callbacks (which drop it now), then closes; a plain close would leave those messages
     * in the delivery pool's queue. Bounded; then closed in any case. */
    if (cl->started && cl->nc && natsConnection_Status(cl->nc) == NATS_CONN_STATUS_CONNECTED &&
        natsConnection_DrainTimeout(cl->nc, 3000) == NATS_OK) {
        for (int i = 0; i < 400 && natsConnection_Status(cl->nc) != NATS_CONN_STATUS_CLOSED; i++) {
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    }
    if (cl->nc)
        natsConnection_Close(cl->nc);
    /* a flush on libuv's pool fails once the connection is closed: wait for it to return
     * before the connection goes (bounded) */
    for (int i = 0; i < 500 && ck_pr_load_int(&cl->flush_running); i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    if (cl->started) {
        ck_pr_store_int(&cl->quit, 1);
        KR_ASYNC_SEND(&cl->wake);
        uv_thread_join(&cl->thread);
        cl->started = false;
    }
    for (int i = 0; i < 4; i++)
        if (cl->ctl_subs[i]) {
            natsSubscription_Destroy(cl->ctl_subs[i]);
            cl->ctl_subs[i] = NULL;
        }
    for (size_t i = 0; i < cl->nbuckets; i++)
        for (struct kr_cl_topic *e = cl->buckets[i]; e; e = e->next)
            if (e->sub) {
                natsSubscription_Destroy(e->sub);
                e->sub = NULL;
            }
    if (cl->nc) {
        natsConnection_Destroy(cl->nc);
        cl->nc = NULL;
    }
    nats_CloseAndWait(2000); /* the library's threads, the delivery pool among them */
}

static void kr_cl_release(struct kr_event *ev)
{
    if (ev->type == KR_EV_PUBLISH)
        kr_msg_unref(ev->ptr);
    else
        free(ev->ptr);
}

static void kr_cl_release_parked(void *arg, uint32_t net, struct kr_event *ev)
{
    (void)arg;
    (void)net;
    kr_cl_release(ev);
}

static void kr_cl_close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void kr_cluster_destroy(struct kr_cluster *cl)
{
    if (!cl)
        return;
    struct kr_event ev;
    for (uint32_t n = 0; n < cl->o.nnet; n++) {
        while (kr_mailbox_pop(cl->in[n], &ev))
            kr_cl_release(&ev);
        while (kr_mailbox_pop(cl->out[n], &ev))
            kr_cl_release(&ev);
    }
    kr_outbox_destroy(&cl->outbox, kr_cl_release_parked, NULL);
    for (uint32_t n = 0; n < cl->o.nnet; n++) {
        kr_mailbox_destroy(cl->in[n]);
        kr_mailbox_destroy(cl->out[n]);
    }
    for (size_t i = 0; i < cl->nwaits; i++)
        free(cl->waits[i].ev.ptr);
    for (size_t i = 0; i < cl->nbuckets; i++) {
        struct kr_cl_topic *e = cl->buckets[i];
        while (e) {
            struct kr_cl_topic *next = e->next;
            free(e);
            e = next;
        }
    }
    struct kr_cl_item *it = cl->ihead;
    while (it) {
        struct kr_cl_item *next = it->next;
        free(it);
        it = next;
    }
    kr_cl_io_close(cl);
    uv_walk(&cl->loop, kr_cl_close_walk, NULL);
    uv_run(&cl->loop, UV_RUN_DEFAULT);
    uv_loop_close(&cl->loop);
    if (cl->nopts)
        natsOptions_Destroy(cl->nopts);
    pthread_mutex_destroy(&cl->mu);
    pthread_mutex_destroy(&cl->win_mu);
    pthread_mutex_destroy(&cl->io.mu);
    uv_sem_destroy(&cl->stop_sem);
    for (uint32_t i = 0; i < cl->norigins; i++) {
        struct kr_cl_win *w = cl->origins[i].win;
        if (!w)
            continue;
        for (int k = 0; k < 2; k++) {
            free(w->w[k].slots);
            free(w->w[k].pairs);
        }
        free(w);
    }
    free(cl->in);
    free(cl->out);
    free(cl->in_dirty);
    free(cl->in_full);
    free(cl->buckets);
    free(cl->lq);
    free(cl->pend);
    kr_cl_resume_free(cl);
    free(cl->waits);
    free(cl->acks);
    free(cl->peers);
    free(cl->ebuf);
    free(cl->sbuf);
    free(cl->lost);
    for (int k = 0; k < 2; k++) {
        free(cl->recent[k].slots);
        free(cl->recent[k].pairs);
    }
    free(cl->d_topics);
    free(cl->d_lens);
    free(cl->d_hashes);
    free(cl);
}

/* ---------------------------------------------------------------- the net threads' side */

void kr_cluster_wake(struct kr_cluster *cl)
{
    KR_ASYNC_SEND(&cl->wake);
}

bool kr_cluster_send(struct kr_cluster *cl, uint32_t net, const struct kr_event *ev)
{
    if (!kr_mailbox_push(cl->in[net], ev)) {
        /* full: the link wakes this thread when it took from the ring (its parked
         * events are retried then, not at the next sweep); tried once more after saying
         * so, in case the link emptied the ring before it could see the flag */
        ck_pr_store_int(&cl->in_full[(size_t)net * 16], 1);
        ck_pr_fence_memory();
        if (!kr_mailbox_push(cl->in[net], ev))
            return false;
    }
    cl->in_dirty[(size_t)net * 64] = 1;
    return true;
}

void kr_cluster_flush(struct kr_cluster *cl, uint32_t net)
{
    if (cl->in_dirty[(size_t)net * 64]) {
        cl->in_dirty[(size_t)net * 64] = 0;
        KR_ASYNC_SEND(&cl->wake);
    }
}

bool kr_cluster_recv(struct kr_cluster *cl, uint32_t net, struct kr_event *ev)
{
    return kr_mailbox_pop(cl->out[net], ev);
}

uint64_t kr_cluster_publisher(const struct kr_cluster *cl)
{
    return cl->pub_id;
}

void kr_cluster_stats(struct kr_cluster *cl, struct kr_cluster_stats *out)
{
    memset(out, 0, sizeof(*out));
    const struct kr_cl_counters *c = &cl->st;
    out->connected = ck_pr_load_64((uint64_t *)&c->connected) != 0;
    if (out->connected && cl->nc)
        natsConnection_GetConnectedUrl(cl->nc, out->server, sizeof(out->server));
    snprintf(out->node, sizeof(out->node), "%s", cl->name);
    out->origin = cl->origin;
#define KR_CL_LOAD(name, kind, micro, help) out->name = ck_pr_load_64((uint64_t *)&c->name);
    KR_CLUSTER_COUNTERS(KR_CL_LOAD)
#undef KR_CL_LOAD
}
