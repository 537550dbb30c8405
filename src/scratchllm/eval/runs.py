"""`scratchllm eval`: load what is to be measured (a run folder, or a transformers folder such as an
`export` or OpenAI's GPT-2), measure it, and say what came out."""

from __future__ import annotations

import math
from pathlib import Path

from scratchllm.util import UserError


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


def load_model(path: str | Path, device, warn=print):
    """(model in eval mode, tokenizer, train.dtype setting, a label) of a run or a transformers folder."""
    path = Path(path)
    if (path / "config.toml").is_file() or not (path / "config.json").is_file():
        from scratchllm.train.checkpoint import load_run, run_tokenizer

        cfg, model, ckpt = load_run(path, device, warn=warn)
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


def evaluate_run(run: str | Path, task: str = "loss", data: str | None = None, data_file: str | None = None,
                 limit: int | None = None, quiet: bool = False, warn=print) -> dict | None:
    """Measure `run` on `task` (loss, a task name or core); the `eval --json` object, None off rank 0.

    Under torchrun the items (or the validation batches) are shared out over the ranks.
    """
    from scratchllm.eval.loss import heldout_loss
    from scratchllm.eval.tasks import TaskSuite
    from scratchllm.train.distributed import setup, teardown
    from scratchllm.train.precision import resolve

    if task == "loss" and (data_file is not None or limit is not None):
        raise UserError("--data-file and --limit are for tasks; the held-out loss reads --data DIR")
    if task != "loss" and data is not None:
        raise UserError("--data DIR is the token folder of the held-out loss; a task reads --data-file")
    dist, device = setup("auto")
    say = warn if dist.main else (lambda msg: None)
    try:
        if task == "loss":
            out = {"run": str(run), "task": "loss", **heldout_loss(run, data, device, dist, warn=say)}
        else:
            model, tok, dtype, label = load_model(run, device, warn=say)
            suite = TaskSuite([task], tok, model.config.block_size, model.config.vocab_size, dist, limit,
                              data_file, warn=say)
            precision = resolve(dtype, device)
            if precision.warning:
                say(precision.warning)
            out = {"run": str(run), "task": task, "model": label, "dtype": precision.dtype,
                   **suite.evaluate(model, device, precision.dtype, progress=not quiet)}
    finally:
        teardown()
    return out if dist.main else None


def describe(out: dict) -> str:
    """`eval`'s answer for people: the loss line, or a table of the tasks (and the CORE-style score)."""
    if out["task"] == "loss":
        line = f"val loss {out['val_loss']:.4f}, perplexity {out['val_ppl']:.2f}"
        if out["val_bpb"] is not None:
            line += f", {out['val_bpb']:.4f} bits/byte"
        return (f"{line} ({out['checkpoint']}, {out['batches']} batches of {out['batch_size']} x "
                f"{out['block_size']} tokens from {out['data']})")
    core = "core_centered" in out
    head = f"{'task':<34} {'n':>6} {'acc':>7} {'acc_norm':>8} {'chance':>7}"
    head += f" {'centred':>8}" if core else ""
    lines = [f"{out['model']}, {out['dtype']}", head]
    for name, r in out["results"].items():
        norm = f"{r['acc_norm']:8.4f}" if "acc_norm" in r else f"{'-':>8}"
        row = f"{name:<34} {r['n']:>6} {r['acc']:7.4f} {norm} {r['random_baseline']:7.2f}"
        if core:
            row += f" {r['centered']:8.4f}"
        lines.append(row + f"   {r['n'] / max(r['seconds'], 1e-9):,.0f} items/s")
    if core:
        score = out["core_centered"]
        shown = "n/a" if score is None or math.isnan(score) else f"{score:.4f}"
        lines.append(f"CORE-style score over {len(out['tasks'])} of CORE's 22 tasks (a subset, not CORE; "
                     f"multiple choice counts acc_norm, generation acc): {shown}")
        if out["left_out"]:  # the reason was noted on stderr; JSON carries it too
            lines.append(f"left out for want of their data: {', '.join(out['left_out'])}")
    return "\n".join(lines)
