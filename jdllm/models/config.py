"""Model configuration shared by every dLLM family jdllm runs.

One frozen (hashable) dataclass describes LLaDA (arXiv 2502.09992) and Dream (Qwen2 layout, arXiv 2508.15487)
models alike; it is a static argument of every jitted function. The two families differ only in data:
q/k/v biases, grouped-query attention, and the logit alignment (LLaDA predicts position i from output i,
Dream from output i-1, "shifted").
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from typing import Any, Literal

import jax.numpy as jnp

from jdllm.models.attention_kernels import KERNELS

Family = Literal["llada", "dream"]
LogitAlignment = Literal["same", "shifted"]
Attention = Literal["bidirectional", "block_causal"]
ATTENTIONS = ("bidirectional", "block_causal")

LLADA_MASK_ID = 126336
DREAM_MASK_ID = 151666


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes, special ids and layout of a masked-diffusion transformer.

    `eos_id` is the end-of-sequence id jdllm writes (EOS fill after an early stop) and cuts answers at;
    `extra_eos_ids` holds the further ids of a list-valued HF `eos_token_id` (its first entry is `eos_id`). As HF
    generation stops on any of them, `eos_early_stop` ends a row on a block holding any of `eos_ids`.
    `head_dim` defaults to d_model // n_heads. `logit_alignment` "shifted" means the logits used for position i
    are the model's outputs at i-1 (Dream; the first position copies output 0, as the reference does).
    `attention` "block_causal" is D2F's student attention (arXiv 2508.09192 §3.1, `create_full_block_attention_mask`
    in zhijie-group/Discrete-Diffusion-Forcing): the prompt is block 0, the generation region is cut into blocks of
    `attention_block_size` counted from the prompt end, and a query sees the keys of its own and earlier blocks
    (`jdllm.models.masks`). `attention_block_size` is the training block size: an integer >= 1 for
    "block_causal", None for "bidirectional". `attention_kernel` picks the implementation ("auto", "xla",
    "cudnn", "splash": `jdllm.models.attention_kernels`); a runtime choice, never written to a checkpoint.
    """

    family: Family
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden_size: int
    max_seq_len: int
    mask_id: int
    eos_id: int | None = None
    pad_id: int | None = None
    eot_id: int | None = None
    extra_eos_ids: tuple[int, ...] = ()
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = False
    logit_alignment: LogitAlignment = "same"
    attention: Attention = "bidirectional"
    attention_block_size: int | None = None
    dtype: str = "float32"
    head_dim_override: int | None = None
    attention_kernel: str = "auto"

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim_override is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"mask_id={self.mask_id} outside the vocabulary of {self.vocab_size}")
        for name in ("mask_id", "eos_id", "pad_id", "eot_id"):
            value = getattr(self, name)
            if not (value is None and name != "mask_id") and not _is_int(value):
                raise ValueError(f"{name} must be an integer{' or None' if name != 'mask_id' else ''}, got {value!r}")
        if type(self.extra_eos_ids) is not tuple or not all(map(_is_int, self.extra_eos_ids)):
            raise ValueError(f"extra_eos_ids must be a tuple of integers, got {self.extra_eos_ids!r}")
        if self.extra_eos_ids and self.eos_id is None:
            raise ValueError(f"extra_eos_ids={self.extra_eos_ids} needs an eos_id")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.logit_alignment not in ("same", "shifted"):
            raise ValueError(f"logit_alignment must be 'same' or 'shifted', got {self.logit_alignment!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.attention_kernel not in KERNELS:
            raise ValueError(f"attention_kernel must be one of {KERNELS}, got {self.attention_kernel!r}")
        block = self.attention_block_size
        if self.attention == "block_causal" and not (_is_int(block) and block >= 1):
            raise ValueError(f"attention_block_size must be an integer >= 1 for block_causal attention, got {block!r}")
        if self.attention == "bidirectional" and block is not None:
            raise ValueError(f"attention_block_size must be None for bidirectional attention, got {block!r}")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.d_model // self.n_heads

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation: `eos_id` first, then `extra_eos_ids`."""
        return () if self.eos_id is None else (self.eos_id, *self.extra_eos_ids)

    @property
    def shift(self) -> int:
        """1 when logits are shifted (position i read from output i-1), else 0."""
        return 1 if self.logit_alignment == "shifted" else 0

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING)
        if missing:
            raise ValueError(f"missing ModelConfig fields: {missing}")
        if isinstance(data.get("extra_eos_ids"), list):
            data = {**data, "extra_eos_ids": tuple(data["extra_eos_ids"])}
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


class _Keys:
    """Typed reads of an HF `config.json` dict; every problem is a ValueError naming `source` and the key."""

    def __init__(self, hf: dict[str, Any], source: str):
        self.hf, self.source = hf, source

    def fail(self, key: str, what: str) -> ValueError:
        return ValueError(f"{self.source}: key {key!r} {what}")

    def int(self, key: str, default: Any = ..., alt: str | None = None) -> int | None:
        """An integer (a float with an integral value is accepted, as JSON writers emit 4096.0); `alt` is a key
        read first when present and non-null (e.g. LLaDA's embedding_size before vocab_size)."""
        if alt is not None and self.hf.get(alt) is not None:
            key = alt
        if key not in self.hf:
            if default is ...:
                raise self.fail(key, "is missing")
            return default
        value = self.hf[key]
        if value is None and default is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if type(value) is not int:
            raise self.fail(key, f"must be an integer, got {value!r}")
        return value

    def float(self, key: str, default: float) -> float:
        value = self.hf.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, got {value!r}")
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self.hf.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def attention(self) -> dict[str, Any]:
        """`attention` ("bidirectional" when absent, or "block_causal") and `attention_block_size` (an integer >= 1,
        required for block_causal, absent or null otherwise) as ModelConfig fields."""
        kind = self.hf.get("attention", "bidirectional")
        if kind not in ATTENTIONS:
            raise self.fail("attention", f"must be one of {list(ATTENTIONS)}, got {kind!r}")
        block = self.int("attention_block_size", None)
        if kind == "block_causal" and (block is None or block < 1):
            raise self.fail("attention_block_size",
                            f"must be an integer >= 1 for block_causal attention, got {block!r}")
        if kind == "bidirectional" and block is not None:
            raise self.fail("attention_block_size",
                            f"must be absent or null for bidirectional attention, got {block!r}")
        return {"attention": kind, "attention_block_size": block}

    def eos_ids(self, default: int) -> tuple[int | None, tuple[int, ...]]:
        """`eos_token_id` as (first id, further ids): HF allows an int or a list of ints (generation ends on any)."""
        value = self.hf.get("eos_token_id", default)
        if isinstance(value, list):
            if not value or not all(type(v) is int for v in value):
                raise self.fail("eos_token_id", f"must be an integer or a non-empty list of integers, got {value!r}")
            return value[0], tuple(dict.fromkeys(v for v in value[1:] if v != value[0]))
        return self.int("eos_token_id", default), ()


def _dtype_from_hf(hf: dict[str, Any], default: str) -> str:
    torch_dtype = str(hf.get("torch_dtype") or hf.get("dtype") or default)
    return {"bfloat16": "bfloat16", "float16": "float16"}.get(torch_dtype, "float32")


def config_from_llada(hf: dict[str, Any], dtype: str | None = None, source: str = "config.json") -> ModelConfig:
    """LLaDA's `config.json` (keys `d_model`, `n_heads`, `n_kv_heads`, `mlp_hidden_size`, ...) -> ModelConfig."""
    for flag, want in (("alibi", False), ("scale_logits", False), ("input_emb_norm", False)):
        if bool(hf.get(flag, want)) != want:
            raise ValueError(f"{source}: LLaDA config sets {flag}={hf.get(flag)!r}, which jdllm does not implement")
    if hf.get("include_bias", False):
        raise ValueError(f"{source}: LLaDA config sets include_bias=true, which jdllm does not implement")
    if hf.get("rope", True) is False:
        raise ValueError(f"{source}: LLaDA config sets rope=false; jdllm implements rotary positions only")
    k = _Keys(hf, source)
    n_heads = k.int("n_heads")
    vocab = k.int("vocab_size", alt="embedding_size")
    eos_id, extra_eos = k.eos_ids(126081)
    return _build(k, dict(
        family="llada",
        vocab_size=vocab,
        d_model=k.int("d_model"),
        n_layers=k.int("n_layers"),
        n_heads=n_heads,
        n_kv_heads=k.int("n_kv_heads", None) or n_heads,
        mlp_hidden_size=k.int("mlp_hidden_size"),
        max_seq_len=k.int("max_sequence_length", 4096),
        mask_id=k.int("mask_token_id", LLADA_MASK_ID),
        eos_id=eos_id,
        extra_eos_ids=extra_eos,
        pad_id=k.int("pad_token_id", 126081),
        eot_id=k.int("eot_token_id", 126348 if vocab > 126348 else None),
        rope_theta=k.float("rope_theta", 10000.0),
        rms_norm_eps=k.float("rms_norm_eps", 1e-5),
        qkv_bias=k.bool("include_qkv_bias", False),
        tie_embeddings=k.bool("weight_tying", False),
        logit_alignment="same",
        **k.attention(),
        dtype=dtype or _dtype_from_hf(hf, "float32"),
    ))


def config_from_dream(hf: dict[str, Any], dtype: str | None = None, source: str = "config.json") -> ModelConfig:
    """Dream's Qwen2-style `config.json` -> ModelConfig (GQA, q/k/v biases, shifted logits)."""
    if hf.get("rope_scaling"):
        raise ValueError(f"{source}: Dream config sets rope_scaling={hf['rope_scaling']!r}, which jdllm does not "
                         "implement")
    k = _Keys(hf, source)
    n_heads = k.int("num_attention_heads")
    eos_id, extra_eos = k.eos_ids(151643)
    return _build(k, dict(
        family="dream",
        vocab_size=k.int("vocab_size"),
        d_model=k.int("hidden_size"),
        n_layers=k.int("num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=k.int("num_key_value_heads", None) or n_heads,
        mlp_hidden_size=k.int("intermediate_size"),
        max_seq_len=k.int("max_position_embeddings", 131072),
        mask_id=k.int("mask_token_id", DREAM_MASK_ID),
        eos_id=eos_id,
        extra_eos_ids=extra_eos,
        pad_id=k.int("pad_token_id", 151643),
        rope_theta=k.float("rope_theta", 1e6),
        rms_norm_eps=k.float("rms_norm_eps", 1e-6),
        qkv_bias=True,
        tie_embeddings=k.bool("tie_word_embeddings", False),
        logit_alignment="shifted",
        **k.attention(),
        dtype=dtype or _dtype_from_hf(hf, "float32"),
    ))


def _build(k: _Keys, fields: dict[str, Any]) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        raise ValueError(f"{k.source}: {e}") from None


def config_from_hf(hf: dict[str, Any], dtype: str | None = None, source: str = "config.json") -> ModelConfig:
    """Pick the family from `model_type` / `architectures` of an HF `config.json`; `source` (the file) prefixes
    every error, which names the key at fault (missing, wrong type, unsupported value)."""
    if not isinstance(hf, dict):
        raise ValueError(f"{source}: must hold a JSON object, got {type(hf).__name__}")
    kind = str(hf.get("model_type", "")).lower()
    archs = hf.get("architectures") or []
    if not isinstance(archs, list):
        raise ValueError(f"{source}: key 'architectures' must be a list of names, got {archs!r}")
    archs = " ".join(map(str, archs)).lower()
    if kind == "llada" or "llada" in archs or "d_model" in hf:
        return config_from_llada(hf, dtype, source)
    if kind == "dream" or "dream" in archs:
        return config_from_dream(hf, dtype, source)
    raise ValueError(f"{source}: unsupported model_type {hf.get('model_type')!r} (architectures "
                     f"{hf.get('architectures')}); jdllm reads LLaDA and Dream configs")
