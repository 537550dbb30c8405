"""How close `tokenize` gets to the encoder's own speed, and how BPE training compares with Hugging Face.

Every figure is a ratio against a baseline measured in the same run (best of --repeats timings each),
because the machine's speed drifts with whatever else runs on it.

1. Encoding the shakespeare corpus (--copies times over, as separate documents) with GPT-2's ranks:
   a bare loop of tiktoken's `encode_ordinary_batch` (one thread) on texts already in memory, the
   physical limit of this design, against `tokenize_to_dir` with one worker (which also counts bytes,
   appends EOT, converts to uint16 and writes train.bin/val.bin), and with two workers.
2. Learning a vocab of --vocab-size on the shakespeare corpus: our trainer against the Rust
   `tokenizers` BpeTrainer (byte-level, same GPT-4 split), time and bytes per token of both.

Run: python benchmarks/tokenize_throughput.py [--copies 4] [--repeats 3] [--vocab-size 8192] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from scratchllm.data.sources import open_source
from scratchllm.data.tokenize import tokenize_to_dir
from scratchllm.tokenizer import GPT4_PATTERN, Tokenizer, train_bpe
from scratchllm.tokenizer.parallel import default_workers


def best_of(repeats, fn):
    """Smallest wall time of `repeats` calls of fn(), and its last result."""
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def bench_encoding(texts, repeats, worker_counts):
    tok = Tokenizer.pretrained("gpt2")
    enc = tok.to_tiktoken()
    n_bytes = sum(len(t.encode()) for t in texts)
    base, ids = best_of(repeats, lambda: enc.encode_ordinary_batch(texts, num_threads=1))
    n_tokens = sum(len(x) for x in ids) + len(texts)
    rows = [("tiktoken encode_ordinary_batch, 1 thread", base)]
    with tempfile.TemporaryDirectory() as out:
        for workers in worker_counts:
            t, meta = best_of(repeats, lambda w=workers: tokenize_to_dir(
                texts, tok, out, val_docs=3, workers=w, quiet=True))
            assert meta["train"]["tokens"] + meta["val"]["tokens"] == n_tokens
            rows.append((f"tokenize_to_dir, {workers} worker{'s' * (workers > 1)}", t))
    print(f"encoding {n_bytes / 1e6:.1f} MB, {len(texts)} documents, {n_tokens:,} GPT-2 tokens")
    for name, t in rows:
        print(f"  {name:<42} {t:6.2f} s  {n_bytes / t / 1e6:6.2f} MB/s  {n_tokens / t / 1e6:5.2f} M tok/s")
    one = rows[1][1]
    print(f"  1 worker / bare tiktoken rate: {base / one:.2f}  (goal >= 0.85)")
    for (_, t), workers in zip(rows[2:], worker_counts[1:], strict=True):
        goal = "  (goal >= 1.6)" if workers == 2 else ""
        print(f"  {workers} workers / 1 worker rate:     {one / t:.2f}{goal}")


def bench_training(texts, vocab_size, repeats):
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    def ours():
        return train_bpe(texts, vocab_size, workers=default_workers())

    def theirs():
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        return hf

    t_hf, hf = best_of(repeats, theirs)
    t_ours, tok = best_of(repeats, ours)
    n_bytes = sum(len(t.encode()) for t in texts)
    bpt_ours = n_bytes / sum(len(x) for x in tok.encode_batch(texts))
    bpt_hf = n_bytes / sum(len(e.ids) for e in hf.encode_batch(texts))
    print(f"BPE training, vocab {vocab_size}, {n_bytes / 1e6:.1f} MB")
    print(f"  tokenizers BpeTrainer (Rust)   {t_hf:6.2f} s")
    print(f"  scratchllm train_bpe (Python)  {t_ours:6.2f} s   time ratio ours/HF: {t_ours / t_hf:.2f}  "
          "(goal <= 3)")
    print(f"  bytes/token on the corpus: ours {bpt_ours:.3f}, HF {bpt_hf:.3f}, ratio {bpt_ours / bpt_hf:.4f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=4, help="times the corpus is repeated for encoding")
    p.add_argument("--repeats", type=int, default=3, help="timings per measurement (the best is kept)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--workers", default="1,2", help="worker counts to time, comma-separated, starting at 1")
    args = p.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    assert worker_counts[0] == 1, "the first worker count is the baseline and must be 1"
    print(f"{default_workers()} cores available")
    texts = [d.text for d in open_source("shakespeare")]
    bench_encoding(texts * args.copies, args.repeats, worker_counts)
    bench_training(texts, args.vocab_size, args.repeats)


if __name__ == "__main__":
    main()
