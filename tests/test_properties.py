"""Property-based tests (hypothesis) of the decode invariants over random policies x caches x shapes x
temperatures x ragged batches, on the tiny LLaDA checkpoint of tests/conftest.py.

The debug twin (`_debug_init` / `_debug_step`, the very step body of the compiled loop) is driven step by step
and, after every step, asserts that
- the prompt region (prompt and left padding) never changes,
- a committed (non-mask) token never changes,
- a row changes only positions of its active block (LLaDA semi-AR: only the current block is unmasked), and a
  finished row changes nothing and counts no forward;
and at the end that no mask is left, the NFE lies in the bounds of the reference counting (LLaDA top-k: exactly
n_blocks * min(steps_per_block, block_length); a threshold-style rule: one block-start forward at least per
block, at most one forward per generated token), and batch invariance: decoding the batch again in reverse order with one row
replaced by another prompt (and row id) leaves every other row's tokens and NFE unchanged (LLaDA / Fast-dLLM
decode each row on its own; jdllm's per-row streams are keyed by seed and row id).

Compiles dominate: every drawn (policy, cache, shape, temperature) is a new program, so the CI profile runs
few examples from small sets; `@pytest.mark.slow` runs a larger profile.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

from jdllm.api import make_cache, pack_prompts  # noqa: E402
from jdllm.decode.loop import DecodeSpec, _debug_init, _debug_step  # noqa: E402
from jdllm.decode.policies import (  # noqa: E402
    KLASS, R2, EntropyBounded, Factor, Frechet, LocalLeap, Prophet, TemporalSpatial, Threshold, TopK,
)
from jdllm.decode.schedules.semi_ar import SemiAutoregressive  # noqa: E402
from tests.helpers import PROMPT_VOCAB  # noqa: E402

BATCH, PROMPT_WIDTH = 3, 6       # fixed shapes: drawn cases of one spec reuse one program
SHAPES = [(8, 4, 4), (8, 8, 4), (8, 4, 8), (8, 2, 16)]  # (gen_length, block_length, steps)


def build_policy(name: str, gen: int, block: int, steps: int, vocab: int):
    per_block = steps // (gen // block)
    return {
        "topk": lambda: TopK(block, per_block),
        "topk_random": lambda: TopK(block, per_block, score="random"),
        "threshold": lambda: Threshold(0.5),
        "factor": lambda: Factor(1.0),
        "frechet": lambda: Frechet(0.25),
        "eb": lambda: EntropyBounded(0.5),
        "r2": lambda: R2(tau=0.5, window_mean=0.4, temporal_score=0.3),
        "local_leap": lambda: LocalLeap(tau=0.5, tau_relaxed=0.25, radius=1),
        "klass": lambda: KLASS(block, per_block, conf_threshold=0.3, kl_threshold=0.05, vocab_size=vocab),
        "prophet": lambda: Prophet(block, per_block, gen_length=gen, early_threshold=1.0, mid_threshold=0.5,
                                   late_threshold=0.25),
        "temporal_spatial": lambda: TemporalSpatial(tau=0.5),
    }[name]()


POLICY_NAMES = ["topk", "threshold", "factor", "frechet", "eb", "topk_random", "r2", "local_leap", "klass",
                "prophet", "temporal_spatial"]

cases = st.fixed_dictionaries(dict(
    policy=st.sampled_from(POLICY_NAMES),
    cache=st.sampled_from([None, "prefix", "dual"]),
    shape=st.sampled_from(SHAPES),
    temperature=st.sampled_from([0.0, 1.0]),
    lengths=st.lists(st.integers(1, PROMPT_WIDTH), min_size=BATCH, max_size=BATCH),
    seed=st.integers(0, 2**16),
    row_ids=st.lists(st.integers(0, 1000), min_size=BATCH, max_size=BATCH, unique=True),
))


def prompts_for(lengths, seed):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, PROMPT_VOCAB, n)] for n in lengths]


def run_debug(model, spec, prompts, row_ids, seed):
    """Decode with the debug twin, asserting the per-step invariants; returns (generated tokens, nfe)."""
    cfg, sched = model.config, spec.schedule
    tokens, valid, width = pack_prompts(prompts, cfg, sched.gen_length, PROMPT_WIDTH)
    graphdef, params = nnx.split(model)
    args = (graphdef, params, spec, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(row_ids, jnp.int32),
            jnp.asarray(seed, jnp.uint32), width)
    state = _debug_init(*args)
    prev, mask = np.asarray(state.tokens), cfg.mask_id
    pos = np.arange(prev.shape[1])[None, :]
    for _ in range(spec.max_iters):
        if bool(np.all(np.asarray(state.done))):
            break
        block_before, done_before, nfe_before = (np.asarray(x) for x in (state.schedule["block"], state.done, state.nfe))
        state = _debug_step(*args, state)
        now = np.asarray(state.tokens)
        changed = now != prev
        np.testing.assert_array_equal(now[:, :width], tokens[:, :width], err_msg="prompt region changed")
        assert not (changed & (prev != mask)).any(), "a committed token changed"
        lo = width + np.minimum(block_before, sched.n_blocks - 1) * sched.block_length
        outside = (pos < lo[:, None]) | (pos >= (lo + sched.block_length)[:, None])
        assert not (changed & outside).any(), "a token outside the row's active block changed"
        assert not changed[done_before].any(), "a finished row changed"
        assert (np.asarray(state.nfe)[done_before] == nfe_before[done_before]).all(), "a finished row counted NFE"
        prev = now
    else:
        pytest.fail(f"not done after {spec.max_iters} iterations")
    return prev[:, width:], np.asarray(state.nfe)


def run_case(model, case):
    gen, block, steps = case["shape"]
    policy = build_policy(case["policy"], gen, block, steps, model.config.vocab_size)
    spec = DecodeSpec(policy=policy, cache=make_cache(case["cache"], 0.0, None),
                      schedule=SemiAutoregressive(gen, block), temperature=case["temperature"],
                      max_iters=4 * (gen + steps) + 8)
    prompts, ids = prompts_for(case["lengths"], case["seed"]), case["row_ids"]
    out, nfe = run_debug(model, spec, prompts, ids, case["seed"])

    assert not (out == model.config.mask_id).any(), "mask left"
    n_blocks = gen // block
    if case["policy"] in ("topk", "topk_random"):
        assert (nfe == n_blocks * min(steps // n_blocks, block)).all(), nfe
    else:
        assert ((nfe >= n_blocks) & (nfe <= gen)).all(), nfe

    # Batch invariance without a new program (same shapes, same spec): rows in reverse order, and the first
    # row replaced by another prompt with an unused row id; every kept row must decode exactly as before.
    other = prompts_for([PROMPT_WIDTH + 1 - len(prompts[0])], case["seed"] + 1)[0]
    prompts2, ids2 = [other] + prompts[1:][::-1], [max(ids) + 1] + ids[1:][::-1]
    out2, nfe2 = run_debug(model, spec, prompts2, ids2, case["seed"])
    np.testing.assert_array_equal(out2[1:], out[1:][::-1], err_msg="a row depends on the rest of its batch")
    np.testing.assert_array_equal(nfe2[1:], nfe[1:][::-1])


COMMON = dict(deadline=None, derandomize=True, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=3, **COMMON)
@given(case=cases)
@example(case=dict(policy="topk", cache="prefix", shape=(8, 2, 16), temperature=1.0, lengths=[6, 1, 3], seed=5,
                   row_ids=[0, 7, 3]))
@example(case=dict(policy="klass", cache=None, shape=(8, 4, 8), temperature=0.0, lengths=[2, 4, 6], seed=9,
                   row_ids=[2, 1, 0]))
def test_decode_invariants(jd_models, case):
    run_case(jd_models["llada"], case)


@pytest.mark.slow
@settings(max_examples=60, **COMMON)
@given(case=cases)
def test_decode_invariants_many(jd_models, case):
    run_case(jd_models["llada"], case)
