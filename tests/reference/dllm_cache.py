"""Batch-1 numpy (float64) reference of dLLM-Cache (arXiv 2506.06295), written from the official code's formulas
(maomaocun/dLLM-cache: `dllm_cache/hooks/cache_hook_LLaDA.py::cache_hook_feature`, `refresh_index`,
`cache/Cache.py`; digest /work/shared/research/caching.md §2.2-2.4). Independent of jdllm.

`DLLMCacheForward(model, prompt_length, prompt_interval, gen_interval, transfer_ratio)` is a stateful callable
tokens [1, L] -> raw logits [1, L, V] that stands in for the hooked model of one generation (the official
`dLLMCache` singleton after `reset_cache(prompt_length)`): its step counter s counts its calls (1-based, over the
whole generation); prompt features refresh when (s - 1) % prompt_interval == 0, response features when
(s - 1) % gen_interval == 0; layer 0 always refreshes both. Cached per layer: pre-RoPE K and V (RoPE applied to
the concatenated keys at every call, as the official `RoPe_forward`), the attention output after `attn_out`,
the MLP output. The four cases of the hook (both / response only / prompt only / neither refreshed) are written
out separately as in the official code; the adaptive update picks `torch.topk(cos_sim, k, largest=False)` with
k = int(G * transfer_ratio) (ties: lower row first, recorded in `min_cos_gap`).
"""

from __future__ import annotations

import numpy as np

from tests.reference.model import RefModel, apply_rope, linear, rms_norm, silu, softmax


class DLLMCacheForward:
    def __init__(self, model: RefModel, prompt_length: int, prompt_interval: int, gen_interval: int,
                 transfer_ratio: float):
        self.m, self.p = model, prompt_length
        self.kp, self.kr, self.ratio = prompt_interval, gen_interval, transfer_ratio
        self.step = 0
        self.cache: list[dict] = [dict() for _ in model.layers]
        self.log: list[tuple[bool, bool]] = []   # (refresh_prompt, refresh_gen) of layers >= 1, per call
        self.min_cos_gap = np.inf                # smallest gap at the top-k boundary of V-verify

    # -- the layer's pieces (LLaDA block: attn_norm, q/k/v_proj, attention, attn_out, ff_norm, SwiGLU) -----------
    def _project(self, lw, x):
        h = rms_norm(x, lw["attn_norm"], self.m.cfg.rms_norm_eps)
        return linear(h, lw["wq"], lw["bq"]), linear(h, lw["wk"], lw["bk"]), linear(h, lw["wv"], lw["bv"])

    def _attention(self, lw, q, k, v, q_index):
        """q [Q, H*dh] at canvas rows q_index against pre-RoPE k / v [L, Hkv*dh] (RoPE at rows 0..L-1)."""
        cfg = self.m.cfg
        h, hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        n = k.shape[0]
        qh = apply_rope(q.reshape(1, -1, h, dh).transpose(0, 2, 1, 3), np.asarray(q_index)[None], cfg.rope_theta)
        kh = apply_rope(k.reshape(1, n, hkv, dh).transpose(0, 2, 1, 3), np.arange(n)[None], cfg.rope_theta)
        vh = v.reshape(1, n, hkv, dh).transpose(0, 2, 1, 3)
        kh, vh = np.repeat(kh, h // hkv, axis=1), np.repeat(vh, h // hkv, axis=1)
        att = softmax(qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(dh), axis=-1) @ vh
        return linear(att.transpose(0, 2, 1, 3).reshape(-1, h * dh), lw["wo"])

    def _mlp(self, lw, x):
        h = rms_norm(x, lw["mlp_norm"], self.m.cfg.rms_norm_eps)
        return linear(silu(linear(h, lw["w_gate"])) * linear(h, lw["w_up"]), lw["w_down"])

    def _refresh_index(self, v_new, v_cached):
        """`refresh_index`: the k response rows of lowest cosine similarity between new and cached V."""
        k = int(v_new.shape[0] * self.ratio)
        norms = np.linalg.norm(v_new, axis=-1) * np.linalg.norm(v_cached, axis=-1)
        cos = np.sum(v_new * v_cached, -1) / np.maximum(norms, 1e-8)  # torch cosine_similarity, eps 1e-8
        order = np.argsort(cos, kind="stable")
        if 0 < k < cos.size:
            self.min_cos_gap = min(self.min_cos_gap, cos[order[k]] - cos[order[k - 1]])
        return np.sort(order[:k])

    # -- the hook --------------------------------------------------------------------------------------------
    def _layer(self, li, lw, x):
        p, c = self.p, self.cache[li]
        rp = (self.step - 1) % self.kp == 0 or li == 0
        rg = (self.step - 1) % self.kr == 0 or li == 0
        if li == 1:
            self.log.append((rp, rg))
        transfer = 0 < self.ratio <= 1
        idx = None
        if rp and rg:
            q, k, v = self._project(lw, x)
            c["k"], c["v"] = k.copy(), v.copy()
            att = self._attention(lw, q, k, v, np.arange(x.shape[0]))
            c["attn"] = att.copy()
        elif rg:
            q, k_gen, v_gen = self._project(lw, x[p:])
            c["k"][p:], c["v"][p:] = k_gen, v_gen
            att_gen = self._attention(lw, q, c["k"], c["v"], np.arange(p, x.shape[0]))
            c["attn"][p:] = att_gen
            att = c["attn"].copy()
        else:
            if rp:
                q_p, k_p, v_p = self._project(lw, x[:p])
                c["k"][:p], c["v"][:p] = k_p, v_p
            if transfer:
                h_gen = rms_norm(x[p:], lw["attn_norm"], self.m.cfg.rms_norm_eps)
                v_gen = linear(h_gen, lw["wv"], lw["bv"])
                idx = self._refresh_index(v_gen, c["v"][p:])
                c["v"][p:] = v_gen                                   # every response V replaced
                c["k"][p + idx] = linear(h_gen[idx], lw["wk"], lw["bk"])
                q_sel = linear(h_gen[idx], lw["wq"], lw["bq"])
            if rp:
                q_all = np.concatenate([q_p, q_sel]) if transfer else q_p
                q_index = np.concatenate([np.arange(p), p + idx]) if transfer else np.arange(p)
                out = self._attention(lw, q_all, c["k"], c["v"], q_index)
                c["attn"][:p] = out[:p]
                if transfer:
                    c["attn"][p + idx] = out[p:]
            elif transfer:
                c["attn"][p + idx] = self._attention(lw, q_sel, c["k"], c["v"], p + idx)
            att = c["attn"].copy()
        x = x + att
        # MLP, same case split on the updated residual
        if rp and rg:
            c["mlp"] = self._mlp(lw, x)
        elif rg:
            c["mlp"][p:] = self._mlp(lw, x[p:])
        else:
            rows = np.concatenate([np.arange(p) if rp else np.arange(0), p + idx if idx is not None else np.arange(0)])
            if rows.size:
                c["mlp"][rows] = self._mlp(lw, x[rows])
        return x + c["mlp"]

    def __call__(self, tokens):
        tokens = np.asarray(tokens)
        assert tokens.shape[0] == 1, "batch-1 reference"
        self.step += 1
        x = self.m.embed[tokens[0]]
        for li, lw in enumerate(self.m.layers):
            x = self._layer(li, lw, x)
        return linear(rms_norm(x, self.m.final_norm, self.m.cfg.rms_norm_eps), self.m.head)[None]

    def recomputed(self, gen_length: int, prompt_width: int) -> int:
        """Positions all calls ran through a layer, on a canvas whose prompt region is `prompt_width` wide
        (independent count from the logged refresh flags): layer 0 the whole canvas; later layers the prompt
        region if refreshed plus the response if refreshed, else k = int(G * ratio) rows."""
        k = int(gen_length * self.ratio)
        rest = len(self.m.layers) - 1
        return sum(prompt_width + gen_length + rest * (prompt_width * rp + (gen_length if rg else k))
                   for rp, rg in self.log)
