"""Optimizers and learning-rate schedules.

`train.optimizer = "adamw"`: AdamW (Loshchilov & Hutter 2019) for every parameter, weight decay on
matrices and embeddings only. `"muon"`: Muon (Jordan et al. 2024) for the 2-D weight matrices inside
the transformer blocks, which it updates with an orthogonalised momentum (the Newton-Schulz
iteration), and AdamW for everything else (embeddings, head, norms, biases), as the speedruns train.
Muon has its own learning rate (`train.muon_lr`) and its momentum warms up from 0.85 to
`train.muon_momentum` over `train.muon_momentum_warmup` steps, as in modded-nanogpt.

Schedules, counted in optimizer steps, both after a linear warm-up: `cosine` decays to `min_lr` at
`max_steps`; `wsd` (warm-up, stable, decay) holds the peak and decays linearly to `min_lr` over the
last `cooldown_frac` of the steps. Every optimizer follows the same schedule as a fraction of its
own peak learning rate.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from scratchllm.model.gpt import GPT

MUON_MOMENTUM_START = 0.85


def lr_factor(step: int, tc) -> float:
    """The learning rate of optimizer step `step` (from 0) as a fraction of the peak."""
    if step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    floor = tc.min_lr / tc.lr
    if step >= tc.max_steps:
        return floor
    if tc.schedule == "wsd":
        decay_steps = max(1, round(tc.cooldown_frac * tc.max_steps))
        progress = max(0.0, (step - (tc.max_steps - decay_steps)) / decay_steps)
        return 1.0 - progress * (1.0 - floor)
    progress = (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - floor)


def lr_at(step: int, tc) -> float:
    """AdamW's learning rate at optimizer step `step`: `train.lr` times the schedule."""
    return tc.lr * lr_factor(step, tc)


def muon_momentum(step: int, tc) -> float:
    """Muon's momentum at step `step`: from 0.85 up to `muon_momentum`, linearly over the warm-up."""
    frac = min(1.0, step / tc.muon_momentum_warmup) if tc.muon_momentum_warmup else 1.0
    return (1 - frac) * min(MUON_MOMENTUM_START, tc.muon_momentum) + frac * tc.muon_momentum


def orthogonalize(g: torch.Tensor, coefficients, steps: int, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix of g (2-D), computed in `dtype`.

    Keller Jordan's quintic: X <- aX + (bA + cA^2)X with A = XX^T, on the wide orientation, after
    scaling X so its spectral norm is at most 1. The same arithmetic as PyTorch's Muon, which fixes
    the dtype to bfloat16.
    """
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """PyTorch's Muon, with the Newton-Schulz iteration in a dtype of our choosing.

    PyTorch runs the iteration in bfloat16, which suits GPUs and CPUs with bf16 instructions; on a CPU
    without them every bf16 product falls back to a reference GEMM about 12x slower than float32.
    There (`ns_dtype=torch.float32`) `step` makes the same update with the iteration in float32;
    everything else (state, groups, checks, checkpoints) is PyTorch's.
    """

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient."""
        if self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        if closure is not None:
            raise ValueError("Muon.step with a float32 iteration takes no closure")
        for group in self.param_groups:
            self._update_group(group, self.ns_dtype)
        return None

    @torch.no_grad()
    def _update_group(self, group: dict, dtype: torch.dtype) -> None:
        lr, momentum = group["lr"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
            update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(update.to(p.dtype), alpha=-lr * _shape_scale(group["adjust_lr_fn"], p.shape))


def _shape_scale(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Muon's learning-rate factor for a matrix of `shape` (out, in), as PyTorch defines it."""
    rows, cols = shape[:2]
    if adjust_lr_fn in (None, "original"):  # updates of equal RMS per element for tall matrices
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


class Optimizers:
    """Several optimizers stepped as one: one schedule, one state_dict (a checkpoint holds them all)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], tc):
        self.optimizers, self.tc = optimizers, tc
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]  # each group's peak; the schedule scales it

    @property
    def param_groups(self) -> list[dict]:
        """Every group of every optimizer."""
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def schedule(self, step: int) -> float:
        """Set learning rates (and Muon's momentum) for optimizer step `step`; returns AdamW's lr."""
        factor = lr_factor(step, self.tc)
        for group in self.param_groups:
            group["lr"] = group["initial_lr"] * factor
        if "muon" in self.optimizers:
            for group in self.optimizers["muon"].param_groups:
                group["momentum"] = muon_momentum(step, self.tc)
        return self.tc.lr * factor

    @property
    def state(self) -> dict:
        """Per-parameter state of every optimizer (as `torch.optim.Optimizer.state`)."""
        return {p: s for opt in self.optimizers.values() for p, s in opt.state.items()}

    def step(self, scaler: torch.amp.GradScaler | None = None, parameters=(), grad_clip: float = 0.0) -> None:
        """Unscale and clip the gradients (of `parameters`, to norm `grad_clip`), update every parameter."""
        scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)  # a disabled one steps as is
        if grad_clip > 0:
            for opt in self.optimizers.values():
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        for opt in self.optimizers.values():
            scaler.step(opt)
        scaler.update()

    def zero_grad(self) -> None:
        """Drop every gradient (set to None, so the next backward allocates afresh)."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """{name: that optimizer's state_dict}."""
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (or one AdamW's state, as checkpoints held before Muon)."""
        if set(state) == {"state", "param_groups"} and list(self.optimizers) == ["adamw"]:
            state = {"adamw": state}
        if set(state) != set(self.optimizers):
            raise ValueError(f"the checkpoint holds optimizers {sorted(state)}, this run uses "
                             f"{sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])


def _adamw(groups: list[dict], tc) -> torch.optim.AdamW:
    """AdamW with fused kernels where the device has them, else foreach, else the plain loop."""
    betas = (tc.beta1, tc.beta2)
    for fused, foreach in ((True, None), (None, True)):
        try:
            return torch.optim.AdamW(groups, lr=tc.lr, betas=betas, eps=1e-8, fused=fused, foreach=foreach)
        except (RuntimeError, TypeError, ValueError):  # this device or build lacks the kernel
            continue
    return torch.optim.AdamW(groups, lr=tc.lr, betas=betas, eps=1e-8)


def _adamw_groups(params: dict[str, list[torch.nn.Parameter]], order: dict[int, int], tc) -> list[dict]:
    """Matrices with weight decay, vectors without; the embedding tables at `embed_lr` when it is set.
    Within a group the model's own order, which its optimizer state is saved in."""
    separate = params["embeddings"] if tc.embed_lr else []
    decayed = params["matrices"] + params["head"] + (params["embeddings"] if not tc.embed_lr else [])
    groups = [{"params": sorted(decayed, key=lambda p: order[id(p)]), "weight_decay": tc.weight_decay},
              {"params": params["vectors"], "weight_decay": 0.0},
              {"params": separate, "weight_decay": tc.weight_decay, "lr": tc.embed_lr}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: GPT, tc, ns_dtype: torch.dtype = torch.float32) -> Optimizers:
    """The optimizers `train.optimizer` names for `model`, as one `Optimizers`.

    `ns_dtype` is Muon's iteration dtype: float32 unless the caller knows bf16 is fast here (the
    Trainer passes its Precision's `iteration_dtype`), so no caller meets the slow bf16 path by default.
    """
    groups = {name: [p for p in params if p.requires_grad] for name, params in model.param_groups().items()}
    order = {id(p): i for i, p in enumerate(model.parameters())}
    # Muon takes the 2-D weight matrices inside the blocks; embeddings, head and vectors stay with AdamW.
    muon = groups["matrices"] if tc.optimizer == "muon" else []
    rest = {**groups, "matrices": [] if muon else groups["matrices"]}
    optimizers: dict[str, torch.optim.Optimizer] = {"adamw": _adamw(_adamw_groups(rest, order, tc), tc)}
    if muon:
        optimizers["muon"] = Muon(muon, ns_dtype=ns_dtype, lr=tc.muon_lr, momentum=tc.muon_momentum,
                                  weight_decay=tc.muon_weight_decay, nesterov=True)
    return Optimizers(optimizers, tc)
