"""Free space on a disk, and the one guard every large write (download, tokenize, checkpoint) runs
before it starts."""

from __future__ import annotations

import shutil
from pathlib import Path

from scratchllm.util.errors import UserError
from scratchllm.util.sizes import format_size


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


def default_min_free(path: str | Path, *, filling: bool) -> int:
    """Bytes a write leaves free on the disk of `path` unless told otherwise: 1 GB or 5% of the disk.

    `filling`: the larger of the two, for writes that fill a disk by design (a download, a tokenize:
    they stop cleanly and resume, so stopping early costs nothing, while the machine keeps room for
    everything else). Else the smaller, for a checkpoint: one write of known size, whose refusal stops
    a training run, so it only has to keep the disk from filling up.
    """
    one_gb, share = 10**9, int(0.05 * disk_total(path))
    return max(one_gb, share) if filling else min(one_gb, share)


def guard_disk(folder: str | Path, need: int, min_free: int, what: str, kept: str, then: str,
               free_space=disk_free) -> None:
    """UserError, naming what is kept and how to go on, when writing about `need` bytes of `what` into
    `folder` would leave less than `min_free` free on its disk, as `free_space(folder)` counts it."""
    free = free_space(folder)
    if free - need >= min_free:
        return
    raise UserError(f"disk guard: {format_size(free)} free on the disk of {folder}; {what} needs about "
                    f"{format_size(need)} and {format_size(min_free)} must stay free. {kept}. Free at least "
                    f"{format_size(need + min_free - free)} and {then}")
