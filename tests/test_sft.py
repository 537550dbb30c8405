"""`scratchllm sft`: fine-tuning on conversations with the pre-training Trainer, from our own run or a
transformers GPT-2 folder; exact resume after SIGKILL; torchrun equal to one process; the exported
tokenizer's chat template gives `render`'s ids."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _sft_helpers import SFT_TINY, metric_rows
from _train_helpers import kill_after_step, losses

from scratchllm.cli import main
from scratchllm.config import load_run_config
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.chat import CHAT_TOKENS, render


@pytest.fixture
def base(chat_base):
    """A tiny GPT pre-trained on Shakespeare with dropout, with a BPE that reserves the chat tokens."""
    return chat_base[0]


@pytest.fixture
def chats(chitchat_file):
    return chitchat_file


def sft_args(base, chats, out, *extra):
    return ["sft", "--init", str(base), "--data", f"jsonl:{chats}", "--out", str(out), "--quiet", *SFT_TINY,
            "--val-conversations", "20", *extra]


def test_sft_learns_the_assistant_turns(base, chats, tmp_path, capsys):
    out = tmp_path / "chat"
    assert main(sft_args(base, chats, out, "--max-steps", "40", "--set", "train.eval_every=20",
                         "--set", "train.lr=1e-3")) == 0
    reported = capsys.readouterr().out
    assert "held-out assistant loss" in reported and "tokens/s" in reported
    val = metric_rows(out, "val_loss")
    assert [s for s, _ in val] == [0, 20, 40]
    assert val[-1][1] < val[0][1] - 0.3  # the held-out replies got likelier
    train = metric_rows(out, "loss")
    assert np.mean([v for _, v in train[-5:]]) < np.mean([v for _, v in train[:5]]) - 0.3
    assert (out / "loss.png").stat().st_size > 1000
    tok = Tokenizer.load(out / "tokenizer")
    assert tok.sha256() == Tokenizer.load(base / "tokenizer").sha256()  # the chat tokens were reserved
    cfg = load_run_config(out / "config.toml")
    assert cfg.train.init.startswith(str(base.resolve())) and cfg.train.data == f"jsonl:{chats}"
    assert cfg.model == load_run_config(base / "config.toml").model


def test_sft_refuses_model_keys_and_an_unusable_source_in_one_line(base, tmp_path, run_cli):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    for extra, why in [(["--data", f"jsonl:{bad}"], "no usable conversation"),
                       (["--set", "model.n_layer=3"], "only train.* keys and model.dropout")]:
        r = run_cli("sft", "--init", base, "--out", tmp_path / "x", *extra)
        assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr


STEPS = 24


def _cmd(base, chats, run, *extra):
    return [sys.executable, "-m", "scratchllm", *sft_args(base, chats, run, "--max-steps", str(STEPS),
            "--set", "train.ckpt_every=5", "--set", "train.eval_every=10", *extra)]


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_sigkill_then_resume_equals_uninterrupted(base, chats, tmp_path, cli_env):
    full = tmp_path / "full"
    subprocess.run(_cmd(base, chats, full), env=cli_env, check=True, capture_output=True, timeout=300)
    run = tmp_path / "killed"
    # killed between checkpoints, after step 12 (the last checkpoint: 10)
    kill_after_step(_cmd(base, chats, run), cli_env, run, 12)
    killed_at = max(step for step, _ in losses(run))
    assert 12 <= killed_at < STEPS, "the run must die mid-way"
    done = subprocess.run(_cmd(base, chats, run, "--resume"), env=cli_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert losses(run) == losses(full) and [s for s, _ in losses(run)] == list(range(1, STEPS + 1))
    assert metric_rows(run, "val_loss") == metric_rows(full, "val_loss")


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process_with_grad_accum_2(base, chats, tmp_path, cli_env):
    one = tmp_path / "one"
    args = sft_args(base, chats, one, "--max-steps", "8", "--set", "train.eval_every=4",
                    "--set", "train.grad_accum=2", "--set", "model.dropout=0")
    single = subprocess.run([sys.executable, "-m", "scratchllm", *args],
                            env=cli_env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    two = tmp_path / "two"
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "scratchllm", *sft_args(base, chats, two, "--max-steps", "8",
                                                        "--set", "train.eval_every=4", "--set",
                                                        "model.dropout=0")],
                         env=cli_env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 9))
    assert np.allclose([x for _, x in a], [x for _, x in b], rtol=0, atol=1e-5)
    va, vb = metric_rows(one, "val_loss"), metric_rows(two, "val_loss")
    assert [s for s, _ in va] == [0, 4, 8] and np.allclose([v for _, v in va], [v for _, v in vb], atol=1e-5)


def _hf_ids(export, messages, **kw):
    from transformers import AutoTokenizer

    out = AutoTokenizer.from_pretrained(export).apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How art thou?"},
                {"role": "assistant", "content": "Well, I thank you."}, {"role": "user", "content": "Good"}]


def test_exported_chat_template_gives_render_ids_for_our_bpe_and_gpt2(base, chats, tmp_path):
    pytest.importorskip("transformers")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = tmp_path / "gpt2"  # a small GPT-2 as transformers saves one: its vocabulary, no tokenizer files
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=128)).save_pretrained(gpt2)
    whole = [*CONVERSATION, {"role": "assistant", "content": "Fare thee well."}]
    for name, init in [("ours", base), ("gpt2", gpt2)]:
        run, export = tmp_path / f"{name}_chat", tmp_path / f"{name}_export"
        assert main(sft_args(init, chats, run, "--max-steps", "2", "--set", "train.eval_every=2")) == 0
        assert main(["--quiet", "export", "--run", str(run), "--out", str(export)]) == 0
        tok = Tokenizer.load(run / "tokenizer")
        if name == "gpt2":  # GPT-2's ids and then the chat tokens in the padded rows
            assert [tok.special_tokens[t] for t in CHAT_TOKENS] == list(range(50257, 50262))
            assert load_run_config(run / "config.toml").model.vocab_size == 50262
        assert _hf_ids(export, whole) == render(whole, tok)[0]
        from scratchllm.tokenizer.chat import render_prompt

        assert _hf_ids(export, CONVERSATION, add_generation_prompt=True) == render_prompt(CONVERSATION, tok)
