#!/usr/bin/env bash
# The FOMAML meta-step on CPU: fomaml (benches/fomaml_step.rs, the library's own code path) against
# the same step in PyTorch eager on transformers' LlamaForCausalLM (bench/fomaml_step_torch.py).
# Same config, data shapes, update rules and thread count; one run each; prints a table and the
# ratio Rust / PyTorch.
#   scripts/with-torch-env.sh bench/fomaml_step.sh
# Environment: THREADS (default: all cores), BENCH_WARMUP (2), BENCH_STEPS (5). Also prints process CPU
# seconds per meta-step (less disturbed by other load than wall time) and the ratio by them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
threads=${THREADS:-$(nproc)}
export BENCH_THREADS=$threads BENCH_WARMUP=${BENCH_WARMUP:-2} BENCH_STEPS=${BENCH_STEPS:-5}

cargo bench --bench fomaml_step --no-run >&2
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
rust=$(cargo bench --quiet --bench fomaml_step | grep '^RESULT')
echo "$rust" >&2
torch=$(python bench/fomaml_step_torch.py | grep '^RESULT')
echo "$torch" >&2
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
calc() { python -c "print(f'{$1:.2f}')"; }
rs=$(field "$rust" meta_steps_per_s); ps=$(field "$torch" meta_steps_per_s)
rcpu=$(calc "$(field "$rust" cpu_seconds) / $(field "$rust" steps)")
pcpu=$(calc "$(field "$torch" cpu_seconds) / $(field "$torch" steps)")
printf '\n| impl | threads | meta-steps/s | tokens/s | ratio (Rust / PyTorch) | CPU s / meta-step | ratio by CPU time |\n'
printf '|---|---|---|---|---|---|---|\n'
printf '| fomaml (Rust, tch) | %s | %s | %s | %s× | %s | %s× |\n' "$threads" "$rs" "$(field "$rust" tokens_per_s)" \
  "$(calc "$rs / $ps")" "$rcpu" "$(calc "$pcpu / $rcpu")"
printf '| PyTorch eager (transformers) | %s | %s | %s | 1.00× | %s | 1.00× |\n' "$threads" "$ps" \
  "$(field "$torch" tokens_per_s)" "$pcpu"
