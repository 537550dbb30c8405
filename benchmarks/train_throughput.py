"""Training tokens/s of scratchllm's GPT against transformers' GPT2LMHeadModel, same config, same machine.

Both models get the same weights (converted with `to_hf`), the same batches, the same AdamW
(`make_optimizer`) and the precision `train.dtype=auto` picks here (bf16 autocast where the CPU has bf16
instructions, else float32); runs alternate in one process so machine noise hits both.
Prints the ratio (ours / transformers) eagerly and with `torch.compile` for ours, plus MFU against
a matmul peak measured here in the same precision.

    python benchmarks/train_throughput.py [--rounds 4] [--steps 3] [--no-compile] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from scratchllm.config import TrainConfig
from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.runtime.precision import autocast, resolve
from scratchllm.train.optim import make_optimizer


def matmul_peak(device, dtype=torch.bfloat16, n=2048, seconds=2.0) -> float:
    """FLOP/s of a large square matmul: the practical peak that MFU is measured against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


class Stepper:
    """One model's training step (forward, backward, AdamW) on fixed batches."""

    def __init__(self, name, model, batches, device, dtype):
        self.name, self.model, self.batches, self.device, self.dtype = name, model, batches, device, dtype
        self.opt = make_optimizer(model, TrainConfig(lr=1e-4))
        self.i = 0
        self.rates: list[float] = []

    def loss(self, x, y):
        with autocast(self.device, self.dtype):
            if self.name.startswith("transformers"):
                # The same loss as ours, on the same targets: passed as `labels`, y would be shifted
                # a second time inside transformers.
                logits = self.model(x).logits
                return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            return self.model(x, y)[1]

    def step(self):
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.loss(x, y).backward()
        self.opt.step()
        self.opt.zero_grad()

    def timed(self, steps, tokens):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.rates.append(steps * tokens / (time.perf_counter() - t0))


def main() -> None:
    """Run the comparison and print tokens/s, ratios and MFU."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = GPTConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0, bias=True)
    B, T = args.batch, cfg.block_size
    precision = resolve("auto", device)
    dtype = precision.dtype
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
          f"GPT 6x384, context {T}, vocab {cfg.vocab_size}, batch {B}, AdamW, {dtype} ({precision.reason})")

    torch.manual_seed(0)
    ours = GPT(cfg).to(device)
    from scratchllm.model.hf import to_hf

    hf = to_hf(ours).train()
    hf.config._attn_implementation = "sdpa"
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (4, B, T + 1), generator=g).to(device)
    batches = [(d[:, :-1], d[:, 1:]) for d in data]
    runners = [Stepper("scratchllm", ours, batches, device, dtype),
               Stepper("transformers GPT2LMHeadModel", hf, batches, device, dtype)]
    with torch.no_grad():  # same weights, same loss: the comparison is fair
        a, b = (r.loss(*batches[0]).item() for r in runners)
    print(f"step-0 loss: scratchllm {a:.5f}, transformers {b:.5f}")
    if abs(a - b) > 1e-2:  # bf16 rounding differs between the two; a wrong target would not be close
        sys.exit(f"the two models disagree at step 0 ({a:.5f} vs {b:.5f}): the comparison would be unfair")
    if not args.no_compile:
        torch.manual_seed(0)
        compiled = torch.compile(GPT(cfg).to(device))
        runners.append(Stepper("scratchllm + torch.compile", compiled, batches, device, dtype))
        t0 = time.perf_counter()
        runners[-1].step()
        print(f"compile (first step): {time.perf_counter() - t0:.1f} s")
    for r in runners:  # warm-up
        r.step()
    for _ in range(args.rounds):
        for r in runners:
            r.timed(args.steps, B * T)

    peak = matmul_peak(device, precision.torch_dtype)
    base = statistics.median(runners[1].rates)
    print(f"\n{dtype} matmul peak measured here: {peak / 1e9:,.0f} GFLOP/s")
    print(f"{'model':<30} {'tokens/s (median)':>18} {'vs transformers':>16} {'MFU':>7}")
    for r in runners:
        rate = statistics.median(r.rates)
        mfu = ours.estimate_mfu(rate, peak)
        print(f"{r.name:<30} {rate:>18,.0f} {rate / base:>15.2f}x {100 * mfu:>6.1f}%")
    print(f"(rounds: {args.rounds} x {args.steps} steps each, alternating; MFU = 6N+12LHQT FLOPs/token)")


if __name__ == "__main__":
    main()
