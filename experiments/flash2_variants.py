"""flash2 with its compile-time variants (issue 8): the rung as it was measured, kept runnable.

`workbench/kernels/flash2.py` keeps only the measured default path ("rm8-ua"); this module is the
kernel those measurements ran, with every variant still selectable by config keys, so that the
tables of PERF_NOTES.md ("v1 candidates", "v1 measured") stay reproducible:
`python scripts/gpu_perf_flash2.py OUTDIR` builds its variants from VARIANTS below, and
tests/test_flash2_variants.py checks each against float64 in the simulator.

The algorithm, the tiles and the tricks are flash2's (read its docstring and tiles.py). The keys:
- row_reduce SHARED or SHUFFLE: a row's max (each tile) and its l (at the end) go through a small
  shared array and a warp barrier, or are a butterfly of `shfl_xor_sync` over its TC lanes.
- shared_index SIGNED or UNSIGNED: the S and P V loops index shared memory as written (Numba
  emits negative-index wraparound code: a compare and a select per access) or cast to unsigned.
- kv_buffers 1 or 2: K_j, then V_j over it in one buffer; or a buffer each, loaded together after
  one barrier (2 block barriers per tile instead of 4; P_ij then needs only a warp barrier).
- stages 1 or 2: load, then compute; or tile j+1's K (and V) fetched into registers before tile j
  is computed and stored to shared memory after the next barrier (register double-buffering).
- d_step 4, 8 or 16: elements of D the S loop reads per trip (fewer trips, more registers).
Which won, by how much and why: PERF_NOTES.md and figures/h100/perf-variants-flash2.json.
"""

import functools
import math
import sys

import workbench  # noqa: F401  (first: it chooses the simulator or the GPU before Numba loads)
import numpy as np
from numba import cuda, float32

from workbench.kernels import Rung
from workbench.kernels.common import (FASTMATH, LN2, LOG2E, NEG_INF, cdiv, first_key, last_key,
                                      load_f32, to_io, visible)
from workbench.kernels.contract import Needs
from workbench.kernels.hardware import ALIGN, jit_options, warp_sync
from workbench.kernels.tiles import Q_BLOCK_ELEMS, engine

HEAD_DIMS = (16, 32, 64, 128)  # the old flash2's (tiles.py now takes every multiple of 8)
from workbench.kernels.tiles import rules as engine_rules
from workbench.kernels.warp import FULL_MASK, segment_max, segment_sum

LESSON = "flash2 with its issue-8 variants (row_reduce, shared_index, kv_buffers, stages, d_step)"
SHARED, SHUFFLE = 1, 2  # config["row_reduce"]: through shared memory, or by warp shuffles
SIGNED, UNSIGNED = 1, 2  # config["shared_index"]: how the S and P V loops index shared memory
ONE_BUFFER, TWO_BUFFERS = 1, 2  # config["kv_buffers"]
LOAD_THEN_COMPUTE, PREFETCH = 1, 2  # config["stages"]
# The default is the measured best, "rm8-ua", which is flash2's only path now.
DEFAULT_CONFIG = {"Br": 64, "Bc": 32, "RM": 8, "RN": 4, "warps_per_sm": 10,
                  "row_reduce": SHUFFLE, "kv_buffers": ONE_BUFFER, "stages": LOAD_THEN_COMPUTE,
                  "d_step": 4, "shared_index": UNSIGNED}
SIM_CONFIG = {"Br": 8, "Bc": 8, "RM": 2, "RN": 2}  # 16 threads: each is a Python thread there

# The variants PERF_NOTES.md measured, as configs over DEFAULT_CONFIG. v0 is the rung as first
# committed (RM = 4, 128-thread CTAs, shared-memory row max, signed indices); the names add
# u = UNSIGNED, a = SHUFFLE, b = TWO_BUFFERS, c = PREFETCH, d8 = d_step 8, rm8 = RM 8 (64-thread
# CTAs, warps_per_sm 10), wN = warps_per_sm N.
V0 = {"RM": 4, "warps_per_sm": 16, "row_reduce": SHARED, "shared_index": SIGNED}
_U, _A, _B, _C = ({"shared_index": UNSIGNED}, {"row_reduce": SHUFFLE}, {"kv_buffers": TWO_BUFFERS},
                  {"stages": PREFETCH})
_RM8 = {"RM": 8, "warps_per_sm": 10}
VARIANTS = {name: {**V0, **over} for name, over in {
    "v0": {},
    "a": _A,
    "b": _B,
    "u": _U,
    "ua": {**_U, **_A},
    "uab": {**_U, **_A, **_B},
    "uabc": {**_U, **_A, **_B, **_C},
    "uabd8": {**_U, **_A, **_B, "d_step": 8},
    "rm8-u": {**_RM8, **_U},
    "rm8-ua": {**_RM8, **_U, **_A},
    "rm8-uab": {**_RM8, **_U, **_A, **_B},
    "rm8-uab-w8": {**_RM8, **_U, **_A, **_B, "warps_per_sm": 8},
    "rm8-uabc-w8": {**_RM8, **_U, **_A, **_B, **_C, "warps_per_sm": 8},
}.items()}


def rung() -> Rung:
    """This module as a Rung, for the harness (verify.check, runner.run, the resource inspector)."""
    return Rung(5, "flash2_variants", LESSON, sys.modules[__name__])


def tiles(problem, config):
    """(Br, Bc, RM, RN, TR, TC) for this problem: Br capped at 4096 // D (the Q block rule), and at
    D > 64 RM capped at 4 (with Br = 32, RM = 8 would leave a CTA one warp)."""
    RM = min(config["RM"], 4) if problem.head_dim > 64 else config["RM"]
    Br = min(config["Br"], max(RM, Q_BLOCK_ELEMS // problem.head_dim))
    Bc, RN = config["Bc"], config["RN"]
    return Br, Bc, RM, RN, Br // RM, Bc // RN


def shared_bytes(Br, Bc, D, TC, row_reduce=SHARED, kv_buffers=ONE_BUFFER):
    """Static shared memory of one CTA: Q_i and the K_j/V_j buffer(s) (rows padded to D + 4), P
    (rows padded to Bc + max(4, TC)) and, unless rows reduce by shuffles, the row-reduction
    scratch (Br × TC), all float32."""
    red = Br * TC if row_reduce == SHARED else 0
    return 4 * (Br * (D + 4) + kv_buffers * Bc * (D + 4) + Br * (Bc + max(4, TC)) + red)


@cuda.jit(device=True, inline="always")
def as_unsigned(i):
    """i as an unsigned index: Numba then emits no negative-index wraparound (compare, select)."""
    return np.uint64(i)


@cuda.jit(device=True, inline="always")
def as_is(i):
    """i unchanged: Numba wraps negative indices unless the compiler proves i >= 0."""
    return i


@functools.cache
def build(Br, Bc, D, RM, RN, warps_per_sm=16, row_reduce=SHARED, kv_buffers=ONE_BUFFER,
          stages=LOAD_THEN_COMPUTE, d_step=4, shared_index=SIGNED):
    """The kernel for these tiles and head dim D (every array shape and loop bound a constant),
    and the variants the config selects (the module docstring)."""
    E = engine(Br, Bc, D, RM, RN)
    TR, TC = Br // RM, Bc // RN
    ROW_SHUFFLE = row_reduce == SHUFFLE  # row max and final row sum by warp shuffles
    TWO = kv_buffers == TWO_BUFFERS  # K_j and V_j each have a buffer: loaded together
    FETCH = stages == PREFETCH  # the next tile's K (and V) wait in registers during this one
    ix = as_unsigned if shared_index == UNSIGNED else as_is  # shared-memory indices in S and P V
    THREADS = TR * TC
    DP = D + 4  # padded row of Q_i and K_j / V_j in shared memory
    BP = Bc + max(4, TC)  # padded row of P
    DT = D // TC  # O columns per thread
    VW = 4 if DT % 4 == 0 else (2 if DT % 2 == 0 else 1)  # a thread's O columns come in runs of VW
    NV = DT // VW

    # Who copies what: with TPR = min(THREADS, D) threads per row (rule: one of THREADS, D divides
    # the other), thread t takes columns d0 + TPR·cc (cc < COLS) of rows r0 + RSTEP·it, where
    # d0 = t mod TPR and r0 = t div TPR. Consecutive threads take consecutive d: a warp's reads
    # are coalesced and its shared-memory stores hit 32 different banks.
    TPR = min(THREADS, D)  # threads per row of a tile
    RSTEP = THREADS // TPR  # rows copied at once
    COLS = D // TPR  # columns per thread and row

    def tile_prefetcher(ROWS):
        """fetch: the thread's share of ROWS × D elements of one head (tile_loader's) into a
        register array; stash: that array into a shared tile, after a barrier. The array is
        indexed only by constants of unrolled loops, so it lives in registers."""
        ITS = cdiv(ROWS, RSTEP)  # rows per thread
        EXACT = ROWS % RSTEP == 0

        @cuda.jit(device=True, inline="always")
        def fetch(src, b, h, row0, n, regs):
            """regs[it·COLS + cc] = src[b, h, row0 + r0 + RSTEP·it, d0 + TPR·cc] as float32, zeros
            for rows past n (only the last tile predicates its loads)."""
            t = cuda.threadIdx.x
            d0 = t % TPR
            r0 = t // TPR
            whole = row0 + ROWS <= n
            for it in range(ITS):
                r = r0 + RSTEP * it
                if EXACT or r < ROWS:
                    inside = whole or row0 + r < n
                    for cc in range(COLS):
                        x = float32(0)
                        if inside:
                            x = load_f32(src[b, h, np.uint64(row0 + r), np.uint64(d0 + TPR * cc)])
                        regs[it * COLS + cc] = x

        @cuda.jit(device=True, inline="always")
        def stash(regs, tile):
            """tile[r0 + RSTEP·it, d0 + TPR·cc] = regs[it·COLS + cc]."""
            t = cuda.threadIdx.x
            d0 = t % TPR
            r0 = t // TPR
            for it in range(ITS):
                r = r0 + RSTEP * it
                if EXACT or r < ROWS:
                    for cc in range(COLS):
                        tile[np.uint64(r), np.uint64(d0 + TPR * cc)] = regs[it * COLS + cc]

        return fetch, stash, ITS * COLS

    load_q, load_kv = E.load_q, E.load_kv  # the tile engine's loaders (workbench/kernels/tiles.py)
    fetch_kv, stash_kv, KV_REGS = tile_prefetcher(Bc)
    PF_REGS = KV_REGS if FETCH else 1  # registers for one prefetched tile (1: unused)
    VROWS = Bc if TWO else 1  # rows of V_j's own buffer (1: unused, V_j goes over K_j)
    RED_ROWS = 1 if ROW_SHUFFLE else Br  # rows of the reduction scratch (1: unused)
    SMEM = shared_bytes(Br, Bc, D, TC, row_reduce, kv_buffers)

    @cuda.jit(fastmath=FASTMATH, **jit_options(THREADS, SMEM, warps_per_sm))
    def flash2(q, k, v, o, lse, scale_log2, group, left, right):
        """CTA (x, bh) owns query block Q_i, i = Tr − 1 − x, of head bh; thread (tr, tc) its
        micro-tiles."""
        # (One shared array per line: the simulator aliases calls that share a line.)
        q_i = cuda.shared.array((Br, DP), float32, alignment=ALIGN)  # Q_i · scale·log2(e)
        k_j = cuda.shared.array((Bc, DP), float32, alignment=ALIGN)  # K_j (then V_j, 1 buffer)
        v_own = cuda.shared.array((VROWS, DP), float32, alignment=ALIGN)  # V_j (2 buffers)
        v_j = v_own if TWO else k_j
        p_ij = cuda.shared.array((Br, BP), float32, alignment=ALIGN)  # P_ij
        red = cuda.shared.array((RED_ROWS, TC), float32, alignment=ALIGN)  # row max, then sum
        s = cuda.local.array((RM, RN), float32)  # this thread's micro-tile of S, then of P
        acc = cuda.local.array((RM, DT), float32)  # its micro-tile of the unnormalised O
        m = cuda.local.array(RM, float32)  # running row max (base 2)
        l = cuda.local.array(RM, float32)  # running row sum over this thread's keys only
        qf = cuda.local.array((RM, d_step), float32)  # d_step values along D of my rows of Q_i
        kf = cuda.local.array((RN, d_step), float32)  # ... and of each of my keys of K_j
        pf = cuda.local.array((RM, 4), float32)  # 4 keys of P for each of my rows
        vf = cuda.local.array(DT, float32)  # my O columns of one row of V_j
        row_max = cuda.local.array(RM, float32)  # my rows' max over this tile (shuffles)
        k_next = cuda.local.array(PF_REGS, float32)  # my share of the next K tile (prefetch)
        v_next = cuda.local.array(PF_REGS, float32)  # ... and of a V tile

        t = cuda.threadIdx.x
        tr = t // TC
        tc = t - tr * TC
        heads = q.shape[1]
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y - b * heads
        hk = h // group  # the key/value head this query head reads (GQA)
        n_q = q.shape[2]
        n_kv = k.shape[2]
        shift = n_kv - n_q
        if q.shape[3] != D or k.shape[3] != D or v.shape[3] != D or o.shape[3] != D:
            return  # never taken (launch builds for this D); it tells the compiler that rows are
            # D elements long, so the addresses of a tile are one base plus constant offsets
        i0 = (cuda.gridDim.x - 1 - cuda.blockIdx.x) * Br  # heaviest (last) query blocks first

        # The KV tiles this CTA needs: first row's first key to last row's last key.
        i_last = min(i0 + Br, n_q) - 1  # the block's last row inside Nq
        ### BEGIN SOLUTION causal-skip
        key_lo = max(first_key(i0, shift, left), 0)
        key_hi = min(last_key(i_last, shift, right) + 1, n_kv)
        j_start = key_lo // Bc
        j_end = (key_hi + Bc - 1) // Bc if key_hi > key_lo else j_start
        ### END SOLUTION
        # Keys every row of the block sees: the last row's first key to the first row's last.
        # A tile inside [inner_lo, inner_hi) needs no mask (rows past Nq compute on zeros of Q
        # there and are never stored).
        inner_lo = max(first_key(i_last, shift, left), 0)
        inner_hi = min(last_key(i0, shift, right) + 1, n_kv)

        for a in range(RM):
            m[a] = NEG_INF
            l[a] = float32(0)
            for x in range(DT):
                acc[a, x] = float32(0)

        load_q(q, b, h, i0, n_q, scale_log2, q_i)  # Q_i, once (made visible below)
        if FETCH and j_start < j_end:
            fetch_kv(k, b, hk, np.uint32(j_start * Bc), n_kv, k_next)  # K of the first tile
            if TWO:
                fetch_kv(v, b, hk, np.uint32(j_start * Bc), n_kv, v_next)

        for j in range(j_start, j_end):
            j0 = np.uint32(j * Bc)  # (unsigned: no negative-index wraparound code)
            cuda.syncthreads()  # every thread is done with V_{j-1} (and P_{j-1})
            if FETCH:  # K_j (and V_j) from registers; then tile j+1's loads, in flight
                stash_kv(k_next, k_j)
                if TWO:
                    stash_kv(v_next, v_j)
                    if j + 1 < j_end:
                        fetch_kv(k, b, hk, j0 + Bc, n_kv, k_next)
                        fetch_kv(v, b, hk, j0 + Bc, n_kv, v_next)
                else:
                    fetch_kv(v, b, hk, j0, n_kv, v_next)  # (stored over K_j after S)
            else:
                load_kv(k, b, hk, j0, n_kv, float32(1), k_j)
                if TWO:
                    load_kv(v, b, hk, j0, n_kv, float32(1), v_j)
            cuda.syncthreads()  # K_j (and V_j) is in shared memory

            # S = Q_i K_jᵀ on my RM × RN micro-tile, d_step elements of D (d_step / 4 16-byte
            # loads of each row) a trip.
            for a in range(RM):
                for c in range(RN):
                    s[a, c] = float32(0)
            d = 0
            while d < D:  # (a plain counter: the compiler sees 0 <= d < D, no wraparound code)
                for a in range(RM):
                    for u in range(d_step):
                        qf[a, u] = q_i[ix(tr + TR * a), ix(d + u)]
                for c in range(RN):
                    for u in range(d_step):
                        kf[c, u] = k_j[ix(tc + TC * c), ix(d + u)]
                for a in range(RM):
                    for c in range(RN):
                        for u in range(d_step):
                            s[a, c] += qf[a, u] * kf[c, u]
                d += d_step

            # Mask (only tiles on the mask's edge: the branch is the same for the whole CTA),
            # then each row's max over my keys into the scratch row.
            if j0 < inner_lo or j0 + Bc > inner_hi:
                for a in range(RM):
                    row = i0 + tr + TR * a
                    for c in range(RN):
                        key = j0 + tc + TC * c
                        if row >= n_q or key >= n_kv or not visible(row, key, shift, left, right):
                            s[a, c] = NEG_INF
            for a in range(RM):
                mx = s[a, 0]
                for c in range(1, RN):
                    mx = max(mx, s[a, c])
                if ROW_SHUFFLE:  # the row's TC threads are lanes of one warp: a butterfly
                    row_max[a] = segment_max(FULL_MASK, mx, TC)
                else:
                    red[tr + TR * a, tc] = mx
            if not ROW_SHUFFLE:
                warp_sync()  # the TC threads of a row are in one warp

            # m_new, alpha, P = 2^(S - m_new), l; O rescaled (not normalised).
            ### BEGIN SOLUTION
            for a in range(RM):
                r = tr + TR * a
                m_new = m[a]
                if ROW_SHUFFLE:
                    m_new = max(m_new, row_max[a])
                else:
                    for w in range(TC):
                        m_new = max(m_new, red[r, w])
                # A row that has seen no key yet keeps m = -inf; 0 stands in so exp2 stays finite.
                m_use = m_new if m_new != NEG_INF else float32(0)
                alpha = math.exp2(m[a] - m_use)
                m[a] = m_new
                rowsum = float32(0)
                for c in range(RN):
                    p = math.exp2(s[a, c] - m_use)
                    rowsum += p
                    p_ij[r, tc + TC * c] = p
                l[a] = alpha * l[a] + rowsum
                for x in range(DT):
                    acc[a, x] *= alpha
            ### END SOLUTION

            if TWO:
                warp_sync()  # P_ij's rows are written and read by the TC threads of one warp
            else:
                cuda.syncthreads()  # every thread is done with K_j (and P_ij is in shared memory)
                if FETCH:
                    stash_kv(v_next, v_j)
                else:
                    load_kv(v, b, hk, j0, n_kv, float32(1), v_j)
                cuda.syncthreads()  # V_j is in shared memory
                if FETCH and j + 1 < j_end:
                    fetch_kv(k, b, hk, j0 + Bc, n_kv, k_next)  # K_{j+1}, in flight during P V_j

            # O += P_ij V_j on my RM × DT micro-tile, 8 keys a trip (two 16-byte loads of P a row).
            c0 = 0
            while c0 < Bc:
                for half in range(2):
                    c = c0 + 4 * half
                    for a in range(RM):
                        for u in range(4):
                            pf[a, u] = p_ij[ix(tr + TR * a), ix(c + u)]
                    for u in range(4):
                        for n in range(NV):
                            for w in range(VW):
                                vf[n * VW + w] = v_j[ix(c + u), ix(VW * (tc + TC * n) + w)]
                        for a in range(RM):
                            for x in range(DT):
                                acc[a, x] += pf[a, u] * vf[x]
                c0 += 8

        # l: add the TC partial sums of each row (the scratch's last max reads were before the
        # barriers above; its rows belong to this warp only).
        for a in range(RM):
            if ROW_SHUFFLE:
                l[a] = segment_sum(FULL_MASK, l[a], TC)  # the whole row's l, in all its lanes
            else:
                red[tr + TR * a, tc] = l[a]
        if not ROW_SHUFFLE:
            warp_sync()

        # O = O / l once; LSE = ln2 · (m + log2 l). A row that saw no key: O = 0, LSE = -inf.
        ### BEGIN SOLUTION
        for a in range(RM):
            r = tr + TR * a
            row = i0 + r
            if ROW_SHUFFLE:
                l_row = l[a]
            else:
                l_row = float32(0)
                for w in range(TC):
                    l_row += red[r, w]
            if row < n_q:
                inv_l = float32(1) / l_row if l_row > float32(0) else float32(0)
                for n in range(NV):
                    for w in range(VW):
                        col = np.uint64(VW * (tc + TC * n) + w)
                        o[b, h, np.uint64(row), col] = to_io(acc[a, n * VW + w] * inv_l, o)
                if tc == 0:
                    lse[b, h, row] = ((m[a] + math.log2(l_row)) * LN2 if l_row > float32(0)
                                      else NEG_INF)
        ### END SOLUTION

    return flash2


def needs(problem, config):
    Br, Bc, RM, RN, TR, TC = tiles(problem, config)
    D = problem.head_dim
    return Needs(
        shared_bytes=shared_bytes(Br, Bc, D, TC, config["row_reduce"], config["kv_buffers"]),
        head_dims=HEAD_DIMS,  # the old flash2's: its tile rules and prefetcher assume these
        dtypes=("float32", "float16", "bfloat16"),
        rules={
            **engine_rules(Br, Bc, RM, RN, D, config["warps_per_sm"]),
            "row_reduce is 1 (SHARED) or 2 (SHUFFLE)": config["row_reduce"] in (SHARED, SHUFFLE),
            "kv_buffers is 1 or 2": config["kv_buffers"] in (1, 2),
            "stages is 1 or 2": config["stages"] in (1, 2),
            "d_step is 4, 8 or 16 and divides D": config["d_step"] in (4, 8, 16)
                and D % config["d_step"] == 0,
            "shared_index is 1 (SIGNED) or 2 (UNSIGNED)":
                config["shared_index"] in (SIGNED, UNSIGNED),
        },
    )


def workspace_bytes(problem, config):
    """None: O, m and l stay on chip (registers) from the first KV tile to the last."""
    return 0


def launch(problem, config, q, k, v, o, lse, gpu):
    p = problem
    Br, Bc, RM, RN, TR, TC = tiles(p, config)
    left, right = p.mask_bounds()
    kernel = build(Br, Bc, p.head_dim, RM, RN, config["warps_per_sm"], config["row_reduce"],
                   config["kv_buffers"], config["stages"], config["d_step"],
                   config["shared_index"])
    gpu.launch(kernel, (cdiv(p.seq_q, Br), p.batch * p.heads), TR * TC,
               q, k, v, o, lse, LOG2E * np.float32(p.scale), p.group, left, right)
