"""Makes the GGUF fixtures that tests/integration/import_gguf.rs checks `fomaml import-gguf` against.

The reference is gguf-py (llama.cpp's own Python package, `pip install gguf`), independent of our
reader: it writes the files, quantizes, and dequantizes the values we must reproduce.

tests/fixtures/gguf/
  types.gguf      one [4, 256] tensor per type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (quantized
                  from random values by gguf.quants), Q4_K, Q5_K, Q6_K (random blocks: gguf-py has no
                  quantizer for them, only the dequantizer).
  llama.gguf      a random tiny Llama (2 layers, hidden 64, 4 heads, 2 kv heads, tied head), tensors in
                  a mix of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, q/k permuted as
                  convert_hf_to_gguf.py does; tokenizer: byte-level BPE, pre `llama-bpe`, add_bos.
  qwen2.gguf      a tiny Qwen2 (q/k/v bias, untied head), F32 / Q8_0, pre `qwen2`.
  qwen3.gguf      a tiny Qwen3 (q/k norm, head_dim 32 != 64 / 4), F32 / Q8_0, pre `qwen2`.
  expected.safetensors
    types.<TYPE>              gguf-py's dequantization of each tensor of types.gguf
    llama.dequant.<gguf name> gguf-py's dequantization of every non-F32 tensor of llama.gguf (GGUF layout)
    llama.hf.<hf name>        the original HF tensors stored as F32 (layer 0's q/k test the permutation)
    <arch>.input_ids, <arch>.logits
                              transformers (eager attention, fp32) on the model whose weights are
                              gguf-py's dequantized values, un-permuted: what the file represents
  expected.json   texts with the ids the original tokenizers give them, and the chat template
                  rendered by transformers, per model.

Run from the repo root (gguf is needed only here):
  FOMAML_EXTRA_PIP="transformers==5.23.0 gguf==0.19.0" scripts/with-torch-env.sh \
      python tests/golden/make_gguf_golden.py
"""

import json
import os

import gguf
import numpy as np
import tokenizers
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "gguf")

LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 12345 times faster than the other one!",
    "The capital of France is Paris, and the capital of Italy is Rome. They're both old cities.",
    "Solve for x: 3x + 5 = 20. Therefore x = 5, so the answer is 5.",
    "Café, naïve, über — résumé. 数学题 🙂 emoji and more text for the merges.",
] * 30

TEXTS = [
    "The capital of France is Paris.",
    "It's 2024: the fox jumped 12345 times!\n\tTabs  and spaces.",
    "Café naïve — résumé 数学 🙂",
]

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]

TOKENIZERS = {
    "llama": dict(
        pre="llama-bpe", pattern=LLAMA3_PATTERN, nfc=False, ignore_merges=True, add_bos=True,
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|end_of_text|>", template=LLAMA_TEMPLATE,
    ),
    "qwen": dict(
        pre="qwen2", pattern=QWEN2_PATTERN, nfc=True, ignore_merges=False, add_bos=False,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", template=QWEN_TEMPLATE,
    ),
}

HIDDEN, HEADS, KV_HEADS, LAYERS, CONTEXT = 64, 4, 2, 2, 256

# GGUF type of each llama.gguf tensor (the rest F32): every 32-block type, both layers differ.
LLAMA_TYPES = {
    "token_embd.weight": Q.Q8_0,
    "blk.0.attn_v.weight": Q.F16,
    "blk.0.attn_output.weight": Q.BF16,
    "blk.0.ffn_gate.weight": Q.Q4_0,
    "blk.0.ffn_up.weight": Q.Q4_1,
    "blk.0.ffn_down.weight": Q.Q8_0,
    "blk.1.attn_q.weight": Q.Q4_0,
    "blk.1.attn_k.weight": Q.Q4_1,
    "blk.1.attn_v.weight": Q.Q5_0,
    "blk.1.attn_output.weight": Q.Q5_1,
    "blk.1.ffn_gate.weight": Q.Q8_0,
    "blk.1.ffn_up.weight": Q.F16,
    "blk.1.ffn_down.weight": Q.Q4_0,
}

HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf]
    _, _, layer, rest = hf.split(".", 3)
    base, param = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_NAMES[base]}.{param}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half rows to Meta's interleaved ones, as convert_hf_to_gguf.py's LlamaModel does."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def train_tokenizer(spec):
    tok = Tokenizer(models.BPE(ignore_merges=spec["ignore_merges"]))
    if spec["nfc"]:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=spec["specials"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=spec["bos"], eos_token=spec["eos"], pad_token=spec["pad"],
        add_bos_token=spec["add_bos"],
    )
    fast.chat_template = spec["template"]
    return tok, fast


def add_tokenizer(writer: gguf.GGUFWriter, spec, tok: Tokenizer):
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = json.loads(tok.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(spec["pre"])
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in spec["specials"] else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    if spec["bos"]:
        writer.add_bos_token_id(vocab[spec["bos"]])
    writer.add_eos_token_id(vocab[spec["eos"]])
    writer.add_pad_token_id(vocab[spec["pad"]])
    writer.add_add_bos_token(spec["add_bos"])
    writer.add_chat_template(spec["template"])
    return len(tokens)


def tokenizer_expectations(fast):
    return {
        "texts": TEXTS,
        "ids": [fast(t, add_special_tokens=False)["input_ids"] for t in TEXTS],
        "ids_with_special": [fast(t)["input_ids"] for t in TEXTS],
        "messages": MESSAGES,
        "chat": fast.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True),
    }


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.15 * noise)


def make_model(arch: str, spec, tok, fast, types, seed: int, expected: dict, extra: dict):
    config_cls, model_cls, arch_extra = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(tie_word_embeddings=True)),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                  dict(tie_word_embeddings=False, use_sliding_window=False)),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
                  dict(tie_word_embeddings=False, head_dim=32, attention_bias=False)),
    }[arch]
    vocab = tok.get_vocab_size(with_added_tokens=True)
    config = config_cls(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5, rope_theta=10000.0 if arch == "llama" else 1000000.0, **arch_extra,
    )
    config._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    randomize(model, gen)
    head_dim = config.head_dim if arch == "qwen3" else HIDDEN // HEADS

    writer = gguf.GGUFWriter(os.path.join(OUT, f"{arch}.gguf"), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(96)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    if arch == "qwen3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(vocab)
    add_tokenizer(writer, spec, tok)

    dequantized = {}
    for hf, p in model.state_dict().items():
        if hf == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = gguf_name(hf)
        w = p.detach().numpy().astype(np.float32)
        if arch == "llama" and hf.endswith("q_proj.weight"):
            w = llama_cpp_permute(w, HEADS)
        elif arch == "llama" and hf.endswith("k_proj.weight"):
            w = llama_cpp_permute(w, KV_HEADS)
        qtype = types(name, w)
        if qtype == Q.F32:
            writer.add_tensor(name, w)
            back = w
        elif qtype == Q.F16:
            writer.add_tensor(name, w.astype(np.float16))
            back = w.astype(np.float16).astype(np.float32)
        else:
            data = gguf.quants.quantize(w, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            back = gguf.quants.dequantize(data, qtype)
        assert back.shape == w.shape and back.dtype == np.float32, (name, back.shape, back.dtype)
        if arch == "llama" and qtype != Q.F32:
            expected[f"llama.dequant.{name}"] = torch.from_numpy(np.ascontiguousarray(back))
        if arch == "llama" and qtype == Q.F32:
            expected[f"llama.hf.{hf}"] = p.detach().clone().contiguous()
        if arch == "llama" and hf.endswith("q_proj.weight"):
            back = llama_cpp_unpermute(back, HEADS)
        elif arch == "llama" and hf.endswith("k_proj.weight"):
            back = llama_cpp_unpermute(back, KV_HEADS)
        dequantized[hf] = torch.from_numpy(np.ascontiguousarray(back))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # The model the file represents: the dequantized weights, back in HF layout.
    with torch.no_grad():
        for hf, p in model.state_dict().items():
            p.copy_(dequantized[hf] if hf in dequantized else dequantized["model.embed_tokens.weight"])
        ids = fast(TEXTS[1], return_tensors="pt")["input_ids"]
        expected[f"{arch}.input_ids"] = ids
        expected[f"{arch}.logits"] = model(input_ids=ids).logits.contiguous()
    extra[arch] = tokenizer_expectations(fast)
    print(f"{arch}: vocab {vocab}, {len(dequantized)} tensors, {ids.shape[1]} input tokens")


def make_types(expected: dict):
    rng = np.random.default_rng(7)
    writer = gguf.GGUFWriter(os.path.join(OUT, "types.gguf"), "none")
    shape = (4, 256)
    for qtype in [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]:
        values = rng.standard_normal(shape).astype(np.float32) * 0.3 + rng.standard_normal((shape[0], 1)).astype(np.float32)
        data = gguf.quants.quantize(values, qtype)
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor(f"t.{qtype.name}", data)
        else:
            writer.add_tensor(f"t.{qtype.name}", data, raw_dtype=qtype)
        expected[f"types.{qtype.name}"] = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(data, qtype)))
    # Random super-blocks; the f16 scales set to finite values so that no NaN/inf hides a mistake.
    for qtype, scale_offsets in [(Q.Q4_K, [0, 2]), (Q.Q5_K, [0, 2]), (Q.Q6_K, [208])]:
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        data = rng.integers(0, 256, size=(shape[0], shape[1] // block_size * type_size), dtype=np.uint8)
        for row in data:
            for off in scale_offsets:
                row[off:off + 2] = np.frombuffer(np.float16(rng.uniform(0.001, 0.05)).tobytes(), dtype=np.uint8)
        writer.add_tensor(f"t.{qtype.name}", data, raw_dtype=qtype)
        expected[f"types.{qtype.name}"] = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(data, qtype)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    expected, extra = {}, {}
    make_types(expected)
    tok, fast = train_tokenizer(TOKENIZERS["llama"])
    make_model("llama", TOKENIZERS["llama"], tok, fast, lambda name, w: LLAMA_TYPES.get(name, Q.F32), 1, expected, extra)
    tok, fast = train_tokenizer(TOKENIZERS["qwen"])
    big_q8 = lambda name, w: Q.Q8_0 if w.ndim == 2 and w.size >= 4096 else Q.F32  # noqa: E731
    make_model("qwen2", TOKENIZERS["qwen"], tok, fast, big_q8, 2, expected, extra)
    make_model("qwen3", TOKENIZERS["qwen"], tok, fast, big_q8, 3, expected, extra)
    versions = {"gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
                "transformers": transformers.__version__, "torch": torch.__version__,
                "tokenizers": tokenizers.__version__}
    save_file(expected, os.path.join(OUT, "expected.safetensors"), metadata=versions)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"versions": versions, **extra}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"fixtures: {total / 1024:.0f} KiB in {OUT}")
