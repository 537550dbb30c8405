"""Our RoPE + RMSNorm models as transformers' NanoChat, Llama and Qwen3 classes, and back.

All three are pre-norm decoders with rotary positions, RMSNorm and separate q, k, v and o
projections (ours is one fused QKV matrix, split here). They differ where our options do:

- `NanoChatForCausalLM` (nanochat): an MLP without a gate (ReLU² or GELU), QK-norm, an RMS norm on
  the embedding, logit soft-capping, no biases in the MLP. Its norms have no gain, so ours is
  folded into the matrix each norm feeds (W·(g⊙x) = (W·diag g)·x, exact up to rounding); a tied
  head with a final gain other than 1 is written untied, since the gain cannot go into the shared
  embedding. It rotates each pair the other way (x₁cos + x₂sin): negating the second half of every
  query and key head turns its rotation into ours and leaves q·k and their RMS norms unchanged.
- `LlamaForCausalLM`: the SwiGLU MLP (gate and up projections), norms with a gain, biases optional.
- `Qwen3ForCausalLM`: Llama with QK-norm (its per-head norms get a gain of 1), no MLP biases.

Which of our options each class expresses is listed in `hf.py`; this module maps names and tensors.
"""

from __future__ import annotations

import torch

from scratchllm.model.gpt import GPT, RMS_EPS, GPTConfig
from scratchllm.util.errors import UserError

CLASSES = {"nanochat": "NanoChatForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_CONFIGS = {"nanochat": "NanoChatConfig", "llama": "LlamaConfig", "qwen3": "Qwen3Config"}
ROPE = {"rope_type": "default", "rope_theta": 10000.0}  # gpt.rope_tables' base
_ACT = {"relu2": "relu2", "gelu": "gelu_pytorch_tanh", "swiglu": "silu"}  # our MLP -> their hidden_act
_READ_ACT = {v: k for k, v in _ACT.items()}
_MLPS = {"nanochat": ("relu2", "gelu"), "llama": ("swiglu",), "qwen3": ("swiglu",)}  # what each class has


def folds_norms(kind: str) -> bool:
    """Whether the class's norms lack a gain, so that ours goes into the following matrices."""
    return kind == "nanochat"


def exports_tied(model: GPT, kind: str) -> bool:
    """Whether the export keeps the head tied to the embedding (see the module's note on NanoChat)."""
    if not model.config.tie_embeddings:
        return False
    return not folds_norms(kind) or bool((model.transformer.ln_f.weight == 1).all())


def modern_config(model: GPT, kind: str, special: int | None, extra: dict):
    """The transformers config of `kind` (nanochat, llama, qwen3) for our model."""
    import transformers

    c = model.config
    if not hasattr(transformers, _CONFIGS[kind]):
        raise UserError(f"this transformers ({transformers.__version__}) has no {CLASSES[kind]}: "
                        "pip install -U transformers")
    fields = dict(vocab_size=c.vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer,
                  num_attention_heads=c.n_head, num_key_value_heads=c.n_head,
                  intermediate_size=model.transformer.h[0].mlp.c_proj.in_features,
                  max_position_embeddings=c.block_size, hidden_act=_ACT[c.mlp], rms_norm_eps=RMS_EPS,
                  rope_parameters=dict(ROPE), attention_dropout=c.dropout, attention_bias=c.bias,
                  tie_word_embeddings=exports_tied(model, kind), bos_token_id=special, eos_token_id=special,
                  pad_token_id=None, **extra)
    if kind == "nanochat":
        fields["final_logit_softcapping"] = c.logit_softcap or None
    else:
        fields["head_dim"] = c.head_dim
    if kind == "llama":
        fields["mlp_bias"] = c.bias
    return getattr(transformers, _CONFIGS[kind])(**fields)


def rope_flip(c: GPTConfig) -> torch.Tensor:
    """+1 on the first half of each head's channels, -1 on the second (NanoChat's rotation is ours
    with the second half negated); its own inverse."""
    sign = torch.ones(c.n_head, 2, c.head_dim // 2)
    sign[:, 1] = -1
    return sign.reshape(c.n_embd)


def _scaled(w: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """w with its columns multiplied by gain, computed in float32."""
    return (w.float() * gain.float()).to(w.dtype)


def _rows(t: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return t * sign.to(t.dtype).view(-1, *([1] * (t.dim() - 1)))


def modern_weights(model: GPT, kind: str) -> dict[str, torch.Tensor]:
    """transformers' tensors of `kind`, by name, from our model's."""
    c, sd = model.config, model.state_dict()
    fold, V = folds_norms(kind), c.vocab_size
    flip = rope_flip(c) if kind == "nanochat" else torch.ones(c.n_embd)
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"][:V]}
    for i in range(c.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        g1, g2 = sd[ours + "ln_1.weight"], sd[ours + "ln_2.weight"]
        w = _scaled(sd[ours + "attn.c_attn.weight"], g1) if fold else sd[ours + "attn.c_attn.weight"]
        parts = {"weight": w.split(c.n_embd)}
        if c.bias:
            parts["bias"] = sd[ours + "attn.c_attn.bias"].split(c.n_embd)
        for kind_, (q, k, v) in parts.items():
            out.update({f"{theirs}self_attn.q_proj.{kind_}": _rows(q, flip),
                        f"{theirs}self_attn.k_proj.{kind_}": _rows(k, flip),
                        f"{theirs}self_attn.v_proj.{kind_}": v,
                        f"{theirs}self_attn.o_proj.{kind_}": sd[f"{ours}attn.c_proj.{kind_}"]})
        out.update(_mlp_out(sd, ours, theirs, kind, g2))
        if not fold:
            out[theirs + "input_layernorm.weight"] = g1
            out[theirs + "post_attention_layernorm.weight"] = g2
        if kind == "qwen3":
            out[theirs + "self_attn.q_norm.weight"] = g1.new_ones(c.head_dim)
            out[theirs + "self_attn.k_norm.weight"] = g1.new_ones(c.head_dim)
    head, gain = sd["lm_head.weight"][:V], sd["transformer.ln_f.weight"]
    out["lm_head.weight"] = _scaled(head, gain) if fold else head
    if not fold:
        out["model.norm.weight"] = gain
    return out


def _mlp_out(sd, ours: str, theirs: str, kind: str, gain: torch.Tensor) -> dict[str, torch.Tensor]:
    fc, proj = sd[ours + "mlp.c_fc.weight"], sd[ours + "mlp.c_proj.weight"]
    if kind == "nanochat":
        return {theirs + "mlp.fc1.weight": _scaled(fc, gain), theirs + "mlp.fc2.weight": proj}
    gate, up = fc.chunk(2)  # our SwiGLU computes silu(first half) * second half
    out = {theirs + "mlp.gate_proj.weight": gate, theirs + "mlp.up_proj.weight": up,
           theirs + "mlp.down_proj.weight": proj}
    if ours + "mlp.c_fc.bias" in sd:
        gate_b, up_b = sd[ours + "mlp.c_fc.bias"].chunk(2)
        out.update({theirs + "mlp.gate_proj.bias": gate_b, theirs + "mlp.up_proj.bias": up_b,
                    theirs + "mlp.down_proj.bias": sd[ours + "mlp.c_proj.bias"]})
    return out


def _rope_problem(hc) -> str | None:
    rope = getattr(hc, "rope_parameters", None) or {"rope_type": "default", "rope_theta": hc.rope_theta}
    if rope.get("rope_type", "default") != "default" or rope.get("rope_theta") != ROPE["rope_theta"]:
        return f"rotary positions {rope} (ours: base 10000, no scaling)"
    return None


def modern_problems(hc, kind: str, theirs: dict[str, torch.Tensor]) -> list[str]:
    """What in this transformers config (and tensors) of `kind` our model cannot compute."""
    heads = hc.num_attention_heads
    head_dim, width = getattr(hc, "head_dim", None) or hc.hidden_size // heads, hc.hidden_size
    kv_heads = hc.num_key_value_heads or heads
    qk_gains = [t for n, t in theirs.items() if n.endswith(("attn.q_norm.weight", "attn.k_norm.weight"))]
    checks = {  # problem -> whether this model has it
        f"{kv_heads} key-value heads for {heads} query heads": kv_heads != heads,
        f"head_dim {head_dim} x {heads} heads is not hidden_size {width}": head_dim * heads != width,
        f"rms_norm_eps {hc.rms_norm_eps} (ours: {RMS_EPS})": abs(hc.rms_norm_eps - RMS_EPS) > 1e-12,
        f"hidden_act {hc.hidden_act!r}": _READ_ACT.get(hc.hidden_act, "") not in _MLPS[kind],
        "biases in attention or the MLP only": kind == "llama" and hc.attention_bias != hc.mlp_bias,
        "attention biases without MLP biases": kind != "llama" and bool(hc.attention_bias),
        "sliding-window attention": bool(getattr(hc, "use_sliding_window", False)),
        "QK-norm gains other than 1": any(not (t == 1).all() for t in qk_gains),
    }
    return [p for p in [_rope_problem(hc)] if p] + [problem for problem, has in checks.items() if has]


def config_from_modern(hc, kind: str, theirs: dict[str, torch.Tensor]) -> GPTConfig:
    """Our config for a transformers config of `kind` (UserError naming what does not convert)."""
    problems = modern_problems(hc, kind, theirs)
    if problems:
        raise UserError(f"this {CLASSES[kind]} does not convert: {', '.join(problems)}")
    mlp = _READ_ACT[hc.hidden_act]
    return GPTConfig(vocab_size=hc.vocab_size, block_size=hc.max_position_embeddings,
                     n_layer=hc.num_hidden_layers, n_head=hc.num_attention_heads, n_embd=hc.hidden_size,
                     dropout=float(hc.attention_dropout or 0.0), bias=bool(hc.attention_bias), norm="rmsnorm",
                     pos="rope", mlp=mlp, qk_norm=kind != "llama", embed_norm=kind == "nanochat",
                     tie_embeddings=bool(hc.tie_word_embeddings),
                     logit_softcap=float(getattr(hc, "final_logit_softcapping", None) or 0.0))


def weights_from_modern(theirs: dict[str, torch.Tensor], c: GPTConfig, kind: str) -> dict[str, torch.Tensor]:
    """Our tensors, by name, from transformers' tensors of `kind`."""
    flip = rope_flip(c) if kind == "nanochat" else torch.ones(c.n_embd)
    fold = folds_norms(kind)
    wte = theirs["model.embed_tokens.weight"]
    ones = wte.new_ones(c.n_embd)
    out = {"transformer.wte.weight": wte, "lm_head.weight": theirs.get("lm_head.weight", wte),
           "transformer.ln_f.weight": ones if fold else theirs["model.norm.weight"]}
    for i in range(c.n_layer):
        ours, pre = f"transformer.h.{i}.", f"model.layers.{i}.self_attn."
        for kind_ in ("weight", "bias") if c.bias else ("weight",):
            q, k, v, o = (theirs[f"{pre}{x}_proj.{kind_}"] for x in "qkvo")
            out[f"{ours}attn.c_attn.{kind_}"] = torch.cat([_rows(q, flip), _rows(k, flip), v])
            out[f"{ours}attn.c_proj.{kind_}"] = o
        out.update(_mlp_in(theirs, ours, f"model.layers.{i}.mlp.", kind))
        for n, hf_name in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            out[f"{ours}{n}.weight"] = ones if fold else theirs[f"model.layers.{i}.{hf_name}.weight"]
    return out


def _mlp_in(theirs: dict[str, torch.Tensor], ours: str, pre: str, kind: str) -> dict[str, torch.Tensor]:
    if kind == "nanochat":
        return {ours + "mlp.c_fc.weight": theirs[pre + "fc1.weight"],
                ours + "mlp.c_proj.weight": theirs[pre + "fc2.weight"]}
    out = {}
    for kind_ in ("weight", "bias") if pre + "gate_proj.bias" in theirs else ("weight",):
        gate, up = theirs[f"{pre}gate_proj.{kind_}"], theirs[f"{pre}up_proj.{kind_}"]
        out[f"{ours}mlp.c_fc.{kind_}"] = torch.cat([gate, up])  # silu(first half) * second half
        out[f"{ours}mlp.c_proj.{kind_}"] = theirs[f"{pre}down_proj.{kind_}"]
    return out
