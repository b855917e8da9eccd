"""Per-row rule state helpers shared by the stateful policies (R², TSPD+CE, KLASS, Prophet).

A policy's state is a pytree whose leaves have the batch on axis 0. Each step a row's state is
1. reset to its initial value where `ctx.block_start` (the row's first step in a block), then
2. updated by the rule, and
3. kept unchanged for rows that did not decode this step (no candidates: idle during another row's cache
   refresh, or done), so that a row's state evolves with its own steps only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _rows(mask, leaf):
    return mask.reshape(mask.shape + (1,) * (leaf.ndim - 1))


def where_rows(mask, a, b):
    """Leafwise `a` where mask[b] else `b` (mask [B]; leaves [B, ...])."""
    return jax.tree.map(lambda x, y: jnp.where(_rows(mask, x), x, y), a, b)


def reset_rows(mask, state, fresh):
    """`fresh` (the initial state, same structure) for rows where mask, else `state`."""
    return where_rows(mask, fresh, state)


def live_rows(candidates) -> jax.Array:
    """Rows that decode this step: those with at least one candidate."""
    return jnp.any(candidates, axis=-1)


def fallback_top1(commit, scores, candidates):
    """Guarantee progress: rows whose `commit` is empty commit their highest-scoring candidate instead."""
    from jdllm.decode.policies.base import descending_ranks

    top = candidates & (descending_ranks(scores, candidates) == 0)
    return commit | (top & ~jnp.any(commit, axis=-1, keepdims=True))
