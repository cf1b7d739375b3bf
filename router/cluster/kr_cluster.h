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

struct kr_cluster_stats {
    bool connected;
    char server[128];          /* the NATS server the link is connected to, or "" */
    char node[64];             /* this node's name */
    uint64_t origin;           /* this node's origin id (random per start) */
    uint64_t reconnects;
    uint64_t subjects;         /* topic subscriptions held */
    uint64_t peers;            /* other nodes heard from in the last few seconds */
    uint64_t msgs_out;         /* entries forwarded */
    uint64_t copies_out;       /* NATS messages they took (one per distinct topic) */
    uint64_t msgs_in;          /* entries received and fanned out locally */
    uint64_t duplicates;       /* further copies of an entry already received, dropped */
    uint64_t lost_forwards;    /* copies libnats refused (reconnect buffer full, closed) */
    uint64_t resyncs_sent;     /* lost-forwards notices published */
    uint64_t resyncs_received; /* notices from other nodes */
    uint64_t resync_topics;    /* topics whose local subscribers were told to resync */
    uint64_t barriers;         /* subscribe requests that waited for the cluster */
    uint64_t barrier_us;       /* total time they waited */
    uint64_t barrier_timeouts; /* probes that some node did not answer in time */
    uint64_t bad_bodies;       /* messages from the cluster that did not decode */
    uint64_t slow_consumers;   /* topics whose entries outran the shards (cluster_max_pending) */
};
/* Relaxed reads of the link's counters. Any thread. */
void kr_cluster_stats(struct kr_cluster *cl, struct kr_cluster_stats *out);

#endif
