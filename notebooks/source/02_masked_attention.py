# %% [markdown]
# # 2 · Masked (causal) attention
#
# *Stage 2 of scratchllm: attention. Before: [1 · self-attention](01_self_attention.ipynb).
# Next: [3 · multi-head attention](03_multihead_attention.ipynb).*
#
# **Why a decoder must not see the future.** GPT is trained to predict, at every position, the
# *next* token. All positions of a training sequence are predicted at once, in one forward pass: the
# output at position 2 of *"the cat sat on the mat"* must guess *on*, the output at position 3 must
# guess *the*, and so on. If position 2 could attend to position 3 it would simply read the answer;
# the loss would drop quickly and the model would learn nothing it can use when it generates, where
# the future does not exist yet. So each position may attend only to itself and to earlier positions.
# This is *causal* (or *masked*) self-attention, and it is the only kind GPT uses.

# %%
import matplotlib.pyplot as plt
import torch

torch.set_grad_enabled(False)  # only forward passes here: no autograd bookkeeping needed
torch.set_printoptions(precision=4, sci_mode=False)
plt.rcParams.update({"figure.figsize": (4, 3), "figure.dpi": 72, "font.size": 9})

tokens = ["the", "cat", "sat", "on", "the", "mat"]
x = torch.tensor([  # the same hand-made embeddings as in notebook 1
    [0.10, 0.20, 0.90],  # the
    [0.90, 0.10, 0.20],  # cat
    [0.30, 0.90, 0.10],  # sat
    [0.10, 0.40, 0.80],  # on
    [0.10, 0.20, 0.90],  # the
    [0.80, 0.10, 0.40],  # mat
])
d_in, d_out = 3, 2
torch.manual_seed(123)
W_q, W_k, W_v = torch.randn(d_in, d_out), torch.randn(d_in, d_out), torch.randn(d_in, d_out)


def show_weights(w, title, labels=tokens):
    """Draw an attention-weight matrix, queries down the side and keys along the top."""
    fig, ax = plt.subplots()
    im = ax.imshow(w.detach(), cmap="viridis", vmin=0)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    plt.show()


# %% [markdown]
# Unmasked attention from notebook 1, for reference. Every row spreads weight over all six tokens,
# including the ones to its right:

# %%
Q, K, V = x @ W_q, x @ W_k, x @ W_v
d_k = K.shape[-1]
scores = Q @ K.T / d_k**0.5
print(torch.softmax(scores, dim=-1))

# %% [markdown]
# ## The mask
#
# Query $i$ may see key $j$ only when $j \le i$: the lower triangle of the 6 × 6 matrix, diagonal
# included.

# %%
T = len(tokens)
allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))
print(allowed.int())

# %% [markdown]
# ## Before or after the softmax?
#
# There are several ways to apply it; only some are right.
#
# **(a) After the softmax: zero the future weights.** The rows no longer sum to one, so the output
# is no longer an average (early positions, which keep few weights, get shrunken outputs).

# %%
w_after = torch.softmax(scores, dim=-1) * allowed
print(w_after, "\nrow sums:", w_after.sum(dim=-1))

# %% [markdown]
# **(b) After the softmax, then renormalise each row.** This one is correct: the future's share is
# removed and the remaining weights are rescaled to sum to one.

# %%
w_renorm = w_after / w_after.sum(dim=-1, keepdim=True)
print(w_renorm, "\nrow sums:", w_renorm.sum(dim=-1))

# %% [markdown]
# **(c) Before the softmax, with zeros.** Wrong: a score of 0 is not "nothing", it is $e^0 = 1$
# before normalisation, so the future still gets weight.

# %%
w_zero = torch.softmax(scores.masked_fill(~allowed, 0.0), dim=-1)
print(w_zero[0], f"<- the first token still gives {w_zero[0, 1:].sum():.0%} of its weight to the future")

# %% [markdown]
# **(d) Before the softmax, with $-\infty$.** $e^{-\infty} = 0$, so the future gets exactly zero
# weight and the softmax's own normalisation makes each row sum to one. The result equals (b)
# exactly: the factor that (b) divides by is the same sum the softmax computes over the visible
# keys, so no information from the future leaks through the normalisation either.

# %%
causal_scores = scores.masked_fill(~allowed, float("-inf"))
w_causal = torch.softmax(causal_scores, dim=-1)
print(causal_scores, "\n", w_causal)
assert torch.allclose(w_causal, w_renorm)

# %% [markdown]
# So why does everyone mask *before*? It is one pass instead of two (no second normalisation), and
# it is the only form that works when the full weight matrix is never built: fused kernels such as
# `scaled_dot_product_attention` and flash attention compute the softmax block by block, and they
# skip the masked blocks entirely; that saves about half the work of causal attention.

# %%
show_weights(w_causal, "causal attention weights")

# %% [markdown]
# The first token can only attend to itself (weight 1); the last one sees the whole sentence. And
# the two *the*s now differ: the one at position 4 has seen *cat sat on* and the one at position 0
# has seen nothing. A causal mask gives the model a little sense of order on its own.

# %%
context = w_causal @ V
print("the (pos 0):", context[0], "\nthe (pos 4):", context[4])

# %% [markdown]
# ## Dropout on the attention weights
#
# Dropout (Srivastava et al. 2014) fights overfitting by zeroing a random fraction $p$ of values
# during training, so the network cannot lean on any single one. In attention it is applied to the
# weights after the softmax: each query randomly loses some of the tokens it looked at. The
# surviving values are multiplied by $1/(1-p)$ so that the expected output stays the same; at
# evaluation time dropout does nothing.

# %%
torch.manual_seed(0)
dropout = torch.nn.Dropout(p=0.5)
print(dropout(torch.ones(T, T)))  # half the entries zeroed, the rest scaled to 1 / (1 - 0.5) = 2

# %%
torch.manual_seed(0)
w_drop = dropout(w_causal)
print(w_drop)
show_weights(w_drop, "causal weights after dropout (p=0.5)")

# %%
dropout.eval()
assert torch.equal(dropout(w_causal), w_causal)  # switched off for evaluation and generation
dropout.train()

# %% [markdown]
# GPT-2 trained with $p = 0.1$. Models trained on far more data than parameters (most modern LLMs)
# do not overfit in one pass over the data and usually use $p = 0$.

# %% [markdown]
# ## The library's `CausalSelfAttention`
#
# `scratchllm.model.attention.CausalSelfAttention` is the same computation as a module. Two details:
# the mask is built once for the longest sequence (`context_length`) and stored as a buffer, so it
# moves with the module to the GPU and is cut to the actual length `T` in `forward`; and it takes a
# batch, `(batch, tokens, d_in)`.

# %%
from scratchllm.model.attention import CausalSelfAttention

torch.manual_seed(0)
attn = CausalSelfAttention(d_in, d_out, context_length=16, dropout=0.0)
with torch.no_grad():
    attn.W_query.weight.copy_(W_q.T)
    attn.W_key.weight.copy_(W_k.T)
    attn.W_value.weight.copy_(W_v.T)
print("mask buffer:", attn.mask.shape, "(True = future, hidden)")

batch = torch.stack([x, x])  # (2, 6, 3)
lib_context, lib_weights = attn(batch, return_weights=True)
print(lib_context.shape, lib_weights.shape)
assert torch.allclose(lib_weights[0], w_causal) and torch.allclose(lib_context[0], context)
print("CausalSelfAttention gives the same weights and context vectors as the hand computation")

# %% [markdown]
# With dropout the module behaves as above: random in training mode, exact in evaluation mode.

# %%
attn_drop = CausalSelfAttention(d_in, d_out, context_length=16, dropout=0.5)
attn_drop.load_state_dict(attn.state_dict())
torch.manual_seed(0)
_, w_train = attn_drop(batch, return_weights=True)
print("training mode, first sequence (same seed, so the same links dropped as above):\n", w_train[0])
attn_drop.eval()
assert torch.allclose(attn_drop(batch), lib_context)

# %% [markdown]
# ## The test that matters: the future cannot change the past
#
# Replace the last token, *mat*, with something else, say *dog*. With a causal mask the outputs at
# positions 0 to 4 must not move at all; only position 5, which sees *dog*, changes. Without the mask
# (notebook 1's `SelfAttention` with the same weights) every position changes.

# %%
from scratchllm.model.attention import SelfAttention

x_dog = x.clone()
x_dog[5] = torch.tensor([0.85, 0.30, 0.20])  # dog: a thing, a little more active than a mat
before, after = attn(x[None])[0], attn(x_dog[None])[0]
change = (after - before).abs().sum(dim=-1)
print("causal, change per position:  ", change)
assert torch.all(change[:5] == 0) and change[5] > 0

full = SelfAttention(d_in, d_out)
full.load_state_dict(attn.state_dict())
change_full = (full(x_dog) - full(x)).abs().sum(dim=-1)
print("unmasked, change per position:", change_full)
assert torch.all(change_full > 0)

# %% [markdown]
# The same holds for gradients: the output at position $i$, and so the loss there, is a function of
# tokens $0..i$ only. Autograd confirms it: the gradient of position 2's output reaches the
# embeddings of *the cat sat* and nothing after.

# %%
with torch.enable_grad():
    x_in = x.clone().requires_grad_(True)
    attn(x_in[None])[0, 2].sum().backward()
print(x_in.grad)
assert torch.all(x_in.grad[3:] == 0) and torch.all(x_in.grad[:3].abs().sum(-1) > 0)

# %% [markdown]
# That is why a whole sequence can be trained in one pass and each position still learns honest
# next-token prediction.
#
# Next: several attention heads side by side, and how to compute them all at once,
# in [notebook 3](03_multihead_attention.ipynb).
