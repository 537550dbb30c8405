"""A run killed with SIGKILL and resumed must log exactly the losses of an uninterrupted run."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from _train_helpers import (
    byte_token_dir,
    kill_after_step,
    losses,
    modded_nanogpt_dir,
    sets,
    shakespeare_bytes,
)

STEPS = 40
# Dropout on, so the torch RNG matters; random windows, so the loader cursor matters; warmup and
# cosine, so the scheduler position matters.
ARGS = sets(model__dropout=0.1,
            train__ckpt_every=5, train__eval_every=10, train__max_steps=STEPS)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return byte_token_dir(tmp_path_factory.mktemp("resume") / "data", shakespeare_bytes(300_000))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The same text as four train shards and a val shard of llm.c files, as modded-nanogpt names them."""
    return modded_nanogpt_dir(tmp_path_factory.mktemp("resume") / "shards", shakespeare_bytes(300_000))


def _cmd(data, run, *extra):
    return [sys.executable, "-m", "scratchllm", "train", "--data", str(data), "--out", str(run), "--quiet",
            *ARGS, *extra]


# Muon's momentum buffers and warm-up and WSD's stable phase must come back too; the second recipe
# trains on a folder of shards written as modded-nanogpt writes them (windows run across shards).
RECIPES = {"adamw-cosine": [], "muon-wsd": ["--set", "train.optimizer=muon", "--set", "train.schedule=wsd",
                                           "--set", "train.muon_momentum_warmup=20", "--set",
                                           "model.vocab_size=256"]}


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("recipe", RECIPES)
def test_sigkill_then_resume_equals_uninterrupted(data, shards, tmp_path, cli_env, recipe):
    data = shards if recipe == "muon-wsd" else data
    full = tmp_path / "full"
    subprocess.run(_cmd(data, full, *RECIPES[recipe]), env=cli_env, check=True, capture_output=True,
                   timeout=300)

    run = tmp_path / "killed"
    # killed between checkpoints, once step 13 is logged (the last checkpoint: 10)
    proc = kill_after_step(_cmd(data, run, *RECIPES[recipe]), cli_env, run, 13, stderr=subprocess.PIPE)
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(step for step, _ in losses(run))
    assert 13 <= killed_at < STEPS, "the run must die mid-way"

    done = subprocess.run(_cmd(data, run, "--resume", *RECIPES[recipe]), env=cli_env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected, got = losses(full), losses(run)
    assert [s for s, _ in got] == list(range(1, STEPS + 1))
    assert got == expected  # bit for bit: floats compared exactly
    val = lambda r: [line for line in (r / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]  # noqa: E731
    assert val(run) == val(full)


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_step_saves_and_exits_0(data, tmp_path, cli_env, sig):
    run = tmp_path / "run"
    args = [a.replace("train.max_steps=40", "train.max_steps=100000") for a in _cmd(data, run)]
    proc = subprocess.Popen(args, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"loss"') >= 3):
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    last = max(step for step, _ in losses(run))
    assert (run / "ckpt" / f"step_{last}" / "state.json").is_file()  # the interrupted step was saved
    assert f"(received {sig.name})" in out  # the summary line names why it stopped


def _cfg(**extra):
    from scratchllm.config import build_config

    overrides = [f"{k.replace('__', '.')}={v}" for k, v in extra.items()]
    return build_config("tiny", sets=[*ARGS[1::2], *overrides])


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tok_per_s"} for r in rows]  # all but the timing


@pytest.mark.parametrize("how", ["signal", "time"])
def test_stop_by_signal_or_time_budget_then_resume_equals_uninterrupted(data, tmp_path, monkeypatch, how):
    import types

    from scratchllm.data.loader import TokenLoader
    from scratchllm.train import train
    from scratchllm.train import trainer as trainer_module

    cfg = _cfg(train__max_steps=12, train__max_minutes=1000)
    train(cfg, data, tmp_path / "full", quiet=True)

    # Stop during step 8, off the evaluation and checkpoint schedule (every 10 and 5 steps).
    offset, calls, real_next = [0.0], [0], TokenLoader.next_batch

    def next_batch(self):
        calls[0] += 1
        if calls[0] == 8:
            if how == "signal":
                signal.raise_signal(signal.SIGTERM)
            else:
                offset[0] = 1e6  # the clock jumps past the time budget
        return real_next(self)

    monkeypatch.setattr(TokenLoader, "next_batch", next_batch)
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(
        perf_counter=lambda: time.perf_counter() + offset[0]))
    summary = train(cfg, data, tmp_path / "stopped", quiet=True)
    assert summary["step"] == 8 and summary["stop_reason"].startswith("received" if how == "signal" else
                                                                       "reached the time budget")
    assert (summary["val_loss"] is None) == (how == "signal")  # a signal exits without evaluating
    monkeypatch.undo()
    train(cfg, data, tmp_path / "stopped", resume=True, quiet=True)
    assert _rows(tmp_path / "stopped") == _rows(tmp_path / "full")


def test_resume_in_another_dtype(data, tmp_path):
    from scratchllm.train import train

    train(_cfg(train__max_steps=2, train__eval_every=100), data, tmp_path / "run", quiet=True)
    summary = train(_cfg(train__max_steps=4, train__eval_every=100, train__dtype="float16"), data,
                    tmp_path / "run", resume=True, quiet=True)  # a float16 grad scaler starts fresh
    assert summary["step"] == 4 and math.isfinite(summary["val_loss"])


def _strict_json(path):
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(path.read_text(), parse_constant=no_constants)


def test_broken_newest_checkpoint_is_set_aside_and_the_resume_stays_exact(data, tmp_path):
    from scratchllm.run import checkpoint as ck
    from scratchllm.train import train

    cfg = _cfg(train__max_steps=10, train__ckpt_every=5, train__eval_every=100, train__keep_last=2)
    run = tmp_path / "run"
    train(cfg, data, run, quiet=True)
    full = _rows(run)
    weights = run / "ckpt" / "step_10" / ck.MODEL_FILE
    damaged = bytearray(weights.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    weights.write_bytes(bytes(damaged))

    summary = train(cfg, data, run, resume=True, quiet=True)  # from step 5, past the broken step 10
    assert summary["step"] == 10
    assert [p.name for p in ck.list_checkpoints(run / "ckpt")] == ["step_5", "step_10"]
    ck.verify(run / "ckpt" / "step_10")  # the new, good one
    assert (run / "ckpt" / "broken_step_10").is_dir()  # set aside, not deleted
    assert _rows(run) == full
    assert _strict_json(run / "ckpt" / "step_10" / ck.STATE_FILE)["best_val"] is not None


def test_resume_with_no_usable_checkpoint_refuses_and_keeps_the_log(data, tmp_path):
    from scratchllm.run import checkpoint as ck
    from scratchllm.train import train
    from scratchllm.util.errors import UserError

    cfg = _cfg(train__max_steps=5, train__ckpt_every=5, train__eval_every=100)
    run = tmp_path / "run"
    train(cfg, data, run, quiet=True)
    before = (run / "metrics.jsonl").read_text()
    (run / "ckpt" / "step_5" / ck.OPTIM_FILE).write_bytes(b"damaged")
    with pytest.raises(UserError, match="no checkpoint in .* passes its checks"):
        train(cfg, data, run, resume=True, quiet=True)
    assert (run / "metrics.jsonl").read_text() == before
    assert (run / "ckpt" / "step_5").is_dir()


def test_signal_during_the_final_evaluation_still_saves(data, tmp_path, monkeypatch):
    from scratchllm.run import checkpoint as ck
    from scratchllm.train import train
    from scratchllm.train import trainer as trainer_module

    real_evaluate, calls = trainer_module.evaluate, [0]

    def evaluate(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # the first is at step 0, the second the final one
            signal.raise_signal(signal.SIGTERM)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", evaluate)
    # A token budget ends the run off the evaluation schedule, so the final evaluation follows the loop.
    cfg = _cfg(train__max_steps=100, train__max_tokens=6 * 8 * 64, train__ckpt_every=100,
               train__eval_every=100)
    summary = train(cfg, data, tmp_path / "run", quiet=True)
    assert summary["step"] == 6 and calls[0] == 2 and "token budget" in summary["stop_reason"]
    state = _strict_json(tmp_path / "run" / "ckpt" / "step_6" / ck.STATE_FILE)
    assert state["step"] == 6 and state["val_loss"] == summary["val_loss"]


def test_a_checkpoint_of_the_earlier_format_resumes_exactly(data, tmp_path):
    """One process used to write its generators only as "rng" (no "rng_ranks"): such a checkpoint is read
    as before, every part restored, and the resumed run logs what the uninterrupted one does."""
    from scratchllm.run import checkpoint as ck
    from scratchllm.train import train

    cfg = _cfg(train__max_steps=10, train__eval_every=4)
    train(cfg, data, tmp_path / "full", quiet=True)
    run = tmp_path / "run"
    train(_cfg(train__max_steps=10, train__eval_every=4, train__max_tokens=7 * 8 * 64), data, run, quiet=True)
    state_file = run / "ckpt" / "step_7" / ck.STATE_FILE
    state = json.loads(state_file.read_text())
    assert state.pop("rng_ranks") == [state["rng"]]
    state_file.write_text(json.dumps(state))  # as the earlier code wrote it
    summary = train(cfg, data, run, resume=True, quiet=True)
    assert summary["step"] == 10 and _rows(run) == _rows(tmp_path / "full")
