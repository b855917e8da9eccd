"""lm-evaluation-harness: the `jdllm` model and the local tasks of the shipped model (`jdllm/eval/`).

The end-to-end test runs lm-eval's own command line offline (`python -m jdllm.eval`, i.e. `jdllm eval`) on both
local tasks and compares the generate_until accuracy with `jdllm bench`'s on the same problems and recipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'jdllm[eval]')")

from jdllm.eval import TASKS_DIR  # noqa: E402
from jdllm.eval.data import read_rows, task_rows  # noqa: E402
from jdllm.shipped import assets_dir  # noqa: E402

RECIPE = "fast_dllm_dual_parallel"
LIMIT = 50


def test_lm_eval_runs_offline_and_agrees_with_bench(tmp_path):
    from jdllm.bench import bench_recipe
    from jdllm.shipped import load_bundle
    from jdllm.tasks.arithmetic import make_problems

    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "jdllm.eval", "--model", "jdllm", "--model_args",
           f"pretrained={assets_dir() / 'arith-llada-tiny'},recipe={RECIPE},mc_num=8,mc_batch_size=8",
           "--tasks", "jdllm_arith,jdllm_arith_mc", "--include_path", str(TASKS_DIR), "--batch_size", "25",
           "--limit", str(LIMIT), "--output_path", str(tmp_path / "out")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "jdllm_arith" in r.stdout and "exact_match" in r.stdout and "acc" in r.stdout  # lm-eval's table
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    lm_eval_acc = results["jdllm_arith"]["exact_match,strict-match"]
    mc_acc = results["jdllm_arith_mc"]["acc,none"]
    # the speed figures of generate_until are logged
    assert "generated tokens" in r.stderr and "tokens/s" in r.stderr and "mean NFE" in r.stderr
    assert "tokens per forward" in r.stderr

    bundle = load_bundle("arith-llada-tiny")
    row = bench_recipe(bundle, RECIPE, make_problems(LIMIT, split="test", seed=0), bundle.gen_length, 25)
    assert abs(lm_eval_acc - row["accuracy"]) <= 0.02, (lm_eval_acc, row["accuracy"])
    assert lm_eval_acc >= 0.9
    assert mc_acc >= 0.8  # the right worked answer ranks first on most items (chance: 0.25)


def test_task_data_is_what_the_generator_makes():
    assert read_rows() == task_rows(len(read_rows()))
    rows = read_rows()
    assert all(r["choices"][r["label"]] == r["answer_text"] and len(set(r["choices"])) == 4 for r in rows)
    finals = [{c.rsplit(" ", 1)[1] for c in r["choices"]} for r in rows]
    assert all(len(f) == 4 for f in finals)  # four distinct final numbers per item


def test_mask_counts_follow_llada_forward_process():
    from jdllm.eval.harness import mask_counts

    for k, t_len, b in [(1, 5, 4), (5, 5, 4), (3, 7, 32), (7, 7, 7), (2, 1, 8)]:
        # eval_llada.py: x = round(linspace(k, k + (b-1) * (T/b), b)); x = ((x - 1) % T) + 1
        x = np.round(np.linspace(float(k), k + (b - 1) * (t_len / b), b)).astype(int)
        assert mask_counts(k, t_len, b).tolist() == (((x - 1) % t_len) + 1).tolist()
        assert mask_counts(k, t_len, b).min() >= 1 and mask_counts(k, t_len, b).max() <= t_len


@pytest.fixture(scope="module")
def lm():
    from jdllm.eval.harness import JdllmLM

    return JdllmLM(pretrained=str(assets_dir() / "arith-llada-tiny"), mc_num=8, mc_batch_size=4, batch_size=4)


def test_one_token_elbo_is_the_exact_log_probability(lm):
    """With one continuation token every draw masks it with weight T / x = 1, so the estimate is exactly
    log softmax(logits)[token] at that position with the token masked (checked against the reference model)."""
    from tests.reference.checkpoints import read_checkpoint
    from tests.reference.model import RefModel

    ref = RefModel(*read_checkpoint(assets_dir() / "arith-llada-tiny"))
    prefix = lm.bundle.tokenizer.encode("Tom has 12 apples. He buys 7. How many apples does Tom have?\n")
    target = lm.bundle.tokenizer.encode("12")
    assert len(target) == 1
    seq = np.asarray([prefix + [lm.bundle.model.config.mask_id]])
    logits = np.asarray(ref(seq), np.float64)[0, len(prefix)]
    logits = logits - logits.max()
    expected = logits[target[0]] - np.log(np.exp(logits).sum())
    got = lm.masked_elbo(prefix, target, np.random.default_rng(0))
    assert got == pytest.approx(expected, abs=2e-4)


def test_choices_of_one_context_share_their_draws(lm):
    """Common random numbers: the same (context, continuation) twice gives the same estimate."""
    from lm_eval.api.instance import Instance

    ctx = "Tom has 12 apples. He buys 7. How many apples does Tom have?\n"
    reqs = [Instance("loglikelihood", {}, (ctx, c), i) for i, c in enumerate(["12+7=19. #### 19", "12+7=19. #### 19",
                                                                             "12+7=20. #### 20"])]
    (a, _), (b, _), (c, _) = lm.loglikelihood(reqs)
    assert a == b and a > c


def test_rolling_one_token_text_is_its_exact_log_probability(lm):
    """A one-token text with no context: every draw masks it, so the rolling log-likelihood is exactly
    log softmax(logits)[token] of the reference model on a lone mask."""
    from lm_eval.api.instance import Instance

    from tests.reference.checkpoints import read_checkpoint
    from tests.reference.model import RefModel

    ref = RefModel(*read_checkpoint(assets_dir() / "arith-llada-tiny"))
    (token,) = lm.bundle.tokenizer.encode("12")
    logits = np.asarray(ref(np.asarray([[lm.bundle.model.config.mask_id]])), np.float64)[0, 0]
    logits = logits - logits.max()
    expected = logits[token] - np.log(np.exp(logits).sum())
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("12",), 0)])
    assert got == pytest.approx(expected, abs=2e-4)


def test_rolling_windows_cover_every_token_once():
    """Each token is a target of exactly one window, in order; every window fits in max_length, its prefix is
    the tokens right before its target, and after the first window that prefix is at least half a window."""
    from jdllm.eval.harness import JdllmLM

    for width in (4, 7, 8):
        lm = JdllmLM(pretrained=str(assets_dir() / "arith-llada-tiny"), mc_num=4, mc_batch_size=4, max_length=width)
        for n in (1, 3, width, width + 1, 3 * width + 2):
            ids = list(range(100, 100 + n))
            windows = lm.rolling_windows(ids)
            assert [t for _, target in windows for t in target] == ids
            pos = 0
            for k, (prefix, target) in enumerate(windows):
                assert target and len(prefix) + len(target) <= width
                assert prefix == ids[pos - len(prefix): pos] if prefix else k == 0
                assert k == 0 or len(prefix) >= width // 2
                pos += len(target)


def test_rolling_sums_its_windows_and_prefers_real_text():
    """A text longer than max_length: the sum of its windows' ELBOs (no error, nothing cut), and the model's own
    kind of text scores higher than the same characters shuffled."""
    from lm_eval.api.instance import Instance

    from jdllm.eval.harness import JdllmLM, context_key

    lm = JdllmLM(pretrained=str(assets_dir() / "arith-llada-tiny"), mc_num=8, mc_batch_size=4, max_length=8)
    text = "Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?"
    ids = lm.bundle.tokenizer.encode(text)
    assert len(ids) > 16
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    parts = [lm.masked_elbo(p, t, np.random.default_rng([lm.seed, context_key(p + t)]))
             for p, t in lm.rolling_windows(ids)]
    assert total == pytest.approx(sum(parts), rel=1e-5) and len(parts) >= 4
    shuffled = "".join(np.random.default_rng(0).permutation(list(text)))
    (worse,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (shuffled,), 0)])
    assert worse < total


def test_generate_until_batches_cuts_at_stops_and_keeps_order(lm):
    from lm_eval.api.instance import Instance

    rows = read_rows()[:5]
    reqs = [Instance("generate_until", {}, (r["question"] + "\n", {"until": ["\n"], "max_gen_toks": 32}), i)
            for i, r in enumerate(rows)]
    reqs.append(Instance("generate_until", {}, (rows[0]["question"] + "\n", {"until": ["=", "####"]}), 5))
    out = lm.generate_until(reqs)
    assert [o.rsplit("#### ", 1)[-1] for o in out[:5]] == [r["answer"] for r in rows]
    assert out[5] == rows[0]["answer_text"].split("=")[0]  # cut before the first stop string
    assert lm.stats["prompts"] == 1 and lm.stats["nfe"] >= 1  # the last group: one prompt


def test_model_args_are_checked_and_merged_with_the_recipe():
    from jdllm.eval.harness import JdllmLM

    with pytest.raises(TypeError, match="unknown keyword 'treshold'"):
        JdllmLM(treshold=0.9)
    with pytest.raises(ValueError, match="mc_num"):
        JdllmLM(mc_num=10, mc_batch_size=4)
    m = JdllmLM(recipe=RECIPE, threshold=0.5, cache="none")
    kw = m.decode_kwargs(32)
    assert kw["threshold"] == 0.5 and kw.get("cache") is None  # given keywords replace the recipe's axis choice
    with pytest.raises(ValueError, match="threshold"):
        JdllmLM(threshold=1.5)
