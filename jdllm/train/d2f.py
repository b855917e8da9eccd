"""D2F asymmetric distillation: a block-causal student learns a bidirectional teacher's predictions.

D2F (Discrete Diffusion Forcing, arXiv 2508.09192, Algorithm 1 and Eq. 3; official code
zhijie-group/Discrete-Diffusion-Forcing, `D2F-train/utils/loss.py::compute_llada_loss` and
`D2F-train/utils/util.py::forward_process_length / generate_monotonic_pmasks`):

- the answer region is cut into blocks of `block_size` counted from the prompt end; block i gets a mask ratio
  p_i, non-decreasing over i (`sample_block_mask_ratios`: p_0 ~ U[p_min, p_max), increments
  ~ U[0, (p_max - p_0) / (n - 1)), so every p_i lies in [p_min, p_max]); each answer token of block i is masked
  independently with probability p_i; the prompt is never masked (`d2f_forward_process`);
- the teacher (the bidirectional model, frozen) sees the noisy sequence with full attention; the student (same
  architecture, initialised from the teacher) sees the SAME noisy sequence under block-causal attention;
- loss = mean over masked positions of CE(student logits, softmax(teacher logits)) / p_mask (`d2f_loss`): the
  soft-target cross entropy of the official loss (KL(teacher || student) plus the teacher's entropy, a constant).

jdllm fine-tunes every weight of the student (the shipped model is tiny, and the result is then an ordinary HF
checkpoint with `"attention": "block_causal"`); the official code trains a LoRA adapter on an 8B model instead.
`jdllm train d2f` (`main`) distils the shipped default model into `--out` (default `./runs/arith-llada-tiny-d2f/model`;
the shipped copy is `jdllm/assets/models/arith-llada-tiny-d2f/`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jdllm.models.transformer import Transformer
from jdllm.train.diffusion import (
    RunLedger, SFTData, TrainConfig, _manager, batch_indices, export_llada, make_optimizer, read_ledger,
    restore_checkpoint, save_checkpoint)


# ======================================================================================================= config
@dataclasses.dataclass(frozen=True)
class D2FConfig:
    """Hyper-parameters of one D2F distillation run. `p_min` / `p_max` bound the per-block mask ratios (official
    `generate_monotonic_pmasks`: 0.2 / 0.7); AdamW betas and weight decay as the official trainer (0.9, 0.95, 0.05)."""

    steps: int = 2000
    batch_size: int = 32
    block_size: int = 8
    p_min: float = 0.2
    p_max: float = 0.7
    peak_lr: float = 1e-4
    warmup_steps: int = 50
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 250
    max_to_keep: int = 2

    def __post_init__(self):
        if not (isinstance(self.block_size, int) and self.block_size >= 1):
            raise ValueError(f"block_size must be an integer >= 1, got {self.block_size!r}")
        if not 0.0 <= self.p_min <= self.p_max <= 1.0:
            raise ValueError(f"need 0 <= p_min <= p_max <= 1, got p_min={self.p_min!r}, p_max={self.p_max!r}")

    def optimizer_config(self) -> TrainConfig:
        """The `TrainConfig` whose `make_optimizer` (warmup + cosine AdamW, clipping) this run uses."""
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, peak_lr=self.peak_lr,
                           warmup_steps=self.warmup_steps, end_lr_ratio=self.end_lr_ratio,
                           weight_decay=self.weight_decay, b1=self.b1, b2=self.b2, grad_clip=self.grad_clip,
                           seed=self.seed, log_every=self.log_every, ckpt_every=self.ckpt_every,
                           max_to_keep=self.max_to_keep)


# ==================================================================================================== noising
def sample_block_mask_ratios(key: Array, batch: int, n_blocks: int, p_min: float = 0.2,
                             p_max: float = 0.7) -> Float[Array, "b n"]:
    """Non-decreasing per-block mask ratios (official `generate_monotonic_pmasks`): p_0 ~ U[p_min, p_max),
    p_i = p_0 + sum_{j <= i} u_j with u_j ~ U[0, (p_max - p_0) / (n - 1)), clamped to <= 1."""
    k0, k1 = jax.random.split(key)
    p0 = p_min + (p_max - p_min) * jax.random.uniform(k0, (batch, 1))
    if n_blocks == 1:
        return p0
    inc = jax.random.uniform(k1, (batch, n_blocks - 1)) * (p_max - p0) / (n_blocks - 1)
    return jnp.minimum(jnp.concatenate([p0, p0 + jnp.cumsum(inc, axis=1)], axis=1), 1.0)


def d2f_forward_process(key: Array, answer_mask: Bool[Array, "b l"], prompt_len: int, block_size: int,
                        p_min: float = 0.2, p_max: float = 0.7) -> tuple[Bool[Array, "b l"], Float[Array, "b l"]]:
    """D2F's noising of a canvas `[prompt region of width prompt_len | answer]` (official `forward_process_length`):
    answer blocks of `block_size` from the prompt end get `sample_block_mask_ratios`; each answer position is
    masked independently with its block's ratio; prompt positions are never masked and get p_mask 0.
    Returns (masked bool [B, L], p_mask float32 [B, L])."""
    b, l = answer_mask.shape
    n_blocks = max(-(-(l - prompt_len) // block_size), 1)
    k_ratio, k_mask = jax.random.split(key)
    ratios = sample_block_mask_ratios(k_ratio, b, n_blocks, p_min, p_max)  # [B, n]
    block = jnp.clip((jnp.arange(l) - prompt_len) // block_size, 0, n_blocks - 1)
    in_answer = answer_mask & (jnp.arange(l) >= prompt_len)[None]
    p_mask = jnp.where(in_answer, ratios[:, block], 0.0)
    masked = (jax.random.uniform(k_mask, (b, l)) < p_mask) & in_answer
    return masked, p_mask


# ======================================================================================================= loss
def d2f_loss(student_logits: Float[Array, "b l v"], teacher_logits: Float[Array, "b l v"],
             masked: Bool[Array, "b l"], p_mask: Float[Array, "b l"]) -> tuple[Array, dict[str, Array]]:
    """Official `compute_llada_loss` (self_align): mean over masked positions of
    CE(student logits, softmax(teacher logits)) / p_mask; the teacher gets no gradient. Returns (loss, metrics)."""
    teacher_probs = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32), axis=-1)
    ce = optax.softmax_cross_entropy(student_logits.astype(jnp.float32), teacher_probs)
    n = jnp.maximum(masked.sum(), 1)
    loss = jnp.where(masked, ce / jnp.where(masked, p_mask, 1.0), 0.0).sum() / n
    agree = student_logits.argmax(-1) == teacher_logits.argmax(-1)
    return loss, {"loss": loss, "masked_ce": jnp.where(masked, ce, 0.0).sum() / n,
                  "agreement": jnp.where(masked, agree, False).sum() / n}


def distill_loss(student: Transformer, teacher: Transformer, tokens: Int[Array, "b l"],
                 attention_mask: Bool[Array, "b l"], answer_mask: Bool[Array, "b l"], key: Array, *,
                 prompt_len: int, cfg: D2FConfig) -> tuple[Array, dict[str, Array]]:
    """One batch of D2F distillation: noise with `d2f_forward_process`, the teacher's bidirectional logits and the
    student's block-causal logits (blocks of `cfg.block_size` after the prompt region) on the same noisy canvas,
    then `d2f_loss`."""
    masked, p_mask = d2f_forward_process(key, answer_mask, prompt_len, cfg.block_size, cfg.p_min, cfg.p_max)
    noisy = jnp.where(masked, student.config.mask_id, tokens)
    teacher_logits = teacher(noisy, attention_mask=attention_mask)
    student_logits = student(noisy, attention_mask=attention_mask, prompt_len=prompt_len, block_size=cfg.block_size)
    return d2f_loss(student_logits, teacher_logits, masked, p_mask)


def make_student(teacher: Transformer, block_size: int) -> Transformer:
    """The teacher's architecture and (copied) weights under a block-causal config with `attention_block_size`."""
    if teacher.config.attention != "bidirectional":
        raise ValueError(f"the teacher must be a bidirectional model, its config has attention="
                         f"{teacher.config.attention!r}")
    cfg = dataclasses.replace(teacher.config, attention="block_causal", attention_block_size=block_size)
    graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[0]
    state = jax.tree.map(jnp.array, nnx.split(teacher)[1])  # a copy: training never touches the teacher
    return nnx.merge(graphdef, state)


def make_distill_step(graphdef, teacher_graphdef, optimizer: optax.GradientTransformation, prompt_len: int,
                      cfg: D2FConfig):
    """A jitted `(params, opt_state, teacher_params, tokens, attention_mask, answer_mask, key) -> (params,
    opt_state, metrics)`; the student's params / opt_state are donated, the teacher's are not."""

    def loss_fn(params, teacher_params, tokens, attention_mask, answer_mask, key):
        return distill_loss(nnx.merge(graphdef, params), nnx.merge(teacher_graphdef, teacher_params), tokens,
                            attention_mask, answer_mask, key, prompt_len=prompt_len, cfg=cfg)

    def step(params, opt_state, teacher_params, tokens, attention_mask, answer_mask, key):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, teacher_params, tokens, attention_mask,
                                                         answer_mask, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        metrics["grad_norm"] = optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads)
        return optax.apply_updates(params, updates), opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1))


# ====================================================================================================== train
@dataclasses.dataclass
class DistillResult:
    student: Transformer
    step: int
    history: list[dict[str, float]]
    seconds: float  # wall time of this invocation's loop (compile included)


def distill(teacher: Transformer, data: SFTData, cfg: D2FConfig, *, ckpt_dir: str | None = None,
            resume: bool = True, stop_at: int | None = None, log: Callable[[str], None] | None = None,
            callback: Callable[[int, Transformer], dict[str, float] | None] | None = None,
            callback_every: int = 0) -> DistillResult:
    """Distil `teacher` into `make_student(teacher, cfg.block_size)` on `data` (rows `[prompt | answer + EOS]`).

    Batches are `batch_indices(len(data), batch_size, step, seed)` and the noise is `fold_in(key(seed), step)`,
    so a run resumed from the orbax checkpoints in `ckpt_dir` (every `ckpt_every` steps and at the end) continues
    exactly. `stop_at` ends early (the schedule stays `cfg.steps` long); `callback(step, student)` every
    `callback_every` steps may return metrics to record."""
    log = log or (lambda s: print(s, flush=True))
    student = make_student(teacher, cfg.block_size)
    graphdef, params = nnx.split(student)
    teacher_graphdef, teacher_params = nnx.split(teacher)
    tc = cfg.optimizer_config()
    optimizer = make_optimizer(tc)
    opt_state = optimizer.init(params)
    step0 = 0
    mngr = _manager(ckpt_dir, tc) if ckpt_dir else None
    if mngr is not None and resume:
        tree = restore_checkpoint(mngr, params, opt_state)
        if tree is not None:
            params, opt_state, step0 = tree["params"], tree["opt_state"], int(tree["step"])
            if int(tree["data_position"]) != step0 * cfg.batch_size:
                raise ValueError(f"{ckpt_dir}: checkpoint data position {int(tree['data_position'])} does not match "
                                 f"step {step0} x batch_size {cfg.batch_size}")
            log(f"resumed from {ckpt_dir} at step {step0}")
    ledger = RunLedger(ckpt_dir, step0) if mngr is not None else None
    train_step = make_distill_step(graphdef, teacher_graphdef, optimizer, data.prompt_len, cfg)
    base_key = jax.random.key(cfg.seed)
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    history: list[dict[str, float]] = []
    window: list[Array] = []
    t0 = time.time()
    for step in range(step0, end):
        idx = batch_indices(len(data), cfg.batch_size, step, cfg.seed)
        params, opt_state, metrics = train_step(params, opt_state, teacher_params, data.tokens[idx],
                                                data.attention_mask[idx], data.answer_mask[idx],
                                                jax.random.fold_in(base_key, step))
        window.append(metrics["loss"])
        done = step + 1
        if done % cfg.log_every == 0 or done == end:
            rec = {"step": done, "loss": float(np.mean(jax.device_get(window))),
                   "agreement": float(metrics["agreement"]), "grad_norm": float(metrics["grad_norm"]),
                   "seconds": round(time.time() - t0, 1)}
            window = []
            history.append(rec)
            log(f"step {done:6d}  loss {rec['loss']:.4f}  agreement {rec['agreement']:.3f}  "
                f"grad_norm {rec['grad_norm']:.3f}  {rec['seconds']:.0f}s")
        if callback is not None and callback_every and done % callback_every == 0 and done != end:
            out = callback(done, nnx.merge(graphdef, params))
            if out and history:
                history[-1].update(out)
        if mngr is not None and (done % cfg.ckpt_every == 0 or done == end):
            save_checkpoint(mngr, done, params, opt_state, done * cfg.batch_size)
            ledger.record(done, time.time() - t0, history)
    if mngr is not None:
        mngr.wait_until_finished()
        mngr.close()
    return DistillResult(nnx.merge(graphdef, params), max(end, step0), history, time.time() - t0)


# =================================================================================================== evaluate
def generate_accuracy(model: Transformer, tokenizer, problems: Sequence, *, batch_size: int = 100,
                      prompt_len: int = 32, **generate_kwargs) -> dict[str, float]:
    """Exact-answer accuracy of `jdllm.generate(model, prompts, prompt_length=prompt_len, **generate_kwargs)` on
    arithmetic `problems` (prompt `format_prompt(question)`, answer up to the first EOS, `arithmetic.score`).
    Returns {"accuracy", "nfe" (mean forwards per row), "seconds"}."""
    import jdllm
    from jdllm.tasks import arithmetic

    right, nfe, t0 = 0, [], time.time()
    for start in range(0, len(problems), batch_size):
        chunk = problems[start: start + batch_size]
        prompts = [tokenizer.encode(arithmetic.format_prompt(p.question)) for p in chunk]
        out = jdllm.generate(model, prompts, prompt_length=prompt_len, **generate_kwargs)
        right += sum(arithmetic.score(tokenizer.decode_until_eos(row), p.answer) for row, p in zip(out.tokens, chunk))
        nfe.extend(np.asarray(out.nfe).tolist())
    return {"accuracy": right / len(problems), "nfe": float(np.mean(nfe)), "seconds": round(time.time() - t0, 1)}


def pipelined_kwargs(gen_length: int, block_size: int) -> dict:
    """`jdllm.generate` keywords of the student's evaluation: recipe "d2f" (threshold 0.9, exact block cache,
    `Pipelined` schedule) with blocks of the training block size."""
    return {"gen_length": gen_length, "recipe": "d2f", "block_length": block_size}


def vanilla_kwargs(gen_length: int) -> dict:
    """`jdllm.generate` keywords of the teacher's reference decoding (its model card's): one block, one token per
    step, low-confidence remasking, greedy."""
    return {"gen_length": gen_length, "block_length": gen_length, "steps": gen_length,
            "remasking": "low_confidence", "temperature": 0.0}


# ======================================================================================================== CLI
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TEACHER = os.path.join(PACKAGE, "assets", "models", "arith-llada-tiny")
DEFAULT_OUT = os.path.join("runs", "arith-llada-tiny-d2f", "model")  # never into the installed package; copy it there by hand
PROMPT_LEN = 32  # the teacher's prompt region (questions <= 31 tokens, left-padded)
GEN_LEN = 32  # the teacher's answer region: answers <= 27 tokens + EOS padding


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="jdllm train d2f", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Distil the shipped bidirectional model into a block-causal D2F student (full fine-tune) and "
                    "write it in HF layout with its model card. Resumable from --ckpt-dir.")
    ap.add_argument("--teacher", default=DEFAULT_TEACHER, help="bidirectional teacher model directory")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--ckpt-dir", default=os.path.join("runs", "arith-llada-tiny-d2f", "ckpt"))
    ap.add_argument("--fresh", action="store_true", help="delete --ckpt-dir first instead of resuming")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=D2FConfig.steps)
    ap.add_argument("--batch-size", type=int, default=D2FConfig.batch_size)
    ap.add_argument("--block-size", type=int, default=D2FConfig.block_size,
                    help="training block size (config.json attention_block_size; also the evaluation's blocks)")
    ap.add_argument("--p-min", type=float, default=D2FConfig.p_min)
    ap.add_argument("--p-max", type=float, default=D2FConfig.p_max)
    ap.add_argument("--lr", type=float, default=D2FConfig.peak_lr)
    ap.add_argument("--warmup", type=int, default=D2FConfig.warmup_steps)
    ap.add_argument("--weight-decay", type=float, default=D2FConfig.weight_decay)
    ap.add_argument("--train-pool", type=int, default=150_000, help="training problems (the teacher's data)")
    ap.add_argument("--eval-n", type=int, default=500, help="held-out problems of the final evaluation")
    ap.add_argument("--eval-every", type=int, default=500, help="steps between quick evaluations (0: none)")
    ap.add_argument("--quick-eval-n", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=D2FConfig.log_every)
    ap.add_argument("--ckpt-every", type=int, default=D2FConfig.ckpt_every)
    ap.add_argument("--notes", default="", help="text appended to the model card")
    return ap.parse_args(argv)


def main(argv=None):
    """`jdllm train d2f`: distil, export, evaluate (student + d2f pipeline vs teacher + vanilla), write the card."""
    from jdllm.shipped import load_bundle
    from jdllm.tasks import arithmetic
    from jdllm.train.diffusion import problems_to_sft

    args = parse_args(argv)
    if args.fresh and os.path.isdir(args.ckpt_dir):
        shutil.rmtree(args.ckpt_dir)
    teacher_bundle = load_bundle(args.teacher)
    teacher, tok = teacher_bundle.model, teacher_bundle.tokenizer
    data = problems_to_sft(tok, arithmetic.make_problems(args.train_pool, "train", seed=args.seed), PROMPT_LEN, GEN_LEN)
    test = arithmetic.make_problems(args.eval_n, "test", seed=1)
    cfg = D2FConfig(steps=args.steps, batch_size=args.batch_size, block_size=args.block_size, p_min=args.p_min,
                    p_max=args.p_max, peak_lr=args.lr, warmup_steps=args.warmup, weight_decay=args.weight_decay,
                    seed=args.seed, log_every=args.log_every, ckpt_every=args.ckpt_every)
    student_kw = pipelined_kwargs(GEN_LEN, cfg.block_size)

    def quick_eval(step, student):
        r = generate_accuracy(student, tok, test[: args.quick_eval_n], prompt_len=PROMPT_LEN, **student_kw)
        print(f"  [eval] step {step}: pipelined accuracy {r['accuracy']:.3f}, nfe {r['nfe']:.2f} "
              f"on {args.quick_eval_n} ({r['seconds']:.0f}s)", flush=True)
        return {"quick_acc": r["accuracy"], "quick_nfe": r["nfe"]}

    result = distill(teacher, data, cfg, ckpt_dir=args.ckpt_dir, callback=quick_eval if args.eval_every else None,
                     callback_every=args.eval_every)
    history, seconds = read_ledger(args.ckpt_dir, result)
    gen_cfg = {**json.loads(open(os.path.join(args.teacher, "generation_config.json")).read()),
               "block_length": cfg.block_size, "recipe": "d2f"}
    export_llada(result.student, tok, args.out, generation_config=gen_cfg)
    with open(os.path.join(args.out, "loss_log.json"), "w") as f:
        json.dump({"command": command_line(argv), "seed": cfg.seed, "train_seconds": round(seconds, 1),
                   "config": dataclasses.asdict(cfg), "history": history}, f, indent=1)
    student = load_bundle(args.out, check_finite=True).model  # evaluate what ships
    evals = {
        "student_d2f": generate_accuracy(student, tok, test, prompt_len=PROMPT_LEN, **student_kw),
        "teacher_vanilla": generate_accuracy(teacher, tok, test, prompt_len=PROMPT_LEN, **vanilla_kwargs(GEN_LEN)),
        "undistilled_d2f": generate_accuracy(make_student(teacher, cfg.block_size), tok, test, prompt_len=PROMPT_LEN,
                                             **student_kw),
    }
    for name, r in evals.items():
        print(f"{name}: accuracy {r['accuracy']:.4f}, nfe {r['nfe']:.2f} on {len(test)} ({r['seconds']:.0f}s)",
              flush=True)
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump({"problems": f"make_problems({args.eval_n}, 'test', seed=1)", "prompt_length": PROMPT_LEN,
                   "student_kwargs": student_kw, "teacher_kwargs": vanilla_kwargs(GEN_LEN), **evals}, f, indent=1)
    write_card(args, cfg, history, seconds, evals, command_line(argv))
    return evals


def command_line(argv) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["jdllm train d2f", *argv])


def write_card(args, cfg: D2FConfig, history, seconds, evals, command: str) -> None:
    s, t, u = evals["student_d2f"], evals["teacher_vanilla"], evals["undistilled_d2f"]
    gap = (t["accuracy"] - s["accuracy"]) * 100
    verdict = ("within 2 points of the teacher's vanilla accuracy" if gap <= 2.0 else
               f"**{gap:.1f} points below** the teacher's vanilla accuracy (the goal was within 2 points)")
    table = "\n".join(f"| {h['step']} | {h['loss']:.4f} | {h['agreement']:.3f} | "
                      f"{_fmt(h.get('quick_acc'))} | {h['seconds']:.0f} |"
                      for h in history)
    card = f"""# arith-llada-tiny-d2f

The D2F student of jdllm's shipped default model `arith-llada-tiny`: the same LLaDA architecture and size, under
D2F's block-causal attention (`"attention": "block_causal"`, `"attention_block_size": {cfg.block_size}` in
config.json: the prompt is block 0, the answer is cut into blocks of {cfg.block_size} tokens, a block sees itself
and earlier blocks), distilled from the bidirectional teacher by D2F's asymmetric distillation (arXiv 2508.09192,
Algorithm 1, Eq. 3) with `jdllm train d2f` (`jdllm/train/d2f.py`). Because a finished block's keys / values
depend only on earlier blocks, they are exact in a KV cache (`cache="exact"`), and later blocks can start before
earlier ones finish (`schedule=Pipelined(...)`, recipe `d2f`).

## Result
{args.eval_n} held-out problems (`make_problems({args.eval_n}, split="test", seed=1)`), prompt region {PROMPT_LEN},
`gen_length={GEN_LEN}`, accuracy = exact answer after `####`; NFE = forward evaluations per problem:

| model | decoding | accuracy | NFE | seconds (CPU, batches of 100) |
|---|---|---|---|---|
| this student | `recipe="d2f", block_length={cfg.block_size}` (pipelined, threshold 0.9, exact cache) | **{s['accuracy'] * 100:.1f}%** | {s['nfe']:.2f} | {s['seconds']:.0f} |
| teacher `arith-llada-tiny` | vanilla: `block_length={GEN_LEN}, steps={GEN_LEN}`, low-confidence, greedy | {t['accuracy'] * 100:.1f}% | {t['nfe']:.2f} | {t['seconds']:.0f} |
| teacher weights under block-causal attention, before distillation | same as this student | {u['accuracy'] * 100:.1f}% | {u['nfe']:.2f} | {u['seconds']:.0f} |

The student with the D2F pipeline is {verdict}, at {t['nfe'] / max(s['nfe'], 1e-9):.1f}x fewer forwards.
Measured by `jdllm train d2f` itself after export (`jdllm.train.d2f.generate_accuracy` over `jdllm.generate`, on
the exported files; numbers also in `eval.json`). Recompute with:
```
python -c "import jdllm; from jdllm.shipped import load_bundle; from jdllm.tasks import arithmetic; \\
from jdllm.train.d2f import generate_accuracy, pipelined_kwargs; b = load_bundle('arith-llada-tiny-d2f'); \\
print(generate_accuracy(b.model, b.tokenizer, arithmetic.make_problems(500, 'test', seed=1), \\
**pipelined_kwargs(32, {cfg.block_size})))"
```

## Use
```python
import jdllm
from jdllm.shipped import load_bundle
b = load_bundle("arith-llada-tiny-d2f")
out = jdllm.generate(b.model, [b.encode_prompt("Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?")],
                     gen_length=32, recipe="d2f", block_length={cfg.block_size})
print(b.decode_answer(out.tokens[0]))   # 12+7=19. 19-5=14. #### 14
```
Decode with blocks of {cfg.block_size} (the training block size): recipe `d2f` alone uses blocks of 32, which for
`gen_length=32` is a single block.

## Reproduce
```
{command}
```
Seed {cfg.seed} (data order `batch_indices(seed, step)`, noise `fold_in(key(seed), step)`); resumable from the
orbax checkpoints in `--ckpt-dir`. Training wall time: {seconds / 60:.1f} min on
{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores, shared), jax {jax.__version__}.

## Training
- Teacher: `arith-llada-tiny` (bidirectional, frozen). Student: a copy of its weights under block-causal attention,
  every weight trained (full fine-tune; no LoRA).
- Data: the teacher's training problems (`make_problems({args.train_pool}, "train", seed={args.seed})`,
  `problems_to_sft`, prompt region {PROMPT_LEN} left-padded, answer region {GEN_LEN} = answer + EOS padding).
- Noise (official `forward_process_length` / `generate_monotonic_pmasks`): {GEN_LEN // cfg.block_size} answer blocks
  of {cfg.block_size}; per-block mask ratios p_0 ~ U[{cfg.p_min}, {cfg.p_max}), then non-decreasing increments
  ~ U[0, ({cfg.p_max} - p_0) / (n - 1)); each answer token of a block masked with its block's ratio; the prompt
  never masked.
- Loss (official `compute_llada_loss`, self-align): mean over masked positions of
  CE(student logits under block-causal attention, softmax(teacher logits under full attention on the same noisy
  sequence)) / p_mask.
- AdamW (b1 {cfg.b1}, b2 {cfg.b2}, weight decay {cfg.weight_decay} on matrices), peak lr {cfg.peak_lr},
  {cfg.warmup_steps} warmup steps then cosine to {cfg.end_lr_ratio} x peak, gradient clipping {cfg.grad_clip},
  batch {cfg.batch_size}, {cfg.steps} steps.

Loss log (mean over each {cfg.log_every} steps; agreement = student argmax == teacher argmax on the masked
positions of the last batch; quick acc = pipelined accuracy on the first {args.quick_eval_n} held-out problems;
also `loss_log.json`):

| step | loss | agreement | quick acc | seconds |
|---|---|---|---|---|
{table}

## Notes
{args.notes or "-"}
"""
    with open(os.path.join(args.out, "MODEL_CARD.md"), "w") as f:
        f.write(card)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"
