#!/usr/bin/env bash
# The deployment topology of deploy/docker-compose.yml without Docker, on loopback:
#   redis-server, turn-server, two signaling nodes sharing Redis, one sfu node registered in
#   Redis, and Prometheus scraping all of them every second.
#
#   bash scripts/stack.sh start    # starts everything, waits until each answers, prints addresses
#   bash scripts/stack.sh status   # prints the addresses and whether each process is alive
#   bash scripts/stack.sh stop     # stops what `start` started (by the pids it recorded)
#
# Needs: the workspace binaries (cargo build --workspace --bins), Debian's redis-server and
# prometheus packages. Every process runs in the foreground of its own session, logs to
# $STACK_DIR/<name>.log and has its pid in $STACK_DIR/<name>.pid. `start` also writes
# $STACK_DIR/stack.env, one NAME=VALUE line per address and secret, to be sourced by scripts
# and read by tests/deploy_stack.rs.
#
# Everything is configurable through the environment (defaults in brackets):
#   STACK_DIR            state directory              [${TMPDIR:-/tmp}/turnkey-stack]
#   STACK_BIN_DIR        where the binaries are       [${CARGO_TARGET_DIR:-<repo>/target}/debug]
#   STACK_IP             address everything binds     [127.0.0.1]
#   STACK_REDIS_PORT     Redis                        [18379]
#   STACK_TURN_PORT      TURN/STUN, UDP and TCP       [18478]
#   STACK_TURN_METRICS   turn-server metrics port     [18641]
#   STACK_RELAY_MIN/MAX  TURN relay port range        [19000-19499]
#   STACK_SIG1_PORT / STACK_SIG1_METRICS   signaling node 1   [18080 / 18643]
#   STACK_SIG2_PORT / STACK_SIG2_METRICS   signaling node 2   [18081 / 18644]
#   STACK_SFU_MEDIA      SFU media UDP (+ worker i) and ICE-TCP port   [18700]
#   STACK_SFU_WORKERS    SFU workers (media ports STACK_SFU_MEDIA..+N-1) [1]
#   STACK_SFU_LINK       SFU link listener            [18090]
#   STACK_SFU_METRICS    SFU metrics port             [18645]
#   STACK_PROM_PORT      Prometheus web/API           [18900]
#   STACK_SCRAPE_INTERVAL Prometheus scrape interval  [1s]
#   STACK_API_KEY        signaling API key KEY:SECRET [stack:stack-api-secret]
#   STACK_TURN_SECRET    TURN REST secret (turn-server and signaling)   [stack-turn-secret]
#   STACK_TURN_USER      static TURN user NAME:PASSWORD                 [stack:stack-password]
#   STACK_SFU_SECRET     signaling <-> SFU link secret                  [stack-sfu-secret]
#   STACK_ALLOW_PEER     --allow-peer of turn-server ("" for none)      [127.0.0.0/8]
#
# The default ports (18000-19999) are below Linux's ephemeral range (32768-60999), away from
# the ports the tests hand out (20000-32000) and from turnkey's defaults.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

STACK_DIR=${STACK_DIR:-${TMPDIR:-/tmp}/turnkey-stack}
STACK_BIN_DIR=${STACK_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
IP=${STACK_IP:-127.0.0.1}
REDIS_PORT=${STACK_REDIS_PORT:-18379}
TURN_PORT=${STACK_TURN_PORT:-18478}
TURN_METRICS=${STACK_TURN_METRICS:-18641}
RELAY_MIN=${STACK_RELAY_MIN:-19000}
RELAY_MAX=${STACK_RELAY_MAX:-19499}
SIG1_PORT=${STACK_SIG1_PORT:-18080}
SIG1_METRICS=${STACK_SIG1_METRICS:-18643}
SIG2_PORT=${STACK_SIG2_PORT:-18081}
SIG2_METRICS=${STACK_SIG2_METRICS:-18644}
SFU_MEDIA=${STACK_SFU_MEDIA:-18700}
SFU_WORKERS=${STACK_SFU_WORKERS:-1}
SFU_LINK=${STACK_SFU_LINK:-18090}
SFU_METRICS=${STACK_SFU_METRICS:-18645}
PROM_PORT=${STACK_PROM_PORT:-18900}
SCRAPE_INTERVAL=${STACK_SCRAPE_INTERVAL:-1s}
API_KEY=${STACK_API_KEY:-stack:stack-api-secret}
TURN_SECRET=${STACK_TURN_SECRET:-stack-turn-secret}
TURN_USER=${STACK_TURN_USER:-stack:stack-password}
SFU_SECRET=${STACK_SFU_SECRET:-stack-sfu-secret}
ALLOW_PEER=${STACK_ALLOW_PEER-127.0.0.0/8}

# Start order; stop goes the other way.
NAMES=(redis turn sfu signaling-1 signaling-2 prometheus)
READY_TIMEOUT=30

die() {
  echo "stack.sh: $*" >&2
  exit 1
}

# http_status PORT PATH: the HTTP status code of GET http://$IP:PORT/PATH, or 000.
http_status() {
  local port=$1 path=$2 line
  if ! { exec 3<>"/dev/tcp/$IP/$port"; } 2>/dev/null; then
    echo 000
    return
  fi
  printf 'GET %s HTTP/1.0\r\nHost: %s:%s\r\n\r\n' "$path" "$IP" "$port" >&3
  line=""
  IFS= read -r -t 5 line <&3 || true
  exec 3>&- 3<&-
  line=${line#HTTP/* }
  echo "${line:0:3}"
}

redis_ready() {
  local reply=""
  { exec 3<>"/dev/tcp/$IP/$REDIS_PORT"; } 2>/dev/null || return 1
  # shellcheck disable=SC2016 # RESP, not a shell variable
  printf '*1\r\n$4\r\nPING\r\n' >&3
  IFS= read -r -t 2 reply <&3 || true
  exec 3>&- 3<&-
  [ "${reply%$'\r'}" = "+PONG" ]
}

alive() {
  local pidfile="$STACK_DIR/$1.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# spawn NAME CMD...: runs CMD in its own session, logging to $STACK_DIR/NAME.log.
spawn() {
  local name=$1
  shift
  if alive "$name"; then
    die "$name is already running (pid $(cat "$STACK_DIR/$name.pid")); run: $0 stop"
  fi
  setsid "$@" >"$STACK_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$STACK_DIR/$name.pid"
}

# wait_ready NAME CHECK...: polls CHECK until it succeeds, the process dies or time runs out.
wait_ready() {
  local name=$1 deadline=$((SECONDS + READY_TIMEOUT))
  shift
  until "$@"; do
    if ! alive "$name"; then
      echo "stack.sh: $name exited before it was ready; the end of its log:" >&2
      tail -n 30 "$STACK_DIR/$name.log" >&2 || true
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "stack.sh: $name not ready after ${READY_TIMEOUT}s; the end of its log:" >&2
      tail -n 30 "$STACK_DIR/$name.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
}

healthz() { [ "$(http_status "$1" /healthz)" = 200 ]; }
prom_ready() { [ "$(http_status "$PROM_PORT" /-/ready)" = 200 ]; }

bin() {
  local path="$STACK_BIN_DIR/$1"
  [ -x "$path" ] || die "$path missing: run cargo build --workspace --bins (or set STACK_BIN_DIR)"
  echo "$path"
}

tool() {
  command -v "$1" 2>/dev/null || die "$1 missing: apt-get install $2 (bash scripts/test.sh installs it)"
}

write_prometheus_config() {
  cat >"$STACK_DIR/prometheus.yml" <<EOF
# Generated by scripts/stack.sh; the deploy/prometheus/prometheus.yml jobs, on loopback.
global:
  scrape_interval: $SCRAPE_INTERVAL
  evaluation_interval: $SCRAPE_INTERVAL
scrape_configs:
  - job_name: turn
    static_configs:
      - targets: ["$IP:$TURN_METRICS"]
  - job_name: signaling
    static_configs:
      - targets: ["$IP:$SIG1_METRICS", "$IP:$SIG2_METRICS"]
  - job_name: sfu
    static_configs:
      - targets: ["$IP:$SFU_METRICS"]
  - job_name: prometheus
    static_configs:
      - targets: ["$IP:$PROM_PORT"]
EOF
}

write_env() {
  cat >"$STACK_DIR/stack.env" <<EOF
STACK_DIR=$STACK_DIR
REDIS_URL=redis://$IP:$REDIS_PORT/
TURN_ADDR=$IP:$TURN_PORT
TURN_METRICS=$IP:$TURN_METRICS
TURN_RELAY_PORTS=$RELAY_MIN-$RELAY_MAX
TURN_USER=$TURN_USER
TURN_SECRET=$TURN_SECRET
SIGNALING_1=http://$IP:$SIG1_PORT
SIGNALING_1_METRICS=$IP:$SIG1_METRICS
SIGNALING_2=http://$IP:$SIG2_PORT
SIGNALING_2_METRICS=$IP:$SIG2_METRICS
API_KEY=$API_KEY
SFU_MEDIA=$IP:$SFU_MEDIA
SFU_LINK=ws://$IP:$SFU_LINK
SFU_METRICS=$IP:$SFU_METRICS
PROMETHEUS=http://$IP:$PROM_PORT
EOF
}

start() {
  mkdir -p "$STACK_DIR"
  local redis_server prometheus turn_server signaling sfu
  redis_server=$(tool redis-server redis-server)
  prometheus=$(tool prometheus prometheus)
  turn_server=$(bin turn-server)
  signaling=$(bin signaling)
  sfu=$(bin sfu)
  export RUST_LOG=${RUST_LOG:-info}
  # If anything below fails (die, a server that never gets ready), stop what was started.
  STARTED=0
  trap 'if [ "$STARTED" != 1 ]; then stop >/dev/null 2>&1 || true; fi' EXIT

  mkdir -p "$STACK_DIR/redis"
  spawn redis "$redis_server" --bind "$IP" --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize no --protected-mode yes --dir "$STACK_DIR/redis"
  wait_ready redis redis_ready

  local turn_args=(--listen "$IP:$TURN_PORT" --relay-ip "$IP" --min-port "$RELAY_MIN"
    --max-port "$RELAY_MAX" --realm turnkey --user "$TURN_USER" --auth-secret "$TURN_SECRET"
    --metrics "$IP:$TURN_METRICS")
  if [ -n "$ALLOW_PEER" ]; then turn_args+=(--allow-peer "$ALLOW_PEER"); fi
  spawn turn "$turn_server" "${turn_args[@]}"
  wait_ready turn healthz "$TURN_METRICS"

  spawn sfu "$sfu" --media-listen "$IP:$SFU_MEDIA" --workers "$SFU_WORKERS" \
    --link-listen "$IP:$SFU_LINK" --public-url "ws://$IP:$SFU_LINK" --sfu-secret "$SFU_SECRET" \
    --redis "redis://$IP:$REDIS_PORT/" --node-id stack-sfu-1 --metrics "$IP:$SFU_METRICS"
  wait_ready sfu healthz "$SFU_METRICS"

  local n port metrics
  for n in 1 2; do
    if [ "$n" = 1 ]; then port=$SIG1_PORT metrics=$SIG1_METRICS; else port=$SIG2_PORT metrics=$SIG2_METRICS; fi
    spawn "signaling-$n" "$signaling" --listen "$IP:$port" --public-url "http://$IP:$port" \
      --api-key "$API_KEY" --turn-secret "$TURN_SECRET" \
      --turn-uri "stun:$IP:$TURN_PORT" --turn-uri "turn:$IP:$TURN_PORT?transport=udp" \
      --turn-uri "turn:$IP:$TURN_PORT?transport=tcp" \
      --redis "redis://$IP:$REDIS_PORT/" --node-id "stack-sig-$n" --sfu-secret "$SFU_SECRET" \
      --metrics "$IP:$metrics"
    wait_ready "signaling-$n" healthz "$metrics"
  done

  write_prometheus_config
  mkdir -p "$STACK_DIR/prometheus-data"
  spawn prometheus "$prometheus" --config.file "$STACK_DIR/prometheus.yml" \
    --storage.tsdb.path "$STACK_DIR/prometheus-data" --web.listen-address "$IP:$PROM_PORT" \
    --storage.tsdb.retention.time 1d
  wait_ready prometheus prom_ready
  STARTED=1

  write_env
  echo "turnkey stack running (state and logs in $STACK_DIR; stop with: $0 stop)"
  cat "$STACK_DIR/stack.env"
}

stop() {
  local i name pid
  for ((i = ${#NAMES[@]} - 1; i >= 0; i--)); do
    name=${NAMES[i]}
    [ -f "$STACK_DIR/$name.pid" ] || continue
    pid=$(cat "$STACK_DIR/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      # Servers drain for a bounded time after SIGTERM; then force.
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$pid" 2>/dev/null || true
      echo "stopped $name (pid $pid)"
    fi
    rm -f "$STACK_DIR/$name.pid"
  done
  rm -rf "$STACK_DIR/prometheus-data" "$STACK_DIR/redis" "$STACK_DIR/stack.env"
}

status() {
  local name
  [ -f "$STACK_DIR/stack.env" ] && cat "$STACK_DIR/stack.env"
  for name in "${NAMES[@]}"; do
    if alive "$name"; then
      echo "$name: running (pid $(cat "$STACK_DIR/$name.pid"))"
    else
      echo "$name: not running"
    fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|status (configuration: see the top of this file)" >&2
    exit 2
    ;;
esac
