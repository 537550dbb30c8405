"""Conversations as tokens: the special tokens of a turn, and the one template that renders them.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str}`, as
OpenAI's fine-tuning files and Hugging Face's chat sets write them. It renders as nanochat renders
one:

    <|bos|> <|user_start|> ... <|user_end|> <|assistant_start|> ... <|assistant_end|> <|user_start|> ...

There is no system turn: a system message (at most one, first) opens the first user message,
followed by a blank line. Each message's text is encoded on its own as ordinary text, so a message
that types "<|user_end|>" gets the characters, never the special id. `render` also gives the loss
mask: 1 on the assistant's content and its <|assistant_end|> (what the model learns to say, and
when to stop), 0 on everything else. `render_prompt` ends with <|assistant_start|>, where the model
takes over. `CHAT_TEMPLATE` is the same layout as a Jinja template, for transformers'
`apply_chat_template` in an exported tokenizer.
"""

from __future__ import annotations

from scratchllm.tokenizer.encoding import Tokenizer

BOS, USER_START, USER_END = "<|bos|>", "<|user_start|>", "<|user_end|>"
ASSISTANT_START, ASSISTANT_END = "<|assistant_start|>", "<|assistant_end|>"
CHAT_TOKENS = (BOS, USER_START, USER_END, ASSISTANT_START, ASSISTANT_END)
ROLES = ("system", "user", "assistant")

CHAT_TEMPLATE = (
    "{{ '<|bos|>' }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
    "{% elif m['role'] == 'user' %}{{ '<|user_start|>' + ns.system + m['content'] + '<|user_end|>' }}"
    "{% set ns.system = '' %}"
    "{% elif m['role'] == 'assistant' %}{{ '<|assistant_start|>' + m['content'] + '<|assistant_end|>' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant_start|>' }}{% endif %}"
)


class ConversationError(ValueError):
    """Why a list of messages is no conversation this template renders (its message is the reason)."""


def check_messages(messages, need_assistant: bool = True) -> list[dict]:
    """`messages` as plain {role, content} dicts, checked: a list of objects with a known role and
    non-empty string content, an optional system message first, then user and assistant in turn,
    starting with the user (and, with `need_assistant`, at least one assistant message)."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("no messages")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ConversationError("unknown role" if isinstance(m, dict) else "a message is not an object")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise ConversationError("empty content")
        out.append({"role": m["role"], "content": m["content"]})
    turns = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(turns):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise ConversationError("roles out of order")
    if not turns:
        raise ConversationError("no user message")
    if need_assistant and not any(m["role"] == "assistant" for m in turns):
        raise ConversationError("no assistant turn")
    return out


def has_chat_tokens(tok: Tokenizer) -> bool:
    """Whether tok has every special token of a turn."""
    return all(t in tok.special_tokens for t in CHAT_TOKENS)


def with_chat_tokens(tok: Tokenizer) -> Tokenizer:
    """tok itself if it has the turn tokens, else a copy with the missing ones added after its last id
    (GPT-2's become 50257..50261)."""
    return tok.with_special_tokens(CHAT_TOKENS, suffix="chat")


def _ids(tok: Tokenizer) -> dict[str, int]:
    if not has_chat_tokens(tok):
        raise ConversationError(f"tokenizer {tok.name} has no chat tokens ({', '.join(CHAT_TOKENS)})")
    return {t: tok.special_tokens[t] for t in CHAT_TOKENS}


def _turns(messages: list[dict]) -> list[dict]:
    """The turns to render: a system message folded into the first user message."""
    if messages[0]["role"] != "system":
        return messages
    first = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
    return [first, *messages[2:]]


def render(messages, tok: Tokenizer) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a whole conversation; the mask is 1 on the assistant's content and end."""
    special = _ids(tok)
    ids, mask = [special[BOS]], [0]
    for m in _turns(check_messages(messages)):
        text = tok.encode(m["content"])
        if m["role"] == "user":
            part = [special[USER_START], *text, special[USER_END]]
            ids += part
            mask += [0] * len(part)
        else:
            ids += [special[ASSISTANT_START], *text, special[ASSISTANT_END]]
            mask += [0] + [1] * (len(text) + 1)
    return ids, mask


def render_prompt(messages, tok: Tokenizer) -> list[int]:
    """Ids of a conversation that ends with a user message, then <|assistant_start|>: what the model
    continues to write the assistant's reply."""
    messages = check_messages(messages, need_assistant=False)
    if messages[-1]["role"] != "user":
        raise ConversationError("the last message must be the user's")
    special = _ids(tok)
    ids = [special[BOS]]
    for m in _turns(messages):
        start, end = (USER_START, USER_END) if m["role"] == "user" else (ASSISTANT_START, ASSISTANT_END)
        ids += [special[start], *tok.encode(m["content"]), special[end]]
    return ids + [special[ASSISTANT_START]]
