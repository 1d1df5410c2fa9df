#!/usr/bin/env bash
# The GPU benchmark of issue 8, for one call on a lent GPU machine (PyTorch 2.11 + transformers, no
# Rust, no internet), from the repository root with .gpu/ carried (bench/gpu/stage.sh makes it):
#   bash bench/gpu/run.sh
# In order: the machine (nvidia-smi, versions, `fomaml doctor`); the staged nccl_gpu test when there
# is one (a failure is recorded, the timing still runs); the measured bf16 matmul peak; a random-init
# Llama-3.2-1B-shaped model; synthetic tasks whose rows are exactly SEQ tokens; fomaml's FOMAML
# meta-steps (`fomaml train`) and the same steps in PyTorch eager (bench/gpu/fomaml_step_torch.py),
# each watched by nvidia-smi every 0.1 s; in the time left, fomaml on MATH-like lengths, unpadded and
# padded; then the tables, printed last (bench/gpu/summarise.py).
# Logs and gpu_bench.json go to $OUT when set (the device's return folder), else runs/gpubench/<time>.
# Exits non-zero when any phase failed, after printing the table of what was measured.
#
# Environment (defaults for DEVICE=cuda; DEVICE=cpu shrinks them to a ~2-minute check on a CPU, in
# f32 because CPUs without bf16 units run it ~20× slower):
#   DEVICE cuda|cpu, DTYPE bf16|f32, VOCAB 128256, HIDDEN 2048, LAYERS 16, HEADS 32, KV_HEADS 8,
#   HEAD_DIM 64, INTERMEDIATE 8192, TIED 1, SEQ 2048, META_BATCH 4, INNER_STEPS 5, INNER_BATCH 4,
#   QUERY_BATCH 4, INNER_LR 1e-4, OUTER_LR 3e-5, WARMUP 2, STEPS 4 (timed meta-steps after WARMUP),
#   TORCH_HEADS "full scored", PEAK_N 8192, THREADS (CPU only), BUDGET_S 560 (the whole script),
#   PYTHON python3, KEEP_WORK 0 (1 keeps the model and tasks in the printed work directory),
#   SHARDING auto|fsdp and BACKEND auto|nccl (fsdp + nccl: our FSDP path over NCCL at world size 1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
started_at=$(date +%s)
here=bench/gpu stage=.gpu
die() { echo "run.sh: $*" >&2; exit 1; }
trap 'echo "run.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then small=1; else small=; fi
DTYPE=${DTYPE:-${small:+f32}} DTYPE=${DTYPE:-bf16}
VOCAB=${VOCAB:-128256} TIED=${TIED:-1}
HIDDEN=${HIDDEN:-${small:+64}} HIDDEN=${HIDDEN:-2048}
LAYERS=${LAYERS:-${small:+2}} LAYERS=${LAYERS:-16}
HEADS=${HEADS:-${small:+4}} HEADS=${HEADS:-32}
KV_HEADS=${KV_HEADS:-${small:+2}} KV_HEADS=${KV_HEADS:-8}
HEAD_DIM=${HEAD_DIM:-${small:+16}} HEAD_DIM=${HEAD_DIM:-64}
INTERMEDIATE=${INTERMEDIATE:-${small:+192}} INTERMEDIATE=${INTERMEDIATE:-8192}
SEQ=${SEQ:-${small:+128}} SEQ=${SEQ:-2048}
META_BATCH=${META_BATCH:-${small:+2}} META_BATCH=${META_BATCH:-4}
INNER_STEPS=${INNER_STEPS:-${small:+2}} INNER_STEPS=${INNER_STEPS:-5}
INNER_BATCH=${INNER_BATCH:-${small:+2}} INNER_BATCH=${INNER_BATCH:-4}
QUERY_BATCH=${QUERY_BATCH:-${small:+2}} QUERY_BATCH=${QUERY_BATCH:-4}
WARMUP=${WARMUP:-${small:+1}} WARMUP=${WARMUP:-2}
STEPS=${STEPS:-${small:+2}} STEPS=${STEPS:-4}
PEAK_N=${PEAK_N:-${small:+512}} PEAK_N=${PEAK_N:-8192}
INNER_LR=${INNER_LR:-1e-4} OUTER_LR=${OUTER_LR:-3e-5} TORCH_HEADS=${TORCH_HEADS:-full scored}
BUDGET_S=${BUDGET_S:-560} PY=${PYTHON:-python3} THREADS=${THREADS:-} SHARDING=${SHARDING:-auto} BACKEND=${BACKEND:-auto}
case "$DEVICE" in cpu|cuda) ;; *) die "DEVICE must be cpu or cuda, got $DEVICE" ;; esac

[ -x "$stage/fomaml" ] || die "$stage/fomaml is missing: run bash bench/gpu/stage.sh on the build machine and carry .gpu"
logdir=${OUT:-runs/gpubench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$logdir"
work=$(mktemp -d "${TMPDIR:-/tmp}/gpubench.XXXXXX")
res=$work/results
mkdir -p "$res"
child= smi_pids=() tee_pid=
cleanup() {
  [ -z "$child" ] || kill -KILL "$child" 2>/dev/null || true
  for p in "${smi_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "run.sh: work directory kept: $work"; else rm -rf "$work"; fi
  exec 1>&3 2>&4
  [ -z "$tee_pid" ] || wait "$tee_pid" 2>/dev/null || true
}
exec 3>&1 4>&2
exec > >(tee -a "$logdir/bench.log") 2>&1
tee_pid=$!
trap cleanup EXIT
failures=()

torch_lib=$("$PY" -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib \
  || die "$PY cannot import torch (set PYTHON to the interpreter that has torch and transformers)"
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
missing=$(ldd "$stage/fomaml" | grep 'not found' || true)
[ -z "$missing" ] || die "$stage/fomaml cannot find its libraries with LD_LIBRARY_PATH=$LD_LIBRARY_PATH: $missing"
have_smi=; command -v nvidia-smi >/dev/null && have_smi=1

echo "== machine"
if [ -n "$have_smi" ]; then nvidia-smi; else echo "(no nvidia-smi)"; fi
"$PY" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "| torch", torch.__version__,
  "| cuda", torch.version.cuda, "| transformers", transformers.__version__, "| cuda available", torch.cuda.is_available())'
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
cat "$stage/STAGED"
doctor_args=(); [ "$DEVICE" = cpu ] || doctor_args=(--require-gpu)
"$stage/fomaml" doctor "${doctor_args[@]}" || failures+=("fomaml doctor ${doctor_args[*]}")

# Seconds a phase may take: its cap, but never so much that the phases after it (60 s each) and
# the table would be cut off by the device's 10-minute limit.
allowance() {
  local cap=$1 left=$(( started_at + BUDGET_S - $(date +%s) - 60 * $2 - 10 ))
  echo $(( cap < left ? cap : left ))
}

echo "== NCCL test"
if [ -x "$stage/nccl_gpu" ]; then
  limit=$(allowance 120 4)
  [ "$limit" -gt 0 ] || die "no time left for the NCCL test within BUDGET_S=$BUDGET_S"
  rc=0; timeout "$limit" "$stage/nccl_gpu" --nocapture --test-threads=1 > "$logdir/nccl_gpu.log" 2>&1 || rc=$?
  cat "$logdir/nccl_gpu.log"
  [ "$rc" = 0 ] || failures+=("nccl_gpu test (exit $rc$([ "$rc" != 124 ] || echo ", timed out after ${limit}s"))")
else
  echo "(no $stage/nccl_gpu staged)"
fi

echo "== setup (model, tasks, matmul peak): $logdir/setup.log"
model=$work/model tasks=$work/tasks
peak_dtype=$DTYPE
setup_failed() { echo "--- last lines of $logdir/setup.log:"; tail -n 20 "$logdir/setup.log"; die "$1"; }
"$PY" "$here/peak_matmul.py" --device "$DEVICE" --n "$PEAK_N" --dtype "$peak_dtype" > "$res/peak.json" \
  2>> "$logdir/setup.log" || setup_failed "peak_matmul.py failed"
cat "$res/peak.json"
"$PY" "$here/make_model.py" "$stage/tokenizer" "$model" --vocab "$VOCAB" --hidden "$HIDDEN" --layers "$LAYERS" \
  --heads "$HEADS" --kv-heads "$KV_HEADS" --head-dim "$HEAD_DIM" --intermediate "$INTERMEDIATE" --tied "$TIED" \
  --device "$DEVICE" > "$res/model.json" 2>> "$logdir/setup.log" || setup_failed "make_model.py failed"
cat "$res/model.json"
threads_yaml=; [ -z "$THREADS" ] || threads_yaml=", \"num_threads\": $THREADS"
total=$(( WARMUP + STEPS ))
config=$(cat <<JSON
{"model": {"partial_pretrain": "$model", "dtype": "$DTYPE"},
 "data": {"max_length": $SEQ, "truncation": "error"},
 "meta": {"algorithm": "fomaml", "inner_lr": $INNER_LR, "num_inner_steps": $INNER_STEPS,
          "inner_batch_size": $INNER_BATCH, "query_batch_size": $QUERY_BATCH, "meta_batch_size": $META_BATCH,
          "outer_lr": $OUTER_LR},
 "optim": {"optimizer_type": "AdamW", "betas": [0.9, 0.95], "weight_decay": 0.01, "clip_grad": 1.0,
           "lr_scheduler": "constant", "warmup_steps_ratio": 0.0},
 "trainer": {"total_steps": $total, "seed": 0, "test_freq": 0, "logger": ["console", "jsonl"],
             "default_local_dir": "$work/ours", "device": "$DEVICE", "nan_policy": "abort",
             "sharding": "$SHARDING", "backend": "$BACKEND", "preempt_signals": []$threads_yaml},
 "checkpoint": {"save_freq": 0, "save_final": false, "resume_mode": "disable"}}
JSON
)
"$PY" "$here/tasks.py" make "$model" "$tasks" --seq "$SEQ" --tasks "$META_BATCH" \
  --support $(( INNER_STEPS * INNER_BATCH )) --query $(( 2 * QUERY_BATCH )) --config-json "$config" \
  > "$res/tasks.json" 2>> "$logdir/setup.log" || setup_failed "tasks.py make failed"
cat "$res/tasks.json"
{ echo "config:"; cat "$tasks/config.yaml"; } >> "$logdir/setup.log"
"$PY" "$here/tasks.py" check "$model" "$tasks" "$stage/fomaml" 2>> "$logdir/setup.log" \
  || setup_failed "the encoding check failed"

idle=null
[ -z "$have_smi" ] || idle=$(nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits | head -1 | tr -dc 0-9)
heads_json=$(printf '"%s",' $TORCH_HEADS); heads_json="[${heads_json%,}]"
cat > "$res/settings.json" <<JSON
{"device": "$DEVICE", "dtype": "$DTYPE", "meta_batch": $META_BATCH, "inner_steps": $INNER_STEPS,
 "inner_batch": $INNER_BATCH, "query_batch": $QUERY_BATCH, "inner_lr": $INNER_LR, "outer_lr": $OUTER_LR,
 "warmup": $WARMUP, "steps": $STEPS, "seq": $SEQ, "torch_heads": $heads_json, "peak_dtype": "$peak_dtype",
 "smi_idle_mib": ${idle:-null}}
JSON

smi_start() {
  [ -n "$have_smi" ] || return 0
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits -lms 100 > "$res/smi-$1-apps.csv" 2>&1 &
  smi_pids+=($!)
  nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$res/smi-$1-gpu.csv" 2>&1 &
  smi_pids+=($!)
}
smi_stop() {
  for p in "${smi_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  smi_pids=()
}

# run_measured NAME LOG CAP PHASES_AFTER DONE_FILE DONE_LINES CMD...: runs CMD under nvidia-smi
# sampling, stops it at its time allowance, or once DONE_FILE has DONE_LINES complete lines (the
# trainer has logged its last step; with checkpoint.save_final: false it saves nothing and exits by
# itself, and with trainer.preempt_signals: [] SIGTERM ends it at once instead of saving first).
# Leaves phase_status ok|stopped|timeout|exit N.
run_measured() {
  local name=$1 log=$2 limit; limit=$(allowance "$3" "$4"); local done_file=$5 done_lines=$6; shift 6
  if [ "$limit" -le 0 ]; then phase_status="skipped (time budget)"; echo "$name: $phase_status"; return; fi
  smi_start "$name"
  echo "--- $name: $*" >> "$log"
  "$@" >> "$log" 2>&1 &
  child=$!
  local begin; begin=$(date +%s); phase_status=
  while kill -0 "$child" 2>/dev/null; do
    if [ -n "$done_file" ] && [ -f "$done_file" ] && [ "$(wc -l < "$done_file")" -ge "$done_lines" ]; then
      phase_status=stopped; kill -TERM "$child" 2>/dev/null || true; break
    fi
    if [ $(( $(date +%s) - begin )) -ge "$limit" ]; then
      phase_status="timeout after ${limit}s"; kill -TERM "$child" 2>/dev/null || true; break
    fi
    sleep 0.5
  done
  # A process stuck in the driver may ignore SIGTERM; the call's 10 minutes must not wait on it.
  for _ in $(seq 20); do kill -0 "$child" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$child" 2>/dev/null || true
  local rc=0; wait "$child" || rc=$?
  child=
  smi_stop
  [ -n "$phase_status" ] || { [ "$rc" = 0 ] && phase_status=ok || phase_status="exit $rc"; }
  echo "$name: $phase_status ($(( $(date +%s) - begin )) s)"
  case "$phase_status" in ok|stopped) ;; *) echo "--- last lines of $log:"; tail -n 20 "$log" ;; esac
}
status_json() { printf '{"status": "%s", "detail": "%s"}\n' "$1" "$2" > "$res/$3"; }

echo "== fomaml: $logdir/ours.log"
run_measured ours "$logdir/ours.log" 240 "$(wc -w <<<"$TORCH_HEADS")" "$work/ours/metrics.jsonl" "$total" \
  "$stage/fomaml" train --config "$tasks/config.yaml"
[ ! -f "$work/ours/metrics.jsonl" ] || cp "$work/ours/metrics.jsonl" "$res/ours-metrics.jsonl"
[ ! -f "$work/ours/metrics.jsonl" ] || cp "$work/ours/metrics.jsonl" "$logdir/ours-metrics.jsonl"
case "$phase_status" in
  ok) status_json ok "" ours-status.json ;;
  stopped) status_json ok "stopped after its last logged step, before the end-of-run checkpoint" ours-status.json ;;
  *) status_json failed "$phase_status, see ours.log" ours-status.json; failures+=("fomaml train ($phase_status)") ;;
esac

after=$(wc -w <<<"$TORCH_HEADS")
for head in $TORCH_HEADS; do
  after=$(( after - 1 ))
  echo "== PyTorch eager, head $head: $logdir/torch.log"
  torch_args=(--model "$model" --tasks-dir "$tasks" --device "$DEVICE" --dtype "$DTYPE" --head "$head"
    --meta-batch "$META_BATCH" --inner-steps "$INNER_STEPS" --inner-lr "$INNER_LR" --inner-batch "$INNER_BATCH"
    --query-batch "$QUERY_BATCH" --outer-lr "$OUTER_LR" --warmup "$WARMUP" --steps "$STEPS"
    --out "$res/torch-$head.json" ${THREADS:+--threads "$THREADS"})
  run_measured "torch-$head" "$logdir/torch.log" 180 "$after" "" 0 "$PY" "$here/fomaml_step_torch.py" "${torch_args[@]}"
  [ "$phase_status" != "exit 3" ] || phase_status="out of memory (exit 3)"
  if [ "$phase_status" != ok ] && [ ! -f "$res/torch-$head.json" ]; then
    status_json "$phase_status" "" "torch-$head-status.json"
  fi
  [ "$phase_status" = ok ] || failures+=("PyTorch eager, head $head ($phase_status)")
done

# Last, in whatever time is left (nothing is reserved for it): fomaml on MATH-like lengths, unpadded
# (the default) and padded, the same batches.
echo "== fomaml on MATH-like lengths, unpadded and padded: $logdir/varlen.log"
vtasks=$work/tasks-varlen
if "$PY" "$here/tasks.py" make "$model" "$vtasks" --seq "$SEQ" --tasks "$META_BATCH" --lengths math \
    --support $(( INNER_STEPS * INNER_BATCH )) --query $(( 2 * QUERY_BATCH )) --config-json "$config" \
    > "$res/tasks-varlen.json" 2>> "$logdir/setup.log"; then
  cat "$res/tasks-varlen.json"
  for layout in unpadded padded; do
    unpadded=true; [ "$layout" = unpadded ] || unpadded=false
    run_measured "varlen-$layout" "$logdir/varlen.log" 120 0 "$work/varlen-$layout/metrics.jsonl" "$total" \
      "$stage/fomaml" train --config "$vtasks/config.yaml" "data.unpadded=$unpadded" \
      "trainer.default_local_dir=$work/varlen-$layout"
    [ ! -f "$work/varlen-$layout/metrics.jsonl" ] || cp "$work/varlen-$layout/metrics.jsonl" "$res/varlen-$layout-metrics.jsonl"
    case "$phase_status" in ok|stopped|"skipped (time budget)") ;; *) failures+=("fomaml train, $layout MATH-like ($phase_status)") ;; esac
  done
else
  failures+=("tasks.py make --lengths math")
fi

echo "== table (raw numbers: $logdir/gpu_bench.json)"
"$PY" "$here/summarise.py" "$res" "$logdir/gpu_bench.json" || die "summarise.py failed"
if [ "${#failures[@]}" -gt 0 ]; then
  printf 'run.sh: FAILED: %s\n' "${failures[@]}" >&2
  exit 1
fi
