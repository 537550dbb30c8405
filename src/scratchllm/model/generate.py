"""Generation beside the model: the KV cache, sampling, and the decoding loop of `GPT.generate`.

A `KVCache` holds the keys and values every layer has seen, preallocated for the whole context, so
each new token costs one position instead of the whole prefix: `GPT.next_logits(ids, cache)` runs
new tokens after what the cache holds (a prompt, or the next turn of a conversation) and returns
the distribution of the token after them. Past the context length the window slides: every position
embedding (and, through the layers, every hidden state) depends on where the window starts, so the
cache is rebuilt from the cropped window, which keeps the output identical to generation without a
cache.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from scratchllm.model.cpu_matvec import SplitRowProducts


class LayerCache:
    """Keys and values one attention layer has seen, preallocated for the whole context."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos = 0  # positions filled so far

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, t, d) at the next t positions; return all keys and values so far."""
        if self.k is None or self.v is None:
            B, H, _, D = k.shape
            self.k = k.new_empty(B, H, self.block_size, D)
            self.v = v.new_empty(B, H, self.block_size, D)
        t = k.size(2)
        self.k[:, :, self.pos:self.pos + t] = k
        self.v[:, :, self.pos:self.pos + t] = v
        self.pos += t
        return self.k[:, :, :self.pos], self.v[:, :, :self.pos]


class KVCache:
    """One `LayerCache` a layer; `pos` is how many positions of the context it holds."""

    def __init__(self, n_layer: int, block_size: int):
        self.block_size = block_size
        self.layers = [LayerCache(block_size) for _ in range(n_layer)]

    @property
    def pos(self) -> int:
        """Positions filled so far (the same in every layer)."""
        return self.layers[0].pos

    def reset(self) -> None:
        """Forget every position (the memory stays allocated for the next use)."""
        for layer in self.layers:
            layer.pos = 0

    def __getitem__(self, i: int) -> LayerCache:
        return self.layers[i]


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


def fast_decoding(device: torch.device):
    """The context decoding runs in: one-row products spread over all cores on a CPU (cpu_matvec.py)."""
    return SplitRowProducts() if device.type == "cpu" and torch.get_num_threads() > 1 else nullcontext()


def _next_logits(model, idx: torch.Tensor, cache: KVCache | None, use_cache: bool) -> torch.Tensor:
    """The logits after idx, feeding the cache only what it lacks (all of a window it must rebuild)."""
    block = model.config.block_size
    if not use_cache or cache is None:
        return model.next_logits(idx[:, -block:])
    if cache.pos == 0 or cache.pos >= block:  # empty, or full: (re)build it from the last window
        cache.reset()
        return model.next_logits(idx[:, -block:], cache)
    return model.next_logits(idx[:, -1:], cache)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature=1.0, top_k=None, top_p=None,
             use_cache=True, eot=None, generator=None, callback=None) -> torch.Tensor:
    """Continue idx (B, T) by max_new_tokens sampled tokens with `model`; returns the longer idx.

    temperature 0 means greedy. top_k keeps the k likeliest tokens, top_p the smallest set whose
    probability reaches p. With eot, a row that samples it is finished (later tokens are eot)
    and generation stops once all rows are. generator seeds the sampling; callback(tokens) gets
    each new column (B,) as it is made, for streaming.
    """
    was_training = model.training
    model.eval()  # dropout off: generation must be a function of the weights only
    cache = KVCache(model.config.n_layer, model.config.block_size) if use_cache else None
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    try:
        with fast_decoding(idx.device):
            for _ in range(max_new_tokens):
                nxt = sample(_next_logits(model, idx, cache, use_cache), temperature, top_k, top_p, generator)
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
        model.train(was_training)
