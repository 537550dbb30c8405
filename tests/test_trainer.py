"""The training loop: schedule values, learning on one batch and on real text, accumulation equivalence."""

import math

import numpy as np
import pytest
from _train_helpers import SMALL, byte_token_dir, losses, shakespeare_bytes

from scratchllm.config import TrainConfig, build_config
from scratchllm.data.tokens import write_tokens
from scratchllm.train import lr_at, train


def _cfg(**extra):
    merged = {**SMALL, **{k.replace("__", "."): v for k, v in extra.items()}}
    return build_config("tiny", sets=[f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                      for k, v in merged.items()])


def test_schedule_warmup_then_cosine_to_min_lr():
    tc = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, tc) == pytest.approx(1e-4)  # warmup starts at lr/warmup, never at 0
    assert lr_at(4, tc) == pytest.approx(5e-4)
    assert lr_at(9, tc) == pytest.approx(1e-3)
    assert lr_at(10, tc) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(60, tc) == pytest.approx(5.5e-4)  # halfway: the mean of lr and min_lr
    assert lr_at(85, tc) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(0.75 * math.pi)) * 9e-4)
    assert lr_at(110, tc) == pytest.approx(1e-4) and lr_at(500, tc) == pytest.approx(1e-4)
    values = [lr_at(s, tc) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_schedule_counts_optimizer_steps_not_micro_batches(tmp_path):
    data = byte_token_dir(tmp_path / "data", shakespeare_bytes(50_000))
    cfg = _cfg(train__grad_accum=4, train__warmup_steps=3, train__max_steps=8, train__eval_every=100)
    train(cfg, data, tmp_path / "run", quiet=True)
    import json

    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    assert [s for s, _ in logged] == list(range(1, 9))
    assert [lr for _, lr in logged] == pytest.approx([lr_at(s - 1, cfg.train) for s in range(1, 9)])
    assert logged[-1][1] < cfg.train.lr  # it decays within max_steps (the original never did)


def test_overfits_a_single_batch(tmp_path):
    # train.bin holds exactly one window, so every batch is the same 64 tokens
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    write_tokens(tmp_path / "data" / "train.bin", rng.integers(0, 256, 65).astype(np.uint16))
    write_tokens(tmp_path / "data" / "val.bin", rng.integers(0, 256, 65).astype(np.uint16))
    cfg = _cfg(model__vocab_size=256, train__batch_size=2, train__max_steps=150, train__lr=3e-3,
               train__min_lr=3e-3, train__warmup_steps=10, train__eval_every=1000, train__grad_clip=0.0)
    train(cfg, tmp_path / "data", tmp_path / "run", quiet=True)
    curve = losses(tmp_path / "run")
    assert curve[0][1] > 5.0  # ln 256 = 5.5 at the start
    assert curve[-1][1] < 0.05


def test_learns_real_text_below_the_unigram_entropy(tmp_path):
    text = shakespeare_bytes(400_000)
    data = byte_token_dir(tmp_path / "data", text)
    ids = np.frombuffer(text, dtype=np.uint8)
    n_val = len(ids) // 10
    counts = np.bincount(ids[:-n_val], minlength=256) + 1  # add-one so unseen bytes cost finite
    p = counts / counts.sum()
    unigram = -np.log(p[ids[-n_val:]]).mean()  # best loss without looking at context, about 3.2 nats
    cfg = _cfg(train__max_steps=200, train__lr=3e-3, train__min_lr=3e-4, train__eval_every=100,
               train__eval_batches=8)
    summary = train(cfg, data, tmp_path / "run", quiet=True)
    assert summary["val_loss"] < unigram - 0.3
    assert summary["val_bpb"] == pytest.approx(summary["val_loss"] / math.log(2))  # 1 byte per token


def test_accumulation_4x2_equals_8x1(tmp_path):
    data = byte_token_dir(tmp_path / "data", shakespeare_bytes(100_000))
    common = dict(train__order="sequential", train__max_steps=6, train__eval_every=100)
    train(_cfg(train__batch_size=2, train__grad_accum=4, **common), data, tmp_path / "a", quiet=True)
    train(_cfg(train__batch_size=8, train__grad_accum=1, **common), data, tmp_path / "b", quiet=True)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    assert np.allclose([x for _, x in a], [x for _, x in b], rtol=0, atol=1e-5)
    assert a[-1][1] < a[0][1]


def test_peak_flops_matches_whole_gpu_names():
    from scratchllm.train.trainer import PEAK_FLOPS, peak_flops

    assert peak_flops("NVIDIA L4") == PEAK_FLOPS["L4"]
    assert peak_flops("NVIDIA L40S") == PEAK_FLOPS["L40S"] != PEAK_FLOPS["L4"]
    assert peak_flops("NVIDIA L40") == PEAK_FLOPS["L40"]
    assert peak_flops("NVIDIA A100-SXM4-80GB") == PEAK_FLOPS["A100"]
    assert peak_flops("NVIDIA H100 80GB HBM3") == PEAK_FLOPS["H100"]
    assert peak_flops("NVIDIA H100 PCIe") == PEAK_FLOPS["H100 PCIE"] < PEAK_FLOPS["H100"]
    assert peak_flops("NVIDIA GeForce RTX 4090") == PEAK_FLOPS["4090"]
    assert peak_flops("NVIDIA GeForce RTX 3060") is None


def test_compile_without_a_working_compiler_warns_and_trains_eagerly(tmp_path, cli_env):
    import subprocess
    import sys

    from _train_helpers import sets

    data = byte_token_dir(tmp_path / "data", shakespeare_bytes(50_000))
    common = ["train", "--data", str(data), "--quiet", *sets(train__max_steps=3, train__eval_every=100)]
    env = {**cli_env, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
           "TORCHINDUCTOR_AUTOGRAD_CACHE": "0", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    r = subprocess.run([sys.executable, "-m", "scratchllm", *common, "--out", str(tmp_path / "c"),
                        "--set", "train.compile=true"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [line for line in r.stderr.splitlines() if "torch.compile" in line]
    assert len(warnings) == 1 and "training without it" in warnings[0], r.stderr
    train(_cfg(train__max_steps=3, train__eval_every=100), data, tmp_path / "eager", quiet=True)
    assert losses(tmp_path / "c") == losses(tmp_path / "eager")  # the eager path, exactly


def test_device_names_are_checked(monkeypatch):
    import torch

    from scratchllm.runtime.distributed import pick_device
    from scratchllm.util.errors import UserError

    assert pick_device("cpu").type == "cpu"
    with pytest.raises(UserError, match="train.device"):
        pick_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(UserError, match="cuda:5 but this machine has 1 GPU"):
        pick_device("cuda:5")


def test_a_second_ctrl_c_stops_at_once():
    import signal

    from scratchllm.train.state import StopSignals

    with StopSignals() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.received == "SIGINT"  # the first only asks for a stop at the end of the step
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("how", ["signal", "time"])
def test_a_loop_of_one_s_own_that_calls_step_alone_stops_on_a_signal_or_the_time_budget(how):
    """No log_step between the steps (as a benchmark's loop): should_stop still sees the stop."""
    import signal

    from scratchllm.train.state import StopSignals
    from scratchllm.train.trainer import Trainer

    tokens = np.random.default_rng(0).integers(0, 256, 5_000).astype(np.uint16)
    budget = 1e-9 if how == "time" else 0  # minutes
    trainer = Trainer(_cfg(model__vocab_size=256, train__max_steps=100, train__max_minutes=budget), tokens)
    with StopSignals() as trainer.signals:
        trainer.step()
        expected = "reached the time budget of 1e-09 minutes" if how == "time" else None
        assert trainer.should_stop() == expected
        if how == "signal":
            signal.raise_signal(signal.SIGTERM)
            trainer.step()  # the step under way finishes; then the loop hears of the signal
            assert trainer.should_stop() == "received SIGTERM"
    assert trainer.steps == (1 if how == "time" else 2)


def test_the_schedules_training_and_a_resume_share():
    tc = TrainConfig(max_steps=25, eval_every=10, task_every=0)
    assert [s for s in range(30) if tc.eval_due(s)] == [0, 10, 20, 25, 26, 27, 28, 29]
    assert [s for s in range(30) if tc.tasks_due(s)] == [25, 26, 27, 28, 29]  # at the end only
    tc = TrainConfig(max_steps=25, eval_every=10, task_every=6)
    assert [s for s in range(26) if tc.tasks_due(s)] == [0, 6, 12, 18, 24, 25]
