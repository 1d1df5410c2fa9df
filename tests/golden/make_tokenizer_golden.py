"""Makes the tokenizer / chat-template / SFT-encoding fixtures that tests/integration/encoding.rs checks.

For each template family (the real chat templates in tests/fixtures/chat_templates/): a small
byte-level BPE tokenizer trained here with the family's real pre-tokenizer regex and special tokens,
saved by transformers' PreTrainedTokenizerFast.save_pretrained, and expected.json holding, per case,
what transformers produces: the rendered prompt (apply_chat_template with add_generation_prompt)
and verl's SFT encoding (prompt and response+eos tokenized separately without special tokens,
loss mask 0 on the prompt and 1 on response+eos, verl's truncation).

Run from the repo root:  make golden
"""

import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")

LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 12345 times faster!",
    "Solve for x: 3x + 5 = 20. Therefore x = 5, so the answer is \\boxed{5}.",
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a helpful assistant.",
    "数学题：小明有 3 个苹果，又买了 5 个。他现在有几个苹果？答案是 8。",
    "Café, naïve, über — résumé. Ελληνικά και русский текст. 🙂🚀 emoji!",
    "def f(x):\n    return x ** 2  # square\n\n\tTabs and    spaces.",
] * 20

FAMILIES = {
    "llama3.2": dict(
        pattern=LLAMA3_PATTERN,
        nfc=False,
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
        # transformers defines strftime_now; fomaml does not (reproducible prompts), so pin the date.
        chat_vars={"date_string": "26 Jul 2024"},
    ),
    "qwen2.5": dict(
        pattern=QWEN2_PATTERN, nfc=True,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_vars={},
    ),
    "qwen3": dict(
        pattern=QWEN2_PATTERN, nfc=True,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_vars={},
    ),
}

CASES = [
    dict(prompt="What is 2 + 3?", response="2 + 3 = 5, so the answer is \\boxed{5}."),
    dict(prompt="  leading spaces\nand a newline ", response="\nstarts with a newline"),
    dict(prompt="小明有 3 个苹果，又买了 5 个。", response="一共 8 个：\\boxed{8} 🙂"),
    dict(prompt="Café naïve — résumé", response="Ελληνικά русский 🚀"),
    dict(prompt="Truncate me from the left please, this is long.", response="Short answer here.",
         max_length=12, truncation="left"),
    # max_length "prompt+N": the prompt's length in this family plus N (system headers differ).
    dict(prompt="Truncate me from the right.", response="The response loses its end and eos.",
         max_length="prompt+3", truncation="right"),
    # Cut inside the prompt: verl would emit an all-zero loss mask; fomaml refuses the example.
    dict(prompt="Cut inside the prompt.", response="Never seen.", max_length="prompt-2", truncation="right"),
    dict(prompt="Too long for max_length with truncation error.", response="Nope.",
         max_length=8, truncation="error"),
]


def train_tokenizer(family):
    tok = Tokenizer(models.BPE())
    if family["nfc"]:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(family["pattern"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=family["specials"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def encode(tok, family, case, chat_vars):
    messages = [{"role": "user", "content": case["prompt"]}]
    prompt_text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **chat_vars)
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tok(case["response"] + tok.eos_token, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + response_ids
    mask = [0] * len(prompt_ids) + [1] * len(response_ids)
    max_length = case.get("max_length")
    if isinstance(max_length, str):
        max_length = len(prompt_ids) + int(max_length[len("prompt"):])
    out = dict(prompt_text=prompt_text, max_length=max_length)
    if max_length is not None and len(ids) > max_length:
        if case["truncation"] == "error":
            return dict(out, error="over max_length")
        if case["truncation"] == "left":
            ids, mask = ids[-max_length:], mask[-max_length:]
        else:
            ids, mask = ids[:max_length], mask[:max_length]
        if not any(mask[1:]):
            return dict(out, error="nothing scored")
    return dict(out, input_ids=ids, loss_mask=mask)


def make(name, family):
    with open(os.path.join(FIXTURES, "chat_templates", f"{name}.jinja")) as f:
        template = f.read()
    fast = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(family), bos_token=family["bos"],
                                   eos_token=family["eos"], pad_token=family["pad"])
    fast.chat_template = template
    out_dir = os.path.join(FIXTURES, "tokenizers", name)
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)

    variants = [family["chat_vars"]]
    if name == "qwen3":
        variants.append({"enable_thinking": False})
    cases = []
    for chat_vars in variants:
        for case in CASES:
            cases.append(dict(case, chat_vars=chat_vars, expected=encode(fast, family, case, chat_vars)))
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(dict(eos_token=fast.eos_token, pad_token_id=fast.pad_token_id, cases=cases), f,
                  ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{name}: {len(cases)} cases, vocab {fast.vocab_size} -> {out_dir}")


if __name__ == "__main__":
    for name, family in FAMILIES.items():
        make(name, family)
