"""Where a new run's weights start (`train --init`, `sft --init`): a run folder, a folder `export`
wrote, or a transformers GPT-2-family folder (or, where the hub is reachable, a hub name like gpt2).

`load_init` gives the model and the tokenizer it reads text with. `with_vocab` fits a model to a
tokenizer that has a few more special tokens (the chat tokens): the rows already there in the padded
vocabulary are taken into use; a model without room for them is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from scratchllm.run.load import load_run, run_tokenizer
from scratchllm.util.errors import UserError
from scratchllm.util.log import get_logger

logger = get_logger(__name__)

# Rows of the embedding and head of a model read from a transformers folder that did not record its
# padding: GPT-2's 50,257 become 50,304, room for the five chat tokens.
PAD_VOCAB_MULTIPLE = 64


@dataclass
class InitPoint:
    """A model to start from, its tokenizer, and where both came from (recorded in the new run)."""

    model: object  # scratchllm.model.gpt.GPT
    tokenizer: object  # scratchllm.tokenizer.Tokenizer
    source: str


def _hf_tokenizer(path: Path, vocab_size: int, name: str):
    from scratchllm.tokenizer import Tokenizer
    from scratchllm.tokenizer.hf_fast import from_tokenizer_json

    if (path / "tokenizer.json").is_file():
        return from_tokenizer_json(path / "tokenizer.json")
    if vocab_size == 50257:  # GPT-2's vocabulary without tokenizer files (or with vocab.json/merges.txt)
        return Tokenizer.pretrained("gpt2")
    raise UserError(f"{name}: no tokenizer.json, and the vocabulary ({vocab_size:,}) is not GPT-2's")


def _from_transformers(src: str) -> InitPoint:
    from scratchllm.model.hf import from_hf, require_transformers

    transformers = require_transformers()
    path = Path(src)
    local = path.is_dir()
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(src, local_files_only=local)
    except (OSError, ValueError, KeyError) as e:
        where = "not a readable transformers folder" if local else "not a run folder, nor a hub model here"
        raise UserError(f"--init {src}: {where} ({type(e).__name__})") from None
    stored = getattr(hf.config, "scratchllm", None)
    pad = stored.get("pad_vocab_multiple") if isinstance(stored, dict) else None
    model = from_hf(hf, pad_vocab_multiple=pad or PAD_VOCAB_MULTIPLE).float().train()
    if local:
        tok = _hf_tokenizer(path, model.config.vocab_size, src)
    else:  # a hub name: its tokenizer files come with it
        tok = _hf_tokenizer(Path(transformers.utils.cached_file(src, "config.json")).parent,
                            model.config.vocab_size, src)
    return InitPoint(model, tok, str(path.resolve()) if local else src)


def load_init(src: str | Path) -> InitPoint:
    """The model (float32, on the CPU) and tokenizer of a run folder, an export, or a transformers folder."""
    path = Path(src)
    if (path / "config.toml").is_file():
        cfg, model, ckpt = load_run(path)
        return InitPoint(model.float().train(), run_tokenizer(path, cfg), f"{path.resolve()} ({ckpt.name})")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"--init {src}: neither a run folder (config.toml) nor a transformers folder "
                        "(config.json)")
    return _from_transformers(str(src))


def with_vocab(model, vocab_size: int, name: str = "the model"):
    """`model`, or a copy of it that reads and writes `vocab_size` ids, when its padded rows hold them."""
    from scratchllm.model.gpt import GPT

    config = model.config
    if vocab_size <= config.vocab_size:
        return model
    grown = dataclasses.replace(config, vocab_size=vocab_size)
    if grown.padded_vocab_size != config.padded_vocab_size:
        raise UserError(f"{name} has {config.padded_vocab_size:,} embedding rows, no room for a vocabulary "
                        f"of {vocab_size:,} (the chat tokens); fine-tune a model with a larger padded "
                        "vocabulary (model.pad_vocab_multiple)")
    out = GPT(grown)
    out.load_state_dict(model.state_dict())
    logger.info(f"{name}: ids {config.vocab_size:,}..{vocab_size - 1:,} take rows of the padded vocabulary")
    return out
