"""One writer a folder: a lock file held by the operating system for as long as its process lives."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scratchllm.util.errors import UserError, one_line

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
