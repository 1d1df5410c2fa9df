#!/usr/bin/env bash
# Padded vs unpadded (packed) batches on a variable-length workload, on CPU: the FOMAML meta-step of
# benches/fomaml_step.rs (Llama, 4 layers, hidden 256, vocab 2048; 4 tasks × (5 inner batches + 1
# query batch) of 4 examples) with MATH-like lengths (data::synthetic::math_like_lengths: log-normal,
# median about 270 tokens, cut to [32, 1024]). Both layouts in one invocation, same batches.
# "predicted" is the padded step scaled by the unpadded layout's share of computed tokens: what
# unpadded compute would cost if time followed tokens. Beside them, the same meta-step in PyTorch
# eager on transformers' LlamaForCausalLM (bench/fomaml_step_torch.py) on pools of the same lengths,
# padded as transformers runs them (its own draw order, so its batches' padding differs a little).
#   scripts/with-torch-env.sh bench/padding_free.sh
# Environment: THREADS (default: all cores), BENCH_WARMUP (1), BENCH_STEPS (3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export BENCH_THREADS=${THREADS:-$(nproc)} BENCH_WARMUP=${BENCH_WARMUP:-1} BENCH_STEPS=${BENCH_STEPS:-3} BENCH_LENGTHS=math
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo bench --bench fomaml_step --no-run >&2
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
padded=$(BENCH_UNPADDED=0 BENCH_POOLS_OUT="$work/pools.json" cargo bench --quiet --bench fomaml_step | grep '^RESULT')
echo "$padded" >&2
unpadded=$(BENCH_UNPADDED=1 cargo bench --quiet --bench fomaml_step | grep '^RESULT')
echo "$unpadded" >&2
torch=$(BENCH_POOLS="$work/pools.json" python bench/fomaml_step_torch.py | grep '^RESULT')
echo "$torch" >&2
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python - "$padded" "$unpadded" "$torch" <<'PY'
import sys
rows = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in sys.argv[1:]]
padded, unpadded, torch = rows
step = lambda r: 1 / float(r["meta_steps_per_s"])
print("\n| meta-step | real tokens / step | computed tokens / step | real share | meta-step (s) | real tokens/s | peak RSS (MiB) | speed-up |")
print("|---|---|---|---|---|---|---|---|")
for name, r in (("fomaml, padded", padded), ("fomaml, unpadded", unpadded), ("PyTorch eager, padded", torch)):
    real, computed = int(r["tokens_per_step"]), int(r["computed_tokens_per_step"])
    print(f"| {name} | {real} | {computed} | {real / computed:.2f} | {step(r):.2f} | {float(r['tokens_per_s']):.0f} | "
          f"{r['peak_rss_mib']} | {step(padded) / step(r):.2f}× |")
predicted = step(padded) * int(unpadded["computed_tokens_per_step"]) / int(padded["computed_tokens_per_step"])
print(f"\nunpadded step: measured {step(unpadded):.2f} s, predicted by its token share {predicted:.2f} s "
      f"(measured / predicted = {step(unpadded) / predicted:.2f})")
PY
