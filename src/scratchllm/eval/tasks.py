"""The tasks a model is measured on, as the field measures GPT-2-class models, and the CORE-style score.

Task names:
    hellaswag            HellaSwag validation, 0-shot, scored as build-nanogpt and llm.c score it:
                         `acc` by summed loss, `acc_norm` by mean loss per token of each ending
    hellaswag_zeroshot   HellaSwag as CORE poses it, 0-shot (CORE's "hellaswag_zeroshot")
    hellaswag_10shot     the same, 10-shot (CORE's "hellaswag")
    bigbench:NAME        a BIG-bench JSON task, from the bigbench sdist (CORE's setting for its six)
    core                 the CORE tasks that are available here, each centred by its random baseline
                         and averaged: a subset of CORE's 22 tasks, never CORE itself

`evaluate_tasks` scores a model in memory once (`scratchllm eval` calls it); `TaskSuite` loads and
tokenizes once for a model evaluated many times (training scores its tasks with one).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from scratchllm.eval import bigbench, hellaswag
from scratchllm.eval.items import Item, Sequences, Task, settle, tokenize
from scratchllm.util.errors import UserError
from scratchllm.util.log import get_logger

logger = get_logger(__name__)

HELLASWAG_TASKS = {
    "hellaswag": Task("hellaswag", "mc", 0, " ", 0.25, False, hellaswag.items),
    "hellaswag_zeroshot": Task("hellaswag_zeroshot", "mc", 0, " ", 0.25, True, hellaswag.core_items),
    "hellaswag_10shot": Task("hellaswag_10shot", "mc", 10, " ", 0.25, True, hellaswag.core_items),
}
# CORE's tasks that can be had offline (HellaSwag where its file is cached or given), in core.yaml's order.
CORE_SUITE = ["hellaswag_zeroshot", "bigbench:qa_wikidata", "hellaswag_10shot",
              "bigbench:language_identification", "bigbench:dyck_languages", "bigbench:cs_algorithms",
              "bigbench:operators", "bigbench:repeat_copy_logic"]
CORE_TASK_COUNT = 22
LIMIT_SEED = 1337  # which items a --limit keeps: a fixed random sample, the same on every run


def get_task(name: str) -> Task:
    """The task called `name` (see the module docstring); UserError for an unknown name."""
    if name in HELLASWAG_TASKS:
        return HELLASWAG_TASKS[name]
    if name.startswith("bigbench:"):
        return bigbench.task(name.removeprefix("bigbench:"))
    raise UserError(f"unknown task {name!r}: use {', '.join(HELLASWAG_TASKS)}, bigbench:NAME "
                    "(e.g. bigbench:operators) or core")


@dataclass
class TaskResult:
    """A task's per-item scores: for each item scored, each choice's log-likelihood, tokens, greedy match."""

    task: Task
    items: list[Item]
    chosen: list[int]  # indices of the scored items in the task's full list
    logprob: list[np.ndarray]
    tokens: list[np.ndarray]
    greedy: list[np.ndarray]
    seconds: float

    def correct(self, per_token: bool = False) -> np.ndarray:
        """Per item: right or not (mc: lowest summed, or with per_token mean, loss; lm: greedy match)."""
        if self.task.kind == "lm":
            return np.array([bool(g[0]) for g in self.greedy])
        picks = [int(np.argmax(lp / n if per_token else lp)) for lp, n in zip(self.logprob, self.tokens,
                                                                            strict=True)]
        return np.array([p == self.items[i].gold for p, i in zip(picks, self.chosen, strict=True)])

    @property
    def core_accuracy(self) -> float:
        """The accuracy CORE counts: lowest mean loss for multiple choice, exact match for generation."""
        return float(self.correct(per_token=self.task.kind == "mc").mean())

    def summary(self) -> dict:
        """n, acc, acc_norm (multiple choice), random_baseline and seconds, as `eval --json` prints them."""
        out = {"n": len(self.chosen), "acc": float(self.correct().mean())}
        if self.task.kind == "mc":
            out["acc_norm"] = float(self.correct(per_token=True).mean())
        return {**out, "random_baseline": self.task.random_baseline, "seconds": round(self.seconds, 3)}


def centered(result: TaskResult) -> float:
    """(accuracy - random baseline) / (1 - random baseline): 0 is chance, 1 is every item right."""
    b = result.task.random_baseline
    return (result.core_accuracy - b) / (1 - b)


@dataclass
class _Prepared:
    task: Task
    items: list[Item]
    chosen: list[int]
    seqs: Sequences


class TaskSuite:
    """Tasks loaded and tokenized once, to evaluate a model at many steps (as training does).

    `data_file` is a local copy of the data: HellaSwag's JSONL for the HellaSwag tasks (also inside
    core), or a BIG-bench task.json when the suite is one bigbench task. Every rank of a torchrun job
    builds the same suite; the first process of each machine fetches missing data before the others
    read it.
    """

    def __init__(self, names: list[str], tokenizer, block_size: int, vocab_size: int, dist,
                 limit: int | None = None, data_file: str | None = None):
        if limit is not None and limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        self.dist = dist
        self.core = "core" in names
        # A Task object may stand for a name: a task of one's own, with its own items.
        expanded = list(dict.fromkeys(n for name in names
                                      for n in (CORE_SUITE if name == "core" else [name])))
        self.left_out: dict[str, str] = {}
        if self.core and data_file is None:  # a file given is meant to be read: a problem is an error
            self._leave_out_missing_hellaswag(expanded)
        self.prepared = []
        for name in expanded:
            if name in self.left_out:
                continue
            task = name if isinstance(name, Task) else get_task(name)
            own_file = data_file if (name in HELLASWAG_TASKS or len(expanded) == 1) else None
            items = self._load(task, own_file)
            task = settle(task, items)
            chosen = (list(range(len(items))) if limit is None or limit >= len(items)
                      else sorted(random.Random(LIMIT_SEED).sample(range(len(items)), limit)))
            seqs = tokenize(task, items, chosen, tokenizer, block_size, vocab_size)
            self.prepared.append(_Prepared(task, items, chosen, seqs))

    def _load(self, task: Task, data_file: str | None) -> list[Item]:
        """The task's items on every rank; one process per machine fetches, then the others read the cache."""
        dist = self.dist
        first = dist.on_every_rank(lambda: task.load(data_file) if dist.local_rank == 0 else None)
        later = dist.on_every_rank(lambda: task.load(data_file) if dist.local_rank != 0 else None)
        return first if dist.local_rank == 0 else later

    def _leave_out_missing_hellaswag(self, names: list[str]) -> None:
        """Core counts HellaSwag only where its file is cached or can be fetched; else the rest is scored."""
        if not any(n in HELLASWAG_TASKS for n in names):
            return
        reason = None
        if self.dist.local_rank == 0:
            try:
                hellaswag.data_path()
            except UserError as e:
                reason = str(e)
        reasons = [r for r in self.dist.gather(reason) if r]
        if reasons:
            for n in names:
                if n in HELLASWAG_TASKS:
                    self.left_out[n] = reasons[0]
            logger.warning(f"note: core leaves out {', '.join(self.left_out)}: {reasons[0]}")

    def results(self, model, device, dtype: str = "float32", progress: bool = False) -> list[TaskResult]:
        """Score every task with `model` (in eval mode; its training mode is restored)."""
        return [_run(p, model, device, self.dist, dtype, progress) for p in self.prepared]

    def evaluate(self, model, device, dtype: str = "float32", progress: bool = False) -> dict:
        """The `results` object of `eval --json` (with `core_centered`, `tasks`, `left_out` for core)."""
        results = self.results(model, device, dtype, progress)
        out: dict[str, Any] = {"results": {r.task.name: r.summary() for r in results}}
        if self.core:
            for r in results:
                out["results"][r.task.name]["centered"] = centered(r)
            out["core_centered"] = float(np.mean([centered(r) for r in results])) if results else None
            out["tasks"] = [r.task.name for r in results]
            out["left_out"] = dict(self.left_out)
        return out


def _run(p: _Prepared, model, device, dist, dtype: str, progress: bool) -> TaskResult:
    """Score one prepared task and regroup the sequences' scores by item."""
    from tqdm.auto import tqdm

    from scratchllm.eval.score import batches, default_batch_tokens, score

    seqs = p.seqs
    per_item = np.bincount(seqs.item, minlength=len(p.chosen))
    weight = [1 / per_item[k] for k in seqs.item]  # a sequence is this much of an item
    batch_tokens = default_batch_tokens(device, model.config.vocab_size)
    mine = batches([len(t) for t in seqs.tokens], batch_tokens)[dist.rank::dist.world_size]
    where = f" (rank 0 of {dist.world_size})" if dist.world_size > 1 else ""
    # Items count in fractions (a batch may end inside an item's choices): shown rounded.
    fmt = "{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}, {rate_fmt}]"
    with tqdm(total=sum(weight[i] for g in mine for i in g), unit="item", desc=p.task.name + where,
              bar_format=fmt, disable=not progress or not dist.main, leave=False, dynamic_ncols=True) as bar:
        start = time.perf_counter()
        s = score(model, seqs.tokens, seqs.n_answer, device, dist, dtype, batch_tokens,
                  progress=lambda group: bar.update(sum(weight[i] for i in group)))
        seconds = time.perf_counter() - start
    bounds = np.concatenate([[0], np.cumsum(per_item)])  # an item's sequences are contiguous
    cut = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return TaskResult(p.task, p.items, p.chosen, [s.logprob[c] for c in cut], [s.tokens[c] for c in cut],
                      [s.greedy[c] for c in cut], seconds)


def evaluate_tasks(model, tokenizer, names: list[str], device, dist, limit: int | None = None,
                   data_file: str | None = None, dtype: str | None = None, progress: bool = False) -> dict:
    """Evaluate `model` on the tasks `names` (or "core"); every rank calls it and gets the same dict.

    Returns `eval --json`'s object less `run` and `task`: {"results": {name: {"n", "acc", "acc_norm"
    (multiple choice), "random_baseline", "seconds"}}}, with "core_centered", "tasks" and "left_out"
    when core is asked for. dtype defaults to the fastest the device supports (train.dtype=auto).
    """
    from scratchllm.runtime.precision import resolve

    dtype = dtype or resolve("auto", device).dtype
    suite = TaskSuite(names, tokenizer, model.config.block_size, model.config.vocab_size, dist, limit,
                      data_file)
    return suite.evaluate(model, device, dtype, progress)


def task_rows(step: int, out: dict) -> list[dict]:
    """`metrics.jsonl` lines of one evaluation: one a task, and one for the CORE-style score."""
    rows = [{"step": step, "task": name, **{k: v for k, v in r.items() if k != "seconds"}}
            for name, r in out["results"].items()]
    if out.get("core_centered") is not None:
        rows.append({"step": step, "task": "core", "core_centered": out["core_centered"],
                     "tasks": len(out["tasks"])})
    return rows
