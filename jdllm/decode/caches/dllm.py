"""dLLM-Cache (Liu et al., arXiv 2506.06295; official code maomaocun/dLLM-cache, `dllm_cache/hooks/
cache_hook_LLaDA.py`, `cache_hook_Dream.py`, `cache/Cache.py`): adaptive per-layer feature caching.

Per layer the strategy keeps, at every canvas row (prompt region and response), the keys and values, the
attention output (after the output projection) and the MLP output (both before their residual add). A row's step
counter s (1-based) runs over its whole generation, not per block (`Cache.py`: the number of model calls so far);
at step s, layer l:

- the prompt's features are recomputed iff (s - 1) % prompt_interval == 0, the response's iff
  (s - 1) % response_interval == 0; layer 0 always recomputes both ("enforcing layer_id==0 refresh all");
- otherwise the response is adaptively updated ("V-verify"): V is recomputed for every response row and compared
  with the cached V by cosine similarity; the k = int(G * transfer_ratio) least similar rows (static k, G the
  response length, ties to the lower row) get fresh queries, keys, attention and MLP outputs; the cached V of
  *every* response row is replaced by the fresh one, the other features are reused;
- the residual stream is never cached: reused attention / MLP outputs are added to the current residual.

Keys are stored after RoPE (the official code stores them before RoPE and re-rotates on every call, which gives
the same values). The recomputed rows of a layer are gathered into a static-width query block (the batch's widest
need: the whole canvas, the response, prompt + k or k rows; one `lax.switch` branch each), so a row computes what
it would compute alone. Rows of a batch keep their own counters (a ragged batch mixes refresh and adaptive rows).

Defaults are the paper's LLaDA-Instruct setting (demo / GSM8K: prompt 100, response 7, ratio 0.25); Dream-Base's
scripts use response_interval=8.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jdllm.decode.caches.base import CacheStrategy
from jdllm.decode.canvas import Canvas, slice_rows
from jdllm.decode.caches.rows import gather_rows, merge_rows, select_rows
from jdllm.decode.sharding import KV_CACHE_AXES
from jdllm.models.masks import block_causal_allowed

FEATURE_AXES = ("layers", "batch", "cache_seq", "embed")


@struct.dataclass
class FeatureCache:
    """Per layer and canvas row: post-RoPE keys / values [N, B, T, Hkv, Dh], attention and MLP outputs
    [N, B, T, D]; `step` [B]: model calls each row has made."""

    k: Float[Array, "N B T H D"]
    v: Float[Array, "N B T H D"]
    attn: Float[Array, "N B T E"]
    mlp: Float[Array, "N B T E"]
    step: Int[Array, "B"]
    LOGICAL_AXES: ClassVar[dict[str, tuple[str, ...]]] = {
        "k": KV_CACHE_AXES, "v": KV_CACHE_AXES, "attn": FEATURE_AXES, "mlp": FEATURE_AXES, "step": ("batch",)}


def least_similar(new: Float[Array, "B G H D"], old: Float[Array, "B G H D"], k: int) -> Bool[Array, "B G"]:
    """V-verify: the k rows whose value vectors changed most (lowest cosine similarity; ties to the lower row)."""
    new32 = new.reshape(new.shape[:2] + (-1,)).astype(jnp.float32)
    old32 = old.reshape(old.shape[:2] + (-1,)).astype(jnp.float32)
    dot = jnp.sum(new32 * old32, axis=-1)
    norms = jnp.linalg.norm(new32, axis=-1) * jnp.linalg.norm(old32, axis=-1)
    cos = dot / jnp.maximum(norms, 1e-8)
    _, idx = jax.lax.top_k(-cos, k)
    return jnp.zeros(cos.shape, bool).at[jnp.arange(cos.shape[0])[:, None], idx].set(True)


@dataclasses.dataclass(frozen=True)
class DLLMCache(CacheStrategy):
    prompt_interval: int = 100
    response_interval: int = 7
    transfer_ratio: float = 0.25
    name = "dllm"

    def __post_init__(self):
        for field in ("prompt_interval", "response_interval"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DLLMCache.{field} must be an int >= 1, got {value!r}")
        if isinstance(self.transfer_ratio, bool) or not isinstance(self.transfer_ratio, (int, float)) or not (
                0.0 <= self.transfer_ratio <= 1.0):
            raise ValueError(f"DLLMCache.transfer_ratio must be a number in [0, 1], got {self.transfer_ratio!r}")

    def init(self, cfg, batch, length):
        kv = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.head_dim)
        feat = (cfg.n_layers, batch, length, cfg.d_model)
        z = lambda shape: jnp.zeros(shape, cfg.jnp_dtype)  # noqa: E731
        return FeatureCache(z(kv), z(kv), z(feat), z(feat), jnp.zeros((batch,), jnp.int32))

    def top_k(self, gen_length: int) -> int:
        """Response rows an adaptive update recomputes (the official `int(gen_len * transfer_ratio)`)."""
        return int(gen_length * self.transfer_ratio)

    def refreshes(self, step: Int[Array, "B"]) -> tuple[Bool[Array, "B"], Bool[Array, "B"]]:
        """(prompt, response) refresh at the 1-based model call `step` (`Cache.py`: (s - 1) % interval == 0)."""
        return (step - 1) % self.prompt_interval == 0, (step - 1) % self.response_interval == 0

    def window_logits(self, model, canvas, window_start, width, cache, refresh, live, steps_since_refresh):
        del refresh, steps_since_refresh  # the counter runs over the whole generation (official `Cache.py`)
        length, prompt = canvas.tokens.shape[1], canvas.prompt_len
        k = self.top_k(length - prompt)
        step = cache.step + 1
        rp, rg = self.refreshes(step)
        need = jnp.where(live, prompt * rp + jnp.where(rg, length - prompt, k), 0)
        widths = sorted({length, length - prompt, prompt + k, k} - {0})
        states = [(cache.k[i], cache.v[i], cache.attn[i], cache.mlp[i]) for i in range(model.config.n_layers)]

        def run(q_width):
            def forward(states):
                hook = self._layer_hook(canvas, rp, rg, k, q_width)
                hidden, new = model.hooked_layers(canvas.tokens, hook, states)
                return model.head(slice_rows(hidden, window_start - model.config.shift, width)), new
            return forward

        branch = jnp.searchsorted(jnp.asarray(widths, jnp.int32), jnp.max(need))
        logits, new = jax.lax.switch(branch, [run(w) for w in widths], states)
        stack = lambda j: jnp.stack([s[j] for s in new])  # noqa: E731
        new_cache = FeatureCache(stack(0), stack(1), stack(2), stack(3), jnp.where(live, step, cache.step))
        rows = jnp.where(live, length + (model.config.n_layers - 1) * need, 0).astype(jnp.int32)
        return logits, new_cache, live, rows

    def _layer_hook(self, canvas: Canvas, rp, rg, k: int, width: int):
        """One layer of the official `cache_hook_feature`, for the rows of every batch row that layer recomputes
        (layer 0: all; else the prompt if rp, the response if rg, else the response's k least similar rows),
        gathered into `width` query rows."""
        length, prompt = canvas.tokens.shape[1], canvas.prompt_len
        is_prompt = (jnp.arange(length) < prompt)[None, :]

        def hook(i, block, x, state):
            k_c, v_c, attn_c, mlp_c = state
            h = block.attn_input(x)
            if i == 0:
                recompute = jnp.ones(x.shape[:2], bool)
                v_gen = None
            else:
                v_gen = block.values(h[:, prompt:]) if k > 0 else None
                chosen = least_similar(v_gen, v_c[:, prompt:], k) if k > 0 else jnp.zeros_like(x[:, prompt:, 0], bool)
                recompute = jnp.where(is_prompt, rp[:, None], jnp.pad(rg[:, None] | chosen, ((0, 0), (prompt, 0))))
            sel = select_rows(recompute, length if i == 0 else width)
            idx = sel.idx
            h_q, pos_q = gather_rows(h, idx), jnp.take_along_axis(canvas.positions, idx, axis=1)
            keys = merge_rows(k_c, block.keys(h_q, pos_q), sel)
            values = merge_rows(v_c, block.values(h_q), sel)
            if v_gen is not None:  # V-verify replaced every response V (a refreshed response keeps its own)
                gen_values = jnp.where(rg[:, None, None, None], values[:, prompt:], v_gen)
                values = jnp.concatenate([values[:, :prompt], gen_values], axis=1)
            attn = merge_rows(attn_c, block.attend(block.queries(h_q, pos_q), keys, values, canvas.valid,
                                                   _allowed(canvas, idx)), sel)
            x = x + attn
            mlp = merge_rows(mlp_c, block.mlp(gather_rows(x, idx)), sel)
            return x + mlp, (keys, values, attn, mlp)

        return hook

    def extra_flops(self, cfg, nfe, canvas_len, prompt_len):
        """V-verify: the value projection of every response row in layers 1.. of each step without a response
        refresh (and the cosine similarities, negligible)."""
        gen = canvas_len - prompt_len
        if self.top_k(gen) == 0:
            return 0.0
        adaptive = sum(1 for s in range(1, nfe + 1) if (s - 1) % self.response_interval != 0)
        return float(adaptive * (cfg.n_layers - 1) * gen * 2 * cfg.d_model * cfg.n_kv_heads * cfg.head_dim)


def _allowed(canvas: Canvas, idx: Int[Array, "B Q"]):
    """Block-causal attention of the gathered query rows (None for bidirectional models)."""
    blocks = canvas.mask_blocks(idx)
    return block_causal_allowed(blocks["q_block"], blocks["k_block"]) if blocks else None
