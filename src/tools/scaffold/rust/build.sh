#!/usr/bin/env bash
# Builds __NAME__.wasm, the WebAssembly component, next to this script.
# Needs cargo; adds the wasm32-wasip2 target with rustup when it is missing.
# Honours CARGO_TARGET_DIR (to share compiled dependencies between plugins).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v rustup >/dev/null 2>&1 \
  && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "adding Rust target wasm32-wasip2" >&2
  rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2 --manifest-path "$here/Cargo.toml"
target="${CARGO_TARGET_DIR:-$here/target}"
cp "$target/wasm32-wasip2/release/__CRATE__.wasm" "$here/__NAME__.wasm"
echo "wrote $here/__NAME__.wasm" >&2
