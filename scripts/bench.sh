#!/usr/bin/env bash
# The benchmark report: meshcache against the performance targets of
# docs/design.md ("Performance targets"), with redis-server as the
# baseline, in one run.
#
#   scripts/bench.sh            full run (about 10 minutes on 2 cores)
#   scripts/bench.sh --quick    tiny sizes: validates the harness in seconds
#   scripts/bench.sh --only 1,2 only these row groups (see BENCHMARKS.md)
#   scripts/bench.sh --out DIR  results in DIR rather than bench/results
#
# Installs redis-server and redis-tools when missing (apt-get), starts on
# loopback with fixed ports:
#   16379  standalone redis-server (throughput and memory baselines)
#   16380  redis primary, 16381 and 16382 its replicas (--replicaof): the
#          baseline for a peer that replicates to two others (throughput
#          and lag)
#   16390-16392  RESP ports of embedded meshcache peers (rows 8 and 11)
# builds and runs meshbench (the workspace member `meshbench/`, built
# under $CARGO_TARGET_DIR or target/; rows 1, 2 and 9 also run the
# meshcache command built beside it, as nodes on ports the system
# picks), and stops everything at the end, even on failure.
# Results: bench/results/latest.json and latest.svg (quick.json and
# quick.svg with --quick, git-ignored).
#
# MESHBENCH_BIN=path runs that meshbench instead of the one built, and
# MESHCACHE_BIN=path that meshcache command (to compare two builds).
set -euo pipefail

cd "$(dirname "$0")/.."

REDIS_PORT=16379
PRIMARY_PORT=16380
REPLICA_PORT=16381
REPLICA2_PORT=16382
RESP_BASE=16390
OUT=bench/results

command_line="scripts/bench.sh${*:+ $*}"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help)
            sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        --out)
            OUT=${2:?--out needs a directory}
            shift
            ;;
        --out=*) OUT=${1#--out=} ;;
        *) args+=("$1") ;;
    esac
    shift
done

need_install=0
for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null 2>&1 || need_install=1
done
if [ "$need_install" = 1 ]; then
    echo "bench: installing redis-server and redis-tools" >&2
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools >/dev/null
fi

for port in "$REDIS_PORT" "$PRIMARY_PORT" "$REPLICA_PORT" "$REPLICA2_PORT" "$RESP_BASE" "$((RESP_BASE + 1))" "$((RESP_BASE + 2))"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "bench: port $port on 127.0.0.1 is already in use; stop what holds it" >&2
        exit 1
    fi
done

work=$(mktemp -d)
pids=()
cleanup() {
    local rc=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_redis() { # port [extra args...]
    local port=$1
    shift
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$work" --logfile "$work/redis-$port.log" --dbfilename "dump-$port.rdb" "$@" &
    pids+=($!)
    for _ in $(seq 100); do
        if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then return 0; fi
        sleep 0.05
    done
    echo "bench: redis-server on $port did not start:" >&2
    cat "$work/redis-$port.log" >&2
    return 1
}

start_redis "$REDIS_PORT"
start_redis "$PRIMARY_PORT"
for port in "$REPLICA_PORT" "$REPLICA2_PORT"; do
    start_redis "$port" --replicaof 127.0.0.1 "$PRIMARY_PORT"
done
for port in "$REPLICA_PORT" "$REPLICA2_PORT"; do
    for _ in $(seq 200); do
        if redis-cli -p "$port" info replication | grep -q 'master_link_status:up'; then break; fi
        sleep 0.05
    done
    redis-cli -p "$port" info replication | grep -q 'master_link_status:up' || {
        echo "bench: the redis replica on $port did not connect to its primary" >&2
        exit 1
    }
done

# Where cargo puts what it builds (CARGO_TARGET_DIR, relative to the
# repository as cargo takes it here).
target_dir=${CARGO_TARGET_DIR:-target}
# Rows 1, 2 and 9 run the `meshcache` command itself, as processes. Both
# are built in one invocation, with the crate's features resolved once.
cargo build --release -p meshcache -p meshbench --bin meshcache --bin meshbench
bin=${MESHBENCH_BIN:-$target_dir/release/meshbench}

mkdir -p "$OUT"
"$bin" --out "$OUT" --redis "127.0.0.1:$REDIS_PORT" \
    --redis-primary "127.0.0.1:$PRIMARY_PORT" --redis-replica "127.0.0.1:$REPLICA_PORT" \
    --resp-base "$RESP_BASE" --meshcache "${MESHCACHE_BIN:-$target_dir/release/meshcache}" --command "$command_line" ${args[@]+"${args[@]}"}
