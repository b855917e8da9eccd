"""D2F pipelined decoding (`schedules.Pipelined`) against the batch-1 reference of D2F's Algorithm 2
(tests/reference/d2f.py), ragged batches, LLaDA and Dream; and the pipeline's limits (one block in flight with
thresholds that force completion = semi-AR decoding)."""

from __future__ import annotations

import numpy as np
import pytest

import jdllm
from jdllm.decode.schedules import Pipelined, SemiAutoregressive
from tests.helpers import FAMILIES, make_prompt
from tests.reference.d2f import d2f_generate

PROMPTS = [make_prompt(32, 4), make_prompt(44, 7), make_prompt(38, 11)]
GEN, BLOCK = 24, 4
EOS = 62


def _reference(ref, prompt, sched: Pipelined, capped: bool):
    return d2f_generate(lambda x: ref(x[None])[0], prompt, sched.gen_length, sched.block_length,
                        mask_id=ref.mask_id, tau_add=sched.block_add_threshold,
                        tau_act=sched.decoded_token_threshold, tau_conf=sched.skip_threshold,
                        eos_ids=(EOS,) if sched.eos_early_stop else (), eos_id=EOS, shift=ref.shift == 1,
                        max_in_flight=sched.max_blocks_in_flight if capped else None)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", ["uncapped", "capped_eos"])
def test_pipeline_matches_the_d2f_reference(family, case, jd_models, ref_models):
    capped = case == "capped_eos"
    sched = Pipelined(GEN, BLOCK, eos_early_stop=capped, max_blocks_in_flight=2 if capped else GEN // BLOCK,
                      block_add_threshold=0.1, decoded_token_threshold=0.75, skip_threshold=0.9)
    out = jdllm.generate(jd_models[family], PROMPTS, gen_length=GEN, threshold=0.9, schedule=sched)
    for row, prompt in enumerate(PROMPTS):
        want, nfe = _reference(ref_models[family], prompt, sched, capped)
        np.testing.assert_array_equal(out.tokens[row], want, err_msg=f"row {row}")
        assert out.nfe[row] == nfe, f"row {row}"


@pytest.mark.parametrize("family", FAMILIES)
def test_one_block_in_flight_that_must_complete_is_semi_ar(family, jd_models):
    """tau_add = tau_act = 1: a block is added only when the last one is complete and is always fully
    activated, so the pipeline is semi-AR decoding (same tokens, same NFE)."""
    model = jd_models[family]
    sched = Pipelined(GEN, BLOCK, eos_early_stop=False, max_blocks_in_flight=1, block_add_threshold=1.0,
                      decoded_token_threshold=1.0)
    want = jdllm.generate(model, PROMPTS, gen_length=GEN, block_length=BLOCK, threshold=0.5)
    got = jdllm.generate(model, PROMPTS, gen_length=GEN, threshold=0.5, schedule=sched)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.nfe, want.nfe)


def test_pipeline_parallelism_saves_steps(jd_models):
    """With several blocks in flight the same model needs fewer forwards than semi-AR blocks."""
    model = jd_models["llada"]
    semi = jdllm.generate(model, PROMPTS, gen_length=GEN, block_length=BLOCK, threshold=0.9)
    pipe = jdllm.generate(model, PROMPTS, gen_length=GEN, threshold=0.9,
                          schedule=Pipelined(GEN, BLOCK, eos_early_stop=False, max_blocks_in_flight=3,
                                             block_add_threshold=0.1, decoded_token_threshold=0.75))
    assert pipe.nfe.sum() < semi.nfe.sum(), (pipe.nfe, semi.nfe)


def test_pipelined_arguments_are_checked():
    for kw, msg in [(dict(max_blocks_in_flight=0), "max_blocks_in_flight must be >= 1"),
                    (dict(block_add_threshold=1.5), "block_add_threshold must lie in"),
                    (dict(skip_threshold=-0.1), "skip_threshold must lie in")]:
        with pytest.raises(ValueError, match=msg):
            Pipelined(16, 4, **kw)
    assert Pipelined(16, 4, max_blocks_in_flight=9).slots == 4
    assert SemiAutoregressive(16, 4).slots == 1


# ------------------------------------------------------------------------------------ block-causal models
@pytest.fixture(scope="module")
def block_causal(ckpts, tmp_path_factory):
    """family -> (block-causal jdllm model, its numpy reference): the conftest weights under D2F attention."""
    import json
    import shutil

    from tests.reference import RefModel

    out = {}
    for family, (path, w, hf) in ckpts.items():
        hf = {**hf, "attention": "block_causal", "attention_block_size": BLOCK}
        dst = tmp_path_factory.mktemp(f"bc_{family}") / "m"
        shutil.copytree(path, dst)
        (dst / "config.json").write_text(json.dumps(hf))
        out[family] = jdllm.load(str(dst)), RefModel(w, hf)
    return out


D2F_SCHED = dict(block_add_threshold=0.1, decoded_token_threshold=0.75, skip_threshold=0.9)


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_cache_equals_no_cache_on_a_block_causal_model(family, block_causal):
    """The exact block cache (window queries only, K/V written once) gives the tokens and NFE of a full
    forward every step, for the D2F pipeline and for semi-AR blocks, on a ragged batch."""
    model, _ = block_causal[family]
    for sched, kw in [(Pipelined(GEN, BLOCK, max_blocks_in_flight=2, **D2F_SCHED), dict(threshold=0.9)),
                      (SemiAutoregressive(GEN, BLOCK), dict(threshold=0.9)),
                      (SemiAutoregressive(GEN, BLOCK), dict(steps=GEN // 2))]:
        want = jdllm.generate(model, PROMPTS, gen_length=GEN, schedule=sched, **kw)
        got = jdllm.generate(model, PROMPTS, gen_length=GEN, schedule=sched, cache="exact", **kw)
        np.testing.assert_array_equal(got.tokens, want.tokens, err_msg=str(sched))
        np.testing.assert_array_equal(got.nfe, want.nfe, err_msg=str(sched))


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_pipeline_on_a_block_causal_model_matches_d2f(family, block_causal):
    """D2F's reference grows the sequence block by block; under block-causal attention that is the same as
    the full canvas with D2F's mask, which the numpy reference model applies here."""
    from tests.reference.masks import create_full_block_attention_mask

    model, ref = block_causal[family]
    sched = Pipelined(GEN, BLOCK, max_blocks_in_flight=GEN // BLOCK, eos_early_stop=False, **D2F_SCHED)
    out = jdllm.generate(model, PROMPTS, gen_length=GEN, threshold=0.9, schedule=sched, cache="exact")
    for row, prompt in enumerate(PROMPTS):
        bias = create_full_block_attention_mask(len(prompt), len(prompt) + GEN, BLOCK)
        want, nfe = d2f_generate(lambda x: ref(x[None], attention_bias=bias)[0], prompt, GEN, BLOCK,
                                 mask_id=ref.mask_id, tau_add=0.1, tau_act=0.75, tau_conf=0.9,
                                 shift=ref.shift == 1)
        np.testing.assert_array_equal(out.tokens[row], want, err_msg=f"row {row}")
        assert out.nfe[row] == nfe


def test_exact_cache_refuses_a_bidirectional_model(jd_models):
    with pytest.raises(ValueError, match="cache='exact' needs a block-causal model"):
        jdllm.generate(jd_models["llada"], PROMPTS, gen_length=GEN, block_length=BLOCK, threshold=0.9,
                       cache="exact")


# ------------------------------------------------------------------------------------ recipes by name
def test_generate_recipe_by_name_equals_its_keywords(jd_models):
    model = jd_models["llada"]
    want = jdllm.generate(model, PROMPTS, gen_length=GEN, block_length=8, steps=GEN, threshold=0.9, cache="dual")
    got = jdllm.generate(model, PROMPTS, gen_length=GEN, recipe="fast_dllm_dual_parallel", block_length=8)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.nfe, want.nfe)


def test_explicit_keywords_replace_the_recipes_axis():
    from jdllm.decode.policies import Frechet
    from jdllm.recipes import merge_recipe, recipe_kwargs

    frechet = recipe_kwargs("frechet_prefix", 64)
    assert isinstance(frechet["policy"], Frechet)
    merged = merge_recipe(frechet, {"threshold": 0.7})
    assert merged["threshold"] == 0.7 and "policy" not in merged and merged["cache"] == "prefix"
    d2f = recipe_kwargs("d2f", 64)
    assert isinstance(d2f["schedule"], Pipelined) and d2f["cache"] == "exact"
    retuned = merge_recipe(d2f, {"block_length": 16, "eos_early_stop": False})
    assert retuned["schedule"] == Pipelined(64, 16, eos_early_stop=False, max_blocks_in_flight=3,
                                            block_add_threshold=0.1, decoded_token_threshold=0.95, skip_threshold=0.9)
    assert "eos_early_stop" not in retuned and retuned["block_length"] == 16
    semi = merge_recipe(d2f, {"schedule": SemiAutoregressive(64, 8)})
    assert semi["schedule"] == SemiAutoregressive(64, 8) and "block_length" not in semi
    with pytest.raises(TypeError, match="recipe must be a recipe name"):
        jdllm.generate(None, [[1]], recipe=3)


@pytest.mark.parametrize("family", FAMILIES)
def test_as_block_causal_shares_weights_and_equals_a_block_causal_checkpoint(family, jd_models, block_causal):
    bidir = jd_models[family]
    view = jdllm.as_block_causal(bidir, BLOCK)
    assert view.wte[...] is bidir.wte[...]  # no copy
    loaded, _ = block_causal[family]
    assert view.config == loaded.config
    kw = dict(gen_length=GEN, threshold=0.9, cache="exact",
              schedule=Pipelined(GEN, BLOCK, max_blocks_in_flight=2, **D2F_SCHED))
    a, b = jdllm.generate(view, PROMPTS, **kw), jdllm.generate(loaded, PROMPTS, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert jdllm.as_bidirectional(view).config == bidir.config


def test_pipeline_with_the_exact_cache_on_a_mesh_gives_one_devices_tokens(block_causal):
    import jax

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    model, _ = block_causal["llada"]
    kw = dict(gen_length=GEN, threshold=0.9, cache="exact",
              schedule=Pipelined(GEN, BLOCK, max_blocks_in_flight=2, **D2F_SCHED))
    want = jdllm.generate(model, PROMPTS + PROMPTS[:1], **kw)
    got = jdllm.generate(model, PROMPTS + PROMPTS[:1], mesh=jax.make_mesh((2, 4), ("data", "tensor")), **kw)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.nfe, want.nfe)


def test_recipe_built_at_the_callers_block_length():
    """A caller's block_length reaches the recipe's schedule / policy objects before they are built (d2f's block
    32 does not divide gen_length 48; 16 does)."""
    from jdllm.recipes import recipe_kwargs

    kw = recipe_kwargs("d2f", 48, block_length=16)
    assert kw["schedule"].block_length == 16 and kw["schedule"].gen_length == 48
    frechet = recipe_kwargs("frechet_prefix", 48, block_length=16)
    assert frechet["block_length"] == 16 and getattr(frechet["policy"], "block_length", 16) == 16


def test_cli_recipe_with_an_option_that_retunes_its_schedule(capsys):
    """`jdllm generate --recipe d2f --block-length 16` keeps d2f's pipeline at blocks of 16 (the shipped
    student, by name)."""
    from jdllm.cli import main

    question = "Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?"
    assert main(["generate", "--model", "arith-llada-tiny-d2f", "--recipe", "d2f", "--block-length", "16",
                 "--gen-length", "64", question]) == 0
    assert capsys.readouterr().out.strip().endswith("#### 14")


@pytest.mark.parametrize("policy_name", ["frechet", "r2", "topk"])
def test_other_policies_decide_the_pipelines_block_commits(policy_name, block_causal):
    """Any commit policy runs per block of the pipeline's window (Fréchet must work): it finishes, leaves no
    mask, and the exact cache still equals a full forward every step."""
    from jdllm.decode.policies import R2, Frechet, TopK

    model, _ = block_causal["llada"]
    policy = {"frechet": Frechet(delta=0.25), "r2": R2(),
              "topk": TopK(block_length=BLOCK, steps_per_block=2)}[policy_name]
    sched = Pipelined(GEN, BLOCK, max_blocks_in_flight=2, eos_early_stop=False, **D2F_SCHED)
    want = jdllm.generate(model, PROMPTS, gen_length=GEN, policy=policy, schedule=sched, steps=2 * GEN // BLOCK)
    got = jdllm.generate(model, PROMPTS, gen_length=GEN, policy=policy, schedule=sched, steps=2 * GEN // BLOCK,
                         cache="exact")
    assert not (got.tokens == model.config.mask_id).any()
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.nfe, want.nfe)


def test_forward_of_a_block_causal_model(block_causal):
    """`jdllm.forward` passes prompt_len / block_size through: a block-causal model's logits of the first
    generation block do not depend on later tokens."""
    model, _ = block_causal["llada"]
    tokens = np.asarray([PROMPTS[1] + [5] * GEN])
    other = tokens.copy()
    other[0, len(PROMPTS[1]) + BLOCK:] = 9
    a = np.asarray(jdllm.forward(model, tokens, prompt_len=len(PROMPTS[1])))
    b = np.asarray(jdllm.forward(model, other, prompt_len=len(PROMPTS[1])))
    first = slice(0, len(PROMPTS[1]) + BLOCK)
    np.testing.assert_array_equal(a[0, first], b[0, first])
    assert not np.array_equal(a[0, first.stop:], b[0, first.stop:])
    with pytest.raises(ValueError, match="pass prompt_len"):
        jdllm.forward(model, tokens)


def test_pipelined_restrict_semi_blocks_strictly_above_tau_conf():
    """D2F's semi-activated blocks commit only confidences strictly above tau_conf (the reference's `>`); fully
    activated blocks keep the policy's choice; absent slots commit nothing."""
    import jax.numpy as jnp

    from jdllm.decode.schedules import ABSENT, FULL, SEMI

    sched = Pipelined(12, 2, max_blocks_in_flight=2, skip_threshold=0.75)  # 3 slots of 2; 0.75 exact in float32
    commit = jnp.ones((1, 6), bool)
    conf = jnp.asarray([[0.75, 0.95, 0.75, 0.76, 0.99, 0.99]], jnp.float32)
    got = sched.restrict(commit, conf, jnp.asarray([[FULL, SEMI, ABSENT]]))
    np.testing.assert_array_equal(np.asarray(got), [[True, True, False, True, False, False]])


def test_pipelined_state_machine_by_hand():
    """Three hand-made steps of one row (blocks of 2, mask 9, EOS 7): block 0 finishes and block 1 is added;
    block 0 retires one step later (the window moves, `moved` and `steps_since_move` reset) while EOS committed in
    block 1 stops growth; the row is done when its added blocks are complete, with an EOS stop."""
    import jax.numpy as jnp

    from jdllm.decode.schedules import ABSENT, FULL

    sched = Pipelined(8, 2, max_blocks_in_flight=2, block_add_threshold=0.5, decoded_token_threshold=1.0)
    live = jnp.ones((1,), bool)
    state = sched.init(1)

    def step(before, after):
        nonlocal state
        view = sched.window(state)
        state, done, stop = sched.advance(state, view, jnp.asarray([before]), jnp.asarray([after]), live, 9, (7,))
        return view, bool(done[0]), bool(stop[0])

    view, done, stop = step([9, 9, 9, 9, 9, 9], [5, 6, 9, 9, 9, 9])
    assert view.stage.tolist() == [[FULL, ABSENT, ABSENT]] and int(view.start[0]) == 0
    assert (int(state["first"][0]), int(state["added"][0]), bool(state["moved"][0])) == (0, 2, False)
    assert int(state["since_move"][0]) == 1 and not done

    view, done, stop = step([5, 6, 9, 9, 9, 9], [5, 6, 7, 9, 9, 9])
    assert view.stage.tolist() == [[FULL, FULL, ABSENT]]
    assert (int(state["first"][0]), int(state["added"][0]), bool(state["eos"][0])) == (1, 2, True)
    assert bool(state["moved"][0]) and int(state["since_move"][0]) == 0 and not done

    view, done, stop = step([7, 9, 9, 9, 9, 9], [7, 8, 9, 9, 9, 9])
    assert int(view.start[0]) == 2 and view.block_id.tolist() == [[1, 2, 3]]
    assert not bool(state["moved"][0]) and int(state["added"][0]) == 2
    assert done and stop
