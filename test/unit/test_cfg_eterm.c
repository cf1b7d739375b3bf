/* Unit tests of the Erlang-term config reader (the sys.config files existing deployments
 * pass with -config), directly and through the file loader and the command line. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kr_cfg.h"
#include "kr_log.h"

struct et_result {
    int rc;
    char err[512];
    char warn[256];
};

static struct et_result et(struct kr_cfg *cfg, const char *text)
{
    struct et_result r;
    memset(&r, 0, sizeof(r));
    r.rc = kr_cfg_load_eterm(cfg, "sys.config", text, strlen(text), r.warn, sizeof(r.warn),
                             r.err, sizeof(r.err));
    return r;
}

/* Expect `text` to be refused with a message holding `line` (":N: ") and `want`, and the
 * configuration to stay as it was. */
static void et_bad(const char *text, const char *line, const char *want)
{
    struct kr_cfg cfg, before;
    kr_cfg_defaults(&cfg);
    before = cfg;
    struct et_result r = et(&cfg, text);
    cr_assert_eq(r.rc, -EINVAL, "accepted:\n%s", text);
    cr_assert(strncmp(r.err, "sys.config:", 11) == 0, "'%s' names the file", r.err);
    cr_assert_not_null(strstr(r.err, line), "'%s' has line %s, for:\n%s", r.err, line, text);
    cr_assert_not_null(strstr(r.err, want), "'%s' contains '%s'", r.err, want);
    cr_assert(memcmp(&cfg, &before, sizeof(cfg)) == 0, "nothing applied");
}

Test(eterm, the_deployment_example)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct et_result r =
        et(&cfg, "[{kraken, [{num_router_shards, 8}, {pid_file, \"/var/run/kraken.pid\"}]}].");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert_eq(cfg.num_router_shards, 8);
    cr_assert_str_eq(cfg.pid_file, "/var/run/kraken.pid");
    cr_assert_str_eq(r.warn, "");
}

/* Regression: the Erlang server's README gives its config example under the application
 * name octopus; its settings were skipped with a warning ("octopus") instead of applied. */
Test(eterm, the_erlang_readme_example_names_the_application_octopus)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct et_result r = et(&cfg, "[{octopus, [\n"
                                  "   {pid_file, \"/var/run/kraken.pid\"},\n"
                                  "   {log_file, \"/var/log/kraken.log\"},\n"
                                  "   {max_tcp_clients, 30000},\n"
                                  "   {num_router_shards, 8}]}].\n");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert_str_eq(cfg.pid_file, "/var/run/kraken.pid");
    cr_assert_str_eq(cfg.log_file, "/var/log/kraken.log");
    cr_assert_eq(cfg.max_tcp_clients, 30000);
    cr_assert_eq(cfg.num_router_shards, 8);
    cr_assert_str_eq(r.warn, "", "octopus is not another application: '%s'", r.warn);
    /* with a kraken section too, both apply in file order */
    r = et(&cfg, "[{octopus, [{max_tcp_clients, 5}, {num_net_threads, 3}]}, {lager, []},"
                 " {kraken, [{max_tcp_clients, 6}]}].");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert_eq(cfg.max_tcp_clients, 6);
    cr_assert_eq(cfg.num_net_threads, 3);
    cr_assert_str_eq(r.warn, "lager");
    /* and its keys are checked like the kraken section's */
    et_bad("[{octopus, [{no_such_key, 1}]}].", ":1: ", "no_such_key");
}

Test(eterm, every_value_form)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct et_result r = et(&cfg,
                            "%% Kraken production settings\n"
                            "[\n"
                            "  {kraken, [\n"
                            "    {listen_ip, {0,0,0,0}},          % all interfaces\n"
                            "    {tcp_server_port, 12355},\n"
                            "    {max_tcp_clients, 16#100},\n"
                            "    {'log_level', warning},\n"
                            "    {log_file, \"/var/log/\" \"kraken.log\"},\n"
                            "    {pid_file, <<\"/run/kraken.pid\">>},\n"
                            "    {admin_socket, [47,116,109,112,47,97]},\n"
                            "    {router_min_fanout_to_warn, 1_000},\n"
                            "    {max_line_bytes, $a}\n"
                            "  ]}\n"
                            "].\n");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert_str_eq(cfg.listen_ip, "0.0.0.0");
    cr_assert_eq(cfg.tcp_server_port, 12355);
    cr_assert_eq(cfg.max_tcp_clients, 256);
    cr_assert_eq(cfg.log_level, KR_LOG_WARN);
    cr_assert_str_eq(cfg.log_file, "/var/log/kraken.log");
    cr_assert_str_eq(cfg.pid_file, "/run/kraken.pid");
    cr_assert_str_eq(cfg.admin_socket, "/tmp/a");
    cr_assert_eq(cfg.router_min_fanout_to_warn, 1000);
    cr_assert_eq(cfg.max_line_bytes, 97);
}

Test(eterm, ipv6_tuple_escapes_and_empty_string)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct et_result r = et(&cfg, "[{kraken,[{listen_ip,{0,0,0,0,0,0,0,1}},"
                                  "{log_file,\"\"},{pid_file,\"/tmp/a\\x62\\143\\sd\"}]}].");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert_str_eq(cfg.listen_ip, "::1");
    cr_assert_str_eq(cfg.log_file, "");
    cr_assert_str_eq(cfg.pid_file, "/tmp/abc d");
    r = et(&cfg, "[{kraken, [{log_file, []}]}].");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert_str_eq(cfg.log_file, "", "[] is the empty string");
}

Test(eterm, other_applications_are_skipped_and_reported)
{
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    struct et_result r =
        et(&cfg, "[{lager, [{handlers, [{lager_file_backend, [{file, \"x.log\"}, {level, info},"
                 " {size, 10485760}, {ratio, 0.5e3}]}]}]},\n"
                 " {kernel, [{logger, [{handler, default, logger_std_h, #{level => info,"
                 " config => #{file => \"k.log\"}}}]}, {inet_dist_listen_min, -1}]},\n"
                 " {kraken, [{num_net_threads, 3}]},\n"
                 " {sasl, [{'sasl error logger', false}, {bin, <<1,2,\"x\">>}]}].\n");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert_eq(cfg.num_net_threads, 3);
    cr_assert_str_eq(r.warn, "lager, kernel, sasl");
}

Test(eterm, empty_list_and_repeated_sections)
{
    struct kr_cfg cfg, before;
    kr_cfg_defaults(&cfg);
    before = cfg;
    struct et_result r = et(&cfg, "[].");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(memcmp(&cfg, &before, sizeof(cfg)) == 0);
    r = et(&cfg, "[{kraken, []}, {kraken, [{max_tcp_clients, 7}]}, "
                 "{kraken, [{max_tcp_clients, 9}]}].");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert_eq(cfg.max_tcp_clients, 9, "the last value wins");
}

Test(eterm, syntax_errors_name_the_line)
{
    et_bad("[{kraken, [{num_router_shards, 8}]}]", ":1: ", "missing '.'");
    et_bad("[{kraken, [{num_router_shards, 8}]}].\nextra.", ":2: ", "after the final '.'");
    et_bad("[{kraken,\n [{num_router_shards, 8}\n ]\n", ":1: ", "missing '}'");
    et_bad("[{kraken,\n [{num_router_shards, 8}\n", ":2: ", "missing ']'");
    et_bad("[{kraken, [{pid_file, \"/run/x}]}].", ":1: ", "unterminated string");
    et_bad("[{kraken, [{pid_file, 'x}]}].\n", ":1: ", "unterminated quoted atom");
    et_bad("[{kraken,\n [{num_router_shards 8}]}].", ":2: ", "expected ',' or '}'");
    et_bad("[{kraken, [{num_router_shards, Shards}]}].", ":1: ", "variables");
    et_bad("[{kraken, [{a, b} | T]}].", ":1: ", "improper lists");
    et_bad("[{kraken, [{pid_file, \"\\q\"}]}].", ":1: ", "unknown escape");
    et_bad("[{kraken, [{max_tcp_clients, 99#1}]}].", ":1: ", "bad integer base");
    et_bad("[{kraken, [{max_tcp_clients, 16#}]}].", ":1: ", "missing digits");
    et_bad("[{kraken, [{max_tcp_clients, 16#FFFFFFFFFFFFFFFFFF}]}].", ":1: ", "too large");
    et_bad("[{k, #{a := }}].", ":1: ", "unexpected '}'");
    et_bad("[{k, #{a, b}}].", ":1: ", "'=>'");
    et_bad("[{kraken, [{pid_file, <<foo>>}]}].", ":1: ", "binary segments");
    et_bad("[{kraken, [{pid_file, ~}]}].", ":1: ", "unexpected '~'");
    et_bad("\n\n[{kraken, [{pid_file, \"a\"}]}]\n. .", ":4: ", "after the final '.'");
    et_bad("", ":1: ", "unexpected end");
    /* nesting is bounded (no stack overflow on hostile input) */
    char deep[400];
    memset(deep, '[', 200);
    memcpy(deep + 200, "].", 3);
    et_bad(deep, ":1: ", "nested deeper");
}

Test(eterm, structure_errors)
{
    et_bad("{kraken, [{num_router_shards, 8}]}.", ":1: ", "expected a list");
    et_bad("[kraken].", ":1: ", "expected {Application");
    et_bad("[{kraken, {num_router_shards, 8}}].", ":1: ", "expected {Application");
    et_bad("[{kraken, [{num_router_shards, 8}]},\n \"/etc/other.config\"].", ":2: ",
           "included config files");
    et_bad("[{kraken, [num_router_shards]}].", ":1: ", "expected {Key, Value}");
    et_bad("[{kraken, [{num_router_shards, 8, 9}]}].", ":1: ", "expected {Key, Value}");
    et_bad("[{kraken, [{\"num_router_shards\", 8}]}].", ":1: ", "expected {Key, Value}");
}

Test(eterm, value_errors_name_key_and_line)
{
    et_bad("[{kraken, [\n{num_router_shards, 8},\n{bogus_key, 1}]}].", ":3: ",
           "unknown option 'bogus_key'");
    et_bad("[{kraken, [{num_router_shards, 0}]}].", ":1: ", "num_router_shards");
    et_bad("[{kraken, [{num_router_shards, -1}]}].", ":1: ", "'-1' for num_router_shards");
    et_bad("[{kraken, [{num_router_shards, eight}]}].", ":1: ", "'eight' for num_router_shards");
    et_bad("[{kraken, [{num_router_shards, 8.0}]}].", ":1: ", "a float");
    et_bad("[{kraken, [{log_level, loud}]}].", ":1: ", "log_level");
    et_bad("[{kraken, [{listen_ip, {1,2,3}}]}].", ":1: ", "listen_ip");
    et_bad("[{kraken, [{listen_ip, {a,b,c,d}}]}].", ":1: ", "address");
    et_bad("[{kraken, [{pid_file, [a, b]}]}].", ":1: ", "string of characters");
    et_bad("[{kraken, [{pid_file, #{}}]}].", ":1: ", "a map");
    et_bad("[{kraken, [{pid_file, <<0>>}]}].", ":1: ", "NUL");
}

Test(eterm, detection)
{
    const char *yes[] = {"[{kraken, []}].", "\n  [\n {kraken, []}].", "[].", "%% c\n[].",
                         "\xEF\xBB\xBF[{a,[]}].", "[\n% c\n{kraken,[]}].", "[\"x\"]."};
    const char *no[] = {"max_tcp_clients = 1\n", "[kraken]\nx = 1\n", "# [{\n", "", "  \n"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        cr_assert(kr_cfg_text_is_eterm(yes[i], strlen(yes[i])), "%s", yes[i]);
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        cr_assert(!kr_cfg_text_is_eterm(no[i], strlen(no[i])), "%s", no[i]);
}

/* Through the file loader and -config, with and without the .config extension. */
Test(eterm, through_config_option_with_or_without_extension)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/kraken-et-XXXXXX.config");
    int fd = mkstemps(path, 7);
    cr_assert_geq(fd, 0);
    const char *text = "%% generated\n[{kraken, [{num_router_shards, 5},"
                       " {pid_file, \"/var/run/kraken.pid\"}]},\n {lager, []}].\n";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char base[64];
    snprintf(base, sizeof(base), "%.*s", (int)(strlen(path) - 7), path);
    const char *names[] = {path, base};
    for (int i = 0; i < 2; i++) {
        struct kr_cfg cfg;
        kr_cfg_defaults(&cfg);
        char *argv[] = {"kraken", "-config", (char *)names[i], "status", NULL};
        const char *sub = NULL;
        char **rest;
        int nrest;
        char err[512] = "";
        int rc = kr_cfg_parse_args(&cfg, 4, argv, &sub, &rest, &nrest, err, sizeof(err));
        cr_assert_eq(rc, 0, "%s: %s", names[i], err);
        cr_assert_str_eq(sub, "status");
        cr_assert_eq(cfg.num_router_shards, 5);
        cr_assert_str_eq(cfg.pid_file, "/var/run/kraken.pid");
    }
    /* an error in the file comes back through the command line with file and line */
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("[{kraken, [\n  {num_router_shards, 5},\n  {no_such_key, 1}\n]}].\n", f);
    fclose(f);
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    char *argv[] = {"kraken", "-config", base, "run", NULL};
    const char *sub = NULL;
    char **rest;
    int nrest;
    char err[512] = "";
    cr_assert_eq(kr_cfg_parse_args(&cfg, 4, argv, &sub, &rest, &nrest, err, sizeof(err)),
                 -EINVAL);
    cr_assert_not_null(strstr(err, ":3: unknown option 'no_such_key'"), "%s", err);
    cr_assert_not_null(strstr(err, path), "%s", err);
    unlink(path);
}

Test(eterm, large_file_is_refused)
{
    size_t n = (1u << 20) + 10;
    char *text = malloc(n + 1);
    cr_assert_not_null(text);
    memset(text, ' ', n);
    memcpy(text, "[].", 3);
    text[n] = '\0';
    struct kr_cfg cfg;
    kr_cfg_defaults(&cfg);
    char err[256] = "";
    cr_assert_eq(kr_cfg_load_eterm(&cfg, "big", text, n, NULL, 0, err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "too large"), "%s", err);
    free(text);
}
