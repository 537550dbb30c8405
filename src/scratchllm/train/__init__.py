"""Stage 4: training. The loader, the loop, checkpoints and data parallelism, one module each."""

from scratchllm.train.loader import TokenLoader, eval_batches
from scratchllm.train.trainer import evaluate, lr_at, make_optimizer, train

__all__ = ["TokenLoader", "eval_batches", "evaluate", "lr_at", "make_optimizer", "train"]
