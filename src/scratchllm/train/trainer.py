"""The training loop: a `Trainer` that builds, restores, steps, evaluates and saves (`train()`, in
`scratchllm.train.launch`, sets a run up around it).

One optimizer step = `grad_accum` micro-batches on each of the ranks. Everything a step depends on
(weights, optimizer moments, the step number that sets the learning rate, the grad scaler, every
RNG, the loader position) is in a checkpoint, so a resumed run repeats the uninterrupted one exactly.
Losses are read back from the device (`.item()`, a sync) only at log and eval points.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchllm.config import Config
from scratchllm.data.folder import DEFAULT_EOT
from scratchllm.data.loader import TokenLoader
from scratchllm.eval.loss import evaluate, split_bits_per_byte
from scratchllm.run import checkpoint as ckpt
from scratchllm.runtime.distributed import Dist
from scratchllm.runtime.precision import autocast, resolve
from scratchllm.train.metrics import MetricsLog, sample_entry
from scratchllm.train.optim import make_optimizer
from scratchllm.train.state import RNGState, ScalerState, Stateful, StopFlags, StopSignals, TrainState
from scratchllm.util.errors import UserError, one_line
from scratchllm.util.log import ALL_RANKS, get_logger

logger = get_logger(__name__)

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


def sample_text(model, tokenizer, n_tokens: int, device, seed: int) -> str | None:
    """A short sample from the start of a document (its own generator: training RNGs stay untouched)."""
    if tokenizer is None or n_tokens == 0:
        return None
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([[tokenizer.eot_id]], device=device)
    out = model.generate(idx, n_tokens, temperature=0.8, top_k=50, generator=gen)
    return tokenizer.decode(out[0, 1:].tolist())


class Trainer:
    """One run's model, optimizers, loader and log, with the steps of training as methods.

    Built from a config and token arrays (or a `loader` of one's own, with `val_loss` measuring the
    held-out loss of a model); with `out` it also evaluates into, and saves to, a run folder. `init`:
    the weights to start from (a state dict), else a seeded random initialisation. `train()` below is
    the whole loop; benchmarks and the demo call `step()` alone.

    A checkpoint holds the model, the optimizers, the train state (`self.state`) and the `parts` (see
    `scratchllm.train.state`): a part added to `parts` is saved and restored with the rest.
    """

    def __init__(self, cfg: Config, train_tokens, val_tokens=None, meta: dict | None = None,
                 out: Path | None = None, dist: Dist | None = None, device: torch.device | None = None,
                 quiet: bool = True, tokenizer=None, eot_id: int | None = None, loader=None, init=None,
                 val_loss=None):
        self.cfg, self.tc = cfg, cfg.train
        self.dist, self.device = dist or Dist(), device or torch.device("cpu")
        self.out, self.val_tokens, self.meta, self.quiet = out, val_tokens, meta or {}, quiet
        main = self.dist.main
        self.precision = resolve(self.tc.dtype, self.device)
        if self.precision.warning:
            logger.warning(self.precision.warning)
        # The document boundaries `train.align` looks for: meta.json's end-of-text id, else GPT-2's.
        self.eot_id = eot_id if eot_id is not None else self.meta.get("eot_id", DEFAULT_EOT)
        tc = self.tc
        self.tokens_per_step = tc.batch_size * cfg.model.block_size * tc.grad_accum * self.dist.world_size
        self.state = TrainState(self.tokens_per_step, self.dist.world_size, self.precision.dtype)
        self.val_loss = val_loss
        self._build(train_tokens, loader, init)
        # What a checkpoint holds besides the weights, the optimizers and the train state, each under its
        # name in state.json (scratchllm.train.state).
        self.parts: dict[str, Stateful] = {"loader": self.loader, "scaler": ScalerState(self.scaler),
                                           "rng_ranks": RNGState(self.dist)}
        self.evaluated_at = self.saved_at = self.tasks_at = -1
        self.metrics = MetricsLog(out / "metrics.jsonl") if out is not None and main else None
        self.tokenizer = tokenizer  # for text samples and downstream tasks
        self.tasks = self._task_suite() if self.tc.eval_tasks else None
        self.stop = StopFlags()  # alone: after each step; under torchrun: as the ranks last agreed
        self.signals: StopSignals | None = None
        self.bar: Any = None  # the progress bar, while `fit` runs
        self.t_start = self.t_log = time.perf_counter()
        self.step_log = 0
        cuda = self.device.type == "cuda"
        self.peak = peak_flops(torch.cuda.get_device_name(self.device)) if cuda else None

    def _build(self, train_tokens: np.ndarray, loader=None, init=None) -> None:
        """Seeded model, optimizers, grad scaler and loader; DDP and torch.compile around the model."""
        from scratchllm.model.gpt import GPT

        tc, dist, device = self.tc, self.dist, self.device
        if device.type == "cuda":  # TF32 only touches float32 matmuls on GPUs; CPU float32 stays exact
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        random.seed(tc.seed)
        np.random.seed(tc.seed)
        torch.manual_seed(tc.seed)  # the same initial weights on every rank
        self.model = GPT(self.cfg.model)
        if init is not None:
            self.model.load_state_dict(init)
        self.model.to(device)
        torch.manual_seed(tc.seed + dist.rank)  # but different dropout masks
        self.optimizer = make_optimizer(self.model, tc, ns_dtype=self.precision.iteration_dtype)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision.uses_scaler)
        self.loader = loader or TokenLoader(train_tokens, tc.batch_size, self.cfg.model.block_size, tc.order,
                                            tc.seed, dist.rank, dist.world_size, name="the training tokens",
                                            align=tc.align, eot=self.eot_id)
        compiled = tc.compile
        if compiled:
            problems = [p for p in dist.gather(compile_problem(device)) if p]  # all ranks compile, or none
            compiled = not problems
            if problems:
                logger.warning(f"warning: torch.compile does not work here ({problems[0]}); training without "
                               "it")
        self.ddp = None
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        # Compiling the DDP wrapper (not DDP around a compiled model) lets dynamo split the graph at
        # DDP's buckets, so gradient all-reduces overlap with the backward pass.
        fwd = self.ddp if self.ddp is not None else self.model
        self.fwd = torch.compile(fwd) if compiled else fwd
        self.eval_model = self.model if dist.enabled else self.fwd  # evaluation needs no gradient sync

    def _task_suite(self):
        """The downstream tasks of `train.eval_tasks`, tokenized once for the whole run."""
        from scratchllm.eval.tasks import TaskSuite

        if self.tokenizer is None:
            raise UserError("train.eval_tasks needs the data's tokenizer (tokenizer.json in the token "
                            "folder)")
        model = self.cfg.model
        return TaskSuite(self.tc.eval_tasks, self.tokenizer, model.block_size, model.vocab_size, self.dist,
                         limit=self.tc.task_limit or None)

    @property
    def steps(self) -> int:
        """Optimizer steps taken (the train state's step)."""
        return self.state.step

    @property
    def run_dir(self) -> Path:
        """The run folder (only a Trainer built with `out` evaluates into and saves to one)."""
        assert self.out is not None, "this Trainer has no run folder"
        return self.out

    def restore(self, path: Path, state: dict) -> None:
        """Continue from checkpoint `path` (its state.json read by `verify`): every part of the run."""
        ckpt.load_model_weights(self.model, path, self.device)
        ckpt.load_optimizer(self.optimizer, path)
        self.state.load_state_dict(state)
        for name, part in self.parts.items():
            if name not in state:
                raise UserError(f"{path}: the checkpoint holds no {name!r} state to continue from")
            part.load_state_dict(state[name])
        self.step_log = self.saved_at = self.steps
        logger.info(f"resuming from {path} (step {self.steps})")

    def step(self) -> torch.Tensor:
        """One optimizer step of `grad_accum` micro-batches per rank; the mean loss, left on the device."""
        tc, device = self.tc, self.device
        self.lr = self.optimizer.schedule(self.steps)
        loss_sum = torch.zeros((), device=device)
        for micro in range(tc.grad_accum):
            x, y = self.loader.next_batch()
            if device.type == "cuda":
                x = x.pin_memory().to(device, non_blocking=True)
                y = y.pin_memory().to(device, non_blocking=True)
            else:
                x, y = x.to(device), y.to(device)
            # DDP averages gradients only on the last micro-batch; the others just accumulate.
            last = micro == tc.grad_accum - 1
            no_sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with no_sync, autocast(device, self.precision.dtype):
                _, loss = self.fwd(x, y)
                loss = loss / tc.grad_accum
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        self.optimizer.step(self.scaler, self.model.parameters(), tc.grad_clip)
        self.optimizer.zero_grad()
        self.state.step += 1
        if not self.dist.enabled:  # alone, stop at once; ranks must all stop at the same (logged) step
            self.stop = self._stop_here()
        return loss_sum

    def _stop_here(self) -> StopFlags:
        """The reasons to stop early as this process sees them now."""
        tc = self.tc
        over_time = bool(tc.max_minutes) and time.perf_counter() - self.t_start >= tc.max_minutes * 60
        signalled = self.signals is not None and self.signals.received is not None
        return StopFlags(signal=signalled, time=over_time)

    def log_step(self, loss: torch.Tensor) -> None:
        """At log points: the loss line in metrics.jsonl and the progress bar; under torchrun the ranks
        also agree there on stopping (in the same collective)."""
        tc, dist = self.tc, self.dist
        if self.steps % tc.log_every and self.steps != tc.max_steps:
            return
        # The one sync per log point; a collective every step would stall the GPU.
        loss_value, agreed = dist.mean_and_flags(loss, self._stop_here().as_list())
        if dist.enabled:
            self.stop = StopFlags(*agreed)
        now = time.perf_counter()
        tok_s = (self.steps - self.step_log) * self.tokens_per_step / max(now - self.t_log, 1e-9)
        self.t_log, self.step_log = now, self.steps
        if self.metrics is not None:
            self.metrics.log(step=self.steps, loss=loss_value, lr=self.lr,
                             tokens=self.steps * self.tokens_per_step, tok_per_s=round(tok_s, 1))
            post = {"loss": f"{loss_value:.4f}", "lr": f"{self.lr:.2e}", "tok/s": f"{tok_s:,.0f}"}
            if self.peak:
                post["mfu"] = f"{100 * self.model.estimate_mfu(tok_s / dist.world_size, self.peak):.1f}%"
            if self.bar is not None:
                self.bar.set_postfix(post, refresh=False)

    def evaluate(self) -> float:
        """Validation loss at this step; rank 0 logs it with bits/byte, a text sample and the plot."""
        if self.val_loss is not None:
            val_loss = self.val_loss(self.eval_model, self.device, self.dist, self.precision.dtype)
        else:
            assert self.val_tokens is not None, "a Trainer built without val tokens cannot evaluate"
            val_loss = evaluate(self.eval_model, self.val_tokens, self.tc, self.cfg.model.block_size,
                                self.device, self.dist, self.precision.dtype)
        self.evaluated_at = self.steps
        if self.metrics is None:
            return val_loss
        row = {"step": self.steps, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
        bpb = split_bits_per_byte(val_loss, self.meta.get("val", {}))
        if bpb is not None:
            row["val_bpb"] = bpb
        self.metrics.log(**row)
        text = sample_text(self.model, self.tokenizer, self.tc.sample_tokens, self.device, self.tc.seed)
        if text is not None:
            with open(self.run_dir / "samples.txt", "a", encoding="utf-8") as f:
                f.write(sample_entry(self.steps, val_loss, text))
        self._plot()
        logger.info(f"step {self.steps}: val loss {val_loss:.4f}"
                    + (f", {row['val_bpb']:.3f} bits/byte" if "val_bpb" in row else ""))
        return val_loss

    def _plot(self) -> None:
        assert self.metrics is not None
        self.metrics.plot(self.run_dir / "loss.png",
                          title=f"{self.run_dir.name}: {self.model.num_params() / 1e6:.1f}M parameters")

    def evaluate_tasks(self) -> dict | None:
        """Downstream task accuracy at this step (every rank scores its share); rank 0 logs a row a task.

        A failure (out of memory, a data file gone bad) is logged, and None returned: training goes on,
        since the tasks measure the run and are no part of it.
        """
        from scratchllm.eval.tasks import task_rows

        assert self.tasks is not None, "train.eval_tasks is empty"
        self.tasks_at = self.steps
        try:
            out = self.tasks.evaluate(self.model, self.device, self.precision.dtype)
        except Exception as e:  # whatever went wrong, the steps trained so far must not be lost to it
            logger.error(f"error: the task evaluation of step {self.steps} failed ({type(e).__name__}: "
                         f"{one_line(e)[:300]}); training goes on without its scores", extra=ALL_RANKS)
            logger.debug("the failed task evaluation", exc_info=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # what the failed batch held
            return None
        if self.metrics is not None:
            for row in task_rows(self.steps, out):
                self.metrics.log(**row)
            self._plot()
            scores = [f"{name} {r.get('acc_norm', r['acc']):.3f}" for name, r in out["results"].items()]
            logger.info(f"step {self.steps}: {', '.join(scores)}")
        return out

    def tasks_missing(self) -> bool:
        """Whether the tasks due at this step have no scores in the log (every rank gets rank 0's answer):
        a run stopped while scoring them, after the checkpoint of the step was saved."""
        missing = None
        if self.metrics is not None:
            missing = not any("task" in r and r.get("step") == self.steps for r in self.metrics.rows)
        return (self.tasks is not None and self.tc.tasks_due(self.steps)
                and bool(self.dist.broadcast(missing)))

    def save(self, val_loss: float | None) -> None:
        """Checkpoint this step (rank 0 writes; every rank's RNG goes in); keep the best and the newest."""
        parts = {name: part.state_dict() for name, part in self.parts.items()}  # all ranks: RNGs are gathered
        self.saved_at = self.steps
        if not self.dist.main:
            return
        state, ckpt_dir = self.state, self.run_dir / "ckpt"
        state.val_loss = val_loss
        if val_loss is not None and val_loss < state.best_val:
            state.best_val, state.best_ckpt = val_loss, f"step_{self.steps}"
        ckpt.save_checkpoint(ckpt_dir, self.steps, self.model, self.optimizer,
                             {**state.state_dict(), **parts})
        ckpt.prune(ckpt_dir, self.tc.keep_last, ckpt_dir / state.best_ckpt if state.best_ckpt else None)

    def should_stop(self) -> str | None:
        """Why training stops now (a step or token budget, a signal, the time budget), or None."""
        tc = self.tc
        if self.steps >= tc.max_steps:
            return f"reached max_steps {tc.max_steps}"
        if tc.max_tokens and self.steps * self.tokens_per_step >= tc.max_tokens:
            return f"reached the token budget {tc.max_tokens:,}"
        if self.stop.signal:
            received = self.signals.received if self.signals is not None else None
            return f"received {received or 'a stop signal (on another rank)'}"
        if self.stop.time:
            return f"reached the time budget of {tc.max_minutes:g} minutes"
        return None

    def fit(self) -> dict:
        """Train until `should_stop`, evaluating and saving on schedule and at the end; a summary.

        The validation loss comes before a save (the checkpoint records the best), the downstream tasks
        after it: a task evaluation that fails, or a run killed during one, loses no step.
        """
        from tqdm.auto import tqdm

        tc = self.tc
        logger.info(f"precision: {self.precision.dtype} ({self.precision.reason})")
        self.bar = tqdm(total=tc.max_steps, initial=self.steps, disable=self.quiet or self.metrics is None,
                        unit="step", dynamic_ncols=True, file=sys.stderr)
        val_loss = self.evaluate() if self.steps == 0 else None  # step 0 is on every schedule
        if self.steps and self.tasks_missing():
            self.evaluate_tasks()
        self.t_start = self.t_log = time.perf_counter()
        with StopSignals() as self.signals:
            while (reason := self.should_stop()) is None:
                self.log_step(self.step())
                self.bar.update(1)
                val_loss = self.evaluate() if tc.eval_due(self.steps) else None
                if self.steps % tc.ckpt_every == 0:
                    self.save(val_loss)
                if self.tasks is not None and tc.tasks_due(self.steps):
                    self.evaluate_tasks()
            # Still inside the signal handler: a Ctrl-C during the final evaluation must not lose the
            # steps since the last checkpoint. A signal asks for a quick exit: the checkpoint only.
            self.bar.close()
            logger.info(f"stopping: {reason}")
            if self.evaluated_at != self.steps and not self.stop.signal:
                val_loss = self.evaluate()
            if self.saved_at != self.steps:
                self.save(val_loss)
            if self.tasks is not None and self.tasks_at != self.steps and not self.stop.signal:
                self.evaluate_tasks()
        self.dist.barrier()
        return self._summary(reason, val_loss)

    def _summary(self, reason: str, val_loss: float | None) -> dict:
        summary = {"run": str(self.out), "step": self.steps, "tokens": self.steps * self.tokens_per_step,
                   "val_loss": val_loss, "stop_reason": reason, "dtype": self.precision.dtype,
                   "minutes": (time.perf_counter() - self.t_start) / 60, "params": self.model.num_params()}
        bpb = split_bits_per_byte(val_loss, self.meta.get("val", {})) if val_loss is not None else None
        if bpb is not None:
            summary["val_bpb"] = bpb
        return summary
