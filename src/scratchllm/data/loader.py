"""Batches of (inputs, targets) from token shards, read through their memory maps.

The tokens are a 1-D array or a `ShardedTokens` (a folder's shards read as one array: a window may
run from one shard into the next, as from one document into the next). A window is T+1 consecutive
tokens: the first T are the input, the last T the targets (the same tokens shifted by one). Only
the windows a batch needs are read, so memory does not grow with the number or size of the shards.
Two orders:

- `random`: each window starts at a seeded random offset (nanoGPT's way). With `align`, the start
  moves on to the first token of the next document, if one begins within a window's length
  (modded-nanogpt's records gained from windows that start at a document); inside a document
  longer than that, the window stays where it fell, so long documents are still read whole.
- `sequential`: the tokens are cut into non-overlapping windows, visited in order, epoch after epoch.

Micro-batches are numbered globally across ranks: the k-th batch of rank r (of W ranks) is global
batch k*W + r. Its windows depend only on the seed and that number, so N ranks with accumulation A
see exactly the batches one process with accumulation N*A sees, and the whole position of the
loader is one integer, which is what `state_dict()` saves.
"""

from __future__ import annotations

import numpy as np
import torch

from scratchllm.util.errors import UserError

# What `TokenLoader.state_dict` holds: the position, and what it depends on.
STATE_KEYS = ("batches", "order", "seed", "batch_size", "block_size", "world_size", "n_tokens", "align")
# What a checkpoint saved before a key existed meant by it.
STATE_DEFAULTS = {"align": False}


class TokenLoader:
    """Resumable, rank-aware batches of shape (batch_size, block_size) from a 1-D token array or shards."""

    def __init__(self, tokens, batch_size: int, block_size: int, order: str = "random",
                 seed: int = 0, rank: int = 0, world_size: int = 1, name: str = "tokens",
                 align: bool = False, eot: int | None = None):
        if order not in ("random", "sequential"):
            raise ValueError(f"order must be 'random' or 'sequential', not {order!r}")
        if align and (order != "random" or eot is None):
            raise ValueError("align needs the random order and the end-of-text id")
        if len(tokens) < block_size + 1:
            raise UserError(f"{name}: {len(tokens):,} tokens is too few for one window of "
                            f"{block_size + 1} (model.block_size + 1); use more data or a smaller block_size")
        self.tokens = tokens
        self.B, self.T = batch_size, block_size
        self.order, self.seed, self.align, self.eot = order, seed, align, eot
        self.rank, self.world_size = rank, world_size
        self.n_windows = (len(tokens) - 1) // block_size  # non-overlapping windows (sequential order)
        self.batches = 0  # micro-batches this rank has drawn

    def starts(self, global_batch: int) -> np.ndarray:
        """Start offsets of the windows of global micro-batch `global_batch`."""
        if self.order == "random":
            rng = np.random.default_rng([self.seed, global_batch])
            starts = rng.integers(0, len(self.tokens) - self.T, size=self.B)
            return np.array([self.document_start(int(s)) for s in starts]) if self.align else starts
        first = global_batch * self.B
        return ((first + np.arange(self.B)) % self.n_windows) * self.T

    def document_start(self, start: int) -> int:
        """The first document start at or after `start` within a window's length that leaves room for a
        whole window; `start` itself when there is none (inside a long document, or near the end)."""
        if start == 0:
            return 0
        ahead = np.asarray(self.tokens[start - 1 : start - 1 + self.T])  # a start follows an EOT
        hits = np.flatnonzero(ahead == self.eot)
        if hits.size:
            moved = start + int(hits[0])
            if moved <= len(self.tokens) - self.T - 1:
                return moved
        return start

    def epoch(self) -> float:
        """How many passes over the file (in windows) the ranks have made together."""
        return self.batches * self.world_size * self.B / self.n_windows

    def batch_at(self, global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) int64 tensors of one global micro-batch, read from the memory map."""
        rows = np.stack([self.tokens[s : s + self.T + 1] for s in self.starts(global_batch)])
        windows = torch.from_numpy(rows.astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next micro-batch."""
        x, y = self.batch_at(self.batches * self.world_size + self.rank)
        self.batches += 1
        return x, y

    def state_dict(self) -> dict:
        """The position, plus what it depends on (checked when loading)."""
        return {"batches": self.batches, "order": self.order, "seed": self.seed, "batch_size": self.B,
                "block_size": self.T, "world_size": self.world_size, "n_tokens": len(self.tokens),
                "align": self.align}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state_dict()` was taken."""
        mine = self.state_dict()
        for key in STATE_KEYS[1:]:
            was = state.get(key, STATE_DEFAULTS.get(key))
            if was != mine[key]:
                raise UserError(f"cannot resume the data loader: {key} was {was}, now {mine[key]}")
        self.batches = int(state["batches"])


def val_batch_count(n_tokens: int, batch_size: int, block_size: int) -> int:
    """How many sequential batches it takes to read every window of `n_tokens` tokens once."""
    return -(-((n_tokens - 1) // block_size) // batch_size)


def eval_batches(tokens, batch_size: int, block_size: int, n_batches: int, rank: int = 0,
                 world_size: int = 1):
    """The fixed validation set: the first `n_batches` sequential batches (at most one pass over the
    tokens: more would only repeat them), this rank's share of them."""
    loader = TokenLoader(tokens, batch_size, block_size, order="sequential", name="val.bin")
    n_batches = min(n_batches, val_batch_count(len(tokens), batch_size, block_size))
    for k in range(rank, n_batches, world_size):
        yield loader.batch_at(k)
