#!/usr/bin/env bash
# Builds the newest coturn release from source and installs it into a prefix, for
# `COTURN_NEWEST=... scripts/bench-vs-coturn.sh` (servers `coturn-new`, `coturn-new-mux`).
#
# Usage: scripts/build-coturn.sh [COTURN_SRC]
#   COTURN_SRC   a coturn git checkout or bare git directory (argument or environment). Anywhere
#                with network access: `git clone https://github.com/coturn/coturn`. On the
#                project's build machine (no GitHub access) it is the mirror the session's
#                `fetch` tool makes of coturn/coturn: /work/.mirror/coturn+coturn/repo (bare).
# Environment (all optional):
#   PREFIX=/opt/coturn-newest      where to install (bin/turnserver lands in $PREFIX/bin)
#   BUILD_DIR=/tmp/coturn-build    where the release tree is unpacked and built (deleted first)
#   TAG=                           a release tag to build instead of the newest (e.g. 4.17.1)
#   JOBS=$(nproc)                  make -j
#
# Steps: Debian build dependencies (apt-get update only when something is missing, then
# install only the missing ones), newest release tag (plain N.N.N tags; the docker/* tags are
# skipped), `git archive` of that tag into BUILD_DIR, cmake Release build, install into PREFIX.
set -euo pipefail

SRC=${1:-${COTURN_SRC:-}}
PREFIX=${PREFIX:-/opt/coturn-newest}
BUILD_DIR=${BUILD_DIR:-/tmp/coturn-build}
JOBS=${JOBS:-$(nproc)}
[[ -n $SRC ]] || { echo "usage: $0 COTURN_SRC (a coturn git checkout or bare repository)" >&2; exit 2; }
git --git-dir="$SRC/.git" rev-parse >/dev/null 2>&1 && GIT_DIR_OF_SRC="$SRC/.git" || GIT_DIR_OF_SRC="$SRC"
git --git-dir="$GIT_DIR_OF_SRC" rev-parse >/dev/null 2>&1 || { echo "$SRC is not a git repository" >&2; exit 2; }

log() { echo "== $*" >&2; }

# Debian build dependencies, skipping what is installed.
DEPS=(libevent-dev libssl-dev libmicrohttpd-dev cmake pkg-config build-essential)
missing=()
for p in "${DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
else
    log "build dependencies present"
fi

# The newest release: the highest version among tags that are plain N.N.N.
if [[ -z ${TAG:-} ]]; then
    TAG=$(git --git-dir="$GIT_DIR_OF_SRC" tag --list | grep -E '^[0-9]+\.[0-9]+\.[0-9]+$' | sort -V | tail -n1)
fi
[[ -n $TAG ]] || { echo "no release tag (N.N.N) in $SRC" >&2; exit 1; }
log "coturn release $TAG ($(git --git-dir="$GIT_DIR_OF_SRC" rev-parse --short "$TAG^{commit}"))"
echo "coturn $TAG"

rm -rf "$BUILD_DIR"
mkdir -p "$BUILD_DIR/src"
git --git-dir="$GIT_DIR_OF_SRC" archive "$TAG" | tar -x -C "$BUILD_DIR/src"
cmake -S "$BUILD_DIR/src" -B "$BUILD_DIR/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" >"$BUILD_DIR/cmake.log" 2>&1 ||
    { tail -n 30 "$BUILD_DIR/cmake.log" >&2; exit 1; }
log "building (make -j$JOBS; log in $BUILD_DIR/make.log)"
cmake --build "$BUILD_DIR/build" -j "$JOBS" >"$BUILD_DIR/make.log" 2>&1 ||
    { tail -n 30 "$BUILD_DIR/make.log" >&2; exit 1; }
cmake --install "$BUILD_DIR/build" >"$BUILD_DIR/install.log" 2>&1 ||
    { tail -n 30 "$BUILD_DIR/install.log" >&2; exit 1; }
# coturn's install rule leaves the binaries without the execute bit on this cmake and turnadmin
# as an absolute symlink into the build tree: make them standalone.
chmod 755 "$PREFIX"/bin/*
if [[ -L $PREFIX/bin/turnadmin ]]; then ln -sfn turnserver "$PREFIX/bin/turnadmin"; fi
log "installed $PREFIX/bin/turnserver, version $("$PREFIX/bin/turnserver" --version 2>/dev/null | head -n1)"
# The batching flags this release has (bench-vs-coturn.sh's coturn-new and coturn-new-mux use
# those that exist).
help=$("$PREFIX/bin/turnserver" --help 2>&1 || true)
for flag in udp-recvmmsg udp-sendmmsg-log udp-gso multiplex-peer; do
    if grep -q -- "--$flag\b" <<<"$help"; then log "has --$flag"; else log "no --$flag"; fi
done
