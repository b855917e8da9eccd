"""Batch-1, Python-loop, greedy (temperature 0) reference of Dream's `diffusion_generate` (`_sample`) in numpy.

Written from the algorithm description (decoding.md §6.1: `generation_utils.py` of Dream-org/Dream-v0-*-7B),
not from jdllm:

    x = prompt + [mask] * gen_length ; timesteps = torch.linspace(1, eps, steps + 1)   (float32)
    for i in range(steps):
        mask_index = x == mask
        logits = model(x) ; logits = cat([logits[:1], logits[:-1]])          # Dream's logit shift
        probs = softmax(logits[mask_index]) ; confidence, x0 = probs.max(-1)
        "topk_margin": confidence = p(1) - p(2) ; "entropy": confidence = sum p log(p + 1e-10)
        t, s = timesteps[i], timesteps[i + 1]
        n = int(num_mask * (1 - s / t)) if i < steps - 1 else int(num_mask)     (float32 arithmetic)
        commit the top-n masked positions by confidence (torch.topk over the full row, -inf elsewhere)

One documented difference from Dream, to match jdllm's proposal: the argmax never picks the mask token
(x0 = argmax over the vocabulary without the mask id); the confidence stays the full-softmax probability of x0.
The logits are the float64 forward of ``tests.reference.model.RefModel``. Ties at the top-n boundary go to the
lower position (stable sort); the run records how close every decision was (``DreamDiagnostics``) so a test can
assert the path is well conditioned for a float32 implementation.

``torch_linspace_f32`` mirrors torch's CPU linspace kernel for float32: step = (end - start) / (n - 1) and value
i = start + i * step for i < n // 2, end - (n - 1 - i) * step otherwise, every operation rounded to float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tests.reference.model import shift_logits, softmax


def torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    f = np.float32
    if n == 1:
        return np.array([f(start)], dtype=np.float32)
    a, b = f(start), f(end)
    step = f(f(b - a) / f(n - 1))
    vals = []
    for i in range(n):
        vals.append(f(a + f(step * f(i))) if i < n // 2 else f(b - f(step * f(n - 1 - i))))
    return np.asarray(vals, dtype=np.float32)


def transfer_count(num_mask: int, t: np.float32, s: np.float32, last: bool) -> int:
    """Dream's `int(num_mask_token * (1 - s / t))` in float32 (all remaining on the last step)."""
    f = np.float32
    if last:
        return int(num_mask)
    return int(f(f(num_mask) * f(f(1.0) - f(s / t))))


def count_sequence(n_tokens: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Dream's per-step transfer counts for n_tokens masks (every step commits exactly its count)."""
    ts = torch_linspace_f32(1.0, eps, steps + 1)
    left, out = n_tokens, []
    for i in range(steps):
        k = transfer_count(left, ts[i], ts[i + 1], i == steps - 1)
        out.append(k)
        left -= k
    return out


@dataclass
class DreamDiagnostics:
    min_argmax_gap: float = math.inf  # top-1 minus top-2 logit (mask id excluded) at committed positions
    min_rank_gap: float = math.inf  # score gap at the top-n boundary
    n_steps: int = 0

    def assert_well_conditioned(self, logit_tol: float = 1e-3, score_tol: float = 1e-4) -> None:
        assert self.min_argmax_gap > logit_tol, f"argmax near-tie in the reference path: {self}"
        assert self.min_rank_gap > score_tol, f"score near-tie at a top-n boundary: {self}"


def dream_scores(logits: np.ndarray, mask_id: int, alg: str):
    """(x0, score, argmax logit gap) for masked-position logits [M, V] (float64)."""
    logits = np.asarray(logits, dtype=np.float64)
    allowed = np.arange(logits.shape[-1]) != mask_id
    guarded = np.where(allowed, logits, -np.inf)
    x0 = np.argmax(guarded, axis=-1)
    top2 = np.sort(guarded, axis=-1)[:, -2:]
    probs = softmax(logits, axis=-1)
    if alg == "maskgit_plus":
        score = np.take_along_axis(probs, x0[:, None], axis=-1)[:, 0]
    elif alg == "topk_margin":
        sp = np.sort(probs, axis=-1)[:, ::-1]
        score = sp[:, 0] - sp[:, 1]
    elif alg == "entropy":
        score = np.sum(probs * np.log(probs + 1e-10), axis=-1)
    else:
        raise ValueError(f"unsupported alg {alg!r} (greedy reference: maskgit_plus, topk_margin, entropy)")
    return x0, score, top2[:, 1] - top2[:, 0]


def dream_generate(model, prompt, gen_length: int, steps: int, alg: str, eps: float = 1e-3,
                   diag: DreamDiagnostics | None = None):
    """Dream's `_sample` loop for one prompt. Returns (generated tokens [gen_length], number of forwards)."""
    diag = diag if diag is not None else DreamDiagnostics()
    mask_id = model.mask_id
    prompt = np.asarray(prompt, dtype=np.int64).reshape(-1)
    x = np.concatenate([prompt, np.full(gen_length, mask_id, dtype=np.int64)])
    ts = torch_linspace_f32(1.0, eps, steps + 1)
    nfe = 0
    for i in range(steps):
        mask_index = x == mask_id
        logits = shift_logits(np.asarray(model(x[None]))[0])
        nfe += 1
        idx = np.flatnonzero(mask_index)
        x0, score, gap = dream_scores(logits[idx], mask_id, alg)
        n = transfer_count(idx.size, ts[i], ts[i + 1], i == steps - 1)
        diag.n_steps += 1
        if n <= 0:
            continue
        order = np.argsort(-score, kind="stable")
        chosen = order[:n]
        if n < idx.size:
            diag.min_rank_gap = min(diag.min_rank_gap, float(score[order[n - 1]] - score[order[n]]))
        diag.min_argmax_gap = min(diag.min_argmax_gap, float(np.min(gap[chosen])))
        x[idx[chosen]] = x0[chosen]
    return x[prompt.size:].copy(), nfe
