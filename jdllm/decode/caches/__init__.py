"""Cache strategies (the cache axis) and their registry (names from `jdllm.decode.cache_registry`)."""

from jdllm.decode.cache_registry import CACHE_NAMES, cache_class
from jdllm.decode.caches.base import CacheStrategy, KVCache
from jdllm.decode.caches.block_kv import DualCache, PrefixCache
from jdllm.decode.caches.dkv import DKVCache
from jdllm.decode.caches.dllm import DLLMCache
from jdllm.decode.caches.exact import ExactBlockCache
from jdllm.decode.caches.none import NoCache

CACHES: dict[str, type[CacheStrategy]] = {name: cache_class(name) for name in CACHE_NAMES}

__all__ = ["CacheStrategy", "KVCache", "NoCache", "PrefixCache", "DualCache", "ExactBlockCache", "DLLMCache",
           "DKVCache", "CACHES"]
