#!/usr/bin/env bash
# Side-by-side TURN relay benchmark: our turn-server and coturn's turnserver, same load, same
# machine, one run. First the reflection amplification factor of unauthenticated UDP requests
# (`turn-bench amplification`), then the relay runs at fixed rates, then (FIND_MAX=1) each
# server's highest rate with loss under MAX_LOSS %. Prints figures; asserts nothing.
#
# Servers (SERVERS):
#   turnkey         our turn-server (TURN_SERVER)
#   turnkey-mux     our turn-server in its multiplexed relay mode (--relay-multiplex 1: one
#                   shared relay socket per worker, peers told apart by address; like
#                   coturn-new-mux it needs PEERS=generator)
#   base            a second turn-server build (TURN_SERVER_BASE), for before/after
#   coturn          the `turnserver` on PATH (Debian's coturn 4.6.1 here)
#   coturn-new      coturn built from source (COTURN_NEWEST, scripts/build-coturn.sh), default
#                   flags plus --udp-recvmmsg where the build has it
#   coturn-new-mux  the same with --multiplex-peer (one shared relay socket per relay thread,
#                   sendmmsg batching) and --udp-gso where the build has them. It tells
#                   allocations apart by the peer's address, so it needs PEERS=generator (with
#                   paired allocations every peer is one of its few shared relay addresses and
#                   it answers CreatePermission with 400)
#   floor           `turn-bench floor`: a bare batched UDP forwarder (no auth, no state but the
#                   relay table), a relay socket per allocation as in standard TURN: the
#                   physical floor of what such a relay can cost
#   floor-shared    the same with one relay socket for all allocations, peers told apart by
#                   address (turn-bench floor --shared-relay; like --multiplex-peer, needs
#                   PEERS=generator)
#   xdp             our turn-server (TURN_SERVER) with its XDP fast path on both server veths
#                   (--xdp, XDP_MODE=generic or native; TOPOLOGY=netns only). Native mode on
#                   veth needs an XDP program on the far ends too: the script attaches one that
#                   passes everything (compiled with clang), which then runs for every server.
#                   IP forwarding is turned on in the server ns (bpf_fib_lookup needs it).
# Ratios in the summaries are to coturn-new when it ran, else to coturn.
#
# TOPOLOGY=loopback (default): everything listens on 127.0.0.1 only. TOPOLOGY=netns (root):
# three network namespaces joined by veth pairs, documentation addresses only:
#   client ns 192.0.2.2 --veth-- 192.0.2.1 server ns 198.51.100.1 --veth-- 198.51.100.2 peer ns
# the servers run in the server ns (listening on 192.0.2.1, relaying from 198.51.100.1), the
# generator in the client ns, and with PEERS=generator its peer sockets are made in the peer
# ns (turn-bench --peer-netns). Traffic then crosses the veth pairs (and their softirq work)
# instead of loopback; the client and peer ends have checksum offload off (full checksums, as
# from a wire). The namespaces are deleted on exit. All servers are stopped on exit.
#
# Usage: scripts/bench-vs-coturn.sh
# Environment (all optional):
#   RATES="20000 50000 100000"  offered packets/s, all allocations together
#   DURATION=5 WARMUP=1         seconds per run (measured, and unmeasured before it)
#   ALLOCATIONS=20 SIZE=160     allocations (even) and payload bytes
#   THREADS=1                   generator threads
#   TRANSPORT=udp               udp or tcp (client to server; relay is UDP)
#   PEERS=                      turn-bench --peers for every server: pair (allocations relay to
#                               each other, 2 relay hops per packet) or generator (a peer socket
#                               per allocation, 1 hop); default generator when coturn-new-mux
#                               runs, else pair
#   SERVERS="turnkey coturn"    which servers to run, in this order (names above); default adds
#                               coturn-new, coturn-new-mux, floor and floor-shared when
#                               COTURN_NEWEST is set
#   COTURN_NEWEST=              coturn built from source, e.g. /opt/coturn-newest/bin/turnserver
#   FIND_MAX=1                  also search each server's highest rate with loss < MAX_LOSS %
#   MAX_LOSS=0.1 MAX_SECS=60    (turn-bench --find-max --max-loss --max-secs, per server per round;
#   MAX_START=20000             --rate is the search's start; MAX_DURATION=2 MAX_WARMUP=0.5 per step)
#   ROUNDS=1                    rounds over all rates and servers, alternating servers each time
#   TURN_SERVER_BASE=           a second turn-server binary (an older build) run as server "base"
#                               beside the first, for before/after comparisons in one run
#   WORKERS=                    --workers for turn-server / --relay-threads for coturn (default: each one's own)
#   PORT_BASE=                  first of the ports used (default: random in 20000-29000)
#   AMPLIFICATION=1 RELAY=1     set either to 0 to skip that part
#   TOPOLOGY=loopback           loopback or netns (see above)
#   NO_BUILD=1                  use the existing binaries
#   BENCH=, TURN_SERVER=        binaries to use (default: $CARGO_TARGET_DIR or target, release/)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

RATES=${RATES:-"20000 50000 100000"}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
ALLOCATIONS=${ALLOCATIONS:-20}
SIZE=${SIZE:-160}
THREADS=${THREADS:-1}
TRANSPORT=${TRANSPORT:-udp}
COTURN_NEWEST=${COTURN_NEWEST:-}
if [[ -n $COTURN_NEWEST ]]; then
    SERVERS=${SERVERS:-"turnkey turnkey-mux coturn coturn-new coturn-new-mux floor floor-shared"}
else
    SERVERS=${SERVERS:-"turnkey coturn"}
fi
if [[ -z ${PEERS:-} ]]; then
    if [[ " $SERVERS " == *"-mux "* ]]; then PEERS=generator; else PEERS=pair; fi
fi
FIND_MAX=${FIND_MAX:-1}
MAX_LOSS=${MAX_LOSS:-0.1}
MAX_SECS=${MAX_SECS:-60}
MAX_START=${MAX_START:-20000}
MAX_DURATION=${MAX_DURATION:-2}
MAX_WARMUP=${MAX_WARMUP:-0.5}
WORKERS=${WORKERS:-}
AMPLIFICATION=${AMPLIFICATION:-1}
RELAY=${RELAY:-1}
TOPOLOGY=${TOPOLOGY:-loopback}
IN_SERVER=() IN_CLIENT=() PEER_NETNS_ARGS=()
case $TOPOLOGY in
    loopback)
        # Generator peers on 127.0.0.2: a peer on the relay IP whose port falls in a server's
        # relay port range is refused as the server's own address (turn-server: 403).
        SERVER_IP=127.0.0.1 RELAY_IP=127.0.0.1 PEER_IP=127.0.0.2 PEER_NET=127.0.0.0/8 ;;
    netns)
        SERVER_IP=192.0.2.1 CLIENT_IP=192.0.2.2 RELAY_IP=198.51.100.1 PEER_IP=198.51.100.2
        PEER_NET=198.51.100.0/24
        NS_CLIENT=tkb-client-$$ NS_SERVER=tkb-server-$$ NS_PEER=tkb-peer-$$
        IN_SERVER=(ip netns exec "$NS_SERVER") IN_CLIENT=(ip netns exec "$NS_CLIENT")
        PEER_NETNS_ARGS=(--peer-netns "/run/netns/$NS_PEER") ;;
    *) echo "TOPOLOGY must be loopback or netns" >&2; exit 2 ;;
esac
# In the server's namespace (the host's for loopback).
port_busy() { "${IN_SERVER[@]}" ss -Hltun "sport = :$1" 2>/dev/null | grep -q .; }
# A base whose listener ports (base..base+2) are free, so no server shares a port by accident
# (coturn sets SO_REUSEPORT and would silently share one).
if [[ -z ${PORT_BASE:-} ]]; then
    for _ in $(seq 20); do
        PORT_BASE=$((20000 + (RANDOM % 900) * 10))
        busy=0
        for off in $(seq 0 29); do port_busy $((PORT_BASE + off)) && { busy=1; break; }; done
        ((busy)) || break
    done
fi

TURNKEY_PORT=$PORT_BASE
TURNKEY_METRICS=$((PORT_BASE + 1))
COTURN_PORT=$((PORT_BASE + 2))
BASE_PORT=$((PORT_BASE + 3))
BASE_METRICS=$((PORT_BASE + 4))
COTURN_NEW_PORT=$((PORT_BASE + 5))
COTURN_NEW_MUX_PORT=$((PORT_BASE + 6))
FLOOR_PORT=$((PORT_BASE + 7))
FLOOR_SHARED_PORT=$((PORT_BASE + 8))
XDP_PORT=$((PORT_BASE + 9))
XDP_METRICS=$((PORT_BASE + 19))
TURNKEY_MUX_PORT=$((PORT_BASE + 11))
TURNKEY_MUX_METRICS=$((PORT_BASE + 12))
XDP_MODE=${XDP_MODE:-generic}
# --multiplex-peer-port: relay thread i binds this + 2i (IPv4) and + 2i + 1 (IPv6).
MUX_RELAY_PORT=$((PORT_BASE + 20))
ROUNDS=${ROUNDS:-1}
# Relay port ranges, apart from each other and from the listeners (ports in use are skipped by
# both servers).
TURNKEY_MIN=$((PORT_BASE + 10000)); TURNKEY_MAX=$((TURNKEY_MIN + 999))
COTURN_MIN=$((TURNKEY_MAX + 1)); COTURN_MAX=$((COTURN_MIN + 999))
BASE_MIN=$((COTURN_MAX + 1)); BASE_MAX=$((BASE_MIN + 999))
COTURN_NEW_MIN=$((BASE_MAX + 1)); COTURN_NEW_MAX=$((COTURN_NEW_MIN + 999))
COTURN_NEW_MUX_MIN=$((COTURN_NEW_MAX + 1)); COTURN_NEW_MUX_MAX=$((COTURN_NEW_MUX_MIN + 999))
XDP_MIN=$((COTURN_NEW_MUX_MAX + 1)); XDP_MAX=$((XDP_MIN + 999))
TURNKEY_MUX_MIN=$((XDP_MAX + 1)); TURNKEY_MUX_MAX=$((TURNKEY_MUX_MIN + 999))

WORK=$(mktemp -d /tmp/bench-vs-coturn.XXXXXX)
RESULTS=$WORK/results.jsonl
MAXES=$WORK/max.jsonl
: >"$RESULTS"
: >"$MAXES"
declare -A PIDS=()

cleanup() {
    for name in "${!PIDS[@]}"; do
        kill "${PIDS[$name]}" 2>/dev/null || true
    done
    for name in "${!PIDS[@]}"; do
        wait "${PIDS[$name]}" 2>/dev/null || true
    done
    if [[ $TOPOLOGY == netns ]]; then
        # Deleting a namespace deletes its end of each veth pair, and so the pair.
        for ns in "$NS_CLIENT" "$NS_SERVER" "$NS_PEER"; do ip netns del "$ns" 2>/dev/null || true; done
    fi
    echo "logs and raw results: $WORK" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "== $*" >&2; }

wants() { [[ " $SERVERS " == *" $1 "* ]]; }

# client ns 192.0.2.2 <-> 192.0.2.1 server ns 198.51.100.1 <-> 198.51.100.2 peer ns
if [[ $TOPOLOGY == netns ]]; then
    log "netns topology: $NS_CLIENT $CLIENT_IP -- $SERVER_IP $NS_SERVER $RELAY_IP -- $PEER_IP $NS_PEER"
    for ns in "$NS_CLIENT" "$NS_SERVER" "$NS_PEER"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip link add "tkbc$$" netns "$NS_CLIENT" type veth peer name "tkbsc$$" netns "$NS_SERVER"
    ip link add "tkbp$$" netns "$NS_PEER" type veth peer name "tkbsp$$" netns "$NS_SERVER"
    ip -n "$NS_CLIENT" addr add "$CLIENT_IP/24" dev "tkbc$$"
    ip -n "$NS_SERVER" addr add "$SERVER_IP/24" dev "tkbsc$$"
    ip -n "$NS_SERVER" addr add "$RELAY_IP/24" dev "tkbsp$$"
    ip -n "$NS_PEER" addr add "$PEER_IP/24" dev "tkbp$$"
    for l in "$NS_CLIENT tkbc$$" "$NS_SERVER tkbsc$$" "$NS_SERVER tkbsp$$" "$NS_PEER tkbp$$"; do
        read -r ns dev <<<"$l"
        ip -n "$ns" link set "$dev" up
    done
    # The client and peer ends put full UDP checksums on their datagrams, as traffic from a
    # wire has: with checksum offload a same-host sender leaves them partial, which an XDP
    # program cannot complete (README, "XDP fast path").
    for l in "$NS_CLIENT tkbc$$" "$NS_PEER tkbp$$"; do
        read -r ns dev <<<"$l"
        ip netns exec "$ns" ethtool -K "$dev" tx off >/dev/null
    done
fi

if [[ -z "${NO_BUILD:-}" ]]; then
    log "building release binaries"
    cargo build --release -p turnkey-bin --bin turn-bench
    if { wants turnkey || wants turnkey-mux || wants xdp; } && ! cargo build --release -p turnkey-bin --bin turn-server; then
        log "turn-server does not build; benchmarking the others only"
    fi
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=${BENCH:-$TARGET_DIR/release/turn-bench}
TURN_SERVER=${TURN_SERVER:-$TARGET_DIR/release/turn-server}
[[ -x $BENCH ]] || { echo "missing $BENCH" >&2; exit 1; }

if wants coturn && ! command -v turnserver >/dev/null; then
    log "installing coturn"
    DEBIAN_FRONTEND=noninteractive apt-get install -y coturn >"$WORK/apt.log" 2>&1 || {
        apt-get update >>"$WORK/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y coturn >>"$WORK/apt.log" 2>&1
    }
fi


# run_turn_server NAME BIN PORT METRICS MIN MAX [EXTRA FLAGS...]
run_turn_server() {
    local name=$1 bin=$2 port=$3 metrics=$4 min=$5 max=$6
    shift 6
    [[ -x $bin ]] || { log "no $bin; skipping $name"; return 1; }
    local extra=("$@")
    [[ -n $WORKERS ]] && extra+=(--workers "$WORKERS")
    # Stopping waits for the drain: 10 s at most, as before drain_timeout_secs defaulted to 300
    # (the old flag name, which older builds run as "base" know too).
    extra+=(--drain-timeout 10)
    # Generator peers (loopback, or 198.51.100.2 in the peer ns) and, with netns, the relayed
    # addresses on 198.51.100.1 are addresses the default peer rules refuse: allow them.
    [[ $PEERS == generator || $TOPOLOGY == netns ]] && extra+=(--allow-peer "$PEER_NET")
    "${IN_SERVER[@]}" "$bin" --listen "$SERVER_IP:$port" --relay-ip "$RELAY_IP" \
        --user bench:benchpass --metrics "127.0.0.1:$metrics" \
        --min-port "$min" --max-port "$max" --user-quota 100000 "${extra[@]}" \
        >"$WORK/$name.log" 2>&1 &
    PIDS[$name]=$!
    for _ in $(seq 100); do
        if "${IN_SERVER[@]}" curl -fsS "http://127.0.0.1:$metrics/healthz" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "${PIDS[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    log "$name ($bin) did not become ready; last log lines:"
    tail -n 5 "$WORK/$name.log" >&2 || true
    return 1
}

start_turnkey() {
    run_turn_server turnkey "$TURN_SERVER" "$TURNKEY_PORT" "$TURNKEY_METRICS" "$TURNKEY_MIN" "$TURNKEY_MAX"
}

start_turnkey-mux() {
    [[ $PEERS == generator ]] || { log "turnkey-mux needs PEERS=generator; skipping it"; return 1; }
    run_turn_server turnkey-mux "$TURN_SERVER" "$TURNKEY_MUX_PORT" "$TURNKEY_MUX_METRICS" \
        "$TURNKEY_MUX_MIN" "$TURNKEY_MUX_MAX" --relay-multiplex 1
}

start_base() {
    [[ -n ${TURN_SERVER_BASE:-} ]] || { log "TURN_SERVER_BASE not set; skipping base"; return 1; }
    run_turn_server base "$TURN_SERVER_BASE" "$BASE_PORT" "$BASE_METRICS" "$BASE_MIN" "$BASE_MAX"
}

# wait_listening NAME PORT: until server NAME (in PIDS) listens on PORT (10 s), or it exits.
wait_listening() {
    local name=$1 port=$2
    for _ in $(seq 100); do
        port_busy "$port" && return 0
        kill -0 "${PIDS[$name]}" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# run_coturn NAME BIN PORT MIN MAX [EXTRA FLAGS...]
run_coturn() {
    local name=$1 bin=$2 port=$3 min=$4 max=$5
    shift 5
    local extra=("$@")
    [[ -n $WORKERS ]] && extra+=(--relay-threads "$WORKERS")
    "${IN_SERVER[@]}" "$bin" -n --no-cli --no-tls --no-dtls -L "$SERVER_IP" -E "$RELAY_IP" --relay-ip "$RELAY_IP" \
        -p "$port" --lt-cred-mech --user bench:benchpass -r turnkey \
        --allow-loopback-peers --min-port "$min" --max-port "$max" \
        --pidfile "$WORK/$name.pid" --userdb "$WORK/$name.sqlite" \
        --no-stdout-log --log-file "$WORK/$name.log" --simple-log "${extra[@]}" \
        >"$WORK/$name.out" 2>&1 &
    PIDS[$name]=$!
    wait_listening "$name" "$port" || { log "$name ($bin) did not start; see $WORK/$name.out and $WORK/$name.log"; return 1; }
}

start_coturn() {
    command -v turnserver >/dev/null || { log "no turnserver; skipping coturn"; return 1; }
    run_coturn coturn "$(command -v turnserver)" "$COTURN_PORT" "$COTURN_MIN" "$COTURN_MAX"
}

# The flags of FLAGS... that $COTURN_NEWEST --help knows.
coturn_new_flags() {
    local help
    help=$("$COTURN_NEWEST" --help 2>&1 || true)
    for f in "$@"; do
        grep -q -- "$f\b" <<<"$help" && echo "$f"
    done
    return 0
}

start_coturn-new() {
    [[ -x $COTURN_NEWEST ]] || { log "COTURN_NEWEST not set or not executable; skipping coturn-new"; return 1; }
    local flags
    mapfile -t flags < <(coturn_new_flags --udp-recvmmsg)
    log "coturn-new flags: ${flags[*]:-(defaults)}"
    run_coturn coturn-new "$COTURN_NEWEST" "$COTURN_NEW_PORT" "$COTURN_NEW_MIN" "$COTURN_NEW_MAX" "${flags[@]}"
}

start_coturn-new-mux() {
    [[ -x $COTURN_NEWEST ]] || { log "COTURN_NEWEST not set or not executable; skipping coturn-new-mux"; return 1; }
    local flags
    mapfile -t flags < <(coturn_new_flags --udp-recvmmsg --multiplex-peer --udp-gso)
    [[ " ${flags[*]} " == *" --multiplex-peer "* ]] || { log "$COTURN_NEWEST has no --multiplex-peer; skipping coturn-new-mux"; return 1; }
    [[ $PEERS == generator ]] || { log "coturn-new-mux needs PEERS=generator; skipping it"; return 1; }
    flags+=(--multiplex-peer-port "$MUX_RELAY_PORT")
    log "coturn-new-mux flags: ${flags[*]}"
    run_coturn coturn-new-mux "$COTURN_NEWEST" "$COTURN_NEW_MUX_PORT" "$COTURN_NEW_MUX_MIN" "$COTURN_NEW_MUX_MAX" "${flags[@]}"
}

# run_floor NAME PORT [EXTRA FLAGS...]
run_floor() {
    local name=$1 port=$2
    shift 2
    "${IN_SERVER[@]}" "$BENCH" floor --listen "$SERVER_IP:$port" --relay-ip "$RELAY_IP" \
        --max-secs 86400 "$@" >"$WORK/$name.log" 2>&1 &
    PIDS[$name]=$!
    wait_listening "$name" "$port" || { log "$name did not start; see $WORK/$name.log"; return 1; }
}

start_floor() { run_floor floor "$FLOOR_PORT"; }

start_floor-shared() {
    [[ $PEERS == generator ]] || { log "floor-shared needs PEERS=generator; skipping it"; return 1; }
    run_floor floor-shared "$FLOOR_SHARED_PORT" --shared-relay
}

# An XDP program that passes everything, attached natively to IFACE in NS (the far end of a
# veth pair must have one for native XDP redirects into the pair to be delivered).
attach_pass_program() {
    local ns=$1 dev=$2
    printf '%s\n' '#include <linux/bpf.h>' '#include <bpf/bpf_helpers.h>' \
        'SEC("xdp") int pass(struct xdp_md *ctx) { return XDP_PASS; }' \
        'char _license[] SEC("license") = "GPL";' >"$WORK/pass.c"
    clang -O2 -target bpf "-I/usr/include/$(uname -m)-linux-gnu" -c "$WORK/pass.c" -o "$WORK/pass.o"
    ip -n "$ns" link set dev "$dev" xdpdrv obj "$WORK/pass.o" sec xdp
}

start_xdp() {
    [[ $TOPOLOGY == netns ]] || { log "xdp needs TOPOLOGY=netns; skipping it"; return 1; }
    ip netns exec "$NS_SERVER" sysctl -qw net.ipv4.conf.all.forwarding=1
    if [[ $XDP_MODE == native ]]; then
        attach_pass_program "$NS_CLIENT" "tkbc$$" && attach_pass_program "$NS_PEER" "tkbp$$" ||
            { log "could not attach the pass programs for native XDP; skipping xdp"; return 1; }
    fi
    run_turn_server xdp "$TURN_SERVER" "$XDP_PORT" "$XDP_METRICS" "$XDP_MIN" "$XDP_MAX" \
        --xdp "tkbsc$$,tkbsp$$" --xdp-mode "$XDP_MODE"
}

declare -A PORT=([turnkey]=$TURNKEY_PORT [coturn]=$COTURN_PORT [base]=$BASE_PORT
    [coturn-new]=$COTURN_NEW_PORT [coturn-new-mux]=$COTURN_NEW_MUX_PORT [floor]=$FLOOR_PORT
    [floor-shared]=$FLOOR_SHARED_PORT [xdp]=$XDP_PORT [turnkey-mux]=$TURNKEY_MUX_PORT)
RUNNING=()
SERVER_INFO=""
for s in $SERVERS; do
    [[ -n ${PORT[$s]:-} ]] || { echo "unknown server $s" >&2; exit 2; }
    if "start_$s"; then
        RUNNING+=("$s")
        threads=$(awk '/^Threads:/ {print $2}' "/proc/${PIDS[$s]}/status" 2>/dev/null || echo "?")
        log "$s: pid ${PIDS[$s]}, $SERVER_IP:${PORT[$s]}, $threads threads"
        SERVER_INFO+="$s: $threads threads; "
    fi
done
((${#RUNNING[@]})) || { echo "no server started" >&2; exit 1; }

coturn_version() {
    local v
    v=$(dpkg-query -W -f='${Version}' coturn 2>/dev/null) && { echo "coturn $v (Debian package)"; return; }
    v=$(turnserver --version 2>/dev/null | head -n1) && [[ -n $v ]] && { echo "coturn $v"; return; }
    echo "coturn (version unknown)"
}

versions() {
    local v=""
    wants coturn && v+="$(coturn_version); "
    wants coturn-new && [[ -x $COTURN_NEWEST ]] && v+="coturn-new: coturn $("$COTURN_NEWEST" --version 2>/dev/null | head -n1) ($COTURN_NEWEST); "
    v+="turnkey $("$TURN_SERVER" --version 2>/dev/null | head -n1 || echo "?")"
    echo "$v"
}

if [[ $AMPLIFICATION != 0 ]]; then
    for s in "${RUNNING[@]}"; do
        log "$s: amplification"
        if ! RUST_BACKTRACE=0 "${IN_CLIENT[@]}" "$BENCH" amplification --server "$SERVER_IP:${PORT[$s]}" --json \
            >"$WORK/amp-$s.json" 2>"$WORK/amp-$s.err"; then
            log "$s: amplification failed: $(tr '\n' ' ' <"$WORK/amp-$s.err")"
            echo '{"rows":[]}' >"$WORK/amp-$s.json"
        fi
    done
    echo
    echo "Reflection amplification: unauthenticated UDP requests to each server, 5 of each;"
    echo "factor = response bytes / request bytes (STUN message; 'hdr' counts IPv4+UDP headers too)"
    versions
    echo
    line=$(printf "%-26s %6s" "" "")
    for s in "${RUNNING[@]}"; do line+=$(printf " | %-22s" "$s"); done
    echo "$line"
    line=$(printf "%-26s %6s" request "req B")
    for s in "${RUNNING[@]}"; do line+=$(printf " | %7s %7s %6s" "resp B" factor hdr); done
    echo "$line"
    first=$WORK/amp-${RUNNING[0]}.json
    while IFS=$'\t' read -r key name bytes; do
        line=$(printf "%-26s %6s" "$name" "$bytes")
        for s in "${RUNNING[@]}"; do
            read -r resp factor hdr < <(jq -r --arg k "$key" '
                [.rows[] | select(.key == $k)][0]
                | [(.response_bytes // "-"), (.factor // "-"), (.factor_with_headers // "-")]
                | map(if type == "number" then (. * 100 | round / 100) else . end) | @tsv' \
                "$WORK/amp-$s.json")
            line+=$(printf " | %7s %7s %6s" "${resp:--}" "${factor:--}" "${hdr:--}")
        done
        echo "$line"
    done < <(jq -r '.rows[] | [.key, .request, .request_bytes] | @tsv' "$first")
    echo
    for s in "${RUNNING[@]}"; do
        jq -r --arg s "$s" '.rows[] | "  \($s): \(.request) -> \(.response): \(.attributes | join(" "))"' "$WORK/amp-$s.json"
    done
fi
[[ $RELAY != 0 || $FIND_MAX != 0 ]] || exit 0

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine: $(nproc) cores, load $LOAD_BEFORE"
[[ $RELAY != 0 ]] || RATES=""
# The reference of the ratios: coturn newest when it runs, else coturn.
REF=coturn
[[ " ${RUNNING[*]} " == *" coturn-new "* ]] && REF=coturn-new
BENCH_ARGS=(--transport "$TRANSPORT" --user bench --password benchpass --allocations "$ALLOCATIONS"
    --size "$SIZE" --threads "$THREADS" --peers "$PEERS")
[[ $PEERS == generator ]] && BENCH_ARGS+=(--peer-ip "$PEER_IP" "${PEER_NETNS_ARGS[@]}")
for round in $(seq "$ROUNDS"); do
    # Alternate the order each round, so no server always runs first.
    order=("${RUNNING[@]}")
    if (( round % 2 == 0 )); then
        order=(); for ((i = ${#RUNNING[@]} - 1; i >= 0; i--)); do order+=("${RUNNING[$i]}"); done
    fi
    for rate in $RATES; do
        for s in "${order[@]}"; do
            log "round $round: $s at $rate pps"
            if out=$(RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "${IN_CLIENT[@]}" "$BENCH" --server "$SERVER_IP:${PORT[$s]}" "${BENCH_ARGS[@]}" \
                --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" \
                --server-pid "${PIDS[$s]}" --json 2>"$WORK/bench-$s-$rate.err"); then
                jq -c --arg s "$s" '{label: $s} + .' <<<"$out" >>"$RESULTS"
            else
                log "$s at $rate pps failed: $(tr '\n' ' ' <"$WORK/bench-$s-$rate.err")"
                jq -nc --arg s "$s" --argjson r "$rate" '{label: $s, target_pps: $r, failed: true}' >>"$RESULTS"
            fi
        done
    done
    if [[ $FIND_MAX != 0 ]]; then
        for s in "${order[@]}"; do
            log "round $round: $s, highest rate with loss < $MAX_LOSS % (at most ${MAX_SECS}s)"
            if out=$(RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "${IN_CLIENT[@]}" "$BENCH" --server "$SERVER_IP:${PORT[$s]}" "${BENCH_ARGS[@]}" \
                --find-max --rate "$MAX_START" --max-loss "$MAX_LOSS" --max-secs "$MAX_SECS" \
                --duration "$MAX_DURATION" --warmup "$MAX_WARMUP" \
                --server-pid "${PIDS[$s]}" --json 2>"$WORK/max-$s-$round.err"); then
                jq -c --arg s "$s" '{label: $s} + .' <<<"$out" >>"$MAXES"
            else
                log "$s: search failed: $(tr '\n' ' ' <"$WORK/max-$s-$round.err")"
            fi
        done
    fi
done

echo
echo "TURN relay over $TRANSPORT, topology $TOPOLOGY, $ALLOCATIONS allocations, $SIZE B payload, ${DURATION}s per run, generator threads $THREADS, $(nproc) cores"
echo "servers (idle thread counts): ${SERVER_INFO% }  load before: $LOAD_BEFORE"
echo "$(versions)"
if [[ $PEERS == pair ]]; then
    echo "peers: pair; packet = one ChannelData delivered end to end (the server relays it twice: client->peer and peer->client)"
else
    echo "peers: generator (a UDP socket per allocation); packet = one probe delivered client->peer or peer->client (one relay hop)"
fi
if [[ -s $RESULTS ]]; then
echo
fmt="%-8s %-14s %9s %9s %8s %8s %8s %8s %9s %10s %11s %9s %9s\n"
# shellcheck disable=SC2059
printf "$fmt" target server sent/s recv/s loss% p50us p99us maxus srvcpu% srv-us/pkt mach-us/pkt srvdrops gen-cpu-s
jq -r 'def r2: if type == "number" then (. * 100 | round / 100) else "-" end;
        def int: if type == "number" then floor else "-" end;
        [(.target_pps | int), .label,
         (if .failed then "FAILED" else (.sent_pps | int) end),
         (.received_pps | int), (.loss_percent | r2),
         (.latency_p50_us | int), (.latency_p99_us | int), (.latency_max_us | int),
         (.server_cpu_percent | int), (.server_cpu_us_per_packet | r2),
         (.machine_cpu_us_per_packet | r2),
         (.server_socket_drops | int), (.bench_cpu_secs | r2)] | @tsv' "$RESULTS" |
    while IFS=$'\t' read -r target label sent recv loss p50 p99 max cpu us mus drops gen; do
        # shellcheck disable=SC2059
        printf "$fmt" "$target" "$label" "$sent" "$recv" "$loss" "$p50" "$p99" "$max" "$cpu" "$us" "$mus" "$drops" "$gen"
    done

# Medians over the rounds, and ratios to the reference server ($REF), the floor and base.
# Every ratio is ">1: better than the other": packets per CPU-second (the other's us/pkt over
# this one's), latency (the other's p50/p99 over this one's).
echo
echo "medians over $ROUNDS round(s); ratios to $REF ('x $REF'), to the floor and to base; >1 means better than that one"
echo "  kpkt/srv-s = packets per CPU-second of the server process (all threads), in thousands"
echo "  kpkt/mach-s = packets per busy CPU-second of the whole machine (/proc/stat) minus the generator's"
echo "               own; counts kernel work wherever it ran, but unreliable on this VM (see README)"
echo "  p50/p99 = one-way latency through the relay, microseconds; lat x $REF = $REF's p99 / this p99"
echo "  tot-us/pkt = CPU of the server and the generator together per packet (their /proc times: on"
echo "               one machine the softirq work of a delivery, an XDP program's included, is charged"
echo "               to whichever of them is running, so the sum holds all of it); t x $REF its ratio"
jq -rs 'def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        map(select(.failed | not)) | group_by(.target_pps)[] | group_by(.label)[]
        | [.[0].target_pps, .[0].label, (map(.server_cpu_us_per_packet // empty) | median // 0),
           (map(.received_pps) | median),
           (map(.machine_cpu_us_per_packet // empty) | median // 0),
           (map(.latency_p50_us // empty) | median // 0), (map(.latency_p99_us // empty) | median // 0),
           (map(select(.received > 0) | (.server_cpu_secs + .bench_cpu_secs) * 1e6 / .received) | median // 0)]
        | @tsv' "$RESULTS" |
    awk -F'\t' -v ref="$REF" '
        function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
        function k(us) { return us > 0 ? sprintf("%.1f", 1000 / us) : "-" }
        { key = $1; us[key, $2] = $3; rx[key, $2] = $4; mus[key, $2] = $5; p50[key, $2] = $6; p99[key, $2] = $7; tot[key, $2] = $8; rates[key] = 1; labels[$2] = 1 }
        END {
            printf "%-8s %-14s %9s %6s %6s %10s %8s %8s %8s %11s %8s %9s %10s %8s\n", "target", "server", "recv/s", "p50us", "p99us", "kpkt/srv-s", "x " ref, "x floor", "x base", "kpkt/mach-s", "m x " ref, "lat x " ref, "tot-us/pkt", "t x " ref;
            for (r in rates) for (l in labels) if ((r, l) in us) {
                printf "%-8s %-14s %9d %6d %6d %10s %8s %8s %8s %11s %8s %9s %10.2f %8s\n", r, l, rx[r, l], p50[r, l], p99[r, l], k(us[r, l]),
                    ratio(us[r, ref], us[r, l]), ratio(us[r, "floor"], us[r, l]), ratio(us[r, "base"], us[r, l]),
                    k(mus[r, l]), ratio(mus[r, ref], mus[r, l]), ratio(p99[r, ref], p99[r, l]), tot[r, l], ratio(tot[r, ref], tot[r, l]);
            }
        }' | { read -r header; echo "$header"; sort -n -k1,1 -k2,2; }
fi

if [[ -s $MAXES ]]; then
    echo
    echo "highest offered rate with loss < $MAX_LOSS % (turn-bench --find-max from $MAX_START pps, ${MAX_DURATION}s per step, at most ${MAX_SECS}s per server and round)"
    echo "medians over $ROUNDS round(s); figures of the best step; 'x $REF' and 'x floor' = this max / theirs (>1: more)"
    echo "  'gen-lim' = steps that failed because the generator could not send the offered rate (then the figure is the generator's limit, not the server's)"
    jq -rs 'def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
            group_by(.label)[]
            | [.[0].label, (map(.max_pps // 0) | median), (map(.max_received_pps // 0) | median),
               (map(.best.latency_p50_us // empty) | median // 0), (map(.best.latency_p99_us // empty) | median // 0),
               (map(.best.server_cpu_us_per_packet // empty) | median // 0),
               (map(.best.machine_cpu_us_per_packet // empty) | median // 0),
               (map(.steps | length) | add), (map([.steps[] | select(.generator_limited)] | length) | add),
               (map(.stopped) | unique | join(","))]
            | @tsv' "$MAXES" |
        awk -F'\t' -v ref="$REF" '
            function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
            { l = $1; order[++n] = l; mx[l] = $2; rx[l] = $3; p50[l] = $4; p99[l] = $5; us[l] = $6; mus[l] = $7; steps[l] = $8; lim[l] = $9; why[l] = $10 }
            END {
                printf "%-14s %9s %9s %6s %6s %10s %8s %8s %10s %5s %7s  %s\n", "server", "max/s", "recv/s", "p50us", "p99us", "srv-us/pkt", "x " ref, "x floor", "mach-us/pkt", "steps", "gen-lim", "stopped";
                for (i = 1; i <= n; i++) { l = order[i];
                    printf "%-14s %9d %9d %6d %6d %10.2f %8s %8s %10.2f %5d %7d  %s\n", l, mx[l], rx[l], p50[l], p99[l], us[l],
                        ratio(mx[l], mx[ref]), ratio(mx[l], mx["floor"]), mus[l], steps[l], lim[l], why[l];
                }
            }'
fi
