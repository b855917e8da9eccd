"""The serving engine: block-granular continuous batching gives `jdllm.generate`'s tokens.

Requests arrive while others are mid-decode (slots < requests), are admitted at block boundaries into a static
batch, stream one event per committed block, and end with exactly the tokens and NFE `generate` computes for the
same prompts, settings, seed and row ids. The row accessor is checked against numpy on a toy pytree.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import jdllm
from jdllm.serve import Engine, ServeDefaults, resolve_settings
from jdllm.serve.rows import gather_rows, put_rows, row_axes, select_rows, take_rows
from jdllm.shipped import load_bundle
from jdllm.tasks.arithmetic import make_problems

SEED = 5


@pytest.fixture(scope="module")
def bundle():
    return load_bundle("arith-llada-tiny")


@pytest.fixture(scope="module")
def prompts(bundle):
    return [bundle.encode_prompt(p.question) for p in make_problems(5, split="test", seed=3)]


def _toy(b):
    return {"a": jnp.zeros((b, 3)), "g": jnp.zeros(()), "kv": jnp.zeros((2, b, 5)), "pol": jnp.zeros((b * 3, 4))}


def test_row_axes_and_row_operations_match_numpy():
    axes = row_axes(_toy)
    assert axes == ((0, 1), None, (1, 1), (0, 3))  # leaves in key order a, g, kv, pol
    rng = np.random.default_rng(0)
    x = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in _toy(4).items()}
    y = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in _toy(4).items()}
    rows = np.array([True, False, False, True])
    picked = select_rows(axes, jnp.asarray(rows), x, y)
    np.testing.assert_array_equal(picked["a"], np.where(rows[:, None], x["a"], y["a"]))
    np.testing.assert_array_equal(picked["kv"], np.where(rows[None, :, None], x["kv"], y["kv"]))
    np.testing.assert_array_equal(picked["pol"], np.where(np.repeat(rows, 3)[:, None], x["pol"], y["pol"]))
    np.testing.assert_array_equal(picked["g"], x["g"])
    order = np.array([2, 0, 3, 1])
    moved = gather_rows(axes, x, jnp.asarray(order))
    np.testing.assert_array_equal(moved["kv"], x["kv"][:, order])
    np.testing.assert_array_equal(moved["pol"], x["pol"].reshape(4, 3, 4)[order].reshape(12, 4))
    first = take_rows(axes, x, 2)
    assert first["pol"].shape == (6, 4) and first["kv"].shape == (2, 2, 5)
    np.testing.assert_array_equal(first["pol"], x["pol"][:6])
    back = put_rows(axes, y, first)
    np.testing.assert_array_equal(back["kv"], np.concatenate([x["kv"][:, :2], y["kv"][:, 2:]], axis=1))
    np.testing.assert_array_equal(back["pol"], np.concatenate([x["pol"][:6], y["pol"][6:]]))
    with pytest.raises(ValueError, match="no single batch axis"):
        row_axes(lambda b: {"square": jnp.zeros((b, b))})


def _check_against_generate(model, bundle, prompts, settings, slots, late=2):
    """Submit all but `late` prompts, step once, submit the rest (they wait for slots); compare with generate."""
    engine = Engine(model, slots=slots, stop_at_eos=False)
    ids = [engine.submit(p, settings, seed=SEED, row_id=i) for i, p in enumerate(prompts[:-late])]
    events = engine.step()
    ids += [engine.submit(p, settings, seed=SEED, row_id=i) for i, p in enumerate(prompts[-late:], len(ids))]
    doomed = engine.submit(prompts[0], settings, seed=SEED, row_id=99)
    history = {}
    for e in events:
        history.setdefault(e.request_id, []).append(e)
    cancelled = False
    while engine.busy:
        for e in engine.step():
            history.setdefault(e.request_id, []).append(e)
        if doomed in history and not cancelled:
            engine.cancel(doomed)  # leaves mid-decode: its slot frees, nobody else changes
            cancelled = True
    spec = settings.spec
    out = jdllm.generate(model, prompts, gen_length=settings.gen_length, policy=spec.policy, cache=spec.cache,
                         schedule=spec.schedule, temperature=spec.temperature, seed=SEED)
    block = spec.schedule.block_length
    for i, rid in enumerate(ids):
        seen = history[rid]
        assert [e.kind for e in seen][-1] == "done" and all(e.kind == "block" for e in seen[:-1])
        lengths = [len(e.tokens) for e in seen]
        assert lengths == sorted(set(lengths)) and all(n % block == 0 for n in lengths)  # whole blocks, growing
        for e in seen:  # every streamed block is final
            np.testing.assert_array_equal(e.tokens, out.tokens[i][: len(e.tokens)])
        np.testing.assert_array_equal(seen[-1].tokens, out.tokens[i])
        assert seen[-1].nfe == out.nfe[i]
    assert len(history[doomed]) == 1 and not engine.busy  # nothing after its cancellation
    return history, ids, out


def test_engine_matches_generate_with_staggered_admission_and_sampling(bundle, prompts):
    """Top-k schedule at temperature 0.7 (per-row PRNG streams), 2 blocks, 2 slots for 5 requests + 1 cancelled."""
    settings = resolve_settings(bundle.model.config, ServeDefaults(gen_length=32, block_length=32),
                                max_tokens=64, temperature=0.7)
    history, ids, out = _check_against_generate(bundle.model, bundle, prompts, settings, slots=2)
    assert all(len(history[rid]) == 2 for rid in ids)  # one event per block
    assert not np.array_equal(out.tokens[0], out.tokens[1])


def test_engine_matches_generate_exact_cache_pipeline(bundle, prompts):
    """D2F: exact block-causal cache + pipelined schedule; new rows prefill alone while the others are frozen."""
    model = jdllm.as_block_causal(bundle.model)
    settings = resolve_settings(model.config, ServeDefaults(), max_tokens=64, recipe="d2f", block_length=8)
    _check_against_generate(model, bundle, prompts[:3], settings, slots=2, late=1)


@pytest.mark.slow
def test_engine_matches_generate_dual_cache_threshold(bundle, prompts):
    settings = resolve_settings(bundle.model.config, ServeDefaults(), max_tokens=64, recipe="fast_dllm_dual_parallel")
    _check_against_generate(bundle.model, bundle, prompts, settings, slots=4)


def test_engine_stops_at_eos_and_refuses_bad_requests(bundle, prompts):
    cfg = bundle.model.config
    settings = resolve_settings(cfg, ServeDefaults(gen_length=32, block_length=32), max_tokens=64, block_length=16)
    engine = Engine(bundle.model, slots=2)
    rid = engine.submit(prompts[0], settings)
    last = engine.run_all()[rid]
    assert last.kind == "done" and last.finish_reason == "stop" and cfg.eos_id in last.tokens
    assert len(last.tokens) < 64  # retired at the block holding EOS, before decoding the rest
    with pytest.raises(ValueError, match="mask id"):
        engine.submit([5, cfg.mask_id], settings)
    with pytest.raises(ValueError, match="maximum length"):
        engine.submit([5] * (cfg.max_seq_len - 63), settings)
    with pytest.raises(ValueError, match="seed"):
        engine.submit([5], settings, seed=-1)
    with pytest.raises(ValueError, match="max_tokens"):
        resolve_settings(cfg, ServeDefaults(max_tokens=128), max_tokens=129)
    with pytest.raises(ValueError, match="unknown recipe"):
        resolve_settings(cfg, ServeDefaults(), recipe="nope")
    with pytest.raises(ValueError, match="unknown decode field"):
        resolve_settings(cfg, ServeDefaults(), top_k=3)
    assert not engine.busy
