"""Set-up for the chat tests: a small BPE with the chat tokens, Shakespeare tokens for a tiny base run,
and real conversations (windows of the Chit-Chat set) written as OpenAI-style JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

from _train_helpers import shakespeare_bytes

# A model of a few seconds of CPU, as --set arguments (block_size 128: most chit-chat windows fit).
TINY = ["--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=64",
        "--set", "model.block_size=128", "--set", "train.batch_size=8", "--set", "train.dtype=float32",
        "--set", "train.warmup_steps=5", "--set", "train.log_every=1", "--set", "train.eval_batches=2",
        "--set", "train.sample_tokens=0"]
# The same for sft, where the model is --init's.
SFT_TINY = ["--set", "train.batch_size=8", "--set", "train.dtype=float32", "--set", "train.warmup_steps=5",
            "--set", "train.log_every=1"]


def chat_bpe(special=None):
    """A 512-token BPE learned on Shakespeare, with <|endoftext|> and the chat tokens (or `special`)."""
    from scratchllm.tokenizer import train_bpe
    from scratchllm.tokenizer.chat import CHAT_TOKENS
    from scratchllm.tokenizer.encoding import EOT

    text = shakespeare_bytes(200_000).decode("utf-8", "ignore")
    return train_bpe([text], 512, special_tokens=special or (EOT, *CHAT_TOKENS))


def token_folder(folder: Path, tok) -> Path:
    """400 KB of Shakespeare in eight text files, tokenized with `tok` (the last file held out)."""
    from scratchllm.data.tokenize import tokenize_to_dir

    text = shakespeare_bytes(400_000).decode("utf-8", "ignore")
    docs = folder.parent / f"{folder.name}_text"
    docs.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        (docs / f"{i}.txt").write_text(text[i * 50_000 : (i + 1) * 50_000], encoding="utf-8")
    tokenize_to_dir(f"text:{docs}/*.txt", tok, folder, val_docs=1, quiet=True)
    return folder


def chitchat_jsonl(path: Path, n: int = 400) -> Path:
    """The first `n` chit-chat windows as {"messages": [...]} lines."""
    from scratchllm.chat.data import iter_conversations

    with open(path, "w", encoding="utf-8") as f:
        for i, (_, messages) in enumerate(iter_conversations("chitchat")):
            if i == n:
                break
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def metric_rows(run: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of every metrics.jsonl row holding `key`."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if key in r]
