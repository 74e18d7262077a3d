"""Edge-case probes of warp shuffles and votes: the same kernels in the simulator, on a GPU, and in
NumPy (`warps.reference_shfl`), so that the three can be compared lane by lane.

One launch runs many cases, one per block: block `case` uses mask `masks[case]`, lane operand
`b[case, t]` (source lane, delta or lane mask) and lets only its first `active[case]` threads live
(the others return at once: exited lanes). Edge cases covered: widths 1…32, operands past the
segment or the warp (≥ 32, negative), partial masks, exited lanes, and partial last warps (a block
of 48 threads). Lanes outside the mask do not call the shuffle (calling it would be undefined) and
keep the fill value; results that read an absent lane are undefined on the GPU and left out of the
comparison.

    python -m workbench.sim.probes      # every case in the simulator against NumPy (~2 min)
"""

from __future__ import annotations

import functools
import sys

import numpy as np
from numba import cuda

from . import warps
from workbench.sim.warps import BFLY, DOWN, FULL_MASK, IDX, UP, WARP

FILL = -7  # what a lane that does not take part leaves in `out`
WIDTHS = (1, 2, 4, 8, 16, 32)
MODES = {"idx": IDX, "up": UP, "down": DOWN, "xor": BFLY}


@functools.cache
def shuffle_probe(mode: int, width: int):
    """A probe kernel of workbench.kernels.warp's shfl_*(mask, value, b, width)."""
    from workbench.kernels import warp

    fn = {IDX: warp.shfl_idx, UP: warp.shfl_up, DOWN: warp.shfl_down, BFLY: warp.shfl_xor}[mode]

    @cuda.jit
    def probe(values, b, masks, active, out):
        case, t = cuda.blockIdx.x, cuda.threadIdx.x
        if t >= active[case]:
            return  # an exited lane
        mask = masks[case]
        if (mask >> cuda.laneid) & 1:
            out[case, t] = fn(mask, values[case, t], b[case, t], width)

    return probe


# Numba's own intrinsics (width 32), written out: in the simulator `cuda.shfl_*` exists only
# inside a running kernel, so it cannot be captured when the kernel is built.
@cuda.jit
def _numba_idx(values, b, masks, active, out):
    case, t = cuda.blockIdx.x, cuda.threadIdx.x
    if t < active[case] and (masks[case] >> cuda.laneid) & 1:
        out[case, t] = cuda.shfl_sync(masks[case], values[case, t], b[case, t])


@cuda.jit
def _numba_up(values, b, masks, active, out):
    case, t = cuda.blockIdx.x, cuda.threadIdx.x
    if t < active[case] and (masks[case] >> cuda.laneid) & 1:
        out[case, t] = cuda.shfl_up_sync(masks[case], values[case, t], b[case, t])


@cuda.jit
def _numba_down(values, b, masks, active, out):
    case, t = cuda.blockIdx.x, cuda.threadIdx.x
    if t < active[case] and (masks[case] >> cuda.laneid) & 1:
        out[case, t] = cuda.shfl_down_sync(masks[case], values[case, t], b[case, t])


@cuda.jit
def _numba_xor(values, b, masks, active, out):
    case, t = cuda.blockIdx.x, cuda.threadIdx.x
    if t < active[case] and (masks[case] >> cuda.laneid) & 1:
        out[case, t] = cuda.shfl_xor_sync(masks[case], values[case, t], b[case, t])


NUMBA_PROBES = {IDX: _numba_idx, UP: _numba_up, DOWN: _numba_down, BFLY: _numba_xor}


@cuda.jit
def ballot_probe(values, b, masks, active, out):
    """ballot_sync of (value is odd) among the mask's lanes."""
    case, t = cuda.blockIdx.x, cuda.threadIdx.x
    if t < active[case] and (masks[case] >> cuda.laneid) & 1:
        out[case, t] = cuda.ballot_sync(masks[case], values[case, t] % 2 == 1)


def cases(threads: int, seed: int = 0, operands=(0, 1, 3, 16, 31, 32, 33, -1), random_operands=2,
          masks=(FULL_MASK, 0x0000FFFF, 0x55555555), random_masks=1, exited=(0, 13)):
    """The case arrays for a block of `threads`: every operand × mask × number of exited lanes.
    Returns dict(b (cases × threads) int32, masks uint32, active int32)."""
    rng = np.random.default_rng(seed)
    ops = [np.full(threads, o, np.int32) for o in operands]
    ops += [rng.integers(-40, 70, threads).astype(np.int32) for _ in range(random_operands)]
    mks = list(masks) + [int(rng.integers(1, 2**32)) for _ in range(random_masks)]
    b, m, a = [], [], []
    for op in ops:
        for mask in mks:
            for gone in exited:
                b.append(op), m.append(mask), a.append(threads - gone)
    return {"b": np.array(b, np.int32), "masks": np.array(m, np.uint32), "active": np.array(a, np.int32)}


def values_for(n_cases: int, threads: int, dtype, seed: int = 1):
    """Distinct values per (case, thread): ints, or floats with fractions (bit-exact comparison)."""
    rng = np.random.default_rng(seed)
    base = rng.permutation(n_cases * threads).reshape(n_cases, threads) + 100
    if np.dtype(dtype).kind == "f":
        return (base + 0.25).astype(dtype)
    return base.astype(dtype)


def expected(kind: str, mode: int | None, width: int, values, c: dict):
    """NumPy's answer for every case and lane: (result, defined, took_part); `kind` is "shfl" or
    "ballot". Lanes that take part but read an absent lane are NaN and not defined."""
    n_cases, threads = values.shape
    result = np.full((n_cases, threads), float(FILL))
    defined = np.zeros((n_cases, threads), bool)
    took = np.zeros((n_cases, threads), bool)
    for case in range(n_cases):
        mask, active = int(c["masks"][case]), int(c["active"][case])
        for w0 in range(0, threads, WARP):
            present = max(0, min(WARP, active - w0))
            lanes = min(WARP, threads - w0)
            vals = np.zeros(WARP)
            vals[:lanes] = values[case, w0:w0 + lanes]
            if kind == "ballot":
                takes = [(mask >> l) & 1 and l < present for l in range(WARP)]
                bits = sum(1 << l for l in range(WARP) if takes[l] and int(vals[l]) % 2 == 1)
                for l in range(lanes):
                    if takes[l]:
                        result[case, w0 + l] = np.uint32(bits).astype(np.int32)
                        defined[case, w0 + l] = took[case, w0 + l] = True
                continue
            ops = np.zeros(WARP, np.int64)
            ops[:lanes] = c["b"][case, w0:w0 + lanes]
            r, d = warps.reference_shfl(mode, vals, ops, mask, width, present)
            for l in range(lanes):
                if (mask >> l) & 1 and l < present:  # took part: the result is stored
                    result[case, w0 + l] = r[l] if d[l] else np.nan
                    defined[case, w0 + l] = d[l]
                    took[case, w0 + l] = True
    return result, defined, took


def probe_list(widths=WIDTHS, modes=tuple(MODES), numba_api=True, ballot=True):
    """(name, kind, mode, width, kernel) for every probe."""
    out = []
    for name in modes:
        for w in widths:
            out.append((f"shfl_{name}/w{w}", "shfl", MODES[name], w, shuffle_probe(MODES[name], w)))
        if numba_api:
            out.append((f"numba.shfl_{name}", "shfl", MODES[name], 32, NUMBA_PROBES[MODES[name]]))
    if ballot:
        out.append(("ballot_sync", "ballot", None, 32, ballot_probe))
    return out


def run(probes, threads=(64, 48), dtypes=("int32", "float32"), case_args=None):
    """Run every probe at each block size and dtype on the current target; returns a list of
    dicts with the raw outputs, NumPy's expectation and the comparison on defined lanes."""
    rows = []
    for n in threads:
        c = cases(n, **(case_args or {}))
        for name, kind, mode, width, kernel in probes:
            for dt in (("int32",) if kind == "ballot" else dtypes):
                values = values_for(len(c["masks"]), n, dt)
                out = np.full(values.shape, FILL, np.int32 if kind == "ballot" else dt)
                d_out = cuda.to_device(out)
                kernel[len(c["masks"]), n](cuda.to_device(values), cuda.to_device(c["b"]),
                                           cuda.to_device(c["masks"]), cuda.to_device(c["active"]), d_out)
                got = d_out.copy_to_host()
                want, defined, took_part = expected(kind, mode, width, values, c)
                bad = defined & (got.astype(np.float64) != want)
                untouched = (~took_part) & (got.astype(np.float64) != FILL)
                rows.append({"probe": name, "threads": n, "dtype": dt, "cases": len(c["masks"]),
                             "defined_lanes": int(defined.sum()), "mismatches": int(bad.sum()),
                             "untouched_changed": int(untouched.sum()),
                             "first_mismatch": _first(bad, c, got, want), "out": got.tolist()})
    return rows


def _first(bad, c, got, want):
    if not bad.any():
        return None
    case, t = map(int, np.argwhere(bad)[0])
    return {"case": case, "thread": t, "mask": f"0x{int(c['masks'][case]):08x}",
            "b": int(c["b"][case, t]), "active": int(c["active"][case]),
            "got": float(got[case, t]), "want": float(want[case, t])}


def main() -> int:
    import time

    from workbench.harness import device

    t0 = time.time()
    rows = run(probe_list())
    bad = [r for r in rows if r["mismatches"] or r["untouched_changed"]]
    for r in bad:
        print(r["probe"], r["threads"], r["dtype"], r["first_mismatch"])
    print(f"{device.mode()}: {len(rows)} probe launches, "
          f"{sum(r['defined_lanes'] for r in rows)} defined lanes, {len(bad)} with mismatches "
          f"({time.time() - t0:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    import workbench  # noqa: F401

    sys.exit(main())
