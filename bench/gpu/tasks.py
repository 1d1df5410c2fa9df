"""Synthetic FOMAML tasks whose every row is exactly --seq tokens after the chat template (or, with
--lengths math, of MATH-like lengths cut to --seq), the config that trains fomaml on them, and
verl's SFT encoding for the PyTorch side.

    python bench/gpu/tasks.py make MODEL_DIR OUT_DIR --seq 2048 --tasks 4 --support 20 --query 4 [--config-json '{...}'] [--lengths math]
    python bench/gpu/tasks.py check MODEL_DIR OUT_DIR FOMAML_BINARY

Rows are random characters: the staged tokenizer is character-level, so a row's length in tokens is
known exactly and tokens/s counts real, unpadded tokens on both sides. `check` compares fomaml's
encoding of the first row (`fomaml encode`) with the one the PyTorch bench uses, token for token.
"""
import argparse
import json
import math
import random
import string
import subprocess
import sys
from pathlib import Path

# No '<' or '|': they could spell a chat special such as <|end|>. No '-': a row starting with one
# would read as a flag when passed to `fomaml encode`.
ALPHABET = string.ascii_letters + string.digits + " .,;:!?+*/=()"


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir)


def encode(tok, prompt, response):
    """verl's SFT encoding: the user turn with the generation prompt (loss 0), then response + eos (loss 1)."""
    chat = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(chat, add_special_tokens=False)["input_ids"]
    response_ids = tok(response + tok.eos_token, add_special_tokens=False)["input_ids"]
    return prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def task_dirs(out):
    return sorted(d for d in Path(out, "tasks").iterdir() if d.is_dir())


def make(a):
    tok = load_tokenizer(a.model)
    empty_prompt = len(encode(tok, "", "x")[0]) - 2  # template tokens around the prompt, eos excluded
    response_tokens = max(2, round(a.seq * a.response_fraction))  # the eos is one of them
    prompt_chars = a.seq - empty_prompt - response_tokens
    if prompt_chars < 1:
        sys.exit(f"tasks.py: --seq {a.seq} is too short for a prompt (template {empty_prompt}, response {response_tokens})")
    rng = random.Random(a.seed)
    text = lambda n: "".join(rng.choice(ALPHABET) for _ in range(n))

    def length():
        """A row's tokens: --seq, or MATH-like (data::synthetic::math_like_lengths' log-normal: median
        about 270, long tail) cut to [shortest, --seq]."""
        if a.lengths == "fixed":
            return a.seq
        shortest = max(32, 2 * empty_prompt + 4)  # room for a prompt beside half the row as response
        return max(shortest, min(a.seq, int(math.exp(5.6 + 0.7 * rng.gauss(0.0, 1.0)))))

    def row(n):
        response = max(2, round(n * a.response_fraction))
        return {"prompt": text(n - empty_prompt - response), "response": text(response - 1)}, n

    out = Path(a.out)
    tasks, all_lengths = [], []
    for t in range(a.tasks):
        d = out / "tasks" / f"task_{t:02d}"
        d.mkdir(parents=True, exist_ok=False)
        entry = {"name": d.name}
        for split, n in (("support", a.support), ("query", a.query)):
            made = [row(length()) for _ in range(n)]
            rows = [r for r, _ in made]
            for r, want in made:
                ids, _ = encode(tok, r["prompt"], r["response"])
                if len(ids) != want:
                    sys.exit(f"tasks.py: a {split} row of {d.name} encodes to {len(ids)} tokens, not {want}")
                all_lengths.append(want)
            path = d / f"{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            entry[f"{split}_files"] = [str(path.resolve())]
        tasks.append(entry)
    write_config(out / "config.yaml", json.loads(a.config_json), tasks)
    print(json.dumps({"tasks": a.tasks, "support_rows": a.support, "query_rows": a.query, "seq": a.seq,
                      "prompt_tokens": a.seq - response_tokens, "response_tokens_with_eos": response_tokens,
                      "lengths": a.lengths, "mean_row_tokens": sum(all_lengths) / len(all_lengths)}))


def write_config(path, settings, tasks):
    """The run's YAML: `settings` maps section -> {key: value}; values are written as JSON, which YAML reads."""
    lines = []
    for section, values in settings.items():
        lines.append(f"{section}:")
        lines += [f"  {k}: {json.dumps(v)}" for k, v in values.items()]
        if section == "meta":
            lines.append("  tasks:")
            lines += [f"    - {json.dumps(t)}" for t in tasks]
    Path(path).write_text("\n".join(lines) + "\n")


def check(a):
    tok = load_tokenizer(a.model)
    row = read_rows(task_dirs(a.out)[0] / "support.jsonl")[0]
    ids, mask = encode(tok, row["prompt"], row["response"])
    cmd = [a.fomaml, "encode", "--model", a.model, "--prompt", row["prompt"], "--response", row["response"],
           "--max-length", str(len(ids))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"tasks.py check: `fomaml encode` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    ours = json.loads(proc.stdout)
    if ours["input_ids"] != ids or ours["loss_mask"] != mask:
        first = next((i for i, (x, y) in enumerate(zip(ours["input_ids"], ids)) if x != y), min(len(ids), len(ours["input_ids"])))
        sys.exit(f"tasks.py check: fomaml and the PyTorch bench encode the first row differently "
                 f"({len(ours['input_ids'])} vs {len(ids)} tokens, first difference at {first}, "
                 f"scored {sum(ours['loss_mask'])} vs {sum(mask)})")
    print(f"encoding check: fomaml and the PyTorch bench agree on the first row ({len(ids)} tokens, {sum(mask)} scored)")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("model")
    m.add_argument("out")
    m.add_argument("--seq", type=int, required=True)
    m.add_argument("--tasks", type=int, required=True)
    m.add_argument("--support", type=int, required=True)
    m.add_argument("--query", type=int, required=True)
    m.add_argument("--response-fraction", type=float, default=0.5)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--lengths", choices=["fixed", "math"], default="fixed")
    m.add_argument("--config-json", default="{}")
    c = sub.add_parser("check")
    c.add_argument("model")
    c.add_argument("out")
    c.add_argument("fomaml")
    args = p.parse_args()
    make(args) if args.cmd == "make" else check(args)
