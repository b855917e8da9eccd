"""Semi-autoregressive blocks (LLaDA arXiv 2502.09992 §2.4 / Fast-dLLM): the generation region is cut into
gen_length / block_length blocks decoded left to right; a row's block ends when it holds no mask, and only
positions of the active block may be committed. One block of width gen_length is the "single global window".

State is per row (`block[B]`, `step_in_block[B]`), so rows of a batch move through blocks independently. The
window is one slot: the row's current block, always fully activated."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdllm.decode.schedules.base import FULL, BlockSchedule, Window, eos_in


@dataclasses.dataclass(frozen=True)
class SemiAutoregressive(BlockSchedule):
    """`eos_early_stop`: a finished block holding EOS ends the row; later blocks are filled with EOS."""

    def init(self, batch):
        zeros = jnp.zeros((batch,), jnp.int32)
        return dict(block=zeros, step_in_block=zeros)

    def window_offset(self, block):
        return jnp.minimum(block, self.n_blocks - 1) * self.block_length

    def window(self, state):
        block, step = state["block"], state["step_in_block"]
        return Window(start=self.window_offset(block), block_id=block[:, None],
                      stage=jnp.full(block.shape + (1,), FULL, jnp.int32), step_in_block=step[:, None],
                      moved=step == 0, steps_since_move=step)

    def advance(self, state, view, before, after, active, mask_id, eos_ids):
        """The row's block ends when it holds no mask; the row is done after its last block.

        With `eos_early_stop` (dInfer / LocalLeap style early stop, not in the LLaDA or Fast-dLLM references), a
        row whose finished block contains EOS (any of `eos_ids`, as HF generation stops on any of a list-valued
        eos_token_id) is done: an instruct model fills everything after EOS with EOS.
        """
        finished = active & ~jnp.any(after == mask_id, axis=-1)
        stop = jnp.zeros_like(finished)
        if self.eos_early_stop and eos_ids:
            stop = finished & eos_in(after, eos_ids)
        block = state["block"] + finished.astype(jnp.int32)
        step = jnp.where(finished, 0, state["step_in_block"] + active.astype(jnp.int32))
        return dict(block=block, step_in_block=step), (block >= self.n_blocks) | stop, stop

    def max_iters(self, steps, batch):
        """Every live row commits >= 1 token per step (or follows the top-k schedule); rows never idle, the
        per-block slack only guards the bound."""
        return max(steps, self.gen_length) + self.n_blocks * (batch + 1) + 1
