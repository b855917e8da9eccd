"""Named decoding recipes from `configs/recipes.yaml`: every published row's hyper-parameters, pinned."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

_ALLOWED = {
    "block_length", "steps", "remasking", "temperature", "cache", "threshold", "factor", "factor_quirk",
    "refresh_every", "cfg_scale", "eos_early_stop",
}


def default_recipe_file() -> Path:
    """`configs/recipes.yaml` of the source tree (the file is also installed beside the package)."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "configs" / "recipes.yaml", here / "configs" / "recipes.yaml"):
        if cand.exists():
            return cand
    raise FileNotFoundError("configs/recipes.yaml not found next to the jdllm package")


def load_recipes(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    with open(path or default_recipe_file()) as f:
        data = yaml.safe_load(f)
    for name, recipe in data.items():
        unknown = set(recipe) - _ALLOWED - {"source"}
        if unknown:
            raise ValueError(f"recipe {name!r} has unknown fields {sorted(unknown)}")
    return data


def recipe_kwargs(name: str, gen_length: int, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """`jdllm.generate` keyword arguments of recipe `name` for a given gen_length."""
    recipes = load_recipes(path)
    if name not in recipes:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(recipes))}")
    kw = {k: v for k, v in recipes[name].items() if k != "source"}
    if kw.get("steps") == "gen_length":
        kw["steps"] = gen_length
    kw["block_length"] = min(kw.get("block_length", gen_length), gen_length)
    return kw
