"""LocalLeap: local determinism propagation (arXiv 2510.07081, Kuaishou; decoding.md §6.8). The official
repository was not reachable; the rule follows a public copy of its `generate.py` (`get_transfer_index(...,
threshold, relaxed_threshold, radius)`).

Anchors are the candidates with confidence >= tau. Every candidate within `radius` positions (inclusive) of an
anchor gets the relaxed threshold `tau_relaxed`, all others keep tau; commit the candidates that pass their
threshold, and always at least the most confident one. Without anchors this is the Fast-dLLM threshold rule.

The copy's optional early stop (a finished block holding EOS fills the rest with EOS) is a schedule feature
(`eos_early_stop`), not part of this policy.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdllm.decode.policies.base import CommitPolicy, at_least_one


def dilate(mask, radius: int):
    """Positions within `radius` (inclusive) of a True position of mask [B, W], along the last axis."""
    width = mask.shape[-1]
    out = mask
    for k in range(1, min(radius, width - 1) + 1):
        out = out | jnp.pad(mask[:, k:], ((0, 0), (0, k))) | jnp.pad(mask[:, : width - k], ((0, 0), (k, 0)))
    return out


@dataclasses.dataclass(frozen=True)
class LocalLeap(CommitPolicy):
    tau: float = 0.9
    tau_relaxed: float = 0.75
    radius: int = 4

    def __post_init__(self):
        if not 0.0 <= self.tau_relaxed <= self.tau <= 1.0:
            raise ValueError(f"need 0 <= tau_relaxed <= tau <= 1, got tau={self.tau}, tau_relaxed={self.tau_relaxed}")
        if self.radius < 0:
            raise ValueError(f"radius must be >= 0, got {self.radius}")

    def select(self, proposal, candidates, ctx, state):
        conf = proposal.confidence.astype(jnp.float32)
        anchors = candidates & (conf >= self.tau)
        near = dilate(anchors, self.radius)
        thr = jnp.where(near, self.tau_relaxed, self.tau)
        return at_least_one(candidates & (conf >= thr), conf, candidates), state
