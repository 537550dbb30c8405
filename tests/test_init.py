"""`train --init`: a new run from the weights and tokenizer of a run, an export or a transformers GPT-2
folder; refused for tokens of another tokenizer; resumed exactly; used by generate, eval, export. And
the chat tokens taken into the padded rows of a model whose tokenizer lacks them."""

import json

import pytest
import torch
from _sft_helpers import metric_rows, token_folder
from _train_helpers import losses

from scratchllm.cli import main
from scratchllm.config import GPTConfig, load_run_config
from scratchllm.run.init import load_init, with_vocab
from scratchllm.util.errors import UserError

TRAIN_SETS = ["--set", "train.batch_size=8", "--set", "train.dtype=float32", "--set", "train.warmup_steps=2",
              "--set", "train.log_every=1", "--set", "train.eval_batches=2", "--set", "train.sample_tokens=0"]


@pytest.fixture
def base(chat_base):
    return chat_base


def test_a_run_started_from_a_run_or_its_export_starts_at_its_loss(base, tmp_path, capsys):
    run, data = base
    (_, base_loss), = [r for r in metric_rows(run, "val_loss") if r[0] == 30]
    export = tmp_path / "export"
    assert main(["--quiet", "export", "--run", str(run), "--out", str(export)]) == 0
    for src in (run, export):
        out = tmp_path / f"from_{src.name}"
        assert main(["--quiet", "train", "--data", str(data), "--out", str(out), "--init", str(src),
                     *TRAIN_SETS, "--max-steps", "3"]) == 0
        (step, loss), *_ = metric_rows(out, "val_loss")
        assert step == 0 and loss == pytest.approx(base_loss, abs=1e-5)  # the same weights, not new ones
        assert [s for s, _ in losses(out)] == [1, 2, 3]  # a new run: its own steps, a fresh optimizer
        cfg = load_run_config(out / "config.toml")
        assert cfg.train.init.startswith(str(src.resolve())) and cfg.model == load_run_config(
            run / "config.toml").model
    # generate, eval and export take it like any run
    capsys.readouterr()
    assert main(["--quiet", "eval", "--run", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_loss"] > 0
    assert main(["--quiet", "generate", "--run", str(out), "--prompt", "KING", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("KING")


def test_tokens_of_another_tokenizer_are_refused_in_one_line(base, tmp_path, run_cli):
    from scratchllm.tokenizer import Tokenizer

    run, _ = base
    gpt2_tokens = token_folder(tmp_path / "gpt2_tokens", Tokenizer.pretrained("gpt2"))
    r = run_cli("train", "--data", gpt2_tokens, "--out", tmp_path / "x", "--init", run, "--max-steps", "1")
    assert r.returncode == 2 and "made with gpt2" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("train", "--data", gpt2_tokens, "--out", tmp_path / "x", "--init", run, "--preset", "tiny")
    assert r.returncode == 2 and "--init brings its model" in r.stderr


def test_a_transformers_gpt2_folder_starts_at_its_own_loss(tmp_path):
    transformers = pytest.importorskip("transformers")
    import numpy as np

    from scratchllm.data.folder import TokenFolder
    from scratchllm.tokenizer import Tokenizer

    torch.manual_seed(0)
    folder = tmp_path / "gpt2"
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64)
    hf = transformers.GPT2LMHeadModel(config)
    hf.save_pretrained(folder)
    data = token_folder(tmp_path / "tokens", Tokenizer.pretrained("gpt2"))
    out = tmp_path / "run"
    assert main(["--quiet", "train", "--data", str(data), "--out", str(out), "--init", str(folder),
                 *TRAIN_SETS,
                 "--set", "train.eval_batches=1", "--max-steps", "1"]) == 0
    (_, ours), *_ = metric_rows(out, "val_loss")
    # transformers' own loss on the same windows (the first 8 of the held-out tokens, one after another)
    val = np.asarray(TokenFolder.open(data).val[: 8 * 64 + 1], dtype=np.int64)
    x = torch.tensor(np.stack([val[i * 64 : i * 64 + 64] for i in range(8)]))
    y = torch.tensor(np.stack([val[i * 64 + 1 : i * 64 + 65] for i in range(8)]))
    with torch.no_grad():
        logits = hf.eval()(x).logits
    theirs = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()
    assert ours == pytest.approx(theirs, abs=1e-4)
    cfg = load_run_config(out / "config.toml")
    assert cfg.model.n_embd == 32 and cfg.model.vocab_size == 50257 and cfg.model.padded_vocab_size == 50304


def test_resuming_an_init_run_equals_the_uninterrupted_run(base, tmp_path):
    run, data = base
    args = ["--quiet", "train", "--data", str(data), "--init", str(run), *TRAIN_SETS, "--set",
            "train.ckpt_every=3", "--set", "train.eval_every=3", "--max-steps", "6"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    half = tmp_path / "half"
    assert main([*args, "--out", str(half), "--set", f"train.max_tokens={3 * 8 * 128}"]) == 0
    assert max(s for s, _ in losses(half)) == 3
    assert main(["--quiet", "train", "--data", str(data), "--out", str(half), "--resume",
                 "--set", "train.max_tokens=0"]) == 0
    assert losses(half) == losses(tmp_path / "full")  # bit for bit


def test_chat_tokens_take_padded_rows_or_are_refused():
    from scratchllm.model.gpt import GPT

    torch.manual_seed(0)
    shape = {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32, "pad_vocab_multiple": 64}
    model = GPT(GPTConfig(vocab_size=300, **shape))
    grown = with_vocab(model, 305)
    assert grown.config.vocab_size == 305 and grown.config.padded_vocab_size == 320
    assert torch.equal(grown.lm_head.weight, model.lm_head.weight)  # the same rows, now all read
    idx = torch.randint(0, 300, (1, 8))
    assert torch.equal(grown(idx)[0][..., :300], model(idx)[0])
    tight = GPT(GPTConfig(vocab_size=320, **shape))
    with pytest.raises(UserError, match="no room for a vocabulary of 325"):
        with_vocab(tight, 325)


def test_init_from_nothing_usable_is_refused(tmp_path):
    with pytest.raises(UserError, match="neither a run folder"):
        load_init(tmp_path)
