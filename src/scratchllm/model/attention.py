"""Attention, built up one idea at a time: self-attention, the causal mask, many heads, one fused module.

The four classes (all `torch.nn.Module`; x is (batch, tokens, d_in), or (tokens, d_in) for
`SelfAttention`):

    SelfAttention(d_in, d_out, qkv_bias=False)
        one head, no mask: softmax(Q Kᵀ / √d_out) V, written out step by step.
    CausalSelfAttention(d_in, d_out, context_length, dropout=0.0, qkv_bias=False)
        adds the causal mask (a registered buffer, so it moves with .to(device)) and dropout on
        the attention weights.
    MultiHeadAttentionWrapper(d_in, d_out, context_length, dropout, num_heads, qkv_bias=False)
        num_heads CausalSelfAttention heads side by side, outputs concatenated.
    MultiHeadAttention(d_in, d_out, context_length, dropout, num_heads, qkv_bias=False)
        the same computation as one module: a fused QKV projection split into heads, an output
        projection `out_proj`, and two paths: explicit (can return the attention weights) and
        `torch.nn.functional.scaled_dot_product_attention` (fast; flash attention on CUDA).

Every `forward(x, return_weights=False)` returns the context vectors, or with return_weights=True
the pair (context, attention weights); MultiHeadAttention's weights are (batch, heads, T, T).
`MultiHeadAttention.forward(x, use_sdpa=False)` takes the explicit path without returning weights.

One deliberate choice: in both multi-head classes d_out is the total output width and each head
gets d_out // num_heads channels, so the wrapper and the fused module are interchangeable (same
arguments, same output shape). The wrapper has no output projection; the fused module does, as
GPT-2 does.

`gpt.Attention` is the form the model trains with (adds RoPE, QK-norm and the KV cache); the
tests check that all of these compute the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Scaled dot-product self-attention with trainable query, key and value projections."""

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        queries = self.W_query(x)  # what each token is looking for
        keys = self.W_key(x)  # what each token offers to be found by
        values = self.W_value(x)  # what each token hands over when it is found
        scores = queries @ keys.transpose(-2, -1)  # (T, T): query i against key j
        # Dividing by √d keeps the scores' spread independent of the width, so softmax does not
        # saturate into a one-hot vector with vanishing gradients.
        weights = torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1)
        context = weights @ values  # each row: a weighted mix of all values
        return (context, weights) if return_weights else context


class CausalSelfAttention(nn.Module):
    """Self-attention in which token i sees only tokens 0..i: the mask that makes a language model."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float = 0.0,
                 qkv_bias: bool = False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        # True above the diagonal = "the future": those scores become -inf, so weight 0 after softmax.
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length, dtype=torch.bool),
                                                diagonal=1), persistent=False)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        T = x.shape[-2]
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)
        scores = queries @ keys.transpose(-2, -1)
        scores = scores.masked_fill(self.mask[:T, :T], float("-inf"))
        weights = torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1)
        weights = self.dropout(weights)  # randomly drops attention links while training
        context = weights @ values
        return (context, weights) if return_weights else context


class MultiHeadAttentionWrapper(nn.Module):
    """num_heads independent causal heads, each d_out // num_heads wide, concatenated."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False):
        super().__init__()
        if d_out % num_heads:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.heads = nn.ModuleList(
            CausalSelfAttention(d_in, d_out // num_heads, context_length, dropout, qkv_bias)
            for _ in range(num_heads))

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        outs = [head(x, return_weights=True) for head in self.heads]
        context = torch.cat([c for c, _ in outs], dim=-1)
        if return_weights:
            return context, torch.stack([w for _, w in outs], dim=-3)  # (B, heads, T, T)
        return context


class MultiHeadAttention(nn.Module):
    """Causal multi-head attention in one module: heads are a tensor dimension, not a Python loop."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False):
        super().__init__()
        if d_out % num_heads:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.dropout_p = dropout
        # One matmul makes queries, keys and values for every head at once: [Q | K | V].
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # mixes what the heads found
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length, dtype=torch.bool),
                                                diagonal=1), persistent=False)

    def forward(self, x: torch.Tensor, return_weights: bool = False, use_sdpa: bool = True):
        B, T, _ = x.shape
        if T > self.mask.size(0):  # both paths refuse alike, though SDPA would not need the mask
            raise ValueError(f"{T} tokens exceed context_length {self.mask.size(0)}")
        q, k, v = self.qkv(x).split(self.d_out, dim=-1)
        # (B, T, d_out) -> (B, heads, T, head_dim): each head attends in its own subspace.
        q, k, v = (t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        weights = None
        if return_weights or not use_sdpa:
            scores = q @ k.transpose(-2, -1) / self.head_dim ** 0.5
            scores = scores.masked_fill(self.mask[:T, :T], float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            context = self.dropout(weights) @ v
        else:  # the same result, without materialising the (T, T) matrix on fused kernels
            dropout = self.dropout_p if self.training else 0.0
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        context = context.transpose(1, 2).reshape(B, T, self.d_out)  # heads side by side again
        out = self.out_proj(context)
        return (out, weights) if return_weights else out
