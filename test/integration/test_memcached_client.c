/* A stock memcached client library nobody here wrote (libmemcached, as packaged by Debian)
 * doing what existing Kraken clients do: subscribe, publish and `get messages`. */
#include <criterion/criterion.h>
#include <libmemcached/memcached.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kr_itest.h"


KR_IT_FIXTURE(start, "--num_router_shards", "2", "--num_net_threads", "2");

TestSuite(libmemcached, .init = start, .fini = kr_it_fixture_stop, .timeout = 60);

static memcached_st *client(void)
{
    char conf[128];
    snprintf(conf, sizeof(conf), "--SERVER=127.0.0.1:%u", kr_it_srv.port);
    memcached_st *mc = memcached(conf, strlen(conf));
    cr_assert_not_null(mc);
    return mc;
}

static void mc_set(memcached_st *mc, const char *key, const char *value, size_t len)
{
    memcached_return_t rc = memcached_set(mc, key, strlen(key), value, len, 0, 0);
    cr_assert_eq(rc, MEMCACHED_SUCCESS, "set %s: %s", key, memcached_strerror(mc, rc));
}

Test(libmemcached, subscribe_publish_get_messages)
{
    memcached_st *sub = client(), *pub = client();
    mc_set(sub, "subscribe", "news sports ", 12); /* trailing space, as one client sends */
    const char entries[] = "MESSAGE sports weather 5\r\nhello\r\nMESSAGE news 3\r\nbye\r\n";
    mc_set(pub, "publish", entries, sizeof(entries) - 1);

    const char want[] = "MESSAGE sports 5\r\nhello\r\nMESSAGE news 3\r\nbye";
    char got[512] = "";
    size_t got_len = 0;
    for (int i = 0; i < 500 && got_len < sizeof(want) - 1; i++) {
        size_t len = 0;
        uint32_t flags = 0;
        memcached_return_t rc;
        char *v = memcached_get(sub, "messages", 8, &len, &flags, &rc);
        if (rc == MEMCACHED_NOTFOUND) {
            kr_it_sleep_ms(5);
            continue;
        }
        cr_assert_eq(rc, MEMCACHED_SUCCESS, "get messages: %s", memcached_strerror(sub, rc));
        cr_assert_not_null(v);
        /* the value is the entries without the last CRLF (the value terminator) */
        if (got_len)
            got_len += (size_t)snprintf(got + got_len, sizeof(got) - got_len, "\r\n");
        memcpy(got + got_len, v, len);
        got_len += len;
        got[got_len] = 0;
        free(v);
    }
    cr_assert_str_eq(got, want);

    /* nothing more queued: a miss */
    size_t len;
    uint32_t flags;
    memcached_return_t rc;
    char *v = memcached_get(sub, "messages", 8, &len, &flags, &rc);
    cr_assert_eq(rc, MEMCACHED_NOTFOUND);
    cr_assert_null(v);

    mc_set(sub, "unsubscribe", "news", 4);
    memcached_free(sub);
    memcached_free(pub);
}

Test(libmemcached, version_for_health_checks)
{
    memcached_st *mc = client();
    memcached_return_t rc = memcached_version(mc);
    cr_assert_eq(rc, MEMCACHED_SUCCESS, "version: %s", memcached_strerror(mc, rc));
    memcached_free(mc);
}
