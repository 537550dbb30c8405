"""The BPE trainer: a merge example worked by hand, a naive reference trainer, round trips, HF parity."""

from collections import Counter
from itertools import pairwise

import pytest

from scratchllm.tokenizer import Tokenizer, train_bpe
from scratchllm.tokenizer.bpe import GPT2_PATTERN, bpe, count_chunks, learn_merges, merges_from_ranks

TRICKY = [
    "",
    "Hello, world! Don't WE'LL it's 1234567 tokens?",
    "plane 0 \u00e9\u4e2d\u0915\u093f; plane 1 \U0001f600\U0001f469\u200d\U0001f4bb\U00010348; "
    "plane 2 \U00020000\U0002a6d6; plane 3 \U00030000; plane 14 \U000e0001; "
    "planes 15, 16 \U000f0000\U0010fffd",
    "combining: e\u0301 a\u0300\u0316 Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334 \ufeff",
    " " * 300 + "x" + "\t" * 50 + "\n" * 40 + "   \n  \n\t \r\n",
    "windows\r\nline\r\n\r\nendings\r",
    "NUL \x00 and control \x01\x02\x1b[31m\x7f\x80\x9f bytes",
    "a literal <|endoftext|> inside, twice<|endoftext|><|endoftext|>",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea \u0e44\u0e17\u0e22 "
    "\ud55c\uad6d\uc5b4 \u65e5\u672c\u8a9e",
]

CORPUS = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away quickly.\n"
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer\n"
    "Numbers 12345 and 2024-11-26, symbols <|endoftext|> and emoji \U0001f600\U0001f600 too.\n"
) * 20 + "".join(TRICKY)


def naive_merges(chunk_counts, num_merges):
    """The textbook trainer: recount every pair after every merge (same tie rule, same skip rule)."""
    words = {tuple(chunk): n for chunk, n in chunk_counts.items()}
    vocab = {b: bytes([b]) for b in range(256)}
    merges = []
    while len(merges) < num_merges:
        counts = Counter()
        for w, n in words.items():
            for pair in pairwise(w):
                counts[pair] += n
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ranked = [(p, c) for p, c in ranked if vocab[p[0]] + vocab[p[1]] not in vocab.values()]
        if not ranked:
            break
        (a, b), _ = ranked[0]
        new = 256 + len(merges)
        merges.append((a, b))
        vocab[new] = vocab[a] + vocab[b]
        merged = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    return merges


def test_hand_worked_merges():
    # "aaabdaaabac" (the classic example). Pair counts: aa 4, ab 2, others 1 -> merge aa = 256.
    # Left to right that gives [aa a b d aa a b a c]: (aa,a) and (a,b) both 2; tie -> smaller
    # pair (97, 98) = "ab" = 257. Then [aa ab d aa ab a c]: (256, 257) twice -> "aaab" = 258.
    assert learn_merges({b"aaabdaaabac": 1}, 10)[:3] == [(97, 97), (97, 98), (256, 257)]
    # Chunk weights count: "ab" appears 3 times against "cd" twice; then tie broken by id order.
    assert learn_merges({b"cd": 2, b"ab": 3}, 5) == [(97, 98), (99, 100)]
    assert learn_merges({b"cd": 1, b"ab": 1}, 1) == learn_merges({b"ab": 1, b"cd": 1}, 1) == [(97, 98)]
    # Overlapping runs: "aaaa" merges as (aa)(aa), then the two halves join.
    assert learn_merges({b"aaaa": 1}, 5) == [(97, 97), (256, 256)]


def test_count_chunks_uses_the_split():
    assert count_chunks(["hello hello world", "hello"], GPT2_PATTERN) == Counter(
        {b"hello": 2, b" hello": 1, b" world": 1})
    assert count_chunks(["abc", "def"], "gpt4", max_bytes=3) == Counter({b"abc": 1})


def test_max_bytes_cuts_the_last_text():
    assert count_chunks(["abc", "defgh"], "gpt4", max_bytes=5) == Counter({b"abc": 1, b"de": 1})
    assert count_chunks(["a\u00e9b"], "gpt4", max_bytes=2) == Counter({b"a": 1})  # half an é is dropped
    assert count_chunks(["abc"], "gpt4", max_bytes=0) == Counter()
    assert count_chunks(["a\u00e9b", "xyz"], "gpt4", max_bytes=2) == Counter({b"a": 1})  # and no more
    docs = CORPUS.splitlines(keepends=True)
    assert sum(len(c) * n for c, n in count_chunks(docs, max_bytes=1000).items()) == 1000


def test_count_chunks_in_workers_equals_one_process():
    docs = CORPUS.splitlines(keepends=True)
    assert count_chunks(docs, workers=2, batch_bytes=500) == count_chunks(docs)


def test_incremental_trainer_equals_naive_trainer():
    for pattern in ("gpt2", "gpt4"):
        chunks = count_chunks([CORPUS], pattern)
        assert learn_merges(dict(chunks), 300) == naive_merges(chunks, 300)


def test_train_bpe_layout_and_determinism():
    tok = train_bpe([CORPUS], 400)
    assert tok.vocab_size == 400 and tok.eot_id == 399 and len(tok.ranks) == 399
    # The merges depend only on the chunk counts: documents in another order give the same tokenizer.
    docs = CORPUS.split("\n")
    assert train_bpe(docs, 400).sha256() == train_bpe(docs[::-1], 400).sha256()
    # Tokens recovered from ranks give back the merges, in order.
    id_bytes = {i: b for b, i in tok.ranks.items()}
    assert [(tok.ranks[a], tok.ranks[b]) for a, b in merges_from_ranks(tok.ranks)] == tok._merges
    assert bpe(id_bytes[300], tok.ranks) == [id_bytes[300]]


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_round_trip_and_both_encoders_agree(pattern):
    tok = train_bpe([CORPUS], 600, pattern=pattern)
    for text in TRICKY:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.encode_reference(text) == ids
        assert tok.encode_to_numpy(text).tolist() == ids
        assert tok.eot_id not in ids
    assert len(tok.encode("<|endoftext|>")) > 1


def test_save_load(tmp_path):
    tok = train_bpe([CORPUS], 500)
    tok.save(tmp_path)
    back = Tokenizer.load(tmp_path)
    assert back.sha256() == tok.sha256() and back.pattern == tok.pattern
    assert back.special_tokens == {"<|endoftext|>": 499}
    assert [back.encode(t) for t in TRICKY] == [tok.encode(t) for t in TRICKY]


@pytest.mark.slow
def test_compression_close_to_huggingface_trainer():
    """Shakespeare, vocab 4096, trained on 39 texts: bytes per token on the other 3 within 2% of HF's."""
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    from scratchllm.data.sources import open_source
    from scratchllm.tokenizer import GPT4_PATTERN

    texts = [d.text for d in open_source("shakespeare")]
    train, held_out = texts[:-3], texts[-3:]
    ours = train_bpe(train, 4096)
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.train_from_iterator(train, trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    n_bytes = sum(len(t.encode()) for t in held_out)
    ours_bpt = n_bytes / sum(len(ids) for ids in ours.encode_batch(held_out))
    hf_bpt = n_bytes / sum(len(e.ids) for e in hf.encode_batch(held_out))
    assert hf.get_vocab_size() == ours.vocab_size == 4096
    assert abs(ours_bpt / hf_bpt - 1) < 0.02, (ours_bpt, hf_bpt)
    assert 3.0 < ours_bpt < 4.0
    # The conversion to HF `tokenizers` gives our ids exactly.
    assert [e.ids for e in ours.to_hf().encode_batch(held_out)] == ours.encode_batch(held_out)
