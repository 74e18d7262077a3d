"""Run the course's notebooks without Jupyter: each notebook's code cells in order, in one namespace,
in a fresh Python process per notebook, and a JSON summary of how each went and how long it took.

    python scripts/run_notebooks.py OUTDIR [NOTEBOOK ...] [--jobs N] [--simulator] [--solutions FILE]

For machines with no Jupyter (the GPU image has no jupytext, nbformat, nbclient or IPython). The
notebooks' sources are jupytext percent-format scripts, notebooks/NN-name.py: a line `# %%` starts
a code cell, `# %% [markdown]` a markdown cell (skipped here); .ipynb files are read as JSON too.
IPython magics (`%...`, `!...`) are skipped (the notebooks use none); a cell's last expression is
printed as Jupyter would display it (its repr: a "your turn" check shows its report); matplotlib
runs headless (Agg) and every figure a cell leaves open is saved as OUTDIR/<notebook>/<notebook>-cellNN-K.png.

--simulator  run in Numba's CUDA simulator even on a GPU machine (NUMBA_ENABLE_CUDASIM=1).
--solutions FILE  after each "your turn" cell (tag `your-turn`), replace the functions it defines
             by the same-named functions of FILE (tests/course_solutions.py): on a GPU this runs every
             check with a working solution, compiled for the device, instead of the stub.
--jobs N     notebooks in parallel (separate processes).

Writes OUTDIR/<notebook>.log (everything the notebook printed), OUTDIR/<notebook>/ (its figures and,
on a GPU, its measurements as JSON: `workbench.course.helpers.record`), and OUTDIR/notebooks.json:
per notebook ok or the failing cell with its traceback, the seconds it took (cells, and wall time
with the process start and imports), per-cell seconds, the "your turn" checks' verdicts, and the
provenance (device, versions, date, command). Prints a timing table last. Exit status 1 if any
notebook failed. (tests/test_notebooks.py runs the notebooks under Jupyter's own machinery.)
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
_CELL = re.compile(r"^# %%(.*)$")
YOUR_TURN = "your-turn"


def _percent_cells(text: str) -> list[dict]:
    """Cells of a jupytext percent-format script: [{"type": "code"|"markdown"|"raw", "tags", "source"}]
    (the YAML header and anything before the first `# %%` are not cells)."""
    cells, cur = [], None
    for line in text.splitlines():
        m = _CELL.match(line)
        if m:
            rest = m.group(1)
            kind = "markdown" if "[markdown]" in rest else "raw" if "[raw]" in rest else "code"
            tags = re.search(r"tags=\[([^\]]*)\]", rest)
            cur = {"type": kind, "tags": re.findall(r'"([^"]+)"', tags.group(1)) if tags else [], "lines": []}
            cells.append(cur)
        elif cur is not None:
            cur["lines"].append(line)
    for c in cells:
        c["source"] = "\n".join(c.pop("lines")).strip("\n")
    return cells


def cells_of(path: Path) -> list[dict]:
    """The notebook's code cells [{"source", "tags"}], magics and shell escapes commented out."""
    text = Path(path).read_text()
    if str(path).endswith(".ipynb"):
        nb = json.loads(text)
        raw = [{"type": c["cell_type"], "tags": c.get("metadata", {}).get("tags", []),
                "source": c["source"] if isinstance(c["source"], str) else "".join(c["source"])}
               for c in nb["cells"]]
    else:
        raw = _percent_cells(text)
    cells = []
    for c in raw:
        if c["type"] != "code":
            continue
        lines = [f"# (skipped magic) {line}" if line.lstrip().startswith(("%", "!")) else line
                 for line in c["source"].splitlines()]
        cells.append({"source": "\n".join(lines), "tags": c["tags"]})
    return cells


def code_cells(path: Path) -> list[str]:
    return [c["source"] for c in cells_of(path)]


def _save_figures(out: Path, stem: str, cell: int, saved: list):
    import matplotlib.pyplot as plt

    for k, num in enumerate(plt.get_fignums(), 1):
        path = out / f"{stem}-cell{cell:02d}-{k}.png"
        plt.figure(num).savefig(path, dpi=100, bbox_inches="tight")
        saved.append(path.name)
    plt.close("all")


def run_cell(src: str, namespace: dict, name: str):
    """exec the cell; if its last statement is an expression, print its repr (as Jupyter shows
    it) and return the value."""
    tree = ast.parse(src, filename=name)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    if last is not None:
        tree.body = tree.body[:-1]
    exec(compile(tree, name, "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), name, "eval"), namespace)
        if value is not None and type(value).__module__.split(".")[0] != "matplotlib":
            print(repr(value))
        return value
    return None


def _defined_functions(src: str) -> list[str]:
    return [n.name for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)]


def _load_solutions(path: str | None):
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("course_solutions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_one(path: Path, out: Path, solutions: str | None = None) -> dict:
    """Run one notebook in this process (called in a child process by `main`)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    stem = path.stem
    fig_dir = out / stem
    fig_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WORKBENCH_NOTEBOOK_OUT"] = str(fig_dir)  # where course.record / show_png put files
    os.chdir(path.parent)  # as Jupyter does: the notebook's folder is the working directory
    sys.path.insert(0, str(path.parent))
    cells = cells_of(path)  # (before the notebook imports anything)
    import workbench  # noqa: F401 - first, as every notebook does: it picks the simulator or the GPU
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sol = _load_solutions(solutions)
    saved: list = []
    cell_no = [0]
    plt.show = lambda *a, **k: _save_figures(fig_dir, stem, cell_no[0], saved)  # noqa: E731
    namespace = {"__name__": "__main__"}
    result = {"notebook": path.name, "ok": True, "cells": [], "figures": saved, "checks": [],
              "solutions": bool(sol)}
    start = time.perf_counter()
    for i, cell in enumerate(cells):
        cell_no[0] = i
        t0 = time.perf_counter()
        print(f"\n# ---- {path.name}, code cell {i} ----", flush=True)
        try:
            value = run_cell(cell["source"], namespace, f"<{path.name} cell {i}>")
            if YOUR_TURN in cell["tags"] and sol is not None:
                for name in _defined_functions(cell["source"]):
                    if hasattr(sol, name):
                        namespace[name] = getattr(sol, name)
                        print(f"# (--solutions: {name} replaced by {solutions}'s)")
            if type(value).__name__ == "Result" and hasattr(value, "exercise"):
                result["checks"].append({"exercise": value.exercise, "passed": bool(value.passed), "cell": i})
        except BaseException as exc:  # noqa: BLE001 - reported, not raised: the summary says which cell
            result.update(ok=False, failed_cell=i, error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc())
            traceback.print_exc()
            break
        finally:
            result["cells"].append(round(time.perf_counter() - t0, 3))
            _save_figures(fig_dir, stem, i, saved)
            sys.stdout.flush()
    result["seconds"] = round(time.perf_counter() - start, 3)
    try:
        import workbench.harness.device as device

        result["provenance"] = device.provenance()
    except Exception as exc:  # noqa: BLE001 - a notebook that broke the import still gets a summary
        result["provenance"] = {"error": str(exc)}
    return result


def _child(path: Path, out: Path, env: dict, solutions: str | None) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--one", str(out), str(path)]
    if solutions:
        cmd += ["--solutions", solutions]
    with open(out / f"{path.stem}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    try:
        with open(out / f"{path.stem}.json") as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {"notebook": path.name, "ok": False, "error": f"the runner died (exit {proc.returncode}); "
                  f"see {path.stem}.log"}
    result["wall_seconds"] = round(wall, 3)  # with the process start and imports
    return result


def default_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]-*.py"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("notebooks", nargs="*", help="default: notebooks/[0-9][0-9]-*.py")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="notebooks run in parallel (default 1)")
    ap.add_argument("--simulator", action="store_true", help="Numba's CUDA simulator even on a GPU")
    ap.add_argument("--solutions", help="replace each 'your turn' function by this file's (a GPU check run)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child: run one notebook
    args = ap.parse_args(argv)
    out = Path(args.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    solutions = str(Path(args.solutions).resolve()) if args.solutions else None
    if args.one:
        (path,) = args.notebooks
        result = run_one(Path(path).resolve(), out, solutions)
        with open(out / f"{Path(path).stem}.json", "w") as f:
            json.dump(result, f, indent=1, default=str)
        return 0 if result["ok"] else 1

    paths = [Path(p).resolve() for p in args.notebooks] or default_notebooks()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    t_all = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {p: pool.submit(_child, p, out, env, solutions) for p in paths}
        results = []
        for p in paths:
            r = futures[p].result()
            results.append(r)
            print(f"{p.name}: {'ok' if r['ok'] else 'FAILED'} in {r['wall_seconds']:.1f} s", flush=True)
    total = time.perf_counter() - t_all

    provenance = next((r["provenance"] for r in results if "provenance" in r), {})
    provenance = {**provenance, "command": " ".join([Path(sys.executable).name, *sys.argv])}
    summary = {"provenance": provenance, "jobs": args.jobs, "simulator_forced": args.simulator,
               "solutions": solutions, "total_wall_seconds": round(total, 3), "notebooks": results}
    with open(out / "notebooks.json", "w") as f:
        json.dump(summary, f, indent=1, default=str)

    print(f"\n{'notebook':32s} {'result':8s} {'cells s':>8s} {'wall s':>7s}  checks  note")
    for r in results:
        note = "" if r["ok"] else f"cell {r.get('failed_cell', '?')}: {r.get('error', '')}"[:90]
        checks = r.get("checks", [])
        passed = sum(c["passed"] for c in checks)
        print(f"{r['notebook']:32s} {'ok' if r['ok'] else 'FAILED':8s} {r.get('seconds', float('nan')):8.1f} "
              f"{r['wall_seconds']:7.1f}  {passed}/{len(checks)} passed  {note}")
    print(f"device: {provenance.get('device', '?')}; {len(results)} notebooks in {total:.1f} s "
          f"(jobs {args.jobs}); summary in {out / 'notebooks.json'}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
