#!/usr/bin/env bash
# Per-rank memory of sharded FOMAML on CPU at world sizes 1, 2 and 4 (fomaml-launch, CPU backend):
# bytes of θ + update direction + Adam moments that each rank holds (perf/rank_state_mib, from the
# tensors themselves) and the peak RSS of a meta-step (perf/peak_rss_mib, rank 0). The model is a
# random-init, untied Llama (hidden $HIDDEN, $LAYERS layers) on the synthetic bins tasks.
#   scripts/with-torch-env.sh bench/sharded_memory.sh
# Environment: HIDDEN (512), LAYERS (8), STEPS (3), WORLDS ("1 2 4").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
hidden=${HIDDEN:-512} layers=${LAYERS:-8} steps=${STEPS:-3} worlds=${WORLDS:-"1 2 4"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --quiet --release -p fomaml -p fomaml-launch
bin=target/release
$bin/fomaml prepare-data synthetic --quiet --out "$work/bins" >&2
python bench/make_model.py "$work/bins/model" "$work/model" --hidden "$hidden" --layers "$layers" >&2
printf '\n| world size | per-rank θ + grad + Adam (MiB) | ratio to world 1 | peak RSS of a step, rank 0 (MiB) |\n|---|---|---|---|\n'
base=
for world in $worlds; do
  run="$work/run$world"
  args=(train --config "$work/bins/config.yaml" "model.partial_pretrain=$work/model" "trainer.total_steps=$steps"
        trainer.test_freq=0 checkpoint.save_freq=0 checkpoint.save_final=false trainer.sharding=fsdp "trainer.default_local_dir=$run"
        'trainer.logger=[jsonl]')
  if [ "$world" = 1 ]; then
    OMP_NUM_THREADS=$(nproc) $bin/fomaml "${args[@]}" >&2
  else
    $bin/fomaml-launch --standalone --nproc "$world" -- "$PWD/$bin/fomaml" "${args[@]}" >&2
  fi
  read -r state rss < <(python - "$run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
last = rows[-1]["scalars"] if "scalars" in rows[-1] else rows[-1]
print(last["perf/rank_state_mib"], max(r.get("scalars", r)["perf/peak_rss_mib"] for r in rows))
PY
)
  base=${base:-$state}
  printf '| %s | %.1f | %.2f | %.0f |\n' "$world" "$state" "$(python -c "print($state / $base)")" "$rss"
done
