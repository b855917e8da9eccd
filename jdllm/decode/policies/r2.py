"""R²-dLLM spatio-temporal redundancy reduction (arXiv 2604.18995; GATECH-EIC/R2-dLLM `llada/generate.py`,
`generate_with_dual_cache`: `_run_window_sweep`, `_apply_temporal_consistency`, `maybe_auto_confirm`).

The paper body was not reachable; the rule is transcribed from the official code (decoding.md §4.1). Each step,
in this order, every later rule seeing the window as updated by the earlier ones:

0. base rule: Fast-dLLM threshold (commit candidates with confidence >= tau, at least the most confident one),
   or the factor rule when `factor` is given (the code's `get_transfer_index_dynamic`, official quirk);
1. confidence-cluster window sweep (spatial): every window of `window` consecutive positions is judged on the
   same state (after rule 0): skipped when it holds more than `max_decoded_in_window` decoded tokens or no mask;
   otherwise, when the mean confidence of its still-masked positions is >= `window_mean`, all of them commit;
   off when the window is narrower than `window`;
2. token-cluster rule (spatial, "positional ambiguity"; the code calls it temporal consistency): maximal runs of
   consecutive still-masked positions whose top-1 tokens are identical, of length >= `cluster_size`, whose
   largest confidence is > `window_mean`, commit ONE position: the most confident one ("confidence", ties to
   the lower position), the middle one ("mid": run start + length // 2) or a uniform one ("random", from the
   row's key). The code ties this rule to the sweep's settings: it runs only when the sweep is enabled and uses
   the same threshold;
3. temporal finalisation: a per-position streak of identical top-1 tokens across consecutive steps (count,
   sum, max of the confidence, last token) over the positions that were masked at the step start; a position
   committed by rules 0-2 has its streak reset; a still-masked one extends its streak (or restarts it when the
   token changed), and commits when count >= `temporal_steps` and its score >= `temporal_score`, score =
   the current confidence ("last"), the streak mean ("ave") or the streak max ("max"); then its streak resets.

The streaks are policy state [B, W], reset at each block start (the code's arrays are indexed by absolute
position, so a new block starts from empty streaks too), and frozen for rows that do not decode in a step.

Deviation: the code tracks the untempered argmax token and its float32 softmax probability, while jdllm's
proposal carries the (possibly sampled) proposed token and its probability; they are identical at temperature
0 (the reference configuration). The proposal never proposes the mask id.

Defaults follow the official scripts (`eval_gsm8k.sh`): tau 0.9, window 3, window mean 0.8, at most 1 decoded
token per window, token cluster "confidence", 3 temporal steps, temporal score 0.8, temporal mode "last" (the
function's own default is "ave").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdllm.decode.policies.base import CommitPolicy, at_least_one
from jdllm.decode.policies.factor import Factor
from jdllm.decode.policies.rowstate import live_rows, reset_rows, where_rows


def window_sweep(masked, conf, w: int, mean_thr: float, max_decoded: int | None):
    """Rule 1 on [B, W] arrays: which still-masked positions the confidence-cluster sweep commits."""
    width = masked.shape[-1]
    if w < 1 or width < w:
        return jnp.zeros_like(masked)
    n_win = width - w + 1
    mi = masked.astype(jnp.float32)
    cm = jnp.where(masked, conf.astype(jnp.float32), 0.0)
    cnt = sum(mi[:, k:k + n_win] for k in range(w))
    csum = sum(cm[:, k:k + n_win] for k in range(w))
    hit = (cnt > 0) & (csum / jnp.maximum(cnt, 1.0) >= mean_thr)
    if max_decoded is not None:
        hit = hit & (w - cnt <= max_decoded)
    hitp = jnp.pad(hit, ((0, 0), (0, w - 1)))
    cover = jnp.zeros_like(masked)
    for k in range(w):  # position i is covered by the windows starting at i - k, 0 <= k < w
        cover = cover | jnp.pad(hitp[:, : width - k], ((0, 0), (k, 0)))
    return masked & cover


def token_cluster(masked, tokens, conf, thr: float, min_len: int, mode: str, keys):
    """Rule 2 on [B, W] arrays: one commit per qualifying run of identical proposals over still-masked positions."""
    width = masked.shape[-1]

    def row(m, ids, c, key):
        idx = jnp.arange(width)
        prev_m = jnp.concatenate([jnp.zeros((1,), bool), m[:-1]])
        prev_id = jnp.concatenate([jnp.full((1,), -1, ids.dtype), ids[:-1]])
        start = m & (~prev_m | (ids != prev_id))
        seg = jnp.where(m, jnp.cumsum(start) - 1, width)  # non-masked positions go to a dummy segment
        n_seg = width + 1
        length = jax.ops.segment_sum(m.astype(jnp.int32), seg, n_seg)
        cmax = jax.ops.segment_max(jnp.where(m, c, -jnp.inf), seg, n_seg)
        first = jax.ops.segment_min(jnp.where(m, idx, width), seg, n_seg)
        if mode == "confidence":
            pick = jax.ops.segment_min(jnp.where(m & (c == cmax[seg]), idx, width), seg, n_seg)
        elif mode == "mid":
            pick = first + length // 2
        else:  # random
            u = jax.random.uniform(jax.random.fold_in(key, 2), (width,))
            off = jnp.minimum(jnp.floor(u[jnp.minimum(first, width - 1)] * length).astype(jnp.int32),
                              jnp.maximum(length - 1, 0))
            pick = first + off
        ok = (length >= min_len) & (cmax > thr)
        return m & (idx == pick[seg]) & ok[seg]

    return jax.vmap(row)(masked, tokens, conf.astype(jnp.float32), keys)


@dataclasses.dataclass(frozen=True)
class R2(CommitPolicy):
    tau: float = 0.9
    factor: float | None = None
    window: int = 3
    window_mean: float | None = 0.8
    max_decoded_in_window: int | None = 1
    token_cluster: bool | str = True
    cluster_size: int = 2
    temporal_steps: int = 3
    temporal_score: float | None = 0.8
    temporal_mode: str = "last"

    def __post_init__(self):
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.tau}")
        if self.temporal_mode not in ("last", "ave", "max"):
            raise ValueError(f"temporal_mode must be 'last', 'ave' or 'max', got {self.temporal_mode!r}")
        if self.cluster_mode not in (None, "confidence", "mid", "random"):
            raise ValueError(
                f"token_cluster must be a bool or 'confidence' / 'mid' / 'random', got {self.token_cluster!r}"
            )
        if self.window < 0 or self.cluster_size < 1 or self.temporal_steps < 0:
            raise ValueError("window, cluster_size and temporal_steps must be non-negative (cluster_size >= 1)")

    @property
    def cluster_mode(self):
        if self.token_cluster is True:
            return "confidence"
        if not self.token_cluster or str(self.token_cluster).lower() == "none":
            return None
        return str(self.token_cluster).lower()

    @property
    def sweep_on(self) -> bool:
        return self.window > 0 and self.window_mean is not None

    @property
    def temporal_on(self) -> bool:
        return self.temporal_steps > 0 and self.temporal_score is not None

    def init_state(self, batch, width, config=None):
        return dict(
            count=jnp.zeros((batch, width), jnp.int32),
            total=jnp.zeros((batch, width), jnp.float32),
            best=jnp.zeros((batch, width), jnp.float32),
            last=jnp.full((batch, width), -1, jnp.int32),
        )

    def select(self, proposal, candidates, ctx, state):
        conf, tokens = proposal.confidence.astype(jnp.float32), proposal.tokens
        if self.factor is None:
            commit = at_least_one(candidates & (conf >= self.tau), conf, candidates)
        else:
            commit, _ = Factor(self.factor).select(proposal, candidates, ctx, ())
        masked = candidates & ~commit
        if self.sweep_on:
            masked = masked & ~window_sweep(masked, conf, self.window, self.window_mean, self.max_decoded_in_window)
            if self.cluster_mode is not None:
                masked = masked & ~token_cluster(masked, tokens, conf, self.window_mean, self.cluster_size,
                                                 self.cluster_mode, ctx.keys)
        if self.temporal_on:
            b, w = candidates.shape
            old = reset_rows(ctx.block_start, state, self.init_state(b, w))
            done_now = candidates & ~masked  # committed by rules 0-2: streak reset
            same = masked & (old["last"] == tokens)
            new = masked & ~same
            count = jnp.where(same, old["count"] + 1, jnp.where(new, 1, old["count"]))
            total = jnp.where(same, old["total"] + conf, jnp.where(new, conf, old["total"]))
            best = jnp.where(same, jnp.maximum(old["best"], conf), jnp.where(new, conf, old["best"]))
            last = jnp.where(new, tokens, old["last"])
            score = {"last": conf, "ave": total / jnp.maximum(count, 1), "max": best}[self.temporal_mode]
            confirm = masked & (count >= self.temporal_steps) & (score >= self.temporal_score)
            clear = done_now | confirm
            upd = dict(
                count=jnp.where(clear, 0, count),
                total=jnp.where(clear, 0.0, total),
                best=jnp.where(clear, 0.0, best),
                last=jnp.where(clear, -1, last),
            )
            state = where_rows(live_rows(candidates), upd, state)
            masked = masked & ~confirm
        return candidates & ~masked, state
