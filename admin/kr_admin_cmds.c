/* Admin module: the one table of admin-socket commands and `kraken` subcommands. The admin
 * socket's dispatch, argument checks and `help` (kr_admin.c), the dump kinds
 * (kr_admin_dump.c), the `kraken` subcommands (kr_admin_cli.c, main.c) and the subcommand
 * list of `kraken --help` (and so the man page) all read these rows. */
#include <stdio.h>
#include <string.h>

#include "kr_admin.h"

const struct kr_admin_cmd kr_admin_cmds[] = {
    {"help", NULL, 0, 0, "help", "this list", KR_ACMD_HELP},
    {"status", NULL, 0, 0, "status", "STATUS running|draining pid=... version=... listen=...",
     KR_ACMD_STATUS},
    {"stats", NULL, 0, 0, "stats", "STAT lines (the protocol's stats, plus draining)",
     KR_ACMD_STATS},
    {"log_level", NULL, 0, 1, "log_level [LEVEL]",
     "show or set the log level (debug, info, warn, error)", KR_ACMD_LOG_LEVEL},
    {"config", "get", 0, 1, "config get [KEY]", "CONFIG KEY VALUE lines (every key without KEY)",
     KR_ACMD_CONFIG},
    {"config", "set", 2, -1, "config set KEY VALUE", "change a live key (see docs/operations.md)",
     KR_ACMD_CONFIG},
    {"dump_queues", NULL, 0, 0, "dump_queues", "CLIENT line per connection",
     KR_ACMD_DUMP_QUEUES},
    {"dump_queue_topics", NULL, 1, 1, "dump_queue_topics CLIENT-ID",
     "CLIENT line, then TOPIC line per subscription", KR_ACMD_DUMP_QUEUE_TOPICS},
    {"dump_topics", NULL, 0, 1, "dump_topics [N]",
     "TOPIC SUBSCRIBERS NAME lines, most subscribed first", KR_ACMD_DUMP_TOPICS},
    {"drain", NULL, 0, 0, "drain", "close clients in batches over drain_timeout_ms, exit",
     KR_ACMD_DRAIN},
    {"stop", NULL, 0, 0, "stop", "same as drain (kraken stop waits for the exit)",
     KR_ACMD_STOP},
    {"quit", NULL, 0, 0, "quit", "close this connection", KR_ACMD_QUIT},
};
const size_t kr_admin_ncmds = sizeof(kr_admin_cmds) / sizeof(kr_admin_cmds[0]);

const struct kr_admin_sub kr_admin_subs[] = {
    {"run", "run", 0, 0, NULL, NULL, KR_SUB_RUN, {"run the server in the foreground"}},
    {"start", "start", 0, 0, NULL, NULL, KR_SUB_START,
     {"start the server in the background, write pid_file,",
      "return once it accepts connections"}},
    {"stop", "stop", 0, 0, NULL, "stop", KR_SUB_STOP,
     {"drain and stop the running server, wait until it exited"}},
    {"status", "status", 0, 0, NULL, "status", KR_SUB_STATUS,
     {"exit 0 when the server runs, 3 when not (with a reason)"}},
    {"change_log_level", "change_log_level LEVEL", 1, 1, "change_log_level <debug|info|warn|error>",
     "log_level", KR_SUB_LOG_LEVEL,
     {"set the running server's log level (debug, info, warn,", "error)"}},
    {"dump_queues", "dump_queues", 0, 0, NULL, "dump_queues", KR_SUB_DUMP,
     {"one line per client: id, address, subscriptions, queued",
      "messages and bytes, age, time since its last poll"}},
    {"dump_queue_topics", "dump_queue_topics ID", 1, 1,
     "dump_queue_topics <client-id> (ids: kraken dump_queues)", "dump_queue_topics", KR_SUB_DUMP,
     {"the topics client ID subscribes to"}},
    {"dump_topics", "dump_topics [N]", 0, 1, "dump_topics [N]", "dump_topics", KR_SUB_DUMP,
     {"topics with their subscriber counts, most subscribed", "first (the first N only)"}},
    {"drain", "drain", 0, 0, NULL, "drain", KR_SUB_QUICK,
     {"drain the running server (clients closed in batches over",
      "drain_timeout_ms), then it exits"}},
    {"admin", "admin COMMAND...", 1, -1, "admin <command> [arguments] (try 'kraken admin help')",
     NULL, KR_SUB_ADMIN, {"send one admin-socket command, print the reply"}},
};
const size_t kr_admin_nsubs = sizeof(kr_admin_subs) / sizeof(kr_admin_subs[0]);

const struct kr_admin_cmd *kr_admin_cmd_lookup(const char *name, const char *sub)
{
    for (size_t i = 0; i < kr_admin_ncmds; i++) {
        const struct kr_admin_cmd *c = &kr_admin_cmds[i];
        if (strcmp(c->name, name) == 0 &&
            (!c->sub || (sub && strcmp(c->sub, sub) == 0)))
            return c;
    }
    return NULL;
}

const struct kr_admin_sub *kr_admin_sub_lookup(const char *name)
{
    for (size_t i = 0; i < kr_admin_nsubs; i++)
        if (strcmp(kr_admin_subs[i].name, name) == 0)
            return &kr_admin_subs[i];
    return NULL;
}

void kr_admin_print_subcommands(FILE *out)
{
    for (size_t i = 0; i < kr_admin_nsubs; i++) {
        const struct kr_admin_sub *s = &kr_admin_subs[i];
        size_t k = 0;
        if (strlen(s->synopsis) <= 20) /* the first help line beside it */
            fprintf(out, "  %-21s%s\n", s->synopsis, s->help[k++]);
        else
            fprintf(out, "  %s\n", s->synopsis);
        for (; k < sizeof(s->help) / sizeof(s->help[0]) && s->help[k]; k++)
            fprintf(out, "%23s%s\n", "", s->help[k]);
    }
}
