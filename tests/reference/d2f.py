"""Batch-1, Python-loop, greedy reference of D2F's pipelined parallel decoding (arXiv 2508.09192, Algorithm 2;
official `D2F-eval/eval_llada.py::_generate_block_single`, as transcribed in research/caching.md §6.3), written
from that description, not from jdllm:

    blocks = {0: prompt (complete)}; loop:
      1) growth: if fewer than gen_length / bs blocks and no EOS seen and the newest block's decoded ratio
         >= tau_add: append a block of bs masks (state active, semi-activated)
      2) activation: block b + 1 becomes fully activated once block b's ratio >= tau_act (sticky)
      3) one forward (NFE + 1); blocks marked to_cache become in_cache
      4) every active block with masks: conf, x0 = max softmax; sel = {conf > tau_conf}; a fully activated block
         with sel empty takes its argmax; EOS in the committed tokens -> eos_seen
      5) a block without masks whose predecessors are all non-active becomes to_cache
      stop when no mask is left in the added blocks and (every block is added or EOS was seen)

Two documented jdllm choices are parameters here, so the reference can follow them:
- `full_rule=">="`: a fully activated block commits conf >= tau_conf (jdllm's `Threshold`) instead of `>`;
- `max_in_flight`: jdllm's static window caps growth (at most `max_in_flight` blocks with masks and
  `max_in_flight + 1` blocks not yet in cache); None = the reference's unbounded growth.

`logits_fn(x)` returns the raw logits [L, V] of the whole sequence `x` (prompt + every generation position,
blocks not yet added still masked). For a block-causal model this equals the official code's growing sequence
(later blocks are invisible); for a bidirectional model it is the same algorithm on jdllm's canvas.
`shift=True` reads position i's logits from output i - 1 (Dream). Unadded positions left at the end (EOS stop)
are filled with `eos_id`, as jdllm does.
"""

from __future__ import annotations

import numpy as np

from tests.reference.model import softmax


def d2f_generate(logits_fn, prompt, gen_length: int, block_length: int, *, mask_id: int, tau_add: float,
                 tau_act: float, tau_conf: float, eos_ids=(), eos_id=None, shift: bool = False,
                 full_rule: str = ">=", max_in_flight: int | None = None):
    """Returns (generated tokens [gen_length], NFE)."""
    prompt = list(map(int, prompt))
    lp, n_blocks = len(prompt), gen_length // block_length
    x = np.array(prompt + [mask_id] * gen_length, dtype=np.int64)
    blocks: list[dict] = []  # generation blocks: state, full
    eos_seen, nfe = False, 0

    def span(i):
        return lp + i * block_length, lp + (i + 1) * block_length

    def ratio(i):
        s, e = span(i)
        return float(np.mean(x[s:e] != mask_id))

    while True:
        # 1) growth
        newest = 1.0 if not blocks else ratio(len(blocks) - 1)
        with_masks = sum(ratio(i) < 1.0 for i in range(len(blocks)))
        not_cached = sum(b["state"] != "in_cache" for b in blocks)
        room = max_in_flight is None or (with_masks < max_in_flight and not_cached < max_in_flight + 1)
        if len(blocks) < n_blocks and not eos_seen and newest >= tau_add and room:
            blocks.append(dict(state="active", full=False))
        # 2) activation (the prompt counts as complete)
        for i, b in enumerate(blocks):
            if (1.0 if i == 0 else ratio(i - 1)) >= tau_act:
                b["full"] = True
        # 3) forward
        raw = np.asarray(logits_fn(x), dtype=np.float64)
        logits = np.concatenate([raw[:1], raw[:-1]]) if shift else raw
        nfe += 1
        for b in blocks:
            if b["state"] == "to_cache":
                b["state"] = "in_cache"
        # 4) decode every active block
        for i, b in enumerate(blocks):
            s, e = span(i)
            masked = np.flatnonzero(x[s:e] == mask_id) + s
            if b["state"] != "active" or masked.size == 0:
                continue
            probs = softmax(logits[masked], axis=-1)
            x0 = np.argmax(probs, axis=-1)
            conf = probs[np.arange(masked.size), x0]
            if b["full"]:
                sel = conf >= tau_conf if full_rule == ">=" else conf > tau_conf
                if not sel.any():
                    sel[np.argmax(conf)] = True  # argmax: ties to the lower position
            else:
                sel = conf > tau_conf
            x[masked[sel]] = x0[sel]
            if any(int(t) in eos_ids for t in x0[sel]):
                eos_seen = True
        # 5) retire
        for i, b in enumerate(blocks):
            if b["state"] == "active" and ratio(i) == 1.0 and all(p["state"] != "active" for p in blocks[:i]):
                b["state"] = "to_cache"
        complete = all(ratio(i) == 1.0 for i in range(len(blocks)))
        if complete and (len(blocks) == n_blocks or eos_seen):
            break
    out = x[lp:].copy()
    if eos_id is not None:
        out[out == mask_id] = eos_id
    return out, nfe
