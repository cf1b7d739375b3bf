/* The net threads' statistics, declared once. Each net thread keeps one struct
 * kr_nt_stats (relaxed atomic stores by its owner, relaxed loads by anyone); this list
 * drives the struct, the sum over threads (kr_nt_stats_sum) and every output of the
 * figures (kr_server_figures: the memcached `stats` lines, the admin socket), so a counter
 * cannot be incremented in one place and forgotten in another.
 *
 * X(name, kind, help): kind is COUNTER (only grows) or GAUGE (goes up and down). The order
 * is the order of the output. No libuv: any file may include it. */
#ifndef KR_COUNTERS_H
#define KR_COUNTERS_H

#include <stdint.h>

#define KR_NT_COUNTERS(X)                                                                         \
    X(curr_connections, GAUGE, "client connections open now")                                     \
    X(total_connections, COUNTER, "client connections accepted")                                  \
    X(rejected_connections, COUNTER,                                                              \
      "connections answered SERVER_ERROR Too many clients (max_tcp_clients or out of descriptors)") \
    X(accept_fd_exhausted, COUNTER, "times accepting failed with EMFILE/ENFILE")                  \
    X(refused_connections, COUNTER, "connections from outside allow_from, closed unread")         \
    X(cmd_get, COUNTER, "get requests")                                                            \
    X(cmd_set, COUNTER, "set requests")                                                            \
    X(bytes_read, COUNTER, "bytes read from clients")                                              \
    X(bytes_written, COUNTER, "bytes written to clients")                                          \
    X(subscribe_requests, COUNTER, "subscribe requests (retroactive ones included)")              \
    X(unsubscribe_requests, COUNTER, "unsubscribe requests")                                      \
    X(publish_requests, COUNTER, "publish requests")                                               \
    X(messages_published, COUNTER, "published entries")                                            \
    X(messages_delivered, COUNTER, "entries handed to clients by get messages")                   \
    X(polls_waited, COUNTER, "empty polls that waited for a message (poll_wait_ms)")              \
    X(deliveries_queued, COUNTER, "entries queued for clients")                                   \
    X(queued_messages, GAUGE, "entries waiting in client queues")                                 \
    X(queued_bytes, GAUGE, "reply bytes of the entries waiting in client queues")                 \
    X(queue_overflows, COUNTER, "client queues discarded (the client is told and closed)")        \
    X(queue_collapses, COUNTER,                                                                   \
      "queues of clients subscribed to __kraken__:resync replaced by a resync notice instead")     \
    X(resync_notices, COUNTER, "resync notices queued for clients (__kraken__:resync)")            \
    X(resync_topics, COUNTER,                                                                     \
      "topics named by resync notices (a * notice counts the entries it replaced)")              \
    X(memory_overflows, COUNTER, "client queues discarded because memory_used was over max_memory") \
    X(output_bytes, GAUGE, "reply bytes not yet written to the sockets")                          \
    X(drain_errors, COUNTER, "clients told SERVER_ERROR shutting down at the drain deadline")     \
    X(ring_full_waits, COUNTER, "events that waited for space in a ring towards a shard")         \
    X(fanout_warnings, COUNTER, "messages that reached router_min_fanout_to_warn subscribers")    \
    X(publish_topic_warnings, COUNTER,                                                            \
      "entries published to router_min_publish_to_topics_to_warn topics or more")                 \
    X(register_requests, COUNTER, "register requests")                                             \
    X(retro_requests, COUNTER, "retroactive subscribe requests")                                   \
    X(retro_not_found, COUNTER, "retroactive subscribes answered NOT_FOUND")                      \
    X(retro_future_horizons, COUNTER, "retroactive horizons in the future, taken as now")         \
    X(messages_replayed, COUNTER, "entries replayed by retroactive subscribes and resumes")       \
    X(resume_requests, COUNTER, "resume requests (a position token and topics)")                  \
    X(resumes_waited, COUNTER, "resumes that waited for one in progress (resume_max_active)")   \
    X(resume_moved, COUNTER,                                                                      \
      "resumes of a token another node of the cluster issued (that node is asked)")             \
    X(resume_foreign, COUNTER,                                                                    \
      "resumes of a token of another node or an earlier start (every topic told to resync)")     \
    X(protocol_errors, COUNTER, "requests answered with an error (the connection is closed)")     \
    X(idle_timeouts, COUNTER, "connections closed after client_idle_timeout_ms")                  \
    X(request_timeouts, COUNTER, "connections closed with a request incomplete after request_timeout_ms") \
    X(cluster_resyncs, COUNTER,                                                                   \
      "subscribers told to resync because the cluster link may have lost messages for them")     \
    X(net_loop_iterations, COUNTER, "net thread loop iterations")                                 \
    X(net_loop_over_1ms, COUNTER,                                                                 \
      "net thread loop iterations longer than 1 ms, not counting the wait for events")           \
    X(net_loop_over_10ms, COUNTER,                                                                \
      "net thread loop iterations longer than 10 ms, not counting the wait for events")

/* Names of the counters (kr_conn_count): KR_NTC_<name>, in the order of the list. */
enum kr_nt_counter {
#define KR_NT_ENUM(name, kind, help) KR_NTC_##name,
    KR_NT_COUNTERS(KR_NT_ENUM)
#undef KR_NT_ENUM
    KR_NTC_COUNT
};

struct kr_nt_stats {
#define KR_NT_FIELD(name, kind, help) uint64_t name;
    KR_NT_COUNTERS(KR_NT_FIELD)
#undef KR_NT_FIELD
};

#endif
