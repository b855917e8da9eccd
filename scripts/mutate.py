#!/usr/bin/env python
"""Small, dependency-free mutation testing for jdllm (stdlib + PyYAML, which jdllm already needs).

Each mutant is a one-line change of a target file (comparison flip, `+`/`-`, `*`/`/`, `and`/`or`, `not` removal,
integer constant +-1, `True`/`False`, `min`/`max`, `any`/`all`, `argmax`/`argmin`, ...). It is written into a
scratch copy of the repository (never the working tree) and the target's FAST test subset is run with
`pytest -x -q -p no:cacheprovider`; a failing subset kills the mutant. Docstrings, strings, annotations, `raise`
statements, logging / printing calls, cosmetic keyword arguments (plot styling, JSON indent) and lines marked `# pragma: no mutate` are never mutated.

Targets and their test subsets live in `scripts/mutation_targets.yaml`; why a survivor is equivalent goes in
`scripts/mutation_equivalent.yaml`, keyed by the mutant's stable id (a hash of file, enclosing function, line text,
column and replacement: it survives edits elsewhere in the file).

    python scripts/mutate.py --target bench --list                  # the mutants, without running them
    python scripts/mutate.py --target bench --jobs 2 --out benchmarks/results/mutation_bench
    python scripts/mutate.py --target decode --sample 150 --seed 0 --out ... # a reproducible random sample
Re-running with the same --out resumes (mutants already in the JSON are kept unless --fresh).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import dataclasses
import fnmatch
import hashlib
import io
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tokenize
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGETS_FILE = REPO / "scripts" / "mutation_targets.yaml"
EQUIVALENT_FILE = REPO / "scripts" / "mutation_equivalent.yaml"

BINOP_SWAP = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
              ast.FloorDiv: ("//", "/"), ast.Mod: ("%", "//"), ast.Pow: ("**", "*"),
              ast.BitAnd: ("&", "|"), ast.BitOr: ("|", "&"), ast.BitXor: ("^", "|")}
CMP_SWAP = {ast.Lt: ("<", ["<=", ">"]), ast.LtE: ("<=", ["<", ">"]), ast.Gt: (">", [">=", "<"]),
            ast.GtE: (">=", [">", "<"]), ast.Eq: ("==", ["!="]), ast.NotEq: ("!=", ["=="]),
            ast.Is: ("is", ["is not"]), ast.IsNot: ("is not", ["is"]), ast.In: ("in", ["not in"]),
            ast.NotIn: ("not in", ["in"])}
NAME_SWAP = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum", "any": "all", "all": "any",
             "argmax": "argmin", "argmin": "argmax", "sum": "mean", "mean": "sum", "cumsum": "cumprod",
             "floor": "ceil", "ceil": "floor", "logical_and": "logical_or", "logical_or": "logical_and",
             "greater": "greater_equal", "greater_equal": "greater", "less": "less_equal", "less_equal": "less"}
COSMETIC_KWARGS = {"alpha", "dpi", "figsize", "fontsize", "xytext", "indent", "linewidth", "lw", "s", "desc", "unit",
                   "label", "color", "marker", "stacklevel"}
QUIET_CALLS = {"print", "warn", "debug", "info", "warning", "error", "exception", "log", "set_postfix_str"}


@dataclasses.dataclass
class Mutant:
    id: str
    file: str
    line: int
    function: str
    kind: str
    original: str  # the whole source line, before
    mutated: str  # the whole source line, after
    tests: tuple[str, ...] = ()  # the pytest arguments of the test subset that must kill it

    def diff(self) -> str:
        return f"- {self.original.strip()}\n+ {self.mutated.strip()}"


def _stable_id(file: str, function: str, line_text: str, col: int, replacement: str) -> str:
    stripped = line_text.lstrip()
    key = f"{file}|{function}|{stripped}|{col - (len(line_text) - len(stripped))}|{replacement}"
    return hashlib.sha1(key.encode()).hexdigest()[:10]


class _Collector(ast.NodeVisitor):
    """Collects (line, col_start, col_end, replacement, kind, function) edits, each inside one source line."""

    def __init__(self, lines: list[str], functions: set[str] | None):
        self.lines, self.functions, self.stack, self.edits = lines, functions, [], []

    # --- scoping -------------------------------------------------------------------------------------------
    def _scoped(self, node):
        self.stack.append(node.name)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                self.visit(d)
            body = node.body
        else:
            body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # docstring
        for stmt in body:
            self.visit(stmt)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def _active(self) -> bool:
        return self.functions is None or any(name in self.functions for name in self.stack)

    def _function(self) -> str:
        return ".".join(self.stack) or "<module>"

    # --- never mutated --------------------------------------------------------------------------------------
    def visit_Raise(self, node):
        return

    def visit_Import(self, node):
        return

    visit_ImportFrom = visit_Import

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Constant):
            return  # docstring / bare string
        if isinstance(node.value, ast.Call) and _call_name(node.value) in QUIET_CALLS:
            return
        self.generic_visit(node)

    def visit_JoinedStr(self, node):
        return

    def visit_keyword(self, node):
        if node.arg not in COSMETIC_KWARGS:  # plot styling, JSON indentation, progress-bar labels
            self.visit(node.value)

    # --- edits ------------------------------------------------------------------------------------------------
    def _add(self, line: int, c0: int, c1: int, new: str, kind: str):
        text = self.lines[line - 1]
        if "pragma: no mutate" in text or not self._active():
            return
        self.edits.append((line, c0, c1, new, kind, self._function()))

    def _between(self, a, b, op: str, new: str, kind: str):
        """Replace operator text `op` found between the end of node a and the start of node b (same line)."""
        if a.end_lineno != b.lineno:
            return
        seg = self.lines[a.end_lineno - 1][a.end_col_offset:b.col_offset]
        i0, i1 = _find_token(seg, op)
        if i0 >= 0:
            self._add(a.end_lineno, a.end_col_offset + i0, a.end_col_offset + i1, new, kind)

    def visit_BinOp(self, node):
        if type(node.op) in BINOP_SWAP:
            op, new = BINOP_SWAP[type(node.op)]
            self._between(node.left, node.right, op, new, "binop")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        if type(node.op) in BINOP_SWAP:
            op, new = BINOP_SWAP[type(node.op)]
            self._between(node.target, node.value, op + "=", new + "=", "augassign")
        self.generic_visit(node)

    def visit_Compare(self, node):
        prev = node.left
        for op, comp in zip(node.ops, node.comparators):
            text, news = CMP_SWAP[type(op)]
            for new in news:
                self._between(prev, comp, text, new, "compare")
            prev = comp
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        op, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        for a, b in zip(node.values, node.values[1:]):
            self._between(a, b, op, new, "boolop")
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        literal = isinstance(node.operand, ast.Constant)  # -1: the constant's +-1 mutants already give -2 / -0
        if isinstance(node.op, (ast.Not, ast.USub)) and node.lineno == node.operand.lineno and not literal:
            kind = "not" if isinstance(node.op, ast.Not) else "neg"
            self._add(node.lineno, node.col_offset, node.operand.col_offset, "", kind)
        self.generic_visit(node)

    def visit_IfExp(self, node):
        self.generic_visit(node)

    def visit_Constant(self, node):
        if node.lineno != node.end_lineno:
            return
        if isinstance(node.value, bool):
            self._add(node.lineno, node.col_offset, node.end_col_offset, str(not node.value), "bool")
        elif isinstance(node.value, int):
            for new in (node.value + 1, node.value - 1):
                self._add(node.lineno, node.col_offset, node.end_col_offset, str(new), "int")
        elif isinstance(node.value, float) and node.value not in (0.0,):
            self._add(node.lineno, node.col_offset, node.end_col_offset, repr(node.value * 2), "float")

    def visit_Call(self, node):
        if _call_name(node) in QUIET_CALLS:
            return
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        if name in NAME_SWAP and f.end_lineno == f.lineno:
            self._add(f.end_lineno, f.end_col_offset - len(name), f.end_col_offset, NAME_SWAP[name], "call")
        self.generic_visit(node)

    def visit_Slice(self, node):
        for bound in (node.lower, node.upper):
            if bound is not None and not isinstance(bound, ast.Constant) and bound.lineno == bound.end_lineno:
                seg = self.lines[bound.lineno - 1][bound.col_offset:bound.end_col_offset]
                self._add(bound.lineno, bound.col_offset, bound.end_col_offset, f"({seg}) + 1", "slice")
        self.generic_visit(node)

    def visit_Return(self, node):
        self.generic_visit(node)


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _find_token(seg: str, op: str) -> tuple[int, int]:
    """Columns [start, end) of operator `op` (e.g. "<=", "not in") in `seg`, the text between two operands."""
    words = op.split()
    toks = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(seg).readline):
            if tok.type in (tokenize.OP, tokenize.NAME):
                toks.append(tok)
    except (tokenize.TokenError, IndentationError):
        pass
    for i in range(len(toks) - len(words) + 1):
        if [t.string for t in toks[i:i + len(words)]] == words and toks[i].start[0] == 1:
            return toks[i].start[1], toks[i + len(words) - 1].end[1]
    return -1, -1


def collect_mutants(path: Path, functions: list[str] | None = None) -> list[Mutant]:
    """All mutants of one file (relative to the repo), optionally only inside the named functions / classes."""
    src = path.read_text()
    lines = src.splitlines()
    col = _Collector(lines, set(functions) if functions else None)
    col.visit(ast.parse(src))
    rel = str(path.relative_to(REPO)) if path.resolve().is_relative_to(REPO) else path.name
    out, seen = [], set()
    for line, c0, c1, new, kind, fn in sorted(col.edits):
        text = lines[line - 1]
        mutated = text[:c0] + new + text[c1:]
        if mutated == text:
            continue
        try:
            ast.parse(src.replace(text, mutated, 1)) if src.count(text) == 1 else None
        except SyntaxError:
            continue
        mid = _stable_id(rel, fn, text, c0, f"{text[c0:c1]}->{new}")
        if mid in seen:
            continue
        seen.add(mid)
        out.append(Mutant(mid, rel, line, fn, kind, text, mutated))
    return out


# --- running ------------------------------------------------------------------------------------------------------
def _scratch_copy(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.endswith((".png", ".ipynb")) and not rel.startswith(("runs/", "benchmarks/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _run_tests(workdir: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    env = dict(os.environ, PYTHONPATH=str(workdir), PYTHONDONTWRITEBYTECODE="1",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "--xla_force_host_platform_device_count=8"))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "timeout", time.perf_counter() - t0, ""
    dt = time.perf_counter() - t0
    if proc.returncode == 0:
        return "survived", dt, out[-2000:]
    if proc.returncode in (1, 2, 3):
        return "killed", dt, out[-2000:]
    return f"error(rc={proc.returncode})", dt, out[-2000:]


def run_mutants(mutants: list[Mutant], jobs: int, timeout_of: dict[tuple, float], on_result) -> None:
    """Run each mutant's test subset in one of `jobs` scratch copies of the repo."""
    pool: queue.Queue[Path] = queue.Queue()
    tmp = Path(tempfile.mkdtemp(prefix="jdllm-mutate-"))
    try:
        for j in range(jobs):
            d = tmp / f"w{j}"
            _scratch_copy(d)
            pool.put(d)

        def one(m: Mutant):
            d = pool.get()
            target = d / m.file
            original = target.read_text()
            try:
                lines = original.split("\n")
                assert lines[m.line - 1] == m.original, f"{m.id}: source changed since the mutants were listed"
                lines[m.line - 1] = m.mutated
                target.write_text("\n".join(lines))
                status, dt, tail = _run_tests(d, list(m.tests), timeout_of[m.tests])
            finally:
                target.write_text(original)
                pool.put(d)
            return m, status, dt, tail

        with cf.ThreadPoolExecutor(jobs) as ex:
            for fut in cf.as_completed([ex.submit(one, m) for m in mutants]):
                on_result(*fut.result())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def baseline(subsets: list[tuple[str, ...]]) -> dict[tuple, float]:
    """Run each distinct test subset once on the unmutated code; it must pass. Returns seconds per subset."""
    tmp = Path(tempfile.mkdtemp(prefix="jdllm-mutate-base-"))
    try:
        _scratch_copy(tmp)
        secs: dict[tuple, float] = {}
        for key in subsets:
            status, dt, tail = _run_tests(tmp, list(key), timeout=1800)
            if status != "survived":
                sys.exit(f"baseline failed for {' '.join(key)}: {status}\n{tail}")
            secs[key] = dt
            print(f"baseline {' '.join(key)}: passed in {dt:.1f}s", flush=True)
        return secs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- reporting ----------------------------------------------------------------------------------------------------
def load_equivalent() -> dict[str, str]:
    if not EQUIVALENT_FILE.exists():
        return {}
    data = yaml.safe_load(EQUIVALENT_FILE.read_text()) or {}
    return {str(k): (v["why"] if isinstance(v, dict) else str(v)) for k, v in data.items()}


def summarise(results: dict[str, dict], equivalent: dict[str, str]) -> dict:
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    total = len(results)
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    explained = sum(1 for r in results.values() if r["status"] == "survived" and r["id"] in equivalent)
    return {"total": total, **counts, "killed_or_timeout": killed,
            "kill_rate": killed / total if total else 0.0,
            "survivors_explained_equivalent": explained,
            "kill_rate_excluding_equivalent": killed / (total - explained) if total - explained else 1.0}


def write_markdown(path: Path, summary: dict, results: dict[str, dict], equivalent: dict[str, str], runs: list[str]):
    rows = sorted(results.values(), key=lambda r: (r["file"], r["line"]))
    out = ["# Mutation run\n", "Commands (first run, then resumes / reruns after new tests):\n",
           *[f"    {c}" for c in runs], "",
           "| mutants | killed | timeout | survived | errors | kill rate | survivors explained |",
           "|---|---|---|---|---|---|---|",
           f"| {summary['total']} | {summary.get('killed', 0)} | {summary.get('timeout', 0)} | "
           f"{summary.get('survived', 0)} | {sum(v for k, v in summary.items() if k.startswith('error('))} | "
           f"{100 * summary['kill_rate']:.1f}% | {summary['survivors_explained_equivalent']} |\n",
           "Timeouts count as killed. Kill rate = (killed + timeout) / mutants.\n"]
    by_file: dict[str, list] = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(r)
    out += ["| file | mutants | killed | survived |", "|---|---|---|---|"]
    for f, rs in by_file.items():
        k = sum(r["status"] in ("killed", "timeout") for r in rs)
        out.append(f"| `{f}` | {len(rs)} | {k} | {sum(r['status'] == 'survived' for r in rs)} |")
    out.append("\n## Survivors\n")
    for r in rows:
        if r["status"] in ("killed", "timeout"):
            continue
        why = equivalent.get(r["id"], "**NOT EXPLAINED** (add it to scripts/mutation_equivalent.yaml or kill it)")
        out += [f"### `{r['id']}` {r['file']}:{r['line']} ({r['function']}, {r['kind']}, {r['status']})\n",
                "```diff", f"- {r['original'].strip()}", f"+ {r['mutated'].strip()}", "```", f"Why: {why}\n"]
    path.write_text("\n".join(out) + "\n")


# --- CLI ----------------------------------------------------------------------------------------------------------
def load_targets(names: list[str] | None) -> list[dict]:
    """Target entries [{files, tests, functions?}] of the named groups in scripts/mutation_targets.yaml."""
    cfg = yaml.safe_load(TARGETS_FILE.read_text())
    groups = cfg["groups"]
    if names:
        unknown = [n for n in names if n not in groups]
        if unknown:
            raise ValueError(f"--target {unknown}: unknown group; known groups: {sorted(groups)}")
    return [entry for name in (names or sorted(groups)) for entry in groups[name]]


def expand(entries: list[dict]) -> list[Mutant]:
    mutants = []
    for e in entries:
        files = sorted({str(p.relative_to(REPO)) for pat in e["files"] for p in REPO.glob(pat) if p.is_file()})
        files = [f for f in files if not any(fnmatch.fnmatch(f, x) for x in e.get("exclude", []))]
        if not files:
            raise ValueError(f"target files {e['files']} match nothing under {REPO}")
        for f in files:
            for m in collect_mutants(REPO / f, e.get("functions")):
                mutants.append(dataclasses.replace(m, tests=tuple(e["tests"])))
    return mutants


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", help="group of scripts/mutation_targets.yaml (repeatable; all)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--sample", type=int, default=None,
                    help="run a random sample of N mutants (the first N of a --seed shuffle of all of them)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --sample")
    ap.add_argument("--only", action="append", help="run only these mutant ids (repeatable)")
    ap.add_argument("--timeout-factor", type=float, default=3.0, help="per-mutant timeout = factor x baseline + 30 s")
    ap.add_argument("--out", default=None, help="output stem: writes STEM.json and STEM.md (resumes from STEM.json)")
    ap.add_argument("--fresh", action="store_true", help="ignore results already in STEM.json")
    ap.add_argument("--report", action="store_true", help="only rewrite STEM.md / the summary from STEM.json")
    ap.add_argument("--skip-baseline", action="store_true",
                    help="do not re-check that the unmutated subsets pass (timeout 630 s); only for quick reruns")
    ap.add_argument("--rerun-survivors", action="store_true",
                    help="run again the mutants STEM.json lists as survived / errors (after adding tests)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")

    mutants = expand(load_targets(args.target))
    if args.sample is not None and args.sample < len(mutants):
        shuffled = list(mutants)
        random.Random(args.seed).shuffle(shuffled)  # a prefix of one shuffle: a larger --sample extends a smaller one
        mutants = sorted(shuffled[: args.sample], key=lambda m: (m.file, m.line))
    if args.list:
        for m in (m for m in mutants if not args.only or m.id in args.only):
            print(f"{m.id} {m.file}:{m.line} [{m.kind}] {m.function}\n    {m.diff().replace(chr(10), chr(10) + '    ')}")
        print(f"{len(mutants)} mutants")
        return 0

    stem = Path(args.out) if args.out else REPO / "mutation"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    prev = {} if args.fresh or not json_path.exists() else json.loads(json_path.read_text())
    old = prev.get("results", {})
    results = {k: v for k, v in old.items() if k in {m.id for m in mutants}}
    only = set(args.only or [m.id for m in mutants])  # --only narrows what runs, not what the report holds
    if args.rerun_survivors:
        results = {k: v for k, v in results.items() if v["status"] in ("killed", "timeout") or k not in only}
    todo = [] if args.report else [m for m in mutants if m.id not in results and m.id in only]
    command = "python scripts/mutate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    runs = prev.get("runs", [])  # every invocation that ran mutants into this result (first run, resumes, reruns)
    print(f"{len(mutants)} mutants, {len(results)} already done, {len(todo)} to run with {args.jobs} jobs", flush=True)
    lock = threading.Lock()
    equivalent = load_equivalent()

    def save():
        summary = summarise(results, equivalent)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"runs": runs, "summary": summary, "results": results}, indent=1))
        write_markdown(md_path, summary, results, equivalent, runs)
        return summary

    if todo:
        runs.append(command)
        subsets = sorted({m.tests for m in todo})
        base = {k: 200.0 for k in subsets} if args.skip_baseline else baseline(subsets)
        timeout_of = {k: args.timeout_factor * base[k] + 30 for k in subsets}
        t_start, done = time.perf_counter(), [0]

        def on_result(m: Mutant, status: str, dt: float, tail: str):
            with lock:
                done[0] += 1
                results[m.id] = {**dataclasses.asdict(m), "status": status, "seconds": round(dt, 1),
                                 **({"output_tail": tail} if status.startswith("err") else {})}
                save()
                el = time.perf_counter() - t_start
                print(f"[{done[0]}/{len(todo)} {el:.0f}s] {status:9s} {m.id} {m.file}:{m.line} {m.mutated.strip()}",
                      flush=True)

        run_mutants(todo, args.jobs, timeout_of, on_result)
    summary = save()
    print(json.dumps(summary, indent=1))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
