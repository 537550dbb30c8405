"""One-token decoding on the CPU: spread each matrix-vector product over all cores.

With a KV cache, every decoding step multiplies a single row (the newest position) by every weight
matrix of the model. A one-row product does two flops per weight it reads, so its speed is the
memory bandwidth it can draw. PyTorch's CPU build gives a one-row `F.linear` to the BLAS
matrix-vector routine (gemv), and with MKL that routine reads the weights from one core only:
about 13 GB/s on the AMD EPYC behind the README's figures, however many threads PyTorch has.

`split_linear` computes the same product as `F.linear` for one row, but cuts the weight's output
rows into one block per thread and multiplies the blocks as a batch with `torch.bmm`, which PyTorch
runs one block per core. Each output is still one dot product of a weight row with the input, so
the results are `F.linear`'s up to the order of float additions; only which core reads which rows
changes. On those 2 cores cached decoding of gpt2-124m gets 1.6-1.7x faster (`benchmarks/generate.py`).

`SplitRowProducts` applies it inside generation (generate.py) without touching the model's code: while the
mode is active, every `F.linear` on a single row goes through `split_linear`, everything else (the
prompt, training, other devices) runs untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, parts: int
                 ) -> torch.Tensor:
    """F.linear(x, weight, bias) for x holding one row, with the weight read in `parts` row blocks at once."""
    rows, inner = weight.shape
    per_part = rows // parts
    whole = per_part * parts
    # (parts, 1, inner) @ (parts, inner, per_part): block p computes outputs p*per_part .. (p+1)*per_part.
    blocks = weight[:whole].view(parts, per_part, inner).transpose(1, 2)
    y = torch.bmm(x.reshape(1, 1, inner).expand(parts, 1, inner), blocks).reshape(whole)
    if whole < rows:  # the few rows left over when parts does not divide the row count
        y = torch.cat([y, F.linear(x.reshape(inner), weight[whole:])])
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], rows)


# A small matrix is read in microseconds from the caches; splitting it only adds the batch's overhead
# (a 256 x 256 product: 15 us split, 7 us whole).
MIN_SPLIT_WEIGHTS = 1 << 17


class SplitRowProducts(TorchFunctionMode):
    """While active, route one-row `F.linear` calls on the CPU through `split_linear`."""

    def __init__(self, parts: int | None = None):
        super().__init__()
        self.parts = parts or torch.get_num_threads()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and self.parts > 1 and len(args) >= 2:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if (x.device.type == "cpu" and x.numel() == x.size(-1) and weight.numel() >= MIN_SPLIT_WEIGHTS
                    and weight.size(0) >= 4 * self.parts
                    and x.dtype == weight.dtype and not torch.is_grad_enabled()
                    and not torch.is_autocast_enabled("cpu")):
                return split_linear(x, weight, bias, self.parts)
        return func(*args, **kwargs)
