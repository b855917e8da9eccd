"""Every bad input of issue 16's probe gets a clear error naming what is wrong, before any compile, with nothing
written; non-finite logits are reported as such; the memory plan splits or refuses a batch before allocating."""

import math
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdllm
from jdllm.cli import main
from jdllm.decode import loop
from jdllm.decode.caches import NoCache, PrefixCache
from jdllm.decode.memory import MemoryPlanError, estimate_bytes
from jdllm.decode.policies import DreamAlgorithm, Threshold, TopK
from jdllm.decode.schedules import SemiAutoregressive
from jdllm.models import ModelConfig, Transformer

MASK = 47


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(family="llada", vocab_size=48, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4,
                      mlp_hidden_size=64, max_seq_len=40, mask_id=MASK, eos_id=46, pad_id=45)
    return Transformer(cfg, rngs=nnx.Rngs(3))


BASE = dict(gen_length=16, block_length=8, steps=16)
P = [[1, 2], [3, 4, 5]]

# (id, extra kwargs (None value: drop the BASE key), prompts, exception, message pattern)
GENERATE_CASES = [
    ("gen_length 0", dict(gen_length=0), P, ValueError, "gen_length must be >= 1, got 0"),
    ("gen_length negative", dict(gen_length=-16), P, ValueError, "gen_length must be >= 1"),
    ("gen_length float", dict(gen_length=16.0), P, TypeError, r"gen_length must be an int, got 16.0 \(float\)"),
    ("gen_length bool", dict(gen_length=True), P, TypeError, "gen_length must be an int"),
    ("block not dividing", dict(block_length=6), P, ValueError, "gen_length=16 is not divisible by block_length=6"),
    ("block 0", dict(block_length=0), P, ValueError, "block_length must be >= 1"),
    ("block float", dict(block_length=8.0), P, TypeError, "block_length must be an int"),
    ("steps not multiple", dict(steps=9), P, ValueError, "steps=9 is not a positive multiple of the block count 2"),
    ("steps 0", dict(steps=0), P, ValueError, "steps must be >= 1"),
    ("steps float", dict(steps=16.5), P, TypeError, "steps must be an int"),
    ("temperature nan", dict(temperature=math.nan), P, ValueError, "temperature must be finite, got nan"),
    ("temperature inf", dict(temperature=math.inf), P, ValueError, "temperature must be finite"),
    ("temperature negative", dict(temperature=-1.0), P, ValueError, "temperature must be >= 0"),
    ("temperature str", dict(temperature="0.5"), P, TypeError, "temperature must be a number"),
    ("remasking unknown", dict(remasking="lowest"), P, ValueError, "remasking must be one of"),
    ("remasking with threshold", dict(remasking="random", threshold=0.9), P, ValueError,
     "remasking='random' is ignored by threshold="),
    ("remasking with factor", dict(remasking="margin", factor=1.0), P, ValueError, "remasking='margin' is ignored by factor="),
    ("cfg nan", dict(cfg_scale=math.nan), P, ValueError, "cfg_scale must be finite"),
    ("cfg negative", dict(cfg_scale=-1.0), P, ValueError, "cfg_scale must be >= 0"),
    ("cfg with cache", dict(cfg_scale=1.0, cache="dual"), P, ValueError, "cache=None only"),
    ("cfg vs NoCache object", dict(cfg_scale=1.0, cache=NoCache(cfg_scale=2.0)), P, ValueError, "cache=None only"),
    ("threshold above 1", dict(threshold=1.5), P, ValueError, r"threshold must lie in \(0, 1\], got 1.5"),
    ("threshold 0", dict(threshold=0.0), P, ValueError, r"threshold must lie in \(0, 1\]"),
    ("threshold nan", dict(threshold=math.nan), P, ValueError, "threshold must be finite"),
    ("threshold str", dict(threshold="0.9"), P, TypeError, "threshold must be a number"),
    ("factor 0", dict(factor=0.0), P, ValueError, "factor must be > 0"),
    ("factor negative", dict(factor=-1.0), P, ValueError, "factor must be > 0"),
    ("factor nan", dict(factor=math.nan), P, ValueError, "factor must be finite"),
    ("threshold and factor", dict(threshold=0.9, factor=1.0), P, ValueError, "only one of threshold, factor or alg"),
    ("factor_quirk alone", dict(factor_quirk=False), P, ValueError, "factor_quirk is only used with factor="),
    ("factor_quirk str", dict(factor=1.0, factor_quirk="yes"), P, TypeError, "factor_quirk must be True or False"),
    ("alg unknown", dict(alg="bogus", block_length=None), P, ValueError, "alg must be one of"),
    ("alg with blocks", dict(alg="entropy"), P, ValueError, "block_length must equal"),
    ("alg_temp without alg", dict(alg_temp=0.5), P, ValueError, "alg_temp only used with alg="),
    ("eps without alg", dict(eps=0.5), P, ValueError, "eps only used with alg="),
    ("eps 0", dict(alg="entropy", eps=0.0, block_length=None), P, ValueError, r"eps must lie in \(0, 1\)"),
    ("eps above 1", dict(alg="entropy", eps=1.5, block_length=None), P, ValueError, r"eps must lie in \(0, 1\)"),
    ("alg_temp negative", dict(alg="entropy", alg_temp=-1.0, block_length=None), P, ValueError, "alg_temp must be >= 0"),
    ("cache unknown", dict(cache="paged"), P, ValueError, "cache must be None, 'prefix', 'dual'"),
    ("cache int", dict(cache=3), P, ValueError, "cache must be None"),
    ("refresh without cache", dict(refresh_every=2), P, ValueError, "refresh_every needs cache='prefix' or 'dual'"),
    ("refresh 0", dict(refresh_every=0, cache="prefix"), P, ValueError, "refresh_every must be >= 1"),
    ("refresh float", dict(refresh_every=2.0, cache="prefix"), P, TypeError, "refresh_every must be an int"),
    ("refresh with cache object", dict(refresh_every=2, cache=PrefixCache()), P, ValueError, "set it on the object"),
    ("policy and threshold", dict(policy=Threshold(0.9), threshold=0.8), P, ValueError,
     "policy= already chooses the commit rule; threshold would be ignored"),
    ("policy and factor", dict(policy=Threshold(0.9), factor=1.0), P, ValueError, "factor would be ignored"),
    ("policy and alg", dict(policy=Threshold(0.9), alg="entropy"), P, ValueError, "alg would be ignored"),
    ("policy and remasking", dict(policy=Threshold(0.9), remasking="random"), P, ValueError, "remasking would be ignored"),
    ("policy not a policy", dict(policy="threshold"), P, TypeError, "policy must be a CommitPolicy"),
    ("policy steps differ", dict(policy=DreamAlgorithm("entropy", 8, 16), block_length=16), P, ValueError,
     "steps=16 conflicts with policy.steps=8"),
    ("policy gen_length differs", dict(policy=DreamAlgorithm("entropy", 16, 32), block_length=16), P, ValueError,
     "policy.gen_length=32 differs from the call's gen_length=16"),
    ("policy block differs", dict(policy=TopK(4, 4)), P, ValueError, "policy.block_length=4 differs"),
    ("schedule gen_length", dict(schedule=SemiAutoregressive(32, 8), block_length=None), P, ValueError,
     "schedule.gen_length=32 differs"),
    ("schedule and block", dict(schedule=SemiAutoregressive(16, 8), block_length=4), P, ValueError,
     "conflicts with schedule.block_length=8"),
    ("schedule and eos stop", dict(schedule=SemiAutoregressive(16, 8), block_length=None, eos_early_stop=True), P,
     ValueError, "conflicts with schedule.eos_early_stop"),
    ("schedule str", dict(schedule="semi_ar", block_length=None), P, TypeError, "schedule must be a BlockSchedule"),
    ("seed negative", dict(seed=-1), P, ValueError, "seed must be >= 0, got -1"),
    ("seed 2**32", dict(seed=2**32), P, ValueError, "seed must be < 4294967296"),
    ("seed None", dict(seed=None), P, TypeError, "seed must be an int, got None"),
    ("seed float", dict(seed=1.5), P, TypeError, "seed must be an int"),
    ("seed bool", dict(seed=True), P, TypeError, "seed must be an int"),
    ("prompt_length 0", dict(prompt_length=0), P, ValueError, "prompt_length must be >= 1"),
    ("prompt_length short", dict(prompt_length=2), P, ValueError, "a prompt has 3 tokens, more than prompt_length=2"),
    ("prompt_length float", dict(prompt_length=4.0), P, TypeError, "prompt_length must be an int"),
    ("row_ids duplicate", dict(row_ids=[3, 3]), P, ValueError, "row_ids must be distinct.*3 appears twice"),
    ("row_ids short", dict(row_ids=[0]), P, ValueError, r"one id per prompt \(2\)"),
    ("row_ids negative", dict(row_ids=[0, -1]), P, ValueError, r"row_ids\[1\] must be >= 0"),
    ("row_ids float", dict(row_ids=[0, 1.5]), P, TypeError, r"row_ids\[1\] must be an int"),
    ("row_ids too big", dict(row_ids=[0, 2**31]), P, ValueError, r"row_ids\[1\] must be < 2147483648"),
    ("debug str", dict(debug="yes"), P, TypeError, "debug must be True or False"),
    ("eos_early_stop str", dict(eos_early_stop="yes"), P, TypeError, "eos_early_stop must be True or False"),
    ("max_memory 0", dict(max_memory=0), P, ValueError, "max_memory must be >= 1"),
    ("max_memory float", dict(max_memory=1e9), P, TypeError, "max_memory must be an int"),
    ("too long", dict(gen_length=32, block_length=8, steps=32), [list(range(1, 10))], ValueError,
     "exceeds the model's maximum length 40"),
    # prompts
    ("float token", {}, [[1, 1.9]], TypeError, r"prompt 0 token 1 is 1.9 \(float\): token ids must be ints"),
    ("bool token", {}, [[1, 2], [3, True]], TypeError, "prompt 1 token 1 is True"),
    ("str token", {}, [["a"]], TypeError, "prompt 0 token 0 is 'a'"),
    ("text prompt", {}, "hello", TypeError, "tokenize it first"),
    ("text row", {}, [[1, 2], "ab"], TypeError, "prompt 1 must be a list of int token ids, got str"),
    ("float array", {}, np.array([[1.0, 2.0]]), TypeError, "prompt 0 must hold int token ids, got dtype float64"),
    ("bool array", {}, np.array([[True, False]]), TypeError, "got dtype bool"),
    ("3-d array", {}, np.ones((1, 2, 3), np.int32), ValueError, r"must be \[B, L\]"),
    ("int prompt", {}, 5, TypeError, "prompts must be a list"),
    ("no prompts", {}, [], ValueError, "non-empty"),
    ("empty prompt", {}, [[1], []], ValueError, "prompt 1 is empty"),
    ("mask id", {}, [[1, MASK]], ValueError, "prompt 0 contains the mask id 47 at position 1"),
    ("id above vocab", {}, [[1, 99]], ValueError, "token id 99 outside the vocabulary of 48"),
    ("negative id", {}, [[1, -1]], ValueError, "token id -1 outside the vocabulary"),
    ("huge id", {}, [[1, 2**40]], ValueError, "outside the vocabulary"),
]


@pytest.mark.parametrize("extra, prompts, exc, match", [c[1:] for c in GENERATE_CASES],
                         ids=[c[0] for c in GENERATE_CASES])
def test_bad_generate_argument_raises_before_compiling(tiny, extra, prompts, exc, match):
    kw = {k: v for k, v in {**BASE, **extra}.items() if not (v is None and k in BASE)}  # None: drop a BASE key
    compiled = loop.decode._cache_size()
    with pytest.raises(exc, match=match):
        jdllm.generate(tiny, prompts, **kw)
    assert loop.decode._cache_size() == compiled  # raised before tracing / compiling anything


@pytest.mark.parametrize("tokens", [[[1.9, 2.0]], [[True, False]], np.ones((1, 2), np.float32)])
def test_forward_rejects_non_int_tokens(tiny, tokens):
    with pytest.raises(TypeError, match="tokens must hold int token ids, got dtype"):
        jdllm.forward(tiny, tokens)


def test_good_inputs_of_every_accepted_type_give_the_same_tokens(tiny):
    """numpy / jax int arrays, numpy ints and Python ints are all accepted (and mean the same prompt)."""
    want = jdllm.generate(tiny, [[1, 2, 3]], **BASE).tokens
    for prompts in (np.array([[1, 2, 3]], np.int64), jnp.asarray([1, 2, 3], jnp.int32), [np.int16(1), 2, 3],
                    [np.array([1, 2, 3], np.uint8)]):
        np.testing.assert_array_equal(jdllm.generate(tiny, prompts, seed=np.uint32(0), **BASE).tokens, want)


# ----------------------------------------------------------------------------------------------------------
# CLI and bench: exit 2, one line on stderr, nothing on stdout, nothing written

CLI_CASES = [
    (["generate", "1+1", "--gen-length", "0"], "argument --gen-length: must be >= 1, got 0"),
    (["generate", "1+1", "--gen-length", "-5"], "argument --gen-length: must be >= 1"),
    (["generate", "1+1", "--gen-length", "1.5"], "argument --gen-length: invalid positive_int value"),
    (["generate", "1+1", "--block-length", "0"], "argument --block-length: must be >= 1"),
    (["generate", "1+1", "--steps", "0"], "argument --steps: must be >= 1"),
    (["generate", "1+1", "--temperature", "nan"], "argument --temperature: must be a finite number"),
    (["generate", "1+1", "--threshold", "inf"], "argument --threshold: must be a finite number"),
    (["generate", "1+1", "--seed", "-1"], r"argument --seed: must lie in \[0, 2\*\*32\)"),
    (["generate", "1+1", "--seed", "4294967296"], "argument --seed: must lie in"),
    (["generate", "1+1", "--threshold", "1.5"], r"threshold must lie in \(0, 1\]"),
    (["generate", "1+1", "--gen-length", "32", "--block-length", "5"], "not divisible by block_length=5"),
    (["generate", "1+1", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["generate", "1+1", "--recipe", "d2f"], "cache='exact' needs a block-causal model"),
    (["generate", "1+1", "--model", "/nonexistent/model"], "no model directory at /nonexistent/model"),
    (["bench", "--n", "0"], "argument --n: must be >= 1, got 0"),
    (["bench", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["bench", "--batch-size", "-3"], "argument --batch-size: must be >= 1"),
    (["bench", "--repeats", "0"], "argument --repeats: must be >= 1"),
    (["bench", "--gen-length", "0"], "argument --gen-length: must be >= 1"),
    (["bench", "--recipes", ""], "--recipes names no recipe"),
    (["bench", "--recipes", " , "], "--recipes names no recipe"),
    (["bench", "--recipes", "vanilla,,fast_dllm_parallel"], "empty name between commas"),
    (["bench", "--recipes", "vanilla,nope"], "unknown recipe 'nope' in --recipes"),
    (["bench", "--recipes", "vanilla,vanilla"], "'vanilla' appears twice"),
    (["bench", "--recipes", "vanilla", "--gen-length", "48"], "recipe 'vanilla' at gen_length 48: .*not divisible"),
    (["bench", "--out", "{tmp}/missing/report.json"], "--out .*missing/report.json: directory .* does not exist"),
    (["bench", "--plot", "{tmp}/missing/pareto.png"], "--plot .*: directory .* does not exist"),
    (["bench", "--out", "{tmp}"], "is a directory"),
]


@pytest.mark.parametrize("argv, match", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_bad_cli_argument_is_one_line_and_writes_nothing(tmp_path, capsys, argv, match):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "bench":
        argv += ["--no-progress"]
    compiled = loop.decode._cache_size()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"jdllm {argv[0]}: error: "), err
    assert re.search(match, lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert loop.decode._cache_size() == compiled  # refused before any compile


# ----------------------------------------------------------------------------------------------------------
# non-finite logits


def test_nan_weights_are_reported_as_non_finite_logits_not_a_policy_bug():
    cfg = ModelConfig(family="llada", vocab_size=48, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4,
                      mlp_hidden_size=64, max_seq_len=40, mask_id=MASK, eos_id=46, pad_id=45)
    model = Transformer(cfg, rngs=nnx.Rngs(3))
    model.wte[...] = model.wte[...].at[5].set(jnp.nan)  # only rows whose prompt holds token 5 see a NaN
    with pytest.raises(FloatingPointError, match=r"non-finite logits \(NaN / inf\) for rows \[1, 2\]") as err:
        jdllm.generate(model, [[1, 2], [3, 5], [5, 6, 7]], **BASE)
    assert "policy bug" not in str(err.value)
    assert "check_finite=True" in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# memory plan


def _shipped_model():
    from jdllm.shipped import assets_dir

    return jdllm.load(assets_dir() / "arith-llada-tiny")


def test_batch_256_by_1024_on_the_default_model_stops_before_allocating_with_the_estimate():
    model = _shipped_model()
    prompts = [[5 + i % 200] * 25 for i in range(256)]  # 256 x (25 + 1024) = the 1049 positions
    compiled = loop.decode._cache_size()
    with pytest.raises(MemoryPlanError, match=r"estimated 1[45]\.\d\d GB for 256 rows x 1049 positions and "
                                              r"0\.0\d GB for a single row, more than the limit of 0\.01 GB "
                                              r"\(max_memory\)"):
        jdllm.generate(model, prompts, gen_length=1024, block_length=32, steps=1024, max_memory=10_000_000,
                       prompt_buckets=None)  # the exact width: 25 + 1024 positions
    assert loop.decode._cache_size() == compiled


def test_memory_limit_from_the_environment(tiny, monkeypatch):
    monkeypatch.setenv("JDLLM_MAX_MEMORY", "1K")
    with pytest.raises(MemoryPlanError, match=r"limit of 0\.00 GB \(JDLLM_MAX_MEMORY\)"):
        jdllm.generate(tiny, P, **BASE)
    monkeypatch.setenv("JDLLM_MAX_MEMORY", "lots")
    with pytest.raises(ValueError, match="JDLLM_MAX_MEMORY='lots' is not a byte count"):
        jdllm.generate(tiny, P, **BASE)


def test_estimate_is_linear_in_the_batch_and_quadratic_in_the_canvas(tiny):
    spec = loop.DecodeSpec(policy=Threshold(0.9), cache=NoCache(), schedule=SemiAutoregressive(16, 8))
    one = estimate_bytes(tiny.config, spec, 1, 24)
    assert estimate_bytes(tiny.config, spec, 7, 24) == 7 * one
    # the attention scores [B, heads, T, T] float32 (three buffers) dominate long canvases
    assert estimate_bytes(tiny.config, spec, 1, 400) >= 3 * 4 * 4 * 400 * 400


def test_micro_batches_give_the_tokens_of_the_unsplit_call():
    """3 rows under a limit that fits 2: micro-batches of 2 and 1 (padded to 2, one compiled program), same
    tokens and NFE (sampled, so each row's random stream must follow it into its micro-batch)."""
    cfg = ModelConfig(family="llada", vocab_size=48, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4,
                      mlp_hidden_size=64, max_seq_len=40, mask_id=MASK, eos_id=46, pad_id=45)
    model = Transformer(cfg, rngs=nnx.Rngs(3))
    model.ff_out.kernel[...] = model.ff_out.kernel[...] * 8  # peaked logits: the threshold passes, NFE vary by row
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    kw = dict(BASE, threshold=0.9, temperature=1.0, seed=3, prompt_buckets=None)  # canvas 4 + 16
    whole = jdllm.generate(model, prompts, **kw)
    assert len(set(whole.nfe.tolist())) == 3
    spec = loop.DecodeSpec(policy=Threshold(0.9), cache=NoCache(), schedule=SemiAutoregressive(16, 8),
                           temperature=1.0)
    two_rows = estimate_bytes(cfg, spec, 2, 4 + 16)
    compiled = loop.decode._cache_size()
    split = jdllm.generate(model, prompts, max_memory=two_rows, **kw)
    assert loop.decode._cache_size() == compiled + 1  # both micro-batches ran one program
    assert whole.micro_batch == 3 and split.micro_batch == 2
    np.testing.assert_array_equal(split.tokens, whole.tokens)
    np.testing.assert_array_equal(split.nfe, whole.nfe)
