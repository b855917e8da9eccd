"""dLLM-Cache and dKV-Cache (issue 11): equalities with no cache at their exact settings, an independent numpy
reference of dLLM-Cache at two real settings (token-exact, batched and ragged), the refresh schedule and the
compute account against an independent count, and a 2x4 mesh against one device."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jdllm
from jdllm.decode.caches import DKVCache, DLLMCache
from tests.helpers import make_prompt
from tests.reference import Diagnostics, generate as fastdllm_generate
from tests.reference.dllm_cache import DLLMCacheForward

# ragged: three prompt lengths left-padded into one canvas; 64 tokens in blocks of 16 (the setting). The
# seeds were picked so that every commit decision of the LLaDA reference runs is far from a tie
# (Diagnostics.assert_well_conditioned).
PROMPTS = [make_prompt(0, 4), make_prompt(3, 7), make_prompt(2, 11)]
GEN, BLOCK = 64, 16
SETTINGS = [(100, 7, 0.25), (8, 3, 0.5)]


def _generate(model, cache, threshold=None, prompts=PROMPTS, **kw):
    steps = GEN // BLOCK if threshold is not None else GEN
    return jdllm.generate(model, prompts, gen_length=GEN, block_length=BLOCK, steps=steps, threshold=threshold,
                          cache=cache, prompt_buckets=None, **kw)


@pytest.fixture(scope="module")
def no_cache(jd_models):
    return {(fam, thr): _generate(jd_models[fam], None, thr) for fam in ("llada",) for thr in (None, 0.9)}


def test_dllm_cache_ratio_one_interval_one_is_no_cache(jd_models, no_cache):
    """Every feature recomputed at every step: the no-cache tokens and NFE (ragged, threshold: rows differ)."""
    out = _generate(jd_models["llada"], DLLMCache(1, 1, 1.0), 0.9)
    want = no_cache[("llada", 0.9)]
    np.testing.assert_array_equal(out.tokens, want.tokens)
    np.testing.assert_array_equal(out.nfe, want.nfe)
    assert len(set(want.nfe.tolist())) > 1
    np.testing.assert_array_equal(out.recomputed, want.recomputed)


@pytest.mark.parametrize("variant", ["decode", "greedy"])
def test_dkv_cache_refreshed_every_step_is_no_cache(jd_models, no_cache, variant):
    out = _generate(jd_models["llada"], DKVCache(variant, 1), 0.9)
    want = no_cache[("llada", 0.9)]
    np.testing.assert_array_equal(out.tokens, want.tokens)
    np.testing.assert_array_equal(out.nfe, want.nfe)


def _reference(ref, prompt, setting, threshold, width):
    forward = DLLMCacheForward(ref, len(prompt), *setting)
    diag = Diagnostics()
    steps = GEN // BLOCK if threshold is not None else GEN
    tokens, nfe = fastdllm_generate(forward, prompt, GEN, BLOCK, steps, threshold=threshold, factor=None,
                                    mask_id=ref.mask_id, shift=bool(ref.shift), diag=diag)
    # Commit decisions are far from ties. V-verify's cosines cluster (top-k boundary gaps ~1e-8): a float32 run
    # may pick another of two near-equal rows there, which moves no token in these cases.
    diag.assert_well_conditioned()
    return tokens, nfe, forward


CASES = [pytest.param("llada", s, None, id=f"llada-{s}-topk") for s in SETTINGS] + [
    pytest.param("llada", SETTINGS[1], 0.9, id=f"llada-{SETTINGS[1]}-thr0.9"),
    pytest.param("dream", SETTINGS[0], None, id=f"dream-{SETTINGS[0]}-topk", marks=pytest.mark.slow),
    pytest.param("dream", SETTINGS[1], 0.9, id=f"dream-{SETTINGS[1]}-thr0.9", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("family,setting,threshold", CASES)
def test_dllm_cache_matches_reference(jd_models, ref_models, no_cache, family, setting, threshold):
    """Token-exact with the numpy reference of the official hook, every row of a ragged batch; the refresh
    schedule (prompt / response flags per call) and the recomputed positions match the reference's own count."""
    out = _generate(jd_models[family], DLLMCache(*setting), threshold)
    width = max(map(len, PROMPTS))
    for i, prompt in enumerate(PROMPTS):
        tokens, nfe, forward = _reference(ref_models[family], prompt, setting, threshold, width)
        np.testing.assert_array_equal(out.tokens[i], tokens, err_msg=f"row {i} {setting}")
        assert int(out.nfe[i]) == nfe
        kp, kr, _ = setting
        assert forward.log == [((s - 1) % kp == 0, (s - 1) % kr == 0) for s in range(1, nfe + 1)]
        assert int(out.recomputed[i]) == forward.recomputed(GEN, width)
    if (family, threshold) in no_cache:  # the cache really changes the decode (else the test proves nothing)
        assert np.mean(out.tokens != no_cache[(family, threshold)].tokens) > 0.1


def test_flops_follow_the_compute_account(jd_models, no_cache):
    """FLOPs = recomputed layer rows x (projections + MLP + attention over the canvas) + LM head on the window per
    NFE + V-verify's value projection of the response in layers 1.. of every step without a response refresh."""
    cfg = jd_models["llada"].config
    d, h, hkv, dh, m, n = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_hidden_size, cfg.n_layers
    length = max(map(len, PROMPTS)) + GEN
    per_row = 2 * d * (h * dh + 2 * hkv * dh) + 2 * h * dh * d + 6 * d * m + 4 * length * h * dh
    head = 2 * BLOCK * d * cfg.vocab_size
    want = no_cache[("llada", None)]
    np.testing.assert_allclose(want.flops, want.nfe * (n * length * per_row + head))
    out = _generate(jd_models["llada"], DLLMCache(8, 3, 0.5), None)
    verify = [sum((s - 1) % 3 != 0 for s in range(1, int(e) + 1)) * (n - 1) * GEN * 2 * d * hkv * dh for e in out.nfe]
    np.testing.assert_allclose(out.flops, out.recomputed * per_row + out.nfe * head + np.asarray(verify))
    assert np.all(out.flops < want.flops)


needs8 = pytest.mark.skipif(jax.device_count() < 8,
                            reason="needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")


@needs8
@pytest.mark.parametrize("cache", [DLLMCache(8, 3, 0.5), DKVCache("decode", 4)], ids=["dllm", "dkv"])
def test_mesh_2x4_equals_one_device(jd_models, cache):
    model = jd_models["llada"]
    prompts = PROMPTS[:2]
    one = _generate(model, cache, 0.9, prompts)
    mesh = jdllm.sharding.make_mesh(data=2, tensor=4)
    out = _generate(model, cache, 0.9, prompts, mesh=mesh, rules="tensor_parallel")
    np.testing.assert_array_equal(out.tokens, one.tokens)
    np.testing.assert_array_equal(out.nfe, one.nfe)
    np.testing.assert_array_equal(out.recomputed, one.recomputed)


@pytest.mark.parametrize("refresh", [4, 8])
def test_dkv_decode_matches_reference(jd_models, ref_models, no_cache, refresh):
    """dKV-Cache-Decode at real refresh intervals (LLaDA-Instruct's 8, and 4): token-exact with the numpy
    transcription of the official control flow, every row of a ragged batch; NFE, and recomputed positions equal
    the reference's own count (a full forward: the canvas; a cached step: its query rows; times the layers)."""
    from tests.reference.dkv_cache import dkv_decode_generate

    model, ref = jd_models["llada"], ref_models["llada"]
    out = _generate(model, DKVCache("decode", refresh))
    width = max(map(len, PROMPTS))
    for i, prompt in enumerate(PROMPTS):
        diag = Diagnostics()
        tokens, nfe, queries = dkv_decode_generate(ref, prompt, GEN, BLOCK, GEN, refresh, diag=diag)
        diag.assert_well_conditioned(conf_tol=1e-5)  # a float32 run errs by ~1e-7 in a confidence
        np.testing.assert_array_equal(out.tokens[i], tokens, err_msg=f"row {i} refresh {refresh}")
        assert int(out.nfe[i]) == nfe
        cached = [q for q in queries if q is not None]
        assert cached, "the reference took no cached step"
        want = model.config.n_layers * sum(width + GEN if q is None else q for q in queries)
        assert int(out.recomputed[i]) == want
    assert np.mean(out.tokens != no_cache[("llada", None)].tokens) > 0.05  # the cache really changes the decode


@pytest.mark.parametrize("width", [1, 5, 12])
def test_select_rows_against_numpy(width):
    """The query block holds the selected rows first (canvas order), then the others; `rank` is its inverse
    permutation; only selected rows inside the block are merged back, each from its own block row."""
    from jdllm.decode.caches.rows import merge_rows, select_rows

    rng = np.random.default_rng(width)
    selected = rng.random((4, 12)) < 0.4
    selected[0] = False
    selected[1] = True
    sel = select_rows(jax.numpy.asarray(selected), width)
    for b in range(4):
        order = np.argsort(~selected[b], kind="stable")
        np.testing.assert_array_equal(np.asarray(sel.idx[b]), order[:width])
        np.testing.assert_array_equal(np.asarray(sel.rank[b]), np.argsort(order))
        np.testing.assert_array_equal(np.asarray(sel.merged[b]), selected[b] & (np.argsort(order) < width))
    full = rng.normal(size=(4, 12, 3))
    block = np.take_along_axis(full, np.asarray(sel.idx)[..., None], axis=1) + 100.0  # block row j <- canvas idx[j]
    merged = np.asarray(merge_rows(jax.numpy.asarray(full), jax.numpy.asarray(block), sel))
    want = np.where(np.asarray(sel.merged)[..., None], full + 100.0, full)
    np.testing.assert_allclose(merged, want, rtol=0, atol=1e-5)


def test_cache_arguments_are_checked():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="refresh_interval"):
            DKVCache("decode", bad)
    with pytest.raises(ValueError, match="variant"):
        DKVCache("eager", 4)
