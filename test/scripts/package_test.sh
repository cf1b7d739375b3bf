#!/usr/bin/env bash
# The Debian package, end to end: build it (cpack -G DEB) from a RelWithDebInfo build,
# check its copyright file (made from LICENSE) and that lintian reports no error, install
# it with dpkg -i, check the files, the conffile and the kraken user, start the installed
# server with the installed configuration as the kraken user (in the foreground, a child
# of this script, on a free loopback port given on the command line), check that it
# answers `version` and `stats` over TCP and `kraken status` over its admin socket, check
# that the installed man page names every key `kraken --help` lists, stop the server by its
# PID (SIGTERM: it drains and exits 0), then `dpkg --purge` and check that every packaged
# file, the configuration directory and the kraken user and group are gone.
#
# Needs root (dpkg) and refuses to run when a kraken package, user, group or /etc/kraken is
# already there, so that purging cannot remove anything it did not create: the machine is
# left as it was found. Every wait is bounded.
#
# Usage: test/scripts/package_test.sh [--build-dir DIR]   (default: build-pkg, configured here)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build="$root/build-pkg"
while [ $# -gt 0 ]; do
    case "$1" in
    --build-dir) build=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "package_test: unknown option '$1'" >&2; exit 2 ;;
    esac
done

step() { echo "package_test: $*"; }
fail() { echo "package_test: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i / --purge)"
if dpkg-query -W -f='${Status}' kraken 2>/dev/null | grep -q "installed"; then
    fail "a kraken package is already installed; not touching it"
fi
getent passwd kraken >/dev/null && fail "a kraken user already exists; purging would remove it"
getent group kraken >/dev/null && fail "a kraken group already exists; purging would remove it"
[ -e /etc/kraken ] && fail "/etc/kraken already exists; not touching it"

tmp=$(mktemp -d /tmp/kraken-package-test.XXXXXX)
server_pid=""
installed=0
cleanup() {
    local rc=$?
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ "$installed" = 1 ]; then
        echo "package_test: cleaning up: dpkg --purge kraken" >&2
        dpkg --purge kraken >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build the package --------------------------------------------------------------------
step "building the package in $(basename "$build")"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKR_BUILD_TESTS=OFF \
    -DKR_BUILD_STRESS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
rm -f "$build"/kraken_*.deb
(cd "$build" && cpack -G DEB >/dev/null)
deb=$(ls "$build"/kraken_*.deb)
[ -f "$deb" ] || fail "cpack made no .deb"
dpkg-deb -I "$deb" >"$tmp/info"
grep -q '^ Package: kraken$' "$tmp/info" || fail "control file has no Package: kraken"
for lib in libuv1 liburcu8 libjemalloc2 libinih1 libxxhash0 adduser; do
    grep '^ Depends:' "$tmp/info" | grep -qw "$lib" || fail "Depends lacks $lib"
done
dpkg-deb -c "$deb" >"$tmp/contents"
step "$(basename "$deb"): $(wc -l <"$tmp/contents") entries"
grep -q ' \./usr/share/doc/kraken/copyright$' "$tmp/contents" || fail "the package has no copyright file"
dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./usr/share/doc/kraken/copyright >"$tmp/copyright"
grep -q '^Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/$' "$tmp/copyright" &&
    grep -q '^License: Expat$' "$tmp/copyright" ||
    fail "the copyright file is not the machine-readable one made from LICENSE"

# --- lintian: no error (warnings are printed, not fatal) ------------------------------------
if ! command -v lintian >/dev/null; then
    step "installing lintian"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends lintian; } >"$tmp/apt.log" 2>&1 ||
        { cat "$tmp/apt.log" >&2; fail "could not install lintian"; }
fi
lintian --tag-display-limit 0 "$deb" >"$tmp/lintian" 2>&1 || true
grep -E '^[EW]: ' "$tmp/lintian" || true
grep -q '^E: ' "$tmp/lintian" && fail "lintian reports errors (above)"
step "lintian: no errors, $(grep -c '^W: ' "$tmp/lintian" || true) warnings"

# --- install --------------------------------------------------------------------------------
step "dpkg -i"
installed=1
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >"$tmp/dpkg-i.log" 2>&1 ||
    { cat "$tmp/dpkg-i.log" >&2; fail "dpkg -i failed"; }
dpkg-query -L kraken >"$tmp/files"
for f in /usr/bin/kraken /usr/bin/kraken-bench /lib/systemd/system/kraken.service \
    /etc/kraken/kraken.conf /usr/share/man/man1/kraken.1.gz /usr/share/man/man1/kraken-bench.1.gz \
    /usr/share/doc/kraken/README.md /usr/share/doc/kraken/protocol.md \
    /usr/share/doc/kraken/operations.md /usr/share/doc/kraken/architecture.md \
    /usr/share/doc/kraken/benchmarks.md /usr/share/doc/kraken/haproxy.cfg; do
    [ -f "$f" ] || fail "$f is not installed"
    grep -qx "$f" "$tmp/files" || fail "$f is not in the package's file list"
done
[ -x /usr/bin/kraken ] && [ -x /usr/bin/kraken-bench ] || fail "binaries are not executable"
dpkg-query -W -f='${Conffiles}\n' kraken | grep -q '^ /etc/kraken/kraken.conf ' ||
    fail "/etc/kraken/kraken.conf is not a conffile"
grep -q '^ExecStart=/usr/bin/kraken run --config /etc/kraken/kraken.conf$' \
    /lib/systemd/system/kraken.service || fail "the unit's ExecStart does not run /usr/bin/kraken"
grep -q '^RuntimeDirectory=kraken$' /lib/systemd/system/kraken.service ||
    fail "the unit does not create /run/kraken"
grep -q '^admin_socket = /run/kraken/admin.sock$' /etc/kraken/kraken.conf ||
    fail "the packaged config does not put the admin socket in /run/kraken"
pw=$(getent passwd kraken) || fail "postinst did not create the kraken user"
uid=$(cut -d: -f3 <<<"$pw")
[ "$uid" -lt 1000 ] || fail "kraken is not a system user (uid $uid)"
case "$(cut -d: -f7 <<<"$pw")" in */nologin | /bin/false) ;; *) fail "kraken has a login shell: $pw" ;; esac
getent group kraken >/dev/null || fail "postinst did not create the kraken group"
[ "$(id -gn kraken)" = kraken ] || fail "kraken's primary group is $(id -gn kraken)"
# postinst again (dpkg-reconfigure, a re-run after a failure) changes nothing and succeeds
DEBIAN_FRONTEND=noninteractive dpkg-reconfigure kraken >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive /var/lib/dpkg/info/kraken.postinst configure 1.0.0 ||
    fail "postinst is not idempotent"
[ "$(getent passwd kraken)" = "$pw" ] || fail "postinst run twice changed the kraken user"

# --- run the installed server as the kraken user -------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=""
for p in $(shuf -i 22000-22999 -n 200); do
    if port_free "$p"; then port=$p; break; fi
done
[ -n "$port" ] || fail "no free port in 22000..22999"
chown kraken:kraken "$tmp"
chmod 0755 "$tmp"
# The installed configuration, with the port, the address and the admin socket given on the
# command line (they win over the file): nothing collides with another server, and the
# socket goes to this test's directory instead of /run/kraken (systemd makes that one).
args=(run --config /etc/kraken/kraken.conf --listen_ip 127.0.0.1 --tcp_server_port "$port"
    --health_port 0 --admin_socket "$tmp/admin.sock" --pid_file "")
step "starting /usr/bin/kraken as the kraken user on 127.0.0.1:$port"
setpriv --reuid=kraken --regid=kraken --init-groups -- /usr/bin/kraken "${args[@]}" \
    >"$tmp/server.out" 2>&1 &
server_pid=$!
up=0
for _ in $(seq 1 1500); do
    if ! port_free "$port"; then up=1; break; fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.02
done
[ "$up" = 1 ] || { cat "$tmp/server.out" >&2; fail "the installed server did not start listening"; }
[ "$(stat -c %U /proc/$server_pid)" = kraken ] || fail "the server does not run as kraken"

exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'version\r\n' >&3
IFS= read -r -t 30 line <&3 || fail "no answer to version"
version=$(dpkg-query -W -f='${Version}' kraken)
[ "$line" = "VERSION $version"$'\r' ] || fail "version answered '$line', expected 'VERSION $version'"
printf 'stats\r\n' >&3
nstat=0
got_end=0
stat_pid=""
for _ in $(seq 1 1000); do
    IFS= read -r -t 30 line <&3 || fail "stats reply stopped after $nstat lines"
    line=${line%$'\r'}
    if [ "$line" = END ]; then got_end=1; break; fi
    case "$line" in
    "STAT pid "*) stat_pid=${line#STAT pid }; nstat=$((nstat + 1)) ;;
    "STAT "*) nstat=$((nstat + 1)) ;;
    *) fail "unexpected stats line '$line'" ;;
    esac
done
[ "$got_end" = 1 ] || fail "stats reply has no END"
[ "$nstat" -ge 5 ] || fail "stats gave only $nstat STAT lines"
[ "$stat_pid" = "$server_pid" ] || fail "stats says pid '$stat_pid', the server is $server_pid"
exec 3>&-
/usr/bin/kraken status --admin_socket "$tmp/admin.sock" >"$tmp/status" 2>&1 ||
    { cat "$tmp/status" >&2; fail "kraken status failed against the installed server"; }
grep -q "pid $server_pid" "$tmp/status" || fail "kraken status: $(cat "$tmp/status")"
step "version, stats ($nstat lines) and status answered"

step "stopping pid $server_pid (SIGTERM)"
kill -TERM "$server_pid"
for _ in $(seq 1 3000); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.01
done
if kill -0 "$server_pid" 2>/dev/null; then fail "the server did not exit after SIGTERM"; fi
src=0
wait "$server_pid" || src=$?
server_pid=""
[ "$src" = 0 ] || { cat "$tmp/server.out" >&2; fail "the server exited $src after SIGTERM"; }

# --- the man page ---------------------------------------------------------------------------
if command -v man >/dev/null; then
    [ "$(man -w kraken 2>/dev/null)" = /usr/share/man/man1/kraken.1.gz ] ||
        fail "man -w kraken: '$(man -w kraken 2>&1)'"
fi
zcat /usr/share/man/man1/kraken.1.gz >"$tmp/kraken.1"
/usr/bin/kraken --help | sed -n '/^Keys:$/,$p' | sed -n 's/^  \([a-z_][a-z0-9_]*\) (.*/\1/p' >"$tmp/keys"
[ "$(wc -l <"$tmp/keys")" -ge 20 ] || fail "kraken --help lists only $(wc -l <"$tmp/keys") keys"
while read -r k; do
    grep -q "^\\\\fB$k\\\\fR (" "$tmp/kraken.1" || fail "the man page lacks key '$k'"
done <"$tmp/keys"
step "man page names all $(wc -l <"$tmp/keys") keys of kraken --help"

# --- purge ----------------------------------------------------------------------------------
step "dpkg --purge"
DEBIAN_FRONTEND=noninteractive dpkg --purge kraken >"$tmp/dpkg-purge.log" 2>&1 ||
    { cat "$tmp/dpkg-purge.log" >&2; fail "dpkg --purge failed"; }
installed=0
if dpkg-query -W -f='${Status}' kraken 2>/dev/null | grep -q "installed"; then
    fail "kraken is still installed"
fi
while read -r f; do
    # directories shared with other packages (/usr, /usr/bin, ...) stay; files must go
    if [ -e "$f" ] && [ ! -d "$f" ]; then fail "$f is still there after purge"; fi
done <"$tmp/files"
for d in /etc/kraken /usr/share/doc/kraken /var/log/kraken; do
    [ ! -e "$d" ] || fail "$d is still there after purge"
done
getent passwd kraken >/dev/null && fail "the kraken user is still there after purge"
getent group kraken >/dev/null && fail "the kraken group is still there after purge"
step "ok"
