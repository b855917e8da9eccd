#!/usr/bin/env python
"""Retrain jdllm's shipped default model from scratch: a tiny LLaDA-architecture masked-diffusion model that
solves synthetic GSM8K-style arithmetic word problems (`jdllm.tasks.arithmetic`).

    jdllm train                 # the shipped recipe (fixed seed)
    jdllm train --steps 300 --out /tmp/pilot --eval-n 64   # a quick pilot

Writes `--out` (default `./runs/arith-llada-tiny/model`, never the installed package: copy it to
`jdllm/assets/models/arith-llada-tiny/` to ship it) in Hugging Face LLaDA layout: `config.json`, `model.safetensors`
(LLaDA tensor names, torch [out, in] layout), `tokenizer.json`, `generation_config.json` and `MODEL_CARD.md`.
Orbax checkpoints go to `--ckpt-dir` (resumable: rerunning the same command continues from the latest one).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import time

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax
from flax import nnx

from jdllm.tasks import arithmetic
from jdllm.weights.hf import load_hf
from jdllm.log import get_logger
from jdllm.text import write_tokenizer_config
from jdllm.train.common import quick_eval, small_llada_config, task_data, train_config
from jdllm.train.diffusion import (
    TrainConfig, default_tokenizer, evaluate, export_llada, fourier_number_init, param_count, problems_to_sft,
    read_ledger, train)

DEFAULT_OUT = os.path.join("runs", "arith-llada-tiny", "model")  # never into the installed package; copy it there by hand
PROMPT_LEN = 32  # question + newline (<= 31 tokens with the shipped tokenizer), left-padded
GEN_LEN = 32  # one block of 32; the longest answer is 27 tokens, the rest is EOS padding
LONG_GEN_LENGTHS = (64, 128, 256)  # evaluated after the second stage (and recorded in the model card)
MAX_SEQ_LEN = 2048  # config.json's max_sequence_length: rotary positions, room for gen_length 1024 benchmarks

_LOG = get_logger(__name__)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="jdllm train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--ckpt-dir", default=os.path.join("runs", "arith-llada-tiny", "ckpt"))
    ap.add_argument("--fresh", action="store_true", help="delete --ckpt-dir first instead of resuming")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=512)
    ap.add_argument("--fourier-periods", default="2,5,10,20,50,100",
                    help="periods of the Fourier features seeding the number tokens' embedding and head rows "
                         "(`fourier_number_init`); 'none' for a plain random initialisation")
    ap.add_argument("--train-pool", type=int, default=150_000, help="distinct training problems drawn")
    ap.add_argument("--eval-n", type=int, default=500, help="held-out problems for the final accuracy")
    ap.add_argument("--eval-every", type=int, default=1000, help="steps between quick evaluations (0: none)")
    ap.add_argument("--quick-eval-n", type=int, default=64)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--long-gen", type=int, default=256,
                    help="answer region of the second stage (answer + EOS padding), so that the model also "
                         "answers, then fills EOS, at gen_length 64..256")
    ap.add_argument("--long-steps", type=int, default=800, help="second-stage steps (0: no second stage)")
    ap.add_argument("--long-batch-size", type=int, default=16)
    ap.add_argument("--long-lr", type=float, default=5e-4)
    ap.add_argument("--long-eval-n", type=int, default=100, help="held-out problems per long gen_length evaluated")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--skip-library-eval", action="store_true", help="skip the jdllm.generate confirmation")
    ap.add_argument("--notes", default="", help="text appended to the model card (e.g. what was tried)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.fresh and os.path.isdir(args.ckpt_dir):
        shutil.rmtree(args.ckpt_dir)
    tok = default_tokenizer()
    train_problems, data, test_problems = task_data(arithmetic, tok, args, PROMPT_LEN, GEN_LEN)
    quick = test_problems[: args.quick_eval_n]

    cfg = small_llada_config(tok, args, MAX_SEQ_LEN)
    tc = train_config(args)

    callback = quick_eval(quick, tok, GEN_LEN, PROMPT_LEN) if args.eval_every else None
    result = train(cfg, tc, data, ckpt_dir=args.ckpt_dir, callback=callback,
                   callback_every=args.eval_every, init_fn=number_init(tok, args.fourier_periods))
    history, total_seconds = read_ledger(args.ckpt_dir, result)
    long_tc, long_history = None, []
    if args.long_steps:
        # Stage 2: the same problems with a `--long-gen` answer region (answer + EOS padding), starting from
        # stage 1's weights, so that generations longer than 32 tokens answer and then fill EOS (LLaDA-Instruct
        # SFT pads answers with EOS to the whole generation length in the same way).
        long_data = problems_to_sft(tok, train_problems, PROMPT_LEN, args.long_gen)
        long_tc = TrainConfig(steps=args.long_steps, batch_size=args.long_batch_size, peak_lr=args.long_lr,
                              warmup_steps=min(50, args.long_steps // 10), weight_decay=args.weight_decay,
                              seed=args.seed + 1, log_every=args.log_every, ckpt_every=args.ckpt_every)
        stage1 = nnx.split(result.model)[1]
        long_dir = os.path.join(args.ckpt_dir, "long")
        result = train(cfg, long_tc, long_data, ckpt_dir=long_dir, init_fn=lambda params: stage1)
        long_history, long_seconds = read_ledger(long_dir, result)
        total_seconds += long_seconds
    last_stage = long_history or history
    final_loss = last_stage[-1]["loss"] if last_stage else float("nan")

    gen_cfg = {"gen_length": GEN_LEN, "block_length": 32, "steps": GEN_LEN, "remasking": "low_confidence",
               "temperature": 0.0, "max_prompt_length": PROMPT_LEN,
               "mask_token_id": tok.mask_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    export_llada(result.model, tok, args.out, generation_config=gen_cfg)
    write_tokenizer_config(args.out, tok, arithmetic.CHAT_TEMPLATE, model_max_length=MAX_SEQ_LEN)
    # Evaluate the exported files (what ships), not the in-memory parameters.
    model = load_hf(args.out, check_finite=True)
    t_eval = time.time()
    acc, preds = evaluate(model, test_problems, GEN_LEN, 32, tokenizer=tok, batch_size=100, prompt_len=PROMPT_LEN,
                          return_predictions=True, progress=True)
    eval_seconds = time.time() - t_eval
    n_params = param_count(model)
    size_mb = os.path.getsize(os.path.join(args.out, "model.safetensors")) / 2**20
    _LOG.info(f"held-out accuracy {acc:.4f} on {len(test_problems)} problems ({eval_seconds:.0f}s); "
          f"final loss {final_loss:.4f}; {n_params} parameters, {size_mb:.2f} MiB")
    lib_acc = None if args.skip_library_eval else library_accuracy(args.out, test_problems)
    long_acc = {}
    if args.long_steps and args.long_eval_n:
        for g in LONG_GEN_LENGTHS:
            t = time.time()
            long_acc[g] = evaluate(model, test_problems[: args.long_eval_n], g, 32, tokenizer=tok,
                                   batch_size=args.long_eval_n, prompt_len=PROMPT_LEN)
            _LOG.info(f"gen_length {g}: held-out accuracy {long_acc[g]:.4f} on {args.long_eval_n} "
                  f"({time.time() - t:.0f}s)")
    examples = [(p.question, pr, p.answer) for p, pr in zip(test_problems[:5], preds[:5])]
    write_card(args, cfg, tc, history, final_loss, acc, lib_acc, len(test_problems), n_params, size_mb,
               total_seconds, eval_seconds, examples, long_tc, long_history, long_acc)
    return acc


def number_init(tok, periods: str, count: int = 100):
    """`fourier_number_init` for the numbers 0..count-1 of `tok` (each must be one token: 0..99 for the shipped
    arithmetic tokenizer, the digits 0..9 with `count=10` for the word-problem one), or None for "none"."""
    if periods.strip().lower() == "none":
        return None
    values = [float(x) for x in periods.split(",")]
    ids = []
    for n in range(count):
        enc = tok.encode(str(n))
        if len(enc) != 1:
            raise ValueError(f"number {n} is not a single token of the tokenizer")
        ids.append(enc[0])
    return functools.partial(fourier_number_init, number_ids=ids, periods=values)


def library_accuracy(out_dir: str, problems, batch_size: int = 100):
    """The same accuracy through the library's public path: `jdllm.shipped.load_bundle` (i.e. `jdllm.load` of
    the HF directory + its tokenizer and generation_config) and `jdllm.generate` (LLaDA low-confidence,
    semi-AR); None when the library has no such path."""
    try:
        import jdllm
        from jdllm.shipped import load_bundle
    except ImportError:
        return None
    t = time.time()
    bundle = load_bundle(out_dir)
    right = 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start: start + batch_size]
        prompts = [bundle.encode_prompt(p.question) for p in chunk]
        out = jdllm.generate(bundle.model, prompts, gen_length=bundle.gen_length, block_length=bundle.block_length,
                             steps=bundle.gen_length, remasking="low_confidence", temperature=0.0,
                             prompt_length=PROMPT_LEN)
        right += sum(arithmetic.score(bundle.decode_answer(row), p.answer) for row, p in zip(out.tokens, chunk))
    acc = right / len(problems)
    _LOG.info(f"jdllm.generate: held-out accuracy {acc:.4f} on {len(problems)} problems ({time.time() - t:.0f}s)")
    return acc


def write_card(args, cfg, tc, history, final_loss, acc, lib_acc, n_eval, n_params, size_mb, train_seconds,
               eval_seconds, examples, long_tc=None, long_history=(), long_acc=None):
    cmd = "jdllm train --fresh"
    long_rows = ", ".join(f"gen_length {g}: **{a * 100:.1f}%**" for g, a in (long_acc or {}).items())
    long_result = (f"\n- Longer generations (blocks of 32, steps = gen_length, first {args.long_eval_n} of the same "
                   f"held-out problems): {long_rows}." if long_rows else "")
    long_train = "" if long_tc is None else f"""

Stage 2 (longer generations): from stage 1's weights, {long_tc.steps} steps on the same problems with a
{args.long_gen}-token answer region (answer + EOS padding), batch {long_tc.batch_size}, peak lr {long_tc.peak_lr},
{long_tc.warmup_steps} warmup steps then cosine to {long_tc.end_lr_ratio} x peak, seed {long_tc.seed}.

| step | loss | masked-token acc | seconds |
|---|---|---|---|
""" + "\n".join(f"| {h['step']} | {h['loss']:.4f} | {h['masked_acc']:.3f} | {h['seconds']:.0f} |" for h in long_history)
    hist = "\n".join(f"| {h['step']} | {h['loss']:.4f} | {h['masked_acc']:.3f} | "
                     f"{_fmt(h.get('quick_acc'))} | {h['seconds']:.0f} |" for h in history)
    ex = "\n".join(f"- Q: `{q}`\n  - generated: `{pr}` (gold {a})" for q, pr, a in examples)
    card = f"""# arith-llada-tiny

A tiny LLaDA-architecture masked-diffusion language model (bidirectional transformer, same-position logits),
trained from scratch on CPU by jdllm to solve synthetic GSM8K-style multi-step arithmetic word problems
(`jdllm.tasks.arithmetic`). It is jdllm's shipped default model: small enough to live in the package, fast enough
to decode on a laptop CPU, and accurate enough that decoding strategies can be compared on it.

## Result
- **Held-out exact-answer accuracy: {acc * 100:.1f}%** on {n_eval} held-out problems
  (`make_problems({n_eval}, split="test", seed={args.seed + 1})`, canonical arithmetic never seen in training),
  vanilla LLaDA decoding: greedy, low-confidence remasking, semi-autoregressive blocks of 32,
  `gen_length={GEN_LEN}`, `steps={GEN_LEN}` (one token per step). Measured on the exported files by
  `jdllm.train.diffusion.evaluate` ({eval_seconds:.0f} s).
- Confirmed through the library (`jdllm.shipped.load_bundle` + `jdllm.generate(..., gen_length={GEN_LEN},
  block_length=32, steps={GEN_LEN}, remasking="low_confidence", temperature=0.0)`): {_pct(lib_acc)} on the same
  problems.{long_result}
- Final training loss (mean of the last {tc.log_every} steps): {final_loss:.4f}
- Training wall time: {train_seconds / 60:.1f} min on {platform.processor() or platform.machine()} CPU
  ({os.cpu_count()} cores, shared), jax {jax.__version__}.

## Reproduce
```
{cmd}
```
Seed {tc.seed}; fixed data (`make_problems({args.train_pool}, "train", seed={args.seed})`), fixed masking noise
(`fold_in(key(seed), step)`). Resumable: rerunning continues from the orbax checkpoints in `--ckpt-dir`.

## Prompt format and decoding
- Prompt: the question followed by one newline (`jdllm.tasks.format_prompt(question)` = `question + "\\n"`),
  encoded with the `tokenizer.json` of this folder, no BOS. Questions are at most 31 tokens
  (prompt region {PROMPT_LEN} tokens in training, left-padded with `<|pad|>` under attention mask False, positions
  `cumsum(mask) - 1`).
- Generation: `gen_length={GEN_LEN}`, `block_length=32`, `steps={GEN_LEN}`; the answer is the text before the
  first `<|eos|>` (the model fills the tail with EOS), e.g. `12+7=19. 19-5=14. #### 14`; the number after
  `####` is the answer (`jdllm.tasks.extract_answer`).
- Special ids: `<|pad|>`={cfg.pad_id}, `<|eos|>`={cfg.eos_id}, `<|mask|>`={cfg.mask_id}.

## Architecture
LLaDA layout (`block_type: llama`): pre-RMSNorm blocks, rotary positions (theta {cfg.rope_theta}), multi-head
bidirectional attention, SwiGLU MLP, untied LM head.
d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads (head dim {cfg.head_dim}), MLP hidden
{cfg.mlp_hidden_size}, vocabulary {cfg.vocab_size} (5 special tokens, printable ASCII and newline as single
characters, the task's {len(arithmetic.vocabulary_words())} words as whole-word tokens, each with and without a
leading space, and the numbers 10..99 as single tokens; 0..9 are the digit characters, so every number of the
task is one token),
{n_params:,} parameters, float32, `model.safetensors` {size_mb:.2f} MiB.

## Training
Masked-diffusion SFT (LLaDA objective): t ~ U(0,1) per example (stratified over the batch), p_mask =
(1 - 1e-3) t + 1e-3, answer tokens masked independently with p_mask, the prompt never masked, loss = cross
entropy on masked positions / p_mask, normalised by the answer length ({GEN_LEN}: answer + EOS padding, as in
LLaDA-Instruct SFT). Initialisation: the module's own (embeddings N(0, 0.02), linear layers N(0, 1/d_in)),
except that the embedding rows and LM-head columns of the number tokens 0..99 start with Fourier features of
their value (periods {args.fourier_periods}; `jdllm.train.diffusion.fourier_number_init`), which made the
arithmetic facts learn about 3x faster in the pilots (below); everything stays trainable.
AdamW (b1 {tc.b1}, b2 {tc.b2}, weight decay {tc.weight_decay} on matrices), peak lr {tc.peak_lr}, {tc.warmup_steps} warmup steps then cosine to {tc.end_lr_ratio} x peak, gradient clipping
{tc.grad_clip}, batch {tc.batch_size}, {tc.steps} steps ({tc.steps * tc.batch_size:,} examples).

Stage 1 (answer region {GEN_LEN}):

| step | loss | masked-token acc | quick held-out acc | seconds |
|---|---|---|---|---|
{hist}{long_train}

## Examples (held-out)
{ex}

## Task
{_task_summary()}

## Notes
{args.notes or "-"}
"""
    with open(os.path.join(args.out, "MODEL_CARD.md"), "w") as f:
        f.write(card)


def _fmt(x):
    return "-" if x is None else f"{x:.3f}"


def _pct(x):
    return "not run" if x is None else f"**{x * 100:.1f}%**"


def _task_summary() -> str:
    a = arithmetic
    return (f"Start value {a.START_RANGE[0]}..{a.START_RANGE[1]}, {' or '.join(map(str, a.N_OPS))} operations "
            f"(+ / -), operands {a.OPERAND_RANGE[0]}..{a.OPERAND_RANGE[1]}, every intermediate >= 0. "
            f"{len(a.NAMES_HE) + len(a.NAMES_SHE)} names, {len(a.OBJECTS)} objects, "
            f"{len(a.ADD_VERBS)} + {len(a.SUB_VERBS)} verbs, one sentence per step "
            "(\"Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?\"). Held-out split: 1 in "
            f"{a.TEST_BUCKETS} canonical problems (hash of the arithmetic, e.g. `12+7-5`), never seen in training.")


if __name__ == "__main__":
    main()
