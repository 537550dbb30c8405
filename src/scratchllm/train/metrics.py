"""What a run records: `metrics.jsonl` (one JSON object a line) and `loss.png` (the loss curves, and task
accuracy beside them when the run evaluates tasks)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from scratchllm.util.files import atomic_path, atomic_write_bytes

SAMPLE_HEADER = re.compile(r"^--- step (\d+) \(val loss [^)\n]*\) ---$", re.MULTILINE)


def sample_entry(step: int, val_loss: float, text: str) -> str:
    """One entry of samples.txt: a header line with the step, then the text."""
    return f"--- step {step} (val loss {val_loss:.4f}) ---\n{text}\n\n"


def truncate_samples(path: str | Path, step: int, scheduled_eval=lambda s: True) -> None:
    """Drop the samples.txt entries that `MetricsLog.truncate_after` drops from metrics.jsonl."""
    path = Path(path)
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    starts = [(m.start(), int(m.group(1))) for m in SAMPLE_HEADER.finditer(text)]
    keep = [text[a:b] for (a, s), (b, _) in zip(starts, [*starts[1:], (len(text), 0)], strict=True)
            if s < step or (s == step and scheduled_eval(s))]
    atomic_write_bytes(path, "".join(keep).encode())


class MetricsLog:
    """Appends lines to `metrics.jsonl`; keeps everything in memory for the plot."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    self.rows.append(json.loads(line))
                except ValueError:  # a line cut off by a kill: it is rewritten after the resume
                    break

    def truncate_after(self, step: int, scheduled_eval=lambda s: True, scheduled_tasks=None) -> None:
        """Forget lines after `step` (a resume replays those steps and writes them again).

        At `step` itself the training line is kept, an evaluation only if `scheduled_eval(step)` and
        task lines only if `scheduled_tasks(step)` (default: the same rule): one made because a run
        stopped early (time budget) is not in the uninterrupted run's log, so a resume drops it. A
        resume writes its own precision line again where it needs one.
        """
        tasks_kept = (scheduled_tasks or scheduled_eval)(step)

        def kept(r: dict) -> bool:
            at = r.get("step", 0)
            if at != step:
                return at < step
            return "loss" in r or ("val_loss" in r and scheduled_eval(step)) or ("task" in r and tasks_kept)

        self.rows = [r for r in self.rows if kept(r)]
        text = "".join(json.dumps(r) + "\n" for r in self.rows)
        atomic_write_bytes(self.path, text.encode())

    def log(self, **row) -> None:
        """Append one line and flush it, so a killed run keeps every line written so far."""
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, path: str | Path, title: str = "") -> None:
        """Write the loss curves, and any task accuracy beside them, as a PNG (atomically)."""
        try:
            # A Figure of its own, not pyplot: it needs no display, and it leaves the process's backend
            # alone (switching it to Agg would stop a notebook that calls train() from showing plots).
            from matplotlib.figure import Figure
        except ImportError:  # plotting is optional (e.g. a bare GPU image); metrics.jsonl has it all
            return

        train = [(r["step"], r["loss"]) for r in self.rows if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in self.rows if "val_loss" in r]
        tasks = task_series(self.rows)
        fig = Figure(figsize=(13 if tasks else 7, 4.5), dpi=100)
        axes = fig.subplots(1, 2 if tasks else 1, squeeze=False)
        ax = axes[0][0]
        if train:
            ax.plot(*zip(*train, strict=True), label="train", lw=1, alpha=0.8)
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="val", lw=1.5, ms=3)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy loss (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if train or val:
            ax.legend()
        if tasks:
            _plot_tasks(axes[0][1], tasks)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")


def task_series(rows: list[dict]) -> dict[str, dict]:
    """Per task of the task lines: its headline metric, the (step, value) points, chance, and the
    published figures to draw beside it (see scratchllm.eval.references)."""
    from scratchllm.eval.references import REFERENCES

    out: dict[str, dict] = {}
    for r in rows:
        if "task" not in r:
            continue
        metric = "core_centered" if "core_centered" in r else ("acc_norm" if "acc_norm" in r else "acc")
        series = out.setdefault(r["task"], {"metric": metric, "points": [],
                                            "chance": r.get("random_baseline"),
                                            "references": REFERENCES.get(r["task"], [])})
        series["points"].append((r["step"], r[metric]))
    return out


def _plot_tasks(ax, tasks: dict[str, dict]) -> None:
    """Task accuracy over the steps, a dashed line in the same colour for each published figure."""
    chances = set()
    for name, s in tasks.items():
        label = f"{name} ({s['metric']})" if name != "core" else "CORE-style score (centred; CORE subset)"
        (line,) = ax.plot(*zip(*s["points"], strict=True), "o-", lw=1.5, ms=3, label=label)
        for who, value in s["references"]:
            ax.axhline(value, color=line.get_color(), ls="--", lw=1, alpha=0.7)
            ax.annotate(f"{who} {100 * value:g}%", (0.01, value), xycoords=("axes fraction", "data"),
                        va="bottom", fontsize=8, color=line.get_color())
        if s["chance"]:
            chances.add(s["chance"])
    for c in sorted(chances):
        ax.axhline(c, color="grey", ls=":", lw=1)
        ax.annotate(f"chance {c:.0%}", (0.99, c), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("task accuracy")
    ax.set_title("downstream tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
