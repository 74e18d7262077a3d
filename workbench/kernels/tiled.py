"""Rung 2 — tiled attention: the same three kernels, operands staged in shared memory.

This is still attention exactly as it is written on paper,

    S = scale · Q Kᵀ          (Nq × Nkv per head)
    P = softmax(S) row-wise   (masked pairs get probability 0)
    O = P V                   (Nq × D per head)

with one kernel per line, and S (then P, written over it) still lives in device memory as float32:
B·H·Nq·Nkv numbers, the O(N²) memory of rung 1. What changes is how often each number is fetched.
Rung 1's threads each read their operands straight from device memory, so neighbouring threads
fetched the same rows of Q, K, P and V over and over. Here a block of T × T threads first copies a
T × T tile of each operand into shared memory (one element per thread, zero outside the matrices),
waits at a barrier, and then each thread reads a whole row or column of the tile from there: every
element fetched from device memory serves T threads — the classic tiled matrix product:

- `scores`: a block owns a T × T tile of S (T queries × T keys) and walks the head dimension D in
  steps of T, loading a Q tile and a K tile per step;
- `softmax`: a block of `softmax_threads` threads owns one row; the threads stride over its Nkv
  scores (neighbouring threads, neighbouring addresses) and reduce the max, then the sum of exp,
  through a shared-memory tree; then they normalise, and thread 0 writes LSE = m + log(l);
- `pv`: a block owns a T × T tile of O (T queries × T of the D columns) and walks the keys in steps
  of T, loading a P tile and a V tile per step.

Reads: Q is now read ⌈Nkv/T⌉ times and K ⌈Nq/T⌉ times (rung 1: Nkv and Nq), P ⌈D/T⌉ times (rung 1:
D), V ⌈Nq/T⌉ times (rung 1: Nq), each a factor T fewer; S is still read three times, but a warp now
reads 32 neighbouring scores at once instead of 32 scores Nkv apart. The N² buffer remains, written
once and read 3 + ⌈D/T⌉ times: rung 3 (online) removes it.

Masks: query i sees key j when i + shift - left <= j <= i + shift + right, with shift = Nkv - Nq
(bottom-right causal, as FlashAttention). GQA: query head h reads key/value head h // group.
"""

import functools
import math

import numpy as np
from numba import cuda, float32

from .common import NEG_INF, cdiv, visible
from .contract import Needs

LESSON = "data reuse: the same three kernels, each tile loaded once into shared memory for a whole block"
DEFAULT_CONFIG = {"tile": 16, "softmax_threads": 128}  # threads: 16×16 per tile block, 128 per row
SIM_CONFIG = {"tile": 8, "softmax_threads": 8}  # the simulator runs each thread as a Python thread


@functools.cache  # one compiled kernel per tile size: shared arrays need compile-time shapes
def scores_kernel(tile):
    padded = tile + 1  # computed here, so the kernel sees it as a constant

    @cuda.jit
    def scores(q, k, s, scale, group, left, right):
        """S[b, h, i, j] = scale · q[b, h, i] · k[b, h // group, j], or -inf where masked."""
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        j0 = cuda.blockIdx.x * tile  # this block's first key ...
        i0 = cuda.blockIdx.y * tile  # ... and first query
        j, i = j0 + tx, i0 + ty
        bh = cuda.blockIdx.z
        heads = q.shape[1]
        b, h = bh // heads, bh % heads
        n_q, n_kv, dim = q.shape[2], k.shape[2], q.shape[3]
        q_tile = cuda.shared.array((tile, tile), float32)  # Q[i0 + r, d0 + c]
        # K[j0 + r, d0 + c]. It is read down a column (k_tile[tx, c]: thread tx wants row tx), so
        # each row is padded by one float: with T floats per row those reads would all fall in a few
        # of the 32 shared-memory banks and queue up; with T + 1 each thread's row starts a bank later.
        k_tile = cuda.shared.array((tile, padded), float32)
        acc = float32(0)
        ### BEGIN SOLUTION
        for d0 in range(0, dim, tile):
            # Every thread loads one element of each tile; outside Q or K it loads 0, which adds 0.
            if i < n_q and d0 + tx < dim:
                q_tile[ty, tx] = float32(q[b, h, i, d0 + tx])
            else:
                q_tile[ty, tx] = float32(0)
            if j0 + ty < n_kv and d0 + tx < dim:
                k_tile[ty, tx] = float32(k[b, h // group, j0 + ty, d0 + tx])
            else:
                k_tile[ty, tx] = float32(0)
            cuda.syncthreads()  # the tiles are complete
            for c in range(tile):
                acc += q_tile[ty, c] * k_tile[tx, c]
            cuda.syncthreads()  # everyone is done with them before the next step overwrites them
        ### END SOLUTION
        if i >= n_q or j >= n_kv:
            return
        if not visible(i, j, n_kv - n_q, left, right):
            s[b, h, i, j] = -math.inf
            return
        s[b, h, i, j] = acc * scale

    return scores


@functools.cache  # the tree's size is the block size: a compile-time constant
def softmax_kernel(threads):
    @cuda.jit
    def softmax(s, lse):
        """Row i of S becomes softmax(S[i]) in place; lse[b, h, i] = log Σ exp(S[i])."""
        t = cuda.threadIdx.x
        i = cuda.blockIdx.x
        bh = cuda.blockIdx.y
        heads = s.shape[1]
        b, h = bh // heads, bh % heads
        n_kv = s.shape[3]
        red = cuda.shared.array(threads, float32)  # one partial result per thread
        m = NEG_INF  # (common.NEG_INF: float32; a bare -math.inf would drag the row into FP64)
        for j in range(t, n_kv, threads):
            m = max(m, s[b, h, i, j])
        red[t] = m
        cuda.syncthreads()
        half = threads // 2
        while half > 0:  # tree: after the step with `half`, red[0:half] holds the maxima of pairs
            if t < half:
                red[t] = max(red[t], red[t + half])
            cuda.syncthreads()
            half //= 2
        m = red[0]
        cuda.syncthreads()  # everyone has read red[0] before the sum reuses `red`
        if m == NEG_INF:  # the mask hides every key from this row: P = 0, LSE = -inf
            for j in range(t, n_kv, threads):
                s[b, h, i, j] = float32(0)
            if t == 0:
                lse[b, h, i] = -math.inf
            return
        l = float32(0)
        for j in range(t, n_kv, threads):
            l += math.exp(s[b, h, i, j] - m)
        red[t] = l
        cuda.syncthreads()
        half = threads // 2
        while half > 0:
            if t < half:
                red[t] += red[t + half]
            cuda.syncthreads()
            half //= 2
        l = red[0]
        for j in range(t, n_kv, threads):
            s[b, h, i, j] = math.exp(s[b, h, i, j] - m) / l
        if t == 0:
            lse[b, h, i] = m + math.log(l)

    return softmax


@functools.cache
def pv_kernel(tile):
    @cuda.jit
    def pv(p, v, o, group):
        """O[b, h, i, d] = Σ_j P[b, h, i, j] · v[b, h // group, j, d]."""
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        d = cuda.blockIdx.x * tile + tx
        i = cuda.blockIdx.y * tile + ty
        bh = cuda.blockIdx.z
        heads = o.shape[1]
        b, h = bh // heads, bh % heads
        n_q, n_kv, dim = o.shape[2], v.shape[2], o.shape[3]
        p_tile = cuda.shared.array((tile, tile), float32)  # P[i0 + r, j0 + c]
        v_tile = cuda.shared.array((tile, tile), float32)  # V[j0 + r, d0 + c]
        acc = float32(0)
        for j0 in range(0, n_kv, tile):
            if i < n_q and j0 + tx < n_kv:
                p_tile[ty, tx] = p[b, h, i, j0 + tx]
            else:
                p_tile[ty, tx] = float32(0)
            if j0 + ty < n_kv and d < dim:
                v_tile[ty, tx] = float32(v[b, h // group, j0 + ty, d])
            else:
                v_tile[ty, tx] = float32(0)
            cuda.syncthreads()
            for c in range(tile):
                acc += p_tile[ty, c] * v_tile[c, tx]
            cuda.syncthreads()
        if i >= n_q or d >= dim:
            return
        o[b, h, i, d] = acc

    return pv


def needs(problem, config):
    t, threads = config["tile"], config["softmax_threads"]
    shared = max(4 * (t * t + t * (t + 1)),  # scores: Q tile + padded K tile
                 4 * threads,  # softmax: one float per thread
                 4 * 2 * t * t)  # pv: P tile + V tile
    return Needs(shared_bytes=shared,
                 rules={"softmax_threads is a power of two": threads & (threads - 1) == 0})


def workspace_bytes(problem, config):
    """The score matrix: B·H·Nq·Nkv float32."""
    return problem.batch * problem.heads * problem.seq_q * problem.seq_kv * 4


def launch(problem, config, q, k, v, o, lse, gpu):
    p = problem
    t, threads = config["tile"], config["softmax_threads"]
    s = gpu.empty((p.batch, p.heads, p.seq_q, p.seq_kv), np.float32)
    left, right = p.mask_bounds()
    bh = p.batch * p.heads
    gpu.launch(scores_kernel(t), (cdiv(p.seq_kv, t), cdiv(p.seq_q, t), bh), (t, t),
               q, k, s, np.float32(p.scale), p.group, left, right)
    gpu.launch(softmax_kernel(threads), (p.seq_q, bh), threads, s, lse)
    gpu.launch(pv_kernel(t), (cdiv(p.head_dim, t), cdiv(p.seq_q, t), bh), (t, t), s, v, o, p.group)
