"""Stage 5 of `scratchllm demo --chat` at a tiny size: fine-tuning lowers the held-out assistant loss,
the figures printed are those of the run's files, and the replies shown are the model's own."""

import json

import pytest


@pytest.fixture
def base(chat_base):
    return chat_base[0]


@pytest.mark.slow
def test_the_chat_stage_fine_tunes_measures_and_talks(base, tmp_path, capsys):
    from scratchllm.chat.engine import Engine
    from scratchllm.chat.replies import reply
    from scratchllm.chat.stage import MAX_REPLY, TEMPERATURE
    from scratchllm.demo import chat_demo
    from scratchllm.run.load import load_run, run_tokenizer

    out = tmp_path / "demo"
    # A plan of 40 steps (0.75 steps/s for 1 minute, less a margin); the model's own keys are left out.
    figures = chat_demo(out, base, minutes=1.0, rate=0.75, quiet=True, n_prompts=20,
                        sets=["model.n_layer=3", "train.dtype=float32", "train.batch_size=8",
                              "train.lr=2e-3"])
    printed = capsys.readouterr().out
    run = out / "chat"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    assert val[0][0] == 0 and figures["val_loss_before"] == val[0][1] and figures["val_loss"] == val[-1][1]
    assert figures["step"] == 40 and val[-1][0] == 40
    assert figures["val_loss"] < figures["val_loss_before"] - 0.3  # it learned the assistant's turns
    assert (run / "loss.png").is_file() and (run / "tokenizer" / "tokenizer.json").is_file()
    assert f"{figures['val_loss_before']:.3f} before fine-tuning, {figures['val_loss']:.3f} after" in printed
    assert figures["end_prompts"] == 20 and 0 <= figures["end_share"] <= 1
    assert f"{figures['end_share']:.0%} of 20 held-out openings" in printed
    greedy = figures["end_share_greedy"]
    assert 0 <= greedy <= 1 and f"greedy replies: {greedy:.0%}" in printed
    assert f"scratchllm serve --run {run}" in printed
    # The replies shown are the saved model's greedy replies to those openings.
    cfg, model, _ = load_run(run)
    engine = Engine(model, run_tokenizer(run, cfg))
    assert len(figures["conversation"]) == 3
    for prompt, answer in figures["conversation"]:
        said = reply(engine, [{"role": "user", "content": prompt}], MAX_REPLY, temperature=TEMPERATURE)
        assert said.text == answer
        assert f"  user:      {prompt}" in printed
