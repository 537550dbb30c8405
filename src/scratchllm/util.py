"""Small pieces every stage needs: the user-error type, size strings, the cache folder, atomic writes."""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file, no network); the CLI prints it as one line."""


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Turn '10GB', '1.5GiB', '500KB' or '1234' into a number of bytes (KB=1000, KiB=1024)."""
    if isinstance(text, int):
        if text < 0:
            raise UserError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise UserError(
            f"bad size {text!r}: use a number with an optional unit "
            "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 500MB or 1.5GiB"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_size(n: float) -> str:
    """Bytes as a short human string in powers of 1000 ('1.23 GB')."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def cache_dir() -> Path:
    """Where downloaded corpora and tokenizer files are kept: $SCRATCHLLM_CACHE or ~/.cache/scratchllm."""
    root = os.environ.get("SCRATCHLLM_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "scratchllm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory entry is on disk; Windows cannot open folders.
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes so that readers see the old file or the whole new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (indented, UTF-8, trailing newline)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())
