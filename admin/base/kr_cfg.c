/* Configuration: a single option table drives the defaults, kr_cfg_set/kr_cfg_get, the
 * `key = value` file parser (libinih), the command line (getopt_long) and --help. */
#include "kr_cfg.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <inttypes.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kr_log.h"

enum kr_cfg_type {
    KR_CFG_STR,   /* text, at most KR_CFG_STR_MAX - 1 bytes */
    KR_CFG_IP,    /* IPv4 or IPv6 address text (inet_pton), stored as text */
    KR_CFG_U32,   /* uint32_t */
    KR_CFG_U64,   /* uint64_t */
    KR_CFG_LEVEL, /* int, enum kr_log_level */
};

#define KR_CFG_LIVE 0x1u /* may be changed while the server runs (admin `config set`) */
#define KR_CFG_SIZE 0x2u /* a byte count: a k, m or g suffix (x1024) is accepted */
#define KR_CFG_CPUS 0x4u /* default: the number of CPUs this process may run on */
#define KR_CFG_USERDEF 0x8u /* `def` is the default for root, `def_user` for other users */
#define KR_CFG_HALFRAM 0x10u /* default: half the physical memory (sysconf), `def` if unknown */

struct kr_cfg_opt {
    const char *name;
    enum kr_cfg_type type;
    unsigned flags;
    size_t offset; /* of the field in struct kr_cfg */
    size_t size;   /* of that field, checked against the type */
    uint64_t min, max;
    const char *def; /* default as text, parsed like any other value */
    const char *help;
    const char *def_user; /* KR_CFG_USERDEF: the default when not running as root */
};

#define KR_KIB 1024ull
#define KR_MIB (1024ull * KR_KIB)
#define KR_GIB (1024ull * KR_MIB)
#define KR_TIB (1024ull * KR_GIB)

#define KR_CFG_OPT(field, type, flags, min, max, def, help)                                        \
    {#field, type, flags, offsetof(struct kr_cfg, field), sizeof(((struct kr_cfg *)0)->field),     \
     min, max, def, help, NULL}
/* A string key whose default depends on whether the process runs as root. */
#define KR_CFG_OPT_BYUSER(field, def_root, def_user, help)                                         \
    {#field, KR_CFG_STR, KR_CFG_USERDEF, offsetof(struct kr_cfg, field),                           \
     sizeof(((struct kr_cfg *)0)->field), 0, 0, def_root, help, def_user}

/* The option table: the one place a key is defined. */
static const struct kr_cfg_opt kr_cfg_opts[] = {
    KR_CFG_OPT(listen_ip, KR_CFG_IP, 0, 0, 0, "127.0.0.1",
               "IPv4 or IPv6 address to accept clients on (an Erlang tuple such as {0,0,0,0} is "
               "read too)"),
    KR_CFG_OPT(tcp_server_port, KR_CFG_U32, 0, 0, 65535, "12355",
               "TCP port for clients; 0 picks a free port and logs it"),
    KR_CFG_OPT(resp_port, KR_CFG_U32, 0, 0, 65535, "0",
               "TCP port on listen_ip whose clients speak only RESP (the Redis protocol), "
               "beside tcp_server_port; same allow_from, max_tcp_clients and limits; 0 = off"),
    KR_CFG_OPT(max_tcp_clients, KR_CFG_U32, KR_CFG_LIVE, 1, 1000000, "10000",
               "client connections beyond this many are refused with SERVER_ERROR Too many "
               "clients"),
    KR_CFG_OPT(tcp_keepalive_s, KR_CFG_U32, KR_CFG_LIVE, 0, 86400, "60",
               "TCP keepalive on client sockets: first probe after this many idle seconds, then "
               "every third of it, 3 probes before the connection is dropped (0 = off; applies "
               "to new connections)"),
    KR_CFG_OPT(allow_from, KR_CFG_STR, 0, 0, 0,
               "127.0.0.0/8, ::1/128, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7, "
               "fe80::/10",
               "IPv4/IPv6 CIDRs (comma or space separated) that may connect to the client, "
               "health and HTTP monitoring ports; others are closed at once. 'any' (or 0.0.0.0/0,::/0) allows "
               "everyone"),
    KR_CFG_OPT(requirepass, KR_CFG_STR, 0, 0, 0, "",
               "password Redis-protocol (RESP) clients must give with AUTH or HELLO ... AUTH "
               "before any other command (\"\" = off); the memcached protocol has none"),
    KR_CFG_OPT(num_router_shards, KR_CFG_U32, KR_CFG_CPUS, 1, 64, NULL,
               "router shard threads; each owns the topics that hash to it"),
    KR_CFG_OPT(num_net_threads, KR_CFG_U32, KR_CFG_CPUS, 1, 64, NULL,
               "network threads; each owns a share of the client connections"),
    KR_CFG_OPT(router_min_fanout_to_warn, KR_CFG_U32, KR_CFG_LIVE, 0, UINT32_MAX, "1000",
               "log a warning when one message reaches at least this many subscribers "
               "(0 = never)"),
    KR_CFG_OPT(router_min_publish_to_topics_to_warn, KR_CFG_U32, KR_CFG_LIVE, 0, UINT32_MAX,
               "1000",
               "log a warning when one message is published to at least this many topics "
               "(0 = never)"),
    KR_CFG_OPT(messages_stored_per_router_shard, KR_CFG_U32, 0, 1, 10000000, "10000",
               "recent messages each router shard keeps for retroactive subscriptions"),
    KR_CFG_OPT(history_max_bytes, KR_CFG_U64, KR_CFG_SIZE, 1, KR_TIB, "64m",
               "bytes of message buffers each router shard keeps for retroactive "
               "subscriptions; the oldest are evicted first (a horizon older than what is "
               "kept answers NOT_FOUND)"),
    KR_CFG_OPT(max_queued_messages, KR_CFG_U64, KR_CFG_LIVE, 1, 1000000000, "100000",
               "messages waiting for one client before its queue overflows (the client is told "
               "and disconnected)"),
    KR_CFG_OPT(max_queued_bytes, KR_CFG_U64, KR_CFG_LIVE | KR_CFG_SIZE, 1, KR_TIB, "64m",
               "bytes waiting for one client before its queue overflows"),
    KR_CFG_OPT(resync_max_topics, KR_CFG_U32, 0, 1, 1000000, "1000",
               "a client subscribed to __kraken__:resync whose queue would overflow keeps its "
               "connection: the queue is replaced by one notice naming its topics, up to this "
               "many (else the notice is *, every topic)"),
    KR_CFG_OPT(position_interval_ms, KR_CFG_U64, 0, 1000, 3600000, "1000",
               "a RESP client subscribed to __kraken__:position gets its position after the "
               "messages pushed to it, and at least this often while its position moves "
               "without messages for it (checked once a second)"),
    KR_CFG_OPT(resume_max_entries, KR_CFG_U64, 0, 1, 1000000000, "100000",
               "messages one resume replays at most; past it the topics with the most messages "
               "get a resync notice instead of their replay"),
    KR_CFG_OPT(resume_max_bytes, KR_CFG_U64, KR_CFG_SIZE, 1, KR_TIB, "64m",
               "bytes of messages one resume replays at most (the same rule)"),
    KR_CFG_OPT(resume_max_active, KR_CFG_U64, 0, 1, 1000000, "256",
               "resumes in progress on the node at most (shared evenly by the net threads); "
               "more wait their turn, so a reconnect storm does not stall live traffic"),
    KR_CFG_OPT(max_poll_reply_bytes, KR_CFG_U64, KR_CFG_LIVE | KR_CFG_SIZE, 1, KR_GIB, "1m",
               "entry bytes one `get messages` reply holds at most (always at least one "
               "entry); the rest stays queued for the next poll"),
    KR_CFG_OPT(max_memory, KR_CFG_U64, KR_CFG_LIVE | KR_CFG_SIZE | KR_CFG_HALFRAM, 0, 64 * KR_TIB,
               "4g",
               "bytes of queued messages, retroactive history and unsent replies, all clients "
               "together; over it the clients with the largest queues overflow (0 = no bound)"),
    KR_CFG_OPT(max_message_bytes, KR_CFG_U64, KR_CFG_SIZE, 1, KR_GIB, "1m",
               "largest payload of one published message"),
    KR_CFG_OPT(max_request_bytes, KR_CFG_U64, KR_CFG_SIZE, 1, 4 * KR_GIB, "16m",
               "largest data block of one request"),
    KR_CFG_OPT(max_topic_bytes, KR_CFG_U32, KR_CFG_SIZE, 1, 64 * KR_KIB, "1024",
               "longest topic name"),
    KR_CFG_OPT(max_line_bytes, KR_CFG_U32, KR_CFG_SIZE, 16, 16 * KR_MIB, "8192",
               "longest request line, \\r\\n included"),
    KR_CFG_OPT(client_idle_timeout_ms, KR_CFG_U64, KR_CFG_LIVE, 0, 365ull * 24 * 3600 * 1000,
               "3600000",
               "close a client connection after this many milliseconds without a complete "
               "request (0 = never)"),
    KR_CFG_OPT(request_timeout_ms, KR_CFG_U64, KR_CFG_LIVE, 0, 365ull * 24 * 3600 * 1000,
               "30000",
               "close a client connection whose request is still incomplete this many "
               "milliseconds after its first bytes arrived (0 = no limit)"),
    KR_CFG_OPT(poll_wait_ms, KR_CFG_U64, KR_CFG_LIVE, 0, 60000, "0",
               "0: a `get messages` that finds nothing queued is answered END at once (as the "
               "Erlang server did). N > 0: it is answered as soon as a message arrives, or END "
               "after N milliseconds: fewer empty polls from clients that poll in a loop, but "
               "a client doing one request at a time waits up to N ms on every empty poll"),
    KR_CFG_OPT(log_level, KR_CFG_LEVEL, KR_CFG_LIVE, 0, 0, "info",
               "lowest level written: debug, info, warn or error"),
    KR_CFG_OPT(log_file, KR_CFG_STR, 0, 0, 0, "",
               "file to append log lines to; empty = standard error (with journald priorities "
               "when stderr is the journal)"),
    KR_CFG_OPT(pid_file, KR_CFG_STR, 0, 0, 0, "",
               "file to write the process id to at start (removed at exit); empty = none"),
    KR_CFG_OPT_BYUSER(admin_socket, "/run/kraken/admin.sock", "./kraken-admin.sock",
                      "Unix socket of the admin line protocol (mode 0600; its directory is "
                      "created); every subcommand uses it to find the server. Other users' "
                      "default: ./kraken-admin.sock"),
    KR_CFG_OPT(health_port, KR_CFG_U32, 0, 0, 65535, "0",
               "TCP port on listen_ip answering one line, ok or draining, to each connection "
               "(load-balancer health checks); 0 = off"),
    KR_CFG_OPT(http_port, KR_CFG_U32, 0, 0, 65535, "0",
               "TCP port of the HTTP monitoring listener (Prometheus /metrics, /healthz, JSON "
               "under /api/, the status page at /); read-only, GET and HEAD only; 0 = off"),
    KR_CFG_OPT(http_listen_ip, KR_CFG_STR, 0, 0, 0, "",
               "IPv4 or IPv6 address of the HTTP monitoring listener; empty = listen_ip"),
    KR_CFG_OPT(http_max_connections, KR_CFG_U32, 0, 1, 1024, "16",
               "open connections the HTTP monitoring listener serves at once; more wait in the "
               "listen backlog until one closes"),
    KR_CFG_OPT(drain_timeout_ms, KR_CFG_U64, KR_CFG_LIVE, 0, 3600000, "10000",
               "on SIGTERM or admin drain: close the clients in batches spread over this many "
               "milliseconds, then exit"),
    KR_CFG_OPT(cluster_nats_url, KR_CFG_STR, 0, 0, 0, "",
               "NATS servers of the cluster this node joins (comma-separated nats://host:port; "
               "empty = a single node, no cluster)"),
    KR_CFG_OPT(cluster_node_name, KR_CFG_STR, 0, 0, 0, "",
               "this node's name in the cluster (logs, stats); empty = host name:client port"),
    KR_CFG_OPT(cluster_subject_prefix, KR_CFG_STR, 0, 0, 0, "kraken",
               "first token of every NATS subject the cluster uses; nodes with the same prefix "
               "form one Kraken cluster"),
    KR_CFG_OPT(cluster_user, KR_CFG_STR, 0, 0, 0, "", "user name for the NATS servers"),
    KR_CFG_OPT(cluster_password, KR_CFG_STR, 0, 0, 0, "", "password for the NATS servers"),
    KR_CFG_OPT(cluster_token, KR_CFG_STR, 0, 0, 0, "", "token for the NATS servers"),
    KR_CFG_OPT(cluster_creds_file, KR_CFG_STR, 0, 0, 0, "",
               "NATS credentials file (user JWT and NKey seed) for the NATS servers"),
    KR_CFG_OPT(cluster_tls, KR_CFG_U32, 0, 0, 1, "0", "1 = connect to the NATS servers with TLS"),
    KR_CFG_OPT(cluster_tls_ca_file, KR_CFG_STR, 0, 0, 0, "",
               "CA certificates (PEM) that sign the NATS servers' certificates"),
    KR_CFG_OPT(cluster_tls_cert_file, KR_CFG_STR, 0, 0, 0, "",
               "client certificate chain (PEM) for TLS to the NATS servers"),
    KR_CFG_OPT(cluster_tls_key_file, KR_CFG_STR, 0, 0, 0, "",
               "private key (PEM) of cluster_tls_cert_file"),
    KR_CFG_OPT(cluster_start_degraded, KR_CFG_U32, 0, 0, 1, "0",
               "1 = start serving local clients when no NATS server answers, and keep trying; "
               "0 = exit non-zero"),
    KR_CFG_OPT(cluster_publish_ack, KR_CFG_STR, 0, 0, 0, "local",
               "local: a publish answers STORED once handed to the router; flushed: once its "
               "entry is also in this node's NATS server's hands (a node that dies cannot have "
               "acknowledged entries no other node sees or is told about)"),
    KR_CFG_OPT(cluster_linger_ms, KR_CFG_U64, 0, 0, 3600000, "2000",
               "a topic's cluster subscription is dropped this long after its last local "
               "subscriber left"),
    KR_CFG_OPT(cluster_send_asap, KR_CFG_U32, 0, 0, 1, "0",
               "no effect any more (accepted so existing configurations load): the cluster "
               "link writes what it forwards at the end of each pass, in one write"),
    KR_CFG_OPT(cluster_resume_timeout_ms, KR_CFG_U64, 0, 1, 600000, "2000",
               "a resume of a token another node issued waits this long for that node's answer; "
               "then its topics are told to resync"),
    KR_CFG_OPT(drain_resume_window_ms, KR_CFG_U64, 0, 0, 3600000, "30000",
               "in a cluster, a drained node keeps its history and its topics' interest and "
               "answers other nodes' resumes of its tokens this long after its last client "
               "left, then exits (0: exit at once)"),
    KR_CFG_OPT(cluster_max_pending, KR_CFG_U32, 0, 1, 100000000, "65536",
               "entries received from the cluster for one topic that may wait for the shards; "
               "past it the cluster drops them and that topic's local subscribers are told to "
               "resync"),
    KR_CFG_OPT(cluster_reconnect_buf_bytes, KR_CFG_U64, KR_CFG_SIZE, 64 * KR_KIB, KR_GIB, "8m",
               "messages to forward that are held while the link reconnects; past it they "
               "are announced lost"),
};

#define KR_CFG_NOPTS (sizeof(kr_cfg_opts) / sizeof(kr_cfg_opts[0]))

/* getopt_long codes: 0x100 + table index for keys, then these. */
#define KR_CFG_GETOPT_KEY 0x100
#define KR_CFG_GETOPT_CONFIG (KR_CFG_GETOPT_KEY + (int)KR_CFG_NOPTS)
#define KR_CFG_GETOPT_KRAKEN (KR_CFG_GETOPT_CONFIG + 1)

static const struct kr_cfg_opt *kr_cfg_find(const char *key)
{
    if (!key)
        return NULL;
    for (size_t i = 0; i < KR_CFG_NOPTS; i++)
        if (strcmp(kr_cfg_opts[i].name, key) == 0)
            return &kr_cfg_opts[i];
    return NULL;
}

/* "unknown option 'x' (see --help)", with a hint when only the dashes were wrong. */
static int kr_cfg_err_unknown(char *err, size_t errlen, const char *shown, const char *key)
{
    char alt[64];
    size_t i = 0;
    for (; key[i] && i < sizeof(alt) - 1; i++)
        alt[i] = key[i] == '-' ? '_' : key[i];
    alt[i] = '\0';
    if (!key[i] && strcmp(alt, key) != 0 && kr_cfg_find(alt))
        return kr_errf(err, errlen, -EINVAL,
                          "unknown option '%s' (did you mean '%s'? see --help)", shown, alt);
    return kr_errf(err, errlen, -EINVAL, "unknown option '%s' (see --help)", shown);
}

/* Number of CPUs this process may run on. */
/* Half the physical memory in bytes, or 0 when sysconf cannot tell. */
static uint64_t kr_cfg_half_ram(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || psize <= 0)
        return 0;
    return (uint64_t)pages * (uint64_t)psize / 2;
}

static unsigned kr_cfg_cpus(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return (unsigned)n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

/* Plain unsigned decimal, optionally followed by one k/m/g (binary) suffix when
 * `size` is set. -EINVAL for junk, -ERANGE for overflow. */
static int kr_cfg_parse_uint(const char *s, bool size, uint64_t *out)
{
    if (*s < '0' || *s > '9')
        return -EINVAL;
    uint64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    if (*s && size && !s[1]) {
        unsigned shift;
        switch (*s) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        default: return -EINVAL;
        }
        if (v > (UINT64_MAX >> shift))
            return -ERANGE;
        v <<= shift;
        s++;
    }
    if (*s)
        return -EINVAL;
    *out = v;
    return 0;
}

/* A byte count as the shortest text kr_cfg_parse_uint reads back ("64m", "1000"). */
static void kr_cfg_fmt_size(uint64_t v, char *buf, size_t len)
{
    static const char suffix[] = "gmk";
    for (int i = 0; i < 3; i++) {
        unsigned shift = 30u - 10u * (unsigned)i;
        if (v && v % (1ull << shift) == 0) {
            snprintf(buf, len, "%" PRIu64 "%c", v >> shift, suffix[i]);
            return;
        }
    }
    snprintf(buf, len, "%" PRIu64, v);
}

/* Strip one pair of surrounding double quotes ("/var/run/kraken.pid", as Erlang-style
 * command lines and many config files write strings). */
static void kr_cfg_unquote(const char *in, const char **out, size_t *len)
{
    size_t n = strlen(in);
    if (n >= 2 && in[0] == '"' && in[n - 1] == '"') {
        *out = in + 1;
        *len = n - 2;
    } else {
        *out = in;
        *len = n;
    }
}

static const char *kr_cfg_skip_blanks(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* An Erlang address tuple, {127,0,0,1} or {0,0,0,0,0,0,0,1}, as text in out. */
static int kr_cfg_parse_ip_tuple(const char *in, char *out, size_t outlen)
{
    uint32_t parts[8];
    int n = 0;
    const char *p = kr_cfg_skip_blanks(in);
    if (*p++ != '{')
        return -EINVAL;
    for (;;) {
        p = kr_cfg_skip_blanks(p);
        if (*p < '0' || *p > '9' || n == 8)
            return -EINVAL;
        uint32_t v = 0;
        for (; *p >= '0' && *p <= '9'; p++) {
            v = v * 10 + (uint32_t)(*p - '0');
            if (v > 65535)
                return -EINVAL;
        }
        parts[n++] = v;
        p = kr_cfg_skip_blanks(p);
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p++ != '}')
            return -EINVAL;
        break;
    }
    if (*kr_cfg_skip_blanks(p))
        return -EINVAL;
    unsigned char addr[16];
    if (n == 4) {
        for (int i = 0; i < 4; i++) {
            if (parts[i] > 255)
                return -EINVAL;
            addr[i] = (unsigned char)parts[i];
        }
        return inet_ntop(AF_INET, addr, out, (socklen_t)outlen) ? 0 : -EINVAL;
    }
    if (n == 8) {
        for (int i = 0; i < 8; i++) {
            addr[2 * i] = (unsigned char)(parts[i] >> 8);
            addr[2 * i + 1] = (unsigned char)(parts[i] & 0xFF);
        }
        return inet_ntop(AF_INET6, addr, out, (socklen_t)outlen) ? 0 : -EINVAL;
    }
    return -EINVAL;
}

static int kr_cfg_opt_set(struct kr_cfg *cfg, const struct kr_cfg_opt *o, const char *value,
                          char *err, size_t errlen)
{
    char *field = (char *)cfg + o->offset;
    if (!value)
        return kr_errf(err, errlen, -EINVAL, "missing value for %s", o->name);
    switch (o->type) {
    case KR_CFG_STR:
    case KR_CFG_IP: {
        assert(o->size == KR_CFG_STR_MAX);
        const char *v;
        size_t len;
        kr_cfg_unquote(value, &v, &len);
        if (len >= KR_CFG_STR_MAX)
            return kr_errf(err, errlen, -EINVAL,
                              "value for %s is too long (%zu bytes, at most %d)", o->name, len,
                              KR_CFG_STR_MAX - 1);
        char text[KR_CFG_STR_MAX];
        memcpy(text, v, len);
        text[len] = '\0';
        if (o->type == KR_CFG_IP) {
            unsigned char addr[16];
            char tuple[INET6_ADDRSTRLEN];
            if (inet_pton(AF_INET, text, addr) != 1 && inet_pton(AF_INET6, text, addr) != 1) {
                if (kr_cfg_parse_ip_tuple(text, tuple, sizeof(tuple)) < 0)
                    return kr_errf(err, errlen, -EINVAL,
                                      "bad value '%.100s' for %s: expected an IPv4 or IPv6 "
                                      "address",
                                      value, o->name);
                memcpy(text, tuple, strlen(tuple) + 1);
            }
        }
        memcpy(field, text, strlen(text) + 1);
        return 0;
    }
    case KR_CFG_U32:
    case KR_CFG_U64: {
        assert(o->size == (o->type == KR_CFG_U32 ? sizeof(uint32_t) : sizeof(uint64_t)));
        uint64_t v;
        bool size = o->flags & KR_CFG_SIZE;
        if (kr_cfg_parse_uint(value, size, &v) < 0 || v < o->min || v > o->max) {
            char lo[32], hi[32];
            if (size) {
                kr_cfg_fmt_size(o->min, lo, sizeof(lo));
                kr_cfg_fmt_size(o->max, hi, sizeof(hi));
                return kr_errf(err, errlen, -EINVAL,
                                  "bad value '%.100s' for %s: expected a byte count in %s..%s "
                                  "(k, m or g suffix allowed)",
                                  value, o->name, lo, hi);
            }
            return kr_errf(err, errlen, -EINVAL,
                              "bad value '%.100s' for %s: expected an integer in %" PRIu64
                              "..%" PRIu64,
                              value, o->name, o->min, o->max);
        }
        if (o->type == KR_CFG_U32) {
            uint32_t v32 = (uint32_t)v;
            memcpy(field, &v32, sizeof(v32));
        } else {
            memcpy(field, &v, sizeof(v));
        }
        return 0;
    }
    case KR_CFG_LEVEL: {
        assert(o->size == sizeof(int));
        const char *v;
        size_t len;
        kr_cfg_unquote(value, &v, &len);
        char text[16];
        int level = -EINVAL;
        if (len < sizeof(text)) {
            memcpy(text, v, len);
            text[len] = '\0';
            level = kr_log_level_parse(text);
        }
        if (level < 0)
            return kr_errf(err, errlen, -EINVAL,
                              "bad value '%.100s' for %s: expected debug, info, warn or error",
                              value, o->name);
        memcpy(field, &level, sizeof(level));
        return 0;
    }
    }
    return kr_errf(err, errlen, -EINVAL, "internal error: bad type for %s", o->name);
}

static int kr_cfg_opt_get(const struct kr_cfg *cfg, const struct kr_cfg_opt *o, char *buf,
                          size_t buflen)
{
    const char *field = (const char *)cfg + o->offset;
    int n = -1;
    switch (o->type) {
    case KR_CFG_STR:
    case KR_CFG_IP:
        n = snprintf(buf, buflen, "%s", field);
        break;
    case KR_CFG_U32: {
        uint32_t v;
        memcpy(&v, field, sizeof(v));
        n = snprintf(buf, buflen, "%" PRIu32, v);
        break;
    }
    case KR_CFG_U64: {
        uint64_t v;
        memcpy(&v, field, sizeof(v));
        n = snprintf(buf, buflen, "%" PRIu64, v);
        break;
    }
    case KR_CFG_LEVEL: {
        int v;
        memcpy(&v, field, sizeof(v));
        n = snprintf(buf, buflen, "%s", kr_log_level_name(v));
        break;
    }
    }
    if (n < 0 || (size_t)n >= buflen)
        return -ENOSPC;
    return 0;
}

void kr_cfg_defaults(struct kr_cfg *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < KR_CFG_NOPTS; i++) {
        const struct kr_cfg_opt *o = &kr_cfg_opts[i];
        char num[32], err[256];
        const char *def = o->def;
        if ((o->flags & KR_CFG_USERDEF) && geteuid() != 0)
            def = o->def_user;
        if (o->flags & KR_CFG_CPUS) {
            uint64_t n = kr_cfg_cpus();
            n = n < o->min ? o->min : n > o->max ? o->max : n;
            snprintf(num, sizeof(num), "%" PRIu64, n);
            def = num;
        }
        if ((o->flags & KR_CFG_HALFRAM) && kr_cfg_half_ram()) {
            uint64_t n = kr_cfg_half_ram();
            n = n < o->min ? o->min : n > o->max ? o->max : n;
            snprintf(num, sizeof(num), "%" PRIu64, n);
            def = num;
        }
        if (kr_cfg_opt_set(cfg, o, def, err, sizeof(err)) != 0) {
            fprintf(stderr, "kraken: bad default in the option table: %s\n", err);
            abort();
        }
    }
}

int kr_cfg_set(struct kr_cfg *cfg, const char *key, const char *value, char *err, size_t errlen)
{
    const struct kr_cfg_opt *o = kr_cfg_find(key);
    if (!o) {
        kr_cfg_err_unknown(err, errlen, key ? key : "(null)", key ? key : "");
        return -ENOENT;
    }
    return kr_cfg_opt_set(cfg, o, value, err, errlen);
}

int kr_cfg_get(const struct kr_cfg *cfg, const char *key, char *buf, size_t buflen)
{
    const struct kr_cfg_opt *o = kr_cfg_find(key);
    if (!o)
        return -ENOENT;
    return kr_cfg_opt_get(cfg, o, buf, buflen);
}

const char *kr_cfg_key_at(size_t i)
{
    return i < KR_CFG_NOPTS ? kr_cfg_opts[i].name : NULL;
}

int kr_cfg_key_live(const char *key)
{
    const struct kr_cfg_opt *o = kr_cfg_find(key);
    if (!o)
        return -ENOENT;
    return (o->flags & KR_CFG_LIVE) ? 1 : 0;
}

/* ------------------------------------------------------------------ config file */

struct kr_cfg_file {
    FILE *f;
    const char *path;
    struct kr_cfg *cfg;
    char *line; /* getline buffer */
    size_t cap;
    int lineno;   /* lines handed to inih so far (inih counts the same way) */
    int read_err; /* errno of a failed read, 0 */
    int err_line; /* line of the first error we found, 0 = none */
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 3, 4))) static void kr_cfg_file_error(struct kr_cfg_file *cf,
                                                                    int line, const char *fmt,
                                                                    ...)
{
    if (cf->err_line)
        return; /* keep the first */
    cf->err_line = line;
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    kr_errf(cf->err, cf->errlen, -EINVAL, "%s:%d: %s", cf->path, line, msg);
}

/* The fgets-like reader inih calls for each line. Lines are handed over without their
 * leading blanks, so inih never treats an indented line as the continuation of the previous
 * value; sections, Erlang terms and over-long lines are reported here and passed on as
 * blank lines so the numbering stays in step. */
static char *kr_cfg_file_reader(char *str, int num, void *stream)
{
    struct kr_cfg_file *cf = stream;
    if (num < 2)
        return NULL;
    errno = 0;
    ssize_t n = getline(&cf->line, &cf->cap, cf->f);
    if (n < 0) {
        if (ferror(cf->f))
            cf->read_err = errno ? errno : EIO;
        return NULL;
    }
    cf->lineno++;
    char *s = cf->line;
    size_t len = (size_t)n;
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r'))
        len--;
    s[len] = '\0';
    if (cf->lineno == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
        s += 3; /* UTF-8 byte order mark */
        len -= 3;
    }
    while (*s == ' ' || *s == '\t') {
        s++;
        len--;
    }
    if (strlen(s) != len) {
        kr_cfg_file_error(cf, cf->lineno, "NUL byte in line");
        s[0] = '\0';
    } else if (s[0] == '%' || s[0] == '{' ||
               (s[0] == '[' && (strchr(s, '{') || !strchr(s, ']')))) {
        kr_cfg_file_error(cf, cf->lineno,
                          "an Erlang term in a 'key = value' file (an Erlang-term config "
                          "must be one term starting with '[{')");
        s[0] = '\0';
    } else if (s[0] == '[') {
        kr_cfg_file_error(cf, cf->lineno,
                          "sections are not supported; write 'key = value' lines without a "
                          "[section] header");
        s[0] = '\0';
    } else if (len > (size_t)num - 1) {
        kr_cfg_file_error(cf, cf->lineno, "line too long (at most %d bytes)", num - 1);
        s[0] = '\0';
    }
    size_t copy = strlen(s);
    memcpy(str, s, copy + 1);
    return str;
}

static int kr_cfg_file_handler(void *user, const char *section, const char *name,
                               const char *value)
{
    struct kr_cfg_file *cf = user;
    (void)section; /* always "" : section headers never reach inih */
    const struct kr_cfg_opt *o = kr_cfg_find(name);
    char msg[384];
    if (!o) {
        kr_cfg_file_error(cf, cf->lineno, "unknown option '%s'", name);
        return 0;
    }
    if (kr_cfg_opt_set(cf->cfg, o, value, msg, sizeof(msg)) < 0) {
        kr_cfg_file_error(cf, cf->lineno, "%s", msg);
        return 0;
    }
    return 1;
}

/* The rest of an Erlang-term file after its first `nhead` bytes (in head), then parse. */
static int kr_cfg_load_eterm_file(struct kr_cfg *cfg, FILE *f, const char *path,
                                  const char *head, size_t nhead, char *err, size_t errlen)
{
    const size_t max = (1u << 20) + 1; /* kr_cfg_load_eterm refuses more than 1 MiB */
    size_t cap = nhead + 4096, len = nhead;
    char *text = kr_xcalloc(cap, 1);
    memcpy(text, head, nhead);
    for (;;) {
        KR_GROW(text, cap, len + 1);
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0 || len >= max)
            break;
    }
    int e = ferror(f) ? (errno ? errno : EIO) : 0;
    fclose(f);
    if (e) {
        free(text);
        return kr_errf(err, errlen, -e, "cannot read config file '%s': %s", path,
                          strerror(e));
    }
    char warn[256];
    int rc = kr_cfg_load_eterm(cfg, path, text, len, warn, sizeof(warn), err, errlen);
    free(text);
    if (rc == 0 && warn[0])
        fprintf(stderr, "kraken: warning: %s: ignoring the settings of other applications (%s)\n",
                path, warn);
    return rc;
}

int kr_cfg_load_file(struct kr_cfg *cfg, const char *path, char *err, size_t errlen)
{
    if (!path || !path[0])
        return kr_errf(err, errlen, -EINVAL, "empty config file name");
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        return kr_errf(err, errlen, -e, "cannot open config file '%s': %s", path,
                          strerror(e));
    }
    /* An Erlang-term file is recognised by its start (read whole: config files are small). */
    char head[4096];
    size_t nhead = fread(head, 1, sizeof(head), f);
    if (ferror(f)) {
        int e = errno ? errno : EIO;
        fclose(f);
        return kr_errf(err, errlen, -e, "cannot read config file '%s': %s", path,
                          strerror(e));
    }
    if (kr_cfg_text_is_eterm(head, nhead))
        return kr_cfg_load_eterm_file(cfg, f, path, head, nhead, err, errlen);
    rewind(f);
    struct kr_cfg tmp = *cfg;
    struct kr_cfg_file cf = {
        .f = f, .path = path, .cfg = &tmp, .err = err, .errlen = errlen,
    };
    int ret = ini_parse_stream(kr_cfg_file_reader, &cf, kr_cfg_file_handler, &cf);
    free(cf.line);
    fclose(f);
    if (cf.read_err)
        return kr_errf(err, errlen, -cf.read_err, "cannot read config file '%s': %s", path,
                          strerror(cf.read_err));
    if (ret > 0 && (!cf.err_line || ret < cf.err_line)) {
        cf.err_line = 0;
        kr_cfg_file_error(&cf, ret, "expected 'key = value'");
    }
    if (ret < 0 && !cf.err_line)
        return kr_errf(err, errlen, -ENOMEM, "%s: cannot parse (error %d)", path, ret);
    if (cf.err_line)
        return -EINVAL;
    *cfg = tmp;
    return 0;
}

/* ------------------------------------------------------------------ command line */

struct kr_cfg_arg {
    int opt;           /* table index, or -1 for a config file */
    const char *value; /* points into argv */
};

/* Whether `word` ("--name" or "--name=value") spells `name` in full (getopt_long would
 * also take unambiguous abbreviations, which would break as keys are added). */
static bool kr_cfg_word_is(const char *word, const char *name)
{
    if (strncmp(word, "--", 2) != 0)
        return false;
    size_t n = strlen(name);
    return strncmp(word + 2, name, n) == 0 && (word[2 + n] == '\0' || word[2 + n] == '=');
}

/* The option name a word spells: "--max_x=1" -> "max_x" (into buf). */
static const char *kr_cfg_word_name(const char *word, char *buf, size_t len)
{
    const char *p = word;
    while (*p == '-')
        p++;
    size_t n = strcspn(p, "=");
    if (n >= len)
        n = len - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return buf;
}

/* Erlang's -config names the file with or without its ".config" extension. */
static int kr_cfg_load_config_arg(struct kr_cfg *cfg, const char *path, char *err, size_t errlen)
{
    if (path[0] && access(path, F_OK) != 0 && errno == ENOENT) {
        size_t n = strlen(path);
        char *alt = kr_xcalloc(n + sizeof(".config"), 1);
        memcpy(alt, path, n);
        memcpy(alt + n, ".config", sizeof(".config"));
        if (access(alt, F_OK) == 0) {
            int rc = kr_cfg_load_file(cfg, alt, err, errlen);
            free(alt);
            return rc;
        }
        free(alt);
    }
    return kr_cfg_load_file(cfg, path, err, errlen);
}

int kr_cfg_parse_args(struct kr_cfg *cfg, int argc, char **argv, const char **subcommand,
                      char ***rest, int *nrest, char *err, size_t errlen)
{
    if (subcommand)
        *subcommand = NULL;
    if (rest)
        *rest = argv + (argc > 0 ? argc : 0);
    if (nrest)
        *nrest = 0;
    if (err && errlen)
        err[0] = '\0';
    if (argc <= 1)
        return 0;

    struct option *lo = kr_xcalloc(KR_CFG_NOPTS + 4, sizeof(*lo));
    for (size_t i = 0; i < KR_CFG_NOPTS; i++)
        lo[i] = (struct option){kr_cfg_opts[i].name, required_argument, NULL,
                                KR_CFG_GETOPT_KEY + (int)i};
    lo[KR_CFG_NOPTS] = (struct option){"config", required_argument, NULL, KR_CFG_GETOPT_CONFIG};
    lo[KR_CFG_NOPTS + 1] = (struct option){"kraken", required_argument, NULL, KR_CFG_GETOPT_KRAKEN};
    lo[KR_CFG_NOPTS + 2] = (struct option){"help", no_argument, NULL, 'h'};

    /* getopt_long reads a private copy of argv, in which the single-dash long words of the
     * Erlang command line are spelled with two dashes just before getopt reaches them (so a
     * value that happens to read "-config" is left alone). */
    char **work = kr_xcalloc((size_t)argc + 1, sizeof(*work));
    memcpy(work, argv, (size_t)argc * sizeof(*work));
    struct kr_cfg_arg *args = kr_xcalloc((size_t)argc, sizeof(*args));
    bool *positional = kr_xcalloc((size_t)argc, sizeof(*positional));
    int nargs = 0, npos = 0, rc = 0;
    bool help = false;
    char name[64];

    int saved_opterr = opterr;
    opterr = 0;
    optind = 0; /* glibc: full reset, so the function can run several times per process */
    for (;;) {
        int at = optind > 0 ? optind : 1;
        if (at < argc && strcmp(work[at], "-kraken") == 0)
            work[at] = (char *)"--kraken";
        else if (at < argc && strcmp(work[at], "-config") == 0)
            work[at] = (char *)"--config";
        int idx = -1;
        /* '-': words that are not options come back in order as code 1 (no permuting, so
         * the subcommand is the first of them); ':': a missing value returns ':'. */
        int c = getopt_long(argc, work, "-:h", lo, &idx);
        if (c == -1)
            break;
        if (at >= argc)
            at = argc - 1;
        const char *shown = argv[at]; /* the word as the user wrote it */
        if (c == 1) {
            positional[at] = true;
            npos++;
            continue;
        }
        if (c == 'h') {
            help = true;
            continue;
        }
        /* -kraken KEY VALUE: getopt took KEY; VALUE is the next word, whatever it reads. */
        const char *kraken_value = NULL;
        if (c == KR_CFG_GETOPT_KRAKEN && optind < argc)
            kraken_value = work[optind++];
        if (rc)
            continue; /* after an error, keep scanning only to honour a later --help */
        if (c == '?' || c == ':') {
            kr_cfg_word_name(work[at], name, sizeof(name));
            bool known = false;
            for (size_t i = 0; lo[i].name; i++)
                if (kr_cfg_word_is(work[at], lo[i].name))
                    known = true;
            if (c == '?' && known)
                rc = kr_errf(err, errlen, -EINVAL, "option '--%s' takes no value", name);
            else if (c == ':' && known)
                rc = kr_errf(err, errlen, -EINVAL, "missing value after '%s'", shown);
            else if (work[at][0] == '-' && work[at][1] == '-')
                rc = kr_cfg_err_unknown(err, errlen, name, name);
            else
                rc = kr_cfg_err_unknown(err, errlen, shown, name);
            continue;
        }
        if (idx < 0 || !kr_cfg_word_is(work[at], lo[idx].name)) {
            kr_cfg_word_name(work[at], name, sizeof(name));
            rc = kr_cfg_err_unknown(err, errlen, name, name);
            continue;
        }
        if (c == KR_CFG_GETOPT_CONFIG) {
            args[nargs++] = (struct kr_cfg_arg){-1, optarg};
        } else if (c == KR_CFG_GETOPT_KRAKEN) {
            const char *key = optarg;
            const struct kr_cfg_opt *o = kr_cfg_find(key);
            if (!kraken_value)
                rc = kr_errf(err, errlen, -EINVAL, "missing value after '%s %s'", shown,
                                key);
            else if (!o)
                rc = kr_cfg_err_unknown(err, errlen, key, key);
            else
                args[nargs++] = (struct kr_cfg_arg){(int)(o - kr_cfg_opts), kraken_value};
        } else {
            args[nargs++] = (struct kr_cfg_arg){c - KR_CFG_GETOPT_KEY, optarg};
        }
    }
    /* Words after "--" are positional whatever they look like. */
    for (int i = optind > 0 ? optind : argc; i < argc; i++) {
        if (!positional[i]) {
            positional[i] = true;
            npos++;
        }
    }
    optind = 0;
    opterr = saved_opterr;

    if (help) {
        rc = 1;
        goto out;
    }
    if (rc)
        goto out;

    /* defaults < config files (in the order given) < keys (in the order given) */
    struct kr_cfg tmp = *cfg;
    for (int i = 0; i < nargs && !rc; i++)
        if (args[i].opt < 0 && kr_cfg_load_config_arg(&tmp, args[i].value, err, errlen) < 0)
            rc = -EINVAL;
    for (int i = 0; i < nargs && !rc; i++)
        if (args[i].opt >= 0 &&
            kr_cfg_opt_set(&tmp, &kr_cfg_opts[args[i].opt], args[i].value, err, errlen) < 0)
            rc = -EINVAL;
    if (rc)
        goto out;
    *cfg = tmp;

    /* Move the positional words to the end of argv, in order, so that *rest can point into
     * it (getopt itself permutes argv the same way). */
    int k = 1;
    for (int i = 1; i < argc; i++)
        if (!positional[i])
            work[k++] = argv[i];
    for (int i = 1; i < argc; i++)
        if (positional[i])
            work[k++] = argv[i];
    memcpy(argv + 1, work + 1, (size_t)(argc - 1) * sizeof(*argv));
    if (npos > 0) {
        if (subcommand)
            *subcommand = argv[argc - npos];
        if (rest)
            *rest = argv + argc - npos + 1;
        if (nrest)
            *nrest = npos - 1;
    }

out:
    free(positional);
    free(args);
    free(work);
    free(lo);
    return rc;
}

/* ------------------------------------------------------------------ help */

/* Print `text` wrapped at 79 columns, each line indented by `indent` spaces. */
static void kr_cfg_print_wrapped(FILE *out, int indent, const char *text)
{
    const int width = 79;
    const char *p = text;
    while (*p) {
        int col = indent;
        fprintf(out, "%*s", indent, "");
        bool first = true;
        while (*p) {
            size_t w = strcspn(p, " ");
            while (strncmp(p + w, " = ", 3) == 0) /* keep "0 = never" on one line */
                w += 3 + strcspn(p + w + 3, " ");
            if (!first && col + 1 + (int)w > width)
                break;
            fprintf(out, "%s%.*s", first ? "" : " ", (int)w, p);
            col += (first ? 0 : 1) + (int)w;
            first = false;
            p += w;
            while (*p == ' ')
                p++;
        }
        fputc('\n', out);
    }
}

/* The type (with bounds) and the default of option `o` as text, as --help and the man page
 * show them; `here` adds this machine's CPU count to a CPU-count default. */
static void kr_cfg_describe(const struct kr_cfg_opt *o, bool here, char *type, size_t tlen,
                            char *def, size_t dlen)
{
    char lo[32], hi[32];
    switch (o->type) {
    case KR_CFG_STR:
        snprintf(type, tlen, "string");
        break;
    case KR_CFG_IP:
        snprintf(type, tlen, "IP address");
        break;
    case KR_CFG_U32:
    case KR_CFG_U64:
        if (o->flags & KR_CFG_SIZE) {
            kr_cfg_fmt_size(o->min, lo, sizeof(lo));
            kr_cfg_fmt_size(o->max, hi, sizeof(hi));
            snprintf(type, tlen, "bytes %s..%s", lo, hi);
        } else {
            snprintf(type, tlen, "integer %" PRIu64 "..%" PRIu64, o->min, o->max);
        }
        break;
    case KR_CFG_LEVEL:
        snprintf(type, tlen, "debug|info|warn|error");
        break;
    }
    if ((o->flags & KR_CFG_CPUS) && here)
        snprintf(def, dlen, "CPUs available, %u here", kr_cfg_cpus());
    else if (o->flags & KR_CFG_CPUS)
        snprintf(def, dlen, "the number of CPUs available");
    else if ((o->flags & KR_CFG_HALFRAM) && here && kr_cfg_half_ram())
        snprintf(def, dlen, "half the physical memory, %" PRIu64 "m here", kr_cfg_half_ram() >> 20);
    else if (o->flags & KR_CFG_HALFRAM)
        snprintf(def, dlen, "half the physical memory");
    else if (o->flags & KR_CFG_USERDEF)
        snprintf(def, dlen, "%s as root", o->def);
    else if (!o->def[0])
        snprintf(def, dlen, "empty");
    else
        snprintf(def, dlen, "%s", o->def);
}

void kr_cfg_print_help(FILE *out, const char *prog, void (*subcommands)(FILE *out))
{
    if (!prog || !prog[0])
        prog = "kraken";
    fprintf(out,
            "Usage: %s <subcommand> [arguments] [options]\n"
            "\n"
            "Subcommands (each finds a running server through admin_socket):\n",
            prog);
    if (subcommands)
        subcommands(out);
    fprintf(out,
            "\n"
            "Options (before or after the subcommand; '--' ends the options):\n"
            "  --KEY VALUE, --KEY=VALUE, -kraken KEY VALUE\n"
            "                       set one configuration key (listed below)\n"
            "  --config FILE, -config FILE\n"
            "                       read FILE (or FILE.config when FILE does not exist):\n"
            "                       'key = value' lines, or an Erlang-term config such as\n"
            "                       [{kraken, [{num_router_shards, 8}]}].\n"
            "  -h, --help           show this help\n"
            "\n"
            "Precedence: defaults < config file < command-line keys, whatever the order of\n"
            "the words. A key given twice keeps the last value.\n"
            "\n"
            "Config file: one 'key = value' per line (lines of at most %d bytes); blank\n"
            "lines and lines starting with '#' or ';' are ignored, and so is the rest of a\n"
            "line after ' ;'. [section] headers are rejected: keys go at the top level.\n"
            "\n"
            "Values: integers are plain unsigned decimals; byte counts also take a k, m or g\n"
            "suffix (x1024, x1024^2, x1024^3). Strings may be wrapped in double quotes.\n"
            "\n"
            "Keys:\n",
            INI_MAX_LINE - 1);
    for (size_t i = 0; i < KR_CFG_NOPTS; i++) {
        const struct kr_cfg_opt *o = &kr_cfg_opts[i];
        char type[96], def[KR_CFG_STR_MAX];
        kr_cfg_describe(o, true, type, sizeof(type), def, sizeof(def));
        if (strlen(o->name) + strlen(type) + strlen(def) + 15 <= 79) {
            fprintf(out, "  %s (%s; default %s)\n", o->name, type, def);
        } else { /* a long default (a list) goes on its own wrapped lines */
            fprintf(out, "  %s (%s)\n", o->name, type);
            char line[KR_CFG_STR_MAX + 16];
            snprintf(line, sizeof(line), "default: %s", def);
            kr_cfg_print_wrapped(out, 6, line);
        }
        kr_cfg_print_wrapped(out, 6, o->help);
    }
}

/* ------------------------------------------------------------------ man page */

/* Write `text` (n bytes) as roff body text: backslashes and hyphens escaped, a line start
 * that roff would take for a request guarded, `quoted` spans set in bold. */
static void kr_cfg_man_text(FILE *out, const char *text, size_t n, bool at_line_start)
{
    bool bold = false;
    for (size_t i = 0; i < n; i++) {
        char c = text[i];
        if (at_line_start && (c == '.' || c == '\''))
            fputs("\\&", out);
        at_line_start = false;
        if (c == '\\')
            fputs("\\e", out);
        else if (c == '-')
            fputs("\\-", out);
        else if (c == '`') {
            fputs(bold ? "\\fR" : "\\fB", out);
            bold = !bold;
        } else if (c == '\n') {
            fputc('\n', out);
            at_line_start = true;
        } else
            fputc(c, out);
    }
    if (bold)
        fputs("\\fR", out);
}

static void kr_cfg_man_str(FILE *out, const char *text)
{
    kr_cfg_man_text(out, text, strlen(text), true);
}

/* The help text's lines [from, to) as roff: a line indented by 2 starts a tagged paragraph
 * (tag = up to the first run of two spaces, or up to the description column, 23, when only
 * one space separates them; the whole line when the description is on the lines below,
 * indented deeper); other lines continue the current paragraph. */
static void kr_cfg_man_entries(FILE *out, char **lines, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        const char *l = lines[i];
        size_t ind = strspn(l, " ");
        if (ind == 2) {
            const char *tag = l + 2;
            const char *gap = strstr(tag, "  ");
            if (!gap && strlen(l) > 23 && l[22] == ' ' && l[21] != ' ')
                gap = l + 22;
            fputs(".TP\n\\fB", out);
            kr_cfg_man_text(out, tag, gap ? (size_t)(gap - tag) : strlen(tag), false);
            fputs("\\fR\n", out);
            if (gap) {
                gap += strspn(gap, " ");
                kr_cfg_man_str(out, gap);
                fputc('\n', out);
            }
        } else {
            kr_cfg_man_str(out, l + ind);
            fputc('\n', out);
        }
    }
}

void kr_cfg_print_man(FILE *out, const char *prog, const char *version,
                      void (*subcommands)(FILE *out))
{
    if (!prog || !prog[0])
        prog = "kraken";
    /* Everything but the keys comes from --help's own text, so the two cannot drift. */
    char *help = NULL;
    size_t helplen = 0;
    FILE *m = open_memstream(&help, &helplen);
    if (!m) { /* only ENOMEM: fail like the allocation helpers */
        fprintf(stderr, "kraken: open_memstream: %s\n", strerror(errno));
        abort();
    }
    kr_cfg_print_help(m, prog, subcommands);
    fclose(m);
    size_t nlines = 0, cap = 64;
    char **lines = kr_xcalloc(cap, sizeof(*lines));
    /* split help into lines (kept in place, NUL-terminated) */
    for (char *p = help; p && *p;) {
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = '\0';
        KR_GROW(lines, cap, nlines + 1);
        lines[nlines++] = p;
        p = nl ? nl + 1 : NULL;
    }

    fprintf(out,
            ".\\\" Generated by `%s --help-man` from the option table; do not edit.\n"
            ".TH KRAKEN 1 \"\" \"%s %s\" \"User Commands\"\n"
            ".nh\n"
            ".SH NAME\n"
            "%s \\- sharded pub/sub router speaking the memcached text protocol\n"
            ".SH SYNOPSIS\n"
            ".B %s\n"
            ".I subcommand\n"
            "[\\fIarguments\\fR] [\\fIoptions\\fR]\n"
            ".br\n"
            ".B %s \\-\\-help\n"
            ".br\n"
            ".B %s \\-\\-help\\-man\n"
            ".SH DESCRIPTION\n"
            "Kraken routes small messages from publishers to the clients subscribed to their "
            "topics. Clients speak the memcached text protocol over TCP "
            "(\\fBset subscribe\\fR, \\fBset publish\\fR, \\fBget messages\\fR); the server "
            "keeps no data, only recent messages for retroactive subscriptions. Net threads "
            "own the connections, router shard threads own the topics.\n"
            ".PP\n"
            "The subcommands below start the server or talk to a running one through its "
            "admin socket (\\fBadmin_socket\\fR). \\fB\\-\\-help\\-man\\fR prints this page "
            "(roff) and takes no other words.\n",
            prog, prog, version ? version : "", prog, prog, prog, prog);

    /* Blocks of the help text, separated by blank lines, up to "Keys:". */
    size_t i = 0;
    while (i < nlines && strcmp(lines[i], "Keys:") != 0) {
        if (!lines[i][0]) {
            i++;
            continue;
        }
        size_t end = i;
        while (end < nlines && lines[end][0])
            end++;
        const char *first = lines[i];
        if (strncmp(first, "Usage:", 6) == 0) {
            /* the synopsis above says the same */
        } else if (strncmp(first, "Subcommands", 11) == 0 || strncmp(first, "Options", 7) == 0) {
            const char *paren = strchr(first, '(');
            fprintf(out, ".SH %s\n", first[0] == 'S' ? "SUBCOMMANDS" : "OPTIONS");
            if (paren) { /* "Subcommands (each finds ...):" -> "Each finds ...." */
                size_t len = strlen(paren + 1);
                if (len >= 2 && strcmp(paren + 1 + len - 2, "):") == 0)
                    len -= 2;
                char *t = kr_xmalloc(len + 1);
                memcpy(t, paren + 1, len);
                t[len] = '\0';
                if (t[0] >= 'a' && t[0] <= 'z')
                    t[0] = (char)(t[0] - 'a' + 'A');
                kr_cfg_man_str(out, t);
                fputs(".\n", out);
                free(t);
            }
            kr_cfg_man_entries(out, lines, i + 1, end);
        } else {
            /* a paragraph, such as "Precedence: ..." */
            fputs(".PP\n", out);
            for (size_t k = i; k < end; k++) {
                kr_cfg_man_str(out, lines[k]);
                fputc('\n', out);
            }
        }
        i = end;
    }

    fputs(".SH CONFIGURATION KEYS\n"
          "Each key may be given in the configuration file (\\fIkey\\fR = \\fIvalue\\fR) or "
          "on the command line (\\fB\\-\\-\\fR\\fIkey value\\fR). Keys marked \\fIlive\\fR "
          "may also be changed while the server runs "
          "(\\fBkraken admin config set\\fR \\fIkey value\\fR); the others take effect at "
          "start.\n",
          out);
    for (size_t k = 0; k < KR_CFG_NOPTS; k++) {
        const struct kr_cfg_opt *o = &kr_cfg_opts[k];
        char type[96], def[KR_CFG_STR_MAX];
        kr_cfg_describe(o, false, type, sizeof(type), def, sizeof(def));
        fputs(".TP\n\\fB", out);
        kr_cfg_man_text(out, o->name, strlen(o->name), false);
        fputs("\\fR (", out);
        kr_cfg_man_text(out, type, strlen(type), false);
        fputs("; default ", out);
        kr_cfg_man_text(out, def, strlen(def), false);
        fputs((o->flags & KR_CFG_LIVE) ? "; \\fIlive\\fR)\n" : ")\n", out);
        kr_cfg_man_str(out, o->help);
        fputs(".\n", out);
    }

    fputs(".SH SIGNALS\n"
          ".TP\n\\fBSIGTERM\\fR\n"
          "Drain: health checks fail, no new connections, clients are closed in batches over "
          "\\fBdrain_timeout_ms\\fR, then the server exits 0. A second SIGTERM while "
          "draining closes every connection at once.\n"
          ".TP\n\\fBSIGINT\\fR, \\fBSIGQUIT\\fR\n"
          "Stop at once without a drain, exit 0.\n"
          ".TP\n\\fBSIGHUP\\fR\n"
          "Reopen \\fBlog_file\\fR (after log rotation).\n"
          ".SH FILES\n"
          ".TP\n\\fI/etc/kraken/kraken.conf\\fR\n"
          "The packaged configuration file, every key with a comment (read with "
          "\\fB\\-\\-config\\fR).\n"
          ".TP\n\\fI/run/kraken/admin.sock\\fR\n"
          "The admin socket: root's default, and the packaged configuration's "
          "\\fBadmin_socket\\fR (systemd creates \\fI/run/kraken\\fR for the unit).\n"
          ".TP\n\\fI/lib/systemd/system/kraken.service\\fR\n"
          "The systemd unit: \\fBsystemctl enable \\-\\-now kraken\\fR.\n"
          ".TP\n\\fI/usr/share/doc/kraken/\\fR\n"
          "The protocol, operations, architecture and benchmark documents.\n"
          ".SH EXIT STATUS\n"
          "0 on success; 1 when the server answers \\fBERROR\\fR, the connection breaks "
          "or \\fBstart\\fR fails; 2 for a usage error (unknown subcommand or option, bad "
          "argument or configuration); 3 when no server runs (\\fBstatus\\fR, "
          "\\fBstop\\fR and the other subcommands that need one); 4 when its admin socket "
          "is not accessible.\n"
          ".SH SEE ALSO\n"
          ".BR kraken\\-bench (1),\n"
          ".BR systemctl (1),\n"
          ".BR haproxy (1)\n",
          out);
    free(lines);
    free(help);
}
