"""Score answers with a language model: log-likelihood, length and greedy match of each, in batches.

Sequences are sorted by length and cut into batches of at most `batch_tokens` padded tokens and
MAX_ROWS sequences; batch k goes to rank k mod world size. The batches do not depend on the number
of ranks, so one process and a torchrun job compute every sequence in the same batch, and give the
same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from scratchllm.runtime.distributed import Dist
from scratchllm.runtime.precision import autocast


@dataclass
class Scores:
    """Per sequence: summed log-probability of its answer, the answer's tokens, and whether greedy
    decoding from the prompt produces exactly the answer."""

    logprob: np.ndarray
    tokens: np.ndarray
    greedy: np.ndarray


def default_batch_tokens(device: torch.device, vocab_size: int) -> int:
    """Padded tokens per batch, so that a batch's logits take about 4 GiB on a GPU, 512 MiB elsewhere."""
    budget = (4 if device.type == "cuda" else 0.5) * 2**30
    return int(min(65536, max(1024, budget // (4 * vocab_size))))


MAX_ROWS = 64  # sequences a batch: enough to fill a GPU, few enough for a lively progress bar


def batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Sequence indices grouped longest first, each group at most `batch_tokens` once padded."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    for i in order:
        # The first of a group is its longest, so the group pads to lengths[group[0]].
        if out and len(out[-1]) < MAX_ROWS and (len(out[-1]) + 1) * lengths[out[-1][0]] <= batch_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


@torch.no_grad()
def score(model, tokens: list, n_answer: list[int], device: torch.device, dist: Dist,
          dtype: str = "float32", batch_tokens: int | None = None,
          progress: Callable[[list[int]], None] | None = None) -> Scores:
    """Score the last n_answer[i] tokens of each tokens[i] given the ones before (all ranks get all).

    The model reads each sequence but its last token, so a sequence may be block_size + 1 long.
    """
    if batch_tokens is None:
        batch_tokens = default_batch_tokens(device, model.config.vocab_size)
    was_training = model.training
    model.eval()
    # Columns: summed log-probability, answer tokens, tokens that greedy decoding would not produce.
    out = torch.zeros(len(tokens), 3, dtype=torch.float64, device=device)
    try:
        for group in batches([len(t) for t in tokens], batch_tokens)[dist.rank::dist.world_size]:
            _score_batch(model, [tokens[i] for i in group], [n_answer[i] for i in group], device, dtype,
                         out, torch.tensor(group, device=device))
            if progress is not None:
                progress(group)
    finally:
        model.train(was_training)
    if dist.enabled:
        torch.distributed.all_reduce(out)  # each sequence was scored on one rank; the others hold zeros
    table = out.cpu().numpy()
    return Scores(table[:, 0], table[:, 1].astype(np.int64), table[:, 2] == 0)


def _score_batch(model, seqs: list, n_answer: list[int], device, dtype: str, out: torch.Tensor,
                 rows_out: torch.Tensor) -> None:
    """Add one batch's scores into out[rows_out]."""
    length = max(len(s) for s in seqs)
    # Padding goes on the right, where causal attention keeps it from touching the real tokens.
    full = torch.zeros(len(seqs), length, dtype=torch.long)
    for b, s in enumerate(seqs):
        full[b, :len(s)] = torch.as_tensor(s)
    # The logits at position p predict token p + 1, so an answer at [len - n, len) is read at
    # positions [len - n - 1, len - 1).
    rows = torch.cat([torch.full((n,), b) for b, n in enumerate(n_answer)])
    cols = torch.cat([torch.arange(len(s) - n - 1, len(s) - 1) for s, n in zip(seqs, n_answer, strict=True)])
    full, rows, cols = full.to(device), rows.to(device), cols.to(device)
    with autocast(device, dtype):
        logits, _ = model(full[:, :-1])  # the last token predicts nothing we score
    picked = logits[rows, cols].float()  # only the answer positions: (answer tokens, vocab)
    targets = full[rows, cols + 1]
    logprob = F.log_softmax(picked, dim=-1).gather(1, targets[:, None])[:, 0]
    missed = (picked.argmax(dim=-1) != targets).double()
    where = rows_out[rows]
    out.index_add_(0, where, torch.stack([logprob.double(), torch.ones_like(missed), missed], dim=1))
