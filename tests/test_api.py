"""Input validation, the single compiled program, and the debug twin."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdllm
from jdllm.decode import loop
from jdllm.decode.policies import Threshold
from jdllm.models import ModelConfig, Transformer


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(family="llada", vocab_size=48, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4,
                      mlp_hidden_size=64, max_seq_len=40, mask_id=47, eos_id=46, pad_id=45)
    return Transformer(cfg, rngs=nnx.Rngs(3))


@pytest.mark.parametrize(
    "kwargs, prompts, match",
    [
        (dict(gen_length=16, block_length=6, steps=16), [[1, 2]], "not divisible by block_length"),
        (dict(gen_length=16, block_length=8, steps=9), [[1, 2]], "not a positive multiple of the block count"),
        (dict(gen_length=16, block_length=8, steps=16), [[1, 47, 2]], "contains the mask id 47"),
        (dict(gen_length=16, block_length=8, steps=16), [[1, 2], []], "prompt 1 is empty"),
        (dict(gen_length=16, block_length=8, steps=16), [], "non-empty"),
        (dict(gen_length=32, block_length=8, steps=32), [list(range(1, 10))], "exceeds the model's maximum length 40"),
        (dict(gen_length=16, block_length=8, steps=16), [[1, 99]], "outside the vocabulary"),
        (dict(gen_length=16, block_length=8, steps=16, threshold=0.9, factor=1.0), [[1]], "only one of threshold, factor or alg"),
        (dict(gen_length=16, block_length=8, steps=16, alg="entropy"), [[1]], "block_length must equal"),
        (dict(gen_length=16, block_length=8, steps=16, cache="dual", cfg_scale=1.0), [[1]], "cache=None only"),
        (dict(gen_length=16, block_length=8, steps=16, cache="paged"), [[1]], "cache must be"),
        (dict(gen_length=16, block_length=8, steps=16, threshold=1.5), [[1]], "threshold must lie"),
        (dict(gen_length=16, block_length=8, steps=16, temperature=-1.0), [[1]], "temperature"),
    ],
)
def test_clear_value_errors(tiny, kwargs, prompts, match):
    with pytest.raises(ValueError, match=match):
        jdllm.generate(tiny, prompts, **kwargs)


def test_second_call_same_shapes_does_not_recompile(tiny):
    kw = dict(gen_length=16, block_length=8, steps=16, threshold=0.5, cache="dual")
    jdllm.generate(tiny, [[1, 2, 3], [4, 5]], **kw)
    size = loop.decode._cache_size()
    out = jdllm.generate(tiny, [[6, 7, 8], [9, 10, 11]], seed=5, **kw)
    assert loop.decode._cache_size() == size
    assert out.tokens.shape == (2, 16)


@dataclasses.dataclass(frozen=True)
class CountingThreshold(Threshold):
    """Threshold that records each time its Python `select` runs (i.e. each trace, never each step)."""

    calls: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def select(self, proposal, candidates, ctx, state):
        self.calls.append(1)
        return super().select(proposal, candidates, ctx, state)


def test_loop_never_returns_to_python(tiny):
    policy = CountingThreshold(tau=0.99)
    out = jdllm.generate(tiny, [[1, 2, 3]], gen_length=16, block_length=8, steps=16, policy=policy, prompt_length=7)
    assert int(out.nfe[0]) >= 4  # several denoising steps ran ...
    assert len(policy.calls) == 1  # ... from a single trace of the step body
    graphdef, params = nnx.split(tiny)
    spec = loop.DecodeSpec(policy=Threshold(0.9), cache=jdllm.api.make_cache(None, 0.0, None),
                           schedule=jdllm.api.SemiAutoregressive(16, 8))
    tokens = np.full((1, 19), 47, np.int32)
    tokens[0, :3] = [1, 2, 3]
    jaxpr = jax.make_jaxpr(lambda p, t: loop.decode(graphdef, p, spec, t, np.ones((1, 19), bool), np.zeros(1, np.int32), 0, 3))(params, tokens)
    text = str(jaxpr)
    assert "while[" in text


@pytest.mark.parametrize("kw", [
    dict(),
    dict(threshold=0.6, cache="prefix"),
    dict(factor=1.0, cache="dual"),
    dict(temperature=0.8, remasking="random"),
])
def test_debug_twin_agrees_with_compiled_loop(tiny, kw):
    prompts = [[1, 2, 3, 4], [5, 6]]
    a = jdllm.generate(tiny, prompts, gen_length=16, block_length=8, steps=8, seed=1, **kw)
    b = jdllm.generate(tiny, prompts, gen_length=16, block_length=8, steps=8, seed=1, debug=True, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.nfe, b.nfe)
    assert a.iterations == b.iterations


def test_row_ids_make_sampling_batch_invariant(tiny):
    kw = dict(gen_length=16, block_length=8, steps=16, temperature=1.0, seed=7)
    alone = jdllm.generate(tiny, [[5, 6, 7]], row_ids=[2], **kw)
    batch = jdllm.generate(tiny, [[1, 2], [3, 4, 5, 6], [5, 6, 7]], **kw)
    np.testing.assert_array_equal(alone.tokens[0], batch.tokens[2])


def test_sampling_changes_with_seed(tiny):
    kw = dict(gen_length=16, block_length=8, steps=16, temperature=5.0)
    a = jdllm.generate(tiny, [[5, 6, 7]], seed=0, **kw)
    b = jdllm.generate(tiny, [[5, 6, 7]], seed=1, **kw)
    assert not np.array_equal(a.tokens, b.tokens)


def test_eos_early_stop_fills_and_saves_forwards():
    cfg = ModelConfig(family="llada", vocab_size=48, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4,
                      mlp_hidden_size=64, max_seq_len=40, mask_id=47, eos_id=0, pad_id=45)
    model = Transformer(cfg, rngs=nnx.Rngs(3))
    model.ff_out.kernel[...] = jnp.zeros_like(model.ff_out.kernel[...])  # flat logits: argmax is token 0 = EOS
    kw = dict(gen_length=32, block_length=8, steps=32)
    plain = jdllm.generate(model, [[1, 2, 3]], **kw)
    early = jdllm.generate(model, [[1, 2, 3]], eos_early_stop=True, **kw)
    assert (plain.tokens == 0).all() and (early.tokens == 0).all()
    assert int(plain.nfe[0]) == 32 and int(early.nfe[0]) == 8


def test_dream_alg_keyword_is_the_dream_policy(tiny):
    from jdllm.decode.policies.dream import DreamAlgorithm

    kw = dict(gen_length=16, steps=8)
    a = jdllm.generate(tiny, [[1, 2, 3]], alg="entropy", **kw)
    b = jdllm.generate(tiny, [[1, 2, 3]], policy=DreamAlgorithm("entropy", steps=8, gen_length=16), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert (a.tokens != 47).all() and int(a.nfe[0]) == 8
