#!/usr/bin/env python
"""The word-problem model's arithmetic in isolation (issue 12 diagnostics): how fast does the model learn the
running totals' digits when it sees only chains ("@016$*004=064%-005=059", no question, no final answer) with
the totals masked (focus rows, `mask_candidates`) and the start and operands visible?

    python scripts/words_arith_pilot.py --stop-at 1000 [jdllm train words options: --lr, --batch-size, ...]
    python scripts/words_arith_pilot.py --probe CKPT_DIR     # the same measure on a `jdllm train words` checkpoint

Every 250 steps: the accuracy of each step's total digits, masked one step at a time with the rest visible, on
256 held-out chains, by operation and digit place. Nothing is written to disk.
"""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jdllm.tasks import word_problems as wp
from jdllm.train.common import small_llada_config, train_config
from jdllm.train.diffusion import train
from jdllm.train.shipped import number_init
from jdllm.train.words import DRILL_PROMPT_LEN, drill_data, parse_args


def encode(tok, n: int, split: str, seed: int):
    """`drill_data` rows of `n` problems, and per position the "<step> <op> <place>" label of a total's digit."""
    problems = wp.make_problems(n, split, seed=seed)
    data = drill_data(tok, problems)
    slots = np.full(data.tokens.shape, "", dtype=object)
    for r, p in enumerate(problems):
        eq = [i for i, ch in enumerate(p.answer_text) if ch == "="]
        for k, e in enumerate(eq):
            for d, place in enumerate(("hundreds", "tens", "ones")):
                slots[r, DRILL_PROMPT_LEN + e + 1 + d] = f"{k} {p.answer_text[e - 4]} {place}"
    return data, slots


def accuracy_callback(tok, cfg, data, slots):
    def callback(step, model):
        forward = jax.jit(lambda t, m: model(t, attention_mask=m).argmax(-1))
        right = np.zeros(data.tokens.shape, bool)
        step_of = np.vectorize(lambda s: int(s.split()[0]) if s else -1)(slots)
        for j in range(max(wp.N_OPS)):
            m = step_of == j
            noisy = np.where(m, cfg.mask_id, data.tokens)
            pred = np.asarray(forward(jnp.asarray(noisy), jnp.asarray(data.attention_mask)))
            right |= m & (pred == data.tokens)
        kinds = np.vectorize(lambda s: " ".join(s.split()[1:]))(slots)
        focus = slots != ""
        by = {k: right[kinds == k].mean() for k in sorted(set(kinds[focus]))}
        print(f"  [arith] step {step}: totals {right[focus].mean():.3f}; "
                     + ", ".join(f"{k} {v:.2f}" for k, v in by.items()), flush=True)
        return {"quick_acc": float(right[focus].mean())}
    return callback


def probe(ckpt: str) -> None:
    from words_probe import restore

    model, tok, cfg, step = restore(ckpt)
    held, held_slots = encode(tok, 256, "test", 1)
    accuracy_callback(tok, cfg, held, held_slots)(step, model)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--probe"]:
        return probe(argv[1])
    args = parse_args(["--out", "/nonexistent", "--steps", "6500", "--d-model", "128", "--n-layers", "6",
                       "--log-every", "100", "--train-pool", "100000", "--fourier-periods", "2,5,10",
                       "--focus-rate", "1.0", "--eval-every", "250"] + argv)
    tok = wp.word_tokenizer()
    data, _ = encode(tok, args.train_pool, "train", args.seed)
    held, held_slots = encode(tok, 256, "test", args.seed + 1)
    cfg = small_llada_config(tok, args, 2048)
    train(cfg, train_config(args), data, callback=accuracy_callback(tok, cfg, held, held_slots), callback_every=args.eval_every,
          stop_at=args.stop_at, progress=False, log=lambda m: print(m, flush=True), init_fn=number_init(tok, args.fourier_periods, count=10))


if __name__ == "__main__":
    main(sys.argv[1:])
