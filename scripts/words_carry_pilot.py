#!/usr/bin/env python
"""Do written carries make the word-problem chain's arithmetic learnable faster? (issue 12 diagnostics)

    python scripts/words_carry_pilot.py plain  --steps 1500 [jdllm train words options]
    python scripts/words_carry_pilot.py carries --steps 1500

Trains a fresh model on chains alone (the drill rows of `jdllm train words`: no question, no final answer, the
computed digits masked, start and operands visible) in one of two formats:
  plain    "@016$*004=064%-005=059": the chain without its helper digits (the task before session 9);
  carries  "@016$*004:20=064%-005:10=059": the task's chain, two helper digits before each total
           (`word_problems.helper_digits`: the carries of + and x, the borrows of -, the remainders of /), so
           that every digit of a total is a function of three visible digits at fixed offsets instead of a chain
           of carries computed inside one forward.
Every `--eval-every` steps, on 256 held-out chains: the computed digits (totals, and the helper digits) are all
masked and decoded one position per forward by confidence, as vanilla decoding does with the plan known; reported:
chains with every total right, and the totals' digits right by operation and place. Nothing is written to disk.
"""
from __future__ import annotations

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jdllm.tasks import word_problems as wp
from jdllm.train.common import small_llada_config, train_config
from jdllm.train.diffusion import encode_sft, train
from jdllm.train.shipped import number_init
from jdllm.train.words import DRILL_GEN_LEN as GEN
from jdllm.train.words import DRILL_PROMPT_LEN as PROMPT
from jdllm.train.words import parse_args

PLACES = ("hundreds", "tens", "ones")


def chain(answer_text: str, carries: bool) -> str:
    """The chain of a problem's answer without its final line, with or without its helper digits."""
    body = answer_text[: answer_text.index(wp.ANSWER_MARK) - 1]
    return body if carries else re.sub(r":\d\d=", "=", body)


def encode(tok, n: int, split: str, seed: int, carries: bool):
    """Drill rows, the focus (computed digits) and per position "<op> <place>" of a total's digit."""
    problems = wp.make_problems(n, split, seed=seed)
    chains = [chain(p.answer_text, carries) for p in problems]
    data = encode_sft(tok, ["\n"] * len(chains), chains, PROMPT, GEN)
    focus = np.zeros(data.tokens.shape, bool)
    slots = np.full(data.tokens.shape, "", dtype=object)
    for r, text in enumerate(chains):
        for m in re.finditer(r"([-+*/])\d{3}(?::(\d\d))?=(\d{3})", text):
            if m.group(2):
                focus[r, PROMPT + m.start(2): PROMPT + m.end(2)] = True
            focus[r, PROMPT + m.start(3): PROMPT + m.end(3)] = True
            for d in range(3):
                slots[r, PROMPT + m.start(3) + d] = f"{m.group(1)} {PLACES[d]}"
    data.focus_mask = focus
    return data, slots


def decoded_accuracy(model, cfg, data, slots):
    """Decode every focus position (masked together), one per row per forward by confidence."""
    forward = jax.jit(lambda t, m: jax.nn.softmax(model(t, attention_mask=m), -1))
    x = np.where(data.focus_mask, cfg.mask_id, data.tokens)
    att = jnp.asarray(data.attention_mask)
    while (cand := x == cfg.mask_id).any():
        probs = np.asarray(forward(jnp.asarray(x), att))
        pick = np.where(cand, probs.max(-1), -1).argmax(1)
        rows = np.where(cand.any(1))[0]
        x[rows, pick[rows]] = probs.argmax(-1)[rows, pick[rows]]
    total = slots != ""
    right = x == data.tokens
    chains_right = np.mean([right[r][total[r]].all() for r in range(len(x))])
    by = {s: right[slots == s].mean() for s in sorted(set(slots[total]))}
    return chains_right, right[total].mean(), by


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("plain", "carries"):
        raise SystemExit("usage: words_carry_pilot.py {plain,carries} [--steps N] [jdllm train words options]")
    carries = argv[0] == "carries"
    args = parse_args(["--out", "/nonexistent", "--steps", "1500", "--d-model", "128", "--n-layers", "6",
                       "--log-every", "250", "--train-pool", "100000", "--fourier-periods", "2,5,10,20,40",
                       "--focus-rate", "1.0", "--eval-every", "500"] + argv[1:])
    tok = wp.word_tokenizer()
    data, _ = encode(tok, args.train_pool, "train", args.seed, carries)
    held, held_slots = encode(tok, 256, "test", args.seed + 1, carries)
    cfg = small_llada_config(tok, args, 2048)

    def callback(step, model):
        exact, digits, by = decoded_accuracy(model, cfg, held, held_slots)
        print(f"  [{argv[0]}] step {step}: chains right {exact:.3f}, total digits {digits:.3f}; "
              + ", ".join(f"{k} {v:.2f}" for k, v in by.items()), flush=True)
        return {"quick_acc": float(exact)}

    train(cfg, train_config(args), data, callback=callback, callback_every=args.eval_every, stop_at=args.stop_at,
          progress=False, log=lambda m: print(m, flush=True), init_fn=number_init(tok, args.fourier_periods, count=10))


if __name__ == "__main__":
    main(sys.argv[1:])
