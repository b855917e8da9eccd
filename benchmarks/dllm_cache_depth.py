"""dLLM-Cache's cost against model depth: vanilla vs `DLLMCache()` on LLaDA models of 4 to 32 layers, side by side.

    python benchmarks/dllm_cache_depth.py --out benchmarks/results/dllm_cache_depth_cpu.json

Why: the official dLLM-Cache recomputes every position in layer 0 at every step ("enforcing layer_id==0 refresh
all"); only layers 1..N-1 reuse cached features. On the shipped 4-layer model that one layer is a quarter of the
network, which caps the saving near 2x positions however small `transfer_ratio` is; LLaDA-8B has 32 layers. This
script measures, per depth, positions recomputed and decode seconds of both, on the shipped model's width
(d_model 128, 4 heads, MLP 512) with random weights (the cost of a cached step does not depend on the weights:
the number of recomputed rows per layer is static), the shipped task's prompts, gen_length 256, blocks of 32,
one token per step (vanilla's schedule), paper defaults (prompt 100, response 7, ratio 0.25). Compile time is
excluded (one warm-up call per program); each timing is the best of `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

import jdllm  # noqa: E402
from jdllm.bench import machine_info  # noqa: E402
from jdllm.decode.caches import DLLMCache  # noqa: E402
from jdllm.models.transformer import Transformer  # noqa: E402
from jdllm.shipped import load_bundle  # noqa: E402
from jdllm.tasks.arithmetic import make_problems  # noqa: E402


def timed_generate(model, prompts, repeats: int, **kw):
    out = jdllm.generate(model, prompts, **kw)  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jdllm.generate(model, prompts, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="4,8,16,32")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    bundle = load_bundle("arith-llada-tiny")  # the model its recorded results were measured on
    prompts = [bundle.encode_prompt(p.question) for p in make_problems(args.batch_size, split="test", seed=0)]
    kw = dict(gen_length=args.gen_length, block_length=32, steps=args.gen_length, prompt_length=max(map(len, prompts)))
    rows = []
    for depth in map(int, args.depths.split(",")):
        cfg = bundle.model.config.replace(n_layers=depth)
        model = Transformer(cfg, rngs=nnx.Rngs(depth))
        t_van, van = timed_generate(model, prompts, args.repeats, **kw)
        t_dc, dc = timed_generate(model, prompts, args.repeats, cache=DLLMCache(), **kw)
        row = {"n_layers": depth, "vanilla_s": t_van, "dllm_cache_s": t_dc, "speedup": t_van / t_dc,
               "recomputed_vanilla": float(np.mean(van.recomputed)), "recomputed_dllm_cache": float(np.mean(dc.recomputed)),
               "positions_ratio": float(np.mean(van.recomputed) / np.mean(dc.recomputed)),
               "flops_ratio": float(np.mean(van.flops) / np.mean(dc.flops)),
               "tokens_equal_fraction": float(np.mean(van.tokens == dc.tokens))}
        rows.append(row)
        print(f"{depth:3d} layers: vanilla {t_van:7.2f} s, dllm_cache {t_dc:7.2f} s, {row['speedup']:.2f}x time, "
              f"{row['positions_ratio']:.2f}x fewer positions, {row['flops_ratio']:.2f}x fewer FLOPs", flush=True)
    report = {"machine": machine_info(), "command": "python benchmarks/dllm_cache_depth.py " +
              " ".join(argv if argv is not None else sys.argv[1:]), "gen_length": args.gen_length,
              "batch_size": args.batch_size, "cache": repr(DLLMCache()), "devices": jax.device_count(), "results": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
