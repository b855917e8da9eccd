"""Model configuration shared by every dLLM family jdllm runs.

One frozen (hashable) dataclass describes LLaDA (arXiv 2502.09992) and Dream (Qwen2 layout, arXiv 2508.15487)
models alike; it is a static argument of every jitted function. The two families differ only in data:
q/k/v biases, grouped-query attention, and the logit alignment (LLaDA predicts position i from output i,
Dream from output i-1, "shifted").
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import jax.numpy as jnp

Family = Literal["llada", "dream"]
LogitAlignment = Literal["same", "shifted"]
Attention = Literal["bidirectional"]

LLADA_MASK_ID = 126336
DREAM_MASK_ID = 151666


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes, special ids and layout of a masked-diffusion transformer.

    `head_dim` defaults to d_model // n_heads. `logit_alignment` "shifted" means the logits used for position i
    are the model's outputs at i-1 (Dream; the first position copies output 0, as the reference does).
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
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = False
    logit_alignment: LogitAlignment = "same"
    attention: Attention = "bidirectional"
    dtype: str = "float32"
    head_dim_override: int | None = None

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim_override is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"mask_id={self.mask_id} outside the vocabulary of {self.vocab_size}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.logit_alignment not in ("same", "shifted"):
            raise ValueError(f"logit_alignment must be 'same' or 'shifted', got {self.logit_alignment!r}")
        if self.attention != "bidirectional":
            raise ValueError(f"attention pattern {self.attention!r} is not supported (bidirectional only)")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.d_model // self.n_heads

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
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _dtype_from_hf(hf: dict[str, Any], default: str) -> str:
    torch_dtype = str(hf.get("torch_dtype") or hf.get("dtype") or default)
    return {"bfloat16": "bfloat16", "float16": "float16"}.get(torch_dtype, "float32")


def config_from_llada(hf: dict[str, Any], dtype: str | None = None) -> ModelConfig:
    """LLaDA's `config.json` (keys `d_model`, `n_heads`, `n_kv_heads`, `mlp_hidden_size`, ...) -> ModelConfig."""
    for flag, want in (("alibi", False), ("scale_logits", False), ("input_emb_norm", False)):
        if bool(hf.get(flag, want)) != want:
            raise ValueError(f"LLaDA config sets {flag}={hf.get(flag)!r}, which jdllm does not implement")
    if hf.get("include_bias", False):
        raise ValueError("LLaDA config sets include_bias=true, which jdllm does not implement")
    if hf.get("rope", True) is False:
        raise ValueError("LLaDA config sets rope=false; jdllm implements rotary positions only")
    n_heads = int(hf["n_heads"])
    vocab = int(hf.get("embedding_size") or hf["vocab_size"])
    return ModelConfig(
        family="llada",
        vocab_size=vocab,
        d_model=int(hf["d_model"]),
        n_layers=int(hf["n_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("n_kv_heads") or n_heads),
        mlp_hidden_size=int(hf["mlp_hidden_size"]),
        max_seq_len=int(hf.get("max_sequence_length", 4096)),
        mask_id=int(hf.get("mask_token_id", LLADA_MASK_ID)),
        eos_id=hf.get("eos_token_id", 126081),
        pad_id=hf.get("pad_token_id", 126081),
        eot_id=hf.get("eot_token_id", 126348 if vocab > 126348 else None),
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        qkv_bias=bool(hf.get("include_qkv_bias", False)),
        tie_embeddings=bool(hf.get("weight_tying", False)),
        logit_alignment="same",
        dtype=dtype or _dtype_from_hf(hf, "float32"),
    )


def config_from_dream(hf: dict[str, Any], dtype: str | None = None) -> ModelConfig:
    """Dream's Qwen2-style `config.json` -> ModelConfig (GQA, q/k/v biases, shifted logits)."""
    if hf.get("rope_scaling"):
        raise ValueError(f"Dream config sets rope_scaling={hf['rope_scaling']!r}, which jdllm does not implement")
    n_heads = int(hf["num_attention_heads"])
    return ModelConfig(
        family="dream",
        vocab_size=int(hf["vocab_size"]),
        d_model=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        mlp_hidden_size=int(hf["intermediate_size"]),
        max_seq_len=int(hf.get("max_position_embeddings", 131072)),
        mask_id=int(hf.get("mask_token_id", DREAM_MASK_ID)),
        eos_id=hf.get("eos_token_id", 151643),
        pad_id=hf.get("pad_token_id", 151643),
        rope_theta=float(hf.get("rope_theta", 1e6)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        logit_alignment="shifted",
        dtype=dtype or _dtype_from_hf(hf, "float32"),
    )


def config_from_hf(hf: dict[str, Any], dtype: str | None = None) -> ModelConfig:
    """Pick the family from `model_type` / `architectures` of an HF `config.json`."""
    kind = str(hf.get("model_type", "")).lower()
    archs = " ".join(hf.get("architectures") or []).lower()
    if kind == "llada" or "llada" in archs or "d_model" in hf:
        return config_from_llada(hf, dtype)
    if kind == "dream" or "dream" in archs:
        return config_from_dream(hf, dtype)
    raise ValueError(f"unsupported model_type {hf.get('model_type')!r} (architectures {hf.get('architectures')})")
