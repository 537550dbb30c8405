"""`scratchllm demo` end to end on a reduced time budget: every stage leaves its output, and it learns."""

import json
import math

import pytest


@pytest.mark.slow
def test_demo_runs_all_stages_and_learns(run_cli, tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--out", out, "--minutes", "0.5", "--quiet", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("stage 1", "stage 2", "stage 3", "stage 4"):
        assert f"== {stage}" in r.stdout
    run = out / "run"
    for path in (out / "raw" / "manifest.json", out / "tokenizer" / "tokenizer.json",
                 out / "tokens" / "train.bin", out / "tokens" / "val.bin", run / "config.toml",
                 run / "loss.png", run / "samples.txt"):
        assert path.is_file(), path
        assert str(path) in r.stdout or str(path.parent) in r.stdout
    meta = json.loads((out / "tokens" / "meta.json").read_text())
    assert meta["val"]["documents"] == 3 and meta["vocab_size"] == 4096
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in rows if "val_loss" in x]
    assert val[0]["step"] == 0 and val[0]["val_loss"] == pytest.approx(math.log(4096), abs=0.3)
    assert val[-1]["val_loss"] < val[0]["val_loss"] - 1.0  # clearly learning even in 30 seconds
    final = r.stdout.split("final val loss ")[1]
    assert float(final.split()[0]) == pytest.approx(val[-1]["val_loss"], abs=1e-3)
    assert f"{val[-1]['val_bpb']:.3f} bits per byte" in final
    assert "sample:" in r.stdout and len(r.stdout.split("sample:")[1].strip()) > 20
