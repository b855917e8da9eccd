"""Fast-dLLM++ Fréchet profile decoding (arXiv 2606.02955 §4; code `get_transfer_index_frechet_profile` in
Ringo-Star/FastdLLM_plusplus `v1/llada/generate.py`).

With the candidate confidences sorted high to low, c_(1) >= c_(2) >= ... >= c_(m), the n most confident
candidates are scored by

    L_n = sum_{j <= n} c_(j) - (n - 1)     Fréchet-Hoeffding (Bonferroni) lower bound on P(all n correct)
    U_n = 1 - c_(n)                         upper bound on the probability of any competing tuple
    G_n = L_n - U_n

and the rule commits the n* most confident candidates, n* = #{n : G_n > delta} with n = 1 always counted (the
code's `score[:, 0] = inf; topn = (score > margin).sum()`), i.e. the largest n with G_n > delta, and at least
one (G_n is non-increasing in n, so the count is the longest passing prefix). With equal confidences this is
Fast-dLLM's factor rule with f = 1 - delta (Cor. 4.2); heterogeneous profiles commit more (Prop. 4.3).

The code's L_n has no max(0, .) clamp (the paper's L_n does); for delta >= 0 the two give the same decisions,
since a negative L_n makes G_n < 0 either way.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdllm.decode.policies.base import CommitPolicy, commit_top, sorted_desc


def frechet_count(ranked, n_cand, delta: float):
    """Per-row n* from candidate confidences sorted high to low (-inf padded) and the candidate counts."""
    width = ranked.shape[-1]
    j = jnp.arange(width)
    valid = j[None, :] < n_cand[:, None]
    vals = jnp.where(valid, ranked, 0.0)
    lower = jnp.cumsum(vals, axis=-1) - j.astype(vals.dtype)  # L_n with n = j + 1
    gap = lower - (1.0 - vals)
    passes = valid & (gap > delta) & (j[None, :] > 0)
    return jnp.minimum(1 + jnp.sum(passes, axis=-1), jnp.maximum(n_cand, 0)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Frechet(CommitPolicy):
    delta: float = 0.25

    def __post_init__(self):
        if not -1.0 <= self.delta < 1.0:
            raise ValueError(f"Fréchet margin delta must lie in [-1, 1), got {self.delta}")

    def select(self, proposal, candidates, ctx, state):
        conf = proposal.confidence
        count = frechet_count(sorted_desc(conf, candidates), jnp.sum(candidates, axis=-1), self.delta)
        return commit_top(conf, candidates, count), state
