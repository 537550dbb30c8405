"""What a run asks of the machine's memory, checked before anything is built.

A config that cannot fit in memory (`--set model.n_layer=1000000000`) would otherwise spend hours
building the model and then fail, or swap the machine to a halt. The estimate here is a lower bound
on what training needs, so a config it refuses cannot fit; one it accepts may still not (it leaves
out the allocator, the framework and much of the activations), and is left to try.
"""

from __future__ import annotations

from scratchllm.config import Config, GPTConfig
from scratchllm.util.errors import UserError
from scratchllm.util.sizes import format_size


def min_params(m: GPTConfig) -> int:
    """A lower bound on the parameters of a GPT of shape `m`: its blocks' matrices and its tables."""
    # Each block: Q, K, V and the output projection (4 d^2), an MLP of at least 8 d^2 (4x wide, or
    # SwiGLU's three matrices of at least 8/3 d).
    positions = m.block_size if m.pos == "learned" else 0
    tables = (1 if m.tie_embeddings else 2) * m.padded_vocab_size + positions
    return m.n_layer * 12 * m.n_embd**2 + tables * m.n_embd


def min_training_bytes(cfg: Config) -> int:
    """A lower bound on the memory one process needs to train `cfg`.

    Per parameter 12 bytes: float32 weights and gradients and at least one float32 optimizer moment
    (AdamW keeps two, Muon one). Per token of a micro-batch: the float32 logits the loss reads, and
    at least 16 bytes per layer and width for the activations kept for the backward pass.
    """
    m, t = cfg.model, cfg.train
    tokens = t.batch_size * m.block_size
    return 12 * min_params(m) + tokens * (4 * m.vocab_size + 16 * m.n_layer * m.n_embd)


def device_memory(device) -> tuple[int, str]:
    """(bytes, a name for them) of the memory training on `device` has: the GPU's, else RAM and swap."""
    if device.type == "cuda":
        import torch

        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"the {props.name}"
    import psutil

    return psutil.virtual_memory().total + psutil.swap_memory().total, "this machine's memory and swap"


def check_memory(cfg: Config, available: int, where: str) -> None:
    """UserError, in one line naming the settings, when training `cfg` cannot fit in `available` bytes."""
    need = min_training_bytes(cfg)
    if need <= available:
        return
    m, t = cfg.model, cfg.train
    raise UserError(f"this model cannot be trained here: it needs at least {format_size(need)} (weights, "
                    f"gradients and optimizer state of at least {min_params(m):,} parameters, and the "
                    f"activations of a micro-batch), more than the {format_size(available)} of {where} "
                    f"(model.n_layer={m.n_layer}, model.n_embd={m.n_embd}, model.vocab_size={m.vocab_size}, "
                    f"model.block_size={m.block_size}, train.batch_size={t.batch_size})")


def check_fits(cfg: Config, device) -> None:
    """UserError when training `cfg` on `device` cannot fit in its memory (see `check_memory`)."""
    check_memory(cfg, *device_memory(device))
