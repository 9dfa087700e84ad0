#!/usr/bin/env bash
# Partition test on real processes and a real (virtual) network.
#
# Starts PEERS meshcache nodes (default 3: a, b, c), each in its own network
# namespace, joined by a Linux bridge that lives in one more namespace of its
# own; drives them through their Redis-protocol ports with redis-cli; cuts
# peer c off the bridge, writes, overwrites and deletes on both sides of the
# cut (the same keys on both sides, too), waits well past the 3 s idle
# timeout, heals the cut and checks that every peer converges to the same,
# expected keyspace. Prints PASS or FAIL with timings; exits non-zero on FAIL.
#
# Needs root (network namespaces). Run as any other user, it prints
# "skipped: netns-partition.sh needs root" and exits 0, so CI may run it
# unconditionally.
#
# The network: namespaces "mcpart-<pid>-<random>-{br,a,b,c,...}". The bridge
# br0 is in the "-br" namespace; each peer's namespace holds eth0 (one end of
# a veth pair, address 10.213.0.N/24) whose other end, v-NAME, is a port of
# br0. Nothing is added to the host's namespace: the veth pairs are created
# directly inside the test namespaces, the addresses exist only there, and
# there is no default route, so no traffic can leave them.
#
# The cut: `ip link set v-c down` on the bridge side. Peer c keeps its
# address (eth0 just loses carrier), so it still serves its own clients,
# while every packet between c and the others is dropped, with no error
# returned to either side -- what a pulled cable does.
#
# Cleanup (on every exit, including failure, Ctrl-C and SIGTERM): every
# process inside the test namespaces gets SIGTERM, then SIGKILL; the
# namespaces are deleted (which deletes the bridge and the veths in them);
# the temp dir (certificates, logs) is removed. It only touches names with
# this run's unique prefix and is safe to run twice.
#
# Environment:
#   MESHCACHE_BIN   use this binary instead of `cargo build --release`
#   PEERS           number of peers, 3..9 (default 3); c is the one cut off
#   KEYS            keys written per peer per phase (default 10)
#   CUT_SECS        how long the cut lasts (default 8; the idle timeout is 3)
#   CONVERGE_SECS   deadline for convergence after the heal (default 60)
#   FORCE_FAIL=1    SIGKILL peer b at the heal, to exercise the FAIL path
#                   and the cleanup
#   LOG_DIR         copy the peers' logs (NAME.log) into this directory
#                   before cleaning up (by default they are only tailed on
#                   FAIL, then removed with the temp dir)
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "skipped: netns-partition.sh needs root"
    exit 0
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-3}
KEYS=${KEYS:-10}
CUT_SECS=${CUT_SECS:-8}
CONVERGE_SECS=${CONVERGE_SECS:-60}
FORCE_FAIL=${FORCE_FAIL:-0}

for v in PEERS KEYS CUT_SECS CONVERGE_SECS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
        echo "netns-partition.sh: $v must be a whole number, got '${!v}'" >&2
        exit 2
    fi
done
if [ "$PEERS" -lt 3 ] || [ "$PEERS" -gt 9 ]; then
    echo "netns-partition.sh: PEERS must be 3..9, got $PEERS" >&2
    exit 2
fi
if [ "$KEYS" -lt 2 ] || [ "$KEYS" -gt 200 ]; then
    echo "netns-partition.sh: KEYS must be 2..200, got $KEYS" >&2
    exit 2
fi
if [ "$CUT_SECS" -lt 5 ]; then
    echo "netns-partition.sh: CUT_SECS must be at least 5 (well past the 3 s idle timeout)" >&2
    exit 2
fi

ALL_NAMES=(a b c d e f g h i)
NAMES=("${ALL_NAMES[@]:0:PEERS}")
CUT=c                       # the peer cut off
SUBNET=10.213.0             # a /24 that exists only inside our namespaces
QUIC_PORT=7000
RESP_PORT=6380
PREFIX="mcpart-$$-$RANDOM"  # every namespace this run creates starts with "$PREFIX-"
BRNS="$PREFIX-br"
TMP=""
CLEANED=0
FAILED_AT=""
T0=$(date +%s%3N)

now_ms() { date +%s%3N; }
log() {
    local t=$(($(now_ms) - T0))
    printf '[%4d.%03ds] %s\n' $((t / 1000)) $((t % 1000)) "$*"
}
ns_of() { echo "$PREFIX-$1"; }
addr_of() {
    local i
    for i in "${!NAMES[@]}"; do
        if [ "${NAMES[$i]}" = "$1" ]; then
            echo "$SUBNET.$((i + 1))"
            return
        fi
    done
    echo "unknown peer $1" >&2
    return 1
}

# Namespaces of this run (by prefix), whatever state the run got to.
our_namespaces() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX}-" || true
}

# Pids of every process inside this run's namespaces.
our_pids() {
    local ns
    for ns in $(our_namespaces); do
        ip netns pids "$ns" 2>/dev/null || true
    done
}

show_logs() {
    [ -n "$TMP" ] && [ -d "$TMP" ] || return 0
    local n
    for n in "${NAMES[@]}"; do
        if [ -f "$TMP/$n.log" ]; then
            echo "---- last lines of peer $n's log ----" >&2
            tail -n 15 "$TMP/$n.log" >&2 || true
        fi
    done
}

cleanup() {
    local rc=$?
    if [ "$CLEANED" = 1 ]; then
        return 0
    fi
    CLEANED=1
    set +e
    if [ "$rc" != 0 ] && [ -z "$FAILED_AT" ]; then
        # An unexpected error (set -e) or a signal: still say FAIL.
        FAILED_AT="exit status $rc (see above)"
        echo "FAIL: netns-partition ($PEERS peers): $FAILED_AT"
    fi
    trap "" INT TERM # a second Ctrl-C must not cut the cleanup short (it is bounded)
    local pids i ns
    pids=$(our_pids)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086 # one pid per word
        kill -TERM $pids 2>/dev/null
        for ((i = 0; i < 50; i++)); do # at most 5 s for a graceful goodbye
            [ -z "$(our_pids)" ] && break
            sleep 0.1
        done
        pids=$(our_pids)
        # shellcheck disable=SC2086
        [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
        for ((i = 0; i < 50; i++)); do
            [ -z "$(our_pids)" ] && break
            sleep 0.1
        done
    fi
    for ns in $(our_namespaces); do
        ip netns del "$ns" 2>/dev/null || echo "cleanup: could not delete namespace $ns" >&2
    done
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ -n "${LOG_DIR:-}" ]; then
            mkdir -p -- "$LOG_DIR" && cp -- "$TMP"/*.log "$LOG_DIR"/ 2>/dev/null &&
                echo "logs copied to $LOG_DIR" >&2
        fi
        rm -rf -- "$TMP"
    fi
    if [ -n "$(our_namespaces)" ]; then
        echo "cleanup: namespaces left behind: $(our_namespaces | tr '\n' ' ')" >&2
        [ "$rc" = 0 ] && rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "terminated" >&2; exit 143' TERM

fail() {
    FAILED_AT="$*"
    echo "FAIL: netns-partition: $*" >&2
    show_logs
    local t=$(($(now_ms) - T0))
    echo "FAIL: netns-partition ($PEERS peers) after $((t / 1000)).$(printf %03d $((t % 1000)))s: $FAILED_AT"
    exit 1
}

# ---- prerequisites -----------------------------------------------------

for tool in ip timeout; do
    command -v "$tool" >/dev/null 2>&1 || fail "'$tool' is missing"
done
if ! command -v redis-cli >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || fail "redis-cli is missing and apt-get is not available"
    log "installing redis-tools (for redis-cli)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null; } ||
        fail "could not install redis-tools"
    command -v redis-cli >/dev/null 2>&1 || fail "redis-cli is still missing after installing redis-tools"
fi

if [ -n "${MESHCACHE_BIN:-}" ]; then
    BIN=$MESHCACHE_BIN
else
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release) || fail "cargo build --release failed"
    BIN=$(cd "$ROOT" && cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/meshcache
fi
[ -x "$BIN" ] || fail "no executable meshcache at $BIN"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

TMP=$(mktemp -d "${TMPDIR:-/tmp}/$PREFIX.XXXXXX")

# ---- network -----------------------------------------------------------

log "network: namespaces $PREFIX-{br,$(IFS=,; echo "${NAMES[*]}")}, bridge br0 in $BRNS, $SUBNET.0/24"
ip netns add "$BRNS"
ip -n "$BRNS" link set lo up
ip -n "$BRNS" link add br0 type bridge
ip -n "$BRNS" link set br0 up
for n in "${NAMES[@]}"; do
    ns=$(ns_of "$n")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Created inside the bridge namespace, one end moved straight into the
    # peer's: neither end ever exists in the host's namespace.
    ip -n "$BRNS" link add "v-$n" type veth peer name eth0 netns "$ns"
    ip -n "$BRNS" link set "v-$n" master br0
    ip -n "$BRNS" link set "v-$n" up
    ip -n "$ns" addr add "$(addr_of "$n")/24" dev eth0
    ip -n "$ns" link set eth0 up
done

# ---- certificates and peers ---------------------------------------------

"$BIN" certs init --dir "$TMP/certs" >/dev/null || fail "meshcache certs init failed"
for n in "${NAMES[@]}"; do
    "$BIN" certs issue "$n" --dir "$TMP/certs" --ip "$(addr_of "$n")" >/dev/null ||
        fail "meshcache certs issue $n failed"
done

SEED="$(addr_of a):$QUIC_PORT"
for n in "${NAMES[@]}"; do
    a=$(addr_of "$n")
    seed_args=()
    [ "$n" != a ] && seed_args=(--seed "$SEED")
    RUST_LOG=${RUST_LOG:-info} ip netns exec "$(ns_of "$n")" "$BIN" node --name "$n" \
        --listen "$a:$QUIC_PORT" "${seed_args[@]}" --certs "$TMP/certs" \
        --resp "$a:$RESP_PORT" --admin off </dev/null >"$TMP/$n.log" 2>&1 &
done
log "started ${#NAMES[@]} peers; logs in $TMP"

# redis-cli inside peer $1's namespace against its own address; bounded.
rcli() {
    local n=$1
    shift
    timeout 10 ip netns exec "$(ns_of "$n")" redis-cli -h "$(addr_of "$n")" -p "$RESP_PORT" "$@"
}

peer_alive() { [ -n "$(ip netns pids "$(ns_of "$1")" 2>/dev/null)" ]; }
check_alive() {
    local n
    for n in "${NAMES[@]}"; do
        peer_alive "$n" || fail "peer $n exited ($*)"
    done
}

# Sends the commands (one per argument) to peer $1 in one connection; every
# SET must answer OK and every DEL an integer.
send() {
    local n=$1
    shift
    local out replies i
    out=$(printf '%s\n' "$@" | rcli "$n" 2>&1) || fail "redis-cli on $n failed: $out"
    mapfile -t replies <<<"$out"
    [ "${#replies[@]}" = "$#" ] || fail "peer $n: $# commands but ${#replies[@]} replies: $out"
    i=0
    for cmd in "$@"; do
        case "$cmd" in
        SET*) [ "${replies[$i]}" = OK ] || fail "peer $n: '$cmd' answered '${replies[$i]}'" ;;
        DEL*) [[ ${replies[$i]} =~ ^[0-9]+$ ]] || fail "peer $n: '$cmd' answered '${replies[$i]}'" ;;
        esac
        i=$((i + 1))
    done
}

# Readiness: PONG, then a write accepted (a seeded peer answers LOADING
# until it has synced with a seed).
for n in "${NAMES[@]}"; do
    ok=0
    for ((i = 0; i < 150; i++)); do # 150 x 0.2 s
        peer_alive "$n" || fail "peer $n exited during startup"
        if [ "$(rcli "$n" SET "ready:$n" 1 2>/dev/null)" = OK ]; then
            ok=1
            break
        fi
        sleep 0.2
    done
    [ "$ok" = 1 ] || fail "peer $n did not accept writes within 30 s"
done
log "all peers accept writes"

# ---- the expected keyspace -----------------------------------------------

declare -A WANT=() # key -> expected value; "" means absent everywhere
ORDER=()           # every key ever touched, in a fixed order
want() {
    [ -n "${WANT[$1]+x}" ] || ORDER+=("$1")
    WANT[$1]=$2
}
for n in "${NAMES[@]}"; do want "ready:$n" 1; done

# Reads every key in ORDER plus DBSIZE from peer $1: one line per key
# (empty for absent), then the live key count.
snapshot() {
    local out
    out=$({ printf 'MGET'; printf ' %s' "${ORDER[@]}"; printf '\nDBSIZE\n'; } | rcli "$1" 2>/dev/null) || return 1
    printf '%s\n' "$out"
}
expected() {
    local k live=0
    for k in "${ORDER[@]}"; do
        printf '%s\n' "${WANT[$k]}"
        [ -n "${WANT[$k]}" ] && live=$((live + 1))
    done
    echo "$live"
}

# Polls until every peer's snapshot equals the expected one, for at most
# $1 seconds; on success sets CONV_MS to how long it took.
CONV_MS=0
converge() {
    local deadline_s=$1 what=$2 start want_s n all i
    start=$(now_ms)
    want_s=$(expected)
    for ((i = 0; i < deadline_s * 10; i++)); do # polls every ~0.1 s
        check_alive "while waiting for $what"
        all=1
        for n in "${NAMES[@]}"; do
            if [ "$(snapshot "$n")" != "$want_s" ]; then
                all=0
                break
            fi
        done
        if [ "$all" = 1 ]; then
            CONV_MS=$(($(now_ms) - start))
            return 0
        fi
        [ $(($(now_ms) - start)) -ge $((deadline_s * 1000)) ] && break
        sleep 0.1
    done
    # Say what differs, per peer (first few keys).
    for n in "${NAMES[@]}"; do
        local got shown=0 j=0 k
        mapfile -t got < <(snapshot "$n" || true)
        for k in "${ORDER[@]}"; do
            if [ "${got[$j]-<no reply>}" != "${WANT[$k]}" ] && [ "$shown" -lt 5 ]; then
                echo "  peer $n: $k = '${got[$j]-<no reply>}', want '${WANT[$k]:-<absent>}'" >&2
                shown=$((shown + 1))
            fi
            j=$((j + 1))
        done
        echo "  peer $n: DBSIZE ${got[$j]-<no reply>}, want $(expected | tail -n 1)" >&2
    done
    return 1
}

fmt_ms() { printf '%d.%03ds' $(($1 / 1000)) $(($1 % 1000)); }

# ---- phase 1: connected --------------------------------------------------

for n in "${NAMES[@]}"; do
    cmds=()
    for ((j = 1; j <= KEYS; j++)); do
        cmds+=("SET pre:$n:$j v1-$n-$j")
        want "pre:$n:$j" "v1-$n-$j"
    done
    for ((j = 1; j <= 4; j++)); do # targets of delete-vs-write during the cut
        cmds+=("SET dw:$n:$j v1-$n-$j")
        want "dw:$n:$j" "v1-$n-$j"
    done
    send "$n" "${cmds[@]}"
done
log "phase 1: each peer wrote $((KEYS + 4)) keys; waiting for every peer to see all"
converge 30 "initial replication" || fail "the connected mesh did not replicate within 30 s"
T_INITIAL=$CONV_MS
log "phase 1: replicated everywhere in $(fmt_ms "$T_INITIAL")"

# ---- phase 2: the cut ----------------------------------------------------

ip -n "$BRNS" link set "v-$CUT" down
T_CUT=$(now_ms)
OTHERS=()
for n in "${NAMES[@]}"; do [ "$n" = "$CUT" ] || OTHERS+=("$n"); done
log "cut: v-$CUT down; $CUT is alone, ${OTHERS[*]} on the other side (writes there go to a and b)"

# Round A, at once (pushes already in flight into the black hole).
# conf:j   conflicting writes: round A writes it on one side, round B on
#          the other; the later write must win everywhere.
# dw:*:j   written in phase 1; deleted on one side in round A, rewritten on
#          the other in round B: the rewrite must win.
# wd:j     written on one side in round A, deleted on the other in round B
#          (by a peer that never saw it): absent everywhere.
# del:     phase-1 keys deleted during the cut, from either side.
# cut:N:j  new keys written on each side.
rA_maj=()
rA_cut=()
rB_maj=()
rB_cut=()
for ((j = 1; j <= KEYS; j++)); do
    if ((j % 2)); then
        rA_cut+=("SET conf:$j A-$CUT-$j")
        rB_maj+=("SET conf:$j B-b-$j")
        want "conf:$j" "B-b-$j"
        rA_cut+=("SET wd:$j A-$CUT-$j")
        rB_maj+=("DEL wd:$j")
    else
        rA_maj+=("SET conf:$j A-a-$j")
        rB_cut+=("SET conf:$j B-$CUT-$j")
        want "conf:$j" "B-$CUT-$j"
        rA_maj+=("SET wd:$j A-a-$j")
        rB_cut+=("DEL wd:$j")
    fi
    want "wd:$j" ""
    rA_maj+=("SET cut:a:$j A-a-$j")
    want "cut:a:$j" "A-a-$j"
    rB_maj+=("SET cut:b:$j B-b-$j")
    want "cut:b:$j" "B-b-$j"
    rA_cut+=("SET cut:$CUT:$j A-$CUT-$j")
    want "cut:$CUT:$j" "A-$CUT-$j"
done
for ((j = 1; j <= 4; j++)); do
    # dw:a:j deleted by the cut peer, rewritten by a; dw:c:j the other way.
    rA_cut+=("DEL dw:a:$j")
    rB_maj+=("SET dw:a:$j B-b-$j")
    want "dw:a:$j" "B-b-$j"
    rA_maj+=("DEL dw:$CUT:$j")
    rB_cut+=("SET dw:$CUT:$j B-$CUT-$j")
    want "dw:$CUT:$j" "B-$CUT-$j"
done
# Plain deletes of phase-1 keys, from both sides, including keys of the
# other side.
rA_cut+=("DEL pre:a:1" "DEL pre:b:1")
rA_maj+=("DEL pre:$CUT:1" "DEL pre:$CUT:2")
rB_maj+=("DEL pre:b:2")
rB_cut+=("DEL pre:$CUT:3")
for k in pre:a:1 pre:b:1 "pre:$CUT:1" "pre:$CUT:2" pre:b:2 "pre:$CUT:3"; do want "$k" ""; done

send a "${rA_maj[@]}"
send "$CUT" "${rA_cut[@]}"
log "cut: round A written on both sides (${#rA_maj[@]} + ${#rA_cut[@]} commands)"

# The cut must be real: round A must not cross it.
sleep 1
[ -n "$(rcli a GET "cut:$CUT:1" 2>/dev/null)" ] && fail "a sees a write made on $CUT during the cut: the cut does not cut"
[ -n "$(rcli "$CUT" GET cut:a:1 2>/dev/null)" ] && fail "$CUT sees a write made on a during the cut: the cut does not cut"

# Round B once the idle timeout (3 s) has long passed: each side has given
# the other up by then.
sleep_until() { # $1 = ms since the cut
    local left=$(($1 - ($(now_ms) - T_CUT)))
    [ "$left" -gt 0 ] && sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"
    return 0
}
sleep_until $((CUT_SECS * 1000 / 2 > 4500 ? CUT_SECS * 1000 / 2 : 4500))
check_alive "during the cut"
send b "${rB_maj[@]}"
send "$CUT" "${rB_cut[@]}"
log "cut: round B written on both sides (${#rB_maj[@]} + ${#rB_cut[@]} commands)"
[ -n "$(rcli a GET "conf:2" 2>/dev/null | grep "B-$CUT" || true)" ] && fail "a sees round B of $CUT during the cut"
# Informational only (log wording is not an interface): did the idle
# timeout fire on the majority side?
if grep -q "peer disconnected peer=$CUT#.*timed out" "$TMP/a.log" 2>/dev/null; then
    log "cut: a's log shows $CUT timed out (idle timeout)"
else
    log "note: a's log shows no idle-timeout disconnect of $CUT yet"
fi
sleep_until $((CUT_SECS * 1000))

# ---- phase 3: heal -------------------------------------------------------

ip -n "$BRNS" link set "v-$CUT" up
T_HEAL=$(now_ms)
log "heal: v-$CUT up after $(fmt_ms $((T_HEAL - T_CUT))) cut off"
if [ "$FORCE_FAIL" = 1 ]; then
    log "FORCE_FAIL=1: killing peer b"
    # shellcheck disable=SC2046
    kill -KILL $(ip netns pids "$(ns_of b)") 2>/dev/null || true
fi
converge "$CONVERGE_SECS" "convergence after the heal" ||
    fail "no convergence within ${CONVERGE_SECS}s of the heal"
T_CONV=$CONV_MS
LIVE=$(expected | tail -n 1)
log "healed: all ${#NAMES[@]} peers agree on ${#ORDER[@]} keys ($LIVE live, $((${#ORDER[@]} - LIVE)) deleted)"

TOTAL=$(($(now_ms) - T0))
echo "PASS: netns-partition ($PEERS peers, $CUT cut off for $(fmt_ms $((T_HEAL - T_CUT)))):" \
    "initial replication $(fmt_ms "$T_INITIAL"), heal to convergence $(fmt_ms "$T_CONV"), total $(fmt_ms "$TOTAL")"
