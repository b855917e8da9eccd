"""jdllm.generate with Fast-dLLM's commit rules and caches == the numpy references, tokens and NFE.

Matrix: {top-k schedule, threshold 0.9, threshold 0.7, factor 1.0 (official quirk), factor 1.0 (intended)}
x {no cache, prefix cache, dual cache} x {LLaDA, Dream}. Each case decodes two prompts of the same length in one
call (no padding) and compares every row with the batch-1 reference. The reference caches follow jdllm's
documented form (see tests/reference/sampler.py): block-start full forward = 1 NFE that commits and (re)builds the
cache; in-block steps query [s - shift, L) (prefix) or [s - shift, e) (dual).
"""

from __future__ import annotations

import numpy as np
import pytest

import jdllm
from tests.helpers import (
    FAMILIES,
    FAST_BLOCK,
    FAST_GEN,
    FAST_PROMPTS,
    FAST_TOPK_STEPS,
    RULES,
    make_prompt,
    ref_kwargs,
    rule_steps,
)
from tests.reference import Diagnostics, fastdllm_generate

CACHES = [None, "prefix", "dual"]
# By default every rule runs without a cache and top-k / threshold 0.9 / factor quirk run with every cache; the
# other cached cases (threshold 0.7, intended factor) are marked slow (each case compiles one generate call).
_SLOW = {"thr0.7", "factor_intended"}
CASES = [
    pytest.param(r, c, f, id=f"{r}-{c}-{f}", marks=pytest.mark.slow if (r in _SLOW and c is not None) else ())
    for r in RULES for c in CACHES for f in FAMILIES
]


@pytest.mark.parametrize("rule,cache,family", CASES)
def test_fastdllm_matches_reference(family, cache, rule, jd_models, ref_models):
    ref = ref_models[family]
    steps = rule_steps(rule, FAST_GEN, FAST_BLOCK, FAST_TOPK_STEPS)
    want = []
    for prompt in FAST_PROMPTS:
        diag = Diagnostics()
        want.append(fastdllm_generate(ref, prompt, FAST_GEN, FAST_BLOCK, steps, cache=cache, diag=diag,
                                      **ref_kwargs(rule)))
        diag.assert_well_conditioned()
    out = jdllm.generate(
        jd_models[family], FAST_PROMPTS, gen_length=FAST_GEN, block_length=FAST_BLOCK, steps=steps,
        temperature=0.0, cache=cache, **RULES[rule],
    )
    tokens, nfe = np.asarray(out.tokens), np.asarray(out.nfe)
    assert tokens.shape == (len(FAST_PROMPTS), FAST_GEN) and nfe.shape == (len(FAST_PROMPTS),)
    for i, (want_tokens, want_nfe) in enumerate(want):
        np.testing.assert_array_equal(tokens[i], want_tokens, err_msg=f"row {i}: {family} {rule} cache={cache}")
        assert int(nfe[i]) == want_nfe, f"row {i}: nfe {int(nfe[i])} != reference {want_nfe}"


# edge cases: prompt of one token (Dream's extra query row is row 0), one-token blocks, steps > gen_length with a
# cache (zero quotas after the block is done), a left-padded batch mixing a 1-token and an 11-token prompt
_slow = pytest.mark.slow
EDGE = [
    pytest.param([make_prompt(9, 1), make_prompt(10, 11)], 16, 8, 2, dict(threshold=0.9, cache="dual"),
                 id="pad-1-11-dual"),
    pytest.param([make_prompt(7, 1)], 8, 8, 8, dict(threshold=0.9, cache="prefix"), id="len1-prefix", marks=_slow),
    pytest.param([make_prompt(8, 5)], 4, 1, 4, dict(cache="dual"), id="block1-dual", marks=_slow),
    pytest.param([make_prompt(8, 5)], 16, 8, 32, dict(cache="prefix"), id="steps>gen-prefix", marks=_slow),
    pytest.param([make_prompt(8, 5)], 16, 8, 32, dict(cache="dual"), id="steps>gen-dual", marks=_slow),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompts,gen_length,block_length,steps,kw", EDGE)
def test_edge_cases_match_reference(family, prompts, gen_length, block_length, steps, kw, jd_models, ref_models):
    out = jdllm.generate(jd_models[family], prompts, gen_length, block_length, steps, temperature=0.0, **kw)
    for i, p in enumerate(prompts):
        diag = Diagnostics()
        want, want_nfe = fastdllm_generate(ref_models[family], p, gen_length, block_length, steps, diag=diag,
                                           cache=kw.get("cache"), threshold=kw.get("threshold"))
        diag.assert_well_conditioned()
        np.testing.assert_array_equal(np.asarray(out.tokens)[i], want, err_msg=f"row {i} (prompt length {len(p)})")
        assert int(np.asarray(out.nfe)[i]) == want_nfe
