"""Public entry points: `load`, `save`, `forward`, `generate`.

`generate` takes the keyword names of LLaDA's / Fast-dLLM's reference `generate` (`steps`, `gen_length`,
`block_length`, `temperature`, `remasking`, `cfg_scale`, `threshold`, `factor`) so scripts port by renaming one
import; `policy=`, `cache=` and `schedule=` objects are the structured form of the same call.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdllm import sharding as sharding_lib
from jdllm.decode.cost import account_flops
from jdllm.decode.buckets import DEFAULT_PROMPT_BUCKETS, bucket_width
from jdllm.decode.caches import CacheStrategy, ExactBlockCache
from jdllm.decode.loop import DecodeSpec, decode, decode_debug
from jdllm.decode.memory import plan_batch
from jdllm.decode.policies import CommitPolicy
from jdllm.decode.schedules import BlockSchedule, SemiAutoregressive
from jdllm.models.transformer import Transformer
from jdllm.weights.checkpoint_dir import checkpoint_format, leftovers
from jdllm.weights.hf import load_hf, read_hf_config, save_hf
from jdllm.weights.lora import read_lora
from jdllm.weights.orbax_io import load_orbax, save_orbax
from jdllm.validation import (check_cache, check_generate_args, check_prompt_buckets, check_prompts,
                              check_row_ids, make_policy)  # noqa: F401


def load(path: str | os.PathLike, dtype: str | None = None, mesh=None, rules=None,
         check_finite: bool = False, lora: str | os.PathLike | None = None,
         attention_kernel: str = "auto") -> Transformer:
    """Load a model from an HF directory (config.json + *.safetensors) or a directory written by `save`.

    With `mesh` (any `jax.sharding.Mesh`, e.g. `jax.make_mesh((2, 4), ("data", "tensor"))` or
    `jdllm.sharding.make_mesh(...)`; Explicit axes are used through the mesh's Auto twin), every tensor is
    placed on its shards as it is read (each device reads only its slice of the memory-mapped safetensors, or
    orbax restores straight into the shardings), by `rules` (a `jdllm.sharding.ShardingRules` or preset name;
    default tensor-parallel). `check_finite=True` raises on the first parameter holding NaN/inf (the CLI turns it on).

    `lora` names a PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`, e.g. the D2F
    adapters), merged into the base weights as they load: W + (lora_alpha / r) * B @ A (`jdllm.weights.lora`).
    The adapter is read and checked first; unsupported options (DoRA, biases, modules_to_save, ...), keys that
    match no linear weight of the base, and mis-shaped A / B raise a ValueError naming the adapter file and key.

    `attention_kernel` ("auto", "xla", "cudnn", "splash") picks the attention implementation
    (`jdllm.models.attention_kernels`; "auto": Pallas splash on one TPU device, XLA elsewhere).

    A damaged or inconsistent checkpoint (truncated / corrupt safetensors, bad index or config.json, damaged
    orbax params, a directory holding both formats) raises a ValueError naming the file and what is wrong;
    no partial model is returned.
    """
    model = _load(os.fspath(path), dtype, mesh, rules, check_finite, lora)
    if attention_kernel != model.config.attention_kernel:
        from jdllm.models.attention_view import with_attention_kernel
        model = with_attention_kernel(model, attention_kernel)
    return model


def _load(path: str, dtype, mesh, rules, check_finite: bool, lora) -> Transformer:
    if not os.path.isdir(path):
        left = leftovers(path)
        hint = f" (an interrupted save left {', '.join(left)})" if left else ""
        raise FileNotFoundError(f"no model directory at {path}{hint}")
    orbax = checkpoint_format(path) == "orbax"
    adapter = read_lora(lora) if lora is not None else None
    if mesh is None:
        if rules is not None:
            raise ValueError("rules= needs a mesh=")
        if orbax:
            return load_orbax(path, dtype, check_finite=check_finite, lora=adapter)
        return load_hf(path, dtype, check_finite=check_finite, lora=adapter)
    rules = sharding_lib.get_rules(rules)
    mesh = sharding_lib.usable_mesh(mesh, rules)
    if orbax:
        model = load_orbax(path, dtype, mesh=mesh, rules=rules, check_finite=check_finite, lora=adapter)
    else:
        sharding_lib.check_model(read_hf_config(path, dtype), mesh, rules)
        model = load_hf(path, dtype, place=sharding_lib.hf_placer(mesh, rules), check_finite=check_finite,
                        lora=adapter)
    model.sharding_rules = rules
    return model


def save(model: Transformer, path: str | os.PathLike, format: str = "orbax") -> None:
    """Save a model: `format="orbax"` (params + jdllm config) or `"hf"` (the family's HF layout).

    Atomic: written into a temporary sibling directory, fsynced, then swapped in for `path`, so a killed save
    leaves the old checkpoint or the new one, never a mix. A checkpoint of either format at `path` is replaced
    (never two formats in one directory); other files there (tokenizer.json, generation_config.json, ...) are
    carried over; a non-empty `path` holding no checkpoint is refused.
    """
    if format == "orbax":
        save_orbax(model, path)
    elif format == "hf":
        save_hf(model, path)
    else:
        raise ValueError(f"format must be 'orbax' or 'hf', got {format!r}")


@functools.partial(jax.jit, static_argnames=("graphdef", "prompt_len", "block_size"))
def _forward(graphdef, params, tokens, attention_mask, prompt_len=None, block_size=None):
    return nnx.merge(graphdef, params)(tokens, attention_mask, prompt_len=prompt_len, block_size=block_size)


def forward(model: Transformer, tokens, attention_mask=None, prompt_len: int | None = None,
            block_size: int | None = None) -> jax.Array:
    """Raw logits [B, L, V] in float32 (never shifted), for research code and parity checks.

    A block-causal model (D2F) needs `prompt_len` (the width of the prompt region: block 0) and takes its
    training `block_size` unless given; a bidirectional model given both runs under that block-causal mask
    (`Transformer.__call__`)."""
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"tokens must hold int token ids, got dtype {tokens.dtype}")
    tokens = tokens.astype(jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, L], got shape {tokens.shape}")
    mask = jnp.ones(tokens.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
    graphdef, params = nnx.split(model)
    return _forward(graphdef, params, tokens, mask, prompt_len, block_size)


@dataclasses.dataclass
class GenerateOutput:
    """tokens [B, gen_length] (numpy); nfe [B]: forward evaluations each row took, counted as the reference
    counts them; iterations: loop iterations of the batch (= max(nfe): rows never idle; the largest over
    micro-batches); micro_batch: rows per compiled call (< B when the memory plan split the batch).

    The compute account, per row (what the row computes, as it would alone): `recomputed` [B], positions run
    through a transformer layer, summed over layers and steps (a no-cache step counts canvas x layers; a cached
    step only the rows its strategy recomputes), and `flops` [B], the model FLOPs from it
    (`jdllm.bench.flops.account_flops`)."""

    tokens: np.ndarray
    nfe: np.ndarray
    iterations: int
    micro_batch: int | None = None
    recomputed: np.ndarray | None = None
    flops: np.ndarray | None = None


def pack_prompts(prompts, cfg, gen_length: int, prompt_length: int | None = None,
                 prompt_buckets: Sequence[int] | None = None):
    """Left-pad prompts into a canvas [B, P + gen_length] with masks in the generation region.

    P is `prompt_length` when given, else the bucket of the longest prompt (`jdllm.decode.buckets`; exact
    when `prompt_buckets` is None or empty).

    Returns (tokens, valid, P). Raises TypeError on non-int token ids and ValueError on empty prompts, mask ids
    or out-of-vocabulary ids in a prompt, a prompt longer than `prompt_length`, or a canvas longer than the
    model's maximum length.
    """
    rows = check_prompts(prompts, cfg)
    longest = max(map(len, rows))
    if prompt_length is None:
        width = bucket_width(longest, prompt_buckets, max(cfg.max_seq_len - gen_length, longest))
    else:
        width = prompt_length
    if width < longest:
        raise ValueError(f"a prompt has {longest} tokens, more than prompt_length={prompt_length}")
    if width + gen_length > cfg.max_seq_len:
        raise ValueError(
            f"prompt ({width}) + gen_length ({gen_length}) = {width + gen_length} exceeds the model's maximum "
            f"length {cfg.max_seq_len}"
        )
    pad = cfg.pad_id if cfg.pad_id is not None and cfg.pad_id != cfg.mask_id else 0
    tokens = np.full((len(rows), width + gen_length), cfg.mask_id, np.int32)
    valid = np.ones(tokens.shape, bool)
    for i, p in enumerate(rows):
        tokens[i, : width - len(p)] = pad
        valid[i, : width - len(p)] = False
        tokens[i, width - len(p) : width] = p
    return tokens, valid, width


def make_cache(cache, cfg_scale: float, refresh_every: int | None) -> CacheStrategy:
    """The cache strategy of `generate`'s `cache=` / `cfg_scale=` / `refresh_every=` (see jdllm.validation)."""
    return check_cache(cache, cfg_scale, refresh_every)


def _applies_recipe(fn):
    """`recipe=` for `generate`: the named recipe of configs/recipes.yaml fills every keyword the caller did not
    pass (an explicit keyword replaces the recipe's choice for its whole axis: `jdllm.recipes.merge_recipe`)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        given = signature.bind(*args, **kwargs).arguments
        recipe = given.pop("recipe", None)
        if recipe is None:
            return fn(**given)
        if not isinstance(recipe, str):
            raise TypeError(f"recipe must be a recipe name (str), got {type(recipe).__name__}")
        from jdllm.recipes import merge_recipe, recipe_kwargs

        gen_length = given.get("gen_length", signature.parameters["gen_length"].default)
        fixed = {k: given.pop(k) for k in ("model", "prompts")}
        block = given.get("block_length") if "schedule" not in given else None
        kwargs = recipe_kwargs(recipe, gen_length, model_config=fixed["model"].config, block_length=block)
        return fn(**fixed, **merge_recipe(kwargs, given))

    return wrapper


@_applies_recipe
def generate(
    model: Transformer,
    prompts,
    gen_length: int = 128,
    block_length: int | None = None,
    steps: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    threshold: float | None = None,
    factor: float | None = None,
    factor_quirk: bool | None = None,
    alg: str | None = None,
    alg_temp: float | None = None,
    eps: float | None = None,
    cache: str | CacheStrategy | None = None,
    refresh_every: int | None = None,
    eos_early_stop: bool | None = None,
    policy: CommitPolicy | None = None,
    schedule: BlockSchedule | None = None,
    seed: int = 0,
    row_ids: Sequence[int] | None = None,
    prompt_length: int | None = None,
    prompt_buckets: Sequence[int] | None = DEFAULT_PROMPT_BUCKETS,
    debug: bool = False,
    mesh=None,
    rules=None,
    max_memory: int | None = None,
    recipe: str | None = None,
) -> GenerateOutput:
    """Generate `gen_length` tokens after each prompt by masked-diffusion denoising, as one compiled program.

    Semantics of LLaDA's `generate` (semi-AR blocks, linear transfer schedule, top-k by confidence, Gumbel-max
    at temperature > 0, CFG) with Fast-dLLM's threshold / factor rules and prefix / dual caches. `alg=`
    ("maskgit_plus" | "topk_margin" | "entropy" | "origin", with `alg_temp` (default 0), `eps` (default 1e-3))
    selects Dream's `diffusion_generate` algorithms and step schedule over one global window (leave
    block_length unset). `factor_quirk` (default True) goes with `factor`. `block_length` defaults to gen_length
    (one global window), `steps` to gen_length (or `policy.steps` of a policy that has one). `eos_early_stop`
    (default False) ends a row once a finished block holds EOS and fills its later blocks with EOS (off by
    default, as in the references). `row_ids` name the rows for the per-row random streams (distinct, default
    0..B-1): give a prompt the same id and seed and its sampled tokens do not depend on the rest of the batch.
    Prompts are left-padded to the next width of `prompt_buckets` (multiples of 64 up to 512, then powers of two;
    None: the longest prompt's exact width), so calls with different prompt lengths reuse a handful of compiled
    programs (same tokens: padding is batch-invariant); `prompt_length` fixes an exact width instead.
    `debug=True` runs the same step body from a Python loop.

    `recipe=` names a recipe of `configs/recipes.yaml` (e.g. "fast_dllm_dual_parallel", "d2f"): it supplies
    every keyword the call does not give; a keyword the call gives replaces the recipe's choice for that axis
    (commit rule, cache, or schedule). `schedule=` takes any `jdllm.decode.schedules` member: semi-AR blocks
    (the default) or the D2F pipeline (`Pipelined`, with `cache="exact"` on a block-causal model).

    Every argument is checked before anything runs (`jdllm.validation`): a keyword the chosen policy / cache /
    schedule would ignore (e.g. `threshold=` with `policy=`, `refresh_every=` without a cache) raises.

    Memory (one device): the call's peak is estimated from shapes (`jdllm.decode.memory`) against `max_memory`
    bytes (else $JDLLM_MAX_MEMORY, else 90% of the free device / host memory); a batch that does not fit runs
    as equal micro-batches (same tokens, `micro_batch` in the output), and a call where one row does not fit
    raises `MemoryPlanError` with the estimate and the limit, before allocating.

    `mesh` (any `jax.sharding.Mesh`, Auto or Explicit axes; when None, the mesh the model's parameters live on,
    else that of a surrounding `jax.set_mesh`) runs the decode sharded by `rules`
    (default: the rules the model was loaded / sharded with, else tensor-parallel): canvas and cache over
    batch (and the cache over kv heads), the proposal over the vocab-sharded LM head without gathering logits.
    Tokens and NFE are those of one device. Under several processes every process passes the same prompts.
    """
    cfg = model.config
    args = check_generate_args(
        gen_length=gen_length, block_length=block_length, steps=steps, temperature=temperature, remasking=remasking,
        cfg_scale=cfg_scale, threshold=threshold, factor=factor, factor_quirk=factor_quirk, alg=alg,
        alg_temp=alg_temp, eps=eps, cache=cache, refresh_every=refresh_every, eos_early_stop=eos_early_stop,
        policy=policy, schedule=schedule, seed=seed, prompt_length=prompt_length, debug=debug,
        max_memory=max_memory)
    sched = args.schedule
    if isinstance(args.cache, ExactBlockCache) and cfg.attention != "block_causal":
        raise ValueError(f"cache='exact' needs a block-causal model (config attention='block_causal'), this one is "
                         f"{cfg.attention}: its K/V are never exact; use cache='prefix' or 'dual', or a D2F model")
    tokens, valid, width = pack_prompts(prompts, cfg, sched.gen_length, args.prompt_length,
                                        check_prompt_buckets(prompt_buckets))
    batch = tokens.shape[0]
    ids = check_row_ids(row_ids, batch)
    spec = DecodeSpec(policy=args.policy, cache=args.cache, schedule=sched, temperature=args.temperature)
    graphdef, params = nnx.split(model)
    plan = sharding_lib.plan_for(params, mesh, rules, getattr(model, "sharding_rules", None))
    run = decode_debug if debug else decode
    if plan is None:
        micro = plan_batch(cfg, spec, batch, tokens.shape[1], args.max_memory).micro_batch
        spec = dataclasses.replace(spec, max_iters=args.cache.max_iters(sched, args.steps, micro))
        parts = [_run_rows(run, graphdef, params, spec, tokens[rows], valid[rows], ids[rows], args.seed, width, micro)
                 for rows in _micro_batches(batch, micro)]
        st_tokens, nfe, nonfinite, done, recomputed = (np.concatenate([p[i] for p in parts]) for i in range(5))
        iters = max(p[5] for p in parts)
    else:
        spec = dataclasses.replace(spec, max_iters=args.cache.max_iters(sched, args.steps, batch))
        micro = batch
        sharding_lib.check_model(cfg, plan.mesh, plan.rules)
        params = sharding_lib.shard_params(params, plan.mesh, plan.rules)
        rows = sharding_lib.process_rows(batch, plan.mesh, plan.rules)
        glob = functools.partial(sharding_lib.global_batch_array, mesh=plan.mesh, rules=plan.rules, global_rows=batch)
        with jax.set_mesh(plan.mesh):  # overrides a surrounding Explicit-axes mesh with its Auto twin
            st = run(graphdef, params, dataclasses.replace(spec, sharding=plan), glob(tokens[rows]),
                     glob(valid[rows]), glob(ids[rows]), np.uint32(args.seed), width)
        st_tokens, nfe, iters, done, nonfinite, recomputed = (
            sharding_lib.to_host(x) for x in (st.tokens, st.nfe, st.iters, st.done, st.nonfinite, st.recomputed))
    _check_finished(nonfinite, done, spec.max_iters)
    flops = np.asarray([account_flops(cfg, args.cache, int(r), int(n), tokens.shape[1], width, sched.width)
                        for r, n in zip(recomputed, nfe)])
    return GenerateOutput(tokens=np.asarray(st_tokens[:, width:]), nfe=np.asarray(nfe), iterations=int(iters),
                          micro_batch=micro, recomputed=np.asarray(recomputed), flops=flops)


def _micro_batches(batch: int, micro: int) -> list[np.ndarray]:
    """Row indices of each micro-batch of at most `micro` rows, in order."""
    return [np.arange(start, min(start + micro, batch)) for start in range(0, batch, micro)]


def _run_rows(run, graphdef, params, spec, tokens, valid, ids, seed, width, micro):
    """One single-device decode of these rows, padded to `micro` rows by repeating the last one (rows are
    independent, so the padding changes no real row, and every micro-batch reuses one program); returns host
    arrays of the real rows only."""
    real = tokens.shape[0]
    pad = lambda x: np.concatenate([x, np.repeat(x[-1:], micro - real, axis=0)])
    st = run(graphdef, params, spec, jnp.asarray(pad(tokens)), jnp.asarray(pad(valid)),
             jnp.asarray(pad(ids), jnp.int32), jnp.asarray(seed, jnp.uint32), width)
    st_tokens, nfe, nonfinite, done, recomputed, iters = jax.device_get(
        (st.tokens, st.nfe, st.nonfinite, st.done, st.recomputed, st.iters))
    return st_tokens[:real], nfe[:real], nonfinite[:real], done[:real], recomputed[:real], int(iters)


def _check_finished(nonfinite: np.ndarray, done: np.ndarray, max_iters: int) -> None:
    bad = np.flatnonzero(nonfinite)
    if bad.size:
        raise FloatingPointError(
            f"the model produced non-finite logits (NaN / inf) for rows {bad.tolist()}: check the weights "
            "(jdllm.load(..., check_finite=True)) and the dtype")
    if not np.all(done):
        raise RuntimeError(f"decoding stopped at the iteration bound {max_iters} with unfinished rows "
                           f"{np.flatnonzero(~done).tolist()}: policy bug")
