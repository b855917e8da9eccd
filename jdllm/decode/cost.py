"""Model FLOPs of a decoded row from the loop's compute account (`GenerateOutput.recomputed` / `.flops`).

Multiply-add = 2 FLOPs. A query row through one layer attending to T key rows costs
projections 2·d·(H·dh + 2·Hkv·dh) + output 2·H·dh·d + SwiGLU MLP 2·3·d·m + attention 4·T·H·dh; the LM head
costs 2·d·V per window row and NFE (jdllm never runs the head on the whole canvas).
"""

from __future__ import annotations


def layer_row_flops(cfg, keys: int) -> float:
    """Model FLOPs of one query row through one layer attending to `keys` rows."""
    d, h, hkv, dh, m = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_hidden_size
    return float(2 * d * (h * dh + 2 * hkv * dh) + 2 * h * dh * d + 2 * 3 * d * m + 4 * keys * h * dh)


def account_flops(cfg, cache, recomputed: int, nfe: int, canvas_len: int, prompt_len: int, window: int) -> float:
    """Model FLOPs of a row from the decode's compute account (`GenerateOutput.recomputed`: positions run through
    a layer, summed over layers and steps): each such position attends to the whole canvas (every strategy's
    keys are the canvas rows), plus the LM head on the window rows of each NFE (twice with classifier-free
    guidance) and what the strategy computes outside whole layers (`CacheStrategy.extra_flops`)."""
    heads = nfe * (2 if getattr(cache, "cfg_scale", 0.0) > 0 else 1)
    return (recomputed * layer_row_flops(cfg, canvas_len) + heads * 2.0 * window * cfg.d_model * cfg.vocab_size
            + cache.extra_flops(cfg, nfe, canvas_len, prompt_len))
