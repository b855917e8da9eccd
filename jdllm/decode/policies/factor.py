"""Fast-dLLM's factor rule (v1 code `get_transfer_index_dynamic`, analysed in Fast-dLLM++ arXiv 2606.02955):
with candidate confidences sorted high to low, c_(1) >= c_(2) >= ..., commit the longest prefix whose n-th
element passes c_(n) >= 1 - f / (n + 1) (Theorem 1's (n+1) eps <= 1 with slack f); the first always commits.

`quirk=True` (default) reproduces the shipped code exactly: when the first failing rank is the *last*
candidate, that candidate is committed too (so with two masked tokens left, both always commit).
`quirk=False` is the intended rule (longest passing prefix). They differ only on that last-token case.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdllm.decode.policies.base import CommitPolicy, commit_top, sorted_desc


@dataclasses.dataclass(frozen=True)
class Factor(CommitPolicy):
    factor: float = 1.0
    quirk: bool = True

    def __post_init__(self):
        if self.factor <= 0:
            raise ValueError(f"factor must be > 0, got {self.factor}")

    def select(self, proposal, candidates, ctx, state):
        conf = proposal.confidence
        ranked = sorted_desc(conf, candidates)
        width = conf.shape[-1]
        j = jnp.arange(width)
        bar = jnp.where(j == 0, -1.0, 1.0 - self.factor / (j + 2.0))
        passes = ranked >= bar  # -inf padding never passes
        n_pass = jnp.sum(jnp.cumprod(passes, axis=-1), axis=-1)
        n_cand = jnp.sum(candidates, axis=-1)
        count = jnp.where(self.quirk & (n_pass == n_cand - 1), n_cand, n_pass)
        return commit_top(conf, candidates, count), state
