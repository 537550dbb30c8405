"""Held-out loss of a run: mean cross-entropy over the fixed validation batches, perplexity, bits per byte."""

from __future__ import annotations

import math
from pathlib import Path

from scratchllm.util.errors import UserError


def heldout_loss(run: str | Path, data: str | Path | None, device, dist, warn=print) -> dict:
    """val_loss, val_ppl and val_bpb (None when the token folder has no byte counts) of the run's newest
    checkpoint on `data` (default: the token folder it was trained on), and what was measured."""
    from scratchllm.train.checkpoint import load_run, run_tokenizer
    from scratchllm.train.loader import val_batch_count
    from scratchllm.train.metrics import split_bits_per_byte
    from scratchllm.train.trainer import evaluate, open_data

    if not (Path(run) / "config.toml").is_file() and (Path(run) / "config.json").is_file():
        raise UserError(f"{run} is a transformers folder: the held-out loss needs a run folder; "
                        "pass --task to evaluate it on a task")
    cfg, model, path = load_run(run, device, warn=warn)
    given, data = data is not None, data or cfg.train.data
    if not data:
        raise UserError(f"{run}: no token folder recorded; pass --data DIR")
    folder, _ = open_data(data, cfg)  # the run's vocabulary: its tokens must fit it
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
