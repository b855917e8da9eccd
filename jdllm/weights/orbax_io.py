"""Orbax save / restore of a jdllm model: `jdllm_config.json` (the ModelConfig) + `params/` (orbax)."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from jdllm.models.config import ModelConfig
from jdllm.models.transformer import Transformer
from jdllm.weights.checkpoint_dir import (ORBAX_CONFIG, ORBAX_PARAMS, atomic_checkpoint_dir, orbax_files,
                                        read_json_object)
from jdllm.weights.hf import abstract_model, first_non_finite
from jdllm.weights.lora import LoraAdapter, merge_placed, resolve_lora

CONFIG_FILE = ORBAX_CONFIG


def is_orbax_dir(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds (part of) an orbax checkpoint: `jdllm_config.json` or `params/`."""
    return bool(orbax_files(os.fspath(directory)))


def save_orbax(model: Transformer, directory: str | os.PathLike) -> None:
    """Save params (orbax) and config (`jdllm_config.json`); replaces a checkpoint of either format in
    `directory` atomically (`checkpoint_dir.atomic_checkpoint_dir`), carrying other files over."""
    params = nnx.state(model, nnx.Param)
    with atomic_checkpoint_dir(directory) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, ORBAX_PARAMS), params)
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(model.config.replace(attention_kernel="auto").to_json())  # a runtime choice, not stored


def read_orbax_config(directory: str) -> ModelConfig:
    """The ModelConfig of `directory/jdllm_config.json`; errors name the file and what is wrong."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        held = ", ".join(orbax_files(directory))
        raise ValueError(f"{directory}: orbax checkpoint without {CONFIG_FILE} (holds {held})")
    if not os.path.isdir(os.path.join(directory, ORBAX_PARAMS)):
        raise ValueError(f"{directory}: orbax checkpoint without its {ORBAX_PARAMS}/ directory")
    data = read_json_object(path)
    try:
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def _restore(directory: str, abstract):
    params_dir = os.path.join(directory, ORBAX_PARAMS)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(params_dir, abstract)
    except Exception as e:  # orbax / tensorstore raise many types; all mean a damaged or mismatched checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{params_dir}: orbax could not restore the parameters for the config in {CONFIG_FILE} "
                         f"(damaged or mismatched checkpoint): {type(e).__name__}: {first[:500]}") from e


def _merge_lora(state, lora: LoraAdapter, cfg: ModelConfig, directory: str):
    """The restored state with every adapted kernel replaced by its merge (same sharding)."""
    pure = nnx.to_pure_dict(state)
    shapes = {tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path): leaf.shape
              for path, leaf in jax.tree_util.tree_leaves_with_path(pure)}
    for path, pair in resolve_lora(lora, cfg, shapes, directory).values():
        node = pure
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = merge_placed(node[path[-1]], pair)
    nnx.replace_by_pure_dict(state, pure)
    return state


def load_orbax(directory: str | os.PathLike, dtype: str | None = None, shardings=None, mesh=None,
               rules=None, check_finite: bool = False, lora: LoraAdapter | None = None) -> Transformer:
    """Restore a model saved by `save_orbax`. `shardings` (a pytree of Shardings like the params), or `mesh`
    with `rules` (`jdllm.sharding`; default tensor-parallel), places each array on its shards as it is
    restored (no array is materialised whole on one device). `dtype` casts every parameter on restore.
    `lora` (a `jdllm.weights.lora.read_lora` adapter) is merged into the restored kernels shard by shard
    (`lora.merge_placed`, float32 on the host) before `check_finite`.
    Errors (config, damaged params, with `check_finite` a NaN/inf parameter) are ValueErrors naming the path."""
    directory = os.path.abspath(str(directory))
    cfg = read_orbax_config(directory)
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
    state = _restore(directory, abstract)
    if lora is not None:
        state = _merge_lora(state, lora, cfg, directory)
    if check_finite:
        for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(state)):
            problem = first_non_finite(leaf)
            if problem:
                name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
                raise ValueError(f"{directory}/{ORBAX_PARAMS}: parameter {name}: {problem} (check_finite=True)")
    return nnx.merge(graphdef, state)
