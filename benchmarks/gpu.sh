#!/usr/bin/env bash
# Training throughput of GPT-2 124M on one lent GPU, in under 4 minutes, without any dataset:
#   1. benchmarks/gpu_train.py: bf16 vs fp32 loss at step 0, eager vs torch.compile tokens/s and MFU
#      (flash attention forced, synthetic tokens);
#   2. the real `scratchllm train` command for a few steps on a synthetic token folder (eager),
#      to show the trainer's own tokens/s and MFU in its metrics.
# Run from the repository root:  PYTHONPATH=src bash benchmarks/gpu.sh
set -euo pipefail
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
echo "== 1. model step: eager vs compiled =="
timeout 170 "$PY" benchmarks/gpu_train.py --steps 30

echo "== 2. scratchllm train (gpt2-124m, eager, bf16, 30 steps: the trainer's own loop) =="
"$PY" - "$WORK/data" <<'PY'
import sys
from pathlib import Path
import numpy as np
from scratchllm.data.folder import write_meta
from scratchllm.data.tokens import write_tokens
out = Path(sys.argv[1]); out.mkdir()
rng = np.random.default_rng(0)
for split, n in (("train", 20_000_000), ("val", 2_000_000)):
    write_tokens(out / f"{split}.bin", rng.integers(0, 50257, n, dtype=np.uint16))
write_meta(out, {"tokenizer": "gpt2", "vocab_size": 50257, "eot_id": 50256, "token_dtype": "uint16",
                 "source": "synthetic", "train": {"documents": 1, "tokens": 20_000_000, "bytes": 80_000_000},
                 "val": {"documents": 1, "tokens": 2_000_000, "bytes": 8_000_000}})
PY
timeout 100 "$PY" -m scratchllm train --data "$WORK/data" --out "$WORK/run" --preset gpt2-124m --quiet \
  --set train.compile=false --set train.dtype=bfloat16 --set train.batch_size=16 --set train.grad_accum=1 \
  --set model.pad_vocab_multiple=64 --set train.log_every=10 --set train.eval_every=1000 \
  --set train.eval_batches=4 --set train.ckpt_every=1000 --set train.sample_tokens=0 --max-steps 30
"$PY" - "$WORK/run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tok_per_s"' in l]
from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.train.trainer import peak_flops
import torch
peak = peak_flops(torch.cuda.get_device_name()) or 989e12
with torch.device("meta"):
    model = GPT(GPTConfig.preset("gpt2-124m", pad_vocab_multiple=64))
for r in rows[1:]:  # the first interval includes start-up
    print(f"trainer step {r['step']}: {r['tok_per_s']:,.0f} tokens/s, "
          f"MFU {100 * model.estimate_mfu(r['tok_per_s'], peak):.1f}% of {peak / 1e12:.0f} TFLOP/s, "
          f"loss {r['loss']:.3f}")
PY
