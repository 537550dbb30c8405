"""Stage 5 of `scratchllm demo --chat`: fine-tune the demo's pre-trained model on the Chit-Chat set,
then measure it and let it answer a few held-out openings.

Measured: the loss on the assistant's tokens of the held-out conversations before fine-tuning (its
step 0) and after, and the share of held-out openings whose reply ends with <|assistant_end|> within
MAX_REPLY tokens, sampled at TEMPERATURE and greedy.
"""

from __future__ import annotations

from pathlib import Path

from scratchllm.util.log import get_logger

logger = get_logger(__name__)

MAX_REPLY = 64  # tokens a reply may take before it counts as one that does not end
END_PROMPTS = 100  # held-out openings the end-token share is measured on
SHOWN = 3  # held-out openings printed with the model's replies
VAL_CONVERSATIONS = 100  # source conversations held out (a few hundred windows)
TEMPERATURE = 0.6  # of the replies shown and of the headline end-token share


def sft_plan(minutes: float, steps_per_s: float, sets=()) -> list[str]:
    """`--set`s of a fine-tuning run that fills `minutes` at `steps_per_s` (pre-training's measured speed:
    the same model and batch shape), with two evaluations and one checkpoint at the end."""
    steps = max(20, int(0.9 * steps_per_s * minutes * 60))
    half = max(10, -(-steps // 2))
    # A learning rate above sft's default: the demo's model is small and has only minutes.
    return [f"train.max_steps={steps}", f"train.max_minutes={minutes}", f"train.eval_every={half}",
            f"train.ckpt_every={steps}", f"train.warmup_steps={min(10, steps // 10)}", "train.lr=1e-3",
            "train.min_lr=1e-4", "train.log_every=10", *sets]


def chat_stage(base: Path, out: Path, minutes: float, steps_per_s: float, quiet: bool = False,
               sets=(), n_prompts: int = END_PROMPTS) -> dict:
    """Fine-tune run `base` on chitchat into `out` for `minutes`; the figures (the end-token share over
    `n_prompts` held-out openings) and a few replies."""
    from scratchllm.chat.engine import Engine
    from scratchllm.chat.replies import end_share, first_prompts, reply
    from scratchllm.chat.sft import sft, sft_config
    from scratchllm.run.load import load_run, run_tokenizer

    cfg = sft_config(out, False, [*sft_plan(minutes, steps_per_s, sets),
                                  f"train.val_conversations={VAL_CONVERSATIONS}"])
    summary = sft(cfg, str(base), "chitchat", out, quiet=quiet)
    held = summary.pop("val_messages")  # sft's own held-out split
    before = next(r["val_loss"] for r in _rows(out) if "val_loss" in r and r["step"] == 0)
    run_cfg, model, _ = load_run(out)
    tok = run_tokenizer(out, run_cfg)
    prompts = first_prompts(held, n_prompts)
    engine = Engine(model, tok)
    share = end_share(engine, prompts, MAX_REPLY, temperature=TEMPERATURE)
    greedy = end_share(engine, prompts, MAX_REPLY)
    shown = [(p[0]["content"], reply(engine, p, MAX_REPLY, temperature=TEMPERATURE).text)
             for p in prompts[:SHOWN]]
    return {**summary, "val_loss_before": before, "end_share": share, "end_share_greedy": greedy,
            "end_prompts": len(prompts), "conversation": shown}


def _rows(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
