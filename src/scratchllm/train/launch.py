"""Starting a run: its data, its run folder, the checkpoint it resumes from or the weights it starts
from, and `train()`, which sets all that up around a `Trainer` on every rank and runs it.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

from scratchllm.config import Config
from scratchllm.data.folder import TokenFolder
from scratchllm.run import checkpoint as ckpt
from scratchllm.runtime.distributed import Dist, setup, teardown
from scratchllm.train.limits import check_fits
from scratchllm.train.metrics import truncate_samples
from scratchllm.train.trainer import Trainer
from scratchllm.util.errors import UserError
from scratchllm.util.locks import folder_lock
from scratchllm.util.log import get_logger

logger = get_logger(__name__)


def open_data(data_dir: str | Path, cfg: Config, verify: bool = False,
              tokenizer=None) -> tuple[TokenFolder, Config]:
    """The token folder, checked (see `TokenFolder.open`), and the config with vocab_size from the data."""
    folder = TokenFolder.open(data_dir, verify=verify, tokenizer=tokenizer)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=folder.model_vocab_size(cfg.model.vocab_size)))
    return folder, cfg


def load_tokenizer(data_dir: str | Path):
    """The data's tokenizer for text samples, or None when it cannot be loaded."""
    try:
        from scratchllm.data.tokenize import load_tokenizer_for_data

        return load_tokenizer_for_data(data_dir)
    except Exception:  # samples are a nicety; training must not depend on them
        return None


def resume_point(ckpt_dir: Path, resume: bool, dist: Dist,
                 parts: dict | None = None) -> tuple[Path, dict] | None:
    """The checkpoint every rank continues from: rank 0 chooses, so ranks on machines without a shared
    filesystem cannot each pick their own newest; every rank then checks its copy of that one. `parts`:
    what a resumable checkpoint holds besides the optimizer (see `checkpoint.check_state`)."""
    choice: tuple[bool, str | None, str | None] = (bool(ckpt.list_checkpoints(ckpt_dir)), None, None)
    found = None
    if dist.main and resume:
        found, why = ckpt.resume_point(ckpt_dir, parts)  # newer broken ones are set aside
        choice = (choice[0], found[0].name if found else None, why)
    exists, name, why = dist.broadcast(choice)
    if exists and not resume:
        raise UserError(f"{ckpt_dir.parent} already holds checkpoints: add --resume to continue it, "
                        "or pick another --out")
    if exists and name is None:
        raise UserError(f"no checkpoint in {ckpt_dir} passes its checks (newest: {why}); starting over "
                        "would overwrite the run's log: move the folder away to do that")
    if name is None:
        if resume:
            logger.warning(f"note: no checkpoint in {ckpt_dir} to resume from; starting from step 0")
        return None

    def verified():
        if found is not None:  # rank 0 checked its copy when it chose
            return found
        try:
            return ckpt_dir / name, ckpt.verify(ckpt_dir / name, training=True, parts=parts)
        except ValueError as e:
            raise UserError(f"{ckpt_dir / name}, chosen by rank 0, is not usable here ({e}); all ranks must "
                            "see the same checkpoint folder (a shared filesystem)") from None

    return dist.on_every_rank(verified)  # every rank raises, none waits forever


def prepare_run_folder(trainer: Trainer, found: tuple[Path, dict] | None) -> None:
    """Rank 0: cut the logs back to the resumed step, save the config and tokenizer, note the precision."""
    out, tc, step, metrics = trainer.run_dir, trainer.tc, trainer.steps, trainer.metrics
    assert metrics is not None, "rank 0 keeps the log"
    # An evaluation made at an off-schedule step because the run stopped there is dropped (the schedules
    # are the ones `fit` follows), so the log continues exactly as the uninterrupted run's.
    kept = step if found is not None else -1  # a fresh start keeps nothing of a run that died early
    metrics.truncate_after(kept, tc.eval_due, tc.tasks_due)
    truncate_samples(out / "samples.txt", kept, tc.eval_due)
    trainer.cfg.save(out / "config.toml")
    precision = trainer.precision
    before = found[1].get("dtype") if found is not None else None
    if before != precision.dtype:  # a fresh run, or a resume that chose again on other hardware
        if before is not None:
            logger.info(f"note: the checkpoint was trained in {before}; continuing in {precision.dtype}")
        metrics.log(step=step, dtype=precision.dtype, dtype_reason=precision.reason,
                    device=str(trainer.device))
    if trainer.tokenizer is not None and found is None:
        trainer.tokenizer.save(out / "tokenizer")  # the run folder is then enough for generate and export


def start_from(init: str, cfg: Config, dist: Dist, chat: bool = False):
    """(config with the model of `init` and train.init recording it, its weights, its tokenizer): where a
    run that starts from trained weights (`train --init`, `sft --init`) starts. `chat`: the tokenizer
    gets the chat tokens, and the model the rows for them (see `with_vocab`)."""
    from scratchllm.run.init import load_init, with_vocab
    from scratchllm.tokenizer.chat import with_chat_tokens

    point = dist.on_every_rank(lambda: load_init(init))
    model, tok = point.model, point.tokenizer
    if chat:
        tok = with_chat_tokens(tok)
        model = dist.on_every_rank(lambda: with_vocab(point.model, tok.vocab_size, str(init)))
    cfg = replace(cfg, model=model.config, train=replace(cfg.train, init=point.source))
    return cfg, model.state_dict(), tok


def train(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
          quiet: bool = False, verify: bool = False, tokenizer: str | None = None,
          init: str | None = None) -> dict:
    """Train (or continue) the run in `out_dir` on the token folder `data_dir`; returns a summary.

    `verify` checks every id and shard hash of the data first; `tokenizer` names the tokenizer of a
    folder without meta.json (llm.c or modded-nanogpt shards: gpt2); `init` starts from the weights
    (and tokenizer) of a run, an export or a transformers folder, with a fresh optimizer; `quiet` turns
    the progress bar off. What the run says goes to the "scratchllm" logger (see scratchllm.util.log)."""
    from scratchllm.tokenizer import load_tokenizer as named_tokenizer

    dist, device = setup(cfg.train.device)
    lock = contextlib.ExitStack()
    try:
        data_dir, out = Path(data_dir), Path(out_dir)
        named = dist.on_every_rank(lambda: named_tokenizer(tokenizer)) if tokenizer else None
        weights = None
        if init is not None:  # the data must be tokens of the init's tokenizer: open_data checks
            cfg, weights, named = start_from(init, cfg, dist)
        # Ranks on machines without a shared filesystem may see different data folders.
        folder, cfg = dist.on_every_rank(lambda: open_data(data_dir, cfg, verify, named))
        dist.on_every_rank(lambda: check_fits(cfg, device))  # before building what cannot fit
        # One job writes a run folder at a time: rank 0 holds its lock for all the ranks, until the end.
        dist.on_every_rank(lambda: dist.main and lock.enter_context(folder_lock(out, "training")))
        found = resume_point(out / "ckpt", resume, dist)
        cfg = replace(cfg, train=replace(cfg.train, data=str(data_dir.resolve())))
        # Rank 0 writes text samples; with downstream tasks every rank scores its share of the items.
        tok = named or (load_tokenizer(data_dir) if dist.main or cfg.train.eval_tasks else None)
        trainer = dist.on_every_rank(lambda: Trainer(cfg, folder.train, folder.val, folder.meta, out, dist,
                                                     device, quiet, tok, eot_id=folder.eot_id, init=weights))
        if found is not None:
            trainer.restore(*found)
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            prepare_run_folder(trainer, found)
        return trainer.fit()
    finally:
        lock.close()
        teardown()
