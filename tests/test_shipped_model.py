"""The shipped default model: loads through the HF loader, solves held-out problems, answers from the CLI.

MIN_ACCURACY is the project's bar for the shipped checkpoint (>= 90% held-out with vanilla decoding; its
MODEL_CARD.md records what it reaches), so a broken loader, tokenizer or sampler fails here.
"""

import re
import subprocess
import sys

import numpy as np
import pytest

import jdllm
from jdllm.shipped import assets_dir, load_bundle
from jdllm.tasks.arithmetic import extract_answer, make_problems, score

MIN_ACCURACY = 0.90
README_QUESTION = "Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?"


@pytest.fixture(scope="module")
def bundle():
    return load_bundle("arith-llada-tiny")


def test_shipped_model_is_llada_layout_and_small():
    d = assets_dir() / "arith-llada-tiny"
    assert (d / "config.json").exists() and (d / "model.safetensors").exists() and (d / "tokenizer.json").exists()
    assert (d / "MODEL_CARD.md").exists()
    assert (d / "model.safetensors").stat().st_size < 20 * 2**20
    assert jdllm.load(d).config.family == "llada"


def test_vanilla_accuracy_on_50_held_out(bundle):
    problems = make_problems(50, split="test", seed=123)
    prompts = [bundle.encode_prompt(p.question) for p in problems]
    out = jdllm.generate(bundle.model, prompts, gen_length=bundle.gen_length, block_length=32, steps=bundle.gen_length)
    acc = np.mean([score(bundle.decode_answer(r), p.answer) for r, p in zip(out.tokens, problems)])
    assert acc >= MIN_ACCURACY, f"held-out accuracy {acc:.2f}"


def _cli_answer(question: str) -> str:
    res = subprocess.run([sys.executable, "-m", "jdllm.cli", "generate", "--model", "arith-llada-tiny", question], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _chain_is_correct(text: str) -> bool:
    """Every "a+b=c" / "a-b=c" of a worked answer holds and each step starts from the previous result."""
    steps = re.findall(r"(\d+)([+-])(\d+)=(\d+)", text)
    prev = None
    for a, op, b, c in steps:
        if (int(a) + int(b) if op == "+" else int(a) - int(b)) != int(c) or (prev is not None and int(a) != prev):
            return False
        prev = int(c)
    return bool(steps) and extract_answer(text) == str(prev)


def test_cli_generate_prints_correct_worked_answer():
    """The README's main job: `jdllm generate "<question>"` prints a correct worked answer, offline."""
    out = _cli_answer(README_QUESTION)
    assert "12+7=19" in out and "19-5=14" in out and extract_answer(out) == "14", out
    assert _chain_is_correct(out), out


def test_cli_generate_answers_a_held_out_question():
    p = make_problems(1, split="test", seed=7)[0]
    out = _cli_answer(p.question)
    assert _chain_is_correct(out), out
    assert score(out, p.answer), (p.question, out)
