#!/usr/bin/env python
"""Short diagnostic pilots for the word-problem model (issue 12), on the recipe of `jdllm train words` (its
schedule of --steps, stopped at --stop-at) with one thing changed:

    python scripts/words_pilot.py full --stop-at 1000              # the task as shipped in jdllm.tasks
    python scripts/words_pilot.py one-op --stop-at 1000            # one operation per problem only
    python scripts/words_pilot.py known-words --stop-at 1000       # listed names / objects only, whole-word tokens
    python scripts/words_pilot.py one-op --stop-at 750 --lr 0.001  # any `jdllm train words` option passes through
    python scripts/words_pilot.py one-op --stop-at 750 --fourier-periods 2,5,10  # digit rows seeded with features

Logs the loss every 100 steps and the greedy held-out accuracy on 64 problems of the same variant every 250
steps (`docs/words_model_pilots.md` records the figures). Nothing is written to disk.
"""
from __future__ import annotations

import logging
import random
import sys
import time

from jdllm.tasks import word_problems as wp
from jdllm.train.common import quick_eval, small_llada_config, train_config
from jdllm.train.diffusion import problems_to_sft, train
from jdllm.train.shipped import number_init
from jdllm.train.words import GEN_LEN, PROMPT_LEN, parse_args

VARIANTS = ("full", "one-op", "known-words")


def problems(variant: str, n: int, split: str, seed: int) -> list:
    if variant != "one-op":
        return wp.make_problems(n, split, seed=seed)
    rng, out = random.Random(f"one-op/{split}/{seed}"), []
    while len(out) < n:
        p, key, _ = wp.make_problem(rng, n_ops=1)
        if wp.split_of(key) == split:
            out.append(p)
    return out


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in VARIANTS:
        raise SystemExit(f"usage: words_pilot.py {{{','.join(VARIANTS)}}} --stop-at N [jdllm train words options]")
    variant, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(["--out", "/nonexistent", "--steps", "6500", "--d-model", "128", "--n-layers", "6",
                       "--log-every", "100", "--train-pool", "100000"] + rest)
    tok = wp.word_tokenizer()
    if variant == "known-words":
        wp.MADE_UP_RATE = 0.0  # this process only: no made-up names / objects
        tok = wp.word_tokenizer(extra_words=wp.NAMES + wp.OBJECTS)  # listed names / objects as whole words
    t = time.time()
    data = problems_to_sft(tok, problems(variant, args.train_pool, "train", args.seed), PROMPT_LEN, GEN_LEN,
                           prompt_format=wp.format_prompt)
    held_out = problems(variant, 64, "test", args.seed + 1)
    print(f"{variant}: data in {time.time() - t:.0f}s, mean prompt tokens "
          f"{data.attention_mask[:, :PROMPT_LEN].sum(-1).mean():.1f}", flush=True)
    result = train(small_llada_config(tok, args, 2048), train_config(args), data,
                   callback=quick_eval(held_out, tok, GEN_LEN, PROMPT_LEN, task=wp), callback_every=250,
                   stop_at=args.stop_at, progress=False, init_fn=number_init(tok, args.fourier_periods, count=10))
    print("held-out accuracy by step:",
          [(h["step"], h["quick_acc"]) for h in result.history if h.get("quick_acc") is not None])


if __name__ == "__main__":
    main(sys.argv[1:])
