"""A run killed with SIGKILL and resumed must log exactly the losses of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from _train_helpers import byte_token_dir, losses, sets, shakespeare_bytes

STEPS = 40
# Dropout on, so the torch RNG matters; random windows, so the loader cursor matters; warmup and
# cosine, so the scheduler position matters.
ARGS = sets(model__dropout=0.1,
            train__ckpt_every=5, train__eval_every=10, train__max_steps=STEPS)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return byte_token_dir(tmp_path_factory.mktemp("resume") / "data", shakespeare_bytes(300_000))


def _cmd(data, run, *extra):
    return [sys.executable, "-m", "scratchllm", "train", "--data", str(data), "--out", str(run), "--quiet",
            *ARGS, *extra]


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_sigkill_then_resume_equals_uninterrupted(data, tmp_path, cli_env):
    full = tmp_path / "full"
    subprocess.run(_cmd(data, full), env=cli_env, check=True, capture_output=True, timeout=300)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(data, run), env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill between checkpoints, after step 12 (the last checkpoint: 10)
        if metrics.exists() and any('"loss"' in line and json.loads(line)["step"] >= 13
                                    for line in metrics.read_text().splitlines()[:-1]):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(step for step, _ in losses(run))
    assert 13 <= killed_at < STEPS, "the run must die mid-way"

    done = subprocess.run(_cmd(data, run, "--resume"), env=cli_env, capture_output=True, text=True,
                          timeout=300)
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
