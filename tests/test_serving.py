"""The serving capacity model (workbench/bench/serving.py): its arithmetic by hand, the CLI's JSON
(pure arithmetic), and the figure with and without a measurement."""

import json
import math

from workbench.bench import serving


def test_bytes_per_token_and_contiguous_capacity():
    m = serving.MODELS["llama2-7b"]
    assert m.bytes_per_token() == 2 * 32 * 32 * 128 * 2 == 512 * 1024
    assert m.bytes_per_token("float8_e4m3fn") == 256 * 1024
    assert serving.MODELS["llama3-8b"].bytes_per_token() == 128 * 1024  # GQA: 8 kv heads
    budget = 100 * serving.GiB
    assert serving.contiguous_capacity(budget, m, 4096) == 50  # 2 GiB a sequence
    assert serving.contiguous_capacity(budget - 1, m, 4096) == 49


def test_paged_capacity_by_hand():
    """Admission in draw order, blocks rounded up, table rows counted; the expectation beside it."""
    m = serving.Model("tiny", 2, 2, 8, 0.0)
    bt = m.bytes_per_token()  # 2·2·2·8·2 = 128 bytes
    dist = serving.Lengths("uniform", 1, 100, seed=3)
    budget, bs, n_max = 2_000_000, 16, 100
    got = serving.paged_capacity(budget, m, n_max, bs, dist)
    lens = dist.draw(10_000, n_max)
    used, count = 0, 0
    for n in lens:
        cost = math.ceil(n / bs) * bs * bt + 4 * (math.ceil(n_max / bs) + 1)
        if used + cost > budget:
            break
        used, count = used + cost, count + 1
    assert got["sequences"] == count and got["bytes_used"] == used
    assert abs(got["expected"] - count) / count < 0.05
    assert 0 < got["waste"] < 0.2
    # every sequence at N_max, a multiple of the block: paging saves nothing (the table costs a little)
    fixed = serving.paged_capacity(budget, m, 96, 16, serving.Lengths("fixed", 96))
    assert fixed["sequences"] == serving.contiguous_capacity(budget, m, 96)
    assert fixed["waste"] == 0


def test_capacity_only_cli_writes_pure_arithmetic(tmp_path, capsys):
    out = tmp_path / "capacity.json"
    assert serving.main(["--capacity-only", "--budget-gib", "64", "--block-size", "16", "256",
                         "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "paged/contig" in text and "2-3× more users" in text
    data = json.loads(out.read_text())
    assert data["kind"].startswith("arithmetic") and "points" not in data and "provenance" not in data
    assert data["claim"]["low"] == 2 and data["claim"]["high"] == 3
    assert data["inputs"]["budget_bytes"] == 64 * serving.GiB and data["inputs"]["budget_rule"] == "given"
    rows = data["rows"]
    assert [r["block_size"] for r in rows] == [16, 256] * 3
    uniform16 = rows[0]
    assert uniform16["contiguous"] == 32 and 1.9 < uniform16["ratio"] < 2.1  # mean length ≈ N_max / 2
    # every sequence at N_max: nothing to gain (64 GiB is exactly 32 contiguous sequences, so the
    # paged tables' few KiB cost one)
    assert all(r["paged"] in (31, 32) for r in rows if r["lengths"].startswith("fixed"))
    assert all(1.9 < r["ratio_fp8"] / r["ratio"] < 2.15 for r in rows)  # one byte an element


def test_concurrency_grid():
    assert serving.concurrencies(56, 112) == [1, 2, 4, 8, 16, 32, 56, 64, 112]
    assert serving.concurrencies(1, 1) == [1]


def test_plot_with_a_measurement(tmp_path):
    """Both panels: the ratios beside the page's band, tokens/s against concurrency."""
    cap = serving.capacity(32 * serving.GiB, "llama3-8b", 2048, (16,))
    c_contig, c_paged = cap["rows"][0]["contiguous"], cap["rows"][0]["paged"]
    points = []
    for c in serving.concurrencies(c_contig, c_paged):
        p = {"C": c, "paged_call": {"median_ms": 0.05 + 0.001 * c}, "paged_tokens_per_s": c / (32 * 0.05e-3),
             "paged_kernel_tokens_per_s": c / (32 * 0.04e-3)}
        if c <= c_contig:
            p["sdpa_tokens_per_s"] = c / (32 * 0.03e-3)
        points.append(p)
    data = {"capacity": cap, "provenance": {"device": "test", "date": "2026-12-05"}, "points": points,
            "setup": {"contiguous_sequences": c_contig, "paged_sequences": c_paged,
                      "lengths_text": "uniform(1, 2048)", "block_size": 16}}
    path = serving.plot(data, str(tmp_path / "serving.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
