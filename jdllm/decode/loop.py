"""The denoising loop: one step body, run either inside one `lax.while_loop` under one `jax.jit` (the fast path)
or step by step from Python (the debug twin). Both share `decode_step`, so they cannot drift apart.

Per-row progress is data: `block[B]`, `step_in_block[B]`, `refresh[B]`, `nfe[B]`, `done[B]`. A row that has
finished freezes; the loop ends when every row is done (or at a static iteration bound that a correct policy
never reaches). `nonfinite[B]` records a row whose window logits held a NaN / inf in a step it computed; such a
row stops there (its tokens would be argmaxes of NaN), and `generate` reports it as a model problem.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Bool, Int

from jdllm.decode.caches.base import CacheStrategy
from jdllm.decode.canvas import Canvas, slice_rows, update_rows
from jdllm.decode.policies.base import CommitPolicy, StepContext
from jdllm.decode.proposal import propose
from jdllm.decode.schedules.semi_ar import SemiAutoregressive
from jdllm.decode.sharding import CANVAS_AXES
from jdllm.models.transformer import Transformer, positions_from_mask


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Everything static about a decode: one member of each axis, the temperature and the iteration bound."""

    policy: CommitPolicy
    cache: CacheStrategy
    schedule: SemiAutoregressive
    temperature: float = 0.0
    max_iters: int = 1 << 30
    sharding: Any = None  # a jdllm.decode.sharding.ShardingPlan (mesh + rules) for a sharded decode; None: one device


@struct.dataclass
class DecodeState:
    tokens: Int[Array, "B T"]
    block: Int[Array, "B"]
    step_in_block: Int[Array, "B"]
    refresh: Bool[Array, "B"]       # the row starts a block: cached strategies run their full forward
    nfe: Int[Array, "B"]
    done: Bool[Array, "B"]
    nonfinite: Bool[Array, "B"]     # some window logit of the row was NaN / inf (the row stopped there)
    cache: Any
    policy_state: Any
    iters: Int[Array, ""]


def init_state(spec: DecodeSpec, model: Transformer, canvas: Canvas) -> DecodeState:
    b, length = canvas.tokens.shape
    zeros = jnp.zeros((b,), jnp.int32)
    return _constrain(spec, DecodeState(
        tokens=canvas.tokens,
        block=zeros,
        step_in_block=zeros,
        refresh=jnp.ones((b,), bool),
        nfe=zeros,
        done=jnp.zeros((b,), bool),
        nonfinite=jnp.zeros((b,), bool),
        cache=spec.cache.init(model.config, b, length),
        policy_state=spec.policy.init_state(b, spec.schedule.width, model.config),
        iters=jnp.zeros((), jnp.int32),
    ))


def _constrain(spec: DecodeSpec, st: DecodeState) -> DecodeState:
    """Under a sharded decode, pin the canvas to ('batch', 'seq') and the cache to its logical axes."""
    plan = spec.sharding
    if plan is None:
        return st
    return st.replace(tokens=plan.constrain(st.tokens, CANVAS_AXES, "canvas tokens"),
                      cache=plan.constrain_cache(st.cache))


def decode_step(spec: DecodeSpec, model: Transformer, canvas: Canvas, row_keys: jax.Array, st: DecodeState) -> DecodeState:
    """One denoising iteration for every row: forward (per the cache strategy), propose, commit, advance."""
    if spec.sharding is None:
        return _decode_step(spec, model, canvas, row_keys, st)
    with spec.sharding.activations():  # model activations pinned by the plan's rules
        return _decode_step(spec, model, canvas, row_keys, st)


def _decode_step(spec: DecodeSpec, model: Transformer, canvas: Canvas, row_keys: jax.Array, st: DecodeState) -> DecodeState:
    sched, width, mask_id = spec.schedule, spec.schedule.width, model.config.mask_id
    canvas = canvas.replace_tokens(st.tokens)
    start = canvas.prompt_len + sched.window_offset(st.block)
    live = ~st.done
    logits, cache, active = spec.cache.window_logits(
        model, canvas, start, width, st.cache, st.refresh, live, st.step_in_block
    )
    nonfinite = active & ~jnp.all(jnp.isfinite(logits), axis=(1, 2))
    keys = jax.vmap(jax.random.fold_in)(row_keys, st.nfe)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    if spec.sharding is None:
        proposal = propose(logits, spec.temperature, noise_keys, mask_id)
    else:
        proposal = spec.sharding.propose(logits, spec.temperature, noise_keys, mask_id)
    window = slice_rows(st.tokens, start, width)
    candidates = (window == mask_id) & active[:, None]
    ctx = StepContext(step_in_block=st.step_in_block, block_start=st.step_in_block == 0, keys=keys,
                      temperature=spec.temperature)
    commit, policy_state = spec.policy.select(proposal, candidates, ctx, st.policy_state)
    window = jnp.where(commit & candidates, proposal.tokens, window)
    finished = active & ~jnp.any(window == mask_id, axis=-1)
    block, all_blocks_done, eos_fill = sched.advance(st.block, finished, window, model.config.eos_ids)
    tokens = update_rows(st.tokens, window, start)
    if model.config.eos_id is not None:
        after = jnp.arange(tokens.shape[1])[None, :] >= (start + width)[:, None]
        tokens = jnp.where(eos_fill[:, None] & after, model.config.eos_id, tokens)
    return _constrain(spec, DecodeState(
        tokens=tokens,
        block=block,
        step_in_block=jnp.where(finished, 0, st.step_in_block + active.astype(jnp.int32)),
        refresh=jnp.where(active, finished, st.refresh),
        nfe=st.nfe + active.astype(jnp.int32),
        done=st.done | all_blocks_done | nonfinite,
        nonfinite=st.nonfinite | nonfinite,
        cache=cache,
        policy_state=policy_state,
        iters=st.iters + 1,
    ))


def _setup(graphdef, params, tokens, valid, row_ids, seed, prompt_len):
    model = nnx.merge(graphdef, params)
    canvas = Canvas(tokens, valid, positions_from_mask(valid), prompt_len)
    base = jax.random.key(seed)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(base, r))(row_ids)
    return model, canvas, row_keys


def _keep_going(spec: DecodeSpec, st: DecodeState):
    return jnp.any(~st.done) & (st.iters < spec.max_iters)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "prompt_len"))
def decode(graphdef, params, spec: DecodeSpec, tokens, valid, row_ids, seed, prompt_len: int):
    """The whole generation (all blocks, all steps) as one compiled program. Returns the final state."""
    model, canvas, row_keys = _setup(graphdef, params, tokens, valid, row_ids, seed, prompt_len)
    st = init_state(spec, model, canvas)
    return jax.lax.while_loop(
        lambda s: _keep_going(spec, s), lambda s: decode_step(spec, model, canvas, row_keys, s), st
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "prompt_len"))
def _debug_init(graphdef, params, spec, tokens, valid, row_ids, seed, prompt_len):
    model, canvas, _ = _setup(graphdef, params, tokens, valid, row_ids, seed, prompt_len)
    return init_state(spec, model, canvas)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "prompt_len"))
def _debug_step(graphdef, params, spec, tokens, valid, row_ids, seed, prompt_len, st):
    model, canvas, row_keys = _setup(graphdef, params, tokens, valid, row_ids, seed, prompt_len)
    return decode_step(spec, model, canvas, row_keys, st)


def decode_debug(graphdef, params, spec: DecodeSpec, tokens, valid, row_ids, seed, prompt_len: int):
    """The debug twin: the same `decode_step`, driven by a Python loop (inspect or print between steps)."""
    args = (graphdef, params, spec, tokens, valid, row_ids, seed, prompt_len)
    st = _debug_init(*args)
    while bool(_keep_going(spec, st)):
        st = _debug_step(*args, st)
    return st
