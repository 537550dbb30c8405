# %% [markdown]
# # 6 · Chat fine-tuning, by hand
#
# *Stage 5 of scratchllm: chat. Before, stage 4: [5 · a training step by hand](05_training_step_by_hand.ipynb).*
#
# A pre-trained GPT continues text. To make it *answer*, it is fine-tuned on conversations
# (supervised fine-tuning, SFT), with the same next-token loss as pre-training and two changes:
# a conversation is written out with special tokens that mark whose turn it is, and the loss is
# counted only on what the assistant says. This notebook renders a conversation to ids and its loss
# mask by hand and checks it against `scratchllm.tokenizer.chat` and transformers' chat template;
# computes the masked loss by hand and checks it against the model's; packs conversations into
# rows as `scratchllm sft` does; and takes SFT steps, checking that nothing is learned from the
# user's words.

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from jinja2 import Template

from scratchllm.chat.loader import IGNORE, best_fit, pack_row
from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.chat import (ASSISTANT_END, ASSISTANT_START, BOS, CHAT_TEMPLATE, USER_END,
                                       USER_START, render, render_prompt, with_chat_tokens)
from scratchllm.tokenizer.hf_fast import fast_tokenizer

# transformers imports tqdm's progress bars, which in Jupyter warn once when ipywidgets is missing.
warnings.filterwarnings("ignore", message="IProgress not found")
torch.manual_seed(0)
torch.set_num_threads(1)  # tiny models: one thread is as fast, and not slowed by other programs
plt.rcParams.update({"figure.figsize": (5, 2), "figure.dpi": 72, "font.size": 9})

# %% [markdown]
# ## The turn tokens
#
# Five special tokens frame the turns, as nanochat frames them: `<|bos|>` opens a conversation,
# `<|user_start|>` ... `<|user_end|>` hold the user's message, `<|assistant_start|>` ...
# `<|assistant_end|>` the assistant's. GPT-2's tokenizer has 50,257 ids; the five are added after
# them (50257..50261), which still fits the model's vocabulary padded to 50,304 rows, so a GPT-2
# model can learn them without growing. Typed inside a message, the same characters stay text.

# %%
gpt2 = Tokenizer.pretrained("gpt2")
tok = with_chat_tokens(gpt2)
special = {name: tok.special_tokens[name] for name in (BOS, USER_START, USER_END, ASSISTANT_START, ASSISTANT_END)}
print(special)
assert list(special.values()) == list(range(50257, 50262))
assert tok.encode("a literal <|user_end|> in a message") == gpt2.encode("a literal <|user_end|> in a message")

# %% [markdown]
# ## A conversation, rendered by hand
#
# There is no system turn: a system message opens the first user message, followed by a blank line.
# Each message is encoded on its own as plain text and framed by its turn tokens. The **loss mask**
# is 1 where the model should learn to write the token: the assistant's words and its
# `<|assistant_end|>` (so it learns when to stop), and 0 on everything else (the user's words are
# given, not predicted).

# %%
conversation = [
    {"role": "system", "content": "Answer in one line."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]

ids, mask = [special[BOS]], [0]
system = ""
for m in conversation:
    if m["role"] == "system":
        system = m["content"] + "\n\n"
    elif m["role"] == "user":
        words = tok.encode(system + m["content"])
        ids += [special[USER_START], *words, special[USER_END]]
        mask += [0] * (len(words) + 2)
        system = ""
    else:
        words = tok.encode(m["content"])
        ids += [special[ASSISTANT_START], *words, special[ASSISTANT_END]]
        mask += [0] + [1] * (len(words) + 1)

assert (ids, mask) == render(conversation, tok)  # the library renders it the same way
for i, m in zip(ids, mask, strict=True):
    print(f"{'learn' if m else '     '}  {i:>6}  {tok.decode([i])!r}")

# %% [markdown]
# The same layout is a Jinja template, which `scratchllm export` writes into the exported
# tokenizer, so that transformers' `apply_chat_template` gives exactly these ids. The text the
# template writes, and the ids transformers makes of it:

# %%
text = Template(CHAT_TEMPLATE).render(messages=conversation, add_generation_prompt=False)
print(text)
fast = fast_tokenizer(tok)
fast.chat_template = CHAT_TEMPLATE
hf_ids = fast.apply_chat_template(conversation, tokenize=True)
hf_ids = list(hf_ids["input_ids"] if hasattr(hf_ids, "keys") else hf_ids)
assert hf_ids == ids
# To ask for a reply, the prompt ends with <|assistant_start|>: the model takes over from there.
last_start = len(ids) - 1 - ids[::-1].index(special[ASSISTANT_START])
assert render_prompt(conversation[:-1], tok) == ids[: last_start + 1]

# %% [markdown]
# ## The masked loss
#
# Inputs and targets are the ids shifted by one, as in pre-training. A target whose mask is 0 is set
# to -1, which the model's cross-entropy ignores: the loss is the mean over the kept targets only.
# By hand: the negative log-probability of each kept target, averaged.

# %%
config = GPTConfig(vocab_size=50304, block_size=64, n_layer=2, n_head=2, n_embd=64)
model = GPT(config)
x = torch.tensor([ids[:-1]])
y = torch.tensor([[t if keep else IGNORE for t, keep in zip(ids[1:], mask[1:], strict=True)]])
logits, loss = model(x, y)

logp = F.log_softmax(logits.float(), dim=-1)[0]
kept = [(pos, t) for pos, t in enumerate(y[0].tolist()) if t != IGNORE]
by_hand = -sum(logp[pos, t] for pos, t in kept) / len(kept)
print(f"{len(kept)} of {len(ids) - 1} targets count; loss by hand {by_hand:.5f}, the model's {loss.item():.5f}")
assert torch.allclose(by_hand, loss, atol=1e-5)

# %% [markdown]
# Nothing is learned from a masked position: its logits get no gradient at all.

# %%
logits, loss = model(x, y)
logits.retain_grad()
loss.backward()
grad_norm = logits.grad[0].norm(dim=-1)
masked = torch.tensor([t == IGNORE for t in y[0].tolist()])
print(f"gradient on masked positions: {grad_norm[masked].max():.1e}; on kept ones: {grad_norm[~masked].min():.1e}")
assert grad_norm[masked].max() == 0 and grad_norm[~masked].min() > 0
model.zero_grad()

# %% [markdown]
# ## Packing conversations into rows
#
# Conversations have every length, and a batch is a rectangle of `B` rows of `block_size + 1`
# tokens. Padding each conversation to a row of its own wastes the rest of the row; `scratchllm sft`
# **packs** whole conversations into rows instead (never cutting one), best fit first: each goes
# into the open row with the least room that still holds it, and padding (target -1) fills what is
# left at the end of a row. Here, eight short conversations into rows of 33 tokens (the padding is
# id 0, which GPT-2 decodes as `!`):

# %%
rng = np.random.default_rng(0)
questions = ["Hi!", "How are you today?", "Seen any good plays?", "What is your name?",
             "Do you like Shakespeare?", "Is it raining?", "Tea or coffee?", "Good night."]
answers = ["Hello.", "Fine, thanks, and you?", "Hamlet, twice.", "I have none.",
           "Very much, the comedies above all.", "Not here.", "Tea.", "Sleep well."]
convs = [render([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tok)
         for q, a in zip(questions, answers, strict=True)]
lengths = [len(c[0]) for c in convs]
rows = best_fit(lengths, rng.permutation(len(convs)), capacity=33)
for row in rows:
    print(f"row: conversations {row}, {sum(lengths[c] for c in row)} of 33 tokens")
assert sorted(c for row in rows for c in row) == list(range(len(convs)))  # each once, whole
assert all(sum(lengths[c] for c in row) <= 33 for row in rows)

# %%
inputs, targets = pack_row(convs, rows[0], length=32)
print("input :", tok.decode(inputs.tolist()).replace("\n", " "))
print("learn :", repr(tok.decode([t for t in targets.tolist() if t != IGNORE])))

# Every row, position by position: what the model reads but does not learn (the turn tokens and the
# user's words), what it learns to write, and padding.
kinds = np.zeros((len(rows), 33), dtype=int)
for r, row in enumerate(rows):
    at = 0
    for c in row:
        kinds[r, at : at + lengths[c]] = 1 + np.asarray(convs[c][1])
        at += lengths[c]
plt.imshow(kinds, cmap=plt.matplotlib.colors.ListedColormap(["lightgrey", "tab:blue", "tab:orange"]), vmin=0, vmax=2)
plt.yticks(range(len(rows)), [f"row {r}" for r in range(len(rows))])
plt.xlabel("position (grey: padding, blue: read, orange: learned)")
plt.show()

# %% [markdown]
# Padding sits after the real tokens, so causal attention never lets a real token see it: the logits
# of the real positions are the same with the padding as without it.

# %%
real = sum(lengths[c] for c in rows[0]) - 1
with torch.no_grad():
    padded, _ = model(torch.from_numpy(inputs)[None])
    alone, _ = model(torch.from_numpy(inputs[:real])[None])
assert torch.allclose(padded[0, :real], alone[0], atol=1e-5)

# %% [markdown]
# ## SFT steps
#
# One batch of all the packed rows, and a few AdamW steps on it: the loss on the assistant's tokens
# falls. `scratchllm sft` does the same with the pre-training Trainer (checkpoints, exact resume,
# several processes), the `ConversationLoader` planning the packed rows of each epoch, and the
# held-out loss measured on the assistant's tokens of conversations it never trains on.

# %%
batch = [pack_row(convs, row, length=32) for row in rows]
xb = torch.from_numpy(np.stack([b[0] for b in batch]))
yb = torch.from_numpy(np.stack([b[1] for b in batch]))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
losses = []
for step in range(20):
    _, loss = model(xb, yb)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(" ".join(f"{v:.2f}" for v in losses[::4]), "->", f"{losses[-1]:.2f}")
assert losses[-1] < losses[0] - 2

# %% [markdown]
# What it learned from twenty steps on eight conversations: asked the first question, it answers in
# the shape it was shown (a few words, not always the right ones) and ends its turn.

# %%
model.eval()
asked = render_prompt([{"role": "user", "content": questions[0]}], tok)
out = model.generate(torch.tensor([asked]), 10, temperature=0, eot=special[ASSISTANT_END])[0, len(asked):].tolist()
print(repr(tok.decode([t for t in out if t != special[ASSISTANT_END]])), "then",
      "<|assistant_end|>" if special[ASSISTANT_END] in out else "no end")
