"""Conversion between our GPT and `transformers.GPT2LMHeadModel`, in both directions, exactly.

The parameter names are the same on both sides; the one real difference is that GPT-2's
original code stores its projections as `Conv1D` with weights (in, out), the transpose of
`nn.Linear`'s (out, in). A padded vocabulary is cut back to `vocab_size` rows on export, and padded
again on import when `from_hf(..., pad_vocab_multiple=N)` asks for it. Only the GPT-2 architecture
converts: learned positions, LayerNorm, GELU (tanh) MLP, no QK-norm. A model without biases
converts too (with zero biases), but not back.
"""

from __future__ import annotations

import torch

from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.util.errors import UserError

_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def require_transformers():
    """The `transformers` module, or a UserError saying how to install it (it is an optional extra)."""
    try:
        import transformers
    except ModuleNotFoundError:
        raise UserError("this needs the transformers package: pip install 'scratchllm[hf]'") from None
    return transformers


# transformers' GPT-2 has no counterpart for any other value of these (zero_init_proj, a way to
# initialise, converts whatever its value).
GPT2_ARCHITECTURE = {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": False,
                     "logit_softcap": 0.0, "unet_skips": False}


def _check_gpt2(config: GPTConfig) -> None:
    wrong = [f"{k}={getattr(config, k)!r}" for k, v in GPT2_ARCHITECTURE.items() if getattr(config, k) != v]
    if wrong:
        need = ", ".join(f"{k}={v!r}" for k, v in GPT2_ARCHITECTURE.items())
        raise UserError(f"only the GPT-2 architecture converts to transformers ({need}); this model has "
                        f"{', '.join(wrong)}")


def to_hf(model: GPT, eos_token_id: int | None = None):
    """A `transformers.GPT2LMHeadModel` computing the same logits as model (which is left unchanged)."""
    transformers = require_transformers()
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel

    c = model.config
    _check_gpt2(c)
    special = eos_token_id if eos_token_id is not None else (50256 if c.vocab_size == 50257 else None)
    hf_config = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, n_inner=4 * c.n_embd, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
        tie_word_embeddings=c.tie_embeddings, bos_token_id=special, eos_token_id=special,
    )
    hf = GPT2LMHeadModel(hf_config)
    ours = model.state_dict()
    with torch.no_grad():
        for name, p in hf.named_parameters(remove_duplicate=False):
            if name in ours:
                src = ours[name].t() if name.endswith(_TRANSPOSED) else ours[name]
                p.copy_(src[:c.vocab_size] if name in ("transformer.wte.weight", "lm_head.weight") else src)
            elif name.endswith(".bias"):  # a model without biases: GPT-2's are zero
                p.zero_()
            else:
                raise RuntimeError(f"no counterpart for transformers parameter {name}")
    if c.tie_embeddings:
        hf.tie_weights()
    first = next(model.parameters())
    return hf.to(device=first.device, dtype=first.dtype).eval()


def from_hf(hf_model, pad_vocab_multiple: int = 1) -> GPT:
    """Our GPT (in eval mode) with the weights and shape of a `transformers.GPT2LMHeadModel`."""
    hc = hf_model.config
    if getattr(hc, "model_type", None) != "gpt2":
        kind = getattr(hc, "model_type", type(hf_model).__name__)
        raise UserError(f"from_hf reads GPT-2 models, not {kind!r}")
    if not hasattr(hf_model, "lm_head"):  # GPT2Model is GPT-2 without its head
        raise UserError(f"from_hf needs a GPT2LMHeadModel (with its head), not {type(hf_model).__name__}")
    problems = []
    if hc.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation {hc.activation_function!r}")
    if hc.n_inner not in (None, 4 * hc.n_embd):
        problems.append(f"MLP width {hc.n_inner}")
    if not hc.scale_attn_weights or hc.scale_attn_by_inverse_layer_idx:
        problems.append("non-standard attention scaling")
    if abs(hc.layer_norm_epsilon - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon {hc.layer_norm_epsilon}")
    if problems:
        raise UserError(f"this GPT-2 variant does not convert: {', '.join(problems)}")
    config = GPTConfig(vocab_size=hc.vocab_size, block_size=hc.n_positions, n_layer=hc.n_layer,
                       n_head=hc.n_head, n_embd=hc.n_embd, dropout=hc.resid_pdrop,
                       tie_embeddings=bool(getattr(hc, "tie_word_embeddings", True)),
                       pad_vocab_multiple=pad_vocab_multiple)
    first = next(hf_model.parameters())
    device = first.device
    with torch.device("meta"):  # every weight is overwritten below: skip the random initialisation
        model = GPT(config)
    model.to_empty(device=device)  # GPT-2 has no buffers, so nothing is left uninitialised
    if config.tie_embeddings:  # to_empty gives each name its own new tensor: tie them again
        model.lm_head.weight = model.transformer.wte.weight
    theirs = hf_model.state_dict()
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=False):
            if name == "lm_head.weight" and name not in theirs:  # a tied head saved once
                name = "transformer.wte.weight"
            src = theirs[name].t() if name.endswith(_TRANSPOSED) else theirs[name]
            if name in ("transformer.wte.weight", "lm_head.weight"):
                p[:config.vocab_size].copy_(src)
                p[config.vocab_size:].zero_()  # padding rows: never read by the logits we return
            else:
                p.copy_(src)
    return model.to(first.dtype).eval()  # as to_hf: same dtype, dropout off until training asks
