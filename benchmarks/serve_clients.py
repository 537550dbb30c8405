"""`scratchllm serve` under concurrent streaming clients: time to first token and tokens per second.

    python benchmarks/serve_clients.py [--preset gpt2-124m] [--clients 1 8] [--tokens 64]

The app of `scratchllm serve` on 127.0.0.1 (in this process, uvicorn in a thread) with a
random-weight model of the preset and GPT-2's tokenizer plus the chat tokens. For each client count,
that many clients stream a reply of --tokens tokens at once (each its own seed); prints the time
to first text (mean and slowest client) and the tokens per second of all clients together. The
worker runs one stream's step at a time, so the total rate stays about that of one client and
is shared among them; what concurrency buys is that no client waits for another's whole reply.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import httpx
import torch
import uvicorn

from scratchllm.chat.engine import Engine
from scratchllm.chat.server import create_app
from scratchllm.config import GPTConfig
from scratchllm.model.gpt import GPT
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.chat import with_chat_tokens

MESSAGES = [{"role": "user", "content": "Tell me about the old mill by the river and the sailors who sing."}]


def client(url: str, seed: int, tokens: int, out: dict) -> None:
    """Stream one reply; record (seconds to first text, completion tokens, seconds in all)."""
    body = {"model": "bench", "messages": MESSAGES, "temperature": 1.0, "seed": seed, "stream": True,
            "max_tokens": tokens, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, used = None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
    out[seed] = (first or 0.0, used, time.perf_counter() - t0)


def main() -> None:
    """Serve, then run each client count and print one line for it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8931)
    args = parser.parse_args()

    torch.manual_seed(0)
    tok = with_chat_tokens(Tokenizer.pretrained("gpt2"))
    model = GPT(GPTConfig.preset(args.preset, vocab_size=tok.vocab_size)).eval()
    server = uvicorn.Server(uvicorn.Config(create_app(Engine(model, tok), "bench"), host="127.0.0.1",
                                           port=args.port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{args.port}"
    while not server.started:
        time.sleep(0.1)
    client(url, 10_000, 4, {})  # warm-up
    print(f"{args.preset}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.tokens} tokens a reply")
    for n in args.clients:
        out: dict = {}
        threads = [threading.Thread(target=client, args=(url, seed, args.tokens, out)) for seed in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        firsts = [f for f, _, _ in out.values()]
        total = sum(u for _, u, _ in out.values())
        print(f"{n} client(s): first text {statistics.mean(firsts) * 1000:.0f} ms mean, "
              f"{max(firsts) * 1000:.0f} ms slowest; {total / wall:.1f} tokens/s in all "
              f"({total / wall / n:.1f} each), {wall:.1f} s")
    server.should_exit = True


if __name__ == "__main__":
    main()
