#!/usr/bin/env bash
# fxbridge end-to-end benchmark (issue #5): builds, prepares the Python baseline's
# venv, runs target/<profile>/fxbridge-bench, writes bench/out/report.md (+ JSON).
#
#   bash bench/run.sh                       # every scenario, release build
#   bash bench/run.sh --smoke               # tiny N, debug build: CI (< 1 min)
#   bash bench/run.sh --only pass-qos1-64,relay-qos1-64 -n 50000
#   bash bench/run.sh --list                # scenario names
# Other flags go to fxbridge-bench (--rate, --size, --topics, --window, --perf, --label; --help).
#
# Needs: cargo, mosquitto + mosquitto-clients (apt-get install mosquitto mosquitto-clients),
# python3 with venv, and PyPI for the baseline's pinned requirements (bench/requirements.txt).
# Without Python/PyPI the baseline scenario is reported as unavailable; the rest still runs.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
for a in "$@"; do
  if [[ "$a" == "--smoke" ]]; then profile=debug; fi
done
if [[ "${BENCH_PROFILE:-}" != "" ]]; then profile="$BENCH_PROFILE"; fi

for tool in /usr/sbin/mosquitto mosquitto_sub mosquitto_pub; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "bench: $tool missing (apt-get install mosquitto mosquitto-clients)" >&2
    exit 1
  fi
done

echo "bench: building ($profile)" >&2
if [[ "$profile" == release ]]; then
  cargo build --release --workspace --bins
else
  cargo build --workspace --bins
fi

# The baseline's venv: pinned requirements, stubs generated from the proto.
venv=bench/.venv
stamp="$venv/.requirements.sha256"
want="$(cat bench/requirements.txt proto/fxgateway.proto | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "bench: preparing $venv" >&2
  if python3 -m venv "$venv" \
    && "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt \
    && mkdir -p "$venv/fxgen" \
    && "$venv/bin/python" -m grpc_tools.protoc -Iproto --python_out="$venv/fxgen" \
         --grpc_python_out="$venv/fxgen" proto/fxgateway.proto; then
    echo "$want" > "$stamp"
  else
    echo "bench: could not prepare the Python venv; the baseline will be unavailable" >&2
  fi
fi

mkdir -p bench/out
export FXBRIDGE_BENCH_COMMAND="${BENCH_PREFIX:-}bash bench/run.sh$(printf " %q" "$@")"
exec "target/$profile/fxbridge-bench" --bin-dir "target/$profile" \
  --python "$venv/bin/python" --stubs "$venv/fxgen" --out bench/out "$@"
