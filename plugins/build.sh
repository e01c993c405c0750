#!/usr/bin/env bash
# Builds every fxbridge transform plugin from source into plugins/dist/<name>.wasm,
# installing what a fresh machine lacks (the wasm32-wasip2 Rust target, the
# pinned componentize-js from npm, the pinned componentize-py from PyPI).
# Idempotent: JavaScript and Python plugins whose inputs are unchanged are
# not rebuilt (FORCE=1 rebuilds them); cargo decides for the Rust ones.
#
# Usage: plugins/build.sh [all|rust|js|python]...   (no argument = all)
set -euo pipefail

PLUGINS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WIT="$PLUGINS/../wit"
DIST="$PLUGINS/dist"
STAMPS="$DIST/.stamps"
FORCE="${FORCE:-0}"

# Rust plugins: cargo package name = folder name; the component is the cdylib.
RUST_PLUGINS=(sensor-normalize hostile noop template tagger)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required ($2)"; }

# Hash of the given files (sorted names + contents), for skip-if-unchanged.
inputs_hash() {
  local f
  for f in "$@"; do
    printf '%s\n' "${f#"$PLUGINS"/}"
    cat "$f"
  done | sha256sum | cut -d' ' -f1
}

# up_to_date NAME HASH: true when dist/NAME.wasm was built from inputs with HASH.
up_to_date() {
  [[ "$FORCE" != 1 && -f "$DIST/$1.wasm" && -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]
}

build_rust() {
  need cargo "install Rust with rustup"
  need rustup "the wasm32-wasip2 target is added with rustup"
  if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    log "adding Rust target wasm32-wasip2"
    rustup target add wasm32-wasip2
  fi
  local args=() name
  for name in "${RUST_PLUGINS[@]}"; do args+=(-p "$name"); done
  log "cargo build --release --target wasm32-wasip2 ${args[*]}"
  (cd "$PLUGINS" && cargo build --release --target wasm32-wasip2 "${args[@]}")
  for name in "${RUST_PLUGINS[@]}"; do
    cp "$PLUGINS/target/wasm32-wasip2/release/${name//-/_}.wasm" "$DIST/$name.wasm.tmp"
    mv "$DIST/$name.wasm.tmp" "$DIST/$name.wasm"
  done
  # The hot-reload tests swap tagger.wasm (v1) for a second build of it (v2).
  log "cargo build --release --target wasm32-wasip2 -p tagger --features v2"
  (cd "$PLUGINS" && cargo build --release --target wasm32-wasip2 -p tagger --features v2 \
    --target-dir "$PLUGINS/target/tagger-v2")
  cp "$PLUGINS/target/tagger-v2/wasm32-wasip2/release/tagger.wasm" "$DIST/tagger-v2.wasm.tmp"
  mv "$DIST/tagger-v2.wasm.tmp" "$DIST/tagger-v2.wasm"
}

build_js() {
  need node "Node.js 18 or newer"
  need npm "comes with Node.js"
  local dir="$PLUGINS/js-csv" lock_hash hash
  lock_hash="$(inputs_hash "$dir/package-lock.json")"
  if [[ ! -f "$dir/node_modules/.fxbridge-lock" || "$(cat "$dir/node_modules/.fxbridge-lock")" != "$lock_hash" ]]; then
    log "npm ci in js-csv (componentize-js as pinned in package-lock.json)"
    (cd "$dir" && npm ci --no-audit --no-fund)
    printf '%s\n' "$lock_hash" >"$dir/node_modules/.fxbridge-lock"
  fi
  hash="$(inputs_hash "$dir/csv.js" "$dir/build.mjs" "$dir/package-lock.json" "$WIT/transform.wit")"
  if up_to_date js-csv "$hash"; then
    log "js-csv.wasm is up to date"
    return
  fi
  log "componentize js-csv (takes a few minutes)"
  (cd "$dir" && node build.mjs "$DIST/js-csv.wasm.tmp")
  mv "$DIST/js-csv.wasm.tmp" "$DIST/js-csv.wasm"
  printf '%s\n' "$hash" >"$STAMPS/js-csv"
}

build_python() {
  need python3 "Python 3.9 or newer with the venv module"
  local dir="$PLUGINS/py-fanout" req_hash hash
  req_hash="$(inputs_hash "$dir/requirements.txt")"
  if [[ ! -x "$dir/.venv/bin/componentize-py" || ! -f "$dir/.venv/.fxbridge-requirements" \
        || "$(cat "$dir/.venv/.fxbridge-requirements")" != "$req_hash" ]]; then
    log "installing componentize-py into py-fanout/.venv"
    [[ -x "$dir/.venv/bin/python" ]] || python3 -m venv "$dir/.venv"
    "$dir/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$dir/requirements.txt"
    printf '%s\n' "$req_hash" >"$dir/.venv/.fxbridge-requirements"
  fi
  # py-fanout stays on contract 0.1.0: it shows that components built
  # against the earlier contract run unchanged.
  hash="$(inputs_hash "$dir"/src/*.py "$dir/requirements.txt" "$WIT/0.1.0/transform.wit")"
  if up_to_date py-fanout "$hash"; then
    log "py-fanout.wasm is up to date"
    return
  fi
  log "componentize py-fanout (takes a minute or two)"
  # -p src: bundle only the plugin's own modules (not tests, not the venv).
  (cd "$dir" && .venv/bin/componentize-py -d "$WIT/0.1.0" -w fxbridge:transform/transform@0.1.0 \
    componentize app -p src -o "$DIST/py-fanout.wasm.tmp")
  mv "$DIST/py-fanout.wasm.tmp" "$DIST/py-fanout.wasm"
  printf '%s\n' "$hash" >"$STAMPS/py-fanout"
}

main() {
  local targets=("$@") t
  [[ ${#targets[@]} -gt 0 ]] || targets=(all)
  for t in "${targets[@]}"; do
    case "$t" in
      all | rust | js | python) ;;
      *) die "unknown target '$t' (use: all, rust, js, python)" ;;
    esac
  done
  mkdir -p "$DIST" "$STAMPS"
  for t in "${targets[@]}"; do
    case "$t" in
      all) build_rust; build_js; build_python ;;
      rust) build_rust ;;
      js) build_js ;;
      python) build_python ;;
    esac
  done
  log "plugins in $DIST:"
  (cd "$DIST" && ls -l -- *.wasm) >&2
}

main "$@"
