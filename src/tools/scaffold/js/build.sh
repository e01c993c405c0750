#!/usr/bin/env bash
# Builds __NAME__.wasm, the WebAssembly component, next to this script.
# Needs node (18 or newer) and npm; installs componentize-js with `npm ci`
# (exactly as pinned in package-lock.json) when node_modules is missing or
# older than the lock file. Componentizing takes a minute or two.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
if ! cmp -s package-lock.json node_modules/.fxbridge-lock 2>/dev/null; then
  npm ci --no-audit --no-fund --prefer-offline
  cp package-lock.json node_modules/.fxbridge-lock
fi
node build.mjs "$here/__NAME__.wasm"
