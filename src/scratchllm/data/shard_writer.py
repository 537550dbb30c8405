"""Writing a token folder shard by shard, so that a killed `tokenize` resumes after its last whole shard.

The order of writes is what makes this safe, as in `download`: a shard is written under a temporary
name, fsynced and renamed, and only then listed in meta.json (itself replaced atomically), whose
"complete" stays false until the last shard is listed. Shard boundaries depend only on the documents
and `shard_tokens` (a shard takes documents while they fit), so a run resumed after document N ends
with exactly the files of an uninterrupted run. A kill loses at most the one shard being written.

Which documents are held out is decided before the first shard is written (`SplitPlan`): a contiguous
block, so at most one shard is open at a time and the resume point is one document index.
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratchllm.data.download import RERUN
from scratchllm.data.folder import FORMAT_VERSION, SHARD_RE, SPLITS, read_meta, shard_name, write_meta
from scratchllm.data.tokens import HEADER_BYTES, TokenWriter
from scratchllm.util.disk import disk_free, guard_disk
from scratchllm.util.errors import UserError, one_line
from scratchllm.util.files import sha256_file

# What must be equal for a folder to be continued rather than refused.
IDENTITY = ("source", "tokenizer", "tokenizer_sha256", "vocab_size", "eot_id", "token_dtype", "shard_tokens",
            "split")


@dataclass(frozen=True)
class SplitPlan:
    """The held-out documents: `val_docs` of them, at the end of the source (its document count known
    in advance) or, for a stream of unknown length, at its start."""

    val_docs: int
    where: str  # "last" or "first"
    documents: int | None  # the source's documents, when counted in advance

    def split_at(self, index: int) -> str:
        """The split of document `index`."""
        if self.where == "first":
            return "val" if index < self.val_docs else "train"
        assert self.documents is not None
        return "val" if index >= self.documents - self.val_docs else "train"

    def boundary(self) -> int:
        """The index of the first document of the second split."""
        return self.val_docs if self.where == "first" else (self.documents or 0) - self.val_docs


def _empty_counts() -> dict:
    return {"documents": 0, "tokens": 0, "bytes": 0}


class ShardWriter:
    """Appends encoded documents to a token folder, one shard open at a time; resumable (see module)."""

    def __init__(self, out: Path, identity: dict, plan: SplitPlan, min_free: int, free_space=disk_free):
        self.out, self.plan, self.min_free, self.free_space = out, plan, min_free, free_space
        self.dtype = np.dtype(identity["token_dtype"])
        self.shard_tokens = identity["shard_tokens"]
        self.meta = self._resumable(identity) or {
            "format_version": FORMAT_VERSION, **identity, "complete": False, "seconds": 0.0,
            "train": _empty_counts(), "val": _empty_counts(), "shards": []}
        self.shards: list[dict] = self.meta["shards"]
        self.next_doc = self.shards[-1]["last_doc"] + 1 if self.shards else 0
        self._writer: TokenWriter | None = None
        self._entry: dict = {}

    # --- what is there already --------------------------------------------------------------------

    def _resumable(self, identity: dict) -> dict | None:
        """The meta.json to continue (None for a fresh folder); UserError for a folder of other tokens."""
        if not (self.out / "meta.json").is_file():
            if any(self.out.glob("*.bin")):
                raise UserError(f"--out {self.out} holds token files but no meta.json: pick an empty or new "
                                "folder")
            return None
        meta = read_meta(self.out)
        differ = [k for k in IDENTITY if meta.get(k) != identity[k]]
        if differ:
            was = ", ".join(f"{k} {_shown(meta.get(k))}" for k in differ[:2])
            now = ", ".join(f"{k} {_shown(identity[k])}" for k in differ[:2])
            raise UserError(f"{self.out} holds tokens made with {was}; refusing to mix in {now}: use another "
                            "--out, or the same source, tokenizer and options to continue it")
        return self._cut_at_damage(meta)

    def _cut_at_damage(self, meta: dict) -> dict:
        """Keep the listed shards up to the first one missing or changed on disk (size or time)."""
        for i, entry in enumerate(meta["shards"]):
            path = self.out / entry["file"]
            st = path.stat() if path.is_file() else None
            if st is None or (st.st_size, st.st_mtime_ns) != (entry["file_bytes"], entry["mtime_ns"]):
                meta["shards"] = meta["shards"][:i]
                meta["complete"] = False
                break
        for split in SPLITS:
            meta[split] = {key: sum(e[key] for e in meta["shards"] if e["split"] == split)
                           for key in _empty_counts()}
        return meta

    def clear(self) -> None:
        """Under the folder's lock: write meta.json as it will be continued and remove every shard it does
        not list (written by a run killed before it could list it, or cut off after a damaged one)."""
        write_meta(self.out, self.meta)
        listed = {e["file"] for e in self.shards}
        for path in self.out.glob("*.bin"):
            if SHARD_RE.match(path.name) and path.name not in listed:
                path.unlink()

    # --- writing ----------------------------------------------------------------------------------

    def add(self, first_doc: int, tokens: np.ndarray, doc_tokens: np.ndarray, doc_bytes: np.ndarray) -> None:
        """Append consecutive documents from index `first_doc` (their tokens back to back, EOT included;
        the tokens and UTF-8 bytes of each)."""
        if first_doc != self.next_doc:
            raise ValueError(f"documents must come in order: expected {self.next_doc}, got {first_doc}")
        n = len(doc_tokens)
        cut = self.plan.boundary() - first_doc
        if 0 < cut < n:  # the batch straddles the split: each side on its own
            at = int(doc_tokens[:cut].sum())
            self.add(first_doc, tokens[:at], doc_tokens[:cut], doc_bytes[:cut])
            self.add(first_doc + cut, tokens[at:], doc_tokens[cut:], doc_bytes[cut:])
            return
        split = self.plan.split_at(first_doc)
        pos = i = 0
        while i < n:
            if self._writer is not None and self._entry["split"] != split:
                self.close_shard()
            if self._writer is None:
                self._open_shard(split, first_doc + i)
            assert self._writer is not None
            room = self.shard_tokens - self._writer.n_tokens
            cum = np.cumsum(doc_tokens[i:], dtype=np.int64)
            k = int(np.searchsorted(cum, room, side="right"))
            if k == 0 and self._writer.n_tokens == 0:
                k = 1  # a document longer than a shard: a shard of its own
            if k:
                self._writer.write(tokens[pos : pos + int(cum[k - 1])])
                e = self._entry
                e["documents"] += k
                e["bytes"] += int(doc_bytes[i : i + k].sum())
                e["last_doc"] = first_doc + i + k - 1
                pos += int(cum[k - 1])
                i += k
            if i < n:  # the next document does not fit
                self.close_shard()
        self.next_doc = first_doc + n

    def _open_shard(self, split: str, first_doc: int) -> None:
        index = sum(1 for e in self.shards if e["split"] == split)
        need = HEADER_BYTES + self.shard_tokens * self.dtype.itemsize
        guard_disk(self.out, need, self.min_free, "the next shard", self.saved(), RERUN, self.free_space)
        self._entry = {"file": shard_name(split, index), "split": split, "documents": 0, "bytes": 0,
                       "first_doc": first_doc, "last_doc": first_doc}
        self._writer = TokenWriter(self.out / self._entry["file"], self.dtype)

    def close_shard(self) -> None:
        """Move the open shard into place and list it in meta.json."""
        writer, entry = self._writer, self._entry
        if writer is None:
            return
        self._writer = None
        try:
            writer.close()
        except OSError as e:
            writer.abort()
            raise self.write_error(e) from e
        path = self.out / entry["file"]
        st = path.stat()
        entry.update(tokens=writer.n_tokens, max_id=writer.max_id, sha256=sha256_file(path),
                     file_bytes=st.st_size, mtime_ns=st.st_mtime_ns)
        self.shards.append(entry)
        for key in _empty_counts():
            self.meta[entry["split"]][key] += entry[key]
        write_meta(self.out, self.meta)

    def abort(self) -> None:
        """Drop the shard being written (the listed ones stay: the run resumes after them)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def finish(self, seconds: float) -> dict:
        """Close the last shard and mark the folder complete; return meta.json's content."""
        self.close_shard()
        plan = self.plan
        if plan.documents is not None and self.next_doc != plan.documents:
            raise UserError(f"the source held {self.next_doc:,} documents, not the {plan.documents:,} "
                            f"counted before tokenizing (it changed meanwhile); delete {self.out} and start "
                            "again")
        if self.next_doc <= plan.val_docs:
            raise UserError(f"{plan.val_docs} validation documents leave none for training (the source has "
                            f"{self.next_doc})")
        self.meta["complete"] = True
        self.meta["seconds"] = round(self.meta["seconds"] + seconds, 3)
        return write_meta(self.out, self.meta)

    def saved(self) -> str:
        """What is safely on disk, in words."""
        tokens = sum(e["tokens"] for e in self.shards)
        last = max((e["last_doc"] for e in self.shards), default=-1)
        return f"Saved so far: {len(self.shards)} shards, {tokens:,} tokens, documents 0 to {last:,}"

    def write_error(self, e: OSError) -> Exception:
        """The error to raise for `e`, met while writing: a full disk becomes a one-line UserError."""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return UserError(f"the disk of {self.out} is full ({one_line(e)}). {self.saved()}. Free some "
                             "space and rerun the same command to continue")
        return e


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
