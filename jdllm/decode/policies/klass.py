"""KLASS: KL-adaptive stability sampling (arXiv 2511.05664, NeurIPS 2025; shkim0116/KLASS
`src/model/llada_klass.py`, `stable_confident_decode` with alg="klass"; decoding.md §6.7).

Per step, for every window position: p = softmax(logits), KL_t = sum_v p (log(p + 1e-12) - log(p_prev + 1e-12))
against the previous step's distribution at that position (p_prev = 0 before the first step), pushed into a
rolling history of the last `history` KLs (initially zeros). A candidate is *ready* when its whole history is
< `kl_threshold` (checked only once step_in_block >= history - 1), and its confidence is > `conf_threshold`.
If the row has ready candidates it commits all of them (`unmask="all"`), or only the most confident one
("max_conf") or the one with the smallest current KL ("min_kl"); otherwise it commits the LLaDA schedule's
top-k by confidence (`block_length`, `steps_per_block`).

State: previous probabilities [B, W, V] (float32; the code keeps float64) and the KL history [B, W, H], reset at
each block start, frozen for idle rows.

Deviations: (1) the official loop is uncached and tracks every canvas position, so a block's positions already
carry a KL history from the previous block's steps; jdllm's policy sees only the active window, so each block
starts like the code's first block (p_prev = 0, history 0): stability can first be reached one step later.
(2) With temperature > 0 the code computes p from the Gumbel-perturbed logits; jdllm uses the clean
distribution. (3) When ready commits leave masks past the schedule's end (possible when steps_per_block <
block_length), the code moves on to the next block with masks left; jdllm keeps decoding the block with at
least one commit per step.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdllm.decode.policies.base import CommitPolicy, commit_top, descending_ranks
from jdllm.decode.policies.rowstate import fallback_top1, live_rows, reset_rows, where_rows
from jdllm.decode.policies.topk import transfer_quota

KL_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class KLASS(CommitPolicy):
    block_length: int
    steps_per_block: int
    conf_threshold: float = 0.9
    kl_threshold: float = 0.01
    history: int = 2
    unmask: str = "all"
    vocab_size: int | None = None  # set to size the state; None: taken from the first proposal (see init_state)

    def __post_init__(self):
        if self.steps_per_block < 1 or self.block_length < 1:
            raise ValueError("block_length and steps_per_block must be >= 1")
        if self.history < 1:
            raise ValueError(f"history must be >= 1, got {self.history}")
        if self.unmask not in ("all", "max_conf", "min_kl"):
            raise ValueError(f"unmask must be 'all', 'max_conf' or 'min_kl', got {self.unmask!r}")

    def init_state(self, batch, width, config=None):
        vocab = self.vocab_size or getattr(config, "vocab_size", None)
        if vocab is None:
            raise ValueError("KLASS keeps the previous step's distribution: give vocab_size (the model's vocabulary)")
        return self._fresh(batch, width, vocab)

    def _fresh(self, batch, width, vocab):
        return dict(p_prev=jnp.zeros((batch, width, vocab), jnp.float32),
                    kl_hist=jnp.zeros((batch, width, self.history), jnp.float32))

    def select(self, proposal, candidates, ctx, state):
        b, w = candidates.shape
        old = reset_rows(ctx.block_start, state, self._fresh(b, w, state["p_prev"].shape[-1]))
        log_p = proposal.log_probs.astype(jnp.float32)
        p = jnp.exp(log_p)
        kl = jnp.sum(p * (jnp.log(p + KL_EPS) - jnp.log(old["p_prev"] + KL_EPS)), axis=-1)
        hist = jnp.concatenate([old["kl_hist"][..., 1:], kl[..., None]], axis=-1)
        conf = proposal.confidence.astype(jnp.float32)
        stable = jnp.all(hist < self.kl_threshold, axis=-1) & (ctx.step_in_block >= self.history - 1)[:, None]
        ready = stable & (conf > self.conf_threshold) & candidates
        if self.unmask == "max_conf":
            ready = ready & (descending_ranks(conf, ready) == 0)
        elif self.unmask == "min_kl":
            ready = ready & (descending_ranks(-kl, ready) == 0)
        quota = jnp.maximum(transfer_quota(self.block_length, self.steps_per_block, ctx.step_in_block), 1)
        scheduled = commit_top(conf, candidates, quota)
        commit = jnp.where(jnp.any(ready, axis=-1)[:, None], ready, scheduled)
        commit = fallback_top1(commit, conf, candidates)
        state = where_rows(live_rows(candidates), dict(p_prev=p, kl_hist=hist), state)
        return commit, state
