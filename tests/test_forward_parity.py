"""jdllm.load + jdllm.forward against the numpy float64 reference forward (LLaDA and Dream, MHA and GQA, single
and sharded checkpoints, with and without left padding). Logits are raw (unshifted) float32."""

from __future__ import annotations

import numpy as np
import pytest

import jdllm
from tests.reference import RefModel

CKPTS = ["llada_ckpt", "llada_gqa_ckpt", "dream_ckpt", "dream_mha_ckpt"]
RTOL = 1e-4


def _assert_close(got, want, what=""):
    got = np.asarray(got, dtype=np.float64)
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


@pytest.fixture(scope="module", params=CKPTS)
def case(request):
    path, w, hf = request.getfixturevalue(request.param)
    return request.param, jdllm.load(str(path)), RefModel(w, hf), hf


def test_config(case):
    name, model, ref, hf = case
    cfg = model.config
    assert isinstance(cfg, jdllm.models.ModelConfig)
    assert cfg.mask_id == hf["mask_token_id"] == 63
    assert cfg.vocab_size == 64
    assert cfg.logit_alignment == ("shifted" if name.startswith("dream") else "same")


def test_forward_matches_reference(case):
    name, model, ref, hf = case
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=(2, 12)).astype(np.int32)  # includes mask / eos / pad ids sometimes
    tokens[:, 8:] = hf["mask_token_id"]
    logits = jdllm.forward(model, tokens)
    assert logits.shape == (2, 12, 64)
    assert np.asarray(logits).dtype == np.float32
    _assert_close(logits, ref(tokens), name)


def test_forward_all_ones_mask_equals_no_mask(case):
    name, model, ref, hf = case
    tokens = np.random.default_rng(1).integers(0, 60, size=(1, 10)).astype(np.int32)
    a = np.asarray(jdllm.forward(model, tokens))
    b = np.asarray(jdllm.forward(model, tokens, attention_mask=np.ones_like(tokens)))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_forward_left_padded(case):
    """Rows of different lengths left-padded with the pad id: valid rows equal each row's unpadded forward."""
    name, model, ref, hf = case
    rng = np.random.default_rng(2)
    lengths = [12, 7, 3]
    rows = [rng.integers(0, 60, size=n) for n in lengths]
    rows[1][-2:] = hf["mask_token_id"]
    tokens = np.full((3, 12), hf["pad_token_id"], dtype=np.int32)
    mask = np.zeros((3, 12), dtype=np.int32)
    for i, r in enumerate(rows):
        tokens[i, 12 - len(r):] = r
        mask[i, 12 - len(r):] = 1
    logits = np.asarray(jdllm.forward(model, tokens, attention_mask=mask))
    assert logits.shape == (3, 12, 64)
    want_padded = ref(tokens, mask)
    for i, r in enumerate(rows):
        n = len(r)
        alone = ref(r[None])[0]
        np.testing.assert_allclose(want_padded[i, 12 - n:], alone, rtol=1e-9, atol=1e-9)  # reference self-check
        _assert_close(logits[i, 12 - n:], alone, f"{name} row {i}")
        assert np.all(np.isfinite(logits[i]))
