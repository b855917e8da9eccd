"""dLLM-Cache under threshold decoding: accuracy against how stale the response features may get.

    python benchmarks/dllm_cache_staleness.py --model DIR --out benchmarks/results/dllm_cache_staleness_<name>.json

Why: with one token per step, 7 model calls between response refreshes (the paper's setting) let about 7 tokens
change under stale features; a threshold step commits several tokens, so the same 7 calls can span most of the
answer. This script decodes the model's held-out problems with Fast-dLLM threshold 0.9 (blocks of 32, greedy)
and no cache, then `DLLMCache` at response intervals 7, 4, 2, 1 (ratio 0.25) and at interval 7 with every row
recomputed (ratio 1.0). Interval 1 and ratio 1.0 recompute every response row at every call; only the prompt
rows reuse their features (refreshed every 100 calls; in a bidirectional model they see the response, so these
runs are close to no cache, not identical). If they match no cache and interval 7 does not, the loss is the
method's staleness, not a bug in how the cache composes with the policy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jdllm.bench import bench_kwargs, machine_info  # noqa: E402
from jdllm.bench.sweep import base_kwargs  # noqa: E402
from jdllm.decode.caches import DLLMCache  # noqa: E402
from jdllm.shipped import load_bundle  # noqa: E402
from jdllm.tasks import task_module  # noqa: E402

SETTINGS = [("no cache", None), ("response 7, ratio 0.25", DLLMCache(100, 7, 0.25)),
            ("response 4, ratio 0.25", DLLMCache(100, 4, 0.25)), ("response 2, ratio 0.25", DLLMCache(100, 2, 0.25)),
            ("response 1, ratio 0.25", DLLMCache(100, 1, 0.25)), ("response 7, ratio 1.0", DLLMCache(100, 7, 1.0))]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory or shipped name (default: the shipped model)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    bundle = load_bundle(args.model)
    gen_length = bundle.gen_length
    problems = task_module(bundle.task).make_problems(args.n, "test", seed=0)
    base = {**base_kwargs(gen_length), "threshold": args.threshold}  # the sweep's points: blocks of 32, greedy
    rows = []
    for name, cache in SETTINGS:
        row = bench_kwargs(bundle, name, {**base, "cache": cache}, problems, gen_length, args.batch_size)
        rows.append({"setting": name, "cache": repr(cache), "accuracy": row["accuracy"], "nfe": row["nfe"],
                     "tokens_per_s": row["tokens_per_s"]})
        print(f"{name:24s} accuracy {row['accuracy']:.3f}  NFE {row['nfe']:.2f}  {row['tokens_per_s']:.0f} tok/s",
              flush=True)
    if args.out:
        report = {"machine": machine_info(), "command": "python benchmarks/dllm_cache_staleness.py "
                  + " ".join(argv if argv is not None else sys.argv[1:]), "model": bundle.name,
                  "gen_length": gen_length, "threshold": args.threshold, "n": args.n, "results": rows}
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
