"""Byte-level byte-pair encoding, learned from scratch (Sennrich et al. 2016; GPT-2, Radford et al. 2019).

Training, in three steps:
1. Pre-tokenize: a regular expression cuts text into chunks (words with their leading space,
   numbers, punctuation runs, whitespace). Merges never cross a chunk boundary, and equal chunks
   are counted once, so a 5 MB corpus becomes a few tens of thousands of distinct chunks.
2. Count every adjacent pair of tokens inside the chunks, weighted by how often the chunk occurs,
   and remember which chunks hold each pair.
3. Repeatedly merge the most frequent pair into a new token. Only the chunks that hold that pair
   change, so only their pair counts are updated; a heap finds the next most frequent pair.
   Recounting every pair after every merge (the textbook loop) costs hours for an 8k vocabulary.
`learn_bpe` returns the merges; `encoding.train_bpe` makes a `Tokenizer` of them.

Tie rule: among pairs with the same count, the one with the smallest (left id, right id) wins.
It depends on nothing but the counts, so the same text and vocab size always give the same merges.

Encoding uses ranks: token bytes -> id, where a merged token's id is its merge order. Inside each
chunk, the adjacent pair whose joined bytes have the lowest rank is merged first, until no joined
pair is a token. This is what tiktoken does, so `encode_reference` below (pure Python, for reading)
and the fast tiktoken path give the same ids.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from itertools import pairwise

import regex

# GPT-2's split (tiktoken's faster, equivalent spelling of it).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's split (cl100k_base): case-insensitive contractions, digits in groups of at most three,
# newlines kept apart from other whitespace.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


def resolve_pattern(pattern: str) -> str:
    """A pattern name ('gpt2', 'gpt4') or a regular expression -> the regular expression."""
    return PATTERNS.get(pattern, pattern)


# Text of the kinds a split pattern meets: letters of several scripts, digits, a contraction,
# punctuation, runs of spaces, a tab and newlines, at the start and the end too.
_PROBE = " Hello, world! It's 2024.\n\n\tÜber  東京 🙂 x=1;y+=22  \r\n end  "


def check_pattern(pattern: str) -> None:
    """ValueError unless `pattern` compiles and cuts text into non-empty pieces that cover all of it.

    tiktoken panics (in Rust, with a backtrace of hundreds of lines) on a pattern that matches the
    empty string, and drops without a word any text that no piece covers.
    """
    try:
        compiled = regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"pattern is not a regular expression ({e})") from None
    pieces = [m.group() for m in compiled.finditer(_PROBE)]
    if compiled.fullmatch("") is not None or not all(pieces):
        raise ValueError("pattern matches the empty string; each piece must hold at least one character")
    if "".join(pieces) != _PROBE:
        raise ValueError("pattern leaves text out of its pieces (spaces or punctuation, say), which would be "
                         "lost in encoding")


def count_chunks(texts: Iterable[str], pattern: str = "gpt4", max_bytes: int | None = None,
                 workers: int = 1, batch_bytes: int = 1 << 20) -> Counter:
    """Count the distinct pre-tokenized chunks (as UTF-8 bytes) of `texts`, reading at most `max_bytes`."""
    from scratchllm.tokenizer.parallel import ordered_map

    counts: Counter = Counter()
    for part in ordered_map(_count_batch, _text_batches(texts, max_bytes, batch_bytes), workers, _set_pattern,
                            (resolve_pattern(pattern),)):
        counts.update(part)
    return counts


_split: Callable[[str], list[str]]  # how each counting process cuts text, set by _set_pattern


def _set_pattern(pattern: str) -> None:
    global _split
    _split = regex.compile(pattern).findall


def _count_batch(texts: list[str]) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        counts.update(_split(text))
    return Counter({chunk.encode("utf-8", errors="surrogatepass"): n for chunk, n in counts.items()})


def _text_batches(texts: Iterable[str], max_bytes: int | None, batch_bytes: int):
    batch: list[str] = []
    size = seen = 0
    for text in texts:
        room = None if max_bytes is None else max_bytes - seen
        if room is not None and room <= 0:
            break
        data = text.encode("utf-8", errors="surrogatepass")
        if room is not None and len(data) > room:
            # Cut the last text to the budget, dropping a character the cut splits.
            text = data[:room].decode("utf-8", errors="ignore")
            data = text.encode("utf-8")
            seen += room  # the cut text is the last, even if a byte short
        else:
            seen += len(data)
        batch.append(text)
        size += len(data)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def learn_merges(chunk_counts: dict[bytes, int], num_merges: int, progress=None) -> list[tuple[int, int]]:
    """Learn up to `num_merges` merges; merge i joins ids (a, b) into the new id 256 + i.

    Byte b starts as id b. Fewer merges come back when the text runs out of pairs. A pair whose
    joined bytes already form a token (possible through another split) is skipped, so every
    token has distinct bytes and the ranks stay a one-to-one map.
    """
    words = [list(chunk) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    token_bytes = [bytes([b]) for b in range(256)]
    known = set(token_bytes)

    stats: dict[tuple[int, int], int] = defaultdict(int)  # pair -> weighted count
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> chunks that may hold it
    for i, (w, f) in enumerate(zip(words, freqs, strict=True)):
        for pair in pairwise(w):
            stats[pair] += f
            where[pair].add(i)
    # Entries are (-count, pair); an entry is stale when the pair's count has moved since.
    heap = [(-c, pair) for pair, c in stats.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        if stats.get(pair, 0) != -neg or neg == 0:
            continue
        joined = token_bytes[pair[0]] + token_bytes[pair[1]]
        if joined in known:
            del stats[pair]
            continue
        merges.append(pair)
        token_bytes.append(joined)
        known.add(joined)
        touched = _merge_everywhere(pair, 255 + len(merges), words, freqs, stats, where)
        for p in touched:
            c = stats.get(p)
            if c is None:
                continue
            if c <= 0:
                del stats[p]
            elif p != pair:
                heapq.heappush(heap, (-c, p))
        if progress is not None:
            progress(1)
    return merges


def _merge_everywhere(pair: tuple[int, int], new_id: int, words: list[list[int]], freqs: list[int],
                      stats, where) -> set[tuple[int, int]]:
    """Rewrite every chunk that holds `pair` with new_id; return the pairs whose counts moved."""
    a, b = pair
    touched: set[tuple[int, int]] = set()
    for i in sorted(where.pop(pair)):
        merged = _merge_word(words[i], a, b, new_id, freqs[i], stats, touched)
        if merged is None:
            continue  # stale entry: an earlier merge already consumed this pair here
        words[i] = merged
        for p in pairwise(merged):
            if p[0] == new_id or p[1] == new_id:
                where[p].add(i)
    stats.pop(pair, None)
    return touched


def _merge_word(w: list[int], a: int, b: int, new_id: int, f: int, stats, touched) -> list[int] | None:
    """Merge every (a, b) in chunk w, left to right, updating only the pair counts next to each merge.

    At a merge, the left neighbour (as already rewritten) loses its pair with a and gains one with
    new_id; the right neighbour (as in the original) loses its pair with b and gains one with new_id.
    With "abab" -> X X this counts (b, a) -1, (X, a) +1 -1, (X, X) +1: exactly the change.
    Returns None when w holds no (a, b).
    """
    out: list[int] = []
    j, n = 0, len(w)
    while j < n:
        if j + 1 < n and w[j] == a and w[j + 1] == b:
            if out:
                prev = out[-1]
                stats[prev, a] -= f
                stats[prev, new_id] += f
                touched.add((prev, a))
                touched.add((prev, new_id))
            if j + 2 < n:
                nxt = w[j + 2]
                stats[b, nxt] -= f
                stats[new_id, nxt] += f
                touched.add((b, nxt))
                touched.add((new_id, nxt))
            out.append(new_id)
            j += 2
        else:
            out.append(w[j])
            j += 1
    return out if len(out) < n else None


def ranks_from_merges(merges: list[tuple[int, int]], byte_ids: list[int] | None = None) -> dict[bytes, int]:
    """Token bytes -> id for the 256 bytes (ids `byte_ids`, default 0..255) and then the merges."""
    byte_ids = list(range(256)) if byte_ids is None else list(byte_ids)
    vocab = {i: bytes([b]) for b, i in enumerate(byte_ids)}
    for k, (a, b) in enumerate(merges):
        vocab[256 + k] = vocab[a] + vocab[b]
    ranks = {tok: i for i, tok in vocab.items()}
    if len(ranks) != len(vocab):
        raise ValueError("two tokens have the same bytes")
    return ranks


def bpe(piece: bytes, ranks: dict[bytes, int], max_rank: int | None = None) -> list[bytes]:
    """Split one chunk into tokens: join the adjacent pair of lowest rank until none is a token.

    With `max_rank`, only tokens below that rank may be formed (used to recover merges from ranks).
    """
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best_rank is None or (max_rank is not None and best_rank >= max_rank):
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def encode_reference(text: str, ranks: dict[bytes, int], pattern: str) -> list[int]:
    """Encode ordinary text in pure Python (slow, for reading and for checking the fast path)."""
    ids: list[int] = []
    for chunk in regex.findall(resolve_pattern(pattern), text):
        piece = chunk.encode("utf-8")
        if piece in ranks:  # a chunk that is itself a token is taken whole, as tiktoken does
            ids.append(ranks[piece])
        else:
            ids.extend(ranks[p] for p in bpe(piece, ranks))
    return ids


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover the merge list (pairs of token bytes, in rank order) from ranks, for other libraries."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = bpe(token, ranks, max_rank=rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two earlier tokens")
        merges.append((parts[0], parts[1]))
    return merges


def learn_bpe(texts: Iterable[str], num_merges: int, pattern: str = "gpt4", max_bytes: int | None = None,
              progress: bool = False, workers: int = 1) -> list[tuple[int, int]]:
    """The merges of a byte-level BPE learned from `texts`: chunks counted (by `workers` processes), then
    `learn_merges`, with a progress bar if asked."""
    chunks = count_chunks(texts, pattern, max_bytes, workers)
    if not progress:
        return learn_merges(chunks, num_merges)
    from tqdm import tqdm

    with tqdm(total=num_merges, desc="merges", unit="merge", leave=False) as bar:
        return learn_merges(chunks, num_merges, bar.update)
