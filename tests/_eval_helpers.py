"""Small data for the evaluation tests: HellaSwag-format items written here, a fake bigbench sdist with
the real one's layout and task settings, a tokenizer learned on that text and a run folder for a model."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

# Items in HellaSwag's format (made up here; the real validation set is not shipped with the tests).
HELLASWAG_ROWS = [
    {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."]},
    {"activity_label": "Clean and jerk",
     "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.", "ctx_b": "the lady",
     "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady", "label": 3,
     "endings": ["swings and lands in her arms.", "pulls the barbell forward.",
                 "pulls a rope attached to the barbell.", "stands and lifts the weight over her head."]},
    {"activity_label": "Making a sandwich",
     "ctx_a": "[header] How to make a sandwich [title] Lay out the bread.", "ctx_b": "",
     "ctx": "[header] How to make a sandwich [title] Lay out the bread.", "label": 0,
     "endings": ["[step] Spread butter on one side of each slice.", "The bread flies into the sky.",
                 "[title] Sing to the bread loudly.", "He throws the knife at the cat."]},
    {"activity_label": "Playing guitar", "ctx_a": "A boy holds a guitar on his lap.", "ctx_b": "he",
     "ctx": "A boy holds a guitar on his lap. he", "label": 1,
     "endings": ["eats the guitar strings one by one.", "strums the strings and sings a song.",
                 "drives the guitar to the shop.", "paints the sky with the guitar."]},
    {"activity_label": "Washing dishes", "ctx_a": "A woman stands at a kitchen sink full of plates.",
     "ctx_b": "she", "ctx": "A woman stands at a kitchen sink full of plates. she", "label": 2,
     "endings": ["throws the plates out of the window.", "climbs into the sink.",
                 "scrubs each plate with a sponge and rinses it.", "plays the plates like drums."]},
    {"activity_label": "Running a marathon", "ctx_a": "Runners line up at the start.", "ctx_b": "they",
     "ctx": "Runners line up at the start. they", "label": 0,
     "endings": ["start running when the gun fires.", "sit down and knit.", "swim across the road.",
                 "fly away on bicycles."]},
]

TEXT = " ".join(r["ctx"] + " " + " ".join(r["endings"]) for r in HELLASWAG_ROWS)


def write_hellaswag(path: Path, rows=HELLASWAG_ROWS) -> Path:
    """Write rows as a HellaSwag JSONL file; return its path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


LANGUAGES = ["Czech", "Urarina", "Kobon", "Patep", "Oksapmin", "Bora"]

# Task files with the settings of the real ones (task_prefix and prefixes as in bigbench 1.0.0).
BIGBENCH = {
    "operators/task.json": {
        "name": "operators", "task_prefix": "Given the definition of the op operator, compute the result.",
        "example_input_prefix": "\n", "example_output_prefix": " = ",
        "examples": [{"input": "op i is i.\nop 17", "target": "17"},
                     {"input": "op i is the absolute value of i.\nop -58", "target": "58"},
                     {"input": "i op j is the addition of i and j.\n58 op 21", "target": "79"},
                     {"input": "op i is i.\nop 17", "target": "17"},  # an exact repeat, dropped
                     {"input": "i op j is the product of i and j.\n5 op 7", "target": "35"},
                     {"input": "i op j is the difference of i and j.\n7 op 3", "target": "4"}]},
    "qa_wikidata/task.json": {
        "name": "qa_wikidata", "example_input_prefix": "\n", "example_output_prefix": " ",
        "examples": [{"input": "The country of Melbourne is", "target": ["Australia"]},
                     {"input": "The record label of Diana Ross is", "target": ["Motown", "RCA"]},
                     {"input": "The capital of Maine is", "target": "Augusta"},
                     {"input": "The instrument of Frédéric Chopin is", "target": ["piano"]}]},
    "cs_algorithms/task.json": {"name": "cs_algorithms", "keywords": ["algorithms"]},
    "cs_algorithms/lcs/task.json": {
        "name": "lcs", "task_prefix": "Given two strings, determine the length of the longest common "
        "subsequence.\n", "example_input_prefix": "\nStrings: ",
        "example_output_prefix": "\nLength of longest common subsequence: ",
        "examples": [{"input": "SZPHKVR ECOUO", "target_scores": {"0": 1, "1": 0, "2": 0}},
                     {"input": "ABCD ABD", "target_scores": {"1": 0, "2": 0, "3": 1}}]},
    "cs_algorithms/valid_parentheses/task.json": {
        "name": "valid_parentheses",
        "task_prefix": "Determine whether the given sequence of parentheses is properly matched.\n",
        "example_input_prefix": "\nSequence: ", "example_output_prefix": "\nValid/Invalid? ",
        "examples": [{"input": "( ) [ ]", "target_scores": {"Valid": 1, "Invalid": 0}},
                     {"input": "( ] [ )", "target_scores": {"Valid": 0, "Invalid": 1}}]},
    "language_identification/task.json": {
        "name": "language_identification",
        "task_prefix": "Given a sentence, select the correct language among the choices",
        "example_input_prefix": "\nSentence: ", "example_output_prefix": "\nLanguage: ",
        "examples": [{"input": s, "target_scores": {lang: int(lang == right) for lang in LANGUAGES}}
                     for s, right in [("Ahoj, jak se máš?", "Czech"), ("Ihtin orhor nohe kat.", "Oksapmin"),
                                      ("Áánetu muurá ámuha.", "Bora"), ("Dobrý den.", "Czech")]]},
    "dyck_languages/task.json": {
        "name": "dyck_languages", "task_prefix": "Complete the rest of the sequence, making sure that the "
        "parentheses are closed properly. \n", "example_input_prefix": "\nInput: ",
        "example_output_prefix": "\nOutput: ",
        "examples": [{"input": "( {", "target_scores": {")": 0, "}": 0, "} )": 1}},
                     {"input": "[ <", "target_scores": {"> ]": 1, "]": 0}}]},
    "repeat_copy_logic/task.json": {
        "name": "repeat_copy_logic", "task_prefix": "repeat with logic:\n",
        "examples": [{"input": "Repeat 2 times hello world", "target": "hello world hello world"},
                     {"input": "say cat twice", "target": "cat cat"}]},
    "simple_mc/task.json": {  # a task outside CORE: multiple choice, scored the same way
        "name": "simple_mc", "examples": [{"input": "Is fire hot?", "target_scores": {"yes": 1, "no": 0}},
                                          {"input": "Is ice hot?", "target_scores": {"yes": 0, "no": 1}},
                                          {"input": "Pick a colour", "target_scores": {"red": 1, "dog": 0,
                                                                                       "run": 0}}]},
}
SDIST_TOP = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def fake_sdist(path: Path) -> Path:
    """A .tar.gz laid out like bigbench-1.0.0's sdist, holding the BIGBENCH task files (and some noise)."""
    with tarfile.open(path, "w:gz") as tar:
        files = {SDIST_TOP + name: json.dumps(spec).encode() for name, spec in BIGBENCH.items()}
        files["bigbench-1.0.0/setup.py"] = b"# not a task\n"
        files[SDIST_TOP + "operators/README.md"] = b"# not a task file either\n"
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tokenizer():
    """A byte-level BPE learned on the test items' text (every byte still encodes)."""
    from scratchllm.tokenizer import train_bpe

    return train_bpe([TEXT] * 3, 360)


def random_model(vocab_size: int, seed: int = 0, spread: float = 0.5, **shape):
    """A small GPT-2-shaped model with large random weights, so its predictions are sharp (position
    mistakes in scoring then change the numbers by a lot)."""
    import torch

    from scratchllm.model.gpt import GPT, GPTConfig

    cfg = dict(vocab_size=vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**cfg, **shape}))
    with torch.no_grad():
        model.transformer.wte.weight.normal_(0, spread)
    return model.eval()


def make_run(folder: Path, model, tok=None) -> Path:
    """A run folder (config.toml, one checkpoint, the tokenizer) holding `model`, as `train` leaves one."""
    import dataclasses

    from scratchllm.config import build_config
    from scratchllm.run.checkpoint import save_checkpoint

    sets = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}"
            for k, v in dataclasses.asdict(model.config).items()]
    cfg = build_config("tiny", sets=[*sets, "train.dtype=float32"])
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save(folder / "config.toml")
    save_checkpoint(folder / "ckpt", 0, model, None, {})
    if tok is not None:
        tok.save(folder / "tokenizer")
    return folder
