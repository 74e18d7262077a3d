"""Rung 5 — flash2: FlashAttention-2's partitioning (Dao 2023, Algorithm 1 of FA2).

Rung 4 (flash1) walks the KV blocks in the outer loop and the Q blocks inside, so the running O, m
and l of every query block make a round trip through device memory for every KV block, O is divided
by l at every step, and only B·H blocks run. FlashAttention-2 flips the loops back: a thread
block (CTA) owns one query block Q_i of Br rows for the whole call, streams the KV tiles K_j, V_j
of Bc keys through shared memory, and keeps O_i, m_i, l_i on chip until the end. With
Tr = ⌈Nq / Br⌉ query blocks and Tc = ⌈Nkv / Bc⌉ KV tiles, CTA (i, b·h) runs, in the paper's
notation:

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

These are `reference.online_attention`'s names and steps. Rung 3 (online) computes the same, but
with one thread per query row, each doing D multiply-adds per value it reads; here the CTA works on
the Br × Bc tile like a small matrix product.

What changes against flash1, and why:
- Loop order: Q_i outer (one per CTA), KV tiles inner. O, m, l never leave the chip, Q_i is read
  from device memory once, and the grid (Tr, B·H) is parallel over query blocks as well as heads,
  so even B·H = 1 fills many SMs.
- Normalise once: inside the loop O only takes the alpha rescale; it is divided by l once at the
  end, so fewer non-matmul FLOPs per tile.
- Skip masked tiles: row i sees keys i + shift − left … i + shift + right (clamped to [0, Nkv)),
  and both ends grow with i. So a CTA's rows together see one run of keys, from its first row's
  first key to its last row's last key, and only the tiles j_start … j_end − 1 covering it are
  loaded. Causal does about half of the tiles of the full square (0.51 at N = 4096, Br = 64,
  Bc = 32). A window (w, 0) does about (Br + w) / Bc + 1 tiles per CTA, however long Nkv is. Only
  tiles on the mask's edge evaluate the mask at all: the test is the same for the whole CTA.
- Warps split the rows: the CTA's threads form a TR × TC grid. Thread (tr, tc) owns RM query rows
  r = tr + TR·a (a < RM), and for each of them RN keys c = tc + TC·b (b < RN) of S and D / TC
  columns of O. The TC threads that share a row are consecutive, inside one warp, so the row max
  (the one value a tile needs from other threads) is a butterfly of warp shuffles by default
  (row_reduce = SHUFFLE), or goes through a small shared array and a warp barrier (SHARED, the
  path the assignment teaches). The row sum needs no exchange inside
  the loop: alpha is the same for all TC threads of a row, so each keeps l over its own keys and
  the TC partial sums are added once, at the end.

Performance tricks, one sentence each:
- Register tiling: each thread computes an RM × RN micro-tile of S and an RM × D/TC micro-tile of
  O, so every value read from shared memory feeds RN (or RM, or D/TC) FMAs. The micro-tiles are
  local arrays indexed only by constants of unrolled loops, so they live in registers (0 stack).
- 16-byte shared loads: rows of Q_i, K_j and V_j are read 4 floats at a time along D (P along the
  tile), with 16-byte aligned rows padded by 4 floats (P's by max(4, TC)). So each LDS.128 of a
  warp touches 32 different banks, or repeats a word (broadcast).
- exp2: Q_i is multiplied by scale·log2(e) as it is loaded, so S is in base-2 units and
  P = 2^(S − m) is one MUFU.EX2. LSE = ln2 · (m + log2 l). FASTMATH makes exp2, log2 and 1/l the
  approximate instructions, but the compiler may still not assume m is finite.
- Loads: a tile is copied with consecutive threads on consecutive d (coalesced reads,
  conflict-free stores), 16 loads in flight per thread, at constant offsets from one address.
  Only the last tile predicates its loads (rows past N are zeros).
- Index arithmetic: indices into arrays are unsigned and the inner loops count with plain
  counters, so Numba's negative-index wraparound code disappears. A never-taken
  `shape[3] != D` test tells the compiler that rows are D elements long.
- One shared buffer for K_j, then V_j (by default): it halves the K/V footprint, which lets
  D = 128 keep the same Bc within Numba's 48 KiB of static shared memory (at the price of two more
  barriers).
- Occupancy: launch_bounds caps the registers so that min(warps_per_sm / warps per CTA, CTAs that
  shared memory admits) CTAs fit an SM. 168 registers and 6 CTAs of 2 warps at D <= 64 (RM = 8);
  168 registers and 5 CTAs of 2 warps at D = 128 (RM = 4); no spills. While one CTA waits at a
  barrier for its K_j or V_j, the others compute.
- Variants, chosen by config keys (PERF_NOTES.md predicts and measures them; the default is the
  fastest measured, "rm8-ua": RM = 8, shared_index UNSIGNED, row_reduce SHUFFLE, one K/V buffer,
  stages 1, d_step 4 — 1.10x SDPA efficient in float32 where v0 (RM = 4, SIGNED, SHARED) was 0.92x):
  - shared_index UNSIGNED: the S and P V loops cast their shared-memory indices to unsigned, so
    each Q_i, K_j, P, V_j row is one address plus constant offsets, not a compare, a select and
    two multiply-adds per 16-byte load.
  - row_reduce SHUFFLE: a row's max (each tile) and its l (at the end) are a butterfly of
    `shfl_xor_sync` over its TC lanes (warp.segment_max / segment_sum), not a shared array and a
    warp barrier, which also frees Br·TC·4 bytes of shared memory.
  - kv_buffers 2: K_j and V_j get a buffer each (when 48 KiB allow), are loaded together after one
    barrier, and P_ij, whose rows one warp writes and reads, needs only a warp barrier: 2 block
    barriers per tile instead of 4.
  - stages 2: tile j+1's K (and V) are loaded from device memory into registers before tile j is
    computed and stored to shared memory after the next barrier (register double-buffering), so
    no barrier waits for device memory.
  - d_step 8 or 16: the S loop reads d_step values of D per trip (fewer trips, fewer counter and
    address instructions, more registers).
- Heaviest blocks first: under causal the last query blocks see the most keys, so grid block x
  takes query block Tr − 1 − x and the long CTAs start first (a shorter tail).
- K/V reuse in L2: blockIdx.x runs over the query blocks of one head, so CTAs resident together
  read the same K_j, V_j (and GQA heads h // group share them too). Device memory sees about Q, K,
  V, O and LSE once each.

Tiles are config keys: Br query rows per CTA, Bc keys per tile, RM × RN the S micro-tile of a
thread. So TR = Br / RM, TC = Bc / RN, and a CTA has TR·TC threads. One rule depends on D: the Q
block holds at most 4096 elements (Br is capped at 4096 // D). So at D = 128 the default Br = 64
becomes 32 and the CTA has 64 threads. Q_i, the K/V tile, P and the row scratch then fit in
48 KiB at every supported D: 4·(Br·(D + 4) + Bc·(D + 4) + Br·(Bc + max(4, TC)) + Br·TC) bytes,
37.5 KiB at D = 64 and 39 KiB at D = 128 with the defaults (shared_bytes: a second K/V buffer
adds Bc·(D + 4)·4, shuffles drop the Br·TC·4 of the scratch). Head dims 16, 32, 64 and 128.

Masks (bottom-right causal, windows) and GQA as in rung 1. K/V loads past Nkv are zero-filled and
those keys masked, and Q rows past Nq are zero and never stored, so any length works. A row that
sees no key keeps m = -inf and l = 0. Its exponent uses 0 in place of m (never exp(-inf − -inf)),
and it ends with O = 0 and LSE = -inf. Float16 and bfloat16 inputs are converted to float32 as they
are loaded (bfloat16 arrives as its uint16 bits: common.load_f32), all arithmetic is float32, and
O is stored in the input dtype (bfloat16 rounded to nearest even: common.to_io). No workspace:
`workspace_bytes` is 0.
"""

import functools
import math

import numpy as np
from numba import config as numba_config
from numba import cuda, float32

from .common import first_key, last_key, load_f32, to_io, visible
from .warp import FULL_MASK, segment_max, segment_sum

LESSON = ("FA2 partitioning: a CTA owns a Q block, warps split its rows, O normalised once, "
          "LSE saved, masked tiles skipped")
# H100: Br query rows per CTA, Bc keys per K/V tile, RM × RN S micro-tile per thread (Br capped at
# 4096 // D, RM at 4 above D = 64: 64 rows and 64 threads at D <= 64, 32 rows and 64 threads at
# D = 128), and the warps per SM the register budget is sized for (see min_blocks). The defaults
# are the fastest of 13 measured variants, "rm8-ua": RM = 8, unsigned shared indices, row max by
# shuffles, 1.10x SDPA efficient in float32 (figures/h100/perf-variants-flash2.json).
DEFAULT_CONFIG = {"Br": 64, "Bc": 32, "RM": 8, "RN": 4, "warps_per_sm": 10,
                  "row_reduce": 2, "kv_buffers": 1, "stages": 1, "d_step": 4, "shared_index": 2}
# Compile-time variants (issue 8; PERF_NOTES.md predicts and measures each): row_reduce SHARED or
# SHUFFLE, kv_buffers 1 (K_j then V_j in one buffer) or 2, stages 1 (load, then compute) or 2
# (tile j+1 in registers while tile j computes), d_step 4, 8 or 16 (elements of D per trip of S),
# shared_index SIGNED (as written) or UNSIGNED (cast: no negative-index wraparound code).
SHARED, SHUFFLE = 1, 2
SIGNED, UNSIGNED = 1, 2  # config["shared_index"]: how the S and P V loops index shared memory
SIM_CONFIG = {"Br": 8, "Bc": 8, "RM": 2, "RN": 2}  # 16 threads: each is a Python thread there
HEAD_DIMS = (16, 32, 64, 128)
Q_BLOCK_ELEMS = 4096  # Br·D at most: the rule that keeps D = 128 inside 48 KiB
SM_SHARED, CTA_RESERVED = 228 * 1024, 1024  # H100 shared memory per SM, and reserved per CTA

# exp2, log2 and 1/l as the hardware's approximate instructions, denormals flushed to zero (what
# nvcc -use_fast_math does), but not the "fast" flags that let the compiler assume there are no
# infinities: m = -inf is how a row says it has seen no key yet.
FASTMATH = {"afn", "arcp", "contract"}
NEG_INF = float32(-math.inf)  # a bare -math.inf would be float64 and drag the arithmetic into FP64
LOG2E = np.float32(math.log2(math.e))
LN2 = float32(math.log(2.0))


if numba_config.ENABLE_CUDASIM:
    @cuda.jit(device=True, inline="always")
    def warp_sync():
        """The simulator has no syncwarp: a block barrier is the (stronger) stand-in."""
        cuda.syncthreads()
else:
    @cuda.jit(device=True, inline="always")
    def warp_sync():
        """The row-max exchange is among the TC threads of one warp: a warp barrier suffices."""
        cuda.syncwarp()


def tiles(problem, config):
    """(Br, Bc, RM, RN, TR, TC) for this problem: Br capped at 4096 // D (the Q block rule), and at
    D > 64 RM capped at 4 (with Br = 32, RM = 8 would leave a CTA one warp; D = 128 keeps the
    layout it was measured with)."""
    RM = min(config["RM"], 4) if problem.head_dim > 64 else config["RM"]
    Br = min(config["Br"], max(RM, Q_BLOCK_ELEMS // problem.head_dim))
    Bc, RN = config["Bc"], config["RN"]
    return Br, Bc, RM, RN, Br // RM, Bc // RN


def shared_bytes(Br, Bc, D, TC, row_reduce=SHARED, kv_buffers=1):
    """Static shared memory of one CTA: Q_i and the K_j/V_j buffer(s) (rows padded to D + 4), P
    (rows padded to Bc + max(4, TC)) and, unless rows reduce by shuffles, the row-reduction
    scratch (Br × TC), all float32."""
    red = Br * TC if row_reduce == SHARED else 0
    return 4 * (Br * (D + 4) + kv_buffers * Bc * (D + 4) + Br * (Bc + max(4, TC)) + red)


def min_blocks(threads, smem, warps_per_sm):
    """CTAs per SM the register budget is sized for (launch_bounds' second number): as many as the
    shared memory admits on an H100 (228 KiB per SM, 1 KiB of it reserved per CTA), but no more
    than warps_per_sm warps. With the defaults: 6 CTAs of 64 threads at D <= 64 (168 registers a
    thread), 5 CTAs of 64 threads at D = 128 (shared memory's limit; ptxas uses 168)."""
    return max(1, min(warps_per_sm * 32 // threads, SM_SHARED // (smem + CTA_RESERVED)))


@cuda.jit(device=True, inline="always")
def as_unsigned(i):
    """i as an unsigned index: Numba then emits no negative-index wraparound (compare, select)."""
    return np.uint64(i)


@cuda.jit(device=True, inline="always")
def as_is(i):
    """i unchanged: Numba wraps negative indices unless the compiler proves i >= 0."""
    return i


@functools.cache
def build(Br, Bc, D, RM, RN, warps_per_sm=16, row_reduce=SHARED, kv_buffers=1, stages=1, d_step=4,
          shared_index=SIGNED):
    """The kernel for these tiles and head dim D (every array shape and loop bound a constant),
    and the variants the config selects (DEFAULT_CONFIG's comment)."""
    TR, TC = Br // RM, Bc // RN
    ROW_SHUFFLE = row_reduce == SHUFFLE  # row max and final row sum by warp shuffles
    TWO_BUFFERS = kv_buffers == 2  # K_j and V_j each have a buffer: loaded together
    PREFETCH = stages == 2  # the next tile's K (and V) wait in registers during this one
    ix = as_unsigned if shared_index == UNSIGNED else as_is  # shared-memory indices in S and P V
    THREADS = TR * TC
    DP = D + 4  # padded row of Q_i and K_j / V_j in shared memory
    BP = Bc + max(4, TC)  # padded row of P
    DT = D // TC  # O columns per thread
    VW = 4 if DT % 4 == 0 else (2 if DT % 2 == 0 else 1)  # a thread's O columns come in runs of VW
    NV = DT // VW

    # Who copies what: with TPR = min(THREADS, D) threads per row (rule: one of THREADS, D divides
    # the other), thread t takes columns d0 + TPR·cc (cc < COLS) of rows r0 + RSTEP·it, where
    # d0 = t mod TPR and r0 = t div TPR. Consecutive threads take consecutive d: a warp's reads
    # are coalesced and its shared-memory stores hit 32 different banks.
    TPR = min(THREADS, D)  # threads per row of a tile
    RSTEP = THREADS // TPR  # rows copied at once
    COLS = D // TPR  # columns per thread and row

    def tile_loader(ROWS):
        """A device function that copies ROWS × D elements of one head into shared memory."""
        ITS = -(-ROWS // RSTEP)  # rows per thread
        CH = min(ITS, max(1, 16 // COLS))  # rows per step: 16 loads in flight, all unrolled
        EXACT = ROWS % RSTEP == 0 and ITS % CH == 0

        @cuda.jit(device=True, inline="always")
        def load(src, b, h, row0, n, scale, tile):
            """tile[r, d] = scale · src[b, h, row0 + r, d] as float32, zeros for rows past n.
            A whole tile (every one but the last) is read at constant offsets from one address
            per step; the last one predicates its loads, so no load is ever behind a branch.
            (Indices are cast to unsigned: no negative-index wraparound code.)"""
            t = cuda.threadIdx.x
            d0 = t % TPR
            r0 = t // TPR
            it0 = 0
            if row0 + ROWS <= n:  # a whole tile (all but the last): no guard at all
                while it0 < ITS:  # (a plain counter, as in S = Q Kᵀ below)
                    for u in range(CH):
                        r = r0 + RSTEP * (it0 + u)
                        if EXACT or r < ROWS:
                            for cc in range(COLS):
                                d = d0 + TPR * cc
                                x = src[b, h, np.uint64(row0 + r), np.uint64(d)]
                                tile[np.uint64(r), np.uint64(d)] = load_f32(x) * scale
                    it0 += CH
            else:  # the last tile: rows past n are zeros (predicated loads, no branches)
                while it0 < ITS:
                    for u in range(CH):
                        r = r0 + RSTEP * (it0 + u)
                        if EXACT or r < ROWS:
                            inside = row0 + r < n
                            for cc in range(COLS):
                                d = d0 + TPR * cc
                                x = float32(0)
                                if inside:
                                    x = load_f32(src[b, h, np.uint64(row0 + r), np.uint64(d)])
                                tile[np.uint64(r), np.uint64(d)] = x * scale
                    it0 += CH

        return load

    def tile_prefetcher(ROWS):
        """fetch: the thread's share of ROWS × D elements of one head (tile_loader's) into a
        register array; stash: that array into a shared tile, after a barrier. The array is
        indexed only by constants of unrolled loops, so it lives in registers."""
        ITS = -(-ROWS // RSTEP)  # rows per thread
        EXACT = ROWS % RSTEP == 0

        @cuda.jit(device=True, inline="always")
        def fetch(src, b, h, row0, n, regs):
            """regs[it·COLS + cc] = src[b, h, row0 + r0 + RSTEP·it, d0 + TPR·cc] as float32, zeros
            for rows past n (only the last tile predicates its loads)."""
            t = cuda.threadIdx.x
            d0 = t % TPR
            r0 = t // TPR
            whole = row0 + ROWS <= n
            for it in range(ITS):
                r = r0 + RSTEP * it
                if EXACT or r < ROWS:
                    inside = whole or row0 + r < n
                    for cc in range(COLS):
                        x = float32(0)
                        if inside:
                            x = load_f32(src[b, h, np.uint64(row0 + r), np.uint64(d0 + TPR * cc)])
                        regs[it * COLS + cc] = x

        @cuda.jit(device=True, inline="always")
        def stash(regs, tile):
            """tile[r0 + RSTEP·it, d0 + TPR·cc] = regs[it·COLS + cc]."""
            t = cuda.threadIdx.x
            d0 = t % TPR
            r0 = t // TPR
            for it in range(ITS):
                r = r0 + RSTEP * it
                if EXACT or r < ROWS:
                    for cc in range(COLS):
                        tile[np.uint64(r), np.uint64(d0 + TPR * cc)] = regs[it * COLS + cc]

        return fetch, stash, ITS * COLS

    load_q = tile_loader(Br)
    load_kv = tile_loader(Bc)
    fetch_kv, stash_kv, KV_REGS = tile_prefetcher(Bc)
    PF_REGS = KV_REGS if PREFETCH else 1  # registers for one prefetched tile (1: unused)
    VROWS = Bc if TWO_BUFFERS else 1  # rows of V_j's own buffer (1: unused, V_j goes over K_j)
    RED_ROWS = 1 if ROW_SHUFFLE else Br  # rows of the reduction scratch (1: unused)
    SMEM = shared_bytes(Br, Bc, D, TC, row_reduce, kv_buffers)

    # launch_bounds caps the registers so that this many CTAs fit an SM's 64K registers (the
    # simulator knows no launch bounds).
    options = {} if numba_config.ENABLE_CUDASIM else {
        "launch_bounds": (THREADS, min_blocks(THREADS, SMEM, warps_per_sm))}
    # Shared rows start 16-byte aligned, so 4 floats are one 128-bit load (the simulator refuses
    # an alignment argument other than None).
    ALIGN = None if numba_config.ENABLE_CUDASIM else 16

    @cuda.jit(fastmath=FASTMATH, **options)
    def flash2(q, k, v, o, lse, scale_log2, group, left, right):
        """CTA (x, bh) owns query block Q_i, i = Tr − 1 − x, of head bh; thread (tr, tc) its
        micro-tiles."""
        # (One shared array per line: the simulator aliases calls that share a line.)
        q_i = cuda.shared.array((Br, DP), float32, alignment=ALIGN)  # Q_i · scale·log2(e)
        k_j = cuda.shared.array((Bc, DP), float32, alignment=ALIGN)  # K_j (then V_j, 1 buffer)
        v_own = cuda.shared.array((VROWS, DP), float32, alignment=ALIGN)  # V_j (2 buffers)
        v_j = v_own if TWO_BUFFERS else k_j
        p_ij = cuda.shared.array((Br, BP), float32, alignment=ALIGN)  # P_ij
        red = cuda.shared.array((RED_ROWS, TC), float32, alignment=ALIGN)  # row max, then sum
        s = cuda.local.array((RM, RN), float32)  # this thread's micro-tile of S, then of P
        acc = cuda.local.array((RM, DT), float32)  # its micro-tile of the unnormalised O
        m = cuda.local.array(RM, float32)  # running row max (base 2)
        l = cuda.local.array(RM, float32)  # running row sum over this thread's keys only
        qf = cuda.local.array((RM, d_step), float32)  # d_step values along D of my rows of Q_i
        kf = cuda.local.array((RN, d_step), float32)  # ... and of each of my keys of K_j
        pf = cuda.local.array((RM, 4), float32)  # 4 keys of P for each of my rows
        vf = cuda.local.array(DT, float32)  # my O columns of one row of V_j
        row_max = cuda.local.array(RM, float32)  # my rows' max over this tile (shuffles)
        k_next = cuda.local.array(PF_REGS, float32)  # my share of the next K tile (prefetch)
        v_next = cuda.local.array(PF_REGS, float32)  # ... and of a V tile

        t = cuda.threadIdx.x
        tr = t // TC
        tc = t - tr * TC
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

        # The KV tiles this CTA needs: first row's first key to last row's last key.
        i_last = min(i0 + Br, n_q) - 1  # the block's last row inside Nq
        ### BEGIN SOLUTION causal-skip
        key_lo = max(first_key(i0, shift, left), 0)
        key_hi = min(last_key(i_last, shift, right) + 1, n_kv)
        j_start = key_lo // Bc
        j_end = (key_hi + Bc - 1) // Bc if key_hi > key_lo else j_start
        ### END SOLUTION
        # Keys every row of the block sees: the last row's first key to the first row's last.
        # A tile inside [inner_lo, inner_hi) needs no mask (rows past Nq compute on zeros of Q
        # there and are never stored).
        inner_lo = max(first_key(i_last, shift, left), 0)
        inner_hi = min(last_key(i0, shift, right) + 1, n_kv)

        for a in range(RM):
            m[a] = NEG_INF
            l[a] = float32(0)
            for x in range(DT):
                acc[a, x] = float32(0)

        load_q(q, b, h, i0, n_q, scale_log2, q_i)  # Q_i, once (made visible below)
        if PREFETCH and j_start < j_end:
            fetch_kv(k, b, hk, np.uint32(j_start * Bc), n_kv, k_next)  # K of the first tile
            if TWO_BUFFERS:
                fetch_kv(v, b, hk, np.uint32(j_start * Bc), n_kv, v_next)

        for j in range(j_start, j_end):
            j0 = np.uint32(j * Bc)  # (unsigned: no negative-index wraparound code)
            cuda.syncthreads()  # every thread is done with V_{j-1} (and P_{j-1})
            if PREFETCH:  # K_j (and V_j) from registers; then tile j+1's loads, in flight
                stash_kv(k_next, k_j)
                if TWO_BUFFERS:
                    stash_kv(v_next, v_j)
                    if j + 1 < j_end:
                        fetch_kv(k, b, hk, j0 + Bc, n_kv, k_next)
                        fetch_kv(v, b, hk, j0 + Bc, n_kv, v_next)
                else:
                    fetch_kv(v, b, hk, j0, n_kv, v_next)  # (stored over K_j after S)
            else:
                load_kv(k, b, hk, j0, n_kv, float32(1), k_j)
                if TWO_BUFFERS:
                    load_kv(v, b, hk, j0, n_kv, float32(1), v_j)
            cuda.syncthreads()  # K_j (and V_j) is in shared memory

            # S = Q_i K_jᵀ on my RM × RN micro-tile, d_step elements of D (d_step / 4 16-byte
            # loads of each row) a trip.
            for a in range(RM):
                for c in range(RN):
                    s[a, c] = float32(0)
            d = 0
            while d < D:  # (a plain counter: the compiler sees 0 <= d < D, no wraparound code)
                for a in range(RM):
                    for u in range(d_step):
                        qf[a, u] = q_i[ix(tr + TR * a), ix(d + u)]
                for c in range(RN):
                    for u in range(d_step):
                        kf[c, u] = k_j[ix(tc + TC * c), ix(d + u)]
                for a in range(RM):
                    for c in range(RN):
                        for u in range(d_step):
                            s[a, c] += qf[a, u] * kf[c, u]
                d += d_step

            # Mask (only tiles on the mask's edge: the branch is the same for the whole CTA),
            # then each row's max over my keys into the scratch row.
            if j0 < inner_lo or j0 + Bc > inner_hi:
                for a in range(RM):
                    row = i0 + tr + TR * a
                    for c in range(RN):
                        key = j0 + tc + TC * c
                        if row >= n_q or key >= n_kv or not visible(row, key, shift, left, right):
                            s[a, c] = NEG_INF
            for a in range(RM):
                mx = s[a, 0]
                for c in range(1, RN):
                    mx = max(mx, s[a, c])
                if ROW_SHUFFLE:  # the row's TC threads are lanes of one warp: a butterfly
                    row_max[a] = segment_max(FULL_MASK, mx, TC)
                else:
                    red[tr + TR * a, tc] = mx
            if not ROW_SHUFFLE:
                warp_sync()  # the TC threads of a row are in one warp

            # m_new, alpha, P = 2^(S - m_new), l; O rescaled (not normalised).
            ### BEGIN SOLUTION
            for a in range(RM):
                r = tr + TR * a
                m_new = m[a]
                if ROW_SHUFFLE:
                    m_new = max(m_new, row_max[a])
                else:
                    for w in range(TC):
                        m_new = max(m_new, red[r, w])
                # A row that has seen no key yet keeps m = -inf; 0 stands in so exp2 stays finite.
                m_use = m_new if m_new != NEG_INF else float32(0)
                alpha = math.exp2(m[a] - m_use)
                m[a] = m_new
                rowsum = float32(0)
                for c in range(RN):
                    p = math.exp2(s[a, c] - m_use)
                    rowsum += p
                    p_ij[r, tc + TC * c] = p
                l[a] = alpha * l[a] + rowsum
                for x in range(DT):
                    acc[a, x] *= alpha
            ### END SOLUTION

            if TWO_BUFFERS:
                warp_sync()  # P_ij's rows are written and read by the TC threads of one warp
            else:
                cuda.syncthreads()  # every thread is done with K_j (and P_ij is in shared memory)
                if PREFETCH:
                    stash_kv(v_next, v_j)
                else:
                    load_kv(v, b, hk, j0, n_kv, float32(1), v_j)
                cuda.syncthreads()  # V_j is in shared memory
                if PREFETCH and j + 1 < j_end:
                    fetch_kv(k, b, hk, j0 + Bc, n_kv, k_next)  # K_{j+1}, in flight during P V_j

            # O += P_ij V_j on my RM × DT micro-tile, 8 keys a trip (two 16-byte loads of P a row).
            c0 = 0
            while c0 < Bc:
                for half in range(2):
                    c = c0 + 4 * half
                    for a in range(RM):
                        for u in range(4):
                            pf[a, u] = p_ij[ix(tr + TR * a), ix(c + u)]
                    for u in range(4):
                        for n in range(NV):
                            for w in range(VW):
                                vf[n * VW + w] = v_j[ix(c + u), ix(VW * (tc + TC * n) + w)]
                        for a in range(RM):
                            for x in range(DT):
                                acc[a, x] += pf[a, u] * vf[x]
                c0 += 8

        # l: add the TC partial sums of each row (the scratch's last max reads were before the
        # barriers above; its rows belong to this warp only).
        for a in range(RM):
            if ROW_SHUFFLE:
                l[a] = segment_sum(FULL_MASK, l[a], TC)  # the whole row's l, in all its lanes
            else:
                red[tr + TR * a, tc] = l[a]
        if not ROW_SHUFFLE:
            warp_sync()

        # O = O / l once; LSE = ln2 · (m + log2 l). A row that saw no key: O = 0, LSE = -inf.
        ### BEGIN SOLUTION
        for a in range(RM):
            r = tr + TR * a
            row = i0 + r
            if ROW_SHUFFLE:
                l_row = l[a]
            else:
                l_row = float32(0)
                for w in range(TC):
                    l_row += red[r, w]
            if row < n_q:
                inv_l = float32(1) / l_row if l_row > float32(0) else float32(0)
                for n in range(NV):
                    for w in range(VW):
                        col = np.uint64(VW * (tc + TC * n) + w)
                        o[b, h, np.uint64(row), col] = to_io(acc[a, n * VW + w] * inv_l, o)
                if tc == 0:
                    lse[b, h, row] = ((m[a] + math.log2(l_row)) * LN2 if l_row > float32(0)
                                      else NEG_INF)
        ### END SOLUTION

    return flash2


def needs(problem, config):
    from ..harness.runner import Needs

    Br, Bc, RM, RN, TR, TC = tiles(problem, config)
    D = problem.head_dim
    return Needs(
        shared_bytes=shared_bytes(Br, Bc, D, TC, config["row_reduce"], config["kv_buffers"]),
        head_dims=HEAD_DIMS,
        dtypes=("float32", "float16", "bfloat16"),
        rules={
            "RM divides Br (after the cap Br <= 4096 // D)": Br % RM == 0,
            "RN divides Bc": Bc % RN == 0,
            "Bc is a multiple of 8 (P V runs 8 keys per step)": Bc % 8 == 0,
            "TC = Bc / RN divides 32 (a row's threads share one warp)": 32 % TC == 0,
            "TC = Bc / RN divides D (each thread owns D / TC columns of O)": D % TC == 0,
            "one of threads (Br/RM · Bc/RN) and D divides the other (tile copies)":
                (TR * TC) % D == 0 or D % (TR * TC) == 0,
            "warps_per_sm <= 64": config["warps_per_sm"] <= 64,
            "row_reduce is 1 (SHARED) or 2 (SHUFFLE)": config["row_reduce"] in (SHARED, SHUFFLE),
            "kv_buffers is 1 or 2": config["kv_buffers"] in (1, 2),
            "stages is 1 or 2": config["stages"] in (1, 2),
            "d_step is 4, 8 or 16 and divides D": config["d_step"] in (4, 8, 16)
                and D % config["d_step"] == 0,
            "shared_index is 1 (SIGNED) or 2 (UNSIGNED)":
                config["shared_index"] in (SIGNED, UNSIGNED),
        },
    )


def workspace_bytes(problem, config):
    """None: O, m and l stay on chip (registers) from the first KV tile to the last."""
    return 0


def launch(problem, config, q, k, v, o, lse, gpu):
    p = problem
    Br, Bc, RM, RN, TR, TC = tiles(p, config)
    left, right = p.mask_bounds()
    kernel = build(Br, Bc, p.head_dim, RM, RN, config["warps_per_sm"], config["row_reduce"],
                   config["kv_buffers"], config["stages"], config["d_step"],
                   config["shared_index"])
    gpu.launch(kernel, (-(-p.seq_q // Br), p.batch * p.heads), TR * TC,
               q, k, v, o, lse, LOG2E * np.float32(p.scale), p.group, left, right)
