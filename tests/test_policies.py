"""Commit rules against plain-Python transcriptions of their definitions (random profiles, many rows)."""

import numpy as np
import pytest
import jax.numpy as jnp

from jdllm.decode.policies import Factor, StepContext, Threshold, TopK
from jdllm.decode.policies.topk import transfer_quota
from jdllm.decode.proposal import Proposal


def _proposal(conf):
    conf = jnp.asarray(conf, jnp.float32)
    z = jnp.zeros_like(conf)
    return Proposal(tokens=jnp.zeros(conf.shape, jnp.int32), confidence=conf, neg_entropy=z, margin=z,
                    log_probs=z[..., None])


def _ctx(b, step=0):
    import jax
    return StepContext(step_in_block=jnp.full((b,), step, jnp.int32), block_start=jnp.full((b,), step == 0),
                       keys=jax.random.split(jax.random.key(0), b))


def _profiles(seed, rows=64, width=12):
    rng = np.random.default_rng(seed)
    peaked = 1 - rng.exponential(0.08, (rows // 2, width)).clip(0, 0.99)
    flat = rng.uniform(0.05, 1.0, (rows - rows // 2, width))
    conf = np.concatenate([peaked, flat]).astype(np.float32)
    cand = rng.uniform(size=conf.shape) < 0.7
    cand[0] = False  # a row with nothing to commit
    cand[1] = False
    cand[1, 3] = True  # a row with one candidate
    return conf, cand


def _sorted_candidates(conf_row, cand_row):
    idx = [i for i in range(len(conf_row)) if cand_row[i]]
    return sorted(idx, key=lambda i: (-conf_row[i], i))  # stable: ties to the lower position


def ref_threshold(conf, cand, tau):
    out = np.zeros_like(cand)
    for b in range(conf.shape[0]):
        order = _sorted_candidates(conf[b], cand[b])
        for rank, i in enumerate(order):
            if rank == 0 or conf[b, i] >= tau:
                out[b, i] = True
    return out


def ref_factor(conf, cand, f, quirk):
    """Transcription of Fast-dLLM's get_transfer_index_dynamic (quirk) / the intended longest prefix."""
    out = np.zeros_like(cand)
    for b in range(conf.shape[0]):
        order = _sorted_candidates(conf[b], cand[b])
        n = len(order)
        if n == 0:
            continue
        threshs = [1 - f / (m + 1) for m in range(1, n + 1)]
        threshs[0] = -1
        top_i = 0
        broke = False
        for top_i in range(n):
            if conf[b, order[top_i]] < threshs[top_i]:
                broke = True
                break
        if quirk:
            if top_i == 0 or top_i == n - 1:
                top_i += 1
        else:
            top_i = top_i if broke else n
        for i in order[:top_i]:
            out[b, i] = True
    return out


def ref_topk(conf, cand, quota):
    out = np.zeros_like(cand)
    for b in range(conf.shape[0]):
        for i in _sorted_candidates(conf[b], cand[b])[:quota]:
            out[b, i] = True
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tau", [0.5, 0.9, 0.99])
def test_threshold_matches_definition(seed, tau):
    conf, cand = _profiles(seed)
    got, _ = Threshold(tau).select(_proposal(conf), jnp.asarray(cand), _ctx(len(conf)), ())
    np.testing.assert_array_equal(np.asarray(got), ref_threshold(conf, cand, tau))
    assert (np.asarray(got).sum(1) >= np.minimum(cand.sum(1), 1)).all()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("f", [0.5, 0.75, 1.0, 2.0])
@pytest.mark.parametrize("quirk", [True, False])
def test_factor_matches_reference_code(seed, f, quirk):
    conf, cand = _profiles(seed)
    got, _ = Factor(f, quirk=quirk).select(_proposal(conf), jnp.asarray(cand), _ctx(len(conf)), ())
    np.testing.assert_array_equal(np.asarray(got), ref_factor(conf, cand, f, quirk))


def test_factor_quirk_commits_last_token_intended_does_not():
    conf = np.array([[0.99, 0.2, 0.1, 0.1]], np.float32)
    cand = np.array([[True, True, False, False]])
    quirk, _ = Factor(1.0, quirk=True).select(_proposal(conf), jnp.asarray(cand), _ctx(1), ())
    intended, _ = Factor(1.0, quirk=False).select(_proposal(conf), jnp.asarray(cand), _ctx(1), ())
    assert np.asarray(quirk).sum() == 2 and np.asarray(intended).sum() == 1


def test_fast_dllm_pp_figure1_factor_example():
    """Fast-dLLM++ Fig. 1: confidences 0.99, 0.95, 0.82, 0.78, 0.74 with factor 0.70 commit 2."""
    conf = np.array([[0.99, 0.95, 0.82, 0.78, 0.74]], np.float32)
    cand = np.ones_like(conf, bool)
    got, _ = Factor(0.70).select(_proposal(conf), jnp.asarray(cand), _ctx(1), ())
    np.testing.assert_array_equal(np.asarray(got)[0], [True, True, False, False, False])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("block, steps", [(8, 8), (8, 3), (8, 16), (12, 5)])
def test_topk_schedule_matches_get_num_transfer_tokens(seed, block, steps):
    conf, cand = _profiles(seed, width=block)
    for step in range(steps):
        base, extra = divmod(block, steps)
        quota = base + (1 if step < extra else 0)
        assert int(transfer_quota(block, steps, jnp.asarray(step))) == quota
        got, _ = TopK(block, steps).select(_proposal(conf), jnp.asarray(cand), _ctx(len(conf), step), ())
        np.testing.assert_array_equal(np.asarray(got), ref_topk(conf, cand, quota))


def test_topk_ties_go_to_lower_position():
    conf = np.full((1, 6), 0.5, np.float32)
    cand = np.array([[False, True, True, True, True, False]])
    got, _ = TopK(6, 3).select(_proposal(conf), jnp.asarray(cand), _ctx(1), ())
    np.testing.assert_array_equal(np.asarray(got)[0], [False, True, True, False, False, False])
