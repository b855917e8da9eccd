"""Logical-axis partitioning of the model: axis names, ONE rules table, mesh checks and parameter placement.

Every array jdllm shards carries *logical* axis names (maxtext's scheme, `MaxText/configs/base.yml`
`logical_axis_rules`): parameters by their path (`param_logical_axes`), the residual stream inside the model as
('batch', 'seq', 'act_embed') (`constrain_activation`, active only while a sharded decode traces the model:
without it FSDP would reshard activations instead of gathering weights); the decode-time arrays (canvas, KV
cache, window logits) name theirs in `jdllm.decode.sharding`. A `ShardingRules` table maps each logical name to
a tuple of mesh axes; swapping the table swaps the whole parallelism scheme:

- `TENSOR_PARALLEL` (the inference default): Megatron-style heads / kv_heads / mlp / vocab over `tensor`,
  batch over `data`, everything else replicated.
- `DATA_PARALLEL`: weights replicated, batch over every mesh axis.
- `FSDP`: embed over `fsdp` (weights gathered when used; for models that do not fit), batch over `data` and
  `fsdp`, heads / mlp / vocab still over `tensor`.

Any `jax.sharding.Mesh` works: a mesh axis the rules name but the mesh lacks counts as size 1 (skipped), a mesh
axis the rules never name stays unused (arrays are replicated over it). Explicit axes (the default of
`jax.make_mesh` in current JAX) are used through the mesh's Auto twin (`usable_mesh`: same devices, names and
sizes, Auto axis types): jdllm's programs are written for GSPMD propagation pinned by `with_sharding_constraint`
(maxtext's way), while Explicit axes would demand an `out_sharding` on every contraction whose operands are
sharded on the contracted dimension (FSDP's embed). Placing an array on the twin of the mesh it lives on moves
no data. A dimension whose size is not divisible by the product of its mesh axes raises a ValueError naming the
tensor and the axis (no silent replication). A mesh axis already used by an earlier dimension of the same array
is skipped (flax's logical-to-mesh rule), so batch -> ('data', 'fsdp') stays valid next to embed -> ('fsdp',).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical names used by jdllm arrays.
LOGICAL_AXES = (
    "batch", "seq", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "norm", "layers", "cache_seq",
    "act_embed",
)
RESIDUAL_AXES = ("batch", "seq", "act_embed")  # the transformer's residual stream [B, Q, D]

HOW_TO_MESH = ("make one with jdllm.sharding.make_mesh(data=2, tensor=4) or "
               "jax.make_mesh((2, 4), ('data', 'tensor')) (Auto or Explicit axis types)")


# ----------------------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------------------


def _as_axes(v: Sequence[str] | str | None) -> tuple[str, ...]:
    return () if v is None else ((v,) if isinstance(v, str) else tuple(v))


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
        full.update({k: _as_axes(v) for k, v in mapping.items()})
        return cls(name, tuple(full.items()))

    def replace(self, name: str | None = None, **mapping) -> "ShardingRules":
        """A copy with some logical names re-mapped."""
        full = dict(self.table)
        full.update({k: _as_axes(v) for k, v in mapping.items()})
        return ShardingRules(name or self.name + "+custom", tuple(full.items()))

    def mesh_axes(self, logical: str | None) -> tuple[str, ...]:
        if logical is None:
            return ()
        for name, axes in self.table:
            if name == logical:
                return axes
        raise ValueError(f"rules {self.name!r} have no entry for logical axis {logical!r}")

    def used_mesh_axes(self) -> frozenset[str]:
        """Every mesh axis name some logical axis maps to."""
        return frozenset(a for _, axes in self.table for a in axes)

    def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None,
             what: str = "array") -> P:
        """PartitionSpec of an array with logical axes `logical`. With `mesh`, mesh axes absent from it are
        skipped (size 1); with `shape` and `mesh`, divisibility is checked."""
        if shape is not None and len(shape) != len(logical):
            raise ValueError(f"{what}: shape {tuple(shape)} has {len(shape)} dims but logical axes {tuple(logical)}")
        used: set[str] = set()
        parts = []
        for i, name in enumerate(logical):
            axes = [a for a in self.mesh_axes(name) if a not in used and (mesh is None or a in mesh.shape)]
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
    """A ('data', 'fsdp', 'tensor') mesh with Auto axes over `devices` (default: every device of every process).

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


def auto_mesh(mesh: Mesh) -> Mesh:
    """`mesh` with every axis Auto (the same mesh when it already is): same devices, names and sizes."""
    if mesh.are_all_axes_auto:
        return mesh
    return mesh.update(axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def usable_mesh(mesh: Any, rules: ShardingRules) -> Mesh:
    """The Auto twin of a user's mesh (see the module docstring), or a TypeError / ValueError that says how to
    make one, before any work: `mesh` must be a concrete `jax.sharding.Mesh` without Manual axes, and when it
    spans several devices, `rules` must shard something over it."""
    if not isinstance(mesh, Mesh):
        extra = " (an AbstractMesh has no devices)" if isinstance(mesh, AbstractMesh) else ""
        raise TypeError(f"mesh must be a jax.sharding.Mesh{extra}, got {type(mesh).__name__}; {HOW_TO_MESH}")
    manual = [n for n, t in zip(mesh.axis_names, mesh.axis_types) if t == AxisType.Manual]
    if manual:
        raise ValueError(f"mesh axes {tuple(manual)} are Manual (inside a shard_map); jdllm needs Auto or Explicit "
                         f"axes: {HOW_TO_MESH}")
    used = rules.used_mesh_axes()
    if mesh.size > 1 and not any(mesh.shape[a] > 1 for a in used if a in mesh.shape):
        raise ValueError(
            f"mesh {dict(mesh.shape)} has no axis of size > 1 that rules {rules.name!r} use "
            f"(they map logical axes to {tuple(sorted(used))}): every array would be replicated on all "
            f"{mesh.size} devices; name the mesh axes after the rules, e.g. {HOW_TO_MESH}"
        )
    return auto_mesh(mesh)


def mesh_of(tree) -> Mesh | None:
    """The mesh of the first NamedSharding leaf of `tree` with more than one device, else None."""
    for leaf in jax.tree.leaves(tree):
        sh = getattr(leaf, "sharding", None)
        if isinstance(sh, NamedSharding) and sh.mesh.size > 1:
            return sh.mesh
    return None


def context_mesh() -> Mesh | None:
    """The concrete mesh set by `jax.set_mesh(...)` around the call, when it spans more than one device."""
    mesh = jax.sharding.get_mesh()
    return mesh if isinstance(mesh, Mesh) and not mesh.empty and mesh.size > 1 else None


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
    """The NamedSharding of one parameter (on the Auto twin of `mesh`)."""
    name = ".".join(map(str, normalize_path(path)))
    spec = rules.spec(param_logical_axes(path), tuple(shape), mesh, what=f"parameter {name}")
    return NamedSharding(auto_mesh(mesh), spec)


def param_shardings(state, mesh: Mesh, rules: ShardingRules):
    """A pytree of NamedShardings like `state` (concrete or abstract params)."""
    mesh = auto_mesh(mesh)
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
    """The model with its parameters placed on `mesh` (any `jax.sharding.Mesh`; Explicit axes through its Auto
    twin) by `rules` (default tensor-parallel); remembers the rules so that `generate` uses them."""
    from flax import nnx

    rules = get_rules(rules)
    mesh = usable_mesh(mesh, rules)
    check_model(model.config, mesh, rules)
    graphdef, state = nnx.split(model)
    out = nnx.merge(graphdef, shard_params(state, mesh, rules))
    out.sharding_rules = rules
    return out


def hf_placer(mesh: Mesh, rules: ShardingRules):
    """A `place(key, read, shape, dtype)` hook for `jdllm.weights.hf.load_hf`: each device's shard is read from
    the memory-mapped safetensors (only that slice) and put straight on the device."""
    mesh = auto_mesh(mesh)

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
# Activations (the model's hook; a sharded decode activates it while tracing)
# ----------------------------------------------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[tuple[Mesh, ShardingRules] | None] = contextvars.ContextVar(
    "jdllm_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: ShardingRules | None = None):
    """While tracing under this context, `constrain_activation` pins activations by `rules` on `mesh` (None:
    no-op)."""
    token = _ACTIVE.set(None if mesh is None else (auto_mesh(mesh), get_rules(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain_activation(x, logical):
    """`with_sharding_constraint` by the active rules; the identity when none are active (one device), so
    single-device programs are unchanged. Pins e.g. the residual stream to ('batch', 'seq', 'act_embed'),
    which makes FSDP gather weights rather than reshard activations."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, rules.spec(logical, x.shape, mesh, "activation")))


def active_batch_shards() -> int:
    """How many ways the active rules split the batch dimension (1 when none are active): a cache strategy that
    gathers a sub-batch of rows keeps it a multiple of this."""
    active = _ACTIVE.get()
    if active is None:
        return 1
    mesh, rules = active
    return math.prod(mesh.shape[a] for a in rules.mesh_axes("batch") if a in mesh.shape)
