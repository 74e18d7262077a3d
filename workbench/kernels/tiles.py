"""The tile machinery of the fused rungs: `engine`, the CTA tile engine of rungs 4 and 5 (flash1,
flash2), and `rows`, rung 3's (online) one thread per query row.

flash1 and flash2 compute, for a query block Q_i (Br rows) and a KV tile K_j, V_j (Bc keys) in
shared memory, S = Q_i K_jᵀ, its row maxima, P = 2^(S − m) and O += P V_j, with the same threads,
the same register tiles and the same loads. They differ only in the order they visit (i, j) and in
where O, m and l live between visits; that is the lesson of each rung and stays in its module.
`engine` is what they share, as inline device functions built for constant tiles:

- Threads. A CTA is a TR × TC grid of threads. Thread (tr, tc) owns RM query rows
  r = tr + TR·a (a < RM) and, for each, RN keys c = tc + TC·b (b < RN) of S and DT = D / TC
  columns of O. The TC threads that share a row are consecutive lanes of one warp, so a row's
  max or sum is a butterfly of warp shuffles (no shared memory, no block barrier).
- Register tiling. A thread's S (RM × RN) and O (RM × DT) are local arrays indexed only by
  constants of unrolled loops, so they live in registers (0 stack); each value read from shared
  memory feeds RN, RM or DT multiply-adds.
- 16-byte shared loads. Rows of Q_i, K_j, V_j are read 4 floats at a time along D (P's along
  the tile); rows are padded to D + 4 (P's to Bc + max(4, TC)) floats and 16-byte aligned, so a
  warp's LDS.128 touches 32 different banks or repeats a word (a broadcast).
- Tile loads. Consecutive threads copy consecutive d (coalesced reads), TPR = gcd(threads, D) of
  them per row, so the threads cover every D with no column left over and none padded; 16 loads
  in flight per thread at constant offsets from one address; only the last tile (rows past N)
  predicates its loads, and its missing rows are zeros.
- Index arithmetic. Shared and device indices are unsigned and inner loops count with plain
  counters, so Numba's negative-index wraparound code (a compare and a select per access)
  disappears.
- Dtypes. Float16 and bfloat16 (as uint16 bits) are converted to float32 as they are loaded
  (common.load_f32); all arithmetic is float32; O is stored in its array's dtype (common.to_io).

Head dims: every multiple of 8 up to 256 (HEAD_DIMS). D is a multiple of 4 (the 16-byte loads)
and of TC = 8 (the default tiles' threads per row), so no D needs a padded column and no input is
ever copied. Sizes: the Q block holds at most Q_BLOCK_ELEMS elements (Br capped at 4096 // D,
rounded down to a power of two: 64 up to D = 64, 32 up to 128, 16 up to 256), RM shrinks with Br
(at most 4 above D = 64, 2 above 128), and Bc halves where the tiles would not fit Numba's 48 KiB
of static shared memory (at D = 256: 16 for flash2, 8 for flash1's two K/V buffers); so every
supported D keeps 64-thread CTAs (TR = TC = 8) with the default tiles, and a thread's O tile is at
most 64 floats.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import cuda, float32

from .common import NEG_INF, cdiv, load_f32, to_io, unmasked_keys, visible
from .hardware import STATIC_SHARED
from .warp import FULL_MASK, segment_max

HEAD_DIMS = tuple(range(8, 257, 8))
Q_BLOCK_ELEMS = 4096  # Br·D at most: the rule that keeps D = 128 inside 48 KiB
LOADS_IN_FLIGHT = 16  # a tile loader's loads per thread per step (all unrolled)


def tile_shape(problem, config, kv_buffers=1):
    """(Br, Bc, RM, RN, TR, TC) for this problem: Br capped at 4096 // D rounded down to a power
    of two (the Q block rule), RM capped at 4 above D = 64 and at 2 above 128 (so that a capped Br
    keeps the CTA's TR thread rows: with Br = 32, RM = 8 would leave it one warp), and Bc and RN
    halved until the tiles fit 48 KiB (TC, so the CTA's threads, stay)."""
    D = problem.head_dim
    RM = config["RM"] if D <= 64 else min(config["RM"], 4 if D <= 128 else 2)
    Br = min(config["Br"], max(RM, 1 << (Q_BLOCK_ELEMS // D).bit_length() - 1))
    Bc, RN = config["Bc"], config["RN"]
    while shared_bytes(Br, Bc, D, Bc // RN, kv_buffers) > STATIC_SHARED:
        if RN % 2 or Bc % 16:
            break  # (needs() refuses what is left)
        Bc, RN = Bc // 2, RN // 2
    return Br, Bc, RM, RN, Br // RM, Bc // RN


def shared_bytes(Br, Bc, D, TC, kv_buffers=1):
    """Static shared memory of one CTA, float32: Q_i and `kv_buffers` K/V tiles (rows padded to
    D + 4) and P (rows padded to Bc + max(4, TC))."""
    return 4 * (Br * (D + 4) + kv_buffers * Bc * (D + 4) + Br * (Bc + max(4, TC)))


def rules(Br, Bc, RM, RN, D, warps_per_sm) -> dict:
    """The engine's conditions on its tiles (needs().rules of a rung built on it)."""
    TC = Bc // RN
    return {
        "RM divides Br (after the Q block cap on Br)": Br % RM == 0,
        "RN divides Bc": Bc % RN == 0,
        "Bc is a multiple of 8 (P V runs 8 keys per step)": Bc % 8 == 0,
        "TC = Bc / RN divides 32 (a row's threads share one warp)": 32 % TC == 0,
        "TC = Bc / RN divides D (each thread owns D / TC columns of O)": D % TC == 0,
        "warps_per_sm <= 64": warps_per_sm <= 64,
    }


class Engine(NamedTuple):
    TR: int  # thread rows of the CTA
    TC: int  # threads per query row (lanes of one warp)
    THREADS: int
    DP: int  # padded shared row of Q_i, K_j, V_j
    BP: int  # padded shared row of P
    DT: int  # O columns per thread
    thread: object  # () -> (tr, tc)
    load_q: object  # (src, b, h, row0, n, scale, tile): a Br × D tile, times scale
    load_kv: object  # the same for a Bc × D tile
    scores: object  # (q_i, k_j, s): s = Q_i K_jᵀ on my RM × RN micro-tile
    mask: object  # (s, i0, j0, n_q, n_kv, shift, left, right): -inf where masked (edge tiles)
    row_max: object  # (s, mx): mx[a] = max of my row a over the tile's Bc keys
    add_pv: object  # (p_ij, v_j, acc): acc += P_ij V_j on my RM × DT micro-tile
    load_row: object  # (src, b, h, row, acc, a, valid): acc[a, :] = my columns of src[b, h, row]
    store_row: object  # (dst, b, h, row, acc, a, w): my columns of dst[b, h, row] = w · acc[a, :]


@functools.cache
def engine(Br, Bc, D, RM, RN) -> Engine:
    """The device functions for these tiles and head dim D (every shape and bound a constant)."""
    TR, TC = Br // RM, Bc // RN
    THREADS = TR * TC
    DP = D + 4  # padded row of Q_i and K_j / V_j in shared memory
    BP = Bc + max(4, TC)  # padded row of P
    DT = D // TC  # O columns per thread
    VW = 4 if DT % 4 == 0 else (2 if DT % 2 == 0 else 1)  # a thread's O columns come in runs of VW
    NV = DT // VW

    # Who copies what: with TPR = gcd(THREADS, D) threads per row (min(THREADS, D) when one divides
    # the other; 16 at D = 80 with 64 threads), thread t takes columns d0 + TPR·cc (cc < COLS) of
    # rows r0 + RSTEP·it, where d0 = t mod TPR and r0 = t div TPR: every column of every row once.
    TPR = math.gcd(THREADS, D)  # threads per row of a tile
    RSTEP = THREADS // TPR  # rows copied at once
    COLS = D // TPR  # columns per thread and row

    @cuda.jit(device=True, inline="always")
    def thread():
        """(tr, tc): my thread row and my lane among the TC threads of my rows."""
        t = cuda.threadIdx.x
        tr = t // TC
        return tr, t - tr * TC

    def tile_loader(ROWS):
        """A device function that copies ROWS × D elements of one head into shared memory."""
        ITS = cdiv(ROWS, RSTEP)  # rows per thread
        CH = min(ITS, max(1, LOADS_IN_FLIGHT // COLS))  # rows per step
        EXACT = ROWS % RSTEP == 0 and ITS % CH == 0

        @cuda.jit(device=True, inline="always")
        def load(src, b, h, row0, n, scale, tile):
            """tile[r, d] = scale · src[b, h, row0 + r, d] as float32, zeros for rows past n.
            A whole tile is read at constant offsets from one address per step; the last one
            predicates its loads, so no load is ever behind a branch."""
            t = cuda.threadIdx.x
            d0 = t % TPR
            r0 = t // TPR
            it0 = 0
            if row0 + ROWS <= n:  # a whole tile (all but the last): no guard at all
                while it0 < ITS:  # (a plain counter: no wraparound code)
                    for u in range(CH):
                        r = r0 + RSTEP * (it0 + u)
                        if EXACT or r < ROWS:
                            for cc in range(COLS):
                                d = d0 + TPR * cc
                                x = src[b, h, np.uint64(row0 + r), np.uint64(d)]
                                tile[np.uint64(r), np.uint64(d)] = load_f32(x) * scale
                    it0 += CH
            else:  # the last tile: rows past n are zeros (predicated loads, no branches)
                while it0 < ITS:
                    for u in range(CH):
                        r = r0 + RSTEP * (it0 + u)
                        if EXACT or r < ROWS:
                            inside = row0 + r < n
                            for cc in range(COLS):
                                d = d0 + TPR * cc
                                x = float32(0)
                                if inside:
                                    x = load_f32(src[b, h, np.uint64(row0 + r), np.uint64(d)])
                                tile[np.uint64(r), np.uint64(d)] = x * scale
                    it0 += CH

        return load

    @cuda.jit(device=True, inline="always")
    def scores(q_i, k_j, s):
        """s = Q_i K_jᵀ on my RM × RN micro-tile, 4 elements of D (one 16-byte load of each
        row) a trip."""
        tr, tc = thread()
        qf = cuda.local.array((RM, 4), float32)  # 4 values along D of my rows of Q_i
        kf = cuda.local.array((RN, 4), float32)  # ... and of each of my keys of K_j
        for a in range(RM):
            for c in range(RN):
                s[a, c] = float32(0)
        d = 0
        while d < D:  # (a plain counter: the compiler sees 0 <= d < D, no wraparound code)
            for a in range(RM):
                for u in range(4):
                    qf[a, u] = q_i[np.uint64(tr + TR * a), np.uint64(d + u)]
            for c in range(RN):
                for u in range(4):
                    kf[c, u] = k_j[np.uint64(tc + TC * c), np.uint64(d + u)]
            for a in range(RM):
                for c in range(RN):
                    for u in range(4):
                        s[a, c] += qf[a, u] * kf[c, u]
            d += 4

    @cuda.jit(device=True, inline="always")
    def mask(s, i0, j0, n_q, n_kv, shift, left, right):
        """-inf where my (row, key) pairs of tile j0 are masked or outside Nq × Nkv. Only a tile on
        the mask's edge looks at all: one inside the keys every row of the block sees needs
        nothing (the branch is the same for the whole CTA)."""
        inner_lo, inner_hi = unmasked_keys(i0, min(i0 + Br, n_q) - 1, shift, left, right, n_kv)
        if j0 >= inner_lo and j0 + Bc <= inner_hi:
            return
        tr, tc = thread()
        for a in range(RM):
            row = i0 + tr + TR * a
            for c in range(RN):
                key = j0 + tc + TC * c
                if row >= n_q or key >= n_kv or not visible(row, key, shift, left, right):
                    s[a, c] = NEG_INF

    @cuda.jit(device=True, inline="always")
    def row_max(s, mx):
        """mx[a] = the max of my row a over the tile: my RN keys, then a butterfly over the
        row's TC lanes (all of them get it)."""
        for a in range(RM):
            v = s[a, 0]
            for c in range(1, RN):
                v = max(v, s[a, c])
            mx[a] = segment_max(FULL_MASK, v, TC)

    @cuda.jit(device=True, inline="always")
    def add_pv(p_ij, v_j, acc):
        """acc += P_ij V_j on my RM × DT micro-tile, 8 keys a trip (two 16-byte loads of P a
        row); my O columns are VW·(tc + TC·n) + w."""
        tr, tc = thread()
        pf = cuda.local.array((RM, 4), float32)  # 4 keys of P for each of my rows
        vf = cuda.local.array(DT, float32)  # my O columns of one row of V_j
        c0 = 0
        while c0 < Bc:
            for half in range(2):
                c = c0 + 4 * half
                for a in range(RM):
                    for u in range(4):
                        pf[a, u] = p_ij[np.uint64(tr + TR * a), np.uint64(c + u)]
                for u in range(4):
                    for n in range(NV):
                        for w in range(VW):
                            col = VW * (tc + TC * n) + w  # my O columns
                            vf[n * VW + w] = v_j[np.uint64(c + u), np.uint64(col)]
                    for a in range(RM):
                        for x in range(DT):
                            acc[a, x] += pf[a, u] * vf[x]
            c0 += 8

    @cuda.jit(device=True, inline="always")
    def load_row(src, b, h, row, acc, a, valid):
        """acc[a, :] = my O columns of src[b, h, row] (float32) if valid, else zeros."""
        tc = thread()[1]
        for n in range(NV):
            for w in range(VW):
                x = float32(0)
                if valid:
                    x = src[b, h, np.uint64(row), np.uint64(VW * (tc + TC * n) + w)]
                acc[a, n * VW + w] = x

    @cuda.jit(device=True, inline="always")
    def store_row(dst, b, h, row, acc, a, w_):
        """My O columns of dst[b, h, row] = w_ · acc[a, :], in dst's dtype."""
        tc = thread()[1]
        for n in range(NV):
            for w in range(VW):
                col = np.uint64(VW * (tc + TC * n) + w)
                dst[b, h, np.uint64(row), col] = to_io(acc[a, n * VW + w] * w_, dst)

    return Engine(TR, TC, THREADS, DP, BP, DT, thread, tile_loader(Br), tile_loader(Bc), scores,
                  mask, row_max, add_pv, load_row, store_row)


class Rows(NamedTuple):
    load_q_row: object  # (q, b, h, i, q_t): column tx of Q_iᵀ = my query row i
    load_tile: object  # (src, b, h, j0, tile): a Bc × D tile, loaded by the whole block
    tile_scores: object  # (q_t, k_j, s, i, j0, n_kv, shift, scale, left, right) -> the tile's max


@functools.cache
def rows(Br, Bc, D) -> Rows:
    """Rung 3's device functions: a block of Br threads, one per query row of Q_i. The Q row would
    be D registers more than the O row a thread keeps (256 live floats at D = 128, over the
    255-register limit), so Q_i sits in shared memory, transposed (Q_iᵀ, D × Br): the 32 threads of
    a warp reading "their" element d touch 32 consecutive words (no bank conflicts), while
    K_j[c, d] is one word for the whole warp (a broadcast)."""

    @cuda.jit(device=True, inline="always")
    def load_q_row(q, b, h, i, q_t):
        """Column tx of Q_iᵀ = this thread's query row i as float32 (zeros past Nq)."""
        tx = cuda.threadIdx.x
        for d in range(D):
            q_t[d, tx] = float32(q[b, h, i, d]) if i < q.shape[2] else float32(0)

    @cuda.jit(device=True, inline="always")
    def load_tile(src, b, h, j0, tile):
        """tile[c] = src[b, h, j0 + c] as float32 (zeros past Nkv), loaded by all Br threads:
        consecutive threads read consecutive elements (coalesced)."""
        n = src.shape[2]
        for e in range(cuda.threadIdx.x, Bc * D, Br):
            c, d = e // D, e % D
            tile[c, d] = float32(src[b, h, j0 + c, d]) if j0 + c < n else float32(0)

    @cuda.jit(device=True, inline="always")
    def tile_scores(q_t, k_j, s, i, j0, n_kv, shift, scale, left, right):
        """s[c] = scale · Q[i] · K[j0 + c] for the tile's Bc keys, -inf where masked or past Nkv.
        Returns the tile's row max (-inf when row i sees no key of the tile)."""
        tx = cuda.threadIdx.x
        for c in range(Bc):
            s[c] = float32(0)
        for d in range(D):
            q_d = q_t[d, tx]
            for c in range(Bc):
                s[c] += q_d * k_j[c, d]  # k_j[c, d]: the same word for the whole warp (broadcast)
        m_tile = NEG_INF
        for c in range(Bc):
            if j0 + c < n_kv and visible(i, j0 + c, shift, left, right):
                s[c] *= scale
            else:
                s[c] = NEG_INF
            m_tile = max(m_tile, s[c])
        return m_tile

    return Rows(load_q_row, load_tile, tile_scores)
