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
from tests.helpers import FAMILIES, FAST_BLOCK, FAST_GEN, FAST_PROMPTS, FAST_TOPK_STEPS, RULES, ref_kwargs, rule_steps
from tests.reference import Diagnostics, fastdllm_generate

CACHES = [None, "prefix", "dual"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cache", CACHES, ids=lambda c: str(c))
@pytest.mark.parametrize("rule", list(RULES))
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
