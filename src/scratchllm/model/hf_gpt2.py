"""Our GPT-2-shaped models as `transformers.GPT2LMHeadModel`, and back: configs and weights.

The parameter names are the same on both sides; the one real difference is that GPT-2's original
code stores its projections as `Conv1D` with weights (in, out), the transpose of `nn.Linear`'s
(out, in). transformers' GPT-2 has learned positions, LayerNorm and an MLP four times as wide with
any activation, so it also computes our fixed sinusoidal positions (as a position table that
happens to hold them), the ReLU² MLP and a model without biases (whose biases are zero). Which
of our options this class expresses is listed in `hf.py`; this module only maps names and tensors.
"""

from __future__ import annotations

import torch

from scratchllm.model.gpt import GPT, GPTConfig, sinusoidal_table
from scratchllm.util.errors import UserError

_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Our MLP activation -> transformers' name for it (GELU in its tanh form, as GPT-2's original code).
ACTIVATIONS = {"gelu": "gelu_new", "relu2": "relu2"}
_READ_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu2": "relu2"}


def gpt2_config(c: GPTConfig, special: int | None, extra: dict):
    """The `transformers.GPT2Config` of our config c; `extra` is stored in it as well."""
    import transformers

    return transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, n_inner=4 * c.n_embd, activation_function=ACTIVATIONS[c.mlp],
        layer_norm_epsilon=1e-5, resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
        tie_word_embeddings=c.tie_embeddings, bos_token_id=special, eos_token_id=special, **extra)


def gpt2_weights(model: GPT, names: list[str]) -> dict[str, torch.Tensor | None]:
    """transformers' tensors, by their names `names`, from our model's (None: a bias that is zero)."""
    c = model.config
    ours = model.state_dict()
    if c.pos == "sinusoidal":  # the fixed table, as the learned table transformers has
        ours["transformer.wpe.weight"] = model.sin_table.to(model.transformer.wte.weight.dtype)
    out = {}
    for name in names:
        if name in ("transformer.wte.weight", "lm_head.weight"):
            out[name] = ours[name][:c.vocab_size]  # the padding rows stay behind
        elif name in ours:
            out[name] = ours[name].t() if name.endswith(_TRANSPOSED) else ours[name]
        elif name.endswith(".bias"):  # a model without biases: GPT-2's are zero
            out[name] = None
        else:
            raise RuntimeError(f"no counterpart for transformers parameter {name}")
    return out


def gpt2_problems(hc) -> list[str]:
    """What in this GPT-2 config our model cannot compute."""
    problems = []
    if hc.activation_function not in _READ_ACTIVATIONS:
        problems.append(f"activation {hc.activation_function!r}")
    if hc.n_inner not in (None, 4 * hc.n_embd):
        problems.append(f"MLP width {hc.n_inner}")
    if not hc.scale_attn_weights or hc.scale_attn_by_inverse_layer_idx:
        problems.append("non-standard attention scaling")
    if abs(hc.layer_norm_epsilon - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon {hc.layer_norm_epsilon}")
    return problems


def config_from_gpt2(hc, theirs: dict[str, torch.Tensor], stored: dict) -> GPTConfig:
    """Our config for a GPT-2 config and its tensors; `stored` (what `to_hf` recorded) decides what
    transformers cannot tell apart, where the tensors agree: a sinusoidal table, biases all zero."""
    problems = gpt2_problems(hc)
    if problems:
        raise UserError(f"this GPT-2 variant does not convert: {', '.join(problems)}")
    wpe = theirs["transformer.wpe.weight"]
    sinusoidal = (stored.get("pos") == "sinusoidal" and hc.n_embd % 2 == 0
                  and torch.equal(wpe, sinusoidal_table(hc.n_positions, hc.n_embd).to(wpe.dtype)))
    biases = [t for n, t in theirs.items() if n.endswith(".bias")]
    no_bias = stored.get("bias") is False and not any(t.any() for t in biases)
    return GPTConfig(vocab_size=hc.vocab_size, block_size=hc.n_positions, n_layer=hc.n_layer,
                     n_head=hc.n_head, n_embd=hc.n_embd, dropout=hc.resid_pdrop,
                     mlp=_READ_ACTIVATIONS[hc.activation_function], bias=not no_bias,
                     pos="sinusoidal" if sinusoidal else "learned",
                     tie_embeddings=bool(getattr(hc, "tie_word_embeddings", True)))


def weights_from_gpt2(theirs: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Our tensors, by our parameter names `names`, from transformers' GPT-2 tensors."""
    out = {}
    for name in names:
        src = name
        if name == "lm_head.weight" and name not in theirs:  # a tied head saved once
            src = "transformer.wte.weight"
        out[name] = theirs[src].t() if name.endswith(_TRANSPOSED) else theirs[src]
    return out
