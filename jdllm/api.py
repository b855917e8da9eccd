"""Public entry points: `load`, `save`, `forward`, `generate`.

`generate` takes the keyword names of LLaDA's / Fast-dLLM's reference `generate` (`steps`, `gen_length`,
`block_length`, `temperature`, `remasking`, `cfg_scale`, `threshold`, `factor`) so scripts port by renaming one
import; `policy=`, `cache=` and `schedule=` objects are the structured form of the same call.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdllm import sharding as sharding_lib
from jdllm.decode.buckets import DEFAULT_PROMPT_BUCKETS, bucket_width
from jdllm.decode.caches import CACHES, CacheStrategy, NoCache
from jdllm.decode.loop import DecodeSpec, decode, decode_debug
from jdllm.decode.policies import CommitPolicy, Factor, Threshold, TopK
from jdllm.decode.policies.dream import DreamAlgorithm
from jdllm.decode.schedules import SemiAutoregressive
from jdllm.models.transformer import Transformer
from jdllm.weights.checkpoint_dir import checkpoint_format, leftovers
from jdllm.weights.hf import load_hf, read_hf_config, save_hf
from jdllm.weights.orbax_io import load_orbax, save_orbax


def load(path: str | os.PathLike, dtype: str | None = None, mesh=None, rules=None,
         check_finite: bool = False) -> Transformer:
    """Load a model from an HF directory (config.json + *.safetensors) or a directory written by `save`.

    With `mesh` (any `jax.sharding.Mesh`, e.g. `jax.make_mesh((2, 4), ("data", "tensor"))` or
    `jdllm.sharding.make_mesh(...)`; Explicit axes are used through the mesh's Auto twin), every tensor is
    placed on its shards as it is read (each device reads only its slice of the memory-mapped safetensors, or
    orbax restores straight into the shardings), by `rules` (a `jdllm.sharding.ShardingRules` or preset name;
    default tensor-parallel). `check_finite=True` raises on the first parameter holding NaN/inf (the CLI turns it on).

    A damaged or inconsistent checkpoint (truncated / corrupt safetensors, bad index or config.json, damaged
    orbax params, a directory holding both formats) raises a ValueError naming the file and what is wrong;
    no partial model is returned.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        left = leftovers(path)
        hint = f" (an interrupted save left {', '.join(left)})" if left else ""
        raise FileNotFoundError(f"no model directory at {path}{hint}")
    orbax = checkpoint_format(path) == "orbax"
    if mesh is None:
        if rules is not None:
            raise ValueError("rules= needs a mesh=")
        if orbax:
            return load_orbax(path, dtype, check_finite=check_finite)
        return load_hf(path, dtype, check_finite=check_finite)
    rules = sharding_lib.get_rules(rules)
    mesh = sharding_lib.usable_mesh(mesh, rules)
    if orbax:
        model = load_orbax(path, dtype, mesh=mesh, rules=rules, check_finite=check_finite)
    else:
        sharding_lib.check_model(read_hf_config(path, dtype), mesh, rules)
        model = load_hf(path, dtype, place=sharding_lib.hf_placer(mesh, rules), check_finite=check_finite)
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


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _forward(graphdef, params, tokens, attention_mask):
    return nnx.merge(graphdef, params)(tokens, attention_mask)


def forward(model: Transformer, tokens, attention_mask=None) -> jax.Array:
    """Raw logits [B, L, V] in float32 (never shifted), for research code and parity checks."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, L], got shape {tokens.shape}")
    mask = jnp.ones(tokens.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
    graphdef, params = nnx.split(model)
    return _forward(graphdef, params, tokens, mask)


@dataclasses.dataclass
class GenerateOutput:
    """tokens [B, gen_length] (numpy); nfe [B]: forward evaluations each row took, counted as the reference
    counts them; iterations: loop iterations of the batch (= max(nfe): rows never idle)."""

    tokens: np.ndarray
    nfe: np.ndarray
    iterations: int


def _as_prompt_list(prompts) -> list[list[int]]:
    if isinstance(prompts, (np.ndarray, jax.Array)):
        arr = np.asarray(prompts)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise ValueError(f"prompt array must be [B, L], got shape {arr.shape}")
        return [list(map(int, row)) for row in arr]
    if not isinstance(prompts, Sequence) or isinstance(prompts, str) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token lists or a [B, L] int array")
    if all(isinstance(t, (int, np.integer)) for t in prompts):
        return [list(map(int, prompts))]
    return [list(map(int, p)) for p in prompts]


def pack_prompts(prompts, cfg, gen_length: int, prompt_length: int | None = None,
                 prompt_buckets: Sequence[int] | None = None):
    """Left-pad prompts into a canvas [B, P + gen_length] with masks in the generation region.

    P is `prompt_length` when given, else the bucket of the longest prompt (`jdllm.decode.buckets`; exact
    when `prompt_buckets` is None or empty).

    Returns (tokens, valid, P). Raises ValueError on empty prompts, mask ids or out-of-vocabulary ids in a
    prompt, a prompt longer than `prompt_length`, or a canvas longer than the model's maximum length.
    """
    rows = _as_prompt_list(prompts)
    for i, p in enumerate(rows):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if cfg.mask_id in p:
            raise ValueError(f"prompt {i} contains the mask id {cfg.mask_id} at position {p.index(cfg.mask_id)}")
        bad = [t for t in p if not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token id {bad[0]} outside the vocabulary of {cfg.vocab_size}")
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


def make_policy(steps, block_length, n_blocks, remasking, threshold, factor, factor_quirk, alg=None,
                alg_temp=0.0, eps=1e-3, gen_length=None) -> CommitPolicy:
    if sum(x is not None for x in (threshold, factor, alg)) > 1:
        raise ValueError("give only one of threshold, factor or alg")
    if alg is not None:
        if block_length != gen_length:
            raise ValueError(f"alg={alg!r} (Dream's sampler) decodes one global window: block_length must equal "
                             f"gen_length ({gen_length}), got {block_length}")
        return DreamAlgorithm(alg=alg, steps=steps, gen_length=gen_length, eps=eps, alg_temp=alg_temp)
    if threshold is not None:
        return Threshold(float(threshold))
    if factor is not None:
        return Factor(float(factor), quirk=factor_quirk)
    return TopK(block_length=block_length, steps_per_block=steps // n_blocks, score=remasking)


def make_cache(cache, cfg_scale: float, refresh_every: int | None) -> CacheStrategy:
    if isinstance(cache, CacheStrategy):
        strategy = cache
    elif cache is None or cache == "none":
        strategy = NoCache(cfg_scale=cfg_scale)
    elif cache in CACHES:
        strategy = CACHES[cache](refresh_every=refresh_every)
    else:
        raise ValueError(f"cache must be None, 'prefix', 'dual' or a CacheStrategy, got {cache!r}")
    if cfg_scale > 0 and not (isinstance(strategy, NoCache) and strategy.cfg_scale == cfg_scale):
        raise ValueError("classifier-free guidance (cfg_scale > 0) is supported with cache=None only")
    return strategy


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
    factor_quirk: bool = True,
    alg: str | None = None,
    alg_temp: float = 0.0,
    eps: float = 1e-3,
    cache: str | CacheStrategy | None = None,
    refresh_every: int | None = None,
    eos_early_stop: bool = False,
    policy: CommitPolicy | None = None,
    schedule: SemiAutoregressive | None = None,
    seed: int = 0,
    row_ids: Sequence[int] | None = None,
    prompt_length: int | None = None,
    prompt_buckets: Sequence[int] | None = DEFAULT_PROMPT_BUCKETS,
    debug: bool = False,
    mesh=None,
    rules=None,
) -> GenerateOutput:
    """Generate `gen_length` tokens after each prompt by masked-diffusion denoising, as one compiled program.

    Semantics of LLaDA's `generate` (semi-AR blocks, linear transfer schedule, top-k by confidence, Gumbel-max
    at temperature > 0, CFG) with Fast-dLLM's threshold / factor rules and prefix / dual caches. `alg=`
    ("maskgit_plus" | "topk_margin" | "entropy" | "origin", with `alg_temp`, `eps`) selects Dream's
    `diffusion_generate` algorithms and step schedule over one global window (leave block_length unset).
    `block_length` defaults to gen_length (one global window), `steps` to gen_length. `eos_early_stop` ends a
    row once a finished block holds EOS and fills its later blocks with EOS (off by default, as in the references). `row_ids` name the
    rows for the per-row random streams (default 0..B-1): give a prompt the same id and seed and its sampled
    tokens do not depend on the rest of the batch. Prompts are left-padded to the next width of `prompt_buckets`
    (multiples of 64 up to 512, then powers of two; None: the longest prompt's exact width), so calls with
    different prompt lengths reuse a handful of compiled programs (same tokens: padding is batch-invariant);
    `prompt_length` fixes an exact width instead. `debug=True` runs the same step body from a
    Python loop.

    `mesh` (any `jax.sharding.Mesh`, Auto or Explicit axes; when None, the mesh the model's parameters live on,
    else that of a surrounding `jax.set_mesh`) runs the decode sharded by `rules`
    (default: the rules the model was loaded / sharded with, else tensor-parallel): canvas and cache over
    batch (and the cache over kv heads), the proposal over the vocab-sharded LM head without gathering logits.
    Tokens and NFE are those of one device. Under several processes every process passes the same prompts.
    """
    cfg = model.config
    block_length = gen_length if block_length is None else block_length
    steps = gen_length if steps is None else steps
    sched = schedule or SemiAutoregressive(gen_length, block_length, eos_early_stop=eos_early_stop)
    if sched.gen_length != gen_length:
        raise ValueError(f"schedule.gen_length={sched.gen_length} differs from gen_length={gen_length}")
    if steps < 1 or steps % sched.n_blocks:
        raise ValueError(f"steps={steps} is not a positive multiple of the block count {sched.n_blocks}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if policy is None:
        policy = make_policy(steps, sched.block_length, sched.n_blocks, remasking, threshold, factor, factor_quirk,
                             alg, alg_temp, eps, gen_length)
    strategy = make_cache(cache, cfg_scale, refresh_every)
    tokens, valid, width = pack_prompts(prompts, cfg, gen_length, prompt_length, prompt_buckets)
    batch = tokens.shape[0]
    ids = np.arange(batch) if row_ids is None else np.asarray(row_ids)
    if ids.shape != (batch,):
        raise ValueError(f"row_ids must have one id per prompt ({batch}), got shape {ids.shape}")
    # A bound no correct run reaches: every live row commits >= 1 token per step (or follows the top-k
    # schedule), and idles at most once per other row's cache refresh.
    max_iters = max(steps, gen_length) + sched.n_blocks * (batch + 1) + 1
    spec = DecodeSpec(policy=policy, cache=strategy, schedule=sched, temperature=float(temperature), max_iters=max_iters)
    graphdef, params = nnx.split(model)
    plan = sharding_lib.plan_for(params, mesh, rules, getattr(model, "sharding_rules", None))
    run = decode_debug if debug else decode
    if plan is None:
        st = run(graphdef, params, spec, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(ids, jnp.int32),
                 jnp.asarray(seed, jnp.uint32), width)
        st_tokens, nfe, iters, done = jax.device_get((st.tokens, st.nfe, st.iters, st.done))
    else:
        sharding_lib.check_model(cfg, plan.mesh, plan.rules)
        params = sharding_lib.shard_params(params, plan.mesh, plan.rules)
        rows = sharding_lib.process_rows(batch, plan.mesh, plan.rules)
        glob = functools.partial(sharding_lib.global_batch_array, mesh=plan.mesh, rules=plan.rules, global_rows=batch)
        with jax.set_mesh(plan.mesh):  # overrides a surrounding Explicit-axes mesh with its Auto twin
            st = run(graphdef, params, dataclasses.replace(spec, sharding=plan), glob(tokens[rows]),
                     glob(valid[rows]), glob(ids.astype(np.int32)[rows]), np.uint32(seed), width)
        st_tokens, nfe, iters, done = (sharding_lib.to_host(x) for x in (st.tokens, st.nfe, st.iters, st.done))
    if not np.all(done):
        raise RuntimeError(f"decoding stopped at the iteration bound {max_iters} with unfinished rows: policy bug")
    return GenerateOutput(tokens=np.asarray(st_tokens[:, width:]), nfe=np.asarray(nfe), iterations=int(iters))
