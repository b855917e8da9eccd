#!/usr/bin/env python
"""Which sub-skill of the word-problem chain a training checkpoint has learned (issue 12 diagnostics).

    python scripts/words_probe.py /work/runs/words-v3/ckpt [--d-model 128 --n-layers 6 ...]

Restores the latest orbax checkpoint of `jdllm train words` (pass the run's model options), takes 256 held-out
problems, and for each kind of answer token (start, op, operand, result, final answer, EOS) masks all tokens of
that kind with the rest of the answer visible, one forward: argmax accuracy on them. Then the same with the whole
answer masked, and each step's result digits alone (by operation and place). Copying the final answer from the
last result ("=059&#### 59") needs only local attention; a model that fails at it has not learned to read the
chain.
"""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdllm.models.transformer import Transformer
from jdllm.tasks import word_problems as wp
from jdllm.train.common import small_llada_config, train_config
from jdllm.train.diffusion import _manager, make_optimizer, problems_to_sft, restore_checkpoint
from jdllm.train.words import GEN_LEN, PROMPT_LEN, parse_args

KINDS = ("label", "start", "op", "operand", "result", "final", "eos")
START = 1 + wp.WIDTH  # "@016": the start's label and digits
STEP_LAYOUT = {0: "label", 1: "op", 2: "operand", 3: "operand", 4: "operand", 5: "eq", 6: "result", 7: "result",
               8: "result"}  # "$+007=019"
STEP = len(STEP_LAYOUT)


def kinds_of(answer: str) -> list[str]:
    """The kind of each character of a chain "LSSSLoBBB=CCC...L#### N" (L: a sentence label)."""
    mark = answer.index(wp.ANSWER_MARK) - 1  # the question's label
    out = []
    for i, ch in enumerate(answer):
        if i < START:
            out.append("label" if i == 0 else "start")
        elif i >= mark:
            out.append("final" if ch.isdigit() else "mark")
        else:
            out.append(STEP_LAYOUT[(i - START) % STEP])
    return out


def result_slots(answer: str) -> list[str]:
    """For each character: "<op> <place>" of a result digit (e.g. "* tens"), else ""."""
    mark, out = answer.index(wp.ANSWER_MARK) - 1, []
    for i in range(len(answer)):
        slot = (i - START) % 9
        out.append(f"{answer[START + 9 * ((i - START) // 9) + 1]} {('hundreds', 'tens', 'ones')[slot - 6]}"
                   if START <= i < mark and slot >= 6 else "")
    return out


def restore(ckpt: str, rest: list[str] = ()) -> tuple:
    """(model, tokenizer, config, step) of the latest `jdllm train words` checkpoint in `ckpt` (model options in
    `rest`)."""
    args = parse_args(["--out", "/nonexistent", "--d-model", "128", "--n-layers", "6"] + list(rest))
    tok = wp.word_tokenizer()
    cfg, tc = small_llada_config(tok, args, 2048), train_config(args)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    tree = restore_checkpoint(_manager(ckpt, tc), params, make_optimizer(tc).init(params))
    return nnx.merge(graphdef, tree["params"]), tok, cfg, int(tree["step"])


def main(argv: list[str]) -> None:
    model, tok, cfg, step = restore(argv[0], argv[1:])
    probs = wp.make_problems(256, "test", seed=1)
    data = problems_to_sft(tok, probs, PROMPT_LEN, GEN_LEN, prompt_format=wp.format_prompt)
    kinds = np.full(data.tokens.shape, "", dtype=object)
    slots = np.full(data.tokens.shape, "", dtype=object)
    for r, p in enumerate(probs):
        ks = kinds_of(p.answer_text)
        if len(tok.encode(p.answer_text)) != len(ks):
            raise ValueError(f"expected one token per character: {p.answer_text!r}")
        kinds[r, PROMPT_LEN: PROMPT_LEN + len(ks)] = ks
        kinds[r, PROMPT_LEN + len(ks):] = "eos"
        slots[r, PROMPT_LEN: PROMPT_LEN + len(ks)] = result_slots(p.answer_text)
    forward = jax.jit(lambda t, m: model(t, attention_mask=m).argmax(-1))

    def predict(masked):
        noisy = np.where(masked, cfg.mask_id, data.tokens)
        return np.concatenate([np.asarray(forward(jnp.asarray(noisy[s: s + 64]),
                                                  jnp.asarray(data.attention_mask[s: s + 64])))
                               for s in range(0, len(noisy), 64)])

    print(f"step {step}, 256 held-out problems")
    for k in KINDS:
        m = kinds == k
        print(f"  {k:8s} masked alone, rest of the answer visible: {(predict(m)[m] == data.tokens[m]).mean():.3f}")
    # One step's result at a time, everything else visible (masking every result at once also hides the inputs
    # of all steps but the first: the previous total is the previous step's result).
    m = kinds == "result"
    step_of = np.full(data.tokens.shape, -1)
    step_of[:, PROMPT_LEN:] = (np.arange(GEN_LEN) - START) // 9
    right = np.zeros(data.tokens.shape, bool)
    for j in range(max(wp.N_OPS)):
        mj = m & (step_of == j)
        right |= mj & (predict(mj) == data.tokens)
    print(f"  result   one step masked, its inputs visible: {right[m].mean():.3f}")
    print("    by operation and place: " + ", ".join(
        f"{s} {right[slots == s].mean():.2f} ({(slots == s).sum()})" for s in sorted(set(slots[m]))))
    pred = predict(data.answer_mask.astype(bool))
    print("  whole answer masked: " + ", ".join(
        f"{k} {(pred[kinds == k] == data.tokens[kinds == k]).mean():.3f}" for k in KINDS))


if __name__ == "__main__":
    main(sys.argv[1:])
