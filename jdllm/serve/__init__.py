"""Serving: block-granular continuous batching (`Engine`) and an OpenAI-compatible HTTP server (`jdllm serve`).

Names are imported on first use (PEP 562), so `jdllm serve --help` does not pay for importing JAX.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "Engine": "jdllm.serve.engine",
    "Event": "jdllm.serve.engine",
    "DecodeSettings": "jdllm.serve.settings",
    "ServeDefaults": "jdllm.serve.settings",
    "resolve_settings": "jdllm.serve.settings",
    "create_app": "jdllm.serve.app",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'jdllm.serve' has no attribute {name!r}")
