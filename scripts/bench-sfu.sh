#!/usr/bin/env bash
# SFU load benchmark: the turnkey `sfu` node on loopback, driven by sfu-bench's webrtc-rs
# publishers and subscribers (full ICE, DTLS-SRTP). Two runs: rooms of 4 (everyone publishes
# VP8 + Opus and subscribes to the other 3) and one publisher fanned out to many subscribers.
# Prints figures; asserts nothing.
#
# sfu-bench starts and stops the `sfu` binary itself (next to sfu-bench in the target dir), on
# free 127.0.0.1 ports, and reads the child's CPU time and RSS from /proc.
#
# Usage: scripts/bench-sfu.sh
# Environment (all optional):
#   ROOMS=5              rooms of 4 in the first run (20 participants)
#   FANOUT=100           subscribers in the second run
#   DURATION=10          measured seconds per run
#   WORKERS=2            sfu worker event loops
#   CLIENT_THREADS=1     sfu-bench client event loops
#   EXTRA=               more sfu-bench flags for both runs (e.g. "--fps 15")
#   NO_BUILD=1           use the existing binaries
#   CARGO_TARGET_DIR     where the binaries are (default: target)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOMS=${ROOMS:-5}
FANOUT=${FANOUT:-100}
DURATION=${DURATION:-10}
WORKERS=${WORKERS:-2}
CLIENT_THREADS=${CLIENT_THREADS:-1}
EXTRA=${EXTRA:-}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}

if [[ -z "${NO_BUILD:-}" ]]; then
    echo "== building release binaries" >&2
    cargo build --release -p turnkey-bin --bin sfu --bin sfu-bench
fi
BENCH=$TARGET/release/sfu-bench
[[ -x $BENCH && -x $TARGET/release/sfu ]] || { echo "missing $BENCH or sfu" >&2; exit 1; }

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
common=(--duration "$DURATION" --workers "$WORKERS" --client-threads "$CLIENT_THREADS")
# shellcheck disable=SC2086
"$BENCH" --rooms "$ROOMS" --room-size 4 "${common[@]}" $EXTRA
echo
# shellcheck disable=SC2086
"$BENCH" --fanout "$FANOUT" "${common[@]}" $EXTRA
