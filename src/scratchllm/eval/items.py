"""What a task is made of, and how one of its items becomes token sequences for the model to score.

An `Item` is a context and its candidate answers (one, the target, for a generative task). A prompt
is the item's context after `shots` solved examples of the same task, each "context delimiter
answer", separated by blank lines (CORE's layout as nanochat writes it). The model then scores
each answer after the prompt: its summed log-probability, its length in tokens, and whether greedy
decoding would produce it token for token.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from scratchllm.util.errors import UserError


@dataclass(frozen=True)
class Item:
    """One question: the text before the answer, the candidate answers, the index of the right one."""

    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class Task:
    """How a task is posed and scored.

    kind "mc": the choice with the lowest loss wins (`acc`: summed over its tokens, `acc_norm`: mean
    per token). kind "lm" (generative): right when greedy decoding gives the target exactly. kind
    "auto": whichever the items are (one answer each: "lm"), the baseline then that of their choices.
    """

    name: str
    kind: str
    shots: int
    delimiter: str
    random_baseline: float
    bos: bool  # start each prompt with <|endoftext|>, as CORE runs do (a model's documents start so)
    load: Callable[[str | None], list[Item]]  # data file (None: the cached data) -> the task's items


def settle(task: Task, items: list[Item]) -> Task:
    """The task with an "auto" kind decided by its items: several choices each make it multiple choice."""
    if task.kind != "auto":
        return task
    if all(len(it.choices) > 1 for it in items):
        chance = sum(1 / len(it.choices) for it in items) / len(items)
        return replace(task, kind="mc", random_baseline=chance)
    return replace(task, kind="lm", random_baseline=0.0)


def fewshot_indices(n: int, i: int, shots: int) -> list[int]:
    """`shots` distinct items other than item i, the same on every run (drawn as nanochat does)."""
    shots = min(shots, n - 1)
    if shots <= 0:
        return []
    rng = random.Random(1234 + i)
    return [j + (j >= i) for j in rng.sample(range(n - 1), shots)]


def render(task: Task, items: list[Item], i: int) -> tuple[str, list[str]]:
    """The prompt of item i (few-shot examples, then its context) and each answer as it follows it."""
    def context(item: Item) -> str:
        # Generative tasks' contexts are trimmed: some datasets keep stray spaces at their ends.
        return item.context.strip() if task.kind == "lm" else item.context

    parts = [context(ex) + task.delimiter + ex.choices[ex.gold]
             for ex in (items[j] for j in fewshot_indices(len(items), i, task.shots))]
    prompt = "\n\n".join([*parts, context(items[i])])
    answers = [task.delimiter + c for c in items[i].choices]
    # White space at the end of the prompt belongs to the answer: byte-level BPEs join a space to
    # the word after it, so "Answer:" + " C" tokenizes as the model saw such text in training.
    kept = prompt.rstrip()
    return kept, [prompt[len(kept):] + a for a in answers]


@dataclass
class Sequences:
    """The token sequences of a task's items: one per answer, the answer being its last `n_answer` tokens."""

    tokens: list[np.ndarray]  # int32: 4 bytes a token, as 10-shot prompts of 10,000 items add up
    n_answer: list[int]
    item: list[int]  # which of the scored items each sequence belongs to


def tokenize(task: Task, items: list[Item], chosen: list[int], tokenizer, block_size: int,
             vocab_size: int, chunk: int = 512) -> Sequences:
    """Sequences for the items `chosen` (indices into items; few-shot examples come from all of them).

    The model reads all but the last token of a sequence, so a sequence may be one token longer
    than its context; a longer prompt loses its oldest tokens. An answer longer than the context
    cannot be scored and is refused. Items are encoded `chunk` at a time, to bound the memory.
    """
    eot = [tokenizer.eot_id] if task.bos else []
    out = Sequences([], [], [])
    for start in range(0, len(chosen), chunk):
        rendered = [render(task, items, i) for i in chosen[start:start + chunk]]
        prompt_ids = tokenizer.encode_batch([prompt for prompt, _ in rendered])
        answer_ids = iter(tokenizer.encode_batch([a for _, answers in rendered for a in answers]))
        for k, (ids, (_, answers)) in enumerate(zip(prompt_ids, rendered, strict=True), start):
            # Nothing to predict the first answer token from without a context: start as a document does.
            context = (eot + ids)[-block_size:] or [tokenizer.eot_id]
            for _ in answers:
                answer = next(answer_ids)
                if not answer or len(answer) > block_size:
                    raise UserError(f"{task.name} item {chosen[k]}: an answer of {len(answer)} tokens cannot "
                                    f"be scored with a context of {block_size} tokens")
                out.tokens.append(np.array((context + answer)[-(block_size + 1):], dtype=np.int32))
                out.n_answer.append(len(answer))
                out.item.append(k)
    top = max(int(t.max()) for t in out.tokens)
    if top >= vocab_size:
        raise UserError(f"{task.name}: the tokenizer gives ids up to {top:,} but the model has "
                        f"{vocab_size:,} embeddings; this model's vocabulary cannot encode the text")
    return out
