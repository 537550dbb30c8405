"""GPT-2 124M training throughput on one CUDA GPU: bf16 autocast, flash attention, eager and compiled.

Synthetic tokens (no dataset needed). Prints tokens/s and MFU against the GPU's dense bf16 peak
(from its name, e.g. H100 SXM 989 TFLOP/s; or --peak), the compile speed-up measured in the same
run, and checks that the bf16 loss at step 0 matches the true float32 loss (exit status 1 if not).
Run through `benchmarks/gpu.sh`.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from scratchllm.config import TrainConfig
from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.train.precision import autocast
from scratchllm.train.trainer import make_optimizer, peak_flops


def measure(model, opt, batches, steps: int, warmup: int) -> tuple[float, float]:
    """(tokens/s, last loss) over `steps` timed optimizer steps after `warmup` untimed ones."""
    B, T = batches[0][0].shape
    loss = None
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = batches[i % len(batches)]
        with autocast(x.device, "bfloat16"):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return steps * B * T / (time.perf_counter() - t0), loss.item()


def main() -> None:
    """Run the checks and print the figures."""
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--peak", type=float, default=None,
                   help="dense bf16 FLOP/s of the GPU (default: from its name, else the H100 SXM's 989e12)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU: this benchmark is for a GPU machine")
    dev = torch.device("cuda")
    args.peak = args.peak or peak_flops(torch.cuda.get_device_name(dev)) or 989e12
    cfg = GPTConfig.preset("gpt2-124m", pad_vocab_multiple=64)  # 50304 rows: tensor-core friendly
    B, T = args.batch, cfg.block_size
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}; gpt2-124m, context {T}, "
          f"batch {B}, vocab {cfg.vocab_size} padded to {cfg.padded_vocab_size}")
    g = torch.Generator(device=dev).manual_seed(0)
    batches = [(d[:, :-1], d[:, 1:]) for d in torch.randint(0, cfg.vocab_size, (4, B, T + 1), device=dev,
                                                             generator=g)]

    torch.manual_seed(0)
    model = GPT(cfg).to(dev)
    with torch.no_grad():  # bf16 autocast must not change what the model computes, beyond rounding
        _, l32 = model(*batches[0])  # TF32 is still off here: this is true float32
        with autocast(dev, "bfloat16"):
            _, l16 = model(*batches[0])
    ok = abs(l32.item() - l16.item()) < 0.02
    print(f"step-0 loss: float32 {l32.item():.5f}, bf16 autocast {l16.item():.5f}, "
          f"|diff| {abs(l32.item() - l16.item()):.5f} -> {'OK' if ok else 'MISMATCH'} (tolerance 0.02)")
    if not ok:
        sys.exit(1)
    torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer: for any float32 matmul left
    torch.backends.cudnn.allow_tf32 = True

    results = {}
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # fail loudly if flash attention cannot run
        opt = make_optimizer(model, TrainConfig())
        print(f"AdamW: fused={opt.defaults.get('fused')}, foreach={opt.defaults.get('foreach')}")
        results["eager"] = measure(model, opt, batches, args.steps, warmup=3)
        torch.manual_seed(0)
        fresh = GPT(cfg).to(dev)
        compiled = torch.compile(fresh)
        opt = make_optimizer(fresh, TrainConfig())
        t0 = time.perf_counter()
        measure(compiled, opt, batches, 1, warmup=0)
        print(f"torch.compile: first step {time.perf_counter() - t0:.0f} s")
        results["compiled"] = measure(compiled, opt, batches, args.steps, warmup=3)
    mem = torch.cuda.max_memory_allocated() / 2**30
    for name, (rate, loss) in results.items():
        mfu = model.estimate_mfu(rate, args.peak)
        print(f"{name:>9}: {rate:>10,.0f} tokens/s, MFU {100 * mfu:5.1f}% of {args.peak / 1e12:.0f} TFLOP/s "
              f"(last loss {loss:.3f})")
    print(f"compile speed-up: {results['compiled'][0] / results['eager'][0]:.2f}x; "
          f"{model.flops_per_token() / 1e6:.0f} MFLOP/token; peak memory {mem:.1f} GiB")


if __name__ == "__main__":
    main()
