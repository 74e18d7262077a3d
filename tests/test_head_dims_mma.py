"""Issue 19 for the tensor-core rungs: flash2_mma and flash2_mma_bwd take every head dim that is a
multiple of 8 up to 256, float16 and bfloat16.

How: Q_i, K_j, V_j (and the backward's Q_i, dO_i) are laid out in shared memory DK = D rounded up to
32 wide, the columns past D zero-filled by cp.async (flash2_mma.padded_dim, padded_copier: the one
place the head dim is padded); global memory is read and written at the real D only.

On this machine (no GPU):
- the padding itself, behaviourally: padded_copier run in the simulator with a stand-in for
  cp.async (16 bytes, or zeros when the source is not valid), at every D and the tile heights
  the rungs use: every real chunk copied once, zeros past D and past the sequence, nothing
  written past DK, nothing read past the tensor;
- the tile rules at every D: needs() takes the head dim, its rules hold at the default config, its
  shared memory is within the static (48 KiB) or, where it says dynamic, the opt-in limit;
- compile checks for sm_90 (a subprocess with the simulator off) at D = 8, 40, 80, 96, 136, 256,
  float16 and bfloat16: registers, spills within spill_budget(D), static shared memory within
  what needs() declares, the dynamic buffer passed at launch where there is one.
On a GPU (marked gpu; every D, both dtypes): both rungs against float64 (workbench.harness.verify),
the backward fed O and LSE from the float64 reference, so that it is judged on its own.

Tiers: the default tier runs the rule check, the simulator copy at D = 8 (mostly padding), 96
(12 chunks a row: the threads do not split rows evenly) and 200 (both), and one compile check
(D = 136, bfloat16: padded copy, Q_i from shared memory, V_j in shared memory, the split backward,
dynamic shared memory); the other compile checks, the simulator copy at every D and the GPU sweep
beyond D = 8, 40, 136, 256 are `slow` (pytest -m "slow or not slow" tests/test_head_dims_mma.py).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import workbench
from workbench import Problem
from workbench.kernels import flash2_mma as fwd
from workbench.kernels import flash2_mma_bwd as bwd
from workbench.kernels.hardware import H100, STATIC_SHARED

ALL_DIMS = tuple(range(8, 257, 8))
DTYPES = ("float16", "bfloat16")
slow = pytest.mark.slow


def _tiered(values, fast, ids=None):
    """pytest params: those in `fast` in the default tier, the others slow."""
    return [pytest.param(v, marks=() if v in fast else slow, id=None if ids is None else ids(v))
            for v in values]


# --------------------------------------------------------------------------------------------------
# The tile rules at every D (no compiling: needs() and the module's helpers)
# --------------------------------------------------------------------------------------------------
def test_every_head_dim_is_taken_at_the_default_configs():
    for D in ALL_DIMS:
        assert D in fwd.HEAD_DIMS and D in bwd.HEAD_DIMS
        DK = fwd.padded_dim(D)
        assert DK % 32 == 0 and D <= DK < D + 32
        for dtype in DTYPES:
            p = Problem(2, 8, 2, 300, 300, D, dtype, causal=True)
            for rung in (fwd, bwd):
                needs = rung.needs(p, rung.DEFAULT_CONFIG)
                assert D in needs.head_dims and dtype in needs.dtypes
                broken = [rule for rule, ok in needs.rules.items() if not ok]
                assert not broken, (rung.__name__, D, broken)
                assert needs.dynamic_shared == (needs.shared_bytes > STATIC_SHARED), (rung.__name__, D)
                limit = H100.smem_optin_per_block if needs.dynamic_shared else STATIC_SHARED
                assert needs.shared_bytes <= limit, (rung.__name__, D, needs.shared_bytes)
                # two CTAs an SM at least (the register budget of both rungs at D > 64 assumes it)
                assert 2 * (needs.shared_bytes + H100.smem_reserved_per_cta) <= H100.smem_per_sm
        Br, Bc, stages, warps, MT = fwd.tiles(p, fwd.DEFAULT_CONFIG)
        assert (Bc, warps) == ((64, 16) if D <= 64 else (32, 8)) and (MT == 1 or D <= 128)
        assert bwd.slices(D) == (2 if DK > 128 else 1)
        assert bwd.v_in_registers(D) == (D in (32, 64, 96, 128))
    # the head dims measured on the H100 keep their tiles and static shared memory
    for D, smem in ((32, 15360), (64, 27648), (128, 34816)):
        assert fwd.shared_bytes(64, 64 if D <= 64 else 32, D, 1) == smem
    for D, smem in ((32, 25088), (64, 37376), (128, 40192)):
        assert bwd.shared_bytes(64 if D <= 64 else 32, 64, D) == smem


# --------------------------------------------------------------------------------------------------
# The zero padding, in the simulator: padded_copier with a stand-in for cp.async
# --------------------------------------------------------------------------------------------------
SENTINEL = 0xBEEF  # shared memory nobody may write: the 8 padding elements past DK of each row


def run_padded_copy(D, rows, threads, row0, n, head=1):
    """padded_copier's copy of `rows` rows starting at row0 (n rows exist) of head `head` of a
    (2, N, D) tensor, into a (rows, DP) shared tile; returns (tile, writes per 16-byte chunk, src)."""
    from numba import cuda

    DK = fwd.padded_dim(D)
    DP = DK + 8
    N = max(n, row0 + rows) + 3
    src = (np.arange(2 * N * D, dtype=np.uint32) % 60000 + 1).astype(np.uint16)  # no zeros
    src[head * N * D + n * D:] = 0xDEAD  # rows past n: never to be read
    smem = np.full(rows * DP, SENTINEL, np.uint16)
    writes = np.zeros(rows * DP // 8, np.int32)

    @cuda.jit(device=True)
    def cp_async16(dst, gmem, elem, valid):  # 16 bytes, or 16 zero bytes without reading
        assert dst % 16 == 0 and 0 <= dst and dst + 16 <= 2 * rows * DP, "outside the tile"
        writes[dst // 16] += 1
        for e in range(8):
            smem[dst // 2 + e] = gmem[elem + e] if valid else 0

    copy = fwd.padded_copier(cp_async16, rows, D, DP, threads)

    @cuda.jit
    def kernel(gmem, base):
        copy(0, gmem, base, row0, n)

    kernel[1, threads](src, np.uint64(head * N * D))
    return smem.reshape(rows, DP), writes.reshape(rows, DP // 8), src.reshape(2, N, D)[head]


def check_padded_copy(D, rows, threads, row0, n):
    DK = fwd.padded_dim(D)
    tile, writes, src = run_padded_copy(D, rows, threads, row0, n)
    real = max(0, min(rows, n - row0))  # rows of the tile that exist
    assert (tile[:real, :D] == src[row0:row0 + real]).all(), "real columns not copied"
    assert (tile[real:, :D] == 0).all(), "rows past n not zero-filled"
    assert (tile[:, D:DK] == 0).all(), "columns D … DK − 1 not zero-filled"
    assert (tile[:, DK:] == SENTINEL).all(), "written past DK"
    assert (writes[:, :DK // 8] == 1).all(), "a chunk of DK copied other than once"


@pytest.mark.skipif(workbench.mode() != "simulator", reason="the stand-in cp.async runs in the simulator")
@pytest.mark.parametrize("D", _tiered(ALL_DIMS, (8, 96, 200)), ids=lambda d: f"D={d}")
def test_padded_copy_zero_fills_past_d(D):
    """At the rungs' tile heights and thread counts (forward: Br = 64 rows, Bc = 64 or 32 keys, 128
    threads; backward: Bc = 64 keys, Br = 64 or 32 rows, 128 threads), a tile cut by the sequence's
    end, and 32 threads (fewer than a row's chunks at D > 128: several steps per row)."""
    for rows in (32, 64):
        check_padded_copy(D, rows, 128, row0=rows, n=rows + rows // 2 + 3)
    check_padded_copy(D, 32, 32, row0=0, n=32)


# --------------------------------------------------------------------------------------------------
# Compile checks for sm_90 (no GPU): a subprocess with the simulator off
# --------------------------------------------------------------------------------------------------
COMPILE_SCRIPT = r"""
import json, os, sys
os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
from workbench.bench.resources import compile_usage
from workbench.harness import runner
from workbench.kernels import get
from workbench.problem import Problem

d, dtype, out = int(sys.argv[1]), sys.argv[2], []
p = Problem(2, 8, 2, 1000, 1000, d, dtype, causal=True)
for name, kind in (("flash2_mma", "forward"), ("flash2_mma_bwd", "backward")):
    rung = get(name, kind=kind)
    cfg = runner.check_config(rung, p)  # the harness takes the head dim at the default config
    needs = rung.module.needs(p, cfg)
    for launch in runner.plan(rung, p, cfg):
        if launch.name == name:  # (the backward's main kernel; its prep and convert are D-generic)
            out.append({"rung": name, "D": d, "dtype": dtype, "declared": needs.shared_bytes,
                        "dynamic": needs.dynamic_shared, "launch_shared": launch.shared,
                        "grid": list(launch.grid), **compile_usage(launch)})
json.dump(out, open(sys.argv[3], "w"))
"""

COMPILE_CASES = [(d, t) for d in (8, 40, 80, 96, 136, 256) for t in DTYPES]


@pytest.mark.parametrize("case", _tiered(COMPILE_CASES, {(136, "bfloat16")},
                                         ids=lambda c: f"D={c[0]}-{c[1]}"))
def test_compiles_for_sm90_within_budget(case, tmp_path):
    D, dtype = case
    out = tmp_path / "usage.json"
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(D), dtype, str(out)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {u["rung"] for u in rows} == {"flash2_mma", "flash2_mma_bwd"}
    for u in rows:  # (compile_usage's shared_bytes: the linker's static bytes + the launch's dynamic)
        module = fwd if u["rung"] == "flash2_mma" else bwd
        assert u["spill_bytes"] <= module.spill_budget(D), u
        assert u["registers"] <= 255 and u["shared_bytes"] == u["declared"], u  # needs() tells the truth
        assert u["shared_bytes"] - u["launch_shared"] <= STATIC_SHARED, u
        assert u["dynamic"] == (u["launch_shared"] > 0), u  # the dynamic buffer is passed at launch
        if u["dynamic"]:
            assert u["declared"] <= H100.smem_optin_per_block, u
    (back,) = [u for u in rows if u["rung"] == "flash2_mma_bwd"]
    assert (back["grid"] + [1])[2] == bwd.slices(D), back  # the column slices of D > 128: grid z


# --------------------------------------------------------------------------------------------------
# On a GPU: both rungs against float64 at every D
# --------------------------------------------------------------------------------------------------
GPU_FAST = (8, 40, 136, 256)


def gpu_problems(D, dtype):
    """Odd sizes (tiles cut at both ends), GQA and bottom-right causal; MQA with a window."""
    return [Problem(1, 4, 2, 77, 133, D, dtype, causal=True),
            Problem(2, 2, 1, 100, 64, D, dtype, window=(16, 8))]


@pytest.fixture
def reference_o_and_lse(monkeypatch):
    """The backward's O and LSE from the float64 reference (verify takes them from flash2, which
    another rung's head dims decide): the backward is judged on its own."""
    from workbench import dtypes, reference
    from workbench.harness import verify

    def forward_outputs(problem, q, k, v, kernel=None):
        o, lse = reference.attention(q, k, v, causal=problem.causal, window=problem.window,
                                     scale=problem.scale)
        return o.astype(dtypes.host_dtype(problem.dtype)), lse.astype(np.float32)

    monkeypatch.setattr(verify, "forward_outputs", forward_outputs)


@pytest.mark.gpu
@pytest.mark.skipif(workbench.mode() != "gpu", reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", _tiered(ALL_DIMS, GPU_FAST), ids=lambda d: f"D={d}")
@pytest.mark.usefixtures("reference_o_and_lse")
def test_mma_pair_matches_float64_on_gpu(D, dtype):
    """Forward and backward at D (training_kernels picks this pair for 16-bit inputs at every D)."""
    from workbench.api.training import training_kernels
    from workbench.harness import verify

    assert training_kernels(dtype, D) == ("flash2_mma", "flash2_mma_bwd")
    for p in gpu_problems(D, dtype):
        for kernel in ("flash2_mma", "flash2_mma_bwd"):
            report = verify.check(kernel, p, seed=D)
            assert report.passed, (kernel, p.describe(), report.failures)
