"""Prompts and small utilities shared by the parity tests."""

from __future__ import annotations

import numpy as np

FAMILIES = ("llada", "dream")
PROMPT_VOCAB = 60  # prompt tokens in [0, 60): never the mask (63), eos (62) or pad (61) id


# The seeds below were picked so that every reference decision of the parity cases is far from a tie (see
# Diagnostics.assert_well_conditioned and test_reference.py::test_parity_inputs_are_well_conditioned...): a float32
# implementation then has to reproduce the float64 reference exactly. Changing the tiny checkpoints or these
# prompts requires re-checking that test.


def make_prompt(seed: int, length: int) -> list[int]:
    rng = np.random.default_rng(1000 + seed)
    return [int(t) for t in rng.integers(0, PROMPT_VOCAB, size=length)]


# sampler parity: one prompt length for every configuration
SAMPLER_PROMPT = make_prompt(21, 7)
# (gen_length, block_length, steps): one block; steps < gen_length; steps > gen_length (early exit);
# three blocks; uneven quotas (16 tokens in 5 steps: 4, 3, 3, 3, 3)
SAMPLER_CONFIGS = [(16, 16, 16), (16, 8, 8), (16, 8, 32), (24, 8, 12), (16, 16, 5)]

# Fast-dLLM matrix: two prompts of the same length decoded in one call (no padding)
FAST_PROMPTS = [make_prompt(44, 7), make_prompt(18, 7)]
FAST_GEN, FAST_BLOCK, FAST_TOPK_STEPS = 24, 8, 12

# batch invariance: prompts of different lengths, left-padded in one batch
BATCH_PROMPTS = [make_prompt(32, 4), make_prompt(44, 7), make_prompt(38, 11)]
BATCH_GEN, BATCH_BLOCK, BATCH_TOPK_STEPS = 16, 8, 8

# commit rules: name -> generate kwargs (steps filled in by the test)
RULES = {
    "topk": dict(threshold=None, factor=None),
    "thr0.9": dict(threshold=0.9),
    "thr0.7": dict(threshold=0.7),
    "factor_quirk": dict(factor=1.0, factor_quirk=True),
    "factor_intended": dict(factor=1.0, factor_quirk=False),
}


def rule_steps(rule: str, gen_length: int, block_length: int, topk_steps: int) -> int:
    """Top-k uses the given steps; threshold / factor rules pass steps = #blocks, as Fast-dLLM's scripts do
    (steps is irrelevant to them)."""
    return topk_steps if rule == "topk" else gen_length // block_length


def ref_kwargs(rule: str) -> dict:
    kw = dict(RULES[rule])
    kw.setdefault("threshold", None)
    kw.setdefault("factor", None)
    return kw
