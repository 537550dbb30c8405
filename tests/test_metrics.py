"""metrics.jsonl and samples.txt: a resume drops exactly the entries the replayed steps write again."""

import json

from scratchllm.eval.loss import bits_per_byte
from scratchllm.train.metrics import MetricsLog, sample_entry, truncate_samples


def test_bits_per_byte():
    # ln(2) nats per token at 2 bytes per token is half a bit per byte
    assert abs(bits_per_byte(0.6931471805599453, 10, 20) - 0.5) < 1e-12


def test_truncate_after_keeps_earlier_lines_and_scheduled_evaluations(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for row in [{"step": 0, "val_loss": 5.0}, {"step": 5, "loss": 4.0}, {"step": 5, "val_loss": 4.1},
                {"step": 8, "loss": 3.0}, {"step": 8, "val_loss": 3.5}, {"step": 9, "loss": 2.9}]:
        log.log(**row)
    MetricsLog(tmp_path / "metrics.jsonl").truncate_after(8, scheduled_eval=lambda s: s % 5 == 0)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 0, "val_loss": 5.0}, {"step": 5, "loss": 4.0}, {"step": 5, "val_loss": 4.1},
                    {"step": 8, "loss": 3.0}]  # the off-schedule evaluation at 8 and step 9 are gone


def test_truncate_samples_matches_the_metrics(tmp_path):
    path = tmp_path / "samples.txt"
    text = "".join(sample_entry(s, 5.0 - s / 10, f"text at {s}\n--- not a header ---") for s in (0, 5, 8, 10))
    path.write_text(text)
    truncate_samples(path, 8, scheduled_eval=lambda s: s % 5 == 0)
    assert path.read_text() == "".join(sample_entry(s, 5.0 - s / 10, f"text at {s}\n--- not a header ---")
                                       for s in (0, 5))
    truncate_samples(path, -1)  # a fresh start after a run that died before its first checkpoint
    assert path.read_text() == ""
    truncate_samples(tmp_path / "none.txt", 3)  # nothing to do
    assert not (tmp_path / "none.txt").exists()


def test_task_lines_are_drawn_beside_the_loss_with_published_figures(tmp_path):
    import matplotlib.image

    from scratchllm.train.metrics import task_series

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (0, 10, 20):
        log.log(step=step, loss=5.0 - step / 10)
        log.log(step=step, task="hellaswag", n=100, acc=0.25 + step / 1000, acc_norm=0.26 + step / 1000,
                random_baseline=0.25)
        log.log(step=step, task="bigbench:operators", n=210, acc=step / 1000, random_baseline=0.0)
        log.log(step=step, task="core", core_centered=step / 2000, tasks=6)
    series = task_series(log.rows)
    hs, ops = series["hellaswag"], series["bigbench:operators"]
    assert hs["metric"] == "acc_norm" and hs["points"][-1] == (20, 0.28) and hs["chance"] == 0.25
    assert ("GPT-2 124M", 0.2955) in hs["references"]
    assert ops["metric"] == "acc" and ops["references"] == []
    assert series["core"]["metric"] == "core_centered"
    log.plot(tmp_path / "loss.png")
    wide = matplotlib.image.imread(tmp_path / "loss.png").shape
    MetricsLog(tmp_path / "none.jsonl").plot(tmp_path / "plain.png")
    assert wide[1] > 1.5 * matplotlib.image.imread(tmp_path / "plain.png").shape[1]  # a second panel


def test_plot_leaves_the_process_backend_alone(tmp_path):
    """A notebook that calls train() must still show its own figures afterwards."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands for a notebook's inline backend: any backend but Agg
    try:
        log = MetricsLog(tmp_path / "metrics.jsonl")
        log.log(step=1, loss=5.0)
        log.plot(tmp_path / "loss.png")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)
