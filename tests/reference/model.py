"""Plain-numpy (float64) reference forward of the LLaDA and Dream masked-diffusion transformers.

Written from the architecture description, independently of jdllm:

- pre-RMSNorm blocks: ``rms(x) = x / sqrt(mean(x^2) + eps)`` computed in float, then times the weight;
- rotary positions, NeoX half-split: ``t' = t cos + rotate_half(t) sin``, ``rotate_half(t) = [-t2, t1]``,
  ``inv_freq = theta ** (-arange(0, D, 2) / D)``;
- multi-head / grouped-query attention (query head h reads K/V head ``h // (n_heads // n_kv_heads)``),
  bidirectional, with a key padding mask, scale ``1/sqrt(head_dim)``; q/k/v biases for Dream;
- SwiGLU MLP ``down(silu(gate(h)) * up(h))`` (LLaDA names: gate = ``ff_proj``, up = ``up_proj``,
  down = ``ff_out``);
- final RMSNorm and an untied LM head.

Weights are given as a dict with the HF names and torch layout (Linear weight ``[out, in]``, ``y = x @ W.T``).

Positions are ``max(cumsum(attention_mask) - 1, 0)`` per row (``arange`` without padding).

The forward supports the "cached" call used by Fast-dLLM's prefix / dual caches: queries are a contiguous range
``[q_start, q_end)`` of the canvas; in every layer the keys / values of the rows in ``fresh`` (a subset of the
query rows) are computed from the current tokens, all the other rows are read from a per-layer K/V cache
(post-RoPE keys, full canvas length). Raw logits are returned (never shifted: Dream's shift is a decode-time step).

An optional additive ``attention_bias`` [B or 1, 1, L, L] over canvas rows x canvas columns (0 = allowed, -inf =
not) is added to the scores on top of the key padding, as D2F passes its block-causal mask
(``tests/reference/masks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RefConfig:
    family: str  # "llada" | "dream"
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden_size: int
    rope_theta: float
    rms_norm_eps: float
    mask_id: int
    eos_id: int | None
    pad_id: int | None

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def shift(self) -> int:
        return 1 if self.family == "dream" else 0


def config_from_hf(hf: dict) -> RefConfig:
    """Read an HF ``config.json`` dict of either family (written independently of jdllm's loader)."""
    if hf.get("model_type") == "llada":
        return RefConfig(
            family="llada",
            vocab_size=int(hf.get("embedding_size") or hf["vocab_size"]),
            d_model=int(hf["d_model"]),
            n_layers=int(hf["n_layers"]),
            n_heads=int(hf["n_heads"]),
            n_kv_heads=int(hf.get("n_kv_heads") or hf["n_heads"]),
            mlp_hidden_size=int(hf["mlp_hidden_size"]),
            rope_theta=float(hf["rope_theta"]),
            rms_norm_eps=float(hf["rms_norm_eps"]),
            mask_id=int(hf["mask_token_id"]),
            eos_id=hf.get("eos_token_id"),
            pad_id=hf.get("pad_token_id"),
        )
    if str(hf.get("model_type", "")).lower() == "dream":
        return RefConfig(
            family="dream",
            vocab_size=int(hf["vocab_size"]),
            d_model=int(hf["hidden_size"]),
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=int(hf["num_attention_heads"]),
            n_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            mlp_hidden_size=int(hf["intermediate_size"]),
            rope_theta=float(hf["rope_theta"]),
            rms_norm_eps=float(hf["rms_norm_eps"]),
            mask_id=int(hf["mask_token_id"]),
            eos_id=hf.get("eos_token_id"),
            pad_id=hf.get("pad_token_id"),
        )
    raise ValueError(f"unknown model_type {hf.get('model_type')!r}")


def _layer_weights(family: str, w: dict, i: int) -> dict:
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    if family == "llada":
        p = f"model.transformer.blocks.{i}."
        return {
            "attn_norm": f64(w[p + "attn_norm.weight"]),
            "wq": f64(w[p + "q_proj.weight"]),
            "wk": f64(w[p + "k_proj.weight"]),
            "wv": f64(w[p + "v_proj.weight"]),
            "bq": None,
            "bk": None,
            "bv": None,
            "wo": f64(w[p + "attn_out.weight"]),
            "mlp_norm": f64(w[p + "ff_norm.weight"]),
            "w_gate": f64(w[p + "ff_proj.weight"]),
            "w_up": f64(w[p + "up_proj.weight"]),
            "w_down": f64(w[p + "ff_out.weight"]),
        }
    p = f"model.layers.{i}."
    return {
        "attn_norm": f64(w[p + "input_layernorm.weight"]),
        "wq": f64(w[p + "self_attn.q_proj.weight"]),
        "wk": f64(w[p + "self_attn.k_proj.weight"]),
        "wv": f64(w[p + "self_attn.v_proj.weight"]),
        "bq": f64(w[p + "self_attn.q_proj.bias"]),
        "bk": f64(w[p + "self_attn.k_proj.bias"]),
        "bv": f64(w[p + "self_attn.v_proj.bias"]),
        "wo": f64(w[p + "self_attn.o_proj.weight"]),
        "mlp_norm": f64(w[p + "post_attention_layernorm.weight"]),
        "w_gate": f64(w[p + "mlp.gate_proj.weight"]),
        "w_up": f64(w[p + "mlp.up_proj.weight"]),
        "w_down": f64(w[p + "mlp.down_proj.weight"]),
    }


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    y = x @ weight.T
    return y if bias is None else y + bias


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rotate_half(t: np.ndarray) -> np.ndarray:
    half = t.shape[-1] // 2
    return np.concatenate([-t[..., half:], t[..., :half]], axis=-1)


def apply_rope(t: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """t: [B, H, Q, D]; positions: [B, Q] (absolute positions of those rows)."""
    d = t.shape[-1]
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # [D/2]
    angles = positions.astype(np.float64)[..., None] * inv_freq  # [B, Q, D/2]
    emb = np.concatenate([angles, angles], axis=-1)[:, None]  # [B, 1, Q, D]
    return t * np.cos(emb) + rotate_half(t) * np.sin(emb)


def rope_positions(attention_mask: np.ndarray) -> np.ndarray:
    """``max(cumsum(mask) - 1, 0)`` per row; equals ``arange(L)`` without padding."""
    return np.maximum(np.cumsum(np.asarray(attention_mask, dtype=np.int64), axis=-1) - 1, 0)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


class RefModel:
    """numpy float64 forward of a LLaDA / Dream checkpoint given as an HF-named weight dict."""

    def __init__(self, weights: dict, hf_config: dict):
        self.cfg = cfg = config_from_hf(hf_config)
        w = weights
        f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
        if cfg.family == "llada":
            self.embed = f64(w["model.transformer.wte.weight"])
            self.final_norm = f64(w["model.transformer.ln_f.weight"])
            self.head = f64(w["model.transformer.ff_out.weight"])
        else:
            self.embed = f64(w["model.embed_tokens.weight"])
            self.final_norm = f64(w["model.norm.weight"])
            self.head = f64(w["lm_head.weight"])
        self.layers = [_layer_weights(cfg.family, w, i) for i in range(cfg.n_layers)]

    @property
    def mask_id(self) -> int:
        return self.cfg.mask_id

    @property
    def shift(self) -> int:
        return self.cfg.shift

    def __call__(self, tokens, attention_mask=None, attention_bias=None) -> np.ndarray:
        """Full forward: raw logits [B, L, V] (or [L, V] for a 1-D input)."""
        return self.forward(tokens, attention_mask, attention_bias=attention_bias)[0]

    def forward(
        self,
        tokens,
        attention_mask=None,
        *,
        q_start: int = 0,
        q_end: int | None = None,
        fresh=None,
        cache=None,
        attention_bias=None,
    ):
        """One forward pass.

        tokens: [B, L] (or [L]) int; attention_mask: [B, L] of 0/1 (None = all ones).
        q_start, q_end: the query rows; logits are returned for these rows only.
        fresh: the rows whose K/V are computed from the current tokens; a (start, end) pair or an index array;
            must lie inside [q_start, q_end). Default: all query rows.
        cache: list (one per layer) of (K, V), each [B, H_kv, L, D] with post-RoPE keys at absolute rows; the
            non-fresh rows are read from it. None requires the query rows to cover the whole canvas.
        attention_bias: additive [B or 1, 1, L, L] (or [L, L]) bias over canvas rows x columns; the query rows
            read rows [q_start, q_end) of it.
        Returns (logits [B, Q, V], kv) where kv is the per-layer full-length (K, V) the queries attended to
        (for a full forward: the exact K/V of every row).
        """
        tokens = np.asarray(tokens)
        squeeze = tokens.ndim == 1
        if squeeze:
            tokens = tokens[None]
            if attention_mask is not None:
                attention_mask = np.asarray(attention_mask)[None]
        b, length = tokens.shape
        q_end = length if q_end is None else q_end
        if attention_mask is None:
            attention_mask = np.ones((b, length), dtype=np.int64)
        attention_mask = np.asarray(attention_mask).astype(bool)
        positions = rope_positions(attention_mask)

        if fresh is None:
            fresh_idx = np.arange(q_start, q_end)
        elif isinstance(fresh, tuple):
            fresh_idx = np.arange(fresh[0], fresh[1])
        else:
            fresh_idx = np.asarray(fresh, dtype=np.int64)
        if fresh_idx.size and (fresh_idx.min() < q_start or fresh_idx.max() >= q_end):
            raise ValueError("fresh rows must be query rows")
        if cache is None and not (q_start == 0 and q_end == length and fresh_idx.size == length):
            raise ValueError("a partial / cached forward needs a cache")

        cfg = self.cfg
        h, hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        n_rep = h // hkv
        q_pos = positions[:, q_start:q_end]
        x = self.embed[tokens[:, q_start:q_end]]  # [B, Q, d]
        nq = x.shape[1]
        key_bias = np.where(attention_mask, 0.0, -np.inf)[:, None, None, :]  # [B, 1, 1, L]
        if attention_bias is not None:
            bias = np.asarray(attention_bias, dtype=np.float64)
            bias = bias.reshape((1, 1) + bias.shape) if bias.ndim == 2 else bias
            key_bias = key_bias + bias[:, :, q_start:q_end, :]  # [B, 1, Q, L]
        kv_out = []
        for li, lw in enumerate(self.layers):
            hn = rms_norm(x, lw["attn_norm"], cfg.rms_norm_eps)
            q = linear(hn, lw["wq"], lw["bq"]).reshape(b, nq, h, dh).transpose(0, 2, 1, 3)
            k = linear(hn, lw["wk"], lw["bk"]).reshape(b, nq, hkv, dh).transpose(0, 2, 1, 3)
            v = linear(hn, lw["wv"], lw["bv"]).reshape(b, nq, hkv, dh).transpose(0, 2, 1, 3)
            q = apply_rope(q, q_pos, cfg.rope_theta)
            k = apply_rope(k, q_pos, cfg.rope_theta)
            if cache is None:
                keys, values = k, v
            else:
                keys = np.array(cache[li][0], dtype=np.float64, copy=True)
                values = np.array(cache[li][1], dtype=np.float64, copy=True)
                keys[:, :, fresh_idx] = k[:, :, fresh_idx - q_start]
                values[:, :, fresh_idx] = v[:, :, fresh_idx - q_start]
            kv_out.append((keys, values))
            kr = np.repeat(keys, n_rep, axis=1)  # kv head j serves query heads j*n_rep .. (j+1)*n_rep-1
            vr = np.repeat(values, n_rep, axis=1)
            scores = q @ kr.transpose(0, 1, 3, 2) / np.sqrt(dh) + key_bias  # [B, H, Q, L]
            att = softmax(scores, axis=-1) @ vr  # [B, H, Q, D]
            att = att.transpose(0, 2, 1, 3).reshape(b, nq, h * dh)
            x = x + linear(att, lw["wo"])
            hn = rms_norm(x, lw["mlp_norm"], cfg.rms_norm_eps)
            x = x + linear(silu(linear(hn, lw["w_gate"])) * linear(hn, lw["w_up"]), lw["w_down"])
        logits = linear(rms_norm(x, self.final_norm, cfg.rms_norm_eps), self.head)
        if squeeze:
            logits = logits[0]
        return logits, kv_out


def shift_logits(logits: np.ndarray) -> np.ndarray:
    """Dream's decode-time shift on the last-but-one axis: used[i] = raw[i-1], used[0] = raw[0]."""
    return np.concatenate([logits[..., :1, :], logits[..., :-1, :]], axis=-2)
