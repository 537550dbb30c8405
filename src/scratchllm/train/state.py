"""The state of a training run, in parts, and its reasons to stop early.

Each part has `state_dict()` (JSON-able, or tensors for the two parts kept in files of their own) and
`load_state_dict(state)`; a checkpoint is a loop over the parts, torchtitan's way. Where each part's
state lives in a checkpoint folder (see `scratchllm.run.checkpoint` for the files):

    model       model.safetensors
    optimizer   optimizer.pt (every optimizer's state: AdamW's moments, Muon's momentum)
    train       state.json's top level: step, tokens, val_loss, best_val, best_ckpt, world_size, dtype
    loader      state.json's "loader"      (the data loader's position)
    scaler      state.json's "scaler"      (float16's grad scaler; empty in other precisions)
    rng_ranks   state.json's "rng_ranks"   (every rank's random number generators)

A new part (say, a conversation loader for fine-tuning) is one more entry of `Trainer.parts`: its
state is saved under its name and given back to it on a resume, and nothing else changes.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from typing import Any, Protocol

from scratchllm.runtime.distributed import Dist
from scratchllm.runtime.rng import rng_state, set_rng_state


class Stateful(Protocol):
    """A part of a training run that a checkpoint holds."""

    def state_dict(self) -> Any:
        """The part's state, to save."""

    def load_state_dict(self, state: Any) -> None:
        """Continue from a saved state."""


@dataclass
class TrainState:
    """The loop's own state: the step, and the best validation loss so far with its checkpoint. The rest
    describes the step (tokens seen, its validation loss) and the run (ranks, precision) to a reader."""

    tokens_per_step: int
    world_size: int = 1
    dtype: str = "float32"
    step: int = 0
    val_loss: float | None = None  # measured at this step, if it was
    best_val: float = math.inf
    best_ckpt: str | None = None  # the checkpoint folder (step_N) of best_val

    def state_dict(self) -> dict:
        """state.json's top-level entries."""
        return {"step": self.step, "tokens": self.step * self.tokens_per_step, "val_loss": self.val_loss,
                "best_val": self.best_val if math.isfinite(self.best_val) else None,  # JSON: no Infinity
                "best_ckpt": self.best_ckpt, "world_size": self.world_size, "dtype": self.dtype}

    def load_state_dict(self, state: dict) -> None:
        """Continue at a checkpoint's step with its best so far."""
        self.step = state["step"]
        self.best_val = math.inf if state.get("best_val") is None else state["best_val"]
        self.best_ckpt = state.get("best_ckpt")


class ScalerState:
    """float16's grad scaler as a part. Its state is empty in other precisions; an empty one (a run saved
    in bfloat16 or float32 and continued in float16) leaves the scaler as built."""

    def __init__(self, scaler):
        self.scaler = scaler

    def state_dict(self) -> dict:
        """The scale and its growth tracker (empty when the scaler is off)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Take back a saved scale, if there is one and the scaler is on."""
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)


class RNGState:
    """Every rank's random number generators (Python's, NumPy's, torch's, CUDA's). Saving gathers all
    ranks' states (every rank must call `state_dict`); each rank takes back its own, or rank 0's when the
    job has another number of ranks than the one that saved."""

    def __init__(self, dist: Dist):
        self.dist = dist

    def state_dict(self) -> list:
        """Every rank's generators, rank by rank."""
        return self.dist.gather(rng_state())

    def load_state_dict(self, states: list) -> None:
        """Restore this rank's generators."""
        set_rng_state(states[self.dist.rank] if len(states) == self.dist.world_size else states[0])


@dataclass
class StopFlags:
    """Reasons to stop before the step budget: as this process sees them, or as all ranks last agreed."""

    signal: bool = False  # SIGINT or SIGTERM received
    time: bool = False  # train.max_minutes passed

    def as_list(self) -> list[bool]:
        """The flags in the order of the fields, for a collective."""
        return [self.signal, self.time]


class StopSignals:
    """While entered, SIGINT/SIGTERM set `received`: the current step finishes, a checkpoint is saved,
    exit 0. A second signal acts as it would without this handler (Ctrl-C twice stops at once, unsaved).
    `Trainer.fit` enters it; a loop of one's own that calls `step()` enters it to stop on signals too.
    """

    def __init__(self):
        self.received: str | None = None
        self._old: dict = {}

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
