"""Published figures that a run's task accuracy is drawn against, in each task's headline metric
(acc_norm for multiple choice, so HellaSwag's is the per-token-normalised accuracy)."""

REFERENCES = {
    # build-nanogpt's and llm.c's method: GPT-2 124M measured there; GPT-3 Small from the GPT-3 paper.
    "hellaswag": [("GPT-2 124M", 0.2955), ("GPT-3 124M", 0.337)],
    # nanochat's CORE run of OpenAI's GPT-2 124M (dev/estimate_gpt3_core.ipynb).
    "hellaswag_zeroshot": [("GPT-2 124M", 0.309)],
    "hellaswag_10shot": [("GPT-2 124M", 0.308)],
}
