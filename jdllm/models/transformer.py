"""The masked-diffusion transformer of LLaDA and Dream, in Flax NNX.

Pre-RMSNorm blocks, rotary positions (NeoX half-split, float32), multi-head / grouped-query bidirectional
attention, SwiGLU MLP, untied LM head (LLaDA `ff_out`, Dream `lm_head`). Parameter names follow LLaDA's HF
names (`wte`, `blocks.N.{attn_norm,q_proj,...}`, `ln_f`, `ff_out`); Dream's Qwen2 names are mapped onto them
by `jdllm.weights.keymaps`.

The forward is split so that decode-time cache strategies can compute only some query positions:
`layers(...)` takes the query tokens with their positions and a `kv_merge` hook that turns the K/V of those
queries into the full-length K/V the queries attend to (identity for a full forward, "overwrite rows of a
cached K/V" for Fast-dLLM's prefix / dual caches). Keys are cached after RoPE, at absolute canvas rows.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jdllm.models.config import ModelConfig
from jdllm.models.partitioning import RESIDUAL_AXES, constrain_activation

KV = tuple[Float[Array, "B T Hkv Dh"], Float[Array, "B T Hkv Dh"]]
KVMerge = Callable[[int, jax.Array, jax.Array], KV]


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, cast back to the input dtype, then scaled (LLaDA / Qwen2 order)."""

    def __init__(self, dim: int, eps: float, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * self.weight[...]


class Linear(nnx.Module):
    """y = x @ kernel (+ bias); kernel is [in, out] (the transpose of torch's Linear.weight)."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, dtype, rngs: nnx.Rngs):
        std = d_in**-0.5
        self.kernel = nnx.Param((jax.random.normal(rngs.params(), (d_in, d_out)) * std).astype(dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x, self.kernel[...])
        if self.bias is not None:
            y = y + self.bias[...]
        return y


def rope(x: Float[Array, "B Q H Dh"], positions: Int[Array, "B Q"], theta: float) -> jax.Array:
    """Rotary embedding, NeoX half-split (`rotate_half`), angles in float32 (RoFormer, arXiv 2104.09864)."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(0, half, dtype=jnp.float32) * 2.0 / x.shape[-1])
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, Q, half]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention(
    q: Float[Array, "B Q H Dh"],
    k: Float[Array, "B T Hkv Dh"],
    v: Float[Array, "B T Hkv Dh"],
    key_valid: Bool[Array, "B T"],
) -> Float[Array, "B Q H Dh"]:
    """Bidirectional scaled dot-product attention with grouped K/V heads; invalid (padding) keys get no weight.

    Through `jax.nn.dot_product_attention` with `implementation=None`: JAX picks the fused cuDNN kernel on GPU
    where it applies (bf16 / f16) and XLA elsewhere. The XLA path is the reference computation: scores in
    float32 (`preferred_element_type`), softmax in float32, probabilities cast to the value dtype.
    """
    return jax.nn.dot_product_attention(q, k, v, mask=key_valid[:, None, None, :])


class Block(nnx.Module):
    """One pre-norm transformer block: x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dt, d, hd = cfg.jnp_dtype, cfg.d_model, cfg.head_dim
        self.cfg = cfg
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps, dt)
        self.q_proj = Linear(d, cfg.n_heads * hd, bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
        self.k_proj = Linear(d, cfg.n_kv_heads * hd, bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
        self.v_proj = Linear(d, cfg.n_kv_heads * hd, bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
        self.attn_out = Linear(cfg.n_heads * hd, d, bias=False, dtype=dt, rngs=rngs)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps, dt)
        self.ff_proj = Linear(d, cfg.mlp_hidden_size, bias=False, dtype=dt, rngs=rngs)  # gate (SiLU branch)
        self.up_proj = Linear(d, cfg.mlp_hidden_size, bias=False, dtype=dt, rngs=rngs)
        self.ff_out = Linear(cfg.mlp_hidden_size, d, bias=False, dtype=dt, rngs=rngs)  # down projection

    def __call__(self, x, positions, key_valid, kv_merge: Callable[[jax.Array, jax.Array], KV]):
        cfg = self.cfg
        b, nq, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).reshape(b, nq, cfg.n_heads, cfg.head_dim)
        k = self.k_proj(h).reshape(b, nq, cfg.n_kv_heads, cfg.head_dim)
        v = self.v_proj(h).reshape(b, nq, cfg.n_kv_heads, cfg.head_dim)
        q = rope(q, positions, cfg.rope_theta)
        k = rope(k, positions, cfg.rope_theta)
        k_all, v_all = kv_merge(k, v)
        a = attention(q, k_all, v_all, key_valid).reshape(b, nq, cfg.n_heads * cfg.head_dim)
        x = x + self.attn_out(a)
        h = self.ff_norm(x)
        x = x + self.ff_out(jax.nn.silu(self.ff_proj(h)) * self.up_proj(h))
        return x, (k_all, v_all)


def _identity_merge(layer: int, k: jax.Array, v: jax.Array) -> KV:
    del layer
    return k, v


class Transformer(nnx.Module):
    """LLaDA / Dream masked-diffusion transformer. `model(tokens)` returns raw logits [B, L, V] (never shifted)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dt = cfg.jnp_dtype
        self.config = cfg
        self.wte = nnx.Param((jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model)) * 0.02).astype(dt))
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.ln_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps, dt)
        self.ff_out = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, bias=False, dtype=dt, rngs=rngs)

    def layers(
        self,
        tokens: Int[Array, "B Q"],
        positions: Int[Array, "B Q"],
        key_valid: Bool[Array, "B T"],
        kv_merge: KVMerge = _identity_merge,
    ) -> tuple[Float[Array, "B Q D"], list[KV]]:
        """Embeddings and all blocks for the query tokens; returns final hidden states (before `ln_f`) and,
        per layer, the full-length K/V the queries attended to."""
        x = constrain_activation(jnp.take(self.wte[...], tokens, axis=0), RESIDUAL_AXES)  # no-op on one device
        kvs = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, positions, key_valid, lambda k, v, i=i: kv_merge(i, k, v))
            x = constrain_activation(x, RESIDUAL_AXES)
            kvs.append(kv)
        return x, kvs

    def head(self, hidden: Float[Array, "B Q D"]) -> Float[Array, "B Q V"]:
        """Final norm and LM head, logits in float32."""
        h = self.ln_f(hidden)
        w = self.wte[...].T if self.ff_out is None else self.ff_out.kernel[...]
        return jnp.einsum("bqd,dv->bqv", h, w, preferred_element_type=jnp.float32)

    def __call__(
        self,
        tokens: Int[Array, "B L"],
        attention_mask: Bool[Array, "B L"] | None = None,
        positions: Int[Array, "B L"] | None = None,
    ) -> Float[Array, "B L V"]:
        valid = jnp.ones(tokens.shape, bool) if attention_mask is None else attention_mask.astype(bool)
        if positions is None:
            positions = positions_from_mask(valid)
        hidden, _ = self.layers(tokens, positions, valid)
        return self.head(hidden)


def positions_from_mask(valid: Bool[Array, "B L"]) -> Int[Array, "B L"]:
    """Rotary positions that ignore left padding: cumsum(mask) - 1, clipped at 0 (Dream's `tok_idx`).

    Without padding this is arange(L), the reference's positions; with left padding a row's positions are
    those it would have alone, which is what makes batched decoding batch-invariant.
    """
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)
