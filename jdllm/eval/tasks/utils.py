"""lm-eval loads this file by path (`!function utils.load_dataset` in the task YAMLs beside it)."""

from jdllm.eval.data import load_dataset  # noqa: F401
