"""LLaDA's reference rule (arXiv 2502.09992, `generate.py`): per block, a linear transfer schedule
(`get_num_transfer_tokens`: n // S tokens per step, plus one for the first n % S steps, n = block length, S =
steps per block) and, each step, the top-quota masked positions by score ("low_confidence": softmax probability
of the proposed token; "random": uniform scores)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from jdllm.decode.policies.base import CommitPolicy, commit_top

Score = Literal["low_confidence", "random", "margin", "entropy"]


def transfer_quota(block_length: int, steps_per_block: int, step):
    """`get_num_transfer_tokens` for a fully masked block, evaluated at (traced) step index `step`."""
    base, extra = divmod(block_length, steps_per_block)
    return base + (step < extra).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class TopK(CommitPolicy):
    block_length: int
    steps_per_block: int
    score: Score = "low_confidence"

    def __post_init__(self):
        if self.steps_per_block < 1:
            raise ValueError(f"steps_per_block must be >= 1, got {self.steps_per_block}")
        if self.score not in ("low_confidence", "random", "margin", "entropy"):
            raise ValueError(f"unknown remasking score {self.score!r}")

    def scores(self, proposal, ctx):
        if self.score == "random":
            return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1), proposal.confidence.shape[1:]))(ctx.keys)
        return {"low_confidence": proposal.confidence, "margin": proposal.margin, "entropy": proposal.neg_entropy}[self.score]

    def select(self, proposal, candidates, ctx, state):
        quota = transfer_quota(self.block_length, self.steps_per_block, ctx.step_in_block)
        return commit_top(self.scores(proposal, ctx), candidates, quota), state
