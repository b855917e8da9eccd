"""Cache strategies (the cache axis) and their registry."""

from jdllm.decode.caches.base import CacheStrategy, KVCache
from jdllm.decode.caches.block_kv import DualCache, PrefixCache
from jdllm.decode.caches.exact import ExactBlockCache
from jdllm.decode.caches.none import NoCache

CACHES: dict[str, type[CacheStrategy]] = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache, "exact": ExactBlockCache}

__all__ = ["CacheStrategy", "KVCache", "NoCache", "PrefixCache", "DualCache", "ExactBlockCache", "CACHES"]
