#!/usr/bin/env bash
# Prints the path of a Python venv with torch==$TORCH_VERSION, creating it when missing.
#
# The venv lives outside the clone, in a cache keyed by the torch version, so fresh clones and CI
# reuse the 4.7 GB install. Override the location with FOMAML_TORCH_VENV.
# Extra pip requirements (e.g. transformers for the golden scripts) go in as arguments:
#   scripts/ensure-venv.sh transformers==4.57.1
set -euo pipefail

TORCH_VERSION=2.11.0
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/fomaml"
venv="${FOMAML_TORCH_VENV:-$cache_root/torch-$TORCH_VERSION}"
marker="$venv/.fomaml-complete"

log() { echo "ensure-venv: $*" >&2; }

find_python() {
  for py in "${FOMAML_BASE_PYTHON:-}" python3.12 python3.11 python3.10 python3; do
    # Probe by running it: pyenv shims exist for versions that are not active and then fail.
    [ -n "$py" ] && "$py" -c 'import sys, venv; assert sys.version_info >= (3, 10)' >/dev/null 2>&1 \
      && { "$py" -c 'import sys; print(sys.executable)'; return; }
  done
  log "no python3 found; install python3 (>= 3.10) with the venv module"; exit 1
}

mkdir -p "$(dirname "$venv")"
# Two clones (or CI and a developer) creating the venv at once must not interleave pip runs.
exec 9>"$venv.lock"
flock 9

if [ ! -f "$marker" ]; then
  [ -d "$venv" ] && { log "removing incomplete venv at $venv"; rm -rf "$venv"; }
  base_python=$(find_python)
  log "creating $venv with torch==$TORCH_VERSION (one-time, ~4.7 GB download)"
  "$base_python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --progress-bar off "torch==$TORCH_VERSION" numpy safetensors >&2
  "$venv/bin/python" -c "import torch; assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__"
  touch "$marker"
fi

# Extra requirements from the environment too, so Makefile targets can ask for them.
if [ -n "${FOMAML_EXTRA_PIP:-}" ]; then set -- "$@" $FOMAML_EXTRA_PIP; fi
if [ "$#" -gt 0 ]; then
  missing=()
  for req in "$@"; do
    name="${req%%[=<>]*}"; want="${req#*==}"
    have=$("$venv/bin/python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
    [ "$have" = "$want" ] || missing+=("$req")
  done
  [ "${#missing[@]}" -eq 0 ] || "$venv/bin/python" -m pip install --progress-bar off "${missing[@]}" >&2
fi

echo "$venv"
