#!/usr/bin/env python
"""Train the word-problem model: a small LLaDA-architecture masked-diffusion model on
`jdllm.tasks.word_problems` (5 phrasings, any name / object, 1-5 operations of + - x /, digits one token each).

    jdllm train words --out runs/words-llada-small/model             # the recorded recipe (fixed seed)
    jdllm train words --out /tmp/pilot --steps 300 --eval-n 64       # a quick pilot

`--out` is required (nothing is written into the installed package). Writes a Hugging Face LLaDA directory
(`config.json`, `model.safetensors`, `tokenizer.json` with its normaliser, `tokenizer_config.json` with the chat
template, `generation_config.json`, `MODEL_CARD.md`, `loss_log.json`, `eval.json`). Orbax checkpoints go to
`--ckpt-dir` (resumable: rerunning the same command continues from the latest one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import time

import jax
import numpy as np

from jdllm.log import get_logger
from jdllm.tasks import word_problems
from jdllm.text import write_tokenizer_config
from jdllm.train.common import quick_eval, small_llada_config, task_data, train_config
from jdllm.train.diffusion import encode_sft, evaluate, export_llada, param_count, read_ledger, train
from jdllm.train.shipped import number_init
from jdllm.weights.hf import load_hf

PROMPT_LEN = 104  # labelled question + newline (<= 100 tokens, `word_problems.MAX_QUESTION_CHARS`), left-padded
GEN_LEN = 64  # two blocks of 32; the longest chain is 58 tokens, the rest is EOS padding
MAX_SEQ_LEN = 2048
MODEL_NAME = "words-llada-small"
_LABEL = "[" + re.escape(word_problems.LABELS) + "]"
# generation_config.json: what every trained answer looks like ("@073$+058=131%-007=124&#### 124")
ANSWER_PATTERN = rf"^{_LABEL}\d{{3}}({_LABEL}[-+*/]\d{{3}}=\d{{3}})+{_LABEL}#### \d+$"

_LOG = get_logger(__name__)

PILOTS = """All on the project's 2-core CPU, 6 layers unless noted; figures and probes in `docs/words_model_pilots.md`.

| pilot | task | change | result |
|---|---|---|---|
| 1 | v1 (unpadded chains) | 4 layers, lr 3e-3, 3000 steps | 1.4% on 500 held-out |
| 2 | v1 | lr 3e-3, stopped at step 2600 | 1.6% quick held-out (64) |
| 3 | v2 (zero-padded running totals) | lr 3e-3, length-bucketed batches, stopped at 3000 | 6.2% quick held-out; loss flat |
| 4 | v2 | lr 1e-3, stopped at step 4500 (61 min) | 9.6% on 500 held-out |
| 5 | v2 | lr 1e-3, digit rows seeded with Fourier features (periods 2, 5, 10), stopped at 2500 | 4.7% quick held-out at step 2000; copying learned twice as fast, totals not |
| 6 | v2 | as 5, plus half the rows masking only the totals (`--focus-rate 0.5`), stopped at 2200 | 3.1% quick held-out at step 2000; one total at a time right 65% (pilot 5: 61%) |
| 7 | v2 | as 5 with periods 2, 5, 10, 20, 40; 3000 drill steps on chains alone (`--drill-steps 3000`), then the full task to step 9000 (about 107 min) | **29.0% on 500 held-out**; + and - ones digits learned, carries (tens) and x, / not; a third of the answers misread the question while decoding |
| 8 | v2 | as 7, plus a drill batch every 4th step after the switch (`--drill-every 4`), 9000 steps (about 100 min) | **33.0% on 500 held-out** (per frame 40 / 38 / 51 / 25 / 19%); plan errors 35.5% of 200, arithmetic 33% |
| 9 | v3 (v2 + sentence labels in the prompt and the chain) | as 8 (101 min) | **54.6% on 500 held-out** (per frame 57 / 60 / 85 / 40 / 17%); plan errors 1% of 200, arithmetic 43.5% (x tens 16%, / 13.5%) |
| 10 | v4 (v3 + two helper digits per step: carries, borrows, remainders; 96-token answers) | as 9 (about 123 min, resumed once) | **39.0% on 500 held-out** (per frame 51 / 43 / 63 / 38 / 20%); slower to learn at every step (quick held-out 22% at step 8000, pilot 9: 56%); the task went back to v3 |

What they taught: lr 3e-3 stalls even one-operation problems (loss flat from step 300); spelling names by
character is not the bottleneck (whole-word names learn no faster); copying the question's numbers and
operations is learned within 2000-4000 steps; the arithmetic facts (the digits of each new total) are not. With
the start and operand in view, the ones digit of a sum was right about half the time at step 2000, and the model
mostly wrote the previous total's ones digit. In isolation (`scripts/words_arith_pilot.py`, chains only) it stays
near chance for 750 steps. Each input digit alone tells nothing about (a + b) mod 10, so attention gets no
first-order signal to find the two inputs (`docs/words_model_pilots.md`). A drill phase on chains alone
(pilot 7) taught the ones digits; then two failures remain about equally: carries, and the plan (the operations
the chain lists) going wrong while decoding, mostly extra or repeated steps. Labelling the question's sentences
and starting each chain element with its sentence's label (pilot 9) removed the plan errors; the carries remain.
Writing the carries down before each total (pilot 10) made the model learn more slowly, not faster, within the
budget, so the current task is v3 again."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="jdllm train words", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory of the exported model (required)")
    ap.add_argument("--ckpt-dir", default=None, help="orbax checkpoints (default: OUT/../ckpt)")
    ap.add_argument("--fresh", action="store_true", help="delete --ckpt-dir first instead of resuming")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--stop-at", type=int, default=None, help="end this invocation at that step (resume later)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=512)
    ap.add_argument("--train-pool", type=int, default=300_000, help="distinct training problems drawn")
    ap.add_argument("--eval-n", type=int, default=500, help="held-out problems for the final accuracy")
    ap.add_argument("--eval-every", type=int, default=1000, help="steps between quick evaluations (0: none)")
    ap.add_argument("--quick-eval-n", type=int, default=64)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--fourier-periods", default="none",
                    help="seed the digit tokens' embedding / head rows with Fourier features of their value, e.g. "
                         "'2,5,10' (`fourier_number_init`); 'none': plain random initialisation")
    ap.add_argument("--bucket-pool", type=int, default=64,
                    help="batches of similar question length from pools of this many batches, left padding "
                         "trimmed (0: fixed-width rows)")
    ap.add_argument("--focus-rate", type=float, default=0.0,
                    help="fraction of training rows that mask only the running totals' digits, the rest of the "
                         "answer visible (`jdllm.train.diffusion.mask_candidates`); 0: LLaDA's uniform masking only")
    ap.add_argument("--drill-steps", type=int, default=0,
                    help="train the first N steps on the training problems' chains alone (no question, no final "
                         "answer), the totals masked and the start and operands visible (`drill_data`); 0: none")
    ap.add_argument("--drill-every", type=int, default=0,
                    help="after the drill phase, every Nth step is a drill step too, so the totals keep being "
                         "trained while the question is learned (0: none)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--notes", default="", help="text appended to the model card (pilots, what was tried)")
    ap.add_argument("--card-only", action="store_true",
                    help="only re-render OUT/MODEL_CARD.md from the run's OUT/eval.json and OUT/loss_log.json")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.card_only:
        return rewrite_card(args)
    ckpt_dir = args.ckpt_dir or os.path.join(os.path.dirname(os.path.abspath(args.out)), "ckpt")
    if args.fresh and os.path.isdir(ckpt_dir):
        shutil.rmtree(ckpt_dir)
    tok = word_problems.word_tokenizer()
    train_problems, data, test_problems = task_data(word_problems, tok, args, PROMPT_LEN, GEN_LEN)
    if args.focus_rate > 0:
        data.focus_mask = focus_mask(data, [p.answer_text for p in train_problems], tok.eos_id)
    quick = test_problems[: args.quick_eval_n]
    cfg = small_llada_config(tok, args, MAX_SEQ_LEN)
    tc = train_config(args)
    callback = quick_eval(quick, tok, GEN_LEN, PROMPT_LEN, task=word_problems) if args.eval_every else None
    drill = drill_data(tok, train_problems) if args.drill_steps or args.drill_every else None
    result = train(cfg, tc, data, ckpt_dir=ckpt_dir, callback=callback, callback_every=args.eval_every,
                   stop_at=args.stop_at, init_fn=number_init(tok, args.fourier_periods, count=10), drill=drill)
    history, train_seconds = read_ledger(ckpt_dir, result)
    gen_cfg = {"gen_length": GEN_LEN, "block_length": 32, "steps": GEN_LEN, "remasking": "low_confidence",
               "temperature": 0.0, "max_prompt_length": PROMPT_LEN, "answer_pattern": ANSWER_PATTERN,
               "task": "word_problems",
               "mask_token_id": tok.mask_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    export_llada(result.model, tok, args.out, generation_config=gen_cfg)
    write_tokenizer_config(args.out, tok, word_problems.CHAT_TEMPLATE, model_max_length=MAX_SEQ_LEN)
    model = load_hf(args.out, check_finite=True)  # evaluate what ships
    t_eval = time.time()
    acc, preds = evaluate(model, test_problems, GEN_LEN, 32, tokenizer=tok, batch_size=100, prompt_len=PROMPT_LEN,
                          return_predictions=True, progress=True, prompt_format=word_problems.format_prompt)
    eval_seconds = time.time() - t_eval
    per_frame = frame_accuracy(model, tok, args.seed + 1)
    size_mb = os.path.getsize(os.path.join(args.out, "model.safetensors")) / 2**20
    _LOG.info(f"held-out accuracy {acc:.4f} on {len(test_problems)} ({eval_seconds:.0f}s); per frame {per_frame}; "
              f"{param_count(model)} parameters, {size_mb:.2f} MiB")
    first50 = [word_problems.score(pr, p.answer) for pr, p in zip(preds[:50], test_problems[:50])]
    report = {"step": result.step, "steps": tc.steps, "accuracy": acc, "n": len(test_problems),
              "accuracy_first50": sum(first50) / len(first50),
              "per_frame_accuracy_n100": per_frame, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
              "examples": [{"question": p.question, "generated": pr, "gold": p.answer}
                           for p, pr in zip(test_problems[:8], preds[:8])]}
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "loss_log.json"), "w") as f:
        json.dump(history, f, indent=0)
    write_card(args, cfg, tc, history, report, param_count(model), size_mb, result.step)
    return acc


def focus_mask(data, answers: list[str], eos_id: int) -> np.ndarray:
    """bool [N, P+G]: the running totals' digits of each row's answer text (`word_problems.result_positions`; the
    chain is one token per character, checked against the encoded rows)."""
    out = np.zeros(data.tokens.shape, bool)
    for r, text in enumerate(answers):
        n = int((data.tokens[r, data.prompt_len:] != eos_id).sum())
        if n != len(text):
            raise ValueError(f"row {r}: {n} answer tokens for {len(text)} characters ({text!r})")
        out[r, [data.prompt_len + i for i in word_problems.result_positions(text)]] = True
    return out


DRILL_PROMPT_LEN, DRILL_GEN_LEN = 8, 56  # drill rows: a one-token prompt ("\n"), the chain (<= 49 tokens), EOS


def drill_data(tok, problems):
    """Arithmetic drill rows: each problem's chain without its question and final answer
    ("@016$*004=064%-005=059"), focus on the totals' digits. The arithmetic in isolation, about a third of a full
    row's cost (`scripts/words_arith_pilot.py`, `docs/words_model_pilots.md`)."""
    chains = [p.answer_text[: p.answer_text.index(word_problems.ANSWER_MARK) - 1] for p in problems]
    data = encode_sft(tok, ["\n"] * len(chains), chains, DRILL_PROMPT_LEN, DRILL_GEN_LEN)
    data.focus_mask = focus_mask(data, chains, tok.eos_id)
    return data


def rewrite_card(args) -> float:
    """Re-render the model card of a finished export from its own records (the card's text changed, the run not)."""
    with open(os.path.join(args.out, "eval.json")) as f:
        report = json.load(f)
    with open(os.path.join(args.out, "loss_log.json")) as f:
        history = json.load(f)
    tok = word_problems.word_tokenizer()
    cfg, tc = small_llada_config(tok, args, MAX_SEQ_LEN), train_config(args)
    model = load_hf(args.out)
    size_mb = os.path.getsize(os.path.join(args.out, "model.safetensors")) / 2**20
    write_card(args, cfg, tc, history, report, param_count(model), size_mb, report["step"])
    return report["accuracy"]


def frame_accuracy(model, tok, seed: int, n: int = 100) -> dict[str, float]:
    """Vanilla accuracy on `n` held-out problems of each frame."""
    out = {}
    for frame in word_problems.FRAMES:
        probs = word_problems.make_problems(n, "test", seed=seed, frame=frame)
        out[frame] = evaluate(model, probs, GEN_LEN, 32, tokenizer=tok, batch_size=n, prompt_len=PROMPT_LEN,
                              prompt_format=word_problems.format_prompt)
    return out


def write_card(args, cfg, tc, history, report, n_params, size_mb, step):
    w = word_problems
    hist = "\n".join(f"| {h['step']} | {h['loss']:.4f} | {h['masked_acc']:.3f} | "
                     f"{'-' if h.get('quick_acc') is None else format(h['quick_acc'], '.3f')} | {h['seconds']:.0f} |"
                     for h in history if h["step"] % 250 == 0 or h.get("quick_acc") is not None)
    frames = ", ".join(f"{k} {v * 100:.0f}%" for k, v in report["per_frame_accuracy_n100"].items())
    ex = "\n".join(f"- Q: `{e['question']}`\n  - generated: `{e['generated']}` (gold {e['gold']})"
                   for e in report["examples"])
    partial = "" if step >= tc.steps else (f"\n\n**Partial run**: exported at step {step} of a {tc.steps}-step "
                                           "schedule; rerunning the command below resumes it.")
    card = f"""# {MODEL_NAME}

A small LLaDA-architecture masked-diffusion language model (bidirectional transformer, same-position logits),
trained from scratch on CPU by jdllm on synthetic GSM8K-style word problems (`jdllm.tasks.word_problems`):
five phrasings, any name or object word, numbers 0..999 written as digits (one token per digit), 1 to 5
operations of + - x and exact division, a worked chain before `#### answer`.{partial}

## Result
- **Held-out exact-answer accuracy: {report['accuracy'] * 100:.1f}%** on {report['n']} held-out problems
  (`word_problems.make_problems({report['n']}, "test", seed={args.seed + 1})`, arithmetic never seen in training),
  vanilla LLaDA decoding: greedy, low-confidence, blocks of 32, `gen_length={GEN_LEN}`, `steps={GEN_LEN}`
  ({report['eval_seconds']:.0f} s, `jdllm.train.diffusion.evaluate` on the exported files).
- Per frame (100 held-out problems each): {frames}.
- Training wall time: {report['train_seconds'] / 60:.1f} min on {platform.processor() or platform.machine()} CPU
  ({os.cpu_count()} cores), jax {jax.__version__}.

## Reproduce
```
jdllm train words --out {args.out} --steps {tc.steps} --d-model {cfg.d_model} --n-layers {cfg.n_layers} \\
    --n-heads {cfg.n_heads} --mlp {cfg.mlp_hidden_size} --batch-size {tc.batch_size} --lr {tc.peak_lr} --seed {tc.seed} \\
    --bucket-pool {tc.bucket_pool} --fourier-periods {args.fourier_periods} --focus-rate {tc.focus_rate} \\
    --drill-steps {tc.drill_steps} --drill-every {tc.drill_every}
```
Fixed data (`make_problems({args.train_pool}, "train", seed={args.seed})`), fixed masking noise
(`fold_in(key(seed), step)`); resumable from the orbax checkpoints in `--ckpt-dir`.

## Prompt format and decoding
- Prompt: the question's sentences, each after its label (`{w.LABELS}` in order), and one newline
  (`word_problems.format_prompt`; the chat template in `tokenizer_config.json` renders the same for a user
  turn): `@Tom has 12 apples. $He buys 7 more. %How many apples does Tom have?\\n`. `tokenizer.json` normalises
  first (NFKC, lower case, runs of spaces / tabs to one space, no spaces around newlines or at the start), so
  case and spacing do not matter. Characters are tokens, the {len(w.vocabulary_words())} template words (lower case, with and without
  a leading space) are whole-word tokens, digits are one token each; names and object words are spelled
  character by character, so unseen ones are ordinary input. Questions are at most {w.MAX_QUESTION_CHARS} characters
  (<= 100 tokens as a prompt; prompt region {PROMPT_LEN} in training).
- Generation: `gen_length={GEN_LEN}`, `block_length=32`, `steps={GEN_LEN}`; the answer is the text before the
  first `<|eos|>`, e.g. `@012$+007=019%#### 19`: the start and each step "op operand = new total" after the
  label of the sentence it comes from, then the question's label and the final answer (running totals
  zero-padded to three digits so that every step has the same width; the final answer after `####` is plain).

- Special ids: `<|pad|>`={cfg.pad_id}, `<|eos|>`={cfg.eos_id}, `<|mask|>`={cfg.mask_id}.

## Where it stops working
`jdllm generate` warns on stderr (and still answers, exit 0) when `word_problems.check_question` finds the
question outside what the model was trained on: a sentence that is not one of the task's templates (below; one
word per name or object), more than {w.N_OPS[-1]} operations, a + or - operand over {w.OPERAND_RANGE[1]}, a x or / factor outside
{w.FACTORS[0]}..{w.FACTORS[1]}, a start over {w.MAX_VALUE}, a value leaving 0..{w.MAX_VALUE} or a division that is not exact.
Inside those forms the accuracy above is what to expect; outside them the answer is unreliable.

## Architecture
LLaDA layout (`block_type: llama`): pre-RMSNorm, rotary positions, bidirectional multi-head attention, SwiGLU
MLP, untied head. d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, MLP hidden {cfg.mlp_hidden_size}, vocabulary
{cfg.vocab_size}; {n_params:,} parameters, float32, `model.safetensors` {size_mb:.2f} MiB.

## Training
Masked-diffusion SFT (LLaDA objective, `jdllm.train.diffusion`): t ~ U(0,1) per row (stratified), answer
tokens (chain + EOS padding to {GEN_LEN}) masked with p = (1 - 1e-3) t + 1e-3, prompt never masked, cross entropy on
masked positions / p, normalised by the answer length. AdamW (b1 {tc.b1}, b2 {tc.b2}, weight decay
{tc.weight_decay} on matrices), peak lr {tc.peak_lr}, {tc.warmup_steps} warmup steps then cosine to {tc.end_lr_ratio} x peak, clipping
{tc.grad_clip}, batch {tc.batch_size}, {tc.steps} steps. Batches are drawn by question length from pools of
{tc.bucket_pool} batches and their left padding is trimmed (`bucketed_batch_indices`, `trim_padding`: the same
loss, fewer columns). A fraction {tc.focus_rate} of rows (`--focus-rate`, drawn per step from the seed) mask only the
digits of the running totals, with the question's numbers, the operations and the other totals visible
(`mask_candidates`): under uniform masking a total and both its inputs are unmasked together in only 1/12 of
the draws, and the arithmetic facts were what the pilots learned slowest. The first {tc.drill_steps} steps
(`--drill-steps`) train on the chains alone (`drill_data`: no question, no final answer, only the totals masked),
the arithmetic in isolation at a third of a full row's cost; the full task follows. Full loss log:
`loss_log.json`.

| step | loss | masked-token acc | quick held-out acc (64) | seconds |
|---|---|---|---|---|
{hist}

## Examples (held-out)
{ex}

## Task grammar (`jdllm.tasks.word_problems`)
- Frames: {', '.join(w.FRAMES)} (present "has / buys / loses", past "had / bought / lost", a container
  "A box has N eggs. She puts in 6. Then she takes out 4.", groups "Lily has 4 bags. Each bag has 6 cookies.",
  sharing "... shares them equally among 4 friends. How many does each friend get?"), several question lines
  per frame, connectives "Then / After that, / Later / Next".
- Operations: {w.N_OPS[0]}..{w.N_OPS[-1]}; + and - operands of 1-2 digits, x and / by {w.FACTORS[0]}..{w.FACTORS[1]}
  (groups: {w.GROUPS_RANGE[0]}..{w.GROUPS_RANGE[1]} groups of {w.PER_GROUP_RANGE[0]}..{w.PER_GROUP_RANGE[1]}),
  every value 0..{w.MAX_VALUE}, divisions exact; answers over
  {w.MAX_ANSWER_CHARS} characters or questions over {w.MAX_QUESTION_CHARS} are re-drawn.
- {len(w.NAMES)} listed names and {len(w.OBJECTS)} objects, plus (1 in 3) words made up from syllables.
- Split: 1 in {w.TEST_BUCKETS} canonical forms (the arithmetic alone, e.g. `16*4-5`) held out by a hash.

## Pilots that did not reach the bar
{PILOTS}

## Notes
{args.notes or "-"}
"""
    with open(os.path.join(args.out, "MODEL_CARD.md"), "w") as f:
        f.write(card)


if __name__ == "__main__":
    main()
