#!/usr/bin/env bash
# Eviction stays local, shown with two real peers on loopback: `s` has no
# memory bound, `t` has 16 MiB. redis-benchmark writes N random keys (about
# N distinct, 100-byte values) on `s`; then, every 10 s for a minute, the
# script prints what each peer holds, `t`'s memory against its bound, and
# the anti-entropy bytes each has sent. Expected: `s` keeps every key
# (DBSIZE equal to the distinct keys written, plus one written before the
# load), `t` stays within its bound with no compaction, and once eviction
# settles each idle anti-entropy round costs about the in-sync figure
# (~125 bytes), so the byte counters barely move.
#
# Usage: scripts/eviction-local.sh [N]   (default 2,400,000; needs a release
# build, redis-benchmark, redis-cli and curl)
set -euo pipefail
N=${1:-2400000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "$ROOT" && cd "${CARGO_TARGET_DIR:-target}" 2>/dev/null && pwd)/release/meshcache
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
for t in redis-benchmark redis-cli curl; do
    command -v $t >/dev/null || { echo "$t is needed" >&2; exit 1; }
done
D=$(mktemp -d)
trap 'kill $(cat "$D"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$D"' EXIT
"$BIN" certs init --dir "$D/certs" >/dev/null
for n in s t; do "$BIN" certs issue $n --dir "$D/certs" --ip 127.0.0.1 >/dev/null; done
start() {
    local n=$1
    shift
    "$BIN" node --name "$n" --listen 127.0.0.1:0 --certs "$D/certs" --resp 127.0.0.1:0 --admin off \
        --metrics 127.0.0.1:0 --addr-file "$D/$n.addr" "$@" >"$D/$n.log" 2>&1 &
    echo $! >"$D/$n.pid"
    for _ in $(seq 100); do [ -s "$D/$n.addr" ] && return; sleep 0.2; done
    echo "$n did not start: $(cat "$D/$n.log")" >&2
    exit 1
}
addr() { awk -v k="$2" '$1 == k { print $2 }' "$D/$1.addr"; }
start s
start t --seed "$(addr s quic)" --max-bytes 16M
sleep 3
SR=$(addr s resp); TR=$(addr t resp)
redis-cli -u "redis://$SR" set written-before kept >/dev/null
redis-benchmark -h "${SR%:*}" -p "${SR##*:}" -t set -n "$N" -r 100000000 -d 100 -P 16 -q | tr '\r' '\n' | tail -1
metric() { curl -s "http://$(addr "$1" metrics)/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }
for i in 1 2 3 4 5 6; do
    sleep 10
    echo "--- $((i * 10)) s after the load"
    echo "s: dbsize $(redis-cli -u "redis://$SR" dbsize), written-before=$(redis-cli -u "redis://$SR" get written-before)," \
        "anti-entropy bytes sent $(metric s meshcache_ae_bytes_sent_total) in $(metric s meshcache_ae_rounds_total) rounds"
    echo "t: dbsize $(redis-cli -u "redis://$TR" dbsize), $(redis-cli -u "redis://$TR" info memory | tr -d '\r' |
        grep -E '^(used_memory|maxmemory):' | tr '\n' ' ')stubs $(metric t meshcache_stubs)," \
        "compactions $(metric t meshcache_compactions), anti-entropy bytes sent $(metric t meshcache_ae_bytes_sent_total)"
done
