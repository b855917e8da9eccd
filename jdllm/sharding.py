"""Scale out: logical axis names, ONE rules table, mesh helpers, sharded placement and multi-host helpers.

Every array jdllm shards carries *logical* axis names (maxtext's scheme): parameters by their path
(`param_logical_axes`), the canvas as ('batch', 'seq'), the KV cache as ('layers', 'batch', 'cache_seq',
'kv_heads', 'head_dim'), window logits as ('batch', 'seq', 'vocab'), the residual stream inside the model as
('batch', 'seq', 'act_embed') (`constrain_activation`, active only during a sharded decode: without it FSDP
would reshard activations instead of gathering weights). A `ShardingRules` table maps each logical
name to a tuple of mesh axes of a `('data', 'fsdp', 'tensor')` mesh; swapping the table swaps the whole
parallelism scheme:

- `TENSOR_PARALLEL` (the inference default): Megatron-style heads / kv_heads / mlp / vocab over `tensor`,
  batch over `data`, everything else replicated.
- `DATA_PARALLEL`: weights replicated, batch over every mesh axis.
- `FSDP`: embed over `fsdp` (weights gathered when used; for models that do not fit), batch over `data` and
  `fsdp`, heads / mlp / vocab still over `tensor`.

A dimension whose size is not divisible by the product of its mesh axes raises a ValueError that names the
tensor and the axis (no silent replication). A mesh axis already used by an earlier dimension of the same
array is skipped (flax's logical-to-mesh rule), so a rule like batch -> ('data', 'fsdp') stays valid next to
embed -> ('fsdp',).

Multi-host: call `initialize_distributed()` (`jax.distributed.initialize()`) first on every process, build the
mesh over `jax.devices()` (all processes' devices) and run the same program everywhere. `generate` takes the
global prompt list on every process; each process only places the rows its devices hold
(`process_rows` / `global_batch_array`, through `jax.make_array_from_process_local_data`) and the results are
gathered back with `to_host`. See docs/tpu.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical names used by jdllm arrays.
LOGICAL_AXES = (
    "batch", "seq", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "norm", "layers", "cache_seq",
    "act_embed",
)
KV_CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")
CANVAS_AXES = ("batch", "seq")
LOGITS_AXES = ("batch", "seq", "vocab")
RESIDUAL_AXES = ("batch", "seq", "act_embed")  # the transformer's residual stream [B, Q, D]


# ----------------------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """One table: logical axis name -> tuple of mesh axes (empty = replicated). Frozen and hashable, so it can
    be part of a static jit argument."""

    name: str
    table: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self):
        seen = set()
        for logical, axes in self.table:
            if logical in seen:
                raise ValueError(f"rules {self.name!r}: logical axis {logical!r} listed twice")
            seen.add(logical)
            if not isinstance(axes, tuple) or not all(isinstance(a, str) for a in axes):
                raise ValueError(f"rules {self.name!r}: {logical!r} must map to a tuple of mesh axis names, got {axes!r}")

    @classmethod
    def create(cls, name: str, **mapping: Sequence[str] | str | None) -> "ShardingRules":
        """Rules from keyword arguments; every logical name not given is replicated."""
        full = {k: () for k in LOGICAL_AXES}
        for k, v in mapping.items():
            full[k] = () if v is None else ((v,) if isinstance(v, str) else tuple(v))
        return cls(name, tuple(full.items()))

    def replace(self, name: str | None = None, **mapping) -> "ShardingRules":
        """A copy with some logical names re-mapped."""
        full = dict(self.table)
        for k, v in mapping.items():
            full[k] = () if v is None else ((v,) if isinstance(v, str) else tuple(v))
        return ShardingRules(name or self.name + "+custom", tuple(full.items()))

    def mesh_axes(self, logical: str | None) -> tuple[str, ...]:
        if logical is None:
            return ()
        for name, axes in self.table:
            if name == logical:
                return axes
        raise ValueError(f"rules {self.name!r} have no entry for logical axis {logical!r}")

    def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None,
             what: str = "array") -> P:
        """PartitionSpec of an array with logical axes `logical`; with `shape` and `mesh`, checks divisibility."""
        if shape is not None and len(shape) != len(logical):
            raise ValueError(f"{what}: shape {tuple(shape)} has {len(shape)} dims but logical axes {tuple(logical)}")
        used: set[str] = set()
        parts = []
        for i, name in enumerate(logical):
            axes = []
            for a in self.mesh_axes(name):
                if a in used:
                    continue
                if mesh is not None and a not in mesh.shape:
                    raise ValueError(f"rules {self.name!r} map {name!r} to mesh axis {a!r}, not in mesh axes {tuple(mesh.shape)}")
                axes.append(a)
            used.update(axes)
            if shape is not None and mesh is not None and axes:
                size = math.prod(mesh.shape[a] for a in axes)
                if shape[i] % size:
                    raise ValueError(
                        f"{what}: dimension {i} ({name!r}) of size {shape[i]} is not divisible by mesh axis "
                        f"{'x'.join(repr(a) for a in axes)} of size {size} (rules {self.name!r}); pick a mesh whose "
                        f"axis divides it or map {name!r} to other mesh axes"
                    )
            parts.append(None if not axes else (axes[0] if len(axes) == 1 else tuple(axes)))
        return P(*parts)


TENSOR_PARALLEL = ShardingRules.create(
    "tensor_parallel", batch=("data",), heads="tensor", kv_heads="tensor", mlp="tensor", vocab="tensor",
)
DATA_PARALLEL = ShardingRules.create("data_parallel", batch=("data", "fsdp", "tensor"))
FSDP = ShardingRules.create(
    "fsdp", batch=("data", "fsdp"), embed="fsdp", heads="tensor", kv_heads="tensor", mlp="tensor", vocab="tensor",
)
PRESETS: dict[str, ShardingRules] = {r.name: r for r in (TENSOR_PARALLEL, DATA_PARALLEL, FSDP)}
DEFAULT_RULES = TENSOR_PARALLEL


def get_rules(rules: ShardingRules | str | None) -> ShardingRules:
    """A rules table from a preset name ('tensor_parallel', 'data_parallel', 'fsdp'), a table, or None (default)."""
    if rules is None:
        return DEFAULT_RULES
    if isinstance(rules, ShardingRules):
        return rules
    if rules in PRESETS:
        return PRESETS[rules]
    raise ValueError(f"rules must be a ShardingRules or one of {sorted(PRESETS)}, got {rules!r}")


# ----------------------------------------------------------------------------------------------------------
# Mesh
# ----------------------------------------------------------------------------------------------------------


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: every device of every process).

    One size may be -1: it takes what the others leave. The product must equal the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one of data, fsdp, tensor may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive (or one -1), got data={data}, fsdp={fsdp}, tensor={tensor}")
    if -1 in sizes:
        rest = math.prod(s for s in sizes if s != -1)
        if len(devices) % rest:
            raise ValueError(f"{len(devices)} devices cannot be split into a mesh with the other axes of size {rest}")
        sizes[sizes.index(-1)] = len(devices) // rest
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} devices, "
            f"but {len(devices)} devices were given"
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def mesh_of(tree) -> Mesh | None:
    """The mesh of the first NamedSharding leaf of `tree` with more than one device, else None."""
    for leaf in jax.tree.leaves(tree):
        sh = getattr(leaf, "sharding", None)
        if isinstance(sh, NamedSharding) and sh.mesh.size > 1:
            return sh.mesh
    return None


# ----------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------

_BLOCK_PARAM_AXES = {
    ("attn_norm", "weight"): ("norm",),
    ("ff_norm", "weight"): ("norm",),
    ("q_proj", "kernel"): ("embed", "heads"),
    ("q_proj", "bias"): ("heads",),
    ("k_proj", "kernel"): ("embed", "kv_heads"),
    ("k_proj", "bias"): ("kv_heads",),
    ("v_proj", "kernel"): ("embed", "kv_heads"),
    ("v_proj", "bias"): ("kv_heads",),
    ("attn_out", "kernel"): ("heads", "embed"),
    ("ff_proj", "kernel"): ("embed", "mlp"),
    ("up_proj", "kernel"): ("embed", "mlp"),
    ("ff_out", "kernel"): ("mlp", "embed"),
}
_TOP_PARAM_AXES = {
    ("wte",): ("vocab", "embed"),
    ("ln_f", "weight"): ("norm",),
    ("ff_out", "kernel"): ("embed", "vocab"),  # the LM head (not the block's down projection)
}


def _key_name(k) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def normalize_path(path) -> tuple:
    """A parameter path as a tuple of str / int: ('blocks', 0, 'q_proj', 'kernel'); accepts a jax key path, a
    tuple or a dotted string; drops nnx's trailing 'value'."""
    if isinstance(path, str):
        path = tuple(int(p) if p.isdigit() else p for p in path.split("."))
    out = tuple(_key_name(k) for k in path)
    while out and out[-1] in ("value", "raw_value"):
        out = out[:-1]
    return out


def param_logical_axes(path) -> tuple[str, ...]:
    """Logical axis names of the parameter at `path` (see module docstring)."""
    key = normalize_path(path)
    if key in _TOP_PARAM_AXES:
        return _TOP_PARAM_AXES[key]
    if len(key) == 4 and key[0] == "blocks" and key[2:] in _BLOCK_PARAM_AXES:
        return _BLOCK_PARAM_AXES[key[2:]]
    raise ValueError(f"no logical axes known for parameter {'.'.join(map(str, key))}")


def param_sharding(path, shape: Sequence[int], mesh: Mesh, rules: ShardingRules) -> NamedSharding:
    name = ".".join(map(str, normalize_path(path)))
    return NamedSharding(mesh, rules.spec(param_logical_axes(path), tuple(shape), mesh, what=f"parameter {name}"))


def param_shardings(state, mesh: Mesh, rules: ShardingRules):
    """A pytree of NamedShardings like `state` (concrete or abstract params)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: param_sharding(p, x.shape, mesh, rules), state)


def check_model(cfg, mesh: Mesh, rules: ShardingRules) -> None:
    """Head counts must split evenly (a shard must hold whole heads; the KV cache is sharded over kv heads)."""
    for logical, count, what in (("heads", cfg.n_heads, "attention heads (blocks.N.q_proj.kernel)"),
                                 ("kv_heads", cfg.n_kv_heads, "kv heads (blocks.N.k_proj/v_proj.kernel, KV cache)")):
        axes = [a for a in rules.mesh_axes(logical) if a in mesh.shape]
        size = math.prod(mesh.shape[a] for a in axes)
        if count % size:
            raise ValueError(
                f"{count} {what} are not divisible by mesh axis {'x'.join(map(repr, axes))} of size {size} "
                f"(rules {rules.name!r}); use a smaller tensor axis or rules.replace({logical}=None) to replicate them"
            )


def shard_params(state, mesh: Mesh, rules: ShardingRules):
    """Place every parameter of `state` on its shards (arrays already placed that way are not copied)."""
    return jax.tree.map(lambda x, s: x if getattr(x, "sharding", None) == s else jax.device_put(x, s),
                        state, param_shardings(state, mesh, rules))


def shard_model(model, mesh: Mesh, rules: ShardingRules | str | None = None):
    """The model with its parameters placed on `mesh` by `rules` (default tensor-parallel); remembers the rules
    so that `generate` uses them."""
    from flax import nnx

    rules = get_rules(rules)
    check_model(model.config, mesh, rules)
    graphdef, state = nnx.split(model)
    out = nnx.merge(graphdef, shard_params(state, mesh, rules))
    out.sharding_rules = rules
    return out


def hf_placer(mesh: Mesh, rules: ShardingRules):
    """A `place(key, read, shape, dtype)` hook for `jdllm.weights.hf.load_hf`: each device's shard is read from
    the memory-mapped safetensors (only that slice) and put straight on the device."""

    def place(key, read, shape, dtype):
        sharding = param_sharding(key, shape, mesh, rules)
        cache: dict = {}

        def shard(index):
            k = tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in index)
            if k not in cache:
                cache[k] = np.asarray(read(index)).astype(dtype)
            return cache[k]

        return jax.make_array_from_callback(tuple(shape), sharding, shard)

    return place


# ----------------------------------------------------------------------------------------------------------
# The decode-time plan (static)
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    """Mesh + rules of a sharded decode: hashable, a field of the static `DecodeSpec`."""

    mesh: Mesh
    rules: ShardingRules

    def spec(self, logical, shape=None, what="array") -> P:
        return self.rules.spec(logical, shape, self.mesh if shape is not None else None, what)

    def sharding(self, logical, shape=None, what="array") -> NamedSharding:
        return NamedSharding(self.mesh, self.rules.spec(logical, shape, self.mesh, what))

    def constrain(self, x, logical, what="array"):
        return jax.lax.with_sharding_constraint(x, self.sharding(logical, x.shape, what))

    def axes(self, logical: str) -> tuple[str, ...]:
        return tuple(a for a in self.rules.mesh_axes(logical) if a in self.mesh.shape)

    def size(self, logical: str) -> int:
        return math.prod(self.mesh.shape[a] for a in self.axes(logical))

    def constrain_cache(self, cache):
        """Cache pytree: KVCache nodes sharded as KV_CACHE_AXES; other leaves left to the compiler."""
        from jdllm.decode.caches.base import KVCache

        def one(node):
            if isinstance(node, KVCache):
                return KVCache(self.constrain(node.k, KV_CACHE_AXES, "KV cache k"),
                               self.constrain(node.v, KV_CACHE_AXES, "KV cache v"))
            return node

        return jax.tree.map(one, cache, is_leaf=lambda n: isinstance(n, KVCache))

    def propose(self, logits, temperature, keys, mask_id):
        from jdllm.decode.proposal import propose, propose_sharded

        batch, _, vocab = self.spec(LOGITS_AXES, logits.shape, "window logits")
        vocab = () if vocab is None else ((vocab,) if isinstance(vocab, str) else tuple(vocab))
        if math.prod(self.mesh.shape[a] for a in vocab) == 1:
            logits = self.constrain(logits, LOGITS_AXES, "window logits")
            return propose(logits, temperature, keys, mask_id)
        return propose_sharded(logits, temperature, keys, mask_id, self.mesh, batch, vocab)


_ACTIVE_PLAN: contextvars.ContextVar[ShardingPlan | None] = contextvars.ContextVar("jdllm_sharding_plan", default=None)


@contextlib.contextmanager
def activation_sharding(plan: ShardingPlan | None):
    """While tracing under this context, `constrain_activation` pins activations by `plan` (None: no-op)."""
    token = _ACTIVE_PLAN.set(plan)
    try:
        yield
    finally:
        _ACTIVE_PLAN.reset(token)


def constrain_activation(x, logical):
    """`with_sharding_constraint` by the active plan's rules; the identity when no plan is active (one device),
    so single-device programs are unchanged. Pins e.g. the residual stream to ('batch', 'seq', 'act_embed'),
    which makes FSDP gather weights rather than reshard activations."""
    plan = _ACTIVE_PLAN.get()
    return x if plan is None else plan.constrain(x, logical, "activation")


def active_batch_shards() -> int:
    """How many ways the active plan splits the batch dimension (1 without a plan): a strategy that gathers a
    sub-batch keeps it a multiple of this."""
    plan = _ACTIVE_PLAN.get()
    return 1 if plan is None else plan.size("batch")


def plan_for(params, mesh: Mesh | None, rules: ShardingRules | str | None, model_rules=None) -> ShardingPlan | None:
    """The plan of a decode: `mesh` if given, else the params' mesh; None (the single-device path) when neither
    spans more than one device."""
    mesh = mesh if mesh is not None else mesh_of(params)
    if mesh is None:
        if rules is not None:
            raise ValueError("rules= needs a mesh= (or a model whose parameters are sharded over a mesh)")
        return None
    if mesh.size == 1 and rules is None:
        return None
    return ShardingPlan(mesh, get_rules(rules if rules is not None else model_rules))


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


__all__ = [
    "MESH_AXES", "LOGICAL_AXES", "KV_CACHE_AXES", "CANVAS_AXES", "LOGITS_AXES", "RESIDUAL_AXES", "ShardingRules",
    "ShardingPlan", "TENSOR_PARALLEL", "DATA_PARALLEL", "FSDP", "PRESETS", "DEFAULT_RULES", "get_rules", "make_mesh",
    "mesh_of", "param_logical_axes", "param_sharding", "param_shardings", "check_model", "shard_params",
    "shard_model", "hf_placer", "plan_for", "activation_sharding", "constrain_activation", "initialize_distributed",
    "process_rows", "local_prompts", "global_batch_array", "to_host",
]
