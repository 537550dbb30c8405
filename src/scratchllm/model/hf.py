"""Conversion between our GPT and `transformers` classes, in both directions, exactly.

Each combination of our options that a transformers class computes exports to it:

| our options | transformers class |
|---|---|
| pos learned or sinusoidal, norm layernorm, mlp gelu or relu2 | `GPT2LMHeadModel` |
| pos rope, norm rmsnorm, mlp relu2 or gelu, qk_norm, embed_norm, no biases | `NanoChatForCausalLM` |
| pos rope, norm rmsnorm, mlp swiglu | `LlamaForCausalLM` |
| pos rope, norm rmsnorm, mlp swiglu, qk_norm, no biases | `Qwen3ForCausalLM` |

`EXPRESSES` holds the table; anything else (U-net skips, which no class has, or a mix such as RoPE
with LayerNorm) is refused in one line naming the options the nearest class lacks. The options a
row does not name (dropout, tie_embeddings, pad_vocab_multiple, zero_init_proj, and bias where the
row allows biases) convert whatever their value. A padded vocabulary is cut back to `vocab_size`
rows on export. `hf_gpt2.py` and `hf_modern.py` map the names and tensors; this module builds the
models and carries our config along (`config.json`'s "scratchllm" entry), so that `from_hf` reads
back what `to_hf` writes with the options transformers cannot tell apart (sinusoidal positions in
GPT-2's learned table, a GPT-2 without biases, the vocabulary padding) as they were.

`scratchllm.run.export` writes a run folder's model this way (the `scratchllm export` command).
"""

from __future__ import annotations

import dataclasses

import torch

from scratchllm.model.gpt import GPT, GPTConfig, rope_tables, sinusoidal_table
from scratchllm.model.hf_gpt2 import config_from_gpt2, gpt2_config, gpt2_weights, weights_from_gpt2
from scratchllm.model.hf_modern import (
    CLASSES,
    config_from_modern,
    modern_config,
    modern_weights,
    weights_from_modern,
)
from scratchllm.util.errors import UserError


def require_transformers():
    """The `transformers` module, or a UserError saying how to install it (it is an optional extra)."""
    try:
        import transformers
    except ModuleNotFoundError:
        raise UserError("this needs the transformers package: pip install 'scratchllm[hf]'") from None
    return transformers


_ROPE_RMS = {"pos": ("rope",), "norm": ("rmsnorm",)}
# transformers model_type -> the values of our options its class computes (options not named convert
# whatever their value). No class has U-net skips.
EXPRESSES: dict[str, dict[str, tuple]] = {
    "gpt2": {"pos": ("learned", "sinusoidal"), "norm": ("layernorm",), "mlp": ("gelu", "relu2"),
             "qk_norm": (False,), "embed_norm": (False,), "logit_softcap": (0.0,), "unet_skips": (False,)},
    "nanochat": {**_ROPE_RMS, "mlp": ("relu2", "gelu"), "qk_norm": (True,), "embed_norm": (True,),
                 "bias": (False,), "unet_skips": (False,)},
    "llama": {**_ROPE_RMS, "mlp": ("swiglu",), "qk_norm": (False,), "embed_norm": (False,),
              "logit_softcap": (0.0,), "unet_skips": (False,)},
    "qwen3": {**_ROPE_RMS, "mlp": ("swiglu",), "qk_norm": (True,), "embed_norm": (False,),
              "logit_softcap": (0.0,), "bias": (False,), "unet_skips": (False,)},
}
CLASS_NAMES = {"gpt2": "GPT2LMHeadModel", **CLASSES}


def hf_architecture(config: GPTConfig) -> str:
    """The model_type of the transformers class that computes `config` (gpt2, nanochat, llama or qwen3);
    a one-line UserError naming the options the nearest class lacks when none does."""
    def lacks(kind: str) -> dict[str, tuple]:
        return {k: v for k, v in EXPRESSES[kind].items() if getattr(config, k) not in v}

    kind = min(EXPRESSES, key=lambda k: len(lacks(k)))
    wrong = lacks(kind)
    if wrong:
        need = ", ".join(f"{k}={' or '.join(map(repr, v))}" for k, v in wrong.items())
        has = ", ".join(f"{k}={getattr(config, k)!r}" for k in wrong)
        raise UserError(f"no transformers class computes this model: the nearest, {CLASS_NAMES[kind]}, needs "
                        f"{need} (this model has {has})")
    return kind


def to_hf(model: GPT, eos_token_id: int | None = None):
    """The transformers model (GPT-2, NanoChat, Llama or Qwen3) computing the same logits as model,
    which is left unchanged; eos_token_id becomes its end (and start) of text."""
    transformers = require_transformers()
    c = model.config
    kind = hf_architecture(c)
    special = eos_token_id if eos_token_id is not None else (50256 if c.vocab_size == 50257 else None)
    extra = {"scratchllm": dataclasses.asdict(c)}
    if kind == "gpt2":
        hf = transformers.GPT2LMHeadModel(gpt2_config(c, special, extra))
        names = [n for n, _ in hf.named_parameters(remove_duplicate=False)]
        weights = gpt2_weights(model, names)
    else:
        hf = getattr(transformers, CLASS_NAMES[kind])(modern_config(model, kind, special, extra))
        weights = modern_weights(model, kind)
    _fill(hf, weights)
    first = next(model.parameters())
    return hf.to(device=first.device, dtype=first.dtype).eval()


def _fill(hf, weights: dict) -> None:
    """Copy weights (name -> tensor, or None for a zero bias) into every parameter of hf."""
    with torch.no_grad():
        for name, p in hf.named_parameters(remove_duplicate=False):
            if name not in weights:
                raise RuntimeError(f"no counterpart for transformers parameter {name}")
            if weights[name] is None:
                p.zero_()
            else:
                p.copy_(weights[name])
    if hf.config.tie_word_embeddings:
        hf.tie_weights()


def from_hf(hf_model, pad_vocab_multiple: int | None = None) -> GPT:
    """Our GPT (in eval mode) with the weights and shape of a transformers model that `to_hf` makes
    (GPT2LMHeadModel, NanoChatForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM); the vocabulary is
    padded as `to_hf` recorded, or to pad_vocab_multiple when given."""
    hc = hf_model.config
    kind = getattr(hc, "model_type", None)
    if kind not in EXPRESSES:
        kind = kind or type(hf_model).__name__
        raise UserError(f"from_hf reads {', '.join(CLASS_NAMES.values())}, not {kind!r}")
    if not hasattr(hf_model, "lm_head"):  # GPT2Model, LlamaModel, ...: the body without its head
        raise UserError(f"from_hf needs a {CLASS_NAMES[kind]} (with its head), not {type(hf_model).__name__}")
    theirs = {n: p.detach() for n, p in hf_model.named_parameters(remove_duplicate=False)}
    stored = getattr(hc, "scratchllm", None)
    stored = stored if isinstance(stored, dict) else {}
    if kind == "gpt2":
        config = config_from_gpt2(hc, theirs, stored)
    else:
        config = config_from_modern(hc, kind, theirs)
    pad = pad_vocab_multiple if pad_vocab_multiple is not None else stored.get("pad_vocab_multiple", 1)
    config = dataclasses.replace(config, pad_vocab_multiple=pad if isinstance(pad, int) and pad > 0 else 1,
                                 zero_init_proj=stored.get("zero_init_proj") is True)
    first = next(hf_model.parameters())
    model = _empty(config, first.device)
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    ours = weights_from_gpt2(theirs, names) if kind == "gpt2" else weights_from_modern(theirs, config, kind)
    _load(model, ours, CLASS_NAMES[kind])
    return model.to(first.dtype).eval()  # as to_hf: same dtype, dropout off until training asks


def _load(model: GPT, ours: dict[str, torch.Tensor], source: str) -> None:
    """Copy ours (name -> tensor) into every parameter of model, padding the vocabulary with zero rows."""
    vocab = model.config.vocab_size
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=False):
            src = ours[name]
            if src.shape[1:] != p.shape[1:] or src.shape[0] not in (p.shape[0], vocab):
                raise UserError(f"{source}'s tensor for {name} has shape {tuple(src.shape)}, ours "
                                f"{tuple(p.shape)}")
            if name in ("transformer.wte.weight", "lm_head.weight"):
                p[:vocab].copy_(src)
                p[vocab:].zero_()  # padding rows: never read by the logits we return
            else:
                p.copy_(src)


def _empty(config: GPTConfig, device) -> GPT:
    """Our GPT with uninitialised weights (they are all overwritten next) and its fixed tables."""
    with torch.device("meta"):  # skip the random initialisation
        model = GPT(config)
    model.to_empty(device=device)
    if config.tie_embeddings:  # to_empty gives each name its own new tensor: tie them again
        model.lm_head.weight = model.transformer.wte.weight
    with torch.no_grad():  # the buffers are computed, not loaded: compute them again
        if config.pos == "rope":
            cos, sin = rope_tables(config.block_size, config.head_dim)
            model.rope_cos.copy_(cos)
            model.rope_sin.copy_(sin)
        elif config.pos == "sinusoidal":
            model.sin_table.copy_(sinusoidal_table(config.block_size, config.n_embd))
    return model
