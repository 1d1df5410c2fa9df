#!/usr/bin/env bash
# The main job on the embedded default. Until the trainer lands this checks the environment and
# runs the bundled tiny Llama (tests/fixtures/golden/llama) forward, printing its loss.
# Run through scripts/with-torch-env.sh (`make demo` does).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The dev profile (dependencies at opt-level 2) shares its build with `make test`: a release build
# would compile libtorch's C++ wrapper a second time.
cargo build --quiet --bin fomaml
bin=target/debug/fomaml
echo "== fomaml doctor"
"$bin" doctor
echo
echo "== forward pass of the bundled tiny model"
mkdir -p target/demo
"$bin" logits --model tests/fixtures/golden/llama --input-ids 1,15,42,7,99,3,2 --out target/demo/logits.safetensors
