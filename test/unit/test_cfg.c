/* Unit tests of the configuration module: option table, values, config files, command line. */
#include <criterion/criterion.h>
#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kr_admin.h"
#include "kr_cfg.h"
#include "kr_log.h"

#define ARGV(...) ((const char *[]){"kraken", __VA_ARGS__, NULL})

/* Run kr_cfg_parse_args on a NULL-terminated word list (copied, since it is reordered). */
struct parsed {
    int rc;
    const char *sub;
    char **rest;
    int nrest;
    char *argv[64];
    char err[512];
};

static void parse(struct kr_cfg *cfg, const char **words, struct parsed *p)
{
    int argc = 0;
    memset(p, 0, sizeof(*p));
    while (words[argc]) {
        cr_assert_lt(argc, 63);
        p->argv[argc] = (char *)words[argc];
        argc++;
    }
    p->argv[argc] = NULL;
    p->rc = kr_cfg_parse_args(cfg, argc, p->argv, &p->sub, &p->rest, &p->nrest, p->err,
                              sizeof(p->err));
}

/* A temp file holding `text`; the caller unlinks and frees the path. */
static char *tmp_file(const char *text, const char *suffix)
{
    char *path = malloc(64);
    cr_assert_not_null(path);
    snprintf(path, 64, "/tmp/kraken-cfg-XXXXXX%s", suffix);
    int fd = mkstemps(path, (int)strlen(suffix));
    cr_assert_geq(fd, 0);
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

static void drop_file(char *path)
{
    unlink(path);
    free(path);
}

static const char *get(const struct kr_cfg *cfg, const char *key)
{
    static char buf[KR_CFG_STR_MAX];
    cr_assert_eq(kr_cfg_get(cfg, key, buf, sizeof(buf)), 0, "get %s", key);
    return buf;
}

/* Expect kr_cfg_set to refuse `value` for `key` with a message naming both. */
static void expect_bad(const char *key, const char *value, const char *also)
{
    struct kr_cfg cfg, before;
    kr_cfg_defaults(&cfg);
    before = cfg;
    char err[256] = "";
    int rc = kr_cfg_set(&cfg, key, value, err, sizeof(err));
    cr_assert_eq(rc, -EINVAL, "%s=%s gave %d", key, value, rc);
    cr_assert_not_null(strstr(err, key), "message '%s' names %s", err, key);
    char quoted[128];
    snprintf(quoted, sizeof(quoted), "'%s'", value);
    cr_assert_not_null(strstr(err, quoted), "message '%s' shows the value", err);
    if (also)
        cr_assert_not_null(strstr(err, also), "message '%s' mentions '%s'", err, also);
    cr_assert(memcmp(&cfg, &before, sizeof(cfg)) == 0, "a refused value changes nothing");
}

/* ------------------------------------------------------------------ defaults, set, get */

Test(cfg_values, defaults)
{
    struct kr_cfg cfg;
    memset(&cfg, 0xA5, sizeof(cfg));
    kr_cfg_defaults(&cfg);
    cpu_set_t set;
    cr_assert_eq(sched_getaffinity(0, sizeof(set), &set), 0);
    uint32_t cpus = (uint32_t)CPU_COUNT(&set);
    if (cpus > 64)
        cpus = 64;

    cr_assert_str_eq(cfg.listen_ip, "127.0.0.1");
    cr_assert_eq(cfg.tcp_server_port, 12355);
    cr_assert_eq(cfg.max_tcp_clients, 10000);
    cr_assert_eq(cfg.num_router_shards, cpus);
    cr_assert_eq(cfg.num_net_threads, cpus);
    cr_assert_eq(cfg.router_min_fanout_to_warn, 1000);
    cr_assert_eq(cfg.router_min_publish_to_topics_to_warn, 1000);
    cr_assert_eq(cfg.messages_stored_per_router_shard, 10000);
    cr_assert_eq(cfg.max_queued_messages, 100000);
    cr_assert_eq(cfg.max_queued_bytes, 67108864);
    cr_assert_eq(cfg.max_message_bytes, 1048576);
    cr_assert_eq(cfg.max_request_bytes, 16777216);
    cr_assert_eq(cfg.max_topic_bytes, 1024);
    cr_assert_eq(cfg.max_line_bytes, 8192);
    cr_assert_eq(cfg.client_idle_timeout_ms, 3600000);
    cr_assert_eq(cfg.log_level, KR_LOG_INFO);
    cr_assert_str_eq(cfg.log_file, "");
    cr_assert_str_eq(cfg.pid_file, "");
    cr_assert_str_eq(cfg.admin_socket,
                     geteuid() == 0 ? "/run/kraken/admin.sock" : "./kraken-admin.sock");
    cr_assert_eq(cfg.health_port, 0);
    cr_assert_eq(cfg.drain_timeout_ms, 10000);
}

Test(cfg_values, get_default_text)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    cr_assert_str_eq(get(&cfg, "listen_ip"), "127.0.0.1");
    cr_assert_str_eq(get(&cfg, "tcp_server_port"), "12355");
    cr_assert_str_eq(get(&cfg, "max_queued_bytes"), "67108864");
    cr_assert_str_eq(get(&cfg, "log_level"), "info");
    cr_assert_str_eq(get(&cfg, "pid_file"), "");
    char buf[8];
    cr_assert_eq(kr_cfg_get(&cfg, "nope", buf, sizeof(buf)), -ENOENT);
    cr_assert_eq(kr_cfg_get(&cfg, "max_queued_bytes", buf, sizeof(buf)), -ENOSPC);
}

Test(cfg_values, every_key_round_trips)
{
    struct kr_cfg cfg, copy;
    kr_cfg_defaults(&cfg);
    size_t n = 0;
    for (const char *key; (key = kr_cfg_key_at(n)); n++) {
        char text[KR_CFG_STR_MAX], again[KR_CFG_STR_MAX], err[256];
        cr_assert_eq(kr_cfg_get(&cfg, key, text, sizeof(text)), 0);
        copy = cfg;
        cr_assert_eq(kr_cfg_set(&copy, key, text, err, sizeof(err)), 0, "%s: %s", key, err);
        cr_assert_eq(kr_cfg_get(&copy, key, again, sizeof(again)), 0);
        cr_assert_str_eq(text, again);
        cr_assert(memcmp(&cfg, &copy, sizeof(cfg)) == 0, "setting %s to its value is a no-op",
                  key);
    }
    cr_assert_eq(n, 57, "one table entry per struct kr_cfg field");
}

Test(cfg_values, set_then_get)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    char err[256];
    cr_assert_eq(kr_cfg_set(&cfg, "max_tcp_clients", "5", err, sizeof(err)), 0);
    cr_assert_eq(cfg.max_tcp_clients, 5);
    cr_assert_str_eq(get(&cfg, "max_tcp_clients"), "5");
    cr_assert_eq(kr_cfg_set(&cfg, "tcp_server_port", "0", err, sizeof(err)), 0);
    cr_assert_eq(cfg.tcp_server_port, 0);
    cr_assert_eq(kr_cfg_set(&cfg, "tcp_server_port", "65535", err, sizeof(err)), 0);
    cr_assert_eq(kr_cfg_set(&cfg, "client_idle_timeout_ms", "0", err, sizeof(err)), 0);
    cr_assert_eq(cfg.client_idle_timeout_ms, 0);
    cr_assert_eq(kr_cfg_set(&cfg, "router_min_fanout_to_warn", "4294967295", err, sizeof(err)),
                 0);
    cr_assert_eq(cfg.router_min_fanout_to_warn, 4294967295u);
    cr_assert_eq(kr_cfg_set(&cfg, "log_level", "warning", err, sizeof(err)), 0);
    cr_assert_eq(cfg.log_level, KR_LOG_WARN);
    cr_assert_str_eq(get(&cfg, "log_level"), "warn");
    cr_assert_eq(kr_cfg_set(&cfg, "log_level", "debug", err, sizeof(err)), 0);
    cr_assert_eq(cfg.log_level, KR_LOG_DEBUG);
    cr_assert_eq(kr_cfg_set(&cfg, "log_file", "/var/log/kraken.log", err, sizeof(err)), 0);
    cr_assert_str_eq(cfg.log_file, "/var/log/kraken.log");
    cr_assert_eq(kr_cfg_set(&cfg, "log_file", "", err, sizeof(err)), 0);
    cr_assert_str_eq(cfg.log_file, "");
    /* Erlang-style quoted strings */
    cr_assert_eq(kr_cfg_set(&cfg, "pid_file", "\"/run/kraken.pid\"", err, sizeof(err)), 0);
    cr_assert_str_eq(cfg.pid_file, "/run/kraken.pid");
}

Test(cfg_values, sizes_take_suffixes)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    char err[256];
    cr_assert_eq(kr_cfg_set(&cfg, "max_queued_bytes", "32m", err, sizeof(err)), 0);
    cr_assert_eq(cfg.max_queued_bytes, 32ull << 20);
    cr_assert_eq(kr_cfg_set(&cfg, "max_message_bytes", "1G", err, sizeof(err)), 0);
    cr_assert_eq(cfg.max_message_bytes, 1ull << 30);
    cr_assert_eq(kr_cfg_set(&cfg, "max_topic_bytes", "2k", err, sizeof(err)), 0);
    cr_assert_eq(cfg.max_topic_bytes, 2048);
    cr_assert_eq(kr_cfg_set(&cfg, "max_line_bytes", "100", err, sizeof(err)), 0);
    cr_assert_eq(cfg.max_line_bytes, 100);
    expect_bad("max_queued_bytes", "1t", "suffix");
    expect_bad("max_queued_bytes", "k", NULL);
    expect_bad("max_queued_bytes", "18014398509481984k", NULL); /* overflows 64 bits */
    expect_bad("max_message_bytes", "2g", NULL);                /* above 1g */
    expect_bad("max_tcp_clients", "5k", "1..1000000");          /* not a size */
}

Test(cfg_values, bad_numbers_are_refused_with_key_value_and_range)
{
    expect_bad("max_tcp_clients", "-1", "1..1000000");
    expect_bad("max_tcp_clients", "+5", "1..1000000");
    expect_bad("max_tcp_clients", "abc", "1..1000000");
    expect_bad("max_tcp_clients", "12abc", "1..1000000");
    expect_bad("max_tcp_clients", "", "1..1000000");
    expect_bad("max_tcp_clients", " 5", "1..1000000");
    expect_bad("max_tcp_clients", "0x10", "1..1000000");
    expect_bad("max_tcp_clients", "1.5", "1..1000000");
    expect_bad("max_tcp_clients", "0", "1..1000000");
    expect_bad("max_tcp_clients", "1000001", "1..1000000");
    expect_bad("max_tcp_clients", "99999999999999999999999", "1..1000000");
    expect_bad("tcp_server_port", "65536", "0..65535");
    expect_bad("num_router_shards", "0", "1..64");
    expect_bad("num_net_threads", "65", "1..64");
    expect_bad("router_min_fanout_to_warn", "4294967296", NULL);
    expect_bad("client_idle_timeout_ms", "-5", NULL);
}

Test(cfg_values, bad_strings_and_levels)
{
    expect_bad("log_level", "loud", "debug, info, warn or error");
    expect_bad("log_level", "", NULL);
    expect_bad("listen_ip", "localhost", "IPv4 or IPv6");
    expect_bad("listen_ip", "", NULL);
    expect_bad("listen_ip", "1.2.3.4.5", NULL);
    expect_bad("listen_ip", "{256,0,0,1}", NULL);
    expect_bad("listen_ip", "{1,2,3}", NULL);

    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    char err[256], big[600];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    cr_assert_eq(kr_cfg_set(&cfg, "log_file", big, err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "log_file"));
    cr_assert_not_null(strstr(err, "too long"));
    memset(big, 'b', KR_CFG_STR_MAX - 1);
    big[KR_CFG_STR_MAX - 1] = '\0';
    cr_assert_eq(kr_cfg_set(&cfg, "log_file", big, err, sizeof(err)), 0);
    cr_assert_eq(strlen(cfg.log_file), KR_CFG_STR_MAX - 1);
}

Test(cfg_values, listen_ip_forms)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    char err[256];
    cr_assert_eq(kr_cfg_set(&cfg, "listen_ip", "::1", err, sizeof(err)), 0);
    cr_assert_str_eq(cfg.listen_ip, "::1");
    cr_assert_eq(kr_cfg_set(&cfg, "listen_ip", "0.0.0.0", err, sizeof(err)), 0);
    cr_assert_str_eq(cfg.listen_ip, "0.0.0.0");
    cr_assert_eq(kr_cfg_set(&cfg, "listen_ip", "{10, 1, 2, 3}", err, sizeof(err)), 0);
    cr_assert_str_eq(cfg.listen_ip, "10.1.2.3");
    cr_assert_eq(kr_cfg_set(&cfg, "listen_ip", "{0,0,0,0,0,0,0,1}", err, sizeof(err)), 0);
    cr_assert_str_eq(cfg.listen_ip, "::1");
    cr_assert_eq(kr_cfg_set(&cfg, "listen_ip", "\"192.168.0.1\"", err, sizeof(err)), 0);
    cr_assert_str_eq(cfg.listen_ip, "192.168.0.1");
}

Test(cfg_values, unknown_key)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    char err[256] = "";
    cr_assert_eq(kr_cfg_set(&cfg, "max_tcp_client", "5", err, sizeof(err)), -ENOENT);
    cr_assert_not_null(strstr(err, "unknown option 'max_tcp_client'"), "%s", err);
    cr_assert_eq(kr_cfg_set(&cfg, "max-tcp-clients", "5", err, sizeof(err)), -ENOENT);
    cr_assert_not_null(strstr(err, "did you mean 'max_tcp_clients'"), "%s", err);
}

Test(cfg_values, live_flags)
{
    cr_assert_eq(kr_cfg_key_live("log_level"), 1);
    cr_assert_eq(kr_cfg_key_live("router_min_fanout_to_warn"), 1);
    cr_assert_eq(kr_cfg_key_live("num_router_shards"), 0);
    cr_assert_eq(kr_cfg_key_live("listen_ip"), 0);
    cr_assert_eq(kr_cfg_key_live("drain_timeout_ms"), 1);
    cr_assert_eq(kr_cfg_key_live("admin_socket"), 0);
    cr_assert_eq(kr_cfg_key_live("nope"), -ENOENT);
    cr_assert_str_eq(kr_cfg_key_at(0), "listen_ip");
    cr_assert_null(kr_cfg_key_at(1000));
}

/* ------------------------------------------------------------------ command line */

Test(cfg_args, no_arguments)
{
    struct kr_cfg cfg, before;
    kr_cfg_defaults(&cfg);
    before = cfg;
    struct parsed p;
    parse(&cfg, (const char *[]){"kraken", NULL}, &p);
    cr_assert_eq(p.rc, 0);
    cr_assert_null(p.sub);
    cr_assert_eq(p.nrest, 0);
    cr_assert(memcmp(&cfg, &before, sizeof(cfg)) == 0);
}

Test(cfg_args, each_form)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct parsed p;
    parse(&cfg,
          ARGV("--max_tcp_clients", "5", "--max_queued_messages=6", "-kraken",
               "messages_stored_per_router_shard", "7", "run", "--log_level", "error",
               "--pid_file=/tmp/k.pid", "-kraken", "listen_ip", "\"0.0.0.0\""),
          &p);
    cr_assert_eq(p.rc, 0, "%s", p.err);
    cr_assert_str_eq(p.sub, "run");
    cr_assert_eq(p.nrest, 0);
    cr_assert_eq(cfg.max_tcp_clients, 5);
    cr_assert_eq(cfg.max_queued_messages, 6);
    cr_assert_eq(cfg.messages_stored_per_router_shard, 7);
    cr_assert_eq(cfg.log_level, KR_LOG_ERROR);
    cr_assert_str_eq(cfg.pid_file, "/tmp/k.pid");
    cr_assert_str_eq(cfg.listen_ip, "0.0.0.0");
}

Test(cfg_args, equals_form_keeps_the_rest_of_the_word)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct parsed p;
    parse(&cfg, ARGV("--log_file=/tmp/a=b", "--pid_file=", "run"), &p);
    cr_assert_eq(p.rc, 0, "%s", p.err);
    cr_assert_str_eq(cfg.log_file, "/tmp/a=b");
    cr_assert_str_eq(cfg.pid_file, "");
}

Test(cfg_args, subcommand_and_rest_in_any_order)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct parsed p;
    parse(&cfg,
          ARGV("--num_net_threads", "2", "run", "a", "--max_tcp_clients", "9", "b", "--",
               "--c", "-kraken"),
          &p);
    cr_assert_eq(p.rc, 0, "%s", p.err);
    cr_assert_str_eq(p.sub, "run");
    cr_assert_eq(p.nrest, 4);
    cr_assert_str_eq(p.rest[0], "a");
    cr_assert_str_eq(p.rest[1], "b");
    cr_assert_str_eq(p.rest[2], "--c");
    cr_assert_str_eq(p.rest[3], "-kraken");
    cr_assert_null(p.rest[4], "rest stays NULL-terminated like argv");
    cr_assert_eq(cfg.num_net_threads, 2);
    cr_assert_eq(cfg.max_tcp_clients, 9);
    /* the subcommand and rest point into argv */
    cr_assert_eq(p.rest - 1, &p.argv[6]);
    cr_assert_eq(p.sub, p.argv[6]);
}

Test(cfg_args, subcommand_first)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct parsed p;
    parse(&cfg, ARGV("run", "--max_tcp_clients", "3"), &p);
    cr_assert_eq(p.rc, 0, "%s", p.err);
    cr_assert_str_eq(p.sub, "run");
    cr_assert_eq(p.nrest, 0);
    cr_assert_eq(cfg.max_tcp_clients, 3);
}

Test(cfg_args, values_that_look_like_options)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct parsed p;
    parse(&cfg, ARGV("--log_file", "-config", "--pid_file", "-kraken", "run"), &p);
    cr_assert_eq(p.rc, 0, "%s", p.err);
    cr_assert_str_eq(cfg.log_file, "-config");
    cr_assert_str_eq(cfg.pid_file, "-kraken");
    cr_assert_str_eq(p.sub, "run");
    parse(&cfg, ARGV("-kraken", "log_file", "--help", "run"), &p);
    cr_assert_eq(p.rc, 0, "%s", p.err);
    cr_assert_str_eq(cfg.log_file, "--help");
}

Test(cfg_args, later_value_wins)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct parsed p;
    parse(&cfg, ARGV("--max_tcp_clients", "5", "-kraken", "max_tcp_clients", "6"), &p);
    cr_assert_eq(p.rc, 0, "%s", p.err);
    cr_assert_eq(cfg.max_tcp_clients, 6);
}

Test(cfg_args, help)
{
    struct kr_cfg cfg, before;
    kr_cfg_defaults(&cfg);
    before = cfg;
    struct parsed p;
    parse(&cfg, ARGV("-h"), &p);
    cr_assert_eq(p.rc, 1);
    parse(&cfg, ARGV("run", "--max_tcp_clients", "5", "--help"), &p);
    cr_assert_eq(p.rc, 1);
    parse(&cfg, ARGV("--bogus", "--help"), &p);
    cr_assert_eq(p.rc, 1, "help wins over errors");
    parse(&cfg, ARGV("--bogus", "-kraken", "log_file", "--help"), &p);
    cr_assert_eq(p.rc, -EINVAL, "a value is a value, even after an error");
    parse(&cfg, ARGV("--max_tcp_clients", "0", "-h"), &p);
    cr_assert_eq(p.rc, 1, "values are not even checked");
    cr_assert(memcmp(&cfg, &before, sizeof(cfg)) == 0, "help changes nothing");
    cr_assert_null(p.sub);
}

Test(cfg_args, unknown_options)
{
    struct kr_cfg cfg, before;
    kr_cfg_defaults(&cfg);
    before = cfg;
    struct parsed p;
    parse(&cfg, ARGV("run", "--foo", "1"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_str_eq(p.err, "unknown option 'foo' (see --help)");
    parse(&cfg, ARGV("--foo=1", "run"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_str_eq(p.err, "unknown option 'foo' (see --help)");
    parse(&cfg, ARGV("-x", "run"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "unknown option '-x'"), "%s", p.err);
    parse(&cfg, ARGV("-kraken", "foo", "1"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "unknown option 'foo'"), "%s", p.err);
    /* no abbreviations: they would change meaning as keys are added */
    parse(&cfg, ARGV("--max_tcp", "5"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "unknown option 'max_tcp'"), "%s", p.err);
    parse(&cfg, ARGV("--max-tcp-clients", "5"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "did you mean 'max_tcp_clients'"), "%s", p.err);
    parse(&cfg, ARGV("--help=yes"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "takes no value"), "%s", p.err);
    cr_assert(memcmp(&cfg, &before, sizeof(cfg)) == 0);
}

Test(cfg_args, missing_values)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct parsed p;
    parse(&cfg, ARGV("run", "--max_tcp_clients"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "missing value after '--max_tcp_clients'"), "%s", p.err);
    parse(&cfg, ARGV("run", "-kraken", "max_tcp_clients"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "missing value"), "%s", p.err);
    parse(&cfg, ARGV("run", "-kraken"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "missing value after '-kraken'"), "%s", p.err);
    parse(&cfg, ARGV("run", "-config"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "missing value after '-config'"), "%s", p.err);
}

Test(cfg_args, bad_values_name_the_key_and_change_nothing)
{
    struct kr_cfg cfg, before;
    kr_cfg_defaults(&cfg);
    before = cfg;
    struct parsed p;
    parse(&cfg, ARGV("--max_queued_messages", "7", "run", "--max_tcp_clients", "abc"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_str_eq(p.err, "bad value 'abc' for max_tcp_clients: expected an integer in "
                            "1..1000000");
    parse(&cfg, ARGV("--max_tcp_clients=-3"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "'-3' for max_tcp_clients"), "%s", p.err);
    parse(&cfg, ARGV("-kraken", "tcp_server_port", "123456789012345678901234567890"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "tcp_server_port"), "%s", p.err);
    parse(&cfg, ARGV("--num_router_shards", "65"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "1..64"), "%s", p.err);
    cr_assert(memcmp(&cfg, &before, sizeof(cfg)) == 0, "nothing applied on error");
}

Test(cfg_args, callable_many_times_and_after_other_getopt_users)
{
    /* Another getopt user in the same process (default, permuting mode) first. */
    char *other[] = {"prog", "x", "-a", NULL};
    optind = 0;
    opterr = 0;
    while (getopt(3, other, "a") != -1) {
    }
    for (int round = 0; round < 3; round++) {
        struct kr_cfg cfg;
        kr_cfg_defaults(&cfg);
        struct parsed p;
        parse(&cfg, ARGV("--max_tcp_clients", "11", "run", "extra", "--max_line_bytes=99"), &p);
        cr_assert_eq(p.rc, 0, "round %d: %s", round, p.err);
        cr_assert_str_eq(p.sub, "run");
        cr_assert_eq(p.nrest, 1);
        cr_assert_str_eq(p.rest[0], "extra");
        cr_assert_eq(cfg.max_tcp_clients, 11);
        cr_assert_eq(cfg.max_line_bytes, 99);
        parse(&cfg, ARGV("--nope"), &p);
        cr_assert_eq(p.rc, -EINVAL);
    }
}

/* ------------------------------------------------------------------ config files */

Test(cfg_file, comments_blanks_and_spacing)
{
    char *path = tmp_file("# kraken config\n"
                          "; another comment\n"
                          "\n"
                          "max_tcp_clients = 42\n"
                          "   log_level=warn\n"
                          "listen_ip = ::1 ; inline comment\n"
                          "pid_file = \"/run/kraken.pid\"\r\n"
                          "max_queued_bytes = 2m\n"
                          "\tnum_net_threads = 3\n"
                          "log_file =\n",
                          "");
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    char err[512] = "";
    cr_assert_eq(kr_cfg_load_file(&cfg, path, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(cfg.max_tcp_clients, 42);
    cr_assert_eq(cfg.log_level, KR_LOG_WARN);
    cr_assert_str_eq(cfg.listen_ip, "::1");
    cr_assert_str_eq(cfg.pid_file, "/run/kraken.pid");
    cr_assert_eq(cfg.max_queued_bytes, 2u << 20);
    cr_assert_eq(cfg.num_net_threads, 3);
    cr_assert_str_eq(cfg.log_file, "");
    cr_assert_eq(cfg.tcp_server_port, 12355, "keys not in the file keep their value");
    drop_file(path);
}

static void expect_file_error(const char *text, const char *want1, const char *want2)
{
    char *path = tmp_file(text, "");
    struct kr_cfg cfg, before;
    kr_cfg_defaults(&cfg);
    before = cfg;
    char err[512] = "";
    int rc = kr_cfg_load_file(&cfg, path, err, sizeof(err));
    cr_assert_eq(rc, -EINVAL, "rc %d for:\n%s", rc, text);
    cr_assert(strncmp(err, path, strlen(path)) == 0, "'%s' starts with the file name", err);
    cr_assert_not_null(strstr(err, want1), "'%s' contains '%s'", err, want1);
    if (want2)
        cr_assert_not_null(strstr(err, want2), "'%s' contains '%s'", err, want2);
    cr_assert(memcmp(&cfg, &before, sizeof(cfg)) == 0, "a bad file changes nothing");
    drop_file(path);
}

Test(cfg_file, errors_name_file_line_and_key)
{
    expect_file_error("max_tcp_clients = 1\n# c\nbogus_key = 1\n", ":3: ",
                      "unknown option 'bogus_key'");
    expect_file_error("\nmax_tcp_clients = -1\n", ":2: ",
                      "for max_tcp_clients: expected an integer in 1..1000000");
    expect_file_error("max_tcp_clients = 1\nthis line has no equals sign\n", ":2: ", "key = value");
    expect_file_error("[kraken]\nmax_tcp_clients = 1\n", ":1: ", "sections are not supported");
    expect_file_error("log_level = loud\n", ":1: ", "log_level");
    expect_file_error("max_tcp_clients = 1\n{kraken, []}.\n", ":2: ", "Erlang term");
    /* the first error is the one reported, whatever kind it is */
    expect_file_error("a b c\nbogus = 1\n", ":1: ", NULL);
    expect_file_error("max_tcp_clients = 1\nbogus = 1\nno equals\n", ":2: ", "bogus");
    /* indented lines are keys of their own, not continuations */
    expect_file_error("max_tcp_clients = 1\n  bogus = 2\n", ":2: ", "bogus");

    char line[400];
    snprintf(line, sizeof(line), "log_file = /%0300d\n", 0);
    expect_file_error(line, ":1: ", "too long");
}

Test(cfg_file, missing_file)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    char err[512] = "";
    int rc = kr_cfg_load_file(&cfg, "/tmp/kraken-no-such-dir/none.conf", err, sizeof(err));
    cr_assert_eq(rc, -ENOENT);
    cr_assert_not_null(strstr(err, "/tmp/kraken-no-such-dir/none.conf"), "%s", err);
    struct parsed p;
    parse(&cfg, ARGV("--config", "/tmp/kraken-no-such-dir/none.conf", "run"), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, "none.conf"), "%s", p.err);
}

Test(cfg_file, a_directory_is_refused)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    char err[512] = "";
    cr_assert_lt(kr_cfg_load_file(&cfg, "/tmp", err, sizeof(err)), 0);
    cr_assert_not_null(strstr(err, "/tmp"), "%s", err);
}

Test(cfg_file, precedence_file_below_command_line_in_any_order)
{
    char *path = tmp_file("max_tcp_clients = 100\nlog_level = warn\nmax_line_bytes = 500\n", "");
    const char *forms[][2] = {{"--config", path}, {"-config", path}};
    for (int f = 0; f < 2; f++) {
        struct kr_cfg cfg;
        struct parsed p;
        kr_cfg_defaults(&cfg);
        parse(&cfg, ARGV("--max_tcp_clients", "200", forms[f][0], forms[f][1], "run"), &p);
        cr_assert_eq(p.rc, 0, "%s", p.err);
        cr_assert_eq(cfg.max_tcp_clients, 200, "command line before the file still wins");
        cr_assert_eq(cfg.log_level, KR_LOG_WARN);
        cr_assert_eq(cfg.max_line_bytes, 500);

        kr_cfg_defaults(&cfg);
        parse(&cfg, ARGV("run", forms[f][0], forms[f][1], "-kraken", "max_tcp_clients", "300"),
              &p);
        cr_assert_eq(p.rc, 0, "%s", p.err);
        cr_assert_eq(cfg.max_tcp_clients, 300);
        cr_assert_eq(cfg.log_level, KR_LOG_WARN);
    }
    char eq[128];
    snprintf(eq, sizeof(eq), "--config=%s", path);
    struct kr_cfg cfg;
    struct parsed p;
    kr_cfg_defaults(&cfg);
    parse(&cfg, ARGV("--log_level=debug", eq), &p);
    cr_assert_eq(p.rc, 0, "%s", p.err);
    cr_assert_eq(cfg.max_tcp_clients, 100);
    cr_assert_eq(cfg.log_level, KR_LOG_DEBUG);
    cr_assert_null(p.sub);
    drop_file(path);
}

Test(cfg_file, bad_file_through_the_command_line)
{
    char *path = tmp_file("max_tcp_clients = 100\nnope = 1\n", "");
    struct kr_cfg cfg, before;
    kr_cfg_defaults(&cfg);
    before = cfg;
    struct parsed p;
    parse(&cfg, ARGV("run", "--config", path), &p);
    cr_assert_eq(p.rc, -EINVAL);
    cr_assert_not_null(strstr(p.err, ":2: unknown option 'nope'"), "%s", p.err);
    cr_assert(memcmp(&cfg, &before, sizeof(cfg)) == 0);
    drop_file(path);
}

Test(cfg_file, erlang_style_name_without_extension)
{
    char *path = tmp_file("num_router_shards = 2\n", ".config");
    char base[64];
    snprintf(base, sizeof(base), "%.*s", (int)(strlen(path) - strlen(".config")), path);
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct parsed p;
    parse(&cfg, ARGV("-config", base, "run"), &p);
    cr_assert_eq(p.rc, 0, "%s", p.err);
    cr_assert_eq(cfg.num_router_shards, 2);
    drop_file(path);
}

/* ------------------------------------------------------------------ help */

Test(cfg_help, lists_usage_and_every_key)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    cr_assert_not_null(out);
    kr_cfg_print_help(out, "kraken", kr_admin_print_subcommands);
    fclose(out);
    cr_assert_not_null(strstr(text, "kraken <subcommand> [arguments] [options]"));
    const char *subs[] = {"\n  run ", "\n  start ", "\n  stop ", "\n  status ",
                          "\n  change_log_level LEVEL", "\n  dump_queues ",
                          "\n  dump_queue_topics ID", "\n  dump_topics ", "\n  drain ",
                          "\n  admin COMMAND"};
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++)
        cr_assert_not_null(strstr(text, subs[i]), "help lists%s", subs[i]);
    cr_assert_not_null(strstr(text, "run the server in the foreground"));
    cr_assert_not_null(strstr(text, "-kraken KEY VALUE"));
    cr_assert_not_null(strstr(text, "--KEY=VALUE"));
    cr_assert_not_null(strstr(text, "-config FILE"));
    cr_assert_not_null(strstr(text, "tcp_server_port (integer 0..65535; default 12355)"), "%s",
                       text);
    cr_assert_not_null(strstr(text, "max_queued_bytes (bytes 1..1024g; default 64m)"), "%s",
                       text);
    for (size_t i = 0; kr_cfg_key_at(i); i++) {
        char want[128];
        snprintf(want, sizeof(want), "\n  %s (", kr_cfg_key_at(i));
        cr_assert_not_null(strstr(text, want), "help lists %s", kr_cfg_key_at(i));
    }
    /* no line wider than a terminal */
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        cr_assert_not_null(nl);
        cr_assert_leq(nl - line, 79, "line too wide: %.*s", (int)(nl - line), line);
        line = nl + 1;
    }
    free(text);
}

/* ------------------------------------------------------------------ live snapshot */

#include <pthread.h>
#include <urcu/urcu-memb.h>

static void live_setup(void)
{
    urcu_memb_register_thread();
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    kr_cfg_live_init(&cfg);
}

static void live_teardown(void)
{
    kr_cfg_live_fini();
    urcu_memb_unregister_thread();
    kr_log_set_level(KR_LOG_INFO);
}

TestSuite(cfg_live, .init = live_setup, .fini = live_teardown);

static uint64_t live_u64(size_t offset)
{
    urcu_memb_read_lock();
    const struct kr_cfg *c = kr_cfg_live();
    uint64_t v;
    memcpy(&v, (const char *)c + offset, sizeof(v));
    urcu_memb_read_unlock();
    return v;
}

Test(cfg_live, set_publishes_a_new_snapshot)
{
    char err[256] = "";
    urcu_memb_read_lock();
    const struct kr_cfg *before = kr_cfg_live();
    cr_assert_not_null(before);
    cr_assert_eq(before->max_queued_messages, 100000);
    urcu_memb_read_unlock();
    cr_assert_eq(kr_cfg_live_set("max_queued_messages", "5", err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(live_u64(offsetof(struct kr_cfg, max_queued_messages)), 5);
    char buf[64];
    cr_assert_eq(kr_cfg_live_get("max_queued_messages", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "5");
    cr_assert_eq(kr_cfg_live_set("client_idle_timeout_ms", "0", err, sizeof(err)), 0);
    cr_assert_eq(live_u64(offsetof(struct kr_cfg, client_idle_timeout_ms)), 0);
    cr_assert_eq(live_u64(offsetof(struct kr_cfg, max_queued_messages)), 5, "earlier change kept");
}

Test(cfg_live, log_level_reaches_the_logger)
{
    char err[256] = "";
    cr_assert_eq(kr_cfg_live_set("log_level", "debug", err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(kr_log_get_level(), KR_LOG_DEBUG);
    cr_assert_eq(kr_cfg_live_set("log_level", "error", err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(kr_log_get_level(), KR_LOG_ERROR);
    char buf[64];
    cr_assert_eq(kr_cfg_live_get("log_level", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "error");
}

Test(cfg_live, refusals_change_nothing)
{
    char err[256] = "";
    cr_assert_eq(kr_cfg_live_set("num_router_shards", "2", err, sizeof(err)), -EPERM);
    cr_assert_not_null(strstr(err, "num_router_shards cannot change while the server runs"),
                       "%s", err);
    cr_assert_eq(kr_cfg_live_set("nope", "2", err, sizeof(err)), -ENOENT);
    cr_assert_not_null(strstr(err, "unknown option 'nope'"), "%s", err);
    cr_assert_eq(kr_cfg_live_set("max_queued_messages", "0", err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "max_queued_messages"), "%s", err);
    cr_assert_eq(live_u64(offsetof(struct kr_cfg, max_queued_messages)), 100000);
}

/* A reader thread sees only whole snapshots while the control thread keeps replacing them:
 * max_queued_messages and max_queued_bytes always change together here. */
static int live_stop;

static void *live_reader(void *arg)
{
    (void)arg;
    urcu_memb_register_thread();
    long bad = 0;
    for (long i = 0; i < 2000000 && !__atomic_load_n(&live_stop, __ATOMIC_ACQUIRE); i++) {
        urcu_memb_read_lock();
        const struct kr_cfg *c = kr_cfg_live();
        if (c->max_queued_bytes != c->max_queued_messages * 1024)
            bad++;
        urcu_memb_read_unlock();
    }
    urcu_memb_unregister_thread();
    return (void *)bad;
}

Test(cfg_live, readers_see_whole_snapshots)
{
    char err[256], v[32];
    cr_assert_eq(kr_cfg_live_set("max_queued_bytes", "102400000", err, sizeof(err)), 0, "%s",
                 err);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, live_reader, NULL), 0);
    struct kr_cfg next;
    for (int i = 1; i <= 300; i++) {
        /* two keys cannot change in one step through kr_cfg_live_set, so publish whole
         * snapshots with both set, the way the init path does */
        kr_cfg_defaults(&next);
        snprintf(v, sizeof(v), "%d", i);
        cr_assert_eq(kr_cfg_set(&next, "max_queued_messages", v, err, sizeof(err)), 0);
        snprintf(v, sizeof(v), "%dk", i);
        cr_assert_eq(kr_cfg_set(&next, "max_queued_bytes", v, err, sizeof(err)), 0);
        kr_cfg_live_init(&next);
    }
    __atomic_store_n(&live_stop, 1, __ATOMIC_RELEASE);
    void *bad;
    pthread_join(th, &bad);
    cr_assert_eq((long)bad, 0, "a reader saw a torn snapshot");
}

/* ------------------------------------------------------------------ docs/kraken.conf */

/* The sample configuration lists every key of the option table, loads without error, and
 * states each default it does not deliberately override. */
Test(cfg_docs, sample_config_file_is_true_to_the_option_table)
{
    const char *src = getenv("KRAKEN_SOURCE_DIR");
    cr_assert_not_null(src, "KRAKEN_SOURCE_DIR must name the source tree");
    char path[1024];
    snprintf(path, sizeof(path), "%s/docs/kraken.conf", src);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = 0;
    fclose(f);
    struct kr_cfg cfg, def;
    kr_cfg_defaults(&cfg);
    kr_cfg_defaults(&def);
    char err[512] = "";
    cr_assert_eq(kr_cfg_load_file(&cfg, path, err, sizeof(err)), 0, "%s", err);
    /* deliberate production settings, explained in the file */
    const char *overridden[] = {"listen_ip", "admin_socket", "health_port"};
    for (size_t i = 0; kr_cfg_key_at(i); i++) {
        const char *key = kr_cfg_key_at(i);
        char set[128], commented[128];
        snprintf(set, sizeof(set), "\n%s =", key);
        snprintf(commented, sizeof(commented), "\n# %s =", key);
        cr_assert(strstr(text, set) || strstr(text, commented), "%s is not in %s", key, path);
        bool skip = false;
        for (size_t k = 0; k < sizeof(overridden) / sizeof(overridden[0]); k++)
            skip = skip || strcmp(overridden[k], key) == 0;
        if (skip)
            continue;
        char a[KR_CFG_STR_MAX], b[KR_CFG_STR_MAX];
        cr_assert_eq(kr_cfg_get(&cfg, key, a, sizeof(a)), 0);
        cr_assert_eq(kr_cfg_get(&def, key, b, sizeof(b)), 0);
        cr_assert_str_eq(a, b, "%s in %s is not the default", key, path);
    }
    /* and the file marks exactly the live keys [live] */
    for (size_t i = 0; kr_cfg_key_at(i); i++) {
        const char *key = kr_cfg_key_at(i);
        char at[128];
        snprintf(at, sizeof(at), "\n%s =", key);
        const char *p = strstr(text, at);
        if (!p)
            continue; /* commented out: CPU defaults, not live */
        /* the comment block just above the key's group */
        const char *block = p;
        while (block > text && !(block[-1] == '\n' && block[0] == '\n'))
            block--;
        bool marked = memmem(block, (size_t)(p - block), "[live]", 6) != NULL;
        cr_assert_eq(marked, kr_cfg_key_live(key) == 1, "%s: [live] marker %s", key,
                     marked ? "present but the key is not live" : "missing");
    }
}
