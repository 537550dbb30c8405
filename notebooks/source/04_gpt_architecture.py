# %% [markdown]
# # 4 · The GPT architecture
#
# *Stage 3 of scratchllm: the model. Before, stage 2:
# [3 · multi-head attention](03_multihead_attention.ipynb).*
#
# A GPT is a stack of identical blocks between an embedding at the bottom and a classifier at the
# top. Everything in it is in `scratchllm.model.gpt`; this notebook takes one small model apart,
# recomputes each piece by hand and checks the result against the library, then looks at the real
# size (GPT-2 small, 124M parameters), and finally trains a small model for half a minute on
# Shakespeare to see the difference between an untrained and a (briefly) trained network.
#
# ```
# token ids (batch, T)
#   ├─ token embedding  wte ──┐
#   └─ position embedding wpe ┴─ + ─ dropout
#        │
#        ├─ n_layer × Block:   x = x + Attention(LayerNorm(x))      (notebooks 1-3)
#        │                     x = x + FeedForward(LayerNorm(x))
#        │
#   final LayerNorm  ln_f
#   head  lm_head  (shares its weight with wte)
# logits (batch, T, vocab_size): a score for every possible next token, at every position
# ```

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from torchinfo import summary

from scratchllm.config import PRESETS
from scratchllm.data.sources import open_source
from scratchllm.model.attention import MultiHeadAttention
from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.tokenizer import Tokenizer, train_bpe

torch.manual_seed(0)
torch.set_printoptions(precision=4, sci_mode=False, linewidth=110)
plt.rcParams.update({"figure.figsize": (4, 3), "figure.dpi": 72, "font.size": 9})

# %% [markdown]
# ## Tokens
#
# The model never sees text, only token ids. With GPT-2's tokenizer (stage 1), our sentence is six
# tokens. Note that *the* at the start and *␣the* in the middle are different tokens: GPT-2 keeps the
# space in front of a word as part of the word.

# %%
tok = Tokenizer.pretrained("gpt2")
ids = tok.encode("the cat sat on the mat")
print(ids, [tok.decode([i]) for i in ids])
idx = torch.tensor([ids])  # (batch=1, T=6)

# %% [markdown]
# To look inside, a GPT with GPT-2's vocabulary but a width of only 8 and two blocks of two heads.

# %%
config = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=8)
model = GPT(config).eval().requires_grad_(False)  # only looked at here: no dropout, no gradients
print(config)
print(f"{model.num_params():,} parameters")

# %% [markdown]
# ## Token and position embeddings
#
# The token embedding `wte` is a table with one learned row of `n_embd` numbers per token id;
# embedding a token means picking its row. (That is the same as multiplying a one-hot vector by the
# table, but much cheaper.)

# %%
wte, wpe = model.transformer.wte, model.transformer.wpe
tok_emb = wte(idx)
print("table", tuple(wte.weight.shape), "-> embeddings", tuple(tok_emb.shape))
one_hot = F.one_hot(idx, config.vocab_size).float()
assert torch.allclose(one_hot @ wte.weight, tok_emb)
assert torch.equal(tok_emb[0, 1], wte.weight[ids[1]])  # "cat" is just row 3797

# %% [markdown]
# Attention alone cannot tell positions apart (notebook 1). GPT-2 adds a second learned table,
# `wpe`, with one row per position up to `block_size`, the longest sequence the model can read. The
# same token at two positions now enters the first block as two different vectors.

# %%
pos_emb = wpe(torch.arange(idx.shape[1]))
x = tok_emb + pos_emb  # (1, 6, 8) + (6, 8): broadcast over the batch
print("position table", tuple(wpe.weight.shape), "-> input to the blocks", tuple(x.shape))
twice = torch.tensor([[262, 262]])  # " the", " the"
e = wte(twice) + wpe(torch.arange(2))
print("same token, positions 0 and 1:\n", e[0])

# %% [markdown]
# ## LayerNorm
#
# Each block starts by normalising every token's vector to mean 0 and variance 1 over its `n_embd`
# numbers, then applies a learned scale $\gamma$ and shift $\beta$:
# $\mathrm{LN}(x) = \gamma \odot \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta$. It keeps the
# numbers entering attention and the feed-forward in the same range whatever the depth, which makes
# deep networks trainable. Unlike batch norm it works on each token alone, so it behaves the same in
# training and generation. GPT-2 puts it *before* each sub-layer ("pre-norm"), which trains more
# stably than the original transformer's post-norm.

# %%
block = model.transformer.h[0]
ln = block.ln_1
mean = x.mean(dim=-1, keepdim=True)
var = x.var(dim=-1, keepdim=True, unbiased=False)  # the biased variance, as in the paper
by_hand = (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias
assert torch.allclose(by_hand, ln(x), atol=1e-6)
print("mean", ln(x).mean(-1), "\nstd ", ln(x).std(-1, unbiased=False))


# %% [markdown]
# ## GELU
#
# The feed-forward layers need a non-linearity. GPT uses GELU, $x \cdot \Phi(x)$ with $\Phi$ the
# standard normal CDF: like ReLU for large $|x|$, but smooth, and slightly negative just below zero,
# so small negative inputs still pass a gradient. GPT-2 computed it with a tanh approximation, and so
# does the model here (it has to, to load GPT-2's weights exactly).

# %%
def gelu_tanh(x):
    """GELU with GPT-2's tanh approximation."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


z = torch.linspace(-3, 3, 121)
exact = z * 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # x · Φ(x)
assert torch.allclose(gelu_tanh(z), F.gelu(z, approximate="tanh"), atol=1e-6)
print(f"largest gap between exact GELU and the tanh form: {(exact - gelu_tanh(z)).abs().max():.1e}")
fig, ax = plt.subplots()
ax.plot(z, torch.relu(z), label="ReLU", ls="--")
ax.plot(z, gelu_tanh(z), label="GELU")
ax.legend()
ax.grid(alpha=0.3)
ax.set_title("activation functions")
plt.show()

# %% [markdown]
# ## The feed-forward network
#
# Attention moves information *between* positions. The feed-forward network (MLP) then processes
# each position *on its own*: widen to `4 · n_embd`, GELU, project back. Two thirds of each block's
# parameters live here (and, it is thought, much of what the model memorises).

# %%
mlp = block.mlp
h = mlp.c_fc(x)
out = mlp.c_proj(gelu_tanh(h))
print("x", tuple(x.shape), "-> c_fc", tuple(h.shape), "-> GELU -> c_proj", tuple(out.shape))
assert torch.allclose(out, mlp(x), atol=1e-6)
print(f"feed-forward parameters: {sum(p.numel() for p in mlp.parameters())} "
      f"= 2 · {config.n_embd} · {4 * config.n_embd} weights + {5 * config.n_embd} biases")

# %% [markdown]
# ## Residual connections
#
# Each sub-layer *adds* its output to its input, $x \leftarrow x + f(x)$, instead of replacing it.
# The gradient then has a direct path through the `+` to every earlier layer, however deep the
# stack. Without it, the gradient is multiplied by every layer's derivative on the way down and
# shrinks (or grows) exponentially. A quick experiment: 24 layers of `Linear` + sigmoid, with and
# without the shortcut, and the size of the gradient that reaches each layer's weights.

# %%
def layer_grad_norms(residual, depth=24, width=32):
    """Gradient norm of each layer's weight after one backward pass through a deep stack."""
    torch.manual_seed(0)
    layers = [nn.Linear(width, width) for _ in range(depth)]
    h = torch.randn(8, width)
    for layer in layers:
        h = h + torch.sigmoid(layer(h)) if residual else torch.sigmoid(layer(h))
    h.pow(2).mean().backward()
    return [layer.weight.grad.norm().item() for layer in layers]


plain, resid = layer_grad_norms(False), layer_grad_norms(True)
print(f"first layer's gradient: without shortcut {plain[0]:.1e}, with shortcut {resid[0]:.1e}")
fig, ax = plt.subplots()
ax.semilogy(plain, label="without shortcut")
ax.semilogy(resid, label="with shortcut")
ax.set_xlabel("layer")
ax.set_ylabel("gradient norm")
ax.legend()
plt.show()

# %% [markdown]
# ## The transformer block
#
# Now the whole block, by hand, from its own pieces: LayerNorm → causal multi-head attention → add;
# LayerNorm → feed-forward → add. The block's input and output have the same shape, so blocks stack.

# %%
attn = block.attn
by_hand = x + attn(block.ln_1(x))
by_hand = by_hand + block.mlp(block.ln_2(by_hand))
assert torch.allclose(by_hand, block(x), atol=1e-6)
print(block)
print("block:", tuple(x.shape), "->", tuple(block(x).shape))

# %% [markdown]
# The attention inside is notebook 3's fused module (with GPT-2's names, `c_attn` for the fused
# query/key/value projection and `c_proj` for the output projection, and biases). Copy its weights into
# `MultiHeadAttention` and the two agree:

# %%
mha = MultiHeadAttention(config.n_embd, config.n_embd, config.block_size, dropout=0.0,
                         num_heads=config.n_head, qkv_bias=True)
mha.qkv.load_state_dict(attn.c_attn.state_dict())
mha.out_proj.load_state_dict(attn.c_proj.state_dict())
assert torch.allclose(mha(block.ln_1(x)), attn(block.ln_1(x)), atol=1e-6)
print("gpt.Attention == attention.MultiHeadAttention with the same weights")

# %% [markdown]
# ## The whole model
#
# Embeddings, the blocks, a final LayerNorm, and the head `lm_head`, a linear layer from `n_embd`
# to one score (logit) per vocabulary entry. GPT-2 *ties* the head to the token embedding: it is the
# same matrix, so a token's output score is the dot product of the final hidden state with that
# token's own embedding. Recomputed by hand, it matches `model(idx)`:

# %%
h = model.transformer.drop(tok_emb + pos_emb)
for blk in model.transformer.h:
    h = blk(h)
logits = model.lm_head(model.transformer.ln_f(h))
lib_logits, _ = model(idx)
assert torch.allclose(logits, lib_logits, atol=1e-5)
assert model.lm_head.weight is model.transformer.wte.weight  # tied: one tensor, two names
print("logits", tuple(lib_logits.shape), "= (batch, T, vocab_size)")

# %% [markdown]
# The logits at position $t$ score the token at position $t+1$. A softmax turns the last position's
# logits into a next-token distribution; training lowers the cross-entropy, the average of
# $-\ln p(\text{true next token})$. An untrained model spreads its probability almost evenly, so its
# loss starts near $\ln V$, with $V$ the vocabulary size:

# %%
probs = torch.softmax(lib_logits[0, -1], dim=-1)
top = torch.topk(probs, 5)
print("after 'the cat sat on the mat' the untrained model suggests:",
      [(tok.decode([int(i)]), round(float(p), 6)) for p, i in zip(top.values, top.indices, strict=True)])
_, loss = model(idx[:, :-1], targets=idx[:, 1:])
print(f"loss {loss.item():.3f}   ln(vocab_size) = {math.log(config.vocab_size):.3f}")

# %% [markdown]
# ## Presets and GPT-2 small
#
# `GPTConfig.preset(name)` gives the named shapes. Building a model on PyTorch's `meta` device creates
# every parameter with its shape but no memory and no initialisation, which is a quick way to count
# parameters of models too big to build casually:

# %%
print(f"{'preset':<12} {'layers':>6} {'heads':>5} {'width':>5} {'context':>7} {'parameters':>14}")
for name in PRESETS:
    cfg = GPTConfig.preset(name)
    with torch.device("meta"):
        n = GPT(cfg).num_params()
    print(f"{name:<12} {cfg.n_layer:>6} {cfg.n_head:>5} {cfg.n_embd:>5} {cfg.block_size:>7} {n:>14,}")

# %% [markdown]
# GPT-2 small for real (about 0.5 GB of float32 weights), and its `torchinfo` summary:

# %%
gpt2 = GPT(GPTConfig.preset("gpt2-124m")).eval()
print(summary(gpt2, input_data=torch.zeros(1, 8, dtype=torch.long), depth=3,
              col_names=("output_size", "num_params"), row_settings=("var_names",), verbose=0))

# %% [markdown]
# `torchinfo` reports 163,037,184 because it counts the tied matrix twice, once as `wte` and once as
# `lm_head`. There is only one such tensor: the model has **124,439,808** parameters, the size of the
# released GPT-2 small checkpoint (without tying it would indeed be 163M). Where they sit:

# %%
groups = {"token embedding (wte, tied head)": 0, "position embedding (wpe)": 0, "attention": 0,
          "feed-forward": 0, "LayerNorms": 0}
for name, p in gpt2.named_parameters():  # a tied parameter is listed once
    key = ("token embedding (wte, tied head)" if "wte" in name
           else "position embedding (wpe)" if "wpe" in name
           else "attention" if ".attn." in name
           else "feed-forward" if ".mlp." in name
           else "LayerNorms")
    groups[key] += p.numel()
total = sum(groups.values())
for key, n in groups.items():
    print(f"{key:<34} {n:>12,}  {n / total:6.1%}")
print(f"{'total':<34} {total:>12,}")
assert total == gpt2.num_params() == 124_439_808

c = gpt2.config
per_block = sum(p.numel() for p in gpt2.transformer.h[0].parameters())
assert per_block == 12 * c.n_embd**2 + 13 * c.n_embd  # 4d² attention + 8d² feed-forward, biases, norms
print(f"\none block: 12·d² + 13·d = {per_block:,} (d = {c.n_embd});",
      f"{c.n_layer} blocks = {c.n_layer * per_block:,}")
print(f"float32 weights: {total * 4 / 1e6:.0f} MB; training with AdamW keeps weights, gradients and two"
      f" moments: about {total * 16 / 1e9:.1f} GB before activations")
del gpt2

# %% [markdown]
# A third of the model is the embedding table, shared with the head; the blocks hold the rest, two
# thirds of each block in the feed-forward network.
#
# ## Untrained vs trained
#
# Time to see what training does. To learn anything in half a minute on a CPU the model must be
# small, and so must its vocabulary (a 50,257-row head would dominate the cost), so we use stage 1's
# own BPE trainer to learn a 512-token vocabulary from the first megabyte of the built-in
# Shakespeare corpus (one play is held out to measure the loss on unseen text).

# %%
docs = list(open_source("shakespeare"))
train_docs, val_doc = docs[:-1], docs[-1]
t0 = time.perf_counter()
bpe = train_bpe((d.text for d in train_docs), vocab_size=512, max_bytes=1_000_000)
print(f"{len(docs)} documents; held out: {val_doc.id}; tokenizer {bpe.name} learned in "
      f"{time.perf_counter() - t0:.1f} s")
print([bpe.decode([i]) for i in bpe.encode("ROMEO: But soft, what light through yonder window breaks?")])


def encode_docs(documents):
    """All documents as one tensor of token ids, each followed by the end-of-text token."""
    ids = []
    for d in documents:
        ids += bpe.encode(d.text) + [bpe.eot_id]
    return torch.tensor(ids)


train_ids, val_ids = encode_docs(train_docs), encode_docs([val_doc])
print(f"train {len(train_ids):,} tokens, validation {len(val_ids):,} tokens")

# %% [markdown]
# The model: the `tiny` preset cut down to 2 layers of width 64 with a context of 64 tokens, so that
# it takes several hundred optimizer steps in the time available. Before training its next-token
# distribution is nearly uniform, so it writes random tokens (a `�` is a token holding part of a
# UTF-8 character, with the rest of the character missing):

# %%
torch.manual_seed(0)
small = GPT(GPTConfig.preset("tiny", vocab_size=bpe.vocab_size, block_size=64, n_layer=2, n_embd=64))
print(f"{small.num_params():,} parameters")
prompt = torch.tensor([bpe.encode("ROMEO:\n")])


def sample(model, n=80):
    """Text the model writes after the prompt (seeded, so before and after are comparable)."""
    out = model.generate(prompt, n, temperature=0.8, top_k=50, generator=torch.Generator().manual_seed(1))
    return bpe.decode(out[0].tolist())


@torch.no_grad()
def val_loss(model, T=64, batches=8):
    """Mean loss on windows of the held-out play."""
    model.eval()
    starts = torch.linspace(0, len(val_ids) - T - 1, batches * 8).long()
    x = torch.stack([val_ids[s:s + T] for s in starts])
    y = torch.stack([val_ids[s + 1:s + T + 1] for s in starts])
    loss = model(x, y)[1].item()
    model.train()
    return loss


val_bytes = len(val_doc.text.encode("utf-8"))


def report(loss):
    """Validation loss per token and in bits per byte, a measure that does not depend on the tokenizer."""
    bits_per_byte = loss / math.log(2) * len(val_ids) / val_bytes
    print(f"validation loss {loss:.2f} per token = {bits_per_byte:.2f} bits per byte")


report(val_loss(small))
print(f"(ln 512 = {math.log(512):.2f}: the loss of a uniform guess)\n")
print(sample(small))

# %% [markdown]
# The training loop: take 32 random windows of 64 tokens, ask the model to predict each next token,
# step the AdamW optimizer. It stops after 800 steps or 30 seconds, whichever comes first (stage 4's
# `scratchllm train` is this loop plus a learning-rate schedule, mixed precision, evaluation and
# checkpoints). A model this small gains little from several CPU threads, and a single thread is
# not slowed down by other programs competing for the cores, so the loop runs on one.

# %%
def batch(B=32, T=64):
    """Random training windows and their next-token targets."""
    starts = torch.randint(len(train_ids) - T - 1, (B,))
    return (torch.stack([train_ids[s:s + T] for s in starts]),
            torch.stack([train_ids[s + 1:s + T + 1] for s in starts]))


SECONDS = 30  # the training budget
threads = torch.get_num_threads()
torch.set_num_threads(1)
opt = torch.optim.AdamW(small.parameters(), lr=1e-2, weight_decay=0.0)
losses, t0 = [], time.perf_counter()
small.train()
while len(losses) < 800 and time.perf_counter() - t0 < SECONDS:
    x, y = batch()
    _, loss = small(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(loss.item())
    if len(losses) % 100 == 0:
        print(f"step {len(losses):4d}  loss {loss.item():.3f}  {time.perf_counter() - t0:5.1f} s")
seconds = time.perf_counter() - t0
torch.set_num_threads(threads)
print(f"{len(losses)} steps in {seconds:.0f} s ({len(losses) * 32 * 64 / seconds:,.0f} tokens/s)")

fig, ax = plt.subplots()
ax.plot(losses)
ax.set_xlabel("step")
ax.set_ylabel("training loss")
plt.show()

# %%
report(val_loss(small))
print()
print(sample(small))

# %% [markdown]
# Half a minute of training on one CPU thread turns random tokens into something with the shape of a
# play: lines and line breaks, common short words, punctuation where it could go, but little sense
# yet. The loss has fallen far below $\ln 512$, and each further step down buys better text. That is
# stage 4: `scratchllm train` runs the same loop for longer, with a learning-rate schedule, mixed
# precision, evaluation, checkpoints and several GPUs, and `scratchllm generate` samples from the
# result with the KV cache described in `scratchllm/model/gpt.py`.
