"""The speedrun measure: the best recipe against the GPT-2 baseline, at equal steps, on two corpora.

For each corpus, train the baseline (the `tiny` preset: GPT-2's architecture, AdamW, cosine; the
demo's recipe until the speedrun options came) and the best recipe (`tiny-modern`) for the same
number of optimizer steps on the same batches, in one process and one step of each in turn, so
that machine noise hits both alike, in the precision `train.dtype=auto` picks here. Both are
evaluated on held-out documents as they train. Printed per corpus: the held-out bits per byte of both
at equal steps and at equal training time, and the fraction of the baseline's steps (and of its
time) that the best recipe needs to reach the baseline's final held-out loss. The last lines are one
JSON object per corpus, Shakespeare's last.

Corpora:
- `shakespeare`: as `scratchllm demo` prepares it (a 4,096-token BPE learned on 39 texts; the last
  three plays held out).
- `python-docs`: the reStructuredText sources of Python 3.11's documentation, as Debian's
  `python3.11-doc` package ships them (fetched once with `apt-get download`, cached): 496 pages,
  11 MB, in an order fixed by the hash of their paths; the last 5% of the bytes held out. No test or
  preset was tuned on it.

    python benchmarks/speedrun.py [--quick] [--steps N] [--corpus shakespeare,python-docs]
    python benchmarks/speedrun.py --quick --baseline tiny-modern --best-set train.align=true   # one option

The default (600 steps of the presets' shape on both corpora) takes over an hour on 2 CPU cores:
the 40 evaluations over the whole held-out text cost more than the training. `--quick` (300 steps,
the largest of the demo's shapes that fits) took 14 minutes on a 2-core AVX-512-bf16 EPYC.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from corpora import python_docs_source

from scratchllm.config import Config, build_config
from scratchllm.demo import prepare_data
from scratchllm.eval.loss import evaluate, split_bits_per_byte
from scratchllm.train.launch import open_data
from scratchllm.train.trainer import Trainer
from scratchllm.util.fetch import cache_dir
from scratchllm.util.log import setup_logging

RECIPES = {"baseline": "tiny", "best": "tiny-modern"}
EVAL_POINTS = 40  # evaluations over a run: the crossing point is known to 1/40 of the steps
EVAL_OVERHEAD = 1.6  # the evaluations' share of a race, as a factor on the training time (measured: 1.56)
QUICK_STEPS, QUICK_MINUTES = 300, 14.0


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def corpus_tokens(name: str) -> Path:
    """The token folder of corpus `name`, prepared once under the cache folder."""
    root = cache_dir() / "speedrun" / name
    data = root / "tokens"
    if (data / "meta.json").is_file():
        return data
    if name == "shakespeare":
        prepare_data("shakespeare", root, val_docs=3, quiet=True)
        return data
    source = python_docs_source(root)
    pages = sorted(Path(source[5:]).parent.glob("*.txt"))
    sizes = [p.stat().st_size for p in pages]
    held, n_val = 0, 0
    while held < 0.05 * sum(sizes):  # the last documents, about 5% of the bytes
        n_val += 1
        held += sizes[-n_val]
    prepare_data(source, root, val_docs=n_val, quiet=True)
    return data


@dataclass
class Curve:
    """One recipe's run: held-out loss at evaluated steps, with the training seconds spent by then."""

    points: list[tuple[int, float, float]] = field(default_factory=list)  # (step, seconds, val loss)
    final_bpb: float = float("nan")

    def steps_to(self, target: float) -> float | None:
        """The first step (interpolated between evaluations) where the loss reaches `target`."""
        return self._first(target, 0)

    def seconds_to(self, target: float) -> float | None:
        """The training time by which the loss reaches `target`."""
        return self._first(target, 1)

    def _first(self, target: float, axis: int) -> float | None:
        for a, b in zip(self.points, self.points[1:], strict=False):
            if b[2] <= target:
                if a[2] <= target:
                    return float(a[axis])
                frac = (a[2] - target) / (a[2] - b[2])
                return a[axis] + frac * (b[axis] - a[axis])
        return None

    def loss_at_seconds(self, seconds: float) -> float:
        """The loss at training time `seconds` (interpolated; the last one if the run was shorter)."""
        for a, b in zip(self.points, self.points[1:], strict=False):
            if a[1] <= seconds <= b[1]:
                frac = (seconds - a[1]) / max(b[1] - a[1], 1e-9)
                return a[2] + frac * (b[2] - a[2])
        return self.points[-1][2]


def race(cfgs: dict[str, Config], data: Path, steps: int) -> dict[str, Curve]:
    """Train every config `steps` steps, one step of each in turn; evaluate all at the same steps."""
    trainers, curves, spent = {}, {}, {}
    for name, cfg in cfgs.items():
        folder, cfg = open_data(data, cfg)
        trainers[name] = Trainer(cfg, folder.train, folder.val, folder.meta)
        curves[name], spent[name] = Curve(), 0.0
    first = next(iter(trainers.values()))
    every = max(1, steps // EVAL_POINTS)
    bar_every = max(1, steps // 10)
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            for name, t in trainers.items():
                curves[name].points.append((step, spent[name], _val_loss(t, first.tc.eval_batches)))
        if step == steps:
            break
        for name, t in trainers.items():
            start = time.perf_counter()
            t.step()
            if t.device.type == "cuda":
                torch.cuda.synchronize()
            spent[name] += time.perf_counter() - start
        if (step + 1) % bar_every == 0:
            _say(f"  step {step + 1}/{steps}: " + ", ".join(
                f"{n} {curves[n].points[-1][2]:.3f} (at step {curves[n].points[-1][0]})" for n in trainers))
    for name, t in trainers.items():  # the whole held-out set, for the figures printed
        n_all = (len(t.val_tokens) - 1) // (t.tc.batch_size * t.cfg.model.block_size)
        curves[name].final_bpb = split_bits_per_byte(_val_loss(t, n_all), t.meta["val"])
    return curves


def _val_loss(t: Trainer, n_batches: int) -> float:
    tc = replace(t.tc, eval_batches=n_batches)
    return evaluate(t.model, t.val_tokens, tc, t.cfg.model.block_size, t.device, t.dist, t.precision.dtype)


def report(corpus: str, curves: dict[str, Curve], meta: dict, steps: int) -> dict:
    """Print one corpus's comparison; return its JSON figures."""
    base, best = curves["baseline"], curves["best"]
    bpb = lambda loss: split_bits_per_byte(loss, meta["val"])  # noqa: E731
    target = base.points[-1][2]
    base_seconds = base.points[-1][1]
    steps_needed, seconds_needed = best.steps_to(target), best.seconds_to(target)
    at_equal_time = best.loss_at_seconds(base_seconds)
    _say(f"\n{corpus}: {steps} steps each, same batches, {best.points[-1][1] / base_seconds:.2f}x the "
         f"baseline's time per step")
    _say(f"  held-out bits/byte at equal steps ({steps}): baseline {base.final_bpb:.3f}, "
         f"best {best.final_bpb:.3f}")
    _say(f"  held-out bits/byte at equal time ({base_seconds:.0f} s, evaluation batches): baseline "
         f"{bpb(target):.3f}, best {bpb(at_equal_time):.3f}")
    fraction = time_fraction = None
    if steps_needed is not None:
        fraction, time_fraction = steps_needed / steps, seconds_needed / base_seconds
        _say(f"  the best recipe reaches the baseline's final loss ({target:.4f}) at step "
             f"{steps_needed:.0f}: {fraction:.2f} of the steps, {time_fraction:.2f} of the time")
    else:
        _say(f"  the best recipe never reaches the baseline's final loss ({target:.4f})")
    return {"corpus": corpus, "baseline_bpb": round(base.final_bpb, 4), "best_bpb": round(best.final_bpb, 4),
            "steps_fraction": None if fraction is None else round(fraction, 3),
            "time_fraction": None if time_fraction is None else round(time_fraction, 3)}


def quick_shape(steps: int, n_corpora: int) -> list[str]:
    """The largest of the demo's model shapes whose races all fit QUICK_MINUTES here (measured)."""
    from scratchllm.data.folder import TokenFolder
    from scratchllm.demo import DEMO_MODELS, steps_per_second

    tokens = TokenFolder.open(corpus_tokens("shakespeare")).train
    for shape in DEMO_MODELS:
        rates = [steps_per_second(build_config(preset, sets=[*shape, "model.vocab_size=4096"]), tokens)
                 for preset in RECIPES.values()]
        minutes = n_corpora * steps * sum(1 / r for r in rates) * EVAL_OVERHEAD / 60
        if minutes <= QUICK_MINUTES:
            break
    _say(f"--quick: {', '.join(shape) or 'the presets shape'} ({minutes:.1f} minutes of training expected)")
    return shape


def main() -> None:
    """Race the two recipes on each corpus and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="python-docs,shakespeare", help="comma-separated corpora")
    p.add_argument("--steps", type=int, default=None, help="steps of each run (default 600, --quick 300)")
    p.add_argument("--quick", action="store_true",
                   help="300 steps on the largest of the demo's shapes that fits 15 minutes here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of both recipes (e.g. model.block_size=128)")
    p.add_argument("--baseline", default=RECIPES["baseline"],
                   help=f"the baseline's preset (default {RECIPES['baseline']})")
    p.add_argument("--best-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the best recipe alone (with --baseline tiny-modern: one option)")
    args = p.parse_args()
    setup_logging(quiet=True)  # the data stage's reports, as `scratchllm tokenize --quiet` prints them
    recipes = {"baseline": args.baseline, "best": RECIPES["best"]}
    steps = args.steps or (QUICK_STEPS if args.quick else 600)
    corpora = args.corpus.split(",")
    shape = quick_shape(steps, len(corpora)) if args.quick else []
    from scratchllm.runtime.precision import resolve

    precision = resolve("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    _say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {precision.dtype} "
         f"({precision.reason})")
    lines = []
    for corpus in corpora:
        data = corpus_tokens(corpus)
        own = {"baseline": [], "best": args.best_set}
        cfgs = {name: build_config(preset, sets=[*shape, f"train.max_steps={steps}", *args.set, *own[name]])
                for name, preset in recipes.items()}
        meta = json.loads((data / "meta.json").read_text())
        _say(f"\n== {corpus}: train {meta['train']['tokens']:,} tokens, "
             f"held out {meta['val']['tokens']:,} ==")
        lines.append(report(corpus, race(cfgs, data, steps), meta, steps))
    for line in lines:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
