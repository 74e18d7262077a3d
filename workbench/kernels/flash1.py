"""Rung 4 — flash1: FlashAttention-1's loop order (Dao et al. 2022, Algorithm 1 of FA1).

Rung 3 (online) has each block own a query block Q_i and stream every K_j, V_j past it: K and V
are read once per query block (Tr times). FlashAttention-1 puts the loops the other way round, so
that K and V are read from device memory once: one thread block (CTA) per (batch, head) walks the
KV tiles K_j, V_j of Bc keys in the outer loop and sweeps the query blocks Q_i of Br rows inside.
With Tr = ⌈Nq / Br⌉ and Tc = ⌈Nkv / Bc⌉, CTA b·h runs, in the paper's notation:

    O = 0 (Nq × D), l = 0, m = -inf (Nq each), in device memory
    for j = 1 … Tc, and inside it i = 1 … Tr:                (every tile: nothing skipped)
        load K_j, V_j into shared memory (at i = 1)          (kept for the whole sweep)
        load Q_i, and m, l, O of its rows, from device memory
        S     = scale · Q_i K_jᵀ                             (Br × Bc; masked pairs -inf)
        m_new = max(m, rowmax(S))
        alpha = exp(m − m_new)                               (rescales what came before)
        P     = exp(S − m_new)                               (to shared memory)
        l_new = alpha · l + rowsum(P)
        O     = (alpha · l · O + P V_j) / l_new              (normalised at every step)
        m, l  = m_new, l_new;  write m, l, O back            (and LSE = m + log(l) at j = Tc)

What changes against online, and why:
- Loop order: K and V are read once. The price: Q_i is read Tc times, O_i (float32), m_i, l_i go
  to device memory and back between visits (about Tc · Nq · (D · (itemsize + 8) + 16) bytes per
  head), and only B·H CTAs run (FA1's later `num_splits` split the Q loop; not done here).
- Normalised every step (rung 3's online softmax in the paper's form): O_i leaves the chip after
  every tile, so each step needs the whole row's l (its TC threads add their sums by shuffles).
- K_j and V_j stay in shared memory for a whole sweep, in two buffers (Bc halves at large D).
- A tile engine (below) instead of a thread per row, as in FA1's CUDA code.

Rungs 4 and 5 share one tile engine (workbench/kernels/tiles.py: TR × TC threads with register
tiles of S and O, loads, row maxima by shuffles, launch bounds). Scores are in base-2 units (Q_i is
loaded times scale·log2 e), so P = 2^(S − m) is one MUFU.EX2 and LSE = ln2 · (m + log2 l).

Masks (bottom-right causal, windows) and GQA as in rung 1. K/V loads past Nkv are zero-filled and
those keys masked, and Q rows past Nq are zero and never stored, so any length works. A row that
sees no key keeps m = -inf and l = 0, never computes exp(-inf − -inf), and ends with O = 0 and
LSE = -inf (its exponent uses 0 in place of m). Only tiles on the mask's edge evaluate the mask.
Every head dim that is a multiple of 8 up to 256. Float16 and bfloat16 in and out, float32
arithmetic (tiles.py).
"""

import functools
import math

import numpy as np
from numba import cuda, float32

from .common import FASTMATH, LN2, LOG2E, NEG_INF, cdiv
from .contract import Needs
from .hardware import ALIGN, jit_options, warp_sync
from .tiles import HEAD_DIMS, engine, rules, shared_bytes, tile_shape
from .warp import FULL_MASK, segment_sum, shfl_idx

LESSON = "FA1 loop order: KV blocks outside, Q blocks inside; O, m, l re-read and re-written per KV block"
# flash2's tiles, but 255 registers: B·H CTAs seldom put 3 on an SM (and at 168, D = 64 spills).
DEFAULT_CONFIG = {"Br": 64, "Bc": 32, "RM": 8, "RN": 4, "warps_per_sm": 8}
SIM_CONFIG = {"Br": 8, "Bc": 8, "RM": 2, "RN": 2}  # 16 threads: each is a Python thread there
KV_BUFFERS = 2  # K_j and V_j, both for the whole sweep over Q blocks
tiles = functools.partial(tile_shape, kv_buffers=KV_BUFFERS)  # (Br, Bc, RM, RN, TR, TC)


@functools.cache
def build(Br, Bc, D, RM, RN, warps_per_sm=DEFAULT_CONFIG["warps_per_sm"]):
    """The kernel for these tiles and head dim D (every array shape and loop bound a constant)."""
    E = engine(Br, Bc, D, RM, RN)
    TR, TC, DP, BP, DT = E.TR, E.TC, E.DP, E.BP, E.DT
    thread, load_q, load_kv, scores, mask = E.thread, E.load_q, E.load_kv, E.scores, E.mask
    row_max, add_pv, load_row, store_row = E.row_max, E.add_pv, E.load_row, E.store_row
    SMEM = shared_bytes(Br, Bc, D, TC, KV_BUFFERS)

    @cuda.jit(fastmath=FASTMATH, **jit_options(E.THREADS, SMEM, warps_per_sm))
    def flash1(q, k, v, o, lse, o_acc, m_acc, l_acc, scale_log2, group, left, right):
        """CTA bh walks every (KV tile j, Q block i) of head bh; thread (tr, tc) its micro-tiles."""
        # (One shared array per line: the simulator aliases calls that share a line.)
        q_i = cuda.shared.array((Br, DP), float32, alignment=ALIGN)  # Q_i · scale·log2(e)
        k_j = cuda.shared.array((Bc, DP), float32, alignment=ALIGN)  # K_j
        v_j = cuda.shared.array((Bc, DP), float32, alignment=ALIGN)  # V_j
        p_ij = cuda.shared.array((Br, BP), float32, alignment=ALIGN)  # P_ij
        s = cuda.local.array((RM, RN), float32)  # my micro-tile of S, then of P
        acc = cuda.local.array((RM, DT), float32)  # my micro-tile of O_i (read, updated, written back)
        m = cuda.local.array(RM, float32)  # m_i of my rows (base 2)
        l = cuda.local.array(RM, float32)  # l_i of my rows (the whole row's)
        row_max_ = cuda.local.array(RM, float32)  # my rows' max over this tile

        tr, tc = thread()
        heads = q.shape[1]
        b = cuda.blockIdx.x // heads
        h = cuda.blockIdx.x - b * heads
        hk = h // group  # the key/value head this query head reads (GQA)
        n_q = q.shape[2]
        n_kv = k.shape[2]
        shift = n_kv - n_q
        if q.shape[3] != D or k.shape[3] != D or v.shape[3] != D or o.shape[3] != D:
            return  # never taken (launch builds for this D); it tells the compiler that rows are
            # D elements long, so the addresses of a tile are one base plus constant offsets

        Tr, Tc = (n_q + Br - 1) // Br, (n_kv + Bc - 1) // Bc  # Q blocks, KV tiles
        for ji in range(Tc * Tr):  # FA1's order: KV tile j outer, Q block i inner
            j = ji // Tr
            i0 = (ji - j * Tr) * Br  # Q_i's first row
            j0 = np.uint32(j * Bc)  # (unsigned: no negative-index wraparound code)
            if i0 == 0:  # a new KV tile: K_j and V_j, read once, kept for the whole sweep over Q_i
                cuda.syncthreads()  # every thread is done with K_{j-1}, V_{j-1}
                load_kv(k, b, hk, j0, n_kv, float32(1), k_j)
                load_kv(v, b, hk, j0, n_kv, float32(1), v_j)

            cuda.syncthreads()  # K_j, V_j are in shared memory; every thread is done with Q_{i-1}
            load_q(q, b, h, i0, n_q, scale_log2, q_i)  # Q_i again, for every KV tile
            for a in range(RM):  # O_i, m_i, l_i from device memory
                row = i0 + tr + TR * a
                back = j > 0 and row < n_q  # (at j = 0, line 1: O = 0, l = 0, m = -inf)
                first = back and tc == 0  # lane 0 of the row reads m_i, l_i; a shuffle shares them
                m[a] = shfl_idx(FULL_MASK, m_acc[b, h, row] if first else NEG_INF, 0, TC)
                l[a] = shfl_idx(FULL_MASK, l_acc[b, h, row] if first else float32(0), 0, TC)
                load_row(o_acc, b, h, row, acc, a, back)  # (zeros unless back)
            cuda.syncthreads()  # Q_i is in shared memory

            scores(q_i, k_j, s)  # S = Q_i K_jᵀ on my micro-tile
            mask(s, i0, j0, n_q, n_kv, shift, left, right)  # -inf where masked (edge tiles only)
            row_max(s, row_max_)

            # m_new, alpha, P = 2^(S - m_new), l_new (the whole row's); O_i un-normalised, rescaled.
            for a in range(RM):
                m_new = max(m[a], row_max_[a])
                # A row that has seen no key yet keeps m = -inf; 0 stands in so exp2 stays finite.
                m_use = m_new if m_new != NEG_INF else float32(0)
                alpha = math.exp2(m[a] - m_use)
                m[a] = m_new
                rowsum = float32(0)
                for c in range(RN):
                    p = math.exp2(s[a, c] - m_use)
                    rowsum += p
                    p_ij[tr + TR * a, tc + TC * c] = p
                l_new = alpha * l[a] + segment_sum(FULL_MASK, rowsum, TC)
                for x in range(DT):
                    acc[a, x] *= alpha * l[a]  # diag(l_i) · alpha · O_i
                l[a] = l_new

            warp_sync()  # P_ij's rows are written and read by the TC threads of one warp
            add_pv(p_ij, v_j, acc)  # O += P_ij V_j on my micro-tile

            for a in range(RM):  # O_i = O_i / l_new, every step; O_i, m_i, l_i back to HBM
                row = i0 + tr + TR * a
                if row < n_q:
                    inv_l = float32(1) / l[a] if l[a] > float32(0) else float32(0)
                    if j0 + Bc < n_kv:  # for tile j + 1
                        store_row(o_acc, b, h, row, acc, a, inv_l)
                        if tc == 0:
                            m_acc[b, h, row] = m[a]
                            l_acc[b, h, row] = l[a]
                    else:  # the last tile: O in the output's dtype, LSE = ln2 · (m + log2 l)
                        store_row(o, b, h, row, acc, a, inv_l)  # my columns of O_i's row
                        if tc == 0:
                            lse[b, h, row] = ((m[a] + math.log2(l[a])) * LN2 if l[a] > float32(0)
                                              else NEG_INF)

    return flash1


def needs(problem, config):
    Br, Bc, RM, RN, TR, TC = tiles(problem, config)
    D = problem.head_dim
    return Needs(shared_bytes=shared_bytes(Br, Bc, D, TC, KV_BUFFERS), head_dims=HEAD_DIMS,
                 dtypes=("float32", "float16", "bfloat16"),
                 rules=rules(Br, Bc, RM, RN, D, config["warps_per_sm"]))


def workspace_bytes(problem, config):
    """m and l (float32, B·H·Nq each), and a float32 O unless the output is float32 (in place)."""
    p = problem
    rows = p.batch * p.heads * p.seq_q
    return 2 * rows * 4 + (0 if p.dtype == "float32" else rows * p.head_dim * 4)


def launch(problem, config, q, k, v, o, lse, gpu):
    p = problem
    Br, Bc, RM, RN, TR, TC = tiles(p, config)
    left, right = p.mask_bounds()
    m = gpu.empty(p.lse_shape, np.float32)
    l = gpu.empty(p.lse_shape, np.float32)
    o_acc = o if p.dtype == "float32" else gpu.empty(p.q_shape, np.float32)
    kernel = build(Br, Bc, p.head_dim, RM, RN, config["warps_per_sm"])
    gpu.launch(kernel, p.batch * p.heads, TR * TC,
               q, k, v, o, lse, o_acc, m, l, LOG2E * np.float32(p.scale), p.group, left, right)
