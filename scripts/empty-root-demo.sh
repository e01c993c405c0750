#!/usr/bin/env bash
# Proves the container image's contents without a container daemon: builds a
# root directory holding exactly what deploy/Dockerfile's final stage copies,
# and runs `fxbridge demo` in it the way the image would run it.
#
#   bash scripts/empty-root-demo.sh [BINARY]    # default dist/fxbridge-x86_64-linux-musl
#
# 1. deploy/rootfs.sh builds the build stage's /rootfs (as the Dockerfile's
#    build stage does) in a scratch directory.
# 2. The final stage is read from deploy/Dockerfile: every COPY --from=build
#    line is applied to an empty directory (with its --chown), and USER, ENV,
#    WORKDIR and ENTRYPOINT are taken from it. Any other instruction there
#    (RUN, ADD, COPY from elsewhere) fails this script, so the Dockerfile and
#    this check cannot drift apart silently.
# 3. In new mount, PID and network namespaces (only a loopback interface: no
#    network at all), it chroots into that directory, takes the USER's uid and
#    gid with no supplementary groups, changes to WORKDIR, and executes
#    ENTRYPOINT with `demo` and only the ENV variables (plus Docker's default
#    PATH). Nothing of the host is mounted in: no /proc, /dev or /sys, less
#    than a container gets. The demo passes only if its six readings come out
#    as expected, WebAssembly plugin included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin="${1:-dist/fxbridge-x86_64-linux-musl}"
[[ -x "$bin" ]] || { echo "empty-root-demo.sh: $bin missing (bash scripts/dist.sh --target x86_64)" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || { echo "empty-root-demo.sh: needs root (chroot, namespaces)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stage="$work/build"   # the build stage's file system (only what the final stage takes)
root="$work/root"     # the image
mkdir -p "$stage" "$root"
bash deploy/rootfs.sh "$stage/rootfs" "$bin"

# The final stage: from the last FROM to the end, continuation lines joined.
plan="$(python3 - deploy/Dockerfile <<'PY'
import json, re, shlex, sys
text = open(sys.argv[1]).read()
lines, cur = [], ""
for raw in text.splitlines():
    if not cur and (not raw.strip() or raw.lstrip().startswith("#")):
        continue
    cur += raw.rstrip("\\").strip() + " "
    if not raw.rstrip().endswith("\\"):
        lines.append(cur.strip()); cur = ""
froms = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
final = lines[froms[-1]:]
if final[0].split()[1] != "scratch":
    sys.exit(f"final stage is not FROM scratch: {final[0]}")
plan = {"copies": [], "user": None, "env": {}, "workdir": "/", "entrypoint": None}
for l in final[1:]:
    op, rest = l.split(None, 1)
    op = op.upper()
    if op == "COPY":
        args = shlex.split(rest)
        opts = [a for a in args if a.startswith("--")]
        paths = [a for a in args if not a.startswith("--")]
        src_stage = [o.split("=", 1)[1] for o in opts if o.startswith("--from=")]
        chown = [o.split("=", 1)[1] for o in opts if o.startswith("--chown=")]
        if src_stage != ["build"] or len(paths) != 2 or set(o.split("=")[0] for o in opts) - {"--from", "--chown"}:
            sys.exit(f"this check only knows COPY --from=build [--chown=U:G] SRC DST: {l}")
        plan["copies"].append({"src": paths[0], "dst": paths[1], "chown": chown[0] if chown else None})
    elif op == "USER":
        plan["user"] = rest.strip()
    elif op == "ENV":
        for kv in shlex.split(rest):
            k, v = kv.split("=", 1)
            plan["env"][k] = v
    elif op == "WORKDIR":
        plan["workdir"] = rest.strip()
    elif op == "ENTRYPOINT":
        plan["entrypoint"] = json.loads(rest)
    elif op in ("EXPOSE", "CMD", "LABEL"):
        pass
    else:
        sys.exit(f"the final stage has an instruction this check does not model: {l}")
if not plan["copies"] or not plan["user"] or not plan["entrypoint"]:
    sys.exit("the final stage needs COPY, USER and ENTRYPOINT")
print(json.dumps(plan))
PY
)"

# Apply the COPY lines, as Docker does: a source ending in / copies its contents.
while IFS=$'\t' read -r src dst chown; do
  [[ "$src" == /rootfs* ]] || { echo "empty-root-demo.sh: COPY from $src: only /rootfs is built here" >&2; exit 1; }
  mkdir -p "$root$(dirname "$dst")"
  if [[ -d "$stage$src" ]]; then
    mkdir -p "$root$dst"
    cp -a "$stage$src/." "$root$dst/"
  else
    cp -a "$stage$src" "$root$dst"
  fi
  [[ "$chown" == "-" ]] || chown -R "$chown" "$root$dst"
done < <(python3 -c 'import json,sys; [print(c["src"], c["dst"], c["chown"] or "-", sep="\t") for c in json.load(sys.stdin)["copies"]]' <<<"$plan")

echo "==> the image's root, as the final stage of deploy/Dockerfile builds it:" >&2
(cd "$root" && find . -mindepth 1 -printf '%M %u:%g %10s %p\n' | sort -k4) >&2

echo "==> fxbridge demo in it (chroot, user $(python3 -c 'import json,sys; print(json.load(sys.stdin)["user"])' <<<"$plan"), no network but loopback, no /proc /dev /sys)" >&2
# shellcheck disable=SC2016
unshare --mount --pid --net --fork -- sh -c 'ip link set lo up && exec "$@"' sh \
  python3 - "$root" "$plan" <<'PY'
import json, os, sys
root, plan = sys.argv[1], json.loads(sys.argv[2])
user = plan["user"].split(":")
uid = int(user[0]); gid = int(user[1]) if len(user) > 1 else uid
env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **plan["env"]}
os.chroot(root)
os.chdir(plan["workdir"])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
argv = plan["entrypoint"] + ["demo"]
os.execve(argv[0], argv, env)
PY
# The user could write its compile cache in its home (HOME from the ENV line).
shopt -s nullglob
cached=("$root"/home/fxbridge/.cache/fxbridge/*.cwasm)
[[ ${#cached[@]} -ge 1 ]] || { echo "empty-root-demo.sh: no compile cache entry in /home/fxbridge/.cache/fxbridge" >&2; exit 1; }
echo "==> the demo passed in the image's root (and cached its compiled plugin in /home/fxbridge/.cache/fxbridge)" >&2
