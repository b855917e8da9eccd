#!/usr/bin/env python
"""Cost growth with generation length: milliseconds per generated token at batch 1 for gen_length 128 ... 1024,
the D2F student with `recipe="d2f"` (pipelined blocks, exact block-causal cache) side by side with the teacher
under the dual cache + threshold 0.9 (Fast-dLLM), in one run.

Every generation position is decoded (EOS early stop off, so a row cannot end early and make long generations
look cheap); per_token_ms = best-of-`--repeats` decode seconds / gen_length, compile excluded (one warm-up call
per shape). Also reported: NFE and the growth factor against the shortest length.

    python benchmarks/d2f_scaling.py --out benchmarks/results/d2f_scaling_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
import time

import jdllm
from jdllm.bench import machine_info, model_dir
from jdllm.recipes import recipe_kwargs
from jdllm.shipped import load_bundle
from jdllm.tasks.arithmetic import make_problems

QUESTION = make_problems(1, split="test", seed=1)[0].question


def time_call(bundle, kw, gen_length, repeats):
    prompt = [bundle.encode_prompt(QUESTION)]
    out = jdllm.generate(bundle.model, prompt, gen_length=gen_length, **kw)  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jdllm.generate(bundle.model, prompt, gen_length=gen_length, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, int(out.nfe[0])


def decode_kwargs(recipe, gen_length, cfg):
    kw = recipe_kwargs(recipe, gen_length, model_config=cfg)
    if "schedule" in kw:
        kw["schedule"] = dataclasses.replace(kw["schedule"], eos_early_stop=False)
    else:
        kw["eos_early_stop"] = False
    return kw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="arith-llada-tiny-d2f")
    ap.add_argument("--teacher", default="arith-llada-tiny")
    ap.add_argument("--lengths", default="128,256,512,1024")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    runs = [("student", args.student, "d2f"), ("teacher", args.teacher, "fast_dllm_dual_parallel")]
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/d2f_scaling.py " + " ".join(map(shlex.quote, sys.argv[1:])),
              "machine": machine_info(), "batch_size": 1, "question": QUESTION, "rows": [], "baselines": []}
    for role, model, recipe in runs:
        bundle = load_bundle(model_dir(model))
        rows = []
        for g in lengths:
            seconds, nfe = time_call(bundle, decode_kwargs(recipe, g, bundle.model.config), g, args.repeats)
            rows.append({"gen_length": g, "per_token_ms": 1e3 * seconds / g, "nfe": nfe, "seconds": seconds,
                         "model": bundle.name, "recipe": recipe})
            print(f"{role:8s} {bundle.name:24s} {recipe:24s} gen {g:5d}: {rows[-1]['per_token_ms']:.3f} ms/token, "
                  f"NFE {nfe}", flush=True)
        for r in rows:
            r["growth_vs_shortest"] = r["per_token_ms"] / rows[0]["per_token_ms"]
        report["rows" if role == "student" else "baselines"] = rows
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
