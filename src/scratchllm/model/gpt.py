"""The GPT model: embeddings, a stack of pre-norm transformer blocks, a head, and generation.

The default configuration is GPT-2 (Radford et al. 2019): learned positions, LayerNorm before
each sub-layer, a GELU MLP four times as wide, biases, and a head that shares its weight with the
token embedding. It converts exactly to `transformers.GPT2LMHeadModel` (see `hf.py`). Each
modern alternative is one config field: RMSNorm, sinusoidal or rotary positions (RoPE, Su et al.
2021), SwiGLU or ReLU² MLPs, QK-norm, untied head, and cheap wins of the speedruns (modded-nanogpt,
nanochat): an RMS norm on the embedding, zero-initialised output projections, tanh soft-capped
logits and U-net skips from the first half of the layers to the second. `hf.py` says which
`transformers` class computes each combination.

Attention is the fused form of `attention.MultiHeadAttention`: one QKV projection, heads as a
tensor dimension, `scaled_dot_product_attention` (flash attention on CUDA). The training path
has no data-dependent Python branches, so `torch.compile` sees one graph.

Each option is chosen once, when the model is built: the MLP is one of three classes, the
position scheme one of three methods, the embedding norm and QK-norm a module or the identity, the
U-net skips one of two loops; nothing branches on the config in a forward pass.

Generation (the KV cache, sampling, the decoding loop) lives beside the model in `generate.py`;
the model's part is `next_logits(ids, cache)`, the distribution of the token after `ids` given what
the cache holds.

`GPTConfig` is defined in `scratchllm.config`, beside the presets and the training settings, so that
reading a config needs no torch; it is importable from here as well.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.config import GPTConfig
from scratchllm.model import generate as generation
from scratchllm.model.generate import KVCache, LayerCache
from scratchllm.util.errors import UserError

RMS_EPS = 1e-6  # every RMS norm's epsilon (the blocks', QK-norm's and the embedding's), as nanochat's


def _norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=RMS_EPS)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """The fixed position encodings of Vaswani et al. (2017): sin on even, cos on odd channels."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(n_pos, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.float()


def rope_tables(n_pos: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles pos * base^(-2i/d), each (n_pos, head_dim/2).

    Computed in float32 in the same order as nanochat and transformers, so an exported model rotates
    by the very same angles (float64 would differ from them by up to 1e-4 radians at position 2048).
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.arange(n_pos, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + d/2]) of x (B, H, T, d) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class RMS(nn.Module):
    """RMS normalisation without a learned gain, over the last dimension (QK-norm, the embedding norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), eps=RMS_EPS)


class Attention(nn.Module):
    """Causal multi-head self-attention with fused QKV, optional QK-norm, RoPE and KV cache."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = config.n_head, config.head_dim, config.dropout
        # QK-norm bounds the attention logits, which lets training use higher learning rates.
        self.qk_norm = RMS() if config.qk_norm else nn.Identity()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, cache: LayerCache | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        q, k = self.qk_norm(q), self.qk_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        start = 0
        if cache is not None:
            start = cache.pos
            k, v = cache.update(k, v)
        dropout = self.dropout if self.training else 0.0
        if start == 0:  # the whole sequence so far is in this call: the usual causal mask
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif T == 1:  # one new query may look at every cached position
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:  # new queries at positions start.. see the cache and the new keys up to themselves
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network, 4x as wide: c_fc, an activation, c_proj. GPT-2's GELU (tanh
    form); subclasses change the activation (and the width)."""

    def __init__(self, config: GPTConfig, hidden: int | None = None, n_in: int | None = None):
        super().__init__()
        hidden = hidden or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, n_in or hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h, approximate="tanh")

    def forward(self, x):
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


class ReLU2MLP(MLP):
    """The speedruns' squared ReLU (So et al. 2021, Primer)."""

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        return F.relu(h).square()


class SwiGLU(MLP):
    """A gated MLP (Shazeer 2020): silu(gate) * value, both from one matmul; 2/3 of 4x wide, so it has
    the parameters of the 4x MLP."""

    def __init__(self, config: GPTConfig):
        hidden = (8 * config.n_embd // 3 + 63) // 64 * 64
        super().__init__(config, hidden, n_in=2 * hidden)

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        gate, value = h.chunk(2, dim=-1)
        return F.silu(gate) * value


MLPS: dict[str, type[MLP]] = {"gelu": MLP, "relu2": ReLU2MLP, "swiglu": SwiGLU}


class Block(nn.Module):
    """One transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = Attention(config)
        self.ln_2 = _norm(config)
        self.mlp = MLPS[config.mlp](config)

    def forward(self, x, rope=None, cache=None):
        x = x + self.attn(self.ln_1(x), rope, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A decoder-only transformer language model."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size == 0:
            raise UserError("model.vocab_size is 0 (\"the data's\"): give the model its vocabulary size")
        self.config = config
        V = config.padded_vocab_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=_norm(config),
        ))
        self._add_positions = {"learned": self._learned_positions, "sinusoidal": self._sinusoidal_positions,
                               "rope": self._rotary_positions}[config.pos]
        if config.pos == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos == "sinusoidal":  # not persistent: derived from the config, not learned
            self.register_buffer("sin_table", sinusoidal_table(config.block_size, config.n_embd),
                                 persistent=False)
        else:
            cos, sin = rope_tables(config.block_size, config.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        # Every token enters the first block at the same scale (nanochat's norm of the embedding).
        self.embed_norm = RMS() if config.embed_norm else nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, V, bias=False)
        if config.tie_embeddings:  # one Parameter, two names: state_dict and optimizers see it once
            self.lm_head.weight = self.transformer.wte.weight
        self._run_blocks = self._unet_blocks if config.unet_skips else self._blocks
        if config.unet_skips:  # one weight per skip, from layer i to layer n_layer - 1 - i
            self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2))
        self.apply(self._init_weights)
        # GPT-2: each residual branch's last projection is scaled so the residual stream's variance
        # does not grow with depth (two branches per layer). The speedruns start them at zero instead:
        # every block is then the identity at first and grows into its role.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
                if config.zero_init_proj:
                    nn.init.zeros_(p)
        if config.zero_init_proj and not config.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, exclude_positions: bool = False) -> int:
        """Number of parameters, a tied weight counted once; optionally without position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_positions and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token, 6N + 12·L·H·Q·T (PaLM, appendix B), at the full context length."""
        c = self.config
        attention = 12 * c.n_layer * c.n_head * c.head_dim * c.block_size  # QKᵀ and AV, not in N
        return 6 * self.num_params(exclude_positions=True) + attention

    def estimate_mfu(self, tokens_per_s: float, peak_flops: float) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s as a fraction of the hardware's peak."""
        return self.flops_per_token() * tokens_per_s / peak_flops

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter in exactly one group, in `named_parameters` order: "matrices" (the blocks'
        2-D weights), "embeddings" (token and position tables), "head" (an untied head), "vectors"
        (norm gains, biases, skip weights). Optimizers choose rates and decay by group."""
        groups: dict[str, list[nn.Parameter]] = {"matrices": [], "embeddings": [], "head": [], "vectors": []}
        for name, p in self.named_parameters():  # a tied head is the embedding: named once
            if name.startswith("transformer.h.") and p.ndim == 2:
                groups["matrices"].append(p)
            elif name in ("transformer.wte.weight", "transformer.wpe.weight"):
                groups["embeddings"].append(p)
            elif name == "lm_head.weight":
                groups["head"].append(p)
            elif p.ndim < 2:
                groups["vectors"].append(p)
            else:
                raise AssertionError(f"parameter {name} of shape {tuple(p.shape)} has no group")
        grouped = [id(p) for group in groups.values() for p in group]
        assert sorted(grouped) == sorted(map(id, self.parameters())), "a parameter is in no or two groups"
        return groups

    # --- the forward pass ----------------------------------------------------------------------------

    def _learned_positions(self, x: torch.Tensor, start: int):
        T = x.size(1)
        return x + self.transformer.wpe(torch.arange(start, start + T, device=x.device)), None

    def _sinusoidal_positions(self, x: torch.Tensor, start: int):
        return x + self.sin_table[start:start + x.size(1)].to(x.dtype), None

    def _rotary_positions(self, x: torch.Tensor, start: int):
        T = x.size(1)
        return x, (self.rope_cos[start:start + T], self.rope_sin[start:start + T])

    def _blocks(self, x: torch.Tensor, rope, cache: KVCache | None) -> torch.Tensor:
        for i, block in enumerate(self.transformer.h):
            x = block(x, rope, cache[i] if cache is not None else None)
        return x

    def _unet_blocks(self, x: torch.Tensor, rope, cache: KVCache | None) -> torch.Tensor:
        """The blocks, the second half also taking the outputs of the first, mirrored (modded-nanogpt)."""
        skips: list[torch.Tensor] = []
        n = self.config.n_layer
        for i, block in enumerate(self.transformer.h):
            if i >= n - n // 2:
                x = x + self.skip_weights[n - 1 - i] * skips.pop()
            x = block(x, rope, cache[i] if cache is not None else None)
            if i < n // 2:
                skips.append(x)
        return x

    def _hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final normalised hidden states (B, T, n_embd) for tokens idx (B, T), after what `cache` holds."""
        start = cache.pos if cache is not None else 0
        if start + idx.size(1) > self.config.block_size:
            raise ValueError(f"sequence of {start + idx.size(1)} tokens exceeds block_size "
                             f"{self.config.block_size}")
        x, rope = self._add_positions(self.transformer.wte(idx), start)
        x = self.transformer.drop(self.embed_norm(x))
        return self.transformer.ln_f(self._run_blocks(x, rope, cache))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        # The padded rows exist only to make the matmul a friendly size; cut them off here so they
        # can never be sampled or take probability mass in the loss.
        logits = self.lm_head(x)[..., :self.config.vocab_size]
        cap = self.config.logit_softcap
        if cap:  # smoothly bounds the logits to (-cap, cap), in float32 as the loss is
            logits = cap * torch.tanh(logits.float() / cap)
        return logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (B, T, vocab_size) for token ids idx (B, T); with targets also the mean cross-entropy."""
        logits = self._logits(self._hidden(idx))
        loss = None
        if targets is not None:  # computed in float32 even under bf16 autocast; -1 marks ignored targets
            targets = targets.reshape(-1)
            total = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets, ignore_index=-1,
                                    reduction="sum")
            # The mean over the targets kept: a batch with none (all padding) gives 0, not 0/0 = NaN.
            loss = total / (targets != -1).sum().clamp(min=1)
        return logits, loss

    def next_logits(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The float32 logits (B, vocab_size) of the token after idx (B, T); with a cache, idx comes after
        the positions it holds, and goes into it."""
        return self._logits(self._hidden(idx, cache)[:, -1, :]).float()

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True,
                 eot=None, generator=None, callback=None):
        """Continue idx (B, T) by max_new_tokens sampled tokens; see `generate.generate`."""
        return generation.generate(self, idx, max_new_tokens, temperature, top_k, top_p, use_cache, eot,
                                   generator, callback)
