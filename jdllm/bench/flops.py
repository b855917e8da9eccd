"""Analytic model FLOPs of a decode, and the machine's measured matmul peak (the bench's roofline columns).

A forward over Q query rows that attend to T key rows costs, per layer (multiply-add = 2 FLOPs):
  projections 2·Q·d·(H·dh + 2·Hkv·dh) + output 2·Q·H·dh·d + SwiGLU MLP 2·Q·3·d·m + attention 4·Q·T·H·dh,
and the LM head 2·W·d·V on the W window rows only (jdllm never runs the head on the whole canvas). What each
cache strategy computes per step (canvas length L, prompt width P, window W, shift s = 1 for Dream):
- no cache: Q = T = L (x2 with classifier-free guidance);
- a block-start (refresh) forward of the prefix / dual cache: Q = T = L;
- a cached prefix step: Q = L - P + s (the generation region as queries), T = L;
- a cached dual step: Q = W + s, T = L;
- the exact block-causal cache: one prefill (Q = T = P + W) per row, then Q = W + s, T = L every step (the
  block-causal mask hides later keys, but a dense kernel still computes them), plus B query rows on a step whose
  window moved (the block before it is re-run), counted once per block.
`account_flops` computes the same from the decode's own compute account instead (positions each layer ran, as
`generate` returns them); it covers every strategy, including the adaptive ones (dLLM-Cache, dKV-Cache).
A row's FLOPs = refresh forwards x full + the rest of its NFE x cached (refreshes = blocks it started, plus one
every `refresh_every` steps). These are the FLOPs a row needs (what it computes alone); `decode_flops` also
returns what the batched program ran, where an iteration in which some rows refresh runs the full forward for
every row of the batch.
"""

from __future__ import annotations

import time

import numpy as np

from jdllm.decode.cost import account_flops, layer_row_flops  # noqa: F401  (the compute-account FLOP model)


def forward_flops(cfg, queries: int, keys: int, head_rows: int) -> float:
    """Model FLOPs of one forward of one row: `queries` query rows attending to `keys` rows, LM head on
    `head_rows` rows."""
    d, h, hkv, dh, m = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_hidden_size
    per_layer = (2 * queries * d * (h * dh + 2 * hkv * dh) + 2 * queries * h * dh * d + 2 * queries * 3 * d * m
                 + 4 * queries * keys * h * dh)
    return float(cfg.n_layers * per_layer + 2 * head_rows * d * cfg.vocab_size)


def step_flops(cfg, cache, canvas_len: int, prompt_width: int, window: int) -> tuple[float, float]:
    """(FLOPs of a full / refresh forward, FLOPs of a cached step) for one row under cache strategy `cache`
    (a jdllm CacheStrategy)."""
    from jdllm.decode.caches import DualCache, ExactBlockCache, NoCache, PrefixCache

    full = forward_flops(cfg, canvas_len, canvas_len, window)
    if isinstance(cache, ExactBlockCache):
        prefill = prompt_width + window
        return forward_flops(cfg, prefill, prefill, window), forward_flops(cfg, window + cfg.shift, canvas_len, window)
    if isinstance(cache, NoCache):
        return full * (2 if cache.cfg_scale > 0 else 1), full * (2 if cache.cfg_scale > 0 else 1)
    if isinstance(cache, DualCache):
        return full, forward_flops(cfg, window + cfg.shift, canvas_len, window)
    if isinstance(cache, PrefixCache):
        return full, forward_flops(cfg, canvas_len - prompt_width + cfg.shift, canvas_len, window)
    raise ValueError(f"no FLOP model for cache strategy {type(cache).__name__}")


def row_flops(cfg, cache, nfe: int, n_blocks: int, canvas_len: int, prompt_width: int, window: int) -> float:
    """Model FLOPs one row needs: `n_blocks` refresh forwards (cached strategies) and the rest cached steps."""
    from jdllm.decode.caches import NoCache

    from jdllm.decode.caches import ExactBlockCache

    full, cached = step_flops(cfg, cache, canvas_len, prompt_width, window)
    if isinstance(cache, NoCache):
        return nfe * full
    if isinstance(cache, ExactBlockCache):
        block = (canvas_len - prompt_width) // max(n_blocks, 1)
        moves = max(min(n_blocks, nfe) - 1, 0)
        return full + (nfe - 1) * cached + moves * forward_flops(cfg, block, canvas_len, 0)
    refreshes = min(n_blocks, nfe)
    if getattr(cache, "refresh_every", None):
        refreshes = min(nfe, refreshes + max(nfe - refreshes, 0) // cache.refresh_every)
    return refreshes * full + (nfe - refreshes) * cached


def measure_matmul_peak(sizes: tuple[int, ...] = (1024, 2048), dtype=np.float32, repeats: int = 10) -> float:
    """FLOP/s of a jitted n x n x n matmul on the default device, the best over `sizes` and `repeats` (compile
    excluded): the practical peak the bench's achieved FLOP/s is compared with, measured in the same run. Best
    of many, so that a moment of contention on a shared machine does not make the peak look low (a fraction of
    peak above 1 would mean the peak was under-measured)."""
    import jax
    import jax.numpy as jnp

    best_rate = 0.0
    for n in sizes:
        a = jnp.ones((n, n), dtype)
        b = jnp.ones((n, n), dtype)
        f = jax.jit(lambda x, y: x @ y)
        f(a, b).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a, b).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        best_rate = max(best_rate, 2.0 * n**3 / best)
    return best_rate
