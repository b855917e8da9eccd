"""The denoising loop: one step body, run either inside one `lax.while_loop` under one `jax.jit` (the fast path)
or step by step from Python (the debug twin). Both share `decode_step`, so they cannot drift apart.

The loop only threads state: the schedule's pytree (which window each row works on, when it is done: see
`jdllm.decode.schedules.base`), the cache's, the policy's, and per-row `nfe[B]`, `recomputed[B]`, `done[B]`. A
step runs the cache strategy's forward for each row's window (adding the positions it ran through a layer to
`recomputed`), proposes tokens, lets the policy choose commits per block of the
window (policy rows = batch x schedule slots), lets the schedule restrict them by block stage, and advances the
schedule. A row that has finished freezes; the loop ends when every row is done (or at the schedule's static
iteration bound that a correct policy never reaches). `nonfinite[B]` records a row whose window logits held a
NaN / inf in a step it computed; such a row stops there (its tokens would be argmaxes of NaN), and `generate`
reports it as a model problem.
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
from jdllm.decode.proposal import Proposal, propose
from jdllm.decode.schedules.base import BlockSchedule, Window
from jdllm.decode.sharding import CANVAS_AXES
from jdllm.models.transformer import Transformer, positions_from_mask


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Everything static about a decode: one member of each axis, the temperature and the iteration bound."""

    policy: CommitPolicy
    cache: CacheStrategy
    schedule: BlockSchedule
    temperature: float = 0.0
    max_iters: int = 1 << 30
    sharding: Any = None  # a jdllm.decode.sharding.ShardingPlan (mesh + rules) for a sharded decode; None: one device


@struct.dataclass
class DecodeState:
    tokens: Int[Array, "B T"]
    schedule: Any                   # the schedule's state pytree (per-row block progress)
    nfe: Int[Array, "B"]
    recomputed: Int[Array, "B"]     # positions run through a layer, summed over layers and steps (compute account)
    done: Bool[Array, "B"]
    nonfinite: Bool[Array, "B"]     # some window logit of the row was NaN / inf (the row stopped there)
    cache: Any
    policy_state: Any               # rows = batch x schedule slots
    iters: Int[Array, ""]


def policy_rows(spec: DecodeSpec, batch: int) -> tuple[int, int]:
    """(rows, width) the policy runs on: one row per block of each row's window."""
    return batch * spec.schedule.slots, spec.schedule.block_length


def init_state(spec: DecodeSpec, model: Transformer, canvas: Canvas) -> DecodeState:
    b, length = canvas.tokens.shape
    zeros = jnp.zeros((b,), jnp.int32)
    return _constrain(spec, DecodeState(
        tokens=canvas.tokens,
        schedule=spec.schedule.init(b),
        nfe=zeros,
        recomputed=zeros,
        done=jnp.zeros((b,), bool),
        nonfinite=jnp.zeros((b,), bool),
        cache=spec.cache.init(model.config, b, length),
        policy_state=spec.policy.init_state(*policy_rows(spec, b), model.config),
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
    view = sched.window(st.schedule)
    start = canvas.prompt_len + view.start
    live = ~st.done
    logits, cache, active, recomputed = spec.cache.window_logits(
        model, canvas, start, width, st.cache, view.moved, live, view.steps_since_move
    )
    nonfinite = active & ~jnp.all(jnp.isfinite(logits), axis=(1, 2))
    keys = jax.vmap(jax.random.fold_in)(row_keys, st.nfe)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    if spec.sharding is None:
        proposal = propose(logits, spec.temperature, noise_keys, mask_id)
    else:
        proposal = spec.sharding.propose(logits, spec.temperature, noise_keys, mask_id)
    before = slice_rows(st.tokens, start, width)
    candidates = (before == mask_id) & active[:, None] & sched.per_position(view.stage != 0)
    commit, policy_state = _select(spec, proposal, candidates, view, keys, st.policy_state)
    commit = sched.restrict(commit, proposal.confidence, view.stage) & candidates
    after = jnp.where(commit, proposal.tokens, before)
    sched_state, row_done, eos_stop = sched.advance(st.schedule, view, before, after, active, mask_id,
                                                    model.config.eos_ids)
    tokens = update_rows(st.tokens, after, start)
    if model.config.eos_id is not None:  # an EOS stop fills the rest of the row's generation region with EOS
        rest = (tokens == mask_id) & (jnp.arange(tokens.shape[1]) >= canvas.prompt_len)[None, :]
        tokens = jnp.where(eos_stop[:, None] & rest, model.config.eos_id, tokens)
    if sched.slots > 1:
        moved_by = sched.window(sched_state).block_id[:, 0] - view.block_id[:, 0]
        policy_state = roll_slots(policy_state, moved_by, sched.slots)
    return _constrain(spec, DecodeState(
        tokens=tokens,
        schedule=sched_state,
        nfe=st.nfe + active.astype(jnp.int32),
        recomputed=st.recomputed + recomputed,
        done=st.done | row_done | nonfinite,
        nonfinite=st.nonfinite | nonfinite,
        cache=cache,
        policy_state=policy_state,
        iters=st.iters + 1,
    ))


def _select(spec: DecodeSpec, proposal: Proposal, candidates: Bool[Array, "B W"], view: Window, keys, state):
    """The policy's commits, run with one policy row per block of the window (slot)."""
    b, slots = candidates.shape[0], spec.schedule.slots
    if slots > 1:  # each slot's key: the row's step key folded with the slot's block id
        keys = jax.vmap(jax.vmap(jax.random.fold_in, (None, 0)))(keys, view.block_id)
    per_slot = lambda x: x.reshape((b * slots, x.shape[1] // slots) + x.shape[2:])  # noqa: E731
    steps = view.step_in_block.reshape(-1)
    ctx = StepContext(step_in_block=steps, block_start=steps == 0, keys=keys.reshape(-1),
                      temperature=spec.temperature, block_id=view.block_id.reshape(-1),
                      stage=view.stage.reshape(-1))
    commit, state = spec.policy.select(jax.tree.map(per_slot, proposal), per_slot(candidates), ctx, state)
    return commit.reshape(candidates.shape), state


def roll_slots(state, moved_by: Int[Array, "B"], slots: int):
    """Shift per-slot policy state (leaves [B * slots, ...]) left by `moved_by[b]` slots, as the row's window
    moved by that many blocks; slots that come in keep stale values, which their block start resets."""
    def roll(leaf):
        x = leaf.reshape((-1, slots) + leaf.shape[1:])
        src = jnp.minimum(jnp.arange(slots)[None, :] + moved_by[:, None], slots - 1)
        idx = src.reshape(src.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, idx, axis=1).reshape(leaf.shape)
    return jax.tree.map(roll, state)


def _setup(graphdef, params, spec: DecodeSpec, tokens, valid, row_ids, seed, prompt_len):
    model = nnx.merge(graphdef, params)
    # a block-causal model attends by the schedule's blocks (D2F decodes with its own block size, not training's)
    blocks = spec.schedule.block_length if model.config.attention == "block_causal" else None
    canvas = Canvas(tokens, valid, positions_from_mask(valid), prompt_len, block_size=blocks)
    base = jax.random.key(seed)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(base, r))(row_ids)
    return model, canvas, row_keys


def _keep_going(spec: DecodeSpec, st: DecodeState):
    return jnp.any(~st.done) & (st.iters < spec.max_iters)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "prompt_len"))
def decode(graphdef, params, spec: DecodeSpec, tokens, valid, row_ids, seed, prompt_len: int):
    """The whole generation (all blocks, all steps) as one compiled program. Returns the final state."""
    model, canvas, row_keys = _setup(graphdef, params, spec, tokens, valid, row_ids, seed, prompt_len)
    st = init_state(spec, model, canvas)
    return jax.lax.while_loop(
        lambda s: _keep_going(spec, s), lambda s: decode_step(spec, model, canvas, row_keys, s), st
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "prompt_len"))
def _debug_init(graphdef, params, spec, tokens, valid, row_ids, seed, prompt_len):
    model, canvas, _ = _setup(graphdef, params, spec, tokens, valid, row_ids, seed, prompt_len)
    return init_state(spec, model, canvas)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "prompt_len"))
def _debug_step(graphdef, params, spec, tokens, valid, row_ids, seed, prompt_len, st):
    model, canvas, row_keys = _setup(graphdef, params, spec, tokens, valid, row_ids, seed, prompt_len)
    return decode_step(spec, model, canvas, row_keys, st)


def decode_debug(graphdef, params, spec: DecodeSpec, tokens, valid, row_ids, seed, prompt_len: int):
    """The debug twin: the same `decode_step`, driven by a Python loop (inspect or print between steps)."""
    args = (graphdef, params, spec, tokens, valid, row_ids, seed, prompt_len)
    st = _debug_init(*args)
    while bool(_keep_going(spec, st)):
        st = _debug_step(*args, st)
    return st
