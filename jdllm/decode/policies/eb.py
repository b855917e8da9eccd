"""EB-sampler: entropy-bounded unmasking (arXiv 2505.24857, FAIR; decoding.md §6.6; the official code was not
located, the rule follows the SGLang port `python/sglang/srt/dllm/algorithm/eb_sampling.py`, `EBSampling`).

Order the candidates by an error proxy, the entropy H of their predictive distribution (lowest first), and
unmask the largest prefix U with sum_{i in U} H_i - max_{i in U} H_i <= gamma. With ascending entropies this
is: the candidate of rank k (0-based) is unmasked iff the entropies of the ranks before it sum to <= gamma;
rank 0 always. gamma = 0 reveals one token per step (unless entropies are exactly 0); SGLang's default gamma is
0.15.

SGLang sets the mask token's logit to -inf before the entropy (and the argmax). jdllm's proposal never proposes
the mask id, but its entropy is over the full vocabulary; give `mask_id` to renormalise the entropy without the
mask token, as SGLang does (default None: the proposal's entropy).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdllm.decode.policies.base import CommitPolicy, descending_ranks, sorted_desc


def entropy_without(log_probs, token_id: int):
    """Entropy [B, W] of the distribution renormalised without `token_id` (log_probs [B, W, V])."""
    lp = log_probs.astype(jnp.float32).at[..., token_id].set(-jnp.inf)
    lp = lp - jax.nn.logsumexp(lp, axis=-1, keepdims=True)
    return -jnp.sum(jnp.where(jnp.isfinite(lp), jnp.exp(lp) * lp, 0.0), axis=-1)


@dataclasses.dataclass(frozen=True)
class EntropyBounded(CommitPolicy):
    gamma: float = 0.15
    mask_id: int | None = None

    def __post_init__(self):
        if self.gamma < 0:
            raise ValueError(f"EB-sampler requires gamma >= 0, got {self.gamma}")

    def entropy(self, proposal):
        if self.mask_id is None:
            return -proposal.neg_entropy.astype(jnp.float32)
        return entropy_without(proposal.log_probs, self.mask_id)

    def select(self, proposal, candidates, ctx, state):
        score = -self.entropy(proposal)  # higher = surer; ranks ascending in entropy
        ent_sorted = -sorted_desc(score, candidates)  # ascending entropies, +inf padded
        ent_sorted = jnp.where(jnp.isfinite(ent_sorted), ent_sorted, 0.0)
        csum = jnp.cumsum(ent_sorted, axis=-1)
        before = jnp.concatenate([jnp.zeros_like(csum[:, :1]), csum[:, :-1]], axis=-1)  # exclusive prefix sums
        rank_ok = (before <= self.gamma) | (jnp.arange(ent_sorted.shape[-1]) == 0)
        ranks = descending_ranks(score, candidates)
        ok = jnp.take_along_axis(rank_ok, ranks, axis=-1)
        return candidates & ok, state
