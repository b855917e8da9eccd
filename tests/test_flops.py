"""The bench's analytic FLOP model against XLA's own count of the compiled forward (an independent reference)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jdllm.bench.flops import forward_flops, row_flops, step_flops
from jdllm.decode.caches import DualCache, NoCache, PrefixCache


def _xla_flops(model, length: int) -> float:
    graphdef, params = nnx.split(model)

    def fwd(params, tokens):
        m = nnx.merge(graphdef, params)
        hidden, _ = m.layers(tokens, jnp.arange(length)[None], jnp.ones((1, length), bool))
        return m.head(hidden)

    tokens = jnp.zeros((1, length), jnp.int32)
    cost = jax.jit(fwd).lower(params, tokens).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_full_forward_flops_match_xla_count(jd_models, family):
    model = jd_models[family]
    length = 48
    want = _xla_flops(model, length)
    got = forward_flops(model.config, length, length, length)
    # XLA also counts norms, RoPE, softmax and SiLU (a few % on a tiny model); the matmuls must dominate both.
    assert 0.85 * want <= got <= 1.05 * want, (got, want)


def test_cached_steps_cost_less_and_rows_add_up(jd_models):
    cfg = jd_models["llada"].config
    full, dual = step_flops(cfg, DualCache(), 80, 16, 16)
    _, prefix = step_flops(cfg, PrefixCache(), 80, 16, 16)
    assert dual < prefix < full
    assert step_flops(cfg, NoCache(cfg_scale=1.0), 80, 16, 16)[0] == 2 * step_flops(cfg, NoCache(), 80, 16, 16)[0]
    # 4 blocks, 10 forwards: 4 full + 6 cached
    assert row_flops(cfg, DualCache(), 10, 4, 80, 16, 16) == 4 * full + 6 * dual
    assert row_flops(cfg, NoCache(), 10, 4, 80, 16, 16) == 10 * full
