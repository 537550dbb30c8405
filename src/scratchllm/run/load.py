"""Reading what was trained: a run folder (its config, its newest checkpoint that checks out, its
tokenizer), or a transformers GPT-2 folder (an `export`, OpenAI's GPT-2) for the tasks to measure.

Readers take no lock: see `scratchllm.run.checkpoint` for how they see each checkpoint whole.
"""

from __future__ import annotations

from pathlib import Path

from scratchllm.run.checkpoint import find_checkpoint, load_model_weights, report_skipped
from scratchllm.util.errors import UserError


def load_run(run: str | Path, device="cpu"):
    """(config, model in eval mode, checkpoint folder) of a run's newest valid checkpoint."""
    from scratchllm.config import load_run_config
    from scratchllm.model.gpt import GPT

    run = Path(run)
    if not (run / "config.toml").is_file():
        raise UserError(f"{run}: not a run folder (no config.toml; train one with `scratchllm train`)")
    cfg = load_run_config(run / "config.toml")
    model = GPT(cfg.model)
    while True:
        found, problems = find_checkpoint(run / "ckpt")
        if found is None:
            why = f" ({problems[0]})" if problems else ""
            raise UserError(f"{run}: no usable checkpoint in {run / 'ckpt'}{why}")
        try:
            load_model_weights(model, found[0])
        except UserError:
            if found[0].is_dir():
                raise
            continue  # pruned by the training run after the check: a newer checkpoint is there
        report_skipped(problems)  # once the weights are in: a retry would report them again
        return cfg, model.to(device).eval(), found[0]


def run_tokenizer(run: str | Path, cfg):
    """The tokenizer a run was trained with: its own copy, else the one of its token folder."""
    from scratchllm.data.tokenize import load_tokenizer_for_data
    from scratchllm.tokenizer import Tokenizer

    own = Path(run) / "tokenizer"
    if (own / "tokenizer.json").is_file():
        return Tokenizer.load(own)
    if not cfg.train.data:
        raise UserError(f"{run}: no tokenizer saved with the run and no token folder recorded")
    return load_tokenizer_for_data(cfg.train.data)


class HFTokenizer:
    """A transformers tokenizer with the few methods the tasks use (ids of plain text, the EOT id)."""

    def __init__(self, tok):
        self.tok = tok
        self.name = type(tok).__name__

    @property
    def eot_id(self) -> int:
        """<|endoftext|>, GPT-2's document separator (its eos token)."""
        if self.tok.eos_token_id is None:
            raise UserError("the folder's tokenizer has no end-of-text token to start prompts with")
        return self.tok.eos_token_id

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, without special tokens added; text the tokenizer cannot encode is refused."""
        ids = self.tok(texts, add_special_tokens=False)["input_ids"]
        unk = self.tok.unk_token_id
        if unk is not None and unk != self.tok.eos_token_id and any(unk in row for row in ids):
            raise UserError("the folder's tokenizer cannot encode the task's text (it gives its unknown "
                            "token)")
        return ids


def load_model(path: str | Path, device):
    """(model in eval mode, tokenizer, train.dtype setting, a label) of a run or a transformers folder."""
    path = Path(path)
    if (path / "config.toml").is_file() or not (path / "config.json").is_file():
        cfg, model, ckpt = load_run(path, device)
        try:
            tok = run_tokenizer(path, cfg)
        except UserError as e:
            raise UserError(f"{e}: tasks are text, which this run has no tokenizer to encode") from None
        return model, tok, cfg.train.dtype, f"{path} ({ckpt.name})"
    from scratchllm.model.hf import from_hf, require_transformers

    transformers = require_transformers()
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: not a readable transformers folder ({type(e).__name__})") from None
    model = from_hf(hf).to(device)
    if any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        tok = HFTokenizer(transformers.AutoTokenizer.from_pretrained(path, local_files_only=True))
    elif model.config.vocab_size == 50257:
        from scratchllm.tokenizer import Tokenizer

        tok = Tokenizer.pretrained("gpt2")
    else:
        raise UserError(f"{path}: no tokenizer files, and the vocabulary ({model.config.vocab_size:,}) is "
                        "not GPT-2's; export the run again with its tokenizer")
    return model, tok, "auto", str(path)
