"""The FOMAML meta-step of benches/fomaml_step.rs in PyTorch eager, on transformers' LlamaForCausalLM.

Same model config, data shapes, loss and update rules as the Rust bench (DESIGN.md "The algorithm,
precisely"): for each of 4 tasks, from θ, K = 5 inner SGD steps on fresh support batches
(torch.autograd.grad, create_graph off), the query gradient at θ′ added into a meta-gradient
buffer (scaled by 1/tasks), θ restored with copy_; then clip_grad_norm_(1.0) and torch.optim.AdamW.
Loss: token cross-entropy on positions whose next token is in the loss mask, summed and divided by
the number of scored tokens (verl's SFT loss).

With BENCH_POOLS (a JSON file of each task's support and query example lengths, as the Rust bench
writes with BENCH_POOLS_OUT) the examples have those lengths instead of SEQ, and each batch is
right-padded to its longest example with an attention mask, as transformers runs variable-length
batches (the response is the second half of each example).

BENCH_MODEL (a model directory: transformers' from_pretrained) replaces the random Llama with a
real model (random tokens of its vocabulary); BENCH_DTYPE=bf16 runs the forward and backward under
CPU autocast to bf16 over the fp32 weights (fomaml's bf16: fp32 master, bf16 compute);
BENCH_TASKS / BENCH_INNER_STEPS shrink the meta-step, as for the Rust bench.

Environment: BENCH_THREADS (default: all cores), BENCH_WARMUP (2), BENCH_STEPS (5), BENCH_POOLS,
BENCH_MODEL, BENCH_DTYPE (f32), BENCH_TASKS (4), BENCH_INNER_STEPS (5).
Prints one line `RESULT impl=pytorch threads=.. meta_steps_per_s=.. tokens_per_s=..
computed_tokens_per_step=.. peak_rss_mib=..` (the peak over the whole process, model set-up included).
"""

import json
import os
import resource
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB, SEQ, TASKS, POOL = 2048, 128, 4, 64
INNER_STEPS, INNER_LR, INNER_BATCH, QUERY_BATCH = 5, 1e-3, 4, 4


def main():
    threads = int(os.environ.get("BENCH_THREADS", os.cpu_count()))
    warmup = int(os.environ.get("BENCH_WARMUP", 2))
    steps = int(os.environ.get("BENCH_STEPS", 5))
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        hidden_act="silu",
        use_cache=False,
    )
    if "BENCH_MODEL" in os.environ:
        model = LlamaForCausalLM.from_pretrained(os.environ["BENCH_MODEL"], attn_implementation="sdpa",
                                                 dtype=torch.float32)
    else:
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    vocab = model.config.vocab_size
    tasks_n = int(os.environ.get("BENCH_TASKS", TASKS))
    inner_steps = int(os.environ.get("BENCH_INNER_STEPS", INNER_STEPS))
    dtype = os.environ.get("BENCH_DTYPE", "f32")
    if dtype not in ("f32", "bf16"):
        raise SystemExit(f"BENCH_DTYPE={dtype}: f32 or bf16")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    # Random tokens; every sequence SEQ long, or of the lengths BENCH_POOLS gives; the second half
    # of each is the response (loss mask 1).
    g = torch.Generator().manual_seed(1)
    if "BENCH_POOLS" in os.environ:
        with open(os.environ["BENCH_POOLS"]) as f:
            lengths = json.load(f)
    else:
        lengths = {split: [[SEQ] * POOL for _ in range(tasks_n)] for split in ("support", "query")}
    pools = [
        {split: [torch.randint(0, vocab, (n,), generator=g) for n in lengths[split][task]] for split in ("support", "query")}
        for task in range(tasks_n)
    ]
    # Epoch-by-epoch walk through each split (a fresh permutation per epoch), as the Rust sampler.
    cursors = [{"support": [0, torch.randperm(POOL, generator=g)], "query": [0, torch.randperm(POOL, generator=g)]}
               for _ in range(tasks_n)]

    def next_batch(task, split, n):
        state = cursors[task][split]
        rows = []
        for _ in range(n):
            if state[0] == POOL:
                state[0], state[1] = 0, torch.randperm(POOL, generator=g)
            rows.append(pools[task][split][state[1][state[0]]])
            state[0] += 1
        width = max(len(r) for r in rows)
        ids = torch.zeros(n, width, dtype=torch.long)
        attention = torch.zeros(n, width, dtype=torch.long)
        loss_mask = torch.zeros(n, width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], attention[i, : len(r)] = r, 1
            loss_mask[i, len(r) // 2 : len(r)] = 1
        positions = torch.arange(width).unsqueeze(0).expand(n, width)
        return ids, attention, positions, loss_mask

    def loss_of(batch):
        ids, attention, positions, loss_mask = batch
        with autocast:
            logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False).logits
        scored = loss_mask[:, 1:].bool()
        labels = ids[:, 1:].masked_fill(~scored, -100)
        predictions = logits[:, :-1].float().reshape(-1, vocab)
        total = F.cross_entropy(predictions, labels.reshape(-1), ignore_index=-100, reduction="sum")
        return total / max(int(scored.sum()), 1)

    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    meta_grad = [torch.zeros_like(p) for p in params]

    def meta_step():
        for buf in meta_grad:
            buf.zero_()
        with torch.no_grad():
            theta = [p.detach().clone() for p in params]
        tokens, computed, query_losses = 0, 0, []
        for task in range(tasks_n):
            for _ in range(inner_steps):
                batch = next_batch(task, "support", INNER_BATCH)
                loss = loss_of(batch)
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, gr in zip(params, grads):
                        p.sub_(gr * INNER_LR)
                tokens += int(batch[1].sum())
                computed += batch[0].numel()
            batch = next_batch(task, "query", QUERY_BATCH)
            loss = loss_of(batch)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for buf, gr in zip(meta_grad, grads):
                    buf.add_(gr * (1.0 / tasks_n))
                for p, t in zip(params, theta):
                    p.copy_(t)
            tokens += int(batch[1].sum())
            computed += batch[0].numel()
            query_losses.append(loss.item())
        for p, buf in zip(params, meta_grad):
            p.grad = buf
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return tokens, computed, sum(query_losses) / len(query_losses)

    for _ in range(warmup):
        meta_step()
    tokens, computed, last_loss = 0, 0, float("nan")
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(steps):
        t, c, last_loss = meta_step()
        tokens += t
        computed += c
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    print(
        f"RESULT impl=pytorch threads={threads} steps={steps} seconds={seconds:.3f} cpu_seconds={cpu_seconds:.2f} "
        f"meta_steps_per_s={steps / seconds:.4f} tokens_per_s={tokens / seconds:.1f} "
        f"tokens_per_step={tokens // max(steps, 1)} computed_tokens_per_step={computed // max(steps, 1)} "
        f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} query_loss={last_loss:.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
