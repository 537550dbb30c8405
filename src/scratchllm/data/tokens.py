"""The token file format shared with llm.c and modded-nanogpt: a 1 KiB header, then raw token ids.

Header: 256 little-endian int32 values, `[magic, version, n_tokens, 0, ...]`.
uint16 tokens use magic 20240520 and version 1 (llm.c's GPT-2 shards, modded-nanogpt's FineWeb
shards); uint32 tokens, needed once the vocabulary passes 65,536, use magic 20240801 and version 7.
The tokens follow immediately, little-endian, with nothing after them, so the file size alone says
whether a file was cut short.

One file holds at most 2**31 - 1 tokens (the header's count is an int32), so a large corpus is a
folder of shards (see `folder.py`); `ShardedTokens` reads a list of shards as one array.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from scratchllm.util.errors import UserError
from scratchllm.util.files import atomic_path

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
        self.max_id = -1  # the largest id written, -1 while there is none
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._file = self._stack.enter_context(open(tmp, "wb"))
        self._file.write(_header(self.dtype, 0))  # rewritten with the true count on close

    def write(self, tokens) -> None:
        """Append a 1-D array (or list) of token ids."""
        arr = np.asarray(tokens)
        if arr.size == 0:
            return
        if arr.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got {arr.dtype}")
        hi = int(arr.max())
        if arr.dtype != self.dtype:
            lo = int(arr.min())
            if lo < 0 or hi > self._limit:
                raise ValueError(f"token id {hi if hi > self._limit else lo} does not fit {self.dtype.name}")
            arr = arr.astype(self.dtype)
        if self.n_tokens + arr.size > MAX_TOKENS:
            # Said now, not when the file is closed hours later.
            raise UserError(f"{self.path.name}: more than {MAX_TOKENS:,} tokens, the most one llm.c token "
                            "file can hold")
        self._file.write(np.ascontiguousarray(arr.ravel()).tobytes())
        self.n_tokens += arr.size
        self.max_id = max(self.max_id, hi)

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


class ShardedTokens:
    """Token shards read as one 1-D array: `len()` and slices, reading only what a slice covers.

    The training loader and the evaluation take windows by slicing; a window that runs over the end
    of one shard continues in the next, as it would in one long file, so a folder of many shards
    trains exactly as one file holding the same tokens. Memory holds one memory map per shard.
    """

    def __init__(self, shards: list[np.ndarray], dtype=None):
        self.shards = [s for s in shards if len(s)]
        dtypes = {np.dtype(s.dtype) for s in shards} | ({np.dtype(dtype)} if dtype is not None else set())
        if len(dtypes) > 1:
            raise ValueError(f"shards of one split must share a dtype, got {sorted(d.name for d in dtypes)}")
        self.dtype = dtypes.pop() if dtypes else np.dtype("<u2")
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("ShardedTokens takes slices, e.g. tokens[start:stop]")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("ShardedTokens slices have step 1")
        if start >= stop:
            return np.zeros(0, self.dtype)
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pieces = []
        while start < stop:
            first = int(self.offsets[i])
            pieces.append(self.shards[i][start - first : stop - first])
            start = first + len(self.shards[i])
            i += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def tolist(self) -> list[int]:
        """Every token as a Python list (for small data: it reads all of them)."""
        return self[:].tolist()
