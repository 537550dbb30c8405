"""Token files: the llm.c header, memory-mapped reading, and every way a file can be wrong."""

import struct

import numpy as np
import pytest

from scratchllm.data import tokens as token_format
from scratchllm.data.tokens import HEADER_BYTES, ShardedTokens, TokenWriter, read_tokens, write_tokens
from scratchllm.util.errors import UserError


def llmc_file(path, tokens, magic=20240520, version=1, n=None, dtype="<u2"):
    """A token file built by hand with struct, the way llm.c's Python scripts lay it out."""
    tokens = np.asarray(tokens, dtype=dtype)
    header = struct.pack("<256i", magic, version, len(tokens) if n is None else n, *([0] * 253))
    path.write_bytes(header + tokens.tobytes())
    return path


def test_write_matches_llmc_layout(tmp_path):
    write_tokens(tmp_path / "a.bin", np.array([0, 5, 65535, 7], dtype=np.int64))
    raw = (tmp_path / "a.bin").read_bytes()
    assert struct.unpack("<3i", raw[:12]) == (20240520, 1, 4)
    assert raw[12:HEADER_BYTES] == bytes(HEADER_BYTES - 12)
    assert np.frombuffer(raw[HEADER_BYTES:], "<u2").tolist() == [0, 5, 65535, 7]

    write_tokens(tmp_path / "b.bin", [3, 70000])  # does not fit uint16
    raw = (tmp_path / "b.bin").read_bytes()
    assert struct.unpack("<3i", raw[:12]) == (20240801, 7, 2)
    assert np.frombuffer(raw[HEADER_BYTES:], "<u4").tolist() == [3, 70000]


@pytest.mark.parametrize("dtype", [np.uint32, np.uint16, np.int32, np.int64])
def test_write_picks_uint16_by_largest_id_whatever_the_input_dtype(tmp_path, dtype):
    write_tokens(tmp_path / "s.bin", np.array([1, 65535, 9], dtype=dtype))
    assert struct.unpack("<3i", (tmp_path / "s.bin").read_bytes()[:12]) == (20240520, 1, 3)
    t = read_tokens(tmp_path / "s.bin")
    assert t.dtype == np.uint16 and t.tolist() == [1, 65535, 9]


def test_reads_hand_made_llmc_files(tmp_path):
    ids = np.random.default_rng(0).integers(0, 50257, 1000)
    t = read_tokens(llmc_file(tmp_path / "gpt2.bin", ids), vocab_size=50257)
    assert isinstance(t, np.memmap) and t.dtype == np.uint16 and t.tolist() == ids.tolist()
    t = read_tokens(llmc_file(tmp_path / "big.bin", [1, 200000], 20240801, 7, dtype="<u4"))
    assert t.dtype == np.uint32 and t.tolist() == [1, 200000]
    assert len(read_tokens(llmc_file(tmp_path / "empty.bin", []))) == 0


@pytest.mark.parametrize("case, message", [
    (dict(magic=12345), "bad magic number 12345"),
    (dict(version=2), "unsupported token file version 2"),
    (dict(n=1001), "truncated: header says 1,001 tokens, file holds 1,000"),
    (dict(n=998), "4 unexpected bytes after the 998 tokens"),
    (dict(n=-1), "negative token count"),
    (dict(magic=20240801, version=7), "truncated"),  # uint16 data under a uint32 header
])
def test_bad_files_are_one_line_errors(tmp_path, case, message):
    path = llmc_file(tmp_path / "bad.bin", np.arange(1000), **case)
    with pytest.raises(UserError) as e:
        read_tokens(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_short_missing_and_out_of_range(tmp_path):
    (tmp_path / "short.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="shorter than the 1024-byte header"):
        read_tokens(tmp_path / "short.bin")
    with pytest.raises(UserError, match="no such token file"):
        read_tokens(tmp_path / "missing.bin")
    path = llmc_file(tmp_path / "ids.bin", [1, 2, 4096, 3, 5000])
    read_tokens(path, vocab_size=5001)
    with pytest.raises(UserError, match="token id 4096 at position 2 is outside the vocabulary of 4,096"):
        read_tokens(path, vocab_size=4096)


def test_writer_streams_and_appears_only_when_closed(tmp_path):
    path = tmp_path / "t.bin"
    with TokenWriter(path, "uint16") as w:
        w.write([1, 2, 3])
        w.write(np.array([4], dtype=np.int32))
        w.write([])
        assert not path.exists()
    assert read_tokens(path).tolist() == [1, 2, 3, 4]

    with pytest.raises(ValueError, match="does not fit uint16"):
        with TokenWriter(path, "uint16") as w:
            w.write([1, 70000])
    with pytest.raises(KeyError):
        with TokenWriter(path, "uint16") as w:
            w.write([9, 9, 9])
            raise KeyError("killed half-way")
    # The earlier complete file is untouched and no temporary file is left behind.
    assert read_tokens(path).tolist() == [1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]


def test_token_limit_is_refused_at_the_write_that_passes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(token_format, "MAX_TOKENS", 10)  # 2**31 - 1 really: 4 GiB, too much for a test
    path = tmp_path / "t.bin"
    with pytest.raises(UserError, match="more than 10 tokens") as e:
        with TokenWriter(path, "uint16") as w:
            w.write(np.arange(10))
            w.write([7])
    assert w.n_tokens == 10 and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # the partial file is gone


def test_writer_records_the_largest_id(tmp_path):
    with TokenWriter(tmp_path / "t.bin", "uint16") as w:
        assert w.max_id == -1
        w.write([5, 900, 3])
        w.write(np.array([7], dtype=np.uint16))
    assert w.max_id == 900


@pytest.mark.parametrize("sizes", [[5], [3, 4], [1, 1, 1, 7], [0, 4, 0, 3]])
def test_sharded_tokens_slice_as_one_array(tmp_path, sizes):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 60000, n).astype(np.uint16) for n in sizes]
    paths = [tmp_path / f"s{i}.bin" for i in range(len(parts))]
    for path, part in zip(paths, parts, strict=True):
        write_tokens(path, part, dtype="uint16")
    whole = np.concatenate(parts)
    tokens = ShardedTokens([read_tokens(p) for p in paths])
    assert len(tokens) == len(whole) and tokens.dtype == np.uint16
    for a in range(len(whole) + 1):
        for b in range(a, len(whole) + 2):
            assert tokens[a:b].tolist() == whole[a:b].tolist()
    assert np.asarray(tokens).tolist() == whole.tolist() == tokens.tolist()
    assert tokens[-3:].tolist() == whole[-3:].tolist()


def test_sharded_tokens_refuse_mixed_widths_and_steps(tmp_path):
    with pytest.raises(ValueError, match="share a dtype"):
        ShardedTokens([np.zeros(3, np.uint16), np.zeros(3, np.uint32)])
    with pytest.raises(ValueError, match="step 1"):
        ShardedTokens([np.arange(9, dtype=np.uint16)])[::2]
    assert len(ShardedTokens([])) == 0 and ShardedTokens([])[0:5].tolist() == []
