"""The seed page as data (cell for cell what the page says), and the checks' arithmetic: each test
recomputes a finding's key number by hand."""

import math
from pathlib import Path

import pytest

from workbench.bench import benchmark_page
from workbench.problem import Problem

PAGE = Path(__file__).resolve().parents[2] / "shared" / "seed" / "flash-attention-benchmarks.md"


def _page_tables(text):
    """Every markdown table on the page, in order: (header cells, rows of cells)."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            cells = lambda line: tuple(c.strip() for c in line.strip().strip("|").split("|"))  # noqa: E731
            header, rows = cells(lines[i]), []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            tables.append((header, tuple(rows)))
        else:
            i += 1
    return tables


@pytest.mark.skipif(not PAGE.exists(), reason="the seed page is not next to this checkout")
def test_tables_are_the_page_cell_for_cell():
    text = PAGE.read_text()
    page = _page_tables(text)
    ours = [(t.columns, t.rows) for t in benchmark_page.TABLES.values()]
    assert len(page) == len(ours) == 15
    for (cols, rows), t in zip(page, benchmark_page.TABLES.values()):
        assert (t.columns, t.rows) == (cols, rows), t.key
        for part in t.title.split(" / "):  # every heading quoted is on the page
            assert part in text, (t.key, part)
    for key, statement in benchmark_page.STATEMENTS.items():
        for part in statement.split(" ... "):
            if key != "complexity":
                assert part.strip() in text, key


def test_cell_parsing():
    assert benchmark_page.seq_value("2K") == 2048 and benchmark_page.seq_value("16K") == 16384 and benchmark_page.seq_value("512") == 512
    assert benchmark_page.seq_value("Standard") is None
    assert benchmark_page.number("1.3x") == 1.3 and benchmark_page.number("35%") == 35 and benchmark_page.number("26.3 GB (OOM)") == 26.3
    assert benchmark_page.number("OOM (>40GB)") is None and benchmark_page.number("N/A") is None and benchmark_page.number("Enabled") is None
    assert benchmark_page.mib("8 MB") == 8 and benchmark_page.mib("2.5 GB") == 2560 and benchmark_page.mib("2048 MB (2 GB)") == 2048
    assert benchmark_page.mib("0 MB (recomputed)") == 0 and benchmark_page.mib("OOM") is None
    t = benchmark_page.table("per-token-time")
    assert t.seqs() == (512, 1024, 2048, 4096, 8192, 16384)
    assert t.series("Flash Attn 2")[-1] == (16384, 1.64)
    assert benchmark_page.table("h100-speed").num(4096, "Flash Attn 2") == 12.5
    assert benchmark_page.table("llama2-7b-memory").series("Standard Attention", benchmark_page.mib)[-1] == (32768, None)


# (a) "speedup increases quadratically"
def test_speedup_grows_linearly_not_quadratically():
    rows = benchmark_page.per_token_speedups()
    for _, ratio, page in rows:
        assert abs(ratio - page) < 0.05  # the page's Speedup row is Standard / FA2
    k = benchmark_page.fit_exponent([n for n, _, _ in rows], [r for _, r, _ in rows])
    assert 0.85 < k < 0.95  # ∝ N^0.9; quadratic would be 2
    assert math.isclose(rows[-1][1] / rows[-2][1], 52.8 / 1.64 / (13.4 / 0.83), rel_tol=1e-12)
    assert rows[-1][1] / rows[-2][1] < 2.1  # ×2 per doubling, not ×4
    assert "N^0.90" in benchmark_page.check_speedup_growth()


def test_per_token_times_are_impossible_either_way():
    f = benchmark_page.attention_flops(1, 32, 16384, 64)
    assert f == 4 * 32 * 16384**2 * 64 == Problem(1, 32, None, 16384, None, 64).flops()
    assert abs(1.64e-3 * 16384 - 26.87) < 0.01  # seconds, read as per token
    assert abs(f / (1.64e-3 * 16384) / 1e12 - 0.0818) < 1e-3  # TFLOP/s
    assert abs(benchmark_page.tflops(f, 1.64) - 1341) < 1  # read as the whole call: 4.3× the A100's 312
    assert "1341 TFLOP/s" in benchmark_page.check_per_token_time_physics()


# (b) the memory table
def test_attention_matrix_column_is_32_bytes_per_pair_not_B8_H32():
    assert [b for _, b in benchmark_page.memory_table_bytes_per_pair()] == [32.0] * 4
    assert 8 * 32 * 512**2 * 2 == 128 * 2**20  # fp16 S at B=8 H=32 N=512: 128 MiB, not 8 MB
    assert 512**2 * 32 == 8 * 2**20
    shapes = benchmark_page.shapes_for_bytes_per_pair(32)
    assert (8, 1, "float32") in shapes and (1, 16, "float16") in shapes and (8, 32, "float16") not in shapes
    for n, kv in benchmark_page.table("memory-standard").series("KV Cache", benchmark_page.mib):
        assert kv * 2**20 == 2 * 8 * 32 * n * 64 * 2  # the KV column is exact for B=8 H=32 fp16
    text = benchmark_page.check_memory_table()
    assert "128 MiB" in text and "16× low" in text


def test_memory_tables_add_up_internally():
    assert benchmark_page.check_memory_totals().startswith("CONSISTENT")
    assert benchmark_page.mib("2.5 GB") == 2048 + 512 and benchmark_page.mib("34 GB") == 32768 + 2048
    assert round(100 * (1 - 2048 / 34816)) == 94


# (c) the versions table
def test_versions_tflops_from_the_pages_own_times():
    f = benchmark_page.attention_flops(8, 32, 4096, 64)
    assert f == 2**40 == Problem(8, 32, None, 4096, None, 64, "float16").flops()  # 1.0995e12 FLOP
    v = benchmark_page.versions_tflops()
    assert abs(v["FA2"][0] - 87.96) < 0.01 and v["FA2"][1] == 420  # 2^40 / 12.5 ms: 88, not 420
    assert abs(v["FA1"][0] - 38.7) < 0.1 and abs(v["FA3 (FP16)"][0] - 152.7) < 0.1
    assert abs(v["FA3 (FP8)"][0] - 229.1) < 0.1
    for ours, page in v.values():
        assert 4.5 < page / ours < 5.1  # the page is ~5× high in every column
    assert "88.0" in benchmark_page.check_versions_tflops()


def test_versions_util_against_h100_peaks():
    assert abs(740 / 989 - 0.75) < 0.005  # FA3 FP16: the one column whose util matches its TFLOPS
    assert abs(420 / 989 - 0.425) < 0.001 and abs(1150 / 1979 - 0.581) < 0.001
    text = benchmark_page.check_versions_util()
    assert "implied peak 514" in text and "implied peak 1402" in text


def test_fp8_key_insight():
    assert math.isclose(1.2 / 0.75, 1.6)
    best = benchmark_page.tflops(benchmark_page.attention_flops(8, 32, 8192, 64), 18.2)
    assert abs(best - 241.7) < 0.1
    assert "242 TFLOP/s" in benchmark_page.check_fp8_key_insight()


def test_versions_memory_and_speedups():
    assert benchmark_page.qkvo_bytes(8, 32, 4096, 64, 2) == 512 * 2**20
    assert "0.504 GiB" in benchmark_page.check_versions_memory()
    assert benchmark_page.check_versions_speedups().startswith("CONSISTENT")
    assert abs(28.4 / 12.5 - 2.27) < 0.01 and abs(12.5 / 4.8 - 2.6) < 0.01


# (d) per-token memory
def test_flash_memory_per_token_vs_qkvo():
    assert benchmark_page.qkvo_bytes(1, 32, 1, 64, 2) == 16384  # 0.0156 MiB per token in fp16
    assert abs(0.06 / (16384 / 2**20) - 3.84) < 0.01
    assert benchmark_page.kv_bytes(8, 32, 512, 64, 2) / (8 * 512) == 8192  # what the memory table implies
    assert abs(8.13 * 16384 / 1024 - 130.1) < 0.1  # GiB for Standard at 16K: over 80 GB
    assert "3.8×" in benchmark_page.check_per_token_memory()


# (e) the speed tables
def test_speed_tables_speedup_columns():
    h = benchmark_page.table("h100-speed")
    for n in h.seqs():
        assert abs(h.num(n, "Standard") / h.num(n, "Flash Attn 3 (FP8)") - h.num(n, "Best Speedup")) < 0.051
    text = benchmark_page.check_speed_tables()
    assert text.count("(consistent)") == 3 and "INCONSISTENT" not in text
    assert abs(8 * 8 * 32 * 8192**2 / 2039e9 * 1e3 - 67.4) < 0.1  # Standard's traffic floor, A100 (ms)


def test_model_and_training_physics():
    p = benchmark_page.LLAMA2_7B["params"]
    assert abs(p * 2 / 2**30 - 12.55) < 0.01  # fp16 weights, above every FA2 cell to 16K
    assert 2 * 32 * 4096 * 32768 * 2 == 16 * 2**30  # the KV cache at 32K
    assert benchmark_page.training_tflops(p, 2048, 5.8) > benchmark_page.PEAK_TFLOPS[("A100", "float16")]  # 480 > 312
    assert abs(benchmark_page.training_tflops(p, 2048, 3.1) - 257) < 1
    assert ">100% (impossible)" in benchmark_page.check_model_tables()  # GPT-NeoX 2.75× > attention's own 2.7×
    assert "2K, but each" in benchmark_page.check_inference()
    assert benchmark_page.check_llama_memory().startswith("IMPOSSIBLE")
    assert "100 GiB" in benchmark_page.check_training_memory()


def test_findings_cover_every_check():
    out = benchmark_page.findings()
    assert len(out) == len(benchmark_page.CHECKS) >= 15
    verdicts = ("CONTRADICTION", "IMPOSSIBLE", "INCONSISTENT", "IMPLAUSIBLE", "CONSISTENT", "MOSTLY", "PARTLY")
    assert all(isinstance(s, str) and s.startswith(verdicts) for s in out)


def test_claims_for_suites():
    speed = benchmark_page.claims_for("seed-speed")
    row = speed[0].row()
    assert len(row) == 4 and isinstance(row[0], int) and row[3] == "ms"
    h100 = benchmark_page.claims_for("seed-speed", gpu="H100")
    assert {c.gpu for c in h100} == {"H100 80GB"}
    fa2 = [c for c in h100 if c.column == "Flash Attn 2"]
    assert [(c.seq, c.value) for c in fa2] == [(512, 0.6), (1024, 1.0), (2048, 3.4), (4096, 12.5), (8192, 47.8)]
    assert fa2[0].kernels == ("flash2", "sdpa-flash") and fa2[0].batch == 8 and fa2[0].dtype is None
    mem = benchmark_page.claims_for("seed-memory")
    llama = [c for c in mem if c.table == "llama2-7b-memory"]
    assert llama[0].row() == (2048, "Standard Attention (Llama 2 7B model memory)", 3.2 * 1024, "MiB")
    assert any(c.value is None and c.note == "OOM" for c in llama) and llama[0].head_dim == 128
    scaling = benchmark_page.claims_for("seed-scaling")
    assert {c.unit for c in scaling} == {"ms/token", "MiB/token", "x"}
    versions = benchmark_page.claims_for("seed-versions")
    assert len(versions) == 16 and {c.seq for c in versions} == {4096}
    assert len(benchmark_page.claims_for("seed")) == len(speed) + len(mem) + len(scaling) + len(versions)
    ladder = benchmark_page.claims_for("ladder")
    assert {c.metric for c in ladder} == {"time", "speedup", "memory"}
    assert all(c.batch == 8 for c in ladder if c.metric == "memory")
    assert benchmark_page.claims_for(None) == [] and benchmark_page.claims_for("verify") == []
    with pytest.raises(ValueError):
        benchmark_page.claims_for("nope")


def test_beside_gives_measured_and_ratio():
    claim = next(c for c in benchmark_page.claims_for("seed-speed", gpu="H100") if c.column == "Flash Attn 2"
                 and c.seq == 4096)
    point = {"kernel": "sdpa-flash", "seq_q": 4096, "batch": 8, "heads": 32, "head_dim": 64,
             "dtype": "float16", "timing": {"median_ms": 3.7}}
    other = {**point, "batch": 1}
    ((kernel, dtype, measured, ratio),) = benchmark_page.beside(claim, [point, other])
    assert kernel == "sdpa-flash" and measured == 3.7 and abs(ratio - 3.7 / 12.5) < 1e-12
