"""Tests written to kill surviving mutants of scripts/mutate.py (see benchmarks/results/mutation/): each one pins
a behaviour that no other fast test checked. Cheap: no model, few compiles."""

from __future__ import annotations

import pytest

from jdllm.decode.caches.block_kv import DualCache, PrefixCache


@pytest.mark.parametrize("cache", [PrefixCache, DualCache])
def test_refresh_every_accepts_one_and_more_and_refuses_less(cache):
    for ok in (None, 1, 2, 7):
        assert cache(refresh_every=ok).refresh_every == ok
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"refresh_every must be >= 1 or None, got {bad}"):
            cache(refresh_every=bad)
