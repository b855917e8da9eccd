"""Per-position proposals and scores from one step's window logits.

LLaDA (arXiv 2502.09992) `generate.py`: the proposed token is argmax(logits + T * Gumbel) (a sample from
softmax(logits / T); T = 0 is greedy and draws no noise), and its confidence is the *untempered* softmax
probability of that token. Dream (arXiv 2508.15487) also scores by margin and negative entropy. Everything is
float32; unused scores are removed by XLA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int


@struct.dataclass
class Proposal:
    tokens: Int[Array, "B W"]          # proposed token per window position
    confidence: Float[Array, "B W"]    # softmax(logits)[token]
    neg_entropy: Float[Array, "B W"]   # sum_v p log p (higher = surer)
    margin: Float[Array, "B W"]        # p(1) - p(2)
    log_probs: Float[Array, "B W V"]   # log softmax of the (guided) logits, for rules that need the law


def gumbel_noise(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Per-row float32 Gumbel(0, 1) noise; `keys` holds one key per row."""
    return jax.vmap(lambda k: jax.random.gumbel(k, shape, jnp.float32))(keys)


def propose(logits: Float[Array, "B W V"], temperature: float, keys: jax.Array | None, mask_id: int) -> Proposal:
    """Token and scores per position. `temperature` is static: 0 means greedy (no noise drawn).

    The mask token itself is never proposed (committing it would be a no-op that can stall a block); the
    confidence is still the full softmax probability of the proposed token.
    """
    logits = logits.astype(jnp.float32)
    not_mask = jnp.arange(logits.shape[-1]) != mask_id
    if temperature > 0:
        noisy = logits + temperature * gumbel_noise(keys, logits.shape[1:])
        tokens = jnp.argmax(jnp.where(not_mask, noisy, -jnp.inf), axis=-1)
    else:
        tokens = jnp.argmax(jnp.where(not_mask, logits, -jnp.inf), axis=-1)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.exp(log_probs)
    confidence = jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
    top2 = jax.lax.top_k(probs, 2)[0]
    return Proposal(
        tokens=tokens.astype(jnp.int32),
        confidence=confidence,
        neg_entropy=jnp.sum(probs * log_probs, axis=-1),
        margin=top2[..., 0] - top2[..., 1],
        log_probs=log_probs,
    )
