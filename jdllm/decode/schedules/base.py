"""The block-schedule axis: which part of the generation region a step works on, and when a row is done.

A schedule is a frozen dataclass (static under `jax.jit`) that owns its per-row state pytree (threaded by the loop
inside `DecodeState.schedule`) and its rules:

- `init(batch) -> state`;
- `window(state) -> Window`: the start of each row's static window of `width = slots x block_length` positions
  (an offset into the generation region) and, per slot (one block each), its block id, its stage (absent /
  semi-activated / fully activated), the steps its block has taken, and whether the window moved;
- `restrict(commit, confidence, stage)`: what a slot of each stage may commit of the policy's choice;
- `advance(state, view, before, after, active, mask_id, eos_ids) -> (state, done[B], eos_stop[B])` after the
  step's commits (`before` / `after`: the window tokens before and after them);
- `max_iters(steps, batch)` (a bound no correct decode reaches) and `check_steps(steps)` (the argument check of
  `steps=` for this schedule).

The commit policy runs once per slot: it sees each block of the window as one row of width `block_length`
(rows = batch x slots), with that block's step count, block start and PRNG key, so a policy's per-row state is
per-block state and resets when its block starts (`StepContext.block_start`). With one slot (semi-AR) a slot
is a row and nothing changes.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

ABSENT, SEMI, FULL = 0, 1, 2  # slot stages: no block / semi-activated (D2F) / fully activated


@struct.dataclass
class Window:
    """One step's view of a schedule's state (all per row, or per row and slot)."""

    start: Int[Array, "B"]              # window start, as an offset into the generation region
    block_id: Int[Array, "B K"]         # generation block (0-based) each slot holds
    stage: Int[Array, "B K"]            # ABSENT / SEMI / FULL
    step_in_block: Int[Array, "B K"]    # steps that slot's block has already taken
    moved: Bool[Array, "B"]             # the window holds new content since the row's last step
    steps_since_move: Int[Array, "B"]   # steps since the window last moved (block-KV `refresh_every`)


@dataclasses.dataclass(frozen=True)
class BlockSchedule:
    """Base class of the schedule axis; see the module docstring."""

    gen_length: int
    block_length: int
    eos_early_stop: bool = False  # a row that commits EOS ends once its blocks are complete; the rest is EOS

    def __post_init__(self):
        if self.block_length < 1 or self.gen_length < 1:
            raise ValueError(f"gen_length and block_length must be >= 1, got {self.gen_length}, {self.block_length}")
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length={self.gen_length} is not divisible by block_length={self.block_length}")

    @property
    def n_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def slots(self) -> int:
        """Blocks in one window (static)."""
        return 1

    @property
    def width(self) -> int:
        return self.slots * self.block_length

    def init(self, batch: int):
        raise NotImplementedError  # abstract

    def window(self, state) -> Window:
        raise NotImplementedError  # abstract

    def advance(self, state, view: Window, before: Int[Array, "B W"], after: Int[Array, "B W"],
                active: Bool[Array, "B"], mask_id: int, eos_ids: tuple[int, ...]):
        raise NotImplementedError  # abstract

    def restrict(self, commit: Bool[Array, "B W"], confidence: Float[Array, "B W"],
                 stage: Int[Array, "B K"]) -> Bool[Array, "B W"]:
        """Commits allowed per slot stage: none in an absent slot, the policy's choice otherwise."""
        return commit & self.per_position(stage != ABSENT)

    def per_position(self, per_slot: Array) -> Array:
        """[B, K] -> [B, W]: each slot's value repeated over its block's positions."""
        return jnp.repeat(per_slot, self.block_length, axis=1)

    def check_steps(self, steps: int) -> None:
        """Refuse a `steps=` this schedule cannot split (default: a multiple of the block count)."""
        if steps % self.n_blocks:
            raise ValueError(f"steps={steps} is not a positive multiple of the block count {self.n_blocks}")

    def max_iters(self, steps: int, batch: int) -> int:
        raise NotImplementedError  # abstract


def eos_in(tokens: Int[Array, "... W"], eos_ids: tuple[int, ...]) -> Bool[Array, "..."]:
    """Whether any of `eos_ids` occurs in the last axis."""
    return jnp.any(jnp.isin(tokens, jnp.asarray(eos_ids, tokens.dtype)), axis=-1)
