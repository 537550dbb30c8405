"""Byte-level BPE: learn merges from scratch (bpe.py), and the Tokenizer built from them (encoding.py)."""

from scratchllm.tokenizer.bpe import GPT2_PATTERN, GPT4_PATTERN
from scratchllm.tokenizer.encoding import EOT, Tokenizer, load_tokenizer, train_bpe

__all__ = ["EOT", "GPT2_PATTERN", "GPT4_PATTERN", "Tokenizer", "load_tokenizer", "train_bpe"]
