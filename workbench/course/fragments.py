"""The fragments of `mma.sync.aligned.m16n8k16` in NumPy: which lane of a warp holds which element of
A (16×16), B (16×8) and C (16×8), and a warp's matrix product computed through them, lane by lane.

This is what rung 6 (workbench/kernels/flash2_mma.py) does on the tensor cores, where no simulator
can follow it: the layouts are PTX's (ISA, "Matrix fragments for mma.m16n8k16 with floating point
type"), as workbench/kernels/mma.cu's header writes them, with lane = 4·g + t:

    A, 4 registers of two 16-bit halves:  a[0] = A[g][2t, 2t+1]     a[1] = A[g+8][2t, 2t+1]
                                          a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
    B, 2 registers:                       b[0] = B[2t, 2t+1][g]     b[1] = B[2t+8, 2t+9][g]
    C (float32), 4 values:                c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]

The low half of a register holds the element with the smaller column (or row) index. Arrays of
fragments are indexed [lane, register, half] (A: (32, 4, 2), B: (32, 2, 2)) and [lane, element]
(C: (32, 4)). `mma(a, b, c)` multiplies like the instruction: 16-bit inputs, products exact, sums in
float32 (here: float64 then rounded, which the hardware's fused sums do not beat).
"""

from __future__ import annotations

import numpy as np

LANES = 32


def a_coords(lane: int, reg: int, half: int) -> tuple[int, int]:
    """(row, column) of A (16×16) held by `lane` in register `reg` (0-3), `half` (0 low, 1 high)."""
    g, t = divmod(lane, 4)
    return g + 8 * (reg % 2), 2 * t + half + 8 * (reg // 2)


def b_coords(lane: int, reg: int, half: int) -> tuple[int, int]:
    """(row k, column n) of B (16×8) held by `lane` in register `reg` (0-1), `half`."""
    g, t = divmod(lane, 4)
    return 2 * t + half + 8 * reg, g


def c_coords(lane: int, e: int) -> tuple[int, int]:
    """(row, column) of C (16×8, float32) held by `lane` as value `e` (0-3)."""
    g, t = divmod(lane, 4)
    return g + 8 * (e // 2), 2 * t + e % 2


def a_fragments(A) -> np.ndarray:
    A = np.asarray(A)
    assert A.shape == (16, 16), A.shape
    out = np.empty((LANES, 4, 2), A.dtype)
    for lane in range(LANES):
        for reg in range(4):
            for half in range(2):
                out[lane, reg, half] = A[a_coords(lane, reg, half)]
    return out


def from_a_fragments(a) -> np.ndarray:
    """The 16×16 matrix a warp's A fragments describe (what the tensor core multiplies)."""
    A = np.full((16, 16), np.nan, np.asarray(a).dtype)
    for lane in range(LANES):
        for reg in range(4):
            for half in range(2):
                A[a_coords(lane, reg, half)] = a[lane, reg, half]
    return A


def b_fragments(B) -> np.ndarray:
    B = np.asarray(B)
    assert B.shape == (16, 8), B.shape
    out = np.empty((LANES, 2, 2), B.dtype)
    for lane in range(LANES):
        for reg in range(2):
            for half in range(2):
                out[lane, reg, half] = B[b_coords(lane, reg, half)]
    return out


def from_b_fragments(b) -> np.ndarray:
    B = np.full((16, 8), np.nan, np.asarray(b).dtype)
    for lane in range(LANES):
        for reg in range(2):
            for half in range(2):
                B[b_coords(lane, reg, half)] = b[lane, reg, half]
    return B


def c_fragments(C) -> np.ndarray:
    C = np.asarray(C)
    assert C.shape == (16, 8), C.shape
    return np.array([[C[c_coords(lane, e)] for e in range(4)] for lane in range(LANES)], C.dtype)


def from_c_fragments(c) -> np.ndarray:
    C = np.full((16, 8), np.nan, np.asarray(c).dtype)
    for lane in range(LANES):
        for e in range(4):
            C[c_coords(lane, e)] = c[lane, e]
    return C


def a_owner(row: int, col: int) -> tuple[int, int, int]:
    """(lane, register, half) that holds A[row, col]."""
    g, rr = row % 8, row // 8
    t, half, rc = (col % 8) // 2, col % 2, col // 8
    return 4 * g + t, rr + 2 * rc, half


def c_owner_map() -> dict:
    """{(row, column) of C: (lane, element)}."""
    return {c_coords(lane, e): (lane, e) for lane in range(LANES) for e in range(4)}


def round16(x, dtype=np.float16) -> np.ndarray:
    """x rounded to a 16-bit type (float16, or ml_dtypes.bfloat16) and back to float32, as
    packing a fragment register does (cvt.rn: nearest, ties to even)."""
    return np.asarray(x, np.float32).astype(dtype).astype(np.float32)


def mma(a, b, c=None) -> np.ndarray:
    """D = A·B + C for one warp, from fragments: a (32, 4, 2), b (32, 2, 2), c (32, 4) or None ->
    d (32, 4) float32. The inputs are taken as they are (round them with `round16` first to see
    what 16-bit registers hold)."""
    A = from_a_fragments(np.asarray(a)).astype(np.float64)
    B = from_b_fragments(np.asarray(b)).astype(np.float64)
    C = np.zeros((16, 8)) if c is None else from_c_fragments(np.asarray(c)).astype(np.float64)
    return c_fragments((A @ B + C).astype(np.float32))


def lane_grid(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """For drawing: (the lane that holds each element of A (16×16), B (16×8) or C (16×8), and the
    name of the register or value it is in)."""
    shape = {"A": (16, 16), "B": (16, 8), "C": (16, 8)}[kind]
    grid = np.empty(shape, int)
    label = np.empty(shape, object)
    for lane in range(LANES):
        if kind == "A":
            for reg in range(4):
                for half in range(2):
                    grid[a_coords(lane, reg, half)] = lane
                    label[a_coords(lane, reg, half)] = f"a{reg}"
        elif kind == "B":
            for reg in range(2):
                for half in range(2):
                    grid[b_coords(lane, reg, half)] = lane
                    label[b_coords(lane, reg, half)] = f"b{reg}"
        else:
            for e in range(4):
                grid[c_coords(lane, e)] = lane
                label[c_coords(lane, e)] = f"c{e}"
    return grid, label
