"""The issue-5 commit rules against plain-Python transcriptions of their definitions (random confidence
profiles, many rows, peaked and flat; stateful rules over multi-step sequences with block starts and idle
rows), Dream's step schedule, Dream token-exactness against a numpy reference, and every policy end to end."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdllm
from jdllm.decode.policies import (
    KLASS, POLICIES, DreamAlgorithm, EntropyBounded, Factor, Frechet, LocalLeap, Prophet, R2, StepContext,
    TemporalSpatial,
)
from jdllm.decode.policies.dream import dream_counts, torch_linspace_f32
from jdllm.decode.policies.eb import entropy_without
from jdllm.decode.proposal import Proposal, propose
from tests.reference import dream_sampler

# ----------------------------------------------------------------------------------------------------------
# helpers


def _proposal(conf, tokens=None, neg_entropy=None, margin=None):
    conf = jnp.asarray(conf, jnp.float32)
    z = jnp.zeros_like(conf)
    tokens = jnp.zeros(conf.shape, jnp.int32) if tokens is None else jnp.asarray(tokens, jnp.int32)
    return Proposal(tokens=tokens, confidence=conf,
                    neg_entropy=z if neg_entropy is None else jnp.asarray(neg_entropy, jnp.float32),
                    margin=z if margin is None else jnp.asarray(margin, jnp.float32), log_probs=z[..., None])


def _ctx(b, step=0, seed=0):
    step = np.broadcast_to(np.asarray(step), (b,))
    return StepContext(step_in_block=jnp.asarray(step, jnp.int32), block_start=jnp.asarray(step == 0),
                       keys=jax.random.split(jax.random.key(seed), b))


def _profiles(seed, rows=64, width=12, p_cand=0.7):
    rng = np.random.default_rng(seed)
    peaked = 1 - rng.exponential(0.08, (rows // 2, width)).clip(0, 0.99)
    flat = rng.uniform(0.05, 1.0, (rows - rows // 2, width))
    conf = np.concatenate([peaked, flat]).astype(np.float32)
    cand = rng.uniform(size=conf.shape) < p_cand
    cand[0] = False  # a row with nothing to commit
    cand[1] = False
    cand[1, 3] = True  # a row with one candidate
    return conf, cand


def _order(score_row, cand_row):
    """Candidate indices by score, highest first, ties to the lower position."""
    idx = [i for i in range(len(score_row)) if cand_row[i]]
    return sorted(idx, key=lambda i: (-float(score_row[i]), i))


def _np(x):
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------------------
# Fréchet (Fast-dLLM++)


def ref_frechet(conf, cand, delta):
    """The paper's definition: n* = max{n : L_n - U_n > delta} (1 if none), L_n = max(0, sum - (n - 1))."""
    out = np.zeros_like(cand)
    for b in range(conf.shape[0]):
        order = _order(conf[b], cand[b])
        if not order:
            continue
        c = [float(conf[b, i]) for i in order]
        best = 1
        for n in range(1, len(c) + 1):
            g = max(0.0, sum(c[:n]) - (n - 1)) - (1.0 - c[n - 1])
            if g > delta:
                best = max(best, n)
        for i in order[:best]:
            out[b, i] = True
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("delta", [0.0, 0.02, 0.25, 0.5])
def test_frechet_matches_definition(seed, delta):
    conf, cand = _profiles(seed)
    got, _ = Frechet(delta).select(_proposal(conf), jnp.asarray(cand), _ctx(len(conf)), ())
    np.testing.assert_array_equal(_np(got), ref_frechet(conf, cand, delta))
    assert (_np(got).sum(1) >= np.minimum(cand.sum(1), 1)).all()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("delta", [0.1, 0.25, 0.4])
def test_frechet_commits_at_least_factor_one_minus_delta(seed, delta):
    """Cor. 4.4: whatever factor f = 1 - delta accepts (intended rule), Fréchet(delta) accepts too."""
    conf, cand = _profiles(seed)
    fr, _ = Frechet(delta).select(_proposal(conf), jnp.asarray(cand), _ctx(len(conf)), ())
    fa, _ = Factor(1 - delta, quirk=False).select(_proposal(conf), jnp.asarray(cand), _ctx(len(conf)), ())
    assert (_np(fr) | ~_np(fa)).all()


def test_fast_dllm_pp_figure1_frechet_example():
    """Fast-dLLM++ Fig. 1: 0.99, 0.95, 0.82, 0.78, 0.74: G = .98, .89, .58, .32, .02; delta 0.30 commits 4
    (factor 0.70 commits 2, see tests/test_policies.py)."""
    conf = np.array([[0.99, 0.95, 0.82, 0.78, 0.74]], np.float32)
    cand = np.ones_like(conf, bool)
    got, _ = Frechet(0.30).select(_proposal(conf), jnp.asarray(cand), _ctx(1), ())
    np.testing.assert_array_equal(_np(got)[0], [True, True, True, True, False])
    got, _ = Factor(0.70).select(_proposal(conf), jnp.asarray(cand), _ctx(1), ())
    assert _np(got).sum() == 2


# ----------------------------------------------------------------------------------------------------------
# EB-sampler, LocalLeap (stateless)


def ref_eb(ent, cand, gamma):
    """SGLang EBSampling: ascending entropy; rank 0 always; rank k iff cumsum(H_(0..k-1)) <= gamma."""
    out = np.zeros_like(cand)
    for b in range(ent.shape[0]):
        order = _order(-ent[b], cand[b])
        total = 0.0
        for k, i in enumerate(order):
            if k == 0 or total <= gamma:
                out[b, i] = True
            total = np.float32(total + np.float32(ent[b, i]))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma", [0.0, 0.15, 1.0, 5.0])
def test_entropy_bounded_matches_sglang_loop(seed, gamma):
    rng = np.random.default_rng(seed)
    conf, cand = _profiles(seed)
    ent = np.concatenate([rng.exponential(0.05, (32, 12)), rng.uniform(0.0, 3.0, (32, 12))]).astype(np.float32)
    got, _ = EntropyBounded(gamma).select(_proposal(conf, neg_entropy=-ent), jnp.asarray(cand), _ctx(64), ())
    np.testing.assert_array_equal(_np(got), ref_eb(ent, cand, gamma))


def test_entropy_without_mask_token():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 5, 11)).astype(np.float32)
    lp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    got = _np(entropy_without(jnp.asarray(lp), 4))
    keep = np.delete(logits.astype(np.float64), 4, axis=-1)
    p = np.exp(keep - keep.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, -(p * np.log(p)).sum(-1), rtol=1e-5, atol=1e-6)


def ref_local_leap(conf, cand, tau, tau_r, radius):
    out = np.zeros_like(cand)
    for b in range(conf.shape[0]):
        w = conf.shape[1]
        anchors = [i for i in range(w) if cand[b, i] and conf[b, i] >= tau]
        for i in range(w):
            if not cand[b, i]:
                continue
            near = any(abs(i - a) <= radius for a in anchors)
            thr = tau_r if (anchors and near) else tau
            out[b, i] = conf[b, i] >= thr
        order = _order(conf[b], cand[b])
        if order:
            out[b, order[0]] = True
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tau, tau_r, radius", [(0.9, 0.75, 4), (0.9, 0.5, 1), (0.95, 0.8, 0), (0.7, 0.3, 20)])
def test_local_leap_matches_definition(seed, tau, tau_r, radius):
    conf, cand = _profiles(seed, width=16)
    got, _ = LocalLeap(tau, tau_r, radius).select(_proposal(conf), jnp.asarray(cand), _ctx(64), ())
    np.testing.assert_array_equal(_np(got), ref_local_leap(conf, cand, tau, tau_r, radius))


# ----------------------------------------------------------------------------------------------------------
# multi-step driver for the stateful rules


def run_sequence(policy, ref_init, ref_step, make_step, rows=12, width=10, n_blocks=2, max_steps=14, seed=0,
                 idle_prob=0.15):
    """Drive `policy` and a per-row Python reference over several blocks; compare commits at every step.

    make_step(rng, step) -> (proposal, extra): the step's proposal (jdllm) and whatever the reference reads.
    ref_step(state, b, cand_row, extra, step_in_block) -> (commit_row, state). Rows with no candidate (idle or
    finished) take no step: the reference is not called and the policy must keep their state.
    """
    rng = np.random.default_rng(seed)
    state = policy.init_state(rows, width)
    ref_states = [ref_init() for _ in range(rows)]
    n_checked = 0
    for blk in range(n_blocks):
        masked = rng.uniform(size=(rows, width)) < 0.9
        sib = np.zeros(rows, np.int64)
        for step in range(max_steps):
            if not masked.any():
                break
            idle = (rng.uniform(size=rows) < idle_prob) if step else np.zeros(rows, bool)
            cand = masked & ~idle[:, None]
            proposal, extra = make_step(rng, step)
            ctx = StepContext(step_in_block=jnp.asarray(sib, jnp.int32), block_start=jnp.asarray(sib == 0),
                              keys=jax.random.split(jax.random.key(seed * 1000 + blk * 100 + step), rows))
            got, state = policy.select(proposal, jnp.asarray(cand), ctx, state)
            got = _np(got)
            assert not (got & ~cand).any()
            for b in range(rows):
                if not cand[b].any():
                    continue
                if sib[b] == 0:
                    ref_states[b] = ref_init()
                exp, ref_states[b] = ref_step(ref_states[b], b, cand[b], extra, int(sib[b]))
                np.testing.assert_array_equal(got[b], exp, err_msg=f"block {blk} step {step} row {b}")
                assert got[b].any()
                n_checked += 1
            masked &= ~got
            sib += cand.any(axis=1)
    return n_checked


def _token_conf_step(rows, width, vocab=4):
    """Random proposals with persistent tokens (streaks, runs of equal tokens), peaked and flat confidences."""
    prev = {}

    def make(rng, step):
        if "tok" not in prev or step == 0:
            prev["tok"] = rng.integers(0, vocab, (rows, width))
        keep = rng.uniform(size=(rows, width)) < 0.75
        tok = np.where(keep, prev["tok"], rng.integers(0, vocab, (rows, width)))
        prev["tok"] = tok
        half = rows // 2
        conf = np.concatenate([1 - rng.exponential(0.12, (half, width)).clip(0, 0.99),
                               rng.uniform(0.3, 1.0, (rows - half, width))]).astype(np.float32)
        return _proposal(conf, tok), (conf, tok)

    return make


# ----------------------------------------------------------------------------------------------------------
# R²-dLLM


def ref_r2_step(p: R2, st, b, cand, extra, sib):
    """Transcription of GATECH-EIC/R2-dLLM generate_with_dual_cache's per-step rules for one row."""
    conf, tok = extra[0][b].astype(np.float64), extra[1][b]
    w = len(cand)
    masked = cand.copy()
    order = _order(conf, cand)
    for rank, i in enumerate(order):  # Fast-dLLM threshold (get_transfer_index with a threshold)
        if rank == 0 or conf[i] >= p.tau:
            masked[i] = False
    if p.window > 0 and p.window_mean is not None:
        if w >= p.window:  # _run_window_sweep, every window judged on the same state
            decode = np.zeros(w, bool)
            for s in range(w - p.window + 1):
                win = list(range(s, s + p.window))
                if p.max_decoded_in_window is not None and sum(not masked[i] for i in win) > p.max_decoded_in_window:
                    continue
                mpos = [i for i in win if masked[i]]
                if not mpos:
                    continue
                if np.float32(np.mean([np.float32(conf[i]) for i in mpos])) >= p.window_mean:
                    decode[mpos] = True
            masked &= ~decode
        if p.cluster_mode is not None:  # _apply_temporal_consistency (token clusters)
            pos = 0
            while pos < w:
                if not masked[pos]:
                    pos += 1
                    continue
                t, start = tok[pos], pos
                pos += 1
                while pos < w and masked[pos] and tok[pos] == t:
                    pos += 1
                n = pos - start
                if n < p.cluster_size:
                    continue
                cs = conf[start:pos]
                if cs.max() <= p.window_mean:
                    continue
                rel = int(np.argmax(cs)) if p.cluster_mode == "confidence" else n // 2
                masked[start + rel] = False
    if p.temporal_on:  # maybe_auto_confirm
        active = masked
        for i in range(w):
            if cand[i] and not active[i]:
                st["count"][i], st["total"][i], st["best"][i], st["last"][i] = 0, 0.0, 0.0, -1
        for i in range(w):
            if not active[i]:
                continue
            c = np.float32(conf[i])
            if st["last"][i] == tok[i]:
                st["count"][i] += 1
                st["total"][i] = np.float32(st["total"][i] + c)
                st["best"][i] = max(st["best"][i], c)
            else:
                st["count"][i], st["total"][i], st["best"][i], st["last"][i] = 1, c, c, tok[i]
            if st["count"][i] >= p.temporal_steps:
                score = {"ave": np.float32(st["total"][i] / st["count"][i]), "last": c, "max": st["best"][i]}[p.temporal_mode]
                if score >= p.temporal_score:
                    masked[i] = False
                    st["count"][i], st["total"][i], st["best"][i], st["last"][i] = 0, 0.0, 0.0, -1
    return cand & ~masked, st


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kw", [
    dict(),
    dict(temporal_mode="ave", token_cluster="mid"),
    dict(temporal_mode="max", tau=0.95, window=2, window_mean=0.7, max_decoded_in_window=None, cluster_size=3),
    dict(window=4, window_mean=0.85, max_decoded_in_window=2, temporal_steps=2, temporal_score=0.6),
    dict(token_cluster=False, temporal_steps=0),
])
def test_r2_matches_reference_over_steps(seed, kw):
    policy = R2(**kw)
    rows, width = 12, 10
    init = lambda: dict(count=[0] * width, total=[0.0] * width, best=[0.0] * width, last=[-1] * width)  # noqa: E731
    n = run_sequence(policy, init, lambda st, b, c, e, s: ref_r2_step(policy, st, b, c, e, s),
                     _token_conf_step(rows, width), rows=rows, width=width, seed=seed)
    assert n > 30


def test_r2_rules_add_commits_to_threshold():
    conf, cand = _profiles(0, width=16)
    tok = np.random.default_rng(1).integers(0, 3, conf.shape)
    r2, _ = R2(temporal_steps=0).select(_proposal(conf, tok), jnp.asarray(cand), _ctx(64), R2().init_state(64, 16))
    th = cand & (conf >= 0.9)
    assert (_np(r2) | ~th).all()
    assert _np(r2).sum() > th.sum()


# ----------------------------------------------------------------------------------------------------------
# temporal-spatial (reconstruction)


def ref_tspd_step(p: TemporalSpatial, st, b, cand, extra, sib):
    """Scalar transcription of the reconstruction's per-position trajectory / Kalman / commit rule."""
    conf, tok = extra[0][b].astype(np.float64), extra[1][b]
    w = len(cand)
    commit = np.zeros(w, bool)
    target = math.log(p.tau / (1 - p.tau))
    for i in range(w):
        if not cand[i]:
            continue
        c = min(max(conf[i], p.eps), 1 - p.eps)
        z = math.log(c) - math.log1p(-c)
        s = st[i]
        flip = s["age"] > 0 and s["token"] != tok[i]
        cont = s["age"] > 0 and not flip
        surprise = False
        if cont:
            lvl = s["level"] + s["slope"]
            p00 = s["p00"] + 2 * s["p01"] + s["p11"] + p.q_level
            p01 = s["p01"] + s["p11"]
            p11 = s["p11"] + p.q_slope
            S = p00 + p.obs_noise
            nu = z - lvl
            k0, k1 = p00 / S, p01 / S
            s.update(level=lvl + k0 * nu, slope=s["slope"] + k1 * nu, p00=(1 - k0) * p00, p01=(1 - k0) * p01,
                     p11=p11 - k1 * p01, age=s["age"] + 1)
            surprise = nu * nu > p.hold_sigma ** 2 * S
        else:
            s.update(level=z, slope=0.0, p00=p.obs_noise, p01=0.0, p11=p.init_slope_var, age=1)
        s["token"] = tok[i]
        h = p.horizon
        mu = s["level"] + h * s["slope"]
        var = s["p00"] + 2 * h * s["p01"] + h * h * s["p11"] + h * p.q_level + p.q_slope * sum(k * k for k in range(h))
        look = s["age"] >= p.min_obs and not flip and mu - p.kappa * math.sqrt(max(var, 0.0)) >= target
        hold = surprise or (flip and p.hold_on_flip)
        commit[i] = (conf[i] >= p.tau or look) and not hold
    if not commit.any():
        commit[_order(extra[0][b], cand)[0]] = True
    return commit, st


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kw", [dict(), dict(horizon=3, kappa=0.5, hold_on_flip=False, hold_sigma=1.5),
                                dict(tau=0.8, min_obs=3, q_level=0.2, obs_noise=0.5)])
def test_temporal_spatial_matches_transcription(seed, kw):
    policy = TemporalSpatial(**kw)
    rows, width = 12, 10
    init = lambda: [dict(token=-1, age=0, level=0.0, slope=0.0, p00=0.0, p01=0.0, p11=0.0) for _ in range(width)]  # noqa: E731
    n = run_sequence(policy, init, lambda st, b, c, e, s: ref_tspd_step(policy, st, b, c, e, s),
                     _token_conf_step(rows, width, vocab=2), rows=rows, width=width, seed=seed)
    assert n > 30


def test_temporal_spatial_lookahead_commits_rising_trajectory_early():
    """A steadily rising confidence below tau is committed by the forecast before it crosses tau."""
    policy = TemporalSpatial(tau=0.9, horizon=3, kappa=0.5)
    state = policy.init_state(1, 2)
    cand = jnp.asarray([[True, True]])
    committed_at = None
    for step, c in enumerate([0.3, 0.45, 0.6, 0.72, 0.8, 0.86]):
        conf = np.array([[c, 0.99]], np.float32)  # position 1 keeps the ">= 1 per step" busy
        got, state = policy.select(_proposal(conf, [[5, 6]]), cand, _ctx(1, step), state)
        if _np(got)[0, 0]:
            committed_at = step
            break
    assert committed_at is not None and committed_at <= 5


def test_temporal_spatial_controller_hook():
    seen = {}

    def controller(features):
        seen["shape"] = features.shape
        return features[..., 0]  # confidence as the learned score

    policy = TemporalSpatial(controller=controller, controller_tau=0.9)
    conf, cand = _profiles(0)
    tok = np.zeros(conf.shape, np.int32)
    got, _ = policy.select(_proposal(conf, tok), jnp.asarray(cand), _ctx(64), policy.init_state(64, 12))
    assert seen["shape"] == (64, 12, len(TemporalSpatial.FEATURES))
    ref = cand & (conf >= 0.9)
    for b in range(64):
        order = _order(conf[b], cand[b])
        if order and not ref[b].any():
            ref[b, order[0]] = True
    np.testing.assert_array_equal(_np(got), ref)


# ----------------------------------------------------------------------------------------------------------
# KLASS


def _logit_step(rows, width, vocab, mask_id=None):
    """Random logits trajectories: some positions stable across steps (small drift), others jumpy."""
    base = {}

    def make(rng, step):
        if step == 0 or "l" not in base:
            base["l"] = rng.normal(0, 4, (rows, width, vocab))
            base["scale"] = np.where(rng.uniform(size=(rows, width, 1)) < 0.5, 0.02, 1.5)
        base["l"] = base["l"] + base["scale"] * rng.normal(0, 1, (rows, width, vocab))
        logits = jnp.asarray(base["l"], jnp.float32)
        prop = propose(logits, 0.0, None, -1 if mask_id is None else mask_id)
        return prop, dict(lp=_np(prop.log_probs).astype(np.float64), conf=_np(prop.confidence))

    return make


def ref_klass_step(p: KLASS, st, b, cand, extra, sib):
    """Transcription of shkim0116/KLASS stable_confident_decode (alg='klass') for one row of the window."""
    lp = extra["lp"][b]
    prob = np.exp(lp)
    conf = extra["conf"][b].astype(np.float64)
    kl = (prob * (np.log(prob + 1e-12) - np.log(st["p_prev"] + 1e-12))).sum(-1)
    st["hist"] = np.concatenate([st["hist"][:, 1:], kl[:, None]], axis=1)
    st["p_prev"] = prob
    stable = (st["hist"] < p.kl_threshold).all(-1) if sib >= p.history - 1 else np.zeros(len(cand), bool)
    ready = stable & (conf > p.conf_threshold) & cand
    commit = np.zeros(len(cand), bool)
    if ready.any():
        idx = np.flatnonzero(ready)
        if p.unmask == "max_conf":
            idx = [max(idx, key=lambda i: (conf[i], -i))]
        elif p.unmask == "min_kl":
            idx = [min(idx, key=lambda i: (kl[i], i))]
        commit[idx] = True
    else:
        base, extra_ = divmod(p.block_length, p.steps_per_block)
        quota = max(base + (1 if sib < extra_ else 0), 1)
        commit[_order(conf, cand)[:quota]] = True
    return commit, st


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kw", [dict(), dict(conf_threshold=0.6, kl_threshold=0.015), dict(history=3, unmask="max_conf"),
                                dict(history=1, unmask="min_kl", kl_threshold=0.05, conf_threshold=0.5)])
def test_klass_matches_reference_over_steps(seed, kw):
    rows, width, vocab = 8, 10, 7
    policy = KLASS(block_length=width, steps_per_block=width, vocab_size=vocab, **kw)
    init = lambda: dict(p_prev=np.zeros((width, vocab)), hist=np.zeros((width, policy.history)))  # noqa: E731
    n = run_sequence(policy, init, lambda st, b, c, e, s: ref_klass_step(policy, st, b, c, e, s),
                     _logit_step(rows, width, vocab), rows=rows, width=width, seed=seed, max_steps=12)
    assert n > 20


# ----------------------------------------------------------------------------------------------------------
# Prophet


def ref_prophet_step(p: Prophet, st, b, cand, extra, sib):
    lp = extra["lp"][b]
    conf = extra["conf"][b].astype(np.float64)
    top = np.sort(lp, axis=-1)[:, -2:]
    gap = top[:, 1] - top[:, 0]
    w = len(cand)
    region = cand if p.answer_start is None else np.array([p.answer_start <= i < p.answer_start + p.answer_length for i in range(w)])
    progress = st["step"] / p.total_steps
    thr = p.early_threshold if progress < 0.33 else (p.mid_threshold if progress < 0.67 else p.late_threshold)
    fire = st["fired"] or (region.any() and gap[region].mean() >= thr)
    commit = np.zeros(w, bool)
    if fire:
        commit = cand.copy()
    else:
        base, extra_ = divmod(p.block_length, p.steps_per_block)
        commit[_order(conf, cand)[: base + (1 if sib < extra_ else 0)]] = True
    st["step"] += 1
    st["fired"] = fire
    return commit, st


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kw", [dict(), dict(answer_start=2, answer_length=3, early_threshold=4.0, mid_threshold=3.0,
                                            late_threshold=1.0)])
def test_prophet_matches_reference_over_steps(seed, kw):
    rows, width, vocab = 8, 10, 7
    policy = Prophet(block_length=width, steps_per_block=width, gen_length=2 * width, **kw)
    # Prophet's state is global per row (progress and the all-in decision survive block starts)
    persistent = [dict(step=0, fired=False) for _ in range(rows)]
    n = run_sequence(policy, lambda: None, lambda st, b, c, e, s: ref_prophet_step(policy, persistent[b], b, c, e, s),
                     _logit_step(rows, width, vocab), rows=rows, width=width, seed=seed, max_steps=12)
    assert n > 20


def test_prophet_all_in_commits_every_candidate():
    rows, width, vocab = 2, 8, 5
    logits = np.zeros((rows, width, vocab), np.float32)
    logits[0, :, 1] = 20.0  # row 0: every position decided (gap 20 >= 7.5)
    logits[1, :, 1] = 1.0  # row 1: gaps 1.0
    prop = propose(jnp.asarray(logits), 0.0, None, 4)
    cand = jnp.ones((rows, width), bool)
    p = Prophet(block_length=width, steps_per_block=width)
    got, st = p.select(prop, cand, _ctx(rows), p.init_state(rows, width))
    assert _np(got)[0].all() and _np(got)[1].sum() == 1
    assert _np(st["fired"]).tolist() == [True, False]


# ----------------------------------------------------------------------------------------------------------
# Dream


def test_torch_linspace_f32_mirror():
    np.testing.assert_array_equal(torch_linspace_f32(1.0, 1e-3, 9), dream_sampler.torch_linspace_f32(1.0, 1e-3, 9))
    ts = torch_linspace_f32(1.0, 1e-3, 65)
    assert ts.dtype == np.float32 and ts[0] == np.float32(1.0) and ts[-1] == np.float32(1e-3)
    np.testing.assert_allclose(ts, np.linspace(1.0, 1e-3, 65), rtol=1e-6)


@pytest.mark.parametrize("n, steps, expected", [
    (8, 8, [0, 1, 1, 1, 1, 1, 1, 2]),  # decoding.md §6.1: 0 at step 0, then 1 per step, 2 at the last
    (8, 4, [1, 2, 2, 3]),  # steps = N / 2: 1, 2, 2, ..., 3
    (256, 64, [3] + [4] * 62 + [5]),  # N = 256, steps = 64: 3, 4, ..., 5
])
def test_dream_count_sequences(n, steps, expected):
    assert list(dream_counts(n, steps)) == expected
    assert dream_sampler.count_sequence(n, steps) == expected
    assert list(DreamAlgorithm("entropy", steps, n).counts) == expected


@pytest.mark.parametrize("n, steps", [(16, 16), (16, 5), (37, 7), (128, 128), (512, 512), (100, 3), (10, 30)])
def test_dream_counts_match_reference_and_finish(n, steps):
    got = list(dream_counts(n, steps))
    assert got == dream_sampler.count_sequence(n, steps)
    assert sum(got) == n and all(k >= 0 for k in got)


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("seed", range(2))
def test_dream_topn_matches_definition(alg, seed):
    """Each step commits the top counts[step] masked positions by `sample_tokens`' confidence (official formula in
    tests/reference/dream_sampler.py), all remaining ones on the last step."""
    rng = np.random.default_rng(seed)
    rows, width, steps, vocab = 16, 12, 5, 32
    policy = DreamAlgorithm(alg, steps, width)
    masked = np.ones((rows, width), bool)
    for step in range(steps):
        logits = (rng.standard_normal((rows, width, vocab)) * rng.uniform(0.5, 4, (rows, width, 1))).astype(np.float32)
        proposal = propose(jnp.asarray(logits), 0.0, None, mask_id=vocab - 1)
        score = dream_sampler.sample_tokens_confidence(logits, _np(proposal.tokens), 0.0, alg)
        got, _ = policy.select(proposal, jnp.asarray(masked), _ctx(rows, step), ())
        got = _np(got)
        k = policy.counts[step]
        for b in range(rows):
            exp = np.zeros(width, bool)
            exp[_order(score[b], masked[b])[:k if step < steps - 1 else width]] = True
            np.testing.assert_array_equal(got[b], exp)
        masked &= ~got
    assert not masked.any()


def test_dream_origin_and_alg_temp():
    rows, width, steps = 256, 16, 4
    policy = DreamAlgorithm("origin", steps, width)
    p0 = policy.transfer_probs[0]
    assert abs(p0 - 0.24975) < 1e-4 and policy.transfer_probs[-1] == 1.0
    cand = np.ones((rows, width), bool)
    got, _ = policy.select(_proposal(np.full((rows, width), 0.5)), jnp.asarray(cand), _ctx(rows, 0, seed=3), ())
    rate = _np(got).mean()
    assert abs(rate - p0) < 0.02
    got, _ = policy.select(_proposal(np.full((rows, width), 0.5)), jnp.asarray(cand), _ctx(rows, steps - 1), ())
    assert _np(got).all()
    sampled = DreamAlgorithm("maskgit_plus", steps, width, alg_temp=0.5)
    conf = np.random.default_rng(0).uniform(size=(rows, width)).astype(np.float32)
    got, _ = sampled.select(_proposal(conf), jnp.asarray(cand), _ctx(rows, 1), ())
    assert (_np(got).sum(1) == sampled.counts[1]).all()


def test_dream_needs_global_window():
    policy = DreamAlgorithm("entropy", 8, 16)
    with pytest.raises(ValueError, match="block_length = gen_length"):
        policy.select(_proposal(np.ones((1, 8))), jnp.ones((1, 8), bool), _ctx(1), ())


def test_registry_has_every_new_policy():
    for name in ("frechet", "r2", "temporal_spatial", "dream", "eb", "prophet", "klass", "local_leap"):
        assert name in POLICIES


# ----------------------------------------------------------------------------------------------------------
# every policy end to end


@pytest.fixture(scope="module")
def tiny_llada():
    cfg = jdllm.models.ModelConfig(family="llada", vocab_size=48, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4,
                                   mlp_hidden_size=64, max_seq_len=64, mask_id=47)
    return jdllm.models.Transformer(cfg, rngs=nnx.Rngs(0))


E2E = {
    "frechet": (Frechet(0.25), 8),
    "r2": (R2(), 8),
    "temporal_spatial": (TemporalSpatial(), 8),
    "dream": (DreamAlgorithm("entropy", 16, 16), 16),
    "eb": (EntropyBounded(0.15, mask_id=47), 8),
    "prophet": (Prophet(8, 8, gen_length=16), 8),
    "klass": (KLASS(8, 8, conf_threshold=0.6, kl_threshold=0.015, vocab_size=48), 8),
    "local_leap": (LocalLeap(), 8),
}


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("name", sorted(E2E))
def test_every_policy_end_to_end(tiny_llada, name, cache):
    policy, block = E2E[name]
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    out = jdllm.generate(tiny_llada, prompts, gen_length=16, block_length=block, steps=16, policy=policy,
                         cache=cache)
    assert out.tokens.shape == (3, 16)
    assert not (out.tokens == 47).any()
    assert (out.nfe >= 16 // block).all() and (out.nfe <= 16 + 16 // block).all()


@pytest.mark.parametrize("name", ["r2", "temporal_spatial", "klass"])
def test_stateful_policies_batch_invariant_under_dual_cache(tiny_llada, name):
    """Rows idle while a neighbour refreshes its cache keep their rule state: a row decodes as it does alone."""
    policy, block = E2E[name]
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    kw = dict(gen_length=16, block_length=block, steps=16, policy=policy, cache="dual", prompt_length=5)
    batch = jdllm.generate(tiny_llada, prompts, **kw)
    alone = jdllm.generate(tiny_llada, [prompts[1]], row_ids=[1], **kw)
    np.testing.assert_array_equal(batch.tokens[1], alone.tokens[0])
    assert int(batch.nfe[1]) == int(alone.nfe[0])


def test_new_recipes_build_their_policies():
    from jdllm.recipes import load_recipes, recipe_kwargs

    cfg = jdllm.models.ModelConfig(family="llada", vocab_size=48, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4,
                                   mlp_hidden_size=64, max_seq_len=64, mask_id=47)
    names = [n for n, r in load_recipes().items() if "policy" in r]
    assert {"frechet_prefix", "r2_dual", "tspd_ce_dual", "dream_entropy", "eb_sampler", "prophet", "klass_gsm8k",
            "local_leap"} <= set(names)
    for name in names:
        kw = recipe_kwargs(name, 256, model_config=cfg)
        policy = kw["policy"]
        assert type(policy) is POLICIES[load_recipes()[name]["policy"]["name"]]
        hash(policy)  # a static jit argument
    assert recipe_kwargs("klass_gsm8k", 256, model_config=cfg)["policy"] == KLASS(64, 64, 0.6, 0.015, 2, "all", 48)
    dream = recipe_kwargs("dream_entropy", 128)
    assert dream["block_length"] == 128 and dream["policy"] == DreamAlgorithm("entropy", 128, 128)
    assert recipe_kwargs("prophet", 256)["policy"] == Prophet(32, 32, gen_length=256)
    with pytest.raises(ValueError, match="needs vocab_size"):
        recipe_kwargs("klass_gsm8k", 256)
