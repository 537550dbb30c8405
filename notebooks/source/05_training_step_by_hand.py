# %% [markdown]
# # 5 · A training step, by hand
#
# *Stage 4 of scratchllm: training. Before, stage 3: [4 · the GPT architecture](04_gpt_architecture.ipynb).*
#
# Training repeats one step many times: take a batch of token windows, let the model predict every
# next token, measure how wrong it was (the **loss**), compute the gradient of the loss with respect
# to every weight, and let the **optimizer** move the weights a little against it, by an amount the
# **learning-rate schedule** sets. This notebook computes each of these by hand and checks it against
# `scratchllm.train` and PyTorch: the cross-entropy, bits per byte, an AdamW step, Muon's
# Newton-Schulz iteration, the schedules, gradient accumulation. Then it trains the demo's model for
# two hundred steps, opens a checkpoint, resumes from it and checks that the resumed run continues
# exactly, and finally asks whether the loss it reached is any good.

# %%
import copy
import json
import math
import shutil
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from scratchllm.config import TrainConfig, build_config
from scratchllm.data.sources import open_source
from scratchllm.data.tokenize import tokenize_to_dir
from scratchllm.data.folder import TokenFolder
from scratchllm.data.loader import TokenLoader
from scratchllm.demo import DEMO_MODELS, DEMO_PRESET
from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.run.load import load_run
from scratchllm.tokenizer import train_bpe
from scratchllm.train import Trainer, lr_at, make_optimizer, train

# train() imports tqdm's progress bars, which in Jupyter warn once when ipywidgets is missing; the bars
# are off here anyway (quiet=True).
warnings.filterwarnings("ignore", message="IProgress not found")
# Models this small gain little from a second CPU thread, and one thread is not slowed down when other
# programs compete for the cores (two can be, many times over).
torch.set_num_threads(1)
torch.manual_seed(0)
torch.set_printoptions(precision=4, sci_mode=False, linewidth=110)
plt.rcParams.update({"figure.figsize": (4, 3), "figure.dpi": 72, "font.size": 9})

# %%
# The short training run below (the tests run this notebook with smaller numbers, to check it quickly)
STEPS = 200  # optimizer steps
EVAL_BATCHES = 20  # batches of 16 held-out windows in each evaluation

# %% [markdown]
# ## The data
#
# Stage 1 in three lines (see [notebook 0](00_byte_pair_encoding.ipynb)): a 1,024-token BPE learned
# on the first megabyte of 39 of the 42 texts of the built-in Shakespeare corpus, and a token folder
# with those 39 texts in its training shard and the last three plays, whole, in its validation shard
# (`train_000000.bin`, `val_000000.bin`: a corpus this small fits one shard of each).

# %%
work = Path(tempfile.mkdtemp(prefix="scratchllm-training-"))  # data, runs (removed at the end)
docs = list(open_source("shakespeare"))
tok = train_bpe((d.text for d in docs[:-3]), vocab_size=1024, max_bytes=1_000_000)
meta = tokenize_to_dir(docs, tok, work / "tokens", val_docs=3, quiet=True)
folder = TokenFolder.open(work / "tokens")
train_tokens, val_tokens = folder.train, folder.val
V = tok.vocab_size
print(f"{tok}; train {meta['train']['tokens']:,} tokens, val {meta['val']['tokens']:,} tokens "
      f"({meta['val']['bytes']:,} bytes)")

# %% [markdown]
# A batch is `B` windows of `T + 1` consecutive tokens from random places in the training tokens:
# the first `T` are the input, the last `T` the targets, the same tokens shifted by one. So one window gives
# `T` predictions, each from a longer prefix than the one before.

# %%
loader = TokenLoader(train_tokens, batch_size=4, block_size=8, seed=0)
x, y = loader.next_batch()
print("x", tuple(x.shape), "\n", x[:2], "\ny\n", y[:2])
print(repr(tok.decode(x[0])), "->", repr(tok.decode(y[0, -1:])))

# %% [markdown]
# ## The loss: cross-entropy, by hand
#
# For every position the model outputs `V` numbers, the **logits**. A softmax turns them into
# probabilities; the loss at that position is $-\ln p(\text{true next token})$, and the loss of the
# batch is the mean over all positions. Subtracting the largest logit first changes nothing
# mathematically but keeps `exp` from overflowing. Random logits as an example:

# %%
logits = torch.randn(4, 8, V) * 3
z = logits.reshape(-1, V)  # one row per position
t = y.reshape(-1)  # the true next token of each position
z = z - z.max(dim=-1, keepdim=True).values
log_probs = z - z.exp().sum(dim=-1, keepdim=True).log()  # log softmax
loss_by_hand = -log_probs[torch.arange(len(t)), t].mean()
reference = F.cross_entropy(logits.reshape(-1, V), t)
print(f"by hand {loss_by_hand:.6f}   F.cross_entropy {reference:.6f}   (ln V = {math.log(V):.2f})")
assert torch.allclose(loss_by_hand, reference)

# %% [markdown]
# The model computes the same thing when it is given targets. A GPT-2-style model (the `tiny`
# preset, cut down) starts with small random weights, so its logits are small and its prediction
# almost uniform:

# %%
gpt2_style = GPT(GPTConfig.preset("tiny", vocab_size=V, n_layer=2, n_embd=64, block_size=64))
logits, loss = gpt2_style(x, y)
by_hand = -torch.log_softmax(logits.reshape(-1, V), dim=-1)[torch.arange(len(t)), t].mean()
assert torch.allclose(loss, by_hand, atol=1e-6)
print(f"GPT-2-style model at step 0: loss {loss:.4f}; ln V = ln {V} = {math.log(V):.4f}")

# %% [markdown]
# **A loss of ln V at step 0.** The random logits above, spread by ±3, cost far more than ln V: they
# are confident and wrong. If the model gives every one of the `V` tokens probability `1/V`,
# every position costs $-\ln(1/V) = \ln V$: 6.93 for 1,024 tokens, 10.82 for GPT-2's 50,257. A fresh
# model should start there. Much higher means the initial logits are too large, so the model is
# confidently wrong before it has learned anything; the loss curve then starts with a jump down that
# is only undoing the initialisation. The demo's model (the speedruns' recipe, `tiny-modern`)
# starts its output layer at exactly zero, so its first prediction is exactly uniform:

# %%
cfg = build_config(DEMO_PRESET, sets=[f"model.vocab_size={V}", *DEMO_MODELS[-1]])
print(f"the demo's smallest shape: {cfg.model.n_layer} layers, {cfg.model.n_embd} wide, {cfg.model.n_head} "
      f"heads, context {cfg.model.block_size}")
torch.manual_seed(cfg.train.seed)
model = GPT(cfg.model)
_, loss = model(x, y)
print(f"{model.num_params():,} parameters; loss at step 0 {loss:.6f} = ln V {math.log(V):.6f}")
assert abs(loss.item() - math.log(V)) < 1e-5

# %% [markdown]
# `e^loss`, the **perplexity**, reads as "as unsure as a uniform choice among that many tokens":
# 1,024 at the start.
#
# ## Bits per byte
#
# A loss per token depends on the tokenizer: a larger vocabulary makes fewer, harder predictions.
# Dividing by ln 2 turns nats into bits, and multiplying by tokens per byte spreads them over the
# text: **bits per byte** compares models with any tokenizers, and with compression programs too
# (a model's loss *is* a compressed size: an arithmetic coder driven by its predictions would spend
# that many bits). The uniform guess over our 1,024 tokens, and gzip at its best setting, on the
# held-out plays:

# %%
def bits_per_byte(loss, tokens=meta["val"]["tokens"], n_bytes=meta["val"]["bytes"]):
    """Nats per token -> bits per UTF-8 byte of the text those tokens encode."""
    return loss / math.log(2) * tokens / n_bytes


val_text = "".join(d.text for d in docs[-3:]).encode("utf-8")
gzip_bpb = 8 * len(zlib.compress(val_text, 9)) / len(val_text)
print(f"{meta['val']['bytes'] / meta['val']['tokens']:.2f} bytes per token; a uniform guess: "
      f"{bits_per_byte(math.log(V)):.2f} bits per byte; gzip -9: {gzip_bpb:.2f}; raw bytes: 8")

# %% [markdown]
# ## One AdamW step, by hand
#
# The gradient says which way each weight should move; AdamW (Kingma & Ba 2015; Loshchilov & Hutter
# 2019) decides how far. For each weight it keeps two running averages, of the gradient $g$ (the
# momentum $m$) and of its square ($v$), and moves by $m / \sqrt{v}$: the step size no longer
# depends on the gradient's scale, only on how consistent its sign has been. Step $t$ (from 1):
#
# $$m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
# \hat m = \frac{m}{1-\beta_1^t},\quad \hat v = \frac{v}{1-\beta_2^t}$$
# $$\theta \leftarrow \theta - \eta\lambda\theta - \eta\,\frac{\hat m}{\sqrt{\hat v} + \epsilon}$$
#
# The hats undo the averages' start at zero. The weight decay $\lambda$ is *decoupled* (the "W"):
# it shrinks the weights directly instead of being added to the gradient, where Adam's scaling would
# weaken it. `make_optimizer` applies it to matrices only: pulling LayerNorm gains and biases towards
# zero has no good reason. Two steps by hand, against the library's optimizer on a copy of the model:

# %%
tc = TrainConfig(optimizer="adamw", lr=1e-3, warmup_steps=0, max_steps=100, weight_decay=0.1, grad_clip=0.0)
hand = GPT(GPTConfig.preset("tiny", vocab_size=V, n_layer=2, n_embd=64, block_size=64))
lib = copy.deepcopy(hand)
opt = make_optimizer(lib, tc)
adamw = opt.optimizers["adamw"]
print(type(adamw).__name__, [(len(g["params"]), g["weight_decay"]) for g in adamw.param_groups],
      "(parameters, weight decay) per group")
moments = {p: (torch.zeros_like(p), torch.zeros_like(p)) for p in hand.parameters()}
batches = TokenLoader(train_tokens, batch_size=8, block_size=64, seed=1)
for step in range(2):
    x, y = batches.next_batch()
    for model_ in (hand, lib):
        model_(x, y)[1].backward()
    opt.schedule(step)  # sets this step's learning rate
    opt.step()
    opt.zero_grad()

    lr, (beta1, beta2), eps, t = lr_at(step, tc), (tc.beta1, tc.beta2), 1e-8, step + 1
    with torch.no_grad():
        for p in hand.parameters():
            m, v = moments[p]
            m.mul_(beta1).add_((1 - beta1) * p.grad)
            v.mul_(beta2).add_((1 - beta2) * p.grad**2)
            m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
            decay = tc.weight_decay if p.dim() >= 2 else 0.0
            p.sub_(lr * decay * p)
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
            p.grad = None

gap = max((a - b).abs().max().item() for a, b in zip(hand.parameters(), lib.parameters(), strict=True))
print(f"largest difference between the hand-made AdamW and torch.optim.AdamW after 2 steps: {gap:.1e}")
# Rounding only, but divided by sqrt(v) + eps it grows where a gradient is as tiny as eps (the attention
# keys' biases: adding the same number to every score of a row does not change its softmax).
assert gap < 1e-2 * tc.lr

# %% [markdown]
# At the first step $\hat m / \sqrt{\hat v} = g / |g| = \pm 1$: every weight moves by almost exactly
# the learning rate, whatever its gradient. That is why Adam needs a warm-up, a few steps at a lower
# rate while $v$ learns the gradients' scale.
#
# ## Muon: orthogonalised updates
#
# The demo's model trains its blocks' weight matrices with Muon (Jordan et al. 2024), and the rest
# (embeddings, head, norm gains) with AdamW. Muon looks at a matrix's update as a whole. A gradient
# matrix is dominated by a few directions: its singular values span orders of magnitude. Muon
# replaces the update $G = U S V^\top$ by $U V^\top$, the same directions with every singular value
# set to 1, so that rare directions move as much as common ones. An SVD per matrix per step would be
# slow; the Newton-Schulz iteration gets close with five matrix products. Scale $X = G / \|G\|_F$ so
# all singular values are at most 1, then repeat
#
# $$A = X X^\top, \qquad X \leftarrow aX + (bA + cA^2)\,X$$
#
# which maps every singular value $s$ to $as + bs^3 + cs^5$. Keller Jordan's coefficients
# $(a, b, c) = (3.4445, -4.7750, 2.0315)$ make that polynomial grow small values fast and send all of
# them into a band around 1 (not exactly 1: speed matters more here than precision).
#
# A real gradient of one of the model's matrices: not at step 0, where the zero output layer lets no
# gradient through to the blocks, but after five steps of the library's `Trainer`.

# %%
warm = Trainer(cfg.apply_sets(["train.dtype=float32"]), train_tokens)
for _ in range(5):
    warm.step()
model = warm.model
x, y = TokenLoader(train_tokens, batch_size=16, block_size=cfg.model.block_size, seed=2).next_batch()
model(x, y)[1].backward()
name, W = next((n, p) for n, p in model.named_parameters() if n.endswith("mlp.c_fc.weight"))
G = W.grad.clone()
print(name, tuple(G.shape))


def newton_schulz(G, steps=5, a=3.4445, b=-4.7750, c=2.0315):
    """The iteration above, on the wide orientation (fewer rows than columns: a smaller A)."""
    X = G.T if G.shape[0] > G.shape[1] else G
    X = X / X.norm().clamp(min=1e-7)
    history = [X]
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
        history.append(X)
    return (X.T if G.shape[0] > G.shape[1] else X), history


O, history = newton_schulz(G)
fig, ax = plt.subplots()
for k, X in enumerate(history):
    ax.semilogy(torch.linalg.svdvals(X), label=f"{k} iterations", lw=1)
ax.set_xlabel("singular value, largest first")
ax.legend(fontsize=7)
ax.set_title("Newton-Schulz: singular values of X")
plt.show()
s = torch.linalg.svdvals(O)
U, _, Vh = torch.linalg.svd(G, full_matrices=False)
s_G = torch.linalg.svdvals(G)
print(f"gradient: singular values from {s_G.min():.1e} to {s_G.max():.1e}")
print(f"after 5 iterations: from {s.min():.3f} to {s.max():.3f}; cosine with U·Vᵀ "
      f"{F.cosine_similarity(O.flatten(), (U @ Vh).flatten(), dim=0):.3f}")
assert 0.6 < s.min() and s.max() < 1.25

# %% [markdown]
# Muon's step adds momentum before the iteration (and Nesterov's look-ahead), and scales the result
# for the matrix's shape: with momentum $\mu$ and a buffer $B$ starting at zero,
#
# $$B \leftarrow \mu B + (1-\mu) G,\quad \tilde G = (1-\mu) G + \mu B,\quad
# W \leftarrow W(1-\eta\lambda) - \eta\,\sqrt{\max(1, \mathrm{rows}/\mathrm{cols})}\;\mathrm{NS}(\tilde G)$$
#
# One step of the library's optimizer (`train.optimizer = "muon"`), against the hand-made update of
# every matrix it owns:

# %%
tc = TrainConfig(optimizer="muon", muon_lr=0.02, muon_momentum=0.95, muon_momentum_warmup=0, lr=3e-3,
                 warmup_steps=0, schedule="wsd", max_steps=100, grad_clip=0.0)
opt = make_optimizer(model, tc)
print("tensors per optimizer:", {n: sum(len(g["params"]) for g in o.param_groups)
                                 for n, o in opt.optimizers.items()})
muon_params = opt.optimizers["muon"].param_groups[0]["params"]
before = {p: p.detach().clone() for p in muon_params}
opt.schedule(0)
opt.step()
mu, lr, wd = tc.muon_momentum, tc.muon_lr, tc.muon_weight_decay
for p in muon_params:
    g = p.grad
    buf = (1 - mu) * g  # from a zero buffer
    update = (1 - mu) * g + mu * buf
    rows, cols = p.shape
    expected = before[p] * (1 - lr * wd) - lr * max(1, rows / cols) ** 0.5 * newton_schulz(update)[0]
    assert torch.allclose(p.detach(), expected, atol=1e-6)
applied = (before[W] - W.detach()) / (lr * max(1, W.shape[0] / W.shape[1]) ** 0.5)
s = torch.linalg.svdvals(applied)
print(f"the library's Muon step == by hand for all {len(muon_params)} matrices; the update applied to "
      f"{name} has singular values {s.min():.3f} .. {s.max():.3f}")
opt.zero_grad()

# %% [markdown]
# ## Learning-rate schedules
#
# The learning rate changes over the run. Both schedules start with a linear **warm-up**. **Cosine**
# (GPT-2, nanoGPT) then decays along half a cosine to `min_lr` at `max_steps`. **WSD**
# (warm-up, stable, decay; the speedruns and the demo) holds the peak and decays linearly over the
# last `cooldown_frac` of the steps: a run can be continued from any point of the stable phase, and
# the decay at the end brings a large part of the gain. The library's `lr_at`, plotted, and checked
# against the cosine formula written out:

# %%
steps = np.arange(1000)
cosine = TrainConfig(schedule="cosine", lr=1e-3, min_lr=1e-4, warmup_steps=50, max_steps=1000)
wsd = TrainConfig(schedule="wsd", lr=1e-3, min_lr=1e-4, warmup_steps=50, max_steps=1000, cooldown_frac=0.4)
fig, ax = plt.subplots()
for name, c in (("cosine", cosine), ("wsd", wsd)):
    ax.plot(steps, [lr_at(int(s), c) for s in steps], label=name)
ax.set_xlabel("optimizer step")
ax.set_ylabel("learning rate")
ax.legend()
plt.show()

for s in range(50, 1000):
    progress = (s - 50) / (1000 - 50)
    assert math.isclose(lr_at(s, cosine), 1e-4 + 0.5 * (1 + math.cos(math.pi * progress)) * (1e-3 - 1e-4))
print("lr_at(step, cosine) == min_lr + ½(1 + cos(π·progress))·(lr - min_lr) after the warm-up")

# %% [markdown]
# ## Gradient accumulation = a bigger batch
#
# A batch too big for memory can be cut into `grad_accum` micro-batches: run forward and backward on
# each, dividing its loss by their number, and let the gradients add up before the one optimizer
# step. The mean loss over 8 windows is the mean of the mean losses of 4 micro-batches of 2, and
# the gradient is linear, so the gradients are the same (up to rounding):

# %%
torch.manual_seed(0)
model = GPT(cfg.model)
x, y = TokenLoader(train_tokens, batch_size=8, block_size=cfg.model.block_size, seed=3).next_batch()
model(x, y)[1].backward()
big = {n: p.grad.clone() for n, p in model.named_parameters()}
model.zero_grad()
for k in range(4):
    sl = slice(2 * k, 2 * k + 2)
    (model(x[sl], y[sl])[1] / 4).backward()
gap = max((big[n] - p.grad).abs().max().item() for n, p in model.named_parameters())
print(f"batch of 8 vs 4 accumulated micro-batches of 2: largest gradient difference {gap:.1e}")
assert all(torch.allclose(big[n], p.grad, atol=1e-6) for n, p in model.named_parameters())

# %% [markdown]
# The library's `Trainer.step` does the same. Its loader numbers micro-batches so that, in
# sequential order, batch size 8 and batch size 2 × 4 accumulated read the same windows; one step of
# each from the same seed ends with the same weights:

# %%
def one_step(batch_size, grad_accum):
    """The weights after one Trainer step of the demo's model with this batch split."""
    c = cfg.apply_sets([f"train.batch_size={batch_size}", f"train.grad_accum={grad_accum}",
                        "train.order=sequential", "train.dtype=float32"])
    trainer = Trainer(c, train_tokens)
    trainer.step()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


one, accumulated = one_step(8, 1), one_step(2, 4)
gap = max((one[n] - accumulated[n]).abs().max().item() for n in one)
print(f"Trainer: 8 x 1 vs 2 x 4, largest weight difference after one step {gap:.1e}")
assert gap < 1e-5

# %% [markdown]
# ## A short run of the demo's model
#
# Now the real thing: `scratchllm.train.train`, the function behind `scratchllm train`, on the token
# folder, with the demo's model and recipe (Muon and AdamW, the WSD schedule) for two hundred
# steps of 16 windows of 128 tokens, in the precision the library picks for this CPU (bfloat16 where
# it has bf16 instructions, float32 elsewhere). It evaluates on held-out windows four times, and
# saves a checkpoint five steps before the end and one at the end. First, what the untrained model
# writes (the run seeds its weights from `train.seed`, so this is the run's step 0):

# %%
run_cfg = cfg.apply_sets([f"train.max_steps={STEPS}", f"train.eval_every={STEPS // 4}",
                          f"train.eval_batches={EVAL_BATCHES}", f"train.ckpt_every={STEPS - 5}",
                          "train.log_every=1", "train.sample_tokens=0", "train.device=cpu"])
prompt = torch.tensor([tok.encode("KING.\n")])


def sample(model):
    """80 tokens the model writes after the prompt (seeded, so before and after are comparable)."""
    out = model.generate(prompt, 80, temperature=0.8, top_k=50, generator=torch.Generator().manual_seed(0))
    return tok.decode(out[0].tolist())


torch.manual_seed(run_cfg.train.seed)
print(sample(GPT(run_cfg.model)))

# %%
run = work / "run"
t0 = time.perf_counter()
summary = train(run_cfg, work / "tokens", run, quiet=True)
seconds = time.perf_counter() - t0
print(f"{summary['step']} steps in {seconds:.0f} s in {summary['dtype']}; "
      f"validation loss {summary['val_loss']:.3f}, {summary['val_bpb']:.3f} bits per byte")
assert math.isclose(summary["val_bpb"], bits_per_byte(summary["val_loss"]))  # the formula above

rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
steps_, losses = zip(*[(r["step"], r["loss"]) for r in rows if "loss" in r], strict=True)
evals = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
fig, ax = plt.subplots()
ax.plot(steps_, losses, lw=0.8, label="training batch")
ax.plot(list(evals), list(evals.values()), "o-", label="held-out plays")
ax.set_xlabel("optimizer step")
ax.set_ylabel("loss (nats per token)")
ax.legend()
plt.show()
_, trained, _ = load_run(run)  # the newest checkpoint, as `scratchllm generate` loads it
print(sample(trained))

# %% [markdown]
# The first evaluation, at step 0, is ln V, as promised. After two hundred steps the model has
# learned the shape of a play (a speaker's name on a line of its own, verse lines, short common
# words, punctuation) but not yet much sense; the demo trains the same recipe for six minutes, and
# `scratchllm train` for as long as you like. `metrics.jsonl`, which the plot read, has one JSON
# object a line: training lines with the step, loss, learning rate, tokens and speed, evaluation
# lines with the validation loss and bits per byte.
#
# ## What a checkpoint holds
#
# Each checkpoint is a folder of three files: the weights as safetensors (tensors only, nothing that
# runs code when loaded), the optimizers' state, and `state.json` with the rest.

# %%
ckpt = run / "ckpt" / f"step_{STEPS}"
for f in sorted(ckpt.iterdir()):
    print(f"{f.name:18} {f.stat().st_size:>10,} bytes")
with safe_open(ckpt / "model.safetensors", framework="pt") as weights:
    names = list(weights.keys())
    n_weights = sum(math.prod(weights.get_slice(n).get_shape()) for n in names)
print(f"\nmodel.safetensors: {len(names)} tensors, {n_weights:,} numbers, e.g. {names[:3]}")

optim = torch.load(ckpt / "optimizer.pt", weights_only=True)  # tensors and plain types only: no code
for name, o in optim.items():
    first = next(iter(o["state"].values()))
    print(f"optimizer.pt[{name!r}]: {len(o['state'])} parameters' state, each {sorted(first)}")

state = json.loads((ckpt / "state.json").read_text())
print("\nstate.json:", {k: state[k] for k in ("step", "tokens", "dtype", "val_loss", "loader")})
print("           and", sorted(set(state) - {"step", "tokens", "dtype", "val_loss", "loader"}))

# %% [markdown]
# Adam's two moments per weight (`exp_avg`, `exp_avg_sq`) make the optimizer state twice the size of
# the model; Muon keeps one momentum buffer per matrix. `state.json` holds everything else a step
# depends on: the step number (which sets the learning rate), the loader's position (the whole
# position is one number: windows are drawn from a generator seeded by the batch number), every
# random generator's state, and the size and SHA-256 of the other two files, checked before a
# checkpoint is used.
#
# ## A resume that continues exactly
#
# Copy the checkpoint taken five steps before the end into an empty run folder, and continue from it
# with `train(..., resume=True)`, as `scratchllm train --resume` does. The last five steps must come
# out exactly as in the uninterrupted run: the same losses and, bit for bit, the same weights.

# %%
resumed = work / "resumed"
shutil.copytree(run / "ckpt" / f"step_{STEPS - 5}", resumed / "ckpt" / f"step_{STEPS - 5}")
summary2 = train(run_cfg, work / "tokens", resumed, resume=True, quiet=True)
rows2 = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
tail = [(r["step"], r["loss"]) for r in rows if "loss" in r and r["step"] > STEPS - 5]
tail2 = [(r["step"], r["loss"]) for r in rows2 if "loss" in r]
print("uninterrupted:", tail, "\nresumed:      ", tail2)
assert tail2 == tail and summary2["val_loss"] == summary["val_loss"]
a = load_file(ckpt / "model.safetensors")
b = load_file(resumed / "ckpt" / f"step_{STEPS}" / "model.safetensors")
assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
print(f"the resumed run's final weights equal the uninterrupted run's, all {len(a)} tensors, bit for bit")

# %% [markdown]
# ## Is my loss normal?
#
# A loss means little alone. Three baselines that need no neural network at all, in bits per byte:
#
# - the **uniform guess**, every token equally likely: ln V nats per token;
# - a **unigram model**: every token as likely as it is frequent in the training tokens, whatever came
#   before (add-one smoothing keeps a token never seen in training from costing infinity). Its loss
#   on the held-out tokens is the cross-entropy $-\frac{1}{N}\sum_i \ln p(t_i)$;
# - **gzip**, which finds repeated strings but knows nothing of English.
#
# A model that does not get below the unigram line after a few dozen steps has learned token
# frequencies and nothing else: the learning rate, the data or the masking is worth a look.

# %%
counts = np.bincount(np.asarray(train_tokens), minlength=V) + 1
log_p = np.log(counts / counts.sum())
unigram = -log_p[np.asarray(val_tokens)].mean()
bpb = {r["step"]: r["val_bpb"] for r in rows if "val_bpb" in r}
print(f"bits per byte: uniform {bits_per_byte(math.log(V)):.2f}, unigram {bits_per_byte(unigram):.2f}, "
      f"gzip {gzip_bpb:.2f}, the model {', '.join(f'{b:.2f}' for b in bpb.values())} (steps {list(bpb)})")
assert unigram < math.log(V)
assert abs(evals[0] - math.log(V)) < 1e-3  # step 0: the uniform guess, exactly

fig, ax = plt.subplots()
ax.axhline(bits_per_byte(math.log(V)), color="grey", ls="--", label=f"uniform guess ({V} tokens)")
ax.axhline(bits_per_byte(unigram), color="tab:orange", ls=":", label="unigram model")
ax.axhline(gzip_bpb, color="tab:green", ls="-.", label="gzip -9")
ax.plot(list(bpb), list(bpb.values()), "o-", label="the model")
ax.set_xlabel("optimizer step")
ax.set_ylabel("bits per byte, held-out plays")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# The model leaves the uniform line at once, passes the unigram model (it learns frequencies first)
# and, within two hundred steps on a CPU, compresses Shakespeare better than gzip. The remaining
# distance to zero is not all learnable, since text has real uncertainty; large models reach well
# under one bit per byte on English. `scratchllm demo` trains this recipe for six minutes (with a
# 4,096-token vocabulary, and a larger shape where the CPU allows), and the same loop with a bigger
# model, a GPU and FineWeb-Edu is GPT-2 small's training (`configs/gpt2-124m-fineweb.toml`).

# %%
shutil.rmtree(work)
