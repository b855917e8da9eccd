"""A model's graph and parameter shapes without allocating anything (loaders, LoRA, attention views)."""

from __future__ import annotations

from flax import nnx

from jdllm.models.config import ModelConfig
from jdllm.models.transformer import Transformer


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph and shape-only state of a model: nothing is allocated."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
