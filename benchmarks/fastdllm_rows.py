"""Fast-dLLM's table rows on a tiny model, side by side in one run: NFE, tokens per forward, tokens/s.

Rows (configs/recipes.yaml): vanilla (LLaDA), +Cache (prefix), +Parallel (threshold 0.9), +Cache+Parallel
(prefix + threshold 0.9), DualCache + Parallel. Defaults: the shipped model, gen_length 256 and 1024,
block 32, batch 1 (as in the paper). The shipped model was trained with a 32-token answer region, then (second
stage) a 256-token one; up to gen_length 256 it answers and then fills the rest with EOS, the regime in which
Fast-dLLM's long-generation speedups arise. Compile time is measured apart; tokens/s counts generated tokens only (all gen_length
committed positions, and separately the answer tokens before the first EOS). Not a test: numbers are
hardware dependent; compare ratios within one run.

    python benchmarks/fastdllm_rows.py --gen-lengths 256 1024 --n 4 --out benchmarks/results/fastdllm_rows_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import jdllm
from jdllm.bench import answer_tokens, machine_info
from jdllm.recipes import recipe_kwargs
from jdllm.shipped import load_bundle
from jdllm.tasks.arithmetic import make_problems, score

ROWS = ["vanilla", "fast_dllm_cache", "fast_dllm_parallel", "fast_dllm_prefix_parallel", "fast_dllm_dual_parallel"]


def run(bundle, gen_length: int, recipes: list[str], n: int, batch: int, seed: int) -> list[dict]:
    problems = make_problems(n, split="test", seed=seed)
    prompts = [bundle.encode_prompt(p.question) for p in problems]
    width = max(map(len, prompts))
    rows = []
    for name in recipes:
        kw = recipe_kwargs(name, gen_length, model_config=bundle.model.config)
        call = lambda ps: jdllm.generate(bundle.model, ps, gen_length=gen_length, prompt_length=width, **kw)
        t0 = time.perf_counter()
        call(prompts[:batch])
        first = time.perf_counter() - t0
        nfe, ans, correct, times = [], 0, 0, []
        for i in range(0, n, batch):
            chunk = prompts[i : i + batch]
            real = len(chunk)
            chunk = chunk + [chunk[-1]] * (batch - real)
            t0 = time.perf_counter()
            out = call(chunk)
            times.append(time.perf_counter() - t0)
            for j in range(real):
                nfe.append(int(out.nfe[j]))
                ans += answer_tokens(out.tokens[j], bundle.model.config.eos_id)
                correct += score(bundle.decode_answer(out.tokens[j]), problems[i + j].answer)
        decode_s = float(np.sum(times))
        rows.append({
            "recipe": name, "gen_length": gen_length, "decode_kwargs": kw, "batch": batch, "n": n,
            "accuracy": correct / n, "nfe": float(np.mean(nfe)), "tpf": gen_length / float(np.mean(nfe)),
            "generated_tokens_per_s": n * gen_length / decode_s, "answer_tokens_per_s": ans / decode_s,
            "s_per_forward": decode_s / (float(np.sum(nfe)) / batch) if batch == 1 else None,
            "decode_s": decode_s, "compile_s": max(first - float(np.mean(times)), 0.0),
        })
        base = rows[0]
        r = rows[-1]
        r["speedup_vs_vanilla"] = r["generated_tokens_per_s"] / base["generated_tokens_per_s"]
        print(f"gen {gen_length:5d} {name:28s} acc {100 * r['accuracy']:5.1f}%  NFE {r['nfe']:7.1f}  TPF {r['tpf']:6.2f}  "
              f"gen tok/s {r['generated_tokens_per_s']:8.1f}  ({r['speedup_vs_vanilla']:.2f}x)  compile {r['compile_s']:.1f}s",
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--gen-lengths", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--recipes", nargs="+", default=ROWS)
    ap.add_argument("--n", type=int, default=4, help="held-out problems per row")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    bundle = load_bundle(args.model)
    need = 128 + max(args.gen_lengths)
    if bundle.model.config.max_seq_len < need:
        # Rotary positions have no learned table: only the config's bound stops longer canvases.
        bundle.model.config = bundle.model.config.replace(max_seq_len=need)
    results = []
    for g in args.gen_lengths:
        results += run(bundle, g, args.recipes, args.n, args.batch, args.seed)
    report = {"machine": machine_info(), "model": bundle.model.config.to_dict(), "results": results,
              "command": "python benchmarks/fastdllm_rows.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items() if v is not None)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=repr)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
