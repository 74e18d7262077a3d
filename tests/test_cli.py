"""The command-line tools, run as a user runs them."""

import json
import os
import subprocess
import sys

import workbench  # noqa: F401
from workbench.bench import compare
from workbench.harness import verify


def test_compare_runs_and_writes_json(tmp_path):
    out = tmp_path / "c.json"
    proc = subprocess.run([sys.executable, "-m", "workbench.bench.compare", "--kernels", "naive", "--seq", "9",
                           "--heads", "2", "--kv-heads", "1", "--dim", "8", "--causal", "--json", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "naive" in proc.stdout and "pass" in proc.stdout and "no timing" in proc.stdout
    data = json.loads(out.read_text())
    assert data["provenance"]["device"].startswith("Numba CUDA simulator")
    (point,) = data["points"]
    assert point["status"] == "pass" and point["problem"] == "B=1 H=2/1 N=9 D=8 float32 causal"


def test_compare_exit_code_is_nonzero_when_a_rung_fails(monkeypatch, capsys):
    real = verify.check

    def failing(*args, **kwargs):
        report = real(*args, **kwargs)
        report.failures.append("injected failure")
        return report

    monkeypatch.setattr(verify, "check", failing)
    assert compare.main(["--kernels", "naive", "--seq", "5", "--dim", "8", "--heads", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_compare_rejects_unknown_kernel():
    proc = subprocess.run([sys.executable, "-m", "workbench.bench.compare", "--kernels", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown kernel 'nope'" in proc.stderr


def test_suite_output_puts_the_pages_claims_beside_measurements(monkeypatch, capsys):
    path = os.path.join(os.path.dirname(__file__), "..", "figures", "h100", "seed-versions.json")
    if not os.path.exists(path):
        import pytest

        pytest.skip("no H100 data")
    with open(path) as f:
        points = json.load(f)["points"]
    monkeypatch.setattr(compare.device, "provenance", lambda: {"device": "NVIDIA H100 80GB HBM3"})
    compare.print_claims(points, "seed-versions")
    out = capsys.readouterr().out
    flash = next(p for p in points if p["kernel"] == "sdpa-flash" and p["dtype"] == "float16")
    ratio = flash["timing"]["median_ms"] / 12.5  # the page's FA2 forward time at 4096
    assert "12.5 ms" in out and f"{ratio:.2f}×" in out


def test_an_out_of_memory_is_recorded_and_the_sweep_goes_on(monkeypatch):
    from workbench import Problem
    from workbench.kernels import get

    real = verify.check

    def oom_at_33(kernel, problem, **kwargs):
        if problem.seq_q == 33:
            raise RuntimeError("[2] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")
        return real(kernel, problem, **kwargs)

    monkeypatch.setattr(verify, "check", oom_at_33)
    problems = [Problem(1, 1, 1, n, n, 8) for n in (9, 33, 5)]
    points = compare.run_problems(problems, [get("naive")], [], seed=0, repeat=3, timed=True,
                                  all_heads=False)
    assert [p["status"] for p in points] == ["pass", "OOM", "pass"]
    assert "OUT_OF_MEMORY" in points[1]["reason"] and points[1]["memory"]["model_MiB"] > 0


def test_a_point_two_suites_share_is_measured_once(monkeypatch):
    from workbench import Problem
    from workbench.kernels import get

    calls = []
    real = verify.check

    def counting(kernel, problem, **kwargs):
        calls.append(problem.seq_q)
        return real(kernel, problem, **kwargs)

    monkeypatch.setattr(verify, "check", counting)
    cache = {}
    a, b = Problem(1, 1, 1, 9, 9, 8), Problem(1, 1, 1, 5, 5, 8)
    first = compare.run_problems([a], [get("naive")], [], 0, 5, True, False, cache=cache, label="one")
    second = compare.run_problems([a, b], [get("naive")], [], 0, 3, True, False, cache=cache, label="two")
    assert calls == [9, 5]  # a was reused, b measured
    assert second[0]["measured_in"] == "one" and second[1]["measured_in"] == "two"
    assert second[0]["verify"] == first[0]["verify"] and second[1]["wall_s"] >= 0
    compare.run_problems([a], [get("naive")], [], 0, 20, True, False, cache=cache, label="three")
    assert calls == [9, 5, 9]  # more timed runs asked for than were measured: measured again
