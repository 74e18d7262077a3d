"""The pieces the rungs share (issue 14, "shared pieces once"): the KV-tile range rule in kernels
and on the host, flash2's own copy of it in the causal-skip solution, the hardware facts and the
launch-bounds rule, the tile engine's sizes; and the two neighbour diffs the ladder promises."""

import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import workbench  # noqa: F401  (first: it chooses the simulator before Numba is imported)
from numba import cuda
from workbench import Problem
from workbench.harness import verify
from workbench.kernels import common, flash1, flash2, hardware, tiles

KERNELS = Path(__file__).resolve().parents[1] / "workbench" / "kernels"


def random_cases(n, seed):
    """(i0, i_last, Bc, shift, left, right, n_kv): query blocks of any size, masks of every kind
    (none: left/right = Nq + Nkv, as Problem.mask_bounds gives; causal: right = 0; windows),
    Nq < Nkv, Nq > Nkv, blocks past either end."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        n_q, n_kv = (int(x) for x in rng.integers(1, 300, 2))
        far = n_q + n_kv
        Br, Bc = int(rng.choice([1, 8, 16, 32, 64])), int(rng.choice([1, 8, 16, 32, 64]))
        i0 = int(rng.integers(0, n_q)) // Br * Br
        i_last = min(i0 + Br, n_q) - 1
        left = int(rng.choice([far, 0, int(rng.integers(0, 40))]))
        right = int(rng.choice([far, 0, int(rng.integers(0, 40))]))
        out.append((i0, i_last, Bc, n_kv - n_q, left, right, n_kv))
    return out


def brute_force(i0, i_last, Bc, shift, left, right, n_kv):
    """The tiles holding any key that rows i0 … i_last see, and the keys all of them see."""
    seen = [[common.visible_host(i, j, shift, left, right) for j in range(n_kv)]
            for i in range(i0, i_last + 1)]
    keys = [j for j in range(n_kv) if any(row[j] for row in seen)]
    every = [j for j in range(n_kv) if all(row[j] for row in seen)]
    tiles_ = (keys[0] // Bc, keys[-1] // Bc + 1) if keys else None
    return tiles_, every


CASES = random_cases(400, seed=14)


def test_kv_tile_range_is_the_tiles_of_the_visible_keys():
    for case in CASES:
        j_start, j_end = common.kv_tile_range_host(*case)
        expected, _ = brute_force(*case)
        if expected is None:
            assert j_end == j_start, case
        else:
            assert (j_start, j_end) == expected, case


def test_unmasked_keys_are_the_keys_every_row_sees():
    for i0, i_last, Bc, shift, left, right, n_kv in CASES:
        lo, hi = common.unmasked_keys_host(i0, i_last, shift, left, right, n_kv)
        _, every = brute_force(i0, i_last, Bc, shift, left, right, n_kv)
        assert list(range(lo, hi)) == every, (i0, i_last, shift, left, right, n_kv)


def test_the_device_function_is_the_host_function():
    """kv_tile_range runs in a kernel (here the simulator) and gives what the host twin gives."""
    cases = np.array(CASES, dtype=np.int64)
    out = np.full((len(cases), 4), -7, np.int64)

    @cuda.jit
    def kernel(c, out):
        t = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if t < c.shape[0]:
            a, b = common.kv_tile_range(c[t, 0], c[t, 1], c[t, 2], c[t, 3], c[t, 4], c[t, 5],
                                        c[t, 6])
            lo, hi = common.unmasked_keys(c[t, 0], c[t, 1], c[t, 3], c[t, 4], c[t, 5], c[t, 6])
            out[t, 0], out[t, 1], out[t, 2], out[t, 3] = a, b, lo, hi

    kernel[(len(cases) + 63) // 64, 64](cases, out)
    for row, case in zip(out, CASES):
        assert tuple(row[:2]) == common.kv_tile_range_host(*case)
        i0, i_last, Bc, shift, left, right, n_kv = case
        assert tuple(row[2:]) == common.unmasked_keys_host(i0, i_last, shift, left, right, n_kv)


def causal_skip_region():
    """The body of flash2.py's `### BEGIN SOLUTION causal-skip` region, dedented."""
    text = (KERNELS / "flash2.py").read_text()
    m = re.search(r"^(\s*)### BEGIN SOLUTION causal-skip\n(.*?)^\s*### END SOLUTION", text,
                  re.S | re.M)
    assert m, "flash2.py lost its causal-skip region"
    return "\n".join(line[len(m.group(1)):] for line in m.group(2).splitlines())


def test_flash2s_own_copy_of_the_rule_agrees_with_kv_tile_range():
    """The causal-skip assignment keeps the rule written out in flash2 (the student writes it);
    on many random cases it must give what common.kv_tile_range gives."""
    code = compile(causal_skip_region(), "flash2.py:causal-skip", "exec")
    helpers = {"first_key": common.first_key_host, "last_key": common.last_key_host,
               "max": max, "min": min}
    for i0, i_last, Bc, shift, left, right, n_kv in CASES + random_cases(600, seed=15):
        scope = dict(helpers, i0=i0, i_last=i_last, Bc=Bc, shift=shift, left=left, right=right,
                     n_kv=n_kv)
        exec(code, scope)
        assert (scope["j_start"], scope["j_end"]) == common.kv_tile_range_host(
            i0, i_last, Bc, shift, left, right, n_kv)


def test_cdiv_and_constants():
    assert [common.cdiv(a, 4) for a in range(9)] == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert common.NEG_INF.dtype == np.float32 and common.NEG_INF == -np.inf
    assert common.LOG2E.dtype == np.float32 and math.isclose(common.LOG2E, 1 / math.log(2),
                                                              rel_tol=1e-7)
    assert math.isclose(float(common.LN2) * float(common.LOG2E), 1.0, rel_tol=1e-7)
    assert "fast" not in common.FASTMATH and "ninf" not in common.FASTMATH  # m = -inf is data


# --- hardware -----------------------------------------------------------------------------------

def test_h100_and_h200_share_what_kernels_are_sized_by():
    h100, h200 = hardware.H100, hardware.H200
    for g in (h100, h200):
        assert (g.sm_count, g.smem_per_sm, g.smem_static_per_block, g.regs_per_sm) == (
            132, 228 * 1024, 48 * 1024, 65536)
        assert g.compute_capability == (9, 0) and g.max_threads_per_block == 1024
    assert h200.hbm_gbps > h100.hbm_gbps and "H200" in h200.name
    assert hardware.current() == h100  # no GPU here: compiled as for the H100


def test_facts_come_from_the_device_when_there_is_one():
    class FakeDevice:  # what numba.cuda.get_current_device() offers: driver attributes by name
        name = b"NVIDIA H200"
        compute_capability = (9, 0)
        MULTIPROCESSOR_COUNT = 132
        MAX_SHARED_MEMORY_PER_MULTIPROCESSOR = 233472
        RESERVED_SHARED_MEMORY_PER_BLOCK = 1024
        MAX_SHARED_MEMORY_PER_BLOCK = 49152
        MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 232448
        MAX_THREADS_PER_BLOCK = 1024
        MAX_THREADS_PER_MULTIPROCESSOR = 2048
        MAX_REGISTERS_PER_MULTIPROCESSOR = 65536
        L2_CACHE_SIZE = 60 * 1024 * 1024

    g = hardware._from_device(FakeDevice())
    assert g.name == "NVIDIA H200" and g.hbm_gbps == hardware.H200.hbm_gbps
    assert g.l2_bytes == 60 * 1024 * 1024 and g.smem_per_sm == 233472
    FakeDevice.name, FakeDevice.MULTIPROCESSOR_COUNT = "Some Other GPU", 7
    g = hardware._from_device(FakeDevice())
    assert g.sm_count == 7 and g.peak_fp32_tflops == hardware.H100.peak_fp32_tflops


@pytest.mark.parametrize("module", [flash1, flash2], ids=lambda m: m.__name__.split(".")[-1])
def test_launch_bounds_of_the_defaults(module):
    """min_blocks: as many CTAs as shared memory admits, at most warps_per_sm warps."""
    cfg = module.DEFAULT_CONFIG
    for d in tiles.HEAD_DIMS:
        p = Problem(8, 32, 32, 4096, 4096, d)
        Br, Bc, RM, RN, TR, TC = module.tiles(p, cfg)
        threads = TR * TC
        smem = module.needs(p, cfg).shared_bytes
        assert threads == 64, (module.__name__, d)
        assert smem <= hardware.STATIC_SHARED, (module.__name__, d)
        n = hardware.min_blocks(threads, smem, cfg["warps_per_sm"])
        assert n == min(cfg["warps_per_sm"] * 32 // threads, (228 * 1024) // (smem + 1024))
        assert n >= 2
    assert hardware.jit_options(64, 1000, 10) == {}  # the simulator knows no launch bounds


def test_flash1_halves_its_kv_tile_where_two_buffers_would_not_fit():
    cfg = flash1.DEFAULT_CONFIG
    assert flash1.tiles(Problem(1, 1, 1, 64, 64, 64), cfg) == flash2.tiles(
        Problem(1, 1, 1, 64, 64, 64), flash2.DEFAULT_CONFIG)
    Br, Bc, RM, RN, TR, TC = flash1.tiles(Problem(1, 1, 1, 64, 64, 128), cfg)
    assert (Br, Bc, RM, RN, TR, TC) == (32, 16, 4, 2, 8, 8)  # the same 64 threads as flash2
    assert flash2.tiles(Problem(1, 1, 1, 64, 64, 128), flash2.DEFAULT_CONFIG)[:2] == (32, 32)


FLASH1_CASES = [  # beyond the ladder's cases: bfloat16, D = 64, several Q blocks and KV tiles
    Problem(1, 2, 1, 40, 37, 64, "bfloat16", causal=True),
    Problem(2, 3, 1, 26, 41, 16, "float32", window=(5, 2)),
    Problem(1, 2, 2, 41, 19, 32, "float16"),
]


@pytest.mark.parametrize("problem", FLASH1_CASES, ids=lambda p: p.describe().replace(" ", "_"))
def test_flash1_matches_float64(problem):
    report = verify.check("flash1", problem, seed=FLASH1_CASES.index(problem) + 31)
    assert report.passed, str(report)


# --- the ladder's promise: diff two neighbours to see the lesson --------------------------------

def changed_lines(a, b):
    """Lines `diff a b` marks < or > (difflib's count where there is no diff on PATH)."""
    if shutil.which("diff"):
        out = subprocess.run(["diff", str(a), str(b)], capture_output=True, text=True).stdout
        return sum(line.startswith(("<", ">")) for line in out.splitlines())
    import difflib

    d = difflib.ndiff(a.read_text().splitlines(), b.read_text().splitlines())
    return sum(line[:2] in ("- ", "+ ") for line in d)


def test_neighbour_diffs_stay_lessons_and_flash2_stays_short():
    assert changed_lines(KERNELS / "online.py", KERNELS / "flash1.py") <= 250
    assert changed_lines(KERNELS / "flash1.py", KERNELS / "flash2.py") <= 250
    assert len((KERNELS / "flash2.py").read_text().splitlines()) <= 300


def test_rung_docstrings_carry_no_measurements():
    """Numbers go to PERF_NOTES.md and data files; docstrings go stale (issue 14)."""
    for name in ("flash1", "flash2"):
        doc = (KERNELS / f"{name}.py").read_text().split('"""')[1]
        assert not re.search(r"\d\s*(ms|TFLOP|GB/s|×\s*SDPA|x SDPA)\b", doc), name
        assert "PERF_NOTES.md" in (KERNELS / "flash2.py").read_text().split('"""')[1]
