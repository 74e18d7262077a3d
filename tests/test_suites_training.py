"""`python -m workbench.bench.compare --suite seed-training|seed-inference|seed-models`: in the simulator a
tiny run that verifies our rungs against float64, records the torch peers n/a and says that no time
was measured; on H100 data, the page's claims beside the measurements."""

import json
import os
import subprocess
import sys

import pytest

import workbench  # noqa: F401
from workbench.bench import compare
from workbench.bench import benchmark_page
from workbench.api import inference as dec
from workbench.bench import suites_training as st

H100 = os.path.join(os.path.dirname(__file__), "..", "figures", "h100")


def test_compare_seed_inference_in_the_simulator(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workbench.bench.compare", "--suite", "seed-inference", "--seq", "21",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no time measured" in proc.stdout
    data = json.loads((tmp_path / "seed-inference.json").read_text())
    assert list(data) == ["provenance", "suite", "complete", "config", "points", "claims"]
    assert data["suite"] == "seed-inference" and data["complete"]
    assert data["provenance"]["device"].startswith("Numba CUDA simulator")
    assert {c["seq"] for c in data["claims"]} == {512, 2048, 4096, 8192, 16384}
    (ours,) = [p for p in data["points"] if p["kernel"] == "decode"]
    assert ours["context"] == 21 and ours["status"] == "pass" and ours["verify"]["passed"]
    assert ours["splits"] > 1  # the split partials are merged by LSE, not a single pass
    peers = [p for p in data["points"] if p["kernel"] != "decode"]
    assert {p["kernel"] for p in peers} == {"sdpa-flash", "torch-gather-sdpa", "torch-standard"}
    assert all(p["status"] == "n/a" and "simulator" in p["reason"] for p in peers)
    assert not any("timing" in p for p in data["points"])
    assert not (tmp_path / "seed-inference.png").exists()  # nothing timed, nothing drawn


def test_compare_seed_training_verifies_the_backward(tmp_path, capsys):
    assert compare.main(["--suite", "seed-training", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no time measured" in out and "dq" in out
    data = json.loads((tmp_path / "seed-training.json").read_text())
    (ours,) = [p for p in data["points"] if p["kernel"] == "flash2"]
    assert ours["pass"] == "forward+backward" and ours["status"] == "pass"
    assert set(ours["verify"]["errors"]) == {"dq", "dk", "dv"} and ours["verify"]["deterministic"]
    assert [p["status"] for p in data["points"] if p["kernel"] != "flash2"] == ["n/a", "n/a"]


def test_a_failed_check_is_exit_status_1(monkeypatch, tmp_path, capsys):
    real = dec.check_decode

    def failing(*args, **kwargs):
        report = real(*args, **kwargs)
        report.failures.append("injected failure")
        return report

    monkeypatch.setattr(dec, "check_decode", failing)
    assert compare.main(["--suite", "seed-inference", "--seq", "7", "--json", str(tmp_path / "x.json")]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert json.loads((tmp_path / "x.json").read_text())["points"][0]["status"] == "FAIL"


def test_models_with_head_dims_96_and_256_run(monkeypatch, tmp_path):
    """GPT-NeoX (D = 96) and GPT-J (D = 256): flash2 and flash2_bwd take every multiple of 8 up to
    256, so these are verified now, not "n/a"."""
    tiny = [(m, p) for m, p in st.TINY["seed-models"] if p.head_dim not in (16, 32, 64, 128)]
    assert {m for m, _ in tiny} == {"GPT-J (6B)", "GPT-NeoX (20B)"}
    monkeypatch.setitem(st.TINY, "seed-models", tiny)
    assert st.run_suite("seed-models", str(tmp_path)) == 0
    points = json.loads((tmp_path / "seed-models.json").read_text())["points"]
    ours = [p for p in points if p["kernel"] == "flash2"]
    assert len(ours) == 4 and all(p["status"] == "pass" for p in ours), ours


def test_bad_flags_are_refused(capsys):
    assert compare.main(["--suite", "seed-models", "--kernels", "naive"]) == 2
    assert "drop --kernels" in capsys.readouterr().err
    with pytest.raises(ValueError, match="keeps nothing"):
        st.run_suite("seed-inference", seqs=[4096])  # the simulator's lengths are 7 and 21


def test_claims_beside_the_h100_measurements(capsys):
    path = os.path.join(H100, "seed-inference.json")
    if not os.path.exists(path):
        pytest.skip("no H100 data")
    with open(path) as f:
        points = json.load(f)["points"]
    rows = st.claims_beside(points, "seed-inference")
    ours = next(p for p in points if p["kernel"] == "decode" and p["context"] == 2048)
    (row,) = [r for r in rows if r[1] == "decode" and r[0].seq == 2048]
    claim = next(c for c in benchmark_page.claims_for("seed-inference") if c.seq == 2048 and c.column.startswith("Flash"))
    assert row[2] == ours["tokens_per_s_32_layers_attention_only"] and row[4] == row[2] / claim.value
    st.print_claims(points, "seed-inference")
    assert f"{row[4]:.2f}×" in capsys.readouterr().out


def test_figures_from_the_h100_measurements(tmp_path):
    paths = [os.path.join(H100, f"{n}.json") for n in st.NAMES]
    if not all(os.path.exists(p) for p in paths):
        pytest.skip("no H100 data")
    points = [json.load(open(p))["points"] for p in paths]
    written = st.figures(st.Session(str(tmp_path)), *points)
    assert sorted(os.path.basename(p) for p in written) == [f"{n}.png" for n in sorted(st.NAMES)]
    assert all(os.path.getsize(p) > 10_000 for p in written)
