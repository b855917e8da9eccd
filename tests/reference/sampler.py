"""Batch-1, Python-loop, greedy (temperature 0) references of LLaDA's and Fast-dLLM's samplers (numpy float64).

Written from the algorithm descriptions (decoding.md §1, §2.1, §2.2, §2.4, §6.1; caching.md §4.2), not from jdllm:

- ``llada_generate``: LLaDA ``generate.py``: semi-autoregressive blocks, the linear transfer schedule
  (``get_num_transfer_tokens``) per block, top-k by confidence among the masked positions of the current block,
  ties broken by the lower position; a block ends early as soon as it has no mask left.
- ``generate``: Fast-dLLM ``generate`` without a cache: per block, loop until the block has no mask; each step
  commits by the top-k schedule (threshold and factor None), the threshold rule (>= tau, always >= 1) or the
  factor rule (official quirk or intended semantics).
- ``generate_with_prefix_cache`` / ``generate_with_dual_cache``: jdllm's documented form of Fast-dLLM's caches
  (see the docstrings), with Dream's shift handled by one extra query row instead of Fast-dLLM's
  "commit the first block token unconditionally".

Confidence = softmax probability (float64) of the argmax token. ``shift`` applies Dream's logit shift
(position i reads output i-1) before any selection.

Every decision made by a reference is recorded in ``Diagnostics`` (how close it was to flipping: argmax logit
gaps, confidence gaps at the top-k boundary, distances to the thresholds) so the parity tests can assert that
the reference path is well conditioned for a float32 implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tests.reference.model import RefModel, shift_logits, softmax


# ----------------------------------------------------------------------------------------------------------
# diagnostics


@dataclass
class Diagnostics:
    """Smallest margins seen by the decisions of a reference run (inf = no such decision)."""

    min_argmax_gap: float = math.inf  # top-1 minus top-2 logit of a committed position
    min_rank_gap: float = math.inf  # confidence gap at a top-k / "always the most confident" boundary
    min_threshold_gap: float = math.inf  # |confidence - threshold| of a threshold / factor comparison
    n_steps: int = 0
    n_committed: int = 0
    conf_seen: list = field(default_factory=list)  # confidences of masked in-block positions, per step

    def merge_logit_gap(self, g: float) -> None:
        self.min_argmax_gap = min(self.min_argmax_gap, float(g))

    def merge_rank_gap(self, g: float) -> None:
        self.min_rank_gap = min(self.min_rank_gap, float(g))

    def merge_threshold_gap(self, g: float) -> None:
        self.min_threshold_gap = min(self.min_threshold_gap, float(abs(g)))

    def assert_well_conditioned(self, logit_tol: float = 1e-3, conf_tol: float = 1e-4) -> None:
        """Every decision is far enough from a tie that a float32 implementation must agree."""
        assert self.min_argmax_gap > logit_tol, f"argmax near-tie in the reference path: {self}"
        assert self.min_rank_gap > conf_tol, f"confidence near-tie at a top-k boundary: {self}"
        assert self.min_threshold_gap > conf_tol, f"confidence too close to a threshold: {self}"

    def __repr__(self) -> str:  # keep conf_seen out of failure messages
        return (
            f"Diagnostics(argmax_gap={self.min_argmax_gap:.3g}, rank_gap={self.min_rank_gap:.3g}, "
            f"threshold_gap={self.min_threshold_gap:.3g}, steps={self.n_steps}, committed={self.n_committed})"
        )


# ----------------------------------------------------------------------------------------------------------
# schedule and commit rules


def get_num_transfer_tokens(n_masked: int, steps: int) -> np.ndarray:
    """LLaDA's linear schedule: ``n // steps`` per step, plus one for the first ``n % steps`` steps."""
    base, rem = divmod(int(n_masked), int(steps))
    quota = np.full(steps, base, dtype=np.int64)
    quota[:rem] += 1
    return quota


def propose(logits: np.ndarray):
    """Greedy proposal for [W, V] logits: (x0 [W], confidence [W] = softmax(l)[x0], top1-top2 logit gap [W])."""
    logits = np.asarray(logits, dtype=np.float64)
    x0 = np.argmax(logits, axis=-1)
    conf = np.take_along_axis(softmax(logits, axis=-1), x0[:, None], axis=-1)[:, 0]
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return x0, conf, top2[:, 1] - top2[:, 0]


def select(
    conf: np.ndarray,
    masked: np.ndarray,
    *,
    quota: int | None = None,
    threshold: float | None = None,
    factor: float | None = None,
    factor_quirk: bool = True,
    diag: Diagnostics | None = None,
) -> np.ndarray:
    """Which positions to commit (bool [W]), given confidences [W] and the masked-in-window set [W].

    factor (if not None) wins over threshold, threshold over the top-k quota (Fast-dLLM's dispatch).
    Ordering by confidence is descending with ties broken by the lower position (stable sort).
    """
    diag = diag if diag is not None else Diagnostics()
    idx = np.flatnonzero(masked)
    n = idx.size
    commit = np.zeros(masked.shape, dtype=bool)
    if n == 0:
        return commit
    c = conf[idx]
    order = np.argsort(-c, kind="stable")
    s = c[order]
    if factor is not None:
        # accept the longest prefix with s[m] >= 1 - factor / (m + 2) (m 0-based; m = 0 always accepted)
        k = 1
        for m in range(1, n):
            thr = 1.0 - factor / (m + 2)
            diag.merge_threshold_gap(s[m] - thr)
            if s[m] < thr:
                break
            k = m + 1
        if factor_quirk and k == n - 1:
            k = n  # official code: when the first failure is the last masked token, it is committed anyway
    elif threshold is not None:
        for v in s:
            diag.merge_threshold_gap(v - threshold)
        k = max(1, int(np.sum(s >= threshold)))
        if s[0] < threshold and n > 1:
            diag.merge_rank_gap(s[0] - s[1])  # which single position is "the most confident" matters
    else:
        if quota is None:
            raise ValueError("top-k rule needs a quota")
        k = int(quota)
        if not 1 <= k <= n:
            raise AssertionError(f"quota {k} with {n} masked positions")
    if k < n:
        diag.merge_rank_gap(s[k - 1] - s[k])
    commit[idx[order[:k]]] = True
    return commit


def _commit_block(x, s, e, logits_block, mask_id, rule, diag):
    """Commit on block [s, e) of canvas x (in place) from the block's (already aligned) logits [e-s, V]."""
    masked = x[s:e] == mask_id
    x0, conf, gap = propose(logits_block)
    diag.conf_seen.append(conf[masked].copy())
    commit = select(conf, masked, diag=diag, **rule)
    if np.any(x0[commit] == mask_id):
        raise AssertionError("the reference proposed the mask token; the tiny checkpoints must not do that")
    for g in gap[commit]:
        diag.merge_logit_gap(g)
    diag.n_steps += 1
    diag.n_committed += int(commit.sum())
    x[s:e] = np.where(commit, x0, x[s:e])


def _canvas(prompt, gen_length, block_length, steps, mask_id):
    prompt = np.asarray(prompt, dtype=np.int64).reshape(-1)
    if prompt.size < 1:
        raise ValueError("empty prompt")
    if np.any(prompt == mask_id):
        raise ValueError("prompt contains the mask id")
    if gen_length % block_length:
        raise ValueError("gen_length must be a multiple of block_length")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError("steps must be a multiple of the number of blocks")
    x = np.concatenate([prompt, np.full(gen_length, mask_id, dtype=np.int64)])
    return x, prompt.size, n_blocks, steps // n_blocks


def _aligned_full(logits_full: np.ndarray, s: int, e: int, shift: bool) -> np.ndarray:
    """Block logits [e-s, V] from a full-canvas raw logits array [L, V]."""
    used = shift_logits(logits_full) if shift else logits_full
    return used[s:e]


# ----------------------------------------------------------------------------------------------------------
# LLaDA generate.py


def llada_generate(forward, prompt, gen_length, block_length, steps, mask_id, shift=False, diag=None):
    """LLaDA's ``generate`` (greedy, low_confidence, no CFG), batch 1.

    forward: callable tokens [1, L] -> raw logits [1, L, V]. Returns (generated tokens [gen_length], nfe).
    """
    diag = diag if diag is not None else Diagnostics()
    x, lp, n_blocks, steps_per_block = _canvas(prompt, gen_length, block_length, steps, mask_id)
    nfe = 0
    for kb in range(n_blocks):
        s = lp + kb * block_length
        e = s + block_length
        assert not np.any(x[:s] == mask_id)
        quota = get_num_transfer_tokens(int(np.sum(x[s:e] == mask_id)), steps_per_block)
        for i in range(steps_per_block):
            if not np.any(x[s:e] == mask_id):
                break  # early exit: the block is complete
            logits = np.asarray(forward(x[None]))[0]
            nfe += 1
            _commit_block(x, s, e, _aligned_full(logits, s, e, shift), mask_id, {"quota": quota[i]}, diag)
    return x[lp:].copy(), nfe


# ----------------------------------------------------------------------------------------------------------
# Fast-dLLM


def _rule(threshold, factor, factor_quirk):
    return {"threshold": threshold, "factor": factor, "factor_quirk": factor_quirk}


def _model_ids(model, mask_id, shift):
    mask_id = model.mask_id if mask_id is None else mask_id
    shift = bool(model.shift) if shift is None else bool(shift)
    return mask_id, shift


def generate(
    model,
    prompt,
    gen_length,
    block_length,
    steps,
    *,
    threshold=None,
    factor=None,
    factor_quirk=True,
    mask_id=None,
    shift=None,
    diag=None,
):
    """Fast-dLLM ``generate`` (no cache): per block, ``while True: forward; commit; break if block done``.

    model: a RefModel (or any callable tokens [1, L] -> logits [1, L, V] when mask_id and shift are given).
    Top-k schedule (threshold and factor None) uses quota[i] at the block's i-th step.
    """
    diag = diag if diag is not None else Diagnostics()
    mask_id, shift = _model_ids(model, mask_id, shift)
    x, lp, n_blocks, steps_per_block = _canvas(prompt, gen_length, block_length, steps, mask_id)
    nfe = 0
    for kb in range(n_blocks):
        s = lp + kb * block_length
        e = s + block_length
        quota = get_num_transfer_tokens(int(np.sum(x[s:e] == mask_id)), steps_per_block)
        i = 0
        while True:
            logits = np.asarray(model(x[None]))[0]
            nfe += 1
            rule = _rule(threshold, factor, factor_quirk)
            if threshold is None and factor is None:
                rule = {"quota": quota[i]}
            _commit_block(x, s, e, _aligned_full(logits, s, e, shift), mask_id, rule, diag)
            i += 1
            if not np.any(x[s:e] == mask_id):
                break
    return x[lp:].copy(), nfe


def _cached_generate(
    model: RefModel,
    prompt,
    gen_length,
    block_length,
    steps,
    *,
    dual: bool,
    threshold,
    factor,
    factor_quirk,
    exact_cache: bool,
    diag,
):
    diag = diag if diag is not None else Diagnostics()
    mask_id, shift = model.mask_id, model.shift
    x, lp, n_blocks, steps_per_block = _canvas(prompt, gen_length, block_length, steps, mask_id)
    length = x.size
    topk = threshold is None and factor is None
    nfe = 0
    for kb in range(n_blocks):
        s = lp + kb * block_length
        e = s + block_length
        quota = get_num_transfer_tokens(int(np.sum(x[s:e] == mask_id)), steps_per_block)
        # block start: full forward (1 NFE): logits for the first commit and the K/V of every row
        logits, cache = model.forward(x[None])
        nfe += 1
        rule = {"quota": quota[0]} if topk else _rule(threshold, factor, factor_quirk)
        _commit_block(x, s, e, _aligned_full(logits[0], s, e, shift), mask_id, rule, diag)
        i = 1
        while np.any(x[s:e] == mask_id):
            if exact_cache:  # sanity mode: rebuild the cache from the current canvas (not counted as NFE)
                _, cache = model.forward(x[None])
            # queries start one row early for shifted (Dream) logits: block position p reads output p - shift
            q_start = s - shift
            q_end = e if dual else length
            fresh = (s, e) if dual else (s, length)
            out, _ = model.forward(x[None], q_start=q_start, q_end=q_end, fresh=fresh, cache=cache)
            nfe += 1
            block_logits = out[0, 0:block_length]  # output index of position p is (p - shift) - q_start = p - s
            rule = {"quota": quota[i]} if topk else _rule(threshold, factor, factor_quirk)
            _commit_block(x, s, e, block_logits, mask_id, rule, diag)
            i += 1
    return x[lp:].copy(), nfe


def generate_with_prefix_cache(
    model: RefModel,
    prompt,
    gen_length,
    block_length,
    steps,
    *,
    threshold=None,
    factor=None,
    factor_quirk=True,
    exact_cache=False,
    diag=None,
):
    """Prefix cache. Per block [s, e): a full forward (1 NFE) commits and yields K/V of all rows, of which the
    rows < s are kept as the cache; then, while the block has a mask, 1 NFE per step with queries
    [s - shift, L), K/V of rows < s from the cache and rows >= s computed fresh.

    exact_cache=True rebuilds the cache from the current canvas before every in-block step (sanity mode: then
    the result must equal ``generate`` with the same rule, tokens and NFE).
    """
    return _cached_generate(
        model, prompt, gen_length, block_length, steps, dual=False, threshold=threshold, factor=factor,
        factor_quirk=factor_quirk, exact_cache=exact_cache, diag=diag,
    )


def generate_with_dual_cache(
    model: RefModel,
    prompt,
    gen_length,
    block_length,
    steps,
    *,
    threshold=None,
    factor=None,
    factor_quirk=True,
    exact_cache=False,
    diag=None,
):
    """Dual cache. Per block [s, e): a full forward (1 NFE) commits and yields the cache = K/V of ALL rows
    (rewritten only at block starts); then, while the block has a mask, 1 NFE per step with queries
    [s - shift, e), K/V of rows in [s, e) fresh and every other row (prefix, suffix, and row s-1 for Dream)
    from the cache.
    """
    return _cached_generate(
        model, prompt, gen_length, block_length, steps, dual=True, threshold=threshold, factor=factor,
        factor_quirk=factor_quirk, exact_cache=exact_cache, diag=diag,
    )


def fastdllm_generate(
    model: RefModel,
    prompt,
    gen_length,
    block_length,
    steps,
    *,
    cache=None,
    threshold=None,
    factor=None,
    factor_quirk=True,
    exact_cache=False,
    diag=None,
):
    """Dispatch on cache in {None, "prefix", "dual"}; returns (generated tokens [gen_length], nfe)."""
    kw = dict(threshold=threshold, factor=factor, factor_quirk=factor_quirk, diag=diag)
    if cache is None:
        return generate(model, prompt, gen_length, block_length, steps, **kw)
    if cache == "prefix":
        return generate_with_prefix_cache(model, prompt, gen_length, block_length, steps, exact_cache=exact_cache, **kw)
    if cache == "dual":
        return generate_with_dual_cache(model, prompt, gen_length, block_length, steps, exact_cache=exact_cache, **kw)
    raise ValueError(f"unknown cache {cache!r}")
