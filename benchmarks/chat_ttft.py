"""Time to first token at each turn of a conversation: the session's KV cache kept vs recomputed.

    python benchmarks/chat_ttft.py [--preset gpt2-124m] [--turns 5] [--user-tokens 60] [--reply-tokens 60]

A random-weight model of the preset with GPT-2's tokenizer and the chat tokens. Each turn sends a
user message of about --user-tokens tokens and lets the model reply greedily. With the cache kept
(`Session`, as `scratchllm chat` does) a turn prefills only its new message; recomputing, a fresh
session prefills the whole conversation so far. The time is from sending the message to the reply's
first token (its text may wait for more when a character spans tokens); each mode's figure is
printed with its ratio to the same mode's turn 1, measured in the same run (best of --repeats).
Both modes must sample the same first token.
"""

from __future__ import annotations

import argparse
import time

import torch

from scratchllm.chat.engine import Engine, Sampling
from scratchllm.config import GPTConfig
from scratchllm.model.gpt import GPT
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.chat import with_chat_tokens

WORDS = ("the quick brown fox jumps over a lazy dog while seven tired sailors sing of distant harbours "
         "and the wind keeps turning the old mill by the river").split()


def message(tok: Tokenizer, n_tokens: int, turn: int) -> str:
    """A user message of about n_tokens tokens (different at each turn)."""
    words, i = [], turn
    while len(tok.encode(" ".join(words))) < n_tokens:
        words.append(WORDS[i % len(WORDS)])
        i += 7
    return " ".join(words)


def first_token(session, text: str, params: Sampling) -> tuple[float, list[int], object]:
    """(seconds from sending text to the reply's first token, that token, (the stream, its pieces))."""
    t0 = time.perf_counter()
    stream = session.ask(text, params)
    pieces = iter(stream)
    while stream.ttft is None and next(pieces, None) is not None:
        pass
    assert stream.ttft is not None
    return stream.started + stream.ttft - t0, stream.ids[:1], (stream, pieces)


def conversation(engine: Engine, args) -> dict[str, list[float]]:
    """One conversation of args.turns turns; seconds to first text per turn, for each mode."""
    params = Sampling(temperature=0, max_new_tokens=args.reply_tokens)
    kept = engine.session()
    times: dict[str, list[float]] = {"cache kept": [], "recomputed": []}
    for turn in range(args.turns):
        text = message(engine.tok, args.user_tokens, turn)
        fresh = engine.session()  # the same turns, an empty cache: it prefills everything
        fresh.turns = [(t, list(r)) for t, r in kept.turns]
        seconds, token_fresh, _ = first_token(fresh, text, params)
        times["recomputed"].append(seconds)
        seconds, token, (stream, pieces) = first_token(kept, text, params)
        times["cache kept"].append(seconds)
        assert token == token_fresh, "the cached and recomputed replies differ"
        for _ in pieces:  # the rest of the reply joins the conversation
            pass
        if args.verbose:
            print(f"  turn {turn + 1}: {len(stream.prompt)} tokens of conversation, "
                  f"{len(stream.prompt) - stream.cached_tokens} prefilled with the cache")
    return times


def main() -> None:
    """Run the benchmark and print a table of times and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--user-tokens", type=int, default=60)
    parser.add_argument("--reply-tokens", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many conversations")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    tok = with_chat_tokens(Tokenizer.pretrained("gpt2"))
    model = GPT(GPTConfig.preset(args.preset, vocab_size=tok.vocab_size)).eval()
    engine = Engine(model, tok)
    print(f"{args.preset}: {model.num_params() / 1e6:.1f}M parameters, cpu, {torch.get_num_threads()} "
          f"threads, {torch.backends.cpu.get_cpu_capability()}; turns of ~{args.user_tokens} user + "
          f"{args.reply_tokens} reply tokens")
    conversation(engine, argparse.Namespace(**{**vars(args), "turns": 1, "verbose": False}))  # warm-up
    best: dict[str, list[float]] = {}
    for r in range(args.repeats):
        times = conversation(engine, argparse.Namespace(**{**vars(args), "verbose": args.verbose and r == 0}))
        best = {m: [min(a, b) for a, b in zip(best.get(m, t), t, strict=True)] for m, t in times.items()}
    print(f"{'turn':>4}  " + "  ".join(f"{m:>22}" for m in best))
    for turn in range(args.turns):
        cells = [f"{t[turn] * 1000:8.1f} ms ({t[turn] / t[0]:5.2f}x)" for t in best.values()]
        print(f"{turn + 1:>4}  " + "  ".join(f"{c:>22}" for c in cells))
    kept, redone = best["cache kept"][-1], best["recomputed"][-1]
    print(f"turn {args.turns}: {redone / kept:.1f}x faster to the first token with the cache kept")


if __name__ == "__main__":
    main()
