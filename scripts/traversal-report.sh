#!/usr/bin/env bash
# NAT traversal report: bash scripts/traversal-report.sh
#
# Builds the NAT lab of tests/nat_lab.rs (network namespaces, veth pairs and iptables in the
# documentation ranges; needs root), runs two aiortc peers (tests/aiortc/p2p_pair.py) through
# our signaling for every NAT pair x {STUN only, TURN/UDP, TURN/TCP, TURN/TLS when turn-server
# has --tls-listen}, and prints a Markdown table: connected or not, direct or relayed, the
# selected candidate pair as the offerer's aioice sees it (local→remote; aioice reports a local
# candidate reached through its NAT by its base, "host"), and the time from the offer to the
# first data-channel round trip. Takes a few minutes; tears the lab down itself.
#
# Needs what `bash scripts/test.sh` installs (coturn tools, the aiortc venv: set TURNKEY_PYTHON
# if it is not in /opt/turnkey-venv or ~/.cache/turnkey-venv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOCKED=()
[ -f Cargo.lock ] && LOCKED=(--locked)

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo build "${LOCKED[@]}" --quiet --workspace --bins
if ! cargo test "${LOCKED[@]}" --quiet --test nat_lab -- --exact traversal_report \
  --nocapture >"$log" 2>&1; then
  cat "$log" >&2
  echo "traversal report failed" >&2
  exit 1
fi
if grep -q '^SKIPPED:' "$log"; then
  grep '^SKIPPED:' "$log" >&2
  exit 1
fi
echo "NAT traversal matrix ($(date -u +%Y-%m-%d), turnkey lab: aiortc peers, our signaling, stun-server, turn-server)"
echo
sed -n '/^TABLE-BEGIN$/,/^TABLE-END$/p' "$log" | sed '1d;$d'
grep '^(turn-server has no --tls-listen' "$log" || true
