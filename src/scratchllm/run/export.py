"""`scratchllm export`: a run folder's model (and its tokenizer) written as a folder `transformers`
loads with `AutoModelForCausalLM.from_pretrained`. `--format` names the kind of folder; `hf` is the
one there is.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from scratchllm.model.hf import EXPRESSES, hf_architecture, require_transformers, to_hf
from scratchllm.run.load import load_run, run_tokenizer
from scratchllm.tokenizer.chat import CHAT_TEMPLATE, has_chat_tokens
from scratchllm.tokenizer.encoding import EOT
from scratchllm.tokenizer.hf_fast import fast_tokenizer
from scratchllm.util.errors import UserError

# What `export_run` writes (transformers' file names); a folder holding only these may be replaced.
EXPORT_FILES = {"config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def is_earlier_export(folder: Path) -> bool:
    """Whether folder is empty or holds only what `export_run` writes, with a config it can write."""
    if not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    if not entries:
        return True
    names = {p.name for p in entries if p.is_file()}
    if len(names) != len(entries) or any(n not in EXPORT_FILES and not _SHARD_RE.fullmatch(n) for n in names):
        return False
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") in EXPRESSES
    except (OSError, ValueError, AttributeError):
        return False


# --format: what each writes.
FORMATS = {"hf": "a transformers folder (GPT-2, NanoChat, Llama or Qwen3: hf_architecture's choice)"}


def export_run(run: str | Path, out: str | Path, fmt: str = "hf",
               quiet: bool = False) -> tuple[Path, Path, bool]:
    """Write the run's newest valid checkpoint as `fmt` (see FORMATS) into the folder `out`, with the
    run's tokenizer when it has one; returns (out, checkpoint folder, whether tokenizer files were written).

    The folder is written beside `out` and renamed into place, and `out` is replaced only if it is
    an earlier export, so no other folder is ever overwritten.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use {' or '.join(FORMATS)}")
    transformers = require_transformers()  # before any work: it is an optional dependency
    given, out = out, Path(out).resolve()
    if out == Path.cwd().resolve():
        raise UserError("--out names the current folder, which the export would replace; give a new folder")
    if out.exists() and not is_earlier_export(out):
        raise UserError(f"{given} exists and is not an earlier export (only those are replaced); "
                        "pick another --out")
    if quiet:
        transformers.utils.logging.disable_progress_bar()
    cfg, model, path = load_run(run)
    hf_architecture(cfg.model)  # a model no class computes is refused before anything is written
    try:
        tok = run_tokenizer(run, cfg)
    except UserError:
        tok = None
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    eot = tok.special_tokens.get(EOT) if tok is not None else None
    to_hf(model, eos_token_id=eot).save_pretrained(tmp)
    if tok is not None:
        fast = fast_tokenizer(tok, model_max_length=cfg.model.block_size)
        if has_chat_tokens(tok):  # a chat model: apply_chat_template renders as `tokenizer.chat.render`
            fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out, path, tok is not None
