"""Attention kernels (`jdllm.models.attention_kernels`): the Pallas splash kernel (run on CPU through Pallas'
interpreter) against a plain-numpy softmax attention, and end to end against the XLA kernel's tokens; the
kernel choice and where it is (not) stored."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdllm
from jdllm.models.attention_kernels import attention, resolve_kernel
from jdllm.models.config import ModelConfig


def numpy_attention(q, k, v, key_valid):
    """softmax(q k^T / sqrt(d), padding keys at -inf) v in float64, query head h reading K/V head h // group."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    scores = np.einsum("bqhd,bthd->bhqt", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(np.asarray(key_valid)[:, None, None, :], scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqt,bthd->bqhd", p, v)


@pytest.mark.parametrize("q_len,t_len,heads,kv_heads", [(20, 63, 4, 2), (130, 130, 2, 2), (1, 200, 4, 1)])
def test_splash_matches_numpy_attention(q_len, t_len, heads, kv_heads):
    """Left padding (segment ids), grouped K/V heads, query / key lengths that are not (or cross) a 128 tile."""
    rng = np.random.default_rng(q_len)
    q = rng.normal(size=(3, q_len, heads, 16)).astype(np.float32)
    k = rng.normal(size=(3, t_len, kv_heads, 16)).astype(np.float32)
    v = rng.normal(size=(3, t_len, kv_heads, 16)).astype(np.float32)
    valid = np.arange(t_len)[None, :] >= np.array([0, 5, t_len // 2])[:, None]
    want = numpy_attention(q, k, v, valid)
    for kernel in ("splash", "xla"):
        got = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(valid), kernel=kernel)
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5, err_msg=kernel)


def test_kernel_resolution():
    assert jax.default_backend() == "cpu"
    assert resolve_kernel("auto", block_causal=False) == "xla"  # splash only on a single TPU device
    assert resolve_kernel("splash", block_causal=False) == "splash"
    assert resolve_kernel("splash", block_causal=True) == "xla"  # per-row block-causal masks: XLA
    assert resolve_kernel("cudnn", block_causal=False) == "cudnn"
    assert resolve_kernel("auto", block_causal=False, head_dim=32) == "xla"
    with pytest.raises(ValueError, match="attention_kernel must be one of"):
        resolve_kernel("flash", block_causal=False)
    with pytest.raises(ValueError, match="attention_kernel must be one of"):
        ModelConfig(family="llada", vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=2,
                    mlp_hidden_size=16, max_seq_len=32, mask_id=3, attention_kernel="flash")


@pytest.mark.parametrize("cache", [None, "dual"])
def test_splash_generate_equals_xla_tokens(llada_gqa_ckpt, cache):
    """Ragged prompts (left padding), GQA; with the dual cache the queries are a window of the canvas."""
    path = llada_gqa_ckpt[0]
    xla = jdllm.load(str(path), attention_kernel="xla")
    splash = jdllm.with_attention_kernel(xla, "splash")
    assert splash.config.attention_kernel == "splash" and xla.config.attention_kernel == "xla"
    prompts = [[5, 9, 11, 4, 7, 8, 2 + 10], [6, 3, 12]]
    kw = dict(gen_length=8, block_length=4, steps=4, cache=cache, threshold=0.3 if cache else None)
    want = jdllm.generate(xla, prompts, **kw)
    got = jdllm.generate(splash, prompts, **kw)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.nfe, want.nfe)


def test_kernel_is_a_runtime_choice_not_stored(llada_ckpt, tmp_path):
    model = jdllm.load(str(llada_ckpt[0]), attention_kernel="splash")
    assert model.config.attention_kernel == "splash"
    jdllm.save(model, tmp_path / "orbax")
    stored = json.loads((tmp_path / "orbax" / "jdllm_config.json").read_text())
    assert stored["attention_kernel"] == "auto"
    assert jdllm.load(str(tmp_path / "orbax")).config.attention_kernel == "auto"
