/* Configuration: one table of options drives the defaults, the `key = value` file parser,
 * the Erlang-term file reader, the command line (`-kraken key value`, `--key value`,
 * `--key=value`, `--config FILE`), `--help`, and the admin socket's `config get/set`.
 *
 * A struct kr_cfg is a plain value: build it on the control thread before any other thread
 * starts, then treat it as read-only. The keys that may change while the server runs live
 * in a second copy, the live snapshot (kr_cfg_live below): the control thread replaces it
 * as a whole and publishes it with RCU, other threads read it without locks. */
#ifndef KR_CFG_H
#define KR_CFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define KR_CFG_STR_MAX 256

struct kr_cfg {
    char listen_ip[KR_CFG_STR_MAX];          /* 127.0.0.1 */
    uint32_t tcp_server_port;                /* 12355 (0 = ephemeral, the bound port is logged) */
    uint32_t resp_port;                      /* 0 = off: a RESP-only client port on listen_ip */
    uint32_t max_tcp_clients;                /* 10000 */
    uint32_t tcp_keepalive_s;                /* 60: TCP keepalive probes after this many idle
                                                seconds on client sockets (0 = off) */
    char allow_from[KR_CFG_STR_MAX];         /* "127.0.0.0/8, ::1/128, 10.0.0.0/8,
                                                172.16.0.0/12, 192.168.0.0/16, fc00::/7,
                                                fe80::/10": CIDRs that may connect (kr_acl.h) */
    char requirepass[KR_CFG_STR_MAX];        /* "" = off: the password RESP clients give
                                                with AUTH or HELLO ... AUTH */
    uint32_t num_router_shards;              /* CPUs available */
    uint32_t num_net_threads;                /* CPUs available */
    uint32_t router_min_fanout_to_warn;      /* 1000 */
    uint32_t router_min_publish_to_topics_to_warn; /* 1000 */
    uint32_t messages_stored_per_router_shard;     /* 10000 */
    uint64_t history_max_bytes;              /* 64 MiB: bytes of retroactive history per
                                                router shard (oldest evicted first) */
    uint64_t max_queued_messages;            /* 100000 */
    uint64_t max_queued_bytes;               /* 64 MiB */
    uint32_t resync_max_topics;              /* 1000: topics one resync notice names, else * */
    uint64_t position_interval_ms;           /* 1000: __kraken__:position while idle */
    uint64_t resume_max_entries;             /* 100000: messages one resume replays at most */
    uint64_t resume_max_bytes;               /* 64 MiB: their bytes at most */
    uint64_t resume_max_active;              /* 256: resumes in progress on the node at most */
    uint64_t max_poll_reply_bytes;           /* 1 MiB: entries one `get messages` reply holds
                                                (at least one entry, whatever its size) */
    uint64_t max_memory;                     /* half the physical memory (0 = no bound):
                                                queued + history + unsent reply bytes, over
                                                which the largest queues overflow */
    uint64_t max_message_bytes;              /* 1 MiB */
    uint64_t max_request_bytes;              /* 16 MiB */
    uint32_t max_topic_bytes;                /* 1024 */
    uint32_t max_line_bytes;                 /* 8192 */
    uint64_t client_idle_timeout_ms;         /* 3600000 (0 = never) */
    uint64_t request_timeout_ms;             /* 30000: a started request must be complete
                                                within this (0 = no limit) */
    uint64_t poll_wait_ms;                   /* 0: an empty `get messages` is answered END
                                                at once; > 0: it waits up to this long for a
                                                message */
    int log_level;                           /* enum kr_log_level, info */
    char log_file[KR_CFG_STR_MAX];           /* "" = stderr */
    char pid_file[KR_CFG_STR_MAX];           /* "" = none */
    char admin_socket[KR_CFG_STR_MAX];       /* /run/kraken/admin.sock (root), else
                                                ./kraken-admin.sock */
    uint32_t health_port;                    /* 0 = off */
    uint32_t http_port;                      /* 0 = off: the HTTP monitoring listener
                                                (/metrics, /healthz, /api/..., the status
                                                page; admin/kr_http.h) */
    char http_listen_ip[KR_CFG_STR_MAX];     /* "" = listen_ip */
    uint32_t http_max_connections;           /* 16: open monitoring connections at most */
    uint64_t drain_timeout_ms;               /* 10000 */
    /* the cluster link (router/cluster/kr_cluster.h); empty cluster_nats_url = one node */
    char cluster_nats_url[KR_CFG_STR_MAX];   /* "": comma-separated nats://host:port list */
    char cluster_node_name[KR_CFG_STR_MAX];  /* "": host name and client port */
    char cluster_publish_ack[KR_CFG_STR_MAX]; /* local (STORED when handed to the router) or
                                                 flushed (once in the NATS server's hands) */
    char cluster_subject_prefix[KR_CFG_STR_MAX]; /* "kraken" */
    char cluster_user[KR_CFG_STR_MAX];       /* "" */
    char cluster_password[KR_CFG_STR_MAX];   /* "" */
    char cluster_token[KR_CFG_STR_MAX];      /* "" */
    char cluster_creds_file[KR_CFG_STR_MAX]; /* "": a NATS .creds file (JWT and seed) */
    uint32_t cluster_tls;                    /* 0: 1 = TLS to the NATS servers */
    char cluster_tls_ca_file[KR_CFG_STR_MAX];   /* "" */
    char cluster_tls_cert_file[KR_CFG_STR_MAX]; /* "" */
    char cluster_tls_key_file[KR_CFG_STR_MAX];  /* "" */
    uint32_t cluster_start_degraded;         /* 0: 1 = start even when no NATS server answers */
    uint64_t cluster_linger_ms;              /* 2000: a topic's cluster interest outlives its
                                                last local subscriber by this long */
    uint32_t cluster_send_asap;              /* 0: no effect any more (the link writes its
                                                forwards itself; a start that sets it warns) */
    uint64_t cluster_resume_timeout_ms;      /* 2000: a resume of another node's token waits
                                                this long for that node's answer */
    uint64_t drain_resume_window_ms;         /* 30000: a drained cluster node answers resumes
                                                of its tokens this long before it exits */
    uint64_t cluster_reconnect_buf_bytes;    /* 8 MiB: forwards libnats holds while it
                                                reconnects */
    uint32_t cluster_max_pending;            /* 65536: entries from the cluster waiting for
                                                the shards, per topic, before that topic's
                                                subscribers are told to resync */
};

/* Fill `cfg` with every default. Control thread. */
void kr_cfg_defaults(struct kr_cfg *cfg);

/* Parse a command line into `cfg` (which holds defaults on entry).
 * argv[0] is the program name; the first non-option word is the subcommand, returned in
 * *subcommand (NULL when none; points into argv). Further positional words are returned in
 * *rest / *nrest (pointing into argv) for subcommands that take arguments. Options may come
 * before or after the subcommand; `--` ends them. Like getopt, this reorders argv[1..]: the
 * positional words are moved to its end, in order.
 * Accepted forms: `-kraken KEY VALUE`, `--KEY VALUE`, `--KEY=VALUE`, `--config FILE`,
 * `-config FILE`, `-h`/`--help`. Keys must be spelled in full. A config FILE that does not
 * exist is retried as FILE.config (Erlang's -config convention). Precedence: defaults <
 * config file < command line, whatever the order of the words. Returns 0, 1 when help was
 * asked for (nothing else done), or -EINVAL with a one-line message in `err` (unknown key,
 * bad value, unreadable file); `cfg` is unchanged unless 0 is returned. May be called
 * several times (it resets getopt's state). Control thread. */
int kr_cfg_parse_args(struct kr_cfg *cfg, int argc, char **argv, const char **subcommand,
                      char ***rest, int *nrest, char *err, size_t errlen);

/* Load a config file into `cfg`: either `key = value` lines (inih; `#`/`;` comments;
 * sections are rejected) or, when the file starts like one (`[{`, `[]`, or a `%` comment),
 * an Erlang-term config (kr_cfg_load_eterm). Returns 0 or -EINVAL/-errno with a message in
 * `err` naming the file and line; `cfg` is unchanged unless the whole file was valid.
 * Other applications' sections of an Erlang-term file are skipped with a warning on
 * stderr. Control thread. */
int kr_cfg_load_file(struct kr_cfg *cfg, const char *path, char *err, size_t errlen);

/* Read an Erlang-term config (sys.config format), `len` bytes of `text`:
 *     [{kraken, [{num_router_shards, 8}, {pid_file, "/var/run/kraken.pid"}]}, {lager, [...]}].
 * The kraken section's {Key, Value} pairs are set like command-line values (a section named
 * octopus, the name of the Erlang server's README example, is read as kraken; several such
 * sections apply in file order, the last value of a key winning): integers,
 * strings ("..." or a list of character codes), binaries (<<"...">>), atoms (info), and
 * address tuples ({0,0,0,0}). Other applications' sections are parsed and skipped; their
 * names are listed in `warn` ("lager, sasl"; may be NULL). `%` comments, quoted atoms,
 * Base#digits and $c integers, maps and floats (in skipped sections) are understood.
 * Returns 0, or -EINVAL with "NAME:LINE: message" in `err` (syntax error, unknown key, bad
 * value, included file, ...); `cfg` is unchanged unless everything was valid.
 * Control thread. */
int kr_cfg_load_eterm(struct kr_cfg *cfg, const char *name, const char *text, size_t len,
                      char *warn, size_t warnlen, char *err, size_t errlen);
/* Whether a config file's text starts like an Erlang term rather than `key = value`
 * lines. Any thread. */
bool kr_cfg_text_is_eterm(const char *text, size_t len);

/* Set one option by name from its textual value, validating type and bounds.
 * Returns 0, -ENOENT (unknown key) or -EINVAL (bad value) with a message in `err`.
 * The thread that owns `cfg` (the control thread for the server's configuration). */
int kr_cfg_set(struct kr_cfg *cfg, const char *key, const char *value, char *err, size_t errlen);

/* Write the current value of `key` as text into buf (text kr_cfg_set accepts back).
 * Returns 0, -ENOENT, or -ENOSPC when buf was too small (the text is cut).
 * Any thread that may read `cfg`. */
int kr_cfg_get(const struct kr_cfg *cfg, const char *key, char *buf, size_t buflen);

/* Print usage, subcommands and every key with its type, default and description. The
 * subcommand lines come from `subcommands(out)` (the admin module's command table:
 * kr_admin_print_subcommands; this leaf library does not know them); NULL prints none.
 * Control thread. */
void kr_cfg_print_help(FILE *out, const char *prog, void (*subcommands)(FILE *out));

/* Print the man page kraken(1) in roff (man macros): synopsis, subcommands, options and
 * the configuration paragraphs taken from kr_cfg_print_help's own text, then every key of
 * the option table with its type, bounds, default and whether it is live, then signals,
 * files and exit status. `version` goes into the page footer. The build runs
 * `kraken --help-man` to make the installed kraken.1. `subcommands` as for
 * kr_cfg_print_help. Control thread. */
void kr_cfg_print_man(FILE *out, const char *prog, const char *version,
                      void (*subcommands)(FILE *out));

/* The i-th key of the option table (table order), or NULL past the last one; for listing
 * every key (admin `config get`, docs). The string is static. Any thread. */
const char *kr_cfg_key_at(size_t i);

/* 1 when `key` may be changed while the server runs (admin `config set`), 0 when it only
 * takes effect at start, -ENOENT for an unknown key. Any thread. */
int kr_cfg_key_live(const char *key);

/* ---------------------------------------------------------------- live snapshot
 *
 * The live configuration is a copy of the server's struct kr_cfg published through an
 * RCU-protected pointer (liburcu, memb flavour). A change copies the current snapshot,
 * sets one key, publishes the copy with rcu_assign_pointer and frees the old copy with
 * call_rcu once no reader can hold it: readers never lock and never see a half-written
 * value. */

/* Publish a copy of `cfg` as the first snapshot. Control thread, before the threads that
 * read it start. */
void kr_cfg_live_init(const struct kr_cfg *cfg);
/* The current snapshot, or NULL before kr_cfg_live_init. Call it between
 * urcu_memb_read_lock() and urcu_memb_read_unlock() on a thread registered with
 * urcu_memb_register_thread(); the pointer is valid until the unlock. Any such thread. */
const struct kr_cfg *kr_cfg_live(void);
/* A counter bumped after every publication of a new snapshot (relaxed read, any thread):
 * a reader that caches values from the snapshot refreshes them when it changes. */
uint64_t kr_cfg_live_generation(void);
/* Change one key of the snapshot: -ENOENT (unknown key), -EPERM (the key only takes effect
 * at start; message says so), -EINVAL (bad value), or 0 once the new snapshot is published
 * (a log_level change also sets the logger's level). The control thread, registered with
 * urcu-memb (call_rcu frees the previous snapshot). */
int kr_cfg_live_set(const char *key, const char *value, char *err, size_t errlen);
/* Read one key of the current snapshot as text (kr_cfg_get). Control thread. */
int kr_cfg_live_get(const char *key, char *buf, size_t buflen);
/* Withdraw and free the snapshot after every reader stopped; waits for pending call_rcu
 * frees. Control thread, at exit. */
void kr_cfg_live_fini(void);

#endif
