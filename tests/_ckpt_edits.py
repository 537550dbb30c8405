"""Checkpoints edited after saving, with state.json's sizes and hashes made to match (a deliberate or
tool-made edit): each must be refused by name, never loaded."""

import hashlib
import json

import numpy as np
import torch

from scratchllm.run import checkpoint as ck


def rehash(folder):
    """Update state.json's sizes and hashes to the files as they are now (what an edit by a tool does)."""
    state = json.loads((folder / ck.STATE_FILE).read_text())
    for name in state["files"] if isinstance(state.get("files"), dict) else ():
        if not (folder / name).is_file():
            continue
        data = (folder / name).read_bytes()
        state["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / ck.STATE_FILE).write_text(json.dumps(state))


def _edit_state(**changes):
    def edit(folder):
        state = json.loads((folder / ck.STATE_FILE).read_text())
        for key, value in changes.items():
            if value is _DROP:
                del state[key]
            else:
                state[key] = value
        (folder / ck.STATE_FILE).write_text(json.dumps(state))
    return edit


_DROP = object()


class _RunsCode:
    """Unpickling this runs a shell command: what a weights-only load must refuse."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def _pickle_optimizer(folder):
    torch.save({"state": {}, "param_groups": [], "x": _RunsCode()}, folder / ck.OPTIM_FILE)


def _random_model(folder):
    (folder / ck.MODEL_FILE).write_bytes(np.random.default_rng(0).bytes(4096))


def _truncated_optimizer(folder):
    data = (folder / ck.OPTIM_FILE).read_bytes()
    (folder / ck.OPTIM_FILE).write_bytes(data[: len(data) // 2])


def _bad_rng(folder):
    state = json.loads((folder / ck.STATE_FILE).read_text())
    state["rng"]["python"][1] = state["rng"]["python"][1][:10]  # a Mersenne Twister needs 625 words
    (folder / ck.STATE_FILE).write_text(json.dumps(state))


EDITS = {
    "pickle in optimizer.pt": (_pickle_optimizer, "optimizer.pt is not a weights-only PyTorch file"),
    "random model.safetensors": (_random_model, "model.safetensors is not a safetensors file"),
    "truncated optimizer.pt": (_truncated_optimizer, "optimizer.pt is not a weights-only PyTorch file"),
    "no loader": (_edit_state(loader=_DROP), '"loader" must be'),
    "step abc": (_edit_state(step="abc"), '"step" must be'),
    "negative step": (_edit_state(step=-100), '"step" must be'),
    "bad rng": (_bad_rng, '"rng" is not a saved RNG state'),
    "files as a list": (_edit_state(files=["model.safetensors"]), '"files" must be'),
    "file outside the folder": (lambda folder: _list_file(folder, "../../config.toml"), '"files" entry'),
}


def _list_file(folder, name):
    state = json.loads((folder / ck.STATE_FILE).read_text())
    state["files"][name] = {"bytes": 1, "sha256": "0" * 64}
    (folder / ck.STATE_FILE).write_text(json.dumps(state))
