/* The connection API of the frontend boundary (kr_frontend.h): the small set of functions
 * through which a protocol frontend reads its connection, writes output, asks to be
 * answered and takes its deliveries, so that no frontend reaches into the connection's or
 * the net thread's fields. Net thread only. */
#include "kr_net_int.h"

#include <ck_pr.h>
#include <uv.h>

uint64_t kr_conn_id(const struct kr_conn *c)
{
    return c->id;
}

const char *kr_conn_peer(const struct kr_conn *c)
{
    static __thread char name[64]; /* one per thread: valid until the thread's next call */
    kr_peer_addr_name(&c->peer, name, sizeof(name));
    return name;
}

uint64_t kr_conn_age_ms(const struct kr_conn *c)
{
    return kr_now_ms() - c->created_ms;
}

const struct kr_cfg *kr_conn_cfg(const struct kr_conn *c)
{
    return c->nt->srv->cfg;
}

struct kr_server *kr_conn_server(const struct kr_conn *c)
{
    return c->nt->srv;
}

void *kr_conn_fe_state(const struct kr_conn *c)
{
    return c->fe_state;
}

void kr_conn_set_fe_state(struct kr_conn *c, void *state)
{
    c->fe_state = state;
}

void kr_conn_count(struct kr_conn *c, enum kr_nt_counter k, uint64_t n)
{
    uint64_t *f = (uint64_t *)&c->nt->st + k; /* the struct is the list's uint64_t fields */
    ck_pr_store_64(f, *f + n);
}

char *kr_out_room(struct kr_conn *c, size_t n)
{
    kr_out_reserve(c, n);
    return c->out + c->out_len;
}

void kr_out_commit(struct kr_conn *c, size_t n)
{
    c->out_len += n;
}

void kr_conn_close_after_reply(struct kr_conn *c)
{
    c->close_after_write = true;
}

bool kr_conn_closing_words(const struct kr_conn *c)
{
    return c->close_after_write || c->deferred_err;
}

void kr_conn_answer_later(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    if (c->poll_wait != KR_PW_NONE)
        return;
    c->poll_wait = KR_PW_READY;
    c->poll_since_ms = uv_now(&nt->loop);
    kr_pw_push(&nt->ready, c);
}

void kr_conn_hold_answer(struct kr_conn *c)
{
    struct kr_nt *nt = c->nt;
    if (nt->live.poll_wait_ms)
        KR_ST_INC(nt, polls_waited, 1);
    kr_poll_hold(c, nt->live.poll_wait_ms);
}

void kr_conn_wake_answer(struct kr_conn *c)
{
    kr_poll_wake(c);
}

void kr_conn_polled(struct kr_conn *c)
{
    c->last_poll_ms = kr_now_ms();
}

void kr_conn_emit_replies(struct kr_conn *c)
{
    kr_rq_emit(c);
}

bool kr_conn_replies_waiting(const struct kr_conn *c)
{
    return c->rq_count > 0;
}

struct kr_cq_entry *kr_conn_head(struct kr_conn *c)
{
    return kr_dlv_head(&c->dlv);
}

void kr_conn_pop(struct kr_conn *c)
{
    kr_dlv_pop(&c->nt->dlv, &c->dlv);
}

bool kr_conn_has_queued(const struct kr_conn *c)
{
    return c->dlv.q.count > 0;
}

uint32_t kr_conn_ready_positioned(struct kr_conn *c, uint64_t *bytes)
{
    struct kr_nt *nt = c->nt;
    kr_cmd_track_position(c);
    return kr_dlv_ready_positioned(&nt->dlv, &c->dlv, nt->live.max_poll_reply_bytes, bytes);
}

uint64_t kr_conn_position_interval_ms(const struct kr_conn *c)
{
    return c->nt->srv->cfg->position_interval_ms;
}
