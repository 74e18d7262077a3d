"""workbench.course.helpers: the notebooks' helpers (source display, committed data, tables, recording) and
workbench.course.diagrams' drawings (each returns a figure with something drawn on it)."""

import json

import matplotlib
import pytest

matplotlib.use("Agg")

from workbench import Problem
from workbench.course import helpers as course
from workbench.course import diagrams  # noqa: E402
from workbench.kernels import flash1, naive, online  # noqa: E402


def test_show_prints_the_package_source_with_its_place(capsys):
    course.show(online.build)  # a functools.cache factory
    out = capsys.readouterr().out
    assert out.startswith("# workbench/kernels/online.py, lines ")
    assert "def build(Br, Bc, D):" in out and "cuda.syncthreads()" in out
    course.show(naive.pv, numbers=False)  # a kernel: the function it was made from
    assert "def pv(p, v, o, group):" in capsys.readouterr().out


def test_diff_of_two_kernels_and_of_texts():
    d = course.diff(course.kernel_function(online.build(8, 4, 16)), course.kernel_function(flash1.build(8, 4, 16)))
    assert d.startswith("--- workbench/kernels/online.py") and "+    def flash1(" in d
    assert course.diff("a\nb\n", "a\nc\n") == "--- a\n+++ b\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
    assert course.diff("same\n", "same\n") == ""


def test_skeleton_and_side_by_side():
    outline = course.skeleton(flash1.build, [r"^\s*for (j0|i0)\b"])
    assert [line.split()[1] for line in outline.splitlines()] == ["j0", "i0"]  # KV blocks outside
    text = course.side_by_side("x\ny", "z", names=("L", "R"), width=4)
    assert text.splitlines() == ["L    | R", "-----+-----", "x    | z", "y    | "]


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
], ids=["naive", "tiled", "orders", "schedule", "mask", "hierarchy", "bytes", "traffic", "running", "gqa"])
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
