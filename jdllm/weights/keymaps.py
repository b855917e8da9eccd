"""Declarative maps from Hugging Face tensor names to jdllm parameter paths.

Each family is a list of `Rule(hf_pattern, param_path, transform)`; `{i}` stands for the layer index. torch
`nn.Linear.weight` is [out, in] and becomes a [in, out] kernel ("T"); everything else is copied ("id").
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from jdllm.models.config import ModelConfig

Transform = Literal["id", "T"]


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str
    path: str
    transform: Transform


LLADA_RULES = (
    Rule("model.transformer.wte.weight", "wte", "id"),
    Rule("model.transformer.blocks.{i}.attn_norm.weight", "blocks.{i}.attn_norm.weight", "id"),
    Rule("model.transformer.blocks.{i}.q_proj.weight", "blocks.{i}.q_proj.kernel", "T"),
    Rule("model.transformer.blocks.{i}.k_proj.weight", "blocks.{i}.k_proj.kernel", "T"),
    Rule("model.transformer.blocks.{i}.v_proj.weight", "blocks.{i}.v_proj.kernel", "T"),
    Rule("model.transformer.blocks.{i}.q_proj.bias", "blocks.{i}.q_proj.bias", "id"),
    Rule("model.transformer.blocks.{i}.k_proj.bias", "blocks.{i}.k_proj.bias", "id"),
    Rule("model.transformer.blocks.{i}.v_proj.bias", "blocks.{i}.v_proj.bias", "id"),
    Rule("model.transformer.blocks.{i}.attn_out.weight", "blocks.{i}.attn_out.kernel", "T"),
    Rule("model.transformer.blocks.{i}.ff_norm.weight", "blocks.{i}.ff_norm.weight", "id"),
    Rule("model.transformer.blocks.{i}.ff_proj.weight", "blocks.{i}.ff_proj.kernel", "T"),
    Rule("model.transformer.blocks.{i}.up_proj.weight", "blocks.{i}.up_proj.kernel", "T"),
    Rule("model.transformer.blocks.{i}.ff_out.weight", "blocks.{i}.ff_out.kernel", "T"),
    Rule("model.transformer.ln_f.weight", "ln_f.weight", "id"),
    Rule("model.transformer.ff_out.weight", "ff_out.kernel", "T"),
)

DREAM_RULES = (
    Rule("model.embed_tokens.weight", "wte", "id"),
    Rule("model.layers.{i}.input_layernorm.weight", "blocks.{i}.attn_norm.weight", "id"),
    Rule("model.layers.{i}.self_attn.q_proj.weight", "blocks.{i}.q_proj.kernel", "T"),
    Rule("model.layers.{i}.self_attn.k_proj.weight", "blocks.{i}.k_proj.kernel", "T"),
    Rule("model.layers.{i}.self_attn.v_proj.weight", "blocks.{i}.v_proj.kernel", "T"),
    Rule("model.layers.{i}.self_attn.q_proj.bias", "blocks.{i}.q_proj.bias", "id"),
    Rule("model.layers.{i}.self_attn.k_proj.bias", "blocks.{i}.k_proj.bias", "id"),
    Rule("model.layers.{i}.self_attn.v_proj.bias", "blocks.{i}.v_proj.bias", "id"),
    Rule("model.layers.{i}.self_attn.o_proj.weight", "blocks.{i}.attn_out.kernel", "T"),
    Rule("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.ff_norm.weight", "id"),
    Rule("model.layers.{i}.mlp.gate_proj.weight", "blocks.{i}.ff_proj.kernel", "T"),
    Rule("model.layers.{i}.mlp.up_proj.weight", "blocks.{i}.up_proj.kernel", "T"),
    Rule("model.layers.{i}.mlp.down_proj.weight", "blocks.{i}.ff_out.kernel", "T"),
    Rule("model.norm.weight", "ln_f.weight", "id"),
    Rule("lm_head.weight", "ff_out.kernel", "T"),
)

RULES = {"llada": LLADA_RULES, "dream": DREAM_RULES}


def expected_names(cfg: ModelConfig) -> dict[str, tuple[str, Transform]]:
    """Every HF tensor name the config needs -> (jdllm param path, transform)."""
    out: dict[str, tuple[str, Transform]] = {}
    for rule in RULES[cfg.family]:
        is_bias = rule.hf.endswith(".bias")
        if is_bias and not cfg.qkv_bias:
            continue
        if rule.path == "ff_out.kernel" and cfg.tie_embeddings:
            continue
        if "{i}" in rule.hf:
            for i in range(cfg.n_layers):
                out[rule.hf.format(i=i)] = (rule.path.format(i=i), rule.transform)
        else:
            out[rule.hf] = (rule.path, rule.transform)
    return out


_LAYER = re.compile(r"\.(\d+)\.")


def describe_unexpected(name: str) -> str:
    return f"unexpected tensor {name!r} (no rule maps it; layer index {_LAYER.search(name).group(1)})" if _LAYER.search(name) else f"unexpected tensor {name!r}"
