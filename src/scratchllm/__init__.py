"""scratchllm: build a GPT-style language model from scratch."""

__version__ = "0.1.0"
