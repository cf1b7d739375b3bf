#!/bin/sh
# Install the Debian packages Kraken needs to build, test and benchmark, if any is missing.
# Safe to run again; needs root (apt-get) only when something is missing.
set -eu
pkgs="build-essential cmake pkg-config libuv1-dev libck-dev liburcu-dev libjemalloc-dev
libinih-dev libxxhash-dev libcriterion-dev libmemcached-dev haproxy libmicrohttpd-dev redis-tools
python3-redis nats-server libnats-dev"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing
fi
# The Node Redis client the RESP tests run (ioredis, pinned by test/clients/node/package-lock.json),
# where Node.js is installed (without it that test says it is skipped).
here=$(cd "$(dirname "$0")/.." && pwd)
if command -v npm >/dev/null 2>&1 && [ ! -f "$here/test/clients/node/node_modules/ioredis/package.json" ]; then
  echo "installing test/clients/node (npm ci)"
  (cd "$here/test/clients/node" && npm ci --no-audit --no-fund --silent)
fi
