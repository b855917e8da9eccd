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


def propose_sharded(logits: Float[Array, "B W V"], temperature: float, keys: jax.Array | None, mask_id: int,
                    mesh, batch_axes, vocab_axes: tuple[str, ...]) -> Proposal:
    """`propose` over vocab-sharded logits without ever gathering `[B, W, V]`.

    Logits stay sharded over `vocab_axes` (the LM head's vocab sharding: each device computed its own vocab
    slice); inside a `shard_map` every device reduces its slice (max / argmax / sum exp / entropy sum / top-2)
    and the partial results are combined with `pmax` / `pmin` / `psum` (no gather at all). Tokens are exactly
    those of `propose` (argmax ties go to the lowest id, as `jnp.argmax`); scores equal it up to float
    summation order. Gumbel noise is drawn at full shape outside the `shard_map` with the
    same keys, so (threefry being partitionable) each device gets the slice one device would have drawn.
    """
    from jax.sharding import NamedSharding, PartitionSpec as P

    vocab = logits.shape[-1]
    n_shards = 1
    for a in vocab_axes:
        n_shards *= mesh.shape[a]
    if vocab % n_shards or vocab // n_shards < 2:
        raise ValueError(f"vocab size {vocab} cannot be split into {n_shards} slices of >= 2 ids over mesh axes {vocab_axes}")
    spec3, spec2 = P(batch_axes, None, vocab_axes), P(batch_axes, None)
    logits = jax.lax.with_sharding_constraint(logits.astype(jnp.float32), NamedSharding(mesh, spec3))
    if temperature > 0:
        noisy = logits + temperature * gumbel_noise(keys, logits.shape[1:])
        noisy = jax.lax.with_sharding_constraint(noisy, NamedSharding(mesh, spec3))
    else:
        noisy = logits

    def local(logits, noisy):
        v_local = logits.shape[-1]
        ids = jax.lax.axis_index(vocab_axes) * v_local + jnp.arange(v_local)
        masked = jnp.where(ids != mask_id, noisy, -jnp.inf)
        local_max = jnp.max(masked, axis=-1)
        best = jax.lax.pmax(local_max, vocab_axes)
        local_arg = ids[jnp.argmax(masked, axis=-1)]
        tokens = jax.lax.pmin(jnp.where(local_max == best, local_arg, vocab), vocab_axes)
        # log_softmax as jax.nn.log_softmax computes it, with the max and the sum of exps combined across shards.
        x_max = jax.lax.pmax(jnp.max(logits, axis=-1, keepdims=True), vocab_axes)
        shifted = logits - x_max
        log_probs = shifted - jnp.log(jax.lax.psum(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True), vocab_axes))
        probs = jnp.exp(log_probs)
        confidence = jax.lax.psum(jnp.sum(jnp.where(ids == tokens[..., None], probs, 0.0), axis=-1), vocab_axes)
        neg_entropy = jax.lax.psum(jnp.sum(probs * log_probs, axis=-1), vocab_axes)
        # Top-2 of the union: the first is the largest local first; the second is the largest of the other
        # shards' firsts and the winning shard's second (the winner: the lowest shard holding the first).
        top2 = jax.lax.top_k(probs, 2)[0]
        first = jax.lax.pmax(top2[..., 0], vocab_axes)
        shard = jax.lax.axis_index(vocab_axes)
        winner = jax.lax.pmin(jnp.where(top2[..., 0] == first, shard, n_shards), vocab_axes)
        second = jax.lax.pmax(jnp.where(shard == winner, top2[..., 1], top2[..., 0]), vocab_axes)
        return tokens.astype(jnp.int32), confidence, neg_entropy, first - second, log_probs

    tokens, confidence, neg_entropy, margin, log_probs = jax.shard_map(
        local, mesh=mesh, in_specs=(spec3, spec3), out_specs=(spec2, spec2, spec2, spec2, spec3)
    )(logits, noisy)
    return Proposal(tokens=tokens, confidence=confidence, neg_entropy=neg_entropy, margin=margin, log_probs=log_probs)
