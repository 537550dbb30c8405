"""The training loop: AdamW, warmup + cosine schedule, accumulation, mixed precision, checkpoints, DDP.

One optimizer step = `grad_accum` micro-batches on each of the ranks. Everything a step depends on
(weights, AdamW moments, the step number that sets the learning rate, the grad scaler, every RNG,
the loader position) is in a checkpoint, so a resumed run repeats the uninterrupted one exactly.
Losses are read back from the device (`.item()`, a sync) only at log and eval points.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from scratchllm.config import Config, TrainConfig
from scratchllm.data.tokens import TokenFolder
from scratchllm.train import checkpoint as ckpt
from scratchllm.train.distributed import Dist, setup, teardown
from scratchllm.train.loader import TokenLoader, eval_batches
from scratchllm.train.metrics import MetricsLog, sample_entry, split_bits_per_byte, truncate_samples
from scratchllm.train.precision import autocast, resolve
from scratchllm.util import UserError

# Dense bf16 peak of GPUs, for MFU in the progress bar (CPUs: measure it, see benchmarks/); the first
# entry whose words are all in the device name wins.
PEAK_FLOPS = {"H100 PCIE": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12,
              "L40": 181e12, "L4": 121e12, "4090": 165e12}


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named like 'NVIDIA L40S', matched word by word (an L40S is no L4)."""
    words = set(re.split(r"[\s\-_]+", device_name.upper()))
    return next((v for k, v in PEAK_FLOPS.items() if set(k.split()) <= words), None)


def compile_problem(device: torch.device) -> str | None:
    """None if torch.compile can build and run a small graph with its backward on `device`, else why not.

    Compilation needs a working backend (a C++ compiler on CPUs, Triton on CUDA), which a laptop or
    Windows machine may lack; it fails only at the first call, so try one tiny call (no RNG used).
    """
    try:
        a = torch.ones(4, 8, device=device, requires_grad=True)
        b = torch.ones(8, 8, device=device, requires_grad=True)
        torch.compile(lambda a, b: torch.nn.functional.gelu(a @ b).sum())(a, b).backward()
    except Exception as e:  # any failure at all means: train eagerly
        first = (str(e).strip().splitlines() or [""])[0]
        return f"{type(e).__name__}: {first}"[:300]
    return None


def lr_at(step: int, tc: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (from 0): linear warmup, then cosine down to min_lr."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if step >= tc.max_steps:
        return tc.min_lr
    progress = (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps)
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.lr - tc.min_lr)


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (and embeddings) only; fused, else foreach, kernels."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kwargs = dict(lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=1e-8)
    for fast in ({"fused": True}, {"foreach": True}):
        try:
            return torch.optim.AdamW(groups, **kwargs, **fast)
        except (RuntimeError, TypeError, ValueError):  # this device or build lacks the kernel
            continue
    return torch.optim.AdamW(groups, **kwargs)


def open_data(data_dir: str | Path, cfg: Config) -> tuple[dict, np.ndarray, np.ndarray, Config]:
    """meta.json, the train and val token maps, and the config with vocab_size taken from the data."""
    folder = TokenFolder.open(data_dir)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=folder.model_vocab_size(cfg.model.vocab_size)))
    return folder.meta, folder.train, folder.val, cfg


def load_tokenizer(data_dir: str | Path):
    """The data's tokenizer for text samples, or None when it cannot be loaded."""
    try:
        from scratchllm.data.tokenize import load_tokenizer_for_data

        return load_tokenizer_for_data(data_dir)
    except Exception:  # samples are a nicety; training must not depend on them
        return None


@torch.no_grad()
def evaluate(model, val: np.ndarray, tc: TrainConfig, block_size: int, device, dist: Dist,
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


def sample_text(model, tokenizer, n_tokens: int, device, seed: int) -> str | None:
    """A short sample from the start of a document (its own generator: training RNGs stay untouched)."""
    if tokenizer is None or n_tokens == 0:
        return None
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([[tokenizer.eot_id]], device=device)
    out = model.generate(idx, n_tokens, temperature=0.8, top_k=50, generator=gen)
    return tokenizer.decode(out[0, 1:].tolist())


def _resume_point(ckpt_dir: Path, resume: bool, dist: Dist, warn) -> tuple[Path, dict] | None:
    """The checkpoint every rank continues from: rank 0 chooses, so ranks on machines without a shared
    filesystem cannot each pick their own newest; every rank then checks its copy of that one."""
    choice = (bool(ckpt.list_checkpoints(ckpt_dir)), None)
    found = None
    if dist.main and resume:
        found = ckpt.latest_checkpoint(ckpt_dir, warn=warn)
        if found is not None:
            # Newer folders failed their checks. Training will pass their steps again, and pruning
            # must never keep them over the good checkpoints it writes, so they are set aside.
            for moved in ckpt.set_aside_newer(ckpt_dir, found[0]):
                warn(f"note: moved the unusable {moved.name.removeprefix('broken_')} to {moved}")
        choice = (choice[0], found[0].name if found else None)
    exists, name = dist.broadcast(choice)
    if exists and not resume:
        raise UserError(f"{ckpt_dir.parent} already holds checkpoints: add --resume to continue it, "
                        "or pick another --out")
    if exists and name is None:
        raise UserError(f"no checkpoint in {ckpt_dir} passes its checks (see above); starting over "
                        "would overwrite the run's log: move the folder away to do that")
    if name is None:
        if resume:
            warn(f"note: no checkpoint in {ckpt_dir} to resume from; starting from step 0")
        return None

    def verified():
        if found is not None:  # rank 0 checked its copy when it chose
            return found
        try:
            return ckpt_dir / name, ckpt.verify(ckpt_dir / name)
        except ValueError as e:
            raise UserError(f"{ckpt_dir / name}, chosen by rank 0, is not usable here ({e}); all ranks must "
                            "see the same checkpoint folder (a shared filesystem)") from None

    return dist.on_every_rank(verified)  # every rank raises, none waits forever


class _StopSignals:
    """SIGINT/SIGTERM set a flag: the current step finishes, a checkpoint is saved, exit 0.

    A second signal acts as it would without this handler (Ctrl-C twice stops at once, unsaved).
    """

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            signal.signal(signum, self._old[signum])
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def train(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
          quiet: bool = False) -> dict:
    """Train (or continue) the run in `out_dir` on the token folder `data_dir`; returns a summary."""
    dist, device = setup(cfg.train.device)
    try:
        return _train(cfg, Path(data_dir), Path(out_dir), resume, quiet, dist, device)
    finally:
        teardown()


def _train(cfg: Config, data_dir: Path, out: Path, resume: bool, quiet: bool, dist: Dist, device) -> dict:
    from tqdm.auto import tqdm

    from scratchllm.model.gpt import GPT

    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if dist.main and not quiet else (lambda msg: None)
    warn = (lambda msg: print(msg, file=sys.stderr)) if dist.main else (lambda msg: None)
    ckpt_dir = out / "ckpt"
    found = _resume_point(ckpt_dir, resume, dist, warn)
    # Ranks on machines without a shared filesystem may see different data folders.
    meta, train_tokens, val_tokens, cfg = dist.on_every_rank(lambda: open_data(data_dir, cfg))
    tc, T = cfg.train, cfg.model.block_size
    cfg = replace(cfg, train=replace(tc, data=str(data_dir.resolve())))
    precision = resolve(tc.dtype, device)
    if precision.warning:
        warn(precision.warning)
    say(f"precision: {precision.dtype} ({precision.reason})")
    if device.type == "cuda":  # TF32 only touches float32 matmuls on GPUs; CPU float32 stays exact
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    model = GPT(cfg.model).to(device)
    torch.manual_seed(tc.seed + dist.rank)  # but different dropout masks
    optimizer = make_optimizer(model, tc)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.uses_scaler)
    loader = TokenLoader(train_tokens, tc.batch_size, T, tc.order, tc.seed, dist.rank, dist.world_size,
                         name="train.bin")
    out.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(out / "metrics.jsonl")
    step, best_val, best_ckpt = 0, math.inf, None
    if found is not None:
        path, state = found
        ckpt.load_model_weights(model, path, device)
        ckpt.load_optimizer(optimizer, path)
        if state.get("scaler") and precision.uses_scaler:  # empty when saved without float16
            scaler.load_state_dict(state["scaler"])
        loader.load_state_dict(state["loader"])
        rngs = state.get("rng_ranks") or [state["rng"]]
        ckpt.set_rng_state(rngs[dist.rank] if len(rngs) == dist.world_size else state["rng"])
        step = state["step"]
        best_val = math.inf if state.get("best_val") is None else state["best_val"]
        best_ckpt = ckpt_dir / state["best_ckpt"] if state.get("best_ckpt") else None
        say(f"resuming from {path} (step {step})")
    if dist.main:
        # An evaluation made at an off-schedule step because the run stopped there is dropped, so
        # the log continues exactly as the uninterrupted run's.
        def scheduled(s):
            return s % tc.eval_every == 0 or s >= tc.max_steps

        kept = step if found is not None else -1  # a fresh start keeps nothing of a run that died early
        metrics.truncate_after(kept, scheduled)
        truncate_samples(out / "samples.txt", kept, scheduled)
        cfg.save(out / "config.toml")
        before = found[1].get("dtype") if found is not None else None
        if before != precision.dtype:  # a fresh run, or a resume that chose again on other hardware
            if before is not None:
                say(f"note: the checkpoint was trained in {before}; continuing in {precision.dtype}")
            metrics.log(step=step, dtype=precision.dtype, dtype_reason=precision.reason, device=str(device))

    compiled = tc.compile
    if compiled:
        problems = [p for p in dist.gather(compile_problem(device)) if p]  # all ranks compile, or none
        compiled = not problems
        if problems:
            warn(f"warning: torch.compile does not work here ({problems[0]}); training without it")
    ddp = None
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    # Compiling the DDP wrapper (not DDP around a compiled model) lets dynamo split the graph at
    # DDP's buckets, so gradient all-reduces overlap with the backward pass.
    fwd = ddp if ddp is not None else model
    fwd = torch.compile(fwd) if compiled else fwd
    eval_model = model if dist.enabled else fwd  # evaluation needs no gradient sync
    tokenizer = load_tokenizer(data_dir) if dist.main else None
    if tokenizer is not None and found is None:
        tokenizer.save(out / "tokenizer")  # the run folder is then enough for generate and export
    tokens_per_step = tc.batch_size * T * tc.grad_accum * dist.world_size
    val_split = meta.get("val", {})
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None

    def do_eval() -> float:
        val_loss = evaluate(eval_model, val_tokens, tc, T, device, dist, precision.dtype)
        if dist.main:
            row = {"step": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
            bpb = split_bits_per_byte(val_loss, val_split)
            if bpb is not None:
                row["val_bpb"] = bpb
            metrics.log(**row)
            text = sample_text(model, tokenizer, tc.sample_tokens, device, tc.seed)
            if text is not None:
                with open(out / "samples.txt", "a", encoding="utf-8") as f:
                    f.write(sample_entry(step, val_loss, text))
            metrics.plot(out / "loss.png", title=f"{out.name}: {model.num_params() / 1e6:.1f}M parameters")
            say(f"step {step}: val loss {val_loss:.4f}" + (f", {row['val_bpb']:.3f} bits/byte"
                                                              if "val_bpb" in row else ""))
        return val_loss

    def do_save(val_loss: float | None) -> None:
        nonlocal best_val, best_ckpt
        rngs = dist.gather(ckpt.rng_state())
        if not dist.main:
            return
        is_best = val_loss is not None and val_loss < best_val
        if is_best:
            best_val, best_ckpt = val_loss, ckpt_dir / f"step_{step}"
        state = {"tokens": step * tokens_per_step, "val_loss": val_loss,
                 "best_val": best_val if math.isfinite(best_val) else None,  # strict JSON has no Infinity
                 "best_ckpt": best_ckpt.name if best_ckpt else None, "loader": loader.state_dict(),
                 "scaler": scaler.state_dict(), "world_size": dist.world_size, "dtype": precision.dtype}
        if dist.world_size > 1:
            state["rng_ranks"] = rngs
        ckpt.save_checkpoint(ckpt_dir, step, model, optimizer, state)
        ckpt.prune(ckpt_dir, tc.keep_last, best_ckpt)

    bar = tqdm(total=tc.max_steps, initial=step, disable=quiet or not dist.main, unit="step",
               dynamic_ncols=True, file=sys.stderr)
    val_loss = do_eval() if step == 0 and tc.eval_every else None
    last_eval, last_save = step, (step if found is not None else -1)
    t_start = t_log = time.perf_counter()
    step_log = step
    reason, by_signal, by_time, signal_stop = None, False, False, False
    with _StopSignals() as signals:
        while True:
            if step >= tc.max_steps:
                reason = f"reached max_steps {tc.max_steps}"
            elif tc.max_tokens and step * tokens_per_step >= tc.max_tokens:
                reason = f"reached the token budget {tc.max_tokens:,}"
            elif by_signal:
                signal_stop = True
                reason = f"received {signals.received or 'a stop signal (on another rank)'}"
            elif by_time:
                reason = f"reached the time budget of {tc.max_minutes:g} minutes"
            if reason:
                break

            lr = lr_at(step, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(tc.grad_accum):
                x, y = loader.next_batch()
                if device.type == "cuda":
                    x = x.pin_memory().to(device, non_blocking=True)
                    y = y.pin_memory().to(device, non_blocking=True)
                else:
                    x, y = x.to(device), y.to(device)
                # DDP averages gradients only on the last micro-batch; the others just accumulate.
                sync = not dist.enabled or micro == tc.grad_accum - 1
                with (contextlib.nullcontext() if sync else ddp.no_sync()), autocast(device, precision.dtype):
                    _, loss = fwd(x, y)
                    loss = loss / tc.grad_accum
                scaler.scale(loss).backward()
                loss_sum += loss.detach()
            if tc.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)

            over_time = bool(tc.max_minutes) and time.perf_counter() - t_start >= tc.max_minutes * 60
            stops = [signals.received is not None, over_time]
            if step % tc.log_every == 0 or step == tc.max_steps:
                # The one sync per log point. Under DDP the ranks also agree here on stopping (all
                # must stop at the same step); a collective every step would stall the GPU.
                loss_value, stops = dist.mean_and_flags(loss_sum, stops)
                by_signal, by_time = stops
                now = time.perf_counter()
                tok_s = (step - step_log) * tokens_per_step / max(now - t_log, 1e-9)
                t_log, step_log = now, step
                if dist.main:
                    metrics.log(step=step, loss=loss_value, lr=lr, tokens=step * tokens_per_step,
                                tok_per_s=round(tok_s, 1))
                    post = {"loss": f"{loss_value:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tok_s:,.0f}"}
                    if peak:
                        post["mfu"] = f"{100 * model.estimate_mfu(tok_s / dist.world_size, peak):.1f}%"
                    bar.set_postfix(post, refresh=False)
            elif not dist.enabled:
                by_signal, by_time = stops
            val_loss = None
            if step % tc.eval_every == 0 or step == tc.max_steps:  # before the save, which records it
                val_loss, last_eval = do_eval(), step
            if step % tc.ckpt_every == 0:
                do_save(val_loss)
                last_save = step

        # Still inside the signal handler: a Ctrl-C during the final evaluation must not lose the
        # steps since the last checkpoint.
        bar.close()
        say(f"stopping: {reason}")
        if last_eval != step and not signal_stop:  # a signal asks for a quick exit: the checkpoint only
            val_loss = do_eval()
        if last_save != step:
            do_save(val_loss)
    dist.barrier()
    summary = {"run": str(out), "step": step, "tokens": step * tokens_per_step, "val_loss": val_loss,
               "stop_reason": reason, "minutes": (time.perf_counter() - t_start) / 60,
               "params": model.num_params()}
    bpb = split_bits_per_byte(val_loss, val_split) if val_loss is not None else None
    if bpb is not None:
        summary["val_bpb"] = bpb
    return summary
