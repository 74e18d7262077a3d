"""The course (notebooks/): its sources are jupytext percent-format scripts, NN-name.py. Every one runs
top to bottom under Jupyter's own machinery (jupytext to a notebook, nbclient and an IPython kernel)
in simulator mode, shows the figures it draws, leaves each "your turn" stub failing its check (the
learner's job) and never prints a rung's solution; its prose names only package objects that exist,
carries no stale claim and no measured number typed in. And the Jupyter-free runner the GPU uses
(scripts/run_notebooks.py) reads the same cells and reports cells, output, figures, checks and
failures correctly."""

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]-*.py"))
CELL_TIMEOUT_S = 240  # generous: the simulator on a loaded 2-core machine; a notebook takes ~10-30 s
YOUR_TURN = "your-turn"
NEEDS = "pip install -e '.[dev]' (jupytext, nbformat, nbclient, ipykernel)"


def _ids(path):
    return path.stem


def _read(path):
    jupytext = pytest.importorskip("jupytext", reason=NEEDS)
    return jupytext.read(path)


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_course_has_its_eleven_notebooks_and_no_build_script():
    assert [p.stem[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(11)]
    assert not (NB_DIR / "build.py").exists()
    assert not list(NB_DIR.glob("*.ipynb")) or not _tracked("notebooks/*.ipynb"), \
        "the .py sources are the notebooks; an .ipynb is a local copy (notebooks/.gitignore)"


def _tracked(pattern) -> list:
    try:
        out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except OSError:
        return []
    return out.stdout.split()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs_in_the_simulator(path, monkeypatch):
    nb = _read(path)
    nbclient = pytest.importorskip("nbclient", reason=NEEDS)
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")  # the kernel inherits it: simulator, even on a GPU machine
    monkeypatch.delenv("WORKBENCH_NOTEBOOK_OUT", raising=False)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()  # raises CellExecutionError (with the cell and its traceback) on any error

    code = [c for c in nb.cells if c.cell_type == "code"]
    first = "".join(o.get("text", "") for o in code[0].outputs if o.output_type == "stream")
    assert "mode: simulator" in first, f"{path.name} did not run in simulator mode: {first!r}"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    shown = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    drawn = sum("plt.show()" in c.source or "course.show_png(" in c.source for c in code)
    assert shown >= drawn, f"{path.name}: {drawn} cells draw a figure but only {shown} images were displayed"

    # every "your turn" check runs and, with the stub in place, says NOT YET
    verdicts = [_text(c) for c in code if "checks.check(" in c.source]
    assert verdicts and all(v.startswith("NOT YET") for v in verdicts), (path.name, [v[:80] for v in verdicts])

    # no solution region of any rung appears in what the notebook shows
    shown_text = "\n".join(_text(c) for c in code) + "\n".join(c.source for c in nb.cells)
    leaked = [line for line in _solution_lines() if line in shown_text]
    assert not leaked, f"{path.name} shows solution lines: {leaked[:5]}"


def _text(cell) -> str:
    out = []
    for o in cell.outputs:
        if o.output_type == "stream":
            out.append(o.get("text", ""))
        elif o.output_type in ("execute_result", "display_data"):
            out.append(o.get("data", {}).get("text/plain", ""))
    return "".join(out)


# Lines of rungs with no solution region that hold a "your turn"'s answer all the same (07: P's A
# fragment packed from S's C fragments; 08: dS and the dK, dV accumulation).
ANSWER_LINES = {"flash2_mma.py": r"= pack\(s\[", "flash2_bwd.py": r"ds_s\[.*\] = p \*|acc_[kv]\[a, x\] \+="}


def _solution_lines() -> set:
    """The distinctive lines inside every `### BEGIN SOLUTION` … `### END SOLUTION` region of the
    rungs, and ANSWER_LINES (short or generic lines, which appear elsewhere too, are left out)."""
    lines = set()
    for name, pattern in ANSWER_LINES.items():
        path = ROOT / "workbench" / "kernels" / name
        if path.exists():
            lines |= {ln.strip() for ln in path.read_text().splitlines() if re.search(pattern, ln)}
    for path in (ROOT / "workbench" / "kernels").glob("*.py"):
        inside = False
        for line in path.read_text().splitlines():
            if "### BEGIN SOLUTION" in line:
                inside = True
            elif "### END SOLUTION" in line:
                inside = False
            elif inside and len(line.strip()) >= 30 and not line.strip().startswith("#"):
                lines.add(line.strip())
    return lines


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_your_turn_cells(path):
    """Each notebook has at least one "your turn": a tagged cell that defines the stub (FILL ME IN),
    and a later cell that checks it with an exercise of that notebook."""
    from workbench.course import checks

    cells = _read(path).cells
    turns = [i for i, c in enumerate(cells) if YOUR_TURN in c.metadata.get("tags", [])]
    assert turns, f"{path.name} has no cell tagged {YOUR_TURN!r}"
    for i in turns:
        src = cells[i].source
        assert "FILL ME IN" in src and re.search(r"^def \w+\(", src, re.M), src[:200]
        name = re.search(r"^def (\w+)\(", src, re.M).group(1)
        later = "\n".join(c.source for c in cells[i + 1:] if c.cell_type == "code")
        m = re.search(rf'checks\.check\("([\w-]+)", {name}\b', later)
        assert m, f"{path.name}: no checks.check(..., {name}) after the stub"
        assert checks.EXERCISES[m.group(1)].notebook == path.stem
    expected = {e.name for e in checks.EXERCISES.values() if e.notebook == path.stem}
    found = set(re.findall(r'checks\.check\("([\w-]+)"', "\n".join(c.source for c in cells)))
    assert found == expected, (path.name, found, expected)


def test_the_runner_reads_the_same_cells_as_jupytext():
    runner = _runner()
    for path in NOTEBOOKS:
        nb = _read(path)
        want = [(c.source, c.metadata.get("tags", [])) for c in nb.cells if c.cell_type == "code"]
        got = [(c["source"], c["tags"]) for c in runner.cells_of(path)]
        assert got == want, path.name


# --------------------------------------------------------------------------------------------------
# The text
# --------------------------------------------------------------------------------------------------
# Short names the notebooks use for package modules (`course.show`, `flash2.tiles`, ...).
MODULES = {
    "workbench": "workbench", "course": "workbench.course.helpers", "diagrams": "workbench.course.diagrams",
    "checks": "workbench.course.checks", "fragments": "workbench.course.fragments",
    "traffic_model": "workbench.bench.traffic_model", "benchmark_page": "workbench.bench.benchmark_page",
    "plots": "workbench.bench.plots", "reference": "workbench.reference", "report": "workbench.bench.report",
    "runner": "workbench.harness.runner", "memory": "workbench.harness.memory", "verify": "workbench.harness.verify",
    "timing": "workbench.harness.timing", "common": "workbench.kernels.common", "fp8": "workbench.demos.fp8",
    "Problem": "workbench.problem.Problem", "DecodeProblem": "workbench.problem.DecodeProblem",
    **{r: f"workbench.kernels.{r}" for r in ("naive", "tiled", "online", "flash1", "flash2", "flash2_mma",
                                            "flash2_bwd", "flash2_mma_bwd", "paged_decode", "tiles")},
}
NAME = re.compile(r"(?<![\w/.-])(" + "|".join(MODULES) + r")((?:\.[A-Za-z_]\w*)+)(?!\w)")
FILE_SUFFIXES = (".py", ".json", ".cu", ".png", ".csv")  # `tiles.py` is a file, not an attribute


def _resolve(short, attrs):
    target = path = MODULES[short]
    try:
        obj = importlib.import_module(target)
    except ImportError:  # a class (Problem)
        module_name, _, name = target.rpartition(".")
        obj = getattr(importlib.import_module(module_name), name)
    for attr in attrs.strip(".").split("."):
        if not hasattr(obj, attr):
            try:  # a submodule not imported yet (workbench.harness.device)
                obj = importlib.import_module(f"{path}.{attr}")
            except ImportError:
                return False
        else:
            obj = getattr(obj, attr)
        path = f"{path}.{attr}"
    return True


def test_every_package_name_in_the_text_exists():
    """Markdown (prose and exercises) is never executed, nor is a code cell's GPU branch here: check
    every `module.name` they mention (markdown: inside backticks; code: everywhere)."""
    missing = []
    for path in NOTEBOOKS:
        for cell in _read(path).cells:
            snippets = re.findall(r"`([^`]+)`", cell.source) if cell.cell_type == "markdown" else [cell.source]
            for snippet in snippets:
                for short, attrs in NAME.findall(snippet):
                    if attrs.endswith(FILE_SUFFIXES):
                        continue
                    if not _resolve(short, attrs):
                        missing.append(f"{path.name}: {short}{attrs}")
    assert not missing, f"the notebooks mention names the package does not have: {missing}"


def test_the_name_check_can_fail():
    assert _resolve("course", ".show") and _resolve("workbench", ".harness.device.provenance")
    assert _resolve("Problem", ".visible_range") and _resolve("checks", ".check")
    assert not _resolve("course", ".no_such_helper") and not _resolve("flash2", ".tiles.nope")


STALE = [
    "Numba has no API for",  # rung 6 reaches the tensor cores through a linked mma.cu
    "fastest rung",  # in float16 the tensor-core rung is faster than flash2; numbers come from data
    "notebooks/build.py", "claims.",  # the string-assembling script and the old module name
    "workbench.seed", "workbench.inspect.", "workbench.course.course",
]
# A measured quantity typed into prose: a time, a rate, or a speed-up with decimals. (Sizes and
# capacities such as "48 KiB" are specifications, not measurements.)
MEASURED = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s*(?:ms|µs|TFLOP/s|GFLOP/s|GB/s|TB/s|tokens/s)(?![\w/])"
                      r"|(?<![\w.])\d+\.\d+\s*×(?!\s*\d)")


def test_no_stale_text_and_no_measured_number_typed_into_prose():
    stale, typed = [], []
    for path in NOTEBOOKS:
        for i, cell in enumerate(_read(path).cells):
            stale += [f"{path.name} cell {i}: {s!r}" for s in STALE if s in cell.source]
            if cell.cell_type == "markdown":
                typed += [f"{path.name} cell {i}: {m.group(0)!r}" for m in MEASURED.finditer(cell.source)]
    assert not stale, stale
    assert not typed, f"measured numbers belong in data files, read at run time: {typed}"


def test_the_prose_checks_can_fail():
    assert MEASURED.search("flash2 takes 28.6 ms") and MEASURED.search("a 2.3× speed-up")
    assert MEASURED.search("at 1,667 GB/s") and not MEASURED.search("a 16×8×16 tile, 48 KiB, 80 GB")


# --------------------------------------------------------------------------------------------------
# The Jupyter-free runner
# --------------------------------------------------------------------------------------------------
SAMPLE = '''# ---
# jupyter:
#   kernelspec:
#     name: python3
# ---

# %% [markdown]
# # a test

# %%
print('hello from cell 0')

# %%
%matplotlib inline
x = 2

# %% tags=["your-turn"]
def answer():
    """stub"""
    return 0

# %%
import matplotlib.pyplot as plt
plt.plot([1, 2, 3])
plt.show()

# %%
x * 21

# %%
from workbench.course import checks
print("answer", answer())
raise ValueError('boom')

# %%
print('never printed')
'''


def test_runner_runs_cells_in_order_and_reports_the_failing_one(tmp_path):
    """scripts/run_notebooks.py on a small percent-format notebook: output, last-expression
    display, magics skipped, figures saved, --solutions replacing a "your turn" function, timings,
    and the failing cell reported with the cells after it not run."""
    path = tmp_path / "99-test.py"
    path.write_text(SAMPLE)
    solutions = tmp_path / "solutions.py"
    solutions.write_text("def answer():\n    return 42\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), str(out), str(path),
                           "--simulator", "--solutions", str(solutions)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((out / "notebooks.json").read_text())
    (result,) = summary["notebooks"]
    assert result["ok"] is False and result["failed_cell"] == 5
    assert "ValueError: boom" in result["error"]
    assert len(result["cells"]) == 6  # cells 0-5 ran, cell 6 did not
    assert result["figures"] == ["99-test-cell03-1.png"] and (out / "99-test" / "99-test-cell03-1.png").stat().st_size > 0
    assert "device" in summary["provenance"] and result["wall_seconds"] >= result["seconds"] > 0
    log = (out / "99-test.log").read_text()
    assert "hello from cell 0" in log and "\n42\n" in log and "answer 42" in log and "never printed" not in log
    assert "FAILED" in proc.stdout and "99-test.py" in proc.stdout


def test_runner_records_the_checks_verdicts(tmp_path):
    """A check's Result, the last expression of a cell, is displayed and recorded in the summary."""
    path = tmp_path / "98-check.py"
    path.write_text('# %%\nimport workbench\nfrom workbench.course import checks\n\n'
                    '# %% tags=["your-turn"]\ndef kv_tiles(i0, i_last, Bc, shift, left, right, n_kv):\n'
                    '    """stub"""\n    return 0, 0\n\n# %%\nchecks.check("kv-tiles", kv_tiles, seed=3)\n')
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), str(out), str(path),
                           "--simulator"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads((out / "notebooks.json").read_text())["notebooks"]
    assert result["checks"] == [{"exercise": "kv-tiles", "passed": False, "cell": 2}]
    assert "NOT YET — kv-tiles" in (out / "98-check.log").read_text()
