"""Conversations to fine-tune on: where they come from, which are usable, and a held-out split.

Specs:
    chitchat                    the Chit-Chat dataset (7,168 conversations between two people), from
                                the chitchat-dataset 0.9.0 wheel on PyPI (MIT), fetched once, never
                                installed; each conversation is cut into windows of CHITCHAT_TURNS turns
    jsonl:PATH_OR_GLOB          OpenAI-style rows, {"messages": [{"role", "content"}, ...]}
    parquet:GLOB                the same rows as parquet (read by `datasets`, as a hub set is)
    hf:OWNER/NAME[:CONFIG]      a hub set with a `messages` column, streamed (HuggingFaceTB/smol-smoltalk)

A conversation is usable when `check_messages` accepts it and it fits one row of the loader
(model.block_size + 1 tokens); the others are counted by reason and skipped. The held-out split is
made by whole source conversations (a chitchat conversation's windows stay together), by a seeded
permutation, so it is the same on every rank and on every resume.
"""

from __future__ import annotations

import glob
import json
import random
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scratchllm.tokenizer.chat import ConversationError, check_messages, render
from scratchllm.util.errors import UserError
from scratchllm.util.fetch import cache_dir, pip_fetch
from scratchllm.util.log import get_logger

logger = get_logger(__name__)

CHITCHAT_PIN = "chitchat-dataset==0.9.0"
CHITCHAT_FILE = "chitchat_dataset-0.9.0-py3-none-any.whl"
CHITCHAT_SHA256 = "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e"
# Chit-chat conversations run to 19 turns on average (about 500 tokens), more than a small model's
# context: each is cut into windows of this many turns (user first), which fit 256 tokens as a rule.
CHITCHAT_TURNS = 6
TOO_LONG = "longer than the context"


@dataclass
class Conversations:
    """Rendered conversations, (ids, loss mask) each, split into train and held-out ones."""

    train: list[tuple[list[int], list[int]]]
    val: list[tuple[list[int], list[int]]]
    val_messages: list[list[dict]]  # the held-out conversations as messages (prompts for a demo)
    skipped: Counter = field(default_factory=Counter)

    def tokens(self, split: str = "train") -> int:
        """Tokens of a split's conversations."""
        return sum(len(ids) for ids, _ in getattr(self, split))


def chitchat_wheel() -> Path:
    """Path of the cached, sha256-checked chitchat-dataset wheel; fetched through pip on first use."""
    return pip_fetch(CHITCHAT_PIN, cache_dir(), CHITCHAT_FILE, CHITCHAT_SHA256)


def chitchat_turns(conversation: dict) -> list[dict]:
    """One chit-chat conversation as messages: its first sender is the user, the other the assistant;
    a turn's messages joined by newlines, turns of the same sender in a row merged."""
    messages: list[dict] = []
    senders: list[object] = []
    for turn in conversation.get("messages", []):
        texts = [m.get("text", "") for m in turn if isinstance(m, dict)]
        sender = turn[0].get("sender") if turn and isinstance(turn[0], dict) else None
        if sender not in senders:
            senders.append(sender)
        who = senders.index(sender)
        role = ["user", "assistant"][who] if who < 2 else "a third sender"
        text = "\n".join(t.strip() for t in texts if isinstance(t, str) and t.strip())
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n" + text
        else:
            messages.append({"role": role, "content": text})
    return messages


def _windows(messages: list[dict], turns: int) -> Iterator[list[dict]]:
    """Consecutive pieces of `turns` messages, each starting at a user turn; a user turn left over at the
    end (no reply follows it) is no conversation of its own and is dropped."""
    for start in range(0, len(messages), turns):
        piece = messages[start : start + turns]
        if len(piece) > 1 and piece[-1]["role"] == "user":
            piece = piece[:-1]
        if len(piece) > 1 or start == 0:
            yield piece


def _chitchat() -> Iterator[tuple[str, object]]:
    with zipfile.ZipFile(chitchat_wheel()) as z:
        data = json.loads(z.read("chitchat_dataset/dataset.json"))
    for key in sorted(data):
        for piece in _windows(chitchat_turns(data[key]), CHITCHAT_TURNS):
            yield key, piece


def _jsonl(pattern: str, spec: str) -> Iterator[tuple[str, object]]:
    p = Path(pattern).expanduser()
    files = sorted(str(f) for f in p.rglob("*.jsonl")) if p.is_dir() else sorted(glob.glob(str(p)))
    if not files:
        raise UserError(f"no files match {pattern!r} (source {spec})")
    for path in files:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None  # counted as a row that is no conversation
                yield f"{path}:{n}", row.get("messages") if isinstance(row, dict) else "not a JSON object"


def _datasets_rows(spec: str) -> Iterator[tuple[str, object]]:
    """Rows of a hub set or parquet files, through the same streaming sources pre-training reads."""
    from scratchllm.data.sources import HubSource, LocalSource

    kind, _, rest = spec.partition(":")
    source = HubSource(spec, rest) if kind == "hf" else LocalSource(spec, kind, rest)
    try:
        with source.reading():
            ds = source.load()
            for n, row in enumerate(ds):
                yield str(n), row.get("messages")
    except UserError:
        raise
    except Exception as e:  # the reader's own failures: offline, a missing set, a bad file
        raise source.wrap_error(e) from e


def iter_conversations(spec: str) -> Iterator[tuple[str, object]]:
    """(group key, messages as found) of each conversation of a source, in a fixed order; the key names
    the source conversation, which the held-out split keeps whole."""
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if spec == "chitchat":
        return _chitchat()
    if sep and kind == "jsonl" and rest:
        return _jsonl(rest, spec)
    if sep and kind in ("hf", "parquet") and rest:
        return _datasets_rows(spec)
    raise UserError(f"unknown conversation source {spec!r}: use chitchat, jsonl:PATH_OR_GLOB, parquet:GLOB "
                    "or hf:OWNER/NAME[:CONFIG]")


def _usable(messages, tok, max_tokens: int) -> tuple[list[int], list[int]] | str:
    """The conversation rendered, or the reason it cannot be used."""
    if isinstance(messages, str):
        return messages
    try:
        ids, mask = render(check_messages(messages), tok)
    except ConversationError as e:
        return str(e)
    return (ids, mask) if len(ids) <= max_tokens else TOO_LONG


def load_conversations(spec: str, tok, max_tokens: int, val_conversations: int, seed: int = 0,
                       limit: int = 0) -> Conversations:
    """The usable conversations of `spec` (at most `limit` source rows; 0: all), rendered with `tok`, of at
    most `max_tokens` tokens each, with `val_conversations` source conversations held out; the skipped
    ones are logged in a line."""
    groups: dict[str, list] = {}
    skipped: Counter = Counter()
    for n, (key, messages) in enumerate(iter_conversations(spec)):
        if limit and n >= limit:
            break
        got = _usable(messages, tok, max_tokens)
        if isinstance(got, str):
            skipped[got] += 1
        else:
            groups.setdefault(key, []).append((got, messages))
    if skipped:
        reasons = ", ".join(f"{k} {why}" for why, k in skipped.most_common())
        logger.warning(f"{spec}: skipped {sum(skipped.values()):,} conversations ({reasons}; the context "
                       f"holds {max_tokens} tokens)")
    if not groups:
        raise UserError(f"{spec}: no usable conversation (each needs user and assistant turns in order, "
                        f"with text, within {max_tokens} tokens)")
    keys = list(groups)
    if not 0 <= val_conversations < len(keys):
        raise UserError(f"--val-conversations {val_conversations}: {spec} has {len(keys):,} usable source "
                        "conversations, and training needs at least one")
    random.Random(seed).shuffle(keys)
    held = set(keys[:val_conversations])
    train = [r for k in groups if k not in held for r, _ in groups[k]]
    val = [(r, m) for k in groups if k in held for r, m in groups[k]]
    return Conversations(train, [r for r, _ in val], [check_messages(m) for _, m in val], skipped)
