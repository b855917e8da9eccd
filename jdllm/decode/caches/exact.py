"""Exact KV cache for block-causal models (D2F, arXiv 2508.09192 §3.2; block diffusion).

Under block-causal attention (the prompt is block 0; a query sees keys of its own and earlier blocks) a row's K/V
depend only on its own block and earlier ones, so once those are final the K/V are exact and never need a
refresh. The strategy keeps every layer's post-RoPE K/V at absolute canvas rows (static capacity: the canvas) and
a per-row `ready` flag:

- a row's first step (its window starts at the prompt end) runs the prompt and the first window in one forward
  (static width prompt_len + window) and writes their K/V;
- every later step runs only the window's rows as queries against the cache, writes the window's fresh K/V
  (persisted: a block that is complete when a step runs it gets its exact K/V; rows after the window are never
  visible to the window's queries) and reads the rest;
- a step whose row's window moved (`refresh`: a schedule that moves on as soon as a block completes, like
  semi-AR blocks) first recomputes the block before the window with its final tokens, so that block's cached
  K/V are exact too. The D2F pipeline (`schedules.Pipelined`) retires a block only after a step that ran it with
  its final tokens, so for it this re-run is redundant but harmless.

No full-canvas forward runs at any point: a step costs the window's queries against a static-length cache. For
shifted-logit models (Dream) the query window starts one row earlier (that row is exact and re-written too).
Tokens equal those of a full forward every step (`cache=None`) on the same block-causal model.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdllm.decode.caches.base import CacheStrategy, KVCache, layer_rows
from jdllm.decode.canvas import slice_rows, update_rows


@dataclasses.dataclass(frozen=True)
class ExactBlockCache(CacheStrategy):
    name = "exact"

    @classmethod
    def from_keywords(cls, refresh_every=None):
        if refresh_every is not None:
            raise ValueError("refresh_every needs cache='prefix' or 'dual' (the exact cache never refreshes)")
        return cls()

    def init(self, cfg, batch, length):
        return dict(kv=KVCache.zeros(cfg, batch, length), ready=jnp.zeros((batch,), bool))

    def window_logits(self, model, canvas, window_start, width, cache, refresh, live, steps_since_refresh):
        if canvas.block_size is None:
            raise ValueError("cache='exact' needs a block-causal model (config attention='block_causal'): with "
                             "bidirectional attention no K/V is ever exact; use cache='prefix' or 'dual'")
        shift, kv = model.config.shift, cache["kv"]

        def prefill(kv):
            n = canvas.prompt_len + width
            return self._run(model, canvas, jnp.zeros_like(window_start), n, kv, window_start - shift, width)

        def step(kv):
            return self._run(model, canvas, window_start - shift, width + shift, kv, window_start - shift, width)

        def step_after_move(kv):
            back = canvas.block_size
            if width + shift + back > canvas.tokens.shape[1]:  # one window spans the generation: it never moves
                return step(kv)
            first = jnp.maximum(window_start - shift - back, 0)  # (only the first window would need the clamp)
            return self._run(model, canvas, first, width + shift + back, kv, window_start - shift, width)

        branch = jnp.where(jnp.any(live & ~cache["ready"]), 0, jnp.where(jnp.any(live & refresh), 2, 1))
        logits, kv = jax.lax.switch(branch, (prefill, step, step_after_move), kv)
        back = canvas.block_size if width + shift + canvas.block_size <= canvas.tokens.shape[1] else 0
        rows = jnp.where(~cache["ready"], canvas.prompt_len + width, width + shift + jnp.where(refresh, back, 0))
        return logits, dict(kv=kv, ready=cache["ready"] | live), live, layer_rows(model, rows, live)

    @staticmethod
    def _run(model, canvas, q_start, n_rows: int, kv: KVCache, head_start, width: int):
        """Queries at rows [q_start, q_start + n_rows) against the cache, their K/V written into it; logits of
        rows [head_start, head_start + width)."""
        tokens = slice_rows(canvas.tokens, q_start, n_rows)
        positions = slice_rows(canvas.positions, q_start, n_rows)
        rows = q_start[:, None] + jnp.arange(n_rows)[None, :]

        def merge(i, k, v):
            return update_rows(kv.k[i], k, q_start), update_rows(kv.v[i], v, q_start)

        hidden, kvs = model.layers(tokens, positions, canvas.valid, merge, **canvas.mask_blocks(rows))
        logits = model.head(slice_rows(hidden, head_start - q_start, width))
        return logits, KVCache.stack(kvs)
