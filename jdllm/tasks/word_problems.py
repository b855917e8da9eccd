"""Synthetic GSM8K-style word problems with several phrasings, any name or object, numbers 0..999 written as digits.

A problem is a start quantity and 1..5 operations (+, -, x, exact division), every value in 0..999. Its answer
is a worked chain of running totals: the start, then one step "op operand = new total" per operation, then GSM8K's
final line. Numbers are digits (the tokenizer of the model trained on it, `word_tokenizer`, makes every digit one
token, so results are multi-token)::

    question: "Lily has 4 bags. Each bag has 16 cookies. She eats 5 of them. How many cookies does Lily have now?"
    prompt:   "@Lily has 4 bags. $Each bag has 16 cookies. %She eats 5 of them. &How many cookies does Lily have now?\n"
    answer:   "$016@*004=064%-005=059&#### 59"

The prompt labels the question's sentences (`LABELS`, `format_prompt`, also as the chat template) and every
element of the chain starts with the label of the sentence it comes from (`sentence_labels`); the final line
carries the question's label. A step then finds its sentence by matching a label, which attention does in one
hop, instead of counting sentences: the models of pilots 7-8 misread the question in a third of their answers
(extra, repeated or shifted steps; `docs/words_model_pilots.md`).

Numbers in the chain are written with three digits (zero-padded) so that every step has the same width: the
units, tens and hundreds digits of the operands and of the new total sit at fixed offsets from each other, the
column alignment of written arithmetic. A small model learns carries at fixed offsets far faster than in
variable-width numbers (two pilots on unpadded "4*6=24. 24-5=19." chains stayed under 2% exact answers after an
hour, `docs/words_model_pilots.md`). The final answer after "####" is written plainly.
+ and - operands have 1 or 2 digits, x and / are by one digit (2..9): the quantities of a word problem, and the
written-arithmetic steps a person does in the head. In the groups frame the chain multiplies the per-group count
by the number of groups, so that x is always by one digit.

Frames (`FRAMES`), each with its own sentences per operation:
- "present": "Tom has 12 apples. He buys 7 more. Then he loses 5. How many apples does Tom have?" (+ - x /)
- "past":    "Tom had 12 apples. He bought 7. Then he lost 5. How many apples did Tom have in the end?" (+ - x /)
- "container": "A box has 12 eggs. She puts in 6. Then she takes out 4. How many eggs are in the box now?" (+ -)
- "groups":  "Lily has 4 bags. Each bag has 16 cookies. ..." (chain "$016@*004=064", then + -)
- "sharing": "... She shares them equally among 4 friends. How many does each friend get?" (last operation /)
The question line has several paraphrases per frame. Names and object words are drawn from lists and, one time in
three, made up from syllables (`made_up_word`), so a model cannot rely on a closed vocabulary of them.

Train / test split: a problem's *canonical form* is its arithmetic alone (start and operations, e.g. "16*4-5"), independent of
frame and wording; a stable hash (blake2b) of it holds out one bucket in `TEST_BUCKETS`. A held-out problem's
arithmetic is never seen in training under any wording. Generation is deterministic given (n, split, seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re

from jdllm.tasks.arithmetic import ANSWER_MARK, Problem, extract_answer, score

__all__ = ["Problem", "extract_answer", "format_prompt", "score", "make_problems", "make_problem", "chain_of_thought",
           "canonical", "split_of", "evaluate_chain", "sentence_labels", "LABELS", "made_up_word", "parse_question", "check_question", "vocabulary_words", "word_tokenizer", "alphabet", "FRAMES", "CHAT_TEMPLATE"]

NAMES = ("Tom", "Sam", "Ben", "Max", "Leo", "Dan", "Tim", "Jack", "Omar", "Ravi", "Kenji", "Pedro", "Ahmed", "Lucas",
         "Noah", "Ethan", "Ivan", "Yusuf", "Carlos", "Felix", "Ann", "Mia", "Eva", "Zoe", "Ivy", "Amy", "Lily", "Kate",
         "Sofia", "Emma", "Olivia", "Aisha", "Mei", "Priya", "Nina", "Lucia", "Hana", "Grace", "Chloe", "Fatima")
_PRONOUN = {n: "He" if i < 20 else "She" for i, n in enumerate(NAMES)}  # the first 20 names are male
OBJECTS = ("apples", "pens", "cards", "coins", "eggs", "books", "shells", "stamps", "marbles", "cookies", "rocks", "toys",
           "pencils", "stickers", "candies", "balloons", "oranges", "cupcakes", "buttons", "beads", "flowers", "nuts",
           "crayons", "tickets", "bottles", "cars", "dolls", "plums", "muffins", "ribbons")
CONTAINERS = ("box", "bag", "jar", "basket", "crate", "bucket")
GROUPS = ("bags", "boxes", "jars", "baskets", "packs", "plates", "rows", "crates", "bowls", "shelves")
SHARERS = ("friends", "children", "kids", "classmates", "students", "people", "cousins", "teams")
SYLLABLES = ("ka", "lo", "mi", "ra", "zen", "tu", "bel", "vo", "shi", "dra", "nor", "el", "qui", "fa", "gus", "ti",
             "mar", "pe", "ux", "yan", "ob", "ri", "sel", "wa")

FRAMES = ("present", "past", "container", "groups", "sharing")
N_OPS = (1, 2, 3, 4, 5)
MAX_VALUE = 999
FACTORS = (2, 9)  # multiplier / divisor range
GROUPS_RANGE = (2, 9)  # groups frame: number of groups (the one-digit factor)
PER_GROUP_RANGE = (2, 99)  # groups frame: items per group (the chain's start)
OPERAND_DIGITS = (0.4, 0.6, 0.0)  # + and - operands: weights of 1, 2 and 3 digits
OPERAND_RANGE = (1, 10 ** max(d + 1 for d, w in enumerate(OPERAND_DIGITS) if w > 0) - 1)  # what those weights draw
WIDTH = 3  # digits of every number in the chain (zero-padded)
MAX_ANSWER_CHARS = 62  # the longest chain (5 steps, 3-digit answer) has 58 characters: fits a 64-token region
MAX_QUESTION_CHARS = 170  # longer questions are re-drawn (<= 98 tokens of `word_tokenizer` as a labelled prompt)
LABELS = "@$%&^~|<>"  # sentence labels of the prompt and the chain (characters no question or answer uses)
TEST_BUCKETS = 10
MADE_UP_RATE = 1 / 3  # names / objects made up from syllables

# `format_prompt` as a chat template: a user turn is its sentences, each after its label, and a newline (whitespace
# runs become one space first, as in `format_prompt`); an assistant turn its text and EOS. Equal to `format_prompt`
# on every input (tests/test_word_problems.py).
CHAT_TEMPLATE = ("{%- set labels = '" + LABELS + "' %}"
                 "{%- for message in messages %}"
                 "{%- if message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
                 "{%- else %}{%- for part in (message['content'].split() | join(' ')).split('. ') %}"
                 "{{ ('' if loop.first else ' ') + (labels[loop.index0] if loop.index0 < labels | length else '')"
                 " + part + ('' if loop.last else '.') }}"
                 "{%- endfor %}{{ '\\n' }}{%- endif %}"
                 "{%- endfor %}")

# Sentences per operation; `{p}` is the actor (a pronoun or a name), `{n}` the operand, `{o}` the object word.
PRESENT = {"+": ("{p} buys {n} more.", "{p} finds {n} more.", "{p} gets {n} more.", "{p} wins {n}."),
           "-": ("{p} loses {n}.", "{p} gives away {n}.", "{p} sells {n}.", "{p} uses {n}.", "{p} eats {n} of them."),
           "*": ("{p} now has {n} times as many.",),
           "/": ("{p} splits them into {n} equal piles and keeps one pile.",)}
PAST = {"+": ("{p} bought {n} more.", "{p} found {n} more.", "{p} got {n} more.", "{p} won {n}."),
        "-": ("{p} lost {n}.", "{p} gave away {n}.", "{p} sold {n}.", "{p} used {n}.", "{p} ate {n} of them."),
        "*": ("{p} ended up with {n} times as many.",),
        "/": ("{p} split them into {n} equal piles and kept one pile.",)}
CONTAINER = {"+": ("{p} puts in {n}.", "{p} adds {n} more.", "{p} puts in {n} more {o}."),
             "-": ("{p} takes out {n}.", "{p} removes {n}.", "{p} takes {n} {o} out.")}
THEN = ("Then ", "After that, ", "Later ", "Next ")

QUESTIONS = {
    "present": ("How many {o} does {name} have?", "How many {o} does {name} have now?", "How many {o} are left?",
                "How many {o} does {pron} have now?", "What is the number of {o} {name} has now?",
                "Now how many {o} does {name} have?"),
    "past": ("How many {o} did {name} have in the end?", "How many {o} did {name} have then?",
             "How many {o} did {pron} end up with?", "How many {o} were left?"),
    "container": ("How many {o} are in the {c} now?", "How many {o} are in the {c}?", "How many {o} does the {c} hold now?",
                  "What is the number of {o} in the {c} now?"),
    "groups": ("How many {o} does {name} have?", "How many {o} does {name} have now?", "How many {o} are there in all?",
               "How many {o} does {pron} have in total?"),
    "sharing": ("How many does each {s1} get?", "How many {o} does each {s1} get?", "How many {o} will each {s1} get?",
                "How many does each one get?"),
}
_SINGULAR = {"friends": "friend", "children": "child", "kids": "kid", "classmates": "classmate",
             "students": "student", "people": "person", "cousins": "cousin", "teams": "team"}
_SINGULAR_GROUP = {"bags": "bag", "boxes": "box", "jars": "jar", "baskets": "basket", "packs": "pack",
                   "plates": "plate", "rows": "row", "crates": "crate", "bowls": "bowl", "shelves": "shelf"}


# ------------------------------------------------------------------------------------------------------- arithmetic
def apply_op(value: int, op: str, n: int) -> int:
    """`value op n` for op in + - * / (division exact)."""
    if op == "+":
        return value + n
    if op == "-":
        return value - n
    if op == "*":
        return value * n
    if op == "/":
        if n == 0 or value % n:
            raise ValueError(f"{value}/{n} is not an exact division")
        return value // n
    raise ValueError(f"op must be one of + - * /, got {op!r}")


def canonical(start: int, ops: list[tuple[str, int]]) -> str:
    """Template-free form of a problem, e.g. "16*4-5"; the train / test split is a hash of it."""
    return str(start) + "".join(f"{op}{n}" for op, n in ops)


def split_of(key: str) -> str:
    """'test' for one bucket of `TEST_BUCKETS` (stable across Python versions and runs), else 'train'."""
    h = int.from_bytes(hashlib.blake2b(("words/" + key).encode(), digest_size=8).digest(), "little")
    return "test" if h % TEST_BUCKETS == 0 else "train"


def sentence_labels(frame: str, n_ops: int) -> tuple[str, list[str], str]:
    """Labels (`LABELS`, one per sentence of the question, in order) of the chain's start, of each operation
    and of the question line: the start comes from the first sentence, operation i from sentence i + 1, except in
    the groups frame, whose first two sentences give the factor ("Lily has 4 bags.") and then the start ("Each
    bag has 16 cookies.")."""
    if n_ops + 2 > len(LABELS):
        raise ValueError(f"{n_ops} operations need {n_ops + 2} sentence labels, more than the {len(LABELS)} of LABELS")
    ops = list(LABELS[1:n_ops + 1])
    start = LABELS[0]
    if frame == "groups":
        start, ops[0] = LABELS[1], LABELS[0]
    return start, ops, LABELS[n_ops + 1]


def chain_of_thought(start: int, ops: list[tuple[str, int]], frame: str = "present") -> tuple[str, int]:
    """"$016@*004=064%-005=059&#### 59" and the final value: the start, one step "op operand = new total" per
    operation and the final answer, each after the label of the question sentence it comes from
    (`sentence_labels`, the labels `format_prompt` puts before the sentences); numbers zero-padded to `WIDTH`
    digits, the final answer plain."""
    start_label, op_labels, question_label = sentence_labels(frame, len(ops))
    parts, cur = [f"{start_label}{start:0{WIDTH}d}"], start
    for label, (op, n) in zip(op_labels, ops):
        cur = apply_op(cur, op, n)
        parts.append(f"{label}{op}{n:0{WIDTH}d}={cur:0{WIDTH}d}")
    return "".join(parts) + f"{question_label}{ANSWER_MARK} {cur}", cur


def format_prompt(question: str) -> str:
    """The prompt of the word-problem model: whitespace runs made one space, each sentence (split at ". ") after
    its label (`LABELS`, in order; sentences past the last label have none), then one newline:
    "Tom has 12 apples. He buys 7 more. How many apples does Tom have?" ->
    "@Tom has 12 apples. $He buys 7 more. %How many apples does Tom have?\\n". The chain repeats each step's label
    (`chain_of_thought`), so a step finds its sentence by label rather than by counting sentences (the plan errors
    of pilots 7-8, `docs/words_model_pilots.md`)."""
    parts = " ".join(question.split()).split(". ")
    sentences = [p + "." for p in parts[:-1]] + parts[-1:]
    return " ".join((LABELS[i] if i < len(LABELS) else "") + s for i, s in enumerate(sentences)) + "\n"


def result_positions(answer_text: str) -> list[int]:
    """Character offsets of the running totals' digits in a chain (the `WIDTH` digits after each "="): what the
    model computes rather than copies from the question (`focus_mask` of training)."""
    return [m.start(1) + j for m in re.finditer(rf"=(\d{{{WIDTH}}})", answer_text) for j in range(WIDTH)]


_START_RE = re.compile(r"^\s*[^\d\s]?(\d+)")
_STEP_RE = re.compile(r"([-+*/])(\d+)=(\d+)")


def evaluate_chain(answer_text: str) -> list[tuple[int, str, int, int]]:
    """The steps of a chain as equations (a, op, b, c), in order: a is the start or the previous total."""
    m = _START_RE.match(answer_text)
    if m is None:
        return []
    out, a = [], int(m.group(1))
    for op, b, c in _STEP_RE.findall(answer_text[m.end():]):
        out.append((a, op, int(b), int(c)))
        a = int(c)
    return out


def _magnitude(rng: random.Random, weights: tuple[float, float, float]) -> int:
    """A number with 1, 2 or 3 digits (chosen with `weights`), uniform within its digit count."""
    digits = rng.choices((1, 2, 3), weights)[0]
    return rng.randint(1 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def _sample_op(rng: random.Random, cur: int, allowed: str) -> tuple[str, int] | None:
    """One operation from `allowed` that keeps the value in 0..MAX_VALUE (None when none does)."""
    options = []
    for op in allowed:
        if op == "+" and cur < MAX_VALUE:
            n = min(_magnitude(rng, OPERAND_DIGITS), MAX_VALUE - cur)
            options.append((op, n))
        elif op == "-" and cur > 0:
            n = min(_magnitude(rng, OPERAND_DIGITS), cur)
            options.append((op, n))
        elif op == "*" and 2 <= cur * 2 <= MAX_VALUE:
            options.append((op, rng.randint(FACTORS[0], min(FACTORS[1], MAX_VALUE // cur))))
        elif op == "/":
            divisors = [k for k in range(FACTORS[0], FACTORS[1] + 1) if cur >= k and cur % k == 0]
            if divisors:
                options.append((op, rng.choice(divisors)))
    return rng.choice(options) if options else None


def _sample_math(rng: random.Random, frame: str, n_ops: int) -> tuple[int, list[tuple[str, int]]] | None:
    """Start value and operations for `frame` (None when this draw cannot satisfy the frame)."""
    if frame == "groups":  # g groups of b: the chain starts at b and multiplies by g
        b = rng.randint(*PER_GROUP_RANGE)
        g = rng.randint(*GROUPS_RANGE)
        start, ops, cur = b, [("*", g)], b * g
    else:
        start = _magnitude(rng, (0.2, 0.5, 0.3))
        ops, cur = [], start
    allowed = {"present": "+-*/", "past": "+-*/", "container": "+-", "groups": "+-", "sharing": "+-*"}[frame]
    while len(ops) < n_ops - (frame == "sharing"):
        op = _sample_op(rng, cur, allowed)
        if op is None:
            return None
        ops.append(op)
        cur = apply_op(cur, *op)
    if frame == "sharing":
        last = _sample_op(rng, cur, "/")
        if last is None:
            return None
        ops.append(last)
    return start, ops


# -------------------------------------------------------------------------------------------------------- wording
def made_up_word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A pronounceable made-up word ("kalomi"), lower case."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(*syllables)))


def _name(rng: random.Random) -> str:
    return made_up_word(rng).capitalize() if rng.random() < MADE_UP_RATE else rng.choice(NAMES)


def _object(rng: random.Random) -> str:
    return made_up_word(rng, (1, 2)) + "s" if rng.random() < MADE_UP_RATE else rng.choice(OBJECTS)


def _steps(rng: random.Random, table: dict, ops: list[tuple[str, int]], actor: str, pron: str, obj: str) -> list[str]:
    """One sentence per operation: the first with `actor`, later ones "Then {pron} ..." (or another connective)."""
    out = []
    for i, (op, n) in enumerate(ops):
        text = rng.choice(table[op])
        if i == 0:
            out.append(text.format(p=actor, n=n, o=obj))
        else:
            out.append(rng.choice(THEN) + text.format(p=pron.lower(), n=n, o=obj))
    return out


def render(rng: random.Random, frame: str, start: int, ops: list[tuple[str, int]]) -> str:
    """The question text of a problem in `frame` (see the module docstring for the frames)."""
    name, obj = _name(rng), _object(rng)
    pron = _PRONOUN.get(name) or rng.choice(("He", "She"))
    q = dict(o=obj, name=name, pron=pron.lower())
    if frame in ("present", "past"):
        verb = "has" if frame == "present" else "had"
        body = _steps(rng, PRESENT if frame == "present" else PAST, ops, pron, pron, obj)
        text = [f"{name} {verb} {start} {obj}."] + body
    elif frame == "container":
        c = rng.choice(CONTAINERS)
        actor = rng.choice((pron, name))
        text = [f"A {c} has {start} {obj}."] + _steps(rng, CONTAINER, ops, actor, pron, obj)
        q["c"] = c
    elif frame == "groups":
        g = rng.choice(GROUPS)
        text = [f"{name} has {ops[0][1]} {g}.", f"Each {_SINGULAR_GROUP[g]} has {start} {obj}."]
        text += _steps(rng, PRESENT, ops[1:], pron, pron, obj)
    elif frame == "sharing":
        s = rng.choice(SHARERS)
        body = _steps(rng, PRESENT, ops[:-1], pron, pron, obj)
        share = f"{pron} shares them equally among {ops[-1][1]} {s}."
        if body:
            share = rng.choice(THEN) + share[0].lower() + share[1:]
        text = [f"{name} has {start} {obj}."] + body + [share]
        q["s1"] = _SINGULAR[s]
    else:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    return " ".join(text + [rng.choice(QUESTIONS[frame]).format(**q)])


def make_problem(rng: random.Random, frame: str | None = None, n_ops: int | None = None) -> tuple[Problem, str, str]:
    """One random problem, its canonical key and its frame (split not applied)."""
    while True:
        f = frame or rng.choice(FRAMES)
        k = n_ops or rng.choice(N_OPS)
        math = _sample_math(rng, f, k)
        if math is None:
            continue
        answer_text, value = chain_of_thought(*math, frame=f)
        question = render(rng, f, *math)
        if len(answer_text) > MAX_ANSWER_CHARS or len(question) > MAX_QUESTION_CHARS:
            continue
        return Problem(question, answer_text, str(value)), canonical(*math), f


def make_problems(n: int, split: str = "train", seed: int = 0, unique: bool | None = None,
                  frame: str | None = None) -> list[Problem]:
    """`n` problems of `split` ("train" or "test"), deterministic in (n, split, seed, frame).

    Drawn from one stream per seed and kept when their canonical form hashes into `split`; `unique` (default:
    True for "test", False for "train") keeps at most one problem per canonical form; `frame` restricts to one
    of `FRAMES`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if frame is not None and frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES} or None, got {frame!r}")
    unique = split == "test" if unique is None else unique
    rng = random.Random(f"jdllm-words/{seed}/{frame}")
    out: list[Problem] = []
    seen: set[str] = set()
    while len(out) < n:
        p, key, _ = make_problem(rng, frame)
        if split_of(key) != split or (unique and key in seen):
            continue
        seen.add(key)
        out.append(p)
    return out


# ------------------------------------------------------------------------------------------------ recognising
_WORD = r"[a-z][a-z'-]*"  # a name, object, pronoun or container word (one word, lower case after normalising)


def _pattern(template: str) -> str:
    """A template sentence as a regex over normalised text: `{n}` captures a number, other fields are one word."""
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos:m.start()].lower()))
        out.append(r"(\d+)" if m.group(1) == "n" else _WORD)
        pos = m.end()
    return "".join(out) + re.escape(template[pos:].lower())


def _step_matchers(table: dict) -> list[tuple[re.Pattern, str]]:
    return [(re.compile(_pattern(t)), op) for op, texts in table.items() for t in texts]


_TABLES = {"present": PRESENT, "past": PAST, "container": CONTAINER, "groups": PRESENT, "sharing": PRESENT}
_STEPS = {frame: _step_matchers(table) for frame, table in _TABLES.items()}
_SHARE = re.compile(_pattern("{p} shares them equally among {n} ") + "(" + "|".join(SHARERS) + r")\.")
_QUESTION_RES = {frame: [re.compile(_pattern(q)) for q in qs] for frame, qs in QUESTIONS.items()}
_CONNECTIVES = tuple(t.lower() for t in THEN)


def _normalise(text: str) -> str:
    """What the model's tokenizer sees, as text: lower case, runs of whitespace as one space, stripped."""
    return re.sub(r"\s+", " ", text).strip().lower()


def _step(sentence: str, frame: str, first: bool) -> tuple[str, int] | None:
    """(op, n) of one operation sentence of `frame`: the first without a connective, later ones with one."""
    if not first:
        connective = next((c for c in _CONNECTIVES if sentence.startswith(c)), None)
        if connective is None:
            return None
        sentence = sentence[len(connective):]
    for rx, op in _STEPS[frame]:
        m = rx.fullmatch(sentence)
        if m:
            return op, int(m.group(1))
    return None


def _opening(sentences: list[str]) -> tuple[str, int, list[tuple[str, int]], list[str]] | None:
    """(frame, start, leading ops, remaining sentences) from the opening sentence(s) of a question."""
    first = sentences[0]
    m = re.fullmatch(rf"a ({'|'.join(CONTAINERS)}) has (\d+) {_WORD}\.", first)
    if m:
        return "container", int(m.group(2)), [], sentences[1:]
    m = re.fullmatch(rf"{_WORD} (has|had) (\d+) ({_WORD})\.", first)
    if m is None:
        return None
    verb, n, noun = m.group(1), int(m.group(2)), m.group(3)
    if verb == "had":
        return "past", n, [], sentences[1:]
    each = re.fullmatch(rf"each ({_WORD}) has (\d+) {_WORD}\.", sentences[1]) if len(sentences) > 1 else None
    if noun in _SINGULAR_GROUP and each and each.group(1) == _SINGULAR_GROUP[noun]:
        return "groups", int(each.group(2)), [("*", n)], sentences[2:]
    return "present", n, [], sentences[1:]  # "sharing" is told apart by its last operation sentence


def parse_question(question: str) -> tuple[str, int, list[tuple[str, int]]] | None:
    """(frame, start, ops) of a question in one of the trained forms (`FRAMES`, their operation sentences and
    question lines, any one-word name or object, any case and spacing), else None. The inverse of `render`:
    `parse_question(render(rng, frame, start, ops)) == (frame, start, ops)`."""
    sentences = re.split(r"(?<=[.?]) ", _normalise(question))
    if len(sentences) < 3 or not sentences[-1].endswith("?"):
        return None
    opening = _opening(sentences[:-1])
    if opening is None:
        return None
    frame, start, ops, body = opening
    tail = []
    if frame == "present" and body:
        last = body[-1]
        connective = next((c for c in _CONNECTIVES if last.startswith(c)), "")
        share = _SHARE.fullmatch(last[len(connective):])
        if share and bool(connective) == (len(body) > 1):
            frame, body, tail = "sharing", body[:-1], [("/", int(share.group(1)))]
    lead = len(ops)
    for i, sentence in enumerate(body):
        step = _step(sentence, frame, first=(i == 0))
        if step is None:
            return None
        ops.append(step)
    ops += tail
    if len(ops) == lead and frame != "groups" or not ops:
        return None
    if not any(rx.fullmatch(sentences[-1]) for rx in _QUESTION_RES[frame]):
        return None
    return frame, start, ops


def check_question(question: str) -> str | None:
    """Why the word-problem model should not be trusted on `question` (None when it is inside what it was trained
    on): a form it never saw, more operations than `N_OPS`, numbers outside the trained ranges, a value leaving
    0..`MAX_VALUE` or a division that is not exact."""
    parsed = parse_question(question)
    if parsed is None:
        return ("the question is not in one of the trained forms (see the model card's task grammar); the answer "
                "is unreliable")
    frame, start, ops = parsed
    if len(ops) > N_OPS[-1]:
        return f"the question has {len(ops)} operations, more than the {N_OPS[-1]} the model was trained on"
    lo_start, hi_start = PER_GROUP_RANGE if frame == "groups" else (1, MAX_VALUE)
    if not lo_start <= start <= hi_start:
        return f"the starting number {start} is outside the trained range {lo_start}..{hi_start}"
    cur = start
    for i, (op, n) in enumerate(ops):
        lo, hi = (GROUPS_RANGE if frame == "groups" and i == 0 else FACTORS) if op in "*/" else OPERAND_RANGE
        if not lo <= n <= hi:
            return f"the operand {n} of {op} is outside the trained range {lo}..{hi}"
        if op == "/" and cur % n:
            return f"{cur} / {n} is not a whole number; the model was trained on exact divisions only"
        cur = apply_op(cur, op, n)
        if not 0 <= cur <= MAX_VALUE:
            return f"an intermediate value ({cur}) is outside 0..{MAX_VALUE}, the values the model was trained on"
    return None


def alphabet() -> str:
    """Characters of `word_tokenizer`: newline and printable ASCII (anything else encodes to `<|unk|>`)."""
    return "\n" + "".join(chr(c) for c in range(32, 127))


def word_tokenizer(extra_words: tuple[str, ...] = ()):
    """The tokenizer of the word-problem model: characters, the template words (`vocabulary_words`, plus
    `extra_words`) as whole-word tokens, digits one token each. Its normaliser (stored in tokenizer.json) applies
    NFKC, lower-cases, turns tabs and runs of spaces into one space and drops spaces around newlines and at the
    start, so case and whitespace do not change what the model sees."""
    from tokenizers import Regex, normalizers

    from jdllm.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(alphabet(), words=sorted(set(vocabulary_words()) | {w.lower() for w in extra_words}))
    tok.hf.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[ \t\r\f\v]+"), " "),
        normalizers.Replace(Regex(r" ?\n ?"), "\n"), normalizers.Strip(left=True, right=False)])
    return tok


def vocabulary_words() -> list[str]:
    """The lower-case words of the fixed sentence templates (whole-word tokens of `word_tokenizer`). Names and object
    words are left out on purpose: they are spelled character by character, so that any name or object is
    ordinary input."""
    texts = [t for table in (PRESENT, PAST, CONTAINER) for v in table.values() for t in v]
    texts += [q for qs in QUESTIONS.values() for q in qs] + list(THEN) + list(CONTAINERS) + list(GROUPS)
    texts += list(_SINGULAR_GROUP.values()) + list(SHARERS) + list(_SINGULAR.values())
    texts += ["he she has had a each shares them equally among"]
    words = set()
    for t in texts:
        words.update(w.lower() for w in re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}", " ", t)))
    return sorted(words)
