"""jdllm.bench: scoring, answer tokens, NFE / tokens per forward, speedups, compile time apart and the JSON report,
on a tiny run of the shipped model (3 held-out problems, batch 2, gen_length 32) with every expected value
recomputed here from the raw `jdllm.generate` outputs."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jdllm
from jdllm import bench
from jdllm.recipes import recipe_kwargs
from jdllm.shipped import load_bundle
from jdllm.tasks.arithmetic import make_problems, score

GEN = 32
RECIPES = ("fast_dllm_parallel", "vanilla")  # baseline first, as `run_bench` takes the first as the baseline
EOS = 1


def test_batches_pad_the_last_batch_with_repeats_and_count_real_rows():
    assert bench._batches([0, 1, 2, 3, 4], 2) == [([0, 1], 2), ([2, 3], 2), ([4, 4], 1)]
    assert bench._batches([7, 8], 2) == [([7, 8], 2)]
    assert bench._batches([7], 3) == [([7, 7, 7], 1)]


@pytest.mark.parametrize("row, eos, expected", [
    ([5, 6, EOS, EOS], EOS, 2),  # tokens before the first EOS
    ([5, EOS, 7, EOS], EOS, 1),  # only the first EOS ends the answer
    ([EOS, EOS, EOS], EOS, 0),
    ([5, 6, 7], EOS, 3),  # no EOS: the whole row
    ([5, EOS, 7], None, 3),  # no EOS id: the whole row
])
def test_answer_tokens_are_the_tokens_before_the_first_eos(row, eos, expected):
    assert bench.answer_tokens(np.asarray(row), eos) == expected


def test_pareto_front_keeps_only_undominated_points_sorted_by_x():
    xs = [1.0, 2.0, 3.0, 4.0, 2.5]
    ys = [90.0, 95.0, 80.0, 80.0, 50.0]
    # (4, 80) beats (3, 80) on x; (2, 95) beats (1, 90) on both; (2.5, 50) is beaten by (4, 80).
    assert bench.pareto_front(xs, ys) == [1, 3]
    assert bench.pareto_front([1.0, 2.0], [0.0, 0.0]) == [1]
    assert bench.pareto_front([3.0], [0.0]) == [0]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle("arith-llada-tiny")


@pytest.fixture(scope="module")
def problems():
    """Three held-out problems; the gold answer of the second is made wrong, so accuracy is 2/3 by hand."""
    ps = make_problems(3, split="test", seed=0)
    return [ps[0], dataclasses.replace(ps[1], answer=str(int(ps[1].answer) + 1000)), ps[2]]


@pytest.fixture(scope="module")
def raw(bundle, problems):
    """recipe -> (tokens [3, GEN], nfe [3]) of a direct `jdllm.generate` call on the three padded prompts."""
    prompts = [bundle.encode_prompt(p.question) for p in problems]
    width = max(map(len, prompts))
    out = {}
    for name in RECIPES:
        kw = recipe_kwargs(name, GEN, model_config=bundle.model.config)
        toks, nfe = [], []
        for idx in ([0, 1], [2, 2]):  # the bench's batches: batch 2, the last one padded with a repeat
            o = jdllm.generate(bundle.model, [prompts[i] for i in idx], gen_length=GEN, prompt_length=width, seed=0,
                               **kw)
            toks += [np.asarray(t) for t in o.tokens]
            nfe += [int(n) for n in o.nfe]
        out[name] = (np.stack(toks[:3]), np.asarray(nfe[:3]))
    return out


@pytest.fixture(scope="module")
def rows(bundle, problems, raw):
    """recipe -> (its bench row with repeats=2, wall-clock seconds of the whole bench_recipe call)."""
    out = {}
    for name in RECIPES:
        t0 = time.perf_counter()
        row = bench.bench_recipe(bundle, name, problems, GEN, batch_size=2, repeats=2)
        out[name] = row, time.perf_counter() - t0
    return out


def _hand_answer_tokens(row) -> int:
    n = 0
    for t in row:
        if int(t) == EOS:
            break
        n += 1
    return n


def test_the_tiny_run_is_informative(raw):
    """Preconditions of the hand checks: the model solves the 3 problems, rows end with EOS padding, and the
    threshold recipe needs different NFE on different problems."""
    toks, nfe = raw["fast_dllm_parallel"]
    assert all(0 < _hand_answer_tokens(r) < GEN for r in toks)
    assert len(set(nfe.tolist())) > 1, nfe


@pytest.mark.parametrize("name", RECIPES)
def test_accuracy_scores_only_the_real_rows_against_gold(name, bundle, problems, raw, rows):
    toks, _ = raw[name]
    hand = [score(bundle.tokenizer.decode([int(t) for t in r[: _hand_answer_tokens(r)]]), p.answer)
            for r, p in zip(toks, problems)]
    assert hand == [True, False, True]
    assert rows[name][0]["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", RECIPES)
def test_nfe_tpf_and_answer_tokens_match_the_raw_outputs(name, raw, rows):
    toks, nfe = raw[name]
    r, _ = rows[name]
    assert r["nfe"] == pytest.approx(nfe.sum() / 3)
    assert r["tpf"] == pytest.approx(GEN / (nfe.sum() / 3))
    assert r["answer_tokens"] == sum(_hand_answer_tokens(t) for t in toks)
    if name == "vanilla":  # steps = gen_length: one forward per step, one token per forward
        assert r["nfe"] == GEN and r["tpf"] == 1.0


@pytest.mark.parametrize("name", RECIPES)
def test_timing_fields_are_consistent_and_compile_time_is_apart(name, bundle, rows):
    r, elapsed = rows[name]
    assert r["recipe"] == name and r["decode_kwargs"] == recipe_kwargs(name, GEN, model_config=bundle.model.config)
    assert r["tokens_per_s"] == pytest.approx(r["answer_tokens"] / r["decode_s"])
    # wall = first (compiling) call + every decode call; compile = first call - mean decode call (2 batches).
    first_s = r["wall_s"] - 2 * r["decode_s"]
    assert first_s > 0
    assert r["compile_s"] == pytest.approx(max(first_s - r["decode_s"] / 2, 0.0), abs=1e-9)
    assert r["decode_s"] > 0 and r["compile_s"] >= 0
    assert r["wall_s"] <= elapsed  # every timed call happened inside the bench_recipe call


class _CountingProgress:
    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k


def test_one_repeat_by_default_and_progress_counts_batches(bundle, problems, rows):
    progress = _CountingProgress()
    r = bench.bench_recipe(bundle, "vanilla", problems, GEN, batch_size=2, progress=progress)
    assert progress.n == 2  # 1 repeat x 2 batches
    assert r["accuracy"] == pytest.approx(2 / 3) and r["nfe"] == GEN


@pytest.fixture(scope="module")
def report(bundle, raw):
    return bench.run_bench(bundle, list(RECIPES), n=3, batch_size=2, gen_length=GEN, show_progress=False)


def test_speedups_are_tokens_per_s_ratios_to_each_baseline(report):
    by = {r["recipe"]: r for r in report["results"]}
    assert [r["recipe"] for r in report["results"]] == list(RECIPES)
    for r in report["results"]:
        for base in RECIPES:
            assert r[f"speedup_vs_{base}"] == pytest.approx(r["tokens_per_s"] / by[base]["tokens_per_s"])
            assert r[f"nfe_ratio_vs_{base}"] == pytest.approx(r["nfe"] / by[base]["nfe"])
    assert by["vanilla"]["speedup_vs_vanilla"] == 1.0
    assert by["fast_dllm_parallel"]["nfe_ratio_vs_vanilla"] < 1.0


def test_report_fields(report, bundle):
    assert report["task"] == {"name": "arithmetic", "split": "test", "n": 3, "seed": 0}
    assert (report["gen_length"], report["batch_size"], report["repeats"]) == (GEN, 2, 1)
    assert report["model"] == bundle.model.config.to_dict()
    assert report["machine"]["n_devices"] >= 1 and report["machine"]["jax"]


def test_format_table_shows_accuracy_speedup_and_setup(report):
    text = bench.format_table(report)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["recipe", "acc", "NFE", "TPF"]
    van = next(line for line in lines if line.startswith("vanilla"))
    r = next(r for r in report["results"] if r["recipe"] == "vanilla")
    assert van.split()[1:4] == [f"{100 * r['accuracy']:.1f}%", "32.0", "1.00"] and "1.00x" in van
    assert f"gen_length {GEN}, batch 2, n 3, matmul peak " in lines[-1]
    no_base = dict(report, results=[dict(r, speedup_vs_vanilla=None) for r in report["results"]])
    assert " - " in bench.format_table(no_base).splitlines()[2]


def test_cli_writes_the_json_report_and_the_plot(tmp_path, capsys, caplog):
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    args = argparse.Namespace(model="arith-llada-tiny", recipes=" vanilla ", n=3, batch_size=2, gen_length=None, repeats=1,
                              seed=0, no_progress=True, out=str(out), plot=str(plot))
    caplog.set_level("INFO", logger="jdllm")
    assert bench.run_bench_cli(args) == 0
    data = json.loads(out.read_text())
    assert [r["recipe"] for r in data["results"]] == ["vanilla"]
    assert set(data) == {"date", "machine", "model", "task", "gen_length", "batch_size", "repeats", "peak_flops_per_s",
                         "results"}
    row = data["results"][0]
    assert row["flops_per_token"] > 0 and 0 < row["fraction_of_peak"]
    assert row["achieved_flops_per_s"] == pytest.approx(row["fraction_of_peak"] * data["peak_flops_per_s"])
    assert data["gen_length"] == GEN == load_bundle("arith-llada-tiny").gen_length  # gen_length=None: the bundle's
    assert data["results"][0]["decode_kwargs"]["steps"] == GEN
    assert plot.stat().st_size > 0
    captured = capsys.readouterr()
    printed = captured.out
    assert printed.splitlines()[0].startswith("recipe") and "wrote" not in printed  # the table alone on stdout
    assert f"wrote {out}" in caplog.messages and f"wrote {plot}" in caplog.messages  # logged, not printed
    assert "bench:" not in captured.err  # --no-progress
    args.json, args.out, args.plot = True, None, None  # --json: the report itself on stdout, no table
    assert bench.run_bench_cli(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["results"][0]["recipe"] == "vanilla" and printed["gen_length"] == GEN


def test_plot_shows_accuracy_percent_against_tokens_per_s_and_the_front(tmp_path):
    rows = [dict(recipe="a", tokens_per_s=10.0, accuracy=0.5), dict(recipe="b", tokens_per_s=20.0, accuracy=0.25),
            dict(recipe="c", tokens_per_s=5.0, accuracy=0.4)]
    report = {"results": rows, "machine": {"device": "cpu"}, "gen_length": GEN}
    fig = bench.plot_pareto(report, str(tmp_path / "p.png"))
    ax = fig.axes[0]
    assert ax.collections[0].get_offsets().tolist() == [[10.0, 50.0], [20.0, 25.0], [5.0, 40.0]]
    assert ax.lines[0].get_xydata().tolist() == [[10.0, 50.0], [20.0, 25.0]]  # c is beaten by a
    assert (tmp_path / "p.png").stat().st_size > 0


def test_progress_bar_is_on_by_default_and_counts_every_batch(bundle, capsys):
    rep = bench.run_bench(bundle, ["vanilla"], n=3, batch_size=2, gen_length=GEN, repeats=2)
    err = capsys.readouterr().err
    assert "| 4/4 [" in err, err  # 1 recipe x 2 repeats x 2 batches
    assert rep["repeats"] == 2 and rep["results"][0]["nfe"] == GEN


def test_run_bench_defaults_are_the_cli_defaults():
    """`jdllm bench` with no options and `run_bench(bundle, recipes)` run the same benchmark."""
    from jdllm.cli import build_parser

    cli = build_parser().parse_args(["bench"])
    params = inspect.signature(bench.run_bench).parameters
    for name in ("n", "batch_size", "gen_length", "repeats", "seed"):
        assert params[name].default == getattr(cli, name), name
    assert params["show_progress"].default is (not cli.no_progress)
    recipe_params = inspect.signature(bench.bench_recipe).parameters  # stochastic recipes (dream_origin) use it
    assert (recipe_params["repeats"].default, recipe_params["seed"].default) == (cli.repeats, cli.seed)


def test_machine_info_names_the_processor():
    info = bench.machine_info()
    assert info["processor"] and info["processor"] in (platform.processor(), platform.machine())
    assert info["platform"] == jax.devices()[0].platform and info["n_devices"] == jax.device_count()


def test_machine_info_on_a_single_device_host():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    code = "import json; from jdllm.bench import machine_info; print(json.dumps(machine_info()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["n_devices"] == 1 and info["platform"] == "cpu"
