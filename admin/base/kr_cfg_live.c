/* The live configuration snapshot, published with RCU (liburcu, memb flavour). See
 * kr_cfg.h. */
#include "kr_cfg.h"

#include <ck_pr.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <urcu/urcu-memb.h>

#include "kr_log.h"


struct kr_cfg_snap {
    struct kr_cfg cfg;
    struct rcu_head rcu;
};

/* Bumped after every publication, so readers can tell cheaply whether to look again. */
static uint64_t kr_cfg_live_gen;

/* Written by the control thread only (rcu_assign_pointer); read with rcu_dereference. */
static struct kr_cfg_snap *kr_cfg_snap_cur;

static struct kr_cfg_snap *kr_cfg_snap_new(const struct kr_cfg *cfg)
{
    struct kr_cfg_snap *s = calloc(1, sizeof(*s));
    if (!s) {
        fprintf(stderr, "kraken: out of memory (config snapshot)\n");
        abort();
    }
    s->cfg = *cfg;
    return s;
}

static void kr_cfg_snap_free_rcu(struct rcu_head *h)
{
    free(caa_container_of(h, struct kr_cfg_snap, rcu));
}

void kr_cfg_live_init(const struct kr_cfg *cfg)
{
    struct kr_cfg_snap *old = kr_cfg_snap_cur;
    KR_TSAN_RELEASE(&kr_cfg_snap_cur);
    rcu_assign_pointer(kr_cfg_snap_cur, kr_cfg_snap_new(cfg));
    ck_pr_fence_store();
    ck_pr_store_64(&kr_cfg_live_gen, kr_cfg_live_gen + 1);
    if (old) {
        urcu_memb_synchronize_rcu();
        free(old);
    }
}

uint64_t kr_cfg_live_generation(void)
{
    return ck_pr_load_64(&kr_cfg_live_gen);
}

const struct kr_cfg *kr_cfg_live(void)
{
    struct kr_cfg_snap *s = rcu_dereference(kr_cfg_snap_cur);
    KR_TSAN_ACQUIRE(&kr_cfg_snap_cur);
    return s ? &s->cfg : NULL;
}

int kr_cfg_live_set(const char *key, const char *value, char *err, size_t errlen)
{
    int live = kr_cfg_key_live(key);
    if (live < 0) {
        struct kr_cfg scratch;
        memset(&scratch, 0, sizeof(scratch));
        return kr_cfg_set(&scratch, key, value, err, errlen); /* -ENOENT with the message */
    }
    if (!live) {
        if (err && errlen)
            snprintf(err, errlen,
                     "%s cannot change while the server runs (set it in the configuration "
                     "and restart)",
                     key);
        return -EPERM;
    }
    struct kr_cfg_snap *old = kr_cfg_snap_cur;
    if (!old) {
        if (err && errlen)
            snprintf(err, errlen, "no live configuration (server not started)");
        return -ESRCH;
    }
    struct kr_cfg_snap *s = kr_cfg_snap_new(&old->cfg);
    int rc = kr_cfg_set(&s->cfg, key, value, err, errlen);
    if (rc < 0) {
        free(s);
        return rc;
    }
    KR_TSAN_RELEASE(&kr_cfg_snap_cur);
    rcu_assign_pointer(kr_cfg_snap_cur, s);
    ck_pr_fence_store();
    ck_pr_store_64(&kr_cfg_live_gen, kr_cfg_live_gen + 1);
    if (strcmp(key, "log_level") == 0)
        kr_log_set_level(s->cfg.log_level);
    urcu_memb_call_rcu(&old->rcu, kr_cfg_snap_free_rcu);
    return 0;
}

int kr_cfg_live_get(const char *key, char *buf, size_t buflen)
{
    struct kr_cfg_snap *s = kr_cfg_snap_cur; /* the control thread is the only writer */
    if (!s)
        return -ESRCH;
    return kr_cfg_get(&s->cfg, key, buf, buflen);
}

void kr_cfg_live_fini(void)
{
    struct kr_cfg_snap *old = kr_cfg_snap_cur;
    rcu_assign_pointer(kr_cfg_snap_cur, NULL);
    ck_pr_fence_store();
    ck_pr_store_64(&kr_cfg_live_gen, kr_cfg_live_gen + 1);
    urcu_memb_synchronize_rcu();
    urcu_memb_barrier(); /* earlier snapshots handed to call_rcu */
    free(old);
}
