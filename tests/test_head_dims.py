"""Every head dim that is a multiple of 8 up to 256 (issue 19) for the SIMT rungs flash1, flash2
(their tile engine, workbench/kernels/tiles.py) and flash2_bwd: the tile rules at every D, then
the rungs against float64 in the simulator at head dims that are not powers of two, in float32,
float16 and bfloat16, at the tiny SIM_CONFIG tiles and (slow tier) at the GPU's default tiles,
whose thread layout pads flash2_bwd's register tiles; and (slow tier) the kernels compiled for
sm_90 at D = 80, 96 and 256 with no spills and within the shared memory they declare."""

import json
import os
import subprocess
import sys

import pytest

import workbench  # noqa: F401  (first: it chooses the simulator before Numba is imported)
from workbench import Problem
from workbench.harness import verify
from workbench.kernels import flash1, flash2, flash2_bwd, hardware, tiles

EVERY_D = tuple(range(8, 257, 8))
FORWARD = {"flash1": flash1, "flash2": flash2}


# --- the tile rules at every D (no kernel runs) --------------------------------------------------

def test_every_multiple_of_8_up_to_256_is_declared():
    assert tiles.HEAD_DIMS == EVERY_D and flash2_bwd.HEAD_DIMS == EVERY_D
    for module in (flash1, flash2, flash2_bwd):
        needs = module.needs(Problem(1, 1, 1, 64, 64, 80, "bfloat16"), module.DEFAULT_CONFIG)
        assert needs.head_dims == EVERY_D and "bfloat16" in needs.dtypes, module.__name__


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_forward_default_tiles_at_every_d(name):
    """64-thread CTAs (TR = TC = 8), every rule true, 48 KiB of static shared memory at most, a
    thread's O tile at most 64 floats; the measured defaults at D = 64 and 128 unchanged."""
    module = FORWARD[name]
    cfg = module.DEFAULT_CONFIG
    for d in EVERY_D:
        p = Problem(8, 32, 8, 4096, 4096, d)
        Br, Bc, RM, RN, TR, TC = module.tiles(p, cfg)
        needs = module.needs(p, cfg)
        assert (TR, TC) == (8, 8) and all(needs.rules.values()), (d, needs.rules)
        assert needs.shared_bytes <= hardware.STATIC_SHARED and not needs.dynamic_shared
        assert RM * d // TC <= 64, d
        e = tiles.engine(Br, Bc, d, RM, RN)
        assert e.THREADS == 64 and e.DT * TC == d  # no padded O column
    assert module.tiles(Problem(1, 1, 1, 64, 64, 64), cfg) == (64, 32, 8, 4, 8, 8)
    assert module.tiles(Problem(1, 1, 1, 64, 64, 128), cfg) == {
        "flash1": (32, 16, 4, 2, 8, 8), "flash2": (32, 32, 4, 4, 8, 8)}[name]


def test_backward_default_tiles_at_every_d():
    """Every rule true, 48 KiB at most, 64 threads or more; D = 64 and 128 as measured; the
    dK/dV and dQ layouts cover D columns, padding only the last run of a thread's columns."""
    cfg = flash2_bwd.DEFAULT_CONFIG
    for d in EVERY_D:
        p = Problem(8, 32, 8, 4096, 4096, d)
        Br, Bc, RM, RN = flash2_bwd.tiles(p, cfg)
        needs = flash2_bwd.needs(p, cfg)
        assert all(needs.rules.values()) and needs.shared_bytes <= hardware.STATIC_SHARED, d
        for rows, cols in ((Bc, Br), (Br, Bc)):
            TR, TC, threads, TD, TA, AM, DT = flash2_bwd.layout(rows, cols, RM, RN, d)
            assert threads >= 64 and AM * TA == rows and 2 * AM * DT <= 96, d
            assert TD * (DT - 1) < d <= TD * DT, d  # padding within the last run only
    assert flash2_bwd.tiles(Problem(1, 1, 1, 64, 64, 64), cfg) == (32, 32, 2, 2)
    assert flash2_bwd.tiles(Problem(1, 1, 1, 64, 64, 128), cfg) == (16, 16, 2, 2)
    assert flash2_bwd.layout(16, 16, 2, 2, 80)[3:] == (32, 2, 8, 3)  # D = 80: 96 columns, 16 pad


# --- the rungs against float64 (simulator) -------------------------------------------------------

# (rung, problem): tiny odd shapes (Nq ≠ Nkv, neither a multiple of a tile), GQA, masks; D not a
# power of two. At SIM_CONFIG (16 threads, TC = 4) the loaders take gcd(16, D) = 8 threads per
# row at D = 24 and 40, and flash2_bwd's phase two pads D = 24 and 40 to 32 and 48 columns.
SIM_CASES = [
    ("flash2", Problem(1, 2, 1, 13, 11, 80, "float32", causal=True)),
    ("flash1", Problem(1, 2, 1, 13, 11, 24, "float16")),
    ("flash2_bwd", Problem(1, 2, 1, 9, 7, 24, "bfloat16", causal=True)),
]
MORE_SIM_CASES = [  # the slow tier
    ("flash2", Problem(1, 2, 1, 11, 13, 40, "bfloat16", window=(3, 1))),
    ("flash1", Problem(1, 2, 1, 13, 11, 96, "bfloat16", causal=True)),
    ("flash2", Problem(1, 2, 1, 13, 11, 8, "float16")),
    ("flash2", Problem(1, 1, 1, 13, 11, 136, "float32", window=(4, 0))),
    ("flash1", Problem(1, 1, 1, 11, 13, 256, "float32")),
    ("flash2", Problem(1, 2, 1, 11, 13, 256, "bfloat16", causal=True)),
    ("flash2_bwd", Problem(1, 2, 1, 13, 11, 40, "float16", window=(3, 1))),
    ("flash2_bwd", Problem(1, 2, 1, 13, 11, 80, "float32", causal=True)),
    ("flash2_bwd", Problem(1, 2, 1, 11, 13, 96, "bfloat16")),
    ("flash2_bwd", Problem(1, 1, 1, 13, 11, 136, "float16", causal=True)),
    ("flash2_bwd", Problem(1, 2, 1, 13, 11, 256, "float32", window=(2, 1))),
]

# The GPU's default tiles in the simulator (64 threads; the slow tier): the layouts the compile
# check compiles. flash2 at D = 80 (Br = 32, RM = 4) and 256 (Bc halved to 16); flash1 at 248
# (Bc = 8); flash2_bwd at 80 (16 × 16, phase two padded to 96 columns) and 248 (8 × 8 with 1 × 1
# micro-tiles, padded to 256 columns).
DEFAULT_TILE_CASES = [
    ("flash2", Problem(1, 1, 1, 35, 33, 80, "float16", causal=True)),
    ("flash2", Problem(1, 1, 1, 19, 21, 256, "float32")),
    ("flash1", Problem(1, 1, 1, 17, 13, 248, "bfloat16", causal=True)),
    ("flash2_bwd", Problem(1, 2, 1, 19, 17, 80, "float32", causal=True)),
    ("flash2_bwd", Problem(1, 1, 1, 11, 13, 248, "bfloat16")),
]


def _id(case):
    name, p = case
    return f"{name}-{p.describe()}".replace(" ", "_")


def _check(name, problem, seed, config=None):
    report = verify.check(name, problem, seed=seed, config=config)
    assert report.passed, str(report)


@pytest.mark.parametrize("case", SIM_CASES, ids=_id)
def test_head_dim_matches_float64(case):
    _check(*case, seed=SIM_CASES.index(case) + 190)


@pytest.mark.parametrize("case", MORE_SIM_CASES, ids=_id)
def test_more_head_dims_match_float64(case):
    _check(*case, seed=MORE_SIM_CASES.index(case) + 390)


@pytest.mark.parametrize("case", DEFAULT_TILE_CASES, ids=_id)
def test_head_dims_at_default_tiles_match_float64(case):
    name, problem = case
    module = FORWARD.get(name, flash2_bwd)
    _check(name, problem, DEFAULT_TILE_CASES.index(case) + 290, dict(module.DEFAULT_CONFIG))


# --- compiled for sm_90 (a subprocess with the simulator off, as test_compile.py) -----------------

COMPILE_DIMS = (80, 96, 256)
SCRIPT = r"""
import json, os, sys
os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
from concurrent.futures import ProcessPoolExecutor
from workbench.problem import Problem
from workbench.bench.resources import compile_usage
from workbench.harness import runner
from workbench.kernels import get

def usage(job):
    name, d, dtype = job
    rung = get(name, kind="backward" if name.endswith("_bwd") else "forward")
    p = Problem(2, 32, 8, 1024, 1024, d, dtype, causal=True)
    cfg = runner.check_config(rung, p)
    declared = rung.module.needs(p, cfg).shared_bytes
    return [{"rung": name, "kernel": l.name, "head_dim": d, "dtype": dtype, "threads": l.threads,
             "declared": declared, **compile_usage(l)} for l in runner.plan(rung, p, cfg)]

jobs = [(n, d, "float32") for n in ("flash2", "flash2_bwd") for d in json.loads(sys.argv[2])]
jobs.append(("flash2_bwd", 80, "bfloat16"))  # (new in flash2_bwd; flash2: test_compile.py)
with ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as ex:
    rows = [r for rs in ex.map(usage, jobs) for r in rs]
json.dump(rows, open(sys.argv[1], "w"))
"""


def test_head_dims_compile_for_sm90(tmp_path):
    """flash2 and flash2_bwd at D = 80, 96, 256 (float32; flash2_bwd's bfloat16 at 80): no spills,
    and static shared memory within 48 KiB and within what needs() declares (what the harness
    checks)."""
    out = tmp_path / "usage.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), json.dumps(COMPILE_DIMS)],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {(r["rung"], r["head_dim"]) for r in rows} == {
        (n, d) for n in ("flash2", "flash2_bwd") for d in COMPILE_DIMS}
    bad = [r for r in rows if r["spill_bytes"] or r["shared_bytes"] > hardware.STATIC_SHARED
           or r["shared_bytes"] > r["declared"]]
    assert not bad, bad
