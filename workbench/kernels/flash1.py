"""Rung 4 — flash1: FlashAttention-1's loop order. KV blocks outside, Q blocks inside, O/m/l in HBM.

Rung 3 (online) has each block own a query block Q_i and stream every K_j, V_j past it: Q_i is read
once, but K and V are read once per query block (Tr times). FlashAttention-1 (Dao et al. 2022,
Algorithm 1) puts the loops the other way round, so that K and V are read from HBM exactly once:

    O = 0 (Nq × D), l = 0, m = -inf (Nq each), in HBM
    for j = 1 … Tc:                                   Tc = ⌈Nkv / Bc⌉ KV blocks
        load K_j, V_j into SRAM
        for i = 1 … Tr:                               Tr = ⌈Nq / Br⌉ Q blocks
            load Q_i, O_i, l_i, m_i from HBM
            S_ij  = scale · Q_i K_jᵀ
            m̃_ij = rowmax(S_ij),  P̃_ij = e^(S_ij − m̃_ij),  l̃_ij = rowsum(P̃_ij)
            m_new = max(m_i, m̃_ij),  l_new = e^(m_i − m_new) l_i + e^(m̃_ij − m_new) l̃_ij
            O_i  ← diag(l_new)⁻¹ (diag(l_i) e^(m_i − m_new) O_i + e^(m̃_ij − m_new) P̃_ij V_j)
            l_i  ← l_new,  m_i ← m_new                 written back to HBM

The recurrence is the online softmax of rung 3, in the paper's form: each tile's P̃ is taken
against the tile's own max m̃ and rescaled onto m_new, and O_i is kept normalised at every step
(divided by l_new each time, where rung 3 divides once at the end). What changes is where the
running state lives. With KV blocks outside, the running O_i, m_i, l_i of a query block cannot stay
on chip between its visits — a whole sweep over all Q blocks happens in between — so they go to
device memory and come back Tc times.

What it costs, per (batch, head), in device-memory traffic:
- K and V: read once (rung 3: Tr times) — what the loop order buys;
- Q: read Tc times (rung 3: once);
- O (float32), m, l: read Tc − 1 times and written Tc times (rung 3: O and LSE written once), i.e.
  about Tc · Nq · (D · (itemsize + 8) + 16) bytes. With Bc = 8 that is Nkv / 8 passes over Q and a
  float32 O: at Nq = Nkv = 4096, D = 64, float32, about 1.6 GB per head where rung 3 moves ~0.14 GB
  (almost all of it K/V re-reads, which L2 partly catches). Larger Bc means fewer passes; shared
  memory caps it.
- Each thread reads and writes its own O row: the 32 threads of a warp touch 32 different rows,
  so these accesses are not coalesced, and the O round trips cost more than their byte count.
Rung 5 (flash2) puts the loops back the way rung 3 has them and keeps the other FA tricks.

The kernel, as FA1's CUDA code: one block per (batch, head) — grid (B·H,) — walking both loops; a
block of Br threads, one thread per query row of Q_i, as in rung 3 (same tiles, same shared arrays,
same helpers; `diff online.py flash1.py` shows only the loop order and where O, m, l live). Only
B·H blocks of Br threads: at B = 8, H = 32 that is 256 blocks of 2 warps for 132 SMs, a few warps
per SM (FA1's later `num_splits` split the Q loop over more blocks; not done here). K_j, V_j stay in
shared memory for the whole inner loop; inside it a thread touches only its own column of Q_iᵀ and
P̃_ijᵀ and its own rows of O, m, l, so the inner loop needs no barrier.

Scratch (`workspace_bytes`): m and l, B·H·Nq float32 each; O is updated in place when the output is
float32 and in a float32 copy when it is float16 (B·H·Nq·D·4 more). Line 1 (O = 0, l = 0, m = -inf
in HBM) is folded into the first KV block, which starts from those values instead of reading them
back; the last KV block writes O (already normalised, in the output's dtype) and LSE = m + log(l).

Masks, GQA, any length as in rung 3; nothing is skipped (a tile the mask hides from a row leaves
that row's O_i, m_i, l_i unchanged but they are still read and written). A row that sees no key
keeps m = -inf and l = 0, never computes e^(-inf − -inf), and ends with O = 0 and LSE = -inf.
"""

import functools
import math

import numpy as np
from numba import cuda, float32

from .common import visible

LESSON = "FA1 loop order: KV blocks outside, Q blocks inside; O, m, l re-read and re-written per KV block"
# Shared memory is 4·(D·Br + 2·Bc·D + Bc·Br) bytes: 42 KiB at D = 128 with these tiles (limit: 48).
DEFAULT_CONFIG = {"Br": 64, "Bc": 8}  # Br query rows (= threads) per block, Bc keys per K/V tile
SIM_CONFIG = {"Br": 8, "Bc": 4}  # the simulator runs each thread as a Python thread
# A thread holds its O row (D floats) in registers: past 128 it spills.
HEAD_DIMS = tuple(range(8, 129, 8))

NEG_INF = float32(-math.inf)  # a bare -math.inf would be float64 and drag the arithmetic into FP64


def shared_bytes(Br, Bc, D):
    """Static shared memory of one block, float32: Q_iᵀ (D × Br), K_j and V_j (Bc × D each),
    P_ijᵀ (Bc × Br)."""
    return 4 * (D * Br + 2 * Bc * D + Bc * Br)


@functools.cache
def build(Br, Bc, D):
    """The kernel for Br query rows, Bc keys per tile and head dim D (array shapes are constants)."""

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

    @cuda.jit
    def flash1(q, k, v, o, lse, o_acc, m_acc, l_acc, scale, group, left, right):
        """Block bh walks every (KV block j, Q block i) of head bh; thread tx owns row i·Br + tx."""
        q_t = cuda.shared.array((D, Br), float32)  # Q_iᵀ
        k_j = cuda.shared.array((Bc, D), float32)  # K_j  (one call per line: the simulator
        v_j = cuda.shared.array((Bc, D), float32)  # V_j   aliases calls that share a line)
        p_t = cuda.shared.array((Bc, Br), float32)  # P̃_ijᵀ: column tx is this thread's row of P̃_ij
        s = cuda.local.array(Bc, float32)  # this row's scores S_ij (registers)
        acc = cuda.local.array(D, float32)  # this row's O_i, between HBM read and write

        tx = cuda.threadIdx.x
        heads = q.shape[1]
        b, h = cuda.blockIdx.x // heads, cuda.blockIdx.x % heads
        hk = h // group  # the key/value head this query head reads (GQA)
        n_q, n_kv = q.shape[2], k.shape[2]
        shift = n_kv - n_q

        for j0 in range(0, n_kv, Bc):  # outer: KV blocks j = 1 … Tc, keys j0 … j0 + Bc − 1
            cuda.syncthreads()  # every thread is done with the previous K_j, V_j
            load_tile(k, b, hk, j0, k_j)
            load_tile(v, b, hk, j0, v_j)
            cuda.syncthreads()  # K_j and V_j are in shared memory, for the whole inner loop

            for i0 in range(0, n_q, Br):  # inner: Q blocks i = 1 … Tr, rows i0 … i0 + Br − 1
                i = i0 + tx
                load_q_row(q, b, h, i, q_t)  # Q_i again, for every KV block
                if j0 == 0 or i >= n_q:  # line 1 of Algorithm 1: O = 0, l = 0, m = -inf
                    m = NEG_INF
                    l = float32(0)
                    for d in range(D):
                        acc[d] = float32(0)
                else:  # O_i, m_i, l_i back from device memory
                    m = m_acc[b, h, i]
                    l = l_acc[b, h, i]
                    for d in range(D):
                        acc[d] = o_acc[b, h, i, d]

                m_tile = tile_scores(q_t, k_j, s, i, j0, n_kv, shift, scale, left, right)  # m̃_ij
                if m_tile > NEG_INF:  # else P̃_ij = 0: O_i, m_i, l_i stay as they are
                    l_tile = float32(0)
                    for c in range(Bc):
                        p = math.exp(s[c] - m_tile)  # P̃_ij (0 where masked)
                        p_t[c, tx] = p
                        l_tile += p  # l̃_ij
                    m_new = max(m, m_tile)
                    alpha = math.exp(m - m_new)  # e^(m_i − m_new); 0 while m_i = -inf
                    beta = math.exp(m_tile - m_new)  # e^(m̃_ij − m_new)
                    l_new = alpha * l + beta * l_tile
                    old = l * alpha / l_new  # O_i ← (l_i e^(m_i − m_new) O_i
                    new = beta / l_new  #        + e^(m̃_ij − m_new) P̃_ij V_j) / l_new
                    for d in range(D):
                        acc[d] *= old
                    for c in range(Bc):
                        p = p_t[c, tx] * new
                        for d in range(D):
                            acc[d] += p * v_j[c, d]
                    m = m_new
                    l = l_new

                if i < n_q:
                    if j0 + Bc < n_kv:  # O_i, m_i, l_i to device memory, for KV block j + 1
                        for d in range(D):
                            o_acc[b, h, i, d] = acc[d]
                        m_acc[b, h, i] = m
                        l_acc[b, h, i] = l
                    else:  # the last KV block: O_i is final (normalised), in the output dtype
                        for d in range(D):
                            o[b, h, i, d] = acc[d]
                        lse[b, h, i] = m + math.log(l) if l > float32(0) else NEG_INF

    return flash1


def needs(problem, config):
    from ..harness.runner import Needs

    return Needs(shared_bytes=shared_bytes(config["Br"], config["Bc"], problem.head_dim),
                 head_dims=HEAD_DIMS)


def workspace_bytes(problem, config):
    """m and l in device memory (float32, B·H·Nq each), and a float32 O when the output is float16
    (a float32 output is updated in place)."""
    p = problem
    rows = p.batch * p.heads * p.seq_q
    return 2 * rows * 4 + (0 if p.dtype == "float32" else rows * p.head_dim * 4)


def launch(problem, config, q, k, v, o, lse, gpu):
    p = problem
    Br, Bc = config["Br"], config["Bc"]
    left, right = p.mask_bounds()
    m = gpu.empty(p.lse_shape, np.float32)
    l = gpu.empty(p.lse_shape, np.float32)
    o_acc = o if p.dtype == "float32" else gpu.empty(p.q_shape, np.float32)
    gpu.launch(build(Br, Bc, p.head_dim), p.batch * p.heads, Br,
               q, k, v, o, lse, o_acc, m, l, np.float32(p.scale), p.group, left, right)
