#!/bin/sh
# Install the Debian packages Kraken needs to build, test and benchmark, if any is missing,
# and the Node.js client the tests run: after it, `ctest` runs every test (none is skipped
# for a missing tool). Safe to run again, and quiet when everything is there; needs root
# (apt-get) only when something is missing.
set -eu
# build: compiler, cmake, libraries; tests: Criterion, libmemcached, haproxy, redis-cli,
# redis-py, nats-server, ss (iproute2), headless Chromium (the status page), openssl (a
# certificate for the NATS TLS test), Node.js and npm (ioredis)
pkgs="build-essential cmake pkg-config libuv1-dev libck-dev liburcu-dev libjemalloc-dev
libinih-dev libxxhash-dev libcriterion-dev libmemcached-dev haproxy libmicrohttpd-dev redis-tools
python3 python3-redis nats-server libnats-dev iproute2 chromium openssl"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Node.js and npm: Debian's nodejs and npm, unless a node and an npm are there already (a
# Node.js from elsewhere brings its own npm and conflicts with Debian's)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing="$missing nodejs npm"
fi
if [ -n "$missing" ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing
fi
# The Node Redis client test_resp_server runs (ioredis, pinned by
# test/clients/node/package-lock.json).
here=$(cd "$(dirname "$0")/.." && pwd)
node_dir="$here/test/clients/node"
# (again when the lock file is newer than the installed tree)
if [ ! -f "$node_dir/node_modules/ioredis/package.json" ] ||
  [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]; then
  echo "installing test/clients/node (npm ci)"
  (cd "$node_dir" && npm ci --no-audit --no-fund --silent)
fi
