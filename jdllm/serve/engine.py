"""Continuous batching at block granularity: a static-size batch of slots advanced one block at a time.

A *lane* is the static batch of one compiled program: `slots` rows of one decode spec (policy, cache, schedule,
temperature) and one canvas shape (prompt-length bucket + generation region). Between compiled calls the host
retires finished rows and admits waiting requests into free rows (`_reslot`: rows reordered so live rows come
first, new rows written from a fresh `init_state`, static shapes, so nothing recompiles as requests come and go).
A compiled call (`_advance`) runs `decode_step` in a `lax.while_loop` until every live row has committed at least
one more block (its count of leading mask-free blocks grew) or is done: those blocks are final and are streamed.
Rows that reach their boundary early are frozen for the rest of the call (their state rows are kept as they were),
so a row's trajectory is the one it has alone, and the engine's tokens are `jdllm.generate`'s (a test checks it).

The call runs on the first `size` rows only, `size` the smallest power of two (or `slots`) holding the live rows,
so one request alone costs a batch-1 program, not a `slots`-row one (one compile per size, on first use).

Caches whose first step is not row-local (`ExactBlockCache` prefills prompt + first window for every row when any
row starts) take the first step of newly admitted rows with the other rows frozen, then continue together.

JetStream (AI-Hypercomputer/JetStream) splits serving into prefill / insert / generate over decode slots; here the
"insert" is `_reslot` and "generate" is one block of diffusion steps (serving digest: research/serving.md).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import threading
import time
import types
from collections import deque
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jaxtyping import Array, Bool, Int, UInt32

from jdllm.decode.buckets import DEFAULT_PROMPT_BUCKETS, bucket_width
from jdllm.decode.caches import ExactBlockCache
from jdllm.decode.canvas import Canvas
from jdllm.decode.loop import DecodeSpec, DecodeState, decode_step, init_state
from jdllm.models.transformer import Transformer, positions_from_mask
from jdllm.serve.rows import gather_rows, put_rows, row_axes, select_rows, take_rows
from jdllm.serve.settings import DecodeSettings
from jdllm.validation import SEED_LIMIT, ROW_ID_LIMIT, check_int, check_prompts


@struct.dataclass
class LaneState:
    """A lane's device state: the decode state and the per-row inputs of the canvas and the PRNG."""

    decode: DecodeState
    valid: Bool[Array, "N T"]
    seeds: UInt32[Array, "N"]
    row_ids: Int[Array, "N"]


@dataclasses.dataclass
class Event:
    """What happened to a request in one engine step.

    kind "block": more blocks were committed; "done": the request finished (`finish_reason` "stop" when the
    tokens hold EOS, else "length"); "error": it failed (`error` says why). `tokens` are all the request's
    committed generation tokens so far (cut at its max_tokens); `nfe` its forward evaluations so far."""

    request_id: int
    kind: str
    tokens: np.ndarray
    nfe: int = 0
    finish_reason: str | None = None
    error: str | None = None


@dataclasses.dataclass
class _Request:
    rid: int
    prompt: list[int]
    settings: DecodeSettings
    width: int
    seed: int
    row_id: int
    committed: int = 0  # leading complete blocks already reported


def _build_lane(spec: DecodeSpec, config, prompt_len: int, tokens, valid, seeds, row_ids) -> LaneState:
    canvas = Canvas(tokens, valid, positions_from_mask(valid), prompt_len)
    # init_state reads only the model's config
    decode = init_state(spec, types.SimpleNamespace(config=config), canvas)
    return LaneState(decode=decode, valid=valid, seeds=seeds, row_ids=row_ids)


def _abstract_lane(spec, config, prompt_len, length, batch):
    return _build_lane(spec, config, prompt_len, jnp.zeros((batch, length), jnp.int32),
                       jnp.ones((batch, length), bool), jnp.zeros((batch,), jnp.uint32),
                       jnp.zeros((batch,), jnp.int32))


@functools.partial(jax.jit, static_argnames=("spec", "config", "prompt_len", "length", "slots"))
def _empty_lane(spec, config, prompt_len: int, length: int, slots: int) -> LaneState:
    """A lane whose rows are all idle (done), in buffers of its own (they are donated later)."""
    lane = _abstract_lane(spec, config, prompt_len, length, slots)
    return lane.replace(decode=lane.decode.replace(done=jnp.ones((slots,), bool)))


@functools.lru_cache(maxsize=64)
def lane_row_axes(spec: DecodeSpec, config, prompt_len: int, length: int):
    """(row map of a LaneState, row map of its DecodeState) for this spec and canvas shape."""
    lane = row_axes(lambda b: _abstract_lane(spec, config, prompt_len, length, b))
    decode = row_axes(lambda b: _abstract_lane(spec, config, prompt_len, length, b).decode)
    return lane, decode


@functools.partial(jax.jit, static_argnames=("spec", "config", "prompt_len", "axes"), donate_argnames=("lane",))
def _reslot(spec, config, prompt_len, axes, lane: LaneState, order, keep, tokens, valid, seeds, row_ids, fresh):
    """Rows reordered (`order`), rows from `keep` on marked done, then the `fresh` rows replaced by new requests."""
    lane = gather_rows(axes, lane, order)
    idle = jnp.arange(order.shape[0]) >= keep
    lane = lane.replace(decode=lane.decode.replace(done=lane.decode.done | idle))
    new = _build_lane(spec, config, prompt_len, tokens, valid, seeds, row_ids)
    return select_rows(axes, fresh, new, lane)


def complete_blocks(tokens: Int[Array, "B T"], prompt_len: int, gen_length: int, block_length: int, mask_id: int):
    """Per row, how many leading blocks of the generation region hold no mask (final: they are streamed)."""
    gen = tokens[:, prompt_len:prompt_len + gen_length].reshape(tokens.shape[0], -1, block_length)
    full = ~(gen == mask_id).any(-1)
    return (jnp if isinstance(tokens, jax.Array) else np).cumprod(full, axis=1).sum(axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "prompt_len", "axes", "decode_axes", "size",
                                             "bound", "alone_first"), donate_argnames=("lane",))
def _advance(graphdef, params, spec: DecodeSpec, prompt_len: int, axes, decode_axes, size: int, bound: int,
             alone_first: bool, lane: LaneState):
    """Advance the first `size` rows until each live one committed another block or is done (see module doc)."""
    sub = take_rows(axes, lane, size)
    model = nnx.merge(graphdef, params)
    blocks = spec.schedule.block_length if model.config.attention == "block_causal" else None
    canvas = Canvas(sub.decode.tokens, sub.valid, positions_from_mask(sub.valid), prompt_len, block_size=blocks)
    row_keys = jax.vmap(lambda s, r: jax.random.fold_in(jax.random.key(s), r))(sub.seeds, sub.row_ids)
    count = functools.partial(complete_blocks, prompt_len=prompt_len, gen_length=spec.schedule.gen_length,
                              block_length=spec.schedule.block_length, mask_id=model.config.mask_id)
    start = count(sub.decode.tokens)

    def moving(st: DecodeState):
        go = ~st.done & (count(st.tokens) == start)
        if alone_first:  # new rows take their first step alone
            new = go & (st.nfe == 0)
            go = jnp.where(jnp.any(new), new, go)
        return go

    def body(carry):
        st, it = carry
        go = moving(st)
        out = decode_step(spec, model, canvas, row_keys, st.replace(done=~go))
        return select_rows(decode_axes, go, out, st), it + 1

    st, _ = jax.lax.while_loop(lambda c: jnp.any(moving(c[0])) & (c[1] < bound), body,
                               (sub.decode, jnp.zeros((), jnp.int32)))
    return put_rows(axes, lane, sub.replace(decode=st))


def _sizes(slots: int) -> tuple[int, ...]:
    sizes, k = [], 1
    while k < slots:
        sizes.append(k)
        k *= 2
    return tuple(sizes) + (slots,)


class _Lane:
    """Host side of one lane: which request holds each row (live rows first), and the device state."""

    def __init__(self, engine: "Engine", settings: DecodeSettings, width: int):
        self.engine, self.settings, self.width = engine, settings, width
        cfg = engine.config
        self.length = width + settings.gen_length
        self.axes, self.decode_axes = lane_row_axes(settings.spec, cfg, width, self.length)
        self.rows: list[_Request | None] = [None] * engine.slots
        self.pending: list[_Request] = []
        self.changed = False
        self.state = _empty_lane(settings.spec, cfg, width, self.length, engine.slots)

    @property
    def live(self) -> int:
        return sum(r is not None for r in self.rows)

    def reslot(self) -> None:
        """Live rows first (in order), then the pending requests, all other rows idle."""
        n, cfg = self.engine.slots, self.engine.config
        live = [i for i, r in enumerate(self.rows) if r is not None]
        order = live + [i for i in range(n) if self.rows[i] is None]
        keep = len(live)
        tokens = np.full((n, self.length), cfg.mask_id, np.int32)
        valid = np.ones((n, self.length), bool)
        seeds, row_ids = np.zeros((n,), np.uint32), np.zeros((n,), np.int32)
        fresh = np.zeros((n,), bool)
        pad = cfg.pad_id if cfg.pad_id is not None and cfg.pad_id != cfg.mask_id else 0
        for j, req in enumerate(self.pending, start=keep):
            p = req.prompt
            tokens[j, : self.width - len(p)] = pad
            valid[j, : self.width - len(p)] = False
            tokens[j, self.width - len(p): self.width] = p
            seeds[j], row_ids[j], fresh[j] = req.seed, req.row_id, True
        self.state = _reslot(self.settings.spec, cfg, self.width, self.axes, self.state,
                             jnp.asarray(order, jnp.int32), jnp.asarray(keep + len(self.pending), jnp.int32),
                             jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(seeds), jnp.asarray(row_ids),
                             jnp.asarray(fresh))
        self.rows = [self.rows[i] for i in live] + self.pending
        self.rows += [None] * (n - len(self.rows))
        self.pending, self.changed = [], False

    def size(self) -> int:
        return next(s for s in _sizes(self.engine.slots) if s >= self.live)

    def advance(self, size: int | None = None) -> None:
        eng, s = self.engine, self.settings
        size = self.size() if size is None else size
        self.state = _advance(eng.graphdef, eng.params, s.spec, self.width, self.axes, self.decode_axes, size,
                              s.iteration_bound(size), isinstance(s.spec.cache, ExactBlockCache), self.state)


class Engine:
    """Block-granular continuous batching over `slots` rows (see the module docstring).

    `submit` / `cancel` may be called from any thread; `step` (admit, advance every lane with live rows by one
    block, report) from one thread at a time. `stop_at_eos`: a request ends as soon as a committed block holds
    EOS (its answer is final), freeing its slot; False decodes every row to the end as `jdllm.generate` does.
    """

    def __init__(self, model: Transformer, slots: int = 8, prompt_buckets: Sequence[int] | None = DEFAULT_PROMPT_BUCKETS,
                 stop_at_eos: bool = True, max_lanes: int = 4):
        self.slots = check_int("slots", slots, minimum=1)
        self.config = model.config
        self.graphdef, self.params = nnx.split(model)
        self.prompt_buckets = prompt_buckets
        self.stop_at_eos = stop_at_eos
        self.max_lanes = check_int("max_lanes", max_lanes, minimum=1)
        self._lanes: dict[tuple, _Lane] = {}
        self._queue: deque[_Request] = deque()
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self.decode_seconds = 0.0  # time spent in compiled block calls (compiles included)
        self.dropped = 0  # cancelled requests taken out of the queue or out of their slot

    # ---------------------------------------------------------------- requests
    def prompt_width(self, n_tokens: int, gen_length: int) -> int:
        """The canvas prompt width of a prompt of `n_tokens` (its bucket); ValueError when it cannot fit."""
        room = self.config.max_seq_len - gen_length
        if n_tokens > room:
            raise ValueError(f"prompt ({n_tokens} tokens) + generation ({gen_length}) exceeds the model's maximum "
                             f"length {self.config.max_seq_len}")
        return bucket_width(n_tokens, self.prompt_buckets, max(room, n_tokens))

    def submit(self, prompt: Sequence[int], settings: DecodeSettings, seed: int = 0, row_id: int = 0) -> int:
        """Queue a request (token ids); returns its id. Bad prompts / seeds raise here, before any queueing."""
        (row,) = check_prompts([list(prompt)], self.config)
        seed = check_int("seed", seed, minimum=0, below=SEED_LIMIT)
        row_id = check_int("row_id", row_id, minimum=0, below=ROW_ID_LIMIT)
        width = self.prompt_width(len(row), settings.gen_length)
        with self._lock:
            req = _Request(next(self._ids), row, settings, width, seed, row_id)
            self._queue.append(req)
        return req.rid

    def cancel(self, request_id: int) -> None:
        """Drop a request: it leaves the queue, or its slot frees at the next block boundary."""
        with self._lock:
            self._cancelled.add(request_id)

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def live(self) -> int:
        return sum(lane.live + len(lane.pending) for lane in self._lanes.values())

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self.live > 0

    # ---------------------------------------------------------------- scheduling
    def _lane(self, req: _Request) -> _Lane:
        key = (req.settings.spec, req.settings.gen_length, req.settings.steps, req.width)
        lane = self._lanes.get(key)
        if lane is None:
            idle = [k for k, ln in self._lanes.items() if ln.live == 0 and not ln.pending]
            while len(self._lanes) >= self.max_lanes and idle:
                del self._lanes[idle.pop(0)]
            lane = self._lanes[key] = _Lane(self, req.settings, req.width)
        return lane

    def _take_cancellations(self) -> None:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            kept = deque(r for r in self._queue if r.rid not in cancelled)
            self.dropped += len(self._queue) - len(kept)
            self._queue = kept
        for lane in self._lanes.values():
            for i, r in enumerate(lane.rows):
                if r is not None and r.rid in cancelled:
                    lane.rows[i], lane.changed = None, True
                    self.dropped += 1

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self.live >= self.slots:
                    return
                req = self._queue.popleft()
            self._lane(req).pending.append(req)

    def step(self) -> list[Event]:
        """One scheduling round: cancellations, admissions, one block for every lane with live rows."""
        self._take_cancellations()
        self._admit()
        events: list[Event] = []
        for lane in list(self._lanes.values()):
            if lane.changed or lane.pending:
                lane.reslot()
            if lane.live:
                events += self._run(lane)
        return events

    def _run(self, lane: _Lane) -> list[Event]:
        t0 = time.perf_counter()
        lane.advance()
        n = lane.live
        st = lane.state.decode
        tokens, done, nonfinite, nfe = jax.device_get((st.tokens[:n], st.done[:n], st.nonfinite[:n], st.nfe[:n]))
        self.decode_seconds += time.perf_counter() - t0
        s, cfg = lane.settings, self.config
        bl = s.spec.schedule.block_length
        counts = complete_blocks(tokens, lane.width, s.gen_length, bl, cfg.mask_id)
        events = []
        for i in range(n):
            req = lane.rows[i]
            gen = tokens[i, lane.width: lane.width + s.gen_length]
            committed = gen[: int(counts[i]) * bl][: s.max_tokens]
            has_eos = bool(np.isin(committed, cfg.eos_ids).any()) if cfg.eos_ids else False
            finished = bool(done[i]) or (self.stop_at_eos and has_eos) or len(committed) >= s.max_tokens
            if nonfinite[i]:
                events.append(Event(req.rid, "error", committed, int(nfe[i]),
                                    error="the model produced non-finite logits (NaN / inf)"))
            elif finished:
                events.append(Event(req.rid, "done", committed, int(nfe[i]), "stop" if has_eos else "length"))
            elif counts[i] > req.committed:
                events.append(Event(req.rid, "block", committed, int(nfe[i])))
            else:
                events.append(Event(req.rid, "error", committed, int(nfe[i]),
                                    error=f"decoding stopped at the iteration bound without committing a block"))
            req.committed = int(counts[i])
            if events[-1].kind != "block":
                lane.rows[i], lane.changed = None, True
        return events

    # ---------------------------------------------------------------- helpers
    def run_all(self) -> dict[int, Event]:
        """Step until nothing is queued or live; the last event of every request (tests, batch scripts)."""
        last: dict[int, Event] = {}
        while self.busy:
            for e in self.step():
                last[e.request_id] = e
        return last

    def warmup(self, settings: DecodeSettings, prompt_tokens: int = 1) -> None:
        """Compile the lane of `settings` for prompts of `prompt_tokens` tokens, at every batch size."""
        width = self.prompt_width(prompt_tokens, settings.gen_length)
        lane = _Lane(self, settings, width)
        lane.reslot()
        for size in _sizes(self.slots):
            lane.advance(size)
        jax.block_until_ready(lane.state)
