#!/usr/bin/env bash
# The component `fxbridge demo` carries in its binary: plugins/prebuilt/
# sensor-normalize.wasm, built from plugins/sensor-normalize by this script.
#
# It is committed (213 KB) so that the README's first command works on a fresh
# machine without a WebAssembly toolchain (building it there would add the
# wasm32-wasip2 target and a minute of compiling before the demo starts). The
# build is reproducible: paths are remapped, dependencies are locked, and
# BUILT_WITH records the toolchain and a hash of every input.
#
#   bash plugins/prebuilt/build.sh           # rebuild; replace the .wasm and BUILT_WITH
#   bash plugins/prebuilt/build.sh --check   # rebuild and compare (CI)
#
# --check fails when the sources changed since the committed build (rebuild
# and commit), or when the same toolchain produces different bytes (the build
# is not reproducible). With another rustc the bytes may legitimately differ:
# then it says so and checks the committed component's behaviour instead, with
# sensor-normalize's cases.yaml.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PLUGINS="$(dirname "$HERE")"
ROOT="$(dirname "$PLUGINS")"
WASM="$HERE/sensor-normalize.wasm"
RECORD="$HERE/BUILT_WITH"
MODE="${1:-build}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'prebuilt/build.sh: %s\n' "$*" >&2; exit 1; }

# Every input of the build, hashed (file names and contents, sorted).
inputs_hash() {
  (cd "$ROOT" && find plugins/sensor-normalize plugins/fxbridge-plugin wit \
      -type f \( -name '*.rs' -o -name '*.toml' -o -name '*.wit' \) -print0 \
    | sort -z | xargs -0 sha256sum; sha256sum plugins/Cargo.toml plugins/Cargo.lock) \
    | sha256sum | cut -d' ' -f1
}

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  log "adding Rust target wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

cargo_home="${CARGO_HOME:-$HOME/.cargo}"
target_dir="$PLUGINS/target/prebuilt"
log "building sensor-normalize reproducibly (paths remapped, --locked)"
(cd "$PLUGINS" && RUSTFLAGS="--remap-path-prefix=$PLUGINS=/fxbridge/plugins --remap-path-prefix=$cargo_home=/cargo" \
  CARGO_TARGET_DIR="$target_dir" \
  cargo build --quiet --locked --release --target wasm32-wasip2 -p sensor-normalize)
built="$target_dir/wasm32-wasip2/release/sensor_normalize.wasm"

rustc_version="$(rustc --version)"
inputs="$(inputs_hash)"
built_sha="$(sha256sum "$built" | cut -d' ' -f1)"

if [[ "$MODE" != "--check" ]]; then
  cp "$built" "$WASM"
  printf 'rustc: %s\ninputs: %s\nsha256: %s\n' "$rustc_version" "$inputs" "$built_sha" >"$RECORD"
  log "wrote $WASM (sha256 $built_sha) and $RECORD"
  exit 0
fi

[[ -f "$WASM" && -f "$RECORD" ]] || die "no committed build: run bash plugins/prebuilt/build.sh"
recorded_rustc="$(sed -n 's/^rustc: //p' "$RECORD")"
recorded_inputs="$(sed -n 's/^inputs: //p' "$RECORD")"
recorded_sha="$(sed -n 's/^sha256: //p' "$RECORD")"
committed_sha="$(sha256sum "$WASM" | cut -d' ' -f1)"

[[ "$committed_sha" == "$recorded_sha" ]] \
  || die "sensor-normalize.wasm ($committed_sha) is not the build BUILT_WITH records ($recorded_sha)"
[[ "$inputs" == "$recorded_inputs" ]] \
  || die "plugins/sensor-normalize (or the helper crate, the WIT, the lock file) changed since the committed build: run bash plugins/prebuilt/build.sh and commit"
if [[ "$rustc_version" == "$recorded_rustc" ]]; then
  [[ "$built_sha" == "$committed_sha" ]] \
    || die "the same sources and toolchain ($rustc_version) built $built_sha, not the committed $committed_sha: the build is not reproducible"
  log "reproduced: $committed_sha with $rustc_version"
else
  log "toolchain differs (committed with '$recorded_rustc', here '$rustc_version'): built $built_sha; checking the committed component's behaviour instead"
fi
cargo build --quiet --manifest-path "$ROOT/Cargo.toml" --bin fxbridge
"$ROOT/target/debug/fxbridge" plugin test "$WASM" "$PLUGINS/sensor-normalize/cases.yaml"
