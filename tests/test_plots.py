"""The figures from compare's JSON: written, non-empty PNGs, for GPU JSON (timing, peaks, OOM, n/a
peers) and for simulator JSON (no timing: time figures skipped, memory from the model)."""

import json
import struct

from workbench.bench import plots
from workbench.bench import benchmark_page
from workbench.problem import Problem

PNG = b"\x89PNG\r\n\x1a\n"
RUNG_SPEED = {"naive": 4.0, "tiled": 8.0, "online": 15.0, "flash1": 12.0, "flash2": 25.0}  # TFLOP/s


def _point(kernel, problem, *, timed, status="pass", peak=None, model=None, ms=None, reason=None):
    p = {"kernel": kernel, "problem": problem.describe(), "batch": problem.batch, "heads": problem.heads,
         "kv_heads": problem.kv_heads, "seq_q": problem.seq_q, "seq_kv": problem.seq_kv,
         "head_dim": problem.head_dim, "dtype": problem.dtype, "causal": problem.causal,
         "window": problem.window, "flops": problem.flops(), "min_bytes": problem.min_bytes(),
         "status": status}
    if reason:
        p["reason"] = reason
    if status in ("n/a",):
        return p
    p["memory"] = {"model_MiB": model}
    if timed and status != "OOM":
        p["timing"] = {"median_ms": ms, "p20_ms": ms * 0.97, "p80_ms": ms * 1.04, "repeats": 20}
        p["tflops"] = problem.flops() / (ms * 1e-3) / 1e12
        p["gbps"] = problem.min_bytes() / (ms * 1e-3) / 1e9
        p["memory"].update(peak_MiB=peak, driver_MiB=peak + 2 if peak is not None else None)
    return p


def fake(timed=True, seqs=(512, 1024, 2048, 4096, 8192, 16384), batch=8, heads=32, dim=64, suite="ladder",
         dtypes=("float32", "float16"), peers=True):
    """A compare JSON shaped like the real one (GPU when timed, the simulator otherwise)."""
    points = []
    for dtype in dtypes:
        for n in seqs:
            pr = Problem(batch, heads, heads, n, n, dim, dtype)
            io = pr.io_bytes() / 2**20
            s = batch * heads * n * n * 4 / 2**20
            for k, speed in RUNG_SPEED.items():
                model = io + (s if k in ("naive", "tiled") else 0)
                oom = timed and model > 60 * 1024
                ms = pr.flops() / (speed * (1.6 if dtype == "float16" else 1) * 1e12) * 1e3
                points.append(_point(k, pr, timed=timed, status="OOM" if oom else "pass", model=model,
                                     peak=model * 1.01, ms=ms, reason="CUDA_ERROR_OUT_OF_MEMORY" if oom else None))
            if peers:
                if not timed:
                    points.append(_point("sdpa-flash", pr, timed=False, status="n/a",
                                         reason="needs a CUDA GPU (simulator mode)"))
                elif dtype == "float32":
                    points.append(_point("sdpa-flash", pr, timed=True, status="n/a",
                                         reason="flash needs float16/bfloat16"))
                else:
                    points.append(_point("sdpa-flash", pr, timed=True, model=None, peak=io,
                                         ms=pr.flops() / 300e12 * 1e3))
                    std_oom = n >= 16384
                    points.append(_point("torch-standard", pr, timed=True, status="OOM" if std_oom else "pass",
                                         model=None, peak=io + 2 * s / 2, ms=pr.flops() / 40e12 * 1e3))
    prov = {"device": "NVIDIA H100 80GB HBM3" if timed else "Numba CUDA simulator (CPU)",
            "date": "2026-11-25T07:04:09+00:00", "numba": "0.68.0", "numba_cuda": "0.30.4",
            "command": "python -m workbench.bench.compare --suite ladder", "mode": "gpu" if timed else "simulator"}
    return {"provenance": prov, "suite": suite, "points": points}


def _png(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG
    w, h = struct.unpack(">II", head[16:24])
    return w, h


def test_every_figure_from_gpu_json_with_oom(tmp_path):
    data = fake(seqs=(512, 8192))  # naive and tiled in float32 run out of memory at 8192
    assert {p["kernel"] for p in data["points"] if p["status"] == "OOM"} >= {"naive", "tiled"}
    claims = plots.pick_claims(benchmark_page.claims_for("ladder"), data["provenance"]["device"])
    open_before = set(plots.plt.get_fignums())  # figures other tests in this process left open
    paths = [plots.time_vs_seq(data, tmp_path / "t.png", claims),
             plots.memory_vs_seq(data, tmp_path / "m.png", claims),
             plots.speedup_vs_seq(data, tmp_path / "s.png", baseline="naive", claims=claims),
             plots.per_token(data, tmp_path / "p.png"),
             plots.roofline(data, tmp_path / "r.png", peak_tflops=51.6, peak_gbps=2300.0)]
    for p in paths:
        assert p is not None
        w, h = _png(p)
        assert w > 600 and h > 300
    assert set(plots.plt.get_fignums()) == open_before  # every figure these calls made is closed


def test_a_kernel_that_only_ran_out_of_memory_still_gets_its_marks(tmp_path):
    data = fake(seqs=(8192,), dtypes=("float32",), peers=False)
    only_oom = {**data, "points": [p for p in data["points"] if p["status"] == "OOM"]}
    assert only_oom["points"] and _png(plots.memory_vs_seq(only_oom, tmp_path / "oom.png"))
    assert plots.time_vs_seq(only_oom, tmp_path / "t.png") is None  # nothing timed


def test_simulator_json_skips_time_and_uses_the_model(tmp_path):
    data = fake(timed=False, seqs=(16, 33), batch=1, heads=2, dim=16)
    assert not plots.has_timing(data)
    assert plots.time_vs_seq(data, tmp_path / "t.png") is None
    assert plots.speedup_vs_seq(data, tmp_path / "s.png") is None
    assert plots.roofline(data, tmp_path / "r.png", 51.6, 2300.0) is None
    assert _png(plots.memory_vs_seq(data, tmp_path / "m.png"))
    assert _png(plots.per_token(data, tmp_path / "p.png"))


def test_missing_dtypes_kernels_and_baseline(tmp_path):
    data = fake(dtypes=("float16",), seqs=(512, 1024), batch=1)
    data["points"] = [p for p in data["points"] if p["kernel"] not in ("tiled", "online")]
    assert _png(plots.time_vs_seq(data, tmp_path / "t.png"))
    assert plots.speedup_vs_seq(data, tmp_path / "s.png", baseline="tiled") is None
    assert _png(plots.speedup_vs_seq(data, tmp_path / "s2.png", baseline="torch-standard"))
    assert plots.time_vs_seq({"provenance": {}, "suite": None, "points": []}, tmp_path / "e.png") is None


def test_panels_split_by_dtype_and_shape():
    data = fake(seqs=(512,), peers=False)
    data["points"] += fake(seqs=(2048,), batch=1, dim=128, dtypes=("float16",), peers=False)["points"]
    keys = [k for k, _ in plots.panels(data["points"])]
    assert [d for d, _ in keys] == ["float32", "float16", "float16"]
    assert len({s for _, s in keys}) == 2


def test_main_writes_what_applies_next_to_the_json(tmp_path, capsys, monkeypatch):
    sim = tmp_path / "sim" / "seed-scaling.json"
    sim.parent.mkdir()
    sim.write_text(json.dumps(fake(timed=False, seqs=(16, 33), batch=1, heads=2, dim=16, suite="seed-scaling")))
    assert plots.main([str(sim)]) == 0
    assert "no timing" in capsys.readouterr().out
    assert sorted(p.name for p in sim.parent.glob("*.png")) == ["seed-scaling-memory.png",
                                                               "seed-scaling-per_token.png"]
    # GPU JSON: which figures, with what (drawing stubbed: the figures themselves are tested above)
    calls = {}

    def stub(name):
        def draw(data, path, *args, **kwargs):
            calls[name] = (args, kwargs)
            open(path, "wb").write(PNG)
            return str(path)
        return draw

    for name in ("time_vs_seq", "memory_vs_seq", "speedup_vs_seq", "per_token", "roofline", "bars"):
        monkeypatch.setattr(plots, name, stub(name))
    gpu = tmp_path / "h100" / "ladder.json"
    gpu.parent.mkdir()
    gpu.write_text(json.dumps(fake(seqs=(512, 1024))))
    assert plots.main([str(gpu)]) == 0
    assert sorted(p.name for p in gpu.parent.glob("*.png")) == [
        f"ladder-{k}.png" for k in ("memory", "per_token", "roofline", "speedup", "time")]
    assert calls["roofline"][0] == ({"FP32 (cuBLAS SGEMM, measured)": 51.6}, 2300.0)  # H100 defaults
    time_claims = calls["time_vs_seq"][0][0]
    assert time_claims and {c.gpu for c in time_claims if c.metric == "time"} == {"H100 80GB"}
    assert plots.main([str(gpu), "--peak-tflops", "60", "--peak-gbps", "3000", "--baseline", "flash2"]) == 0
    assert calls["roofline"][0][:2] == (60.0, 3000.0) and calls["speedup_vs_seq"][0][0] == "flash2"


def test_single_seq_suite_gets_bars_with_page_claims(tmp_path):
    data = fake(seqs=(4096,), suite="seed-versions", dtypes=("float16",))
    path = tmp_path / "v.json"
    path.write_text(json.dumps(data))
    written = plots.write_all(path, log=lambda *_: None)
    names = sorted(p.rsplit("/", 1)[-1] for p in written)
    assert names == ["v-bars.png", "v-roofline.png"]


def test_claims_are_matched_to_panels():
    data = fake(seqs=(512, 1024), peers=False)
    claims = benchmark_page.claims_for("seed-speed")
    (key32, _), (key16, _) = plots.panels(data["points"])
    found = plots._claims_in(claims, key16, {"time"})
    assert any("H100" in label for label, _ in found)
    assert not any("A10G" in label for label, _ in found)  # batch 4: another shape
    h100 = plots.pick_claims(claims, "NVIDIA H100 80GB HBM3")
    assert {c.gpu for c in h100} == {"H100 80GB"}
    # seed-scaling has only A100 rows: kept, since the page has nothing for the H100
    assert plots.pick_claims(benchmark_page.claims_for("seed-scaling"), "NVIDIA H100 80GB HBM3")


def test_unknown_kernels_get_a_style():
    st = plots.style("my-new-rung")
    assert st["color"] and st["marker"] == "s"

