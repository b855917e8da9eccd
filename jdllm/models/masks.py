"""Attention mask specs: D2F's block-causal attention (arXiv 2508.09192 §3.1).

D2F (zhijie-group/Discrete-Diffusion-Forcing, `create_full_block_attention_mask`) treats the prompt as block 0,
bidirectional inside and seeing only itself, and cuts the generation region into blocks of `block_size` counted
from the prompt end; a query in block i sees the keys of blocks <= i. Because a block's keys / values then depend
only on itself and earlier blocks, those of finished blocks are exact and can be cached as in an AR model.

On jdllm's canvas the prompt region has a static width `prompt_len` (prompts left-padded into it; the padding is
excluded separately by the key-padding mask), so the block of an absolute canvas row is a function of the row
alone: `block_ids`. The model takes the per-query and per-key block ids (`Transformer.layers(q_block=, k_block=)`)
and combines `block_causal_allowed` with key padding.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
from jaxtyping import Array, Bool, Int


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def block_ids(index: Int[Array, "... L"], prompt_len: int, block_size: int) -> Int[Array, "... L"]:
    """D2F block of each absolute canvas row: 0 for rows < `prompt_len` (the prompt), else
    `(index - prompt_len) // block_size + 1` (generation blocks counted from the prompt end; the last may be
    partial). int32, the shape of `index`."""
    _check_int("prompt_len", prompt_len, 0)
    _check_int("block_size", block_size, 1)
    index = jnp.asarray(index, jnp.int32)
    return jnp.where(index < prompt_len, 0, (index - prompt_len) // block_size + 1).astype(jnp.int32)


def block_causal_allowed(q_block: Int[Array, "B Q"], k_block: Int[Array, "B T"]) -> Bool[Array, "B Q T"]:
    """Whether query q may attend to key t: `k_block[b, t] <= q_block[b, q]` (D2F's block-causal rule; the
    prompt block 0 is seen by every query and sees only itself)."""
    if q_block.ndim != 2 or k_block.ndim != 2 or q_block.shape[0] != k_block.shape[0]:
        raise ValueError(f"q_block [B, Q] and k_block [B, T] must be 2-D with one batch size, got shapes "
                         f"{tuple(q_block.shape)} and {tuple(k_block.shape)}")
    return k_block[:, None, :] <= q_block[:, :, None]
