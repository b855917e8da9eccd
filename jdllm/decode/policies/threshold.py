"""Fast-dLLM confidence-aware parallel decoding (arXiv 2505.22618, §3.3; `get_transfer_index` with a threshold):
commit every candidate whose confidence is >= tau, and always at least the most confident one."""

from __future__ import annotations

import dataclasses

from jdllm.decode.policies.base import CommitPolicy, at_least_one


@dataclasses.dataclass(frozen=True)
class Threshold(CommitPolicy):
    tau: float = 0.9

    def __post_init__(self):
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.tau}")

    def select(self, proposal, candidates, ctx, state):
        conf = proposal.confidence
        return at_least_one(candidates & (conf >= self.tau), conf, candidates), state
