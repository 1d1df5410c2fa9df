"""Makes the golden fixtures that tests/integration/golden.rs checks our decoder against.

For each architecture: a tiny random-init model written with `save_pretrained`, plus
`expected.safetensors` holding transformers' own outputs on fixed inputs:
  - batch case (right padding, explicit position ids, verl-style loss mask):
      input_ids, attention_mask, position_ids, loss_mask, logits, loss, grad.<param name>
  - single case (one row, default position ids, no mask): single_ids, single_logits

The loss is verl's SFT loss with the alignment of DESIGN.md: the logit at position t is scored iff
token t+1 is a response token; summed and divided by the number of scored tokens.

Run (from the repo root):  make golden
which is  scripts/with-torch-env.sh python tests/golden/make_golden.py  with transformers pinned.
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "golden")
VOCAB = 256
SEQ = 12

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

ARCHS = {
    # GQA, tied head, Llama-3 rope scaling. original_max_position_embeddings is small so that the
    # low- and mid-frequency bands of the llama3 rule change the rotation at positions < 12.
    "llama": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(
            tie_word_embeddings=True,
            rope_theta=10000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
    # q/k/v bias, untied head.
    "qwen2": (
        transformers.Qwen2Config,
        transformers.Qwen2ForCausalLM,
        dict(tie_word_embeddings=False, rope_theta=1000000.0, use_sliding_window=False),
    ),
    # q_norm / k_norm, explicit head_dim different from hidden_size / num_attention_heads, tied.
    "qwen3": (
        transformers.Qwen3Config,
        transformers.Qwen3ForCausalLM,
        dict(tie_word_embeddings=True, head_dim=32, rope_theta=1000000.0, attention_bias=False),
    ),
}


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Large enough weights that attention and norms matter; norm weights and biases not at init."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.15 * noise)


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    scored = loss_mask[:, 1:].float()
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (nll * scored).sum() / scored.sum()


def batch_inputs(gen: torch.Generator):
    input_ids = torch.randint(3, VOCAB, (2, SEQ), generator=gen)
    attention_mask = torch.ones(2, SEQ, dtype=torch.long)
    attention_mask[1, SEQ - 3 :] = 0
    input_ids[1, SEQ - 3 :] = COMMON["pad_token_id"]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    loss_mask = torch.zeros(2, SEQ, dtype=torch.long)
    loss_mask[0, 5:] = 1
    loss_mask[1, 4 : SEQ - 3] = 1
    return input_ids, attention_mask, position_ids, loss_mask


def make(arch: str, seed: int) -> None:
    config_cls, model_cls, extra = ARCHS[arch]
    config = config_cls(**COMMON, **extra)
    config._attn_implementation = "eager"  # an independent reference: explicit softmax, not SDPA
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = model_cls(config).float()
    randomize(model, gen)
    model.eval()

    out_dir = os.path.join(OUT, arch)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)

    input_ids, attention_mask, position_ids, loss_mask = batch_inputs(gen)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    loss = sft_loss(logits, input_ids, loss_mask)
    model.zero_grad()
    loss.backward()

    single_ids = torch.randint(3, VOCAB, (1, 7), generator=gen)
    with torch.no_grad():
        single_logits = model(input_ids=single_ids).logits

    tensors = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "loss_mask": loss_mask,
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(1),
        "single_ids": single_ids,
        "single_logits": single_logits.contiguous(),
    }
    for name, p in model.named_parameters():
        tensors[f"grad.{name}"] = p.grad.detach().contiguous()
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "seed": str(seed)}
    save_file(tensors, os.path.join(out_dir, "expected.safetensors"), metadata=meta)
    print(f"{arch}: loss {loss.item():.6f}, {len(list(model.parameters()))} parameters -> {out_dir}")


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    for i, arch in enumerate(sys.argv[1:] or ARCHS):
        make(arch, seed=1234 + i)
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__}, f, indent=1)
        f.write("\n")
