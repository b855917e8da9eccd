"""Synthetic task generators and scorers for jdllm's shipped models."""

from jdllm.tasks.arithmetic import Problem, extract_answer, format_prompt, make_problems, score

__all__ = ["Problem", "extract_answer", "format_prompt", "make_problems", "score"]
