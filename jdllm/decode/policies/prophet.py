"""Prophet: early answer commit (arXiv 2508.19982, ICLR 2026; pixeli99/Prophet `generate_earlyexit.py`;
decoding.md §6.2).

Base decoding is LLaDA's (the linear transfer schedule per block, top-k by `score`). Before each step's commit,
Prophet measures how settled the answer is: the mean top-2 logit gap (= log-probability gap) over an answer
region, and compares it with a threshold that falls with the decoding progress p = (row's step index) /
(total steps): `early_threshold` (p < 0.33), `mid_threshold` (p < 0.67), `late_threshold` otherwise. When the
gap reaches the threshold the row "goes all-in": every candidate is committed to its current proposal.

Answer region: `answer_start` / `answer_length` are offsets in the active window (with one global window,
block_length = gen_length, these are offsets in the generation region, Prophet's setting: e.g. the 5 positions
after a forced "The answer is"); positions outside the window are ignored; answer_start None (default) uses the
still-masked positions of the window.

Deviations: jdllm's policies commit inside the active window only, so with semi-autoregressive blocks the
all-in fills the current block, and the decision is remembered (policy state) so that every later block of
the row is committed in full at its first step, from that step's (fresher) proposals, instead of reusing the
firing step's proposals; this costs one forward per remaining block. Prophet's forced answer-prefix tokens
("constraints") are not a commit rule and are not implemented here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdllm.decode.policies.base import CommitPolicy
from jdllm.decode.policies.rowstate import live_rows
from jdllm.decode.policies.topk import TopK


@dataclasses.dataclass(frozen=True)
class Prophet(CommitPolicy):
    block_length: int
    steps_per_block: int
    gen_length: int | None = None
    answer_start: int | None = None
    answer_length: int = 5
    early_threshold: float = 7.5
    mid_threshold: float = 5.0
    late_threshold: float = 2.5
    score: str = "low_confidence"

    def __post_init__(self):
        TopK(self.block_length, self.steps_per_block, self.score)  # validates
        if self.gen_length is not None and (self.gen_length < 1 or self.gen_length % self.block_length):
            raise ValueError(
                f"gen_length={self.gen_length} is not a positive multiple of block_length={self.block_length}"
            )
        if self.answer_length < 1:
            raise ValueError(f"answer_length must be >= 1, got {self.answer_length}")

    @property
    def total_steps(self) -> int:
        n_blocks = 1 if self.gen_length is None else self.gen_length // self.block_length
        return self.steps_per_block * n_blocks

    def init_state(self, batch, width, config=None):
        return dict(step=jnp.zeros((batch,), jnp.int32), fired=jnp.zeros((batch,), bool))

    def threshold(self, step):
        # progress = step / total_steps against 0.33 / 0.67, compared exactly in integers: float32 division puts
        # step 33 of 100 below 0.33 (early), where the official float64 `progress < 0.33` says mid.
        pct = step.astype(jnp.int32) * 100
        return jnp.where(pct < 33 * self.total_steps, self.early_threshold,
                         jnp.where(pct < 67 * self.total_steps, self.mid_threshold, self.late_threshold))

    def answer_gap(self, proposal, candidates):
        top2 = jax.lax.top_k(proposal.log_probs.astype(jnp.float32), 2)[0]
        gap = top2[..., 0] - top2[..., 1]
        if self.answer_start is None:
            region = candidates
        else:
            j = jnp.arange(candidates.shape[-1])
            region = jnp.broadcast_to((j >= self.answer_start) & (j < self.answer_start + self.answer_length),
                                      candidates.shape)
        n = jnp.sum(region, axis=-1)
        mean = jnp.sum(jnp.where(region, gap, 0.0), axis=-1) / jnp.maximum(n, 1)
        return jnp.where(n > 0, mean, -jnp.inf)

    def select(self, proposal, candidates, ctx, state):
        live = live_rows(candidates)
        base, _ = TopK(self.block_length, self.steps_per_block, self.score).select(proposal, candidates, ctx, ())
        fire = state["fired"] | (live & (self.answer_gap(proposal, candidates) >= self.threshold(state["step"])))
        commit = jnp.where(fire[:, None], candidates, base)
        return commit, dict(step=state["step"] + live.astype(jnp.int32), fired=fire)
