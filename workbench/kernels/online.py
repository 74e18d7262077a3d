"""Rung 3 — online: one fused pass, online softmax, K/V tiles streamed through shared memory.

Rungs 1 and 2 compute S, then P = softmax(S), then O = P V, and keep the Nq × Nkv matrix in device
memory between the phases because a row's softmax needs the whole row: its max m (subtracted for
safety) and its sum l (the normaliser). The online softmax removes that need. Walk the keys in
tiles of Bc and keep per query row a running max m, a running sum l and an unnormalised O; when a
tile raises the max, what was accumulated under the old max is rescaled by alpha = e^(m_old − m_new):

    S_ij   = scale · Q_i K_jᵀ                  (the tile's scores, -inf where masked)
    m_new  = max(m, rowmax(S_ij))
    alpha  = e^(m − m_new)
    P_ij   = e^(S_ij − m_new)
    l      = alpha · l + rowsum(P_ij)
    O      = alpha · O + P_ij V_j
    m      = m_new

and after the last tile O = O / l (once) and LSE = m + log(l). This is `reference.online_attention`,
with the same names. Nothing of size Nq × Nkv exists anywhere: the scores of one tile live in Bc
registers of the thread that owns the row.

The kernel: grid (Tr, B·H), Tr = ⌈Nq / Br⌉ query blocks. A block of Br threads owns the Br query rows
of Q_i, one thread per row (the lesson is the recurrence, not the parallelism inside a row). Its loop
over the Tc = ⌈Nkv / Bc⌉ KV blocks:

    for j = 1 … Tc:
        all Br threads load K_j and V_j (Bc × D each) into shared memory together; syncthreads
        each thread: S_ij for its row (Bc scores), the update above on its own m, l and O row

A thread's O row is a local array of D floats that the compiler keeps in registers, which it does
only when every index is a constant after unrolling: the `for d in range(D)` loops that touch it are
innermost (D FMAs, unrolled), and the loop over the tile's keys around them is not, so P_ij passes
through shared memory (P_ijᵀ, Bc × Br: each thread its own column, no barrier). The Q row would be D
more registers — 256 live floats at D = 128, over the 255-register limit — so Q_i sits in shared
memory too, transposed (Q_iᵀ, D × Br) so that the 32 threads of a warp reading "their" element d
touch 32 consecutive words (no bank conflicts); K_j[c, d] and V_j[c, d] are one word for the whole
warp (a broadcast).

Device-memory traffic per (batch, head): Q read once, O and LSE written once, K and V read Tr
times (once per query block; L2 catches part of that). No workspace: `workspace_bytes` is 0.
Rung 4 (flash1) swaps the loops the way FlashAttention-1's Algorithm 1 does, and pays for it.

Masks (bottom-right causal, windows) and GQA as in rung 1; tile loads past Nkv are zero-filled and
stores past Nq are skipped, so any length works. A row that sees no key keeps m = -inf and l = 0,
is never rescaled (no e^(-inf − -inf)), and ends with O = 0 and LSE = -inf.
"""

import functools
import math

import numpy as np
from numba import cuda, float32

from .common import visible

LESSON = "one fused pass: online softmax (running m, l; O rescaled by e^(m_old - m_new)), no N² buffer"
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
    def online(q, k, v, o, lse, scale, group, left, right):
        """Block (i, bh) owns query block Q_i of head bh; thread tx owns its row i·Br + tx."""
        q_t = cuda.shared.array((D, Br), float32)  # Q_iᵀ
        k_j = cuda.shared.array((Bc, D), float32)  # K_j  (one call per line: the simulator
        v_j = cuda.shared.array((Bc, D), float32)  # V_j   aliases calls that share a line)
        p_t = cuda.shared.array((Bc, Br), float32)  # P_ijᵀ: column tx is this thread's row of P_ij
        s = cuda.local.array(Bc, float32)  # this row's scores S_ij (registers)
        acc = cuda.local.array(D, float32)  # this row's unnormalised O

        tx = cuda.threadIdx.x
        i = cuda.blockIdx.x * Br + tx
        heads = q.shape[1]
        b, h = cuda.blockIdx.y // heads, cuda.blockIdx.y % heads
        hk = h // group  # the key/value head this query head reads (GQA)
        n_q, n_kv = q.shape[2], k.shape[2]
        shift = n_kv - n_q

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
    from ..harness.runner import Needs

    return Needs(shared_bytes=shared_bytes(config["Br"], config["Bc"], problem.head_dim),
                 head_dims=HEAD_DIMS)


def workspace_bytes(problem, config):
    """None: m and l live in registers, the scores of one tile too."""
    return 0


def launch(problem, config, q, k, v, o, lse, gpu):
    p = problem
    Br, Bc = config["Br"], config["Bc"]
    left, right = p.mask_bounds()
    gpu.launch(build(Br, Bc, p.head_dim), (-(-p.seq_q // Br), p.batch * p.heads), Br,
               q, k, v, o, lse, np.float32(p.scale), p.group, left, right)
