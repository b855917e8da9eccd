"""Every argument of `jdllm.generate` (and so of `jdllm generate` / `jdllm bench`) checked in one place.

`check_generate_args` turns the keywords into the static decode objects (schedule, commit policy, cache
strategy) or raises a TypeError / ValueError that names the argument, the bad value and what is allowed.
Nothing is silently dropped: a keyword that the chosen policy / cache / schedule would ignore is a conflict.
`check_prompts` and `check_row_ids` do the same for the data. All checks run on the host before any trace or
compile, so a bad call costs no device time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from jdllm.decode.cache_registry import CACHE_NAMES
from jdllm.decode.caches import CACHES, CacheStrategy, NoCache
from jdllm.decode.policies import CommitPolicy, Factor, Threshold, TopK
from jdllm.decode.policies.dream import ALGS, DreamAlgorithm
from jdllm.decode.schedules import BlockSchedule, SemiAutoregressive

REMASKING = ("low_confidence", "random", "margin", "entropy")
SEED_LIMIT = 1 << 32     # seeds are uint32 (jax.random.key)
ROW_ID_LIMIT = 1 << 31   # row ids are int32 (folded into the seed's key)


def _type_name(value: Any) -> str:
    return type(value).__name__


def is_int(value: Any) -> bool:
    """A Python or numpy integer; bool is not an int here."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: Any, minimum: int | None = None, below: int | None = None) -> int:
    """`value` as an int in [minimum, below), else TypeError / ValueError naming `name`."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({_type_name(value)})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be < {below}, got {value}")
    return value


def check_real(name: str, value: Any) -> float:
    """`value` as a finite float (ints accepted, bool / str / NaN / inf rejected)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({_type_name(value)})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({_type_name(value)})")
    return bool(value)


def _given(**kwargs) -> list[str]:
    return [k for k, v in kwargs.items() if v is not None]


@dataclasses.dataclass(frozen=True)
class GenerateArgs:
    """The checked, normalised form of `generate`'s keywords."""

    schedule: BlockSchedule
    steps: int
    temperature: float
    policy: CommitPolicy
    cache: CacheStrategy
    seed: int
    prompt_length: int | None
    max_memory: int | None


def check_schedule(gen_length, block_length, eos_early_stop, schedule) -> BlockSchedule:
    gen_length = check_int("gen_length", gen_length, minimum=1)
    if schedule is None:
        block_length = gen_length if block_length is None else check_int("block_length", block_length, minimum=1)
        if gen_length % block_length:
            raise ValueError(f"gen_length={gen_length} is not divisible by block_length={block_length}")
        early = False if eos_early_stop is None else check_bool("eos_early_stop", eos_early_stop)
        return SemiAutoregressive(gen_length, block_length, eos_early_stop=early)
    if not isinstance(schedule, BlockSchedule):
        raise TypeError(f"schedule must be a BlockSchedule (jdllm.decode.schedules), got {_type_name(schedule)}")
    if schedule.gen_length != gen_length:
        raise ValueError(f"schedule.gen_length={schedule.gen_length} differs from gen_length={gen_length}")
    if block_length is not None and block_length != schedule.block_length:
        raise ValueError(f"block_length={block_length!r} conflicts with schedule.block_length={schedule.block_length}: "
                         "give one of them")
    if eos_early_stop is not None and eos_early_stop != schedule.eos_early_stop:
        raise ValueError(f"eos_early_stop={eos_early_stop!r} conflicts with schedule.eos_early_stop="
                         f"{schedule.eos_early_stop}: give one of them")
    return schedule


def make_policy(steps, block_length, n_blocks, remasking, threshold, factor, factor_quirk, alg=None,
                alg_temp=0.0, eps=1e-3, gen_length=None) -> CommitPolicy:
    """The commit policy named by LLaDA / Fast-dLLM / Dream keywords (values already checked)."""
    if len(_given(threshold=threshold, factor=factor, alg=alg)) > 1:
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


def check_policy(steps, sched: BlockSchedule, remasking, threshold, factor, factor_quirk, alg, alg_temp, eps,
                 policy) -> tuple[CommitPolicy, int]:
    """(commit policy, steps). Keywords a chosen rule would ignore raise instead."""
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    rules = _given(threshold=threshold, factor=factor, alg=alg)
    if policy is not None:
        if not isinstance(policy, CommitPolicy):
            raise TypeError(f"policy must be a CommitPolicy (jdllm.decode.policies), got {_type_name(policy)}")
        extra = rules + _given(factor_quirk=factor_quirk, alg_temp=alg_temp, eps=eps)
        if remasking != "low_confidence":
            extra.append("remasking")
        if extra:
            raise ValueError(f"policy= already chooses the commit rule; {', '.join(extra)} would be ignored: "
                             "drop them or drop policy=")
        return policy, _policy_steps(steps, sched, policy)
    if len(rules) > 1:
        raise ValueError(f"give only one of threshold, factor or alg, got {' and '.join(rules)}")
    if rules and remasking != "low_confidence":
        raise ValueError(f"remasking={remasking!r} is ignored by {rules[0]}= (it scores by confidence): "
                         "drop one of them")
    if factor_quirk is not None and factor is None:
        raise ValueError("factor_quirk is only used with factor=")
    if alg is None and (alg_temp is not None or eps is not None):
        raise ValueError(f"{' and '.join(_given(alg_temp=alg_temp, eps=eps))} only used with alg= (Dream's sampler)")
    steps = sched.gen_length if steps is None else check_int("steps", steps, minimum=1)
    _check_steps(steps, sched)
    if threshold is not None:
        threshold = check_real("threshold", threshold)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    if factor is not None:
        factor = check_real("factor", factor)
        if factor <= 0:
            raise ValueError(f"factor must be > 0, got {factor}")
    quirk = True if factor_quirk is None else check_bool("factor_quirk", factor_quirk)
    if alg is not None:
        if alg not in ALGS:
            raise ValueError(f"alg must be one of {ALGS}, got {alg!r}")
        alg_temp = 0.0 if alg_temp is None else check_real("alg_temp", alg_temp)
        if alg_temp < 0:
            raise ValueError(f"alg_temp must be >= 0, got {alg_temp}")
        eps = 1e-3 if eps is None else check_real("eps", eps)
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
    policy = make_policy(steps, sched.block_length, sched.n_blocks, remasking, threshold, factor, quirk, alg,
                         alg_temp, eps, sched.gen_length)
    return policy, steps


def _check_steps(steps: int, sched: BlockSchedule) -> None:
    sched.check_steps(steps)


def _policy_steps(steps, sched: BlockSchedule, policy: CommitPolicy) -> int:
    """Steps of a policy= call: the policy's own `steps` (Dream) when not given; shapes the policy was built for
    (`gen_length`, `block_length`) must be the call's."""
    own = getattr(policy, "steps", None)
    steps = (own or sched.gen_length) if steps is None else check_int("steps", steps, minimum=1)
    if own is not None and own != steps:
        raise ValueError(f"steps={steps} conflicts with policy.steps={own}")
    for name, want in (("gen_length", sched.gen_length), ("block_length", sched.block_length)):
        have = getattr(policy, name, None)
        if have is not None and have != want:
            raise ValueError(f"policy.{name}={have} differs from the call's {name}={want}")
    _check_steps(steps, sched)
    return steps


def check_cache(cache, cfg_scale, refresh_every) -> CacheStrategy:
    """The cache strategy; cfg_scale needs cache=None; a name of the registry (`jdllm.decode.cache_registry`)
    builds its strategy from the keywords (`CacheStrategy.from_keywords`: refresh_every for prefix / dual)."""
    cfg_scale = 0.0 if cfg_scale is None else check_real("cfg_scale", cfg_scale)
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    if refresh_every is not None:
        refresh_every = check_int("refresh_every", refresh_every, minimum=1)
    if isinstance(cache, CacheStrategy):
        if refresh_every is not None:
            raise ValueError("refresh_every= with a cache object: set it on the object "
                             "(e.g. PrefixCache(refresh_every=...))")
        if cfg_scale > 0 and not (isinstance(cache, NoCache) and cache.cfg_scale == cfg_scale):
            raise ValueError("classifier-free guidance (cfg_scale > 0) is supported with cache=None only")
        return cache
    if cache is not None and (not isinstance(cache, str) or cache not in CACHE_NAMES):
        names = ", ".join(repr(n) for n in CACHE_NAMES if n != "none")
        raise ValueError(f"cache must be None, {names}, 'none' or a CacheStrategy, got {cache!r}")
    if cache is None or cache == "none":
        if refresh_every is not None:
            raise ValueError("refresh_every needs cache='prefix' or 'dual' (there is no cache to refresh)")
        return NoCache(cfg_scale=cfg_scale)
    if cfg_scale > 0:
        raise ValueError("classifier-free guidance (cfg_scale > 0) is supported with cache=None only")
    return CACHES[cache].from_keywords(refresh_every=refresh_every)


def check_generate_args(*, gen_length, block_length=None, steps=None, temperature=0.0, remasking="low_confidence",
                        cfg_scale=0.0, threshold=None, factor=None, factor_quirk=None, alg=None, alg_temp=None,
                        eps=None, cache=None, refresh_every=None, eos_early_stop=None, policy=None, schedule=None,
                        seed=0, prompt_length=None, debug=False, max_memory=None) -> GenerateArgs:
    """Check and normalise `generate`'s keywords (see `jdllm.generate` for their meaning)."""
    sched = check_schedule(gen_length, block_length, eos_early_stop, schedule)
    temperature = check_real("temperature", temperature)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    policy, steps = check_policy(steps, sched, remasking, threshold, factor, factor_quirk, alg, alg_temp, eps, policy)
    strategy = check_cache(cache, cfg_scale, refresh_every)
    seed = check_int("seed", seed, minimum=0, below=SEED_LIMIT)
    if prompt_length is not None:
        prompt_length = check_int("prompt_length", prompt_length, minimum=1)
    check_bool("debug", debug)
    if max_memory is not None:
        max_memory = check_int("max_memory", max_memory, minimum=1)
    return GenerateArgs(schedule=sched, steps=steps, temperature=temperature, policy=policy, cache=strategy,
                        seed=seed, prompt_length=prompt_length, max_memory=max_memory)


def _check_token_row(i: int, row: Any) -> list[int]:
    if isinstance(row, (np.ndarray,)) or hasattr(row, "__array__") and not isinstance(row, (list, tuple)):
        arr = np.asarray(row)
        if arr.ndim != 1:
            raise ValueError(f"prompt {i} must be a 1-d list of token ids, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"prompt {i} must hold int token ids, got dtype {arr.dtype}")
        return arr.astype(np.int64).tolist()
    if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
        raise TypeError(f"prompt {i} must be a list of int token ids, got {_type_name(row)}: tokenize text first")
    for j, t in enumerate(row):
        if not is_int(t):
            raise TypeError(f"prompt {i} token {j} is {t!r} ({_type_name(t)}): token ids must be ints")
    return [int(t) for t in row]


def check_prompts(prompts, cfg) -> list[list[int]]:
    """Prompts as lists of int token ids: a [B, L] / [L] integer array, a list of int lists (ragged allowed) or
    one list of ints. Rejects bool / float / str tokens (naming prompt and position), empty prompts, the mask
    id and ids outside the vocabulary."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError("prompts must be token ids, got a string: tokenize it first (e.g. bundle.encode_prompt)")
    if hasattr(prompts, "__array__") and not isinstance(prompts, (list, tuple)):
        arr = np.asarray(prompts)
        if arr.ndim not in (1, 2):
            raise ValueError(f"prompt array must be [B, L], got shape {arr.shape}")
        rows = [_check_token_row(i, r) for i, r in enumerate(arr[None] if arr.ndim == 1 else arr)]
    elif not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of token lists or a [B, L] int array, got {_type_name(prompts)}")
    elif len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token lists or a [B, L] int array")
    elif all(is_int(t) for t in prompts):
        rows = [[int(t) for t in prompts]]
    else:
        rows = [_check_token_row(i, r) for i, r in enumerate(prompts)]
    if not rows:
        raise ValueError("prompts must be a non-empty list of token lists or a [B, L] int array")
    for i, p in enumerate(rows):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if cfg.mask_id in p:
            raise ValueError(f"prompt {i} contains the mask id {cfg.mask_id} at position {p.index(cfg.mask_id)}")
        bad = [t for t in p if not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token id {bad[0]} outside the vocabulary of {cfg.vocab_size}")
    return rows


def check_prompt_buckets(buckets) -> tuple[int, ...] | None:
    """`prompt_buckets`: None / empty (exact widths) or a sequence of positive ints."""
    if buckets is None:
        return None
    if isinstance(buckets, (str, bytes)) or not hasattr(buckets, "__iter__"):
        raise TypeError(f"prompt_buckets must be None or a sequence of ints, got {_type_name(buckets)}")
    return tuple(check_int(f"prompt_buckets[{i}]", b, minimum=1) for i, b in enumerate(buckets))


def check_row_ids(row_ids, batch: int) -> np.ndarray:
    """One distinct int id in [0, 2**31) per prompt (default 0..B-1), as int32."""
    if row_ids is None:
        return np.arange(batch, dtype=np.int32)
    if isinstance(row_ids, (str, bytes)):
        raise TypeError(f"row_ids must be a list of ints, got {row_ids!r}")
    ids = list(np.asarray(row_ids).ravel()) if hasattr(row_ids, "__array__") else list(row_ids)
    if np.ndim(row_ids) != 1 or len(ids) != batch:
        raise ValueError(f"row_ids must have one id per prompt ({batch}), got shape {np.shape(row_ids)}")
    for j, r in enumerate(ids):
        check_int(f"row_ids[{j}]", r, minimum=0, below=ROW_ID_LIMIT)
    if len(set(map(int, ids))) != batch:
        dup = next(int(r) for j, r in enumerate(ids) if int(r) in set(map(int, ids[:j])))
        raise ValueError(f"row_ids must be distinct (they name the rows' random streams), {dup} appears twice")
    return np.asarray([int(r) for r in ids], np.int32)
