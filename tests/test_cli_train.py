"""`train`, `eval`, `generate`, `export` from the command line: bad input ends in one line, exit 2;
the exported model is a transformers model that generates the same greedy text."""

import json

import numpy as np
import pytest
from _train_helpers import byte_token_dir, sets

from scratchllm.data.tokens import read_tokens, write_tokens


def _one_line_error(r, *words):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scratchllm: error:"), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]


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

    from scratchllm.train import checkpoint as ck

    shutil.copytree(run, dest)
    cfg, model, path = ck.load_run(dest)
    tok = ck.run_tokenizer(dest, cfg)
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
