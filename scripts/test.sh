#!/usr/bin/env bash
# The test command: sets up what a fresh machine lacks, builds every plugin from
# source, then runs every test (unit, integration against real mosquitto and a
# real gRPC server, config golden files, plugin cases).
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh <filter>   # only tests whose name matches (nextest filter)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

# Tests start their own mosquitto on free ports; only the binaries are needed
# (mosquitto_sub/mosquitto_pub: the benchmark's relay).
if { ! command -v mosquitto >/dev/null 2>&1 && [[ ! -x /usr/sbin/mosquitto ]]; } \
  || ! command -v mosquitto_sub >/dev/null 2>&1; then
  log "installing mosquitto"
  SUDO=""
  [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients
fi

# The status page is tested in a real browser (tests/status_page.rs).
if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium (headless, for the status page test)"
  SUDO=""
  [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

log "building the plugins (Rust, JavaScript, Python) from source"
bash plugins/build.sh

log "running the tests"
cargo nextest run --workspace --profile ci --no-fail-fast "$@"

log "running every plugin's cases in the production sandbox"
cargo build --quiet --bin fxbridge
for cases in plugins/*/cases.yaml; do
  name="$(basename "$(dirname "$cases")")"
  ./target/debug/fxbridge plugin test "plugins/dist/$name.wasm" "$cases"
done
