"""The number format training computes in: the fastest one the device really supports.

`train.dtype = "auto"` picks per device, by capability rather than by name:
- CUDA: bfloat16 where the GPU has bf16 tensor cores (Ampere and newer), else float16 with a grad
  scaler on GPUs with fp16 tensor cores (Volta, Turing), else float32.
- CPU: bfloat16 only where the CPU has bf16 instructions (AVX-512 BF16 or AMX on x86, the BF16
  extension on Arm) and PyTorch's oneDNN path uses them. Elsewhere PyTorch runs bf16 matrix
  products through its reference GEMM, about 12x slower than float32, so float32 it is.
- Apple MPS and anything else: float32 (bf16 on MPS was not measured to be faster).

An explicit choice is kept, with a one-line warning where it is the slow path. `Precision` carries
the choice and its reason, so that a run can print it once and record it beside its checkpoints.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """The dtype a run computes in (never "auto"), why it was chosen, and a warning if any."""

    dtype: str
    reason: str
    warning: str | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of `dtype`."""
        return getattr(torch, self.dtype)

    @property
    def iteration_dtype(self) -> torch.dtype:
        """The dtype of internal products that tolerate rounding (Muon's Newton-Schulz iteration): bf16 in
        a bf16 run, float32 otherwise, so a float32 run is float32 throughout and a CPU without bf16
        instructions never meets their slow path."""
        return torch.bfloat16 if self.dtype == "bfloat16" else torch.float32

    @property
    def uses_scaler(self) -> bool:
        """float16 needs loss scaling; the other formats have float32's exponent range."""
        return self.dtype == "float16"


def cpu_has_fast_bf16() -> bool:
    """Whether bf16 matrix products on this CPU run on bf16 instructions rather than a slow fallback."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # oneDNN would not be used for bf16 at all
        return False
    if platform.machine().lower() in ("arm64", "aarch64"):
        return True  # oneDNN reports bf16 support on Arm only when the CPU has the BF16 extension
    # On x86 oneDNN also accepts plain AVX-512 and emulates bf16 there, which is not faster than float32.
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def _auto(device: torch.device) -> Precision:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision("bfloat16", f"{name} has bf16 tensor cores")
        if torch.cuda.get_device_capability(device) >= (7, 0):
            return Precision("float16", f"{name} has fp16 but no bf16 tensor cores (loss scaling on)")
        return Precision("float32", f"{name} has no fp16 or bf16 tensor cores")
    if device.type == "cpu":
        if cpu_has_fast_bf16():
            return Precision("bfloat16", "this CPU has bf16 instructions (AVX-512 BF16, AMX or Arm BF16)")
        return Precision("float32", "this CPU has no bf16 instructions: bf16 matrix products would fall "
                                    "back to a reference GEMM many times slower than float32")
    return Precision("float32", f"no faster format measured on {device.type}")


def resolve(dtype: str, device: torch.device) -> Precision:
    """The Precision for a `train.dtype` setting on `device` ("auto" chooses; others are kept)."""
    if dtype == "auto":
        return _auto(device)
    warning = None
    if dtype == "bfloat16" and device.type == "cpu" and not cpu_has_fast_bf16():
        warning = ("warning: train.dtype=bfloat16 on a CPU without bf16 instructions runs many times slower "
                   "than float32 here (train.dtype=auto picks float32)")
    return Precision(dtype, "set by train.dtype", warning)


def autocast(device: torch.device, dtype: str):
    """Mixed-precision context for the forward pass (a no-op in float32)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))
