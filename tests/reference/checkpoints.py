"""Tiny random checkpoints in the real HF layouts of LLaDA and Dream (config.json + safetensors, float32).

LLaDA keys (caching.md §8.1): ``model.transformer.wte.weight``, ``model.transformer.blocks.N.{attn_norm,
q_proj,k_proj,v_proj,attn_out,ff_norm,ff_proj,up_proj,ff_out}.weight``, ``model.transformer.ln_f.weight``,
``model.transformer.ff_out.weight`` (untied head).
Dream keys (caching.md §8.2, Qwen2 names): ``model.embed_tokens.weight``, ``model.layers.N.input_layernorm.weight``,
``model.layers.N.self_attn.{q,k,v}_proj.{weight,bias}``, ``model.layers.N.self_attn.o_proj.weight``,
``model.layers.N.post_attention_layernorm.weight``, ``model.layers.N.mlp.{gate,up,down}_proj.weight``,
``model.norm.weight``, ``lm_head.weight``.

Linear weights use the torch layout ``[out, in]``. The head is scaled so that greedy decoding is well conditioned
(peaked logits, argmax ties essentially impossible) while confidences still vary within a block (a mix of values
above and below 0.9), so that threshold rules are exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

TINY = dict(
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=4,
    mlp_hidden_size=64,
    vocab_size=64,
    max_sequence_length=128,
    mask_token_id=63,
    eos_token_id=62,
    pad_token_id=61,
    rope_theta=10000.0,
)

# logits std (before the final norm weight); chosen so that the confidences of masked positions span ~0.2 .. 0.999
# with roughly 20-25% above 0.9 (Dream's tiny model is more peaked at equal scale)
LLADA_HEAD_SCALE = 7.0
DREAM_HEAD_SCALE = 5.0
QK_GAIN = 2.0  # sharper attention, so masked positions differ by position and by prompt


def llada_hf_config(**overrides) -> dict:
    t = {**TINY, **overrides}
    cfg = {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "d_model": t["d_model"],
        "n_heads": t["n_heads"],
        "n_kv_heads": t["n_kv_heads"],
        "n_layers": t["n_layers"],
        "mlp_hidden_size": t["mlp_hidden_size"],
        "mlp_ratio": t["mlp_hidden_size"] // t["d_model"],
        "rope": True,
        "rope_theta": float(t["rope_theta"]),
        "rope_full_precision": True,
        "rms_norm_eps": float(t.get("rms_norm_eps", 1e-5)),
        "layer_norm_type": "rms",
        "block_type": "llama",
        "activation_type": "silu",
        "alibi": False,
        "scale_logits": False,
        "input_emb_norm": False,
        "attention_layer_norm": False,
        "vocab_size": t["vocab_size"],
        "embedding_size": t.get("embedding_size", t["vocab_size"]),
        "max_sequence_length": t["max_sequence_length"],
        "mask_token_id": t["mask_token_id"],
        "eos_token_id": t["eos_token_id"],
        "pad_token_id": t["pad_token_id"],
        "weight_tying": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "use_cache": False,
        "torch_dtype": "float32",
    }
    return cfg


def dream_hf_config(**overrides) -> dict:
    t = {**TINY, "n_kv_heads": 2, "rope_theta": 10000.0, **overrides}
    return {
        "architectures": ["DreamModel"],
        "model_type": "Dream",
        "hidden_size": t["d_model"],
        "intermediate_size": t["mlp_hidden_size"],
        "num_hidden_layers": t["n_layers"],
        "num_attention_heads": t["n_heads"],
        "num_key_value_heads": t["n_kv_heads"],
        "vocab_size": t["vocab_size"],
        "max_position_embeddings": t["max_sequence_length"],
        "rope_theta": float(t["rope_theta"]),
        "rope_scaling": None,
        "rms_norm_eps": float(t.get("rms_norm_eps", 1e-6)),
        "hidden_act": "silu",
        "mask_token_id": t["mask_token_id"],
        "pad_token_id": t["pad_token_id"],
        "eos_token_id": t["eos_token_id"],
        "bos_token_id": t.get("bos_token_id", 60),
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "torch_dtype": "float32",
    }


def _normal(rng, shape, std):
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _norm_weight(rng, d):
    return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)


def _head(rng, v, d, head_scale, mask_id):
    """LM head [V, d]; the mask token's row is zero (logit 0, far below the typical max), so the model never
    proposes the mask token, as a trained dLLM does not."""
    head = _normal(rng, (v, d), head_scale / np.sqrt(d))
    head[mask_id] = 0.0
    return head


def llada_weights(hf: dict, seed: int = 0, head_scale: float = LLADA_HEAD_SCALE, qk_gain: float = QK_GAIN) -> dict:
    rng = np.random.default_rng(seed)
    d, h, hkv = hf["d_model"], hf["n_heads"], hf["n_kv_heads"]
    dh, m, v = d // h, hf["mlp_hidden_size"], hf["embedding_size"]
    w = {"model.transformer.wte.weight": _normal(rng, (v, d), 1.0)}
    for i in range(hf["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        w[p + "attn_norm.weight"] = _norm_weight(rng, d)
        w[p + "q_proj.weight"] = _normal(rng, (h * dh, d), qk_gain / np.sqrt(d))
        w[p + "k_proj.weight"] = _normal(rng, (hkv * dh, d), qk_gain / np.sqrt(d))
        w[p + "v_proj.weight"] = _normal(rng, (hkv * dh, d), 1.0 / np.sqrt(d))
        w[p + "attn_out.weight"] = _normal(rng, (d, h * dh), 1.0 / np.sqrt(h * dh))
        w[p + "ff_norm.weight"] = _norm_weight(rng, d)
        w[p + "ff_proj.weight"] = _normal(rng, (m, d), 1.0 / np.sqrt(d))
        w[p + "up_proj.weight"] = _normal(rng, (m, d), 1.0 / np.sqrt(d))
        w[p + "ff_out.weight"] = _normal(rng, (d, m), 1.0 / np.sqrt(m))
    w["model.transformer.ln_f.weight"] = _norm_weight(rng, d)
    w["model.transformer.ff_out.weight"] = _head(rng, v, d, head_scale, hf["mask_token_id"])
    return w


def dream_weights(hf: dict, seed: int = 0, head_scale: float = DREAM_HEAD_SCALE, qk_gain: float = QK_GAIN) -> dict:
    rng = np.random.default_rng(seed)
    d, h, hkv = hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"]
    dh, m, v = d // h, hf["intermediate_size"], hf["vocab_size"]
    w = {"model.embed_tokens.weight": _normal(rng, (v, d), 1.0)}
    for i in range(hf["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = _norm_weight(rng, d)
        w[p + "self_attn.q_proj.weight"] = _normal(rng, (h * dh, d), qk_gain / np.sqrt(d))
        w[p + "self_attn.q_proj.bias"] = _normal(rng, (h * dh,), 0.2)
        w[p + "self_attn.k_proj.weight"] = _normal(rng, (hkv * dh, d), qk_gain / np.sqrt(d))
        w[p + "self_attn.k_proj.bias"] = _normal(rng, (hkv * dh,), 0.2)
        w[p + "self_attn.v_proj.weight"] = _normal(rng, (hkv * dh, d), 1.0 / np.sqrt(d))
        w[p + "self_attn.v_proj.bias"] = _normal(rng, (hkv * dh,), 0.2)
        w[p + "self_attn.o_proj.weight"] = _normal(rng, (d, h * dh), 1.0 / np.sqrt(h * dh))
        w[p + "post_attention_layernorm.weight"] = _norm_weight(rng, d)
        w[p + "mlp.gate_proj.weight"] = _normal(rng, (m, d), 1.0 / np.sqrt(d))
        w[p + "mlp.up_proj.weight"] = _normal(rng, (m, d), 1.0 / np.sqrt(d))
        w[p + "mlp.down_proj.weight"] = _normal(rng, (d, m), 1.0 / np.sqrt(m))
    w["model.norm.weight"] = _norm_weight(rng, d)
    w["lm_head.weight"] = _head(rng, v, d, head_scale, hf["mask_token_id"])
    return w


def write_checkpoint(path, weights: dict, hf_config: dict, shards: int = 1) -> Path:
    """Write ``config.json`` and the weights: one ``model.safetensors``, or ``shards`` files
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    if shards <= 1:
        save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    names = list(weights)
    groups = [names[i::shards] for i in range(shards)]  # interleaved: every file holds pieces of every layer
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: weights[k] for k in group}, str(path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in group})
    total = int(sum(v.nbytes for v in weights.values()))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return path


def read_checkpoint(path) -> tuple[dict, dict]:
    """Read back (weights, hf_config) of a directory written by ``write_checkpoint`` (independent of jdllm)."""
    path = Path(path)
    hf = json.loads((path / "config.json").read_text())
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for f in files:
        weights.update(load_file(str(path / f)))
    return weights, hf


def build_llada_checkpoint(path, *, seed: int = 0, shards: int = 1, head_scale: float = LLADA_HEAD_SCALE, **overrides):
    """Write a tiny LLaDA checkpoint; returns (path, weights, hf_config)."""
    hf = llada_hf_config(**overrides)
    w = llada_weights(hf, seed=seed, head_scale=head_scale)
    return write_checkpoint(path, w, hf, shards=shards), w, hf


def build_dream_checkpoint(path, *, seed: int = 0, shards: int = 1, head_scale: float = DREAM_HEAD_SCALE, **overrides):
    """Write a tiny Dream checkpoint (GQA 4 query / 2 K/V heads by default); returns (path, weights, hf_config)."""
    hf = dream_hf_config(**overrides)
    w = dream_weights(hf, seed=seed, head_scale=head_scale)
    return write_checkpoint(path, w, hf, shards=shards), w, hf

