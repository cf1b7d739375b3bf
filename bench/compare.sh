#!/usr/bin/env bash
# Run the same kraken-bench scenarios against Kraken, Redis and NATS on this machine and print
# one table. Each server is started fresh for each scenario on a free loopback port, as a
# child of this script, and stopped by its PID afterwards. Redis and NATS come from the
# distribution's packages (installed with apt-get when missing). Every run's JSON line is
# kept (--raw) and drawn as one PNG chart per scenario by bench/chart.sh (--charts).
#
# Kraken is poll-based (its subscribers send `get messages`); Redis and NATS push to their
# subscribers. kraken-bench's numbers include that difference: it is the protocol's cost.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bench/compare.sh [options] [-- extra kraken-bench options]

Options:
  --build-dir DIR     where kraken and kraken-bench were built (default: build)
  --duration S        timed phase of each run in seconds (default 10)
  --threads N         kraken-bench worker threads (default 2)
  --pipeline N        requests in flight per connection (default 64)
  --scenarios LIST    space-separated subset of: fanout broadcast latency churn conns
                      resume (default: the first five; resume is Kraken's alone: Redis
                      and NATS have no positions, so only Kraken rows run it)
  --servers LIST      space-separated subset of: kraken redis nats (default: all three)
  --conns N           connections of the conns scenario (default 10000)
  --kraken-batch N    also run Kraken's fanout and broadcast with N entries per publish
                      request (default 16; 0 = skip)
  --kraken-poll-wait MS
                      the Kraken server's poll_wait_ms (default 20: kraken-bench's
                      subscribers poll in a loop, which is what waiting polls are for;
                      the server's own default, 0, answers an empty poll at once)
  --kraken-rows LIST  which Kraken rows to run: a subset of poll (memcached protocol,
                      polled), batch (the same with --kraken-batch), resp (RESP, pushed)
                      (default: all three)
  --rate R            the latency scenario's fixed total publish rate (default 10000)
  --resume-rate R     the resume scenario's fixed total publish rate (default 20000)
  --pin SCPU,BCPU     run each server under `taskset -c SCPU` and kraken-bench under
                      `taskset -c BCPU` (CPU lists as taskset takes them, e.g. 0,1 or
                      0-1,2-3), so the server and the load generator do not share a CPU;
                      Kraken's default thread counts then follow the server's CPUs
  --scaling           instead: Kraken alone, fanout and broadcast for every combination of
                      num_router_shards and num_net_threads in 1 2 4
  --cluster           also the cross-node rows (after the others, in the same table): for
                      fanout and broadcast, two routed nats-servers and two Kraken nodes
                      linked through them (node 1 on server 1, node 2 on server 2), with the
                      publishers on node 1 and the subscribers on node 2; and the same load
                      against the bare NATS servers, publishers on server 1, subscribers on
                      server 2. Every row starts its servers fresh. A Kraken node that
                      refuses the cluster options makes its row say so; the others go on
  --cluster-only      the cross-node rows alone
  --cluster-scenarios LIST
                      scenarios of the cross-node rows (default: fanout broadcast; any of
                      fanout broadcast latency resume). resume across nodes: the resume
                      shape with the subscribers on node 2 and the publishers on node 1;
                      at a quarter of --duration kraken-bench sends `drain` to node 2's
                      admin socket, and every subscriber node 2 closes resumes on node 1
                      with node 2's token after 0..500 ms (rows: token and from scratch,
                      memcached and RESP as --kraken-rows has poll and resp)
  --drain-ms MS       resume across nodes: node 2's drain_timeout_ms (default 10000, the
                      server's default: the drain reaches the clients over 7.5 s)
  --resume-window MS  resume across nodes: node 2's drain_resume_window_ms (default
                      60000: it answers node 1's resume requests that long after its
                      last client left)
  --raw FILE          append every run's JSON line to FILE (kraken-bench --json, with a
                      "label" field added first: the row's name in the table)
  --charts DIR        write one PNG chart per scenario into DIR with bench/chart.sh
                      (gnuplot; installed with apt-get when missing). Default: next to
                      the raw output, FILE without .jsonl followed by -charts (with
                      --raw FILE), else compare-charts in the current directory. Only this
                      run's lines are drawn, even when FILE already held others.
  --no-charts         do not draw charts
  -h, --help          this text

Scenario shapes (the same for every server):
  fanout     100 subscribers x 10 of 1000 topics, 4 publishers, 64-byte messages
  broadcast  200 subscribers on one topic, 1 publisher, 64-byte messages
  latency    the fanout shape at a fixed --rate messages/s (default 10000)
  churn      100 connections subscribing and unsubscribing random topics of 1000
  conns      --conns idle connections subscribed to one topic each; server RSS growth
  resume     1000 subscribers x 100 of 100000 topics, 4 publishers at --resume-rate; half-way
             every subscriber is cut and reconnects after 0..500 ms: one row resumes from
             its last position, one subscribes again from scratch (Kraken only)
EOF
}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build="$root/build"
duration=10
threads=2
pipeline=64
scenarios="fanout broadcast latency churn conns"
servers="kraken redis nats"
nconns=10000
kraken_batch=16
kraken_poll_wait=20
scaling=0
cluster=0
cluster_scenarios="fanout broadcast"
kraken_rows="poll batch resp"
rate=10000
resume_rate=20000
drain_ms=10000
resume_window=60000
pin_server=()
pin_bench=()
raw=""
charts=""
no_charts=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --build-dir) build=$(cd "$2" && pwd); shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --pipeline) pipeline=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --conns) nconns=$2; shift 2 ;;
    --kraken-batch) kraken_batch=$2; shift 2 ;;
    --kraken-poll-wait) kraken_poll_wait=$2; shift 2 ;;
    --kraken-rows) kraken_rows=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --resume-rate) resume_rate=$2; shift 2 ;;
    --drain-ms) drain_ms=$2; shift 2 ;;
    --resume-window) resume_window=$2; shift 2 ;;
    --pin)
        command -v taskset >/dev/null || { echo "compare.sh: --pin needs taskset (util-linux)" >&2; exit 2; }
        pin_server=(taskset -c "${2%%,*}")
        pin_bench=(taskset -c "${2#*,}")
        shift 2 ;;
    --scaling) scaling=1; shift ;;
    --cluster) cluster=1; shift ;;
    --cluster-only) cluster=2; shift ;;
    --cluster-scenarios) cluster_scenarios=$2; shift 2 ;;
    --raw) raw=$2; shift 2 ;;
    --charts) charts=$2; shift 2 ;;
    --no-charts) no_charts=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "compare.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done

kraken_bin="$build/admin/kraken"
bench_bin="$build/bench/kraken-bench"
for b in "$kraken_bin" "$bench_bin"; do
    if [ ! -x "$b" ]; then
        echo "compare.sh: $b is missing; build first: cmake -S . -B build && cmake --build build" >&2
        exit 2
    fi
done

# --- Redis and NATS from the distribution, when missing ---------------------------------
need_pkgs=()
case " $servers " in *" redis "*) command -v redis-server >/dev/null || need_pkgs+=(redis-server) ;; esac
if [[ " $servers " == *" nats "* ]] || [ "$cluster" != 0 ]; then
    command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need_pkgs+=(nats-server)
fi
if [ "$scaling" = 0 ] && [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "compare.sh: installing ${need_pkgs[*]} with apt-get" >&2
    sudo_cmd=()
    [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}" >&2 ||
        { "${sudo_cmd[@]}" apt-get update >&2 &&
          "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}" >&2; }
fi
nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)

# --- file descriptors for the conns scenario (each process needs one per connection; the
# servers inherit this limit) -------------------------------------------------------------
want_fds=$((nconns + 1024))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want_fds" ]; then
    ulimit -Hn "$want_fds" 2>/dev/null || true
    hard=$(ulimit -Hn)
fi
if [ "$hard" = unlimited ] || [ "$hard" -ge "$want_fds" ]; then
    ulimit -Sn "$want_fds"
else
    ulimit -Sn "$hard"
    echo "compare.sh: warning: open-file limit is $hard; the conns scenario may fail (raise ulimit -n)" >&2
fi

# --- server processes ----------------------------------------------------------------------
tmp=$(mktemp -d /tmp/kraken-compare.XXXXXX)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    stop_cluster
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for p in $(seq 21000 21999); do
        if port_free "$p"; then echo "$p"; return 0; fi
    done
    echo "compare.sh: no free port in 21000..21999" >&2
    return 1
}
wait_listening() {
    local _
    for _ in $(seq 1 500); do
        if ! port_free "$1"; then return 0; fi
        kill -0 "$server_pid" 2>/dev/null || return 1
        sleep 0.02
    done
    return 1
}

# start_server NAME [kraken args...]: sets server_pid and server_port
start_server() {
    local name=$1; shift
    : >"$tmp/$name.log"
    case "$name" in
    kraken)
        # its own admin socket: another server on this machine (the default socket) must not
        # stop this one from starting
        ${pin_server[@]+"${pin_server[@]}"} "$kraken_bin" run --listen_ip 127.0.0.1 --tcp_server_port 0 --log_file "$tmp/kraken.log" \
            --admin_socket "$tmp/kraken-admin.sock" --max_tcp_clients $((nconns + 1000)) --poll_wait_ms "$kraken_poll_wait" \
            "$@" >"$tmp/kraken.out" 2>&1 &
        server_pid=$!
        server_port=""
        local _
        for _ in $(seq 1 500); do
            server_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/kraken.log" | head -n1)
            [ -n "$server_port" ] && break
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.02
        done
        ;;
    redis)
        server_port=$(free_port)
        ${pin_server[@]+"${pin_server[@]}"} redis-server --port "$server_port" --bind 127.0.0.1 --save '' --appendonly no \
            --maxclients $((nconns + 1000)) --logfile "$tmp/redis.log" >/dev/null 2>&1 &
        server_pid=$!
        wait_listening "$server_port" || server_port=""
        ;;
    nats)
        server_port=$(free_port)
        ${pin_server[@]+"${pin_server[@]}"} "$nats_bin" -a 127.0.0.1 -p "$server_port" -l "$tmp/nats.log" >/dev/null 2>&1 &
        server_pid=$!
        wait_listening "$server_port" || server_port=""
        ;;
    esac
    if [ -z "$server_port" ]; then
        echo "compare.sh: $name did not start; its log:" >&2
        cat "$tmp/$name.log" "$tmp/$name.out" 2>/dev/null | tail -n 20 >&2 || true
        stop_server
        return 1
    fi
}

stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}

scenario_args() {
    case "$1" in
    fanout) echo "--scenario fanout --subs 100 --pubs 4 --topics 1000 --topics-per-sub 10 --msg-size 64" ;;
    broadcast) echo "--scenario broadcast --subs 200 --pubs 1 --msg-size 64" ;;
    latency) echo "--scenario latency --subs 100 --pubs 4 --topics 1000 --topics-per-sub 10 --msg-size 64 --rate $rate" ;;
    churn) echo "--scenario churn --subs 100 --topics 1000" ;;
    conns) echo "--scenario conns --conns $nconns --topics 1000 --topics-per-sub 1" ;;
    resume) echo "--scenario resume --subs 1000 --pubs 4 --topics 100000 --topics-per-sub 100 --msg-size 64 --rate $resume_rate" ;;
    *) echo "compare.sh: unknown scenario '$1'" >&2; return 1 ;;
    esac
}

field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2"; }

rows=()
# run_one LABEL SERVER SCENARIO [extra bench args...] (server args come from $server_args;
# $bench_proto, when set, is the protocol kraken-bench speaks instead of SERVER's own)
run_one() {
    local label=$1 server=$2 sc=$3; shift 3
    local args
    args=$(scenario_args "$sc")
    # shellcheck disable=SC2086
    start_server "$server" ${server_args:-} || { rows+=("$sc|$label|server did not start"); return; }
    local dur=$duration
    local more=(--server-pid "$server_pid") # its CPU in the timed phase (conns: its RSS)
    if [ "$sc" = conns ]; then
        dur=$((duration < 5 ? duration : 5))
        more+=(--connect-timeout 120)
    fi
    echo "== $sc: $label (port $server_port)" >&2
    local json rc=0
    # shellcheck disable=SC2086
    json=$(${pin_bench[@]+"${pin_bench[@]}"} "$bench_bin" --proto "${bench_proto:-$server}" --port "$server_port" $args --duration "$dur" \
        --threads "$threads" --pipeline "$pipeline" --json --quiet "${more[@]}" "$@" \
        ${extra[@]+"${extra[@]}"}) || rc=$?
    stop_server
    add_row "$label" "$sc" "$json" "$rc"
}

# add_row LABEL SCENARIO JSON RC: keep the run's JSON line and add its row to the table
add_row() {
    local label=$1 sc=$2 json=$3 rc=$4
    if [ -n "$json" ]; then
        # the row's label first, then kraken-bench's own fields
        local line="{\"label\":\"${label//\"/\\\"}\",${json#\{}"
        printf '%s\n' "$line" >>"$tmp/runs.jsonl"
        [ -n "$raw" ] && printf '%s\n' "$line" >>"$raw"
    fi
    if [ -z "$json" ]; then
        rows+=("$sc|$label|kraken-bench failed (exit $rc)")
        return
    fi
    local note=""
    case "$sc" in
    churn) note="$(field ops_rate "$json") ops/s" ;;
    resume)
        note="live again p50/p99/max $(field live_p50_ms "$json")/$(field live_p99_ms "$json")/$(field live_max_ms "$json") ms"
        note="$note; replayed $(field replayed "$json"), resync topics $(field resync_topics "$json"), to reload $(field reload_topics "$json"), lost $(field lost "$json")"
        if [ "$(field drain "$json")" = true ]; then
            note="$note; close->live p50/p99/max $(field away_p50_ms "$json")/$(field away_p99_ms "$json")/$(field away_max_ms "$json") ms, all live $(field all_live_s "$json") s after the drain, never closed $(field stayed "$json")"
        fi
        ;;
    conns)
        note="$(field connections "$json") conns in $(field connect_s "$json") s"
        [ "$(field rss_per_conn_bytes "$json")" != -1 ] &&
            note="$note; RSS +$(field rss_per_conn_bytes "$json") B/conn ($(field rss_before_kb "$json") -> $(field rss_after_kb "$json") KiB)"
        ;;
    esac
    case "$sc" in fanout | broadcast | churn)
        [ "$(field per_server_cpu_s "$json")" != -1 ] &&
            note="$note; server CPU $(field server_cpu_s "$json") s, $(field per_server_cpu_s "$json") per CPU-s" ;;
    esac
    [ "$(field status "$json")" != ok ] && note="$note [$(field status "$json"): $(field error "$json")]"
    case "$sc" in fanout | broadcast | latency) note="drain $(field drain_s "$json") s$note" ;; esac
    [ "$(field drain_timed_out "$json")" = true ] && note="$note [drain bound reached]"
    rows+=("$sc|$label|$(field publish_rate "$json")|$(field deliver_rate "$json")|$(field lat_p50_us "$json")|$(field lat_p99_us "$json")|$(field lat_p999_us "$json")|$(field lat_max_us "$json")|$(field loss "$json")|$(field duplicates "$json")|$(field order_errors "$json")|$(field errors "$json")|$note")
}

# --- cross-node runs (--cluster) -------------------------------------------------------------
# Two nats-servers routed to each other (client and route port each, free loopback ports),
# and for the Kraken rows two Kraken nodes, node 1 linked to server 1 and node 2 to server 2.
# Their PIDs are in cluster_pids; stop_cluster ends them by PID, with SIGINT: a Kraken node
# stops at once (no drain, no drain_resume_window_ms), nats-server shuts down.
cluster_pids=()
stop_cluster() {
    local p
    for p in ${cluster_pids[@]+"${cluster_pids[@]}"}; do
        kill -INT "$p" 2>/dev/null || true
    done
    for p in ${cluster_pids[@]+"${cluster_pids[@]}"}; do
        wait "$p" 2>/dev/null || true
    done
    cluster_pids=()
}

# free_ports N: N distinct free loopback ports, one a line
free_ports() {
    local p n=0
    for p in $(seq 21000 21999); do
        if port_free "$p"; then echo "$p"; n=$((n + 1)); fi
        [ "$n" -ge "$1" ] && return 0
    done
    echo "compare.sh: fewer than $1 free ports in 21000..21999" >&2
    return 1
}

# wait_port PORT PID: until PORT listens (bounded), or PID exits
wait_port() {
    local _
    for _ in $(seq 1 500); do
        if ! port_free "$1"; then return 0; fi
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.02
    done
    return 1
}

# start_nats_pair: sets nats1_port nats2_port (client ports) once both servers listen and
# each has its route to the other (bounded)
start_nats_pair() {
    local ports
    ports=($(free_ports 4)) || return 1
    nats1_port=${ports[0]}
    nats2_port=${ports[1]}
    local r1=${ports[2]} r2=${ports[3]}
    : >"$tmp/nats1.log"
    : >"$tmp/nats2.log"
    "$nats_bin" -a 127.0.0.1 -p "$nats1_port" -n cmp-nats-1 --cluster "nats://127.0.0.1:$r1" \
        --cluster_name kraken-compare --routes "nats-route://127.0.0.1:$r2" -l "$tmp/nats1.log" \
        >/dev/null 2>&1 &
    cluster_pids+=($!)
    "$nats_bin" -a 127.0.0.1 -p "$nats2_port" -n cmp-nats-2 --cluster "nats://127.0.0.1:$r2" \
        --cluster_name kraken-compare --routes "nats-route://127.0.0.1:$r1" -l "$tmp/nats2.log" \
        >/dev/null 2>&1 &
    cluster_pids+=($!)
    wait_port "$nats1_port" "${cluster_pids[0]}" && wait_port "$nats2_port" "${cluster_pids[1]}" ||
        { echo "compare.sh: nats-server did not start; its logs:" >&2
          tail -n 5 "$tmp/nats1.log" "$tmp/nats2.log" >&2; return 1; }
    local _ i
    for _ in $(seq 1 500); do
        # "Route connection created" in both logs: the route is up both ways
        i=0
        grep -q "Route connection created" "$tmp/nats1.log" && i=$((i + 1))
        grep -q "Route connection created" "$tmp/nats2.log" && i=$((i + 1))
        [ "$i" = 2 ] && return 0
        sleep 0.02
    done
    echo "compare.sh: the two nats-servers did not route to each other" >&2
    return 1
}

# start_kraken_node N NATS_PORT [kraken args...]: sets node_port; the node's own log and
# admin socket ($tmp/kraken-nodeN-admin.sock)
start_kraken_node() {
    local n=$1 np=$2 log="$tmp/kraken-node$1.log"
    shift 2
    : >"$log"
    "$kraken_bin" run --listen_ip 127.0.0.1 --tcp_server_port 0 --log_file "$log" \
        --admin_socket "$tmp/kraken-node$n-admin.sock" --poll_wait_ms "$kraken_poll_wait" \
        --cluster_nats_url "nats://127.0.0.1:$np" --cluster_node_name "node$n" \
        --max_tcp_clients 5000 --drain_resume_window_ms 0 "$@" \
        >"$tmp/kraken-node$n.out" 2>&1 &
    local pid=$!
    cluster_pids+=($pid)
    node_port=""
    local _
    for _ in $(seq 1 500); do
        node_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n1)
        [ -n "$node_port" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.02
    done
    node_error=$(cat "$log" "$tmp/kraken-node$n.out" 2>/dev/null | grep -v '^$' | tail -n 1 | cut -c1-120)
    [ -n "$node_error" ] || node_error="no 'listening on' line"
    return 1
}

# run_cross LABEL KIND SCENARIO: KIND kraken (two nodes over two routed nats-servers) or
# nats (the two servers bare); publishers on the first, subscribers on the second
run_cross() {
    local label=$1 kind=$2 sc=$3
    local args pub_port sub_port proto=$kind
    args=$(scenario_args "$sc")
    if ! start_nats_pair; then
        stop_cluster
        rows+=("$sc|$label|failed: the nats-servers did not start")
        return
    fi
    if [ "$kind" = kraken ]; then
        node_error=""
        if ! start_kraken_node 1 "$nats1_port"; then
            stop_cluster
            rows+=("$sc|$label|failed: node 1 did not start: $node_error")
            return
        fi
        pub_port=$node_port
        if ! start_kraken_node 2 "$nats2_port"; then
            stop_cluster
            rows+=("$sc|$label|failed: node 2 did not start: $node_error")
            return
        fi
        sub_port=$node_port
    else
        pub_port=$nats1_port
        sub_port=$nats2_port
    fi
    echo "== $sc: $label (publishers on port $pub_port, subscribers on port $sub_port)" >&2
    local json rc=0
    # shellcheck disable=SC2086
    json=$("$bench_bin" --proto "$proto" --port "$pub_port" --sub-port "$sub_port" $args \
        --duration "$duration" --threads "$threads" --pipeline "$pipeline" --connect-timeout 30 \
        --json --quiet ${extra[@]+"${extra[@]}"}) || rc=$?
    stop_cluster
    add_row "$label" "$sc" "$json" "$rc"
    # NATS core drops what a slow consumer (a subscriber or a route) cannot take: say so
    local f
    for f in "$tmp/nats1.log" "$tmp/nats2.log"; do
        if grep -q "Slow Consumer" "$f"; then
            rows[${#rows[@]}-1]+=" [$(basename "$f" .log): $(grep -c "Slow Consumer" "$f") slow consumer events$(grep -q "Slow Consumer.*rid:" "$f" && echo ", a route among them" || true)]"
        fi
    done
}

# run_drain_cross LABEL PROTO [kraken-bench args...]: the resume shape across two Kraken nodes
# over two routed nats-servers; subscribers on node 2, publishers on node 1; at a quarter of
# the run kraken-bench drains node 2 through its admin socket and the subscribers move to
# node 1 (node 2 keeps answering resumes for --resume-window ms after its last client left)
run_drain_cross() {
    local label=$1 proto=$2 sc=resume
    shift 2
    local args
    args=$(scenario_args "$sc")
    if ! start_nats_pair; then
        stop_cluster
        rows+=("$sc|$label|failed: the nats-servers did not start")
        return
    fi
    node_error=""
    if ! start_kraken_node 1 "$nats1_port"; then
        stop_cluster
        rows+=("$sc|$label|failed: node 1 did not start: $node_error")
        return
    fi
    local pub_port=$node_port
    if ! start_kraken_node 2 "$nats2_port" --drain_timeout_ms "$drain_ms" \
        --drain_resume_window_ms "$resume_window"; then
        stop_cluster
        rows+=("$sc|$label|failed: node 2 did not start: $node_error")
        return
    fi
    local sub_port=$node_port
    local cut_at
    cut_at=$(awk -v d="$duration" 'BEGIN { printf "%.3f", d / 4 }')
    local settle
    settle=$(awk -v m="$drain_ms" 'BEGIN { printf "%.0f", m / 1000 + 15 }')
    echo "== $sc: $label (publishers on node 1, port $pub_port; subscribers on node 2, port $sub_port, drained at $cut_at s)" >&2
    local json rc=0
    # shellcheck disable=SC2086
    json=$("$bench_bin" --proto "$proto" --port "$pub_port" --sub-port "$sub_port" $args \
        --drain-admin "$tmp/kraken-node2-admin.sock" --cut-at "$cut_at" --drain-timeout "$settle" \
        --duration "$duration" --threads "$threads" --pipeline "$pipeline" --connect-timeout 60 \
        --json --quiet "$@" ${extra[@]+"${extra[@]}"}) || rc=$?
    stop_cluster
    add_row "$label" "$sc" "$json" "$rc"
    local f
    for f in "$tmp/nats1.log" "$tmp/nats2.log"; do
        if grep -q "Slow Consumer" "$f"; then
            rows[${#rows[@]}-1]+=" [$(basename "$f" .log): $(grep -c "Slow Consumer" "$f") slow consumer events]"
        fi
    done
}

run_cluster_rows() {
    local sc
    for sc in $cluster_scenarios; do
        if [ "$sc" = resume ]; then
            if [[ " $kraken_rows " == *" poll "* ]]; then
                run_drain_cross "kraken drain node2->1 token" kraken
                run_drain_cross "kraken drain node2->1 scratch" kraken --resume-mode scratch
            fi
            if [[ " $kraken_rows " == *" resp "* ]]; then
                run_drain_cross "kraken resp drain 2->1 token" redis
                run_drain_cross "kraken resp drain 2->1 scratch" redis --resume-mode scratch
            fi
            continue
        fi
        run_cross "kraken pub node1 sub node2" kraken "$sc"
        run_cross "nats pub srv1 sub srv2" nats "$sc"
    done
}

print_table() {
    printf '\n%-9s  %-28s %11s %11s %9s %9s %9s %9s %6s %4s %5s %4s  %s\n' \
        scenario server "publ/s" "deliv/s" "p50 us" "p99 us" "p99.9 us" "max us" loss dup order err note
    local r
    for r in "${rows[@]}"; do
        IFS='|' read -r sc label pr dr p50 p99 p999 pmax loss dup ord err note <<<"$r"
        if [ -z "${dr:-}" ] && [ -n "${pr:-}" ]; then
            printf '%-9s  %-28s %s\n' "$sc" "$label" "$pr"
            continue
        fi
        printf '%-9s  %-28s %11s %11s %9s %9s %9s %9s %6s %4s %5s %4s  %s\n' \
            "$sc" "$label" "$pr" "$dr" "$p50" "$p99" "$p999" "$pmax" "$loss" "$dup" "$ord" "$err" "$note"
    done
}

# draw_charts: this run's JSON lines ($tmp/runs.jsonl) as PNGs, with bench/chart.sh
draw_charts() {
    [ "$no_charts" = 1 ] && return 0
    if [ ! -s "$tmp/runs.jsonl" ]; then
        echo "compare.sh: no run produced a JSON line; no charts" >&2
        return 0
    fi
    local dir=$charts
    if [ -z "$dir" ]; then
        if [ -n "$raw" ]; then
            dir="${raw%.jsonl}-charts"
        else
            dir=compare-charts
        fi
    fi
    echo >&2
    echo "compare.sh: charts in $dir:" >&2
    "$here/chart.sh" --out "$dir" \
        --title "$(date -u +%Y-%m-%d), $(nproc) CPUs shared with the load generator, ${duration} s runs" \
        "$tmp/runs.jsonl" >&2 || echo "compare.sh: warning: bench/chart.sh failed; no charts" >&2
}

if [ -n "$raw" ]; then
    mkdir -p "$(dirname "$raw")"
    : >>"$raw" || exit 2
fi
echo "compare.sh: $(nproc) CPUs; kraken-bench --threads $threads --pipeline $pipeline, ${duration} s runs" >&2

if [ "$scaling" = 1 ]; then
    for sc in fanout broadcast; do
        for shards in 1 2 4; do
            for net in 1 2 4; do
                server_args="--num_router_shards $shards --num_net_threads $net"
                run_one "kraken shards=$shards net=$net" kraken "$sc"
                if [ "$kraken_batch" -gt 1 ]; then
                    run_one "kraken s=$shards n=$net batch $kraken_batch" kraken "$sc" --batch "$kraken_batch"
                fi
            done
        done
    done
    server_args=""
    print_table
    draw_charts
    exit 0
fi

[ "$cluster" = 2 ] && scenarios=""
for sc in $scenarios; do
    for srv in $servers; do
        server_args=""
        if [ "$sc" = resume ]; then
            # positions and resume are Kraken's own; Redis and NATS have nothing to compare
            if [ "$srv" = kraken ]; then
                run_one "kraken (resume)" kraken resume
                run_one "kraken (from scratch)" kraken resume --resume-mode scratch
            fi
            continue
        fi
        if [ "$srv" != kraken ] || [[ " $kraken_rows " == *" poll "* ]]; then
            run_one "$srv" "$srv" "$sc"
        fi
        if [ "$srv" = kraken ] && [[ " $kraken_rows " == *" batch "* ]] && [ "$kraken_batch" -gt 1 ] &&
            { [ "$sc" = fanout ] || [ "$sc" = broadcast ]; }; then
            run_one "kraken (batch $kraken_batch)" kraken "$sc" --batch "$kraken_batch"
        fi
        if [ "$srv" = kraken ] && [[ " $kraken_rows " == *" resp "* ]] && [ "$sc" != retro ]; then
            # the same server spoken to as Redis clients do (RESP, pushed deliveries)
            bench_proto=redis run_one "kraken (resp)" kraken "$sc"
        fi
    done
done
[ "$cluster" != 0 ] && run_cluster_rows
print_table
draw_charts
