"""Masked-diffusion supervised fine-tuning (the LLaDA SFT objective) with optax, plus a greedy LLaDA sampler for
validation.

Objective (LLaDA, arXiv 2502.09992, Eq. 5 / the SFT recipe of its guidelines): for each example draw
t ~ U(0, 1), p_mask = (1 - eps) t + eps; mask every *answer* position independently with probability p_mask
(the prompt is never masked); the loss is the cross entropy on masked positions divided by p_mask, normalised by
the answer length. The answer region is padded after the answer with EOS tokens, which are part of the answer
(LLaDA-Instruct SFT), so the model learns to fill the tail of a generation with EOS.

Layout: fixed-length rows ``[left-padded prompt | answer + EOS padding]`` of width ``prompt_len + gen_len``.
The left padding carries ``attention_mask = False`` and positions ``cumsum(mask) - 1`` exactly as at inference,
so a row's computation does not depend on how much padding it has.

Training is resumable: an orbax checkpoint holds the step, the parameters and the optimiser state; the data
order and the masking noise are pure functions of (seed, step), so restoring the step restores the data RNG
position.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jdllm.models.config import ModelConfig
from jdllm.models.transformer import Transformer
from jdllm.tasks.arithmetic import Problem, format_prompt, score
from jdllm.tokenizer import Tokenizer, build_char_tokenizer
from jdllm.weights.hf import save_hf
from jdllm.log import get_logger

_LOG = get_logger(__name__)


# ======================================================================================================= config
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one masked-diffusion SFT run."""

    steps: int = 2000
    batch_size: int = 64
    peak_lr: float = 1e-3
    warmup_steps: int = 100
    end_lr_ratio: float = 0.1  # cosine decays to peak_lr * end_lr_ratio
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    grad_clip: float = 1.0
    eps: float = 1e-3  # p_mask = (1 - eps) t + eps
    stratified_t: bool = True  # t_i = (i + u) / B: each t_i is still U(0, 1), the batch covers [0, 1) evenly
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    max_to_keep: int = 2
    init: str = "model"  # "model": the module's own initialisation; "gpt2": see `gpt2_init`
    bucket_pool: int = 0  # > 0: batches of similar prompt length, left padding trimmed (`bucketed_batch_indices`)
    trim_multiple: int = 16  # trimmed prompt widths are multiples of this (few distinct shapes, few compiles)
    focus_rate: float = 0.0  # fraction of rows that mask only `SFTData.focus_mask` positions (`focus_rows`)
    drill_steps: int = 0  # the first steps train on `train(drill=)` rows, masking only their focus positions
    drill_every: int = 0  # > 0: after the drill phase, every drill_every-th step is a drill step too (`phase_of`)


# ========================================================================================================= data
@dataclasses.dataclass
class SFTData:
    """Encoded SFT rows: tokens [N, P+G], attention mask (False on left padding), answer-region mask, and
    optionally the answer positions a task marks as computed rather than copied (`focus_rows`)."""

    tokens: np.ndarray
    attention_mask: np.ndarray
    answer_mask: np.ndarray
    prompt_len: int
    gen_len: int
    focus_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str], prompt_len: int | None = None,
                   multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad encoded prompts to `prompt_len` (default: the longest, rounded up to `multiple`).
    Returns (tokens int32 [N, P], attention_mask bool [N, P])."""
    ids = tokenizer.encode_batch(list(prompts))
    longest = max(len(x) for x in ids)
    if prompt_len is None:
        prompt_len = -(-longest // multiple) * multiple
    if longest > prompt_len:
        raise ValueError(f"a prompt has {longest} tokens, more than prompt_len={prompt_len}")
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    tokens = np.full((len(ids), prompt_len), pad, np.int32)
    mask = np.zeros((len(ids), prompt_len), bool)
    for r, x in enumerate(ids):
        if x:
            tokens[r, prompt_len - len(x):] = x
            mask[r, prompt_len - len(x):] = True
    return tokens, mask


def encode_sft(tokenizer: Tokenizer, prompts: Sequence[str], answers: Sequence[str], prompt_len: int,
               gen_len: int) -> SFTData:
    """Rows ``[left-padded prompt | answer, EOS, EOS, ...]``; every answer must leave room for at least one EOS."""
    p_tok, p_mask = encode_prompts(tokenizer, prompts, prompt_len)
    a_ids = tokenizer.encode_batch(list(answers))
    longest = max(len(x) for x in a_ids)
    if longest >= gen_len:
        raise ValueError(f"an answer has {longest} tokens; gen_len={gen_len} leaves no room for EOS")
    a_tok = np.full((len(a_ids), gen_len), tokenizer.eos_id, np.int32)
    for r, x in enumerate(a_ids):
        a_tok[r, : len(x)] = x
    n = len(a_ids)
    tokens = np.concatenate([p_tok, a_tok], axis=1)
    attention_mask = np.concatenate([p_mask, np.ones((n, gen_len), bool)], axis=1)
    answer_mask = np.concatenate([np.zeros((n, prompt_len), bool), np.ones((n, gen_len), bool)], axis=1)
    return SFTData(tokens, attention_mask, answer_mask, prompt_len, gen_len)


def problems_to_sft(tokenizer: Tokenizer, problems: Sequence[Problem], prompt_len: int, gen_len: int,
                    prompt_format: Callable[[str], str] = format_prompt) -> SFTData:
    """Rows of `problems`: `prompt_format(question)` (the task's own, default the arithmetic task's), the answer."""
    return encode_sft(tokenizer, [prompt_format(p.question) for p in problems], [p.answer_text for p in problems],
                      prompt_len, gen_len)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Row indices of the batch of `step`: epochs are seeded permutations, so the data position is a pure
    function of (seed, step) and resuming at a step resumes the data stream exactly."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset: offset + batch_size - len(out)].tolist())
    return np.asarray(out, np.int64)


def bucketed_batch_indices(lengths: np.ndarray, batch_size: int, step: int, seed: int, pool: int) -> np.ndarray:
    """Row indices of the batch of `step`, batches of similar length: each epoch is a seeded permutation cut into
    chunks of `pool` batches; a chunk is sorted by `lengths` (stable), cut into batches, and its batch order
    shuffled. A pure function of (seed, step) like `batch_indices`; each epoch uses every row at most once (the
    `len % batch_size` rows left over at its end sit it out). With `trim_padding` a batch then costs its longest
    prompt instead of the longest prompt of the data set."""
    n = len(lengths)
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"{n} rows cannot fill one batch of {batch_size}")
    epoch, b = divmod(step, per_epoch)
    chunk, j = divmod(b, pool)
    perm = np.random.default_rng([seed, epoch]).permutation(n)[: per_epoch * batch_size]
    rows = perm[chunk * pool * batch_size: (chunk + 1) * pool * batch_size]
    rows = rows[np.argsort(lengths[rows], kind="stable")]
    order = np.random.default_rng([seed, epoch, chunk]).permutation(len(rows) // batch_size)
    return rows[order[j] * batch_size: (order[j] + 1) * batch_size].astype(np.int64)


def trim_padding(data: SFTData, idx: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, attention_mask, answer_mask) of rows `idx` with the prompt's left padding cut to the batch's longest
    prompt, rounded up to `multiple` columns. Exact: positions are `cumsum(attention_mask) - 1` and padding is
    masked out of attention, so a row computes the same logits with any amount of left padding."""
    longest = int(data.attention_mask[idx, : data.prompt_len].sum(-1).max())
    width = min(data.prompt_len, -(-max(longest, 1) // multiple) * multiple)
    cut = data.prompt_len - width
    return data.tokens[idx, cut:], data.attention_mask[idx, cut:], data.answer_mask[idx, cut:]


def focus_rows(batch_size: int, step: int, seed: int, rate: float) -> np.ndarray:
    """Which rows of the batch of `step` are focus rows (bool [B], each with probability `rate`; a pure function
    of (seed, step), so a resumed run draws the same ones)."""
    return np.random.default_rng([seed, step, 0xF0C5]).random(batch_size) < rate


def mask_candidates(answer_mask: np.ndarray, focus_mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The positions `draw_mask` may mask: the focus positions in focus rows, the whole answer elsewhere.

    A focus row keeps the copied parts of its answer visible and masks only computed ones (for word problems:
    the digits of each running total), so the model sees those computations with their inputs in view far more
    often than under uniform masking, where a result and both its operands are unmasked together only with
    probability t (1 - t)^2 (1/12 on average). The loss of every row is still normalised by its answer length."""
    return np.where(rows[:, None], focus_mask & answer_mask, answer_mask)


# ==================================================================================================== objective
def draw_mask(key: Array, answer_mask: Bool[Array, "b l"], *, eps: float,
              stratified_t: bool = True) -> tuple[Bool[Array, "b l"], Float[Array, " b"]]:
    """LLaDA's forward process on the answer region (GUIDELINES.md `forward_process`, SFT variant).

    t ~ U(0, 1) per row (stratified: t_i = (i + u) / B, then shuffled across rows), p_mask = (1 - eps) t + eps, and
    each answer position is masked independently with probability p_mask; the prompt is never masked.
    Returns (masked bool [B, L], p_mask float32 [B])."""
    b, l = answer_mask.shape
    k_t, k_m = jax.random.split(key)
    u = jax.random.uniform(k_t, (b,), jnp.float32)
    t = (jnp.arange(b, dtype=jnp.float32) + u[0]) / b if stratified_t else u
    if stratified_t:  # decouple the stratum from the row so that no row is always low-t
        t = jax.random.permutation(k_t, t)
    p_mask = (1.0 - eps) * t + eps
    masked = (jax.random.uniform(k_m, (b, l)) < p_mask[:, None]) & answer_mask
    return masked, p_mask


def sft_loss(logits: Float[Array, "b l v"], tokens: Int[Array, "b l"], masked: Bool[Array, "b l"],
             p_mask: Float[Array, " b"], answer_mask: Bool[Array, "b l"]) -> tuple[Array, dict[str, Array]]:
    """LLaDA SFT objective of one batch given its mask: for each row, the sum over masked positions of
    CE / p_mask divided by the row's answer length (EOS padding included), averaged over rows (GUIDELINES.md SFT:
    `sum(token_loss / answer_lengths[masked]) / B`). Returns (loss, metrics)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
    weighted = jnp.where(masked, ce / p_mask[:, None], 0.0)
    answer_len = jnp.maximum(answer_mask.sum(-1), 1)
    loss = (weighted.sum(-1) / answer_len).mean()
    n_masked = jnp.maximum(masked.sum(), 1)
    metrics = {"loss": loss, "masked_ce": jnp.where(masked, ce, 0.0).sum() / n_masked,
               "masked_acc": jnp.where(masked, logits.argmax(-1) == tokens, False).sum() / n_masked}
    return loss, metrics


def diffusion_loss(model: Transformer, tokens, attention_mask, answer_mask, key, *, mask_id: int, eps: float,
                   stratified_t: bool = True, candidates=None):
    """LLaDA SFT loss of one batch (`draw_mask` over `candidates`, default the answer, then `sft_loss` of the model
    on the masked rows); returns (loss, metrics)."""
    candidates = answer_mask if candidates is None else candidates
    masked, p_mask = draw_mask(key, candidates, eps=eps, stratified_t=stratified_t)
    noisy = jnp.where(masked, mask_id, tokens)
    logits = model(noisy, attention_mask=attention_mask)
    return sft_loss(logits, tokens, masked, p_mask, answer_mask)


def gpt2_init(params, cfg: ModelConfig, seed: int):
    """GPT-2 style initialisation of a `Transformer` state: every matrix N(0, 0.02), the residual-stream output
    projections (`attn_out`, block `ff_out`) N(0, 0.02 / sqrt(2 n_layers)), norms 1. (Tried for the shipped
    model: it learned more slowly than the module's own initialisation, so the default is "model".)"""
    pure = nnx.to_pure_dict(params)
    key = jax.random.key(seed + 7919)
    resid = 0.02 / math.sqrt(2 * cfg.n_layers)

    def visit(tree, path):
        nonlocal key
        out = {}
        for k, v in tree.items():
            here = path + (str(k),)
            if isinstance(v, dict):
                out[k] = visit(v, here)
            elif v.ndim >= 2:
                key, sub = jax.random.split(key)
                std = resid if (len(here) >= 3 and here[0] == "blocks" and here[-2] in ("attn_out", "ff_out")) else 0.02
                out[k] = (jax.random.normal(sub, v.shape, jnp.float32) * std).astype(v.dtype)
            else:
                out[k] = v
        return out

    new = visit(pure, ())
    nnx.replace_by_pure_dict(params, new)
    return params


def fourier_number_init(params, number_ids: Sequence[int], periods: Sequence[float] = (2, 5, 10, 20, 50, 100),
                        embed_scale: float = 0.1, head_scale: float = 1.0):
    """Seed the embedding and LM-head rows of the number tokens with Fourier features of their value.

    `number_ids[n]` is the token id of the number n. Row n of `wte` gets `embed_scale * F(n)` in its first
    `2 * len(periods)` dimensions and the head column of n gets `head_scale * F(n)` there, with
    F(n) = [cos(2 pi n / T), sin(2 pi n / T) for T in periods]; all other entries keep their random init and
    everything stays trainable. Addition of values is a rotation of these features, which a SwiGLU MLP can
    compute (products of features), so exact number facts are learned several times faster than from random
    embeddings (the mechanism of Zhou et al. 2024, "Pre-trained LLMs use Fourier features to compute addition",
    and FoNE, arXiv 2502.09741). The exported model is an ordinary LLaDA checkpoint.
    """
    pure = nnx.to_pure_dict(params)
    values = np.arange(len(number_ids), dtype=np.float64)
    feats = np.concatenate([f(2 * np.pi * values[:, None] / np.asarray(periods, np.float64)[None])
                            for f in (np.cos, np.sin)], axis=1).astype(np.float32)  # [N, 2P]
    ids = np.asarray(number_ids)
    k = feats.shape[1]
    wte = np.asarray(pure["wte"]).copy()
    if k > wte.shape[1]:
        raise ValueError(f"{k} Fourier features do not fit d_model={wte.shape[1]}")
    wte[ids, :k] = embed_scale * feats
    pure["wte"] = jnp.asarray(wte)
    if "ff_out" in pure:
        head = np.asarray(pure["ff_out"]["kernel"]).copy()  # [d, V]
        head[:k, ids] = head_scale * feats.T
        pure["ff_out"]["kernel"] = jnp.asarray(head)
    nnx.replace_by_pure_dict(params, pure)
    return params


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=tc.peak_lr, warmup_steps=max(tc.warmup_steps, 1),
        decay_steps=max(tc.steps, tc.warmup_steps + 1), end_value=tc.peak_lr * tc.end_lr_ratio)
    return optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(schedule, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay, mask=_decay_mask),
    )


def _decay_mask(params):
    """Weight decay on matrices only (not on RMSNorm weights)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_train_step(graphdef, optimizer: optax.GradientTransformation, cfg: ModelConfig, tc: TrainConfig):
    """A jitted `(params, opt_state, tokens, attention_mask, answer_mask, key, candidates) -> (params, opt_state,
    metrics)`: `candidates` are the positions the step may mask (the answer, or `mask_candidates`);
    params / opt_state donated."""

    def loss_fn(params, tokens, attention_mask, answer_mask, candidates, key):
        model = nnx.merge(graphdef, params)
        return diffusion_loss(model, tokens, attention_mask, answer_mask, key, mask_id=cfg.mask_id, eps=tc.eps,
                              stratified_t=tc.stratified_t, candidates=candidates)

    def step(params, opt_state, tokens, attention_mask, answer_mask, key, candidates):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, tokens, attention_mask, answer_mask, candidates,
                                                         key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads)
        return params, opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1))


# ================================================================================================== checkpoints
def _manager(ckpt_dir: str, tc: TrainConfig):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=tc.max_to_keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(ckpt_dir), options=options)


def save_checkpoint(mngr, step: int, params, opt_state, data_position: int):
    import orbax.checkpoint as ocp

    tree = {"params": params, "opt_state": opt_state,
            "step": np.asarray(step, np.int64), "data_position": np.asarray(data_position, np.int64)}
    mngr.save(step, args=ocp.args.StandardSave(tree))


def restore_checkpoint(mngr, params, opt_state):
    """Latest checkpoint of `mngr` restored onto the structure of (params, opt_state); None when there is none."""
    import orbax.checkpoint as ocp

    step = mngr.latest_step()
    if step is None:
        return None
    target = {"params": params, "opt_state": opt_state,
              "step": np.asarray(0, np.int64), "data_position": np.asarray(0, np.int64)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    tree = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    return tree


# ======================================================================================================== train
class RunLedger:
    """Wall time and loss history of one training run across its invocations (`ckpt_dir/train_meta.json`).

    Written at every checkpoint, so a run killed between checkpoints still reports the time of the steps it kept:
    on resume from step s the ledger restarts from the seconds recorded at checkpoint s, and the steps redone
    after a kill are counted once, as if the run had not stopped. `seconds` in the history is cumulative."""

    FILE = "train_meta.json"

    def __init__(self, ckpt_dir: str, step0: int):
        self.path = os.path.join(ckpt_dir, self.FILE)
        meta = self.read(ckpt_dir) or {}
        marks = meta.get("checkpoints", {})
        if step0 == 0:
            self.offset = 0.0
        elif str(step0) in marks:
            self.offset = float(marks[str(step0)])
        else:  # no mark for step0 (a ledger from before marks, or a kill between saving and marking): last total
            self.offset = float(meta.get("seconds", 0.0))
        self.marks = {k: v for k, v in marks.items() if int(k) <= step0}
        self.prior = [h for h in meta.get("history", []) if h["step"] <= step0]

    def record(self, step: int, elapsed: float, history: list[dict[str, float]]) -> None:
        """Mark checkpoint `step` after `elapsed` seconds of this invocation (`history`: its records so far)."""
        self.marks[str(step)] = self.offset + elapsed
        meta = {"step": step, "seconds": self.offset + elapsed, "checkpoints": self.marks,
                "history": self.prior + [{**h, "seconds": h["seconds"] + self.offset} for h in history]}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, self.path)

    @classmethod
    def read(cls, ckpt_dir: str) -> dict | None:
        """The ledger of `ckpt_dir` as written by `record`, or None when there is none."""
        path = os.path.join(ckpt_dir, cls.FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)


def read_ledger(ckpt_dir: str, result) -> tuple[list[dict[str, float]], float]:
    """(whole-run loss history, whole-run training seconds) of a finished invocation `result` whose loop kept a
    `RunLedger` in `ckpt_dir`; this invocation's own figures when it wrote none."""
    meta = RunLedger.read(ckpt_dir)
    if meta is None:
        return result.history, result.seconds
    return meta["history"], float(meta["seconds"])


@dataclasses.dataclass
class TrainResult:
    model: Transformer
    step: int
    loss: float  # mean training loss over the last `log_every` steps
    history: list[dict[str, float]]
    seconds: float  # wall time of this invocation's training loop (compile included; `read_ledger`: whole run)


def phase_of(step: int, drill_steps: int, drill_every: int) -> tuple[bool, int]:
    """(is a drill step, its step within its own data stream) of training step `step`: the first `drill_steps`
    steps drill; after them, with `drill_every` = k > 0, the last step of every k drills and the others train on
    the task. Each stream counts its own steps from 0, so both read their data in order."""
    if step < drill_steps:
        return True, step
    after = step - drill_steps
    if drill_every <= 0:
        return False, after
    cycles, pos = divmod(after, drill_every)
    if pos == drill_every - 1:
        return True, drill_steps + cycles
    return False, cycles * (drill_every - 1) + pos


def _batch(data: SFTData, tc: TrainConfig, step: int, lengths: np.ndarray | None):
    """(row indices, (tokens, attention_mask, answer_mask)) of the batch of `step` of `data`; with bucketing,
    `lengths` are its prompt lengths."""
    if tc.bucket_pool:
        idx = bucketed_batch_indices(lengths, tc.batch_size, step, tc.seed, tc.bucket_pool)
        return idx, trim_padding(data, idx, tc.trim_multiple)
    idx = batch_indices(len(data), tc.batch_size, step, tc.seed)
    return idx, (data.tokens[idx], data.attention_mask[idx], data.answer_mask[idx])


def train(model_cfg: ModelConfig, tc: TrainConfig, data: SFTData, *, ckpt_dir: str | None = None,
          resume: bool = True, progress: bool = True, stop_at: int | None = None,
          callback: Callable[[int, Transformer], dict[str, float] | None] | None = None,
          callback_every: int = 0, log: Callable[[str], None] | None = None,
          init_fn: Callable | None = None, drill: SFTData | None = None) -> TrainResult:
    """Masked-diffusion SFT of a fresh `Transformer(model_cfg, rngs=nnx.Rngs(tc.seed))` on `data`.

    With `ckpt_dir`, checkpoints every `tc.ckpt_every` steps and at the end; with `resume`, continues from the
    latest checkpoint there. `init_fn(params) -> params` adjusts the fresh initialisation (e.g.
    `fourier_number_init`) before training starts. `stop_at` ends the loop early at that step (the schedule is
    still `tc.steps` long: used to simulate an interrupted run). `callback(step, model)` runs every `callback_every` steps (evaluation).
    With `tc.drill_steps > 0`, steps 0..drill_steps-1 draw their batches from `drill` (whose rows mask only their
    focus positions: e.g. arithmetic chains with the totals masked) and the later ones from `data`, starting at
    its own step 0; with `tc.drill_every`, drill steps continue among them (`phase_of`); one optimiser and one lr
    schedule over all `tc.steps`.
    """
    from tqdm.auto import tqdm

    log = log or _LOG.info
    model = Transformer(model_cfg, rngs=nnx.Rngs(tc.seed))
    graphdef, params = nnx.split(model)
    if tc.init == "gpt2":
        params = gpt2_init(params, model_cfg, tc.seed)
    elif tc.init != "model":
        raise ValueError(f"init must be 'gpt2' or 'model', got {tc.init!r}")
    if init_fn is not None:
        params = init_fn(params)
    optimizer = make_optimizer(tc)
    opt_state = optimizer.init(params)
    step0 = 0
    mngr = _manager(ckpt_dir, tc) if ckpt_dir else None
    if mngr is not None and resume:
        tree = restore_checkpoint(mngr, params, opt_state)
        if tree is not None:
            params, opt_state, step0 = tree["params"], tree["opt_state"], int(tree["step"])
            if int(tree["data_position"]) != step0 * tc.batch_size:
                raise ValueError("checkpoint data position does not match its step and batch size")
            log(f"resumed from {ckpt_dir} at step {step0}")
    ledger = RunLedger(ckpt_dir, step0) if mngr is not None else None
    train_step = make_train_step(graphdef, optimizer, model_cfg, tc)
    base_key = jax.random.key(tc.seed)
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    history: list[dict[str, float]] = []
    window: list[float] = []
    t0 = time.time()
    tty = sys.stderr.isatty()
    bar = tqdm(total=end, initial=step0, disable=not progress, dynamic_ncols=True, mininterval=1.0 if tty else 60.0)
    step = step0
    pending = None
    if (tc.drill_steps or tc.drill_every) and (drill is None or drill.focus_mask is None):
        raise ValueError("drill_steps / drill_every need drill rows with a focus_mask")
    streams = {False: data, True: drill}
    lengths = {k: rows.attention_mask[:, : rows.prompt_len].sum(-1)  # prompt lengths, for bucketing
               for k, rows in streams.items() if tc.bucket_pool and rows is not None}
    for step in range(step0, end):
        key = jax.random.fold_in(base_key, step)
        drilling, row_step = phase_of(step, tc.drill_steps, tc.drill_every)
        rows = streams[drilling]
        idx, batch = _batch(rows, tc, row_step, lengths.get(drilling))
        candidates = batch[2]
        rate = 1.0 if drilling else tc.focus_rate
        if rate > 0:
            if rows.focus_mask is None:
                raise ValueError("focus_rate > 0 needs SFTData.focus_mask")
            focus = rows.focus_mask[idx][:, rows.tokens.shape[1] - batch[0].shape[1]:]  # trimming cuts the left
            candidates = mask_candidates(batch[2], focus, focus_rows(len(idx), row_step, tc.seed, rate))
        params, opt_state, metrics = train_step(params, opt_state, *batch, key, candidates)
        if pending is not None:  # read the previous step's metrics (keeps one step in flight)
            window.append(float(pending["loss"]))
        pending = metrics
        done = step + 1
        if done % tc.log_every == 0 or done == end:
            window.append(float(pending["loss"]))
            m = {k: float(v) for k, v in pending.items()}
            pending = None
            rec = {"step": done, "loss": float(np.mean(window)), "masked_acc": m["masked_acc"],
                   "grad_norm": m["grad_norm"], "seconds": time.time() - t0}
            history.append(rec)
            window = []
            bar.set_postfix(loss=f"{rec['loss']:.4f}", refresh=False)
            log(f"step {done:6d}  loss {rec['loss']:.4f}  masked_acc {rec['masked_acc']:.3f}  "
                f"grad_norm {rec['grad_norm']:.3f}  {rec['seconds']:.0f}s")
        if callback is not None and callback_every and done % callback_every == 0 and done != end:
            out = callback(done, nnx.merge(graphdef, params))
            if out and history:
                history[-1].update(out)
        if mngr is not None and (done % tc.ckpt_every == 0 or done == end):
            save_checkpoint(mngr, done, params, opt_state, done * tc.batch_size)
            ledger.record(done, time.time() - t0, history)
        bar.update(1)
    bar.close()
    if mngr is not None:
        mngr.wait_until_finished()
        mngr.close()
    seconds = time.time() - t0
    last = history[-1]["loss"] if history else float("nan")
    return TrainResult(nnx.merge(graphdef, params), end if end > step0 else step0, last, history, seconds)


# ===================================================================================================== sampling
def transfer_schedule(block_length: int, steps_per_block: int) -> np.ndarray:
    """Tokens committed at each step of a block (LLaDA's `get_num_transfer_tokens`: even split, remainder first)."""
    base, rem = divmod(block_length, steps_per_block)
    return np.array([base + (1 if i < rem else 0) for i in range(steps_per_block)], np.int32)


def make_greedy_sampler(graphdef, mask_id: int, gen_length: int, block_length: int = 32, steps: int | None = None):
    """Jitted LLaDA semi-autoregressive low-confidence sampler, greedy (temperature 0).

    `sample(params, prompt_tokens [B, P], prompt_mask [B, P]) -> [B, gen_length]`. Blocks of `block_length` are
    decoded left to right with `steps // n_blocks` steps each; each step commits, in the current block, the
    masked positions with the highest softmax probability of their argmax token (k per step from
    `transfer_schedule`). One full forward per step.
    """
    steps = gen_length if steps is None else steps
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} is not a multiple of block_length={block_length}")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps={steps} is not a multiple of the number of blocks {n_blocks}")
    spb = steps // n_blocks
    ks = jnp.asarray(transfer_schedule(block_length, spb))

    @jax.jit
    def sample(params, prompt_tokens, prompt_mask):
        model = nnx.merge(graphdef, params)
        b, p = prompt_tokens.shape
        x = jnp.concatenate([prompt_tokens, jnp.full((b, gen_length), mask_id, prompt_tokens.dtype)], axis=1)
        valid = jnp.concatenate([prompt_mask.astype(bool), jnp.ones((b, gen_length), bool)], axis=1)
        block_of = jnp.arange(gen_length) // block_length

        def body(i, x):
            blk, s = i // spb, i % spb
            logits = model(x, attention_mask=valid)[:, p:]
            x0 = jnp.argmax(logits, axis=-1).astype(x.dtype)
            conf = jnp.exp(jnp.max(logits, -1) - jax.nn.logsumexp(logits, -1))
            gen = x[:, p:]
            cand = (gen == mask_id) & (block_of == blk)[None]
            conf = jnp.where(cand, conf, -jnp.inf)
            # rank of each position by confidence (ties -> lower index first); commit ranks < k
            order = jnp.argsort(-conf, axis=-1, stable=True)
            rank = jnp.argsort(order, axis=-1)
            commit = cand & (rank < ks[s])
            return x.at[:, p:].set(jnp.where(commit, x0, gen))

        x = jax.lax.fori_loop(0, steps, body, x)
        return x[:, p:]

    return sample


def evaluate(model: Transformer, problems: Sequence[Problem], gen_length: int = 64, block_length: int = 32,
             steps: int | None = None, *, tokenizer: Tokenizer | None = None, batch_size: int = 128,
             prompt_len: int | None = None, return_predictions: bool = False, progress: bool = False,
             prompt_format: Callable[[str], str] = format_prompt):
    """Exact-answer accuracy of `model` on `problems` under greedy LLaDA decoding (low-confidence, semi-AR).

    Prompts are `prompt_format(question)` (the task's own; default the arithmetic task's), left-padded; the output
    is decoded up to the first EOS and scored with `jdllm.tasks.arithmetic.score`. Returns accuracy (and the
    decoded predictions if asked).
    """
    tokenizer = tokenizer or default_tokenizer()
    graphdef, params = nnx.split(model)
    sampler = make_greedy_sampler(graphdef, model.config.mask_id, gen_length, block_length, steps)
    prompts = [prompt_format(p.question) for p in problems]
    tokens, mask = encode_prompts(tokenizer, prompts, prompt_len)
    preds: list[str] = []
    n = len(problems)
    for start in range(0, n, batch_size):
        tb, mb = tokens[start: start + batch_size], mask[start: start + batch_size]
        real = tb.shape[0]
        if real < batch_size and n > batch_size:  # keep one compiled shape
            tb = np.concatenate([tb, np.repeat(tb[-1:], batch_size - real, 0)])
            mb = np.concatenate([mb, np.repeat(mb[-1:], batch_size - real, 0)])
        out = np.asarray(sampler(params, tb, mb))[:real]
        preds.extend(tokenizer.decode_until_eos(row) for row in out)
        if progress:
            _LOG.info("  eval %d/%d", len(preds), n)
    acc = float(np.mean([score(pr, p.answer) for pr, p in zip(preds, problems)]))
    return (acc, preds) if return_predictions else acc


def default_tokenizer() -> Tokenizer:
    """The tokenizer of the shipped arithmetic model: characters (printable ASCII + newline), the task's words as
    whole-word tokens, and the numbers 10..99 as single tokens (so every number of the task is one token)."""
    from jdllm.tasks.arithmetic import alphabet, vocabulary_words

    return build_char_tokenizer(alphabet(), words=vocabulary_words(), number_tokens=100)


# ======================================================================================================= export
def export_llada(model: Transformer, tokenizer: Tokenizer, out_dir: str, extra_config: dict | None = None,
                 generation_config: dict | None = None) -> None:
    """Write the model in HF LLaDA layout (`jdllm.weights.hf.save_hf`: `config.json` with LLaDA's keys,
    `model.safetensors` with its tensor names), plus `tokenizer.json` and (optionally) `generation_config.json`;
    `extra_config` adds keys to `config.json`."""
    save_hf(model, out_dir)
    if extra_config:
        path = os.path.join(out_dir, "config.json")
        with open(path) as f:
            conf = json.load(f)
        conf.update(extra_config)
        with open(path, "w") as f:
            json.dump(conf, f, indent=2)
    tokenizer.save(out_dir)
    if generation_config is not None:
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump(generation_config, f, indent=2)
            f.write("\n")


def param_count(model: Transformer) -> int:
    _, state = nnx.split(model)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
