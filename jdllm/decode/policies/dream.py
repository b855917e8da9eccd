"""Dream's `diffusion_generate` sampling algorithms (arXiv 2508.15487; `generation_utils.py` of
Dream-org/Dream-v0-*-7B, `DreamGenerationMixin._sample`; decoding.md §6.1), with Dream's own step schedule.

Dream runs `steps` steps over one global window (all `gen_length` generated positions) with timesteps
t_i = linspace(1, eps, steps + 1) (torch float32) and, at step i (t = t_i, s = t_{i+1}):

- "maskgit_plus" / "topk_margin" / "entropy": score every masked position by its confidence (probability of
  the proposed token) / top-1 minus top-2 probability / negative entropy, and commit the top
  n_i = int(n_masked * (1 - s / t)) (float32 arithmetic, floored; all remaining masks on the last step),
  or, with alg_temp > 0, n_i positions drawn without replacement from softmax(score / alg_temp) (Gumbel-top-k);
- "origin": every masked position is committed independently with probability 1 - s / t (1 on the last step),
  drawn from the row's key.

Use it with block_length = gen_length, so that `ctx.step_in_block` is Dream's step index. For the top-n
algorithms the number of masks before each step is a deterministic function of (gen_length, steps) (every step
commits exactly n_i), so the whole count sequence is precomputed on the host (`counts`), simulating the
reference arithmetic in float32: torch.linspace (values start + i * step for i < n / 2, end - (n - 1 - i) * step
after, step = (end - start) / (n - 1)), then `int(float32(n_masked) * (1 - s / t))`. E.g. (N=8, steps=8): 0, 1,
1, 1, 1, 1, 1, 2; (N=8, steps=4): 1, 2, 2, 3. Dream computes the count from the batch mean of the mask counts;
every row has the same count at every step, so the per-row and batch counts agree.

Deviations: the proposal never proposes the mask id (Dream's argmax may); Dream's entropy adds 1e-10 inside the
log (jdllm's neg_entropy uses exact log-probabilities); with "origin", jdllm ends a row as soon as no mask is
left (Dream keeps running no-op forwards until `steps`), which changes the NFE count, not the tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jdllm.decode.policies.base import CommitPolicy, commit_top

ALGS = ("maskgit_plus", "topk_margin", "entropy", "origin")


def torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n) in float32 (the CPU kernel's two-sided formula)."""
    start32, end32 = np.float32(start), np.float32(end)
    if n == 1:
        return np.array([start32], np.float32)
    step = np.float32((end32 - start32) / np.float32(n - 1))
    half = n // 2
    out = np.empty(n, np.float32)
    for i in range(n):
        if i < half:
            out[i] = np.float32(start32 + np.float32(step * np.float32(i)))
        else:
            out[i] = np.float32(end32 - np.float32(step * np.float32(n - 1 - i)))
    return out


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


@dataclasses.dataclass(frozen=True)
class DreamAlgorithm(CommitPolicy):
    alg: str = "entropy"
    steps: int = 512
    gen_length: int = 512
    eps: float = 1e-3
    alg_temp: float = 0.0
    counts: tuple = dataclasses.field(init=False, repr=False)
    transfer_probs: tuple = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        if self.alg not in ALGS:
            raise ValueError(f"alg must be one of {ALGS}, got {self.alg!r}")
        if self.steps < 1 or self.gen_length < 1:
            raise ValueError(f"steps and gen_length must be >= 1, got {self.steps}, {self.gen_length}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {self.eps}")
        if self.alg_temp is not None and self.alg_temp < 0:
            raise ValueError(f"alg_temp must be >= 0, got {self.alg_temp}")
        object.__setattr__(self, "counts", dream_counts(self.gen_length, self.steps, self.eps))
        object.__setattr__(self, "transfer_probs", dream_transfer_probs(self.steps, self.eps))

    def scores(self, proposal):
        return {"maskgit_plus": proposal.confidence, "topk_margin": proposal.margin,
                "entropy": proposal.neg_entropy}[self.alg].astype(jnp.float32)

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
        score = self.scores(proposal)
        if self.alg_temp:
            g = jax.vmap(lambda k: jax.random.gumbel(jax.random.fold_in(k, 4), (width,), jnp.float32))(ctx.keys)
            score = score / self.alg_temp + g
        return commit_top(score, candidates, count), state
