"""Batch invariance: three prompts of different lengths decoded alone and inside one left-padded batch give
identical tokens and per-row NFE (cache None / prefix / dual x threshold 0.9 / top-k), and both equal the
batch-1 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

import jdllm
from tests.helpers import (
    BATCH_BLOCK,
    BATCH_GEN,
    BATCH_PROMPTS,
    BATCH_TOPK_STEPS,
    FAMILIES,
    RULES,
    ref_kwargs,
    rule_steps,
)
from tests.reference import fastdllm_generate

CACHES = [None, "prefix", "dual"]
BATCH_RULES = ["thr0.9", "topk"]
# by default every cache and every (family, rule) pair runs once; the other 8 of the 12 cases are marked slow
# (each case compiles 4 generate calls: three batch-1 shapes and the padded batch)
DEFAULT = {
    ("llada", None, "thr0.9"), ("llada", "dual", "topk"),
    ("dream", "prefix", "topk"), ("dream", "dual", "thr0.9"),
}
CASES = [
    pytest.param(f, c, r, id=f"{f}-{c}-{r}", marks=() if (f, c, r) in DEFAULT else pytest.mark.slow)
    for f in FAMILIES for c in CACHES for r in BATCH_RULES
]

_results: dict = {}


def _run(model, family, rule, cache):
    """(alone: list of (tokens, nfe)), (batch: tokens [3, G], nfe [3]); computed once per case."""
    key = (family, rule, cache)
    if key not in _results:
        steps = rule_steps(rule, BATCH_GEN, BATCH_BLOCK, BATCH_TOPK_STEPS)
        kw = dict(gen_length=BATCH_GEN, block_length=BATCH_BLOCK, steps=steps, temperature=0.0, cache=cache,
                  **RULES[rule])
        alone = []
        for p in BATCH_PROMPTS:
            o = jdllm.generate(model, [p], **kw)
            alone.append((np.asarray(o.tokens)[0], int(np.asarray(o.nfe)[0])))
        o = jdllm.generate(model, BATCH_PROMPTS, **kw)
        _results[key] = (alone, (np.asarray(o.tokens), np.asarray(o.nfe)), o.iterations)
    return _results[key]


@pytest.mark.parametrize("family,cache,rule", CASES)
def test_alone_equals_batched(family, cache, rule, jd_models):
    alone, (tokens, nfe), _ = _run(jd_models[family], family, rule, cache)
    assert tokens.shape == (len(BATCH_PROMPTS), BATCH_GEN) and nfe.shape == (len(BATCH_PROMPTS),)
    for i, (t, n) in enumerate(alone):
        np.testing.assert_array_equal(tokens[i], t, err_msg=f"row {i} (prompt length {len(BATCH_PROMPTS[i])})")
        assert int(nfe[i]) == n, f"row {i}: batched nfe {int(nfe[i])} != alone {n}"


@pytest.mark.parametrize("family,cache,rule", CASES)
def test_batched_equals_reference(family, cache, rule, jd_models, ref_models):
    alone, (tokens, nfe), _ = _run(jd_models[family], family, rule, cache)
    steps = rule_steps(rule, BATCH_GEN, BATCH_BLOCK, BATCH_TOPK_STEPS)
    for i, p in enumerate(BATCH_PROMPTS):
        want, want_nfe = fastdllm_generate(ref_models[family], p, BATCH_GEN, BATCH_BLOCK, steps, cache=cache,
                                           **ref_kwargs(rule))
        np.testing.assert_array_equal(tokens[i], want, err_msg=f"row {i} (prompt length {len(p)})")
        assert int(nfe[i]) == want_nfe


@pytest.mark.parametrize("family,cache,rule", CASES)
def test_no_row_idles_in_a_batch(family, cache, rule, jd_models):
    """Rows refresh their caches at different iterations; the others step in the same iteration, so the batch
    takes exactly as many iterations as its slowest row (no iteration is spent idling)."""
    _, (_, nfe), iterations = _run(jd_models[family], family, rule, cache)
    assert iterations == int(nfe.max()), f"{iterations} iterations for a slowest row of {int(nfe.max())} NFE"


@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_six_ragged_rows_equal_alone_through_every_refresh_branch(cache, jd_models):
    """Six rows of different lengths finish blocks at different steps, so iterations refresh 1, 2, 3 (more than
    the largest sub-batch of 2... 4) or all rows: every branch of the partial refresh must give each row its
    batch-1 tokens and NFE."""
    model = jd_models["llada"]
    rng = np.random.default_rng(7)
    prompts = [list(rng.integers(3, 60, size=n)) for n in (3, 9, 5, 14, 7, 11)]
    kw = dict(gen_length=24, block_length=8, steps=24, threshold=0.6, cache=cache)
    batched = jdllm.generate(model, prompts, **kw)
    for i, p in enumerate(prompts):
        alone = jdllm.generate(model, [p], **kw)
        np.testing.assert_array_equal(batched.tokens[i], alone.tokens[0], err_msg=f"row {i}")
        assert int(batched.nfe[i]) == int(alone.nfe[0])
    assert batched.iterations == int(batched.nfe.max())
