/* Server lifecycle (create, start, stop, destroy; control thread) and the figures and
 * connection lookups other threads ask for (see kr_net.h and kr_net_int.h for who may call
 * each). */
#include "kr_net_int.h"

#include <sys/epoll.h>
#include <sys/random.h>

#include <ck_pr.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

static void kr_server_wake_net(void *arg, uint32_t net);
static void kr_net_conn_fill(const struct kr_conn *c, uint64_t now, struct kr_net_conn_info *out);

static void kr_server_wake_net(void *arg, uint32_t net)
{
    struct kr_server *s = arg;
    if (net < s->nnet)
        KR_ASYNC_SEND(&s->nts[net]->wake);
    else if (s->cluster) /* the link's index (its delivery thread's is never woken) */
        kr_cluster_wake(s->cluster);
}

/* A random non-zero 64-bit id (the node's start id on a single node). */
static uint64_t kr_server_random_id(void)
{
    uint64_t v = 0;
    while (v == 0) {
        if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            v = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^ ((uint64_t)getpid() << 32);
        }
    }
    return v;
}

int kr_server_create(const struct kr_cfg *cfg, struct kr_server **out, char *err, size_t errlen)
{
    struct kr_server *s = kr_xcalloc(1, sizeof(*s));
    s->started = time(NULL); /* before any other thread may read it (uptime) */
    s->cfg = cfg;
    s->nnet = cfg->num_net_threads;
    s->lim.max_request_bytes = cfg->max_request_bytes;
    s->lim.max_line_bytes = cfg->max_line_bytes;
    int arc = kr_acl_parse(cfg->allow_from, &s->acl, err, errlen);
    if (arc < 0) {
        free(s);
        return arc;
    }
    pthread_mutex_init(&s->accept_mu, NULL);
    pthread_mutex_init(&s->warn_mu, NULL);
    s->nts = kr_xcalloc(s->nnet, sizeof(*s->nts));
    s->reqq = kr_net_reqq_create(s, s->nnet);
    uint16_t port = (uint16_t)cfg->tcp_server_port;
    for (uint32_t i = 0; i < s->nnet; i++) {
        struct kr_nt *nt = kr_xcalloc(1, sizeof(*nt));
        nt->srv = s;
        nt->idx = i;
        kr_net_live(s, &nt->live);
        kr_nt_dlv_init(nt);
        s->nts[i] = nt;
        uint16_t bound = 0;
        int fd = kr_listen_socket(cfg, port, &bound, err, errlen);
        nt->resp_listen_fd = -1;
        nt->epfd = -1;
        if (fd >= 0 && cfg->resp_port == bound) {
            /* SO_REUSEPORT would let both listeners share it and split the clients */
            snprintf(err, errlen, "resp_port %u is the client port (tcp_server_port)",
                     cfg->resp_port);
            close(fd);
            fd = -EINVAL;
        }
        if (fd >= 0 && cfg->resp_port) {
            /* the RESP-only port: one SO_REUSEPORT socket per net thread, as the main one */
            uint16_t rbound = 0;
            nt->resp_listen_fd = kr_listen_socket(cfg, (uint16_t)cfg->resp_port, &rbound, err,
                                                  errlen);
            if (nt->resp_listen_fd < 0) {
                close(fd);
                fd = nt->resp_listen_fd;
            }
        }
        if (fd < 0) {
            for (uint32_t k = 0; k < i; k++) {
                close(s->nts[k]->listen_fd);
                if (s->nts[k]->resp_listen_fd >= 0)
                    close(s->nts[k]->resp_listen_fd);
                free(s->nts[k]);
            }
            free(nt);
            free(s->nts);
            kr_net_reqq_destroy(s->reqq);
            kr_acl_free(s->acl);
            free(s);
            return fd;
        }
        nt->listen_fd = fd;
        port = bound; /* an ephemeral port is chosen once, then shared */
    }
    s->port = port;
    s->resp_port = (uint16_t)cfg->resp_port;
    bool cluster = cfg->cluster_nats_url[0] != 0;
    struct kr_router_opts ro = {
        .nshards = cfg->num_router_shards,
        /* in a cluster, two more indexes: the link's delivery thread and the link thread */
        .nnet = s->nnet + (cluster ? 2 : 0),
        .nend = s->nnet,
        .interest = cluster,
        .frontier = true, /* positions need the shards' numbering */
        .interest_net = s->nnet + 1,
        .mailbox_capacity = 8192,
        .fanout_warn = cfg->router_min_fanout_to_warn,
        .history = cfg->messages_stored_per_router_shard,
        .history_bytes = cfg->history_max_bytes,
        .pin_cpus = true,
        .wake_net = kr_server_wake_net,
        .wake_arg = s,
    };
    s->router = kr_router_create(&ro);
    /* the node's start id, named by every position token it issues; in a cluster also the
     * link's origin id, by which other nodes ask this one to resume its tokens */
    s->node_id = kr_server_random_id();
    if (cluster) {
        struct kr_cluster_opts co = {.cfg = cfg, .router = s->router, .nnet = s->nnet,
                                     .in_idx = s->nnet, .ctl_idx = s->nnet + 1,
                                     .mailbox_capacity = 8192, .client_port = port,
                                     .origin = s->node_id,
                                     .wake_net = kr_server_wake_net, .wake_arg = s};
        int rc = kr_cluster_create(&co, &s->cluster, err, errlen);
        if (rc < 0)
            return rc; /* process exits on this path */
    }
    s->publish_flushed = s->cluster && strcmp(cfg->cluster_publish_ack, "flushed") == 0;
    for (uint32_t i = 0; i < s->nnet; i++) {
        struct kr_nt *nt = s->nts[i];
        nt->seen = kr_xcalloc(cfg->num_router_shards, sizeof(*nt->seen));
        nt->dlv.nshards = cfg->num_router_shards;
        nt->dlv.self_origin = s->node_id;
        kr_nt_outbox_init(nt);
        uv_loop_init(&nt->loop);
        uv_loop_configure(&nt->loop, UV_METRICS_IDLE_TIME); /* kr_nt_prepare_cb */
        uv_async_init(&nt->loop, &nt->wake, kr_nt_wake_cb);
        nt->wake.data = nt;
        uv_check_init(&nt->loop, &nt->check);
        nt->check.data = nt;
        uv_check_start(&nt->check, kr_nt_check_cb);
        uv_prepare_init(&nt->loop, &nt->prepare);
        nt->prepare.data = nt;
        uv_prepare_start(&nt->prepare, kr_nt_prepare_cb);
        uv_idle_init(&nt->loop, &nt->turn_idle);
        nt->turn_idle.data = nt;
        uv_timer_init(&nt->loop, &nt->poll_timer);
        nt->poll_timer.data = nt;
        CDS_INIT_LIST_HEAD(&nt->held.list);
        CDS_INIT_LIST_HEAD(&nt->ready.list);
        uv_timer_init(&nt->loop, &nt->sweep);
        nt->sweep.data = nt;
        uv_timer_init(&nt->loop, &nt->accept_pause);
        nt->accept_pause.data = nt;
        nt->reserve_fd = -1;
        kr_nt_reserve_open(nt);
        nt->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (nt->epfd < 0) {
            snprintf(err, errlen, "epoll_create1: %s", strerror(errno));
            return -errno; /* process exits on this path */
        }
        uv_poll_init(&nt->loop, &nt->clients, nt->epfd);
        nt->clients.data = nt;
        uv_poll_start(&nt->clients, UV_READABLE, kr_nt_clients_cb);
        int rc = uv_poll_init(&nt->loop, &nt->listener, nt->listen_fd);
        nt->listener.data = nt;
        if (rc == 0)
            rc = uv_poll_start(&nt->listener, UV_READABLE, kr_nt_accept_cb);
        nt->listening = rc == 0;
        if (rc == 0 && nt->resp_listen_fd >= 0) {
            rc = uv_poll_init(&nt->loop, &nt->resp_listener, nt->resp_listen_fd);
            nt->resp_listener.data = nt;
            if (rc == 0)
                rc = uv_poll_start(&nt->resp_listener, UV_READABLE, kr_nt_accept_cb);
            nt->resp_listening = rc == 0;
        }
        if (rc < 0) {
            snprintf(err, errlen, "listen: %s", uv_strerror(rc));
            return rc; /* process exits on this path */
        }
    }
    *out = s;
    return 0;
}

int kr_server_start(struct kr_server *s)
{
    kr_server_refresh_stats(s); /* then the control thread's timer, once a second */
    int rc = kr_router_start(s->router);
    if (rc < 0)
        return rc;
    if (s->cluster && (rc = kr_cluster_start(s->cluster)) < 0)
        return rc;
    for (uint32_t i = 0; i < s->nnet; i++) {
        struct kr_nt *nt = s->nts[i];
        /* the sweep also retries clients blocked on a full ring */
        uv_timer_start(&nt->sweep, kr_nt_sweep_cb, KR_SWEEP_MS, KR_SWEEP_MS);
        rc = uv_thread_create(&nt->thread, kr_nt_main, nt);
        if (rc < 0)
            return rc;
    }
    KR_INFO("kraken %s listening on %s:%u (%u net threads, %u router shards)", KR_VERSION,
            s->cfg->listen_ip, s->port, s->nnet, kr_router_nshards(s->router));
    if (s->resp_port)
        KR_INFO("RESP-only clients on %s:%u (resp_port)", s->cfg->listen_ip, s->resp_port);
    return 0;
}

uint16_t kr_server_port(const struct kr_server *s)
{
    return s->port;
}

uint16_t kr_server_resp_port(const struct kr_server *s)
{
    return s->resp_port;
}

void kr_server_stop(struct kr_server *s)
{
    for (uint32_t i = 0; i < s->nnet; i++) {
        ck_pr_store_8((uint8_t *)&s->nts[i]->stopping, 1);
        KR_ASYNC_SEND(&s->nts[i]->wake);
    }
    for (uint32_t i = 0; i < s->nnet; i++)
        uv_thread_join(&s->nts[i]->thread);
    kr_net_reqq_shutdown(s);
    kr_cluster_stop(s->cluster); /* before the shards: its delivery thread may wait on them */
    kr_router_stop(s->router);
}

void kr_server_destroy(struct kr_server *s)
{
    if (!s)
        return;
    for (uint32_t i = 0; i < s->nnet; i++) {
        struct kr_nt *nt = s->nts[i];
        for (uint32_t k = 0; k < nt->nslots; k++) {
            struct kr_conn *c = nt->slots[k];
            if (c) {
                c->subscribed = false; /* shards are stopped; the router frees everything */
                kr_conn_close(c);
            }
        }
        kr_nt_free_closed(nt);
        uv_walk(&nt->loop, kr_nt_close_walk, NULL);
        uv_run(&nt->loop, UV_RUN_DEFAULT);
        kr_dlv_release_later(&nt->dlv);
        if (nt->epfd >= 0)
            close(nt->epfd); /* the poll handle does not own it */
        if (nt->listen_fd >= 0)
            close(nt->listen_fd); /* the poll handle does not own it */
        if (nt->resp_listen_fd >= 0)
            close(nt->resp_listen_fd);
        if (nt->reserve_fd >= 0)
            close(nt->reserve_fd);
    }
    kr_router_destroy(s->router);
    kr_cluster_destroy(s->cluster);
    for (uint32_t i = 0; i < s->nnet; i++) {
        struct kr_nt *nt = s->nts[i];
        uv_loop_close(&nt->loop);
        free(nt->slots);
        free(nt->gens);
        free(nt->free_slots);
        free(nt->topics);
        free(nt->topic_lens);
        free(nt->topic_hashes);
        free(nt->args);
        free(nt->arg_lens);
        free(nt->ns_buf);
        free(nt->ns_names);
        free(nt->ns_lens);
        free(nt->dedup);
        free(nt->seen);
        free(nt->resume_wait);
        kr_nt_outbox_destroy(nt);
        free(nt->mem_cand);
        free(nt->turns);
        free(nt);
    }
    free(s->nts);
    kr_net_reqq_destroy(s->reqq);
    kr_acl_free(s->acl);
    pthread_mutex_destroy(&s->accept_mu);
    pthread_mutex_destroy(&s->warn_mu);
    free(s);
}

/* ---------------------------------------------------------------- operations
 * The net-thread side of kr_net_admin.c's requests (kr_net_int.h) and the figures the
 * control thread reads (kr_net.h). */

uint32_t kr_server_nnet(const struct kr_server *s) { return s->nnet; }
struct kr_router *kr_server_router(struct kr_server *s) { return s->router; }
struct kr_net_reqq *kr_net_server_reqq(struct kr_server *s) { return s->reqq; }

uint64_t kr_server_net_clients(const struct kr_server *s, uint32_t net)
{
    return net < s->nnet ? ck_pr_load_64(&s->nts[net]->st.curr_connections) : 0;
}

void kr_server_accept_lock(struct kr_server *s)
{
    if (s)
        pthread_mutex_lock(&s->accept_mu);
}

void kr_server_accept_unlock(struct kr_server *s)
{
    if (s)
        pthread_mutex_unlock(&s->accept_mu);
}

bool kr_server_cluster(struct kr_server *s, struct kr_cluster_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!s->cluster)
        return false;
    kr_cluster_stats(s->cluster, out);
    return true;
}

uint64_t kr_server_clients(const struct kr_server *s)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < s->nnet; i++)
        n += kr_server_net_clients(s, i);
    return n;
}

uint64_t kr_server_uptime(const struct kr_server *s)
{
    time_t now = time(NULL);
    return s->started && now > s->started ? (uint64_t)(now - s->started) : 0;
}

void kr_net_wake(struct kr_server *s, uint32_t net)
{
    KR_ASYNC_SEND(&s->nts[net]->wake);
}

static void kr_net_conn_fill(const struct kr_conn *c, uint64_t now, struct kr_net_conn_info *out)
{
    memset(out, 0, sizeof(*out));
    out->id = c->id;
    snprintf(out->peer, sizeof(out->peer), "%s", kr_conn_peer(c));
    out->queued_messages = c->dlv.q.count;
    out->queued_bytes = c->dlv.q.bytes;
    out->age_ms = kr_ms_since(now, c->created_ms);
    out->since_poll_ms = c->last_poll_ms ? (int64_t)kr_ms_since(now, c->last_poll_ms) : -1;
    out->idle_ms = kr_ms_since(now, c->last_active_ms);
    out->mem = kr_conn_mem(c);
}

int kr_net_conn_next(struct kr_server *s, uint32_t net, uint32_t *slot,
                     struct kr_net_conn_info *out)
{
    struct kr_nt *nt = s->nts[net];
    for (; *slot < nt->nslots; (*slot)++) {
        struct kr_conn *c = nt->slots[*slot];
        if (c && !c->closing) {
            kr_net_conn_fill(c, kr_now_ms(), out);
            (*slot)++;
            return 1;
        }
    }
    return 0;
}

int kr_net_conn_find(struct kr_server *s, uint64_t id, struct kr_net_conn_info *out)
{
    if (KR_CONN_NET(id) >= s->nnet)
        return -ENOENT;
    struct kr_conn *c = kr_nt_conn(s->nts[KR_CONN_NET(id)], id);
    if (!c)
        return -ENOENT;
    kr_net_conn_fill(c, kr_now_ms(), out);
    return 0;
}

const struct kr_acl *kr_server_acl(const struct kr_server *s)
{
    return s->acl;
}

void kr_server_count_refused(struct kr_server *s)
{
    ck_pr_inc_64(&s->refused_elsewhere);
}

void kr_server_drain(struct kr_server *s)
{
    if (ck_pr_load_int(&s->draining))
        return;
    ck_pr_store_int(&s->drain_flush_left, (int)(s->nnet * kr_router_nshards(s->router)));
    ck_pr_store_int(&s->draining, 1);
    if (s->cluster && s->cfg->drain_resume_window_ms)
        kr_router_hold_topics(s->router); /* answers resumes elsewhere until it exits */
    kr_server_stop_listening(s);
    if (kr_server_drain_flush(s) < 0)
        ck_pr_store_int(&s->drain_flush_left, 0); /* the net threads stopped: nothing to wait for */
}

int kr_server_drain_flushed(const struct kr_server *s)
{
    return ck_pr_load_int((int *)&s->drain_flush_left) <= 0;
}

uint64_t kr_server_resume_window_ms(const struct kr_server *s)
{
    return s->cluster ? s->cfg->drain_resume_window_ms : 0;
}

int kr_server_draining(const struct kr_server *s)
{
    return ck_pr_load_int(&s->draining);
}

uint64_t kr_server_counter(const struct kr_server *s, enum kr_nt_counter k)
{
    uint64_t sum = 0;
    for (uint32_t i = 0; i < s->nnet; i++)
        sum += ck_pr_load_64((uint64_t *)&s->nts[i]->st + k);
    return sum;
}

uint64_t kr_server_memory_allocated(const struct kr_server *s)
{
    return ck_pr_load_64((uint64_t *)&s->mem[0]);
}
