"""Token folders for the training tests: real text (Shakespeare) as byte-level tokens, no tokenizer needed."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from scratchllm.data.folder import write_meta
from scratchllm.data.tokens import write_tokens

# A model small enough for a few seconds of CPU, as --set arguments and as a dict.
SMALL = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 64, "model.block_size": 64,
         "train.batch_size": 8, "train.dtype": "float32", "train.warmup_steps": 5, "train.log_every": 1,
         "train.eval_batches": 2, "train.sample_tokens": 0}


def sets(**extra) -> list[str]:
    """`--set` arguments for SMALL plus overrides (keys with __ for the dot: train__lr=...)."""
    merged = {**SMALL, **{k.replace("__", "."): v for k, v in extra.items()}}
    args = []
    for key, value in merged.items():
        args += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    return args


def shakespeare_bytes(limit: int = 600_000) -> bytes:
    """The first `limit` bytes of the complete works (fetched once into the shared cache)."""
    from scratchllm.data.sources import open_source

    out = bytearray()
    for doc in open_source("shakespeare"):
        out += doc.text.encode()
        if len(out) >= limit:
            break
    return bytes(out[:limit])


def byte_token_dir(folder: Path, data: bytes, val_fraction: float = 0.1) -> Path:
    """Write train.bin / val.bin / meta.json with one token per byte (vocab 256)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
    n_val = int(len(tokens) * val_fraction)
    write_tokens(folder / "train.bin", tokens[:-n_val])
    write_tokens(folder / "val.bin", tokens[-n_val:])
    split = {"train": len(tokens) - n_val, "val": n_val}
    meta = {"tokenizer": "bytes", "vocab_size": 256, "eot_id": 0, "token_dtype": "uint16", "source": "test"}
    meta.update({k: {"documents": 1, "tokens": n, "bytes": n} for k, n in split.items()})
    write_meta(folder, meta)
    return folder


def modded_nanogpt_dir(folder: Path, data: bytes, n_train_shards: int = 4, val_fraction: float = 0.1) -> Path:
    """The byte tokens as a folder of llm.c shards named as modded-nanogpt names FineWeb's, no meta.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
    n_val = int(len(tokens) * val_fraction)
    write_tokens(folder / "fineweb_val_000000.bin", tokens[-n_val:])
    for i, part in enumerate(np.array_split(tokens[:-n_val], n_train_shards)):
        write_tokens(folder / f"fineweb_train_{i + 1:06d}.bin", part)
    return folder


def losses(run: Path) -> list[tuple[int, float]]:
    """(step, loss) of every training line of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def kill_after_step(cmd: list, env: dict, run: Path, step: int,
                    stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """Start `cmd`, SIGKILL it once its metrics.jsonl has logged the loss of `step` (or 240 s passed);
    the process, reaped."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and any('"loss"' in line and json.loads(line)["step"] >= step
                                    for line in metrics.read_text().splitlines()[:-1]):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return proc


def fill_disk(folder: Path, leave: int) -> Path:
    """Write a file that leaves about `leave` bytes free on the disk of `folder`; returns its path."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(folder).free - leave))
    return filler
