"""The synthetic arithmetic task, its scorer and the character-level tokenizer of the shipped model."""

import re

import pytest

from jdllm.tasks import Problem, arithmetic, extract_answer, format_prompt, make_problems, score
from jdllm.tokenizer import Tokenizer, build_char_tokenizer


def _check_chain(p: Problem) -> None:
    """Every step of the chain of thought is correct, chained, non-negative, and ends in `#### answer`."""
    steps = re.findall(r"(\d+)([+-])(\d+)=(\d+)\.", p.answer_text)
    assert 2 <= len(steps) <= 3
    prev = None
    for a, op, b, c in steps:
        a, b, c = int(a), int(b), int(c)
        assert c == (a + b if op == "+" else a - b) and c >= 0
        if prev is not None:
            assert a == prev  # each step reads the previous result
        prev = c
    assert p.answer == str(prev) and p.answer_text.endswith(f"#### {prev}")
    nums = [int(x) for x in re.findall(r"\d+", p.question)]
    assert nums == [int(steps[0][0])] + [int(s[2]) for s in steps]  # the question states start and operands


def test_generator_is_deterministic():
    assert make_problems(50, "train", seed=3) == make_problems(50, "train", seed=3)
    assert make_problems(50, "test", seed=3) == make_problems(50, "test", seed=3)
    assert make_problems(50, "train", seed=3) != make_problems(50, "train", seed=4)
    # a prefix of a longer draw is the shorter draw
    assert make_problems(80, "train", seed=3)[:50] == make_problems(50, "train", seed=3)


def test_problems_are_well_formed():
    probs = make_problems(300, "train", seed=0) + make_problems(100, "test", seed=0)
    for p in probs:
        _check_chain(p)
        assert len(p.question) <= arithmetic.MAX_QUESTION_CHARS
        assert p.question.endswith("?")
        assert set(p.question + p.answer_text) <= set(arithmetic.alphabet())
    assert len({p.question.split()[0] for p in probs}) > 5  # several names / openings
    assert {len(re.findall("=", p.answer_text)) for p in probs} == {2, 3}


def _key(p: Problem) -> str:
    steps = re.findall(r"(\d+)([+-])(\d+)=", p.answer_text)
    return steps[0][0] + "".join(op + b for _, op, b in steps)


def test_train_and_test_splits_never_overlap():
    train = make_problems(3000, "train", seed=0)
    test = make_problems(500, "test", seed=0)
    train_keys, test_keys = {_key(p) for p in train}, {_key(p) for p in test}
    assert not train_keys & test_keys
    assert all(arithmetic.split_of(k) == "train" for k in train_keys)
    assert all(arithmetic.split_of(k) == "test" for k in test_keys)
    assert len(test_keys) == len(test)  # held-out problems are unique
    # other seeds keep the split: the test set never meets any training seed
    other = {_key(p) for p in make_problems(1000, "train", seed=7)}
    assert not other & test_keys


def test_extract_answer_and_score():
    assert extract_answer("12+7=19. 19-5=14. #### 14") == "14"
    assert extract_answer("#### 1,234") == "1234"
    assert extract_answer("####7") == "7"
    assert extract_answer("#### 3.0") == "3"
    assert extract_answer("no answer here") is None
    assert score("12+7=19. 19-5=14. #### 14", "14")
    assert score("#### 14", "12+7=19. 19-5=14. #### 14")
    assert not score("12+7=19. 19-5=13. #### 13", "14")
    assert not score("12+7=19. 19-5=14.", "14")
    assert not score("#### 141", "14")


def test_format_prompt():
    assert format_prompt("How many?") == "How many?\n"
    assert format_prompt("How many?  \n") == "How many?\n"


def test_char_tokenizer_round_trip(tmp_path):
    tok = build_char_tokenizer(arithmetic.alphabet())
    assert (tok.pad_id, tok.eos_id, tok.mask_id) == (0, 1, 2)
    assert tok.vocab_size == 5 + len(arithmetic.alphabet())
    for p in make_problems(50, "train", seed=1):
        for text in (format_prompt(p.question), p.answer_text):
            ids = tok.encode(text)
            assert len(ids) == len(text)  # one token per character
            assert tok.decode(ids) == text
    odd = "  two  spaces,\nnewline\n and trailing "
    assert tok.decode(tok.encode(odd)) == odd
    # specials: skipped on request, and decode_until_eos cuts at the first EOS
    ids = tok.encode("#### 14") + [tok.eos_id, tok.eos_id] + tok.encode("junk")
    assert tok.decode_until_eos(ids) == "#### 14"
    assert tok.decode([tok.mask_id] + tok.encode("ab")) == "ab"
    assert tok.decode([tok.mask_id] + tok.encode("ab"), skip_special=False) == "<|mask|>ab"
    assert tok.encode("<|eos|>") == [tok.eos_id]
    # save -> from_file (a directory or the json itself) keeps ids and specials
    tok.save(tmp_path)
    for src in (tmp_path, tmp_path / "tokenizer.json"):
        tok2 = Tokenizer.from_file(src)
        assert (tok2.pad_id, tok2.eos_id, tok2.mask_id, tok2.vocab_size) == (0, 1, 2, tok.vocab_size)
        assert tok2.encode(odd) == tok.encode(odd) and tok2.decode(tok.encode(odd)) == odd


def test_unknown_characters_map_to_unk():
    tok = build_char_tokenizer("ab")
    ids = tok.encode("aéb")
    assert ids[1] == tok.hf.token_to_id("<|unk|>")
    with pytest.raises(ValueError):
        build_char_tokenizer("a", specials=("a",))


def test_word_augmented_tokenizer_round_trips_and_shortens():
    from jdllm.train.diffusion import default_tokenizer

    tok = default_tokenizer()  # the shipped model's: characters + the task's words + numbers 10..99 as tokens
    assert (tok.pad_id, tok.eos_id, tok.mask_id) == (0, 1, 2)
    for p in make_problems(200, "train", seed=2):
        text = format_prompt(p.question)
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert len(ids) <= 31 and len(ids) < len(text) / 2
        plain = build_char_tokenizer(arithmetic.alphabet(), number_tokens=100)  # answers use no word tokens
        assert [tok.hf.id_to_token(i) for i in tok.encode(p.answer_text)] == [
            plain.hf.id_to_token(i) for i in plain.encode(p.answer_text)]
    # words match only whole words; everything else falls back to characters and still round-trips
    for text in ("Tomato has 3 hashes.", "A  box has", "apples.Tom", "xTom Tomx", " has  has\n", "How many?",
                 "123 4567 05 99 100 x12y"):
        assert tok.decode(tok.encode(text)) == text
    assert [tok.hf.id_to_token(i) for i in tok.encode("Tom has 12 apples.")] == [
        "Tom", " has", " ", "12", " apples", "."]
    assert [tok.hf.id_to_token(i) for i in tok.encode("Tomato")] == list("Tomato")
    with pytest.raises(ValueError):
        build_char_tokenizer("abc", words=("a-b",))


def test_number_tokens_option():
    tok = build_char_tokenizer(arithmetic.alphabet(), number_tokens=100)
    assert tok.vocab_size == 5 + len(arithmetic.alphabet()) + 90
    assert [tok.hf.id_to_token(i) for i in tok.encode("12+7=19. 123 05")] == [
        "12", "+", "7", "=", "19", ".", " ", "1", "2", "3", " ", "0", "5"]
    for text in ("12+7=19. 19-5=14. #### 14", "x12y 100 99", "007"):
        assert tok.decode(tok.encode(text)) == text
