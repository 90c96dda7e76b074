#!/usr/bin/env bash
# Signaling load benchmark: one turnkey signaling node on loopback, signaling-bench at 1k and
# 10k WebSocket connections (rooms of 4: negotiation burst, then a steady message rate and
# pings). Prints figures; asserts nothing.
#
# Everything listens on 127.0.0.1 only. A fresh server is started for each size (so its RSS
# before connecting is a clean baseline) and stopped after it, and on exit.
#
# 10k connections need ~10k open files in the generator and in the server: the script raises
# `ulimit -n` to the hard limit and says so if that is less than needed (raise the hard limit
# with `ulimit -Hn`, /etc/security/limits.conf or systemd's LimitNOFILE).
#
# Usage: scripts/bench-signaling.sh
# Environment (all optional):
#   SIZES="1000 10000"     connections per run
#   DURATION=20            measured seconds per run (all connections held)
#   RATE=1                 steady messages/s per client (~300 B candidates to room peers)
#   CONNECT_RATE=500       new clients per second during the ramp
#   PING_INTERVAL=20       seconds between pings per client
#   THREADS=1              generator runtime threads
#   SOURCE_IPS=            comma-separated local addresses to spread connections over
#                          (e.g. 127.0.0.2,127.0.0.3) if ephemeral ports run out
#   PORT_BASE=             listener port (metrics on +1); default random in 20000-29000
#   NO_BUILD=1             use the existing binaries
#   BENCH=, SIGNALING=     binaries to use (default: target/release/signaling-bench, signaling)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

SIZES=${SIZES:-"1000 10000"}
DURATION=${DURATION:-20}
RATE=${RATE:-1}
CONNECT_RATE=${CONNECT_RATE:-500}
PING_INTERVAL=${PING_INTERVAL:-20}
THREADS=${THREADS:-1}
SOURCE_IPS=${SOURCE_IPS:-}
API_KEY=bench:benchsecret

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
if [[ -z ${PORT_BASE:-} ]]; then
    for _ in $(seq 20); do
        PORT_BASE=$((20000 + (RANDOM % 900) * 10))
        port_busy "$PORT_BASE" || port_busy $((PORT_BASE + 1)) || break
    done
fi
PORT=$PORT_BASE
MPORT=$((PORT_BASE + 1))

WORK=$(mktemp -d /tmp/bench-signaling.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
SERVER_PID=

stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
cleanup() {
    stop_server
    echo "logs and raw results: $WORK" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "== $*" >&2; }

if [[ -z "${NO_BUILD:-}" ]]; then
    log "building release binaries"
    cargo build --release -p turnkey-bin --bin signaling --bin signaling-bench
fi
BENCH=${BENCH:-$ROOT/target/release/signaling-bench}
SIGNALING=${SIGNALING:-$ROOT/target/release/signaling}
for bin in "$BENCH" "$SIGNALING"; do
    [[ -x $bin ]] || { echo "missing $bin" >&2; exit 1; }
done

# Open files: one per connection on each side, plus slack. Inherited by both processes.
max_size=0
for n in $SIZES; do ((n > max_size)) && max_size=$n; done
wanted=$((max_size + 1024))
hard=$(ulimit -Hn)
if [[ $hard == unlimited ]] || ((hard >= wanted)); then
    ulimit -n "$wanted"
else
    ulimit -n "$hard"
    log "ulimit -Hn is $hard, less than the $wanted needed for $max_size connections"
fi
log "ulimit -n $(ulimit -n); ephemeral ports $(tr '\t' '-' </proc/sys/net/ipv4/ip_local_port_range)"

start_server() {
    "$SIGNALING" --listen "127.0.0.1:$PORT" --public-url "http://127.0.0.1:$PORT" \
        --api-key "$API_KEY" --metrics "127.0.0.1:$MPORT" >"$WORK/signaling-$1.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "signaling did not become ready; last log lines:"
    tail -n 5 "$WORK/signaling-$1.log" >&2 || true
    return 1
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine: $(nproc) cores, load $LOAD_BEFORE"
for n in $SIZES; do
    start_server "$n" || exit 1
    log "$n connections (server pid $SERVER_PID, 127.0.0.1:$PORT)"
    extra=()
    [[ -n $SOURCE_IPS ]] && extra+=(--source-ips "$SOURCE_IPS")
    if out=$(RUST_BACKTRACE=0 "$BENCH" --server "http://127.0.0.1:$PORT" --api-key "$API_KEY" \
        --connections "$n" --rate "$RATE" --duration "$DURATION" --connect-rate "$CONNECT_RATE" \
        --ping-interval "$PING_INTERVAL" --threads "$THREADS" --server-pid "$SERVER_PID" \
        "${extra[@]}" --json 2>"$WORK/bench-$n.err"); then
        echo "$out" >>"$RESULTS"
        jq -r '"   opened \(.opened) joined \(.joined) failed \(.failed) dropped \(.dropped); errors \(.errors)"' <<<"$out" >&2
    else
        log "$n connections failed: $(tail -n 3 "$WORK/bench-$n.err" | tr '\n' ' ')"
        jq -nc --argjson n "$n" '{connections: $n, failed_run: true}' >>"$RESULTS"
    fi
    curl -fsS "http://127.0.0.1:$MPORT/metrics" >"$WORK/metrics-$n.txt" 2>/dev/null || true
    stop_server
done

echo
echo "signaling relay, rooms of 4, ${RATE} msg/s per client (~300 B), pings every ${PING_INTERVAL}s, ${DURATION}s window, ramp ${CONNECT_RATE}/s, generator threads $THREADS, $(nproc) cores, load before: $LOAD_BEFORE"
echo "latency = send -> receive of a relayed message (both ends in the generator); nego99ms = room full -> negotiated, p99"
echo "KiB/conn = server RSS (held - before) / held; unann = relayed messages from a participant not (yet) announced to the receiver"
echo
fmt="%7s %6s %6s %5s %5s %8s %8s %7s %7s %8s %8s %8s %8s %7s %6s %s\n"
# shellcheck disable=SC2059
printf "$fmt" conns joined held fail drop sent/s recv/s p50ms p99ms maxms nego99ms KiB/conn srvcpu% gencpu% unann errors
jq -r 'def ms: if type == "number" then (. / 10 | round / 100) else "-" end;
        def int: if type == "number" then floor else "-" end;
        def r1: if type == "number" then (. * 10 | round / 10) else "-" end;
        if .failed_run then [(.connections | int), "FAILED", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]
        else [(.connections | int), (.joined | int), (.held | int), (.failed | int), (.dropped | int),
         (.sent_msgs_per_sec | int), (.received_msgs_per_sec | int),
         (.latency.p50_us | ms), (.latency.p99_us | ms), (.latency.max_us | ms),
         (.negotiation_time.p99_us | ms),
         (if .server_rss_per_connection_bytes then .server_rss_per_connection_bytes / 1024 else null end | r1),
         (.server_cpu_percent | int), (.bench_cpu_percent | int), (.unknown_sender | int),
         (.errors | to_entries | map("\(.key):\(.value)") | join(",") | if . == "" then "none" else . end)]
        end | @tsv' "$RESULTS" |
    while IFS=$'\t' read -r c j h f d s r p50 p99 max nego kib cpu gen unann errs; do
        # shellcheck disable=SC2059
        printf "$fmt" "$c" "$j" "$h" "$f" "$d" "$s" "$r" "$p50" "$p99" "$max" "$nego" "$kib" "$cpu" "$gen" "$unann" "$errs"
    done
