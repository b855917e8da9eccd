"""Batch 1 vs a ragged batch of 8: seconds per prompt on the shipped default model, per recipe, side by side.

    python benchmarks/batching.py --out benchmarks/results/batching_cpu.json

For each recipe, the same 8 held-out questions (different prompt lengths) are decoded one call per prompt
(batch 1) and in one left-padded call (batch 8). Every shape is compiled once before timing (compile time is
reported apart); each timing is the median of `--repeats` runs. Per-prompt seconds = wall time of all calls / 8.
Rows are batch-invariant, so both ways give the same tokens (checked). The claim under test (issue 13): batch 8
is never slower per prompt than batch 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jdllm  # noqa: E402
from jdllm.bench import machine_info  # noqa: E402
from jdllm.recipes import recipe_kwargs  # noqa: E402
from jdllm.shipped import load_bundle  # noqa: E402
from jdllm.tasks.arithmetic import make_problems  # noqa: E402

RECIPES = ("vanilla", "fast_dllm_parallel", "fast_dllm_dual_parallel", "frechet_prefix")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_recipe(bundle, name: str, prompts: list[list[int]], gen_length: int, repeats: int) -> dict:
    kw = recipe_kwargs(name, gen_length, model_config=bundle.model.config)
    width = max(map(len, prompts))
    one = lambda p: jdllm.generate(bundle.model, [p], gen_length=gen_length, prompt_length=width, **kw)
    many = lambda: jdllm.generate(bundle.model, prompts, gen_length=gen_length, prompt_length=width, **kw)
    first1, _ = _timed(lambda: one(prompts[0]))
    first8, _ = _timed(many)
    singles, batched = [], []
    for _ in range(repeats):
        dt, outs = _timed(lambda: [one(p) for p in prompts])
        singles.append(dt)
        dt, out8 = _timed(many)
        batched.append(dt)
    alone = np.concatenate([o.tokens for o in outs])
    if not np.array_equal(alone, out8.tokens):
        raise AssertionError(f"{name}: batch-8 tokens differ from batch-1 tokens")
    s1, s8 = statistics.median(singles) / len(prompts), statistics.median(batched) / len(prompts)
    return {
        "recipe": name,
        "s_per_prompt_batch1": s1,
        "s_per_prompt_batch8": s8,
        "speedup_batch8": s1 / s8,
        "nfe_batch1": [int(o.nfe[0]) for o in outs],
        "nfe_batch8": out8.nfe.tolist(),
        "iterations_batch8": out8.iterations,
        "compile_s_batch1": max(first1 - statistics.median(singles) / len(prompts), 0.0),
        "compile_s_batch8": max(first8 - statistics.median(batched), 0.0),
    }


def forward_scaling(bundle, canvas: int, repeats: int = 20) -> dict:
    """The roofline behind vanilla's batch speedup: one model forward over a `canvas`-position canvas at batch 1
    and batch 8 (ms per row, best of `repeats`) and its fraction of the matmul peak measured in the same run. A
    forward already near the peak at batch 1 cannot get much cheaper per row by batching."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jdllm.bench.flops import forward_flops, measure_matmul_peak
    from jdllm.models.transformer import positions_from_mask

    graphdef, params = nnx.split(bundle.model)
    cfg = bundle.model.config

    @jax.jit
    def fwd(params, tokens, valid):
        model = nnx.merge(graphdef, params)
        hidden, _ = model.layers(tokens, positions_from_mask(valid), valid)
        return model.head(hidden[:, -32:])

    peak = measure_matmul_peak()
    out = {"canvas": canvas, "peak_flops_per_s": peak}
    for b in (1, 8):
        tokens, valid = jnp.ones((b, canvas), jnp.int32), jnp.ones((b, canvas), bool)
        fwd(params, tokens, valid).block_until_ready()
        best = min(_timed(lambda: fwd(params, tokens, valid).block_until_ready())[0] for _ in range(repeats))
        flops = b * forward_flops(cfg, canvas, canvas, 32)
        out[f"ms_per_row_batch{b}"] = 1e3 * best / b
        out[f"fraction_of_peak_batch{b}"] = flops / best / peak
    out["forward_speedup_batch8"] = out["ms_per_row_batch1"] / out["ms_per_row_batch8"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--gen-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    bundle = load_bundle("arith-llada-tiny")  # the model its recorded results were measured on
    problems = make_problems(8, split="test", seed=args.seed)
    prompts = [bundle.encode_prompt(p.question) for p in problems]
    rows = [bench_recipe(bundle, r, prompts, args.gen_length, args.repeats) for r in args.recipes.split(",")]
    print(f"{'recipe':28s} {'s/prompt b1':>12s} {'s/prompt b8':>12s} {'b8 speedup':>10s}")
    for r in rows:
        print(f"{r['recipe']:28s} {r['s_per_prompt_batch1']:12.4f} {r['s_per_prompt_batch8']:12.4f} "
              f"{r['speedup_batch8']:9.2f}x")
    roof = forward_scaling(bundle, max(map(len, prompts)) + args.gen_length)
    print(f"model forward over {roof['canvas']} positions: {roof['ms_per_row_batch1']:.3f} ms/row at batch 1 "
          f"({100 * roof['fraction_of_peak_batch1']:.0f}% of the matmul peak), {roof['ms_per_row_batch8']:.3f} "
          f"ms/row at batch 8 ({100 * roof['fraction_of_peak_batch8']:.0f}%)")
    report = {"machine": machine_info(), "gen_length": args.gen_length, "repeats": args.repeats,
              "forward_scaling": roof,
              "prompt_lengths": sorted(map(len, prompts)), "command": "python benchmarks/batching.py " +
              " ".join(argv if argv is not None else sys.argv[1:]), "results": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=repr))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
