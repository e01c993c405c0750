#!/usr/bin/env bash
# Footprint of static binaries: size, idle RSS with 10 plugin routes, and
# start-to-ready with the plugins already compiled (disk cache warm), as a table.
#
#   bash scripts/footprint.sh                       # every dist/fxbridge-*-linux-musl
#   bash scripts/footprint.sh dist/fxbridge-aarch64-linux-musl
#   RUNS=9 bash scripts/footprint.sh                # more start-to-ready samples (default 7)
#
# Each binary runs `fxbridge run` against a mosquitto it starts on a free port
# and `fxbridge standin-gateway`, with 10 routes whose transform is the
# sensor-normalize component (plugins/prebuilt/, the demo's). A first start
# compiles the component into a fresh cache directory; then RUNS starts are
# timed from spawn to the first 200 from /readyz on the admin port (polled every
# millisecond), and the median is reported. Idle RSS is VmRSS 3 s after ready,
# for the last cached start and for the first (compiling) one.
#
# A binary for another architecture runs under qemu-user (qemu-<arch>-static):
# its times are emulation and its RSS is the emulator's process (qemu plus the
# guest), not what the device would show. Only loopback is used.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS="${RUNS:-7}"
bins=("$@")
if [[ ${#bins[@]} -eq 0 ]]; then
  shopt -s nullglob
  bins=(dist/fxbridge-*-linux-musl)
  shopt -u nullglob
fi
[[ ${#bins[@]} -gt 0 ]] || { echo "footprint.sh: no binaries (run bash scripts/dist.sh first)" >&2; exit 1; }

MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
[[ -x "$MOSQUITTO" ]] || { echo "footprint.sh: mosquitto is needed (apt-get install mosquitto)" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mqtt_port="$(free_port)"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$mqtt_port" >"$work/mosquitto.conf"
"$MOSQUITTO" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)

host_arch="$(uname -m)"
# The command prefix that runs a binary of this architecture here.
runner() {
  local arch
  arch="$(python3 -c 'import struct,sys; m=struct.unpack_from("<H", open(sys.argv[1],"rb").read(20), 18)[0]; print({62:"x86_64",183:"aarch64",40:"arm"}.get(m, m))' "$1")"
  if [[ "$arch" == "$host_arch" ]]; then
    echo ""
  else
    command -v "qemu-$arch-static" || { echo "footprint.sh: qemu-$arch-static is needed (apt-get install qemu-user-static)" >&2; exit 1; }
  fi
}

# The stand-in gateway: the host's own binary when there is one.
gw_port="$(free_port)"
gw_bin="${bins[0]}"
for b in "${bins[@]}"; do [[ -z "$(runner "$b")" ]] && gw_bin="$b"; done
$(runner "$gw_bin") "$gw_bin" standin-gateway --listen "127.0.0.1:$gw_port" >"$work/gateway.log" 2>&1 &
pids+=($!)

cp plugins/prebuilt/sensor-normalize.wasm "$work/"
config() { # $1 = admin port, $2 = client id
  cat <<EOF
mqtt: {url: "mqtt://127.0.0.1:$mqtt_port", client_id: "$2", persistent_session: false}
gateway: {url: "http://127.0.0.1:$gw_port", timeout: 2s}
admin: {listen: "127.0.0.1:$1"}
routes:
EOF
  for i in $(seq 1 10); do
    cat <<EOF
  - name: r$i
    topic: footprint/$2/r$i/+
    function: echo
    republish: {topic: "footprint-out/$2/r$i/{1}"}
    transform:
      component: sensor-normalize.wasm
      config: {deadband: {temperature: 0.5}}
EOF
  done
}

measure() { # $1 = binary; prints "size|rss_kb|ready_ms_median|ready_ms_min|ready_ms_max|note"
  local bin="$1" run arch admin
  run="$(runner "$bin")"
  arch="$(basename "$bin")"
  admin="$(free_port)"
  config "$admin" "fp-$arch" >"$work/$arch.yaml"
  mkdir -p "$work/cache-$arch"
  XDG_CACHE_HOME="$work/cache-$arch" python3 - "$RUNS" "$admin" "$work/$arch.yaml" $run "$bin" <<'PY'
import http.client, os, statistics, subprocess, sys, time
runs, admin, config, cmd = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def ready():
    try:
        c = http.client.HTTPConnection("127.0.0.1", admin, timeout=0.5)
        c.request("GET", "/readyz")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False
def start():
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd + ["run", "-c", config], stdout=subprocess.DEVNULL,
                         stderr=open(config + ".log", "ab"))
    while not ready():
        if p.poll() is not None:
            sys.exit(f"footprint: {cmd[-1]} exited with {p.returncode}; see {config}.log")
        if time.perf_counter() - t0 > 120:
            p.kill(); sys.exit("footprint: not ready within 120 s")
        time.sleep(0.001)
    return p, (time.perf_counter() - t0) * 1000
def stop(p):
    p.terminate()
    p.wait(30)
def rss(p):
    time.sleep(3)
    return next(int(l.split()[1]) for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS:"))
p, cold = start()          # compiles the component into the empty cache
rss_cold = rss(p)
stop(p)
times = []
for i in range(runs):
    p, ms = start()
    times.append(ms)
    if i == runs - 1:
        rss_cached = rss(p)
    stop(p)
print(f"{rss_cached}|{statistics.median(times):.1f}|{min(times):.1f}|{max(times):.1f}|{cold:.0f}|{rss_cold}")
PY
}

printf '| binary | size | idle RSS, 10 plugin routes, cached start | start to ready, cached (median of %s; min-max) | first start (compiling): ready, idle RSS | run by |\n' "$RUNS"
printf '| --- | --- | --- | --- | --- | --- |\n'
mb() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
for bin in "${bins[@]}"; do
  size="$(stat -c %s "$bin")"
  out="$(measure "$bin")"
  IFS='|' read -r rss med lo hi cold rss_cold <<<"$out"
  run="$(runner "$bin")"
  if [[ -z "$run" ]]; then
    how="native"; rss_txt="$(mb "$rss") MiB"; rss_cold_txt="$(mb "$rss_cold") MiB"
  else
    # qemu-user's own process: the emulator, its translated code and its
    # bookkeeping of the guest's address space, not what the device would show.
    how="$(basename "$run"), emulated"
    rss_txt="n/a (qemu's process: $(mb "$rss") MiB)"; rss_cold_txt="n/a"
  fi
  printf '| %s | %s MB (%s bytes) | %s | %s ms (%s-%s) | %s ms, %s | %s |\n' \
    "$(basename "$bin")" "$(awk -v s="$size" 'BEGIN{printf "%.1f", s/1e6}')" "$size" "$rss_txt" \
    "$med" "$lo" "$hi" "$cold" "$rss_cold_txt" "$how"
done
