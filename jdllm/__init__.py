"""jdllm: fast diffusion-LLM inference in JAX.

    import jdllm
    model = jdllm.load("path/to/checkpoint")            # HF dir or a dir written by jdllm.save
    out = jdllm.generate(model, prompts, gen_length=256, block_length=32, steps=256)
    out.tokens, out.nfe

The public names are imported on first use (PEP 562), so `import jdllm` and `jdllm --help` do not pay for
importing JAX.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "load": "jdllm.api",
    "save": "jdllm.api",
    "forward": "jdllm.api",
    "generate": "jdllm.api",
    "GenerateOutput": "jdllm.api",
    "ModelConfig": "jdllm.models.config",
    "Transformer": "jdllm.models.transformer",
    "as_block_causal": "jdllm.models.attention_view",
    "as_bidirectional": "jdllm.models.attention_view",
    "with_attention_kernel": "jdllm.models.attention_view",
    "load_bundle": "jdllm.shipped",
    "load_text": "jdllm.text",
}

_SUBMODULES = {"api", "bench", "cli", "decode", "models", "recipes", "sharding", "shipped", "tasks", "tokenizer",
               "train", "weights", "compile_cache", "text", "log", "eval", "chat"}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:  # `jdllm.sharding.make_mesh(...)` after a plain `import jdllm`
        return importlib.import_module(f"jdllm.{name}")
    raise AttributeError(f"module 'jdllm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
