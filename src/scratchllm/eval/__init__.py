"""Measuring a model: held-out loss (loss.py), HellaSwag (hellaswag.py), BIG-bench tasks (bigbench.py)
and the centred CORE-style score over them (tasks.py), scored in batches shared over ranks (score.py).

Training measures with `loss.evaluate` and a `tasks.TaskSuite`; `scratchllm eval` calls `runs.evaluate_run`.
Nothing heavy is imported here, so the plots can read `references` cheaply.
"""
