"""`scratchllm sft`: supervised fine-tuning on conversations, with the Trainer of pre-training.

The run starts from the weights and tokenizer of `--init` (a run, an export, a transformers GPT-2
folder); the tokenizer gets the chat tokens if it lacks them. It trains on packed conversations (see
`scratchllm.chat.loader`) with the loss on the assistant's tokens only, and measures the same loss on
the held-out conversations at each evaluation. Checkpoints, --resume, torchrun and the precision
choice are pre-training's.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from scratchllm.chat.data import load_conversations
from scratchllm.chat.loader import STATE_KEYS, ConversationLoader, assistant_loss, best_fit
from scratchllm.config import Config
from scratchllm.util.errors import UserError
from scratchllm.util.log import REPORT, get_logger

logger = get_logger(__name__)

# Fine-tuning's settings where pre-training's do not suit: a smaller learning rate for weights that
# already know the language, a short warm-up, evaluations often enough for a short run.
SFT_SETS = ["train.optimizer=adamw", "train.lr=3e-4", "train.min_lr=3e-5", "train.warmup_steps=20",
            "train.weight_decay=0.0", "train.max_steps=300", "train.eval_every=100", "train.ckpt_every=100",
            "train.log_every=10", "train.sample_tokens=0", "train.batch_size=16"]
# What a resumable sft checkpoint holds besides the optimizer (checked by `checkpoint.check_state`).
SFT_PARTS = {"loader": ("position", *[k for k in STATE_KEYS if k != "position"])}


def sft_config(out: str | Path, resume: bool, sets: Sequence[str] = (), max_steps: int | None = None,
               max_minutes: float | None = None) -> Config:
    """The config of an sft run: SFT_SETS and `sets` (train.* keys, and model.dropout: the rest of the
    model is --init's), or on a resume the run's own config.toml with `sets` on top."""
    from scratchllm.train.run_config import run_config

    if any(s.strip().startswith("model.") and s.partition("=")[0].strip() != "model.dropout" for s in sets):
        raise UserError("sft keeps the model of --init: only train.* keys and model.dropout may be set")
    resuming = resume and (Path(out) / "config.toml").is_file()
    return run_config(out, resume, None, None, list(sets) if resuming else [*SFT_SETS, *sets], max_steps,
                      max_minutes)


def _packing_note(convs, block_size: int) -> str:
    rows = best_fit([len(ids) for ids, _ in convs], range(len(convs)), block_size + 1)
    tokens = sum(len(ids) for ids, _ in convs)
    learned = sum(sum(mask) for _, mask in convs)
    return (f"{len(convs):,} conversations ({tokens:,} tokens, {learned / tokens:.0%} of them the "
            f"assistant's) pack into {len(rows):,} rows of {block_size + 1}, "
            f"{tokens / len(rows) / (block_size + 1):.0%} full")


def _run(cfg: Config, init: str | None, out: Path, resume: bool, quiet: bool, dist, device, lock,
         dropout: float | None) -> dict:
    from scratchllm.tokenizer import Tokenizer
    from scratchllm.train.launch import prepare_run_folder, resume_point, start_from
    from scratchllm.train.trainer import Trainer
    from scratchllm.util.locks import folder_lock

    dist.on_every_rank(lambda: dist.main and lock.enter_context(folder_lock(out, "fine-tuning")))
    found = resume_point(out / "ckpt", resume, dist, SFT_PARTS)
    weights = None
    if found is not None:  # the run's own model config (config.toml) and tokenizer
        tok = dist.on_every_rank(lambda: Tokenizer.load(out / "tokenizer"))
    elif init is None:
        raise UserError("sft needs --init: a run folder, an export, or a transformers GPT-2 folder")
    else:
        cfg, weights, tok = start_from(init, cfg, dist, chat=True)
        if dropout is not None:
            cfg = replace(cfg, model=replace(cfg.model, dropout=dropout))
    tc, block = cfg.train, cfg.model.block_size
    if tc.val_conversations < 1:
        raise UserError("train.val_conversations must be at least 1: the held-out loss needs conversations")
    convs = dist.on_every_rank(lambda: load_conversations(tc.data, tok, block + 1, tc.val_conversations,
                                                          tc.seed))
    logger.info(f"train: {_packing_note(convs.train, block)}; held out: {len(convs.val):,} conversations")
    bos = tok.special_tokens["<|bos|>"]
    loader = dist.on_every_rank(lambda: ConversationLoader(convs.train, tc.batch_size, block, tc.seed,
                                                           dist.rank, dist.world_size, pad_id=bos))

    def val_loss(model, device, dist, dtype):
        return assistant_loss(model, convs.val, tc.batch_size, block, device, dist, dtype)

    trainer = dist.on_every_rank(lambda: Trainer(cfg, None, out=out, dist=dist, device=device, quiet=quiet,
                                                 tokenizer=tok, loader=loader, init=weights,
                                                 val_loss=val_loss))
    if found is not None:
        trainer.restore(*found)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        prepare_run_folder(trainer, found)
    summary = trainer.fit()
    speeds = [r["tok_per_s"] for r in (trainer.metrics.rows if trainer.metrics else []) if "tok_per_s" in r]
    summary["tok_per_s"] = statistics.median(speeds) if speeds else None
    summary["conversations"] = {"train": len(convs.train), "val": len(convs.val)}
    summary["val_messages"] = convs.val_messages  # the held-out conversations, for prompts to try
    return summary


def sft(cfg: Config, init: str | None, data: str, out: str | Path, resume: bool = False,
        quiet: bool = False, dropout: float | None = None) -> dict:
    """Fine-tune (or continue fine-tuning) into `out` on the conversations of `data`; returns a summary.
    `dropout`: the model's dropout while fine-tuning (default: --init's)."""
    from scratchllm.runtime.distributed import setup, teardown

    out = Path(out)
    saved = cfg.train.data
    if resume and saved and saved != data:
        raise UserError(f"{out} was fine-tuned on {saved}, not {data}; resume it with --data {saved}")
    cfg = replace(cfg, train=replace(cfg.train, data=data))
    dist, device = setup(cfg.train.device)
    lock = contextlib.ExitStack()
    try:
        summary = _run(cfg, init, out, resume, quiet, dist, device, lock, dropout)
    finally:
        lock.close()
        teardown()
    if dist.main:
        tok_s = f", {summary['tok_per_s']:,.0f} tokens/s" if summary.get("tok_per_s") else ""
        loss = summary.get("val_loss")
        val = f", held-out assistant loss {loss:.4f}" if loss is not None else ""
        logger.info(f"{summary['run']}: step {summary['step']}{val}{tok_s} ({summary['stop_reason']})",
                    extra=REPORT)
    return summary
