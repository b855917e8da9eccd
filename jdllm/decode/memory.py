"""A memory plan for one `generate` call: its peak bytes estimated from shapes, before anything is compiled.

The decode program's peak is the widest forward, a full forward over the canvas (every step without a cache,
block starts / refreshes with one), whose attention holds the float32 scores [B, heads, T, T] and, while the
softmax runs, two more buffers of that size (XLA materialises scores, exp and probabilities; `attention` in
`models/transformer.py`). Added to that: one layer's activations [B, T, D + q/k/v], the window logits
[B, W, V] and the proposal's log-probs / probs, the loop carry (canvas, the cache strategy's state twice: carry
and the refreshed copy, the policy state twice, e.g. KLASS's [B, W, V]). Parameters are not counted: they are
resident already, and the limit is the memory still free.

Every term is linear in the batch, so the plan is `per_row * B`; a batch that does not fit runs as equal
micro-batches of the largest size that fits (one compiled program), and a single row that does not fit raises
`MemoryPlanError` naming the estimate and the limit before anything is allocated.

Checked against XLA's own accounting of the compiled CPU program (output + temp bytes of
`decode.lower(...).compile().memory_analysis()`; shipped model arith-llada-tiny, threshold 0.9, block 32),
by `PYTHONPATH=. python scripts/memory_probe.py --big` (jax 0.10.2, CPU):

    batch  prompt  gen_length  cache    measured (MB)  estimate (MB)
    8      32      256         none          34.6           42.6
    32     32      256         none         138.3          170.6
    8      32      1024        none         438.2          464.3
    8      32      256         dual          50.8           61.5
    256    25      1024        none       13838.7        14668.6

The estimate errs high by 6-25% (the safe side); the last row is the issue's 256 x 1049 positions, whose run
peaked at 14.3 GB resident (issue 16).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

ENV_MAX_MEMORY = "JDLLM_MAX_MEMORY"
HEADROOM = 0.9  # of the detected free memory (not of an explicit max_memory)
SCORE_BUFFERS = 3  # scores, exp(scores - max), probabilities: [B, heads, T, T] float32 each


class MemoryPlanError(MemoryError, ValueError):
    """Even one row of the call does not fit the memory limit."""


def _tree_bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def estimate_bytes(cfg, spec, batch: int, length: int) -> int:
    """Peak bytes of the decode program (parameters excluded) for `batch` rows of a canvas of `length` positions;
    `spec` is the call's DecodeSpec (policy, cache strategy, schedule)."""
    rows = batch * (2 if getattr(spec.cache, "cfg_scale", 0.0) > 0 else 1)  # CFG runs an unconditional copy
    width = spec.schedule.width + cfg.shift
    scores = rows * cfg.n_heads * length * length * 4
    qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    layer = rows * length * (cfg.d_model + qkv + cfg.mlp_hidden_size) * 4
    logits = 4 * rows * width * cfg.vocab_size * 4  # logits, log-probs, probs, noisy / masked copy
    cache = _tree_bytes(jax.eval_shape(lambda: spec.cache.init(cfg, batch, length)))
    policy = _tree_bytes(jax.eval_shape(lambda: spec.policy.init_state(batch * spec.schedule.slots, spec.schedule.block_length, cfg)))
    canvas = batch * length * (4 + 1 + 4) * 2  # tokens, valid, positions (+ the new tokens)
    return SCORE_BUFFERS * scores + layer + logits + 2 * cache + 2 * policy + canvas


def parse_bytes(text: str) -> int:
    """'8000000', '512M', '16G' (powers of 1024) -> bytes."""
    text = text.strip()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(text[-1:].upper(), 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"{ENV_MAX_MEMORY}={text!r} is not a byte count (e.g. 8000000000, 512M, 16G)") from None
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"{ENV_MAX_MEMORY}={text!r} must be a positive byte count")
    return int(value)


def free_memory(device=None) -> tuple[int, str]:
    """(bytes free for a new program, where the number comes from) on `device` (default: the first device):
    the allocator's `bytes_limit - bytes_in_use` where the backend reports it (GPU / TPU), else the host's
    available physical memory (CPU)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # backends without allocator stats raise or return None
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"{device.platform} memory free"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "host memory available"
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "host memory available"


def memory_limit(max_memory: int | None) -> tuple[int, str]:
    """(limit in bytes, its source): `max_memory`, else $JDLLM_MAX_MEMORY, else 90% of the free memory."""
    if max_memory is not None:
        return max_memory, "max_memory"
    if os.environ.get(ENV_MAX_MEMORY):
        return parse_bytes(os.environ[ENV_MAX_MEMORY]), ENV_MAX_MEMORY
    free, source = free_memory()
    return int(free * HEADROOM), f"{int(HEADROOM * 100)}% of {source}"


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    micro_batch: int      # rows per compiled call (== batch when everything fits)
    estimate: int         # estimated peak bytes of one call of micro_batch rows
    limit: int
    source: str


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def plan_batch(cfg, spec, batch: int, length: int, max_memory: int | None = None) -> MemoryPlan:
    """The largest micro-batch (<= batch) whose estimate fits the limit; MemoryPlanError if one row does not."""
    limit, source = memory_limit(max_memory)
    full = estimate_bytes(cfg, spec, batch, length)
    if full <= limit:
        return MemoryPlan(batch, full, limit, source)
    per_row = estimate_bytes(cfg, spec, 1, length)
    if per_row > limit:
        raise MemoryPlanError(
            f"generate needs an estimated {_gb(full)} for {batch} rows x {length} positions and "
            f"{_gb(per_row)} for a single row, more than the limit of {_gb(limit)} ({source}): shorten "
            f"gen_length / the prompts, or use a cache strategy / a mesh with more memory"
        )
    micro = max(1, min(batch, limit // per_row))
    while micro > 1 and estimate_bytes(cfg, spec, micro, length) > limit:
        micro -= 1
    return MemoryPlan(micro, estimate_bytes(cfg, spec, micro, length), limit, source)
