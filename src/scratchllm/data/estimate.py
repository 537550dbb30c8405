"""Stage 1, step 1: how many documents make N bytes of text?

Document sizes are measured as the UTF-8 bytes of `text` (what ends up on disk and what a byte-level
tokenizer sees), never `sys.getsizeof`, which counts Python object overhead and overstates any text
that is not pure ASCII. A sample of sizes gives the mean document size m and the answer T / m.

The 95% interval comes from the delta method: the relative error of T / m is that of m, whose
variance is cv^2 / n (cv = std / mean over the sample), shrunk by the finite-population factor
(1 - n / N) when the whole source was sampled from. The count itself also varies: k documents in
source order sum to about k * m, give or take sqrt(k) * std, which adds cv^2 / k.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from scratchllm.data.sources import Source
from scratchllm.util.errors import UserError
from scratchllm.util.sizes import format_size

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


@dataclass
class Estimate:
    """What `scratchllm estimate` reports (the --json keys)."""

    source: str
    target_bytes: int
    sampled_docs: int
    mean_doc_bytes: float
    docs_needed: int
    docs_needed_ci95: list
    source_total_docs: int | None
    source_total_bytes: int | None
    docs_needed_exact: int | None  # finite sources: counted in source order; None if never reached

    def to_json(self) -> dict:
        """The --json object."""
        return asdict(self)


def docs_for_target(sizes: list[int], target_bytes: int,
                    population: int | None = None) -> tuple[int, int, int]:
    """From sampled document sizes: (documents needed for target_bytes, 95% low, 95% high)."""
    n = len(sizes)
    if n == 0:
        raise UserError("the source has no documents to sample")
    mean = sum(sizes) / n
    if mean <= 0:
        raise UserError("the sampled documents are all empty: no number of them reaches the target")
    var = sum((s - mean) ** 2 for s in sizes) / (n - 1) if n > 1 else 0.0
    cv2 = var / mean**2
    k = target_bytes / mean
    fpc = max(0.0, 1 - n / population) if population else 1.0
    rel_var = cv2 / n * fpc
    rel_var += cv2 / max(k, 1.0) * (max(0.0, 1 - k / population) if population else 1.0)
    half = Z95 * math.sqrt(rel_var) * k
    return math.ceil(k), max(1, math.floor(k - half)), math.ceil(k + half)


def estimate(source: Source, target_bytes: int, sample_docs: int = 1000, seed: int = 0,
             progress: bool = False) -> Estimate:
    """Sample document sizes (a seeded reservoir over a finite source, the first ones of a stream)."""
    if target_bytes <= 0:
        raise UserError("--target must be larger than 0")
    if sample_docs <= 0:
        raise UserError("--sample-docs must be at least 1")
    rng = random.Random(seed)
    sample: list[int] = []
    total_docs = total_bytes = 0
    exact = None
    bar = _bar(progress, source)
    docs = source.documents()
    try:
        for doc in docs:
            size = len(doc.text.encode("utf-8"))
            if not source.finite:
                # A stream has no end to reach: its first documents are the sample.
                sample.append(size)
                if len(sample) >= sample_docs:
                    break
            elif total_docs < sample_docs:
                sample.append(size)
            else:
                # Reservoir sampling (Algorithm R): every document is kept with probability n / seen.
                j = rng.randrange(total_docs + 1)
                if j < sample_docs:
                    sample[j] = size
            total_docs += 1
            total_bytes += size
            if exact is None and total_bytes >= target_bytes:
                exact = total_docs
            if bar is not None:
                bar.update(size)
    finally:
        docs.close()
        if bar is not None:
            bar.close()
    population = total_docs if source.finite else None
    needed, low, high = docs_for_target(sample, target_bytes, population)
    return Estimate(
        source=source.spec,
        target_bytes=target_bytes,
        sampled_docs=len(sample),
        mean_doc_bytes=sum(sample) / len(sample),
        docs_needed=needed,
        docs_needed_ci95=[low, high],
        source_total_docs=total_docs if source.finite else None,
        source_total_bytes=total_bytes if source.finite else None,
        docs_needed_exact=exact if source.finite else None,
    )


def _bar(progress: bool, source: Source):
    if not progress:
        return None
    from tqdm import tqdm

    what = "reading" if source.finite else "sampling"
    return tqdm(desc=f"{what} {source.spec}", unit="B", unit_scale=True, unit_divisor=1000, leave=False)


def describe(e: Estimate) -> str:
    """The estimate as a few lines of plain text."""
    low, high = e.docs_needed_ci95
    how = "reservoir sample" if e.source_total_docs is not None else "first documents of the stream"
    lines = [
        f"source        {e.source}",
        f"target        {format_size(e.target_bytes)} ({e.target_bytes:,} bytes of UTF-8 text)",
        f"sampled       {e.sampled_docs:,} documents ({how}), mean {e.mean_doc_bytes:,.0f} bytes each",
        f"documents     {e.docs_needed:,} needed (95% interval {low:,} to {high:,})",
    ]
    if e.source_total_docs is not None and e.source_total_bytes is not None:
        lines.append(f"source size   {e.source_total_docs:,} documents, {format_size(e.source_total_bytes)} "
                     f"({e.source_total_bytes:,} bytes)")
        if e.docs_needed_exact is not None:
            lines.append(f"exact count   {e.docs_needed_exact:,} documents, taken in source order")
        else:
            lines.append(f"note          the target is larger than the whole source: all "
                         f"{e.source_total_docs:,} documents give only {format_size(e.source_total_bytes)}")
    return "\n".join(lines)
