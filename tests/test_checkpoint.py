"""Checkpoints: exact round trip, no code execution on load, atomic folders, corrupt ones skipped, pruning."""

import json
import random

import numpy as np
import pytest
import torch

from scratchllm.config import TrainConfig
from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.train import checkpoint as ck
from scratchllm.train.optim import make_optimizer


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16))
    opt = make_optimizer(model, TrainConfig())
    x = torch.randint(0, 50, (2, 9))
    model(x[:, :-1], x[:, 1:])[1].backward()
    opt.step()
    return model, opt


def test_round_trip_restores_weights_optimizer_and_rngs(tmp_path):
    model, opt = _model_and_opt(0)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = ck.save_checkpoint(tmp_path, 7, model, opt, {"loader": {"batches": 4}})
    expected = (random.random(), np.random.rand(), torch.rand(3))

    other, other_opt = _model_and_opt(1)
    ck.load_model_weights(other, path)
    ck.load_optimizer(other_opt, path)
    found, state = ck.latest_checkpoint(tmp_path)
    ck.set_rng_state(state["rng"])
    assert found == path and state["step"] == 7 and state["loader"] == {"batches": 4}
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert other.lm_head.weight is other.transformer.wte.weight  # the tie survives loading
    for a, b in zip(opt.state.values(), other_opt.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_optimizer_file_loads_with_weights_only(tmp_path):
    model, opt = _model_and_opt()
    path = ck.save_checkpoint(tmp_path, 1, model, opt)
    torch.load(path / ck.OPTIM_FILE, weights_only=True)  # raises if anything needs unpickling code
    assert not list(tmp_path.glob(".tmp*"))  # the temporary folder was renamed away


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_state", "bad_json"])
def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path, damage):
    model, opt = _model_and_opt()
    good = ck.save_checkpoint(tmp_path, 10, model, opt)
    bad = ck.save_checkpoint(tmp_path, 20, model, opt)
    weights = bad / ck.MODEL_FILE
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete_state":
        (bad / ck.STATE_FILE).unlink()
    else:
        (bad / ck.STATE_FILE).write_text("{not json")
    warnings = []
    path, state = ck.latest_checkpoint(tmp_path, warn=warnings.append)
    assert path == good and state["step"] == 10
    assert len(warnings) == 1 and str(bad) in warnings[0]


def test_half_written_temporary_folder_is_ignored(tmp_path):
    model, opt = _model_and_opt()
    ck.save_checkpoint(tmp_path, 5, model, opt)
    (tmp_path / ".tmp_step_9_123").mkdir()
    (tmp_path / "step_x").mkdir()
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_5"]


def test_save_removes_temporary_folders_of_killed_saves(tmp_path):
    model, opt = _model_and_opt()
    for pid in (123, 456):  # a save killed mid-way leaves its folder, named with its process id
        (tmp_path / f".tmp_step_9_{pid}").mkdir()
        (tmp_path / f".tmp_step_9_{pid}" / ck.MODEL_FILE).write_bytes(b"half")
    ck.save_checkpoint(tmp_path, 10, model, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10"]


def test_prune_keeps_last_k_and_best(tmp_path):
    model, _ = _model_and_opt()
    for step in (100, 200, 300, 400, 500):
        ck.save_checkpoint(tmp_path, step, model)
    ck.prune(tmp_path, keep_last=2, best=tmp_path / "step_200")
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_200", "step_400", "step_500"]


def test_state_json_is_plain_json(tmp_path):
    model, opt = _model_and_opt()
    path = ck.save_checkpoint(tmp_path, 3, model, opt, {"val_loss": 1.5})
    state = json.loads((path / ck.STATE_FILE).read_text())
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"} and state["val_loss"] == 1.5
    assert set(state["files"]) == {ck.MODEL_FILE, ck.OPTIM_FILE}
