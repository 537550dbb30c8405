"""Generation speed with and without the KV cache, measured in the same run on the same model.

    python benchmarks/generate.py [--preset gpt2-124m] [--prompt-tokens 20] [--new-tokens 200]

Greedy decoding from random weights; prints tokens/s for both and their ratio, and checks that
both produce the same tokens. Without a cache every step re-reads the whole sequence, so its cost
grows with the length; with the cache each step handles one position.
"""

from __future__ import annotations

import argparse
import time

import torch

from scratchllm.model.gpt import GPT, GPTConfig


def timed_generate(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool):
    """Greedy generation; returns (tokens, seconds)."""
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


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
    for use_cache in (True, False):  # warm-up: allocator, kernels, lazy initialisation
        model.generate(prompt, 4, temperature=0, use_cache=use_cache)

    results = {}
    for _ in range(args.repeats):
        for use_cache in (True, False):
            out, seconds = timed_generate(model, prompt, args.new_tokens, use_cache)
            best = results.get(use_cache)
            if best is None or seconds < best[1]:
                results[use_cache] = (out, seconds)
    for use_cache in (True, False):
        seconds = results[use_cache][1]
        label = "with KV cache   " if use_cache else "without KV cache"
        print(f"{label}: {args.new_tokens / seconds:8.1f} tokens/s ({seconds:.2f} s)")
    speedup = results[False][1] / results[True][1]
    same = torch.equal(results[True][0], results[False][0])
    print(f"speed-up from the cache: {speedup:.1f}x; identical tokens: {same}")


if __name__ == "__main__":
    main()
