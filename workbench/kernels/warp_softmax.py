"""Row softmax with warp shuffles: the reduction every rung needs, without shared memory.

Rung 2 (tiled) reduces a row's max and sum through a shared-memory tree with a block barrier per
step. When the threads that share a row are lanes of one warp, they can exchange registers
instead: a butterfly of `shfl_xor_sync` steps (offsets W/2, …, 2, 1) leaves the row's max m in all
W lanes, then the same for l = Σ exp(S − m), with no shared memory and no `syncthreads`:

    thread t of the block: row r = blockIdx.x · (T / W) + t // W, lane c = t % W of that row
    m = max over j ≡ c (mod W) of S[r, j];      m = segment_max(m, W)
    l = Σ over j ≡ c (mod W) of exp(S[r, j] − m);  l = segment_sum(l, W)
    P[r, j] = exp(S[r, j] − m) / l,  LSE[r] = m + log(l)

W (lanes per row) is a power of two up to 32 and T (threads per block) a multiple of W; T need not
be a multiple of 32 (the last warp is then partial and the shuffles' full mask names lanes that do
not exist, which PTX treats as exited). Rows past the end still take part in the shuffles (every
lane named in the mask must), with m = −inf and l = 0, and store nothing. A row of −inf (fully
masked) gets P = 0 and LSE = −inf, as in rung 1.

Not a rung: a test kernel that runs the same in the simulator (workbench.sim.warps) and on the GPU
(tests/test_sim_warps.py, scripts/gpu_warps.py).
"""

import functools
import math

import numpy as np
from numba import cuda, float32

from .warp import FULL_MASK, segment_max, segment_sum

NEG_INF = float32(-math.inf)


@functools.cache
def build(W):
    """The kernel for W lanes per row (a compile-time constant)."""
    if W not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"lanes per row must be a power of two up to 32, got {W}")

    @cuda.jit
    def softmax_rows(s, p, lse):
        t = cuda.threadIdx.x
        r = cuda.blockIdx.x * (cuda.blockDim.x // W) + t // W
        c = t % W
        n_rows, n = s.shape
        m = NEG_INF
        if r < n_rows:
            for j in range(c, n, W):
                m = max(m, s[r, j])
        m = segment_max(FULL_MASK, m, W)
        l = float32(0)
        if r < n_rows and m > NEG_INF:
            for j in range(c, n, W):
                l += math.exp(s[r, j] - m)
        l = segment_sum(FULL_MASK, l, W)
        if r < n_rows:
            if m == NEG_INF:  # the row sees nothing: P = 0, LSE = -inf
                for j in range(c, n, W):
                    p[r, j] = float32(0)
            else:
                for j in range(c, n, W):
                    p[r, j] = math.exp(s[r, j] - m) / l
            if c == 0:
                lse[r] = m + math.log(l) if m > NEG_INF else NEG_INF

    return softmax_rows


def softmax_rows(s, p, lse, lanes_per_row=32, threads=64):
    """P = softmax(S) row-wise and LSE, for device (or NumPy) float32 arrays S, P (rows × n) and
    LSE (rows); `threads` per block must be a multiple of `lanes_per_row`."""
    if threads % lanes_per_row or not 1 <= threads <= 1024:
        raise ValueError(f"threads ({threads}) must be 1..1024 and a multiple of lanes_per_row "
                         f"({lanes_per_row})")
    for name, a in (("s", s), ("p", p), ("lse", lse)):
        if np.dtype(a.dtype) != np.float32:
            raise TypeError(f"{name} must be float32, got {a.dtype}")
    rows_per_block = threads // lanes_per_row
    build(lanes_per_row)[-(-s.shape[0] // rows_per_block), threads](s, p, lse)
