"""D2F pipelined parallel decoding (Discrete Diffusion Forcing, arXiv 2508.09192, Algorithm 2; reference
`D2F-eval/eval_llada.py::_generate_block_single`), batched, with static shapes.

Blocks of `block_length` tokens are added to the generation one at a time and decoded in parallel while earlier
ones finish:

- a new block is added (at most one per step) when the newest block's decoded fraction reaches
  `block_add_threshold` (tau_add), unless the row has committed EOS (`eos_early_stop`), `max_blocks_in_flight`
  blocks are still being decoded, or every block is added;
- a block is *fully activated* once its predecessor's decoded fraction reaches `decoded_token_threshold` (tau_act;
  the first block follows the complete prompt); a fully activated block commits what the commit policy chooses
  (the policy guarantees at least one position per block), a *semi-activated* one only those of the policy's
  positions whose confidence exceeds `skip_threshold` (tau_conf, strict as in the reference), possibly none;
- a block with no mask left *retires* (its K/V enter an exact block-causal cache) one step later, once every
  block before it has: the step in between runs it with its final tokens, which is when D2F writes its K/V
  (state `to_cache`). Retired blocks leave the window.

The window holds `slots = max_blocks_in_flight + 1` consecutive blocks from the first one not retired (one more
than the in-flight maximum, for a finished block waiting to retire) and stops at the end of the generation
region. State per row: the first unretired block, the number of blocks added, per block the decoded count and
the steps taken, and whether EOS was committed. A row is done when every added block is complete and either all
blocks are added or EOS was committed; `eos_early_stop` then fills the remaining region with EOS (the reference
cuts the answer at EOS).

Defaults are the paper's D2F-LLaDA / D2F-Dream GSM8K settings (Table 8): tau_add 0.1 (Dream; LLaDA uses 0.7 at
block 64), tau_act 0.95, tau_conf 0.9. The reference has no cap on blocks in flight; `max_blocks_in_flight` is
the static cap a compiled window needs (with tau_add = 0.1 about 1 / tau_add blocks can be alive).

Deviation: the reference's fully activated blocks also use the strict `conf > tau_conf` and then the argmax;
here the commit policy decides them (with `Threshold(tau)`: `conf >= tau`, then the most confident).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdllm.decode.schedules.base import ABSENT, FULL, SEMI, BlockSchedule, Window, eos_in


def _take(per_block, ids):
    """per_block[b, ids[b, k]] (ids clamped into range)."""
    return jnp.take_along_axis(per_block, jnp.clip(ids, 0, per_block.shape[1] - 1), axis=1)


@dataclasses.dataclass(frozen=True)
class Pipelined(BlockSchedule):
    eos_early_stop: bool = True
    max_blocks_in_flight: int = 3
    block_add_threshold: float = 0.1
    decoded_token_threshold: float = 0.95
    skip_threshold: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        if self.max_blocks_in_flight < 1:
            raise ValueError(f"max_blocks_in_flight must be >= 1, got {self.max_blocks_in_flight}")
        for name in ("block_add_threshold", "decoded_token_threshold", "skip_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")

    @property
    def slots(self) -> int:
        return min(self.max_blocks_in_flight + 1, self.n_blocks)

    def init(self, batch):
        zeros = jnp.zeros((batch,), jnp.int32)
        per_block = jnp.zeros((batch, self.n_blocks), jnp.int32)
        return dict(first=zeros, added=zeros + 1, decoded=per_block, steps=per_block,
                    eos=jnp.zeros((batch,), bool), moved=jnp.ones((batch,), bool), since_move=zeros)

    def _window_first(self, first):
        return jnp.minimum(first, self.n_blocks - self.slots)

    def window(self, state):
        first, added, bs = state["first"], state["added"], self.block_length
        lead = self._window_first(first)
        ids = lead[:, None] + jnp.arange(self.slots)[None, :]
        in_flight = (ids >= first[:, None]) & (ids < added[:, None])
        prev_ratio = jnp.where(ids == 0, 1.0, _take(state["decoded"], ids - 1) / bs)
        full = prev_ratio >= self.decoded_token_threshold
        stage = jnp.where(in_flight, jnp.where(full, FULL, SEMI), ABSENT).astype(jnp.int32)
        return Window(start=lead * bs, block_id=ids, stage=stage, step_in_block=_take(state["steps"], ids),
                      moved=state["moved"], steps_since_move=state["since_move"])

    def restrict(self, commit, confidence, stage):
        keep = (stage == FULL)[..., None] | ((stage == SEMI)[..., None]
                                               & (self._blocks(confidence) > self.skip_threshold))
        return commit & keep.reshape(commit.shape)

    def _blocks(self, x):
        return x.reshape(x.shape[0], self.slots, self.block_length)

    def advance(self, state, view, before, after, active, mask_id, eos_ids):
        bs, nb = self.block_length, self.n_blocks
        rows = jnp.arange(before.shape[0])[:, None]
        ids, in_flight = view.block_id, view.stage != ABSENT
        decoded = state["decoded"].at[rows, ids].set(jnp.sum(self._blocks(after) != mask_id, axis=-1))
        steps = state["steps"].at[rows, ids].add((in_flight & active[:, None]).astype(jnp.int32))
        # retire: the leading blocks that were complete when this step's forward ran
        ok = (ids < state["first"][:, None]) | (~jnp.any(self._blocks(before) == mask_id, axis=-1)
                                                 & (ids < state["added"][:, None]))
        first = ids[:, 0] + jnp.sum(jnp.cumprod(ok, axis=1), axis=1)
        eos = state["eos"]
        if self.eos_early_stop and eos_ids:
            eos = eos | (active & eos_in(after, eos_ids))
        # add one block: the newest is decoded enough, fewer than the cap are undecoded, it fits the window
        added = state["added"]
        newest_ratio = _take(decoded, (added - 1)[:, None])[:, 0] / bs
        block_idx = jnp.arange(nb)[None, :]
        undecoded = jnp.sum((block_idx >= first[:, None]) & (block_idx < added[:, None]) & (decoded < bs), axis=1)
        grow = ((added < nb) & ~eos & (newest_ratio >= self.block_add_threshold)
                & (undecoded < self.max_blocks_in_flight) & (added < self._window_first(first) + self.slots))
        added = added + grow.astype(jnp.int32)
        complete = jnp.all((decoded == bs) | (block_idx >= added[:, None]), axis=1)
        done = complete & ((added >= nb) | eos)
        moved = self._window_first(first) != view.block_id[:, 0]
        new = dict(first=first, added=added, decoded=decoded, steps=steps, eos=eos, moved=moved,
                   since_move=jnp.where(moved, 0, state["since_move"] + 1))
        new = {k: jnp.where(active.reshape(active.shape + (1,) * (v.ndim - 1)), v, state[k]) for k, v in new.items()}
        return new, active & done, active & done & eos

    def max_iters(self, steps, batch):
        """Each step commits >= 1 token in the first unretired block (fully activated) or retires it."""
        return max(steps, self.gen_length) + 2 * self.n_blocks + 2
