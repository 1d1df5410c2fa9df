"""Which attention path packed (unpadded) batches should take on this CPU: one fused causal SDPA call
per example (what fomaml does), or one SDPA call over the whole stream with a block-diagonal causal
mask; beside them the padded batch's causal SDPA. Forward + backward of attention alone (the rest of
the layer costs the same per real token on either packed path), on libtorch's kernels through
PyTorch, which are the ones fomaml calls.

    scripts/with-torch-env.sh python bench/packed_attention.py

Shapes: the CPU benchmark's model (4 heads × 64) and the Llama-3.2-1B shape (32 heads × 64); B
examples of MATH-like lengths (the log-normal of data::synthetic::math_like_lengths: median about
270, cut to [32, 1024]), fp32, 20 batches each, the same batches for every path.
Environment: THREADS (default: all cores), BATCHES (20).
"""
import math
import os
import random
import statistics
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))
rng = random.Random(0)


def lengths(b):
    return [max(32, min(1024, int(math.exp(5.6 + 0.7 * rng.gauss(0.0, 1.0))))) for _ in range(b)]


def timed(f, q, k, v):
    for t in (q, k, v):
        t.grad = None
    start = time.perf_counter()
    out = f(q, k, v)
    out.backward(torch.ones_like(out))
    return time.perf_counter() - start


def per_example(lens):
    def f(q, k, v):
        outs = [F.scaled_dot_product_attention(a, b, c, is_causal=True)
                for a, b, c in zip(q.split(lens, 2), k.split(lens, 2), v.split(lens, 2))]
        return torch.cat(outs, 2)
    return f


def block_diagonal(lens):
    total = sum(lens)
    segment = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    position = torch.arange(total)
    mask = (segment[:, None] == segment[None, :]) & (position[None, :] <= position[:, None])
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def padded(lens):
    width = max(lens)

    def f(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return f, width


batches = int(os.environ.get("BATCHES", 20))
print("| heads × dim | B | per-example SDPA (ms) | block-diagonal mask (ms) | padded batch (ms) | mask / per-example |")
print("|---|---|---|---|---|---|")
for heads, dim in ((4, 64), (32, 64)):
    for b in (4, 8):
        times = {"per": [], "mask": [], "pad": []}
        for _ in range(batches):
            lens = lengths(b)
            total = sum(lens)
            qkv = [torch.randn(1, heads, total, dim, requires_grad=True) for _ in range(3)]
            times["per"].append(timed(per_example(lens), *qkv))
            times["mask"].append(timed(block_diagonal(lens), *qkv))
            f, width = padded(lens)
            qkv_padded = [torch.randn(b, heads, width, dim, requires_grad=True) for _ in range(3)]
            times["pad"].append(timed(f, *qkv_padded))
        med = {k: 1000 * statistics.median(v) for k, v in times.items()}
        print(f"| {heads} × {dim} | {b} | {med['per']:.1f} | {med['mask']:.1f} | {med['pad']:.1f} | {med['mask'] / med['per']:.1f}× |")
