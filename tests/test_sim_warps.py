"""Warp intrinsics in the simulator (workbench.sim.warps): hand-computed expectations, the PTX
semantics on edge cases against NumPy, a warp-shuffle softmax against float64, and the errors that
replace hangs. scripts/gpu_warps.py runs the same probes and kernel on the H100."""

import math

import numpy as np
import pytest

import workbench
from workbench.sim import warps
from workbench.sim.warps import BFLY, DOWN, FULL_MASK, IDX, UP, WarpError, clamp, source_lane

pytestmark = pytest.mark.skipif(workbench.mode() != "simulator", reason="simulator only")

from numba import cuda  # noqa: E402  (after workbench chose the mode)


# --- the semantics, by hand ------------------------------------------------------------------------
@pytest.mark.parametrize("mode, lane, b, width, src", [
    (IDX, 13, 3, 8, 11),     # segment 8..15, its lane 3
    (IDX, 5, 33, 32, 1),     # source lanes are taken modulo 32 (then modulo width)
    (IDX, 20, 9, 8, 17),     # 9 % 8 = 1 in segment 16..23
    (IDX, 7, -1, 32, 31),    # -1 -> lane 31
    (UP, 10, 2, 8, 8),
    (UP, 9, 2, 8, 9),        # 7 is before segment 8..15: own value
    (UP, 3, 33, 32, 2),      # delta taken modulo 32: 33 -> 1
    (DOWN, 6, 2, 8, 6),      # 8 is past segment 0..7: own value
    (DOWN, 29, 2, 32, 31),
    (DOWN, 30, 2, 32, 30),
    (BFLY, 4, 16, 16, 4),    # lane 20 is in a later segment: own value
    (BFLY, 20, 16, 16, 4),   # ... but an earlier segment may be read (as PTX and the guide say)
    (BFLY, 5, 1, 1, 4),      # even at width 1, lane 5 reads lane 4 (an earlier segment) ...
    (BFLY, 4, 1, 1, 4),      # ... while lane 4 keeps its own (lane 5 is a later one)
    (IDX, 9, 6, 1, 9),       # width 1: idx always reads itself
    (BFLY, 5, 3, 32, 6),
])
def test_source_lane_by_hand(mode, lane, b, width, src):
    assert source_lane(mode, lane, b, clamp(mode, width)) == src


def test_clamp_refuses_bad_width():
    with pytest.raises(ValueError, match="power of two"):
        clamp(IDX, 12)


# --- kernels in the simulator, by hand ------------------------------------------------------------
@cuda.jit
def _lanes_2d(out_lane, out_bcast, out_xor):
    tid = cuda.threadIdx.x + cuda.blockDim.x * cuda.threadIdx.y
    out_lane[tid] = cuda.laneid
    out_bcast[tid] = cuda.shfl_sync(FULL_MASK, tid * 10, 2)  # lane 2 of this warp
    out_xor[tid] = cuda.shfl_xor_sync(FULL_MASK, tid, 1)


def test_lanes_are_linear_thread_index_and_partial_warp_works():
    """Block 8 × 6 = 48 threads: warp 0 = tid 0..31, warp 1 = tid 32..47 (partial)."""
    lane, bcast, xor = (np.full(48, -1, np.int64) for _ in range(3))
    _lanes_2d[1, (8, 6)](lane, bcast, xor)
    tid = np.arange(48)
    assert (lane == tid % 32).all()
    assert (bcast == np.where(tid < 32, 20, 340)).all()
    assert (xor == tid ^ 1).all()


@cuda.jit
def _after_exits(x, out, keep):
    t = cuda.threadIdx.x
    if t >= keep:
        return
    out[0, t] = cuda.shfl_down_sync(FULL_MASK, x[t], 1)
    out[1, t] = cuda.activemask()


def test_exited_lanes_do_not_hold_the_warp_and_reading_them_is_poison():
    x = np.arange(32, dtype=np.float32) + 0.5
    out = np.full((2, 32), -1.0, np.float64)
    _after_exits[1, 32](x, out, 5)
    assert (out[0, :4] == x[1:5]).all()
    assert math.isnan(out[0, 4])  # lane 5 has exited: undefined on the GPU, NaN here
    assert (out[1, :5] == 0b11111).all() and (out[:, 5:] == -1).all()


@cuda.jit
def _branches(out):
    t = cuda.threadIdx.x
    if t % 3 == 0:
        out[t] = cuda.activemask()
    else:
        out[t] = cuda.activemask() + 1  # another call site: another branch


def test_activemask_names_the_lanes_of_its_branch():
    out = np.zeros(40, np.int64)
    _branches[1, 40](out)
    tid = np.arange(40)
    first = [sum(1 << l for l in range(n) if l % 3 == (-w * 32) % 3) for w, n in ((0, 32), (1, 8))]
    for t in range(40):
        w, n = divmod(t, 32)[0], (32 if t < 32 else 8)
        branch = first[w] if tid[t] % 3 == 0 else ((1 << n) - 1) & ~first[w]
        assert out[t] == branch + (0 if tid[t] % 3 == 0 else 1), t


def test_reading_an_absent_lane_can_raise(monkeypatch):
    monkeypatch.setattr(warps, "on_undefined", "raise")
    with pytest.raises(WarpError, match="lane 4 reads lane 5"):
        _after_exits[1, 32](np.arange(32, dtype=np.float32), np.zeros((2, 32)), 5)


@cuda.jit
def _halves(x, out):
    t = cuda.threadIdx.x
    if t < 16:  # the two halves shuffle independently, with their own masks
        out[t] = cuda.shfl_up_sync(0x0000FFFF, x[t], 3)
    else:
        out[t] = cuda.shfl_xor_sync(0xFFFF0000, x[t], 5)


def test_disjoint_masks_run_independently():
    x = np.arange(32, dtype=np.int32) * 3
    out = np.zeros(32, np.int32)
    _halves[1, 32](x, out)
    lanes = np.arange(32)
    want = np.where(lanes < 16, np.where(lanes >= 3, x[lanes - 3], x), x[lanes ^ 5])
    assert (out == want).all()


@cuda.jit
def _votes(x, out):
    t = cuda.threadIdx.x
    odd = x[t] % 2 == 1
    out[0, t] = cuda.ballot_sync(FULL_MASK, odd)
    out[1, t] = cuda.all_sync(FULL_MASK, x[t] >= 0)
    out[2, t] = cuda.any_sync(FULL_MASK, x[t] > 100)
    out[3, t] = cuda.eq_sync(FULL_MASK, odd)
    out[4, t] = cuda.match_any_sync(FULL_MASK, x[t] // 4)
    cuda.syncwarp(FULL_MASK)
    out[5, t] = cuda.lanemask_lt()


def test_votes_and_match_by_hand():
    x = np.arange(40, dtype=np.int64)  # a full warp and a partial one of 8 lanes
    out = np.zeros((6, 40), np.int64)
    _votes[1, 40](x, out)
    as_int32 = lambda v: int(np.uint32(v).astype(np.int32))  # noqa: E731  Numba types them int32
    assert (out[0, :32] == as_int32(0xAAAAAAAA)).all() and (out[0, 32:] == 0xAA).all()
    assert (out[1] == 1).all() and (out[2] == 0).all() and (out[3] == 0).all()
    assert out[4, 5] == 0xF0 and out[4, 33] == 0x0F and out[4, 30] == as_int32(0xF0000000)
    assert (out[5] == (1 << (np.arange(40) % 32)) - 1).all()


# --- what hangs or is undefined on the GPU is an error here --------------------------------------
@cuda.jit
def _barrier_vs_shuffle(out):
    t = cuda.threadIdx.x
    if t == 1:
        cuda.syncthreads()
    else:
        out[t] = cuda.shfl_sync(0x3, t, 1)


@cuda.jit
def _mixed_intrinsics(out):
    t = cuda.threadIdx.x
    if t == 0:
        cuda.syncwarp(0x3)
    else:
        out[t] = cuda.shfl_sync(0x3, t, 0)


@cuda.jit
def _not_in_mask(out):
    out[cuda.threadIdx.x] = cuda.shfl_sync(0x1, 1.0, 0)


@pytest.mark.parametrize("kernel, message", [
    (_barrier_vs_shuffle, "lane 1 waits at syncthreads"),
    (_mixed_intrinsics, "undefined"),
    (_not_in_mask, "does not name it"),
])
def test_undefined_or_deadlocked_warps_are_errors(kernel, message):
    with pytest.raises(WarpError, match=message):
        kernel[1, 2](np.zeros(2))


@cuda.jit
def _float16_shuffle(x, out):
    out[0] = cuda.shfl_sync(FULL_MASK, x[0], 0)


def test_shuffle_refuses_what_numba_cannot_compile():
    with pytest.raises(TypeError, match="32- and 64-bit"):
        _float16_shuffle[1, 1](np.ones(1, np.float16), np.zeros(1, np.float16))


# --- the edge-case probes (the same that scripts/gpu_warps.py runs on the H100) --------------------
def test_probes_match_the_numpy_semantics():
    """Every mode at width 8 (workbench.kernels.warp) and Numba's own four shuffles (width 32),
    with operands past the segment and the warp, partial masks, exited lanes and a partial warp."""
    from workbench.sim import probes

    selected = probes.probe_list(widths=(8,))
    rows = probes.run(selected, threads=(48,), dtypes=("int32",), case_args=dict(
        operands=(1, 5, 33, -1), random_operands=1, masks=(FULL_MASK, 0x00FF00FF),
        random_masks=1, exited=(0, 21)))
    assert {r["probe"] for r in rows} == {p[0] for p in selected}
    for r in rows:
        assert r["defined_lanes"] > 0, r["probe"]
        assert r["mismatches"] == 0 and r["untouched_changed"] == 0, (r["probe"], r["first_mismatch"])


# --- a warp-shuffle kernel against float64 --------------------------------------------------------
@pytest.mark.parametrize("lanes, threads", [(8, 40), (32, 64), (4, 12)])
def test_warp_softmax_matches_float64(lanes, threads):
    from workbench.kernels.warp_softmax import softmax_rows

    rng = np.random.default_rng(lanes)
    s = (rng.standard_normal((13, 11)) * 3).astype(np.float32)
    s[4] = -np.inf  # a row that sees no key
    s[7, ::2] = -np.inf
    p = np.full_like(s, np.nan)
    lse = np.full(13, np.nan, np.float32)
    softmax_rows(s, p, lse, lanes_per_row=lanes, threads=threads)
    s64 = s.astype(np.float64)
    m = s64.max(axis=1, keepdims=True)
    visible = np.isfinite(m[:, 0])
    e = np.exp(s64 - np.where(np.isfinite(m), m, 0))
    with np.errstate(divide="ignore", invalid="ignore"):  # the row that sees nothing
        want_p = np.where(visible[:, None], e / e.sum(axis=1, keepdims=True), 0)
        want_lse = np.where(visible, m[:, 0] + np.log(e.sum(axis=1)), -np.inf)
    np.testing.assert_allclose(p, want_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse[visible], want_lse[visible], rtol=1e-5)
    assert lse[4] == -np.inf and (p[4] == 0).all()


def test_warp_softmax_refuses_bad_launch():
    from workbench.kernels.warp_softmax import softmax_rows

    s = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="multiple of lanes_per_row"):
        softmax_rows(s, s.copy(), np.zeros(2, np.float32), lanes_per_row=8, threads=20)
