"""Rung 3 — online: one fused pass, online softmax, K/V tiles streamed through shared memory.

Rungs 1 and 2 keep the Nq × Nkv matrix in device memory between S = Q Kᵀ, P = softmax(S) and
O = P V, because a row's softmax needs the whole row: its max m (subtracted for safety) and its
sum l (the normaliser). The online softmax removes that need: walk the keys in tiles of Bc, keep
per query row a running max m, a running sum l and an unnormalised O, and when a tile raises the
max, rescale what was accumulated under the old one. With Tr = ⌈Nq / Br⌉ query blocks and
Tc = ⌈Nkv / Bc⌉ KV tiles, block (i, b·h) runs, in `reference.online_attention`'s names:

    m = -inf, l = 0, O = 0                                   (per row, in registers)
    for j = 1 … Tc:
        load K_j, V_j into shared memory
        S     = scale · Q_i K_jᵀ                             (Br × Bc; masked pairs -inf)
        m_new = max(m, rowmax(S))
        alpha = exp(m − m_new)                               (rescales what came before)
        P     = exp(S − m_new)                               (to shared memory)
        l     = alpha · l + rowsum(P)
        O     = alpha · O + P V_j
        m     = m_new
    O = O / l, once;  LSE = m + log(l)

Nothing of size Nq × Nkv exists anywhere. One thread per query row (the lesson is the recurrence,
not the parallelism inside a row; tiles.rows has the loads): it keeps its O row (D floats) in
registers, which the compiler does only when every index is a constant after unrolling, so the
`for d in range(D)` loops that touch it are innermost and P_ij passes through shared memory
(P_ijᵀ: each thread its own column, no barrier). Device-memory traffic per (batch, head): Q read
once, O and LSE written once, K and V read Tr times (L2 catches part of that). No workspace.
Rung 4 (flash1) swaps the loops the way FlashAttention-1's Algorithm 1 does, and pays for it.

Masks (bottom-right causal, windows) and GQA as in rung 1. K/V loads past Nkv are zero-filled and
those keys masked, and Q rows past Nq are zero and never stored, so any length works. A row that
sees no key keeps m = -inf and l = 0, never computes exp(-inf − -inf), and ends with O = 0 and
LSE = -inf. Float32 and float16 in and out, float32 arithmetic.
"""

import functools
import math

import numpy as np
from numba import cuda, float32

from .common import NEG_INF, cdiv
from .contract import Needs
from .tiles import rows

LESSON = "one fused pass: online softmax (running m, l; O rescaled by e^(m_old - m_new)), no N² buffer"
DEFAULT_CONFIG = {"Br": 64, "Bc": 8}  # Br query rows (= threads) per block, Bc keys per K/V tile
SIM_CONFIG = {"Br": 8, "Bc": 4}  # the simulator runs each thread as a Python thread
# A thread holds its O row (D floats) in registers: past 128 it spills.
HEAD_DIMS = tuple(range(8, 129, 8))


def shared_bytes(Br, Bc, D):
    """Static shared memory of one block, float32: Q_iᵀ (D × Br), K_j and V_j (Bc × D each),
    P_ijᵀ (Bc × Br): 42 KiB at D = 128 with the default tiles (limit: 48)."""
    return 4 * (D * Br + 2 * Bc * D + Bc * Br)


@functools.cache
def build(Br, Bc, D):
    """The kernel for Br query rows, Bc keys per tile and head dim D (array shapes are constants)."""

    load_q_row, load_tile, tile_scores = rows(Br, Bc, D)  # one thread per query row

    @cuda.jit
    def online(q, k, v, o, lse, scale, group, left, right):
        """Block (i, bh) owns query block Q_i of head bh; thread tx owns its row i·Br + tx."""
        # (One shared array per line: the simulator aliases calls that share a line.)
        q_t = cuda.shared.array((D, Br), float32)  # Q_iᵀ
        k_j = cuda.shared.array((Bc, D), float32)  # K_j
        v_j = cuda.shared.array((Bc, D), float32)  # V_j
        p_t = cuda.shared.array((Bc, Br), float32)  # P_ijᵀ: column tx is this thread's row of P_ij
        s = cuda.local.array(Bc, float32)  # this row's scores S_ij (registers)
        acc = cuda.local.array(D, float32)  # this row's unnormalised O

        tx = cuda.threadIdx.x
        heads = q.shape[1]
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y - b * heads
        hk = h // group  # the key/value head this query head reads (GQA)
        n_q = q.shape[2]
        n_kv = k.shape[2]
        shift = n_kv - n_q
        i = cuda.blockIdx.x * Br + tx  # my query row

        load_q_row(q, b, h, i, q_t)
        m = NEG_INF
        l = float32(0)
        for d in range(D):
            acc[d] = float32(0)

        for j0 in range(0, n_kv, Bc):  # KV blocks j = 1 … Tc, keys j0 … j0 + Bc − 1
            cuda.syncthreads()  # every thread is done with the previous K_j, V_j
            load_tile(k, b, hk, j0, k_j)
            load_tile(v, b, hk, j0, v_j)
            cuda.syncthreads()  # K_j and V_j are in shared memory

            ### BEGIN SOLUTION
            m_new = max(m, tile_scores(q_t, k_j, s, i, j0, n_kv, shift, scale, left, right))
            if m_new > NEG_INF:  # else the row has seen no key yet: m, l, O stay -inf, 0, 0
                alpha = math.exp(m - m_new)  # rescales what was accumulated under the old max
                l_tile = float32(0)
                for c in range(Bc):
                    p = math.exp(s[c] - m_new)  # P_ij (0 where masked)
                    p_t[c, tx] = p
                    l_tile += p
                l = alpha * l + l_tile
                for d in range(D):
                    acc[d] *= alpha
                for c in range(Bc):
                    p = p_t[c, tx]
                    for d in range(D):
                        acc[d] += p * v_j[c, d]
                m = m_new
            ### END SOLUTION

        ### BEGIN SOLUTION
        if i < n_q:  # O = O / l once, LSE = m + log(l); a row that saw no key: O = 0, LSE = -inf
            inv_l = float32(1) / l if l > float32(0) else float32(0)
            for d in range(D):
                o[b, h, i, d] = acc[d] * inv_l
            lse[b, h, i] = m + math.log(l) if l > float32(0) else NEG_INF
        ### END SOLUTION

    return online


def needs(problem, config):
    return Needs(shared_bytes=shared_bytes(config["Br"], config["Bc"], problem.head_dim),
                 head_dims=HEAD_DIMS)


def workspace_bytes(problem, config):
    """None: m and l live in registers, the scores of one tile too."""
    return 0


def launch(problem, config, q, k, v, o, lse, gpu):
    p = problem
    Br, Bc = config["Br"], config["Bc"]
    left, right = p.mask_bounds()
    kernel = build(Br, Bc, p.head_dim)
    gpu.launch(kernel, (cdiv(p.seq_q, Br), p.batch * p.heads), Br,
               q, k, v, o, lse, np.float32(p.scale), p.group, left, right)
