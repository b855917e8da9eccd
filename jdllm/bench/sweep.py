"""`jdllm bench --sweep`: each commit policy over a grid of its main knob, as accuracy-vs-NFE / tokens-per-second
curves, so that policies are compared as quality-speed trade-offs rather than at one published setting.

Every point decodes the same held-out problems with blocks of 32, `steps = gen_length` (the top-k fallback),
greedy, no cache; only the policy changes. Per policy the report gives its curve and:
- `fewest_nfe_within_1pt`: the fewest mean NFE among its points whose accuracy is within 1 point of vanilla
  (None when no point is);
- `area`: the area under its accuracy-vs-TPF curve above a floor of (vanilla accuracy - 5 points), with
  accuracy in points and TPF (tokens per forward = gen_length / NFE) on the x axis. The curve is the vanilla
  point (TPF 1) followed by the policy's points in order of TPF, joined by straight lines; only the part above
  the floor counts (`area_above_floor`). A policy that keeps accuracy while committing more tokens per forward
  scores higher; one that loses more than 5 points scores nothing beyond that TPF.
Knob grids (`GRIDS`): threshold tau (Fast-dLLM), factor f (Fast-dLLM), Fréchet delta (Fast-dLLM++), R2 tau
(R2-dLLM, its GSM8K script's other settings), KLASS confidence threshold (KL threshold 0.01), EB gamma.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Sequence

import numpy as np

from jdllm.bench import bench_kwargs, machine_info
from jdllm.decode.policies import KLASS, R2, EntropyBounded, Frechet
from jdllm.log import get_logger
from jdllm.shipped import Bundle
from jdllm.tasks import task_module

_LOG = get_logger(__name__)

FLOOR_POINTS = 5.0  # the area counts accuracy above vanilla - 5 points
WITHIN_POINTS = 1.0  # "equal accuracy": within 1 point of vanilla

# policy -> (knob name, grid, kwargs of jdllm.generate for one knob value given (gen_length, model config))
GRIDS: dict[str, tuple[str, tuple[float, ...], Callable[[float, int, Any], dict[str, Any]]]] = {
    "threshold": ("tau", (0.5, 0.6, 0.7, 0.8, 0.9, 0.95), lambda v, g, c: {"threshold": v}),
    "factor": ("factor", (0.5, 1.0, 2.0, 4.0, 8.0), lambda v, g, c: {"factor": v}),
    # delta in [-1, 1) (G_1 = 2 c_1 - 1 < 1); 0.02 and 0.25 are the paper's GSM8K settings, larger is more careful
    "frechet": ("delta", (0.02, 0.1, 0.25, 0.5, 0.75, 0.9), lambda v, g, c: {"policy": Frechet(delta=v)}),
    "r2": ("tau", (0.5, 0.7, 0.8, 0.9, 0.95), lambda v, g, c: {"policy": R2(
        tau=v, window=3, window_mean=0.8, max_decoded_in_window=1, token_cluster="confidence", temporal_steps=3,
        temporal_score=0.8, temporal_mode="last")}),
    "klass": ("conf_threshold", (0.5, 0.6, 0.7, 0.8, 0.9), lambda v, g, c: {"policy": KLASS(
        block_length=min(32, g), steps_per_block=min(32, g), conf_threshold=v, kl_threshold=0.01, history=2, unmask="all",
        vocab_size=c.vocab_size)}),
    "eb": ("gamma", (0.01, 0.05, 0.15, 0.5, 1.0, 2.0), lambda v, g, c: {"policy": EntropyBounded(
        gamma=v, mask_id=c.mask_id)}),
}


def base_kwargs(gen_length: int) -> dict[str, Any]:
    """What every point shares: blocks of 32, one top-k step per token as fallback, greedy, no cache."""
    return {"block_length": min(32, gen_length), "steps": gen_length, "temperature": 0.0, "cache": None}


def area_above_floor(tpf: Sequence[float], acc_points: Sequence[float], floor: float) -> float:
    """Area between the piecewise-linear curve through (tpf, acc) (sorted by tpf) and the line `floor`, counting
    only where the curve is above it; exact for straight segments crossing the floor."""
    order = np.argsort(np.asarray(tpf, float), kind="stable")
    x = np.asarray(tpf, float)[order]
    y = np.asarray(acc_points, float)[order] - floor
    total = 0.0
    for x0, x1, y0, y1 in zip(x[:-1], x[1:], y[:-1], y[1:]):
        if y0 >= 0 and y1 >= 0:
            total += (x1 - x0) * (y0 + y1) / 2
        elif y0 > 0 or y1 > 0:  # crosses the floor: the triangle above it
            top, w = max(y0, y1), (x1 - x0) * max(y0, y1) / (abs(y0) + abs(y1))
            total += w * top / 2
    return float(total)


def summarize(vanilla: dict[str, Any], points: list[dict[str, Any]]) -> dict[str, Any]:
    """A policy's curve summary against vanilla (see the module docstring)."""
    v_acc = 100 * vanilla["accuracy"]
    ok = [p["nfe"] for p in points if 100 * p["accuracy"] >= v_acc - WITHIN_POINTS]
    tpf = [vanilla["tpf"]] + [p["tpf"] for p in points]
    acc = [v_acc] + [100 * p["accuracy"] for p in points]
    return {"fewest_nfe_within_1pt": min(ok) if ok else None,
            "area": area_above_floor(tpf, acc, v_acc - FLOOR_POINTS),
            "max_drop_points": v_acc - min(100 * p["accuracy"] for p in points)}


def run_sweep(bundle: Bundle, policies: Sequence[str] | None = None, n: int = 100, batch_size: int = 50,
              gen_length: int | None = None, seed: int = 0, grids: dict | None = None) -> dict[str, Any]:
    """Vanilla plus every policy of `policies` (default: all of `GRIDS`) over its grid, on `n` held-out problems
    of the model's task; returns the report (curves, summaries, the threshold / Fréchet NFE ratio)."""
    grids = GRIDS if grids is None else grids
    policies = list(grids) if policies is None else list(policies)
    unknown = [p for p in policies if p not in grids]
    if unknown:
        raise ValueError(f"--policies: unknown {unknown}; known: {sorted(grids)}")
    gen_length = bundle.gen_length if gen_length is None else gen_length
    problems = task_module(bundle.task).make_problems(n, split="test", seed=seed)
    base = base_kwargs(gen_length)
    vanilla = bench_kwargs(bundle, "vanilla", {**base, "remasking": "low_confidence"}, problems, gen_length,
                           batch_size, seed=seed)
    _LOG.info(f"vanilla: accuracy {vanilla['accuracy']:.3f}, NFE {vanilla['nfe']:.1f}")
    curves, summary = {}, {}
    for name in policies:
        knob, values, make = grids[name]
        points = []
        for v in values:
            row = bench_kwargs(bundle, f"{name}:{knob}={v}", {**base, **make(v, gen_length, bundle.model.config)},
                               problems, gen_length, batch_size, seed=seed)
            points.append({"knob": knob, "value": v, **{k: row[k] for k in (
                "accuracy", "nfe", "tpf", "tokens_per_s", "decode_s", "compile_s", "answer_tokens")}})
            _LOG.info(f"{name} {knob}={v}: accuracy {row['accuracy']:.3f}, NFE {row['nfe']:.1f}")
        curves[name] = points
        summary[name] = summarize(vanilla, points)
    thr, fre = summary.get("threshold", {}), summary.get("frechet", {})
    ratio = None
    if thr.get("fewest_nfe_within_1pt") and fre.get("fewest_nfe_within_1pt"):
        ratio = thr["fewest_nfe_within_1pt"] / fre["fewest_nfe_within_1pt"]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": bundle.name,
        "task": {"name": bundle.task, "split": "test", "n": n, "seed": seed},
        "gen_length": gen_length,
        "batch_size": batch_size,
        "base_kwargs": base,
        "definitions": {"area": f"area under accuracy (points) vs TPF above vanilla - {FLOOR_POINTS} points, curve "
                                "= vanilla then the policy's points by TPF, piecewise linear",
                        "fewest_nfe_within_1pt": f"fewest mean NFE at accuracy >= vanilla - {WITHIN_POINTS} point"},
        "vanilla": {k: vanilla[k] for k in ("accuracy", "nfe", "tpf", "tokens_per_s", "decode_s", "compile_s")},
        "curves": curves,
        "summary": summary,
        "threshold_nfe_over_frechet_nfe": ratio,
    }


def run_sweep_cli(args, bundle: Bundle) -> int:
    """`jdllm bench --sweep`: run, print one line per point, write the JSON (`--out`, default
    benchmarks/results/sweep_cpu_<model>.json) and, with `--plot`, the curves."""
    import json
    import os

    policies = None if args.policies == "all" else [p.strip() for p in args.policies.split(",") if p.strip()]
    report = run_sweep(bundle, policies, n=args.n, batch_size=args.batch_size, gen_length=args.gen_length,
                       seed=args.seed)
    if getattr(args, "argv", None) is not None:
        import shlex

        report["command"] = "jdllm " + " ".join(shlex.quote(a) for a in args.argv)
    v = report["vanilla"]
    print(f"vanilla: {100 * v['accuracy']:.1f}% NFE {v['nfe']:.1f} {v['tokens_per_s']:.0f} tok/s")
    for name, pts in report["curves"].items():
        s = report["summary"][name]
        print(f"{name}: area {s['area']:.1f}, fewest NFE within 1 pt {s['fewest_nfe_within_1pt']}, "
              f"max drop {s['max_drop_points']:.1f} pts")
        for p in pts:
            print(f"  {p['knob']}={p['value']}: {100 * p['accuracy']:.1f}% NFE {p['nfe']:.1f} "
                  f"{p['tokens_per_s']:.0f} tok/s")
    out = args.out or os.path.join("benchmarks", "results", f"sweep_cpu_{bundle.name}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    _LOG.info(f"wrote {out}")
    if args.plot:
        plot_sweep(report, args.plot)
        _LOG.info(f"wrote {args.plot}")
    return 0


def plot_sweep(report: dict[str, Any], path: str) -> None:
    """Accuracy (0..100%) against NFE and against tokens/s, one line per policy (legend, no point labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    v = report["vanilla"]
    for ax, key, label in ((axes[0], "nfe", "mean NFE per problem (lower is faster)"),
                           (axes[1], "tokens_per_s", "answer tokens / s (compile excluded)")):
        for name, pts in report["curves"].items():
            pts = sorted(pts, key=lambda p: p[key])
            score = report["summary"][name]["area"]
            ax.plot([p[key] for p in pts], [100 * p["accuracy"] for p in pts], "o-", ms=4,
                    label=f"{name} ({pts[0]['knob']}; area {score:.1f})")
        ax.plot([v[key]], [100 * v["accuracy"]], "k*", ms=12, label="vanilla")
        ax.axhline(100 * v["accuracy"] - FLOOR_POINTS, color="grey", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(f"jdllm bench --sweep: {report['model']}, {report['task']['n']} held-out problems, "
                 f"gen_length {report['gen_length']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run_sweep_command(args) -> int:
    """`jdllm bench --sweep`: the output checks first, then the model, then `run_sweep_cli`."""
    from jdllm.bench import check_output_path
    from jdllm.shipped import load_bundle

    check_output_path("--out", args.out)
    check_output_path("--plot", args.plot)
    if args.plot:
        import matplotlib  # noqa: F401  (fail now, not after the run)
    return run_sweep_cli(args, load_bundle(args.model, check_finite=True, lora=getattr(args, "lora", None)))
