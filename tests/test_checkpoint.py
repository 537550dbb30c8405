"""Checkpoints: exact round trip, no code execution on load, atomic folders, corrupt ones skipped, pruning."""

import json
import logging
import random

import numpy as np
import pytest
import torch
from _ckpt_edits import EDITS, rehash

from scratchllm.config import TrainConfig
from scratchllm.model.gpt import GPT, GPTConfig
from scratchllm.run import checkpoint as ck
from scratchllm.run.load import load_run
from scratchllm.runtime.rng import set_rng_state
from scratchllm.train.optim import make_optimizer


def _warnings(caplog) -> list[str]:
    """The library's warnings logged during the test so far (since caplog.clear())."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("scratchllm")]


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
    set_rng_state(state["rng"])
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
def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path, damage, caplog):
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
    caplog.clear()
    path, state = ck.latest_checkpoint(tmp_path)
    warnings = _warnings(caplog)
    assert path == good and state["step"] == 10
    assert len(warnings) == 1 and str(bad) in warnings[0]


def test_a_reader_of_the_weights_checks_the_model_file_alone(tmp_path, monkeypatch, caplog):
    """generate, eval and export read the weights: the optimizer file is neither hashed nor opened for
    them, so a damaged one costs them nothing, while a resume, which reads it, refuses it."""
    model, opt = _model_and_opt()
    loader = {"batches": 3, "order": "random", "seed": 1, "batch_size": 2, "block_size": 8, "world_size": 1,
              "n_tokens": 100}
    path = ck.save_checkpoint(tmp_path, 10, model, opt, {"loader": loader})
    (path / ck.OPTIM_FILE).write_bytes(b"damaged")
    hashed = []
    real = ck.sha256_file
    monkeypatch.setattr(ck, "sha256_file", lambda f: hashed.append(f.name) or real(f))
    caplog.clear()
    assert ck.latest_checkpoint(tmp_path)[0] == path and hashed == [ck.MODEL_FILE] and not _warnings(caplog)
    with pytest.raises(ValueError, match="optimizer.pt has 7 bytes"):
        ck.verify(path, training=True)


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


# --- checkpoints edited after saving, with state.json's hashes made to match ---------------------


@pytest.mark.parametrize("edit", EDITS)
def test_edited_checkpoint_is_refused_naming_the_file_and_an_older_one_used(tmp_path, edit, monkeypatch,
                                                                            caplog):
    monkeypatch.chdir(tmp_path)  # where the pickle's command would leave its trace
    model, opt = _model_and_opt()
    state = {"loader": {"batches": 3, "order": "random", "seed": 1, "batch_size": 2, "block_size": 8,
                        "world_size": 1, "n_tokens": 100}}
    good = ck.save_checkpoint(tmp_path / "ckpt", 10, model, opt, state)
    bad = ck.save_checkpoint(tmp_path / "ckpt", 20, model, opt, state)
    damage, message = EDITS[edit]
    damage(bad)
    rehash(bad)
    with pytest.raises(ValueError) as caught:
        ck.verify(bad, training=True)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert "weights_only=False" not in str(caught.value)
    caplog.clear()
    assert ck.latest_checkpoint(tmp_path / "ckpt", training=True)[0] == good
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and str(bad) in warnings[0] and message in warnings[0]
    assert not (tmp_path / "PWNED").exists()


def test_a_checkpoint_without_loader_or_optimizer_still_serves_its_model(tmp_path):
    model, _ = _model_and_opt()
    path = ck.save_checkpoint(tmp_path, 4, model)  # as an edited model is saved: weights only
    assert ck.verify(path)["step"] == 4
    with pytest.raises(ValueError, match="holds no optimizer.pt"):
        ck.verify(path, training=True)
    found, why = ck.resume_point(tmp_path)
    assert found is None and str(path) in why and "\n" not in why


_WRITER = """
import sys
from pathlib import Path
import torch
from scratchllm.config import load_run_config
from scratchllm.model.gpt import GPT
from scratchllm.run import checkpoint as ck
run = Path(sys.argv[1])
model = GPT(load_run_config(run / "config.toml").model)
for step in range(1, int(sys.argv[2]) + 1):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    ck.save_checkpoint(run / "ckpt", step, model)
    ck.prune(run / "ckpt", keep_last=1)
"""


@pytest.mark.slow
def test_a_reader_beside_a_training_run_sees_only_whole_checkpoints(tmp_path, cli_env, caplog):
    import subprocess
    import sys

    from scratchllm.config import Config

    cfg = Config(GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64))
    cfg.save(tmp_path / "config.toml")
    ck.save_checkpoint(tmp_path / "ckpt", 0, GPT(cfg.model))
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), "150"], env=cli_env)
    seen = set()
    caplog.clear()
    try:
        while writer.poll() is None:
            # Saves and prunes go on all the while; each load must be one whole checkpoint of one step.
            _, model, path = load_run(tmp_path)
            step = int(path.name.removeprefix("step_"))
            if step:  # step 0 holds the random initial weights
                assert all(torch.all(p == step) for p in model.parameters()), path
            seen.add(step)
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0 and not _warnings(caplog)
    assert len(seen) >= 5  # the reads really did overlap the writes


# --- the disk guard ----------------------------------------------------------------------------------


def test_disk_guard_refuses_a_checkpoint_that_would_not_fit_and_keeps_the_last(tmp_path):
    from scratchllm.util.errors import UserError

    model, opt = _model_and_opt()
    good = ck.save_checkpoint(tmp_path, 10, model, opt)
    need = ck.checkpoint_bytes(model, opt)
    assert need >= sum(f.stat().st_size for f in good.iterdir())  # the estimate errs on the large side
    with pytest.raises(UserError) as caught:
        ck.save_checkpoint(tmp_path, 20, model, opt, min_free=10**6, free_space=lambda p: need + 10**6 - 1)
    message = str(caught.value)
    assert message.startswith("disk guard:") and "step_20" in message and "--resume" in message
    assert "step_10, is kept" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10"]
    ck.verify(good)
    # Just enough room: it saves.
    ck.save_checkpoint(tmp_path, 20, model, opt, min_free=10**6, free_space=lambda p: need + 10**6)


def test_a_full_disk_stops_a_save_in_one_line_and_the_last_checkpoint_stays(small_disk, monkeypatch):
    from _train_helpers import fill_disk

    from scratchllm.util.errors import UserError

    disk = small_disk("2m")
    model, opt = _model_and_opt()
    good = ck.save_checkpoint(disk / "ckpt", 10, model, opt)
    size = sum(f.stat().st_size for f in good.iterdir())
    filler = fill_disk(disk, leave=size // 2)
    with pytest.raises(UserError, match="^disk guard: .*step_10, is kept"):  # the guard, on the real disk
        ck.save_checkpoint(disk / "ckpt", 20, model, opt)
    # An estimate that is wrong (or a disk another program fills meanwhile): the write itself fails.
    monkeypatch.setattr(ck, "checkpoint_bytes", lambda model, optimizer: 1)
    with pytest.raises(UserError) as caught:
        ck.save_checkpoint(disk / "ckpt", 20, model, opt, min_free=0)
    message = str(caught.value)
    assert message.startswith(f"writing checkpoint {disk / 'ckpt' / 'step_20'} failed")
    assert "step_10, is kept" in message and "\n" not in message
    assert sorted(p.name for p in (disk / "ckpt").iterdir()) == ["step_10"]  # nothing half-written left
    assert ck.verify(good)["step"] == 10
    filler.unlink()
    ck.verify(ck.save_checkpoint(disk / "ckpt", 20, model, opt, min_free=0))  # room again: it saves
