"""Every random number generator training touches (Python's, NumPy's, torch's, CUDA's), captured as
JSON-able values for a checkpoint, checked and restored, so a resumed run draws what the
uninterrupted one would have."""

from __future__ import annotations

import base64
import random

import numpy as np
import torch

from scratchllm.util.log import get_logger

logger = get_logger(__name__)


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s, validate=True), dtype=np.uint8).copy())


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


def _rng_parts(state: dict) -> tuple[tuple, tuple, torch.Tensor, list[torch.Tensor]]:
    """The states of Python, NumPy, torch and CUDA in the form each library takes them."""
    version, internal, gauss = state["python"]
    kind, keys, pos, has_gauss, cached = state["numpy"]
    numpy = (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)
    cuda = [_unb64(s) for s in state["cuda"]]
    return (version, tuple(internal), gauss), numpy, _unb64(state["torch"]), cuda


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` captured."""
    python, numpy, cpu, cuda = _rng_parts(state)
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(f"warning: the checkpoint saved {len(cuda)} CUDA RNG states, this machine has "
                           f"{torch.cuda.device_count()} GPUs: CUDA RNG not restored")


def check_rng_state(state) -> None:
    """ValueError unless `state` is what `rng_state()` returns (tried on generators of their own)."""
    try:
        python, numpy, cpu, cuda = _rng_parts(state)
        random.Random().setstate(python)
        np.random.RandomState().set_state(numpy)
        torch.Generator().set_state(cpu)
        if torch.cuda.is_available():  # elsewhere CUDA states are kept, never set
            for t in cuda:
                torch.Generator(device="cuda").set_state(t)
    except Exception as e:  # whatever a library says of a malformed state: it is not one
        raise ValueError(f"not a saved RNG state ({type(e).__name__})") from None
