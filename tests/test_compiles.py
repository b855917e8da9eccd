"""Prompt-length buckets: a stream of prompts of many lengths compiles a handful of decode programs, and the
bucketed canvas gives the tokens of the exact width (issue 13)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jdllm
from jdllm.shipped import load_bundle
from jdllm.decode.buckets import bucket_width

_COMPILES: list[str] = []
_LISTENING = [False]


def _on_event(name, duration, **kw):
    if _LISTENING[0] and name == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(kw.get("fun_name", ""))


jax.monitoring.register_event_duration_secs_listener(_on_event)


@pytest.fixture(scope="module")
def shipped():
    return load_bundle("arith-llada-tiny").model


def _prompts(cfg, lengths, seed=0):
    rng = np.random.default_rng(seed)
    ids = [t for t in range(cfg.vocab_size) if t not in (cfg.mask_id, cfg.eos_id)]
    return [list(rng.choice(ids, size=n)) for n in lengths]


def test_twelve_prompt_lengths_compile_at_most_twice_after_warm_up(shipped):
    lengths = [5, 13, 21, 30, 38, 47, 55, 66, 79, 91, 104, 120]
    prompts = _prompts(shipped.config, [9] + lengths)
    kw = dict(gen_length=32, block_length=32, steps=32)
    jdllm.generate(shipped, [prompts[0]], **kw)  # warm-up
    _COMPILES.clear()
    _LISTENING[0] = True
    try:
        for p in prompts[1:]:
            jdllm.generate(shipped, [p], **kw)
    finally:
        _LISTENING[0] = False
    decode_compiles = [n for n in _COMPILES if n == "jit(decode)"]
    assert len(decode_compiles) <= 2, f"{len(decode_compiles)} decode compiles for 12 prompt lengths: {_COMPILES}"


def test_bucketed_tokens_equal_exact_width(shipped):
    prompts = _prompts(shipped.config, [7, 23], seed=1)
    kw = dict(gen_length=32, block_length=16, steps=16, threshold=0.9, cache="dual")
    bucketed = jdllm.generate(shipped, prompts, **kw)
    exact = jdllm.generate(shipped, prompts, prompt_buckets=None, **kw)
    np.testing.assert_array_equal(bucketed.tokens, exact.tokens)
    np.testing.assert_array_equal(bucketed.nfe, exact.nfe)


@pytest.mark.parametrize("longest,buckets,max_width,want", [
    (1, (64, 128), None, 64), (64, (64, 128), None, 64), (65, (64, 128), None, 128),
    (129, (64, 128), None, 256), (600, None, None, 600), (600, (), None, 600),
    (100, (64, 128), 110, 110), (120, (64, 128), 110, 120),
])
def test_bucket_width(longest, buckets, max_width, want):
    assert bucket_width(longest, buckets, max_width) == want
