"""Batches of whole conversations, packed into rows, for supervised fine-tuning.

Each row holds block_size + 1 tokens: whole conversations (never cut, each opens with <|bos|>) and,
after them, padding. The input is the first block_size tokens, the targets the last block_size; a
target is kept only where the render mask marks the assistant's words (and its <|assistant_end|>),
every other target is -1, which the model's loss ignores. Padding sits after the real tokens, so
causal attention never lets a real token see it.

Rows are planned per epoch: the conversations in a seeded random order, each put into the open row
with the least room that still holds it (best fit), a new row when none does; then the rows in a
seeded random order. Packing rather than padding one conversation a row: chit-chat windows average
141 tokens of a 257-token row, so a row of their own would be 45% padding; packed rows are 95% full.

Micro-batches are numbered globally within an epoch: rank r of W takes number position + r, and every
rank moves position on by W, into the next epoch past the end. So W ranks with accumulation A see
exactly the batches one process with accumulation W*A sees, and the loader's state is two integers.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from scratchllm.util.errors import UserError

IGNORE = -1  # a target the loss skips (GPT.forward's ignore_index)
STATE_KEYS = ("epoch", "position", "seed", "batch_size", "block_size", "conversations")


def best_fit(lengths: list[int], order, capacity: int) -> list[list[int]]:
    """Rows of conversation indices: each conversation of `order` into the fullest row that holds it."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for c in order:
        need = lengths[c]
        i = bisect.bisect_left(free, (need, -1))
        if i < len(free):
            room, row = free.pop(i)
        else:
            room, row = capacity, len(rows)
            rows.append([])
        rows[row].append(int(c))
        if room - need > 0:
            bisect.insort(free, (room - need, row))
    return rows


def pack_row(conversations, row: list[int], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, targets) of one row of `length` + 1 tokens: the conversations of `row`, then padding."""
    ids = np.full(length + 1, pad_id, dtype=np.int64)
    keep = np.zeros(length + 1, dtype=bool)
    at = 0
    for c in row:
        tokens, mask = conversations[c]
        ids[at : at + len(tokens)] = tokens
        keep[at : at + len(tokens)] = np.asarray(mask, dtype=bool)
        at += len(tokens)
    targets = np.where(keep[1:], ids[1:], IGNORE)
    return ids[:-1], targets


class ConversationLoader:
    """Resumable, rank-aware batches (x, y) of shape (batch_size, block_size) of packed conversations."""

    def __init__(self, conversations, batch_size: int, block_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pad_id: int = 0):
        too_long = [len(ids) for ids, _ in conversations if len(ids) > block_size + 1]
        if too_long:
            raise UserError(f"a conversation of {too_long[0]} tokens does not fit a row of {block_size + 1}")
        self.conversations = conversations
        self.lengths = [len(ids) for ids, _ in conversations]
        self.B, self.T, self.seed, self.pad_id = batch_size, block_size, seed, pad_id
        self.rank, self.world_size = rank, world_size
        self.epoch = self.position = 0
        self._plans: dict[int, list[list[int]]] = {}
        if self.batches_in(0) < world_size:
            raise UserError(f"{len(conversations):,} conversations pack into {len(self.plan(0))} rows, too "
                            f"few for {world_size} batch(es) of {batch_size}; use more data or a smaller "
                            "batch_size")

    def plan(self, epoch: int) -> list[list[int]]:
        """The rows of `epoch` (computed once; the two newest epochs are kept)."""
        if epoch not in self._plans:
            rng = np.random.default_rng([self.seed, epoch])
            rows = best_fit(self.lengths, rng.permutation(len(self.lengths)), self.T + 1)
            self._plans[epoch] = [rows[i] for i in rng.permutation(len(rows))]
            for old in [e for e in self._plans if e < epoch - 1]:
                del self._plans[old]
        return self._plans[epoch]

    def batches_in(self, epoch: int) -> int:
        """Whole micro-batches of `epoch` (a last partial one is dropped)."""
        return len(self.plan(epoch)) // self.B

    def batch_at(self, epoch: int, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of micro-batch `number` of `epoch`; a number past the epoch's end runs into the next."""
        while number >= self.batches_in(epoch):
            number -= self.batches_in(epoch)
            epoch += 1
        rows = self.plan(epoch)[number * self.B : (number + 1) * self.B]
        xs, ys = zip(*(pack_row(self.conversations, r, self.T, self.pad_id) for r in rows), strict=True)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next micro-batch; every rank moves on by the number of ranks."""
        x, y = self.batch_at(self.epoch, self.position + self.rank)
        self.position += self.world_size
        while self.position >= self.batches_in(self.epoch):
            self.position -= self.batches_in(self.epoch)
            self.epoch += 1
        return x, y

    def state_dict(self) -> dict:
        """The position (epoch, micro-batch within it), plus what it depends on (checked when loading)."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.B,
                "block_size": self.T, "conversations": len(self.conversations)}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state_dict()` was taken."""
        mine = self.state_dict()
        for key in STATE_KEYS[2:]:
            if state.get(key) != mine[key]:
                raise UserError(f"cannot resume the conversation loader: {key} was {state.get(key)}, "
                                f"now {mine[key]}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def eval_rows(conversations, batch_size: int, block_size: int, rank: int = 0, world_size: int = 1,
              pad_id: int = 0):
    """This rank's share of the held-out batches: every conversation once, packed in source order."""
    rows = best_fit([len(ids) for ids, _ in conversations], range(len(conversations)), block_size + 1)
    for k in range(rank, -(-len(rows) // batch_size), world_size):
        batch = rows[k * batch_size : (k + 1) * batch_size]
        xs, ys = zip(*(pack_row(conversations, r, block_size, pad_id) for r in batch), strict=True)
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


@torch.no_grad()
def assistant_loss(model, conversations, batch_size: int, block_size: int, device, dist,
                   dtype: str | None = None) -> float:
    """Mean cross-entropy per assistant token (and end token) of the held-out conversations."""
    from scratchllm.runtime.precision import autocast

    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=device, dtype=torch.float64)
    for x, y in eval_rows(conversations, batch_size, block_size, dist.rank, dist.world_size):
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype or "float32"):
            _, loss = model(x, y)
        n = (y != IGNORE).sum()
        total += torch.stack([loss.double() * n, n.double()])
    model.train(was_training)
    if dist.enabled:
        torch.distributed.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()
