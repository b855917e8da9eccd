"""Computing only some canvas rows at a static width: gather the selected rows into a query block, merge the
block's results back into full-length arrays.

Feature caches (dLLM-Cache, dKV-Cache) recompute a per-row, per-step subset of the canvas. The subset is moved to
the front of a static-width query block (selected rows first, in canvas order, then unselected ones as filler),
and results come back by a gather through the inverse permutation (`rank`: each canvas row's place in the
block) rather than a scatter: on CPU an XLA scatter of [B, Q, F] rows into [B, T, F] costs several times the
gather, and a merge happens several times per layer per step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


class RowSelection(NamedTuple):
    """`idx` [B, Q]: the canvas rows of the query block; `rank` [B, T]: each canvas row's place in the block (an
    inverse permutation); `merged` [B, T]: the selected rows that fit in the block, i.e. the rows whose value a
    merge replaces."""

    idx: Int[Array, "B Q"]
    rank: Int[Array, "B T"]
    merged: Bool[Array, "B T"]


def select_rows(selected: Bool[Array, "B T"], width: int) -> RowSelection:
    """The query block of `width` rows holding the `selected` rows first (ascending), then the others."""
    n_selected = jnp.sum(selected, axis=1, keepdims=True)
    rank = jnp.where(selected, jnp.cumsum(selected, axis=1) - 1, n_selected + jnp.cumsum(~selected, axis=1) - 1)
    length = selected.shape[1]
    rows = jnp.arange(length, dtype=jnp.int32)
    # rank is a permutation; its inverse (a scatter, cheaper than a sort) lists the canvas rows in block order
    inverse = jax.vmap(lambda r: jnp.zeros((length,), jnp.int32).at[r].set(rows, unique_indices=True))(rank)
    idx = inverse[:, :width]
    return RowSelection(idx, rank, selected & (rank < width))


def gather_rows(x: Float[Array, "B T ..."], idx: Int[Array, "B Q"]) -> Float[Array, "B Q ..."]:
    return jax.vmap(lambda row, i: row[i])(x, idx)


def merge_rows(full: Float[Array, "B T ..."], rows: Float[Array, "B Q ..."], sel: RowSelection) -> Float[Array, "B T ..."]:
    """`full` with each merged canvas row t replaced by the block's row rank[t] (`rows` in block order)."""
    picked = gather_rows(rows, jnp.minimum(sel.rank, rows.shape[1] - 1))
    keep = sel.merged.reshape(sel.merged.shape + (1,) * (full.ndim - 2))
    return jnp.where(keep, picked, full)
