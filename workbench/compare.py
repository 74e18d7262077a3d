"""`python -m workbench.compare`: every rung on one problem (or a sweep over sequence lengths),
verified against float64, and on a GPU timed and its memory measured.

With no arguments: all rungs, on a problem that suits the mode — the seed page's config on a GPU
(B=8, H=32, D=64, float32, seq 512..4096), a tiny one in the simulator (which measures no time).
`--suite NAME` runs a named set of problems instead (workbench/suites.py) and `--out DIR` writes
DIR/NAME.json and DIR/NAME.csv. Exit status 1 when any rung fails verification.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

from . import suites
from .harness import device, memory, runner, timing, verify
from .kernels import LADDER, get
from .problem import Problem

GPU_DEFAULT = dict(batch=8, heads=32, seq=[512, 1024, 2048, 4096], dim=64)
SIM_DEFAULT = dict(batch=1, heads=2, seq=[16, 33], dim=16)
# Above this many float64 reference FLOPs, verification compares a sample of (batch, head) pairs.
FULL_REFERENCE_FLOPS = 2e9
SAMPLED_HEADS = 4


def parse_args(argv=None):
    sim = device.simulator()
    d = SIM_DEFAULT if sim else GPU_DEFAULT
    p = argparse.ArgumentParser(prog="python -m workbench.compare",
                                description="Verify, time and measure the memory of the ladder's rungs.")
    p.add_argument("--kernels", default=",".join(r.name for r in LADDER),
                   help="comma-separated rungs (default: all: %(default)s)")
    p.add_argument("--batch", type=int, default=d["batch"])
    p.add_argument("--heads", type=int, default=d["heads"])
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    p.add_argument("--seq", type=int, nargs="+", default=d["seq"], help="query lengths to sweep")
    p.add_argument("--seq-kv", type=int, default=None, help="key/value length (default: = seq)")
    p.add_argument("--dim", type=int, default=d["dim"], help="head dim D")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--causal", action="store_true")
    p.add_argument("--window", type=int, nargs=2, metavar=("LEFT", "RIGHT"), default=None,
                   help="sliding window (left, right); -1 = unbounded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=20, help="timed runs per point (GPU)")
    p.add_argument("--suite", default=None, choices=suites.NAMES,
                   help="a named set of problems (replaces the problem flags)")
    p.add_argument("--out", default=None, metavar="DIR", help="write DIR/<suite>.json and .csv")
    p.add_argument("--json", default=None, metavar="PATH", help="write every point and provenance here")
    args = p.parse_args(argv)
    args.kernels = [get(name.strip()) for name in args.kernels.split(",") if name.strip()]
    return args


def run_point(rung, problem: Problem, seed: int, repeat: int, timed: bool = True,
              all_heads: bool = False) -> dict:
    """Verify, then (GPU) time and measure one rung on one problem; OOM is recorded, not raised."""
    point = {"kernel": rung.name, "seq_q": problem.seq_q, "seq_kv": problem.seq_kv,
             "problem": problem.describe(), "flops": problem.flops(), "min_bytes": problem.min_bytes()}
    try:
        cfg = runner.check_config(rung, problem)
    except ValueError as exc:
        return {**point, "status": "n/a", "reason": str(exc)}
    point["config"] = cfg
    ref_flops = 2 * problem.flops()  # float64 NumPy, every head
    heads = None if all_heads or ref_flops <= FULL_REFERENCE_FLOPS else SAMPLED_HEADS
    try:
        report = verify.check(rung, problem, seed=seed, config=cfg, heads=heads)
        point.update(status="pass" if report.passed else "FAIL", verify=report.as_dict(),
                     verified_heads="all" if heads is None else heads)
        if device.simulator() or not timed:
            point["memory"] = {"model_MiB": memory.model_bytes(rung, problem, cfg) / 2**20}
            return point
        point.update(_measure(rung, problem, cfg, seed, repeat))
    except Exception as exc:  # noqa: BLE001 - an OOM is a data point; anything else is re-raised
        if not memory.is_oom(exc):
            raise
        point.update(status="OOM", reason=str(exc).splitlines()[0][:200],
                     memory={"model_MiB": memory.model_bytes(rung, problem, cfg) / 2**20})
    finally:
        _release()
    return point


def _measure(rung, problem, cfg, seed, repeat) -> dict:
    from numba import cuda

    q, k, v = problem.make_inputs(seed + 1000)  # not the verified inputs: no cache reuse
    dq, dk, dv = (cuda.to_device(x) for x in (q, k, v))
    do = cuda.device_array(problem.q_shape, problem.dtype)
    dlse = cuda.device_array(problem.lse_shape, np.float32)
    pool = runner.Pool()
    first = runner.run(rung, problem, cfg, dq, dk, dv, do, dlse)  # fresh allocations: measured
    cuda.synchronize()
    mem = memory.account(rung, problem, cfg, first)
    t = timing.time_call(lambda: runner.run(rung, problem, cfg, dq, dk, dv, do, dlse, pool=pool),
                         repeat=repeat)
    return {"timing": t.as_dict(), "tflops": problem.flops() / (t.median_ms * 1e-3) / 1e12,
            "gbps": problem.min_bytes() / (t.median_ms * 1e-3) / 1e9, "memory": mem.as_dict()}


def _release():
    """Free what the last point left (Numba defers frees), so the next point starts clean."""
    import gc

    gc.collect()
    if not device.simulator():
        from numba import cuda

        cuda.current_context().deallocations.clear()


def print_table(points, title):
    from rich.console import Console
    from rich.table import Table

    sim = device.simulator() or not any("timing" in p for p in points)
    table = Table(title=title)
    cols = ["kernel", "problem" if "problem" in title else "seq", "rel err", "verify"]
    cols += ["model KiB"] if sim else ["ms (p20-p80)", "TFLOP/s", "peak MiB", "model MiB"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("kernel", "verify") else "right")
    for pt in points:
        err = pt.get("verify", {}).get("rel_fro")
        status = pt["status"]
        style = {"pass": "green", "FAIL": "red"}.get(status, "yellow")
        where = pt["problem"] if "problem" in title else str(pt["seq_q"])
        row = [pt["kernel"], where, "" if err is None else f"{err:.1e}",
               f"[{style}]{status}[/{style}]"]
        mem = pt.get("memory", {})
        model = f"{mem['model_MiB']:.0f}" if "model_MiB" in mem else ""
        if sim:
            row += [f"{mem['model_MiB'] * 1024:.1f}" if "model_MiB" in mem else ""]
        elif "timing" in pt:
            t = pt["timing"]
            row += [f"{t['median_ms']:.3f} ({t['p20_ms']:.3f}-{t['p80_ms']:.3f})", f"{pt['tflops']:.2f}",
                    f"{mem['peak_MiB']:.0f}", model]
        else:
            row += ["", "", "", model]
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 150).print(table)
    if device.simulator():
        print("simulator: no timing (Numba's CUDA simulator runs on the CPU; correctness and the "
              "memory model only)")


CSV_FIELDS = ("kernel", "problem", "seq_q", "seq_kv", "status", "rel_fro", "median_ms", "p20_ms",
              "p80_ms", "tflops", "gbps", "peak_MiB", "driver_MiB", "model_MiB")


def write_csv(path, points):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for p in points:
            w.writerow({**p, "rel_fro": p.get("verify", {}).get("rel_fro"), **p.get("timing", {}),
                        **p.get("memory", {})})


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.suite:
        suite = suites.get(args.suite, device.simulator())
        problems, timed, all_heads = suite.problems, suite.timed, suite.all_heads
        title = f"suite {suite.name}: {suite.description} — problem per row, on "
    else:
        problems = [Problem(args.batch, args.heads, args.kv_heads, n, args.seq_kv, args.dim, args.dtype,
                            args.causal, tuple(args.window) if args.window else None) for n in args.seq]
        timed, all_heads = True, False
        title = f"{problems[0].describe()} (seq swept) on "
    from rich.progress import Progress

    points = []
    with Progress(transient=True) as progress:
        task = progress.add_task("compare", total=len(problems) * len(args.kernels))
        for problem in problems:
            for rung in args.kernels:
                progress.update(task, description=f"{rung.name} {problem.describe()}")
                points.append(run_point(rung, problem, args.seed, args.repeat, timed, all_heads))
                progress.advance(task)
    prov = device.provenance()
    print_table(points, title + prov["device"])
    data = {"provenance": prov, "suite": args.suite, "points": points}
    paths = [args.json] if args.json else []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, args.suite or "compare")
        paths.append(stem + ".json")
        write_csv(stem + ".csv", points)
    for path in paths:
        with open(path, "w") as f:
            json.dump(data, f, indent=1, default=str)
    failed = [p for p in points if p["status"] == "FAIL"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
