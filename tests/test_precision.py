"""train.dtype=auto: bf16 only where the hardware runs it fast, the choice recorded with the run."""

import json

import pytest
import torch
from _train_helpers import byte_token_dir, shakespeare_bytes

from scratchllm.runtime import precision
from scratchllm.runtime.precision import Precision, autocast, resolve

CPU = torch.device("cpu")


@pytest.fixture
def cpu_kind(monkeypatch):
    """Make this CPU look like one with (True) or without (False) bf16 instructions."""
    def set_kind(fast: bool):
        monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    return set_kind


@pytest.mark.parametrize(("mkldnn", "avx512_bf16", "amx", "machine", "fast"), [
    (False, False, False, "x86_64", False),  # AVX2 only: PyTorch's reference GEMM
    (True, False, False, "x86_64", False),  # AVX-512 without BF16: oneDNN emulates bf16
    (True, True, False, "x86_64", True),  # AVX-512 BF16 (e.g. Zen 4, Cooper Lake)
    (True, False, True, "x86_64", True),  # AMX (Sapphire Rapids)
    (True, False, False, "aarch64", True),  # oneDNN says yes on Arm only with the BF16 extension
    (False, False, False, "arm64", False),
])
def test_fast_bf16_needs_bf16_instructions(monkeypatch, mkldnn, avx512_bf16, amx, machine, fast):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    assert precision.cpu_has_fast_bf16() is fast


def test_auto_on_a_cpu_follows_its_instructions(cpu_kind):
    cpu_kind(False)
    p = resolve("auto", CPU)
    assert p == Precision("float32", p.reason) and "no bf16 instructions" in p.reason and p.warning is None
    assert p.iteration_dtype == torch.float32 and not p.uses_scaler
    cpu_kind(True)
    assert resolve("auto", CPU).dtype == "bfloat16" and resolve("auto", CPU).iteration_dtype == torch.bfloat16
    assert resolve("float32", CPU).iteration_dtype == torch.float32  # a float32 run is float32 throughout


def test_explicit_bf16_on_a_slow_cpu_is_kept_but_warned(cpu_kind):
    cpu_kind(False)
    p = resolve("bfloat16", CPU)
    assert p.dtype == "bfloat16" and "many times slower than float32" in p.warning
    assert "\n" not in p.warning
    cpu_kind(True)
    assert resolve("bfloat16", CPU).warning is None
    assert resolve("float16", CPU).dtype == "float16" and resolve("float16", CPU).uses_scaler


@pytest.mark.parametrize(("bf16", "capability", "dtype"), [
    (True, (9, 0), "bfloat16"), (False, (7, 5), "float16"), (False, (6, 1), "float32")])
def test_auto_on_cuda_by_tensor_cores(monkeypatch, bf16, capability, dtype):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Test GPU")
    p = resolve("auto", torch.device("cuda"))
    assert p.dtype == dtype and "NVIDIA Test GPU" in p.reason
    assert p.uses_scaler == (dtype == "float16")


def test_auto_elsewhere_is_float32():
    assert resolve("auto", torch.device("mps")).dtype == "float32"


def test_autocast_is_off_in_float32_and_on_otherwise():
    with autocast(CPU, "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, "bfloat16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _small(**extra):
    from scratchllm.config import build_config

    sets = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
            "train.batch_size=2", "train.eval_batches=1", "train.sample_tokens=0", "train.eval_every=100",
            "train.ckpt_every=2", "train.log_every=1", "train.warmup_steps=1"]
    return build_config("tiny", sets=sets + [f"{k}={v}" for k, v in extra.items()])


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_choice_is_printed_recorded_and_made_again_on_resume(cpu_kind, tmp_path, capsys, cli_logging):
    from scratchllm.train import train

    cli_logging()  # as `scratchllm train` shows the library's records

    data = byte_token_dir(tmp_path / "data", shakespeare_bytes(20_000))
    run = tmp_path / "run"
    cpu_kind(False)
    assert _small().train.dtype == "auto"  # the default
    train(_small(**{"train.max_steps": 2}), data, run)
    assert "precision: float32 (this CPU has no bf16 instructions" in capsys.readouterr().err
    first = _rows(run)[0]
    assert first == {"step": 0, "dtype": "float32", "dtype_reason": first["dtype_reason"], "device": "cpu"}
    state = json.loads((run / "ckpt" / "step_2" / "state.json").read_text())
    assert state["dtype"] == "float32"

    cpu_kind(True)  # the same run continued on a machine with bf16 instructions
    train(_small(**{"train.max_steps": 4}), data, run, resume=True)
    assert "trained in float32; continuing in bfloat16" in capsys.readouterr().err
    changes = [(r["step"], r["dtype"]) for r in _rows(run) if "dtype" in r]
    assert changes == [(0, "float32"), (2, "bfloat16")]
    assert json.loads((run / "ckpt" / "step_4" / "state.json").read_text())["dtype"] == "bfloat16"
    assert [r["step"] for r in _rows(run) if "loss" in r] == [1, 2, 3, 4]


def test_explicit_bf16_on_a_slow_cpu_warns_once_even_when_quiet(cpu_kind, tmp_path, capsys, cli_logging):
    from scratchllm.train import train

    cli_logging(quiet=True)  # as `scratchllm train --quiet` shows them

    data = byte_token_dir(tmp_path / "data", shakespeare_bytes(20_000))
    cpu_kind(False)
    summary = train(_small(**{"train.max_steps": 1, "train.dtype": "bfloat16"}), data, tmp_path / "run",
                    quiet=True)
    assert summary["step"] == 1
    err = capsys.readouterr().err
    assert err.count("many times slower than float32") == 1 and "precision:" not in err
