"""Stage 1, step 2: stream a source into parquet shards on disk, resumable, never losing or repeating data.

OUT/shard_000000.parquet ... hold the documents in source order (columns `id`, `text`, and any
`--keep-columns`). OUT/manifest.json lists the complete shards. The order of writes is what makes
this safe: a shard is written under a temporary name, fsynced and renamed, and only then is it
added to the manifest (itself replaced atomically). After a crash the manifest names only whole
shards; the run resumes after the last one, and since shard boundaries depend only on the documents,
a resumed download ends with exactly the files an uninterrupted one writes. While a download
writes, it holds OUT/.lock, so a second one into the same folder stops at once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from scratchllm.data.sources import Document, Source
from scratchllm.util.disk import default_min_free, disk_free, guard_disk
from scratchllm.util.errors import UserError, one_line
from scratchllm.util.files import atomic_path, atomic_write_json, sha256_file
from scratchllm.util.locks import folder_lock
from scratchllm.util.log import REPORT, get_logger
from scratchllm.util.sizes import format_size

logger = get_logger(__name__)

MANIFEST = "manifest.json"
# How a download or tokenize stopped by the disk guard goes on.
RERUN = "rerun the same command to continue (--min-free sets the margin)"
FORMAT_VERSION = 1


def shard_name(i: int) -> str:
    """File name of shard number i."""
    return f"shard_{i:06d}.parquet"


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a `download` output folder; UserError if the folder is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a download folder (no {MANIFEST}); "
                        "make one with `scratchllm download`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    if not (isinstance(manifest, dict) and isinstance(manifest.get("shards"), list) and "source" in manifest):
        raise UserError(f"{path} is not a scratchllm download manifest")
    return manifest


def shard_damage(path: Path, entry: dict) -> str | None:
    """Why the file at `path` is not the shard its manifest entry describes (size, sha256); None if it is."""
    if not path.is_file():
        return f"is listed in {MANIFEST} but missing"
    size = path.stat().st_size
    # Manifests list both for every shard; a hand-made entry without them is taken on trust.
    if "file_bytes" in entry and size != entry["file_bytes"]:
        return f"is damaged: {size:,} bytes where {MANIFEST} says {entry['file_bytes']:,}"
    if "sha256" in entry and sha256_file(path) != entry["sha256"]:
        return f"is damaged: its sha256 differs from the one in {MANIFEST}"
    return None


def read_shard(folder: str | Path, entry: dict, columns: list[str] | None = None) -> Iterator[Document]:
    """The documents of one manifest shard entry, with source-order indices, once its size and hash match."""
    import pyarrow.parquet as pq

    path = Path(folder) / entry["file"]
    why = shard_damage(path, entry)
    if why:
        # Parquet's own checks miss much of what a flipped byte does: text would change unnoticed.
        fix = (("delete it and " if path.is_file() else "")
               + "re-run the same `scratchllm download` command, which downloads it again")
        raise UserError(f"{path} {why}; {fix}")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise UserError(f"cannot read {path}: {one_line(e)}") from e
    if pf.metadata.num_rows != entry["docs"]:
        raise UserError(f"{path} holds {pf.metadata.num_rows} documents, {MANIFEST} says {entry['docs']}")
    index = entry["first_doc"]
    for batch in pf.iter_batches(batch_size=1024, columns=columns):
        for row in batch.to_pylist():
            extra = {k: v for k, v in row.items() if k not in ("id", "text")}
            yield Document(index=index, id=row.get("id") or str(index), text=row["text"], extra=extra)
            index += 1


def iter_downloaded(folder: str | Path, start: int = 0) -> Iterator[Document]:
    """Every document of a `download` output folder from index `start` on, shard by shard, in source
    order (the shards before `start` are not read)."""
    manifest = read_manifest(folder)
    if not manifest.get("complete"):
        logger.warning(f"note: {folder} is an unfinished download ({manifest.get('docs', 0):,} documents so "
                       "far); using what is there")
    for entry in manifest["shards"]:
        if entry["last_doc"] >= start:
            docs = read_shard(folder, entry)
            yield from (d for d in docs if d.index >= start) if entry["first_doc"] < start else docs


def shard_schema(source: Source, keep_columns: list[str]):
    """The one arrow schema of all shards: `id` and `text` strings, kept columns as the source types them."""
    import pyarrow as pa

    types = source.column_types()
    # A column the source gives no type for is typed from the values of each shard.
    return pa.schema([("id", pa.string()), ("text", pa.string())]
                     + [(name, types[name]) for name in keep_columns if name in types])


def _write_shard(path: Path, docs: list[Document], keep_columns: list[str], schema) -> tuple[str, int]:
    """Write docs as parquet atomically, typed by `schema`; return (sha256, file size) of what landed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {"id": [d.id for d in docs], "text": [d.text for d in docs]}
    for name in keep_columns:
        columns[name] = [d.extra.get(name) for d in docs]
    arrays = []
    for name, column in columns.items():
        # One type in every shard: inferred shard by shard, a column that is null at first would be
        # typed null in the first shards and double later, and the folder could not be read as one table.
        typ = schema.field(name).type if name in schema.names else None
        try:
            arrays.append(pa.array(column, type=typ))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise UserError(f"--keep-columns {name}: its values cannot be stored in parquet"
                            f"{f' as {typ}' if typ is not None else ''}: {one_line(e)}") from e
    with atomic_path(path) as tmp:
        # zstd packs English text about 2.5-3x; every parquet reader (pyarrow, datasets, duckdb) knows it.
        pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), tmp, compression="zstd")
        digest, size = sha256_file(tmp), tmp.stat().st_size
    return digest, size


def download_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Hold folder/.lock while a download writes there; UserError at once if another process holds it."""
    return folder_lock(folder, "download")


def download(source: Source, target_bytes: int, out: str | Path, shard_size: int = 100 * 10**6,
             min_free: int | None = None, keep_columns: list[str] | tuple = (), progress: bool = True,
             free_space: Callable[[Path], int] = disk_free) -> dict:
    """Save documents of `source` into parquet shards in `out` until `target_bytes` of text; resumable."""
    out = Path(out)
    keep_columns = _checked_arguments(target_bytes, shard_size, keep_columns)
    seen = _manifest_bytes(out)
    manifest = _existing_manifest(out, source.spec, target_bytes, shard_size, keep_columns)
    if manifest and manifest["complete"]:
        logger.info(f"{out} already holds the complete download: {len(manifest['shards'])} shards, "
                    f"{manifest['docs']:,} documents, {format_size(manifest['bytes'])}; nothing to do",
                    extra=REPORT)
        return manifest
    min_free = default_min_free(out, filling=True) if min_free is None else min_free
    free = free_space(out)
    if free < min_free:
        raise UserError(f"only {format_size(free)} free on the disk of {out}, less than --min-free "
                        f"{format_size(min_free)}: free some space or lower --min-free; nothing was written")

    if manifest is None:
        manifest = {"format_version": FORMAT_VERSION, "source": source.spec, "target_bytes": target_bytes,
                    "shard_size": shard_size, "keep_columns": keep_columns, "complete": False,
                    "exhausted": False, "docs": 0, "bytes": 0, "stream_state": None, "shards": []}
    shards = manifest["shards"]
    if shards and manifest["bytes"] >= target_bytes:
        # The last shard reached the target but the run stopped before saying so.
        manifest["complete"] = True
        atomic_write_json(out / MANIFEST, manifest)
        logger.info(f"{out} holds the complete download: {len(shards)} shards, {manifest['docs']:,} "
                    "documents", extra=REPORT)
        return manifest
    start = shards[-1]["last_doc"] + 1 if shards else 0
    docs = source.documents(start, manifest.get("stream_state") if shards else None)
    with contextlib.closing(docs):
        # The first document comes before anything is written, so a source that cannot be read
        # (no network, bad files) leaves no trace.
        first = _first_document(source, docs, keep_columns)
        schema = shard_schema(source, keep_columns)
        out.mkdir(parents=True, exist_ok=True)
        with download_lock(out):
            _clear_for(out, manifest, seen)
            if shards:
                logger.info(f"resuming {out}: {len(shards)} shards, {manifest['docs']:,} documents, "
                            f"{format_size(manifest['bytes'])} already saved; continuing at document "
                            f"{start:,}", extra=REPORT)
            _fill(source, docs, first, manifest, out, target_bytes, shard_size, min_free, keep_columns,
                  schema, progress, free_space)
    if manifest["exhausted"] and manifest["bytes"] < target_bytes:
        logger.info(f"note: {source.spec} ended after {manifest['docs']:,} documents, "
                    f"{format_size(manifest['bytes'])}: less than the target {format_size(target_bytes)}",
                    extra=REPORT)
    logger.info(f"saved {len(shards)} shards, {manifest['docs']:,} documents, "
                f"{format_size(manifest['bytes'])} of text in {out}", extra=REPORT)
    return manifest


def _checked_arguments(target_bytes: int, shard_size: int, keep_columns) -> list[str]:
    """The extra columns to keep, each once; UserError for a target, size or column that cannot work."""
    if target_bytes <= 0:
        raise UserError("--target must be larger than 0")
    if shard_size <= 0:
        raise UserError("--shard-size must be larger than 0")
    keep_columns = list(dict.fromkeys(keep_columns))  # a column named twice is kept once
    bad = [c for c in keep_columns if c in ("id", "text") or not c]
    if bad:
        raise UserError(f"--keep-columns names extra columns; `id` and `text` are always kept (got {bad})")
    return keep_columns


def _first_document(source: Source, docs: Iterator[Document], keep_columns: list[str]) -> Document | None:
    """The stream's first document (None if it is empty), which must carry every kept column."""
    first = next(docs, None)
    missing = [c for c in keep_columns if c not in first.extra] if first is not None else []
    if first is not None and missing:
        raise UserError(f"--keep-columns {', '.join(missing)}: not in {source.spec} "
                        f"(its extra columns: {', '.join(first.extra) or 'none'})")
    return first


def _clear_for(out: Path, manifest: dict, seen: bytes | None) -> None:
    """Under the lock: write the manifest to resume and remove every file it does not list."""
    if _manifest_bytes(out) != seen:
        # Another download wrote here while this one checked the shards: what was checked is stale.
        raise UserError(f"another download changed {out} meanwhile; run the command again")
    for stale in out.glob(".*.tmp"):
        stale.unlink()  # a shard or manifest a killed run left half-written
    atomic_write_json(out / MANIFEST, manifest)
    listed = {e["file"] for e in manifest["shards"]}
    for old in out.glob("shard_*.parquet"):
        if old.name not in listed:
            # Cut off after a damaged shard, or written by a run killed before it could list it:
            # left there, a reader of the folder's parquet files would take it for part of the download.
            old.unlink()


def _manifest_bytes(out: Path) -> bytes | None:
    try:
        return (out / MANIFEST).read_bytes()
    except OSError:
        return None


def _existing_manifest(out: Path, spec: str, target_bytes: int, shard_size: int,
                       keep_columns: list[str]) -> dict | None:
    """The manifest to resume, None for a fresh folder; refuse a folder holding anything else.

    Every listed shard's size and sha256 are checked. From the first one missing or damaged on, the
    shards are dropped (in memory: the manifest is rewritten under the lock) and downloaded again.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not (out / MANIFEST).exists():
        if any(p for p in out.iterdir() if not (p.name.endswith(".tmp") or p.name == ".lock")):
            raise UserError(f"--out {out} is not empty and holds no {MANIFEST}: pick an empty or new folder")
        return None
    m = read_manifest(out)
    if m["source"] != spec or m.get("target_bytes") != target_bytes:
        raise UserError(f"{out} holds a download of {m['source']} with --target {m.get('target_bytes')} "
                        f"bytes; refusing to mix in {spec} with --target {target_bytes} bytes: "
                        "use another --out, or the same --source and --target to resume")
    # Shard boundaries follow from the size: a different one would not end as an uninterrupted run does.
    if m.get("shard_size", shard_size) != shard_size:
        raise UserError(f"{out} was downloaded with --shard-size {m['shard_size']} bytes, not {shard_size}; "
                        "use the same --shard-size to resume, or another --out")
    if list(m.get("keep_columns", [])) != keep_columns:
        raise UserError(f"{out} was downloaded with --keep-columns {','.join(m.get('keep_columns', []))!r}; "
                        "use the same columns to resume")
    cut = why = None
    for i, entry in enumerate(m["shards"]):
        why = shard_damage(out / entry["file"], entry)
        if why:
            cut = i
            break
    if cut is None:
        return m
    kept = m["shards"][:cut]
    start = kept[-1]["last_doc"] + 1 if kept else 0
    after = len(m["shards"]) - cut - 1
    also = f" and the {after} shards after it" if after else ""
    logger.info(f"note: {out / m['shards'][cut]['file']} {why}; downloading it{also} again, from document "
                f"{start:,}", extra=REPORT)
    # Shard boundaries depend only on the documents, so refilling from the cut ends with exactly the files
    # an uninterrupted run writes. The stream state saved is that of the last shard, not of the cut:
    # without it the source skips to the cut by reading from its start.
    m.update(shards=kept, docs=sum(e["docs"] for e in kept), bytes=sum(e["bytes"] for e in kept),
             complete=False, exhausted=False, stream_state=None)
    return m


def _fill(source, docs, first, manifest, out, target_bytes, shard_size, min_free, keep_columns, schema,
          progress, free_space) -> None:
    """The main loop: gather documents into shards until the target, guarding the disk before each write."""
    shards = manifest["shards"]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=target_bytes, initial=min(manifest["bytes"], target_bytes), unit="B",
                   unit_scale=True, unit_divisor=1000, desc=f"download {source.spec}", smoothing=0.1)
    buf: list[Document] = []
    buf_bytes = 0

    def flush() -> None:
        nonlocal buf, buf_bytes
        # Writing needs about the text's size at most (parquet compresses it); keep min_free untouched.
        need = buf_bytes + sum(len(d.id) for d in buf) + (1 << 16)
        saved = (f"Saved so far: {len(shards)} shards, {manifest['docs']:,} documents, "
                 f"{format_size(manifest['bytes'])}")
        guard_disk(out, need, min_free, "the next shard", saved, RERUN, free_space)
        entry = {"file": shard_name(len(shards)), "docs": len(buf), "bytes": buf_bytes,
                 "first_doc": buf[0].index, "last_doc": buf[-1].index}
        entry["sha256"], entry["file_bytes"] = _write_shard(out / entry["file"], buf, keep_columns, schema)
        shards.append(entry)
        # Only the newest shard's end is ever resumed from, so one stream state is kept, not one a shard.
        manifest["stream_state"] = source.position()
        manifest["docs"] += len(buf)
        manifest["bytes"] += buf_bytes
        atomic_write_json(out / MANIFEST, manifest)
        buf, buf_bytes = [], 0

    try:
        doc = first
        while doc is not None:
            size = len(doc.text.encode("utf-8"))
            buf.append(doc)
            buf_bytes += size
            if bar is not None:
                bar.update(size)
                bar.set_postfix(docs=f"{manifest['docs'] + len(buf):,}", refresh=False)
            if manifest["bytes"] + buf_bytes >= target_bytes:
                break
            if buf_bytes >= shard_size:
                flush()
            doc = next(docs, None)
        if doc is None:
            manifest["exhausted"] = True
        if buf:
            flush()
        manifest["complete"] = True
        atomic_write_json(out / MANIFEST, manifest)
    finally:
        if bar is not None:
            bar.close()
