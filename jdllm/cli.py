"""`jdllm generate | bench | convert | recipes | serve | train`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)  # argparse turns the ValueError into "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seed_int(text: str) -> int:
    """argparse type: a seed in [0, 2**32)."""
    value = int(text)
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2**32), got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite float (no nan / inf)."""
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model directory (HF or jdllm/orbax); default: the shipped model")
    _add_lora_flag(p)
    p.add_argument("--recipe", default=None, help="a named recipe of configs/recipes.yaml (see `jdllm recipes`)")
    p.add_argument("--gen-length", type=positive_int, default=None)
    p.add_argument("--block-length", type=positive_int, default=None)
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--threshold", type=finite_float, default=None)
    p.add_argument("--factor", type=finite_float, default=None)
    p.add_argument("--cache", choices=["none", "prefix", "dual"], default=None)
    p.add_argument("--temperature", type=finite_float, default=None)
    p.add_argument("--remasking", default=None, choices=["low_confidence", "random", "margin", "entropy"])
    p.add_argument("--seed", type=seed_int, default=0)
    _add_cache_flag(p)


def _add_lora_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", default=None, metavar="DIR",
                   help="a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors), merged "
                        "into the model's weights at load (e.g. a D2F adapter on its base model)")


def _add_cache_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not read or write the persistent XLA compilation cache (~/.cache/jdllm/xla; "
                        "JDLLM_COMPILE_CACHE=0 does the same)")


def _enable_compile_cache(args) -> None:
    if not getattr(args, "no_compile_cache", False):
        from jdllm import compile_cache

        compile_cache.enable()


def _decode_kwargs(args, gen_length: int, model_config) -> dict:
    from jdllm.recipes import recipe_kwargs

    kw = recipe_kwargs(args.recipe, gen_length, model_config=model_config) if args.recipe else {"block_length": min(32, gen_length), "steps": gen_length}
    for name in ("block_length", "steps", "threshold", "factor", "temperature", "remasking"):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
    if args.cache is not None:
        kw["cache"] = None if args.cache == "none" else args.cache
    return kw


def cmd_generate(args) -> int:
    import jdllm
    from jdllm.shipped import load_bundle

    from jdllm.validation import check_generate_args

    _enable_compile_cache(args)
    bundle = load_bundle(args.model, check_finite=True, lora=args.lora)
    gen_length = bundle.gen_length if args.gen_length is None else args.gen_length
    kw = _decode_kwargs(args, gen_length, bundle.model.config)
    check_generate_args(gen_length=gen_length, seed=args.seed, **kw)  # before tokenizing / compiling anything
    ids = [bundle.tokenizer.encode(bundle.format_prompt(q, raw=args.raw)) for q in args.prompt]
    t0 = time.perf_counter()
    out = jdllm.generate(bundle.model, ids, gen_length=gen_length, seed=args.seed, **kw)
    elapsed = time.perf_counter() - t0
    for q, row, nfe in zip(args.prompt, out.tokens, out.nfe):
        text = bundle.decode_answer(row)
        if len(args.prompt) > 1:
            print(f"### {q}")
        print(text)
        if args.verbose:
            print(f"[nfe={int(nfe)}, gen_length={gen_length}, {elapsed:.2f}s incl. compile]", file=sys.stderr)
    return 0


def cmd_recipes(args) -> int:
    from jdllm.recipes import load_recipes

    for name, r in load_recipes().items():
        fields = ", ".join(f"{k}={v}" for k, v in r.items() if k != "source")
        print(f"{name:28s} {fields}\n{'':28s} ({r.get('source', '')})")
    return 0


def cmd_convert(args) -> int:
    import jdllm

    model = jdllm.load(args.src, dtype=args.dtype, check_finite=True, lora=args.lora)
    jdllm.save(model, args.dst, format=args.to)
    print(f"wrote {args.to} checkpoint to {args.dst}")
    return 0


def cmd_bench(args) -> int:
    from jdllm.bench import run_bench_cli

    _enable_compile_cache(args)
    return run_bench_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jdllm", description="Fast diffusion-LLM inference in JAX")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate an answer for one or more prompts")
    g.add_argument("prompt", nargs="+", help="question text (formatted with the model's prompt template)")
    g.add_argument("--raw", action="store_true", help="feed the text as is, without the prompt template")
    g.add_argument("-v", "--verbose", action="store_true")
    _add_decode_args(g)
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="accuracy / NFE / tokens per forward / tokens/s of named recipes")
    b.add_argument("--model", default=None)
    _add_lora_flag(b)
    b.add_argument("--recipes", default="vanilla,fast_dllm_parallel,fast_dllm_dual_parallel",
                   help="comma-separated recipe names (configs/recipes.yaml)")
    b.add_argument("--n", type=positive_int, default=100, help="held-out problems")
    b.add_argument("--batch-size", type=positive_int, default=16)
    b.add_argument("--gen-length", type=positive_int, default=None)
    b.add_argument("--repeats", type=positive_int, default=1, help="timed passes over the problems")
    b.add_argument("--seed", type=seed_int, default=0)
    b.add_argument("--out", default=None, help="write the JSON report here")
    b.add_argument("--plot", default=None, help="write an accuracy-vs-tokens/s Pareto PNG here")
    b.add_argument("--no-progress", action="store_true")
    _add_cache_flag(b)
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser("convert", help="convert a checkpoint between HF and orbax layouts (--lora: merged in)")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--to", choices=["orbax", "hf"], default="orbax")
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    _add_lora_flag(c)
    c.set_defaults(func=cmd_convert)

    r = sub.add_parser("recipes", help="list the pinned decoding recipes")
    r.set_defaults(func=cmd_recipes)

    from jdllm.serve.command import add_serve_args, cmd_serve

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server, continuous batching at block granularity")
    add_serve_args(s, positive_int)
    s.set_defaults(func=cmd_serve)

    # Listed for `jdllm --help`; `main` hands `jdllm train ...` to the training script's own parser.
    sub.add_parser("train", help="retrain the shipped model (options: jdllm train --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # hand every option to the training script's own parser (--help included)
        from jdllm.train.shipped import main as train_main

        train_main(argv[1:])
        return 0
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed its one line (or the help)
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv  # the bench records its own command line
    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError, OSError, MemoryError, FloatingPointError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"jdllm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
