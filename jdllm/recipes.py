"""Named decoding recipes from `jdllm/configs/recipes.yaml`: every published row's hyper-parameters, pinned."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

_ALLOWED = {
    "block_length", "steps", "remasking", "temperature", "cache", "threshold", "factor", "factor_quirk",
    "refresh_every", "cfg_scale", "eos_early_stop", "policy", "schedule",
}
# Placeholders a recipe's `policy:` mapping may use as values, resolved per call by `recipe_kwargs`.
_POLICY_PLACEHOLDERS = ("gen_length", "block_length", "steps", "steps_per_block", "vocab_size", "mask_id")


def default_recipe_file() -> Path:
    """`jdllm/configs/recipes.yaml`, shipped inside the package (so wheels carry it)."""
    path = Path(__file__).resolve().parent / "configs" / "recipes.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the jdllm installation is incomplete")
    return path


def load_recipes(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    with open(path or default_recipe_file()) as f:
        data = yaml.safe_load(f)
    for name, recipe in data.items():
        unknown = set(recipe) - _ALLOWED - {"source"}
        if unknown:
            raise ValueError(f"recipe {name!r} has unknown fields {sorted(unknown)}")
        if "policy" in recipe:
            _check_policy(name, recipe["policy"])
        if "schedule" in recipe:
            _check_schedule(name, recipe["schedule"])
        if isinstance(recipe.get("cache"), dict):
            _check_cache(name, recipe["cache"])
    return data


def _check_cache(name, spec) -> None:
    from jdllm.decode.cache_registry import CACHE_NAMES

    if spec.get("name") not in CACHE_NAMES:
        raise ValueError(f"recipe {name!r}: a `cache` mapping must have `name` in {list(CACHE_NAMES)}, got {spec!r}")


def _check_schedule(name, spec) -> None:
    from jdllm.decode.schedules import SCHEDULES

    if not isinstance(spec, dict) or spec.get("name") not in SCHEDULES:
        raise ValueError(f"recipe {name!r}: `schedule` must be a mapping with `name` in {sorted(SCHEDULES)}, "
                         f"got {spec!r}")


def _check_policy(name, spec) -> None:
    from jdllm.decode.policies import POLICIES

    if not isinstance(spec, dict) or spec.get("name") not in POLICIES:
        raise ValueError(f"recipe {name!r}: `policy` must be a mapping with `name` in {sorted(POLICIES)}, got {spec!r}")


def build_policy(spec: dict, values: dict[str, Any]):
    """The policy object of a recipe's `policy:` mapping ({name: <registry name>, **kwargs}); string values
    naming a placeholder (gen_length, block_length, steps, steps_per_block, vocab_size, mask_id) take the
    call's value."""
    from jdllm.decode.policies import POLICIES

    kwargs = {}
    for key, val in spec.items():
        if key == "name":
            continue
        if isinstance(val, str) and val in _POLICY_PLACEHOLDERS:
            if values.get(val) is None:
                raise ValueError(f"policy {spec['name']!r} needs {val}: pass it to recipe_kwargs")
            val = values[val]
        kwargs[key] = val
    return POLICIES[spec["name"]](**kwargs)


def recipe_kwargs(name: str, gen_length: int, path: str | os.PathLike | None = None, model_config=None,
                  block_length: int | None = None) -> dict[str, Any]:
    """`jdllm.generate` keyword arguments of recipe `name` for a given gen_length.

    A recipe with a `policy:` mapping returns a built `policy` object (jdllm.generate's `policy=`);
    `model_config` (the model's ModelConfig) supplies the `vocab_size` / `mask_id` placeholders some need.
    `block_length` (a caller's) replaces the recipe's before its policy / schedule objects are built.
    """
    recipes = load_recipes(path)
    if name not in recipes:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(recipes))}")
    kw = {k: v for k, v in recipes[name].items() if k != "source"}
    if kw.get("steps") == "gen_length":
        kw["steps"] = gen_length
    kw["block_length"] = block_length if block_length is not None else min(kw.get("block_length", gen_length),
                                                                           gen_length)
    if "policy" in kw:
        steps = kw.get("steps", gen_length)
        n_blocks = max(gen_length // kw["block_length"], 1)
        values = dict(gen_length=gen_length, block_length=kw["block_length"], steps=steps,
                      steps_per_block=steps // n_blocks,
                      vocab_size=getattr(model_config, "vocab_size", None), mask_id=getattr(model_config, "mask_id", None))
        kw["policy"] = build_policy(kw["policy"], values)
    if isinstance(kw.get("cache"), dict):  # {name: <registry name>, **the strategy's fields}
        from jdllm.decode.cache_registry import cache_class

        spec = dict(kw["cache"])
        kw["cache"] = cache_class(spec.pop("name"))(**spec)
    if "schedule" in kw:
        from jdllm.decode.schedules import SCHEDULES

        spec = dict(kw.pop("schedule"))
        kw["schedule"] = SCHEDULES[spec.pop("name")](gen_length, kw["block_length"], **spec)
    return kw


# Keywords of one axis: an explicit keyword of `generate` replaces the recipe's whole choice for its axis.
AXIS_KEYWORDS = (
    {"policy", "threshold", "factor", "factor_quirk", "remasking", "alg", "alg_temp", "eps"},
    {"cache", "refresh_every", "cfg_scale"},
    {"schedule", "block_length", "eos_early_stop"},
)


def merge_recipe(recipe: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` (keywords a caller passed explicitly) over a recipe's keywords: a given keyword of one axis drops
    the recipe's keywords of that axis (e.g. `threshold=` replaces a recipe's `policy`), so nothing conflicts."""
    out = dict(recipe)
    sched = out.get("schedule")
    tweaks = {k: given[k] for k in ("block_length", "eos_early_stop") if k in given}
    if sched is not None and "schedule" not in given and tweaks:
        # a recipe's schedule object (e.g. d2f's pipeline) keeps its kind; block_length / eos_early_stop retune it
        given = {k: v for k, v in given.items() if k not in tweaks}
        out["schedule"] = dataclasses.replace(sched, **tweaks)
        out["block_length"] = out["schedule"].block_length
    for axis in AXIS_KEYWORDS:
        if axis & given.keys():
            for key in axis:
                out.pop(key, None)
    out.update(given)
    return out
