"""Rung 5 — flash2: FlashAttention-2's partitioning (Dao 2023, Algorithm 1 of FA2).

Rung 4 (flash1) walks the KV tiles in the outer loop and the Q blocks inside, so the running O, m
and l of every query block make a round trip through device memory for every KV tile, O is divided
by l at every step, and only B·H CTAs run. FlashAttention-2 flips the loops back: a thread block
(CTA) owns one query block Q_i of Br rows for the whole call, streams the KV tiles K_j, V_j of Bc
keys through shared memory, and keeps O_i, m_i, l_i on chip until the end. With Tr = ⌈Nq / Br⌉
query blocks and Tc = ⌈Nkv / Bc⌉ KV tiles, CTA (i, b·h) runs, in the paper's notation:

    load Q_i (Br × D) into shared memory, once
    m = -inf, l = 0, O = 0                                   (per row, in registers)
    for j = j_start … j_end − 1:                             (only tiles the mask lets through)
        load K_j into shared memory
        S     = scale · Q_i K_jᵀ                             (Br × Bc; masked pairs -inf)
        m_new = max(m, rowmax(S))
        alpha = exp(m − m_new)                               (rescales what came before)
        P     = exp(S − m_new)                               (to shared memory)
        l     = alpha · l + rowsum(P)
        O     = alpha · O                                    (unnormalised: no division here)
        load V_j into shared memory (over K_j)
        O     = O + P V_j
        m     = m_new
    O = O / l, once;  LSE = m + log(l)                       (LSE kept for a backward pass)

These are `reference.online_attention`'s names and steps (rung 3's, on the tile engine).

What changes against flash1, and why (FA2's three ideas, and what they allow):
- Loop order: Q_i outer (one per CTA), KV tiles inner. O, m, l never leave the chip, Q_i is read
  once, and the grid (Tr, B·H) is parallel over query blocks as well as heads, so even B·H = 1
  fills many SMs. blockIdx.x runs over the query blocks of one head, so CTAs resident together
  read the same K_j, V_j from L2 (GQA heads h // group too); and grid block x takes query block
  Tr − 1 − x, so under causal the longest CTAs start first.
- Normalise once: inside the loop O only takes the alpha rescale, divided by l once at the end.
  So l needs no exchange inside the loop either: alpha is the same for the TC threads of a row,
  each keeps l over its own keys, and the partial sums are added once, at the end.
- Skip masked tiles: a CTA's rows together see one run of keys (both ends grow with the row), so
  only the tiles j_start … j_end − 1 covering it are loaded (common.kv_tile_range). Causal does
  about half of the tiles; a window (w, 0) about (Br + w) / Bc + 1 per CTA, however long Nkv is.
- One shared buffer: V_j goes over K_j once S is done (flash1 needs both for a whole sweep), so
  D = 128 keeps Bc within 48 KiB. The defaults are the fastest measured variants (the others are
  in experiments/flash2_variants.py); the numbers are in PERF_NOTES.md.

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

from .common import FASTMATH, LN2, LOG2E, NEG_INF, cdiv, first_key, last_key
from .contract import Needs
from .hardware import ALIGN, jit_options
from .tiles import HEAD_DIMS, engine, rules, shared_bytes, tile_shape
from .warp import FULL_MASK, segment_sum

LESSON = ("FA2 partitioning: a CTA owns a Q block, warps split its rows, O normalised once, "
          "LSE saved, masked tiles skipped")
# Br query rows per CTA, Bc keys per K/V tile, RM × RN S micro-tile per thread, warps per SM the
# register budget is sized for: 64-thread CTAs at every D (tile_shape caps Br, RM above D = 64).
DEFAULT_CONFIG = {"Br": 64, "Bc": 32, "RM": 8, "RN": 4, "warps_per_sm": 10}
SIM_CONFIG = {"Br": 8, "Bc": 8, "RM": 2, "RN": 2}  # 16 threads: each is a Python thread there
KV_BUFFERS = 1  # V_j goes over K_j in shared memory
tiles = functools.partial(tile_shape, kv_buffers=KV_BUFFERS)  # (Br, Bc, RM, RN, TR, TC)


@functools.cache
def build(Br, Bc, D, RM, RN, warps_per_sm=DEFAULT_CONFIG["warps_per_sm"]):
    """The kernel for these tiles and head dim D (every array shape and loop bound a constant)."""
    E = engine(Br, Bc, D, RM, RN)
    TR, TC, DP, BP, DT = E.TR, E.TC, E.DP, E.BP, E.DT
    thread, load_q, load_kv, scores, mask = E.thread, E.load_q, E.load_kv, E.scores, E.mask
    row_max, add_pv, store_row = E.row_max, E.add_pv, E.store_row
    SMEM = shared_bytes(Br, Bc, D, TC, KV_BUFFERS)

    @cuda.jit(fastmath=FASTMATH, **jit_options(E.THREADS, SMEM, warps_per_sm))
    def flash2(q, k, v, o, lse, scale_log2, group, left, right):
        """CTA (x, bh) owns query block Q_i, i = Tr − 1 − x, of head bh; thread (tr, tc) its
        micro-tiles."""
        # (One shared array per line: the simulator aliases calls that share a line.)
        q_i = cuda.shared.array((Br, DP), float32, alignment=ALIGN)  # Q_i · scale·log2(e)
        k_j = cuda.shared.array((Bc, DP), float32, alignment=ALIGN)  # K_j, then V_j over it
        v_j = k_j  # (one buffer)
        p_ij = cuda.shared.array((Br, BP), float32, alignment=ALIGN)  # P_ij
        s = cuda.local.array((RM, RN), float32)  # my micro-tile of S, then of P
        acc = cuda.local.array((RM, DT), float32)  # my micro-tile of the unnormalised O
        m = cuda.local.array(RM, float32)  # running row max (base 2)
        l = cuda.local.array(RM, float32)  # running row sum over my keys only
        row_max_ = cuda.local.array(RM, float32)  # my rows' max over this tile

        tr, tc = thread()
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
        i_last = min(i0 + Br, n_q) - 1  # the block's last row inside Nq

        # The KV tiles this CTA needs: first row's first key to last row's last key.
        ### BEGIN SOLUTION causal-skip
        key_lo = max(first_key(i0, shift, left), 0)
        key_hi = min(last_key(i_last, shift, right) + 1, n_kv)
        j_start = key_lo // Bc
        j_end = (key_hi + Bc - 1) // Bc if key_hi > key_lo else j_start
        ### END SOLUTION

        for a in range(RM):
            m[a] = NEG_INF
            l[a] = float32(0)
            for x in range(DT):
                acc[a, x] = float32(0)
        load_q(q, b, h, i0, n_q, scale_log2, q_i)  # Q_i, once (made visible below)

        for j in range(j_start, j_end):
            j0 = np.uint32(j * Bc)  # (unsigned: no negative-index wraparound code)
            cuda.syncthreads()  # every thread is done with V_{j-1} (and P_{j-1})
            load_kv(k, b, hk, j0, n_kv, float32(1), k_j)
            cuda.syncthreads()  # K_j is in shared memory

            scores(q_i, k_j, s)  # S = Q_i K_jᵀ on my micro-tile
            mask(s, i0, j0, n_q, n_kv, shift, left, right)  # -inf where masked (edge tiles only)
            row_max(s, row_max_)

            # m_new, alpha, P = 2^(S - m_new), l; O rescaled (not normalised).
            ### BEGIN SOLUTION
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
                l[a] = alpha * l[a] + rowsum
                for x in range(DT):
                    acc[a, x] *= alpha
            ### END SOLUTION

            cuda.syncthreads()  # every thread is done with K_j (and P_ij is in shared memory)
            load_kv(v, b, hk, j0, n_kv, float32(1), v_j)
            cuda.syncthreads()  # V_j is in shared memory
            add_pv(p_ij, v_j, acc)  # O += P_ij V_j on my micro-tile

        for a in range(RM):  # l: the TC partial sums of each row, added once (in all its lanes)
            l[a] = segment_sum(FULL_MASK, l[a], TC)

        # O = O / l once; LSE = ln2 · (m + log2 l). A row that saw no key: O = 0, LSE = -inf.
        ### BEGIN SOLUTION
        for a in range(RM):
            row = i0 + tr + TR * a
            if row < n_q:
                inv_l = float32(1) / l[a] if l[a] > float32(0) else float32(0)
                store_row(o, b, h, row, acc, a, inv_l)  # my columns of O_i's row
                if tc == 0:
                    lse[b, h, row] = ((m[a] + math.log2(l[a])) * LN2 if l[a] > float32(0)
                                      else NEG_INF)
        ### END SOLUTION

    return flash2


def needs(problem, config):
    Br, Bc, RM, RN, TR, TC = tiles(problem, config)
    D = problem.head_dim
    return Needs(shared_bytes=shared_bytes(Br, Bc, D, TC, KV_BUFFERS), head_dims=HEAD_DIMS,
                 dtypes=("float32", "float16", "bfloat16"),
                 rules=rules(Br, Bc, RM, RN, D, config["warps_per_sm"]))


def workspace_bytes(problem, config):
    """None: O, m and l stay on chip (registers) from the first KV tile to the last."""
    return 0


def launch(problem, config, q, k, v, o, lse, gpu):
    p = problem
    Br, Bc, RM, RN, TR, TC = tiles(p, config)
    left, right = p.mask_bounds()
    kernel = build(Br, Bc, p.head_dim, RM, RN, config["warps_per_sm"])
    gpu.launch(kernel, (cdiv(p.seq_q, Br), p.batch * p.heads), TR * TC,
               q, k, v, o, lse, LOG2E * np.float32(p.scale), p.group, left, right)
