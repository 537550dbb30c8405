"""Write the run configs in this folder from the presets of scratchllm.config, so they cannot drift.

Each file is a preset with a few keys changed, written out whole (every `model` and `train` key but
`train.data`, which `train` fills in): `train --config FILE` then needs no `--preset`. A test checks
that the files are what this script writes.

    python configs/build.py          # rewrite the files
    python configs/build.py --check  # exit status 1 if a file differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tomli_w

from scratchllm.config import build_config

HERE = Path(__file__).resolve().parent

# File -> (preset, --set overrides, the comment that opens the file).
RECIPES = {
    "gpt2-124m-fineweb.toml": ("gpt2-124m", [
        "model.vocab_size=50257", "model.pad_vocab_multiple=64", "train.dtype=bfloat16", "train.compile=true",
    ], """\
GPT-2 small (124M) on 10B tokens of FineWeb-Edu with GPT-2's tokenizer, the setting of
nanoGPT and llm.c: about 0.5M tokens per optimizer step, 19,073 steps = 10B tokens.

  scratchllm train --data data/fineweb-gpt2 --out runs/gpt2 --config configs/gpt2-124m-fineweb.toml

Tokens per step = batch_size x block_size x grad_accum x GPUs = 16 x 1024 x 32 x 1 = 524,288.
On N GPUs keep the product: with torchrun on 8 GPUs add --set train.grad_accum=4.
The preset gpt2-124m with: the embedding and head padded to 50,304 rows (a multiple of 64: faster
matmuls; the extra rows are never sampled, never counted in the loss, and export cuts them off),
bfloat16 and torch.compile. lr 6e-4 decayed to 6e-5 and AdamW betas (0.9, 0.95) are the GPT-3
paper's values for this size."""),
    "tiny-shakespeare-cpu.toml": ("tiny-modern", [], """\
The largest model of `make demo`, trained by steps instead of a time budget: 4 layers, 256 wide,
context 256, about 4.3M parameters with a 4,096-token BPE, in the speedruns' recipe (Muon, WSD).

  scratchllm train --data demo/tokens --out runs/tiny --config configs/tiny-shakespeare-cpu.toml

The preset tiny-modern; vocab_size 0 takes the vocabulary from the token folder, and dtype auto
picks bfloat16 on CPUs with bf16 instructions and float32 on the others."""),
    "modern-124m-fineweb.toml": ("modern-124m", [
        "model.vocab_size=50257", "train.dtype=bfloat16", "train.compile=true",
    ], """\
GPT-2 small's shape in the speedruns' recipe on FineWeb-Edu with GPT-2's tokenizer: RoPE, RMSNorm,
QK-norm, ReLU², an RMS norm on the embedding, untied head, zero-initialised projections, logits
soft-capped at 15 (nanochat's model: `export` writes it as transformers' NanoChatForCausalLM);
Muon for the blocks' matrices, AdamW for the embeddings and head, warm-up-stable-decay.

  scratchllm train --data data/fineweb-gpt2 --out runs/modern --config configs/modern-124m-fineweb.toml

The same 524,288-token steps as gpt2-124m-fineweb.toml (16 x 1024 x 32); with torchrun on 8 GPUs
add --set train.grad_accum=4. The learning rates are nanochat's for this width."""),
}


def render(name: str) -> str:
    """The text of configs/NAME as its recipe makes it."""
    preset, sets, about = RECIPES[name]
    cfg = build_config(preset, sets=sets)
    table = cfg.to_dict()
    del table["train"]["data"]
    note = f"Written by configs/build.py from the preset {preset}: edit the recipe there."
    lines = [*about.splitlines(), "", note]
    return "".join(f"# {line}".rstrip() + "\n" for line in lines) + "\n" + tomli_w.dumps(table)


def main(argv: list[str] | None = None) -> int:
    """Write every config (or with --check, report the stale ones)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    stale = []
    for name in RECIPES:
        path, text = HERE / name, render(name)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8", newline="\n")
    for name in stale:
        print(f"configs/{name} is stale: run python configs/build.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
