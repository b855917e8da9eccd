"""Scale out, the public names in one place: logical axes, ONE rules table, meshes, sharded placement and the
multi-host helpers.

The pieces live where they belong: the rules table, mesh checks and parameter placement beside the model
(`jdllm.models.partitioning`), the decode-time plan and multi-host batch helpers inside the decoder
(`jdllm.decode.sharding`); see their docstrings. This module only re-exports them, so that
`from jdllm.sharding import make_mesh` and friends keep working. Any `jax.sharding.Mesh` works, Auto or
Explicit axes, any subset of the axis names ('data', 'fsdp', 'tensor'), e.g.
`jax.make_mesh((2, 4), ("data", "tensor"))`.
"""

from jdllm.decode.sharding import (
    CANVAS_AXES, KV_CACHE_AXES, LOGITS_AXES, ShardingPlan, global_batch_array, initialize_distributed,
    local_prompts, plan_for, process_rows, to_host,
)
from jdllm.models.partitioning import (
    DATA_PARALLEL, DEFAULT_RULES, FSDP, LOGICAL_AXES, MESH_AXES, PRESETS, RESIDUAL_AXES, TENSOR_PARALLEL,
    ShardingRules, activation_sharding, auto_mesh, check_model, constrain_activation, get_rules, hf_placer,
    make_mesh, mesh_of, normalize_path, param_logical_axes, param_sharding, param_shardings, shard_model,
    shard_params, usable_mesh,
)

__all__ = [
    "MESH_AXES", "LOGICAL_AXES", "KV_CACHE_AXES", "CANVAS_AXES", "LOGITS_AXES", "RESIDUAL_AXES", "ShardingRules",
    "ShardingPlan", "TENSOR_PARALLEL", "DATA_PARALLEL", "FSDP", "PRESETS", "DEFAULT_RULES", "get_rules", "make_mesh",
    "auto_mesh", "usable_mesh", "mesh_of", "normalize_path", "param_logical_axes", "param_sharding",
    "param_shardings", "check_model", "shard_params", "shard_model", "hf_placer", "plan_for", "activation_sharding",
    "constrain_activation", "initialize_distributed", "process_rows", "local_prompts", "global_batch_array",
    "to_host",
]
