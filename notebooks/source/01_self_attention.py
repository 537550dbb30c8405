# %% [markdown]
# # 1 · Self-attention, by hand
#
# *Stage 2 of scratchllm: attention. Next: [2 · masked attention](02_masked_attention.ipynb).*
#
# A language model reads a sequence of tokens and, at every position, has to decide which earlier
# words matter for what comes next. In *"the cat sat on the mat"* the word *sat* is about the *cat*;
# the second *the* is about the *mat*.
#
# **Why attention.** Recurrent networks read one token at a time and squeeze everything seen so far
# into one fixed-size hidden state; by the end of a long paragraph the beginning has been overwritten
# many times. Attention drops the bottleneck: every position looks *directly* at every other
# position, scores how relevant each one is, and takes a weighted average of them. The weights are
# computed from the data itself, so they change with every sentence, and all positions are computed
# at once with matrix products, which is what GPUs are good at.
#
# This notebook computes self-attention with plain tensors on a six-token sentence small enough to
# check by eye, then adds the trainable query, key and value weights, and finally shows that the
# library's `SelfAttention` module gives the same numbers.

# %%
import math

import matplotlib.pyplot as plt
import torch

torch.set_grad_enabled(False)  # only forward passes here: no autograd bookkeeping needed
torch.manual_seed(0)
torch.set_printoptions(precision=4, sci_mode=False)
plt.rcParams.update({"figure.figsize": (4, 3), "figure.dpi": 72, "font.size": 9})
print("torch", torch.__version__)

# %% [markdown]
# ## A six-token sentence in three dimensions
#
# A real model learns a vector of hundreds of numbers per token (768 in GPT-2). Three are enough to
# see what happens. The numbers below are chosen by hand so that the dimensions loosely mean
# *"is a thing"*, *"is an action"* and *"is a little function word"*: *cat* and *mat* are things,
# *sat* is an action, *the* and *on* are function words. The word *the* appears twice and, as a
# token, has the same embedding both times.

# %%
tokens = ["the", "cat", "sat", "on", "the", "mat"]
x = torch.tensor([
    [0.10, 0.20, 0.90],  # the
    [0.90, 0.10, 0.20],  # cat
    [0.30, 0.90, 0.10],  # sat
    [0.10, 0.40, 0.80],  # on
    [0.10, 0.20, 0.90],  # the
    [0.80, 0.10, 0.40],  # mat
])
print(x.shape, "= (tokens, embedding dimensions)")

# %% [markdown]
# ## Step 1 · scores: how similar is every token to the query?
#
# Take one token as the **query**, say *sat* (position 2). The simplest measure of how related
# another token is to it is the dot product of their vectors: large when they point the same way,
# zero when they are orthogonal. One score per token in the sentence, the query itself included:

# %%
query = x[2]
scores_sat = torch.empty(len(tokens))
for j, x_j in enumerate(x):
    scores_sat[j] = sum(query[d] * x_j[d] for d in range(3))  # the dot product, spelled out
print(scores_sat)
assert torch.allclose(scores_sat, x @ query)  # the same thing as one matrix-vector product

# %% [markdown]
# ## Step 2 · softmax: turn scores into weights that sum to 1
#
# We want a weighted *average*, so the weights must be positive and sum to one. Dividing by the sum
# would do that for positive scores, but scores can be negative. The **softmax**
# $w_j = e^{s_j} / \sum_k e^{s_k}$ is positive for any score, sums to one, and stretches differences:
# a score larger by 1 gets *e* ≈ 2.7 times the weight.

# %%
naive = scores_sat / scores_sat.sum()
by_hand = torch.exp(scores_sat) / torch.exp(scores_sat).sum()
weights_sat = torch.softmax(scores_sat, dim=0)
print("divide by sum:", naive)
print("softmax      :", weights_sat, f"sum = {weights_sat.sum():.4f}")
assert torch.allclose(by_hand, weights_sat)

# %% [markdown]
# `torch.softmax` is not literally the formula above: $e^{s}$ overflows for scores around 89 in
# float32. Subtracting the largest score first changes nothing mathematically (the factor
# $e^{-\max}$ cancels) and keeps every exponent at most zero:

# %%
big = torch.tensor([100.0, 101.0, 102.0])
print("e^s / sum(e^s)       :", torch.exp(big) / torch.exp(big).sum())
print("shifted by the max   :", torch.exp(big - big.max()) / torch.exp(big - big.max()).sum())
print("torch.softmax        :", torch.softmax(big, dim=0))

# %% [markdown]
# ## Step 3 · the context vector: a weighted sum of all tokens
#
# The output for *sat* is the average of all six token vectors, weighted by attention. It is a new
# vector for position 2 that mixes in what the sentence says around it.

# %%
context_sat = torch.zeros(3)
for j, x_j in enumerate(x):
    context_sat += weights_sat[j] * x_j
print(context_sat)
assert torch.allclose(context_sat, weights_sat @ x)

# %% [markdown]
# ## Every token at once
#
# Doing this for each of the six queries is three matrix products: all pairwise scores
# $S = X X^\top$ (6 × 6), a softmax over each row, and the weighted sums $W X$.

# %%
scores = x @ x.T                          # (6, 6): row i holds query i's score for every token j
weights = torch.softmax(scores, dim=-1)   # normalise each row, i.e. over the keys
context = weights @ x                     # (6, 3): one context vector per token
print("weights:\n", weights)
print("row sums:", weights.sum(dim=-1))
assert torch.allclose(weights[2], weights_sat) and torch.allclose(context[2], context_sat)


# %% [markdown]
# A heatmap shows who looks at whom: row = the query, column = the token it attends to. These are
# the attention **weights**, not the outputs.

# %%
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


show_weights(weights, "plain dot-product attention")

# %% [markdown]
# Two things stand out. Every token attends most to itself and to tokens like itself (*cat* to *mat*),
# because a vector's dot product with itself is large: plain similarity is not the same as
# relevance. And the two rows for *the* are identical: attention by itself has **no idea of order**.
# Shuffle the sentence and each token gets exactly the same context vector. GPT fixes that by adding
# a position embedding to each token (notebook 4).

# %%
perm = torch.tensor([5, 3, 1, 0, 4, 2])
shuffled = torch.softmax(x[perm] @ x[perm].T, dim=-1) @ x[perm]
assert torch.allclose(shuffled, context[perm])
print("the (pos 0):", context[0], "\nthe (pos 4):", context[4])

# %% [markdown]
# ## Trainable weights: queries, keys and values
#
# Plain similarity can't learn anything. Self-attention in a transformer gives each token three
# different roles, each a learned linear projection of its embedding:
#
# * the **query** $q_i = x_i W_q$: what position $i$ is looking for,
# * the **key** $k_j = x_j W_k$: what position $j$ offers to be found by,
# * the **value** $v_j = x_j W_v$: what position $j$ hands over once it is chosen.
#
# A verb can then look for its subject even though verbs and nouns have unrelated embeddings. The
# projections may also change the width: here from $d_{in} = 3$ to $d_{out} = 2$. The weights start
# random and are trained with the rest of the model.

# %%
d_in, d_out = 3, 2
torch.manual_seed(123)
W_q = torch.randn(d_in, d_out)
W_k = torch.randn(d_in, d_out)
W_v = torch.randn(d_in, d_out)

q_sat = x[2] @ W_q                  # one query, for "sat"
keys, values = x @ W_k, x @ W_v     # every token's key and value
scores_sat = keys @ q_sat           # q_sat · k_j for every j
print("query", q_sat, "\nkeys\n", keys, "\nscores", scores_sat)

# %% [markdown]
# ### Why divide by $\sqrt{d_k}$
#
# If the entries of $q$ and $k$ are roughly independent with variance 1, their dot product is a sum
# of $d_k$ such products and has variance $d_k$. With $d_k = 64$ (a GPT-2 head) the scores spread
# over ±8 and more; the softmax then puts nearly all weight on one token, and its gradient, which is
# $w_j(1 - w_j)$ at most, nearly vanishes. Dividing by $\sqrt{d_k}$ brings the variance back to 1.
# This is the *scaled* in *scaled dot-product attention*. Over 16 keys, the average weight the
# softmax gives its favourite key (1/16 = 0.06 would be uniform):

# %%
n_keys = 16
for d_k in (4, 64, 1024):
    q = torch.randn(1000, 1, d_k)        # 1000 random queries, each scoring 16 random keys
    k = torch.randn(1000, n_keys, d_k)
    s = (q * k).sum(-1)                  # (1000, 16) dot products
    top = torch.softmax(s, dim=-1).max(dim=-1).values.mean()
    top_scaled = torch.softmax(s / math.sqrt(d_k), dim=-1).max(dim=-1).values.mean()
    print(f"d_k={d_k:4d}: score std {s.std():5.1f}, largest weight {top:.2f} | "
          f"scaled: std {(s / math.sqrt(d_k)).std():.1f}, largest weight {top_scaled:.2f}")

# %% [markdown]
# So the weights for *sat* and its context vector, which now lives in the 2-dimensional value space:

# %%
d_k = keys.shape[-1]
weights_sat = torch.softmax(scores_sat / d_k**0.5, dim=-1)
context_sat = weights_sat @ values
print("weights", weights_sat, "\ncontext", context_sat)

# %% [markdown]
# And for all six tokens at once, the formula from *Attention Is All You Need*:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d_k}}\right) V$$

# %%
Q, K, V = x @ W_q, x @ W_k, x @ W_v
weights = torch.softmax(Q @ K.T / d_k**0.5, dim=-1)
context = weights @ V
print("context vectors, one row per token:\n", context)
assert torch.allclose(context[2], context_sat)
show_weights(weights, "with random W_q, W_k, W_v")

# %% [markdown]
# With random projections the pattern no longer favours each token itself: what a token attends to
# is now decided by $W_q$ and $W_k$, which training will shape.
#
# ## The library's `SelfAttention`
#
# `scratchllm.model.attention.SelfAttention` packages exactly these steps as a PyTorch module. It
# keeps the projections in `nn.Linear` layers, which store the weight transposed (`out × in`) and
# compute `x @ W.T`; copying our matrices in must give the same numbers.

# %%
from scratchllm.model.attention import SelfAttention

attn = SelfAttention(d_in, d_out)
print(attn)
with torch.no_grad():
    attn.W_query.weight.copy_(W_q.T)
    attn.W_key.weight.copy_(W_k.T)
    attn.W_value.weight.copy_(W_v.T)

lib_context, lib_weights = attn(x, return_weights=True)
print(lib_context)
assert torch.allclose(lib_context, context) and torch.allclose(lib_weights, weights)
print("SelfAttention gives the same context vectors and weights as the hand computation")

# %% [markdown]
# The module works the same on a batch of sequences, shape `(batch, tokens, d_in)`, because every
# step is a matrix product over the last two dimensions:

# %%
batch = torch.stack([x, x.flip(0)])  # the sentence, and the sentence backwards
out = attn(batch)
print(batch.shape, "->", out.shape)
assert torch.allclose(out[0], context)
assert torch.allclose(out[1], context.flip(0))  # backwards in, the same vectors backwards out: no order

# %% [markdown]
# ## What we have, and what is missing
#
# * Scores are dot products of queries and keys, scaled by $\sqrt{d_k}$; a softmax turns each row
#   into weights; the output is the weighted sum of the values.
# * Attention has no sense of order, and every token sees every other one, *including the tokens
#   that come after it*. A model that is learning to predict the next word must not be allowed to
#   look at it: that is the causal mask of
#   [notebook 2](02_masked_attention.ipynb).
