"""The honest benchmark: accuracy, NFE, tokens per forward and generated tokens/s of named recipes, side by side.

Conventions (one report format for every recipe):
- `tokens_per_s`: answer tokens (generated tokens before the first EOS; prompt and EOS padding excluded) per
  second of decode wall time, summed over the held-out set; compile time excluded (reported apart).
- `compile_s`: wall time of the first (compiling) call minus the mean time of a compiled call of that shape.
- `nfe`: mean forward evaluations per problem that really ran (the references' count, less the empty forward
  Fast-dLLM's cached loops run after a block-start forward that already finished the block).
- `tpf` (tokens per forward): gen_length / NFE, positions decoded per forward (EOS fill included, as Fast-dLLM).
- `speedup_*`: ratios of tokens/s to the named recipe measured in the same run.
- `recomputed`: mean positions per problem run through a transformer layer, summed over layers and steps (the
  decode's compute account, `GenerateOutput.recomputed`: NFE x canvas x layers without a cache, less with one).
- `flops_per_token`: analytic model FLOPs per answer token from that account (`GenerateOutput.flops`,
  `jdllm.decode.cost.account_flops`; the adaptive caches' extra projections included); `achieved_flops_per_s`:
  those FLOPs over the decode wall time; `fraction_of_peak`: that over
  `peak_flops_per_s`, a jitted float32 matmul measured on the same device in the same run.
Every batch has the same shape (prompts padded to one width, the last batch filled with repeats and the
extra rows discarded), so one program is compiled per recipe.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import time
from typing import Any, Sequence

import jax
import numpy as np

import jdllm
from jdllm.bench.flops import measure_matmul_peak
from jdllm.log import get_logger
from jdllm.recipes import recipe_kwargs
from jdllm.shipped import Bundle, load_bundle
from jdllm.tasks import task_module
from jdllm.tasks.arithmetic import Problem, score

_LOG = get_logger(__name__)


def _batches(items: list, size: int) -> list[tuple[list, int]]:
    out = []
    for i in range(0, len(items), size):
        chunk = items[i : i + size]
        real = len(chunk)
        out.append((chunk + [chunk[-1]] * (size - real), real))
    return out


def answer_tokens(row: np.ndarray, eos_id: int | None) -> int:
    row = list(map(int, row))
    return row.index(eos_id) if eos_id is not None and eos_id in row else len(row)


def bench_recipe(bundle: Bundle, name: str, problems: Sequence[Problem], gen_length: int, batch_size: int,
                 repeats: int = 1, seed: int = 0, progress=None) -> dict[str, Any]:
    """Run one recipe over `problems`; returns its row of the report."""
    kw = recipe_kwargs(name, gen_length, model_config=bundle.model.config)
    return bench_kwargs(bundle, name, kw, problems, gen_length, batch_size, repeats, seed, progress)


def bench_kwargs(bundle: Bundle, name: str, kw: dict[str, Any], problems: Sequence[Problem], gen_length: int,
                 batch_size: int, repeats: int = 1, seed: int = 0, progress=None) -> dict[str, Any]:
    """Run `jdllm.generate(**kw)` over `problems`; returns a report row named `name`."""
    prompts = [bundle.encode_prompt(p.question) for p in problems]
    width = max(map(len, prompts))
    batches = _batches(list(range(len(problems))), batch_size)
    call = lambda idx: jdllm.generate(bundle.model, [prompts[i] for i in idx], gen_length=gen_length,
                                      prompt_length=width, seed=seed, **kw)
    t0 = time.perf_counter()
    call(batches[0][0])
    first_s = time.perf_counter() - t0
    correct, nfe, recomputed, ans_tokens, decode_s, batch_times, flops = 0, [], [], 0, 0.0, [], 0.0
    for rep in range(repeats):
        for idx, real in batches:
            t0 = time.perf_counter()
            out = call(idx)
            dt = time.perf_counter() - t0
            decode_s += dt
            batch_times.append(dt)
            if rep == 0:
                for j in range(real):
                    p = problems[idx[j]]
                    correct += score(bundle.decode_answer(out.tokens[j]), p.answer)
                    nfe.append(int(out.nfe[j]))
                    recomputed.append(int(out.recomputed[j]))
                    flops += float(out.flops[j])
                    ans_tokens += answer_tokens(out.tokens[j], bundle.model.config.eos_id)
            if progress is not None:
                progress.update(1)
    decode_s /= repeats
    mean_nfe = float(np.mean(nfe))
    return {
        "recipe": name,
        "model": bundle.name,
        "decode_kwargs": kw,
        "accuracy": correct / len(problems),
        "nfe": mean_nfe,
        "tpf": gen_length / mean_nfe,
        "recomputed": float(np.mean(recomputed)),
        "answer_tokens": ans_tokens,
        "tokens_per_s": ans_tokens / decode_s,
        "flops_per_token": flops / max(ans_tokens, 1),
        "achieved_flops_per_s": flops / decode_s,
        "decode_s": decode_s,
        "compile_s": max(first_s - float(np.mean(batch_times)), 0.0),
        "wall_s": first_s + decode_s * repeats,
    }


def machine_info() -> dict[str, Any]:
    import flax

    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device": getattr(dev, "device_kind", str(dev)),
        "n_devices": jax.device_count(),
        "host": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "jdllm": jdllm.__version__,
    }


def run_bench(bundle: Bundle, recipes: Sequence[str], n: int = 100, batch_size: int = 16, gen_length: int | None = None,
              repeats: int = 1, seed: int = 0, show_progress: bool = True,
              models: dict[str, Bundle] | None = None) -> dict[str, Any]:
    """Benchmark `recipes` on `n` held-out problems. An entry `recipe@model` runs on `models[model]` (loaded by
    the caller), a plain `recipe` on `bundle`; every row names its model. Speedups are against the first
    `vanilla` / `fast_dllm_parallel` row."""
    gen_length = bundle.gen_length if gen_length is None else gen_length
    if n < 1 or batch_size < 1 or repeats < 1 or not recipes:
        raise ValueError(f"n, batch_size and repeats must be >= 1 and recipes non-empty, got n={n}, "
                         f"batch_size={batch_size}, repeats={repeats}, recipes={list(recipes)}")
    problems = task_module(bundle.task).make_problems(n, split="test", seed=seed)
    rows = []
    progress = None
    if show_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(recipes) * repeats * -(-n // batch_size), desc="bench", unit="batch")
    for name in recipes:
        if progress is not None:
            progress.set_postfix_str(name)
        recipe, model = split_entry(name)
        row_bundle = bundle if model is None else (models or {})[model]
        rows.append(bench_recipe(row_bundle, recipe, problems, gen_length, batch_size, repeats, seed, progress))
        rows[-1]["entry"] = name
    if progress is not None:
        progress.close()
    peak = measure_matmul_peak()
    for r in rows:
        r["fraction_of_peak"] = r["achieved_flops_per_s"] / peak
    by_name = {}
    for r in rows:
        by_name.setdefault(r["recipe"], r)
    for r in rows:
        for base in ("vanilla", "fast_dllm_parallel"):
            if base in by_name:
                r[f"speedup_vs_{base}"] = r["tokens_per_s"] / by_name[base]["tokens_per_s"]
                r[f"nfe_ratio_vs_{base}"] = r["nfe"] / by_name[base]["nfe"]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": bundle.model.config.to_dict(),
        "task": {"name": bundle.task, "split": "test", "n": n, "seed": seed},
        "gen_length": gen_length,
        "batch_size": batch_size,
        "repeats": repeats,
        "peak_flops_per_s": peak,
        "results": rows,
    }


def format_table(report: dict[str, Any]) -> str:
    head = (f"{'recipe':28s} {'acc':>6s} {'NFE':>7s} {'TPF':>6s} {'recomp':>8s} {'tok/s':>9s} {'x vanilla':>9s} "
            f"{'compile s':>9s} {'MFLOP/tok':>9s} {'% peak':>6s}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        sp = r.get("speedup_vs_vanilla")
        lines.append(
            f"{r.get('entry', r['recipe']):28s} {100 * r['accuracy']:5.1f}% {r['nfe']:7.1f} {r['tpf']:6.2f} "
            f"{r.get('recomputed', float('nan')):8.0f} {r['tokens_per_s']:9.1f} "
            f"{(f'{sp:.2f}x' if sp else '-'):>9s} {r['compile_s']:9.1f} {r['flops_per_token'] / 1e6:9.2f} "
            f"{100 * r['fraction_of_peak']:6.2f}"
        )
    m = report["machine"]
    lines.append(f"({m['device']} x{m['n_devices']}, jax {m['jax']}, gen_length {report['gen_length']}, "
                 f"batch {report['batch_size']}, n {report['task']['n']}, "
                 f"matmul peak {report['peak_flops_per_s'] / 1e9:.1f} GFLOP/s)")
    return "\n".join(lines)


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both x and y (higher is better), sorted by x."""
    front, best = [], -float("inf")
    for i in sorted(range(len(xs)), key=lambda i: -xs[i]):
        if ys[i] > best:
            front.append(i)
            best = ys[i]
    return sorted(front, key=lambda i: xs[i])


def plot_pareto(report: dict[str, Any], path: str):
    """Accuracy (%) against tokens/s of every recipe, with the Pareto front, saved to `path`; returns the
    (closed) matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    xs = [r["tokens_per_s"] for r in rows]
    ys = [100 * r["accuracy"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(xs, ys)
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(r["recipe"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(xs, ys)
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", alpha=0.6, label="Pareto front")
    ax.set_xlabel("generated tokens / s (answer tokens, compile excluded)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"jdllm bench: {report['machine']['device']}, gen_length {report['gen_length']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def split_entry(entry: str) -> tuple[str, str | None]:
    """`recipe` or `recipe@model` (model: a model directory, or the name of one under jdllm/assets/models)."""
    recipe, _, model = entry.partition("@")
    return recipe, (model or None)


def model_dir(spec: str) -> str:
    """A `@model` of --recipes: an existing directory, else a shipped model's name."""
    from jdllm.shipped import assets_dir

    if os.path.isdir(spec):
        return spec
    shipped = os.path.join(assets_dir(), spec)
    if os.path.isdir(shipped):
        return shipped
    known = sorted(os.listdir(assets_dir()))
    raise ValueError(f"--recipes: no model directory {spec!r} (nor a shipped model of that name; shipped: "
                     f"{', '.join(known)})")


def parse_recipe_names(text: str) -> list[str]:
    """Comma-separated entries `recipe` or `recipe@model`: non-empty, each recipe known (configs/recipes.yaml),
    each model a directory or shipped model name, no entry repeated."""
    from jdllm.recipes import load_recipes

    names = [r.strip() for r in text.split(",")]
    if not any(names):
        raise ValueError(f"--recipes names no recipe ({text!r}); see `jdllm recipes`")
    if not all(names) or any(not split_entry(n)[0] for n in names):
        raise ValueError(f"--recipes {text!r} has an empty name between commas")
    known = load_recipes()
    for n in names:
        if split_entry(n)[1] is not None:
            model_dir(split_entry(n)[1])
    unknown = [split_entry(n)[0] for n in names if split_entry(n)[0] not in known]
    if unknown:
        raise ValueError(f"unknown recipe {unknown[0]!r} in --recipes; known: {', '.join(sorted(known))}")
    repeated = [n for i, n in enumerate(names) if n in names[:i]]
    if repeated:
        raise ValueError(f"recipe {repeated[0]!r} appears twice in --recipes")
    return names


def check_output_path(flag: str, path: str | None) -> None:
    """The file `path` can be written: its directory exists and is writable, and it is not a directory."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a directory; give a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path}: directory {folder} is not writable")


def check_bench_recipes(bundle: Bundle, recipes: Sequence[str], gen_length: int,
                        models: dict[str, Bundle] | None = None) -> None:
    """Every recipe's generate arguments at this gen_length pass jdllm.validation (before any compile)."""
    from jdllm.validation import check_generate_args

    for entry in recipes:
        name, model = split_entry(entry)
        cfg = (bundle if model is None else (models or {})[model]).model.config
        try:
            kw = recipe_kwargs(name, gen_length, model_config=cfg)
            check_generate_args(gen_length=gen_length, **kw)
            if kw.get("cache") == "exact" and cfg.attention != "block_causal":
                raise ValueError("cache='exact' needs a block-causal model (a D2F student): run it as "
                                 f"{name}@<student model>")
        except (TypeError, ValueError) as e:
            raise ValueError(f"recipe {name!r} at gen_length {gen_length}: {e}") from None


def run_bench_cli(args) -> int:
    recipes = parse_recipe_names(args.recipes)  # every check that needs no model runs first
    check_output_path("--out", args.out)
    check_output_path("--plot", args.plot)
    if args.plot:
        import matplotlib  # noqa: F401  (fail now, not after the run)
    kernel = getattr(args, "attention_kernel", "auto")
    bundle = load_bundle(args.model, check_finite=True, lora=getattr(args, "lora", None), attention_kernel=kernel)
    models = {m: load_bundle(model_dir(m), check_finite=True, attention_kernel=kernel)
              for m in {split_entry(r)[1] for r in recipes} - {None}}
    check_bench_recipes(bundle, recipes, args.gen_length or bundle.gen_length, models)
    report = run_bench(bundle, recipes, n=args.n, batch_size=args.batch_size, gen_length=args.gen_length,
                       repeats=args.repeats, seed=args.seed, show_progress=not args.no_progress, models=models)
    if getattr(args, "argv", None) is not None:
        report["command"] = "jdllm " + " ".join(shlex.quote(a) for a in args.argv)
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2, default=repr))  # policy objects are written as their repr
    else:
        print(format_table(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=repr)
        _LOG.info(f"wrote {args.out}")
    if args.plot:
        plot_pareto(report, args.plot)
        _LOG.info(f"wrote {args.plot}")
    return 0
