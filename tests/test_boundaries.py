"""Exact-boundary cases for every comparison in the commit policies.

Random float profiles never land exactly on a threshold, so `>=` vs `>` (or `<` vs `<=`) cannot be told apart
by them. Here every profile is built from dyadic values (0.5, 0.75, 0.875, ...) whose sums and means are exact
in float32, so the compared quantity equals the threshold bit for bit, and each test asserts the side the paper
or the official code puts the boundary on (cited per test). `below(x)` is the next float32 under x.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdllm.decode.policies import (
    KLASS, R2, DreamAlgorithm, EntropyBounded, Factor, Frechet, LocalLeap, Prophet, StepContext, TemporalSpatial,
    Threshold, TopK,
)
from jdllm.decode.proposal import Proposal


def below(x: float) -> float:
    return float(np.nextafter(np.float32(x), np.float32(-np.inf)))


def proposal(conf, tokens=None, neg_entropy=None, log_probs=None) -> Proposal:
    conf = jnp.asarray(conf, jnp.float32)
    z = jnp.zeros_like(conf)
    return Proposal(
        tokens=jnp.zeros(conf.shape, jnp.int32) if tokens is None else jnp.asarray(tokens, jnp.int32),
        confidence=conf,
        neg_entropy=z if neg_entropy is None else jnp.asarray(neg_entropy, jnp.float32),
        margin=z,
        log_probs=z[..., None] if log_probs is None else jnp.asarray(log_probs, jnp.float32),
    )


def ctx(b: int, step=0) -> StepContext:
    step = np.broadcast_to(np.asarray(step), (b,))
    return StepContext(step_in_block=jnp.asarray(step, jnp.int32), block_start=jnp.asarray(step == 0),
                       keys=jax.random.split(jax.random.key(0), b))


def select(policy, prop, cand=None, step=0, state=None):
    """policy.select under jit; all positions are candidates unless `cand` is given. Returns (commit, state)."""
    b, w = prop.confidence.shape
    cand = jnp.ones((b, w), bool) if cand is None else jnp.asarray(cand, bool)
    state = policy.init_state(b, w) if state is None else state
    commit, state = jax.jit(policy.select)(prop, cand, ctx(b, step), state)
    return np.asarray(commit), state


def rows(*idx_sets, width):
    out = np.zeros((len(idx_sets), width), bool)
    for r, idx in enumerate(idx_sets):
        out[r, list(idx)] = True
    return out


# ----------------------------------------------------------------------------------------------------------
# Fast-dLLM threshold: `get_transfer_index` drops rank k >= 1 iff `confidence < threshold`, so conf == tau
# commits (>=); rank 0 always commits.


def test_threshold_commits_confidence_equal_to_tau():
    conf = [[0.75, below(0.75), 0.875, 0.5],
            [0.5, 0.5, 0.25, 0.125]]  # nothing passes: only the most confident (ties -> lower position)
    got, _ = select(Threshold(0.75), proposal(conf))
    np.testing.assert_array_equal(got, rows({0, 2}, {0}, width=4))


# ----------------------------------------------------------------------------------------------------------
# Fast-dLLM factor: `get_transfer_index_dynamic` breaks at the first rank n with `c_(n) < 1 - f / (n + 1)`,
# so c_(n) equal to the bar passes (>=). f = 1.5, n = 2: bar 0.5; n = 3: bar 0.625.


@pytest.mark.parametrize("quirk", [True, False])
def test_factor_bar_is_inclusive(quirk):
    conf = [[0.875, 0.5, 0.25, 0.25],          # rank 2 on the bar: passes; rank 3 fails (not the last)
            [0.875, below(0.5), 0.25, 0.25]]   # rank 2 just under: only rank 1
    got, _ = select(Factor(1.5, quirk=quirk), proposal(conf))
    np.testing.assert_array_equal(got, rows({0, 1}, {0}, width=4))


def test_factor_bar_at_rank_three_with_f_one():
    """f = 1, n = 3: bar 1 - 1/4 = 0.75 (n = 2's bar 2/3 is passed by 0.875)."""
    conf = [[0.875, 0.875, 0.75, 0.25, 0.25], [0.875, 0.875, below(0.75), 0.25, 0.25]]
    got, _ = select(Factor(1.0), proposal(conf))
    np.testing.assert_array_equal(got, rows({0, 1, 2}, {0, 1}, width=5))


def test_factor_quirk_commits_the_last_failing_candidate():
    """Fast-dLLM v1: `if top_i == 0 or top_i == n - 1: top_i += 1` (first failing rank is the last one)."""
    conf = [[0.875, 0.5, 0.25]]
    assert select(Factor(1.5, quirk=True), proposal(conf))[0].sum() == 3
    assert select(Factor(1.5, quirk=False), proposal(conf))[0].sum() == 2


# ----------------------------------------------------------------------------------------------------------
# Fast-dLLM++ Fréchet: `topn = (score > margin).sum()` with score = L_n - U_n: G_n == delta does NOT pass.


def test_frechet_gap_equal_to_delta_does_not_pass():
    # n = 2: L = 1 + 0.625 - 1 = 0.625, U = 0.375, G = 0.25 == delta -> n* = 1
    # n = 2: L = 0.75, U = 0.25, G = 0.5 > delta; n = 3: L = 2.5 - 2 = 0.5, U = 0.25, G = 0.25 -> n* = 2
    conf = [[1.0, 0.625, 0.125, 0.125], [1.0, 0.75, 0.75, 0.125]]
    got, _ = select(Frechet(0.25), proposal(conf))
    np.testing.assert_array_equal(got, rows({0}, {0, 1}, width=4))


def test_frechet_zero_delta_boundary():
    """delta = 0 (the paper's Theorem 4.1 condition L_n > U_n): equal confidences 2/3 are not exact, so use
    c = (1, 0.5): L_2 = 0.5, U_2 = 0.5, G_2 = 0 -> not committed; (1, 0.5 + 2^-4) is."""
    conf = [[1.0, 0.5, 0.0], [1.0, 0.5625, 0.0]]
    got, _ = select(Frechet(0.0), proposal(conf))
    np.testing.assert_array_equal(got, rows({0}, {0, 1}, width=3))


# ----------------------------------------------------------------------------------------------------------
# R²-dLLM (GATECH-EIC/R2-dLLM llada/generate.py, generate_with_dual_cache):
#   _run_window_sweep: `if unmasked_count > window_allow_unmasked_max: continue`; `if avg_conf >= threshold`
#   _apply_temporal_consistency: `if max_conf_val <= window_threshold: continue` (strict >), run length >= 2,
#       "confidence": torch.max (first maximum), "mid": streak_len // 2
#   maybe_auto_confirm: `counts >= auto_confirm_steps` and `eval_values >= auto_confirm_conf_threshold`

R2_BASE = dict(tau=0.9375, token_cluster=False, temporal_steps=0)


def test_r2_window_mean_equal_to_threshold_commits_and_decoded_count_is_inclusive():
    # rule 0 commits position 0 (most confident, below tau); window [0, 3) then holds 1 decoded token (== the
    # allowed maximum) and masked confidences 0.875, 0.625 with mean exactly 0.75.
    conf = [[0.90625, 0.875, 0.625, 0.125, 0.125, 0.125],
            [0.90625, 0.875, 0.625 - 2.0 ** -20, 0.125, 0.125, 0.125]]  # (below(0.625) would round back)
    got, _ = select(R2(window=3, window_mean=0.75, max_decoded_in_window=1, **R2_BASE), proposal(conf))
    np.testing.assert_array_equal(got, rows({0, 1, 2}, {0}, width=6))
    got, _ = select(R2(window=3, window_mean=0.75, max_decoded_in_window=0, **R2_BASE), proposal(conf))
    np.testing.assert_array_equal(got, rows({0}, {0}, width=6))


CLUSTER = dict(tau=0.9375, window=7, window_mean=0.75, temporal_steps=0)  # window > width: sweep off, cluster on


def test_r2_token_cluster_needs_max_confidence_strictly_above_threshold():
    tokens = [[1, 2, 2, 3, 4, 5]] * 2
    conf = [[0.875, 0.75, 0.5, 0.125, 0.125, 0.125],     # run {1, 2}: max 0.75 == threshold -> no commit
            [0.875, 0.8125, 0.5, 0.125, 0.125, 0.125]]   # max 0.8125 > threshold -> commit position 1
    got, _ = select(R2(token_cluster="confidence", **CLUSTER), proposal(conf, tokens))
    np.testing.assert_array_equal(got, rows({0}, {0, 1}, width=6))


def test_r2_token_cluster_run_length_and_pick():
    tokens = [[1, 2, 2, 2, 4, 5], [1, 2, 2, 3, 4, 5]]
    conf = [[0.875, 0.5, 0.8125, 0.8125, 0.125, 0.125],   # run of 3, tied maxima at 2 and 3: the first
            [0.875, 0.5, 0.8125, 0.125, 0.125, 0.125]]    # run of 2
    got, _ = select(R2(token_cluster="confidence", cluster_size=2, **CLUSTER), proposal(conf, tokens))
    np.testing.assert_array_equal(got, rows({0, 2}, {0, 2}, width=6))
    got, _ = select(R2(token_cluster="confidence", cluster_size=3, **CLUSTER), proposal(conf, tokens))
    np.testing.assert_array_equal(got, rows({0, 2}, {0}, width=6))
    got, _ = select(R2(token_cluster="mid", cluster_size=2, **CLUSTER), proposal(conf, tokens))
    np.testing.assert_array_equal(got, rows({0, 2}, {0, 2}, width=6))  # start 1 + 3 // 2 = 2; 1 + 2 // 2 = 2


def _r2_two_steps(policy, conf0, conf1):
    """Two steps of one row with constant tokens; step 1's candidates are those left after step 0."""
    tokens = [[1, 2, 3, 4, 5]]
    c0, state = select(policy, proposal([conf0], tokens), step=0)
    c1, _ = select(policy, proposal([conf1], tokens), cand=~c0, step=1, state=state)
    return c0, c1


@pytest.mark.parametrize("mode, first, second", [
    ("last", 0.75, 0.75),    # the current confidence == threshold
    ("ave", 0.625, 0.875),   # streak mean (0.625 + 0.875) / 2 == threshold
    ("max", 0.75, 0.5),      # streak max == threshold
])
def test_r2_temporal_confirms_at_exact_step_count_and_score(mode, first, second):
    policy = R2(tau=0.9375, window=0, temporal_steps=2, temporal_score=0.75, temporal_mode=mode)
    # step 0 commits position 0 (most confident); step 1 commits position 3 (most confident) and, by the
    # temporal rule, position 1 (streak of 2 == temporal_steps, score == temporal_score); position 2 is just under.
    lo = below(0.75) if mode != "ave" else 0.625
    hi = below(0.75) if mode != "ave" else 0.875 - 2.0 ** -20  # the sum's precision: below(0.875) rounds back
    c0, c1 = _r2_two_steps(policy, [0.90625, first, lo, 0.5, 0.25], [0.0, second, hi, 0.90625, 0.25])
    np.testing.assert_array_equal(c0, rows({0}, width=5))
    np.testing.assert_array_equal(c1, rows({1, 3}, width=5))
    # three steps needed: nothing confirmed at step 1
    c0, c1 = _r2_two_steps(R2(tau=0.9375, window=0, temporal_steps=3, temporal_score=0.75, temporal_mode=mode),
                           [0.90625, first, lo, 0.5, 0.25], [0.0, second, hi, 0.90625, 0.25])
    np.testing.assert_array_equal(c1, rows({3}, width=5))


# ----------------------------------------------------------------------------------------------------------
# EB-sampler (SGLang EBSampling): `reveal_mask[1:] = cumsum(sorted_entropies[:-1]) <= gamma` (inclusive).


def test_entropy_bound_is_inclusive():
    ent = np.array([[0.25, 0.5, 0.5, 0.125, 2.0], [0.25, 0.5, below(0.5), 0.125, 2.0]], np.float32)
    # row 0, ascending: 0.125 (rank 0), 0.25 (0.125 before it), 0.5 (0.375 before it), 0.5 (0.875), 2.0
    got, _ = select(EntropyBounded(gamma=0.375), proposal(np.ones_like(ent) * 0.5, neg_entropy=-ent))
    # gamma 0.375: rank 2 has exactly 0.375 before it -> revealed (row 0: one of the two 0.5s, the lower position)
    np.testing.assert_array_equal(got, rows({3, 0, 1}, {3, 0, 2}, width=5))
    got, _ = select(EntropyBounded(gamma=below(0.375)), proposal(np.ones_like(ent) * 0.5, neg_entropy=-ent))
    np.testing.assert_array_equal(got, rows({3, 0}, {3, 0}, width=5))


def test_entropy_bound_zero_gamma_reveals_zero_entropy_prefix():
    """gamma = 0: rank k is revealed iff the k entropies before it are all exactly 0 (0 <= 0)."""
    ent = np.array([[0.0, 0.0, 0.5, 0.25]], np.float32)
    got, _ = select(EntropyBounded(gamma=0.0), proposal(np.ones_like(ent) * 0.5, neg_entropy=-ent))
    np.testing.assert_array_equal(got, rows({0, 1, 3}, width=4))  # 0, 0 then 0.25 (before it: 0 + 0 <= 0)


# ----------------------------------------------------------------------------------------------------------
# Prophet (decoding.md §6.2, generate_earlyexit.py): go all-in iff gap >= tau(progress); tau is early for
# progress < 0.33, mid for < 0.67, late otherwise (progress = step / total steps).


def _gap_log_probs(gap: float, b: int, w: int):
    lp = np.full((b, w, 3), -20.0, np.float32)
    lp[..., 0] = 0.0
    lp[..., 1] = -gap
    return lp


def test_prophet_gap_equal_to_threshold_goes_all_in():
    policy = Prophet(block_length=4, steps_per_block=4, early_threshold=2.5, mid_threshold=9.0,
                     late_threshold=9.0)
    conf = [[0.5, 0.25, 0.125, 0.0625]] * 2
    lp = np.concatenate([_gap_log_probs(2.5, 1, 4), _gap_log_probs(below(2.5), 1, 4)])
    got, _ = select(policy, proposal(conf, log_probs=lp))
    np.testing.assert_array_equal(got, rows({0, 1, 2, 3}, {0}, width=4))  # row 1: the LLaDA quota (4 / 4 = 1)


def test_prophet_progress_boundaries():
    policy = Prophet(block_length=100, steps_per_block=100, gen_length=100, early_threshold=1.0,
                     mid_threshold=2.0, late_threshold=3.0)
    got = np.asarray(policy.threshold(jnp.asarray([0, 32, 33, 66, 67, 99])))
    np.testing.assert_array_equal(got, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0])


# ----------------------------------------------------------------------------------------------------------
# KLASS (shkim0116/KLASS src/model/llada_klass.py, stable_confident_decode): `torch.all(kl_history <
# kl_threshold)` and `curr_conf > conf_threshold` (both strict).


def _klass_three_steps(policy, conf):
    """Three steps with the same distribution at every position: the KL history is (0, 0) at step 2."""
    lp = np.log(np.broadcast_to(np.array([0.5, 0.25, 0.25], np.float32), (1, len(conf), 3)))
    prop = proposal([conf], log_probs=lp)
    state = None
    for step in range(3):
        got, state = select(policy, prop, step=step, state=state)
    return got


def test_klass_confidence_strictly_above_threshold():
    policy = KLASS(block_length=4, steps_per_block=4, conf_threshold=0.75, kl_threshold=0.5, vocab_size=3)
    got = _klass_three_steps(policy, [0.75, 0.8125, 0.875, 0.5])
    np.testing.assert_array_equal(got, rows({1, 2}, width=4))  # ready: conf > 0.75 (0.75 itself is not)


def test_klass_kl_strictly_below_threshold():
    conf = [0.8125, 0.875, 0.5, 0.25]
    stable = KLASS(block_length=4, steps_per_block=4, conf_threshold=0.75, kl_threshold=2.0 ** -20, vocab_size=3)
    np.testing.assert_array_equal(_klass_three_steps(stable, conf), rows({0, 1}, width=4))
    # KL == 0 == kl_threshold is not < kl_threshold: nothing is ready, the LLaDA quota (1) commits the top one
    zero = KLASS(block_length=4, steps_per_block=4, conf_threshold=0.75, kl_threshold=0.0, vocab_size=3)
    np.testing.assert_array_equal(_klass_three_steps(zero, conf), rows({1}, width=4))


# ----------------------------------------------------------------------------------------------------------
# LocalLeap (decoding.md §6.8, public copy of generate.py): anchors conf >= tau; positions within +-radius
# (inclusive) of an anchor use tau_relaxed; commit conf >= its threshold; at least the most confident.


def test_local_leap_anchor_radius_and_relaxed_threshold_are_inclusive():
    conf = [[0.875, 0.5, 0.75, 0.75, 0.25, 0.25, 0.25, 0.9375],    # anchor at 0 == tau; 2 at radius == relaxed
            [0.875, 0.5, below(0.75), 0.75, 0.25, 0.25, 0.25, 0.9375],
            [below(0.875), 0.5, 0.75, 0.75, 0.25, 0.25, 0.25, 0.9375]]  # no anchor at 0: 2 keeps tau
    got, _ = select(LocalLeap(tau=0.875, tau_relaxed=0.75, radius=2), proposal(conf))
    np.testing.assert_array_equal(got, rows({0, 2, 7}, {0, 7}, {7}, width=8))


# ----------------------------------------------------------------------------------------------------------
# TemporalSpatial (a reconstruction; its own docstring is the reference): the training-free sensor is the
# Fast-dLLM threshold `confidence >= tau`; lookahead needs age >= min_obs.


def test_temporal_spatial_sensor_is_inclusive():
    conf = [[0.75, below(0.75), 0.5, 0.875]]
    got, _ = select(TemporalSpatial(tau=0.75, kappa=100.0), proposal(conf))  # kappa 100: no lookahead
    np.testing.assert_array_equal(got, rows({0, 3}, width=4))


# ----------------------------------------------------------------------------------------------------------
# LLaDA top-k: get_num_transfer_tokens gives n // S per step plus one for the first n % S steps; ties in the
# score go to the lower position (jdllm's documented convention; torch.topk leaves tie order unspecified).


def test_topk_quota_and_ties():
    conf = [[0.5] * 5]
    policy = TopK(block_length=5, steps_per_block=2)
    np.testing.assert_array_equal(select(policy, proposal(conf), step=0)[0], rows({0, 1, 2}, width=5))
    np.testing.assert_array_equal(select(policy, proposal(conf), step=1)[0], rows({0, 1}, width=5))


# ----------------------------------------------------------------------------------------------------------
# Dream (generation_utils.py `_sample`): number_transfer_tokens = int(n_masked * (1 - s / t)) for i < steps - 1,
# and every remaining mask on the last step (i == steps - 1).


def _dream_counts_float64(n: int, steps: int, eps: float = 1e-3):
    t = np.linspace(1.0, eps, steps + 1)
    left, out = n, []
    for i in range(steps - 1):
        k = int(left * (1 - t[i + 1] / t[i]))
        out.append(k)
        left -= k
    return out + [left]


def test_dream_commits_its_count_and_everything_at_the_last_step():
    policy = DreamAlgorithm(alg="maskgit_plus", steps=4, gen_length=8)
    counts = _dream_counts_float64(8, 4)
    assert counts == [1, 2, 2, 3]
    conf = [[0.5] * 8]
    for step, k in enumerate(counts[:-1]):
        got, _ = select(policy, proposal(conf), step=step)
        np.testing.assert_array_equal(got, rows(set(range(k)), width=8))  # ties to the lower positions
    cand = np.zeros((1, 8), bool)
    cand[0, 2:] = True  # 6 masks left at the last step (more than the scheduled 3): all commit
    got, _ = select(policy, proposal(conf), cand=cand, step=3)
    np.testing.assert_array_equal(got, cand)
    got, _ = select(policy, proposal(conf), cand=cand, step=2)
    assert got.sum() == 2
