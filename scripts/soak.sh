#!/usr/bin/env bash
# Soak of our turn-server: starts it on loopback (UDP/TCP, and TLS + DTLS with a throwaway
# certificate), runs `turn-bench soak` for each kind, and stops it. Every interval prints the
# server's RSS, open fds, bound relay ports and allocation gauge next to the churn rate; each
# kind ends with a summary (RSS after warm-up vs at the end, fds and relay ports at baseline vs
# end). Prints figures; asserts nothing.
#
# Usage: scripts/soak.sh [KIND...]   kinds: allocation even-port channel tcp tls dtls (default all)
# Environment (all optional):
#   DURATION=60s INTERVAL=10s   churn per kind, and time between lines (30m, 90s, 1h, ...)
#   SETTLE=40s                  longest wait after churn for fds/ports/allocations to come back
#   RATE=50 CLIENTS=8           cycles per second (all clients), concurrent clients
#   FRESH=1                     a fresh server per kind; 0: one server for all kinds, in order
#   EXTRA=                      more `turn-bench soak` flags (e.g. --delete-before-close)
#   SERVER_ARGS=                more turn-server flags
#   QUOTA=100000                turn-server --user-quota (high, so that leaked allocations show
#                               in the gauge and relay ports rather than as 486 answers)
#   JSON=1                      JSON lines instead of text
#   PORT_BASE=                  first of the ports used (default: random in 20000-29000)
#   NO_BUILD=1 PROFILE=release  use existing binaries; build profile (release or debug)
#   BENCH=, TURN_SERVER=        binaries to use (default: target/$PROFILE/turn-bench, turn-server)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

KINDS=${*:-"allocation even-port channel tcp tls dtls"}
DURATION=${DURATION:-60s}
INTERVAL=${INTERVAL:-10s}
SETTLE=${SETTLE:-40s}
RATE=${RATE:-50}
CLIENTS=${CLIENTS:-8}
FRESH=${FRESH:-1}
EXTRA=${EXTRA:-}
SERVER_ARGS=${SERVER_ARGS:-}
QUOTA=${QUOTA:-100000}
JSON=${JSON:-}
PROFILE=${PROFILE:-release}
USER_PASS=soak:soakpass

port_busy() { ss -Hltun "sport = :$1" 2>/dev/null | grep -q .; }
if [[ -z ${PORT_BASE:-} ]]; then
    for _ in $(seq 20); do
        PORT_BASE=$((20000 + (RANDOM % 900) * 10))
        port_busy "$PORT_BASE" || port_busy $((PORT_BASE + 1)) || port_busy $((PORT_BASE + 2)) || break
    done
fi
PORT=$PORT_BASE            # UDP + TCP
SECURE_PORT=$((PORT_BASE + 1)) # TLS + DTLS
METRICS=$((PORT_BASE + 2))
RELAY_MIN=$((PORT_BASE + 10000)); RELAY_MAX=$((RELAY_MIN + 1999))

WORK=$(mktemp -d /tmp/soak.XXXXXX)
SERVER_PID=

log() { echo "== $*" >&2; }

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
cleanup() {
    stop_server
    echo "logs: $WORK" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z ${NO_BUILD:-} ]]; then
    flag=()
    [[ $PROFILE == release ]] && flag=(--release)
    log "building turn-bench and turn-server ($PROFILE)"
    cargo build "${flag[@]}" -p turnkey-bin --bin turn-bench --bin turn-server
fi
BENCH=${BENCH:-$ROOT/target/$PROFILE/turn-bench}
TURN_SERVER=${TURN_SERVER:-$ROOT/target/$PROFILE/turn-server}
for b in "$BENCH" "$TURN_SERVER"; do
    [[ -x $b ]] || { echo "missing $b" >&2; exit 1; }
done

# A throwaway P-256 certificate for 127.0.0.1 (the key in PKCS#8, which DTLS needs).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=turn.test -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >"$WORK/openssl.log" 2>&1

start_server() {
    local tag=$1
    # shellcheck disable=SC2086
    RUST_LOG=${RUST_LOG:-warn} "$TURN_SERVER" --listen "127.0.0.1:$PORT" \
        --tls-listen "127.0.0.1:$SECURE_PORT" --dtls-listen "127.0.0.1:$SECURE_PORT" \
        --cert "$WORK/cert.pem" --key "$WORK/key.pem" --user "$USER_PASS" \
        --relay-ip 127.0.0.1 --min-port "$RELAY_MIN" --max-port "$RELAY_MAX" \
        --allow-peer 127.0.0.0/8 --metrics "127.0.0.1:$METRICS" --user-quota "$QUOTA" \
        --drain-timeout 10 $SERVER_ARGS \
        >"$WORK/turn-server-$tag.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -fsS "http://127.0.0.1:$METRICS/healthz" >/dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "turn-server did not become ready; last log lines:"
    tail -n 5 "$WORK/turn-server-$tag.log" >&2 || true
    exit 1
}

log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); turn-server $("$TURN_SERVER" --version | head -n1)"
[[ $FRESH == 0 ]] && start_server all
for kind in $KINDS; do
    [[ $FRESH == 0 ]] || start_server "$kind"
    case $kind in
        tls | dtls) target=127.0.0.1:$SECURE_PORT ;;
        *) target=127.0.0.1:$PORT ;;
    esac
    json=()
    [[ -n $JSON ]] && json=(--json)
    # shellcheck disable=SC2086
    RUST_BACKTRACE=0 "$BENCH" soak --kind "$kind" --server "$target" --user "$USER_PASS" \
        --server-pid "$SERVER_PID" --metrics "127.0.0.1:$METRICS" \
        --relay-ports "$RELAY_MIN-$RELAY_MAX" --duration "$DURATION" --interval "$INTERVAL" \
        --settle "$SETTLE" --rate "$RATE" --clients "$CLIENTS" "${json[@]}" $EXTRA ||
        log "soak $kind failed"
    [[ $FRESH == 0 ]] || stop_server
    echo
done
