"""`estimate`: documents needed for a target size, with an honest 95% interval."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scratchllm.data.estimate import docs_for_target, estimate
from scratchllm.data.sources import open_source

KEYS = {"source", "target_bytes", "sampled_docs", "mean_doc_bytes", "docs_needed", "docs_needed_ci95",
        "source_total_docs", "source_total_bytes"}


def _true_count(sizes, target):
    """Documents taken in order until their bytes reach the target."""
    return int(np.searchsorted(np.cumsum(sizes), target) + 1)


@pytest.fixture(scope="module")
def skewed_parquet(tmp_path_factory):
    """20,000 documents with log-normal lengths, some of them non-ASCII (so chars != bytes)."""
    rng = np.random.default_rng(1234)
    lengths = np.maximum(1, rng.lognormal(mean=5.5, sigma=0.8, size=20_000)).astype(int)
    texts = [("é" if i % 3 == 0 else "e") * n for i, n in enumerate(lengths)]
    path = tmp_path_factory.mktemp("est") / "docs.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}), path)
    return path, np.array([len(t.encode("utf-8")) for t in texts])


def test_estimate_cli_on_skewed_parquet(skewed_parquet, run_cli):
    path, sizes = skewed_parquet
    target = int(sizes.sum() // 2)
    out = run_cli("estimate", "--source", f"parquet:{path}", "--target", str(target), "--json")
    assert out.returncode == 0, out.stderr
    est = json.loads(out.stdout)
    assert KEYS <= set(est)
    assert est["sampled_docs"] == 1000 and est["target_bytes"] == target
    assert est["source_total_docs"] == 20_000 and est["source_total_bytes"] == int(sizes.sum())
    true = _true_count(sizes, target)
    assert est["docs_needed_exact"] == true
    assert abs(est["docs_needed"] - true) / true < 0.05
    low, high = est["docs_needed_ci95"]
    assert low <= true <= high and low < est["docs_needed"] < high


def test_interval_covers_about_95_percent():
    # Many independent skewed populations: the interval must hold the true count about 95% of the time.
    rng = np.random.default_rng(0)
    hits, trials = 0, 300
    for _ in range(trials):
        pop = np.maximum(1, rng.lognormal(5, 1.0, size=4000)).astype(int)
        target = int(pop.sum() * rng.uniform(0.2, 0.8))
        sample = rng.choice(pop, size=200, replace=False).tolist()
        _, low, high = docs_for_target(sample, target, population=len(pop))
        hits += low <= _true_count(pop, target) <= high
    assert 0.88 <= hits / trials <= 0.99


def test_reservoir_is_seeded_and_uniform(skewed_parquet):
    path, sizes = skewed_parquet
    src = open_source(f"parquet:{path}")
    a = estimate(src, 10**6, sample_docs=500, seed=1)
    b = estimate(src, 10**6, sample_docs=500, seed=1)
    c = estimate(src, 10**6, sample_docs=500, seed=2)
    assert a == b and a.mean_doc_bytes != c.mean_doc_bytes
    # Uniform over the whole file, not the first documents: the means agree with the population's.
    for e in (a, c):
        assert abs(e.mean_doc_bytes - sizes.mean()) / sizes.mean() < 0.1


def test_shakespeare_estimate_and_target_beyond_source(run_cli):
    docs = list(open_source("shakespeare"))
    sizes = np.array([len(d.text.encode("utf-8")) for d in docs])
    out = run_cli("estimate", "--source", "shakespeare", "--target", "2MB", "--json")
    est = json.loads(out.stdout)
    assert est["sampled_docs"] == 42 and est["source_total_bytes"] == sizes.sum()
    assert est["docs_needed_exact"] == _true_count(sizes, 2_000_000)
    assert est["mean_doc_bytes"] == pytest.approx(sizes.mean())

    out = run_cli("estimate", "--source", "shakespeare", "--target", "6MB", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "larger than the whole source" in out.stdout and "42 documents" in out.stdout


@pytest.mark.parametrize("args", [["--target", "10XB"], ["--target=-5GB"], ["--sample-docs", "0"],
                                  ["--source", "nope:x"]])
def test_estimate_bad_input(run_cli, args):
    out = run_cli("estimate", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("scratchllm: error: ") and out.stderr.count("\n") == 1
