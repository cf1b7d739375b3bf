/* The command table (kr_admin_cmds.c) against what the server and the `kraken` binary do:
 * every admin-socket row is listed by `help` and dispatched to itself, every subcommand
 * row is listed by --help and dispatched by the CLI, and the admin command a subcommand
 * sends is a row of the admin table. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "kr_admin.h"
#include "kr_itest.h"

static char out[1 << 16];

Test(admin_cmds, every_row_is_reachable_from_help_and_the_cli, .timeout = 120)
{
    struct kr_it_server srv;
    kr_it_start(&srv, NULL);
    int rc = kr_it_cli(&srv, out, sizeof(out), (const char *const[]){"admin", "help", NULL});
    cr_assert_eq(rc, 0, "%s", out);
    for (size_t i = 0; i < kr_admin_ncmds; i++) {
        const struct kr_admin_cmd *c = &kr_admin_cmds[i];
        char want[128];
        snprintf(want, sizeof(want), "HELP %s ", c->usage);
        cr_assert_not_null(strstr(out, want), "help does not list '%s':\n%s", c->usage, out);
        cr_assert_eq(kr_admin_cmd_lookup(c->name, c->sub), c, "%s %s is dispatched elsewhere",
                     c->name, c->sub ? c->sub : "");
    }
    size_t nhelp = 0;
    for (const char *p = out; (p = strstr(p, "HELP ")); p += 5)
        nhelp++;
    cr_assert_eq(nhelp, kr_admin_ncmds, "help lists %zu commands, the table %zu", nhelp,
                 kr_admin_ncmds);

    static char help[1 << 16];
    rc = kr_it_cli(NULL, help, sizeof(help), (const char *const[]){"--help", NULL});
    cr_assert_eq(rc, 0);
    for (size_t i = 0; i < kr_admin_nsubs; i++) {
        const struct kr_admin_sub *s = &kr_admin_subs[i];
        char want[128];
        snprintf(want, sizeof(want), "\n  %s", s->synopsis);
        cr_assert_not_null(strstr(help, want), "--help does not list '%s'", s->synopsis);
        if (s->sends) {
            char first[64], second[64] = "";
            int n = sscanf(s->sends, "%63s %63s", first, second);
            cr_assert(kr_admin_cmd_lookup(first, n == 2 ? second : NULL),
                      "%s sends '%s', not an admin command", s->name, s->sends);
        }
        /* the CLI knows it: one argument too many (or too few) is its usage error, not
         * "unknown subcommand" */
        const char *args[8] = {s->name};
        int nargs = s->max_args >= 0 ? s->max_args + 1 : s->min_args - 1;
        cr_assert_geq(nargs, 0);
        for (int k = 0; k < nargs; k++)
            args[1 + k] = "1";
        args[1 + nargs] = NULL;
        rc = kr_it_cli(&srv, out, sizeof(out), args);
        cr_assert_eq(rc, 2, "kraken %s with %d arguments: %d\n%s", s->name, nargs, rc, out);
        cr_assert_null(strstr(out, "unknown subcommand"), "%s", out);
        cr_assert(strstr(out, "usage: kraken ") || strstr(out, "takes no argument") ||
                      strstr(out, "unexpected argument"),
                  "kraken %s: %s", s->name, out);
    }
    /* and a name in no row is unknown */
    rc = kr_it_cli(&srv, out, sizeof(out), (const char *const[]){"no_such_subcommand", NULL});
    cr_assert_eq(rc, 2);
    cr_assert_not_null(strstr(out, "unknown subcommand 'no_such_subcommand'"), "%s", out);
    kr_it_stop(&srv);
}
