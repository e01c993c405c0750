#!/usr/bin/env bash
# Builds __NAME__.wasm, the WebAssembly component, next to this script.
# Needs python3 (3.9 or newer, with venv); installs componentize-py as pinned
# in requirements.txt into .venv (or into the venv PLUGIN_VENV names, to share
# one between plugins) when it is missing or the requirements changed.
# Componentizing takes about a minute.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PLUGIN_VENV:-$here/.venv}"
if [[ ! -x "$venv/bin/componentize-py" ]] \
  || ! cmp -s "$here/requirements.txt" "$venv/.fxbridge-requirements" 2>/dev/null; then
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/.fxbridge-requirements"
fi
cd "$here"
# -p src: bundle only the plugin's own modules.
"$venv/bin/componentize-py" -d wit -w fxbridge:transform/transform@0.2.0 \
  componentize app -p src -o "$here/__NAME__.wasm"
echo "wrote $here/__NAME__.wasm" >&2
