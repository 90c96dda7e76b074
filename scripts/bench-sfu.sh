#!/usr/bin/env bash
# Side-by-side SFU benchmark: the turnkey `sfu` node and, as an anchor, Janus's VideoRoom
# (Debian's `janus` package), driven by the same sfu-bench webrtc-rs publishers and subscribers
# (full ICE, DTLS-SRTP, the same probes, loss and latency accounting), in alternating rounds in
# one run on the same machine. Scenarios: rooms of 4 (everyone publishes VP8 + Opus and
# subscribes to the other 3), one publisher fanned out to 100 and to 500 subscribers. Then
# (FIND_MAX=1) the largest fan-out each server holds with loss under MAX_LOSS %. Prints figures;
# asserts nothing.
#
# sfu-bench starts and stops each server itself (a fresh child per run, on free ports) and reads
# the child's CPU time and RSS from /proc: `sfu` next to sfu-bench in the target dir, or `janus`
# with a configuration it writes to a temp folder (VideoRoom and the WebSocket transport only,
# API on 127.0.0.1, no STUN/TURN, ICE on HOST_IP only).
#
# Addresses: Janus never gathers ICE candidates on a loopback interface, so its media cannot be
# on 127.0.0.1. Both servers' media and the clients' sockets are therefore on HOST_IP, by default
# the machine's first non-loopback IPv4 address: datagrams between local addresses go through
# the loopback device all the same, and both servers get the same path.
#
# A run that fails or cannot bring every flow up (e.g. a fan-out of 500 beyond what a server
# holds here) is printed as it went (flows up, loss, or FAILED with the reason), never fatal.
#
# Usage: scripts/bench-sfu.sh
# Environment (all optional):
#   SERVERS="turnkey janus"   servers, alternating order each round; "turnkey-base" is the
#                             `sfu` binary at BASE_SFU (an older build, for before/after)
#   BASE_SFU=                 path of that binary
#   ROUNDS=3                  rounds over all scenarios and servers
#   ROOMS=5                   rooms of 4 in the room scenario (20 participants); 0 skips it
#   FANOUTS="100 500"         subscribers of the fan-out scenarios
#   DURATION=10 WARMUP=1      measured seconds per run, and seconds of traffic before
#   SETUP_TIMEOUT=30          most seconds to wait for every flow (then measured anyway)
#   WORKERS=2                 sfu worker event loops; Janus gets as many `event_loops`
#   JANUS_EVENT_LOOPS=        override Janus's event_loops (0: its default, a thread per handle)
#   CLIENT_THREADS=1          sfu-bench client event loops
#   HOST_IP=                  media address of servers and clients (default: see above)
#   FIND_MAX=1                search each server's largest fan-out with loss < MAX_LOSS %:
#   MAX_LOSS=0.1              doubling from MAX_START, then bisecting down to MAX_RES
#   MAX_START=50 MAX_RES=25   subscribers; steps alternate between servers; at most MAX_SECS
#   MAX_SECS=300              seconds per server; MAX_FANOUT=2000 caps the doubling;
#   MAX_FANOUT=2000           MAX_DURATION=4 measured seconds per step
#   MAX_DURATION=4
#   EXTRA=                    more sfu-bench flags for every run (e.g. "--fps 15";
#                             "--srtp-aes-cm": clients offer only AES-CM, as Chromium ends up)
#   NO_BUILD=1                use the existing binaries
#   CARGO_TARGET_DIR          where the binaries are (default: target)
set -euo pipefail

cd "$(dirname "$0")/.."
SERVERS=${SERVERS:-"turnkey janus"}
ROUNDS=${ROUNDS:-3}
ROOMS=${ROOMS:-5}
FANOUTS=${FANOUTS:-"100 500"}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-30}
WORKERS=${WORKERS:-2}
JANUS_EVENT_LOOPS=${JANUS_EVENT_LOOPS:-}
CLIENT_THREADS=${CLIENT_THREADS:-1}
FIND_MAX=${FIND_MAX:-1}
MAX_LOSS=${MAX_LOSS:-0.1}
MAX_START=${MAX_START:-50}
MAX_RES=${MAX_RES:-25}
MAX_SECS=${MAX_SECS:-300}
MAX_FANOUT=${MAX_FANOUT:-2000}
MAX_DURATION=${MAX_DURATION:-4}
EXTRA=${EXTRA:-}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}

log() { echo "== $*" >&2; }

if [[ -z "${NO_BUILD:-}" ]]; then
    log "building release binaries"
    cargo build --release -p turnkey-bin --bin sfu --bin sfu-bench
fi
BENCH=$TARGET/release/sfu-bench
[[ -x $BENCH ]] || { echo "missing $BENCH" >&2; exit 1; }

WORK=$(mktemp -d /tmp/bench-sfu.XXXXXX)
RESULTS=$WORK/results.jsonl
MAXES=$WORK/max.jsonl
: >"$RESULTS"
: >"$MAXES"
trap 'echo "logs and raw results: $WORK" >&2' EXIT

if [[ " $SERVERS " == *" janus "* ]] && ! command -v janus >/dev/null; then
    log "installing janus"
    DEBIAN_FRONTEND=noninteractive apt-get install -y janus >"$WORK/apt.log" 2>&1 || {
        apt-get update >>"$WORK/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y janus >>"$WORK/apt.log" 2>&1
    } || log "could not install janus (see $WORK/apt.log); its runs will fail"
fi

if [[ -z ${HOST_IP:-} ]]; then
    HOST_IP=$(ip -4 -o addr show scope global up 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
    HOST_IP=${HOST_IP:-127.0.0.1}
fi

versions() {
    local v
    v="turnkey $("$BENCH" --version 2>/dev/null | awk '{print $2}')"
    if [[ " $SERVERS " == *" janus "* ]]; then
        v+="; janus $(dpkg-query -W -f='${Version}' janus 2>/dev/null || janus --version 2>/dev/null | sed -n 's/^Janus version: //p' | head -n1)"
    fi
    echo "$v"
}

# bench SERVER LABEL OUT SCENARIO-ARGS... : one sfu-bench run, one JSON line (or a failure line)
# appended to OUT with the label; prints a progress line.
bench() {
    local server=$1 label=$2 out=$3
    shift 3
    local kind=$server
    local args=()
    if [[ $server == turnkey-base ]]; then
        kind=turnkey
        args+=(--sfu-bin "${BASE_SFU:?BASE_SFU names the sfu binary of turnkey-base}")
    fi
    args+=(--server "$kind" --host-ip "$HOST_IP" --workers "$WORKERS"
        --client-threads "$CLIENT_THREADS" --setup-timeout "$SETUP_TIMEOUT" --json)
    [[ $server == janus && -n $JANUS_EVENT_LOOPS ]] && args+=(--janus-event-loops "$JANUS_EVENT_LOOPS")
    local err=$WORK/$server-$label.err json
    # shellcheck disable=SC2086
    if json=$(RUST_BACKTRACE=0 "$BENCH" "${args[@]}" "$@" $EXTRA 2>"$err") && [[ -n $json ]]; then
        jq -c --arg l "$label" --arg s "$server" '{label: $l} + . + {server: $s}' <<<"$json" >>"$out"
        jq -r '"   \(.server) \(.scenario): flows \(.flows_up)/\(.flows), loss \(.loss_percent * 1000 | round / 1000) %, \(.pps_per_sfu_core | floor) pkt/cpu-s, p50 \(.latency_p50_us) us, p99 \(.latency_p99_us) us"' <<<"$json" >&2
    else
        local why
        why=$(grep -v '^setup:' "$err" | tail -n 4 | tr -s '\n ' ' ' | cut -c1-240)
        log "$server $label failed: ${why:-no output}"
        jq -nc --arg s "$server" --arg l "$label" --arg why "${why:-no output}" \
            '{label: $l, server: $s, failed: true, why: $why}' >>"$out"
    fi
}

log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); media on $HOST_IP; $(versions)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
read -ra SERVER_LIST <<<"$SERVERS"
SCENARIOS=()
((ROOMS > 0)) && SCENARIOS+=("rooms")
for f in $FANOUTS; do SCENARIOS+=("fanout$f"); done
for round in $(seq "$ROUNDS"); do
    order=("${SERVER_LIST[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#SERVER_LIST[@]} - 1; i >= 0; i--)); do order+=("${SERVER_LIST[$i]}"); done
    fi
    for sc in "${SCENARIOS[@]}"; do
        for s in "${order[@]}"; do
            log "round $round: $s, $sc"
            if [[ $sc == rooms ]]; then
                bench "$s" "$sc" "$RESULTS" --rooms "$ROOMS" --room-size 4 --duration "$DURATION" --warmup "$WARMUP"
            else
                bench "$s" "$sc" "$RESULTS" --fanout "${sc#fanout}" --duration "$DURATION" --warmup "$WARMUP"
            fi
        done
    done
done

# Largest fan-out with loss < MAX_LOSS % and every flow up: per server, double from MAX_START
# while it holds, then bisect between the last that held and the first that did not until
# they are MAX_RES apart. Steps alternate between the servers; each server stops after MAX_SECS.
if [[ $FIND_MAX != 0 ]]; then
    declare -A LO=() HI=() NEXT=() SPENT=() STEPS=() STOPPED=()
    for s in "${SERVER_LIST[@]}"; do
        LO[$s]=0 HI[$s]=0 NEXT[$s]=$MAX_START SPENT[$s]=0 STEPS[$s]=0 STOPPED[$s]=""
    done
    step=0
    while :; do
        active=0
        order=("${SERVER_LIST[@]}")
        if ((step % 2 == 1)); then
            order=()
            for ((i = ${#SERVER_LIST[@]} - 1; i >= 0; i--)); do order+=("${SERVER_LIST[$i]}"); done
        fi
        for s in "${order[@]}"; do
            [[ -z ${STOPPED[$s]} ]] || continue
            if ((SPENT[$s] >= MAX_SECS)); then STOPPED[$s]="time (${MAX_SECS}s)"; continue; fi
            n=${NEXT[$s]}
            active=1
            log "find-max: $s at fan-out $n (held: ${LO[$s]}, failed: ${HI[$s]})"
            t0=$(date +%s)
            before=$(wc -l <"$MAXES")
            bench "$s" "max$n" "$MAXES" --fanout "$n" --duration "$MAX_DURATION" --warmup "$WARMUP"
            SPENT[$s]=$((SPENT[$s] + $(date +%s) - t0))
            STEPS[$s]=$((STEPS[$s] + 1))
            ((before < $(wc -l <"$MAXES"))) || continue
            if tail -n 1 "$MAXES" | jq -e --argjson m "$MAX_LOSS" \
                '(.failed | not) and .flows_up == .flows and .loss_percent < $m' >/dev/null; then
                LO[$s]=$n
            else
                HI[$s]=$n
            fi
            if ((HI[$s] == 0)); then
                if ((n >= MAX_FANOUT)); then STOPPED[$s]="cap ($MAX_FANOUT)"; else NEXT[$s]=$((n * 2 > MAX_FANOUT ? MAX_FANOUT : n * 2)); fi
            elif ((HI[$s] - LO[$s] <= MAX_RES)); then
                STOPPED[$s]="resolution ($MAX_RES)"
            else
                NEXT[$s]=$(((LO[$s] + HI[$s]) / 2))
            fi
        done
        step=$((step + 1))
        ((active)) || break
    done
fi

median='def median: map(select(. != null)) | sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;'
echo
echo "SFU side by side: $(versions); $(nproc) cores, load before $LOAD_BEFORE"
echo "media on $HOST_IP (both servers and all clients; local datagrams go over the loopback device); sfu --workers $WORKERS, janus event_loops ${JANUS_EVENT_LOOPS:-$WORKERS}; client threads $CLIENT_THREADS"
echo "load per publisher: VP8 30 fps x 3 packets of 1000 B + Opus 50 pps of 100 B; ${DURATION}s measured per run, $ROUNDS round(s), order alternating each round"
echo "  pkt/cpu-s = packets delivered to subscribers per CPU-second of the server process (all threads)"
echo "  p50/p99 = publish -> receive latency through the server (bench clock on both ends), microseconds"
echo "  sfu-p50/p99 = the SFU's own sfu_forwarding_delay_seconds over the window (read to send, turnkey only), microseconds"
echo "  KiB/sub = server RSS growth from idle to all connected (after the warm-up), per subscriber (rooms: per participant)"
echo "  KiB@load = the same at its peak under load (RSS read every 250 ms through the window): buffers that fill while media flows"
echo "  anon/sub, anon@load = the same without file-backed pages (code run for the first time is a fixed cost, not per-subscriber state)"
echo "  medians over the rounds; 't/j' = turnkey / janus (pkt/cpu-s: >1 is turnkey better; latency, KiB/sub: <1 is turnkey better)"
echo
fmt="%-14s %-12s %5s %11s %8s %11s %8s %8s %8s %8s %9s %9s %9s %9s %8s %7s\n"
# shellcheck disable=SC2059
printf "$fmt" scenario server runs flows loss% pkt/cpu-s p50us p99us sfu-p50 sfu-p99 KiB/sub KiB@load anon/sub anon@load srvcpu% setup-s
jq -rs "$median"'
    def r(n): if . == null then "-" else (. * pow(10; n) | round / pow(10; n) | tostring) end;
    def ratio(a; b): if a != null and b != null and b > 0 then (a / b * 100 | round / 100 | tostring) else "-" end;
    group_by(.label) | sort_by(.[0].label | if . == "rooms" then 0 else (ltrimstr("fanout") | tonumber) end)[]
    | . as $all | ($all[0].label) as $lab
    | [ $all | group_by(.server)[] | . as $runs | ($runs | map(select(.failed | not))) as $ok
        | { server: $runs[0].server, runs: "\($ok | length)/\($runs | length)",
            scenario: ($ok[0].scenario // ($lab | if startswith("fanout") then "fanout 1->" + ltrimstr("fanout") else . end)),
            flows: (if ($ok | length) > 0 then "\($ok | map(.flows_up) | min)/\($ok[0].flows)" else "-" end),
            loss: ($ok | map(.loss_percent) | median), pps: ($ok | map(.pps_per_sfu_core) | median),
            p50: ($ok | map(.latency_p50_us) | median), p99: ($ok | map(.latency_p99_us) | median),
            kib: ($ok | map(.sfu_rss_per_subscriber_bytes / 1024) | median),
            kibload: ($ok | map(.sfu_rss_peak_per_subscriber_bytes / 1024) | median),
            anonload: ($ok | map(.sfu_rss_anon_peak_per_subscriber_bytes / 1024) | median),
            anon: ($ok | map(.sfu_rss_anon_per_subscriber_bytes // null | if . == null then null else . / 1024 end) | median),
            fp50: ($ok | map(.sfu_delay_p50_us) | median), fp99: ($ok | map(.sfu_delay_p99_us) | median),
            cpu: ($ok | map(.sfu_cpu_percent) | median), setup: ($ok | map(.setup_secs) | median),
            why: ($runs | map(select(.failed) | .why) | first) } ]
    | sort_by(if .server == "turnkey" then 0 else 1 end)
    | (map({(.server): .}) | add) as $by
    | (.[] | [.scenario, .server, .runs, .flows, (.loss | r(3)), (.pps | r(0)), (.p50 | r(0)), (.p99 | r(0)),
              (.fp50 | r(0)), (.fp99 | r(0)), (.kib | r(1)), (.kibload | r(1)), (.anon | r(1)), (.anonload | r(1)), (.cpu | r(1)), (.setup | r(1)),
              (.why // "")] | join("\u001f")),
      (if $by.turnkey and $by.janus then
         ["", "t/j", "", "", "", ratio($by.turnkey.pps; $by.janus.pps), ratio($by.turnkey.p50; $by.janus.p50),
          ratio($by.turnkey.p99; $by.janus.p99), "", "", ratio($by.turnkey.kib; $by.janus.kib),
          ratio($by.turnkey.kibload; $by.janus.kibload), ratio($by.turnkey.anon; $by.janus.anon),
          ratio($by.turnkey.anonload; $by.janus.anonload), "", "", ""] | join("\u001f")
       else empty end),
      (if $by.turnkey and $by["turnkey-base"] then
         ["", "t/base", "", "", "", ratio($by.turnkey.pps; $by["turnkey-base"].pps),
          ratio($by.turnkey.p50; $by["turnkey-base"].p50), ratio($by.turnkey.p99; $by["turnkey-base"].p99),
          "", "", ratio($by.turnkey.kib; $by["turnkey-base"].kib),
          ratio($by.turnkey.kibload; $by["turnkey-base"].kibload), ratio($by.turnkey.anon; $by["turnkey-base"].anon),
          ratio($by.turnkey.anonload; $by["turnkey-base"].anonload), "", "", ""] | join("\u001f")
       else empty end)' "$RESULTS" |
    while IFS=$'\x1f' read -r scenario server runs flows loss pps p50 p99 fp50 fp99 kib kibload anon anonload cpu setup why; do
        # shellcheck disable=SC2059
        printf "$fmt" "$scenario" "$server" "$runs" "$flows" "$loss" "$pps" "$p50" "$p99" "$fp50" "$fp99" "$kib" "$kibload" "$anon" "$anonload" "$cpu" "$setup"
        [[ -z $why ]] || echo "    FAILED: $why"
    done

if [[ $FIND_MAX != 0 && -s $MAXES ]]; then
    echo
    echo "largest fan-out (1 publisher -> N subscribers) with loss < $MAX_LOSS % and every flow up: doubling from $MAX_START, then bisecting to $MAX_RES; ${MAX_DURATION}s per step, at most ${MAX_SECS}s per server"
    fmt2="%-8s %8s %13s %8s %8s %11s %6s  %s\n"
    # shellcheck disable=SC2059
    printf "$fmt2" server max-held first-failed p50us p99us pkt/cpu-s steps "steps (fan-out: loss %, flows up)"
    for s in "${SERVER_LIST[@]}"; do
        # Figures of the step at the largest fan-out that held.
        read -r mp50 mp99 mpps < <(jq -rs --arg s "$s" --arg l "max${LO[$s]}" \
            '[.[] | select(.server == $s and .label == $l and (.failed | not))] | last
             | if . == null then "- - -" else "\(.latency_p50_us) \(.latency_p99_us) \(.pps_per_sfu_core | floor)" end' "$MAXES")
        trail=$(jq -rs --arg s "$s" 'map(select(.server == $s))[] |
            if .failed then "\(.label | ltrimstr("max")): FAILED"
            else "\(.label | ltrimstr("max")): \(.loss_percent * 100 | round / 100)% \(.flows_up)/\(.flows)" end' "$MAXES" | paste -sd, - | sed 's/,/, /g')
        # shellcheck disable=SC2059
        printf "$fmt2" "$s" "${LO[$s]}" "$( ((HI[$s] > 0)) && echo "${HI[$s]}" || echo "-")" "$mp50" "$mp99" "$mpps" \
            "${STEPS[$s]}" "$trail (stopped: ${STOPPED[$s]:-done})"
    done
    if [[ -n ${LO[turnkey]:-} && -n ${LO[janus]:-} ]] && ((LO[janus] > 0)); then
        echo "t/j max fan-out: $(awk -v a="${LO[turnkey]}" -v b="${LO[janus]}" 'BEGIN { printf "%.2f", a / b }')"
    fi
fi
