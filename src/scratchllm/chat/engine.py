"""Generation for conversations, beside the model as nanochat's engine sits beside its GPT.

A `Context` is a KV cache together with the token ids it holds. Given the ids of a whole prompt it
runs only the tokens past the longest prefix it already holds (rolling back any positions after
that prefix), so a `Session` that keeps one context across turns pays for each turn's new tokens
only: the user's message and the few turn tokens around it. The reply's own tokens went into the
cache as they were generated; the <|assistant_end|> that closed it is the first token of the next
turn's prefill.

A `Stream` writes one reply: iterate it for text pieces as they are generated. Pieces are whole
UTF-8 characters only (a character can span several byte-level tokens; the incremental decoder
holds the bytes of a partial one back), and text that may be the start of a `stop` string is held
back until it is known not to be one. Generation ends at an end token (<|assistant_end|>, <|bos|>
or <|endoftext|>), a stop string, `max_new_tokens`, a full context, or when `cancel()` says so;
`finish_reason` records which ("stop", "length" or "cancelled").

Context limits: a prompt longer than the model's context is refused with `ContextError`. A session
whose conversation outgrows the context drops its oldest turns (the system message stays, opening
the first turn that is left) and rebuilds the cache from what remains; a single message that does
not fit even alone is refused. A reply stops with "length" when the context is full.

A run whose tokenizer has no chat tokens (a base run) has no turns: its session is plain text, each
message appended to the text so far and continued until <|endoftext|> or the length limit.
"""

from __future__ import annotations

import codecs
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from scratchllm.model.generate import KVCache, fast_decoding, sample
from scratchllm.tokenizer.chat import (
    ASSISTANT_END,
    ASSISTANT_START,
    BOS,
    USER_END,
    USER_START,
    check_messages,
    has_chat_tokens,
    render_prompt,
)
from scratchllm.tokenizer.encoding import EOT
from scratchllm.util.errors import UserError

BASE_NOTE = ("this run's tokenizer has no chat tokens, so it is a base model: it continues your text "
             "as plain completion, with no turns")


class ContextError(UserError):
    """A prompt or a message longer than the model's context."""


@dataclass
class Sampling:
    """How one reply is sampled: temperature 0 is greedy; seed None draws a fresh one."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def check(self) -> Sampling:
        """self, or ValueError naming the first setting out of range."""
        if not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, not {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, not {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, not {self.max_new_tokens}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), not {self.seed}")
        if any(not s for s in self.stop):
            raise ValueError("a stop string must not be empty")
        return self


class Context:
    """A KV cache and the ids it holds; `feed` runs only what the cache lacks."""

    def __init__(self, model):
        self.model = model
        self.cache = KVCache(model.config.n_layer, model.config.block_size)
        self.ids: list[int] = []

    @property
    def room(self) -> int:
        """Positions of the context still free."""
        return self.cache.block_size - len(self.ids)

    def feed(self, ids: list[int]) -> tuple[torch.Tensor, int]:
        """(logits (1, V) of the token after ids, how many of ids the cache already held)."""
        if not ids:
            raise ValueError("nothing to feed")
        if len(ids) > self.cache.block_size:
            raise ContextError(f"{len(ids)} tokens do not fit the model's context of {self.cache.block_size}")
        held = 0
        for a, b in zip(self.ids, ids, strict=False):
            if a != b:
                break
            held += 1
        held = min(held, len(ids) - 1)  # the last token always runs: its logits are the answer
        for layer in self.cache.layers:  # positions past the shared prefix are overwritten from here
            layer.pos = held
        self.ids = list(ids)
        return self._run(ids[held:]), held

    def feed_one(self, token: int) -> torch.Tensor:
        """Logits after appending one token."""
        self.ids.append(token)
        return self._run([token])

    def _run(self, new: list[int]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        # Entered and left around each call, never held across a yield: these modes are per-thread
        # state, and other streams run on the same thread between this one's tokens.
        with torch.inference_mode(), fast_decoding(device):
            return self.model.next_logits(torch.tensor([new], device=device), self.cache)


def _split_stop(held: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """(text safe to show, text to hold back, whether a stop string was hit) of pending text."""
    hits = [i for i in (held.find(s) for s in stops) if i >= 0]
    if hits:
        return held[:min(hits)], "", True
    for k in range(min(len(held), max((len(s) for s in stops), default=1) - 1), 0, -1):
        if any(s.startswith(held[-k:]) for s in stops):  # could still become a stop string
            return held[:-k], held[-k:], False
    return held, "", False


class Stream:
    """One reply being generated: iterate for text pieces; then `ids`, `text`, `finish_reason`."""

    def __init__(self, engine: Engine, context: Context, prompt: list[int], params: Sampling,
                 cancel: Callable[[], bool] | None = None):
        if len(prompt) > context.cache.block_size:
            raise ContextError(f"the prompt is {len(prompt):,} tokens; the model's context holds "
                               f"{context.cache.block_size:,}")
        self.engine, self.context, self.prompt, self.params = engine, context, prompt, params.check()
        self.cancel = cancel
        self.ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.end_token: int | None = None  # the end token that stopped it, if one did
        self.cached_tokens = 0  # prompt tokens the cache already held
        self.started = time.perf_counter()
        self.ttft: float | None = None  # seconds from the start to the first token sampled
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device=next(engine.model.parameters()).device).manual_seed(seed)

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the prompt."""
        return len(self.prompt)

    def __iter__(self) -> Iterator[str]:
        return self._pieces()

    def _pieces(self) -> Iterator[str]:
        p, stops = self.params, self.params.stop
        logits, self.cached_tokens = self.context.feed(self.prompt)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held, hit = "", False
        while self.finish_reason is None:
            if self.cancel is not None and self.cancel():
                self.finish_reason = "cancelled"
                break
            if len(self.ids) >= p.max_new_tokens:
                self.finish_reason = "length"
                break
            token = int(sample(logits, p.temperature, p.top_k, p.top_p, self.generator)[0])
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.started
            if token in self.engine.end_ids:
                self.finish_reason, self.end_token = "stop", token
                break
            self.ids.append(token)
            piece = decoder.decode(self.engine.tok.decode_bytes([token]))
            shown, held, hit = _split_stop(held + piece, stops)
            if shown:
                self.text += shown
                yield shown
            if hit:
                self.finish_reason = "stop"
            elif self.context.room == 0:
                self.finish_reason = "length"
            else:
                logits = self.context.feed_one(token)
        if not hit:  # what was held back is text after all (a cut-off character shows as U+FFFD)
            rest = held + decoder.decode(b"", final=True)
            if rest:
                self.text += rest
                yield rest

    def run(self) -> str:
        """Generate the whole reply; its text."""
        for _ in self:
            pass
        return self.text


class Engine:
    """A model and its tokenizer, ready to continue prompts and conversations."""

    def __init__(self, model, tok):
        self.model = model.eval()
        self.tok = tok
        self.block_size: int = model.config.block_size
        self.is_chat = has_chat_tokens(tok)
        self.end_ids = {tok.special_tokens[t] for t in (ASSISTANT_END, BOS, EOT) if t in tok.special_tokens}
        self.note = "" if self.is_chat else BASE_NOTE

    @classmethod
    def from_run(cls, run, device="cpu") -> Engine:
        """The engine of a run folder's newest checkpoint and its tokenizer."""
        from scratchllm.run.load import load_run, run_tokenizer

        cfg, model, _ = load_run(run, device)
        return cls(model, run_tokenizer(run, cfg))

    def text_ids(self, text: str) -> list[int]:
        """Ids of a plain-text prompt; an empty one starts from <|endoftext|> as `generate` does."""
        ids = self.tok.encode(text)
        if not ids and EOT in self.tok.special_tokens:
            ids = [self.tok.special_tokens[EOT]]
        if not ids:
            raise ValueError("empty prompt")
        return ids

    def prompt_ids(self, messages) -> list[int]:
        """Ids of a conversation ending with the user's message: the chat template, or for a base run
        the messages' text one after another, separated by blank lines."""
        if self.is_chat:
            return render_prompt(messages, self.tok)
        messages = check_messages(messages, need_assistant=False)
        return self.text_ids("\n\n".join(m["content"] for m in messages))

    def complete(self, ids: list[int], params: Sampling, cancel: Callable[[], bool] | None = None) -> Stream:
        """A stream continuing ids in a fresh context."""
        return Stream(self, Context(self.model), ids, params, cancel)

    def session(self, system: str | None = None) -> Session:
        """A conversation that keeps its KV cache from turn to turn."""
        return Session(self, system)


class Session:
    """A conversation: its turns (the user's text, the reply's ids) and one context kept across them."""

    def __init__(self, engine: Engine, system: str | None = None):
        self.engine = engine
        self.system = system or None
        self.turns: list[tuple[str, list[int]]] = []
        self.context = Context(engine.model)

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.turns = []
        self.context.ids = []

    def ids(self) -> list[int]:
        """Ids of the conversation so far, ready for the model to write the next reply."""
        e, tok = self.engine, self.engine.tok
        if not e.is_chat:  # plain text: the system message, then each message and its continuation
            ids = tok.encode(self.system + "\n\n") if self.system else []
            for user, reply in self.turns:
                ids += [*tok.encode(user), *reply]
            return ids or e.text_ids("")
        s = tok.special_tokens
        ids = [s[BOS]]
        for n, (user, reply) in enumerate(self.turns):
            text = f"{self.system}\n\n{user}" if n == 0 and self.system else user
            ids += [s[USER_START], *tok.encode(text), s[USER_END], s[ASSISTANT_START], *reply]
            if n < len(self.turns) - 1:
                ids.append(s[ASSISTANT_END])
        return ids

    def ask(self, text: str, params: Sampling, cancel: Callable[[], bool] | None = None) -> Stream:
        """The stream of the reply to `text`; the reply joins the conversation as it is generated
        (stopped early, it stays as far as it got)."""
        reply: list[int] = []
        before = self.turns
        self.turns = [*before, (text, reply)]
        ids = self.ids()
        while len(ids) >= self.engine.block_size and len(self.turns) > 1:
            del self.turns[0]  # the oldest turn goes; the context is rebuilt from what is left
            ids = self.ids()
        if len(ids) >= self.engine.block_size:
            self.turns = before
            raise ContextError(f"this message takes {len(ids):,} of the model's {self.engine.block_size:,} "
                               "positions, leaving no room for a reply; send a shorter one")
        stream = Stream(self.engine, self.context, ids, params, cancel)
        stream.ids = reply
        return stream
