#!/usr/bin/env bash
# Step time and peak memory of each algorithm of configs/bins/ on the same model and tasks (CPU,
# one process): a random-init untied Llama (hidden $HIDDEN, $LAYERS layers) on the synthetic bins
# tasks with the embedded default's meta-batch, K and batch sizes. Prints a table: median
# perf/step_time_s and perf/tokens_per_s over the steps after the first, max perf/peak_rss_mib, and
# perf/rank_state_mib (θ + update direction + optimizer state).
#   scripts/with-torch-env.sh bench/algorithms.sh
# Environment: HIDDEN (256), LAYERS (4), STEPS (6), THREADS (all cores), CONFIGS (all of configs/bins).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
hidden=${HIDDEN:-256} layers=${LAYERS:-4} steps=${STEPS:-6} threads=${THREADS:-$(nproc)}
configs=${CONFIGS:-$(ls configs/bins/*.yaml | xargs -n1 basename | sed 's/\.yaml$//')}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --quiet --release -p fomaml
bin=target/release/fomaml
mkdir -p "$work/data" "$work/configs"
$bin prepare-data synthetic --quiet --out "$work/data/bins" >&2
python bench/make_model.py "$work/data/bins/model" "$work/model" --hidden "$hidden" --layers "$layers" >&2
cp -r configs/bins "$work/configs/"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
printf '\n| algorithm (configs/bins/) | step time (s) | tokens/s | peak RSS (MiB) | θ + grad + optimizer state (MiB) |\n|---|---|---|---|---|\n'
for name in $configs; do
  run="$work/runs/$name"
  $bin train --config "$work/configs/bins/$name.yaml" "model.partial_pretrain=$work/model" \
    "trainer.total_steps=$steps" trainer.test_freq=0 checkpoint.save_freq=0 checkpoint.save_final=false "trainer.num_threads=$threads" \
    "trainer.default_local_dir=$run" 'trainer.logger=[jsonl]' >&2
  python - "$name" "$run/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[2])][1:]
med = lambda k: statistics.median(r[k] for r in rows)
print(f"| {sys.argv[1]} | {med('perf/step_time_s'):.2f} | {med('perf/tokens_per_s'):.0f} | "
      f"{max(r['perf/peak_rss_mib'] for r in rows):.0f} | {rows[-1]['perf/rank_state_mib']:.1f} |")
PY
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
