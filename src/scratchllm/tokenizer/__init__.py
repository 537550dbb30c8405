"""Byte-level BPE: learn it (bpe.py), load, save and run it (encoding.py), write token files (pipeline.py)."""

from __future__ import annotations

from pathlib import Path

from scratchllm.tokenizer.bpe import EOT, GPT2_PATTERN, GPT4_PATTERN, train_bpe
from scratchllm.tokenizer.encoding import Tokenizer, is_pretrained_name
from scratchllm.tokenizer.parallel import default_workers
from scratchllm.tokenizer.pipeline import iter_texts, read_meta, read_split, tokenize_to_dir
from scratchllm.util import UserError

__all__ = ["EOT", "GPT2_PATTERN", "GPT4_PATTERN", "Tokenizer", "load_tokenizer", "load_tokenizer_for_data",
           "read_meta", "read_split", "train_bpe", "train_tokenizer", "tokenize_to_dir"]


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """A tokenizer folder (or tokenizer.json), or a pretrained name such as gpt2 or cl100k_base."""
    path = Path(spec)
    if isinstance(spec, str) and is_pretrained_name(spec):
        if path.exists():  # a folder called gpt2 must not silently stand in for GPT-2, or the reverse
            raise UserError(f"{spec!r} is both a pretrained tokenizer and a path here; "
                            f"write ./{spec} for the path")
        return Tokenizer.pretrained(spec)
    if (path / "tokenizer.json").is_file() or path.is_file():
        return Tokenizer.load(path)
    if path.is_dir() or any(sep in str(spec) for sep in ("/", "\\")) or path.suffix == ".json":
        if path.is_dir():
            return Tokenizer.load(path)  # says that tokenizer.json is missing
        raise UserError(f"{spec}: no such tokenizer folder")
    return Tokenizer.pretrained(str(spec))


def load_tokenizer_for_data(folder: str | Path) -> Tokenizer:
    """The tokenizer that wrote a `tokenize` output folder, checked against the hash in its meta.json."""
    folder = Path(folder)
    meta = read_meta(folder)
    name = meta["tokenizer"]
    tok = Tokenizer.load(folder / name) if name.endswith(".json") else Tokenizer.pretrained(name)
    if meta.get("tokenizer_sha256") and tok.sha256() != meta["tokenizer_sha256"]:
        raise UserError(f"{folder}: the tokenizer {name} is not the one these tokens were made with")
    return tok


def train_tokenizer(source, vocab_size: int, out_dir: str | Path, pattern: str = "gpt4",
                    max_bytes: int | None = None, workers: int | None = None,
                    quiet: bool = False) -> Tokenizer:
    """Learn BPE from a source (spec, download folder, Source, documents or strings); save tokenizer.json."""
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after training
    tok = train_bpe(iter_texts(source), vocab_size, pattern=pattern, max_bytes=max_bytes,
                    progress=not quiet, workers=workers)
    tok.save(out_dir)
    return tok
