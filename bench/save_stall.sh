#!/usr/bin/env bash
# The training stall of a checkpoint save, synchronous vs asynchronous (checkpoint.async_save), on
# CPU: FOMAML on a random-init, untied Llama (hidden $HIDDEN, $LAYERS layers) on the synthetic bins
# tasks, saving every $EVERY meta-steps. perf/save_stall_s is the time the step loop spends in
# the save (asynchronous: the copy of θ and the Adam moments, plus any wait for the previous
# save); perf/step_time_s is the meta-step itself (which a background writer slows by sharing the
# cores). Both runs in one invocation, side by side.
#   scripts/with-torch-env.sh bench/save_stall.sh
# Environment: HIDDEN (1024), LAYERS (12), STEPS (8), EVERY (2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
hidden=${HIDDEN:-1024} layers=${LAYERS:-12} steps=${STEPS:-8} every=${EVERY:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --quiet --release -p fomaml
bin=target/release
$bin/fomaml prepare-data synthetic --quiet --out "$work/bins" >&2
python bench/make_model.py "$work/bins/model" "$work/model" --hidden "$hidden" --layers "$layers" >&2
printf '\n| save | state saved (MiB) | stall per save, median (s) | meta-step, median (s) | run wall (s) |\n|---|---|---|---|---|\n'
for mode in false true; do
  run="$work/run_$mode"
  start=$(date +%s.%N)
  OMP_NUM_THREADS=$(nproc) $bin/fomaml train --config "$work/bins/config.yaml" "model.partial_pretrain=$work/model" \
    "trainer.total_steps=$steps" trainer.test_freq=0 "checkpoint.save_freq=$every" "checkpoint.async_save=$mode" \
    meta.meta_batch_size=1 meta.num_inner_steps=1 "trainer.default_local_dir=$run" 'trainer.logger=[jsonl]' >&2
  wall=$(python -c "import time; print(f'{time.time() - $start:.1f}')")
  python - "$run" "$mode" "$wall" <<'PY'
import json, os, statistics, sys
run, mode, wall = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
scalars = [r.get("scalars", r) for r in rows]
stalls = [s["perf/save_stall_s"] for s in scalars if "perf/save_stall_s" in s]
steps = [s["perf/step_time_s"] for s in scalars]
ckpt = os.path.join(run, "checkpoints", open(os.path.join(run, "checkpoints", "latest")).read().strip())
saved = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt)) / 2**20
name = "asynchronous" if mode == "true" else "synchronous"
print(f"| {name} | {saved:.0f} | {statistics.median(stalls):.3f} | {statistics.median(steps):.2f} | {wall} |")
PY
done
