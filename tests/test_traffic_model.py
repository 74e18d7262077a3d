"""workbench.bench.traffic_model (the rungs' device-memory traffic as formulas) and the tile rule the
course's pictures draw (diagrams.flash2_tile_kinds): against the simulator's load-by-load count,
against the mask, and against the re-read factors the rungs' docstrings state."""

import math

import numpy as np
import pytest

from workbench import Problem
from workbench.course import diagrams
from workbench.bench import traffic_model
from workbench.kernels import flash2
from workbench.reference import visible_mask

SEED = Problem(8, 32, 32, 4096, 4096, 64, "float32")


def _size(p, array):
    return {"Q": p.batch * p.heads * p.seq_q * p.head_dim * p.itemsize,
            "K": p.batch * p.heads * p.seq_kv * p.head_dim * p.itemsize}[array]  # per query head


def test_phases_add_up_to_the_forward():
    qk, sm, pv, fused = traffic_model.phases(SEED)
    assert qk.flops + pv.flops == SEED.flops() == fused.flops
    assert fused.min_bytes == SEED.min_bytes()
    assert sm.intensity < 1 < qk.intensity < fused.intensity  # the softmax is pure traffic
    assert qk.min_bytes > 4 * SEED.batch * SEED.heads * SEED.seq_q * SEED.seq_kv  # S dominates


def test_re_read_factors_of_each_rung():
    p = SEED
    naive, tiled = traffic_model.requested("naive", p), traffic_model.requested("tiled", p, {"tile": 16})
    assert naive["Q"] == _size(p, "Q") * p.seq_kv  # one Q row per score
    assert tiled["Q"] == _size(p, "Q") * math.ceil(p.seq_kv / 16)  # a factor T fewer
    assert tiled["K"] == _size(p, "K") * math.ceil(p.seq_q / 16)
    online = traffic_model.requested("online", p, {"Br": 64, "Bc": 8})
    assert online["Q"] == _size(p, "Q") and online["S/P"] == 0
    assert online["K"] == _size(p, "K") * (p.seq_q // 64)  # once per query block
    flash1 = traffic_model.requested("flash1", p, {"Br": 64, "Bc": 8})
    assert flash1["K"] == _size(p, "K") and flash1["Q"] == _size(p, "Q") * (p.seq_kv // 8)
    flash2_full = traffic_model.requested("flash2", p)
    assert flash2_full["K"] == online["K"]  # Br = 64 for both at D = 64, every tile visited
    causal = traffic_model.requested("flash2", Problem(8, 32, 32, 4096, 4096, 64, causal=True))
    assert 0.5 < causal["K"] / flash2_full["K"] < 0.52  # only the tiles under the diagonal


def test_window_traffic_is_linear_in_n():
    per_token = [traffic_model.requested("flash2", Problem(1, 8, 8, n, n, 64, window=(256, 0)))["K"] / n
                 for n in (4096, 16384)]
    assert per_token[1] == pytest.approx(per_token[0], rel=0.05)


def test_unknown_rung_is_refused():
    with pytest.raises(ValueError, match="unknown kernel"):
        traffic_model.requested("no-such-rung", SEED)


@pytest.mark.parametrize("problem", [
    Problem(1, 1, 1, 64, 64, 16, causal=True), Problem(1, 1, 1, 24, 64, 16, causal=True),
    Problem(1, 1, 1, 61, 23, 16, causal=True), Problem(1, 1, 1, 64, 64, 16, window=(12, 0)),
    Problem(1, 1, 1, 50, 70, 16, window=(5, 9)), Problem(1, 1, 1, 40, 40, 16),
], ids=lambda p: p.describe())
def test_flash2_tiles_cover_the_mask_exactly(problem):
    """Skipped tiles hold no visible pair; computed ones hold at least one; 'full' ones only visible
    pairs (for the rows and keys inside the matrix): the rule the mask pictures draw."""
    Br, Bc = 8, 8
    kinds = diagrams.flash2_tile_kinds(problem, Br, Bc)
    mask = visible_mask(problem)
    for bi in range(kinds.shape[0]):
        for bj in range(kinds.shape[1]):
            tile = mask[bi * Br:(bi + 1) * Br, bj * Bc:(bj + 1) * Bc]
            if kinds[bi, bj] == 0:
                assert not tile.any(), (bi, bj)
            else:
                assert tile.any(), (bi, bj)
            if kinds[bi, bj] == 2:
                assert tile.all(), (bi, bj)


def test_tile_ranges_follow_flash2s_default_tiles():
    p = Problem(1, 1, 1, 4096, 4096, 64, causal=True)
    Br, Bc = flash2.tiles(p, flash2.DEFAULT_CONFIG)[:2]
    ranges = traffic_model.flash2_tile_ranges(p, Br, Bc)
    assert len(ranges) == 4096 // Br
    assert ranges[0] == (0, math.ceil(Br / Bc)) and ranges[-1] == (0, 4096 // Bc)


COUNTED = [
    ("naive", Problem(1, 2, 1, 13, 21, 8, causal=True)), ("tiled", Problem(1, 2, 2, 13, 13, 8)),
    ("online", Problem(1, 2, 1, 13, 29, 8, causal=True)), ("flash1", Problem(1, 2, 2, 13, 13, 16, "float16")),
    ("flash2", Problem(1, 2, 2, 29, 29, 16, causal=True)), ("flash2", Problem(1, 2, 1, 21, 21, 16, window=(5, 0))),
]


@pytest.mark.parametrize("rung, problem", COUNTED, ids=[f"{r}-{p.describe()}" for r, p in COUNTED])
def test_formulas_equal_the_simulators_count(rung, problem):
    """At simulator sizes the formulas must equal the bytes counted load by load (workbench.sim.traffic)."""
    import workbench

    if workbench.mode() != "simulator":
        pytest.skip("counting needs the simulator")
    counter = pytest.importorskip("workbench.sim.traffic", reason="the simulator's traffic counter")
    from workbench.harness import runner
    from workbench.kernels import get

    cfg = runner.check_config(get(rung), problem, None)
    model = traffic_model.requested(rung, problem, cfg)
    counted = {name: r + w for name, (r, w) in counter.traffic(rung, problem).by_array().items()}
    scratch = {"s": "S/P", "o_acc": "O", "m_acc": "m, l", "l_acc": "m, l"}
    merged = {}
    for name, n in counted.items():
        key = scratch.get(name, name)
        merged[key] = merged.get(key, 0) + n
    assert {k: v for k, v in model.items() if v} == merged
    assert np.isclose(sum(model.values()), sum(counted.values()))
