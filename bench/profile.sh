#!/usr/bin/env bash
# Profiles the bridge in one scenario (default pass-qos1-64) with perf and prints
# the top symbols and the share of each crate / area.
#
#   bash bench/profile.sh                    # pass-qos1-64, release build
#   bash bench/profile.sh pass-qos0-64 -n 50000
#
# Needs perf (`perf stat -e instructions true` must work). Builds nothing:
# run bench/run.sh once first. Release binaries carry symbols but no frame
# pointers, so this is a flat (self-time) profile.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="${1:-pass-qos1-64}"
shift || true
out=bench/out
target/release/fxbridge-bench --bin-dir target/release --out "$out" \
  --only "$scenario" --perf "$scenario" --label "perf" "$@" >/dev/null
data="$out/perf-$scenario.data"
echo "== top symbols (self time) of the bridge in $scenario"
perf report -i "$data" --no-children --sort sym --stdio 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | head -40 || true
echo
echo "== by area"
perf report -i "$data" --no-children --sort sym --stdio 2>/dev/null | python3 -c '
import re, sys, collections
areas = [
  ("kernel", r"\[k\]"),
  ("hpack (h2::hpack)", r"hpack"),
  ("h2 (HTTP/2 frames, streams)", r"\bh2::"),
  ("tonic / tower buffer", r"tonic::|tower::|tower_buffer"),
  ("hyper", r"hyper::|hyper_util::"),
  ("prost", r"prost::"),
  ("rumqttc (MQTT)", r"rumqttc::|mqttbytes"),
  ("tokio runtime", r"tokio::"),
  ("fxbridge", r"fxbridge::"),
  ("tracing", r"tracing"),
  ("alloc (malloc/free/memcpy)", r"malloc|free|realloc|memcpy|memmove|memset|_int_|cfree|alloc::"),
]
tot = collections.Counter()
for line in sys.stdin:
    m = re.match(r"\s*([0-9.]+)%\s+(.*)", line)
    if not m: continue
    pct, sym = float(m.group(1)), m.group(2)
    for name, pat in areas:
        if re.search(pat, sym):
            tot[name] += pct; break
    else:
        tot["other"] += pct
for name, pct in tot.most_common():
    print(f"{pct:6.1f}%  {name}")
'
