"""Tiny models and runs for the chat tests: a tokenizer with the turn tokens, a random GPT, and a GPT
whose weights make it write a given token sequence (to test streaming and stopping exactly)."""

from __future__ import annotations

from pathlib import Path

TEXT = ["Hello there, how are you doing today?", "I am fine, thanks. And you?", "Good, very good.",
        "The café serves crème brûlée and naïve smørrebrød ✓"] * 5


def chat_tokenizer(chat: bool = True):
    """A byte-level BPE on a few sentences; with the five chat tokens when `chat`."""
    from scratchllm.tokenizer import train_bpe
    from scratchllm.tokenizer.chat import CHAT_TOKENS
    from scratchllm.tokenizer.encoding import EOT

    return train_bpe(TEXT, 300, special_tokens=(EOT, *CHAT_TOKENS) if chat else (EOT,))


def random_gpt(vocab_size: int, block_size: int = 128, seed: int = 0, n_layer: int = 2, n_embd: int = 32):
    """A small GPT-2-shaped model with random weights, spread wide so its choices are clear-cut (the head
    untied: a tied one at this spread only repeats the last token)."""
    import torch

    from scratchllm.model.gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=2,
                          n_embd=n_embd, tie_embeddings=False))
    with torch.no_grad():
        model.transformer.wte.weight.normal_(0, 1.0)
        model.lm_head.weight.normal_(0, 1.0)
        model.transformer.wpe.weight.normal_(0, 1.0)
    return model.eval()


def endless(model, tok):
    """`model` with the head rows of the end tokens zeroed: their logit is 0, far below the likeliest
    token's at this spread, so a reply runs to its length limit (a client can leave in the middle)."""
    import torch

    from scratchllm.tokenizer.chat import ASSISTANT_END, BOS
    from scratchllm.tokenizer.encoding import EOT

    with torch.no_grad():
        for name in (ASSISTANT_END, BOS, EOT):
            if name in tok.special_tokens:
                model.lm_head.weight[tok.special_tokens[name]] = 0.0
    return model


def scripted_gpt(vocab_size: int, script: list[int], block_size: int = 64):
    """A real GPT whose greedy choice after position p is script[p], whatever the tokens are.

    Every block is zeroed (the residual stream passes through), token embeddings are zero and the
    position embeddings are one-hot, so the final hidden state names the position; the untied head
    maps position p to the logit of script[p].
    """
    import torch

    from scratchllm.model.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1,
                          n_embd=block_size, tie_embeddings=False))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.wpe.weight.copy_(10 * torch.eye(block_size))
        model.transformer.ln_f.weight.fill_(1.0)
        for pos, token in enumerate(script[:block_size]):
            model.lm_head.weight[token, pos] = 30.0
    return model.eval()


def byte_ids(tok, text: str) -> list[int]:
    """One token for each UTF-8 byte of text: a multi-byte character spans several tokens."""
    return [tok.ranks[bytes([b])] for b in text.encode("utf-8")]


def save_run(folder: Path, model, tok) -> Path:
    """A run folder (config.toml, one checkpoint, the tokenizer) holding `model`, as `train` leaves one."""
    from _eval_helpers import make_run

    return make_run(folder, model, tok)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`scratchllm serve` in a subprocess on 127.0.0.1 and a free port; `stop()` ends it."""

    def __init__(self, run: Path, log: Path, env: dict):
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "scratchllm", "serve", "--run", str(run),
                                      "--port", str(self.port)], env=env, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 120.0) -> Server:
        """Return once the server answers (or fail with its log)."""
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer within {timeout} s: {self.log.read_text()}")

    def health(self) -> dict:
        """GET /health."""
        import httpx

        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
