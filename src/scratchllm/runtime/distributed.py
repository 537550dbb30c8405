"""Data parallelism through `torchrun`: which rank we are, the device it owns, and small collectives.

`torchrun --nproc_per_node=N -m scratchllm train ...` starts N copies of the command with RANK,
LOCAL_RANK and WORLD_SIZE in the environment; without them this is a single process and every
helper here does nothing. NCCL carries the gradients on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than nothing to talk to."""
        return dist.is_available() and dist.is_initialized()

    @property
    def main(self) -> bool:
        """Rank 0 alone logs, evaluates to disk and saves checkpoints."""
        return self.rank == 0

    def mean_and_flags(self, t: torch.Tensor, flags: list[bool]) -> tuple[float, list[bool]]:
        """The mean of scalar `t` over ranks, and each flag set on any rank, in one collective."""
        if not self.enabled:
            return t.item(), list(flags)
        both = torch.cat([t.float().reshape(1), torch.tensor([float(f) for f in flags], device=t.device)])
        dist.all_reduce(both, op=dist.ReduceOp.SUM)
        values = both.tolist()
        return values[0] / self.world_size, [v > 0 for v in values[1:]]

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (for decisions all ranks must share)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def on_every_rank(self, fn):
        """fn()'s result; a UserError on any rank is raised on every rank, so none waits in a collective."""
        from scratchllm.util.errors import UserError

        if not self.enabled:
            return fn()
        result, problem = None, None
        try:
            result = fn()
        except UserError as e:
            problem = f"rank {self.rank}: {e}"
        problems = [p for p in self.gather(problem) if p]
        if problems:
            raise UserError(problems[0])
        return result

    def barrier(self) -> None:
        """Wait for all ranks."""
        if self.enabled:
            dist.barrier()


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one; return our place in it and the device to use."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(), pick_device(device_name)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, local_rank=local_rank, world_size=world), device


def teardown() -> None:
    """Leave the job cleanly (torchrun warns otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA, then Apple MPS, then the CPU; anything else is taken as a torch device name."""
    from scratchllm.util.errors import UserError

    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise UserError(f"train.device: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("train.device is cuda but no CUDA GPU is available (use auto or cpu)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"train.device is {name} but this machine has {torch.cuda.device_count()} GPU(s)")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UserError("train.device is mps but Apple MPS is not available (use auto or cpu)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
