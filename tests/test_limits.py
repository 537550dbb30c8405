"""The memory a config needs is bounded from below, so only configs that cannot fit are refused; an
evaluation never reads val.bin more than once."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from scratchllm.config import PRESETS, Config
from scratchllm.data.loader import eval_batches, val_batch_count
from scratchllm.model.gpt import GPT
from scratchllm.train import limits
from scratchllm.util.errors import UserError

VARIANTS = {"gpt2": {}, "swiglu": {"mlp": "swiglu"}, "untied": {"tie_embeddings": False},
            "modern": {"pos": "rope", "norm": "rmsnorm", "mlp": "relu2", "bias": False, "qk_norm": True}}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_bound_is_below_the_real_count(preset, variant):
    shape = replace(PRESETS[preset].model, vocab_size=50257, **VARIANTS[variant])
    with torch.device("meta"):  # shapes only
        real = GPT(shape).num_params()
    assert 0.75 * real < limits.min_params(shape) <= real  # a bound, and not a loose one


def _cfg(preset: str, **train) -> Config:
    cfg = Config.preset(preset)
    return replace(cfg, model=replace(cfg.model, vocab_size=50257), train=replace(cfg.train, **train))


@pytest.mark.parametrize("preset, gigabytes", [("gpt2-124m", 24), ("gpt2-350m", 24), ("tiny", 2)])
def test_configs_that_fit_are_never_refused(preset, gigabytes):
    limits.check_memory(_cfg(preset), gigabytes * 10**9, "a test machine")  # must not raise


@pytest.mark.parametrize("change, setting", [
    ({"n_layer": 10**9}, "model.n_layer=1000000000"),
    ({"n_embd": 2**20, "n_head": 1}, "model.n_embd=1048576"),
    ({"vocab_size": 10**12}, "model.vocab_size=1000000000000"),
])
def test_configs_that_cannot_fit_are_refused_in_one_line(change, setting):
    cfg = _cfg("gpt2-124m")
    cfg = replace(cfg, model=replace(cfg.model, **change))
    with pytest.raises(UserError) as caught:
        limits.check_memory(cfg, 128 * 10**9, "this machine's memory and swap")
    message = str(caught.value)
    assert message.startswith("this model cannot be trained here") and setting in message
    assert "128.00 GB of this machine's memory and swap" in message and "\n" not in message


def test_a_huge_micro_batch_is_refused_too():
    with pytest.raises(UserError, match="train.batch_size=1000000"):
        limits.check_memory(_cfg("gpt2-124m", batch_size=10**6), 10**12, "a test machine")


def test_evaluation_reads_each_validation_window_at_most_once():
    tokens = np.arange(1000, dtype=np.uint16)
    held = val_batch_count(len(tokens), batch_size=4, block_size=16)
    assert held == 16  # 62 windows of 16 tokens, 4 a batch
    assert len(list(eval_batches(tokens, 4, 16, 10**9))) == held
    assert len(list(eval_batches(tokens, 4, 16, 3))) == 3
