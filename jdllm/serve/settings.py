"""Per-request decode settings of the server: a recipe name and `jdllm.generate` keywords -> one static
`DecodeSpec` (the key of a compiled lane), checked by the same code as `generate` (`jdllm.validation`).

`max_tokens` sets the generation region: it is rounded up to a whole number of blocks (the canvas is blocks),
and the answer is cut back to `max_tokens` tokens. Without a recipe, a request decodes like `jdllm generate`:
the model directory's block length and one step per token (`steps = gen_length`, LLaDA's setting).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from jdllm.decode.caches import ExactBlockCache
from jdllm.decode.loop import DecodeSpec
from jdllm.validation import check_generate_args, check_int

# `jdllm.generate` keywords a request may give as extra body fields (beside recipe, temperature, seed).
GENERATE_KEYWORDS = ("block_length", "steps", "remasking", "cfg_scale", "threshold", "factor", "factor_quirk",
                     "alg", "alg_temp", "eps", "cache", "refresh_every", "eos_early_stop")


@dataclasses.dataclass(frozen=True)
class ServeDefaults:
    """Decode defaults of a served model (from its directory) and the server's limits."""

    gen_length: int = 64          # tokens when a request gives no max_tokens
    block_length: int = 32
    recipe: str | None = None     # recipe of requests that name none
    max_tokens: int = 1024        # the largest max_tokens a request may ask for


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """What a request decodes with: the static spec, the generation region and the loop's iteration bound."""

    spec: DecodeSpec
    gen_length: int     # canvas generation region (whole blocks)
    max_tokens: int     # tokens returned at most (<= gen_length)
    steps: int

    def iteration_bound(self, batch: int) -> int:
        return self.spec.schedule.max_iters(self.steps, batch)


def _block_length(recipe: str | None, given: dict[str, Any], default: int) -> int:
    if given.get("block_length") is not None:
        return check_int("block_length", given["block_length"], minimum=1)
    if recipe is not None:
        from jdllm.recipes import load_recipes

        known = load_recipes()
        if recipe not in known:
            raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(sorted(known))}")
        return int(known[recipe].get("block_length", default))
    return default


def resolve_settings(model_config, defaults: ServeDefaults, max_tokens: Any = None, recipe: Any = None,
                     temperature: Any = None, **keywords: Any) -> DecodeSettings:
    """The decode settings of one request; ValueError / TypeError naming the bad field otherwise."""
    unknown = sorted(set(keywords) - set(GENERATE_KEYWORDS))
    if unknown:
        raise ValueError(f"unknown decode field(s) {unknown}; allowed: recipe, temperature, seed, "
                         f"{', '.join(GENERATE_KEYWORDS)}")
    recipe = defaults.recipe if recipe is None else recipe
    if recipe is not None and not isinstance(recipe, str):
        raise TypeError(f"recipe must be a recipe name (str), got {recipe!r}")
    wanted = defaults.gen_length if max_tokens is None else check_int("max_tokens", max_tokens, minimum=1)
    if wanted > defaults.max_tokens:
        raise ValueError(f"max_tokens={wanted} exceeds this server's limit {defaults.max_tokens}")
    given = {k: v for k, v in keywords.items() if v is not None}
    if temperature is not None:
        given["temperature"] = temperature
    key = (recipe, wanted, tuple(sorted((k, _hashable(v)) for k, v in given.items())))
    return _resolve(model_config, defaults, key)


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


@functools.lru_cache(maxsize=256)
def _resolve(model_config, defaults: ServeDefaults, key) -> DecodeSettings:
    recipe, wanted, items = key
    given = dict(items)
    if isinstance(given.get("cache"), str) and given["cache"] == "none":
        given["cache"] = None
    if given.get("alg") is not None:  # Dream's sampler: one global window
        block = gen_length = wanted
    else:
        block = _block_length(recipe, given, defaults.block_length)
        gen_length = -(-wanted // block) * block
    if recipe is not None:
        from jdllm.recipes import merge_recipe, recipe_kwargs

        kwargs = merge_recipe(recipe_kwargs(recipe, gen_length, model_config=model_config), given)
    else:
        kwargs = {"block_length": min(block, gen_length), "steps": gen_length, **given}
    args = check_generate_args(gen_length=gen_length, **kwargs)
    if isinstance(args.cache, ExactBlockCache) and model_config.attention != "block_causal":
        raise ValueError(f"cache='exact' needs a block-causal model, this one is {model_config.attention}")
    spec = DecodeSpec(policy=args.policy, cache=args.cache, schedule=args.schedule, temperature=args.temperature)
    return DecodeSettings(spec=spec, gen_length=gen_length, max_tokens=wanted, steps=args.steps)
