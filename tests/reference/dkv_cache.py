"""Batch-1 numpy (float64) reference of dKV-Cache-Decode on LLaDA (Ma et al., arXiv 2505.15781), written from the
official control flow (horseee/dKV-Cache `generation_utils/llada_dkv_cache_decode.py` +
`models/modeling_llada_dkv_cache_decode.py`, as transcribed in /work/shared/research/caching.md §3.2).
Independent of jdllm.

Per semi-AR block (the cache is reset at every block start), step i of the block:
- i == 0: a plain full forward, nothing cached;
- i == 1 or i % N == 0: a full forward; the cache keeps the K/V of the positions decoded before this step
  (`cur`, prompt included);
- otherwise: the queries are the positions not in the cache (`~prv`: still masked, or decoded at step i - 1);
  per layer q, k, v are computed for them from their own hidden states, keys / values are theirs plus the
  cached ones, and only their outputs are computed; the new cache is the K/V at the positions `cur`.
After the forward: LLaDA's low-confidence top-n commit in the block; prv := cur; cur := (x != MASK).

Keys are kept before RoPE and rotated at their absolute positions at every use, as the official code does.
"""

from __future__ import annotations

import numpy as np

from tests.reference.model import RefModel, apply_rope, linear, rms_norm, silu, softmax
from tests.reference.sampler import Diagnostics, _canvas, _commit_block, get_num_transfer_tokens


class DKVDecodeForward:
    """Layer-by-layer LLaDA forward over query rows `q_rows` of the canvas, keys / values of the other rows read
    from `cache` (per layer pre-RoPE (K, V) [L, Hkv*dh], valid at the rows `cache_rows`)."""

    def __init__(self, model: RefModel):
        self.m = model

    def __call__(self, tokens: np.ndarray, q_rows: np.ndarray, cache: list | None, cache_rows: np.ndarray | None):
        cfg, m = self.m.cfg, self.m
        h, hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        n = tokens.shape[0]
        x = m.embed[tokens[q_rows]]
        new_kv = []
        for li, lw in enumerate(m.layers):
            a = rms_norm(x, lw["attn_norm"], cfg.rms_norm_eps)
            q, k, v = linear(a, lw["wq"], lw["bq"]), linear(a, lw["wk"], lw["bk"]), linear(a, lw["wv"], lw["bv"])
            k_all = np.zeros((n, k.shape[1])) if cache is None else cache[li][0].copy()
            v_all = np.zeros((n, v.shape[1])) if cache is None else cache[li][1].copy()
            k_all[q_rows], v_all[q_rows] = k, v
            seen = np.zeros(n, bool)
            seen[q_rows] = True
            if cache_rows is not None:
                seen |= cache_rows
            assert seen.all(), "every key row must be a query or cached"
            new_kv.append((k_all, v_all))
            qh = apply_rope(q.reshape(1, -1, h, dh).transpose(0, 2, 1, 3), q_rows[None], cfg.rope_theta)
            kh = apply_rope(k_all.reshape(1, n, hkv, dh).transpose(0, 2, 1, 3), np.arange(n)[None], cfg.rope_theta)
            vh = v_all.reshape(1, n, hkv, dh).transpose(0, 2, 1, 3)
            kh, vh = np.repeat(kh, h // hkv, axis=1), np.repeat(vh, h // hkv, axis=1)
            att = softmax(qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(dh), axis=-1) @ vh
            x = x + linear(att.transpose(0, 2, 1, 3).reshape(-1, h * dh), lw["wo"])
            b = rms_norm(x, lw["mlp_norm"], cfg.rms_norm_eps)
            x = x + linear(silu(linear(b, lw["w_gate"])) * linear(b, lw["w_up"]), lw["w_down"])
        logits = np.full((n, m.head.shape[0]), np.nan)
        logits[q_rows] = linear(rms_norm(x, m.final_norm, cfg.rms_norm_eps), m.head)
        return logits, new_kv


def dkv_decode_generate(model: RefModel, prompt, gen_length: int, block_length: int, steps: int, refresh: int,
                        diag: Diagnostics | None = None):
    """LLaDA greedy low-confidence decoding with dKV-Cache-Decode (module docstring). Returns (generated tokens,
    nfe, per step the number of query rows, with None for a full forward)."""
    assert model.cfg.shift == 0, "LLaDA (same-position logits) only"
    diag = diag if diag is not None else Diagnostics()
    forward = DKVDecodeForward(model)
    mask_id = model.mask_id
    x, lp, n_blocks, steps_per_block = _canvas(prompt, gen_length, block_length, steps, mask_id)
    n, nfe, queries = x.size, 0, []
    all_rows = np.arange(n)
    for kb in range(n_blocks):
        s, e = lp + kb * block_length, lp + (kb + 1) * block_length
        quota = get_num_transfer_tokens(int(np.sum(x[s:e] == mask_id)), steps_per_block)
        cache, cache_rows, prv, cur = None, None, None, x != mask_id
        for i in range(steps_per_block):
            if i == 0:
                logits, _ = forward(x, all_rows, None, None)
                q_rows = all_rows
            elif i == 1 or i % refresh == 0:
                logits, kv = forward(x, all_rows, None, None)
                cache, cache_rows = kv, cur.copy()  # the K/V of the positions decoded before this step
                q_rows = all_rows
            else:
                q_rows = np.flatnonzero(~prv)
                logits, kv = forward(x, q_rows, cache, prv)
                cache, cache_rows = kv, cur.copy()  # cached rows + this step's K/V of the rows decoded at i - 1
            nfe += 1
            queries.append(None if q_rows.size == n else int(q_rows.size))
            assert not np.isnan(logits[s:e][x[s:e] == mask_id]).any()
            _commit_block(x, s, e, logits[s:e], mask_id, {"quota": quota[i]}, diag)
            prv, cur = cur, x != mask_id
    return x[lp:].copy(), nfe, queries
