"""Run the course's notebooks without Jupyter: each notebook's code cells in order, in one namespace,
in a fresh Python process per notebook, and a JSON summary of how each went.

    python scripts/run_notebooks.py OUTDIR [NOTEBOOK.ipynb ...]

For machines with no Jupyter (the GPU image has no nbformat, nbclient, ipykernel or IPython): the
.ipynb files are read as JSON; IPython magics (`%...`, `!...`) are skipped (the notebooks use none);
a cell's last expression is printed as Jupyter would display it; matplotlib runs headless (Agg) and
every figure a cell leaves open is saved as OUTDIR/<notebook>/<notebook>-cellNN-K.png.

Writes OUTDIR/<notebook>.log (everything the notebook printed), OUTDIR/<notebook>/ (its figures and,
on a GPU, its measurements as JSON: `workbench.course.helpers.record`), and OUTDIR/notebooks.json: per
notebook the seconds it took, ok or the failing cell with its traceback, per-cell seconds, and the
provenance (device, versions, date, command). Prints a table last. Exit status 1 if any failed.
(tests/test_notebooks.py runs the notebooks under the real Jupyter machinery with nbclient.)
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def code_cells(path: Path) -> list[str]:
    """The notebook's code cells, magics and shell escapes commented out."""
    with open(path) as f:
        nb = json.load(f)
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        lines = [f"# (skipped magic) {line}" if line.lstrip().startswith(("%", "!")) else line
                 for line in src.splitlines()]
        cells.append("\n".join(lines))
    return cells


def _save_figures(out: Path, stem: str, cell: int, saved: list):
    import matplotlib.pyplot as plt

    for k, num in enumerate(plt.get_fignums(), 1):
        path = out / f"{stem}-cell{cell:02d}-{k}.png"
        plt.figure(num).savefig(path, dpi=100, bbox_inches="tight")
        saved.append(path.name)
    plt.close("all")


def run_cell(src: str, namespace: dict, name: str):
    """exec the cell; if its last statement is an expression, print its repr (as Jupyter shows it)."""
    tree = ast.parse(src, filename=name)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    if last is not None:
        tree.body = tree.body[:-1]
    exec(compile(tree, name, "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), name, "eval"), namespace)
        if value is not None and type(value).__module__.split(".")[0] != "matplotlib":
            print(repr(value))


def run_one(path: Path, out: Path) -> dict:
    """Run one notebook in this process (called in a child process by `main`)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    stem = path.stem
    fig_dir = out / stem
    fig_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WORKBENCH_NOTEBOOK_OUT"] = str(fig_dir)  # where course.record / show_png put files
    os.chdir(path.parent)  # as Jupyter does: the notebook's folder is the working directory
    sys.path.insert(0, str(path.parent))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved: list = []
    cell_no = [0]
    plt.show = lambda *a, **k: _save_figures(fig_dir, stem, cell_no[0], saved)  # noqa: E731
    namespace = {"__name__": "__main__"}
    result = {"notebook": path.name, "ok": True, "cells": [], "figures": saved}
    start = time.perf_counter()
    for i, src in enumerate(code_cells(path)):
        cell_no[0] = i
        t0 = time.perf_counter()
        print(f"\n# ---- {path.name}, code cell {i} ----", flush=True)
        try:
            run_cell(src, namespace, f"<{path.name} cell {i}>")
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("notebooks", nargs="*", help="default: notebooks/[0-9][0-9]-*.ipynb")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child: run one notebook
    args = ap.parse_args(argv)
    out = Path(args.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        (path,) = args.notebooks
        result = run_one(Path(path).resolve(), out)
        with open(out / f"{Path(path).stem}.json", "w") as f:
            json.dump(result, f, indent=1, default=str)
        return 0 if result["ok"] else 1

    paths = [Path(p).resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    results = []
    for path in paths:
        t0 = time.perf_counter()
        with open(out / f"{path.stem}.log", "w") as log:
            proc = subprocess.run([sys.executable, __file__, "--one", str(out), str(path)], stdout=log,
                                  stderr=subprocess.STDOUT, env=env)
        wall = time.perf_counter() - t0
        try:
            with open(out / f"{path.stem}.json") as f:
                result = json.load(f)
        except (OSError, ValueError):
            result = {"notebook": path.name, "ok": False, "error": f"the runner died (exit {proc.returncode}); "
                      f"see {path.stem}.log"}
        result["wall_seconds"] = round(wall, 3)  # with the process start and imports
        results.append(result)
        print(f"{path.name}: {'ok' if result['ok'] else 'FAILED'} in {wall:.1f} s", flush=True)

    provenance = next((r["provenance"] for r in results if "provenance" in r), {})
    with open(out / "notebooks.json", "w") as f:
        json.dump({"provenance": provenance, "notebooks": results}, f, indent=1, default=str)

    print(f"\n{'notebook':32s} {'result':8s} {'cells s':>8s} {'wall s':>7s}  note")
    for r in results:
        note = "" if r["ok"] else f"cell {r.get('failed_cell', '?')}: {r.get('error', '')}"[:90]
        print(f"{r['notebook']:32s} {'ok' if r['ok'] else 'FAILED':8s} {r.get('seconds', float('nan')):8.1f} "
              f"{r['wall_seconds']:7.1f}  {note}")
    print(f"device: {provenance.get('device', '?')}; total {sum(r['wall_seconds'] for r in results):.1f} s; "
          f"summary in {out / 'notebooks.json'}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
