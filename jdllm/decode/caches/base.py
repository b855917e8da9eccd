"""The cache-strategy axis: how a step's forward is computed and what state it keeps between steps.

A strategy is a frozen dataclass (static under `jax.jit`, registered by name in `jdllm.decode.cache_registry`)
that owns its state, its refresh schedule and its cost account:

- `from_keywords(refresh_every=None)`: the strategy `generate(cache=<name>, ...)` builds (a keyword it does not
  take raises a ValueError naming it);
- `init(cfg, batch, length) -> state pytree` (threaded by the loop in `DecodeState.cache`); a node of it that
  declares a class attribute `LOGICAL_AXES` (field -> logical axes) is pinned by a sharded decode
  (`ShardingPlan.constrain_cache`), so sharding needs no list of cache types;
- `window_logits(model, canvas, window_start, width, cache, refresh, live, steps_since_refresh) -> (logits
  [B, W, V], cache, active [B], recomputed [B])`: the logits the policy reads for the window [start, start +
  width) of each row (already aligned for shifted models), the new state, which rows computed this iteration
  (`active`; an idle row commits nothing and counts no NFE), and the row's compute this iteration: positions
  run through a transformer layer, summed over layers (`GenerateOutput.recomputed`). `refresh` says the row's
  window moved; when to refresh is the strategy's own rule;
- `max_iters(schedule, steps, batch)`: the loop's static iteration bound (default: the schedule's);
- `extra_flops(cfg, nfe, canvas_len, prompt_len)`: model FLOPs of a row beyond its recomputed positions and its
  LM-head rows (e.g. dLLM-Cache's value projections for V-verify), for `GenerateOutput.flops`.
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

    name: ClassVar[str] = ""

    @classmethod
    def from_keywords(cls, refresh_every: int | None = None) -> "CacheStrategy":
        """The strategy of `generate(cache=<name>, refresh_every=...)`; keywords it does not take raise."""
        if refresh_every is not None:
            raise ValueError(f"refresh_every needs cache='prefix' or 'dual', not cache={cls.name!r} (set the "
                             f"refresh rule on the strategy object, e.g. {cls.__name__}(...))")
        return cls()

    def init(self, cfg: ModelConfig, batch: int, length: int):
        return ()

    def window_logits(self, model, canvas, window_start, width, cache, refresh, live, steps_since_refresh):
        raise NotImplementedError  # abstract

    def max_iters(self, schedule, steps: int, batch: int) -> int:
        """Static bound of the decode loop: every step of a live row computes, so the schedule's bound."""
        return schedule.max_iters(steps, batch)

    def extra_flops(self, cfg: ModelConfig, nfe: int, canvas_len: int, prompt_len: int) -> float:
        """Model FLOPs of a row that `recomputed` does not count (none by default)."""
        return 0.0


def layer_rows(model: Transformer, rows: Int[Array, "B"] | int, active: Bool[Array, "B"]) -> Int[Array, "B"]:
    """A step's compute account: `rows` query positions per row through every layer, 0 for inactive rows."""
    return jnp.where(active, jnp.asarray(rows, jnp.int32) * model.config.n_layers, 0).astype(jnp.int32)


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
