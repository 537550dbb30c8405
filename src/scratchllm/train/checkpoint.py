"""Checkpoints that are written atomically and loaded without running any code.

`RUN/ckpt/step_N/` holds `model.safetensors` (weights), `optimizer.pt` (AdamW moments, read back with
`torch.load(weights_only=True)`) and `state.json` (step, RNG states, loader cursor, grad scaler,
sizes and SHA-256 of the other two files). A checkpoint is built in a hidden temporary folder and
renamed into place, and `state.json` is written last, so a crash leaves either a whole checkpoint or
none. A checkpoint whose files do not match `state.json` is skipped with a warning; on `--resume`
the trainer renames newer broken ones `broken_step_N` and refuses when none is usable.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from scratchllm.util import UserError, fsync_dir, sha256_file

MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optimizer.pt", "state.json"


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state() -> dict:
    """Every random number generator the training touches, as JSON-able values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        states = [_unb64(s) for s in state["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            warnings.warn(f"checkpoint saved {len(states)} CUDA RNG states, this machine has "
                          f"{torch.cuda.device_count()} GPUs: CUDA RNG not restored", stacklevel=2)


def save_checkpoint(ckpt_dir: str | Path, step: int, model: torch.nn.Module, optimizer=None,
                    state: dict | None = None) -> Path:
    """Write `ckpt_dir/step_N` atomically; `state` is extra JSON (loader, scaler, metrics)."""
    from safetensors.torch import save_model

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step}"
    # Only one process saves into a run, so any temporary folder here was left by a killed save
    # (its name holds that process's id, never ours again): remove them, or they pile up.
    for stale in ckpt_dir.glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = ckpt_dir / f".tmp_step_{step}_{os.getpid()}"
    tmp.mkdir()
    try:
        save_model(model, str(tmp / MODEL_FILE))  # handles tied (shared) weights
        files = [MODEL_FILE]
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIM_FILE)
            files.append(OPTIM_FILE)
        meta = {"step": step, **(state or {}), "rng": rng_state(),
                "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)}
                          for f in files}}
        (tmp / STATE_FILE).write_text(json.dumps(meta), encoding="utf-8")
        for f in [*files, STATE_FILE]:
            _fsync(tmp / f)
        if final.exists():  # the same step saved again (e.g. at the end after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(ckpt_dir)  # the rename itself must reach the disk before the save counts as done
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


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


def verify(path: Path) -> dict:
    """state.json of a checkpoint whose files all match it; raises ValueError naming what is wrong."""
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable {STATE_FILE}: {e}") from None
    if not isinstance(state, dict) or "files" not in state or MODEL_FILE not in state["files"]:
        raise ValueError(f"{STATE_FILE} lists no model file")
    for name, info in state["files"].items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{name} is missing")
        if f.stat().st_size != info["bytes"]:
            raise ValueError(f"{name} has {f.stat().st_size} bytes, expected {info['bytes']}")
        if sha256_file(f) != info["sha256"]:
            raise ValueError(f"{name} does not match its SHA-256")
    return state


def latest_checkpoint(ckpt_dir: str | Path, warn=print) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies, with its state; broken newer ones are reported via `warn`."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, verify(path)
        except ValueError as e:
            warn(f"warning: skipping checkpoint {path}: {e}")
    return None


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


def load_model_weights(model: torch.nn.Module, path: str | Path, device="cpu") -> None:
    """Load `model.safetensors` of a checkpoint folder into `model` (strict)."""
    from safetensors.torch import load_model

    missing, unexpected = load_model(model, str(Path(path) / MODEL_FILE), strict=False, device=str(device))
    if missing or unexpected:
        raise UserError(f"{path}: checkpoint does not fit the model (missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]})")


def load_optimizer(optimizer, path: str | Path) -> None:
    """Load `optimizer.pt` without unpickling arbitrary objects."""
    state = torch.load(Path(path) / OPTIM_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state)


def prune(ckpt_dir: str | Path, keep_last: int, best: Path | None = None) -> None:
    """Delete all but the newest `keep_last` checkpoints and `best`."""
    paths = list_checkpoints(ckpt_dir)
    keep = set(paths[-keep_last:]) if keep_last > 0 else set()
    if best is not None:
        keep.add(Path(best))
    for p in paths:
        if p not in keep:
            shutil.rmtree(p, ignore_errors=True)


def load_run(run: str | Path, device="cpu", warn=print):
    """(config, model in eval mode, checkpoint folder) of a run's newest valid checkpoint."""
    from scratchllm.config import load_run_config
    from scratchllm.model.gpt import GPT

    run = Path(run)
    if not (run / "config.toml").is_file():
        raise UserError(f"{run}: not a run folder (no config.toml; train one with `scratchllm train`)")
    cfg = load_run_config(run / "config.toml")
    found = latest_checkpoint(run / "ckpt", warn=warn)
    if found is None:
        raise UserError(f"{run}: no valid checkpoint in {run / 'ckpt'}")
    model = GPT(cfg.model)
    load_model_weights(model, found[0])
    return cfg, model.to(device).eval(), found[0]


def run_tokenizer(run: str | Path, cfg):
    """The tokenizer a run was trained with: its own copy, else the one of its token folder."""
    from scratchllm.data.tokenize import load_tokenizer_for_data
    from scratchllm.tokenizer import Tokenizer

    own = Path(run) / "tokenizer"
    if (own / "tokenizer.json").is_file():
        return Tokenizer.load(own)
    if not cfg.train.data:
        raise UserError(f"{run}: no tokenizer saved with the run and no token folder recorded")
    return load_tokenizer_for_data(cfg.train.data)
