"""Size strings, the cache folder, atomic writes, file hashes and checked fetches through pip."""

import hashlib
import json
import os

import pytest

from scratchllm.util import fetch
from scratchllm.util.errors import UserError
from scratchllm.util.fetch import cache_dir, pip_fetch
from scratchllm.util.files import atomic_path, atomic_write_json, sha256_file
from scratchllm.util.sizes import format_size, parse_size


@pytest.mark.parametrize("text,expected", [
    ("1234", 1234),
    ("0", 0),
    ("500KB", 500_000),
    ("100MB", 100_000_000),
    ("10GB", 10_000_000_000),
    ("2TB", 2 * 10**12),
    ("1KiB", 1024),
    ("1.5GiB", 3 * 2**29),
    ("3MiB", 3 * 2**20),
    ("1TiB", 2**40),
    ("10gb", 10 * 10**9),
    ("2 mib", 2 * 2**20),
    (" 7B ", 7),
    (".5KB", 500),
    # Exact decimal arithmetic: in binary floating point 1.005 * 1000 is 1004.999...
    ("1.005KB", 1005),
    ("0.1GB", 100_000_000),
    ("2.675MB", 2_675_000),
    (4096, 4096),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["10XB", "-5GB", "", "GB", "1.2.3MB", "5 G B", "1e9", "ten MB", -1])
def test_parse_size_rejects(text):
    with pytest.raises(UserError):
        parse_size(text)


@pytest.mark.parametrize("n,expected", [(0, "0 B"), (999, "999 B"), (1000, "1.00 KB"),
                                        (1_234_567, "1.23 MB"), (5_057_198, "5.06 MB"),
                                        (10**13, "10.00 TB")])
def test_format_size(n, expected):
    assert format_size(n) == expected


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_atomic_write_json_replaces_whole_file(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"b": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"b": "é"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_atomic_path_failure_keeps_old_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("crash while writing")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_sha256_file(tmp_path):
    data = bytes(range(256)) * 9000  # more than one 1 MiB read block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


GOOD = b"the whole distribution file"
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


def _fake_pip(monkeypatch, payload, name="pkg-1.0.tar.gz"):
    """Make `pip download` write `payload` under `name`; return the list of requirements it was asked for."""
    asked = []

    def fake(requirement, dest, sdist):
        asked.append(requirement)
        (dest / name).write_bytes(payload)

    monkeypatch.setattr(fetch, "_pip_download", fake)
    return asked


def test_pip_fetch_caches_only_a_checked_file(tmp_path, monkeypatch):
    _fake_pip(monkeypatch, GOOD[:10])  # a cut-off download
    with pytest.raises(UserError, match="sha256"):
        pip_fetch("pkg==1.0", tmp_path, "pkg-1.0.tar.gz", GOOD_SHA, sdist=True)
    assert list(tmp_path.iterdir()) == []  # neither the file nor pip's temporary folder

    asked = _fake_pip(monkeypatch, GOOD)
    path = pip_fetch("pkg==1.0", tmp_path, "pkg-1.0.tar.gz", GOOD_SHA, sdist=True)
    assert path == tmp_path / "pkg-1.0.tar.gz" and path.read_bytes() == GOOD and asked == ["pkg==1.0"]
    assert pip_fetch("pkg==1.0", tmp_path, "pkg-1.0.tar.gz", GOOD_SHA) == path and len(asked) == 1

    path.write_bytes(b"damaged since")  # a damaged cache is fetched again, not trusted
    assert pip_fetch("pkg==1.0", tmp_path, "pkg-1.0.tar.gz", GOOD_SHA).read_bytes() == GOOD
    assert len(asked) == 2 and [p.name for p in tmp_path.iterdir()] == ["pkg-1.0.tar.gz"]


def test_pip_fetch_refuses_another_file(tmp_path, monkeypatch):
    _fake_pip(monkeypatch, GOOD, name="pkg-1.1.tar.gz")
    with pytest.raises(UserError, match="gave pkg-1.1.tar.gz, not pkg-1.0.tar.gz"):
        pip_fetch("pkg==1.0", tmp_path, "pkg-1.0.tar.gz", GOOD_SHA)
    assert list(tmp_path.iterdir()) == []


def test_one_line_folds_white_space_and_names_empty_errors():
    from scratchllm.util.errors import one_line

    assert one_line(ValueError("bad\n  value\tthere ")) == "bad value there"
    assert one_line(KeyError()) == "KeyError"


def test_url_fetch_caches_only_a_checked_download(tmp_path):
    import functools
    import http.server
    import threading

    from scratchllm.util.fetch import url_fetch

    served = tmp_path / "served"
    served.mkdir()
    (served / "data.jsonl").write_bytes(GOOD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/data.jsonl"
    cache = tmp_path / "cache"
    try:
        with pytest.raises(UserError, match="sha256"):
            url_fetch(url, cache, "data.jsonl", hashlib.sha256(b"other").hexdigest())
        assert list(cache.iterdir()) == []  # nothing kept of a download with the wrong hash
        path = url_fetch(url, cache, "data.jsonl", GOOD_SHA)
        assert path.read_bytes() == GOOD
        (served / "data.jsonl").unlink()  # served no more: the cached copy is used
        assert url_fetch(url, cache, "data.jsonl", GOOD_SHA) == path
        with pytest.raises(UserError, match="404"):
            url_fetch(url, tmp_path / "empty", "data.jsonl", GOOD_SHA)
    finally:
        server.shutdown()


_HOLD = """
import sys, time
from scratchllm.util.locks import folder_lock
with folder_lock(sys.argv[1], "training"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_folder_lock_names_its_holder_and_dies_with_it(tmp_path, cli_env):
    import socket
    import subprocess
    import sys

    from scratchllm.util.locks import folder_lock

    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "run")], env=cli_env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as caught, folder_lock(tmp_path / "run", "download"):
            pass
        # The holder's own kind (not the one asking), its process and machine.
        assert str(caught.value).startswith(f"another training is writing {tmp_path / 'run'} "
                                            f"(pid {holder.pid} on {socket.gethostname()}, since ")
        assert str(caught.value).endswith("); wait for it to finish")
    finally:
        holder.kill()  # SIGKILL: the lock goes with the process, its file stays
        holder.wait()
    with folder_lock(tmp_path / "run", "training"):
        assert f'"pid": {os.getpid()}' in (tmp_path / "run" / ".lock").read_text()


@pytest.mark.parametrize("total, filling, expected", [
    (100 * 10**9, True, 5 * 10**9),  # a large disk: 5% is more than 1 GB
    (100 * 10**9, False, 10**9),
    (10 * 10**9, True, 10**9),  # a small one: 5% is less
    (10 * 10**9, False, 5 * 10**8),
])
def test_default_min_free_keeps_the_larger_margin_for_writes_that_fill_a_disk(monkeypatch, tmp_path, total,
                                                                              filling, expected):
    from scratchllm.util import disk

    monkeypatch.setattr(disk, "disk_total", lambda path: total)
    assert disk.default_min_free(tmp_path, filling=filling) == expected


def test_the_disk_guard_names_what_is_kept_and_how_to_go_on(tmp_path):
    from scratchllm.util.disk import guard_disk

    guard_disk(tmp_path, 600, 400, "a shard", "kept", "go on", free_space=lambda p: 1000)  # just fits
    with pytest.raises(UserError) as caught:
        guard_disk(tmp_path, 601, 400, "a shard", "Kept: 3 shards", "go on", free_space=lambda p: 1000)
    assert str(caught.value) == (f"disk guard: 1.00 KB free on the disk of {tmp_path}; a shard needs "
                                 "about 601 B and 400 B must stay free. Kept: 3 shards. Free at least 1 B "
                                 "and go on")
