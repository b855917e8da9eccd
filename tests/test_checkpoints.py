"""Checkpoint trust: every corrupt file / config is a ValueError naming the file (and tensor or key) and `load`
never returns a model for it; saves are atomic (a save frozen or killed at any point leaves the complete old or
the complete new checkpoint); one format per directory; `check_finite`; list-valued `eos_token_id`; orbax dtype.

Models here are built from numpy arrays (`model_from_arrays`), which compiles nothing. The safetensors layout
checks follow the format's specification (8-byte little-endian header length, JSON header, contiguous
data_offsets that fill the rest of the file), not jdllm's reader.
"""

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import jdllm
from jdllm.models import ModelConfig
from jdllm.weights.checkpoint_dir import atomic_checkpoint_dir
from jdllm.weights.hf import abstract_model, model_from_arrays, save_hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN_F = "model.transformer.ln_f.weight"


def make_model(seed: int = 0, rope_theta: float = 10000.0, nan_at: tuple | None = None, **kw):
    """A tiny LLaDA model with N(0, 0.5) weights from numpy (`seed`); `rope_theta` tells configs apart."""
    cfg = ModelConfig(family="llada", vocab_size=40, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                      mlp_hidden_size=32, max_seq_len=64, mask_id=39, eos_id=38, pad_id=37, rope_theta=rope_theta,
                      **kw)
    _, abstract = abstract_model(cfg)
    rng = np.random.default_rng(seed)
    arrays = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(abstract)):
        key = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
        arrays[key] = (rng.standard_normal(leaf.shape) * 0.5).astype(np.float32)
    if nan_at is not None:
        arrays[nan_at][(0,) * arrays[nan_at].ndim] = np.nan
    return model_from_arrays(cfg, {k: jax.numpy.asarray(v) for k, v in arrays.items()})


def params_of(model) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}


def same_model(a, b) -> bool:
    pa, pb = params_of(a), params_of(b)
    return a.config == b.config and pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def model():
    return make_model(0)


# ------------------------------------------------------------------------------------------- safetensors files
def split_file(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_file(header: dict, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def edit_header(edit):
    def apply(raw: bytes) -> bytes:
        header, data = split_file(raw)
        edit(header)
        return join_file(header, data)
    return apply


def _set(name, field, value):
    return edit_header(lambda h: h[name].__setitem__(field, value))


def _span(name, delta_begin, delta_end):
    def edit(h):
        b, e = h[name]["data_offsets"]
        h[name]["data_offsets"] = [b + delta_begin, e + delta_end]
    return edit_header(edit)


def _first_tensor(h):
    return min((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])


def _overlap(h):
    first = h[_first_tensor(h)]["data_offsets"]
    h[LN_F]["data_offsets"] = [first[0], first[0] + 64]


def _extra_beyond_end(h):
    end = max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
    h["model.transformer.extra"] = {"dtype": "F32", "shape": [4], "data_offsets": [end, end + 16]}


SAFETENSORS_CASES = {
    # name: (raw bytes -> corrupted bytes, regex the error must match after the file name)
    "truncated_to_4_bytes": (lambda r: r[:4], r"4 bytes, shorter than the 8-byte header length"),
    "truncated_in_header": (lambda r: r[:40], r"header length \d+ exceeds the 32 bytes"),
    "truncated_in_data": (lambda r: r[: len(r) // 2], r"the header's tensors end at byte \d+, but the file has \d+ bytes \(truncated"),
    "truncated_by_one_byte": (lambda r: r[:-1], r"the header's tensors end at byte \d+, but the file has \d+ bytes \(truncated"),
    "trailing_bytes": (lambda r: r + b"\0" * 8, r"the header's tensors end at byte \d+, but the file has \d+ bytes$"),
    "huge_header_length": (lambda r: struct.pack("<Q", 2**62) + r[8:], r"header length 4611686018427387904 exceeds"),
    "header_not_json": (lambda r: r[:8] + b"{" + b"\xff" * (struct.unpack("<Q", r[:8])[0] - 1) + r[8 + struct.unpack("<Q", r[:8])[0]:],
                        r"header is not valid JSON"),
    "header_not_object": (lambda r: join_file([1, 2], split_file(r)[1]), r"header is a JSON list, not an object"),
    "unknown_dtype": (_set(LN_F, "dtype", "F33"), rf"tensor '{LN_F}': unsupported dtype 'F33'"),
    "shape_not_list": (_set(LN_F, "shape", "16"), rf"tensor '{LN_F}': shape '16' is not a list"),
    "negative_offset": (_span(LN_F, -10**9, 0), rf"tensor '{LN_F}': data_offsets \[-\d+, \d+\] is not \[begin, end\]"),
    "span_wrong_size": (_span(LN_F, 0, -4), rf"tensor '{LN_F}': data_offsets \[\d+, \d+\] span 60 bytes, but F32 x \[16\] needs 64"),
    "overlapping_offsets": (edit_header(_overlap), r"tensor '.*': data_offsets \[\d+, \d+\] overlaps the previous tensor"),
    "offsets_beyond_file": (edit_header(_extra_beyond_end), r"the header's tensors end at byte \d+, but the file has \d+ bytes \(truncated"),
    "missing_offsets": (edit_header(lambda h: h[LN_F].pop("data_offsets")), rf"tensor '{LN_F}': entry must hold"),
    "integer_weight": (_set(LN_F, "dtype", "I32"), rf"tensor '{LN_F}' has dtype int32, expected a float dtype"),
    "truncated_to_7_bytes": (lambda r: r[:7], r"7 bytes, shorter than the 8-byte header length"),
    "shape_of_floats": (_set(LN_F, "shape", [16.0]), rf"tensor '{LN_F}': shape \[16.0\] is not a list of non-negative"),
    "negative_dim": (_set(LN_F, "shape", [-16]), rf"tensor '{LN_F}': shape \[-16\] is not a list of non-negative"),
    "three_offsets": (edit_header(lambda h: h[LN_F].__setitem__("data_offsets", h[LN_F]["data_offsets"] + [0])),
                      rf"tensor '{LN_F}': data_offsets \[\d+, \d+, 0\] is not \[begin, end\]"),
    "reversed_offsets": (edit_header(lambda h: h[LN_F].__setitem__("data_offsets", h[LN_F]["data_offsets"][::-1])),
                         rf"tensor '{LN_F}': data_offsets \[\d+, \d+\] is not \[begin, end\]"),
}


def test_empty_tensor_is_a_valid_safetensors_entry(tmp_path):
    """A zero-size dimension with begin == end is valid safetensors (the format allows empty tensors)."""
    from jdllm.weights.safetensors_io import read_header

    f = tmp_path / "empty.safetensors"
    f.write_bytes(join_file({"a": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]},
                             "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8))
    header, _ = read_header(str(f))
    assert header["a"]["shape"] == [0, 4] and header["b"]["data_offsets"] == [0, 8]


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_corrupt_safetensors_is_named(tmp_path, model, case):
    corrupt, message = SAFETENSORS_CASES[case]
    d = tmp_path / "m"
    save_hf(model, d)
    f = d / "model.safetensors"
    f.write_bytes(corrupt(f.read_bytes()))
    with pytest.raises(ValueError, match=rf"^{f}: (not a valid safetensors file: )?{message}"):
        jdllm.load(d)


# --------------------------------------------------------------------------------------------- HF config.json
def _conf(edit):
    def apply(conf: dict) -> dict:
        edit(conf)
        return conf
    return apply


CONFIG_CASES = {
    "missing_key": (_conf(lambda c: c.pop("d_model")), r"key 'd_model' is missing"),
    "int_as_string": (_conf(lambda c: c.__setitem__("n_layers", "2")), r"key 'n_layers' must be an integer, got '2'"),
    "fractional_int": (_conf(lambda c: c.__setitem__("n_heads", 4.5)), r"key 'n_heads' must be an integer, got 4.5"),
    "float_as_string": (_conf(lambda c: c.__setitem__("rope_theta", "1e4")), r"key 'rope_theta' must be a number"),
    "bool_as_string": (_conf(lambda c: c.__setitem__("weight_tying", "no")), r"key 'weight_tying' must be true or false"),
    "eos_list_of_strings": (_conf(lambda c: c.__setitem__("eos_token_id", [38, "x"])),
                            r"key 'eos_token_id' must be an integer or a non-empty list of integers"),
    "eos_empty_list": (_conf(lambda c: c.__setitem__("eos_token_id", [])), r"key 'eos_token_id' must be"),
    "pad_list": (_conf(lambda c: c.__setitem__("pad_token_id", [37])), r"key 'pad_token_id' must be an integer"),
    "mask_outside_vocab": (_conf(lambda c: c.__setitem__("mask_token_id", 99)), r"mask_id=99 outside the vocabulary of 40"),
    "unknown_family": (lambda c: {"model_type": "gpt2", "n_layer": 2}, r"unsupported model_type 'gpt2'"),
    "not_an_object": (lambda c: [c], r"must hold a JSON object, got list"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_json_is_named(tmp_path, model, case):
    edit, message = CONFIG_CASES[case]
    d = tmp_path / "m"
    save_hf(model, d)
    f = d / "config.json"
    f.write_text(json.dumps(edit(json.loads(f.read_text()))))
    with pytest.raises(ValueError, match=rf"^{f}: {message}"):
        jdllm.load(d)


def test_config_json_not_json(tmp_path, model):
    save_hf(model, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"d_model": 16,')
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'm' / 'config.json'}: not valid JSON"):
        jdllm.load(tmp_path / "m")


# ------------------------------------------------------------------------------------------------ index files
def _index_case(edit):
    def apply(d):
        p = d / "model.safetensors.index.json"
        p.write_text(edit(p.read_text()))
    return apply


def _drop_entry(text):
    index = json.loads(text)
    index["weight_map"].pop(LN_F)
    return json.dumps(index)


def _point_at_missing(text):
    index = json.loads(text)
    index["weight_map"][LN_F] = "model-00009-of-00009.safetensors"
    return json.dumps(index)


INDEX_CASES = {
    "index_not_json": (_index_case(lambda t: t[:-5]), r"model\.safetensors\.index\.json: not valid JSON"),
    "index_without_weight_map": (_index_case(lambda t: "{}"), r"model\.safetensors\.index\.json: needs a 'weight_map'"),
    "index_names_missing_file": (_index_case(_point_at_missing),
                                 rf"model\.safetensors\.index\.json: lists model-00009-of-00009\.safetensors \(for '{LN_F}'"),
    "index_omits_a_tensor": (_index_case(_drop_entry), rf"model-0000\d-of-00002\.safetensors: holds tensor '{LN_F}', "
                                                       r"which .*index\.json does not list"),
    "index_path_escapes": (_index_case(lambda t: t.replace('"model-00001-of-00002', '"../model-00001-of-00002')),
                           r"model\.safetensors\.index\.json: weight_map names '\.\./model-00001-of-00002\.safetensors', not a \.safetensors file"),
    "file_deleted": (lambda d: os.remove(d / "model-00002-of-00002.safetensors"),
                     r"model\.safetensors\.index\.json: lists model-00002-of-00002\.safetensors \(for '.*' and \d+ more\), which is not in"),
}


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_bad_sharded_checkpoint_is_named(tmp_path, model, case):
    damage, message = INDEX_CASES[case]
    d = tmp_path / "m"
    save_hf(model, d, n_files=2)
    damage(d)
    with pytest.raises(ValueError, match=rf"^{d}/{message}"):
        jdllm.load(d)


# ------------------------------------------------------------------------------------------ orbax checkpoints
def _largest_file(root):
    files = [os.path.join(h, f) for h, _, fs in os.walk(root) for f in fs]
    return max(files, key=os.path.getsize)


def _garble_largest(d):
    path = _largest_file(d / "params")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.write(os.urandom(size))


def _edit_orbax_config(edit):
    def apply(d):
        p = d / "jdllm_config.json"
        conf = json.loads(p.read_text())
        edit(conf)
        p.write_text(json.dumps(conf))
    return apply


ORBAX_CASES = {
    "config_missing_field": (_edit_orbax_config(lambda c: c.pop("d_model")),
                             r"jdllm_config\.json: missing ModelConfig fields: \['d_model'\]"),
    "config_unknown_field": (_edit_orbax_config(lambda c: c.__setitem__("n_experts", 8)),
                             r"jdllm_config\.json: unknown ModelConfig fields: \['n_experts'\]"),
    "config_not_json": (lambda d: (d / "jdllm_config.json").write_text("{"), r"jdllm_config\.json: not valid JSON"),
    "config_deleted": (lambda d: os.remove(d / "jdllm_config.json"), r": orbax checkpoint without jdllm_config\.json"),
    "params_deleted": (lambda d: shutil.rmtree(d / "params"), r": orbax checkpoint without its params/ directory"),
    "params_for_other_shapes": (_edit_orbax_config(lambda c: c.__setitem__("n_layers", 3)),
                                r"/params: orbax could not restore the parameters"),
    "params_garbled": (_garble_largest, r"/params: orbax could not restore the parameters"),
    "params_truncated": (lambda d: os.truncate(_largest_file(d / "params"), 10),
                         r"/params: orbax could not restore the parameters"),
}


@pytest.mark.parametrize("case", sorted(ORBAX_CASES))
def test_damaged_orbax_checkpoint_is_named(tmp_path, model, case):
    damage, message = ORBAX_CASES[case]
    d = tmp_path / "o"
    jdllm.save(model, d)
    damage(d)
    with pytest.raises(ValueError, match=rf"^{d}.*{message}"):
        jdllm.load(d)


def test_orbax_load_casts_to_dtype(tmp_path, model):
    jdllm.save(model, tmp_path / "o")
    m16 = jdllm.load(tmp_path / "o", dtype="bfloat16")
    assert m16.config == model.config.replace(dtype="bfloat16")
    want = params_of(model)
    for name, value in params_of(m16).items():
        assert value.dtype == np.dtype(ml_dtypes.bfloat16), name
        np.testing.assert_array_equal(value, want[name].astype(ml_dtypes.bfloat16), err_msg=name)


# ----------------------------------------------------------------------------------------------- NaN weights
@pytest.mark.parametrize("fmt", ["hf", "orbax"])
def test_check_finite_names_the_first_bad_tensor(tmp_path, fmt):
    bad = make_model(0, nan_at=("blocks", 1, "up_proj", "kernel"))
    jdllm.save(bad, tmp_path / "n", format=fmt)
    where = (r"model\.safetensors: tensor 'model\.transformer\.blocks\.1\.up_proj\.weight'" if fmt == "hf"
             else r"params: parameter blocks\.1\.up_proj\.kernel")
    with pytest.raises(ValueError, match=rf"{where}: 1 of 512 values are NaN/inf .*check_finite=True"):
        jdllm.load(tmp_path / "n", check_finite=True)
    assert np.isnan(params_of(jdllm.load(tmp_path / "n"))["['blocks'][1]['up_proj']['kernel']"]).sum() == 1


# ------------------------------------------------------------------------------------------- list-valued EOS
def test_eos_token_id_list_is_kept_as_a_hashable_tuple(tmp_path, model):
    save_hf(model, tmp_path / "e")
    conf = json.loads((tmp_path / "e" / "config.json").read_text())
    conf["eos_token_id"] = [38, 36, 38, 35]  # HF: generation ends on any; the first is the primary EOS
    (tmp_path / "e" / "config.json").write_text(json.dumps(conf))
    m = jdllm.load(tmp_path / "e")
    assert (m.config.eos_id, m.config.extra_eos_ids, m.config.eos_ids) == (38, (36, 35), (38, 36, 35))
    hash(m.config)
    jdllm.save(m, tmp_path / "h", format="hf")
    assert json.loads((tmp_path / "h" / "config.json").read_text())["eos_token_id"] == [38, 36, 35]
    jdllm.save(m, tmp_path / "o")
    assert jdllm.load(tmp_path / "o").config == m.config


@pytest.mark.slow
def test_generate_runs_with_a_list_valued_eos():
    m = make_model(0, extra_eos_ids=(36, 35))
    out = jdllm.generate(m, [[1, 2, 3]], gen_length=4, block_length=2, steps=4, eos_early_stop=True)
    assert out.tokens.shape == (1, 4)


def test_early_stop_ends_a_row_on_any_eos_id():
    from jdllm.decode.schedules import SemiAutoregressive

    sched = SemiAutoregressive(gen_length=8, block_length=4, eos_early_stop=True)
    window = np.array([[5, 36, 5, 5], [5, 38, 5, 5], [5, 6, 7, 8]], np.int32)
    state = sched.init(3)
    _, done, fill = sched.advance(state, sched.window(state), window, window, np.ones(3, bool), 39, (38, 36))
    assert np.asarray(fill).tolist() == [True, True, False] and np.asarray(done).tolist() == [True, True, False]


def test_model_config_refuses_an_unhashable_special_id():
    with pytest.raises(ValueError, match=r"eos_id must be an integer or None, got \[1, 2\]"):
        ModelConfig(family="llada", vocab_size=40, d_model=16, n_layers=1, n_heads=4, n_kv_heads=4,
                    mlp_hidden_size=32, max_seq_len=64, mask_id=39, eos_id=[1, 2])


# --------------------------------------------------------------------------------- one format, atomic saves
def test_load_refuses_two_formats_in_one_directory(tmp_path, model):
    jdllm.save(model, tmp_path / "o")
    save_hf(model, tmp_path / "h")
    shutil.copy(tmp_path / "h" / "model.safetensors", tmp_path / "o")
    with pytest.raises(ValueError, match=r"holds two checkpoint formats: orbax \(jdllm_config\.json, params\) "
                                         r"and HF \(model\.safetensors\)"):
        jdllm.load(tmp_path / "o")


def test_save_replaces_the_other_format_and_carries_other_files(tmp_path, model):
    d = tmp_path / "m"
    jdllm.save(model, d, format="orbax")
    (d / "tokenizer.json").write_text("{}")
    (d / "notes").mkdir()
    (d / "notes" / "a.txt").write_text("kept")
    new = make_model(1, rope_theta=20000.0)
    jdllm.save(new, d, format="hf")
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "notes", "tokenizer.json"]
    assert (d / "notes" / "a.txt").read_text() == "kept"
    assert same_model(jdllm.load(d), new)
    jdllm.save(model, d, format="orbax")
    assert sorted(os.listdir(d)) == ["jdllm_config.json", "notes", "params", "tokenizer.json"]
    assert same_model(jdllm.load(d), model)
    assert not [n for n in os.listdir(tmp_path) if n != "m"]


def test_save_refuses_a_directory_that_is_not_a_checkpoint(tmp_path, model):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match=r"holds files \(thesis\.tex\.\.\.\) but no checkpoint"):
        jdllm.save(model, tmp_path / "home", format="hf")
    assert os.listdir(tmp_path / "home") == ["thesis.tex"] and os.listdir(tmp_path) == ["home"]


def test_failed_save_leaves_the_old_checkpoint_and_no_temporary(tmp_path, model):
    d = tmp_path / "m"
    save_hf(model, d)
    before = {n: (d / n).read_bytes() for n in os.listdir(d)}
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_checkpoint_dir(d) as tmp:
            (open(os.path.join(tmp, "config.json"), "w")).close()
            raise RuntimeError("disk full")
    assert {n: (d / n).read_bytes() for n in os.listdir(d)} == before
    assert os.listdir(tmp_path) == ["m"]


def test_leftovers_of_a_killed_save_are_ignored_then_removed(tmp_path, model):
    d = tmp_path / "m"
    save_hf(model, d)
    dead = tmp_path / ".m.jdllm-save-999999999-dead"  # no such pid
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    assert same_model(jdllm.load(d), model)
    shutil.rmtree(d)
    with pytest.raises(FileNotFoundError, match=r"no model directory at .*/m \(an interrupted save left .*jdllm-save"):
        jdllm.load(d)
    save_hf(model, d)
    assert os.listdir(tmp_path) == ["m"]


# ------------------------------------------------------------------------------------------------ kill test
CHILD = """
import sys
import jdllm
from tests.test_checkpoints import make_model
target = sys.argv[1]
models = [make_model(0), make_model(1, rope_theta=20000.0)]
order = [(0, "hf"), (1, "orbax"), (0, "orbax"), (1, "hf")]
print("ready", flush=True)
i = 0
while True:
    k, fmt = order[i % 4]
    jdllm.save(models[k], target, format=fmt)
    i += 1
"""


def freeze_and_load(proc, work, snap, seed, n_samples):
    """Stop the saving process at random moments, copy the directory as the stop left it (a killed process
    leaves the same files), and load the copy. Returns the outcomes: 0 / 1 (which model) or an error text.
    Samples `n_samples` times, and on (up to 4x as many) until both models were seen: a loaded machine saves
    slowly, and ten samples can all fall inside one slow save."""
    rng = random.Random(seed)
    models = [make_model(0), make_model(1, rope_theta=20000.0)]
    outcomes = []
    for s in range(4 * n_samples):
        if s >= n_samples and {0, 1} <= set(outcomes):
            break
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGSTOP)
        copy = snap / f"s{s}"
        shutil.copytree(work, copy, symlinks=True)
        proc.send_signal(signal.SIGCONT)
        try:
            loaded = jdllm.load(copy / "ckpt")
        except FileNotFoundError as e:  # only between the two renames of the non-Linux fallback
            assert "an interrupted save left" in str(e), e
            outcomes.append(str(e))
            continue
        which = [k for k, m in enumerate(models) if same_model(loaded, m)]
        assert which, f"sample {s}: the directory loads a model that is neither the old nor the new one"
        outcomes.append(which[0])
    return outcomes


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_a_save_stopped_or_killed_at_random_points_loads_old_or_new(tmp_path, seed):
    work, snap = tmp_path / "work", tmp_path / "snap"
    work.mkdir()
    snap.mkdir()
    jdllm.save(make_model(1, rope_theta=20000.0), work / "ckpt", format="hf")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(work / "ckpt")], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        outcomes = freeze_and_load(proc, work, snap, seed, n_samples=10 if seed == 0 else 40)
        time.sleep(random.Random(seed).uniform(0.0, 0.4))
    finally:
        proc.kill()
        proc.wait()
    assert set(outcomes) >= {0, 1}, f"the saves did not progress while sampled: {outcomes}"
    assert same_model(jdllm.load(work / "ckpt"), make_model(0)) or same_model(
        jdllm.load(work / "ckpt"), make_model(1, rope_theta=20000.0))
    jdllm.save(make_model(0), work / "ckpt", format="hf")  # the next save removes the killed save's leftovers
    assert os.listdir(work) == ["ckpt"]


@pytest.mark.parametrize("command", ["generate", "convert"])
def test_cli_refuses_non_finite_weights(tmp_path, capsys, command):
    from jdllm.cli import main
    from jdllm.shipped import default_model_dir
    from jdllm.weights.safetensors_io import SafetensorsFile, save_file

    d = tmp_path / "nan"
    shutil.copytree(default_model_dir(), d)
    st = SafetensorsFile(d / "model.safetensors")
    tensors = {n: np.array(st.get(n)) for n in st.names()}
    del st
    tensors[LN_F][3] = np.inf
    save_file(tensors, d / "model.safetensors")
    argv = ["generate", "--model", str(d), "1+1="] if command == "generate" else ["convert", str(d), str(tmp_path / "o")]
    assert main(argv) == 2
    assert f"{d / 'model.safetensors'}: tensor '{LN_F}': 1 of" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------- swap, carry-over, leftovers
def _renameat2_swaps(a: str, b: str) -> bool:
    """Independent probe: does this kernel + filesystem swap two directories with renameat2(RENAME_EXCHANGE)?"""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True) if name else None
    if libc is None or not hasattr(libc, "renameat2"):
        return False
    return libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0  # AT_FDCWD, RENAME_EXCHANGE


@pytest.fixture
def exchange_supported(tmp_path):
    a, b = tmp_path / "probe_a", tmp_path / "probe_b"
    a.mkdir(), b.mkdir()
    ok = _renameat2_swaps(str(a), str(b))
    shutil.rmtree(a), shutil.rmtree(b)
    if not ok:
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the rename fallback is used")


def test_exchange_swaps_relative_paths_and_names_a_missing_one(tmp_path, monkeypatch, exchange_supported):
    from jdllm.weights.checkpoint_dir import _exchange

    monkeypatch.chdir(tmp_path)
    os.mkdir("a"), os.mkdir("b")
    (tmp_path / "a" / "x").write_text("in a")
    assert _exchange("a", "b") is True  # relative paths resolve against the working directory (AT_FDCWD)
    assert (tmp_path / "b" / "x").read_text() == "in a" and os.listdir("a") == []
    with pytest.raises(FileNotFoundError, match="cannot swap a and missing"):
        _exchange("a", "missing")  # a real error is raised, not taken for "unsupported"


def test_save_keeps_symlinks_among_the_carried_over_files(tmp_path, model):
    d, outside = tmp_path / "m", tmp_path / "shared_tokenizer.json"
    outside.write_text("{}")
    save_hf(model, d)
    os.symlink(outside, d / "tokenizer.json")
    (d / "extra").mkdir()
    os.symlink(outside, d / "extra" / "tok.json")
    jdllm.save(make_model(1, rope_theta=20000.0), d, format="hf")
    assert os.path.islink(d / "tokenizer.json") and os.readlink(d / "tokenizer.json") == str(outside)
    assert os.path.islink(d / "extra" / "tok.json")


def test_a_writer_that_fails_after_removing_the_temporary_raises_its_own_error(tmp_path):
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_checkpoint_dir(tmp_path / "m") as tmp:
            shutil.rmtree(tmp)
            raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == []


def test_leftovers_of_a_live_save_are_kept(tmp_path, model):
    """A leftover named after a running process (another save in progress) is not deleted; a dead one is."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".m.jdllm-save-{sleeper.pid}-abcdef12"
        dead = tmp_path / ".m.jdllm-save-999999999-abcdef12"
        live.mkdir(), dead.mkdir()
        save_hf(model, tmp_path / "m")
        assert sorted(os.listdir(tmp_path)) == sorted([live.name, "m"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_tied_embeddings_round_trip_without_an_lm_head(tmp_path):
    from jdllm.weights.keymaps import expected_names

    tied = make_model(0, tie_embeddings=True)
    names = expected_names(tied.config)
    assert "lm_head.weight" not in names and "model.transformer.ff_out.weight" not in names
    assert any(n.endswith("wte.weight") for n in names) and len(names) > 3
    save_hf(tied, tmp_path / "t")
    assert same_model(jdllm.load(tmp_path / "t"), tied)
