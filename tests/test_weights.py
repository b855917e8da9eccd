"""Checkpoint I/O: HF layout errors name the tensor, orbax and HF round trips, bfloat16 files."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import jdllm
from jdllm.models import ModelConfig, Transformer
from jdllm.weights.hf import hf_tensors, save_hf
from jdllm.weights.safetensors_io import SafetensorsFile, save_file


def _model(family="llada", **kw):
    extra = dict(qkv_bias=True, logit_alignment="shifted") if family == "dream" else {}
    cfg = ModelConfig(family=family, vocab_size=40, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                      mlp_hidden_size=32, max_seq_len=64, mask_id=39, eos_id=38, pad_id=37, **extra, **kw)
    return Transformer(cfg, rngs=nnx.Rngs(0))


TOKENS = np.array([[1, 5, 9, 2, 7, 3]])


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_orbax_round_trip(tmp_path, family):
    m = _model(family)
    jdllm.save(m, tmp_path / "ckpt")
    m2 = jdllm.load(tmp_path / "ckpt")
    assert m2.config == m.config
    np.testing.assert_array_equal(jdllm.forward(m, TOKENS), jdllm.forward(m2, TOKENS))


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_hf_round_trip_and_convert(tmp_path, family):
    m = _model(family)
    save_hf(m, tmp_path / "hf", n_files=3)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    m2 = jdllm.load(tmp_path / "hf")
    jdllm.save(m2, tmp_path / "orbax")
    m3 = jdllm.load(tmp_path / "orbax")
    np.testing.assert_array_equal(jdllm.forward(m, TOKENS), jdllm.forward(m3, TOKENS))


def _rewrite(directory, mutate):
    tensors = {k: np.array(v) for k, v in hf_tensors(_model()).items()}
    mutate(tensors)
    os.makedirs(directory, exist_ok=True)
    save_hf(_model(), directory)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    return directory


def test_missing_tensor_is_named(tmp_path):
    d = _rewrite(tmp_path / "m", lambda t: t.pop("model.transformer.blocks.1.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'model.transformer.blocks.1.up_proj.weight'"):
        jdllm.load(d)


def test_unexpected_tensor_is_named(tmp_path):
    d = _rewrite(tmp_path / "u", lambda t: t.__setitem__("model.transformer.blocks.0.extra.weight", np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match=r"unexpected tensor 'model.transformer.blocks.0.extra.weight'"):
        jdllm.load(d)


def test_misshaped_tensor_is_named(tmp_path):
    d = _rewrite(tmp_path / "s", lambda t: t.__setitem__("model.transformer.ln_f.weight", np.ones(17, np.float32)))
    with pytest.raises(ValueError, match=r"tensor 'model.transformer.ln_f.weight' has shape \(17,\), expected \(16,\)"):
        jdllm.load(d)


def test_index_pointing_at_wrong_file(tmp_path):
    m = _model()
    save_hf(m, tmp_path / "i", n_files=2)
    index = json.loads((tmp_path / "i" / "model.safetensors.index.json").read_text())
    name = "model.transformer.ln_f.weight"
    files = sorted(set(index["weight_map"].values()))
    index["weight_map"][name] = [f for f in files if f != index["weight_map"][name]][0]
    (tmp_path / "i" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="does not hold it"):
        jdllm.load(tmp_path / "i")


def test_bfloat16_checkpoint_loads_in_bf16_and_f32(tmp_path):
    m = _model()
    save_hf(m, tmp_path / "b")
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in hf_tensors(m).items()}
    save_file(tensors, tmp_path / "b" / "model.safetensors")
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg))
    st = SafetensorsFile(tmp_path / "b" / "model.safetensors")
    assert st.dtype("model.transformer.ln_f.weight") == np.dtype(ml_dtypes.bfloat16)
    m_bf16 = jdllm.load(tmp_path / "b")
    assert m_bf16.config.dtype == "bfloat16"
    assert m_bf16.wte[...].dtype == np.dtype(ml_dtypes.bfloat16)
    m_f32 = jdllm.load(tmp_path / "b", dtype="float32")
    a = np.asarray(jdllm.forward(m_f32, TOKENS))
    b = np.asarray(jdllm.forward(m, TOKENS))
    np.testing.assert_allclose(a, b, atol=0.05, rtol=0.05)
    out = jdllm.generate(m_bf16, [[1, 2, 3]], gen_length=8, block_length=8, steps=8)
    assert out.tokens.shape == (1, 8)


def test_unknown_model_type(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        jdllm.load(tmp_path / "x")
