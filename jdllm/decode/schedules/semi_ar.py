"""Semi-autoregressive blocks (LLaDA arXiv 2502.09992 §2.4 / Fast-dLLM): the generation region is cut into
gen_length / block_length blocks decoded left to right; a row's block ends when it holds no mask, and only
positions of the active block may be committed. One block of width gen_length is the "single global window".

Progress is per row (`block[B]`), so rows of a batch move through blocks independently."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jaxtyping import Array, Bool, Int


@dataclasses.dataclass(frozen=True)
class BlockSchedule:
    """Interface: a static window `width`, a `n_blocks` count, and per-row window starts (offsets into the
    generation region)."""

    def window_offset(self, block: Int[Array, "B"]) -> Int[Array, "B"]:
        raise NotImplementedError  # abstract


@dataclasses.dataclass(frozen=True)
class SemiAutoregressive(BlockSchedule):
    gen_length: int
    block_length: int
    eos_early_stop: bool = False  # a finished block holding EOS ends the row; later blocks are filled with EOS

    def __post_init__(self):
        if self.block_length < 1 or self.gen_length < 1:
            raise ValueError(f"gen_length and block_length must be >= 1, got {self.gen_length}, {self.block_length}")
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length={self.gen_length} is not divisible by block_length={self.block_length}")

    @property
    def width(self) -> int:
        return self.block_length

    @property
    def n_blocks(self) -> int:
        return self.gen_length // self.block_length

    def window_offset(self, block):
        return jnp.minimum(block, self.n_blocks - 1) * self.block_length

    def advance(self, block: Int[Array, "B"], block_finished: Bool[Array, "B"], window: Int[Array, "B W"],
                eos_ids: tuple[int, ...]):
        """Next block index, whether the row is done, and whether its remaining blocks are to be filled with EOS.

        With `eos_early_stop` (dInfer / LocalLeap style early stop, not in the LLaDA or Fast-dLLM references), a
        row whose finished block contains EOS (any of `eos_ids`, as HF generation stops on any of a list-valued
        eos_token_id) is done: an instruct model fills everything after EOS with EOS.
        """
        stop = jnp.zeros_like(block_finished)
        if self.eos_early_stop and eos_ids:
            stop = block_finished & jnp.any(jnp.isin(window, jnp.asarray(eos_ids, window.dtype)), axis=-1)
        block = block + block_finished.astype(block.dtype)
        return block, (block >= self.n_blocks) | stop, stop
