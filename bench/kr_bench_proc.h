/* A process's figures from /proc, read by kraken-bench for the server it measures
 * (--server-pid) and by the integration tests for the server they start. Any thread. */
#ifndef KR_BENCH_PROC_H
#define KR_BENCH_PROC_H

/* VmRSS of process pid in KiB (/proc/<pid>/status), or -1 when unreadable. */
long kr_bench_rss_kb(long pid);
/* CPU seconds (user + system) process pid used so far (/proc/<pid>/stat), or -1 when
 * unreadable. */
double kr_bench_cpu_s(long pid);

#endif
