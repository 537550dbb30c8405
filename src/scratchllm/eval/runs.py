"""`scratchllm eval`: load what is to be measured (a run folder, or a transformers folder such as an
`export` or OpenAI's GPT-2), measure it, and say what came out."""

from __future__ import annotations

import math
from pathlib import Path

from scratchllm.eval.tasks import CORE_TASK_COUNT
from scratchllm.util.errors import UserError
from scratchllm.util.log import get_logger

logger = get_logger(__name__)


def evaluate_run(run: str | Path, task: str = "loss", data: str | None = None, data_file: str | None = None,
                 limit: int | None = None, quiet: bool = False) -> dict | None:
    """Measure `run` on `task` (loss, a task name or core); the `eval --json` object, None off rank 0.

    Under torchrun the items (or the validation batches) are shared out over the ranks.
    """
    from scratchllm.eval.loss import heldout_loss
    from scratchllm.eval.tasks import evaluate_tasks
    from scratchllm.run.load import load_model
    from scratchllm.runtime.distributed import setup, teardown
    from scratchllm.runtime.precision import resolve

    if task == "loss" and (data_file is not None or limit is not None):
        raise UserError("--data-file and --limit are for tasks; the held-out loss reads --data DIR")
    if task != "loss" and data is not None:
        raise UserError("--data DIR is the token folder of the held-out loss; a task reads --data-file")
    dist, device = setup("auto")
    try:
        if task == "loss":
            out = {"run": str(run), "task": "loss", **heldout_loss(run, data, device, dist)}
        else:
            model, tok, dtype, label = load_model(run, device)
            precision = resolve(dtype, device)
            if precision.warning:
                logger.warning(precision.warning)
            out = {"run": str(run), "task": task, "model": label, "dtype": precision.dtype,
                   **evaluate_tasks(model, tok, [task], device, dist, limit, data_file, precision.dtype,
                                    progress=not quiet)}
    finally:
        teardown()
    return out if dist.main else None


def describe(out: dict) -> str:
    """`eval`'s answer for people: the loss line, or a table of the tasks (and the CORE-style score)."""
    if out["task"] == "loss":
        line = f"val loss {out['val_loss']:.4f}, perplexity {out['val_ppl']:.2f}"
        if out["val_bpb"] is not None:
            line += f", {out['val_bpb']:.4f} bits/byte"
        return (f"{line} ({out['checkpoint']}, {out['batches']} batches of {out['batch_size']} x "
                f"{out['block_size']} tokens from {out['data']})")
    core = "core_centered" in out
    head = f"{'task':<34} {'n':>6} {'acc':>7} {'acc_norm':>8} {'chance':>7}"
    head += f" {'centred':>8}" if core else ""
    lines = [f"{out['model']}, {out['dtype']}", head]
    for name, r in out["results"].items():
        norm = f"{r['acc_norm']:8.4f}" if "acc_norm" in r else f"{'-':>8}"
        row = f"{name:<34} {r['n']:>6} {r['acc']:7.4f} {norm} {r['random_baseline']:7.2f}"
        if core:
            row += f" {r['centered']:8.4f}"
        lines.append(row + f"   {r['n'] / max(r['seconds'], 1e-9):,.0f} items/s")
    if core:
        score = out["core_centered"]
        shown = "n/a" if score is None or math.isnan(score) else f"{score:.4f}"
        lines.append(f"CORE-style score over {len(out['tasks'])} of CORE's {CORE_TASK_COUNT} tasks (a "
                     f"subset, not CORE; multiple choice counts acc_norm, generation acc): {shown}")
        if out["left_out"]:  # the reason was noted on stderr; JSON carries it too
            lines.append(f"left out for want of their data: {', '.join(out['left_out'])}")
    return "\n".join(lines)
