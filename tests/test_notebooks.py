"""The course (notebooks/): every notebook runs top to bottom under Jupyter's own machinery (nbclient
and an IPython kernel) in simulator mode; they are stored without outputs and in sync with
notebooks/build.py; every package name their text mentions exists. And the Jupyter-free runner the
GPU uses (scripts/run_notebooks.py) reports cells, output, figures and failures correctly."""

import importlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]-*.ipynb"))
CELL_TIMEOUT_S = 240  # generous: the simulator on a loaded 2-core machine; a notebook takes ~10-25 s


def _ids(path):
    return path.stem


def test_the_course_has_its_seven_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs_in_the_simulator(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]' (nbformat, nbclient, ipykernel)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]' (nbformat, nbclient, ipykernel)")
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")  # the kernel inherits it: simulator, even on a GPU machine
    monkeypatch.delenv("WORKBENCH_NOTEBOOK_OUT", raising=False)
    nb = nbformat.read(path, as_version=4)
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} cell {i} has outputs"


def test_notebooks_match_their_source():
    spec = importlib.util.spec_from_file_location("notebooks_build", NB_DIR / "build.py")
    build = importlib.util.module_from_spec(spec)
    pytest.importorskip("nbformat")
    spec.loader.exec_module(build)
    assert sorted(build.NOTEBOOKS) == [p.stem for p in NOTEBOOKS]
    assert build.main(["--check"]) == 0, "a notebook was edited by hand: edit notebooks/build.py and run it"


# Short names the notebooks use for package modules (`course.show`, `flash2.tiles`, ...).
MODULES = {
    "workbench": "workbench", "course": "workbench.course.helpers", "diagrams": "workbench.course.diagrams",
    "traffic_model": "workbench.bench.traffic_model", "seed": "workbench.bench.benchmark_page", "plots": "workbench.bench.plots",
    "reference": "workbench.reference", "report": "workbench.bench.report", "runner": "workbench.harness.runner",
    "memory": "workbench.harness.memory", "verify": "workbench.harness.verify", "common": "workbench.kernels.common",
    **{r: f"workbench.kernels.{r}" for r in ("naive", "tiled", "online", "flash1", "flash2")},
}
NAME = re.compile(r"\b(" + "|".join(MODULES) + r")((?:\.[A-Za-z_]\w*)+)")


def _resolve(short, attrs):
    obj = importlib.import_module(MODULES[short])
    path = MODULES[short]
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
        for cell in json.loads(path.read_text())["cells"]:
            text = "".join(cell["source"])
            snippets = re.findall(r"`([^`]+)`", text) if cell["cell_type"] == "markdown" else [text]
            for snippet in snippets:
                for short, attrs in NAME.findall(snippet):
                    if not _resolve(short, attrs):
                        missing.append(f"{path.name}: {short}{attrs}")
    assert not missing, f"the notebooks mention names the package does not have: {missing}"


def test_the_name_check_can_fail():
    assert _resolve("course", ".show") and _resolve("workbench", ".harness.device.provenance")
    assert not _resolve("course", ".no_such_helper") and not _resolve("flash2", ".tiles.nope")


def test_runner_runs_cells_in_order_and_reports_the_failing_one(tmp_path):
    """scripts/run_notebooks.py on a small notebook: output, last-expression display, magics skipped,
    figures saved, and the failing cell reported with the cells after it not run."""
    cells = ["print('hello from cell 0')",
             "%matplotlib inline\nx = 2",
             "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
             "x * 21",
             "raise ValueError('boom')",
             "print('never printed')"]
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# a test"}]
          + [{"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
             for s in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "99-test.ipynb"
    path.write_text(json.dumps(nb))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), str(out), str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((out / "notebooks.json").read_text())
    (result,) = summary["notebooks"]
    assert result["ok"] is False and result["failed_cell"] == 4
    assert "ValueError: boom" in result["error"]
    assert len(result["cells"]) == 5  # cells 0-4 ran, cell 5 did not
    assert result["figures"] == ["99-test-cell02-1.png"] and (out / "99-test" / "99-test-cell02-1.png").stat().st_size > 0
    assert "device" in summary["provenance"]
    log = (out / "99-test.log").read_text()
    assert "hello from cell 0" in log and "\n42\n" in log and "never printed" not in log
    assert "FAILED" in proc.stdout and "99-test.ipynb" in proc.stdout
