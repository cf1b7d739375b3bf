#!/bin/sh
# The man page printed by `kraken --help-man` (the build's kraken.1) names every key that
# `kraken --help` lists, says which keys are live exactly as the option table does, and is
# roff that man/groff format without a warning.
# Usage: test/scripts/man_page_test.sh KRAKEN_BINARY
set -eu
bin=$1
tmp=$(mktemp -d /tmp/kraken-man-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "man_page_test: FAIL: $*" >&2; exit 1; }

"$bin" --help >"$tmp/help" || fail "kraken --help exited $?"
"$bin" --help-man >"$tmp/kraken.1" || fail "kraken --help-man exited $?"
grep -q '^\.TH KRAKEN 1 ' "$tmp/kraken.1" || fail "no .TH KRAKEN 1 header"

# keys: the lines of --help after "Keys:" that start with two spaces and a name
sed -n '/^Keys:$/,$p' "$tmp/help" | sed -n 's/^  \([a-z_][a-z0-9_]*\) (.*/\1/p' >"$tmp/keys"
nkeys=$(wc -l <"$tmp/keys")
[ "$nkeys" -ge 20 ] || fail "only $nkeys keys found in --help"
while read -r k; do
    # each key is a tagged paragraph: \fBkey\fR (type; default ...)
    grep -q "^\\\\fB$(printf '%s' "$k" | sed 's/-/\\\\-/g')\\\\fR (" "$tmp/kraken.1" ||
        fail "key '$k' from --help is not in the man page"
done <"$tmp/keys"
nman=$(grep -c '^\\fB[a-z_0-9]*\\fR (' "$tmp/kraken.1")
[ "$nman" -eq "$nkeys" ] || fail "man page lists $nman keys, --help $nkeys"

# every subcommand of --help has its paragraph
sed -n '/^Subcommands/,/^$/p' "$tmp/help" | sed -n 's/^  \([a-z_]*\).*/\1/p' >"$tmp/subs"
[ "$(wc -l <"$tmp/subs")" -ge 5 ] || fail "subcommands not found in --help"
while read -r s; do
    grep -q "^\\\\fB$s[\\\\ ]" "$tmp/kraken.1" || fail "subcommand '$s' is not in the man page"
done <"$tmp/subs"

# live keys: the ones `admin config set` accepts are marked live in the page
for k in max_tcp_clients log_level; do
    grep "^\\\\fB$k\\\\fR (" "$tmp/kraken.1" | grep -q 'live' || fail "$k not marked live"
done
grep "^\\\\fBtcp_server_port\\\\fR (" "$tmp/kraken.1" | grep -q 'live' && fail "tcp_server_port marked live"

# well-formed roff: groff (man-db's formatter) reports nothing with every warning on
if command -v groff >/dev/null 2>&1; then
    LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z "$tmp/kraken.1" 2>"$tmp/groff.err" || fail "groff failed"
    [ ! -s "$tmp/groff.err" ] || { cat "$tmp/groff.err" >&2; fail "groff warnings"; }
    # the page as a reader sees it shows the keys' text, not roff escapes
    LC_ALL=C.UTF-8 groff -man -Tutf8 "$tmp/kraken.1" 2>/dev/null | sed 's/.\x08//g' >"$tmp/page"
    grep -q 'drain_timeout_ms' "$tmp/page" || fail "rendered page lacks drain_timeout_ms"
    grep -q '\\f[BRI]' "$tmp/page" && fail "rendered page shows font escapes"
fi
echo "man_page_test: ok ($nkeys keys)"
