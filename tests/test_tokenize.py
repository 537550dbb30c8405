"""`tokenize`: order kept across workers, whole-document validation split, shards, resume, refusals."""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from scratchllm.data.folder import TokenFolder
from scratchllm.data.tokenize import load_tokenizer_for_data, tokenize_to_dir
from scratchllm.tokenizer import Tokenizer, train_bpe
from scratchllm.util.errors import UserError

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


def read_split(folder, split):
    """The tokens of one split of a complete token folder (one with meta.json), checked as training does."""
    return TokenFolder.open(folder, require_meta=True).split(split)


def expected_stream(tok, docs):
    return [t for d in docs for t in (*tok.encode(d), tok.eot_id)]


def test_tokens_split_and_meta(tok, tmp_path):
    meta = tokenize_to_dir(DOCS, tok, tmp_path / "a", val_docs=5, workers=1, quiet=True)
    train, val = read_split(tmp_path / "a", "train"), read_split(tmp_path / "a", "val")
    assert train.tolist() == expected_stream(tok, DOCS[:-5])
    assert val.tolist() == expected_stream(tok, DOCS[-5:])
    # Exactly one EOT per document: the literal "<|endoftext|>" in document 2 made none.
    assert int((np.asarray(train) == tok.eot_id).sum()) == len(DOCS) - 5
    assert meta["train"] == {"documents": len(DOCS) - 5, "tokens": len(train),
                             "bytes": sum(len(d.encode()) for d in DOCS[:-5])}
    assert meta["val"]["bytes"] == sum(len(d.encode()) for d in DOCS[-5:])
    assert meta["vocab_size"] == 400 and meta["eot_id"] == 399 and meta["token_dtype"] == "uint16"
    assert meta["split"] == {"val_docs": 5, "where": "last", "documents": len(DOCS)} and meta["complete"]
    assert json.loads((tmp_path / "a" / "meta.json").read_text()) == meta
    assert meta["tokenizer"] == "tokenizer.json"
    assert load_tokenizer_for_data(tmp_path / "a").sha256() == tok.sha256() == meta["tokenizer_sha256"]


def _bins(folder):
    """Every token file of a folder, by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


def _stable(meta):
    """meta.json without what differs between equal runs: times."""
    return {**meta, "seconds": 0, "shards": [{**e, "mtime_ns": 0} for e in meta["shards"]]}


def test_workers_keep_order(tok, tmp_path):
    one = tokenize_to_dir(DOCS, tok, tmp_path / "one", val_fraction=0.1, workers=1, quiet=True,
                          shard_tokens=300)
    # Tiny batches: dozens of tasks in flight across three processes, results must come back in order.
    three = tokenize_to_dir(DOCS, tok, tmp_path / "three", val_fraction=0.1, workers=3, quiet=True,
                            batch_bytes=64, shard_tokens=300)
    assert three["val"]["documents"] == round(0.1 * len(DOCS)) and len(three["shards"]) > 3
    assert _bins(tmp_path / "one") == _bins(tmp_path / "three")
    assert _stable(one) == _stable(three)


def test_a_stream_of_unknown_length_holds_out_its_first_documents(tok, tmp_path):
    meta = tokenize_to_dir(iter(DOCS), tok, tmp_path / "s", val_docs=4, workers=2, quiet=True, batch_bytes=64)
    assert meta["split"] == {"val_docs": 4, "where": "first", "documents": None}
    assert read_split(tmp_path / "s", "val").tolist() == expected_stream(tok, DOCS[:4])
    assert read_split(tmp_path / "s", "train").tolist() == expected_stream(tok, DOCS[4:])
    for kwargs in ({}, {"val_fraction": 0.1}):
        with pytest.raises(UserError, match="cannot be counted before reading it.*--val-docs N"):
            tokenize_to_dir(iter(DOCS), tok, tmp_path / "t", workers=1, quiet=True, **kwargs)
    with pytest.raises(UserError, match="4 validation documents leave none for training"):
        tokenize_to_dir(iter(DOCS[:4]), tok, tmp_path / "u", val_docs=4, workers=1, quiet=True)


def test_wide_vocab_uses_uint32(tok, tmp_path):
    wide = Tokenizer(tok.ranks, tok.pattern, {"<|endoftext|>": 70000}, name="wide")
    tokenize_to_dir(DOCS[:3], wide, tmp_path, val_docs=1, workers=1, quiet=True)
    train = read_split(tmp_path, "train")
    assert train.dtype == np.uint32 and train.tolist() == expected_stream(wide, DOCS[:2])
    assert (tmp_path / "train_000000.bin").read_bytes()[:8] == np.array([20240801, 7], "<i4").tobytes()


def test_a_failure_keeps_the_whole_shards_and_the_same_command_continues(tok, tmp_path):
    ref = tokenize_to_dir(DOCS, tok, tmp_path / "ref", val_docs=2, workers=1, quiet=True, shard_tokens=200)

    out = tmp_path / "out"

    class Flaky(list):
        """A list whose iteration fails once, after 25 documents (as a lost connection would)."""
        failed = False

        def __iter__(self):
            for i, d in enumerate(list.__iter__(self)):
                if i == 25 and not Flaky.failed:
                    Flaky.failed = True
                    raise OSError("the network went away")
                yield d

    with pytest.raises(OSError, match="network went away"):
        tokenize_to_dir(Flaky(DOCS), tok, out, val_docs=2, workers=2, quiet=True, shard_tokens=200,
                        batch_bytes=100)
    partial = json.loads((out / "meta.json").read_text())
    assert not partial["complete"] and 0 < len(partial["shards"]) < len(ref["shards"])
    assert sorted(_bins(out)) == [e["file"] for e in partial["shards"]]  # only whole, listed shards
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(UserError, match="tokenize has not finished"):
        read_split(out, "train")
    done = tokenize_to_dir(Flaky(DOCS), tok, out, val_docs=2, workers=1, quiet=True, shard_tokens=200)
    assert _bins(out) == _bins(tmp_path / "ref")
    assert {**_stable(done), "source": "list"} == _stable(ref)  # the source is named after its type


def test_a_complete_folder_is_left_alone_and_another_tokenizer_or_source_is_refused(tok, tmp_path, caplog):
    tokenize_to_dir(DOCS, tok, tmp_path, val_docs=2, workers=1, quiet=True)

    def times():
        return {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name != ".lock"}

    before = times()
    caplog.set_level(logging.INFO, logger="scratchllm")
    caplog.clear()
    tokenize_to_dir(DOCS, tok, tmp_path, val_docs=2, workers=1, quiet=True)
    said = caplog.messages
    assert "nothing to do" in said[0] and times() == before
    other = train_bpe(DOCS, 380)
    for kwargs, words in (({"tokenizer": other}, "tokenizer_sha256"), ({"val_docs": 3}, "split"),
                          ({"shard_tokens": 99}, "shard_tokens"), ({"source": DOCS[:-1]}, "split")):
        args = {"source": DOCS, "tokenizer": tok, "val_docs": 2, **kwargs}
        with pytest.raises(UserError, match=f"refusing to mix in {words}") as e:
            tokenize_to_dir(args.pop("source"), args.pop("tokenizer"), tmp_path, workers=1, quiet=True,
                            **args)
        assert "\n" not in str(e.value)
    assert times() == before


def test_disk_guard_stops_between_shards_and_the_same_command_continues(tok, tmp_path):
    ref = tokenize_to_dir(DOCS, tok, tmp_path / "ref", val_docs=2, workers=1, quiet=True, shard_tokens=200)
    calls = []

    def shrinking_disk(path):
        calls.append(path)
        return 10**6 if len(calls) < 4 else 1000  # room for three shards, then none

    with pytest.raises(UserError, match=r"disk guard: .* Saved so far: 3 shards, .* rerun the same command"):
        tokenize_to_dir(DOCS, tok, tmp_path / "out", val_docs=2, workers=1, quiet=True, shard_tokens=200,
                        min_free=10_000, free_space=shrinking_disk)
    assert len(json.loads((tmp_path / "out" / "meta.json").read_text())["shards"]) == 3
    done = tokenize_to_dir(DOCS, tok, tmp_path / "out", val_docs=2, workers=1, quiet=True, shard_tokens=200,
                           min_free=0)
    assert _bins(tmp_path / "out") == _bins(tmp_path / "ref") and _stable(done) == _stable(ref)


def test_a_full_disk_is_one_line_and_the_same_command_continues_once_there_is_room(tok, tmp_path, small_disk,
                                                                                  run_cli):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(300):
        (docs / f"{i:03d}.txt").write_text(f"{i} " + "words of a document that fills a disk " * 40)
    tok.save(tmp_path / "tok")
    args = ["tokenize", "--source", f"text:{docs}/*.txt", "--tokenizer", tmp_path / "tok", "--val-docs", 3,
            "--shard-tokens", 20_000, "--min-free", 0, "--workers", 1, "--quiet"]
    assert run_cli(*args, "--out", tmp_path / "ref").returncode == 0
    disk = small_disk("160k")
    guarded = run_cli(*args, "--out", disk / "t")  # the guard sees that the next shard cannot fit
    assert guarded.returncode == 2 and len(guarded.stderr.strip().splitlines()) == 1
    assert "disk guard" in guarded.stderr and "Saved so far: 3 shards" in guarded.stderr
    # Without the guard's estimate (space taken meanwhile by another program, say), the write itself fails.
    with pytest.raises(UserError, match=r"the disk of .* is full .*Saved so far: 3 shards.* rerun the same"):
        tokenize_to_dir(f"text:{docs}/*.txt", tok, disk / "t", val_docs=3, workers=1, quiet=True,
                        shard_tokens=20_000, min_free=0, free_space=lambda path: 10**12)
    partial = json.loads((disk / "t" / "meta.json").read_text())
    assert len(partial["shards"]) == 3 and not partial["complete"]
    assert not [p for p in (disk / "t").iterdir() if p.name.endswith(".tmp")]
    shutil.copytree(disk / "t", tmp_path / "moved", copy_function=shutil.copy2)  # moved to a larger disk
    again = run_cli(*args, "--out", tmp_path / "moved")
    assert again.returncode == 0, again.stderr
    assert _bins(tmp_path / "moved") == _bins(tmp_path / "ref")


def test_stale_temp_files_of_killed_runs_are_removed(tok, tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its pid now names no process
    dead = tmp_path / f".train_000000.bin.{ended.pid}.tmp"
    live = tmp_path / f".val_000000.bin.{os.getppid()}.tmp"  # another run writing here right now
    dead.write_bytes(b"\0" * 4096)
    live.write_bytes(b"\0" * 4096)
    tokenize_to_dir(DOCS, tok, tmp_path, val_docs=2, workers=1, quiet=True)
    assert not dead.exists() and live.exists()
    assert read_split(tmp_path, "train").tolist() == expected_stream(tok, DOCS[:-2])


def test_shakespeare_download_folder_holds_out_three_plays(tok, tmp_path):
    from scratchllm.data.download import download
    from scratchllm.data.sources import open_source

    download(open_source("shakespeare"), 10**6, tmp_path / "dl", shard_size=10**6, min_free=0, progress=False)
    meta = tokenize_to_dir(tmp_path / "dl", tok, tmp_path / "t", workers=1, quiet=True)
    assert meta["val"]["documents"] == 3  # as with --source shakespeare, not 1% of the documents
    assert meta["source"] == f"shakespeare (download folder {tmp_path / 'dl'})"


def test_bad_splits(tok, tmp_path):
    with pytest.raises(UserError, match="4 validation documents leave none for training"):
        tokenize_to_dir(DOCS[:4], tok, tmp_path, val_docs=4, workers=1, quiet=True)
    with pytest.raises(UserError, match="between 0 and 1"):
        tokenize_to_dir(DOCS, tok, tmp_path, val_fraction=1.0, quiet=True)
    with pytest.raises(UserError, match="--shard-tokens must be between 1 and"):
        tokenize_to_dir(DOCS, tok, tmp_path, shard_tokens=0, quiet=True)
    assert list(tmp_path.iterdir()) == []  # all refused before anything was written


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
    download(open_source(spec), 10**9, tmp_path / "dl", shard_size=200, progress=False)

    dl = tmp_path / "dl"
    r = run_cli("tokenizer", "train", "--data", dl, "--vocab-size", 300, "--out", tmp_path / "tk", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("tokenize", "--data", dl, "--tokenizer", tmp_path / "tk", "--out", tmp_path / "t1",
                "--val-docs", 3, "--workers", 2, "--quiet")
    assert r.returncode == 0, r.stderr
    trained = Tokenizer.load(tmp_path / "tk")
    tokenize_to_dir(spec, trained, tmp_path / "t2", val_docs=3, workers=1, quiet=True)
    assert _bins(tmp_path / "t1") == _bins(tmp_path / "t2")
    meta = json.loads((tmp_path / "t1" / "meta.json").read_text())
    assert meta["train"]["documents"] == 9 and "download folder" in meta["source"]

    r = run_cli("tokenize", "--source", spec, "--tokenizer", tmp_path / "missing", "--out", tmp_path / "x")
    assert r.returncode == 2 and "no such tokenizer folder" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run_cli("tokenize", "--data", tmp_path / "no", "--tokenizer", "gpt2", "--out", tmp_path / "x")
    assert r.returncode == 2 and "not a download folder" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "x").exists()
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
    val = read_split(tmp_path, "val")
    from scratchllm.data.sources import open_source

    third_last = list(open_source("shakespeare"))[-3].text
    gpt2 = Tokenizer.pretrained("gpt2")
    assert val[:200].tolist() == gpt2.encode(third_last)[:200]


@pytest.mark.slow
def test_kills_at_random_moments_then_the_same_command_ends_as_an_uninterrupted_run(tmp_path, run_cli,
                                                                                    cli_env):
    """SIGKILL (and one Ctrl-C) at seeded random moments, each run continuing the last: at most the shard
    being written is lost each time, and the folder ends byte for byte as one uninterrupted run's."""
    import random
    import signal
    import time

    import psutil
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    words = np.array("the of and to in a is that for it as was with be by on not he I this".split())
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(5, 400, size=6000)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "docs.parquet")
    train_bpe(texts[:200], 300).save(tmp_path / "tok")
    args = ["tokenize", "--source", f"parquet:{tmp_path / 'docs.parquet'}", "--tokenizer", tmp_path / "tok",
            "--val-docs", 40, "--shard-tokens", 4000, "--min-free", 0, "--workers", 2, "--quiet"]
    ref = run_cli(*args, "--out", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    n_shards = len(json.loads((tmp_path / "ref" / "meta.json").read_text())["shards"])
    assert n_shards > 100

    out, pick = tmp_path / "killed", random.Random(5)
    cmd = [sys.executable, "-m", "scratchllm", *map(str, args), "--out", str(out)]
    for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGKILL):
        meta_file = out / "meta.json"
        done = len(json.loads(meta_file.read_text())["shards"]) if meta_file.exists() else 0
        target = done + pick.randint(5, n_shards // 6)
        proc = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if len(json.loads((out / "meta.json").read_text())["shards"]) >= target:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
        time.sleep(pick.uniform(0, 0.02))  # somewhere inside the next shard
        workers = psutil.Process(proc.pid).children()
        proc.send_signal(sig)
        assert proc.wait(60) != 0, "the run finished before it could be stopped"
        # The encoding workers do not outlive their parent, however it died.
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert len(workers) == 2 and not alive
        meta = json.loads((out / "meta.json").read_text())
        listed = {e["file"] for e in meta["shards"]}
        # Every listed shard is there; at most one more, renamed into place but not yet listed (removed and
        # written again by the next run).
        assert not meta["complete"] and listed <= set(_bins(out)) and len(set(_bins(out)) - listed) <= 1
    again = run_cli(*args, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout
    assert _bins(out) == _bins(tmp_path / "ref")
    assert _stable(json.loads((out / "meta.json").read_text())) == _stable(
        json.loads((tmp_path / "ref" / "meta.json").read_text()))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
