"""Greedy jdllm.generate (top-k low-confidence schedule, no cache) == LLaDA's generate.py reference, token for
token and NFE for NFE; LLaDA ("same" logits) and Dream ("shifted" logits, read from output i-1)."""

from __future__ import annotations

import numpy as np
import pytest

import jdllm
from tests.helpers import FAMILIES, SAMPLER_CONFIGS, SAMPLER_PROMPT
from tests.reference import Diagnostics, llada_generate


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gen_length,block_length,steps", SAMPLER_CONFIGS)
def test_greedy_generate_matches_llada_reference(family, gen_length, block_length, steps, jd_models, ref_models):
    ref = ref_models[family]
    diag = Diagnostics()
    want, want_nfe = llada_generate(
        ref, SAMPLER_PROMPT, gen_length, block_length, steps, ref.mask_id, shift=family == "dream", diag=diag
    )
    diag.assert_well_conditioned()
    out = jdllm.generate(
        jd_models[family], [SAMPLER_PROMPT], gen_length=gen_length, block_length=block_length, steps=steps,
        temperature=0.0, remasking="low_confidence",
    )
    tokens, nfe = np.asarray(out.tokens), np.asarray(out.nfe)
    assert tokens.shape == (1, gen_length)
    assert nfe.shape == (1,)
    np.testing.assert_array_equal(tokens[0], want, err_msg=f"{family} {gen_length}/{block_length}/{steps}")
    assert int(nfe[0]) == want_nfe


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_as_2d_array(family, jd_models, ref_models):
    """A 2-D int array of prompts is accepted and decoded like the equivalent list."""
    ref = ref_models[family]
    gen_length, block_length, steps = SAMPLER_CONFIGS[1]
    want, want_nfe = llada_generate(
        ref, SAMPLER_PROMPT, gen_length, block_length, steps, ref.mask_id, shift=family == "dream"
    )
    prompts = np.asarray([SAMPLER_PROMPT], dtype=np.int32)
    out = jdllm.generate(jd_models[family], prompts, gen_length, block_length, steps)
    np.testing.assert_array_equal(np.asarray(out.tokens)[0], want)
    assert int(np.asarray(out.nfe)[0]) == want_nfe
