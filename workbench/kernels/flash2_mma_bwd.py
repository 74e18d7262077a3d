"""Backward of flash2_mma — FlashAttention-2's backward (Algorithm 2 of FA2) on the tensor cores.

The gradients, as flash2_bwd writes them out (reference.attention_backward):

    P  = exp(S − LSE)            S = scale · Q Kᵀ, LSE saved by the forward
    dV = Pᵀ dO                   dP = dO Vᵀ
    D  = rowsum(dO ∘ O)          (one number per query row)
    dS = P ∘ (dP − D)
    dQ = scale · dS K            dK = scale · dSᵀ Q

Five matrix products per tile instead of the forward's two: the backward is 2.5× the forward's
FLOPs. flash2_bwd does them as FFMAs; here each is `mma.sync.m16n8k16` (flash2_mma's linked
`mma.cu`, fragment layouts in its header). Three kernels:

1. `bwd_prep`, the paper's preprocessing: D = rowsum(dO ∘ O) and LSE₂ = LSE·log2 e per query row
   (−inf, a row that sees no key, becomes +inf, so its P = 2^(S − ∞) = 0 with no test), rows
   padded to a whole number of query blocks (+inf, 0: the padding's P is 0 too); and the float32
   dQ accumulator zeroed. D comes from the 16-bit O, as FlashAttention takes it.
2. `flash2_mma_bwd`, Algorithm 2's loop, KV blocks outer: a CTA owns K_j, V_j (Bc keys of one
   key/value head) and walks the query blocks Q_i, dO_i (Br rows) that see any of its keys, for
   every query head of the group (GQA: dK, dV come out summed over the group, in registers):

       Sᵀ = K_j Q_iᵀ,  dPᵀ = V_j dO_iᵀ                       (Bc × Br: mma.sync)
       Pᵀ = 2^(c·Sᵀ − LSE₂),  dSᵀ = Pᵀ ∘ (dPᵀ − D)            (registers; c = scale·log2 e)
       dV_j += Pᵀ dO_i,  dK_j += dSᵀ Q_i                     (Bc × D: mma.sync, registers)
       dQ_i += dS K_j                                        (Br × D: mma.sync, float32 atomics)

3. `bwd_dq_convert`: dQ = scale · dQ_acc, in the I/O dtype.

Who computes what. Warp w owns keys 16w … 16w + 15 of the block, for every tile, so it computes
Sᵀ and dPᵀ with *keys as rows*. That choice is what keeps P and dS out of shared memory on the way
to dV and dK: Sᵀ's C fragments for 16 queries are, element for element, the A fragment of Pᵀ for
that chunk of the contraction (flash2_mma's P trick, transposed), and the warp's dV and dK rows are
its own keys. Its rows of V_j are A fragments held in registers for the whole CTA (loaded once,
straight from global memory); K_j's come from shared memory per tile (K_j is there anyway for dQ).
Q_i and dO_i are the B operands: `ldmatrix` of the (row, d) tiles as they are for Sᵀ, dPᵀ, and
`ldmatrix.trans` for dV, dK. dQ = dS K_j contracts over keys, which the warps split, so dSᵀ goes
once through shared memory (16-bit, as FA2): each warp writes its 16 rows, then the CTA's Br × D
dQ tile is split over the warps (a WM × WN grid), A = dS by `ldmatrix.trans` of dSᵀ, B = K_j by
`ldmatrix.trans`, and each warp adds its float32 tile into dQ_acc with `red.global.add.v2.f32`
(two neighbouring columns per instruction).

The choice for dQ: float32 atomics (the paper's), the default and only path. Every K/V block adds
its share of dQ_i straight into a float32 accumulator in device memory (L2 does the adds), so dQ
costs no second pass over S and dP: 5 matrix products a tile, not flash2_bwd's 7. The price is an
accumulator of 4·D bytes per query row, one pass to zero it (in the prep kernel, which reads dO and
O anyway) and one to convert it, and **run-to-run bit differences in dQ**: float additions arrive
in whatever order the CTAs reach L2. dK and dV are still written once, by one thread each, in a
fixed order. `DETERMINISTIC = False` tells the harness not to demand bitwise-equal repeats.

Pipelining: Q_{i+1}, dO_{i+1} (and their LSE₂, D) are copied by cp.async while the CTA computes
dQ_i and adds it up; the other CTA on the SM (two at the defaults) covers the rest.

Masks and skipping as flash2_bwd (the same `first_key`/`last_key` rule): the CTA of keys
j0 … j_last visits only query rows i with i + shift − left ≤ j_last and i + shift + right ≥ j0 —
about half of them under causal — and evaluates the mask only on edge tiles. Rows past Nq need no
mask (their LSE₂ is +inf); keys past Nkv are zero-filled and masked on edge tiles.

Resources: all shared memory static (≤ 48 KiB): K_j, Q_i, dO_i with rows padded to D + 8 16-bit
elements (conflict-free ldmatrix), dSᵀ rows padded to Br + 8, and Br floats each of LSE₂ and D.
At D = 128 a thread holds dK and dV (64 + 64 float32), V's fragments (32) and Sᵀ, dPᵀ (16 + 16):
Br = 32, 4 warps and 2 CTAs per SM (FA2's CUDA code runs 8 warps per SM here too), and at 255
registers ptxas keeps a few loop-invariant addresses and fragments in local memory (SPILL_BUDGET;
the variants that avoid it loaded more or spilled more, PERF_NOTES.md). The 48 KiB of static
shared memory is what keeps Bc at 64 (FA2 takes 128 keys a CTA at D = 128): each Q_i, dO_i is read
and each dQ_i added once per 64 keys. Inputs float16, or bfloat16 as their uint16 bits; gradients
in the input dtype.

Head dims: every multiple of 8 up to 256, padded as flash2_mma pads them (inside the tile, never in
memory): K_j, Q_i, dO_i (and V_j, below) are DK = D rounded up to 32 wide in shared memory, the
columns past D zero-filled by flash2_mma.padded_copier, so Sᵀ and dPᵀ contract over DK columns
that add nothing past D. dK, dV and dQ are n-tiles of 8 columns; a column past D (zeros) is never
stored. Three shapes of the kernel, chosen by D when it is built:
- D = 32, 64, 96, 128 (DK = D ≤ 128; v_in_registers): as above, V_j's A fragments loaded once
  from global memory into registers.
- the other D ≤ 128: V_j is copied (zero-padded) into shared memory beside K_j, and its A
  fragments are read there with K_j's, 32 columns at a time, in every tile; dQ's tile is DK wide.
- D > 128 (DK = 160 … 256; slices): a thread cannot hold dK and dV (2·D float32), so the columns
  are split over 2 CTAs (grid z): each recomputes Sᵀ and dPᵀ over all DK columns (2 of the 5
  products twice), then computes dV, dK and dQ for its DK / 2 columns; V_j in shared memory.
Tiles: Br = Bc = 64 at D ≤ 64, Br = 32 above; 8 warps per SM (2 CTAs of 4 warps, 255 registers).
A thread holds dK and dV (D float32 unsplit, DK / 2 split: at most 128), Sᵀ and dPᵀ (Br / 2 each)
and a part of dQ_i. Shared memory: the tiles above, dSᵀ, LSE₂ and D; over 48 KiB (DK = 128 with
V_j in shared memory, and every D > 128) K_j, V_j, Q_i, dO_i are one dynamic buffer (tile_bytes,
passed by launch()) and the rest stays static. Spills a compile check tolerates: spill_budget(D).
"""

import functools
import math

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, types, uint32

from .common import first_key, last_key, load_f32, to_io
from .flash2_mma import MMA_CU, address_of, padded_copier, padded_dim, plain_copy
from .hardware import STATIC_SHARED

LESSON = ("FA2 backward on the tensor cores: KV blocks outer, P recomputed from LSE in registers, "
          "dK and dV in registers, dQ added across CTAs with float32 atomics")
# Br query rows per tile, Bc keys per CTA (a warp per 16), the warps per SM launch_bounds sizes the
# registers for (8: two CTAs of 4 warps, 255 registers). At D > 64 tiles() caps Br at 32 (shared
# memory). Br = 32 with 12 warps per SM (168 registers) measured slower at D = 64 (PERF_NOTES.md).
DEFAULT_CONFIG = {"Br": 64, "Bc": 64, "warps_per_sm": 8}
SIM_CONFIG = {"Br": 32, "Bc": 32, "warps_per_sm": 8}  # (refused in the simulator: GPU_ONLY)
HEAD_DIMS = tuple(range(8, 257, 8))  # every multiple of 8 up to 256 (flash2_mma.padded_dim: how)
DTYPES = ("float16", "bfloat16")
GPU_ONLY = ("the simulator cannot link CUDA C++ (mma.cu); flash2_mma_bwd runs on a GPU only, and its "
            "compile check runs with no GPU (pytest tests/test_mma_bwd_compile.py)")
# dQ is summed with float atomics: two launches may differ in dQ's last bits (dK, dV may not).
DETERMINISTIC = False
# Spill bytes the compile check tolerates for the main kernel at D = 128, default config (260
# measured at 255 registers, in the dV/dK phase and loop-invariant reloads); D <= 64 has none.
SPILL_BUDGET = 320
PREP_WARPS, PREP_ROWS_PER_WARP = 8, 4  # the preprocessing kernel: 8 warps of 4 query rows a CTA
PREP_ROWS = PREP_WARPS * PREP_ROWS_PER_WARP
CONVERT_THREADS, CONVERT_ITEMS = 256, 8  # the dQ conversion: 8 elements a thread
SM_SHARED, CTA_RESERVED = 228 * 1024, 1024

FASTMATH = {"afn", "arcp", "contract"}  # as flash2: approximate exp2, infinities kept
INF = float32(math.inf)
NEG_INF = float32(-math.inf)
LOG2E = np.float32(math.log2(math.e))
FULL = 0xFFFFFFFF


def _declare():
    """The functions of mma.cu this rung calls, typed for Numba (C ABI)."""
    vp, u64 = types.voidptr, types.uint64
    sig = {
        "wb_shared_address": uint32(vp),
        "wb_cp_async16": types.void(uint32, vp, u64, types.int32),
        "wb_cp_async_commit": types.void(),
        "wb_cp_async_wait0": types.void(),
        "wb_ldmatrix_x4": types.void(vp, uint32),
        "wb_ldmatrix_x4_trans": types.void(vp, uint32),
        "wb_mma_f16": types.void(vp, vp, vp),
        "wb_mma_bf16": types.void(vp, vp, vp),
        "wb_pack_f16x2": uint32(float32, float32),
        "wb_pack_bf16x2": uint32(float32, float32),
        "wb_store_u32": types.void(vp, u64, uint32),
        "wb_load_u32": uint32(vp, u64),
        "wb_red_add_f32x2": types.void(vp, u64, float32, float32),
    }
    return {name: cuda.declare_device(name, s, link=MMA_CU, abi="c") for name, s in sig.items()}


def spill_budget(D):
    """Spill bytes the compile checks tolerate for the main kernel at head dim D, default config.
    At 255 registers ptxas keeps a few loop invariants and fragments in local memory wherever a
    thread's dK, dV (up to 128 float32), Sᵀ and dPᵀ come near the limit: SPILL_BUDGET (set at
    D = 128) and a little more up to DK = 192; twice it at DK = 224 and 256, where a CTA's 128
    columns of dK, dV sit beside a contraction over all DK columns."""
    return SPILL_BUDGET + 80 if padded_dim(D) <= 192 else 2 * SPILL_BUDGET


def tiles(problem, config):
    """(Br, Bc, warps_per_sm) for this problem: at D > 64, Br ≤ 32 (at D = 128 K_j, Q_i, dO_i then
    fit 48 KiB) and 8 warps per SM (a thread holds up to 128 float32 of dK, dV: ~250 registers)."""
    Br, Bc, warps = config["Br"], config["Bc"], config["warps_per_sm"]
    if problem.head_dim > 64:
        Br, warps = min(Br, 32), min(warps, 8)
    return Br, Bc, warps


def padded_rows(problem, Br):
    """Query rows of the workspace: Nq rounded up to whole query blocks (no bounds tests)."""
    return -(-problem.seq_q // Br) * Br


def v_in_registers(D):
    """Whether V_j's A fragments are loaded once from global memory into registers (D = 32, 64,
    96, 128: no padding, and at most 32 registers). Otherwise V_j goes to shared memory with K_j
    (padded_copier: zero columns past D) and its fragments are read there for each tile."""
    return padded_dim(D) == D <= 128


def slices(D):
    """CTAs that share a K/V block's columns of dK, dV and dQ (grid z): 2 at D > 128, where one
    thread would hold 2·D float32 of dK and dV. Each recomputes Sᵀ and dPᵀ (they contract over all
    of D), then computes DK / 2 of the columns."""
    return 2 if padded_dim(D) > 128 else 1


def tile_bytes(Br, Bc, D):
    """K_j (and V_j unless v_in_registers), Q_i, dO_i: rows of DK + 8 16-bit elements (DK =
    padded_dim(D)); a dynamic buffer where shared_bytes is over 48 KiB."""
    kv_rows = Bc if v_in_registers(D) else 2 * Bc
    return 2 * (kv_rows + 2 * Br) * (padded_dim(D) + 8)


def shared_bytes(Br, Bc, D):
    """The tiles, dSᵀ (Bc rows of Br + 8), LSE₂ and D (the last three static arrays always)."""
    return tile_bytes(Br, Bc, D) + 2 * Bc * (Br + 8) + 2 * 4 * Br


def min_blocks(threads, smem, warps_per_sm):
    """CTAs per SM that launch_bounds sizes the registers for (as flash2_mma)."""
    return max(1, min(warps_per_sm * 32 // threads, SM_SHARED // (smem + CTA_RESERVED)))


def dq_grid(Br, Bc, D):
    """(WM, WN): the Bc / 16 warps as a grid over dQ_i's Br rows × D columns, the one that loads
    fewest fragments (ldmatrix.x4: (rows/16)·(Bc/16) of dS, (cols/8)·(Bc/32) of K_j per warp)."""
    warps = Bc // 16
    best = None
    for wm in range(1, warps + 1):
        wn = warps // wm
        if warps % wm or Br % (16 * wm) or D % (8 * wn):
            continue
        cost = (Br // wm // 16) * (Bc // 16) + (D // wn // 8) * (Bc // 32)
        if best is None or cost < best[0]:
            best = (cost, wm, wn)
    return None if best is None else best[1:]


@functools.cache
def build_prep(D):
    """D = rowsum(dO ∘ O), LSE₂ (−inf → +inf; padding rows +inf, 0), dQ_acc rows zeroed: a warp per
    4 query rows, their loads all in flight before the first reduction (a CTA of 1 row a warp was
    mostly CTA start-up: a memory-bound kernel needs bytes in flight)."""

    @cuda.jit(fastmath=FASTMATH)
    def bwd_prep(o, do, lse, lse2, delta, dq_acc):
        acc = cuda.local.array(PREP_ROWS_PER_WARP, float32)
        t = cuda.threadIdx.x
        lane = t % 32
        heads = o.shape[1]
        bh = cuda.blockIdx.y
        b = bh // heads
        h = bh - b * heads
        i0 = cuda.blockIdx.x * PREP_ROWS + (t // 32) * PREP_ROWS_PER_WARP
        n_q = o.shape[2]
        for r in range(PREP_ROWS_PER_WARP):
            i = min(i0 + r, n_q - 1)  # padding rows read the last row (no branch), store nothing
            acc[r] = float32(0)
            for d in range(lane, D, 32):
                acc[r] += load_f32(do[b, h, i, d]) * load_f32(o[b, h, i, d])
        for r in range(PREP_ROWS_PER_WARP):
            i = i0 + r
            x = acc[r]
            for off in (16, 8, 4, 2, 1):
                x += cuda.shfl_xor_sync(FULL, x, off)
            if i < n_q:
                for d in range(lane, D, 32):
                    dq_acc[bh, i, d] = float32(0)
            if lane == 0:
                y = lse[b, h, i] if i < n_q else NEG_INF
                lse2[bh, i] = y * LOG2E if y != NEG_INF else INF
                delta[bh, i] = x if i < n_q else float32(0)

    return bwd_prep


@functools.cache
def build_convert(D):
    """dQ = scale · dQ_acc in the I/O dtype: 8 elements a thread, each warp's on consecutive
    addresses."""
    CHUNK = CONVERT_THREADS * CONVERT_ITEMS

    @cuda.jit
    def bwd_dq_convert(dq_acc, dq, scale):
        heads = dq.shape[1]
        bh = cuda.blockIdx.y
        b = bh // heads
        h = bh - b * heads
        n = dq.shape[2] * D
        for e in range(CONVERT_ITEMS):
            idx = cuda.blockIdx.x * CHUNK + e * CONVERT_THREADS + cuda.threadIdx.x
            if idx < n:
                i = idx // D
                d = idx - i * D
                dq[b, h, i, d] = to_io(dq_acc[bh, i, d] * scale, dq)

    return bwd_dq_convert


@functools.cache
def build(Br, Bc, D, bf16, warps_per_sm=8):
    """The main kernel for these tiles, head dim D and input type (float16 or bfloat16)."""
    if numba_config.ENABLE_CUDASIM:
        raise RuntimeError(GPU_ONLY)
    f = _declare()
    cp_async16, commit, wait0 = f["wb_cp_async16"], f["wb_cp_async_commit"], f["wb_cp_async_wait0"]
    ldmatrix, ldmatrix_t = f["wb_ldmatrix_x4"], f["wb_ldmatrix_x4_trans"]
    shared_address, store_u32, load_u32 = f["wb_shared_address"], f["wb_store_u32"], f["wb_load_u32"]
    red_add2 = f["wb_red_add_f32x2"]
    mma = f["wb_mma_bf16"] if bf16 else f["wb_mma_f16"]
    pack = f["wb_pack_bf16x2"] if bf16 else f["wb_pack_f16x2"]

    WARPS = Bc // 16  # warp w owns keys 16w … 16w + 15
    THREADS = 32 * WARPS
    DK = padded_dim(D)  # D in shared memory: zero columns up to a multiple of 32
    DP = DK + 8  # padded K/V/Q/dO row (16-bit elements)
    SP = Br + 8  # padded dSᵀ row (16-bit elements)
    KC = DK // 16  # 16-wide chunks of DK (the contraction of Sᵀ, dPᵀ)
    NQ = Br // 8  # n-tiles of Sᵀ, dPᵀ (8 queries each)
    NQ2 = Br // 16  # 16-query chunks: the contraction of dV, dK
    V_IN_REGISTERS = v_in_registers(D)
    V_IN_SHARED = not V_IN_REGISTERS
    SPLIT = slices(D) > 1  # this CTA computes columns c0 … c0 + CW − 1 of dK, dV, dQ (grid z)
    CW = DK // slices(D)  # columns of dK, dV, dQ a CTA computes (those past D are not stored)
    ALL_REAL = DK == D  # no computed column lies past D: stores need no test
    ND = (CW if SPLIT else D) // 8  # n-tiles of dK, dV (8 columns each)
    WM, WN = dq_grid(Br, Bc, CW)
    QM = Br // WM // 16  # m-tiles (16 query rows) of a warp's dQ tile
    QN = CW // WN // 8  # n-tiles (8 columns) of a warp's dQ tile
    SMEM = shared_bytes(Br, Bc, D)
    DYNAMIC = SMEM > STATIC_SHARED  # then K, V, Q, dO in one dynamic buffer (tile_bytes)
    KV_ROWS = Bc if V_IN_REGISTERS else 2 * Bc  # shared rows of K_j (and V_j)
    VA_STEP = 2 if V_IN_REGISTERS else 0  # va's chunk for the kk-th 32 columns: 2·kk, or 0 (re-read)
    ROW_CHUNKS = D // 8  # 16-byte chunks in a row
    RSTEP = THREADS // ROW_CHUNKS  # rows the CTA copies per step

    def tile_copier(ROWS):
        """A device function that starts copying ROWS rows of one head into shared memory (zeros
        past n): flash2_mma's, 16 bytes per cp.async, consecutive threads on consecutive chunks."""
        ITS = ROWS // RSTEP

        @cuda.jit(device=True, inline="always")
        def copy(dst, src, src_base, row0, n):
            t = cuda.threadIdx.x
            r = t // ROW_CHUNKS
            col = (t - r * ROW_CHUNKS) * 8
            src_elem = src_base + np.uint64(uint32((row0 + r) * D + col))
            dst_addr = dst + uint32(2 * (r * DP + col))
            for it in range(ITS):
                cp_async16(dst_addr + uint32(2 * RSTEP * DP * it), src,
                           src_elem + np.uint64(RSTEP * D * it), row0 + r + RSTEP * it < n)

        return copy

    if plain_copy(D, THREADS, Bc, Br):
        copy_k, copy_q = tile_copier(Bc), tile_copier(Br)
    else:  # any D: zero columns past D (flash2_mma.padded_copier)
        copy_k = padded_copier(cp_async16, Bc, D, DP, THREADS)
        copy_q = padded_copier(cp_async16, Br, D, DP, THREADS)

    @cuda.jit(device=True, inline="always")
    def copy_rows(ls, dls, lse2_ptr, delta_ptr, row_elem):
        """LSE₂ and D of the block's Br rows (padded workspace: always in bounds), 4 per thread."""
        t = cuda.threadIdx.x
        if t < Br // 4:
            cp_async16(ls + uint32(16 * t), lse2_ptr, row_elem + np.uint64(8 * t), 1)
        elif t < Br // 2:
            u = t - Br // 4
            cp_async16(dls + uint32(16 * u), delta_ptr, row_elem + np.uint64(8 * u), 1)

    MIN_BLOCKS = min_blocks(THREADS, SMEM, warps_per_sm)

    @cuda.jit(fastmath=FASTMATH, launch_bounds=(THREADS, MIN_BLOCKS))
    def flash2_mma_bwd(q, k, v, do, lse2, delta, dq_acc, dk, dv, c, scale, group, left, right):
        """CTA (j, b·Hkv + hk): dK_j, dV_j of keys j·Bc …, summed over the group's query heads, and
        their share of dQ. Warp w: keys 16w + g and 16w + g + 8 in lane 4g + t's fragments."""
        if DYNAMIC:  # K_j, V_j, Q_i, dO_i, one under the other
            tiles_s = cuda.shared.array(0, types.uint16, alignment=128)
        else:
            k_s = cuda.shared.array((Bc, DP), types.uint16, alignment=128)
            if V_IN_SHARED:
                v_s = cuda.shared.array((Bc, DP), types.uint16, alignment=128)
            q_s = cuda.shared.array((Br, DP), types.uint16, alignment=128)
            do_s = cuda.shared.array((Br, DP), types.uint16, alignment=128)
        ds_s = cuda.shared.array((Bc, SP), types.uint16, alignment=128)  # dSᵀ (key, query)
        l_s = cuda.shared.array(Br, float32, alignment=16)  # LSE₂ of the block's rows
        d_s = cuda.shared.array(Br, float32, alignment=16)  # D of the block's rows
        va = cuda.local.array((KC if V_IN_REGISTERS else 2, 4), uint32)  # A fragments of its rows of V_j
        ka = cuda.local.array((2, 4), uint32)  # A fragments of its rows of K_j, 32 of D at a time
        kb = cuda.local.array((2, 2), uint32)  # B fragments (two 16-chunks of the contraction)
        st = cuda.local.array((NQ, 4), float32)  # C fragments of Sᵀ, then Pᵀ (8 queries each)
        dpt = cuda.local.array((NQ, 4), float32)  # C fragments of dPᵀ, then dSᵀ
        pa = cuda.local.array((NQ2, 4), uint32)  # A fragments of Pᵀ, 16 queries each
        dsa = cuda.local.array((NQ2, 4), uint32)  # A fragments of dSᵀ
        acc_k = cuda.local.array((ND, 4), float32)  # C fragments of dK_j (this warp's 16 keys)
        acc_v = cuda.local.array((ND, 4), float32)  # C fragments of dV_j
        acc_q = cuda.local.array((QM, QN, 4), float32)  # C fragments of this warp's part of dQ_i
        qa = cuda.local.array((QM, 2, 4), uint32)  # A fragments of dS (16 rows × 16 keys each)

        t = cuda.threadIdx.x
        warp = t // 32
        lane = t - 32 * warp
        g = lane // 4
        tq = lane - 4 * g
        kv_heads = k.shape[1]
        heads = q.shape[1]
        b = cuda.blockIdx.y // kv_heads
        hk = cuda.blockIdx.y - b * kv_heads
        n_q = q.shape[2]
        n_kv = k.shape[2]
        n_qp = lse2.shape[1]  # padded query rows of the workspace
        shift = n_kv - n_q
        j0 = cuda.blockIdx.x * Bc
        kv_base = np.uint64(b * kv_heads + hk) * np.uint64(n_kv) * np.uint64(D)
        q_ptr, k_ptr, do_ptr = address_of(q), address_of(k), address_of(do)
        lse2_ptr, delta_ptr, dq_ptr = address_of(lse2), address_of(delta), address_of(dq_acc)
        if DYNAMIC:
            ks = shared_address(address_of(tiles_s))
            vs = ks + uint32(2 * Bc * DP)  # (used where V_IN_SHARED)
            qs = ks + uint32(2 * KV_ROWS * DP)
            dos = qs + uint32(2 * Br * DP)
        else:
            ks = shared_address(address_of(k_s))
            if V_IN_SHARED:
                vs = shared_address(address_of(v_s))
            qs = shared_address(address_of(q_s))
            dos = shared_address(address_of(do_s))
        dss = shared_address(address_of(ds_s))
        ls = shared_address(address_of(l_s))
        dls = shared_address(address_of(d_s))

        # The query blocks that see any of keys j0 … j_last (flash2_bwd's rule), for each query
        # head of the group: n_it tiles in all.
        j_last = min(j0 + Bc, n_kv) - 1
        i_lo = max(j0 - shift - right, 0)
        i_hi = min(j_last - shift + left + 1, n_q)
        ib_lo = i_lo // Br
        n_blocks = (i_hi + Br - 1) // Br - ib_lo if i_hi > i_lo else 0
        n_it = group * n_blocks

        # K_j and the first Q_i, dO_i, LSE₂, D in flight; meanwhile this warp's rows of V_j go
        # straight from global memory into A fragments (lane 4g + t: rows g, g + 8, columns 2t, 2t + 8).
        copy_k(ks, k_ptr, kv_base, j0, n_kv)
        if V_IN_SHARED:
            copy_k(vs, address_of(v), kv_base, j0, n_kv)
        if n_it > 0:
            h = hk * group
            q_base = np.uint64(b * heads + h) * np.uint64(n_q) * np.uint64(D)
            copy_q(qs, q_ptr, q_base, ib_lo * Br, n_q)
            copy_q(dos, do_ptr, q_base, ib_lo * Br, n_q)
            copy_rows(ls, dls, lse2_ptr, delta_ptr,
                      np.uint64(2) * (np.uint64(b * heads + h) * np.uint64(n_qp) + np.uint64(ib_lo * Br)))
        commit()
        if V_IN_REGISTERS:
            for r in range(2):
                key = j0 + 16 * warp + g + 8 * r
                v_row = kv_base + np.uint64(uint32(key * D + 2 * tq))
                for kc in range(KC):
                    va[kc, r] = (load_u32(address_of(v), v_row + np.uint64(16 * kc)) if key < n_kv
                                 else uint32(0))
                    va[kc, 2 + r] = (load_u32(address_of(v), v_row + np.uint64(16 * kc + 8)) if key < n_kv
                                     else uint32(0))
        for nd in range(ND):
            for e in range(4):
                acc_k[nd, e] = float32(0)
                acc_v[nd, e] = float32(0)

        # This lane's row of each ldmatrix: K_j as A (row 16w + lane % 16, column 8·(lane // 16));
        # Q_i, dO_i as B for Sᵀ, dPᵀ (row lane % 8, column 8·(lane // 8)) and, transposed, for dK,
        # dV (row lane); K_j as B for dQ (row lane); dSᵀ as the A of dQ (transposed: key row
        # lane % 8 + 8·(lane // 16), query column 8·((lane // 8) % 2)).
        wm = warp // WN
        wn = warp - wm * WN
        k_a = ks + uint32(2 * ((16 * warp + lane % 16) * DP + 8 * (lane // 16)))
        q_b = qs + uint32(2 * ((lane % 8) * DP + 8 * (lane // 8)))
        do_b = dos + uint32(2 * ((lane % 8) * DP + 8 * (lane // 8)))
        q_bt = qs + uint32(2 * lane * DP)
        do_bt = dos + uint32(2 * lane * DP)
        k_bt = ks + uint32(2 * (lane * DP + CW // WN * wn))
        ds_at = dss + uint32(2 * ((lane % 8 + 8 * (lane // 16)) * SP + Br // WM * wm + 8 * ((lane // 8) % 2)))
        key0 = j0 + 16 * warp + g  # this lane's keys: key0, key0 + 8
        c0 = 0  # the first column of dK, dV, dQ this CTA computes
        if SPLIT:
            c0 = cuda.blockIdx.z * CW
            q_bt += uint32(2 * c0)
            do_bt += uint32(2 * c0)
            k_bt += uint32(2 * c0)
        if V_IN_SHARED:  # V_j's rows as K_j's: row 16w + lane % 16, column 8·(lane // 16)
            v_a = vs + uint32(2 * ((16 * warp + lane % 16) * DP + 8 * (lane // 16)))

        for it in range(n_it):
            hq = it // n_blocks
            h = hk * group + hq
            i0 = (ib_lo + it - hq * n_blocks) * Br
            wait0()
            cuda.syncthreads()  # Q_i, dO_i, LSE₂, D have landed (everybody's copies)

            # Sᵀ = K_j Q_iᵀ and dPᵀ = V_j dO_iᵀ: per 32 of D, K_j's two A fragments from shared
            # memory; per n-tile of 8 queries, one ldmatrix.x4 each of Q_i and dO_i.
            for nt in range(NQ):
                for e in range(4):
                    st[nt, e] = float32(0)
                    dpt[nt, e] = float32(0)
            for kk in range(KC // 2):
                ldmatrix(address_of(ka[0]), k_a + uint32(64 * kk))
                ldmatrix(address_of(ka[1]), k_a + uint32(64 * kk + 32))
                if V_IN_SHARED:  # (then va holds these 32 columns only)
                    ldmatrix(address_of(va[0]), v_a + uint32(64 * kk))
                    ldmatrix(address_of(va[1]), v_a + uint32(64 * kk + 32))
                for nt in range(NQ):
                    ldmatrix(address_of(kb), q_b + uint32(2 * (8 * nt * DP + 32 * kk)))
                    mma(address_of(st[nt]), address_of(ka[0]), address_of(kb[0]))
                    mma(address_of(st[nt]), address_of(ka[1]), address_of(kb[1]))
                    ldmatrix(address_of(kb), do_b + uint32(2 * (8 * nt * DP + 32 * kk)))
                    mma(address_of(dpt[nt]), address_of(va[VA_STEP * kk]), address_of(kb[0]))
                    mma(address_of(dpt[nt]), address_of(va[VA_STEP * kk + 1]), address_of(kb[1]))

            # Pᵀ = 2^(c·Sᵀ − LSE₂) (the mask on edge tiles only), dSᵀ = Pᵀ ∘ (dPᵀ − D); both packed
            # to 16 bits as A fragments, and dSᵀ stored for dQ (a register is 2 queries of a key).
            edge = not (i0 + Br <= n_q and j0 + Bc <= n_kv
                        and first_key(i0 + Br - 1, shift, left) <= j0
                        and j0 + Bc - 1 <= last_key(i0, shift, right))
            for nt in range(NQ):
                for e in range(2):
                    lse_row = l_s[8 * nt + 2 * tq + e]
                    for r in range(2):
                        st[nt, 2 * r + e] = math.exp2(c * st[nt, 2 * r + e] - lse_row)
            if edge:  # one branch per tile; inside, selects
                for nt in range(NQ):
                    for e in range(2):
                        row = i0 + 8 * nt + 2 * tq + e
                        for r in range(2):
                            key = key0 + 8 * r
                            seen = ((key < n_kv) & (first_key(row, shift, left) <= key)
                                    & (key <= last_key(row, shift, right)))
                            st[nt, 2 * r + e] = st[nt, 2 * r + e] if seen else float32(0)
            for nt in range(NQ):
                for e in range(2):
                    d_row = d_s[8 * nt + 2 * tq + e]
                    for r in range(2):
                        dpt[nt, 2 * r + e] = st[nt, 2 * r + e] * (dpt[nt, 2 * r + e] - d_row)
            for kq in range(NQ2):
                for half in range(2):
                    nt = 2 * kq + half
                    for r in range(2):
                        pa[kq, 2 * half + r] = pack(st[nt, 2 * r], st[nt, 2 * r + 1])
                        dsa[kq, 2 * half + r] = pack(dpt[nt, 2 * r], dpt[nt, 2 * r + 1])
                        store_u32(address_of(ds_s), np.uint64((16 * warp + g + 8 * r) * SP + 8 * nt + 2 * tq),
                                  dsa[kq, 2 * half + r])

            # dV_j += Pᵀ dO_i and dK_j += dSᵀ Q_i: per n-tile of 8 columns of D, one
            # ldmatrix.x4.trans brings dO_i (or Q_i) for 32 queries.
            for kq in range(Br // 32):
                for nd in range(ND):
                    ldmatrix_t(address_of(kb), do_bt + uint32(2 * (32 * kq * DP + 8 * nd)))
                    mma(address_of(acc_v[nd]), address_of(pa[2 * kq]), address_of(kb[0]))
                    mma(address_of(acc_v[nd]), address_of(pa[2 * kq + 1]), address_of(kb[1]))
            for kq in range(Br // 32):
                for nd in range(ND):
                    ldmatrix_t(address_of(kb), q_bt + uint32(2 * (32 * kq * DP + 8 * nd)))
                    mma(address_of(acc_k[nd]), address_of(dsa[2 * kq]), address_of(kb[0]))
                    mma(address_of(acc_k[nd]), address_of(dsa[2 * kq + 1]), address_of(kb[1]))

            cuda.syncthreads()  # Q_i, dO_i are free; dSᵀ is complete
            if it + 1 < n_it:  # the next tile's Q, dO, LSE₂, D, in the background
                hq = (it + 1) // n_blocks
                h1 = hk * group + hq
                i1 = (ib_lo + it + 1 - hq * n_blocks) * Br
                q_base = np.uint64(b * heads + h1) * np.uint64(n_q) * np.uint64(D)
                copy_q(qs, q_ptr, q_base, i1, n_q)
                copy_q(dos, do_ptr, q_base, i1, n_q)
                copy_rows(ls, dls, lse2_ptr, delta_ptr,
                          np.uint64(2) * (np.uint64(b * heads + h1) * np.uint64(n_qp) + np.uint64(i1)))
                commit()

            # dQ_i += dS K_j: this warp's QM·16 rows × QN·8 columns, contracted over the Bc keys,
            # 32 at a time; then added into dQ_acc, two columns per reduction.
            for mt in range(QM):
                for nd in range(QN):
                    for e in range(4):
                        acc_q[mt, nd, e] = float32(0)
            for kq in range(Bc // 32):
                for mt in range(QM):
                    for half in range(2):
                        ldmatrix_t(address_of(qa[mt, half]),
                                   ds_at + uint32(2 * ((32 * kq + 16 * half) * SP + 16 * mt)))
                for nd in range(QN):
                    ldmatrix_t(address_of(kb), k_bt + uint32(2 * (32 * kq * DP + 8 * nd)))
                    for mt in range(QM):
                        mma(address_of(acc_q[mt, nd]), address_of(qa[mt, 0]), address_of(kb[0]))
                        mma(address_of(acc_q[mt, nd]), address_of(qa[mt, 1]), address_of(kb[1]))
            dq_col = c0 + CW // WN * wn  # this warp's first column of dQ
            dq_row = (np.uint64(b * heads + h) * np.uint64(n_qp)
                      + np.uint64(i0 + Br // WM * wm + g)) * np.uint64(D) + np.uint64(dq_col + 2 * tq)
            for mt in range(QM):
                for r in range(2):
                    for nd in range(QN):
                        if ALL_REAL or dq_col + 8 * nd < D:  # (columns past D: zeros, not stored)
                            red_add2(dq_ptr, dq_row + np.uint64((16 * mt + 8 * r) * D + 8 * nd),
                                     acc_q[mt, nd, 2 * r], acc_q[mt, nd, 2 * r + 1])

        if n_it == 0:
            wait0()  # a CTA whose keys no query sees: K_j's copy must land before the CTA exits

        # dK_j = scale · (dSᵀ Q summed), dV_j: one store per register pair; keys past Nkv not stored.
        for r in range(2):
            key = key0 + 8 * r
            if key < n_kv:
                row = kv_base + np.uint64(uint32(key * D + c0 + 2 * tq))
                for nd in range(ND):
                    if ALL_REAL or c0 + 8 * nd < D:  # (columns past D: zeros, not stored)
                        store_u32(address_of(dk), row + np.uint64(8 * nd),
                                  pack(acc_k[nd, 2 * r] * scale, acc_k[nd, 2 * r + 1] * scale))
                        store_u32(address_of(dv), row + np.uint64(8 * nd),
                                  pack(acc_v[nd, 2 * r], acc_v[nd, 2 * r + 1]))

    return flash2_mma_bwd


def needs(problem, config):
    from .contract import Needs  # (harness.runner.Needs is this one)

    Br, Bc, warps = tiles(problem, config)
    D = problem.head_dim
    smem = shared_bytes(Br, Bc, D)
    return Needs(
        shared_bytes=smem,
        dynamic_shared=smem > STATIC_SHARED,
        head_dims=HEAD_DIMS,
        dtypes=DTYPES,
        rules={
            "Br is a multiple of 32 (dK, dV take 32 queries per ldmatrix)": Br % 32 == 0,
            "Bc is a multiple of 32 (a warp per 16 keys; dQ takes 32 keys per ldmatrix)": Bc % 32 == 0,
            "Bc <= 512 (a warp per 16 keys, 1024 threads)": Bc <= 512,
            "warps_per_sm <= 64": warps <= 64,
            "the Bc / 16 warps tile dQ's Br × DK / slices (16-row by 8-column fragments)":
                dq_grid(Br, Bc, padded_dim(D) // slices(D)) is not None,
        },
    )


def workspace_bytes(problem, config):
    """LSE₂ and D (two float32 per query row) and the float32 dQ accumulator (D per row), rows
    padded to whole query blocks."""
    Br = tiles(problem, config)[0]
    return 4 * problem.batch * problem.heads * padded_rows(problem, Br) * (2 + problem.head_dim)


def launch(problem, config, q, k, v, o, lse, do, dq, dk, dv, gpu):
    p = problem
    Br, Bc, warps = tiles(p, config)
    D = p.head_dim
    bh = p.batch * p.heads
    n_qp = padded_rows(p, Br)
    left, right = p.mask_bounds()
    lse2 = gpu.empty((bh, n_qp), np.float32)
    delta = gpu.empty((bh, n_qp), np.float32)
    dq_acc = gpu.empty((bh, n_qp, D), np.float32)
    gpu.launch(build_prep(D), (n_qp // PREP_ROWS, bh), 32 * PREP_WARPS, o, do, lse, lse2, delta, dq_acc)
    kernel = build(Br, Bc, D, p.dtype == "bfloat16", warps)
    grid = (-(-p.seq_kv // Bc), p.batch * p.kv_heads) + ((slices(D),) if slices(D) > 1 else ())
    # (over 48 KiB the K, V, Q, dO tiles are the kernel's one dynamic buffer)
    dynamic = {"shared": tile_bytes(Br, Bc, D)} if shared_bytes(Br, Bc, D) > STATIC_SHARED else {}
    gpu.launch(kernel, grid, 2 * Bc,
               q, k, v, do, lse2, delta, dq_acc, dk, dv, LOG2E * np.float32(p.scale),
               np.float32(p.scale), p.group, left, right, **dynamic)
    gpu.launch(build_convert(D), (-(-p.seq_q * D // (CONVERT_THREADS * CONVERT_ITEMS)), bh), CONVERT_THREADS,
               dq_acc, dq, np.float32(p.scale))
