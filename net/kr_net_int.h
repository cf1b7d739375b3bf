/* Internals of the net module shared by kr_net.c and kr_net_admin.c (the requests other
 * threads make to net threads: connection lists, drain). Not part of the module's public
 * interface (that is kr_net.h). */
#ifndef KR_NET_INT_H
#define KR_NET_INT_H

#include <stdint.h>

#include "kr_net.h"

/* ------------------------------------------------ kr_net_admin.c: the request queues */

struct kr_net_reqq;

/* One kr_reqq (queue/kr_queue.h) for each of the `nnet` net threads of `s`; a submit wakes
 * the net thread with kr_net_wake. Aborts on out of memory. Control thread. */
struct kr_net_reqq *kr_net_reqq_create(struct kr_server *s, uint32_t nnet);
void kr_net_reqq_destroy(struct kr_net_reqq *q);
/* Serve the requests queued for net thread `net` (kr_reqq_serve: one relaxed load when
 * there are none). Net thread `net`, from its wake-up callback. */
void kr_net_reqq_serve(struct kr_server *s, uint32_t net);
/* Refuse new requests and answer the queued ones with -ESHUTDOWN (kr_reqq_shutdown on
 * every net thread's queue). Control thread, after the net threads stopped. */
void kr_net_reqq_shutdown(struct kr_server *s);

/* ------------------------------------------------ kr_net.c: what the requests run */

struct kr_net_reqq *kr_net_server_reqq(struct kr_server *s);
/* Wake net thread `net` (uv_async_send). Any thread. */
void kr_net_wake(struct kr_server *s, uint32_t net);
/* The next open connection of net thread `net` in slot order from *slot on: fills *out,
 * sets *slot past it and returns 1; 0 when there is none. Net thread `net`. */
int kr_net_conn_next(struct kr_server *s, uint32_t net, uint32_t *slot,
                     struct kr_net_conn_info *out);
/* The open connection `id`: 0, or -ENOENT. Net thread KR_CONN_NET(id). */
int kr_net_conn_find(struct kr_server *s, uint64_t id, struct kr_net_conn_info *out);
/* The drain reaches up to `n` more clients of net thread `net`: each is unsubscribed
 * everywhere, then closed once nothing is queued for it (a client holding messages after
 * the poll reply that empties its queue). Returns how many were reached. Net thread `net`. */
uint32_t kr_net_close_some(struct kr_server *s, uint32_t net, uint32_t n);
/* The drain's deadline: every client of net thread `net` is closed after its pending
 * replies; one still holding messages (or whose shards did not confirm the unsubscribe) is
 * sent `SERVER_ERROR shutting down` first. Returns how many were told. Net thread `net`. */
uint32_t kr_net_drain_deadline(struct kr_server *s, uint32_t net);
/* Close net thread `net`'s listening socket (no new connections). Net thread `net`. */
void kr_net_stop_listening(struct kr_server *s, uint32_t net);

#endif
