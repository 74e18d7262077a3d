"""Rung 6 — flash2_mma: the flash2 algorithm on the tensor cores (float16 / bfloat16 inputs).

Rung 5 does every multiply-add of S = Q_i K_jᵀ and O += P V_j as an FFMA on the CUDA cores: at
most 67 TFLOP/s on an H100 in float32. The tensor cores do a 16×8×16 matrix product per warp per
instruction (`mma.sync.m16n8k16`: 16-bit inputs, float32 accumulation), about 15× faster. Numba
has no Python spelling for them (numba#5899), so this rung links a small CUDA C++ file,
`mma.cu`, whose functions each wrap one PTX instruction: `mma.sync`, `ldmatrix` (shared memory
into fragment registers), `cp.async` (global to shared memory in the background) and the
float32 → 16-bit packing. `cuda.declare_device(..., link=...)` declares them; nvJitLink's
link-time optimisation inlines them, so the kernel below stays Python and reads like the paper.
The simulator cannot link CUDA C++: there this rung is refused with a message, and only its
compile check (sm_90, no GPU needed) runs.

The algorithm is flash2's (Algorithm 1 of FA2), with the work split the way FA2's CUDA code does
it: a CTA of Br / 16 warps owns Q_i; warp w owns 16 of its rows, whole, for every tile. So the
row max and row sum never leave the warp, and no thread waits for another warp inside a tile:

    Q_i → shared memory → each warp's A fragments (registers, once)
    m = -inf, l = 0, O = 0                                   (fragments, in registers)
    for j = j_start … j_end − 1:
        wait for K_j, V_j (cp.async, issued at the end of the previous tile)
        S = Q_i K_jᵀ                                        (16 × Bc per warp: mma.sync)
        m_new = max(m, rowmax(S))                           (4 lanes share a row: 2 shuffles)
        P = 2^(c·S − c·m_new), alpha = 2^(c·m − c·m_new)    (c = scale·log2 e)
        l = alpha · l + rowsum(P);  O = alpha · O
        O = O + P V_j                                       (P fed from registers: mma.sync)
        start copying K_{j+1}, V_{j+1}
    O = O / l;  LSE = ln 2 · (c·m + log2 l)

Fragments, in one sentence each (layouts in mma.cu's header):
- A warp's mma multiplies a 16×16 A by a 16×8 B into a 16×8 float32 C; each lane holds a fixed
  part of each: lane 4g + t holds C's rows g and g + 8 at columns 2t, 2t + 1.
- S's C fragments for keys 16kc … 16kc + 15 are, element for element, the A fragment of P for
  that chunk of keys: P goes from S to the next mma without touching shared memory (only packed
  to 16 bits, which is also where FA2 rounds it).
- K_j in shared memory is (key, d) row-major, which is exactly the "col" B operand of Q Kᵀ:
  `ldmatrix` loads it as is. V_j is (key, d) too, but P V needs it the other way round:
  `ldmatrix.trans` transposes on the way.
- The 4 lanes of a quad hold one row's scores: the row max and sum are 2 `shfl_xor` each.

Performance tricks:
- cp.async: K_j and V_j go from global to shared memory without passing through registers, in
  the background; with 4 CTAs per SM, one CTA's copy overlaps the others' maths. `stages=2`
  double-buffers inside the CTA (K_{j+1}, V_{j+1} copied into a second buffer while tile j is
  computed): on the H100 it measured 3 % slower than one buffer (perf-variants-mma.json), since
  it costs 18 KiB more shared memory and more registers for the same 4 CTAs per SM.
- Register tiling for the tensor cores: `MT = 2` gives a warp 32 rows, so each K/V fragment read
  from shared memory feeds two mma's (FA2's CUDA code does this); it needs ~200 registers and so
  halves the CTAs per SM, which measured slower here at D = 64.
- Shared addresses are converted once to 32-bit shared-window addresses; each ldmatrix and
  cp.async then adds a constant, which the compiler folds into the instruction ([R + imm]).
  (Generic 64-bit addresses cost twice the registers and spilled.)
- Padded rows: shared rows are DK + 8 elements (16 bytes more than DK, below), so the 8 rows an
  `ldmatrix` reads start in 8 different 16-byte bank groups (no bank conflicts).
- exp2 with the scale folded: P = 2^(c·s − c·m) is one FFMA and one MUFU.EX2; m stays in raw
  score units.
- Masks only on edge tiles (flash2's rule), heaviest query blocks first, K/V reuse in L2.

Head dims: every multiple of 8 up to 256, padded inside the tile, never in memory. Global rows are
read and written at the real D (2·D bytes: 16-byte aligned since D % 8 == 0, so cp.async still
moves 16 bytes at a time). In shared memory Q_i, K_j and V_j are DK = D rounded up to 32 wide (an
`ldmatrix.x4` of K_j covers 32 columns of the Q Kᵀ contraction), and the copy zero-fills columns
D … DK − 1 (cp.async with src-size 0): `padded_copier`, the one place the padding happens. Q Kᵀ then
contracts over DK columns whose padding is zero on both sides, so S is exact; P V and O use D / 8
n-tiles of 8 columns, exactly D. At D = 32, 64, 128 and 256 nothing is padded and the copy is the
plain `tile_copier`; at the other D, and wherever the threads do not split a tile's rows evenly,
`padded_copier` copies.

Tiles by D (tiles(); Br a multiple of 16·MT, one warp per 16·MT rows; Bc a multiple of 32):
- D ≤ 64: Br = Bc = 64, 16 warps per SM (4 CTAs of 4 warps, 128 registers a thread: a dozen
  loop invariants live in local memory, SPILL_BUDGET).
- 64 < D ≤ 128: Bc = 32 and 8 warps per SM (2 CTAs, 255 registers): O's fragments alone are
  D / 2 registers a thread, Q's DK / 4.
- 128 < D ≤ 256: also MT = 1. O's fragments are up to 128 registers (16 rows × D per warp / 32
  lanes); Q's are held or re-read per tile by q_in_registers(D), whichever spilled less.
Shared memory is 2·(Br + 2·stages·Bc)·(DK + 8) bytes: static up to 48 KiB, and over it (DK ≥ 192
at the defaults) one dynamic buffer carved into Q_i, K_j, V_j, whose size launch() passes and the
harness raises the kernel's limit to (up to 227 KiB). Spills a compile check tolerates:
spill_budget(D). Inputs float16, or bfloat16 passed as their uint16 bit patterns; O is stored in
the input dtype, LSE in float32.
"""

import functools
import math
import os

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, types, uint32
from numba.cuda.extending import intrinsic

from .common import FASTMATH, LN2, LOG2E, NEG_INF, cdiv, kv_tile_range, unmasked_keys, visible
from .contract import Needs
from .hardware import STATIC_SHARED, min_blocks

LESSON = "tensor cores: S = QKᵀ and O += PV as mma.sync tiles from a linked .cu, P kept in registers"
# H100, D <= 64: 4 warps of 16 rows, 64 keys a tile, one K/V buffer, 4 CTAs per SM (128
# registers). Measured fastest of six variants (figures/h100/perf-variants-mma.json); at
# D = 128 see tiles().
DEFAULT_CONFIG = {"Br": 64, "Bc": 64, "stages": 1, "warps_per_sm": 16, "MT": 1}
# Spills the compile check tolerates at the default config: at 128 registers ptxas keeps about a
# dozen loop-invariant addresses in local memory (one L1 load each per tile). The spill-free
# configs (MT = 2, or 8 warps per SM) measured slower: figures/h100/perf-variants-mma.json.
SPILL_BUDGET = 192
HEAD_DIMS = tuple(range(8, 257, 8))  # every multiple of 8 up to 256 (padded_dim: how)
DTYPES = ("float16", "bfloat16")
GPU_ONLY = ("the simulator cannot link CUDA C++ (mma.cu); flash2_mma runs on a GPU only, and its "
            "compile check runs with no GPU (pytest tests/test_compile.py)")
MMA_CU = os.path.join(os.path.dirname(__file__), "mma.cu")
FULL = 0xFFFFFFFF


@intrinsic
def address_of(typingctx, arr):
    """The address of an array's first element, as a void* for the functions of mma.cu."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir

        data = context.make_array(arr)(context, builder, args[0]).data
        return builder.bitcast(data, ir.IntType(8).as_pointer())

    return types.voidptr(arr), codegen


def _declare():
    """mma.cu's functions, typed for Numba (C ABI: plain arguments, plain return values)."""
    vp, u64 = types.voidptr, types.uint64
    sig = {
        "wb_shared_address": uint32(vp),
        "wb_cp_async16": types.void(uint32, vp, u64, types.int32),
        "wb_cp_async_commit": types.void(),
        "wb_cp_async_wait1": types.void(),
        "wb_cp_async_wait0": types.void(),
        "wb_ldmatrix_x4": types.void(vp, uint32),
        "wb_ldmatrix_x4_trans": types.void(vp, uint32),
        "wb_mma_f16": types.void(vp, vp, vp),
        "wb_mma_bf16": types.void(vp, vp, vp),
        "wb_pack_f16x2": uint32(float32, float32),
        "wb_pack_bf16x2": uint32(float32, float32),
        "wb_store_u32": types.void(vp, u64, uint32),
    }
    return {name: cuda.declare_device(name, s, link=MMA_CU, abi="c") for name, s in sig.items()}


def spill_budget(D):
    """Spill bytes the compile checks tolerate at head dim D, default config: SPILL_BUDGET up to
    DK = 192; more at DK = 224 and 256, where O's D / 2 registers and Q's fragments fill the 255
    and ptxas keeps more loop invariants and fragments in local memory."""
    return SPILL_BUDGET if padded_dim(D) <= 192 else 448


def tiles(problem, config):
    """(Br, Bc, stages, warps_per_sm, MT) for this problem. At D > 64 Bc is capped at 32 (at
    D = 128 the buffers then fit 48 KiB) and warps_per_sm at 8 (a thread's O fragments alone are
    D / 2 registers: at 128 registers it would spill); at D > 128 MT is 1 (O's fragments are up to
    128 registers for 16 rows)."""
    Br, Bc, stages = config["Br"], config["Bc"], config["stages"]
    warps, MT = config["warps_per_sm"], config["MT"]
    if problem.head_dim > 64:
        Bc, warps = min(Bc, 32), min(warps, 8)
    if problem.head_dim > 128:
        MT = 1
    return Br, Bc, stages, warps, MT


def padded_dim(D):
    """DK: the head dim as Q_i, K_j and V_j are laid out in shared memory, D rounded up to 32 (one
    ldmatrix.x4 of K_j covers 32 columns of the Q Kᵀ contraction). Columns D … DK − 1 are zeros
    (padded_copier), so Q Kᵀ over DK columns is Q Kᵀ over D; P V and O use the D real columns."""
    return -(-D // 32) * 32


def q_in_registers(D):
    """Whether a warp holds its rows of Q_i as A fragments (DK / 4 registers) for the whole CTA, or
    re-reads them from shared memory, 32 columns at a time, in every tile. In registers up to
    DK = 128 (the measured head dims). At DK = 160 and 192 re-reading leaves room for O's D / 2
    registers: it compiles without spills where holding them spills. At DK = 224 and 256 ptxas
    hoists the re-reads to the top of the tile anyway (as many registers live), and holding them
    spills less (compile checks: the tile loop's local loads and stores, nvJitLink of CUDA 13.5)."""
    return not 128 < padded_dim(D) <= 192


def plain_copy(D, threads, *rows):
    """Whether the plain tile copy fits (D = 32, 64, 128, 256 at the defaults): no padding
    (DK = D), and the threads cover whole rows, a whole number of times per tile."""
    if padded_dim(D) != D or threads % (D // 8):
        return False
    rstep = threads // (D // 8)
    return all(r % rstep == 0 for r in rows)


def padded_copier(cp_async16, ROWS, D, DP, THREADS):
    """The tile copy for any D (a multiple of 8): a device function copy(dst, src, src_base, row0,
    n) that starts copying rows row0 … row0 + ROWS − 1 of one head (global rows of D 16-bit
    elements) into shared rows of DP elements at dst, 16 bytes per cp.async. Each shared row gets
    DK / 8 chunks (DK = padded_dim(D)): the D / 8 real ones, then zeros (cp.async with src-size 0
    reads nothing and zero-fills), as rows past n do. This is the one place the head dim is padded;
    global memory is read at the real D only (rows of 2·D bytes, 16-byte aligned as D % 8 == 0).
    As tile_copier: thread t keeps chunk t % CK of rows t // CK + RSTEP·it (coalesced, one address
    plus constant offsets); when CK does not divide the threads, the last few threads idle."""
    CK = padded_dim(D) // 8  # 16-byte chunks of a shared row, the first D // 8 real
    RSTEP = THREADS // CK  # rows the CTA copies per step
    ITS = cdiv(ROWS, RSTEP)

    @cuda.jit(device=True, inline="always")
    def copy(dst, src, src_base, row0, n):
        t = cuda.threadIdx.x
        r = t // CK
        col = (t - r * CK) * 8
        src_elem = src_base + np.uint64(uint32((row0 + r) * D + col))
        dst_addr = dst + uint32(2 * (r * DP + col))
        if THREADS % CK == 0 or r < RSTEP:
            for it in range(ITS):
                if ROWS % RSTEP == 0 or r + RSTEP * it < ROWS:
                    cp_async16(dst_addr + uint32(2 * RSTEP * DP * it), src,
                               src_elem + np.uint64(RSTEP * D * it), (col < D) & (row0 + r + RSTEP * it < n))

    return copy


def shared_bytes(Br, Bc, D, stages):
    """Q_i, and `stages` buffers each of K_j and V_j, rows of DK + 8 16-bit elements (DK =
    padded_dim(D)). Above 48 KiB it is dynamic shared memory (one buffer carved in three)."""
    return 2 * (Br + 2 * stages * Bc) * (padded_dim(D) + 8)


@functools.cache
def build(Br, Bc, D, stages, bf16, warps_per_sm=16, MT=1):
    """The kernel for these tiles, head dim D, input type (float16 or bfloat16) and MT m-tiles of
    16 rows per warp."""
    if numba_config.ENABLE_CUDASIM:
        raise RuntimeError(GPU_ONLY)
    f = _declare()
    cp_async16, commit = f["wb_cp_async16"], f["wb_cp_async_commit"]
    wait1, wait0 = f["wb_cp_async_wait1"], f["wb_cp_async_wait0"]
    ldmatrix, ldmatrix_t, store_u32 = f["wb_ldmatrix_x4"], f["wb_ldmatrix_x4_trans"], f["wb_store_u32"]
    shared_address = f["wb_shared_address"]
    mma = f["wb_mma_bf16"] if bf16 else f["wb_mma_f16"]
    pack = f["wb_pack_bf16x2"] if bf16 else f["wb_pack_f16x2"]

    WR = 16 * MT  # query rows per warp
    WARPS = Br // WR
    THREADS = 32 * WARPS
    DK = padded_dim(D)  # D in shared memory: zero columns up to a multiple of 32
    DP = DK + 8  # padded shared row (elements)
    KC = DK // 16  # k-chunks of Q Kᵀ (16 of DK each)
    NS = Bc // 8  # n-tiles of S (8 keys each)
    NO = D // 8  # n-tiles of O (8 columns of D each: exactly D)
    ROW_CHUNKS = D // 8  # 16-byte chunks in a row
    KV_ROWS = stages * Bc  # K (and V) buffers, one under the other
    SMEM = shared_bytes(Br, Bc, D, stages)
    DYNAMIC = SMEM > STATIC_SHARED  # then one dynamic buffer (launch() passes shared=SMEM)
    Q_IN_REGISTERS = q_in_registers(D)  # else re-read from shared memory for each tile

    RSTEP = THREADS // ROW_CHUNKS  # rows the CTA copies per step

    def tile_copier(ROWS):
        """A device function that starts copying ROWS rows of one head into shared memory."""
        ITS = ROWS // RSTEP

        @cuda.jit(device=True, inline="always")
        def copy(dst, dst_row0, src, src_base, row0, n):
            """Rows row0 … row0 + ROWS − 1 (zeros past n) into shared rows dst_row0 …: 16 bytes
            per cp.async, consecutive threads on consecutive chunks (coalesced). Thread t copies
            chunk t % ROW_CHUNKS of rows t // ROW_CHUNKS + RSTEP·it: one address per tile plus
            constant offsets. (Rows past n are zero-filled: their address is not read.)"""
            t = cuda.threadIdx.x
            r = t // ROW_CHUNKS
            col = (t - r * ROW_CHUNKS) * 8
            src_elem = src_base + np.uint64(uint32((row0 + r) * D + col))
            dst_addr = dst + uint32(2 * ((dst_row0 + r) * DP + col))
            for it in range(ITS):
                cp_async16(dst_addr + uint32(2 * RSTEP * DP * it), src,
                           src_elem + np.uint64(RSTEP * D * it), row0 + r + RSTEP * it < n)

        return copy

    def padded_tile_copier(ROWS):
        """padded_copier (zero columns past D), called as tile_copier's copies are."""
        copy_rows = padded_copier(cp_async16, ROWS, D, DP, THREADS)

        @cuda.jit(device=True, inline="always")
        def copy(dst, dst_row0, src, src_base, row0, n):
            copy_rows(dst + uint32(2 * dst_row0 * DP), src, src_base, row0, n)

        return copy

    if plain_copy(D, THREADS, Br, Bc):
        copy_q, copy_kv = tile_copier(Br), tile_copier(Bc)
    else:
        copy_q, copy_kv = padded_tile_copier(Br), padded_tile_copier(Bc)
    # hardware.min_blocks: what shared memory admits, at most warps_per_sm warps (16: 4 CTAs of
    # 4 warps, 128 registers a thread)
    MIN_BLOCKS = min_blocks(THREADS, SMEM, warps_per_sm)

    @cuda.jit(fastmath=FASTMATH, launch_bounds=(THREADS, MIN_BLOCKS))
    def flash2_mma(q, k, v, o, lse, c, group, left, right):
        """CTA (x, bh) owns query block i = Tr − 1 − x of head bh; warp w its rows WR·w … WR·w + WR − 1
        (m-tile mt: rows WR·w + 16·mt …, of which lane 4g + t holds rows g and g + 8)."""
        qa = cuda.local.array((MT, KC if Q_IN_REGISTERS else 2, 4), uint32)  # A fragments of Q_i
        s = cuda.local.array((MT, NS, 4), float32)  # C fragments of S (then P), 8 keys each
        acc = cuda.local.array((MT, NO, 4), float32)  # C fragments of O, 8 columns each
        pa = cuda.local.array((MT, 2, 4), uint32)  # A fragments of P, 16 keys each
        kb = cuda.local.array((2, 2), uint32)  # B fragments: K (2 chunks of D) or V (2 of keys)
        m = cuda.local.array((MT, 2), float32)  # running max of rows g, g + 8 (raw score units)
        l = cuda.local.array((MT, 2), float32)  # running sum over this lane's keys of those rows

        t = cuda.threadIdx.x
        warp = t // 32
        lane = t - 32 * warp
        g = lane // 4
        tq = lane - 4 * g
        heads = q.shape[1]
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y - b * heads
        hk = h // group
        n_q = q.shape[2]
        n_kv = k.shape[2]
        shift = n_kv - n_q
        i0 = (cuda.gridDim.x - 1 - cuda.blockIdx.x) * Br
        q_base = np.uint64(b * heads + h) * np.uint64(n_q) * np.uint64(D)
        kv_base = np.uint64(b * k.shape[1] + hk) * np.uint64(n_kv) * np.uint64(D)
        q_ptr, k_ptr, v_ptr = address_of(q), address_of(k), address_of(v)
        # Shared arrays as 32-bit shared-window byte addresses (ldmatrix, cp.async).
        if DYNAMIC:  # one buffer: Q_i, then the K_j buffers, then the V_j buffers
            tiles_s = cuda.shared.array(0, types.uint16, alignment=128)
            qs = shared_address(address_of(tiles_s))
            ks = qs + uint32(2 * Br * DP)
            vs = ks + uint32(2 * KV_ROWS * DP)
        else:
            q_s = cuda.shared.array((Br, DP), types.uint16, alignment=128)
            k_s = cuda.shared.array((KV_ROWS, DP), types.uint16, alignment=128)
            v_s = cuda.shared.array((KV_ROWS, DP), types.uint16, alignment=128)
            qs = shared_address(address_of(q_s))
            ks = shared_address(address_of(k_s))
            vs = shared_address(address_of(v_s))

        # The KV tiles this CTA needs, and the keys every one of its rows sees (flash2's rule).
        i_last = min(i0 + Br, n_q) - 1
        j_start, j_end = kv_tile_range(i0, i_last, Bc, shift, left, right, n_kv)
        inner_lo, inner_hi = unmasked_keys(i0, i_last, shift, left, right, n_kv)

        for mt in range(MT):
            for r in range(2):
                m[mt, r] = NEG_INF
                l[mt, r] = float32(0)
            for nd in range(NO):
                for e in range(4):
                    acc[mt, nd, e] = float32(0)

        # Q_i, then the first K/V tile, in flight together; wait for Q_i only.
        copy_q(qs, 0, q_ptr, q_base, i0, n_q)
        commit()
        if j_start < j_end:
            copy_kv(ks, 0, k_ptr, kv_base, j_start * Bc, n_kv)
            copy_kv(vs, 0, v_ptr, kv_base, j_start * Bc, n_kv)
        commit()
        wait1()
        cuda.syncthreads()
        if Q_IN_REGISTERS:  # lane l reads row l % 16 of the m-tile, columns 8·(l // 16) …
            for mt in range(MT):
                for kc in range(KC):
                    ldmatrix(address_of(qa[mt, kc]), qs + 2 * uint32((WR * warp + 16 * mt + lane % 16) * DP
                                                                     + 16 * kc + 8 * (lane // 16)))
        else:  # (the same lane's row, read in the tile loop)
            q_lane = qs + 2 * uint32((WR * warp + lane % 16) * DP + 8 * (lane // 16))

        # This lane's row of each ldmatrix of K_j (row lane % 8, column 8·(lane // 8)) and of V_j
        # (row lane): one base address, plus a constant per fragment.
        k_lane = ks + uint32(2 * ((lane % 8) * DP + 8 * (lane // 8)))
        v_lane = vs + uint32(2 * lane * DP)
        for j in range(j_start, j_end):
            j0 = j * Bc
            row0 = ((j - j_start) % stages) * Bc  # this tile's buffer
            if stages == 2 and j + 1 < j_end:  # next tile into the other buffer, in the background
                copy_kv(ks, Bc - row0, k_ptr, kv_base, j0 + Bc, n_kv)
                copy_kv(vs, Bc - row0, v_ptr, kv_base, j0 + Bc, n_kv)
                commit()
                wait1()  # tile j has landed (this thread's copies) ...
            else:
                wait0()
            cuda.syncthreads()  # ... and everybody's

            # S = Q_i K_jᵀ: per n-tile of 8 keys, one ldmatrix.x4 brings two 16-wide chunks of D,
            # used by each of the warp's m-tiles.
            for mt in range(MT):
                for nt in range(NS):
                    for e in range(4):
                        s[mt, nt, e] = float32(0)
            if Q_IN_REGISTERS:
                for nt in range(NS):
                    for kk in range(KC // 2):
                        ldmatrix(address_of(kb), k_lane + uint32(2 * ((row0 + 8 * nt) * DP + 32 * kk)))
                        for mt in range(MT):
                            mma(address_of(s[mt, nt]), address_of(qa[mt, 2 * kk]), address_of(kb[0]))
                            mma(address_of(s[mt, nt]), address_of(qa[mt, 2 * kk + 1]), address_of(kb[1]))
            else:  # per 32 columns: Q_i's two A fragments from shared memory, then every n-tile
                for kk in range(KC // 2):
                    for mt in range(MT):
                        for half in range(2):
                            ldmatrix(address_of(qa[mt, half]),
                                     q_lane + uint32(2 * (16 * mt * DP + 32 * kk + 16 * half)))
                    for nt in range(NS):
                        ldmatrix(address_of(kb), k_lane + uint32(2 * ((row0 + 8 * nt) * DP + 32 * kk)))
                        for mt in range(MT):
                            mma(address_of(s[mt, nt]), address_of(qa[mt, 0]), address_of(kb[0]))
                            mma(address_of(s[mt, nt]), address_of(qa[mt, 1]), address_of(kb[1]))

            # Mask (edge tiles only), row max over the quad, P = 2^(c·S − c·m_new), l, alpha.
            edge = j0 < inner_lo or j0 + Bc > inner_hi
            for mt in range(MT):
                for r in range(2):
                    row = i0 + WR * warp + 16 * mt + g + 8 * r
                    mx = NEG_INF
                    for nt in range(NS):
                        for e in range(2):
                            if edge:
                                key = j0 + 8 * nt + 2 * tq + e
                                if row >= n_q or key >= n_kv or not visible(row, key, shift, left, right):
                                    s[mt, nt, 2 * r + e] = NEG_INF
                            mx = max(mx, s[mt, nt, 2 * r + e])
                    mx = max(mx, cuda.shfl_xor_sync(FULL, mx, 1))
                    mx = max(mx, cuda.shfl_xor_sync(FULL, mx, 2))
                    m_new = max(m[mt, r], mx)
                    # A row that has seen no key keeps m = -inf; 0 stands in so exp2 stays finite.
                    cm = c * (m_new if m_new != NEG_INF else float32(0))
                    alpha = math.exp2(c * m[mt, r] - cm)
                    m[mt, r] = m_new
                    rowsum = float32(0)
                    for nt in range(NS):
                        for e in range(2):
                            p = math.exp2(c * s[mt, nt, 2 * r + e] - cm)
                            s[mt, nt, 2 * r + e] = p
                            rowsum += p
                    l[mt, r] = alpha * l[mt, r] + rowsum
                    for nd in range(NO):
                        acc[mt, nd, 2 * r] *= alpha
                        acc[mt, nd, 2 * r + 1] *= alpha

            # O += P V_j: S's fragments for 16 keys are P's A fragment; per n-tile of 8 columns
            # of D, one ldmatrix.x4.trans brings V_j for 32 keys (lane l: key 32·kq + l).
            for kq in range(Bc // 32):
                for mt in range(MT):
                    for half in range(2):
                        nt = 4 * kq + 2 * half
                        pa[mt, half, 0] = pack(s[mt, nt, 0], s[mt, nt, 1])
                        pa[mt, half, 1] = pack(s[mt, nt, 2], s[mt, nt, 3])
                        pa[mt, half, 2] = pack(s[mt, nt + 1, 0], s[mt, nt + 1, 1])
                        pa[mt, half, 3] = pack(s[mt, nt + 1, 2], s[mt, nt + 1, 3])
                for nd in range(NO):
                    ldmatrix_t(address_of(kb), v_lane + uint32(2 * ((row0 + 32 * kq) * DP + 8 * nd)))
                    for mt in range(MT):
                        mma(address_of(acc[mt, nd]), address_of(pa[mt, 0]), address_of(kb[0]))
                        mma(address_of(acc[mt, nd]), address_of(pa[mt, 1]), address_of(kb[1]))

            cuda.syncthreads()  # every warp is done with this buffer before it is refilled
            if stages == 1 and j + 1 < j_end:
                copy_kv(ks, 0, k_ptr, kv_base, j0 + Bc, n_kv)
                copy_kv(vs, 0, v_ptr, kv_base, j0 + Bc, n_kv)
                commit()
        wait0()  # nothing may still be copying when the CTA exits

        # l over the quad; O = O / l once; LSE = ln 2 · (c·m + log2 l); rows past Nq not stored.
        for mt in range(MT):
            for r in range(2):
                l_row = l[mt, r]
                l_row += cuda.shfl_xor_sync(FULL, l_row, 1)
                l_row += cuda.shfl_xor_sync(FULL, l_row, 2)
                row = i0 + WR * warp + 16 * mt + g + 8 * r
                if row < n_q:
                    inv_l = float32(1) / l_row if l_row > float32(0) else float32(0)
                    o_row = q_base + np.uint64(row) * np.uint64(D) + np.uint64(2 * tq)
                    for nd in range(NO):
                        store_u32(address_of(o), o_row + np.uint64(8 * nd),
                                  pack(acc[mt, nd, 2 * r] * inv_l, acc[mt, nd, 2 * r + 1] * inv_l))
                    if tq == 0:
                        lse[b, h, row] = ((c * m[mt, r] + math.log2(l_row)) * LN2 if l_row > float32(0)
                                          else NEG_INF)

    return flash2_mma


def needs(problem, config):
    Br, Bc, stages, warps, MT = tiles(problem, config)
    D = problem.head_dim
    smem = shared_bytes(Br, Bc, D, stages)
    return Needs(
        shared_bytes=smem,
        dynamic_shared=smem > STATIC_SHARED,
        head_dims=HEAD_DIMS,
        dtypes=DTYPES,
        rules={
            "Br is a multiple of 16·MT (a warp owns MT m-tiles of 16 query rows)": Br % (16 * MT) == 0,
            "MT is 1 or 2": MT in (1, 2),
            "Bc is a multiple of 32 (P V takes 32 keys per ldmatrix)": Bc % 32 == 0,
            "stages is 1 or 2 (K/V buffers)": stages in (1, 2),
            "warps_per_sm <= 64": warps <= 64,
        },
    )


def workspace_bytes(problem, config):
    """None: as flash2, O, m and l stay on chip."""
    return 0


def launch(problem, config, q, k, v, o, lse, gpu):
    p = problem
    Br, Bc, stages, warps, MT = tiles(p, config)
    left, right = p.mask_bounds()
    kernel = build(Br, Bc, p.head_dim, stages, p.dtype == "bfloat16", warps, MT)
    smem = shared_bytes(Br, Bc, p.head_dim, stages)
    dynamic = {"shared": smem} if smem > STATIC_SHARED else {}  # (the kernel's one dynamic buffer)
    gpu.launch(kernel, (cdiv(p.seq_q, Br), p.batch * p.heads), 32 * (Br // (16 * MT)),
               q, k, v, o, lse, LOG2E * np.float32(p.scale), p.group, left, right, **dynamic)
