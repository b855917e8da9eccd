"""The commit-policy axis: which masked positions of the active window are committed this step.

A policy is a small frozen dataclass (hashable, so `jax.jit` takes it as a static argument) with
`init_state(batch, width, config)` (config: the model's ModelConfig) and `select(proposal, candidates, ctx, state) -> (commit, state)`. `candidates` are
the masked positions of each row's active window (all False for rows idle this step); `commit` must be a
subset of them. Everything is static-shape: ranks instead of boolean indexing, per-row counts as arrays.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jdllm.decode.proposal import Proposal


@struct.dataclass
class StepContext:
    """What a policy knows about a step besides the proposal. A policy row is one block of the window (the
    schedule's slots; with semi-AR blocks, one row of the batch)."""

    step_in_block: Int[Array, "B"]     # steps this row's block has already taken
    block_start: Bool[Array, "B"]      # this step is the first of the row's block (reset rule state here)
    keys: jax.Array                    # one PRNG key per row for this step (derived from seed, row id, row step)
    temperature: float = struct.field(pytree_node=False, default=0.0)  # the decode's (static) sampling temperature
    block_id: Int[Array, "B"] | None = None  # generation block (0-based) of the row
    stage: Int[Array, "B"] | None = None     # schedules.base ABSENT / SEMI / FULL (D2F activation) of that block


@dataclasses.dataclass(frozen=True)
class CommitPolicy:
    """Base class. Subclasses override `select`; stateful ones also `init_state`."""

    def init_state(self, batch: int, width: int, config=None):
        return ()

    def select(self, proposal: Proposal, candidates: Bool[Array, "B W"], ctx: StepContext, state):
        raise NotImplementedError  # abstract


NEG_INF = -jnp.inf


def masked_scores(scores: Float[Array, "B W"], candidates: Bool[Array, "B W"]) -> jax.Array:
    return jnp.where(candidates, scores.astype(jnp.float32), NEG_INF)


def descending_ranks(scores: Float[Array, "B W"], candidates: Bool[Array, "B W"]) -> Int[Array, "B W"]:
    """Rank of each position by score, highest first; ties go to the lower position; non-candidates last."""
    order = jnp.argsort(-masked_scores(scores, candidates), axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def sorted_desc(scores: Float[Array, "B W"], candidates: Bool[Array, "B W"]) -> Float[Array, "B W"]:
    """Candidate scores sorted high to low, -inf padded."""
    return -jnp.sort(-masked_scores(scores, candidates), axis=-1)


def commit_top(scores: Float[Array, "B W"], candidates: Bool[Array, "B W"], count: Int[Array, "B"]) -> Bool[Array, "B W"]:
    """Commit the `count[b]` highest-scoring candidates of each row (static-shape top-k with per-row k)."""
    return candidates & (descending_ranks(scores, candidates) < count[:, None])


def at_least_one(commit: Bool[Array, "B W"], scores, candidates) -> Bool[Array, "B W"]:
    """Fast-dLLM's ">= 1 per step": always add the most confident candidate."""
    return commit | (candidates & (descending_ranks(scores, candidates) == 0))
