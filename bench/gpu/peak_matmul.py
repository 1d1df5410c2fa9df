"""The machine's achievable dense matmul throughput: the denominator of MFU in bench/gpu/run.sh.

    python bench/gpu/peak_matmul.py --device cuda --n 8192 --dtype bf16

A measured peak, not the datasheet's: MFU against it says how much of what this GPU really does on
large GEMMs the training step gets. Best of several timed rounds (cuda events on GPU), after warm-up
so cuBLAS has picked its kernel and the clocks have ramped. Prints one JSON line.
"""
import argparse
import json
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--device", default="cuda")
p.add_argument("--n", type=int, default=8192)
p.add_argument("--dtype", choices=("bf16", "f32"), default="bf16")
p.add_argument("--iters", type=int, default=20)
p.add_argument("--rounds", type=int, default=5)
a = p.parse_args()

device = torch.device(a.device)
dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
x = torch.randn(a.n, a.n, device=device, dtype=dtype)
y = torch.randn(a.n, a.n, device=device, dtype=dtype)
out = torch.empty(a.n, a.n, device=device, dtype=dtype)
cuda = device.type == "cuda"


def timed(iters):
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            torch.matmul(x, y, out=out)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    started = time.perf_counter()
    for _ in range(iters):
        torch.matmul(x, y, out=out)
    return time.perf_counter() - started


timed(max(2, a.iters // 4))
best = min(timed(a.iters) for _ in range(a.rounds))
flops = 2 * a.n**3 * a.iters
name = torch.cuda.get_device_name(device) if cuda else "cpu"
print(json.dumps({"device_name": name, "n": a.n, "dtype": a.dtype, "iters": a.iters,
                  "seconds": best, "tflops": flops / best / 1e12}))
