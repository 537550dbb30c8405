"""The config `train` runs with: a new run's from preset, file and overrides; a resumed run's own.

A resumed run continues with the config.toml it saved. `--preset` and `--config` would change the
model under its checkpoints, so they are refused; `--set` still applies (a longer run, another
evaluation interval), and a changed `--max-steps` is pointed out, since it also moves the schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scratchllm.config import Config, build_config, load_run_config
from scratchllm.util.errors import UserError
from scratchllm.util.log import get_logger

logger = get_logger(__name__)


def run_config(out: str | Path, resume: bool = False, preset: str | None = None,
               config_file: str | Path | None = None, sets: Sequence[str] = (), max_steps: int | None = None,
               max_minutes: float | None = None) -> Config:
    """The validated config for training into the run folder `out` (see the module docstring)."""
    saved = Path(out) / "config.toml"
    resuming = resume and saved.is_file()
    if resuming:
        if preset or config_file:
            raise UserError("--resume continues with the run's own config.toml; drop --preset/--config "
                            "(--set still applies)")
        cfg = load_run_config(saved).apply_sets(list(sets))
    else:
        cfg = build_config(preset, config_file, sets)
    if max_steps is not None:
        if resuming and max_steps != cfg.train.max_steps:
            logger.warning(f"note: --max-steps {max_steps} (the run's was {cfg.train.max_steps}) also "
                           "stretches the learning-rate schedule, so the learning rate from here on differs "
                           "from the run's plan")
        cfg = cfg.update({"train": {"max_steps": max_steps}}, "--max-steps")
    if max_minutes is not None:
        cfg = cfg.update({"train": {"max_minutes": max_minutes}}, "--max-minutes")
    cfg.train.validate()
    return cfg
