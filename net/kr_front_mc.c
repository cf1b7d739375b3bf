/* The memcached text protocol frontend: parses each request and runs it through the
 * protocol-independent operations of kr_cmd.c (subscribe,
 * unsubscribe, publish, register, retro_subscribe, get messages, stats, version, quit) and
 * how its replies and the `get messages` deliveries are formatted. Net thread only. */
#include "kr_net_int.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ck_pr.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <urcu/list.h>
#include <urcu/urcu-memb.h>
#include <uv.h>
#include <xxhash.h>
#ifdef KR_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

static void kr_req_subscribe(struct kr_conn *c, const struct kr_request *req, uint16_t type);
static void kr_req_publish(struct kr_conn *c, const struct kr_request *req);
static void kr_poll_reply(struct kr_conn *c, uint32_t n, uint64_t bytes);
static void kr_req_get_messages(struct kr_conn *c, bool may_wait);
static void kr_req_stats_emit(void *arg, const char *line, size_t len);
static void kr_req_stats(struct kr_conn *c);

/* ---------------------------------------------------------------- requests */

/* subscribe, unsubscribe and retro_subscribe: the data block is the topic list (after the
 * horizon line for retro_subscribe). */
static void kr_req_subscribe(struct kr_conn *c, const struct kr_request *req, uint16_t type)
{
    struct kr_nt *nt = c->nt;
    struct kr_server *srv = nt->srv;
    const char *data = req->data;
    size_t data_len = req->data_len;
    uint64_t horizon = 0;
    if (type == KR_EV_RETRO_SUBSCRIBE) {
        int rc = kr_proto_parse_retro(req->data, req->data_len, srv->cfg->max_topic_bytes,
                                      &horizon, &data, &data_len);
        if (rc < 0) {
            kr_conn_fail(c, kr_proto_error_reply(rc));
            return;
        }
    }
    int n = kr_proto_check_topics(data, data_len, srv->cfg->max_topic_bytes);
    if (n < 0) {
        kr_conn_fail(c, kr_proto_error_reply(n));
        return;
    }
    kr_nt_args(nt, (uint32_t)n);
    uint32_t k = 0;
    size_t pos = 0, len;
    const char *t;
    while (kr_proto_next_topic(data, data_len, &pos, &t, &len)) {
        nt->args[k] = t;
        nt->arg_lens[k++] = (uint32_t)len;
    }
    kr_cmd_subscribe(c, type, horizon, k, nt->args, nt->arg_lens, req->noreply);
}

/* One entry of a publish block. */
static int kr_pub_entry(void *arg, const struct kr_pub_entry *e)
{
    struct kr_conn *c = arg;
    struct kr_nt *nt = c->nt;
    kr_nt_args(nt, e->ntopics);
    uint32_t k = 0;
    size_t pos = 0, len;
    const char *t;
    while (kr_proto_next_topic(e->topics, e->topics_len, &pos, &t, &len)) {
        nt->args[k] = t;
        nt->arg_lens[k++] = (uint32_t)len;
    }
    kr_cmd_publish(c, k, nt->args, nt->arg_lens, e->payload, (uint32_t)e->payload_len);
    return 0;
}

static void kr_req_publish(struct kr_conn *c, const struct kr_request *req)
{
    struct kr_nt *nt = c->nt;
    KR_ST_INC(nt, publish_requests, 1);
    size_t nentries = 0;
    /* the codec validates the whole block before handing over any entry, so a bad block
     * publishes nothing */
    int rc = kr_proto_parse_publish(req->data, req->data_len, &nt->srv->lim, kr_pub_entry, c, &nentries);
    if (rc < 0) {
        kr_conn_fail(c, kr_proto_error_reply(rc));
        return;
    }
    kr_cmd_published(c, req->noreply);
}

/* Answer a poll with the n complete entries at the head of the queue (`END` when n is 0). */
static void kr_poll_reply(struct kr_conn *c, uint32_t n, uint64_t bytes)
{
    struct kr_nt *nt = c->nt;
    if (n == 0) {
        kr_out_str(c, "END\r\n");
        kr_conn_drain_replied(c);
        return;
    }
    kr_out_reserve(c, 17 + 20 + 2 + bytes + 5);
    memcpy(c->out + c->out_len, "VALUE messages 0 ", 17);
    c->out_len += 17;
    c->out_len += kr_u64_dec(c->out + c->out_len, bytes - 2);
    memcpy(c->out + c->out_len, "\r\n", 2);
    c->out_len += 2;
    for (uint32_t k = 0; k < n; k++) {
        struct kr_cq_entry *e = kr_dlv_head(&c->dlv);
        struct kr_msg *m = e->msg;
        uint32_t ntop = kr_msg_ntopics(m), plen, tlen;
        const char *payload = kr_msg_payload(m, &plen);
        char *o = c->out + c->out_len;
        memcpy(o, "MESSAGE ", 8);
        o += 8;
        for (uint32_t i = 0; i < ntop; i++) {
            if (kr_topicset_has(&e->topics, ntop, i)) {
                const char *t = kr_msg_topic(m, i, &tlen);
                memcpy(o, t, tlen);
                o += tlen;
                *o++ = ' ';
            }
        }
        o += kr_u64_dec(o, plen);
        *o++ = '\r';
        *o++ = '\n';
        memcpy(o, payload, plen);
        o += plen;
        *o++ = '\r';
        *o++ = '\n';
        c->out_len = (size_t)(o - c->out);
        kr_dlv_pop(&nt->dlv, &c->dlv);
    }
    kr_out_add(c, "END\r\n", 5);
    KR_ST_INC(nt, messages_delivered, n);
    kr_conn_drain_replied(c);
}

/* `get messages`. `may_wait`: nothing follows the request in the client's input, so an empty
 * answer may wait for a message (see "waiting polls" above). */
static void kr_req_get_messages(struct kr_conn *c, bool may_wait)
{
    struct kr_nt *nt = c->nt;
    KR_ST_INC(nt, cmd_get, 1);
    c->last_poll_ms = kr_now_ms();
    if (c->dlv.overflowed) {
        kr_conn_error(c, KR_ERR_QUEUE_OVERFLOW);
        return;
    }
    uint64_t bytes;
    uint32_t n = kr_conn_ready_entries(c, &bytes);
    if (n == 0 && may_wait && !c->close_after_write) {
        /* nothing queued yet: answered after this loop iteration took what the shards sent
         * meanwhile (kr_nt_check_cb), or when a message arrives within poll_wait_ms */
        if (nt->live.poll_wait_ms)
            KR_ST_INC(nt, polls_waited, 1);
        kr_poll_hold(c, nt->live.poll_wait_ms);
        return;
    }
    kr_poll_reply(c, n, bytes);
}

/* Answer a waiting poll now with whatever is complete in the queue, or with the overflow
 * error (kr_frontend.answer). The caller then runs kr_conn_process (stashed input, flush). */
static void kr_poll_finish(struct kr_conn *c)
{
    kr_poll_unwait(c);
    if (c->dlv.overflowed) {
        kr_conn_error(c, KR_ERR_QUEUE_OVERFLOW);
        return;
    }
    uint64_t bytes;
    uint32_t n = kr_conn_ready_entries(c, &bytes);
    kr_poll_reply(c, n, bytes);
}

/* ---------------------------------------------------------------- stats lines */

struct kr_stat_fmt {
    kr_server_emit_cb emit;
    void *arg;
};

/* One figure as a memcached `STAT <name> <value>` line (no vsnprintf: a stats request
 * formats some 60 lines, and printf would cost more than the rest of it). */
static void kr_stat_figure(void *arg, const struct kr_figure *f)
{
    struct kr_stat_fmt *sf = arg;
    char buf[320];
    size_t nl = strlen(f->name), n = 0;
    if (nl > 200)
        return;
    memcpy(buf, "STAT ", 5);
    memcpy(buf + 5, f->name, nl);
    n = 5 + nl;
    buf[n++] = ' ';
    if (f->kind == KR_FIG_TEXT) {
        size_t tl = strlen(f->text);
        if (tl > sizeof(buf) - n)
            tl = sizeof(buf) - n;
        memcpy(buf + n, f->text, tl);
        n += tl;
    } else if (f->micro) { /* seconds with six decimals */
        n += kr_u64_dec(buf + n, f->value / 1000000);
        char frac[8];
        size_t fl = kr_u64_dec(frac, f->value % 1000000);
        buf[n++] = '.';
        for (size_t k = fl; k < 6; k++)
            buf[n++] = '0';
        memcpy(buf + n, frac, fl);
        n += fl;
    } else {
        n += kr_u64_dec(buf + n, f->value);
    }
    sf->emit(sf->arg, buf, n);
}

void kr_server_stats(struct kr_server *s, kr_server_emit_cb emit, void *arg)
{
    struct kr_stat_fmt sf = {emit, arg};
    kr_server_figures(s, kr_stat_figure, &sf);
}

static void kr_req_stats_emit(void *arg, const char *line, size_t len)
{
    struct kr_conn *c = arg;
    kr_out_add(c, line, len);
    kr_out_add(c, "\r\n", 2);
}

static void kr_req_stats(struct kr_conn *c)
{
    kr_server_stats(c->nt->srv, kr_req_stats_emit, c);
    kr_out_str(c, "END\r\n");
}

/* Handle one parsed request; `last`: nothing follows it in the client's input yet. */
static void kr_conn_request(struct kr_conn *c, const struct kr_request *req, bool last)
{
    struct kr_nt *nt = c->nt;
    if (c->dlv.overflowed) {
        kr_conn_error(c, KR_ERR_QUEUE_OVERFLOW);
        return;
    }
    switch (req->type) {
    case KR_REQ_SUBSCRIBE:
        KR_ST_INC(nt, cmd_set, 1);
        kr_req_subscribe(c, req, KR_EV_SUBSCRIBE);
        break;
    case KR_REQ_UNSUBSCRIBE:
        KR_ST_INC(nt, cmd_set, 1);
        kr_req_subscribe(c, req, KR_EV_UNSUBSCRIBE);
        break;
    case KR_REQ_PUBLISH:
        KR_ST_INC(nt, cmd_set, 1);
        kr_req_publish(c, req);
        break;
    case KR_REQ_REGISTER:
        KR_ST_INC(nt, cmd_set, 1);
        kr_cmd_register(c, req->noreply);
        break;
    case KR_REQ_RETRO_SUBSCRIBE:
        KR_ST_INC(nt, cmd_set, 1);
        kr_req_subscribe(c, req, KR_EV_RETRO_SUBSCRIBE);
        break;
    case KR_REQ_GET_MESSAGES:
        kr_req_get_messages(c, last);
        break;
    case KR_REQ_QUIT:
        c->close_after_write = true;
        break;
    case KR_REQ_VERSION: /* load-balancer health checks see the drain here */
        kr_out_str(c, ck_pr_load_int(&nt->srv->draining) ? "VERSION " KR_VERSION " draining\r\n"
                                                          : "VERSION " KR_VERSION "\r\n");
        break;
    case KR_REQ_STATS:
        kr_req_stats(c);
        break;
    }
}

/* Requests that may be answered out of the router's ack order are those whose reply waits
 * in the reply ring; anything else waits until every earlier reply is out. */
static bool kr_req_pipelinable(const struct kr_conn *c, const struct kr_request *req)
{
    switch (req->type) {
    case KR_REQ_SUBSCRIBE:
        return c->horizon_us == 0; /* a retroactive one runs alone */
    case KR_REQ_UNSUBSCRIBE:
    case KR_REQ_PUBLISH:
        return true;
    default:
        return false;
    }
}

/* ---------------------------------------------------------------- the frontend */

static ssize_t kr_mc_request(struct kr_conn *c, const char *buf, size_t len, bool pipelined,
                             size_t *need)
{
    if (!c->fe_chosen) {
        /* the first byte decides the protocol: memcached requests never start with '*' */
        c->fe_chosen = true;
        if (buf[0] == '*') {
            c->fe = &kr_front_resp;
            return kr_front_resp.request(c, buf, len, pipelined, need);
        }
    }
    struct kr_request req;
    size_t used = 0;
    int rc = kr_proto_parse(buf, len, &c->nt->srv->lim, &req, &used);
    if (rc == KR_PROTO_NEED_MORE) {
        *need = used;
        return KR_FE_NEED_MORE;
    }
    if (rc < 0) {
        kr_conn_fail(c, kr_proto_error_reply(rc));
        return KR_FE_FAILED;
    }
    if (pipelined && !kr_req_pipelinable(c, &req))
        return KR_FE_LATER;
    kr_conn_request(c, &req, used == len);
    return (ssize_t)used;
}

static void kr_mc_reply(struct kr_conn *c, enum kr_reply_kind kind)
{
    kr_out_str(c, kind == KR_REPLY_NOT_FOUND ? "NOT_FOUND\r\n" : "STORED\r\n");
}

static const char *kr_mc_error_line(enum kr_error_kind kind)
{
    switch (kind) {
    case KR_ERR_QUEUE_OVERFLOW:
        return "SERVER_ERROR queue overflow\r\n";
    case KR_ERR_SHUTTING_DOWN:
        return "SERVER_ERROR shutting down\r\n";
    case KR_ERR_TOO_MANY:
        return "SERVER_ERROR Too many clients\r\n";
    }
    return "SERVER_ERROR\r\n";
}

const struct kr_frontend kr_front_mc = {
    .name = "memcached",
    .request = kr_mc_request,
    .reply = kr_mc_reply,
    .error_line = kr_mc_error_line,
    .queued = kr_poll_wake,   /* a waiting poll is answered after this loop iteration */
    .answer = kr_poll_finish,
};
