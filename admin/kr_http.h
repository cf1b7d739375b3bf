/* The HTTP monitoring listener (`http_port`, on `http_listen_ip` or else `listen_ip`),
 * served by libmicrohttpd on a thread of its own (never a net or shard thread, never the
 * control thread's loop: the connection listing it asks the net threads for blocks).
 *
 *   /metrics           Prometheus text exposition of every figure of `stats`
 *                      (kr_server_figures), plus distributions of the clients' queues
 *   /healthz           200 "ok" while serving, 503 "draining" once a drain began
 *   /api/server        JSON: the figures, the state, the recent fanout warnings
 *   /api/connections   JSON: connections, largest queues first (paginated, sortable)
 *   /api/topics        JSON: the topics with the most subscribers (top N)
 *   /                  the status page (HTML, its script polls the JSON endpoints)
 *
 * Read-only: GET and HEAD only (others: 405), request headers bounded
 * (KR_HTTP_REQUEST_MAX), at most `http_max_connections` connections (more wait in the listen backlog), peers outside
 * allow_from refused at accept (counted in refused_connections). */
#ifndef KR_HTTP_H
#define KR_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "kr_cfg.h"
#include "kr_net.h"

#define KR_HTTP_REQUEST_MAX (16 * 1024)   /* bytes of request line + headers per connection */
#define KR_HTTP_TIMEOUT_S 10              /* an idle monitoring connection is closed */
#define KR_HTTP_PAGE_MAX 1000             /* most rows one /api/connections or /api/topics
                                             answer holds */
#define KR_HTTP_OFFSET_MAX 100000         /* largest offset of /api/connections */

struct kr_http;

/* Bind cfg->http_port (the caller checks it is not 0) and start the HTTP thread. `srv` must
 * be started and outlive the listener. Returns 0 or -errno with a one-line message in err.
 * Control thread. */
int kr_http_start(const struct kr_cfg *cfg, struct kr_server *srv, struct kr_http **out,
                  char *err, size_t errlen);
/* The bound port (useful with http_port 0 in tests). Any thread. */
uint16_t kr_http_port(const struct kr_http *h);
/* Stop the thread, close every monitoring connection and the socket, free h (NULL is a
 * no-op). Control thread, before kr_server_stop. */
void kr_http_stop(struct kr_http *h);

/* The Prometheus name of a figure of `stats`: "kraken_" + name, a unit suffix where the
 * name implies one (_seconds for times, _bytes for memory-size gauges), "_total" for counters.
 * Writes at most cap bytes (NUL included). Any thread. */
void kr_http_metric_name(const struct kr_figure *f, char *buf, size_t cap);

#endif
