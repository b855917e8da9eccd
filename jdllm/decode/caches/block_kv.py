"""Fast-dLLM's block-wise approximate KV caches (arXiv 2505.22618 §3.2, Algorithm 1; `generate_with_prefix_cache`,
`generate_with_dual_cache`).

At the first step of each block a row runs a FULL forward: it yields that step's logits (the step commits and
counts as 1 NFE, as in the reference) and the K/V of every canvas row, stored as the cache. Later steps of the
block compute only some query rows and read the other rows' K/V from the cache:

- `PrefixCache`: queries are the generation region (static width; the reference's shrinking `x[:, s:]` padded
  to a fixed size), K/V of rows >= block start are fresh, rows before it come from the cache.
- `DualCache`: queries are the active block only (static width), K/V of the block rows are fresh, every other
  row (prefix and the masked suffix) comes from the cache.

For shifted-logit models (Dream) the query window starts one row earlier, so that the block's first position
is predicted from a real output; that extra row's K/V still come from the cache. (Fast-dLLM's Dream code
instead commits the block's first token unconditionally at the refresh; jdllm does not copy that hack.)

`refresh_every=k` also re-runs the full forward every k steps inside a block. Rows of a batch refresh when
*they* start a block, so in a ragged batch a few rows refresh while the others are mid-block. Such an iteration
gathers the refreshing rows into a sub-batch (the smallest power of two that holds them, up to half the batch; a
static size per `lax.switch` branch), runs the full forward on that sub-batch only, and scatters logits and K/V back; the other
rows take a cached step over their unchanged caches in the same iteration. So every row computes exactly what it
computes alone (batch-invariant tokens and NFE), no row idles (a ragged batch needs as many iterations as its
slowest row), and a refresh costs full forwards for the rows that refresh, not for the whole batch. (Refreshing
every row whenever one does would be cheaper still, but would change a row's tokens with its neighbours.) The
price is compile time: one full forward per sub-batch size (1, 2, 4, ... up to B / 2, and B) besides the cached
step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdllm.decode.caches.base import CacheStrategy, KVCache, full_window_logits, layer_rows, window_head
from jdllm.decode.canvas import row_range, slice_rows, update_rows
from jdllm.models.partitioning import active_batch_shards


@dataclasses.dataclass(frozen=True)
class _BlockKVCache(CacheStrategy):
    refresh_every: int | None = None

    def __post_init__(self):
        if self.refresh_every is not None and self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1 or None, got {self.refresh_every}")

    @classmethod
    def from_keywords(cls, refresh_every=None):
        return cls(refresh_every=refresh_every)

    def cached_rows(self, canvas, width: int, shift: int) -> int:
        """Query rows of a cached step (static)."""
        raise NotImplementedError  # abstract

    def init(self, cfg, batch, length):
        return KVCache.zeros(cfg, batch, length)

    def cached_logits(self, model, canvas, window_start, width, cache: KVCache):
        raise NotImplementedError  # abstract

    def window_logits(self, model, canvas, window_start, width, cache, refresh, live, steps_since_refresh):
        logits, cache, active, needs = self._window_logits(model, canvas, window_start, width, cache, refresh, live,
                                                           steps_since_refresh)
        rows = jnp.where(needs, canvas.tokens.shape[1], self.cached_rows(canvas, width, model.config.shift))
        return logits, cache, active, layer_rows(model, rows, active)

    def _window_logits(self, model, canvas, window_start, width, cache, refresh, live, steps_since_refresh):
        needs = refresh
        if self.refresh_every is not None:
            needs = needs | (steps_since_refresh % self.refresh_every == 0)
        needs = needs & live
        batch = needs.shape[0]
        sizes = _sub_batch_sizes(batch, active_batch_shards())

        def do_refresh(cache):
            logits, kvs = full_window_logits(model, canvas, window_start, width)
            return logits, KVCache.stack(kvs).where_rows(needs, cache), live

        def refresh_some(size):
            def run(cache):
                # the refreshing rows first (stable), the first `size` rows gathered into a sub-batch
                rows = jnp.argsort(~needs, stable=True)[:size]
                sub = canvas.replace(tokens=canvas.tokens[rows], valid=canvas.valid[rows],
                                     positions=canvas.positions[rows])
                sub_logits, kvs = full_window_logits(model, sub, window_start[rows], width)
                keep = needs[rows]
                fresh = KVCache.stack(kvs).where_rows(keep, cache.take_rows(rows))
                cached = self.cached_logits(model, canvas, window_start, width, cache)
                logits = cached.at[rows].set(jnp.where(keep[:, None, None], sub_logits, cached[rows]))
                return logits, cache.put_rows(rows, fresh), live
            return run

        def refresh_many(cache):
            # more rows refresh than the largest sub-batch holds: full forward for the batch, cached step too
            full, new_cache, _ = do_refresh(cache)
            cached = self.cached_logits(model, canvas, window_start, width, cache)
            return jnp.where(needs[:, None, None], full, cached), new_cache, live

        def do_cached(cache):
            return self.cached_logits(model, canvas, window_start, width, cache), cache, live

        n_refresh = jnp.sum(needs)
        # branch 0: every live row refreshes (one full forward); 1..len(sizes): a sub-batch of sizes[i - 1];
        # len(sizes) + 1: more rows than the largest sub-batch; last: nobody refreshes (cached step only)
        sub_branch = 1 + jnp.searchsorted(jnp.asarray(sizes, jnp.int32), n_refresh) if sizes else 1
        branch = jnp.where(jnp.all(needs | ~live), 0, jnp.where(n_refresh > 0, sub_branch, len(sizes) + 2))
        branches = (do_refresh, *(refresh_some(k) for k in sizes), refresh_many, do_cached)
        return (*jax.lax.switch(branch, branches, cache), needs)


def _sub_batch_sizes(batch: int, shards: int = 1) -> tuple[int, ...]:
    """Static sub-batch sizes for partial refreshes: `shards` x powers of two, up to half the batch (more
    refreshing rows than that run the full-batch forward). Under a sharded decode a sub-batch stays a multiple
    of the batch's shard count; none at all when the batch has fewer than two rows per shard."""
    sizes, k = [], shards
    while 2 * k <= batch:
        sizes.append(k)
        k *= 2
    return tuple(sizes)


@dataclasses.dataclass(frozen=True)
class PrefixCache(_BlockKVCache):
    name = "prefix"

    def cached_rows(self, canvas, width, shift):
        return canvas.tokens.shape[1] - canvas.prompt_len + shift

    def cached_logits(self, model, canvas, window_start, width, cache):
        shift = model.config.shift
        first = canvas.prompt_len - shift
        length = canvas.tokens.shape[1]
        fresh = row_range(length, window_start, jnp.full_like(window_start, length))[:, :, None, None]

        def merge(i, k, v):
            k_all = jnp.concatenate([cache.k[i][:, :first], k], axis=1)
            v_all = jnp.concatenate([cache.v[i][:, :first], v], axis=1)
            return jnp.where(fresh, k_all, cache.k[i]), jnp.where(fresh, v_all, cache.v[i])

        rows = jnp.broadcast_to(jnp.arange(first, length)[None, :], (canvas.tokens.shape[0], length - first))
        hidden, _ = model.layers(canvas.tokens[:, first:], canvas.positions[:, first:], canvas.valid, merge,
                                 **canvas.mask_blocks(rows))
        return window_head(model, hidden, window_start - shift - first, width)


@dataclasses.dataclass(frozen=True)
class DualCache(_BlockKVCache):
    name = "dual"

    def cached_rows(self, canvas, width, shift):
        return width + shift

    def cached_logits(self, model, canvas, window_start, width, cache):
        shift = model.config.shift
        q_start = window_start - shift
        tokens = slice_rows(canvas.tokens, q_start, width + shift)
        positions = slice_rows(canvas.positions, q_start, width + shift)

        def merge(i, k, v):
            # Only the block rows get fresh K/V; the extra leading query row of shifted models keeps its cache.
            return update_rows(cache.k[i], k[:, shift:], window_start), update_rows(cache.v[i], v[:, shift:], window_start)

        rows = q_start[:, None] + jnp.arange(width + shift)[None, :]
        hidden, _ = model.layers(tokens, positions, canvas.valid, merge, **canvas.mask_blocks(rows))
        return model.head(hidden[:, :width])
