"""The masked-diffusion transformer of LLaDA and Dream, in Flax NNX.

Pre-RMSNorm blocks, rotary positions (NeoX half-split, float32), multi-head / grouped-query attention
(bidirectional, or D2F's block-causal attention given per-row block ids: `jdllm.models.masks`), SwiGLU MLP,
untied LM head (LLaDA `ff_out`, Dream `lm_head`). Parameter names follow LLaDA's HF names (`wte`,
`blocks.N.{attn_norm,q_proj,...}`, `ln_f`, `ff_out`); Dream's Qwen2 names are mapped onto them by
`jdllm.weights.keymaps`.

The forward is split so that decode-time cache strategies can compute only some query positions:
`layers(...)` takes the query tokens with their positions and a `kv_merge` hook that turns the K/V of those
queries into the full-length K/V the queries attend to (identity for a full forward, "overwrite rows of a
cached K/V" for Fast-dLLM's prefix / dual caches). Keys are cached after RoPE, at absolute canvas rows.
A strategy that caches more than K/V (dLLM-Cache: attention and MLP outputs per layer) intercepts each layer
with `hooked_layers(tokens, hook, states)` and composes the block's sub-steps itself.
"""

from __future__ import annotations

import numbers
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jdllm.models.attention_kernels import attention
from jdllm.models.config import ModelConfig
from jdllm.models.masks import block_causal_allowed, block_ids
from jdllm.models.partitioning import RESIDUAL_AXES, constrain_activation

KV = tuple[Float[Array, "B T Hkv Dh"], Float[Array, "B T Hkv Dh"]]
KVMerge = Callable[[int, jax.Array, jax.Array], KV]
# (layer index, block, residual stream [B, Q, D], that layer's strategy state) -> (new residual, new layer state)
LayerHook = Callable[[int, "Block", jax.Array, object], tuple[jax.Array, object]]


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

    # ---- sub-steps: a layer is attn_input -> queries / keys / values -> attend -> (residual) -> mlp -> (residual).
    # Cache strategies that recompute only some positions (dLLM-Cache) run them through `Transformer.hooked_layers`.

    def attn_input(self, x: Float[Array, "B Q D"]) -> Float[Array, "B Q D"]:
        """The attention branch's input: attn_norm(x)."""
        return self.attn_norm(x)

    def queries(self, h: Float[Array, "B Q D"], positions: Int[Array, "B Q"]) -> Float[Array, "B Q H Dh"]:
        cfg = self.cfg
        return rope(self.q_proj(h).reshape(h.shape[:2] + (cfg.n_heads, cfg.head_dim)), positions, cfg.rope_theta)

    def keys(self, h: Float[Array, "B Q D"], positions: Int[Array, "B Q"]) -> Float[Array, "B Q Hkv Dh"]:
        """Post-RoPE keys (as every jdllm cache stores them)."""
        cfg = self.cfg
        return rope(self.k_proj(h).reshape(h.shape[:2] + (cfg.n_kv_heads, cfg.head_dim)), positions, cfg.rope_theta)

    def values(self, h: Float[Array, "B Q D"]) -> Float[Array, "B Q Hkv Dh"]:
        return self.v_proj(h).reshape(h.shape[:2] + (self.cfg.n_kv_heads, self.cfg.head_dim))

    def attend(self, q: Float[Array, "B Q H Dh"], k: Float[Array, "B T Hkv Dh"], v: Float[Array, "B T Hkv Dh"],
               key_valid: Bool[Array, "B T"], allowed: Bool[Array, "B Q T"] | None = None) -> Float[Array, "B Q D"]:
        """Attention of the queries over the keys, through the output projection (before the residual add)."""
        a = attention(q, k, v, key_valid, allowed, kernel=self.cfg.attention_kernel)
        return self.attn_out(a.reshape(a.shape[:2] + (self.cfg.n_heads * self.cfg.head_dim,)))

    def mlp(self, x: Float[Array, "B Q D"]) -> Float[Array, "B Q D"]:
        """The MLP branch on the residual stream: ff_out(silu(ff_proj(h)) * up_proj(h)), h = ff_norm(x)."""
        h = self.ff_norm(x)
        return self.ff_out(jax.nn.silu(self.ff_proj(h)) * self.up_proj(h))

    def __call__(self, x, positions, key_valid, kv_merge: Callable[[jax.Array, jax.Array], KV],
                 allowed: Bool[Array, "B Q T"] | None = None):
        h = self.attn_input(x)
        q, k, v = self.queries(h, positions), self.keys(h, positions), self.values(h)
        k_all, v_all = kv_merge(k, v)
        x = x + self.attend(q, k_all, v_all, key_valid, allowed)
        x = x + self.mlp(x)
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
        q_block: Int[Array, "B Q"] | None = None,
        k_block: Int[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B Q D"], list[KV]]:
        """Embeddings and all blocks for the query tokens; returns final hidden states (before `ln_f`) and,
        per layer, the full-length K/V the queries attended to.

        Key t is visible to query q iff `key_valid[b, t]` and, when the block ids `q_block` / `k_block` are
        given (`masks.block_ids` of the rows), `k_block[b, t] <= q_block[b, q]` (D2F block-causal attention).
        Without them attention is bidirectional; a block_causal config requires them."""
        allowed = self._allowed(tokens, key_valid, q_block, k_block)
        x = constrain_activation(jnp.take(self.wte[...], tokens, axis=0), RESIDUAL_AXES)  # no-op on one device
        kvs = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, positions, key_valid, lambda k, v, i=i: kv_merge(i, k, v), allowed)
            x = constrain_activation(x, RESIDUAL_AXES)
            kvs.append(kv)
        return x, kvs

    def hooked_layers(self, tokens: Int[Array, "B Q"], hook: LayerHook, states: Sequence) -> tuple[
            Float[Array, "B Q D"], list]:
        """Embeddings, then `hook(i, block, x, states[i]) -> (x, new state)` for every block i in place of the
        block's own forward: the per-layer interception point of feature caches (the hook composes the block's
        sub-steps `attn_input`, `queries`, `keys`, `values`, `attend`, `mlp` over the positions it chooses).
        Returns the final hidden states (before `ln_f`) and the new per-layer states."""
        if len(states) != len(self.blocks):
            raise ValueError(f"hooked_layers needs one state per layer ({len(self.blocks)}), got {len(states)}")
        x = constrain_activation(jnp.take(self.wte[...], tokens, axis=0), RESIDUAL_AXES)
        new_states = []
        for i, block in enumerate(self.blocks):
            x, state = hook(i, block, x, states[i])
            x = constrain_activation(x, RESIDUAL_AXES)
            new_states.append(state)
        return x, new_states

    def _allowed(self, tokens, key_valid, q_block, k_block) -> Bool[Array, "B Q T"] | None:
        if (q_block is None) != (k_block is None):
            raise ValueError("q_block and k_block must be given together (block-causal attention) or both be None")
        if q_block is None:
            if self.config.attention == "block_causal":
                raise ValueError("this model's config has attention='block_causal': pass q_block / k_block "
                                 "(jdllm.models.masks.block_ids of the query / key rows) to Transformer.layers")
            return None
        if q_block.shape != tokens.shape or k_block.shape != key_valid.shape:
            raise ValueError(f"q_block must have the shape of tokens {tuple(tokens.shape)} and k_block that of "
                             f"key_valid {tuple(key_valid.shape)}, got {tuple(q_block.shape)} and "
                             f"{tuple(k_block.shape)}")
        return block_causal_allowed(q_block, k_block)

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
        prompt_len: int | None = None,
        block_size: int | None = None,
    ) -> Float[Array, "B L V"]:
        """Full forward. `attention_mask` marks the valid (non-padding) rows, default all.

        Block-causal attention (D2F) over a canvas whose first `prompt_len` columns are the (left-padded) prompt
        region: a block_causal config always applies it and needs `prompt_len` (`block_size` defaults to its
        `attention_block_size`); a bidirectional config applies it when both `prompt_len` and `block_size` are
        given (the D2F student's view of a bidirectional teacher's weights), else it attends bidirectionally.
        """
        valid = jnp.ones(tokens.shape, bool) if attention_mask is None else attention_mask.astype(bool)
        if positions is None:
            positions = positions_from_mask(valid)
        block_size = self._block_size(tokens.shape[1], prompt_len, block_size)
        if block_size is None:
            hidden, _ = self.layers(tokens, positions, valid)
        else:
            rows = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
            ids = block_ids(rows, prompt_len, block_size)
            hidden, _ = self.layers(tokens, positions, valid, q_block=ids, k_block=ids)
        return self.head(hidden)

    def _block_size(self, length: int, prompt_len: int | None, block_size: int | None) -> int | None:
        """The block size of the block-causal mask `__call__` applies, None for bidirectional attention."""
        if self.config.attention == "block_causal":
            if prompt_len is None:
                raise ValueError("this model's config has attention='block_causal': pass prompt_len (the width "
                                 "of the prompt region, block 0) to the forward")
            block_size = self.config.attention_block_size if block_size is None else block_size
        elif (prompt_len is None) != (block_size is None):
            raise ValueError(f"block-causal attention on a bidirectional model needs both prompt_len and "
                             f"block_size, got prompt_len={prompt_len!r}, block_size={block_size!r}")
        integral = isinstance(prompt_len, numbers.Integral) and not isinstance(prompt_len, bool)
        if prompt_len is not None and not (integral and 0 <= prompt_len <= length):
            raise ValueError(f"prompt_len must be an integer in [0, {length}] (the canvas length), got {prompt_len!r}")
        return block_size


def positions_from_mask(valid: Bool[Array, "B L"]) -> Int[Array, "B L"]:
    """Rotary positions that ignore left padding: cumsum(mask) - 1, clipped at 0 (Dream's `tok_idx`).

    Without padding this is arange(L), the reference's positions; with left padding a row's positions are
    those it would have alone, which is what makes batched decoding batch-invariant.
    """
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)
