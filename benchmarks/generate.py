"""Generation speed with and without the KV cache, measured in the same run on the same model.

    python benchmarks/generate.py [--preset gpt2-124m] [--prompt-tokens 20] [--new-tokens 200]

Greedy decoding from random weights; prints tokens/s for both and their ratio, and checks that
both produce the same tokens. Without a cache every step re-reads the whole sequence, so its cost
grows with the length; with the cache each step handles one position.

On the CPU a cached step is all one-row products, which `scratchllm.model.cpu_matvec` spreads over
the cores. A third line shows the cache with plain `F.linear` instead, so both effects can be read
apart.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from unittest import mock

import torch

from scratchllm.model import generate
from scratchllm.model.gpt import GPT, GPTConfig

MODES = {  # label: (use_cache, split one-row products on the CPU)
    "with KV cache": (True, True),
    "with KV cache, plain F.linear": (True, False),
    "without KV cache": (False, True),
}


def timed_generate(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool, split: bool):
    """Greedy generation; returns (tokens, seconds)."""
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    plain = nullcontext() if split else mock.patch.object(generate, "SplitRowProducts", nullcontext)
    with plain:
        t0 = time.perf_counter()
        out = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
        if prompt.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return out, seconds


def main() -> None:
    """Run the benchmark and print one line per mode and the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--prompt-tokens", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs per mode")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPTConfig.preset(args.preset)
    model = GPT(config).to(args.device).eval()
    prompt = torch.randint(0, config.vocab_size, (1, args.prompt_tokens), device=args.device)
    print(f"{args.preset}: {model.num_params() / 1e6:.1f}M parameters, {args.device}, "
          f"{torch.get_num_threads()} threads, prompt {args.prompt_tokens} tokens, {args.new_tokens} new")
    modes = MODES if args.device == "cpu" else {k: v for k, v in MODES.items() if v[1]}
    for use_cache, split in modes.values():  # warm-up: allocator, kernels, lazy initialisation
        timed_generate(model, prompt, 4, use_cache, split)

    results = {}
    for _ in range(args.repeats):
        for label, (use_cache, split) in modes.items():
            out, seconds = timed_generate(model, prompt, args.new_tokens, use_cache, split)
            if label not in results or seconds < results[label][1]:
                results[label] = (out, seconds)
    width = max(map(len, modes))
    for label, (_, seconds) in results.items():
        print(f"{label:<{width}}: {args.new_tokens / seconds:8.1f} tokens/s ({seconds:.2f} s)")
    base = results["without KV cache"]
    same = all(torch.equal(out, base[0]) for out, _ in results.values())
    print(f"speed-up from the cache: {base[1] / results['with KV cache'][1]:.1f}x; identical tokens: {same}")
    if "with KV cache, plain F.linear" in results:
        plain = results["with KV cache, plain F.linear"][1]
        print(f"  with plain F.linear: {base[1] / plain:.1f}x; "
              f"split one-row products: {plain / results['with KV cache'][1]:.2f}x faster")


if __name__ == "__main__":
    main()
