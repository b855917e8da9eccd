"""The `jdllm serve` subcommand's options (no heavy imports: `jdllm --help` stays fast)."""

from __future__ import annotations

import argparse


def add_serve_args(p: argparse.ArgumentParser, positive_int) -> None:
    p.add_argument("--model", default=None, help="model directory (HF or jdllm/orbax, with tokenizer.json); "
                                                 "default: the shipped model")
    p.add_argument("--lora", default=None, metavar="DIR", help="a PEFT LoRA adapter directory merged at load")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--slots", type=positive_int, default=8, help="rows of the static decode batch (requests "
                                                                 "decoded together; more wait in a queue)")
    p.add_argument("--recipe", default=None, help="decode recipe of requests that name none (see `jdllm recipes`); "
                                                  "default: the model directory's block length, one step per token")
    p.add_argument("--max-tokens", type=positive_int, default=1024, help="the largest max_tokens a request may ask")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="do not compile the default settings before listening (the first request pays instead)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not read or write the persistent XLA compilation cache (~/.cache/jdllm/xla)")


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise OSError(f"jdllm serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'jdllm[serve]'") from None
    if not args.no_compile_cache:
        from jdllm import compile_cache

        compile_cache.enable()
    from jdllm.serve.app import serve

    return serve(args)
