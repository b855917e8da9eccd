"""Orbax save / restore of a jdllm model: `jdllm_config.json` (the ModelConfig) + `params/` (orbax)."""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from jdllm.models.config import ModelConfig
from jdllm.models.transformer import Transformer
from jdllm.weights.hf import abstract_model

CONFIG_FILE = "jdllm_config.json"


def is_orbax_dir(directory: str | os.PathLike) -> bool:
    return os.path.exists(os.path.join(str(directory), CONFIG_FILE))


def save_orbax(model: Transformer, directory: str | os.PathLike) -> None:
    """Save params and config; overwrites an existing checkpoint in `directory`."""
    directory = os.path.abspath(str(directory))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        f.write(model.config.to_json())
    params = nnx.state(model, nnx.Param)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, "params"), params, force=True)


def load_orbax(directory: str | os.PathLike, dtype: str | None = None, shardings=None, mesh=None,
               rules=None) -> Transformer:
    """Restore a model saved by `save_orbax`. `shardings` (a pytree of Shardings like the params), or `mesh`
    with `rules` (`jdllm.sharding`; default tensor-parallel), places each array on its shards as it is
    restored (no array is materialised whole on one device)."""
    directory = os.path.abspath(str(directory))
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        cfg = ModelConfig.from_dict(json.load(f))
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    graphdef, abstract = abstract_model(cfg)
    if mesh is not None:
        if shardings is not None:
            raise ValueError("give shardings= or mesh= (with rules=), not both")
        from jdllm import sharding as sharding_lib

        rules = sharding_lib.get_rules(rules)
        sharding_lib.check_model(cfg, mesh, rules)
        shardings = sharding_lib.param_shardings(abstract, mesh, rules)
    if shardings is not None:
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(os.path.join(directory, "params"), abstract)
    return nnx.merge(graphdef, state)
