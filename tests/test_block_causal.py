"""D2F block-causal attention (arXiv 2508.09192 §3.1) in the model: mask construction against a numpy transcription
of D2F's `create_full_block_attention_mask`, logits against the numpy float64 reference forward with that mask,
the property that makes an exact block K/V cache possible, and the config.json / orbax round trips."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jdllm
from jdllm.models import ModelConfig
from jdllm.models.config import config_from_hf
from jdllm.models.masks import block_causal_allowed, block_ids
from jdllm.weights.hf import hf_config, save_hf
from tests.reference import RefModel
from tests.reference.checkpoints import build_dream_checkpoint, build_llada_checkpoint
from tests.reference.masks import create_full_block_attention_mask

RTOL = 1e-4
BLOCK = 3
PROMPT_WIDTH, GEN = 5, 8  # canvas = prompt region (left-padded) + generation region; blocks 3, 3, 2 (partial)
PROMPT_LENGTHS = (5, 2, 4)  # ragged prompts in the same canvas


def _canvas(rng, pad_id, mask_id):
    """Left-padded prompts of PROMPT_LENGTHS in a PROMPT_WIDTH region, then GEN generation tokens (some masked)."""
    b, width = len(PROMPT_LENGTHS), PROMPT_WIDTH + GEN
    tokens = rng.integers(0, 60, size=(b, width)).astype(np.int32)
    tokens[:, -3:] = mask_id
    valid = np.ones((b, width), bool)
    for i, n in enumerate(PROMPT_LENGTHS):
        tokens[i, :PROMPT_WIDTH - n] = pad_id
        valid[i, :PROMPT_WIDTH - n] = False
    return tokens, valid


def _d2f_allowed(prompt_length, max_length, block_size):
    return create_full_block_attention_mask(prompt_length, max_length, block_size)[0, 0] == 0


# ------------------------------------------------------------------------------------------------ mask construction
@pytest.mark.parametrize("block_size", [1, 3, 4, 16])
@pytest.mark.parametrize("prompt_lengths", [(5, 2, 4), (1, 5, 3)])
def test_mask_matches_d2f_on_ragged_left_padded_prompts(block_size, prompt_lengths):
    """On each row's valid part (its prompt without the left padding, then the generation region), the canvas mask
    equals D2F's mask for that prompt alone: blocks count from each prompt's end, the prompt is block 0."""
    width, gen = 5, 11  # 11 = not a multiple of 3, 4, 16: a partial last block
    rows = jnp.broadcast_to(jnp.arange(width + gen), (len(prompt_lengths), width + gen))
    ids = block_ids(rows, width, block_size)
    allowed = np.asarray(block_causal_allowed(ids, ids))
    assert allowed.shape == (len(prompt_lengths), width + gen, width + gen)
    for i, n in enumerate(prompt_lengths):
        keep = np.arange(width - n, width + gen)
        np.testing.assert_array_equal(allowed[i][np.ix_(keep, keep)], _d2f_allowed(n, n + gen, block_size))


def test_block_ids_values():
    index = jnp.arange(12)[None]
    np.testing.assert_array_equal(block_ids(index, 4, 3)[0], [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3])
    np.testing.assert_array_equal(block_ids(index, 0, 5)[0], [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3])
    assert block_ids(index, 4, 3).dtype == jnp.int32


@pytest.mark.parametrize("kw, match", [
    (dict(prompt_len=-1, block_size=3), r"prompt_len must be an integer >= 0, got -1"),
    (dict(prompt_len=2, block_size=0), r"block_size must be an integer >= 1, got 0"),
    (dict(prompt_len=2, block_size=2.0), r"block_size must be an integer >= 1, got 2\.0"),
])
def test_block_ids_refuses_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        block_ids(jnp.arange(4), **kw)


def test_allowed_refuses_mismatched_batches():
    with pytest.raises(ValueError, match=r"q_block \[B, Q\] and k_block \[B, T\].*\(2, 3\) and \(1, 3\)"):
        block_causal_allowed(jnp.zeros((2, 3), jnp.int32), jnp.zeros((1, 3), jnp.int32))


# ------------------------------------------------------------------------------------------------ model vs reference
@pytest.fixture(scope="module", params=["llada", "dream"])
def case(request, tmp_path_factory):
    """(family, block-causal jdllm model loaded from config.json, bidirectional model of the same weights, ref)."""
    build = build_llada_checkpoint if request.param == "llada" else build_dream_checkpoint
    bidir_path, _, _ = build(tmp_path_factory.mktemp(f"bd_{request.param}"), seed=0)
    path, w, hf = build(tmp_path_factory.mktemp(f"bc_{request.param}"), seed=0)
    hf = {**hf, "attention": "block_causal", "attention_block_size": BLOCK}  # the keys D2F-style students carry
    (path / "config.json").write_text(json.dumps(hf))
    return request.param, jdllm.load(str(path)), jdllm.load(str(bidir_path)), RefModel(w, hf), hf


def _assert_close(got, want, what=""):
    got = np.asarray(got, dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * float(np.max(np.abs(want))), err_msg=what)


def test_loaded_config_is_block_causal(case):
    family, model, bidir, _, _ = case
    assert (model.config.attention, model.config.attention_block_size) == ("block_causal", BLOCK)
    assert (bidir.config.attention, bidir.config.attention_block_size) == ("bidirectional", None)
    assert model.config == bidir.config.replace(attention="block_causal", attention_block_size=BLOCK)


def test_logits_match_reference_under_d2f_mask(case):
    """Each row of the left-padded batch equals the float64 reference forward of that row alone (prompt of its own
    length) under D2F's mask; the reference's bidirectional logits differ (the mask is not a no-op)."""
    family, model, _, ref, hf = case
    tokens, valid = _canvas(np.random.default_rng(0), hf["pad_token_id"], hf["mask_token_id"])
    logits = np.asarray(model(jnp.asarray(tokens), jnp.asarray(valid), prompt_len=PROMPT_WIDTH))
    assert logits.shape == (*tokens.shape, hf["vocab_size"]) and logits.dtype == np.float32
    for i, n in enumerate(PROMPT_LENGTHS):
        row = tokens[i, PROMPT_WIDTH - n:]
        want = ref(row[None], attention_bias=create_full_block_attention_mask(n, len(row), BLOCK))[0]
        _assert_close(logits[i, PROMPT_WIDTH - n:], want, f"{family} row {i}")
        assert np.max(np.abs(ref(row[None])[0] - want)[n:]) > 1e-3


def test_bidirectional_model_takes_the_mask_by_argument(case):
    """A bidirectional config given prompt_len and block_size runs the block-causal view of the same weights (the
    D2F student's view of the teacher); without them it stays bidirectional and matches the reference."""
    family, model, bidir, ref, hf = case
    tokens, valid = _canvas(np.random.default_rng(1), hf["pad_token_id"], hf["mask_token_id"])
    tokens, valid = jnp.asarray(tokens), jnp.asarray(valid)
    np.testing.assert_array_equal(bidir(tokens, valid, prompt_len=PROMPT_WIDTH, block_size=BLOCK),
                                  model(tokens, valid, prompt_len=PROMPT_WIDTH))
    _assert_close(bidir(tokens, valid), ref(np.asarray(tokens), np.asarray(valid)), family)


def test_block_size_argument_overrides_the_config(case):
    family, model, _, ref, hf = case
    row = np.random.default_rng(2).integers(0, 60, size=(1, 11)).astype(np.int32)
    got = model(jnp.asarray(row), prompt_len=4, block_size=2)
    _assert_close(got, ref(row, attention_bias=create_full_block_attention_mask(4, 11, 2)), family)


def test_earlier_blocks_do_not_see_later_blocks(case):
    """The property that makes the block K/V cache exact: changing the tokens of blocks > i leaves the logits and
    every layer's K/V of blocks <= i bit-identical, while those of the changed block do move."""
    family, model, bidir, _, hf = case
    tokens, valid = _canvas(np.random.default_rng(3), hf["pad_token_id"], hf["mask_token_id"])
    rows = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    ids = block_ids(rows, PROMPT_WIDTH, BLOCK)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    for first_changed in (PROMPT_WIDTH, PROMPT_WIDTH + BLOCK, PROMPT_WIDTH + 2 * BLOCK):  # blocks 1, 2, 3
        changed = tokens.copy()
        changed[:, first_changed:] = (changed[:, first_changed:] + 7) % 60
        outs = [model.layers(jnp.asarray(t), positions, jnp.asarray(valid), q_block=ids, k_block=ids)
                for t in (tokens, changed)]
        (h0, kv0), (h1, kv1) = outs
        np.testing.assert_array_equal(h0[:, :first_changed], h1[:, :first_changed])
        for (k0, v0), (k1, v1) in zip(kv0, kv1):
            np.testing.assert_array_equal(k0[:, :first_changed], k1[:, :first_changed])
            np.testing.assert_array_equal(v0[:, :first_changed], v1[:, :first_changed])
        assert float(jnp.max(jnp.abs(h0[:, first_changed:] - h1[:, first_changed:]))) > 1e-3
    before, after = (bidir(jnp.asarray(t), jnp.asarray(valid)) for t in (tokens, changed))
    assert float(jnp.max(jnp.abs(after - before)[:, :PROMPT_WIDTH])) > 1e-3  # a bidirectional model sees later blocks


def test_queries_of_one_block_against_cached_kv_equal_the_full_forward(case):
    """K/V of the prompt and block 1 computed while later blocks held other tokens (all masks), then only block 2's
    queries run against them (the cached call of `layers`): equal to the full forward's block 2."""
    family, model, _, _, hf = case
    tokens, valid = _canvas(np.random.default_rng(4), hf["pad_token_id"], hf["mask_token_id"])
    tokens, valid = jnp.asarray(tokens), jnp.asarray(valid)
    rows = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    ids = block_ids(rows, PROMPT_WIDTH, BLOCK)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    start, end = PROMPT_WIDTH + BLOCK, PROMPT_WIDTH + 2 * BLOCK
    early = tokens.at[:, start:].set(hf["mask_token_id"])
    _, cache = model.layers(early, positions, valid, q_block=ids, k_block=ids)
    merge = lambda i, k, v: (cache[i][0].at[:, start:end].set(k), cache[i][1].at[:, start:end].set(v))  # noqa: E731
    hidden, _ = model.layers(tokens[:, start:end], positions[:, start:end], valid, merge,
                             q_block=ids[:, start:end], k_block=ids)
    full = model(tokens, valid, prompt_len=PROMPT_WIDTH)[:, start:end]
    np.testing.assert_allclose(model.head(hidden), full, rtol=1e-5, atol=1e-5)


def test_bidirectional_layers_unchanged_by_all_visible_block_ids(case):
    """Block ids that allow every key give the bidirectional numbers bit for bit."""
    family, _, bidir, _, hf = case
    tokens, valid = _canvas(np.random.default_rng(5), hf["pad_token_id"], hf["mask_token_id"])
    tokens, valid = jnp.asarray(tokens), jnp.asarray(valid)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    zeros = jnp.zeros(tokens.shape, jnp.int32)
    np.testing.assert_array_equal(bidir.layers(tokens, positions, valid)[0],
                                  bidir.layers(tokens, positions, valid, q_block=zeros, k_block=zeros)[0])


# ------------------------------------------------------------------------------------------------ argument errors
def test_forward_argument_errors(case):
    family, model, bidir, _, _ = case
    t = jnp.zeros((1, 6), jnp.int32)
    with pytest.raises(ValueError, match=r"attention='block_causal': pass prompt_len"):
        model(t)
    with pytest.raises(ValueError, match=r"needs both prompt_len and block_size, got prompt_len=2, block_size=None"):
        bidir(t, prompt_len=2)
    with pytest.raises(ValueError, match=r"needs both prompt_len and block_size, got prompt_len=None, block_size=2"):
        bidir(t, block_size=2)
    with pytest.raises(ValueError, match=r"prompt_len must be an integer in \[0, 6\].*got 7"):
        model(t, prompt_len=7)
    with pytest.raises(ValueError, match=r"block_size must be an integer >= 1, got 0"):
        model(t, prompt_len=2, block_size=0)
    valid, pos = jnp.ones((1, 6), bool), jnp.zeros((1, 6), jnp.int32)
    with pytest.raises(ValueError, match=r"attention='block_causal': pass q_block / k_block"):
        model.layers(t, pos, valid)
    with pytest.raises(ValueError, match=r"q_block and k_block must be given together"):
        bidir.layers(t, pos, valid, q_block=pos)
    with pytest.raises(ValueError, match=r"q_block must have the shape of tokens \(1, 6\).*got \(1, 5\) and \(1, 6\)"):
        bidir.layers(t, pos, valid, q_block=pos[:, 1:], k_block=pos)


# ------------------------------------------------------------------------------------------------ config round trips
def _hf(family, **extra):
    if family == "llada":
        base = {"model_type": "llada", "d_model": 16, "n_heads": 4, "n_layers": 1, "mlp_hidden_size": 32,
                "vocab_size": 40, "mask_token_id": 39}
    else:
        base = {"model_type": "Dream", "hidden_size": 16, "num_attention_heads": 4, "num_hidden_layers": 1,
                "intermediate_size": 32, "vocab_size": 40, "mask_token_id": 39}
    return {**base, **extra}


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_config_json_attention_keys(family):
    cfg = config_from_hf(_hf(family, attention="block_causal", attention_block_size=16))
    assert (cfg.attention, cfg.attention_block_size) == ("block_causal", 16)
    assert config_from_hf(_hf(family, attention="block_causal", attention_block_size=16.0)).attention_block_size == 16
    cfg = config_from_hf(_hf(family))
    assert (cfg.attention, cfg.attention_block_size) == ("bidirectional", None)
    assert config_from_hf(_hf(family, attention="bidirectional", attention_block_size=None)) == cfg
    assert "attention" not in hf_config(cfg) and "attention_block_size" not in hf_config(cfg)


@pytest.mark.parametrize("extra, match", [
    (dict(attention="causal"), r"key 'attention' must be one of \['bidirectional', 'block_causal'\], got 'causal'"),
    (dict(attention="block_causal"), r"key 'attention_block_size' must be an integer >= 1 for block_causal"),
    (dict(attention="block_causal", attention_block_size=0), r"key 'attention_block_size' must be an integer >= 1"),
    (dict(attention="block_causal", attention_block_size="16"), r"key 'attention_block_size' must be an integer"),
    (dict(attention_block_size=16), r"key 'attention_block_size' must be absent or null for bidirectional"),
])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_config_json_bad_attention_keys_are_named(family, extra, match):
    with pytest.raises(ValueError, match=r"^/ckpt/config\.json: " + match):
        config_from_hf(_hf(family, **extra), source="/ckpt/config.json")


@pytest.mark.parametrize("kw, match", [
    (dict(attention="causal"), r"attention must be one of .*got 'causal'"),
    (dict(attention="block_causal"), r"attention_block_size must be an integer >= 1 for block_causal attention, "
                                     r"got None"),
    (dict(attention="block_causal", attention_block_size=True), r"attention_block_size must be an integer >= 1"),
    (dict(attention_block_size=4), r"attention_block_size must be None for bidirectional attention, got 4"),
])
def test_model_config_validates_attention(kw, match):
    base = config_from_hf(_hf("llada"))
    with pytest.raises(ValueError, match=match):
        base.replace(**kw)


@pytest.mark.parametrize("fmt", ["hf", "orbax"])
def test_save_load_round_trip_keeps_block_causal(case, tmp_path, fmt):
    family, model, _, _, hf = case
    jdllm.save(model, tmp_path / "m", format=fmt)
    if fmt == "hf":
        written = json.loads((tmp_path / "m" / "config.json").read_text())
        assert (written["attention"], written["attention_block_size"]) == ("block_causal", BLOCK)
    else:
        written = json.loads((tmp_path / "m" / "jdllm_config.json").read_text())
        assert (written["attention"], written["attention_block_size"]) == ("block_causal", BLOCK)
    loaded = jdllm.load(tmp_path / "m")
    assert loaded.config == model.config
    t = jnp.asarray(np.random.default_rng(6).integers(0, 60, size=(1, 9)), jnp.int32)
    np.testing.assert_array_equal(loaded(t, prompt_len=3), model(t, prompt_len=3))


def test_orbax_config_without_attention_keys_reads_bidirectional():
    """jdllm_config.json files written before the attention keys existed still load (bidirectional)."""
    data = ModelConfig.from_dict(config_from_hf(_hf("dream")).to_dict()).to_dict()
    del data["attention"], data["attention_block_size"]
    cfg = ModelConfig.from_dict(data)
    assert (cfg.attention, cfg.attention_block_size) == ("bidirectional", None)
