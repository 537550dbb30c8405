"""The stage-2 attention classes: each step checked against PyTorch's own attention and each other."""

import pytest
import torch
import torch.nn.functional as F

from scratchllm.model.attention import (
    CausalSelfAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttention,
)
from scratchllm.model.gpt import Attention, GPTConfig

B, T, D_IN, D_OUT, HEADS = 2, 7, 12, 16, 4


@pytest.fixture
def x():
    return torch.randn(B, T, D_IN, generator=torch.Generator().manual_seed(0))


def _qkv(module, x):
    return module.W_query(x), module.W_key(x), module.W_value(x)


def test_self_attention_is_softmax_qk_v(x):
    torch.manual_seed(0)
    sa = SelfAttention(D_IN, D_OUT)
    q, k, v = _qkv(sa, x)
    expected = F.scaled_dot_product_attention(q, k, v)  # PyTorch's kernel, no mask
    torch.testing.assert_close(sa(x), expected, atol=1e-5, rtol=0)
    # a single unbatched sequence, as in the first notebook
    torch.testing.assert_close(sa(x[0]), expected[0], atol=1e-5, rtol=0)


def test_causal_self_attention_matches_sdpa_and_masks_the_future(x):
    torch.manual_seed(0)
    ca = CausalSelfAttention(D_IN, D_OUT, context_length=10, qkv_bias=True).eval()
    context, weights = ca(x, return_weights=True)
    q, k, v = _qkv(ca, x)
    torch.testing.assert_close(context, F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, T))
    assert torch.all(weights.triu(diagonal=1) == 0)
    assert torch.all(weights[:, torch.ones(T, T, dtype=torch.bool).tril()] > 0)  # the past is seen
    assert "mask" in dict(ca.named_buffers())  # moves with .to(device)


def test_attention_dropout_acts_only_in_training(x):
    torch.manual_seed(0)
    ca = CausalSelfAttention(D_IN, D_OUT, context_length=T, dropout=0.5)
    _, w = ca.train()(x, return_weights=True)
    assert (w[:, torch.ones(T, T, dtype=torch.bool).tril()] == 0).any()  # links to the past dropped...
    assert (w > 1).any() or not torch.allclose(w.sum(-1), torch.ones(B, T))  # ...and the rest rescaled
    _, w = ca.eval()(x, return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, T))
    torch.testing.assert_close(ca(x), ca(x), atol=0, rtol=0)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_multi_head_explicit_and_sdpa_paths_agree(x, qkv_bias):
    torch.manual_seed(0)
    mha = MultiHeadAttention(D_IN, D_OUT, context_length=T, dropout=0.1, num_heads=HEADS,
                             qkv_bias=qkv_bias).eval()
    fast = mha(x)
    explicit = mha(x, use_sdpa=False)
    out, weights = mha(x, return_weights=True)
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, explicit, atol=0, rtol=0)
    assert weights.shape == (B, HEADS, T, T)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, HEADS, T))
    assert torch.all(weights.triu(diagonal=1) == 0)


def test_multi_head_matches_torch_multihead_attention():
    torch.manual_seed(0)
    x = torch.randn(B, T, D_OUT)
    mha = MultiHeadAttention(D_OUT, D_OUT, context_length=T, dropout=0.0, num_heads=HEADS, qkv_bias=True)
    ref = torch.nn.MultiheadAttention(D_OUT, HEADS, bias=True, batch_first=True)
    with torch.no_grad():  # torch packs its projections as [Q; K; V] rows too
        ref.in_proj_weight.copy_(mha.qkv.weight)
        ref.in_proj_bias.copy_(mha.qkv.bias)
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        ref.out_proj.bias.copy_(mha.out_proj.bias)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    expected, ref_weights = ref(x, x, x, attn_mask=future, average_attn_weights=False)
    out, weights = mha(x, return_weights=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(mha(x), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=0)


def test_wrapper_equals_fused_module_with_copied_weights(x):
    torch.manual_seed(0)
    wrapper = MultiHeadAttentionWrapper(D_IN, D_OUT, context_length=T, dropout=0.0, num_heads=HEADS,
                                        qkv_bias=True)
    mha = MultiHeadAttention(D_IN, D_OUT, context_length=T, dropout=0.0, num_heads=HEADS, qkv_bias=True)
    with torch.no_grad():
        for part, name in enumerate(("W_query", "W_key", "W_value")):
            rows = slice(part * D_OUT, (part + 1) * D_OUT)
            mha.qkv.weight[rows] = torch.cat([getattr(h, name).weight for h in wrapper.heads])
            mha.qkv.bias[rows] = torch.cat([getattr(h, name).bias for h in wrapper.heads])
        mha.out_proj.weight.copy_(torch.eye(D_OUT))  # the wrapper has no output projection
        mha.out_proj.bias.zero_()
    ctx, w = wrapper(x, return_weights=True)
    out, weights = mha(x, return_weights=True)
    assert ctx.shape == (B, T, D_OUT)
    torch.testing.assert_close(out, ctx, atol=1e-5, rtol=0)
    torch.testing.assert_close(mha(x), ctx, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights, w, atol=1e-6, rtol=0)


@pytest.mark.parametrize("make", [
    lambda: CausalSelfAttention(D_IN, D_OUT, T),
    lambda: MultiHeadAttentionWrapper(D_IN, D_OUT, T, 0.0, HEADS),
    lambda: MultiHeadAttention(D_IN, D_OUT, T, 0.0, HEADS),
])
def test_changing_later_tokens_never_changes_earlier_outputs(x, make):
    torch.manual_seed(0)
    module = make().eval()
    t = 3
    changed = x.clone()
    changed[:, t + 1:] = torch.randn_like(changed[:, t + 1:])
    a, b = module(x), module(changed)
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


def test_gpt_attention_equals_multi_head_attention(x):
    torch.manual_seed(0)
    config = GPTConfig(n_embd=D_OUT, n_head=HEADS, block_size=T, bias=True)
    fused = Attention(config).eval()
    mha = MultiHeadAttention(D_OUT, D_OUT, context_length=T, dropout=0.0, num_heads=HEADS, qkv_bias=True)
    with torch.no_grad():
        mha.qkv.weight.copy_(fused.c_attn.weight)
        mha.qkv.bias.copy_(fused.c_attn.bias)
        mha.out_proj.weight.copy_(fused.c_proj.weight)
        mha.out_proj.bias.copy_(fused.c_proj.bias)
    h = torch.randn(B, T, D_OUT)
    torch.testing.assert_close(fused(h), mha(h, use_sdpa=False), atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_inputs_longer_than_the_context_are_refused_on_both_paths(use_sdpa):
    mha = MultiHeadAttention(D_IN, D_OUT, T, 0.0, num_heads=2)
    with pytest.raises(ValueError, match="exceed context_length"):
        mha(torch.randn(1, T + 1, D_IN), use_sdpa=use_sdpa)


def test_head_count_must_divide_width():
    with pytest.raises(ValueError):
        MultiHeadAttention(D_IN, 10, T, 0.0, num_heads=4)
    with pytest.raises(ValueError):
        MultiHeadAttentionWrapper(D_IN, 10, T, 0.0, num_heads=4)
