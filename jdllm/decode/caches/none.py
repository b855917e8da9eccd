"""No cache: every step is a full forward over the canvas (LLaDA's reference), with optional
classifier-free guidance (LLaDA `generate.py`: the unconditional copy masks the prompt, logits
u + (s + 1)(c - u)). Only the active window goes through the LM head."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdllm.decode.caches.base import CacheStrategy, full_window_logits, layer_rows


@dataclasses.dataclass(frozen=True)
class NoCache(CacheStrategy):
    cfg_scale: float = 0.0
    name = "none"

    def window_logits(self, model, canvas, window_start, width, cache, refresh, live, steps_since_refresh):
        length = canvas.tokens.shape[1]
        if self.cfg_scale <= 0:
            logits, _ = full_window_logits(model, canvas, window_start, width)
            return logits, cache, live, layer_rows(model, length, live)
        prompt = jnp.arange(canvas.tokens.shape[1])[None, :] < canvas.prompt_len
        uncond = jnp.where(prompt & canvas.valid, model.config.mask_id, canvas.tokens)
        both = canvas.replace(
            tokens=jnp.concatenate([canvas.tokens, uncond]),
            valid=jnp.concatenate([canvas.valid, canvas.valid]),
            positions=jnp.concatenate([canvas.positions, canvas.positions]),
        )
        starts = jnp.concatenate([window_start, window_start])
        logits, _ = full_window_logits(model, both, starts, width)
        cond, unc = jnp.split(logits, 2)
        return unc + (self.cfg_scale + 1.0) * (cond - unc), cache, live, layer_rows(model, 2 * length, live)
