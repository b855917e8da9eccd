"""Dream (`DreamAlgorithm`) against the official `diffusion_generate` formulas.

References: ``tests/reference/dream_sampler.py`` (written from `_sample` / `sample_tokens` of Dream's
`generation_utils.py`, with its own exact-rational linspace) and values produced by torch 2.13 CPU, pinned below
as float32 hex. Covers the schedule (linspace, per-step counts), the three confidences (the entropy's 1e-10,
tempered probabilities at T > 0) and token / NFE exactness of all four algorithms on the tiny Dream checkpoint.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdllm
from jdllm.decode.policies import CommitPolicy, DreamAlgorithm, StepContext
from jdllm.decode.policies.dream import dream_counts, torch_linspace_f32
from jdllm.decode.proposal import propose
from tests.reference import dream_sampler

# torch.linspace(1, 1e-3, 49) (float32, CPU). Indices 14 .. 35 are where rounding `step * i` to float32 before
# adding (instead of torch's single rounding) gives a different value.
TORCH_LINSPACE_1_1EM3_49 = {
    0: "0x1.0000000000000p+0", 14: "0x1.6ad0e60000000p-1", 18: "0x1.4031260000000p-1",
    24: "0x1.00418a0000000p-1", 25: "0x1.eb33340000000p-2", 27: "0x1.c093760000000p-2",
    28: "0x1.ab43960000000p-2", 30: "0x1.80a3d80000000p-2", 33: "0x1.40b43a0000000p-2",
    35: "0x1.16147c0000000p-2", 48: "0x1.0624de0000000p-10",
}

# Per-step counts of the official loop run in torch (batch of 3 rows, `int(mask_index.sum() / 3 * (1 - s / t))`).
# With eps = 0.2 the double-rounded linspace moves a token between steps 12 and 13 (48, 48) / (48, 16).
TORCH_COUNTS = {
    (48, 48, 0.2): [0] * 12 + [1, 0] + [1] * 33 + [14],
    (48, 16, 0.2): [2] * 12 + [3, 2, 3, 16],
    (48, 12, 1e-3): [3] + [4] * 10 + [5],
    (48, 48, 1e-3): [0] + [1] * 46 + [2],
}

PROMPTS = [[5, 9, 13, 2, 7], [33, 4], [21, 40, 11]]  # ragged: left-padded into one batch


def test_linspace_matches_torch_values():
    for impl in (torch_linspace_f32, dream_sampler.torch_linspace_f32):
        ts = impl(1.0, 1e-3, 49)
        assert ts.dtype == np.float32
        for i, want in TORCH_LINSPACE_1_1EM3_49.items():
            assert float(ts[i]).hex() == want, f"{impl.__module__} index {i}"


@pytest.mark.parametrize("start, end, n", [(1.0, 1e-3, 2), (1.0, 1e-3, 513), (1.0, 0.2, 49), (0.3, -2.7, 37),
                                           (1.0, 1e-7, 1025), (1.0, 0.999, 11)])
def test_linspace_agrees_with_exact_rounding(start, end, n):
    np.testing.assert_array_equal(torch_linspace_f32(start, end, n), dream_sampler.torch_linspace_f32(start, end, n))


@pytest.mark.parametrize("key", sorted(TORCH_COUNTS))
def test_counts_match_torch(key):
    gen_length, steps, eps = key
    assert list(dream_counts(gen_length, steps, eps)) == TORCH_COUNTS[key]
    assert dream_sampler.count_sequence(gen_length, steps, eps) == TORCH_COUNTS[key]
    assert list(DreamAlgorithm("entropy", steps, gen_length, eps=eps).counts) == TORCH_COUNTS[key]


# ----------------------------------------------------------------------------------------------------------
# confidences (policy level, no model)


def _ctx(rows, step=0, temperature=0.0):
    return StepContext(step_in_block=jnp.full((rows,), step, jnp.int32), block_start=jnp.full((rows,), step == 0),
                       keys=jax.random.split(jax.random.key(0), rows), temperature=temperature)


def _top_n(score, n):
    """Commit mask of the n highest scores per row (ties to the lower position)."""
    out = np.zeros(score.shape, bool)
    for b in range(score.shape[0]):
        out[b, np.argsort(-score[b], kind="stable")[:n]] = True
    return out


def _entropy_case():
    """Two near-certain positions whose order flips with the 1e-10 inside Dream's log: position 0 has 63 tokens
    at p = 1e-12, position 1 one token at p = 7e-11 (the rest at e^-60, tiny but not 0, so that log(p) stays
    finite without the epsilon); positions 2, 3 are uniform (clearly last)."""
    v = 64
    lp = np.full((1, 4, v), -np.log(v), np.float32)
    lp[0, 0] = np.log(1e-12)
    lp[0, 0, 0] = np.log1p(-63e-12)
    lp[0, 1] = -60.0
    lp[0, 1, 0], lp[0, 1, 1] = np.log1p(-7e-11), np.log(7e-11)
    return lp


def test_entropy_uses_the_epsilon_inside_the_log():
    lp = _entropy_case()
    official = dream_sampler.sample_tokens_confidence(lp[0], np.zeros(4, int), 0.0, "entropy")
    probs = dream_sampler.softmax_f32(lp[0])
    no_eps = np.sum(probs * np.log(probs), axis=-1)  # sum p log p, float32 probabilities, no epsilon
    exact = np.sum(np.exp(lp[0]) * lp[0], axis=-1)  # sum p log p with exact log-probabilities
    assert official[0] > official[1] and no_eps[0] < no_eps[1] and exact[0] < exact[1]  # the case tells them apart
    policy = DreamAlgorithm("entropy", steps=2, gen_length=4)
    assert policy.counts[0] == 1
    proposal = propose(jnp.asarray(lp), 0.0, None, mask_id=63)
    got, _ = policy.select(proposal, jnp.ones((1, 4), bool), _ctx(1), ())
    np.testing.assert_array_equal(np.asarray(got), _top_n(official[None], 1))


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_confidence_uses_tempered_probabilities(alg):
    """At T > 0 `sample_tokens` scores with softmax(logits / T) and the drawn token (here: the proposal's)."""
    rows, width, vocab, temperature = 8, 16, 64, 0.5
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((rows, width, vocab)) * rng.uniform(0.5, 3.0, (rows, width, 1))).astype(np.float32)
    tokens = rng.integers(0, vocab - 1, (rows, width))
    policy = DreamAlgorithm(alg, steps=4, gen_length=width)
    n = policy.counts[0]
    proposal = propose(jnp.asarray(logits), 0.0, None, mask_id=vocab - 1).replace(tokens=jnp.asarray(tokens, jnp.int32))
    tempered = dream_sampler.sample_tokens_confidence(logits, tokens, temperature, alg)
    untempered = dream_sampler.sample_tokens_confidence(logits, tokens, 0.0, alg)
    assert (_top_n(tempered, n) != _top_n(untempered, n)).any()  # the temperature changes the choice here
    got, _ = policy.select(proposal, jnp.ones((rows, width), bool), _ctx(rows, temperature=temperature), ())
    np.testing.assert_array_equal(np.asarray(got), _top_n(tempered, n))


@dataclasses.dataclass(frozen=True)
class _RequireTemperature(CommitPolicy):
    """Commits everything; fails at trace time unless the loop hands it the decode's temperature."""

    expected: float

    def select(self, proposal, candidates, ctx, state):
        if ctx.temperature != self.expected:
            raise AssertionError(f"policy saw temperature {ctx.temperature}, decode runs at {self.expected}")
        return candidates, state


def test_loop_passes_the_temperature_to_policies(jd_models):
    out = jdllm.generate(jd_models["dream"], [[5, 9]], gen_length=4, block_length=4, steps=1, temperature=0.7,
                         policy=_RequireTemperature(0.7))
    assert int(out.nfe[0]) == 1


# ----------------------------------------------------------------------------------------------------------
# token and NFE exactness on the tiny Dream checkpoint


def jdllm_origin_uniforms(seed: int, n_rows: int, gen_length: int, prompt_width: int):
    """The draws jdllm's "origin" compares with 1 - s / t, in the layout of `torch.rand(n_masked)`.

    jdllm's stream: row key = fold_in(key(seed), row id) (row ids 0..B-1), step key = fold_in(row key, nfe)
    (nfe = forwards the row has run, = Dream's step i), origin draw = uniform(fold_in(step key, 3), (gen_length,)),
    one per window position. The official code draws one uniform per masked position of the canvas, row-major.
    """
    base = jax.random.key(seed)

    def rand(i, mask_index):
        draws = []
        for b in range(n_rows):
            step_key = jax.random.fold_in(jax.random.fold_in(base, b), i)
            u = np.asarray(jax.random.uniform(jax.random.fold_in(step_key, 3), (gen_length,)))
            cols = np.flatnonzero(mask_index[b])
            assert (cols >= prompt_width).all(), "no mask inside a prompt"
            draws.append(u[cols - prompt_width])
        return np.concatenate(draws).astype(np.float32)

    return rand


@pytest.mark.parametrize("steps", [12, 48])
@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy", "origin"])
def test_token_exact_with_official_sample(ref_models, jd_models, alg, steps):
    """jdllm + DreamAlgorithm vs the official-formula reference, ragged batch of 3, gen_length 48."""
    gen_length, seed = 48, 0
    ref, model = ref_models["dream"], jd_models["dream"]
    pad_id = model.config.pad_id
    rand = jdllm_origin_uniforms(seed, len(PROMPTS), gen_length, max(map(len, PROMPTS)))
    want = dream_sampler.dream_sample(ref, PROMPTS, gen_length, steps, alg, pad_id=pad_id,
                                      rand=rand if alg == "origin" else None)
    want.diag.assert_well_conditioned()
    out = jdllm.generate(model, PROMPTS, gen_length=gen_length, block_length=gen_length, steps=steps, seed=seed,
                         policy=DreamAlgorithm(alg, steps, gen_length))
    np.testing.assert_array_equal(out.tokens, want.tokens, err_msg=f"{alg} steps={steps}")
    # The official loop always runs `steps` forwards; jdllm stops a row once it has no mask left ("origin" can
    # finish early; the top-n algorithms commit their last mask at the last step).
    assert want.nfe == steps
    assert out.nfe.tolist() == want.forwards_until_done
    if alg != "origin":
        assert out.nfe.tolist() == [steps] * len(PROMPTS)


@pytest.mark.slow
@pytest.mark.parametrize("alg, steps", [("entropy", 48), ("maskgit_plus", 16)])
def test_token_exact_where_the_linspace_rounding_matters(ref_models, jd_models, alg, steps):
    """eps = 0.2: the count sequence depends on torch's single rounding (see TORCH_COUNTS)."""
    gen_length, eps = 48, 0.2
    ref, model = ref_models["dream"], jd_models["dream"]
    want = dream_sampler.dream_sample(ref, PROMPTS, gen_length, steps, alg, eps=eps, pad_id=model.config.pad_id)
    want.diag.assert_well_conditioned()
    out = jdllm.generate(model, PROMPTS, gen_length=gen_length, block_length=gen_length, steps=steps,
                         policy=DreamAlgorithm(alg, steps, gen_length, eps=eps))
    np.testing.assert_array_equal(out.tokens, want.tokens)
