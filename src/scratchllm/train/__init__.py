"""Stage 4: training. The loader, the loop, checkpoints and data parallelism, one module each."""

from scratchllm.train.loader import TokenLoader, eval_batches
from scratchllm.train.optim import lr_at, make_optimizer
from scratchllm.train.trainer import Trainer, evaluate, train

__all__ = ["TokenLoader", "Trainer", "eval_batches", "evaluate", "lr_at", "make_optimizer", "train"]
