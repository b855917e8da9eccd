"""What the `jdllm train` recipes share: the task's training rows and held-out problems, the LLaDA config of a
small model trained here, the optimiser settings from the command line, and the periodic held-out check."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Callable, Sequence

from jdllm.log import get_logger
from jdllm.models.config import ModelConfig
from jdllm.tasks import arithmetic
from jdllm.train.diffusion import SFTData, TrainConfig, evaluate, problems_to_sft

_LOG = get_logger(__name__)


def task_data(task: ModuleType, tok, args, prompt_len: int, gen_len: int) -> tuple[list, SFTData, list]:
    """(training problems, their SFT rows, held-out problems) of a `jdllm.tasks` generator: `args.train_pool`
    training problems drawn with `args.seed`, `args.eval_n` held-out ones with `args.seed + 1`."""
    t = time.time()
    train_problems = task.make_problems(args.train_pool, "train", seed=args.seed)
    data = problems_to_sft(tok, train_problems, prompt_len, gen_len, prompt_format=task.format_prompt)
    test_problems = task.make_problems(args.eval_n, "test", seed=args.seed + 1)
    _LOG.info(f"data: {len(data)} train rows of {prompt_len}+{gen_len} tokens in {time.time() - t:.1f}s; "
              f"{len(test_problems)} held-out problems")
    return train_problems, data, test_problems


def small_llada_config(tok, args, max_seq_len: int) -> ModelConfig:
    """A float32 LLaDA-layout config (multi-head attention, RoPE theta 1e4) with the tokenizer's special ids and the
    command line's `d_model`, `n_layers`, `n_heads`, `mlp`."""
    return ModelConfig(family="llada", vocab_size=tok.vocab_size, d_model=args.d_model, n_layers=args.n_layers,
                       n_heads=args.n_heads, n_kv_heads=args.n_heads, mlp_hidden_size=args.mlp,
                       max_seq_len=max_seq_len, mask_id=tok.mask_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                       rope_theta=10000.0, rms_norm_eps=1e-5, dtype="float32")


def train_config(args) -> TrainConfig:
    """The optimiser / schedule settings of the command line (`steps`, `batch_size`, `lr`, `warmup`,
    `weight_decay`, `seed`, `log_every`, `ckpt_every`, and `bucket_pool` / `focus_rate` / `drill_steps` where
    the command has them)."""
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, peak_lr=args.lr, warmup_steps=args.warmup,
                       weight_decay=args.weight_decay, seed=args.seed, log_every=args.log_every,
                       ckpt_every=args.ckpt_every, bucket_pool=getattr(args, "bucket_pool", 0),
                       focus_rate=getattr(args, "focus_rate", 0.0), drill_steps=getattr(args, "drill_steps", 0),
                       drill_every=getattr(args, "drill_every", 0))


def quick_eval(problems: Sequence, tok, gen_len: int, prompt_len: int, task: ModuleType | None = None) -> Callable:
    """A `train(callback=)`: greedy held-out accuracy on `problems` (prompts in `task.format_prompt`, default the
    arithmetic task's), logged and recorded as `quick_acc`."""
    prompt_format = (task or arithmetic).format_prompt

    def callback(step, model):
        t = time.time()
        acc = evaluate(model, problems, gen_len, 32, tokenizer=tok, batch_size=len(problems), prompt_len=prompt_len,
                       prompt_format=prompt_format)
        _LOG.info(f"  [eval] step {step}: held-out accuracy {acc:.3f} on {len(problems)} ({time.time() - t:.0f}s)")
        return {"quick_acc": acc}
    return callback
