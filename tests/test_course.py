"""workbench.course: the notebooks' helpers (source display with solutions elided, committed data,
tables, recording), the drawings (each returns a figure with something drawn on it), the mma.sync
fragments in NumPy, and every "your turn" exercise proved both ways — the stub in its notebook
fails its check, the reference solution (tests/course_solutions.py) passes — plus wrong solutions
that must fail with a report that says where."""

import json
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import course_solutions  # noqa: E402  (tests/: the reference solutions, outside the package)
from numba import cuda, float32  # noqa: E402  (after workbench, through course_solutions)
from workbench import Problem  # noqa: E402
from workbench.course import checks, diagrams, fragments  # noqa: E402
from workbench.course import helpers as course  # noqa: E402
from workbench.kernels import flash1, naive, online  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Source display
# --------------------------------------------------------------------------------------------------
def test_show_prints_the_package_source_with_its_place_and_elides_solutions(capsys):
    course.show(online.build)  # a functools.cache factory
    out = capsys.readouterr().out
    assert out.startswith("# workbench/kernels/online.py, lines ")
    assert "def build(Br, Bc, D):" in out and "cuda.syncthreads()" in out
    assert "✂" in out and "alpha = math.exp(m - m_new)" not in out and "BEGIN SOLUTION" not in out
    course.show(naive.softmax, numbers=False)  # a kernel: the function it was made from
    out = capsys.readouterr().out
    assert "def softmax(s, lse):" in out and "math.log(l)" not in out and "lines elided" in out


def test_elided_line_numbers_stay_the_files(capsys):
    course.show(naive)
    out = capsys.readouterr().out.splitlines()
    text = (ROOT / "workbench" / "kernels" / "naive.py").read_text().splitlines()
    for line in out[1:]:
        m = re.match(r"\s*(\d+)  (.*)$", line)
        if m and "✂" not in line:
            assert text[int(m.group(1)) - 1] == m.group(2), line
    begin = next(i for i, t in enumerate(text, 1) if "### BEGIN SOLUTION" in t)
    assert any(re.match(rf"\s*{begin}  \s*# ✂", line) for line in out)


def test_source_can_show_solutions_when_asked():
    assert "math.log(l)" in course.source(naive.softmax, solutions=True)
    assert "math.log(l)" not in course.source(naive.softmax)


def test_diff_of_two_kernels_and_of_texts():
    tiny = Problem(1, 1, 1, 16, 16, 16)
    (k3,) = course.kernels_of("online", tiny)
    (k4,) = course.kernels_of("flash1", tiny)
    d = course.diff(k3, k4)
    assert d.startswith("--- workbench/kernels/online.py") and "+    def flash1(" in d
    assert "alpha = math.exp(m - m_new)" not in d  # online's solution stays elided in a diff too
    assert course.diff("a\nb\n", "a\nc\n") == "--- a\n+++ b\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
    assert course.diff("same\n", "same\n") == ""


def test_skeleton_and_side_by_side():
    outline = course.skeleton(flash1.build, [r"^\s*for (ji|j0|i0)\b"])
    assert outline.split()[:2] == ["for", "ji"]  # KV tile j outer, Q block i inner, in one loop
    text = course.side_by_side("x\ny", "z", names=("L", "R"), width=4)
    assert text.splitlines() == ["L    | R", "-----+-----", "x    | z", "y    | "]


def test_show_file_prints_named_c_functions(capsys):
    course.show_file("workbench/kernels/mma.cu", ["wb_mma_f16"], header_lines=3)
    out = capsys.readouterr().out
    assert out.startswith("# workbench/kernels/mma.cu") and "mma.sync.aligned.m16n8k16" in out
    assert "wb_ldmatrix_x4" not in out and "   1  //" in out
    with pytest.raises(ValueError, match="no function"):
        course.show_file("workbench/kernels/mma.cu", ["no_such_function"])


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
def test_committed_data_and_tables():
    data = course.committed("ladder")
    assert data["path"] == "figures/h100/ladder.json" and "H100" in course.source_line(data)
    pts = course.select(data["points"], kernel=("naive", "flash2"), dtype="float32", seq_q=4096)
    assert [p["kernel"] for p in pts] == ["naive", "flash2"]
    table = course.table(pts).splitlines()
    assert len(table) == 4 and table[0].split()[:2] == ["kernel", "problem"]
    assert course.ms(pts, "flash2") == pts[1]["timing"]["median_ms"]
    assert course.ms(pts, "tiled") is None
    assert course.committed("no-such-suite") is None


def test_source_line_names_the_runs_that_updated_points():
    data = {"provenance": {"device": "D", "date": "2026-01-02T00:00", "command": "c1"}, "path": "p",
            "updates": [{"provenance": {"device": "D", "date": "2026-03-04T00:00", "command": "c2"},
                         "points": [["x", "y"]]}]}
    line = course.source_line(data)
    assert "D, 2026-01-02, `c1` — p" in line and "1 points re-measured 2026-03-04 on D: `c2`" in line


def test_record_writes_json_with_provenance_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(course.OUT_ENV, raising=False)
    assert course.record("x", [{"kernel": "naive"}]) is None
    monkeypatch.setenv(course.OUT_ENV, str(tmp_path))
    path = course.record("06-variants", [{"kernel": "flash2", "status": "pass"}])
    data = json.loads(open(path).read())
    assert data["suite"] == "06-variants" and data["points"][0]["kernel"] == "flash2"
    assert "device" in data["provenance"] and "date" in data["provenance"]


def test_measure_verifies_in_the_simulator():
    import workbench

    if workbench.mode() != "simulator":
        pytest.skip("simulator form")
    (pt,) = course.measure(["online"], [Problem(1, 1, 1, 9, 9, 8)])
    assert pt["status"] == "pass" and "timing" not in pt and pt["memory"]["model_MiB"] > 0


def test_hierarchy_levels():
    levels = course.hierarchy()
    assert [lv["name"] for lv in levels] == ["registers", "shared memory", "L2 cache", "device memory (HBM)"]
    caps = [lv["capacity"] for lv in levels]
    assert caps[1] < caps[2] < caps[3]
    assert "2,300 GB/s" in levels[3]["bandwidth"] or not course.simulator()


# --------------------------------------------------------------------------------------------------
# Drawings
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("draw", [
    lambda: diagrams.naive_launches(Problem(1, 1, 1, 20, 20, 16), {"block_xy": 8, "block_rows": 16}),
    lambda: diagrams.tiled_step(),
    lambda: diagrams.loop_orders(),
    lambda: diagrams.schedule("flash1", 16, 16, 8, 8),
    lambda: diagrams.mask_tiles(Problem(1, 1, 1, 24, 40, 16, causal=True), 8, 8),
    lambda: diagrams.memory_hierarchy(course.hierarchy()),
    lambda: diagrams.bytes_vs_seq(),
    lambda: diagrams.traffic_table(Problem(1, 2, 2, 256, 256, 64), rungs=("naive", "flash2")),
    lambda: diagrams.running_max_sum([1, 2], [1.0, 1.5], 2, 1.5, 4, [0.0, 0.4]),
    lambda: diagrams.gqa_heads(8, 1),
    lambda: diagrams.mma_fragments(),
    lambda: diagrams.p_in_registers(),
    lambda: diagrams.backward_schedule(24, 32, 8, 8, causal=True),
    lambda: diagrams.paged_cache(np.array([[3, 0, 9], [1, 2, 9]]), [20, 9], 8, 5),
    lambda: diagrams.split_kv(100, 4, sms=132),
    lambda: diagrams.float_formats(),
    lambda: diagrams.error_and_memory([{"format": "a", "error": 1e-3, "bytes": 2}, {"format": "b", "error": 1e-7, "bytes": 4}]),
    lambda: diagrams.measured([{"k": "x", "n": 1, "t": 2.0}, {"k": "x", "n": 2, "t": 3.0}], "n", "t", by="k",
                              hline=(2.5, "line")),
], ids=["naive", "tiled", "orders", "schedule", "mask", "hierarchy", "bytes", "traffic", "running", "gqa",
        "fragments", "p-in-registers", "backward", "paged", "split-kv", "formats", "error-memory", "measured"])
def test_each_drawing_draws_something(draw):
    import matplotlib.pyplot as plt

    fig = draw()
    try:
        assert fig.axes and any(ax.patches or ax.lines or ax.images for ax in fig.axes)
        fig.canvas.draw()  # lays out without error
    finally:
        plt.close(fig)


def test_schedule_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        diagrams.schedule("flash3")


# --------------------------------------------------------------------------------------------------
# mma.sync fragments (NumPy)
# --------------------------------------------------------------------------------------------------
def test_each_fragment_layout_covers_its_matrix_once():
    for coords, regs, shape in ((fragments.a_coords, 4, (16, 16)), (fragments.b_coords, 2, (16, 8))):
        seen = [coords(lane, r, h) for lane in range(32) for r in range(regs) for h in range(2)]
        assert sorted(seen) == [(i, j) for i in range(shape[0]) for j in range(shape[1])]
    seen = [fragments.c_coords(lane, e) for lane in range(32) for e in range(4)]
    assert sorted(seen) == [(i, j) for i in range(16) for j in range(8)]
    for lane in range(32):
        for reg in range(4):
            for half in range(2):
                assert fragments.a_owner(*fragments.a_coords(lane, reg, half)) == (lane, reg, half)


def test_the_ptx_layout_for_one_lane():
    """mma.cu's header, lane 4g + t = 9: g = 2, t = 1."""
    assert [fragments.a_coords(9, r, 0) for r in range(4)] == [(2, 2), (10, 2), (2, 10), (10, 10)]
    assert [fragments.b_coords(9, r, h) for r in range(2) for h in range(2)] == [(2, 2), (3, 2), (10, 2), (11, 2)]
    assert [fragments.c_coords(9, e) for e in range(4)] == [(2, 2), (2, 3), (10, 2), (10, 3)]


def test_mma_through_fragments_is_the_matrix_product():
    rng = np.random.default_rng()
    A = fragments.round16(rng.standard_normal((16, 16)))
    B = fragments.round16(rng.standard_normal((16, 8)))
    C = rng.standard_normal((16, 8)).astype(np.float32)
    d = fragments.mma(fragments.a_fragments(A), fragments.b_fragments(B), fragments.c_fragments(C))
    want = A.astype(np.float64) @ B.astype(np.float64) + C
    assert np.abs(fragments.from_c_fragments(d) - want).max() < 1e-4
    # a scrambled fragment is a different product: the emulation really uses the layout
    a = fragments.a_fragments(A)
    a[[3, 4]] = a[[4, 3]]
    assert np.abs(fragments.from_c_fragments(fragments.mma(a, fragments.b_fragments(B))) - A @ B).max() > 1e-2


# --------------------------------------------------------------------------------------------------
# "Your turn", both ways
# --------------------------------------------------------------------------------------------------
def _stub(exercise):
    """The notebook's stub for `exercise`: its your-turn cell run in a namespace with the notebook's
    setup imports (the cell that defines the function the check cell passes)."""
    jupytext = pytest.importorskip("jupytext", reason="pip install -e '.[dev]'")
    path = ROOT / "notebooks" / f"{checks.EXERCISES[exercise].notebook}.py"
    cells = jupytext.read(path).cells
    for i, cell in enumerate(cells):
        if "your-turn" not in cell.metadata.get("tags", []):
            continue
        name = re.search(r"^def (\w+)\(", cell.source, re.M).group(1)
        if any(f'checks.check("{exercise}", {name}' in c.source for c in cells[i + 1:]):
            namespace = {}
            exec("import math\nimport numpy as np\nimport workbench\nfrom numba import cuda, float32\n"
                 "from workbench.course import checks\n" + cell.source, namespace)
            return namespace[name], namespace
    raise AssertionError(f"no your-turn cell of {exercise} in {path.name}")


def _options(exercise, namespace):
    return {"tile": namespace["T"]} if exercise == "tiled-scores" else {}


@pytest.mark.parametrize("exercise", sorted(checks.EXERCISES))
def test_the_notebooks_stub_fails_its_check(exercise):
    fn, namespace = _stub(exercise)
    result = checks.check(exercise, fn, **_options(exercise, namespace))
    assert not result and repr(result).startswith(f"NOT YET — {exercise}"), repr(result)
    assert "FAIL" in repr(result) and "seed=" in repr(result)


@pytest.mark.parametrize("exercise", sorted(checks.EXERCISES))
def test_the_reference_solution_passes(exercise):
    fn = course_solutions.SOLUTIONS[exercise]
    result = checks.check(exercise, fn, **({"tile": course_solutions.T} if exercise == "tiled-scores" else {}))
    assert result, repr(result)
    assert repr(result).startswith(f"PASSED — {exercise}")


def test_every_exercise_has_a_solution_and_a_spec():
    assert set(course_solutions.SOLUTIONS) == set(checks.EXERCISES)
    for name in checks.EXERCISES:
        assert checks.spec(name).startswith("def spec_")
    assert len({e.notebook for e in checks.EXERCISES.values()}) == 11  # one per notebook, 00-10


def test_a_check_replays_its_seed():
    wrong = lambda *args: (0, 0)  # noqa: E731
    a = repr(checks.check("kv-tiles", wrong, seed=5))
    assert a == repr(checks.check("kv-tiles", wrong, seed=5)) and "seed=5" in a


def test_unknown_exercise_and_non_function():
    with pytest.raises(ValueError, match="unknown exercise"):
        checks.check("no-such", lambda: 0)
    with pytest.raises(TypeError, match="the function you wrote"):
        checks.check("scores", None)


# Wrong solutions, each a classic mistake: the check must fail and its report must point at it.
def _online_no_rescale(m, l, acc, s, v_j):
    import math

    m_new = m
    for c in range(s.shape[0]):
        m_new = max(m_new, s[c])
    if m_new == -math.inf:
        return m, l
    for c in range(s.shape[0]):  # forgets alpha: the old sum and O stay under the old max
        p = math.exp(s[c] - m_new)
        l += p
        for d in range(acc.shape[0]):
            acc[d] += p * v_j[c, d]
    return m_new, l


def _online_no_guard(m, l, acc, s, v_j):
    import math

    m_new = m
    for c in range(s.shape[0]):
        m_new = max(m_new, s[c])
    alpha = math.exp(m - m_new)  # NaN when the row has seen no key yet (-inf - -inf)
    l = alpha * l
    for d in range(acc.shape[0]):
        acc[d] *= alpha
    for c in range(s.shape[0]):
        p = math.exp(s[c] - m_new)
        l += p
        for d in range(acc.shape[0]):
            acc[d] += p * v_j[c, d]
    return m_new, l


def _scores_no_bounds(q, k, s, scale):
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    acc = float32(0)
    for d in range(q.shape[1]):
        acc += q[i, d] * k[j, d]
    s[i, j] = acc * scale


def _kv_tiles_floor(i0, i_last, Bc, shift, left, right, n_kv):
    key_lo = max(i0 + shift - left, 0)
    key_hi = min(i_last + shift + right + 1, n_kv)
    return key_lo // Bc, key_hi // Bc  # floors the end: misses the last, partial tile


def _bf16_truncate(u):
    return u >> 16


def _p_fragment_swapped(s):
    return np.array([[s[0, 0], s[0, 1]], [s[1, 0], s[1, 1]], [s[0, 2], s[0, 3]], [s[1, 2], s[1, 3]]])


@pytest.mark.parametrize("exercise, fn, says", [
    ("online-update", _online_no_rescale, "O: "),
    ("online-update", _online_no_guard, "FAIL window (2, 0)"),
    ("scores", _scores_no_bounds, "threads past the edge"),
    ("kv-tiles", _kv_tiles_floor, "need tiles"),
    ("bf16-round", _bf16_truncate, "expected 0x3f82"),
    ("p-fragment", _p_fragment_swapped, "the tensor core reads it from lane"),
], ids=["no-rescale", "no-guard", "no-bounds", "floor-end", "truncate", "swapped-registers"])
def test_a_classic_mistake_fails_with_a_report_that_points_at_it(exercise, fn, says):
    result = checks.check(exercise, fn)
    assert not result and says in repr(result), repr(result)


# --------------------------------------------------------------------------------------------------
# On a GPU the checks compile the learner's function for the device: the solutions and the stubs
# must compile for real, not only run in the simulator (which accepts code a GPU refuses, e.g. a
# shared array shaped by an expression). Checked for sm_90 with no GPU, in a process with the
# simulator off: every launch of every check is replaced by a compile of the kernel it would launch.
# --------------------------------------------------------------------------------------------------
COMPILE_ALL = r'''
import os, re, sys
os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
tests, root = sys.argv[1], sys.argv[2]
sys.path.insert(0, tests)
import numpy as np
import workbench  # noqa: F401
from numba import cuda, typeof
from numba.cuda.dispatcher import CUDADispatcher
from workbench.course import checks
import course_solutions
import importlib.util
spec = importlib.util.spec_from_file_location("run_notebooks", os.path.join(root, "scripts", "run_notebooks.py"))
runner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner)

done, compiled = set(), []

class Compile:
    def __init__(self, disp):
        self.disp = disp

    def __call__(self, *args):
        sig = tuple(typeof(a) for a in args)
        if (self.disp.py_func, sig) not in done:
            cuda.compile_ptx(self.disp.py_func, sig, cc=(9, 0))
            done.add((self.disp.py_func, sig))
            compiled.append(self.disp.py_func.__name__)

CUDADispatcher.__getitem__ = lambda self, config: Compile(self)
cuda.to_device = np.asarray
cuda.synchronize = lambda: None
failures = []

def launch(case, what, fn, *args):
    fn(*args)  # compiles; an error here is the test's failure
    return False

checks._launch = launch

def stub(exercise):
    path = os.path.join(root, "notebooks", checks.EXERCISES[exercise].notebook + ".py")
    cells = runner.cells_of(path)
    for i, cell in enumerate(cells):
        if "your-turn" in cell["tags"]:
            name = re.search(r"^def (\w+)\(", cell["source"], re.M).group(1)
            if any(f'checks.check("{exercise}", {name}' in c["source"] for c in cells[i + 1:]):
                ns = {}
                exec("import math\nimport numpy as np\nfrom numba import cuda, float32\n" + cell["source"], ns)
                return ns[name], ns

for name, ex in checks.EXERCISES.items():
    if ex.kind == "numpy":
        continue
    fn, ns = stub(name)
    for who, f, opts in (("solution", course_solutions.SOLUTIONS[name], {"tile": course_solutions.T}),
                         ("stub", fn, {"tile": ns.get("T")})):
        try:
            checks.check(name, f, seed=0, **(opts if name == "tiled-scores" else {}))
        except Exception as exc:
            failures.append(f"{name} ({who}): {type(exc).__name__}: {str(exc)[:400]}")
print("COMPILED", len(compiled))
print("FAILURES", failures)
sys.exit(1 if failures else 0)
'''


def test_every_check_compiles_for_sm90_with_its_solution_and_its_stub(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "compile_checks.py"
    script.write_text(COMPILE_ALL)
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "tests"), str(ROOT)], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kernels = int(re.search(r"COMPILED (\d+)", proc.stdout).group(1))
    assert kernels >= 2 * len([e for e in checks.EXERCISES.values() if e.kind != "numpy"])
