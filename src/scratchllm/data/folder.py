"""A token folder: the token shards of a corpus, its meta.json, and the checks made when it is opened.

What `scratchllm tokenize` writes:

    meta.json          the tokenizer, vocabulary and end-of-text id; the split rule; each split's
                       documents, tokens and UTF-8 bytes; and every shard with its own counts, first
                       and last document, largest id, sha256, size and modification time.
                       "complete" is false while tokenize is still writing.
    train_000000.bin   llm.c token files (see tokens.py) of at most `shard_tokens` tokens each, every
    val_000000.bin     one ending at a document boundary
    tokenizer.json     the tokenizer, when it was learned here (a pretrained one is named instead)

Also opened: folders of earlier versions (one train.bin and one val.bin beside meta.json), and
folders of llm.c or modded-nanogpt shards without meta.json (`fineweb_train_000001.bin`, ...), told
apart into train and val by their names.

Opening is cheap because meta.json is trusted for what it records: each shard's header and size are
checked against it, and its ids are scanned only when its size or modification time differs from
the record (for every shard with `verify=True`, which also checks each sha256). Folders without that
record, older or foreign, have every id scanned at each opening.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratchllm.data.tokens import ShardedTokens, check_range, max_id, read_tokens
from scratchllm.util.errors import UserError, one_line
from scratchllm.util.files import atomic_write_json, sha256_file

META = "meta.json"
SPLITS = ("train", "val")
FORMAT_VERSION = 2
# Folders of llm.c or modded-nanogpt shards have no meta.json; their tokens are GPT-2's unless the
# tokenizer that made them is named.
DEFAULT_VOCAB, DEFAULT_EOT = 50257, 50256
SHARD_RE = re.compile(r"^(train|val)_\d{6}\.bin$")


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`: train_000000.bin, val_000003.bin, ..."""
    return f"{split}_{index:06d}.bin"


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Field -> (required, test, what the test wants); the two splits and the shards are checked apart.
_META_FIELDS = {
    "tokenizer": (True, lambda v: isinstance(v, str) and bool(v), "a tokenizer name or file"),
    "vocab_size": (True, lambda v: _is_count(v) and v > 0, "a positive integer"),
    "eot_id": (True, _is_count, "a non-negative integer"),
    "tokenizer_sha256": (False, lambda v: isinstance(v, str), "a string"),
    "token_dtype": (False, lambda v: v in ("uint16", "uint32"), '"uint16" or "uint32"'),
    "source": (False, lambda v: isinstance(v, str), "a string"),
    "seconds": (False, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "format_version": (False, lambda v: v in (1, FORMAT_VERSION), f"1 or {FORMAT_VERSION}"),
    "complete": (False, lambda v: isinstance(v, bool), "true or false"),
    "shard_tokens": (False, lambda v: _is_count(v) and v > 0, "a positive integer"),
    "shards": (False, lambda v: isinstance(v, list), "a list"),
}
_SPLIT_FIELDS = ("documents", "tokens", "bytes")
_SHARD_FIELDS = {
    "file": (lambda v: isinstance(v, str) and bool(SHARD_RE.match(v)), "a name like train_000000.bin"),
    "split": (lambda v: v in SPLITS, '"train" or "val"'),
    "tokens": (_is_count, "a non-negative integer"),
    "documents": (_is_count, "a non-negative integer"),
    "bytes": (_is_count, "a non-negative integer"),
    "first_doc": (_is_count, "a non-negative integer"),
    "last_doc": (_is_count, "a non-negative integer"),
    "max_id": (lambda v: _is_int(v) and v >= -1, "an integer of -1 or more"),
    "sha256": (lambda v: isinstance(v, str) and bool(re.fullmatch(r"[0-9a-f]{64}", v)), "a sha256 in hex"),
    "file_bytes": (_is_count, "a non-negative integer"),
    "mtime_ns": (_is_count, "a non-negative integer"),
}


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_shards(meta: dict, path: str | Path) -> None:
    """Each shard entry's fields, unique names, and split totals equal to the sums of their shards."""
    names = set()
    for i, entry in enumerate(meta["shards"]):
        if not isinstance(entry, dict):
            raise UserError(f'{path}: field "shards[{i}]" must be an object, not {_shown(entry)}')
        for key, (test, want) in _SHARD_FIELDS.items():
            if not test(entry.get(key)):
                raise UserError(f'{path}: field "shards[{i}].{key}" must be {want}, '
                                f"not {_shown(entry.get(key))}")
        if entry["file"] in names or not entry["file"].startswith(entry["split"] + "_"):
            raise UserError(f'{path}: field "shards[{i}].file" ({entry["file"]}) is listed twice or '
                            f'names another split than {entry["split"]}')
        names.add(entry["file"])
        if entry["max_id"] >= meta["vocab_size"]:
            raise UserError(f'{path}: shard {entry["file"]} holds id {entry["max_id"]}, outside the '
                            f'vocabulary of {meta["vocab_size"]:,}')
    for split in SPLITS:
        for key in _SPLIT_FIELDS:
            total = sum(e[key] for e in meta["shards"] if e["split"] == split)
            if total != meta[split][key]:
                raise UserError(f'{path}: field "{split}.{key}" ({meta[split][key]:,}) differs from the sum '
                                f"over its shards ({total:,})")


def check_meta(meta, path: str | Path) -> dict:
    """`meta` if it has the shape of meta.json, else a UserError naming `path` and the field."""
    if not isinstance(meta, dict):
        raise UserError(f"{path}: must hold a JSON object, not {_shown(meta)}")
    for key, (required, test, want) in _META_FIELDS.items():
        if key not in meta:
            if required:
                raise UserError(f'{path}: no "{key}" field')
        elif not test(meta[key]):
            raise UserError(f'{path}: field "{key}" must be {want}, not {_shown(meta[key])}')
    for split in SPLITS:
        counts = meta.get(split)
        if not isinstance(counts, dict):
            raise UserError(f'{path}: field "{split}" must be an object with {", ".join(_SPLIT_FIELDS)}, '
                            f"not {_shown(counts)}")
        for key in _SPLIT_FIELDS:
            if not _is_count(counts.get(key)):
                raise UserError(f'{path}: field "{split}.{key}" must be a non-negative integer, '
                                f"not {_shown(counts.get(key))}")
    if meta["eot_id"] >= meta["vocab_size"]:
        raise UserError(f'{path}: field "eot_id" ({meta["eot_id"]}) must be below vocab_size '
                        f'({meta["vocab_size"]})')
    if "shards" in meta:
        _check_shards(meta, path)
    return meta


def read_meta(folder: str | Path) -> dict:
    """meta.json of a token folder, checked (UserError if it is missing, unreadable or malformed)."""
    path = Path(folder) / META
    if not path.is_file():
        raise UserError(f"{folder}: not a complete token folder (no meta.json); run `scratchllm tokenize`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # also undecodable bytes: UnicodeDecodeError is a ValueError
        raise UserError(f"{path}: not valid JSON: {one_line(e)}") from None
    return check_meta(meta, path)


def write_meta(folder: str | Path, meta: dict) -> dict:
    """Check `meta` as `read_meta` does and write it as folder/meta.json, atomically; return it."""
    path = Path(folder) / META
    atomic_write_json(path, check_meta(meta, path))
    return meta


# --- the three layouts, as lists of shard entries --------------------------------------------------


def _recorded_shards(path: Path, meta: dict) -> list[dict]:
    if meta.get("complete") is False:
        done = len(meta["shards"])
        raise UserError(f"{path}: tokenize has not finished ({done} shard{'s' * (done != 1)} so far); run "
                        "the same `scratchllm tokenize` command again to continue it")
    return meta["shards"]


def _one_file_shards(path: Path, meta: dict) -> list[dict]:
    """An earlier version's folder: train.bin and val.bin, nothing recorded about them but the counts."""
    return [{"file": f"{split}.bin", "split": split, "tokens": meta[split]["tokens"]} if meta else
            {"file": f"{split}.bin", "split": split} for split in SPLITS]


def split_of(name: str) -> str | None:
    """'train' or 'val' for a shard file named like fineweb_train_000001.bin or val.bin, else None."""
    words = set(re.split(r"[^a-z0-9]+", name.lower().removesuffix(".bin")))
    found = [s for s in SPLITS if s in words or (s == "val" and "validation" in words)]
    return found[0] if len(found) == 1 else None


def _foreign_shards(path: Path) -> list[dict]:
    """Shards written elsewhere (llm.c, modded-nanogpt): every *.bin file, its split read from its name."""
    files = sorted(p.name for p in path.glob("*.bin"))
    entries = [{"file": name, "split": split_of(name)} for name in files]
    unclear = [str(e["file"]) for e in entries if e["split"] is None]
    missing = [s for s in SPLITS if not any(e["split"] == s for e in entries)]
    if not files:
        raise UserError(f"{path}: no token files (*.bin) and no meta.json; make a token folder with "
                        "`scratchllm tokenize`")
    if unclear or missing:
        what = (f"{', '.join(unclear[:3])} name{'s' * (len(unclear) == 1)} neither or both" if unclear
                else f"no file names the {missing[0]} split")
        raise UserError(f"{path}: cannot tell the token files apart into train and val ({what}); name "
                        "them like train_000000.bin and val_000000.bin")
    return entries


def _open_shard(path: Path, entry: dict, meta: dict, verify: bool) -> tuple[np.ndarray, int]:
    """The shard's tokens, memory-mapped, and its largest id; checked against its entry and meta.json."""
    file = path / entry["file"]
    tokens = read_tokens(file)  # the header and the size agree
    if "tokens" in entry and len(tokens) != entry["tokens"]:
        raise UserError(f"{file}: holds {len(tokens):,} tokens but meta.json says {entry['tokens']:,}")
    if meta.get("token_dtype", tokens.dtype.name) != tokens.dtype.name:
        raise UserError(f"{file}: holds {tokens.dtype.name} tokens but meta.json says {meta['token_dtype']}")
    st = file.stat()
    as_recorded = (st.st_size, st.st_mtime_ns) == (entry.get("file_bytes"), entry.get("mtime_ns"))
    if verify and "sha256" in entry and sha256_file(file) != entry["sha256"]:
        raise UserError(f"{file}: its sha256 differs from the one in meta.json (the file was changed)")
    if as_recorded and not verify:
        return tokens, entry["max_id"]
    top = max_id(tokens)
    if meta and top >= meta["vocab_size"]:
        check_range(tokens, meta["vocab_size"], file)  # raises, naming the first such id
    return tokens, top


def _layout(path: Path, meta: dict) -> list[dict]:
    """The shard entries of whichever of the three layouts the folder has."""
    if "shards" in meta:
        return _recorded_shards(path, meta)
    if meta or (path / "train.bin").is_file():
        return _one_file_shards(path, meta)
    return _foreign_shards(path)


def _check_tokenizer(path: Path, meta: dict, tokenizer) -> None:
    """UserError when meta.json records another tokenizer than the one named."""
    made_with = meta.get("tokenizer_sha256")
    if made_with and tokenizer is not None and made_with != tokenizer.sha256():
        raise UserError(f"{path}: these tokens were made with {meta['tokenizer']}, not with the "
                        f"tokenizer named ({getattr(tokenizer, 'name', tokenizer)})")


def _open_splits(path: Path, entries: list[dict], meta: dict,
                 verify: bool) -> tuple[dict[str, ShardedTokens], dict[str, int]]:
    """Each split's shards opened and checked, as one ShardedTokens, and each split's largest id."""
    dtype = np.dtype(meta["token_dtype"]).newbyteorder("<") if "token_dtype" in meta else None
    arrays: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    max_ids = {s: -1 for s in SPLITS}
    for entry in entries:
        tokens, top = _open_shard(path, entry, meta, verify)
        arrays[entry["split"]].append(tokens)
        max_ids[entry["split"]] = max(max_ids[entry["split"]], top)
    try:
        return {s: ShardedTokens(arrays[s], dtype) for s in SPLITS}, max_ids
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


@dataclass(frozen=True, eq=False)
class TokenFolder:
    """A token folder, opened and checked: each split's shards as one `ShardedTokens`, meta.json read.

    `open` refuses a folder whose shards are not whole, whose counts or widths differ from meta.json's,
    or whose ids reach past meta.json's vocabulary. A folder of llm.c or modded-nanogpt shards has no
    meta.json; its ids are checked against the model's vocabulary (`model_vocab_size`). Opening never
    writes to the folder.
    """

    path: Path
    meta: dict  # {} for a folder without meta.json
    train: ShardedTokens
    val: ShardedTokens
    max_ids: dict[str, int]  # the largest id of each split, -1 for an empty one
    files: dict[str, list[str]]  # each split's shard files, in order
    vocab_size: int  # meta.json's, else the named tokenizer's, else GPT-2's
    eot_id: int  # likewise

    @classmethod
    def open(cls, path: str | Path, require_meta: bool = False, verify: bool = False,
             tokenizer=None) -> TokenFolder:
        """Open and check the folder (meta.json may be absent unless `require_meta`); `verify` scans
        every id and checks every sha256 whatever meta.json records; `tokenizer` (with `vocab_size`,
        `eot_id`, `sha256()`) is what made the tokens, checked against meta.json or standing in for it."""
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path}: no such data folder (make one with `scratchllm tokenize`)")
        meta = read_meta(path) if require_meta or (path / META).is_file() else {}
        _check_tokenizer(path, meta, tokenizer)
        entries = _layout(path, meta)
        splits, max_ids = _open_splits(path, entries, meta, verify)
        files = {s: [e["file"] for e in entries if e["split"] == s] for s in SPLITS}
        vocab = meta["vocab_size"] if meta else getattr(tokenizer, "vocab_size", DEFAULT_VOCAB)
        eot = meta["eot_id"] if meta else getattr(tokenizer, "eot_id", DEFAULT_EOT)
        return cls(path, meta, splits["train"], splits["val"], max_ids, files, vocab, eot)

    def split(self, name: str) -> ShardedTokens:
        """The tokens of split `name` ('train' or 'val')."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {name!r}")
        return self.train if name == "train" else self.val

    def model_vocab_size(self, requested: int) -> int:
        """The vocabulary of a model for these tokens: `requested`, or for 0 the data's (meta.json's, or
        without one the named tokenizer's or GPT-2's 50,257); UserError if the tokens do not fit it."""
        if self.meta:
            vocab = self.meta["vocab_size"]
            if requested and vocab > requested:
                raise UserError(f"{self.path}: the tokens use a vocabulary of {vocab:,}, larger than "
                                f"model.vocab_size {requested:,}")
            return requested or vocab
        vocab = requested or self.vocab_size
        for name in SPLITS:  # no meta.json to trust: the ids themselves must fit
            if self.max_ids[name] >= vocab:
                files = self.files[name]
                where = self.path / files[0] if len(files) == 1 else f"{self.path} ({name} shards)"
                raise UserError(f"{where}: token ids reach {self.max_ids[name]}, beyond "
                                f"model.vocab_size {vocab:,}")
        return vocab
