"""The names of the cache axis, in one place and without importing JAX (the CLI's `--cache` choices, the
validation of `cache=`, the registry `jdllm.decode.caches.CACHES`): name -> "module:Class"."""

from __future__ import annotations

import importlib

CACHE_STRATEGIES = {
    "none": "jdllm.decode.caches.none:NoCache",
    "prefix": "jdllm.decode.caches.block_kv:PrefixCache",
    "dual": "jdllm.decode.caches.block_kv:DualCache",
    "exact": "jdllm.decode.caches.exact:ExactBlockCache",
    "dllm": "jdllm.decode.caches.dllm:DLLMCache",
    "dkv": "jdllm.decode.caches.dkv:DKVCache",
}
CACHE_NAMES = tuple(CACHE_STRATEGIES)


def cache_class(name: str):
    """The strategy class registered under `name` (imports it)."""
    if name not in CACHE_STRATEGIES:
        raise ValueError(f"unknown cache strategy {name!r}; known: {', '.join(CACHE_NAMES)}")
    module, _, attr = CACHE_STRATEGIES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
