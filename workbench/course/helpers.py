"""What the course's notebooks (notebooks/) share: showing the package's source, measuring live on
a GPU or loading the committed H100 data where there is none, and printing points as tables.

The notebooks never copy kernel code: `show(obj)` prints a function, class or module of the package
as it is on disk (with its file and line numbers), `diff(a, b)` the unified diff of two of them,
`skeleton(obj, patterns)` an outline, `kernels_of(rung, problem)` the kernels a rung launches (from
its launch plan), `show_file(path, functions)` C functions of a file such as kernels/mma.cu. Every
`### BEGIN SOLUTION` … `### END SOLUTION` region (what an assignment, or a notebook's "your turn",
asks the learner to write) is elided to one comment line wherever source is shown.

Measurements follow one rule: on a GPU (`simulator()` is False) a notebook measures live, with
`measure(...)` (the harness's verify-then-time `compare.run_point`), and `record(...)` saves what it
measured as JSON with provenance when `WORKBENCH_NOTEBOOK_OUT` names a folder
(scripts/run_notebooks.py sets it). Without a GPU it loads what was measured on the H100 from
figures/h100/ (`committed(...)`) and says so (`source_line(...)`).

Pictures are drawn by workbench.course.diagrams (figures the notebook shows with plt.show()) and
workbench.bench.plots (PNG files, shown with `show_png`). Import this module before workbench.bench.plots in a
notebook: plots selects matplotlib's Agg backend, which would stop Jupyter showing figures, and
this module imports plots in a way that keeps the notebook's backend.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
import os
import shutil
import sys
from pathlib import Path

import matplotlib


def _in_ipython() -> bool:
    ip = sys.modules.get("IPython")
    return bool(ip and getattr(ip, "get_ipython", lambda: None)())


# workbench.bench.plots selects matplotlib's Agg backend when imported; inside Jupyter that would switch
# the notebook's inline backend off (figures would stop showing), so there it is kept.
if _in_ipython() and "workbench.bench.plots" not in sys.modules:
    _use, matplotlib.use = matplotlib.use, lambda *args, **kwargs: None
    try:
        from workbench.bench import plots
    finally:
        matplotlib.use = _use
else:
    from workbench.bench import plots

from workbench.harness import device  # noqa: E402

OUT_ENV = "WORKBENCH_NOTEBOOK_OUT"


# --------------------------------------------------------------------------------------------------
# Where things are
# --------------------------------------------------------------------------------------------------
def repo_root() -> Path:
    """The checkout the package lives in (editable install), or the working directory's parent."""
    here = Path(__file__).resolve().parents[2]
    if (here / "figures").is_dir():
        return here
    return Path.cwd().resolve().parent


def figures_dir(device_slug: str = "h100") -> Path:
    return repo_root() / "figures" / device_slug


def simulator() -> bool:
    return device.simulator()


def banner() -> str:
    """One line: which mode this notebook runs in, and what that means for its numbers."""
    if simulator():
        return (f"mode: simulator ({device.mode_reason()}): kernels run on the CPU at tiny sizes and "
                f"are verified; measurements are the committed H100 data from figures/h100/")
    return f"mode: GPU ({device.facts().name}): kernels run at real sizes and are measured live"


# --------------------------------------------------------------------------------------------------
# Source
# --------------------------------------------------------------------------------------------------
def _unwrap(obj):
    """A kernel or device function (a Numba dispatcher, or the simulator's stand-in), or a cached
    factory -> the Python function it was made from; anything else unchanged."""
    for attr in ("py_func", "fn"):
        f = getattr(obj, attr, None)
        if callable(f) and hasattr(f, "__code__"):
            return f
    return inspect.unwrap(obj) if callable(obj) else obj  # functools.cache wrappers -> the function


_BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION(?:\s+(\S+))?\s*$")
_END = re.compile(r"^\s*### END SOLUTION\s*$")


def _numbered_elided(lines: list[str], start: int):
    """(file line number, text) of each line to show: every `### BEGIN SOLUTION` … `### END
    SOLUTION` region (what an assignment or a notebook's "your turn" asks the learner to write)
    becomes one comment, numbered as its BEGIN line."""
    region = None  # (line number, indent, tag, body lines)
    for n, line in enumerate(lines, start):
        if region is None and (m := _BEGIN.match(line)):
            region = [n, m.group(1), m.group(2), 0]
        elif region is not None and _END.match(line):
            at, indent, tag, body = region
            what = f"assignment `{tag}`" if tag else "its assignment and a notebook's \"your turn\""
            yield at, f"{indent}# ✂ {body} lines elided: the solution ({what})\n"
            region = None
        elif region is not None:
            region[3] += 1
        else:
            yield n, line


def elide_solutions(lines: list[str]) -> list[str]:
    """Lines of source with each solution region replaced by one comment."""
    return [text for _, text in _numbered_elided(lines, 1)]


def source(obj, *, solutions: bool = False) -> str:
    """The source of a package object, its solution regions elided unless `solutions`."""
    lines = inspect.getsourcelines(_unwrap(obj))[0]
    return "".join(lines if solutions else elide_solutions(lines))


def _where(obj) -> str:
    obj = _unwrap(obj)
    path = Path(inspect.getsourcefile(obj)).resolve()
    try:
        path = path.relative_to(repo_root())
    except ValueError:
        pass
    lines, start = inspect.getsourcelines(obj)
    start = max(start, 1)
    return f"{path}, lines {start}-{start + len(lines) - 1}"


def show(obj, *, numbers: bool = True):
    """Print the source of a package function, class, module or kernel as it is on disk, headed by
    its file and line numbers; solution regions (`### BEGIN SOLUTION` … `### END SOLUTION`) are
    elided to one line each (the numbers stay the file's)."""
    obj = _unwrap(obj)
    lines, start = inspect.getsourcelines(obj)
    print(f"# {_where(obj)}")
    text = ""
    for n, text in _numbered_elided(lines, max(start, 1)):
        print(f"{n:4d}  {text}" if numbers else text, end="")
    if text and not text.endswith("\n"):
        print()


def show_file(path, functions=None, *, header_lines: int = 0):
    """Print a text file of the package (e.g. workbench/kernels/mma.cu) with line numbers: its
    first `header_lines` lines, then each named C function (`extern "C"` … up to its closing
    brace, with the comment lines just above it); the whole file when `functions` is None."""
    path = Path(path)
    if not path.is_absolute():
        path = repo_root() / path
    lines = path.read_text().splitlines()
    try:
        shown = path.resolve().relative_to(repo_root())
    except ValueError:
        shown = path
    print(f"# {shown}")
    if functions is None:
        spans = [(0, len(lines))]
    else:
        spans = [(0, header_lines)] if header_lines else []
        for name in functions:
            start = next((i for i, line in enumerate(lines) if re.search(rf"\b{re.escape(name)}\s*\(", line)), None)
            if start is None:
                raise ValueError(f"{path.name} has no function {name!r}")
            while start > 0 and lines[start - 1].startswith("//"):
                start -= 1
            end = next(i for i in range(start, len(lines)) if lines[i].startswith("}")) + 1
            spans.append((start, end))
    for k, (a, b) in enumerate(spans):
        if k:
            print("     …")
        for n in range(a, b):
            print(f"{n + 1:4d}  {lines[n]}")


def diff(a, b, *, context: int = 2, name_a: str | None = None, name_b: str | None = None) -> str:
    """The unified diff of two package objects' source (functions, classes or modules), or of two
    texts (e.g. two `skeleton`s)."""
    def text(x):
        return x if isinstance(x, str) else source(x)

    lines = difflib.unified_diff(text(a).splitlines(keepends=True), text(b).splitlines(keepends=True),
                                 fromfile=name_a or (_where(a) if not isinstance(a, str) else "a"),
                                 tofile=name_b or (_where(b) if not isinstance(b, str) else "b"), n=context)
    return "".join(lines)


def skeleton(obj, keep) -> str:
    """The lines of obj's source that match any of the regular expressions in `keep` (loops,
    barriers, loads and stores: a kernel's outline), indentation kept."""
    pats = [re.compile(k) for k in keep]
    lines = source(obj).splitlines()
    return "\n".join(line for line in lines if any(p.search(line) for p in pats)) + "\n"


def side_by_side(a: str, b: str, names=("a", "b"), width: int = 64) -> str:
    """Two texts in two columns (each line cut to `width`), for outlines too different to diff."""
    left, right = a.splitlines(), b.splitlines()
    cut = lambda s: s if len(s) <= width else s[: width - 1] + "…"  # noqa: E731
    rows = [f"{names[0]:<{width}} | {names[1]}", f"{'-' * width}-+-{'-' * width}"]
    for i in range(max(len(left), len(right))):
        x = cut(left[i]) if i < len(left) else ""
        y = cut(right[i]) if i < len(right) else ""
        rows.append(f"{x:<{width}} | {y}")
    return "\n".join(rows)


def kernel_function(dispatcher):
    """The Python function behind a compiled (or simulated) kernel, e.g. flash1.build(64, 8, 64):
    what `show` and `diff` print for a kernel built inside a factory."""
    return _unwrap(dispatcher)


def kernels_of(name: str, problem, config: dict | None = None) -> list:
    """The kernels rung `name` launches on `problem` (from its launch plan: nothing is compiled or
    run), as the Python functions they were made from: what `show`, `diff` and `skeleton` print.
    `config` defaults to the mode's tiles (tiny in the simulator)."""
    from workbench.harness import runner
    from workbench.kernels import get

    rung = get(name)
    return [kernel_function(launch.kernel) for launch in runner.plan(rung, problem, runner.merged_config(rung, config))]


# --------------------------------------------------------------------------------------------------
# Data: committed (H100) or live
# --------------------------------------------------------------------------------------------------
def committed(name: str, device_slug: str = "h100") -> dict | None:
    """figures/<device>/<name>.json (a compare suite, or a notebook's own recorded measurement), or
    None when it has not been measured and committed yet."""
    path = figures_dir(device_slug) / f"{name}.json"
    if not path.exists():
        return None
    with open(path) as f:
        data = json.load(f)
    data["path"] = str(path.relative_to(repo_root()))
    return data


def source_line(data: dict) -> str:
    """Where committed numbers come from: device, date, command and file (and the runs that
    updated some of its points, each with its date and command)."""
    prov = data.get("provenance", {})
    line = (f"committed measurements (no GPU here): {prov.get('device', '?')}, {prov.get('date', '?')[:10]}, "
            f"`{prov.get('command', '?')}` — {data.get('path', '')}")
    for up in data.get("updates") or []:
        p = up.get("provenance", {})
        line += (f"\n  {len(up.get('points', []))} points re-measured {p.get('date', '?')[:10]} on "
                 f"{p.get('device', '?')}: `{p.get('command', '?')}`")
    return line


def select(points, **where) -> list:
    """The points whose fields equal `where`'s values (a tuple or list means any of them)."""
    def ok(p):
        for key, want in where.items():
            have = p.get(key)
            if isinstance(want, (tuple, list, set)):
                if have not in want:
                    return False
            elif have != want:
                return False
        return True

    return [p for p in points if ok(p)]


def measure(kernels, problems, *, repeat: int = 5, seed: int = 0) -> list:
    """Verify each rung on each problem (float64 reference) and, on a GPU, time it (median of up to
    `repeat` CUDA-event timings, L2 flushed) and measure its peak memory: `compare.run_point`.
    In the simulator: verification and the memory model only."""
    from workbench.bench import compare
    from workbench.kernels import get

    points = []
    for problem in problems:
        for name in kernels:
            points.append(compare.run_point(get(name), problem, seed, repeat, timed=not simulator()))
    return points


def measure_peers(peers, problems, *, repeat: int = 5, seed: int = 0) -> list:
    """The same for PyTorch/CuPy peers (GPU only; 'n/a' points where one is not available)."""
    from workbench.bench import compare

    return [compare.run_peer_point(name, problem, seed, repeat) for problem in problems for name in peers]


def record(name: str, points, **extra) -> str | None:
    """Save live measurements as <$WORKBENCH_NOTEBOOK_OUT>/<name>.json with provenance (for
    committing under figures/<device>/); nothing when the variable is unset."""
    out = os.environ.get(OUT_ENV)
    if not out:
        return None
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"provenance": device.provenance(), "suite": name, "points": list(points), **extra},
                  f, indent=1, default=str)
    return path


def _fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def table(points, columns=("kernel", "problem", "status", "ms", "TFLOP/s", "peak MiB", "model MiB", "rel err")) -> str:
    """Points (from `measure`, or committed JSON) as an aligned text table."""
    def cell(p, c):
        t, mem = p.get("timing") or {}, p.get("memory") or {}
        return {"kernel": p.get("kernel"), "problem": p.get("problem"), "status": p.get("status"),
                "seq": str(p.get("seq_q")), "dtype": p.get("dtype"),
                "ms": _fmt(t.get("median_ms")), "TFLOP/s": _fmt(p.get("tflops")),
                "GB/s": _fmt(p.get("gbps")), "peak MiB": _fmt(mem.get("peak_MiB")),
                "model MiB": _fmt(mem.get("model_MiB")),
                "rel err": _fmt((p.get("verify") or {}).get("rel_fro"), 2)}[c] or "–"

    rows = [list(columns)] + [[cell(p, c) for c in columns] for p in points]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ms(points, kernel, **where):
    """The median ms of the one point of `kernel` matching `where` (None if absent or untimed)."""
    found = select(points, kernel=kernel, **where)
    t = found[0].get("timing") if found else None
    return t["median_ms"] if t else None


# --------------------------------------------------------------------------------------------------
# Showing figures
# --------------------------------------------------------------------------------------------------
def show_png(path):
    """Show a PNG the package wrote (workbench.bench.plots): inline in Jupyter; elsewhere print its path and
    copy it to $WORKBENCH_NOTEBOOK_OUT when set."""
    if path is None:
        print("(no figure: nothing in the data it can show)")
        return
    if _in_ipython():
        from IPython.display import Image, display

        display(Image(filename=str(path)))
        return
    out = os.environ.get(OUT_ENV)
    if out:
        os.makedirs(out, exist_ok=True)
        shutil.copy(path, os.path.join(out, os.path.basename(path)))
    print(f"[figure: {path}]")


# --------------------------------------------------------------------------------------------------
# The H100's memory hierarchy
# --------------------------------------------------------------------------------------------------
def hierarchy(measured_hbm_gbps: float | None = None) -> list:
    """The memory levels a kernel sees, with capacity, scope and bandwidth, and where each number
    comes from. On a GPU the capacities are read from the device; otherwise the H100's."""
    sms, shared_sm, l2, regs_sm, total = 132, 228 * 1024, 50 * 2**20, 65536, 80 * 2**30
    where = "H100 SXM datasheet"
    if not simulator():
        from numba import cuda

        dev = cuda.get_current_device()
        try:
            sms = dev.MULTIPROCESSOR_COUNT
            shared_sm = dev.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
            l2 = dev.L2_CACHE_SIZE
            regs_sm = dev.MAX_REGISTERS_PER_MULTIPROCESSOR
            where = f"read from the device ({device.facts().name})"
        except Exception:  # noqa: BLE001 - an attribute this driver does not expose: keep the datasheet
            pass
        total = cuda.current_context().get_memory_info().total
    peak_tflops, copy_gbps = plots.MEASURED_PEAKS["h100"]
    hbm_bw = (f"{measured_hbm_gbps:,.0f} GB/s copy, measured now" if measured_hbm_gbps
              else f"{copy_gbps:,.0f} GB/s copy, measured on the H100 (datasheet 3,350)")
    return [
        {"name": "registers", "capacity": regs_sm * 4, "scope": f"per SM; ×{sms} SMs; ≤ 255 per thread",
         "bandwidth": "the operands of every instruction", "source": where},
        {"name": "shared memory", "capacity": shared_sm, "scope": f"per SM; ×{sms} SMs; Numba: 48 KiB per block",
         "bandwidth": "32 banks × 4 B per clock per SM", "source": where},
        {"name": "L2 cache", "capacity": l2, "scope": "whole GPU; shared by all SMs", "bandwidth": "",
         "source": where},
        {"name": "device memory (HBM)", "capacity": total, "scope": "whole GPU", "bandwidth": hbm_bw,
         "source": "bandwidth measured now" if measured_hbm_gbps else "bandwidth: numba-cuda-notes, measured"},
    ]


def copy_bandwidth_gbps(n_bytes: int = 2**30) -> float:
    """Device-to-device copy bandwidth measured now (read + write, GB/s) with the harness's timer."""
    import numpy as np
    from numba import cuda

    from workbench.harness import timing

    a = cuda.device_array(n_bytes // 4, np.float32)
    b = cuda.device_array(n_bytes // 4, np.float32)
    t = timing.time_call(lambda: b.copy_to_device(a), repeat=10)
    return 2 * n_bytes / (t.median_ms * 1e-3) / 1e9
