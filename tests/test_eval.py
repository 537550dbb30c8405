"""Evaluation on tasks: answers are scored as the model's own per-token log-probabilities say, items are
posed as build-nanogpt and CORE pose them, a model that cannot know scores at chance, bad input ends
in one line."""

import json
import logging
import random
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _eval_helpers import (
    BIGBENCH,
    HELLASWAG_ROWS,
    LANGUAGES,
    TEXT,
    fake_sdist,
    make_run,
    random_model,
    tokenizer,
    write_hellaswag,
)

from scratchllm import cli
from scratchllm.eval import bigbench, hellaswag
from scratchllm.eval.items import Item, Task, fewshot_indices, render, tokenize
from scratchllm.eval.score import batches, score
from scratchllm.eval.tasks import TaskSuite, evaluate_tasks, get_task, task_rows
from scratchllm.runtime.distributed import Dist
from scratchllm.util import fetch
from scratchllm.util.errors import UserError
from scratchllm.util.files import sha256_file


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return random_model(tok.vocab_size)


@pytest.fixture
def hs_file(tmp_path):
    return write_hellaswag(tmp_path / "hellaswag_val.jsonl")


@pytest.fixture
def bb_cache(tmp_path, monkeypatch):
    """An empty cache whose download of the bigbench sdist gives a fake one (its hash pinned for the test)."""
    tarball = fake_sdist(tmp_path / "fake.tar.gz")
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bigbench, "SDIST_SHA256", sha256_file(tarball))
    fetched = []

    download, reachable = fetch._url_download, fetch.reachable

    def fake_download(url, dest, timeout):
        if url != bigbench.SDIST_URL:
            return download(url, dest, timeout)
        fetched.append(url)
        dest.write_bytes(tarball.read_bytes())

    monkeypatch.setattr(fetch, "_url_download", fake_download)
    monkeypatch.setattr(fetch, "reachable", lambda url, timeout: url == bigbench.SDIST_URL
                        or reachable(url, timeout))
    return fetched


def reference_scores(model, tokens, n_answer):
    """Per sequence, one at a time: summed log-probability of the answer and whether each token is argmax."""
    out = []
    with torch.no_grad():
        for seq, n in zip(tokens, n_answer, strict=True):
            seq = [int(t) for t in seq]
            logits, _ = model(torch.tensor([seq[:-1]]))
            logp = F.log_softmax(logits[0].double(), dim=-1)
            pos = range(len(seq) - n - 1, len(seq) - 1)
            out.append((sum(logp[p, seq[p + 1]].item() for p in pos),
                        all(int(logits[0, p].argmax()) == seq[p + 1] for p in pos)))
    return out


def test_scores_are_the_models_own_log_probabilities(model):
    rng = random.Random(0)
    vocab = model.config.vocab_size
    tokens = [[rng.randrange(vocab) for _ in range(rng.randrange(3, 40))] for _ in range(25)]
    tokens.append([rng.randrange(vocab) for _ in range(model.config.block_size + 1)])  # the longest it reads
    n_answer = [rng.randrange(1, len(t)) for t in tokens]
    # A small budget makes many batches of several lengths, so padding and regrouping are exercised.
    got = score(model, tokens, n_answer, torch.device("cpu"), Dist(), batch_tokens=100)
    ref = reference_scores(model, tokens, n_answer)
    np.testing.assert_allclose(got.logprob, [r[0] for r in ref], atol=1e-4, rtol=0)
    assert list(got.tokens) == n_answer and list(got.greedy) == [r[1] for r in ref]
    assert len({round(x, 3) for x in got.logprob}) > 20  # sharp, varied predictions: a real test


def test_greedy_match_is_what_greedy_generation_produces(model):
    torch.manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, 9))
    made = model.generate(prompt, 4, temperature=0)[0].tolist()
    wrong = made[:-1] + [(made[-1] + 1) % model.config.vocab_size]
    got = score(model, [made, wrong, made], [4, 4, 1], torch.device("cpu"), Dist())
    assert list(got.greedy) == [True, False, True]


def test_batches_cover_every_sequence_once_within_the_budget():
    lengths = [random.Random(i).randrange(1, 60) for i in range(200)]
    groups = batches(lengths, 256)
    assert sorted(i for g in groups for i in g) == list(range(200))
    assert all(len(g) * max(lengths[i] for i in g) <= 256 or len(g) == 1 for g in groups)


def test_hellaswag_is_tokenized_as_build_nanogpt_does(tok, hs_file):
    task = get_task("hellaswag")
    items = task.load(str(hs_file))
    seqs = tokenize(task, items, [0], tok, 128, tok.vocab_size)
    row = HELLASWAG_ROWS[0]
    # The context's tokens, then " " + ending; no <|endoftext|> in front; one sequence per ending.
    expected = [tok.encode(row["ctx"]) + tok.encode(" " + e) for e in row["endings"]]
    assert [t.tolist() for t in seqs.tokens] == expected
    assert seqs.n_answer == [len(tok.encode(" " + e)) for e in row["endings"]]


def test_core_renders_hellaswag_as_lm_evaluation_harness_does(hs_file):
    items = hellaswag.core_items(str(hs_file))
    assert items[0].context == "Roof shingle removal: A man is sitting on a roof. He"
    assert items[2].context == "Making a sandwich: How to make a sandwich. Lay out the bread."
    # A tag at the start leaves its space, exactly as the harness's cleaning does.
    assert items[2].choices[0] == " Spread butter on one side of each slice."
    assert items[2].choices[2] == " Sing to the bread loudly."


def test_fewshot_prompts_are_laid_out_as_core_does():
    items = [Item(f"q{i} ", (f"a{i}",), 0) for i in range(5)]
    task = Task("t", "lm", 2, " ", 0.0, True, None)
    shots = fewshot_indices(5, 3, 2)
    assert 3 not in shots and len(set(shots)) == 2 and shots == fewshot_indices(5, 3, 2)
    prompt, answers = render(task, items, 3)
    assert prompt == f"q{shots[0]} a{shots[0]}\n\nq{shots[1]} a{shots[1]}\n\nq3" and answers == [" a3"]
    # Trailing white space moves to the answer, where a BPE would put it.
    mc = Task("m", "mc", 0, " ", 0.5, False, None)
    assert render(mc, [Item("Answer: ", ("A", "B"), 1)], 0) == ("Answer:", ["  A", "  B"])


def test_a_model_that_cannot_know_scores_at_chance(model, tok):
    # Random words, a random right answer: no model can do better than 1 in 4 on average.
    rng = random.Random(0)
    words = "roof man lady bread guitar plates runners start sink song boy".split()
    items = [Item(" ".join(rng.choices(words, k=6)), tuple(" ".join(rng.choices(words, k=rng.randrange(1, 6)))
                                                          for _ in range(4)), rng.randrange(4))
             for _ in range(800)]
    task = Task("noise", "mc", 0, " ", 0.25, False, lambda data_file: items)
    r = evaluate_tasks(model, tok, [task], torch.device("cpu"), Dist(), dtype="float32")["results"]["noise"]
    sigma = (0.25 * 0.75 / 800) ** 0.5
    assert abs(r["acc"] - 0.25) < 4 * sigma and abs(r["acc_norm"] - 0.25) < 4 * sigma, r


def test_evaluate_tasks_entry_point(model, tok, hs_file):
    out = evaluate_tasks(model, tok, ["hellaswag"], torch.device("cpu"), Dist(), data_file=str(hs_file),
                         dtype="float32")
    r = out["results"]["hellaswag"]
    assert r["n"] == len(HELLASWAG_ROWS) and r["random_baseline"] == 0.25
    # acc and acc_norm recomputed from the model's own log-probabilities, item by item
    seqs = tokenize(get_task("hellaswag"), hellaswag.items(str(hs_file)), list(range(6)), tok, 128,
                    tok.vocab_size)
    ref = np.array([x[0] for x in reference_scores(model, seqs.tokens, seqs.n_answer)]).reshape(6, 4)
    n = np.array(seqs.n_answer).reshape(6, 4)
    gold = np.array([row["label"] for row in HELLASWAG_ROWS])
    assert r["acc"] == pytest.approx(np.mean(ref.argmax(1) == gold))
    assert r["acc_norm"] == pytest.approx(np.mean((ref / n).argmax(1) == gold))
    limited = evaluate_tasks(model, tok, ["hellaswag"], torch.device("cpu"), Dist(), limit=4,
                             data_file=str(hs_file), dtype="float32")
    assert limited["results"]["hellaswag"]["n"] == 4
    rows = task_rows(7, out)
    assert rows == [{"step": 7, "task": "hellaswag", "n": 6, "acc": r["acc"], "acc_norm": r["acc_norm"],
                     "random_baseline": 0.25}]


def test_bigbench_tasks_come_out_of_the_sdist_once_and_as_core_poses_them(bb_cache, tok, monkeypatch):
    ops = get_task("bigbench:operators").load(None)
    assert bb_cache == [bigbench.SDIST_URL]
    assert len(ops) == 5  # the exact repeat is dropped
    head = "Given the definition of the op operator, compute the result.\n"
    assert ops[0] == Item(head + "op i is i.\nop 17 = ", ("17",), 0)
    prompt, answers = render(get_task("bigbench:operators"), ops, 0)
    # 4 shots (all the other items), separated by blank lines, then the item trimmed; the answer after " "
    assert prompt.endswith("\n\n" + head + "op i is i.\nop 17 =") and answers == [" 17"]
    assert prompt.count("\n\n") == 4 and prompt.count(head) == 5
    # Cached: the next read of the task does not open the sdist.
    with monkeypatch.context() as m:
        m.setattr(bigbench.tarfile, "open", lambda *a, **k: pytest.fail("read the sdist again"))
        assert get_task("bigbench:operators").load(None) == ops and bb_cache == [bigbench.SDIST_URL]


def test_core_bigbench_tasks(bb_cache, tok, monkeypatch):
    cs = get_task("bigbench:cs_algorithms").load(None)
    # Both subtasks, as generative tasks whose target is the best-scored choice.
    assert [i.choices for i in cs] == [("0",), ("3",), ("Valid",), ("Invalid",)]
    assert cs[0].context.startswith("Given two strings, determine the length of the longest common "
                                    "subsequence.\n\nStrings: SZPHKVR ECOUO\nLength of longest")
    wiki = get_task("bigbench:qa_wikidata").load(None)
    assert [i.choices[0] for i in wiki] == ["Australia", "Motown", "Augusta", "piano"]
    lang = get_task("bigbench:language_identification")
    assert (lang.kind, lang.random_baseline) == ("mc", 0.25)
    items = lang.load(None)
    for item, ex in zip(items, BIGBENCH["language_identification/task.json"]["examples"], strict=True):
        right = max(ex["target_scores"], key=ex["target_scores"].get)
        assert item.choices == ("A", "B", "C", "D") and item.context.endswith("\nAnswer: ")
        listed = [line[3:] for line in item.context.splitlines() if line[:3] in ("A. ", "B. ", "C. ", "D. ")]
        assert len(set(listed)) == 4 and set(listed) <= set(LANGUAGES) and listed[item.gold] == right
    assert items[0].context.startswith("Given a sentence, select the correct language among the choices\n"
                                       "Sentence: Ahoj, jak se máš?\nA. ")
    # Cached now: no second pass over the sdist.
    with monkeypatch.context() as m:
        m.setattr(bigbench.tarfile, "open", lambda *a, **k: pytest.fail("read the sdist again"))
        assert get_task("bigbench:qa_wikidata").load(None) == wiki
    with pytest.raises(UserError, match="did you mean operators"):
        get_task("bigbench:operatorz").load(None)


def test_other_bigbench_tasks_are_multiple_choice_when_scored_so(bb_cache, model, tok):
    out = evaluate_tasks(model, tok, ["bigbench:simple_mc"], torch.device("cpu"), Dist(), dtype="float32")
    r = out["results"]["bigbench:simple_mc"]
    assert r["n"] == 3 and "acc_norm" in r
    assert r["random_baseline"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)  # the mean of 1 / choices


def test_core_score_is_the_mean_of_centred_accuracies(bb_cache, model, tok, hs_file):
    out = evaluate_tasks(model, tok, ["core"], torch.device("cpu"), Dist(), data_file=str(hs_file),
                         dtype="float32")
    assert out["tasks"] == ["hellaswag_zeroshot", "bigbench:qa_wikidata", "hellaswag_10shot",
                            "bigbench:language_identification", "bigbench:dyck_languages",
                            "bigbench:cs_algorithms", "bigbench:operators", "bigbench:repeat_copy_logic"]
    res = out["results"]
    for r in res.values():
        acc = r["acc_norm"] if "acc_norm" in r else r["acc"]
        assert r["centered"] == pytest.approx((acc - r["random_baseline"]) / (1 - r["random_baseline"]))
    assert out["core_centered"] == pytest.approx(np.mean([r["centered"] for r in res.values()]))
    assert res["bigbench:operators"]["n"] == 5 and "acc_norm" not in res["bigbench:operators"]
    assert out["left_out"] == {}
    core_row = {"step": 3, "task": "core", "core_centered": out["core_centered"], "tasks": 8}
    assert task_rows(3, out)[-1] == core_row


def test_core_without_hellaswag_data_scores_the_rest(bb_cache, model, tok, monkeypatch, caplog):
    monkeypatch.setattr(hellaswag, "URL", "http://127.0.0.1:9/hellaswag_val.jsonl")  # nothing listens
    suite = TaskSuite(["core"], tok, 128, tok.vocab_size, Dist())
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    out = suite.evaluate(model, torch.device("cpu"))
    assert set(out["left_out"]) == {"hellaswag_zeroshot", "hellaswag_10shot"} and len(out["tasks"]) == 6
    assert "--data-file" in notes[0]


def test_hellaswag_offline_fails_fast_naming_both_ways(tmp_path, monkeypatch, capsys, model, tok):
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hellaswag, "URL", "http://127.0.0.1:9/hellaswag_val.jsonl")
    run = make_run(tmp_path / "run", model, tok)
    t0 = time.perf_counter()
    assert cli.main(["eval", "--run", str(run), "--task", "hellaswag"]) == 2
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and hellaswag.URL in err[0] and "--data-file" in err[0], err


@pytest.mark.parametrize("line, words", [
    ('{"ctx": "a", "endings": ["b", "c"], "label": 5}', "line 2: 'label'"),
    ('{"ctx": "a", "endings": "bc", "label": 0}', "line 2: 'endings'"),
    ('not json', "line 2: not JSON"),
])
def test_a_malformed_item_is_one_line(tmp_path, model, tok, capsys, line, words):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(HELLASWAG_ROWS[0]) + "\n" + line + "\n")
    run = make_run(tmp_path / "run", model, tok)
    assert cli.main(["eval", "--run", str(run), "--task", "hellaswag", "--data-file", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_an_unknown_task_is_one_line(tmp_path, model, tok, capsys):
    run = make_run(tmp_path / "run", model, tok)
    assert cli.main(["eval", "--run", str(run), "--task", "hellaswagg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task 'hellaswagg'" in err[0] and "bigbench:NAME" in err[0], err


def test_a_vocabulary_that_cannot_encode_the_text_is_one_line(tmp_path, tok, capsys, hs_file):
    small = random_model(200)  # fewer embeddings than the tokenizer has ids
    run = make_run(tmp_path / "run", small, tok)
    assert cli.main(["eval", "--run", str(run), "--task", "hellaswag", "--data-file", str(hs_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot encode" in err[0] and "200 embeddings" in err[0], err


def test_cli_json_for_a_task(tmp_path, model, tok, hs_file, capsys):
    run = make_run(tmp_path / "run", model, tok)
    assert cli.main(["eval", "--run", str(run), "--task", "hellaswag", "--data-file", str(hs_file), "--json",
                     "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"] == str(run) and out["task"] == "hellaswag" and out["dtype"] == "float32"
    direct = evaluate_tasks(model, tok, ["hellaswag"], torch.device("cpu"), Dist(), data_file=str(hs_file),
                            dtype="float32")
    for key in ("n", "acc", "acc_norm", "random_baseline"):
        assert out["results"]["hellaswag"][key] == direct["results"]["hellaswag"][key]
    assert cli.main(["eval", "--run", str(run), "--task", "hellaswag", "--data-file", str(hs_file)]) == 0
    table = capsys.readouterr().out
    assert "hellaswag" in table and "items/s" in table


def test_core_with_a_data_file_that_is_not_there_is_an_error(bb_cache, tok, tmp_path):
    with pytest.raises(UserError, match="no such file"):  # given, so meant to be read: not left out quietly
        TaskSuite(["core"], tok, 128, tok.vocab_size, Dist(), data_file=str(tmp_path / "nope.jsonl"))


def _task_run_cfg(**extra):
    from scratchllm.config import build_config

    sets = {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 128,
            "train.batch_size": 2, "train.dtype": "float32", "train.eval_batches": 1,
            "train.sample_tokens": 0,
            "train.eval_every": 2, "train.ckpt_every": 1, "train.log_every": 1, "train.warmup_steps": 1,
            "train.eval_tasks": "bigbench:operators,bigbench:simple_mc", "train.task_every": 2,
            "train.max_steps": 4, **extra}
    return build_config("tiny", sets=[f"{k}={v}" for k, v in sets.items()])


def test_training_scores_the_tasks_on_schedule_and_a_resume_logs_them_once(bb_cache, tok, tmp_path):
    from scratchllm.data.sources import Document
    from scratchllm.data.tokenize import tokenize_to_dir
    from scratchllm.run.load import load_run
    from scratchllm.train import train

    docs = [Document(i, f"d{i}", TEXT) for i in range(4)]
    data = tmp_path / "data"
    tokenize_to_dir(docs, tok, data, val_docs=1, quiet=True)
    rows = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    tasks = lambda run: [(r["step"], r["task"], r["acc"]) for r in rows(run) if "task" in r]  # noqa: E731

    train(_task_run_cfg(), data, tmp_path / "full", quiet=True)
    full = tasks(tmp_path / "full")
    assert [(s, t) for s, t, _ in full] == [(2, "bigbench:operators"), (2, "bigbench:simple_mc"),
                                            (4, "bigbench:operators"), (4, "bigbench:simple_mc")]
    assert {r["n"] for r in rows(tmp_path / "full") if r.get("task") == "bigbench:simple_mc"} == {3}
    _, model, _ = load_run(tmp_path / "full")  # the logged accuracy is the final model's
    direct = evaluate_tasks(model, tok, ["bigbench:simple_mc"], torch.device("cpu"), Dist(), dtype="float32")
    assert full[-1][2] == direct["results"]["bigbench:simple_mc"]["acc"]

    train(_task_run_cfg(**{"train.max_steps": 3}), data, tmp_path / "cut", quiet=True)  # ends off schedule
    assert [s for s, _, _ in tasks(tmp_path / "cut")] == [2, 2, 3, 3]  # the end of a run is scored too
    train(_task_run_cfg(), data, tmp_path / "cut", resume=True, quiet=True)
    assert tasks(tmp_path / "cut") == full  # the off-schedule step-3 scores are gone, step 4's are there
    assert (tmp_path / "full" / "loss.png").stat().st_size > 0


def _task_data(tok, folder):
    from scratchllm.data.sources import Document
    from scratchllm.data.tokenize import tokenize_to_dir

    tokenize_to_dir([Document(i, f"d{i}", TEXT) for i in range(4)], tok, folder, val_docs=1, quiet=True)
    return folder


def _run_rows(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tok_per_s", "seconds")} for r in rows]


def test_a_task_evaluation_that_fails_is_logged_and_loses_no_step(bb_cache, tok, tmp_path, monkeypatch,
                                                                  caplog):
    """Step 2's tasks run out of memory: step 2's checkpoint is saved before they start, the failure is
    one logged error, and training goes on to log what a run whose tasks all succeed logs, less them."""
    from scratchllm.eval.tasks import TaskSuite
    from scratchllm.train import train

    data = _task_data(tok, tmp_path / "data")
    train(_task_run_cfg(), data, tmp_path / "full", quiet=True)
    run, real, saved = tmp_path / "run", TaskSuite.evaluate, []

    def out_of_memory_at_first(self, *args, **kwargs):
        saved.append(sorted(p.name for p in (run / "ckpt").iterdir()))
        if len(saved) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TaskSuite, "evaluate", out_of_memory_at_first)
    summary = train(_task_run_cfg(), data, run, quiet=True)
    assert summary["step"] == 4 and saved[0] == ["step_1", "step_2"]  # step 2 saved before its tasks
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "step 2" in errors[0] and "OutOfMemoryError" in errors[0]
    assert _run_rows(run) == [r for r in _run_rows(tmp_path / "full") if not ("task" in r and r["step"] == 2)]


def test_a_run_killed_during_its_tasks_scores_them_when_resumed(bb_cache, tok, tmp_path, monkeypatch):
    """Killed while scoring step 2's tasks (after step 2 was saved), a run resumes from step 2, scores the
    tasks it missed first, and ends with the log of a run never stopped."""
    from scratchllm.eval.tasks import TaskSuite
    from scratchllm.train import train

    data = _task_data(tok, tmp_path / "data")
    train(_task_run_cfg(), data, tmp_path / "full", quiet=True)

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # what no `except Exception` catches, as a kill

    with monkeypatch.context() as m:
        m.setattr(TaskSuite, "evaluate", killed)
        with pytest.raises(KeyboardInterrupt):
            train(_task_run_cfg(), data, tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "ckpt" / "step_2").is_dir()
    train(_task_run_cfg(), data, tmp_path / "run", resume=True, quiet=True)
    assert _run_rows(tmp_path / "run") == _run_rows(tmp_path / "full")


def test_training_with_an_unknown_task_stops_before_the_first_step(bb_cache, tok, tmp_path, run_cli):
    from scratchllm.data.sources import Document
    from scratchllm.data.tokenize import tokenize_to_dir

    data = tmp_path / "data"
    tokenize_to_dir([Document(i, f"d{i}", TEXT) for i in range(3)], tok, data, val_docs=1, quiet=True)
    r = run_cli("train", "--data", data, "--out", tmp_path / "run", "--set", "train.eval_tasks=hellaswagg",
                "--set", "model.n_layer=1", "--set", "model.n_embd=32", "--set", "model.n_head=2")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "hellaswagg" in r.stderr
    assert not (tmp_path / "run" / "ckpt").exists()
