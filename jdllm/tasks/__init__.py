"""Synthetic task generators and scorers for jdllm's shipped models."""

from types import ModuleType

from jdllm.tasks import arithmetic, word_problems
from jdllm.tasks.arithmetic import Problem, extract_answer, format_prompt, make_problems, score

TASKS = {"arithmetic": arithmetic, "word_problems": word_problems}


def task_module(name: str) -> ModuleType:
    """The task generator named by a model's generation_config.json `task` (its `make_problems`, `score`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["Problem", "TASKS", "extract_answer", "format_prompt", "make_problems", "score", "task_module"]
