"""Independent references for task scoring: EleutherAI's lm-evaluation-harness, given the exported
transformers folder (GPT-2's class, and NanoChat's for the speedruns' model) and the same items,
computes the same log-likelihoods, greedy matches and accuracy; a torchrun job with two processes
gives the result of one process."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from _eval_helpers import HELLASWAG_ROWS, fake_sdist, make_run, random_model, tokenizer, write_hellaswag

from scratchllm.eval import bigbench
from scratchllm.eval.items import render
from scratchllm.eval.score import batches
from scratchllm.eval.tasks import TaskSuite
from scratchllm.run.load import load_model
from scratchllm.runtime.distributed import Dist

pytest.importorskip("lm_eval")

# lm-eval runs in its own process (it sets up logging and registries of its own), offline.
LM_EVAL = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
folder, tasks, out = sys.argv[1:4]
names = sys.argv[4:]
r = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype=float32", tasks=names,
                            task_manager=TaskManager(include_path=tasks, include_defaults=False),
                            log_samples=True, batch_size=4, device="cpu")
json.dump({t: {"acc": r["results"][t].get("acc,none"),
               "resps": [s["resps"] for s in sorted(r["samples"][t], key=lambda s: s["doc_id"])]}
           for t in names}, open(out, "w"))
"""

MC_TASK = """task: fixture_hellaswag
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{ctx}}}}"
doc_to_choice: "{{{{endings}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""

# Prompts as our CORE tasks render them (few-shot, <|endoftext|> first), one answer a line.
LL_TASK = """task: fixture_core
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""


# The speedruns' model as the modern presets define it (exported as NanoChatForCausalLM), soft-capped.
MODERN = dict(pos="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, embed_norm=True, bias=False,
              tie_embeddings=False, logit_softcap=15.0)


def _setup(root, arch: str) -> dict:
    """A run with a sharp random model of arch (gpt2 or modern) and its tokenizer, exported to
    transformers; HellaSwag-format items; a bigbench cache filled from the fake sdist."""
    tok = tokenizer()
    model = random_model(tok.vocab_size, block_size=96, **(MODERN if arch == "modern" else {}))
    if arch == "modern":  # the embedding is normalised, so the head is what makes the predictions sharp
        with torch.no_grad():
            model.lm_head.weight.normal_(0, 0.5)
    run = make_run(root / "run", model, tok)
    subprocess.run([sys.executable, "-m", "scratchllm", "export", "--run", str(run), "--format", "hf",
                    "--out", str(root / "hf"), "--quiet"], check=True, capture_output=True, timeout=300)
    cache = root / "cache"  # holding the CORE task folders, so no sdist is needed to read them
    tarball = fake_sdist(root / "sdist.tar.gz")
    bigbench.extract(list(bigbench.CORE_TASKS), tarball, cache / bigbench.CACHE_FOLDER)
    return {"root": root, "run": run, "hf": root / "hf", "cache": cache, "arch": arch,
            "hellaswag": write_hellaswag(root / "hellaswag_val.jsonl")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The GPT-2 run and its export (see _setup)."""
    return _setup(tmp_path_factory.mktemp("ref"), "gpt2")


@pytest.fixture(scope="module")
def modern_setup(tmp_path_factory):
    """The modern presets' model, its run and its export (see _setup)."""
    return _setup(tmp_path_factory.mktemp("ref_modern"), "modern")


@pytest.fixture(params=["gpt2", "modern"])
def each_setup(request):
    """Each architecture's run and export in turn."""
    return request.getfixturevalue("setup" if request.param == "gpt2" else "modern_setup")


def _lm_eval(setup, names, cli_env):
    out = setup["root"] / f"lm_eval_{'_'.join(names)}.json"
    args = [str(setup["hf"]), str(setup["root"] / "tasks"), str(out), *names]
    r = subprocess.run([sys.executable, "-c", LM_EVAL, *args], env=cli_env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_lm_evaluation_harness_gives_the_same_log_likelihoods(each_setup, cli_env, monkeypatch):
    setup = each_setup
    classes = {"gpt2": ["GPT2LMHeadModel"], "modern": ["NanoChatForCausalLM"]}
    assert json.loads((setup["hf"] / "config.json").read_text())["architectures"] == classes[setup["arch"]]
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(setup["cache"]))
    tasks = setup["root"] / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "fixture_hellaswag.yaml").write_text(MC_TASK.format(path=setup["hellaswag"]))
    model, tok, _, _ = load_model(setup["hf"], torch.device("cpu"))  # the exported folder, read back
    hs = TaskSuite(["hellaswag"], tok, model.config.block_size, model.config.vocab_size, Dist(),
                   data_file=str(setup["hellaswag"])).results(model, torch.device("cpu"))[0]
    core_suite = TaskSuite(["core"], tok, model.config.block_size, model.config.vocab_size, Dist(),
                           data_file=str(setup["hellaswag"]))
    core = core_suite.results(model, torch.device("cpu"))
    rows = []
    for p in core_suite.prepared:
        for i in p.chosen:
            prompt, answers = render(p.task, p.items, i)
            rows += [{"context": "<|endoftext|>" + prompt, "continuation": a} for a in answers]
    (setup["root"] / "core.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "fixture_core.yaml").write_text(LL_TASK.format(path=setup["root"] / "core.jsonl"))

    ref = _lm_eval(setup, ["fixture_hellaswag", "fixture_core"], cli_env)

    # Multiple choice (build-nanogpt's HellaSwag): per ending, and so the choices and accuracy.
    theirs = np.array([[c[0][0] for c in doc] for doc in ref["fixture_hellaswag"]["resps"]])
    ours = np.array(hs.logprob)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    assert np.ptp(theirs, axis=1).min() > 0.5  # the choices are far apart: a real comparison
    assert hs.summary()["acc"] == ref["fixture_hellaswag"]["acc"]
    # Every CORE task's prompts (few-shot, truncated to the context): log-likelihood and greedy match.
    theirs = [doc[0][0] for doc in ref["fixture_core"]["resps"]]
    ours_ll = [x for r in core for item in r.logprob for x in item]
    ours_greedy = [bool(x) for r in core for item in r.greedy for x in item]
    np.testing.assert_allclose(ours_ll, [t[0] for t in theirs], atol=1e-4, rtol=0)
    assert ours_greedy == [bool(t[1]) for t in theirs]
    assert any(len(p.seqs.tokens[0]) == model.config.block_size + 1 for p in core_suite.prepared)  # truncated


@pytest.mark.slow
def test_run_folder_and_its_export_score_alike(setup, run_cli, cli_env):
    common = ["eval", "--task", "hellaswag", "--data-file", setup["hellaswag"], "--json", "--quiet"]
    a = run_cli(*common, "--run", setup["run"])
    b = run_cli(*common, "--run", setup["hf"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ra, rb = json.loads(a.stdout)["results"]["hellaswag"], json.loads(b.stdout)["results"]["hellaswag"]
    assert {k: ra[k] for k in ("n", "acc", "acc_norm")} == {k: rb[k] for k in ("n", "acc", "acc_norm")}


@pytest.mark.slow
def test_torchrun_two_processes_give_the_result_of_one(setup, cli_env):
    env = {**cli_env, "SCRATCHLLM_CACHE": str(setup["cache"])}
    rows = HELLASWAG_ROWS * 30  # enough sequences for several batches, shared out over both ranks
    data = write_hellaswag(setup["root"] / "more.jsonl", rows)
    assert len(batches([20] * 4 * len(rows), 10**9)) >= 4
    args = ["eval", "--run", str(setup["run"]), "--task", "core", "--data-file", str(data), "--json",
            "--quiet"]
    one = subprocess.run([sys.executable, "-m", "scratchllm", *args], env=env, capture_output=True, text=True,
                         timeout=300)
    # "--" ends torchrun's own options: without it, its parser takes --run for an abbreviation of --run-path.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run([*torchrun, "-m", "scratchllm", "--", *args], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout.strip().splitlines()[-1])  # rank 0 alone prints

    def strip(out):
        return {name: {k: v for k, v in r.items() if k != "seconds"} for name, r in out["results"].items()}

    assert strip(a) == strip(b) and a["core_centered"] == b["core_centered"]
    assert len(two.stdout.strip().splitlines()) == 1
