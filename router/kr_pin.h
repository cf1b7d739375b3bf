/* Shard CPU pinning and its watch (internal to the router module).
 *
 * Each shard thread is pinned to one CPU (shard i to the i-th CPU the process may use,
 * modulo their count): its table and rings stay in that CPU's caches. A pin must never cost
 * liveness, though: a thread pinned to a CPU that other work holds cannot move, and the
 * kernel may leave it runnable but not running for seconds while every unpinned thread
 * moves to a free CPU (measured on a 2-vCPU machine under load: a pinned shard waited
 * 3-4 s with its rings full, a pinned probe thread on the same CPU likewise, the other CPU
 * busy but serving). The watch tells that case apart from a shard that is simply busy or
 * idle: work waits for the shard (its rings or requests are not empty) and the kernel's
 * count of the thread's run time (/proc/self/task/TID/schedstat) has not moved for
 * KR_PIN_STALL_MS. Then the shard is moved off its CPU (allowed every other CPU the process
 * may use), counted and logged, and pinned back KR_PIN_AWAY_MS later.
 *
 * One watcher thread calls kr_pin_watch; each shard thread calls kr_pin_self once, at its
 * start. */
#ifndef KR_PIN_H
#define KR_PIN_H

#include <stdbool.h>
#include <stdint.h>

#define KR_PIN_STALL_MS 200   /* runnable work, no run time for this long: a stall */
#define KR_PIN_AWAY_MS 30000  /* how long a stalled shard stays off its CPU */

struct kr_pin;

/* The pins of `nshards` shard threads; `enabled` false: kr_pin_self pins nothing and the
 * watch does nothing. Reads the CPUs the process may use now. Aborts on out of memory.
 * Any thread, before the shard threads start. */
struct kr_pin *kr_pin_create(uint32_t nshards, bool enabled);
void kr_pin_destroy(struct kr_pin *p);

/* Pin the calling thread, shard `shard`'s, to its CPU, and note its thread id for the
 * watch. Logs a warning when the kernel refuses. That shard's thread, once. */
void kr_pin_self(struct kr_pin *p, uint32_t shard);

/* One look at shard `shard`: `waiting` says whether work waits for it now. Moves the shard
 * off its CPU after a stall and pins it back when its time away is over. `now_ms`:
 * kr_now_ms(). One watcher thread only, at most every few tens of milliseconds (it reads
 * one /proc file per shard while work waits). */
void kr_pin_watch(struct kr_pin *p, uint32_t shard, bool waiting, uint64_t now_ms);

/* Stalls seen on shard `shard` (each moved it off its CPU). Any thread. */
uint64_t kr_pin_stalls(const struct kr_pin *p, uint32_t shard);

/* The CPU shard `shard` is pinned to, -1 when it is not pinned (pinning off, refused, or
 * not started). Any thread. */
int kr_pin_cpu(const struct kr_pin *p, uint32_t shard);

#endif
