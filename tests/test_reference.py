"""Self-consistency of the numpy references (no jdllm needed).

These pin down that the references used by the parity tests mean what they claim: the cached forward equals the
full forward when the cache is exact, padding does not change valid rows, the cached samplers with an exact
(refreshed-every-step) cache equal the uncached sampler, LLaDA's generate equals Fast-dLLM's top-k generate, the
commit rules behave as described on hand-made inputs, the checkpoints round-trip, and the parity test inputs are
well conditioned and actually exercise the differences between rules and caches.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import (
    BATCH_BLOCK,
    BATCH_GEN,
    BATCH_PROMPTS,
    BATCH_TOPK_STEPS,
    FAMILIES,
    FAST_BLOCK,
    FAST_GEN,
    FAST_PROMPTS,
    FAST_TOPK_STEPS,
    RULES,
    SAMPLER_CONFIGS,
    SAMPLER_PROMPT,
    ref_kwargs,
    rule_steps,
)
from tests.reference import (
    Diagnostics,
    RefModel,
    fastdllm_generate,
    generate,
    get_num_transfer_tokens,
    llada_generate,
    rope_positions,
)
from tests.reference.checkpoints import read_checkpoint
from tests.reference.model import apply_rope, shift_logits
from tests.reference.sampler import select

# ------------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("name", ["llada_ckpt", "llada_gqa_ckpt", "dream_ckpt", "dream_mha_ckpt"])
def test_cached_forward_equals_full_forward_with_exact_cache(name, request):
    _, w, hf = request.getfixturevalue(name)
    m = RefModel(w, hf)
    rng = np.random.default_rng(0)
    toks = rng.integers(0, m.cfg.vocab_size, size=(2, 20))
    full, kv = m.forward(toks)
    assert full.shape == (2, 20, m.cfg.vocab_size)
    assert len(kv) == m.cfg.n_layers and kv[0][0].shape == (2, m.cfg.n_kv_heads, 20, m.cfg.head_dim)
    for q0, q1, fresh in [(5, 13, (6, 13)), (0, 20, (3, 9)), (7, 20, (7, 20)), (4, 12, np.array([4, 9, 11]))]:
        out, kv2 = m.forward(toks, q_start=q0, q_end=q1, fresh=fresh, cache=kv)
        np.testing.assert_allclose(out, full[:, q0:q1], rtol=1e-10, atol=1e-10)
        for (k, v), (k2, v2) in zip(kv, kv2):
            np.testing.assert_allclose(k2, k, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(v2, v, rtol=1e-10, atol=1e-10)


def test_cached_forward_uses_the_cache_for_non_fresh_rows(llada_ckpt):
    """Stale cache rows change the output; fresh rows ignore what the cache holds for them."""
    _, w, hf = llada_ckpt
    m = RefModel(w, hf)
    toks = np.random.default_rng(1).integers(0, 60, size=(1, 16))
    full, kv = m.forward(toks)
    stale = [(k + 1.0, v - 1.0) for k, v in kv]
    out_all_fresh, _ = m.forward(toks, q_start=0, q_end=16, cache=stale)  # every row fresh
    np.testing.assert_allclose(out_all_fresh, full, rtol=1e-10, atol=1e-10)
    out_stale, _ = m.forward(toks, q_start=4, q_end=8, fresh=(4, 8), cache=stale)
    assert not np.allclose(out_stale, full[:, 4:8], atol=1e-3)


def test_positions_and_padding_invariance(llada_ckpt, dream_ckpt):
    np.testing.assert_array_equal(rope_positions(np.ones((1, 5))), [[0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(rope_positions([[0, 0, 1, 1, 1]]), [[0, 0, 0, 1, 2]])
    for _, w, hf in (llada_ckpt, dream_ckpt):
        m = RefModel(w, hf)
        row = np.random.default_rng(2).integers(0, 64, size=9)
        alone = m(row[None])[0]
        padded = np.concatenate([np.full(4, hf["pad_token_id"]), row])[None]
        mask = np.concatenate([np.zeros(4), np.ones(9)])[None]
        np.testing.assert_allclose(m(padded, mask)[0, 4:], alone, rtol=1e-10, atol=1e-10)


def test_rope_is_relative():
    """q.k after RoPE depends on the position difference only (NeoX half-split)."""
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 1, 1, 1, 8))
    dots = []
    for p in (0, 5, 37):
        qr = apply_rope(q, np.array([[p + 3]]), 10000.0)
        kr = apply_rope(k, np.array([[p]]), 10000.0)
        dots.append(float(np.sum(qr * kr)))
    np.testing.assert_allclose(dots, dots[0], rtol=1e-12)
    # position 0 is the identity
    np.testing.assert_allclose(apply_rope(q, np.array([[0]]), 10000.0), q)


def test_shift_logits():
    raw = np.arange(4 * 3, dtype=float).reshape(1, 4, 3)
    used = shift_logits(raw)
    np.testing.assert_array_equal(used[0, 0], raw[0, 0])
    np.testing.assert_array_equal(used[0, 1:], raw[0, :-1])


# ------------------------------------------------------------------------------------------------- rules


def test_num_transfer_tokens():
    np.testing.assert_array_equal(get_num_transfer_tokens(16, 5), [4, 3, 3, 3, 3])
    np.testing.assert_array_equal(get_num_transfer_tokens(8, 16), [1] * 8 + [0] * 8)
    np.testing.assert_array_equal(get_num_transfer_tokens(8, 4), [2, 2, 2, 2])


def _sel(conf, masked=None, **kw):
    conf = np.asarray(conf, dtype=float)
    masked = np.ones(conf.shape, bool) if masked is None else np.asarray(masked, bool)
    return np.flatnonzero(select(conf, masked, **kw)).tolist()


def test_topk_rule_ties_break_by_position_and_ignore_unmasked():
    assert _sel([0.5, 0.7, 0.7, 0.9], quota=2) == [1, 3]  # tie at 0.7 -> lower position first
    assert _sel([0.99, 0.7, 0.6, 0.9], [False, True, True, True], quota=1) == [3]


def test_threshold_rule():
    assert _sel([0.95, 0.2, 0.91, 0.89], threshold=0.9) == [0, 2]
    assert _sel([0.5, 0.2, 0.7, 0.6], threshold=0.9) == [2]  # always the most confident
    assert _sel([0.95, 0.2, 0.91], [False, True, True], threshold=0.9) == [2]
    assert _sel([0.9, 0.3], threshold=0.9) == [0]  # >= tau


def test_factor_rule_quirk_and_intended():
    # factor 1: thresholds for sorted index m = 1, 2, 3: 1 - 1/3, 1 - 1/4, 1 - 1/5
    conf = [0.99, 0.5]  # the only failure is at the last index -> quirk commits both
    assert _sel(conf, factor=1.0, factor_quirk=True) == [0, 1]
    assert _sel(conf, factor=1.0, factor_quirk=False) == [0]
    conf = [0.4, 0.99, 0.95, 0.5]  # sorted: .99 .95 .5 .4 ; .95 >= .667 ok, .5 < .75 fails at m=2 (not last)
    assert _sel(conf, factor=1.0, factor_quirk=True) == [1, 2]
    assert _sel(conf, factor=1.0, factor_quirk=False) == [1, 2]
    conf = [0.99, 0.98, 0.97, 0.5]  # fails at m=3 = last -> quirk commits all four
    assert _sel(conf, factor=1.0, factor_quirk=True) == [0, 1, 2, 3]
    assert _sel(conf, factor=1.0, factor_quirk=False) == [0, 1, 2]
    assert _sel([0.1], factor=1.0) == [0]
    assert _sel([0.2, 0.1, 0.05], factor=1.0, factor_quirk=True) == [0]  # m=1 fails, not last
    # all pass
    assert _sel([0.99, 0.98, 0.97], factor=1.0, factor_quirk=False) == [0, 1, 2]


# ------------------------------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gen_length,block_length,steps", SAMPLER_CONFIGS)
def test_llada_generate_equals_fastdllm_topk(family, gen_length, block_length, steps, ref_models):
    m = ref_models[family]
    a = llada_generate(m, SAMPLER_PROMPT, gen_length, block_length, steps, m.mask_id, shift=family == "dream")
    b = generate(m, SAMPLER_PROMPT, gen_length, block_length, steps)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    assert a[1] == min(steps, gen_length)  # one forward per step; early exit when steps > gen_length
    assert not np.any(a[0] == m.mask_id)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_samplers_with_exact_cache_equal_uncached(family, rule, cache, ref_models):
    m = ref_models[family]
    steps = rule_steps(rule, FAST_GEN, FAST_BLOCK, FAST_TOPK_STEPS)
    for prompt in FAST_PROMPTS:
        want = fastdllm_generate(m, prompt, FAST_GEN, FAST_BLOCK, steps, cache=None, **ref_kwargs(rule))
        got = fastdllm_generate(
            m, prompt, FAST_GEN, FAST_BLOCK, steps, cache=cache, exact_cache=True, **ref_kwargs(rule)
        )
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == want[1]


def _fast_results(m, prompt, rule, cache):
    steps = rule_steps(rule, FAST_GEN, FAST_BLOCK, FAST_TOPK_STEPS)
    d = Diagnostics()
    toks, nfe = fastdllm_generate(m, prompt, FAST_GEN, FAST_BLOCK, steps, cache=cache, diag=d, **ref_kwargs(rule))
    return toks, nfe, d


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_inputs_are_well_conditioned_and_discriminating(family, ref_models):
    """The reference paths of every parity case are far from ties, and the matrix is not vacuous: approximate
    caches change results somewhere, threshold rules take fewer NFE than one-token-per-step, and the factor
    quirk differs from the intended rule somewhere."""
    m = ref_models[family]
    res = {}
    for prompt_i, prompt in enumerate(FAST_PROMPTS):
        for rule in RULES:
            for cache in (None, "prefix", "dual"):
                toks, nfe, d = _fast_results(m, prompt, rule, cache)
                d.assert_well_conditioned()
                assert not np.any(toks == m.mask_id)
                res[prompt_i, rule, cache] = (toks.tolist(), nfe)
    keys = list(res)
    assert any(res[p, r, c] != res[p, r, None] for (p, r, c) in keys if c is not None), "caches never matter"
    assert any(res[p, r, "prefix"] != res[p, r, "dual"] for (p, r, _) in keys), "prefix == dual everywhere"
    assert any(
        res[p, "factor_quirk", c] != res[p, "factor_intended", c] for p in range(2) for c in (None, "prefix", "dual")
    ), "factor quirk never matters"
    for p in range(2):
        assert res[p, "thr0.7", None][1] <= res[p, "thr0.9", None][1] < FAST_GEN

    for shape_cfg in SAMPLER_CONFIGS:
        d = Diagnostics()
        llada_generate(m, SAMPLER_PROMPT, *shape_cfg, m.mask_id, shift=family == "dream", diag=d)
        d.assert_well_conditioned()

    for prompt in BATCH_PROMPTS:
        for rule in ("topk", "thr0.9"):
            for cache in (None, "prefix", "dual"):
                d = Diagnostics()
                steps = rule_steps(rule, BATCH_GEN, BATCH_BLOCK, BATCH_TOPK_STEPS)
                fastdllm_generate(m, prompt, BATCH_GEN, BATCH_BLOCK, steps, cache=cache, diag=d, **ref_kwargs(rule))
                d.assert_well_conditioned()


@pytest.mark.parametrize("family", FAMILIES)
def test_confidences_mix_high_and_low(family, ref_models):
    """Within the first step of a block, confidences both above and below 0.9 occur (threshold rules act)."""
    m = ref_models[family]
    d = Diagnostics()
    generate(m, FAST_PROMPTS[0], FAST_GEN, FAST_BLOCK, FAST_GEN // FAST_BLOCK, threshold=0.9, diag=d)
    c = np.concatenate(d.conf_seen)
    assert np.mean(c > 0.9) > 0.1 and np.mean(c < 0.9) > 0.3
    first = d.conf_seen[0]
    assert first.size == FAST_BLOCK


# ------------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ["llada_ckpt", "llada_gqa_ckpt", "dream_ckpt", "dream_mha_ckpt"])
def test_checkpoint_roundtrip(name, request):
    path, w, hf = request.getfixturevalue(name)
    w2, hf2 = read_checkpoint(path)
    assert hf2 == hf
    assert set(w2) == set(w)
    for k in w:
        assert w2[k].dtype == np.float32
        np.testing.assert_array_equal(w2[k], w[k])
    index = path / "model.safetensors.index.json"
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        assert set(wm) == set(w) and len(set(wm.values())) > 1
    n_layers = hf.get("n_layers", hf.get("num_hidden_layers"))
    per_layer = 9 if hf["model_type"] == "llada" else 12
    assert len(w) == n_layers * per_layer + 3
