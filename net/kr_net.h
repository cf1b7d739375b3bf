/* Net module: the acceptor and the net threads that own every client connection.
 *
 * Each net thread runs its own libuv loop with its own SO_REUSEPORT listening socket on the
 * configured address (the kernel spreads new connections over them); `max_tcp_clients` is
 * enforced with one process-wide counter. A net thread owns every byte of its connections:
 * socket, parser state, the per-client delivery queue, limits and the idle timer. It talks
 * to the router shards only through the router's mailboxes. */
#ifndef KR_NET_H
#define KR_NET_H

#include <stdint.h>

#include "kr_cfg.h"

struct kr_server;

/* Bind the listening sockets and create the router and net threads (nothing runs yet).
 * `cfg` must outlive the server. Returns 0 or -errno with a message in err. Control thread. */
int kr_server_create(const struct kr_cfg *cfg, struct kr_server **out, char *err, size_t errlen);
/* Start shard and net threads; logs "listening on IP:PORT". Returns 0 or -errno.
 * Control thread. */
int kr_server_start(struct kr_server *s);
/* The bound TCP port (useful with tcp_server_port 0). Any thread. */
uint16_t kr_server_port(const struct kr_server *s);
/* Close every connection, stop and join all threads. Control thread. */
void kr_server_stop(struct kr_server *s);
void kr_server_destroy(struct kr_server *s);

#endif
