#!/usr/bin/env python
"""Where an exported word-problem model's wrong answers go wrong (issue 12 diagnostics).

    python scripts/words_errors.py MODEL_DIR [--n 200] [--seed 1]

Decodes `--n` held-out problems (`make_problems(n, "test", seed)`, the split `jdllm train words` evaluates)
with vanilla LLaDA decoding (steps = gen_length, blocks of `--block-length`, default 32) and sorts every answer into the first stage it
fails, reading the chain as equations with `evaluate_chain`:
  plan        the start, the operations or the operands differ from the gold chain's (reading the question);
  arithmetic  the plan is right but a step's total is wrong given its own inputs (reported by operation and the
              highest wrong digit place);
  final       every step is right but the number after "####" is not the last total;
  ok          the answer is right.
"""
from __future__ import annotations

import argparse
import collections

from jdllm.tasks import word_problems as wp
from jdllm.train.diffusion import evaluate
from jdllm.train.words import GEN_LEN, PROMPT_LEN
from jdllm.weights.hf import load_hf

PLACES = ("hundreds", "tens", "ones")


def classify(pred: str, gold_chain: str) -> str:
    """The first stage at which `pred` departs from `gold_chain` (see the module docstring)."""
    got, want = wp.evaluate_chain(pred), wp.evaluate_chain(gold_chain)
    start_ok = got and want and got[0][0] == want[0][0]
    if not start_ok or [(op, b) for _, op, b, _ in got] != [(op, b) for _, op, b, _ in want]:
        return "plan"
    for a, op, b, c in got:
        right = wp.apply_op(a, op, b)
        if c != right:
            cs, rs = f"{c:03d}", f"{right:03d}"
            place = next(PLACES[i] for i in range(3) if cs[i] != rs[i])
            return f"arithmetic {op} {place}"
    return "ok" if wp.score(pred, str(want[-1][3])) else "final"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--block-length", type=int, default=32, help="semi-AR block (32: the issue's vanilla setting)")
    args = ap.parse_args()
    model, tok = load_hf(args.model_dir), wp.word_tokenizer()  # the tokenizer `jdllm train words` exports
    problems = wp.make_problems(args.n, "test", seed=args.seed)
    acc, preds = evaluate(model, problems, GEN_LEN, args.block_length, tokenizer=tok, batch_size=100, prompt_len=PROMPT_LEN,
                          return_predictions=True, prompt_format=wp.format_prompt)
    counts = collections.Counter(classify(pr, p.answer_text) for pr, p in zip(preds, problems))
    print(f"{args.model_dir}: exact answers {acc:.3f} on {args.n} held-out problems")
    for kind, k in counts.most_common():
        print(f"  {kind:28s} {k:4d}  {k / args.n:.3f}")


if __name__ == "__main__":
    main()
