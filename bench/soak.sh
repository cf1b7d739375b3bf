#!/usr/bin/env bash
# Soak test: one Kraken server under a bounded mix of every kind of client for --duration
# seconds, sampling its RSS and `stats` figures, then checking they stayed flat and came
# back down once the load ended. Not part of the test suite (it runs for minutes); run it
# before a release or after a change to memory handling:
#
#     bench/soak.sh                      # 10 minutes
#     bench/soak.sh --duration 120       # a quicker look
#
# The mix, all at once, each bounded by the duration:
#   - fanout at a fixed rate (kraken-bench latency scenario)   steady publish/poll traffic
#   - broadcast bursts                                          large fanouts, warnings
#   - churn                                                     subscribe/unsubscribe
#   - idle subscribed connections                               connection memory
#   - retroactive replays, repeatedly                           history reads
#   - subscribers that never read                               queue overflow, told+closed
#   - clients that connect, send half a request and stall       request timeout
#   - a `stats` poller                                          the sampling itself
# The server is started by this script on a free loopback port and stopped by its PID.
# Exit status: 0 when RSS and queue figures stayed flat, 1 when they grew, 2 bad usage.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bench/soak.sh [options] [-- extra kraken options]

  --build-dir DIR     where kraken and kraken-bench were built (default: build)
  --duration S        length of the mixed load in seconds (default 600)
  --sample S          seconds between samples (default 10)
  --max-growth PCT    allowed RSS growth from the end of the first third of the run to
                      its end, in percent (default 20)
  --out FILE          also write the samples as CSV to FILE
  -h, --help          this text
EOF
}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build="$root/build"
duration=600
sample=10
max_growth=20
out=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --build-dir) build=$(cd "$2" && pwd); shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --sample) sample=$2; shift 2 ;;
    --max-growth) max_growth=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "soak.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$duration$sample$max_growth" in *[!0-9]*) echo "soak.sh: numbers only" >&2; exit 2 ;; esac
[ "$duration" -ge 30 ] || { echo "soak.sh: --duration must be at least 30" >&2; exit 2; }

kraken_bin="$build/admin/kraken"
bench_bin="$build/bench/kraken-bench"
for b in "$kraken_bin" "$bench_bin"; do
    [ -x "$b" ] || { echo "soak.sh: $b is missing; build first" >&2; exit 2; }
done
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

tmp=$(mktemp -d /tmp/kraken-soak.XXXXXX)
pids=()
server_pid=""
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=""
for p in $(seq 22000 22999); do if port_free "$p"; then port=$p; break; fi; done
[ -n "$port" ] || { echo "soak.sh: no free port" >&2; exit 2; }

"$kraken_bin" run --tcp_server_port "$port" --log_file "$tmp/kraken.log" \
    --admin_socket "$tmp/admin.sock" --log_level warn --request_timeout_ms 5000 \
    --max_queued_bytes 8m "${extra[@]}" &
server_pid=$!
for _ in $(seq 1 500); do
    port_free "$port" || break
    kill -0 "$server_pid" 2>/dev/null || { echo "soak.sh: server did not start" >&2; cat "$tmp/kraken.log" >&2; exit 2; }
    sleep 0.02
done

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status"; }
# One `stats` request; prints "name value" pairs.
stats() {
    exec 5<>"/dev/tcp/127.0.0.1/$port"
    printf 'stats\r\n' >&5
    local line
    while IFS= read -r -t 5 line <&5; do
        line=${line%$'\r'}
        [ "$line" = END ] && break
        echo "${line#STAT }"
    done
    exec 5>&-
}
stat_of() { awk -v k="$1" '$1 == k {print $2}' "$2"; }

bench() { "$bench_bin" --port "$port" --quiet --threads 1 "$@" >>"$tmp/bench.log" 2>&1 || true; }
# Each load runs in rounds until the soak ends; every round is bounded.
loop() {
    local end=$1; shift
    while [ "$(date +%s)" -lt "$end" ]; do "$@"; done
}

start=$(date +%s)
end=$((start + duration))
echo "soak: kraken pid $server_pid on 127.0.0.1:$port for ${duration}s (samples every ${sample}s)"
loop "$end" bench --scenario latency --rate 5000 --duration 30 --subs 50 --pubs 2 & pids+=($!)
loop "$end" bench --scenario broadcast --duration 5 --subs 100 --prefix kb.bcast. & pids+=($!)
loop "$end" bench --scenario churn --rate 2000 --duration 30 --subs 20 --prefix kb.churn. & pids+=($!)
loop "$end" bench --scenario conns --conns 2000 --duration 60 --prefix kb.idle. & pids+=($!)
loop "$end" bench --scenario retro --messages 2000 --subs 5 --prefix kb.retro. & pids+=($!)
# Subscribers that never read: each publishes nothing, subscribes to the broadcast topic and
# sits there until its queue overflows and the server closes it; then another takes its place.
never_read() {
    exec 6<>"/dev/tcp/127.0.0.1/$port" || return 0
    printf 'set subscribe 0 0 9\r\nkb.bcast.\r\n' >&6
    sleep 20
    exec 6>&-
}
loop "$end" never_read & pids+=($!)
# Clients that send half a request and stall (closed by request_timeout_ms).
stall() {
    exec 7<>"/dev/tcp/127.0.0.1/$port" || return 0
    printf 'set publish 0 0 100\r\nMESSA' >&7
    sleep 8
    exec 7>&-
}
loop "$end" stall & pids+=($!)

samples="$tmp/samples.csv"
echo "t_s,rss_kb,curr_connections,queued_messages,queued_bytes,history_bytes,queue_overflows" >"$samples"
printf '%6s %10s %8s %10s %12s %12s %9s\n' t rss_kb conns queued_msgs queued_bytes history_bytes overflows
while :; do
    now=$(date +%s)
    stats >"$tmp/stats.txt" || true
    row="$((now - start)),$(rss_kb),$(stat_of curr_connections "$tmp/stats.txt"),$(stat_of queued_messages "$tmp/stats.txt"),$(stat_of queued_bytes "$tmp/stats.txt"),$(stat_of history_bytes "$tmp/stats.txt"),$(stat_of queue_overflows "$tmp/stats.txt")"
    echo "$row" >>"$samples"
    echo "$row" | awk -F, '{printf "%6s %10s %8s %10s %12s %12s %9s\n", $1, $2, $3, $4, $5, $6, $7}'
    [ "$now" -ge "$end" ] && break
    sleep "$sample"
    kill -0 "$server_pid" 2>/dev/null || { echo "soak.sh: the server died" >&2; tail -20 "$tmp/kraken.log" >&2; exit 1; }
done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()

# After the load: every client is gone; give the allocator its decay time and sample again.
sleep 15
stats >"$tmp/stats.txt" || true
after_rss=$(rss_kb)
after_q=$(stat_of queued_bytes "$tmp/stats.txt")
after_conns=$(stat_of curr_connections "$tmp/stats.txt")
echo "after the load: rss_kb $after_rss, curr_connections $after_conns, queued_bytes $after_q"
[ -n "$out" ] && cp "$samples" "$out"

fail=0
third=$(awk -F, -v d="$duration" 'NR > 1 && $1 >= d / 3 {print $2; exit}' "$samples")
last=$(awk -F, 'NR > 1 {v = $2} END {print v}' "$samples")
peak=$(awk -F, 'NR > 1 && $2 > m {m = $2} END {print m}' "$samples")
echo "rss_kb at one third: $third, at the end: $last, peak: $peak"
if [ -n "$third" ] && [ "$last" -gt $((third + third * max_growth / 100)) ]; then
    echo "soak: FAIL: RSS grew more than ${max_growth}% over the last two thirds" >&2
    fail=1
fi
if [ "${after_q:-1}" != 0 ] || [ "${after_conns:-1}" -gt 1 ]; then
    echo "soak: FAIL: queues or connections left after every client went: queued_bytes ${after_q:-?}, connections ${after_conns:-?}" >&2
    fail=1
fi
if [ "$after_rss" -gt "$peak" ]; then
    echo "soak: FAIL: RSS after the load is above the peak under load" >&2
    fail=1
fi
grep -c . "$tmp/kraken.log" | awk '{print "log lines: " $1}'
losses=$(grep -c -E '"lost": *[1-9]|lost [1-9]' "$tmp/bench.log" || true)
echo "kraken-bench runs reporting loss: $losses (the never-reading and broadcast subscribers overflow on purpose)"
[ "$fail" = 0 ] && echo "soak: PASS"
exit "$fail"
