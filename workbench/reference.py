"""The truth every kernel is checked against, in float64 NumPy.

`attention` is the textbook definition, one (batch, head) at a time:
    S = scale · Q Kᵀ,  masked pairs set to -inf,  P = softmax(S) row-wise,  O = P V,
and LSE = log Σ_j exp(S_ij), the row's log-normaliser (what FlashAttention-2 saves for backward).
A row that sees no key gets O = 0 and LSE = -inf.

`online_attention` is the same function computed the way the fused rungs compute it: K/V streamed
in tiles of Bc keys, keeping per row a running max m, a running sum l and an unnormalised O:
    m_new = max(m, rowmax(S_tile))
    l     = exp(m - m_new) · l + rowsum(exp(S_tile - m_new))
    O     = exp(m - m_new) · O + exp(S_tile - m_new) V_tile
and dividing O by l once at the end. Nothing of size Nq × Nkv is ever held.

`attention_backward` is the gradient of attention, the float64 truth for the backward rung. With
dO = ∂L/∂O and P the softmax above:
    dV = Pᵀ dO,   dP = dO Vᵀ,   D = rowsum(dO ∘ O) = rowsum(P ∘ dP),
    dS = P ∘ (dP − D),   dQ = scale · dS K,   dK = scale · dSᵀ Q.
Under GQA a key/value head serves a group of query heads, so its dK, dV are the sums over the group.

`gather_paged` turns a paged KV cache (physical blocks plus a block table, as vLLM and
FlashAttention keep it) into contiguous K, V: what the decode rung must read as if it were there.
"""

from __future__ import annotations

import numpy as np

from workbench.problem import Problem


ROW_CHUNK_ELEMENTS = 1 << 26  # 512 MiB of float64 scores at a time, whatever the sequence length


def _problem_of(q, k, v, causal, window, scale) -> Problem:
    b, h, nq, d = q.shape
    return Problem(b, h, k.shape[1], nq, k.shape[2], d, "float32", causal, window, scale)


def visible_mask(p: Problem) -> np.ndarray:
    """(Nq, Nkv) booleans: which keys each query sees."""
    lo, hi = p.visible_range()
    j = np.arange(p.seq_kv)
    return (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])


def attention(q, k, v, *, causal=False, window=None, scale=None, rows=None):
    """Float64 attention: returns (O, LSE) with O shaped like q and LSE (B, H, Nq).

    rows: compute only these query rows (sorted indices; every row is independent of the others,
    so a sample of rows is checked exactly); O is then (B, H, len(rows), D)."""
    p = _problem_of(q, k, v, causal, window, scale)
    mask = visible_mask(p)
    if rows is not None:
        rows = np.asarray(rows)
        q, mask = q[:, :, rows], mask[rows]
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    o = np.zeros(q.shape, np.float64)
    lse = np.full(q.shape[:3], -np.inf, np.float64)
    seen = mask.any(axis=1)
    chunk = max(1, ROW_CHUNK_ELEMENTS // p.seq_kv)  # query rows per chunk: bounds the float64 S
    for b in range(p.batch):
        for h in range(p.heads):
            hk = h // p.group
            for r in range(0, q.shape[2], chunk):
                sl = slice(r, r + chunk)
                s = p.scale * (q[b, h, sl] @ k[b, hk].T)
                s = np.where(mask[sl], s, -np.inf)
                m = np.where(seen[sl], s.max(axis=1), 0.0)
                e = np.exp(s - m[:, None])  # exp(-inf) = 0 for masked pairs
                l = e.sum(axis=1)
                l_safe = np.where(seen[sl], l, 1.0)
                o[b, h, sl] = (e / l_safe[:, None]) @ v[b, hk]
                lse[b, h, sl] = np.where(seen[sl], m + np.log(l_safe), -np.inf)
    return o, lse


def online_attention(q, k, v, *, block_kv=16, causal=False, window=None, scale=None):
    """The online-softmax recurrence, tile by tile over K/V (float64; all rows at once)."""
    p = _problem_of(q, k, v, causal, window, scale)
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    mask = visible_mask(p)
    o_final = np.zeros(q.shape, np.float64)
    lse = np.full(p.lse_shape, -np.inf, np.float64)
    for b in range(p.batch):
        for h in range(p.heads):
            hk = h // p.group
            m = np.full(p.seq_q, -np.inf)  # running max
            l = np.zeros(p.seq_q)  # running sum of exp(S - m)
            o = np.zeros((p.seq_q, p.head_dim))  # running unnormalised output
            for j0 in range(0, p.seq_kv, block_kv):
                kt, vt = k[b, hk, j0 : j0 + block_kv], v[b, hk, j0 : j0 + block_kv]
                s = p.scale * (q[b, h] @ kt.T)
                s = np.where(mask[:, j0 : j0 + block_kv], s, -np.inf)
                m_new = np.maximum(m, s.max(axis=1))
                # A row that has seen nothing yet keeps m = -inf; use 0 there so exp() stays finite.
                m_safe = np.where(np.isfinite(m_new), m_new, 0.0)
                alpha = np.exp(m - m_safe)  # rescales what was accumulated under the old max
                pt = np.exp(s - m_safe[:, None])
                l = alpha * l + pt.sum(axis=1)
                o = alpha[:, None] * o + pt @ vt
                m = m_new
            seen = l > 0
            o_final[b, h] = o / np.where(seen, l, 1.0)[:, None]
            lse[b, h] = np.where(seen, m + np.log(np.where(seen, l, 1.0)), -np.inf)
    return o_final, lse


def attention_backward(q, k, v, do, *, causal=False, window=None, scale=None):
    """Float64 gradients (dQ, dK, dV) of attention for the upstream gradient dO (shaped like q).

    dK, dV are (B, Hkv, Nkv, D): under GQA each is summed over its group of query heads. Rows that
    see no key have P = 0 and contribute nothing. Row chunks bound the float64 P and dP as in
    `attention`.
    """
    p = _problem_of(q, k, v, causal, window, scale)
    q, k, v, do = (np.asarray(x, dtype=np.float64) for x in (q, k, v, do))
    if do.shape != q.shape:
        raise ValueError(f"do must be shaped like q {q.shape}, got {do.shape}")
    mask = visible_mask(p)
    seen = mask.any(axis=1)
    dq = np.zeros(q.shape, np.float64)
    dk = np.zeros(k.shape, np.float64)
    dv = np.zeros(v.shape, np.float64)
    rows = max(1, ROW_CHUNK_ELEMENTS // p.seq_kv)
    for b in range(p.batch):
        for h in range(p.heads):
            hk = h // p.group
            for r in range(0, p.seq_q, rows):
                sl = slice(r, r + rows)
                s = p.scale * (q[b, h, sl] @ k[b, hk].T)
                s = np.where(mask[sl], s, -np.inf)
                m = np.where(seen[sl], s.max(axis=1), 0.0)
                e = np.exp(s - m[:, None])
                pr = e / np.where(seen[sl], e.sum(axis=1), 1.0)[:, None]  # P (zero rows stay zero)
                dp = do[b, h, sl] @ v[b, hk].T
                d_row = (pr * dp).sum(axis=1)  # = rowsum(dO ∘ O)
                ds = pr * (dp - d_row[:, None])
                dv[b, hk] += pr.T @ do[b, h, sl]
                dq[b, h, sl] = p.scale * (ds @ k[b, hk])
                dk[b, hk] += p.scale * (ds.T @ q[b, h, sl])
    return dq, dk, dv


def gather_paged(cache, block_table, seq_lens):
    """Contiguous (B, Hkv, max(seq_lens), D) float64 K or V from a paged cache.

    cache: (num_blocks, Hkv, block_size, D); block_table: (B, max_blocks) physical block ids; the
    logical key j of sequence b lives in physical block block_table[b, j // block_size] at offset
    j % block_size. Positions past seq_lens[b] are zeros (and must be masked by the caller).
    """
    cache = np.asarray(cache, dtype=np.float64)
    block_table, seq_lens = np.asarray(block_table), np.asarray(seq_lens)
    _, hkv, bs, d = cache.shape
    n = int(seq_lens.max())
    out = np.zeros((len(seq_lens), hkv, n, d), np.float64)
    for b, length in enumerate(seq_lens):
        j = np.arange(int(length))
        blocks = block_table[b, j // bs]
        out[b, :, :length] = cache[blocks, :, j % bs].transpose(1, 0, 2)
    return out
