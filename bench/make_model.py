"""A random-init Llama of a given shape with the tiny model's character tokenizer, for benchmarks.

    python bench/make_model.py TOKENIZER_DIR OUT_DIR --hidden 512 --layers 8
"""
import argparse
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("tokenizer_dir")
p.add_argument("out")
p.add_argument("--hidden", type=int, default=512)
p.add_argument("--layers", type=int, default=8)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
src, out = Path(a.tokenizer_dir), Path(a.out)
base = LlamaConfig.from_pretrained(src)
heads = a.hidden // 64
cfg = LlamaConfig(
    vocab_size=base.vocab_size, hidden_size=a.hidden, intermediate_size=a.hidden * 11 // 4,
    num_hidden_layers=a.layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
    head_dim=64, max_position_embeddings=base.max_position_embeddings, rms_norm_eps=base.rms_norm_eps,
    tie_word_embeddings=False, bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id,
    pad_token_id=base.pad_token_id,
)
torch.manual_seed(a.seed)
LlamaForCausalLM(cfg).save_pretrained(out)
for f in src.iterdir():
    if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
        shutil.copy(f, out / f.name)
print(f"{sum(p.numel() for p in LlamaForCausalLM(cfg).parameters()) / 1e6:.1f}M parameters -> {out}")
