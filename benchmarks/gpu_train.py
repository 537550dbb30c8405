"""GPT-2 124M training throughput on one CUDA GPU: the trainer's own step, eager and compiled, two recipes.

Synthetic tokens (no dataset needed). For the GPT-2 recipe (AdamW) and the modern one (`modern-124m`:
RoPE, RMSNorm, QK-norm, ReLU², Muon), prints tokens/s and MFU of `Trainer.step()` against the GPU's
dense bf16 peak (from its name, e.g. H100 SXM 989 TFLOP/s; or --peak), eagerly and with
`torch.compile`, and checks that the bf16 loss at step 0 matches the true float32 loss (exit status 1
if not). Run through `benchmarks/gpu.sh`.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from scratchllm.config import build_config
from scratchllm.runtime.precision import autocast
from scratchllm.train.trainer import Trainer, peak_flops


def measure(trainer: Trainer, steps: int, warmup: int) -> tuple[float, float]:
    """(tokens/s, last loss) over `steps` timed optimizer steps after `warmup` untimed ones."""
    loss = None
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = trainer.step()
    torch.cuda.synchronize()
    return steps * trainer.tokens_per_step / (time.perf_counter() - t0), loss.item()


def float32_check(trainer: Trainer) -> bool:
    """bf16 autocast must not change what the model computes beyond rounding (TF32 off: true float32)."""
    x, y = (t.cuda() for t in trainer.loader.batch_at(0))
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        l32 = trainer.model(x, y)[1].item()
        with autocast(trainer.device, "bfloat16"):
            l16 = trainer.model(x, y)[1].item()
    torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer: for any float32 matmul left
    ok = abs(l32 - l16) < 0.02
    print(f"step-0 loss: float32 {l32:.5f}, bf16 autocast {l16:.5f}, |diff| {abs(l32 - l16):.5f} -> "
          f"{'OK' if ok else 'MISMATCH'} (tolerance 0.02)")
    return ok


def main() -> None:
    """Run the checks and print the figures."""
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--presets", default="gpt2-124m,modern-124m")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--peak", type=float, default=None,
                   help="dense bf16 FLOP/s of the GPU (default: from its name, else the H100 SXM's 989e12)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU: this benchmark is for a GPU machine")
    dev = torch.device("cuda")
    peak = args.peak or peak_flops(torch.cuda.get_device_name(dev)) or 989e12
    tokens = np.random.default_rng(0).integers(0, 50257, 20_000_000, dtype=np.uint16)
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}; context 1024, batch {args.batch}")
    results = {}
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # fail loudly if flash attention cannot run
        for preset in args.presets.split(","):
            for compiled in [False] if args.no_compile else [False, True]:
                cfg = build_config(preset, sets=[f"train.batch_size={args.batch}", "train.grad_accum=1",
                                                 "model.pad_vocab_multiple=64", f"train.compile={compiled}",
                                                 "train.dtype=bfloat16"])
                trainer = Trainer(cfg, tokens, device=dev)
                if not compiled and not float32_check(trainer):
                    sys.exit(1)
                t0 = time.perf_counter()
                trainer.step()
                first = time.perf_counter() - t0
                rate, loss = measure(trainer, args.steps, warmup=2)
                mfu = trainer.model.estimate_mfu(rate, peak)
                name = f"{preset} ({cfg.train.optimizer}){' compiled' if compiled else ''}"
                results[name] = rate
                print(f"{name:>32}: {rate:>10,.0f} tokens/s, MFU {100 * mfu:5.1f}% of {peak / 1e12:.0f} "
                      f"TFLOP/s (first step {first:.0f} s, last loss {loss:.3f})")
                del trainer
                torch.cuda.empty_cache()
    base = next(iter(results.values()))
    for name, rate in results.items():
        print(f"{name:>32}: {rate / base:.2f}x the first")
    print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
