"""Evaluation with lm-evaluation-harness: the `jdllm` model (`jdllm.eval.harness`, needs the `eval` extra) and
the local tasks of the shipped model (`jdllm/eval/tasks/`: `jdllm_arith`, `jdllm_arith_mc`; data made by
`jdllm.eval.data`). Importing this package imports neither lm-eval nor JAX."""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
