"""The token file format shared with llm.c and modded-nanogpt: a 1 KiB header, then raw token ids.

Header: 256 little-endian int32 values, `[magic, version, n_tokens, 0, ...]`.
uint16 tokens use magic 20240520 and version 1 (llm.c's GPT-2 shards, modded-nanogpt's FineWeb
shards); uint32 tokens, needed once the vocabulary passes 65,536, use magic 20240801 and version 7.
The tokens follow immediately, little-endian, with nothing after them, so the file size alone says
whether a file was cut short.

A token folder holds train.bin, val.bin and meta.json (tokenizer, vocabulary, end-of-text id,
documents, tokens and UTF-8 bytes of each split, source). `TokenFolder` opens one and checks the three
together; `write_meta` is the one writer of meta.json.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratchllm.util import UserError, atomic_path, atomic_write_json, one_line

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# (magic, version) for each token width.
FORMATS: dict[np.dtype, tuple[int, int]] = {
    np.dtype("<u2"): (20240520, 1),
    np.dtype("<u4"): (20240801, 7),
}
_BY_MAGIC = {magic: (dtype, version) for dtype, (magic, version) in FORMATS.items()}
# The header keeps the count in an int32: readers of the format cannot open a longer file.
MAX_TOKENS = 2**31 - 1


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The narrowest token dtype that holds every id below `vocab_size` (uint16 or uint32)."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def _as_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype).newbyteorder("<")
    if dt not in FORMATS:
        raise ValueError(f"token files hold uint16 or uint32 ids, not {np.dtype(dtype).name}")
    return dt


def _header(dtype: np.dtype, n_tokens: int) -> bytes:
    magic, version = FORMATS[dtype]
    if n_tokens > MAX_TOKENS:
        raise UserError(f"{n_tokens:,} tokens do not fit one llm.c token file (limit {MAX_TOKENS:,})")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (magic, version, n_tokens)
    return header.tobytes()


class TokenWriter:
    """Streams token arrays into one token file; the file appears (atomically) only on `close()`.

    Use as a context manager: leaving the block through an exception removes the partial file, so a
    killed or failed run never leaves something that looks like a complete token file.
    """

    def __init__(self, path: str | Path, dtype="uint16"):
        self.path = Path(path)
        self.dtype = _as_dtype(dtype)
        self._limit = np.iinfo(self.dtype).max
        self.n_tokens = 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._file = self._stack.enter_context(open(tmp, "wb"))
        self._file.write(_header(self.dtype, 0))  # rewritten with the true count on close

    def write(self, tokens) -> None:
        """Append a 1-D array (or list) of token ids."""
        arr = np.asarray(tokens)
        if arr.size == 0:
            return
        if arr.dtype != self.dtype:
            if arr.dtype.kind not in "iu":
                raise ValueError(f"token ids must be integers, got {arr.dtype}")
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi > self._limit:
                raise ValueError(f"token id {hi if hi > self._limit else lo} does not fit {self.dtype.name}")
            arr = arr.astype(self.dtype)
        if self.n_tokens + arr.size > MAX_TOKENS:
            # Said now, not when the file is closed hours later.
            raise UserError(f"{self.path.name}: more than {MAX_TOKENS:,} tokens, the most one llm.c token "
                            "file can hold; split the corpus (e.g. a smaller download --target, or "
                            "tokenize part of it with --data)")
        self._file.write(np.ascontiguousarray(arr.ravel()).tobytes())
        self.n_tokens += arr.size

    def move_tail(self, keep: int, other: TokenWriter, block: int = 1 << 24) -> None:
        """Move every token after the first `keep` into `other` (in blocks), leaving `keep` here.

        This is how a validation split made of the last documents is cut from one streamed file.
        """
        if not 0 <= keep <= self.n_tokens:
            raise ValueError(f"cannot keep {keep} of {self.n_tokens} tokens")
        size = self.dtype.itemsize
        self._file.flush()
        with open(self._file.name, "rb") as src:
            src.seek(HEADER_BYTES + keep * size)
            while chunk := src.read(block * size):
                other.write(np.frombuffer(chunk, dtype=self.dtype))
        self._file.seek(HEADER_BYTES + keep * size)
        self._file.truncate()
        self.n_tokens = keep

    def close(self) -> None:
        """Write the header with the final count and move the file into place."""
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(_header(self.dtype, self.n_tokens))
        self._file.flush()
        self._stack.close()  # closes the file, fsyncs it, renames it over `path`

    def abort(self) -> None:
        """Drop the partial file; `path` is left as it was."""
        if not self._file.closed:
            err = RuntimeError("token file aborted")
            self._stack.__exit__(type(err), err, None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def write_tokens(path: str | Path, tokens, dtype=None) -> None:
    """Write token ids as one llm.c token file, atomically (dtype: uint16 if they fit, else uint32)."""
    arr = np.asarray(tokens)
    if dtype is None:
        # The ids decide, not the array's type: small ids held in a uint32 array still fit uint16.
        dtype = dtype_for_vocab(int(arr.max()) + 1 if arr.size else 1)
    with TokenWriter(path, dtype) as w:
        w.write(arr)


def read_header(path: str | Path) -> tuple[np.dtype, int]:
    """Check a token file's header and size; return (dtype, number of tokens)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such token file")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise UserError(f"{path}: not a token file (only {size} bytes, shorter than the 1024-byte header)")
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    magic, version, n_tokens = (int(x) for x in header[:3])
    if magic not in _BY_MAGIC:
        raise UserError(f"{path}: not a token file (bad magic number {magic}; expected 20240520 or 20240801)")
    dtype, expected_version = _BY_MAGIC[magic]
    if version != expected_version:
        raise UserError(f"{path}: unsupported token file version {version} (expected {expected_version})")
    if n_tokens < 0:
        raise UserError(f"{path}: corrupt header (negative token count {n_tokens})")
    expected = HEADER_BYTES + n_tokens * dtype.itemsize
    if size < expected:
        have = (size - HEADER_BYTES) // dtype.itemsize
        raise UserError(f"{path}: truncated: header says {n_tokens:,} tokens, file holds {have:,}")
    if size > expected:
        raise UserError(f"{path}: {size - expected:,} unexpected bytes after the {n_tokens:,} tokens")
    return dtype, n_tokens


def read_tokens(path: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map a token file after validating it; with `vocab_size`, also check every id is below it."""
    path = Path(path)
    dtype, n_tokens = read_header(path)
    if n_tokens == 0:
        return np.zeros(0, dtype=dtype)  # mmap cannot map zero bytes
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
    if vocab_size is not None:
        check_range(tokens, vocab_size, path)
    return tokens


def max_id(tokens: np.ndarray, chunk: int = 1 << 24) -> int:
    """The largest id in `tokens` (-1 if there are none), read in blocks so a memmap is never loaded whole."""
    return max((int(tokens[i : i + chunk].max()) for i in range(0, len(tokens), chunk)), default=-1)


def check_range(tokens: np.ndarray, vocab_size: int, name: str | Path = "tokens",
                chunk: int = 1 << 24) -> None:
    """Raise UserError if any id is >= vocab_size (scans in chunks, so a memmap is never loaded whole)."""
    for start in range(0, len(tokens), chunk):
        block = tokens[start : start + chunk]
        if int(block.max()) >= vocab_size:
            i = int(np.argmax(block >= vocab_size))
            raise UserError(f"{name}: token id {int(block[i])} at position {start + i:,} is outside "
                            f"the vocabulary of {vocab_size:,}")


# --- the token folder ------------------------------------------------------------------------------

META = "meta.json"
SPLITS = ("train", "val")
# Folders of llm.c or modded-nanogpt shards have no meta.json; their tokens are GPT-2's.
DEFAULT_VOCAB = 50257


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# Field -> (required, test, what the test wants); the two splits are checked apart.
_META_FIELDS = {
    "tokenizer": (True, lambda v: isinstance(v, str) and bool(v), "a tokenizer name or file"),
    "vocab_size": (True, lambda v: _is_count(v) and v > 0, "a positive integer"),
    "eot_id": (True, _is_count, "a non-negative integer"),
    "tokenizer_sha256": (False, lambda v: isinstance(v, str), "a string"),
    "token_dtype": (False, lambda v: v in ("uint16", "uint32"), '"uint16" or "uint32"'),
    "source": (False, lambda v: isinstance(v, str), "a string"),
    "seconds": (False, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
}
_SPLIT_FIELDS = ("documents", "tokens", "bytes")


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def check_meta(meta, path: str | Path) -> dict:
    """`meta` if it has the shape of meta.json, else a UserError naming `path` and the field."""
    if not isinstance(meta, dict):
        raise UserError(f"{path}: must hold a JSON object, not {_shown(meta)}")
    for key, (required, test, want) in _META_FIELDS.items():
        if key not in meta:
            if required:
                raise UserError(f'{path}: no "{key}" field')
        elif not test(meta[key]):
            raise UserError(f'{path}: field "{key}" must be {want}, not {_shown(meta[key])}')
    for split in SPLITS:
        counts = meta.get(split)
        if not isinstance(counts, dict):
            raise UserError(f'{path}: field "{split}" must be an object with {", ".join(_SPLIT_FIELDS)}, '
                            f"not {_shown(counts)}")
        for key in _SPLIT_FIELDS:
            if not _is_count(counts.get(key)):
                raise UserError(f'{path}: field "{split}.{key}" must be a non-negative integer, '
                                f"not {_shown(counts.get(key))}")
    if meta["eot_id"] >= meta["vocab_size"]:
        raise UserError(f'{path}: field "eot_id" ({meta["eot_id"]}) must be below vocab_size '
                        f'({meta["vocab_size"]})')
    return meta


def read_meta(folder: str | Path) -> dict:
    """meta.json of a token folder, checked (UserError if it is missing, unreadable or malformed)."""
    path = Path(folder) / META
    if not path.is_file():
        raise UserError(f"{folder}: not a complete token folder (no meta.json); run `scratchllm tokenize`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # also undecodable bytes: UnicodeDecodeError is a ValueError
        raise UserError(f"{path}: not valid JSON: {one_line(e)}") from None
    return check_meta(meta, path)


def write_meta(folder: str | Path, meta: dict) -> dict:
    """Check `meta` as `read_meta` does and write it as folder/meta.json, atomically; return it."""
    path = Path(folder) / META
    atomic_write_json(path, check_meta(meta, path))
    return meta


@dataclass(frozen=True, eq=False)
class TokenFolder:
    """A token folder, opened and checked: train.bin and val.bin memory-mapped, meta.json read.

    `open` refuses a folder whose token files are not whole, whose counts or widths differ from
    meta.json's or whose ids reach past meta.json's vocabulary. A folder of llm.c or modded-nanogpt
    shards has no meta.json; its ids are checked against the model's vocabulary (`model_vocab_size`).
    Every id is read at each opening (in blocks of 16M tokens: seconds for gigabytes, from the page
    cache faster still), so nothing is cached and opening never writes to the folder.
    """

    path: Path
    meta: dict  # {} for a folder without meta.json
    train: np.ndarray
    val: np.ndarray
    max_ids: dict[str, int]  # the largest id of each split, -1 for an empty one

    @classmethod
    def open(cls, path: str | Path, require_meta: bool = False) -> TokenFolder:
        """Open and check the folder (meta.json may be absent unless `require_meta`)."""
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path}: no such data folder (make one with `scratchllm tokenize`)")
        meta = read_meta(path) if require_meta or (path / META).is_file() else {}
        splits, max_ids = {}, {}
        for name in SPLITS:
            file = path / f"{name}.bin"
            splits[name] = tokens = read_tokens(file)
            if meta and len(tokens) != meta[name]["tokens"]:
                raise UserError(f"{file}: holds {len(tokens):,} tokens but meta.json says "
                                f"{meta[name]['tokens']:,}")
            if meta.get("token_dtype", tokens.dtype.name) != tokens.dtype.name:
                raise UserError(f"{file}: holds {tokens.dtype.name} tokens but meta.json says "
                                f"{meta['token_dtype']}")
            max_ids[name] = max_id(tokens)
            if meta and max_ids[name] >= meta["vocab_size"]:
                check_range(tokens, meta["vocab_size"], file)  # raises, naming the first such id
        return cls(path, meta, splits["train"], splits["val"], max_ids)

    def split(self, name: str) -> np.ndarray:
        """The tokens of split `name` ('train' or 'val')."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {name!r}")
        return self.train if name == "train" else self.val

    def model_vocab_size(self, requested: int) -> int:
        """The vocabulary of a model for these tokens: `requested`, or for 0 the data's (meta.json's, or
        GPT-2's 50,257 without one); UserError if the tokens do not fit it."""
        if self.meta:
            vocab = self.meta["vocab_size"]
            if requested and vocab > requested:
                raise UserError(f"{self.path}: the tokens use a vocabulary of {vocab:,}, larger than "
                                f"model.vocab_size {requested:,}")
            return requested or vocab
        vocab = requested or DEFAULT_VOCAB
        for name in SPLITS:  # no meta.json to trust: the ids themselves must fit
            if self.max_ids[name] >= vocab:
                raise UserError(f"{self.path / f'{name}.bin'}: token ids reach {self.max_ids[name]}, "
                                f"beyond model.vocab_size {vocab:,}")
        return vocab


def read_split(folder: str | Path, split: str) -> np.ndarray:
    """train.bin or val.bin of a complete token folder (one with meta.json), checked by `TokenFolder`."""
    return TokenFolder.open(folder, require_meta=True).split(split)
