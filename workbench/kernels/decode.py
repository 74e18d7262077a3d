"""Decode — one (or a few) new query tokens against a paged KV cache, split over the KV length
(flash-decoding), as FlashAttention's `flash_attn_with_kvcache` and vLLM's paged attention do.

Generation produces one token at a time: Nq is 1 (or a few, with speculative decoding), the
context Nkv is thousands of keys, and the cache of every earlier token's K and V is read once per
token. Two things differ from the forward rungs:

1. Too few query rows to fill the GPU. flash2 parallelises over query blocks and heads: with
   Nq = 1 and B·Hkv = 32 that is 32 CTAs on 132 SMs, each walking the whole context alone.
   Flash-decoding splits the keys instead: CTA (s, ·) takes keys [s·L, (s+1)·L) and writes a
   partial, normalised O_s and its LSE_s; a second kernel combines the splits by their LSE:
       m = max_s LSE_s,   w_s = exp(LSE_s − m),   O = Σ w_s O_s / Σ w_s,   LSE = m + log Σ w_s
   — the online-softmax merge of rung 3, done once over splits instead of once per tile. The
   number of splits is chosen so that about `ctas` CTAs run (config), never more than there are
   key tiles.
2. The cache is paged. Its memory is a pool of physical blocks of `block_size` tokens,
   k_cache/v_cache (num_blocks, Hkv, block_size, D), and sequence b's logical key j lives in
   physical block block_table[b, j // block_size] at offset j % block_size (vLLM's layout, one
   of FlashAttention's). Sequences grow a block at a time with no copying and no fragmentation.
   The kernel gathers each K/V tile row by row through the block table (each row is D contiguous
   elements, so reads stay coalesced); the physical block and offset of the tile's keys are
   looked up once per tile into shared memory.

GQA/MQA: the group of query heads that share a key/value head are packed as the rows of one CTA
(row r = g·Nq + i: head hk·group + g, new token i), so each K/V tile is read once for the whole
group — MQA with 32 query heads reads the cache once, not 32 times.

Inside a CTA (T threads) a tile of Bc keys goes: block-table lookup → K tile to shared memory →
S = scale·log2e · Q Kᵀ, one (row, key) pair per thread → per row (one thread each) m_new, α and
P = 2^(S − m_new) in place, l = α·l + rowsum(P) → V tile over K's buffer → O = α·O + P V with
each thread owning Br·D / T elements of O in registers. Masks: causal is bottom-right within each
sequence (new token i of sequence b sits at position seq_lens[b] − Nq + i), windows as in the
forward; keys at or past seq_lens[b] are never read. Rows or splits that see no key give O = 0,
LSE = −inf, which the combine weights by 0.

Tiles are config keys: Br query rows per CTA (capped at the next power of two of group·Nq), Bc
keys per tile (capped at 4096 // D so that the tile is at most 16 KiB of float32), T threads,
`ctas` the CTAs to aim for. Workspace: the float32 partial O and LSE of every split.
"""

import functools
import math

import numpy as np
from numba import config as numba_config
from numba import cuda, float32

LESSON = ("flash-decoding: split the KV length over CTAs, merge partial O by LSE; KV read "
          "through a paged block table")
DEFAULT_CONFIG = {"Br": 16, "Bc": 64, "threads": 128, "ctas": 1056}
SIM_CONFIG = {"Br": 4, "Bc": 8, "threads": 16, "ctas": 8}
HEAD_DIMS = (16, 32, 64, 128)
TILE_ELEMS = 4096  # Bc·D at most
COMBINE_THREADS = 128
# CTAs of 128 threads per SM the registers are sized for: 5 (96 registers a thread), 3 where a
# thread holds more than 4 elements of O (Br·D > 4·threads), which spill at 96 and at 128.
MIN_BLOCKS = {True: 5, False: 3}

FASTMATH = {"afn", "arcp", "contract"}
NEG_INF = float32(-math.inf)
LN2 = float32(math.log(2.0))
LOG2E = np.float32(math.log2(math.e))


def tiles(problem, config):
    """(Br, Bc, T) for this problem: Br the next power of two >= group·Nq (at most config Br),
    Bc at most 4096 // D."""
    rows = problem.group * problem.seq_q
    Br = 1
    while Br < min(rows, config["Br"]):
        Br *= 2
    Bc = min(config["Bc"], max(8, TILE_ELEMS // problem.head_dim))
    return Br, Bc, config["threads"]


def split_plan(problem, config):
    """(splits, keys per split L): about `ctas` CTAs in all, L a multiple of Bc."""
    Br, Bc, _ = tiles(problem, config)
    row_blocks = -(-problem.group * problem.seq_q // Br)
    base = problem.batch * problem.kv_heads * row_blocks
    n_tiles = -(-problem.max_seq // Bc)
    want = max(1, min(n_tiles, -(-config["ctas"] // base)))
    per = -(-n_tiles // want)  # tiles per split
    return -(-n_tiles // per), per * Bc


def shared_bytes(Br, Bc, D):
    """One K/V tile buffer (Bc × (D + 1)), Q (Br × (D + 1)), S/P (Br × (Bc + 1)), the tile's
    block-table lookups (2·Bc ints) and m, l, α (3·Br)."""
    return 4 * (Bc * (D + 1) + Br * (D + 1) + Br * (Bc + 1) + 2 * Bc + 3 * Br)


@functools.cache
def build(Br, Bc, D, T):
    """The split-KV kernel for these tiles: CTA (s, row block, b·Hkv + hk)."""
    DP, BP = D + 1, Bc + 1
    OPT = max(1, Br * D // T)  # O elements per thread

    # Memory-bound: registers capped so that MIN_BLOCKS CTAs fit an SM, for loads in flight.
    options = {} if numba_config.ENABLE_CUDASIM else {"launch_bounds": (T, MIN_BLOCKS[OPT <= 4])}

    @cuda.jit(fastmath=FASTMATH, **options)
    def decode_split(q, k_cache, v_cache, block_table, seq_lens, o_part, lse_part,
                     scale_log2, split_len, left, right):
        kv = cuda.shared.array((Bc, DP), float32)  # K tile, then V tile
        q_s = cuda.shared.array((Br, DP), float32)  # the CTA's query rows · scale·log2e
        s_s = cuda.shared.array((Br, BP), float32)  # S, then P
        blk_s = cuda.shared.array(Bc, np.int32)  # physical block of each key of the tile
        off_s = cuda.shared.array(Bc, np.int32)  # its offset in the block
        m_s = cuda.shared.array(Br, float32)
        l_s = cuda.shared.array(Br, float32)
        a_s = cuda.shared.array(Br, float32)
        acc = cuda.local.array(OPT, float32)

        t = cuda.threadIdx.x
        split = cuda.blockIdx.x
        kv_heads = k_cache.shape[1]
        b = cuda.blockIdx.z // kv_heads
        hk = cuda.blockIdx.z - b * kv_heads
        heads = q.shape[1]
        n_q = q.shape[2]
        group = heads // kv_heads
        rows = group * n_q
        row0 = cuda.blockIdx.y * Br
        bs = k_cache.shape[2]
        n_kv = seq_lens[b]
        shift = n_kv - n_q
        # Keys of this split that some row (some new token i in 0..Nq-1) may see.
        lo = max(split * split_len, shift - left, 0)
        hi = min((split + 1) * split_len, n_q - 1 + shift + right + 1, n_kv)

        # The CTA's rows of Q, scaled; m, l per row.
        for idx in range(t, Br * D, T):
            r = idx // D
            d = idx - r * D
            x = float32(0)
            if row0 + r < rows:
                g = (row0 + r) // n_q
                x = float32(q[b, hk * group + g, (row0 + r) - g * n_q, d]) * scale_log2
            q_s[r, d] = x
        for r in range(t, Br, T):
            m_s[r] = NEG_INF
            l_s[r] = float32(0)
        for x in range(OPT):
            acc[x] = float32(0)

        j0 = lo - lo % Bc if hi > lo else hi
        while j0 < hi:
            cuda.syncthreads()  # everyone is done with the last V tile and P
            for c in range(t, Bc, T):  # the block table, once per key of the tile
                key = j0 + c
                if key < hi:
                    lb = key // bs
                    blk_s[c] = block_table[b, lb]
                    off_s[c] = key - lb * bs
            cuda.syncthreads()
            for idx in range(t, Bc * D, T):
                c = idx // D
                d = idx - c * D
                x = float32(0)
                if j0 + c < hi:
                    x = float32(k_cache[blk_s[c], hk, off_s[c], d])
                kv[c, d] = x
            cuda.syncthreads()  # K tile in shared memory

            # S (base 2), one (row, key) pair per thread; masked pairs -inf.
            for pair in range(t, Br * Bc, T):
                r = pair // Bc
                c = pair - r * Bc
                sv = float32(0)
                for d in range(D):
                    sv += q_s[r, d] * kv[c, d]
                key = j0 + c
                i = (row0 + r) % n_q
                if (row0 + r >= rows or key < lo or key >= hi or key < i + shift - left
                        or key > i + shift + right):
                    sv = NEG_INF
                s_s[r, c] = sv
            cuda.syncthreads()

            # Online softmax, one thread per row: m_new, α, P in place, l.
            for r in range(t, Br, T):
                m_old = m_s[r]
                m_new = m_old
                for c in range(Bc):
                    m_new = max(m_new, s_s[r, c])
                m_use = m_new if m_new != NEG_INF else float32(0)
                alpha = math.exp2(m_old - m_use)
                total = float32(0)
                for c in range(Bc):
                    p = math.exp2(s_s[r, c] - m_use)
                    s_s[r, c] = p
                    total += p
                l_s[r] = alpha * l_s[r] + total
                m_s[r] = m_new
                a_s[r] = alpha
            cuda.syncthreads()  # P, α ready; K no longer needed
            for idx in range(t, Bc * D, T):
                c = idx // D
                d = idx - c * D
                x = float32(0)
                if j0 + c < hi:
                    x = float32(v_cache[blk_s[c], hk, off_s[c], d])
                kv[c, d] = x
            cuda.syncthreads()  # V tile in shared memory

            # O = α·O + P V on my elements (row, d) = divmod(t + T·x, D).
            for x in range(OPT):
                e = t + T * x
                if e < Br * D:
                    r = e // D
                    d = e - r * D
                    o = acc[x] * a_s[r]
                    for c in range(Bc):
                        o += s_s[r, c] * kv[c, d]
                    acc[x] = o
            j0 += Bc
        cuda.syncthreads()  # m, l (set by other threads) are final, even when no tile ran

        # This split's normalised O and its LSE (natural log); no key: O = 0, LSE = -inf.
        for x in range(OPT):
            e = t + T * x
            if e < Br * D:
                r = e // D
                d = e - r * D
                if row0 + r < rows:
                    g = (row0 + r) // n_q
                    i = (row0 + r) - g * n_q
                    l_row = l_s[r]
                    o_part[split, b, hk * group + g, i, d] = acc[x] / l_row if l_row > float32(0) else float32(0)
                    if d == 0:
                        lse_part[split, b, hk * group + g, i] = (
                            (m_s[r] + math.log2(l_row)) * LN2 if l_row > float32(0) else NEG_INF)

    return decode_split


@functools.cache
def build_combine(D):
    """O = Σ_s exp(LSE_s − m) O_s / Σ_s exp(LSE_s − m), LSE = m + log Σ: a thread per (row, d)."""

    @cuda.jit(fastmath=FASTMATH)
    def decode_combine(o_part, lse_part, o, lse):
        splits = o_part.shape[0]
        heads = o.shape[1]
        n_q = o.shape[2]
        e = cuda.blockIdx.x * COMBINE_THREADS + cuda.threadIdx.x
        row = e // D
        d = e - row * D
        if row >= o.shape[0] * heads * n_q:
            return
        b = row // (heads * n_q)
        rest = row - b * heads * n_q
        h = rest // n_q
        i = rest - h * n_q
        m = NEG_INF
        for s in range(splits):
            m = max(m, lse_part[s, b, h, i])
        if m == NEG_INF:
            o[b, h, i, d] = 0
            if d == 0:
                lse[b, h, i] = NEG_INF
            return
        num = float32(0)
        den = float32(0)
        for s in range(splits):
            w = math.exp(lse_part[s, b, h, i] - m)  # exp(-inf) = 0 for empty splits
            den += w
            num += w * o_part[s, b, h, i, d]
        o[b, h, i, d] = num / den
        if d == 0:
            lse[b, h, i] = m + math.log(den)

    return decode_combine


def needs(problem, config):
    from ..harness.runner import Needs

    Br, Bc, T = tiles(problem, config)
    return Needs(shared_bytes=shared_bytes(Br, Bc, problem.head_dim), head_dims=HEAD_DIMS,
                 rules={"threads is a multiple of 16, at most 1024": T % 16 == 0 and T <= 1024,
                        "Br is a power of two": Br & (Br - 1) == 0})


def workspace_bytes(problem, config):
    """The partial O (float32) and LSE of every split."""
    splits, _ = split_plan(problem, config)
    rows = problem.batch * problem.heads * problem.seq_q
    return 4 * splits * rows * (problem.head_dim + 1)


def launch(problem, config, q, k_cache, v_cache, block_table, seq_lens, o, lse, gpu):
    p = problem
    Br, Bc, T = tiles(p, config)
    splits, split_len = split_plan(p, config)
    left, right = p.mask_bounds()
    o_part = gpu.empty((splits, p.batch, p.heads, p.seq_q, p.head_dim), np.float32)
    lse_part = gpu.empty((splits, p.batch, p.heads, p.seq_q), np.float32)
    row_blocks = -(-p.group * p.seq_q // Br)
    gpu.launch(build(Br, Bc, p.head_dim, T), (splits, row_blocks, p.batch * p.kv_heads), T,
               q, k_cache, v_cache, block_table, seq_lens, o_part, lse_part,
               LOG2E * np.float32(p.scale), split_len, left, right)
    n = p.batch * p.heads * p.seq_q * p.head_dim
    gpu.launch(build_combine(p.head_dim), -(-n // COMBINE_THREADS), COMBINE_THREADS,
               o_part, lse_part, o, lse)
