"""Replies of a chat model to held-out prompts: what the chat demo prints and measures.

`reply` decodes with `model.generate`, greedily (temperature 0) or at a low temperature among the 50
likeliest tokens with a fixed seed, and stops at <|assistant_end|>; a reply that reaches the length
limit first did not learn where a turn ends. A small model decoded greedily tends to repeat a phrase
without end, which sampling at a low temperature breaks. `end_share` is the share of prompts whose
reply ends with the end token within the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scratchllm.tokenizer.chat import ASSISTANT_END, render_prompt


@dataclass
class Reply:
    """A reply's text, and whether it ended with <|assistant_end|> within the limit."""

    text: str
    ended: bool


@torch.no_grad()
def reply(model, tok, messages: list[dict], max_new_tokens: int = 64, device="cpu", temperature: float = 0.0,
          seed: int = 0) -> Reply:
    """The model's reply to a conversation that ends with a user message: greedy at temperature 0, else
    sampled among the 50 likeliest tokens with generator seed `seed`."""
    end = tok.special_tokens[ASSISTANT_END]
    prompt = render_prompt(messages, tok)
    room = model.config.block_size - len(prompt)
    idx = torch.tensor([prompt], device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, max(0, min(max_new_tokens, room)), temperature=temperature,
                         top_k=50 if temperature else None, eot=end, generator=gen)[0, len(prompt):]
    made = out.tolist()
    ended = end in made
    return Reply(tok.decode(made[: made.index(end)] if ended else made), ended)


def first_prompts(conversations: list[list[dict]], n: int) -> list[list[dict]]:
    """The opening user message of each of the first `n` conversations, as a one-message prompt."""
    return [[c[0]] for c in conversations[:n] if c and c[0]["role"] == "user"]


def end_share(model, tok, prompts: list[list[dict]], max_new_tokens: int = 64, device="cpu",
              temperature: float = 0.0) -> float:
    """The share of `prompts` whose reply ends with <|assistant_end|> within `max_new_tokens`."""
    ended = [reply(model, tok, p, max_new_tokens, device, temperature).ended for p in prompts]
    return sum(ended) / max(1, len(ended))
