"""numpy reference of Dream's `diffusion_generate` at temperature 0, written from the official code.

Source: `generation_utils.py` of Dream-org/Dream-v0-*-7B (vendored in NVlabs/Fast-dLLM `dream/model/`):
`DreamGenerationMixin._sample` and `sample_tokens`; decoding.md §6.1. Not derived from jdllm. Batched like the
official code: prompts left-padded with the pad id (attention mask 0), `gen_length` masks appended, one forward
per step over the whole canvas:

    timesteps = torch.linspace(1, eps, steps + 1)                                  (float32)
    for i in range(steps):
        mask_index = x == mask
        logits = model(x, attention_mask, tok_idx); logits = cat([logits[:, :1], logits[:, :-1]], 1)
        mask_logits = logits[mask_index]                       (row-major over the whole batch)
        t, s = timesteps[i], timesteps[i + 1]
        "origin": p = 1 - s / t if i < steps - 1 else 1; x0 = [mask] * n_masked;
                  transfer = torch.rand(n_masked) < p; x0[transfer] = argmax of softmax(mask_logits[transfer])
                  x[mask_index] = x0
        else:     probs = softmax(mask_logits); confidence, x0 = probs.max(-1)
                  "topk_margin": confidence = sorted(probs)[0] - sorted(probs)[1]
                  "entropy":     confidence = sum(probs * log(probs + 1e-10))
                  num_mask_token = mask_index.sum() / batch                       (float32: the batch mean)
                  n = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
                  full_confidence = -inf except confidence at masks; x[b, topk(full_confidence[b], n)] = x0

All arithmetic after the forward is float32, as torch does for a float32 model. The forward is the float64
``tests.reference.model.RefModel`` rounded to float32 logits. Its pad positions get RoPE position 0 where Dream's
`tok_idx` gives them 1; pads are masked out as keys, so no non-pad output depends on it. "origin" draws
`torch.rand`: the caller passes the draws (``rand(step, mask_index) -> float32[n_masked]``), so the formula is
checked exactly against any stream. Ties at the top-n boundary go to the lower position (``torch.topk`` leaves
them unspecified); ``DreamDiagnostics`` records how close every decision was so that a test can require a well
conditioned path.

``torch_linspace_f32`` is computed independently of any float code: torch's CPU kernel evaluates
``start + step * i`` (i < n // 2) and ``end - step * (n - 1 - i)`` (otherwise) with one rounding (a fused
multiply-add), step = (end - start) / (n - 1) in float32; here the exact rational value is rounded once to
float32 (round half to even). Checked against torch 2.13 CPU for n = 2 .. 600 and random eps; pinned by a table
of torch-produced values in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import numpy as np

F32 = np.float32
ENTROPY_EPS = F32(1e-10)


def round_to_f32(q: Fraction) -> np.float32:
    """The float32 nearest to the rational q (ties to even), with no intermediate rounding."""
    if q == 0:
        return F32(0.0)
    sign, q = (-1 if q < 0 else 1), abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()  # 2**e <= q < 2**(e + 2)
    if Fraction(2) ** e > q:
        e -= 1
    elif Fraction(2) ** (e + 1) <= q:
        e += 1
    e = max(e, -126)  # subnormals share the exponent of the smallest normal
    mantissa = round(q / Fraction(2) ** (e - 23))  # 24 significant bits; round() on a Fraction: half to even
    return F32(sign * mantissa * 2.0 ** (e - 23))


def torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n) for float32 on CPU (see the module docstring)."""
    a, b = F32(start), F32(end)
    if n == 1:
        return np.array([a], dtype=np.float32)
    step = Fraction(float(F32(F32(b - a) / F32(n - 1))))
    a, b = Fraction(float(a)), Fraction(float(b))
    vals = [round_to_f32(a + step * i) if i < n // 2 else round_to_f32(b - step * (n - 1 - i)) for i in range(n)]
    return np.asarray(vals, dtype=np.float32)


def transfer_count(num_mask_token: np.float32, t: np.float32, s: np.float32, last: bool) -> int:
    """`int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)` in float32."""
    if last:
        return int(num_mask_token)
    return int(F32(num_mask_token * F32(F32(1.0) - F32(s / t))))


def count_sequence(n_tokens: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Tokens committed per step for n_tokens masks per row (every step commits exactly its count)."""
    ts = torch_linspace_f32(1.0, eps, steps + 1)
    left, out = n_tokens, []
    for i in range(steps):
        k = transfer_count(F32(left), ts[i], ts[i + 1], i == steps - 1)
        out.append(k)
        left -= k
    return out


def softmax_f32(logits: np.ndarray) -> np.ndarray:
    """torch.softmax in float32: exp(x - max) / sum."""
    logits = np.asarray(logits, dtype=np.float32)
    e = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def sample_tokens_greedy(mask_logits: np.ndarray, alg: str) -> tuple[np.ndarray, np.ndarray]:
    """`sample_tokens` at temperature 0 without top-p / top-k: (confidence [M], x0 [M]), float32."""
    probs = softmax_f32(mask_logits)
    x0 = np.argmax(probs, axis=-1)
    confidence = np.max(probs, axis=-1)
    if alg == "topk_margin":
        top = -np.sort(-probs, axis=-1)
        confidence = top[:, 0] - top[:, 1]
    elif alg == "entropy":
        confidence = np.sum(probs * np.log(probs + ENTROPY_EPS), axis=-1, dtype=np.float32)
    elif alg != "maskgit_plus":
        raise ValueError(f"alg must be maskgit_plus, topk_margin or entropy here, got {alg!r}")
    return confidence.astype(np.float32), x0


@dataclass
class DreamDiagnostics:
    min_argmax_gap: float = math.inf  # top-1 minus top-2 probability at every committed position
    min_rank_gap: float = math.inf  # score gap at each row's top-n boundary
    committed_mask: bool = False  # the official argmax chose the mask id at a committed position

    def assert_well_conditioned(self, prob_tol: float = 1e-4, score_tol: float = 1e-5) -> None:
        assert not self.committed_mask, "the official argmax chose the mask id (jdllm never proposes it)"
        assert self.min_argmax_gap > prob_tol, f"argmax near-tie in the reference path: {self}"
        assert self.min_rank_gap > score_tol, f"score near-tie at a top-n boundary: {self}"


@dataclass
class DreamRun:
    tokens: np.ndarray  # [B, gen_length]
    nfe: int  # forwards the official loop runs (always `steps`)
    forwards_until_done: list = field(default_factory=list)  # per row: forwards until no mask was left
    diag: DreamDiagnostics = field(default_factory=DreamDiagnostics)


def left_padded_canvas(prompts, gen_length: int, pad_id: int, mask_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(x [B, P + gen_length], attention_mask [B, P + gen_length]) with prompts left-padded to P."""
    width = max(len(p) for p in prompts)
    x = np.full((len(prompts), width + gen_length), mask_id, dtype=np.int64)
    attn = np.ones_like(x)
    for b, p in enumerate(prompts):
        x[b, : width - len(p)] = pad_id
        attn[b, : width - len(p)] = 0
        x[b, width - len(p): width] = p
    return x, attn


def dream_sample(model, prompts, gen_length: int, steps: int, alg: str, eps: float = 1e-3, pad_id: int = 0,
                 rand: Callable[[int, np.ndarray], np.ndarray] | None = None) -> DreamRun:
    """Dream's `_sample` at temperature 0, alg_temp 0 / None, for a batch of prompts (see the module docstring)."""
    if alg == "origin" and rand is None:
        raise ValueError("alg='origin' needs rand(step, mask_index) -> float32 uniforms, one per masked position")
    mask_id = model.mask_id
    x, attn = left_padded_canvas(prompts, gen_length, pad_id, mask_id)
    batch, width = len(prompts), x.shape[1] - gen_length
    ts = torch_linspace_f32(1.0, eps, steps + 1)
    diag = DreamDiagnostics()
    until_done = [0] * batch
    for i in range(steps):
        mask_index = x == mask_id
        for b in range(batch):
            until_done[b] += bool(mask_index[b].any())
        logits = np.asarray(model(x, attn), dtype=np.float64).astype(np.float32)
        logits = np.concatenate([logits[:, :1], logits[:, :-1]], axis=1)
        mask_logits = logits[mask_index]
        t, s, last = ts[i], ts[i + 1], i == steps - 1
        if alg == "origin":
            _origin_step(x, mask_index, mask_logits, rand(i, mask_index), t, s, last, mask_id, diag)
            continue
        confidence, x0 = sample_tokens_greedy(mask_logits, alg)
        num_mask_token = F32(F32(mask_index.sum()) / F32(batch))
        n = transfer_count(num_mask_token, t, s, last)
        full_x0 = np.full(x.shape, mask_id, dtype=np.int64)
        full_x0[mask_index] = x0
        full_confidence = np.full(x.shape, -np.inf, dtype=np.float32)
        full_confidence[mask_index] = confidence
        probs = softmax_f32(logits)
        for b in range(batch):
            if n <= 0:
                continue
            order = np.argsort(-full_confidence[b], kind="stable")
            chosen = order[:n]
            if n < x.shape[1] and np.isfinite(full_confidence[b, order[n]]):
                diag.min_rank_gap = min(diag.min_rank_gap,
                                        float(full_confidence[b, order[n - 1]]) - float(full_confidence[b, order[n]]))
            _note_argmax(diag, probs[b, chosen], full_x0[b, chosen], mask_id)
            x[b, chosen] = full_x0[b, chosen]
    return DreamRun(tokens=x[:, width:].copy(), nfe=steps, forwards_until_done=until_done, diag=diag)


def _origin_step(x, mask_index, mask_logits, u, t, s, last, mask_id, diag) -> None:
    p_transfer = F32(1.0) if last else F32(F32(1.0) - F32(s / t))
    u = np.asarray(u, dtype=np.float32)
    if u.shape != (int(mask_index.sum()),):
        raise ValueError(f"rand must give one uniform per masked position ({int(mask_index.sum())}), got {u.shape}")
    transfer = u < p_transfer
    x0 = np.full(u.shape, mask_id, dtype=np.int64)
    probs = softmax_f32(mask_logits[transfer])
    x0[transfer] = np.argmax(probs, axis=-1)
    _note_argmax(diag, probs, x0[transfer], mask_id)
    x[mask_index] = x0


def _note_argmax(diag: DreamDiagnostics, probs: np.ndarray, x0: np.ndarray, mask_id: int) -> None:
    if probs.size == 0:
        return
    top = -np.sort(-probs, axis=-1)
    diag.min_argmax_gap = min(diag.min_argmax_gap, float(np.min(top[:, 0] - top[:, 1])))
    diag.committed_mask |= bool(np.any(x0 == mask_id))


def sample_tokens_confidence(logits: np.ndarray, x0: np.ndarray, temperature: float, alg: str) -> np.ndarray:
    """`sample_tokens`' confidence for given draws x0 [M] at temperature T >= 0 (no top-p / top-k), float32:
    probs = softmax(logits / T) (softmax(logits) at T = 0); p(x0), p(1) - p(2) or sum p log(p + 1e-10)."""
    logits = np.asarray(logits, dtype=np.float32)
    probs = softmax_f32(logits / F32(temperature) if temperature > 0 else logits)
    if alg == "maskgit_plus":
        return np.take_along_axis(probs, np.asarray(x0)[..., None], axis=-1)[..., 0]
    if alg == "topk_margin":
        top = -np.sort(-probs, axis=-1)
        return top[..., 0] - top[..., 1]
    if alg == "entropy":
        return np.sum(probs * np.log(probs + ENTROPY_EPS), axis=-1, dtype=np.float32)
    raise ValueError(f"alg must be maskgit_plus, topk_margin or entropy, got {alg!r}")
