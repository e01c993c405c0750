#!/usr/bin/env bash
# Static binaries for devices and containers, into dist/ (gitignored):
#
#   bash scripts/dist.sh                        # x86_64 and aarch64, profile `edge` (fat LTO)
#   bash scripts/dist.sh --profile edge-ci      # faster build (thin LTO), what CI uses
#   bash scripts/dist.sh --target aarch64       # one target (x86_64 | aarch64), repeatable
#
# Produces dist/fxbridge-<arch>-linux-musl (statically linked, stripped) and
# dist/SHA256SUMS. Installs what a fresh machine lacks: the rustup targets and
# two PyPI packages, `ziglang` (the Zig toolchain, which carries musl's headers
# and C library for every target) and `cargo-zigbuild` (runs cargo with `zig cc`
# as the C compiler and linker).
#
# Why Zig: mimalloc and ring have C (and ring assembly) that must be compiled
# for the target's musl. Debian 12 has musl-gcc for the host only (musl-tools)
# and no aarch64 musl C compiler; gcc-aarch64-linux-gnu compiles against glibc's
# headers, and musl-dev:arm64 would need `dpkg --add-architecture`, which breaks
# `apt-get update` here. Zig compiles and links C for x86_64 and aarch64 musl
# alike from one pip package, with no root and no apt state. Measured on this
# 2-core machine (README, "Static builds and containers"): the same toolchain
# for both targets, and no slower than musl-gcc for x86_64.
#
# The build uses its own target directory (target/dist) and runs at lower
# priority, so it does not hold the lock of target/ or starve other builds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

profile=edge
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --target) targets+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "dist.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ ${#targets[@]} -eq 0 ]] && targets=(x86_64 aarch64)

# Pinned: the versions this was measured with.
ZIGLANG_VERSION=0.17.1
ZIGBUILD_VERSION=0.24.1

triples=()
for t in "${targets[@]}"; do
  case "$t" in
    x86_64|aarch64) triples+=("$t-unknown-linux-musl") ;;
    *) echo "dist.sh: unsupported target $t (x86_64 or aarch64; armv7: see the README)" >&2; exit 2 ;;
  esac
done

installed_targets="$(rustup target list --installed)"
for triple in "${triples[@]}"; do
  if ! grep -qx "$triple" <<<"$installed_targets"; then
    log "rustup target add $triple"
    rustup target add "$triple"
  fi
done

# The `ziglang` package is found by cargo-zigbuild through `python3 -m ziglang`.
if ! command -v cargo-zigbuild >/dev/null 2>&1 || ! python3 -m ziglang version >/dev/null 2>&1; then
  log "installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $ZIGBUILD_VERSION (PyPI)"
  PIP=(python3 -m pip)
  if ! "${PIP[@]}" --version >/dev/null 2>&1; then
    SUDO=""
    [[ "$(id -u)" != 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip
  fi
  # Debian's own python3 refuses system-wide installs (PEP 668) unless told.
  "${PIP[@]}" install -q "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION" 2>/dev/null \
    || "${PIP[@]}" install -q --break-system-packages "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
  hash -r
fi

if ! command -v readelf >/dev/null 2>&1; then
  SUDO=""
  [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq binutils
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/dist}"
mkdir -p dist
for triple in "${triples[@]}"; do
  arch="${triple%%-*}"
  log "building fxbridge for $triple (profile $profile)"
  start=$(date +%s)
  # Without the `wasmtime-extras` fxbridge does not use, with `edge` (Cargo.toml's [features]).
  nice -n 10 cargo zigbuild --locked --quiet --profile "$profile" --target "$triple" \
    -p fxbridge --bin fxbridge --no-default-features --features edge
  out="dist/fxbridge-$arch-linux-musl"
  cp "$CARGO_TARGET_DIR/$triple/$profile/fxbridge" "$out"
  # Static: no program interpreter, no shared libraries.
  if readelf -lW "$out" | grep -q 'INTERP' || readelf -dW "$out" | grep -q 'NEEDED'; then
    echo "dist.sh: $out is not statically linked" >&2
    exit 1
  fi
  log "$out: $(stat -c %s "$out") bytes, built in $(($(date +%s) - start)) s"
done
(cd dist && sha256sum fxbridge-*-linux-musl >SHA256SUMS)
