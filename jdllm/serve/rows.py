"""Per-row access to a static-size decode state: which axis of each leaf is the batch, and row-wise select,
gather, take and put on it (JetStream's "insert into a decode slot", for any cache / policy / schedule pytree).

The batch axis of every leaf is found from shapes alone: the state is built abstractly (`jax.eval_shape`) for two
batch sizes and each leaf must differ in exactly one axis, by a whole multiple `k` of the batch difference (the
policy state has `batch x schedule.slots` rows, so `k = slots` there, 1 elsewhere; a KV cache's batch is axis 1).
A leaf that does not change is global (the loop counter `iters`). Batch row `b` of a leaf is then the `k`
consecutive entries `[b * k, (b + 1) * k)` of its batch axis, which is how the loop lays policy rows out.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

RowAxes = tuple  # per leaf (in tree-flatten order): (axis, k), or None for a global leaf

TRIAL_BATCHES = (2, 3)


def row_axes(build: Callable[[int], object]) -> RowAxes:
    """The batch axis and rows-per-batch-row of each leaf of `build(batch)` (a pytree), from abstract shapes."""
    small, large = (jax.tree.leaves(jax.eval_shape(lambda: build(b))) for b in TRIAL_BATCHES)
    growth = TRIAL_BATCHES[1] - TRIAL_BATCHES[0]
    out = []
    for i, (a, b) in enumerate(zip(small, large)):
        if a.ndim != b.ndim:
            raise ValueError(f"state leaf {i} changes rank with the batch ({a.shape} vs {b.shape})")
        moved = [ax for ax in range(a.ndim) if a.shape[ax] != b.shape[ax]]
        if not moved:
            out.append(None)
            continue
        ax = moved[0]
        k, rest = divmod(b.shape[ax] - a.shape[ax], growth)
        if len(moved) > 1 or rest or a.shape[ax] != k * TRIAL_BATCHES[0]:
            raise ValueError(f"state leaf {i} has no single batch axis: shape {a.shape} at batch "
                             f"{TRIAL_BATCHES[0]}, {b.shape} at batch {TRIAL_BATCHES[1]}")
        out.append((ax, k))
    return tuple(out)


def _map(axes: RowAxes, fn, *trees):
    """fn(axis_k, *leaves) over the leaves of `trees` (same structure); global leaves take the first tree's."""
    leaves = [jax.tree.leaves(t) for t in trees]
    if any(len(ls) != len(axes) for ls in leaves):
        raise ValueError(f"state has {[len(ls) for ls in leaves]} leaves, the row map {len(axes)}")
    done = [ls[0] if ak is None else fn(ak, *ls) for ak, *ls in zip(axes, *leaves)]
    return jax.tree.unflatten(jax.tree.structure(trees[0]), done)


def _expand(per_row: Array, ak, leaf: Array) -> Array:
    """[B] -> broadcastable against `leaf` along its batch axis (each row repeated k times)."""
    ax, k = ak
    x = jnp.repeat(per_row, k) if k > 1 else per_row
    return x.reshape((1,) * ax + (-1,) + (1,) * (leaf.ndim - ax - 1))


def select_rows(axes: RowAxes, rows: Bool[Array, "B"], if_true, if_false):
    """Row b of every leaf from `if_true` where rows[b], else from `if_false`; global leaves from `if_true`."""
    return _map(axes, lambda ak, t, f: jnp.where(_expand(rows, ak, t), t, f), if_true, if_false)


def gather_rows(axes: RowAxes, tree, order: Int[Array, "B"]):
    """Rows reordered: new row i = old row order[i]."""
    def one(ak, leaf):
        ax, k = ak
        idx = (order[:, None] * k + jnp.arange(k)[None, :]).reshape(-1)
        return jnp.take(leaf, idx, axis=ax)
    return _map(axes, one, tree)


def take_rows(axes: RowAxes, tree, size: int):
    """The first `size` rows (static), as a state of batch `size`."""
    return _map(axes, lambda ak, leaf: jax.lax.slice_in_dim(leaf, 0, size * ak[1], axis=ak[0]), tree)


def put_rows(axes: RowAxes, tree, sub):
    """`tree` with its first rows replaced by the rows of `sub` (global leaves from `sub`)."""
    def one(ak, sub_leaf, leaf):
        return jax.lax.dynamic_update_slice_in_dim(leaf, sub_leaf.astype(leaf.dtype), 0, axis=ak[0])
    return _map(axes, one, sub, tree)
