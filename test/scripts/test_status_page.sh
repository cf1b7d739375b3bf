#!/usr/bin/env bash
# The status page in a real browser: start the server with the HTTP listener, hold three
# client connections open, load / in headless Chromium and check the DOM after the page's
# first refreshes shows the live figures (the connection count the server has, the state,
# the version). Fails, saying so, when Chromium is not installed (sh cmake/deps.sh installs it).
#   test/scripts/test_status_page.sh [--screenshot FILE]
set -euo pipefail
bin=${KRAKEN_BIN:?KRAKEN_BIN must name the server binary}
shot=""
[ "${1:-}" = "--screenshot" ] && shot=$2
chromium=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$chromium" ]; then
    echo "FAIL: chromium is not installed (Debian package chromium; sh cmake/deps.sh installs it)"
    exit 1
fi
tmp=$(mktemp -d /tmp/kraken-page.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    exec 3>&- 4>&- 5>&- || true
    rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); hport=$(free_port)
"$bin" run --listen_ip 127.0.0.1 --tcp_server_port "$port" --http_port "$hport" \
    --admin_socket "$tmp/admin.sock" --pid_file "" --router_min_fanout_to_warn 1 >"$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 1 500); do grep -q "http monitoring on" "$tmp/log" && break; sleep 0.02; done
grep -q "http monitoring on" "$tmp/log" || { echo "FAIL: the server did not start"; cat "$tmp/log"; exit 1; }
for _ in $(seq 1 500); do grep -q "listening on" "$tmp/log" && break; sleep 0.02; done
# three clients: two subscribers and a publisher whose message fans out (and is warned)
exec 3<>/dev/tcp/127.0.0.1/"$port" 4<>/dev/tcp/127.0.0.1/"$port" 5<>/dev/tcp/127.0.0.1/"$port"
printf 'set subscribe 0 0 10\r\npage.topic\r\n' >&3
printf 'set subscribe 0 0 10\r\npage.topic\r\n' >&4
for fd in 3 4; do read -r -t 10 line <&"$fd"; [ "${line%$'\r'}" = STORED ] || { echo "FAIL: subscribe: $line"; exit 1; }; done
printf 'set publish 0 0 31\r\nMESSAGE page.topic 7\r\nhello!!\r\n\r\n' >&5
line=""; read -r -t 10 line <&5 || true; [ "${line%$'\r'}" = STORED ] || { echo "FAIL: publish: '$line'"; exit 1; }
run_chromium() {
    timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --no-first-run \
        --user-data-dir="$tmp/profile" --virtual-time-budget=4000 "$@" \
        "http://127.0.0.1:$hport/" 2>"$tmp/chromium.err"
}
dom=$(run_chromium --dump-dom) || { echo "FAIL: chromium failed"; cat "$tmp/chromium.err"; exit 1; }
fail=0
check() { # a fragment the rendered DOM must hold
    if ! grep -qF -- "$1" <<<"$dom"; then echo "FAIL: the rendered page lacks: $1"; fail=1; fi
}
check '<b id="connections">3</b>'
check '<b id="state" class="serving">serving</b>'
check '<b id="version">1.'
check '<td>page.topic</td><td class="n">2</td>'
check 'data-refreshes="'
check '<b id="fanout_warnings">1</b>'
grep -q 'data-refreshes="[2-9]' <<<"$dom" || { echo "FAIL: the page did not refresh twice"; fail=1; }
if [ "$fail" -ne 0 ]; then
    echo "--- DOM"; echo "$dom" | head -c 6000; echo; exit 1
fi
if [ -n "$shot" ]; then
    run_chromium --screenshot="$shot" --window-size=1280,900 >/dev/null || true
    echo "screenshot: $shot"
fi
echo "1 passed, 0 failed"
