/* The cluster link: this node's connection to a NATS cluster, where several Kraken nodes
 * federate with single-node semantics (docs/cluster.md).
 *
 * To the router it is two more mailbox indexes beside the net threads (struct
 * kr_cluster_opts): `in_idx`, on which the library's one message-delivery thread injects the
 * entries other nodes published (KR_EV_PUBLISH, a reference handed over) and kicks
 * (KR_EV_RESYNC); and `ctl_idx`, on which the link thread learns which topics have local
 * subscribers (KR_EV_INTEREST) and gets the fanout warnings of injected entries.
 * To the net threads it is one ring pair each (kr_cluster_send / kr_cluster_recv):
 *   net -> link  KR_EV_PUBLISH (ptr = message, one reference): forward it to the cluster,
 *                once per distinct topic, each copy carrying this node's origin id, a
 *                sequence number and the entry's full topic list.
 *                KR_EV_SUBSCRIBE / KR_EV_RETRO_SUBSCRIBE (ptr = command block with every topic
 *                of the request, pad = its request number, horizon_us): the barrier. The link
 *                takes a NATS subscription for each topic it does not hold yet, and answers
 *   link -> net  KR_EV_ACK (same block, aux = the request type; mask = 1 when a retroactive
 *                horizon is older than this node's cluster coverage of one of the topics)
 *                once every topic's interest is in force on every node's NATS server.
 * No lock and no libnats call on the shards' or the net threads' paths.
 */
#ifndef KR_CLUSTER_H
#define KR_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kr_cfg.h"
#include "kr_queue.h"
#include "kr_router.h"

struct kr_cluster;

struct kr_cluster_opts {
    const struct kr_cfg *cfg;  /* cluster_* keys; must outlive the link */
    struct kr_router *router;
    uint32_t nnet;             /* net threads: ring pairs 0..nnet-1 */
    uint32_t in_idx;           /* router index of the delivery thread */
    uint32_t ctl_idx;          /* router index of the link thread */
    uint32_t mailbox_capacity; /* events per ring */
    uint16_t client_port;      /* for the default node name */
    uint64_t origin;           /* this node's origin id: the start id its position tokens
                                  carry, so another node asks it (0: a random one) */
    /* Wake net thread `net` after the link pushed towards it. Link thread. */
    void (*wake_net)(void *arg, uint32_t net);
    void *wake_arg;
};

/* Connect to the cluster (blocking, bounded by libnats' connect timeout). When no server
 * answers: -ECONNREFUSED with the reason in err, unless cluster_start_degraded is set (then
 * the link keeps trying in the background). Aborts on out of memory. Control thread. */
int kr_cluster_create(const struct kr_cluster_opts *o, struct kr_cluster **out, char *err,
                      size_t errlen);
/* Start the link thread. Returns 0 or -errno. Control thread, after the router started. */
int kr_cluster_start(struct kr_cluster *cl);
/* Stop the link thread and close the NATS connection (entries still in the rings are
 * released). Control thread, after the net threads stopped, before the router stops. */
void kr_cluster_stop(struct kr_cluster *cl);
/* Free everything. Control thread, after kr_cluster_stop and kr_router_stop. */
void kr_cluster_destroy(struct kr_cluster *cl);

/* Wake the link thread (the router's wake callback for ctl_idx). Any thread. */
void kr_cluster_wake(struct kr_cluster *cl);

/* Push an event from net thread `net` (see above); false when the ring is full: the caller
 * keeps it and retries. Net thread `net` only. */
bool kr_cluster_send(struct kr_cluster *cl, uint32_t net, const struct kr_event *ev);
/* Wake the link if net thread `net` pushed since its last flush. Net thread `net`; once per
 * batch. */
void kr_cluster_flush(struct kr_cluster *cl, uint32_t net);
/* Pop the next event from the link to net thread `net`. Net thread `net` only. */
bool kr_cluster_recv(struct kr_cluster *cl, uint32_t net, struct kr_event *ev);

/* The publisher id of entries injected from the cluster (no local connection has it). */
uint64_t kr_cluster_publisher(const struct kr_cluster *cl);

/* The link's counters, declared once. This list makes the link's own counters (each written
 * by one thread with relaxed stores), the fields of struct kr_cluster_stats, their copy
 * (kr_cluster_stats) and the printed figures `cluster_<name>` (net/kr_stats.c: `stats`,
 * /metrics, /api/server), in this order.
 *
 * X(name, kind, micro, help): kind is COUNTER (only grows) or GAUGE; micro 1 for a count of
 * microseconds printed as seconds with a fraction. */
#define KR_CLUSTER_COUNTERS(X)                                                                    \
    X(reconnects, COUNTER, 0, "reconnections of the cluster link")                                \
    X(subjects, GAUGE, 0, "topic subscriptions the link holds in the cluster")                    \
    X(peers, GAUGE, 0, "other nodes heard from in the last seconds")                              \
    X(msgs_out, COUNTER, 0, "entries forwarded to the cluster")                                   \
    X(copies_out, COUNTER, 0, "NATS messages the forwarded entries took (one per distinct topic)") \
    X(msgs_in, COUNTER, 0, "entries from other nodes fanned out here")                            \
    X(duplicates, COUNTER, 0,                                                                     \
      "further copies of an entry already received from the cluster, dropped")                    \
    X(lost_forwards, COUNTER, 0,                                                                  \
      "copies that could not be forwarded (link down and its buffer full)")                       \
    X(resyncs_sent, COUNTER, 0, "lost-forward notices sent to the other nodes")                   \
    X(resyncs_received, COUNTER, 0, "lost-forward notices from other nodes")                      \
    X(resync_topics, COUNTER, 0, "topics whose local subscribers were told to resync")            \
    X(barriers, COUNTER, 0, "subscribe requests that waited for the cluster to hold their interest") \
    X(barrier_time, COUNTER, 1, "total time subscribe requests waited for the cluster")           \
    X(barrier_timeouts, COUNTER, 0, "probes a node did not answer in time")                       \
    X(bad_messages, COUNTER, 0, "messages from the cluster that did not decode")                  \
    X(flushes, COUNTER, 0,                                                                        \
      "flushes to the NATS server that publishes waited for (cluster_publish_ack flushed)")       \
    X(peer_silences, COUNTER, 0,                                                                  \
      "other nodes that went silent without saying they left (their recent topics told)")       \
    X(peer_returns, COUNTER, 0,                                                                   \
      "nodes taken for silent that were heard again (cut off, not dead: every held topic told)") \
    X(resumes_asked, COUNTER, 0, "resumes of other nodes' tokens (asked of the issuing node)")   \
    X(resume_unanswered, COUNTER, 0,                                                              \
      "of those, answered by nobody (node unknown or silent past cluster_resume_timeout_ms): "   \
      "every topic told to resync")                                                               \
    X(resume_replayed, COUNTER, 0, "messages other nodes replayed for resumes here")             \
    X(resume_in_flight, COUNTER, 0,                                                               \
      "of those resumes, told to resync: an entry of this node or a third was still on its "     \
      "way to the answering node")                                                                \
    X(resumes_served, COUNTER, 0, "resumes of this node's tokens answered for other nodes")      \
    X(write_waits, COUNTER, 0,                                                                    \
      "times the link stopped taking forwards while its NATS server had not taken 1 MiB "        \
      "already buffered (resumed as the socket drains)")                                          \
    X(slow_consumers, COUNTER, 0,                                                                 \
      "times a topic's entries from the cluster outran the shards past cluster_max_pending "      \
      "(dropped by the cluster, its subscribers told)")

struct kr_cluster_stats {
    bool connected;
    char server[128];          /* the NATS server the link is connected to, or "" */
    char node[64];             /* this node's name */
    uint64_t origin;           /* this node's origin id (random per start) */
#define KR_CLUSTER_STATS_FIELD(name, kind, micro, help) uint64_t name;
    KR_CLUSTER_COUNTERS(KR_CLUSTER_STATS_FIELD)
#undef KR_CLUSTER_STATS_FIELD
};
/* Relaxed reads of the link's counters. Any thread. */
void kr_cluster_stats(struct kr_cluster *cl, struct kr_cluster_stats *out);

#endif
