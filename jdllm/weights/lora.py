"""PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`) merged into a base model at load.

A PEFT LoRA layer computes `W x + s * B A x` with torch-layout `A: [r, in]`, `B: [out, r]` and
`s = lora_alpha / r` (`lora_alpha / sqrt(r)` with `use_rslora`; huggingface/peft `tuners/lora/layer.py`,
`update_layer`), so merging gives `W_eff = W + s * B @ A` (PEFT `merge_and_unload`). jdllm kernels are
`[in, out]` (`keymaps.Rule` transform "T"): the kernel gains `s * A^T @ B^T`. The sum is taken in float32 on the
host before the cast to the model dtype, one device slice at a time for sharded loads (`kernel_delta(index)`).

Key names are those PEFT's `get_peft_model_state_dict` writes:
`base_model.model.<HF module path>.lora_A.weight` / `.lora_B.weight`, optionally with one adapter name
(`.lora_A.default.weight`); the module path + `.weight` is looked up in the family's key map (`keymaps.py`).
`rank_pattern` / `alpha_pattern` override r / lora_alpha per module as PEFT matches them (`utils.other.
get_pattern_key`: the pattern equals the module path or matches its end after a dot). Options that change the
layer beyond `W + s B A` (DoRA, LoRA biases, `bias != "none"`, `modules_to_save`, ...) are refused, not ignored.
The D2F adapters (SJTU-Deng-Lab/D2F_LLaDA_Instruct_8B_Lora, D2F_Dream_Base_7B_Lora; arXiv 2508.09192) are of
this kind: r = lora_alpha = 32 on the attention projections.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from typing import Mapping, Sequence

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jaxtyping import Float

from jdllm.models.config import ModelConfig
from jdllm.weights.checkpoint_dir import atomic_checkpoint_dir, read_json_object
from jdllm.weights.keymaps import expected_names
from jdllm.weights.safetensors_io import SafetensorsFile, save_file

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")

# adapter_config.json options whose non-default value changes the layer beyond W + s * B @ A: (key, default).
_REFUSED = (
    ("bias", "none"), ("use_dora", False), ("lora_bias", False), ("modules_to_save", None),
    ("layer_replication", None), ("target_parameters", None), ("trainable_token_indices", None),
    ("alora_invocation_tokens", None), ("use_qalora", False),
)


@dataclasses.dataclass(frozen=True)
class LoraPair:
    """One adapted linear layer: the module's weight gains `scale * b @ a` (torch layout)."""

    module: str  # HF module path, e.g. "model.layers.0.self_attn.q_proj"
    a: Float[np.ndarray, "r d_in"]
    b: Float[np.ndarray, "d_out r"]
    scale: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def kernel_delta(self, index: tuple = ()) -> Float[np.ndarray, "d_in d_out"]:
        """`scale * A^T @ B^T` (float32), the change of the jdllm `[in, out]` kernel, or of its slice `index`
        (a device's shard, as `jax.make_array_from_callback` names it)."""
        rows = index[0] if len(index) > 0 else slice(None)
        cols = index[1] if len(index) > 1 else slice(None)
        return (np.float32(self.scale) * (self.a[:, rows].T @ self.b[cols, :].T)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LoraAdapter:
    """A read and checked PEFT LoRA adapter directory; `pairs` maps HF module path -> `LoraPair`."""

    directory: str
    config: dict
    pairs: dict[str, LoraPair]

    @property
    def weights_path(self) -> str:
        return os.path.join(self.directory, ADAPTER_WEIGHTS)

    @property
    def base_model_name_or_path(self) -> str | None:
        return self.config.get("base_model_name_or_path")


def _config_error(path: str, key: str, value, allowed: str) -> ValueError:
    return ValueError(f"{path}: {key}={value!r} is not supported (allowed: {allowed}); jdllm merges plain LoRA "
                      "(W + scale * B @ A) only and refuses options it would otherwise ignore")


def _check_config(path: str, config: dict) -> None:
    """Refuse a config jdllm cannot merge exactly; ValueError naming the file, the key and what is allowed."""
    if config.get("peft_type", "LORA") != "LORA":
        raise _config_error(path, "peft_type", config["peft_type"], "'LORA'")
    r = config.get("r")
    if type(r) is not int or r < 1:
        raise ValueError(f"{path}: r must be a positive integer, got {r!r}")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"{path}: lora_alpha must be a finite number, got {alpha!r}")
    if not isinstance(config.get("use_rslora", False), bool):
        raise ValueError(f"{path}: use_rslora must be true or false, got {config['use_rslora']!r}")
    for key, default in _REFUSED:
        value = config.get(key, default)
        if value not in (default, None, [], {}):
            raise _config_error(path, key, value, repr(default))
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise ValueError(f"{path}: {key} must be an object of module pattern -> value, got {config[key]!r}")
    targets = config.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise ValueError(f"{path}: target_modules must be a list of module names or a regex string, got {targets!r}")
    if config.get("fan_in_fan_out"):  # PEFT resets it for nn.Linear targets (every jdllm target) with a warning
        warnings.warn(f"{path}: fan_in_fan_out=true has no effect on nn.Linear layers (PEFT sets it to false for "
                      "them); merging as W + scale * B @ A", stacklevel=3)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's per-module override (`get_pattern_key`): an exact key, else the first pattern matching the end
    of the module path after a dot."""
    if module in patterns:
        return patterns[module]
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _targeted(targets, module: str) -> bool:
    """PEFT's `check_target_module_exists` for a list (exact name or `.name` suffix) or a regex string."""
    if targets is None or targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return module in targets or any(module.endswith("." + t) for t in targets)


def _scale(config: dict, module: str) -> tuple[int, float]:
    """(r, scale) of one module: alpha / r, or alpha / sqrt(r) with use_rslora (PEFT `update_layer`)."""
    r = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
    return r, alpha / math.sqrt(r) if config.get("use_rslora", False) else alpha / r


def _float_array(st: SafetensorsFile, key: str) -> np.ndarray:
    dtype = st.dtype(key)
    if not (np.issubdtype(dtype, np.floating) or dtype == np.dtype(ml_dtypes.bfloat16)):
        raise ValueError(f"{st.path}: tensor {key!r} has dtype {dtype}, expected a float dtype")
    arr = np.asarray(st.get(key), np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{st.path}: tensor {key!r} has shape {arr.shape}, expected a 2-D LoRA matrix")
    if not np.isfinite(arr).all():
        raise ValueError(f"{st.path}: tensor {key!r} holds NaN/inf values")
    return arr


def _split_key(path: str, key: str) -> tuple[str, str, str | None]:
    """(module, "A" | "B", adapter name or None) of a PEFT key; ValueError naming the file and key otherwise."""
    match = _KEY.match(key[len(PREFIX):]) if key.startswith(PREFIX) else None
    if match is None:
        raise ValueError(f"{path}: tensor {key!r} is not a LoRA weight 'base_model.model.<module>.lora_A.weight' / "
                         "'.lora_B.weight' (LoRA on embeddings, DoRA magnitudes, biases and modules_to_save "
                         "are not supported)")
    return match["module"], match["part"], match["adapter"]


def read_lora(directory: str | os.PathLike) -> LoraAdapter:
    """Read and check a PEFT LoRA adapter directory (independently of any base model).

    ValueError / FileNotFoundError naming the file (and key) on: a missing directory, `adapter_config.json` or
    `adapter_model.safetensors` (a pickled `adapter_model.bin` is not read), an unsupported option
    (`_REFUSED`, peft_type, bad r / lora_alpha), a key that is not a LoRA A/B weight, a module outside
    `target_modules`, an A without its B (or the reverse), several adapter names, a non-float / non-2-D / NaN
    tensor, or a rank that disagrees between A, B and the config (`r`, `rank_pattern`).
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no LoRA adapter directory at {directory}")
    config_path, weights_path = os.path.join(directory, ADAPTER_CONFIG), os.path.join(directory, ADAPTER_WEIGHTS)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory} has no {ADAPTER_CONFIG}: not a PEFT adapter directory")
    if not os.path.isfile(weights_path):
        other = " (it holds adapter_model.bin, a pickle jdllm does not read: save it again with " \
                "safe_serialization=True)" if os.path.exists(os.path.join(directory, "adapter_model.bin")) else ""
        raise FileNotFoundError(f"{directory} has no {ADAPTER_WEIGHTS}{other}")
    config = read_json_object(config_path)
    _check_config(config_path, config)
    st = SafetensorsFile(weights_path)
    parts: dict[str, dict[str, np.ndarray]] = {}
    adapters = set()
    for key in sorted(st.names()):
        module, part, adapter = _split_key(weights_path, key)
        adapters.add(adapter)
        if not _targeted(config.get("target_modules"), module):
            raise ValueError(f"{weights_path}: tensor {key!r} adapts {module}, which target_modules="
                             f"{config.get('target_modules')!r} of {config_path} does not select")
        parts.setdefault(module, {})[part] = _float_array(st, key)
    if len(adapters) > 1:
        raise ValueError(f"{weights_path}: holds several adapters ({sorted(map(str, adapters))}); keep one")
    pairs = {}
    for module, ab in parts.items():
        missing = {"A", "B"} - set(ab)
        if missing:
            raise ValueError(f"{weights_path}: {module} has lora_{''.join(set(ab))} but no lora_{missing.pop()}")
        r, scale = _scale(config, module)
        a, b = ab["A"], ab["B"]
        if a.shape[0] != r or b.shape[1] != r:
            raise ValueError(f"{weights_path}: {module}: lora_A {a.shape} and lora_B {b.shape} must be [r, in] "
                             f"and [out, r] with r={r} ({config_path}: r / rank_pattern)")
        pairs[module] = LoraPair(module, a, b, float(scale))
    if not pairs:
        raise ValueError(f"{weights_path}: holds no LoRA weights")
    return LoraAdapter(directory, config, pairs)


def resolve_lora(adapter: LoraAdapter, cfg: ModelConfig, kernel_shapes: Mapping[tuple, tuple],
                 base: str) -> dict[str, tuple[tuple, LoraPair]]:
    """HF weight name -> (jdllm param path tuple, pair) for each adapted module of a base model `cfg`
    (`kernel_shapes`: param path tuple -> [in, out] shape). ValueError naming the adapter file and module when a
    module maps to no linear weight of the base (`base` names it) or its A / B do not fit that weight."""
    want = expected_names(cfg)
    out = {}
    for module, pair in adapter.pairs.items():
        name = module + ".weight"
        if name not in want or want[name][1] != "T":
            layers = f"; the base has {cfg.n_layers} layers" if re.search(r"\.\d+\.", name) else ""
            raise ValueError(f"{adapter.weights_path}: LoRA for {module} maps to no linear weight of the "
                             f"{cfg.family} base model {base} (no tensor {name!r}{layers})")
        path = tuple(int(p) if p.isdigit() else p for p in want[name][0].split("."))
        d_in, d_out = kernel_shapes[path]
        if pair.a.shape[1] != d_in or pair.b.shape[0] != d_out:
            raise ValueError(f"{adapter.weights_path}: {module}: lora_A {pair.a.shape} and lora_B {pair.b.shape} "
                             f"do not fit the base weight {name!r} [out={d_out}, in={d_in}] of {base} "
                             f"(expected [r, {d_in}] and [{d_out}, r])")
        out[name] = (path, pair)
    return out


def merge_host(w: np.ndarray, pair: LoraPair, index: tuple = ()) -> Float[np.ndarray, "..."]:
    """`w` (a kernel, or its slice `index`) plus the pair's delta, in float32 (or wider)."""
    return w.astype(np.promote_types(w.dtype, np.float32)) + pair.kernel_delta(index)


def _index_key(index: tuple, shape: tuple) -> tuple:
    return tuple(s.indices(n) if isinstance(s, slice) else s for s, n in zip(index, shape))


def merge_placed(arr: jax.Array, pair: LoraPair) -> jax.Array:
    """A placed kernel plus the pair's delta, with the same sharding: each addressable shard is merged on the
    host from its own slice (nothing is gathered across devices or processes)."""
    local = {_index_key(s.index, arr.shape): s.data for s in arr.addressable_shards}

    def shard(index):
        w = np.asarray(jax.device_get(local[_index_key(index, arr.shape)]))
        return merge_host(w, pair, index).astype(arr.dtype)

    return jax.make_array_from_callback(arr.shape, arr.sharding, shard)


def _kernel_path(cfg: ModelConfig, path: str | tuple) -> tuple[str, tuple]:
    """(HF module path, param path tuple) of a jdllm linear kernel path like "blocks.0.q_proj.kernel"."""
    dotted = path if isinstance(path, str) else ".".join(map(str, path))
    for name, (param, transform) in expected_names(cfg).items():
        if param == dotted and transform == "T":
            return name[: -len(".weight")], tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
    raise ValueError(f"delta_params: {dotted!r} is not a linear kernel of this {cfg.family} model "
                     f"(e.g. 'blocks.0.q_proj.kernel')")


def save_lora(delta_params: Mapping[str | tuple, tuple[np.ndarray, np.ndarray]], base_config: ModelConfig,
              directory: str | os.PathLike, r: int, alpha: float, target_modules: Sequence[str],
              base_model_name_or_path: str | None = None, use_rslora: bool = False) -> None:
    """Write a PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`) that `read_lora` and
    PEFT's `PeftModel.from_pretrained` read back.

    `delta_params` maps a jdllm kernel path ("blocks.0.q_proj.kernel") to (down [in, r], up [r, out]) in jdllm
    layout, i.e. the kernel changes by `scale * down @ up`; they are stored as PEFT's `lora_A = down^T`,
    `lora_B = up^T`. Each kernel's module must be selected by `target_modules` (PEFT names: "q_proj",
    "attn_out", "o_proj", ...). Written atomically (`checkpoint_dir.atomic_checkpoint_dir`).
    """
    if type(r) is not int or r < 1:
        raise ValueError(f"r must be a positive integer, got {r!r}")
    if isinstance(target_modules, str) or not all(isinstance(t, str) for t in target_modules):
        raise TypeError(f"target_modules must be a list of module names, got {target_modules!r}")
    from jdllm.models.abstract import abstract_model

    _, abstract = abstract_model(base_config)
    shapes = {tuple(getattr(k, "key", getattr(k, "idx", None)) for k in p): leaf.shape
              for p, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(abstract))}
    tensors = {}
    for path, (down, up) in delta_params.items():
        module, key = _kernel_path(base_config, path)
        down, up = np.asarray(jax.device_get(down)), np.asarray(jax.device_get(up))
        if down.shape != (shapes[key][0], r) or up.shape != (r, shapes[key][1]):
            raise ValueError(f"delta_params[{path!r}]: down {down.shape} and up {up.shape} must be "
                             f"[{shapes[key][0]}, {r}] and [{r}, {shapes[key][1]}]")
        if not _targeted(list(target_modules), module):
            raise ValueError(f"delta_params[{path!r}]: module {module} is not selected by target_modules="
                             f"{list(target_modules)!r}")
        tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(down.T)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(up.T)
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name_or_path,
        "r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "use_rslora": use_rslora,
        "target_modules": sorted(set(target_modules)), "bias": "none", "fan_in_fan_out": False,
        "modules_to_save": None, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
        "inference_mode": True,
    }
    with atomic_checkpoint_dir(directory) as tmp:
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(config, f, indent=2)
        save_file(tensors, os.path.join(tmp, ADAPTER_WEIGHTS))
