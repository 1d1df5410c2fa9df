#!/usr/bin/env bash
# The main job on the embedded default: synthetic bins tasks + the tiny model, FOMAML against the
# multi-task SFT baseline on CPU, then few-shot adaptation on held-out tasks (`fomaml demo`).
# Run through scripts/with-torch-env.sh (`make demo` does). Extra arguments go to `fomaml demo`,
# e.g. `scripts/with-torch-env.sh scripts/demo.sh --steps 300`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The dev profile (dependencies at opt-level 2) shares its build with `make test`: a release build
# would compile libtorch's C++ wrapper a second time.
cargo build --quiet --bin fomaml
bin=target/debug/fomaml
"$bin" doctor
echo
"$bin" demo --out runs/demo "$@"
