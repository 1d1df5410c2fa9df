#!/usr/bin/env bash
# The FOMAML meta-step on a real pretrained model on CPU: SmolLM2-135M-Instruct (the Q4_1 GGUF of
# `make smollm2`, dequantised by `fomaml import-gguf`), fomaml (benches/fomaml_step.rs) beside the
# same step in PyTorch eager (bench/fomaml_step_torch.py, transformers' LlamaForCausalLM loading the
# same imported directory), in fp32 and in bf16 (fp32 master weights, bf16 compute; autocast on the
# PyTorch side). Random tokens of the model's vocabulary, 128 per row, the second half scored; a
# meta-step of $BENCH_TASKS tasks × ($BENCH_INNER_STEPS inner SGD steps + 1 query) on batches of 4.
#   scripts/with-torch-env.sh bench/smollm2_step.sh
# Environment: THREADS (all cores), BENCH_TASKS (2), BENCH_INNER_STEPS (1), BENCH_WARMUP (1),
# BENCH_STEPS (2), DTYPES ("f32 bf16").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export BENCH_THREADS=${THREADS:-$(nproc)} BENCH_TASKS=${BENCH_TASKS:-2} BENCH_INNER_STEPS=${BENCH_INNER_STEPS:-1}
export BENCH_WARMUP=${BENCH_WARMUP:-1} BENCH_STEPS=${BENCH_STEPS:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --quiet --release -p fomaml
cargo bench --bench fomaml_step --no-run >&2
gguf=$(scripts/fetch-smollm2.sh)
target/release/fomaml import-gguf "$gguf" "$work/smollm2" >&2
export BENCH_MODEL=$work/smollm2
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
results=()
for dtype in ${DTYPES:-f32 bf16}; do
  rust=$(BENCH_DTYPE=$dtype cargo bench --quiet --bench fomaml_step | grep '^RESULT')
  echo "$rust" >&2
  torch=$(BENCH_DTYPE=$dtype python bench/fomaml_step_torch.py | grep '^RESULT')
  echo "$torch" >&2
  results+=("$dtype $rust" "$dtype $torch")
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python - "${results[@]}" <<'PY'
import sys
rows = []
for arg in sys.argv[1:]:
    dtype, line = arg.split(" ", 1)
    rows.append((dtype, dict(kv.split("=", 1) for kv in line.split()[1:])))
print("\n| impl | dtype | meta-step (s) | tokens/s | peak RSS (MiB) | fomaml ÷ PyTorch (tokens/s) |")
print("|---|---|---|---|---|---|")
for dtype, r in rows:
    torch = next(t for d, t in rows if d == dtype and t["impl"] == "pytorch")
    name = "fomaml (Rust, tch)" if r["impl"] == "rust" else "PyTorch eager (transformers)"
    ratio = float(r["tokens_per_s"]) / float(torch["tokens_per_s"])
    print(f"| {name} | {dtype} | {1 / float(r['meta_steps_per_s']):.2f} | {float(r['tokens_per_s']):.0f} | "
          f"{r.get('peak_rss_mib', 'n/a')} | {ratio:.2f}× |")
PY
