"""What temperature does: sampled tokens follow softmax(logits / T) (LLaDA `generate.py`: argmax of
`add_gumbel_noise(logits, T)`, the Gumbel-max trick; the mask token is never proposed), and the confidence that
ranks them is the untempered softmax probability (LLaDA `get_transfer_index`: `p = F.softmax(logits)` of the
clean logits, gathered at the sampled token).

Frequencies are compared with the law by a chi-square goodness-of-fit test at a fixed seed; a correct sampler
passes with p far above the 1e-4 bound, and a sampler of the wrong law (T dropped, T applied twice) fails with
p below 1e-10 at these sample sizes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jdllm
from jdllm.decode.proposal import propose
from tests.helpers import make_prompt

P_PASS = 1e-4      # a correct sampler must not be rejected at this level
P_REJECT = 1e-10   # a sampler of another law must be


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 3.0], np.float64)  # id 5 is the mask: never proposed
MASK_ID = 5
N_SAMPLES = 20_000


def law(temperature: float) -> np.ndarray:
    """softmax(logits / T) over the proposable ids (the mask excluded and the rest renormalised)."""
    return softmax(LOGITS[:MASK_ID] / temperature)


def chi2_p(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    assert expected.min() >= 5, "chi-square needs >= 5 expected counts per cell"
    return float(stats.chisquare(counts, expected).pvalue)


def sample_counts(temperature: float, seed: int = 0) -> np.ndarray:
    """N_SAMPLES draws through `propose`: 4 rows (keys) x N_SAMPLES / 4 positions, all with LOGITS."""
    b = 4
    logits = jnp.broadcast_to(jnp.asarray(LOGITS, jnp.float32), (b, N_SAMPLES // b, LOGITS.size))
    keys = jax.random.split(jax.random.key(seed), b)
    tokens = np.asarray(propose(logits, temperature, keys, MASK_ID).tokens).ravel()
    assert not (tokens == MASK_ID).any()
    return np.bincount(tokens, minlength=LOGITS.size)[:MASK_ID]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_propose_samples_follow_tempered_softmax(temperature):
    counts = sample_counts(temperature)
    assert chi2_p(counts, law(temperature)) > P_PASS


def test_temperature_scaling_changes_the_law_as_predicted():
    """T = 0.5 samples reject the T = 2 law (and the T = 1 law) and vice versa; lower T concentrates the mass
    on the top token exactly as softmax(logits / T) predicts (checked above), here in direction too."""
    cold, hot = sample_counts(0.5), sample_counts(2.0)
    assert chi2_p(cold, law(2.0)) < P_REJECT and chi2_p(cold, law(1.0)) < P_REJECT
    assert chi2_p(hot, law(0.5)) < P_REJECT and chi2_p(hot, law(1.0)) < P_REJECT
    assert cold[0] / cold.sum() > law(1.0)[0] > hot[0] / hot.sum()


def test_zero_temperature_is_argmax_and_draws_no_noise():
    logits = jnp.asarray(np.tile(LOGITS, (2, 3, 1)), jnp.float32)
    tokens = np.asarray(propose(logits, 0.0, None, MASK_ID).tokens)
    np.testing.assert_array_equal(tokens, 0)  # id 0: the largest logit other than the mask's


def test_confidence_is_the_untempered_probability():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, (3, 64, 8))
    prop = propose(jnp.asarray(logits, jnp.float32), 2.0, jax.random.split(jax.random.key(1), 3), mask_id=7)
    tokens = np.asarray(prop.tokens)
    want = np.take_along_axis(softmax(logits), tokens[..., None], axis=-1)[..., 0]  # full vocab, T = 1
    np.testing.assert_allclose(np.asarray(prop.confidence), want, rtol=1e-5, atol=1e-7)
    assert len(np.unique(tokens)) > 1  # sampled, not argmax


def test_generate_samples_follow_tempered_softmax(llada_ckpt, ref_models, jd_models):
    """End to end: one generated token after a fixed prompt, many rows (row_ids 0..N-1, one seed): the
    first step commits the sampled token, whose law is softmax(reference logits / T) without the mask."""
    ref, model = ref_models["llada"], jd_models["llada"]
    prompt, temperature, n = make_prompt(3, 5), 2.0, 4000
    logits = ref(np.asarray([prompt + [ref.mask_id]]))[0, -1]
    probs = softmax(np.delete(logits, ref.mask_id) / temperature)
    out = jdllm.generate(model, [prompt] * n, gen_length=1, steps=1, temperature=temperature, seed=7,
                         row_ids=list(range(n)))
    tokens = out.tokens[:, 0]
    assert not (tokens == ref.mask_id).any()
    counts = np.bincount(np.where(tokens > ref.mask_id, tokens - 1, tokens), minlength=probs.size)
    counts, probs = pool_rare(counts, probs, n)
    assert chi2_p(counts, probs) > P_PASS


def pool_rare(counts, probs, n):
    """Merge the least likely cells into one until every cell expects >= 5 counts (chi-square's rule)."""
    order = np.argsort(probs)
    k = 0
    while k < len(order) and probs[order[:k]].sum() * n < 5 or (k < len(order) and probs[order[k]] * n < 5):
        k += 1
    keep, rest = order[k:], order[:k]
    return np.append(counts[keep], counts[rest].sum()), np.append(probs[keep], probs[rest].sum())
