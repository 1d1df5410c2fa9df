"""A random-init Llama of a chosen shape (default: Llama-3.2-1B's) carrying the staged tiny tokenizer.

    python bench/gpu/make_model.py TOKENIZER_DIR OUT_DIR [--vocab 128256 --hidden 2048 ...]

The vocabulary may be larger than the tokenizer's: the character tokenizer's ids are then a subset
of it, which keeps the embedding and LM head at the real model's size (they change the FLOPs and
memory a lot at 128256) while both implementations read the same token ids. Weights are initialised
on --device (seconds on a GPU instead of minutes on CPU) and saved in bf16: both sides upcast them to
fp32 master weights, so they train from identical values. Prints one JSON line describing the model.
"""
import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("tokenizer_dir")
p.add_argument("out")
p.add_argument("--vocab", type=int, default=128256)
p.add_argument("--hidden", type=int, default=2048)
p.add_argument("--layers", type=int, default=16)
p.add_argument("--heads", type=int, default=32)
p.add_argument("--kv-heads", type=int, default=8)
p.add_argument("--head-dim", type=int, default=64)
p.add_argument("--intermediate", type=int, default=8192)
p.add_argument("--tied", type=int, choices=(0, 1), default=1)
p.add_argument("--rope-theta", type=float, default=500000.0)
p.add_argument("--max-positions", type=int, default=131072)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--device", default="cpu")
a = p.parse_args()
src, out = Path(a.tokenizer_dir), Path(a.out)

tiny = json.loads((src / "config.json").read_text())
if a.vocab < tiny["vocab_size"]:
    raise SystemExit(f"make_model: --vocab {a.vocab} is smaller than the tokenizer's {tiny['vocab_size']} ids")
# Llama 3.2's long-context rope only changes the rotary frequencies (no FLOPs); it is kept so the
# model is the real architecture, and only when the context is long enough for it to be valid.
rope_scaling = None
if a.max_positions > 8192:
    rope_scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192}
cfg = LlamaConfig(
    vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
    num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
    max_position_embeddings=a.max_positions, rms_norm_eps=1e-5, rope_theta=a.rope_theta,
    rope_scaling=rope_scaling, tie_word_embeddings=bool(a.tied), hidden_act="silu",
    bos_token_id=tiny.get("bos_token_id"), eos_token_id=tiny["eos_token_id"], pad_token_id=tiny["pad_token_id"],
    use_cache=False,
)
torch.manual_seed(a.seed)
with torch.device(a.device):
    model = LlamaForCausalLM(cfg)
model = model.to(torch.bfloat16)
tmp = out.with_name(out.name + ".partial")
shutil.rmtree(tmp, ignore_errors=True)
model.save_pretrained(tmp, safe_serialization=True, max_shard_size="100GB")
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(src / f, tmp / f)
# The tiny tokenizer declares a 256-token limit, which would make transformers warn on every row.
tok_cfg = json.loads((tmp / "tokenizer_config.json").read_text())
tok_cfg["model_max_length"] = a.max_positions
(tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
shutil.rmtree(out, ignore_errors=True)
tmp.rename(out)

total = sum(p.numel() for p in model.parameters())  # a tied head is one tensor, counted once
embedding = model.get_input_embeddings().weight.numel()
head = model.get_output_embeddings().weight.numel()
print(json.dumps({
    "vocab": a.vocab, "tokenizer_ids": tiny["vocab_size"], "hidden": a.hidden, "layers": a.layers,
    "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim, "intermediate": a.intermediate,
    "tied": bool(a.tied), "rope_theta": a.rope_theta, "rope_scaling": rope_scaling, "seed": a.seed,
    "parameters": total, "embedding_parameters": embedding, "head_parameters": head,
    "non_embedding_parameters": total - embedding - (0 if a.tied else head),
}))
