/* The memcached text protocol frontend: parses each request and runs it through the
 * rule book's operations (kr_cmd_*: subscribe, unsubscribe, publish, register,
 * retro_subscribe), answers get messages, stats, version and quit, and formats its replies,
 * refusals and the `get messages` deliveries. It sees its connections only through the
 * frontend boundary (kr_frontend.h). Net thread only. */
#include "kr_frontend.h"

#include <string.h>

#include "kr_cfg.h"
#include "kr_net.h"
#include "kr_proto.h"
#include "kr_queue.h"
#include "kr_util.h"

/* ---------------------------------------------------------------- requests */

/* The memcached reply to a refusal of the rule book (every error closes the connection). */
static const char *kr_mc_refusal(int rc)
{
    switch (rc) {
    case KR_CMD_TOO_LARGE:
    case KR_CMD_TOO_MANY:
        return "SERVER_ERROR object too large\r\n";
    default: /* KR_CMD_BAD_TOPIC, KR_CMD_RESERVED */
        return "CLIENT_ERROR bad topic\r\n";
    }
}

/* The topics of a space-separated list, in the net thread's argument scratch. */
static uint32_t kr_mc_topics(struct kr_conn *c, const char *data, size_t len, const char ***topics,
                             uint32_t **lens)
{
    uint32_t n = kr_proto_count_topics(data, len), k = 0;
    kr_cmd_args(c, n, topics, lens);
    size_t pos = 0, tl;
    const char *t;
    while (kr_proto_next_topic(data, len, &pos, &t, &tl)) {
        (*topics)[k] = t;
        (*lens)[k++] = (uint32_t)tl;
    }
    return k;
}

/* subscribe, unsubscribe and retro_subscribe: the data block is the topic list (after the
 * horizon line for retro_subscribe). */
static void kr_mc_subscribe(struct kr_conn *c, const struct kr_request *req, enum kr_sub_op op)
{
    struct kr_cmd_sub sub = {.op = op, .ns = KR_NS_PLAIN, .noreply = req->noreply != 0};
    const char *data = req->data;
    size_t data_len = req->data_len;
    if (op == KR_SUB_RETRO) {
        int rc = kr_proto_parse_retro(req->data, req->data_len, &sub.horizon_us, &data, &data_len);
        if (rc < 0) {
            kr_conn_fail(c, kr_proto_error_reply(rc));
            return;
        }
    }
    const char **topics;
    uint32_t *lens;
    sub.n = kr_mc_topics(c, data, data_len, &topics, &lens);
    sub.topics = topics;
    sub.lens = lens;
    int rc = kr_cmd_subscribe(c, &sub);
    if (rc < 0)
        kr_conn_fail(c, kr_mc_refusal(rc));
}

/* One entry of a publish block as the rule book's entry (its topics in the scratch). */
static void kr_mc_entry(struct kr_conn *c, const struct kr_pub_entry *pe, struct kr_cmd_entry *e)
{
    const char **topics;
    uint32_t *lens;
    e->ns = KR_NS_PLAIN;
    e->n = kr_mc_topics(c, pe->topics, pe->topics_len, &topics, &lens);
    e->topics = topics;
    e->lens = lens;
    e->payload = pe->payload;
    e->payload_len = pe->payload_len > UINT32_MAX ? UINT32_MAX : (uint32_t)pe->payload_len;
}

/* The rules for each entry while the block is validated: nothing is published unless every
 * entry passes. */
static int kr_mc_entry_check(void *arg, const struct kr_pub_entry *pe)
{
    struct kr_conn *c = arg;
    struct kr_cmd_entry e;
    kr_mc_entry(c, pe, &e);
    if (pe->payload_len > UINT32_MAX)
        return KR_CMD_TOO_LARGE;
    return kr_cmd_entry_check(c, &e);
}

static int kr_mc_entry_publish(void *arg, const struct kr_pub_entry *pe)
{
    struct kr_conn *c = arg;
    struct kr_cmd_entry e;
    kr_mc_entry(c, pe, &e);
    return kr_cmd_publish(c, &e, KR_PUB_CHECKED); /* kr_mc_entry_check ran on it */
}

static void kr_mc_publish(struct kr_conn *c, const struct kr_request *req)
{
    kr_conn_count(c, KR_NTC_publish_requests, 1);
    size_t nentries = 0;
    /* the codec validates the whole block (and the rules every entry) before handing over
     * any entry, so a bad block publishes nothing */
    int rc = kr_proto_parse_publish(req->data, req->data_len, kr_mc_entry_check,
                                    kr_mc_entry_publish, c, &nentries);
    if (rc != 0) {
        kr_conn_fail(c, rc == KR_PERR_BAD_PUBLISH ? kr_proto_error_reply(rc) : kr_mc_refusal(rc));
        return;
    }
    kr_cmd_published(c, req->noreply);
}

/* A poll that waits for a message and then gives a position (`get messages position`)
 * says so in the frontend's per-connection state: the memcached frontend keeps no other. */
#define KR_MC_HELD_POSITION ((void *)(uintptr_t)1)

/* `VALUE position 0 <k>\r\n<token>\r\n` when the connection has a position. */
static void kr_mc_position_value(struct kr_conn *c)
{
    char tok[KR_PROTO_TOKEN_MAX + 1];
    size_t n = kr_cmd_position(c, tok, sizeof(tok));
    if (!n)
        return;
    char *o = kr_out_room(c, 17 + 20 + 4 + n), *start = o;
    memcpy(o, "VALUE position 0 ", 17);
    o += 17;
    o += kr_u64_dec(o, n);
    memcpy(o, "\r\n", 2);
    o += 2;
    memcpy(o, tok, n);
    o += n;
    memcpy(o, "\r\n", 2);
    o += 2;
    kr_out_commit(c, (size_t)(o - start));
}

/* Answer a poll with the n complete entries at the head of the queue, then the position
 * after them when asked, then `END`. A payload of KR_OUT_SHARE_MIN bytes or more is written
 * from the shared message (a reference), a smaller one copied. */
static void kr_mc_poll_reply(struct kr_conn *c, uint32_t n, uint64_t bytes, bool position)
{
    if (n) {
        char *start = kr_out_room(c, 17 + 20 + 2), *o = start;
        memcpy(o, "VALUE messages 0 ", 17);
        o += 17;
        o += kr_u64_dec(o, bytes - 2);
        memcpy(o, "\r\n", 2);
        o += 2;
        kr_out_commit(c, (size_t)(o - start));
        for (uint32_t k = 0; k < n; k++) {
            struct kr_cq_entry *e = kr_conn_head(c);
            struct kr_msg *m = e->msg;
            uint32_t ntop = kr_msg_ntopics(m), plen, tlen;
            const char *payload = kr_msg_payload(m, &plen);
            bool share = plen >= KR_OUT_SHARE_MIN;
            /* reply_bytes is this entry's whole share of the reply (kr_conn_ready_*) */
            o = start = kr_out_room(c, e->reply_bytes - (share ? plen + 2 : 0));
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
            if (share) {
                kr_out_commit(c, (size_t)(o - start));
                kr_out_ref(c, payload, plen, m);
                kr_out_add(c, "\r\n", 2);
            } else {
                memcpy(o, payload, plen);
                o += plen;
                *o++ = '\r';
                *o++ = '\n';
                kr_out_commit(c, (size_t)(o - start));
            }
            kr_conn_pop(c);
        }
        /* the last entry's "\r\n" ends the value: its count was bytes - 2 */
        kr_conn_count(c, KR_NTC_messages_delivered, n);
    }
    if (position)
        kr_mc_position_value(c);
    kr_out_add(c, "END\r\n", 5);
    kr_conn_drain_replied(c);
}

/* How many entries a poll hands out now (see kr_conn_ready_positioned). */
static uint32_t kr_mc_ready(struct kr_conn *c, bool position, uint64_t *bytes)
{
    return position ? kr_conn_ready_positioned(c, bytes) : kr_conn_ready_entries(c, bytes);
}

/* `get messages` (and `get messages position`). `may_wait`: nothing follows the request in
 * the client's input, so an empty answer may wait for a message (kr_conn_hold_answer). */
static void kr_mc_get_messages(struct kr_conn *c, bool may_wait, bool position)
{
    kr_conn_count(c, KR_NTC_cmd_get, 1);
    kr_conn_polled(c);
    uint64_t bytes;
    uint32_t n = kr_mc_ready(c, position, &bytes);
    if (n == 0 && may_wait && !kr_conn_closing_words(c)) {
        /* nothing queued yet: answered after this loop iteration took what the shards sent
         * meanwhile, or when a message arrives within poll_wait_ms */
        kr_conn_set_fe_state(c, position ? KR_MC_HELD_POSITION : NULL);
        kr_conn_hold_answer(c);
        return;
    }
    kr_mc_poll_reply(c, n, bytes, position);
}

/* Answer a waiting poll now with whatever is complete in the queue (kr_frontend.answer). */
static void kr_mc_answer(struct kr_conn *c)
{
    bool position = kr_conn_fe_state(c) == KR_MC_HELD_POSITION;
    kr_conn_set_fe_state(c, NULL);
    uint64_t bytes;
    uint32_t n = kr_mc_ready(c, position, &bytes);
    kr_mc_poll_reply(c, n, bytes, position);
}

/* `set resume`: "<token>\r\n<topics>". */
static void kr_mc_resume(struct kr_conn *c, const struct kr_request *req)
{
    const char *token, *data;
    size_t token_len, data_len;
    int rc = kr_proto_parse_resume(req->data, req->data_len, &token, &token_len, &data, &data_len);
    if (rc < 0) {
        kr_conn_fail(c, kr_proto_error_reply(rc));
        return;
    }
    const char **topics;
    uint32_t *lens;
    struct kr_cmd_sub sub = {.op = KR_SUB_SUBSCRIBE, .ns = KR_NS_PLAIN, .noreply = req->noreply != 0};
    sub.n = kr_mc_topics(c, data, data_len, &topics, &lens);
    sub.topics = topics;
    sub.lens = lens;
    rc = kr_cmd_resume(c, token, token_len, &sub);
    if (rc == KR_CMD_BAD_POSITION)
        kr_conn_fail(c, kr_proto_error_reply(KR_PERR_BAD_POSITION));
    else if (rc < 0)
        kr_conn_fail(c, kr_mc_refusal(rc));
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

static void kr_mc_stats_emit(void *arg, const char *line, size_t len)
{
    struct kr_conn *c = arg;
    kr_out_add(c, line, len);
    kr_out_add(c, "\r\n", 2);
}

static void kr_mc_stats(struct kr_conn *c)
{
    kr_server_stats(kr_conn_server(c), kr_mc_stats_emit, c);
    kr_out_str(c, "END\r\n");
}

/* Handle one parsed request; `last`: nothing follows it in the client's input yet. */
static void kr_mc_run(struct kr_conn *c, const struct kr_request *req, bool last)
{
    switch (req->type) {
    case KR_REQ_SUBSCRIBE:
        kr_conn_count(c, KR_NTC_cmd_set, 1);
        kr_mc_subscribe(c, req, KR_SUB_SUBSCRIBE);
        break;
    case KR_REQ_UNSUBSCRIBE:
        kr_conn_count(c, KR_NTC_cmd_set, 1);
        kr_mc_subscribe(c, req, KR_SUB_UNSUBSCRIBE);
        break;
    case KR_REQ_PUBLISH:
        kr_conn_count(c, KR_NTC_cmd_set, 1);
        kr_mc_publish(c, req);
        break;
    case KR_REQ_REGISTER:
        kr_conn_count(c, KR_NTC_cmd_set, 1);
        kr_cmd_register(c, req->noreply);
        break;
    case KR_REQ_RETRO_SUBSCRIBE:
        kr_conn_count(c, KR_NTC_cmd_set, 1);
        kr_mc_subscribe(c, req, KR_SUB_RETRO);
        break;
    case KR_REQ_GET_MESSAGES:
        kr_mc_get_messages(c, last, false);
        break;
    case KR_REQ_GET_MESSAGES_POSITION:
        kr_mc_get_messages(c, last, true);
        break;
    case KR_REQ_GET_POSITION:
        kr_conn_count(c, KR_NTC_cmd_get, 1);
        kr_mc_position_value(c);
        kr_out_add(c, "END\r\n", 5);
        break;
    case KR_REQ_RESUME:
        kr_conn_count(c, KR_NTC_cmd_set, 1);
        kr_mc_resume(c, req);
        break;
    case KR_REQ_QUIT:
        kr_conn_close_after_reply(c);
        break;
    case KR_REQ_VERSION: /* load-balancer health checks see the drain here */
        kr_out_str(c, kr_server_draining(kr_conn_server(c)) ? "VERSION " KR_VERSION " draining\r\n"
                                                             : "VERSION " KR_VERSION "\r\n");
        break;
    case KR_REQ_STATS:
        kr_mc_stats(c);
        break;
    }
}

/* Requests that may be answered out of the router's ack order are those whose reply waits
 * in the reply ring; anything else waits until every earlier reply is out. */
static bool kr_mc_pipelinable(const struct kr_conn *c, const struct kr_request *req)
{
    switch (req->type) {
    case KR_REQ_SUBSCRIBE:
        return !kr_cmd_subscribe_runs_alone(c); /* a retroactive one runs alone */
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
    const struct kr_cfg *cfg = kr_conn_cfg(c);
    const struct kr_proto_limits lim = {.max_request_bytes = cfg->max_request_bytes,
                                        .max_line_bytes = cfg->max_line_bytes};
    struct kr_request req;
    size_t used = 0;
    int rc = kr_proto_parse(buf, len, &lim, &req, &used);
    if (rc == KR_PROTO_NEED_MORE) {
        *need = used;
        return KR_FE_NEED_MORE;
    }
    if (rc < 0) {
        kr_conn_fail(c, kr_proto_error_reply(rc));
        return KR_FE_FAILED;
    }
    if (pipelined && !kr_mc_pipelinable(c, &req))
        return KR_FE_LATER;
    if (req.type == KR_REQ_RESUME && !kr_cmd_resume_admit(c))
        return KR_FE_LATER; /* its turn comes when a resume in progress finishes */
    kr_mc_run(c, &req, used == len);
    return (ssize_t)used;
}

static void kr_mc_reply(struct kr_conn *c, const struct kr_reply *r)
{
    kr_out_str(c, r->kind == KR_REPLY_NOT_FOUND ? "NOT_FOUND\r\n" : "STORED\r\n");
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
    .queued = kr_conn_wake_answer, /* a waiting poll is answered after this loop iteration */
    .answer = kr_mc_answer,
};
