#!/usr/bin/env bash
# Memory per idle allocation, side by side: each allocation holds a permission and a channel
# bound to a peer of its own (what a WebRTC client keeps while it has nothing to send), set up
# by GENERATORS `turn-bench idle` processes at once (each has its own descriptor limit, client
# source addresses and peers), while the servers run one after the other, alternating over
# ROUNDS. Prints the server's RSS growth per allocation; asserts nothing.
#
# Servers (SERVERS):
#   turnkey         our turn-server, a UDP socket per allocation (standard TURN)
#   turnkey-mux     our turn-server --relay-multiplex 1 (shared relay sockets)
#   coturn          Debian's coturn (turnserver on PATH)
#   coturn-new      coturn built from source (COTURN_NEWEST, scripts/build-coturn.sh)
#   coturn-new-mux  the same with --multiplex-peer
# A server that holds one socket per allocation cannot hold more allocations than its
# descriptor limit (`ulimit -n`, 20000 on the test machine without CAP_SYS_RESOURCE): at
# COUNTS beyond it, those servers are skipped unless FORCE=1.
#
# Usage: scripts/bench-idle.sh
# Environment (all optional):
#   COUNTS="10000 100000"   allocations held per run
#   SERVERS=...             default: turnkey turnkey-mux coturn, plus coturn-new and
#                           coturn-new-mux when COTURN_NEWEST is set
#   GENERATORS=8            turn-bench idle processes per run, at least: more when the count
#                           needs them (a generator holds two descriptors per allocation)
#   ROUNDS=1                rounds over COUNTS and SERVERS
#   COTURN_NEWEST=          e.g. /opt/coturn-newest/bin/turnserver
#   NO_BUILD=1              use the existing binaries (CARGO_TARGET_DIR or target/)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
COUNTS=${COUNTS:-"10000 100000"}
GENERATORS=${GENERATORS:-8}
ROUNDS=${ROUNDS:-1}
COTURN_NEWEST=${COTURN_NEWEST:-}
if [[ -n $COTURN_NEWEST ]]; then
    SERVERS=${SERVERS:-"turnkey turnkey-mux coturn coturn-new coturn-new-mux"}
else
    SERVERS=${SERVERS:-"turnkey turnkey-mux coturn"}
fi
PORT=${PORT:-27400}
METRICS=$((PORT + 1))
MIN_PORT=20000
MAX_PORT=60000

if [[ -z "${NO_BUILD:-}" ]]; then
    echo "== building release binaries" >&2
    cargo build --release -p turnkey-bin --bin turn-server --bin turn-bench
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$TARGET_DIR/release/turn-bench
TURN_SERVER=$TARGET_DIR/release/turn-server
WORK=$(mktemp -d /tmp/bench-idle.XXXXXX)
SERVER_PID=""
GEN_PIDS=()

cleanup() {
    for p in "${GEN_PIDS[@]}" $SERVER_PID; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "logs: $WORK" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "== $*" >&2; }

FD_LIMIT=$(ulimit -n)

start_server() { # NAME
    case $1 in
    turnkey | turnkey-mux)
        local extra=()
        [[ $1 == turnkey-mux ]] && extra=(--relay-multiplex 1)
        "$TURN_SERVER" --listen "127.0.0.1:$PORT" --relay-ip 127.0.0.1 --user bench:benchpass \
            --metrics "127.0.0.1:$METRICS" --min-port $MIN_PORT --max-port $MAX_PORT \
            --user-quota 1000000 --ip-quota 1000000 --total-quota 1000000 --unauth-rate 0 \
            --allow-peer 127.0.0.0/8 --drain-timeout 10 "${extra[@]}" >"$WORK/$1.log" 2>&1 &
        SERVER_PID=$!
        for _ in $(seq 100); do
            curl -fsS "http://127.0.0.1:$METRICS/healthz" >/dev/null 2>&1 && return 0
            sleep 0.1
        done
        return 1
        ;;
    coturn | coturn-new | coturn-new-mux)
        local bin extra=()
        if [[ $1 == coturn ]]; then bin=$(command -v turnserver || true); else bin=$COTURN_NEWEST; fi
        [[ -x $bin ]] || { log "no binary for $1"; return 1; }
        [[ $1 == coturn-new-mux ]] && extra=(--multiplex-peer --multiplex-peer-port $((MAX_PORT + 100)))
        rm -f "$WORK/$1.sqlite"
        "$bin" -n --no-cli --no-tls --no-dtls -L 127.0.0.1 -E 127.0.0.1 --relay-ip 127.0.0.1 -p "$PORT" \
            --lt-cred-mech --user bench:benchpass -r turnkey --allow-loopback-peers \
            --min-port $MIN_PORT --max-port $MAX_PORT --total-quota 1000000 --user-quota 1000000 \
            --pidfile "$WORK/$1.pid" --userdb "$WORK/$1.sqlite" --no-stdout-log \
            --log-file "$WORK/$1.log" --simple-log "${extra[@]}" >"$WORK/$1.out" 2>&1 &
        SERVER_PID=$!
        for _ in $(seq 100); do
            ss -Hlun "sport = :$PORT" | grep -q . && return 0
            sleep 0.1
        done
        return 1
        ;;
    *) echo "unknown server $1" >&2; exit 2 ;;
    esac
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# run NAME COUNT: prints "NAME COUNT held KiB/allocation"
run() {
    local name=$1 count=$2
    if [[ $name != *-mux && $count -ge $FD_LIMIT && -z ${FORCE:-} ]]; then
        echo "$name $count - skipped: one socket per allocation, descriptor limit $FD_LIMIT"
        return
    fi
    start_server "$name" || { echo "$name $count - did not start"; return; }
    sleep 1
    local gens=$GENERATORS cap=$(((FD_LIMIT - 1000) / 2)) g
    (((count + gens - 1) / gens > cap)) && gens=$(((count + cap - 1) / cap))
    local before per=$(((count + gens - 1) / gens))
    before=$(rss_kib "$SERVER_PID")
    GEN_PIDS=()
    for g in $(seq 0 $((gens - 1))); do
        # Sources 127.1g.0.1... and peers 127.9.g.1:1024... apart per generator.
        "$BENCH" idle --server "127.0.0.1:$PORT" --user bench:benchpass --allocations "$per" \
            --source "127.$((10 + g)).0.1" --sources 200 --peer "127.9.$g.1:1024" \
            --distinct-peers --settle 600 >"$WORK/gen$g.out" 2>"$WORK/gen$g.err" &
        GEN_PIDS+=($!)
    done
    local deadline=$((SECONDS + 600)) done_n=0
    while ((SECONDS < deadline)); do
        done_n=$(cat "$WORK"/gen*.err 2>/dev/null | grep -c '^held ' || true)
        ((done_n >= gens)) && break
        local alive=0
        for p in "${GEN_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 1
    done
    sleep 3
    local after held failed
    after=$(rss_kib "$SERVER_PID")
    held=$(cat "$WORK"/gen*.err | awk '/^held / {s += $2} END {print s + 0}')
    failed=$(cat "$WORK"/gen*.err | awk '/^held / {gsub(/\(/, "", $4); s += $4} END {print s + 0}')
    for p in "${GEN_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${GEN_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    GEN_PIDS=()
    rm -f "$WORK"/gen*.err "$WORK"/gen*.out
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    if ((held > 0)); then
        echo "$name $count $held $failed $before $after $(echo "scale=2; ($after - $before) / $held" | bc)"
    else
        echo "$name $count 0 $failed $before $after -"
    fi
}

echo "== machine: $(nproc) cores, descriptor limit $FD_LIMIT, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
printf '%-15s %8s %8s %7s %11s %11s %10s\n' server wanted held failed "rss0 KiB" "rss KiB" "KiB/alloc"
for round in $(seq "$ROUNDS"); do
    for count in $COUNTS; do
        for s in $SERVERS; do
            read -r name c held failed b a per <<<"$(run "$s" "$count")" || true
            if [[ ${held:-} == - ]]; then
                printf '%-15s %8s %s\n' "$name" "$c" "$failed $b $a $per"
            else
                printf '%-15s %8s %8s %7s %11s %11s %10s\n' "$name" "$c" "$held" "$failed" "$b" "$a" "$per"
            fi
        done
    done
done
