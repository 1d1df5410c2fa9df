"""The FOMAML meta-step in PyTorch eager on transformers' LlamaForCausalLM: the GPU generalisation of
bench/fomaml_step_torch.py, on the same model directory and task files as the fomaml run.

    python bench/gpu/fomaml_step_torch.py --model M --tasks-dir T --device cuda --dtype bf16 ... --out R.json

The step is DESIGN.md's: for each of --meta-batch tasks, from θ, K inner SGD steps on fresh support
batches (create_graph off), the query gradient at θ′ accumulated into a meta-gradient (1/tasks), θ
restored; then clip_grad_norm_ and AdamW. Loss: verl's, cross-entropy over response tokens (+ eos),
fp32, divided by the batch's scored tokens. bf16 is autocast over fp32 master weights (what a PyTorch
user writes for mixed precision); attention is SDPA. Written the way a careful PyTorch user would:
_foreach ops for the inner update, accumulation and restore, fused AdamW on CUDA.
--head full scores the LM head at every position (transformers' and verl's way); --head scored
applies it only where a token is scored, the saving fomaml makes, to separate that saving from the rest.
Writes one JSON object (also printed as `RESULT {...}`); a CUDA OOM is a result (status "oom").
"""
import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import encode, load_tokenizer, read_rows, task_dirs  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--tasks-dir", required=True)
p.add_argument("--device", default="cuda")
p.add_argument("--dtype", choices=("bf16", "f32"), default="bf16")
p.add_argument("--head", choices=("full", "scored"), default="full")
p.add_argument("--meta-batch", type=int, default=4)
p.add_argument("--inner-steps", type=int, default=5)
p.add_argument("--inner-lr", type=float, default=1e-4)
p.add_argument("--inner-batch", type=int, default=4)
p.add_argument("--query-batch", type=int, default=4)
p.add_argument("--outer-lr", type=float, default=3e-5)
p.add_argument("--weight-decay", type=float, default=0.01)
p.add_argument("--clip", type=float, default=1.0)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", required=True)
a = p.parse_args()

device = torch.device(a.device)
cuda = device.type == "cuda"
if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
rng = random.Random(a.seed)
result = {"impl": f"pytorch-{a.head}", "device": str(device), "dtype": a.dtype, "head": a.head,
          "torch": torch.__version__, "status": "ok"}


def finish(status, **fields):
    result.update(status=status, **fields)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        result["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["max_memory_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    tmp = Path(a.out + ".partial")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.rename(a.out)
    print("RESULT " + json.dumps(result), flush=True)


tok = load_tokenizer(a.model)
pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0


class Split:
    """A split's encoded rows, walked epoch by epoch with a fresh permutation each epoch."""

    def __init__(self, path):
        self.rows = [encode(tok, r["prompt"], r["response"]) for r in read_rows(path)]
        self.order, self.next = [], 0

    def batch(self, n):
        picked = []
        for _ in range(n):
            if self.next == len(self.order):
                self.order, self.next = rng.sample(range(len(self.rows)), len(self.rows)), 0
            picked.append(self.rows[self.order[self.next]])
            self.next += 1
        width = max(len(ids) for ids, _ in picked)
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, (row, loss_mask) in enumerate(picked):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = torch.tensor(loss_mask)
            attention[i, : len(row)] = 1
        padded = bool((attention == 0).any())
        # Unpadded batches go without a mask so SDPA takes its causal (flash) path, as fomaml does.
        return (ids.to(device, non_blocking=True), mask.to(device, non_blocking=True),
                attention.to(device) if padded else None, int(attention.sum()))


tasks = [{s: Split(d / f"{s}.jsonl") for s in ("support", "query")} for d in task_dirs(a.tasks_dir)]
if len(tasks) < a.meta_batch:
    sys.exit(f"fomaml_step_torch: {len(tasks)} tasks in {a.tasks_dir}, fewer than --meta-batch {a.meta_batch}")

# Loaded in whatever dtype this transformers picks, then made fp32 master weights explicitly.
model = LlamaForCausalLM.from_pretrained(a.model, attn_implementation="sdpa")
model.config.use_cache = False
model = model.to(device=device, dtype=torch.float32)
model.train()
params = [p for p in model.parameters() if p.requires_grad]
result["parameters"] = sum(p.numel() for p in params)
autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16")


def loss_of(ids, loss_mask, attention):
    scored = loss_mask[:, 1:].bool()
    targets = ids[:, 1:][scored]
    with autocast:
        if a.head == "full":
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1][scored]
        else:
            hidden = model.model(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
            logits = model.lm_head(hidden[:, :-1][scored])
    return F.cross_entropy(logits.float(), targets, reduction="sum") / max(int(scored.sum()), 1)


optimizer = torch.optim.AdamW(params, lr=a.outer_lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=a.weight_decay,
                              fused=cuda)
meta_grad = [torch.zeros_like(p) for p in params]
theta = [torch.empty_like(p) for p in params]


def meta_step():
    torch._foreach_zero_(meta_grad)
    with torch.no_grad():
        torch._foreach_copy_(theta, params)
    tokens, losses = 0, []
    for task in rng.sample(tasks, a.meta_batch):
        for _ in range(a.inner_steps):
            ids, mask, attention, n = task["support"].batch(a.inner_batch)
            grads = torch.autograd.grad(loss_of(ids, mask, attention), params)
            with torch.no_grad():
                torch._foreach_add_(params, grads, alpha=-a.inner_lr)
            del grads
            tokens += n
        ids, mask, attention, n = task["query"].batch(a.query_batch)
        loss = loss_of(ids, mask, attention)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            torch._foreach_add_(meta_grad, grads, alpha=1.0 / a.meta_batch)
            torch._foreach_copy_(params, theta)
        del grads
        tokens += n
        losses.append(loss.item())
    for p_, g in zip(params, meta_grad):
        p_.grad = g
    torch.nn.utils.clip_grad_norm_(params, a.clip)
    optimizer.step()
    for p_ in params:
        p_.grad = None
    return tokens, sum(losses) / len(losses)


def sync():
    if cuda:
        torch.cuda.synchronize(device)


try:
    for _ in range(a.warmup):
        meta_step()
    sync()
    step_times, tokens, loss = [], 0, float("nan")
    for _ in range(a.steps):
        started = time.perf_counter()
        t, loss = meta_step()
        sync()
        step_times.append(time.perf_counter() - started)
        tokens += t
except torch.OutOfMemoryError as e:
    finish("oom", error=str(e).splitlines()[0])
    sys.exit(3)
seconds = sum(step_times)
finish("ok", warmup=a.warmup, steps=a.steps, seconds=seconds, step_times_s=step_times,
       tokens_per_step=tokens / a.steps, tokens_per_s=tokens / seconds, query_loss=loss,
       threads=torch.get_num_threads(), pid=os.getpid())
