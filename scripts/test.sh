#!/usr/bin/env bash
# The whole test suite: formatting, clippy with warnings denied, then every test of the workspace.
# Run through scripts/with-torch-env.sh (`make test` does).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace
