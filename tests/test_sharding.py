"""Scale out: rules table, sharded parameters, sharded decode == one device, no logits all-gather, sharded load.

The suite runs with XLA_FLAGS=--xla_force_host_platform_device_count=8 (8 CPU devices); tests that need a
2x4 mesh skip with a reason when fewer devices exist.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdllm
from jdllm import sharding as S
from jdllm.api import make_cache, make_policy, pack_prompts
from jdllm.decode.loop import DecodeSpec, decode
from jdllm.decode.proposal import propose, propose_sharded
from jdllm.decode.schedules import SemiAutoregressive
from jdllm.models import ModelConfig, Transformer
from jdllm.weights.hf import save_hf

VOCAB = 96  # distinct from every other dimension, so the HLO check can recognise it
needs8 = pytest.mark.skipif(
    len(jax.devices()) < 8,
    reason="needs 8 devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=8",
)
GEN = dict(gen_length=16, block_length=8, steps=16, threshold=0.9)
PROMPTS = [[5, 17, 3], [9, 2, 44, 61, 7], [1, 2], [30, 31, 32, 33, 34, 35], [8, 8, 8, 8], [70], [4, 3, 2, 1, 0], [50, 60, 70]]


def _cfg(**kw):
    base = dict(family="llada", vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4,
                mlp_hidden_size=64, max_seq_len=40, mask_id=95, eos_id=94, pad_id=93)
    return ModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def model():
    m = Transformer(_cfg(), rngs=nnx.Rngs(0))
    # A sharper LM head, so that the 0.9 threshold fires and rows take different numbers of steps.
    m.ff_out.kernel[...] = m.ff_out.kernel[...] * 8
    return m


@pytest.fixture(scope="module")
def single():
    return {}


def _standard_mesh():
    """A mesh made the standard way: `jax.make_mesh` defaults (Explicit axes in current JAX), no 'fsdp' axis."""
    return jax.make_mesh((2, 4), ("data", "tensor"))


def _mesh(preset):
    # 2x4 meshes; FSDP combines fsdp=2 with tensor=4 (weights sharded on two dims, vocab-sharded head);
    # tensor_parallel runs on the standard jax.make_mesh mesh.
    if preset == "tensor_parallel":
        return _standard_mesh()
    return S.make_mesh(fsdp=2, tensor=4) if preset == "fsdp" else S.make_mesh(data=2, tensor=4)


# -- rules table (no devices needed) -------------------------------------------------------------------------


def test_rules_table_and_presets():
    tp, fsdp, dp = S.TENSOR_PARALLEL, S.FSDP, S.DATA_PARALLEL
    assert tp.spec(("embed", "heads")) == jax.sharding.PartitionSpec(None, "tensor")
    assert tp.spec(S.KV_CACHE_AXES) == jax.sharding.PartitionSpec(None, "data", None, "tensor", None)
    assert fsdp.spec(("batch", "seq")) == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    assert fsdp.spec(("vocab", "embed")) == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert dp.spec(("embed", "vocab")) == jax.sharding.PartitionSpec(None, None)
    assert S.param_logical_axes(("blocks", 3, "k_proj", "kernel")) == ("embed", "kv_heads")
    assert S.param_logical_axes("ff_out.kernel") == ("embed", "vocab")
    assert S.param_logical_axes("blocks.0.ff_out.kernel") == ("mlp", "embed")
    assert S.get_rules("fsdp") is S.FSDP and S.get_rules(None) is S.TENSOR_PARALLEL
    assert hash(tp.replace(vocab=None)) != hash(tp)
    with pytest.raises(ValueError, match="no entry for logical axis 'bogus'"):
        tp.spec(("bogus",))
    with pytest.raises(ValueError, match="one of"):
        S.get_rules("megatron")


@needs8
def test_not_divisible_raises_naming_tensor_and_axis(model):
    mesh = S.make_mesh(data=2, tensor=4)
    with pytest.raises(ValueError, match=r"parameter ff_out\.kernel: dimension 1 \('vocab'\) of size 90 .* 'tensor' of size 4"):
        S.param_sharding("ff_out.kernel", (32, 90), mesh, S.TENSOR_PARALLEL)
    with pytest.raises(ValueError, match="kv heads .* not divisible by mesh axis 'tensor' of size 8"):
        S.shard_model(Transformer(_cfg(n_heads=8, n_kv_heads=4), rngs=nnx.Rngs(0)), S.make_mesh(tensor=8))
    with pytest.raises(ValueError, match=r"dimension 0 \('batch'\) of size 3 is not divisible by mesh axis 'data' of size 2"):
        jdllm.generate(model, PROMPTS[:3], mesh=mesh, **GEN)
    with pytest.raises(ValueError, match="devices"):
        S.make_mesh(data=3, tensor=2)


# -- parameters ----------------------------------------------------------------------------------------------


@needs8
def test_parameters_sharded_as_the_rules_say(model):
    P = jax.sharding.PartitionSpec
    tp = S.shard_model(model, S.make_mesh(data=2, tensor=4), "tensor_parallel")
    assert tp.blocks[0].q_proj.kernel[...].sharding.spec == P(None, "tensor")
    assert tp.blocks[0].attn_out.kernel[...].sharding.spec == P("tensor", None)
    assert tp.blocks[0].ff_out.kernel[...].sharding.spec == P("tensor", None)
    assert tp.ff_out.kernel[...].sharding.spec == P(None, "tensor")
    assert tp.wte[...].sharding.spec == P("tensor", None)
    assert tp.ln_f.weight[...].sharding.is_fully_replicated
    q = tp.blocks[0].q_proj.kernel[...]
    assert {s.data.shape for s in q.addressable_shards} == {(32, 8)}
    fsdp = S.shard_model(model, _mesh("fsdp"), "fsdp")
    assert fsdp.blocks[0].up_proj.kernel[...].sharding.spec == P("fsdp", "tensor")
    assert fsdp.sharding_rules is S.FSDP
    for x, y in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(fsdp))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# -- decode ---------------------------------------------------------------------------------------------------


# No cache runs at temperature 0.8 (Gumbel noise drawn at full shape, sliced per shard), dual cache greedily.
TEMPERATURE = {None: 0.8, "dual": 0.0}


@needs8
@pytest.mark.parametrize("cache", [None, "dual"])
@pytest.mark.parametrize("preset", ["data_parallel", "tensor_parallel", "fsdp"])
def test_sharded_generate_equals_one_device(model, single, preset, cache):
    kw = dict(cache=cache, temperature=TEMPERATURE[cache], **GEN)
    if cache not in single:
        single[cache] = jdllm.generate(model, PROMPTS, **kw)
    ref = single[cache]
    if preset == "tensor_parallel":  # the default rules, and the (standard, Explicit) mesh inferred from the params
        out = jdllm.generate(S.shard_model(model, _mesh(preset)), PROMPTS, **kw)
    else:
        out = jdllm.generate(model, PROMPTS, mesh=_mesh(preset), rules=preset, **kw)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.nfe, ref.nfe)
    assert len(set(ref.nfe.tolist())) > 1  # the threshold fired: rows took different numbers of steps


@needs8
def test_propose_sharded_equals_propose():
    mesh = S.make_mesh(data=2, tensor=4)
    logits = np.random.default_rng(0).normal(size=(4, 8, VOCAB)).astype(np.float32) * 3
    logits[0, 0, [10, 70]] = 20.0   # tie across shards: the lowest id wins, as jnp.argmax
    logits[1, 1, 95] = 50.0         # the mask id is never proposed
    logits[2, 2, [30, 31]] = 9.0    # tie inside a shard
    logits[3, 3, :] = -60.0           # a logit range of 120: exp overflows float32 unless shifted by the max
    logits[3, 3, 3] = 60.0
    keys = jax.random.split(jax.random.key(1), 4)

    @jax.jit
    def both(x, k):
        return [(propose(x, t, k, 95), propose_sharded(x, t, k, 95, mesh, "data", ("tensor",))) for t in (0.0, 1.0)]

    for want, got in both(logits, keys):
        np.testing.assert_array_equal(got.tokens, want.tokens)
        for f in ("confidence", "neg_entropy", "margin", "log_probs"):
            np.testing.assert_allclose(getattr(got, f), getattr(want, f), rtol=1e-5, atol=1e-6, err_msg=f)
    greedy = both(logits, keys)[0][1].tokens
    assert int(greedy[0, 0]) == 10 and int(greedy[1, 1]) != 95 and int(greedy[2, 2]) == 30


@needs8
def test_propose_sharded_refuses_slices_of_one_id():
    mesh = S.make_mesh(data=2, tensor=4)
    with pytest.raises(ValueError, match=r"vocab size 4 cannot be split into 4 slices of >= 2 ids"):
        propose_sharded(jnp.zeros((2, 3, 4)), 0.0, None, 3, mesh, "data", ("tensor",))
    with pytest.raises(ValueError, match=r"vocab size 10 cannot be split into 4 slices"):
        propose_sharded(jnp.zeros((2, 3, 10)), 0.0, None, 3, mesh, "data", ("tensor",))


_COLLECTIVE = re.compile(r"=\s*(\(?[a-z0-9]+\[[^=]*?)\s(all-gather|all-gather-start|all-to-all)\(")


@needs8
def test_no_logits_all_gather_in_compiled_decode(model):
    """Vocab-sharded head: the compiled decode holds no all-gather / all-to-all whose result has the vocab dim.

    The margin score needs the top-2 probabilities: left to the compiler (plain `propose` on vocab-sharded
    logits) this all-gathers [B, W, V] (checked when this test was written); the shard_map proposal does not.
    """
    mesh = S.make_mesh(data=2, tensor=4)
    plan = S.ShardingPlan(mesh, S.TENSOR_PARALLEL)
    tokens, valid, width = pack_prompts(PROMPTS[:2], model.config, 16)
    spec = DecodeSpec(policy=make_policy(16, 8, 2, "margin", None, None, True), cache=make_cache("dual", 0.0, None),
                      schedule=SemiAutoregressive(16, 8), temperature=0.8, max_iters=64, sharding=plan)
    graphdef, params = nnx.split(model)
    params = S.shard_params(params, mesh, plan.rules)
    glob = lambda x: S.global_batch_array(x, mesh, plan.rules, global_rows=2)  # noqa: E731
    hlo = decode.lower(graphdef, params, spec, glob(tokens), glob(valid), glob(np.arange(2, dtype=np.int32)),
                       np.uint32(0), width).compile().as_text()
    assert "all-reduce" in hlo  # the sharded program really communicates (pmax / psum)
    offending = []
    for line in hlo.splitlines():
        m = _COLLECTIVE.search(line)
        if m and re.search(rf"[\[,]{VOCAB}[\],]", m.group(1)):
            offending.append(line.strip()[:160])
    assert not offending, "vocab-sized gathers:\n" + "\n".join(offending)


# -- loading --------------------------------------------------------------------------------------------------


@needs8
def test_sharded_hf_and_orbax_load_equal_unsharded(tmp_path):
    m = Transformer(_cfg(n_layers=2), rngs=nnx.Rngs(7))
    save_hf(m, tmp_path / "hf", n_files=3)
    jdllm.save(m, tmp_path / "orbax")
    plain = jax.tree.leaves(nnx.state(jdllm.load(tmp_path / "hf")))
    mesh = _mesh("fsdp")
    for path, rules in ((tmp_path / "hf", "fsdp"), (tmp_path / "hf", "tensor_parallel"), (tmp_path / "orbax", "fsdp")):
        loaded = jdllm.load(path, mesh=mesh, rules=rules)
        assert loaded.sharding_rules is S.get_rules(rules)
        want = S.param_shardings(nnx.state(loaded), mesh, S.get_rules(rules))
        for x, y, s in zip(plain, jax.tree.leaves(nnx.state(loaded)), jax.tree.leaves(want)):
            assert y.sharding == s
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# -- multi-host helpers (single process here) ---------------------------------------------------------------


@needs8
def test_process_helpers_single_process():
    mesh = S.make_mesh(data=2, tensor=4)
    assert S.process_rows(8, mesh) == slice(0, 8)
    rows, sl = S.local_prompts(PROMPTS, mesh)
    assert rows == PROMPTS and sl == slice(0, 8)
    local = np.arange(8 * 5, dtype=np.int32).reshape(8, 5)
    arr = S.global_batch_array(local, mesh)
    assert arr.sharding.spec == jax.sharding.PartitionSpec("data", None)
    np.testing.assert_array_equal(S.to_host(arr), local)
    assert jnp.asarray(S.to_host(jnp.float32(2))) == 2


# -- any mesh a user brings -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """The `model` fixture saved as an HF directory and as an orbax directory."""
    root = tmp_path_factory.mktemp("mesh_ckpt")
    save_hf(model, root / "hf")
    jdllm.save(model, root / "orbax")
    return root


def _one_device(model, single, cache):
    kw = dict(cache=cache, temperature=TEMPERATURE[cache], **GEN)
    if cache not in single:
        single[cache] = jdllm.generate(model, PROMPTS, **kw)
    return single[cache], kw


@needs8
@pytest.mark.parametrize("cache", [None, "dual"])
def test_standard_mesh_load_and_generate_equal_one_device(model, single, saved, cache):
    """Issue 16: `jax.make_mesh((2, 4), ("data", "tensor"))` (Explicit axes) + `load(path, mesh=)` + `generate`
    gives the tokens and NFE of one device (no cache sampled, dual cache greedy)."""
    mesh = _standard_mesh()
    assert all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)  # jax's default, the case at stake
    ref, kw = _one_device(model, single, cache)
    loaded = jdllm.load(saved / "hf", mesh=mesh)
    # Same devices, names and sizes as the user's mesh; the LM head's vocab is split over 'tensor'.
    head = loaded.ff_out.kernel[...]
    assert head.sharding.mesh.devices.tolist() == mesh.devices.tolist()
    assert dict(head.sharding.mesh.shape) == {"data": 2, "tensor": 4}
    assert head.sharding.spec == jax.sharding.PartitionSpec(None, "tensor")
    out = jdllm.generate(loaded, PROMPTS, **kw)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.nfe, ref.nfe)
    if cache is None:  # orbax onto the same mesh: same placement (no extra compile)
        restored = jdllm.load(saved / "orbax", mesh=mesh)
        for x, y in zip(jax.tree.leaves(nnx.state(loaded)), jax.tree.leaves(nnx.state(restored))):
            assert y.sharding == x.sharding
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@needs8
def test_auto_mesh_and_surrounding_set_mesh_equal_one_device(model, single):
    """An Auto-axes `jax.make_mesh` passed as mesh=, and an Explicit mesh set around the call with
    `jax.set_mesh` (no mesh= at all): tokens and NFE of one device."""
    ref, kw = _one_device(model, single, None)
    auto = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    out = jdllm.generate(model, PROMPTS, mesh=auto, **kw)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.nfe, ref.nfe)
    with jax.set_mesh(_standard_mesh()):
        out = jdllm.generate(model, PROMPTS, **kw)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.nfe, ref.nfe)


ONE_AXIS = {
    "data": lambda: jax.make_mesh((8,), ("data",)),
    "tensor": lambda: jax.make_mesh((4,), ("tensor",), devices=jax.devices()[:4]),
}


@needs8
@pytest.mark.parametrize("axis, cache", [("data", None), pytest.param("tensor", "dual", marks=pytest.mark.slow)])
def test_one_axis_mesh_equals_one_device(model, single, axis, cache):
    """A mesh with only some of the rules' axes: the absent ones count as size 1 (tensor-parallel rules on a
    'data'-only mesh shard the batch and replicate the weights; on a 'tensor'-only mesh the reverse)."""
    ref, kw = _one_device(model, single, cache)
    mesh = ONE_AXIS[axis]()
    sharded = S.shard_model(model, mesh)
    q = sharded.blocks[0].q_proj.kernel[...]
    want = jax.sharding.PartitionSpec(None, None) if axis == "data" else jax.sharding.PartitionSpec(None, "tensor")
    assert q.sharding.spec == want
    out = jdllm.generate(sharded, PROMPTS, **kw)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.nfe, ref.nfe)


@needs8
def test_unusable_mesh_refused_up_front_with_how_to(model, saved):
    how = r"jdllm\.sharding\.make_mesh\(data=2, tensor=4\)"
    abstract = _standard_mesh().abstract_mesh
    with pytest.raises(TypeError, match=r"AbstractMesh has no devices.*" + how):
        jdllm.generate(model, PROMPTS, mesh=abstract, **GEN)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        S.shard_model(model, [[0, 1], [2, 3]])
    foreign = jax.make_mesh((2, 4), ("x", "y"))  # no axis the rules use: everything would be replicated
    with pytest.raises(ValueError, match=r"no axis of size > 1 that rules 'tensor_parallel' use.*" + how):
        jdllm.load(saved / "hf", mesh=foreign)
    with pytest.raises(ValueError, match="no axis of size > 1"):
        jdllm.generate(model, PROMPTS, mesh=foreign, **GEN)
    # An unused axis next to a used one is fine (replicated over it), as is a one-device mesh.
    assert S.usable_mesh(jax.make_mesh((2, 4), ("data", "x")), S.TENSOR_PARALLEL).shape["x"] == 4
    assert S.plan_for({}, jax.make_mesh((1,), ("x",)), None) is None


# -- every parameter's spec, from the HF layout -------------------------------------------------------------

# Logical axes of every HF tensor in its torch layout ([out, in] for linear weights), written from the
# checkpoints' HF names (LLaDA: modeling_llada.py; Dream: Qwen2 names), independently of jdllm's key map.
HF_LOGICAL_AXES = {
    "llada": [
        (r"model\.transformer\.wte\.weight", ("vocab", "embed")),
        (r"model\.transformer\.blocks\.\d+\.(attn_norm|ff_norm)\.weight", ("norm",)),
        (r"model\.transformer\.blocks\.\d+\.q_proj\.weight", ("heads", "embed")),
        (r"model\.transformer\.blocks\.\d+\.(k_proj|v_proj)\.weight", ("kv_heads", "embed")),
        (r"model\.transformer\.blocks\.\d+\.attn_out\.weight", ("embed", "heads")),
        (r"model\.transformer\.blocks\.\d+\.(ff_proj|up_proj)\.weight", ("mlp", "embed")),
        (r"model\.transformer\.blocks\.\d+\.ff_out\.weight", ("embed", "mlp")),
        (r"model\.transformer\.ln_f\.weight", ("norm",)),
        (r"model\.transformer\.ff_out\.weight", ("vocab", "embed")),
    ],
    "dream": [
        (r"model\.embed_tokens\.weight", ("vocab", "embed")),
        (r"model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight", ("norm",)),
        (r"model\.layers\.\d+\.self_attn\.q_proj\.weight", ("heads", "embed")),
        (r"model\.layers\.\d+\.self_attn\.q_proj\.bias", ("heads",)),
        (r"model\.layers\.\d+\.self_attn\.(k_proj|v_proj)\.weight", ("kv_heads", "embed")),
        (r"model\.layers\.\d+\.self_attn\.(k_proj|v_proj)\.bias", ("kv_heads",)),
        (r"model\.layers\.\d+\.self_attn\.o_proj\.weight", ("embed", "heads")),
        (r"model\.layers\.\d+\.mlp\.(gate_proj|up_proj)\.weight", ("mlp", "embed")),
        (r"model\.layers\.\d+\.mlp\.down_proj\.weight", ("embed", "mlp")),
        (r"model\.norm\.weight", ("norm",)),
        (r"lm_head\.weight", ("vocab", "embed")),
    ],
}


def _hf_axes(family, name):
    hits = [axes for pattern, axes in HF_LOGICAL_AXES[family] if re.fullmatch(pattern, name)]
    assert len(hits) == 1, f"{family} tensor {name}: {len(hits)} entries in HF_LOGICAL_AXES"
    return hits[0]


@needs8
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_every_parameter_spec_follows_the_hf_table(ckpts, family):
    """Every parameter of a sharded load has exactly the PartitionSpec the rules give for its HF tensor's
    logical axes (transposed where jdllm stores the tensor transposed), for every preset. Each jdllm parameter
    is matched to its HF tensor by value (random weights), so the check does not go through jdllm's key map."""
    path, weights, _ = ckpts[family]
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))  # every axis > 1: each preset shards differently
    for preset in S.PRESETS:
        rules = S.get_rules(preset)
        loaded = jdllm.load(path, mesh=mesh, rules=preset)
        params = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(nnx.state(loaded))}
        host = {k: np.asarray(x) for k, x in params.items()}
        checked = set()
        for name, w in weights.items():
            axes = _hf_axes(family, name)
            layouts = [(w, axes)] + ([(w.T, axes[::-1])] if w.ndim == 2 else [])  # as stored, or transposed
            matches = [(k, a) for k, x in host.items() for stored, a in layouts
                       if x.shape == stored.shape and np.array_equal(x, stored)]
            assert len(matches) == 1, f"{name}: {len(matches)} parameters hold its values"
            key, axes = matches[0]
            want = rules.spec(axes, host[key].shape, mesh, what=name)
            got = params[key].sharding.spec
            assert got == want, f"{preset}: {name} -> {key}: {got} != {want}"
            checked.add(key)
        assert checked == set(params), f"parameters without an HF tensor: {set(params) - checked}"


# -- structure ---------------------------------------------------------------------------------------------------


def _jdllm_imports(root):
    """module -> the jdllm modules it imports anywhere in its source (top level or inside functions)."""
    import ast

    modules = {".".join(f.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): f
               for f in root.rglob("*.py")}
    graph = {}
    for name, f in modules.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: strip level - 1 trailing parts of the package
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                deps.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_no_import_circle():
    """No jdllm module reaches itself through imports, counting those inside functions (a lazy import hides a
    circle from the interpreter, not from the design)."""
    import pathlib

    graph = _jdllm_imports(pathlib.Path(jdllm.__file__).parent)

    def circle_from(start):
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for dep in graph.get(node, ()):
                if dep == start:
                    return trail + (start,)
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, trail + (dep,)))
        return None

    circles = [" -> ".join(c) for c in map(circle_from, sorted(graph)) if c]
    assert not circles, "import circles:\n" + "\n".join(circles)
    assert "jdllm.models.partitioning" in graph["jdllm.models.transformer"]
