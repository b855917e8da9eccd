"""Synthetic GSM8K-style multi-step arithmetic word problems: the task of jdllm's shipped default model.

A problem starts from a quantity and applies 2 or 3 additions / subtractions, one sentence per step, each
phrased by a verb ("He buys 7.", "Then he loses 5."). The answer is a short chain of thought, one equation per
step, and a final GSM8K-style line::

    question: "Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?"
    answer:   "12+7=19. 19-5=14. #### 14"

Numbers are small (start 2..20, operands 1..10, every intermediate >= 0, so results stay at most 50) for a tiny
model to learn the facts, yet each step reads the previous step's result, so the final answer
depends on intermediate results and decoding order matters.

Train / test split: a problem's *canonical form* is its arithmetic alone (start value and the sequence of signed
operands, e.g. "12+7-5"), independent of template, name and object. Its bucket is a stable hash (blake2b) of that
string; one bucket in `TEST_BUCKETS` buckets is held out. A held-out problem's arithmetic is never seen in
training under any wording. Generation is deterministic given (n, split, seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re

# ---------------------------------------------------------------------------------------------------- vocab

NAMES_HE = ("Tom", "Sam", "Ben", "Max", "Leo", "Dan", "Tim", "Jack")
NAMES_SHE = ("Ann", "Mia", "Eva", "Zoe", "Ivy", "Amy", "Lily", "Kate")
OBJECTS = ("apples", "pens", "cards", "coins", "eggs", "books", "shells", "stamps", "marbles", "cookies",
           "rocks", "toys")
CONTAINERS = ("box", "bag", "jar", "basket")
ADD_VERBS = ("buys", "finds", "gets", "wins")
SUB_VERBS = ("loses", "sells", "uses", "drops")

# The phrase tables below are not used by `_render` any more (an earlier, more varied template); their words stay
# in `vocabulary_words`, so the shipped tokenizer (and the model trained with it) keeps its vocabulary.
# Owner scenario ("Tom has 12 apples."): verb phrases per operation, `{n}` is the operand.
OWNER_ADD = ("buys {n} more", "finds {n} more", "gets {n}", "wins {n}")
OWNER_SUB = ("gives {n} away", "loses {n}", "sells {n}", "uses {n}")
# Container scenario ("A box has 12 apples."): the actor changes the container's content.
CONTAINER_ADD = ("puts in {n}", "adds {n}")
CONTAINER_SUB = ("takes out {n}", "removes {n}")

START_RANGE = (2, 20)
OPERAND_RANGE = (1, 10)
N_OPS = (2, 3)
MAX_QUESTION_CHARS = 95  # longer renderings are re-drawn
TEST_BUCKETS = 10  # 1 in 10 canonical problems is held out

ANSWER_MARK = "####"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One word problem: `question` (text), `answer_text` (chain of thought + "#### N"), `answer` ("N")."""

    question: str
    answer_text: str
    answer: str


def format_prompt(question: str) -> str:
    """The prompt the shipped model was trained on: the question followed by one newline."""
    return question.rstrip() + "\n"


# `format_prompt` as a Hugging Face chat template (the shipped model's tokenizer_config.json carries it): a user
# turn is its text, right-stripped, and one newline; an assistant turn its text and EOS (the model is single-turn).
CHAT_TEMPLATE = ("{%- for message in messages %}"
                 "{%- if message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
                 "{%- else %}{{ message['content'].rstrip() + '\\n' }}{%- endif %}"
                 "{%- endfor %}")


def canonical(start: int, ops: list[tuple[str, int]]) -> str:
    """Template-free form of a problem, e.g. "12+7-5"; the train / test split is a hash of it."""
    return str(start) + "".join(f"{op}{n}" for op, n in ops)


def split_of(key: str) -> str:
    """'test' for one bucket of `TEST_BUCKETS` (stable across Python versions and runs), else 'train'."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return "test" if h % TEST_BUCKETS == 0 else "train"


def chain_of_thought(start: int, ops: list[tuple[str, int]]) -> tuple[str, int]:
    """"12+7=19. 19-5=14. #### 14" and the final value."""
    parts, cur = [], start
    for op, n in ops:
        new = cur + n if op == "+" else cur - n
        parts.append(f"{cur}{op}{n}={new}.")
        cur = new
    return " ".join(parts) + f" {ANSWER_MARK} {cur}", cur


def _sample_math(rng: random.Random) -> tuple[int, list[tuple[str, int]]]:
    start = rng.randint(*START_RANGE)
    ops, cur = [], start
    for _ in range(rng.choice(N_OPS)):
        op = "+" if cur == 0 else rng.choice("+-")
        n = rng.randint(OPERAND_RANGE[0], OPERAND_RANGE[1] if op == "+" else min(OPERAND_RANGE[1], cur))
        ops.append((op, n))
        cur = cur + n if op == "+" else cur - n
    return start, ops


def _render(rng: random.Random, start: int, ops: list[tuple[str, int]]) -> str:
    """One sentence per step, one verb per operation: "Tom has 12 apples. He buys 7. Then he loses 5. How many
    apples does Tom have?". Every slot is a single token of the shipped tokenizer (names, objects, verbs and
    numbers 0..99), so a problem with k steps always has the same token layout: a tiny model can learn to copy
    operands by position within a CPU training budget; the arithmetic and the order of steps remain to be done."""
    he = rng.random() < 0.5
    name = rng.choice(NAMES_HE if he else NAMES_SHE)
    pron = "He" if he else "She"
    obj = rng.choice(OBJECTS)
    verbs = [rng.choice(ADD_VERBS if op == "+" else SUB_VERBS) for op, _ in ops]
    steps = [f"{pron} {verbs[0]} {ops[0][1]}."]
    steps += [f"Then {pron.lower()} {v} {n}." for v, (_, n) in zip(verbs[1:], ops[1:])]
    return f"{name} has {start} {obj}. {' '.join(steps)} How many {obj} does {name} have?"


def make_problem(rng: random.Random) -> tuple[Problem, str]:
    """One random problem and its canonical key (split not applied)."""
    start, ops = _sample_math(rng)
    answer_text, value = chain_of_thought(start, ops)
    question = _render(rng, start, ops)
    while len(question) > MAX_QUESTION_CHARS:
        question = _render(rng, start, ops)
    return Problem(question, answer_text, str(value)), canonical(start, ops)


def make_problems(n: int, split: str = "train", seed: int = 0, unique: bool | None = None) -> list[Problem]:
    """`n` problems of `split` ("train" or "test"), deterministic in (n, split, seed).

    Problems are drawn from one stream per seed and kept when their canonical form hashes into `split`.
    `unique` (default: True for "test", False for "train") keeps at most one problem per canonical form.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    unique = split == "test" if unique is None else unique
    rng = random.Random(f"jdllm-arith/{seed}")
    out: list[Problem] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * (n + 10):
            raise RuntimeError(f"could not draw {n} {'unique ' if unique else ''}{split} problems")
        p, key = make_problem(rng)
        if split_of(key) != split or (unique and key in seen):
            continue
        seen.add(key)
        out.append(p)
    return out


_ANSWER_RE = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def extract_answer(text: str) -> str | None:
    """The number after the first "####" (commas dropped), or None. Text after an EOS must be cut off first."""
    m = _ANSWER_RE.search(text)
    if m is None:
        return None
    ans = m.group(1).replace(",", "")
    if "." in ans:
        ans = ans.rstrip("0").rstrip(".") or "0"
    return ans


def score(pred_text: str, gold: str) -> bool:
    """Exact-answer match: the number after "####" in `pred_text` equals `gold` (a number or an answer text)."""
    pred = extract_answer(pred_text)
    gold_ans = extract_answer(gold) if ANSWER_MARK in gold else gold.strip().replace(",", "")
    if pred is None or gold_ans is None:
        return False
    try:
        return float(pred) == float(gold_ans)
    except ValueError:
        return pred == gold_ans


def vocabulary_words() -> list[str]:
    """Every alphabetic word the question templates use (the shipped tokenizer's whole-word tokens)."""
    texts = list(NAMES_HE + NAMES_SHE + OBJECTS + CONTAINERS + OWNER_ADD + OWNER_SUB + CONTAINER_ADD + CONTAINER_SUB
                 + ADD_VERBS + SUB_VERBS)
    texts += ["He She he she Then then and has have does How many are in the it now A"]
    words = set()
    for t in texts:
        words.update(re.findall(r"[A-Za-z]+", t))
    return sorted(words)


def alphabet() -> str:
    """Characters of the shipped tokenizer: printable ASCII and newline (every task string uses only these)."""
    return "\n" + "".join(chr(c) for c in range(32, 127))
