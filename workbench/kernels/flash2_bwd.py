"""Backward of flash2 — FlashAttention-2's backward pass (Dao 2023, Algorithm 2 of FA2).

Training needs dQ, dK, dV for an upstream gradient dO. Written out (reference.attention_backward):

    P  = exp(S − LSE)            S = scale · Q Kᵀ, LSE saved by the forward (no softmax to redo)
    dV = Pᵀ dO                   dP = dO Vᵀ
    D  = rowsum(dO ∘ O)          (= rowsum(P ∘ dP): one number per query row)
    dS = P ∘ (dP − D)
    dQ = scale · dS K            dK = scale · dSᵀ Q

Standard attention keeps P (N²) from the forward; FlashAttention keeps only O and LSE (N) and
recomputes each tile of S, hence of P, on chip. The forward's LSE is what makes that cheap: P is
exp(S − LSE) directly, with no running max, no running sum and no rescaling.

Three kernels:

1. `bwd_prep`, the paper's preprocessing: D = rowsum(dO ∘ O) per query row (a warp per row), and
   LSE in base 2, with −inf (a row that sees no key) turned into +inf so that every P of that row
   is 2^(S − ∞) = 0 with no test. Workspace: two float32 numbers per query row.
2. `bwd_dkdv`, Algorithm 2's main loop: a CTA owns one K/V block (Bc keys of one key/value head)
   and keeps K_j, V_j in shared memory and dK_j, dV_j in registers, while it streams the query
   blocks Q_i, dO_i (Br rows) that see any of its keys:
       Sᵀ = K_j Q_iᵀ,  dPᵀ = V_j dO_iᵀ                (Bc × Br, one pass over D for both)
       P = 2^(S·scale·log2e − LSE₂),  dS = P ∘ (dP − D)     (to shared memory)
       dV_j += Pᵀ dO_i,   dK_j += dSᵀ Q_i              (Bc × D each, in registers)
   GQA: the CTA also loops over the query heads of its key/value head's group, so dK, dV come out
   summed over the group in registers — no atomics, no reduction kernel, one write per element.
3. `bwd_dq`: a CTA owns one query block (like the forward), recomputes S and dP for each K/V tile
   and accumulates dQ_i += dS K_j in registers.

The choice for dQ. The paper's Algorithm 2 adds each CTA's dS K_j into dQ in device memory with
atomic adds from every K/V block. We recompute instead: the dQ kernel redoes the two matmuls
S = Q Kᵀ and dP = dO Vᵀ (7 matmuls in all instead of 5, so about 1.4× the backward's arithmetic),
and in exchange there is no float32 dQ workspace, no cast kernel, and no atomics. Float atomics
add in whatever order the CTAs arrive, so dQ would differ in its last bits from run to run; here
every output element is written once by one thread in a fixed order, and two launches agree bit
for bit (the harness checks it, as for the forward rungs). Triton's fused-attention tutorial and
FlashAttention-2's Triton backward split dK/dV and dQ the same way.

Masks, skipping and layout as in flash2. The dK/dV CTA of keys j0 … j_last needs only query rows
i with i + shift − left ≤ j_last and i + shift + right ≥ j0, so under causal it visits about half
of the query blocks, and under a window (w, 0) about (Bc + w) / Br + 1 of them. Tiles inside the
mask evaluate no mask. The thread (tr, tc) of a TR × TC grid owns an RM × RN micro-tile of Sᵀ
and dPᵀ (key rows tr + TR·a, query columns tc + TC·b) in the first phase; in the second it owns
AM rows × DT columns of dK_j and dV_j (rows ta + TA·a, columns td + TD·x with TD = min(32,
threads, D rounded down to a power of two)), so a warp's loads of a dO or Q row are consecutive
words. Where TD does not divide D (D = 80: DT = 3 runs of 32 columns), the register tiles are
padded: the columns past D read as zeros and are never stored (no input is copied). Shared rows
are padded by one float, so threads reading the same column of different rows hit different banks.

Tiles are config keys: Br query rows, Bc keys, RM × RN the micro-tile. Every head dim that is a
multiple of 8 up to 256. Br and Bc are capped at the largest power of two with which Q_i, dO_i,
K_j, V_j and the P/dS tiles fit 48 KiB of static shared memory: 32 × 32 up to D = 72 (256
threads), 16 × 16 up to D = 176 (64 threads), 8 × 8 above; where the cap cuts the tiles, RM and
RN are cut to at most a cap's eighth, so a CTA keeps 64 threads (1 × 1 micro-tiles above 176).
Float16 and bfloat16 (uint16 bits) I/O is converted to float32 on load (common.load_f32) and back
on store (common.to_io); all arithmetic and accumulation is float32.
"""

import functools
import math

import numpy as np
from numba import cuda, float32

from .common import (FASTMATH, LOG2E, NEG_INF, cdiv, first_key, kv_tile_range, last_key, load_f32,
                     to_io, visible)
from .contract import Needs
from .hardware import STATIC_SHARED, jit_options

LESSON = ("FA2 backward: recompute P from the saved LSE; a CTA owns a K/V block and accumulates "
          "dK, dV on chip; dQ by a second pass (no atomics, deterministic)")
DEFAULT_CONFIG = {"Br": 32, "Bc": 32, "RM": 2, "RN": 2}
SIM_CONFIG = {"Br": 8, "Bc": 8, "RM": 2, "RN": 2}
HEAD_DIMS = tuple(range(8, 257, 8))
PREP_ROWS = 8  # query rows per CTA of the preprocessing kernel (a warp each)
WARPS_PER_SM = 16  # the occupancy launch_bounds sizes registers for (2 CTAs at D = 64, 5 at 128)
INF = float32(math.inf)


def tiles(problem, config):
    """(Br, Bc, RM, RN) for this problem: Br and Bc capped at the largest power of two with which
    the tiles fit 48 KiB (8 at least), and where that cuts them RM, RN at cap / 8 (8 × 8 threads
    at least: 64 for the default tiles at every D)."""
    D = problem.head_dim
    Br, Bc, RM, RN = config["Br"], config["Bc"], config["RM"], config["RN"]
    cap = 1 << (max(Br, Bc) - 1).bit_length()  # a power of two >= both tiles
    while cap > 8 and shared_bytes(min(Br, cap), min(Bc, cap), D) > STATIC_SHARED:
        cap //= 2
    if cap < max(Br, Bc):
        RM, RN = min(RM, max(1, cap // 8)), min(RN, max(1, cap // 8))
    cap = max(RM, RN, cap)
    return min(Br, cap), min(Bc, cap), RM, RN


def layout(rows, cols, RM, RN, D):
    """Thread grid of a kernel whose first phase is a rows × cols tile (RM × RN per thread) and
    whose second accumulates a rows × D tile, D padded to DT·TD columns: (TR, TC, THREADS, TD, TA,
    AM, DT)."""
    TR, TC = rows // RM, cols // RN
    threads = TR * TC
    TD = min(32, threads, 1 << D.bit_length() - 1)
    TA = threads // TD
    return TR, TC, threads, TD, TA, max(1, rows // TA), cdiv(D, TD)  # (DT·TD >= D: padded)


def shared_bytes(Br, Bc, D):
    """The larger of the two main kernels: four (rows × (D + 1)) tiles and the P / dS tiles."""
    tiles_ = 2 * (Br + Bc) * (D + 1)
    dkdv = tiles_ + 2 * Bc * (Br + 1) + 2 * Br
    dq = tiles_ + Br * (Bc + 1)
    return 4 * max(dkdv, dq)


def _loader(ROWS, D, THREADS):
    """A device function copying ROWS × D of one head into shared memory as float32, zeros for
    rows past n; consecutive threads take consecutive d (coalesced reads)."""
    TOTAL = ROWS * D

    @cuda.jit(device=True, inline="always")
    def load(src, b, h, row0, n, tile):
        for idx in range(cuda.threadIdx.x, TOTAL, THREADS):
            r = idx // D
            d = idx - r * D
            x = float32(0)
            if row0 + r < n:
                x = load_f32(src[b, h, np.uint64(row0 + r), np.uint64(d)])
            tile[r, d] = x

    return load


@functools.cache
def build_prep(D):
    """D = rowsum(dO ∘ O) and LSE₂ = LSE·log2(e) (−inf → +inf): a warp per query row."""

    @cuda.jit(fastmath=FASTMATH)
    def bwd_prep(o, do, lse, lse2, delta):
        red = cuda.shared.array((PREP_ROWS, 33), float32)
        t = cuda.threadIdx.x
        lane = t % 32
        rr = t // 32
        heads = o.shape[1]
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y - b * heads
        i = cuda.blockIdx.x * PREP_ROWS + rr
        n_q = o.shape[2]
        acc = float32(0)
        if i < n_q:
            for d in range(lane, D, 32):
                acc += load_f32(do[b, h, i, d]) * load_f32(o[b, h, i, d])
        red[rr, lane] = acc
        cuda.syncthreads()
        if lane == 0 and i < n_q:
            total = float32(0)
            for w in range(32):
                total += red[rr, w]
            delta[b, h, i] = total
            x = lse[b, h, i]
            lse2[b, h, i] = x * LOG2E if x != NEG_INF else INF

    return bwd_prep


@functools.cache
def build_dkdv(Br, Bc, D, RM, RN):
    """CTA (j, b·Hkv + hk): dK_j, dV_j of Bc keys, summed over the group's query heads."""
    TR, TC, THREADS, TD, TA, AM, DT = layout(Bc, Br, RM, RN, D)
    PAD = DT * TD > D  # my last run of columns may pass D (those read as zeros, never stored)
    DP, BP = D + 1, Br + 1
    load_q = _loader(Br, D, THREADS)
    load_kv = _loader(Bc, D, THREADS)
    @cuda.jit(fastmath=FASTMATH, **jit_options(THREADS, shared_bytes(Br, Bc, D), WARPS_PER_SM))
    def bwd_dkdv(q, k, v, do, lse2, delta, dk, dv, scale_log2, scale, group, left, right):
        k_j = cuda.shared.array((Bc, DP), float32)
        v_j = cuda.shared.array((Bc, DP), float32)
        q_i = cuda.shared.array((Br, DP), float32)
        do_i = cuda.shared.array((Br, DP), float32)
        p_s = cuda.shared.array((Bc, BP), float32)  # Pᵀ tile (keys × query rows)
        ds_s = cuda.shared.array((Bc, BP), float32)  # dSᵀ tile
        l_s = cuda.shared.array(Br, float32)  # LSE₂ of the block's rows (+inf past Nq)
        d_s = cuda.shared.array(Br, float32)  # D of the block's rows
        st = cuda.local.array((RM, RN), float32)
        dpt = cuda.local.array((RM, RN), float32)
        kf = cuda.local.array(RM, float32)
        vf = cuda.local.array(RM, float32)
        qf = cuda.local.array(RN, float32)
        of = cuda.local.array(RN, float32)
        acc_k = cuda.local.array((AM, DT), float32)
        acc_v = cuda.local.array((AM, DT), float32)
        q_row = cuda.local.array(DT, float32)
        do_row = cuda.local.array(DT, float32)

        t = cuda.threadIdx.x
        tr = t // TC
        tc = t - tr * TC
        ta = t // TD
        td = t - ta * TD
        kv_heads = k.shape[1]
        b = cuda.blockIdx.y // kv_heads
        hk = cuda.blockIdx.y - b * kv_heads
        n_q = q.shape[2]
        n_kv = k.shape[2]
        shift = n_kv - n_q
        j0 = cuda.blockIdx.x * Bc
        j_last = min(j0 + Bc, n_kv) - 1
        # Query rows that see at least one key of this block.
        i_lo = max(j0 - shift - right, 0)
        i_hi = min(j_last - shift + left + 1, n_q)

        for a in range(AM):
            for x in range(DT):
                acc_k[a, x] = float32(0)
                acc_v[a, x] = float32(0)
        load_kv(k, b, hk, j0, n_kv, k_j)
        load_kv(v, b, hk, j0, n_kv, v_j)

        ib_end = (i_hi + Br - 1) // Br if i_hi > i_lo else 0
        for g in range(group):
            h = hk * group + g
            for ib in range(i_lo // Br, ib_end):
                i0 = ib * Br
                cuda.syncthreads()  # everyone is done with the previous Q_i, dO_i, P, dS
                load_q(q, b, h, i0, n_q, q_i)
                load_q(do, b, h, i0, n_q, do_i)
                for r in range(t, Br, THREADS):
                    inside = i0 + r < n_q
                    l_s[r] = lse2[b, h, i0 + r] if inside else INF
                    d_s[r] = delta[b, h, i0 + r] if inside else float32(0)
                cuda.syncthreads()  # the tiles are in shared memory

                # Sᵀ = K_j Q_iᵀ and dPᵀ = V_j dO_iᵀ on my RM × RN micro-tile, one pass over D.
                for a in range(RM):
                    for c in range(RN):
                        st[a, c] = float32(0)
                        dpt[a, c] = float32(0)
                for d in range(D):
                    for a in range(RM):
                        kf[a] = k_j[tr + TR * a, d]
                        vf[a] = v_j[tr + TR * a, d]
                    for c in range(RN):
                        qf[c] = q_i[tc + TC * c, d]
                        of[c] = do_i[tc + TC * c, d]
                    for a in range(RM):
                        for c in range(RN):
                            st[a, c] += kf[a] * qf[c]
                            dpt[a, c] += vf[a] * of[c]

                # P = 2^(S·scale·log2e − LSE₂), dS = P ∘ (dP − D); the mask only on edge tiles.
                edge = not (i0 + Br <= n_q and j0 + Bc <= n_kv
                            and first_key(i0 + Br - 1, shift, left) <= j0
                            and j0 + Bc - 1 <= last_key(i0, shift, right))
                for a in range(RM):
                    key = tr + TR * a
                    for c in range(RN):
                        row = tc + TC * c
                        x = st[a, c] * scale_log2 - l_s[row]  # <= 0 where visible
                        if edge:  # masked before exponentiating: a masked x may be huge
                            if (i0 + row >= n_q or j0 + key >= n_kv
                                    or not visible(i0 + row, j0 + key, shift, left, right)):
                                x = NEG_INF
                        p = math.exp2(x)
                        p_s[key, row] = p
                        ds_s[key, row] = p * (dpt[a, c] - d_s[row])
                cuda.syncthreads()  # P and dS are in shared memory

                # dV_j += Pᵀ dO_i and dK_j += dSᵀ Q_i on my AM × DT micro-tile.
                for r in range(Br):
                    for x in range(DT):
                        col = td + TD * x
                        inside = not PAD or x < DT - 1 or col < D
                        do_row[x] = do_i[r, col] if inside else float32(0)
                        q_row[x] = q_i[r, col] if inside else float32(0)
                    for a in range(AM):
                        pa = p_s[ta + TA * a, r]
                        dsa = ds_s[ta + TA * a, r]
                        for x in range(DT):
                            acc_v[a, x] += pa * do_row[x]
                            acc_k[a, x] += dsa * q_row[x]

        for a in range(AM):
            key = j0 + ta + TA * a
            if key < n_kv:
                for x in range(DT):
                    col = td + TD * x
                    if not PAD or x < DT - 1 or col < D:
                        d = np.uint64(col)
                        dk[b, hk, np.uint64(key), d] = to_io(acc_k[a, x] * scale, dk)
                        dv[b, hk, np.uint64(key), d] = to_io(acc_v[a, x], dv)

    return bwd_dkdv


@functools.cache
def build_dq(Br, Bc, D, RM, RN):
    """CTA (x, b·H + h): dQ_i of Br query rows, i = Tr − 1 − x (heaviest first, as flash2)."""
    TR, TC, THREADS, TD, TA, AM, DT = layout(Br, Bc, RM, RN, D)
    PAD = DT * TD > D  # as in bwd_dkdv
    DP, BP = D + 1, Bc + 1
    load_q = _loader(Br, D, THREADS)
    load_kv = _loader(Bc, D, THREADS)
    @cuda.jit(fastmath=FASTMATH, **jit_options(THREADS, shared_bytes(Br, Bc, D), WARPS_PER_SM))
    def bwd_dq(q, k, v, do, lse2, delta, dq, scale_log2, scale, group, left, right):
        q_i = cuda.shared.array((Br, DP), float32)
        do_i = cuda.shared.array((Br, DP), float32)
        k_j = cuda.shared.array((Bc, DP), float32)
        v_j = cuda.shared.array((Bc, DP), float32)
        ds_s = cuda.shared.array((Br, BP), float32)  # dS tile (query rows × keys)
        s = cuda.local.array((RM, RN), float32)
        dp = cuda.local.array((RM, RN), float32)
        lrow = cuda.local.array(RM, float32)
        drow = cuda.local.array(RM, float32)
        qf = cuda.local.array(RM, float32)
        of = cuda.local.array(RM, float32)
        kf = cuda.local.array(RN, float32)
        vf = cuda.local.array(RN, float32)
        acc = cuda.local.array((AM, DT), float32)
        k_row = cuda.local.array(DT, float32)

        t = cuda.threadIdx.x
        tr = t // TC
        tc = t - tr * TC
        ta = t // TD
        td = t - ta * TD
        heads = q.shape[1]
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y - b * heads
        hk = h // group
        n_q = q.shape[2]
        n_kv = k.shape[2]
        shift = n_kv - n_q
        i0 = (cuda.gridDim.x - 1 - cuda.blockIdx.x) * Br
        j_start, j_end = kv_tile_range(i0, min(i0 + Br, n_q) - 1, Bc, shift, left, right, n_kv)

        for a in range(AM):
            for x in range(DT):
                acc[a, x] = float32(0)
        for a in range(RM):
            row = i0 + tr + TR * a
            lrow[a] = lse2[b, h, row] if row < n_q else INF
            drow[a] = delta[b, h, row] if row < n_q else float32(0)
        load_q(q, b, h, i0, n_q, q_i)
        load_q(do, b, h, i0, n_q, do_i)

        for j in range(j_start, j_end):
            j0 = j * Bc
            cuda.syncthreads()  # everyone is done with K_{j-1}, dS_{j-1}
            load_kv(k, b, hk, j0, n_kv, k_j)
            load_kv(v, b, hk, j0, n_kv, v_j)
            cuda.syncthreads()

            for a in range(RM):
                for c in range(RN):
                    s[a, c] = float32(0)
                    dp[a, c] = float32(0)
            for d in range(D):
                for a in range(RM):
                    qf[a] = q_i[tr + TR * a, d]
                    of[a] = do_i[tr + TR * a, d]
                for c in range(RN):
                    kf[c] = k_j[tc + TC * c, d]
                    vf[c] = v_j[tc + TC * c, d]
                for a in range(RM):
                    for c in range(RN):
                        s[a, c] += qf[a] * kf[c]
                        dp[a, c] += of[a] * vf[c]

            edge = not (i0 + Br <= n_q and j0 + Bc <= n_kv
                        and first_key(i0 + Br - 1, shift, left) <= j0
                        and j0 + Bc - 1 <= last_key(i0, shift, right))
            for a in range(RM):
                row = tr + TR * a
                for c in range(RN):
                    key = tc + TC * c
                    x = s[a, c] * scale_log2 - lrow[a]  # <= 0 where visible
                    if edge:  # masked before exponentiating: a masked x may be huge
                        if (i0 + row >= n_q or j0 + key >= n_kv
                                or not visible(i0 + row, j0 + key, shift, left, right)):
                            x = NEG_INF
                    p = math.exp2(x)
                    ds_s[row, key] = p * (dp[a, c] - drow[a])
            cuda.syncthreads()  # dS is in shared memory

            # dQ_i += dS K_j on my AM × DT micro-tile.
            for c in range(Bc):
                for x in range(DT):
                    col = td + TD * x
                    k_row[x] = k_j[c, col] if not PAD or x < DT - 1 or col < D else float32(0)
                for a in range(AM):
                    dsa = ds_s[ta + TA * a, c]
                    for x in range(DT):
                        acc[a, x] += dsa * k_row[x]

        for a in range(AM):
            row = i0 + ta + TA * a
            if row < n_q:
                for x in range(DT):
                    col = td + TD * x
                    if not PAD or x < DT - 1 or col < D:
                        dq[b, h, np.uint64(row), np.uint64(col)] = to_io(acc[a, x] * scale, dq)

    return bwd_dq


def needs(problem, config):
    Br, Bc, RM, RN = tiles(problem, config)
    D = problem.head_dim
    rules = {"RM divides Br and Bc (after the shared-memory cap)": Br % RM == 0 and Bc % RM == 0,
             "RN divides Br and Bc": Br % RN == 0 and Bc % RN == 0}
    for name, rows, cols in (("dK/dV", Bc, Br), ("dQ", Br, Bc)):
        if rows % RM or cols % RN:
            continue
        TR, TC, threads, TD, TA, AM, DT = layout(rows, cols, RM, RN, D)
        rules[f"{name}: threads / TD divides its {rows} rows"] = rows % TA == 0
    return Needs(shared_bytes=shared_bytes(Br, Bc, D), head_dims=HEAD_DIMS,
                 dtypes=("float32", "float16", "bfloat16"), rules=rules)


def workspace_bytes(problem, config):
    """LSE₂ and D: two float32 numbers per query row (dQ needs no workspace: no atomics)."""
    return 2 * 4 * problem.batch * problem.heads * problem.seq_q


def launch(problem, config, q, k, v, o, lse, do, dq, dk, dv, gpu):
    p = problem
    Br, Bc, RM, RN = tiles(p, config)
    D = p.head_dim
    left, right = p.mask_bounds()
    lse2 = gpu.empty(p.lse_shape, np.float32)
    delta = gpu.empty(p.lse_shape, np.float32)
    gpu.launch(build_prep(D), (cdiv(p.seq_q, PREP_ROWS), p.batch * p.heads), 32 * PREP_ROWS,
               o, do, lse, lse2, delta)
    scale_log2, scale = LOG2E * np.float32(p.scale), np.float32(p.scale)
    threads_kv = (Bc // RM) * (Br // RN)
    gpu.launch(build_dkdv(Br, Bc, D, RM, RN), (cdiv(p.seq_kv, Bc), p.batch * p.kv_heads), threads_kv,
               q, k, v, do, lse2, delta, dk, dv, scale_log2, scale, p.group, left, right)
    threads_q = (Br // RM) * (Bc // RN)
    gpu.launch(build_dq(Br, Bc, D, RM, RN), (cdiv(p.seq_q, Br), p.batch * p.heads), threads_q,
               q, k, v, do, lse2, delta, dq, scale_log2, scale, p.group, left, right)
