"""Independent plain-numpy references for jdllm's parity tests.

Nothing here imports jdllm: the forward pass is written from the LLaDA / Dream (Qwen2) architecture
descriptions and the samplers from the LLaDA / Fast-dLLM algorithm descriptions (see
/work/shared/research/decoding.md §1, §2, §6.1 and caching.md §4.2, §8.1-8.2). Everything runs in float64.
"""

from tests.reference.model import RefModel, rope_positions
from tests.reference.sampler import (
    Diagnostics,
    fastdllm_generate,
    generate,
    generate_with_dual_cache,
    generate_with_prefix_cache,
    get_num_transfer_tokens,
    llada_generate,
)

__all__ = [
    "RefModel",
    "rope_positions",
    "Diagnostics",
    "fastdllm_generate",
    "generate",
    "generate_with_dual_cache",
    "generate_with_prefix_cache",
    "get_num_transfer_tokens",
    "llada_generate",
]
