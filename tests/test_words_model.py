"""The word-problem model (`jdllm/assets/models/words-llada-small`, `jdllm train words`) and the honest edges of
`jdllm generate`: 50 held-out problems through the public path, and a warning on stderr (exit 0) for prompts
outside the trained region or answers outside the trained form."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import jdllm
from jdllm.cli import main
from jdllm.shipped import Bundle, assets_dir, load_bundle
from jdllm.tasks import word_problems as wp

MODEL = "words-llada-small"


@pytest.fixture(scope="module")
def bundle():
    if not (assets_dir() / MODEL / "model.safetensors").exists():
        pytest.skip(f"{MODEL} is not shipped yet (its training run, `jdllm train words`, has not finished; issue 12)")
    return load_bundle(MODEL)


def test_fifty_held_out_problems(bundle):
    """Vanilla decoding (steps = gen_length, block 32) on the first 50 of the 500 held-out problems of the card
    reaches at least the accuracy recorded for them at export (2 problems of slack for float differences)."""
    recorded = json.loads((assets_dir() / MODEL / "eval.json").read_text())
    problems = wp.make_problems(50, "test", seed=1)
    prompts = [bundle.encode_prompt(p.question) for p in problems]
    out = jdllm.generate(bundle.model, prompts, gen_length=bundle.gen_length, block_length=32,
                         steps=bundle.gen_length, remasking="low_confidence", temperature=0.0)
    answers = [bundle.decode_answer(row) for row in out.tokens]
    right = [wp.score(a, p.answer) for a, p in zip(answers, problems)]
    assert np.mean(right) >= recorded["accuracy_first50"] - 0.04, list(zip(answers, problems))
    pattern = re.compile(bundle.answer_pattern)
    assert np.mean([pattern.search(a) is not None for a in answers]) >= 0.9  # answers have the trained form


# Written before the shipped model was trained, one per frame and variant; no name or object is in the task's
# lists (`wp.NAMES`, `wp.OBJECTS`), and every one passes `wp.check_question`.
QUESTIONS = [  # (frame, question, answer): written before the model was trained; names and objects not in the task's lists
    ("present", "Bartholomew has 23 walnuts. He finds 48 more. Then he gives away 16. After that, he now has 3 times as many. How many walnuts does Bartholomew have now?", 165),
    ("present", "Xiomara has 640 postcards. She sells 35. Then she splits them into 5 equal piles and keeps one pile. How many postcards are left?", 121),
    ("past", "Gwendolyn had 17 acorns. She found 9 more. Then she lost 8. How many acorns did Gwendolyn have in the end?", 18),
    ("past", "Oluwaseun had 125 lemons. He sold 60. Then he ended up with 4 times as many. Later he ate 27 of them. How many lemons were left?", 233),
    ("container", "A crate has 42 pinecones. Siobhan puts in 19. Then she takes out 7. How many pinecones are in the crate now?", 54),
    ("container", "A jar has 305 buttons. Mateo removes 48. Then he adds 26 more. Next he takes 9 buttons out. How many buttons does the jar hold now?", 274),
    ("groups", "Priyanka has 7 boxes. Each box has 36 crayons. How many crayons are there in all?", 252),
    ("groups", "Henrique has 9 shelves. Each shelf has 84 books. He gives away 56. How many books does he have in total?", 700),
    ("sharing", "Kwame has 96 stickers. He shares them equally among 8 classmates. How many does each classmate get?", 12),
    ("sharing", "Esperanza has 45 lemons. She buys 39 more. Then she shares them equally among 6 cousins. How many lemons does each cousin get?", 14),
]


def test_questions_are_inside_the_trained_forms():
    for frame, question, answer in QUESTIONS:
        assert wp.check_question(question) is None, question
        parsed_frame, value, ops = wp.parse_question(question)
        assert parsed_frame == frame
        for op, n in ops:
            value = wp.apply_op(value, op, n)
        assert value == answer


def test_every_phrasing_with_unseen_names_through_the_cli(capsys):
    """The README's main job on the default model: each question answered right, no warning (exit 0)."""
    from jdllm.shipped import DEFAULT_MODEL

    if DEFAULT_MODEL != MODEL or not (assets_dir() / MODEL / "model.safetensors").exists():
        pytest.skip(f"{MODEL} is not the default model")
    assert main(["generate", "-q"] + [q for _, q, _ in QUESTIONS]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == len(QUESTIONS) and "warning" not in captured.err
    wrong = [(q, line) for (_, q, a), line in zip(QUESTIONS, lines) if not wp.score(line, str(a))]
    assert not wrong, wrong


def test_case_and_spacing_do_not_change_the_prompt(bundle):
    q = "Lily has 4 bags. Each bag has 6 cookies. How many cookies does Lily have?"
    messy = "  lily HAS 4 bags.   each bag has 6 COOKIES.\tHow many cookies does lily have?  "
    assert bundle.encode_prompt(q) == bundle.encode_prompt(messy)


def _bundle(**kw) -> Bundle:
    return Bundle(model=None, tokenizer=None, name="m", **kw)


def test_out_of_form_names_each_problem():
    b = _bundle(max_prompt_length=5, answer_pattern=r"#### \d+$")
    assert b.out_of_form([1, 2, 3], "2+2=4. #### 4") is None
    assert "6 tokens, more than the 5" in b.out_of_form([1] * 6, "2+2=4. #### 4")
    assert "empty answer" in b.out_of_form([1], "  ")
    assert "trained form" in b.out_of_form([1], "I like apples")
    assert _bundle().out_of_form([1] * 999, "anything") is None  # a model that declares nothing


def test_generate_warns_on_stderr_and_exits_zero(capsys):
    """The shipped arithmetic model was trained on prompts of at most 32 tokens: a longer one is answered, with a
    warning on stderr; a prompt inside the region gets none."""
    q = "Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?"
    assert main(["generate", "--model", "arith-llada-tiny", "-q", q]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["generate", "--model", "arith-llada-tiny", "-q", q + " " + q]) == 0
    captured = capsys.readouterr()
    assert "jdllm generate: warning:" in captured.err and "more than the 32" in captured.err


# ------------------------------------------------------------------------------------------- bench --sweep
def _dense_area(tpf, acc, floor):
    """Reference: the piecewise-linear curve sampled densely, clipped at the floor, integrated (numpy only)."""
    order = np.argsort(tpf, kind="stable")
    x, y = np.asarray(tpf, float)[order], np.asarray(acc, float)[order]
    grid = np.linspace(x[0], x[-1], 200_001)
    above = np.clip(np.interp(grid, x, y) - floor, 0, None)
    return float(np.sum((above[1:] + above[:-1]) / 2 * np.diff(grid)))


@pytest.mark.parametrize("tpf,acc", [([1, 2, 4], [90, 89, 60]), ([1, 1.5, 3, 6], [80, 82, 70, 90]),
                                     ([1, 2], [50, 10])])
def test_sweep_area_matches_its_definition(tpf, acc):
    from jdllm.bench.sweep import area_above_floor

    assert area_above_floor(tpf, acc, acc[0] - 5) == pytest.approx(_dense_area(tpf, acc, acc[0] - 5), abs=1e-3)


def test_sweep_summary():
    from jdllm.bench.sweep import summarize

    vanilla = {"accuracy": 0.90, "tpf": 1.0, "nfe": 64}
    pts = [{"accuracy": 0.895, "tpf": 2.0, "nfe": 32}, {"accuracy": 0.88, "tpf": 4.0, "nfe": 16},
           {"accuracy": 0.70, "tpf": 8.0, "nfe": 8}]
    s = summarize(vanilla, pts)
    assert s["fewest_nfe_within_1pt"] == 32  # 88% is 2 points below vanilla
    assert s["max_drop_points"] == pytest.approx(20)
    assert s["area"] == pytest.approx(_dense_area([1, 2, 4, 8], [90, 89.5, 88, 70], 85), abs=1e-3)


def test_every_sweep_grid_point_is_a_valid_setting():
    """Each knob value of every grid builds its jdllm.generate arguments (policy validation included), so a
    sweep cannot stop half-way on a setting its policy rejects."""
    from jdllm.bench.sweep import GRIDS
    from jdllm.validation import make_policy

    cfg = load_bundle().model.config
    for name, (_, grid, make) in GRIDS.items():
        for value in grid:
            kwargs = make(value, 64, cfg)  # policy objects validate when built
            if "policy" not in kwargs:  # threshold / factor: built by generate's keyword path
                make_policy(64, 32, 2, "low_confidence", kwargs.get("threshold"), kwargs.get("factor"), False,
                            gen_length=64)


@pytest.mark.slow
def test_sweep_end_to_end(tmp_path):
    """A two-point threshold sweep on the shipped model writes curves, summaries and a legible plot."""
    from jdllm.bench.sweep import GRIDS, plot_sweep, run_sweep

    knob, _, make = GRIDS["threshold"]
    report = run_sweep(load_bundle(), n=4, batch_size=4, gen_length=32,
                       grids={"threshold": (knob, (0.3, 0.9), make)})
    pts = report["curves"]["threshold"]
    assert [p["value"] for p in pts] == [0.3, 0.9] and pts[0]["nfe"] <= pts[1]["nfe"] <= report["vanilla"]["nfe"]
    assert set(report["summary"]["threshold"]) == {"fewest_nfe_within_1pt", "area", "max_drop_points"}
    plot_sweep(report, str(tmp_path / "sweep.png"))
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_training_focus_mask_marks_the_running_totals():
    """`jdllm train words --focus-rate`: the focus positions of each row are the digits of its running totals."""
    from jdllm.train.diffusion import problems_to_sft
    from jdllm.train.words import GEN_LEN, PROMPT_LEN, focus_mask

    tok = wp.word_tokenizer()
    problems = wp.make_problems(40, "train", seed=3)
    data = problems_to_sft(tok, problems, PROMPT_LEN, GEN_LEN, prompt_format=wp.format_prompt)
    focus = focus_mask(data, [p.answer_text for p in problems], tok.eos_id)
    assert not focus[:, :PROMPT_LEN].any()
    for r, p in enumerate(problems):
        marked = tok.decode(data.tokens[r][focus[r]].tolist()).replace(" ", "")
        totals = "".join(re.findall(r"=(\d{3})", p.answer_text))
        assert marked == totals, (marked, p.answer_text)


def test_drill_rows_are_the_chains_with_their_totals_in_focus():
    from jdllm.train.words import DRILL_PROMPT_LEN, drill_data

    tok = wp.word_tokenizer()
    problems = wp.make_problems(30, "train", seed=5)
    data = drill_data(tok, problems)
    for r, p in enumerate(problems):
        chain = p.answer_text[: p.answer_text.index("####") - 1]
        assert tok.decode(data.tokens[r, DRILL_PROMPT_LEN: DRILL_PROMPT_LEN + len(chain)].tolist()) == chain
        marked = tok.decode(data.tokens[r][data.focus_mask[r]].tolist())
        assert marked == "".join(re.findall(r"=(\d{3})", chain))
