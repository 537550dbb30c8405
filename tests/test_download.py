"""`download`: shards and manifest, resume after kill -9, the disk guard, refusals and bad input."""

import hashlib
import json
import logging
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scratchllm.data.download import MANIFEST, download, iter_downloaded, read_manifest
from scratchllm.data.estimate import estimate
from scratchllm.data.sources import open_source
from scratchllm.util.errors import UserError

SHARD_KEYS = ("file", "docs", "bytes", "sha256", "first_doc", "last_doc")


def _shards(folder):
    """The manifest's shard entries (what must match between runs)."""
    return [{k: e[k] for k in SHARD_KEYS} for e in read_manifest(folder)["shards"]]


def _check_folder(folder):
    """Every listed shard is on disk with its hash and counts; nothing else is left behind."""
    m = read_manifest(folder)
    names = sorted(p.name for p in folder.iterdir() if p.name != ".lock")  # the lock file stays
    assert names == sorted([MANIFEST] + [e["file"] for e in m["shards"]])
    expect_first = 0
    for e in m["shards"]:
        data = (folder / e["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e["sha256"]
        table = pq.read_table(folder / e["file"])
        assert table.num_rows == e["docs"] == e["last_doc"] - e["first_doc"] + 1
        assert e["first_doc"] == expect_first
        assert sum(len(t.encode()) for t in table.column("text").to_pylist()) == e["bytes"]
        expect_first = e["last_doc"] + 1
    assert m["docs"] == expect_first and m["bytes"] == sum(e["bytes"] for e in m["shards"])
    return m


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A local parquet source: 4,000 documents of skewed length, with an extra `url` column."""
    rng = np.random.default_rng(7)
    lengths = np.maximum(1, rng.lognormal(5.5, 0.7, size=4000)).astype(int)
    words = np.array("the of and to in a is that for it as was with be by on not he I this".split())
    texts = [" ".join(rng.choice(words, size=max(1, n // 4))) + f" #{i}" for i, n in enumerate(lengths)]
    path = tmp_path_factory.mktemp("corpus") / "docs.parquet"
    pq.write_table(pa.table({"id": [f"doc{i}" for i in range(4000)], "text": texts,
                             "url": [f"https://example.org/{i}" for i in range(4000)]}), path)
    return f"parquet:{path}", texts


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_run(corpus, tmp_path, run_cli, cli_env):
    spec, texts = corpus
    args = ["download", "--source", spec, "--target", "600KB", "--shard-size", "6KB", "--quiet"]
    ref = run_cli(*args, "--out", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    ref_manifest = _check_folder(tmp_path / "ref")
    assert ref_manifest["complete"] and len(ref_manifest["shards"]) > 80

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", *args, "--out", str(out)], env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if len(json.loads((out / MANIFEST).read_text())["shards"]) >= 25:
                break
        except (OSError, ValueError):
            pass  # not there yet (the manifest itself is replaced atomically, never half-written)
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    partial = read_manifest(out)
    assert not partial["complete"], "the run finished before it could be killed"
    assert 25 <= len(partial["shards"]) < len(ref_manifest["shards"])

    again = run_cli(*args, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout
    _check_folder(out)
    assert _shards(out) == _shards(tmp_path / "ref")  # byte-identical shards, same boundaries
    docs = list(iter_downloaded(out))
    assert [d.index for d in docs] == list(range(len(docs)))
    assert [d.text for d in docs] == texts[: len(docs)]
    assert len({d.id for d in docs}) == len(docs)
    # Exactly the shortest prefix that reaches the target.
    total = sum(len(t.encode()) for t in texts[: len(docs)])
    assert total >= 600_000 > total - len(texts[len(docs) - 1].encode())

    before = (out / MANIFEST).read_bytes()
    done = run_cli(*args, "--out", out)
    assert done.returncode == 0 and "nothing to do" in done.stdout
    assert (out / MANIFEST).read_bytes() == before


def test_disk_guard_mid_run_keeps_a_valid_manifest_then_resumes(tmp_path):
    src = open_source("shakespeare")
    download(src, 3_000_000, tmp_path / "ref", shard_size=300_000, min_free=0, progress=False)

    calls = []

    def shrinking_disk(path):
        calls.append(path)
        return 10**12 if len(calls) <= 4 else 10**6  # the start check, three shards, then a full disk

    with pytest.raises(UserError, match="disk guard") as e:
        download(src, 3_000_000, tmp_path / "out", shard_size=300_000, min_free=10**6, progress=False,
                 free_space=shrinking_disk)
    assert "3 shards" in str(e.value) and "\n" not in str(e.value)
    m = _check_folder(tmp_path / "out")
    assert not m["complete"] and len(m["shards"]) == 3 and m["shard_size"] == 300_000
    # Another shard size would cut the rest differently from an uninterrupted run: refused.
    before = (tmp_path / "out" / MANIFEST).read_bytes()
    with pytest.raises(UserError, match="--shard-size 300000 bytes, not 200000"):
        download(src, 3_000_000, tmp_path / "out", shard_size=200_000, min_free=0, progress=False)
    assert (tmp_path / "out" / MANIFEST).read_bytes() == before

    download(src, 3_000_000, tmp_path / "out", shard_size=300_000, min_free=0, progress=False)
    assert _check_folder(tmp_path / "out")["complete"]
    assert _shards(tmp_path / "out") == _shards(tmp_path / "ref")
    ref_texts = [d.text for d in iter_downloaded(tmp_path / "ref")]
    assert [d.text for d in iter_downloaded(tmp_path / "out")] == ref_texts


def _trips_after(n):
    """A free-space check that reports a roomy disk for n calls, then a full one."""
    calls = []

    def free_space(path):
        calls.append(path)
        return 10**12 if len(calls) <= n else 0

    return free_space


def test_resume_after_a_resume_equals_uninterrupted_run(tmp_path):
    # Short documents and small shards: the first stop falls past the stream's first batch of 256,
    # the second inside the first batch read after resuming.
    rng = np.random.default_rng(3)
    texts = [f"doc {i} " + "word " * int(rng.integers(5, 25)) for i in range(1000)]
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(1000)], "text": texts}), tmp_path / "c.parquet")
    spec = f"parquet:{tmp_path}/c.parquet"
    kw = dict(shard_size=2000, progress=False)
    download(open_source(spec), 10**9, tmp_path / "ref", min_free=0, **kw)
    for n in (16, 3):
        with pytest.raises(UserError, match="disk guard"):
            download(open_source(spec), 10**9, tmp_path / "out", min_free=1, free_space=_trips_after(n), **kw)
    assert len(read_manifest(tmp_path / "out")["shards"]) == 17
    download(open_source(spec), 10**9, tmp_path / "out", min_free=0, **kw)
    m = _check_folder(tmp_path / "out")
    assert m["complete"] and m["docs"] == 1000
    assert [d.text for d in iter_downloaded(tmp_path / "out")] == texts
    assert _shards(tmp_path / "out") == _shards(tmp_path / "ref")


_TAKE_LOCK = """
import sys, time
import psutil  # loaded before the start, so all take the lock at the same moment
from pathlib import Path
from scratchllm.data.download import download_lock
from scratchllm.util.errors import UserError
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
try:
    with download_lock(Path(sys.argv[1])):
        print("got", flush=True)
        time.sleep(0.5)
except UserError:
    print("busy")
"""


def test_lock_is_taken_by_exactly_one_of_many(tmp_path, cli_env):
    start = time.time() + 2.0  # every process is up and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", _TAKE_LOCK, str(tmp_path), str(start)], env=cli_env,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    answers = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert answers == ["busy", "busy", "busy", "got"]
    assert [p.name for p in tmp_path.iterdir()] in ([], [".lock"])  # an empty lock file, or none on Windows


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from scratchllm.data.download import download_lock
with download_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_lock_of_a_live_process_refuses_a_dead_ones_is_taken_over(tmp_path, cli_env):
    src = open_source("shakespeare")
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], env=cli_env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="another download is writing"):
            download(src, 10**6, out, min_free=0, progress=False)
        assert [p.name for p in out.iterdir()] == [".lock"]
    finally:
        other.kill()  # SIGKILL: nothing of the holder's clean-up runs, its lock file stays
        other.wait()
    assert (out / ".lock").is_file()
    download(src, 10**6, out, min_free=0, progress=False)  # its owner is gone now
    assert _check_folder(out)["complete"]


def test_min_free_above_free_space_refuses_before_writing(tmp_path, run_cli):
    out = run_cli("download", "--target", "1MB", "--out", tmp_path / "raw", "--min-free", "1000TB")
    assert out.returncode == 2 and "--min-free" in out.stderr and out.stderr.count("\n") == 1
    assert not (tmp_path / "raw").exists()


def test_target_beyond_source_and_refusals(tmp_path):
    src = open_source("shakespeare")
    m = download(src, 6_000_000, tmp_path / "all", shard_size=10**6, min_free=0, progress=False)
    assert m["complete"] and m["exhausted"] and m["docs"] == 42 and m["bytes"] == 5_057_198
    assert [d.id for d in iter_downloaded(tmp_path / "all")] == [d.id for d in src]

    before = {p.name: p.read_bytes() for p in (tmp_path / "all").iterdir()}
    with pytest.raises(UserError, match="refusing to mix"):
        download(src, 2_000_000, tmp_path / "all", min_free=0, progress=False)
    (tmp_path / "a.txt").write_text("a document")
    with pytest.raises(UserError, match="refusing to mix"):
        download(open_source(f"text:{tmp_path}/a.txt"), 6_000_000, tmp_path / "all", min_free=0,
                 progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "all").iterdir()} == before

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        download(src, 10**6, tmp_path / "busy", min_free=0, progress=False)
    with pytest.raises(UserError, match="not a download folder"):
        list(iter_downloaded(tmp_path / "busy"))


def test_keep_columns(corpus, tmp_path):
    spec, texts = corpus
    download(open_source(spec), 50_000, tmp_path / "k", shard_size=20_000, min_free=0, keep_columns=["url"],
             progress=False)
    table = pq.read_table(tmp_path / "k" / "shard_000000.parquet")
    assert table.column_names == ["id", "text", "url"]
    assert table.column("url").to_pylist()[:2] == ["https://example.org/0", "https://example.org/1"]
    with pytest.raises(UserError, match="score"):
        download(open_source(spec), 50_000, tmp_path / "k2", min_free=0, keep_columns=["score"],
                 progress=False)
    assert not (tmp_path / "k2").exists()


def test_keep_columns_have_the_source_type_in_every_shard(tmp_path):
    # A float column that is null for the first 300 documents: inferred shard by shard, the first
    # shards would get the null type and the later ones double, and the folder could not be read as one.
    texts = [f"doc {i} " + "word " * 20 for i in range(600)]
    score = pa.array([None] * 300 + [i / 7 for i in range(300, 600)], pa.float64())
    (tmp_path / "src").mkdir()
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(600)], "text": texts, "score": score}),
                   tmp_path / "src" / "c.parquet")
    out = tmp_path / "out"
    download(open_source(f"parquet:{tmp_path}/src"), 10**9, out, shard_size=5000, min_free=0,
             keep_columns=["score"], progress=False)
    m = _check_folder(out)
    assert len(m["shards"]) > 5
    types = {pq.read_schema(out / e["file"]).field("score").type for e in m["shards"]}
    assert types == {pa.float64()}
    assert [d.extra["score"] for d in iter_downloaded(out)] == score.to_pylist()
    assert estimate(open_source(f"parquet:{out}"), 10_000).source_total_docs == 600


def test_a_column_named_twice_is_kept_once(corpus, tmp_path):
    spec, _ = corpus
    m = download(open_source(spec), 20_000, tmp_path / "k", min_free=0, keep_columns=["url", "url"],
                 progress=False)
    assert m["keep_columns"] == ["url"]
    assert pq.read_table(tmp_path / "k" / "shard_000000.parquet").column_names == ["id", "text", "url"]


def test_a_download_that_another_one_changed_meanwhile_touches_nothing(corpus, tmp_path):
    spec, _ = corpus
    out = tmp_path / "out"
    with pytest.raises(UserError, match="disk guard"):
        _small_download(spec, out, free_space=_trips_after(3))
    done = tmp_path / "done"
    _small_download(spec, done)

    class FinishedMeanwhile:
        """A source whose first read happens while another download completes the folder."""

        def __init__(self):
            self.inner = open_source(spec)
            self.spec = self.inner.spec

        def documents(self, start, state):
            for f in done.iterdir():  # the other download's shards and manifest land
                (out / f.name).write_bytes(f.read_bytes())
            return self.inner.documents(start, state)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with pytest.raises(UserError, match="another download changed"):
        download(FinishedMeanwhile(), 50_000, out, shard_size=10_000, min_free=0, progress=False)
    assert _shards(out) == _shards(done) and _check_folder(out)["complete"]


def _small_download(spec, out, **kw):
    """About 5 shards of the corpus, quietly."""
    return download(open_source(spec), 50_000, out, shard_size=10_000, min_free=0, progress=False, **kw)


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_damaged_shard_is_refused_when_read_and_downloaded_again(corpus, tmp_path, damage, caplog):
    spec, texts = corpus
    out = tmp_path / "out"
    _small_download(spec, out)
    ref = _shards(out)
    assert len(ref) >= 4
    shard = out / "shard_000001.parquet"
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])  # same size, other bytes
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    with pytest.raises(UserError, match="shard_000001.parquet") as e:
        list(iter_downloaded(out))
    assert "\n" not in str(e.value) and "re-run" in str(e.value)

    caplog.set_level(logging.INFO, logger="scratchllm")
    caplog.clear()
    m = _small_download(spec, out)
    logs = caplog.messages
    assert not any("nothing to do" in line for line in logs), logs
    assert any("shard_000001.parquet" in line and "again" in line for line in logs), logs
    assert m["complete"] and _check_folder(out)["complete"]
    assert _shards(out) == ref
    docs = list(iter_downloaded(out))
    assert [d.text for d in docs] == texts[: len(docs)]


def test_damaged_shard_of_an_unfinished_download_resumes_exactly(corpus, tmp_path):
    # Stopped twice: once before the damage is found, once while refilling after it, so the run
    # that finishes resumes from a stream state saved by the refill.
    spec, _ = corpus
    kw = dict(shard_size=20_000, progress=False)
    download(open_source(spec), 300_000, tmp_path / "ref", min_free=0, **kw)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="disk guard"):
        download(open_source(spec), 300_000, out, min_free=1, free_space=_trips_after(9), **kw)
    assert len(read_manifest(out)["shards"]) == 8
    (out / "shard_000002.parquet").write_bytes(b"x" * (out / "shard_000002.parquet").stat().st_size)
    with pytest.raises(UserError, match="disk guard"):
        download(open_source(spec), 300_000, out, min_free=1, free_space=_trips_after(5), **kw)
    assert len(_check_folder(out)["shards"]) == 6  # shards 2 on written again, the old 6 and 7 removed
    download(open_source(spec), 300_000, out, min_free=0, **kw)
    assert _check_folder(out)["complete"]
    assert _shards(out) == _shards(tmp_path / "ref")


def test_reading_an_unfinished_download_says_so(corpus, tmp_path, capsys, cli_logging):
    spec, texts = corpus
    cli_logging()
    out = tmp_path / "out"
    with pytest.raises(UserError, match="disk guard"):
        _small_download(spec, out, free_space=_trips_after(3))
    m = read_manifest(out)
    assert not m["complete"] and len(m["shards"]) == 2
    capsys.readouterr()
    docs = list(iter_downloaded(out))
    assert [d.text for d in docs] == texts[: m["docs"]]
    note = f"note: {out} is an unfinished download ({m['docs']:,} documents so far); using what is there\n"
    assert capsys.readouterr().err == note

    _small_download(spec, out)
    list(iter_downloaded(out))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args", [
    ["--source", "wikipedia"],
    ["--target", "10XB"],
    ["--target=-5GB"],
    ["--shard-size", "0"],
    ["--source", "parquet:no/such/dir/*.parquet"],
    ["--source", "hf:HuggingFaceFW/fineweb-edu:sample-10BT"],
])
def test_download_bad_input_writes_nothing(tmp_path, run_cli, args):
    out = run_cli("download", "--out", tmp_path / "raw", *args)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("scratchllm: error: ") and out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "raw").exists()

