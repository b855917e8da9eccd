"""`jdllm generate | chat | bench | convert | recipes | eval | serve | train`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from jdllm.decode.cache_registry import CACHE_NAMES
from jdllm.log import configure as configure_logging
from jdllm.log import get_logger

_LOG = get_logger(__name__)


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


class _HelpFormatter(argparse.HelpFormatter):
    """Help lines end with the option's default: "(default: X)", "(default: off)" for a switch; an option whose
    default is None explains in its own help text what it falls back to."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)) and not action.default:
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block) and exit status 2, and whose help
    shows every option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_log_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_const", const=1, default=0, dest="verbosity",
                       help="log details too (DEBUG: per-prompt NFE and timings) on stderr (default: progress "
                            "messages only)")
    group.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity",
                       help="log warnings and errors only (default: off)")


def _add_json_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as one JSON object on stdout")


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="model directory (HF or jdllm/orbax, with tokenizer.json) (default: the shipped model)")
    _add_lora_flag(p)
    _add_kernel_flag(p)
    p.add_argument("--recipe", default=None,
                   help="a named recipe of jdllm/configs/recipes.yaml, see `jdllm recipes`; options below replace "
                        "its choice for their axis (default: none: block 32, one step per token, low-confidence)")
    p.add_argument("--gen-length", type=positive_int, default=None,
                   help="tokens to generate (default: gen_length of the model's generation_config.json, else 64)")
    p.add_argument("--block-length", type=positive_int, default=None,
                   help="semi-autoregressive block length (default: the recipe's, else min(32, gen length))")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="denoising steps over the whole generation (default: the recipe's, else gen length)")
    p.add_argument("--threshold", type=finite_float, default=None,
                   help="Fast-dLLM confidence threshold: commit every token above it (default: the recipe's "
                        "rule, else top-k by --steps)")
    p.add_argument("--factor", type=finite_float, default=None,
                   help="Fast-dLLM factor rule f (default: the recipe's rule, else top-k by --steps)")
    p.add_argument("--cache", choices=CACHE_NAMES, default=None,
                   help="cache strategy (jdllm.decode.caches; 'exact' needs a block-causal model) (default: the "
                        "recipe's, else none)")
    p.add_argument("--temperature", type=finite_float, default=None,
                   help="sampling temperature, 0 = greedy (default: the recipe's, else 0)")
    p.add_argument("--remasking", default=None, choices=["low_confidence", "random", "margin", "entropy"],
                   help="top-k confidence of LLaDA's schedule (default: the recipe's, else low_confidence)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed of sampled decoding")
    _add_cache_flag(p)
    _add_log_flags(p)


def _add_lora_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", default=None, metavar="DIR",
                   help="a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors), merged "
                        "into the model's weights at load (e.g. a D2F adapter on its base model) (default: none)")


def _add_kernel_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attention-kernel", default="auto", choices=["auto", "xla", "cudnn", "splash"],
                   help="attention implementation (jdllm/models/attention_kernels.py): auto = Pallas splash on one "
                        "TPU device, XLA elsewhere; cudnn = fused cuDNN kernel on NVIDIA GPUs, bf16/fp16")


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

    given = {name: getattr(args, name) for name in ("block_length", "steps", "threshold", "factor", "temperature",
                                                     "remasking") if getattr(args, name) is not None}
    if args.cache is not None:
        given["cache"] = None if args.cache == "none" else args.cache
    if not args.recipe:
        return {"block_length": min(32, gen_length), "steps": gen_length, **given}
    from jdllm.recipes import merge_recipe

    recipe = recipe_kwargs(args.recipe, gen_length, model_config=model_config, block_length=given.get("block_length"))
    return merge_recipe(recipe, given)  # an option replaces the recipe's choice for its axis, as generate(recipe=)


def _format_prompts(bundle, args) -> list[str]:
    """Each prompt as one user turn of the checkpoint's chat template (`--chat`: required; default: when the
    checkpoint has one, else its prompt_template), or as is (`--raw`)."""
    if args.chat and bundle.chat_template is None:
        raise ValueError(f"--chat: model {bundle.name!r} has no chat_template (tokenizer_config.json / "
                         "chat_template.jinja); drop --chat or pass --raw")
    if args.system is not None and (args.raw or bundle.chat_template is None):
        raise ValueError("--system needs the model's chat template (and no --raw)")
    if args.raw:
        return list(args.prompt)
    if bundle.chat_template is None:
        return [bundle.format_prompt(q) for q in args.prompt]
    system = [] if args.system is None else [{"role": "system", "content": args.system}]
    return [bundle.format_chat(system + [{"role": "user", "content": q}]) for q in args.prompt]


def cmd_generate(args) -> int:
    import jdllm
    from jdllm.shipped import load_bundle

    from jdllm.validation import check_generate_args

    _enable_compile_cache(args)
    bundle = load_bundle(args.model, check_finite=True, lora=args.lora, attention_kernel=args.attention_kernel)
    gen_length = bundle.gen_length if args.gen_length is None else args.gen_length
    kw = _decode_kwargs(args, gen_length, bundle.model.config)
    check_generate_args(gen_length=gen_length, seed=args.seed, **kw)  # before tokenizing / compiling anything
    texts = _format_prompts(bundle, args)
    ids = [bundle.tokenizer.encode(t) for t in texts]
    t0 = time.perf_counter()
    out = jdllm.generate(bundle.model, ids, gen_length=gen_length, seed=args.seed, **kw)
    elapsed = time.perf_counter() - t0
    answers = [bundle.decode_answer(row) for row in out.tokens]
    if not args.raw:
        for q, prompt_ids, answer in zip(args.prompt, ids, answers):
            problem = bundle.out_of_form(prompt_ids, answer, question=q)
            if problem is not None:
                print(f"jdllm generate: warning: {q[:60]!r}: {problem}", file=sys.stderr)
    for q, nfe in zip(args.prompt, out.nfe):
        _LOG.debug(f"[{q[:40]!r}: nfe={int(nfe)}, gen_length={gen_length}, {elapsed:.2f}s incl. compile]")
    if args.json:
        rows = [{"prompt": q, "formatted_prompt": t, "answer": a, "nfe": int(n), "tokens": [int(x) for x in row]}
                for q, t, a, n, row in zip(args.prompt, texts, answers, out.nfe, out.tokens)]
        print(json.dumps({"model": bundle.name, "gen_length": gen_length, "seed": args.seed,
                          "decode_kwargs": {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
                                            for k, v in kw.items()},
                          "seconds_incl_compile": elapsed, "results": rows}, indent=2))
        return 0
    for q, text in zip(args.prompt, answers):
        if len(args.prompt) > 1:
            print(f"### {q}")
        print(text)
    return 0


def cmd_chat(args) -> int:
    from jdllm.chat import chat_loop
    from jdllm.shipped import load_bundle
    from jdllm.validation import check_generate_args

    _enable_compile_cache(args)
    bundle = load_bundle(args.model, check_finite=True, lora=args.lora, attention_kernel=args.attention_kernel)
    gen_length = bundle.gen_length if args.gen_length is None else args.gen_length
    kw = _decode_kwargs(args, gen_length, bundle.model.config)
    check_generate_args(gen_length=gen_length, seed=args.seed, **kw)
    return chat_loop(bundle, sys.stdin, sys.stdout, gen_length=gen_length, seed=args.seed, system=args.system,
                     history=not args.no_history, **kw)


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
    _LOG.info(f"wrote {args.to} checkpoint to {args.dst}")
    return 0


def cmd_bench(args) -> int:
    _enable_compile_cache(args)
    if getattr(args, "sweep", False):
        from jdllm.bench.sweep import run_sweep_command

        return run_sweep_command(args)
    from jdllm.bench import run_bench_cli

    return run_bench_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jdllm", description="Fast diffusion-LLM inference in JAX")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate an answer for one or more prompts")
    g.add_argument("prompt", nargs="+", help="question text (one user turn of the model's chat template)")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument("--chat", action="store_true",
                     help="require the checkpoint's chat_template (tokenizer_config.json) and format each prompt "
                          "as a user turn with it (default: used when the checkpoint has one)")
    fmt.add_argument("--raw", action="store_true", help="feed the text as is, without any template")
    g.add_argument("--system", default=None,
                   help="a system message before each prompt (chat template only) (default: none)")
    _add_json_flag(g, "the prompts, answers, NFE and tokens")
    _add_decode_args(g)
    g.set_defaults(func=cmd_generate)

    ch = sub.add_parser("chat", help="talk to a model: each stdin line is a user turn, formatted with the "
                                     "checkpoint's chat template; /reset clears the history, /exit or EOF ends")
    ch.add_argument("--system", default=None, help="a system message opening the conversation (default: none)")
    ch.add_argument("--no-history", action="store_true",
                    help="format each turn alone instead of the whole conversation (single-turn models such as "
                         "the shipped one)")
    _add_decode_args(ch)
    ch.set_defaults(func=cmd_chat)

    b = sub.add_parser("bench", help="accuracy / NFE / tokens per forward / tokens/s of named recipes")
    b.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    _add_lora_flag(b)
    _add_kernel_flag(b)
    b.add_argument("--recipes", default="vanilla,fast_dllm_parallel,fast_dllm_dual_parallel",
                   help="comma-separated entries `recipe` or `recipe@model` (jdllm/configs/recipes.yaml; model: a "
                        "directory or a shipped model's name)")
    b.add_argument("--n", type=positive_int, default=100, help="held-out problems")
    b.add_argument("--batch-size", type=positive_int, default=16, help="prompts per generate call")
    b.add_argument("--gen-length", type=positive_int, default=None,
                   help="tokens to generate (default: the model's generation_config.json gen_length)")
    b.add_argument("--repeats", type=positive_int, default=1, help="timed passes over the problems")
    b.add_argument("--seed", type=seed_int, default=0, help="seed of the held-out problems and of decoding")
    b.add_argument("--out", default=None, help="write the JSON report here (default: not written)")
    b.add_argument("--plot", default=None, help="write an accuracy-vs-tokens/s Pareto PNG here (default: none)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--sweep", action="store_true",
                   help="instead of --recipes: each policy over a grid of its main knob, accuracy vs NFE / tokens/s "
                        "curves and one area score per policy (jdllm.bench.sweep); --out defaults to "
                        "benchmarks/results/sweep_cpu_<model>.json")
    b.add_argument("--policies", default="all",
                   help="--sweep: comma-separated policies of jdllm.bench.sweep.GRIDS, or 'all'")
    _add_json_flag(b, "the report (instead of the table)")
    _add_cache_flag(b)
    _add_log_flags(b)
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser("convert", help="convert a checkpoint between HF and orbax layouts (--lora: merged in)")
    c.add_argument("src", help="the checkpoint to read (HF or jdllm/orbax directory)")
    c.add_argument("dst", help="the directory to write")
    c.add_argument("--to", choices=["orbax", "hf"], default="orbax", help="layout to write")
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="parameter dtype (default: the checkpoint's own)")
    _add_lora_flag(c)
    _add_log_flags(c)
    c.set_defaults(func=cmd_convert)

    r = sub.add_parser("recipes", help="list the pinned decoding recipes")
    _add_log_flags(r)
    r.set_defaults(func=cmd_recipes)

    # Listed for `jdllm --help`; `main` hands `jdllm eval ...` to lm-evaluation-harness's own parser.
    sub.add_parser("eval", help="lm-evaluation-harness with jdllm's model registered as `jdllm`: takes lm_eval's "
                                "options (jdllm eval --model jdllm --model_args pretrained=DIR,recipe=NAME --tasks "
                                "jdllm_arith --include_path jdllm/eval/tasks); needs the `eval` extra")

    from jdllm.serve.command import add_serve_args, cmd_serve

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server, continuous batching at block granularity")
    add_serve_args(s, positive_int)
    s.set_defaults(func=cmd_serve)

    # Listed for `jdllm --help`; `main` hands `jdllm train ...` to the training script's own parser.
    sub.add_parser("train", help="retrain the shipped model into ./runs (options: jdllm train --help); "
                                 "`jdllm train d2f`: distil its block-causal D2F student (jdllm train d2f --help); "
                                 "`jdllm train words --out DIR`: the word-problem model (jdllm train words --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["train", "d2f"]:  # D2F distillation of the shipped model (its own parser, --help included)
        from jdllm.train.d2f import main as d2f_main

        d2f_main(argv[2:])
        return 0
    if argv[:2] == ["train", "words"]:  # the word-problem model (its own parser, --help included)
        from jdllm.train.words import main as words_main

        configure_logging(0)
        words_main(argv[2:])
        return 0
    if argv[:1] == ["eval"]:  # hand every option to lm-evaluation-harness's parser (--help included)
        try:
            from jdllm.eval.harness import main as eval_main
        except ImportError as e:
            print(f"jdllm eval: error: {e}", file=sys.stderr)
            return 2
        import logging

        logging.getLogger("jdllm").setLevel(logging.INFO)  # jdllm's speed figures, through lm-eval's log handler
        _enable_compile_cache(None)
        return eval_main(argv[1:])
    if argv[:1] == ["train"]:  # hand every option to the training script's own parser (--help included)
        from jdllm.train.shipped import main as train_main

        configure_logging(0)
        train_main(argv[1:])
        return 0
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed its one line (or the help)
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv  # the bench records its own command line
    configure_logging(getattr(args, "verbosity", 0))
    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError, OSError, MemoryError, FloatingPointError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"jdllm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
