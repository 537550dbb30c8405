"""The OpenAI API's request and response shapes, as far as a small local model serves them.

Requests are checked strictly (a string where a number belongs is refused, not converted), and
everything a client can get wrong becomes a `RequestError`, which the server answers as OpenAI's
error object with status 400. Parameters the API defines that make no sense here (tools, logprobs,
penalties, ...) are ignored, as a client library sends some of them by default.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scratchllm.chat.engine import Sampling

MAX_STOPS = 4  # as the OpenAI API allows


class RequestError(ValueError):
    """A request the client got wrong: the message, the parameter it concerns, an error code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def error_body(message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    """One part of a message's content given as a list (text is the only kind a text model reads)."""

    type: Literal["text"]
    text: str


class Message(_Strict):
    """One message of a conversation; "developer" is the API's newer name for "system"."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def plain(self) -> dict:
        """{role, content} with the content as one string."""
        text = self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Strict):
    """stream_options: include_usage adds a last chunk with the token counts."""

    include_usage: bool = False


class _Common(_Strict):
    """What chat and text completions share."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=1)  # not OpenAI's, but every local server takes it
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=1, description="one choice only")
    max_tokens: int | None = Field(None, ge=0)

    def sampling(self, max_new_tokens: int | None) -> Sampling:
        """The engine's settings for this request."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise RequestError(f"stop takes up to {MAX_STOPS} non-empty strings", "stop")
        temperature = 1.0 if self.temperature is None else self.temperature
        if self.top_p == 0:  # nothing but the likeliest token: greedy
            temperature = 0.0
        limit = max_new_tokens if max_new_tokens is not None else 1 << 30  # the context ends it first
        return Sampling(temperature=temperature, top_k=self.top_k, top_p=self.top_p or None,
                        max_new_tokens=limit, seed=self.seed, stop=tuple(stops))

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Common):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)

    def settings(self) -> Sampling:
        """Sampling settings; max_completion_tokens is the API's newer name for max_tokens."""
        return self.sampling(self.max_completion_tokens if self.max_completion_tokens is not None
                             else self.max_tokens)


class CompletionRequest(_Common):
    """POST /v1/completions: prompt is one string (or a list holding one)."""

    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=0)  # the API's default for text completions

    def text(self) -> str:
        """The prompt as one string."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise RequestError("prompt must be one string (a list of several is a batch, not served here)",
                               "prompt")
        return self.prompt[0]

    def settings(self) -> Sampling:
        """Sampling settings."""
        return self.sampling(self.max_tokens)


def param_of(loc: tuple) -> str | None:
    """The parameter a validation error's location names: ("body", "messages", 0, "role") is
    "messages[0].role"."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif not p.endswith("]") and p not in ("str", "list[str]", "list[TextPart]"):
            out += f".{p}" if out else p
    return out or None


class Reply:
    """The pieces of an answer: ids, timestamps and the objects the API sends for them."""

    def __init__(self, model: str, chat: bool):
        self.model, self.chat = model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(self, text: str | None = None, finish_reason: str | None = None, role: bool = False,
              usage: dict | None = None, with_usage: bool = False) -> dict:
        """One streamed chunk: a piece of text, the role, the finish reason, or (alone) the usage."""
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            out = self._base("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            out = self._base("text_completion")
        out["choices"] = [] if usage is not None else [choice]
        if with_usage or usage is not None:
            out["usage"] = usage
        return out

    def whole(self, text: str, finish_reason: str, usage: dict) -> dict:
        """The answer of a request that did not stream."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "logprobs": None, "finish_reason": finish_reason}
            out = self._base("chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            out = self._base("text_completion")
        return {**out, "choices": [choice], "usage": usage}


def usage_of(stream) -> dict:
    """The usage object of a finished stream (cached_tokens: prompt tokens the KV cache already held)."""
    return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": len(stream.ids),
            "total_tokens": stream.prompt_tokens + len(stream.ids),
            "prompt_tokens_details": {"cached_tokens": stream.cached_tokens}}
