"""Hugging Face checkpoints (config.json + one or many *.safetensors) <-> jdllm models."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from jdllm.models.config import ModelConfig, config_from_hf
from jdllm.models.transformer import Transformer
from jdllm.weights.checkpoint_dir import atomic_checkpoint_dir, read_json_object
from jdllm.weights.keymaps import describe_unexpected, expected_names
from jdllm.models.abstract import abstract_model  # noqa: F401  (re-exported: loaders, tests)
from jdllm.weights.lora import LoraAdapter, merge_host, resolve_lora
from jdllm.weights.safetensors_io import open_checkpoint, save_file, write_sharded

Placer = Callable[[str, "SafetensorsTensor"], jax.Array]


def _path_tuple(path: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def model_from_arrays(cfg: ModelConfig, arrays: dict[tuple, jax.Array]) -> Transformer:
    """Build a Transformer whose every parameter comes from `arrays` (path tuple -> array)."""
    graphdef, state = abstract_model(cfg)
    pure = nnx.to_pure_dict(state)

    def fill(path, leaf):
        key = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
        if key not in arrays:
            raise ValueError(f"no array for parameter {'.'.join(map(str, key))}")
        arr = arrays[key]
        if tuple(arr.shape) != tuple(leaf.shape):
            raise ValueError(f"parameter {'.'.join(map(str, key))}: shape {tuple(arr.shape)} != expected {tuple(leaf.shape)}")
        return arr

    pure = jax.tree_util.tree_map_with_path(fill, pure)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON object of `directory/config.json`; errors name the file."""
    path = os.path.join(str(directory), "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} has no config.json")
    return read_json_object(path)


def read_hf_config(directory: str | os.PathLike, dtype: str | None = None) -> ModelConfig:
    """`config_from_hf` of `directory/config.json`, its errors naming that file and the key at fault."""
    return config_from_hf(read_config(directory), dtype, source=os.path.join(str(directory), "config.json"))


def first_non_finite(arr: jax.Array | np.ndarray) -> str | None:
    """None when every value of `arr` is finite, else a description of the non-finite values (checked on the
    host, one tensor at a time, so that no program is compiled per shape)."""
    host = np.asarray(jax.device_get(arr))
    if not (np.issubdtype(host.dtype, np.floating) or host.dtype == np.dtype(ml_dtypes.bfloat16)):
        return None
    bad = ~np.isfinite(host)
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), host.shape))
    return f"{int(bad.sum())} of {host.size} values are NaN/inf (first at index {index}: {host[index]})"


def _default_place(arr: np.ndarray, dtype) -> jax.Array:
    return jnp.asarray(np.asarray(arr).astype(dtype))


def load_hf(directory: str | os.PathLike, dtype: str | None = None, place: Callable | None = None,
            check_finite: bool = False, lora: LoraAdapter | None = None) -> Transformer:
    """Load an HF-layout LLaDA or Dream checkpoint through the family's declarative key map.

    Raises a ValueError naming the file and tensor on a missing, unexpected, mis-shaped or (with `check_finite`)
    NaN/inf-holding tensor, and naming the file on a corrupt safetensors file or config.json (see
    `safetensors_io.read_header`, `config_from_hf`). `place(path, read, shape, dtype)` may put each parameter on
    its devices (sharded loading); by default the whole tensor is read and placed on the default device.
    `lora` (a `jdllm.weights.lora.read_lora` adapter) is merged into each adapted kernel as it is read, in
    float32 before the cast, slice by slice under `place` (`lora.resolve_lora` checks it against this model).
    """
    cfg = read_hf_config(directory, dtype)
    want = expected_names(cfg)
    files = open_checkpoint(directory)
    missing = sorted(set(want) - set(files))
    if missing:
        raise ValueError(f"{directory}: missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(set(files) - set(want))
    if unexpected:
        raise ValueError(f"{files[unexpected[0]].path}: " + describe_unexpected(unexpected[0]) + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    _, abstract = abstract_model(cfg)
    shapes = {tuple(getattr(k, "key", getattr(k, "idx", None)) for k in p): leaf.shape
              for p, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(abstract))}
    adapted = resolve_lora(lora, cfg, shapes, str(directory)) if lora is not None else {}
    arrays = {}
    for name, (path, transform) in want.items():
        st = files[name]
        key = _path_tuple(path)
        stored = st.shape(name)
        got = stored[::-1] if transform == "T" else stored
        if tuple(got) != tuple(shapes[key]):
            expect = tuple(shapes[key])[::-1] if transform == "T" else tuple(shapes[key])
            raise ValueError(f"{st.path}: tensor {name!r} has shape {tuple(stored)}, expected {expect}")
        if not np.issubdtype(st.dtype(name), np.floating) and st.dtype(name) != np.dtype(ml_dtypes.bfloat16):
            raise ValueError(f"{st.path}: tensor {name!r} has dtype {st.dtype(name)}, expected a float dtype")

        def read(index=(), name=name, st=st, transform=transform):
            arr = st.get(name)
            arr = arr.T if transform == "T" else arr
            arr = np.asarray(arr[index])
            return merge_host(arr, adapted[name][1], index) if name in adapted else arr

        if place is None:
            arrays[key] = _default_place(read(), cfg.jnp_dtype)
        else:
            arrays[key] = place(key, read, tuple(shapes[key]), cfg.jnp_dtype)
        problem = first_non_finite(arrays[key]) if check_finite else None
        if problem:
            raise ValueError(f"{st.path}: tensor {name!r}: {problem} (check_finite=True)")
    return model_from_arrays(cfg, arrays)


def _eos_value(cfg: ModelConfig) -> int | list[int] | None:
    """HF's `eos_token_id`: a list when the config has further EOS ids, else the single id."""
    return list(cfg.eos_ids) if cfg.extra_eos_ids else cfg.eos_id


def _attention_keys(cfg: ModelConfig) -> dict[str, Any]:
    """jdllm's attention keys of `config.json`: written for a block-causal model only (absent = bidirectional)."""
    if cfg.attention == "bidirectional":
        return {}
    return {"attention": cfg.attention, "attention_block_size": cfg.attention_block_size}


# `auto_map` of the official checkpoints, pointing at their repositories' modeling code ("repo--module.Class", how
# transformers names remote code kept in another repository), so `AutoModel.from_pretrained(dir,
# trust_remote_code=True)` loads an exported directory with the code the family was published with.
AUTO_MAP = {
    "llada": {"AutoConfig": "GSAI-ML/LLaDA-8B-Instruct--configuration_llada.LLaDAConfig",
              "AutoModel": "GSAI-ML/LLaDA-8B-Instruct--modeling_llada.LLaDAModelLM",
              "AutoModelForCausalLM": "GSAI-ML/LLaDA-8B-Instruct--modeling_llada.LLaDAModelLM"},
    "dream": {"AutoConfig": "Dream-org/Dream-v0-Instruct-7B--configuration_dream.DreamConfig",
              "AutoModel": "Dream-org/Dream-v0-Instruct-7B--modeling_dream.DreamModel"},
}


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """The family's own `config.json` for `cfg` (LLaDA or Qwen2/Dream keys with `model_type` and `auto_map`, plus
    `_attention_keys`)."""
    return {**_family_config(cfg), "auto_map": AUTO_MAP[cfg.family], **_attention_keys(cfg)}


def _family_config(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.family == "llada":
        return {
            "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": cfg.d_model,
            "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads, "n_layers": cfg.n_layers,
            "mlp_hidden_size": cfg.mlp_hidden_size, "mlp_ratio": cfg.mlp_hidden_size // cfg.d_model,
            "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps, "vocab_size": cfg.vocab_size,
            "embedding_size": cfg.vocab_size, "max_sequence_length": cfg.max_seq_len,
            "mask_token_id": cfg.mask_id, "eos_token_id": _eos_value(cfg), "pad_token_id": cfg.pad_id,
            "eot_token_id": cfg.eot_id,
            "weight_tying": cfg.tie_embeddings, "include_bias": False, "include_qkv_bias": cfg.qkv_bias,
            "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": True,
            "rope_full_precision": True, "alibi": False, "scale_logits": False, "input_emb_norm": False,
            "attention_layer_norm": False, "use_cache": False, "torch_dtype": cfg.dtype,
        }
    return {
        "model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden_size, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_seq_len, "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps, "mask_token_id": cfg.mask_id, "pad_token_id": cfg.pad_id,
        "eos_token_id": _eos_value(cfg), "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
        "torch_dtype": cfg.dtype,
    }


def hf_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """The model's parameters under the family's HF names, torch layout."""
    cfg: ModelConfig = model.config
    flat = {tuple(getattr(k, "key", getattr(k, "idx", None)) for k in p): leaf
            for p, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}
    out = {}
    for name, (path, transform) in expected_names(cfg).items():
        arr = np.asarray(jax.device_get(flat[_path_tuple(path)]))
        out[name] = np.ascontiguousarray(arr.T if transform == "T" else arr)
    return out


def save_hf(model: Transformer, directory: str | os.PathLike, n_files: int = 1) -> None:
    """Write `config.json` and safetensors in the family's HF layout (several files + index if n_files > 1).

    Atomic (`checkpoint_dir.atomic_checkpoint_dir`): the files are written and fsynced in a temporary sibling
    that then replaces `directory`; an orbax checkpoint there is replaced, other files are carried over.
    """
    if type(n_files) is not int or n_files < 1:
        raise ValueError(f"n_files must be a positive integer, got {n_files!r}")
    tensors = hf_tensors(model)
    with atomic_checkpoint_dir(directory) as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config(model.config), f, indent=2)
        if n_files == 1:
            save_file(tensors, os.path.join(tmp, "model.safetensors"))
        else:
            write_sharded(tensors, tmp, n_files)
