"""The shipped default model: loads through the HF loader, solves held-out problems, answers from the CLI.

MIN_ACCURACY is the accuracy the shipped checkpoint is known to reach (see its MODEL_CARD.md) less a margin, so
a broken loader or sampler fails here. It is below the 90% the project aims for: the current checkpoint was
trained for a few CPU minutes and does not reach that yet (see the model card).
"""

import subprocess
import sys

import numpy as np
import pytest

import jdllm
from jdllm.shipped import default_model_dir, load_bundle
from jdllm.tasks.arithmetic import extract_answer, make_problems, score

MIN_ACCURACY = 0.08  # the shipped checkpoint scores 0.18 on these 50 problems (12.8% on 500)


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


def test_shipped_model_is_llada_layout_and_small():
    d = default_model_dir()
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


def test_cli_generate_prints_worked_answer(bundle):
    p = make_problems(1, split="test", seed=7)[0]
    res = subprocess.run([sys.executable, "-m", "jdllm.cli", "generate", p.question], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    answer = extract_answer(res.stdout)
    assert answer is not None and answer.isdigit(), res.stdout  # a worked answer ending in "#### N"
    assert "=" in res.stdout.split("####")[0], res.stdout
