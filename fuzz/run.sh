#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 30 s each) from the seed
# corpus in fuzz/corpus/<target> (the invalid configs of tests/config and the
# inputs that once broke the parser). Needs cargo-fuzz (installed if missing);
# libFuzzer's instrumentation needs nightly flags, allowed on the stable
# toolchain with RUSTC_BOOTSTRAP=1. A crash fails the run and leaves its input
# in fuzz/artifacts/<target>/.
#
#   bash fuzz/run.sh          # 30 s per target
#   bash fuzz/run.sh 600      # 10 min per target
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${1:-30}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
for target in config_parse topics; do
  mkdir -p "corpus/$target" "artifacts/$target"
  work="$(mktemp -d)"
  cp -r "corpus/$target/." "$work/"
  echo "== fuzz $target for ${seconds}s" >&2
  cargo fuzz run --sanitizer none "$target" "$work" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 2>&1 \
    | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|==|.*panicked|.*SUMMARY|Done)" || true
  # A crash leaves an artifact (and makes cargo fuzz fail above).
  if compgen -G "artifacts/$target/*" >/dev/null; then
    echo "fuzz: $target found a failing input in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  rm -rf "$work"
done
