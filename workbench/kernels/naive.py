"""Rung 1 — naive attention: three kernels, the score matrix in device memory.

This is attention exactly as it is written on paper,

    S = scale · Q Kᵀ          (Nq × Nkv per head)
    P = softmax(S) row-wise   (masked pairs get probability 0)
    O = P V                   (Nq × D per head)

with one kernel per line. S (then P, written over it) lives in device memory as float32: B·H·Nq·Nkv
numbers, which is the O(N²) memory the rest of the ladder gets rid of. Every thread reads its
operands straight from device memory:

- `scores`: one thread per (i, j) pair, a D-long dot product of row i of Q and row j of K;
- `softmax`: one thread per row, three passes over its Nkv scores (max, sum of exp, normalise),
  also writing LSE = m + log(l);
- `pv`: one thread per (i, d), an Nkv-long dot product of row i of P and column d of V.

Reads: Q and K are each re-read Nkv (resp. Nq) times, S three times, P D times — far more traffic than
the Q, K, V, O the problem needs. Rung 2 (tiled) attacks the re-reading; rung 3 the N² buffer.

Masks: query i sees key j when i + shift - left <= j <= i + shift + right, with shift = Nkv - Nq
(bottom-right causal, as FlashAttention). GQA: query head h reads key/value head h // group.
"""

import math

import numpy as np
from numba import cuda, float32

from .common import cdiv, visible
from .contract import Needs

LESSON = "attention as written: three kernels, the N² score matrix lives in device memory"
DEFAULT_CONFIG = {"block_xy": 16, "block_rows": 128}  # threads: 16×16 per 2-D block, 128 rows per block
SIM_CONFIG = {"block_xy": 8, "block_rows": 16}  # the simulator runs each thread as a Python thread


@cuda.jit
def scores(q, k, s, scale, group, left, right):
    """S[b, h, i, j] = scale · q[b, h, i] · k[b, h // group, j], or -inf where masked."""
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    bh = cuda.blockIdx.z
    heads = q.shape[1]
    b, h = bh // heads, bh % heads
    n_q, n_kv, dim = q.shape[2], k.shape[2], q.shape[3]
    if i >= n_q or j >= n_kv:
        return
    if not visible(i, j, n_kv - n_q, left, right):
        s[b, h, i, j] = -math.inf
        return
    acc = float32(0)
    for d in range(dim):
        acc += float32(q[b, h, i, d]) * float32(k[b, h // group, j, d])
    s[b, h, i, j] = acc * scale


@cuda.jit
def softmax(s, lse):
    """Row i of S becomes softmax(S[i]) in place; lse[b, h, i] = log Σ exp(S[i])."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    bh = cuda.blockIdx.y
    heads = s.shape[1]
    b, h = bh // heads, bh % heads
    n_q, n_kv = s.shape[2], s.shape[3]
    if i >= n_q:
        return
    ### BEGIN SOLUTION
    m = float32(-math.inf)  # a bare -math.inf would be float64 and drag the row into FP64
    for j in range(n_kv):
        m = max(m, s[b, h, i, j])
    if m == float32(-math.inf):  # the mask hides every key from this row: P = 0, LSE = -inf
        for j in range(n_kv):
            s[b, h, i, j] = float32(0)
        lse[b, h, i] = -math.inf
        return
    l = float32(0)
    for j in range(n_kv):
        l += math.exp(s[b, h, i, j] - m)
    for j in range(n_kv):
        s[b, h, i, j] = math.exp(s[b, h, i, j] - m) / l
    lse[b, h, i] = m + math.log(l)
    ### END SOLUTION


@cuda.jit
def pv(p, v, o, group):
    """O[b, h, i, d] = Σ_j P[b, h, i, j] · v[b, h // group, j, d]."""
    d = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    bh = cuda.blockIdx.z
    heads = o.shape[1]
    b, h = bh // heads, bh % heads
    n_q, n_kv, dim = o.shape[2], v.shape[2], o.shape[3]
    if i >= n_q or d >= dim:
        return
    acc = float32(0)
    for j in range(n_kv):
        acc += p[b, h, i, j] * float32(v[b, h // group, j, d])
    o[b, h, i, d] = acc


def needs(problem, config):
    return Needs(shared_bytes=0)


def workspace_bytes(problem, config):
    """The score matrix: B·H·Nq·Nkv float32."""
    return problem.batch * problem.heads * problem.seq_q * problem.seq_kv * 4


def launch(problem, config, q, k, v, o, lse, gpu):
    p = problem
    t, rows = config["block_xy"], config["block_rows"]
    s = gpu.empty((p.batch, p.heads, p.seq_q, p.seq_kv), np.float32)
    left, right = p.mask_bounds()
    bh = p.batch * p.heads
    gpu.launch(scores, (cdiv(p.seq_kv, t), cdiv(p.seq_q, t), bh), (t, t),
               q, k, s, np.float32(p.scale), p.group, left, right)
    gpu.launch(softmax, (cdiv(p.seq_q, rows), bh), rows, s, lse)
    gpu.launch(pv, (cdiv(p.head_dim, t), cdiv(p.seq_q, t), bh), (t, t), s, v, o, p.group)
