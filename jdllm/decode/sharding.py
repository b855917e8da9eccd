"""The decode-time sharding plan: mesh + rules of one sharded decode, and the multi-host batch helpers.

The decode's own arrays carry logical axis names like the parameters (`jdllm.models.partitioning`): the canvas
('batch', 'seq'), window logits ('batch', 'seq', 'vocab'), and whatever a cache declares: a cache pytree node
with a class attribute `LOGICAL_AXES` (field name -> logical axes, e.g. `KVCache`: k / v as `KV_CACHE_AXES`) is
pinned field by field; other leaves are left to the compiler. The proposal over a vocab-sharded LM head runs in
a `shard_map` (`propose_sharded`), so [B, W, V] logits are never gathered.

Multi-host: call `initialize_distributed()` (`jax.distributed.initialize()`) first on every process, build the
mesh over `jax.devices()` (all processes' devices) and run the same program everywhere. `generate` takes the
global prompt list on every process; each process only places the rows its devices hold
(`process_rows` / `global_batch_array`, through `jax.make_array_from_process_local_data`) and the results are
gathered back with `to_host`. See docs/tpu.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jdllm.decode.proposal import propose, propose_sharded
from jdllm.models.partitioning import (
    ShardingRules, activation_sharding, auto_mesh, context_mesh, get_rules, mesh_of, usable_mesh,
)

KV_CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")
CANVAS_AXES = ("batch", "seq")
LOGITS_AXES = ("batch", "seq", "vocab")


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    """Mesh (Auto axes) + rules of a sharded decode: hashable, a field of the static `DecodeSpec`."""

    mesh: Mesh
    rules: ShardingRules

    def spec(self, logical, shape=None, what="array") -> P:
        return self.rules.spec(logical, shape, self.mesh, what)

    def sharding(self, logical, shape=None, what="array") -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical, shape, what))

    def constrain(self, x, logical, what="array"):
        return jax.lax.with_sharding_constraint(x, self.sharding(logical, x.shape, what))

    def axes(self, logical: str) -> tuple[str, ...]:
        return tuple(a for a in self.rules.mesh_axes(logical) if a in self.mesh.shape)

    def size(self, logical: str) -> int:
        return math.prod(self.mesh.shape[a] for a in self.axes(logical))

    def activations(self):
        """Context: the model's activations pinned by this plan while tracing (`constrain_activation`)."""
        return activation_sharding(self.mesh, self.rules)

    def constrain_cache(self, cache):
        """Cache pytree: every node that declares `LOGICAL_AXES` pinned field by field; other leaves left to the
        compiler."""
        declares = lambda n: hasattr(type(n), "LOGICAL_AXES")  # noqa: E731

        def one(node):
            if not declares(node):
                return node
            name = type(node).__name__
            return node.replace(**{f: self.constrain(getattr(node, f), axes, f"{name}.{f}")
                                   for f, axes in type(node).LOGICAL_AXES.items()})

        return jax.tree.map(one, cache, is_leaf=declares)

    def propose(self, logits, temperature, keys, mask_id):
        batch, _, vocab = self.spec(LOGITS_AXES, logits.shape, "window logits")
        vocab = () if vocab is None else ((vocab,) if isinstance(vocab, str) else tuple(vocab))
        if math.prod(self.mesh.shape[a] for a in vocab) == 1:
            logits = self.constrain(logits, LOGITS_AXES, "window logits")
            return propose(logits, temperature, keys, mask_id)
        return propose_sharded(logits, temperature, keys, mask_id, self.mesh, batch, vocab)


def plan_for(params, mesh: Mesh | None, rules: ShardingRules | str | None, model_rules=None) -> ShardingPlan | None:
    """The plan of a decode: `mesh` if given, else the params' mesh, else the mesh of a surrounding
    `jax.set_mesh(...)`; None (the single-device path) when none spans more than one device. A mesh jdllm
    cannot use is refused here, before any work (`usable_mesh`)."""
    for candidate in (mesh, mesh_of(params), context_mesh()):
        if candidate is not None:
            mesh = candidate
            break
    if mesh is None:
        if rules is not None:
            raise ValueError("rules= needs a mesh= (or a model whose parameters are sharded over a mesh)")
        return None
    table = get_rules(rules if rules is not None else model_rules)
    mesh = usable_mesh(mesh, table)
    if mesh.size == 1 and rules is None:
        return None
    return ShardingPlan(mesh, table)


# ----------------------------------------------------------------------------------------------------------
# Multi-host
# ----------------------------------------------------------------------------------------------------------


def initialize_distributed(**kwargs) -> None:
    """`jax.distributed.initialize(**kwargs)` once per process, before any other JAX call (on Cloud TPU every
    argument is discovered; elsewhere give coordinator_address, num_processes, process_id); a no-op when
    already initialised."""
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(**kwargs)


def process_rows(n_rows: int, mesh: Mesh, rules: ShardingRules | str | None = None) -> slice:
    """The contiguous rows of a global [n_rows, ...] batch that this process's devices hold under `rules`."""
    mesh = auto_mesh(mesh)
    sharding = NamedSharding(mesh, get_rules(rules).spec(("batch",), (n_rows,), mesh, what=f"batch of {n_rows} rows"))
    idx = sharding.addressable_devices_indices_map((n_rows,))
    starts = sorted({(s[0].start or 0, n_rows if s[0].stop is None else s[0].stop) for s in idx.values()})
    lo, hi = starts[0][0], max(h for _, h in starts)
    covered = sum(h - l for l, h in starts)
    if covered != hi - lo:
        raise ValueError(f"this process's batch rows are not contiguous under mesh {dict(mesh.shape)}: {starts}")
    return slice(lo, hi)


def local_prompts(prompts: Sequence, mesh: Mesh, rules: ShardingRules | str | None = None) -> tuple[list, slice]:
    """This process's share of the global prompt list (the rows its devices hold) and its row slice."""
    rows = process_rows(len(prompts), mesh, rules)
    return list(prompts[rows]), rows


def global_batch_array(local, mesh: Mesh, rules: ShardingRules | str | None = None,
                       logical: Sequence[str | None] = CANVAS_AXES, global_rows: int | None = None) -> jax.Array:
    """A global jax.Array sharded over `logical` from this process's rows (`jax.make_array_from_process_local_data`).
    `global_rows` defaults to `local.shape[0] * jax.process_count()` (even split)."""
    mesh = auto_mesh(mesh)
    local = np.asarray(local)
    logical = tuple(logical)[: local.ndim]
    rows = local.shape[0] * jax.process_count() if global_rows is None else global_rows
    shape = (rows,) + local.shape[1:]
    sharding = NamedSharding(mesh, get_rules(rules).spec(logical, shape, mesh, what=f"batch input {shape}"))
    return jax.make_array_from_process_local_data(sharding, local, shape)


def to_host(x) -> np.ndarray:
    """The whole array on this host (gathered across processes when it is not fully addressable)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
