"""Stage 1, step 3: a corpus becomes a tokenizer (`train_tokenizer`) and a token folder (`tokenize_to_dir`).

A corpus is a source spec, a `download` folder, a Source, or any iterable of documents or strings.

`tokenize_to_dir` writes the token folder that `folder.py` describes: shards of at most
`shard_tokens` tokens (100M by default, as llm.c and modded-nanogpt shard FineWeb), each ending at a
document boundary, listed in meta.json as each is completed, so a killed run resumes after its last
whole shard (`shard_writer.py`). Every document is followed by the EOT id.

The documents stream through once. The main process groups them into batches of about 1 MB of
text and hands the batches to worker processes; at most a few batches per worker are in flight,
so memory stays flat whatever the corpus size, and results are written in submission order, so the
token stream follows source order.

Validation is whole documents (never overlapping windows, which would leak training text into
validation), chosen before anything is written (`plan_split`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Sized
from pathlib import Path
from typing import Any

import numpy as np

from scratchllm.data.download import iter_downloaded, read_manifest
from scratchllm.data.folder import read_meta
from scratchllm.data.shard_writer import ShardWriter, SplitPlan
from scratchllm.data.sources import DEFAULT_VAL_DOCS, Source, open_source
from scratchllm.data.tokens import MAX_TOKENS, dtype_for_vocab
from scratchllm.tokenizer.chat import CHAT_TOKENS
from scratchllm.tokenizer.encoding import EOT, Tokenizer, load_tokenizer, train_bpe
from scratchllm.tokenizer.parallel import default_workers, ordered_map
from scratchllm.util.disk import default_min_free, disk_free
from scratchllm.util.errors import UserError
from scratchllm.util.files import remove_stale_temps
from scratchllm.util.locks import folder_lock
from scratchllm.util.log import REPORT, get_logger

logger = get_logger(__name__)

BATCH_BYTES = 1 << 20
DEFAULT_VAL_FRACTION = 0.01  # of the documents, for a source without its own split
DEFAULT_SHARD_TOKENS = 100_000_000


def iter_documents(source, start: int = 0):
    """Documents from index `start` on of a spec (None = shakespeare), a `download` folder (a Path), a
    Source or an iterable."""
    if source is None:
        source = "shakespeare"
    if isinstance(source, str):
        return open_source(source).documents(start)
    if isinstance(source, Path):
        return iter_downloaded(source, start)
    if isinstance(source, Source):
        return source.documents(start)
    return itertools.islice(iter(source), start, None)


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


def count_documents(source) -> int | None:
    """How many documents `source` holds, when that can be known before encoding it (None for a stream)."""
    if source is None or isinstance(source, str):
        source = open_source(source or "shakespeare")
    if isinstance(source, Path):
        return int(read_manifest(source)["docs"])
    if isinstance(source, Source):
        return source.count()
    return len(source) if isinstance(source, Sized) else None


def plan_split(source, val_docs: int | None, val_fraction: float | None) -> SplitPlan:
    """Which documents are held out, decided before any is encoded: the last `val_docs` (or fraction) of a
    source whose documents can be counted first; of a stream of unknown length, its first `val_docs`.
    Given neither, a source with its own split keeps it (shakespeare: the last 3 plays), others 1%."""
    if val_docs is not None and val_fraction is not None:
        raise UserError("give --val-docs or --val-fraction, not both")
    if val_docs is not None and val_docs < 0:
        raise UserError(f"--val-docs must be 0 or more, got {val_docs}")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if val_docs is None and val_fraction is None:
        val_docs = DEFAULT_VAL_DOCS.get(base_spec(source))
    n_docs = count_documents(source)
    if n_docs is None:
        if val_docs is None:
            raise UserError("this source's documents cannot be counted before reading it (a stream): give "
                            "--val-docs N to hold out its first N documents, or download it first")
        return SplitPlan(val_docs, "first", None)
    if val_docs is None:
        val_docs = max(1, round(n_docs * (val_fraction or DEFAULT_VAL_FRACTION)))
    if n_docs < 2 and val_docs > 0:
        raise UserError(f"the source has {n_docs} document(s): a train/val split by whole documents "
                        "needs at least 2")
    if val_docs >= n_docs:
        raise UserError(f"{val_docs} validation documents leave none for training (the source has {n_docs})")
    return SplitPlan(val_docs, "last", n_docs)


class _Progress:
    """A tqdm bar of text bytes (MB/s, and an ETA when the total is known) with tokens and shards, shown
    from the first result on (so a source that cannot be read fails with its one-line error alone)."""

    def __init__(self, quiet: bool, total: int | None, done: int):
        self.quiet, self.total, self.done = quiet, total, done
        self.bar: Any = None  # a tqdm bar, imported only when one is shown

    def update(self, n_bytes: int, writer: ShardWriter, tokens_per_s: float) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc="tokenize", total=self.total, initial=self.done, unit="B", unit_scale=True,
                            unit_divisor=1000, dynamic_ncols=True, smoothing=0.05)
        tokens = sum(writer.meta[s]["tokens"] for s in ("train", "val"))
        self.bar.set_postfix_str(f"{tokens / 1e6:,.0f}M tokens, {len(writer.shards)} shards, "
                                 f"{tokens_per_s / 1e6:.2f}M tok/s", refresh=False)
        self.bar.update(n_bytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _check_workers(workers: int | None) -> int:
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    return workers


def _total_bytes(source) -> int | None:
    """The text bytes of the whole source, when known in advance (a download folder's), for the ETA."""
    return int(read_manifest(source)["bytes"]) if isinstance(source, Path) else None


def _encode_into(writer: ShardWriter, source, tok: Tokenizer, workers: int, batch_bytes: int,
                 quiet: bool) -> None:
    """Encode the documents from `writer.next_doc` on and append them, shard by shard."""
    first = writer.next_doc
    progress = _Progress(quiet, _total_bytes(source), sum(e["bytes"] for e in writer.shards))
    start, done_tokens = time.perf_counter(), 0
    docs = iter_documents(source, first)
    try:
        with contextlib.closing(docs) if hasattr(docs, "close") else contextlib.nullcontext():
            for tokens, n_tokens, n_bytes in encode_stream(tok, docs, writer.dtype, workers, batch_bytes):
                writer.add(first, tokens, n_tokens, n_bytes)
                first += len(n_tokens)
                done_tokens += len(tokens)
                progress.update(int(n_bytes.sum()), writer, done_tokens / (time.perf_counter() - start))
    except OSError as e:
        writer.abort()
        raise writer.write_error(e) from e
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.close()


def tokenize_to_dir(source, tokenizer, out_dir, val_docs: int | None = None,
                    val_fraction: float | None = None, workers: int | None = None, quiet: bool = False,
                    batch_bytes: int = BATCH_BYTES, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                    min_free: int | None = None, free_space=disk_free) -> dict:
    """Encode `source` into a token folder (out_dir/train_000000.bin, ..., meta.json); return meta.json's
    content. Run again after an interruption, it continues after the last complete shard.

    `tokenizer` is a Tokenizer, a folder or a pretrained name; the split is `plan_split`'s. A folder
    holding tokens of another source, tokenizer or split is refused.
    """
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    workers = _check_workers(workers)
    if not 0 < shard_tokens <= MAX_TOKENS:
        raise UserError(f"--shard-tokens must be between 1 and {MAX_TOKENS:,}, got {shard_tokens:,}")
    plan = plan_split(source, val_docs, val_fraction)
    out = Path(out_dir)
    identity = {"source": describe_source(source), "tokenizer": tok.pretrained_name or "tokenizer.json",
                "tokenizer_sha256": tok.sha256(), "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
                "token_dtype": dtype_for_vocab(tok.vocab_size).name, "shard_tokens": shard_tokens,
                "split": dataclasses.asdict(plan)}
    start = time.perf_counter()
    with folder_lock(out, "tokenize"):
        remove_stale_temps(out)  # a killed run's shard, as large as a shard
        margin = default_min_free(out, filling=True) if min_free is None else min_free
        writer = ShardWriter(out, identity, plan, margin, free_space)
        if writer.meta["complete"]:
            logger.info(f"{out} already holds these tokens, complete: {len(writer.shards)} shards; "
                        "nothing to do", extra=REPORT)
            return writer.meta
        if not tok.pretrained_name:
            tok.save(out)  # before any shard: meta.json names it
        writer.clear()
        if writer.shards:
            logger.info(f"resuming {out}: {writer.saved()[len('Saved so far: '):]}; continuing at document "
                        f"{writer.next_doc:,}", extra=REPORT)
        _encode_into(writer, source, tok, workers, batch_bytes, quiet)
        return writer.finish(time.perf_counter() - start)


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
    # The turn tokens of a conversation are reserved now, so a model trained on these ids can later be
    # fine-tuned to chat without growing its vocabulary.
    tok = train_bpe(iter_texts(source), vocab_size, pattern=pattern, special_tokens=(EOT, *CHAT_TOKENS),
                    max_bytes=max_bytes, progress=not quiet, workers=workers)
    tok.save(out_dir)
    return tok
