#!/usr/bin/env bash
# Checks `fxbridge plugin new` end to end, per language: generates a skeleton
# into a temporary folder, runs the build command it prints, then the
# `fxbridge plugin test` command it prints (the skeleton's own cases.yaml).
# Fails on any failure. Needs what plugins/build.sh needs (cargo with rustup,
# node and npm, python3 with venv); the skeletons install the rest themselves.
#
#   bash scripts/plugin-new-check.sh               # rust, js and python
#   bash scripts/plugin-new-check.sh rust python   # some of them
#
# What is reused between runs, to keep it short: the Rust skeleton's compiled
# dependencies (CARGO_TARGET_DIR=target/plugin-new-check/cargo), the Python
# skeleton's venv with componentize-py (PLUGIN_VENV=target/plugin-new-check/venv)
# and npm's download cache (the skeleton's build.sh runs npm ci --prefer-offline).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'plugin-new-check: %s\n' "$*" >&2; exit 1; }

langs=("$@")
[[ ${#langs[@]} -gt 0 ]] || langs=(rust js python)
for lang in "${langs[@]}"; do
  case "$lang" in
    rust | js | python) ;;
    *) die "unknown language '$lang' (use: rust, js, python)" ;;
  esac
done

cargo build --quiet --bin fxbridge
bin="$root/target/debug/fxbridge"
cache="$root/target/plugin-new-check"
mkdir -p "$cache"
export CARGO_TARGET_DIR="$cache/cargo"
export PLUGIN_VENV="$cache/venv"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# check LANG: generate, build and test one skeleton (in $work, without --dir:
# the default folder is ./<name>).
check() {
  local lang="$1" name="new-$1-plugin" out build test start
  start=$SECONDS
  log "$lang: fxbridge plugin new $name --lang $lang"
  out="$(cd "$work" && "$bin" plugin new "$name" --lang "$lang")"
  printf '%s\n' "$out"
  # The two commands it prints, indented: the build, then the test.
  build="$(printf '%s\n' "$out" | sed -n 's/^  \(bash .*\)$/\1/p')"
  test="$(printf '%s\n' "$out" | sed -n 's/^  fxbridge \(plugin test .*\)$/\1/p')"
  [[ -n "$build" && -n "$test" ]] || die "$lang: plugin new did not print a build and a test command"
  log "$lang: $build"
  (cd "$work" && eval "$build")
  if [[ "$lang" == rust ]]; then
    # The template is not part of the repository's fmt/clippy runs; check it here.
    log "$lang: cargo fmt --check; cargo clippy -D warnings"
    cargo fmt --manifest-path "$work/$name/Cargo.toml" --check
    cargo clippy --quiet --manifest-path "$work/$name/Cargo.toml" --release \
      --target wasm32-wasip2 -- -D warnings
  fi
  log "$lang: fxbridge $test"
  (cd "$work" && eval "\"\$bin\" $test")
  log "$lang: generated, built and tested in $((SECONDS - start)) s"
}

for lang in "${langs[@]}"; do
  check "$lang"
done
log "plugin new: ${langs[*]} skeletons build and pass their cases"
