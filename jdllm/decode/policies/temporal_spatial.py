"""Temporal-spatial parallel decoding with confidence extrapolation: a RECONSTRUCTION of TSPD + CE
("Efficient Diffusion LLMs via Temporal-Spatial Parallel Decoding and Confidence Extrapolation", arXiv
2605.30753, ICML 2026; decoding.md §5).

What is public: the abstract only (no paper body, code or hyper-parameters). It says that decoding is a control
problem over token-wise denoising trajectories; (1) TSPD, a lightweight temporal-spatial controller fed with
per-token trajectory features (confidence, entropy, momentum) and token position, decides when a token has
converged and can be fixed; (2) CE, a training-free state-space module, forecasts future logit trends with
uncertainty, enabling "safe look-ahead" commits and "targeted stabilisation" of oscillatory or under-confident
trajectories; it composes with KV caching.

What this file implements (a design consistent with the abstract, NOT the authors' method; every constant is a
placeholder to be tuned):

- Trajectory state per window position ([B, W] arrays, reset at block start, frozen for idle rows): the last
  proposed token, its confidence, the number of consecutive steps it has been proposed (`age`), and a
  local-linear-trend Kalman filter on z = logit(confidence): state (level, slope), covariance P (2x2, stored as
  P00, P01, P11), transition [[1, 1], [0, 1]], process noise diag(q_level, q_slope), observation noise
  `obs_noise`. A new trajectory (first observation, or the proposed token changed: a "flip") restarts the filter
  at level = z, slope = 0, P = diag(obs_noise, init_slope_var).
- CE forecast `horizon` steps ahead of the latent level: mu = level + H slope, var = P00 + 2H P01 + H^2 P11 +
  H q_level + q_slope sum_{k<H} k^2.
- Safe look-ahead: commit a candidate whose trajectory has >= `min_obs` observations of the same token, did not
  flip this step, and whose forecast lower bound clears the target, mu - kappa sqrt(var) >= logit(tau), even if
  its confidence is still below tau.
- Targeted stabilisation (hold): never commit this step a candidate whose token just flipped (`hold_on_flip`)
  or whose filter innovation is a surprise, nu^2 > hold_sigma^2 S (S = innovation variance): oscillating
  trajectories keep refining.
- TSPD sensor: training-free stand-in = confidence >= tau (the Fast-dLLM threshold); or, when `controller` is
  given, a learned per-position score controller(features) >= controller_tau (see below).
- commit = (sensor | look-ahead) & ~hold; a row left with no commit commits its most confident candidate
  (even if held), so every step makes progress.

Hook for the learned controller (the paper's TSPD sensor): `controller` is a pure, jit-traceable callable
features [B, W, F] float32 -> scores [B, W] in [0, 1] (for instance a small MLP whose weights are closed over
as constants; it must be hashable, as the policy is a static jit argument). The F = len(FEATURES) features, in
the order of `TemporalSpatial.FEATURES`, are: confidence, entropy, momentum (confidence minus the previous
step's when the token did not change, else 0), flip (0/1), age, relative position in the window (i / W),
distance to the nearest decoded position of the window divided by W (1 when none), the CE forecast mean mu and
its standard deviation. Training it (self-supervised labels "current token == final token", as in Learn2PD /
TraceLock) is not part of jdllm yet.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax.numpy as jnp

from jdllm.decode.policies.base import CommitPolicy
from jdllm.decode.policies.rowstate import fallback_top1, live_rows, reset_rows, where_rows


def _logit(p, eps):
    p = jnp.clip(p, eps, 1.0 - eps)
    return jnp.log(p) - jnp.log1p(-p)


@dataclasses.dataclass(frozen=True)
class TemporalSpatial(CommitPolicy):
    tau: float = 0.9
    horizon: int = 2
    kappa: float = 1.0
    q_level: float = 0.05
    q_slope: float = 0.01
    obs_noise: float = 0.1
    init_slope_var: float = 1.0
    min_obs: int = 2
    hold_sigma: float = 3.0
    hold_on_flip: bool = True
    controller: Callable | None = None
    controller_tau: float = 0.5
    eps: float = 1e-6

    FEATURES = ("confidence", "entropy", "momentum", "flip", "age", "position", "distance", "forecast_mean",
                "forecast_std")

    def __post_init__(self):
        if not 0.0 < self.tau < 1.0:
            raise ValueError(f"tau must lie in (0, 1), got {self.tau}")
        if self.horizon < 0 or self.min_obs < 1:
            raise ValueError("horizon must be >= 0 and min_obs >= 1")
        if min(self.q_level, self.q_slope) < 0 or self.obs_noise <= 0 or self.init_slope_var < 0:
            raise ValueError("noise variances must be non-negative (obs_noise > 0)")

    def init_state(self, batch, width, config=None):
        z = lambda dt=jnp.float32: jnp.zeros((batch, width), dt)  # noqa: E731
        return dict(token=jnp.full((batch, width), -1, jnp.int32), conf=z(), age=z(jnp.int32), level=z(),
                    slope=z(), p00=z(), p01=z(), p11=z())

    def forecast(self, st):
        h = float(self.horizon)
        mu = st["level"] + h * st["slope"]
        var = (st["p00"] + 2 * h * st["p01"] + h * h * st["p11"] + h * self.q_level
               + self.q_slope * sum(k * k for k in range(self.horizon)))
        return mu, jnp.sqrt(jnp.maximum(var, 0.0))

    def select(self, proposal, candidates, ctx, state):
        b, w = candidates.shape
        conf, tokens = proposal.confidence.astype(jnp.float32), proposal.tokens
        old = reset_rows(ctx.block_start, state, self.init_state(b, w))
        z = _logit(conf, self.eps)
        seen = old["age"] > 0
        flip = seen & (tokens != old["token"])
        cont = seen & ~flip
        # Kalman predict + update for continuing trajectories
        lvl_p = old["level"] + old["slope"]
        p00 = old["p00"] + 2 * old["p01"] + old["p11"] + self.q_level
        p01 = old["p01"] + old["p11"]
        p11 = old["p11"] + self.q_slope
        s = p00 + self.obs_noise
        nu = z - lvl_p
        k0, k1 = p00 / s, p01 / s
        upd = dict(level=lvl_p + k0 * nu, slope=old["slope"] + k1 * nu, p00=(1 - k0) * p00, p01=(1 - k0) * p01,
                   p11=p11 - k1 * p01)
        fresh = dict(level=z, slope=jnp.zeros_like(z), p00=jnp.full_like(z, self.obs_noise),
                     p01=jnp.zeros_like(z), p11=jnp.full_like(z, self.init_slope_var))
        new = {k: jnp.where(cont, upd[k], fresh[k]) for k in upd}
        new["age"] = jnp.where(cont, old["age"] + 1, 1)
        new["token"] = tokens.astype(jnp.int32)
        new["conf"] = conf
        new = {k: jnp.where(candidates, new[k], old[k]) for k in new}

        mu, sd = self.forecast(new)
        target = math.log(self.tau / (1 - self.tau))
        lookahead = candidates & (new["age"] >= self.min_obs) & ~flip & (mu - self.kappa * sd >= target)
        hold = cont & (nu * nu > self.hold_sigma ** 2 * s)
        if self.hold_on_flip:
            hold = hold | flip
        if self.controller is None:
            sensor = conf >= self.tau
        else:
            feats = self.features(proposal, candidates, old, new, flip, cont, mu, sd)
            sensor = self.controller(feats) >= self.controller_tau
        commit = candidates & (sensor | lookahead) & ~hold
        commit = fallback_top1(commit, conf, candidates)
        state = where_rows(live_rows(candidates), new, state)
        return commit, state

    def features(self, proposal, candidates, old, new, flip, cont, mu, sd):
        """The controller's input [B, W, len(FEATURES)] (float32)."""
        b, w = candidates.shape
        conf = proposal.confidence.astype(jnp.float32)
        idx = jnp.arange(w)
        decoded = ~candidates
        dist = jnp.min(jnp.where(decoded[:, None, :], jnp.abs(idx[:, None] - idx[None, :])[None], w), axis=-1)
        feats = [
            conf,
            -proposal.neg_entropy.astype(jnp.float32),
            jnp.where(cont, conf - old["conf"], 0.0),
            flip.astype(jnp.float32),
            new["age"].astype(jnp.float32),
            jnp.broadcast_to(idx / w, (b, w)).astype(jnp.float32),
            dist.astype(jnp.float32) / w,
            mu,
            sd,
        ]
        return jnp.stack(feats, axis=-1)
