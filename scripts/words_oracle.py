#!/usr/bin/env python
"""How much of a word-problem model's failure is the plan and how much the arithmetic (issue 12 diagnostics).

    python scripts/words_oracle.py MODEL_DIR [--n 200] [--seed 1]

Decodes `--n` held-out problems as the issue's bar does (LLaDA low-confidence, one token per step, blocks of 32,
steps = gen_length), written out as a plain loop so that parts of the gold answer can be given: those positions
start committed to the gold token and the rest decode as usual. Four runs: nothing given; the EOS positions
(the chain's length); the final line ("&#### N", after the question's label) and the EOS positions; the whole
plan (start, operations, operands, the sentence labels, each step's "=" and the end), so only the totals are
decoded. Per run: exact answers, and chains whose every step
(op, operand, total) is right (`words_errors.classify`).
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from words_errors import classify
from words_probe import kinds_of

from jdllm.tasks import word_problems as wp
from jdllm.train.diffusion import encode_prompts
from jdllm.train.words import GEN_LEN, PROMPT_LEN
from jdllm.weights.hf import load_hf

BLOCK = 32
RUNS = (("nothing", ()), ("the EOS positions", ("eos",)), ("the final line and the EOS positions", ("mark", "final", "eos")),
        ("the plan", ("label", "start", "op", "operand", "eq", "mark", "final", "eos")))  # `kinds_of` kinds


def gold_kinds(tok, problems, eos_id: int):
    """Gold answer tokens [N, GEN_LEN] (EOS-filled) and the kind of each position (`words_probe.kinds_of`, "eos"
    after the answer)."""
    gold = np.full((len(problems), GEN_LEN), eos_id)
    kinds = np.full(gold.shape, "eos", dtype=object)
    for i, p in enumerate(problems):
        ids = tok.encode(p.answer_text)
        assert len(ids) == len(p.answer_text), "one token per character"
        gold[i, :len(ids)] = ids
        kinds[i, :len(ids)] = kinds_of(p.answer_text)
    return gold, kinds


def decode(forward, mask_id: int, prompt, gen):
    """Vanilla low-confidence decoding of the masked positions of `gen`, one per step, block by block."""
    for start in range(0, GEN_LEN, BLOCK):
        region = np.zeros(GEN_LEN, bool)
        region[start:start + BLOCK] = True
        while (cand := region[None] & (gen == mask_id)).any():
            probs = np.asarray(forward(jnp.asarray(np.concatenate([prompt, gen], 1))))[:, PROMPT_LEN:]
            pick = np.where(cand, probs.max(-1), -1).argmax(1)
            rows = np.where(cand.any(1))[0]
            gen[rows, pick[rows]] = probs.argmax(-1)[rows, pick[rows]]
    return gen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    model, tok = load_hf(args.model_dir), wp.word_tokenizer()
    problems = wp.make_problems(args.n, "test", seed=args.seed)
    prompt, mask = encode_prompts(tok, [wp.format_prompt(p.question) for p in problems], PROMPT_LEN)
    attention = jnp.asarray(np.concatenate([mask, np.ones((args.n, GEN_LEN), mask.dtype)], 1))
    forward = jax.jit(lambda x: jax.nn.softmax(model(x, attention_mask=attention), -1))
    gold, kinds = gold_kinds(tok, problems, model.config.eos_id)
    for name, given in RUNS:
        gen = decode(forward, model.config.mask_id, prompt, np.where(np.isin(kinds, given), gold, model.config.mask_id))
        preds = [tok.decode_until_eos(row) for row in gen]
        exact = np.mean([wp.score(pr, p.answer) for pr, p in zip(preds, problems)])
        chain = np.mean([classify(pr, p.answer_text) in ("ok", "final") for pr, p in zip(preds, problems)])
        print(f"given {name:34s} exact answers {exact:.3f}  chain right {chain:.3f}", flush=True)


if __name__ == "__main__":
    main()
