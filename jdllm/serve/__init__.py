"""Serving: block-granular continuous batching (`Engine`) and an OpenAI-compatible HTTP server (`jdllm serve`)."""

from jdllm.serve.engine import Engine, Event
from jdllm.serve.settings import DecodeSettings, ServeDefaults, resolve_settings

__all__ = ["Engine", "Event", "DecodeSettings", "ServeDefaults", "resolve_settings"]
