"""`scratchllm demo` end to end on a reduced time budget: every stage leaves its output, and it learns."""

import json
import math

import numpy as np
import pytest


@pytest.mark.slow
def test_demo_runs_all_stages_and_learns(run_cli, tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--out", out, "--minutes", "0.5", "--quiet", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("stage 1", "stage 2", "stage 3", "stage 4"):
        assert f"== {stage}" in r.stdout
    run = out / "run"
    for path in (out / "raw" / "manifest.json", out / "tokenizer" / "tokenizer.json",
                 out / "tokens" / "train_000000.bin", out / "tokens" / "val_000000.bin", run / "config.toml",
                 run / "loss.png", run / "samples.txt"):
        assert path.is_file(), path
        assert str(path) in r.stdout or str(path.parent) in r.stdout
    meta = json.loads((out / "tokens" / "meta.json").read_text())
    assert meta["val"]["documents"] == 3 and meta["vocab_size"] == 4096
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in rows if "val_loss" in x]
    assert val[0]["step"] == 0 and val[0]["val_loss"] == pytest.approx(math.log(4096), abs=0.3)
    assert val[-1]["val_loss"] < val[0]["val_loss"] - 1.0  # clearly learning even in 30 seconds
    final = r.stdout.split("final val loss ")[1]
    assert float(final.split()[0]) == pytest.approx(val[-1]["val_loss"], abs=1e-3)
    assert f"{val[-1]['val_bpb']:.3f} bits per byte" in final
    assert "sample:" in r.stdout and len(r.stdout.split("sample:")[1].strip()) > 20


def test_demo_refuses_a_bad_setting_before_any_work(run_cli, tmp_path):
    r = run_cli("demo", "--out", tmp_path / "demo", "--set", "train.nope=1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "train.nope" in r.stderr
    assert not (tmp_path / "demo").exists()


def test_choose_model_falls_back_to_the_smallest_and_keeps_the_sets(monkeypatch):
    from scratchllm import demo
    from scratchllm.demo import choose_model

    # Shapes small enough to time in a second, in the same order as the demo's: largest first.
    monkeypatch.setattr(demo, "DEMO_MODELS", [
        ["model.n_layer=2", "model.n_embd=64", "model.n_head=2"],
        ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=128"],
    ])
    DEMO_MODELS = demo.DEMO_MODELS
    tokens = np.random.default_rng(0).integers(0, 512, 50_000).astype(np.uint16)
    # No model makes MIN_STEPS in a thousandth of a minute: the smallest is trained, with the sets.
    cfg, rate = choose_model(512, tokens, 1e-3, sets=["train.dtype=float32", "train.batch_size=2"])
    assert rate > 0 and cfg.train.dtype == "float32" and cfg.train.batch_size == 2
    assert f"model.n_embd={cfg.model.n_embd}" in DEMO_MODELS[-1] and cfg.model.block_size == 128


def test_the_plan_fills_the_budget_less_five_evaluations_over_all_of_val():
    from scratchllm.config import build_config
    from scratchllm.demo import plan_training

    cfg = build_config("tiny-modern", sets=["train.batch_size=16", "model.block_size=256"])
    # 27 batches of 16 x 256 read 110,593 tokens once; five of them cost 5 * 27 / 3 = 45 steps.
    plan = plan_training(cfg, rate=2.0, minutes=5.0, val_tokens=110_593)
    assert plan.train.eval_batches == 27 and plan.train.max_steps == 0.95 * 2.0 * 300 - 45 == 525
    every = plan.train.eval_every
    assert 4 * every >= plan.train.max_steps > 3 * every  # four evaluations after step 0, none past the end
    assert plan.train.max_minutes == 5.0
    # A budget too small for anything still trains the minimum.
    assert plan_training(cfg, rate=2.0, minutes=0.1, val_tokens=110_593).train.max_steps == 20
