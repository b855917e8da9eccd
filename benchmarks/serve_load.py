"""Bounded load test of `jdllm serve` (issue 15): N requests from C concurrent clients against `--slots S`, then
the same requests one at a time, on a fresh server per recipe.

Checks: every request succeeds (HTTP 200, answer scored against the task's gold), after the concurrent phase one
more request answers and `/metrics` counts N + 1 completed requests. Reports requests/s of both phases, their
ratio (measured in the same run on the same server: the CPU is shared, absolute numbers drift), p50 / p99
latency, accuracy, and the server's own metrics. The server warms up (compiles every batch size of its default
lane) before it listens, so neither phase pays compile time.

    python benchmarks/serve_load.py --out benchmarks/results/serve_cpu.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(slots: int, recipe: str | None, log_path: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "jdllm.cli", "serve", "--port", str(port), "--slots", str(slots),
           "--log-level", "warning", "--no-compile-cache"] + (["--recipe", recipe] if recipe else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base, time.perf_counter() - t0
        except httpx.TransportError:
            time.sleep(0.3)


def metrics(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics").text
    return {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in text.splitlines() if not ln.startswith("#"))}


def ask(client: httpx.Client, base: str, prompt: str) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    r = client.post(base + "/v1/completions", json={"prompt": prompt}, timeout=600)
    text = r.json()["choices"][0]["text"] if r.status_code == 200 else r.text
    return time.perf_counter() - t0, r.status_code, text


def phase(base: str, prompts: list[str], concurrency: int) -> dict:
    clients = [httpx.Client() for _ in range(concurrency)]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda ip: ask(clients[ip[0] % concurrency], base, ip[1]), enumerate(prompts)))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    lat = np.array([r[0] for r in results])
    return dict(concurrency=concurrency, requests=len(prompts), wall_s=wall, requests_per_s=len(prompts) / wall,
                latency_p50_s=float(np.percentile(lat, 50)), latency_p99_s=float(np.percentile(lat, 99)),
                statuses=sorted({r[1] for r in results}), texts=[r[2] for r in results])


def run_recipe(recipe: str | None, args, problems) -> dict:
    from jdllm.tasks.arithmetic import format_prompt, score

    prompts = [format_prompt(p.question) for p in problems]
    log = Path(args.log_dir) / f"serve_{recipe or 'default'}.log"
    proc, base, startup = start_server(args.slots, recipe, log)
    try:
        conc = phase(base, prompts, args.concurrency)
        extra = ask(httpx.Client(), base, prompts[0])
        after = metrics(base)
        seq = phase(base, prompts, 1)
        final = metrics(base)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    acc = lambda texts: float(np.mean([score(t, p.answer) for t, p in zip(texts, problems)]))  # noqa: E731
    row = dict(recipe=recipe or "model default (vanilla: block 32, one step per token)", server_startup_s=startup)
    for name, res in (("concurrent", conc), ("sequential", seq)):
        res["accuracy"] = acc(res.pop("texts"))
        row[name] = res
    row["throughput_ratio"] = conc["requests_per_s"] / seq["requests_per_s"]
    row["all_succeeded"] = conc["statuses"] == [200] and seq["statuses"] == [200] and extra[1] == 200
    row["extra_request_answered"] = extra[1] == 200 and score(extra[2], problems[0].answer)
    row["metrics_ok_after_concurrent_plus_one"] = after['jdllm_requests_total{status="ok"}']
    row["metrics_after_all"] = {k: v for k, v in final.items()}
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--recipes", default=",fast_dllm_parallel",
                   help="comma-separated recipes (empty entry: the model directory's default settings)")
    p.add_argument("--log-dir", default="/tmp")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from jdllm.bench import machine_info
    from jdllm.tasks.arithmetic import make_problems

    problems = make_problems(args.requests, split="test", seed=7)
    rows = [run_recipe(r or None, args, problems) for r in args.recipes.split(",")]
    report = dict(machine=machine_info(), command="python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
                  requests=args.requests, concurrency=args.concurrency, slots=args.slots, results=rows,
                  note="throughput_ratio = requests/s with the concurrent clients / requests/s one at a time, "
                       "both measured in this run on the same server (shared CPU: absolute times drift)")
    for r in rows:
        print(f"{r['recipe']}: concurrent {r['concurrent']['requests_per_s']:.2f} req/s "
              f"(p50 {r['concurrent']['latency_p50_s']:.3f}s, p99 {r['concurrent']['latency_p99_s']:.3f}s), "
              f"sequential {r['sequential']['requests_per_s']:.2f} req/s, ratio {r['throughput_ratio']:.2f}x, "
              f"accuracy {r['concurrent']['accuracy']:.3f}, ok after N+1: {r['metrics_ok_after_concurrent_plus_one']:.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    ok = all(r["all_succeeded"] and r["metrics_ok_after_concurrent_plus_one"] == args.requests + 1 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
