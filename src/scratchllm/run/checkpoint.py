"""Checkpoints that are written atomically and loaded without running any code.

`RUN/ckpt/step_N/` holds `model.safetensors` (weights), `optimizer.pt` (every optimizer's state:
AdamW's moments, Muon's momentum; read back with `torch.load(weights_only=True)`) and `state.json`
(the step and the rest of the training state, each part's under its name, see
`scratchllm.train.state`; `rng`, the generators of the process that wrote it; the sizes and SHA-256
of the other two files). A checkpoint is built in a hidden temporary folder and renamed into place,
and `state.json` is written last, so a crash leaves either a whole checkpoint or none; a disk guard
refuses to start one that would not fit. A checkpoint is used only once `verify` passes: state.json
of the right shape, and each file that will be read (the model's alone for a reader of the weights,
every one to resume training) of the right size and hash, and loadable. One that fails is skipped
with a warning; on `--resume` the trainer renames newer broken ones `broken_step_N` and refuses when
none is usable.

Readers (`eval`, `generate`, `export`) take no lock, since a run holds its folder's lock for as long
as it trains: they rely on renames instead. A checkpoint folder appears by one rename when it is
whole, and leaves by one rename before it is deleted, so a reader sees each checkpoint whole or not
at all. A folder that vanishes while being read was pruned by the training run, which means a newer
checkpoint exists: the reader looks again.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from pathlib import Path

import torch

from scratchllm.data.loader import STATE_DEFAULTS as LOADER_DEFAULTS
from scratchllm.data.loader import STATE_KEYS as LOADER_KEYS
from scratchllm.runtime.rng import check_rng_state, rng_state
from scratchllm.util.disk import default_min_free, disk_free, guard_disk
from scratchllm.util.errors import UserError, one_line
from scratchllm.util.files import fsync_dir, sha256_file
from scratchllm.util.log import get_logger
from scratchllm.util.sizes import format_size

MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optimizer.pt", "state.json"

logger = get_logger(__name__)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# --- saving --------------------------------------------------------------------------------------


def _tensor_bytes(obj) -> dict[int, int]:
    """{storage address: bytes} of every tensor in nested dicts and lists (a shared storage once)."""
    if isinstance(obj, torch.Tensor):
        return {obj.untyped_storage().data_ptr(): obj.untyped_storage().nbytes()}
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return {k: v for item in items for k, v in _tensor_bytes(item).items()}


def checkpoint_bytes(model: torch.nn.Module, optimizer=None) -> int:
    """About the bytes a checkpoint of `model` and `optimizer` takes, a little more rather than less."""
    tensors = _tensor_bytes(model.state_dict())
    if optimizer is not None:
        tensors.update(_tensor_bytes(optimizer.state_dict()))
    # Headers and state.json (about 22 KB for each RNG state it holds, one a rank and the writer's): under 1%
    # and 64 KiB for one process, as measured.
    return int(sum(tensors.values()) * 1.01) + (1 << 16)


def _kept(ckpt_dir: Path) -> str:
    """What a failed save leaves to resume from, in words."""
    kept = list_checkpoints(ckpt_dir)
    return f"The newest checkpoint, {kept[-1].name}, is kept" if kept else "No checkpoint is saved yet"


def _write(tmp: Path, step: int, model: torch.nn.Module, optimizer, state: dict | None) -> None:
    """The files of a checkpoint, state.json last, each fsynced."""
    from safetensors.torch import save_model

    save_model(model, str(tmp / MODEL_FILE))  # handles tied (shared) weights
    files = [MODEL_FILE]
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / OPTIM_FILE)
        files.append(OPTIM_FILE)
    meta = {"step": step, **(state or {}), "rng": rng_state(),
            "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in files}}
    (tmp / STATE_FILE).write_text(json.dumps(meta), encoding="utf-8")
    for f in [*files, STATE_FILE]:
        _fsync(tmp / f)


def save_checkpoint(ckpt_dir: str | Path, step: int, model: torch.nn.Module, optimizer=None,
                    state: dict | None = None, min_free: int | None = None, free_space=None) -> Path:
    """Write `ckpt_dir/step_N` atomically; `state` is extra JSON (loader, scaler, metrics).

    UserError, with nothing written, when the checkpoint would leave less than `min_free` bytes on its
    disk (default: `default_min_free`'s margin for a write that must not fill it) as `free_space(folder)`
    counts them, or when writing fails for want of space or permission; the checkpoints already there
    stay as they were.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    free_space = free_space or disk_free
    need = checkpoint_bytes(model, optimizer)
    min_free = default_min_free(ckpt_dir, filling=False) if min_free is None else min_free
    guard_disk(ckpt_dir, need, min_free, f"checkpoint step_{step}", _kept(ckpt_dir), "continue with --resume",
               free_space)
    final = ckpt_dir / f"step_{step}"
    # Only one process saves into a run, so any temporary folder here was left by a killed save or
    # prune (its name holds that process's id, never ours again): remove them, or they pile up.
    for stale in ckpt_dir.glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = ckpt_dir / f".tmp_step_{step}_{os.getpid()}"
    tmp.mkdir()
    try:
        try:
            _write(tmp, step, model, optimizer, state)
        except Exception as e:
            why = _write_failure(e, free_space(ckpt_dir), need)
            raise UserError(f"writing checkpoint {final} failed: {why}. {_kept(ckpt_dir)}; make room "
                            "and continue with --resume") from e
        if final.exists():  # the same step saved again (e.g. at the end after a periodic save)
            _remove(final)
        os.replace(tmp, final)
        fsync_dir(ckpt_dir)  # the rename itself must reach the disk before the save counts as done
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_failure(e: Exception, free: int, need: int) -> str:
    """Why writing a checkpoint failed, in words; `e` itself again when it is no problem of the disk's.

    torch and safetensors report a full disk in types and words of their own, so a failure with the
    disk (all but) full counts as one; an OSError (a full disk, a read-only folder) always does.
    """
    if free < max(need, 1 << 20) or isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({format_size(free)} free)"
    if isinstance(e, OSError):
        return one_line(e)
    raise e


def _remove(path: Path) -> None:
    """Delete a checkpoint folder: first renamed out of sight, so no reader finds it half deleted."""
    gone = path.with_name(f".tmp_{path.name}_{os.getpid()}_removed")
    try:
        path.rename(gone)
    except OSError:  # Windows refuses while a reader has a file of it open: delete what can be
        gone = path
    shutil.rmtree(gone, ignore_errors=True)


# --- finding and checking ------------------------------------------------------------------------


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith("step_") or not path.is_dir():
        return None
    try:
        return int(name[5:])
    except ValueError:
        return None


def _numbered(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted((s, p) for p in ckpt_dir.iterdir() if (s := _step_of(p)) is not None)


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoint folders, oldest first (hidden temporary folders are not listed)."""
    return [p for _, p in _numbered(ckpt_dir)]


def _settled_list(ckpt_dir: Path) -> list[Path]:
    """`list_checkpoints`, read again while the folder changes under it.

    A folder listed while a name in it is renamed may show neither the old name nor the new one, so
    a listing counts only when the folder's modification time is the same after it as before.
    """
    while True:
        try:
            before = ckpt_dir.stat().st_mtime_ns
        except OSError:
            return []
        paths = list_checkpoints(ckpt_dir)
        if ckpt_dir.stat().st_mtime_ns == before:
            return paths


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_rng(state, field: str) -> None:
    try:
        check_rng_state(state)
    except ValueError as e:
        raise ValueError(f"{STATE_FILE}: {field} is {e}") from None


# What --resume needs of each part in state.json besides the optimizer file: the keys the part must hold
# (a TokenLoader's, less those added later with a default for older checkpoints). A run whose parts
# differ (fine-tuning's conversation loader) passes its own.
PRE_TRAINING_PARTS = {"loader": tuple(k for k in LOADER_KEYS if k not in LOADER_DEFAULTS)}

_SHA256 = re.compile(r"[0-9a-f]{64}")
_STEP_NAME = re.compile(r"step_\d+")
_OPTIONAL = {  # field: (test, what it must be); checked where present
    "scaler": (lambda v: isinstance(v, dict), "an object"),
    "best_val": (lambda v: v is None or _is_number(v), "a number or null"),
    "best_ckpt": (lambda v: v is None or isinstance(v, str) and _STEP_NAME.fullmatch(v), "a step_N name"),
    "dtype": (lambda v: v is None or isinstance(v, str), "a string"),
    "rng_ranks": (lambda v: isinstance(v, list) and len(v) > 0, "a list"),
}


def check_state(state, path: Path, training: bool = False, parts: dict | None = None) -> dict:
    """`state` if it has the shape of the state.json of checkpoint folder `path`, else ValueError naming the
    field; `training`: it must also hold what --resume needs (the optimizer file, and of each of `parts`,
    default PRE_TRAINING_PARTS, the keys it names)."""
    if not isinstance(state, dict):
        raise ValueError(f"{STATE_FILE} must hold a JSON object")
    step, folder_step = state.get("step"), _step_of(path)
    if not _is_count(step) or (folder_step is not None and step != folder_step):
        raise ValueError(f'{STATE_FILE}: "step" must be the folder\'s step, {folder_step}, not {step!r}')
    _check_files(state.get("files"))
    _check_rng(state.get("rng"), '"rng"')
    for key, (test, want) in _OPTIONAL.items():
        if key in state and not test(state[key]):
            raise ValueError(f'{STATE_FILE}: "{key}" must be {want}')
    for i, rng in enumerate(state.get("rng_ranks", [])):
        _check_rng(rng, f'"rng_ranks" entry {i}')
    if training:
        _check_resumable(state, PRE_TRAINING_PARTS if parts is None else parts)
    return state


def _check_files(files) -> None:
    """ValueError unless `files` maps the checkpoint's file names (the model's at least) to size and hash."""
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise ValueError(f'{STATE_FILE}: "files" must be an object that lists {MODEL_FILE}')
    for name, info in files.items():
        # Only names of our own files: a path in here would have the checks read files elsewhere.
        whole = (isinstance(info, dict) and _is_count(info.get("bytes"))
                 and _SHA256.fullmatch(str(info.get("sha256"))))
        if name not in (MODEL_FILE, OPTIM_FILE) or not whole:
            raise ValueError(f'{STATE_FILE}: "files" entry {name!r} must be one of the checkpoint\'s '
                             "files with its bytes and sha256")


def _check_resumable(state: dict, parts: dict) -> None:
    """ValueError unless the checkpoint also holds what training continues from: the optimizer file, and
    each part of `parts` with the keys it names, the first of them a count (a position)."""
    if OPTIM_FILE not in state["files"]:
        raise ValueError(f"holds no {OPTIM_FILE}: its model can be used, but training cannot go on from it")
    for name, keys in parts.items():
        part = state.get(name)
        if not (isinstance(part, dict) and set(keys) <= set(part) and _is_count(part[keys[0]])):
            raise ValueError(f'{STATE_FILE}: "{name}" must be the data loader\'s position '
                             f"({', '.join(keys)})")


def _check_loads(path: Path, name: str) -> None:
    """ValueError naming the file unless checkpoint file `name` opens as what it should be."""
    f = path / name
    try:
        if name == MODEL_FILE:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as weights:
                weights.keys()
        else:  # mapped, not read: only the structure is unpickled here, by the weights-only unpickler
            torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # any failure to open means the file cannot be used
        kind = "a safetensors file" if name == MODEL_FILE else "a weights-only PyTorch file"
        raise ValueError(f"{name} is not {kind} ({type(e).__name__})") from None


def verify(path: Path, training: bool = False, parts: dict | None = None) -> dict:
    """state.json of a checkpoint whose files match it and load; raises ValueError naming what is wrong.

    What is read is what is checked: the model file alone for a reader of the weights (eval, generate,
    export), every file and what --resume needs with `training`.
    """
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable {STATE_FILE}: {e}") from None
    check_state(state, path, training, parts)
    for name, info in state["files"].items():
        if training or name == MODEL_FILE:
            _check_file(path, name, info)
    # One process wrote only its own generators before every rank's were always kept: they are its.
    state.setdefault("rng_ranks", [state["rng"]])
    return state


def _check_file(path: Path, name: str, info: dict) -> None:
    """ValueError unless checkpoint file `name` has the size and hash of `info` and loads."""
    f = path / name
    try:
        size = f.stat().st_size
        if size != info["bytes"]:
            raise ValueError(f"{name} has {size} bytes, expected {info['bytes']}")
        if sha256_file(f) != info["sha256"]:
            raise ValueError(f"{name} does not match its SHA-256")
    except FileNotFoundError:
        raise ValueError(f"{name} is missing") from None
    except OSError as e:
        raise ValueError(f"{name} cannot be read: {one_line(e)}") from None
    _check_loads(path, name)


def find_checkpoint(ckpt_dir: str | Path, training: bool = False,
                    parts: dict | None = None) -> tuple[tuple[Path, dict] | None, list[str]]:
    """The newest checkpoint that passes `verify`, with its state (None if none does), and why each newer
    one failed ('FOLDER: reason'), newest first."""
    problems: list[str] = []
    broken: set[Path] = set()
    while candidates := [p for p in reversed(_settled_list(Path(ckpt_dir))) if p not in broken]:
        path = candidates[0]
        try:
            return (path, verify(path, training, parts)), problems
        except ValueError as e:
            if path.is_dir():
                broken.add(path)
                problems.append(f"{path}: {e}")
            # else it was pruned while being read: a newer one exists, so the folder is listed again
    return None, problems


def report_skipped(problems: list[str]) -> None:
    """Log a warning for each checkpoint passed over ('FOLDER: reason', as `find_checkpoint` gives them)."""
    for problem in problems:
        logger.warning(f"warning: skipping checkpoint {problem}")


def latest_checkpoint(ckpt_dir: str | Path, training: bool = False) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies, with its state; broken newer ones are logged as warnings."""
    found, problems = find_checkpoint(ckpt_dir, training)
    report_skipped(problems)
    return found


def resume_point(ckpt_dir: str | Path,
                 parts: dict | None = None) -> tuple[tuple[Path, dict] | None, str | None]:
    """For --resume: the newest checkpoint training can continue from, with newer unusable ones logged
    as warnings and set aside; or None and why the newest one is unusable (None if there is none)."""
    found, problems = find_checkpoint(ckpt_dir, training=True, parts=parts)
    if found is None:
        return None, problems[0] if problems else None
    report_skipped(problems)
    # Training will pass their steps again, and pruning must never keep them over the good checkpoints
    # it writes, so they are renamed, kept for a look.
    for moved in set_aside_newer(ckpt_dir, found[0]):
        logger.warning(f"note: moved the unusable {moved.name.removeprefix('broken_')} to {moved}")
    return found, None


def set_aside_newer(ckpt_dir: str | Path, kept: Path) -> list[Path]:
    """Rename checkpoints newer than `kept` to broken_step_N (kept for a look, never listed); return them."""
    moved, last_good = [], _step_of(Path(kept))
    for step, path in _numbered(ckpt_dir):
        if last_good is not None and step > last_good:
            target = path.with_name(f"broken_{path.name}")
            n = 1
            while target.exists():
                target, n = path.with_name(f"broken_{path.name}_{n}"), n + 1
            path.rename(target)
            moved.append(target)
    return moved


# --- loading -------------------------------------------------------------------------------------


def load_model_weights(model: torch.nn.Module, path: str | Path, device="cpu") -> None:
    """Load `model.safetensors` of a checkpoint folder into `model` (strict)."""
    from safetensors.torch import load_model

    file = Path(path) / MODEL_FILE
    try:
        missing, unexpected = load_model(model, str(file), strict=False, device=str(device))
    except Exception as e:  # a file that is no safetensors file, or tensors of other shapes
        raise UserError(f"{file}: cannot be loaded into the model: {one_line(e)[:200]}") from None
    if missing or unexpected:
        raise UserError(f"{path}: checkpoint does not fit the model (missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]})")


def load_optimizer(optimizer, path: str | Path) -> None:
    """Load `optimizer.pt` without unpickling arbitrary objects."""
    file = Path(path) / OPTIM_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state)
    except Exception as e:  # not a weights-only file, or the state of another optimizer
        raise UserError(f"{file}: not the state of this run's optimizer ({type(e).__name__})") from None


def prune(ckpt_dir: str | Path, keep_last: int, best: Path | None = None) -> None:
    """Delete all but the newest `keep_last` checkpoints and `best`."""
    paths = list_checkpoints(ckpt_dir)
    keep = set(paths[-keep_last:]) if keep_last > 0 else set()
    if best is not None:
        keep.add(Path(best))
    for p in paths:
        if p not in keep:
            _remove(p)
