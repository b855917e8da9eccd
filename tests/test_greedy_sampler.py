"""The training loop's greedy evaluation sampler (`jdllm.train.diffusion.make_greedy_sampler`) is LLaDA's
`generate.py` at temperature 0 with low-confidence remasking: token for token against the numpy reference on
the tiny LLaDA checkpoint (replaces test_train.py::test_greedy_sampler_commits_one_token_per_step, which
checked shapes only)."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from jdllm.train.diffusion import make_greedy_sampler
from tests.helpers import SAMPLER_PROMPT
from tests.reference import Diagnostics, llada_generate


@pytest.mark.parametrize("gen_length,block_length,steps", [(16, 8, 8), (16, 16, 5)])
def test_greedy_sampler_matches_llada_reference(gen_length, block_length, steps, jd_models, ref_models):
    ref, model = ref_models["llada"], jd_models["llada"]
    diag = Diagnostics()
    want, _ = llada_generate(ref, SAMPLER_PROMPT, gen_length, block_length, steps, ref.mask_id, diag=diag)
    diag.assert_well_conditioned()
    graphdef, params = nnx.split(model)
    sample = make_greedy_sampler(graphdef, ref.mask_id, gen_length=gen_length, block_length=block_length,
                                 steps=steps)
    prompt = np.asarray([SAMPLER_PROMPT], np.int32)
    got = np.asarray(sample(params, prompt, np.ones_like(prompt, bool)))
    np.testing.assert_array_equal(got[0], want)
