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

Generation keeps a KV cache: past keys and values are stored so each new token costs one
position, not the whole context. Past the context length the window slides; since every
position embedding (and, through the layers, every hidden state) depends on where the window
starts, the cache is rebuilt from the cropped window, which keeps the output identical to
generation without a cache.

`GPTConfig` is defined in `scratchllm.config`, beside the presets and the training settings, so that
reading a config needs no torch; it is importable from here as well.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.config import GPTConfig
from scratchllm.model.decode import SplitRowProducts
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


class LayerCache:
    """Keys and values one attention layer has seen, preallocated for the whole context."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.k = self.v = None
        self.pos = 0  # positions filled so far

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, t, d) at the next t positions; return all keys and values so far."""
        if self.k is None:
            B, H, _, D = k.shape
            self.k = k.new_empty(B, H, self.block_size, D)
            self.v = v.new_empty(B, H, self.block_size, D)
        t = k.size(2)
        self.k[:, :, self.pos:self.pos + t] = k
        self.v[:, :, self.pos:self.pos + t] = v
        self.pos += t
        return self.k[:, :, :self.pos], self.v[:, :, :self.pos]


class Attention(nn.Module):
    """Causal multi-head self-attention with fused QKV, optional QK-norm, RoPE and KV cache."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = config.n_head, config.head_dim, config.dropout
        self.qk_norm = config.qk_norm
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, cache: LayerCache | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:  # bounds the attention logits, which lets training use higher learning rates
            q, k = F.rms_norm(q, (self.head_dim,), eps=RMS_EPS), F.rms_norm(k, (self.head_dim,), eps=RMS_EPS)
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
    """Position-wise feed-forward network: GELU (tanh form, as GPT-2), SwiGLU or ReLU²."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        hidden = 4 * config.n_embd
        if self.kind == "swiglu":  # 2/3 of 4x keeps the parameter count of the 4x MLP (Shazeer 2020)
            hidden = (8 * config.n_embd // 3 + 63) // 64 * 64
        n_in = 2 * hidden if self.kind == "swiglu" else hidden  # gate and value in one matmul
        self.c_fc = nn.Linear(config.n_embd, n_in, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.kind == "gelu":
            h = F.gelu(h, approximate="tanh")
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """One transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = Attention(config)
        self.ln_2 = _norm(config)
        self.mlp = MLP(config)

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
        if config.pos == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos == "sinusoidal":  # not persistent: derived from the config, not learned
            self.register_buffer("sin_table", sinusoidal_table(config.block_size, config.n_embd),
                                 persistent=False)
        else:
            cos, sin = rope_tables(config.block_size, config.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head = nn.Linear(config.n_embd, V, bias=False)
        if config.tie_embeddings:  # one Parameter, two names: state_dict and optimizers see it once
            self.lm_head.weight = self.transformer.wte.weight
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

    def _hidden(self, idx: torch.Tensor, caches: list[LayerCache] | None = None) -> torch.Tensor:
        """Final normalised hidden states (B, T, n_embd) for tokens idx (B, T)."""
        T = idx.size(1)
        start = caches[0].pos if caches is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        rope = None
        if self.config.pos == "learned":
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))
        elif self.config.pos == "sinusoidal":
            x = x + self.sin_table[start:start + T].to(x.dtype)
        else:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        if self.config.embed_norm:  # every token enters the first block at the same scale
            x = F.rms_norm(x, (x.size(-1),), eps=RMS_EPS)
        x = self.transformer.drop(x)
        skips: list[torch.Tensor] = []
        n = self.config.n_layer
        for i, block in enumerate(self.transformer.h):
            if self.config.unet_skips and i >= n - n // 2:  # the second half takes the first's outputs
                x = x + self.skip_weights[n - 1 - i] * skips.pop()
            x = block(x, rope, caches[i] if caches is not None else None)
            if self.config.unet_skips and i < n // 2:
                skips.append(x)
        return self.transformer.ln_f(x)

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
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True,
                 eot=None, generator=None, callback=None):
        """Continue idx (B, T) by max_new_tokens sampled tokens; returns the longer idx.

        temperature 0 means greedy. top_k keeps the k likeliest tokens, top_p the smallest set whose
        probability reaches p. With eot, a row that samples it is finished (later tokens are eot)
        and generation stops once all rows are. generator seeds the sampling; callback(tokens) gets
        each new column (B,) as it is made, for streaming.
        """
        was_training = self.training
        self.eval()  # dropout off: generation must be a function of the weights only
        # One-row products (each cached step, and the head) are matrix-vector products; on the CPU
        # decode.py spreads them over all cores.
        cpu_cores = idx.device.type == "cpu" and torch.get_num_threads() > 1
        fast_steps = SplitRowProducts() if cpu_cores else nullcontext()
        try:
            with fast_steps:
                block = self.config.block_size
                caches = None
                done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
                for _ in range(max_new_tokens):
                    if not use_cache:
                        x = self._hidden(idx[:, -block:])
                    elif caches is None or caches[0].pos >= block:
                        # Empty, or full: (re)build the cache from the window of the last `block` tokens.
                        caches = caches or [LayerCache(block) for _ in range(self.config.n_layer)]
                        for cache in caches:
                            cache.pos = 0
                        x = self._hidden(idx[:, -block:], caches)
                    else:
                        x = self._hidden(idx[:, -1:], caches)
                    logits = self._logits(x[:, -1, :]).float()
                    nxt = sample(logits, temperature, top_k, top_p, generator)
                    if eot is not None:
                        nxt = torch.where(done, torch.full_like(nxt, eot), nxt)
                        done |= nxt == eot
                    idx = torch.cat([idx, nxt[:, None]], dim=1)
                    if callback is not None:
                        callback(nxt)
                    if eot is not None and bool(done.all()):
                        break
                return idx
        finally:
            self.train(was_training)


def sample(logits: torch.Tensor, temperature=1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """One token id per row of logits (B, V): greedy at temperature 0, else top-k / nucleus sampling."""
    if top_k is not None and top_k < 1 or top_p is not None and not 0 < top_p <= 1 or not temperature >= 0:
        raise ValueError(f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1 (got {temperature}, {top_k}, "
                         f"{top_p})")
    # A temperature below the smallest normal number of the logits' dtype would divide 0 by 0 (it
    # rounds to zero); it is greedy in all but name, so it is greedy.
    if temperature < torch.finfo(logits.dtype).tiny:
        return logits.argmax(dim=-1)
    # Shifted so the largest is 0 first: a tiny temperature then sends the others to -inf, not to inf - inf.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the likeliest always stays (a
        # top_p that rounds to 0 in the logits' dtype would otherwise drop it too).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
