"""`python -m workbench.bench.compare`: every rung on one problem (or a sweep over sequence lengths),
verified against float64, and on a GPU timed and its memory measured.

With no arguments: all rungs, on a problem that suits the mode — the seed page's config on a GPU
(B=8, H=32, D=64, float32, seq 512..4096), a tiny one in the simulator (which measures no time).
`--suite NAME` runs a named set of problems instead (workbench/suites.py) and `--out DIR` writes
DIR/NAME.json, DIR/NAME.csv and the figures (DIR/NAME-*.png, workbench/plots.py); the suites
seed-training, seed-inference and seed-models (workbench/suites_training.py) write DIR/NAME.json
and DIR/NAME.png. Exit status 1 when any rung fails verification.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

from workbench import dtypes
from workbench.bench import suites
from workbench.harness import device, memory, peers, runner, timing, verify
from workbench.kernels import LADDER, get
from workbench.problem import Problem

GPU_DEFAULT = dict(batch=8, heads=32, seq=[512, 1024, 2048, 4096], dim=64)
SIM_DEFAULT = dict(batch=1, heads=2, seq=[16, 33], dim=16)
# Above this many float64 reference FLOPs, verification compares a sample of (batch, head) pairs,
# and above this many query rows a sample of rows in each (each row is exact: rows are independent).
FULL_REFERENCE_FLOPS = 2e9
SAMPLED_HEADS = 4
ALL_ROWS_UP_TO = 4096
SAMPLED_ROWS = 2048


def parse_args(argv=None):
    sim = device.simulator()
    d = SIM_DEFAULT if sim else GPU_DEFAULT
    p = argparse.ArgumentParser(prog="python -m workbench.bench.compare",
                                description="Verify, time and measure the memory of the ladder's rungs.")
    p.add_argument("--kernels", default=None,
                   help="comma-separated rungs (default: a suite's own, else all: "
                        + ",".join(r.name for r in LADDER) + ")")
    p.add_argument("--batch", type=int, default=d["batch"])
    p.add_argument("--heads", type=int, default=d["heads"])
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    p.add_argument("--seq", type=int, nargs="+", default=None,
                   help=f"query lengths to sweep (default {d['seq']}; with --suite: keep only these)")
    p.add_argument("--seq-kv", type=int, default=None, help="key/value length (default: = seq)")
    p.add_argument("--dim", type=int, default=d["dim"], help="head dim D")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--causal", action="store_true")
    p.add_argument("--window", type=int, nargs=2, metavar=("LEFT", "RIGHT"), default=None,
                   help="sliding window (left, right); -1 = unbounded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=20, help="timed runs per point (GPU)")
    p.add_argument("--peers", default=None, nargs="?", const=",".join(peers.NAMES),
                   help="also run these peers (default with no value: all of %(const)s)")
    p.add_argument("--suite", default=None, choices=suites.NAMES,
                   help="a named set of problems (replaces the problem flags)")
    p.add_argument("--out", default=None, metavar="DIR", help="write DIR/<suite>.json and .csv")
    p.add_argument("--json", default=None, metavar="PATH", help="write every point and provenance here")
    p.add_argument("--no-plots", action="store_true", help="with --out: JSON and CSV only, no PNGs")
    args = p.parse_args(argv)
    args.seq_filter = args.seq
    if args.seq is None:
        args.seq = d["seq"]
    if args.kernels is not None:
        args.kernels = [get(name.strip()) for name in args.kernels.split(",") if name.strip()]
    if args.peers is not None:
        args.peers = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = sorted(set(args.peers or ()) - set(peers.NAMES))
    if unknown:
        p.error(f"unknown peer(s) {unknown}; choose from {list(peers.NAMES)}")
    return args


def verify_sample(problem: Problem, all_heads: bool):
    """(heads, rows) to compare with float64: None for all, else a sample size."""
    if all_heads or 2 * problem.flops() <= FULL_REFERENCE_FLOPS:
        return None, None
    heads = SAMPLED_HEADS if problem.seq_q * problem.seq_kv <= 8192 * 8192 else 2  # float64 is slow
    return heads, None if problem.seq_q <= ALL_ROWS_UP_TO else SAMPLED_ROWS


def _verified(heads, rows) -> dict:
    return {"verified_heads": "all" if heads is None else heads,
            "verified_rows": "all" if rows is None else rows}


def problem_fields(problem: Problem) -> dict:
    """What a point records about its problem (flat, for JSON and CSV)."""
    return {"problem": problem.describe(), "batch": problem.batch, "heads": problem.heads,
            "kv_heads": problem.kv_heads, "seq_q": problem.seq_q, "seq_kv": problem.seq_kv,
            "head_dim": problem.head_dim, "dtype": problem.dtype, "causal": problem.causal,
            "window": problem.window, "flops": problem.flops(), "min_bytes": problem.min_bytes()}


def run_point(rung, problem: Problem, seed: int, repeat: int, timed: bool = True,
              all_heads: bool = False) -> dict:
    """Verify, then (GPU) time and measure one rung on one problem; OOM is recorded, not raised."""
    point = {"kernel": rung.name, **problem_fields(problem)}
    try:
        cfg = runner.check_config(rung, problem)
    except ValueError as exc:
        return {**point, "status": "n/a", "reason": str(exc)}
    point["config"] = cfg
    heads, rows = verify_sample(problem, all_heads)
    try:
        report = verify.check(rung, problem, seed=seed, config=cfg, heads=heads, rows=rows)
        point.update(status="pass" if report.passed else "FAIL", verify=report.as_dict(),
                     **_verified(heads, rows))
        _release()
        if device.simulator() or not timed:
            point["memory"] = {"model_MiB": memory.model_bytes(rung, problem, cfg) / 2**20}
            return point
        point.update(_measure(rung, problem, cfg, seed, repeat, heads, rows))
    except Exception as exc:  # noqa: BLE001 - an OOM is a data point; anything else is re-raised
        if not memory.is_oom(exc):
            raise
        point.update(status="OOM", reason=str(exc).splitlines()[0][:200],
                     memory={"model_MiB": memory.model_bytes(rung, problem, cfg) / 2**20})
    finally:
        _release()
    return point


def run_peer_point(name: str, problem: Problem, seed: int, repeat: int, all_heads: bool = False) -> dict:
    """The same as run_point for a peer (torch SDPA backends, torch/CuPy standard attention)."""
    point = {"kernel": name, **problem_fields(problem)}
    why = peers.available()[name]
    if why:
        return {**point, "status": "n/a", "reason": why}
    from numba import cuda

    heads, rows = verify_sample(problem, all_heads)
    try:
        q, k, v, pairs, ref_o, ref_lse = verify.truth(problem, seed, heads, rows)
        dq, dk, dv = (cuda.to_device(dtypes.to_bits(x)) for x in (q, k, v))
        try:
            fn = peers.build(name, problem, dq, dk, dv)
        except peers.NotApplicable as exc:
            return {**point, "status": "n/a", "reason": str(exc)}
        report = verify.compare_sampled(verify.Report(name, problem, seed), peers.to_numpy(fn()), None,
                                        pairs, ref_o, ref_lse, verify.sample_rows(problem, rows, seed))
        point.update(status="pass" if report.passed else "FAIL", verify=report.as_dict(),
                     **_verified(heads, rows))
        peak = problem.input_bytes() + peers.peak_bytes(name, fn)  # the peer allocates O itself
        t = timing.time_call(fn, repeat=repeat)
        point.update(timing=t.as_dict(), tflops=problem.flops() / (t.median_ms * 1e-3) / 1e12,
                     gbps=problem.min_bytes() / (t.median_ms * 1e-3) / 1e9,
                     memory={"model_MiB": None, "peak_MiB": peak / 2**20, "driver_MiB": None})
    except Exception as exc:  # noqa: BLE001 - an OOM is a data point
        if not memory.is_oom(exc):
            raise
        point.update(status="OOM", reason=str(exc).splitlines()[0][:200])
    finally:
        _release()
    return point


def _measure(rung, problem, cfg, seed, repeat, heads, rows) -> dict:
    from numba import cuda

    # The verified inputs (cached: drawing 3×10⁸ normals per point cost minutes per suite); the L2
    # flush before every timed call keeps the previous call's data from helping.
    q, k, v = verify.truth(problem, seed, heads, rows)[:3]
    dq, dk, dv = (cuda.to_device(dtypes.to_bits(x)) for x in (q, k, v))  # (bfloat16: the bits)
    do = cuda.device_array(problem.q_shape, dtypes.device_dtype(problem.dtype))
    dlse = cuda.device_array(problem.lse_shape, np.float32)
    pool = runner.Pool()  # the first call allocates its scratch (measured); timed calls reuse it
    first = runner.run(rung, problem, cfg, dq, dk, dv, do, dlse, pool=pool)
    cuda.synchronize()
    mem = memory.account(rung, problem, cfg, first)
    t = timing.time_call(lambda: runner.run(rung, problem, cfg, dq, dk, dv, do, dlse, pool=pool),
                         repeat=repeat, warmup=1)  # the measured first call already compiled it
    return {"timing": t.as_dict(), "tflops": problem.flops() / (t.median_ms * 1e-3) / 1e12,
            "gbps": problem.min_bytes() / (t.median_ms * 1e-3) / 1e9, "memory": mem.as_dict()}


def _release():
    """Free what the last point left (Numba defers frees, torch and CuPy cache), so the next point
    starts clean."""
    runner.release_memory()
    if not device.simulator():
        if "torch" in sys.modules:
            sys.modules["torch"].cuda.empty_cache()
        if "cupy" in sys.modules:
            sys.modules["cupy"].get_default_memory_pool().free_all_blocks()


def print_table(points, title):
    from rich.console import Console
    from rich.table import Table

    sim = device.simulator() or not any("timing" in p for p in points)
    table = Table(title=title)
    per_problem = "problem per row" in title
    cols = ["kernel", "problem" if per_problem else "seq", "rel err", "verify"]
    cols += ["model KiB"] if sim else ["ms (p20-p80)", "TFLOP/s", "peak MiB", "model MiB"]
    notes = any(pt.get("reason") for pt in points)
    cols += ["note"] if notes else []
    for c in cols:
        table.add_column(c, justify="left" if c in ("kernel", "verify", "note") else "right")
    for pt in points:
        err = pt.get("verify", {}).get("rel_fro")
        status = pt["status"]
        style = {"pass": "green", "FAIL": "red"}.get(status, "yellow")
        where = pt["problem"] if per_problem else str(pt["seq_q"])
        row = [pt["kernel"], where, "" if err is None else f"{err:.1e}",
               f"[{style}]{status}[/{style}]"]
        mem = pt.get("memory", {})
        model = f"{mem['model_MiB']:.0f}" if mem.get("model_MiB") is not None else ""
        if sim:
            row += [f"{mem['model_MiB'] * 1024:.1f}" if mem.get("model_MiB") is not None else ""]
        elif "timing" in pt:
            t = pt["timing"]
            row += [f"{t['median_ms']:.3f} ({t['p20_ms']:.3f}-{t['p80_ms']:.3f})", f"{pt['tflops']:.2f}",
                    f"{mem['peak_MiB']:.0f}", model]
        else:
            row += ["", "", "", model]
        if notes:
            row.append((pt.get("reason") or "")[:60])
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 150).print(table)
    if device.simulator():
        print("simulator: no timing (Numba's CUDA simulator runs on the CPU; correctness and the "
              "memory model only)")


CSV_FIELDS = ("kernel", "problem", "batch", "heads", "kv_heads", "seq_q", "seq_kv", "head_dim", "dtype",
              "causal", "window", "status", "rel_fro", "median_ms", "p20_ms",
              "p80_ms", "tflops", "gbps", "peak_MiB", "driver_MiB", "model_MiB")


def write_csv(path, points):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for p in points:
            w.writerow({**p, "rel_fro": p.get("verify", {}).get("rel_fro"), **p.get("timing", {}),
                        **p.get("memory", {})})


def run_problems(problems, kernels, peer_names, seed, repeat, timed, all_heads, on_point=None,
                 cache=None, label=None) -> list:
    """Every kernel and peer on every problem, with a progress bar. `on_point(points)` is called
    after each point (the CLI saves there, so a sweep cut short keeps what it measured).

    cache: a dict shared by the suites of one run; a point another suite already measured (same
    kernel, problem, seed, and at least as many timed runs asked for) is reused, marked with where it was
    measured ("measured_in"), instead of being measured twice. Each point records its wall time."""
    from rich.progress import Progress

    points = []
    jobs = [(problem, kind, x) for problem in problems
            for kind, xs in (("rung", kernels), ("peer", peer_names)) for x in xs]
    with Progress(transient=True) as progress:
        task = progress.add_task("compare", total=len(jobs))
        for problem, kind, x in jobs:
            name = x.name if kind == "rung" else x
            key = (name, problem, seed, timed, all_heads)
            asked, hit = (None, None) if cache is None else cache.get(key, (None, None))
            if hit is not None and asked >= repeat:
                points.append(dict(hit))
            else:
                progress.update(task, description=f"{name} {problem.describe()}")
                start = time.perf_counter()
                point = (run_point(x, problem, seed, repeat, timed, all_heads) if kind == "rung"
                         else run_peer_point(x, problem, seed, repeat, all_heads))
                point.update(wall_s=round(time.perf_counter() - start, 2), measured_in=label)
                points.append(point)
                if cache is not None:
                    cache[key] = (repeat, point)
            progress.advance(task)
            if on_point:
                on_point(points)
    return points


def print_claims(points, suite_name):
    """The seed page's claims for this suite beside what was measured, with the ratio."""
    from rich.console import Console
    from rich.table import Table

    from workbench.bench import benchmark_page

    gpu = device.slug(device.provenance()["device"]).upper()
    claims = benchmark_page.claims_for(suite_name, gpu=gpu if gpu in ("H100", "A100", "A10G") else None)
    rows = [(c, k, dt, v, r) for c in claims for (k, dt, v, r) in benchmark_page.beside(c, points) if v is not None]
    if not rows:
        return
    table = Table(title=f"the page's claims beside our measurements — suite {suite_name}")
    for col in ("seq", "page says", "claimed", "kernel", "dtype", "measured", "measured ÷ claimed"):
        table.add_column(col, justify="left" if col in ("page says", "kernel", "dtype") else "right")
    for c, k, dt, v, r in rows:
        table.add_row(str(c.seq), f"{c.what} ({c.table})", f"{c.value:g} {c.unit}", k, dt or "",
                      f"{v:.4g}", "" if r is None else f"{r:.2f}×")
    Console(width=None if sys.stdout.isatty() else 150).print(table)


_STARTED = time.perf_counter()


def save(points, suite_name, args, complete=True):
    data = {"provenance": device.provenance(), "suite": suite_name, "complete": complete,
            "elapsed_s": round(time.perf_counter() - _STARTED, 1),  # since the command started
            "points": points}
    paths = [args.json] if args.json else []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, suite_name or "compare")
        paths.append(stem + ".json")
        write_csv(stem + ".csv", points)
    for path in paths:
        with open(path, "w") as f:
            json.dump(data, f, indent=1, default=str)
    return paths


def merge(base_path, update_path, out_path):
    """Replace base's points by update's where (kernel, problem) match, add the rest; both runs'
    provenance is kept ("updates"), no number is touched."""
    with open(base_path) as f:
        base = json.load(f)
    with open(update_path) as f:
        update = json.load(f)
    key = lambda p: (p["kernel"], p["problem"])  # noqa: E731
    new = {key(p): p for p in update["points"]}
    replaced = [p for p in base["points"] if key(p) in new]
    base["points"] = [new.pop(key(p), p) for p in base["points"]] + list(new.values())
    base.setdefault("updates", []).append({"provenance": update["provenance"],
                                           "points": [list(key(p)) for p in update["points"]],
                                           "replaced": len(replaced)})
    with open(out_path, "w") as f:
        json.dump(base, f, indent=1, default=str)
    write_csv(os.path.splitext(out_path)[0] + ".csv", base["points"])
    return base


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "merge":
        if len(argv) != 4:
            print("usage: python -m workbench.bench.compare merge BASE.json UPDATE.json OUT.json", file=sys.stderr)
            return 2
        merge(*argv[1:])
        return 0
    global _STARTED
    _STARTED = time.perf_counter()
    args = parse_args(argv)
    if args.suite in suites.TRAINING_INFERENCE:  # backward, decode, model shapes: their own module
        from workbench.bench import suites_training

        if args.kernels or args.peers is not None:
            print(f"--suite {args.suite} runs its own kernels and peers; drop --kernels/--peers "
                  f"(--seq keeps some lengths)", file=sys.stderr)
            return 2
        return suites_training.run_suite(args.suite, args.out, args.json, args.seq_filter,
                                         plots=not args.no_plots)
    runs = []  # (suite name or None, problems, kernels, peers, timed, all_heads, repeat)
    if args.suite:
        for name in (suites.SEED if args.suite == "seed" else (args.suite,)):
            suite = suites.get(name, device.simulator())
            kernels = args.kernels or [get(n) for n in (suite.kernels or [r.name for r in LADDER])]
            peer_names = list(suite.peers) if args.peers is None else args.peers
            problems = [p for p in suite.problems if not args.seq_filter or p.seq_q in args.seq_filter]
            runs.append((suite, problems, kernels, peer_names, suite.timed, suite.all_heads,
                         suite.repeat or args.repeat))
    else:
        problems = [Problem(args.batch, args.heads, args.kv_heads, n, args.seq_kv, args.dim, args.dtype,
                            args.causal, tuple(args.window) if args.window else None) for n in args.seq]
        runs.append((None, problems, args.kernels or list(LADDER), args.peers or [], True, False,
                     args.repeat))
    failed = 0
    cache = {}
    for suite, problems, kernels, peer_names, timed, all_heads, repeat in runs:
        name = suite.name if suite else None
        points = run_problems(problems, kernels, peer_names, args.seed, repeat, timed, all_heads,
                              on_point=lambda pts: save(pts, name, args, complete=False),
                              cache=cache, label=name)
        where = device.provenance()["device"]
        title = (f"suite {suite.name}: {suite.description} — on {where}" if suite
                 else f"{problems[0].describe()} (seq swept) on {where}")
        print_table(points, title if suite is None else title + " (problem per row)")
        if suite is not None:
            print_claims(points, suite.name)
        for path in save(points, name, args):
            print(f"wrote {path}")
            if args.out and path.endswith(".json") and not args.no_plots:
                from workbench.bench import plots

                plots.write_all(path)
        failed += sum(p["status"] == "FAIL" for p in points)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
