#!/usr/bin/env bash
# Side-by-side TURN relay benchmark: our turn-server and coturn's turnserver, same load, same
# machine, one run. First the reflection amplification factor of unauthenticated UDP requests
# (`turn-bench amplification`), then the relay runs. Prints figures; asserts nothing.
#
# Everything listens on 127.0.0.1 only. Both servers are stopped on exit.
#
# Usage: scripts/bench-vs-coturn.sh
# Environment (all optional):
#   RATES="20000 50000 100000"  offered packets/s, all allocations together
#   DURATION=5 WARMUP=1         seconds per run (measured, and unmeasured before it)
#   ALLOCATIONS=20 SIZE=160     allocations (even) and payload bytes
#   THREADS=1                   generator threads
#   TRANSPORT=udp               udp or tcp (client to server; relay is UDP)
#   SERVERS="turnkey coturn"    which servers to run (add "base" with TURN_SERVER_BASE)
#   ROUNDS=1                    rounds over all rates and servers, alternating servers each time
#   TURN_SERVER_BASE=           a second turn-server binary (an older build) run as server "base"
#                               beside the first, for before/after comparisons in one run
#   WORKERS=                    --workers for turn-server / --relay-threads for coturn (default: each one's own)
#   PORT_BASE=                  first of the ports used (default: random in 20000-29000)
#   AMPLIFICATION=1 RELAY=1     set either to 0 to skip that part
#   NO_BUILD=1                  use the existing binaries
#   BENCH=, TURN_SERVER=        binaries to use (default: target/release/turn-bench, turn-server)
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
SERVERS=${SERVERS:-"turnkey coturn"}
WORKERS=${WORKERS:-}
AMPLIFICATION=${AMPLIFICATION:-1}
RELAY=${RELAY:-1}
port_busy() { ss -Hltun "sport = :$1" 2>/dev/null | grep -q .; }
# A base whose listener ports (base..base+2) are free, so no server shares a port by accident
# (coturn sets SO_REUSEPORT and would silently share one).
if [[ -z ${PORT_BASE:-} ]]; then
    for _ in $(seq 20); do
        PORT_BASE=$((20000 + (RANDOM % 900) * 10))
        port_busy "$PORT_BASE" || port_busy $((PORT_BASE + 1)) || port_busy $((PORT_BASE + 2)) || break
    done
fi

TURNKEY_PORT=$PORT_BASE
TURNKEY_METRICS=$((PORT_BASE + 1))
COTURN_PORT=$((PORT_BASE + 2))
BASE_PORT=$((PORT_BASE + 3))
BASE_METRICS=$((PORT_BASE + 4))
ROUNDS=${ROUNDS:-1}
# Relay port ranges, apart from each other and from the listeners (ports in use are skipped by
# both servers).
TURNKEY_MIN=$((PORT_BASE + 10000)); TURNKEY_MAX=$((TURNKEY_MIN + 999))
COTURN_MIN=$((TURNKEY_MAX + 1)); COTURN_MAX=$((COTURN_MIN + 999))
BASE_MIN=$((COTURN_MAX + 1)); BASE_MAX=$((BASE_MIN + 999))

WORK=$(mktemp -d /tmp/bench-vs-coturn.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
declare -A PIDS=()

cleanup() {
    for name in "${!PIDS[@]}"; do
        kill "${PIDS[$name]}" 2>/dev/null || true
    done
    for name in "${!PIDS[@]}"; do
        wait "${PIDS[$name]}" 2>/dev/null || true
    done
    echo "logs and raw results: $WORK" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "== $*" >&2; }

wants() { [[ " $SERVERS " == *" $1 "* ]]; }

if [[ -z "${NO_BUILD:-}" ]]; then
    log "building release binaries"
    cargo build --release -p turnkey-bin --bin turn-bench
    if wants turnkey && ! cargo build --release -p turnkey-bin --bin turn-server; then
        log "turn-server does not build; benchmarking the others only"
    fi
fi
BENCH=${BENCH:-$ROOT/target/release/turn-bench}
TURN_SERVER=${TURN_SERVER:-$ROOT/target/release/turn-server}
[[ -x $BENCH ]] || { echo "missing $BENCH" >&2; exit 1; }

if wants coturn && ! command -v turnserver >/dev/null; then
    log "installing coturn"
    DEBIAN_FRONTEND=noninteractive apt-get install -y coturn >"$WORK/apt.log" 2>&1 || {
        apt-get update >>"$WORK/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y coturn >>"$WORK/apt.log" 2>&1
    }
fi


# run_turn_server NAME BIN PORT METRICS MIN MAX
run_turn_server() {
    local name=$1 bin=$2 port=$3 metrics=$4 min=$5 max=$6
    [[ -x $bin ]] || { log "no $bin; skipping $name"; return 1; }
    local extra=()
    [[ -n $WORKERS ]] && extra+=(--workers "$WORKERS")
    "$bin" --listen "127.0.0.1:$port" --relay-ip 127.0.0.1 \
        --user bench:benchpass --metrics "127.0.0.1:$metrics" \
        --min-port "$min" --max-port "$max" --user-quota 100000 "${extra[@]}" \
        >"$WORK/$name.log" 2>&1 &
    PIDS[$name]=$!
    for _ in $(seq 100); do
        if curl -fsS "http://127.0.0.1:$metrics/healthz" >/dev/null 2>&1; then
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

start_base() {
    [[ -n ${TURN_SERVER_BASE:-} ]] || { log "TURN_SERVER_BASE not set; skipping base"; return 1; }
    run_turn_server base "$TURN_SERVER_BASE" "$BASE_PORT" "$BASE_METRICS" "$BASE_MIN" "$BASE_MAX"
}

start_coturn() {
    command -v turnserver >/dev/null || { log "no turnserver; skipping coturn"; return 1; }
    local extra=()
    [[ -n $WORKERS ]] && extra+=(--relay-threads "$WORKERS")
    turnserver -n --no-cli --no-tls --no-dtls -L 127.0.0.1 -E 127.0.0.1 --relay-ip 127.0.0.1 \
        -p "$COTURN_PORT" --lt-cred-mech --user bench:benchpass -r turnkey \
        --allow-loopback-peers --min-port "$COTURN_MIN" --max-port "$COTURN_MAX" \
        --pidfile "$WORK/coturn.pid" --userdb "$WORK/coturn.sqlite" \
        --no-stdout-log --log-file "$WORK/coturn.log" --simple-log "${extra[@]}" \
        >"$WORK/coturn.out" 2>&1 &
    PIDS[coturn]=$!
    for _ in $(seq 100); do
        port_busy "$COTURN_PORT" && return 0
        kill -0 "${PIDS[coturn]}" 2>/dev/null || break
        sleep 0.1
    done
    log "turnserver did not start; see $WORK/coturn.out"
    return 1
}

declare -A PORT=([turnkey]=$TURNKEY_PORT [coturn]=$COTURN_PORT [base]=$BASE_PORT)
RUNNING=()
SERVER_INFO=""
for s in $SERVERS; do
    if "start_$s"; then
        RUNNING+=("$s")
        threads=$(awk '/^Threads:/ {print $2}' "/proc/${PIDS[$s]}/status" 2>/dev/null || echo "?")
        log "$s: pid ${PIDS[$s]}, 127.0.0.1:${PORT[$s]}, $threads threads"
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

if [[ $AMPLIFICATION != 0 ]]; then
    for s in "${RUNNING[@]}"; do
        log "$s: amplification"
        if ! RUST_BACKTRACE=0 "$BENCH" amplification --server "127.0.0.1:${PORT[$s]}" --json \
            >"$WORK/amp-$s.json" 2>"$WORK/amp-$s.err"; then
            log "$s: amplification failed: $(tr '\n' ' ' <"$WORK/amp-$s.err")"
            echo '{"rows":[]}' >"$WORK/amp-$s.json"
        fi
    done
    echo
    echo "Reflection amplification: unauthenticated UDP requests to each server, 5 of each;"
    echo "factor = response bytes / request bytes (STUN message; 'hdr' counts IPv4+UDP headers too)"
    wants coturn && echo "$(coturn_version); turnkey $("$TURN_SERVER" --version 2>/dev/null | head -n1 || echo "?")"
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
[[ $RELAY != 0 ]] || exit 0

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine: $(nproc) cores, load $LOAD_BEFORE"
for round in $(seq "$ROUNDS"); do
for rate in $RATES; do
    # Alternate the order each round, so neither server always runs first.
    order=("${RUNNING[@]}")
    if (( round % 2 == 0 )); then
        order=(); for ((i = ${#RUNNING[@]} - 1; i >= 0; i--)); do order+=("${RUNNING[$i]}"); done
    fi
    for s in "${order[@]}"; do
        log "round $round: $s at $rate pps"
        if out=$(RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "$BENCH" --server "127.0.0.1:${PORT[$s]}" --transport "$TRANSPORT" \
            --user bench --password benchpass --allocations "$ALLOCATIONS" --rate "$rate" \
            --size "$SIZE" --duration "$DURATION" --warmup "$WARMUP" --threads "$THREADS" \
            --server-pid "${PIDS[$s]}" --json 2>"$WORK/bench-$s-$rate.err"); then
            jq -c --arg s "$s" '{label: $s} + .' <<<"$out" >>"$RESULTS"
        else
            log "$s at $rate pps failed: $(tr '\n' ' ' <"$WORK/bench-$s-$rate.err")"
            jq -nc --arg s "$s" --argjson r "$rate" '{label: $s, target_pps: $r, failed: true}' >>"$RESULTS"
        fi
    done
done
done

echo
echo "TURN relay over $TRANSPORT, $ALLOCATIONS allocations, $SIZE B payload, ${DURATION}s per run, generator threads $THREADS, $(nproc) cores"
echo "servers (idle thread counts): ${SERVER_INFO% }  load before: $LOAD_BEFORE"
wants coturn && echo "$(coturn_version)"
echo "packet = one ChannelData delivered end to end (the server relays it twice: client->peer and peer->client)"
echo
fmt="%-8s %-8s %9s %9s %8s %8s %8s %8s %9s %10s %11s %9s %9s\n"
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

# Medians over the rounds: server CPU per relayed packet (lower is better) and received pps,
# with each server's CPU figure as a ratio to coturn's and to base's (how many times as many
# packets per CPU-second: the other's us/pkt over this one's).
echo
echo "medians over $ROUNDS round(s): srv-us/pkt, recv/s; 'x coturn' and 'x base' = packets per server CPU-second relative to them (>1: better)"
echo "mach-us/pkt = busy CPU of the whole machine (/proc/stat) minus the generator's, per packet; 'm x coturn' its ratio"
jq -rs 'def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        map(select(.failed | not)) | group_by(.target_pps)[] | group_by(.label)[]
        | [.[0].target_pps, .[0].label, (map(.server_cpu_us_per_packet) | median), (map(.received_pps) | median),
           (map(.machine_cpu_us_per_packet // empty) | median // 0)]
        | @tsv' "$RESULTS" |
    awk -F'\t' '{ key = $1; us[key, $2] = $3; rx[key, $2] = $4; mus[key, $2] = $5; rates[key] = 1; labels[$2] = 1 }
        END {
            printf "%-8s %-8s %10s %9s %9s %9s %11s %11s\n", "target", "server", "srv-us/pkt", "recv/s", "x coturn", "x base", "mach-us/pkt", "m x coturn";
            for (r in rates) for (l in labels) if ((r, l) in us) {
                c = ((r, "coturn") in us && us[r, l] > 0) ? sprintf("%.2f", us[r, "coturn"] / us[r, l]) : "-";
                b = ((r, "base") in us && us[r, l] > 0) ? sprintf("%.2f", us[r, "base"] / us[r, l]) : "-";
                m = ((r, "coturn") in mus && mus[r, l] > 0 && mus[r, "coturn"] > 0) ? sprintf("%.2f", mus[r, "coturn"] / mus[r, l]) : "-";
                printf "%-8s %-8s %10.2f %9d %9s %9s %11.2f %11s\n", r, l, us[r, l], rx[r, l], c, b, mus[r, l], m;
            }
        }' | { read -r header; echo "$header"; sort -n -k1,1 -k2,2; }
