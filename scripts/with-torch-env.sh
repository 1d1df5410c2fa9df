#!/usr/bin/env bash
# Runs a command with the torch venv active, so tch's build finds libtorch (LIBTORCH_USE_PYTORCH=1)
# and cargo-built binaries can be run. Creates the venv first when missing.
#   scripts/with-torch-env.sh cargo test
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "with-torch-env: cargo not found; installing Debian's rust toolchain (needs rustc >= 1.85)" >&2
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2 && apt-get install -y -qq cargo rustc >&2
  else
    echo "with-torch-env: install Rust >= 1.85 (https://rustup.rs) and run again" >&2; exit 1
  fi
fi

venv="$("$here/ensure-venv.sh")"
export VIRTUAL_ENV="$venv"
export PATH="$venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
exec "$@"
