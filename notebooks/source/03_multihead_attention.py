# %% [markdown]
# # 3 · Multi-head attention
#
# *Stage 2 of scratchllm: attention. Before: [2 · masked attention](02_masked_attention.ipynb).
# Next, stage 3: [4 · the GPT architecture](04_gpt_architecture.ipynb).*
#
# **Why several heads.** One attention head computes one softmax per query, so each position gets
# *one* weighted average of the others. But a word usually has several reasons to look back at the
# same time: a verb wants its subject, a pronoun wants the noun it stands for, almost every token
# wants the one just before it. Multi-head attention runs several heads in parallel, each with its
# own query, key and value projections into a narrower space, and concatenates what they find.
# Twelve heads of width 64 cost about the same as one head of width 768, but can attend to twelve
# different things.
#
# This notebook builds multi-head attention twice: first literally, as heads side by side, then as
# one fused module in which the heads are just another tensor dimension, which is how GPT computes
# it. Both come from `scratchllm.model.attention`, and we check that they agree with each other and
# with PyTorch's `scaled_dot_product_attention`.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.utils import benchmark

from scratchllm.model.attention import MultiHeadAttention, MultiHeadAttentionWrapper

torch.set_grad_enabled(False)  # only forward passes here: no autograd bookkeeping needed
torch.set_printoptions(precision=4, sci_mode=False)
plt.rcParams.update({"figure.dpi": 72, "font.size": 9})

tokens = ["the", "cat", "sat", "on", "the", "mat"]
x = torch.tensor([  # the hand-made embeddings of notebooks 1 and 2
    [0.10, 0.20, 0.90],  # the
    [0.90, 0.10, 0.20],  # cat
    [0.30, 0.90, 0.10],  # sat
    [0.10, 0.40, 0.80],  # on
    [0.10, 0.20, 0.90],  # the
    [0.80, 0.10, 0.40],  # mat
])
batch = torch.stack([x, x.flip(0)])  # two sequences: the sentence and the sentence backwards


def shape(name, t):
    """Print a tensor's name and shape, aligned."""
    print(f"{name:<46} {tuple(t.shape)}")


shape("batch (batch, tokens, d_in)", batch)

# %% [markdown]
# ## Heads side by side
#
# `MultiHeadAttentionWrapper` keeps a list of `CausalSelfAttention` heads from notebook 2, runs each
# one on the input and concatenates their outputs along the last dimension. With `d_out = 4` and two
# heads, each head is 2 wide.

# %%
torch.manual_seed(123)
d_in, d_out, num_heads = 3, 4, 2
wrapper = MultiHeadAttentionWrapper(d_in, d_out, context_length=16, dropout=0.0, num_heads=num_heads)
print(wrapper)

context_w, weights_w = wrapper(batch, return_weights=True)
shape("output (batch, tokens, d_out)", context_w)
shape("weights (batch, heads, tokens, tokens)", weights_w)
# The output is literally the heads' outputs next to each other:
assert torch.equal(context_w[..., :2], wrapper.heads[0](batch))
assert torch.equal(context_w[..., 2:], wrapper.heads[1](batch))


# %% [markdown]
# Each head has its own weights, so each head has its own attention pattern:

# %%
def show_heads(weights, title):
    """Draw one causal attention-weight matrix per head, side by side."""
    n = weights.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
    for h, ax in enumerate(axes[0]):
        ax.imshow(weights[h], cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90)
        ax.set_yticks(range(len(tokens)), tokens)
        ax.set_title(f"head {h}")
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()


show_heads(weights_w[0], "wrapper: attention weights per head")

# %% [markdown]
# Freshly initialised heads look alike: small random weights give nearly uniform attention. Training
# makes them specialise. We can fake the result by setting the weights by hand. Both heads ask the
# same question from every token (the query is 3 × the sum of the embedding), but head 0's keys read
# only the *is a thing* dimension and head 1's only the *is a function word* dimension. So head 0
# looks back at *cat* and *mat*, head 1 at *the* and *on*: what a head attends to is decided entirely
# by its $W_q$ and $W_k$.

# %%
with torch.no_grad():
    for head, feature in zip(wrapper.heads, (0, 2), strict=True):  # dim 0: a thing; dim 2: a function word
        head.W_query.weight.copy_(torch.tensor([[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]]))
        W_k = torch.zeros(d_out // num_heads, d_in)
        W_k[0, feature] = 3.0
        head.W_key.weight.copy_(W_k)
context_w, weights_w = wrapper(batch, return_weights=True)
show_heads(weights_w[0], "hand-set heads: things / function words")

# %% [markdown]
# ## One fused module
#
# The wrapper is easy to read but wasteful: every head runs its own three small projections in a
# Python loop. GPT-2 small has 12 heads in each of 12 layers, so that would be 432 separate little
# matrix products per forward pass, each too small to keep a GPU busy.
#
# `MultiHeadAttention` makes *one* projection, `qkv`, that produces the queries, keys and values of
# every head at once (`d_in → 3·d_out`). Its weight is just the heads' weights stacked. Then it splits
# the last dimension into `(heads, head_dim)` with `view`, and moves the head dimension next to the
# batch with `transpose`, so that one batched matrix product handles all heads of all sequences.
#
# To compare with the wrapper we copy the wrapper's weights into it. The fused module also has an
# output projection `out_proj` that mixes the heads' results (GPT-2 has one; the wrapper does not);
# set to the identity, it does nothing.

# %%
mha = MultiHeadAttention(d_in, d_out, context_length=16, dropout=0.0, num_heads=num_heads)
print(mha)
heads = wrapper.heads
with torch.no_grad():
    W_q = torch.cat([h.W_query.weight for h in heads])  # (d_out, d_in): head 0's rows, then head 1's
    W_k = torch.cat([h.W_key.weight for h in heads])
    W_v = torch.cat([h.W_value.weight for h in heads])
    mha.qkv.weight.copy_(torch.cat([W_q, W_k, W_v]))  # [Q | K | V] along the output dimension
    mha.out_proj.weight.copy_(torch.eye(d_out))
    mha.out_proj.bias.zero_()

# %% [markdown]
# Now the forward pass of the fused module, one line at a time, with the shape after each step.

# %%
B, T, _ = batch.shape
head_dim = d_out // num_heads

qkv = mha.qkv(batch)
shape("1. one projection for all heads", qkv)
q, k, v = qkv.split(d_out, dim=-1)
shape("2. split into q, k, v (batch, T, d_out)", q)
q = q.view(B, T, num_heads, head_dim)
shape("3. view: (batch, T, heads, head_dim)", q)
q = q.transpose(1, 2)
shape("4. transpose: (batch, heads, T, head_dim)", q)
k = k.view(B, T, num_heads, head_dim).transpose(1, 2)
v = v.view(B, T, num_heads, head_dim).transpose(1, 2)
scores = q @ k.transpose(-2, -1) / head_dim**0.5
shape("5. scores q·kᵀ/√head_dim (batch, heads, T, T)", scores)
future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
shape("6. causal mask, softmax", weights)
context = weights @ v
shape("7. weights @ v (batch, heads, T, head_dim)", context)
context = context.transpose(1, 2)
shape("8. transpose back (batch, T, heads, head_dim)", context)
print("   still contiguous in memory?", context.is_contiguous())
context = context.reshape(B, T, d_out)
shape("9. heads side by side again (batch, T, d_out)", context)
out = mha.out_proj(context)
shape("10. output projection", out)

# %% [markdown]
# Step 3 works because the channels of one head are consecutive in the last dimension: `view` only
# reinterprets the same memory, grouping channels 0-1 as head 0 and 2-3 as head 1. So the fused
# queries of head 0 are exactly the wrapper's head 0 queries. After the `transpose` in step 8 the
# memory is no longer in row order, which is why step 9 uses `reshape` (a `view` would need
# `.contiguous()` first).

# %%
for h in range(num_heads):
    assert torch.allclose(q[:, h], heads[h].W_query(batch))
print("fused queries of each head == that head's own W_query")

# %% [markdown]
# The three computations agree: the fused module (explicit path), our step-by-step version and the
# wrapper, for the outputs and for every head's weights.

# %%
fused, fused_weights = mha(batch, return_weights=True)
assert torch.allclose(fused, out, atol=1e-6)
assert torch.allclose(fused, context_w, atol=1e-6)
assert torch.allclose(fused_weights, weights_w, atol=1e-6)
print("fused module == step by step == wrapper; largest difference",
      f"{(fused - context_w).abs().max():.1e}")
show_heads(fused_weights[0], "fused module: the same weights per head")

# %% [markdown]
# ## `scaled_dot_product_attention`
#
# Steps 5 to 7 (scores, scale, mask, softmax, dropout, weighted sum) are one PyTorch call,
# `torch.nn.functional.scaled_dot_product_attention`. It picks the fastest kernel available: flash
# attention on recent NVIDIA GPUs, a fused kernel on CPUs. These compute the softmax block by block
# and never store the `T × T` weight matrix, which is why they cannot return the weights (the
# explicit path above is for looking at them). The answer is the same:

# %%
sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
assert torch.allclose(sdpa, weights @ v, atol=1e-6)
assert torch.allclose(mha(batch, use_sdpa=True), mha(batch, use_sdpa=False), atol=1e-6)
print("SDPA == explicit; largest difference", f"{(sdpa - weights @ v).abs().max():.1e}")

# %% [markdown]
# The same holds for a realistic size, with random weights and a learned-looking output projection:
# GPT-2 small's attention is 768 wide with 12 heads of 64.

# %%
torch.manual_seed(0)
big = MultiHeadAttention(768, 768, context_length=1024, dropout=0.0, num_heads=12)
x_big = torch.randn(4, 512, 768)
explicit, fast = big(x_big, use_sdpa=False), big(x_big, use_sdpa=True)
print("largest difference:", f"{(explicit - fast).abs().max():.1e}")
assert torch.allclose(explicit, fast, atol=1e-5)

# %% [markdown]
# ## Timing: explicit vs SDPA
#
# Four sequences of 512 tokens, 768 wide, 12 heads; the same module, both paths, timed in the same
# run with `torch.utils.benchmark` (the ratio is what to look at: the absolute times depend on the
# machine and on what else it is doing). The explicit path also has to store the weights,
# 4 × 12 × 512 × 512 floats = 50 MB per intermediate, where the fused kernel keeps small tiles.

# %%
def median_ms(use_sdpa):
    """Median time of one forward pass of `big` on x_big, in milliseconds."""
    timer = benchmark.Timer("big(x_big, use_sdpa=s)", globals=dict(big=big, x_big=x_big, s=use_sdpa),
                            num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=1.0).median * 1e3


t_explicit, t_sdpa = median_ms(False), median_ms(True)
print(f"explicit: {t_explicit:6.1f} ms\nSDPA:     {t_sdpa:6.1f} ms\nSDPA is {t_explicit / t_sdpa:.1f}x faster"
      f" (on {torch.get_num_threads()} CPU threads)")

# %% [markdown]
# On a CUDA GPU, SDPA runs flash attention (Dao et al. 2022), and since the explicit path's memory
# traffic grows as $T^2$, the gap widens with the sequence length.
#
# ## Summary
#
# * Multi-head attention = several causal attention heads on narrower projections, concatenated,
#   then an output projection.
# * Fused, the heads are a tensor dimension: one `qkv` matmul, `view` + `transpose` to
#   `(batch, heads, T, head_dim)`, batched attention, `transpose` + `reshape` back.
# * `scaled_dot_product_attention` computes the same numbers faster and with less memory.
#
# This fused module is the attention inside every block of GPT (in `scratchllm.model.gpt` it is
# `Attention`, which adds a KV cache for generation). Stage 3 puts the blocks together:
# [notebook 4](04_gpt_architecture.ipynb).
