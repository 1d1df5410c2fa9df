#!/usr/bin/env bash
# Stages, on this (CPU) machine, what bench/gpu/run.sh needs on a GPU machine that has PyTorch but
# no Rust and no internet: the release `fomaml` (stripped), the tests/nccl_gpu.rs test binary when
# that test exists, and the tiny character tokenizer the benchmark model carries. Everything goes to
# .gpu/ at the repository root, which is listed in .git/info/exclude rather than .gitignore: it is
# then ignored by git here but can travel to the device as an ignored path (`carry: [".gpu"]`).
#   bash bench/gpu/stage.sh
# The binaries link libtorch 2.11.0 as the GPU machines have it (cu130 wheel); run.sh points
# LD_LIBRARY_PATH at that machine's torch/lib.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
env=scripts/with-torch-env.sh
stage=.gpu
limit_mib=60 # the device transfer carries at most 64 MiB
die() { echo "stage.sh: $*" >&2; exit 1; }

# The executable cargo reports for target $1, from its JSON messages on stdin: the only way to find
# a test binary (its name carries a hash) and right under any CARGO_TARGET_DIR.
exe_of() {
  python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        exe = m["executable"]
if not exe:
    sys.exit("stage.sh: cargo reported no executable for " + sys.argv[1])
print(exe)' "$1"
}

echo "stage.sh: cargo build --release --bin fomaml" >&2
bin=$($env cargo build --release --bin fomaml --message-format=json-render-diagnostics | exe_of fomaml) \
  || die "the release build of fomaml failed (output above)"
test_bin=
if [ -f tests/nccl_gpu.rs ]; then
  echo "stage.sh: cargo test --release --no-run --test nccl_gpu" >&2
  test_bin=$($env cargo test --release --no-run --test nccl_gpu --message-format=json-render-diagnostics \
    | exe_of nccl_gpu) || die "building the nccl_gpu test failed (output above)"
else
  echo "stage.sh: no tests/nccl_gpu.rs here; staging without the NCCL test" >&2
fi

partial=$stage.partial
rm -rf "$partial"
mkdir -p "$partial/tokenizer"
trap 'rm -rf "$partial"' EXIT
cp "$bin" "$partial/fomaml"
[ -z "$test_bin" ] || cp "$test_bin" "$partial/nccl_gpu"
# The tokenizer is the one `prepare-data synthetic` writes for the embedded default's tiny model;
# its config.json gives make_model.py the special token ids.
$env "$bin" prepare-data synthetic --quiet --out "$partial/synthetic" --train-tasks 1 --eval-tasks 0 \
  --support 1 --query 1 --test 1 >/dev/null || die "fomaml prepare-data synthetic failed"
cp "$partial"/synthetic/model/{tokenizer.json,tokenizer_config.json,config.json} "$partial/tokenizer/"
rm -rf "$partial/synthetic"
for f in "$partial/fomaml" ${test_bin:+"$partial/nccl_gpu"}; do
  strip "$f" || die "strip $f failed"
done

glibc=$(objdump -T "$partial/fomaml" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
{
  echo "commit: $(git rev-parse HEAD)$( [ -z "$(git status --porcelain -- src tests Cargo.toml Cargo.lock build.rs)" ] || echo ' (with uncommitted changes)')"
  echo "staged: $(date -u +%FT%TZ) on $(hostname)"
  echo "built against: torch $($env python -c 'import torch; print(torch.__version__)')"
  echo "fomaml: sha256 $(sha256sum "$partial/fomaml" | cut -d' ' -f1), needs $glibc at most"
  [ -z "$test_bin" ] || echo "nccl_gpu: sha256 $(sha256sum "$partial/nccl_gpu" | cut -d' ' -f1)"
} > "$partial/STAGED"

size=$(du -sm "$partial" | cut -f1)
[ "$size" -le "$limit_mib" ] || die "$partial is $size MiB, over the $limit_mib MiB the device transfer allows"
rm -rf "$stage"
mv "$partial" "$stage"
trap - EXIT

exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
for pattern in "/$stage/" "/$partial/"; do
  grep -qxF "$pattern" "$exclude" 2>/dev/null || echo "$pattern" >> "$exclude"
done
git check-ignore -q "$stage" || die "$stage is not ignored by git although $exclude lists it"

cat "$stage/STAGED"
echo "stage.sh: $stage/ ready ($size MiB): $(cd "$stage" && echo *)"
echo "stage.sh: on the device, carry [\".gpu\"] and run: bash bench/gpu/run.sh"
