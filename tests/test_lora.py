"""PEFT LoRA adapters merged at load (`jdllm.load(base, lora=dir)`), LLaDA and Dream, HF / orbax / sharded bases.

Adapters are written here with the `safetensors` numpy API in PEFT's layout (huggingface/peft `LoraConfig`,
`get_peft_model_state_dict`): keys `base_model.model.<HF module>.lora_A.weight` [r, in] / `.lora_B.weight`
[out, r]. The reference merge is PEFT's formula in numpy float64, W + s * B @ A with s = lora_alpha / r
(lora_alpha / sqrt(r) with use_rslora), written as an ordinary HF checkpoint; the merged model must equal that
checkpoint loaded, and its logits the numpy reference forward of the merged weights.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import jdllm
from jdllm.weights.lora import read_lora, save_lora
from tests.reference import RefModel
from tests.reference.checkpoints import write_checkpoint

LLADA_TARGETS = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_out"]  # D2F's four + ff_out (block MLP and head)
DREAM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
R, ALPHA = 4, 8.0


def peft_config(**overrides) -> dict:
    """adapter_config.json as PEFT's LoraConfig.save_pretrained writes it (the keys that matter here)."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "GSAI-ML/LLaDA-8B-Instruct",
            "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.1, "target_modules": LLADA_TARGETS, "bias": "none",
            "use_rslora": False, "fan_in_fan_out": False, "modules_to_save": None, "use_dora": False,
            "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True, **overrides}


def random_pairs(weights: dict, targets: list[str], seed: int = 0, ranks: dict | None = None) -> dict:
    """HF module path -> (A [r, in], B [out, r]) for every linear weight whose module ends in a target."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for name, w in sorted(weights.items()):
        module = name[: -len(".weight")]
        if name.endswith(".weight") and w.ndim == 2 and module.rsplit(".", 1)[-1] in targets and "embed" not in name:
            r = (ranks or {}).get(module, R)
            pairs[module] = ((rng.standard_normal((r, w.shape[1])) * 0.3).astype(np.float32),
                             (rng.standard_normal((w.shape[0], r)) * 0.3).astype(np.float32))
    return pairs


def write_adapter(path, pairs: dict, config: dict, adapter_name: str | None = None, dtype=np.float32):
    os.makedirs(path, exist_ok=True)
    infix = f".{adapter_name}" if adapter_name else ""
    tensors = {}
    for module, (a, b) in pairs.items():
        tensors[f"base_model.model.{module}.lora_A{infix}.weight"] = np.ascontiguousarray(a, dtype)
        tensors[f"base_model.model.{module}.lora_B{infix}.weight"] = np.ascontiguousarray(b, dtype)
    save_file(tensors, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    return str(path)


def reference_merge(weights: dict, pairs: dict, scale) -> dict:
    """PEFT merge_and_unload in float64: W + s * B @ A (`scale(module)` gives s)."""
    out = dict(weights)
    for module, (a, b) in pairs.items():
        w = np.asarray(weights[module + ".weight"], np.float64)
        out[module + ".weight"] = (w + scale(module) * (np.float64(b) @ np.float64(a))).astype(np.float32)
    return out


def params(model) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}


def assert_same_params(got, want, exact: bool = False):
    pg, pw = params(got), params(want)
    assert pg.keys() == pw.keys()
    for k in pg:
        if exact:
            np.testing.assert_array_equal(pg[k], pw[k], err_msg=k)
        else:
            np.testing.assert_allclose(pg[k], pw[k], rtol=1e-5, atol=1e-6, err_msg=k)


def assert_logits_close(model, ref: RefModel):
    tokens = np.random.default_rng(0).integers(0, 60, size=(2, 10)).astype(np.int32)
    want = ref(tokens)
    got = np.asarray(jdllm.forward(model, tokens), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.fixture(scope="module")
def llada_adapter(llada_ckpt, tmp_path_factory):
    path, w, hf = llada_ckpt
    pairs = random_pairs(w, LLADA_TARGETS)
    return write_adapter(tmp_path_factory.mktemp("lora") / "llada", pairs, peft_config()), pairs


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_merge_equals_peft_formula(family, llada_ckpt, dream_ckpt, llada_adapter, tmp_path):
    """Merged params equal the numpy merge loaded as a plain checkpoint, and logits the numpy reference forward of
    the merged weights (LLaDA: MHA, the head's ff_out and the blocks' ff_out; Dream: GQA k/v, biased q/k/v)."""
    path, w, hf = llada_ckpt if family == "llada" else dream_ckpt
    if family == "llada":
        adapter, pairs = llada_adapter
    else:
        pairs = random_pairs(w, DREAM_TARGETS, seed=1)
        adapter = write_adapter(tmp_path / "ad", pairs, peft_config(target_modules=DREAM_TARGETS))
    assert len(pairs) == (2 * 5 + 1 if family == "llada" else 2 * 5)
    merged = reference_merge(w, pairs, lambda m: ALPHA / R)
    model = jdllm.load(str(path), lora=adapter)
    assert_same_params(model, jdllm.load(write_checkpoint(tmp_path / "ref", merged, hf)))
    assert_logits_close(model, RefModel(merged, hf))


def test_adapter_name_half_precision_and_foreign_base_name(llada_ckpt, tmp_path):
    """Keys with an adapter name (`.lora_A.default.weight`), float16 tensors, and a base_model_name_or_path that
    names another model (loaded all the same)."""
    path, w, hf = llada_ckpt
    pairs = random_pairs(w, ["q_proj", "v_proj"], seed=2)
    pairs16 = {m: (a.astype(np.float16), b.astype(np.float16)) for m, (a, b) in pairs.items()}
    config = peft_config(target_modules=["q_proj", "v_proj"], base_model_name_or_path="some/other-model")
    adapter = write_adapter(tmp_path / "ad", pairs16, config, adapter_name="default", dtype=np.float16)
    assert read_lora(adapter).base_model_name_or_path == "some/other-model"
    merged = reference_merge(w, pairs16, lambda m: ALPHA / R)
    assert_same_params(jdllm.load(str(path), lora=adapter), jdllm.load(write_checkpoint(tmp_path / "ref", merged, hf)))


def test_rslora_rank_and_alpha_patterns(llada_ckpt, tmp_path):
    """use_rslora: s = alpha / sqrt(r); rank_pattern / alpha_pattern override r / alpha per module (PEFT matches a
    pattern against the end of the module path after a dot, or the whole path)."""
    path, w, hf = llada_ckpt
    q1 = "model.transformer.blocks.1.q_proj"
    ranks = {"model.transformer.blocks.0.k_proj": 2, "model.transformer.blocks.1.k_proj": 2, q1: 3}
    pairs = random_pairs(w, ["q_proj", "k_proj"], seed=3, ranks=ranks)
    config = peft_config(target_modules=["q_proj", "k_proj"], use_rslora=True,
                         rank_pattern={"k_proj": 2, q1: 3}, alpha_pattern={"blocks.0.q_proj": 5.0})

    def scale(module):
        r = ranks.get(module, R)
        alpha = 5.0 if module == "model.transformer.blocks.0.q_proj" else ALPHA
        return alpha / math.sqrt(r)

    adapter = write_adapter(tmp_path / "ad", pairs, config)
    merged = reference_merge(w, pairs, scale)
    assert_same_params(jdllm.load(str(path), lora=adapter), jdllm.load(write_checkpoint(tmp_path / "ref", merged, hf)))


def test_fan_in_fan_out_is_a_no_op_on_linear_layers_with_a_warning(llada_ckpt, llada_adapter, tmp_path):
    """PEFT resets fan_in_fan_out to false for nn.Linear targets (with a warning); so does jdllm."""
    path, _, _ = llada_ckpt
    _, pairs = llada_adapter
    adapter = write_adapter(tmp_path / "ad", pairs, peft_config(fan_in_fan_out=True))
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        got = jdllm.load(str(path), lora=adapter)
    assert_same_params(got, jdllm.load(str(path), lora=llada_adapter[0]), exact=True)


def test_orbax_base_and_sharded_loads_merge_the_same(llada_ckpt, llada_adapter, tmp_path):
    """An orbax base dir, and HF / orbax bases loaded onto a 2x4 mesh (each device merges its own slice): the
    same parameters as the one-device HF merge, bit for bit, with the mesh's shardings."""
    path, _, _ = llada_ckpt
    adapter, _ = llada_adapter
    want = jdllm.load(str(path), lora=adapter)
    jdllm.save(jdllm.load(str(path)), tmp_path / "orbax")
    assert_same_params(jdllm.load(tmp_path / "orbax", lora=adapter), want, exact=True)
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    mesh = jax.make_mesh((2, 4), ("data", "tensor"))
    for base in (str(path), tmp_path / "orbax"):
        got = jdllm.load(base, mesh=mesh, lora=adapter)
        assert_same_params(got, want, exact=True)
        q = got.blocks[0].q_proj.kernel[...]
        assert len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated


def test_save_lora_writes_the_peft_layout(llada_ckpt, tmp_path):
    """`save_lora` of jdllm-layout factors (down [in, r], up [r, out]; kernel += s * down @ up) writes PEFT's
    keys and layout (A = down^T, B = up^T), and loading it merges W + s * B @ A."""
    path, w, hf = llada_ckpt
    rng = np.random.default_rng(4)
    d = hf["d_model"]
    delta = {f"blocks.{i}.{m}.kernel": (rng.standard_normal((d, 2)).astype(np.float32),
                                        rng.standard_normal((2, d)).astype(np.float32))
             for i in range(hf["n_layers"]) for m in ("q_proj", "attn_out")}
    model_cfg = jdllm.load(str(path)).config
    save_lora(delta, model_cfg, tmp_path / "ad", r=2, alpha=6.0, target_modules=["q_proj", "attn_out"],
              base_model_name_or_path=str(path))
    tensors = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 6.0
    assert config["bias"] == "none" and sorted(config["target_modules"]) == ["attn_out", "q_proj"]
    a = tensors["base_model.model.model.transformer.blocks.1.attn_out.lora_A.weight"]
    b = tensors["base_model.model.model.transformer.blocks.1.attn_out.lora_B.weight"]
    np.testing.assert_array_equal(a, delta["blocks.1.attn_out.kernel"][0].T)
    np.testing.assert_array_equal(b, delta["blocks.1.attn_out.kernel"][1].T)
    assert len(tensors) == 2 * len(delta)
    pairs = {k[len("base_model.model."):-len(".lora_A.weight")]: (v, tensors[k.replace("lora_A", "lora_B")])
             for k, v in tensors.items() if ".lora_A." in k}
    merged = reference_merge(w, pairs, lambda m: 6.0 / 2)
    assert_same_params(jdllm.load(str(path), lora=tmp_path / "ad"),
                       jdllm.load(write_checkpoint(tmp_path / "ref", merged, hf)))


def test_save_lora_errors(llada_ckpt, tmp_path):
    path, _, hf = llada_ckpt
    cfg = jdllm.load(str(path)).config
    d = hf["d_model"]
    ok = (np.zeros((d, 2), np.float32), np.zeros((2, d), np.float32))
    with pytest.raises(ValueError, match="'blocks.0.attn_norm.weight' is not a linear kernel"):
        save_lora({"blocks.0.attn_norm.weight": ok}, cfg, tmp_path / "a", r=2, alpha=2, target_modules=["q_proj"])
    with pytest.raises(ValueError, match=r"down \(32, 3\) and up \(2, 32\) must be \[32, 2\] and \[2, 32\]"):
        save_lora({"blocks.0.q_proj.kernel": (np.zeros((d, 3)), ok[1])}, cfg, tmp_path / "a", r=2, alpha=2,
                  target_modules=["q_proj"])
    with pytest.raises(ValueError, match="blocks.0.k_proj is not selected by target_modules"):
        save_lora({"blocks.0.k_proj.kernel": ok}, cfg, tmp_path / "a", r=2, alpha=2, target_modules=["q_proj"])
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------------------------ bad adapters
Q0 = "base_model.model.model.transformer.blocks.0.q_proj"


def _edit_tensors(edit):
    def apply(directory):
        file = os.path.join(directory, "adapter_model.safetensors")
        tensors = load_file(file)
        edit(tensors)
        save_file(tensors, file)
    return apply


def _edit_config(**changes):
    def apply(directory):
        file = os.path.join(directory, "adapter_config.json")
        config = json.loads(open(file).read())
        config.update(changes)
        open(file, "w").write(json.dumps(config))
    return apply


def _rename(old, new):
    return _edit_tensors(lambda t: t.__setitem__(new, t.pop(old)))


BAD = {
    "no adapter_config.json": (lambda d: os.remove(os.path.join(d, "adapter_config.json")), FileNotFoundError,
                               r"has no adapter_config.json"),
    "pickled weights only": (lambda d: os.rename(os.path.join(d, "adapter_model.safetensors"),
                                                 os.path.join(d, "adapter_model.bin")),
                             FileNotFoundError, r"has no adapter_model.safetensors \(it holds adapter_model.bin"),
    "bias": (_edit_config(bias="all"), ValueError, r"adapter_config.json: bias='all' is not supported"),
    "lora_only bias": (_edit_config(bias="lora_only"), ValueError, r"bias='lora_only' is not supported"),
    "dora": (_edit_config(use_dora=True), ValueError, r"adapter_config.json: use_dora=True is not supported"),
    "lora bias": (_edit_config(lora_bias=True), ValueError, r"lora_bias=True is not supported"),
    "modules_to_save": (_edit_config(modules_to_save=["lm_head"]), ValueError,
                        r"adapter_config.json: modules_to_save=\['lm_head'\] is not supported"),
    "peft type": (_edit_config(peft_type="IA3"), ValueError, r"peft_type='IA3' is not supported"),
    "r zero": (_edit_config(r=0), ValueError, r"adapter_config.json: r must be a positive integer, got 0"),
    "r string": (_edit_config(r="4"), ValueError, r"r must be a positive integer, got '4'"),
    "alpha": (_edit_config(lora_alpha=None), ValueError, r"lora_alpha must be a finite number, got None"),
    "rank vs config": (_edit_config(r=3), ValueError,
                       r"adapter_model.safetensors: model.transformer.blocks.0.attn_out: lora_A \(4, 32\) and "
                       r"lora_B \(32, 4\) must be \[r, in\] and \[out, r\] with r=3"),
    "not targeted": (_edit_config(target_modules=["q_proj"]), ValueError,
                     r"'base_model.model.model.transformer.blocks.0.attn_out.lora_A.weight' adapts "
                     r"model.transformer.blocks.0.attn_out, which target_modules=\['q_proj'\]"),
    "regex not targeted": (_edit_config(target_modules=r".*\.q_proj"), ValueError, r"does not select"),
    "A without B": (_edit_tensors(lambda t: t.pop(f"{Q0}.lora_B.weight")), ValueError,
                    r"model.transformer.blocks.0.q_proj has lora_A but no lora_B"),
    "embedding LoRA": (_rename(f"{Q0}.lora_A.weight", "base_model.model.model.transformer.wte.lora_embedding_A"),
                       ValueError, r"'base_model.model.model.transformer.wte.lora_embedding_A' is not a LoRA weight"),
    "DoRA magnitude": (_edit_tensors(lambda t: t.__setitem__(f"{Q0}.lora_magnitude_vector", np.ones(32, np.float32))),
                       ValueError, r"lora_magnitude_vector' is not a LoRA weight"),
    "no prefix": (_rename(f"{Q0}.lora_A.weight", "model.transformer.blocks.0.q_proj.lora_A.weight"), ValueError,
                  r"'model.transformer.blocks.0.q_proj.lora_A.weight' is not a LoRA weight"),
    "two adapter names": (_rename(f"{Q0}.lora_A.weight", f"{Q0}.lora_A.other.weight"), ValueError,
                          r"holds several adapters"),
    "NaN": (_edit_tensors(lambda t: t[f"{Q0}.lora_B.weight"].__setitem__((0, 0), np.nan)), ValueError,
            rf"tensor '{Q0}.lora_B.weight' holds NaN/inf"),
    "int tensor": (_edit_tensors(lambda t: t.__setitem__(f"{Q0}.lora_A.weight", np.ones((4, 32), np.int32))),
                   ValueError, rf"tensor '{Q0}.lora_A.weight' has dtype int32, expected a float dtype"),
    "3-D tensor": (_edit_tensors(lambda t: t.__setitem__(f"{Q0}.lora_A.weight", np.ones((1, 4, 32), np.float32))),
                   ValueError, r"has shape \(1, 4, 32\), expected a 2-D LoRA matrix"),
    "bad json": (lambda d: open(os.path.join(d, "adapter_config.json"), "w").write("{r: 4"), ValueError,
                 r"adapter_config.json: not valid JSON"),
    "in mismatch": (_edit_tensors(lambda t: t.__setitem__(f"{Q0}.lora_A.weight", np.ones((4, 33), np.float32))),
                    ValueError, r"model.transformer.blocks.0.q_proj: lora_A \(4, 33\) and lora_B \(32, 4\) do not fit "
                                r"the base weight 'model.transformer.blocks.0.q_proj.weight' \[out=32, in=32\]"),
    "out mismatch": (_edit_tensors(lambda t: t.__setitem__(f"{Q0}.lora_B.weight", np.ones((31, 4), np.float32))),
                     ValueError, r"lora_B \(31, 4\) do not fit the base weight"),
}


def _move_q0_to_layer_5(directory):
    _edit_tensors(lambda t: t.update({k.replace("blocks.0.", "blocks.5."): t.pop(k)
                                      for k in list(t) if k.startswith(Q0)}))(directory)


def _adapt_a_norm(directory):
    _edit_config(target_modules=LLADA_TARGETS + ["attn_norm"])(directory)
    norm = "base_model.model.model.transformer.blocks.0.attn_norm"
    _edit_tensors(lambda t: t.update({f"{norm}.lora_A.weight": np.ones((4, 32), np.float32),
                                      f"{norm}.lora_B.weight": np.ones((32, 4), np.float32)}))(directory)


BAD["layer the base lacks"] = (
    _move_q0_to_layer_5, ValueError,
    r"adapter_model.safetensors: LoRA for model.transformer.blocks.5.q_proj maps to no linear weight of the llada "
    r"base model .* \(no tensor 'model.transformer.blocks.5.q_proj.weight'; the base has 2 layers\)")
BAD["norm weight"] = (_adapt_a_norm, ValueError,
                      r"LoRA for model.transformer.blocks.0.attn_norm maps to no linear weight")


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_adapter_is_refused_naming_file_and_key(case, llada_ckpt, llada_adapter, tmp_path):
    path, _, _ = llada_ckpt
    edit, error, message = BAD[case]
    directory = tmp_path / "ad"
    directory.mkdir()
    for name in os.listdir(llada_adapter[0]):
        (directory / name).write_bytes(open(os.path.join(llada_adapter[0], name), "rb").read())
    edit(str(directory))
    with pytest.raises(error, match=message):
        jdllm.load(str(path), lora=directory)


def test_missing_adapter_directory(llada_ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no LoRA adapter directory at {tmp_path / 'nope'}"):
        jdllm.load(str(llada_ckpt[0]), lora=tmp_path / "nope")


# --------------------------------------------------------------------------------------------------------- CLI
def test_cli_convert_merges_and_generate_passes_lora(llada_ckpt, llada_adapter, tmp_path, capsys):
    """`jdllm convert SRC DST --lora DIR` bakes the merge into a checkpoint; `jdllm generate --lora DIR` and
    `jdllm bench --lora DIR` hand the directory to the loader (a missing one is reported by name)."""
    from jdllm.cli import build_parser, main

    path, _, _ = llada_ckpt
    adapter, _ = llada_adapter
    assert main(["convert", str(path), str(tmp_path / "merged"), "--lora", adapter]) == 0
    assert_same_params(jdllm.load(tmp_path / "merged"), jdllm.load(str(path), lora=adapter), exact=True)
    assert main(["generate", "--lora", str(tmp_path / "none"), "2+2="]) == 2
    assert f"no LoRA adapter directory at {tmp_path / 'none'}" in capsys.readouterr().err
    assert build_parser().parse_args(["bench", "--lora", adapter]).lora == adapter
