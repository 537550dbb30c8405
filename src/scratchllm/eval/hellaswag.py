"""HellaSwag (Zellers et al. 2019), validation split: 10,042 contexts, each with four endings, one right.

The file is the JSONL the authors publish (rowanz/hellaswag on GitHub), fetched once, checked by
sha256 and cached; `--data-file` reads a local copy of the same format instead. Two renderings:

- `items`: as build-nanogpt and llm.c score it, the raw `ctx` followed by " " + each ending;
- `core_items`: as CORE (DCLM, after lm-evaluation-harness) renders it,
  "Activity label: ctx_a Ctx_b" with the site's markup removed, and the endings cleaned the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from scratchllm.eval.items import Item
from scratchllm.util.errors import UserError
from scratchllm.util.fetch import cache_dir, url_fetch

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
FILE = "hellaswag_val.jsonl"
# As pinned by Hugging Face datasets (datasets/hellaswag/dataset_infos.json): 12,246,618 bytes.
SHA256 = "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"


def data_path(data_file: str | Path | None = None) -> Path:
    """The local copy given, else the cached file, fetched from the authors' repository on first use."""
    if data_file is not None:
        path = Path(data_file)
        if not path.is_file():
            raise UserError(f"--data-file {data_file}: no such file (a copy of {FILE} is expected)")
        return path
    try:
        return url_fetch(URL, cache_dir() / "hellaswag", FILE, SHA256)
    except UserError as e:
        raise UserError(f"no HellaSwag data: {e}; either let {URL} be reached once (it is then cached in "
                        f"{cache_dir() / 'hellaswag'}), or pass --data-file PATH (a local copy of {FILE})"
                        ) from None


def read(path: str | Path) -> list[dict]:
    """The rows of a HellaSwag JSONL file, each checked for a context, four endings and a label."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path} line {n}: not JSON ({e})") from None
            problem = _problem(row)
            if problem:
                raise UserError(f"{path} line {n}: {problem}")
            rows.append(row)
    if not rows:
        raise UserError(f"{path}: no items")
    return rows


def _problem(row) -> str | None:
    """What is wrong with one row, or None."""
    if not isinstance(row, dict):
        return "an item must be a JSON object"
    endings = row.get("endings")
    if not isinstance(row.get("ctx"), str):
        return "no string 'ctx'"
    if not (isinstance(endings, list) and len(endings) >= 2 and all(isinstance(e, str) and e.strip()
                                                                    for e in endings)):
        return "'endings' must be a list of at least two non-empty strings"
    label = row.get("label")
    if isinstance(label, str) and label.isdigit():  # some copies store it as text
        label = int(label)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(endings):
        last = len(endings) - 1
        return f"'label' must be the index of the right ending, 0 to {last}, not {row.get('label')!r}"
    return None


def items(data_file: str | Path | None = None) -> list[Item]:
    """build-nanogpt's rendering: the context as written, then each ending after a space."""
    path = data_path(data_file)
    return [Item(r["ctx"], tuple(r["endings"]), int(r["label"])) for r in read(path)]


def core_items(data_file: str | Path | None = None) -> list[Item]:
    """CORE's rendering: "Activity label: ctx_a Ctx_b" and the endings, cleaned of the site's markup."""
    path = data_path(data_file)
    out = []
    for n, r in enumerate(read(path), 1):
        if not all(isinstance(r.get(k), str) for k in ("activity_label", "ctx_a", "ctx_b")):
            raise UserError(f"{path} item {n}: CORE's rendering needs the strings 'activity_label', "
                            "'ctx_a' and 'ctx_b'")
        query = clean(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}")
        out.append(Item(query, tuple(clean(e) for e in r["endings"]), int(r["label"])))
    return out


def clean(text: str) -> str:
    """Remove WikiHow's markup: ' [title]' ends a sentence, other [tags] go, double spaces become one."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")
