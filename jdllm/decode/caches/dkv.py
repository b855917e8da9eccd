"""dKV-Cache (Ma et al., arXiv 2505.15781; official code horseee/dKV-Cache, `generation_utils/
llada_dkv_cache_decode.py`, `llada_dkv_cache_greedy.py`, `dream_generation_utils.py`): delayed K/V caching.

A token's K/V are unstable while it is masked and settle once it is decoded, but only one step later (the K/V
computed *with* the decoded token are needed). Per row the strategy keeps every layer's post-RoPE K/V at
absolute canvas rows, the final hidden state of every row, and which rows were decoded at the row's previous step.
With i = the steps the row has taken in its current block (the cache is reset at every block start):

- `variant="decode"` (dKV-Cache-Decode): steps i = 0, 1 and every multiple of `refresh_interval` run a full
  forward (all K/V refreshed); any other step recomputes only the rows that were still masked at the previous step
  (the rows masked now and the rows decoded one step ago, which so enter the cache with their real token) and
  reads every other row's K/V from the cache;
- `variant="greedy"` (dKV-Cache-Greedy): full forward at multiples of `refresh_interval`; otherwise only the
  window's masked rows and the rows decoded one step ago are recomputed; masked rows outside the window (later
  blocks) are read from the cache too. (The official greedy draws a random decode order up front and queries
  only that step's tokens; a confidence policy chooses after the forward, so the window's masked rows are the
  smallest set that holds them.)

For shifted-logit models (Dream) a row counts as settled when the row after it is decoded (the official
`shift_type="un"`), and greedy queries also the row before each queried row, whose output predicts it. Rows that
are not recomputed keep the hidden state of their last computation (their logits are never committed). The
recomputed rows are gathered into a static-width query block (`lax.switch` over a few widths: the window, its
doublings up to the response, the canvas), so a row computes what it would compute alone.

Defaults: LLaDA-Instruct's dKV-Cache-Decode (refresh every 8 steps); the paper uses 4 for Dream and 2 for greedy.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jdllm.decode.caches.base import CacheStrategy, KVCache
from jdllm.decode.caches.rows import RowSelection, merge_rows, select_rows
from jdllm.decode.canvas import Canvas, row_range, slice_rows

VARIANTS = ("decode", "greedy")


@struct.dataclass
class DelayedKV:
    """Per-layer post-RoPE K/V of every canvas row, the last hidden state of every row [B, T, D], and the rows
    decoded at the row's previous step [B, T]."""

    kv: KVCache
    hidden: Float[Array, "B T E"]
    decoded: Bool[Array, "B T"]
    LOGICAL_AXES: ClassVar[dict[str, tuple[str, ...]]] = {"hidden": ("batch", "cache_seq", "embed"),
                                                         "decoded": ("batch", "cache_seq")}


@dataclasses.dataclass(frozen=True)
class DKVCache(CacheStrategy):
    variant: str = "decode"
    refresh_interval: int = 8
    name = "dkv"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"DKVCache.variant must be one of {VARIANTS}, got {self.variant!r}")
        if isinstance(self.refresh_interval, bool) or not isinstance(self.refresh_interval, int) or (
                self.refresh_interval < 1):
            raise ValueError(f"DKVCache.refresh_interval must be an int >= 1, got {self.refresh_interval!r}")

    def init(self, cfg, batch, length):
        return DelayedKV(KVCache.zeros(cfg, batch, length), jnp.zeros((batch, length, cfg.d_model), cfg.jnp_dtype),
                         jnp.zeros((batch, length), bool))

    def full_step(self, i: Int[Array, "B"]) -> Bool[Array, "B"]:
        """Steps (within the block) that run a full forward."""
        full = i % self.refresh_interval == 0
        return full | (i < 2) if self.variant == "decode" else full

    def window_logits(self, model, canvas, window_start, width, cache, refresh, live, steps_since_refresh):
        length, shift = canvas.tokens.shape[1], model.config.shift
        decoded = canvas.tokens != model.config.mask_id
        queries = jnp.where(self.full_step(steps_since_refresh)[:, None], True,
                            self._queries(canvas, decoded, cache.decoded, window_start, width, shift))
        need = jnp.where(live, jnp.sum(queries, axis=1), 0)
        widths = _widths(length, length - canvas.prompt_len, width, shift)

        def run(q_width):
            def forward(c):
                sel = select_rows(queries, q_width)
                hidden, kvs = self._forward(model, canvas, sel, c.kv)
                return merge_rows(c.hidden, hidden, sel), KVCache.stack(kvs)
            return forward

        branch = jnp.searchsorted(jnp.asarray(widths, jnp.int32), jnp.max(need))
        hidden, kv = jax.lax.switch(branch, [run(w) for w in widths], cache)
        logits = model.head(slice_rows(hidden, window_start - shift, width))
        rows = (need * model.config.n_layers).astype(jnp.int32)
        return logits, DelayedKV(kv, hidden, jnp.where(live[:, None], decoded, cache.decoded)), live, rows

    def _queries(self, canvas: Canvas, decoded, decoded_before, window_start, width: int, shift: int):
        """Rows a cached step recomputes: decode: not settled at the previous step; greedy: the window's masked
        rows and the rows decoded since the previous step (and, shifted models, the row before each)."""
        if self.variant == "decode":
            return ~_settled(decoded_before, shift)
        length = canvas.tokens.shape[1]
        window = row_range(length, window_start, window_start + width)
        chosen = (window & ~decoded) | (decoded & ~decoded_before)
        if shift:
            chosen = chosen | jnp.pad(chosen[:, shift:], ((0, 0), (0, shift)))
        return chosen

    @staticmethod
    def _forward(model, canvas: Canvas, sel: RowSelection, kv: KVCache):
        """The gathered query rows against the cache; their fresh K/V written into it."""
        def merge(i, k, v):
            return merge_rows(kv.k[i], k, sel), merge_rows(kv.v[i], v, sel)

        tokens = jnp.take_along_axis(canvas.tokens, sel.idx, axis=1)
        positions = jnp.take_along_axis(canvas.positions, sel.idx, axis=1)
        return model.layers(tokens, positions, canvas.valid, merge, **canvas.mask_blocks(sel.idx))


def _settled(decoded: Bool[Array, "B T"], shift: int) -> Bool[Array, "B T"]:
    """Rows whose K/V the decode variant may cache: decoded (shifted models: the next row decoded, the official
    `shift_type="un"`; the last row: itself)."""
    if not shift:
        return decoded
    return jnp.concatenate([decoded[:, shift:], decoded[:, -shift:]], axis=1)


def _widths(length: int, gen: int, width: int, shift: int) -> list[int]:
    """Static query widths: the window, its doublings up to the response (+ the shift row), the canvas."""
    out, w = {length}, width
    while w < gen:
        out.add(min(w + shift, length))
        w *= 2
    out.add(min(gen + shift, length))
    return sorted(out)


__all__ = ["DKVCache", "DelayedKV", "VARIANTS"]
