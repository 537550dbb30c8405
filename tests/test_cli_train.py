"""`train`, `eval`, `generate`, `export` from the command line: bad input ends in one line, exit 2;
the exported model is a transformers model that generates the same greedy text."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from _ckpt_edits import EDITS, rehash
from _cli_helpers import one_line_error
from _train_helpers import byte_token_dir, fill_disk, losses, sets

from scratchllm.data.tokens import read_tokens, write_tokens

_one_line_error = one_line_error


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory):
    return byte_token_dir(tmp_path_factory.mktemp("bytes") / "data", b"to be or not to be, " * 2000)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small run trained on real tokens (a BPE learned here), with its tokenizer."""
    import subprocess
    import sys

    from scratchllm.data.sources import open_source
    from scratchllm.data.tokenize import tokenize_to_dir
    from scratchllm.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("run")
    docs = [d for _, d in zip(range(4), open_source("shakespeare"), strict=False)]
    tok = train_bpe([d.text for d in docs[:3]], 400)
    tokenize_to_dir(docs, tok, root / "data", val_docs=1, quiet=True)
    cmd = [sys.executable, "-m", "scratchllm", "train", "--data", str(root / "data"), "--out",
           str(root / "run"), "--quiet", *sets(train__max_steps=30, train__eval_every=30, train__lr=3e-3)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return root / "run"


def test_missing_data_folder(run_cli, tmp_path):
    r = run_cli("train", "--data", tmp_path / "nope", "--out", tmp_path / "r")
    _one_line_error(r, "no such data folder")


def test_data_vocab_larger_than_model(run_cli, byte_data, tmp_path):
    r = run_cli("train", "--data", byte_data, "--out", tmp_path / "r", "--set", "model.vocab_size=200")
    _one_line_error(r, "vocabulary of 256", "model.vocab_size 200")


def test_unknown_set_key(run_cli, byte_data, tmp_path):
    _one_line_error(run_cli("train", "--data", byte_data, "--out", tmp_path / "r", "--set", "train.lrate=1"),
                    "unknown key train.lrate")


def test_wrong_typed_value(run_cli, byte_data, tmp_path):
    _one_line_error(run_cli("train", "--data", byte_data, "--out", tmp_path / "r",
                            "--set", "model.n_layer=two"), "model.n_layer must be int")


def test_truncated_token_file(run_cli, byte_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text((byte_data / "meta.json").read_text())
    write_tokens(data / "val.bin", list(range(200)))
    (data / "train.bin").write_bytes((byte_data / "train.bin").read_bytes()[:-10])
    _one_line_error(run_cli("train", "--data", data, "--out", tmp_path / "r"), "truncated")


def test_existing_run_needs_resume_and_is_left_alone(run_cli, run, byte_data):
    before = (run / "metrics.jsonl").read_text()
    _one_line_error(run_cli("train", "--data", byte_data, "--out", run), "--resume")
    _one_line_error(run_cli("train", "--data", byte_data, "--out", run, "--resume", "--preset", "tiny"),
                    "drop --preset")
    assert (run / "metrics.jsonl").read_text() == before


def test_eval_reproduces_the_last_validation_loss(run_cli, run):
    r = run_cli("eval", "--run", run)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = [x for x in rows if "val_loss" in x][-1]
    printed = float(r.stdout.split("val loss ")[1].split(",")[0])
    assert printed == pytest.approx(last["val_loss"], abs=1e-4)
    assert f"{last['val_bpb']:.4f} bits/byte" in r.stdout


def test_val_ids_beyond_the_model_without_meta(run_cli, byte_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_tokens(data / "train.bin", list(range(200)) * 20)
    write_tokens(data / "val.bin", [300] * 200)
    r = run_cli("train", "--data", data, "--out", tmp_path / "r", "--set", "model.vocab_size=256")
    _one_line_error(r, "val.bin: token ids reach 300")


def test_eval_on_tokens_of_another_tokenizer_is_refused(run_cli, run, byte_data, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("train.bin", "val.bin"):
        (other / name).write_bytes((byte_data / name).read_bytes())
    meta = json.loads((byte_data / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "tokenizer_sha256": "0" * 64}))
    _one_line_error(run_cli("eval", "--run", run, "--data", other), "another tokenizer than the run's")
    from scratchllm.config import load_run_config

    own = load_run_config(run / "config.toml").train.data
    assert run_cli("eval", "--run", run, "--data", own).returncode == 0  # its own tokens are fine


def test_eval_of_a_folder_without_a_run(run_cli, tmp_path):
    _one_line_error(run_cli("eval", "--run", tmp_path), "not a run folder")


def _stops_after(run, dest, prompt: str, k: int):
    """A copy of `run` whose model greedily writes k tokens after `prompt`, then <|endoftext|>.

    The end-of-text row of the (tied) head is solved for so that its logit is -50 at the first k
    positions and +50 at the next; nothing else changes, so the k tokens are the model's own."""
    import shutil

    import torch

    from scratchllm.run import checkpoint as ck
    from scratchllm.run.load import load_run, run_tokenizer

    shutil.copytree(run, dest)
    cfg, model, path = load_run(dest)
    tok = run_tokenizer(dest, cfg)
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        full = model.generate(ids, k, temperature=0)
        h = model._hidden(full)[0, ids.size(1) - 1:]  # hidden states that predict new tokens 0..k
        target = torch.full((k + 1, 1), -50.0)
        target[k] = 50.0
        model.lm_head.weight[tok.eot_id] = torch.linalg.lstsq(h, target).solution[:, 0]
    ck.save_checkpoint(dest / "ckpt", int(path.name[5:]) + 1, model)
    return tok.decode(full[0].tolist())


def test_generate_stops_at_end_of_text_and_transformers_agrees(run_cli, run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "KING. What say you"
    expected = _stops_after(run, tmp_path / "run", prompt, k=6)
    ours = run_cli("generate", "--run", tmp_path / "run", "--prompt", prompt, "--temperature", "0",
                   "--max-new-tokens", 20)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == expected + "\n"  # six tokens, then the end: the EOT itself is not printed
    no_cache = run_cli("generate", "--run", tmp_path / "run", "--prompt", prompt, "--temperature", "0",
                       "--max-new-tokens", 20, "--no-cache")
    assert no_cache.stdout == ours.stdout

    r = run_cli("export", "--run", tmp_path / "run", "--format", "hf", "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([tok.encode(prompt)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    assert out.size(1) == ids.size(1) + 7 and out[0, -1].item() == tok.eos_token_id  # stopped there too
    assert tok.decode(out[0], skip_special_tokens=True) + "\n" == ours.stdout


def test_export_replaces_only_an_earlier_export(run_cli, run, tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text('{"model_type": "gpt2"}')
    (project / "NOTES.md").write_text("mine")
    _one_line_error(run_cli("export", "--run", run, "--out", project), "not an earlier export")
    assert (project / "NOTES.md").read_text() == "mine" and (project / "src").is_dir()

    out = tmp_path / "hf"
    assert run_cli("export", "--run", run, "--out", out, "--quiet").returncode == 0
    first = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(b"stale")
    r = run_cli("export", "--run", run, "--out", out, "--quiet")  # an earlier export: replaced
    assert r.returncode == 0 and "Writing" not in r.stderr, r.stderr
    assert (out / "model.safetensors").read_bytes() == first
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert tok["model_max_length"] == 64  # the run's context, not "unlimited"
    _one_line_error(run_cli("export", "--run", run, "--out", ".", cwd=out), "current folder")


@pytest.mark.parametrize("flag, value, words", [
    ("--temperature", "nan", "finite --temperature"),
    ("--temperature", "-1", "finite --temperature"),
    ("--top-p", "0", "--top-p"),
    ("--seed", str(2**64), "--seed must be in"),
])
def test_generate_bad_arguments(run_cli, run, flag, value, words):
    _one_line_error(run_cli("generate", "--run", run, "--prompt", "To be", flag, value), words)


@pytest.mark.parametrize("flag, value", [("--temperature", "1e-300"), ("--top-p", "1e-300")])
def test_generate_with_a_tiny_temperature_or_top_p_is_greedy(run_cli, run, flag, value):
    args = ("generate", "--run", run, "--prompt", "To be", "--max-new-tokens", 12)
    greedy = run_cli(*args, "--temperature", "0")
    r = run_cli(*args, flag, value)
    assert r.returncode == 0, r.stderr
    assert r.stdout == greedy.stdout


def test_generate_to_a_narrow_encoding_replaces_what_it_cannot_show(run_cli, run, cli_env):
    env = {**cli_env, "PYTHONIOENCODING": "cp1252"}
    r = run_cli("generate", "--run", run, "--prompt", "snow \u2603", "--max-new-tokens", 30,
                "--temperature", "1.5", "--top-k", 0, env=env, errors="replace")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("snow ?")


def test_export_without_transformers_names_the_extra(monkeypatch, capsys, tmp_path):
    import sys

    from scratchllm.cli import main

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["scratchllm: error: this needs the transformers package: pip install 'scratchllm[hf]'"]


@pytest.mark.parametrize("text, words", [
    ("null", ["must hold a JSON object, not null"]),
    ("[1, 2]", ["must hold a JSON object, not [1, 2]"]),
    ('{"vocab_size": "abc"}', ['field "vocab_size" must be a positive integer, not "abc"']),
    ('{"val": 5}', ['field "val" must be an object', "not 5"]),
    ('{"val": {"documents": 1, "tokens": 4000, "bytes": "x"}}', ['field "val.bytes"', 'not "x"']),
    ('{"train": {"documents": 1, "tokens": -3, "bytes": 9}}', ['field "train.tokens"', "not -3"]),
    ('{"eot_id": 256}', ['field "eot_id" (256) must be below vocab_size (256)']),
    ("{not json", ["not valid JSON"]),
])
def test_malformed_meta_json_is_one_line_naming_the_field(run_cli, byte_data, tmp_path, text, words):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.bin", "val.bin"):
        (data / name).write_bytes((byte_data / name).read_bytes())
    meta = json.loads((byte_data / "meta.json").read_text())
    if text.startswith("{") and not text.startswith("{not"):
        text = json.dumps({**meta, **json.loads(text)})  # one field wrong, the rest as written
    (data / "meta.json").write_text(text)
    r = run_cli("train", "--data", data, "--out", tmp_path / "r")
    _one_line_error(r, str(data / "meta.json"), *words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_token_ids_beyond_meta_vocabulary_are_refused_on_opening(run_cli, run, byte_data, tmp_path, split):
    data = tmp_path / "data"
    data.mkdir()
    meta = json.loads((byte_data / "meta.json").read_text())
    for name in ("train", "val"):
        tokens = np.array(read_tokens(byte_data / f"{name}.bin"))
        if name == split:
            tokens[len(tokens) // 2] = 256  # one id past the 256 of meta.json
        write_tokens(data / f"{name}.bin", tokens)
    (data / "meta.json").write_text(json.dumps(meta))
    r = run_cli("train", "--data", data, "--out", tmp_path / "r", "--set", "model.vocab_size=300")
    _one_line_error(r, f"{split}.bin", "token id 256", "vocabulary of 256")
    assert not (tmp_path / "r").exists()
    _one_line_error(run_cli("eval", "--run", run, "--data", data), f"{split}.bin", "token id 256")


# --- one writer per run folder -------------------------------------------------------------------


def _train(data, out, *extra):
    return [sys.executable, "-m", "scratchllm", "train", "--data", str(data), "--out", str(out), "--quiet",
            *map(str, extra)]


@pytest.mark.slow
def test_two_trainings_into_one_folder_cannot_both_run(byte_data, tmp_path, cli_env):
    from scratchllm.config import load_run_config

    run = tmp_path / "run"
    procs = []
    for seed in (1, 2):  # the second 0.3 s after the first, as a user would do by mistake
        procs.append(subprocess.Popen(_train(byte_data, run, *sets(train__max_steps=30, train__seed=seed)),
                                      env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(0.3)
    errors = [p.communicate(timeout=300)[1] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], errors
    won, lost = codes.index(0), codes.index(2)
    lines = errors[lost].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"scratchllm: error: another training is writing {run} "
                                                   f"(pid {procs[won].pid} on "), errors[lost]
    assert [step for step, _ in losses(run)] == list(range(1, 31))  # each step once: one run's log
    assert load_run_config(run / "config.toml").train.seed == won + 1
    # The lock ended with its holder: the run can be continued.
    done = subprocess.run(_train(byte_data, run, "--resume", *sets(train__max_steps=32, train__seed=won + 1)),
                          env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [step for step, _ in losses(run)] == list(range(1, 33))


# --- checkpoints edited after saving -------------------------------------------------------------


def _edited_copy(run, dest, edit: str):
    """A copy of `run` whose one checkpoint got edit `edit` of EDITS; (copy, checkpoint, expected words)."""
    from scratchllm.run import checkpoint as ck

    shutil.copytree(run, dest)
    (newest,) = ck.list_checkpoints(dest / "ckpt")
    damage, message = EDITS[edit]
    damage(newest)
    rehash(newest)
    return dest, newest, message


@pytest.mark.slow
@pytest.mark.parametrize("edit", EDITS)
def test_resume_from_an_edited_checkpoint_is_refused_in_one_line(run_cli, run, tmp_path, edit):
    from scratchllm.run import checkpoint as ck

    copy, newest, message = _edited_copy(run, tmp_path / "run", edit)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file() and p.name != ".lock"}
    r = run_cli("train", "--data", run.parent / "data", "--out", copy, "--resume")
    _one_line_error(r, "passes its checks", str(newest), message)
    # The log and the config as they were (the lock file names the last process to hold it).
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file() and p.name != ".lock"} == before
    assert ck.list_checkpoints(copy / "ckpt") == [newest]  # nothing renamed or deleted


@pytest.mark.parametrize("edit", ["random model.safetensors", "step abc"])
def test_eval_of_an_edited_checkpoint_is_refused_in_one_line(run_cli, run, tmp_path, edit):
    copy, newest, message = _edited_copy(run, tmp_path / "run", edit)
    _one_line_error(run_cli("eval", "--run", copy), "no usable checkpoint", str(newest), message)


# --- the disk guard ------------------------------------------------------------------------------

# The command line with the checkpoint size estimated as one byte, so the guard lets a save start
# that the disk cannot hold: how a wrong estimate, or another program filling the disk, looks.
_TINY_ESTIMATE = ("import sys; from scratchllm.run import checkpoint; "
                  "checkpoint.checkpoint_bytes = lambda model, optimizer: 1; "
                  "from scratchllm.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.slow
def test_a_full_disk_stops_training_in_one_line_and_resume_goes_on_once_there_is_room(
        run_cli, byte_data, small_disk, cli_env):
    from scratchllm.run import checkpoint as ck

    run = small_disk("8m") / "run"
    args = ["--data", byte_data, "--out", run, "--quiet"]
    first = sets(train__max_steps=4, train__ckpt_every=2, train__eval_every=4, train__keep_last=1)
    assert run_cli("train", *args, *first).returncode == 0
    kept = run / "ckpt" / "step_4"
    filler = fill_disk(run.parent, leave=sum(f.stat().st_size for f in kept.iterdir()) // 2)
    more = sets(train__max_steps=6, train__ckpt_every=2, train__eval_every=4, train__keep_last=1)

    r = run_cli("train", *args, "--resume", *more)
    _one_line_error(r, "disk guard:", "checkpoint step_6 needs about", "step_4, is kept", "--resume")
    r = subprocess.run([sys.executable, "-c", _TINY_ESTIMATE, "train", *map(str, args), "--resume", *more],
                       env=cli_env, capture_output=True, text=True, timeout=300)
    _one_line_error(r, f"writing checkpoint {run / 'ckpt' / 'step_6'} failed: the disk is full",
                    "step_4, is kept")
    assert ck.list_checkpoints(run / "ckpt") == [kept] and ck.verify(kept, training=True)["step"] == 4
    assert not [p for p in (run / "ckpt").iterdir() if p.name.startswith(".tmp")]

    filler.unlink()
    r = run_cli("train", *args, "--resume", *more)
    assert r.returncode == 0, r.stderr
    assert [step for step, _ in losses(run)] == list(range(1, 7))
    assert ck.verify(run / "ckpt" / "step_6", training=True)["step"] == 6


# --- settings that cannot work -------------------------------------------------------------------


@pytest.mark.parametrize("item", ["train.lr=inf", "train.lr=1e400", "train.weight_decay=nan",
                                  "train.weight_decay=inf", "train.grad_clip=nan"])
def test_non_finite_settings_are_refused_in_one_line(run_cli, byte_data, tmp_path, item):
    r = run_cli("train", "--data", byte_data, "--out", tmp_path / "r", "--set", item)
    _one_line_error(r, f"{item.split('=')[0]} must be a finite number")
    assert not (tmp_path / "r").exists()


def test_a_model_too_large_for_the_machine_is_refused_at_once(run_cli, byte_data, tmp_path):
    r = run_cli("train", "--data", byte_data, "--out", tmp_path / "r", *sets(model__n_layer=10**9),
                timeout=120)
    _one_line_error(r, "cannot be trained here", "model.n_layer=1000000000")
    assert not (tmp_path / "r").exists()


def test_more_eval_batches_than_val_holds_reads_val_once(run_cli, byte_data, tmp_path):
    from scratchllm.config import load_run_config

    runs = {}
    for n in (8, 10**9):  # val.bin holds 8 batches of 8 sequences of 64 tokens
        runs[n] = tmp_path / f"r{n}"
        r = run_cli("train", "--data", byte_data, "--out", runs[n], "--quiet",
                    *sets(train__eval_batches=n, train__max_steps=2), timeout=120)
        assert r.returncode == 0, r.stderr
    assert load_run_config(runs[10**9] / "config.toml").train.eval_batches == 10**9
    rows = [map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) for run in runs.values()]
    val = [[row["val_loss"] for row in log if "val_loss" in row] for log in rows]
    assert len(val[0]) == 2 and val[0] == val[1]  # the same losses: every window of val.bin, once


# --- token folders of every layout -----------------------------------------------------------------


def test_shards_written_elsewhere_train_with_the_tokenizer_named(run_cli, run, tmp_path):
    """Our shards renamed as modded-nanogpt names FineWeb's, without meta.json: `--tokenizer` says what made
    them, and the run keeps that tokenizer for generate and export."""
    import os

    from scratchllm.tokenizer import Tokenizer, train_bpe

    made = run.parent / "data"
    data = tmp_path / "fineweb10B"
    data.mkdir()
    for path in made.glob("*.bin"):
        split, index = path.stem.split("_")
        os.link(path, data / f"fineweb_{split}_{int(index) + (split == 'train'):06d}.bin")
    out = tmp_path / "r"
    r = run_cli("train", "--data", data, "--out", out, "--tokenizer", made, "--quiet",
                *sets(train__max_steps=2, train__eval_every=2))
    assert r.returncode == 0, r.stderr
    assert Tokenizer.load(out / "tokenizer").sha256() == Tokenizer.load(made).sha256()
    assert "vocab_size = 400" in (out / "config.toml").read_text()  # the tokenizer's, not GPT-2's 50,257

    train_bpe(["some other text entirely"] * 3, 300).save(tmp_path / "other")
    r = run_cli("train", "--data", made, "--out", tmp_path / "r2", "--tokenizer", tmp_path / "other")
    _one_line_error(r, "these tokens were made with tokenizer.json, not with the tokenizer named")
    assert not (tmp_path / "r2").exists()


def test_verify_finds_a_shard_changed_behind_the_record(run_cli, run, tmp_path):
    import os

    data = tmp_path / "data"
    shutil.copytree(run.parent / "data", data, copy_function=shutil.copy2)
    path = data / "train_000000.bin"
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 1
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run_cli("train", "--data", data, "--out", tmp_path / "r", "--verify")
    _one_line_error(r, "train_000000.bin: its sha256 differs from the one in meta.json")
    assert not (tmp_path / "r").exists()
