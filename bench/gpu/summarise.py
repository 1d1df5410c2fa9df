"""The table of bench/gpu/run.sh, from the files its phases left in RESULTS_DIR; also the raw numbers
as JSON (written beside, then renamed, so a reader never sees half of it).

    python bench/gpu/summarise.py RESULTS_DIR JSON_OUT

MFU uses model FLOPs per token, the same for every row: 6·(non-embedding parameters + LM head) for
forward and backward of the dense layers (the head counted at every token because transformers
computes it there; fomaml computes it only at scored positions, so its hardware FLOPs are lower than
the ones credited), plus 6·layers·seq·(heads·head_dim) for causal attention (12·L·s·d halved). Every
token of every support and query row is counted: K + 1 forward/backward passes per task.
"""
import json
import statistics
import sys
from pathlib import Path

res, json_out = Path(sys.argv[1]), Path(sys.argv[2])


def load(name, default=None):
    path = res / name
    return json.loads(path.read_text()) if path.is_file() else default


settings, model, tasks, peak = load("settings.json"), load("model.json"), load("tasks.json"), load("peak.json")
seq = tasks["seq"]
dense = model["non_embedding_parameters"] + model["head_parameters"]
attention = 6 * model["layers"] * seq * model["heads"] * model["head_dim"]
flops_per_token = 6 * dense + attention
expected_tokens = settings["meta_batch"] * (settings["inner_steps"] * settings["inner_batch"] + settings["query_batch"]) * seq


def smi_peaks(name):
    """Max used memory per process seen by nvidia-smi during a run, and of the whole device."""
    per_pid, device = {}, None
    apps = res / f"smi-{name}-apps.csv"
    if apps.is_file():
        for line in apps.read_text().splitlines():
            parts = [x.strip() for x in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                per_pid[parts[0]] = max(per_pid.get(parts[0], 0), int(parts[1]))
    gpu = res / f"smi-{name}-gpu.csv"
    if gpu.is_file():
        used = [int(x) for x in gpu.read_text().split() if x.isdigit()]
        device = max(used) if used else None
    return per_pid, device


def memory_cell(name):
    per_pid, device = smi_peaks(name)
    baseline = settings.get("smi_idle_mib")
    if per_pid:
        return max(per_pid.values()), f"{max(per_pid.values())}", per_pid, device
    if device is not None and baseline is not None:
        # No per-process rows (e.g. a container hides other pid namespaces): the device's rise over idle.
        return device - baseline, f"{device - baseline} (device − idle)", per_pid, device
    return None, "n/a", per_pid, device


rows = []
ours_status = load("ours-status.json", {"status": "not run"})
ours = {"impl": "fomaml (Rust, tch)", "status": ours_status["status"], "detail": ours_status.get("detail", "")}
metrics_path = res / "ours-metrics.jsonl"
if metrics_path.is_file():
    records = [json.loads(l) for l in metrics_path.read_text().splitlines() if l.strip()]
    records = [r.get("scalars", r) for r in records]
    timed = records[settings["warmup"]:]
    if len(timed) >= settings["steps"] and ours["status"] == "ok":
        timed = timed[: settings["steps"]]
        seconds = sum(r["perf/step_time_s"] for r in timed)
        step_tokens = [r.get("perf/tokens", round(r["perf/tokens_per_s"] * r["perf/step_time_s"])) for r in timed]
        ours.update(tokens_per_s=sum(step_tokens) / seconds, step_times_s=[r["perf/step_time_s"] for r in timed],
                    tokens_per_step=statistics.mean(step_tokens), query_loss=timed[-1].get("meta/avg_query_loss"))
        gpu = [r["perf/peak_gpu_mib"] for r in records if "perf/peak_gpu_mib" in r]
        rss = [r["perf/peak_rss_mib"] for r in records if "perf/peak_rss_mib" in r]
        ours["peak_gpu_mib_metric"] = max(gpu) if gpu else None
        ours["peak_rss_mib"] = max(rss) if rss else None
        if ours["peak_gpu_mib_metric"] is not None:
            ours["allocator"] = f"{ours['peak_gpu_mib_metric']:.0f} in use (perf/peak_gpu_mib)"
        elif settings["device"] == "cpu" and rss:
            ours["allocator"] = f"RSS {max(rss):.0f} (perf/peak_rss_mib)"
        else:
            ours["allocator"] = "n/a (no perf/peak_gpu_mib)"
    elif ours["status"] == "ok":
        ours.update(status="failed", detail=f"{len(timed)} timed steps logged, {settings['steps']} wanted")
ours["smi_mib"], ours["smi_cell"], ours["smi_per_pid"], ours["smi_device_mib"] = memory_cell("ours")
rows.append(ours)

for head in settings["torch_heads"]:
    label = {"full": "PyTorch eager, full logits", "scored": "PyTorch eager, head on scored rows"}[head]
    r = load(f"torch-{head}.json") or {"status": load(f"torch-{head}-status.json", {"status": "not run"})["status"]}
    row = {**r, "impl": label}
    if "max_memory_reserved_mib" in r:
        row["allocator"] = f"reserved {r['max_memory_reserved_mib']:.0f}, allocated {r['max_memory_allocated_mib']:.0f}"
    elif "peak_rss_mib" in r:
        row["allocator"] = f"RSS {r['peak_rss_mib']:.0f} (getrusage)"
    row["smi_mib"], row["smi_cell"], row["smi_per_pid"], row["smi_device_mib"] = memory_cell(f"torch-{head}")
    rows.append(row)

peak_flops = peak["tflops"] * 1e12 if peak else None
for row in rows:
    tps = row.get("tokens_per_s") if row["status"] == "ok" else None
    row["mfu"] = tps * flops_per_token / peak_flops if tps and peak_flops else None
    row["ours_over_this"] = ours["tokens_per_s"] / tps if tps and ours.get("tokens_per_s") else None


def varlen_row(layout):
    """Timed steps of fomaml on the MATH-like tasks: real and computed tokens, time, peak memory."""
    path = res / f"varlen-{layout}-metrics.jsonl"
    if not path.is_file():
        return None
    records = [r.get("scalars", r) for r in (json.loads(l) for l in path.read_text().splitlines() if l.strip())]
    timed = records[settings["warmup"]:][: settings["steps"]]
    if not timed:
        return None
    seconds = sum(r["perf/step_time_s"] for r in timed)
    real = sum(r["perf/tokens"] for r in timed)
    computed = sum(r.get("perf/computed_tokens", float("nan")) for r in timed)
    memory = max((r.get("perf/peak_gpu_mib", r.get("perf/peak_rss_mib", 0)) for r in records), default=None)
    return {"layout": layout, "steps": len(timed), "step_s": seconds / len(timed), "real_tokens_per_step": real / len(timed),
            "computed_tokens_per_step": computed / len(timed), "real_tokens_per_s": real / seconds, "peak_mib": memory}


varlen = {layout: varlen_row(layout) for layout in ("padded", "unpadded")}
out = {"settings": settings, "model": model, "tasks": tasks, "peak_matmul": peak,
       "flops_per_token": {"total": flops_per_token, "dense_6n": 6 * dense, "attention": attention,
                           "n_dense": dense, "head_counted": True},
       "expected_tokens_per_step": expected_tokens, "rows": rows, "varlen": varlen}
tmp = json_out.with_name(json_out.name + ".partial")
tmp.write_text(json.dumps(out, indent=2) + "\n")
tmp.rename(json_out)

fmt = lambda v, f: "—" if v is None else format(v, f)
print(f"\nmachine: {peak['device_name'] if peak else '?'}; measured {settings['peak_dtype']} matmul peak "
      f"{fmt(peak and peak['tflops'], '.4g')} TFLOP/s ({peak['n'] if peak else '?'}² GEMM)")
print(f"model: random-init Llama, hidden {model['hidden']}, {model['layers']} layers, {model['heads']} heads / "
      f"{model['kv_heads']} kv heads × {model['head_dim']}, intermediate {model['intermediate']}, "
      f"{'tied' if model['tied'] else 'untied'}, vocab {model['vocab']} (tokenizer ids 0..{model['tokenizer_ids'] - 1}), "
      f"{model['parameters'] / 1e6:.1f}M parameters")
print(f"FLOPs/token: {flops_per_token / 1e9:.3f} G = 6·{dense / 1e6:.1f}M (non-embedding + LM head) "
      f"+ {attention / 1e9:.3f} G causal attention at seq {seq}; MFU = tokens/s × FLOPs/token ÷ the measured "
      f"peak, the LM head credited at every token although fomaml and 'head on scored rows' compute it only "
      f"where a token is scored")
print(f"meta-step: {settings['meta_batch']} tasks × ({settings['inner_steps']} inner steps × {settings['inner_batch']} rows "
      f"+ {settings['query_batch']} query rows) × {seq} tokens = {expected_tokens} tokens; {settings['device']}, "
      f"{settings['dtype']}; {settings['warmup']} warm-up + {settings['steps']} timed meta-steps per implementation")
for row in rows:
    extra = f"; step times {', '.join(f'{t:.2f}' for t in row['step_times_s'])} s" if row.get("step_times_s") else ""
    tokens = row.get("tokens_per_step")
    check = "" if tokens is None or abs(tokens - expected_tokens) < 0.5 else f" (NOT the expected {expected_tokens})"
    per_step = f"; {tokens:.0f} tokens/step{check}" if tokens is not None else ""
    print(f"  {row['impl']}: {row['status']}{' — ' + row['detail'] if row.get('detail') else ''}{per_step}{extra}")

print("\n| impl | tokens/s | MFU | peak GPU memory (MiB, nvidia-smi) | peak allocator memory (MiB) | ours ÷ this (tokens/s) |")
print("|---|---|---|---|---|---|")
for row in rows:
    tps = fmt(row.get("tokens_per_s"), ".0f") if row["status"] == "ok" else row["status"]
    mfu = "—" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
    ratio = "—" if row["ours_over_this"] is None else f"{row['ours_over_this']:.2f}×"
    print(f"| {row['impl']} | {tps} | {mfu} | {row['smi_cell']} | {row.get('allocator', 'n/a')} | {ratio} |")
if any(varlen.values()):
    info = load("tasks-varlen.json", {})
    print(f"\nMATH-like lengths (mean {info.get('mean_row_tokens', float('nan')):.0f} tokens per row, cut to {seq}); "
          "fomaml, same batches:")
    print("\n| batches | timed steps | real tokens / step | computed tokens / step | meta-step (s) | real tokens/s | peak memory (MiB) | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    base = varlen["padded"]
    for layout, r in varlen.items():
        if r is None:
            print(f"| {layout} | not run | | | | | | |")
            continue
        speed = f"{base['step_s'] / r['step_s']:.2f}×" if base else "—"
        print(f"| {layout} | {r['steps']} | {r['real_tokens_per_step']:.0f} | {r['computed_tokens_per_step']:.0f} | "
              f"{r['step_s']:.2f} | {r['real_tokens_per_s']:.0f} | {fmt(r['peak_mib'], '.0f')} | {speed} |")

