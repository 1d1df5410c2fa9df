#!/usr/bin/env bash
# Peak host memory of loading a checkpoint, against the size of the checkpoint and of the weights.
# The claim under test: loading never holds two full copies (checkpoint pages + weights) in RAM.
#   scripts/with-torch-env.sh bench/load_memory.sh [hidden_size] [layers]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
hidden=${1:-1024}; layers=${2:-12}
work=target/bench/load_memory; rm -rf "$work"; mkdir -p "$work"

python - "$work" "$hidden" "$layers" <<'PY'
import json, os, sys, torch
from safetensors.torch import save_file
out, hidden, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
inter, vocab, heads = hidden * 11 // 4, 32000, hidden // 64
cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=vocab, hidden_size=hidden,
           intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
           num_key_value_heads=heads // 4, rms_norm_eps=1e-5, rope_theta=500000.0,
           max_position_embeddings=4096, tie_word_embeddings=True, hidden_act="silu")
shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
kv = heads // 4 * 64
for i in range(layers):
    p = f"model.layers.{i}"
    shapes.update({f"{p}.self_attn.q_proj.weight": (hidden, hidden), f"{p}.self_attn.k_proj.weight": (kv, hidden),
                   f"{p}.self_attn.v_proj.weight": (kv, hidden), f"{p}.self_attn.o_proj.weight": (hidden, hidden),
                   f"{p}.mlp.gate_proj.weight": (inter, hidden), f"{p}.mlp.up_proj.weight": (inter, hidden),
                   f"{p}.mlp.down_proj.weight": (hidden, inter), f"{p}.input_layernorm.weight": (hidden,),
                   f"{p}.post_attention_layernorm.weight": (hidden,)})
g = torch.Generator().manual_seed(0)
for dtype, name in [(torch.float32, "f32"), (torch.bfloat16, "bf16")]:
    d = os.path.join(out, name); os.makedirs(d)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    save_file({k: (torch.randn(s, generator=g) * 0.02).to(dtype) for k, s in shapes.items()},
              os.path.join(d, "model.safetensors"))
PY

bin=target/release/fomaml
cargo build --release --quiet --bin fomaml
rss_mib() { /usr/bin/time -v "$@" 2>&1 >/dev/null | awk -F: '/Maximum resident/ {printf "%d", $2/1024}'; }
baseline=$(rss_mib "$bin" doctor)
printf '\n| checkpoint | file MiB | loaded as | weights MiB | peak RSS MiB | RSS − process baseline (%s MiB) |\n' "$baseline"
echo "|---|---|---|---|---|---|"
for ckpt in f32 bf16; do
  for dtype in f32 bf16; do
    file=$(( $(stat -c %s "$work/$ckpt/model.safetensors") / 1048576 ))
    params=$(python -c "import json,sys; from safetensors import safe_open; f=safe_open('$work/$ckpt/model.safetensors','np'); import math; print(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))")
    bytes=$([ $dtype = f32 ] && echo 4 || echo 2)
    weights=$(( params * bytes / 1048576 ))
    peak=$(rss_mib "$bin" logits --model "$work/$ckpt" --input-ids 1,2,3 --dtype $dtype --device cpu --out "$work/out.safetensors")
    echo "| $ckpt | $file | $dtype | $weights | $peak | $(( peak - baseline )) |"
  done
done
