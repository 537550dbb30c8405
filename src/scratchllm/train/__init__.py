"""Stage 4: training. The loop (`trainer`), a run set up around it (`launch`), the optimizers and
schedules (`optim`), the run's log (`metrics`), the config a run trains with (`run_config`) and the
memory it needs (`limits`)."""

from scratchllm.train.launch import train
from scratchllm.train.optim import lr_at, make_optimizer
from scratchllm.train.trainer import Trainer

__all__ = ["Trainer", "lr_at", "make_optimizer", "train"]
