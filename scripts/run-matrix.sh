#!/usr/bin/env bash
# The original trainer's experiment matrix (configs/experiments/README.md): for each model and experiment, train under
# fomaml-launch, evaluate the newest checkpoint's few-shot curve, then one report per model (and
# one per ablation family).
#
#   scripts/run-matrix.sh                                 # everything, Llama-3.2-1B first, then Qwen3-4B
#   DRY_RUN=1 scripts/run-matrix.sh                       # print the commands only
#   MODELS=llama EXPERIMENTS="exp2 exp4" scripts/run-matrix.sh
#
# Environment:
#   MODELS       models, in order (default "llama qwen3"): configs/experiments/<model>/
#   EXPERIMENTS  experiments, in the matrix's order whatever the order given (default: all). A word
#                selects the configs named by it or starting with it and "_": exp1 .. exp5, exp4
#                (all seven subjects), exp4_lora_algebra, abl (every ablation), abl_rank,
#                abl_inner_steps, abl_samples, abl_rank_8, ...
#   NPROC        ranks (GPUs) per training run (default 4)
#   DRY_RUN=1    print the commands, run nothing (configs are still resolved when fomaml and the
#                data are there)
#   N_SHOTS      shots of the few-shot curves (default "0 5 10 25 50")
#   TRAIN_ARGS   extra config overrides for every `fomaml train`, e.g. "trainer.test_freq=0"
#   EVAL_ARGS    extra flags for every `fomaml eval`, e.g. "--n-runs 5" or "--lr 1e-3 --steps 20"
#   LAUNCH_ARGS  extra flags for fomaml-launch, e.g. "--max-restarts 2"
#   FOMAML, FOMAML_LAUNCH   the binaries (default: fomaml and fomaml-launch on PATH)
#   FORCE_EVAL=1 evaluate again even when results/<model>/<exp>.json is newer than the checkpoint
#
# Runs are resumable: `fomaml train` continues from a run's newest checkpoint (and returns at once
# when the run is complete), and an evaluation whose result file is newer than the run's newest
# checkpoint is not repeated. Run from anywhere; paths are relative to the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODELS=${MODELS:-"llama qwen3"}
EXPERIMENTS=${EXPERIMENTS:-"exp1 exp2 exp3 exp4 exp5 abl"}
NPROC=${NPROC:-4}
DRY_RUN=${DRY_RUN:-0}
N_SHOTS=${N_SHOTS:-"0 5 10 25 50"}
FOMAML=${FOMAML:-fomaml}
FOMAML_LAUNCH=${FOMAML_LAUNCH:-fomaml-launch}
FORCE_EVAL=${FORCE_EVAL:-0}
read -r -a train_args <<<"${TRAIN_ARGS:-}"
read -r -a eval_args <<<"${EVAL_ARGS:-}"
read -r -a launch_args <<<"${LAUNCH_ARGS:-}"
read -r -a n_shots <<<"$N_SHOTS"

DATA_CONFIG=data/math_meta/config.yaml
PREPARE="fomaml prepare-data math --source MATH/ --out data/math_meta"
SUBJECTS=(algebra counting_and_probability geometry intermediate_algebra number_theory prealgebra precalculus)

# Every experiment, in the order they run.
ALL=(exp1_fomaml_sft exp2_meta_lora_100 exp3_meta_lora_300)
for s in "${SUBJECTS[@]}"; do ALL+=("exp4_lora_$s"); done
ALL+=(exp5_lora_mixed
  abl_rank_4 abl_rank_8 abl_rank_32
  abl_inner_steps_1 abl_inner_steps_3 abl_inner_steps_5 abl_inner_steps_20
  abl_samples_50 abl_samples_200)

# Reports: name, then experiment:label pairs (labels hold no "=" or ","). Each --method is
# LABEL=RESULTS.json,RUN/metrics.jsonl. The seven Std LoRA runs are separate methods, each
# evaluated on its own subject.
REPORT_MAIN=(report "exp1_fomaml_sft:FOMAML-SFT 300" "exp2_meta_lora_100:META-LoRA 100"
  "exp3_meta_lora_300:META-LoRA 300")
for s in "${SUBJECTS[@]}"; do REPORT_MAIN+=("exp4_lora_$s:Std LoRA $s"); done
REPORT_MAIN+=("exp5_lora_mixed:Std LoRA mixed")
REPORT_RANK=(report_abl_rank "abl_rank_4:META-LoRA r4" "abl_rank_8:META-LoRA r8"
  "exp2_meta_lora_100:META-LoRA r16" "abl_rank_32:META-LoRA r32")
REPORT_STEPS=(report_abl_inner_steps "abl_inner_steps_1:META-LoRA K1" "abl_inner_steps_3:META-LoRA K3"
  "abl_inner_steps_5:META-LoRA K5" "exp2_meta_lora_100:META-LoRA K10" "abl_inner_steps_20:META-LoRA K20")
REPORT_SAMPLES=(report_abl_samples "abl_samples_50:META-LoRA 50" "exp2_meta_lora_100:META-LoRA 100"
  "abl_samples_200:META-LoRA 200" "exp3_meta_lora_300:META-LoRA 300")

die() { echo "run-matrix: $*" >&2; exit 1; }
note() { echo "# $*"; }

# Prints a command as it could be pasted into a shell ("$(...)" left for the shell to expand).
show() {
  local words=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then words+=("$a")
    elif [[ $a == *"\$("* ]]; then words+=("\"$a\"")
    else words+=("'$a'"); fi
  done
  echo "${words[*]}"
}

run() {
  show "$@"
  [[ $DRY_RUN == 1 ]] || "$@"
}

# --- which experiments ----------------------------------------------------------------------------
selected=()
for word in $EXPERIMENTS; do
  matched=0
  for e in "${ALL[@]}"; do
    [[ $e == "$word" || $e == "$word"_* ]] && matched=1
  done
  ((matched)) || die "EXPERIMENTS: nothing is called \`$word\`; the experiments are: ${ALL[*]}"
done
for e in "${ALL[@]}"; do
  for word in $EXPERIMENTS; do
    if [[ $e == "$word" || $e == "$word"_* ]]; then selected+=("$e"); break; fi
  done
done
for model in $MODELS; do
  [[ -d configs/experiments/$model ]] || die "MODELS: no configs/experiments/$model/ (see configs/experiments/README.md)"
done

# --- checks before any GPU time is spent ----------------------------------------------------------
have_fomaml=0
if command -v "$FOMAML" >/dev/null 2>&1; then have_fomaml=1; fi
if [[ $DRY_RUN != 1 ]]; then
  ((have_fomaml)) || die "\`$FOMAML\` is not on PATH: build it (cargo build --release) and add target/release to PATH, or set FOMAML=/path/to/fomaml"
  command -v "$FOMAML_LAUNCH" >/dev/null 2>&1 || die "\`$FOMAML_LAUNCH\` is not on PATH (set FOMAML_LAUNCH=/path/to/fomaml-launch)"
fi
have_data=0
if [[ -f $DATA_CONFIG ]]; then
  have_data=1
  # The exp4 configs name their subject's files as prepare-data writes them for --out data/math_meta.
  grep -q '^ *- data/math_meta/algebra/support.parquet$' "$DATA_CONFIG" ||
    die "$DATA_CONFIG does not list its tasks as data/math_meta/<subject>/...: the exp4_lora_* configs expect the files made from the repository root by: $PREPARE"
elif [[ $DRY_RUN == 1 ]]; then
  note "$DATA_CONFIG is missing (prepare it with: $PREPARE); configs not resolved"
else
  die "$DATA_CONFIG is missing. From the repository root, with the MATH dataset (train/ and test/ of <subject>/*.json, or a .jsonl / .parquet) at MATH/, run:
  $PREPARE"
fi

# run_dir MODEL EXP: the config's trainer.default_local_dir (resolved when possible).
declare -A RUN_DIR
resolve() {
  local model=$1 exp=$2 cfg=configs/experiments/$1/$2.yaml shown dir
  [[ -z ${RUN_DIR[$model/$exp]:-} ]] || return 0
  [[ -f $cfg ]] || die "$cfg is missing"
  RUN_DIR[$model/$exp]=runs/experiments/$model/$exp
  if ((have_fomaml && have_data)); then
    shown=$("$FOMAML" config show --config "$cfg") || die "$cfg does not resolve (above)"
    dir=$(awk '/^trainer:/{t=1; next} /^[^ ]/{t=0} t && $1=="default_local_dir:" {sub(/^[^:]*: */, ""); gsub(/["'"'"']/, ""); print}' <<<"$shown")
    [[ -n $dir ]] && RUN_DIR[$model/$exp]=$dir
  fi
}
for model in $MODELS; do
  for exp in "${selected[@]}"; do resolve "$model" "$exp"; done
  for exp in exp2_meta_lora_100 exp3_meta_lora_300; do resolve "$model" "$exp"; done  # ablation reports
  if ((have_fomaml && have_data)); then
    model_dir=$("$FOMAML" config show --config "configs/experiments/$model/base.yaml" |
      awk '/^model:/{t=1; next} /^[^ ]/{t=0} t && $1=="partial_pretrain:" {sub(/^[^:]*: */, ""); gsub(/["'"'"']/, ""); print}')
    if [[ ! -d $model_dir ]]; then
      msg="configs/experiments/$model/base.yaml: model.partial_pretrain $model_dir is not a directory (set it to the Hugging Face model directory)"
      if [[ $DRY_RUN == 1 ]]; then note "$msg"; else die "$msg"; fi
    fi
  fi
done

# done_training CONFIG RUN_DIR: whether the run's newest checkpoint is at trainer.total_steps (a
# finished run is not relaunched: that would load the model on every rank only to save again).
done_training() {
  local cfg=$1 dir=$2 step total
  if [[ ! -f $dir/checkpoints/latest ]] || ((!have_fomaml)); then return 1; fi
  step=$(tr -d '[:space:]' <"$dir/checkpoints/latest")
  [[ $step =~ ^step_([0-9]+)$ && -d $dir/checkpoints/$step ]] || return 1
  total=$("$FOMAML" config show --config "$cfg" ${train_args[@]+"${train_args[@]}"} |
    awk '/^trainer:/{t=1; next} /^[^ ]/{t=0} t && $1=="total_steps:" {print $2}')
  [[ $total =~ ^[0-9]+$ ]] || return 1
  ((10#${step#step_} >= total))
}

# --- the matrix -----------------------------------------------------------------------------------
result() { echo "results/$1/$2.json"; }

# report MODEL MIN NAME EXP:LABEL...: made when an experiment of the list ran (or would, dry) and at
# least MIN of them have results.
report() {
  local model=$1 min=$2 name=$3 pair exp label methods=() wanted=0
  shift 3
  for pair in "$@"; do
    exp=${pair%%:*}
    for e in "${selected[@]}"; do [[ $e == "$exp" ]] && wanted=1; done
  done
  ((wanted)) || return 0
  for pair in "$@"; do
    exp=${pair%%:*} label=${pair#*:}
    local chosen=0
    for e in "${selected[@]}"; do [[ $e == "$exp" ]] && chosen=1; done
    if [[ -f $(result "$model" "$exp") ]] || { [[ $DRY_RUN == 1 ]] && ((chosen)); }; then
      methods+=(--method "$label=$(result "$model" "$exp"),${RUN_DIR[$model/$exp]:-runs/experiments/$model/$exp}/metrics.jsonl")
    fi
  done
  ((${#methods[@]} / 2 >= min)) || return 0
  if [[ $DRY_RUN != 1 ]] && ! "$FOMAML" report --help >/dev/null 2>&1; then
    note "this fomaml has no \`report\` command yet: skipping results/$model/$name (results/$model/*.json are there)"
    return 0
  fi
  run "$FOMAML" report --out "results/$model/$name" "${methods[@]}"
}

for model in $MODELS; do
  note "=== $model: ${#selected[@]} experiment(s)"
  [[ $DRY_RUN == 1 ]] || mkdir -p "results/$model"
  for exp in "${selected[@]}"; do
    cfg=configs/experiments/$model/$exp.yaml
    dir=${RUN_DIR[$model/$exp]}
    result_file=$(result "$model" "$exp")
    note "--- $model / $exp"
    if done_training "$cfg" "$dir"; then
      note "$dir is at trainer.total_steps: not trained again"
    else
      run "$FOMAML_LAUNCH" --nproc "$NPROC" --log-dir "$dir/launch" ${launch_args[@]+"${launch_args[@]}"} \
        -- "$FOMAML" train --config "$cfg" ${train_args[@]+"${train_args[@]}"}
    fi
    if [[ $DRY_RUN == 1 ]]; then
      checkpoint="$dir/checkpoints/\$(cat $dir/checkpoints/latest)"
    else
      [[ -f $dir/checkpoints/latest ]] || die "$dir/checkpoints/latest is missing after training $cfg"
      step=$(tr -d '[:space:]' <"$dir/checkpoints/latest")
      checkpoint=$dir/checkpoints/$step
      [[ -d $checkpoint ]] || die "$dir/checkpoints/latest names $step, which is not there"
      if [[ $FORCE_EVAL != 1 && -f $result_file && $result_file -nt $dir/checkpoints/latest ]]; then
        note "$result_file is newer than $checkpoint: not evaluated again (FORCE_EVAL=1 to redo)"
        continue
      fi
    fi
    run "$FOMAML" eval --checkpoint "$checkpoint" --n-shots "${n_shots[@]}" ${eval_args[@]+"${eval_args[@]}"} --out "$result_file"
  done
  note "--- $model: reports"
  report "$model" 1 "${REPORT_MAIN[@]}"
  report "$model" 2 "${REPORT_RANK[@]}"      # an ablation needs two points
  report "$model" 2 "${REPORT_STEPS[@]}"
  report "$model" 2 "${REPORT_SAMPLES[@]}"
done
