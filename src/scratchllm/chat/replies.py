"""Replies of a chat model to held-out prompts: what the chat demo prints and measures.

A reply comes from the chat engine (`scratchllm.chat.engine`, as `chat` and `serve` generate),
greedily (temperature 0) or at a low temperature among the 50 likeliest tokens with a fixed seed;
one that reaches the length limit before <|assistant_end|> did not learn where a turn ends. A small
model decoded greedily tends to repeat a phrase without end, which sampling at a low temperature
breaks. `end_share` is the share of prompts whose reply ends with the end token within the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchllm.chat.engine import Engine, Sampling
from scratchllm.tokenizer.chat import ASSISTANT_END


@dataclass
class Reply:
    """A reply's text, and whether it ended with <|assistant_end|> within the limit."""

    text: str
    ended: bool


def reply(engine: Engine, messages: list[dict], max_new_tokens: int = 64, temperature: float = 0.0,
          seed: int = 0) -> Reply:
    """The model's reply to a conversation that ends with a user message: greedy at temperature 0, else
    sampled among the 50 likeliest tokens with generator seed `seed`."""
    params = Sampling(temperature=temperature, top_k=50 if temperature else None,
                      max_new_tokens=max_new_tokens, seed=seed)
    stream = engine.complete(engine.prompt_ids(messages), params)
    text = stream.run()
    return Reply(text, stream.end_token == engine.tok.special_tokens[ASSISTANT_END])


def first_prompts(conversations: list[list[dict]], n: int) -> list[list[dict]]:
    """The opening user message of each of the first `n` conversations, as a one-message prompt."""
    return [[c[0]] for c in conversations[:n] if c and c[0]["role"] == "user"]


def end_share(engine: Engine, prompts: list[list[dict]], max_new_tokens: int = 64,
              temperature: float = 0.0) -> float:
    """The share of `prompts` whose reply ends with <|assistant_end|> within `max_new_tokens`."""
    ended = [reply(engine, p, max_new_tokens, temperature).ended for p in prompts]
    return sum(ended) / max(1, len(ended))
