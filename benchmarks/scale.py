"""Stage 1 at scale: N GB of web-like documents through every data command, then the first training steps.

Makes (once, cached) a corpus of `--size` of documents drawn at random from the paragraphs of
Shakespeare and Python's documentation (benchmarks/corpora.py), then runs each command as a user
would, in its own process, and measures it:

    estimate         --source parquet:CORPUS --target SIZE
    download         the parquet source into 100 MB shards
    tokenizer train  a 8,192-token BPE on --tokenizer-bytes of the download
    tokenize         the download with GPT-2's tokenizer, into 100M-token shards
    train            open the token folder and take 20 steps of the tiny preset

Printed per stage: seconds, MB/s of text, peak resident memory of the whole process tree (the
command and its workers, sampled every 0.1 s) and disk written; for `train`, the seconds to its first
step. Then bare tiktoken, `encode_to_numpy` on texts already in memory in as many processes as
tokenize has workers (the call tokenize's workers make, and tiktoken's fastest here), on a sample of
the same documents in the same run, and tokenize's rate as a ratio of it. The last line is one JSON
object.

    python benchmarks/scale.py [--size 1GB] [--work DIR] [--workers N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from corpora import web_like_corpus

from scratchllm.util.fetch import cache_dir
from scratchllm.util.sizes import format_size, parse_size

# Training only shows that the folder opens fast and trains: a small batch keeps GPT-2's 50,257-row
# head from filling memory on a CPU.
TRAIN_SETS = ("train.log_every=1", "train.eval_every=1000", "train.eval_batches=2", "train.sample_tokens=0",
              "train.batch_size=4")


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (0 for those that ended meanwhile)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def folder_bytes(path: Path) -> int:
    """Bytes of every file under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run_stage(name: str, args: list[str], text_bytes: int | None, out: Path | None = None,
              first_line: tuple[Path, str] | None = None) -> dict:
    """Run `scratchllm ARGS`, sampling the memory of its process tree; its seconds, MB/s and peak."""
    cmd = [sys.executable, "-m", "scratchllm", *args]
    print(f"== {name}: scratchllm {' '.join(args)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak, first = psutil.Process(proc.pid), 0, None
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        if first_line is not None and first is None and first_line[0].is_file():
            if first_line[1] in first_line[0].read_text():
                first = time.perf_counter() - start
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    reader.join()
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}):\n{''.join(output[-20:])}")
    row = {"seconds": round(seconds, 1), "peak_mib": round(peak / 2**20),
           "disk_written": folder_bytes(out) if out else 0}
    if text_bytes is not None:
        row["mb_s"] = round(text_bytes / seconds / 1e6, 2)
    if first is not None:
        row["first_step_s"] = round(first, 1)
    rate = f"{row['mb_s']:7.2f} MB/s of text" if "mb_s" in row else ""
    first_step = f", first step after {first:.1f} s" if first else ""
    print(f"   {seconds:7.1f} s  {rate}  peak {row['peak_mib']:,} MiB  "
          f"wrote {format_size(row['disk_written'])}{first_step}", flush=True)
    return row


def _bare_worker(args):
    """Encode the texts of (files, rows) with tiktoken alone; (bytes, seconds of the encoding only)."""
    files, start, stop, barrier = args
    import pyarrow.parquet as pq

    from scratchllm.tokenizer import Tokenizer

    texts, seen = [], 0
    for f in files:
        column = pq.read_table(f, columns=["text"]).column("text").to_pylist()
        texts += column[max(0, start - seen) : max(0, stop - seen)]
        seen += len(column)
        if seen >= stop:
            break
    enc = Tokenizer.pretrained("gpt2").to_tiktoken()
    barrier.wait()  # all processes encode at once, as tokenize's workers do
    t = time.perf_counter()
    for text in texts:  # tiktoken's fastest call here (no Python list of ids; the batch call is slower)
        enc.encode_to_numpy(text, disallowed_special=())
    return sum(len(x.encode()) for x in texts), time.perf_counter() - t


def bare_tiktoken(files: list[Path], n_docs: int, processes: int) -> float:
    """MB/s of bare tiktoken over the first `n_docs` documents, split over `processes` processes."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(processes)
    per = -(-n_docs // processes)
    jobs = [(files, i * per, min(n_docs, (i + 1) * per), barrier) for i in range(processes)]
    with ctx.Pool(processes) as pool:
        results = pool.map(_bare_worker, jobs)
    n_bytes, seconds = sum(b for b, _ in results), max(s for _, s in results)
    print(f"== bare tiktoken, {processes} processes: {n_bytes / 1e6:.0f} MB in {seconds:.1f} s = "
          f"{n_bytes / seconds / 1e6:.2f} MB/s", flush=True)
    return n_bytes / seconds / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1GB", help="text to make and process (default 1GB)")
    p.add_argument("--work", default=None, help="working folder (default: the cache folder's scale/)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="tokenize workers")
    p.add_argument("--tokenizer-bytes", default="100MB", help="text the BPE is learned from")
    p.add_argument("--bare-bytes", default="300MB", help="text bare tiktoken encodes for the ratio")
    p.add_argument("--keep", action="store_true", help="keep the download, tokens and run afterwards")
    args = p.parse_args()
    size = parse_size(args.size)
    work = Path(args.work) if args.work else cache_dir() / "scale"
    corpus = work / f"corpus-{args.size}"
    t = time.perf_counter()
    files = web_like_corpus(corpus, size, cache_dir() / "speedrun" / "python-docs")
    print(f"corpus: {len(files)} parquet files, {format_size(folder_bytes(corpus))} on disk "
          f"({time.perf_counter() - t:.0f} s to make or find)", flush=True)
    raw, tok, tokens, run = (work / n for n in ("raw", "tok", "tokens", "run"))
    for path in (raw, tok, tokens, run):
        shutil.rmtree(path, ignore_errors=True)
    spec = f"parquet:{corpus}/*.parquet"
    stages = {"estimate": run_stage("estimate", ["estimate", "--source", spec, "--target", args.size,
                                                 "--json"], size)}
    stages["download"] = run_stage("download", ["download", "--source", spec, "--target", args.size, "--out",
                                                str(raw), "--quiet"], size, raw)
    manifest = json.loads((raw / "manifest.json").read_text())
    text = manifest["bytes"]
    stages["tokenizer_train"] = run_stage(
        "tokenizer train", ["tokenizer", "train", "--data", str(raw), "--vocab-size", "8192", "--max-bytes",
                            args.tokenizer_bytes, "--out", str(tok), "--quiet"],
        parse_size(args.tokenizer_bytes), tok)
    stages["tokenize"] = run_stage(
        "tokenize", ["tokenize", "--data", str(raw), "--tokenizer", "gpt2", "--out", str(tokens),
                     "--val-docs", "1000", "--workers", str(args.workers), "--quiet"], text, tokens)
    meta = json.loads((tokens / "meta.json").read_text())
    n_tokens = meta["train"]["tokens"] + meta["val"]["tokens"]
    stages["train"] = run_stage(
        "train", ["train", "--data", str(tokens), "--out", str(run), "--preset", "tiny", "--max-steps", "20",
                  "--quiet", *sum((["--set", kv] for kv in TRAIN_SETS), [])], None, None,
        first_line=(run / "metrics.jsonl", '"loss"'))
    mean_doc = text / manifest["docs"]
    bare = bare_tiktoken(files, int(parse_size(args.bare_bytes) / mean_doc), args.workers)
    ratio = stages["tokenize"]["mb_s"] / bare
    print(f"tokenize: {n_tokens:,} tokens in {len(meta['shards'])} shards, {text / n_tokens:.2f} bytes a "
          f"token; "
          f"{stages['tokenize']['mb_s']:.2f} MB/s = {ratio:.3f} of bare tiktoken's {bare:.2f} MB/s "
          f"with {args.workers} processes (goal >= 0.85)")
    if not args.keep:
        for path in (raw, tok, tokens, run):
            shutil.rmtree(path, ignore_errors=True)
    print(json.dumps({"size": args.size, "text_bytes": text, "tokens": n_tokens, "workers": args.workers,
                      "bare_tiktoken_mb_s": round(bare, 2), "tokenize_vs_bare": round(ratio, 3),
                      "stages": stages}))


if __name__ == "__main__":
    main()
