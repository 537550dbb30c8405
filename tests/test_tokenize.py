"""`tokenize`: order kept across workers, whole-document validation split, meta.json, atomic output."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scratchllm.data.tokenize import load_tokenizer_for_data, tokenize_to_dir
from scratchllm.data.tokens import read_split, read_tokens
from scratchllm.tokenizer import Tokenizer, train_bpe
from scratchllm.util import UserError

DOCS = [
    "First document.\nWith two lines.",
    "",  # an empty document still gets its EOT
    "A document quoting the separator <|endoftext|> in its text, which must stay text.",
    "\U0001f600 emoji, e\u0301 combining, \x00 NUL, \r\n endings, " + " " * 100,
    *[f"Document number {i}: " + "lorem ipsum dolor sit amet " * (i % 7 + 1) for i in range(40)],
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(DOCS, 400)


def expected_stream(tok, docs):
    return [t for d in docs for t in (*tok.encode(d), tok.eot_id)]


def test_tokens_split_and_meta(tok, tmp_path):
    meta = tokenize_to_dir(DOCS, tok, tmp_path / "a", val_docs=5, workers=1, quiet=True)
    train, val = read_split(tmp_path / "a", "train"), read_split(tmp_path / "a", "val")
    assert train.tolist() == expected_stream(tok, DOCS[:-5])
    assert val.tolist() == expected_stream(tok, DOCS[-5:])
    # Exactly one EOT per document: the literal "<|endoftext|>" in document 2 made none.
    assert int((train == tok.eot_id).sum()) == len(DOCS) - 5
    assert meta["train"] == {"documents": len(DOCS) - 5, "tokens": len(train),
                             "bytes": sum(len(d.encode()) for d in DOCS[:-5])}
    assert meta["val"]["bytes"] == sum(len(d.encode()) for d in DOCS[-5:])
    assert meta["vocab_size"] == 400 and meta["eot_id"] == 399 and meta["token_dtype"] == "uint16"
    assert json.loads((tmp_path / "a" / "meta.json").read_text()) == meta
    assert meta["tokenizer"] == "tokenizer.json"
    assert load_tokenizer_for_data(tmp_path / "a").sha256() == tok.sha256() == meta["tokenizer_sha256"]


def test_workers_keep_order(tok, tmp_path):
    tokenize_to_dir(DOCS, tok, tmp_path / "one", val_fraction=0.1, workers=1, quiet=True)
    # Tiny batches: dozens of tasks in flight across three processes, results must come back in order.
    meta = tokenize_to_dir(iter(DOCS), tok, tmp_path / "three", val_fraction=0.1, workers=3, quiet=True,
                           batch_bytes=64)
    assert meta["val"]["documents"] == round(0.1 * len(DOCS))
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "one" / split).read_bytes() == (tmp_path / "three" / split).read_bytes()


def test_wide_vocab_uses_uint32(tok, tmp_path):
    wide = Tokenizer(tok.ranks, tok.pattern, {"<|endoftext|>": 70000}, name="wide")
    tokenize_to_dir(DOCS[:3], wide, tmp_path, val_docs=1, workers=1, quiet=True)
    train = read_split(tmp_path, "train")
    assert train.dtype == np.uint32 and train.tolist() == expected_stream(wide, DOCS[:2])
    assert (tmp_path / "train.bin").read_bytes()[:8] == np.array([20240801, 7], "<i4").tobytes()


def test_failure_leaves_no_complete_looking_output(tok, tmp_path):
    tokenize_to_dir(DOCS, tok, tmp_path, val_docs=2, workers=1, quiet=True)
    before = (tmp_path / "train.bin").read_bytes()

    def broken():
        yield from DOCS[:10]
        raise OSError("disk went away")

    with pytest.raises(OSError):
        tokenize_to_dir(broken(), tok, tmp_path, val_docs=2, workers=2, quiet=True, batch_bytes=100)
    # the failed run touched nothing: the earlier output is still complete and readable
    assert (tmp_path / "train.bin").read_bytes() == before
    assert read_split(tmp_path, "train").tolist() == expected_stream(tok, DOCS[:-2])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(UserError, match="leave none for training"):  # found only after the whole pass
        tokenize_to_dir(DOCS[:10], tok, tmp_path, val_docs=10, workers=1, quiet=True)
    assert read_split(tmp_path, "val").tolist() == expected_stream(tok, DOCS[-2:])


def test_failure_while_replacing_leaves_no_complete_looking_output(tok, tmp_path, monkeypatch):
    tokenize_to_dir(DOCS, tok, tmp_path, val_docs=2, workers=1, quiet=True)

    def fail(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(Tokenizer, "save", fail)
    with pytest.raises(OSError):  # after the token files were replaced, before meta.json
        tokenize_to_dir(DOCS[:5], tok, tmp_path, val_docs=1, workers=1, quiet=True)
    with pytest.raises(UserError, match="no meta.json"):
        read_split(tmp_path, "train")


def test_stale_temp_files_of_killed_runs_are_removed(tok, tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its pid now names no process
    dead = tmp_path / f".train.bin.{ended.pid}.tmp"
    live = tmp_path / f".val.bin.{os.getppid()}.tmp"  # another run writing here right now
    dead.write_bytes(b"\0" * 4096)
    live.write_bytes(b"\0" * 4096)
    tokenize_to_dir(DOCS, tok, tmp_path, val_docs=2, workers=1, quiet=True)
    assert not dead.exists() and live.exists()
    assert read_split(tmp_path, "train").tolist() == expected_stream(tok, DOCS[:-2])


def test_shakespeare_download_folder_holds_out_three_plays(tok, tmp_path):
    from scratchllm.data.download import download
    from scratchllm.data.sources import open_source

    download(open_source("shakespeare"), 10**6, tmp_path / "dl", shard_size=10**6, min_free=0, progress=False,
             log=lambda s: None)
    meta = tokenize_to_dir(tmp_path / "dl", tok, tmp_path / "t", workers=1, quiet=True)
    assert meta["val"]["documents"] == 3  # as with --source shakespeare, not 1% of the documents
    assert meta["source"] == f"shakespeare (download folder {tmp_path / 'dl'})"


def test_bad_splits(tok, tmp_path):
    with pytest.raises(UserError, match="4 validation documents leave none for training"):
        tokenize_to_dir(DOCS[:4], tok, tmp_path, val_docs=4, workers=1, quiet=True)
    with pytest.raises(UserError, match="between 0 and 1"):
        tokenize_to_dir(DOCS, tok, tmp_path, val_fraction=1.0, quiet=True)
    meta = tokenize_to_dir(DOCS[:4], tok, tmp_path, val_docs=1, workers=1, quiet=True)
    meta["train"]["tokens"] += 1
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="meta.json says"):
        read_split(tmp_path, "train")


@pytest.mark.slow
def test_download_folder_and_cli(tmp_path, run_cli):
    """--data (a download folder) gives the same tokens as --source on the same files, through the CLI."""
    from scratchllm.data.download import download
    from scratchllm.data.sources import open_source

    texts = tmp_path / "texts"
    texts.mkdir()
    for i, d in enumerate(DOCS[:12]):
        (texts / f"doc{i:02d}.txt").write_text(d + "\n", encoding="utf-8")
    spec = f"text:{texts}/*.txt"
    download(open_source(spec), 10**9, tmp_path / "dl", shard_size=200, progress=False, log=lambda s: None)

    dl = tmp_path / "dl"
    r = run_cli("tokenizer", "train", "--data", dl, "--vocab-size", 300, "--out", tmp_path / "tk", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("tokenize", "--data", dl, "--tokenizer", tmp_path / "tk", "--out", tmp_path / "t1",
                "--val-docs", 3, "--workers", 2, "--quiet")
    assert r.returncode == 0, r.stderr
    trained = Tokenizer.load(tmp_path / "tk")
    tokenize_to_dir(spec, trained, tmp_path / "t2", val_docs=3, workers=1, quiet=True)
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "t1" / split).read_bytes() == (tmp_path / "t2" / split).read_bytes()
    meta = json.loads((tmp_path / "t1" / "meta.json").read_text())
    assert meta["train"]["documents"] == 9 and "download folder" in meta["source"]

    r = run_cli("tokenize", "--source", spec, "--tokenizer", tmp_path / "missing", "--out", tmp_path / "x")
    assert r.returncode == 2 and "no such tokenizer folder" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run_cli("tokenize", "--data", tmp_path / "no", "--tokenizer", "gpt2", "--out", tmp_path / "x")
    assert r.returncode == 2 and "not a download folder" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "x" / "train.bin").exists()
    r = run_cli("tokenize", "--source", spec, "--tokenizer", "gpt2", "--out", tmp_path / "x",
                "--val-fraction", "1.5")
    assert r.returncode == 2 and "--val-fraction must be between 0 and 1" in r.stderr


@pytest.mark.slow
def test_shakespeare_with_gpt2(tmp_path, run_cli):
    r = run_cli("tokenize", "--tokenizer", "gpt2", "--out", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    # 1,565,959 GPT-2 tokens in the 42 texts, plus one EOT each; the last 3 whole texts validate.
    assert meta["train"]["tokens"] + meta["val"]["tokens"] == 1_566_001
    assert (meta["train"]["documents"], meta["val"]["documents"]) == (39, 3)
    assert meta["tokenizer"] == "gpt2" and meta["source"] == "shakespeare"
    val = read_tokens(tmp_path / "val.bin", vocab_size=50257)
    from scratchllm.data.sources import open_source

    third_last = list(open_source("shakespeare"))[-3].text
    gpt2 = Tokenizer.pretrained("gpt2")
    assert val[:200].tolist() == gpt2.encode(third_last)[:200]
