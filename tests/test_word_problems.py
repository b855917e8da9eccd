"""The word-problem task (`jdllm.tasks.word_problems`) and its tokenizer: grammar coverage, answers recomputed
from the chain, disjoint splits, determinism, normalisation."""

import re

import pytest

from jdllm.tasks import word_problems as wp


def _recompute(p) -> int:
    """Check the chain ("@016$*004=064%-005=059&#### 59": labelled, zero-padded running totals) with plain
    Python arithmetic and return its final value."""
    m = re.fullmatch(r"[^\w\s](\d{3})((?:[^\w\s][-+*/]\d{3}=\d{3})+)[^\w\s]#### (\d+)", p.answer_text)
    assert m, p.answer_text
    steps = re.findall(r"[^\w\s]([-+*/])(\d{3})=(\d{3})", m.group(2))
    assert 1 <= len(steps) <= 5, p.answer_text
    prev = None
    a = int(m.group(1))
    for op, b, c in steps:
        b, c = int(b), int(c)
        if op == "/":
            assert b != 0 and a % b == 0, p.answer_text  # exact division
            expect = a // b
        else:
            expect = {"+": a + b, "-": a - b, "*": a * b}[op]
        assert c == expect, p.answer_text
        assert all(0 <= v <= 999 for v in (a, b, c)), p.answer_text
        assert (1 <= b <= 99) if op in "+-" else (2 <= b <= 9), p.answer_text  # the operand ranges
        prev = a = c
    assert p.answer_text.endswith(f"#### {prev}") and p.answer == str(prev)
    return prev


@pytest.fixture(scope="module")
def problems():
    return wp.make_problems(3000, "train", seed=0)


def test_answers_are_correct_and_in_range(problems):
    for p in problems + wp.make_problems(300, "test", seed=0):
        _recompute(p)
        assert wp.score(p.answer_text, p.answer) and not wp.score(p.answer_text, str(int(p.answer) + 1))


def test_question_states_the_operands(problems):
    """Every number of the question appears in the chain (start and operands) in the question's order, except that
    the groups frame ("has 4 bags. Each bag has 16 cookies.") starts the chain at the per-group count."""
    for p in problems[:500]:
        q_nums = [int(x) for x in re.findall(r"\d+", p.question)]
        steps = wp.evaluate_chain(p.answer_text)
        chain = [steps[0][0]] + [b for _, _, b, _ in steps]
        if "Each " in p.question:
            chain[:2] = chain[1::-1]
        assert q_nums == chain, (p.question, p.answer_text)


def test_grammar_coverage(problems):
    text = " ".join(p.question for p in problems)
    ops = "".join(op for p in problems for _, op, _, _ in wp.evaluate_chain(p.answer_text))
    assert set(ops) == set("+-*/")
    assert {len(wp.evaluate_chain(p.answer_text)) for p in problems} == {1, 2, 3, 4, 5}
    values = [v for p in problems for s in wp.evaluate_chain(p.answer_text) for v in (s[0], s[3])]
    assert min(values) == 0 and max(values) >= 990 and any(100 <= v <= 999 for v in values)
    for phrase in (" has ", " had ", " bought ", " lost ", "Each ", " puts in ", " takes out ",
                   "shares them equally among", "How many does each", " are in the ", " in the end?"):
        assert phrase in text, phrase
    for frame in wp.FRAMES:  # every frame renders with several question lines
        qs = {re.sub(r"\d+", "N", p.question.rsplit(". ", 1)[-1]) for p in wp.make_problems(200, "train", frame=frame)}
        assert len(qs) >= 3, frame
    names = {p.question.split()[0] for p in problems}
    assert len(names - set(wp.NAMES) - {"A"}) > 50  # made-up names, not a closed list
    assert all(len(p.question) <= wp.MAX_QUESTION_CHARS and len(p.answer_text) <= wp.MAX_ANSWER_CHARS
               for p in problems)


def test_frames_have_their_structure():
    for p in wp.make_problems(100, "train", frame="groups"):
        assert wp.evaluate_chain(p.answer_text)[0][1] == "*" and "Each " in p.question
    for p in wp.make_problems(100, "train", frame="sharing"):
        assert wp.evaluate_chain(p.answer_text)[-1][1] == "/" and "equally among" in p.question
    for p in wp.make_problems(100, "train", frame="container"):
        assert p.question.startswith("A ") and set(s[1] for s in wp.evaluate_chain(p.answer_text)) <= set("+-")
    with pytest.raises(ValueError, match="frame"):
        wp.make_problems(1, frame="poem")


def _key(p) -> str:
    steps = wp.evaluate_chain(p.answer_text)
    return str(steps[0][0]) + "".join(f"{op}{b}" for _, op, b, _ in steps)


def test_splits_never_share_a_problem():
    train = {_key(p) for p in wp.make_problems(5000, "train", seed=0)}
    train |= {_key(p) for p in wp.make_problems(2000, "train", seed=5)}
    test = [_key(p) for p in wp.make_problems(500, "test", seed=1)]
    assert len(set(test)) == len(test)
    assert not train & set(test)
    assert all(wp.split_of(k) == "test" for k in test)
    with pytest.raises(ValueError, match="split"):
        wp.make_problems(1, "dev")


def test_generation_is_deterministic():
    assert wp.make_problems(200, "train", seed=3) == wp.make_problems(200, "train", seed=3)
    assert wp.make_problems(100, "train", seed=3)[:50] == wp.make_problems(50, "train", seed=3)
    assert wp.make_problems(50, "train", seed=3) != wp.make_problems(50, "train", seed=4)
    assert wp.make_problems(50, "test", seed=1) == wp.make_problems(50, "test", seed=1)


def test_tokenizer_digits_unknown_words_and_normalisation():
    tok = wp.word_tokenizer()
    tokens = tok.hf.encode("Zorblax has 305 quuxes.\n").tokens
    assert tokens[tokens.index("3"): tokens.index("3") + 3] == ["3", "0", "5"]  # one token per digit
    assert tok.hf.token_to_id("<|unk|>") not in tok.encode("Zorblax has 305 quuxes. Ğ")[:-1]
    assert "z" in tokens and "x" in tokens  # unknown words are spelled, not <unk>
    same = ["Tom has 12 apples. How many apples does Tom have?\n",
            "  tom   HAS 12 apples.\tHow many APPLES does tom have?  \n"]
    assert tok.encode(same[0]) == tok.encode(same[1])
    assert tok.decode(tok.encode("@012$*003=036%#### 36")) == "@012$*003=036%#### 36"
    for p in wp.make_problems(300, "train", seed=0):  # the model's prompt region fits every question
        assert len(tok.encode(wp.format_prompt(p.question))) <= 100
    assert tok.encode("<|mask|>") == [tok.mask_id]


def test_parse_question_inverts_render():
    """Every rendered question (all frames, 1-5 operations, made-up names and objects) parses back to the arithmetic
    it was drawn from, also after case and spacing changes, and is inside the trained ranges."""
    import random

    rng = random.Random(7)
    seen = set()
    for _ in range(3000):
        frame, k = rng.choice(wp.FRAMES), rng.choice(wp.N_OPS)
        math = wp._sample_math(rng, frame, k)
        if math is None:
            continue
        q = wp.render(rng, frame, *math)
        assert wp.parse_question(q) == (frame, *math), q
        assert wp.parse_question("  " + q.upper().replace(" ", "   ")) == (frame, *math), q
        assert wp.check_question(q) is None, q
        seen.add((frame, len(math[1])))
    assert len(seen) >= 20


@pytest.mark.parametrize("question, reason", [
    ("What is 5 plus 3?", "not in one of the trained forms"),
    ("Tom has 12 apples. He buys 7. How many apples does Tom have?", "not in one of the trained forms"),
    ("Tom has 12 apples. He buys 7 more. How many pears are on the moon?", "not in one of the trained forms"),
    ("Tom has 12 apples. Then he buys 7 more. How many apples does Tom have?", "not in one of the trained forms"),
    ("Tom has 12 apples. How many apples does Tom have?", "not in one of the trained forms"),
    ("Tom has 12 apples. He buys 150 more. How many apples does Tom have?", "operand 150 of + is outside"),
    ("Tom has 12 apples. He now has 12 times as many. How many apples does Tom have?", "operand 12 of * is outside"),
    ("Tom has 1200 apples. He loses 5. How many apples does Tom have?", "starting number 1200"),
    ("Tom has 990 apples. He buys 20 more. How many apples does Tom have?", "intermediate value (1010)"),
    ("Ann has 10 pens. She shares them equally among 3 kids. How many does each kid get?", "10 / 3 is not a whole"),
    ("Tom has 5 apples. He buys 1 more. Then he buys 1 more. Then he buys 1 more. Then he buys 1 more. "
     "Then he buys 1 more. Then he buys 1 more. How many apples does Tom have?", "6 operations"),
])
def test_check_question_names_what_is_outside(question, reason):
    assert reason in wp.check_question(question)


def test_digit_fourier_init_targets_the_digit_tokens():
    """`jdllm train words --fourier-periods 2,5,10` seeds the rows of the ten digit tokens; numbers of two digits
    are not single tokens of this tokenizer, and asking for them is an error."""
    from jdllm.train.shipped import number_init

    tok = wp.word_tokenizer()
    init = number_init(tok, "2,5,10", count=10)
    assert [tok.decode([i]) for i in init.keywords["number_ids"]] == [str(d) for d in range(10)]
    assert init.keywords["periods"] == [2.0, 5.0, 10.0]
    assert number_init(tok, "none", count=10) is None
    with pytest.raises(ValueError, match="number 10 is not a single token"):
        number_init(tok, "2,5,10", count=11)


def test_result_positions_are_the_digits_after_each_equals_sign():
    import re

    for p in wp.make_problems(300, "train", seed=4):
        text = p.answer_text
        want = [m.start() + 1 + k for m in re.finditer("=", text) for k in range(wp.WIDTH)]
        assert wp.result_positions(text) == want, text
        assert all(text[i].isdigit() for i in want)


def test_each_chain_element_carries_the_label_of_its_sentence():
    """The prompt labels the question's sentences in order; in the chain the start, every step and the final
    line sit after the label of the sentence they come from: the start's and each operand's number is in its
    labelled sentence (the groups frame: the start in "Each bag has N ...", the x factor in "... has G bags."),
    each operation's word is one of that op's sentences, and the final line carries the question's label."""
    for p in wp.make_problems(600, "train", seed=2):
        prompt = wp.format_prompt(p.question)
        sentences = {s[0]: s[1:] for s in re.split(r"(?<=[.?]) ", prompt.rstrip("\n"))}
        order = list(sentences)  # the prompt's labels, in order: every sentence feeds one chain element
        if "Each " in p.question:
            order[:2] = order[1::-1]
        assert [c for c in p.answer_text if not c.isalnum() and c not in " -+*/=#"] == order, (prompt, p.answer_text)
        elements = re.findall(r"([^\w\s=])([-+*/]?)(\d{3})", p.answer_text)
        for label, op, n in elements:
            sentence = sentences[label]
            assert int(n) in [int(x) for x in re.findall(r"\d+", sentence)], (label, n, sentence)
            if op:
                words = {"+": ("buy", "find", "get", "win", "bought", "found", "got", "won", "put", "add"),
                         "-": ("lose", "give", "sell", "use", "eat", "lost", "gave", "sold", "used", "ate",
                               "take", "remove"),
                         "*": ("times", "has"), "/": ("piles", "shares")}[op]
                assert any(w in sentence for w in words), (op, sentence)
        assert sentences[p.answer_text[p.answer_text.index("####") - 1]].endswith("?"), p


def test_chat_template_renders_what_format_prompt_returns():
    """`jdllm generate` formats with the exported chat template (jinja); training with `format_prompt` (Python).
    The two agree on trained questions and on odd input (runs of spaces, tabs, no space after a period, more
    sentences than labels, empty), so the model sees at inference what it was trained on."""
    from jdllm.text import ChatTemplate

    template = ChatTemplate(wp.CHAT_TEMPLATE, {"eos_token": "<|eos|>"})
    odd = ["  Tom has  12 apples.\tHe buys 7 more.   How many?  ", "", "a. b. c. d. e. f. g. h. i. j. k.",
           "x.y. z", "Hi. ", "One sentence without a period"]
    for q in [p.question for p in wp.make_problems(300, "train", seed=6)] + odd:
        assert template.render([{"role": "user", "content": q}], add_generation_prompt=True) == wp.format_prompt(q)
    assert wp.format_prompt("Tom has 1 pen. He buys 2 more. How many pens does Tom have?") == (
        "@Tom has 1 pen. $He buys 2 more. %How many pens does Tom have?\n")
    done = template.render([{"role": "user", "content": "A b. C?"}, {"role": "assistant", "content": "@001%#### 1"}],
                           add_generation_prompt=False)
    assert done == "@A b. $C?\n@001%#### 1<|eos|>"
