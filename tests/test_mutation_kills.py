"""Tests written to kill surviving mutants of scripts/mutate.py (see benchmarks/results/mutation/): each one pins
a behaviour that no other fast test checked. Cheap: the tiny conftest checkpoints, few compiles."""

from __future__ import annotations

import numpy as np
import pytest

import jdllm
from jdllm.decode.caches.block_kv import DualCache, PrefixCache
from tests.helpers import SAMPLER_PROMPT
from tests.reference.sampler import llada_generate


@pytest.mark.parametrize("cache", [PrefixCache, DualCache])
def test_refresh_every_accepts_one_and_more_and_refuses_less(cache):
    for ok in (None, 1, 2, 7):
        assert cache(refresh_every=ok).refresh_every == ok
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"refresh_every must be >= 1 or None, got {bad}"):
            cache(refresh_every=bad)


def test_classifier_free_guidance_matches_llada_generate(jd_models, ref_models):
    """LLaDA generate.py with cfg_scale > 0: the unconditional copy masks the prompt, and the logits are
    un + (cfg_scale + 1) * (cond - un). Written here around the numpy reference model; greedy, batch 1."""
    ref, scale = ref_models["llada"], 1.5
    lp = len(SAMPLER_PROMPT)

    def cfg_forward(x):
        uncond = x.copy()
        uncond[:, :lp] = ref.mask_id
        cond, un = np.asarray(ref(x)), np.asarray(ref(uncond))
        return un + (scale + 1.0) * (cond - un)

    want, want_nfe = llada_generate(cfg_forward, SAMPLER_PROMPT, 16, 8, 8, ref.mask_id)
    plain, _ = llada_generate(ref, SAMPLER_PROMPT, 16, 8, 8, ref.mask_id)
    assert (want != plain).any()  # guidance changes the answer here, so the comparison can fail
    out = jdllm.generate(jd_models["llada"], [SAMPLER_PROMPT], gen_length=16, block_length=8, steps=8,
                         temperature=0.0, remasking="low_confidence", cfg_scale=scale)
    np.testing.assert_array_equal(np.asarray(out.tokens)[0], want)
    assert int(np.asarray(out.nfe)[0]) == want_nfe
