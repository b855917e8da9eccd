"""The cache-strategy axis: how a step's forward is computed and what state it keeps between steps.

A strategy is a frozen dataclass with `init(cfg, batch, length) -> cache pytree` and
`window_logits(model, canvas, window_start, width, cache, refresh, live, step_in_block) -> (logits [B, W, V],
cache, active)`:
the logits the policy reads for the active window [start, start + width) of each row (already aligned for
shifted models), the new cache, and which rows actually computed this iteration (`active`; rows idle while
another row refreshes its cache do not commit and do not count an NFE).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jdllm.decode.canvas import Canvas, slice_rows
from jdllm.decode.sharding import KV_CACHE_AXES
from jdllm.models.config import ModelConfig
from jdllm.models.transformer import Transformer


@struct.dataclass
class KVCache:
    """Post-RoPE keys and values of every layer at absolute canvas rows: [n_layers, B, T, kv_heads, head_dim]."""

    k: Float[Array, "N B T H D"]
    v: Float[Array, "N B T H D"]
    LOGICAL_AXES: ClassVar[dict[str, tuple[str, ...]]] = {"k": KV_CACHE_AXES, "v": KV_CACHE_AXES}  # sharded decode

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, length: int) -> "KVCache":
        shape = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.head_dim)
        return cls(jnp.zeros(shape, cfg.jnp_dtype), jnp.zeros(shape, cfg.jnp_dtype))

    @classmethod
    def stack(cls, kvs) -> "KVCache":
        return cls(jnp.stack([k for k, _ in kvs]), jnp.stack([v for _, v in kvs]))

    def take_rows(self, rows: Int[Array, "R"]) -> "KVCache":
        return KVCache(self.k[:, rows], self.v[:, rows])

    def put_rows(self, rows: Int[Array, "R"], sub: "KVCache") -> "KVCache":
        return KVCache(self.k.at[:, rows].set(sub.k), self.v.at[:, rows].set(sub.v))

    def where_rows(self, rows: Bool[Array, "B"], other: "KVCache") -> "KVCache":
        sel = rows[None, :, None, None, None]
        return KVCache(jnp.where(sel, self.k, other.k), jnp.where(sel, self.v, other.v))


@dataclasses.dataclass(frozen=True)
class CacheStrategy:
    """Base class: see the module docstring."""

    def init(self, cfg: ModelConfig, batch: int, length: int):
        return ()

    def window_logits(self, model, canvas, window_start, width, cache, refresh, live, step_in_block):
        raise NotImplementedError  # abstract


def window_head(model: Transformer, hidden: Float[Array, "B Q D"], first_row: Int[Array, "B"], width: int):
    """LM head on `width` query rows of `hidden` starting at `first_row` (only the window pays the head)."""
    return model.head(slice_rows(hidden, first_row, width))


def full_forward(model: Transformer, canvas: Canvas, tokens=None):
    """All positions of the canvas: final hidden states and per-layer K/V."""
    tokens = canvas.tokens if tokens is None else tokens
    rows = jnp.broadcast_to(jnp.arange(tokens.shape[1])[None, :], tokens.shape)
    return model.layers(tokens, canvas.positions, canvas.valid, **canvas.mask_blocks(rows))


def full_window_logits(model, canvas: Canvas, window_start, width, tokens=None):
    """Full forward, head only on the window (rows start - shift .. for shifted models)."""
    shift = model.config.shift
    hidden, kvs = full_forward(model, canvas, tokens)
    return window_head(model, hidden, window_start - shift, width), kvs
