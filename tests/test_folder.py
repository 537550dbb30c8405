"""Token folders: the sharded layout tokenize writes, older one-file folders, llm.c/modded-nanogpt shard
folders, and what opening one checks (and, for speed, what it takes from meta.json on trust)."""

import json
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest

from scratchllm.data import folder as token_folder
from scratchllm.data.folder import TokenFolder, read_meta, split_of, write_meta
from scratchllm.data.tokenize import tokenize_to_dir
from scratchllm.data.tokens import HEADER_BYTES, read_tokens, write_tokens
from scratchllm.tokenizer import train_bpe
from scratchllm.util.errors import UserError

DOCS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog " * (1 + i % 9) for i in range(60)]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(DOCS, 300)


@pytest.fixture(scope="module")
def sharded(tok, tmp_path_factory):
    """A folder of many small shards (at most 200 tokens each), and the whole token stream."""
    out = tmp_path_factory.mktemp("sharded")
    tokenize_to_dir(DOCS, tok, out, val_docs=6, workers=1, quiet=True, shard_tokens=200, min_free=0)
    stream = [t for d in DOCS for t in (*tok.encode(d), tok.eot_id)]
    return out, stream


def copy_of(folder, dest):
    """A copy keeping modification times (as `cp -p` and rsync -a do), so meta.json's record holds."""
    shutil.copytree(folder, dest, copy_function=shutil.copy2)
    return dest


# --- the sharded layout --------------------------------------------------------------------------


def test_shards_hold_the_stream_in_order_and_end_at_document_boundaries(tok, sharded):
    out, stream = sharded
    meta = read_meta(out)
    folder = TokenFolder.open(out)
    n_train = sum(len(tok.encode(d)) + 1 for d in DOCS[:-6])
    assert folder.train.tolist() == stream[:n_train] and folder.val.tolist() == stream[n_train:]
    assert meta["complete"] and len(folder.files["train"]) > 3
    assert folder.files["train"] == [f"train_{i:06d}.bin" for i in range(len(folder.files["train"]))]
    expect_first = 0
    for entry in meta["shards"]:
        raw = (out / entry["file"]).read_bytes()
        header = struct.unpack("<3i", raw[:12])
        tokens = np.frombuffer(raw[HEADER_BYTES:], dtype="<u2")
        assert header == (20240520, 1, entry["tokens"]) == (20240520, 1, len(tokens))
        assert 0 < entry["tokens"] <= 200 and tokens[-1] == tok.eot_id  # a whole number of documents
        n_docs = entry["last_doc"] - entry["first_doc"] + 1
        assert int((tokens == tok.eot_id).sum()) == entry["documents"] == n_docs
        assert entry["first_doc"] == expect_first and entry["max_id"] == int(tokens.max())
        assert entry["bytes"] == sum(len(d.encode()) for d in DOCS[expect_first : expect_first + n_docs])
        expect_first = entry["last_doc"] + 1
    assert expect_first == len(DOCS)
    val_shards = [e for e in meta["shards"] if e["split"] == "val"]
    assert meta["val"]["documents"] == 6 and all(e["first_doc"] >= 54 for e in val_shards)


def test_a_document_longer_than_a_shard_gets_a_shard_of_its_own(tok, tmp_path):
    docs = ["short one", "long " * 300, "short two", "short three"]
    meta = tokenize_to_dir(docs, tok, tmp_path, val_docs=1, workers=1, quiet=True, shard_tokens=50,
                           min_free=0)
    sizes = [(e["documents"], e["tokens"]) for e in meta["shards"]]
    assert sizes[1] == (1, len(tok.encode(docs[1])) + 1) and sizes[1][1] > 50
    expected = [t for d in docs[:3] for t in (*tok.encode(d), tok.eot_id)]
    assert TokenFolder.open(tmp_path).train.tolist() == expected


def test_c_and_torch_readers_of_the_llmc_format_read_every_shard(sharded, tmp_path):
    """Two independent readers written from the format's description: a C program as llm.c's loader
    reads (fread of the int32 header, then uint16 tokens) and torch as modded-nanogpt's shard loader does."""
    import torch

    out, _ = sharded
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    src = tmp_path / "read.c"
    src.write_text(r"""
#include <stdio.h>
#include <stdint.h>
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "rb"); int32_t h[256]; uint16_t t; long sum = 0, n = 0;
    if (!f || fread(h, sizeof(int32_t), 256, f) != 256 || h[0] != 20240520 || h[1] != 1) return 1;
    while (fread(&t, sizeof(uint16_t), 1, f) == 1) { sum += t; n++; }
    if (n != h[2]) return 2;
    printf("%ld %ld\n", n, sum); return 0;
}""")
    subprocess.run(["cc", "-O1", "-o", str(tmp_path / "read"), str(src)], check=True)
    for entry in read_meta(out)["shards"]:
        path = out / entry["file"]
        ours = read_tokens(path).astype(np.int64)
        read = subprocess.run([str(tmp_path / "read"), str(path)], check=True, capture_output=True, text=True)
        n, total = map(int, read.stdout.split())
        header = torch.from_file(str(path), False, 256, dtype=torch.int32)
        assert header[:3].tolist() == [20240520, 1, entry["tokens"]]
        with open(path, "rb") as f:
            f.seek(256 * 4)
            tokens = torch.empty(int(header[2]), dtype=torch.uint16)
            assert f.readinto(tokens.numpy()) == 2 * entry["tokens"]
        assert (n, total) == (entry["tokens"], int(ours.sum()))
        assert tokens.numpy().tolist() == ours.tolist()


def test_opening_trusts_the_record_and_scans_a_shard_only_once_it_changed(sharded, tmp_path, monkeypatch):
    out = copy_of(sharded[0], tmp_path / "d")
    scanned = []
    real = token_folder.max_id
    monkeypatch.setattr(token_folder, "max_id", lambda tokens: scanned.append(len(tokens)) or real(tokens))
    TokenFolder.open(out)
    assert scanned == []  # sizes, headers and times as recorded: no id is read
    first = out / "train_000001.bin"
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    TokenFolder.open(out)
    assert scanned == [read_meta(out)["shards"][1]["tokens"]]  # only the shard whose time changed


def test_a_planted_id_is_refused_on_opening_in_one_line(sharded, tmp_path):
    out = copy_of(sharded[0], tmp_path / "d")
    path = out / "val_000000.bin"
    raw = bytearray(path.read_bytes())
    raw[HEADER_BYTES + 4 : HEADER_BYTES + 6] = struct.pack("<H", 300)  # one id past the vocabulary of 300
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"val_000000.bin: token id 300 at position 2 is outside the") as e:
        TokenFolder.open(out)
    assert "\n" not in str(e.value)


def test_verify_checks_every_hash_even_when_the_record_holds(sharded, tmp_path):
    out = copy_of(sharded[0], tmp_path / "d")
    path = out / "train_000002.bin"
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[-4] ^= 1  # an id changed in place, the time set back: the record cannot see it
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    TokenFolder.open(out)
    with pytest.raises(UserError, match="train_000002.bin: its sha256 differs"):
        TokenFolder.open(out, verify=True)


def test_an_unfinished_folder_is_refused_with_the_way_on(sharded, tmp_path):
    out = copy_of(sharded[0], tmp_path / "d")
    meta = read_meta(out)
    write_meta(out, {**meta, "complete": False})
    with pytest.raises(UserError, match="tokenize has not finished.*the same `scratchllm tokenize` command"):
        TokenFolder.open(out)


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["shards"][0].update(file="../train_000000.bin"), r'field "shards\[0\].file" must be a name'),
    (lambda m: m["shards"][0].update(tokens=-1), r'field "shards\[0\].tokens" must be a non-negative'),
    (lambda m: m["shards"][1].update(file=m["shards"][0]["file"]), "is listed twice"),
    (lambda m: m["train"].update(tokens=m["train"]["tokens"] + 1), 'field "train.tokens" .* differs from'),
    (lambda m: m["shards"][0].update(max_id=300), "holds id 300, outside the vocabulary of 300"),
    (lambda m: m.update(shards="all"), 'field "shards" must be a list'),
])
def test_a_damaged_meta_json_is_refused_in_one_line(sharded, tmp_path, edit, words):
    out = copy_of(sharded[0], tmp_path / "d")
    meta = json.loads((out / "meta.json").read_text())
    edit(meta)
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=words):
        TokenFolder.open(out)


def test_a_missing_or_cut_shard_is_refused(sharded, tmp_path):
    out = copy_of(sharded[0], tmp_path / "d")
    (out / "train_000003.bin").unlink()
    with pytest.raises(UserError, match="train_000003.bin: no such token file"):
        TokenFolder.open(out)
    out = copy_of(sharded[0], tmp_path / "e")
    path = out / "val_000000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(UserError, match="val_000000.bin: truncated"):
        TokenFolder.open(out)


# --- folders of earlier versions: train.bin and val.bin ---------------------------------------------


def _meta(n_train, n_val, vocab=1000, **extra):
    return {"tokenizer": "test", "vocab_size": vocab, "eot_id": vocab - 1, "token_dtype": "uint16",
            "source": "test", "train": {"documents": 1, "tokens": n_train, "bytes": n_train},
            "val": {"documents": 1, "tokens": n_val, "bytes": n_val}, **extra}


def _one_file_folder(path, train, val, meta=None):
    path.mkdir(parents=True, exist_ok=True)
    write_tokens(path / "train.bin", train, dtype="uint16")
    write_tokens(path / "val.bin", val, dtype="uint16")
    if meta is not None:
        write_meta(path, meta)
    return path


def test_one_file_folder_reads_what_was_written_and_sizes_the_model(tmp_path):
    train, val = list(range(500)), [999, 0, 3]
    folder = TokenFolder.open(_one_file_folder(tmp_path / "d", train, val, _meta(500, 3)))
    assert folder.train.tolist() == train and folder.split("val").tolist() == val
    assert folder.max_ids == {"train": 499, "val": 999} and folder.meta["vocab_size"] == 1000
    assert folder.model_vocab_size(0) == 1000  # 0: the data's
    assert folder.model_vocab_size(1024) == 1024  # a larger model vocabulary is fine
    with pytest.raises(UserError, match="vocabulary of 1,000, larger than model.vocab_size 512"):
        folder.model_vocab_size(512)


def test_folder_without_meta_checks_ids_against_the_model(tmp_path):
    folder = TokenFolder.open(_one_file_folder(tmp_path / "d", [1, 2, 60000], [4]))
    assert folder.meta == {} and folder.max_ids == {"train": 60000, "val": 4}
    assert folder.model_vocab_size(65536) == 65536
    with pytest.raises(UserError, match=r"train.bin: token ids reach 60000, beyond model.vocab_size 50,257"):
        folder.model_vocab_size(0)  # 0 without meta.json: GPT-2's 50,257, what llm.c shards hold
    assert TokenFolder.open(_one_file_folder(tmp_path / "e", [1, 2], [4])).model_vocab_size(0) == 50257
    with pytest.raises(UserError, match="no meta.json"):
        TokenFolder.open(tmp_path / "d", require_meta=True)


@pytest.mark.parametrize("change, words", [
    ({"token_dtype": "uint32"}, "holds uint16 tokens but meta.json says uint32"),
    ({"train": {"documents": 1, "tokens": 7, "bytes": 7}}, "holds 5 tokens but meta.json says 7"),
    ({"vocab_size": 4, "eot_id": 3}, "token id 4 at position 4 is outside the vocabulary of 4"),
])
def test_one_file_folder_refuses_files_that_disagree_with_meta(tmp_path, change, words):
    path = _one_file_folder(tmp_path / "d", [0, 1, 2, 3, 4], [0], _meta(5, 1, **change))
    with pytest.raises(UserError, match=words):
        TokenFolder.open(path)


def test_write_meta_checks_before_it_writes(tmp_path):
    with pytest.raises(UserError, match='field "val.tokens" must be a non-negative integer, not null'):
        write_meta(tmp_path, _meta(5, None))
    assert list(tmp_path.iterdir()) == []


# --- shard folders written elsewhere ---------------------------------------------------------------


@pytest.mark.parametrize("name, split", [
    ("fineweb_train_000001.bin", "train"), ("fineweb_val_000000.bin", "val"),
    ("tiny_shakespeare_val.bin", "val"), ("train.bin", "train"), ("edu_fineweb_validation_000000.bin", "val"),
    ("trainval.bin", None),
    ("train_val.bin", None), ("shard_000001.bin", None), ("retrain_000001.bin", None),
])
def test_split_of_reads_a_shard_name(name, split):
    assert split_of(name) == split


def test_modded_nanogpt_shards_train_without_conversion(tmp_path):
    parts = {"fineweb_train_000002.bin": [7, 8], "fineweb_train_000001.bin": [1, 2, 3],
             "fineweb_val_000000.bin": [50256, 9]}
    for name, ids in parts.items():
        write_tokens(tmp_path / name, ids, dtype="uint16")
    folder = TokenFolder.open(tmp_path)
    assert folder.train.tolist() == [1, 2, 3, 7, 8] and folder.val.tolist() == [50256, 9]  # in name order
    assert folder.files["train"] == ["fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert folder.model_vocab_size(0) == 50257


@pytest.mark.parametrize("names, words", [
    (["fineweb_train_000001.bin", "shard_000001.bin"], "shard_000001.bin names neither or both"),
    (["fineweb_train_000001.bin"], "no file names the val split"),
    ([], "no token files"),
])
def test_shards_that_cannot_be_told_apart_are_refused_in_one_line(tmp_path, names, words):
    for name in names:
        write_tokens(tmp_path / name, [1, 2], dtype="uint16")
    with pytest.raises(UserError, match=f"cannot tell the token files apart.*{words}|{words}") as e:
        TokenFolder.open(tmp_path)
    assert "\n" not in str(e.value)
