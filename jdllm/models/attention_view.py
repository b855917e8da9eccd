"""The same weights under another attention layout, without copying them.

D2F ships its students as LoRA adapters on a bidirectional base (research/caching.md §6): after
`jdllm.load(base, lora=adapter)` the model must be told that it now attends block-causally. `as_block_causal`
returns a model that shares every parameter array with `model` and whose config says
`attention="block_causal"`; `as_bidirectional` goes back (the D2F teacher's view of a student's weights).
`with_attention_kernel` keeps the attention and changes its implementation (`jdllm.models.attention_kernels`).
"""

from __future__ import annotations

from flax import nnx

from jdllm.models.abstract import abstract_model
from jdllm.models.transformer import Transformer


def _with_config(model: Transformer, cfg) -> Transformer:
    graphdef, _ = abstract_model(cfg)
    new = nnx.merge(graphdef, nnx.state(model))
    for attr in ("sharding_rules",):  # decode-time metadata `jdllm.load(mesh=...)` attaches
        if hasattr(model, attr):
            setattr(new, attr, getattr(model, attr))
    return new


def as_block_causal(model: Transformer, block_size: int = 16) -> Transformer:
    """`model`'s weights under D2F block-causal attention (`block_size`: the training block size recorded in
    the config; at decode time the schedule's block length sets the mask's blocks)."""
    return _with_config(model, model.config.replace(attention="block_causal", attention_block_size=block_size))


def as_bidirectional(model: Transformer) -> Transformer:
    """`model`'s weights under full bidirectional attention."""
    return _with_config(model, model.config.replace(attention="bidirectional", attention_block_size=None))


def with_attention_kernel(model: Transformer, kernel: str) -> Transformer:
    """`model`'s weights with attention computed by `kernel` ("auto", "xla", "cudnn", "splash")."""
    return _with_config(model, model.config.replace(attention_kernel=kernel))
