"""The canvas a decode works on, and the window helpers every cache strategy shares."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Int

from jdllm.models.masks import block_ids


@struct.dataclass
class Canvas:
    """Tokens [B, T] = left-padded prompt region (width `prompt_len`) + generation region, with the validity
    mask (False on left padding) and the rotary positions that ignore padding."""

    tokens: Int[Array, "B T"]
    valid: Bool[Array, "B T"]
    positions: Int[Array, "B T"]
    prompt_len: int = struct.field(pytree_node=False)
    block_size: int | None = struct.field(pytree_node=False, default=None)  # block-causal models: the mask's blocks

    def replace_tokens(self, tokens) -> "Canvas":
        return self.replace(tokens=tokens)

    def block_ids(self, index: Int[Array, "B Q"]) -> Int[Array, "B Q"] | None:
        """Attention block of canvas rows `index` for a block-causal model (None: bidirectional): the prompt
        region is block 0, generation block i (of `block_size` rows from the prompt end) is i + 1 (D2F §3.1)."""
        if self.block_size is None:
            return None
        return block_ids(index, self.prompt_len, self.block_size)

    def mask_blocks(self, q_index: Int[Array, "B Q"]) -> dict:
        """Keyword arguments `Transformer.layers` takes for queries at canvas rows `q_index` against every row."""
        if self.block_size is None:
            return {}
        all_rows = jnp.broadcast_to(jnp.arange(self.tokens.shape[1])[None, :], self.tokens.shape)
        return dict(q_block=self.block_ids(q_index), k_block=self.block_ids(all_rows))


def slice_rows(arr: jax.Array, start: Int[Array, "B"], width: int) -> jax.Array:
    """arr[b, start[b] : start[b] + width] for each row (static width; `start` traced)."""
    def one(row, s):
        return jax.lax.dynamic_slice_in_dim(row, s, width, axis=0)
    return jax.vmap(one)(arr, start)


def update_rows(arr: jax.Array, update: jax.Array, start: Int[Array, "B"]) -> jax.Array:
    """arr[b, start[b] : start[b] + width] = update[b] for each row."""
    def one(row, upd, s):
        return jax.lax.dynamic_update_slice_in_dim(row, upd, s, axis=0)
    return jax.vmap(one)(arr, update, start)


def row_range(length: int, lo: Int[Array, "B"], hi: Int[Array, "B"]) -> Bool[Array, "B T"]:
    """Per-row boolean mask of the positions lo[b] <= t < hi[b]."""
    t = jnp.arange(length)[None, :]
    return (t >= lo[:, None]) & (t < hi[:, None])
