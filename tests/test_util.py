"""Size strings, the cache folder and atomic writes."""

import json

import pytest

from scratchllm.util import UserError, atomic_path, atomic_write_json, cache_dir, format_size, parse_size


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
