"""Reference solutions of the course's "your turn" exercises (workbench.course.checks), kept out of
the notebooks and out of the package: tests/test_course.py proves each exercise both ways with them
(its notebook's stub fails the check, the solution here passes), and
`python scripts/run_notebooks.py OUT --solutions tests/course_solutions.py` runs the notebooks with
them in place of the stubs (on a GPU: every check compiled for the device and passed there).

Each function has the name and signature of its notebook's stub. Written as a learner would: plain
Numba CUDA Python (float32 arithmetic, no float64 constants in the arithmetic).
"""

import math

import numpy as np

import workbench  # noqa: F401  (first: it selects the simulator when there is no GPU)
from numba import cuda, float32

T = 4  # the tile of notebook 02's tiled kernel (its notebook sets the same)
TP = T + 1  # its padded row (a shared array's shape must be a constant: T + 1 inside a kernel is not)

def scores(q, k, s, scale):
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if i >= s.shape[0] or j >= s.shape[1]:
        return
    acc = float32(0)
    for d in range(q.shape[1]):
        acc += q[i, d] * k[j, d]
    s[i, j] = acc * scale

def softmax_row(s, lse, i):
    n = s.shape[1]
    m = float32(-math.inf)
    for j in range(n):
        m = max(m, s[i, j])
    if m == float32(-math.inf):
        for j in range(n):
            s[i, j] = float32(0)
        lse[i] = float32(-math.inf)
        return
    l = float32(0)
    for j in range(n):
        l += math.exp(s[i, j] - m)
    for j in range(n):
        s[i, j] = math.exp(s[i, j] - m) / l
    lse[i] = m + math.log(l)

def scores_tiled(q, k, s, scale):
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    j0, i0 = cuda.blockIdx.x * T, cuda.blockIdx.y * T
    i, j = i0 + ty, j0 + tx
    n_q, n_kv, dim = q.shape[0], k.shape[0], q.shape[1]
    q_tile = cuda.shared.array((T, T), float32)
    k_tile = cuda.shared.array((T, TP), float32)
    acc = float32(0)
    for d0 in range(0, dim, T):
        if i < n_q and d0 + tx < dim:
            q_tile[ty, tx] = q[i, d0 + tx]
        else:
            q_tile[ty, tx] = float32(0)
        if j0 + ty < n_kv and d0 + tx < dim:
            k_tile[ty, tx] = k[j0 + ty, d0 + tx]
        else:
            k_tile[ty, tx] = float32(0)
        cuda.syncthreads()
        for c in range(T):
            acc += q_tile[ty, c] * k_tile[tx, c]
        cuda.syncthreads()
    if i < n_q and j < n_kv:
        s[i, j] = acc * scale

def online_update(m, l, acc, s, v_j):
    m_new = m
    for c in range(s.shape[0]):
        m_new = max(m_new, s[c])
    if m_new == -math.inf:
        return m, l
    alpha = math.exp(m - m_new)
    l = alpha * l
    for d in range(acc.shape[0]):
        acc[d] *= alpha
    for c in range(s.shape[0]):
        p = math.exp(s[c] - m_new)
        l += p
        for d in range(acc.shape[0]):
            acc[d] += p * v_j[c, d]
    return m_new, l

def fa2_update(s, mx, m, l, acc, p_ij, rows, keys):
    for a in range(s.shape[0]):
        m_new = max(m[a], mx[a])
        m_use = m_new if m_new != -math.inf else float32(0)  # a row that has seen no key yet
        alpha = math.exp(m[a] - m_use)
        m[a] = m_new
        rowsum = float32(0)
        for c in range(s.shape[1]):
            p = math.exp(s[a, c] - m_use)
            rowsum += p
            p_ij[rows[a], keys[c]] = p
        l[a] = alpha * l[a] + rowsum
        for x in range(acc.shape[1]):
            acc[a, x] *= alpha


def row_lse(q, k, i, scale):
    m = float32(-math.inf)
    l = float32(0)
    for j in range(k.shape[0]):
        s = float32(0)
        for d in range(q.shape[1]):
            s += q[i, d] * k[j, d]
        s *= scale
        if s > m:
            l = l * math.exp(m - s) + float32(1)
            m = s
        else:
            l += math.exp(s - m)
    return m + math.log(l)

def kv_tiles(i0, i_last, Bc, shift, left, right, n_kv):
    key_lo = max(i0 + shift - left, 0)
    key_hi = min(i_last + shift + right + 1, n_kv)
    j_start = key_lo // Bc
    j_end = (key_hi + Bc - 1) // Bc if key_hi > key_lo else j_start
    return j_start, j_end

def p_fragment(s):
    return np.array([[s[0, 0], s[0, 1]], [s[0, 2], s[0, 3]], [s[1, 0], s[1, 1]], [s[1, 2], s[1, 3]]])

def dkdv_step(q_i, do_i, k_j, v_j, lse_i, delta_i, scale, dk_j, dv_j):
    s = float32(0)
    dp = float32(0)
    for d in range(q_i.shape[0]):
        s += q_i[d] * k_j[d]
        dp += do_i[d] * v_j[d]
    p = math.exp(s * scale - lse_i)
    ds = p * (dp - delta_i)
    for d in range(q_i.shape[0]):
        dv_j[d] += p * do_i[d]
        dk_j[d] += scale * ds * q_i[d]

def combine(o_parts, lse_parts, r, o, lse):
    m = float32(-math.inf)
    for sp in range(lse_parts.shape[0]):
        m = max(m, lse_parts[sp, r])
    if m == -math.inf:
        for d in range(o.shape[1]):
            o[r, d] = float32(0)
        lse[r] = m
        return
    total = float32(0)
    for sp in range(lse_parts.shape[0]):
        total += math.exp(lse_parts[sp, r] - m)
    for d in range(o.shape[1]):
        x = float32(0)
        for sp in range(lse_parts.shape[0]):
            x += math.exp(lse_parts[sp, r] - m) * o_parts[sp, r, d]
        o[r, d] = x / total
    lse[r] = m + math.log(total)

def bf16_bits(u):
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return (u >> 16) | 0x0040
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16

SOLUTIONS = {  # exercise name -> solution
    "scores": scores, "softmax-row": softmax_row, "tiled-scores": scores_tiled, "online-update": online_update,
    "fa2-update": fa2_update, "row-lse": row_lse, "kv-tiles": kv_tiles, "p-fragment": p_fragment,
    "dkdv": dkdv_step, "combine": combine, "bf16-round": bf16_bits}
