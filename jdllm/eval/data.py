"""The data of the local lm-eval tasks `jdllm_arith` and `jdllm_arith_mc` (`jdllm/eval/tasks/`), made by the
shipped model's task generator (`jdllm.tasks.arithmetic`).

Rows are the held-out problems of `make_problems(n, "test", seed=0)`, in order, so the first N rows are the N
problems `jdllm bench --n N` scores: the lm-eval accuracy and the bench accuracy of one recipe are measured on
the same problems. Each row has `question`, `answer` (the final number), `answer_text` (the worked answer the
model was trained to write) and, for the multiple-choice task, four worked answers `choices` of which
`choices[label]` is right. The three distractors are worked answers with one slip each, so that only reading
the question tells them apart: the last step's result off by one, the first step's result off by one and
carried through, and the last operation's sign flipped.

`python -m jdllm.eval.data` rewrites `jdllm/eval/tasks/arith_test.jsonl`; a test checks the shipped file equals
what this module makes.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from jdllm.tasks.arithmetic import ANSWER_MARK, Problem, make_problems

N_ROWS = 200
DATA_FILE = Path(__file__).resolve().parent / "tasks" / "arith_test.jsonl"
_STEP = re.compile(r"(\d+)([+-])(\d+)=(\d+)\.")


def parse_steps(answer_text: str) -> tuple[int, list[tuple[str, int]]]:
    """(start, [(op, operand), ...]) of a worked answer "12+7=19. 19-5=14. #### 14"."""
    steps = _STEP.findall(answer_text)
    if not steps:
        raise ValueError(f"not a worked answer: {answer_text!r}")
    return int(steps[0][0]), [(op, int(n)) for _, op, n, _ in steps]


def worked_answer(start: int, ops: list[tuple[str, int]], slips: dict[int, int] | None = None) -> str | None:
    """The worked answer of (start, ops), the result of step i shifted by `slips[i]` and carried on; None when a
    result would be negative (the task never has one)."""
    parts, cur = [], start
    for i, (op, n) in enumerate(ops):
        new = (cur + n if op == "+" else cur - n) + (slips or {}).get(i, 0)
        if new < 0:
            return None
        parts.append(f"{cur}{op}{n}={new}.")
        cur = new
    return " ".join(parts) + f" {ANSWER_MARK} {cur}"


def distractors(start: int, ops: list[tuple[str, int]]) -> list[str]:
    """Three wrong worked answers with distinct final numbers (see the module docstring), the first three of:
    last result +1, first result +1 carried, last sign flipped, last result -1, first result -1 carried, last
    result +2, +3, that exist (no negative number) and end on a new final number."""
    last = len(ops) - 1
    flipped = ops[:-1] + [("-" if ops[-1][0] == "+" else "+", ops[-1][1])]
    candidates = [worked_answer(start, ops, {last: 1}), worked_answer(start, ops, {0: 1}),
                  worked_answer(start, flipped), worked_answer(start, ops, {last: -1}),
                  worked_answer(start, ops, {0: -1}), worked_answer(start, ops, {last: 2}),
                  worked_answer(start, ops, {last: 3})]
    out, finals = [], {worked_answer(start, ops).rsplit(" ", 1)[1]}
    for c in candidates:
        if c is not None and c.rsplit(" ", 1)[1] not in finals and len(out) < 3:
            out.append(c)
            finals.add(c.rsplit(" ", 1)[1])
    return out


def task_row(index: int, problem: Problem) -> dict[str, Any]:
    start, ops = parse_steps(problem.answer_text)
    choices = [problem.answer_text] + distractors(start, ops)
    random.Random(f"jdllm-arith-mc/{index}").shuffle(choices)
    return {"question": problem.question, "answer": problem.answer, "answer_text": problem.answer_text,
            "choices": choices, "label": choices.index(problem.answer_text)}


def task_rows(n: int = N_ROWS, seed: int = 0) -> list[dict[str, Any]]:
    """The first `n` held-out problems (`make_problems(n, "test", seed)`) as task rows."""
    return [task_row(i, p) for i, p in enumerate(make_problems(n, split="test", seed=seed))]


def write_data(path: str | Path = DATA_FILE, n: int = N_ROWS) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in task_rows(n)), encoding="utf-8")
    return path


def read_rows(path: str | Path = DATA_FILE) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_dataset(**lm_eval_metadata: Any):
    """lm-eval's `custom_dataset` hook (the task YAMLs): the rows as a `datasets.DatasetDict` with one `test`
    split. lm-eval passes the task's metadata (version, `--metadata`) as keywords; none of them changes the
    data."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_rows())})


if __name__ == "__main__":
    print(write_data())
