"""Held-out loss: mean cross-entropy over the fixed validation batches, perplexity and bits per byte,
of a model in memory (`evaluate`, which training calls at its evaluation steps) or of a run folder's
newest checkpoint (`heldout_loss`, for `scratchllm eval`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from scratchllm.config import TrainConfig
from scratchllm.data.loader import eval_batches, val_batch_count
from scratchllm.runtime.distributed import Dist
from scratchllm.runtime.precision import autocast, resolve
from scratchllm.util.errors import UserError


def bits_per_byte(loss: float, tokens: int, n_bytes: int) -> float:
    """Cross-entropy in nats per token turned into bits per UTF-8 byte of text."""
    return loss / math.log(2) * tokens / n_bytes


def split_bits_per_byte(loss: float, split: dict) -> float | None:
    """Bits per byte of a split described by meta.json ({"tokens", "bytes"}), None without byte counts."""
    if not split or not split.get("bytes") or not split.get("tokens"):
        return None
    return bits_per_byte(loss, split["tokens"], split["bytes"])


@torch.no_grad()
def evaluate(model, val, tc: TrainConfig, block_size: int, device, dist: Dist,
             dtype: str | None = None) -> float:
    """Mean loss over the fixed validation batches (shared out over the ranks), in `dtype` (default:
    what train.dtype resolves to on `device`)."""
    dtype = dtype or resolve(tc.dtype, device).dtype
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=device)
    for x, y in eval_batches(val, tc.batch_size, block_size, tc.eval_batches, dist.rank, dist.world_size):
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            _, loss = model(x, y)
        total += torch.stack([loss.float(), torch.ones((), device=device)])
    model.train(was_training)
    if dist.enabled:
        torch.distributed.all_reduce(total)
    return (total[0] / total[1]).item()


def heldout_loss(run: str | Path, data: str | Path | None, device, dist) -> dict:
    """val_loss, val_ppl and val_bpb (None when the token folder has no byte counts) of the run's newest
    checkpoint on `data` (default: the token folder it was trained on), and what was measured."""
    from scratchllm.data.folder import TokenFolder
    from scratchllm.run.load import load_run, run_tokenizer

    if not (Path(run) / "config.toml").is_file() and (Path(run) / "config.json").is_file():
        raise UserError(f"{run} is a transformers folder: the held-out loss needs a run folder; "
                        "pass --task to evaluate it on a task")
    cfg, model, path = load_run(run, device)
    given, data = data is not None, data or cfg.train.data
    if not data:
        raise UserError(f"{run}: no token folder recorded; pass --data DIR")
    folder = TokenFolder.open(data)
    folder.model_vocab_size(cfg.model.vocab_size)  # the run's vocabulary: its tokens must fit it
    meta, val = folder.meta, folder.val
    if given and meta.get("tokenizer_sha256"):
        try:
            tok = run_tokenizer(run, cfg)
        except UserError:
            tok = None  # a run without a known tokenizer: nothing to compare against
        if tok is not None and tok.sha256() != meta["tokenizer_sha256"]:
            raise UserError(f"{data}: these tokens come from another tokenizer than the run's ({tok.name}); "
                            "tokenize the text with the run's tokenizer first")
    loss = evaluate(model, val, cfg.train, cfg.model.block_size, device, dist)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
            "val_bpb": split_bits_per_byte(loss, meta.get("val", {})), "checkpoint": path.name,
            "data": str(data), "batch_size": cfg.train.batch_size,
            "batches": min(cfg.train.eval_batches, val_batch_count(len(val), cfg.train.batch_size,
                                                                   cfg.model.block_size)),
            "block_size": cfg.model.block_size}
