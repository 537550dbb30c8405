"""Stages 2 and 3: attention (`attention`), the GPT model (`gpt`), conversion to transformers (`hf`)."""

from scratchllm.model.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
