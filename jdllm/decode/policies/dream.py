"""Dream's `diffusion_generate` sampling algorithms (arXiv 2508.15487; `generation_utils.py` of
Dream-org/Dream-v0-*-7B, `DreamGenerationMixin._sample` and `sample_tokens`; decoding.md §6.1), with Dream's own
step schedule.

Dream runs `steps` steps over one global window (all `gen_length` generated positions) with timesteps
t_i = torch.linspace(1, eps, steps + 1) (float32, as torch's CPU kernel computes it: `torch_linspace_f32`) and,
at step i (t = t_i, s = t_{i+1}):

- "maskgit_plus" / "topk_margin" / "entropy": score every masked position by `sample_tokens`' confidence: the
  probability of the proposed token / top-1 minus top-2 probability / sum p log(p + 1e-10) (the epsilon as in
  the official code), all from the probabilities Dream samples from, softmax(logits / T) at temperature T > 0
  and softmax(logits) at T = 0; then commit the top n_i = int(n_masked * (1 - s / t)) (float32 arithmetic,
  truncated; all remaining masks on the last step), or, with alg_temp > 0, n_i positions drawn without
  replacement from softmax(score / alg_temp) (Gumbel-top-k, the same law as `torch.multinomial`);
- "origin": every masked position is committed independently when a uniform draw is below 1 - s / t (float32;
  1 on the last step), drawn from the row's key (`fold_in(step key, 3)`, one uniform per window position).

The temperature is the decode's own (`StepContext.temperature`, static), so the scores can never disagree with
the sampler; the tempered probabilities are recomputed from `proposal.log_probs` (softmax is invariant to the
per-row shift between logits and log-probabilities), which leaves `propose` and every other policy untouched.

Use it with block_length = gen_length, so that `ctx.step_in_block` is Dream's step index. For the top-n
algorithms the number of masks before each step is a deterministic function of (gen_length, steps, eps) (every
step commits exactly n_i), so the whole count sequence is precomputed on the host (`counts`). Dream computes the
count from the batch mean of the mask counts (`mask_index.sum() / batch`); every row has the same count at every
step, so the per-row and batch counts agree. E.g. (N=8, steps=8): 0, 1, 1, 1, 1, 1, 1, 2; (N=8, steps=4):
1, 2, 2, 3.

Deviations: the proposal never proposes the mask id (Dream's argmax / sample may; it then leaves that position
masked); only the generated window is decoded (Dream would also fill mask ids inside a prompt); no top-p / top-k
filter (jdllm has none); the proposal's random stream is jdllm's (Gumbel noise per row), not torch's; with
"origin", jdllm ends a row as soon as no mask is left (Dream keeps running no-op forwards until `steps`), which
lowers the NFE count, never changes the tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jdllm.decode.policies.base import CommitPolicy, commit_top
from jdllm.decode.proposal import Proposal

ALGS = ("maskgit_plus", "topk_margin", "entropy", "origin")
ENTROPY_EPS = 1e-10  # `sample_tokens`: log(probs + epsilon)


def _round_sum_to_f32(a: float, b: float) -> np.float32:
    """float32(a + b) rounded once from the exact sum (as a fused multiply-add rounds), via float64.

    The float64 sum s misses the exact sum by err (TwoSum). Rounding s to float32 is correct unless s lies
    exactly halfway between two float32s while err != 0; then the exact sum is on err's side of that midpoint.
    """
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    nearest = np.float32(s)
    if err != 0:
        for neighbour in (np.nextafter(nearest, np.float32(np.inf)), np.nextafter(nearest, np.float32(-np.inf))):
            if s == (float(nearest) + float(neighbour)) / 2:
                return np.float32(np.nextafter(s, np.inf if err > 0 else -np.inf))
    return nearest


def torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n) in float32 as torch's CPU kernel computes it.

    step = (end - start) / (n - 1) in float32; value i = start + step * i for i < n // 2 and
    end - step * (n - 1 - i) otherwise, each with a single rounding (the kernel's fused multiply-add; rounding
    the product first differs, e.g. at indices 14, 18, 25, ... of linspace(1, 1e-3, 49)). The product of a
    float32 and an integer below 2**29 is exact in float64.
    """
    if not 1 <= n < 2**29:
        raise ValueError(f"linspace needs 1 <= n < 2**29 points, got {n}")
    start32, end32 = np.float32(start), np.float32(end)
    if n == 1:
        return np.array([start32], np.float32)
    step = float(np.float32((end32 - start32) / np.float32(n - 1)))
    half = n // 2
    values = [_round_sum_to_f32(float(start32), step * i) if i < half
              else _round_sum_to_f32(float(end32), -step * (n - 1 - i)) for i in range(n)]
    return np.asarray(values, np.float32)


def dream_transfer_probs(steps: int, eps: float) -> tuple[float, ...]:
    """1 - s / t per step in float32 (the "origin" transfer probability; 1 on the last step)."""
    ts = torch_linspace_f32(1.0, eps, steps + 1)
    probs = [float(np.float32(1) - np.float32(ts[i + 1] / ts[i])) for i in range(steps)]
    probs[-1] = 1.0
    return tuple(probs)


def dream_counts(n_tokens: int, steps: int, eps: float = 1e-3) -> tuple[int, ...]:
    """Tokens committed at each of Dream's steps for a fully masked window of n_tokens (top-n algorithms)."""
    ts = torch_linspace_f32(1.0, eps, steps + 1)
    left, out = n_tokens, []
    for i in range(steps):
        if i < steps - 1:
            ratio = np.float32(np.float32(1) - np.float32(ts[i + 1] / ts[i]))
            k = int(np.float32(np.float32(left) * ratio))
        else:
            k = left
        out.append(k)
        left -= k
    return tuple(out)


def dream_probs(proposal: Proposal, temperature: float) -> Float[Array, "B W V"]:
    """The probabilities `sample_tokens` scores with: softmax(logits / T) for T > 0, softmax(logits) at T = 0."""
    log_probs = proposal.log_probs.astype(jnp.float32)
    if temperature > 0:
        return jax.nn.softmax(log_probs / temperature, axis=-1)
    return jnp.exp(log_probs)


def dream_confidence(proposal: Proposal, alg: str, temperature: float) -> Float[Array, "B W"]:
    """`sample_tokens`' confidence of each position: p(x0) ("maskgit_plus"), p(1) - p(2) ("topk_margin") or
    sum p log(p + 1e-10) ("entropy"), from `dream_probs` (float32)."""
    probs = dream_probs(proposal, temperature)
    if alg == "maskgit_plus":
        return jnp.take_along_axis(probs, proposal.tokens[..., None], axis=-1)[..., 0]
    if alg == "topk_margin":
        top2 = jax.lax.top_k(probs, 2)[0]
        return top2[..., 0] - top2[..., 1]
    if alg == "entropy":
        return jnp.sum(probs * jnp.log(probs + jnp.float32(ENTROPY_EPS)), axis=-1)
    raise ValueError(f"alg must be one of {ALGS[:3]} to have a confidence, got {alg!r}")


@dataclasses.dataclass(frozen=True)
class DreamAlgorithm(CommitPolicy):
    """Dream's `_sample` for `alg` in ALGS over one global window of `gen_length` positions (module docstring)."""

    alg: str = "entropy"
    steps: int = 512
    gen_length: int = 512
    eps: float = 1e-3
    alg_temp: float | None = 0.0
    counts: tuple = dataclasses.field(init=False, repr=False)
    transfer_probs: tuple = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        if self.alg not in ALGS:
            raise ValueError(f"alg must be one of {ALGS}, got {self.alg!r}")
        for name in ("steps", "gen_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {self.eps!r}")
        if self.alg_temp is not None and not self.alg_temp >= 0:
            raise ValueError(f"alg_temp must be None or a number >= 0, got {self.alg_temp!r}")
        object.__setattr__(self, "counts", dream_counts(self.gen_length, self.steps, self.eps))
        object.__setattr__(self, "transfer_probs", dream_transfer_probs(self.steps, self.eps))

    def select(self, proposal, candidates, ctx, state):
        width = candidates.shape[-1]
        if width != self.gen_length:
            raise ValueError(
                f"DreamAlgorithm(gen_length={self.gen_length}) schedules one global window; got a window of width "
                f"{width}: use block_length = gen_length = {self.gen_length}"
            )
        step = jnp.minimum(ctx.step_in_block, self.steps - 1)
        last = ctx.step_in_block >= self.steps - 1
        if self.alg == "origin":
            p = jnp.asarray(self.transfer_probs, jnp.float32)[step]
            u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 3), (width,)))(ctx.keys)
            return candidates & ((u < p[:, None]) | last[:, None]), state
        n_cand = jnp.sum(candidates, axis=-1)
        count = jnp.where(last, n_cand, jnp.asarray(self.counts, jnp.int32)[step])
        score = dream_confidence(proposal, self.alg, ctx.temperature)
        if self.alg_temp:
            g = jax.vmap(lambda k: jax.random.gumbel(jax.random.fold_in(k, 4), (width,), jnp.float32))(ctx.keys)
            score = score / self.alg_temp + g
        return commit_top(score, candidates, count), state
